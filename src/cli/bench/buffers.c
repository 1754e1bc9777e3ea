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
  size_t words = region & ~(size_t)7;
  for (size_t i = 0; i < words; i += 8)
    kvds_put_u64((uint8_t *)s + i, i * 0x9e3779b97f4a7c15ull);
  /* --max-bytes or twice a --sizes value need not be a multiple of 8 */
  memset((uint8_t *)s + words, 0xa5, region - words);
  memset(d, 0, region);
  *src = s;
  *dst = d;
  return 0;
}
