# Cluster module: authentication of TCP connections (token files, proofs).
# (test_auth is the integration test of the same feature.)
kvds_unit_test(test_auth_unit SOURCES unit/test_auth.c LIBS kvds_auth)
