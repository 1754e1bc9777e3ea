# Rendezvous hashing (pure): the home worker of a key. Used by the worker
# (src/worker/cluster.c): each key's directory home, and the workers that
# replicate.c's background copies go to (kvds_hrw_top).
add_library(kvds_hrw STATIC src/cluster/hrw.c)
target_link_libraries(kvds_hrw PUBLIC kvds_common)
