"""A driver that calls kvds.vllm.KvdsConnector the way vLLM 0.32.0 does (and
0.33/0.34, where resumed requests are scheduled as new ones).

One `Engine` is one vLLM instance: a scheduler-side and a worker-side
connector per TP rank (separate objects, as in vLLM), a paged KV cache in
the layout under test, and a scheduler loop that follows
vllm/v1/core/sched/scheduler.py and kv_connector_model_runner_mixin.py:

    start:     each rank's register_kv_caches, then their handshake metadata
               to the scheduler side (set_xfer_handshake_metadata_pp_aware)
    schedule:  promote finished async loads → get_num_new_matched_tokens
               (None: skipped this step, asked again) →
               update_state_after_alloc → SchedulerOutput (new, cached and
               resumed requests, finished and preempted ids) →
               build_connector_meta; num_computed_tokens advances here, as
               in vLLM's _update_after_schedule
    execute:   per rank: handle_preemptions → bind → start_load_kv →
               per layer wait_for_layer_load / model / save_kv_layer →
               wait_for_save → get_transfer_results →
               get_block_ids_with_load_errors → clear; KVOutputAggregator
    update:    update_connector_output → invalid blocks (truncate and
               recompute, or finish with an error under
               kv_load_failure_policy="fail") → sample → request_finished
               (delayed free, kv_transfer_params) → finished_recving /
               finished_sending

`run(async_sched=True)` schedules step N+1 before step N's output is
processed, as vLLM's async scheduling does. vLLM's own classes are used
(VllmConfig, Request with vLLM's block hasher, KVCacheBlocks,
SchedulerOutput, NewRequestData, CachedRequestData, KVConnectorOutput,
KVOutputAggregator); the stand-ins are the block pool (a free list),
kv_cache_config (only num_blocks is read) and the model: `StandInModel`
makes each token's KV a deterministic function of its prefix and layer, and
tiny_model.TinyTransformer is a real decoder that attends over the paged
cache.
"""
import copy
import dataclasses
import pickle
import time
import types

import torch
from vllm.config import CacheConfig, DeviceConfig, KVTransferConfig, ParallelConfig, VllmConfig
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_manager import KVCacheBlocks
from vllm.v1.core.kv_cache_utils import KVCacheBlock, get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput
from vllm.distributed.kv_transfer.kv_connector.utils import KVOutputAggregator
from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, KVConnectorOutput
from vllm.v1.request import Request, RequestStatus

from kvds.vllm import KvdsConnector

BS = 16          # block size
NB = 64          # blocks in the paged cache
H, D = 2, 8      # kv heads, head size
LAYERS = ["model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn",
          "model.layers.2.self_attn.attn"]
LAYOUTS = ["bhnc", "bhnc-strided", "kv2-nhd", "b2-nhd", "mla"]

# The tensors here are tiny: intra-op threads would only add wake-up
# latency (10 ms per op on a busy 2-core machine).
torch.set_num_threads(1)
init_none_hash(sha256)
_HASHER = get_request_block_hasher(BS, sha256)


# vLLM 0.32 lists resumed requests with the cached ones (resumed_req_ids);
# from 0.33 on they come back as new requests (with prefill_token_ids).
RESUMED_AS_CACHED = "resumed_req_ids" in {f.name for f in dataclasses.fields(CachedRequestData)}
_NEW_REQ_FIELDS = {f.name for f in dataclasses.fields(NewRequestData)}


def _new_request_data(r, block_ids):
    kw = {}
    if "prefill_token_ids" in _NEW_REQ_FIELDS:
        kw["prefill_token_ids"] = list(r.all_token_ids)
    return NewRequestData(r.request_id, r.prompt_token_ids, [], r.sampling_params, None,
                          (list(block_ids),), r.num_computed_tokens, None, **kw)


def make_cache(layout):
    """One layer's paged cache, as vLLM's backends shape it (float32)."""
    if layout == "bhnc":          # CPU backend; FlashAttention since 2026-07
        return torch.zeros(NB, H, BS, 2 * D)
    if layout == "bhnc-strided":  # same logical shape, NHD physical order
        return torch.zeros(NB, BS, H, 2 * D).permute(0, 2, 1, 3)
    if layout == "kv2-nhd":       # FlashAttention <= 0.22
        return torch.zeros(2, NB, BS, H, D)
    if layout == "b2-nhd":        # FlashAttention 0.23 era
        return torch.zeros(NB, 2, BS, H, D)
    if layout == "mla":
        return torch.zeros(NB, BS, 4 * D)
    raise ValueError(layout)


def slot(layout, t, block, off):
    """The view of one token's KV in one layer: [H, 2D] (bhnc), [2, H, D]
    (kv2-nhd, b2-nhd) or [4D] (mla, the latent)."""
    if layout in ("bhnc", "bhnc-strided", "b2-nhd"):
        return t[block, :, off]
    if layout == "kv2-nhd":
        return t[:, block, off]
    return t[block, off]


def block_view(layout, t, block):
    return t[:, block] if layout == "kv2-nhd" else t[block]


def token_kv(tokens, pos, layer, shape):
    """The stand-in model: KV of token `pos` in `layer`, a function of its prefix."""
    g = torch.Generator().manual_seed(hash((tuple(tokens[:pos + 1]), layer)) & 0x7FFFFFFF)
    return torch.randn(shape, generator=g)


class StandInModel:
    """Each token's KV is token_kv(prefix, layer); the sampled token is a
    function of the sequence. MLA caches are identical on every TP rank,
    others differ per rank."""

    def __init__(self, layout):
        self.layout = layout

    def seed(self, li, rank):
        return li if self.layout == "mla" else (li, rank)

    def layer(self, li, rank, t, req, ids, start, n):
        toks = req.all_token_ids
        for pos in range(start, start + n):
            s = slot(self.layout, t, ids[pos // BS], pos % BS)
            s.copy_(token_kv(toks, pos, self.seed(li, rank), s.shape))

    def sample(self, req, rank):
        return hash(tuple(req.all_token_ids)) % 500 + 3


def make_request(req_id, tokens, kv_transfer_params=None, max_tokens=1):
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    if kv_transfer_params is not None:
        sp.extra_args = {"kv_transfer_params": kv_transfer_params}
    r = Request(req_id, list(tokens), sp, None, block_hasher=_HASHER)
    if kv_transfer_params is not None:
        r.kv_transfer_params = kv_transfer_params
    return r


def vllm_config(role, extra, policy="recompute", tp=1, block_size=BS, cache_dtype="auto"):
    return VllmConfig(
        kv_transfer_config=KVTransferConfig(
            kv_connector="KvdsConnector", kv_connector_module_path="kvds.vllm",
            kv_role=role, kv_connector_extra_config=dict(extra),
            kv_load_failure_policy=policy),
        cache_config=CacheConfig(block_size=block_size, cache_dtype=cache_dtype),
        parallel_config=ParallelConfig(tensor_parallel_size=tp),
        # named, not inferred: a GPU build of vLLM (the newest on PyPI) finds
        # no platform on this machine
        device_config=DeviceConfig(device="cpu"))


class Engine:
    """One vLLM instance (scheduler + `tp` workers) driven step by step.

    `chunk` limits the tokens a request computes per step (chunked prefill);
    blocks are allocated as the tokens are scheduled, as vLLM does. `policy`
    is vLLM's kv_load_failure_policy. `model` defaults to StandInModel."""

    def __init__(self, addr, layout, role="kv_both", namespace="t", tp=1, tp_rank=0,
                 chunk=1 << 30, model=None, policy="recompute", tp_size=None,
                 cache_dtype="auto", dtype=None, handshake=True, **extra):
        self.layout = layout
        self.chunk = chunk
        self.model = model or StandInModel(layout)
        self.dtype = dtype
        cfg = vllm_config(role, dict(worker_addr=addr, namespace=namespace, **extra), policy,
                          tp=tp_size or tp, cache_dtype=cache_dtype)
        self.policy = cfg.kv_transfer_config.kv_load_failure_policy
        kvcc = types.SimpleNamespace(num_blocks=NB)   # stand-in: only num_blocks is read
        self.sched = KvdsConnector(cfg, KVConnectorRole.SCHEDULER, kvcc)
        self.ranks = list(range(tp_rank, tp_rank + tp))
        self.works, self.rank_caches = [], []
        for rank in self.ranks:
            w = KvdsConnector(cfg, KVConnectorRole.WORKER, kvcc)
            w._work._tp_rank = rank
            caches = {name: make_cache(layout) for name in LAYERS}
            if dtype is not None:
                caches = {n: t.to(dtype) for n, t in caches.items()}
            w.register_kv_caches(caches)
            self.works.append(w)
            self.rank_caches.append(caches)
        if handshake:       # EngineCore: every rank's metadata to the scheduler side
            self.sched.set_xfer_handshake_metadata_pp_aware(
                {(0, rank): w.get_handshake_metadata() for rank, w in zip(self.ranks, self.works)})
        self.work, self.caches = self.works[0], self.rank_caches[0]
        self.aggregator = KVOutputAggregator(tp)
        self.free = list(range(1, NB))                # block 0 is the null block
        self.waiting: list[Request] = []
        self.running: dict[str, Request] = {}
        self.remote: dict[str, Request] = {}          # WAITING_FOR_REMOTE_KVS
        self.blocks: dict[str, list[int]] = {}
        self.held: dict[str, list[int]] = {}          # freed after finished_*
        self.finished_recv: set[str] = set()
        self.failed_recv: set[str] = set()
        self.recv_reports: dict[str, int] = {}
        self.send_reports: dict[str, int] = {}
        self.finished_ids: set[str] = set()
        self.preempted_ids: set[str] = set()
        self.done: dict[str, Request] = {}
        self.errored: set[str] = set()                # FINISHED_ERROR (policy "fail")
        self.scheduled: dict[str, list[int]] = {}     # req -> tokens computed per step
        self.matched: dict[str, tuple] = {}
        self.lookups: dict[str, int] = {}             # get_num_new_matched_tokens calls
        self.params: dict[str, dict] = {}
        self.invalid_seen: set[int] = set()
        self.steps = 0

    def add(self, req):
        self.waiting.append(req)

    def _ensure_blocks(self, rid, ntokens):
        """Allocates blocks up to `ntokens`; returns the new ids."""
        ids = self.blocks.setdefault(rid, [])
        n = -(-ntokens // BS) - len(ids)
        if n <= 0:
            return []
        new, self.free = self.free[:n], self.free[n:]
        assert len(new) == n, "driver block pool exhausted"
        ids += new
        return new

    def _kvblocks(self, ids):
        return KVCacheBlocks(([KVCacheBlock(i) for i in ids],))

    def _finish(self, r, status):
        """Scheduler.finish_requests: request_finished, then free or hold."""
        rid = r.request_id
        r.status = status
        delay, params = self.sched.request_finished(r, self.blocks.get(rid, []))
        self.params[rid] = params
        self.finished_ids.add(rid)
        self.done[rid] = r
        blocks = self.blocks.get(rid, [])
        # A request still receiving keeps its blocks until finished_recving.
        if delay or (rid in self.remote and rid not in self.finished_recv):
            self.held[rid] = blocks
        else:
            self.free += blocks
        self.remote.pop(rid, None)
        self.running.pop(rid, None)

    def abort(self, req_id):
        """Abort as Scheduler.finish_requests does, also while waiting for KV."""
        r = self.remote.get(req_id) or self.running.get(req_id)
        if r is None:
            r = next(x for x in self.waiting if x.request_id == req_id)
            self.waiting.remove(r)
        self._finish(r, RequestStatus.FINISHED_ABORTED)

    def preempt(self, req_id):
        """Scheduler._preempt_request: the running request's blocks are freed
        at once (and may be handed to others in the same step); it waits to
        be scheduled again from scratch."""
        r = self.running.pop(req_id)
        self.free += self.blocks.pop(req_id)
        r.status = RequestStatus.PREEMPTED
        r.num_computed_tokens = 0
        r.num_preemptions += 1
        self.preempted_ids.add(req_id)
        self.waiting.insert(0, r)

    # one step = schedule → execute → update

    def schedule(self):
        new_reqs, cached, resumed, num_sched, starts = [], [], [], {}, {}
        for rid, r in self.running.items():
            n = min(self.chunk, r.num_tokens - r.num_computed_tokens)
            if n <= 0:                  # its sample is still in flight
                continue
            new = self._ensure_blocks(rid, r.num_computed_tokens + n)
            cached.append((r, new))
            num_sched[rid] = n
        # promote finished async loads (_update_waiting_for_remote_kv)
        for rid in list(self.remote):
            if rid not in self.finished_recv:
                continue
            r = self.remote.pop(rid)
            self.finished_recv.discard(rid)
            self.failed_recv.discard(rid)
            if r.num_computed_tokens == r.num_tokens:
                r.num_computed_tokens = r.num_tokens - 1
            r.status = RequestStatus.WAITING
            self.waiting.insert(0, r)
        for r in list(self.waiting):
            rid = r.request_id
            if r.num_computed_tokens == 0:
                n_ext, is_async = self.sched.get_num_new_matched_tokens(r, 0)
                self.lookups[rid] = self.lookups.get(rid, 0) + 1
                if n_ext is None:       # still looking: skipped this step
                    assert not is_async
                    continue
                # async hits are whole blocks; a sync hit leaves a token
                assert n_ext > 0 or not is_async
                assert (n_ext % BS == 0) if is_async else n_ext < r.num_tokens
                self.matched.setdefault(rid, (n_ext, is_async))   # the first answer
            else:                       # promoted after an async load
                n_ext, is_async = 0, False
            self.waiting.remove(r)
            if is_async:
                self._ensure_blocks(rid, n_ext)
                self.sched.update_state_after_alloc(r, self._kvblocks(self.blocks[rid]), n_ext)
                r.num_computed_tokens = n_ext
                r.status = RequestStatus.WAITING_FOR_REMOTE_KVS
                self.remote[rid] = r
                continue
            n = min(self.chunk, r.num_tokens - r.num_computed_tokens - n_ext)
            assert n > 0
            self._ensure_blocks(rid, r.num_computed_tokens + n_ext + n)
            self.sched.update_state_after_alloc(r, self._kvblocks(self.blocks[rid]), n_ext)
            r.num_computed_tokens += n_ext
            if r.status == RequestStatus.PREEMPTED:
                resumed.append(r)
            else:
                new_reqs.append(r)
            r.status = RequestStatus.RUNNING
            self.running[rid] = r
            num_sched[rid] = n
        if RESUMED_AS_CACHED:
            cached_all = [(r, new) for r, new in cached] + [(r, self.blocks[r.request_id])
                                                            for r in resumed]
        else:   # vLLM >= 0.33: a resumed request is scheduled as a new one
            cached_all, new_reqs = list(cached), new_reqs + resumed
        extra = ({"resumed_req_ids": {r.request_id for r in resumed},
                  "all_token_ids": {r.request_id: list(r.all_token_ids) for r in resumed}}
                 if RESUMED_AS_CACHED else {})
        so = SchedulerOutput(
            scheduled_new_reqs=[_new_request_data(r, self.blocks[r.request_id])
                                for r in new_reqs],
            scheduled_cached_reqs=CachedRequestData(
                req_ids=[r.request_id for r, _ in cached_all],
                new_token_ids=[[] for _ in cached_all],
                new_block_ids=[(list(new),) if new else None for _, new in cached_all],
                num_computed_tokens=[r.num_computed_tokens for r, _ in cached_all],
                num_output_tokens=[r.num_output_tokens for r, _ in cached_all], **extra),
            num_scheduled_tokens=num_sched, total_num_scheduled_tokens=sum(num_sched.values()),
            scheduled_spec_decode_tokens={}, scheduled_encoder_inputs={},
            finished_req_ids=self.finished_ids, free_encoder_mm_hashes=[],
            preempted_req_ids=self.preempted_ids or None)
        self.finished_ids, self.preempted_ids = set(), set()
        meta = self.sched.build_connector_meta(so)
        # vLLM pickles the metadata to the workers
        so.kv_connector_metadata = pickle.loads(pickle.dumps(meta))
        scheduled = [r for r, _ in cached_all] + new_reqs
        for r in scheduled:             # _update_after_schedule
            starts[r.request_id] = r.num_computed_tokens
            r.num_computed_tokens += num_sched[r.request_id]
        self.steps += 1
        return types.SimpleNamespace(so=so, reqs=scheduled, num_sched=num_sched, starts=starts,
                                     blocks={r.request_id: list(self.blocks[r.request_id])
                                             for r in scheduled})

    def execute(self, st):
        outs = []
        for w, caches, rank in zip(self.works, self.rank_caches, self.ranks):
            o = copy.copy(EMPTY_MODEL_RUNNER_OUTPUT)
            o.kv_connector_output = self._worker_step(w, caches, rank, st)
            outs.append(o)
        return self.aggregator.aggregate(outs).kv_connector_output

    def _worker_step(self, w, caches, rank, st):
        so = st.so
        w.handle_preemptions(so.kv_connector_metadata)
        w.bind_connector_metadata(so.kv_connector_metadata)
        w.start_load_kv(None)
        for li, name in enumerate(LAYERS):
            w.wait_for_layer_load(name)
            t = caches[name]
            for r in st.reqs:
                rid = r.request_id
                self.model.layer(li, rank, t, r, st.blocks[rid], st.starts[rid], st.num_sched[rid])
            w.save_kv_layer(name, t, None)
        w.wait_for_save()
        res = w.get_transfer_results(so.finished_req_ids)
        out = KVConnectorOutput(finished_sending=res.finished_sending or None,
                                finished_recving=res.finished_recving or None,
                                invalid_block_ids=w.get_block_ids_with_load_errors(),
                                kv_connector_worker_meta=w.build_connector_worker_meta())
        w.clear_connector_metadata()
        return out

    def update(self, st, out):
        self.invalid_seen |= out.invalid_block_ids
        # _handle_invalid_blocks: truncate to the first invalid block
        failed = set()
        affected = list(self.remote.items()) + [(r.request_id, r) for r in st.reqs
                                                if r.request_id in self.running]
        for rid, r in affected:
            bad = [i for i, b in enumerate(self.blocks.get(rid, []))
                   if b in out.invalid_block_ids and i * BS < r.num_computed_tokens]
            if bad:
                r.num_computed_tokens = min(r.num_computed_tokens, bad[0] * BS)
                failed.add(rid)
                if rid in self.remote:
                    self.failed_recv.add(rid)
        for r in st.reqs:
            rid = r.request_id
            self.scheduled.setdefault(rid, []).append(st.num_sched[rid])
            if rid in failed or self.running.get(rid) is not r:
                continue                # recomputed, preempted or finished meanwhile
            if r.num_computed_tokens < r.num_tokens:
                continue                # more prompt to compute
            r.append_output_token_ids(self.model.sample(r, self.ranks[0]))
            if r.num_output_tokens >= r.sampling_params.max_tokens:
                self._finish(r, RequestStatus.FINISHED_LENGTH_CAPPED)
        if failed and self.policy == "fail":
            for rid in failed:
                r = self.remote.get(rid) or self.running.get(rid)
                if r is not None:
                    self.errored.add(rid)
                    self._finish(r, RequestStatus.FINISHED_ERROR)
        # _update_from_kv_xfer_finished
        if not out.is_empty():      # vLLM passes only a non-empty output on
            self.sched.update_connector_output(out)
        for rid in out.finished_recving or ():
            self.recv_reports[rid] = self.recv_reports.get(rid, 0) + 1
            if rid in self.held:
                self.free += self.held.pop(rid)
            elif rid in self.remote:
                self.finished_recv.add(rid)
        for rid in out.finished_sending or ():
            self.send_reports[rid] = self.send_reports.get(rid, 0) + 1
            self.free += self.held.pop(rid)

    def step(self):
        st = self.schedule()
        out = self.execute(st)
        self.update(st, out)
        return out

    def busy(self):
        return bool(self.waiting or self.remote or self.held or self.running)

    def run(self, timeout=30, until=None, async_sched=False, prev=None):
        """Steps until every request is done (or `until()`); a step with
        nothing scheduled sleeps 1 ms, like an idle engine polling. With
        `async_sched`, step N+1 is scheduled before step N's output is
        processed (vLLM's async scheduling: schedule N+1, update N,
        execute N+1). `prev`: a step executed but not yet updated."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.schedule()
            if prev is not None:
                self.update(*prev)
                prev = None
            out = self.execute(st)
            if async_sched:
                prev = (st, out)
            else:
                self.update(st, out)
            if until is not None and until():
                break
            if not self.busy():
                break
            if not out.finished_recving and not out.finished_sending:
                time.sleep(0.001)
        else:
            raise AssertionError(f"driver: requests did not finish: waiting={self.waiting} "
                                 f"remote={list(self.remote)} held={list(self.held)}")
        if prev is not None:
            self.update(*prev)
            if self.busy() and until is None:
                self.run(max(0.1, deadline - time.monotonic()), async_sched=async_sched)

    # checks

    def expected_ok(self, req):
        """Every prompt token's KV in every rank's paged cache equals the
        stand-in model's."""
        ids = self.blocks[req.request_id]
        for caches, rank in zip(self.rank_caches, self.ranks):
            for li, name in enumerate(LAYERS):
                t = caches[name]
                for pos in range(req.num_prompt_tokens):
                    s = slot(self.layout, t, ids[pos // BS], pos % BS)
                    want = token_kv(req.prompt_token_ids, pos, self.model.seed(li, rank), s.shape)
                    if not torch.equal(s, want.to(s.dtype)):
                        return False
        return True

    def block_bytes(self, block):
        return [block_view(self.layout, self.caches[n], block).contiguous().numpy().tobytes()
                for n in LAYERS]

    def handoff_params(self, req, nblocks):
        """The kv_transfer_params this (producer) instance's request_finished
        returns for req once nblocks blocks are planned for saving —
        computed ahead, to hand a consumer before the producer has run."""
        return self.sched._sched.handoff_params(req, nblocks)

    def saver_idle(self):
        return all(w._work.saver is None or not w._work.saver._jobs for w in self.works)

    def close(self):
        for w in self.works:
            w.shutdown()
        self.sched.shutdown()
