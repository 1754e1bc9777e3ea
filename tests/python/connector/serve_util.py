"""Helpers for test_connector_serve.py: real vLLM 0.32.0 OpenAI-API servers
(CPU, float32, the tiny Llama of vllm_offline.py with its seeded weights)
as subprocesses, plus the HTTP calls a PD proxy makes and a Prometheus text reader.

Each server runs in its own process group (API server + engine core), is
waited for on /health with a deadline, and is always killed by `stop()`
(SIGTERM to the group, SIGKILL after a deadline).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import free_port

START_TIMEOUT_S = 240        # two servers start at once on a 2-core machine
STOP_TIMEOUT_S = 20
HTTP_TIMEOUT_S = 120
SERVED_NAME = "tiny"


def kv_config(role, addr, namespace):
    return {"kv_connector": "KvdsConnector", "kv_connector_module_path": "kvds.vllm",
            "kv_role": role, "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"worker_addr": addr, "namespace": namespace}}


class Server:
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1:<free port>.
    Starts at construction; call wait_ready() (several may start at once)."""

    def __init__(self, name, model, tmp, kv=None, hashseed=0, started=None):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(str(tmp), f"vllm-{name}-{self.port}.log")
        env = dict(os.environ, PYTHONHASHSEED=str(hashseed), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
                   VLLM_CPU_OMP_THREADS_BIND="nobind", VLLM_LOGGING_LEVEL="INFO",
                   VLLM_CONFIG_ROOT=os.path.join(str(tmp), "vllm-cfg"),
                   VLLM_CACHE_ROOT=os.path.join(str(tmp), "vllm-cache"),
                   VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        env.pop("DS_WORKER_ADDR", None)
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", model, "--served-model-name", SERVED_NAME,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--load-format", "safetensors", "--dtype", "float32", "--max-model-len", "1024",
                "--enforce-eager", "--seed", "0", "--disable-uvicorn-access-log",
                # world size 1: the model runs in the engine core process
                "--distributed-executor-backend", "uni"]
        if kv is not None:
            args += ["--kv-transfer-config", json.dumps(kv)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=str(tmp), start_new_session=True)
        if started is not None:      # the caller's list of servers to stop
            started.append(self)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def tail(self, n=6000):
        return f"--- {self.name} log ({self.log_path}) ---\n{self.log()[-n:]}"

    def wait_ready(self, deadline):
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"vLLM server {self.name} exited with "
                                     f"{self.proc.returncode}\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"vLLM server {self.name} not healthy after "
                                     f"{START_TIMEOUT_S} s\n{self.tail()}")
            time.sleep(0.5)

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

    def stop(self):
        """Kills the server's process group (idempotent; also when the API
        server already died and left its engine core behind)."""
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
            if self.proc.returncode is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # the engine core may outlive the API server: end the rest of the group
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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
