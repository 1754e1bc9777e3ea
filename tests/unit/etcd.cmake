# etcd client: base64, endpoint lists, the gateway's replies (no etcd needed);
# named _unit: the integration test against a real etcd is test_etcd.
kvds_unit_test(test_etcd_unit SOURCES unit/test_etcd.c LIBS kvds_etcd)
