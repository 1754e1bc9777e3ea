"""Fixtures of the Python tests: real `kvds worker` processes.

Each worker runs the binary named by $KVDS_BIN (default build/release/kvds)
on a free loopback port with a private KVDS_RUN_DIR, is waited for until a
client can ping it, and must exit 0 (and remove its socket) when stopped.
"""
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

import kvds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KVDS_BIN = os.environ.get("KVDS_BIN") or os.path.join(ROOT, "build", "release", "kvds")
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 20
_VLLM_CACHE_ROOT = None


def pytest_configure(config):
    """One vLLM cache directory for the session ($VLLM_CACHE_ROOT, inherited
    by every vLLM server, offline run and bench the tests start): vLLM
    inspects a model class in a process of its own (a whole vLLM import)
    unless this cache has its result, so only the first server of the
    session pays for it."""
    global _VLLM_CACHE_ROOT
    _VLLM_CACHE_ROOT = tempfile.mkdtemp(prefix="kvds-tests-vllm-cache.")
    os.environ["VLLM_CACHE_ROOT"] = _VLLM_CACHE_ROOT


def pytest_unconfigure(config):
    if _VLLM_CACHE_ROOT is not None:
        shutil.rmtree(_VLLM_CACHE_ROOT, ignore_errors=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A `kvds worker` process on 127.0.0.1:<free port> (memory=None: no
    --memory flag, the worker's default or its --config file decides)."""

    def __init__(self, run_dir, memory="64MiB", extra=(), port=None, prefix=()):
        """prefix: a command the worker runs under (it execs the rest)."""
        if not os.access(KVDS_BIN, os.X_OK):
            pytest.fail(f"kvds binary not found: {KVDS_BIN} (set KVDS_BIN)")
        self.run_dir = str(run_dir)
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.tcp = f"tcp://{self.addr}"
        self.sock = os.path.join(self.run_dir, f"kvds-{self.port}.sock")
        self.unix = f"unix:{self.sock}"
        self.log_path = os.path.join(self.run_dir, f"worker-{self.port}.log")
        env = dict(os.environ, KVDS_RUN_DIR=self.run_dir)
        env.pop("DS_WORKER_ADDR", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*prefix, KVDS_BIN, "worker", "--listen", self.addr,
                 *(["--memory", memory] if memory else []), *extra],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with kvds.Client(self.addr, timeout_ms=1000) as c:
                    c.ping()
                return
            except (kvds.KvdsOSError, kvds.Timeout, kvds.ConnectionClosed):
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"worker not ready after {START_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(0.02)

    def wait_exit(self, timeout=STOP_TIMEOUT_S):
        """Waits for the worker to exit; returns its exit status."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"worker still running after {timeout} s:\n{self.log()}")

    def stop(self):
        """SIGTERM; asserts a clean exit (status 0, socket removed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.assert_clean_exit()

    def assert_clean_exit(self):
        rc = self.wait_exit()
        assert rc == 0, f"worker exited with {rc}:\n{self.log()}"
        assert not os.path.exists(self.sock), "worker left its socket behind"


@pytest.fixture(scope="session")
def make_worker(tmp_path_factory):
    """Starts workers; every one still running is stopped (exit 0 asserted)
    at the end of the session."""
    workers = []

    def start(memory="64MiB", extra=(), port=None):
        w = Worker(tmp_path_factory.mktemp("kvds"), memory, extra, port)
        workers.append(w)
        return w

    yield start
    for w in workers:
        if w.proc.returncode is None:
            w.stop()


@pytest.fixture(scope="session")
def worker(make_worker):
    """The worker shared by most tests (64 MiB pool, 2 I/O threads)."""
    return make_worker("64MiB", ["--threads", "2"])


@pytest.fixture
def fresh_worker(make_worker):
    """A worker of this test alone (for exact counters), stopped after it."""
    w = make_worker("32MiB")
    yield w
    w.stop()


@pytest.fixture(scope="module")
def static_pair(make_worker):
    """Two workers naming each other with --peers (a static cluster), for
    the module; stopped (exit 0 asserted) at its end."""
    pa, pb = free_port(), free_port()
    a = make_worker("64MiB", ["--peers", f"127.0.0.1:{pb}"], port=pa)
    b = make_worker("64MiB", ["--peers", f"127.0.0.1:{pa}"], port=pb)
    yield a, b
    a.stop()
    b.stop()


def wait_for(pred, what, timeout=10.0, poll=0.01):
    """Polls pred() until it is true; fails naming `what` after timeout s."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


def put_seen(a, b, vals):
    """Puts vals ({key: bytes}) on worker a and waits until worker b finds
    every key through the directory; returns the keys."""
    keys = list(vals)
    with kvds.Client(a.addr) as ca:
        for k, v in vals.items():
            ca.put(k, v)
    with kvds.Client(b.addr) as cb:
        wait_for(lambda: cb.exists(keys) == [True] * len(keys), "the directory")
    return keys


def stop_owner_mid_read(reader, b, owner, key, val, tries=200):
    """Reads `key` with `reader` (a client of worker b), hinted at `owner`
    (a Worker), in a thread until one read is caught with b's object half
    written; then the owner is stopped (SIGSTOP) there. Returns (thread,
    outcome): outcome gets "value" or "error" when the read ends. A read
    that finished first is checked against `val` and undone (b's copy
    deleted)."""
    outcome = {}

    def read():
        try:
            outcome["value"] = reader.get(key, hint=owner.addr)
        except kvds.KvdsError as e:
            outcome["error"] = e

    with kvds.Client(b.addr) as watch:
        for _ in range(tries):
            outcome.clear()
            t = threading.Thread(target=read)
            t.start()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and t.is_alive():
                if watch.stats()["objects_writing"] > 0:
                    os.kill(owner.proc.pid, signal.SIGSTOP)
                    time.sleep(0.05)
                    if watch.stats()["objects_writing"] > 0:
                        return t, outcome
                    os.kill(owner.proc.pid, signal.SIGCONT)
            t.join(30)
            assert outcome.get("value") == val, outcome
            watch.delete(key)  # B's copy: read it again
    pytest.fail("never caught a read in the middle of the value")


@pytest.fixture(params=["shm", "tcp"])
def transport(request):
    return request.param


def connect(worker, transport, **kw):
    c = kvds.Client(worker.addr if transport == "shm" else worker.tcp, **kw)
    assert c.is_local == (transport == "shm")
    return c


@pytest.fixture
def client(worker, transport):
    """A client of the shared worker over shared memory or TCP."""
    c = connect(worker, transport)
    yield c
    c.close()


_seq = itertools.count()


@pytest.fixture
def key(request):
    """key(name) -> a key unique to this test (bytes)."""
    prefix = f"{request.node.name}-{next(_seq)}/".encode()

    def make(name=""):
        return prefix + (name.encode() if isinstance(name, str) else name)

    make.prefix = prefix
    return make
