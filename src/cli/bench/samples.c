/*
 * samples.c — per-call latency samples of `kvds bench` and their
 * percentiles (bench.h).
 */
#include <errno.h>
#include <stdlib.h>

#include "cli/bench/bench.h"
#include "common/array.h"

int bench_samples_add(struct bench_samples *s, uint64_t ns) {
  if (KVDS_ARRAY_GROW(s->ns, s->cap, s->n + 1, 4096))
    return -ENOMEM;
  s->ns[s->n++] = ns;
  s->total_ns += ns;
  return 0;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* Percentile q in [0,1] of sorted samples, in microseconds. */
static double pct_us(const struct bench_samples *s, double q) {
  if (s->n == 0)
    return 0;
  return (double)s->ns[(size_t)(q * (double)(s->n - 1) + 0.5)] / 1e3;
}

void bench_samples_p50_p99(struct bench_samples *s, double *p50, double *p99) {
  qsort(s->ns, s->n, sizeof *s->ns, cmp_u64);
  *p50 = pct_us(s, 0.5);
  if (p99)
    *p99 = pct_us(s, 0.99);
}
