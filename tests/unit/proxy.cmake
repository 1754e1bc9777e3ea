# Proxy: routing policies and the prefix-affinity table (pure).
kvds_unit_test(test_route SOURCES unit/test_route.c LIBS kvds_proxy_route)
# Proxy: request-body checks and the prompt's routing chain.
kvds_unit_test(test_prompt SOURCES unit/test_prompt.c LIBS kvds_proxy)
