"""One instance of the reference-model tests: run() in the test's process,
or in a process of its own (so its PYTHONHASHSEED, and with it vLLM's block
hashes, is its own):

    python reference_run.py ROLE ADDR NAMESPACE PROMPT_JSON MAX_TOKENS [PARAMS_JSON]

For every layout in vllm_driver.LAYOUTS it builds an Engine with the
tiny_model.TinyTransformer (namespace NAMESPACE-<layout>) and runs:
  produce:  the prompt with max_tokens=1 on a kv_producer;
  consume:  the prompt on a kv_consumer with the producer's
            kv_transfer_params (PARAMS_JSON: {layout: params}) — the PD
            path —, then the same prompt again without params — the
            prefix-cache path (a lookup) —, both loaded inside the step
            (load_async "auto", small hits), then once more on a consumer
            that loads between steps (load_async true);
  colocate: the prompt on a kv_both instance in a namespace of its own.
It prints one line "RESULT <json>": per layout and request the sampled
tokens, the logits' bytes (hex), the first lookup's result, the tokens
computed per step and the connector's counters.
"""
import json
import sys

from tiny_model import TinyTransformer
from vllm_driver import LAYOUTS, Engine, make_request


def report(e, rid):
    r = e.done[rid]
    return {"tokens": list(r.output_token_ids),
            "logits": [x.numpy().tobytes().hex() for x in e.model.logits[rid]],
            "matched": list(e.matched[rid]), "scheduled": e.scheduled[rid],
            "errored": rid in e.errored, "params": e.params.get(rid)}


def run(role, addr, namespace, prompt, max_tokens, params=None):
    """Runs ROLE for every layout; returns {layout: {request: report}}."""
    result = {}
    for layout in LAYOUTS:
        kv_role = {"produce": "kv_producer", "consume": "kv_consumer",
                   "colocate": "kv_both"}[role]
        e = Engine(addr, layout, role=kv_role, namespace=f"{namespace}-{layout}",
                   model=TinyTransformer(layout), load_timeout_ms=20000)
        out = {}
        if role == "consume":
            e.add(make_request("pd", prompt, kv_transfer_params=params[layout],
                               max_tokens=max_tokens))
            e.run(timeout=60)
            e.add(make_request("reuse", prompt, max_tokens=max_tokens))
            e.run(timeout=60)
            out = {"pd": report(e, "pd"), "reuse": report(e, "reuse")}
            a = Engine(addr, layout, role=kv_role, namespace=f"{namespace}-{layout}",
                       model=TinyTransformer(layout), load_async=True)
            a.add(make_request("async", prompt, max_tokens=max_tokens))
            a.run(timeout=60)
            out["async"] = report(a, "async")
            out["async_stats"] = dict(a.work.stats)
            a.close()
        else:
            e.add(make_request("r", prompt, max_tokens=1 if role == "produce" else max_tokens))
            e.run(timeout=60)
            out = {"r": report(e, "r")}
        out["stats"] = dict(e.work.stats)
        e.close()
        result[layout] = out
    return result


if __name__ == "__main__":
    role, addr, namespace, prompt, max_tokens = sys.argv[1:6]
    params = json.loads(sys.argv[6]) if len(sys.argv) > 6 else None
    res = run(role, addr, namespace, json.loads(prompt), int(max_tokens), params)
    print("RESULT " + json.dumps(res), flush=True)
