# Cluster membership against a real etcd and real workers: join, kill -9,
# restart (newer epoch), SIGTERM (lease revoked), etcd outage and return,
# static --peers, flag conflicts, `kvds status`.
kvds_integration_test(test_membership LIBS PkgConfig::JANSSON TIMEOUT 180)
