/* test_alloc.c — unit tests for the TLSF offset allocator (src/pool/alloc.c).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvds/kvds.h"
#include "pool/alloc.h"

#define A KVDS_ALLOC_ALIGN
#define KiB (1024ull)
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

/* ---- realloc fault injection (linked with -Wl,--wrap=realloc) ---------- */

void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);

/* Number of reallocs that succeed before one fails; -1 = never fail. */
static long realloc_budget = -1;
static unsigned long realloc_calls;

void *__wrap_realloc(void *p, size_t n) {
  realloc_calls++;
  if (realloc_budget == 0)
    return NULL;
  if (realloc_budget > 0)
    realloc_budget--;
  return __real_realloc(p, n);
}

/* ---- helpers ------------------------------------------------------------ */

static void check(const struct kvds_alloc *a) {
  assert_int_equal(kvds_alloc_check(a), 0);
}

static void stats(const struct kvds_alloc *a, struct kvds_alloc_stats *st) {
  kvds_alloc_stats(a, st);
  assert_int_equal(st->capacity, a->capacity);
  assert_int_equal(st->used + st->free, st->capacity);
}

/* Allocates and checks the result; returns the handle. */
static uint32_t must_alloc(struct kvds_alloc *a, uint64_t size, uint64_t *off) {
  uint64_t o = 0;
  uint32_t h = 0;

  assert_int_equal(kvds_alloc_alloc(a, size, &o, &h), 0);
  assert_true(o >= a->base);
  assert_true(o - a->base <= a->capacity - kvds_alloc_rounded(size));
  assert_int_equal((o - a->base) % A, 0);
  check(a);
  if (off)
    *off = o;
  return h;
}

static void must_free(struct kvds_alloc *a, uint32_t h) {
  kvds_alloc_free(a, h);
  check(a);
}

/* Deterministic PRNG (xorshift64*), so failures reproduce. */
static uint64_t rng_next(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545F4914F6CDD1Dull;
}

/* ---- tests -------------------------------------------------------------- */

static void test_init_errors(void **state) {
  struct kvds_alloc a, zero;

  memset(&zero, 0, sizeof(zero));
  memset(&a, 0x5a, sizeof(a));
  assert_int_equal(kvds_alloc_init(&a, 0, 0), -EINVAL);
  assert_int_equal(kvds_alloc_init(&a, 0, A - 1), -EINVAL);
  /* base + capacity would wrap around. */
  assert_int_equal(kvds_alloc_init(&a, UINT64_MAX - A, 2 * A), -EINVAL);
  /* 2^48 units is one past the largest size class. */
  assert_int_equal(kvds_alloc_init(&a, 0, (1ull << KVDS_ALLOC_LEVELS) * A),
                   -EINVAL);
  /* Failed init writes nothing. */
  for (size_t i = 0; i < sizeof(a); i++)
    assert_int_equal(((unsigned char *)&a)[i], 0x5a);

  /* Capacity is rounded down to the alignment. */
  assert_int_equal(kvds_alloc_init(&a, 4096, 3 * A + 17), 0);
  assert_int_equal(a.capacity, 3 * A);
  assert_int_equal(a.base, 4096);
  check(&a);
  kvds_alloc_fini(&a);
  assert_memory_equal(&a, &zero, sizeof(a));
  kvds_alloc_fini(&a); /* twice, and on a zeroed struct */
  kvds_alloc_fini(NULL);
}

static void test_alloc_inval(void **state) {
  struct kvds_alloc a;
  uint64_t off = 0xdead;
  uint32_t h = 0xbeef;

  assert_int_equal(kvds_alloc_init(&a, 0, 1 * MiB), 0);
  assert_int_equal(kvds_alloc_alloc(&a, 0, &off, &h), KVDS_E_INVAL);
  assert_int_equal(kvds_alloc_alloc(&a, 1 * MiB + 1, &off, &h), KVDS_E_INVAL);
  assert_int_equal(kvds_alloc_alloc(&a, UINT64_MAX, &off, &h), KVDS_E_INVAL);
  assert_int_equal(off, 0xdead);
  assert_int_equal(h, 0xbeef);
  /* Stale and out-of-range handles are ignored. */
  kvds_alloc_free(&a, 0);
  kvds_alloc_free(&a, 12345);
  kvds_alloc_free(&a, KVDS_ALLOC_NONE);
  check(&a);
  kvds_alloc_fini(&a);
}

static void test_alignment(void **state) {
  static const uint64_t sizes[] = {1, 63, 64, 65, 127, 128, 1000, 4095, 4097};
  struct kvds_alloc a;
  struct kvds_alloc_stats st;
  uint64_t off, expect = 0, used = 0;

  assert_int_equal(kvds_alloc_init(&a, 1 * MiB, 1 * MiB), 0);
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
    must_alloc(&a, sizes[i], &off);
    assert_int_equal(off % A, 0);
    /* A fresh range is carved from the bottom up, back to back. */
    assert_int_equal(off, 1 * MiB + expect);
    expect += kvds_alloc_rounded(sizes[i]);
    used += kvds_alloc_rounded(sizes[i]);
  }
  stats(&a, &st);
  assert_int_equal(st.used, used);
  assert_int_equal(st.allocations, 9);
  assert_int_equal(st.free_extents, 1);
  assert_int_equal(st.largest_free, 1 * MiB - used);
  assert_int_equal(st.fragmentation_ppm, 0);
  assert_int_equal(kvds_alloc_rounded(1), A);
  assert_int_equal(kvds_alloc_rounded(A), A);
  assert_int_equal(kvds_alloc_rounded(A + 1), 2 * A);
  kvds_alloc_fini(&a);
}

static void test_exhaustion(void **state) {
  struct kvds_alloc a;
  struct kvds_alloc_stats st;
  uint32_t hs[64];
  uint64_t off = 0x1111;
  uint32_t h = 0x2222;

  assert_int_equal(kvds_alloc_init(&a, 0, 64 * A), 0);
  for (int i = 0; i < 64; i++)
    hs[i] = must_alloc(&a, A, NULL);
  stats(&a, &st);
  assert_int_equal(st.free, 0);
  assert_int_equal(st.largest_free, 0);
  assert_int_equal(st.free_extents, 0);
  assert_int_equal(st.fragmentation_ppm, 0);
  assert_int_equal(kvds_alloc_alloc(&a, 1, &off, &h), KVDS_E_NOSPACE);
  assert_int_equal(off, 0x1111);
  assert_int_equal(h, 0x2222);
  check(&a);

  /* One freed block is reusable, and exactly once. */
  must_free(&a, hs[17]);
  must_alloc(&a, A, &off);
  assert_int_equal(off, 17 * A);
  assert_int_equal(kvds_alloc_alloc(&a, A, &off, &h), KVDS_E_NOSPACE);
  kvds_alloc_fini(&a);
}

/* Frees A, B, C in every order: the range always ends as one extent. */
static void test_coalesce(void **state) {
  static const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                   {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
  const uint64_t x = 4 * KiB;

  for (int o = 0; o < 6; o++) {
    struct kvds_alloc a;
    struct kvds_alloc_stats st;
    uint32_t h[3];

    assert_int_equal(kvds_alloc_init(&a, 0, 3 * x), 0);
    for (int i = 0; i < 3; i++)
      h[i] = must_alloc(&a, x, NULL);
    for (int i = 0; i < 3; i++) {
      must_free(&a, h[orders[o][i]]);
      stats(&a, &st);
      assert_int_equal(st.free, (uint64_t)(i + 1) * x);
    }
    stats(&a, &st);
    assert_int_equal(st.free_extents, 1);
    assert_int_equal(st.largest_free, 3 * x);
    assert_int_equal(st.fragmentation_ppm, 0);
    assert_int_equal(st.allocations, 0);
    must_alloc(&a, 3 * x, NULL);
    kvds_alloc_fini(&a);
  }
}

/* The case spelled out: free A and C leaves two extents, then B joins them. */
static void test_coalesce_middle(void **state) {
  struct kvds_alloc a;
  struct kvds_alloc_stats st;
  uint32_t ha, hb, hc;

  assert_int_equal(kvds_alloc_init(&a, 0, 3 * KiB), 0);
  ha = must_alloc(&a, 1 * KiB, NULL);
  hb = must_alloc(&a, 1 * KiB, NULL);
  hc = must_alloc(&a, 1 * KiB, NULL);
  must_free(&a, ha);
  must_free(&a, hc);
  stats(&a, &st);
  assert_int_equal(st.free_extents, 2);
  assert_int_equal(st.largest_free, 1 * KiB);
  assert_int_equal(st.fragmentation_ppm, 500000);
  must_free(&a, hb);
  stats(&a, &st);
  assert_int_equal(st.free_extents, 1);
  assert_int_equal(st.largest_free, a.capacity);
  kvds_alloc_fini(&a);
}

static void test_fragmentation(void **state) {
  enum { N = 256 };
  const uint64_t blk = 4 * KiB;
  struct kvds_alloc a;
  struct kvds_alloc_stats st;
  uint32_t h[N];
  uint64_t off = 7;
  uint32_t hh = 9;

  assert_int_equal(kvds_alloc_init(&a, 0, N * blk), 0);
  for (int i = 0; i < N; i++)
    h[i] = must_alloc(&a, blk, NULL);
  for (int i = 0; i < N; i += 2)
    must_free(&a, h[i]);
  stats(&a, &st);
  assert_int_equal(st.free, N / 2 * blk);
  assert_int_equal(st.free_extents, N / 2);
  assert_int_equal(st.largest_free, blk);
  /* 1 - 1/(N/2), rounded down */
  assert_int_equal(st.fragmentation_ppm, 1000000ull * (N / 2 - 1) / (N / 2));
  /* Plenty of free space in total, but no extent of two blocks. */
  assert_int_equal(kvds_alloc_alloc(&a, blk + 1, &off, &hh), KVDS_E_NOSPACE);
  assert_int_equal(kvds_alloc_alloc(&a, 2 * blk, &off, &hh), KVDS_E_NOSPACE);
  assert_int_equal(off, 7);
  assert_int_equal(hh, 9);
  check(&a);
  /* A request equal to the largest extent fits. */
  must_alloc(&a, blk, NULL);
  /* Freeing one odd block merges three extents into one of 3 blocks. */
  must_free(&a, h[5]);
  stats(&a, &st);
  assert_int_equal(st.largest_free, 3 * blk);
  must_alloc(&a, 3 * blk, &off);
  assert_int_equal(off, 4 * blk);
  kvds_alloc_fini(&a);
}

/* Requests that are not on a bin boundary must still find an extent that is
 * exactly as large, which only the request's own bin holds. */
static void test_exact_bin_fit(void **state) {
  struct kvds_alloc a;
  struct kvds_alloc_stats st;
  uint32_t h1, h2, h3, h4;
  uint64_t off;

  /* 33 units sits in level 5, sub-bin 0 together with 32 units; the
   * guaranteed-fit search starts at sub-bin 1. */
  assert_int_equal(kvds_alloc_init(&a, 0, 33 * A + A), 0);
  h1 = must_alloc(&a, 33 * A, NULL);
  must_alloc(&a, A, NULL);
  must_free(&a, h1);
  stats(&a, &st);
  assert_int_equal(st.largest_free, 33 * A);
  must_alloc(&a, 33 * A, &off);
  assert_int_equal(off, 0);
  kvds_alloc_fini(&a);

  /* Both 32 and 33 units free in that bin (32 at the list head): a
   * 33-unit request must skip the 32 and take the 33. */
  assert_int_equal(kvds_alloc_init(&a, 0, 33 * A + A + 32 * A + A), 0);
  h1 = must_alloc(&a, 33 * A, NULL);
  h2 = must_alloc(&a, A, NULL);
  h3 = must_alloc(&a, 32 * A, NULL);
  h4 = must_alloc(&a, A, NULL);
  must_free(&a, h1);
  must_free(&a, h3);
  must_alloc(&a, 32 * A + 1, &off); /* rounds up to 33 units */
  assert_int_equal(off, 0);
  /* The 32-unit extent is left and 33 units no longer fit. */
  assert_int_equal(kvds_alloc_alloc(&a, 33 * A, &off, &h1), KVDS_E_NOSPACE);
  must_alloc(&a, 32 * A, &off);
  assert_int_equal(off, 34 * A);
  must_free(&a, h2);
  must_free(&a, h4);
  kvds_alloc_fini(&a);

  /* Large sizes: one unit more than a level boundary, where the sub-bins
   * are 2^30 units wide. */
  {
    const uint64_t big = ((1ull << 34) + 1) * A;
    assert_int_equal(kvds_alloc_init(&a, 0, big + A), 0);
    h1 = must_alloc(&a, big, NULL);
    must_alloc(&a, A, NULL);
    must_free(&a, h1);
    must_alloc(&a, big, &off);
    assert_int_equal(off, 0);
    kvds_alloc_fini(&a);
  }
}

/* Good fit prefers the smallest bin that is guaranteed to fit over carving
 * a big extent. */
static void test_good_fit(void **state) {
  struct kvds_alloc a;
  uint32_t small;
  uint64_t off;

  assert_int_equal(kvds_alloc_init(&a, 0, 1 * MiB), 0);
  small = must_alloc(&a, 1 * KiB, NULL);
  must_alloc(&a, A, NULL);
  must_free(&a, small);
  /* Free: [0, 1 KiB) and the big tail. A 1 KiB request takes the hole. */
  must_alloc(&a, 1 * KiB, &off);
  assert_int_equal(off, 0);
  kvds_alloc_fini(&a);
}

static void test_node_growth(void **state) {
  enum { N = 5000 };
  struct kvds_alloc a;
  struct kvds_alloc_stats st;
  uint32_t *h = calloc(N, sizeof(*h));
  uint32_t cap0, nodes_after;
  uint64_t off;

  assert_non_null(h);
  assert_int_equal(kvds_alloc_init(&a, 0, N * A), 0);
  cap0 = a.cap_nodes;
  assert_true(cap0 < N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(kvds_alloc_alloc(&a, A, &off, &h[i]), 0);
    assert_int_equal(off, (uint64_t)i * A);
    if (i % 97 == 0)
      check(&a);
  }
  check(&a);
  assert_true(a.cap_nodes >= N);
  assert_true(a.cap_nodes > cap0);
  /* Free every other block (no merges), then the rest (all merge). */
  for (int i = 0; i < N; i += 2)
    kvds_alloc_free(&a, h[i]);
  check(&a);
  stats(&a, &st);
  assert_int_equal(st.free_extents, N / 2);
  for (int i = 1; i < N; i += 2)
    kvds_alloc_free(&a, h[i]);
  check(&a);
  stats(&a, &st);
  assert_int_equal(st.free_extents, 1);
  assert_int_equal(st.largest_free, N * A);

  /* Doing it again recycles nodes instead of growing the array. */
  nodes_after = a.n_nodes;
  for (int i = 0; i < N; i++)
    assert_int_equal(kvds_alloc_alloc(&a, A, &off, &h[i]), 0);
  check(&a);
  assert_int_equal(a.n_nodes, nodes_after);
  kvds_alloc_fini(&a);
  free(h);
}

static void test_large_capacity(void **state) {
  struct kvds_alloc a;
  struct kvds_alloc_stats st;
  uint32_t h1, h2, h3;
  uint64_t off;

  /* 1 TiB of abstract range costs a few nodes of memory. */
  assert_int_equal(kvds_alloc_init(&a, 4096, 1 * TiB), 0);
  h1 = must_alloc(&a, 512 * GiB, &off);
  assert_int_equal(off, 4096);
  h2 = must_alloc(&a, 256 * GiB + 1, &off);
  assert_int_equal(off, 4096 + 512 * GiB);
  h3 = must_alloc(&a, 100 * GiB, NULL);
  stats(&a, &st);
  assert_int_equal(st.free, 1 * TiB - 512 * GiB - 256 * GiB - A - 100 * GiB);
  assert_int_equal(st.largest_free, st.free);
  uint32_t hx;
  assert_int_equal(kvds_alloc_alloc(&a, st.free + 1, &off, &hx),
                   KVDS_E_NOSPACE);
  must_free(&a, h2);
  must_free(&a, h1);
  stats(&a, &st);
  assert_int_equal(st.largest_free, 768 * GiB + A);
  must_free(&a, h3);
  must_alloc(&a, 1 * TiB, &off);
  assert_int_equal(off, 4096);
  kvds_alloc_fini(&a);

  /* The largest supported range, allocated whole and in two pieces. */
  {
    const uint64_t max = ((1ull << KVDS_ALLOC_LEVELS) - 1) * A;
    assert_int_equal(kvds_alloc_init(&a, 0, max), 0);
    h1 = must_alloc(&a, max, NULL);
    must_free(&a, h1);
    h1 = must_alloc(&a, max - A, NULL);
    h2 = must_alloc(&a, A, &off);
    assert_int_equal(off, max - A);
    must_free(&a, h1);
    must_free(&a, h2);
    stats(&a, &st);
    assert_int_equal(st.largest_free, max);
    kvds_alloc_fini(&a);
  }
}

struct live {
  uint64_t off, size;
  uint32_t h;
};

static int cmp_live(const void *x, const void *y) {
  const struct live *l = x, *r = y;
  return l->off < r->off ? -1 : l->off > r->off;
}

/* Random alloc/free against a shadow ownership map of every unit. */
static void test_random(void **state) {
  enum { OPS = 20000, MAXLIVE = 4096 };
  const uint64_t base = 1 * MiB, cap = 16 * MiB;
  const uint64_t units = cap / A;
  struct kvds_alloc a;
  struct kvds_alloc_stats st;
  struct live *live = calloc(MAXLIVE, sizeof(*live));
  struct live *sorted = calloc(MAXLIVE, sizeof(*sorted));
  uint8_t *owned = calloc(units, 1);
  uint64_t seed = 0x9e3779b97f4a7c15ull, used = 0;
  size_t n = 0, nospace = 0;

  assert_non_null(live);
  assert_non_null(sorted);
  assert_non_null(owned);
  assert_int_equal(kvds_alloc_init(&a, base, cap), 0);
  for (int op = 0; op < OPS; op++) {
    uint64_t r = rng_next(&seed);
    /* Allocate 5 times in 8 so that the pool runs full. */
    int do_alloc = n == 0 || (n < MAXLIVE && (r & 7) < 5);

    if (do_alloc) {
      /* Mostly small, sometimes large, rarely huge sizes. */
      uint64_t kind = (r >> 8) % 100, size, off;
      uint32_t h;
      int rc;

      if (kind < 70)
        size = 1 + (r >> 16) % (4 * KiB);
      else if (kind < 97)
        size = 1 + (r >> 16) % (256 * KiB);
      else
        size = 1 + (r >> 16) % (4 * MiB);
      kvds_alloc_stats(&a, &st);
      rc = kvds_alloc_alloc(&a, size, &off, &h);
      if (rc == KVDS_E_NOSPACE) {
        /* Good fit never refuses what the largest extent can hold. */
        assert_true(kvds_alloc_rounded(size) > st.largest_free);
        nospace++;
      } else {
        uint64_t rs = kvds_alloc_rounded(size);
        assert_int_equal(rc, 0);
        assert_true(off >= base && off - base <= cap - rs);
        assert_int_equal((off - base) % A, 0);
        for (uint64_t u = (off - base) / A; u < (off - base + rs) / A; u++) {
          assert_int_equal(owned[u], 0);
          owned[u] = 1;
        }
        live[n].off = off;
        live[n].size = rs;
        live[n].h = h;
        n++;
        used += rs;
      }
    } else {
      size_t i = (size_t)((r >> 8) % n);
      for (uint64_t u = (live[i].off - base) / A;
           u < (live[i].off - base + live[i].size) / A; u++)
        owned[u] = 0;
      kvds_alloc_free(&a, live[i].h);
      used -= live[i].size;
      live[i] = live[--n];
    }
    assert_int_equal(kvds_alloc_check(&a), 0);
    assert_int_equal(a.used, used);
    assert_int_equal(a.n_alloc, n);

    if (op % 500 == 0 && n > 0) {
      memcpy(sorted, live, n * sizeof(*live));
      qsort(sorted, n, sizeof(*sorted), cmp_live);
      for (size_t i = 1; i < n; i++)
        assert_true(sorted[i - 1].off + sorted[i - 1].size <= sorted[i].off);
      assert_true(sorted[n - 1].off + sorted[n - 1].size <= base + cap);
    }
  }
  /* The mix must have exercised exhaustion and reuse. */
  assert_true(nospace > 0);
  while (n > 0) {
    kvds_alloc_free(&a, live[--n].h);
    assert_int_equal(kvds_alloc_check(&a), 0);
  }
  kvds_alloc_stats(&a, &st);
  assert_int_equal(st.free_extents, 1);
  assert_int_equal(st.largest_free, cap);
  kvds_alloc_fini(&a);
  free(owned);
  free(sorted);
  free(live);
}

/* Fails each metadata allocation in turn: the failing call returns -ENOMEM,
 * writes no out-parameters and leaves the allocator consistent. */
static void test_fault_injection(void **state) {
  enum { N = 300 };
  struct kvds_alloc a;
  uint32_t h[N];
  unsigned long fails = 0;

  memset(&a, 0x5a, sizeof(a));
  realloc_budget = 0;
  assert_int_equal(kvds_alloc_init(&a, 0, N * A), -ENOMEM);
  realloc_budget = -1;
  for (size_t i = 0; i < sizeof(a); i++)
    assert_int_equal(((unsigned char *)&a)[i], 0x5a);

  for (long k = 0;; k++) {
    int done = 1;

    realloc_budget = -1;
    assert_int_equal(kvds_alloc_init(&a, 0, N * A), 0);
    realloc_budget = k;
    for (int i = 0; i < N; i++) {
      uint64_t off = 0x77, used = a.used;
      uint32_t hh = 0x88;
      int rc = kvds_alloc_alloc(&a, A, &off, &hh);

      if (rc == -ENOMEM) {
        assert_int_equal(off, 0x77);
        assert_int_equal(hh, 0x88);
        assert_int_equal(a.used, used);
        check(&a);
        fails++;
        done = 0;
        /* The same request succeeds once memory is back. */
        realloc_budget = -1;
        rc = kvds_alloc_alloc(&a, A, &off, &hh);
      }
      assert_int_equal(rc, 0);
      h[i] = hh;
    }
    realloc_budget = -1;
    check(&a);
    for (int i = 0; i < N; i++)
      kvds_alloc_free(&a, h[i]);
    check(&a);
    kvds_alloc_fini(&a);
    if (done)
      break;
  }
  /* The node array grew several times, so several failures were seen. */
  assert_true(fails >= 3);
  assert_true(realloc_calls > 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_init_errors),
      cmocka_unit_test(test_alloc_inval),
      cmocka_unit_test(test_alignment),
      cmocka_unit_test(test_exhaustion),
      cmocka_unit_test(test_coalesce),
      cmocka_unit_test(test_coalesce_middle),
      cmocka_unit_test(test_fragmentation),
      cmocka_unit_test(test_exact_bin_fit),
      cmocka_unit_test(test_good_fit),
      cmocka_unit_test(test_node_growth),
      cmocka_unit_test(test_large_capacity),
      cmocka_unit_test(test_random),
      cmocka_unit_test(test_fault_injection),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
