# Member snapshots: a key's home, live owners, moved homes, next owner to
# pull from (pure; the worker's cluster part asks it).
add_library(kvds_view STATIC src/cluster/view.c)
target_link_libraries(kvds_view PUBLIC kvds_hrw kvds_common)
