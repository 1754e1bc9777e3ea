#!/usr/bin/env bash
# The vLLM connector's CUDA path, checked on a machine with an NVIDIA GPU.
#
#   PYTHON=/path/to/python scripts/gpu-check.sh [OUT_DIR]
#
# Needs: the Debian packages of scripts/install-deps.sh --system-only (to
# build the worker), and a Python ($PYTHON, default python3) in which the
# CUDA build of vLLM (pip install vllm) and torch with CUDA import. It
# builds kvds, installs the kvds package into that Python, starts a worker,
# then runs scripts/gpu_check.py (producer -> consumer through kvds vs a
# colocated run, greedy tokens equal, for FlashAttention, FlashInfer if
# installed, and an MLA model) and `kvds bench connector --device cuda`
# (save/load through pinned pool memory and side streams, next to memcpy),
# then `kvds bench ttft` at seed 004's counts (1024 tokens in, 10 out, 100
# requests, concurrency 25) with LMCache 0.5.6 side by side (installed
# --no-deps into OUT_DIR/lmcache, an overlay that shadows nothing of
# $PYTHON; lmcache's CUDA dependencies — cupy, cuda-python, nvtx — must be
# in $PYTHON already, else its row names what failed).
# Results: OUT_DIR (default gpu-check-out/): one JSON per check, vLLM logs,
# bench.json, ttft.json and ttft.png. Exit status 0 when every check that
# could run passed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/gpu-check-out}"
py="${PYTHON:-python3}"
mkdir -p "$out"
cd "$root"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader | tee "$out/gpu.txt" || { echo "gpu-check: no nvidia-smi" >&2; exit 2; }
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
  { echo "gpu-check: torch in $py sees no CUDA device" >&2; exit 2; }
"$py" -c 'import vllm; print("vLLM", vllm.__version__)' | tee -a "$out/gpu.txt" ||
  { echo "gpu-check: $py cannot import vllm (pip install vllm)" >&2; exit 2; }

[ -x build/release/kvds ] || make build
"$py" -m pip install --quiet --no-build-isolation ./python

port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export KVDS_RUN_DIR="$out/run"
mkdir -p "$KVDS_RUN_DIR"
build/release/kvds worker --listen "127.0.0.1:$port" --memory 8GiB \
  >"$out/worker.log" 2>&1 &
wpid=$!
trap 'kill $wpid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  build/release/kvds status --worker "127.0.0.1:$port" >/dev/null 2>&1 && break
  sleep 0.1
done

rc=0
"$py" scripts/gpu_check.py --worker "127.0.0.1:$port" --out "$out" || rc=$?
KVDS_PYTHON="$py" build/release/kvds bench connector --addr "127.0.0.1:$port" \
  --device cuda --json --tokens 1024,4096,16384 >"$out/bench.json" || rc=$?
KVDS_PYTHON="$py" build/release/kvds bench connector --addr "127.0.0.1:$port" \
  --device cuda --tokens 1024,4096,16384 | tee "$out/bench.txt" || rc=$?
# TTFT steps 1-3 and PD, kvds and LMCache side by side, with a larger model
# (8 layers, 1024 wide: 32 KiB of KV per token, 3.4 GB per set of 100
# prompts; the four workers' pools take about 30 GB of host memory)
PYTHON="$py" bash scripts/install-lmcache.sh "$out/lmcache" || rc=$?
KVDS_PYTHON="$py" build/release/kvds bench ttft --lmcache-path "$out/lmcache" \
  --input-len 1024 --output-len 10 --num-prompts 100 --concurrency 25 \
  --model-layers 8 --model-hidden 1024 --json --plot "$out/ttft.png" >"$out/ttft.json" || rc=$?
exit $rc
