"""Errors only a misbehaving peer can cause: a fake worker on a loopback
port speaks the wire format (docs/protocol.md) and lies on purpose."""
import socket
import struct
import threading

import pytest

import kvds

MAGIC = 0x5344564B
HDR = struct.Struct("<IBBHQiIIIQII")  # 48 bytes
ITEM = struct.Struct("<iIQQQQ")  # 40 bytes + key
F_REPLY, F_INLINE = 0x1, 0x4
OP_HELLO, OP_GET = 1, 8


def frame(op, req_id, items, flags=F_REPLY, data=b"", version=1, magic=MAGIC):
    meta = b"".join(ITEM.pack(st, len(k), a, b, c, d) + k for st, k, a, b, c, d in items)
    fields = [magic, version, op, flags, req_id, 0, len(items), len(meta), 0, len(data)]
    unsealed = HDR.pack(*fields, 0, 0)
    crc = kvds.checksum(unsealed + meta) & 0xFFFFFFFF
    return HDR.pack(*fields, crc, 0) + meta + data


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def read_request(conn):
    h = HDR.unpack(recv_exact(conn, HDR.size))
    op, req_id, meta_len, data_len = h[2], h[4], h[7], h[9]
    recv_exact(conn, meta_len + data_len)
    return op, req_id


class FakeWorker:
    """Answers each accepted connection with `script(conn)`; bounded."""

    def __init__(self, script):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.srv.settimeout(10)
        self.addr = "tcp://127.0.0.1:%d" % self.srv.getsockname()[1]
        self.script = script
        self.errors = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.srv.accept()
            with conn:
                conn.settimeout(10)
                self.script(conn)
        except EOFError:
            pass  # the client hung up, as it should after an error
        except Exception as e:
            self.errors.append(e)

    def close(self):
        self.thread.join(20)
        self.srv.close()
        assert not self.errors, self.errors


def hello_reply(conn):
    op, rid = read_request(conn)
    assert op == OP_HELLO
    # A socket path, as a worker sends; tcp:// keeps the client on TCP.
    conn.sendall(frame(OP_HELLO, rid, [(0, b"/nonexistent/kvds.sock", 0, 0, 0, 42)]))


def test_corrupted_value_is_checksum_error():
    value = b"the real bytes"

    def script(conn):
        hello_reply(conn)
        for _ in range(3):  # get, mget, mget_views
            op, rid = read_request(conn)
            assert op == OP_GET
            bad = kvds.checksum(value) ^ 1
            conn.sendall(frame(OP_GET, rid, [(0, b"", len(value), 0, bad, 0)],
                               flags=F_REPLY | F_INLINE, data=value))
        while conn.recv(4096):
            pass

    fake = FakeWorker(script)
    c = kvds.Client(fake.addr)
    assert not c.is_local
    with pytest.raises(kvds.ChecksumError) as ei:
        c.get(b"k")
    assert ei.value.code == kvds.E_CHECKSUM
    with pytest.raises(kvds.ChecksumError) as ei:
        c.mget([b"k"])
    assert ei.value.index == 0
    with pytest.raises(kvds.ChecksumError) as ei:
        c.mget_views([b"k"])
    assert ei.value.index == 0
    c.close()
    fake.close()


@pytest.mark.parametrize("lie,code", [("magic", kvds.E_PROTO), ("version", kvds.E_VERSION)])
def test_malformed_reply_is_protocol_error(lie, code):
    def script(conn):
        op, rid = read_request(conn)
        kw = {"magic": 0x12345678} if lie == "magic" else {"version": 9}
        conn.sendall(frame(op, rid, [(0, b"", 0, 0, 0, 0)], **kw))
        while conn.recv(4096):
            pass

    fake = FakeWorker(script)
    with pytest.raises(kvds.ProtocolError) as ei:
        kvds.Client(fake.addr)
    assert ei.value.code == code
    fake.close()


def test_peer_hangs_up_is_connection_closed():
    def script(conn):
        hello_reply(conn)
        read_request(conn)  # a PING, left unanswered: hang up

    fake = FakeWorker(script)
    c = kvds.Client(fake.addr)
    assert c.connected
    with pytest.raises(kvds.ConnectionClosed):
        c.ping()
    assert not c.connected
    with pytest.raises(kvds.ConnectionClosed):
        c.ping()  # disconnected for good
    c.close()
    fake.close()


def test_silent_peer_is_timeout():
    done = threading.Event()

    def script(conn):
        hello_reply(conn)
        read_request(conn)
        done.wait(10)  # never answer

    fake = FakeWorker(script)
    c = kvds.Client(fake.addr, timeout_ms=200)
    with pytest.raises(kvds.Timeout):
        c.ping()
    done.set()
    c.close()
    fake.close()


def test_value_sizes_that_wrap_are_protocol_error():
    """Two sizes whose sum wraps around 2**64 to the data length must not
    pass the length check (the client would hash 2**64-1 bytes of a 1-byte
    buffer)."""
    def script(conn):
        hello_reply(conn)
        op, rid = read_request(conn)
        assert op == OP_GET
        conn.sendall(frame(OP_GET, rid, [(0, b"", 2**64 - 1, 0, 0, 0), (0, b"", 2, 0, 0, 0)],
                           flags=F_REPLY | F_INLINE, data=b"x"))
        while conn.recv(4096):
            pass

    fake = FakeWorker(script)
    c = kvds.Client(fake.addr)
    with pytest.raises(kvds.ProtocolError):
        c.mget([b"a", b"b"])
    assert not c.connected
    c.close()
    fake.close()


def read_reply(sock):
    h = HDR.unpack(recv_exact(sock, HDR.size))
    count, meta_len, data_len = h[6], h[7], h[9]
    meta = recv_exact(sock, meta_len + data_len)
    items, off = [], 0
    for _ in range(count):
        st, klen, a, b, c, d = ITEM.unpack_from(meta, off)
        off += ITEM.size + klen
        items.append((st, a, b, c, d))
    return h[2], items


def test_hello_announces_ranges_and_one_item_hello_still_works(worker):
    """A worker's HELLO reply carries a second item naming what it serves
    beyond the first version (ranged pulls, which a puller uses only with
    a peer that announced them); a one-item HELLO, as an older worker
    sends, is still a good one (test_corrupted_value_is_checksum_error and
    the other fakes here connect with it)."""
    host, port = worker.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(frame(OP_HELLO, 7, [(0, b"", 0, 0, 0, 0)], flags=0))
        op, items = read_reply(s)
    assert op == OP_HELLO and len(items) == 2
    assert items[1][0] == 0 and items[1][1] & 0x1  # KVDS_HELLO_FEAT_RANGE
