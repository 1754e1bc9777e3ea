"""Helpers for the real-vLLM test: a tiny local Llama and one offline run.

    python vllm_offline.py make-model DIR
    python vllm_offline.py run DIR KV_TRANSFER_CONFIG_JSON PROMPT_FILE [KV_TRANSFER_PARAMS_JSON]

`run` starts vLLM 0.32.0 (CPU, float32, in-process engine), generates 8
tokens greedily for the prompt, and prints one JSON line:
{"tokens": [...], "connector": {...worker connector stats...},
"kv_transfer_params": {...what request_finished returned...}}.
Nothing is downloaded: the model is kvds.testmodel's (a tokenizer trained
here, seeded random weights; not vLLM's dummy weights, whose ~0 logits give
every prompt the same answer).
"""
import json
import os
import sys

from kvds.testmodel import make_model


def run(model, kvt, prompt_file, params_json=None):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    with open(prompt_file) as f:
        prompt = json.load(f)
    with open(os.path.join(model, "config.json")) as f:
        mla = "kv_lora_rank" in json.load(f)
    # On a CPU with AMX, vLLM picks its AMX_MLA backend for MLA models,
    # which takes bfloat16/float16 weights only: this float32 model runs on
    # the reference CPU_MLA backend (what vLLM picks without AMX) everywhere.
    extra_args = {"attention_backend": "CPU_MLA"} if mla else {}
    llm = LLM(model=model, load_format="safetensors", dtype="float32", max_model_len=1024,
              enforce_eager=True, seed=0, kv_transfer_config=json.loads(kvt), **extra_args)
    extra = {"kv_transfer_params": json.loads(params_json)} if params_json else None
    sp = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, extra_args=extra)
    out = llm.generate([TokensPrompt(prompt_token_ids=prompt)], sp)
    from vllm.distributed.kv_transfer import get_kv_transfer_group
    stats = dict(get_kv_transfer_group().stats)
    print("RESULT " + json.dumps({"tokens": list(out[0].outputs[0].token_ids),
                                  "connector": stats,
                                  "kv_transfer_params": out[0].kv_transfer_params}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "make-model":
        make_model(sys.argv[2])
    elif sys.argv[1] == "run":
        run(*sys.argv[2:6])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
