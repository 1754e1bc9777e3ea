# The PD proxy (`kvds proxy`): routing (pure), histograms, backends, request
# forwarding over libevent's evhttp (docs/proxy.md).
add_library(kvds_proxy_route STATIC src/proxy/route.c)
target_link_libraries(kvds_proxy_route PUBLIC PkgConfig::XXHASH)
add_library(kvds_proxy STATIC src/proxy/proxy.c src/proxy/backend.c
            src/proxy/forward.c src/proxy/metrics.c
            src/proxy/prompt.c)
target_link_libraries(kvds_proxy PUBLIC kvds_proxy_route kvds_common
                      PkgConfig::LIBEVENT PkgConfig::JANSSON)
