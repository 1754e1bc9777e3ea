# The etcd client against a real etcd (started by the harness on free
# loopback ports): keys, leases, watch across restarts, deadlines, failover.
kvds_integration_test(test_etcd LIBS kvds_etcd)
