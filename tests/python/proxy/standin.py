"""A tiny OpenAI-compatible stand-in backend for the proxy tests.

It shows what a real vLLM engine cannot show on demand: exact bytes with
chosen chunk boundaries, and failures at chosen moments. Used only for
those; routing, hand-off and load are tested against real vLLM servers
(test_proxy_vllm.py).

    s = Standin("P1")                        # listening on 127.0.0.1:<free port>
    s.plan(Act.status(500), Act.ok())        # the next two POSTs, in order
    ... s.requests[0].json["max_tokens"] ... # what it received
    s.stop()

Every POST takes the next planned act (else `s.default`). Acts:

* `ok()` — a completion (or chat completion) built from the request: JSON,
  or SSE events when `stream` is true. A prefill request (its
  `kv_transfer_params.do_remote_decode` true) is answered with
  `kv_transfer_params` unique to that answer (`s.answers` records them).
* `sse(chunks, delays, gates)` — `chunks` (bytes) sent as they are, one
  HTTP chunk each, after `delays[i]` seconds and after `gates[i]` (an
  Event) is set; the terminating chunk follows. Content-Type
  `text/event-stream; charset=utf-8` unless `ctype` says otherwise.
* `body(data, status, ctype)` — one body with Content-Length.
* `status(code)` — an error answer before any other byte (OpenAI error
  JSON).
* `hang()` — reads the request and never answers.
* `close_mid(chunks, rst)` — status, headers and `chunks`, then closes the
  connection without ending the body (FIN, or RST with `rst`: then the
  peer's kernel may drop what it has not read yet).
* `slow_first(delay, then)` — waits `delay` s, then does `then`.
* `hold(gate, then)` — waits until `gate` (an Event) is set, then does
  `then`.

While an act waits (a delay, a gate, a hang) it watches the connection:
when the peer closes it, the request's `closed` Event is set — how the
tests see that the proxy cancelled a backend request.

GET /health answers `s.health` (200 by default), GET /v1/models a model
list; anything else 404.
"""
import collections
import itertools
import json
import select
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SSE = "text/event-stream; charset=utf-8"
MODELS = {"object": "list", "data": [{"id": "standin", "object": "model", "owned_by": "kvds"}]}


class Act:
    def __init__(self, kind, **kw):
        self.kind = kind
        self.kw = kw

    def __repr__(self):
        return f"Act.{self.kind}({self.kw})"

    @classmethod
    def ok(cls, tokens=None):
        return cls("ok", tokens=tokens)

    @classmethod
    def sse(cls, chunks, delays=None, gates=None, ctype=SSE, status=200):
        return cls("sse", chunks=list(chunks), delays=delays, gates=gates, ctype=ctype,
                   status=status)

    @classmethod
    def body(cls, data, status=200, ctype="application/json"):
        return cls("body", data=data, status=status, ctype=ctype)

    @classmethod
    def status(cls, code, message="stand-in failure"):
        err = {"error": {"message": message, "type": "server_error", "param": None,
                         "code": code}}
        return cls("body", data=json.dumps(err).encode(), status=code,
                   ctype="application/json")

    @classmethod
    def hang(cls):
        return cls("hang")

    @classmethod
    def close_mid(cls, chunks, ctype=SSE, rst=False):
        return cls("close_mid", chunks=list(chunks), ctype=ctype, rst=rst)

    @classmethod
    def slow_first(cls, delay, then=None):
        return cls("slow_first", delay=delay, gate=None, then=then or Act.ok())

    @classmethod
    def hold(cls, gate, then=None):
        """Nothing until `gate` is set, then `then` (default ok())."""
        return cls("slow_first", delay=None, gate=gate, then=then or Act.ok())


class Received:
    """One request as the stand-in read it."""

    def __init__(self, method, path, headers, body):
        self.method = method
        self.path = path
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None
        self.t = time.monotonic()
        self.act = None
        self.closed = threading.Event()    # the peer closed the connection while we waited
        self.done = threading.Event()      # the act has ended (answered, or gave up)

    def __repr__(self):
        return f"<{self.method} {self.path} act={self.act} closed={self.closed.is_set()}>"


def completion(req, text="ok", n=None, kv_transfer_params=None):
    """The JSON a completion server would answer to the request `req`."""
    chat = "messages" in req
    n = n if n is not None else int(req.get("max_tokens") or req.get("max_completion_tokens") or 1)
    toks = [(7 * i + 3) % 500 for i in range(n)]
    words = " ".join(f"{text}{i}" for i in range(n))
    choice = ({"index": 0, "message": {"role": "assistant", "content": words},
               "finish_reason": "length"} if chat else
              {"index": 0, "text": words, "token_ids": toks, "finish_reason": "length"})
    return {"id": f"standin-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion" if chat else "text_completion", "model":
            req.get("model"), "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
            "kv_transfer_params": kv_transfer_params}


def sse_events(req, n=None):
    """The SSE events (bytes) of a streamed answer to `req`, [DONE] last."""
    chat = "messages" in req
    n = n if n is not None else int(req.get("max_tokens") or req.get("max_completion_tokens") or 1)
    out = []
    for i in range(n):
        delta = ({"index": 0, "delta": {"content": f"ok{i} "}, "finish_reason": None} if chat
                 else {"index": 0, "text": f"ok{i} ", "finish_reason": None})
        ev = {"id": "standin-stream", "object": "chat.completion.chunk" if chat
              else "text_completion", "choices": [delta]}
        out.append(b"data: " + json.dumps(ev).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class Standin:
    def __init__(self, name="standin", health=200):
        self.name = name
        self.health = health
        self.default = Act.ok()
        self.requests = []          # every Received, in arrival order
        self.answers = []           # kv_transfer_params handed out by prefill answers
        self._plan = collections.deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._seq = itertools.count()
        self._http = _Server(("127.0.0.1", 0), self._handler())
        self.port = self._http.server_address[1]
        self.addr = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._http.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def __repr__(self):
        return f"<Standin {self.name} {self.addr}>"

    # -- control -------------------------------------------------------
    def plan(self, *acts):
        """Queues acts for the next POSTs, in order."""
        with self._lock:
            self._plan.extend(acts)

    def clear(self):
        with self._lock:
            self._plan.clear()
            self.requests.clear()
            self.answers.clear()
        self.default = Act.ok()

    def posts(self, path=None):
        """The POSTs received (to `path` only, if given)."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST"
                    and (path is None or r.path == path)]

    def wait_posts(self, n, timeout=10.0):
        """Waits until at least n POSTs arrived; returns them."""
        deadline = time.monotonic() + timeout
        while len(got := self.posts()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {len(got)} POSTs, waited for {n}")
            time.sleep(0.01)
        return got

    def stop(self):
        self._stopping.set()
        self._http.shutdown()
        self._http.server_close()

    def _next_act(self):
        with self._lock:
            return self._plan.popleft() if self._plan else self.default

    # -- the HTTP side -------------------------------------------------
    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _read_body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _record(self, body):
                r = Received(self.command, self.path, dict(self.headers), body)
                with standin._lock:
                    standin.requests.append(r)
                return r

            def do_GET(self):
                r = self._record(b"")
                if self.path == "/health":
                    self._send_body(standin.health, "application/json",
                                    json.dumps({"status": "ok" if standin.health == 200
                                                else "down"}).encode())
                elif self.path == "/v1/models":
                    self._send_body(200, "application/json", json.dumps(MODELS).encode())
                else:
                    self._send_body(404, "application/json", b'{"error": "not found"}')
                r.done.set()

            def do_POST(self):
                r = self._record(self._read_body())
                r.act = standin._next_act()
                try:
                    self._run(r, r.act)
                except (BrokenPipeError, ConnectionResetError):
                    r.closed.set()
                finally:
                    r.done.set()

            # -- acts ----------------------------------------------------
            def _run(self, r, act):
                k, kw = act.kind, act.kw
                if k == "ok":
                    self._ok(r, kw["tokens"])
                elif k == "sse":
                    self._sse(r, kw)
                elif k == "body":
                    self._send_body(kw["status"], kw["ctype"], kw["data"])
                elif k == "hang":
                    self._wait(r, None, None, forever=True)
                    self.close_connection = True
                elif k == "close_mid":
                    self._start(200, kw["ctype"], chunked=True)
                    for c in kw["chunks"]:
                        self._chunk(c)
                    self.wfile.flush()
                    self._abort(kw["rst"])
                elif k == "slow_first":
                    if self._wait(r, kw["delay"], kw["gate"]):
                        self._run(r, kw["then"])
                    else:
                        self.close_connection = True
                else:
                    raise ValueError(k)

            def _ok(self, r, tokens):
                req = r.json if isinstance(r.json, dict) else {}
                params = None
                ktp = req.get("kv_transfer_params")
                if isinstance(ktp, dict) and ktp.get("do_remote_decode"):
                    params = {"do_remote_prefill": True, "standin": standin.name,
                              "nonce": f"{standin.name}-{next(standin._seq)}-"
                                       f"{uuid.uuid4().hex[:8]}", "remote_block_ids": [1, 2]}
                    with standin._lock:
                        standin.answers.append(params)
                if req.get("stream"):
                    self._sse(r, {"chunks": sse_events(req, tokens), "delays": None,
                                  "gates": None, "ctype": SSE, "status": 200})
                else:
                    body = completion(req, n=tokens, kv_transfer_params=params)
                    self._send_body(200, "application/json", json.dumps(body).encode())

            def _sse(self, r, kw):
                delays, gates = kw["delays"], kw["gates"]
                if kw["chunks"] and not self._wait(r, _at(delays, 0), _at(gates, 0)):
                    self.close_connection = True
                    return
                self._start(kw["status"], kw["ctype"], chunked=True)
                for i, c in enumerate(kw["chunks"]):
                    if i and not self._wait(r, _at(delays, i), _at(gates, i)):
                        self.close_connection = True
                        return
                    self._chunk(c)
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            # -- wire helpers -------------------------------------------
            def _start(self, status, ctype, chunked=False, length=None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(length))
                self.end_headers()

            def _chunk(self, data):
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

            def _send_body(self, status, ctype, data):
                self._start(status, ctype, length=len(data))
                self.wfile.write(data)
                self.wfile.flush()

            def _abort(self, rst):
                # FIN (or RST) in the middle of the body
                if rst:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
                else:
                    self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                self.connection.close()

            def _wait(self, r, delay, gate, forever=False):
                """Waits `delay` s and for `gate` (or, `forever`, until the
                peer closes), watching the connection; False once the peer
                has closed it (or the stand-in stops)."""
                if not forever and delay is None and gate is None:
                    return True
                deadline = time.monotonic() + (delay or 0)
                while True:
                    if not forever and time.monotonic() >= deadline and \
                            (gate is None or gate.is_set()):
                        return True
                    if standin._stopping.is_set():
                        return False
                    if self._peer_closed():
                        r.closed.set()
                        return False

            def _peer_closed(self):
                try:
                    rd, _, _ = select.select([self.connection], [], [], 0.02)
                    if not rd:
                        return False
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return True
                    time.sleep(0.02)        # bytes of a next request: not a close
                    return False
                except OSError:
                    return True

        return Handler


def _at(seq, i):
    return seq[i] if seq is not None and i < len(seq) else None
