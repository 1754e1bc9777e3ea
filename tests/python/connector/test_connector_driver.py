"""KvdsConnector driven in vLLM 0.32.0's call order against a real kvds worker
(vllm_driver.py), for every supported KV layout."""
import itertools
import json
import threading
import time

import pytest

import kvds
from vllm_driver import BS, LAYOUTS, Engine, make_request

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


def test_sync_load_leaves_a_token(worker, engines, ns):
    """load_async=false: a full-prompt hit is trimmed to leave one token
    (whole blocks), and the load happens inside the step."""
    toks = prompt(2 * BS, seed=3)
    a = engines("bhnc", namespace=ns, load_async=False)
    a.add(make_request("a", toks))
    a.run()
    b = engines("bhnc", namespace=ns, load_async=False)
    b.add(make_request("b", toks))
    b.run()
    assert b.matched["b"] == (BS, False)
    assert b.scheduled["b"] == [BS]
    assert b.expected_ok(b.done["b"])
    assert b.work.stats["blocks_loaded"] == 1


def test_abort_while_waiting_for_kv(worker, engines, ns):
    """An aborted request whose load is in flight is still reported finished
    exactly once; its blocks stay held until then."""
    toks = prompt(3 * BS, seed=4)
    a = engines("bhnc", namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines("bhnc", namespace=ns)
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


@pytest.mark.parametrize("layout", ["bhnc", "kv2-nhd", "mla"])
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


def test_load_failure_corrupt_block(worker, engines, ns):
    """A block object with the right size but a wrong header is refused."""
    toks = prompt(2 * BS + 1, seed=6)
    a = engines("bhnc", namespace=ns)
    a.add(make_request("a", toks))
    a.run()
    b = engines("bhnc", namespace=ns)
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


def test_load_failure_worker_stopped(make_worker, engines, ns):
    """The kvds worker goes away after the lookup: every block is reported,
    the request finishes receiving and is recomputed in full."""
    w = make_worker("32MiB")
    toks = prompt(3 * BS, seed=7)
    a = engines("bhnc", addr=w.addr, namespace=ns, load_timeout_ms=200, client_timeout_ms=1000)
    a.add(make_request("a", toks))
    a.run()
    b = engines("bhnc", addr=w.addr, namespace=ns, load_timeout_ms=200, client_timeout_ms=1000)
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


def test_pd_producer_consumer_race(worker, engines, ns):
    """Prefill (kv_producer) / decode (kv_consumer): the producer holds its
    blocks until saved and names its worker in kv_transfer_params; the
    consumer, given those params before the producer has sealed, waits for
    the blocks (get-with-wait) and loads them."""
    toks = prompt(3 * BS + 2, seed=8)
    p = engines("bhnc", role="kv_producer", namespace=ns)
    c = engines("bhnc", role="kv_consumer", namespace=ns, load_timeout_ms=5000)
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


def test_pd_consumer_deadline(worker, engines, ns):
    """Params naming blocks that never come: the load ends at its deadline,
    every block is reported and the request is recomputed."""
    toks = prompt(2 * BS + 2, seed=9)
    p = engines("bhnc", role="kv_producer", namespace=ns)
    c = engines("bhnc", role="kv_consumer", namespace=ns, load_timeout_ms=300)
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


def test_layerwise_save(worker, engines, ns):
    """use_layerwise: layers are written as save_kv_layer is called and the
    object sealed at wait_for_save; the data round-trips."""
    toks = prompt(2 * BS + 1, seed=11)
    a = engines("b2-nhd", namespace=ns, use_layerwise=True)
    a.add(make_request("a", toks))
    a.run()
    assert a.work.stats["blocks_saved"] == 2
    b = engines("b2-nhd", namespace=ns)
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


@pytest.mark.parametrize("layout", ["bhnc", "kv2-nhd"])
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


@pytest.mark.parametrize("layout", ["bhnc", "mla"])
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


def test_abort_before_scheduling(worker, engines, ns):
    """A request aborted before its first schedule: request_finished on a
    request the connector never saw frees at once and reports nothing."""
    e = engines("bhnc", namespace=ns)
    e.add(make_request("x", prompt(2 * BS, seed=14)))
    e.abort("x")
    assert e.held.pop("x") == []
    e.run()
    assert e.recv_reports == {} and e.send_reports == {}
    assert e.work.stats == {"blocks_loaded": 0, "blocks_saved": 0, "load_errors": 0}
