# Cluster membership: embedded / static --peers / etcd (lease, keepalive,
# watch of /kvds/<cluster>/workers/). Included by the top-level
# CMakeLists.txt with the other src/*/*.cmake fragments; it links kvds_etcd
# by name, so the order of the fragments does not matter.
add_library(kvds_membership STATIC ${CMAKE_CURRENT_LIST_DIR}/membership.c)
target_link_libraries(kvds_membership PUBLIC kvds_etcd kvds_common
                      PkgConfig::JANSSON Threads::Threads)
