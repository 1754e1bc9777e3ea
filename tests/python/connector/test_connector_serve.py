"""KvdsConnector in real vLLM 0.32.0 OpenAI-API servers (CPU, float32, the
tiny local Llama of vllm_offline.py with the seeded random weights its
make_weights writes; nothing is downloaded), talking HTTP like a PD proxy
does (serve_util.py). Not vLLM's dummy weights: with those every prompt gives
the same uniform logprobs and tokens, which would prove nothing about the KV.

- Prefill/decode: a kv_producer server and a kv_consumer server run at the
  same time on one kvds worker. As vLLM's toy PD proxy does, the prompt (token
  ids, 2 full 128-token blocks + a tail) goes to prefill with max_tokens=1 and
  kv_transfer_params {"do_remote_decode": true}; the kv_transfer_params of
  its response (naming the kvds worker and key prefix) go with the original
  request to decode. Proven: prefill stored exactly the full blocks under
  that prefix; decode logged loading all of them from that worker, its
  Prometheus counters show exactly those tokens as external (host) hits and
  only the tail computed, the worker served the gets, and decode's greedy
  tokens and their logprobs equal those of a colocated server that computed
  the whole prompt itself.
- kv_both across instances: server A (PYTHONHASHSEED=0, fresh namespace)
  misses, computes and stores the prompt's full blocks; server B, another
  process with the same seed that never saw the prompt, loads them (log,
  metrics, worker hits), stores nothing new, and answers exactly like A.
  A is also the colocated reference of the PD test. A control prompt whose
  first block differs gets other logprobs, so the comparisons do see the KV
  of the loaded blocks.
"""
import itertools
import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest

import kvds
from serve_util import Server, kv_config, metric, start_all

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "vllm_offline.py")
BLOCK = 128               # vLLM's CPU backend block size (checked against the servers)
N_FULL = 2
TAIL = 44
GEN = 8
LOGPROBS = 3
LOGPROB_TOL = 1e-4        # loaded vs computed KV differ by float noise (~3e-6 seen)
METRICS_TIMEOUT_S = 20
LOADED = re.compile(r"kvds: request (\S+): loaded (\d+) of (\d+) blocks \((\d+) bytes\) "
                    r"from kvds (\S+) in [\d.]+ ms(.*)$", re.M)

PROMPT = [(i * 37) % 500 + 4 for i in range(N_FULL * BLOCK + TAIL)]
# the same prompt with another first block: every block hash differs
CONTROL = [(i * 11) % 500 + 4 for i in range(BLOCK)] + PROMPT[BLOCK:]
_ns = itertools.count()


def namespace(tag):
    return f"serve-{tag}-{os.getpid()}-{next(_ns)}-{uuid.uuid4().hex[:8]}"


def objects(addr, ns):
    """{key: size} of the namespace's block objects."""
    with kvds.Client(addr) as c:
        return {k.decode(): n for k, n in c.list(f"{ns}/".encode(), limit=None)}


def wait_objects(addr, ns, n, timeout=10):
    """The namespace's objects once there are n (saves end after the
    response: they are sealed off the step)."""
    deadline = time.monotonic() + timeout
    while len(got := objects(addr, ns)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def member_id(addr):
    with kvds.Client(addr) as c:
        return json.loads(c.cluster_status())["self"]["id"]


def worker_hits(addr):
    with kvds.Client(addr) as c:
        return c.stats()["hits"]


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


def expect_served(n_requests, prompt_tokens, external_hits):
    """Counters of a connector server that served `n_requests` fresh prompts
    of `prompt_tokens` tokens in all (every one looked up in the connector)
    and got `external_hits` tokens from it."""
    return {"requests": n_requests, "prompt_tokens": prompt_tokens,
            "external_hits": external_hits, "external_queries": prompt_tokens,
            "by_source_external": external_hits, "cached_by_source_host": external_hits,
            "by_source_local_compute": prompt_tokens - external_hits, "local_hits": 0}


def complete(server, prompt, max_tokens=GEN, kv_transfer_params=None):
    r = server.complete(prompt, max_tokens, kv_transfer_params, logprobs=LOGPROBS)
    assert r["usage"]["prompt_tokens"] == len(prompt), r["usage"]
    assert len(r["choices"][0]["token_ids"]) == max_tokens, r["choices"][0]
    return r


def check_block_size(server):
    bs = re.search(r'vllm:cache_config_info\{[^}]*\bblock_size="(\d+)"', server.metrics())
    assert bs and int(bs.group(1)) == BLOCK, \
        f"{server.name}: block size {bs and bs.group(1)}, the test assumes {BLOCK}"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("serve") / "model")
    subprocess.run([sys.executable, SCRIPT, "make-model", out], check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def kv_both(make_worker, model, tmp_path_factory):
    """Two kv_both servers A and B (PYTHONHASHSEED=0, one fresh namespace)
    started together; A has served PROMPT (a miss, so the colocated
    reference) and CONTROL. Both are stopped at the end of the module."""
    tmp = tmp_path_factory.mktemp("kv_both")
    w = make_worker("256MiB")
    ns = namespace("both")
    kv = kv_config("kv_both", w.addr, ns)
    servers = []
    try:
        a = Server("both-A", model, tmp, kv, hashseed=0, started=servers)
        b = Server("both-B", model, tmp, kv, hashseed=0, started=servers)
        start_all(servers)
        check_block_size(a)
        resp = complete(a, PROMPT, GEN)
        stored = wait_objects(w.addr, ns, N_FULL)
        control = complete(a, CONTROL, GEN)
        wait_objects(w.addr, ns, 2 * N_FULL)
        yield {"worker": w, "ns": ns, "a": a, "b": b, "ref": answer(resp), "stored": stored,
               "control": answer(control)}
    finally:
        for s in servers:
            s.stop()


def test_serve_prefill_decode(make_worker, model, tmp_path, request):
    w = make_worker("256MiB")
    ns = namespace("pd")
    servers = []
    try:
        prefill = Server("prefill", model, tmp_path, kv_config("kv_producer", w.addr, ns),
                         hashseed=0, started=servers)
        decode = Server("decode", model, tmp_path, kv_config("kv_consumer", w.addr, ns),
                        hashseed=0, started=servers)
        start_all(servers)
        check_block_size(decode)
        assert objects(w.addr, ns) == {}, "a fresh namespace holds no blocks"

        # the proxy's prefill leg
        pr = complete(prefill, PROMPT, 1, {"do_remote_decode": True})
        params = pr.get("kv_transfer_params")
        assert isinstance(params, dict), f"prefill returned no kv_transfer_params: {pr}\n" \
            f"{prefill.tail()}"
        assert params["kvds_worker"] == member_id(w.addr) and params["kvds_addr"] == w.addr, \
            params
        assert params.get("kvds_blocks") == N_FULL, params
        stored = wait_objects(w.addr, ns, N_FULL)
        assert len(stored) == N_FULL, \
            f"prefill should store the {N_FULL} full blocks: {stored}\n{prefill.tail()}"
        assert loads(prefill) == [], "a producer never loads"
        hits0 = worker_hits(w.addr)

        # the proxy's decode leg: the original request + prefill's params
        dr = complete(decode, PROMPT, GEN, params)
        got = answer(dr)
        assert dr.get("kv_transfer_params") is None, "a consumer hands nothing on"

        ld = loads(decode)
        assert len(ld) == 1, f"one load expected in decode's log: {ld}\n{decode.tail()}"
        ld = ld[0]
        assert (ld["loaded"], ld["of"], ld["addr"], ld["rest"]) == (N_FULL, N_FULL, w.addr, ""), \
            f"decode should load all {N_FULL} full blocks from {w.addr}: {ld}\n{decode.tail()}"
        assert ld["req"].startswith(dr["id"] + "-"), (ld, dr["id"])
        assert ld["bytes"] == sum(stored.values()), \
            f"decode loaded {ld['bytes']} bytes, prefill stored {stored}"

        served = expect_served(1, len(PROMPT), N_FULL * BLOCK)
        assert wait_metrics(decode, served) == served, \
            f"decode's /metrics: the {N_FULL} loaded blocks are external hits\n{decode.tail()}"
        produced = expect_served(1, len(PROMPT), 0)
        assert wait_metrics(prefill, produced) == produced, \
            f"prefill's /metrics: everything computed\n{prefill.tail()}"
        assert worker_hits(w.addr) >= hits0 + N_FULL, "the kvds worker served decode's gets"
        assert objects(w.addr, ns) == stored, "a consumer stores nothing"
    finally:
        for s in servers:
            s.stop()

    # a colocated server (after the PD pair, to save CPU and memory)
    ref = request.getfixturevalue("kv_both")["ref"]
    assert got["token_ids"] == ref["token_ids"] and got["text"] == ref["text"], \
        f"PD answer {got} differs from the colocated answer {ref}"
    assert pr["choices"][0]["token_ids"] == ref["token_ids"][:1], "prefill's one token"
    assert max_logprob_diff(got, ref) < LOGPROB_TOL, (got["logprobs"], ref["logprobs"])


def test_serve_kv_both_two_instances(kv_both):
    w, ns, a, b = kv_both["worker"], kv_both["ns"], kv_both["a"], kv_both["b"]
    ref, stored = kv_both["ref"], kv_both["stored"]

    # A missed, computed and stored the full blocks of PROMPT, then of CONTROL
    assert len(stored) == N_FULL, f"A should store {N_FULL} blocks: {stored}\n{a.tail()}"
    assert loads(a) == [], f"A had nothing to load\n{a.tail()}"
    missed = expect_served(2, 2 * len(PROMPT), 0)
    assert wait_metrics(a, missed) == missed, f"A's /metrics\n{a.tail()}"
    after_control = objects(w.addr, ns)
    assert len(after_control) == 2 * N_FULL and stored.items() < after_control.items(), \
        after_control
    # the control: another first block changes every logprob comparison below
    assert max_logprob_diff(kv_both["control"], ref) > LOGPROB_TOL, \
        "logprobs do not depend on the first block: the comparison would prove nothing"

    hits0 = worker_hits(w.addr)
    br = complete(b, PROMPT, GEN)
    got = answer(br)
    ld = loads(b)
    assert len(ld) == 1 and (ld[0]["loaded"], ld[0]["of"], ld[0]["addr"], ld[0]["rest"]) == \
        (N_FULL, N_FULL, w.addr, ""), f"B should load {N_FULL} blocks: {ld}\n{b.tail()}"
    assert ld[0]["req"].startswith(br["id"] + "-") and ld[0]["bytes"] == sum(stored.values()), \
        (ld, br["id"], stored)
    hit = expect_served(1, len(PROMPT), N_FULL * BLOCK)
    assert wait_metrics(b, hit) == hit, f"B's /metrics\n{b.tail()}"
    assert worker_hits(w.addr) >= hits0 + N_FULL
    assert objects(w.addr, ns) == after_control, "B stored nothing new"
    assert got["token_ids"] == ref["token_ids"] and got["text"] == ref["text"], (got, ref)
    assert max_logprob_diff(got, ref) < LOGPROB_TOL, (got["logprobs"], ref["logprobs"])
