# Net module: the framed-RPC layer over a socketpair (round trip, bulk data
# into caller memory, deadlines, a closed peer, interrupts, fd passing).
kvds_unit_test(test_net SOURCES unit/test_net.c LIBS kvds_net kvds_pool)
# UCX reads between two pools over tcp / shared memory / cma, and from an
# owner process killed while it is read (src/net/ucx.h).
kvds_unit_test(test_ucx SOURCES unit/test_ucx.c LIBS kvds_ucx kvds_common)
