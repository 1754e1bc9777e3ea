kvds_unit_test(test_proto SOURCES unit/test_proto.c LIBS kvds_proto)
