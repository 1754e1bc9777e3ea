# Pool module: offset allocator and shared-memory segment.
kvds_unit_test(test_alloc SOURCES unit/test_alloc.c LIBS kvds_pool)
# The test fails chosen metadata allocations by wrapping realloc.
target_link_options(test_alloc PRIVATE -Wl,--wrap=realloc)
kvds_unit_test(test_pool SOURCES unit/test_pool.c LIBS kvds_pool)
