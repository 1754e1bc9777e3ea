"""What a block object's key says about its bytes.

A key is ``<namespace>/<model>/<fingerprint>/tp<r>/pp<p>/<block hash hex>``
(MLA: ``tp*``, one copy for every TP rank). The fingerprint (16 hex digits
of a SHA-256) covers everything that changes the bytes of a block: the
model and its revision, a digest of its config, the model and KV-cache
dtypes (fp8 format included) and the KV scales, the block size, the TP, PP
and context-parallel sizes, the KV-cache groups' geometry (heads per rank,
head size), and — on the worker side, which sees the tensors — each layer's
name, shape, dtype and layout. Two instances whose configurations differ in
any of these never read, overwrite or delete each other's objects: the
keys differ. The scheduler side never guesses: each worker rank sends its
prefix with vLLM's handshake metadata (meta.KvdsHandshake).

Pure Python: no vLLM, no torch.
"""
import hashlib
import json

FORMAT = 2          # object format (header + layers); part of every fingerprint
_VOLATILE = ("transformers_version", "_name_or_path", "_commit_hash",
             "_attn_implementation", "_attn_implementation_internal",
             "_attn_implementation_autoset")


def digest(obj, n=16) -> str:
    """Hex digest of a JSON-able object (canonical form)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _get(obj, *names, default=None):
    for name in names:
        if obj is None:
            return default
        obj = getattr(obj, name, None)
    return default if obj is None else obj


def _hf_digest(model_config):
    hf = _get(model_config, "hf_config")
    if hf is None:
        return None
    try:
        d = hf.to_dict()
    except Exception:  # an unusual config object: its repr is what we have
        return digest(repr(hf))
    return digest({k: v for k, v in d.items() if k not in _VOLATILE})


def _group_desc(kv_cache_config):
    out = []
    for g in _get(kv_cache_config, "kv_cache_groups", default=()) or ():
        spec = getattr(g, "kv_cache_spec", None)
        out.append({"spec": type(spec).__name__,
                    **{k: str(getattr(spec, k)) for k in
                       ("block_size", "num_kv_heads", "head_size", "head_size_v", "dtype",
                        "sliding_window", "attention_chunk_size", "cache_dtype_str",
                        "page_size_padded")
                       if getattr(spec, k, None) is not None}})
    return out


def model_name(vllm_config, model_id=None) -> str:
    """The model as keys name it: model_id if given, else model_config.model."""
    if model_id:
        return model_id
    name = str(_get(vllm_config, "model_config", "model", default="model")).strip("/")
    return name[-120:] or "model"


def config_descriptor(vllm_config, kv_cache_config, model_id=None) -> dict:
    """What both sides of an instance know about the bytes of its blocks."""
    mc = _get(vllm_config, "model_config")
    cc = _get(vllm_config, "cache_config")
    pc = _get(vllm_config, "parallel_config")
    return {
        "format": FORMAT,
        "model": model_name(vllm_config, model_id),
        "revision": _get(mc, "revision"),
        "hf_config": _hf_digest(mc),
        "dtype": str(_get(mc, "dtype")),
        "quantization": _get(mc, "quantization"),
        "cache_dtype": _get(cc, "cache_dtype", default="auto"),
        "calculate_kv_scales": bool(_get(cc, "calculate_kv_scales", default=False)),
        "block_size": _get(cc, "block_size"),
        "tp": _get(pc, "tensor_parallel_size", default=1),
        "pp": _get(pc, "pipeline_parallel_size", default=1),
        "dcp": _get(pc, "decode_context_parallel_size", default=1),
        "pcp": _get(pc, "prefill_context_parallel_size", default=1),
        "groups": _group_desc(kv_cache_config),
    }


def rank_fingerprint(config_desc: dict, tensor_desc: list) -> str:
    """The fingerprint of one rank's objects."""
    return digest({"config": config_desc, "tensors": tensor_desc})


def rank_prefix(namespace: str, model: str, fingerprint: str, tp_rank, pp_rank) -> str:
    """tp_rank None: one copy shared by every TP rank (MLA)."""
    tp = "tp*" if tp_rank is None else f"tp{tp_rank}"
    return f"{namespace}/{model}/{fingerprint}/{tp}/pp{pp_rank}/"


def instance_fingerprint(prefixes: dict) -> str:
    """Of a whole instance, from its ranks' prefixes {(pp, tp): prefix}: two
    instances with the same one store the same objects under the same keys
    (the consumer of a hand-off checks it before waiting for blocks)."""
    return digest(sorted(set(prefixes.values())))

