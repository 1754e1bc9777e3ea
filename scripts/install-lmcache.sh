#!/usr/bin/env bash
# Installs LMCache (python/requirements-lmcache.txt) for `kvds bench ttft`
# into an overlay directory (default .venv/lmcache) with pip --no-deps
# --target, then checks that the overlay shadows nothing of the Python it
# is for: no top-level module of the overlay may exist in that Python's
# site-packages, and torch and vllm must not import from the overlay.
# Idempotent: a stamp holds the requirements the overlay was made from.
#
#   scripts/install-lmcache.sh [DIR]      ($PYTHON: default .venv/bin/python)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
dir="${1:-$root/.venv/lmcache}"
reqs="$root/python/requirements-lmcache.txt"
stamp="$dir/.kvds-requirements"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(cat "$reqs")" ]; then
  exit 0
fi
echo "install-lmcache: installing python/requirements-lmcache.txt into $dir (--no-deps)"
rm -rf "$dir"
"$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" -r "$reqs"
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
bad=""
for f in "$dir"/*; do
  name="$(basename "$f")"
  case "$name" in bin | *.dist-info | __pycache__) continue ;; esac
  mod="${name%%.*}"
  if [ -e "$site/$mod" ] || compgen -G "$site/$mod.*" >/dev/null; then bad="$bad $mod"; fi
done
if [ -n "$bad" ]; then
  echo "install-lmcache: the overlay would shadow$bad of $site" >&2
  rm -rf "$dir"
  exit 1
fi
PYTHONPATH="$dir" "$py" - "$dir" <<'PY'
import os
import sys
import torch
import vllm
overlay = os.path.realpath(sys.argv[1])
for m in (torch, vllm):
    if os.path.realpath(m.__file__).startswith(overlay + os.sep):
        sys.exit(f"install-lmcache: {m.__name__} would import from the overlay: {m.__file__}")
PY
cp "$reqs" "$stamp"
