/* test_index.c — unit tests for the hash index (src/store/index.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "store/index.h"

/* A caller object with an embedded node, as the store embeds one. */
struct item {
  struct kvds_index_node node;
  unsigned id;
  unsigned visits;
  uint8_t key[1024];
};

static struct item *item_of(struct kvds_index_node *n) {
  return (struct item *)((char *)n - offsetof(struct item, node));
}

/* Fills it->node from it->key[0..klen) with the real hash. */
static void item_set(struct item *it, unsigned id, uint32_t klen) {
  it->id = id;
  it->visits = 0;
  it->node.next = NULL;
  it->node.key = it->key;
  it->node.klen = klen;
  it->node.hash = kvds_index_hash(it->key, klen);
}

static struct kvds_index_node *find_key(const struct kvds_index *ix,
                                        const void *key, size_t klen) {
  return kvds_index_find(ix, key, klen, kvds_index_hash(key, klen));
}

static uint64_t rng_next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* A distinct binary key for each id: the id's bytes (which contain zero
 * bytes), padded with zeros and pseudo-random bytes to a length that varies
 * from 1 to 1024. Lengths below 4 are given to ids that fit. */
static uint32_t make_key(unsigned id, uint8_t *key) {
  uint32_t klen;
  uint64_t s = id * 0x9e3779b97f4a7c15ull + 1;

  if (id < 256)
    klen = 1;
  else if (id < 65536)
    klen = 2 + (uint32_t)(rng_next(&s) % 3); /* 2..4: 0-padded */
  else
    klen = 4 + (uint32_t)(rng_next(&s) % 1021); /* 4..1024 */
  memset(key, 0, klen);
  for (uint32_t i = 0; i < 4 && i < klen; i++)
    key[i] = (uint8_t)(id >> (8 * i));
  for (uint32_t i = 6; i < klen; i++)
    key[i] = (uint8_t)rng_next(&s);
  return klen;
}

/* ---- tests -------------------------------------------------------------- */

static void test_hash_is_stable(void **state) {
  (void)state;
  const uint8_t a[] = {'a', 0, 'b'};
  const uint8_t b[] = {'a', 0, 'c'};

  assert_int_equal(kvds_index_hash(a, sizeof a), kvds_index_hash(a, sizeof a));
  assert_int_not_equal(kvds_index_hash(a, sizeof a),
                       kvds_index_hash(b, sizeof b));
  /* Length is part of the key: "a" and "a\0" differ. */
  assert_int_not_equal(kvds_index_hash(a, 1), kvds_index_hash(a, 2));
}

static void test_init_fini(void **state) {
  (void)state;
  struct kvds_index ix;
  struct kvds_index zero;

  assert_int_equal(kvds_index_init(&ix, 3), 0);
  assert_non_null(ix.buckets);
  assert_int_equal(ix.mask, 7);
  assert_int_equal(ix.count, 0);
  assert_null(find_key(&ix, "x", 1));
  kvds_index_fini(&ix);
  assert_null(ix.buckets);

  memset(&zero, 0, sizeof zero);
  kvds_index_fini(&zero);
  kvds_index_fini(&zero);
}

static void test_binary_keys(void **state) {
  (void)state;
  struct kvds_index ix;
  /* 1-byte keys 0..255, "\0", "\0\0", "a\0b", "a\0c", "a", and 1024-byte keys
   * that differ only in their last byte. */
  enum { N1 = 256, NL = 8 };
  struct item *one = calloc(N1, sizeof *one);
  struct item *longk = calloc(NL, sizeof *longk);
  struct item misc[5];

  assert_non_null(one);
  assert_non_null(longk);
  memset(misc, 0, sizeof misc);
  assert_int_equal(kvds_index_init(&ix, 4), 0);

  for (unsigned i = 0; i < N1; i++) {
    one[i].key[0] = (uint8_t)i;
    item_set(&one[i], i, 1);
    kvds_index_insert(&ix, &one[i].node);
  }
  for (unsigned i = 0; i < NL; i++) {
    memset(longk[i].key, 0xab, sizeof longk[i].key);
    longk[i].key[1023] = (uint8_t)i;
    item_set(&longk[i], 1000 + i, 1024);
    kvds_index_insert(&ix, &longk[i].node);
  }
  /* "\0\0" vs "\0" (one[0]) differ only in length. */
  item_set(&misc[0], 2000, 2);
  memcpy(misc[1].key, "a\0b", 3);
  item_set(&misc[1], 2001, 3);
  memcpy(misc[2].key, "a\0c", 3);
  item_set(&misc[2], 2002, 3);
  memcpy(misc[3].key, "a\0b\0", 4);
  item_set(&misc[3], 2003, 4);
  memcpy(misc[4].key, "\0\0\0", 3);
  item_set(&misc[4], 2004, 3);
  for (unsigned i = 0; i < 5; i++)
    kvds_index_insert(&ix, &misc[i].node);
  assert_int_equal(ix.count, N1 + NL + 5);

  for (unsigned i = 0; i < N1; i++) {
    uint8_t k = (uint8_t)i;
    struct kvds_index_node *n = find_key(&ix, &k, 1);
    assert_ptr_equal(n, &one[i].node);
  }
  for (unsigned i = 0; i < NL; i++) {
    uint8_t k[1024];
    memset(k, 0xab, sizeof k);
    k[1023] = (uint8_t)i;
    assert_ptr_equal(find_key(&ix, k, sizeof k), &longk[i].node);
    /* A 1023-byte prefix is a different key. */
    assert_null(find_key(&ix, k, 1023));
  }
  {
    uint8_t k[1024];
    memset(k, 0xab, sizeof k);
    k[1023] = (uint8_t)NL; /* not inserted */
    assert_null(find_key(&ix, k, sizeof k));
  }
  assert_ptr_equal(find_key(&ix, "\0\0", 2), &misc[0].node);
  assert_ptr_equal(find_key(&ix, "a\0b", 3), &misc[1].node);
  assert_ptr_equal(find_key(&ix, "a\0c", 3), &misc[2].node);
  assert_ptr_equal(find_key(&ix, "a\0b\0", 4), &misc[3].node);
  assert_ptr_equal(find_key(&ix, "\0\0\0", 3), &misc[4].node);
  assert_null(find_key(&ix, "a\0d", 3));
  assert_ptr_equal(find_key(&ix, "a", 1), &one['a'].node);
  assert_null(find_key(&ix, "\0\0\0\0", 4));

  /* Removing one key leaves its neighbours (by content) findable. */
  kvds_index_remove(&ix, &misc[1].node);
  assert_null(find_key(&ix, "a\0b", 3));
  assert_ptr_equal(find_key(&ix, "a\0c", 3), &misc[2].node);
  assert_ptr_equal(find_key(&ix, "a\0b\0", 4), &misc[3].node);
  kvds_index_remove(&ix, &longk[3].node);
  for (unsigned i = 0; i < NL; i++) {
    uint8_t k[1024];
    memset(k, 0xab, sizeof k);
    k[1023] = (uint8_t)i;
    if (i == 3)
      assert_null(find_key(&ix, k, sizeof k));
    else
      assert_ptr_equal(find_key(&ix, k, sizeof k), &longk[i].node);
  }
  assert_int_equal(ix.count, N1 + NL + 5 - 2);

  kvds_index_fini(&ix);
  free(one);
  free(longk);
}

static void test_growth(void **state) {
  (void)state;
  enum { N = 20000 }; /* from 4 buckets: 13 doublings */
  struct kvds_index ix;
  struct item *it = calloc(N, sizeof *it);
  uint64_t prev_mask;
  unsigned doublings = 0;

  assert_non_null(it);
  assert_int_equal(kvds_index_init(&ix, 2), 0);
  prev_mask = ix.mask;
  for (unsigned i = 0; i < N; i++) {
    /* i * 5 spans all three key shapes of make_key. */
    uint32_t klen = make_key(i * 5, it[i].key);
    item_set(&it[i], i, klen);
    assert_null(kvds_index_find(&ix, it[i].key, klen, it[i].node.hash));
    kvds_index_insert(&ix, &it[i].node);
    assert_int_equal(ix.count, i + 1);
    if (ix.mask != prev_mask) {
      /* Power of two, and exactly one doubling at a time. */
      assert_int_equal(ix.mask, prev_mask * 2 + 1);
      prev_mask = ix.mask;
      doublings++;
    }
  }
  assert_true(doublings >= 10);
  /* Load factor at most 1 after growth. */
  assert_true(ix.count <= ix.mask + 1);

  for (unsigned i = 0; i < N; i++) {
    struct kvds_index_node *n = find_key(&ix, it[i].key, it[i].node.klen);
    assert_ptr_equal(n, &it[i].node);
  }
  /* Remove every third key; the others stay findable. */
  for (unsigned i = 0; i < N; i += 3)
    kvds_index_remove(&ix, &it[i].node);
  assert_int_equal(ix.count, N - (N + 2) / 3);
  for (unsigned i = 0; i < N; i++) {
    struct kvds_index_node *n = find_key(&ix, it[i].key, it[i].node.klen);
    if (i % 3 == 0)
      assert_null(n);
    else
      assert_ptr_equal(n, &it[i].node);
  }
  kvds_index_fini(&ix);
  free(it);
}

/* Every node carries the same hash, so they all share one chain. */
static void test_collision_chain(void **state) {
  (void)state;
  enum { N = 7 };
  const uint64_t h = 0x1234;
  struct kvds_index ix;
  struct item it[N];

  memset(it, 0, sizeof it);
  assert_int_equal(kvds_index_init(&ix, 3), 0);
  for (unsigned i = 0; i < N; i++) {
    it[i].key[0] = 'k';
    it[i].key[1] = (uint8_t)i;
    item_set(&it[i], i, 2);
    it[i].node.hash = h;
    kvds_index_insert(&ix, &it[i].node);
  }
  for (unsigned i = 0; i < N; i++)
    assert_ptr_equal(kvds_index_find(&ix, it[i].key, 2, h), &it[i].node);

  /* Remove from the middle of the chain, then its head and its tail, in
   * whatever order the chain holds them: N/2, then 0, then N-1. */
  const unsigned order[] = {N / 2, 0, N - 1, 1, 5, 2, 4};
  int gone[N] = {0};
  for (unsigned r = 0; r < N; r++) {
    kvds_index_remove(&ix, &it[order[r]].node);
    gone[order[r]] = 1;
    assert_int_equal(ix.count, N - r - 1);
    for (unsigned i = 0; i < N; i++) {
      struct kvds_index_node *n = kvds_index_find(&ix, it[i].key, 2, h);
      if (gone[i])
        assert_null(n);
      else
        assert_ptr_equal(n, &it[i].node);
    }
  }
  /* The chain is empty: a key inserted again is found again. */
  kvds_index_insert(&ix, &it[3].node);
  assert_ptr_equal(kvds_index_find(&ix, it[3].key, 2, h), &it[3].node);
  assert_null(kvds_index_find(&ix, it[4].key, 2, h));
  kvds_index_fini(&ix);
}

/* Equal hash and length, different bytes: find compares the key itself. */
static void test_collision_same_len(void **state) {
  (void)state;
  struct kvds_index ix;
  struct item a, b;

  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  assert_int_equal(kvds_index_init(&ix, 0), 0); /* one bucket */
  memcpy(a.key, "abc", 3);
  memcpy(b.key, "abd", 3);
  item_set(&a, 1, 3);
  item_set(&b, 2, 3);
  b.node.hash = a.node.hash;
  kvds_index_insert(&ix, &a.node);
  kvds_index_insert(&ix, &b.node);
  assert_ptr_equal(kvds_index_find(&ix, "abc", 3, a.node.hash), &a.node);
  assert_ptr_equal(kvds_index_find(&ix, "abd", 3, a.node.hash), &b.node);
  assert_null(kvds_index_find(&ix, "abe", 3, a.node.hash));
  assert_null(kvds_index_find(&ix, "ab", 2, a.node.hash));
  kvds_index_remove(&ix, &b.node);
  assert_ptr_equal(kvds_index_find(&ix, "abc", 3, a.node.hash), &a.node);
  assert_null(kvds_index_find(&ix, "abd", 3, a.node.hash));
  kvds_index_fini(&ix);
}

struct visit_ctx {
  unsigned calls;
  unsigned stop_after; /* 0: never stop */
  int ret;
};

static int visit(struct kvds_index_node *n, void *arg) {
  struct visit_ctx *c = arg;
  item_of(n)->visits++;
  c->calls++;
  if (c->stop_after && c->calls == c->stop_after)
    return c->ret;
  return 0;
}

static void test_foreach(void **state) {
  (void)state;
  enum { N = 3000 };
  struct kvds_index ix;
  struct item *it = calloc(N, sizeof *it);
  struct visit_ctx c = {0};

  assert_non_null(it);
  assert_int_equal(kvds_index_init(&ix, 1), 0);
  assert_int_equal(kvds_index_foreach(&ix, visit, &c), 0);
  assert_int_equal(c.calls, 0);

  for (unsigned i = 0; i < N; i++) {
    uint32_t klen = make_key(i * 37 + 1, it[i].key);
    item_set(&it[i], i, klen);
    if (i % 5 == 0)
      it[i].node.hash = 77; /* a long shared chain too */
    kvds_index_insert(&ix, &it[i].node);
  }

  assert_int_equal(kvds_index_foreach(&ix, visit, &c), 0);
  assert_int_equal(c.calls, N);
  for (unsigned i = 0; i < N; i++)
    assert_int_equal(it[i].visits, 1);

  /* Stops at the first non-zero return and passes it through. */
  for (unsigned i = 0; i < N; i++)
    it[i].visits = 0;
  c = (struct visit_ctx){.stop_after = 10, .ret = -42};
  assert_int_equal(kvds_index_foreach(&ix, visit, &c), -42);
  assert_int_equal(c.calls, 10);
  unsigned seen = 0;
  for (unsigned i = 0; i < N; i++) {
    assert_true(it[i].visits <= 1);
    seen += it[i].visits;
  }
  assert_int_equal(seen, 10);

  /* Stopping on the very first node, with a positive value. */
  c = (struct visit_ctx){.stop_after = 1, .ret = 7};
  assert_int_equal(kvds_index_foreach(&ix, visit, &c), 7);
  assert_int_equal(c.calls, 1);

  /* After removals, only the remaining nodes are visited. */
  for (unsigned i = 0; i < N; i += 2)
    kvds_index_remove(&ix, &it[i].node);
  for (unsigned i = 0; i < N; i++)
    it[i].visits = 0;
  c = (struct visit_ctx){0};
  assert_int_equal(kvds_index_foreach(&ix, visit, &c), 0);
  assert_int_equal(c.calls, N / 2);
  for (unsigned i = 0; i < N; i++)
    assert_int_equal(it[i].visits, i % 2 ? 1 : 0);

  kvds_index_fini(&ix);
  free(it);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hash_is_stable),
      cmocka_unit_test(test_init_fini),
      cmocka_unit_test(test_binary_keys),
      cmocka_unit_test(test_growth),
      cmocka_unit_test(test_collision_chain),
      cmocka_unit_test(test_collision_same_len),
      cmocka_unit_test(test_foreach),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
