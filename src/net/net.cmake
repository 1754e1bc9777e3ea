# Net module: one framed-RPC transport (transport ops table: TCP, Unix
# socket with fd passing; kvds_rpc; the HELLO/AUTH handshake; peer
# connections), used by libkvds and by the worker's peer calls. The files
# libkvds needs are in src/client/sources.txt (compiled once, into
# libkvds.so as well); peer.c, the worker's side, is not.
kvds_module(kvds_net CLIENT "^src/net/" SOURCES src/net/peer.c
            LIBS kvds_auth kvds_proto kvds_common)
