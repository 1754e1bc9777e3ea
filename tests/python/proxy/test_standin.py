"""The stand-in backend of the proxy tests, checked on its own: each act
does on the wire what the proxy tests rely on (exact bytes, chunk
boundaries, gates, errors, hangs, aborted streams, closed connections
seen)."""
import http.client
import json
import socket
import threading
import time

import pytest

from standin import SSE, Act, Standin, sse_events


@pytest.fixture
def s():
    st = Standin("S")
    yield st
    st.stop()


def raw_post(port, body, path="/v1/completions"):
    """(socket, request bytes sent): a POST written by hand."""
    data = json.dumps(body).encode()
    sk = socket.create_connection(("127.0.0.1", port), timeout=10)
    sk.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"X-Request-Id: rid-7\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
               % (path.encode(), len(data), data))
    return sk


def read_all(sk):
    out = b""
    while chunk := sk.recv(65536):
        out += chunk
    return out


def test_ok_json_records_request_and_prefill_params(s):
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    body = {"model": "m", "prompt": "hi", "max_tokens": 1,
            "kv_transfer_params": {"do_remote_decode": True}}
    c.request("POST", "/v1/completions", json.dumps(body), {"X-Request-Id": "r1"})
    r = c.getresponse()
    got = json.loads(r.read())
    assert r.status == 200 and r.getheader("Content-Type") == "application/json"
    assert got["kv_transfer_params"] == s.answers[0] and s.answers[0]["standin"] == "S"
    (rec,) = s.posts()
    assert rec.json == body and rec.headers["x-request-id"] == "r1" and rec.done.wait(5)
    # keep-alive: a second request on the same connection
    c.request("POST", "/v1/completions", json.dumps({"model": "m", "prompt": "x",
                                                     "max_tokens": 3}))
    r = c.getresponse()
    got = json.loads(r.read())
    assert got["kv_transfer_params"] is None and len(got["choices"][0]["token_ids"]) == 3
    assert len(s.posts()) == 2
    c.close()


def test_stream_events_and_exact_chunks(s):
    req = {"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True}
    sk = raw_post(s.port, req)
    wire = read_all(sk)
    sk.close()
    head, _, body = wire.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and SSE.encode() in head
    want = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in sse_events(req)) + b"0\r\n\r\n"
    assert body == want

    chunks = [b"data: {\"a\"", b": 1}\n\ndata: [DO", b"NE]\n\n"]
    s.plan(Act.sse(chunks))
    sk = raw_post(s.port, req)
    body = read_all(sk).partition(b"\r\n\r\n")[2]
    sk.close()
    assert body == b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def test_gates_hold_chunks_back(s):
    gate = threading.Event()
    s.plan(Act.sse([b"data: 1\n\n", b"data: 2\n\n"], gates=[None, gate]))
    sk = raw_post(s.port, {"model": "m", "prompt": "x"})
    sk.settimeout(0.5)
    first = b""
    while b"data: 1" not in first:
        first += sk.recv(4096)
    with pytest.raises(socket.timeout):
        sk.recv(4096)                       # held at the gate
    gate.set()
    sk.settimeout(10)
    rest = read_all(sk)
    sk.close()
    assert b"data: 2" in rest and rest.endswith(b"0\r\n\r\n")


def test_status_before_first_byte(s):
    s.plan(Act.status(500))
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    c.request("POST", "/v1/completions", "{}")
    r = c.getresponse()
    assert r.status == 500 and json.loads(r.read())["error"]["code"] == 500


def test_hang_sees_the_close(s):
    s.plan(Act.hang())
    sk = raw_post(s.port, {"model": "m", "prompt": "x"})
    (rec,) = s.wait_posts(1)
    sk.settimeout(0.3)
    with pytest.raises(socket.timeout):
        sk.recv(1)
    assert not rec.closed.is_set()
    sk.close()
    assert rec.closed.wait(5) and rec.done.wait(5)


def test_close_mid_stream(s):
    s.plan(Act.close_mid([b"data: 1\n\n"]))
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    c.request("POST", "/v1/completions", json.dumps({"stream": True}))
    r = c.getresponse()
    assert r.status == 200
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        r.read()


def test_slow_first_byte(s):
    s.plan(Act.slow_first(0.3))
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    c.request("POST", "/v1/completions", json.dumps({"max_tokens": 2}))
    r = c.getresponse()
    assert r.status == 200 and time.monotonic() - t0 >= 0.3
    assert len(json.loads(r.read())["choices"][0]["token_ids"]) == 2


def test_health_models_and_chunked_request_body(s):
    for path, status in (("/health", 200), ("/v1/models", 200), ("/nope", 404)):
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        c.request("GET", path)
        assert c.getresponse().status == status
    s.health = 503
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    c.request("GET", "/health")
    assert c.getresponse().status == 503
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    c.request("POST", "/v1/completions", body=iter([b'{"model": ', b'"m", "prompt": "p"}']),
              encode_chunked=True)
    assert c.getresponse().status == 200
    assert s.posts()[-1].json == {"model": "m", "prompt": "p"}
