#!/usr/bin/env python3
"""kvds soak test: a real etcd and N real workers under mixed load and chaos.

    make soak                       # SOAK_MINUTES (default 5), SOAK_ARGS
    .venv/bin/python scripts/soak.py --minutes 2 --workers 3 --seed 7

What it does (docs/testing.md, "Soak"):

* starts etcd (/usr/bin/etcd or $KVDS_ETCD_BIN) on free loopback ports with a
  private data directory, and --workers `kvds worker`s ($KVDS_BIN, default
  build/release/kvds), each on its own free port with its own KVDS_RUN_DIR,
  joined through that etcd (--lease-ttl, --cluster soak<pid>, -m);
* runs --threads client threads (half over shared memory, half over tcp://)
  doing puts, gets and batch gets through random workers, deletes and waits;
  every value is derived from its key, so every byte read is verified;
* meanwhile a chaos loop SIGSTOPs a worker past the lease TTL and resumes it,
  kill -9s a worker and restarts it on the same port, stops or kill -9s etcd
  and restarts it on the same data directory, or wipes etcd's data directory
  (etcd rebuilt);
* keeps a ledger: a key is acknowledged when its put returned success, and
  deleted when a delete of it returned success. A key is held by (worker,
  epoch) of the connection its put went through, and by every (worker, epoch)
  that later read it successfully (a cluster read leaves a sealed replica in
  the reader's worker). kill -9 ends an epoch. With --replicas 1 a key may be
  gone only when every (worker, epoch) known to hold it was killed; with
  --replicas N > 1 additionally only when at least min(N, workers) distinct
  workers were killed after its put;
* after the chaos stops and every worker's view is the same complete one, it
  reads every acknowledged, undeleted key from every worker.

Exit status 0 only if no byte read (during the run or at the end) was wrong,
no key was unexpectedly missing, the views converged, no client call hung, no
worker died by itself and every worker exited 0 when stopped at the end.
Everything started is stopped on exit, Ctrl-C, SIGTERM or failure (and the
children die with the script: PR_SET_PDEATHSIG). The work directory (logs) is
kept when the run fails, or with --keep.
"""
import argparse
import collections
import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import kvds  # the package of this tree: make python (.venv)

T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def log(msg):
    print(f"[soak {now():7.1f}s] {msg}", flush=True)


def free_port(taken):
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p not in taken:
            taken.add(p)
            return p


_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup():
    # Die with the thread that started us (the main thread: it lives until
    # the end), so nothing survives a kill -9 of the script.
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(argv, log_path, env=None):
    with open(log_path, "ab") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_child_setup)


def mark(path, text):
    """A line in a process's log, so its lines can be put next to the chaos."""
    with open(path, "ab") as f:
        f.write(f"=== soak {now():.3f}s: {text} ===\n".encode())


def tail(path, n=15):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join("    | " + l for l in lines[-n:])
    except OSError:
        return ""


def end_proc(p, sig=signal.SIGTERM, timeout=15.0):
    """Sends sig (after SIGCONT), waits, then SIGKILL. Returns the status."""
    if p is None:
        return None
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGCONT)
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


# ---- values derived from keys ------------------------------------------------

def value_size(key, vmax):
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    r = (h & 0xFFFF) / 65536.0
    x = h >> 16
    if r < 0.60:
        lo, hi = 100, 4096
    elif r < 0.95:
        lo, hi = 4096, 65536
    else:
        lo, hi = 65536, vmax
    hi = max(lo + 1, min(hi, vmax))
    return lo + x % (hi - lo)


def value_of(key, vmax):
    return hashlib.shake_256(b"kvds-soak:" + key).digest(value_size(key, vmax))


def diff(got, want):
    """First differing offset and number of differing bytes."""
    n = min(len(got), len(want))
    first = next((i for i in range(n) if got[i] != want[i]), n)
    bad = sum(1 for i in range(first, n) if got[i] != want[i]) + abs(len(got) - len(want))
    return first, bad


# ---- processes -------------------------------------------------------------

class Etcd:
    def __init__(self, bin_, work, ports):
        self.bin = bin_
        self.port = free_port(ports)
        self.peer_port = free_port(ports)
        self.addr = f"127.0.0.1:{self.port}"
        self.dir = os.path.join(work, "etcd.data")
        self.log = os.path.join(work, "etcd.log")
        self.proc = None

    def start(self, why="start"):
        mark(self.log, why)
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = spawn([self.bin, "--name", "soak", "--data-dir", self.dir,
                           "--listen-client-urls", client, "--advertise-client-urls", client,
                           "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                           "--initial-cluster", f"soak={peer}",
                           "--heartbeat-interval", "25", "--election-timeout", "250"],
                          self.log)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode} at start "
                                   f"(log {self.log}):\n{tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as r:
                    if b'"health":"true"' in r.read():
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not healthy after 30 s (log {self.log})")
            time.sleep(0.05)

    def stop(self, sig, why):
        mark(self.log, why)
        rc = end_proc(self.proc, sig)
        self.proc = None
        return rc


class Worker:
    def __init__(self, idx, args, work, ports, etcd_addr, cluster):
        self.idx = idx
        self.port = free_port(ports)
        self.addr = f"127.0.0.1:{self.port}"
        self.run_dir = os.path.join(work, f"w{idx}")
        os.makedirs(self.run_dir)
        self.log = os.path.join(self.run_dir, "worker.log")
        self.argv = [args.kvds, "worker", "--listen", self.addr, "--etcd_address", etcd_addr,
                     "--lease-ttl", str(args.lease_ttl), "--cluster", cluster,
                     "-m", args.memory]
        if args.replicas > 1:
            self.argv += ["--replicas", str(args.replicas)]
        self.env = dict(os.environ, KVDS_RUN_DIR=self.run_dir)
        self.env.pop("DS_WORKER_ADDR", None)
        self.proc = None
        self.epoch = None
        self.stopped = False  # SIGSTOPped

    def start(self, why="start"):
        mark(self.log, why)
        self.proc = spawn(self.argv, self.log, self.env)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.addr} exited with {self.proc.returncode} "
                                   f"at start (log {self.log}):\n{tail(self.log)}")
            try:
                with kvds.Client(self.addr, timeout_ms=1000) as c:
                    self.epoch = json.loads(c.cluster_status())["self"]["epoch"]
                mark(self.log, f"serving, epoch {self.epoch}, pid {self.proc.pid}")
                return
            except (kvds.KvdsError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.addr} not ready after 30 s (log {self.log})")
            time.sleep(0.05)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)


# ---- the ledger --------------------------------------------------------------

LIVE, LOST, DELETING, DELETED, DEL_UNCERTAIN, VANISHED = (
    "live", "lost", "deleting", "deleted", "delete-uncertain", "vanished")


class Rec:
    __slots__ = ("key", "size", "put_w", "holders", "kills_at_put", "state", "pos", "t_put")

    def __init__(self, key, size, put_w, epoch, kills_at_put):
        self.key = key
        self.size = size
        self.put_w = put_w
        self.holders = {(put_w, epoch)}
        self.kills_at_put = kills_at_put
        self.state = LIVE
        self.pos = -1
        self.t_put = now()


class Ledger:
    def __init__(self, nworkers, replicas):
        self.lock = threading.Lock()
        self.nw = nworkers
        self.replicas = replicas
        self.recs = []          # every acknowledged key
        self.live = []          # LIVE recs, for random choice
        self.live_bytes = 0
        self.killed = set()     # (worker, epoch) ended by kill -9
        self.kills = [0] * nworkers

    def _live_add(self, r):
        r.pos = len(self.live)
        self.live.append(r)
        self.live_bytes += r.size

    def _live_remove(self, r):
        last = self.live.pop()
        if last is not r:
            self.live[r.pos] = last
            last.pos = r.pos
        r.pos = -1
        self.live_bytes -= r.size

    def legit_lost(self, r):
        """True when every holder we know of was killed (and, with replicas,
        enough distinct workers were killed since the put)."""
        if any(h not in self.killed for h in r.holders):
            return False
        if self.replicas > 1:
            died = sum(1 for w in range(self.nw) if self.kills[w] > r.kills_at_put[w])
            return died >= min(self.replicas, self.nw)
        return True

    def _classify(self, r):
        if r.state in (LIVE, LOST):
            lost = self.legit_lost(r)
            if r.state == LIVE and lost:
                self._live_remove(r)
                r.state = LOST
            elif r.state == LOST and not lost:
                r.state = LIVE
                self._live_add(r)

    def acked(self, key, size, w, epoch, kills_at_put):
        r = Rec(key, size, w, epoch, kills_at_put)
        with self.lock:
            self.recs.append(r)
            self._live_add(r)
            self._classify(r)

    def kills_snapshot(self):
        with self.lock:
            return tuple(self.kills)

    def read_ok(self, r, w, epoch):
        with self.lock:
            if r.state in (LIVE, LOST):
                r.holders.add((w, epoch))
                self._classify(r)

    def pick(self, rng, k=1):
        with self.lock:
            if not self.live:
                return []
            return [self.live[rng.randrange(len(self.live))] for _ in range(k)]

    def take_for_delete(self, rng):
        with self.lock:
            if not self.live:
                return None
            r = self.live[rng.randrange(len(self.live))]
            self._live_remove(r)
            r.state = DELETING
            return r

    def killed_worker(self, w, epoch):
        with self.lock:
            self.killed.add((w, epoch))
            self.kills[w] += 1
            for r in list(self.live):
                self._classify(r)


# ---- the load ----------------------------------------------------------------

class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()
        self.errors = collections.defaultdict(collections.Counter)  # op -> error -> n
        self.failures = []  # (text) wrong bytes, vanished keys, hangs

    def inc(self, name, n=1):
        with self.lock:
            self.c[name] += n

    def err(self, op, e):
        name = getattr(e, "name", None) or type(e).__name__
        with self.lock:
            self.errors[op][name] += 1

    def fail(self, text):
        with self.lock:
            self.failures.append(f"{now():.1f}s {text}")
        log("FAILURE: " + text)


NOT_CONNECTED = ConnectionError("no connection")
NOT_CONNECTED.name = "no connection (connect failed)"
ABSENT = LookupError("absent")
ABSENT.name = "KVDS_E_NOTFOUND"


def err_name(e):
    return getattr(e, "name", None) or type(e).__name__


class Loader(threading.Thread):
    def __init__(self, tid, args, workers, ledger, counters, stop):
        super().__init__(name=f"load{tid}", daemon=True)
        self.tid = tid
        self.args = args
        self.workers = workers
        self.ledger = ledger
        self.k = counters
        self.stop = stop
        self.rng = random.Random(args.seed * 1000 + tid)
        self.tcp = tid % 2 == 1
        self.clients = {}
        self.n = 0
        self.busy_since = None  # monotonic time the current op began

    def client(self, w):
        ent = self.clients.get(w)
        if ent is not None:
            if ent[0].connected:
                return ent
            self.drop(w)
        wk = self.workers[w]
        addr = ("tcp://" if self.tcp else "") + wk.addr
        c = None
        try:
            c = kvds.Client(addr, timeout_ms=self.args.timeout_ms)
            epoch = json.loads(c.cluster_status())["self"]["epoch"]
        except (kvds.KvdsError, OSError) as e:
            self.k.err("connect", e)
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
            time.sleep(0.05)
            return None
        self.k.inc("connects")
        self.clients[w] = (c, epoch)
        return self.clients[w]

    def drop(self, w):
        ent = self.clients.pop(w, None)
        if ent:
            try:
                ent[0].close()
            except Exception:
                pass

    def after_error(self, w, e):
        ent = self.clients.get(w)
        if ent and not ent[0].connected:
            self.drop(w)
        if not isinstance(e, kvds.NotFound):
            time.sleep(0.02)

    def run(self):
        a = self.args
        budget = a.budget_bytes
        try:
            while not self.stop.is_set():
                self.busy_since = time.monotonic()
                r = self.rng.random()
                if self.ledger.live_bytes > budget:
                    op = "delete" if r < 0.5 else "get"
                elif r < 0.40:
                    op = "put"
                elif r < 0.75:
                    op = "get"
                elif r < 0.85:
                    op = "mget"
                elif r < 0.93:
                    op = "delete"
                else:
                    op = "wait"
                getattr(self, "op_" + op)()
                self.busy_since = None
        except Exception:
            self.k.fail(f"load thread {self.tid} crashed:\n{traceback.format_exc()}")
        finally:
            for w in list(self.clients):
                self.drop(w)

    def op_wait(self):
        time.sleep(self.rng.uniform(0, 0.05))

    def op_put(self):
        w = self.rng.randrange(len(self.workers))
        key = f"soak{self.args.seed}-t{self.tid}-{self.n:08d}".encode()
        self.n += 1
        val = value_of(key, self.args.value_max)
        kills = self.ledger.kills_snapshot()
        ent = self.client(w)
        if ent is None:
            self.k.inc("puts_failed")
            self.k.err("put", NOT_CONNECTED)
            return
        c, epoch = ent
        try:
            c.put(key, val)
        except (kvds.KvdsError, OSError) as e:
            self.k.inc("puts_failed")
            self.k.err("put", e)
            self.after_error(w, e)
            return
        self.k.inc("puts_ok")
        self.k.inc("bytes_put", len(val))
        self.ledger.acked(key, len(val), w, epoch, kills)

    def check(self, r, data, w, how):
        want = value_of(r.key, self.args.value_max)
        if data == want:
            return True
        first, bad = diff(data, want)
        self.k.inc("wrong_bytes_reads")
        self.k.fail(f"WRONG BYTES: {how} of {r.key.decode()} through worker {w} "
                    f"({self.workers[w].addr}): {len(data)} bytes, expected {len(want)}, "
                    f"first difference at {first}, {bad} bytes differ")
        return False

    def op_get(self):
        picked = self.ledger.pick(self.rng)
        if not picked:
            return self.op_wait()
        r = picked[0]
        w = self.rng.randrange(len(self.workers))
        ent = self.client(w)
        if ent is None:
            self.k.inc("gets_failed")
            self.k.err("get", NOT_CONNECTED)
            return
        c, epoch = ent
        try:
            data = c.get(r.key)
        except (kvds.KvdsError, OSError) as e:
            self.k.inc("gets_failed")
            self.k.err("get", e)
            self.after_error(w, e)
            return
        if self.check(r, data, w, "get"):
            self.k.inc("gets_ok")
            self.ledger.read_ok(r, w, epoch)

    def op_mget(self):
        recs = self.ledger.pick(self.rng, self.rng.randint(2, 16))
        recs = list({id(r): r for r in recs}.values())
        if len(recs) < 2:
            return self.op_get()
        w = self.rng.randrange(len(self.workers))
        ent = self.client(w)
        if ent is None:
            self.k.inc("gets_failed", len(recs))
            self.k.err("mget", NOT_CONNECTED)
            return
        c, epoch = ent
        try:
            vals = c.mget([r.key for r in recs])
        except (kvds.KvdsError, OSError) as e:
            self.k.inc("gets_failed", len(recs))
            self.k.err("mget", e)
            self.after_error(w, e)
            return
        for r, v in zip(recs, vals):
            if v is None:
                self.k.inc("gets_failed")
                self.k.err("mget", ABSENT)
            elif self.check(r, v, w, "mget"):
                self.k.inc("gets_ok")
                self.ledger.read_ok(r, w, epoch)

    def op_delete(self):
        r = self.ledger.take_for_delete(self.rng)
        if r is None:
            return self.op_wait()
        results = {}  # worker -> "ok" | "notfound" | error name
        epochs = {}
        for w in self.rng.sample(range(len(self.workers)), len(self.workers)):
            ent = self.client(w)
            if ent is None:
                results[w] = "not connected"
                continue
            c, epochs[w] = ent
            try:
                c.delete(r.key)
                results[w] = "ok"
            except kvds.NotFound:
                results[w] = "notfound"
            except (kvds.KvdsError, OSError) as e:
                results[w] = err_name(e)
                self.after_error(w, e)
        led = self.ledger
        with led.lock:
            if "ok" in results.values():
                r.state = DELETED
                outcome = "ok"
            elif all(v == "notfound" for v in results.values()):
                # Gone from every worker. Fine if every holder was killed; a
                # holder (worker, epoch) never killed that says NOTFOUND lost
                # an acknowledged key.
                alive = [(w, e) for (w, e) in r.holders
                         if (w, e) not in led.killed and epochs.get(w) == e]
                if alive and not led.legit_lost(r):
                    r.state = VANISHED
                    outcome = "vanished"
                else:
                    r.state = DELETED
                    outcome = "notfound"
            else:
                r.state = DEL_UNCERTAIN
                outcome = "uncertain"
        self.k.inc("deletes_" + outcome)
        for v in results.values():
            if v not in ("ok", "notfound"):
                with self.k.lock:
                    self.k.errors["delete"][v] += 1
        if outcome == "vanished":
            self.k.fail(f"VANISHED: {r.key.decode()} ({r.size} bytes, put to worker "
                        f"{r.put_w} at {r.t_put:.1f}s) was absent from every worker at "
                        f"delete, though holders {sorted(r.holders)} were never killed "
                        f"(delete answers {results})")


# ---- checks ------------------------------------------------------------------

def views(workers, timeout_ms=3000):
    """Each worker's (etcd state, frozenset of (id, epoch, state))."""
    out = []
    for wk in workers:
        try:
            with kvds.Client(wk.addr, timeout_ms=timeout_ms) as c:
                st = json.loads(c.cluster_status())
            out.append((st.get("etcd", {}).get("state"),
                        frozenset((m["id"], m["epoch"], m["state"]) for m in st["members"])))
        except (kvds.KvdsError, OSError) as e:
            out.append((err_name(e), frozenset()))
    return out


def wait_views(workers, timeout):
    want = frozenset((wk.addr, wk.epoch) for wk in workers)
    deadline = time.monotonic() + timeout
    while True:
        vs = views(workers)
        ok = all(es == "up" and frozenset((i, e) for i, e, _ in m) == want
                 and all(s in ("self", "up") for _, _, s in m) for es, m in vs)
        if ok:
            return True, vs
        if time.monotonic() > deadline:
            return False, vs
        time.sleep(0.2)


def final_check(args, workers, ledger, k):
    """Reads every acknowledged, undeleted key from every worker."""
    recs = [r for r in ledger.recs if r.state in (LIVE, LOST)]
    clients = []
    for wk in workers:
        try:
            clients.append(kvds.Client(wk.addr, timeout_ms=10000))
        except (kvds.KvdsError, OSError) as e:
            k.fail(f"final check: cannot connect to {wk.addr}: {err_name(e)}")
            raise
    res = {}
    try:
        def read_all(rs):
            for r in rs:
                want = value_of(r.key, args.value_max)
                out = res.setdefault(id(r), {})
                for w, c in enumerate(clients):
                    if out.get(w) == "ok":
                        continue
                    try:
                        data = c.get(r.key)
                        out[w] = "ok" if data == want else ("wrong", diff(data, want))
                    except (kvds.KvdsError, OSError) as e:
                        out[w] = err_name(e)
                        if not c.connected:
                            clients[w] = c = kvds.Client(workers[w].addr, timeout_ms=10000)
        read_all(recs)
        # keys gone from every worker after their holders were all killed are
        # what the ledger expects; every other key not read everywhere gets a
        # second pass (counted)
        again = [r for r in recs if any(v != "ok" for v in res[id(r)].values())
                 and not (all(v == "KVDS_E_NOTFOUND" for v in res[id(r)].values())
                          and ledger.legit_lost(r))]
        first_pass_bad = len(again)
        if again:
            log(f"final check: {len(again)} keys not read everywhere on the first pass "
                f"(and not expected lost); a second pass in 5 s")
            time.sleep(5)
            read_all(again)
        locs = {}
        for r in recs:
            if any(v != "ok" for v in res[id(r)].values()):
                try:
                    locs[id(r)] = clients[0].locate(r.key)
                except (kvds.KvdsError, OSError) as e:
                    locs[id(r)] = err_name(e)
    finally:
        for c in clients:
            try:
                c.close()
            except Exception:
                pass

    summary = collections.Counter()
    details = []
    for r in recs:
        out = res[id(r)]
        vals = list(out.values())
        if any(isinstance(v, tuple) for v in vals):
            summary["wrong_bytes"] += 1
            details.append(f"WRONG BYTES {r.key.decode()}: {out}")
        elif all(v == "ok" for v in vals):
            summary["readable_everywhere"] += 1
        elif not any(v == "ok" for v in vals) and all(v == "KVDS_E_NOTFOUND" for v in vals) \
                and ledger.legit_lost(r):
            summary["lost_every_holder_killed"] += 1
        else:
            kind = ("unexpectedly_missing" if not any(v == "ok" for v in vals)
                    else "missing_on_some_workers")
            summary[kind] += 1
            details.append(f"{kind.upper()} {r.key.decode()} ({r.size} B, put to w{r.put_w} "
                           f"at {r.t_put:.1f}s, holders {sorted(r.holders)}, "
                           f"legit_lost={ledger.legit_lost(r)}): reads {out}, "
                           f"locate {locs.get(id(r))}")
    summary["keys_checked"] = len(recs)
    summary["not_everywhere_on_first_pass"] = first_pass_bad
    return summary, details


# ---- main --------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float,
                   default=float(os.environ.get("SOAK_MINUTES") or 5),
                   help="load + chaos time (default $SOAK_MINUTES or 5)")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--replicas", type=int, default=1,
                   help="passed to the workers as --replicas N when N > 1")
    p.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    p.add_argument("--threads", type=int, default=4, help="client threads")
    p.add_argument("--memory", default="256MiB", help="each worker's pool")
    p.add_argument("--lease-ttl", type=int, default=2)
    p.add_argument("--value-max", type=int, default=512 * 1024)
    p.add_argument("--budget", type=float, default=0.3,
                   help="live acknowledged bytes kept below this share of one pool "
                        "(every worker may end up with a replica of each; no eviction)")
    p.add_argument("--timeout-ms", type=int, default=6000, help="every client call")
    p.add_argument("--chaos-pause", type=float, nargs=2, default=(2.0, 6.0),
                   metavar=("MIN", "MAX"), help="seconds between chaos events")
    p.add_argument("--no-chaos", action="store_true")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds to wait after the views agree")
    p.add_argument("--kvds", default=os.environ.get("KVDS_BIN")
                   or os.path.join(ROOT, "build", "release", "kvds"))
    p.add_argument("--etcd", default=os.environ.get("KVDS_ETCD_BIN") or "/usr/bin/etcd")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--inject-faults", action="store_true",
                   help="tests the soak itself: before the final check, removes one "
                        "acknowledged key from every worker and replaces another with "
                        "wrong bytes behind the ledger's back; the run must then FAIL")
    p.add_argument("--json", help="write the figures here as JSON")
    a = p.parse_args()
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 1 << 31)
    a.budget_bytes = int(a.budget * parse_size(a.memory))
    return a


def parse_size(s):
    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30}
    s = s.strip().lower()
    i = len(s)
    while i and not s[i - 1].isdigit():
        i -= 1
    return int(float(s[:i]) * units[s[i:]])


class Soak:
    def __init__(self, args):
        self.a = args
        self.work = tempfile.mkdtemp(prefix="kvds-soak-")
        self.etcd = None
        self.workers = []
        self.loaders = []
        self.stop_load = threading.Event()
        self.k = Counters()
        self.ledger = Ledger(args.workers, args.replicas)
        self.chaos = collections.Counter()
        self.timeline = []
        self.worker_exits = []  # nonzero final exits / crashes
        self.evictions = 0      # summed over incarnations
        self.rng = random.Random(args.seed)
        self.cleaned = False

    def event(self, text):
        self.timeline.append(f"{now():8.2f}s {text}")
        with open(os.path.join(self.work, "chaos.log"), "a") as f:
            f.write(self.timeline[-1] + "\n")

    def note_all(self, text):
        for wk in self.workers:
            mark(wk.log, text)
        if self.etcd:
            mark(self.etcd.log, text)

    def start(self):
        a = self.a
        # Restarts must run the binary we started with, even if the tree is
        # rebuilt meanwhile: run a private copy.
        binary = os.path.join(self.work, "kvds")
        shutil.copy2(a.kvds, binary)
        a.kvds = binary
        ports = set()
        self.etcd = Etcd(a.etcd, self.work, ports)
        self.etcd.start()
        cluster = f"soak{os.getpid()}"
        for i in range(a.workers):
            self.workers.append(Worker(i, a, self.work, ports, self.etcd.addr, cluster))
        for wk in self.workers:
            wk.start()
        ok, vs = wait_views(self.workers, 30)
        if not ok:
            raise RuntimeError(f"the workers never saw each other: {vs}")
        log(f"etcd {self.etcd.addr}, workers {[w.addr for w in self.workers]}, "
            f"cluster {cluster}, work dir {self.work}")

    def stats_of(self, wk):
        try:
            with kvds.Client(wk.addr, timeout_ms=2000) as c:
                return c.stats()
        except (kvds.KvdsError, OSError):
            return None

    # -- chaos events --
    def check_crashes(self):
        for wk in self.workers:
            if wk.proc.poll() is not None:
                self.k.fail(f"worker {wk.idx} ({wk.addr}) exited by itself with "
                            f"{wk.proc.returncode} (log {wk.log})")
                self.worker_exits.append((wk.idx, wk.proc.returncode, "during the run"))
                self.ledger.killed_worker(wk.idx, wk.epoch)
                wk.start("restart after crash")
        if self.etcd.proc.poll() is not None:
            self.k.fail(f"etcd exited by itself with {self.etcd.proc.returncode}")
            self.etcd.start("restart after crash")

    def chaos_stall(self):
        wk = self.rng.choice(self.workers)
        # past the TTL; sometimes past the clients' timeout too
        secs = self.a.lease_ttl + self.rng.uniform(1.0, 8.0)
        self.event(f"SIGSTOP w{wk.idx} for {secs:.1f}s")
        self.note_all(f"SIGSTOP w{wk.idx} ({wk.addr}) for {secs:.1f}s")
        wk.signal(signal.SIGSTOP)
        wk.stopped = True
        try:
            time.sleep(secs)
        finally:
            wk.signal(signal.SIGCONT)
            wk.stopped = False
            self.note_all(f"SIGCONT w{wk.idx}")
        self.chaos["worker_sigstop"] += 1

    def chaos_kill(self):
        wk = self.rng.choice(self.workers)
        st = self.stats_of(wk)
        if st:
            self.evictions += st["evictions"]
        self.event(f"kill -9 w{wk.idx} (epoch {wk.epoch})")
        self.note_all(f"kill -9 w{wk.idx} ({wk.addr}, epoch {wk.epoch})")
        self.ledger.killed_worker(wk.idx, wk.epoch)  # before the signal: see Ledger
        wk.signal(signal.SIGKILL)
        wk.proc.wait()
        time.sleep(self.rng.uniform(0.0, 2.0))
        wk.start(f"restart after kill -9 (same port {wk.port})")
        self.event(f"w{wk.idx} restarted, epoch {wk.epoch}")
        self.chaos["worker_kill9_restart"] += 1

    def chaos_etcd(self):
        sig = self.rng.choice([signal.SIGTERM, signal.SIGKILL])
        down = self.rng.uniform(0.5, 6.0)
        name = "etcd_sigterm_restart" if sig == signal.SIGTERM else "etcd_kill9_restart"
        self.event(f"etcd {sig.name}, down {down:.1f}s")
        self.note_all(f"etcd {sig.name}, down {down:.1f}s")
        self.etcd.stop(sig, f"{sig.name} by soak")
        time.sleep(down)
        self.etcd.start("restart (same data dir)")
        self.note_all("etcd back")
        self.chaos[name] += 1

    def chaos_wipe(self):
        down = self.rng.uniform(0.0, 3.0)
        self.event(f"etcd kill -9 + data dir wiped, down {down:.1f}s")
        self.note_all("etcd kill -9, data dir wiped (rebuilt)")
        self.etcd.stop(signal.SIGKILL, "SIGKILL by soak (wipe)")
        shutil.rmtree(self.etcd.dir, ignore_errors=True)
        time.sleep(down)
        self.etcd.start("start on an empty data dir (rebuilt)")
        self.note_all("etcd back (rebuilt)")
        self.chaos["etcd_wipe_rebuild"] += 1

    def progress(self):
        c = self.k.c
        log(f"puts {c['puts_ok']} ok/{c['puts_failed']} failed, gets {c['gets_ok']} ok/"
            f"{c['gets_failed']} failed, deletes {c['deletes_ok']}, live keys "
            f"{len(self.ledger.live)} ({self.ledger.live_bytes >> 20} MiB), lost "
            f"{sum(1 for r in self.ledger.recs if r.state == LOST)}, chaos "
            f"{sum(self.chaos.values())}")

    def run(self):
        a = self.a
        for t in range(a.threads):
            ld = Loader(t, a, self.workers, self.ledger, self.k, self.stop_load)
            self.loaders.append(ld)
            ld.start()
        end = time.monotonic() + a.minutes * 60
        next_progress = time.monotonic() + 30
        kinds = [(self.chaos_stall, 0.30), (self.chaos_kill, 0.25),
                 (self.chaos_etcd, 0.30), (self.chaos_wipe, 0.15)]
        while time.monotonic() < end:
            time.sleep(min(self.rng.uniform(*a.chaos_pause), max(0.0, end - time.monotonic())))
            self.check_crashes()
            if time.monotonic() >= end:
                break
            if not a.no_chaos:
                f = self.rng.choices([f for f, _ in kinds], [w for _, w in kinds])[0]
                f()
            self.check_hangs()
            if time.monotonic() >= next_progress:
                self.progress()
                next_progress += 30
        self.event("chaos and load stop")
        self.note_all("chaos and load stop")
        self.stop_load.set()
        deadline = time.monotonic() + 60
        for ld in self.loaders:
            ld.join(max(0.1, deadline - time.monotonic()))
            if ld.is_alive():
                self.k.fail(f"client thread {ld.tid} still busy 60 s after the stop: a hang")
        self.progress()

    def check_hangs(self):
        limit = 4 * self.a.timeout_ms / 1000 + 10  # a delete may touch every worker
        for ld in self.loaders:
            b = ld.busy_since
            if b is not None and time.monotonic() - b > limit * self.a.workers:
                self.k.fail(f"client thread {ld.tid} in one operation for "
                            f"{time.monotonic() - b:.0f} s: a hang")
                ld.busy_since = None

    def settle_and_check(self):
        self.check_crashes()
        ok, vs = wait_views(self.workers, 60)
        if not ok:
            self.k.fail(f"views did not converge within 60 s after the chaos: {vs}")
        else:
            log(f"views agree; waiting {self.a.settle} s")
        time.sleep(self.a.settle)
        for wk in self.workers:
            st = self.stats_of(wk)
            if st:
                self.evictions += st["evictions"]
                log(f"w{wk.idx}: {st['objects']} objects, {st['pool_used'] >> 20} MiB used, "
                    f"{st['evictions']} evictions, {st['nospace']} nospace")
        if self.a.inject_faults:
            self.inject_faults()
        summary, details = final_check(self.a, self.workers, self.ledger, self.k)
        # the check itself may evict (it makes replicas everywhere)
        ev_after = 0
        for wk in self.workers:
            st = self.stats_of(wk)
            if st:
                ev_after += st["evictions"]
        summary["evictions_during_check"] = ev_after
        return summary, details

    def inject_faults(self):
        live = [r for r in self.ledger.recs if r.state == LIVE]
        if len(live) < 2:
            return
        gone, bad = live[0], live[1]
        for wk in self.workers:
            with kvds.Client(wk.addr, timeout_ms=5000) as c:
                for r in (gone, bad):
                    try:
                        c.delete(r.key)
                    except kvds.NotFound:
                        pass
        time.sleep(1)  # the removals reach the homes
        want = value_of(bad.key, self.a.value_max)
        with kvds.Client(self.workers[0].addr, timeout_ms=5000) as c:
            c.put(bad.key, want[:-1] + bytes([want[-1] ^ 1]))
        log(f"injected: {gone.key.decode()} removed everywhere, {bad.key.decode()} "
            f"replaced with one wrong byte on w0")

    def cleanup(self):
        self.stop_load.set()
        if self.cleaned:
            return
        self.cleaned = True
        for wk in self.workers:
            if wk.proc is not None:
                running = wk.proc.poll() is None
                mark(wk.log, "SIGTERM by soak (end)")
                rc = end_proc(wk.proc)
                if running and rc != 0:
                    self.worker_exits.append((wk.idx, rc, "at the final stop"))
                    log(f"FAILURE: worker {wk.idx} exited with {rc} when stopped (log {wk.log})")
        if self.etcd is not None and self.etcd.proc is not None:
            self.etcd.stop(signal.SIGTERM, "SIGTERM by soak (end)")
        for ld in self.loaders:
            ld.join(1)

    def report(self, summary, details):
        a, c = self.a, self.k.c
        led = self.ledger
        states = collections.Counter(r.state for r in led.recs)
        fig = {
            "minutes": a.minutes, "workers": a.workers, "replicas": a.replicas,
            "seed": a.seed, "threads": a.threads, "memory": a.memory,
            "lease_ttl": a.lease_ttl,
            "puts_ok": c["puts_ok"], "puts_failed": c["puts_failed"],
            "bytes_put": c["bytes_put"],
            "gets_ok": c["gets_ok"], "gets_failed": c["gets_failed"],
            "deletes_ok": c["deletes_ok"], "deletes_notfound": c["deletes_notfound"],
            "deletes_uncertain": c["deletes_uncertain"],
            "deletes_vanished": c["deletes_vanished"],
            "connects": c["connects"],
            "errors": {op: dict(v) for op, v in self.k.errors.items()},
            "chaos": dict(self.chaos),
            "ledger_states": dict(states),
            "wrong_bytes_reads_during_run": c["wrong_bytes_reads"],
            "evictions_before_check": self.evictions,
            "worker_exits": self.worker_exits,
            **summary,
        }
        print()
        print("==== kvds soak: figures ====")
        print(f"  {a.minutes:g} min, {a.workers} workers x {a.memory}, --replicas "
              f"{a.replicas}, lease TTL {a.lease_ttl} s, {a.threads} client threads, "
              f"seed {a.seed}")
        print(f"  puts:    {c['puts_ok']} ok, {c['puts_failed']} failed "
              f"({c['bytes_put'] / 2**30:.2f} GiB acknowledged)")
        print(f"  gets:    {c['gets_ok']} ok (bytes verified), {c['gets_failed']} failed")
        print(f"  deletes: {c['deletes_ok']} ok, {c['deletes_notfound']} found nowhere "
              f"(every holder killed), {c['deletes_uncertain']} uncertain (errors), "
              f"{c['deletes_vanished']} vanished from a live holder")
        for op in sorted(self.k.errors):
            errs = ", ".join(f"{n} {e}" for e, n in self.k.errors[op].most_common())
            print(f"  {op} errors: {errs}")
        print("  chaos:   " + ", ".join(f"{n} {k}" for k, n in sorted(self.chaos.items())))
        print(f"  evictions: {self.evictions} before the check, "
              f"{summary.get('evictions_during_check', 0)} after it")
        print(f"  final check: {summary['keys_checked']} keys checked on every worker: "
              f"{summary['readable_everywhere']} readable everywhere, "
              f"{summary['lost_every_holder_killed']} lost with every holder killed, "
              f"{summary['unexpectedly_missing']} unexpectedly missing, "
              f"{summary['missing_on_some_workers']} missing on some workers only, "
              f"{summary['wrong_bytes']} with wrong bytes "
              f"({summary['not_everywhere_on_first_pass']} unexpectedly not everywhere on the "
              f"first pass)")
        print(f"  wrong bytes read during the run: {c['wrong_bytes_reads']}")
        for d in details[:50]:
            print("  " + d)
        if len(details) > 50:
            print(f"  ... {len(details) - 50} more")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(fig, f, indent=1)
        with open(os.path.join(self.work, "figures.json"), "w") as f:
            json.dump(fig, f, indent=1)
        bad = (summary["wrong_bytes"] or summary["unexpectedly_missing"]
               or summary["missing_on_some_workers"] or c["wrong_bytes_reads"]
               or self.k.failures or self.worker_exits)
        return not bad


def main():
    args = parse_args()
    if not os.access(args.kvds, os.X_OK):
        sys.exit(f"soak: no kvds binary at {args.kvds} (make build, or set KVDS_BIN)")
    if not os.access(args.etcd, os.X_OK):
        sys.exit(f"soak: no etcd at {args.etcd} (apt-get install etcd-server)")

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    s = Soak(args)
    ok = False
    try:
        s.start()
        log(f"load + chaos for {args.minutes:g} min (seed {args.seed})")
        s.run()
        summary, details = s.settle_and_check()
        s.cleanup()
        ok = s.report(summary, details)
        if s.k.failures:
            print("  failures:")
            for f in s.k.failures[:50]:
                print("   " + f)
    except KeyboardInterrupt:
        log("interrupted")
    except SystemExit as e:
        log(f"stopped by signal ({e.code})")
    except RuntimeError as e:
        print(f"soak: {e}", flush=True)
    except Exception:
        traceback.print_exc()
    finally:
        s.cleanup()
        if ok and not args.keep:
            shutil.rmtree(s.work, ignore_errors=True)
        else:
            print(f"soak: logs kept in {s.work} (chaos.log, etcd.log, w*/worker.log)")
    print("soak: PASS" if ok else "soak: FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
