"""A tiny local Llama for benchmarks and tests of the vLLM connector: a
BPE (or word-level) tokenizer made here, a config, and seeded random
weights — nothing is downloaded.

    python -m kvds.testmodel DIR [--layers N] [--hidden H] [--max-len L] [--vocab V] [--mla]

Not vLLM's dummy weights (uniform +-1e-3): with those every prompt gets
logits of ~0 and the same tokens, so an answer could not tell a right KV
cache from a wrong one. These (unit-scale embeddings and norms,
1/sqrt(fan_in) projections) make the next token depend on the whole
prompt. Needs numpy, safetensors and tokenizers (all in vLLM's
environment).
"""
import argparse
import json
import os
import sys


SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def make_model(out, layers=2, hidden=128, heads=4, kv_heads=2, max_len=1024, seed=0,
               vocab=None):
    """Writes tokenizer, config and weights of a tiny Llama into out.

    vocab None: a byte-level BPE trained here (383 tokens, embedding rows
    512). vocab V: a word-level tokenizer of V tokens (the 4 special ones,
    then words of 3 or 4 letters: "aaa", "aab", ...) that decodes to
    space-separated words and encodes them back to the same ids — what
    `vllm bench serve --dataset-name random` needs: its prompts start at a
    random token id, so a small vocabulary makes two prompts of a set
    identical (~n^2 / 2V pairs); short words keep a prompt under vLLM's
    bound of 5 characters per token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    os.makedirs(out, exist_ok=True)
    if vocab is not None:
        _word_tokenizer(out, vocab)
    else:
        _bpe_tokenizer(out, decoders, models, pre_tokenizers, trainers, Tokenizer)
    rows = vocab or 512

    def dump(name, obj):
        with open(os.path.join(out, name), "w") as f:
            json.dump(obj, f, indent=1)

    dump("tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": max_len,
        "add_bos_token": False, "clean_up_tokenization_spaces": False})
    dump("config.json", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads, "vocab_size": rows, "max_position_embeddings": max_len,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 3, "torch_dtype": "float32"})
    dump("generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3})
    make_weights(out, seed)


def _word_tokenizer(out, vocab):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    if vocab <= len(SPECIAL):
        raise ValueError(f"vocab must be > {len(SPECIAL)}")
    width = 3 if vocab <= 26 ** 3 else 4
    if vocab > 26 ** 4:
        raise ValueError(f"vocab must be <= {26 ** 4}")

    def word(i):
        return "".join(chr(97 + i // 26 ** k % 26) for k in reversed(range(width)))

    words = {t: i for i, t in enumerate(SPECIAL)}
    words.update({word(i): i for i in range(len(SPECIAL), vocab)})
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL])
    tok.save(os.path.join(out, "tokenizer.json"))


def _bpe_tokenizer(out, decoders, models, pre_tokenizers, trainers, Tokenizer):
    text = ["the quick brown fox jumps over the lazy dog",
            "hello world this is a tiny model for testing kv cache connectors",
            "vllm serves large language models with paged attention",
            "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9"] * 10
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    tok.save(os.path.join(out, "tokenizer.json"))


def make_weights(model_dir, seed=0):
    """Seeded random weights (model.safetensors) for the config in model_dir."""
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


def make_mla_model(out, llama, layers=3, hidden=256):
    """A tiny DeepSeek-V2 (MLA: a 512 + 64 latent per token, the same on
    every TP rank) with seeded random weights, every layer dense (no MoE
    routing), and the tokenizer of the Llama in `llama`. Needs transformers
    with DeepseekV2Config."""
    import shutil
    import torch
    import transformers
    cfg = transformers.DeepseekV2Config(
        vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden,
        moe_intermediate_size=hidden // 2, num_hidden_layers=layers, num_attention_heads=8,
        num_key_value_heads=8, n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2,
        first_k_dense_replace=layers, kv_lora_rank=512, q_lora_rank=None,
        qk_rope_head_dim=64, qk_nope_head_dim=64, v_head_dim=64,
        max_position_embeddings=2048, torch_dtype="float32",
        bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(llama, f), os.path.join(out, f))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m kvds.testmodel",
                                description="Writes a tiny Llama (tokenizer, config, seeded "
                                            "random weights) into DIR; nothing is downloaded.")
    p.add_argument("dir")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=None,
                   help="a word-level tokenizer of this many tokens instead of the BPE")
    p.add_argument("--mla", action="store_true",
                   help="a tiny DeepSeek-V2 (MLA) instead, in DIR (its tokenizer: a Llama's, "
                        "made in DIR/llama)")
    a = p.parse_args(argv)
    if a.mla:
        llama = os.path.join(a.dir, "llama")
        make_model(llama, max_len=a.max_len, seed=a.seed)
        make_mla_model(a.dir, llama, layers=a.layers, hidden=a.hidden)
        return 0
    make_model(a.dir, layers=a.layers, hidden=a.hidden, max_len=a.max_len, seed=a.seed,
               vocab=a.vocab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
