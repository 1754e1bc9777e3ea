"""`kvds proxy` against stand-in backends (standin.py): what a real engine
cannot show on demand — the exact requests of both legs, exact bytes and
chunking passed through, failures at chosen moments (5xx, hangs, streams
cut short, slow first bytes, clients that go away), malformed requests,
health, the seeds' command line, and the routing policies step by step.
Routing, hand-off and load against real vLLM engines: test_proxy_vllm.py.
"""
import json
import signal
import subprocess
import threading
import time

import pytest

import proxy_util
from proxy_util import (ERROR_TYPES_4XX, KVDS_BIN, RawStream, assert_openai_error, call, metric,
                        needs_proxy, post, wait_until)
from standin import SSE, Act, Standin, sse_events

pytestmark = needs_proxy
make_proxy = proxy_util.make_proxy      # the fixture

# health checks time out after min(interval, 5 s): 500 ms leaves a loaded
# 2-core machine's Python stand-ins time to answer
FAST = ["--health-interval-ms", "500", "--connect-timeout-ms", "1000"]
BUCKETS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
           "30", "60", "+Inf"]


@pytest.fixture
def standins():
    """standins(n, prefix) -> n fresh stand-ins; all stopped after the test."""
    made = []

    def make(n, prefix):
        out = [Standin(f"{prefix}{i + 1}") for i in range(n)]
        made.extend(out)
        return out

    yield make
    for s in made:
        s.stop()


def start(make_proxy, ps, ds, *args):
    p = make_proxy([s.addr for s in ps], [s.addr for s in ds], [*FAST, *args])
    p.wait_health(200)
    return p


def posts(standins, path=None):
    return [r for s in standins for r in s.posts(path)]


def owner(standins, rec):
    return next(s for s in standins if rec in s.posts())


def cbody(prompt="hello there", **kw):
    return dict({"model": "standin", "prompt": prompt, "max_tokens": 5, "temperature": 0},
                **kw)


def ok(port, body, headers=None, path="/v1/completions"):
    r = post(port, path, body, headers)
    assert r.status == 200, r
    return r


# ---------------------------------------------------------------- the two legs

def test_completion_legs_exactly(make_proxy, standins):
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = start(make_proxy, [p1], [d1])
    body = cbody(max_tokens=7, stream=True, stream_options={"include_usage": True},
                 min_tokens=2, user="u1", logprobs=2)
    r = post(px.port, "/v1/completions", body,
             {"X-Request-Id": "rid-abc", "Authorization": "Bearer client-key"})
    assert r.status == 200, r
    (pre,), (dec,) = p1.posts(), d1.posts()
    want = {k: v for k, v in body.items() if k not in ("stream_options", "min_tokens")}
    want.update(max_tokens=1, stream=False, kv_transfer_params={"do_remote_decode": True})
    assert pre.path == "/v1/completions" and pre.json == want, pre.json
    assert dec.path == "/v1/completions"
    assert dec.json == dict(body, kv_transfer_params=p1.answers[0]), dec.json
    for rec in (pre, dec):
        assert rec.headers.get("x-request-id") == "rid-abc", rec.headers
        assert rec.headers.get("authorization") == "Bearer client-key", rec.headers
    assert r.headers["content-type"] == SSE
    assert r.body == b"".join(sse_events(dec.json))


def test_chat_legs_and_generated_request_id(make_proxy, standins):
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = start(make_proxy, [p1], [d1])
    body = {"model": "standin", "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 6, "stream": False}
    r1 = ok(px.port, body, path="/v1/chat/completions")
    r2 = ok(px.port, body, path="/v1/chat/completions")
    pre, dec = p1.posts(), d1.posts()
    assert [x.path for x in pre + dec] == ["/v1/chat/completions"] * 4
    assert pre[0].json == dict(body, max_tokens=1, max_completion_tokens=1,
                               kv_transfer_params={"do_remote_decode": True}), pre[0].json
    assert dec[0].json == dict(body, kv_transfer_params=p1.answers[0])
    assert dec[1].json == dict(body, kv_transfer_params=p1.answers[1])
    ids = [x.headers.get("x-request-id") for x in pre + dec]
    assert all(ids) and ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1], ids
    assert r1.json()["choices"][0]["message"]["content"] == "ok0 ok1 ok2 ok3 ok4 ok5"
    assert r2.json()["object"] == "chat.completion"


def test_api_key_env_replaces_authorization(make_proxy, standins):
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = make_proxy([p1.addr], [d1.addr], [*FAST, "--api-key-env", "KVDS_TEST_PROXY_KEY"],
                    env={"KVDS_TEST_PROXY_KEY": "sekrit"})
    px.wait_health(200)
    ok(px.port, cbody(), {"Authorization": "Bearer other"})
    ok(px.port, cbody())
    for rec in p1.posts() + d1.posts():
        assert rec.headers.get("authorization") == "Bearer sekrit", rec.headers


def test_colocated_request_goes_unchanged(make_proxy, standins):
    a, b = standins(2, "C")
    px = start(make_proxy, [a, b], [], "--policy", "round-robin")
    body = cbody(stream=True, stream_options={"include_usage": True}, min_tokens=1)
    r = ok(px.port, body, {"X-Request-Id": "colo-1"})
    (rec,) = posts([a, b])
    assert rec.json == body and rec.headers.get("x-request-id") == "colo-1"
    assert r.body == b"".join(sse_events(body))
    ok(px.port, cbody(prompt="second"))
    assert len(a.posts()) == len(b.posts()) == 1          # round-robin over both
    text = px.metrics()
    for s in (a, b):
        assert metric(text, "kvds_proxy_backend_up", role="both", backend=s.addr) == 1, text


# ------------------------------------------------------------- pass-through

def test_sse_bytes_and_chunking_pass_through(make_proxy, standins):
    """Chunk boundaries inside events and inside `data:`; the first chunks
    reach the client while the stand-in holds the last one back."""
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = start(make_proxy, [p1], [d1])
    events = sse_events(cbody(max_tokens=3))
    wire = b"".join(events)
    chunks = [wire[:7], wire[7:40], wire[40:41], wire[41:-9], wire[-9:]]
    gate = threading.Event()
    d1.plan(Act.sse(chunks, gates=[None, None, None, None, gate],
                    ctype="text/event-stream; charset=utf-8; x=1"))
    s = RawStream(px.port, "/v1/completions", cbody(max_tokens=3, stream=True))
    try:
        assert s.read_head() == 200
        assert s.headers["content-type"] == "text/event-stream; charset=utf-8; x=1"
        held = b"".join(chunks[:4])
        assert s.read_until(lambda b: b == held, 10), \
            f"streamed chunks not passed on before the last one: {s.body!r}"
        assert not d1.posts()[0].done.is_set()
        gate.set()
        assert s.read_to_end(10), f"stream did not end cleanly: {s.body!r}"
        assert s.body == wire
    finally:
        s.close()


def test_json_body_and_decoder_status_pass_through(make_proxy, standins):
    (p1,), (d1, d2) = standins(1, "P"), standins(2, "D")
    px = start(make_proxy, [p1], [d1, d2], "--policy", "round-robin")
    odd = b'{"id":  "x",\n "choices": [ ] , "weird": 1e0, "s": "\\u00e9"}  \n'
    for d in (d1, d2):
        d.plan(Act.body(odd, ctype="application/json; charset=latin-1"))
    r = ok(px.port, cbody())
    assert r.body == odd and r.headers["content-type"] == "application/json; charset=latin-1"
    # a decoder's 4xx is its answer: passed back as it is, not retried
    err = json.dumps({"error": {"message": "no", "type": "BadRequestError", "code": 400}})
    for d in (d1, d2):
        d.clear()
        d.default = Act.body(err.encode(), status=400)
    r = post(px.port, "/v1/completions", cbody())
    assert r.status == 400 and r.body == err.encode(), r
    assert len(posts([d1, d2])) == 1
    assert px.m("kvds_proxy_retries_total", role="decode") == 0


def test_nul_characters_in_json_strings(make_proxy, standins):
    """U+0000 is valid JSON ("\\u0000"): a byte-level tokenizer's first token
    can decode to it (the tiny test model's token 192 does), and a prompt
    may hold one. The prefill answer and the request must still go through."""
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = start(make_proxy, [p1], [d1])
    params = {"do_remote_prefill": True, "kvds_blocks": 2}
    answer = {"id": "x", "object": "text_completion", "model": "standin",
              "choices": [{"index": 0, "text": "\u0000", "finish_reason": "length"}],
              "kv_transfer_params": params}
    p1.plan(Act.body(json.dumps(answer).encode()))
    r = post(px.port, "/v1/completions", cbody())
    assert r.status == 200, f"{r}\n{px.tail()}"
    assert d1.posts()[0].json["kv_transfer_params"] == params
    body = cbody(prompt="a\u0000b")
    r = post(px.port, "/v1/completions", body)
    assert r.status == 200, f"{r}\n{px.tail()}"
    assert p1.posts()[1].json["prompt"] == d1.posts()[1].json["prompt"] == "a\u0000b"


# ---------------------------------------------------------------- failures

def test_prefill_5xx_retried_on_the_other(make_proxy, standins):
    (p1, p2), (d1,) = standins(2, "P"), standins(1, "D")
    p1.default = Act.status(500)
    px = start(make_proxy, [p1, p2], [d1], "--policy", "round-robin")
    for i in range(4):
        ok(px.port, cbody(prompt=f"prompt {i}"))
    failed = len(p1.posts())
    assert failed >= 1, "round-robin never chose P1"
    assert len(p2.posts()) == 4
    # every decode got the params of P2's answer, in order
    assert [x.json["kv_transfer_params"] for x in d1.posts()] == p2.answers
    text = px.metrics()
    assert metric(text, "kvds_proxy_retries_total", role="prefill") == failed, text
    assert metric(text, "kvds_proxy_backend_failures_total", role="prefill",
                  backend=p1.addr) == failed, text


def test_prefill_4xx_goes_back_unretried(make_proxy, standins):
    (p1, p2), (d1,) = standins(2, "P"), standins(1, "D")
    bad = Act.status(400, "prompt too long")
    p1.default = p2.default = bad
    px = start(make_proxy, [p1, p2], [d1])
    r = post(px.port, "/v1/completions", cbody())
    assert r.status == 400 and r.body == bad.kw["data"], r
    assert len(posts([p1, p2])) == 1 and d1.posts() == []


def test_every_prefill_fails_502(make_proxy, standins):
    ps, (d1,) = standins(3, "P"), standins(1, "D")
    for p in ps:
        p.default = Act.status(500)
    px = start(make_proxy, ps, [d1], "--retries", "1")
    r = post(px.port, "/v1/completions", cbody())
    assert_openai_error(r, 502)
    tried = posts(ps)
    assert len(tried) == 2 and len({owner(ps, x).name for x in tried}) == 2, tried
    assert d1.posts() == []
    assert px.m("kvds_proxy_errors_total", code="502") == 1


def test_prefill_refused_before_health_notices(make_proxy, standins):
    """A prefiller gone since its last health check: the refused connect
    is a failed hop, retried on the other."""
    (p1, p2), (d1,) = standins(2, "P"), standins(1, "D")
    px = make_proxy([p1.addr, p2.addr], [d1.addr], ["--health-interval-ms", "60000",
                                                    "--policy", "round-robin"])
    px.wait_health(200)
    p1.stop()
    for i in range(2):
        ok(px.port, cbody(prompt=f"r{i}"))
    assert len(p2.posts()) == 2 and len(d1.posts()) == 2
    assert px.m("kvds_proxy_retries_total", role="prefill") == 1
    assert px.m("kvds_proxy_backend_up", role="prefill", backend=p1.addr) == 0


def test_decoder_5xx_before_first_byte_retried(make_proxy, standins):
    (p1,), (d1, d2) = standins(1, "P"), standins(2, "D")
    d1.default = Act.status(503)
    px = start(make_proxy, [p1], [d1, d2], "--policy", "round-robin")
    for i in range(4):
        r = ok(px.port, cbody(prompt=f"p{i}"), {"X-Request-Id": f"dec-{i}"})
        assert r.json()["choices"][0]["text"] == "ok0 ok1 ok2 ok3 ok4"
    failed = d1.posts()
    assert failed, "round-robin never chose D1"
    assert len(d2.posts()) == 4
    by_id = {x.headers["x-request-id"]: x for x in d2.posts()}
    for x in failed:      # the retry carried the same request and params
        assert by_id[x.headers["x-request-id"]].json == x.json
    assert px.m("kvds_proxy_retries_total", role="decode") == len(failed)


def test_decoder_hang_past_deadline(make_proxy, standins):
    (p1,), (d1, d2) = standins(1, "P"), standins(2, "D")
    d1.default = d2.default = Act.hang()
    px = start(make_proxy, [p1], [d1, d2], "--decode-timeout-s", "1", "--retries", "1")
    t0 = time.monotonic()
    r = post(px.port, "/v1/completions", cbody(), timeout=30)
    took = time.monotonic() - t0
    assert r.status in (502, 504), r
    assert_openai_error(r, r.status)
    assert 1.0 <= took < 6, took
    tried = posts([d1, d2])
    assert 1 <= len(tried) <= 2
    for x in tried:     # the proxy gave the timed-out hops up
        assert x.closed.wait(5), f"{x} still open after the deadline"
    assert px.m("kvds_proxy_errors_total", code=str(r.status)) == 1
    assert px.m("kvds_proxy_in_flight") == 0


def test_prefill_hang_past_deadline(make_proxy, standins):
    (p1, p2), (d1,) = standins(2, "P"), standins(1, "D")
    p1.default = p2.default = Act.hang()
    px = start(make_proxy, [p1, p2], [d1], "--prefill-timeout-s", "1", "--retries", "1")
    t0 = time.monotonic()
    r = post(px.port, "/v1/completions", cbody(), timeout=30)
    assert r.status in (502, 504), r
    assert_openai_error(r, r.status)
    assert time.monotonic() - t0 < 6
    assert d1.posts() == []
    for x in posts([p1, p2]):
        assert x.closed.wait(5), f"{x} still open after the deadline"


def test_slow_first_byte_within_deadline(make_proxy, standins):
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    d1.plan(Act.slow_first(0.6))
    px = start(make_proxy, [p1], [d1], "--decode-timeout-s", "5")
    ok(px.port, cbody())
    text = px.metrics()
    assert metric(text, "kvds_proxy_ttft_seconds_count") == 1
    assert metric(text, "kvds_proxy_ttft_seconds_sum") >= 0.6
    assert metric(text, "kvds_proxy_request_seconds_sum") >= 0.6
    assert metric(text, "kvds_proxy_backend_seconds_sum", role="decode",
                  backend=d1.addr) >= 0.6
    assert metric(text, "kvds_proxy_backend_seconds_count", role="prefill",
                  backend=p1.addr) == 1
    # the first 0.6 s are decode, so TTFT's 0.5 bucket holds nothing, the 1 s one all
    assert metric(text, "kvds_proxy_ttft_seconds_bucket", le="0.5") == 0
    assert metric(text, "kvds_proxy_ttft_seconds_bucket", le="1") == 1


def test_stream_cut_after_first_byte_is_not_replayed(make_proxy, standins):
    (p1,), (d1, d2) = standins(1, "P"), standins(2, "D")
    part = [b'data: {"choices": [{"text": "a"}]}\n\n', b'data: {"choi']
    d1.default = d2.default = Act.close_mid(part)
    px = start(make_proxy, [p1], [d1, d2])
    s = RawStream(px.port, "/v1/completions", cbody(stream=True))
    try:
        assert s.read_head() == 200
        clean = s.read_to_end(10)
        assert s.body == b"".join(part), s.body
        assert not clean and s.eof, "the client's stream must be cut, not ended cleanly"
    finally:
        s.close()
    assert len(posts([d1, d2])) == 1
    assert px.m("kvds_proxy_retries_total", role="decode") == 0


def test_stream_stalled_past_deadline_is_cut(make_proxy, standins):
    """A decoder that stops sending mid-stream: at --decode-timeout-s the
    client's stream is closed (not ended as if complete) and the hop
    dropped."""
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    never = threading.Event()
    d1.plan(Act.sse([b"data: 1\n\n", b"data: 2\n\n"], gates=[None, never]))
    px = start(make_proxy, [p1], [d1], "--decode-timeout-s", "1")
    t0 = time.monotonic()
    s = RawStream(px.port, "/v1/completions", cbody(stream=True))
    try:
        assert s.read_head() == 200
        clean = s.read_to_end(15)
        assert s.body == b"data: 1\n\n" and not clean and s.eof, (s.body, clean, s.eof)
        assert 1.0 <= time.monotonic() - t0 < 8
    finally:
        s.close()
        never.set()
    assert d1.posts()[0].closed.wait(5), "the stalled hop was not dropped"
    assert px.m("kvds_proxy_in_flight") == 0


def test_client_disconnect_cancels_backend(make_proxy, standins):
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = start(make_proxy, [p1], [d1])
    # during the decode, before its first byte
    d1.plan(Act.hang())
    s = RawStream(px.port, "/v1/completions", cbody())
    (rec,) = d1.wait_posts(1)
    s.close()
    assert rec.closed.wait(3), "decode hop not cancelled when the client left"
    # during a stream, after its first bytes
    gate = threading.Event()
    d1.plan(Act.sse([b"data: 1\n\n", b"data: 2\n\n"], gates=[None, gate]))
    s = RawStream(px.port, "/v1/completions", cbody(stream=True))
    assert s.read_until(lambda b: b == b"data: 1\n\n")
    s.close()
    rec = d1.posts()[1]
    assert rec.closed.wait(3), "streaming hop not cancelled when the client left"
    gate.set()
    # during the prefill: the decode never starts
    p1.plan(Act.hang())
    s = RawStream(px.port, "/v1/completions", cbody())
    rec = p1.wait_posts(3)[2]
    s.close()
    assert rec.closed.wait(3), "prefill hop not cancelled when the client left"
    wait_until(lambda: px.m("kvds_proxy_in_flight") == 0, "in_flight back at 0")
    assert px.m("kvds_proxy_client_disconnects_total") == 3
    assert len(d1.posts()) == 2
    text = px.metrics()
    for role, s in (("prefill", p1), ("decode", d1)):
        assert metric(text, "kvds_proxy_backend_outstanding", role=role, backend=s.addr) == 0
    # and the proxy still serves
    ok(px.port, cbody())


# ------------------------------------------------------------- bad requests

def test_malformed_requests(make_proxy, standins):
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = start(make_proxy, [p1], [d1], "--max-body", "1024")
    cases = [
        ("POST", "/v1/completions", b'{"model": "m", "prompt": ', 400),
        ("POST", "/v1/completions", b"", 400),
        ("POST", "/v1/completions", b"[1, 2]", 400),
        ("POST", "/v1/completions", b'"a string"', 400),
        ("POST", "/v1/completions", b'{"model": "m", "prompt": "a"}\x00', 400),
        ("POST", "/v1/completions", b'{"model": "m"}', 400),
        ("POST", "/v1/completions", b'{"model": 5, "prompt": "p"}', 400),
        ("POST", "/v1/completions", b'{"model": "m", "prompt": []}', 400),
        ("POST", "/v1/completions", b'{"model": "m", "prompt": "p", "stream": "yes"}', 400),
        ("POST", "/v1/chat/completions", b'{"model": "m", "messages": []}', 400),
        ("POST", "/v1/chat/completions", b'{"model": "m", "prompt": "p"}', 400),
        ("POST", "/v1/completions",
         json.dumps({"model": "m", "prompt": "x" * 2000}).encode(), 413),
        ("POST", "/v1/nope", b'{"model": "m", "prompt": "p"}', 404),
        ("GET", "/nope", None, 404),
        ("GET", "/v1/completions", None, 405),
        ("PUT", "/v1/chat/completions", b"{}", 405),
        ("DELETE", "/v1/completions", None, 405),
        ("PATCH", "/v1/completions", b"{}", 405),
        ("OPTIONS", "/v1/completions", None, 405),
    ]
    want = {}
    for method, path, body, status in cases:
        r = call(px.port, method, path, body)
        assert_openai_error(r, status, ERROR_TYPES_4XX)
        want[status] = want.get(status, 0) + 1
    # a body over --max-body without Content-Length (chunked)
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", px.port, timeout=10)
    c.request("POST", "/v1/completions", body=iter([b'{"model": "m", "prompt": "',
                                                    b"y" * 3000, b'"}']),
              headers={"Content-Type": "application/json"}, encode_chunked=True)
    resp = c.getresponse()
    status, data = resp.status, resp.read()
    c.close()
    assert status == 413, (status, data)
    want[413] += 1
    assert p1.posts() == [] and d1.posts() == []
    text = px.metrics()
    for status, n in want.items():
        assert metric(text, "kvds_proxy_errors_total", code=str(status)) == n, (status, text)
    ok(px.port, cbody())


# ------------------------------------------------- health, models, metrics

def test_health_down_backends_and_503(make_proxy, standins):
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = start(make_proxy, [p1], [d1])
    body = px.health().json()
    assert body["status"] == "ok"
    text = json.dumps(body)
    assert p1.addr in text and d1.addr in text, body
    d1.health = 503
    r = px.wait_health(503, timeout=5)
    assert d1.addr in r.body.decode()
    assert px.m("kvds_proxy_backend_up", role="decode", backend=d1.addr) == 0
    assert px.m("kvds_proxy_backend_up", role="prefill", backend=p1.addr) == 1
    # Every decoder is down: it is still tried (a health check may lag a
    # restart, docs/proxy.md), and this one still answers.
    ok(px.port, cbody())
    assert len(d1.posts()) == 1
    d1.health = 200
    px.wait_health(200, timeout=5)
    ok(px.port, cbody())
    # A prefiller that refuses connections: down, tried, 502 in JSON.
    p1.stop()
    px.wait_health(503, timeout=5)
    assert px.m("kvds_proxy_backend_up", role="prefill", backend=p1.addr) == 0
    assert_openai_error(post(px.port, "/v1/completions", cbody()), 502)


def test_models_forwarded(make_proxy, standins):
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = start(make_proxy, [p1], [d1])
    r = call(px.port, "GET", "/v1/models")
    assert r.status == 200 and r.json()["data"][0]["id"] == "standin", r


def test_metrics_documented_and_counting(make_proxy, standins):
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = start(make_proxy, [p1], [d1])
    for i in range(3):
        ok(px.port, cbody(prompt=f"c{i}"))
    chat = {"model": "standin", "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 2}
    for i in range(2):
        ok(px.port, chat, path="/v1/chat/completions")
    text = px.metrics()
    types = dict(ln.split()[2:4] for ln in text.splitlines() if ln.startswith("# TYPE "))
    documented = {
        "kvds_proxy_requests_total": "counter", "kvds_proxy_errors_total": "counter",
        "kvds_proxy_retries_total": "counter",
        "kvds_proxy_client_disconnects_total": "counter", "kvds_proxy_in_flight": "gauge",
        "kvds_proxy_ttft_seconds": "histogram", "kvds_proxy_request_seconds": "histogram",
        "kvds_proxy_backend_up": "gauge", "kvds_proxy_backend_outstanding": "gauge",
        "kvds_proxy_backend_requests_total": "counter",
        "kvds_proxy_backend_failures_total": "counter",
        "kvds_proxy_backend_seconds": "histogram"}
    for name, kind in documented.items():
        assert types.get(name) == kind, (name, types.get(name))
    assert metric(text, "kvds_proxy_requests_total", endpoint="completions") == 3
    assert metric(text, "kvds_proxy_requests_total", endpoint="chat") == 2
    assert metric(text, "kvds_proxy_ttft_seconds_count") == 5
    assert metric(text, "kvds_proxy_request_seconds_count") == 5
    for role, s in (("prefill", p1), ("decode", d1)):
        assert metric(text, "kvds_proxy_backend_requests_total", role=role,
                      backend=s.addr) == 5
        assert metric(text, "kvds_proxy_backend_up", role=role, backend=s.addr) == 1
        assert metric(text, "kvds_proxy_backend_outstanding", role=role, backend=s.addr) == 0
    les = [ln.split('le="')[1].split('"')[0] for ln in text.splitlines()
           if ln.startswith("kvds_proxy_ttft_seconds_bucket")]
    assert les == BUCKETS, les


# ------------------------------------------------------------- command line

def test_seed_command_line_forms(make_proxy, standins, tmp_path):
    (p1, p2), (d1,) = standins(2, "P"), standins(1, "D")
    px = make_proxy(args=[*FAST, "--prefiller-host", "127.0.0.1", "--prefiller-ports",
                          str(p1.port), str(p2.port), "--decoder-hosts", "127.0.0.1",
                          "--decoder-ports", str(d1.port), "--pd-disaggregation",
                          "--policy", "round-robin"])
    px.wait_health(200)
    for i in range(2):
        ok(px.port, cbody(prompt=f"seed {i}"))
    assert len(p1.posts()) == len(p2.posts()) == 1 and len(d1.posts()) == 2
    # counts that do not pair up are refused at start
    bad = subprocess.run([KVDS_BIN, "proxy", "--port", "0", "--prefiller-hosts", "127.0.0.1",
                          "127.0.0.2", "127.0.0.3", "--prefiller-ports", "1", "2"],
                         capture_output=True, timeout=10)
    assert bad.returncode != 0 and bad.stderr.strip() and \
        len(bad.stderr.strip().splitlines()) == 1, bad
    nothing = subprocess.run([KVDS_BIN, "proxy", "--port", "0"], capture_output=True,
                             timeout=10)
    assert nothing.returncode != 0, nothing


# ------------------------------------------------------- routing, step by step

def test_round_robin_cycles(make_proxy, standins):
    ps, (d1,) = standins(3, "P"), standins(1, "D")
    px = start(make_proxy, ps, [d1], "--policy", "round-robin")
    order = []
    for i in range(7):
        ok(px.port, cbody(prompt="same prompt every time"))
        order.append(owner(ps, max(posts(ps), key=lambda r: r.t)).name)
    assert len(set(order[:3])) == 3 and order[3:6] == order[:3] and order[6] == order[0], order


def test_least_outstanding_avoids_the_busy_one(make_proxy, standins):
    (p1, p2), (d1,) = standins(2, "P"), standins(1, "D")
    gate = threading.Event()
    p1.plan(Act.hold(gate))
    p2.plan(Act.hold(gate))
    px = start(make_proxy, [p1, p2], [d1], "--policy", "least-outstanding")
    held = threading.Thread(target=ok, args=(px.port, cbody(prompt="held")))
    held.start()
    wait_until(lambda: posts([p1, p2]), "the held prefill")
    busy = owner([p1, p2], posts([p1, p2])[0])
    free = p2 if busy is p1 else p1
    free.clear()
    try:
        for i in range(3):
            ok(px.port, cbody(prompt=f"lo {i}"))
        assert len(free.posts()) == 3 and len(busy.posts()) == 1
        assert px.m("kvds_proxy_backend_outstanding", role="prefill", backend=busy.addr) == 1
    finally:
        gate.set()
        held.join(30)
    # with nothing in flight, ties go round-robin: both are used again
    for i in range(2):
        ok(px.port, cbody(prompt=f"tie {i}"))
    assert len(busy.posts()) == 2 and len(free.posts()) == 4


def test_prefix_affinity_string_tokens_and_messages(make_proxy, standins):
    (p1, p2), (d1, d2) = standins(2, "P"), standins(2, "D")
    px = start(make_proxy, [p1, p2], [d1, d2], "--affinity-block", "16")

    def route(body, path="/v1/completions"):
        ok(px.port, body, path=path)
        pre = max(posts([p1, p2]), key=lambda r: r.t)
        dec = max(posts([d1, d2]), key=lambda r: r.t)
        return owner([p1, p2], pre).name, owner([d1, d2], dec).name

    shared = "The quick brown fox jumps over the lazy dog. " * 2       # 90 chars
    first = route(cbody(prompt=shared + "one"))
    for tail in ("two", "three, a longer tail", ""):
        assert route(cbody(prompt=shared + tail)) == first
    # distinct prompts (first block differs) are spread over both
    spread = {route(cbody(prompt=f"{i:02d} distinct prompt number {i} " * 3)) for i in range(4)}
    assert {p for p, _ in spread} == {"P1", "P2"} and {d for _, d in spread} == {"D1", "D2"}
    # token-id prompts: blocks of 16 ids
    ids = [(i * 13) % 400 + 4 for i in range(64)]
    first = route(cbody(prompt=ids + [7, 8]))
    assert route(cbody(prompt=ids + [9])) == first
    assert route(cbody(prompt=ids[:48])) == first
    # chat messages, serialised in order
    sys_msg = {"role": "system", "content": "You are a careful assistant. " * 4}
    chat = lambda q: {"model": "standin", "messages": [sys_msg, {"role": "user", "content": q}],
                      "max_tokens": 2}
    first = route(chat("what?"), "/v1/chat/completions")
    assert route(chat("why?"), "/v1/chat/completions") == first


def test_prefix_affinity_slack(make_proxy, standins):
    """Over --affinity-slack requests in flight above the least loaded
    instance, the prefix's owner is passed over."""
    (p1, p2), (d1,) = standins(2, "P"), standins(1, "D")
    px = start(make_proxy, [p1, p2], [d1], "--affinity-block", "16", "--affinity-slack", "0")
    prompt = "a shared prefix that spans several blocks of sixteen characters. "
    ok(px.port, cbody(prompt=prompt + "1"))
    home = owner([p1, p2], posts([p1, p2])[0])
    other = p2 if home is p1 else p1
    ok(px.port, cbody(prompt=prompt + "2"))
    assert len(home.posts()) == 2
    gate = threading.Event()
    home.plan(Act.hold(gate))
    t = threading.Thread(target=ok, args=(px.port, cbody(prompt=prompt + "3")))
    t.start()
    try:
        home.wait_posts(3)
        ok(px.port, cbody(prompt=prompt + "4"))       # home is 1 above the other
        assert len(other.posts()) == 1 and len(home.posts()) == 3
    finally:
        gate.set()
        t.join(30)


# ------------------------------------------------- regressions (code review)

def _raw(port, path, body, ver="1.1", extra="", timeout=10):
    """Sends one request on a raw socket; everything read until the proxy
    closes (b"<<timeout>>" appended when it does not in time)."""
    import socket
    b = json.dumps(body).encode()
    data = (f"POST {path} HTTP/{ver}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\n{extra}\r\n").encode() + b
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            got = s.recv(65536)
            if not got:
                break
            out += got
    except socket.timeout:
        out += b"<<timeout>>"
    s.close()
    return out


def test_sigterm_lets_a_stream_in_flight_finish(make_proxy, standins):
    """SIGTERM while a stream is in flight: the stream's last chunks and its
    terminating chunk still reach the client, then the proxy exits 0."""
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    gate = threading.Event()
    chunks = [b"data: first\n\n", b"data: " + b"x" * 100000 + b"\n\n", b"data: [DONE]\n\n"]
    d1.plan(Act.sse(chunks, gates=[None, gate, None]))
    px = start(make_proxy, [p1], [d1])
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("out", _raw(
        px.port, "/v1/completions", cbody(stream=True), extra="Connection: close\r\n")))
    t.start()
    d1.wait_posts(1)
    time.sleep(0.3)
    px.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    gate.set()
    t.join(20)
    out = res["out"]
    assert out.endswith(b"0\r\n\r\n"), out[-200:]
    assert b"data: [DONE]" in out and out.count(b"x") >= 100000
    assert px.proc.wait(20) == 0


def test_http10_keepalive_stream_ends_with_the_connection(make_proxy, standins):
    """HTTP/1.0 has no chunked encoding: a stream of unknown length is sent
    as is and ends when the proxy closes, even if the client asked for
    keep-alive (no bogus Content-Length: 0)."""
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    px = start(make_proxy, [p1], [d1])
    out = _raw(px.port, "/v1/completions", cbody(stream=True), ver="1.0",
               extra="Connection: keep-alive\r\n", timeout=5)
    head, _, body = out.partition(b"\r\n\r\n")
    assert not out.endswith(b"<<timeout>>"), out
    assert b"Content-Length: 0" not in head, head
    assert b"Transfer-Encoding" not in head, head
    assert body.endswith(b"data: [DONE]\n\n"), body[-200:]


def test_long_prefill_4xx_passed_on_whole(make_proxy, standins):
    (p1,), (d1,) = standins(1, "P"), standins(1, "D")
    err = json.dumps({"error": {"message": "bad " + "y" * 10000, "type": "BadRequestError",
                                "param": None, "code": 400}}).encode()
    p1.plan(Act.body(err, status=400))
    px = start(make_proxy, [p1], [d1])
    r = post(px.port, "/v1/completions", cbody())
    assert r.status == 400
    assert r.body == err
    assert d1.posts() == []
