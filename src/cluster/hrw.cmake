# Rendezvous hashing: the home worker of a key (pure; not yet used by the
# worker: the directory will pick homes with it).
add_library(kvds_hrw STATIC src/cluster/hrw.c)
target_link_libraries(kvds_hrw PUBLIC kvds_common)
