"""`kvds bench ttft` (python/kvds/bench_serve.py) end to end, in its
quickest form: steps 1 and 2 on one real vLLM server through the C CLI,
then the disk step on a second server whose worker has the disk tier,
4 prompts of 256 tokens, a 2-layer model.

Checks the output's shape, that its figures are computed from vLLM's own
per-request TTFTs (the median and p99 of the samples, equal to what
`vllm bench serve` reported), that step 1 loaded nothing while step 2's set
A came from kvds — every full block of every request loaded by the
connector, vLLM's own prefix cache having lost set A to set B — that the
disk step's set A came from kvds too, every block of it read back from
the disk worker's files (its disk_reads counter), and that every server
and worker is gone at the end, the disk worker's files removed. The
table's disk row and its note are checked on a made-up step. No time is
asserted."""
import io
import json
import os
import shutil
import statistics
import subprocess
import sys

import pytest

from kvds.bench_serve import Table, _lmcache_failure

pytest.importorskip("vllm")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
KVDS_BIN = os.environ.get("KVDS_BIN") or os.path.join(ROOT, "build", "release", "kvds")
TIMEOUT_S = 600
PROMPTS, TOKENS, OUT, BLOCK, LAYERS, HIDDEN = 4, 256, 2, 128, 2, 128


def env(**kw):
    e = dict(os.environ, KVDS_PYTHON=sys.executable)
    e.update(kw)
    e.pop("DS_WORKER_ADDR", None)
    e.pop("KVDS_LMCACHE_PATH", None)
    return e


def close(a, b):
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def test_quick_steps_1_2_disk(tmp_path):
    if not os.access(KVDS_BIN, os.X_OK):
        pytest.fail(f"kvds binary not found: {KVDS_BIN} (set KVDS_BIN)")
    png = tmp_path / "ttft.png"
    cmd = [KVDS_BIN, "bench", "ttft", "--quick", "--steps", "1,2,disk", "--json", "--keep-logs",
           "--input-len", str(TOKENS), "--output-len", str(OUT), "--num-prompts", str(PROMPTS),
           "--concurrency", "2", "--model-layers", str(LAYERS), "--model-hidden", str(HIDDEN),
           "--block-size", str(BLOCK), "--lmcache", "off", "--plot", str(png)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env())
    assert p.returncode == 0, f"{cmd} exited with {p.returncode}:\n{p.stderr[-4000:]}"
    res = json.loads(p.stdout)
    logs = res["logs"]
    try:
        check(res, png)
        # every server (its command line names the model in logs) and
        # worker the bench started is gone
        left = subprocess.run(["pgrep", "-af", logs], capture_output=True, text=True)
        assert left.stdout.strip() == "", f"processes left running:\n{left.stdout}"
        for addr in res["workers"]:
            st = subprocess.run([KVDS_BIN, "status", "--worker", addr], capture_output=True,
                                text=True, timeout=60)
            assert st.returncode != 0, f"worker {addr} still answers"
        disk = res["steps"][-1]["disk"]
        assert not os.path.exists(disk["dir"]), "the disk worker's files were left"
    finally:
        shutil.rmtree(logs, ignore_errors=True)


def check(res, png):
    w = res["workload"]
    assert (w["input_len"], w["output_len"], w["num_prompts"], w["concurrency"]) == \
        (TOKENS, OUT, PROMPTS, 2)
    assert w["steps"] == ["1", "2", "disk"] and w["seed_b"] == w["seed_a"] + 1
    m = res["model"]
    assert (m["layers"], m["kv_heads"], m["head_size"], m["block_size"]) == \
        (LAYERS, HIDDEN // 128, 64, BLOCK)
    # W1, and WD for the disk step
    assert len(res["workers"]) == 2 and res["lmcache"] is None
    steps = res["steps"]
    assert [(s["step"], s["connector"]) for s in steps] == \
        [("1", "kvds"), ("2b", "kvds"), ("2", "kvds"), ("disk", "kvds")]
    assert [s["seed"] for s in steps] == [w["seed_a"], w["seed_b"], w["seed_a"], w["seed_a"]]
    full = PROMPTS * (TOKENS // BLOCK)
    block_bytes = 64 + LAYERS * 2 * m["kv_heads"] * 64 * BLOCK * 4     # header + float32 K, V
    for s in steps:
        t = s["ttft_ms"]
        xs = t["samples"]
        assert t["n"] == len(xs) == PROMPTS and all(x > 0 for x in xs)
        assert close(t["p50"], statistics.median(xs)) and min(xs) <= t["p99"] <= max(xs)
        assert close(t["mean"], statistics.fmean(xs))
        # our figures are vLLM's own: vllm bench serve's median of the same requests
        assert close(t["p50"], s["vllm_reported"]["median_ttft_ms"])
        assert close(t["p99"], s["vllm_reported"]["p99_ttft_ms"])
        assert s["prompt_tokens"] == PROMPTS * TOKENS and s["full_blocks"] == full
        assert s["peer_bytes"] == 0                               # one worker
    one, b, two, disk = steps
    # steps 1 and B: fresh prompts, nothing to load
    for s in (one, b):
        assert s["kvds"]["requests_loaded"] == 0 and s["external_hit_tokens"] == 0
        assert s["vllm_prefix_hit_tokens"] == 0 and s["transfer_share"] is None
    # step 2: set B pushed A out of vLLM's cache, so all of A came from kvds
    k = two["kvds"]
    assert two["vllm_prefix_hit_tokens"] == 0
    assert k["requests_loaded"] == PROMPTS
    assert k["blocks_loaded"] == k["blocks_asked"] == full
    assert k["bytes_loaded"] == full * block_bytes
    # vLLM counts every prompt token but the last as the connector's
    assert two["external_hit_tokens"] == PROMPTS * (TOKENS - 1)
    assert k["load_ms"]["n"] == PROMPTS and k["load_ms"]["p50"] > 0
    assert 0 < two["transfer_share"] < 1
    # the disk step: all of A from kvds, every block read from WD's files
    # (the filler pushed A out of WD's DRAM: it was spilled, none skipped)
    k = disk["kvds"]
    assert disk["vllm_prefix_hit_tokens"] == 0
    assert k["requests_loaded"] == PROMPTS
    assert k["blocks_loaded"] == k["blocks_asked"] == full
    assert k["bytes_loaded"] == full * block_bytes
    assert disk["external_hit_tokens"] == PROMPTS * (TOKENS - 1)
    d = disk["disk"]
    assert d["spill_skipped"] == 0 and d["spilled_objects"] >= full
    assert d["reads"] == full and d["read_bytes"] == full * block_bytes
    r = res["ratios"]["kvds"]
    assert close(r["ttft2_over_ttft1"], two["ttft_ms"]["p50"] / one["ttft_ms"]["p50"])
    assert close(r["ttft_disk_over_ttft2"], disk["ttft_ms"]["p50"] / two["ttft_ms"]["p50"])
    assert close(r["ttft_disk_over_ttft1"], disk["ttft_ms"]["p50"] / one["ttft_ms"]["p50"])
    assert "ttft3_over_ttft2" not in r
    assert res["plot"] == str(png)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_table_prints_disk_row():
    step = {"step": "disk", "title": "disk-tier hit: A evicted from DRAM", "connector": "kvds",
            "ttft_ms": {"p50": 123.4, "p99": 150.0, "n": 4}, "prompt_tokens": 1024,
            "external_hit_tokens": 1020, "vllm_prefix_hit_tokens": 0, "peer_bytes": 0,
            "full_blocks": 8, "transfer_share": 0.25,
            "kvds": {"requests_loaded": 4, "blocks_loaded": 8, "blocks_asked": 8,
                     "bytes_loaded": 8 << 20, "load_ms": {"p50": 30.0, "n": 4}},
            "disk": {"pool": 24 << 20, "reads": 8, "read_bytes": 8 << 20,
                     "spilled_objects": 20, "spill_skipped": 0, "page_cache_dropped": True}}
    out = io.StringIO()
    Table(out)("step", step)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:2] == ["disk", "disk-tier"] and "123" in lines[0]
    assert "read 8 objects, 8.4 MB, from its disk" in lines[1]
    assert "page cache dropped" in lines[1]


def test_help_names_ttft_mode():
    p = subprocess.run([KVDS_BIN, "bench", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "kvds bench ttft" in p.stdout
    p = subprocess.run([KVDS_BIN, "bench", "ttft", "--help"], capture_output=True, text=True,
                       timeout=120, env=env())
    assert p.returncode == 0 and p.stdout.startswith("usage: kvds bench ttft")
    p = subprocess.run([KVDS_BIN, "bench", "ttft", "--steps", "2"], capture_output=True,
                       text=True, timeout=120, env=env())
    assert p.returncode == 2 and "need step 1" in p.stderr


# What vLLM 0.32 with lmcache 0.5.6 logs on a CPU (abridged from a real run).
LMCACHE_CPU_LOG = """\
(Worker pid=31745) INFO 12-07 06:14:11 [lmcache_connector.py:100] Initializing latest dev LMCache
[2026-12-07 06:14:12,269] LMCache INFO: num_layer: 2, chunk_size: 256, num_kv_head (per gpu): 1
[2026-12-07 06:14:12,271] LMCache ERROR: Failed to initialize LMCacheManager components: Traceback\
 (most recent call last):
  File "/x/lmcache/v1/manager.py", line 94, in __init__
    self._lmcache_engine = service_factory.get_or_create_lmcache_engine()
  File "/x/lmcache/v1/gpu_connector/__init__.py", line 247, in CreateGPUConnector
    raise RuntimeError(f"No supported {torch_device_type} connector found.")
RuntimeError: No supported cpu connector found.
. System will operate in degraded mode (recompute). (manager.py:107:lmcache.v1.manager)
(APIServer pid=31429) INFO 12-07 06:14:40 [api_server.py:600] Starting vLLM API server
"""


def test_lmcache_failure_reason():
    assert _lmcache_failure(LMCACHE_CPU_LOG) == (
        "CreateGPUConnector: RuntimeError: No supported cpu connector found.; "
        "LMCache falls back to recompute")
    # a server that started cleanly: no reason; one that died: its exception
    assert _lmcache_failure("INFO ready\nTraceback (most recent call last):\n") is None
    died = ('Traceback (most recent call last):\n  File "a.py", line 3, in load\n'
            "ModuleNotFoundError: No module named 'nvtx'\n")
    assert _lmcache_failure(died, exited=True) == \
        "load: ModuleNotFoundError: No module named 'nvtx'"
