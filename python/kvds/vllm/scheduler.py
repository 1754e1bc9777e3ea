"""The connector's scheduler side: lookups, hand-offs, save planning.

A lookup pins what it finds (Client.pin: no bytes move) on the node's own
worker and holds the pins until the load is done, so an eviction between
lookup and load cannot fail the request — vLLM's default
kv_load_failure_policy "fail" would end it with an error. Blocks that are
not in the local pool yet — a hand-off the prefill has not sealed, blocks
another worker of the cluster holds — are fetched by a probe on a thread of
its own (a pin through the local worker with a wait and the producer's
worker as hint: the worker pulls them into its pool); until it ends,
get_num_new_matched_tokens answers None ("ask again") and vLLM schedules
the other requests. A probe has its own deadline, so one missing block of
one request never holds up another. Only blocks that are present are ever
claimed.
"""
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import kvds

from . import keys as keymod
from .link import Link, Pool, WarnOnce
from .meta import KvdsConnectorMetadata, LoadSpec
from .stats import Recorder

log = logging.getLogger("vllm.kvds")

BAD_BLOCK_RETRY_S = 60.0      # a block that failed to load is not looked up again for this long
CLUSTER_REFRESH_S = 2.0       # how old the cached member list may be
HINT_MAX = 255


@dataclass
class _Req:
    request: Any
    block_ids: list[int]
    saved_upto: int = 0        # blocks [0, saved_upto) need no save
    had_saves: bool = False


@dataclass
class _Hit:
    """Blocks [start, start + n) of a request, found and pinned."""
    start: int
    n: int
    pins: list = field(default_factory=list)
    is_async: bool = False

    def release(self):
        for p in self.pins:
            try:
                p.release()
            except Exception:   # its client is gone: so are the pins
                pass
        self.pins = []


class _Probe:
    """A blocking pin (with a wait and a hint) run on a pool thread."""

    def __init__(self, keys, wait_ms, hint):
        self.keys, self.wait_ms, self.hint = keys, wait_ms, hint
        self.pinned = None
        self.error = None
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._abandoned = False

    def run(self, link):
        p = None
        c = link.get()
        if c is None:
            self.error = "worker unreachable"
        else:
            try:
                p = c.pin(self.keys, wait_ms=self.wait_ms, hint=self.hint)
            except kvds.KvdsError as e:
                self.error = str(e)
                link.failed()
        with self._lock:
            if self._abandoned and p is not None:
                p.release()
                p = None
            self.pinned = p
        self._done.set()

    def fail(self, exc):
        self.error = str(exc)
        self._done.set()

    def done(self):
        return self._done.is_set()

    def abandon(self):
        with self._lock:
            self._abandoned = True
            p, self.pinned = self.pinned, None
        if p is not None:
            p.release()


def _leading(pinned, nblocks, per_block):
    """How many leading blocks have every one of their per_block keys."""
    missing = pinned.missing
    if not missing:
        return nblocks
    return min(missing) // per_block


class SchedulerSide:
    def __init__(self, conn):
        self.conn = conn
        self.cfg = conn.cfg
        self.bs = conn.block_size
        self.rec = Recorder()
        self.link = Link(self.cfg.worker_addr, self.cfg.step_timeout_ms, conn.health,
                         self.cfg.reconnect_ms / 1000, on_open=self._on_open)
        self.probes = Pool("kvds-probe", self.cfg.max_parallel_loads, self._probe_link)
        self._prefixes: list[str] = []       # one per distinct rank prefix
        self._instance_fp = None
        self._rank0_prefix = None
        self._block_bytes = 0                # largest per-rank object
        self._self_id = None
        self._members: set[str] = set()
        self._cluster = False
        self._members_at = 0.0
        self._reqs: dict[str, _Req] = {}
        self._hits: dict[str, _Hit] = {}     # found this step, not admitted yet
        self._held: dict[str, _Hit] = {}     # admitted: pins kept until the load ends
        self._probes: dict[str, _Probe] = {}
        self._probed: set[str] = set()       # their remote probe is over: local only now
        self._pending_loads: list[LoadSpec] = []
        self._delayed: set[str] = set()
        self._sending: set[str] = set()      # delayed, not reported finished yet
        self._loading: dict[int, tuple[str, str]] = {}   # block id -> (req, hash hex)
        self._bad: dict[str, float] = {}                  # hash hex -> retry after
        self._warn_once = WarnOnce()

    # ---- connections ------------------------------------------------------

    def _probe_link(self):
        return Link(self.cfg.worker_addr, self.cfg.client_timeout_ms + self.cfg.load_timeout_ms,
                    self.conn.health, self.cfg.reconnect_ms / 1000)

    def _on_open(self, c):
        self._members_at = 0.0
        self._refresh_members(c)

    def _refresh_members(self, c):
        """The worker's member id and the live members (hints are checked
        against them)."""
        import json
        try:
            st = json.loads(c.cluster_status())
        except (kvds.KvdsError, ValueError) as e:
            self._warn_once("status", "kvds: cannot read the worker's cluster view: %s", e)
            return
        self._self_id = (st.get("self") or {}).get("id")
        members = st.get("members") or []
        self._members = {m.get("id") for m in members} | {m.get("addr") for m in members}
        self._members.discard(None)
        self._cluster = len(members) > 1
        self._members_at = time.monotonic()

    def set_handshake(self, metadata):
        """{(pp, tp): KvdsHandshake} from every worker rank."""
        prefixes = {k: m.prefix for k, m in metadata.items() if m is not None}
        if not prefixes:
            return
        self._prefixes = sorted(set(prefixes.values()))
        self._rank0_prefix = prefixes.get((0, 0), self._prefixes[0])
        self._instance_fp = keymod.instance_fingerprint(prefixes)
        self._block_bytes = max(m.block_bytes for m in metadata.values() if m is not None)
        log.info("kvds: %d key prefix(es) for this instance, e.g. %s (instance %s)",
                 len(self._prefixes), self._rank0_prefix, self._instance_fp)

    def _keys(self, hashes):
        """Every rank's key of each block, block by block."""
        return [p + h.hex() for h in hashes for p in self._prefixes]

    # ---- lookups ----------------------------------------------------------

    def _handoff(self, request, end):
        """(hint, blocks) of a hand-off this instance can use, else None."""
        params = getattr(request, "kv_transfer_params", None) or {}
        fp = params.get("kvds_fp")
        if fp is None:
            return None
        if fp != self._instance_fp:
            self._warn_once("fp", "kvds: request %s: its prefill instance stores KV under "
                            "another configuration (model, dtype, block size, TP/PP or "
                            "layout differ); computing instead of waiting for its blocks",
                            request.request_id)
            return None
        nb, h = params.get("kvds_blocks"), params.get("kvds_hash")
        if not isinstance(nb, int) or nb <= 0:
            return None
        hashes = request.block_hashes
        if h is not None and (len(hashes) < nb or hashes[nb - 1].hex() != h):
            self._warn_once("hash", "kvds: request %s: the prefill instance hashed the prompt "
                            "differently (is PYTHONHASHSEED the same on prefill and decode "
                            "instances?); looking its blocks up instead of waiting for them",
                            request.request_id)
            return None
        return self._check_hint(params.get("kvds_worker")), min(nb, end)

    def _check_hint(self, hint):
        """The producer's worker if it is a live member of our cluster; a
        request cannot make us connect anywhere else."""
        if not isinstance(hint, str) or not hint or len(hint.encode()) > HINT_MAX:
            return None
        c = self.link.get()
        if c is not None and (hint not in self._members
                              and time.monotonic() - self._members_at > CLUSTER_REFRESH_S):
            self._refresh_members(c)
        if hint in self._members:
            return hint
        self._warn_once("hint:" + hint, "kvds: hand-off names worker %r, which is not a live "
                        "member of this worker's cluster; ignoring it (the keys are looked "
                        "up in the directory)", hint)
        return None

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        rid = request.request_id
        old = self._hits.pop(rid, None)
        if old is not None:
            old.release()
        if not self.conn.is_consumer:
            return 0, False
        if not self._prefixes:
            self._warn_once("handshake", "kvds: no key prefix from the worker ranks yet "
                            "(vLLM's handshake metadata); not looking up")
            return 0, False
        bs = self.bs
        hashes = request.block_hashes
        start = num_computed_tokens // bs
        end = min(len(hashes), request.num_tokens // bs)
        if self._bad and end > start:
            now = time.monotonic()
            self._bad = {h: t for h, t in self._bad.items() if t > now}
            for i in range(start, end):
                if hashes[i].hex() in self._bad:
                    end = i
                    break
        if end <= start:
            return 0, False
        probe = self._probes.get(rid)
        if probe is not None:
            if not probe.done():
                return None, False
            del self._probes[rid]
            self._probed.add(rid)
            if probe.error:
                log.warning("kvds: request %s: fetching its blocks failed: %s", rid,
                            probe.error)
        try:
            return self._lookup(request, rid, num_computed_tokens, start, end)
        finally:
            if probe is not None:
                probe.abandon()    # what it pinned is local now, and pinned again

    def _lookup(self, request, rid, ncomp, start, end):
        c = self.link.get()
        if c is None:
            return 0, False
        per = len(self._prefixes)
        want = end - start
        keys = self._keys(request.block_hashes[start:end])
        self.rec.add(lookups=1)
        try:
            pinned = c.pin(keys, local=True)
        except kvds.KvdsError as e:
            log.warning("kvds: lookup of %s failed: %s", rid, e)
            self.link.failed()
            return 0, False
        n = _leading(pinned, want, per)
        if n < want and rid not in self._probed:
            target, hint, wait = self._remote_target(request, c, start, end, n)
            if target > n:
                pinned.release()
                self.rec.add(handoff_waits=1)
                self._probes[rid] = _Probe(keys[n * per:target * per], wait, hint)
                self.probes.submit(self._probes[rid])
                return None, False
        if n == 0:
            pinned.release()
            return 0, False
        self.rec.add(lookup_hit_blocks=n)
        tokens = n * self.bs
        is_async = self._is_async(n)
        if not is_async:
            # vLLM computes at least one token of a synchronous load
            tokens = min(tokens, request.num_tokens - 1 - ncomp)
            if tokens <= 0:
                pinned.release()
                return 0, False
        self._hits[rid] = _Hit(start, n, [pinned], is_async)
        return tokens, is_async

    def _remote_target(self, request, c, start, end, n):
        """(blocks to fetch up to, hint, wait ms): a hand-off waits for the
        producer's seals; in a cluster, blocks other workers hold are
        pulled."""
        ho = self._handoff(request, end)
        if ho is not None:
            hint, nb = ho
            return nb - start, hint, self.cfg.load_timeout_ms
        if self._cluster:
            rk = [self._rank0_prefix + h.hex() for h in request.block_hashes[start + n:end]]
            try:
                found = c.lookup_prefix(rk)
            except kvds.KvdsError as e:
                log.warning("kvds: cluster lookup failed: %s", e)
                self.link.failed()
                return 0, None, 0
            return n + found, None, 0
        return 0, None, 0

    def may_load_async(self, request):
        mode = self.cfg.load_async
        if mode is True or mode is False:
            return mode
        params = getattr(request, "kv_transfer_params", None) or {}
        nb = params.get("kvds_blocks") if params.get("kvds_fp") == self._instance_fp else None
        if not isinstance(nb, int):
            nb = len(request.block_hashes)    # an upper bound of a prefix hit
        return self._is_async(nb)

    def _is_async(self, n):
        mode = self.cfg.load_async
        if mode == "auto":
            return n * self._block_bytes > self.cfg.sync_load_max_mb << 20
        return bool(mode)

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        rid = request.request_id
        block_ids = list(blocks.get_block_ids()[0]) if blocks is not None else []
        st = self._reqs.get(rid)
        if st is None:
            st = self._reqs[rid] = _Req(request, block_ids)
        else:
            st.request = request
        hit = self._hits.pop(rid, None)
        if hit is None:
            return
        if num_external_tokens <= 0:
            hit.release()
            return
        n = min(hit.n, -(-num_external_tokens // self.bs))
        ids = block_ids[hit.start:hit.start + n]
        hashes = [h.hex() for h in request.block_hashes[hit.start:hit.start + n]]
        for h, b in zip(hashes, ids):
            self._loading[b] = (rid, h)
        self._pending_loads.append(LoadSpec(rid, hashes, ids, hit.is_async))
        old = self._held.pop(rid, None)
        if old is not None:
            old.release()
        self._held[rid] = hit
        st.block_ids = block_ids
        st.saved_upto = max(st.saved_upto, hit.start + n)

    def build_connector_meta(self, scheduler_output):
        meta = KvdsConnectorMetadata(loads=self._pending_loads, delayed=self._delayed,
                                     preempted=set(scheduler_output.preempted_req_ids or ()))
        self._pending_loads, self._delayed = [], set()
        for rid in meta.preempted:
            st = self._reqs.get(rid)
            if st is not None:
                # its blocks are gone (the worker side cancels the copies not
                # run yet): saved again once recomputed, and no save holds
                # its new blocks until then
                st.saved_upto = 0
                st.had_saves = False
        # Found but not admitted (no room this step): looked up again later.
        for hit in self._hits.values():
            hit.release()
        self._hits.clear()
        for nr in scheduler_output.scheduled_new_reqs:
            st = self._reqs.get(nr.req_id)
            if st is not None:
                st.block_ids = list(nr.block_ids[0])
                st.saved_upto = max(st.saved_upto, nr.num_computed_tokens // self.bs)
                self._plan_saves(meta, nr.req_id, st, nr.num_computed_tokens,
                                 scheduler_output.num_scheduled_tokens.get(nr.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        resumed = getattr(cached, "resumed_req_ids", None) or ()   # vLLM <= 0.32
        for i, rid in enumerate(cached.req_ids):
            st = self._reqs.get(rid)
            if st is None:
                continue
            new = cached.new_block_ids[i]
            if new is not None:
                if rid in resumed:
                    st.block_ids = list(new[0])
                else:
                    st.block_ids.extend(new[0])
            self._plan_saves(meta, rid, st, cached.num_computed_tokens[i],
                             scheduler_output.num_scheduled_tokens.get(rid, 0))
        return meta

    def _plan_saves(self, meta, rid, st, num_computed, num_scheduled):
        if not self.conn.is_producer:
            return
        req = st.request
        bs = self.bs
        n_full = min((num_computed + num_scheduled) // bs, len(req.block_hashes),
                     req.num_prompt_tokens // bs, len(st.block_ids))
        if n_full <= st.saved_upto:
            return
        meta.saves[rid] = [(req.block_hashes[i].hex(), st.block_ids[i])
                           for i in range(st.saved_upto, n_full)]
        st.saved_upto = n_full
        st.had_saves = True

    def update_connector_output(self, out):
        # A block that failed to load is not offered again for a while, or
        # vLLM would look it up and fail on it again and again.
        retry = time.monotonic() + BAD_BLOCK_RETRY_S
        for b in out.invalid_block_ids or ():
            if b in self._loading:
                rid, h = self._loading[b]
                self._bad[h] = retry
                st = self._reqs.get(rid)
                if st is not None and b in st.block_ids:
                    # recomputed from here on, so saved again
                    st.saved_upto = min(st.saved_upto, st.block_ids.index(b))
        # async loads end with finished_recving; loads inside a step are
        # reported by the worker ranks (KvdsWorkerMetadata) in its output
        wm = getattr(out, "kv_connector_worker_meta", None)
        done = set(out.finished_recving or ()) | set(getattr(wm, "loaded", None) or ())
        for rid in done:
            hit = self._held.pop(rid, None)
            if hit is not None:
                hit.release()
        if done:
            self._loading = {b: v for b, v in self._loading.items() if v[0] not in done}
        self._sending -= set(out.finished_sending or ())

    def request_finished(self, request, block_ids):
        rid = request.request_id
        st = self._reqs.pop(rid, None)
        hit = self._hits.pop(rid, None)
        if hit is not None:
            hit.release()
        hit = self._held.get(rid)
        if hit is not None and not hit.is_async:   # an async load ends with finished_recving
            hit.release()
            del self._held[rid]
        probe = self._probes.pop(rid, None)
        if probe is not None:
            probe.abandon()
        self._probed.discard(rid)
        if not self.conn.is_producer or st is None or not st.had_saves:
            return False, None
        if hit is not None and hit.is_async:
            # still loading: vLLM frees its blocks at finished_recving (no
            # save can read them: none is planned before a load is done)
            return False, None
        # The worker side reports the request in finished_sending once its
        # saves are sealed (or failed); vLLM keeps its blocks until then.
        self._delayed.add(rid)
        self._sending.add(rid)
        return True, self.handoff_params(request, st.saved_upto)

    def handoff_params(self, request, nb):
        """The kv_transfer_params of a producer's finished request whose
        first nb blocks were planned for saving: its worker (a hint for the
        consumer's worker, by member id), this instance's fingerprint, the
        block count and the last block's hash (None before the handshake)."""
        if self._instance_fp is None:
            return None
        if self._self_id is None:
            c = self.link.get()
            if c is not None and self._self_id is None:
                self._refresh_members(c)
        return {"kvds_worker": self._self_id, "kvds_addr": self.cfg.worker_addr,
                "kvds_fp": self._instance_fp, "kvds_blocks": nb,
                "kvds_hash": request.block_hashes[nb - 1].hex() if nb else None}

    def has_pending_block_frees(self):
        return bool(self._sending)

    def take_stats(self):
        return self.rec.take()

    def shutdown(self):
        for probe in self._probes.values():
            probe.abandon()
        self._probes.clear()
        for d in (self._hits, self._held):
            for hit in d.values():
                hit.release()
            d.clear()
        self.probes.close(self.cfg.client_timeout_ms / 1000 + 1)
        self.link.close()
