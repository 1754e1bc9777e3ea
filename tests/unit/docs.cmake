# The module map of docs/architecture.md names every file of src/.
add_test(NAME test_docs_map COMMAND sh
         ${CMAKE_CURRENT_LIST_DIR}/test_docs_map.sh ${PROJECT_SOURCE_DIR})
set_tests_properties(test_docs_map PROPERTIES LABELS unit TIMEOUT 60)
