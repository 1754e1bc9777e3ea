"""The Mooncake rows of `kvds bench peers`: Mooncake's transfer engine and
Mooncake Store, from the `mooncake-transfer-engine` PyPI wheel
(python/requirements-peers.txt, in .venv/peers), on this machine over
loopback TCP.

Run by `kvds bench peers` (src/cli/bench/peers.c) with the wheel's overlay
first on PYTHONPATH and its CUDA stand-ins (scripts/make_peer_stubs.py) on
LD_LIBRARY_PATH. It starts Mooncake's processes once, then measures one
point at a time as the bench asks, so that every system's figure of a
point comes from the same minute of a shared machine: with --cmd and
--reply (two FIFOs the bench made) it writes one JSON line to --reply when
it is ready, then reads lines "SIZE BATCH THREADS" from --cmd and answers
each with one JSON line, until "quit" or the end of --cmd:

    {"version": "0.3.13.post1", "skipped": {"mooncake-te": "reason"}}
    {"rows": [{"system": "mooncake-te"|"mooncake-store",
               "op": "get"|"put", "size": N, "batch": N, "threads": N,
               "gbps": X, "calls": N}...],
     "skipped": {...}}

Without --cmd it measures every point of --sizes x --batch x --threads and
prints one document with all the rows. Progress lines ("kvds bench peers:
...") go to stderr; what the wheel's C++ code logs goes to
<dir>/mooncake-client.log. A system that cannot start or fails is a
"skipped" entry with the reason and is not measured again; the other still
runs. Every process it starts is stopped before it exits (also on SIGINT).

mooncake-te: the wheel's own `transfer_engine_bench` (Mooncake's C++
client): a target process registers --max-bytes of DRAM; per point an
initiator with --threads T (each its own submission thread), --batch_size
B, --block_size S, --protocol tcp, --metadata_server P2PHANDSHAKE reads
(get) or writes (put) blocks of the target for `duration` whole seconds;
the figure is its own "throughput" line (GB = 10^9 B). It has no
finer clock than whole seconds: one second per point and op.

mooncake-store: `mooncake_master` (no HA, no persistence) and two
MooncakeDistributedStore clients, TCP, P2PHANDSHAKE: a holder process that
contributes the memory segment, and the bench's client (segment size 0)
whose values all live in the holder, so every byte crosses loopback TCP.
The client registers one buffer and uses the zero-copy calls
batch_put_from / batch_get_into, one call per batch; T Python threads share
the client (its calls release the GIL). Puts go to fresh keys (the ring's
old keys are removed, untimed).
"""
import argparse
import ctypes
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

PROG = os.environ.get("KVDS_BENCH_PROG", "kvds bench peers")
START_TIMEOUT_S = 30
SEGMENT_SLACK = 64 << 20  # holder segment beyond the largest key set


_progress = sys.stderr


def progress(msg):
    print(f"{PROG}: {msg}", file=_progress, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ints(s):
    return [int(x) for x in s.split(",") if x]


def stop(proc):
    """SIGTERM, then SIGKILL after 10 s; None is a no-op."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(path, n=300):
    try:
        with open(path, "rb") as f:
            data = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    lines = [ln for ln in data.splitlines() if not ln.startswith(("I", "W"))] or data.splitlines()
    return (lines[-1] if lines else "")[-n:]


def points(a):
    """(size, batch, threads) of every point whose call fits --max-bytes."""
    for size in a.sizes:
        for batch in a.batch:
            for threads in a.threads:
                if size * batch * threads <= a.max_bytes:
                    yield size, batch, threads


class Skip(Exception):
    """A system that cannot run; the message is the reason."""


def wait_until(proc, log, what, probe):
    """probe()'s first result that is not None, polled while proc runs, for
    START_TIMEOUT_S; else Skip with the last line of its log."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise Skip(f"{what} exited ({proc.returncode}): {log_tail(log)}")
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise Skip(f"{what} did not start in {START_TIMEOUT_S} s: {log_tail(log)}")
        time.sleep(0.05)


# ---- transfer engine ----------------------------------------------------------

class Engine:
    """The wheel's transfer_engine_bench: one target, an initiator per point
    and op."""
    system = "mooncake-te"

    def __init__(self, a, pkg, env):
        self.a, self.env, self.target = a, env, None
        self.exe = os.path.join(pkg, "transfer_engine_bench")
        self.common = ["--protocol=tcp", "--metadata_server=P2PHANDSHAKE",
                       "--use_vram=false", f"--buffer_size={a.max_bytes}",
                       "--report_precision=4", "--report_unit=GB", "--auto_discovery=false"]

    def start(self):
        if not os.access(self.exe, os.X_OK):
            raise Skip(f"{self.exe} is missing")
        tlog = os.path.join(self.a.dir, "te-target.log")
        with open(tlog, "wb") as log:
            self.target = subprocess.Popen(
                [self.exe, "--mode=target", f"--local_server_name=127.0.0.1:{free_port()}",
                 *self.common],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        # P2P handshake: the target's RPC port is its own pick, logged.
        def port():
            with open(tlog, "rb") as f:
                m = re.search(rb"P2P handshake, listening on [^:\s]+:(\d+)", f.read())
            return int(m.group(1)) if m else None
        self.port = wait_until(self.target, tlog, "transfer_engine_bench target", port)
        time.sleep(0.3)  # the target registers its buffer after it listens

    def point(self, size, batch, threads):
        rows, secs = [], 1
        for op, te_op in (("get", "read"), ("put", "write")):
            progress(f"mooncake-te {op} {size >> 10} KiB x {batch}, {threads} thread(s)")
            ilog = os.path.join(self.a.dir, "te-initiator.log")
            with open(ilog, "wb") as log:
                try:
                    rc = subprocess.run(
                        [self.exe, "--mode=initiator",
                         f"--local_server_name=127.0.0.1:{free_port()}",
                         f"--segment_id=127.0.0.1:{self.port}", f"--operation={te_op}",
                         f"--threads={threads}", f"--batch_size={batch}",
                         f"--block_size={size}", f"--duration={secs}", *self.common],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        env=self.env, timeout=secs + 60).returncode
                except subprocess.TimeoutExpired:
                    raise Skip(f"transfer_engine_bench initiator did not finish in "
                               f"{secs + 60} s") from None
            with open(ilog, "rb") as f:
                m = re.search(rb"batch count (\d+), throughput ([0-9.]+) GB/s", f.read())
            if rc != 0 or not m:
                raise Skip(f"transfer_engine_bench initiator failed ({rc}): {log_tail(ilog)}")
            rows.append({"system": self.system, "op": op, "size": size, "batch": batch,
                         "threads": threads, "gbps": float(m.group(2)),
                         "calls": int(m.group(1))})
        return rows

    def stop(self):
        stop(self.target)


# ---- store ----------------------------------------------------------------------

HOLDER = """
import sys
from mooncake.store import MooncakeDistributedStore
s = MooncakeDistributedStore()
rc = s.setup("127.0.0.1", "P2PHANDSHAKE", int(sys.argv[2]), 16 << 20, "tcp", "", sys.argv[1])
print("ready" if rc == 0 else f"setup failed: {rc}", flush=True)
if rc == 0:
    sys.stdin.read()
    s.close()
"""


def store_case(s, addr, size, batch, threads, op, seconds, max_bytes, tag):
    """Timed calls of `threads` threads; returns (GB/s, calls)."""
    # a ring of keys per thread: up to 64 MiB, all threads' within max_bytes
    ring = min(64 << 20, max_bytes // threads)
    nslots = max(batch, ring // size // batch * batch)
    per_thread = batch * size
    errors, calls, busy = [], [0] * threads, [0.0] * threads
    keys = [[f"kvds-peers/{tag}/{t}/{i}" for i in range(nslots)] for t in range(threads)]
    sizes = [size] * batch

    def ptrs(t):
        return [addr + t * per_thread + i * size for i in range(batch)]

    if op == "get":  # the values to read, untimed
        for t in range(threads):
            for j in range(0, nslots, batch):
                res = s.batch_put_from(keys[t][j:j + batch], ptrs(t), sizes)
                if any(r != 0 for r in res):
                    raise RuntimeError(f"batch_put_from: {res[:4]}")

    def work(t):
        try:
            p, j, wrapped, t0 = ptrs(t), 0, False, time.monotonic()
            while True:
                ks = keys[t][j:j + batch]
                if op == "put" and wrapped:
                    for k in ks:
                        s.remove(k, True)
                c0 = time.perf_counter()
                if op == "put":
                    res = s.batch_put_from(ks, p, sizes)
                    bad = [r for r in res if r != 0]
                else:
                    res = s.batch_get_into(ks, p, sizes)
                    bad = [r for r in res if r != size]
                busy[t] += time.perf_counter() - c0
                if bad:
                    raise RuntimeError(f"batch_{op}: {bad[:4]}")
                calls[t] += 1
                j += batch
                if j >= nslots:
                    j, wrapped = 0, True
                if time.monotonic() - t0 >= seconds and calls[t] >= 3:
                    break
        except Exception as e:  # noqa: BLE001 (reported, then the row is skipped)
            errors.append(e)

    ths = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    for t in range(threads):
        for k in keys[t]:
            s.remove(k, True)
    if errors:
        raise errors[0]
    # every thread moved its bytes in its own busy time; together they ran
    # for the longest of them
    total = sum(calls) * per_thread
    return total / max(busy) / 1e9, sum(calls)


class Store:
    """mooncake_master, a holder process with the segment, and this
    process's client."""
    system = "mooncake-store"

    def __init__(self, a, pkg, env):
        self.a, self.env = a, env
        self.exe = os.path.join(pkg, "mooncake_master")
        self.master = self.holder = self.s = None
        self.n = 0

    def start(self):
        from mooncake.store import MooncakeDistributedStore  # noqa: PLC0415

        a = self.a
        if not os.access(self.exe, os.X_OK):
            raise Skip(f"{self.exe} is missing")
        port = free_port()
        master_addr = f"127.0.0.1:{port}"
        mlog = os.path.join(a.dir, "mooncake-master.log")
        hlog = os.path.join(a.dir, "mooncake-holder.log")
        with open(mlog, "wb") as log:
            self.master = subprocess.Popen(
                [self.exe, f"--port={port}", f"--metrics_port={free_port()}",
                 "--enable_http_metadata_server=false"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return None
        wait_until(self.master, mlog, "mooncake_master", listening)
        segment = a.max_bytes + a.max_bytes // 4 + SEGMENT_SLACK
        with open(hlog, "wb") as log:
            self.holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, master_addr, str(segment)],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.PIPE, env=self.env)
        box = []  # the holder's first line, read with a deadline
        ready = threading.Thread(target=lambda: box.append(self.holder.stdout.readline()),
                                 daemon=True)
        ready.start()
        ready.join(START_TIMEOUT_S)
        line = box[0] if box else b""
        if line.strip() != b"ready":
            raise Skip(f"store holder did not start: "
                       f"{line.decode(errors='replace').strip() or log_tail(hlog)}")
        self.s = MooncakeDistributedStore()
        rc = self.s.setup("127.0.0.1", "P2PHANDSHAKE", 0, 16 << 20, "tcp", "", master_addr)
        if rc != 0:
            self.s = None
            raise Skip(f"MooncakeDistributedStore.setup failed ({rc})")
        region = max(size * batch * threads for size, batch, threads in points(a))
        self.buf = ctypes.create_string_buffer(region)
        ctypes.memset(self.buf, 0xa5, region)
        self.addr = ctypes.addressof(self.buf)
        if self.s.register_buffer(self.addr, region) != 0:
            raise Skip("register_buffer failed")

    def point(self, size, batch, threads):
        rows = []
        for op in ("get", "put"):
            progress(f"mooncake-store {op} {size >> 10} KiB x {batch}, {threads} thread(s)")
            self.n += 1
            try:
                gbps, calls = store_case(self.s, self.addr, size, batch, threads, op,
                                         self.a.seconds, self.a.max_bytes, self.n)
            except RuntimeError as e:
                raise Skip(f"{op} {size} x {batch}: {e}") from None
            rows.append({"system": self.system, "op": op, "size": size, "batch": batch,
                         "threads": threads, "gbps": gbps, "calls": calls})
        return rows

    def stop(self):
        if self.s is not None:
            self.s.close()
            self.s = None
        if self.holder is not None:
            try:
                self.holder.stdin.close()
                self.holder.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            stop(self.holder)
        stop(self.master)


class Bench:
    """The systems that started; a failure turns one into a skip."""

    def __init__(self, systems):
        self.live, self.skipped = [], {}
        for sys_ in systems:
            try:
                sys_.start()
                self.live.append(sys_)
            except Exception as e:  # noqa: BLE001 (a peer's failure is a skip)
                self.fail(sys_, e)

    def fail(self, sys_, e):
        why = str(e) if isinstance(e, Skip) else f"{type(e).__name__}: {e}"
        progress(f"{sys_.system} skipped: {why}")
        self.skipped[sys_.system] = why
        if sys_ in self.live:
            self.live.remove(sys_)
        try:
            sys_.stop()
        except Exception:  # noqa: BLE001 (already failing)
            pass

    def point(self, size, batch, threads):
        rows = []
        for sys_ in list(self.live):
            if size * batch * threads > sys_.a.max_bytes:
                continue
            try:
                rows += sys_.point(size, batch, threads)
            except Exception as e:  # noqa: BLE001
                self.fail(sys_, e)
        return rows

    def stop(self):
        for sys_ in self.live:
            sys_.stop()
        self.live = []


def main(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--kvds-bin", help=argparse.SUPPRESS)
    p.add_argument("--sizes", type=ints, required=True, help="value sizes in bytes")
    p.add_argument("--batch", type=ints, required=True)
    p.add_argument("--threads", type=ints, required=True)
    p.add_argument("--seconds", type=float, default=0.2, help="store: timed calls per case")
    p.add_argument("--max-bytes", type=int, default=512 << 20,
                   help="most bytes one call of all threads moves")
    p.add_argument("--dir", required=True, help="for logs (the caller removes it)")
    p.add_argument("--cmd", help="FIFO of point requests (else: every point, one document)")
    p.add_argument("--reply", help="FIFO of the answers (with --cmd)")
    p.add_argument("--only", choices=["te", "store"], action="append")
    a = p.parse_args(argv)
    # The wheel's C++ code logs to fd 2 (glog, before InitGoogleLogging):
    # into a file, so that the progress lines stay readable.
    global _progress
    _progress = os.fdopen(os.dup(2), "w")
    log_fd = os.open(os.path.join(a.dir, "mooncake-client.log"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    env = dict(os.environ)
    head = {"version": "", "skipped": {}}
    try:
        head["version"] = importlib.metadata.version("mooncake-transfer-engine")
    except importlib.metadata.PackageNotFoundError:
        pass
    reply = open(a.reply, "w") if a.cmd else sys.stdout  # noqa: SIM115
    try:
        try:
            import mooncake  # noqa: PLC0415
            pkg = os.path.dirname(os.path.abspath(mooncake.__file__))
            import mooncake.store  # noqa: F401, PLC0415 (loads the CUDA/ibverbs deps)
        except ImportError as e:
            reason = f"the mooncake-transfer-engine wheel does not import ({e})"
            head["skipped"] = {"mooncake-te": reason, "mooncake-store": reason}
            bench = Bench([])
        else:
            bench = Bench([cls(a, pkg, env) for name, cls in (("te", Engine), ("store", Store))
                           if not a.only or name in a.only])
            head["skipped"].update(bench.skipped)
        try:
            if not a.cmd:
                rows = []
                for pt in points(a):
                    rows += bench.point(*pt)
                head["skipped"].update(bench.skipped)
                print(json.dumps({**head, "rows": rows}), file=reply, flush=True)
                return 0
            print(json.dumps(head), file=reply, flush=True)
            with open(a.cmd) as cmd:
                for line in cmd:
                    if line.strip() == "quit":
                        break
                    size, batch, threads = (int(x) for x in line.split())
                    rows = bench.point(size, batch, threads)
                    print(json.dumps({"rows": rows, "skipped": bench.skipped}), file=reply,
                          flush=True)
        finally:
            bench.stop()
    finally:
        if reply is not sys.stdout:
            reply.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
