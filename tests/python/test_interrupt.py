"""Signals during blocking calls: Ctrl-C (SIGINT) ends a get-with-wait at
once with KeyboardInterrupt, the client stays usable, and the worker is left
holding nothing for it (the abandoned requests' replies are discarded when
they arrive and their pins released)."""
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import kvds
from conftest import connect, wait_for

SIGINT_AFTER_S = 0.5
PROMPT_S = 1.5  # SIGINT -> KeyboardInterrupt caught, at most
WAIT_MS = 8000

# The child: holds a pinned view, then blocks in each waiting call in turn
# (absent keys, 8 s waits); the parent sends SIGINT during each. The view
# is intact afterwards. Then the child puts the keys (which wakes
# the GETs still parked in the worker), reads them back, pins and releases,
# and checks that the worker holds no pin and no half-written object.
CHILD = r"""
import sys, time
import kvds

addr, tag = sys.argv[1], sys.argv[2].encode()
c = kvds.Client(addr)
k = lambda name: b"intr/" + tag + b"/" + name
buf = bytearray(64)
calls = [
    ("get", lambda: c.get(k(b"get"), wait_ms=WAIT_MS)),
    ("mget", lambda: c.mget([k(b"present"), k(b"mget")], wait_ms=WAIT_MS)),
    ("pin", lambda: c.pin([k(b"present"), k(b"pin")], wait_ms=WAIT_MS)),
    ("mget_views", lambda: c.mget_views([k(b"mget_views")], wait_ms=WAIT_MS)),
    ("get_into", lambda: c.get_into(k(b"get_into"), buf, wait_ms=WAIT_MS)),
]
c.put(k(b"present"), b"here")
held = c.mget_views([k(b"present")])  # pins held across the interrupts
for name, call in calls:
    print("WAITING", name, flush=True)
    t0 = time.monotonic()
    try:
        call()
    except KeyboardInterrupt:
        print("INTERRUPTED", name, round(time.monotonic() - t0, 3), flush=True)
    else:
        sys.exit(name + ": returned instead of being interrupted")
    assert c.connected, name
with held[0] as v:  # still pinned, still intact
    assert bytes(v) == b"here" and kvds.checksum(v) == held.checksums[0]
held.release()
for name, _ in calls:
    c.put(k(name.encode()), b"value of " + name.encode())
for name, _ in calls:
    assert c.get(k(name.encode())) == b"value of " + name.encode(), name
with c.pin([k(b"get"), k(b"pin")]) as p:
    assert p.sizes == [len(b"value of get"), len(b"value of pin")]
    assert c.stat(k(b"get"))["pins"] == 1
with c.mget_views([k(b"mget_views")]) as p:
    assert bytes(p[0]) == b"value of mget_views"
    p[0].release()
deadline = time.monotonic() + 10
while True:  # late replies are read (and dropped) by these calls
    s = c.stats()
    if s["pinned_objects"] == 0 and s["objects_writing"] == 0:
        break
    assert time.monotonic() < deadline, s
    time.sleep(0.02)
assert c.connected
c.close()
print("OK", flush=True)
""".replace("WAIT_MS", str(WAIT_MS))


class Lines:
    """Lines of a child's stdout, each read with a deadline."""

    def __init__(self, proc):
        self.proc, self.buf = proc, b""

    def next(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, "the child said nothing in time"
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                assert chunk, "the child exited:\n" + self.proc.stderr.read().decode()
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode().split()


def test_sigint_interrupts_waits(fresh_worker, transport):
    addr = fresh_worker.addr if transport == "shm" else fresh_worker.tcp
    proc = subprocess.Popen([sys.executable, "-c", CHILD, addr, transport],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = Lines(proc)
        for name in ["get", "mget", "pin", "mget_views", "get_into"]:
            assert out.next() == ["WAITING", name]
            time.sleep(SIGINT_AFTER_S)  # let it block; nothing depends on it
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGINT)
            line = out.next()
            caught = time.monotonic() - t0
            assert line[:2] == ["INTERRUPTED", name], line
            assert caught < PROMPT_S, f"{name}: KeyboardInterrupt after {caught:.2f} s"
            assert float(line[2]) < WAIT_MS / 1000 / 2, line
        assert out.next() == ["OK"]
        assert proc.wait(20) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    with kvds.Client(fresh_worker.addr) as c:
        s = c.stats()
        assert s["pinned_objects"] == 0 and s["objects_writing"] == 0, s


class Stop(Exception):
    pass


@pytest.fixture
def alarm():
    """alarm(handler, after_s, every_s=0): SIGALRM with that handler,
    restored (and the timer stopped) after the test."""
    old = signal.getsignal(signal.SIGALRM)

    def arm(handler, after, every=0.0):
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, after, every)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def test_handler_exception_raised_as_is(worker, transport, key, alarm):
    c = connect(worker, transport)

    def stop(sig, frame):
        raise Stop

    alarm(stop, 0.3)
    t0 = time.monotonic()
    with pytest.raises(Stop):
        c.get(key("absent"), wait_ms=WAIT_MS)
    assert time.monotonic() - t0 < 0.3 + PROMPT_S
    assert c.connected
    c.put(key("absent"), b"late")  # wakes the abandoned GET in the worker
    assert c.get(key("absent")) == b"late"
    wait_for(lambda: c.stats()["pinned_objects"] == 0, "the pin released")
    c.close()


def test_handlers_run_during_a_wait(worker, transport, key, alarm):
    """A handler that returns lets the call go on to its own end, and it
    ran while the call waited (signals coalesce: deferred to the end of the
    call it would have run once)."""
    c = connect(worker, transport)
    ran = []
    alarm(lambda sig, frame: ran.append(time.monotonic()), 0.05, 0.05)
    t0 = time.monotonic()
    with pytest.raises(kvds.Timeout):
        c.get(key("absent"), wait_ms=1000)
    assert time.monotonic() - t0 >= 0.9
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert len(ran) >= 5
    assert c.connected
    c.ping()
    c.close()


def test_handler_cannot_reenter_the_client(worker, transport, key, alarm):
    c = connect(worker, transport)
    seen = []

    def reenter(sig, frame):
        try:
            c.ping()
        except RuntimeError as e:
            seen.append(e)
        raise Stop

    alarm(reenter, 0.2)
    with pytest.raises(Stop):
        c.get(key("absent"), wait_ms=WAIT_MS)
    assert len(seen) == 1 and "signal handler" in str(seen[0])
    c.ping()  # usable again once the call is over
    c.close()


def test_other_threads_not_interrupted(worker, transport, key, alarm):
    """Signal handlers run in the main thread only: a call in another thread
    is not cut short while the main thread handles signals."""
    import threading
    c = connect(worker, transport)
    out = {}

    def body():
        try:
            c.get(key("absent"), wait_ms=600)
        except kvds.Timeout as e:
            out["error"] = e

    ran = []
    alarm(lambda sig, frame: ran.append(1), 0.05, 0.05)
    t = threading.Thread(target=body)
    t.start()
    t.join(20)
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert isinstance(out.get("error"), kvds.Timeout)
    assert ran
    c.close()
