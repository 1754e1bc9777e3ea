/* Rendezvous hashing: balance, minimal movement, top-k order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "cluster/hrw.h"
#include "kvds/kvds.h"

#define KEYS 30000

static uint64_t seed_of(int i) {
  char id[32];
  int n = snprintf(id, sizeof id, "10.0.0.%d:31501", i);
  return kvds_hrw_seed(id, (size_t)n);
}

static uint64_t key_of(int i) {
  char k[64];
  int n = snprintf(k, sizeof k, "ns/model/bfloat16/bhnc/tp0/pp0/%08x", i);
  return kvds_checksum(k, (size_t)n);
}

/* Each of 5 workers is home of about a fifth of the keys. */
static void test_balance(void **state) {
  (void)state;
  uint64_t seeds[5];
  int count[5] = {0};
  for (int i = 0; i < 5; i++)
    seeds[i] = seed_of(i);
  for (int k = 0; k < KEYS; k++) {
    int h = kvds_hrw_home(key_of(k), seeds, 5);
    assert_true(h >= 0 && h < 5);
    count[h]++;
  }
  for (int i = 0; i < 5; i++)
    assert_in_range(count[i], KEYS / 5 * 92 / 100, KEYS / 5 * 108 / 100);
  assert_int_equal(kvds_hrw_home(key_of(1), seeds, 0), -1);
}

/* A worker leaving moves only its own keys; the order of the member list
 * does not matter; a worker joining takes keys only for itself. */
static void test_minimal_movement(void **state) {
  (void)state;
  uint64_t all[4], without2[3], shuffled[4];
  for (int i = 0; i < 4; i++)
    all[i] = seed_of(i);
  without2[0] = all[0], without2[1] = all[1], without2[2] = all[3];
  shuffled[0] = all[3], shuffled[1] = all[1], shuffled[2] = all[0],
  shuffled[3] = all[2];
  int moved_in = 0;
  for (int k = 0; k < KEYS; k++) {
    uint64_t kh = key_of(k);
    int before = kvds_hrw_home(kh, all, 4);
    int after = kvds_hrw_home(kh, without2, 3);
    uint64_t b = all[before], a = without2[after];
    if (before != 2)
      assert_int_equal(a, b); /* not worker 2's: stays where it was */
    assert_int_equal(shuffled[kvds_hrw_home(kh, shuffled, 4)], b);
    /* joining (3 -> 4 members): a key either stays or moves to worker 2 */
    if (b != a) {
      assert_int_equal(b, all[2]);
      moved_in++;
    }
  }
  assert_in_range(moved_in, KEYS / 4 * 90 / 100, KEYS / 4 * 110 / 100);
}

/* top-k is the members by decreasing score; its first is the home, its
 * second is where the key goes when the home leaves. */
static void test_top(void **state) {
  (void)state;
  uint64_t seeds[6];
  for (int i = 0; i < 6; i++)
    seeds[i] = seed_of(i);
  for (int k = 0; k < 2000; k++) {
    uint64_t kh = key_of(k);
    size_t out[8];
    assert_int_equal(kvds_hrw_top(kh, seeds, 6, out, 8), 6);
    for (int j = 1; j < 6; j++)
      assert_true(kvds_hrw_score(kh, seeds[out[j - 1]]) >
                  kvds_hrw_score(kh, seeds[out[j]]));
    assert_int_equal((int)out[0], kvds_hrw_home(kh, seeds, 6));
    size_t two[2];
    assert_int_equal(kvds_hrw_top(kh, seeds, 6, two, 2), 2);
    assert_int_equal(two[0], out[0]);
    assert_int_equal(two[1], out[1]);
    uint64_t rest[5];
    for (size_t j = 0, r = 0; j < 6; j++)
      if (j != out[0])
        rest[r++] = seeds[j];
    assert_int_equal(rest[kvds_hrw_home(kh, rest, 5)], seeds[out[1]]);
    assert_int_equal(kvds_hrw_top(kh, seeds, 6, out, 0), 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_balance),
      cmocka_unit_test(test_minimal_movement),
      cmocka_unit_test(test_top),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
