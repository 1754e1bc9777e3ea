"""Helpers for the real-vLLM test: a tiny local Llama and one offline run.

    python vllm_offline.py make-model DIR
    python vllm_offline.py run DIR KV_TRANSFER_CONFIG_JSON PROMPT_FILE [KV_TRANSFER_PARAMS_JSON]

`run` starts vLLM 0.32.0 (CPU, float32, in-process engine), generates 8
tokens greedily for the prompt, and prints one JSON line:
{"tokens": [...], "connector": {...worker connector stats...},
"kv_transfer_params": {...what request_finished returned...}}.
Nothing is downloaded: the tokenizer is trained here and the weights are
seeded random ones written here (make_weights; not vLLM's dummy weights,
whose ~0 logits give every prompt the same answer).
"""
import json
import os
import sys


def make_model(out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    os.makedirs(out, exist_ok=True)
    text = ["the quick brown fox jumps over the lazy dog",
            "hello world this is a tiny model for testing kv cache connectors",
            "vllm serves large language models with paged attention",
            "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9"] * 10
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    tok.save(os.path.join(out, "tokenizer.json"))

    def dump(name, obj):
        with open(os.path.join(out, name), "w") as f:
            json.dump(obj, f, indent=1)

    dump("tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 1024,
        "add_bos_token": False, "clean_up_tokenization_spaces": False})
    dump("config.json", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "vocab_size": 512, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "torch_dtype": "float32"})
    dump("generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3})
    make_weights(out)


def make_weights(model_dir, seed=0):
    """Writes seeded random weights (model.safetensors) for the tiny Llama of
    `vllm_offline.py make-model`. vLLM's dummy weights (uniform +-1e-3) give
    logits of ~0: every prompt yields the same uniform logprobs and the same
    tokens, so an answer could not tell a right KV cache from a wrong one.
    These (unit-scale embeddings and norms, 1/sqrt(fan_in) projections) make
    the next token depend on the whole prompt."""
    import numpy as np
    from safetensors.numpy import save_file
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    rng = np.random.default_rng(seed)

    def lin(out, inp):
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, h)).astype(np.float32),
         "model.norm.weight": np.ones(h, np.float32),
         "lm_head.weight": 4 * lin(vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": np.ones(h, np.float32),
                  p + "post_attention_layernorm.weight": np.ones(h, np.float32),
                  p + "self_attn.q_proj.weight": 2 * lin(q, h),
                  p + "self_attn.k_proj.weight": 2 * lin(kv, h),
                  p + "self_attn.v_proj.weight": lin(kv, h),
                  p + "self_attn.o_proj.weight": lin(h, q),
                  p + "mlp.gate_proj.weight": lin(inter, h),
                  p + "mlp.up_proj.weight": lin(inter, h),
                  p + "mlp.down_proj.weight": lin(h, inter)})
    save_file(w, os.path.join(model_dir, "model.safetensors"))


def run(model, kvt, prompt_file, params_json=None):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    with open(prompt_file) as f:
        prompt = json.load(f)
    llm = LLM(model=model, load_format="safetensors", dtype="float32", max_model_len=1024,
              enforce_eager=True, seed=0, kv_transfer_config=json.loads(kvt))
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
