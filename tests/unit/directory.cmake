# Cluster module: the object directory (keys -> owners holding a copy).
kvds_unit_test(test_directory SOURCES unit/test_directory.c
               LIBS kvds_directory Threads::Threads)
# The test fails chosen allocations by wrapping malloc, calloc and realloc.
target_link_options(test_directory PRIVATE -Wl,--wrap=malloc
                    -Wl,--wrap=calloc -Wl,--wrap=realloc)
