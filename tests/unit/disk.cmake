# Disk tier (src/disk/): files, index, scan, on real files in /tmp.
kvds_unit_test(test_disk SOURCES unit/test_disk.c LIBS kvds_disk)
# Not a test: times the scan at open over many files (100,000 by default).
#   disk_scan_bench [files] [value bytes] [dir]
add_executable(disk_scan_bench unit/disk_scan_bench.c)
target_link_libraries(disk_scan_bench PRIVATE kvds_disk)
