"""The connector's pure parts, one at a time: key fingerprints, links that
back off, the thread pool, the stats container."""
import logging
import time
import types

import pytest

import kvds
from conftest import free_port
from kvds.vllm import keys
from kvds.vllm.link import Health, Link, Pool
from kvds.vllm.stats import KvdsStats, Recorder


def cfg(model="m", tp=1, pp=1, dtype="torch.float32", cache_dtype="auto", block=16,
        heads=4, hf=None, revision=None):
    hf = hf or {"hidden_size": 64, "num_hidden_layers": 2}
    hfc = types.SimpleNamespace(to_dict=lambda: dict(hf))
    return types.SimpleNamespace(
        model_config=types.SimpleNamespace(model=model, revision=revision, hf_config=hfc,
                                           dtype=dtype, quantization=None),
        cache_config=types.SimpleNamespace(cache_dtype=cache_dtype, block_size=block,
                                           calculate_kv_scales=False),
        parallel_config=types.SimpleNamespace(tensor_parallel_size=tp,
                                              pipeline_parallel_size=pp)), \
        types.SimpleNamespace(kv_cache_groups=[types.SimpleNamespace(
            kv_cache_spec=types.SimpleNamespace(block_size=block, num_kv_heads=heads,
                                                head_size=64, dtype=dtype))])


def fp(**kw):
    vc, kvcc = cfg(**kw)
    return keys.rank_fingerprint(keys.config_descriptor(vc, kvcc), [["l0", [4, 2], "f32"]])


def test_fingerprint_names_everything_that_changes_the_bytes():
    base = fp()
    assert base == fp() and len(base) == 16
    for change in ({"model": "other"}, {"tp": 2}, {"pp": 2}, {"dtype": "torch.bfloat16"},
                   {"cache_dtype": "fp8_e4m3"}, {"cache_dtype": "fp8_e5m2"}, {"block": 32},
                   {"heads": 2}, {"revision": "abc"},
                   {"hf": {"hidden_size": 64, "num_hidden_layers": 3}}):
        assert fp(**change) != base, change
    # what does not change the bytes does not change the key
    assert fp(hf={"hidden_size": 64, "num_hidden_layers": 2,
                  "transformers_version": "9.9", "_name_or_path": "/elsewhere"}) == base
    vc, kvcc = cfg()
    d = keys.config_descriptor(vc, kvcc)
    assert keys.rank_fingerprint(d, [["l0", [4, 2], "f32"]]) != \
        keys.rank_fingerprint(d, [["l0", [4, 2], "f16"]])
    assert keys.config_descriptor(vc, kvcc, model_id="shared/id")["model"] == "shared/id"


def test_prefixes_and_instance_fingerprint():
    assert keys.rank_prefix("ns", "org/m", "0123456789abcdef", 3, 1) == \
        "ns/org/m/0123456789abcdef/tp3/pp1/"
    assert keys.rank_prefix("ns", "m", "f" * 16, None, 0) == f"ns/m/{'f' * 16}/tp*/pp0/"
    a = {(0, 0): "p/a/", (0, 1): "p/b/"}
    assert keys.instance_fingerprint(a) == keys.instance_fingerprint(dict(reversed(a.items())))
    assert keys.instance_fingerprint(a) != keys.instance_fingerprint({(0, 0): "p/a/"})
    vc, _ = cfg(model="/very/long/" + "x" * 300)
    assert len(keys.model_name(vc)) == 120


def test_link_backs_off_and_health_warns_once_per_outage(caplog, make_worker):
    port = free_port()
    h = Health(f"127.0.0.1:{port}")
    link = Link(f"127.0.0.1:{port}", 1000, h, retry_s=0.2)
    with caplog.at_level(logging.INFO, logger="vllm.kvds"):
        assert link.get() is None
        t0 = time.monotonic()
        for _ in range(50):                       # backing off: no connect attempts
            assert link.get() is None
        assert time.monotonic() - t0 < 0.1
        time.sleep(0.25)
        assert link.get() is None                 # tried again, failed: 2 x back-off now
        assert link._fails == 2 and link._next_try - time.monotonic() > 0.3
        assert caplog.text.count("unreachable") == 1
        w = make_worker("16MiB", port=port)
        time.sleep(0.45)
        c = link.get()
        assert c is not None and c.connected and link._fails == 0
        assert caplog.text.count("reachable again") == 1
        w.stop()
        with pytest.raises(kvds.KvdsError):
            c.ping()
        link.failed()
        assert link.get() is None
        assert caplog.text.count("unreachable") == 2
    link.close()


def test_pool_runs_jobs_side_by_side_and_fails_the_rest_at_close():
    made = []

    class Job:
        def __init__(self, wait):
            self.wait, self.ran, self.failed = wait, None, None

        def run(self, link):
            self.ran = time.monotonic()
            time.sleep(self.wait)

        def fail(self, exc):
            self.failed = exc

    pool = Pool("t", 3, lambda: made.append(1) or types.SimpleNamespace(
        get=lambda: None, close=lambda: None))
    slow = [Job(0.5) for _ in range(3)]
    t0 = time.monotonic()
    for j in slow:
        pool.submit(j)
    queued = Job(0)
    pool.submit(queued)
    time.sleep(0.2)
    assert all(j.ran is not None and j.ran - t0 < 0.2 for j in slow)   # side by side
    assert len(made) == 3 and queued.ran is None                       # at most 3
    pool.close(5)
    assert queued.failed is not None and queued.ran is None
    with pytest.raises(RuntimeError):
        pool.submit(Job(0))


def test_stats_add_up_and_reset():
    r = Recorder()
    assert r.take() is None
    r.add(blocks_saved=3, bytes_saved=300)
    r.time("save_s", 0.002)
    s = r.take()
    assert s.data["blocks_saved"] == 3 and s.data["save_s"] == [0.002]
    assert r.take() is None                         # handed over: reset
    other = KvdsStats(data=dict(s.data, blocks_saved=2, save_s=[0.004]))
    s.aggregate(other)
    assert s.data["blocks_saved"] == 5 and sorted(s.data["save_s"]) == [0.002, 0.004]
    red = s.reduce()
    assert red["blocks_saved"] == 5 and red["save ms max"] == 4.0
    assert KvdsStats().is_empty() and not s.is_empty()


def test_warn_once_is_bounded(caplog):
    """A warning's kind may come from a request (a hint naming any worker):
    each kind is logged once, and past the remembered kinds at most once a
    minute, so a flood of distinct kinds neither floods the log nor grows
    memory."""
    from kvds.vllm.link import WarnOnce
    w = WarnOnce(cap=3)
    with caplog.at_level(logging.WARNING, logger="vllm.kvds"):
        for i in range(100):
            w(f"hint:{i % 5}", "kvds: hint %d", i % 5)
        for i in range(1000):
            w(f"flood:{i}", "kvds: flood %d", i)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["kvds: hint 0", "kvds: hint 1", "kvds: hint 2"]
    assert len(lines) == 4 and len(w._seen) == 3       # then one line for the rest


def test_pool_gives_a_burst_a_thread_each():
    """Jobs submitted together while one thread idles each get a thread (up
    to the size): a burst of waits runs side by side, not one after
    another."""
    class Job:
        def __init__(self):
            self.ran = None

        def run(self, link):
            self.ran = time.monotonic()
            time.sleep(0.5)

        def fail(self, exc):
            pass

    pool = Pool("t", 4, lambda: types.SimpleNamespace(get=lambda: None, close=lambda: None))
    pool.prestart(1)
    time.sleep(0.1)                                # the thread is idle now
    jobs = [Job() for _ in range(3)]
    t0 = time.monotonic()
    for j in jobs:
        pool.submit(j)
    time.sleep(0.3)
    assert all(j.ran is not None and j.ran - t0 < 0.3 for j in jobs)
    pool.close(5)
