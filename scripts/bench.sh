#!/usr/bin/env bash
# make bench: run `kvds bench local` against a fresh worker on a free port,
# then `kvds bench remote` (pulls between two workers it starts itself;
# $BENCH_REMOTE_ARGS, BENCH_REMOTE=0 skips it), then `kvds bench connector`
# (the vLLM connector's save/load per request) against the first worker, in
# $KVDS_PYTHON (make bench: .venv/bin/python). Extra arguments go to `bench
# local`; $BENCH_CONNECTOR_ARGS to `bench connector`; BENCH_CONNECTOR=0
# skips it; then `kvds bench connector --ttft` (time to first token with
# real vLLM servers; $BENCH_TTFT_ARGS, BENCH_TTFT=0 skips it).
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
if [ "${BENCH_REMOTE:-1}" != 0 ]; then
  echo
  # bench remote makes its own temp dir under $TMPDIR (else /tmp), removed at
  # the end, and starts 2 x 2 GiB pools (-m to change; BENCH_REMOTE=0 skips).
  # shellcheck disable=SC2086  # word splitting of the extra arguments is wanted
  "$KVDS" bench remote ${BENCH_REMOTE_ARGS:-}
fi
if [ "${BENCH_CONNECTOR:-1}" != 0 ]; then
  echo
  # shellcheck disable=SC2086  # word splitting of the extra arguments is wanted
  KVDS_PYTHON=${KVDS_PYTHON:-python3} "$KVDS" bench connector --addr "$ADDR" ${BENCH_CONNECTOR_ARGS:-}
fi
if [ "${BENCH_TTFT:-1}" != 0 ]; then
  echo
  # real vLLM servers (a few minutes); BENCH_TTFT=0 skips it
  # shellcheck disable=SC2086  # word splitting of the extra arguments is wanted
  KVDS_PYTHON=${KVDS_PYTHON:-python3} "$KVDS" bench connector --ttft --addr "$ADDR" ${BENCH_TTFT_ARGS:-}
fi
