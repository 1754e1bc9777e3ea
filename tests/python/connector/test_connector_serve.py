"""KvdsConnector in real vLLM 0.32.0 OpenAI-API servers (CPU, float32, the
tiny local Llama of kvds.testmodel with seeded random weights; nothing is
downloaded). Not vLLM's dummy weights: with those every prompt gives the
same uniform logprobs and tokens, which would prove nothing about the KV.

kv_both across instances: server A (PYTHONHASHSEED=0, fresh namespace)
misses, computes and stores the prompt's full blocks; server B, another
process with the same seed that never saw the prompt, loads them (log,
metrics, worker hits), stores nothing new, and answers exactly like A — its
greedy tokens and their logprobs. A control prompt whose first block
differs gets other logprobs, so the comparisons do see the KV of the loaded
blocks. (Prefill/decode with real servers, across two workers and through
worker outages: test_connector_fleet.py.)
"""
import itertools
import os
import re
import subprocess
import sys
import time
import uuid

import pytest

import kvds
from serve_util import (LOGPROB_TOL, LOGPROBS, Server, answer, kv_config, loads,
                        max_logprob_diff, start_all, wait_metrics)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "vllm_offline.py")
BLOCK = 128               # vLLM's CPU backend block size (checked against the servers)
N_FULL = 2
TAIL = 44
GEN = 8

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


def worker_hits(addr):
    with kvds.Client(addr) as c:
        return c.stats()["hits"]


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
