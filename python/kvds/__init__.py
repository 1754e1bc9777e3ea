"""kvds — Python client of the kvds KV-cache data system.

Everything here comes from the C extension kvds._kvds, a binding of the
public libkvds API (include/kvds/kvds.h). See docs/python.md.

    import kvds
    with kvds.Client("127.0.0.1:31501") as c:
        c.put(b"key", b"value")
        assert c.get(b"key") == b"value"
        with c.mget_views([b"key"]) as pinned:   # zero copy, pinned
            assert bytes(pinned[0]) == b"value"
"""
from ._kvds import (  # noqa: F401
    BATCH_MAX,
    KEY_MAX,
    LIBKVDS_VERSION,
    AuthError,
    ChecksumError,
    Client,
    ConnectionClosed,
    CopyGate,
    Exists,
    InvalidArgument,
    KeyLength,
    KvdsError,
    KvdsOSError,
    NoSpace,
    NotFound,
    PeerError,
    Pinned,
    ProtocolError,
    Timeout,
    TooBig,
    WriteBuffer,
    checksum,
    err_name,
    error_class,
    scatter,
    strerror,
)
from . import _kvds

# KVDS_E_* codes as E_NOTFOUND, E_EXISTS, ...
globals().update({k: v for k, v in vars(_kvds).items() if k.startswith("E_")})

__version__ = "0.1.0"

__all__ = [
    "BATCH_MAX", "KEY_MAX", "LIBKVDS_VERSION", "AuthError", "ChecksumError", "Client",
    "ConnectionClosed", "CopyGate", "Exists", "InvalidArgument", "KeyLength", "KvdsError",
    "KvdsOSError", "NoSpace", "NotFound", "PeerError", "Pinned", "ProtocolError", "Timeout",
    "TooBig", "WriteBuffer", "checksum", "err_name", "error_class", "scatter", "strerror",
] + sorted(k for k in vars(_kvds) if k.startswith("E_"))
