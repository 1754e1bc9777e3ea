#!/usr/bin/env bash
# Installs every Debian package kvds needs to build, test, fuzz and bench.
# Idempotent: does nothing (and needs no network) when everything is present.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  libevent-dev libjansson-dev libxxhash-dev libcmocka-dev
  clang libclang-rt-14-dev clang-format
  curl procps
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
