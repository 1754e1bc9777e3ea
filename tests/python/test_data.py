"""Copying put/get in every form, over shared memory and TCP."""
import os

import numpy as np
import pytest

import kvds


def payload(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_put_get_bytes(client, key):
    v = payload(1000, 1)
    client.put(key("a"), v)
    got = client.get(key("a"))
    assert type(got) is bytes and got == v


@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "numpy"])
def test_put_buffer_kinds(client, key, kind):
    raw = payload(4096, 2)
    value = {"bytearray": bytearray(raw),
             "memoryview": memoryview(raw)[100:3000],
             "numpy": np.frombuffer(raw, dtype=np.float32).reshape(32, 32)}[kind]
    client.put(key(kind), value)
    assert client.get(key(kind)) == bytes(memoryview(value).cast("B"))


def test_numpy_round_trip_dtypes(client, key):
    a = np.arange(3 * 5 * 7, dtype=np.float16).reshape(3, 5, 7)
    client.put(key("f16"), a)
    b = np.frombuffer(client.get(key("f16")), dtype=np.float16).reshape(a.shape)
    assert np.array_equal(a, b)


def test_large_value(client, key):
    v = payload(8 << 20, 3)  # large enough for the GIL-free copy paths
    client.put(key("big"), v)
    assert client.get(key("big")) == v
    buf = bytearray(len(v))
    assert client.get_into(key("big"), buf) == len(v)
    assert buf == v


def test_str_keys_are_utf8(client, key):
    k = key().decode() + "ключ-🔑"
    client.put(k, b"x")
    assert client.get(k.encode("utf-8")) == b"x"
    assert client.exists([k, k.encode()]) == [True, True]


def test_non_contiguous_value_is_type_error(client, key):
    a = np.arange(100, dtype=np.int32)[::2]
    with pytest.raises(TypeError, match="C-contiguous"):
        client.put(key("nc"), a)
    with pytest.raises(TypeError, match="C-contiguous"):
        client.get_into(key("nc"), np.zeros(100, np.uint8)[::2])
    assert client.exists([key("nc")]) == [False]


def test_bad_argument_types(client, key):
    with pytest.raises(TypeError):
        client.put(12, b"v")
    with pytest.raises(TypeError):
        client.put(key("t"), 12)
    with pytest.raises(TypeError):
        client.exists(key("t"))  # a lone key, not a sequence of keys
    with pytest.raises(TypeError):
        client.get_into(key("t"), b"read-only bytes")


def test_get_into(client, key):
    v = payload(300, 4)
    client.put(key("g"), v)
    buf = np.zeros(1000, dtype=np.uint8)
    assert client.get_into(key("g"), buf) == 300
    assert buf[:300].tobytes() == v and not buf[300:].any()
    small = bytearray(299)
    with pytest.raises(kvds.TooBig):
        client.get_into(key("g"), small)
    assert small == bytearray(299)  # nothing written


def test_raw_pointers(client, key):
    a = np.arange(10000, dtype=np.int64)
    client.put_raw(key("raw"), a.ctypes.data, a.nbytes)
    assert client.get(key("raw")) == a.tobytes()
    out = np.zeros_like(a)
    assert client.get_into_raw(key("raw"), out.ctypes.data, out.nbytes) == a.nbytes
    assert np.array_equal(out, a)
    with pytest.raises(kvds.TooBig):
        client.get_into_raw(key("raw"), out.ctypes.data, out.nbytes - 1)


def test_mput_raw(client, key):
    arrays = [np.full(100 + i, i, dtype=np.uint8) for i in range(5)]
    keys = [key(f"r{i}") for i in range(5)]
    client.mput_raw(keys, [a.ctypes.data for a in arrays], [a.nbytes for a in arrays])
    assert client.mget(keys) == [a.tobytes() for a in arrays]
    with pytest.raises(ValueError):
        client.mput_raw(keys, [arrays[0].ctypes.data], [1, 2])


def test_mput_mget(client, key):
    keys = [key(f"m{i}") for i in range(50)]
    vals = [payload(10 + i, i) for i in range(50)]
    assert client.mput(keys, vals) is None
    got = client.mget(keys + [key("absent")])
    assert got[:50] == vals and got[50] is None
    assert client.mget([]) == []
    with pytest.raises(ValueError):
        client.mput(keys, vals[:-1])


def test_mput_reports_failing_index(client, key):
    client.put(key("dup"), b"old")
    keys = [key("n0"), key("dup"), key("n2")]
    with pytest.raises(kvds.Exists) as ei:
        client.mput(keys, [b"a", b"b", b"c"])
    assert ei.value.index == 1
    assert ei.value.code == kvds.E_EXISTS
    assert client.get(key("dup")) == b"old"
    assert client.get(key("n0")) == b"a" and client.get(key("n2")) == b"c"


def test_get_missing_and_wait_timeout(client, key):
    with pytest.raises(kvds.NotFound):
        client.get(key("none"))
    with pytest.raises(kvds.Timeout):
        client.get(key("none"), wait_ms=50)
    assert client.mget([key("none")], wait_ms=30) == [None]


def test_exists_lookup_prefix(client, key):
    chain = [key(f"c{i}") for i in range(6)]
    client.mput(chain[:3] + chain[4:], [b"v"] * 5)
    assert client.exists(chain) == [True, True, True, False, True, True]
    assert client.lookup_prefix(chain) == 3
    assert client.lookup_prefix(chain[4:]) == 2
    assert client.lookup_prefix([key("zz")] + chain) == 0
    assert client.exists([]) == [] and client.lookup_prefix([]) == 0


def test_delete_mdelete(client, key):
    client.mput([key("d1"), key("d2"), key("d3")], [b"1", b"2", b"3"])
    assert client.delete(key("d1")) is None
    with pytest.raises(kvds.NotFound):
        client.get(key("d1"))
    with pytest.raises(kvds.NotFound):
        client.delete(key("d1"))
    errs = client.mdelete([key("d2"), key("d1"), key("d3")])
    assert errs[0] is None and errs[2] is None
    assert isinstance(errs[1], kvds.NotFound) and errs[1].index == 1
    assert client.exists([key("d2"), key("d3")]) == [False, False]
    client.put(key("d4"), b"4")
    assert client.mdelete([key("d4")]) is None


def test_stat(client, key):
    v = payload(777, 5)
    client.put(key("s"), v)
    st = client.stat(key("s"))
    assert st["size"] == 777 and st["state"] == "sealed" and st["pins"] == 0
    assert st["checksum"] == kvds.checksum(v)
    assert st["ctime_us"] > 0 and st["atime_us"] >= st["ctime_us"]
    with pytest.raises(kvds.NotFound):
        client.stat(key("nope"))


def test_list_pages(client, key):
    n = 2500  # three internal pages of 1000
    keys = [key(f"{i:05d}") for i in range(n)]
    client.mput(keys, [bytes([i % 256]) * (1 + i % 7) for i in range(n)])
    entries = client.list(key.prefix, limit=None)
    assert [k for k, _ in entries] == keys
    assert [s for _, s in entries] == [1 + i % 7 for i in range(n)]
    assert client.list(key.prefix) == entries[:1000]  # default limit
    assert client.list(key.prefix, limit=1500) == entries[:1500]
    assert client.list(key.prefix, limit=3) == entries[:3]
    assert client.list(key.prefix + b"9") == []


def test_stats_fields(client, key):
    s1 = client.stats()
    fields = {"pool_capacity", "pool_used", "pool_free", "pool_largest_free",
              "objects", "objects_writing", "pinned_objects", "evictions",
              "evicted_bytes", "hits", "misses", "puts", "nospace",
              "connections", "protocol_errors", "uptime_s", "pid",
              "high_watermark_ppm", "eviction_ratio_ppm",
              "disk_policy", "disk_objects", "disk_bytes", "disk_capacity",
              "disk_writes", "disk_write_bytes", "disk_write_errors",
              "disk_reads", "disk_read_bytes", "disk_corrupt",
              "disk_evictions", "disk_spills", "disk_spill_skipped"}
    assert set(s1) == fields
    # no disk tier here: every disk counter is 0
    assert all(v == 0 for k, v in s1.items() if k.startswith("disk_"))
    client.put(key("x"), b"x")
    client.get(key("x"))
    s2 = client.stats()
    assert s2["puts"] >= s1["puts"] + 1 and s2["hits"] >= s1["hits"] + 1
    assert s2["pool_capacity"] == 64 << 20
    assert s2["pool_used"] + s2["pool_free"] == s2["pool_capacity"]
    assert s2["connections"] >= 1
    assert s2["high_watermark_ppm"] == 950000


def test_stats_pid_is_worker(worker, transport):
    with kvds.Client(worker.addr if transport == "shm" else worker.tcp) as c:
        assert c.stats()["pid"] == worker.proc.pid


def test_ping_timeout_and_close(worker, transport):
    c = kvds.Client(worker.addr if transport == "shm" else worker.tcp, timeout_ms=1234)
    assert c.timeout_ms == 1234
    c.ping()
    c.set_timeout(2000)
    assert c.timeout_ms == 2000
    with pytest.raises(ValueError):
        c.set_timeout(0)
    assert not c.closed
    c.close()
    c.close()  # idempotent
    assert c.closed
    with pytest.raises(ValueError, match="closed"):
        c.ping()
    with pytest.raises(ValueError, match="closed"):
        c.get(b"k")


def test_context_manager(worker):
    with kvds.Client(worker.addr) as c:
        c.ping()
    assert c.closed


def test_connect_options(worker):
    assert kvds.Client(worker.addr, tcp_only=True).is_local is False
    assert kvds.Client(worker.addr, lazy_map=True).is_local is True
    assert kvds.Client(worker.unix).is_local is True
    assert kvds.Client(worker.tcp).is_local is False


def test_default_address_from_env(worker, monkeypatch):
    monkeypatch.setenv("DS_WORKER_ADDR", worker.tcp)
    c = kvds.Client()
    assert c.address == worker.tcp and c.is_local is False
    c.ping()
    assert kvds.Client(None, tcp_only=True).address == worker.tcp


def test_checksum_function():
    assert kvds.checksum(b"abc") == kvds.checksum(bytearray(b"abc"))
    assert kvds.checksum(b"abc") != kvds.checksum(b"abd")
    assert 0 <= kvds.checksum(os.urandom(100)) < 2**64


def test_cluster_status(make_worker):
    """cluster_status(): the worker's view as JSON; a worker started with
    --peers lists them as static members next to itself."""
    import json
    w = make_worker(extra=("--peers", "127.0.0.1:1,127.0.0.1:2"))
    with kvds.Client(w.addr) as c:
        st = json.loads(c.cluster_status())
    assert st["mode"] == "static"
    ids = sorted(m["id"] for m in st["members"])
    assert ids == sorted(["127.0.0.1:1", "127.0.0.1:2", w.addr])
    assert [m["id"] for m in st["members"] if m["self"]] == [w.addr]
