#!/usr/bin/env bash
# make demo: start a worker the way users of the seeds do (dscli), store and
# read back objects through the CLI, show status and a short benchmark, stop.
# Then prefill/decode disaggregation with real vLLM servers: a worker, a
# prefill and a decode vLLM (a tiny local model, KvdsConnector) behind
# `kvds proxy`; a few requests through the proxy (curl) give the same greedy
# text as a colocated kv_both instance; then `kvds bench ttft --quick`.
# Everything started is stopped at the end, also on error or Ctrl-C.
# $KVDS_PYTHON: the Python with the kvds package and vLLM (make demo:
# .venv/bin/python); DEMO_PD=0 skips the vLLM part.
set -euo pipefail
KVDS=${1:-build/release/kvds}
KVDS=$(cd "$(dirname "$KVDS")" && pwd)/$(basename "$KVDS")
DSCLI=$(dirname "$KVDS")/dscli
PY=${KVDS_PYTHON:-python3}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=31501
if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then PORT=$(free_port); fi
ADDR=127.0.0.1:$PORT
export KVDS_RUN_DIR=$(mktemp -d /tmp/kvds-demo.XXXXXX)
export DS_WORKER_ADDR=$ADDR
started=0
groups=()     # process groups of the vLLM servers and the proxy
cleanup() {
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "${groups[@]}"; do
    for _ in $(seq 100); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$g" 2>/dev/null || true
  done
  if [ $started = 1 ]; then "$DSCLI" stop -w --worker_address "$ADDR" >/dev/null 2>&1 || true; fi
  rm -rf "$KVDS_RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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

if [ "${DEMO_PD:-1}" = 0 ]; then
  echo
  echo "demo finished"
  exit 0
fi

# ---- prefill/decode through kvds proxy, with real vLLM servers -------------
"$PY" -c 'import kvds, vllm' 2>/dev/null || {
  echo "demo: $PY cannot import kvds and vllm (make python; set KVDS_PYTHON)" >&2
  exit 1
}

step "a worker, a tiny model, three vLLM servers (prefill, decode, colocated)"
echo "\$ kvds worker --listen $ADDR --memory 1GiB --daemon"
"$KVDS" worker --listen "$ADDR" --memory 1GiB --daemon --pidfile "$KVDS_RUN_DIR/worker.pid" \
  --log-file "$KVDS_RUN_DIR/worker.log"
started=1
MODEL=$KVDS_RUN_DIR/model
echo "\$ python -m kvds.testmodel model --layers 4 --hidden 256    (seeded random weights)"
"$PY" -m kvds.testmodel "$MODEL" --layers 4 --hidden 256 --max-len 2048 >/dev/null
# every server: CPU, float32, block 32, PYTHONHASHSEED=0 (block hashes agree)
serve() {   # NAME PORT KV_ROLE NAMESPACE
  local kv
  kv="{\"kv_connector\":\"KvdsConnector\",\"kv_connector_module_path\":\"kvds.vllm\",
\"kv_role\":\"$3\",\"kv_connector_extra_config\":{\"namespace\":\"$4\"}}"
  echo "\$ vllm serve model --port $2 --kv-transfer-config '{..., \"kv_role\": \"$3\"}'   ($1)"
  PYTHONHASHSEED=0 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind HF_HUB_OFFLINE=1 \
  VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_CONFIG_ROOT="$KVDS_RUN_DIR/vllm-cfg" \
  VLLM_CACHE_ROOT="$KVDS_RUN_DIR/vllm-cache" \
    setsid "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name tiny \
      --host 127.0.0.1 --port "$2" --dtype float32 --max-model-len 2048 --block-size 32 \
      --enforce-eager --seed 0 --load-format safetensors --disable-uvicorn-access-log \
      --distributed-executor-backend uni --kv-transfer-config "$kv" \
      >"$KVDS_RUN_DIR/vllm-$1.log" 2>&1 </dev/null &
  groups+=("$!")
}
PRE=$(free_port); DEC=$(free_port); COLO=$(free_port); PROXY=$(free_port)
echo "(the connector reaches the worker at \$DS_WORKER_ADDR=$ADDR, its default)"
serve prefill "$PRE" kv_producer demo
serve decode "$DEC" kv_consumer demo
serve colocated "$COLO" kv_both demo-colocated
wait_health() {   # NAME PORT LOG
  for _ in $(seq 900); do
    curl -sf "http://127.0.0.1:$2/health" >/dev/null 2>&1 && return 0
    if ! kill -0 -- "-${groups[$4]}" 2>/dev/null; then
      echo "demo: the $1 server exited:" >&2; tail -20 "$3" >&2; return 1
    fi
    sleep 1
  done
  echo "demo: the $1 server did not start:" >&2; tail -20 "$3" >&2; return 1
}
echo "waiting for the three servers (about two minutes on 2 cores) ..."
wait_health prefill "$PRE" "$KVDS_RUN_DIR/vllm-prefill.log" 0
wait_health decode "$DEC" "$KVDS_RUN_DIR/vllm-decode.log" 1
wait_health colocated "$COLO" "$KVDS_RUN_DIR/vllm-colocated.log" 2

step "kvds proxy: prefill on one instance, decode on the other"
echo "\$ kvds proxy --port $PROXY --prefill 127.0.0.1:$PRE --decode 127.0.0.1:$DEC"
setsid "$KVDS" proxy --port "$PROXY" --prefill "127.0.0.1:$PRE" --decode "127.0.0.1:$DEC" \
  >"$KVDS_RUN_DIR/proxy.log" 2>&1 </dev/null &
groups+=("$!")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PROXY/health" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$PROXY/health" >/dev/null || { cat "$KVDS_RUN_DIR/proxy.log" >&2; exit 1; }

# the answer's token ids and text (random weights: the text is noise, but
# the same noise only if the decode instance got the right KV cache)
answer() {
  python3 -c 'import json, sys; c = json.load(sys.stdin)["choices"][0]
print(c.get("token_ids"), repr(c["text"]))'
}
CONTEXT="kvds keeps the attention KV cache of every prompt in a shared memory pool on each node, \
so a decode instance reads what a prefill instance computed instead of computing it again. "
same=0
prompts=("the quick brown fox" "hello world this is a tiny model" "vllm serves large language models")
for i in "${!prompts[@]}"; do
  p="${prompts[$i]}: $CONTEXT$CONTEXT$CONTEXT"      # no two prompts share a block
  body=$(python3 -c 'import json, sys; print(json.dumps({"model": "tiny", "prompt": sys.argv[1],
    "max_tokens": 12, "temperature": 0, "return_token_ids": True}))' "$p")
  echo
  echo "\$ curl -s http://127.0.0.1:$PROXY/v1/completions -H 'Content-Type: application/json' \\"
  echo "    -d '{\"model\": \"tiny\", \"prompt\": \"${prompts[$i]}: kvds keeps ...\", \"max_tokens\": 12, \"temperature\": 0, ...}'"
  via_proxy=$(curl -sf "http://127.0.0.1:$PROXY/v1/completions" -H 'Content-Type: application/json' \
    -d "$body" | answer)
  colocated=$(curl -sf "http://127.0.0.1:$COLO/v1/completions" -H 'Content-Type: application/json' \
    -d "$body" | answer)
  echo "  through the proxy (prefill -> kvds -> decode): $via_proxy"
  echo "  colocated instance, same prompt:               $colocated"
  if [ "$via_proxy" = "$colocated" ]; then same=$((same + 1)); else echo "  DIFFERENT"; fi
done
echo
echo "the decode instance loaded the prefill's KV cache from kvds (its log):"
grep -o 'kvds: request .*' "$KVDS_RUN_DIR/vllm-decode.log" | head -3 | sed 's/^/  /'
loads=$(grep -c 'kvds: request .*: loaded [1-9]' "$KVDS_RUN_DIR/vllm-decode.log" || true)
echo "$same of ${#prompts[@]} answers equal the colocated run's; $loads decode requests loaded blocks"
[ "$same" = "${#prompts[@]}" ] && [ "$loads" -ge "${#prompts[@]}" ] || {
  echo "demo: PD through the proxy did not match the colocated run" >&2; exit 1; }

step "stop the servers, the proxy and the worker"
for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
for g in "${groups[@]}"; do
  for _ in $(seq 200); do kill -0 -- "-$g" 2>/dev/null || break; sleep 0.1; done
done
groups=()
"$KVDS" stop --worker "$ADDR" >/dev/null
started=0
echo "stopped"

step "time to first token (kvds bench ttft --quick)"
echo "\$ kvds bench ttft --quick     (its own workers, servers and proxy; about three minutes)"
KVDS_PYTHON="$PY" "$KVDS" bench ttft --quick
echo
echo "demo finished"
