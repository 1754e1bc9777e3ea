# Cluster module: member views (a key's home, live owners, moved homes,
# next owner).
kvds_unit_test(test_view SOURCES unit/test_view.c LIBS kvds_view)
