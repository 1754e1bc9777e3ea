# Integration tests: real worker processes on 127.0.0.1 with free ports and a
# private KVDS_RUN_DIR each (tests/integration/harness.c). Every test gets the
# kvds binary as its first argument. The harness links kvds_proto (its
# kvh_frame_* helpers craft frames by hand).
add_library(kvds_it_harness STATIC ${CMAKE_CURRENT_LIST_DIR}/harness.c)
target_link_libraries(kvds_it_harness PUBLIC kvds_static kvds_proto)
target_include_directories(kvds_it_harness PUBLIC ${CMAKE_CURRENT_LIST_DIR})
# Cluster views (CLUSTER request, parsed with jansson) for the tests that
# follow membership: linked into the tests named here.
add_library(kvds_it_harness_cluster STATIC
            ${CMAKE_CURRENT_LIST_DIR}/harness_cluster.c)
target_link_libraries(kvds_it_harness_cluster PUBLIC kvds_it_harness
                      PkgConfig::JANSSON)
set(KVDS_IT_CLUSTER_VIEW_TESTS test_cluster test_membership test_heal)

function(kvds_integration_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "LIBS" ${ARGN})
  add_executable(${name} ${CMAKE_CURRENT_LIST_DIR}/${name}.c)
  target_link_libraries(${name} PRIVATE kvds_it_harness ${T_LIBS})
  if(name IN_LIST KVDS_IT_CLUSTER_VIEW_TESTS)
    target_link_libraries(${name} PRIVATE kvds_it_harness_cluster)
  endif()
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
# ANNOUNCE garbage, static --peers, an evicted replica, wrong tokens
# between workers, and (as root) a network partition between network
# namespaces.
kvds_integration_test(test_cluster LIBS kvds_proto PkgConfig::JANSSON
                      TIMEOUT 300)
# The same etcd scenarios (spread, prefix, hints, an owner killed mid-pull,
# etcd outage, a home restarted, garbage) with every worker reading its
# peers over UCX (--transport ucx, UCX's tcp transport on loopback).
if(UCX_FOUND)
  add_test(NAME test_cluster_ucx COMMAND test_cluster $<TARGET_FILE:kvds_bin>)
  set_tests_properties(test_cluster_ucx PROPERTIES LABELS integration
                       TIMEOUT 300 ENVIRONMENT
                       "KVDS_TEST_TRANSPORT=ucx;UCX_TLS=tcp;UCX_NET_DEVICES=lo;UCX_TCP_PORT_RANGE=20000-29999")
endif()
# Healing: a worker stalled past its lease, forged ANNOUNCEs, etcd rebuilt
# from an empty data directory, a pull past its deadline.
kvds_integration_test(test_heal LIBS kvds_proto PkgConfig::JANSSON
                      TIMEOUT 240)
# Deadlines under load: 200 client processes against one worker; every call
# (connect included) returns within its timeout (+ wait) and a margin.
kvds_integration_test(test_deadlines TIMEOUT 180)
# Bounded resources (docs/worker.md "Limits"): --min-rate for frames in
# progress, --max-writing-per-conn, --idle-timeout-s, --max-connections.
# Their counters are read by name (STATS items, /metrics samples).
add_library(kvds_it_counters STATIC
            ${CMAKE_CURRENT_LIST_DIR}/harness_counters.c)
target_link_libraries(kvds_it_counters PUBLIC kvds_it_harness kvds_proto)
kvds_integration_test(test_min_rate LIBS kvds_it_counters)
kvds_integration_test(test_writing_cap LIBS kvds_it_counters)
kvds_integration_test(test_conn_limits LIBS kvds_it_counters)
# kvds_client_set_interrupt: waits given up on a signal, the client still
# usable, the abandoned replies' pins and objects given back.
kvds_integration_test(test_interrupt)
# One deadline per call: a slow fake worker; a put over shared memory and
# batches of two requests fail by the call's deadline.
kvds_integration_test(test_call_deadline)
# Local access: the Unix socket and loopback TCP serve the worker's user
# (root, --allow-group) only; other users are refused (run as root: workers
# as "daemon", clients as "bin" / "sys").
kvds_integration_test(test_access LIBS kvds_it_counters)
