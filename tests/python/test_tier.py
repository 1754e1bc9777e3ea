"""The disk tier (`--tier posix`, docs/tiers.md) against real workers and
real files: spills under memory pressure read back, write-through across two
workers sharing one directory, kill -9 mid-write, corrupt and truncated
files, the capacity's LRU, the index rebuilt at start, unwritable and full
directories, a disk object pulled by a peer, DRAM reads served while the
disk is busy.

Every value is derived from its key (value_of), so any byte read is checked
without remembering what was written. Files are checked independently of
the worker: read_file() parses the on-disk format of src/disk/internal.h
(4096-byte header: magic, version, header length, key length, value size,
value xxh3, ctime, header xxh3 over [0, 56 + klen) with its own field
zeroed, the key; then the value).
"""
import errno
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest

import kvds
from conftest import KVDS_BIN, Worker, free_port, wait_for

MiB = 1 << 20
HDR = 4096


# ---- values, files, counters ------------------------------------------------

def value_of(key, size=None):
    """The value of key: pseudo-random bytes seeded by the key (size from
    the key's hash when not given, 1..256 KiB)."""
    h = hashlib.blake2b(key, digest_size=16).digest()
    seed = int.from_bytes(h[:8], "little")
    if size is None:
        size = 1 + int.from_bytes(h[8:12], "little") % (256 << 10)
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def digest(b):
    return hashlib.blake2b(b, digest_size=16).digest()


def kv_files(d):
    return sorted(glob.glob(os.path.join(str(d), "kvds", "??", "*.kv")))


def tmp_files(d):
    return sorted(glob.glob(os.path.join(str(d), "kvds", "??", ".*.tmp")))


class BadFile(Exception):
    pass


def read_header(path):
    """(key, value size, value checksum) of an object file's header, checked
    as the worker checks it; BadFile if it is not sound."""
    with open(path, "rb") as f:
        hdr = f.read(HDR)
        fsize = os.fstat(f.fileno()).st_size
    if len(hdr) < HDR:
        raise BadFile(f"{path}: {len(hdr)}-byte header")
    magic, ver, hlen, klen, rsv, size, vsum, _ctime, hsum = struct.unpack_from(
        "<8sIIIIQQQQ", hdr)
    if magic != b"KVDSOBJ\0" or ver != 1 or hlen != HDR or rsv != 0:
        raise BadFile(f"{path}: bad magic/version/length")
    if not 0 < klen <= HDR - 56:
        raise BadFile(f"{path}: key length {klen}")
    if kvds.checksum(hdr[:48] + b"\0" * 8 + hdr[56:56 + klen]) != hsum:
        raise BadFile(f"{path}: header checksum")
    if fsize != HDR + size:
        raise BadFile(f"{path}: {fsize} bytes for a {size}-byte value")
    return hdr[56:56 + klen], size, vsum


def read_file(path):
    """(key, value) of a sound object file (header and value checked)."""
    key, size, vsum = read_header(path)
    with open(path, "rb") as f:
        f.seek(HDR)
        value = f.read(size)
    if len(value) != size or kvds.checksum(value) != vsum:
        raise BadFile(f"{path}: value checksum")
    return key, value


def files_by_key(d):
    """key -> path of every sound object file under d."""
    out = {}
    for p in kv_files(d):
        try:
            out[read_header(p)[0]] = p
        except BadFile:
            pass
    return out


def stats(w):
    with kvds.Client(w.addr) as c:
        return c.stats()


def metrics(http_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics",
                                timeout=10) as r:
        text = r.read().decode()
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(kvds_disk_\w+) (\d+)$", text, re.M)}


def index_line(w):
    """(objects, bytes, files scanned, bad) of the log's "disk tier: ..."
    line."""
    m = re.search(r"disk tier: .*, (\d+) objects \((\d+) bytes\) indexed in "
                  r"\d+ ms \((\d+) files scanned, (\d+) bad\)", w.log())
    assert m, w.log()
    return tuple(int(x) for x in m.groups())


def requests_total(http_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics",
                                timeout=10) as r:
        m = re.search(r"^kvds_requests_total (\d+)$", r.read().decode(), re.M)
    assert m, "kvds_requests_total not in /metrics"
    return int(m.group(1))


def wait_request(http_port, action):
    """Runs action() and waits until the worker has received another
    request frame (HTTP requests are not counted)."""
    v0 = requests_total(http_port)
    action()
    wait_for(lambda: requests_total(http_port) > v0, "the request")


def disk_worker(make_worker, disk, policy, memory="64MiB", extra=()):
    return make_worker(memory, ["--disk-dir", str(disk), "--disk-policy", policy,
                                *extra])


def missing(c, k, **kw):
    try:
        c.get(k, **kw)
    except kvds.NotFound:
        return True
    return False


def get_or_none(c, k, **kw):
    try:
        return c.get(k, **kw)
    except kvds.NotFound:
        return None


def in_dram(c, prefix):
    return {k for k, _ in c.list(prefix, limit=None)}


# ---- 1. spill under memory pressure -------------------------------------------

def test_spill_and_read_back_under_pressure(make_worker, tmp_path):
    """A 32 MiB pool takes 80 MiB of 1 MiB values: the coldest are spilled
    ahead of eviction and read back (promoted) byte for byte; exists and
    lookup_prefix count the evicted ones. The writer (and the reader, whose
    promotions push the pool as well) waits for the spiller to stay within
    24 objects of it (counters, not sleeps), so no eviction may find an
    object without its disk copy: disk_spill_skipped stays 0."""
    disk = tmp_path / "disk"
    w = disk_worker(make_worker, disk, "spill", "32MiB")
    n, lag = 80, 24
    keys = [f"spill/{i:03d}".encode() for i in range(n)]
    sums = {}

    def pace(c, created):
        want = min(n, created - lag)
        wait_for(lambda: c.stats()["disk_spills"] >= want,
                 f"{want} spills after {created} objects")

    with kvds.Client(w.addr) as c:
        for i, k in enumerate(keys):
            pace(c, i)
            v = value_of(k, MiB)
            sums[k] = digest(v)
            c.put(k, v)
        st = c.stats()
        assert st["evictions"] > 0 and st["disk_spills"] > 0, st
        assert st["disk_spill_skipped"] == 0, st
        evicted = [k for k in keys if k not in in_dram(c, b"spill/")]
        assert len(evicted) >= n - 32, "the pool held more than it can"
        # the spiller settles once the cold half is on disk
        wait_for(lambda: len(kv_files(disk)) == c.stats()["disk_objects"]
                 == c.stats()["disk_spills"], "the spiller to settle")
        # evicted keys are still here for exists / lookup_prefix
        assert c.exists(evicted + [b"spill/absent"]) == [True] * len(evicted) + [False]
        assert c.lookup_prefix(keys) == n
        assert c.lookup_prefix(keys[:5] + [b"spill/absent"] + keys[5:]) == 5

        # DELETE of an evicted key removes its file
        gone = evicted.pop()
        path = files_by_key(disk)[gone]
        c.delete(gone)
        assert not os.path.exists(path) and c.exists([gone]) == [False]
        assert missing(c, gone)
        keys.remove(gone)
        n -= 1

        reads0 = st["disk_reads"]
        for i, k in enumerate(keys):
            pace(c, n + c.stats()["disk_reads"] - reads0)
            assert digest(c.get(k)) == sums[k], k
        st = c.stats()
    assert st["disk_reads"] - reads0 >= len(evicted), st
    assert st["disk_read_bytes"] >= st["disk_reads"] * MiB
    assert st["disk_spill_skipped"] == 0 and st["disk_corrupt"] == 0, st
    # every file on disk is sound and holds its key's value
    for p in kv_files(disk):
        k, v = read_file(p)
        assert digest(v) == sums[k], p
    w.stop()


# ---- 2. write-through, two workers, one directory -------------------------------

@pytest.mark.parametrize("policy_b", ["read-only", "write-through"])
def test_shared_directory(make_worker, tmp_path, policy_b):
    """A writes through, B (read-only, or write-through too) serves the same
    directory without peers: what A's put returned is on B at once (get,
    exists, lookup_prefix), a GET on B waiting before A's put gets the value
    when the file lands, and B (read-only) never removes A's files."""
    disk = tmp_path / "shared"
    a = disk_worker(make_worker, disk, "write-through", "32MiB")
    http_b = free_port()
    b = disk_worker(make_worker, disk, policy_b, "32MiB", ["--http-port", str(http_b)])
    keys = [f"shared/{i}".encode() for i in range(8)]
    with kvds.Client(a.addr) as ca, kvds.Client(b.addr) as cb:
        assert cb.exists(keys[:1]) == [False]
        for k in keys[:4]:
            ca.put(k, value_of(k))
            # the file is there when the put returns
            assert k in files_by_key(disk)
            assert cb.exists([k]) == [True]
            assert cb.get(k) == value_of(k)
        assert cb.lookup_prefix(keys[:4] + [b"shared/absent"]) == 4
        assert cb.exists(keys) == [True] * 4 + [False] * 4

        # B waits (wait_ms) for a key before A writes it
        got, connected, go = {}, threading.Event(), threading.Event()

        def reader():
            with kvds.Client(b.addr) as c:
                c.ping()
                connected.set()
                go.wait(10)
                try:
                    got["v"] = c.get(keys[4], wait_ms=15000)
                except kvds.KvdsError as e:
                    got["e"] = e

        t = threading.Thread(target=reader)
        t.start()
        assert connected.wait(10)
        wait_request(http_b, go.set)  # the GET reached B
        assert t.is_alive() and keys[4] not in files_by_key(disk)
        ca.put(keys[4], value_of(keys[4]))
        t.join(20)
        assert not t.is_alive()
        assert got.get("v") == value_of(keys[4]), got

        # a key put on A after B's index was built: exists first, then get
        ca.put(keys[5], value_of(keys[5]))
        assert cb.lookup_prefix(keys[:6]) == 6
        assert cb.get(keys[5]) == value_of(keys[5])

        if policy_b == "read-only":
            before = files_by_key(disk)
            # B's delete drops its DRAM copy (read from disk) but the file
            # stays (and serves the key again): KVDS_E_STATE says so
            with pytest.raises(kvds.KvdsError, match="KVDS_E_STATE"):
                cb.delete(keys[0])
            # a key only on disk (B never read it): refused, the file stays
            ca.put(keys[7], value_of(keys[7]))
            before = files_by_key(disk)
            assert cb.exists([keys[7]]) == [True]
            with pytest.raises(kvds.KvdsError):
                cb.delete(keys[7])
            assert files_by_key(disk) == before
            assert cb.get(keys[0]) == value_of(keys[0])  # from the file again
            assert cb.get(keys[7]) == value_of(keys[7])
            assert stats(b)["disk_writes"] == 0
        else:
            # both write through: B's puts are A's reads too
            cb.put(keys[6], value_of(keys[6]))
            assert ca.get(keys[6]) == value_of(keys[6])
    a.stop()
    b.stop()


# ---- 3. kill -9 mid-write ---------------------------------------------------

def check_dir_sound(disk):
    """Every .kv file is sound and holds its key's value; the keys found."""
    found = {}
    for p in kv_files(disk):
        k, v = read_file(p)  # raises BadFile
        assert v == value_of(k), f"{p}: wrong value for {k!r}"
        found[k] = p
    return found


@pytest.mark.parametrize("policy", ["write-through", "spill"])
def test_kill9_during_writes(make_worker, tmp_path, policy):
    """Two writer threads put values (derived from their keys) while the
    worker is killed -9 after a random number of acknowledged puts, three
    rounds on one directory. After each restart: the scan found no bad file,
    every .kv file is sound, every key readable has exactly its bytes, every
    key acknowledged by a write-through worker is readable, and a temporary
    file left by the kill is never served."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    disk = tmp_path / "disk"
    memory = "64MiB" if policy == "write-through" else "16MiB"
    acked, tried = set(), set()
    for rnd in range(3):
        w = disk_worker(make_worker, disk, policy, memory)
        objects, _, _, bad = index_line(w)
        assert bad == 0, f"seed {seed}: {w.log()}"
        found = check_dir_sound(disk)
        assert objects == len(found), f"seed {seed}"
        with kvds.Client(w.addr) as c:
            if policy == "write-through":
                lost = [k for k in acked if missing(c, k)]
                assert not lost, f"seed {seed}: acknowledged keys lost: {lost[:5]}"
            for k in sorted(tried):
                v = get_or_none(c, k)
                assert v is None or v == value_of(k), f"seed {seed}: {k!r}"
        # a temporary file's key (when its header made it) is served only
        # from a renamed, sound file
        for p in tmp_files(disk):
            try:
                k = read_header(p)[0]
            except BadFile:
                continue
            if k not in found:
                with kvds.Client(w.addr) as c:
                    assert missing(c, k), f"seed {seed}: {p} served"

        stop = threading.Event()

        def writer(tid):
            try:
                with kvds.Client(w.addr) as c:
                    for i in range(100000):
                        if stop.is_set():
                            return
                        k = f"k9/{rnd}/{tid}/{i}".encode()
                        tried.add(k)
                        c.put(k, value_of(k))
                        acked.add(k)
            except (kvds.KvdsError, OSError):
                pass  # the kill

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(2)]
        base = len(acked)
        for t in threads:
            t.start()
        target = base + rng.randrange(20, 200)
        wait_for(lambda: len(acked) >= target, "acknowledged puts", timeout=30)
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait()
        stop.set()
        for t in threads:
            t.join(10)
    w = disk_worker(make_worker, disk, policy, memory)
    assert index_line(w)[3] == 0, f"seed {seed}: {w.log()}"
    check_dir_sound(disk)
    with kvds.Client(w.addr) as c:
        if policy == "write-through":
            assert all(c.mget(sorted(acked))), f"seed {seed}"
        for k in sorted(tried):
            v = get_or_none(c, k)
            assert v is None or v == value_of(k), f"seed {seed}: {k!r}"
        assert c.stats()["disk_corrupt"] == 0
    w.stop()


# ---- 4. corruption ----------------------------------------------------------

def flip(path, off):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x40]))


def corrupt_three(disk, keys):
    """keys[0]: a byte of the value flipped; keys[1]: truncated mid-value;
    keys[2]: a byte of the header (the value size) flipped."""
    paths = files_by_key(disk)
    flip(paths[keys[0]], HDR + 12345)
    with open(paths[keys[1]], "r+b") as f:
        f.truncate(HDR + 1000)
    flip(paths[keys[2]], 25)
    return [paths[k] for k in keys[:3]]


@pytest.mark.parametrize("policy", ["write-through", "spill"])
def test_corrupt_files_running(make_worker, tmp_path, policy):
    """Files corrupted under a running worker whose DRAM copies were evicted:
    GET answers not found (never wrong bytes), kvds_disk_corrupt_total counts
    each file, the files are removed, the sound one is served."""
    disk, http = tmp_path / "disk", free_port()
    w = disk_worker(make_worker, disk, policy, "16MiB", ["--http-port", str(http)])
    keys = [f"bad/{i}".encode() for i in range(4)]
    with kvds.Client(w.addr) as c:
        for k in keys:
            c.put(k, value_of(k, 200000))
        # push them out of DRAM (with spill: onto disk first)
        for i in range(40):
            if policy == "spill":  # 16 MiB pool: see test_spill_and_read_back
                wait_for(lambda: c.stats()["disk_spills"] >= 4 + i - 14,
                         "spills")
            c.put(f"fill/{i}".encode(), value_of(b"fill", MiB))
        assert not in_dram(c, b"bad/")
        assert c.stats()["disk_spill_skipped"] == 0 or policy != "spill"
        assert set(keys) <= set(files_by_key(disk))
        paths = corrupt_three(disk, keys)
        for k in keys[:3]:
            assert missing(c, k), k
        assert c.get(keys[3]) == value_of(keys[3], 200000)
        assert metrics(http)["kvds_disk_corrupt_total"] == 3
        assert c.stats()["disk_corrupt"] == 3
        assert not any(os.path.exists(p) for p in paths)
        assert c.exists(keys) == [False] * 3 + [True]
        for k in keys[:3]:
            assert missing(c, k), k  # and stays so
    w.stop()


def test_corrupt_files_at_restart(make_worker, tmp_path):
    """The same with the worker stopped: the scan at start removes the
    truncated file and the bad header ("2 bad"), the flipped value is found
    by its checksum at the first GET (counted corrupt, removed)."""
    disk, http = tmp_path / "disk", free_port()
    w = disk_worker(make_worker, disk, "write-through", "32MiB")
    keys = [f"rbad/{i}".encode() for i in range(4)]
    with kvds.Client(w.addr) as c:
        for k in keys:
            c.put(k, value_of(k, 200000))
    w.stop()
    paths = corrupt_three(disk, keys)
    w = disk_worker(make_worker, disk, "write-through", "32MiB",
                    ["--http-port", str(http)])
    assert index_line(w)[0] == 2 and index_line(w)[3] == 2, w.log()
    assert not os.path.exists(paths[1]) and not os.path.exists(paths[2])
    with kvds.Client(w.addr) as c:
        for k in keys[:3]:
            assert missing(c, k), k
        assert c.get(keys[3]) == value_of(keys[3], 200000)
        # the two the scan found, and the one the GET found
        assert metrics(http)["kvds_disk_corrupt_total"] == 3
        assert not os.path.exists(paths[0])
        assert c.exists(keys) == [False] * 3 + [True]
    w.stop()


def test_corrupt_files_read_only(make_worker, tmp_path):
    """Read-only: corrupt files are not served, counted, and left alone
    (also by the scan of a read-only worker started on them)."""
    disk, http = tmp_path / "disk", free_port()
    w = disk_worker(make_worker, disk, "write-through", "32MiB")
    keys = [f"robad/{i}".encode() for i in range(4)]
    with kvds.Client(w.addr) as c:
        for k in keys:
            c.put(k, value_of(k, 200000))
    w.stop()
    r = disk_worker(make_worker, disk, "read-only", "32MiB", ["--http-port", str(http)])
    assert index_line(r)[0] == 4
    paths = corrupt_three(disk, keys)
    sizes = [os.path.getsize(p) for p in paths]
    with kvds.Client(r.addr) as c:
        for _ in range(2):
            for k in keys[:3]:
                assert missing(c, k), k
        assert c.get(keys[3]) == value_of(keys[3], 200000)
        assert metrics(http)["kvds_disk_corrupt_total"] >= 3
    assert [os.path.getsize(p) for p in paths] == sizes
    r.stop()
    r = disk_worker(make_worker, disk, "read-only", "32MiB")
    assert index_line(r)[3] == 2, r.log()  # bad headers seen, kept
    with kvds.Client(r.addr) as c:
        for k in keys[:3]:
            assert missing(c, k), k
        assert c.get(keys[3]) == value_of(keys[3], 200000)
    assert [os.path.getsize(p) for p in paths] == sizes
    r.stop()


# ---- 5. capacity ---------------------------------------------------------------

def test_capacity_keeps_the_newest(make_worker, tmp_path):
    """--disk-capacity 8MiB and twenty 1 MiB values: after every put the
    files fit the capacity, the least recently written go (disk_evictions),
    and the seven newest are what the directory holds (a read-only worker
    started on it serves exactly those)."""
    disk, cap = tmp_path / "disk", 8 * MiB
    w = disk_worker(make_worker, disk, "write-through", "64MiB",
                    ["--disk-capacity", "8MiB"])
    keys = [f"cap/{i:02d}".encode() for i in range(20)]
    fits = cap // (MiB + HDR)  # 7
    with kvds.Client(w.addr) as c:
        for k in keys:
            c.put(k, value_of(k, MiB))
            assert sum(os.path.getsize(p) for p in kv_files(disk)) <= cap
        st = c.stats()
    assert st["disk_evictions"] == len(keys) - fits, st
    assert st["disk_objects"] == fits and st["disk_bytes"] <= cap
    assert st["disk_capacity"] == cap
    assert set(files_by_key(disk)) == set(keys[-fits:])
    w.stop()
    r = disk_worker(make_worker, disk, "read-only", "64MiB")
    with kvds.Client(r.addr) as c:
        assert [get_or_none(c, k) is not None for k in keys] == \
            [False] * (len(keys) - fits) + [True] * fits
        for k in keys[-fits:]:
            assert c.get(k) == value_of(k, MiB)
    r.stop()


# ---- 6. restart rebuilds the index -------------------------------------------

def test_restart_rebuilds_the_index(make_worker, tmp_path):
    disk, http = tmp_path / "disk", free_port()
    w = disk_worker(make_worker, disk, "write-through", "64MiB")
    keys = [f"idx/{i:03d}".encode() for i in range(60)]
    with kvds.Client(w.addr) as c:
        c.mput(keys[:30], [value_of(k) for k in keys[:30]])
        for k in keys[30:]:
            c.put(k, value_of(k))
    w.stop()
    total = sum(os.path.getsize(p) for p in kv_files(disk))
    w = disk_worker(make_worker, disk, "write-through", "64MiB",
                    ["--http-port", str(http)])
    assert index_line(w)[:3] == (len(keys), total, len(keys))
    m = metrics(http)
    assert m["kvds_disk_objects"] == len(keys) and m["kvds_disk_bytes"] == total
    assert set(m) >= {
        "kvds_disk_objects", "kvds_disk_bytes", "kvds_disk_capacity_bytes",
        "kvds_disk_writes_total", "kvds_disk_write_bytes_total",
        "kvds_disk_write_errors_total", "kvds_disk_reads_total",
        "kvds_disk_read_bytes_total", "kvds_disk_corrupt_total",
        "kvds_disk_evictions_total", "kvds_disk_spills_total",
        "kvds_disk_spill_skipped_total"}, sorted(m)
    with kvds.Client(w.addr) as c:
        st = c.stats()
        assert st["disk_objects"] == len(keys) and st["disk_reads"] == 0
        assert c.exists(keys + [b"idx/absent"]) == [True] * len(keys) + [False]
        assert c.lookup_prefix(keys) == len(keys)
        assert in_dram(c, b"idx/") == set()
        assert c.mget(keys) == [value_of(k) for k in keys]
        assert c.stats()["disk_reads"] == len(keys)
    # what an operator sees: kvds status (text and JSON)
    out = subprocess.run([KVDS_BIN, "status", "--worker", w.addr], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("disk ")]
    assert len(line) == 1 and line[0].split()[1:3] == ["write-through,", str(len(keys))] \
        and f"{len(keys)} read back" in line[0], out
    js = json.loads(subprocess.run([KVDS_BIN, "status", "--worker", w.addr, "--json"],
                                   capture_output=True, text=True, timeout=30,
                                   check=True).stdout)
    assert js["disk_policy"] == 2 and js["disk_objects"] == len(keys) \
        and js["disk_reads"] == len(keys), js
    w.stop()


# ---- 7. unwritable directory, full disk ----------------------------------------

def start_fails(args, tmp_path):
    env = dict(os.environ, KVDS_RUN_DIR=str(tmp_path))
    r = subprocess.run([KVDS_BIN, "worker", "--listen", f"127.0.0.1:{free_port()}",
                        "--memory", "16MiB", *args], capture_output=True,
                       text=True, env=env, timeout=60)
    errors = [l for l in r.stderr.splitlines() if "[ERROR]" in l]
    return r.returncode, errors, r.stderr


def can_unshare():
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_unwritable_directory(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    bad = str(f / "disk")
    rc, errors, err = start_fails(["--disk-dir", bad], tmp_path)
    assert rc != 0
    assert len(errors) == 1 and bad in errors[0] and "Not a directory" in errors[0], err
    # read-only on a directory that is not there
    gone = str(tmp_path / "nowhere")
    rc, errors, err = start_fails(["--disk-dir", gone, "--disk-policy", "read-only"],
                                  tmp_path)
    assert rc != 0 and len(errors) == 1 and gone in errors[0], err
    assert not os.path.exists(gone)
    if not can_unshare():
        pytest.skip("unshare -m not permitted here: the read-only mount case")
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount -t tmpfs -o size=1m,ro tmpfs "$0" && exec "$@"', str(ro),
         KVDS_BIN, "worker", "--listen", f"127.0.0.1:{free_port()}", "--memory",
         "16MiB", "--disk-dir", str(ro), "--disk-policy", "write-through"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, KVDS_RUN_DIR=str(tmp_path)))
    errors = [l for l in r.stderr.splitlines() if "[ERROR]" in l]
    assert r.returncode != 0
    assert len(errors) == 1 and str(ro) in errors[0] and "Read-only" in errors[0], r.stderr


class TmpfsWorker(Worker):
    """A worker in a private mount namespace whose --disk-dir is a tmpfs of
    `size` (gone with the namespace when the worker exits)."""

    def __init__(self, run_dir, mnt, size, memory, extra):
        super().__init__(
            run_dir, memory, ["--disk-dir", str(mnt), *extra],
            prefix=["unshare", "-m", "--propagation", "private", "sh", "-c",
                    f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"',
                    str(mnt)])


@pytest.fixture
def tmpfs_worker(tmp_path):
    if not can_unshare():
        pytest.skip("unshare -m not permitted here (needs root / CAP_SYS_ADMIN)")
    started = []

    def start(size, memory, extra):
        mnt = tmp_path / f"mnt{len(started)}"
        mnt.mkdir()
        run = tmp_path / f"run{len(started)}"
        run.mkdir()
        w = TmpfsWorker(run, mnt, size, memory, extra)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def test_full_disk_write_through(tmpfs_worker):
    """A 4 MiB tmpfs: write-through puts beyond its space fail with ENOSPC,
    their DRAM copies stay sealed and readable, the worker keeps serving."""
    w = tmpfs_worker("4m", "64MiB", ["--disk-policy", "write-through"])
    keys = [f"full/{i}".encode() for i in range(8)]
    ok, failed = [], []
    with kvds.Client(w.addr) as c:
        for k in keys:
            try:
                c.put(k, value_of(k, MiB))
                ok.append(k)
            except kvds.KvdsOSError as e:
                assert e.errno == errno.ENOSPC, e
                failed.append(k)
        assert 1 <= len(ok) <= 3 and failed == keys[len(ok):], (ok, failed)
        for k in keys:
            assert c.get(k) == value_of(k, MiB)
        st = c.stats()
        assert st["disk_write_errors"] == len(failed), st
        assert st["disk_objects"] == len(ok), st
        # still serving: a small put fits what is left
        c.put(b"full/small", b"s" * 100)
        assert c.get(b"full/small") == b"s" * 100
        c.ping()
    w.stop()


def test_full_disk_spill(tmpfs_worker):
    """A 4 MiB tmpfs under a 16 MiB pool taking 48 MiB: spills beyond the
    space fail (disk_write_errors), evictions then lose objects
    (disk_spill_skipped), and whatever is read back is exact."""
    w = tmpfs_worker("4m", "16MiB", ["--disk-policy", "spill"])
    keys = [f"fspill/{i:02d}".encode() for i in range(48)]
    with kvds.Client(w.addr) as c:
        for i, k in enumerate(keys):
            c.put(k, value_of(k, MiB))
        st = c.stats()
        assert st["disk_write_errors"] > 0, st
        assert st["disk_spill_skipped"] > 0 and st["evictions"] > 0, st
        assert 1 <= st["disk_objects"] <= 3, st
        readable = 0
        for k in keys:
            v = get_or_none(c, k)
            assert v is None or v == value_of(k, MiB), k
            readable += v is not None
        assert readable >= st["disk_objects"]
        assert c.stats()["disk_corrupt"] == 0
        c.put(b"fspill/after", b"a" * 1000)
        assert c.get(b"fspill/after") == b"a" * 1000
    w.stop()


# ---- 8. cluster: a disk object pulled by a peer ---------------------------------

def test_peer_pulls_from_disk(make_worker, tmp_path):
    """A (spill, 16 MiB pool) and B name each other with --peers; keys put on
    A until the early ones are evicted to disk; B reads them (no hint:
    through the directory) with the right bytes."""
    pa, pb = free_port(), free_port()
    disk = tmp_path / "disk"
    a = make_worker("16MiB", ["--peers", f"127.0.0.1:{pb}", "--disk-dir", str(disk),
                              "--disk-policy", "spill"], port=pa)
    b = make_worker("64MiB", ["--peers", f"127.0.0.1:{pa}"], port=pb)
    keys = [f"peer/{i:02d}".encode() for i in range(40)]
    with kvds.Client(a.addr) as ca:
        for i, k in enumerate(keys):
            # 16 MiB pool: about 15 resident, the coldest 4 spilled
            wait_for(lambda: ca.stats()["disk_spills"] >= i - 13, "spills")
            ca.put(k, value_of(k, MiB))
        assert ca.stats()["disk_spill_skipped"] == 0
        early = [k for k in keys[:10] if k not in in_dram(ca, b"peer/")]
        assert early, "nothing was evicted"
        assert set(early) <= set(files_by_key(disk))
    with kvds.Client(b.addr) as cb:
        wait_for(lambda: all(cb.exists(early)), "the directory")
        for k in early:
            assert cb.get(k) == value_of(k, MiB), k
        assert cb.get(early[0], local=True) == value_of(early[0], MiB)  # a replica
    a.stop()
    b.stop()


def test_peer_reads_disk_after_restart(make_worker, tmp_path):
    """A (spill) holds 30 keys on disk and is restarted on its directory
    (same port, static --peers): every key A indexed at its scan is found
    by B through the directory and read with the right bytes."""
    pa, pb = free_port(), free_port()
    disk = tmp_path / "disk"
    args = ["--peers", f"127.0.0.1:{pb}", "--disk-dir", str(disk),
            "--disk-policy", "spill"]
    a = make_worker("16MiB", args, port=pa)
    b = make_worker("64MiB", ["--peers", f"127.0.0.1:{pa}"], port=pb)
    keys = [f"rpeer/{i:02d}".encode() for i in range(40)]
    with kvds.Client(a.addr) as ca:
        for i, k in enumerate(keys):
            wait_for(lambda: ca.stats()["disk_spills"] >= i - 13, "spills")
            ca.put(k, value_of(k, MiB))
    a.stop()
    a = make_worker("16MiB", args, port=pa)
    on_disk = sorted(files_by_key(disk))
    assert index_line(a)[0] == len(on_disk) >= 20
    try:
        with kvds.Client(b.addr) as cb:
            wait_for(lambda: all(cb.exists(on_disk)), "B to find A's disk keys",
                     timeout=8)
            for k in on_disk:
                assert cb.get(k) == value_of(k, MiB), k
    finally:
        a.stop()
        b.stop()


# ---- 9. DRAM reads while the disk is busy ----------------------------------------

def test_dram_reads_not_stalled_by_disk(make_worker, tmp_path):
    """While a thread does 4 MiB write-through puts (fsync per object, one
    disk thread), another client's DRAM reads of other keys are answered,
    correct, and some of them while a put is waiting for its file."""
    disk = tmp_path / "disk"
    w = disk_worker(make_worker, disk, "write-through", "128MiB",
                    ["--fsync", "object", "--disk-threads", "1", "--threads", "2"])
    hot = [f"hot/{i}".encode() for i in range(16)]
    with kvds.Client(w.addr) as c:
        c.mput(hot, [value_of(k) for k in hot])
    state = {"in_put": False, "done": False, "err": None}

    def writer():
        try:
            with kvds.Client(w.addr) as c:
                for i in range(12):
                    k = f"big/{i}".encode()
                    state["in_put"] = True
                    c.put(k, value_of(k, 4 * MiB))
                    state["in_put"] = False
        except Exception as e:  # reported below
            state["err"] = e
        finally:
            state["in_put"] = False
            state["done"] = True

    t = threading.Thread(target=writer)
    gets = during = 0
    with kvds.Client(w.addr) as c:
        t.start()
        while not state["done"]:
            k = hot[gets % len(hot)]
            before = state["in_put"]
            assert c.get(k) == value_of(k)
            if before and state["in_put"]:
                during += 1
            gets += 1
        t.join()
    assert state["err"] is None, state["err"]
    assert during > 0, f"{gets} gets, none while a put waited for the disk"
    assert stats(w)["disk_writes"] == len(hot) + 12
    w.stop()


def test_capacity_at_restart_keeps_the_newest(make_worker, tmp_path):
    """Twenty 1 MiB values written through with no capacity; a worker
    started on the directory with --disk-capacity 8MiB removes the least
    recently written at its scan and keeps the seven newest."""
    disk, cap = tmp_path / "disk", 8 * MiB
    w = disk_worker(make_worker, disk, "write-through", "64MiB")
    keys = [f"rcap/{i:02d}".encode() for i in range(20)]
    fits = cap // (MiB + HDR)
    with kvds.Client(w.addr) as c:
        for k in keys:
            c.put(k, value_of(k, MiB))
    w.stop()
    w = disk_worker(make_worker, disk, "write-through", "64MiB",
                    ["--disk-capacity", "8MiB"])
    assert stats(w)["disk_evictions"] == len(keys) - fits
    kept = set(files_by_key(disk))
    assert sorted(kept) == keys[-fits:], sorted(kept)
    w.stop()


def test_temporary_files_never_served(make_worker, tmp_path):
    """A file left under its temporary name (a writer killed between write
    and rename) is never served, whatever it holds: not at the scan, not by
    a GET or exists that looks for files the index lacks. The scan keeps
    young temporary files (a live writer on a shared directory may own
    them) and removes those older than an hour."""
    disk = tmp_path / "disk"
    w = disk_worker(make_worker, disk, "write-through", "32MiB")
    keys = [f"tmp/{i}".encode() for i in range(3)]
    with kvds.Client(w.addr) as c:
        for k in keys:
            c.put(k, value_of(k))
    w.stop()
    paths = files_by_key(disk)
    young, old = [], []
    for k, lst in ((keys[0], young), (keys[1], old)):
        p = paths[k]
        t = os.path.join(os.path.dirname(p),
                         "." + os.path.basename(p)[:32] + ".4242.7.tmp")
        os.rename(p, t)
        lst.append(t)
    os.utime(old[0], (1e9, 1e9))  # 2001
    w = disk_worker(make_worker, disk, "write-through", "32MiB")
    assert index_line(w)[:1] == (1,), w.log()
    assert os.path.exists(young[0]) and not os.path.exists(old[0])
    with kvds.Client(w.addr) as c:
        assert c.exists(keys) == [False, False, True]
        assert missing(c, keys[0]) and missing(c, keys[1])
        with pytest.raises(kvds.Timeout):  # looked for until the wait ends
            c.get(keys[0], wait_ms=300)
        assert c.get(keys[2]) == value_of(keys[2])
    assert os.path.exists(young[0])
    w.stop()


def test_shared_directory_sees_removals(make_worker, tmp_path):
    """A file another worker removed (A's DELETE) is no longer there for B:
    exists and lookup_prefix on B agree with B's GET."""
    disk = tmp_path / "shared"
    a = disk_worker(make_worker, disk, "write-through", "32MiB")
    b = disk_worker(make_worker, disk, "read-only", "32MiB")
    keys = [f"rm/{i}".encode() for i in range(3)]
    with kvds.Client(a.addr) as ca, kvds.Client(b.addr) as cb:
        for k in keys:
            ca.put(k, value_of(k))
        assert cb.exists(keys) == [True] * 3  # B indexes the files it finds
        ca.delete(keys[1])
        assert keys[1] not in files_by_key(disk)
        assert cb.exists(keys) == [True, False, True]
        assert cb.lookup_prefix(keys) == 1
        assert missing(cb, keys[1])
    a.stop()
    b.stop()


# ---- races a review found: concurrent reads and deletes ---------------------------

def test_concurrent_gets_of_a_disk_key(make_worker, tmp_path):
    """32 clients GET (no wait) the same keys that live on disk only, at
    once: every one gets the value — one of them reads it in, the others
    wait for that read's seal rather than being told it is absent."""
    disk = tmp_path / "disk"
    w = disk_worker(make_worker, disk, "write-through", "256MiB", ["--disk-threads", "4"])
    keys = [f"hot/{i}".encode() for i in range(4)]
    with kvds.Client(w.addr) as c:
        for k in keys:
            c.put(k, value_of(k, 8 * MiB))
    w.stop()
    for _ in range(2):
        w = disk_worker(make_worker, disk, "write-through", "256MiB",
                        ["--disk-threads", "4"])
        got, errors = [], []
        barrier = threading.Barrier(32)

        def one(k):
            with kvds.Client(w.addr) as c:
                barrier.wait()
                try:
                    got.append(digest(c.get(k)) == digest(value_of(k, 8 * MiB)))
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))
        ts = [threading.Thread(target=one, args=(keys[i % 4],)) for i in range(32)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert errors == [] and got == [True] * 32, errors
        assert stats(w)["disk_reads"] == len(keys)  # each read in once
        w.stop()


def test_delete_during_write_through(make_worker, tmp_path):
    """A DELETE answered while the PUT's file is still being written: the key
    does not come back from the disk once the write lands."""
    disk = tmp_path / "disk"
    w = disk_worker(make_worker, disk, "write-through", "512MiB", ["--fsync", "object"])
    k, val = b"victim", os.urandom(128 * MiB)
    done = {}

    def put():
        with kvds.Client(w.addr) as c:
            c.put(k, val)
            done["put"] = True
    th = threading.Thread(target=put)
    th.start()
    with kvds.Client(w.addr) as c:
        # the seal is in DRAM before the file is written (usually well before
        # the PUT returns: 128 MiB with an fsync); either way the key must
        # stay deleted
        wait_for(lambda: c.exists([k])[0] or "put" in done, "the seal in DRAM")
        c.delete(k)
        th.join()
        assert c.exists([k]) == [False] and missing(c, k)
        assert kv_files(disk) == []
    w.stop()


def test_delete_during_promotion(make_worker, tmp_path):
    """A DELETE while a GET reads the key in from disk: the delete succeeds
    (not KVDS_E_STATE), the file is gone and the key stays deleted."""
    disk = tmp_path / "disk"
    k = b"victim"
    for delay in (0.0, 0.01, 0.05):
        w = disk_worker(make_worker, disk, "write-through", "512MiB")
        with kvds.Client(w.addr) as c:
            c.put(k, value_of(k, 128 * MiB))
        w.stop()
        w = disk_worker(make_worker, disk, "spill", "512MiB")
        res = {}

        def get():
            with kvds.Client(w.addr) as c:
                try:
                    res["get"] = digest(c.get(k)) == digest(value_of(k, 128 * MiB))
                except kvds.NotFound:
                    res["get"] = "absent"
        th = threading.Thread(target=get)
        th.start()
        time.sleep(delay)
        with kvds.Client(w.addr) as c:
            c.delete(k)  # raises on any error (KVDS_E_STATE before the fix)
            th.join()
            assert res["get"] in (True, "absent"), res  # before or after: never wrong
            assert c.exists([k]) == [False] and missing(c, k)
        assert kv_files(disk) == []
        w.stop()
