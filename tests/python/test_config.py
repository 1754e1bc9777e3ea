"""`kvds worker` configuration: the disk tier's flags and `--config FILE`.

The disk tier's settings are seen through /status ("tier"), so these tests
hold whether or not the tier itself is wired into the worker:
  - the flags (and their underscore spellings) are in `kvds worker --help`;
  - a JSON file with disk keys (both spellings) and UCM's names
    (store_pipeline, storage_backends as a list, cache_buffer_capacity_gb)
    takes effect: tier, directory, capacity, policy, fsync, threads, pool
    size, I/O threads, eviction ratio in /status;
  - flags override the file wherever they stand, and a directory alone
    implies --tier posix;
  - bad files and bad tier settings fail with exit 2 and one stderr line
    naming the file and key, before anything exists: no socket, no pidfile,
    no disk directory.
"""
import json
import os
import subprocess
import urllib.request

import pytest

from conftest import KVDS_BIN, free_port

MiB = 1 << 20


def write_config(tmp_path, obj, name="kvds.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=1))
    return str(path)


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.load(r)


def test_help_lists_disk_flags():
    r = subprocess.run([KVDS_BIN, "worker", "--help"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    for flag in ("--tier dram|posix", "--disk-dir DIR", "--disk-capacity SIZE",
                 "--disk-policy spill|write-through|read-only",
                 "--fsync none|object", "--disk-threads N", "--config FILE",
                 "--disk_dir", "store_pipeline", "storage_backends",
                 "cache_buffer_capacity_gb"):
        assert flag in r.stdout, f"{flag!r} not in kvds worker --help"


def test_file_with_ucm_names_takes_effect(make_worker, tmp_path):
    http = free_port()
    disk = str(tmp_path / "disk")
    cfg = write_config(tmp_path, {
        "store_pipeline": "Cache|Posix",
        "storage_backends": [disk],
        "cache_buffer_capacity_gb": 0.0625,  # 64 MiB
        "disk_capacity": "1GiB",
        "disk-policy": "write-through",
        "fsync": "object",
        "disk_threads": 3,
        "threads": 2,
        "http-port": http,
        "eviction_ratio": 0.1,
    })
    w = make_worker(None, ["--config", cfg])
    try:
        st = status(http)
        assert st["tier"] == {"kind": "posix", "dir": disk, "capacity": 1 << 30,
                              "policy": "write-through", "fsync": "object",
                              "threads": 3}
        assert st["pool"]["capacity"] == 64 * MiB
        assert st["threads"] == 2
        assert st["eviction_ratio"] == pytest.approx(0.1)
    finally:
        w.stop()


def test_flags_override_file(make_worker, tmp_path):
    http = free_port()
    disk = str(tmp_path / "disk")
    cfg = write_config(tmp_path, {
        "memory": "32MiB", "threads": 3, "disk-dir": disk, "disk-threads": 5,
        "disk-policy": "read-only", "http_port": http,
    })
    # Flags before and after --config both win; --memory 48MiB comes from
    # make_worker, before everything else.
    w = make_worker("48MiB", ["--threads", "1", "--disk_threads", "4",
                              "--config", cfg, "--disk-policy", "spill"])
    try:
        st = status(http)
        assert st["threads"] == 1
        assert st["pool"]["capacity"] == 48 * MiB
        # No tier given: the directory implies posix.
        assert st["tier"] == {"kind": "posix", "dir": disk, "capacity": 0,
                              "policy": "spill", "fsync": "none", "threads": 4}
    finally:
        w.stop()


def test_default_tier_is_dram(make_worker):
    http = free_port()
    w = make_worker("32MiB", ["--http-port", str(http)])
    try:
        assert status(http)["tier"] == {
            "kind": "dram", "dir": "", "capacity": 0, "policy": "spill",
            "fsync": "none", "threads": 2}
    finally:
        w.stop()


BAD_JSON = '{\n  "threads": 2,\n  "memory" "4GiB"\n}\n'

# (file contents or None, extra flags, substrings of the one stderr line)
BAD = {
    "unknown-key": ({"threads": 2, "bogus_key": 1}, [],
                    ['"bogus_key"', "unknown key"]),
    "bad-json": (BAD_JSON, [], ["line 3, column"]),
    "not-an-object": ("[1, 2]", [], ["want a JSON object"]),
    "list-for-number": ({"threads": [2]}, [],
                        ['"threads"', "want a string or a number"]),
    "bad-number": ({"threads": "two"}, [], ['"threads"', "--threads", "'two'"]),
    "string-for-gb": ({"cache_buffer_capacity_gb": "32"}, [],
                      ['"cache_buffer_capacity_gb"', "want a number of GiB"]),
    "number-for-flag": ({"daemon": 1}, [], ['"daemon"', "true or false"]),
    "bad-policy": ({"disk-dir": "DISK", "disk_policy": "sometimes"}, [],
                   ['"disk_policy"', "spill, write-through or read-only"]),
    "nfs-pipeline": ({"store_pipeline": "Cache|Nfs", "storage_backends": "DISK"},
                     [], ["Cache|Nfs", '"Cache"', '"Cache|Posix"']),
    "two-backends": ({"storage_backends": ["DISK", "/tmp/other"]}, [],
                     ['"storage_backends"', "lists 2 directories"]),
    "same-option-twice": ({"disk-dir": "DISK", "storage_backends": "DISK"}, [],
                          ['"storage_backends"', "--disk-dir", '"disk-dir"']),
    "posix-without-dir-file": ({"tier": "posix"}, [],
                               ["--tier posix needs --disk-dir"]),
    "posix-without-dir-flag": (None, ["--tier", "posix"],
                               ["--tier posix needs --disk-dir"]),
    "dram-with-dir": ({"store_pipeline": "Cache", "storage_backends": "DISK"},
                      [], ["--disk-dir", "tier is dram", "--tier posix"]),
    "disk-flag-alone": (None, ["--disk-capacity", "1GiB"],
                        ["--disk-capacity", "tier is dram"]),
    "disk-threads-range": (None, ["--disk-dir", "DISK", "--disk-threads", "65"],
                           ["--disk-threads must be 1..64"]),
    "config-in-config": ({"config": "x.json"}, [], ['"config"']),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_a_usage_error(case, tmp_path):
    contents, flags, want = BAD[case]
    disk = str(tmp_path / "disk")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pidfile = tmp_path / "worker.pid"
    args = [KVDS_BIN, "worker", "--listen", f"127.0.0.1:{free_port()}",
            "--memory", "32MiB", "--pidfile", str(pidfile)]
    args += [f.replace("DISK", disk) for f in flags]
    cfg = None
    if contents is not None:
        text = contents if isinstance(contents, str) else json.dumps(contents)
        cfg = write_config(tmp_path, text.replace("DISK", disk))
        args += ["--config", cfg]
    env = dict(os.environ, KVDS_RUN_DIR=str(run_dir))
    r = subprocess.run(args, capture_output=True, text=True, timeout=10, env=env)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("kvds worker: "), line
    if cfg and case not in ("posix-without-dir-file", "dram-with-dir"):
        assert cfg in line, f"the file is not named: {line}"
    for w in want:
        assert w in line, f"{w!r} not in {line!r}"
    assert r.stdout == ""
    assert os.listdir(run_dir) == [], "something was created in the run dir"
    assert not pidfile.exists()
    assert not os.path.exists(disk)
