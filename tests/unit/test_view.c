/* Member views: a key's home, live owners, moved homes, next owner. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "cluster/hrw.h"
#include "cluster/view.h"
#include "kvds/kvds.h"

#define KEYS 4000

static const char *ids[] = {"10.0.0.1:31501", "10.0.0.2:31501",
                            "10.0.0.3:31501", "10.0.0.4:31501"};
/* Stand-ins for the worker's peers (ud). */
static int peers[4];

static void key_of(int i, char *k, size_t *kl) {
  *kl = (size_t)snprintf(k, 64, "ns/model/tp0/%08x", i);
}

/* Members 0..n-1 of ids (epochs 1..n); member `self` has ud NULL. */
static void make(struct kvds_view *v, int n, int self) {
  assert_int_equal(kvds_view_init(v, (size_t)n), 0);
  for (int i = 0; i < n; i++)
    kvds_view_add(v, i == self ? NULL : &peers[i], ids[i], (uint64_t)i + 1);
  assert_int_equal(v->n, (size_t)n);
}

/* The home is the member rendezvous hashing picks, from the same seeds. */
static void test_home_is_hrw(void **state) {
  (void)state;
  struct kvds_view v;
  make(&v, 4, 0);
  for (int i = 0; i < KEYS; i++) {
    char k[64];
    size_t kl;
    key_of(i, k, &kl);
    int h = kvds_hrw_home(kvds_checksum(k, kl), v.seeds, v.n);
    assert_int_equal(kvds_view_home(&v, (const uint8_t *)k, kl), (size_t)h);
  }
  kvds_view_free(&v);
  assert_null(v.m);
  assert_int_equal(v.n, 0);
}

/* All workers agree on a key's home and replica order whatever order their
 * views list the members in; the top-k starts with the home, in
 * rendezvous order, distinct members. */
static void test_home_order_free(void **state) {
  (void)state;
  struct kvds_view a, b;
  assert_int_equal(kvds_view_init(&a, 4), 0);
  assert_int_equal(kvds_view_init(&b, 4), 0);
  for (int i = 0; i < 4; i++) {
    kvds_view_add(&a, &peers[i], ids[i], 1);
    kvds_view_add(&b, &peers[3 - i], ids[3 - i], 1);
  }
  for (int i = 0; i < KEYS; i++) {
    char k[64];
    size_t kl, ta[4], tb[4];
    key_of(i, k, &kl);
    size_t ha = kvds_view_home(&a, (const uint8_t *)k, kl);
    size_t hb = kvds_view_home(&b, (const uint8_t *)k, kl);
    assert_string_equal(a.m[ha].id, b.m[hb].id);
    assert_int_equal(kvds_view_top(&a, (const uint8_t *)k, kl, ta, 3), 3);
    assert_int_equal(kvds_view_top(&b, (const uint8_t *)k, kl, tb, 3), 3);
    assert_int_equal(ta[0], ha);
    for (int j = 0; j < 3; j++)
      assert_string_equal(a.m[ta[j]].id, b.m[tb[j]].id);
    assert_true(ta[0] != ta[1] && ta[1] != ta[2] && ta[0] != ta[2]);
  }
  size_t t[8];
  assert_int_equal(kvds_view_top(&a, (const uint8_t *)"k", 1, t, 8), 4);
  assert_int_equal(kvds_view_find(&a, ids[2]), 2);
  assert_int_equal(kvds_view_find(&a, "nobody"), -1);
  kvds_view_free(&a);
  kvds_view_free(&b);
}

/* A copy answers the same and does not share memory. */
static void test_copy(void **state) {
  (void)state;
  struct kvds_view v, c;
  make(&v, 3, 1);
  assert_int_equal(kvds_view_copy(&c, &v), 0);
  assert_ptr_not_equal(c.m, v.m);
  assert_int_equal(c.n, 3);
  for (size_t i = 0; i < 3; i++) {
    assert_string_equal(c.m[i].id, v.m[i].id);
    assert_ptr_equal(c.m[i].ud, v.m[i].ud);
    assert_true(c.seeds[i] == v.seeds[i]);
  }
  kvds_view_free(&v);
  kvds_view_free(&c);
}

/* Epoch 0 on either side matches any; another epoch does not. */
static void test_has(void **state) {
  (void)state;
  struct kvds_view v;
  make(&v, 2, 0);
  assert_true(kvds_view_has(&v, ids[1], 2));
  assert_true(kvds_view_has(&v, ids[1], 0));
  assert_false(kvds_view_has(&v, ids[1], 3));
  assert_false(kvds_view_has(&v, ids[2], 3));
  v.m[1].epoch = 0; /* a static peer */
  assert_true(kvds_view_has(&v, ids[1], 77));
  kvds_view_free(&v);
}

/* A member joining moves only the keys it becomes home of (about a
 * quarter of them with 4 members), all of them to itself; a restarted
 * home (new epoch) moves all of its keys. */
static void test_home_moved(void **state) {
  (void)state;
  struct kvds_view three, four;
  make(&three, 3, 0);
  make(&four, 4, 0);
  int moved = 0;
  for (int i = 0; i < KEYS; i++) {
    char k[64];
    size_t kl;
    key_of(i, k, &kl);
    int m = kvds_view_home_moved(&three, &four, (const uint8_t *)k, kl);
    size_t nh = kvds_view_home(&four, (const uint8_t *)k, kl);
    if (m)
      assert_int_equal(nh, 3); /* only to the newcomer */
    else
      assert_int_not_equal(nh, 3);
    moved += m;
  }
  assert_in_range(moved, KEYS / 4 * 85 / 100, KEYS / 4 * 115 / 100);
  struct kvds_view again;
  make(&again, 3, 0);
  again.m[2].epoch = 99; /* member 2 restarted */
  for (int i = 0; i < KEYS; i++) {
    char k[64];
    size_t kl;
    key_of(i, k, &kl);
    size_t h = kvds_view_home(&three, (const uint8_t *)k, kl);
    assert_int_equal(
        kvds_view_home_moved(&three, &again, (const uint8_t *)k, kl), h == 2);
  }
  kvds_view_free(&three);
  kvds_view_free(&four);
  kvds_view_free(&again);
}

/* Next owner: best first, skipping this worker, members not live (or of
 * another epoch) and owners tried already. */
static void test_next_owner(void **state) {
  (void)state;
  struct kvds_view v;
  make(&v, 3, 0); /* ids 0 (self), 1, 2 live; 3 not a member */
  struct kvds_dir_owner ow[4];
  memset(ow, 0, sizeof ow);
  snprintf(ow[0].id, sizeof ow[0].id, "%s", ids[0]); /* self */
  ow[0].epoch = 1;
  snprintf(ow[1].id, sizeof ow[1].id, "%s", ids[3]); /* not live */
  ow[1].epoch = 4;
  snprintf(ow[2].id, sizeof ow[2].id, "%s", ids[2]);
  ow[2].epoch = 3;
  snprintf(ow[3].id, sizeof ow[3].id, "%s", ids[1]);
  ow[3].epoch = 2;
  void *tried[4];
  assert_int_equal(kvds_view_next_owner(&v, ids[0], ow, 4, tried, 0), 2);
  tried[0] = &peers[2];
  assert_int_equal(kvds_view_next_owner(&v, ids[0], ow, 4, tried, 1), 1);
  tried[1] = &peers[1];
  assert_int_equal(kvds_view_next_owner(&v, ids[0], ow, 4, tried, 2), -1);
  ow[2].epoch = 9; /* an older incarnation of member 2: not live */
  assert_int_equal(kvds_view_next_owner(&v, ids[0], ow, 4, tried, 0), 1);
  assert_int_equal(kvds_view_next_owner(&v, ids[0], ow, 0, tried, 0), -1);
  kvds_view_free(&v);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_home_is_hrw),
                                     cmocka_unit_test(test_home_order_free),
                                     cmocka_unit_test(test_copy),
                                     cmocka_unit_test(test_has),
                                     cmocka_unit_test(test_home_moved),
                                     cmocka_unit_test(test_next_owner)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
