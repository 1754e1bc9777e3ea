"""KvdsConnector driven in vLLM 0.32.0's call order against a real kvds worker
(vllm_driver.py), for every supported KV layout."""
import itertools
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time

import pytest
from vllm.v1.request import RequestStatus

import kvds
from conftest import wait_for
from vllm_driver import BS, LAYOUTS, Engine, make_request

HERE = os.path.dirname(os.path.abspath(__file__))
CRASH_SCRIPT = os.path.join(HERE, "crash_consumer.py")

_ns = itertools.count()


@pytest.fixture
def ns(request):
    return f"t{next(_ns)}-{request.node.name}".replace("[", "-").replace("]", "").replace("/", "-")


def prompt(n, seed=1):
    return [(seed * 7919 + i * 31) % 500 + 3 for i in range(n)]


def objects(addr, namespace):
    with kvds.Client(addr) as c:
        return [k for k, _ in c.list(f"{namespace}/".encode(), limit=None)]


def pinned(addr):
    with kvds.Client(addr) as c:
        return c.stats()["pinned_objects"]




@pytest.fixture
def engines(worker):
    made = []

    def make(layout, **kw):
        e = Engine(kw.pop("addr", worker.addr), layout, **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_partial_tail_hit_data_equal(worker, engines, ns, layout):
    """3 full blocks + a 5-token tail: the second instance finds the 3
    blocks in its worker's pool, loads them inside the step (load_async
    "auto": a small hit), recomputes only the tail, and its paged cache
    equals the first's byte for byte; the partial tail block is never
    stored. The scheduler side's pins are all gone afterwards."""
    toks = prompt(3 * BS + 5)
    a = engines(layout, namespace=ns)
    a.add(make_request("a1", toks))
    a.run()
    assert a.matched["a1"] == (0, False)
    assert a.expected_ok(a.done["a1"])
    assert len(objects(worker.addr, ns)) == 3
    assert a.work.stats["blocks_saved"] == 3

    b = engines(layout, namespace=ns)
    b.add(make_request("b1", toks))
    b.run()
    assert b.matched["b1"] == (3 * BS, False)
    assert b.scheduled["b1"] == [5]                  # only the tail computed
    assert b.recv_reports == {} and b.send_reports == {}
    assert b.work.stats["blocks_loaded"] == 3 and not b.invalid_seen
    assert b.expected_ok(b.done["b1"])
    for i in range(3):
        assert b.block_bytes(b.blocks["b1"][i]) == a.block_bytes(a.blocks["a1"][i])
    assert len(objects(worker.addr, ns)) == 3        # nothing saved twice
    assert pinned(worker.addr) == 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", [True, "auto"])
def test_full_prompt_hit(worker, engines, ns, layout, mode):
    """A prompt of exactly 2 blocks: an async full hit (vLLM recomputes the
    last token), or a sync hit of every token but the last (whole blocks
    are copied; the last token's KV is computed again): one token computed
    either way."""
    toks = prompt(2 * BS, seed=2)
    a = engines(layout, namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns, load_async=mode)
    b.add(make_request("b", toks))
    b.run()
    assert b.matched["b"] == ((2 * BS, True) if mode is True else (2 * BS - 1, False))
    assert b.scheduled["b"] == [1]
    assert b.recv_reports == ({"b": 1} if mode is True else {})
    assert b.work.stats["blocks_loaded"] == 2
    assert b.expected_ok(b.done["b"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sync_load_leaves_a_token(worker, engines, ns, layout):
    """load_async=false: the hit leaves exactly one token to compute (vLLM
    asserts one), the load happens inside the step."""
    toks = prompt(2 * BS, seed=3)
    a = engines(layout, namespace=ns, load_async=False)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns, load_async=False)
    b.add(make_request("b", toks))
    b.run()
    assert b.matched["b"] == (2 * BS - 1, False)
    assert b.scheduled["b"] == [1]
    assert b.expected_ok(b.done["b"])
    assert b.work.stats["blocks_loaded"] == 2


def test_auto_mode_loads_large_hits_between_steps(worker, engines, ns):
    """load_async "auto": a hit larger than sync_load_max_mb is loaded on a
    load thread between steps, a smaller one inside the step."""
    toks = prompt(3 * BS + 1, seed=31)
    a = engines("bhnc", namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    big = engines("bhnc", namespace=ns, sync_load_max_mb=0)
    big.add(make_request("b", toks))
    big.run()
    assert big.matched["b"] == (3 * BS, True) and big.recv_reports == {"b": 1}
    small = engines("bhnc", namespace=ns)
    small.add(make_request("c", toks))
    small.run()
    assert small.matched["c"] == (3 * BS, False) and small.recv_reports == {}
    assert big.expected_ok(big.done["b"]) and small.expected_ok(small.done["c"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_abort_while_waiting_for_kv(worker, engines, ns, layout):
    """An aborted request whose async load is in flight is still reported
    finished exactly once; its blocks stay held until then; its pins go."""
    toks = prompt(3 * BS, seed=4)
    a = engines(layout, namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns, load_async=True)
    b.add(make_request("b", toks))
    b.step()                                   # lookup + load order
    assert "b" in b.remote
    b.abort("b")
    assert "b" in b.held
    b.run(until=lambda: "b" not in b.held)
    for _ in range(3):
        b.step()
    assert b.recv_reports == {"b": 1}
    assert len(b.free) == 63
    assert pinned(worker.addr) == 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", [True, False])
def test_load_failure_missing_block(worker, engines, ns, layout, mode):
    """A block deleted between lookup and load (a delete is not stopped by
    the lookup's pin) is reported through get_block_ids_with_load_errors —
    in the pass that finishes the async load, or in the step of a sync
    load; vLLM recomputes from it and the result is right."""
    toks = prompt(4 * BS + 3, seed=5)
    a = engines(layout, namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns, load_async=mode)
    r = make_request("b", toks)
    _delete_after_lookup(b, worker.addr, 2)
    b.add(r)
    b.run()
    assert b.matched["b"] == ((4 * BS, True) if mode else (4 * BS, False))
    assert b.recv_reports == ({"b": 1} if mode else {})
    assert b.invalid_seen == {b.blocks["b"][2]}
    assert b.scheduled["b"] == ([2 * BS + 3] if mode else [3, 2 * BS + 3])
    assert b.expected_ok(b.done["b"])


def test_lookup_pins_hold_against_eviction(make_worker, engines, ns):
    """What a lookup found stays in the pool until it is loaded: the pool
    is filled up twice over between the lookup and the load, and the load
    still gets every block (vLLM's default policy would fail the request
    otherwise)."""
    w = make_worker("8MiB")
    toks = prompt(3 * BS + 1, seed=32)
    a = engines("bhnc", addr=w.addr, namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines("bhnc", addr=w.addr, namespace=ns, load_async=True, policy="fail")
    lookup = b.sched.get_num_new_matched_tokens

    def lookup_then_flood(req, n):
        res = lookup(req, n)
        with kvds.Client(w.addr) as c:
            for i in range(64):
                c.put(f"{ns}-junk/{i}".encode(), bytes(256 << 10))
            assert c.stats()["evictions"] > 0
        return res

    b.sched.get_num_new_matched_tokens = lookup_then_flood
    b.add(make_request("b", toks))
    b.run()
    assert b.matched["b"] == (3 * BS, True)
    assert not b.invalid_seen and not b.errored and b.work.stats["blocks_loaded"] == 3
    assert b.expected_ok(b.done["b"])
    assert pinned(w.addr) == 0
    w.stop()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_failure_corrupt_block(worker, engines, ns, layout):
    """A block object that is not a kvds block (the right size, a wrong
    header) is refused, deleted, recomputed and saved again intact."""
    toks = prompt(2 * BS + 1, seed=6)
    a = engines(layout, namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns, load_async=True)
    r = make_request("b", toks)
    key = b.work.key_prefix + r.block_hashes[0].hex()
    with kvds.Client(worker.addr) as c:
        size = c.stat(key)["size"]
        c.delete(key)
        c.put(key, bytes(size))
    b.add(r)
    b.step()
    assert b.matched["b"] == (2 * BS, True)
    b.run()
    assert b.invalid_seen == {b.blocks["b"][0]}
    assert b.scheduled["b"] == [2 * BS + 1]
    assert b.expected_ok(b.done["b"])
    with kvds.Client(worker.addr) as c:            # the corrupt object is gone
        assert c.exists([key]) == [True]           # ... and saved again, intact
        assert c.get(key)[:8] == b"KVDSKV02"


def test_foreign_geometry_is_a_miss_not_a_deletion(worker, engines, ns):
    """An object under this instance's key whose header describes other
    tensors (a kvds block, but not of this geometry) is not used and not
    deleted."""
    toks = prompt(2 * BS + 1, seed=33)
    a = engines("bhnc", namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines("bhnc", namespace=ns, load_async=True)
    r = make_request("b", toks)
    key = b.work.key_prefix + r.block_hashes[0].hex()
    with kvds.Client(worker.addr) as c:
        good = c.get(key)
        c.delete(key)
        c.put(key, good[:16] + bytes(8) + good[24:])    # another descriptor checksum
    b.add(r)
    b.run()
    assert b.invalid_seen == {b.blocks["b"][0]} and b.expected_ok(b.done["b"])
    with kvds.Client(worker.addr) as c:
        assert c.get(key)[16:24] == bytes(8)            # still there, untouched


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_failure_worker_stopped(make_worker, engines, ns, layout):
    """The kvds worker goes away after the lookup: every block is reported,
    the request finishes receiving and is recomputed in full; the next
    requests are served without the store (misses, skipped saves) with no
    wait."""
    w = make_worker("32MiB")
    toks = prompt(3 * BS, seed=7)
    a = engines(layout, addr=w.addr, namespace=ns, client_timeout_ms=1000)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, addr=w.addr, namespace=ns, load_async=True, client_timeout_ms=1000)
    r = make_request("b", toks)
    lookup = b.sched.get_num_new_matched_tokens

    def lookup_then_stop(req, n):      # the worker goes after the lookup
        res = lookup(req, n)
        w.stop()
        return res

    b.sched.get_num_new_matched_tokens = lookup_then_stop
    b.add(r)
    b.run()
    assert b.matched["b"] == (3 * BS, True)
    assert b.recv_reports == {"b": 1}
    assert b.invalid_seen == set(b.blocks["b"])
    assert b.scheduled["b"] == [3 * BS]
    assert b.expected_ok(b.done["b"])
    b.sched.get_num_new_matched_tokens = lookup
    t0 = time.monotonic()
    b.add(make_request("b2", prompt(3 * BS, seed=34)))
    b.run()
    assert time.monotonic() - t0 < 2 and b.send_reports["b2"] == 1 and not b.held


# ---- hand-offs (prefill -> decode) ------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pd_producer_consumer_race(worker, engines, ns, layout):
    """Prefill (kv_producer) / decode (kv_consumer): the consumer is handed
    the producer's kv_transfer_params before the producer has sealed
    anything. Its lookup answers "not yet" (None: vLLM schedules the rest)
    while a probe waits for the seals; it then claims exactly the sealed
    blocks and loads them."""
    toks = prompt(3 * BS + 2, seed=8)
    p = engines(layout, role="kv_producer", namespace=ns)
    c = engines(layout, role="kv_consumer", namespace=ns, load_timeout_ms=10000)
    r = make_request("r", toks)
    params = p.handoff_params(r, 3)
    c.add(make_request("r", toks, kv_transfer_params=params))
    for _ in range(3):
        c.step()                               # blocks absent yet: asked again
    assert "r" not in c.matched and c.lookups["r"] >= 3 and c.waiting
    p.add(r)
    p.step()
    assert p.params["r"] == params and "r" in p.held     # delayed free
    p.run()
    assert p.send_reports == {"r": 1} and "r" not in p.held
    c.run()
    assert c.matched["r"] == (3 * BS, False)
    assert not c.invalid_seen and c.work.stats["blocks_loaded"] == 3
    assert c.scheduled["r"] == [2]
    assert c.expected_ok(c.done["r"])
    assert p.matched["r"] == (0, False)        # a producer never loads
    assert c.work.stats["blocks_saved"] == 0   # a consumer never saves
    assert pinned(worker.addr) == 0


@pytest.mark.parametrize("policy", ["recompute", "fail"])
def test_pd_handoff_partly_missing(worker, engines, ns, policy):
    """The producer stored 3 blocks but the 2nd is gone (its save failed,
    or it was evicted): the consumer claims the one block before the gap,
    loads it and computes the rest — also under vLLM's default policy
    "fail", which a claimed-but-missing block would turn into an error."""
    toks = prompt(3 * BS + 2, seed=35)
    p = engines("bhnc", role="kv_producer", namespace=ns)
    r = make_request("r", toks)
    p.add(r)
    p.run()
    with kvds.Client(worker.addr) as cl:
        cl.delete(p.work.key_prefix + r.block_hashes[1].hex())
    c = engines("bhnc", role="kv_consumer", namespace=ns, policy=policy,
                load_timeout_ms=300)
    t0 = time.monotonic()
    c.add(make_request("r", toks, kv_transfer_params=p.params["r"]))
    c.run()
    assert time.monotonic() - t0 < 5
    assert c.matched["r"] == (BS, False) and not c.errored and not c.invalid_seen
    assert c.scheduled["r"] == [2 * BS + 2] and c.expected_ok(c.done["r"])


@pytest.mark.parametrize("policy", ["recompute", "fail"])
def test_pd_consumer_deadline(worker, engines, ns, policy):
    """Params naming blocks that never come: the wait ends at its deadline,
    nothing is claimed, the request computes everything (no error under
    either policy)."""
    toks = prompt(2 * BS + 2, seed=9)
    p = engines("bhnc", role="kv_producer", namespace=ns)
    c = engines("bhnc", role="kv_consumer", namespace=ns, load_timeout_ms=300, policy=policy)
    r = make_request("r", toks)
    c.add(make_request("r", toks, kv_transfer_params=p.handoff_params(r, 2)))
    t0 = time.monotonic()
    c.run()
    assert 0.25 < time.monotonic() - t0 < 5
    assert c.matched["r"] == (0, False) and not c.invalid_seen and not c.errored
    assert c.scheduled["r"] == [2 * BS + 2] and c.expected_ok(c.done["r"])


def test_loads_are_independent(worker, engines, ns):
    """One hand-off whose blocks never come (a 4 s deadline) holds up no
    other request: a second hand-off, sealed meanwhile, and a plain prefix
    hit are loaded and finished long before the first one's deadline."""
    tw, tg, th = prompt(2 * BS + 1, seed=36), prompt(2 * BS + 1, seed=37), prompt(2 * BS + 1,
                                                                                   seed=38)
    p = engines("bhnc", role="kv_producer", namespace=ns)
    for rid, t in (("good", tg), ("hit", th)):
        p.add(make_request(rid, t))
    p.run()
    c = engines("bhnc", role="kv_both", namespace=ns, load_timeout_ms=4000, load_async=True)
    c.add(make_request("wait", tw, kv_transfer_params=p.handoff_params(make_request("x", tw), 2)))
    c.add(make_request("good", tg, kv_transfer_params=p.params["good"]))
    c.add(make_request("hit", th))
    t0 = time.monotonic()
    c.run(until=lambda: {"good", "hit"} <= set(c.done))
    assert time.monotonic() - t0 < 2
    assert c.matched["good"] == (2 * BS, True) and c.matched["hit"] == (2 * BS, True)
    assert "wait" not in c.done and "wait" not in c.matched
    c.run()
    assert 3.5 < time.monotonic() - t0 < 10 and c.matched["wait"] == (0, False)
    for rid in ("wait", "good", "hit"):
        assert c.expected_ok(c.done[rid])


def test_pd_params_name_blocks_and_hash(worker, engines, ns):
    """The producer's kv_transfer_params: its worker's member id, this
    instance's fingerprint, how many blocks it planned and the last one's
    hash; a consumer whose hashes differ (another PYTHONHASHSEED) does not
    wait for blocks that will never come."""
    toks = prompt(3 * BS + 2, seed=26)
    p = engines("bhnc", role="kv_producer", namespace=ns)
    r = make_request("r", toks)
    p.add(r)
    p.run()
    params = p.params["r"]
    with kvds.Client(worker.addr) as cl:
        me = json.loads(cl.cluster_status())["self"]["id"]
    assert params["kvds_worker"] == me and params["kvds_addr"] == worker.addr
    assert params["kvds_blocks"] == 3 and params["kvds_hash"] == r.block_hashes[2].hex()
    assert re.fullmatch(r"[0-9a-f]{16}", params["kvds_fp"])
    c = engines("bhnc", role="kv_consumer", namespace=ns, load_timeout_ms=30000)
    c.add(make_request("r", toks, kv_transfer_params=params))
    c.run()
    assert c.matched["r"] == (3 * BS, False) and c.expected_ok(c.done["r"])
    bad = dict(params, kvds_hash="00" * 32)             # hashed differently
    c2 = engines("bhnc", role="kv_consumer", namespace=ns + "-other", load_timeout_ms=30000)
    t0 = time.monotonic()
    c2.add(make_request("r2", toks, kv_transfer_params=bad))
    c2.run()
    assert time.monotonic() - t0 < 10                   # did not wait 30 s
    assert c2.matched["r2"] == (0, False) and c2.expected_ok(c2.done["r2"])


def test_hint_that_names_no_member_is_ignored(worker, engines, ns, caplog):
    """A hand-off may name any worker: one that is not a live member of the
    consumer's cluster is ignored with a warning (nothing connects to it)
    and the blocks are found the usual way."""
    toks = prompt(2 * BS + 1, seed=39)
    p = engines("bhnc", role="kv_producer", namespace=ns)
    r = make_request("r", toks)
    c = engines("bhnc", role="kv_consumer", namespace=ns, load_timeout_ms=10000)
    bad = dict(p.handoff_params(r, 2), kvds_worker="10.255.255.1:9")
    c.add(make_request("r", toks, kv_transfer_params=bad))
    for _ in range(3):
        c.step()                      # waiting for the blocks, through its own worker
    assert "r" not in c.matched
    assert "'10.255.255.1:9', which is not a live member" in caplog.text
    p.add(r)
    p.run()
    c.run()
    assert c.matched["r"] == (2 * BS, False) and c.expected_ok(c.done["r"])


# ---- producers: saves off the step, delayed frees always end ---------------


def test_saves_do_not_wait_for_the_worker(make_worker, engines, ns):
    """wait_for_save only queues: with the kvds worker frozen (SIGSTOP) the
    steps go on; the request's blocks stay held until its saves end —
    failed at the client deadline — and it is then reported finished
    exactly once. After SIGCONT (and the reconnect back-off) saves work
    again."""
    w = make_worker("32MiB")
    a = engines("bhnc", addr=w.addr, role="kv_producer", namespace=ns, client_timeout_ms=1500,
                reconnect_ms=200)
    a.add(make_request("warm", prompt(BS + 1, seed=40)))
    a.run()
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        a.add(make_request("a", prompt(3 * BS + 1, seed=41)))
        t0 = time.monotonic()
        for _ in range(3):
            a.step()
        assert time.monotonic() - t0 < 0.5          # the steps did not wait
        assert "a" in a.held                        # ... the free does
        a.run(timeout=20)
        assert a.send_reports == {"warm": 1, "a": 1} and not a.held
        assert time.monotonic() - t0 < 10
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    assert a.work.stats["blocks_saved"] == 1            # warm's; a's saves failed
    time.sleep(0.5)                                     # past the reconnect back-off
    a.add(make_request("b", prompt(2 * BS + 1, seed=42)))
    a.run(timeout=20)
    assert a.send_reports["b"] == 1 and a.work.stats["blocks_saved"] == 3
    wait_for(lambda: len(objects(w.addr, ns)) == 1 + 2, what="b's blocks saved")
    w.stop()


def test_frozen_worker_costs_one_lookup_timeout(make_worker, engines, ns):
    """A lookup inside the scheduler's step waits at most step_timeout_ms
    for a frozen worker; the requests after it are served as misses at
    once (the link backs off) until the worker answers again, and then
    hit."""
    w = make_worker("32MiB")
    toks = prompt(2 * BS + 1, seed=49)
    a = engines("bhnc", addr=w.addr, namespace=ns, step_timeout_ms=200, reconnect_ms=300)
    a.add(make_request("a", toks))
    a.run()
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        a.add(make_request("b", toks))
        a.step()
        assert 0.15 < time.monotonic() - t0 < 1.0         # one timeout
        t1 = time.monotonic()
        for i in range(5):
            a.add(make_request(f"c{i}", toks))
        a.step()
        assert time.monotonic() - t1 < 0.1                # backing off: no waits
        assert all(a.matched[f"c{i}"] == (0, False) for i in range(5))
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    time.sleep(0.8)
    a.add(make_request("d", toks))
    a.run(timeout=20)
    assert a.matched["d"] == (2 * BS, False) and a.expected_ok(a.done["d"])
    w.stop()


@pytest.mark.parametrize("fault", ["stopped", "killed", "pool-full"])
def test_producer_never_holds_blocks(make_worker, engines, ns, fault):
    """Whatever happens to the saves — the worker stopped before them, the
    worker killed while they run, a pool with no room — every request
    whose free was delayed is reported in finished_sending exactly once,
    and once the worker is back (restarted on the same address) saves
    work again."""
    w = make_worker("8MiB")
    port = w.port
    p = engines("bhnc", addr=w.addr, role="kv_producer", namespace=ns, client_timeout_ms=1000,
                reconnect_ms=200)
    n = 12
    if fault == "stopped":
        w.stop()
    elif fault == "pool-full":
        with kvds.Client(w.addr) as c:       # every byte being written: no room at all
            bufs = []
            while True:
                try:
                    bufs.append(c.create(f"{ns}-fill/{len(bufs)}".encode(), 256 << 10))
                except kvds.NoSpace:
                    break
            for i in range(n):
                p.add(make_request(f"r{i}", prompt(3 * BS + 1, seed=100 + i)))
            p.run(timeout=30)
            for b in bufs:
                b.abort()
    for i in range(n if fault != "pool-full" else 0):
        p.add(make_request(f"r{i}", prompt(3 * BS + 1, seed=100 + i)))
        p.step()
        if fault == "killed" and i == n // 2:
            w.proc.kill()
            w.proc.wait()
    p.run(timeout=30)
    assert p.send_reports == {f"r{i}": 1 for i in range(n)}
    assert not p.held and len(p.free) == 63
    if fault != "pool-full":
        from conftest import Worker
        w = Worker(w.run_dir, "8MiB", port=port)
    time.sleep(0.3)                           # past the reconnect back-off
    p.add(make_request("after", prompt(2 * BS + 1, seed=99)))
    p.run(timeout=30)
    assert p.send_reports["after"] == 1
    wait_for(lambda: any(k.endswith(make_request("x", prompt(2 * BS + 1, seed=99))
                                    .block_hashes[1].hex().encode())
                         for k in objects(w.addr, ns)), what="saves after the restart")
    w.stop()


def test_instance_starts_before_its_worker(tmp_path, ns):
    """The worker is not up when the instance starts: registration works
    (a warning, no exception), requests are served without the store, and
    once the worker appears the instance saves and loads through it."""
    from conftest import Worker, free_port
    port = free_port()
    addr = f"127.0.0.1:{port}"
    a = Engine(addr, "bhnc", namespace=ns, reconnect_ms=100)
    try:
        toks = prompt(2 * BS + 1, seed=43)
        a.add(make_request("before", toks))
        a.run()
        assert a.matched["before"] == (0, False) and a.send_reports == {"before": 1}
        w = Worker(tmp_path, "32MiB", port=port)
        try:
            time.sleep(0.2)
            a.add(make_request("after", toks))
            a.run()
            assert a.send_reports["after"] == 1
            wait_for(lambda: len(objects(w.addr, ns)) == 2, what="saves once the worker is up")
            b = Engine(addr, "bhnc", namespace=ns)
            b.add(make_request("b", toks))
            b.run()
            assert b.matched["b"] == (2 * BS, False) and b.expected_ok(b.done["b"])
            b.close()
        finally:
            w.stop()
    finally:
        a.close()


def test_mla_one_copy_for_all_tp_ranks(worker, engines, ns):
    """MLA: the key has no TP rank; rank 1 saves nothing and loads rank 0's."""
    toks = prompt(2 * BS + 1, seed=10)
    a0 = engines("mla", namespace=ns, tp_rank=0)
    a1 = engines("mla", namespace=ns, tp_rank=1)
    assert a0.work.key_prefix == a1.work.key_prefix and "/tp*/" in a0.work.key_prefix
    a1.add(make_request("a", toks))
    a1.run()
    assert objects(worker.addr, ns) == []
    a0.add(make_request("a", toks))
    a0.run()
    assert len(objects(worker.addr, ns)) == 2
    b1 = engines("mla", namespace=ns, tp_rank=1)
    b1.add(make_request("b", toks))
    b1.run()
    assert b1.work.stats["blocks_loaded"] == 2 and b1.expected_ok(b1.done["b"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layerwise_save(worker, engines, ns, layout):
    """use_layerwise: each layer is queued as save_kv_layer is called (the
    saver copies it while the next layer computes) and the objects are
    sealed after wait_for_save; the data round-trips."""
    toks = prompt(2 * BS + 1, seed=11)
    a = engines(layout, namespace=ns, use_layerwise=True)
    a.add(make_request("a", toks))
    a.run()
    assert a.work.stats["blocks_saved"] == 2
    b = engines(layout, namespace=ns)
    b.add(make_request("b", toks))
    b.run()
    assert b.work.stats["blocks_loaded"] == 2 and b.expected_ok(b.done["b"])


# ---- keys: a fleet of configurations on one worker ---------------------------


def test_key_scheme(worker, engines, ns):
    e = engines("bhnc", namespace=ns)
    r = make_request("x", prompt(BS))
    m = re.fullmatch(rf"{re.escape(ns)}/model/([0-9a-f]{{16}})/tp0/pp0/", e.work.key_prefix)
    assert m, e.work.key_prefix
    assert isinstance(r.block_hashes[0], bytes)
    e.add(r)
    e.run()
    assert objects(worker.addr, ns) == [(e.work.key_prefix + r.block_hashes[0].hex()).encode()]


def test_mixed_fleet_never_shares_or_deletes(worker, engines, ns):
    """Instances that differ in TP size, KV dtype, fp8 cache format, layout
    or model id store under different keys on one worker: none reads
    another's blocks, none deletes them, and a hand-off from another
    configuration is computed instead of waited for."""
    import torch
    toks = prompt(2 * BS + 1, seed=44)
    kinds = {"base": {}, "tp2": {"tp_size": 2}, "f16": {"dtype": torch.float16},
             "fp8": {"cache_dtype": "fp8_e4m3"}, "kv2": {"layout": "kv2-nhd"},
             "other-model": {"model_id": "other/model"}}
    made = {}
    for name, kw in kinds.items():
        kw = dict(kw)
        e = engines(kw.pop("layout", "bhnc"), namespace=ns, **kw)
        e.add(make_request(name, toks))
        e.run()
        made[name] = e
        assert e.matched[name] == (0, False), f"{name} read another configuration's blocks"
    prefixes = {e.work.key_prefix for e in made.values()}
    assert len(prefixes) == len(kinds)
    assert len(objects(worker.addr, ns)) == 2 * len(kinds)
    # the same configuration again: its own blocks, and only those
    for name, kw in kinds.items():
        kw = dict(kw)
        e = engines(kw.pop("layout", "bhnc"), namespace=ns, **kw)
        e.add(make_request(name + "-again", toks))
        e.run()
        assert e.matched[name + "-again"] == (2 * BS, False) and not e.invalid_seen
        assert e.expected_ok(e.done[name + "-again"])
    # a hand-off from another configuration: no wait, no load
    c = engines("bhnc", namespace=ns, role="kv_consumer", dtype=torch.float16,
                load_timeout_ms=30000)
    params = made["base"].handoff_params(make_request("y", toks), 2)
    t0 = time.monotonic()
    c.add(make_request("y", prompt(2 * BS + 1, seed=45), kv_transfer_params=params))
    c.run()
    assert time.monotonic() - t0 < 10 and c.matched["y"] == (0, False)
    assert len(objects(worker.addr, ns)) == 2 * len(kinds)


@pytest.mark.parametrize("layout", ["bhnc", "bhnc-strided"])   # gather and torch paths
def test_object_holds_no_stale_pool_bytes(make_worker, engines, ns, layout):
    """The header's padding is written (zeros), so a block object never
    carries bytes a previous object left in the pool."""
    # one PUT of half the pool: no per-connection cap below the pool
    w = make_worker("8MiB", ["--max-writing-per-conn", "8MiB"])
    e = engines(layout, addr=w.addr, namespace=ns)
    size = e.work.block_nbytes
    with kvds.Client(w.addr) as c:            # fill the pool with 0xff, free it
        junk = [f"junk/{i}".encode() for i in range((4 << 20) // size)]
        c.mput(junk, [b"\xff" * size] * len(junk))
        c.mdelete(junk)
    r = make_request("x", prompt(3 * BS, seed=30))
    e.add(r)
    e.run()
    with kvds.Client(w.addr) as c:
        for h in r.block_hashes[:3]:
            obj = c.get(e.work.key_prefix + h.hex())
            assert obj[:8] == b"KVDSKV02" and obj[24:64] == bytes(40)


def test_config_errors(tmp_path, monkeypatch):
    from kvds.vllm import parse_config
    with pytest.raises(ValueError, match="unknown config key 'bogus'"):
        parse_config({"bogus": 1}, env={})
    with pytest.raises(ValueError, match="'load_async' must be true, false or \"auto\""):
        parse_config({"load_async": "yes"}, env={})
    with pytest.raises(ValueError, match="'load_timeout_ms'"):
        parse_config({"load_timeout_ms": -1}, env={})
    with pytest.raises(ValueError, match="'max_parallel_loads' must be an integer >= 1"):
        parse_config({"max_parallel_loads": 0}, env={})
    assert parse_config({}, env={}).worker_addr == "127.0.0.1:31501"
    assert parse_config({}, env={}).load_async == "auto"
    assert parse_config({}, env={"DS_WORKER_ADDR": "h:1"}).worker_addr == "h:1"
    f = tmp_path / "kvds.json"
    f.write_text(json.dumps({"namespace": "fromfile", "load_timeout_ms": 7}))
    cfg = parse_config({"load_timeout_ms": 9}, env={"KVDS_CONFIG": str(f)})
    assert (cfg.namespace, cfg.load_timeout_ms) == ("fromfile", 9)
    f.write_text(json.dumps({"nope": 1}))
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        parse_config({}, env={"KVDS_CONFIG": str(f)})
    f.write_text("{")
    with pytest.raises(ValueError, match="cannot read KVDS_CONFIG"):
        parse_config({}, env={"KVDS_CONFIG": str(f)})
    # the connector fails at construction
    from vllm_driver import vllm_config
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
    from kvds.vllm import KvdsConnector
    with pytest.raises(ValueError, match="unknown config key"):
        KvdsConnector(vllm_config("kv_both", {"worker": "x"}), KVConnectorRole.SCHEDULER)


def test_unsupported_layout():
    import torch
    from kvds.vllm import detect_layout
    with pytest.raises(ValueError, match="unsupported KV cache shape"):
        detect_layout(torch.zeros(2, 3), 16)
    assert detect_layout(torch.zeros(8, 2, 16, 64), 16, 4).per_block == 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_prefill(worker, engines, ns, layout):
    """Prefill in chunks of 20 tokens: blocks are saved as they become full
    (cached-request path, blocks allocated step by step); a second instance
    loads them all."""
    toks = prompt(4 * BS + 7, seed=12)
    a = engines(layout, namespace=ns, chunk=20)
    a.add(make_request("a", toks))
    a.run()
    assert a.scheduled["a"] == [20, 20, 20, 11]
    assert a.expected_ok(a.done["a"])
    assert len(objects(worker.addr, ns)) == 4
    b = engines(layout, namespace=ns, chunk=20)
    b.add(make_request("b", toks))
    b.run()
    assert b.matched["b"] == (4 * BS, False) and b.scheduled["b"] == [7]
    assert b.expected_ok(b.done["b"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", [True, "auto"])
def test_tp2(worker, engines, ns, layout, mode):
    """TP=2: each rank stores its own objects (MLA: rank 0 only, shared); a
    block counts as found only when every rank's object is there; vLLM's
    KVOutputAggregator sees every request finished on both ranks."""
    toks = prompt(3 * BS + 1, seed=13)
    a = engines(layout, namespace=ns, tp=2)
    a.add(make_request("a", toks))
    a.run()
    assert a.send_reports == {"a": 1}
    assert len(objects(worker.addr, ns)) == (3 if layout == "mla" else 6)
    if layout != "mla":        # rank 1's copy of block 2 goes: 2 blocks found
        r = make_request("x", toks)
        with kvds.Client(worker.addr) as c:
            c.delete(a.works[1].key_prefix + r.block_hashes[2].hex())
    b = engines(layout, namespace=ns, tp=2, load_async=mode)
    b.add(make_request("b", toks))
    b.run()
    n = 3 if layout == "mla" else 2
    assert b.matched["b"] == (n * BS, mode is True) and not b.invalid_seen
    assert b.recv_reports == ({"b": 1} if mode is True else {})
    assert b.scheduled["b"] == [len(toks) - n * BS]
    assert [w.stats["blocks_loaded"] for w in b.works] == [n, n]
    assert b.expected_ok(b.done["b"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_abort_before_scheduling(worker, engines, ns, layout):
    """A request aborted before its first schedule: request_finished on a
    request the connector never saw frees at once and reports nothing."""
    e = engines(layout, namespace=ns)
    e.add(make_request("x", prompt(2 * BS, seed=14)))
    e.abort("x")
    assert "x" not in e.held and e.params["x"] is None
    e.run()
    assert e.recv_reports == {} and e.send_reports == {}
    assert e.work.stats == {"blocks_loaded": 0, "blocks_saved": 0, "load_errors": 0}


def _delete_after_lookup(engine, addr, index):
    """Makes the engine's lookups delete block `index` of the request right
    after the lookup found it (a delete, unlike an eviction, is not held
    off by the lookup's pin)."""
    lookup = engine.sched.get_num_new_matched_tokens

    def lookup_then_delete(req, n):
        res = lookup(req, n)
        if res[0]:
            with kvds.Client(addr) as c:
                try:
                    c.delete(engine.work.key_prefix + req.block_hashes[index].hex())
                except kvds.NotFound:
                    pass
        return res

    engine.sched.get_num_new_matched_tokens = lookup_then_delete


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_failure_policy_fail(worker, engines, ns, layout):
    """kv_load_failure_policy="fail" (vLLM 0.32's default): the request whose
    block failed to load finishes with an error instead of computing on bad
    KV; every block is freed; the failed block is not offered again, so the
    same prompt then loads the good prefix and computes the rest."""
    toks = prompt(4 * BS + 3, seed=20)
    a = engines(layout, namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns, policy="fail", load_async=True)
    assert b.policy == "fail"
    _delete_after_lookup(b, worker.addr, 2)
    b.add(make_request("b", toks))
    b.run()
    assert b.errored == {"b"} and b.done["b"].status == RequestStatus.FINISHED_ERROR
    assert b.done["b"].num_output_tokens == 0          # nothing computed on bad KV
    assert b.recv_reports == {"b": 1} and b.invalid_seen == {b.blocks["b"][2]}
    assert not b.held and len(b.free) == 63
    b.sched.get_num_new_matched_tokens = type(b.sched).get_num_new_matched_tokens.__get__(b.sched)
    b.add(make_request("b2", toks))
    b.run()
    assert b.matched["b2"] == (2 * BS, True)           # stops before the bad block
    assert b.scheduled["b2"] == [2 * BS + 3] and "b2" not in b.errored
    assert b.expected_ok(b.done["b2"])


@pytest.mark.parametrize("policy", ["recompute", "fail"])
@pytest.mark.parametrize("load_async", [True, False])
def test_load_failure_both_policies_sync_and_async(worker, engines, ns, policy, load_async):
    """Both policies with both load modes: recompute gives the right KV;
    fail finishes the request with an error and frees everything."""
    toks = prompt(3 * BS + 5, seed=21)
    a = engines("bhnc", namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines("bhnc", namespace=ns, policy=policy, load_async=load_async,
                load_timeout_ms=200)
    _delete_after_lookup(b, worker.addr, 1)
    b.add(make_request("b", toks))
    b.run()
    assert b.matched["b"] == (3 * BS, load_async)
    assert b.invalid_seen == {b.blocks["b"][1]}
    assert not b.held and len(b.free) == 63
    if policy == "fail":
        assert b.errored == {"b"} and b.done["b"].num_output_tokens == 0
    else:
        assert not b.errored and b.done["b"].num_output_tokens == 1
        assert b.scheduled["b"][-1] == 2 * BS + 5      # recomputed from block 1
        assert b.expected_ok(b.done["b"])


def _preempt_in_flight(e, ta, tb):
    """Async scheduling: A's first chunk is scheduled (its two full blocks
    planned for saving); before that step has run, a higher-priority B
    preempts A and is given A's blocks. Returns (a, st1, st2)."""
    a = make_request("a", ta, max_tokens=2)
    e.add(a)
    st1 = e.schedule()                                  # step 1: A's blocks 0-1
    assert [h for h, _ in st1.so.kv_connector_metadata.saves["a"]] == \
        [h.hex() for h in a.block_hashes[:2]]
    a_blocks = list(e.blocks["a"])
    e.preempt("a")
    e.waiting.remove(a)                                 # B goes first
    e.free = a_blocks + [b for b in e.free if b not in a_blocks]
    e.add(make_request("b", tb))
    st2 = e.schedule()                                  # step 2: B in A's blocks
    assert e.blocks["b"][:2] == a_blocks[:2]
    assert st2.so.preempted_req_ids == {"a"}
    e.waiting.insert(0, a)
    return a, st1, st2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_preemption_during_inflight_save(worker, engines, ns, layout):
    """A's saves were queued by step 1; step 2 preempted A and hands its
    blocks to B. The saver has copied A's blocks before step 2 overwrites
    them (waited for here), so A's objects hold A's KV and A resumes by
    loading them; a third instance loads all of A's blocks, right."""
    ta, tb = prompt(3 * BS + 4, seed=22), prompt(2 * BS + 4, seed=23)
    e = engines(layout, namespace=ns, chunk=2 * BS)
    a, st1, st2 = _preempt_in_flight(e, ta, tb)
    out1 = e.execute(st1)                               # A computed, saves queued
    wait_for(e.saver_idle, what="A's saves")
    e.update(st1, out1)
    out2 = e.execute(st2)                               # B overwrites
    e.run(async_sched=True, prev=(st2, out2))           # step 2's output: after step 3 is scheduled
    assert a.num_preemptions == 1 and e.done["a"].num_output_tokens == 2
    assert e.matched["a"] == (0, False)
    assert e.work.stats["blocks_loaded"] == 2           # A reloaded its 2 saved blocks
    assert e.expected_ok(e.done["b"]) and e.expected_ok(e.done["a"])
    c = engines(layout, namespace=ns)
    c.add(make_request("c", ta))
    c.run()
    assert c.matched["c"] == (3 * BS, False) and c.work.stats["load_errors"] == 0
    assert c.expected_ok(c.done["c"])


def test_preemption_cancels_saves_stuck_on_the_worker(make_worker, engines, ns):
    """The saver of A's blocks is stuck on a frozen worker when step 2
    preempts A and reuses its blocks: handle_preemptions cancels those
    copies without waiting for the worker, step 2 goes on at once, and no
    object with B's bytes under A's keys is ever sealed."""
    w = make_worker("32MiB")
    ta, tb = prompt(3 * BS + 4, seed=46), prompt(2 * BS + 4, seed=47)
    e = engines("bhnc", addr=w.addr, namespace=ns, chunk=2 * BS, client_timeout_ms=1500)
    e.add(make_request("warm", prompt(BS + 1, seed=48)))
    e.run()
    a, st1, st2 = _preempt_in_flight(e, ta, tb)
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        out1 = e.execute(st1)                           # saves queued, stuck
        e.update(st1, out1)
        t0 = time.monotonic()
        out2 = e.execute(st2)                           # fence: cancel, no wait
        assert time.monotonic() - t0 < 0.5
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    e.run(async_sched=True, prev=(st2, out2))
    assert e.expected_ok(e.done["a"]) and e.expected_ok(e.done["b"])
    c = engines("bhnc", addr=w.addr, namespace=ns)
    c.add(make_request("c", ta))
    c.run()
    assert c.work.stats["load_errors"] == 0 and c.expected_ok(c.done["c"])
    w.stop()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_async_scheduling(worker, engines, ns, layout):
    """Async scheduling (schedule N+1 before update N) with chunked prefill,
    decode steps and a loading request: nothing is lost or reported twice."""
    toks = prompt(4 * BS + 5, seed=24)
    a = engines(layout, namespace=ns, chunk=24)
    a.add(make_request("a", toks, max_tokens=4))
    a.run(async_sched=True)
    assert a.scheduled["a"] == [24, 24, 21, 1, 1, 1] and a.done["a"].num_output_tokens == 4
    assert a.send_reports == {"a": 1} and not a.held and len(objects(worker.addr, ns)) == 4
    for mode in (True, "auto"):
        b = engines(layout, namespace=ns, chunk=24, load_async=mode)
        b.add(make_request("b", toks, max_tokens=4))
        b.add(make_request("b-other", prompt(2 * BS, seed=25), max_tokens=2))
        b.run(async_sched=True)
        assert b.matched["b"] == (4 * BS, mode is True)
        assert b.recv_reports == ({"b": 1} if mode is True else {})
        assert b.scheduled["b"] == [5, 1, 1, 1]
        assert b.expected_ok(b.done["b"]) and b.expected_ok(b.done["b-other"])
        assert list(b.done["b"].output_token_ids) == list(a.done["a"].output_token_ids)
    assert pinned(worker.addr) == 0


def test_consumer_crash_releases_pins(worker, engines, ns, tmp_path):
    """A decode instance killed (-9) in the middle of its loads, for every
    layout at once: the producer released its blocks as soon as they were
    sealed, never waiting for the consumer; the worker drops the dead
    consumer's pins (its lookup's and its load's); a new consumer loads the
    same blocks."""
    toks = prompt(3 * BS + 1, seed=27)
    jobs = []
    for layout in LAYOUTS:
        p = engines(layout, role="kv_producer", namespace=f"{ns}-{layout}")
        p.add(make_request("r", toks))
        p.run()
        assert p.send_reports == {"r": 1} and not p.held and len(p.free) == 63
        jobs.append({"layout": layout, "namespace": f"{ns}-{layout}", "params": p.params["r"]})
    assert pinned(worker.addr) == 0
    err_path = tmp_path / "consumer.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, CRASH_SCRIPT, worker.addr, json.dumps(jobs),
                                 json.dumps(toks)], stdout=subprocess.PIPE, stderr=err,
                                text=True, cwd=HERE)
    try:
        n, buf = 0, ""
        deadline = time.monotonic() + 120
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while n < len(LAYOUTS):
            left = deadline - time.monotonic()
            assert left > 0 and sel.select(left), \
                f"consumer did not pin in time:\n{err_path.read_text()[-3000:]}"
            chunk = os.read(proc.stdout.fileno(), 4096).decode()
            assert chunk, f"consumer exited early:\n{err_path.read_text()[-3000:]}"
            buf += chunk
            n = sum(ln.startswith("PINNED") for ln in buf.splitlines())
        assert pinned(worker.addr) == 3 * len(LAYOUTS)
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: pinned(worker.addr) == 0, what="the dead consumer's pins dropped")
    for job in jobs:
        d = engines(job["layout"], role="kv_consumer", namespace=job["namespace"])
        d.add(make_request("r", toks, kv_transfer_params=job["params"]))
        d.run()
        assert d.work.stats["blocks_loaded"] == 3
        assert d.expected_ok(d.done["r"])


def test_cuda_pool_registration(worker, monkeypatch):
    """With CUDA caches the worker side registers each local client's pool
    mapping (pool_region) as pinned memory once, and unregisters it before
    the client closes. No GPU here: torch.cuda's runtime calls are recorded
    by a stand-in; the copies themselves are torch's and not run."""
    import types as _types
    import torch
    from kvds.vllm import KvdsConnector
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
    from vllm_driver import vllm_config
    calls = []
    rt = _types.SimpleNamespace(cudaHostRegister=lambda p, n, f: calls.append(("reg", p, n)) or 0,
                                cudaHostUnregister=lambda p: calls.append(("unreg", p)) or 0)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: rt)
    monkeypatch.setattr(torch.cuda, "check_error", lambda rc: None)
    w = KvdsConnector(vllm_config("kv_both", {"worker_addr": worker.addr, "load_async": False}),
                      KVConnectorRole.WORKER, _types.SimpleNamespace(num_blocks=4))
    w._work._cuda = True
    c = w._work.client()
    base, size = c.pool_region()
    assert calls == [("reg", base, size)]
    assert w._work.client() is c and len(calls) == 1    # once per client
    w.shutdown()
    assert calls == [("reg", base, size), ("unreg", base)]
    t = KvdsConnector(vllm_config("kv_both", {"worker_addr": worker.tcp, "load_async": False}),
                      KVConnectorRole.WORKER, _types.SimpleNamespace(num_blocks=4))
    t._work._cuda = True
    t._work.client()                                     # TCP: no mapping to register
    t.shutdown()
    assert len(calls) == 2


def test_save_skips_a_block_being_written_elsewhere(worker, engines, ns):
    """One of the step's blocks is being written by another client (created,
    not sealed): the batch create fails on it, the connector falls back to
    one create per block and saves the others; nothing is lost or stuck."""
    toks = prompt(3 * BS + 1, seed=28)
    a = engines("bhnc", namespace=ns)
    r = make_request("a", toks)
    with kvds.Client(worker.addr) as other:
        w = other.create(a.work.key_prefix + r.block_hashes[1].hex(), 100)
        a.add(r)
        a.run()
        assert a.work.stats["blocks_saved"] == 2 and a.send_reports == {"a": 1}
        w.abort()
    assert len(objects(worker.addr, ns)) == 2


def test_worker_killed_during_a_handoff_wait(make_worker, engines, ns):
    """kill -9 of the kvds worker while a consumer waits (20 s deadline) for
    blocks a prefill has not sealed: the wait ends at once, nothing is
    claimed, the request computes everything."""
    w = make_worker("32MiB")
    toks = prompt(3 * BS + 2, seed=29)
    p = engines("bhnc", addr=w.addr, role="kv_producer", namespace=ns)
    c = engines("bhnc", addr=w.addr, role="kv_consumer", namespace=ns,
                load_timeout_ms=20000, client_timeout_ms=2000)
    c.add(make_request("r", toks, kv_transfer_params=p.handoff_params(make_request("x", toks),
                                                                       3)))
    c.step()                                   # the probe starts and waits
    assert "r" not in c.matched
    time.sleep(0.3)
    t0 = time.monotonic()
    w.proc.kill()
    w.proc.wait()
    c.run()
    assert time.monotonic() - t0 < 10          # not the 20 s deadline
    assert c.matched["r"] == (0, False) and not c.invalid_seen
    assert c.scheduled["r"] == [len(toks)] and c.expected_ok(c.done["r"])


# ---- a cluster of two workers: reads through the node's own worker -----------


@pytest.fixture(scope="module")
def pair(static_pair):
    return static_pair


def member(addr):
    with kvds.Client(addr) as c:
        return json.loads(c.cluster_status())["self"]["id"]


def pulled_from(addr, peer):
    with kvds.Client(addr) as c:
        st = json.loads(c.cluster_status())
    return sum(m.get("pulls", 0) for m in st["members"] if m["id"] == peer)


@pytest.mark.parametrize("layout", ["bhnc", "mla"])
def test_pd_reads_through_the_consumers_worker(pair, engines, ns, layout):
    """Prefill on worker A, decode on worker B: the decode side is handed
    the prefill's params before anything is sealed, waits through its own
    worker B with A as the hint (B pulls the blocks into its pool as they
    are sealed: replicas), then loads from B's pool. A later request with
    the same prefix on B is a local hit, with no pull."""
    a, b = pair
    toks = prompt(3 * BS + 2, seed=50)
    p = engines(layout, addr=a.addr, role="kv_producer", namespace=ns)
    c = engines(layout, addr=b.addr, role="kv_consumer", namespace=ns, load_timeout_ms=10000)
    r = make_request("r", toks)
    params = p.handoff_params(r, 3)
    assert params["kvds_worker"] == member(a.addr)
    c.add(make_request("r", toks, kv_transfer_params=params))
    for _ in range(3):
        c.step()
    assert "r" not in c.matched
    pulls0 = pulled_from(b.addr, member(a.addr))
    p.add(r)
    p.run()
    c.run()
    assert c.matched["r"] == (3 * BS, False) and c.work.stats["blocks_loaded"] == 3
    assert c.expected_ok(c.done["r"])
    assert pulled_from(b.addr, member(a.addr)) > pulls0
    with kvds.Client(b.addr) as cb:          # replicas in B's own pool
        keys = [c.work.key_prefix + h.hex() for h in r.block_hashes[:3]]
        assert all(cb.get(k, local=True)[:8] == b"KVDSKV02" for k in keys)
    pulls1 = pulled_from(b.addr, member(a.addr))
    d = engines(layout, addr=b.addr, role="kv_consumer", namespace=ns)
    d.add(make_request("again", toks))
    d.run()
    assert d.matched["again"] == (3 * BS, False) and d.expected_ok(d.done["again"])
    assert pulled_from(b.addr, member(a.addr)) == pulls1      # local: nothing pulled


def test_prefix_hit_from_another_worker(pair, engines, ns):
    """kv_both instances on two workers: what the instance on A stored is a
    hit for the instance on B — found through the directory, pulled into
    B's pool by a probe, loaded from there."""
    a, b = pair
    toks = prompt(4 * BS + 1, seed=51)
    ea = engines("bhnc", addr=a.addr, namespace=ns)
    ea.add(make_request("a", toks))
    ea.run()
    eb = engines("bhnc", addr=b.addr, namespace=ns)
    last = ea.work.key_prefix + make_request("x", toks).block_hashes[3].hex()
    with kvds.Client(b.addr) as cb:
        wait_for(lambda: cb.exists([last]) == [True], what="the directory")
    eb.add(make_request("b", toks))
    eb.run()
    assert eb.matched["b"] == (4 * BS, False) and eb.lookups["b"] >= 2
    assert eb.work.stats["blocks_loaded"] == 4 and eb.expected_ok(eb.done["b"])


def test_sleep_mode_and_may_load_async(worker, engines, ns):
    """vLLM >= 0.33's hooks: unregister_kv_caches (sleep) drops queued
    saves that have not copied yet and refuses loads and saves until
    restore_kv_caches; after it everything works. may_load_async says
    which requests may load between steps."""
    toks = prompt(2 * BS + 1, seed=52)
    a = engines("bhnc", namespace=ns)
    w = a.works[0]
    w.unregister_kv_caches()
    a.add(make_request("asleep", toks))
    a.run()
    assert a.work.stats["blocks_saved"] == 0 and a.send_reports == {"asleep": 1}
    w.restore_kv_caches()
    a.add(make_request("awake", prompt(2 * BS + 1, seed=53)))
    a.run()
    assert a.work.stats["blocks_saved"] == 2
    b = engines("bhnc", namespace=ns, load_async=True)
    assert b.sched.may_load_async(make_request("x", toks))
    c = engines("bhnc", namespace=ns)                      # auto: a small hit loads in the step
    assert not c.sched.may_load_async(make_request("y", toks))
    big = engines("bhnc", namespace=ns, sync_load_max_mb=0)
    assert big.sched.may_load_async(make_request("z", toks))


def test_several_kv_cache_groups_are_refused_at_start():
    """A hybrid model (several KV-cache groups: sliding window + full
    attention) is refused when the connector is built, with what to do —
    not a failure at the first save. (vLLM turns its hybrid allocator off
    for connectors without SupportsHMA, so this is only met when that
    is forced.)"""
    import types as _types
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
    from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec
    import torch
    from kvds.vllm import KvdsConnector
    from vllm_driver import vllm_config
    full = FullAttentionSpec(block_size=BS, num_kv_heads=2, head_size=8, dtype=torch.float32)
    swa = SlidingWindowSpec(block_size=BS, num_kv_heads=2, head_size=8, dtype=torch.float32,
                            sliding_window=64)
    kvcc = _types.SimpleNamespace(num_blocks=8, kv_cache_groups=[
        _types.SimpleNamespace(kv_cache_spec=full, layer_names=["a"]),
        _types.SimpleNamespace(kv_cache_spec=swa, layer_names=["b"])])
    for role in (KVConnectorRole.SCHEDULER, KVConnectorRole.WORKER):
        with pytest.raises(ValueError, match="2 KV-cache groups .*FullAttentionSpec, "
                                             "SlidingWindowSpec.*disable-hybrid-kv-cache"):
            KvdsConnector(vllm_config("kv_both", {"worker_addr": "127.0.0.1:1"}), role, kvcc)


def test_layerwise_save_of_layers_never_named(worker, engines, ns):
    """use_layerwise when vLLM calls save_kv_layer for some layers only (a
    layer sharing another's KV, say): the others are copied once the step
    is over, so the objects are whole and load back right."""
    toks = prompt(2 * BS + 1, seed=54)
    a = engines("bhnc", namespace=ns, use_layerwise=True)
    w = a.works[0]
    real = w.save_kv_layer
    w.save_kv_layer = lambda name, *args, **kw: (
        None if name.endswith("1.self_attn.attn") else real(name, *args, **kw))
    a.add(make_request("a", toks))
    a.run()
    assert a.work.stats["blocks_saved"] == 2
    b = engines("bhnc", namespace=ns)
    b.add(make_request("b", toks))
    b.run()
    assert b.work.stats["blocks_loaded"] == 2 and b.expected_ok(b.done["b"])


def test_preempted_saver_aborted_while_loading(worker, engines, ns):
    """A kv_both request saved blocks, was preempted, came back with an
    async hit on what it had saved, and is aborted while that load runs:
    its free is not delayed (a delayed free and a finished load would both
    free its blocks, and vLLM asserts), it is reported finished receiving
    once, and every block comes back."""
    toks = prompt(3 * BS + 4, seed=55)
    e = engines("bhnc", namespace=ns, chunk=2 * BS, load_async=True)
    a = make_request("a", toks, max_tokens=2)
    e.add(a)
    st1 = e.schedule()                                  # blocks 0-1 planned for saving
    e.update(st1, e.execute(st1))
    wait_for(e.saver_idle, what="a's saves")
    e.preempt("a")
    st2 = e.schedule()                                  # looked up again: an async hit
    assert "a" in e.remote and e.matched["a"] == (0, False)
    e.update(st2, e.execute(st2))
    e.abort("a")
    assert e.params["a"] is None and "a" in e.held      # held for the load only
    e.run()
    assert e.recv_reports == {"a": 1} and e.send_reports == {}
    assert not e.held and len(e.free) == 63


def test_lookup_pins_go_once_the_load_ran(worker, engines, ns):
    """The pins a lookup took are dropped as soon as the step that loaded
    the blocks is over (the worker ranks report it with their output), not
    when the request ends: a long decode holds no pool memory against
    eviction. vLLM passes the scheduler side only non-empty outputs, as the
    driver does."""
    toks = prompt(3 * BS + 2, seed=56)
    a = engines("bhnc", namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines("bhnc", role="kv_consumer", namespace=ns)
    b.add(make_request("b", toks, max_tokens=30))
    b.step()                                  # lookup, pins, load inside the step
    assert b.matched["b"] == (3 * BS, False) and "b" in b.running
    assert b.work.stats["blocks_loaded"] == 3
    for _ in range(3):
        b.step()                              # decoding
    assert "b" in b.running and pinned(worker.addr) == 0
    b.run()


@pytest.mark.parametrize("layout", ["bhnc", "kv2-nhd"])
def test_save_over_the_connection_cap(make_worker, engines, ns, layout):
    """A step saving more than the worker lets one connection write
    unsealed (--max-writing-per-conn) is saved in rounds: every block is
    stored, none skipped, and all load back."""
    size = engines(layout, namespace=ns + "-probe").work.block_nbytes
    w = make_worker("32MiB", ["--max-writing-per-conn", str(3 * size)])
    toks = prompt(10 * BS + 1, seed=12)
    a = engines(layout, addr=w.addr, namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    assert a.work.stats["blocks_saved"] == 10
    assert len(objects(w.addr, ns)) == 10
    b = engines(layout, addr=w.addr, namespace=ns)
    b.add(make_request("b", toks))
    b.run()
    assert b.work.stats["blocks_loaded"] == 10 and b.expected_ok(b.done["b"])
