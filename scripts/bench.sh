#!/usr/bin/env bash
# make bench: run `kvds bench local` against a fresh worker on a free port.
set -euo pipefail
KVDS=${1:-build/release/kvds}
shift || true
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
export KVDS_RUN_DIR=$(mktemp -d /tmp/kvds-bench.XXXXXX)
"$KVDS" worker --listen "$ADDR" --memory "${BENCH_MEMORY:-4GiB}" --daemon \
  --pidfile "$KVDS_RUN_DIR/worker.pid" --log-file "$KVDS_RUN_DIR/worker.log"
trap '"$KVDS" stop --worker "$ADDR" >/dev/null 2>&1 || true; rm -rf "$KVDS_RUN_DIR"' EXIT
"$KVDS" bench local --worker "$ADDR" "$@"
