#!/usr/bin/env bash
# make demo: start a worker the way users of the seeds do (dscli), store and
# read back objects through the CLI, show status and a short benchmark, stop.
set -euo pipefail
KVDS=${1:-build/release/kvds}
KVDS=$(cd "$(dirname "$KVDS")" && pwd)/$(basename "$KVDS")
DSCLI=$(dirname "$KVDS")/dscli

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=31501
if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then PORT=$(free_port); fi
ADDR=127.0.0.1:$PORT
export KVDS_RUN_DIR=$(mktemp -d /tmp/kvds-demo.XXXXXX)
export DS_WORKER_ADDR=$ADDR
started=0
cleanup() {
  if [ $started = 1 ]; then "$DSCLI" stop -w --worker_address "$ADDR" >/dev/null 2>&1 || true; fi
  rm -rf "$KVDS_RUN_DIR"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "start a worker (dscli, as in the YuanRong/Chariot guides)"
echo "\$ dscli start -w --worker_address $ADDR --memory 1GiB"
"$DSCLI" start -w --worker_address "$ADDR" --memory 1GiB
started=1

step "store objects"
echo "hello from kvds" > "$KVDS_RUN_DIR/hello.txt"
head -c 4194304 /dev/urandom > "$KVDS_RUN_DIR/block.bin"
echo "\$ kvds put demo/hello hello.txt"
"$KVDS" put demo/hello "$KVDS_RUN_DIR/hello.txt"
echo "\$ kvds put demo/block-0 block.bin     (4 MiB of random bytes)"
"$KVDS" put demo/block-0 "$KVDS_RUN_DIR/block.bin"
echo "\$ echo ... | kvds put demo/stdin -"
echo "piped through stdin" | "$KVDS" put demo/stdin -

step "read them back"
echo "\$ kvds get demo/hello"
"$KVDS" get demo/hello
echo "\$ kvds get demo/block-0 -o out.bin && cmp block.bin out.bin"
"$KVDS" get demo/block-0 -o "$KVDS_RUN_DIR/out.bin"
cmp "$KVDS_RUN_DIR/block.bin" "$KVDS_RUN_DIR/out.bin" && echo "identical (4194304 bytes)"
echo "\$ kvds ls demo/"
"$KVDS" ls demo/
echo "\$ kvds stat demo/block-0"
"$KVDS" stat demo/block-0

step "worker status"
echo "\$ kvds status"
"$KVDS" status

step "short benchmark (kvds bench local --quick)"
"$KVDS" bench local --quick

step "stop the worker"
echo "\$ dscli stop -w --worker_address $ADDR"
"$DSCLI" stop -w --worker_address "$ADDR"
started=0
echo
echo "demo finished"
