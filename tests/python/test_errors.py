"""Every error class, raised where libkvds reports it."""
import errno

import pytest

import kvds
from conftest import connect, free_port

EXPECTED = {
    "NOTFOUND": kvds.NotFound, "EXISTS": kvds.Exists, "NOSPACE": kvds.NoSpace,
    "TIMEOUT": kvds.Timeout, "PROTO": kvds.ProtocolError,
    "INVAL": kvds.InvalidArgument, "KEYLEN": kvds.KeyLength,
    "TOOBIG": kvds.TooBig, "STATE": kvds.KvdsError, "PERM": kvds.KvdsError,
    "CHECKSUM": kvds.ChecksumError, "CLOSED": kvds.ConnectionClosed,
    "VERSION": kvds.ProtocolError, "NOSHM": kvds.KvdsError,
    "RANGE": kvds.InvalidArgument, "BADOP": kvds.ProtocolError,
    "SHUTDOWN": kvds.ConnectionClosed, "LIMIT": kvds.ProtocolError,
    "HANDLE": kvds.KvdsError, "ADDR": kvds.InvalidArgument,
    "AUTH": kvds.AuthError, "PEER": kvds.PeerError, "INTR": kvds.KvdsError,
}


def test_code_table():
    codes = {k[2:]: v for k, v in vars(kvds).items() if k.startswith("E_")}
    assert set(codes) == set(EXPECTED)  # every KVDS_E_* code is exported
    for name, code in codes.items():
        assert kvds.error_class(code) is EXPECTED[name], name
        assert kvds.err_name(code) == "KVDS_E_" + name
        assert kvds.strerror(code)
    assert kvds.error_class(-errno.ECONNREFUSED) is kvds.KvdsOSError
    assert kvds.err_name(-errno.ECONNREFUSED) == "ECONNREFUSED"


def test_hierarchy():
    for cls in set(EXPECTED.values()) | {kvds.KvdsOSError}:
        assert issubclass(cls, kvds.KvdsError)
    assert issubclass(kvds.KvdsError, Exception)
    assert issubclass(kvds.KvdsOSError, OSError)
    assert issubclass(kvds.InvalidArgument, ValueError)
    assert not issubclass(kvds.NotFound, OSError)


def test_not_found_attributes(client, key):
    with pytest.raises(kvds.NotFound) as ei:
        client.get(key("nf"))
    e = ei.value
    assert e.code == kvds.E_NOTFOUND == -30001
    assert e.name == "KVDS_E_NOTFOUND" and e.index is None
    assert "not found" in str(e)


def test_exists(client, key):
    client.put(key("e"), b"1")
    with pytest.raises(kvds.Exists):
        client.put(key("e"), b"2")
    with pytest.raises(kvds.Exists):
        client.create(key("e"), 5)
    assert client.get(key("e")) == b"1"


def test_timeout(client, key):
    with pytest.raises(kvds.Timeout) as ei:
        client.get(key("t"), wait_ms=100)
    assert ei.value.code == kvds.E_TIMEOUT


@pytest.mark.parametrize("length", [0, 1025])
def test_key_length(client, length):
    k = b"k" * length
    calls = [lambda: client.put(k, b"v"), lambda: client.get(k),
             lambda: client.mget([b"ok", k]), lambda: client.mget_views([k]),
             lambda: client.create(k, 1), lambda: client.exists([k]),
             lambda: client.lookup_prefix([k]), lambda: client.delete(k),
             lambda: client.stat(k), lambda: client.mput([b"ok", k], [b"1", b"2"])]
    for call in calls:
        with pytest.raises(kvds.KeyLength) as ei:
            call()
        assert ei.value.code == kvds.E_KEYLEN
    client.ping()  # the client is still usable


def test_hint_longer_than_a_member_id_is_invalid(client, key):
    k = key("hint")
    client.put(k, b"v")
    assert client.get(k, hint="h" * 255) == b"v"  # names no member: ignored
    with pytest.raises(kvds.InvalidArgument):
        client.get(k, hint="h" * 256)
    with pytest.raises(kvds.InvalidArgument):
        client.mget([k], hint="h" * 256)


def test_longest_key_works(client, key):
    k = key().ljust(1024, b"x")
    assert len(k) == kvds.KEY_MAX
    client.put(k, b"v")
    assert client.get(k) == b"v"


def test_empty_value_is_invalid(client, key):
    with pytest.raises(kvds.InvalidArgument) as ei:
        client.put(key("empty"), b"")
    assert ei.value.code == kvds.E_INVAL
    with pytest.raises(kvds.InvalidArgument):
        client.create(key("empty"), 0)


def test_state_error_deleting_an_object_being_written(client, key):
    w = client.create(key("w"), 4)
    with pytest.raises(kvds.KvdsError) as ei:
        client.delete(key("w"))
    assert type(ei.value) is kvds.KvdsError and ei.value.code == kvds.E_STATE
    w.abort()


def test_connection_refused():
    port = free_port()
    with pytest.raises(kvds.KvdsOSError) as ei:
        kvds.Client(f"127.0.0.1:{port}")
    e = ei.value
    assert isinstance(e, OSError) and e.errno == errno.ECONNREFUSED
    assert e.code == -errno.ECONNREFUSED and e.name == "ECONNREFUSED"


def test_bad_address():
    with pytest.raises(kvds.InvalidArgument):
        kvds.Client("no-port-here")
    with pytest.raises(kvds.KvdsOSError) as ei:
        kvds.Client("unix:/nonexistent/kvds.sock")
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(TypeError):
        kvds.Client(12)


@pytest.fixture(scope="module")
def small_worker(make_worker):
    # test_no_space fills the pool from one connection: no per-connection cap
    return make_worker("8MiB", ["--max-object", "2MiB", "--max-writing-per-conn", "8MiB"])


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_too_big(small_worker, transport, key):
    c = connect(small_worker, transport)
    with pytest.raises(kvds.TooBig):
        c.put(key("big"), bytes((2 << 20) + 1))
    with pytest.raises(kvds.TooBig):
        c.create(key("big"), (2 << 20) + 1)
    c.put(key("big"), bytes(2 << 20))  # exactly the limit is fine
    c.delete(key("big"))


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_no_space(small_worker, transport, key):
    """Objects being written cannot be evicted: a pool full of them refuses
    more, and works again once they are aborted."""
    c = connect(small_worker, transport)
    before = c.stats()["nospace"]
    held = []
    with pytest.raises(kvds.NoSpace):
        for i in range(8):  # 8 x 2 MiB > the 8 MiB pool
            held.append(c.create(key(f"h{i}"), 2 << 20))
    assert 1 <= len(held) <= 4
    with pytest.raises(kvds.NoSpace):
        c.put(key("more"), bytes(2 << 20))
    assert c.stats()["nospace"] >= before + 2
    for w in held:
        w.abort()
    c.put(key("more"), bytes(2 << 20))
    c.delete(key("more"))


def test_shutdown_then_connection_closed(make_worker):
    w = make_worker("16MiB")
    c = kvds.Client(w.addr)
    c.put(b"k", b"v")
    assert c.connected
    c.shutdown()
    w.assert_clean_exit()
    # The first call after the worker left may see the reset; from then on
    # the client is disconnected.
    with pytest.raises((kvds.ConnectionClosed, kvds.KvdsOSError)):
        c.ping()
    with pytest.raises(kvds.ConnectionClosed) as ei:
        c.get(b"k")
    assert ei.value.code == kvds.E_CLOSED
    assert not c.connected and not c.closed
    c.close()
    assert not c.connected
