# Net module: one framed-RPC transport (transport ops table: TCP, Unix
# socket with fd passing; kvds_rpc; the HELLO/AUTH handshake; peer
# connections), used by libkvds and by the worker's peer calls. Its files
# are in src/client/sources.txt (compiled once, into libkvds.so as well).
kvds_module(kvds_net CLIENT "^src/net/" LIBS kvds_auth kvds_proto kvds_common)
