# etcd v3 client over the JSON gateway (libcurl + jansson): leases, keys,
# prefix ranges and a reconnecting watch thread. Included by the top-level
# CMakeLists.txt after PkgConfig, jansson and Threads are found.
pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)
add_library(kvds_etcd STATIC ${CMAKE_CURRENT_LIST_DIR}/etcd.c)
target_link_libraries(kvds_etcd PUBLIC kvds_common PkgConfig::CURL
                      PkgConfig::JANSSON Threads::Threads)
