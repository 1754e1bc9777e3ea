"""Pulls over UCX (--transport ucx, src/net/ucx.c, docs/transport.md): B
pins a value on A over their peer connection, reads it one-sided from A's
pool straight into a new object of its own, verifies its checksum and
seals it. On this machine (no RDMA hardware) UCX runs over its tcp
transport; offered shared memory as well ("sm,tcp"), UCX 1.13 still picks
tcp, because its shared-memory transports cannot report a dead peer (the
lanes are asserted as UCX reports them). The same tests run unchanged
where rc/dc/ud verbs exist: KVDS_TEST_UCX_TLS="rc,self;dc,self" (UCX_TLS
values separated by ';') and KVDS_TEST_UCX_DEVICES (UCX_NET_DEVICES,
default lo) replace the transports of this machine.

- values of every size class read over UCX, by hint, directory and batch,
  byte for byte; /status and /metrics show the transport per peer;
- a mixed fleet: a --transport tcp worker and a ucx one read each other
  over TCP;
- the owner stopped, then killed (SIGKILL) in the middle of a read: B
  never shows a part of the value, tries the next owner (C, which holds a
  copy) and answers with the right bytes; the endpoint error is counted;
- the owner stopped past B's deadline: the read fails by its deadline,
  and once A runs again B reads it over TCP (endpoint errors fall back).
"""
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

import kvds
from conftest import KVDS_BIN, free_port, put_seen, stop_owner_mid_read, wait_for

MiB = 1 << 20
SIZES = [1, 4097, MiB, 9 * MiB + 11]
TLS = os.environ.get("KVDS_TEST_UCX_TLS", "tcp;sm,tcp").split(";")
ONE_TLS = TLS[0]  # the failure tests run over the first


@pytest.fixture(autouse=True)
def ucx_devices(monkeypatch):
    """Loopback only here: UCX's tcp transport listens on every interface
    unless told which, on ports of the kernel's ephemeral range, where
    free_port() finds the ports of the workers started next."""
    monkeypatch.setenv("UCX_NET_DEVICES", os.environ.get("KVDS_TEST_UCX_DEVICES", "lo"))
    monkeypatch.setenv("UCX_TCP_PORT_RANGE", "20000-29999")


def start(make_worker, port, peers, extra=(), memory="128MiB", transport="ucx"):
    http = free_port()
    w = make_worker(memory, ["--peers", ",".join(f"127.0.0.1:{p}" for p in peers),
                             "--transport", transport, "--http-port", str(http),
                             *extra], port=port)
    w.http = http
    return w


def status(w):
    with urllib.request.urlopen(f"http://127.0.0.1:{w.http}/status", timeout=10) as r:
        return json.loads(r.read())


def member(w, other):
    for m in status(w)["cluster"]["members"]:
        if m["id"] == other.addr:
            return m
    raise AssertionError(f"{other.addr} not in {w.addr}'s view")


def metrics(w):
    with urllib.request.urlopen(f"http://127.0.0.1:{w.http}/metrics", timeout=10) as r:
        return r.read().decode()


@pytest.fixture(params=TLS)
def ucx_pair(request, make_worker, monkeypatch):
    monkeypatch.setenv("UCX_TLS", request.param)
    pa, pb = free_port(), free_port()
    a = start(make_worker, pa, [pb])
    b = start(make_worker, pb, [pa])
    yield a, b
    a.stop()
    b.stop()


@pytest.mark.parametrize("via", ["hint", "directory", "batch"])
def test_ucx_reads_land(ucx_pair, via):
    a, b = ucx_pair
    tls = os.environ["UCX_TLS"]
    assert status(b)["cluster"]["transport"] == {
        "mode": "ucx", "reads": "ucx", "ucx_tls": tls,
        "why": f"--transport ucx (UCX_TLS={tls})"}
    vals = {f"ucx-{via}-{i}".encode(): os.urandom(n) for i, n in enumerate(SIZES)}
    keys = put_seen(a, b, vals)
    with kvds.Client(b.addr, timeout_ms=20000) as cb:
        before = member(b, a)
        if via == "batch":
            assert cb.mget(keys) == [vals[k] for k in keys]
        else:
            for k in keys:
                got = cb.get(k, hint=a.addr) if via == "hint" else cb.get(k)
                assert got == vals[k], f"{k!r}: {len(got)} bytes differ"
        m = member(b, a)
        assert m["transport"] == "ucx", m
        assert m["ucx_lanes"], m  # what UCX chose
        if tls in ("tcp", "sm,tcp"):  # this machine: UCX 1.13 picks tcp
            assert "tcp/" in m["ucx_lanes"], m
        assert m["ucx_in"] - before["ucx_in"] == len(keys)
        assert m["bytes_in"] - before["bytes_in"] == sum(SIZES)
        assert m["ucx_errors"] == 0
        # B's own copies are whole and right; A's pins were all released
        for k in keys:
            assert cb.get(k, local=True) == vals[k]
            cb.delete(k)
        assert cb.stats()["objects_writing"] == 0
    with kvds.Client(a.addr) as ca:
        wait_for(lambda: ca.stats()["pinned_objects"] == 0, "A's pins dropped")
        for k in keys:
            ca.delete(k)
    text = metrics(b)
    assert f'kvds_peer_transport{{peer="{a.addr}",transport="ucx"}} 1' in text
    assert f'kvds_peer_transport{{peer="{a.addr}",transport="tcp"}} 0' in text
    assert "kvds_ucx_enabled 1" in text
    assert f'kvds_peer_ucx_objects_received_total{{peer="{a.addr}"}}' in text
    # `kvds status` says the same on A's line and in its transport line
    out = subprocess.run([KVDS_BIN, "status", "--worker", b.addr], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    line = next(x for x in out.splitlines() if x.strip().startswith("peer") and a.addr in x)
    assert "read over ucx (tcp/" in line or not tls.endswith("tcp"), line
    assert f"{m['ucx_in']} objects over UCX (0 endpoint errors)" in line, line
    assert f"peers' pools read over ucx (--transport ucx (UCX_TLS={tls}))" in out, out


@pytest.mark.skipif(os.listdir("/sys/class/infiniband") if os.path.isdir(
    "/sys/class/infiniband") else False, reason="this machine has an RDMA device")
def test_auto_without_rdma_reads_over_tcp(make_worker):
    """--transport auto (the default) on a machine with no RDMA device: the
    pool is not opened to UCX, peers are read over TCP, and /status says
    why."""
    pa, pb = free_port(), free_port()
    a = start(make_worker, pa, [pb], transport="auto")
    b = start(make_worker, pb, [pa], transport="auto")
    tr = status(b)["cluster"]["transport"]
    assert tr["mode"] == "auto" and tr["reads"] == "tcp", tr
    assert tr["why"].startswith("auto: no RDMA device"), tr
    v = os.urandom(MiB + 1)
    with kvds.Client(a.addr) as ca, kvds.Client(b.addr, timeout_ms=20000) as cb:
        ca.put(b"auto-1", v)
        assert cb.get(b"auto-1", hint=a.addr) == v
    m = member(b, a)
    assert m["transport"] == "tcp" and m["ucx_in"] == 0 and m["bytes_in"] == len(v), m
    assert "kvds_ucx_enabled 0" in metrics(b)
    a.stop()
    b.stop()


def test_ucx_that_cannot_start_stops_the_worker(tmp_path, monkeypatch):
    """--transport ucx with no usable UCX transport: the worker does not
    start, and says why (UCX's reason)."""
    monkeypatch.setenv("UCX_TLS", "nosuch")
    pa, pb = free_port(), free_port()
    r = subprocess.run([KVDS_BIN, "worker", "--listen", f"127.0.0.1:{pa}", "--memory",
                        "32MiB", "--peers", f"127.0.0.1:{pb}", "--transport", "ucx"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, KVDS_RUN_DIR=str(tmp_path)))
    assert r.returncode != 0
    assert "--transport ucx: UCX: ucp_init" in r.stdout + r.stderr, r


def test_mixed_fleet_reads_over_tcp(make_worker, monkeypatch):
    """A runs --transport tcp, B ucx: each reads the other over TCP (A does
    not announce UCX; A has none to read B with)."""
    monkeypatch.setenv("UCX_TLS", ONE_TLS)
    pa, pb = free_port(), free_port()
    a = start(make_worker, pa, [pb], transport="tcp")
    b = start(make_worker, pb, [pa])
    assert status(a)["cluster"]["transport"]["reads"] == "tcp"
    assert status(a)["cluster"]["transport"]["why"] == "--transport tcp"
    va, vb = os.urandom(3 * MiB + 1), os.urandom(2 * MiB + 3)
    with kvds.Client(a.addr, timeout_ms=20000) as ca, \
            kvds.Client(b.addr, timeout_ms=20000) as cb:
        ca.put(b"mix-a", va)
        cb.put(b"mix-b", vb)
        assert cb.get(b"mix-a", hint=a.addr) == va
        assert ca.get(b"mix-b", hint=b.addr) == vb
    for x, y in ((b, a), (a, b)):
        m = member(x, y)
        assert m["transport"] == "tcp" and m["ucx_in"] == 0, m
        assert m["ucx_errors"] == 0, m  # not an error: the peer has no UCX
        assert m["bytes_in"] >= 2 * MiB, m
    a.stop()
    b.stop()


def test_owner_restart_new_endpoint(make_worker, monkeypatch):
    """A restarts (a new incarnation: a new pool registration, address and
    rkey): B's next read of A makes a new endpoint from A's new UCX_INFO
    and comes over UCX again, right."""
    monkeypatch.setenv("UCX_TLS", ONE_TLS)
    pa, pb = free_port(), free_port()
    a = start(make_worker, pa, [pb])
    b = start(make_worker, pb, [pa])
    v1, v2 = os.urandom(5 * MiB + 3), os.urandom(3 * MiB + 9)
    with kvds.Client(a.addr) as ca:
        ca.put(b"rs-1", v1)
    with kvds.Client(b.addr, timeout_ms=20000) as cb:
        assert cb.get(b"rs-1", hint=a.addr) == v1
    assert member(b, a)["ucx_in"] == 1
    a.stop()
    a = start(make_worker, pa, [pb])
    with kvds.Client(a.addr) as ca:
        ca.put(b"rs-2", v2)
    with kvds.Client(b.addr, timeout_ms=20000) as cb:
        def read():  # B may first meet its connections to the old A
            try:
                return cb.get(b"rs-2", hint=a.addr)
            except kvds.PeerError:
                return None
        wait_for(lambda: read() == v2, "a read of the new A", timeout=20)
    m = member(b, a)
    assert m["ucx_in"] == 2 and m["transport"] == "ucx", m
    a.stop()
    b.stop()


def test_owner_killed_mid_read_next_owner(make_worker, monkeypatch):
    monkeypatch.setenv("UCX_TLS", ONE_TLS)
    pa, pb, pc = free_port(), free_port(), free_port()
    a = start(make_worker, pa, [pb, pc], memory="160MiB")
    b = start(make_worker, pb, [pa, pc], ["--pull-timeout-ms", "15000"],
              memory="160MiB")
    c = start(make_worker, pc, [pa, pb], memory="160MiB")
    val = os.urandom(64 * MiB + 5)

    def homed_keys():
        return [status(w)["cluster"]["directory"]["keys"] for w in (a, b, c)]

    # a key whose home (directory shard) is not A: with A dead, B finds C
    # through it (a key homed on A has no directory left, in any design
    # without a copy of the shard)
    with kvds.Client(a.addr) as ca:
        for i in range(30):
            key = f"ucx-kill-{i}".encode()
            before = homed_keys()
            ca.put(key, val)
            wait_for(lambda: sum(homed_keys()) > sum(before), "the announcement")
            if homed_keys()[0] == before[0]:
                break
            ca.delete(key)
            wait_for(lambda: homed_keys() == before, "the deletion's announcement")
        else:
            pytest.fail("30 keys all homed on A")
    with kvds.Client(c.addr, timeout_ms=20000) as cc:
        assert cc.get(key, hint=a.addr) == val  # C holds a copy now
    cb = kvds.Client(b.addr, timeout_ms=30000)
    t, outcome = stop_owner_mid_read(cb, b, a, key, val)
    from_c = member(b, c)["bytes_in"]
    a.proc.kill()
    a.proc.wait()
    t.join(40)
    assert not t.is_alive(), "the read did not end after the owner died"
    assert outcome.get("value") == val, outcome  # from C, the next owner
    m = member(b, a)
    assert m["ucx_errors"] >= 1, m
    assert member(b, c)["bytes_in"] - from_c == len(val)
    with kvds.Client(b.addr) as watch:
        assert watch.get(key, local=True) == val
        assert watch.stats()["objects_writing"] == 0
    cb.close()
    b.stop()
    c.stop()


def test_endpoint_error_falls_back_to_tcp(make_worker, monkeypatch):
    monkeypatch.setenv("UCX_TLS", ONE_TLS)
    pa, pb = free_port(), free_port()
    a = start(make_worker, pa, [pb], memory="160MiB")
    b = start(make_worker, pb, [pa], ["--pull-timeout-ms", "1500"],
              memory="160MiB")
    val = os.urandom(64 * MiB + 7)
    key = b"ucx-stall"
    with kvds.Client(a.addr) as ca:
        ca.put(key, val)
        ca.put(b"ucx-after", b"after" * 1000)
    cb = kvds.Client(b.addr, timeout_ms=30000)
    t0 = time.monotonic()
    t, outcome = stop_owner_mid_read(cb, b, a, key, val)
    t.join(30)  # A stays stopped: B's deadline passes
    assert not t.is_alive()
    assert "value" not in outcome
    assert isinstance(outcome["error"], (kvds.Timeout, kvds.PeerError)), outcome
    os.kill(a.proc.pid, signal.SIGCONT)
    with kvds.Client(b.addr) as watch:
        with pytest.raises(kvds.NotFound):
            watch.get(key, local=True)
        wait_for(lambda: watch.stats()["objects_writing"] == 0, "the aborted object")
    m = member(b, a)
    assert m["ucx_errors"] >= 1 and m["transport"] == "tcp", m
    ucx_in = m["ucx_in"]
    # the next reads of A come over TCP, right
    assert cb.get(b"ucx-after", hint=a.addr) == b"after" * 1000
    assert cb.get(key, hint=a.addr) == val
    m = member(b, a)
    assert m["ucx_in"] == ucx_in and m["transport"] == "tcp", m
    assert time.monotonic() - t0 < 120
    cb.close()
    a.stop()
    b.stop()
