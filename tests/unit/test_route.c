/* The proxy's routing: chain hashes, round-robin, least-outstanding,
 * prefix-affinity with its load slack and bounded table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "proxy/route.h"

#define N 4

static void all_usable(struct kvds_route_cand *c, size_t n) {
  for (size_t i = 0; i < n; i++) {
    c[i].usable = 1;
    c[i].outstanding = 0;
  }
}

/* Prompts share chain hash i exactly when they share blocks 0..i. */
static void test_chain(void **state) {
  (void)state;
  const char *a = "aaaabbbbccccdd", *b = "aaaabbbbxxxxdd";
  uint64_t ha[8], hb[8];
  size_t na = kvds_route_chain(a, strlen(a), 4, ha, 8);
  size_t nb = kvds_route_chain(b, strlen(b), 4, hb, 8);
  assert_int_equal(na, 4); /* 4 + 4 + 4 + 2 bytes */
  assert_int_equal(nb, 4);
  assert_true(ha[0] == hb[0] && ha[1] == hb[1]);
  assert_true(ha[2] != hb[2] && ha[3] != hb[3]);
  for (size_t i = 0; i < na; i++)
    assert_true(ha[i] != 0);
  assert_int_equal(kvds_route_chain(a, strlen(a), 4, ha, 2), 2);
  assert_int_equal(kvds_route_chain(a, 0, 4, ha, 8), 0);
}

static void test_round_robin(void **state) {
  (void)state;
  struct kvds_route r;
  assert_int_equal(kvds_route_init(&r, KVDS_ROUTE_ROUND_ROBIN, 0), 0);
  struct kvds_route_cand c[N];
  all_usable(c, N);
  for (int k = 0; k < 2 * N; k++)
    assert_int_equal(kvds_route_pick(&r, c, N, NULL, 0, NULL), k % N);
  c[1].usable = 0; /* skipped, order kept */
  int seq[6];
  for (int k = 0; k < 6; k++)
    seq[k] = kvds_route_pick(&r, c, N, NULL, 0, NULL);
  assert_int_equal(seq[0], 0);
  assert_int_equal(seq[1], 2);
  assert_int_equal(seq[2], 3);
  assert_int_equal(seq[3], 0);
  for (int i = 0; i < N; i++)
    c[i].usable = 0;
  assert_int_equal(kvds_route_pick(&r, c, N, NULL, 0, NULL), -1);
  kvds_route_destroy(&r);
}

static void test_least_outstanding(void **state) {
  (void)state;
  struct kvds_route r;
  assert_int_equal(kvds_route_init(&r, KVDS_ROUTE_LEAST_OUTSTANDING, 0), 0);
  struct kvds_route_cand c[N];
  all_usable(c, N);
  c[0].outstanding = 5;
  c[1].outstanding = 2;
  c[2].outstanding = 7;
  c[3].outstanding = 2;
  int p = kvds_route_pick(&r, c, N, NULL, 0, NULL);
  assert_true(p == 1 || p == 3);
  c[p].outstanding++;
  int q = kvds_route_pick(&r, c, N, NULL, 0, NULL);
  assert_int_equal(q, p == 1 ? 3 : 1); /* the other of the tie */
  c[1].usable = c[3].usable = 0;
  assert_int_equal(kvds_route_pick(&r, c, N, NULL, 0, NULL), 0);
  kvds_route_destroy(&r);
}

/* A prompt that extends a known one goes where the known one went; an
 * unrelated prompt goes to the least loaded; too much load breaks the
 * affinity. */
static void test_affinity(void **state) {
  (void)state;
  struct kvds_route r;
  assert_int_equal(kvds_route_init(&r, KVDS_ROUTE_PREFIX_AFFINITY, 2), 0);
  struct kvds_route_cand c[N];
  all_usable(c, N);
  char p1[512], p2[512], p3[512];
  memset(p1, 'a', sizeof p1);
  memcpy(p2, p1, sizeof p2);
  memset(p2 + 300, 'z', 212); /* shares the first 300 bytes with p1 */
  memset(p3, 'q', sizeof p3);
  uint64_t h1[16], h2[16], h3[16];
  size_t n1 = kvds_route_chain(p1, sizeof p1, 64, h1, 16);
  size_t n2 = kvds_route_chain(p2, sizeof p2, 64, h2, 16);
  size_t n3 = kvds_route_chain(p3, sizeof p3, 64, h3, 16);
  c[0].outstanding = 1;
  c[1].outstanding = 1;
  c[3].outstanding = 1; /* 2 is least loaded */
  int hit = -1;
  int a = kvds_route_pick(&r, c, N, h1, n1, &hit);
  assert_int_equal(a, 2);
  assert_int_equal(hit, 0);
  c[2].outstanding = 2; /* still within the slack of 2 */
  c[0].outstanding = 0;
  int b = kvds_route_pick(&r, c, N, h2, n2, &hit);
  assert_int_equal(b, 2);
  assert_int_equal(hit, 1);
  int d = kvds_route_pick(&r, c, N, h3, n3, &hit);
  assert_int_equal(d, 0); /* no prefix known: least loaded */
  assert_int_equal(hit, 0);
  c[2].outstanding = 3; /* 3 above the least loaded: affinity yields */
  int e = kvds_route_pick(&r, c, N, h1, n1, &hit);
  assert_int_equal(e, 0);
  assert_int_equal(hit, 0);
  /* ... and the prompt's prefix now lives on 0. */
  c[2].outstanding = 0;
  c[0].outstanding = 1;
  assert_int_equal(kvds_route_pick(&r, c, N, h1, n1, &hit), 0);
  assert_int_equal(hit, 1);
  /* A down backend is never picked, affinity or not. */
  c[0].usable = 0;
  int f = kvds_route_pick(&r, c, N, h1, n1, &hit);
  assert_true(f != 0 && f >= 0);
  kvds_route_destroy(&r);
}

static void test_policy_names(void **state) {
  (void)state;
  enum kvds_route_policy p;
  const char *names[] = {"prefix-affinity", "round-robin", "least-outstanding"};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(kvds_route_policy_parse(names[i], &p), 0);
    assert_string_equal(kvds_route_policy_name(p), names[i]);
  }
  assert_int_equal(kvds_route_policy_parse("random", &p), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_chain),
      cmocka_unit_test(test_round_robin),
      cmocka_unit_test(test_least_outstanding),
      cmocka_unit_test(test_affinity),
      cmocka_unit_test(test_policy_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
