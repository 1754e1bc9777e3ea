# Cluster membership against a real etcd and real workers: join, kill -9,
# restart (newer epoch), SIGTERM (lease revoked), etcd outage and return,
# static --peers, flag conflicts, `kvds status`; and in-process, a destroy
# while the watch's callback hangs.
kvds_integration_test(test_membership LIBS kvds_membership PkgConfig::JANSSON
                      TIMEOUT 180)
