"""KvdsConnector in real vLLM 0.32.0 OpenAI-API servers (CPU, float32, the
tiny local Llama of kvds.testmodel with seeded random weights; nothing is
downloaded). Not vLLM's dummy weights: with those every prompt gives the
same uniform logprobs and tokens, which would prove nothing about the KV.

Three kv_both servers (PYTHONHASHSEED=0, one fresh namespace), started
together for the module: A and B on worker WA, C on worker WB. WA and WB
share nothing but the disk tier's directory (UCM's Cache|Posix deployment,
docs/tiers.md) — no peers, no etcd, no network path between them: WA
writes through (a save is answered once its file is there), WB is
read-only on the directory.

kv_both across instances: server A misses, computes and stores the
prompt's full blocks; server B, another process with the same seed that
never saw the prompt, loads them from their worker WA (log, metrics,
worker hits), stores nothing new, and answers exactly like A — its greedy
tokens and their logprobs. A control prompt whose first block differs gets
other logprobs, so the comparisons do see the KV of the loaded blocks.

Over the shared directory: A misses, computes and stores another prompt's
full blocks, each a file in the directory; server C, whose worker WB never
saw the prompt, finds the blocks among the files, loads them (read from
the files into WB's pool) and answers exactly as A did. (Prefill/decode
with real servers, across two workers and through worker outages:
test_connector_fleet.py.)
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
# the shared directory's prompt and control (no block in common with the above)
SHARED_PROMPT = [(i * 29) % 500 + 4 for i in range(N_FULL * BLOCK + TAIL)]
SHARED_CONTROL = [(i * 13) % 500 + 4 for i in range(BLOCK)] + SHARED_PROMPT[BLOCK:]
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


def kv_files(d):
    return [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f.endswith(".kv")]


def stats(w):
    with kvds.Client(w.addr) as c:
        return c.stats()


@pytest.fixture(scope="module")
def kv_both(make_worker, model, tmp_path_factory):
    """Servers A, B (worker WA: write-through) and C (worker WB: read-only
    on WA's directory) started together; A has served PROMPT (a miss, so
    the colocated reference) and CONTROL. All are stopped at the end of
    the module."""
    tmp = tmp_path_factory.mktemp("kv_both")
    disk = str(tmp / "shared")
    wa = make_worker("256MiB", ["--disk-dir", disk, "--disk-policy", "write-through"])
    wb = make_worker("256MiB", ["--disk-dir", disk, "--disk-policy", "read-only"])
    ns = namespace("both")
    servers = []
    try:
        a = Server("both-A", model, tmp, kv_config("kv_both", wa.addr, ns), hashseed=0,
                   started=servers)
        b = Server("both-B", model, tmp, kv_config("kv_both", wa.addr, ns), hashseed=0,
                   started=servers)
        c = Server("shared-C", model, tmp, kv_config("kv_both", wb.addr, ns), hashseed=0,
                   started=servers)
        start_all(servers)
        check_block_size(a)
        resp = complete(a, PROMPT, GEN)
        stored = wait_objects(wa.addr, ns, N_FULL)
        control = complete(a, CONTROL, GEN)
        wait_objects(wa.addr, ns, 2 * N_FULL)
        # A's counters and WA's objects now, before another test adds to them
        a_metrics = wait_metrics(a, expect_served(2, 2 * len(PROMPT), 0))
        yield {"worker": wa, "wb": wb, "disk": disk, "ns": ns, "a": a, "b": b, "c": c,
               "ref": answer(resp), "stored": stored, "control": answer(control),
               "a_metrics": a_metrics, "after_control": objects(wa.addr, ns)}
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
    assert kv_both["a_metrics"] == missed, f"A's /metrics\n{a.tail()}"
    after_control = kv_both["after_control"]
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


def test_shared_directory_prefill_to_decode(kv_both):
    wa, wb, disk, ns = kv_both["worker"], kv_both["wb"], kv_both["disk"], kv_both["ns"]
    a, c = kv_both["a"], kv_both["c"]
    before = objects(wa.addr, ns)
    files0, writes0 = set(kv_files(disk)), stats(wa)["disk_writes"]
    ref = answer(complete(a, SHARED_PROMPT, GEN))
    control = answer(complete(a, SHARED_CONTROL, GEN))
    assert loads(a) == [], f"A had nothing to load\n{a.tail()}"
    # A's saves are sealed after the response: wait for them on WA
    now = wait_objects(wa.addr, ns, len(before) + 2 * N_FULL, timeout=20)
    stored = {k: n for k, n in now.items() if k not in before}
    assert len(stored) == 2 * N_FULL and len(now) == len(before) + 2 * N_FULL, (stored, before)
    # write-through: every saved block is a file in the shared directory
    sa, files = stats(wa), kv_files(disk)
    assert sa["disk_writes"] - writes0 == 2 * N_FULL, sa
    assert len(set(files) - files0) == 2 * N_FULL and len(files) == len(now), (files, now)
    assert max_logprob_diff(control, ref) > LOGPROB_TOL, \
        "logprobs do not depend on the first block: the comparison would prove nothing"

    assert stats(wb)["disk_reads"] == 0
    cr = complete(c, SHARED_PROMPT, GEN)
    got = answer(cr)
    ld = loads(c)
    assert len(ld) == 1 and (ld[0]["loaded"], ld[0]["of"], ld[0]["addr"]) == \
        (N_FULL, N_FULL, wb.addr), f"C should load {N_FULL} blocks: {ld}\n{c.tail()}"
    block_bytes = set(stored.values())  # every block the same size
    assert len(block_bytes) == 1 and ld[0]["bytes"] == N_FULL * block_bytes.pop(), \
        (ld, stored)
    sb = stats(wb)
    # C's worker read them from the files (it has no other way to them)
    assert sb["disk_reads"] == N_FULL and sb["disk_corrupt"] == 0, sb
    assert sb["disk_writes"] == 0, "a read-only worker writes nothing"
    assert got["token_ids"] == ref["token_ids"] and got["text"] == ref["text"], (got, ref)
    assert max_logprob_diff(got, ref) < LOGPROB_TOL, (got["logprobs"], ref["logprobs"])
