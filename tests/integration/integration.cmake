# Integration tests: real worker processes on 127.0.0.1 with free ports and a
# private KVDS_RUN_DIR each (tests/integration/harness.c). Every test gets the
# kvds binary as its first argument. Tests that craft frames themselves link
# kvds_proto.
add_library(kvds_it_harness STATIC ${CMAKE_CURRENT_LIST_DIR}/harness.c)
target_link_libraries(kvds_it_harness PUBLIC kvds_static)
target_include_directories(kvds_it_harness PUBLIC ${CMAKE_CURRENT_LIST_DIR})

function(kvds_integration_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "LIBS" ${ARGN})
  add_executable(${name} ${CMAKE_CURRENT_LIST_DIR}/${name}.c)
  target_link_libraries(${name} PRIVATE kvds_it_harness ${T_LIBS})
  add_dependencies(${name} kvds_bin)
  add_test(NAME ${name} COMMAND ${name} $<TARGET_FILE:kvds_bin>)
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS integration
                       TIMEOUT ${T_TIMEOUT})
endfunction()

kvds_integration_test(test_mixed_clients)
kvds_integration_test(test_eviction)
kvds_integration_test(test_wait_wakeup)
kvds_integration_test(test_kill9 LIBS kvds_proto)
kvds_integration_test(test_garbage LIBS kvds_proto)
kvds_integration_test(test_errors)
kvds_integration_test(test_cli LIBS PkgConfig::JANSSON)
kvds_integration_test(test_http LIBS PkgConfig::JANSSON)
kvds_integration_test(test_wait_reset LIBS kvds_proto)
kvds_integration_test(test_batches)
kvds_integration_test(test_fd_limit)
kvds_integration_test(test_stall LIBS kvds_proto)
kvds_integration_test(test_regressions LIBS kvds_proto TIMEOUT 240)
# TCP authentication: token files, refusals, /metrics.
kvds_integration_test(test_auth LIBS kvds_proto)
# The cluster data path: reads resolved through the directory and pulled
# from peers (replicas, checksums), cluster-wide EXISTS / LOOKUP_PREFIX /
# LOCATE, hints, an owner killed mid-pull, etcd outage, a home restarted,
# ANNOUNCE garbage, static --peers, and (as root) a network partition
# between network namespaces.
kvds_integration_test(test_cluster LIBS kvds_proto PkgConfig::JANSSON
                      TIMEOUT 300)
