"""Threads: the GIL is released while a call blocks, and one Client can be
shared by several threads."""
import threading
import time

import pytest

import kvds
from conftest import connect


def run_thread(fn):
    out = {}

    def body():
        t0 = time.monotonic()
        try:
            out["value"] = fn()
        except BaseException as e:  # reported to the main thread
            out["error"] = e
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=body)
    t.start()
    return t, out


def test_wait_woken_by_put_from_another_thread(worker, transport, key):
    waiter = connect(worker, transport)
    writer = connect(worker, transport)
    started = threading.Event()

    def get():
        started.set()
        return waiter.get(key("k"), wait_ms=10000)

    t, out = run_thread(get)
    started.wait()
    # If get() held the GIL while waiting, this thread could not run until it
    # timed out (Timeout below) — so this also proves the GIL is released.
    time.sleep(0.2)
    writer.put(key("k"), b"woken")
    t.join(30)
    assert not t.is_alive()
    assert out.get("error") is None and out["value"] == b"woken"
    assert out["elapsed"] < 9


def test_mget_views_wait_woken(worker, transport, key):
    waiter = connect(worker, transport)
    writer = connect(worker, transport)
    started = threading.Event()

    def get():
        started.set()
        with waiter.mget_views([key("a"), key("b")], wait_ms=10000) as p:
            return [bytes(v) if v is not None else None for v in p]

    t, out = run_thread(get)
    started.wait()
    time.sleep(0.1)
    writer.put(key("a"), b"A")
    time.sleep(0.1)
    writer.put(key("b"), b"B")
    t.join(30)
    assert out.get("error") is None and out["value"] == [b"A", b"B"]


def test_gil_released_while_waiting(worker, transport, key):
    """The main thread runs Python while a get waits: it wakes from a short
    sleep and finds the waiter still inside its 3 s wait. (Were the GIL held
    through the wait, the main thread could only run again once the get had
    returned.) No speed is measured: only which happens first."""
    c = connect(worker, transport)
    started = threading.Event()

    def get():
        started.set()
        return c.get(key("never"), wait_ms=3000)

    t, out = run_thread(get)
    started.wait()
    time.sleep(0.3)
    ran_during_wait = t.is_alive()
    t.join()
    assert isinstance(out.get("error"), kvds.Timeout)
    assert out["elapsed"] >= 2.9
    assert ran_during_wait, "the main thread only ran again after the get returned"


def test_shared_client_from_many_threads(worker, transport, key):
    c = connect(worker, transport)
    n_threads, n_iter = 4, 150
    errors = []

    def work(tid):
        try:
            for i in range(n_iter):
                k = key(f"{tid}/{i}")
                v = f"{tid}:{i}:".encode() * (1 + i % 50)
                c.put(k, v)
                assert c.get(k) == v
                with c.mget_views([k, key("missing")]) as p:
                    assert p[0] == v and p[1] is None
                w = c.create(k + b"/w", len(v))
                w.write(0, v)
                assert w.seal() == kvds.checksum(v)
                assert c.exists([k, k + b"/w"]) == [True, True]
                if i % 10 == 0:
                    c.stats()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(c.list(key.prefix, limit=None)) == n_threads * n_iter * 2
    c.ping()


def test_finalizers_from_other_threads(worker, key):
    """Pinned objects dropped in other threads while the client is busy are
    released once it is free (in order, before later calls)."""
    c = connect(worker, "shm")
    keys = [key(f"f{i}") for i in range(8)]
    c.mput(keys, [b"x"] * 8)
    pins = [c.mget_views([k]) for k in keys]
    barrier = threading.Barrier(len(pins))

    def drop(i):
        barrier.wait()
        pins[i] = None  # finalizer runs here, racing with the others

    threads = [threading.Thread(target=drop, args=(i,)) for i in range(len(pins))]
    for t in threads:
        t.start()
    for _ in range(20):
        c.ping()
    for t in threads:
        t.join(30)
    assert [c.stat(k)["pins"] for k in keys] == [0] * 8


def test_close_while_another_thread_waits(worker, key):
    c = connect(worker, "shm")
    c.put(key("p"), b"p")
    p = c.mget_views([key("p")])
    started = threading.Event()

    def get():
        started.set()
        return c.get(key("never"), wait_ms=1500)

    t, out = run_thread(get)
    started.wait()
    time.sleep(0.3)
    c.close()  # the waiting call finishes first; then the client closes
    assert c.closed
    with pytest.raises(ValueError):
        c.ping()
    assert not p.released  # still in use by the waiting call's connection
    t.join(30)
    assert isinstance(out.get("error"), kvds.Timeout)
    assert p.released
    with pytest.raises(ValueError):
        p[0]


def test_forked_child_leaves_the_parents_connection_alone(worker, key):
    """A child inherits the Client and its Pinned objects: using the client
    there raises, and dropping them sends nothing on the parent's socket
    (else the parent's pin would be released behind its back)."""
    import os

    c = connect(worker, "shm")
    c.put(key("f"), b"f")
    p = c.mget_views([key("f")])
    w = c.create(key("w"), 4)
    pid = os.fork()
    if pid == 0:  # the child reports through its exit status only
        status = 1
        try:
            try:
                c.ping()
                status = 3
            except RuntimeError:
                ok = bytes(p[0]) == b"f"  # the pool mapping is inherited
                del p, w  # their finalizers run here, in the child
                c.close()
                status = 0 if ok and c.closed else 4
        finally:
            os._exit(status)
    _, st = os.waitpid(pid, 0)
    assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0, st
    # Still pinned, still being written: the child's finalizers sent nothing.
    assert c.stat(key("f"))["pins"] == 1
    assert c.stat(key("w"))["state"] == "writing"
    w.write(0, b"wxyz")
    w.seal()
    p.release()
    assert c.stat(key("f"))["pins"] == 0
    c.ping()
