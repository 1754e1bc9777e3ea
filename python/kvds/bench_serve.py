"""`kvds bench ttft`: seed 004's TTFT method with real vLLM servers, timed
by vLLM's own `vllm bench serve`.

    kvds bench ttft [--quick] [--steps 1,2,3,disk,1p1d,2p2d] [--json] [--plot FILE.png]
    python -m kvds.bench_serve ...

Seed 004 (vLLM-Ascend's "PD-colocated with Mooncake multi-instance" guide)
sends random prompts (1024 tokens in, 10 out, 100 requests, concurrency 25,
temperature 0, ignore_eos) to two vLLM instances sharing a KV-cache pool and
reports the mean TTFT of three steps: TTFT1, set A on instance 1 with
nothing cached; TTFT2, set A again on instance 1 after a set B has evicted
A from the instance's own cache (a hit in the node's DRAM); TTFT3, set A on
instance 2 (a hit in the other node's DRAM). Its figures: 2322, 739 and
948 ms (TTFT3/TTFT2 = 1.28, TTFT2/TTFT1 = 0.32).

Here, on one machine, with a tiny local Llama (kvds.testmodel: seeded random
weights, a word-level tokenizer of --vocab tokens; nothing is downloaded),
every vLLM server of the installed vLLM runs with kvds.vllm.KvdsConnector
and PYTHONHASHSEED=0; the "nodes" are kvds workers in one cluster (static
peers, or --etcd):

    1     instance I1 (kv_both, worker W1), set A (seed --seed): nothing cached
    2     I1 gets set B (seed + 1), which evicts A from vLLM's own prefix
          cache (limited to --gpu-blocks blocks), then set A again: A's
          blocks come from W1 (the node's DRAM)
    3     instance I2 (kv_both, its own worker W2) gets set A: W2 pulls
          A's blocks from W1
    disk  instance ID (kv_both) on its own worker WD with the disk tier
          (--tier posix --disk-policy spill, files in the bench's
          directory): set A, then set B (evicts A from vLLM's cache), then
          filler objects put straight into WD (1.5 x its pool, each put
          held back until WD's spill is ahead of its eviction) push A's
          blocks out of WD's DRAM onto its disk; the page cache is dropped
          when the bench may (root); then set A again: its blocks are read
          back from WD's files (WD's disk_reads counter says how many)
    1p1d  `kvds proxy` with prefill P1 (kv_producer, W1) and decode D1
          (kv_consumer, W2), a fresh set (seed + 2); the client's TTFT
          through the proxy
    2p2d  P1, P2 (W1, W3) and D1, D2 (W2, W4) behind one proxy, a fresh
          set (seed + 3)

The "nodes" get their own CPUs (--pin, the default): the servers of W1 and
W4 run on the first half of the CPUs, those of W2 and W3 on the second, so
instance 1 and instance 2, a prefill and its decode, never share a core, as
on two machines. Unpinned on a 2-core machine, two busy servers' OpenMP
threads oversubscribe the cores (a quick PD run: 1.4 s TTFT instead of
0.16 s).

Each step is one `vllm bench serve --dataset-name random` run (same seed:
the same prompts; its prompts start at a random token id, so two prompts of
a set share no block) with --save-detailed: the per-request TTFTs give the
median and p99. Whether a hit came from kvds is read, not assumed: the
connector's log line per load ("kvds: request R: loaded N of M blocks (B
bytes) ... in T ms", matched to the request by its X-Request-Id), vLLM's own
counters of prefix-cache and connector (external) hit tokens, and the bytes
each worker pulled from its peers (`kvds status --json`). The transfer share
is the median over requests of (the connector's load time / the TTFT).

LMCache (`LMCacheConnectorV1`, --lmcache-path: a directory with the lmcache
package, added to the servers' PYTHONPATH; `make bench-ttft` installs
lmcache 0.5.6 there) runs the same steps 1-3 side by side (local CPU
backend; instance 2 reads through an `lmcache.v1.server` both instances
share) when its server starts; when LMCache fails at start or falls back to
recompute, its row gives the reason found in the server's log.

Every server, proxy and worker is stopped at the end, also after an error
or Ctrl-C / SIGTERM.
"""
import argparse
import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from .bench_connector import BenchError, OwnWorker, _free_port, _size, find_kvds_bin
from .bench_ttft import LOADED, QUIET_S, Server, TtftError, wait_health

STEPS = ("1", "2", "3", "disk", "1p1d", "2p2d")
SHORT = {"1": "baseline", "2b": "set B", "2": "local hit", "3": "cross-node",
         "disk": "disk hit", "1p1d": "PD", "2p2d": "PD"}
TITLES = {
    "1": "baseline: set A, nothing cached",
    "2b": "set B (evicts A from vLLM's cache)",
    "2": "local DRAM hit: set A again",
    "3": "cross-node hit: set A on I2",
    "disk": "disk-tier hit: A evicted from DRAM",
    "1p1d": "PD 1P1D through kvds proxy",
    "2p2d": "PD 2P2D through kvds proxy",
}
SEED_004 = {"ttft1_ms": 2322, "ttft2_ms": 739, "ttft3_ms": 948}
HEAD_SIZE = 64
START_TIMEOUT_S = 900
QUICK = {"input_len": 512, "output_len": 4, "num_prompts": 4, "concurrency": 2,
         "model_layers": 4, "model_hidden": 256, "steps": ["1", "2", "1p1d"]}
FULL = {"input_len": 2048, "output_len": 10, "num_prompts": 24, "concurrency": 6,
        "model_layers": 8, "model_hidden": 512, "steps": list(STEPS)}


# ---------------------------------------------------------------------------
# options


def _steps(s):
    v = [x.strip().lower() for x in s.split(",") if x.strip()]
    bad = [x for x in v if x not in STEPS]
    if bad or not v:
        raise argparse.ArgumentTypeError(f"steps are {', '.join(STEPS)}: {s!r}")
    return [x for x in STEPS if x in v]


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=os.environ.get("KVDS_BENCH_PROG", "python -m kvds.bench_serve"),
        description="Seed 004's TTFT steps (baseline, local DRAM hit, cross-node hit), a "
                    "disk-tier hit, and "
                    "PD through `kvds proxy`, with real vLLM servers through "
                    "kvds.vllm.KvdsConnector, timed by vLLM's own `vllm bench serve` "
                    "(random dataset). Starts its own workers, servers and proxies "
                    "and stops them at the end.",
        epilog="Defaults: --input-len 2048 --output-len 10 --num-prompts 24 --concurrency 6 "
               "--model-layers 8 --model-hidden 512 --steps 1,2,3,disk,1p1d,2p2d; --quick: 512 / 4 "
               "tokens, 4 prompts, concurrency 2, a 4-layer 256-wide model, steps 1,2,1p1d "
               "(options given still win).")
    w = p.add_argument_group("workload (seed 004: 1024 in, 10 out, 100 requests, concurrency 25)")
    w.add_argument("--quick", action="store_true",
                   help="small counts and model, steps 1,2,1p1d (a minute or two here)")
    w.add_argument("--input-len", type=int, help="prompt tokens (default 2048)")
    w.add_argument("--output-len", type=int, help="generated tokens (default 10)")
    w.add_argument("--num-prompts", type=int, help="requests per set (default 24)")
    w.add_argument("--concurrency", type=int, help="requests in flight (default 6)")
    w.add_argument("--steps", type=_steps, help="which steps, of 1,2,3,disk,1p1d,2p2d (2 and "
                   "3 need 1; default all)")
    w.add_argument("--seed", type=int, default=0,
                   help="set A's seed (default 0): B is seed+1, the PD sets seed+2 and seed+3")
    m = p.add_argument_group("model and servers")
    m.add_argument("--model-layers", type=int, help="layers (default 8)")
    m.add_argument("--model-hidden", type=int, help="hidden size, a multiple of 128 (default "
                   "512; heads of 64, hidden/128 KV heads)")
    m.add_argument("--vocab", type=int, default=8192, help="tokens of the model's word-level "
                   "tokenizer (default 8192)")
    m.add_argument("--block-size", type=int, default=128,
                   help="vLLM's block size, a multiple of 32 on the CPU (default 128)")
    m.add_argument("--gpu-blocks", type=int, default=None,
                   help="vLLM's own KV cache in blocks (--num-gpu-blocks-override; default: "
                        "room for the requests in flight, so that set B evicts set A)")
    m.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for every vLLM server (repeatable; "
                        "--server-arg=--flag=value)")
    m.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="give the nodes their own half of the CPUs, as if on two machines: "
                        "the servers of W1 and W4 run on the first half, those of W2 and W3 "
                        "on the second, so I1 / I2, P1 / D1 and P2 / D2 never share CPUs "
                        "(default; --no-pin: every server on every CPU, where two busy "
                        "servers' OpenMP threads oversubscribe the cores)")
    m.add_argument("--start-timeout", type=int, default=START_TIMEOUT_S,
                   help=f"seconds for the servers to start (default {START_TIMEOUT_S})")
    k = p.add_argument_group("kvds")
    k.add_argument("--kvds-bin", default=None,
                   help="the kvds binary for workers and `kvds proxy` (default $KVDS_BIN, PATH)")
    k.add_argument("--memory", type=_size, default=None,
                   help="pool of W1 and W2 (default 3 sets' KV bytes + 64 MiB; W3, W4 half)")
    k.add_argument("--disk-memory", type=_size, default=None,
                   help="pool of WD, the disk step's worker (default 1.5 sets' KV bytes + "
                        "16 MiB)")
    k.add_argument("--disk-dir", default=None, metavar="DIR",
                   help="where WD's files go (default: a directory in the bench's own, "
                        "under $TMPDIR); the disk step removes its files at the end")
    k.add_argument("--etcd", default=None, metavar="HOST:PORT",
                   help="the workers join through this running etcd (default: static peers)")
    c = p.add_argument_group("LMCache, side by side")
    c.add_argument("--lmcache", choices=("auto", "off"), default="auto",
                   help="auto (default): try LMCacheConnectorV1 when --lmcache-path is given "
                        "or lmcache imports here")
    c.add_argument("--lmcache-path", default=os.environ.get("KVDS_LMCACHE_PATH") or None,
                   help="directory with the lmcache package (put first on the servers' "
                        "PYTHONPATH; default $KVDS_LMCACHE_PATH)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one JSON object instead")
    o.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw the TTFT distribution of every step (needs matplotlib)")
    o.add_argument("--keep-logs", action="store_true",
                   help="keep the servers' logs and vllm bench serve's results (the directory "
                        "is printed); after a failure they are always kept")
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    for name, v in base.items():
        if getattr(a, name) is None:
            setattr(a, name, v)
    for name in ("input_len", "output_len", "num_prompts", "concurrency", "model_layers",
                 "model_hidden", "vocab", "block_size"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if a.model_hidden % 128:
        p.error("--model-hidden must be a multiple of 128")
    if a.vocab < 4 * a.num_prompts:
        p.error("--vocab is too small for this many prompts")
    if ("2" in a.steps or "3" in a.steps) and "1" not in a.steps:
        p.error("steps 2 and 3 need step 1 (it stores set A)")
    if a.concurrency > a.num_prompts:
        a.concurrency = a.num_prompts
    return a


# ---------------------------------------------------------------------------
# geometry


class Geometry:
    """The model, the requests and what they take in blocks and bytes."""

    def __init__(self, a):
        self.layers, self.hidden = a.model_layers, a.model_hidden
        self.heads, self.kv_heads = a.model_hidden // HEAD_SIZE, a.model_hidden // 128
        self.token_bytes = self.layers * 2 * self.kv_heads * HEAD_SIZE * 4        # float32
        self.block_size = a.block_size
        self.max_len = a.input_len + a.output_len + 64
        self.req_blocks = -(-(a.input_len + a.output_len) // a.block_size)
        # room for the requests in flight (and the null block); no more, so a
        # set of more prompts than that pushes the previous set out
        self.cache_blocks = a.gpu_blocks or a.concurrency * self.req_blocks + a.concurrency + 1
        self.set_blocks = a.num_prompts * (a.input_len // a.block_size)
        self.set_bytes = a.num_prompts * a.input_len * self.token_bytes
        if self.cache_blocks * a.block_size < self.max_len:
            raise BenchError(f"--gpu-blocks {self.cache_blocks}: vLLM needs at least "
                             f"{-(-self.max_len // a.block_size)} blocks for one request")

    def describe(self):
        return {"layers": self.layers, "hidden": self.hidden, "heads": self.heads,
                "kv_heads": self.kv_heads, "head_size": HEAD_SIZE, "dtype": "float32",
                "block_size": self.block_size, "kv_bytes_per_token": self.token_bytes,
                "vllm_cache_blocks": self.cache_blocks, "set_blocks": self.set_blocks,
                "set_bytes": self.set_bytes}


# ---------------------------------------------------------------------------
# processes


class _Child:
    """A child process in its own process group, its output in log_path."""

    def _spawn(self, args, env=None, cwd=None):
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                         start_new_session=True)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


class Proxy(_Child):
    """`kvds proxy` on 127.0.0.1:<free port>."""

    def __init__(self, binary, tmp, prefill, decode):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(tmp, f"proxy-{self.port}.log")
        args = [binary, "proxy", "--host", "127.0.0.1", "--port", str(self.port)]
        for s in prefill:
            args += ["--prefill", f"127.0.0.1:{s.port}"]
        for s in decode:
            args += ["--decode", f"127.0.0.1:{s.port}"]
        self._spawn(args)

    def wait_ready(self, timeout_s=60):
        wait_health(self, "kvds proxy", time.monotonic() + timeout_s, BenchError, 2000, 0.3)

    def legs(self):
        """Seconds summed and counts of the proxy's hops by role: prefill
        (the whole prefill answer) and decode (until its first byte)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode(errors="replace")
        c.close()
        out = {}
        for m in re.finditer(r'^kvds_proxy_backend_seconds_(sum|count)\{role="(\w+)"[^}]*\} (\S+)$',
                             text, re.M):
            key = (m.group(2), m.group(1))
            out[key] = out.get(key, 0.0) + float(m.group(3))
        return out


class LmcacheServer(_Child):
    """`python -m lmcache.v1.server 127.0.0.1 PORT cpu`: the store both
    LMCache instances share (LMCache's analogue of the kvds cluster)."""

    def __init__(self, path, tmp):
        self.port = _free_port()
        self.log_path = os.path.join(tmp, f"lmcache-server-{self.port}.log")
        env = dict(os.environ)
        if path:
            env["PYTHONPATH"] = path
        self._spawn([sys.executable, "-m", "lmcache.v1.server", "127.0.0.1", str(self.port),
                     "cpu"], env=env, cwd=tmp)


def _metrics(server):
    """vLLM's Prometheus counters of the server, summed over labels."""
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode(errors="replace")
    c.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith("vllm:"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


def _lmcache_failure(log, exited=False):
    """The reason LMCache did not come up, from its server's log, or None:
    e.g. "CreateGPUConnector: RuntimeError: No supported cpu connector
    found." (LMCache then serves without a cache: "degraded mode"). exited:
    the server is gone, so any traceback counts."""
    lines = log.splitlines()
    marks = ["Failed to initialize LMCache", "degraded mode"]
    if exited:
        marks.append("Traceback (most recent call last)")
    start = next((i for i, x in enumerate(lines) if any(m in x for m in marks)), None)
    if start is None:
        return None
    func, exc = None, None
    for line in lines[start:]:
        m = re.search(r'File "[^"]*", line \d+, in (\w+)', line)
        if m:
            func = m.group(1)
            continue
        m = re.search(r"\b([A-Z]\w*(?:Error|Exception)): (.+)$", line)
        if m:
            exc = f"{m.group(1)}: {m.group(2).strip()}"
            break
    if exc is None:
        return lines[start].strip()[-300:]
    degraded = any("degraded mode" in x for x in lines[start:])
    return (f"{func}: {exc}" if func else exc) + \
        ("; LMCache falls back to recompute" if degraded else "")


# ---------------------------------------------------------------------------
# statistics


def _pct(xs, q):
    """numpy's default (linear) percentile, as vllm bench serve reports."""
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _summary(xs):
    if not xs:
        return {"n": 0}
    return {"p50": statistics.median(xs), "p99": _pct(xs, 99), "mean": statistics.fmean(xs),
            "min": min(xs), "max": max(xs), "n": len(xs), "samples": list(xs)}


# ---------------------------------------------------------------------------
# the bench


class Bench:
    def __init__(self, a, progress):
        self.a = a
        self.progress = progress
        self.g = Geometry(a)
        self.tmp = tempfile.mkdtemp(prefix="kvds-bench-serve.")
        self.model = os.path.join(self.tmp, "model")
        self.ns = f"bench-ttft-{os.getpid()}-{int(time.time())}"
        self.kvds_bin = find_kvds_bin(a.kvds_bin)
        self.procs = []
        self.workers = []
        self.disk_dirs = []
        self.gpu = self._gpu()

    @staticmethod
    def _gpu():
        try:
            import torch
            return bool(torch.cuda.is_available())
        except Exception:
            return False

    def close(self):
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop()
        for w in reversed(self.workers):
            with contextlib.suppress(Exception):
                w.stop()
        for d in self.disk_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.procs, self.workers, self.disk_dirs = [], [], []

    # workers

    def start_workers(self, n):
        ports = [_free_port() for _ in range(n)]
        big = self.a.memory or 3 * self.g.set_bytes + (64 << 20)
        small = self.a.memory or max(self.g.set_bytes * 3 // 2, 0) + (64 << 20)
        for i, port in enumerate(ports):
            if self.a.etcd:
                extra = ["--etcd_address", self.a.etcd, "--cluster", self.ns]
            else:
                peers = [f"127.0.0.1:{q}" for q in ports if q != port]
                extra = ["--peers", ",".join(peers)] if peers else []
            mem = -(-(big if i < 2 else small) // (1 << 20)) << 20     # whole MiB
            self.workers.append(OwnWorker(self.kvds_bin, mem, extra, port))
        deadline = time.monotonic() + 60
        for w in self.workers:
            while len(self._status(w).get("cluster", {}).get("members", [])) < n:
                if time.monotonic() > deadline:
                    raise BenchError(f"worker {w.addr} does not see {n} members:\n"
                                     f"{json.dumps(self._status(w))[:2000]}")
                time.sleep(0.2)

    def _status(self, w):
        p = subprocess.run([self.kvds_bin, "status", "--worker", w.addr, "--json"],
                           capture_output=True, text=True, timeout=30)
        if p.returncode:
            raise BenchError(f"kvds status --worker {w.addr}: {p.stderr.strip()}")
        return json.loads(p.stdout)

    def peer_bytes(self):
        """Bytes each worker has received from its peers, summed."""
        total = 0
        for w in self.workers:
            for m in self._status(w).get("cluster", {}).get("members", []):
                if not m.get("self"):
                    total += m.get("bytes_in", 0)
        return total

    # servers

    def _server_args(self):
        args = ["--block-size", str(self.g.block_size),
                "--num-gpu-blocks-override", str(self.g.cache_blocks)]
        if self.gpu:     # several servers share the one GPU
            args += ["--gpu-memory-utilization", "0.15"]
        return args + list(self.a.server_arg)

    def _cpus(self, node):
        """The CPUs of half 0 (W1, W4) or 1 (W2, W3) with --pin, else None."""
        if not self.a.pin:
            return None
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        half = len(cpus) // 2
        return set(cpus[:half] if node == 0 else cpus[half:])

    def kvds_server(self, name, role, worker, node=None):
        kv = {"kv_connector": "KvdsConnector", "kv_connector_module_path": "kvds.vllm",
              "kv_role": role, "kv_load_failure_policy": "recompute",
              "kv_connector_extra_config": {"worker_addr": worker.addr, "namespace": self.ns}}
        if node is None:
            node = (0, 1, 1, 0)[self.workers.index(worker)]
        s = Server(name, self.model, self.tmp, self.g.max_len, kv, extra=self._server_args(),
                   cpus=self._cpus(node))
        self.procs.append(s)
        return s

    def lmcache_server(self, name, remote, node):
        a = self.a
        kv = {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
        gib = max(1, -(-3 * self.g.set_bytes // (1 << 30)))
        env = {"LMCACHE_CHUNK_SIZE": str(self.g.block_size), "LMCACHE_LOCAL_CPU": "True",
               "LMCACHE_MAX_LOCAL_CPU_SIZE": str(gib), "LMCACHE_USE_EXPERIMENTAL": "True"}
        if a.lmcache_path:
            env["PYTHONPATH"] = os.path.abspath(a.lmcache_path)
        if remote is not None:
            env.update({"LMCACHE_REMOTE_URL": f"lm://127.0.0.1:{remote.port}",
                        "LMCACHE_REMOTE_SERDE": "naive"})
        s = Server(name, self.model, self.tmp, self.g.max_len, kv, extra=self._server_args(),
                   extra_env=env, cpus=self._cpus(node))
        self.procs.append(s)
        return s

    def wait_ready(self, servers):
        deadline = time.monotonic() + self.a.start_timeout
        for s in servers:
            try:
                s.wait_ready(deadline)
            except TtftError as e:
                raise BenchError(str(e)) from e

    def stop(self, *things):
        for t in things:
            if t in self.procs:
                self.procs.remove(t)
            t.stop()

    # runs

    def serve(self, url, seed, tag, n=None):
        """One `vllm bench serve` run of the random set `seed` against url;
        its result dict (--save-detailed: per-request ttfts in order)."""
        from . import vllm_bench
        a = self.a
        n = n or a.num_prompts
        argv = ["--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
                "--model", "tiny", "--tokenizer", self.model,
                "--dataset-name", "random", "--random-input-len", str(a.input_len),
                "--random-output-len", str(a.output_len), "--random-range-ratio", "0",
                "--num-prompts", str(n), "--max-concurrency", str(min(a.concurrency, n)),
                "--request-rate", "inf", "--ignore-eos", "--temperature", "0",
                "--seed", str(seed), "--request-id-prefix", f"{tag}-", "--disable-tqdm",
                "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "50,99",
                "--save-result", "--save-detailed", "--result-dir", self.tmp,
                "--result-filename", f"vllm-bench-{tag}.json"]
        with open(os.path.join(self.tmp, f"vllm-bench-{tag}.log"), "w") as log, \
                contextlib.redirect_stdout(log):
            res = vllm_bench.run(argv)
        if res.get("failed") or res.get("completed") != n:
            errs = [e for e in res.get("errors", []) if e]
            raise BenchError(f"vllm bench serve ({tag}): {res.get('failed')} of {n} requests "
                             f"failed: {errs[0][:500] if errs else '?'}")
        return res

    def timed(self, key, url, seed, tag, loaders, hosts, connector="kvds"):
        """Runs a set and measures it: TTFTs, the connector's loads in the
        loaders' logs, vLLM's hit counters on hosts, peer bytes."""
        marks = [len(s.log()) for s in loaders]
        before = [_metrics(s) for s in hosts]
        peer0 = self.peer_bytes() if connector == "kvds" else 0
        time.sleep(QUIET_S)      # no other server is still spinning (bench_ttft.QUIET_S)
        res = self.serve(url, seed, tag)
        after = [_metrics(s) for s in hosts]
        peer = self.peer_bytes() - peer0 if connector == "kvds" else None
        ttfts = [t * 1e3 for t in res["ttfts"]]
        loads = {}
        pat = re.compile(rf"cmpl-{re.escape(tag)}-(\d+)-")
        for s, mark in zip(loaders, marks):
            for m in LOADED.finditer(s.log()[mark:]):
                r = pat.match(m.group(1))
                if r:
                    i = int(r.group(1))
                    blocks, total, nbytes, ms = loads.get(i, (0, 0, 0, 0.0))
                    loads[i] = (blocks + int(m.group(2)), total + int(m.group(3)),
                                nbytes + int(m.group(4)), ms + float(m.group(5)))

        def delta(name):
            return int(sum(b2.get(name, 0) - b1.get(name, 0) for b1, b2 in zip(before, after)))

        full = sum(n // self.g.block_size for n in res["input_lens"])
        load_ms = [loads[i][3] for i in sorted(loads)]
        share = [loads[i][3] / ttfts[i] for i in sorted(loads) if i < len(ttfts) and ttfts[i]]
        out = {"step": key, "title": TITLES[key], "connector": connector, "seed": seed,
               "ttft_ms": _summary(ttfts),
               "vllm_reported": {"median_ttft_ms": res.get("median_ttft_ms"),
                                 "p99_ttft_ms": res.get("p99_ttft_ms"),
                                 "mean_ttft_ms": res.get("mean_ttft_ms")},
               "prompt_tokens": sum(res["input_lens"]), "full_blocks": full,
               "vllm_prefix_hit_tokens": delta("vllm:prefix_cache_hits_total"),
               "external_hit_tokens": delta("vllm:external_prefix_cache_hits_total"),
               "peer_bytes": peer}
        if connector == "kvds":
            out["kvds"] = {"requests_loaded": len(loads),
                           "blocks_loaded": sum(v[0] for v in loads.values()),
                           "blocks_asked": sum(v[1] for v in loads.values()),
                           "bytes_loaded": sum(v[2] for v in loads.values()),
                           "load_ms": _summary(load_ms)}
            out["transfer_share"] = statistics.median(share) if share else None
        return out

    def warm(self, url, tag):
        """Untimed requests of a set no step uses (first requests of a
        server are slow)."""
        self.serve(url, self.a.seed + 100, tag, n=min(self.a.concurrency, self.a.num_prompts))

    # the steps

    def run(self):
        a = self.a
        from .testmodel import make_model
        make_model(self.model, layers=self.g.layers, hidden=self.g.hidden, heads=self.g.heads,
                   kv_heads=self.g.kv_heads, max_len=max(4096, self.g.max_len), vocab=a.vocab)
        res = {"workload": {"input_len": a.input_len, "output_len": a.output_len,
                            "num_prompts": a.num_prompts, "concurrency": a.concurrency,
                            "seed_a": a.seed, "seed_b": a.seed + 1, "steps": a.steps},
               "model": self.g.describe(), "vllm": _vllm_version(), "gpu": self.gpu,
               "cluster": "etcd " + a.etcd if a.etcd else "static peers",
               "pinned": {str(n): sorted(self._cpus(n)) for n in (0, 1)} if self._cpus(0)
               else None,
               "steps": [], "lmcache": None, "logs": self.tmp}
        nworkers = 4 if "2p2d" in a.steps else 2 if set(a.steps) - {"1", "2", "disk"} else 1
        self.start_workers(nworkers)
        res["workers"] = [w.addr for w in self.workers]
        colo = [s for s in ("1", "2", "3") if s in a.steps]
        pd = [s for s in ("1p1d", "2p2d") if s in a.steps]
        i1 = i2 = p1 = d1 = None
        # quick runs start everything at once (less wall time on few cores):
        # the PD servers and the disk step's ID (on node 1, I1 being on 0)
        # too; full runs start each after instances 1 and 2 are gone
        if colo:
            i1 = self.kvds_server("I1", "kv_both", self.workers[0])
            if "3" in colo:
                i2 = self.kvds_server("I2", "kv_both", self.workers[1])
        if pd and (a.quick or not colo):
            p1 = self.kvds_server("P1", "kv_producer", self.workers[0])
            d1 = self.kvds_server("D1", "kv_consumer", self.workers[1])
        sd = self.disk_server(node=1) if "disk" in a.steps and a.quick else None
        # vLLM's benchmark takes ~20 s to import here: meanwhile the servers start
        threading.Thread(target=_preload_vllm_bench, daemon=True).start()
        self.progress("start", res)
        if colo:
            self.wait_ready([s for s in (i1, i2) if s])
            self.warm(i1.url, "w1")
            if i2:
                self.warm(i2.url, "w2")   # the same set: W2 pulls it (warms the pulls)
            self.colocated(res, colo, i1, i2, "kvds")
            self.stop(*[s for s in (i1, i2) if s])
        if "disk" in a.steps:
            self.disk(res, sd)
        if pd:
            if p1 is None:
                p1 = self.kvds_server("P1", "kv_producer", self.workers[0])
                d1 = self.kvds_server("D1", "kv_consumer", self.workers[1])
            self.wait_ready([p1, d1])
            if "1p1d" in pd:
                self.pd(res, "1p1d", [p1], [d1], a.seed + 2)
            if "2p2d" in pd:
                p2 = self.kvds_server("P2", "kv_producer", self.workers[2])
                d2 = self.kvds_server("D2", "kv_consumer", self.workers[3])
                self.wait_ready([p2, d2])
                self.pd(res, "2p2d", [p1, p2], [d1, d2], a.seed + 3)
        self.close_servers()
        if colo and a.lmcache != "off":
            res["lmcache"] = self.lmcache(res, colo)
        res["ratios"] = _ratios(res["steps"])
        return res

    def close_servers(self):
        for p in list(self.procs):
            self.stop(p)

    def colocated(self, res, colo, i1, i2, connector):
        a = self.a
        tag = "k" if connector == "kvds" else "l"

        def add(step):
            res["steps"].append(step)
            self.progress("step", step)

        add(self.timed("1", i1.url, a.seed, f"{tag}1", [i1], [i1], connector))
        if "2" in colo:
            add(self.timed("2b", i1.url, a.seed + 1, f"{tag}2b", [i1], [i1], connector))
            add(self.timed("2", i1.url, a.seed, f"{tag}2", [i1], [i1], connector))
        if "3" in colo:
            add(self.timed("3", i2.url, a.seed, f"{tag}3", [i2], [i2], connector))

    def disk_server(self, node=0):
        """The disk step's worker WD (the disk tier in a directory of its
        own) and instance ID on it, started (not waited for)."""
        a = self.a
        pool = a.disk_memory or self.g.set_bytes * 3 // 2 + (16 << 20)
        pool = -(-pool // (1 << 20)) << 20
        ddir = a.disk_dir or os.path.join(self.tmp, "disk")
        ddir = os.path.join(ddir, f"kvds-bench-ttft-{os.getpid()}")
        os.makedirs(ddir)
        self.disk_dirs.append(ddir)
        wd = OwnWorker(self.kvds_bin, pool, ["--tier", "posix", "--disk-dir", ddir,
                                             "--disk-policy", "spill"])
        self.workers.append(wd)
        sd = self.kvds_server("ID", "kv_both", wd, node=node)
        sd.disk = (wd, pool, ddir)
        return sd

    def disk(self, res, sd=None):
        """The disk step: set A on instance ID through WD, whose DRAM then
        loses A's blocks to its disk; set A again is served from the
        files. sd: ID if already started (a quick run starts it with I1,
        on the other node)."""
        import kvds
        a = self.a
        sd = sd or self.disk_server()
        wd, pool, ddir = sd.disk
        res["workers"].append(wd.addr)
        self.wait_ready([sd])
        self.warm(sd.url, "wd")
        self.serve(sd.url, a.seed, "d1")            # set A: recompute, stored in WD
        self.serve(sd.url, a.seed + 1, "d2b")       # set B: A leaves vLLM's own cache
        with kvds.Client(wd.addr) as c:
            st0 = st1 = c.stats()
            chunk = min(4 << 20, max(1 << 20, pool // 16))
            for i in range(-(-pool * 3 // 2 // chunk)):
                _wait_spill(c, st0, chunk)
                c.put(f"kvds-bench-ttft-filler/{os.getpid()}/{i}", bytes(chunk))
            deadline = time.monotonic() + 60        # the spill writes behind the puts
            while time.monotonic() < deadline:
                time.sleep(0.2)
                st = c.stats()
                if (st["disk_writes"], st["disk_spill_skipped"]) == \
                        (st1["disk_writes"], st1["disk_spill_skipped"]):
                    break
                st1 = st
        dropped = _drop_caches()
        with kvds.Client(wd.addr) as c:
            before = c.stats()
            step = self.timed("disk", sd.url, a.seed, "disk", [sd], [sd])
            after = c.stats()
        step["disk"] = {
            "pool": pool, "dir": ddir, "page_cache_dropped": dropped,
            "spilled_objects": st1["disk_writes"] - st0["disk_writes"],
            "spill_skipped": st1["disk_spill_skipped"] - st0["disk_spill_skipped"],
            "objects_on_disk": before["disk_objects"],
            "reads": after["disk_reads"] - before["disk_reads"],
            "read_bytes": after["disk_read_bytes"] - before["disk_read_bytes"]}
        res["steps"].append(step)
        self.progress("step", step)
        self.stop(sd)

    def pd(self, res, key, prefill, decode, seed):
        proxy = Proxy(self.kvds_bin, self.tmp, prefill, decode)
        self.procs.append(proxy)
        proxy.wait_ready()
        self.warm(proxy.url, f"w{key}")
        legs0 = proxy.legs()
        pre0 = [_metrics(s) for s in prefill]
        step = self.timed(key, proxy.url, seed, key, decode, prefill + decode)
        legs = proxy.legs()
        pre = [_metrics(s) for s in prefill]
        step["instances"] = {"prefill": len(prefill), "decode": len(decode)}

        def mean_ms(role):
            n = legs.get((role, "count"), 0) - legs0.get((role, "count"), 0)
            t = legs.get((role, "sum"), 0) - legs0.get((role, "sum"), 0)
            return 1e3 * t / n if n else None

        # where the client's TTFT went: the prefill hop, then the decode
        # hop until its first byte (the proxy's own histograms)
        e2e = "vllm:e2e_request_latency_seconds"
        n = sum(b.get(e2e + "_count", 0) - a.get(e2e + "_count", 0) for a, b in zip(pre0, pre))
        t = sum(b.get(e2e + "_sum", 0) - a.get(e2e + "_sum", 0) for a, b in zip(pre0, pre))
        step["proxy_ms"] = {"prefill_mean": mean_ms("prefill"),
                            "decode_first_byte_mean": mean_ms("decode"),
                            "prefill_vllm_e2e_mean": 1e3 * t / n if n else None}
        res["steps"].append(step)
        self.progress("step", step)
        self.stop(proxy)

    def lmcache(self, res, colo):
        """LMCache's rows: the same steps 1-3, or why they could not run."""
        a = self.a
        path = a.lmcache_path
        if path is None:
            try:
                import importlib.util
                found = importlib.util.find_spec("lmcache") is not None
            except Exception:
                found = False
            if not found:
                out = {"status": "not installed",
                       "reason": "lmcache is not installed (make bench-ttft installs "
                                 "lmcache 0.5.6 into .venv/lmcache: --lmcache-path)"}
                self.progress("lmcache", out)
                return out
        elif not os.path.isdir(os.path.join(path, "lmcache")):
            out = {"status": "not installed", "reason": f"no lmcache package in {path}"}
            self.progress("lmcache", out)
            return out
        remote = LmcacheServer(path or "", self.tmp) if "3" in colo else None
        if remote:
            self.procs.append(remote)
        l1 = self.lmcache_server("L1", remote, 0)
        l2 = self.lmcache_server("L2", remote, 1) if "3" in colo else None
        servers = [s for s in (l1, l2) if s]
        out = {"status": "ran", "reason": None}
        try:
            self.wait_ready(servers)
        except BenchError as e:
            why = _lmcache_failure(l1.log(), True) or \
                (l2 and _lmcache_failure(l2.log(), True)) or str(e).splitlines()[0]
            out = {"status": "failed", "reason": why}
        else:
            for s in servers:
                why = _lmcache_failure(s.log())
                if why:
                    out = {"status": "failed", "reason": why}
                    break
        if out["status"] == "ran":
            self.warm(l1.url, "lw1")
            if l2:
                self.warm(l2.url, "lw2")
            self.colocated(res, colo, l1, l2, "LMCache")
        out["logs"] = [s.log_path for s in servers]
        self.close_servers()
        self.progress("lmcache", out)
        return out


def _wait_spill(c, st0, size, timeout_s=10):
    """Holds a put of size bytes back until WD's spill is ahead of its
    eviction by that and one eviction round (the worker does not hold puts
    back: behind, it evicts objects without a copy), as `kvds bench disk`
    does."""
    cap = st0["pool_capacity"]
    high = st0["high_watermark_ppm"] * cap // 1000000
    rnd = st0["eviction_ratio_ppm"] * cap // 1000000
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = c.stats()
        if st["pool_used"] + size < high or \
                st["disk_write_bytes"] - st0["disk_write_bytes"] >= \
                st["evicted_bytes"] - st0["evicted_bytes"] + size + rnd:
            return
        time.sleep(0.0005)


def _drop_caches():
    """Writes back and drops the page cache (root only): True when done."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        return True
    except OSError:
        return False


def _preload_vllm_bench():
    with contextlib.suppress(Exception):
        from . import vllm_bench
        vllm_bench.parser()


def _ratios(steps):
    def p50(key, conn="kvds"):
        for s in steps:
            if s["step"] == key and s["connector"] == conn and s["ttft_ms"].get("n"):
                return s["ttft_ms"]["p50"], s["ttft_ms"]["mean"]
        return None

    out = {"seed_004": {"ttft3_over_ttft2": round(948 / 739, 2),
                        "ttft2_over_ttft1": round(739 / 2322, 2)}}
    for conn in ("kvds", "LMCache"):
        t1, t2, t3 = p50("1", conn), p50("2", conn), p50("3", conn)
        td = p50("disk", conn)
        r = {}
        if td and t2:
            r["ttft_disk_over_ttft2"] = td[0] / t2[0]
        if td and t1:
            r["ttft_disk_over_ttft1"] = td[0] / t1[0]
        if t2 and t3:
            r["ttft3_over_ttft2"] = t3[0] / t2[0]
            r["ttft3_over_ttft2_mean"] = t3[1] / t2[1]
        if t1 and t2:
            r["ttft2_over_ttft1"] = t2[0] / t1[0]
            r["ttft2_over_ttft1_mean"] = t2[1] / t1[1]
        if r:
            out[conn] = r
    return out


def _vllm_version():
    try:
        import vllm
        return vllm.__version__
    except Exception:
        return None


# ---------------------------------------------------------------------------
# output


def _mb(x):
    return "-" if x is None else f"{x / 1e6:.1f}"


def _frac(num, den):
    return "-" if not den else f"{100 * num / den:.0f}%"


class Table:
    COLS = (f"{'step':<5} {'':<36} {'conn':<8}{'p50 ms':>8}{'p99 ms':>8}{'n':>4}"
            f"{'kvds':>6}{'vLLM':>6}{'loaded':>8}{'moved':>8}{'xfer ms':>8}{'share':>7}")

    def __init__(self, out):
        self.out = out

    def __call__(self, what, obj):
        out = self.out
        if what == "start":
            m, w = obj["model"], obj["workload"]
            print(f"kvds bench ttft: vLLM {obj['vllm']} servers on this machine "
                  f"({'GPU' if obj['gpu'] else 'CPU'}), a {m['layers']}-layer Llama "
                  f"({m['hidden']} wide, {m['kv_heads']} KV heads x {m['head_size']}, "
                  f"{m['dtype']}, seeded random weights), block {m['block_size']}, vLLM's "
                  f"own cache {m['vllm_cache_blocks']} blocks", file=out)
            print(f"vllm bench serve --dataset-name random: {w['input_len']} in / "
                  f"{w['output_len']} out tokens, {w['num_prompts']} requests, concurrency "
                  f"{w['concurrency']}, temperature 0, ignore_eos; set A seed {w['seed_a']}, "
                  f"set B seed {w['seed_b']} (seed 004: 1024 / 10, 100, 25)", file=out)
            print(f"kvds workers ({obj['cluster']}): {', '.join(obj['workers'])}", file=out)
            if obj["pinned"]:
                print(f"--pin: the servers of W1/W4 on CPUs {obj['pinned']['0']}, those of "
                      f"W2/W3 on CPUs {obj['pinned']['1']}", file=out)
            print("TTFT in ms; kvds / vLLM: prompt tokens served by the connector / by vLLM's "
                  "own prefix cache; loaded: MB the connector loaded (its log); moved: MB "
                  "between workers; xfer: the connector's load time per request (p50); "
                  "share: of the request's TTFT (p50)", file=out)
            print(file=out)
            print(self.COLS, file=out)
        elif what == "step":
            self.row(obj)
            k = obj.get("kvds")
            if obj["step"] in ("2", "3", "disk", "1p1d", "2p2d") and k and \
                    k["blocks_loaded"] < obj["full_blocks"]:
                print(f"{'':6}(only {k['blocks_loaded']} of {obj['full_blocks']} full blocks "
                      f"came from kvds, in {k['requests_loaded']} of {obj['ttft_ms']['n']} "
                      "requests)", file=out)
            dk = obj.get("disk")
            if dk:
                print(f"{'':6}WD ({_mb(dk['pool'])} MB pool) read {dk['reads']} objects, "
                      f"{_mb(dk['read_bytes'])} MB, from its disk; {dk['spilled_objects']} "
                      f"spilled before, {dk['spill_skipped']} evicted without a copy; page "
                      f"cache {'dropped' if dk['page_cache_dropped'] else 'not dropped (not root)'}",
                      file=out)
            px = obj.get("proxy_ms")
            if px and px["prefill_mean"] is not None and px["decode_first_byte_mean"] is not None:
                e2e = px["prefill_vllm_e2e_mean"]
                print(f"{'':6}the proxy's hops, mean: prefill {px['prefill_mean']:.0f} ms"
                      + (f" (the prefill servers' own e2e {e2e:.0f} ms)" if e2e else "")
                      + f", decode until its first byte {px['decode_first_byte_mean']:.0f} ms",
                      file=out)
        elif what == "lmcache":
            if obj["status"] != "ran":
                print(f"{'-':<5} {'LMCacheConnectorV1 (lmcache 0.5.6)':<36} {'LMCache':<8}"
                      f"{obj['status']}: {obj['reason']}", file=out)
        out.flush()

    def row(self, s):
        t = s["ttft_ms"]
        k = s.get("kvds") or {}
        lm = k.get("load_ms") or {}
        xfer = f"{lm['p50']:.1f}" if lm.get("n") else "-"
        share = s.get("transfer_share")
        share = "-" if share is None else f"{100 * share:.1f}%"
        print(f"{s['step']:<5} {s['title']:<36} {s['connector']:<8}{t['p50']:>8.0f}"
              f"{t['p99']:>8.0f}{t['n']:>4}"
              f"{_frac(s['external_hit_tokens'], s['prompt_tokens']):>6}"
              f"{_frac(s['vllm_prefix_hit_tokens'], s['prompt_tokens']):>6}"
              f"{_mb(k.get('bytes_loaded')):>8}{_mb(s['peer_bytes']):>8}"
              f"{xfer:>8}{share:>7}", file=self.out)

    def footer(self, res):
        out = self.out
        r = res["ratios"]
        seed = r["seed_004"]
        print(file=out)
        for conn in ("kvds", "LMCache"):
            x = r.get(conn)
            if not x:
                continue
            parts = []
            if "ttft3_over_ttft2" in x:
                parts.append(f"TTFT3/TTFT2 = {x['ttft3_over_ttft2']:.2f} (means "
                             f"{x['ttft3_over_ttft2_mean']:.2f}; seed 004: 948/739 = "
                             f"{seed['ttft3_over_ttft2']:.2f})")
            if "ttft2_over_ttft1" in x:
                parts.append(f"TTFT2/TTFT1 = {x['ttft2_over_ttft1']:.2f} (means "
                             f"{x['ttft2_over_ttft1_mean']:.2f}; seed 004: 739/2322 = "
                             f"{seed['ttft2_over_ttft1']:.2f})")
            if "ttft_disk_over_ttft2" in x:
                parts.append(f"TTFTdisk/TTFT2 = {x['ttft_disk_over_ttft2']:.2f}")
            if "ttft_disk_over_ttft1" in x:
                parts.append(f"TTFTdisk/TTFT1 = {x['ttft_disk_over_ttft1']:.2f}")
            print(f"{conn}: " + "; ".join(parts), file=out)
        out.flush()


def plot(res, path):
    """Box plots (and every request as a dot) of the TTFTs of each step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [s for s in res["steps"] if s["ttft_ms"].get("n")]
    labels = [f"{s['step']} {SHORT[s['step']]}\n{s['connector']}" for s in steps]
    data = [s["ttft_ms"]["samples"] for s in steps]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(steps)), 4.8))
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(steps) + 1), labels, fontsize=8)
    colors = {"kvds": "tab:blue", "LMCache": "tab:orange"}
    for i, (s, xs) in enumerate(zip(steps, data), 1):
        jit = [i + 0.25 * ((j * 0.618) % 1 - 0.5) for j in range(len(xs))]
        ax.scatter(jit, xs, s=10, alpha=0.6, color=colors.get(s["connector"], "gray"))
    w = res["workload"]
    ax.set_ylabel("TTFT (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"kvds bench ttft: {w['input_len']} in / {w['output_len']} out, "
                 f"{w['num_prompts']} requests, concurrency {w['concurrency']}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = sys.stdout
    signal.signal(signal.SIGTERM, _on_sigterm)
    # vLLM's benchmark prints to stdout and its loggers bind to the stdout
    # of their import: everything but our result goes to stderr.
    sys.stdout = sys.stderr
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    with contextlib.suppress(ImportError):
        import torch  # noqa: F401  (sets its loggers' levels; then ours win)
        logging.getLogger("torch").setLevel(logging.ERROR)  # "triton not found", from vllm
    table = Table(out)
    bench = None
    ok = False
    failed = True           # until it ends well or is interrupted
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            print(f"kvds bench ttft: --plot needs matplotlib ({e}; make python installs it)",
                  file=sys.stderr)
            return 1
    try:
        bench = Bench(args, (lambda what, obj: None) if args.json else table)
        res = bench.run()
        if args.plot:
            plot(res, args.plot)
            res["plot"] = os.path.abspath(args.plot)
        ok, failed = True, False
    except BenchError as e:
        print(f"kvds bench ttft: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        failed = False
        print("kvds bench ttft: interrupted; stopping every server and worker",
              file=sys.stderr)
        return 130
    finally:
        sys.stdout = out
        if bench is not None:
            bench.close()
            if failed or (args.keep_logs and not ok):
                print(f"kvds bench ttft: logs in {bench.tmp}", file=sys.stderr)
            elif not args.keep_logs:
                shutil.rmtree(bench.tmp, ignore_errors=True)
    if not args.keep_logs:
        res["logs"] = None
    if args.json:
        json.dump(res, out, indent=2)
        out.write("\n")
    else:
        table.footer(res)
        if args.plot:
            print(f"plot: {res['plot']}", file=out)
        if args.keep_logs:
            print(f"logs: {res['logs']}", file=out)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
