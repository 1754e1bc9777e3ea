"""Helpers for the real-vLLM test: a tiny local Llama and one offline run.

    python vllm_offline.py make-model DIR
    python vllm_offline.py run DIR KV_TRANSFER_CONFIG_JSON PROMPT_FILE [KV_TRANSFER_PARAMS_JSON]

`run` starts vLLM 0.32.0 (CPU, float32, in-process engine), generates 8
tokens greedily for the prompt, and prints one JSON line:
{"tokens": [...], "connector": {...worker connector stats...},
"kv_transfer_params": {...what request_finished returned...}}.
Nothing is downloaded: the tokenizer is trained here, the weights are
vLLM's seeded dummy weights (load_format="dummy").
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


def run(model, kvt, prompt_file, params_json=None):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    with open(prompt_file) as f:
        prompt = json.load(f)
    llm = LLM(model=model, load_format="dummy", dtype="float32", max_model_len=1024,
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
