# Worker core: its waits over a real store and event loop, and the resolver
# seam with a fake resolver in an in-process worker (real sockets, a real
# libkvds client).
kvds_unit_test(test_wait SOURCES unit/test_wait.c LIBS kvds_worker)
kvds_unit_test(test_resolver SOURCES unit/test_resolver.c LIBS kvds_worker
               kvds_static)
