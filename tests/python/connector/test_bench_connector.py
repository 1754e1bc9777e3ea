"""Smoke test of `kvds bench connector` (python/kvds/bench_connector.py).

Runs the bench tiny (2 layers, 64 and 128 tokens, one iteration), through
`python -m` and through the C CLI, and checks that its JSON holds computed,
positive and self-consistent figures and counters. Nothing is timed: no
speed is asserted."""
import json
import math
import os
import subprocess
import sys

import pytest

import kvds
from serve_util import UNI_ENV

pytest.importorskip("vllm")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
KVDS_BIN = os.environ.get("KVDS_BIN") or os.path.join(ROOT, "build", "release", "kvds")
SMALL = ["--json", "--tokens", "64,128", "--layers", "2", "--iters", "1"]
TIMEOUT_S = 300


def env(**kw):
    e = dict(os.environ, KVDS_PYTHON=sys.executable)
    e.update(kw)
    e.pop("DS_WORKER_ADDR", None)
    return e


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env(**kw))
    assert p.returncode == 0, f"{cmd} exited with {p.returncode}:\n{p.stderr[-4000:]}"
    return json.loads(p.stdout)


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9)


def check(res, layers=2, tokens=(64, 128), sync=True, layout="bhnc"):
    g = res["geometry"]
    assert (g["layers"], g["kv_heads"], g["head_size"], g["block_size"], g["dtype"],
            g["layout"]) == (layers, 4, 128, 16, "bfloat16", layout)
    # bf16: 2 bytes; K and V; plus the connector's 64-byte header
    assert g["block_bytes"] == 64 + layers * 2 * 4 * 128 * 16 * 2
    assert res["iters"] == 1
    assert [c["tokens"] for c in res["cases"]] == list(tokens)
    for c in res["cases"]:
        n = c["tokens"] // 16
        assert c["blocks"] == n
        assert c["block_bytes"] == g["block_bytes"]
        assert c["bytes"] == n * g["block_bytes"]
        assert c["save"]["blocks_saved"] == n
        assert c["load_async"]["blocks_loaded"] == n
        ops = ["save", "raw_put", "load_async", "raw_get"]
        if sync:
            assert c["load_sync"]["blocks_loaded"] == n
            ops.append("load_sync")
        else:
            assert "load_sync" not in c
        assert c["memcpy_gbps"] > 0 and math.isfinite(c["memcpy_gbps"])
        for op in ops:
            f = c[op]
            assert f["ms"] > 0 and math.isfinite(f["ms"]), op
            assert len(f["samples_ms"]) == 1 and close(f["samples_ms"][0], f["ms"]), op
            assert close(f["gbps"], c["bytes"] / (f["ms"] / 1e3) / 1e9), op
            assert close(f["of_memcpy"], f["gbps"] / c["memcpy_gbps"]), op
        # the step only queues the saves: scheduler <= step <= sealed
        assert 0 < c["save"]["scheduler_ms"] <= c["save"]["step_ms"] <= c["save"]["ms"]
        assert 0 < c["load_async"]["step_ms"] <= c["load_async"]["ms"]
        assert close(c["save_overhead"], c["save"]["ms"] / c["raw_put"]["ms"])
        assert close(c["load_async_overhead"], c["load_async"]["ms"] / c["raw_get"]["ms"])
        if sync:
            assert close(c["load_sync_overhead"], c["load_sync"]["ms"] / c["raw_get"]["ms"])


def test_module_against_running_worker(worker):
    res = run([sys.executable, "-m", "kvds.bench_connector", *SMALL, "--addr", worker.addr])
    check(res)
    assert res["worker"]["addr"] == worker.addr and not res["worker"]["started"]
    # the bench removed every key it wrote
    with kvds.Client(worker.addr) as c:
        assert c.list(b"bench-connector-", limit=None) == []


def test_cli_starts_its_own_worker():
    """Through `kvds bench connector`: the C CLI runs $KVDS_PYTHON, which
    starts a worker of the same binary (/proc/self/exe) and stops it."""
    if not os.access(KVDS_BIN, os.X_OK):
        pytest.fail(f"kvds binary not found: {KVDS_BIN} (set KVDS_BIN)")
    res = run([KVDS_BIN, "bench", "connector", *SMALL, "--layout", "kv2-nhd", "--no-sync"],
              KVDS_BIN="")
    assert res["worker"]["started"]
    check(res, sync=False, layout="kv2-nhd")


def test_cli_names_a_missing_interpreter():
    p = subprocess.run([KVDS_BIN, "bench", "connector", "--json"], capture_output=True,
                       text=True, timeout=60,
                       env=env(KVDS_PYTHON="/nonexistent/python3"))
    assert p.returncode == 1
    assert "KVDS_PYTHON" in p.stderr and "/nonexistent/python3" in p.stderr
    assert p.stdout == ""


def test_help_names_connector_mode():
    p = subprocess.run([KVDS_BIN, "bench", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0
    assert "kvds bench connector" in p.stdout and "KVDS_PYTHON" in p.stdout


def test_ttft_mode(worker):
    """`kvds bench connector --ttft` with one request per case on a 2-layer
    model: three real vLLM servers start and stop, every case has its one
    sample, the kvds hit really loaded (its transfer is in the figures) and
    was checked against its bound. No time is asserted. The servers run
    the model in their engine-core process (serve_util.UNI_ENV: one
    process less to start each); test_bench_ttft.py keeps vLLM's default."""
    res = run([sys.executable, "-m", "kvds.bench_connector", "--ttft", "--json",
               "--requests", "1", "--ttft-tokens", "300", "--model-layers", "2",
               "--model-hidden", "128", "--addr", worker.addr], **UNI_ENV)
    assert res["worker"]["addr"] == worker.addr and res["model"]["layers"] == 2
    [c] = res["cases"]
    assert c["tokens"] == 300
    for k in ("recompute", "vllm_hit", "kvds_hit", "pd_decode", "pd_e2e"):
        assert c[k]["n"] == 1 and c[k]["p50"] > 0 and len(c[k]["samples_ms"]) == 1, k
    assert c["pd_e2e"]["p50"] > c["pd_decode"]["p50"]
    # 300 tokens, block 128: two full blocks loaded
    assert c["transfer_bytes"] > 0 and c["transfer_ms"]["n"] == 1
    assert c["over_bound"] in (0, 1) and len(c["bound_ms"]) == 1
    assert c["bound_ms"][0] > c["transfer_ms"]["p50"]
