"""Smoke test of `kvds bench peers` (src/cli/bench/peers.c, redis.c and
python/kvds/bench_peers_mooncake.py).

Runs `kvds bench peers --quick` and checks that every system's rows are
printed, each with a figure, or that the system is one printed skip with a
reason; that --json has the same rows; that a peer missing from the machine
is a printed skip (the run still succeeds and measures kvds); and that the
bench leaves nothing in its $TMPDIR. No speed is asserted.
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KVDS_BIN = os.environ.get("KVDS_BIN") or os.path.join(ROOT, "build", "release", "kvds")
TIMEOUT_S = 180

# (system, JSON op, text label) of every row the table can print
ROWS = [
    ("memcpy", "ceiling", "memcpy (ceiling)"),
    ("tcp", "ceiling", "raw TCP (ceiling)"),
    ("redis", "get", "redis MGET"),
    ("redis", "put", "redis MSET"),
    ("mooncake-te", "get", "mooncake TE read"),
    ("mooncake-te", "put", "mooncake TE write"),
    ("mooncake-store", "get", "mooncake store get"),
    ("mooncake-store", "put", "mooncake store put"),
    ("kvds-local", "get", "kvds local get+copy"),
    ("kvds-local", "put", "kvds local put"),
    ("kvds-pull", "get", "kvds pull B<-A"),
    ("kvds-tcp", "get", "kvds TCP client get"),
    ("kvds-tcp", "put", "kvds TCP client put"),
]
KVDS = {"kvds-local", "kvds-pull", "kvds-tcp"}
PEERS = ["redis", "mooncake-te", "mooncake-store"]
SHORT = {"redis": "redis", "mooncake-te": "mc-te", "mooncake-store": "mc-store"}
FIGURE = r"[0-9]+(\.[0-9]+)?"


def bench(tmp_path, *args, **env):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    e = dict(os.environ, KVDS_PYTHON=sys.executable, TMPDIR=str(tmpdir))
    e.setdefault("KVDS_PEERS_PATH", os.path.join(ROOT, ".venv", "peers"))
    e.pop("DS_WORKER_ADDR", None)
    e.update(env)
    p = subprocess.run([KVDS_BIN, "bench", "peers", "--quick", *args], capture_output=True,
                       text=True, timeout=TIMEOUT_S, env=e)
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert list(tmpdir.iterdir()) == [], "the bench left files in $TMPDIR"
    for line in p.stderr.splitlines():
        assert line.startswith("kvds bench peers: "), f"stray stderr line: {line!r}"
    return p.stdout


def skips_in_text(out):
    """{system: reason} of the table's skip lines."""
    return {m.group(1): m.group(2) for m in
            re.finditer(r"^(\S+)\s+skipped: (.+)$", out, re.M)}


def check_text(out):
    skipped = skips_in_text(out)
    for system in skipped:
        assert system in PEERS, f"{system} was skipped: kvds and the ceilings always run"
        assert skipped[system].strip(), f"{system}: a skip without a reason"
    lines = out.splitlines()
    for put, group in ((0, "GET, batch 8, 1 thread"), (1, "PUT, batch 8, 1 thread")):
        start = next(i for i, ln in enumerate(lines) if ln.startswith(group))
        end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()),
                   len(lines))
        block = lines[start + 1:end]
        for system, op, label in ROWS:
            if op != "ceiling" and op != ("put" if put else "get"):
                continue
            rows = [ln for ln in block if ln.startswith("  " + label)]
            if system in skipped:
                assert rows == [], f"{label}: a row although {system} was skipped"
                continue
            assert len(rows) == 1, f"{group}: no row '{label}' in\n" + "\n".join(block)
            assert re.fullmatch(r"\s+" + re.escape(label) + r"\s+" + FIGURE, rows[0]), rows[0]
            if system in KVDS:
                vs, i = [], block.index(rows[0]) + 1
                while i < len(block) and block[i].startswith("    vs "):
                    assert re.fullmatch(r"    vs .+\s" + FIGURE + "x", block[i]), block[i]
                    vs.append(block[i].split()[1])
                    i += 1
                want = ["memcpy" if system == "kvds-local" else "raw"] + \
                    [SHORT[p] for p in PEERS if p not in skipped]
                assert vs == want, f"{label}: ratio rows {vs}, want {want}"
    return skipped


def test_quick_table_and_json(tmp_path):
    skipped = check_text(bench(tmp_path))

    doc = json.loads(bench(tmp_path, "--json", "--threads", "1,2"))
    assert doc["skipped"].keys() <= set(PEERS)
    for reason in doc["skipped"].values():
        assert reason.strip()
    rows = doc["rows"]
    for system, op, _ in ROWS:
        for threads in (1, 2):
            got = [r for r in rows if r["system"] == system and r["op"] == op
                   and r["threads"] == threads]
            if system in doc["skipped"]:
                assert got == [], f"{system} rows although skipped"
                continue
            assert len(got) == 1, f"{system} {op} x{threads}: {got}"
            r = got[0]
            assert (r["size"], r["batch"]) == (1 << 20, 8)
            assert r["gbps"] > 0 and r["calls"] >= 3
            if system in KVDS:
                want = {"memcpy" if system == "kvds-local" else "tcp"} | \
                    {p for p in PEERS if p not in doc["skipped"]}
                assert set(r["vs"]) == want, f"{system} {op}: vs {set(r['vs'])}"
    # both runs found the same peers on this machine
    assert set(doc["skipped"]) == set(skipped)


def test_missing_peers_are_printed_skips(tmp_path):
    """No redis-server in $PATH and no Mooncake overlay: both are skip
    lines with their reason, and kvds and the ceilings are still measured."""
    empty = tmp_path / "bin"
    empty.mkdir()
    nope = tmp_path / "no-overlay"
    out = bench(tmp_path, "--seconds", "0.01", PATH=str(empty), KVDS_PEERS_PATH=str(nope),
                PYTHONNOUSERSITE="1", PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    skipped = check_text(out)
    assert "redis-server not found" in skipped.get("redis", ""), out
    if not _mooncake_importable():
        for system in ("mooncake-te", "mooncake-store"):
            assert system in skipped, out


def _mooncake_importable():
    """Whether this Python finds the wheel without the overlay."""
    p = subprocess.run([sys.executable, "-c", "import mooncake.store"], capture_output=True,
                       timeout=60)
    return p.returncode == 0
