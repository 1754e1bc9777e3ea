"""KvdsConnector driven in vLLM 0.32.0's call order against a real kvds worker
(vllm_driver.py), for every supported KV layout."""
import itertools
import json
import os
import selectors
import subprocess
import sys
import threading
import time

import pytest
from vllm.v1.request import RequestStatus

import kvds
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
        return [k for k, _ in c.list(f"{namespace}/".encode(), limit=None)
                if b"/_prefix/" not in k]


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
    """3 full blocks + a 5-token tail: the second instance loads the 3 blocks
    (async), recomputes only the tail, and its paged cache equals the first's
    byte for byte; the partial tail block is never stored."""
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
    assert b.matched["b1"] == (3 * BS, True)
    assert b.scheduled["b1"] == [5]                  # only the tail computed
    assert b.recv_reports == {"b1": 1}
    assert b.work.stats["blocks_loaded"] == 3 and not b.invalid_seen
    assert b.expected_ok(b.done["b1"])
    for i in range(3):
        assert b.block_bytes(b.blocks["b1"][i]) == a.block_bytes(a.blocks["a1"][i])
    assert len(objects(worker.addr, ns)) == 3        # nothing saved twice


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_prompt_hit(worker, engines, ns, layout):
    """A prompt of exactly 2 blocks: async full hit; vLLM then recomputes the
    last token only."""
    toks = prompt(2 * BS, seed=2)
    a = engines(layout, namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns)
    b.add(make_request("b", toks))
    b.run()
    assert b.matched["b"] == (2 * BS, True)
    assert b.scheduled["b"] == [1]
    assert b.expected_ok(b.done["b"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sync_load_leaves_a_token(worker, engines, ns, layout):
    """load_async=false: a full-prompt hit is trimmed to leave one token
    (whole blocks), and the load happens inside the step."""
    toks = prompt(2 * BS, seed=3)
    a = engines(layout, namespace=ns, load_async=False)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns, load_async=False)
    b.add(make_request("b", toks))
    b.run()
    assert b.matched["b"] == (BS, False)
    assert b.scheduled["b"] == [BS]
    assert b.expected_ok(b.done["b"])
    assert b.work.stats["blocks_loaded"] == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_abort_while_waiting_for_kv(worker, engines, ns, layout):
    """An aborted request whose load is in flight is still reported finished
    exactly once; its blocks stay held until then."""
    toks = prompt(3 * BS, seed=4)
    a = engines(layout, namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns)
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


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_failure_missing_block(worker, engines, ns, layout):
    """A block deleted between lookup and load is reported through
    get_block_ids_with_load_errors in the pass that finishes the request;
    vLLM recomputes from it and the result is right."""
    toks = prompt(4 * BS + 3, seed=5)
    a = engines(layout, namespace=ns, load_timeout_ms=200)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns, load_timeout_ms=200)
    r = make_request("b", toks)
    lookup = b.sched.get_num_new_matched_tokens

    def lookup_then_evict(req, n):     # the block goes after the lookup
        res = lookup(req, n)
        with kvds.Client(worker.addr) as c:
            c.delete(b.work.key_prefix + req.block_hashes[2].hex())
        return res

    b.sched.get_num_new_matched_tokens = lookup_then_evict
    b.add(r)
    b.run()
    assert b.matched["b"] == (4 * BS, True)
    assert b.recv_reports == {"b": 1}
    assert b.invalid_seen == {b.blocks["b"][2]}
    assert b.scheduled["b"] == [2 * BS + 3]        # recompute from block 2
    assert b.expected_ok(b.done["b"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_failure_corrupt_block(worker, engines, ns, layout):
    """A block object with the right size but a wrong header is refused."""
    toks = prompt(2 * BS + 1, seed=6)
    a = engines(layout, namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, namespace=ns)
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
        assert c.get(key)[:8] == b"KVDSKV01"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_failure_worker_stopped(make_worker, engines, ns, layout):
    """The kvds worker goes away after the lookup: every block is reported,
    the request finishes receiving and is recomputed in full."""
    w = make_worker("32MiB")
    toks = prompt(3 * BS, seed=7)
    a = engines(layout, addr=w.addr, namespace=ns, load_timeout_ms=200, client_timeout_ms=1000)
    a.add(make_request("a", toks))
    a.run()
    b = engines(layout, addr=w.addr, namespace=ns, load_timeout_ms=200, client_timeout_ms=1000)
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


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pd_producer_consumer_race(worker, engines, ns, layout):
    """Prefill (kv_producer) / decode (kv_consumer): the producer holds its
    blocks until saved and names its worker in kv_transfer_params; the
    consumer, given those params before the producer has sealed, waits for
    the blocks (get-with-wait) and loads them."""
    toks = prompt(3 * BS + 2, seed=8)
    p = engines(layout, role="kv_producer", namespace=ns)
    c = engines(layout, role="kv_consumer", namespace=ns, load_timeout_ms=5000)
    # the consumer is handed the params the producer will return
    params = {"kvds_worker": worker.addr, "kvds_namespace": ns,
              "kvds_prefix": p.work.key_prefix}
    c.add(make_request("r", toks, kv_transfer_params=params))
    c.step()                                   # load starts: blocks absent yet
    assert c.matched["r"] == (3 * BS, True)
    time.sleep(0.2)
    p.add(make_request("r", toks))
    p.step()
    assert p.params["r"]["kvds_worker"] == worker.addr
    assert "r" in p.held                      # delayed free
    p.run()
    assert p.send_reports == {"r": 1} and "r" not in p.held
    c.run()
    assert c.recv_reports == {"r": 1} and not c.invalid_seen
    assert c.scheduled["r"] == [2]
    assert c.expected_ok(c.done["r"])
    assert p.matched["r"] == (0, False)        # a producer never loads
    assert c.work.stats["blocks_saved"] == 0   # a consumer never saves


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pd_consumer_deadline(worker, engines, ns, layout):
    """Params naming blocks that never come: the load ends at its deadline,
    every block is reported and the request is recomputed."""
    toks = prompt(2 * BS + 2, seed=9)
    p = engines(layout, role="kv_producer", namespace=ns)
    c = engines(layout, role="kv_consumer", namespace=ns, load_timeout_ms=300)
    params = {"kvds_worker": worker.addr, "kvds_namespace": ns,
              "kvds_prefix": p.work.key_prefix}
    c.add(make_request("r", toks, kv_transfer_params=params))
    t0 = time.monotonic()
    c.run()
    assert time.monotonic() - t0 < 5
    assert c.recv_reports == {"r": 1}
    assert c.invalid_seen == set(c.blocks["r"][:2])
    assert c.expected_ok(c.done["r"])


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
    """use_layerwise: layers are written as save_kv_layer is called and the
    object sealed at wait_for_save; the data round-trips."""
    toks = prompt(2 * BS + 1, seed=11)
    a = engines(layout, namespace=ns, use_layerwise=True)
    a.add(make_request("a", toks))
    a.run()
    assert a.work.stats["blocks_saved"] == 2
    b = engines(layout, namespace=ns)
    b.add(make_request("b", toks))
    b.run()
    assert b.work.stats["blocks_loaded"] == 2 and b.expected_ok(b.done["b"])


def test_key_scheme(worker, engines, ns):
    e = engines("bhnc", namespace=ns)
    r = make_request("x", prompt(BS))
    assert e.work.key_prefix == f"{ns}/model/float32/bhnc/tp0/pp0/"
    assert isinstance(r.block_hashes[0], bytes)
    e.add(r)
    e.run()
    assert objects(worker.addr, ns) == [(e.work.key_prefix + r.block_hashes[0].hex()).encode()]


@pytest.mark.parametrize("layout", ["bhnc", "bhnc-strided"])   # gather and torch paths
def test_object_holds_no_stale_pool_bytes(make_worker, engines, ns, layout):
    """The header's padding is written (zeros), so a block object never
    carries bytes a previous object left in the pool."""
    w = make_worker("8MiB")
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
            assert obj[:8] == b"KVDSKV01" and obj[24:64] == bytes(40)


def test_config_errors(tmp_path, monkeypatch):
    from kvds.vllm import parse_config
    with pytest.raises(ValueError, match="unknown config key 'bogus'"):
        parse_config({"bogus": 1}, env={})
    with pytest.raises(ValueError, match="'load_async' must be a boolean"):
        parse_config({"load_async": "yes"}, env={})
    with pytest.raises(ValueError, match="'load_timeout_ms'"):
        parse_config({"load_timeout_ms": -1}, env={})
    assert parse_config({}, env={}).worker_addr == "127.0.0.1:31501"
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
    assert b.matched["b"] == (4 * BS, True) and b.scheduled["b"] == [7]
    assert b.expected_ok(b.done["b"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tp2(worker, engines, ns, layout):
    """TP=2: each rank stores its own objects (MLA: rank 0 only, shared);
    vLLM's KVOutputAggregator sees every request finished on both ranks."""
    toks = prompt(3 * BS + 1, seed=13)
    a = engines(layout, namespace=ns, tp=2)
    a.add(make_request("a", toks))
    a.run()
    assert a.send_reports == {"a": 1}
    assert len(objects(worker.addr, ns)) == (3 if layout == "mla" else 6)
    b = engines(layout, namespace=ns, tp=2)
    b.add(make_request("b", toks))
    b.run()
    assert b.recv_reports == {"b": 1} and b.scheduled["b"] == [1]
    assert [w.stats["blocks_loaded"] for w in b.works] == [3, 3]
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


def _evict_after_lookup(engine, addr, index):
    """Makes the engine's lookups delete block `index` of the request right
    after the lookup found it (the race of an eviction between lookup and
    load)."""
    lookup = engine.sched.get_num_new_matched_tokens

    def lookup_then_evict(req, n):
        res = lookup(req, n)
        if res[0]:
            with kvds.Client(addr) as c:
                try:
                    c.delete(engine.work.key_prefix + req.block_hashes[index].hex())
                except kvds.NotFound:
                    pass
        return res

    engine.sched.get_num_new_matched_tokens = lookup_then_evict


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
    b = engines(layout, namespace=ns, policy="fail", load_timeout_ms=200)
    assert b.policy == "fail"
    _evict_after_lookup(b, worker.addr, 2)
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
    _evict_after_lookup(b, worker.addr, 1)
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


@pytest.mark.parametrize("layout", LAYOUTS)
def test_preemption_during_inflight_save(worker, engines, ns, layout):
    """Async scheduling: A's first chunk is scheduled (its two full blocks
    planned for saving); before that step has run, a higher-priority B
    preempts A and is given A's blocks. The step that computes A's chunk
    runs (and saves) before the step that overwrites the blocks with B's KV,
    so A's objects hold A's KV; A resumes by loading them back."""
    ta, tb = prompt(3 * BS + 4, seed=22), prompt(2 * BS + 4, seed=23)
    e = engines(layout, namespace=ns, chunk=2 * BS)
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
    out1 = e.execute(st1)                               # A computed + saved
    e.update(st1, out1)
    out2 = e.execute(st2)                               # B overwrites
    e.run(async_sched=True, prev=(st2, out2))           # step 2's output: after step 3 is scheduled
    assert a.num_preemptions == 1 and e.done["a"].num_output_tokens == 2
    assert e.matched["a"] == (0, False)
    assert e.recv_reports.get("a") == 1                 # A reloaded its 2 saved blocks
    assert e.expected_ok(e.done["b"]) and e.expected_ok(e.done["a"])
    # a third instance loads all of A's full blocks: the saves were right
    c = engines(layout, namespace=ns)
    c.add(make_request("c", ta))
    c.run()
    assert c.matched["c"] == (3 * BS, True) and c.work.stats["load_errors"] == 0
    assert c.expected_ok(c.done["c"])


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
    b = engines(layout, namespace=ns, chunk=24)
    b.add(make_request("b", toks, max_tokens=4))
    b.add(make_request("b-other", prompt(2 * BS, seed=25), max_tokens=2))
    b.run(async_sched=True)
    assert b.matched["b"] == (4 * BS, True) and b.recv_reports == {"b": 1}
    assert b.scheduled["b"] == [5, 1, 1, 1]
    assert b.expected_ok(b.done["b"]) and b.expected_ok(b.done["b-other"])
    assert list(b.done["b"].output_token_ids) == list(a.done["a"].output_token_ids)


def test_pd_params_name_blocks_and_hash(worker, engines, ns):
    """The producer's kv_transfer_params say how many blocks it stored and
    the last one's hash; a consumer whose hashes differ (another
    PYTHONHASHSEED) does not wait for blocks that will never come."""
    toks = prompt(3 * BS + 2, seed=26)
    p = engines("bhnc", role="kv_producer", namespace=ns)
    r = make_request("r", toks)
    p.add(r)
    p.run()
    params = p.params["r"]
    assert params["kvds_blocks"] == 3 and params["kvds_hash"] == r.block_hashes[2].hex()
    c = engines("bhnc", role="kv_consumer", namespace=ns, load_timeout_ms=30000)
    c.add(make_request("r", toks, kv_transfer_params=params))
    c.run()
    assert c.matched["r"] == (3 * BS, True) and c.expected_ok(c.done["r"])
    bad = dict(params, kvds_hash="00" * 32)             # hashed differently
    c2 = engines("bhnc", role="kv_consumer", namespace=ns + "-other", load_timeout_ms=30000)
    t0 = time.monotonic()
    c2.add(make_request("r2", toks, kv_transfer_params=bad))
    c2.run()
    assert time.monotonic() - t0 < 10                   # did not wait 30 s
    assert c2.matched["r2"] == (0, False) and c2.expected_ok(c2.done["r2"])


def test_consumer_crash_releases_pins(worker, engines, ns, tmp_path):
    """A decode instance killed (-9) in the middle of its loads, for every
    layout at once: the producer released its blocks as soon as they were
    sealed, never waiting for the consumer; the worker drops the dead
    consumer's pins; a new consumer loads the same blocks."""
    toks = prompt(3 * BS + 1, seed=27)
    jobs = []
    for layout in LAYOUTS:
        p = engines(layout, role="kv_producer", namespace=f"{ns}-{layout}")
        p.add(make_request("r", toks))
        p.run()
        assert p.send_reports == {"r": 1} and not p.held and len(p.free) == 63
        jobs.append({"layout": layout, "namespace": f"{ns}-{layout}", "params": p.params["r"]})
    with kvds.Client(worker.addr) as c:
        assert c.stats()["pinned_objects"] == 0
    err_path = tmp_path / "consumer.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, CRASH_SCRIPT, worker.addr, json.dumps(jobs),
                                 json.dumps(toks)], stdout=subprocess.PIPE, stderr=err,
                                text=True, cwd=HERE)
    try:
        pinned, buf = 0, ""
        deadline = time.monotonic() + 120
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while pinned < len(LAYOUTS):
            left = deadline - time.monotonic()
            assert left > 0 and sel.select(left), \
                f"consumer did not pin in time:\n{err_path.read_text()[-3000:]}"
            chunk = os.read(proc.stdout.fileno(), 4096).decode()
            assert chunk, f"consumer exited early:\n{err_path.read_text()[-3000:]}"
            buf += chunk
            pinned = sum(ln.startswith("PINNED") for ln in buf.splitlines())
        with kvds.Client(worker.addr) as c:
            assert c.stats()["pinned_objects"] == 3 * len(LAYOUTS)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    with kvds.Client(worker.addr) as c:
        while c.stats()["pinned_objects"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.stats()["pinned_objects"] == 0
    for job in jobs:
        d = engines(job["layout"], role="kv_consumer", namespace=job["namespace"])
        d.add(make_request("r", toks, kv_transfer_params=job["params"]))
        d.run()
        assert d.recv_reports == {"r": 1} and d.work.stats["blocks_loaded"] == 3
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
    w._cuda = True
    c = w.client()
    base, size = c.pool_region()
    assert calls == [("reg", base, size)]
    assert w.client() is c and len(calls) == 1          # once per client
    w.shutdown()
    assert calls == [("reg", base, size), ("unreg", base)]
    t = KvdsConnector(vllm_config("kv_both", {"worker_addr": worker.tcp, "load_async": False}),
                      KVConnectorRole.WORKER, _types.SimpleNamespace(num_blocks=4))
    t._cuda = True
    t.client()                                           # TCP: no mapping to register
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


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_failure_worker_killed_mid_load(make_worker, engines, ns, layout):
    """kill -9 of the kvds worker while a load is in flight (waiting, with a
    20 s deadline, for blocks a prefill has not sealed yet): the load fails
    at once, every block is reported, the request finishes receiving and is
    recomputed, and the cache is right."""
    w = make_worker("32MiB")
    toks = prompt(3 * BS + 2, seed=29)
    p = engines(layout, addr=w.addr, role="kv_producer", namespace=ns)
    params = {"kvds_worker": w.addr, "kvds_namespace": ns, "kvds_prefix": p.work.key_prefix}
    c = engines(layout, addr=w.addr, role="kv_consumer", namespace=ns,
                load_timeout_ms=20000, client_timeout_ms=2000)
    c.add(make_request("r", toks, kv_transfer_params=params))
    c.step()                                   # the load starts and waits
    assert c.matched["r"] == (3 * BS, True)
    time.sleep(0.3)
    t0 = time.monotonic()
    w.proc.kill()
    w.proc.wait()
    c.run()
    assert time.monotonic() - t0 < 10          # not the 20 s load deadline
    assert c.recv_reports == {"r": 1}
    assert c.invalid_seen == set(c.blocks["r"][:3])
    assert c.scheduled["r"] == [len(toks)] and c.expected_ok(c.done["r"])
