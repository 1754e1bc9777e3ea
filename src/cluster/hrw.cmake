# Rendezvous hashing (pure): the home worker of a key, and the workers the
# copies of a key go to; the worker's cluster code (src/cluster/view.c,
# src/worker/cluster/replicate.c) picks both with it.
add_library(kvds_hrw STATIC src/cluster/hrw.c)
target_link_libraries(kvds_hrw PUBLIC kvds_common)
