/*
 * buffers.c — the source and destination buffers of a bench's timed
 * copies (bench.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/bench/bench.h"
#include "common/util.h"

int bench_alloc_buffers(size_t region, uint8_t **src, uint8_t **dst) {
  void *s = NULL, *d = NULL;
  if (posix_memalign(&s, 4096, region) || posix_memalign(&d, 4096, region)) {
    free(s);
    return -ENOMEM;
  }
  for (size_t i = 0; i < region; i += 8)
    kvds_put_u64((uint8_t *)s + i, i * 0x9e3779b97f4a7c15ull);
  memset(d, 0, region);
  *src = s;
  *dst = d;
  return 0;
}
