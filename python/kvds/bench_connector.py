"""`kvds bench connector`: the vLLM connector's save and load time per request.

    python -m kvds.bench_connector [--addr ADDR] [--tokens 1024,4096,16384] [--json]

Drives a scheduler-side and a worker-side ``kvds.vllm.KvdsConnector`` with
vLLM's own classes (VllmConfig, Request with vLLM's block hasher,
KVCacheBlocks, SchedulerOutput, NewRequestData), as vLLM 0.32.0's scheduler
and model runner call them (see tests/python/connector/vllm_driver.py), over
a paged KV cache of a real model's geometry (default Qwen2.5-7B: 28 layers,
4 KV heads x 128, bfloat16, block 16 -> 896 KiB per block, 16k tokens =
1024 blocks = 896 MiB per request) filled with random bytes. Per prompt
length it times, per request:

- save: get_num_new_matched_tokens (a miss) + update_state_after_alloc +
  build_connector_meta (+ the pickling vLLM does to ship it to the worker)
  + bind + start_load_kv + save_kv_layer per layer + wait_for_save — the
  time the step spends in the connector ("step") — and on until the saver
  thread has sealed every block and get_finished reports the request in
  finished_sending (called as soon as the saver thread ends a job, as the
  raw put's time ends when its call returns; --poll: every 1 ms instead, as
  before, which added half a poll on average to the connector's time);
- load (async, the default config): get_num_new_matched_tokens (a hit) +
  update_state_after_alloc + build_connector_meta + bind + start_load_kv +
  wait_for_save + get_finished (called as soon as a load thread ends a
  job; --poll: every 1 ms) until the request is reported received; load
  (sync, ``load_async: false``): the same with the copy inside
  start_load_kv;
- the raw client doing the same bytes: ``mput`` of one buffer per block (the
  stored objects' exact bytes) and ``mget_views`` + memcpy into buffers;
- memcpy (ctypes.memmove, one thread) of a buffer the size of the request,

each with GB/s (10^9 B/s) and as a fraction of that memcpy, and the
connector's overhead: connector ms / raw ms (= raw GB/s / connector GB/s).
Every timed phase but memcpy starts with the CPU caches evicted (a buffer
of twice the largest CPU cache, at least 128 MiB, read), so none finds its
source in the last-level cache because an untimed check just read it, nor
has to write back what an untimed step left dirty.
Every saved and loaded block is checked byte for byte (untimed), and the
connector's blocks_saved / blocks_loaded counters must match the block
count, else the bench fails instead of printing numbers. Each run uses a
fresh namespace and fresh random prompts, and deletes its keys, so every
save really writes.

Without --addr the bench starts its own worker (`kvds worker`, the binary
from --kvds-bin, $KVDS_BIN or PATH) with a pool sized for the largest
request, and --max-writing-per-conn the pool's size (the raw client writes a
request in one mput), and stops it at the end.
"""
import argparse
import ctypes
import json
import os
import pickle
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types

HEADER_SIZE = 64
COLD_BYTES = 128 << 20  # at least, read before each timed phase (see _cold_bytes)
POLL_S = 0.001         # like an idle engine step; polling faster steals the load thread's CPU
LOAD_DEADLINE_S = 120
LAYOUTS = ("bhnc", "kv2-nhd", "b2-nhd")
DTYPES = ("bfloat16", "float16", "float32")


class BenchError(Exception):
    """A failure that must stop the bench: no figures are printed."""


# ---------------------------------------------------------------------------
# options


def _int_list(s):
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {s!r}")
    if not v or any(x <= 0 for x in v):
        raise argparse.ArgumentTypeError(f"need positive integers: {s!r}")
    return v


def _size(s):
    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30}
    t = s.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    if unit not in units or not num:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 2GiB, 512MiB)")
    return int(float(num) * units[unit])


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=os.environ.get("KVDS_BENCH_PROG", "python -m kvds.bench_connector"),
        description="Save and load time per request through kvds.vllm.KvdsConnector, "
                    "next to the raw client's put/get of the same bytes and memcpy "
                    "measured in the same run.")
    p.add_argument("--addr", "-w", "--worker", dest="addr",
                   help="a running worker (default: start one, stop it at the end)")
    p.add_argument("--kvds-bin", default=None,
                   help="the kvds binary used to start a worker (default $KVDS_BIN, then "
                        "`kvds` on PATH)")
    p.add_argument("--memory", type=_size, default=None,
                   help="pool of the started worker (default 2 x the largest request "
                        "+ 256 MiB)")
    p.add_argument("--tokens", type=_int_list, default=[1024, 4096, 16384],
                   help="prompt lengths, multiples of the block size (default "
                        "1024,4096,16384)")
    p.add_argument("--layers", type=int, default=28, help="layers (default 28)")
    p.add_argument("--kv-heads", type=int, default=4, help="KV heads (default 4)")
    p.add_argument("--head-size", type=int, default=128, help="head size (default 128)")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                   help="KV cache dtype (default bfloat16)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per block (default 16)")
    p.add_argument("--layout", choices=LAYOUTS, default="bhnc",
                   help="paged cache layout: bhnc [blocks, kv_heads, block, 2*head] "
                        "(vLLM CPU / FlashAttention since 2026-07, default), kv2-nhd "
                        "[2, blocks, block, kv_heads, head], b2-nhd "
                        "[blocks, 2, block, kv_heads, head]")
    p.add_argument("--iters", type=int, default=3,
                   help="timed iterations per prompt length; figures are medians "
                        "(default 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed iterations first (default 1)")
    p.add_argument("--no-sync", dest="sync", action="store_false",
                   help="skip the synchronous load (load_async: false)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the paged cache lives (default cpu; cuda: the connector's "
                        "device copies through the pinned pool and its side streams)")
    p.add_argument("--poll", action="store_true",
                   help="poll get_finished every 1 ms for the end of a save or an async "
                        "load (as before), instead of calling it as soon as the connector's "
                        "thread ends the job")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1, as memcpy)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    t = p.add_argument_group("time to first token (--ttft): real vLLM servers")
    t.add_argument("--ttft", action="store_true",
                   help="instead of the per-request figures: start three vLLM servers (plain, "
                        "and two through kvds) with a tiny local model and print the TTFT of "
                        "recompute, vLLM's prefix-cache hit, a kvds local hit and kvds PD "
                        "(see python/kvds/bench_ttft.py)")
    t.add_argument("--ttft-tokens", type=_int_list, default=[1000, 2000],
                   help="prompt lengths (default 1000,2000)")
    t.add_argument("--requests", type=int, default=8,
                   help="timed requests per case and length (default 8)")
    t.add_argument("--model-layers", type=int, default=6, help="layers (default 6)")
    t.add_argument("--model-hidden", type=int, default=512,
                   help="hidden size, a multiple of 128 (default 512; heads of 64, half as "
                        "many KV heads)")
    t.add_argument("--start-timeout", type=int, default=600,
                   help="seconds the servers may take to start (default 600)")
    t.add_argument("--seed", type=int, default=0, help="prompt generator seed (default 0)")
    a = p.parse_args(argv)
    if a.ttft:
        if a.requests <= 0 or a.model_layers <= 0 or a.model_hidden <= 0 or a.model_hidden % 128:
            p.error("--requests and --model-layers must be > 0, --model-hidden a multiple "
                    "of 128")
        return a
    for name in ("layers", "kv_heads", "head_size", "block_size", "iters", "threads"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")
    bad = [t for t in a.tokens if t % a.block_size]
    if bad:
        p.error(f"--tokens: {bad} not a multiple of the block size {a.block_size}")
    return a


# ---------------------------------------------------------------------------
# worker


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnWorker:
    """A `kvds worker` started (and stopped) by the bench; extra: more
    worker arguments (e.g. --peers), port: its port (default a free one)."""

    def __init__(self, binary, memory, extra=(), port=None):
        import kvds
        self.run_dir = tempfile.mkdtemp(prefix="kvds-bench-connector.")
        self.addr = f"127.0.0.1:{port or _free_port()}"
        self.log_path = os.path.join(self.run_dir, "worker.log")
        env = dict(os.environ, KVDS_RUN_DIR=self.run_dir)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "worker", "--listen", self.addr, "--memory", str(memory), *extra],
                stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(kvds, 30 + 0.5 * memory / (1 << 30))
        except BaseException:        # Ctrl-C or any error: no worker left behind
            self.stop()
            raise

    def _wait_ready(self, kvds, timeout_s):
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"the worker exited with {self.proc.returncode}:\n"
                                 f"{self.log()}")
            try:
                with kvds.Client(self.addr, timeout_ms=1000) as c:
                    c.ping()
                return
            except (kvds.KvdsOSError, kvds.Timeout, kvds.ConnectionClosed):
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the worker did not start:\n{self.log()}")
            time.sleep(0.02)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def find_kvds_bin(arg):
    b = arg or os.environ.get("KVDS_BIN") or shutil.which("kvds")
    if not b:
        raise BenchError("no kvds binary to start a worker: pass --kvds-bin or --addr "
                         "(or set $KVDS_BIN)")
    if not os.access(b, os.X_OK):
        raise BenchError(f"kvds binary not executable: {b}")
    return b


# ---------------------------------------------------------------------------
# the bench


def _cold_bytes():
    """Twice the largest CPU cache (sysfs), at least COLD_BYTES: read
    before each timed phase, so no phase finds its source in the
    last-level cache (some VMs have 300 MiB of L3: 128 MiB left the raw
    put's source, which the untimed checks had just read, mostly cached)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    largest = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        names = os.listdir(base)
    except OSError:
        names = []
    for name in names:
        try:
            with open(os.path.join(base, name, "size")) as f:
                t = f.read().strip()
            largest = max(largest, int(t[:-1]) * units[t[-1]] if t[-1] in units else int(t))
        except (OSError, ValueError):
            continue
    return max(COLD_BYTES, 2 * largest)


def _median(xs):
    return statistics.median(xs) if xs else 0.0


class Bench:
    def __init__(self, args, addr, vllm):
        import torch
        import kvds
        self.a, self.addr, self.v = args, addr, vllm
        self.torch, self.kvds = torch, kvds
        self.dtype = getattr(torch, args.dtype)
        self.elem = torch.empty((), dtype=self.dtype).element_size()
        self.bs = args.block_size
        self.layer_bytes = 2 * args.kv_heads * args.head_size * self.bs * self.elem
        self.block_nbytes = HEADER_SIZE + args.layers * self.layer_bytes
        self.max_blocks = max(args.tokens) // self.bs
        self.nb = self.max_blocks + 2          # block 0 (null) and the prompt's tail block
        self.ns = f"bench-connector-{os.getpid()}-{int(time.time() * 1000)}"
        self.rng = random.Random(os.getpid() ^ int(time.time()))
        self.client = kvds.Client(addr, timeout_ms=60000)
        self.seq = 0
        self.layer_names = [f"model.layers.{i}.self_attn.attn" for i in range(args.layers)]
        self.caches = {n: self._make_cache() for n in self.layer_names}
        self.scratch = torch.ones(_cold_bytes(), dtype=torch.uint8)
        self.conn = {}
        try:
            self.conn["async"] = self._connectors(load_async=True)
            if args.sync:
                self.conn["sync"] = self._connectors(load_async=False)
            w = self.conn["async"][1]
            if w.block_nbytes != self.block_nbytes:
                raise BenchError(f"the connector's block is {w.block_nbytes} bytes; the "
                                 f"geometry says {self.block_nbytes}")
        except BaseException:        # no load thread, client or key left behind
            self.close()
            raise
        self.key_prefix = w.key_prefix

    # setup

    def _make_cache(self):
        a, torch = self.a, self.torch
        h, d, bs, nb = a.kv_heads, a.head_size, self.bs, self.nb
        shape = {"bhnc": (nb, h, bs, 2 * d), "kv2-nhd": (2, nb, bs, h, d),
                 "b2-nhd": (nb, 2, bs, h, d)}[a.layout]
        raw = torch.empty(nb * self.layer_bytes, dtype=torch.uint8, device=self.a.device)
        raw.random_(0, 256)
        return raw.view(self.dtype).view(shape)

    def _block_dim(self):
        return 1 if self.a.layout == "kv2-nhd" else 0

    def _vllm_config(self, load_async):
        v = self.v
        return v.VllmConfig(
            kv_transfer_config=v.KVTransferConfig(
                kv_connector="KvdsConnector", kv_connector_module_path="kvds.vllm",
                kv_role="kv_both",
                kv_connector_extra_config={"worker_addr": self.addr, "namespace": self.ns,
                                           "load_async": load_async,
                                           "client_timeout_ms": 60000,
                                           "load_timeout_ms": 0}),
            cache_config=v.CacheConfig(block_size=self.bs),
            # named, not inferred: a GPU build of vLLM finds no platform on a
            # machine without one
            device_config=v.DeviceConfig(device=self.a.device))

    def _connectors(self, load_async):
        v = self.v
        cfg = self._vllm_config(load_async)
        kvcc = types.SimpleNamespace(num_blocks=self.nb)   # only num_blocks is read
        sched = v.KvdsConnector(cfg, v.KVConnectorRole.SCHEDULER, kvcc)
        work = v.KvdsConnector(cfg, v.KVConnectorRole.WORKER, kvcc)
        work.register_kv_caches(self.caches)
        # as vLLM's EngineCore: the worker's key prefix to the scheduler side
        sched.set_xfer_handshake_metadata_pp_aware({(0, 0): work.get_handshake_metadata()})
        return sched, work

    def close(self):
        """Also for a half-built bench: every part is shut down, whatever
        the others do."""
        for sched, work in self.conn.values():
            for part in (work, sched):
                try:
                    part.shutdown()
                except Exception as e:
                    print(f"kvds bench connector: shutdown: {e}", file=sys.stderr)
        try:
            for k, _ in self.client.list(self.ns + "/", 0):
                try:
                    self.client.delete(k)
                except self.kvds.KvdsError:
                    pass
        except self.kvds.KvdsError:
            pass
        self.client.close()

    # vLLM objects

    def _request(self, tokens):
        v = self.v
        self.seq += 1
        rid = f"bench-{self.seq}"
        sp = v.SamplingParams(max_tokens=1, temperature=0.0)
        return v.Request(rid, list(tokens), sp, None, block_hasher=v.hasher(self.bs))

    def _kvblocks(self, ids):
        v = self.v
        return v.KVCacheBlocks(([v.KVCacheBlock(i) for i in ids],))

    def _sched_output(self, new=(), num_sched=None):
        v = self.v
        num_sched = num_sched or {}
        return v.SchedulerOutput(
            scheduled_new_reqs=[
                v.NewRequestData(r.request_id, r.prompt_token_ids, [], r.sampling_params, None,
                                 (list(ids),), nc, None, **_prefill_ids(v, r))
                for r, ids, nc in new],
            scheduled_cached_reqs=v.CachedRequestData(**_cached_fields(v)),
            num_scheduled_tokens=num_sched, total_num_scheduled_tokens=sum(num_sched.values()),
            scheduled_spec_decode_tokens={}, scheduled_encoder_inputs={},
            finished_req_ids=set(), free_encoder_mm_hashes=[])

    # checks

    def _cache_blocks(self, name, nblk):
        """Blocks 1..nblk of one layer as [nblk, layer_bytes] uint8 (a copy)."""
        t = self.caches[name].narrow(self._block_dim(), 1, nblk).movedim(self._block_dim(), 0)
        return t.contiguous().view(self.torch.uint8).reshape(nblk, -1).cpu()

    def _check_cache(self, ref, nblk, what):
        off = HEADER_SIZE
        for name in self.layer_names:
            if not self.torch.equal(self._cache_blocks(name, nblk),
                                    ref[:, off:off + self.layer_bytes]):
                raise BenchError(f"{what}: layer {name} differs from the saved bytes")
            off += self.layer_bytes

    def _zero_blocks(self, nblk):
        for t in self.caches.values():
            t.narrow(self._block_dim(), 1, nblk).zero_()

    # the phases

    def _cold(self):
        """Evicts the CPU caches, so that every timed phase starts alike:
        otherwise a phase whose source the untimed checks just read (the
        raw put's) would start with part of it in the last-level cache."""
        # Reads only: what the checks left dirty is written back now, not
        # during the timed phase, and the caches hold clean scratch lines.
        self._cold_sum = int(self.scratch.view(self.torch.int64).sum())

    def save(self, req, ids, ntok):
        """(step s, scheduler s, sealed s, blocks saved, reported): the step
        (lookup .. wait_for_save) queues the saves; the request finishes
        and is reported in finished_sending once they are sealed."""
        sched, work = self.conn["async"]
        kvb = self._kvblocks(ids)
        rid = req.request_id
        so = self._sched_output([(req, ids, 0)], {rid: ntok})
        before = work.stats["blocks_saved"]
        t0 = time.perf_counter()
        n_ext, _ = sched.get_num_new_matched_tokens(req, 0)
        sched.update_state_after_alloc(req, kvb, n_ext)
        meta = pickle.loads(pickle.dumps(sched.build_connector_meta(so)))
        t1 = time.perf_counter()
        work.bind_connector_metadata(meta)
        work.start_load_kv(None)
        for name in self.layer_names:
            work.wait_for_layer_load(name)
            work.save_kv_layer(name, self.caches[name], None)
        work.wait_for_save()
        t2 = time.perf_counter()
        work.get_finished(set())
        work.clear_connector_metadata()
        if n_ext:
            raise BenchError(f"save: a fresh prompt matched {n_ext} tokens in kvds")
        req.num_computed_tokens = ntok
        delay, _ = sched.request_finished(req, ids)
        # the next steps: the delayed free reaches the worker side, which
        # reports the request once its saves are sealed
        meta = pickle.loads(pickle.dumps(sched.build_connector_meta(self._sched_output())))
        work.bind_connector_metadata(meta)
        deadline = time.monotonic() + LOAD_DEADLINE_S
        while True:
            gen = work._work.changes()
            sending, _ = work.get_finished({rid} if not delay else set())
            if not delay or (sending and rid in sending):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"save not reported finished in {LOAD_DEADLINE_S} s")
            self._wait(work, gen)
        t3 = time.perf_counter()
        work.clear_connector_metadata()
        sched.update_connector_output(self.v.KVConnectorOutput(finished_sending={rid}))
        saved = work.stats["blocks_saved"] - before
        return t2 - t0, t1 - t0, t3 - t0, saved, bool(delay)

    def _wait(self, work, gen):
        """Until the worker side's saver or a load thread ends a job (or
        POLL_S): get_finished is then called at once, where a fixed 1 ms
        poll added half an interval on average (and on 2 vCPUs up to a
        whole one) to the connector's time that the raw client never pays."""
        if self.a.poll:
            time.sleep(POLL_S)
        else:
            work._work.wait_changed(gen, POLL_S)

    def load_async(self, req, ids, nblk):
        sched, work = self.conn["async"]
        kvb = self._kvblocks(ids)
        so = self._sched_output()
        rid = req.request_id
        before = work.stats["blocks_loaded"]
        t0 = time.perf_counter()
        n_ext, is_async = sched.get_num_new_matched_tokens(req, 0)
        sched.update_state_after_alloc(req, kvb, n_ext)
        meta = pickle.loads(pickle.dumps(sched.build_connector_meta(so)))
        work.bind_connector_metadata(meta)
        work.start_load_kv(None)
        work.wait_for_save()
        t_step = time.perf_counter()
        deadline = time.monotonic() + LOAD_DEADLINE_S
        while True:
            gen = work._work.changes()
            _, recv = work.get_finished(set())
            if recv and rid in recv:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"async load of {nblk} blocks not reported in "
                                 f"{LOAD_DEADLINE_S} s")
            self._wait(work, gen)
        t1 = time.perf_counter()
        errors = work.get_block_ids_with_load_errors()
        work.clear_connector_metadata()
        sched.update_connector_output(self.v.KVConnectorOutput(
            finished_recving={rid}, invalid_block_ids=errors))
        sched.request_finished(req, ids)
        if n_ext != nblk * self.bs or not is_async:
            raise BenchError(f"async load: matched {n_ext} tokens (async={is_async}); "
                             f"expected {nblk * self.bs}, async")
        if errors:
            raise BenchError(f"async load: {len(errors)} blocks failed to load")
        return t1 - t0, t_step - t0, work.stats["blocks_loaded"] - before

    def load_sync(self, req, ids, nblk):
        sched, work = self.conn["sync"]
        kvb = self._kvblocks(ids)
        ntok = nblk * self.bs
        so = self._sched_output([(req, ids, ntok)], {req.request_id: 1})
        before = work.stats["blocks_loaded"]
        t0 = time.perf_counter()
        n_ext, is_async = sched.get_num_new_matched_tokens(req, 0)
        sched.update_state_after_alloc(req, kvb, n_ext)
        req.num_computed_tokens = n_ext
        meta = pickle.loads(pickle.dumps(sched.build_connector_meta(so)))
        work.bind_connector_metadata(meta)
        work.start_load_kv(None)
        work.wait_for_save()
        errors = work.get_block_ids_with_load_errors()
        t1 = time.perf_counter()
        work.clear_connector_metadata()
        sched.update_connector_output(self.v.KVConnectorOutput(invalid_block_ids=errors))
        sched.request_finished(req, ids)
        if n_ext != ntok or is_async:
            raise BenchError(f"sync load: matched {n_ext} tokens (async={is_async}); "
                             f"expected {ntok}, sync")
        if errors:
            raise BenchError(f"sync load: {len(errors)} blocks failed to load")
        saved = work.stats["blocks_saved"]
        if saved:
            raise BenchError(f"sync load: the loading connector saved {saved} blocks")
        return t1 - t0, work.stats["blocks_loaded"] - before

    def _batches(self, n):
        step = self.kvds.BATCH_MAX
        return [(i, min(n, i + step)) for i in range(0, n, step)]

    def raw_put(self, keys, values):
        t0 = time.perf_counter()
        for i, j in self._batches(len(keys)):
            self.client.mput(keys[i:j], values[i:j])
        return time.perf_counter() - t0

    def raw_get(self, keys, dst):
        import numpy as np
        B = self.block_nbytes
        base = dst.data_ptr()
        t0 = time.perf_counter()
        k = 0
        for i, j in self._batches(len(keys)):
            pinned = self.client.mget_views(keys[i:j])
            try:
                for n in range(j - i):
                    v = pinned[n]
                    if v is None or len(v) != B:
                        raise BenchError(f"raw get: {keys[k]} is "
                                         f"{'missing' if v is None else f'{len(v)} bytes'}")
                    ctypes.memmove(base + k * B, np.frombuffer(v, dtype=np.uint8).ctypes.data,
                                   B)
                    del v
                    k += 1
            finally:
                pinned.release()
        return time.perf_counter() - t0

    def memcpy(self, dst, src, n):
        best = None
        for _ in range(3):
            t0 = time.perf_counter()
            ctypes.memmove(dst.data_ptr(), src.data_ptr(), n)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        return best

    # one prompt length

    def run_size(self, ntok):
        torch = self.torch
        nblk = ntok // self.bs
        B = self.block_nbytes
        nbytes = nblk * B
        ids = list(range(1, nblk + 2))          # prompt of ntok + 1 tokens: nblk full blocks
        ref = torch.empty(nblk, B, dtype=torch.uint8)
        dst = torch.zeros(nblk, B, dtype=torch.uint8)
        ref_np = ref.numpy()
        samples = {k: [] for k in ("save", "save_step", "save_sched", "load_async",
                                   "load_async_step", "load_sync",
                                   "raw_put", "raw_get", "memcpy")}
        for it in range(self.a.warmup + self.a.iters):
            timed = it >= self.a.warmup
            tokens = [self.rng.randrange(1, 150000) for _ in range(ntok + 1)]
            # save
            req = self._request(tokens)
            self._cold()
            dt_step, dt_sched, dt, saved, reported = self.save(req, ids, ntok + 1)
            if saved != nblk:
                raise BenchError(f"{ntok} tokens: the connector saved {saved} blocks, "
                                 f"expected {nblk}")
            if not reported:
                raise BenchError(f"{ntok} tokens: the saving request was not reported in "
                                 "finished_sending")
            keys = [self.key_prefix + h.hex() for h in req.block_hashes[:nblk]]
            with self.client.mget_views(keys) as pinned:     # what was stored (untimed)
                for i in range(nblk):
                    v = pinned[i]
                    if v is None or len(v) != B:
                        raise BenchError(f"{ntok} tokens: saved block {i} is "
                                         f"{'missing' if v is None else f'{len(v)} bytes'}")
                    ref_np[i] = memoryview(v)
                    del v
            self._check_cache(ref, nblk, "save")
            if timed:
                samples["save"].append(dt)
                samples["save_step"].append(dt_step)
                samples["save_sched"].append(dt_sched)
            # loads, each into zeroed blocks
            self._zero_blocks(nblk)
            self._cold()
            dt, dt_step, loaded = self.load_async(self._request(tokens), ids, nblk)
            if loaded != nblk:
                raise BenchError(f"{ntok} tokens: async load loaded {loaded} blocks, "
                                 f"expected {nblk}")
            self._check_cache(ref, nblk, "async load")
            if timed:
                samples["load_async"].append(dt)
                samples["load_async_step"].append(dt_step)
            if self.a.sync:
                self._zero_blocks(nblk)
                self._cold()
                dt, loaded = self.load_sync(self._request(tokens), ids, nblk)
                if loaded != nblk:
                    raise BenchError(f"{ntok} tokens: sync load loaded {loaded} blocks, "
                                     f"expected {nblk}")
                self._check_cache(ref, nblk, "sync load")
                if timed:
                    samples["load_sync"].append(dt)
            self._mdelete(keys)
            # the raw client, same bytes
            raw_keys = [f"{self.ns}/raw/{ntok}/{it}/{i}" for i in range(nblk)]
            values = [ref_np[i] for i in range(nblk)]
            self._cold()
            dt_put = self.raw_put(raw_keys, values)
            dst.zero_()
            self._cold()
            dt_get = self.raw_get(raw_keys, dst)
            if not torch.equal(dst, ref):
                raise BenchError(f"{ntok} tokens: raw get returned other bytes")
            self._mdelete(raw_keys)
            dt_cpy = self.memcpy(dst, ref, nbytes)
            if timed:
                samples["raw_put"].append(dt_put)
                samples["raw_get"].append(dt_get)
                samples["memcpy"].append(dt_cpy)
        return self._case(ntok, nblk, nbytes, samples)

    def _mdelete(self, keys):
        for i, j in self._batches(len(keys)):
            res = self.client.mdelete(keys[i:j])
            if res is not None:
                errs = [e for e in res if e is not None]
                raise BenchError(f"cannot delete the bench's keys: {errs[0]}")

    def _case(self, ntok, nblk, nbytes, samples):
        med = {k: _median(v) for k, v in samples.items()}
        if any(med[k] <= 0 for k in ("save", "load_async", "raw_put", "raw_get", "memcpy")):
            raise BenchError(f"{ntok} tokens: a phase measured no time")
        mem_gbps = nbytes / med["memcpy"] / 1e9

        def fig(k):
            s = med[k]
            g = nbytes / s / 1e9
            return {"ms": s * 1e3, "gbps": g, "of_memcpy": g / mem_gbps,
                    "samples_ms": [x * 1e3 for x in samples[k]]}

        case = {"tokens": ntok, "blocks": nblk, "block_bytes": self.block_nbytes,
                "bytes": nbytes, "memcpy_gbps": mem_gbps,
                "save": dict(fig("save"), blocks_saved=nblk,
                             scheduler_ms=med["save_sched"] * 1e3,
                             step_ms=med["save_step"] * 1e3),
                "raw_put": fig("raw_put"),
                "load_async": dict(fig("load_async"), blocks_loaded=nblk,
                                   step_ms=med["load_async_step"] * 1e3),
                "raw_get": fig("raw_get")}
        case["save_overhead"] = med["save"] / med["raw_put"]
        case["load_async_overhead"] = med["load_async"] / med["raw_get"]
        if self.a.sync:
            case["load_sync"] = dict(fig("load_sync"), blocks_loaded=nblk,
                                     step_ms=med["load_sync"] * 1e3)
            case["load_sync_overhead"] = med["load_sync"] / med["raw_get"]
        return case


# ---------------------------------------------------------------------------
# vLLM


def _cached_fields(v):
    """An empty CachedRequestData's fields (0.33 dropped resumed_req_ids and
    all_token_ids)."""
    import dataclasses
    empty = {"req_ids": [], "resumed_req_ids": set(), "new_token_ids": [],
             "all_token_ids": {}, "new_block_ids": [], "num_computed_tokens": [],
             "num_output_tokens": []}
    return {f.name: empty[f.name] for f in dataclasses.fields(v.CachedRequestData)
            if f.name in empty}


def _prefill_ids(v, r):
    import dataclasses
    if "prefill_token_ids" in {f.name for f in dataclasses.fields(v.NewRequestData)}:
        return {"prefill_token_ids": list(r.all_token_ids)}     # 0.33+
    return {}


def import_vllm():
    """vLLM's classes the bench needs, as a namespace; BenchError if missing."""
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")   # keep stdout for our output
    try:
        import torch  # noqa: F401
        from vllm.config import CacheConfig, DeviceConfig, KVTransferConfig, VllmConfig
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
        from vllm.sampling_params import SamplingParams
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_manager import KVCacheBlocks
        from vllm.v1.core.kv_cache_utils import (KVCacheBlock, get_request_block_hasher,
                                                 init_none_hash)
        from vllm.v1.core.sched.output import (CachedRequestData, NewRequestData,
                                               SchedulerOutput)
        from vllm.v1.outputs import KVConnectorOutput
        from vllm.v1.request import Request
        from kvds.vllm import KvdsConnector
    except ImportError as e:
        raise BenchError(f"needs vLLM 0.32.0, torch and kvds.vllm in {sys.executable} "
                         f"({e}); install them with pip install -r "
                         "python/requirements-vllm.txt, or point $KVDS_PYTHON at a "
                         "Python that has them") from e
    init_none_hash(sha256)
    hashers = {}

    def hasher(bs):
        if bs not in hashers:
            hashers[bs] = get_request_block_hasher(bs, sha256)
        return hashers[bs]

    return types.SimpleNamespace(**{k: v for k, v in locals().items()
                                    if k not in ("e", "hashers")})


# ---------------------------------------------------------------------------
# output


def _f3(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _mib(n):
    return f"{n / (1 << 20):.1f} MiB"


def print_header(res, out):
    g = res["geometry"]
    w = res["worker"]
    how = ("started by the bench, pool " + _mib(w["pool_capacity"]) if w["started"]
           else "running, pool " + _mib(w["pool_capacity"]))
    print(f"kvds bench connector: worker {w['addr']} ({how}, "
          f"{'shared memory' if w['shared_memory'] else 'TCP: values are copied'})", file=out)
    print(f"KV cache: {g['layers']} layers x {g['kv_heads']} KV heads x {g['head_size']}, "
          f"{g['dtype']}, block {g['block_size']} tokens, layout {g['layout']}, "
          f"on {g['device']}: "
          f"{g['block_bytes']} B per block object ({g['block_bytes'] - HEADER_SIZE} B of KV "
          f"+ {HEADER_SIZE} B header)", file=out)
    print(f"median of {res['iters']} iterations after {res['warmup']} warm-up; GB/s = 10^9 "
          f"B/s; memcpy: one thread, a buffer the size of the request, this run; "
          f"torch threads {res['torch_threads']}", file=out)
    when = "polled every 1 ms" if res["poll"] else "called when the thread ends a job"
    print("save: get_num_new_matched_tokens .. wait_for_save returns (step) .. get_finished "
          f"reports it sealed ({when});  raw put: mput of the same objects", file=out)
    print("load: get_num_new_matched_tokens .. start_load_kv returns (step) .. get_finished "
          f"reports it (async, {when}) / start_load_kv returns (sync);", file=out)
    print("      raw get: mget_views + memcpy into buffers;  overhead = connector ms / "
          "raw ms", file=out)
    print(file=out)
    print(f"{'tokens':>6} {'blocks':>6} {'bytes':>10} {'memcpy':>7}  {'op':<11}"
          f"{'step ms':>8}{'ms':>8} {'GB/s':>7} {'xmemcpy':>8}   {'raw ms':>7} {'GB/s':>7} "
          f"{'xmemcpy':>8} {'overhead':>9}", file=out)
    out.flush()


def print_case(c, out):
    ops = [("save", "save", "raw_put", "save_overhead"),
           ("load async", "load_async", "raw_get", "load_async_overhead")]
    if "load_sync" in c:
        ops.append(("load sync", "load_sync", "raw_get", "load_sync_overhead"))
    for i, (label, k, raw, ov) in enumerate(ops):
        lead = (f"{c['tokens']:>6} {c['blocks']:>6} {_mib(c['bytes']):>10} "
                f"{_f3(c['memcpy_gbps']):>7}" if i == 0 else " " * 32)
        x, r = c[k], c[raw]
        print(f"{lead}  {label:<11}{_f3(x['step_ms']):>8}{_f3(x['ms']):>8} {_f3(x['gbps']):>7} "
              f"{x['of_memcpy']:>8.2f}   {_f3(r['ms']):>7} {_f3(r['gbps']):>7} "
              f"{r['of_memcpy']:>8.2f} {c[ov]:>8.2f}x", file=out)
    out.flush()


def print_footer(out):
    print(file=out)
    print("memcpy: GB/s; xmemcpy: GB/s as a fraction of it; bytes include each block's "
          "64-byte header", file=out)


# ---------------------------------------------------------------------------
# main


def run(args, on_start=None, on_case=None):
    """Runs the bench; returns the result (the --json object). on_start(res)
    is called with everything but the cases, on_case(case) per case."""
    import kvds
    vllm = import_vllm()
    import torch
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: torch sees no CUDA device here")
    geometry = {"layers": args.layers, "kv_heads": args.kv_heads, "head_size": args.head_size,
                "dtype": args.dtype, "block_size": args.block_size, "layout": args.layout,
                "device": args.device}
    elem = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    block_bytes = HEADER_SIZE + args.layers * 2 * args.kv_heads * args.head_size \
        * args.block_size * elem
    max_req = max(args.tokens) // args.block_size * block_bytes
    own = None
    try:
        if args.addr:
            addr = args.addr
        else:
            memory = args.memory or 2 * max_req + (256 << 20)
            # the raw client writes a whole request in one mput: no cap on
            # what one connection writes unsealed below the pool
            own = OwnWorker(find_kvds_bin(args.kvds_bin), memory,
                            extra=("--max-writing-per-conn", str(memory)))
            addr = own.addr
        with kvds.Client(addr, timeout_ms=10000) as c:
            st = c.stats()
            shm = c.is_local
        room = st["high_watermark_ppm"] / 1e6 * st["pool_capacity"] - st["pool_used"]
        if max_req > 0.9 * room:
            raise BenchError(f"the worker's pool has room for {_mib(max(room, 0))} below its "
                             f"eviction watermark; a request of {max(args.tokens)} tokens "
                             f"needs {_mib(max_req)} (use a larger --memory, or fewer "
                             "--tokens)")
        geometry["block_bytes"] = block_bytes
        res = {"worker": {"addr": addr, "started": own is not None, "shared_memory": shm,
                          "pool_capacity": st["pool_capacity"]},
               "geometry": geometry, "iters": args.iters, "warmup": args.warmup,
               "torch_threads": args.threads, "poll": args.poll, "vllm": _vllm_version(),
               "cases": []}
        bench = Bench(args, addr, vllm)
        try:
            if on_start:
                on_start(res)
            for t in args.tokens:
                res["cases"].append(bench.run_size(t))
                if on_case:
                    on_case(res["cases"][-1])
        finally:
            bench.close()
        return res
    finally:
        if own is not None:
            own.stop()


def _vllm_version():
    try:
        import vllm
        return vllm.__version__
    except Exception:
        return None


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def run_ttft(args, out):
    from . import bench_ttft
    own = None
    try:
        addr = args.addr
        if not addr:
            own = OwnWorker(find_kvds_bin(args.kvds_bin), args.memory or (2 << 30))
            addr = own.addr
        first = [True]

        def on_case(c):
            if args.json:
                return
            if first[0]:
                bench_ttft.print_header({"model": {
                    "layers": args.model_layers, "hidden": args.model_hidden,
                    "kv_heads": args.model_hidden // 128, "head_size": 64, "dtype": "float32"}},
                    addr, out)
                first[0] = False
            bench_ttft.print_case(c, out)

        try:
            res = bench_ttft.run(args, addr, on_case)
        except bench_ttft.TtftError as e:
            raise BenchError(str(e)) from e
        res["worker"] = {"addr": addr, "started": own is not None}
        res["vllm"] = _vllm_version()
        return res
    finally:
        if own is not None:
            own.stop()


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = sys.stdout
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Everything but our result goes to stderr (vLLM and torch print warnings).
    sys.stdout = sys.stderr
    hooks = (None, None) if args.json else (lambda r: print_header(r, out),
                                            lambda c: print_case(c, out))
    import kvds
    try:
        res = run_ttft(args, out) if args.ttft else run(args, *hooks)
    except (BenchError, kvds.KvdsError) as e:     # e.g. a dead --addr, a full pool
        print(f"kvds bench connector: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kvds bench connector: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = out
    if args.json:
        json.dump(res, out, indent=2)
        out.write("\n")
    elif not args.ttft:
        print_footer(out)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
