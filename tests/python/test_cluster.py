"""The cluster through the Python binding: two real workers naming each
other with --peers (the static mode; tests/integration/test_cluster.c has
the etcd cluster, kills and partitions, and proves that a hint is used).
A key stored on A is read on B — pulled into B's pool and checksummed on
the way — with or without a hint, and exists / lookup_prefix / locate
answer for the whole cluster."""
import json

import pytest

import kvds
from conftest import free_port, wait_for


@pytest.fixture(scope="module")
def pair(static_pair):
    return static_pair


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
        # half through the directory, half with a hint naming A (with two
        # workers the directory would find them too: that the hint is used
        # is shown by test_cluster.c, with the keys' home stopped)
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


def test_observability(make_worker):
    """kvds status (per-peer bytes on both sides, the directory line), kvds
    stat (locations), kvds ls --cluster (holders), /metrics (per-peer
    counters, pull latency histogram, directory) after real pulls; kvds get
    --hint / --local; failed pulls counted once A is gone."""
    import re
    import subprocess
    import urllib.request
    from conftest import KVDS_BIN

    pa, pb, ha, hb = free_port(), free_port(), free_port(), free_port()
    a = make_worker("32MiB", ["--peers", f"127.0.0.1:{pb}", "--http-port", str(ha)],
                    port=pa)
    b = make_worker("32MiB", ["--peers", f"127.0.0.1:{pa}", "--http-port", str(hb)],
                    port=pb)
    vals = {f"obs-{i}".encode(): bytes([65 + i]) * (10000 + i) for i in range(8)}
    with kvds.Client(a.addr) as ca:
        ca.mput(list(vals), list(vals.values()))
    with kvds.Client(b.addr) as cb:
        wait_for(lambda: all(cb.exists(list(vals))), "the directory")
        assert cb.mget(list(vals)[:4]) == list(vals.values())[:4]
        wait_for(lambda: len(cb.locate(b"obs-0")) == 2, "the replica's location")

    def kvds_cli(*args, rc=0, text=True):
        r = subprocess.run([KVDS_BIN, *args], capture_output=True, text=text,
                           timeout=30)
        assert r.returncode == rc, r.stderr
        return r.stdout

    def fmt_bytes(n):  # as kvds_fmt_bytes prints them
        units, v, i = ["B", "KiB", "MiB", "GiB", "TiB"], float(n), 0
        while v >= 1024 and i < 4:
            v, i = v / 1024, i + 1
        return f"{n} B" if i == 0 else f"{v:.1f} {units[i]}"

    def metrics_of(port):
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=10).read().decode()

    def metric(text, name):
        m = re.search(rf"^{re.escape(name)} (\d+)$", text, re.M)
        assert m, f"{name} not in /metrics"
        return int(m.group(1))

    pulled = sum(len(v) for v in list(vals.values())[:4])
    status = kvds_cli("status", "--worker", b.addr)
    line = [l for l in status.splitlines() if l.strip().startswith("peer") and a.addr in l]
    assert len(line) == 1, status
    m = re.search(r"pulled ([\d.]+ \w+), served ([\d.]+ \w+), (\d+) pulls \((\d+) failed\)",
                  line[0])
    assert m, line[0]
    assert int(m.group(3)) >= 1 and m.group(4) == "0"
    # bytes_in counts values; bytes_out counts every byte written to the
    # peer (frames too: B answers A's announcements)
    assert m.group(1) == fmt_bytes(pulled), line[0]
    js = json.loads(kvds_cli("status", "--worker", b.addr, "--json"))
    peer = [p for p in js["cluster"]["members"] if p["id"] == a.addr][0]
    assert peer["bytes_in"] == pulled and peer["pulls"] == int(m.group(3))
    assert m.group(2) == fmt_bytes(peer["bytes_out"]) and peer["bytes_out"] < 16384
    # A's side: it served those values (and a few frames) to B
    status_a = kvds_cli("status", "--worker", a.addr)
    line_a = [l for l in status_a.splitlines()
              if l.strip().startswith("peer") and b.addr in l]
    assert len(line_a) == 1, status_a
    m_a = re.search(r"pulled ([\d.]+ \w+), served ([\d.]+ \w+), (\d+) pulls "
                    r"\((\d+) failed\)", line_a[0])
    js_a = json.loads(kvds_cli("status", "--worker", a.addr, "--json"))
    peer_b = [p for p in js_a["cluster"]["members"] if p["id"] == b.addr][0]
    assert peer_b["bytes_in"] == 0 and peer_b["pulls"] == 0
    assert pulled <= peer_b["bytes_out"] < pulled + 16384, peer_b
    assert m_a and m_a.group(1) == "0 B" and m_a.group(3) == "0", line_a[0]
    assert m_a.group(2) == fmt_bytes(peer_b["bytes_out"]), line_a[0]
    metrics_a = metrics_of(ha)
    assert (f'kvds_peer_sent_bytes_total{{peer="{b.addr}"}} {peer_b["bytes_out"]}'
            in metrics_a), metrics_a
    d = js["cluster"]["directory"]
    assert d["remote_found"] == 4 and d["remote_missed"] == 0
    dline = [l for l in status.splitlines() if l.startswith("directory")]
    assert dline == [f"directory    {d['keys']} keys homed here, {d['locations']} "
                     f"locations; 4 reads served by peers, 0 not found anywhere"], status
    # the keys homed on B are listed there: A's originals, B's replicas
    assert d["keys"] >= 1 and d["locations"] >= d["keys"]

    stat = kvds_cli("stat", "obs-0", "--worker", b.addr)
    assert re.search(rf"locations 2: {re.escape(a.addr)} \(epoch \d+\), "
                     rf"{re.escape(b.addr)} \(epoch \d+\)", stat), stat
    stat = kvds_cli("stat", "obs-7", "--worker", b.addr)  # not on B
    assert "here      no" in stat and f"locations 1: {a.addr}" in stat, stat

    ls = kvds_cli("ls", "obs-", "--cluster", "--worker", b.addr)
    # holders in member-id order
    rows = {l.split()[2]: sorted(l.split()[-1].split(",")) for l in ls.splitlines()}
    assert rows == {k.decode(): sorted([a.addr, b.addr] if i < 4 else [a.addr])
                    for i, k in enumerate(vals)}, ls

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{hb}/metrics", timeout=10).read().decode()
    assert f'kvds_peer_received_bytes_total{{peer="{a.addr}"}} {pulled}' in metrics
    count = re.search(rf'kvds_peer_pull_seconds_count{{peer="{re.escape(a.addr)}"}} (\d+)',
                      metrics)
    inf = re.search(rf'kvds_peer_pull_seconds_bucket{{peer="{re.escape(a.addr)}",le="\+Inf"}} (\d+)',
                    metrics)
    assert count and inf and count.group(1) == inf.group(1) and int(count.group(1)) >= 1
    assert f'kvds_peer_up{{peer="{a.addr}"}} 1' in metrics
    assert f'kvds_peer_pull_errors_total{{peer="{a.addr}"}} 0' in metrics
    assert metric(metrics, "kvds_remote_missed_total") == 0

    # kvds get: --local on a key only A holds fails (exit 1) and pulls
    # nothing; --hint A reads it (the value on stdout)
    kvds_cli("get", "obs-6", "--worker", b.addr, "--local", rc=1)
    with kvds.Client(b.addr) as cb:
        assert [l[0] for l in cb.locate(b"obs-6")] == [a.addr]
    out = kvds_cli("get", "obs-6", "--worker", b.addr, "--hint", a.addr, text=False)
    assert out == vals[b"obs-6"]
    out = kvds_cli("get", "obs-6", "--worker", b.addr, "--local", text=False)
    assert out == vals[b"obs-6"]  # B's replica now

    # A gone: B's reads of keys only A held fail, and are counted. A static
    # peer never leaves the view, so kvds_peer_up stays 1 (docs/cluster.md:
    # the static view never changes).
    only_a = [f"obs-only-a-{i}".encode() for i in range(16)]
    with kvds.Client(a.addr) as ca:
        ca.mput(only_a, [k * 100 for k in only_a])
    with kvds.Client(b.addr) as cb:
        wait_for(lambda: all(cb.exists(only_a)), "the directory")
    a.stop()
    with kvds.Client(b.addr) as cb:
        for k in only_a:
            with pytest.raises((kvds.NotFound, kvds.PeerError)):
                cb.get(k)
    metrics = metrics_of(hb)
    errors = re.search(rf'kvds_peer_pull_errors_total{{peer="{re.escape(a.addr)}"}} (\d+)',
                       metrics)
    assert errors, metrics
    missed = metric(metrics, "kvds_remote_missed_total")
    print(f"after A stopped: pull_errors {errors.group(1)}, remote_missed {missed}")
    assert int(errors.group(1)) > 0 and missed > 0
    assert f'kvds_peer_up{{peer="{a.addr}"}} 1' in metrics
    b.stop()
