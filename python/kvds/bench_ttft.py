"""`kvds bench connector --ttft`: time to first token with real vLLM servers.

Starts a kvds worker (or uses --addr) and three OpenAI-API servers of the
installed vLLM on this machine, with a tiny local Llama (kvds.testmodel:
--model-layers layers, --model-hidden wide, seeded random weights; nothing
is downloaded), all with PYTHONHASHSEED=0:

    V   plain vLLM (no connector)
    K1  kv_both through kvds
    K2  kv_both through kvds (never sees a prompt first)

and times, for each prompt length, --requests fresh random prompts, one
request at a time (streaming /v1/completions; TTFT = until the first SSE
chunk with a choice, as `vllm bench serve` counts it):

    recompute        V, a prompt it never saw
    vLLM prefix hit  V, the same prompt again (its own prefix cache)
    kvds local hit   K2, a prompt K1 computed and stored: loaded from the
                     node's kvds worker
    kvds PD decode   K1 prefills a fresh prompt (max_tokens 1,
                     do_remote_decode) and K2 decodes it with K1's
                     kv_transfer_params, as a PD proxy does: the decode
                     leg's TTFT, and e2e = prefill leg + decode TTFT

Every timed request starts QUIET_S after the last request (to any
server): vLLM's worker process spins for 1 s after its last step, which on
a 2-core machine would slow the next server down (prefill and decode run on
different machines in a deployment).

Each kvds hit is checked against the bound the connector is held to: the
median vLLM prefix hit plus that request's transfer time (the connector's
load, from K2's log), plus 10%. Prompt lengths default to 1000 and 2000
tokens (not block multiples, so vLLM's own prefix cache and kvds both
recompute the partial last block).
"""
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

LOADED = re.compile(r"kvds: request (\S+): loaded (\d+) of (\d+) blocks \((\d+) bytes\) "
                    r"from kvds \S+ in ([\d.]+) ms")
BOUND_SLACK = 1.10
HTTP_TIMEOUT_S = 300
# vLLM's worker process keeps polling its message queue for 1 s after its
# last step (shm_broadcast's busy_loop_s). On a machine with few cores that
# spinning slows whatever runs next on another server, so a timed request
# to one server waits this long after the last request to another (prefill
# and decode would run on different machines in a deployment).
QUIET_S = 1.2


def _quiet():
    time.sleep(QUIET_S)


class TtftError(Exception):
    pass


def _free_port():
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(srv, what, deadline, error, tail, poll_s):
    """Until GET /health of srv (.port, .proc, .log()) answers 200; raises
    error with the last `tail` characters of its log if the process exits
    or the monotonic deadline passes."""
    while True:
        if srv.proc.poll() is not None:
            raise error(f"{what} exited with {srv.proc.returncode}:\n{srv.log()[-tail:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise error(f"{what} not ready in time:\n{srv.log()[-tail:]}")
        time.sleep(poll_s)


class Server:
    """One `python -m vllm.entrypoints.openai.api_server` (CPU, float32,
    eager, world size 1) in its own process group, on 127.0.0.1:<free
    port>; its output in tmp/vllm-<name>-<port>.log. Starts at
    construction: call wait_ready() (several may start at once). extra:
    more server arguments; extra_env: more environment variables; cpus:
    the CPUs its processes may run on (default all)."""

    def __init__(self, name, model, tmp, max_len, kv=None, hashseed=0, extra=(),
                 extra_env=None, cpus=None):
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(str(tmp), f"vllm-{name}-{self.port}.log")
        tmp = str(tmp)
        env = dict(os.environ, PYTHONHASHSEED=str(hashseed), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
                   VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_LOGGING_LEVEL="INFO",
                   VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
                   VLLM_CONFIG_ROOT=os.path.join(tmp, "vllm-cfg"))
        # vLLM's cache: the caller's $VLLM_CACHE_ROOT if set (the tests
        # share one, so that only the first server inspects the model
        # class, in a process of its own), else one in tmp
        env.setdefault("VLLM_CACHE_ROOT", os.path.join(tmp, "vllm-cache"))
        env.pop("DS_WORKER_ADDR", None)
        env.update(extra_env or {})
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(self.port),
                "--load-format", "safetensors", "--dtype", "float32",
                "--max-model-len", str(max_len), "--enforce-eager", "--seed", "0",
                "--disable-uvicorn-access-log", "--distributed-executor-backend", "uni"]
        if kv is not None:
            args += ["--kv-transfer-config", json.dumps(kv)]
        args += list(extra)
        if cpus:  # taskset, not preexec_fn: the caller may have threads running
            args = ["taskset", "-c", ",".join(str(c) for c in sorted(cpus))] + args
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                start_new_session=True, stdin=subprocess.DEVNULL)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, deadline):
        wait_health(self, f"vLLM server {self.name}", deadline, TtftError, 3000, 0.5)

    def _post(self, body):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT_S)
        c.request("POST", "/v1/completions", body=json.dumps(body),
                  headers={"Content-Type": "application/json"})
        return c, c.getresponse()

    def ttft(self, prompt, kv_transfer_params=None):
        """(TTFT s, response id) of a streaming completion of the prompt."""
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0.0,
                "ignore_eos": True, "stream": True}
        if kv_transfer_params is not None:
            body["kv_transfer_params"] = kv_transfer_params
        t0 = time.perf_counter()
        c, r = self._post(body)
        if r.status != 200:
            raise TtftError(f"{self.name}: HTTP {r.status}: {r.read()[:500]!r}")
        first, rid, err = None, None, None
        for line in r:
            if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                continue
            ev = json.loads(line[5:])
            err = err or ev.get("error")
            if ev.get("choices") and first is None:
                first = time.perf_counter() - t0
                rid = ev.get("id")
        c.close()
        if first is None:
            raise TtftError(f"{self.name}: the stream ended without a token"
                            + (f": {err}" if err else ""))
        return first, rid

    def prefill(self, prompt):
        """(seconds, kv_transfer_params) of a PD proxy's prefill leg."""
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                "stream": False, "kv_transfer_params": {"do_remote_decode": True}}
        t0 = time.perf_counter()
        c, r = self._post(body)
        data = r.read()
        c.close()
        if r.status != 200:
            raise TtftError(f"{self.name}: prefill: HTTP {r.status}: {data[:500]!r}")
        return time.perf_counter() - t0, json.loads(data).get("kv_transfer_params")

    def stop(self):
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kv(addr, ns):
    return {"kv_connector": "KvdsConnector", "kv_connector_module_path": "kvds.vllm",
            "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"worker_addr": addr, "namespace": ns}}


def _load_ms(server, rid):
    """The connector's load time (ms) and bytes for the response id rid."""
    for m in LOADED.finditer(server.log()):
        if rid and m.group(1).startswith(rid + "-"):
            return float(m.group(5)), int(m.group(4))
    return None, None


def _stats(xs):
    xs = sorted(xs)
    if not xs:
        return {}
    return {"p50": statistics.median(xs) * 1e3,
            "p90": xs[min(len(xs) - 1, int(0.9 * len(xs)))] * 1e3,
            "max": xs[-1] * 1e3, "n": len(xs), "samples_ms": [x * 1e3 for x in xs]}


def run(args, addr, on_case=None):
    """Starts the servers, runs every prompt length; the result dict."""
    from .testmodel import make_model
    tmp = tempfile.mkdtemp(prefix="kvds-bench-ttft.")
    max_len = max(args.ttft_tokens) + 64
    model = os.path.join(tmp, "model")
    heads = args.model_hidden // 64                 # head size 64
    make_model(model, layers=args.model_layers, hidden=args.model_hidden, heads=heads,
               kv_heads=heads // 2, max_len=max(4096, max_len))
    ns = f"bench-ttft-{os.getpid()}-{int(time.time())}"
    servers = []
    try:
        v = Server("V", model, tmp, max_len)
        k1 = Server("K1", model, tmp, max_len, _kv(addr, ns))
        k2 = Server("K2", model, tmp, max_len, _kv(addr, ns))
        servers = [v, k1, k2]
        deadline = time.monotonic() + args.start_timeout
        for s in servers:
            s.wait_ready(deadline)
        rng = random.Random(args.seed)
        res = {"model": {"layers": args.model_layers, "hidden": args.model_hidden,
                         "kv_heads": heads // 2, "head_size": 64, "dtype": "float32"},
               "logs": tmp, "cases": []}
        # warm-up: one of each path, untimed
        warm = [rng.randrange(4, 500) for _ in range(min(args.ttft_tokens))]
        v.ttft(warm)
        k1.ttft(warm)
        k2.ttft(warm)
        for ntok in args.ttft_tokens:
            case = _one_length(args, rng, ntok, v, k1, k2)
            res["cases"].append(case)
            if on_case:
                on_case(case)
        return res
    finally:
        for s in servers:
            s.stop()


def _one_length(args, rng, ntok, v, k1, k2):
    t = {k: [] for k in ("recompute", "vllm_hit", "kvds_hit", "pd_decode", "pd_e2e")}
    loads = []
    for _ in range(args.requests):
        p = [rng.randrange(4, 500) for _ in range(ntok)]
        _quiet()
        t["recompute"].append(v.ttft(p)[0])
        _quiet()                                      # every timed request starts alike
        t["vllm_hit"].append(v.ttft(p)[0])
        _quiet()
        k1.ttft(p)                                    # K1 computes and stores
        _quiet()
        dt, rid = k2.ttft(p)
        t["kvds_hit"].append(dt)
        loads.append(_load_ms(k2, rid))
        q = [rng.randrange(4, 500) for _ in range(ntok)]
        _quiet()
        pre, params = k1.prefill(q)
        if not params:
            raise TtftError("K1 returned no kv_transfer_params")
        _quiet()
        dt, _ = k2.ttft(q, params)
        t["pd_decode"].append(dt)
        t["pd_e2e"].append(pre + dt)
    case = {"tokens": ntok, **{k: _stats(x) for k, x in t.items()}}
    vhit = statistics.median(t["vllm_hit"])
    over, bounds = 0, []
    for dt, (lms, _) in zip(t["kvds_hit"], loads):
        if lms is None:
            raise TtftError("K2's log has no load line for a kvds hit: it did not hit")
        b = (vhit + lms / 1e3) * BOUND_SLACK
        bounds.append(b * 1e3)
        over += dt > b
    case["transfer_ms"] = _stats([lms / 1e3 for lms, _ in loads])
    case["transfer_bytes"] = statistics.median([b for _, b in loads])
    case["bound_ms"] = bounds
    case["over_bound"] = over
    return case


def print_header(res, addr, out):
    m = res["model"]
    print(f"kvds bench connector --ttft: worker {addr}; vLLM servers on this machine, "
          f"a {m['layers']}-layer Llama ({m['kv_heads']} KV heads x {m['head_size']}, "
          f"{m['dtype']}; seeded random weights)", file=out)
    print("TTFT of streaming /v1/completions, one request at a time; ms; kvds hit bound = "
          "(vLLM prefix hit p50 + the request's transfer) x 1.1", file=out)
    print(file=out)
    print(f"{'tokens':>6}  {'case':<18}{'p50':>8}{'p90':>8}{'max':>8}{'n':>4}", file=out)
    out.flush()


def print_case(c, out):
    rows = [("recompute", "recompute"), ("vLLM prefix hit", "vllm_hit"),
            ("kvds local hit", "kvds_hit"), ("kvds PD decode", "pd_decode"),
            ("kvds PD e2e", "pd_e2e")]
    for i, (label, k) in enumerate(rows):
        s = c[k]
        lead = f"{c['tokens']:>6}" if i == 0 else " " * 6
        print(f"{lead}  {label:<18}{s['p50']:>8.1f}{s['p90']:>8.1f}{s['max']:>8.1f}"
              f"{s['n']:>4}", file=out)
    tr = c["transfer_ms"]
    print(f"{'':6}  transfer {c['transfer_bytes'] / 1e6:.1f} MB: p50 {tr['p50']:.1f} ms, "
          f"max {tr['max']:.1f} ms; kvds hits over the bound: {c['over_bound']} of "
          f"{c['kvds_hit']['n']}", file=out)
    out.flush()
