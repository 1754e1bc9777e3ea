"""Two-phase writes: Client.create/mcreate, kvds.WriteBuffer, mseal."""
import gc
import threading

import numpy as np
import pytest

import kvds


def test_create_write_seal_in_ranges(client, key):
    data = bytes(range(256)) * 40  # 10240 bytes
    w = client.create(key("r"), len(data))
    assert w.size == len(data) and w.key == key("r") and w.state == "writing"
    assert client.exists([key("r")]) == [False]  # invisible until sealed
    assert client.stat(key("r"))["state"] == "writing"
    # Out of order, through write() and through the buffer protocol.
    w.write(8000, data[8000:])
    w.view[0:3000] = data[0:3000]
    mv = memoryview(w)
    mv[3000:8000] = data[3000:8000]
    mv.release()
    assert w.checksum is None
    s = w.seal()
    assert s == kvds.checksum(data) == w.checksum
    assert w.state == "sealed"
    assert client.get(key("r")) == data
    st = client.stat(key("r"))
    assert st["state"] == "sealed" and st["checksum"] == s


def test_write_through_numpy(client, key):
    a = np.arange(1024, dtype=np.float64)
    w = client.create(key("np"), a.nbytes)
    dst = np.frombuffer(w, dtype=np.float64)
    assert dst.flags.writeable
    dst[:] = a
    with pytest.raises(BufferError):
        w.seal()  # dst still exports the buffer
    del dst
    w.seal()
    assert np.array_equal(np.frombuffer(client.get(key("np")), np.float64), a)


def test_write_range_checked(client, key):
    w = client.create(key("rc"), 10)
    with pytest.raises(kvds.InvalidArgument) as ei:
        w.write(8, b"abc")
    assert ei.value.code == kvds.E_RANGE and isinstance(ei.value, ValueError)
    with pytest.raises(kvds.InvalidArgument):
        w.write(11, b"")
    w.write(7, b"abc")
    w.write(0, np.frombuffer(b"0123456", dtype=np.uint8))
    w.seal()
    assert client.get(key("rc")) == b"0123456abc"


def test_seal_and_abort_are_final(client, key):
    w = client.create(key("f"), 4)
    w.write(0, b"abcd")
    w.seal()
    with pytest.raises(ValueError):
        w.seal()
    with pytest.raises(ValueError):
        w.write(0, b"x")
    with pytest.raises(BufferError):
        memoryview(w)
    w.abort()  # no-op once sealed
    assert client.get(key("f")) == b"abcd"


def test_abort(client, key):
    w = client.create(key("a"), 100)
    w.write(0, b"x" * 100)
    w.abort()
    assert w.state == "aborted"
    assert client.exists([key("a")]) == [False]
    with pytest.raises(kvds.NotFound):
        client.stat(key("a"))
    with pytest.raises(ValueError):
        w.seal()
    w2 = client.create(key("a"), 3)  # the key is free again
    w2.write(0, b"new")
    w2.seal()
    assert client.get(key("a")) == b"new"


def test_abort_refused_while_a_view_exists(client, key):
    w = client.create(key("av"), 8)
    v = w.view
    with pytest.raises(BufferError):
        w.abort()
    v[:] = b"12345678"
    v.release()
    w.seal()
    assert client.get(key("av")) == b"12345678"


def test_dropped_write_buffer_is_aborted(client, key):
    w = client.create(key("drop"), 10)
    assert client.stat(key("drop"))["state"] == "writing"
    del w
    with pytest.raises(kvds.NotFound):
        client.stat(key("drop"))
    gc.disable()
    try:
        w = client.create(key("cyc"), 10)
        cycle = [w, None]
        cycle[1] = cycle
        del w, cycle
        assert client.stat(key("cyc"))["state"] == "writing"
        gc.collect()
        with pytest.raises(kvds.NotFound):
            client.stat(key("cyc"))
    finally:
        gc.enable()


def test_context_manager_aborts_unsealed(client, key):
    with client.create(key("cm1"), 2) as w:
        w.write(0, b"ok")
        w.seal()
    assert client.get(key("cm1")) == b"ok"
    with client.create(key("cm2"), 2) as w:
        w.write(0, b"no")
    assert w.state == "aborted"
    assert client.exists([key("cm2")]) == [False]


def test_mcreate_mseal(client, key):
    keys = [key(f"m{i}") for i in range(20)]
    sizes = [1000 + i for i in range(20)]
    bufs = client.mcreate(keys, sizes)
    assert [b.size for b in bufs] == sizes
    vals = []
    for i, b in enumerate(bufs):
        v = bytes([i]) * sizes[i]
        b.write(0, v)
        vals.append(v)
    sums = client.mseal(bufs)
    assert sums == [kvds.checksum(v) for v in vals]
    assert all(b.state == "sealed" for b in bufs)
    assert client.mget(keys) == vals
    assert client.mcreate([], []) == [] and client.mseal([]) == []


def test_mcreate_failure_aborts_the_others(client, key):
    client.put(key("taken"), b"t")
    keys = [key("x0"), key("taken"), key("x2")]
    with pytest.raises(kvds.Exists) as ei:
        client.mcreate(keys, [10, 10, 10])
    assert ei.value.index == 1
    # x0 and x2 were created, then aborted: they can be created again.
    assert [client.stat(k)["state"] for k in [key("taken")]] == ["sealed"]
    for k in (key("x0"), key("x2")):
        with pytest.raises(kvds.NotFound):
            client.stat(k)
    for b in client.mcreate([key("x0"), key("x2")], [1, 1]):
        b.write(0, b"y")
        b.seal()


def test_mseal_checks_its_items(client, key, worker, transport):
    a = client.create(key("a"), 1)
    with pytest.raises(ValueError):
        client.mseal([a, a])  # listed twice
    with pytest.raises(TypeError):
        client.mseal([a, b"not a buffer"])
    with pytest.raises(TypeError):
        client.mseal(a)
    other = kvds.Client(worker.addr if transport == "shm" else worker.tcp)
    with pytest.raises(ValueError, match="another client"):
        other.mseal([a])
    a.write(0, b"A")
    assert client.mseal([a]) == [kvds.checksum(b"A")]


def test_waiter_sees_sealed_value(worker, transport, key):
    import threading
    c1 = kvds.Client(worker.addr if transport == "shm" else worker.tcp)
    c2 = kvds.Client(worker.addr if transport == "shm" else worker.tcp)
    w = c1.create(key("late"), 5)
    started = threading.Event()
    result = {}

    def reader():
        started.set()
        result["v"] = c2.get(key("late"), wait_ms=10000)

    t = threading.Thread(target=reader)
    t.start()
    started.wait()
    w.write(0, b"hello")
    w.seal()
    t.join(20)
    assert not t.is_alive() and result["v"] == b"hello"


def test_close_aborts_open_write_buffers(worker, transport, key):
    c = kvds.Client(worker.addr if transport == "shm" else worker.tcp)
    w = c.create(key("open"), 16)
    v = w.view
    with pytest.raises(BufferError):
        c.close()
    v.release()
    c.close()
    assert w.state == "closed"
    # close() aborted it (acknowledged by the worker) before disconnecting.
    with kvds.Client(worker.tcp) as other:
        with pytest.raises(kvds.NotFound):
            other.stat(key("open"))
    with pytest.raises(ValueError):
        w.write(0, b"x")
    with pytest.raises(BufferError):
        memoryview(w)


def _segments(arrays):
    """(address, length) pairs of numpy arrays, as gather/scatter take them."""
    return np.array([[a.ctypes.data, a.nbytes] for a in arrays], dtype=np.uint64)


@pytest.mark.parametrize("size", [100, 300 << 10])
def test_gather_fills_and_checksums(client, key, worker, size):
    """gather() copies a prefix and raw segments into the object in order and
    computes the checksum on the way; seal() returns it, and a TCP reader
    (which verifies checksums) gets the right bytes."""
    rng = np.random.default_rng(size)
    parts = [rng.integers(0, 256, n, dtype=np.uint8) for n in (size // 3, 0, 7)]
    parts.append(rng.integers(0, 256, size - 16 - sum(p.nbytes for p in parts), dtype=np.uint8))
    want = b"H" * 16 + b"".join(p.tobytes() for p in parts)
    w = client.create(key("g"), size)
    w.gather(_segments(parts), prefix=b"H" * 16)
    assert w.seal() == kvds.checksum(want)
    with kvds.Client(worker.tcp) as t:
        assert t.get(key("g")) == want


def test_gather_then_write_is_hashed_again(client, key, worker):
    """A write after gather() invalidates the gathered checksum: the sealed
    checksum is that of the final bytes."""
    a = np.arange(256, dtype=np.uint8)
    w = client.create(key("gw"), 256)
    w.gather(_segments([a]))
    w.write(10, b"zz")
    want = bytearray(a.tobytes())
    want[10:12] = b"zz"
    assert w.seal() == kvds.checksum(bytes(want))
    with kvds.Client(worker.tcp) as t:
        assert t.get(key("gw")) == bytes(want)


def test_gather_and_scatter_errors(client, key):
    a = np.zeros(64, dtype=np.uint8)
    with client.create(key("ge"), 100) as w:
        with pytest.raises(kvds.KvdsError, match="whole object"):
            w.gather(_segments([a]))                       # 64 of 100 bytes
        with pytest.raises(ValueError, match="multiple of 16"):
            w.gather(np.zeros(3, dtype=np.uint64))
        with pytest.raises(ValueError, match="NULL address"):
            w.gather(np.array([[0, 100]], dtype=np.uint64))
    with pytest.raises(ValueError, match="scatter of 64 bytes at offset 40"):
        kvds.scatter(bytes(100), _segments([a]), offset=40)


def test_scatter_copies_in_order(client, key):
    """scatter() is gather's inverse: an object's bytes (from a pinned view)
    land in the segments in order."""
    data = bytes(range(256)) * 4
    client.put(key("s"), data)
    a, b = np.zeros(100, dtype=np.uint8), np.zeros(900, dtype=np.uint8)
    with client.mget_views([key("s")]) as p:
        kvds.scatter(p[0], _segments([a, b]), offset=24)
    assert a.tobytes() == data[24:124] and b.tobytes() == data[124:1024]


def test_gather_checksum_not_trusted_under_a_live_view(client, key, worker):
    """A memoryview exported before gather() may write after it: the seal
    then hashes the final bytes instead of trusting gather's checksum."""
    a = np.arange(256, dtype=np.uint8)
    w = client.create(key("gv"), 256)
    mv = w.view
    w.gather(_segments([a]))
    mv[0] = 66
    mv.release()
    want = bytes([66]) + a.tobytes()[1:]
    assert w.seal() == kvds.checksum(want)
    with kvds.Client(worker.tcp) as t:            # TCP readers verify it
        assert t.get(key("gv")) == want


def test_mseal_holds_its_items_while_the_list_changes(client, key):
    """mseal works on its own tuple of the items: a list another thread
    empties during the call (while the GIL is released) neither crashes
    the interpreter nor makes a seal go unreported."""
    for round_ in range(10):
        ws = [client.create(key(f"ml{round_}-{i}"), 1 << 20) for i in range(8)]
        items = list(ws)
        for w in ws:
            w.write(0, b"x" * (1 << 20))
        stop = threading.Event()

        def shrink():
            while not stop.is_set():
                ws.clear()

        t = threading.Thread(target=shrink)
        t.start()
        try:
            sums = client.mseal(ws)               # the list being cleared
        finally:
            stop.set()
            t.join()
        sealed = [w for w in items if w.state == "sealed"]
        assert len(sums) == len(sealed)
        assert [w.checksum for w in sealed] == sums
        for w in items:
            w.abort()                             # a no-op for the sealed ones


def test_buffer_conversion_that_aborts_is_refused(client, key):
    """Converting the argument of write()/gather() may run Python code; a
    buffer aborted meanwhile is refused, not written."""
    w = client.create(key("ab"), 16)

    class Sneaky:
        def __index__(self):
            w.abort()
            return 0

    with pytest.raises(ValueError, match="aborted"):
        w.write(Sneaky(), b"x")


def test_mcreate_partial_keeps_the_others(client, key):
    """partial=True: a failed item's error takes its place, the others stay
    created and usable."""
    client.put(key("pt"), b"t")
    out = client.mcreate([key("p0"), key("pt"), key("p2")], [10, 10, 10], partial=True)
    assert isinstance(out[1], kvds.Exists) and out[1].index == 1
    for b in (out[0], out[2]):
        assert isinstance(b, kvds.WriteBuffer) and b.state == "writing"
        b.write(0, b"0123456789")
    client.mseal([out[0], out[2]])
    assert client.mget([key("p0"), key("pt"), key("p2")]) == [b"0123456789", b"t",
                                                              b"0123456789"]


@pytest.mark.parametrize("size", [100, 300 << 10])
def test_mgather_fills_each_buffer(client, key, worker, size):
    """mgather() is gather() over many buffers: each gets the prefix and its
    own segments, and its checksum (trusted by the seal: a TCP reader, which
    verifies it, gets the bytes)."""
    rng = np.random.default_rng(size)
    n, half = 3, (size - 8) // 2
    srcs = [rng.integers(0, 256, 2 * half + 100, dtype=np.uint8) for _ in range(n)]
    rest = size - 8 - half
    segs = np.array([[[s.ctypes.data, half], [s.ctypes.data + half + 100, rest]] for s in srcs],
                    dtype=np.uint64)
    keys = [key(f"mg{i}") for i in range(n)]
    bufs = client.mcreate(keys, [size] * n)
    client.mgather(bufs, segs, prefix=b"P" * 8)
    want = [b"P" * 8 + s[:half].tobytes() + s[half + 100:half + 100 + rest].tobytes()
            for s in srcs]
    assert client.mseal(bufs) == [kvds.checksum(w) for w in want]
    with kvds.Client(worker.tcp) as t:
        assert t.mget(keys) == want


def test_mgather_checks_before_copying(client, key, worker, transport):
    a = np.arange(64, dtype=np.uint8)
    b0, b1 = client.mcreate([key("mc0"), key("mc1")], [64, 100])
    b0.write(0, bytes(64))
    with pytest.raises(kvds.KvdsError, match="whole object") as ei:
        client.mgather([b0, b1], _segments([a, a]))    # b1 gets 64 of 100 bytes
    assert ei.value.index == 1
    with b0.view as v:
        assert bytes(v) == bytes(64)                 # nothing was copied
    with pytest.raises(ValueError, match="split evenly"):
        client.mgather([b0, b1], _segments([a, a, a]))
    with pytest.raises(TypeError):
        client.mgather([b0, b"not a buffer"], _segments([a, a]))
    other = kvds.Client(worker.addr if transport == "shm" else worker.tcp)
    with pytest.raises(ValueError, match="another client"):
        other.mgather([b0], _segments([a]))
    b1.abort()
    with pytest.raises(ValueError, match="aborted"):
        client.mgather([b0, b1], _segments([a, a]))
    client.mgather([b0], _segments([a]))
    assert client.mseal([b0]) == [kvds.checksum(a.tobytes())]


def test_mgather_checksum_not_trusted_under_a_live_view(client, key, worker):
    a = np.arange(256, dtype=np.uint8)
    (w,) = client.mcreate([key("mv")], [256])
    mv = w.view
    client.mgather([w], _segments([a]))
    mv[0] = 66
    mv.release()
    want = bytes([66]) + a.tobytes()[1:]
    assert client.mseal([w]) == [kvds.checksum(want)]
    with kvds.Client(worker.tcp) as t:
        assert t.get(key("mv")) == want


def _msave_inputs(n, size, seed):
    """n sources of size - 8 bytes in two segments each (with a gap), as
    msave takes them, and the objects they make with the prefix b"P" * 8."""
    rng = np.random.default_rng(seed)
    half = (size - 8) // 2
    rest = size - 8 - half
    srcs = [rng.integers(0, 256, 2 * half + 100, dtype=np.uint8) for _ in range(n)]
    segs = np.array([[[s.ctypes.data, half], [s.ctypes.data + half + 100, rest]]
                     for s in srcs], dtype=np.uint64)
    want = [b"P" * 8 + s[:half].tobytes() + s[half + 100:half + 100 + rest].tobytes()
            for s in srcs]
    return srcs, segs, want


@pytest.mark.parametrize("size", [100, 300 << 10])
def test_msave_stores_each_object(client, key, worker, size):
    """msave() creates, fills (prefix + own segments) and seals every object
    in rounds; a key stored already is skipped with its status; a TCP reader,
    which verifies checksums, gets the bytes."""
    srcs, segs, want = _msave_inputs(5, size, size)
    keys = [key(f"ms{i}") for i in range(5)]
    client.put(keys[3], b"there")
    st, err = client.msave(keys, size, segs, b"P" * 8, round_bytes=2 * size,
                           chunk_bytes=1)
    assert err is None and st == [0, 0, 0, kvds.E_EXISTS, 0]
    with kvds.Client(worker.tcp) as t:
        assert t.mget(keys) == want[:3] + [b"there"] + want[4:]
    assert client.msave([], size, np.zeros((0, 2), dtype=np.uint64)) == ([], None)


def test_msave_retries_nospace_in_the_next_round(make_worker):
    """Over the connection's cap of unsealed bytes (--max-writing-per-conn)
    the items the worker refused go to the next round: all are stored."""
    size = 256 << 10
    w = make_worker("16MiB", ["--max-writing-per-conn", str(3 * size)])
    srcs, segs, want = _msave_inputs(8, size, 7)
    keys = [f"msr/{i}".encode() for i in range(8)]
    with kvds.Client(w.addr) as c:
        assert c.msave(keys, size, segs, b"P" * 8) == ([0] * 8, None)
        assert c.mget(keys) == want
    w.stop()


def test_msave_cancelled_items(client, key, worker):
    """Items cancelled through the CopyGate are neither copied nor sealed;
    once cancel() returns from another thread, their sources may change (and
    no stored object holds the new bytes), while msave goes on."""
    import errno
    n, size = 48, 256 << 10
    srcs, segs, want = _msave_inputs(n, size, 3)
    keys = [key(f"mc{i}") for i in range(n)]
    gate = kvds.CopyGate(n)
    assert len(gate) == n and not gate.is_cancelled(0)
    gate.cancel([0])
    late = list(range(n // 2, n))
    out = {}

    def save():
        out["r"] = client.msave(keys, size, segs, b"P" * 8, round_bytes=16 * size,
                                chunk_bytes=size, gate=gate)

    t = threading.Thread(target=save)
    t.start()
    gate.cancel(late)
    for i in late:
        srcs[i][:] = 0xEE                 # what a reused block would hold
    t.join()
    st, err = out["r"]
    assert err is None and st[0] == -errno.ECANCELED
    assert all(st[i] == 0 for i in range(1, n // 2))
    assert all(st[i] in (0, -errno.ECANCELED) for i in late)
    with kvds.Client(worker.tcp) as c:
        got = c.mget(keys)
    for i in range(n):
        assert got[i] == (want[i] if st[i] == 0 else None), i
    with pytest.raises(IndexError):
        gate.cancel([n])


def test_msave_ends_with_the_connection(make_worker):
    """A worker that stops answering ends the call with the error, every
    key carrying its code; once the worker is back nothing of them was
    stored or left open."""
    import os
    import signal

    from conftest import wait_for
    w = make_worker("16MiB")
    srcs, segs, want = _msave_inputs(4, 4096, 9)
    keys = [f"mse/{i}".encode() for i in range(4)]
    with kvds.Client(w.addr, timeout_ms=300) as c:
        os.kill(w.proc.pid, signal.SIGSTOP)
        try:
            st, err = c.msave(keys, 4096, segs, b"P" * 8)
        finally:
            os.kill(w.proc.pid, signal.SIGCONT)
    assert isinstance(err, kvds.KvdsError) and st == [err.code] * 4
    with kvds.Client(w.addr) as c:
        # the worker may read the lost connection's CREATE before its end
        wait_for(lambda: c.list(b"mse/") == [], "the objects aborted")
        assert c.exists(keys) == [False] * 4
    w.stop()


def test_msave_checks_before_creating(client, key):
    a = np.arange(64, dtype=np.uint8)
    keys = [key("mk0"), key("mk1")]
    with pytest.raises(kvds.KvdsError, match="filled whole") as ei:
        client.msave(keys, 72, np.array([[[a.ctypes.data, 64]], [[a.ctypes.data, 63]]],
                                        dtype=np.uint64), b"P" * 8)
    assert ei.value.index == 1
    with pytest.raises(ValueError, match="split evenly"):
        client.msave(keys, 64, _segments([a, a, a]))
    with pytest.raises(ValueError, match="CopyGate"):
        client.msave(keys, 64, _segments([a, a]), gate=kvds.CopyGate(3))
    with pytest.raises(TypeError, match="CopyGate"):
        client.msave(keys, 64, _segments([a, a]), gate=object())
    assert client.exists(keys) == [False, False]
    assert client.msave(keys, 64, _segments([a, a])) == ([0, 0], None)


def test_pinned_scatter(client, key):
    """Pinned.scatter() copies each value past offset into its own segments,
    skipping (and naming) the missing ones and those of another size or
    head; the pins cannot be released meanwhile."""
    vals = [bytes([i]) * 4 + bytes(range(i, i + 96)) for i in range(3)]
    client.mput([key("ps0"), key("ps1"), key("ps2")], vals)
    client.put(key("psx"), bytes([9]) * 4 + bytes(95))            # one byte short
    names = [key("ps0"), key("nope"), key("ps2"), key("psx"), key("ps1")]
    dst = [np.zeros(106, dtype=np.uint8) for _ in names]
    segs = np.array([[[d.ctypes.data, 40], [d.ctypes.data + 50, 56]] for d in dst],
                    dtype=np.uint64)
    with client.mget_views(names) as p:
        assert p.scatter(segs, 4) == [1, 3]
        assert p.scatter(segs, 4, head=bytes([2]) * 4) == [0, 1, 3, 4]
    for i, d in zip((0, 2, 1), (dst[0], dst[2], dst[4])):
        assert d[:40].tobytes() == vals[i][4:44] and d[50:].tobytes() == vals[i][44:]
    assert not dst[1].any() and not dst[3].any()
    with client.mget_views([key("ps0"), key("ps1")]) as p:
        with pytest.raises(ValueError, match="split evenly"):
            p.scatter(segs.reshape(-1, 2)[:3])
    p = client.pin([key("ps0")])
    with pytest.raises(TypeError):
        p.scatter(segs[:1], 4)
    p.release()
    p = client.mget_views([key("ps0")])
    p.release()
    with pytest.raises(ValueError, match="released"):
        p.scatter(segs[:1], 4)
