"""kvds as a vLLM v1 KV connector (vLLM 0.32.0; see docs/vllm.md).

    --kv-transfer-config '{"kv_connector": "KvdsConnector",
                           "kv_connector_module_path": "kvds.vllm",
                           "kv_role": "kv_both",
                           "kv_connector_extra_config": {"namespace": "prod"}}'

One kvds object per (block, rank) holds every layer of that block: a 64-byte
header, then each layer's bytes of the block in layer order. Keys are
``<namespace>/<model>/<dtype>/<layout>/tp<r>/pp<p>/<block hash hex>`` (MLA
caches: ``tp*``, one copy shared by all TP ranks). The worker side knows the
layout (from the tensor shapes) and publishes its key prefix in kvds; the
scheduler side reads it to look up prefixes.

Only this module's import of vLLM's base class is eager; torch, kvds' worker
machinery and everything else are imported when first used.
"""
import json
import logging
import os
import queue
import struct
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.v1.metrics.cache_hit_source import CacheHitSource

import kvds

__all__ = ["KvdsConnector", "KvdsConnectorMetadata", "parse_config", "detect_layout"]

# A child of vLLM's logger, so its lines go where vLLM's go (and honour
# VLLM_LOGGING_LEVEL); a plain logger outside vLLM.
log = logging.getLogger("vllm.kvds")

DEFAULT_ADDR = "127.0.0.1:31501"
HEADER_SIZE = 64
BAD_BLOCK_RETRY_S = 60.0      # a block that failed to load is not looked up again for this long
HEADER_MAGIC = b"KVDSKV01"
_HEADER = struct.Struct("<8sQQ")          # magic, payload bytes, descriptor checksum

# key -> (type check, description)
_CONFIG_KEYS = {
    "worker_addr": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "namespace": (lambda v: isinstance(v, str) and v != "" and "/" not in v,
                  "a non-empty string without '/'"),
    "use_layerwise": (lambda v: isinstance(v, bool), "a boolean"),
    "load_async": (lambda v: isinstance(v, bool), "a boolean"),
    "load_timeout_ms": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                        "an integer >= 0"),
    "client_timeout_ms": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                          "an integer > 0"),
}


@dataclass
class KvdsConfig:
    worker_addr: str
    namespace: str = "kvds"
    use_layerwise: bool = False
    load_async: bool = True
    load_timeout_ms: int = 5000
    client_timeout_ms: int = 10000


def parse_config(extra: dict | None, env=None) -> KvdsConfig:
    """The connector's configuration: the JSON object in the file named by
    $KVDS_CONFIG (if set), overridden by ``kv_connector_extra_config``.
    Unknown keys or values of the wrong type raise ValueError."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    path = env.get("KVDS_CONFIG")
    if path:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"kvds.vllm: cannot read KVDS_CONFIG={path}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"kvds.vllm: KVDS_CONFIG={path} must hold a JSON object")
        merged.update(data)
    merged.update(extra or {})
    for k, v in merged.items():
        if k not in _CONFIG_KEYS:
            raise ValueError(f"kvds.vllm: unknown config key {k!r} "
                             f"(known: {', '.join(sorted(_CONFIG_KEYS))})")
        check, what = _CONFIG_KEYS[k]
        if not check(v):
            raise ValueError(f"kvds.vllm: config key {k!r} must be {what}, not {v!r}")
    merged.setdefault("worker_addr", env.get("DS_WORKER_ADDR") or DEFAULT_ADDR)
    return KvdsConfig(**merged)


# ---------------------------------------------------------------------------
# Layouts


@dataclass
class LayerLayout:
    name: str          # layout name (part of the key)
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


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------
# Metadata (scheduler -> worker, pickled by vLLM)


@dataclass
class LoadSpec:
    req_id: str
    hashes: list[str]          # hex of the block hashes
    block_ids: list[int]
    is_async: bool
    addr: str | None = None    # producer's worker (kv_transfer_params), else ours
    wait_ms: int = 0


@dataclass
class KvdsConnectorMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    # req_id -> [(hash hex, block id)] of blocks complete after this step
    saves: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


@dataclass
class _ReqState:
    request: Any
    block_ids: list[int]
    saved_upto: int = 0        # blocks [0, saved_upto) need no save
    had_saves: bool = False


# ---------------------------------------------------------------------------


class KvdsConnector(KVConnectorBase_V1):
    """vLLM v1 KV connector storing blocks in a kvds worker."""

    # kvds keeps blocks in host memory (its pool): vLLM counts our hits in
    # vllm:prompt_tokens_by_source{source="host"}.
    _cache_hit_source = CacheHitSource.HOST

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        ktc = self._kv_transfer_config
        self.cfg = parse_config(ktc.kv_connector_extra_config)
        self.kv_role = ktc.kv_role
        self.is_producer = self.kv_role in ("kv_producer", "kv_both")
        self.is_consumer = self.kv_role in ("kv_consumer", "kv_both")
        self.block_size = vllm_config.cache_config.block_size
        model_config = getattr(vllm_config, "model_config", None)
        self.model = str(getattr(model_config, "model", None) or "model").strip("/") or "model"
        self._client = None
        self._lock = threading.Lock()
        # scheduler side
        self._hits: dict[str, tuple[int, int, str | None]] = {}
        self._reqs: dict[str, _ReqState] = {}
        self._pending_loads: list[LoadSpec] = []
        self._prefix: str | None = None
        self._loading: dict[int, tuple[str, str]] = {}   # block id -> (req, hash hex)
        self._bad: dict[str, float] = {}                  # hash hex -> retry after
        self._warned_hash = False
        # worker side
        self.kv_caches: dict = {}
        self.layouts: dict[str, LayerLayout] = {}
        self.layout_name = None
        self.block_nbytes = 0
        self.descriptor_sum = 0
        self.key_prefix = None
        self.save_enabled = True
        self._tp_rank, self._pp_rank = self._ranks()
        self._done_recv: dict[str, set[int]] = {}
        self._load_errors: set[int] = set()
        self._pending_send: set[str] = set()
        self._layer_bufs: dict[str, Any] = {}
        self._layer_meta = None
        self._cuda = False                 # the paged cache is on a CUDA device
        self._pinned_pools: dict[int, int] = {}     # id(client) -> registered base
        self._load_stream = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = {"blocks_loaded": 0, "blocks_saved": 0, "load_errors": 0}

    # ---- shared helpers ---------------------------------------------------

    def _ranks(self):
        try:
            from vllm.distributed.parallel_state import get_pp_group, get_tp_group
            return get_tp_group().rank_in_group, get_pp_group().rank_in_group
        except Exception:  # not initialised (scheduler process, tests)
            return 0, 0

    def client(self):
        if self._client is None or not self._client.connected:
            self._close_client(self._client)
            self._client = self._open_client(self.cfg.worker_addr, self.cfg.client_timeout_ms)
        return self._client

    def _open_client(self, addr, timeout_ms):
        c = kvds.Client(addr, timeout_ms=timeout_ms)
        if self._cuda and c.is_local:
            self._pin_pool(c)
        return c

    def _pin_pool(self, c):
        """Registers the client's mapping of the pool as pinned host memory:
        copies between CUDA tensors and pool objects are then DMA at full
        speed, and truly asynchronous."""
        import torch
        base, size = c.pool_region()
        try:
            torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(base, size, 0))
            self._pinned_pools[id(c)] = base
        except Exception as e:
            log.warning("kvds: cannot register the kvds pool as pinned memory (%s); "
                        "device copies will be slower", e)

    def _close_client(self, c):
        if c is None:
            return
        base = self._pinned_pools.pop(id(c), None)
        if base is not None:
            import torch
            try:
                torch.cuda.cudart().cudaHostUnregister(base)
            except Exception as e:
                log.warning("kvds: cudaHostUnregister failed: %s", e)
        try:
            c.close()
        except Exception:
            pass

    @property
    def requires_kv_delivery(self):
        # Saves finish inside the step that computed the blocks
        # (wait_for_save), so no hand-off is ever pending across a
        # preemption; a producer's hand-off still must not be skipped.
        return self.kv_role == "kv_producer"

    def _meta_key(self, pp_rank):
        return f"{self.cfg.namespace}/{self.model}/_prefix/pp{pp_rank}"

    # ---- scheduler side ---------------------------------------------------

    def _scheduler_prefix(self):
        """The TP-rank-0 key prefix the workers published (None: none yet)."""
        if self._prefix is None:
            try:
                self._prefix = self.client().get(self._meta_key(0)).decode()
            except kvds.NotFound:
                return None
            except kvds.KvdsError as e:
                log.warning("kvds.vllm: cannot read key prefix: %s", e)
                return None
        return self._prefix

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        self._hits.pop(request.request_id, None)
        if not self.is_consumer:
            return 0, False
        bs = self.block_size
        hashes = request.block_hashes
        is_async = self.cfg.load_async
        # A synchronous load must leave at least one token to compute; an
        # asynchronous full-prompt hit is trimmed by the scheduler itself.
        limit = request.num_tokens if is_async else request.num_tokens - 1
        end = min(len(hashes), limit // bs)
        start = num_computed_tokens // bs
        if end <= start:
            return 0, False
        if self._bad:
            now = time.monotonic()
            self._bad = {h: t for h, t in self._bad.items() if t > now}
            for i in range(start, end):
                if hashes[i].hex() in self._bad:
                    end = i
                    break
            if end <= start:
                return 0, False
        params = getattr(request, "kv_transfer_params", None) or {}
        hint = params.get("kvds_worker")
        prefix = self._scheduler_prefix()
        if prefix is None:
            return 0, False
        if hint and params.get("kvds_prefix") == prefix and self._same_hashes(request, params):
            # Prefilled elsewhere: its blocks are (about to be) sealed; the
            # load waits for them with a deadline.
            end = min(end, params.get("kvds_blocks", end))
            if end <= start:
                return 0, False
            n = end - start
        else:
            hint = None
            keys = [prefix + h.hex() for h in hashes[start:end]]
            try:
                n = self.client().lookup_prefix(keys)
            except kvds.KvdsError as e:
                log.warning("kvds.vllm: lookup failed: %s", e)
                return 0, False
        if n == 0:
            return 0, False
        self._hits[request.request_id] = (start, n, hint)
        return n * bs, is_async

    def _same_hashes(self, request, params):
        """Whether the producer hashed the prompt as we do. Block hashes
        chain, so equal last hashes mean equal prefixes; they differ when
        the instances run with different PYTHONHASHSEED (or hash
        algorithms), and then waiting for the producer's blocks would only
        end at the load deadline."""
        nb, h = params.get("kvds_blocks"), params.get("kvds_hash")
        if nb is None or h is None:
            return True
        hashes = request.block_hashes
        if nb > 0 and (len(hashes) < nb or hashes[nb - 1].hex() != h):
            if not self._warned_hash:
                self._warned_hash = True
                log.warning("kvds: request %s: the prefill instance hashed the prompt "
                            "differently (is PYTHONHASHSEED the same on prefill and decode "
                            "instances?); looking its blocks up instead of waiting for them",
                            request.request_id)
            return False
        return True

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        rid = request.request_id
        block_ids = list(blocks.get_block_ids()[0]) if blocks is not None else []
        st = self._reqs.get(rid)
        if st is None:
            st = self._reqs[rid] = _ReqState(request, block_ids)
        else:
            st.request = request
        hit = self._hits.pop(rid, None)
        if num_external_tokens <= 0 or hit is None:
            return
        start, n, hint = hit
        n = min(n, num_external_tokens // self.block_size)
        ids = block_ids[start:start + n]
        hashes = [h.hex() for h in request.block_hashes[start:start + n]]
        for h, b in zip(hashes, ids):
            self._loading[b] = (rid, h)
        self._pending_loads.append(LoadSpec(
            rid, hashes, ids, self.cfg.load_async, hint,
            self.cfg.load_timeout_ms))
        st.block_ids = block_ids
        st.saved_upto = max(st.saved_upto, start + n)

    def build_connector_meta(self, scheduler_output):
        meta = KvdsConnectorMetadata(loads=self._pending_loads)
        self._pending_loads = []
        for nr in scheduler_output.scheduled_new_reqs:
            st = self._reqs.get(nr.req_id)
            if st is not None:
                st.block_ids = list(nr.block_ids[0])
                st.saved_upto = max(st.saved_upto, nr.num_computed_tokens // self.block_size)
                self._plan_saves(meta, nr.req_id, st, nr.num_computed_tokens,
                                 scheduler_output.num_scheduled_tokens.get(nr.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        for i, rid in enumerate(cached.req_ids):
            st = self._reqs.get(rid)
            if st is None:
                continue
            new = cached.new_block_ids[i]
            if new is not None:
                if rid in cached.resumed_req_ids:
                    st.block_ids = list(new[0])
                else:
                    st.block_ids.extend(new[0])
            self._plan_saves(meta, rid, st, cached.num_computed_tokens[i],
                             scheduler_output.num_scheduled_tokens.get(rid, 0))
        return meta

    def _plan_saves(self, meta, rid, st, num_computed, num_scheduled):
        if not self.is_producer:
            return
        req = st.request
        bs = self.block_size
        n_full = min((num_computed + num_scheduled) // bs, len(req.block_hashes),
                     req.num_prompt_tokens // bs, len(st.block_ids))
        if n_full <= st.saved_upto:
            return
        meta.saves[rid] = [(req.block_hashes[i].hex(), st.block_ids[i])
                           for i in range(st.saved_upto, n_full)]
        st.saved_upto = n_full
        st.had_saves = True

    def update_connector_output(self, connector_output):
        # A block that failed to load is not offered again for a while, or
        # vLLM would look it up and fail on it again and again.
        retry = time.monotonic() + BAD_BLOCK_RETRY_S
        for b in connector_output.invalid_block_ids or ():
            if b in self._loading:
                rid, h = self._loading[b]
                self._bad[h] = retry
                st = self._reqs.get(rid)
                if st is not None and b in st.block_ids:
                    # recomputed from here on, so saved again
                    st.saved_upto = min(st.saved_upto, st.block_ids.index(b))
        done = set(connector_output.finished_recving or ())
        if done:
            self._loading = {b: v for b, v in self._loading.items() if v[0] not in done}

    def request_finished(self, request, block_ids):
        st = self._reqs.pop(request.request_id, None)
        self._hits.pop(request.request_id, None)
        if not self.is_producer or st is None or not st.had_saves:
            return False, None
        nb = st.saved_upto
        params = {"kvds_worker": self.cfg.worker_addr, "kvds_namespace": self.cfg.namespace,
                  "kvds_prefix": self._scheduler_prefix(), "kvds_blocks": nb,
                  "kvds_hash": request.block_hashes[nb - 1].hex() if nb else None}
        # The worker reports the request in finished_sending once its
        # blocks are sealed; vLLM keeps them until then.
        return True, params

    # ---- worker side ------------------------------------------------------

    def register_kv_caches(self, kv_caches):
        num_blocks = getattr(self._kv_cache_config, "num_blocks", None)
        self.kv_caches = dict(kv_caches)
        self._cuda = any(t.is_cuda for t in self.kv_caches.values())
        if self._cuda:
            import torch
            self._load_stream = torch.cuda.Stream()
        names, desc = set(), []
        total = HEADER_SIZE
        for name, t in self.kv_caches.items():
            lay = detect_layout(t, self.block_size, num_blocks)
            self.layouts[name] = lay
            names.add(lay.name)
            total += lay.nbytes
            desc.append(f"{name}:{tuple(t.shape)}:{t.dtype}:{lay.name}:{lay.per_block}")
        if len(names) != 1:
            raise ValueError(f"kvds.vllm: layers have different layouts {sorted(names)}")
        self.layout_name = names.pop()
        dtypes = {_dtype_name(t.dtype) for t in self.kv_caches.values()}
        mla = self.layout_name == "mla"
        tp = "tp*" if mla else f"tp{self._tp_rank}"
        self.key_prefix = (f"{self.cfg.namespace}/{self.model}/{'+'.join(sorted(dtypes))}/"
                           f"{self.layout_name}/{tp}/pp{self._pp_rank}/")
        self.block_nbytes = total
        self._offsets, off = {}, HEADER_SIZE
        for name in self.kv_caches:
            self._offsets[name] = off
            off += self.layouts[name].nbytes
        # Every layer alike (the usual case): one reshape of an object gives
        # every layer's view of it.
        first = next(iter(self.kv_caches.values()), None)
        self._uniform = first is not None and all(
            t.dtype == first.dtype and t.shape == first.shape
            for t in self.kv_caches.values())
        self._segments_init()
        self.descriptor_sum = kvds.checksum("\n".join(desc).encode())
        # The whole 64-byte header, padding zeroed: an object holds no stale
        # pool bytes, and loads compare all of it.
        self._hdr = _HEADER.pack(HEADER_MAGIC, self.block_nbytes - HEADER_SIZE,
                                 self.descriptor_sum).ljust(HEADER_SIZE, b"\0")
        self.save_enabled = not (mla and self._tp_rank != 0)
        if self._tp_rank == 0:
            c = self.client()
            key = self._meta_key(self._pp_rank)
            try:
                c.delete(key)
            except kvds.NotFound:
                pass
            c.put(key, self.key_prefix.encode())
        if self.cfg.load_async and self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._load_loop, name="kvds-load",
                                            daemon=True)
            self._thread.start()

    def _block_view(self, name, t, block_id):
        lay = self.layouts[name]
        return t.narrow(lay.block_dim, block_id * lay.per_block, lay.per_block)


    # loads

    def _load_blocks(self, client, spec: LoadSpec) -> set[int]:
        """Copies the spec's blocks into the paged cache; returns the ids of
        the blocks that could not be loaded."""
        import torch
        t0 = time.monotonic()
        keys = [self.key_prefix + h for h in spec.hashes]
        failed, corrupt = set(), []
        try:
            pinned = client.mget_views(keys, wait_ms=spec.wait_ms)
        except kvds.KvdsError as e:
            log.warning("kvds.vllm: load of %s failed: %s", spec.req_id, e)
            return set(spec.block_ids)
        try:
            hdr = self._hdr
            segs = self._segments(spec.block_ids) if self._seg is not None else None
            for i, block_id in enumerate(spec.block_ids):
                v = pinned[i]
                if v is None:
                    failed.add(block_id)
                    continue
                # No checksum pass here: over TCP the client verified it, in
                # shared memory these are the pool's bytes, checksummed at seal.
                if len(v) != self.block_nbytes or bytes(v[:HEADER_SIZE]) != hdr:
                    log.warning("kvds.vllm: %s is corrupt or of another layout; deleting it",
                                keys[i])
                    failed.add(block_id)
                    corrupt.append(keys[i])
                    del v
                    continue
                if segs is not None:
                    kvds.scatter(v, segs[i], HEADER_SIZE)
                    del v
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")   # read-only buffer
                    src = torch.frombuffer(v, dtype=torch.uint8)
                self._copy_block(src, block_id, list(self.kv_caches), to_object=False)
                del src, v
        finally:
            if self._cuda:       # the copies read the pinned objects: finish them first
                self._sync_copies()
            if not client.connected:     # pins dropped: bytes may have changed
                failed = set(spec.block_ids)
            pinned.release()
        for key in corrupt:
            try:
                client.delete(key)
            except kvds.KvdsError:
                pass
        loaded = len(spec.block_ids) - len(failed)
        self.stats["blocks_loaded"] += loaded
        self.stats["load_errors"] += len(failed)
        log.info("kvds: request %s: loaded %d of %d blocks (%d bytes) from kvds %s in %.1f ms%s",
                 spec.req_id, loaded, len(spec.block_ids), loaded * self.block_nbytes,
                 spec.addr or self.cfg.worker_addr, (time.monotonic() - t0) * 1e3,
                 f"; {len(failed)} failed, vLLM recomputes them" if failed else "")
        return failed

    def _load_loop(self):
        clients = {}
        while True:
            spec = self._queue.get()
            if spec is None:
                break
            addr = spec.addr or self.cfg.worker_addr
            failed = set(spec.block_ids)
            try:
                c = clients.get(addr)
                if c is None or not c.connected:
                    self._close_client(c)
                    c = clients[addr] = self._open_client(
                        addr, self.cfg.client_timeout_ms + spec.wait_ms)
                if self._load_stream is not None:
                    import torch
                    with torch.cuda.stream(self._load_stream):
                        failed = self._load_blocks(c, spec)
                else:
                    failed = self._load_blocks(c, spec)
            except Exception as e:  # never lose a request: report it failed
                log.warning("kvds.vllm: load of %s failed: %s", spec.req_id, e)
            with self._lock:
                self._done_recv[spec.req_id] = failed
        for c in clients.values():
            self._close_client(c)

    def _sync_copies(self):
        import torch
        torch.cuda.current_stream().synchronize()

    def start_load_kv(self, forward_context, **kwargs):
        meta = self._get_connector_metadata()
        for spec in meta.loads:
            if spec.is_async and self._queue is not None and not self._closed:
                self._queue.put(spec)
            elif spec.is_async:
                with self._lock:
                    self._done_recv[spec.req_id] = set(spec.block_ids)
            else:
                try:
                    failed = self._load_blocks(self.client(), spec)
                except Exception as e:
                    log.warning("kvds.vllm: load of %s failed: %s", spec.req_id, e)
                    failed = set(spec.block_ids)
                with self._lock:
                    self._load_errors |= failed

    def wait_for_layer_load(self, layer_name):
        return

    def handle_preemptions(self, kv_connector_metadata=None):
        # Nothing to do: a save copies the blocks out of the paged cache and
        # seals them inside wait_for_save of the step that computed them, so
        # no save is in flight when the scheduler frees a preempted
        # request's blocks; loads only target requests not yet running.
        return

    # saves

    def _create_step_buffers(self, meta):
        """Creates this step's objects; returns {key: (WriteBuffer, block id)}."""
        c = self.client()
        out = {}
        for rid, blocks in meta.saves.items():
            self._pending_send.add(rid)
            if not self.save_enabled or not self.kv_caches:
                continue
            keys = [self.key_prefix + h for h, _ in blocks]
            try:
                present = c.exists(keys)
            except kvds.KvdsError as e:
                log.warning("kvds.vllm: save of %s skipped: %s", rid, e)
                continue
            todo = [(key, b) for key, (_, b), there in zip(keys, blocks, present)
                    if not there and key not in out]
            try:        # one round trip for all (all or nothing) ...
                made = c.mcreate([k for k, _ in todo], [self.block_nbytes] * len(todo))
            except (kvds.Exists, kvds.NoSpace, kvds.TooBig):
                made = None
            for i, (key, block_id) in enumerate(todo):
                if made is not None:
                    w = made[i]
                else:   # ... else one by one, skipping what cannot be stored
                    try:
                        w = c.create(key, self.block_nbytes)
                    except (kvds.Exists, kvds.NoSpace, kvds.TooBig) as e:
                        log.debug("kvds.vllm: not saving %s: %s", key, e)
                        continue
                w.write(0, self._hdr)
                out[key] = (w, block_id, set())
        return out

    def _segments_init(self):
        """When every layer's block is whole planes of host memory (contiguous
        CPU tensors: every layout but a strided one), a block's bytes are a
        fixed list of (address, length) segments — one per layer, two for
        kv2-nhd — at a fixed stride per block id. Saves and loads then move
        a block in one GIL-free C call (WriteBuffer.gather, which also
        checksums on the way, and kvds.scatter) instead of torch copies."""
        import numpy as np
        self._seg = None
        if self._cuda or not all(t.is_contiguous() for t in self.kv_caches.values()):
            return
        base, stride, length = [], [], []
        for name, t in self.kv_caches.items():
            lay, es = self.layouts[name], t.element_size()
            planes = t.shape[0] if lay.block_dim == 1 else 1
            for p in range(planes):
                base.append(t.data_ptr() + (p * t.stride(0) * es if planes > 1 else 0))
                stride.append(t.stride(lay.block_dim) * es * lay.per_block)
                length.append(lay.nbytes // planes)
        self._seg = (np.array(base, dtype=np.int64), np.array(stride, dtype=np.int64),
                     np.array(length, dtype=np.int64))

    def _segments(self, block_ids):
        """[len(block_ids), segments, 2] uint64 (address, length) pairs."""
        import numpy as np
        base, stride, length = self._seg
        ids = np.asarray(block_ids, dtype=np.int64)
        out = np.empty((len(ids), len(base), 2), dtype=np.uint64)
        out[:, :, 0] = base[None, :] + ids[:, None] * stride[None, :]
        out[:, :, 1] = length[None, :]
        return out

    def _copy_block(self, buf, block_id, names, to_object):
        """Copies the named layers of one block between the paged cache and
        buf (a uint8 tensor over one kvds object, header included) in one
        torch._foreach_copy_: to_object=True saves, False loads."""
        import torch
        cache = [self._block_view(n, self.kv_caches[n], block_id) for n in names]
        if self._uniform and len(names) == len(self.kv_caches):
            t = cache[0]
            objs = list(buf[HEADER_SIZE:].view(t.dtype)
                        .view((len(names),) + tuple(t.shape)).unbind(0))
        else:
            objs = [buf[self._offsets[n]:self._offsets[n] + self.layouts[n].nbytes]
                    .view(c.dtype).view(c.shape) for n, c in zip(names, cache)]
        if to_object:
            torch._foreach_copy_(objs, cache, non_blocking=self._cuda)
        else:
            torch._foreach_copy_(cache, objs, non_blocking=self._cuda)

    def _copy_layer(self, w, block_id, name):
        import torch
        off = self._offsets[name]
        t = self.kv_caches[name]
        src = self._block_view(name, t, block_id)
        buf = torch.frombuffer(w, dtype=torch.uint8)
        buf[off:off + self.layouts[name].nbytes].view(t.dtype).view(src.shape).copy_(
            src, non_blocking=self._cuda)
        del buf

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        if not self.cfg.use_layerwise or layer_name not in self.kv_caches:
            return
        meta = self._get_connector_metadata()
        if not meta.saves:
            return
        if self._layer_meta is not meta:
            self._layer_meta = meta
            try:
                self._layer_bufs = self._create_step_buffers(meta)
            except kvds.KvdsError as e:
                log.warning("kvds.vllm: save failed: %s", e)
                self._layer_bufs = {}
        for w, block_id, done in self._layer_bufs.values():
            self._copy_layer(w, block_id, layer_name)
            done.add(layer_name)

    def wait_for_save(self):
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not meta.saves:
            return
        bufs = {}
        try:
            if self.cfg.use_layerwise and self._layer_meta is meta:
                bufs = self._layer_bufs
            else:
                bufs = self._create_step_buffers(meta)
            self._layer_bufs, self._layer_meta = {}, None
            import torch
            items = list(bufs.values())
            segs = self._segments([b for _, b, _ in items]) if self._seg is not None else None
            for i, (w, block_id, done) in enumerate(items):
                if segs is not None and not done:
                    # one pass: copy and checksum (the seal does not rehash)
                    w.gather(segs[i], prefix=self._hdr)
                    continue
                names = [n for n in self.kv_caches if n not in done]
                if names:
                    self._copy_block(torch.frombuffer(w, dtype=torch.uint8), block_id, names,
                                     to_object=True)
            if bufs:
                if self._cuda:   # device → pool copies must land before the seal
                    self._sync_copies()
                self.client().mseal([w for w, _, _ in bufs.values()])
                self.stats["blocks_saved"] += len(bufs)
                log.debug("kvds: saved %d blocks of %s", len(bufs), ", ".join(meta.saves))
        except kvds.KvdsError as e:
            log.warning("kvds.vllm: save failed: %s", e)
            if self._cuda:
                self._sync_copies()
            for w, _, _ in bufs.values():    # those not sealed (aborting a sealed one fails)
                try:
                    w.abort()
                except kvds.KvdsError:
                    pass

    # completion

    def get_finished(self, finished_req_ids):
        with self._lock:
            recv = set(self._done_recv)
            for failed in self._done_recv.values():
                self._load_errors |= failed
            self._done_recv.clear()
        # Saves complete inside wait_for_save: a finished request whose
        # blocks were held for saving can be released now.
        send = set(finished_req_ids) & self._pending_send
        self._pending_send -= send
        return (send or None), (recv or None)

    def get_block_ids_with_load_errors(self):
        with self._lock:
            errs, self._load_errors = self._load_errors, set()
        return errs

    def shutdown(self):
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=self.cfg.client_timeout_ms / 1000 + 5)
            self._thread = None
        for w, _, _ in (self._layer_bufs or {}).values():
            try:
                w.abort()
            except Exception:
                pass
        self._layer_bufs = {}
        self._close_client(self._client)
        self._client = None
