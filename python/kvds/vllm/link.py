"""Connections to the node's kvds worker that survive its outages.

A Link is one kvds client, connected when first needed; after a failed
connect or a call that timed out no other attempt is made for ``retry_s``
(doubling with each failure in a row, up to 8 x retry_s), so while the
worker is down or frozen every call fails at once (a cache miss, a skipped
save) instead of waiting. Health is shared by every link of one connector: one warning
when the worker becomes unreachable, one line when it is back.
"""
import logging
import threading
import time

import kvds

log = logging.getLogger("vllm.kvds")

CONNECT_TIMEOUT_MS = 2000     # a stopped worker must not hold a connect for long


class WarnOnce:
    """Logs each kind of warning once. At most `cap` kinds are remembered
    (a kind may come from a request: a hint naming some worker); past that,
    new kinds are logged at most once a minute."""

    def __init__(self, cap=256):
        self._seen = set()
        self._cap = cap
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, what, msg, *args):
        with self._lock:
            if what in self._seen:
                return
            if len(self._seen) < self._cap:
                self._seen.add(what)
            else:
                now = time.monotonic()
                if now - self._last < 60:
                    return
                self._last = now
        log.warning(msg, *args)


class Health:
    def __init__(self, addr):
        self.addr = addr
        self._lock = threading.Lock()
        self._up = None           # unknown until the first attempt
        self.outages = 0

    def down(self, err):
        with self._lock:
            if self._up is False:
                return
            self._up = False
            self.outages += 1
        log.warning("kvds: worker %s unreachable (%s); serving without the KV cache store "
                    "until it is back (loads miss, saves are skipped)", self.addr, err)

    def ok(self):
        with self._lock:
            was, self._up = self._up, True
        if was is False:
            log.info("kvds: worker %s reachable again", self.addr)
        elif was is None:
            log.info("kvds: connected to worker %s", self.addr)

    @property
    def up(self):
        return self._up


class Link:
    """One client for one thread at a time (kvds clients are not shared
    between threads here: a blocking call would hold up the others).

    on_open(client) runs after each connect (a failure there closes the
    client and counts as a failed connect); on_close(client) before each
    close."""

    def __init__(self, addr, timeout_ms, health, retry_s, on_open=None, on_close=None):
        self.addr = addr
        self.timeout_ms = timeout_ms
        self.health = health
        self.retry_s = retry_s
        self.on_open = on_open
        self.on_close = on_close
        self._c = None
        self._next_try = 0.0
        self._fails = 0

    def get(self):
        """The connected client, or None while the worker is unreachable."""
        c = self._c
        if c is not None and c.connected:
            return c
        if c is not None:
            self.close()
            self.health.down("connection lost")
        now = time.monotonic()
        if now < self._next_try:
            return None
        c = None
        try:
            c = kvds.Client(self.addr, timeout_ms=min(self.timeout_ms, CONNECT_TIMEOUT_MS))
            c.set_timeout(self.timeout_ms)
            if self.on_open is not None:
                self.on_open(c)
        except (kvds.KvdsError, OSError) as e:
            self._backoff(now)
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
            self.health.down(e)
            return None
        self.health.ok()
        self._fails = 0
        self._c = c
        return c

    def _backoff(self, now):
        self._fails += 1
        self._next_try = now + self.retry_s * min(8, 1 << (self._fails - 1))

    def failed(self):
        """A call on the client failed: a lost connection is replaced on the
        next get(); a worker that stopped answering is not asked again for
        retry_s."""
        c = self._c
        if c is not None and not c.connected:
            self.close()
            self._backoff(time.monotonic())
            self.health.down("connection lost or worker not answering")

    def close(self):
        c, self._c = self._c, None
        if c is None:
            return
        if self.on_close is not None:
            try:
                self.on_close(c)
            except Exception as e:  # never let cleanup hide the real work
                log.warning("kvds: closing a client: %s", e)
        try:
            c.close()
        except Exception:
            pass


class _Worker(threading.Thread):
    """A pool thread with a link of its own."""

    def __init__(self, pool, name):
        super().__init__(name=name, daemon=True)
        self.pool = pool
        self.link = pool.make_link()

    def run(self):
        self.link.get()
        try:
            while True:
                job = self.pool._next()
                if job is None:
                    return
                try:
                    job.run(self.link)
                except Exception as e:  # a job must always end
                    job.fail(e)
        finally:
            self.link.close()


class Pool:
    """Runs jobs (objects with run(link) and fail(exc)) on up to `size`
    threads, started as needed: a job that waits (a hand-off not sealed
    yet) holds up no other job while a thread is free, and at most `size`
    calls are in flight."""

    def __init__(self, name, size, make_link):
        self.name = name
        self.size = size
        self.make_link = make_link
        self._cv = threading.Condition()
        self._jobs = []
        self._idle = 0
        self._threads = []
        self._closed = False

    def submit(self, job):
        with self._cv:
            if self._closed:
                raise RuntimeError("pool closed")
            self._jobs.append(job)
            # every queued job gets a thread of its own, up to size
            if len(self._jobs) > self._idle and len(self._threads) < self.size:
                t = _Worker(self, f"{self.name}-{len(self._threads)}")
                self._threads.append(t)
                t.start()
            self._cv.notify()

    def prestart(self, n):
        """Starts n threads now: each connects (and maps the pool) before
        its first job instead of during it."""
        with self._cv:
            while len(self._threads) < min(n, self.size):
                t = _Worker(self, f"{self.name}-{len(self._threads)}")
                self._threads.append(t)
                t.start()

    def _next(self):
        with self._cv:
            while not self._jobs and not self._closed:
                self._idle += 1
                self._cv.wait()
                self._idle -= 1
            if self._closed:
                return None
            return self._jobs.pop(0)

    def close(self, timeout):
        """Stops the threads after their current job; jobs still queued fail."""
        with self._cv:
            self._closed = True
            jobs, self._jobs = self._jobs, []
            self._cv.notify_all()
        for job in jobs:
            job.fail(RuntimeError("connector shut down"))
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
