"""Large values pulled in ranges (src/worker/cluster/split.c): a value over
2 MiB read on B while B's pull threads are idle comes from A over several
peer connections at once, its pieces reassembled in place and verified by
the whole value's xxh3 before anyone sees it; a value whose owner dies in
the middle of such a pull is never visible on B."""
import json
import os

import pytest

import kvds
from conftest import free_port, put_seen, stop_owner_mid_read, wait_for

MiB = 1 << 20
# around the split's thresholds: whole (<= 2 MiB), a head and one chunk,
# several chunks, a chunk count that does not divide the size
SIZES = [2 * MiB, 2 * MiB + 1, 3 * MiB + 7, 7 * MiB + 65537, 12 * MiB + 3]


@pytest.fixture(scope="module")
def pair(make_worker):
    pa, pb = free_port(), free_port()
    a = make_worker("96MiB", ["--peers", f"127.0.0.1:{pb}", "--pull-threads", "4"],
                    port=pa)
    b = make_worker("96MiB", ["--peers", f"127.0.0.1:{pa}", "--pull-threads", "4"],
                    port=pb)
    yield a, b
    a.stop()
    b.stop()


def pulled_in(cb):
    """Bytes B pulled from its peers so far."""
    view = json.loads(cb.cluster_status())
    return sum(m.get("bytes_in", 0) for m in view["members"])


def ranged_in(cb):
    """Values B pulled in ranges over several connections so far."""
    view = json.loads(cb.cluster_status())
    return sum(m.get("ranged_in", 0) for m in view["members"])


@pytest.mark.parametrize("via", ["hint", "directory", "batch"])
def test_ranges_reassembled(pair, via):
    a, b = pair
    vals = {f"rng-{via}-{i}".encode(): os.urandom(n) for i, n in enumerate(SIZES)}
    keys = put_seen(a, b, vals)
    with kvds.Client(b.addr, timeout_ms=20000) as cb:
        before, ranged = pulled_in(cb), ranged_in(cb)
        if via == "batch":
            assert cb.mget(keys) == [vals[k] for k in keys]
        else:
            for k in keys:
                got = cb.get(k, hint=a.addr) if via == "hint" else cb.get(k)
                assert got == vals[k], f"{k!r}: {len(got)} bytes differ"
        assert pulled_in(cb) - before == sum(SIZES)
        if via != "batch":  # one at a time: the pull threads are idle
            # every value over 2 MiB came in ranges (A announced them)
            assert ranged_in(cb) - ranged == sum(n > 2 * MiB for n in SIZES)
        # B's own copies are whole and right
        for k in keys:
            assert cb.get(k, local=True) == vals[k]
            cb.delete(k)
        assert cb.stats()["objects_writing"] == 0


def test_owner_killed_mid_ranged_pull_never_visible(make_worker):
    """A stops (SIGSTOP) while B has the value half written, then dies
    (SIGKILL): the read fails with the peer's error within its deadline,
    and B holds nothing of the value, nothing left being written."""
    pa, pb = free_port(), free_port()
    a = make_worker("96MiB", ["--peers", f"127.0.0.1:{pb}"], port=pa)
    b = make_worker("96MiB", ["--peers", f"127.0.0.1:{pa}",
                              "--pull-timeout-ms", "3000"], port=pb)
    val = os.urandom(32 * MiB + 5)
    key = b"rng-kill"
    with kvds.Client(a.addr) as ca:
        ca.put(key, val)
    cb = kvds.Client(b.addr, timeout_ms=20000)
    watch = kvds.Client(b.addr)
    t, outcome = stop_owner_mid_read(cb, b, a, key, val)
    a.proc.kill()
    a.proc.wait()
    t.join(30)
    assert not t.is_alive(), "the read did not end after the owner died"
    assert "value" not in outcome
    assert isinstance(outcome["error"], (kvds.PeerError, kvds.Timeout,
                                         kvds.NotFound)), outcome["error"]
    with pytest.raises(kvds.NotFound):
        watch.get(key, local=True)
    wait_for(lambda: watch.stats()["objects_writing"] == 0, "the aborted object")
    cb.close()
    watch.close()
    b.stop()


def test_owner_spreads_peer_connections_over_its_threads(make_worker):
    """The owner gives each new TCP connection to its I/O thread with the
    fewest, so B's parallel pulls are sent from several threads; a large
    value pulled over them comes back whole."""
    import urllib.request

    pa, pb, ha = free_port(), free_port(), free_port()
    a = make_worker("64MiB", ["--peers", f"127.0.0.1:{pb}", "--threads", "3",
                              "--http-port", str(ha)], port=pa)
    b = make_worker("64MiB", ["--peers", f"127.0.0.1:{pa}", "--pull-threads", "4"],
                    port=pb)

    def per_thread():
        with urllib.request.urlopen(f"http://127.0.0.1:{ha}/status", timeout=10) as r:
            return json.loads(r.read())["net"]["tcp_per_thread"]

    # B opens its pull connections to A (pull threads + 1) on its own
    wait_for(lambda: sum(per_thread()) >= 5, "B's connections to A")
    tcp = [kvds.Client(a.tcp) for _ in range(4)]
    counts = per_thread()
    assert len(counts) == 3
    assert max(counts) - min(counts) <= 1, counts
    val = os.urandom(9 * MiB + 11)
    tcp[0].put(b"rng-spread", val)
    with kvds.Client(b.addr, timeout_ms=20000) as cb:
        assert cb.get(b"rng-spread", hint=a.addr) == val
    for c in tcp:
        c.close()
    wait_for(lambda: sum(per_thread()) < sum(counts), "the clients' close")
    a.stop()
    b.stop()
