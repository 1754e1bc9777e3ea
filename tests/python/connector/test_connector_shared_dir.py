"""KvdsConnector over the disk tier's shared directory (UCM's Cache|Posix
deployment, docs/tiers.md): two real vLLM 0.32.0 OpenAI-API servers (CPU,
the tiny seeded Llama, nothing downloaded), each on its own kvds worker,
the two workers sharing nothing but a directory — no peers, no etcd, no
network path between them.

Worker WA writes through (a save is answered once its file is there);
server A misses, computes and stores the prompt's full blocks. Worker WB
is read-only on the directory and never saw the prompt: server B's lookup
finds the blocks among the files, loads them (read from the files into
WB's pool) and answers exactly as A did — its greedy tokens and their
logprobs. A control prompt with another first block gets other logprobs,
so the comparison does see the loaded KV.
"""
import os
import subprocess
import sys
import time
import uuid

import pytest

import kvds
from serve_util import (LOGPROB_TOL, LOGPROBS, Server, answer, kv_config, loads,
                        max_logprob_diff, start_all)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "vllm_offline.py")
BLOCK = 128               # vLLM's CPU backend block size
N_FULL = 2
TAIL = 44
GEN = 8
PROMPT = [(i * 29) % 500 + 4 for i in range(N_FULL * BLOCK + TAIL)]
CONTROL = [(i * 13) % 500 + 4 for i in range(BLOCK)] + PROMPT[BLOCK:]


def kv_files(d):
    return [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f.endswith(".kv")]


def stats(w):
    with kvds.Client(w.addr) as c:
        return c.stats()


def complete(server, prompt):
    r = server.complete(prompt, GEN, None, logprobs=LOGPROBS)
    assert r["usage"]["prompt_tokens"] == len(prompt), r["usage"]
    return r


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shared") / "model")
    subprocess.run([sys.executable, SCRIPT, "make-model", out], check=True, timeout=120)
    return out


def test_shared_directory_prefill_to_decode(make_worker, model, tmp_path):
    disk = str(tmp_path / "shared")
    wa = make_worker("256MiB", ["--disk-dir", disk, "--disk-policy", "write-through"])
    wb = make_worker("256MiB", ["--disk-dir", disk, "--disk-policy", "read-only"])
    ns = f"shared-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    servers = []
    try:
        a = Server("shared-A", model, tmp_path, kv_config("kv_both", wa.addr, ns),
                   hashseed=0, started=servers)
        b = Server("shared-B", model, tmp_path, kv_config("kv_both", wb.addr, ns),
                   hashseed=0, started=servers)
        start_all(servers)

        ref = answer(complete(a, PROMPT))
        control = answer(complete(a, CONTROL))
        assert loads(a) == [], f"A had nothing to load\n{a.tail()}"
        # A's saves are sealed after the response: wait for them on WA
        with kvds.Client(wa.addr) as c:
            deadline = time.monotonic() + 20
            while (len(stored := dict(c.list(f"{ns}/".encode(), limit=None)))
                   < 2 * N_FULL and time.monotonic() < deadline):
                time.sleep(0.05)
        assert len(stored) == 2 * N_FULL, stored
        # write-through: every saved block is a file in the shared directory
        sa = stats(wa)
        assert sa["disk_writes"] == 2 * N_FULL and len(kv_files(disk)) == 2 * N_FULL, sa
        assert max_logprob_diff(control, ref) > LOGPROB_TOL, \
            "logprobs do not depend on the first block: the comparison would prove nothing"

        assert stats(wb)["disk_reads"] == 0
        br = complete(b, PROMPT)
        got = answer(br)
        ld = loads(b)
        assert len(ld) == 1 and (ld[0]["loaded"], ld[0]["of"], ld[0]["addr"]) == \
            (N_FULL, N_FULL, wb.addr), f"B should load {N_FULL} blocks: {ld}\n{b.tail()}"
        block_bytes = set(stored.values())  # every block the same size
        assert len(block_bytes) == 1 and ld[0]["bytes"] == N_FULL * block_bytes.pop(), \
            (ld, stored)
        sb = stats(wb)
        # B's worker read them from the files (it has no other way to them)
        assert sb["disk_reads"] == N_FULL and sb["disk_corrupt"] == 0, sb
        assert sb["disk_writes"] == 0, "a read-only worker writes nothing"
        assert got["token_ids"] == ref["token_ids"] and got["text"] == ref["text"], (got, ref)
        assert max_logprob_diff(got, ref) < LOGPROB_TOL, (got["logprobs"], ref["logprobs"])
    finally:
        for s in servers:
            s.stop()
