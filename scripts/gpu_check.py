#!/usr/bin/env python3
"""The connector's CUDA path with real vLLM on a GPU (scripts/gpu-check.sh runs it).

    python scripts/gpu_check.py --worker ADDR --out DIR [--backends FLASH_ATTN,FLASHINFER]
                                [--no-mla] [--dtype bfloat16]

For each attention backend, three vLLM instances run one after the other,
each in a process of its own (offline LLM, enforce_eager), on a tiny model
with seeded random weights (kvds.testmodel; nothing is downloaded):

    colocated  no connector at all: the reference greedy tokens
    producer   kv_producer through kvds: stores the prompt's full blocks,
               returns kv_transfer_params
    consumer   kv_consumer through kvds, given those params: must load every
               full block and generate exactly the colocated tokens

and the same for an MLA model (a tiny DeepSeek-V2 made with transformers'
random init, if this transformers and vLLM have it). One JSON file per
check lands in --out, and a summary line per check is printed; the exit
status is 0 only if every check that ran passed. A backend or model that
cannot start here is reported as skipped, with the reason.
"""
import argparse
import json
import os
import subprocess
import sys
import time

PROMPT_BLOCKS = 3          # full blocks of the prompt (block size 16 on GPU)
BLOCK = int(os.environ.get("GPU_CHECK_BLOCK", "16"))   # vLLM CPU (to try it): 128
GEN = 16


def make_llama(path):
    from kvds.testmodel import make_model
    make_model(path, layers=4, hidden=256, heads=8, kv_heads=4, max_len=2048)


def make_mla(path, llama):
    from kvds.testmodel import make_mla_model
    make_mla_model(path, llama)


def run_one(args):
    """One vLLM instance (a child process); prints RESULT <json>."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    kv = json.loads(args.kv) if args.kv else None
    kw = dict(model=args.model, dtype=args.dtype, max_model_len=2048, enforce_eager=True,
              seed=0, block_size=BLOCK)
    if os.environ.get("GPU_CHECK_ON_CPU") != "1":
        kw["gpu_memory_utilization"] = 0.3
    if kv:
        kw["kv_transfer_config"] = kv
    if args.backend:
        kw["attention_config"] = {"backend": args.backend}
    t0 = time.monotonic()
    try:
        llm = LLM(**kw)
    except TypeError:           # a vLLM without attention_config: the env var names it
        kw.pop("attention_config", None)
        llm = LLM(**kw)
    start_s = time.monotonic() - t0
    params = json.loads(args.params) if args.params else None
    extra = {"kv_transfer_params": params} if params else None
    sp = SamplingParams(temperature=0.0, max_tokens=GEN, ignore_eos=True, extra_args=extra)
    prompt = json.loads(args.prompt)
    t0 = time.monotonic()
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], sp)
    gen_s = time.monotonic() - t0
    stats = None
    if kv:
        from vllm.distributed.kv_transfer import get_kv_transfer_group
        try:
            stats = dict(get_kv_transfer_group().stats)
        except Exception as e:   # the worker side lives in another process
            stats = {"error": str(e)}
    print("RESULT " + json.dumps({"tokens": list(out[0].outputs[0].token_ids),
                                  "kv_transfer_params": out[0].kv_transfer_params,
                                  "connector": stats, "start_s": start_s, "gen_s": gen_s}),
          flush=True)


def child(model, dtype, backend, prompt, kv=None, params=None, log=None, timeout=600):
    cmd = [sys.executable, __file__, "--child", "--model", model, "--dtype", dtype,
           "--prompt", json.dumps(prompt)]
    if backend:
        cmd += ["--backend", backend]
    if kv:
        cmd += ["--kv", json.dumps(kv)]
    if params:
        cmd += ["--params", json.dumps(params)]
    env = dict(os.environ, PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_NO_USAGE_STATS="1")
    if backend:
        env["VLLM_ATTENTION_BACKEND"] = backend
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if log:
        with open(log, "w") as f:
            f.write(p.stdout + "\n----- stderr -----\n" + p.stderr)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        tail = (p.stderr or p.stdout)[-1500:]
        raise RuntimeError(f"vLLM exited with {p.returncode}: {tail}")
    return json.loads(lines[-1][len("RESULT "):])


def check(name, model, dtype, backend, worker, out):
    ns = f"gpu-{name}-{os.getpid()}"
    prompt = [(i * 37) % 500 + 4 for i in range(PROMPT_BLOCKS * BLOCK + 5)]
    kvc = lambda role: {"kv_connector": "KvdsConnector",   # noqa: E731
                        "kv_connector_module_path": "kvds.vllm", "kv_role": role,
                        "kv_load_failure_policy": "fail",
                        "kv_connector_extra_config": {"worker_addr": worker, "namespace": ns}}
    res = {"check": name, "backend": backend, "dtype": dtype}
    logs = os.path.join(out, name)
    try:
        colo = child(model, dtype, backend, prompt, log=logs + "-colocated.log")
        prod = child(model, dtype, backend, prompt, kvc("kv_producer"),
                     log=logs + "-producer.log")
        cons = child(model, dtype, backend, prompt, kvc("kv_consumer"),
                     prod["kv_transfer_params"], log=logs + "-consumer.log")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        res.update(status="skipped", reason=str(e)[-1500:])
        return res
    import re
    with open(logs + "-consumer.log") as f:
        loaded = re.findall(r"loaded (\d+) of (\d+) blocks \((\d+) bytes\) from kvds \S+ in "
                            r"([\d.]+) ms", f.read())
    # the block size is the backend's (MLA backends may pick their own)
    stored = (prod.get("kv_transfer_params") or {}).get("kvds_blocks") or 0
    res.update(colocated=colo, producer=prod, consumer=cons, loads=loaded,
               equal=cons["tokens"] == colo["tokens"], blocks_stored=stored,
               loaded_all=stored > 0 and bool(loaded) and int(loaded[0][0]) == stored)
    res["status"] = "passed" if res["equal"] and res["loaded_all"] else "FAILED"
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--backend")
    p.add_argument("--prompt")
    p.add_argument("--kv")
    p.add_argument("--params")
    p.add_argument("--worker", help="the kvds worker (host:port)")
    p.add_argument("--out", default="gpu-check-out")
    p.add_argument("--backends", default="FLASH_ATTN,FLASHINFER",
                   help="attention backends to check (\"default\": vLLM's choice)")
    p.add_argument("--no-mla", dest="mla", action="store_false")
    a = p.parse_args(argv)
    if a.child:
        run_one(a)
        return 0
    if not a.worker:
        p.error("--worker is required")
    os.makedirs(a.out, exist_ok=True)
    llama = os.path.join(a.out, "llama")
    make_llama(llama)
    results = []
    for backend in [b for b in a.backends.split(",") if b]:
        results.append(check(f"llama-{backend.lower()}", llama, a.dtype,
                             None if backend == "default" else backend, a.worker, a.out))
    if a.mla:
        mla = os.path.join(a.out, "mla")
        try:
            make_mla(mla, llama)
            results.append(check("mla", mla, a.dtype, None, a.worker, a.out))
        except Exception as e:
            results.append({"check": "mla", "status": "skipped",
                            "reason": f"cannot build a tiny DeepSeek-V2 here: {e}"})
    for r in results:
        with open(os.path.join(a.out, f"{r['check']}.json"), "w") as f:
            json.dump(r, f, indent=1)
        extra = ""
        if r["status"] != "skipped":
            extra = (f" tokens equal: {r['equal']}, loads: {r['loads']}, consumer generate "
                     f"{r['consumer']['gen_s'] * 1e3:.0f} ms vs colocated "
                     f"{r['colocated']['gen_s'] * 1e3:.0f} ms")
        else:
            extra = " " + r["reason"].splitlines()[-1][:300] if r["reason"] else ""
        print(f"gpu-check {r['check']}: {r['status']}{extra}", flush=True)
    ran = [r for r in results if r["status"] != "skipped"]
    return 0 if ran and all(r["status"] == "passed" for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
