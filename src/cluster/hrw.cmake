# Rendezvous hashing: the home worker of a key (leaf module: xxhash only).
add_library(kvds_hrw STATIC src/cluster/hrw.c)
target_link_libraries(kvds_hrw PUBLIC PkgConfig::XXHASH)
