"""Paged KV-cache layouts, as the tensors vLLM hands to register_kv_caches
show them, and the object format (header + each layer's bytes of a block).
Needs torch only for the tensors it is given."""
import struct
from dataclasses import dataclass

HEADER_SIZE = 64
HEADER_MAGIC = b"KVDSKV02"
_HEADER = struct.Struct("<8sQQ")          # magic, payload bytes, descriptor checksum


@dataclass
class LayerLayout:
    name: str          # layout name
    block_dim: int     # dimension indexed by the kernel block
    per_block: int     # kernel blocks per manager block
    nbytes: int        # bytes of one manager block of this layer


def detect_layout(t, block_size: int, num_blocks: int | None = None) -> LayerLayout:
    """The layout of one layer's paged KV tensor, from its shape alone.

    - ``bhnc``: ``[blocks, kv_heads, block_size, 2*head]`` (vLLM's CPU
      backend; FlashAttention/FlashInfer/Triton since the 2026-07 refactor),
    - ``kv2-nhd``: ``[2, blocks, block_size, kv_heads, head]`` (<= 0.22),
    - ``b2-nhd``: ``[blocks, 2, block_size, kv_heads, head]`` (0.23 era),
    - ``mla``: ``[blocks, block_size, head]`` (one copy for all TP ranks).
    A backend whose kernel block is smaller than the manager block has
    ``per_block`` kernel blocks per manager block (needs ``num_blocks``)."""
    shape = tuple(t.shape)
    if len(shape) == 3:
        name, bd = "mla", 0
    elif len(shape) == 4:
        name, bd = "bhnc", 0
    elif len(shape) == 5 and shape[0] == 2:
        name, bd = "kv2-nhd", 1
    elif len(shape) == 5 and shape[1] == 2:
        name, bd = "b2-nhd", 0
    else:
        raise ValueError(f"kvds.vllm: unsupported KV cache shape {shape}")
    kernel_blocks = shape[bd]
    per_block = 1
    if num_blocks:
        if kernel_blocks % num_blocks:
            raise ValueError(f"kvds.vllm: KV cache shape {shape}: {kernel_blocks} blocks "
                             f"is not a multiple of num_blocks={num_blocks}")
        per_block = kernel_blocks // num_blocks
    nbytes = t.element_size() * t.numel() // kernel_blocks * per_block
    return LayerLayout(name, bd, per_block, nbytes)


def tensor_descriptor(kv_caches: dict, layouts: dict) -> list:
    """Per layer, in object order: what the fingerprint says of the bytes."""
    return [[name, list(t.shape), str(t.dtype).replace("torch.", ""), layouts[name].name,
             layouts[name].per_block] for name, t in kv_caches.items()]


def header(payload_bytes: int, descriptor_sum: int) -> bytes:
    """The whole 64-byte header, padding zeroed (an object carries no stale
    pool bytes, and a load compares all of it)."""
    return _HEADER.pack(HEADER_MAGIC, payload_bytes, descriptor_sum).ljust(HEADER_SIZE, b"\0")
