/*
 * disk_scan_bench.c — times the disk tier's scan at open (not a test: it
 * prints, asserts nothing about speed).
 *
 *   disk_scan_bench [files (100000)] [value bytes (4096)] [dir]
 *
 * Writes the files (no fsync) into dir (default: a fresh /tmp directory,
 * removed at the end), then opens the directory with 1, 2, 4, 1 and 2 scan
 * threads and prints each scan's time (page cache warm: the files were
 * just written or scanned).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "disk/disk.h"
#include "kvds/kvds.h"

int main(int argc, char **argv) {
  uint64_t files = 100000, vsize = 4096;
  if ((argc > 1 && kvds_parse_u64(argv[1], &files)) ||
      (argc > 2 && kvds_parse_u64(argv[2], &vsize)) || argc > 4) {
    fprintf(stderr, "usage: disk_scan_bench [files] [value bytes] [dir]\n");
    return 2;
  }
  char tmp[] = "/tmp/kvds-disk-bench-XXXXXX";
  const char *dir = argc > 3 ? argv[3] : mkdtemp(tmp);
  if (!dir) {
    perror("mkdtemp");
    return 1;
  }
  struct kvds_disk_config c;
  memset(&c, 0, sizeof c);
  c.dir = dir;
  c.fsync = KVDS_DISK_FSYNC_NONE;
  struct kvds_disk *d;
  char err[256];
  int rc = kvds_disk_open(&c, &d, err, sizeof err);
  if (rc) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  uint8_t *v = calloc(1, vsize ? vsize : 1);
  uint64_t t0 = kvds_now_us();
  for (uint64_t i = 0; i < files; i++) {
    char k[32];
    int kl = snprintf(k, sizeof k, "bench-%llu", (unsigned long long)i);
    memcpy(v, &i, vsize < sizeof i ? vsize : sizeof i);
    if ((rc = kvds_disk_write(d, k, (uint32_t)kl, v, vsize,
                              kvds_checksum(v, vsize))) != 0) {
      fprintf(stderr, "write %s: %s\n", k, kvds_strerror(rc));
      return 1;
    }
  }
  printf("wrote %llu files of %llu + %u bytes in %.2f s\n",
         (unsigned long long)files, (unsigned long long)vsize, KVDS_DISK_HDR,
         (double)(kvds_now_us() - t0) / 1e6);
  kvds_disk_close(d);
  static const int threads[] = {1, 2, 4, 1, 2};
  for (size_t i = 0; i < sizeof threads / sizeof *threads; i++) {
    c.scan_threads = threads[i];
    if ((rc = kvds_disk_open(&c, &d, err, sizeof err)) != 0) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
    struct kvds_disk_counters ct;
    kvds_disk_counters(d, &ct);
    printf("scan: %d thread(s): %llu files, %llu indexed, %.3f s\n", threads[i],
           (unsigned long long)ct.scan_files, (unsigned long long)ct.objects,
           (double)ct.scan_us / 1e6);
    kvds_disk_close(d);
  }
  free(v);
  if (argc <= 3) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
      fprintf(stderr, "could not remove %s\n", dir);
  }
  return 0;
}
