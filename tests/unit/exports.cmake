# libkvds.so exports exactly the functions of include/kvds/kvds.h
# (-fvisibility=hidden, KVDS_API): the script compares the library's dynamic
# symbols with the functions the header declares.
add_test(NAME test_exports
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/test_exports.sh
                 $<TARGET_FILE:kvds> ${PROJECT_SOURCE_DIR}/include/kvds/kvds.h
                 ${CMAKE_C_COMPILER} ${CMAKE_NM})
set_tests_properties(test_exports PROPERTIES LABELS unit TIMEOUT 60)
