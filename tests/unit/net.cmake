# Net module: the framed-RPC layer over a socketpair (round trip, bulk data
# into caller memory, deadlines, a closed peer, interrupts, fd passing).
kvds_unit_test(test_net SOURCES unit/test_net.c LIBS kvds_net kvds_pool)
