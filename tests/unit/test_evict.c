/* test_evict.c — unit tests for the LRU list and the watermark policy
 * (src/store/evict.c). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "kvds/kvds.h"
#include "store/evict.h"

/* Asserts the list holds exactly want[0..n) from most to least recent, in
 * both directions, and that count agrees. */
static void expect_order(const struct kvds_lru *l, struct kvds_lru_node **want,
                         size_t n) {
  const struct kvds_lru_node *p = l->head.next;
  for (size_t i = 0; i < n; i++) {
    assert_ptr_equal(p, want[i]);
    assert_true(kvds_lru_linked(p));
    p = p->next;
  }
  assert_ptr_equal(p, &l->head);
  p = l->head.prev;
  for (size_t i = n; i-- > 0;) {
    assert_ptr_equal(p, want[i]);
    p = p->prev;
  }
  assert_ptr_equal(p, &l->head);
  assert_int_equal(l->count, n);
  if (n)
    assert_ptr_equal(kvds_lru_oldest(l), want[n - 1]);
  else
    assert_null(kvds_lru_oldest(l));
}

static void test_lru_empty(void **state) {
  (void)state;
  struct kvds_lru l;
  struct kvds_lru_node a = {0};

  kvds_lru_init(&l);
  assert_int_equal(l.count, 0);
  assert_null(kvds_lru_oldest(&l));
  /* Removing a node that was never linked changes nothing. */
  assert_false(kvds_lru_linked(&a));
  kvds_lru_remove(&l, &a);
  assert_int_equal(l.count, 0);
  assert_null(kvds_lru_oldest(&l));
  assert_ptr_equal(l.head.next, &l.head);
  assert_ptr_equal(l.head.prev, &l.head);
}

static void test_lru_order(void **state) {
  (void)state;
  struct kvds_lru l;
  struct kvds_lru_node a = {0}, b = {0}, c = {0}, d = {0};

  kvds_lru_init(&l);
  kvds_lru_push(&l, &a);
  expect_order(&l, (struct kvds_lru_node *[]){&a}, 1);
  kvds_lru_push(&l, &b);
  kvds_lru_push(&l, &c);
  kvds_lru_push(&l, &d);
  expect_order(&l, (struct kvds_lru_node *[]){&d, &c, &b, &a}, 4);

  /* Touching the oldest makes it the newest. */
  kvds_lru_touch(&l, &a);
  expect_order(&l, (struct kvds_lru_node *[]){&a, &d, &c, &b}, 4);
  /* Touching one in the middle. */
  kvds_lru_touch(&l, &c);
  expect_order(&l, (struct kvds_lru_node *[]){&c, &a, &d, &b}, 4);
  /* Touching the newest is a no-op. */
  kvds_lru_touch(&l, &c);
  expect_order(&l, (struct kvds_lru_node *[]){&c, &a, &d, &b}, 4);

  /* Remove from the middle, then the oldest, then the newest. */
  kvds_lru_remove(&l, &a);
  assert_false(kvds_lru_linked(&a));
  expect_order(&l, (struct kvds_lru_node *[]){&c, &d, &b}, 3);
  kvds_lru_remove(&l, &b);
  expect_order(&l, (struct kvds_lru_node *[]){&c, &d}, 2);
  kvds_lru_remove(&l, &c);
  expect_order(&l, (struct kvds_lru_node *[]){&d}, 1);

  /* A second remove of an unlinked node is a no-op. */
  kvds_lru_remove(&l, &a);
  kvds_lru_remove(&l, &c);
  expect_order(&l, (struct kvds_lru_node *[]){&d}, 1);

  /* Removed nodes can be pushed again. */
  kvds_lru_push(&l, &b);
  kvds_lru_push(&l, &a);
  expect_order(&l, (struct kvds_lru_node *[]){&a, &b, &d}, 3);

  kvds_lru_remove(&l, &d);
  kvds_lru_remove(&l, &a);
  kvds_lru_remove(&l, &b);
  expect_order(&l, NULL, 0);
}

/* Draining by oldest gives insertion order adjusted by touches. */
static void test_lru_drain(void **state) {
  (void)state;
  enum { N = 100 };
  struct kvds_lru l;
  struct kvds_lru_node n[N];

  memset(n, 0, sizeof n);
  kvds_lru_init(&l);
  for (unsigned i = 0; i < N; i++)
    kvds_lru_push(&l, &n[i]);
  /* Touch the even ones in order: odd ones become the oldest. */
  for (unsigned i = 0; i < N; i += 2)
    kvds_lru_touch(&l, &n[i]);
  for (unsigned k = 0; k < N; k++) {
    unsigned want = k < N / 2 ? 2 * k + 1 : 2 * (k - N / 2);
    struct kvds_lru_node *o = kvds_lru_oldest(&l);
    assert_ptr_equal(o, &n[want]);
    kvds_lru_remove(&l, o);
    assert_int_equal(l.count, N - k - 1);
  }
  assert_null(kvds_lru_oldest(&l));
}

static int check(double high, double ratio) {
  struct kvds_evict_policy p = {.high_watermark = high,
                                .eviction_ratio = ratio};
  return kvds_evict_policy_check(&p);
}

static void test_policy_check(void **state) {
  (void)state;
  /* Accepted. */
  assert_int_equal(check(1.0, 0.0), 0);
  assert_int_equal(check(1.0, 0.999), 0);
  assert_int_equal(check(0.9, 0.1), 0);
  assert_int_equal(check(0.5, 0.0), 0);
  assert_int_equal(check(1e-9, 0.0), 0);
  /* high outside (0, 1]. */
  assert_int_equal(check(0.0, 0.0), KVDS_E_INVAL);
  assert_int_equal(check(-0.5, 0.0), KVDS_E_INVAL);
  assert_int_equal(check(1.01, 0.0), KVDS_E_INVAL);
  assert_int_equal(check(1.0000001, 0.0), KVDS_E_INVAL);
  assert_int_equal(check(NAN, 0.0), KVDS_E_INVAL);
  assert_int_equal(check(INFINITY, 0.0), KVDS_E_INVAL);
  /* ratio outside [0, high). */
  assert_int_equal(check(0.9, 0.9), KVDS_E_INVAL);
  assert_int_equal(check(1.0, 1.0), KVDS_E_INVAL);
  assert_int_equal(check(0.5, 0.6), KVDS_E_INVAL);
  assert_int_equal(check(0.9, -0.1), KVDS_E_INVAL);
  assert_int_equal(check(0.9, -1e-12), KVDS_E_INVAL);
  assert_int_equal(check(0.9, NAN), KVDS_E_INVAL);
}

static uint64_t needed(double high, double ratio, uint64_t cap, uint64_t used,
                       uint64_t want) {
  struct kvds_evict_policy p = {.high_watermark = high,
                                .eviction_ratio = ratio};
  return kvds_evict_bytes_needed(&p, cap, used, want);
}

/* Nothing to evict while used + want stays at or under high * capacity. */
static void test_needed_under_high(void **state) {
  (void)state;
  /* high = 0.75 * 1024 = 768 exactly. */
  assert_int_equal(needed(0.75, 0.25, 1024, 0, 0), 0);
  assert_int_equal(needed(0.75, 0.25, 1024, 0, 768), 0);
  assert_int_equal(needed(0.75, 0.25, 1024, 700, 68), 0);
  assert_int_equal(needed(0.75, 0.25, 1024, 768, 0), 0);
  assert_int_equal(needed(1.0, 0.5, 4096, 4000, 96), 0);
  assert_int_equal(needed(0.5, 0.0, 1ull << 40, 1ull << 38, 1ull << 38), 0);
}

/*
 * Above the high watermark the amount is used + want - (high - ratio) * cap.
 * All numbers below are exact in binary floating point, so the expected
 * value has no rounding to argue about.
 */
static void test_needed_exact(void **state) {
  (void)state;
  /* cap 1024, high 768, low = (0.75 - 0.25) * 1024 = 512. */
  assert_int_equal(needed(0.75, 0.25, 1024, 700, 69), 700 + 69 - 512);
  assert_int_equal(needed(0.75, 0.25, 1024, 700, 100), 700 + 100 - 512);
  assert_int_equal(needed(0.75, 0.25, 1024, 768, 64), 768 + 64 - 512);
  /* ratio 0: evict just down to high. cap 1000, high 1.0, low 1000. */
  assert_int_equal(needed(1.0, 0.0, 1000, 900, 200), 100);
  assert_int_equal(needed(1.0, 0.0, 1000, 1000, 1), 1);
  /* Large pool: cap 2^40, high 2^39, low 2^38. */
  assert_int_equal(needed(0.5, 0.25, 1ull << 40, 1ull << 39, 1ull << 20),
                   (1ull << 38) + (1ull << 20));
}

/* A fractional amount is rounded up: evicting less would leave used + want
 * above the low mark. */
static void test_needed_fraction(void **state) {
  (void)state;
  /* cap 1025: high 768.75, low 512.5. 700 + 69 = 769 > 768.75, need 256.5. */
  assert_int_equal(needed(0.75, 0.25, 1025, 700, 69), 257);
  /* 700 + 68 = 768 <= 768.75: nothing. */
  assert_int_equal(needed(0.75, 0.25, 1025, 700, 68), 0);
}

/* Never more than what is allocated. */
static void test_needed_capped_by_used(void **state) {
  (void)state;
  /* need = 100 + 1000 - 512 = 588 > used. */
  assert_int_equal(needed(0.75, 0.25, 1024, 100, 1000), 100);
  /* Bigger than the pool itself, nothing allocated. */
  assert_int_equal(needed(0.75, 0.25, 1024, 0, 2000), 0);
  /* 600 + 600 - 512 = 688 > used; 512 + 512 - 512 = 512 == used. */
  assert_int_equal(needed(0.75, 0.25, 1024, 600, 600), 600);
  assert_int_equal(needed(0.75, 0.25, 1024, 512, 512), 512);
}

static uint64_t rng_next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* Random inputs with exact arithmetic (capacity a multiple of 8, ratios in
 * eighths): the result is exactly max(0, min(used, used + want - low)) when
 * above high, else 0. */
static void test_needed_random(void **state) {
  (void)state;
  uint64_t s = 0x2545f4914f6cdd1dull;
  for (unsigned i = 0; i < 20000; i++) {
    unsigned hi8 = 1 + (unsigned)(rng_next(&s) % 8); /* high = hi8 / 8 */
    unsigned ra8 = (unsigned)(rng_next(&s) % hi8);   /* ratio < high */
    uint64_t cap = 8 * (1 + rng_next(&s) % (1u << 20));
    uint64_t used = rng_next(&s) % (cap + 1);
    uint64_t want = rng_next(&s) % (cap + 1);
    uint64_t high = cap / 8 * hi8, low = cap / 8 * (hi8 - ra8);
    uint64_t expect;

    if (used + want <= high)
      expect = 0;
    else if (used + want - low >= used)
      expect = used;
    else
      expect = used + want - low;
    uint64_t got = needed(hi8 / 8.0, ra8 / 8.0, cap, used, want);
    assert_true(got <= used);
    if (got != expect)
      fail_msg("high %u/8 ratio %u/8 cap %llu used %llu want %llu: got %llu "
               "expected %llu",
               hi8, ra8, (unsigned long long)cap, (unsigned long long)used,
               (unsigned long long)want, (unsigned long long)got,
               (unsigned long long)expect);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lru_empty),
      cmocka_unit_test(test_lru_order),
      cmocka_unit_test(test_lru_drain),
      cmocka_unit_test(test_policy_check),
      cmocka_unit_test(test_needed_under_high),
      cmocka_unit_test(test_needed_exact),
      cmocka_unit_test(test_needed_fraction),
      cmocka_unit_test(test_needed_capped_by_used),
      cmocka_unit_test(test_needed_random),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
