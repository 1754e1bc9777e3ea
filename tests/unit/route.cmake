# Proxy: routing policies and the prefix-affinity table (pure).
kvds_unit_test(test_route SOURCES unit/test_route.c LIBS kvds_proxy_route)
