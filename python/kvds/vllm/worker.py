"""The connector's worker side (one per TP x PP rank): the paged cache,
loads into it and saves out of it.

Saves never hold up a step: wait_for_save (or save_kv_layer, with
use_layerwise) queues the step's blocks and returns; a saver thread creates
the objects, copies the blocks (on CUDA: on a side stream after an event
recorded on the compute stream), seals them, and a request whose free vLLM
delayed is reported in finished_sending once all its saves have ended —
sealed or failed, exactly once, whatever happened to the worker. The blocks
cannot change under a queued save: vLLM keeps a finished request's blocks
until finished_sending, and handle_preemptions cancels the copies of a
preempted request's blocks before the step that may reuse them.

Loads read what the scheduler side found and pinned in the node's worker:
inside the step (start_load_kv) or, between steps, on load threads that
each have their own connection and deadline.
"""
import collections
import contextlib
import ctypes
import errno
import logging
import threading
import time
import warnings

import kvds

from . import keys as keymod
from . import layout as layoutmod
from .layout import HEADER_SIZE, detect_layout
from .link import Link, Pool, WarnOnce
from .meta import KvdsHandshake, KvdsWorkerMetadata
from .stats import Recorder

log = logging.getLogger("vllm.kvds")

LAYER_WAIT_S = 120.0       # a layer-wise save gives up if its step never ends
SAVE_ROUND_BYTES = 256 << 20   # blocks of one save created (unsealed) at once
COPY_CHUNK_BYTES = 8 << 20     # copied per C call: what a fence may wait for
CUDA_HOST_REGISTER_PORTABLE = 1


def _ranks():
    try:
        from vllm.distributed.parallel_state import get_pp_group, get_tp_group
        return get_tp_group().rank_in_group, get_pp_group().rank_in_group
    except Exception:  # not initialised (tests)
        return 0, 0


def _raw(addr, n):
    return memoryview((ctypes.c_char * n).from_address(addr)).cast("B")


class _SaveJob:
    """One step's blocks to save: [(req id, key, block id)]."""

    def __init__(self, items, layers, layerwise):
        self.items = items
        self.rids = {rid for rid, _, _ in items}
        self.layerwise = layerwise
        self.ready = [] if layerwise else list(layers)   # layers whose KV is final
        self.events = {}                                  # CUDA: layer -> event
        self.closed = not layerwise                      # no more layers will come
        self.cancelled = set()                           # preempted requests
        self.lock = threading.Lock()                     # held while a block is copied
        self.gate = None             # Client.msave's CopyGate, over gate_rids' items
        self.gate_rids = ()
        self.t0 = time.monotonic()


class Saver(threading.Thread):
    def __init__(self, side):
        super().__init__(name="kvds-save", daemon=True)
        self.side = side
        self.link = side.make_link()
        self._cv = threading.Condition()
        self._jobs = collections.deque()
        self._pending = collections.Counter()     # req id -> jobs not ended
        self._bytes = 0
        self._quit = False
        self._stream = None

    # main thread

    def submit(self, items, layerwise, event=None):
        """Queues a step's blocks; event (CUDA) is recorded after the step's
        forward. None if the queue is full (the blocks are not saved)."""
        nbytes = len(items) * self.side.block_nbytes
        with self._cv:
            if self._bytes + nbytes > self.side.cfg.max_pending_save_mb << 20:
                self.side.rec.add(save_skipped=len(items))
                self.side._warn_once("saveq", "kvds: the save queue is full (%d MiB "
                                     "pending); skipping saves until it drains",
                                     self._bytes >> 20)
                return None
            job = _SaveJob(items, list(self.side.kv_caches), layerwise)
            if event is not None:
                job.events[None] = event
            self._bytes += nbytes
            for rid in job.rids:
                self._pending[rid] += 1
            self._jobs.append(job)
            self._cv.notify_all()
        return job

    def layer_ready(self, job, name, event=None):
        with self._cv:
            if event is not None:
                job.events[name] = event
            job.ready.append(name)
            self._cv.notify_all()

    def close_job(self, job, event=None):
        with self._cv:
            if event is not None:
                job.events[None] = event
            job.closed = True
            self._cv.notify_all()

    def fence(self, rids):
        """No queued save reads the blocks of these requests once this
        returns (at most one block copy, or one COPY_CHUNK_BYTES chunk of
        blocks, is waited for)."""
        with self._cv:
            jobs = [j for j in self._jobs if j.rids & rids]
            cur = getattr(self, "_current", None)
            if cur is not None and cur.rids & rids:
                jobs.append(cur)
        for j in jobs:
            with j.lock:
                j.cancelled |= rids
                if j.gate is not None:      # waits for the chunk being copied
                    j.gate.cancel([i for i, r in enumerate(j.gate_rids) if r in rids])
        if jobs and self._stream is not None:
            # copies already issued on the side stream end before the next
            # forward may write the blocks
            import torch
            torch.cuda.current_stream().wait_stream(self._stream)

    def pending_requests(self):
        with self._cv:
            return set(self._pending)

    def idle(self, rid):
        with self._cv:
            return self._pending.get(rid, 0) == 0

    def stop(self, timeout):
        with self._cv:
            self._quit = True
            self._cv.notify_all()
        self.join(timeout)

    # saver thread

    def run(self):
        self.link.get()      # connect (and map the pool) before the first save
        try:
            while True:
                with self._cv:
                    while not self._jobs and not self._quit:
                        self._cv.wait()
                    if not self._jobs:
                        return
                    job = self._current = self._jobs[0]
                try:
                    self._save(job)
                except Exception as e:  # a job always ends
                    log.warning("kvds: save failed: %s", e)
                    self.side.rec.add(save_failures=len(job.items))
                finally:
                    with self._cv:
                        self._jobs.popleft()
                        self._current = None
                        self._bytes -= len(job.items) * self.side.block_nbytes
                        for rid in job.rids:
                            self._pending[rid] -= 1
                            if self._pending[rid] <= 0:
                                del self._pending[rid]
                        self._cv.notify_all()
                    self.side._changed()
        finally:
            self.link.close()

    def _next_layer(self, job, done):
        """The next layer to copy: one the forward has finished (in the
        order save_kv_layer named them), or once the step is over any layer
        not copied yet (layers vLLM never named, e.g. ones sharing another
        layer's KV, are final then too); None when all are copied. Raises
        if the step never ends."""
        deadline = time.monotonic() + LAYER_WAIT_S
        with self._cv:
            while True:
                for name in job.ready:
                    if name not in done:
                        return name
                if job.closed:
                    return next((n for n in self.side.kv_caches if n not in done), None)
                left = deadline - time.monotonic()
                if left <= 0 or self._quit:
                    raise kvds.KvdsError("the step did not end: layer-wise save given up")
                self._cv.wait(left)

    def _save(self, job):
        side = self.side
        c = self.link.get()
        if c is None:
            side.rec.add(save_failures=len(job.items))
            return
        bufs = []
        try:
            if side._cuda:
                import torch
                if self._stream is None:
                    # on the cache's device: threads start on device 0
                    self._stream = torch.cuda.Stream(device=side._device)
            uniq = self._unique(job)
            if not job.layerwise and side._seg is not None:
                self._save_gather(c, job, uniq, bufs)
            else:
                self._save_layers(c, job, uniq, bufs)
            side.rec.time("save_s", time.monotonic() - job.t0)
        except kvds.KvdsError as e:
            log.warning("kvds: save of %d blocks failed: %s", len(job.items), e)
            side.rec.add(save_failures=len(job.items))
            self.link.failed()
            if self._stream is not None:    # device copies still writing into them
                self._stream.synchronize()
            for w in bufs:       # those not sealed (aborting a sealed one fails)
                try:
                    w.abort()
                except kvds.KvdsError:
                    pass

    def _save_layers(self, c, job, items, bufs):
        """Layer by layer, as each layer's KV is final (layer-wise saves),
        with torch copies where the cache is not plain host memory."""
        side = self.side
        todo = self._create(c, items)
        bufs.extend(w for w, _, _ in todo)
        if not todo:
            return
        for w, _, _ in todo:
            w.write(0, side._hdr)
        done = set()
        while (name := self._next_layer(job, done)) is not None:
            self._copy_layer(job, todo, name)
            done.add(name)
        if side._cuda:
            self._stream.synchronize()
        self._seal(c, job, todo)

    def _unique(self, job):
        """The job's (req id, key, block id) with each key once."""
        seen, uniq = set(), []
        for rid, key, b in job.items:
            if key not in seen:
                seen.add(key)
                uniq.append((rid, key, b))
        self.side.rec.add(save_skipped=len(job.items) - len(uniq))
        return uniq

    def _create(self, c, items):
        """[(WriteBuffer, block id, req id)] of the items that could be
        created: one round trip; a key already stored (or being written) is
        skipped, and so is one the pool has no room for."""
        side = self.side
        made = c.mcreate([k for _, k, _ in items], [side.block_nbytes] * len(items),
                         partial=True)
        out = []
        for (rid, key, b), w in zip(items, made):
            if isinstance(w, kvds.KvdsError):
                log.debug("kvds: not saving %s: %s", key, w)
                side.rec.add(save_skipped=1)
            else:
                out.append((w, b, rid))
        return out

    def _save_gather(self, c, job, items, bufs):
        """Host blocks of fixed segments: the whole save in one GIL-free
        Client.msave call — rounds of at most SAVE_ROUND_BYTES created at
        once (a worker caps what one connection writes unsealed,
        --max-writing-per-conn; a round's NoSpace items go to the next),
        filled COPY_CHUNK_BYTES at a time while checksumming, each round
        sealed in one round trip. The job's CopyGate lets a fence cancel
        the copies of preempted requests (it waits for one chunk at most)."""
        side = self.side
        gate = kvds.CopyGate(len(items))
        with job.lock:
            job.gate, job.gate_rids = gate, [rid for rid, _, _ in items]
            gone = [i for i, (rid, _, _) in enumerate(items) if rid in job.cancelled]
            if gone:
                gate.cancel(gone)
        statuses, err = c.msave([key for _, key, _ in items], side.block_nbytes,
                                side._segments([b for _, _, b in items]), side._hdr,
                                round_bytes=SAVE_ROUND_BYTES, chunk_bytes=COPY_CHUNK_BYTES,
                                gate=gate)
        n = failed = nospace = 0
        for (_, key, _), st in zip(items, statuses):
            if st == 0:
                n += 1
            elif err is not None and st == err.code:
                failed += 1
            elif st == kvds.E_NOSPACE:
                nospace += 1
            elif st != -errno.ECANCELED:            # stored already, or too big
                log.debug("kvds: not saving %s: %s", key, kvds.strerror(st))
        if nospace:
            log.debug("kvds: not saving %d blocks: no space in the pool", nospace)
        side.rec.add(blocks_saved=n, bytes_saved=n * side.block_nbytes,
                     save_skipped=len(items) - n - failed)
        side.stats["blocks_saved"] += n
        log.debug("kvds: saved %d blocks of %s", n, ", ".join(sorted(job.rids)))
        if err is not None:
            log.warning("kvds: save of %d blocks failed: %s", failed, err)
            side.rec.add(save_failures=failed)
            self.link.failed()

    def _seal(self, c, job, todo):
        """Seals the blocks of requests not cancelled meanwhile, aborts the
        others."""
        side = self.side
        keep = [w for w, _, rid in todo if rid not in job.cancelled]
        for w, _, rid in todo:
            if rid in job.cancelled:
                w.abort()
        if keep:
            c.mseal(keep)
        n = len(keep)
        side.rec.add(blocks_saved=n, bytes_saved=n * side.block_nbytes,
                     save_skipped=len(todo) - n)
        side.stats["blocks_saved"] += n
        log.debug("kvds: saved %d blocks of %s", n, ", ".join(sorted(job.rids)))

    def _copy_layer(self, job, todo, name):
        side = self.side
        off, lay = side._offsets[name], side.layouts[name]
        if side._seg is not None:        # whole planes of host memory: no torch
            addrs = side._layer_segments(name)
            for w, b, rid in todo:
                with job.lock:
                    if rid in job.cancelled:
                        continue
                    o = off
                    for base, stride, length in addrs:
                        w.write(o, _raw(base + b * stride, length))
                        o += length
            return
        import torch
        t = side.kv_caches[name]
        ctx = contextlib.nullcontext()
        if side._cuda:                   # on the side stream, after the layer's forward
            ev = job.events.get(name) or job.events.get(None)
            if ev is not None:
                self._stream.wait_event(ev)
            ctx = torch.cuda.stream(self._stream)
        with ctx:
            for w, b, rid in todo:
                with job.lock:
                    if rid in job.cancelled:
                        continue
                    src = side._block_view(name, t, b)
                    buf = torch.frombuffer(w, dtype=torch.uint8)
                    buf[off:off + lay.nbytes].view(t.dtype).view(src.shape).copy_(
                        src, non_blocking=side._cuda)
                    del buf


class _LoadJob:
    """One async load; ends (finished_recving) exactly once, whatever
    happens."""

    def __init__(self, side, spec):
        self.side, self.spec = side, spec

    def run(self, link):
        try:
            failed = self.side.load(link, self.spec)
        except Exception as e:     # never lose a request: report it failed
            log.warning("kvds: load of %s failed: %s", self.spec.req_id, e)
            failed = set(self.spec.block_ids)
        self.side._finish_async(self.spec.req_id, failed)

    def fail(self, exc):           # never run (pool closed)
        log.warning("kvds: load of %s failed: %s", self.spec.req_id, exc)
        self.side._finish_async(self.spec.req_id, set(self.spec.block_ids))


class WorkerSide:
    def __init__(self, conn):
        self.conn = conn
        self.cfg = conn.cfg
        self.stats = conn.stats
        self.rec = Recorder()
        self.block_size = conn.block_size
        self.kv_caches: dict = {}
        self.layouts: dict = {}
        self.layout_name = None
        self.block_nbytes = 0
        self.key_prefix = None
        self.save_enabled = True
        self._tp_rank, self._pp_rank = _ranks()
        self._cuda = False
        self._device = None
        self._seg = None
        self._pinned_pools: dict[int, int] = {}
        self._streams = threading.local()
        self._lock = threading.Lock()
        self._changes = threading.Condition()
        self._change_gen = 0              # save jobs and async loads ended
        self._done_recv: dict[str, set[int]] = {}
        self._load_errors: set[int] = set()
        self._awaiting: set[str] = set()
        self._sync_done: set[str] = set()   # loads run in this step
        self._job = None                  # this step's layer-wise save
        self._asleep = False              # KV cache released (vLLM sleep mode)
        self._warn_once = WarnOnce()
        self._closed = False
        self.link = self.make_link(self.cfg.step_timeout_ms)   # loads inside the step
        self.loads = None
        self.saver = None

    # ---- connections ------------------------------------------------------

    def make_link(self, timeout_ms=None):
        return Link(self.cfg.worker_addr, timeout_ms or self.cfg.client_timeout_ms,
                    self.conn.health,
                    self.cfg.reconnect_ms / 1000, on_open=self._on_open,
                    on_close=self._on_close)

    def _on_open(self, c):
        if self._cuda and c.is_local:
            self._pin_pool(c)

    def _pin_pool(self, c):
        """Registers the client's mapping of the pool as pinned host memory:
        copies between CUDA tensors and pool objects are then DMA at full
        speed, and truly asynchronous."""
        import torch
        base, size = c.pool_region()
        try:
            # from the rank's device (threads start on device 0), portable:
            # pinned for every context of the process
            with torch.cuda.device(self._device) if self._device is not None \
                    else contextlib.nullcontext():
                torch.cuda.check_error(torch.cuda.cudart().cudaHostRegister(
                    base, size, CUDA_HOST_REGISTER_PORTABLE))
            self._pinned_pools[id(c)] = base
        except Exception as e:
            log.warning("kvds: cannot register the kvds pool as pinned memory (%s); "
                        "device copies will be slower", e)

    def _on_close(self, c):
        base = self._pinned_pools.pop(id(c), None)
        if base is not None:
            import torch
            torch.cuda.cudart().cudaHostUnregister(base)

    def client(self):
        """The main thread's client (None while the worker is unreachable)."""
        return self.link.get()

    # ---- registration -----------------------------------------------------

    def register_kv_caches(self, kv_caches, num_blocks, config_desc, model):
        self.kv_caches = dict(kv_caches)
        self._cuda = any(t.is_cuda for t in self.kv_caches.values())
        self._device = next(iter(self.kv_caches.values())).device if self.kv_caches else None
        names = set()
        total = HEADER_SIZE
        for name, t in self.kv_caches.items():
            lay = detect_layout(t, self.block_size, num_blocks)
            self.layouts[name] = lay
            names.add(lay.name)
            total += lay.nbytes
        if len(names) != 1:
            raise ValueError(f"kvds.vllm: layers have different layouts {sorted(names)}")
        self.layout_name = names.pop()
        tdesc = layoutmod.tensor_descriptor(self.kv_caches, self.layouts)
        # MLA latents are the same on every TP rank, whatever shape the
        # backend gives them (vLLM's CPU MLA backend: [blocks, 1, block, 576])
        mla = self.layout_name == "mla" or self.conn.use_mla
        fp = keymod.rank_fingerprint(config_desc, tdesc)
        self.key_prefix = keymod.rank_prefix(self.cfg.namespace, model, fp,
                                             None if mla else self._tp_rank, self._pp_rank)
        self.block_nbytes = total
        self._offsets, off = {}, HEADER_SIZE
        for name in self.kv_caches:
            self._offsets[name] = off
            off += self.layouts[name].nbytes
        first = next(iter(self.kv_caches.values()), None)
        self._uniform = first is not None and all(
            t.dtype == first.dtype and t.shape == first.shape
            for t in self.kv_caches.values())
        self._segments_init()
        self._hdr = layoutmod.header(total - HEADER_SIZE, kvds.checksum(
            keymod.digest({"config": config_desc, "tensors": tdesc}, 64).encode()))
        self.save_enabled = not (mla and self._tp_rank != 0)
        log.info("kvds: rank tp%d/pp%d stores %d-byte blocks under %s (%s layout, %d layers)",
                 self._tp_rank, self._pp_rank, total, self.key_prefix, self.layout_name,
                 len(self.kv_caches))
        if self.conn.is_producer and self.save_enabled:
            self.saver = Saver(self)
            self.saver.start()
        # Connect now (the pool mapped, registered with CUDA) rather than on
        # the first hit. A worker that is not up yet is a warning, not an
        # error: the instance serves without the cache until it appears.
        self.link.get()
        if self.conn.is_consumer:
            self.loads = Pool("kvds-load", self.cfg.max_parallel_loads, self.make_link)
            self.loads.prestart(1)

    def unregister(self):
        if self.saver is not None:
            self.saver.fence(self.saver.pending_requests())
        self._asleep = True

    def restore(self):
        self._segments_init()
        self._asleep = False

    def handshake(self):
        if self.key_prefix is None:
            return None
        return KvdsHandshake(self.key_prefix, self.save_enabled, self.block_nbytes)

    def _block_view(self, name, t, block_id):
        lay = self.layouts[name]
        return t.narrow(lay.block_dim, block_id * lay.per_block, lay.per_block)

    def _segments_init(self):
        """When every layer's block is whole planes of host memory (contiguous
        CPU tensors: every layout but a strided one), a block's bytes are a
        fixed list of (address, length) segments — one per layer, two for
        kv2-nhd — at a fixed stride per block id. Saves and loads then move
        many blocks per GIL-free C call (Client.mgather, which also
        checksums on the way, and Pinned.scatter) instead of torch copies."""
        import numpy as np
        self._seg = None
        self._layer_seg = {}
        if self._cuda or not all(t.is_contiguous() for t in self.kv_caches.values()):
            return
        base, stride, length = [], [], []
        for name, t in self.kv_caches.items():
            lay, es = self.layouts[name], t.element_size()
            planes = t.shape[0] if lay.block_dim == 1 else 1
            segs = []
            for p in range(planes):
                segs.append((t.data_ptr() + (p * t.stride(0) * es if planes > 1 else 0),
                             t.stride(lay.block_dim) * es * lay.per_block,
                             lay.nbytes // planes))
            self._layer_seg[name] = segs
            for b, s, n in segs:
                base.append(b)
                stride.append(s)
                length.append(n)
        self._seg = (np.array(base, dtype=np.int64), np.array(stride, dtype=np.int64),
                     np.array(length, dtype=np.int64))

    def _layer_segments(self, name):
        return self._layer_seg[name]

    def _segments(self, block_ids):
        """[len(block_ids), segments, 2] uint64 (address, length) pairs."""
        import numpy as np
        base, stride, length = self._seg
        ids = np.asarray(block_ids, dtype=np.int64)
        out = np.empty((len(ids), len(base), 2), dtype=np.uint64)
        out[:, :, 0] = base[None, :] + ids[:, None] * stride[None, :]
        out[:, :, 1] = length[None, :]
        return out

    def _copy_block(self, buf, block_id, names):
        """Copies the named layers of one block from buf (a uint8 tensor
        over one kvds object, header included) into the paged cache in one
        torch._foreach_copy_."""
        import torch
        cache = [self._block_view(n, self.kv_caches[n], block_id) for n in names]
        if self._uniform and len(names) == len(self.kv_caches):
            t = cache[0]
            objs = list(buf[HEADER_SIZE:].view(t.dtype)
                        .view((len(names),) + tuple(t.shape)).unbind(0))
        else:
            objs = [buf[self._offsets[n]:self._offsets[n] + self.layouts[n].nbytes]
                    .view(c.dtype).view(c.shape) for n, c in zip(names, cache)]
        torch._foreach_copy_(cache, objs, non_blocking=self._cuda)

    # ---- loads ------------------------------------------------------------

    def _load_stream(self):
        s = getattr(self._streams, "s", None)
        if s is None:
            import torch
            s = self._streams.s = torch.cuda.Stream(device=self._device)
        return s

    def load(self, link, spec, main=None):
        """Copies the spec's blocks into the paged cache; returns the ids of
        the blocks that could not be loaded. On CUDA the copies run on a
        stream of this thread's, after the work already queued on the
        compute stream `main` (the caller's, for a load inside the step),
        and are finished before the pins go."""
        if self._cuda:
            import torch
            s = self._load_stream()
            if main is not None:
                s.wait_stream(main)
            with torch.cuda.stream(s):
                return self._load(link, spec)
        return self._load(link, spec)

    def _load(self, link, spec):
        import torch
        t0 = time.monotonic()
        keys = [self.key_prefix + h for h in spec.hashes]
        failed, corrupt = set(), []
        c = link.get()
        if c is None:
            return self._loaded(spec, set(spec.block_ids), t0, "worker unreachable")
        try:
            # the scheduler side holds these in this worker's pool
            pinned = c.mget_views(keys, local=True)
        except kvds.KvdsError as e:
            link.failed()
            return self._loaded(spec, set(spec.block_ids), t0, str(e))
        try:
            hdr = self._hdr
            if self._seg is not None:
                # every block in one GIL-free call; those that are missing
                # or not ours (size, header) are left for the checks below
                todo = pinned.scatter(self._segments(spec.block_ids), HEADER_SIZE, hdr)
            else:
                todo = range(len(spec.block_ids))
            for i in todo:
                block_id = spec.block_ids[i]
                v = pinned[i]
                if v is None:
                    failed.add(block_id)
                    continue
                # No checksum pass here: over TCP the client verified it, in
                # shared memory these are the pool's bytes, checksummed at seal.
                if len(v) != self.block_nbytes or bytes(v[:HEADER_SIZE]) != hdr:
                    failed.add(block_id)
                    if bytes(v[:8]) != layoutmod.HEADER_MAGIC or len(v) != self.block_nbytes:
                        corrupt.append(keys[i])
                    else:
                        self._warn_once("geom", "kvds: %s holds blocks of another geometry "
                                        "under this instance's key; not using them", keys[i])
                    del v
                    continue
                if self._seg is not None:    # scatter() refused it: not loaded
                    failed.add(block_id)
                    del v
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")   # read-only buffer
                    src = torch.frombuffer(v, dtype=torch.uint8)
                self._copy_block(src, block_id, list(self.kv_caches))
                del src, v
        finally:
            if self._cuda:       # the copies read the pinned objects: finish them first
                torch.cuda.current_stream().synchronize()
            if not c.connected:  # pins dropped: bytes may have changed
                failed = set(spec.block_ids)
            pinned.release()
        for key in corrupt:      # not a kvds object of ours: the recompute saves it again
            log.warning("kvds: %s is corrupt; deleting it", key)
            try:
                c.delete(key)
            except kvds.KvdsError:
                pass
        return self._loaded(spec, failed, t0, None)

    def _loaded(self, spec, failed, t0, err):
        dt = time.monotonic() - t0
        loaded = len(spec.block_ids) - len(failed)
        self.rec.add(blocks_loaded=loaded, bytes_loaded=loaded * self.block_nbytes,
                     load_failures=len(failed))
        self.rec.time("load_s", dt)
        with self._lock:
            self.stats["blocks_loaded"] += loaded
            self.stats["load_errors"] += len(failed)
        if err:
            log.warning("kvds: load of %s failed: %s", spec.req_id, err)
        log.info("kvds: request %s: loaded %d of %d blocks (%d bytes) from kvds %s in %.1f ms%s",
                 spec.req_id, loaded, len(spec.block_ids), loaded * self.block_nbytes,
                 self.cfg.worker_addr, dt * 1e3,
                 f"; {len(failed)} failed, vLLM recomputes them" if failed else "")
        return failed

    def _finish_async(self, rid, failed):
        with self._lock:
            self._done_recv[rid] = failed
        self._changed()

    def _changed(self):
        with self._changes:
            self._change_gen += 1
            self._changes.notify_all()

    def changes(self):
        """A counter of the save jobs and async loads that have ended, for
        wait_changed."""
        return self._change_gen

    def wait_changed(self, gen, timeout):
        """Waits until a save job or an async load has ended since changes()
        returned gen, or for timeout seconds; True if one has. For a driver
        that would otherwise poll get_finished (kvds bench connector)."""
        with self._changes:
            return self._changes.wait_for(lambda: self._change_gen != gen, timeout)

    # ---- the step ---------------------------------------------------------

    def handle_preemptions(self, meta):
        if self.saver is not None and meta is not None and getattr(meta, "preempted", None):
            self.saver.fence(set(meta.preempted))

    def bind(self, meta):
        self._awaiting |= meta.delayed

    def start_load_kv(self, meta):
        for spec in meta.loads:
            if self._asleep:
                log.warning("kvds: load of %s while the KV cache is released (sleep "
                            "mode); not loading", spec.req_id)
                if spec.is_async:
                    self._finish_async(spec.req_id, set(spec.block_ids))
                else:
                    with self._lock:
                        self._load_errors |= set(spec.block_ids)
                continue
            if spec.is_async:
                if self._closed or self.loads is None:
                    self._finish_async(spec.req_id, set(spec.block_ids))
                else:
                    self.loads.submit(_LoadJob(self, spec))
                continue
            try:
                main = None
                if self._cuda:
                    import torch
                    main = torch.cuda.current_stream(self._device)
                failed = self.load(self.link, spec, main)
            except Exception as e:
                log.warning("kvds: load of %s failed: %s", spec.req_id, e)
                failed = set(spec.block_ids)
            with self._lock:
                self._load_errors |= failed
            self._sync_done.add(spec.req_id)

    def build_worker_meta(self):
        """The requests whose loads ran inside this step: the scheduler side
        then drops the pins that held their blocks."""
        if not self._sync_done:
            return None
        done, self._sync_done = self._sync_done, set()
        return KvdsWorkerMetadata(loaded=done)

    def _step_items(self, meta):
        if not self.save_enabled or not self.kv_caches or self.saver is None or self._asleep:
            return []
        return [(rid, self.key_prefix + h, b) for rid, blocks in meta.saves.items()
                for h, b in blocks]

    def _event(self):
        if not self._cuda:
            return None
        import torch
        ev = torch.cuda.Event()
        ev.record()
        return ev

    def save_kv_layer(self, meta, layer_name):
        if not self.cfg.use_layerwise or layer_name not in self.kv_caches or not meta.saves:
            return
        if self._job is None or self._job[0] is not meta:
            items = self._step_items(meta)
            job = self.saver.submit(items, layerwise=True) if items else None
            self._job = (meta, job)
        job = self._job[1]
        if job is not None and layer_name not in job.ready:
            self.saver.layer_ready(job, layer_name, self._event())

    def wait_for_save(self, meta):
        if not meta.saves:
            return
        if self.cfg.use_layerwise and self._job is not None and self._job[0] is meta:
            job = self._job[1]
            self._job = None
            if job is not None:
                self.saver.close_job(job, self._event())
            return
        items = self._step_items(meta)
        if items:
            self.saver.submit(items, layerwise=False, event=self._event())

    def get_finished(self, finished_req_ids):
        with self._lock:
            recv = set(self._done_recv)
            for failed in self._done_recv.values():
                self._load_errors |= failed
            self._done_recv.clear()
        send = {rid for rid in self._awaiting
                if self.saver is None or self.saver.idle(rid)}
        self._awaiting -= send
        return (send or None), (recv or None)

    def get_block_ids_with_load_errors(self):
        with self._lock:
            errs, self._load_errors = self._load_errors, set()
        return errs

    def take_stats(self):
        return self.rec.take()

    def shutdown(self):
        self._closed = True
        t = self.cfg.client_timeout_ms / 1000 + 5
        if self.saver is not None:
            self.saver.stop(t)
        if self.loads is not None:
            self.loads.close(t)
        with self._lock:
            self.link.close()
