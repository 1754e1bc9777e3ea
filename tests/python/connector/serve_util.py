"""Helpers for the real-server tests: vLLM OpenAI-API servers (CPU, float32,
the tiny Llama of kvds.testmodel with its seeded weights) as subprocesses,
plus the HTTP calls a PD proxy makes and a Prometheus text reader.

Each server runs in its own process group (API server + engine core), is
waited for on /health with a deadline, and is always killed by `stop()`
(SIGTERM to the group, SIGKILL after a deadline) — kvds.bench_ttft.Server.
"""
import json
import re
import time
import urllib.error
import urllib.request

from kvds import bench_ttft

START_TIMEOUT_S = 240        # two servers start at once on a 2-core machine
HTTP_TIMEOUT_S = 120
LOGPROBS = 3
LOGPROB_TOL = 1e-4           # loaded vs computed KV differ by float noise (~3e-6 seen)
METRICS_TIMEOUT_S = 20
LOADED = re.compile(r"kvds: request (\S+): loaded (\d+) of (\d+) blocks \((\d+) bytes\) "
                    r"from kvds (\S+) in [\d.]+ ms(.*)$", re.M)
SERVED_NAME = "tiny"


def kv_config(role, addr, namespace):
    return {"kv_connector": "KvdsConnector", "kv_connector_module_path": "kvds.vllm",
            "kv_role": role, "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"worker_addr": addr, "namespace": namespace}}


# The tests' servers run the model in the engine-core process (vLLM's uni
# executor, as on a GPU with world size 1) instead of in a worker process
# of its own (vLLM's CPU default): one process, a whole vLLM import, less
# to start per server (with the session's VLLM_CACHE_ROOT, conftest.py: a
# server ready in ~1/3 of the time here). The connector's scheduler and
# worker sides then share the engine-core process; the benches the tests
# run (test_bench_*.py) keep vLLM's default, a worker process apart.
UNI_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


class Server(bench_ttft.Server):
    """A vLLM OpenAI-API server (kvds.bench_ttft.Server: CPU, float32, its
    own process group, always killed by stop()) with max_model_len 1024 and
    the HTTP calls of the tests. Starts at construction; call wait_ready()
    (several may start at once)."""

    def __init__(self, name, model, tmp, kv=None, hashseed=0, started=None):
        super().__init__(name, model, tmp, 1024, kv, hashseed, extra_env=UNI_ENV)
        if started is not None:      # the caller's list of servers to stop
            started.append(self)

    def tail(self, n=6000):
        return f"--- {self.name} log ({self.log_path}) ---\n{self.log()[-n:]}"

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"POST {path} to {self.name}: HTTP {e.code}: "
                                 f"{e.read()[:2000]!r}\n{self.tail()}") from None

    def complete(self, prompt, max_tokens, kv_transfer_params=None, logprobs=None):
        """Greedy /v1/completions of a token-id prompt; the JSON response."""
        body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": max_tokens,
                "temperature": 0.0, "ignore_eos": True, "return_token_ids": True,
                "stream": False, "logprobs": logprobs}
        if kv_transfer_params is not None:
            body["kv_transfer_params"] = kv_transfer_params
        return self.post("/v1/completions", body)

    def metrics(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric(text, name, **labels):
    """Sum of the Prometheus samples `name` (for a counter, `name` or
    `name_total`) whose labels include `labels`; None if there is none."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in (name, name + "_total"):
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    return total if found else None


def start_all(servers):
    """Waits (one shared deadline) until every server is healthy."""
    deadline = time.monotonic() + START_TIMEOUT_S
    for s in servers:
        s.wait_ready(deadline)


def answer(resp):
    ch = resp["choices"][0]
    return {"token_ids": ch["token_ids"], "text": ch["text"],
            "logprobs": ch["logprobs"]["token_logprobs"] if ch.get("logprobs") else None}


def max_logprob_diff(a, b):
    return max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"]))


def loads(server):
    return [{"req": m.group(1), "loaded": int(m.group(2)), "of": int(m.group(3)),
             "bytes": int(m.group(4)), "addr": m.group(5), "rest": m.group(6)}
            for m in LOADED.finditer(server.log())]


def prompt_metrics(server):
    """The counters of prompt-token accounting, as ints."""
    text = server.metrics()

    def m(name, **labels):
        v = metric(text, name, **labels)
        assert v is not None, f"{server.name}: {name}{labels or ''} missing from /metrics"
        return int(v)
    return {
        "requests": m("vllm:request_success"),
        "prompt_tokens": m("vllm:prompt_tokens"),
        "external_queries": m("vllm:external_prefix_cache_queries"),
        "external_hits": m("vllm:external_prefix_cache_hits"),
        "local_hits": m("vllm:prefix_cache_hits"),
        "by_source_local_compute": m("vllm:prompt_tokens_by_source", source="local_compute"),
        "by_source_external": m("vllm:prompt_tokens_by_source", source="external_kv_transfer"),
        "cached_by_source_host": m("vllm:prompt_tokens_cached_by_source", source="host"),
    }


def wait_metrics(server, expect):
    """Polls /metrics until the counters in `expect` have those values (the
    stats of the last step may be recorded just after the response), at
    most METRICS_TIMEOUT_S; returns the last reading for the assertion."""
    deadline = time.monotonic() + METRICS_TIMEOUT_S
    while True:
        got = prompt_metrics(server)
        if all(got[k] == v for k, v in expect.items()) or time.monotonic() > deadline:
            return {k: got[k] for k in expect}
        time.sleep(0.2)
