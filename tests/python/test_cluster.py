"""The cluster through the Python binding: two real workers naming each
other with --peers (the static mode; tests/integration/test_cluster.c has
the etcd cluster, kills and partitions). A key stored on A is read on B —
pulled into B's pool and checksummed on the way — with or without a hint,
and exists / lookup_prefix / locate answer for the whole cluster."""
import json
import time

import pytest

import kvds
from conftest import free_port


@pytest.fixture(scope="module")
def pair(make_worker):
    pa, pb = free_port(), free_port()
    a = make_worker("64MiB", ["--peers", f"127.0.0.1:{pb}"], port=pa)
    b = make_worker("64MiB", ["--peers", f"127.0.0.1:{pa}"], port=pb)
    yield a, b
    a.stop()
    b.stop()


def wait_for(pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_static_view(pair):
    a, b = pair
    with kvds.Client(b.addr) as c:
        view = json.loads(c.cluster_status())
    assert view["mode"] == "static"
    assert sorted(m["id"] for m in view["members"]) == sorted([a.addr, b.addr])


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_read_through_directory_and_hint(pair, transport):
    a, b = pair
    vals = {f"py-{transport}-{i}".encode(): bytes([i % 251]) * (1000 + 997 * i)
            for i in range(40)}
    with kvds.Client(a.addr) as ca:
        ca.mput(list(vals), list(vals.values()))
    addr_b = b.addr if transport == "shm" else b.tcp
    keys = list(vals)
    with kvds.Client(addr_b) as cb:
        # not on B itself
        with pytest.raises(kvds.NotFound):
            cb.get(keys[0], local=True)
        # announcements are asynchronous: the directory knows within ms
        wait_for(lambda: cb.exists([keys[-1]]) == [True], "the directory")
        assert cb.exists(keys + [b"py-absent"]) == [True] * len(keys) + [False]
        assert cb.lookup_prefix(keys[:10] + [b"py-absent"] + keys[10:]) == 10
        # half through the directory, half with a hint naming A
        assert cb.mget(keys[:20]) == [vals[k] for k in keys[:20]]
        for k in keys[20:]:
            assert cb.get(k, hint=a.addr) == vals[k]
        # now B holds replicas, and the directory lists both
        assert cb.get(keys[5], local=True) == vals[keys[5]]
        wait_for(lambda: len(cb.locate(keys[5])) == 2, "the replica's location")
        assert [loc[0] for loc in cb.locate(keys[5])] == [a.addr, b.addr]
        assert cb.locate(b"py-absent") == []
        with pytest.raises(kvds.NotFound):
            cb.get(b"py-absent", hint=a.addr)


def test_deleting_a_replica_keeps_the_original(pair):
    a, b = pair
    with kvds.Client(a.addr) as ca:
        ca.put(b"py-replica", b"x" * 5000)
    with kvds.Client(b.addr) as cb:
        wait_for(lambda: cb.exists([b"py-replica"]) == [True], "the directory")
        assert cb.get(b"py-replica") == b"x" * 5000
        cb.delete(b"py-replica")  # B's copy only
        wait_for(lambda: [l[0] for l in cb.locate(b"py-replica")] == [a.addr],
                 "the replica's removal")
        assert cb.get(b"py-replica") == b"x" * 5000  # pulled again from A


def test_static_peer_restart_rebuilds_its_shard(make_worker):
    """A static peer has no epoch: the others notice its restart by its new
    HELLO nonce and announce their keys again, so the keys it was home of
    are found through it once more."""
    pa, pb = free_port(), free_port()
    a = make_worker("32MiB", ["--peers", f"127.0.0.1:{pb}"], port=pa)
    b = make_worker("32MiB", ["--peers", f"127.0.0.1:{pa}"], port=pb)
    keys = [f"restart-{i}".encode() for i in range(64)]
    with kvds.Client(a.addr) as ca:
        ca.mput(keys, [k * 10 for k in keys])
    with kvds.Client(b.addr) as cb:
        wait_for(lambda: cb.exists(keys) == [True] * len(keys), "the directory")
    b.stop()
    b = make_worker("32MiB", ["--peers", f"127.0.0.1:{pa}"], port=pb)
    with kvds.Client(b.addr) as cb:
        # B's shard starts empty; A re-announces within a few seconds
        wait_for(lambda: cb.exists(keys) == [True] * len(keys),
                 "the rebuilt directory", timeout=15)
        assert cb.mget(keys) == [k * 10 for k in keys]
    a.stop()
    b.stop()
