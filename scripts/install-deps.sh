#!/usr/bin/env bash
# Installs every Debian package kvds needs to build, test, fuzz and bench,
# and the project's Python virtual environment (.venv at the repository root,
# with the pinned packages of python/requirements-dev.txt and, for the vLLM
# connector, python/requirements-vllm.txt plus CUDA library stubs, the
# newest vLLM of python/requirements-vllm-latest.txt in .venv/vllm-latest,
# and the Mooncake wheel of `kvds bench peers` with its CUDA stand-ins in
# .venv/peers, python/requirements-peers.txt).
# Idempotent: does nothing (and needs no network) when everything is present.
# --system-only: the Debian packages only (what building the C code needs),
# no .venv.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
system_only=0
[ "${1:-}" = --system-only ] && system_only=1

pkgs=(
  build-essential cmake pkg-config
  libevent-dev libjansson-dev libxxhash-dev libcmocka-dev
  libcurl4-openssl-dev libssl-dev etcd-server
  clang libclang-rt-14-dev clang-format
  curl procps fio
  redis-server libhiredis-dev libibverbs1 ibverbs-providers libnuma1
  libucx-dev ucx-utils
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

python="${PYTHON:-python3}"
# Debian's own python3 needs python3-venv and python3-dev for the venv and
# the extension's headers; another python3 (pyenv, a distribution) brings
# its own, so nothing is added for it.
if [ "$(command -v "$python" || true)" = /usr/bin/python3 ]; then
  for p in python3-venv python3-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ "$system_only" = 1 ] && exit 0

# ---- Python: .venv with the pinned requirements -----------------------------
venv="$root/.venv"
reqs="$root/python/requirements-dev.txt"
vllm_reqs="$root/python/requirements-vllm.txt"
stubs="$root/scripts/make_cuda_stubs.py"
stamp="$venv/.kvds-requirements"
# The stamp records what the venv was made from: the interpreter, both pinned
# requirement files and the CUDA stub generator. Same stamp: nothing to do,
# no network.
want="$("$python" -c 'import sys; print(sys.version)' | head -1)
$(cat "$reqs" "$vllm_reqs" "$stubs")"
if ! { [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  if [ ! -x "$venv/bin/python" ] ||
     [ "$("$venv/bin/python" -c 'import sys; print(sys.version)' | head -1)" != "$(echo "$want" | head -1)" ]; then
    echo "install-deps: creating $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
  fi
  echo "install-deps: installing python/requirements-dev.txt into .venv"
  rm -f "$stamp"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
  # vLLM (CPU) for the connector tests: every dependency is pinned in the file,
  # and --no-deps keeps pip from adding torch's nvidia-* CUDA wheels (~4 GB);
  # make_cuda_stubs.py builds stand-ins for the CUDA libraries torch links to.
  echo "install-deps: installing python/requirements-vllm.txt into .venv (--no-deps)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$vllm_reqs"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$venv/bin/python" "$stubs" "$site" >/dev/null
  "$venv/bin/python" -c 'import torch, vllm' ||
    { echo "install-deps: torch/vllm do not import in $venv" >&2; exit 1; }
  printf '%s' "$want" > "$stamp"
fi

# ---- the newest vLLM on PyPI, for the connector's driver tests --------------
# An overlay directory (first on PYTHONPATH) with vLLM and the torch it pins;
# everything else comes from the .venv above (python/requirements-vllm-latest.txt).
latest_reqs="$root/python/requirements-vllm-latest.txt"
latest="$venv/vllm-latest"
lstamp="$latest/.kvds-requirements"
lwant="$(cat "$latest_reqs" "$stubs")"
if [ ! -f "$lstamp" ] || [ "$(cat "$lstamp")" != "$lwant" ]; then
  echo "install-deps: installing python/requirements-vllm-latest.txt into .venv/vllm-latest (--no-deps)"
  rm -rf "$latest"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$latest" -r "$latest_reqs"
  "$venv/bin/python" "$stubs" "$latest" >/dev/null
  PYTHONPATH="$latest" "$venv/bin/python" -c 'import torch, vllm.config' ||
    { echo "install-deps: torch/vllm of .venv/vllm-latest do not import" >&2; exit 1; }
  printf '%s' "$lwant" > "$lstamp"
fi

# ---- the Mooncake peer of `kvds bench peers` ---------------------------------
# An overlay directory (the bench puts it on its Mooncake driver's
# PYTHONPATH) with the wheel and msgpack; aiohttp and requests come from the
# .venv above (python/requirements-peers.txt). make_peer_stubs.py builds the
# libcuda/libcudart stand-ins the wheel's binaries and extensions link to.
peers_reqs="$root/python/requirements-peers.txt"
peer_stubs="$root/scripts/make_peer_stubs.py"
peers="$venv/peers"
pstamp="$peers/.kvds-requirements"
pwant="$(cat "$peers_reqs" "$peer_stubs" "$stubs")"
if [ ! -f "$pstamp" ] || [ "$(cat "$pstamp")" != "$pwant" ]; then
  echo "install-deps: installing python/requirements-peers.txt into .venv/peers (--no-deps)"
  rm -rf "$peers"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$peers" -r "$peers_reqs"
  "$venv/bin/python" "$peer_stubs" "$peers" "$peers/kvds-stubs" \
    mooncake/transfer_engine_bench mooncake/mooncake_master \
    mooncake/engine.so mooncake/store.so >/dev/null
  PYTHONPATH="$peers" LD_LIBRARY_PATH="$peers/kvds-stubs" "$venv/bin/python" \
    -c 'import mooncake.engine, mooncake.store' ||
    { echo "install-deps: the Mooncake wheel of .venv/peers does not import" >&2; exit 1; }
  printf '%s' "$pwant" > "$pstamp"
fi
