"""Zero-copy views (Client.mget_views / kvds.Pinned): contents, pins and
their release, and the memoryview safety rules."""
import gc
import time

import numpy as np
import pytest

import kvds
from conftest import connect


def test_views_equal_values(client, key):
    keys = [key(f"v{i}") for i in range(10)]
    vals = [bytes([i]) * (100 * (i + 1)) for i in range(10)]
    client.mput(keys, vals)
    with client.mget_views(keys + [key("absent")]) as p:
        assert len(p) == 11
        for i in range(10):
            mv = p[i]
            assert isinstance(mv, memoryview) and mv.readonly
            assert mv.nbytes == len(vals[i]) and mv == vals[i]
            mv.release()
        assert p[10] is None and p[-1] is None
        assert bytes(p[-2]) == vals[9]
        assert p.missing == [10]
        assert p.sizes == [len(v) for v in vals] + [None]
        assert p.checksums == [kvds.checksum(v) for v in vals] + [None]
        assert [bytes(v) if v is not None else None for v in p] == vals + [None]
        with pytest.raises(IndexError):
            p[11]
    assert p.released


def test_views_are_read_only(client, key):
    client.put(key("ro"), b"abc")
    with client.mget_views([key("ro")]) as p:
        mv = p[0]
        with pytest.raises(TypeError):
            mv[0] = 1
        mv.release()


def test_numpy_over_view(client, key):
    a = np.linspace(0, 1, 4096, dtype=np.float32)
    client.put(key("np"), a)
    with client.mget_views([key("np")]) as p:
        b = np.frombuffer(p[0], dtype=np.float32)
        assert np.array_equal(a, b)
        assert not b.flags.writeable
        del b


def test_local_views_point_into_the_pool(worker, key):
    """On a shared-memory client the view is the pool itself: a second
    mget_views of the same key sees the same address."""
    c = connect(worker, "shm")
    c.put(key("same"), b"z" * 64)
    with c.mget_views([key("same")]) as p1, c.mget_views([key("same")]) as p2:
        a1 = np.frombuffer(p1[0], dtype=np.uint8)
        a2 = np.frombuffer(p2[0], dtype=np.uint8)
        assert a1.ctypes.data == a2.ctypes.data
        del a1, a2


def test_pool_region_holds_views_and_write_buffers(worker, key):
    """pool_region() is the mapped pool: every zero-copy view and write
    buffer lies inside it; over TCP there is none."""
    c = connect(worker, "shm")
    base, size = c.pool_region()
    assert base > 0 and size >= 64 << 20
    c.put(key("r"), b"q" * 4096)
    with c.mget_views([key("r")]) as p:
        a = np.frombuffer(p[0], dtype=np.uint8)
        assert base <= a.ctypes.data and a.ctypes.data + 4096 <= base + size
        del a
    w = c.create(key("w"), 8192)
    a = np.frombuffer(w, dtype=np.uint8)
    assert base <= a.ctypes.data and a.ctypes.data + 8192 <= base + size
    del a
    w.abort()
    t = connect(worker, "tcp")
    with pytest.raises(kvds.KvdsError, match="local shared-memory"):
        t.pool_region()
    c.close()
    with pytest.raises(ValueError):
        c.pool_region()


def test_pins_held_and_released_on_exit(worker, key):
    c = connect(worker, "shm")
    c.mput([key("p1"), key("p2")], [b"1", b"2"])
    with c.mget_views([key("p1"), key("p2")]) as p:
        assert c.stat(key("p1"))["pins"] == 1
        assert c.stat(key("p2"))["pins"] == 1
        with c.mget_views([key("p1")]):
            assert c.stat(key("p1"))["pins"] == 2
        assert c.stat(key("p1"))["pins"] == 1
        assert not p.released
    assert p.released
    assert c.stat(key("p1"))["pins"] == 0 and c.stat(key("p2"))["pins"] == 0
    p.release()  # idempotent
    with pytest.raises(ValueError, match="released"):
        p[0]


def test_pinned_objects_in_stats(fresh_worker):
    c = connect(fresh_worker, "shm")
    c.mput([b"a", b"b", b"c"], [b"1", b"2", b"3"])
    assert c.stats()["pinned_objects"] == 0
    p = c.mget_views([b"a", b"b", b"x"])
    assert c.stats()["pinned_objects"] == 2
    p.release()
    assert c.stats()["pinned_objects"] == 0
    c.close()


def test_pins_released_when_dropped(worker, key):
    c = connect(worker, "shm")
    c.put(key("d"), b"d")
    p = c.mget_views([key("d")])
    assert c.stat(key("d"))["pins"] == 1
    del p  # refcount drops to zero: the finalizer releases
    assert c.stat(key("d"))["pins"] == 0


def test_pins_released_by_garbage_collection(worker, key):
    c = connect(worker, "shm")
    c.put(key("gc"), b"g")
    gc.disable()
    try:
        p = c.mget_views([key("gc")])
        cycle = [p]
        cycle.append(cycle)  # only the cycle collector can free p now
        del p, cycle
        assert c.stat(key("gc"))["pins"] == 1
        gc.collect()
        assert c.stat(key("gc"))["pins"] == 0
    finally:
        gc.enable()


def test_release_refused_while_a_view_exists(client, key):
    client.put(key("b"), b"bytes")
    p = client.mget_views([key("b")])
    mv = p[0]
    sub = mv[1:3]  # a slice shares the export
    mv.release()
    with pytest.raises(BufferError):
        p.release()
    assert not p.released
    assert bytes(sub) == b"yt"  # still readable: the pin is still held
    if client.is_local:
        assert client.stat(key("b"))["pins"] == 1
    with pytest.raises(BufferError):
        client.close()  # close would unmap it too
    assert not client.closed
    sub.release()
    p.release()
    assert p.released
    if client.is_local:
        assert client.stat(key("b"))["pins"] == 0


def test_with_block_refuses_to_release_under_a_live_view(client, key):
    client.put(key("w"), b"w")
    with pytest.raises(BufferError):
        with client.mget_views([key("w")]) as p:
            mv = p[0]
    assert not p.released and bytes(mv) == b"w"
    mv.release()
    p.release()


def test_exception_in_with_block_is_not_masked(client, key):
    client.put(key("e"), b"e")
    with pytest.raises(KeyError):
        with client.mget_views([key("e")]) as p:
            mv = p[0]  # noqa: F841 (kept alive by the traceback)
            raise KeyError("boom")
    del mv
    p.release()
    assert p.released


def test_tcp_views_survive_later_gets(worker, key):
    """Over TCP the values live in client-owned receive buffers: later gets
    must not reuse a buffer that a Pinned still holds."""
    c = connect(worker, "tcp")
    keys = [key(f"t{i}") for i in range(20)]
    vals = [bytes([65 + i]) * (5000 + i) for i in range(20)]
    c.mput(keys, vals)
    held = [c.mget_views([k]) for k in keys[:10]]
    for _ in range(3):
        for k, v in zip(keys[10:], vals[10:]):
            with c.mget_views([k]) as p:
                assert p[0] == v
            assert c.get(k) == v
    for p, v in zip(held, vals[:10]):
        assert p[0] == v
        p.release()


def test_close_releases_pins_and_kills_views(worker, key):
    c = connect(worker, "shm")
    other = connect(worker, "shm")
    c.put(key("c"), b"c")
    p = c.mget_views([key("c")])
    assert other.stat(key("c"))["pins"] == 1
    c.close()
    assert p.released
    with pytest.raises(ValueError):
        p[0]
    p.release()  # no-op on a closed client
    # The worker drops the pins of a closed connection; it learns of the
    # close asynchronously, so poll (bounded).
    deadline = time.monotonic() + 10
    while other.stat(key("c"))["pins"] != 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert other.stat(key("c"))["pins"] == 0


def test_pinned_value_survives_delete(client, key):
    client.put(key("del"), b"keep me")
    with client.mget_views([key("del")]) as p:
        client.delete(key("del"))
        assert client.exists([key("del")]) == [False]
        assert p[0] == b"keep me"


def test_views_wait(client, key):
    with client.mget_views([key("w0")], wait_ms=30) as p:
        assert p.missing == [0] and p[0] is None


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_pin_holds_without_moving_bytes(worker, key, transport):
    """Client.pin: the values found are pinned (sizes, checksums, missing
    known) but no bytes move, also over TCP; release() or closing the client
    drops the pins."""
    c = connect(worker, transport)
    vals = [b"a" * 1000, b"b" * 5]
    keys = [key("p0"), key("p1"), key("absent")]
    c.mput(keys[:2], vals)
    before = c.stats()["pinned_objects"]
    p = c.pin(keys)
    assert len(p) == 3 and p.missing == [2]
    assert p.sizes == [1000, 5, None]
    assert p.checksums == [kvds.checksum(v) for v in vals] + [None]
    assert c.stats()["pinned_objects"] == before + 2
    with pytest.raises(TypeError, match="no bytes to view"):
        p[0]
    assert p[2] is None
    p.release()
    assert p.released and c.stats()["pinned_objects"] == before
    # waits like a get, and closing the client drops its pins
    d = connect(worker, transport)
    p2 = d.pin([key("late")], wait_ms=100)
    assert p2.missing == [0]
    c.put(key("late"), b"z")
    p3 = d.pin([key("late")], wait_ms=2000)
    assert p3.sizes == [1] and c.stats()["pinned_objects"] == before + 1
    d.close()
    deadline = time.monotonic() + 5
    while c.stats()["pinned_objects"] != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.stats()["pinned_objects"] == before
    c.close()
