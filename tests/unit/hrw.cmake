# Cluster module: rendezvous hashing (home worker of a key).
kvds_unit_test(test_hrw SOURCES unit/test_hrw.c LIBS kvds_hrw)
