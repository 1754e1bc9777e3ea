"""Helpers of the proxy tests: a `kvds proxy` process ($KVDS_BIN proxy) on
a free loopback port, plain HTTP calls, OpenAI error bodies and the
proxy's /metrics.

Every proxy started through the `make_proxy` fixture is stopped at the end
of its test with SIGTERM and must exit 0.
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "connector"))

from conftest import KVDS_BIN, free_port  # noqa: E402
from serve_util import metric  # noqa: E402,F401  (re-exported)

START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 20
HTTP_TIMEOUT_S = 120
# the proxy's own error bodies (docs/proxy.md "Failures")
ERROR_TYPES_4XX = ("invalid_request_error",)


def proxy_available():
    """True when $KVDS_BIN has a `proxy` subcommand."""
    if not os.access(KVDS_BIN, os.X_OK):
        return False
    try:
        r = subprocess.run([KVDS_BIN, "proxy", "--help"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and b"--prefill" in (r.stdout + r.stderr)


needs_proxy = pytest.mark.skipif(not proxy_available(),
                                 reason=f"{KVDS_BIN} has no `proxy` subcommand")


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<HTTP {self.status} {self.headers.get('content-type')} {self.body[:400]!r}>"


def call(port, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT_S):
    """One request on a fresh connection; the whole answer as a Resp.
    `body`: bytes as they are, anything else as JSON."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        c.close()


def post(port, path, body, headers=None, timeout=HTTP_TIMEOUT_S):
    return call(port, "POST", path, body, headers, timeout)


def open_stream(port, path, body, headers=None, timeout=HTTP_TIMEOUT_S):
    """Sends a POST and returns (connection, response) with the body unread."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    c.request("POST", path, body=json.dumps(body).encode(), headers=h)
    return c, c.getresponse()


def assert_openai_error(resp, status, types=None):
    """`resp` is `status` with an OpenAI error body:
    {"error": {"message": str, "type": str, "param": ..., "code": status}}."""
    assert resp.status == status, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {resp}") from None
    err = body.get("error") if isinstance(body, dict) else None
    assert isinstance(err, dict), resp
    assert isinstance(err.get("message"), str) and err["message"], resp
    assert isinstance(err.get("type"), str) and err["type"], resp
    if types is not None:
        assert err["type"] in types, resp
    assert "param" in err, resp
    assert err.get("code") in (status, str(status)), resp
    return err


def sse_data(body):
    """The `data:` payloads of an SSE body, in order (bytes)."""
    out = []
    for ev in body.split(b"\n\n"):
        for line in ev.split(b"\n"):
            if line.startswith(b"data:"):
                out.append(line[5:].strip())
    return out


class Proxy:
    """`kvds proxy` on 127.0.0.1:<free port>; output in <tmp>/proxy-<port>.log."""

    def __init__(self, tmp, prefill=(), decode=(), args=(), port=None, env=None,
                 wait=True):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(str(tmp), f"proxy-{self.port}.log")
        self.argv = [KVDS_BIN, "proxy", "--host", "127.0.0.1", "--port", str(self.port)]
        for a in prefill:
            self.argv += ["--prefill", a]
        for a in decode:
            self.argv += ["--decode", a]
        self.argv += list(args)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, **(env or {})),
                                         stdin=subprocess.DEVNULL)
        if wait:
            self.wait_listening()

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def tail(self, n=4000):
        return f"--- proxy log ({' '.join(self.argv)}) ---\n{self.log()[-n:]}"

    def wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"proxy exited with {self.proc.returncode}\n{self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"proxy not listening after {START_TIMEOUT_S} s\n{self.tail()}")
            time.sleep(0.02)

    def health(self):
        return call(self.port, "GET", "/health", timeout=10)

    def wait_health(self, status=200, timeout=START_TIMEOUT_S):
        """Polls /health until it answers `status`; returns that answer."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.health()
            if r.status == status:
                return r
            if time.monotonic() > deadline:
                pytest.fail(f"proxy /health still {r} after {timeout} s\n{self.tail()}")
            time.sleep(0.05)

    def metrics(self):
        r = call(self.port, "GET", "/metrics", timeout=10)
        assert r.status == 200, r
        return r.body.decode()

    def m(self, name, **labels):
        """One metric's value (0 when absent)."""
        return metric(self.metrics(), name, **labels) or 0

    def backend_requests(self, role, backends):
        """{backend: kvds_proxy_backend_requests_total} for the role."""
        text = self.metrics()
        return {b: int(metric(text, "kvds_proxy_backend_requests_total", role=role,
                              backend=b) or 0) for b in backends}

    def stop(self):
        """SIGTERM; returns the exit status (SIGKILL after STOP_TIMEOUT_S)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"proxy still running {STOP_TIMEOUT_S} s after SIGTERM\n{self.tail()}")


@pytest.fixture
def make_proxy(tmp_path):
    """Starts proxies; each is stopped after the test and must exit 0."""
    proxies = []

    def start(*a, **kw):
        p = Proxy(tmp_path, *a, **kw)
        proxies.append(p)
        return p

    yield start
    bad = []
    for p in proxies:
        rc = p.stop()
        if rc != 0:
            bad.append(f"exit {rc}\n{p.tail()}")
    assert not bad, "proxy did not exit 0 on SIGTERM:\n" + "\n".join(bad)


def wait_until(pred, what, timeout=10.0, poll=0.02):
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return v


class RawStream:
    """A POST on a raw socket whose answer is read as it arrives: `body` is
    the decoded body so far (chunked, Content-Length or until close),
    `ended` says it ended cleanly (last chunk, or all of Content-Length)."""

    def __init__(self, port, path, body, headers=None, timeout=30):
        self.sk = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n")
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        self.sk.sendall(head.encode() + b"\r\n" + data)
        self.buf = b""
        self.body = b""
        self.ended = False
        self.eof = False
        self.status = None
        self.headers = {}
        self._left = None            # Content-Length still to come

    def close(self):
        self.sk.close()

    def _recv(self, timeout):
        self.sk.settimeout(max(timeout, 0.001))
        try:
            d = self.sk.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def read_head(self, timeout=30):
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if self.eof or time.monotonic() > deadline:
                raise AssertionError(f"no response head (eof={self.eof}): {self.buf!r}")
            self._recv(deadline - time.monotonic())
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        if "content-length" in self.headers:
            self._left = int(self.headers["content-length"])
        self._decode()
        return self.status

    def _decode(self):
        if self.ended:
            return
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while b"\r\n" in self.buf:
                line, rest = self.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    if rest.startswith(b"\r\n"):
                        self.ended = True
                        self.buf = rest[2:]
                    return
                if len(rest) < size + 2:
                    return
                self.body += rest[:size]
                self.buf = rest[size + 2:]
        elif self._left is not None:
            take = self.buf[:self._left]
            self.body += take
            self.buf = self.buf[len(take):]
            self._left -= len(take)
            self.ended = self._left == 0
        else:
            self.body += self.buf
            self.buf = b""
            self.ended = self.eof

    def read_until(self, pred, timeout=10):
        """Reads until pred(body) holds or the answer ends; pred's verdict."""
        if self.status is None:
            self.read_head(timeout)
        deadline = time.monotonic() + timeout
        while not pred(self.body):
            if self.ended or self.eof or time.monotonic() > deadline:
                return pred(self.body)
            self._recv(min(0.1, deadline - time.monotonic()))
            self._decode()
        return True

    def read_to_end(self, timeout=30):
        """The rest of the answer; True if it ended cleanly."""
        self.read_until(lambda _: self.ended, timeout)
        return self.ended
