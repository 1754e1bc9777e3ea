# Disk tier: one file per object under a directory, the index of them
# (LRU, capacity) and the scan that rebuilds it at open (disk.h). Not part
# of libkvds: the worker links it.
kvds_module(kvds_disk SOURCES src/disk/file.c src/disk/index.c
            src/disk/scan.c src/disk/disk.c
            LIBS kvds_common PkgConfig::XXHASH Threads::Threads)
