# Net module: one framed-RPC transport (transport ops table: TCP, Unix
# socket with fd passing; kvds_rpc; the HELLO/AUTH handshake; peer
# connections), used by libkvds and by the worker's peer calls. The files
# libkvds needs are in src/client/sources.txt (compiled once, into
# libkvds.so as well); peer.c, the worker's side, is not.
kvds_module(kvds_net CLIENT "^src/net/" SOURCES src/net/peer.c
            LIBS kvds_auth kvds_proto kvds_common)

# One-sided reads between workers' pools over UCX (ucx.h): RDMA where the
# machine has it, UCX's tcp / shared-memory / cma transports elsewhere.
# Built without libucx-dev, `--transport ucx` is refused with the reason.
pkg_check_modules(UCX IMPORTED_TARGET ucx)
if(UCX_FOUND)
  kvds_module(kvds_ucx SOURCES src/net/ucx.c LIBS kvds_common PkgConfig::UCX
              Threads::Threads)
  target_compile_definitions(kvds_ucx PRIVATE KVDS_HAVE_UCX=1)
else()
  message(STATUS "libucx-dev not found: the worker is built without UCX")
  kvds_module(kvds_ucx SOURCES src/net/ucx.c LIBS kvds_common)
endif()
