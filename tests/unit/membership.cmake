# Cluster membership: member records (encode, decode, malformed ones
# ignored) and the view's merge rules; no etcd needed. Named _unit: the
# integration test against a real etcd and real workers is test_membership.
kvds_unit_test(test_membership_unit SOURCES unit/test_membership.c
               LIBS kvds_membership)
