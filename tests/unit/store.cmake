# Store module (index, eviction policy, object store) and the common helpers.
kvds_unit_test(test_index SOURCES unit/test_index.c LIBS kvds_store)
kvds_unit_test(test_evict SOURCES unit/test_evict.c LIBS kvds_store)
kvds_unit_test(test_store SOURCES unit/test_store.c LIBS kvds_store)
# The test tracks the store's per-object blocks by wrapping malloc and free.
target_link_options(test_store PRIVATE -Wl,--wrap=malloc -Wl,--wrap=free)
kvds_unit_test(test_common SOURCES unit/test_common.c LIBS kvds_common)
# The test fails chosen reallocs (kvds_array_grow) by wrapping realloc.
target_link_options(test_common PRIVATE -Wl,--wrap=realloc)
# The same checks with the hash held to its AVX2 kernels (hash.c picks
# AVX-512 where the CPU has it; both must equal libxxhash).
add_test(NAME test_common_avx2 COMMAND test_common)
set_tests_properties(test_common_avx2 PROPERTIES LABELS unit TIMEOUT 120
                     ENVIRONMENT KVDS_HASH_NO_AVX512=1)
