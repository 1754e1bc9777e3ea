# Object directory: which workers hold a sealed copy of each key (the home
# worker's table; no I/O). Built without builtin allocation calls so the
# unit test's fault injection sees every malloc/calloc/realloc.
add_library(kvds_directory STATIC ${CMAKE_CURRENT_LIST_DIR}/directory.c)
target_link_libraries(kvds_directory PUBLIC kvds_common Threads::Threads)
target_compile_options(kvds_directory PRIVATE ${KVDS_NO_BUILTIN_ALLOC})
