/* Object directory: add/lookup/remove, epoch rules, the owner cap, retain by
 * owner and by key, growth, threads, and every allocation failing in turn. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cluster/directory.h"
#include "kvds/kvds.h"

/* ---- allocation fault injection (-Wl,--wrap=malloc,calloc,realloc) ----- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);

/* Allocations that succeed before one fails; -1 = never fail. Only set while
 * a single thread uses the directory. */
static long alloc_budget = -1;
static unsigned long alloc_failed;

static int alloc_allowed(void) {
  if (alloc_budget < 0)
    return 1;
  if (alloc_budget == 0) {
    alloc_failed++;
    return 0;
  }
  alloc_budget--;
  return 1;
}

void *__wrap_malloc(size_t n) {
  return alloc_allowed() ? __real_malloc(n) : NULL;
}
void *__wrap_calloc(size_t n, size_t size) {
  return alloc_allowed() ? __real_calloc(n, size) : NULL;
}
void *__wrap_realloc(void *p, size_t n) {
  return alloc_allowed() ? __real_realloc(p, n) : NULL;
}

/* ---- helpers ------------------------------------------------------------ */

static kvds_directory *dir_new(void) {
  kvds_directory *d = NULL;
  assert_int_equal(kvds_dir_new(&d), 0);
  assert_non_null(d);
  return d;
}

static void check_stats(kvds_directory *d, uint64_t keys, uint64_t locations,
                        uint64_t owners) {
  struct kvds_dir_stats st;
  memset(&st, 0xff, sizeof st);
  kvds_dir_stats(d, &st);
  assert_int_equal(st.keys, keys);
  assert_int_equal(st.locations, locations);
  assert_int_equal(st.owners, owners);
}

static int add_s(kvds_directory *d, const char *key, const char *id,
                 uint64_t epoch) {
  return kvds_dir_add(d, key, strlen(key), id, epoch);
}

static int remove_s(kvds_directory *d, const char *key, const char *id,
                    uint64_t epoch) {
  return kvds_dir_remove(d, key, strlen(key), id, epoch);
}

static size_t lookup_s(kvds_directory *d, const char *key,
                       struct kvds_dir_owner *out, size_t max) {
  return kvds_dir_lookup(d, key, strlen(key), out, max);
}

/* key i as 4 binary bytes (little-endian) after a prefix: NULs included */
static size_t key_of(uint8_t *k, uint32_t i) {
  k[0] = 'k';
  memcpy(k + 1, &i, sizeof i);
  return 1 + sizeof i;
}

/* ---- tests -------------------------------------------------------------- */

static void test_basics(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  struct kvds_dir_owner o[4];
  check_stats(d, 0, 0, 0);
  assert_int_equal(lookup_s(d, "a", o, 4), 0);
  assert_int_equal(remove_s(d, "a", "w1", 1), 0);

  assert_int_equal(add_s(d, "a", "w2", 7), 1);
  assert_int_equal(add_s(d, "a", "w1", 3), 1);
  assert_int_equal(add_s(d, "a", "w3", 9), 1);
  assert_int_equal(add_s(d, "b", "w1", 3), 1);
  check_stats(d, 2, 4, 3);

  /* in the order they were added */
  memset(o, 0, sizeof o);
  assert_int_equal(lookup_s(d, "a", o, 4), 3);
  assert_string_equal(o[0].id, "w2");
  assert_int_equal(o[0].epoch, 7);
  assert_string_equal(o[1].id, "w1");
  assert_int_equal(o[1].epoch, 3);
  assert_string_equal(o[2].id, "w3");
  assert_int_equal(o[2].epoch, 9);

  /* fewer slots than owners: the total, and only max copied */
  memset(o, 0x5a, sizeof o);
  assert_int_equal(lookup_s(d, "a", o, 1), 3);
  assert_string_equal(o[0].id, "w2");
  assert_int_equal(o[1].id[0], 0x5a);
  assert_int_equal(lookup_s(d, "a", NULL, 0), 3);

  /* remove needs the exact id and epoch; order of the rest is kept */
  assert_int_equal(remove_s(d, "a", "w1", 4), 0);
  assert_int_equal(remove_s(d, "a", "w", 3), 0);
  assert_int_equal(remove_s(d, "a", "w11", 3), 0);
  assert_int_equal(remove_s(d, "c", "w1", 3), 0);
  assert_int_equal(remove_s(d, "a", "w1", 3), 1);
  assert_int_equal(remove_s(d, "a", "w1", 3), 0);
  assert_int_equal(lookup_s(d, "a", o, 4), 2);
  assert_string_equal(o[0].id, "w2");
  assert_string_equal(o[1].id, "w3");
  check_stats(d, 2, 3, 3); /* w1@3 still holds b */

  assert_int_equal(remove_s(d, "b", "w1", 3), 1);
  check_stats(d, 1, 2, 2); /* b gone, and w1@3 with it */
  assert_int_equal(lookup_s(d, "b", o, 4), 0);
  assert_int_equal(remove_s(d, "a", "w2", 7), 1);
  assert_int_equal(remove_s(d, "a", "w3", 9), 1);
  check_stats(d, 0, 0, 0);
  assert_int_equal(lookup_s(d, "a", o, 4), 0);

  /* usable again after emptying */
  assert_int_equal(add_s(d, "a", "w1", 1), 1);
  check_stats(d, 1, 1, 1);
  kvds_dir_free(d);
  kvds_dir_free(NULL);
}

static void test_idempotent(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  struct kvds_dir_owner o[4];
  assert_int_equal(add_s(d, "k", "w1", 5), 1);
  for (int i = 0; i < 10; i++)
    assert_int_equal(add_s(d, "k", "w1", 5), 0);
  assert_int_equal(lookup_s(d, "k", o, 4), 1);
  check_stats(d, 1, 1, 1);
  /* one remove undoes it all */
  assert_int_equal(remove_s(d, "k", "w1", 5), 1);
  check_stats(d, 0, 0, 0);
  kvds_dir_free(d);
}

static void test_epochs(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  struct kvds_dir_owner o[4];
  assert_int_equal(add_s(d, "k", "w0", 1), 1);
  assert_int_equal(add_s(d, "k", "w1", 5), 1);
  assert_int_equal(add_s(d, "k", "w2", 1), 1);
  assert_int_equal(add_s(d, "other", "w1", 5), 1);

  /* an older incarnation's late announcement is ignored */
  assert_int_equal(add_s(d, "k", "w1", 3), 0);
  assert_int_equal(lookup_s(d, "k", o, 4), 3);
  assert_string_equal(o[1].id, "w1");
  assert_int_equal(o[1].epoch, 5);
  check_stats(d, 2, 4, 3); /* w1@3 was not interned */

  /* a newer one replaces the location, in place */
  assert_int_equal(add_s(d, "k", "w1", 8), 1);
  assert_int_equal(lookup_s(d, "k", o, 4), 3);
  assert_string_equal(o[0].id, "w0");
  assert_string_equal(o[1].id, "w1");
  assert_int_equal(o[1].epoch, 8);
  assert_string_equal(o[2].id, "w2");
  check_stats(d, 2, 4, 4); /* w1@5 still holds "other" */
  assert_int_equal(remove_s(d, "k", "w1", 5), 0);

  /* the other key is not touched */
  assert_int_equal(lookup_s(d, "other", o, 4), 1);
  assert_int_equal(o[0].epoch, 5);

  /* replacing the last location of w1@5 removes that owner */
  assert_int_equal(add_s(d, "other", "w1", 8), 1);
  check_stats(d, 2, 4, 3);
  assert_int_equal(add_s(d, "other", "w1", 5), 0);
  assert_int_equal(lookup_s(d, "other", o, 4), 1);
  assert_int_equal(o[0].epoch, 8);
  kvds_dir_free(d);
}

static void test_max_owners(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  struct kvds_dir_owner o[KVDS_DIR_MAX_OWNERS + 2];
  char id[16];
  for (int i = 0; i < KVDS_DIR_MAX_OWNERS; i++) {
    snprintf(id, sizeof id, "w%d", i);
    assert_int_equal(add_s(d, "k", id, 1), 1);
  }
  assert_int_equal(add_s(d, "k", "extra", 1), 0);
  assert_int_equal(add_s(d, "k", "extra", 1), 0);
  check_stats(d, 1, KVDS_DIR_MAX_OWNERS, KVDS_DIR_MAX_OWNERS);
  assert_int_equal(lookup_s(d, "k", o, KVDS_DIR_MAX_OWNERS + 2),
                   KVDS_DIR_MAX_OWNERS);
  for (int i = 0; i < KVDS_DIR_MAX_OWNERS; i++) {
    snprintf(id, sizeof id, "w%d", i);
    assert_string_equal(o[i].id, id);
  }
  /* a listed id's new incarnation still replaces when full */
  assert_int_equal(add_s(d, "k", "w3", 2), 1);
  assert_int_equal(lookup_s(d, "k", o, KVDS_DIR_MAX_OWNERS),
                   KVDS_DIR_MAX_OWNERS);
  assert_string_equal(o[3].id, "w3");
  assert_int_equal(o[3].epoch, 2);
  /* another key is not limited by this one */
  assert_int_equal(add_s(d, "k2", "extra", 1), 1);
  /* room again after a remove */
  assert_int_equal(remove_s(d, "k", "w0", 1), 1);
  assert_int_equal(add_s(d, "k", "extra", 1), 1);
  assert_int_equal(lookup_s(d, "k", o, KVDS_DIR_MAX_OWNERS),
                   KVDS_DIR_MAX_OWNERS);
  assert_string_equal(o[0].id, "w1");
  assert_string_equal(o[KVDS_DIR_MAX_OWNERS - 1].id, "extra");
  /* down to a few owners and back up (heap array back to inline) */
  for (int i = 1; i < KVDS_DIR_MAX_OWNERS; i++) {
    snprintf(id, sizeof id, "w%d", i);
    assert_int_equal(remove_s(d, "k", id, i == 3 ? 2 : 1), 1);
  }
  assert_int_equal(lookup_s(d, "k", o, 4), 1);
  assert_string_equal(o[0].id, "extra");
  for (int i = 0; i < 6; i++) {
    snprintf(id, sizeof id, "v%d", i);
    assert_int_equal(add_s(d, "k", id, 1), 1);
  }
  assert_int_equal(lookup_s(d, "k", o, 8), 7);
  assert_string_equal(o[0].id, "extra");
  assert_string_equal(o[6].id, "v5");
  check_stats(d, 2, 8, 7);
  kvds_dir_free(d);
}

static void test_limits(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  static uint8_t big[KVDS_KEY_MAX + 1];
  struct kvds_dir_owner o[2];
  char id[300];
  memset(big, 'x', sizeof big);

  assert_int_equal(kvds_dir_add(d, big, 0, "w", 1), KVDS_E_KEYLEN);
  assert_int_equal(kvds_dir_add(d, big, KVDS_KEY_MAX + 1, "w", 1),
                   KVDS_E_KEYLEN);
  assert_int_equal(kvds_dir_remove(d, big, 0, "w", 1), KVDS_E_KEYLEN);
  assert_int_equal(kvds_dir_remove(d, big, KVDS_KEY_MAX + 1, "w", 1),
                   KVDS_E_KEYLEN);
  check_stats(d, 0, 0, 0);
  assert_int_equal(kvds_dir_add(d, big, KVDS_KEY_MAX, "w", 1), 1);
  assert_int_equal(kvds_dir_add(d, big, 1, "w", 1), 1);
  assert_int_equal(kvds_dir_lookup(d, big, KVDS_KEY_MAX, o, 2), 1);
  assert_int_equal(kvds_dir_lookup(d, big, KVDS_KEY_MAX + 1, o, 2), 0);
  assert_int_equal(kvds_dir_lookup(d, big, 0, o, 2), 0);
  check_stats(d, 2, 2, 1);

  /* ids: 1..255 bytes */
  assert_int_equal(add_s(d, "k", "", 1), KVDS_E_INVAL);
  assert_int_equal(add_s(d, "k", NULL, 1), KVDS_E_INVAL);
  assert_int_equal(remove_s(d, "k", "", 1), KVDS_E_INVAL);
  memset(id, 'i', sizeof id);
  id[256] = '\0';
  assert_int_equal(add_s(d, "k", id, 1), KVDS_E_INVAL);
  id[299] = '\0';
  id[256] = 'i';
  assert_int_equal(add_s(d, "k", id, 1), KVDS_E_INVAL);
  check_stats(d, 2, 2, 1);
  id[255] = '\0';
  assert_int_equal(add_s(d, "k", id, 1), 1);
  memset(o, 0x5a, sizeof o);
  assert_int_equal(lookup_s(d, "k", o, 2), 1);
  assert_int_equal(strlen(o[0].id), 255);
  assert_string_equal(o[0].id, id);
  assert_int_equal(remove_s(d, "k", id, 1), 1);
  check_stats(d, 2, 2, 1);
  kvds_dir_free(d);
}

static void test_binary_keys(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  struct kvds_dir_owner o[2];
  static const uint8_t k1[] = {'a', 0, 'b'}, k2[] = {'a', 0, 'c'}, k3[] = {'a'},
                       k4[] = {'a', 0}, k5[] = {0}, k6[] = {0, 0};
  assert_int_equal(kvds_dir_add(d, k1, sizeof k1, "w1", 1), 1);
  assert_int_equal(kvds_dir_add(d, k2, sizeof k2, "w2", 1), 1);
  assert_int_equal(kvds_dir_add(d, k3, sizeof k3, "w3", 1), 1);
  assert_int_equal(kvds_dir_add(d, k4, sizeof k4, "w4", 1), 1);
  assert_int_equal(kvds_dir_add(d, k5, sizeof k5, "w5", 1), 1);
  assert_int_equal(kvds_dir_add(d, k6, sizeof k6, "w6", 1), 1);
  check_stats(d, 6, 6, 6);
  const uint8_t *keys[] = {k1, k2, k3, k4, k5, k6};
  const size_t lens[] = {sizeof k1, sizeof k2, sizeof k3,
                         sizeof k4, sizeof k5, sizeof k6};
  for (int i = 0; i < 6; i++) {
    char id[8];
    snprintf(id, sizeof id, "w%d", i + 1);
    assert_int_equal(kvds_dir_lookup(d, keys[i], lens[i], o, 2), 1);
    assert_string_equal(o[0].id, id);
  }
  assert_int_equal(kvds_dir_remove(d, k4, sizeof k4, "w3", 1), 0);
  assert_int_equal(kvds_dir_remove(d, k4, sizeof k4, "w4", 1), 1);
  assert_int_equal(kvds_dir_lookup(d, k3, sizeof k3, o, 2), 1);
  assert_int_equal(kvds_dir_lookup(d, k4, sizeof k4, o, 2), 0);
  kvds_dir_free(d);
}

/* retain_owners: keep() sees each owner once; the rejected ones' locations
 * go, keys left with no owner go. */
struct keep_ctx {
  const char *reject_id;
  uint64_t reject_epoch;
  int calls[8]; /* per owner "w<n>" */
  int other_calls;
};

static int keep_owner(const char *id, uint64_t epoch, void *ud) {
  struct keep_ctx *c = ud;
  if (id[0] == 'w' && id[1] >= '0' && id[1] <= '7' && id[2] == '\0')
    c->calls[id[1] - '0']++;
  else
    c->other_calls++;
  return !(c->reject_id && strcmp(id, c->reject_id) == 0 &&
           epoch == c->reject_epoch);
}

#define RKEYS 10000

static void test_retain_owners(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  static const char *ids[3] = {"w0", "w1", "w2"};
  uint8_t k[8];
  struct kvds_dir_owner o[4];
  uint64_t locs = 0, only_w1 = 0, w1_locs = 0;
  /* key i is held by the owners in mask i % 8 (none for mask 0) */
  for (uint32_t i = 0; i < RKEYS; i++) {
    unsigned mask = i % 8;
    for (int w = 0; w < 3; w++)
      if (mask & (1u << w)) {
        assert_int_equal(kvds_dir_add(d, k, key_of(k, i), ids[w], 1), 1);
        locs++;
      }
    only_w1 += mask == 2;
    w1_locs += (mask & 2) != 0;
  }
  uint64_t keys = RKEYS - RKEYS / 8;
  check_stats(d, keys, locs, 3);

  struct keep_ctx c = {0};
  assert_int_equal(kvds_dir_retain_owners(d, keep_owner, &c), 0);
  assert_int_equal(c.calls[0], 1);
  assert_int_equal(c.calls[1], 1);
  assert_int_equal(c.calls[2], 1);
  assert_int_equal(c.other_calls, 0);
  check_stats(d, keys, locs, 3);

  memset(&c, 0, sizeof c);
  c.reject_id = "w1";
  c.reject_epoch = 1;
  assert_int_equal(kvds_dir_retain_owners(d, keep_owner, &c), w1_locs);
  assert_int_equal(c.calls[0], 1);
  assert_int_equal(c.calls[1], 1);
  assert_int_equal(c.calls[2], 1);
  check_stats(d, keys - only_w1, locs - w1_locs, 2);
  for (uint32_t i = 0; i < RKEYS; i++) {
    unsigned mask = (i % 8) & ~2u;
    size_t n = kvds_dir_lookup(d, k, key_of(k, i), o, 4);
    assert_int_equal(n, __builtin_popcount(mask));
    size_t j = 0;
    if (mask & 1)
      assert_string_equal(o[j++].id, "w0");
    if (mask & 4)
      assert_string_equal(o[j++].id, "w2");
  }
  /* w1 is gone from the owner table: asked no more */
  memset(&c, 0, sizeof c);
  assert_int_equal(kvds_dir_retain_owners(d, keep_owner, &c), 0);
  assert_int_equal(c.calls[1], 0);
  assert_int_equal(c.calls[0] + c.calls[2], 2);

  /* rejecting everyone empties the directory */
  memset(&c, 0, sizeof c);
  c.reject_id = "w0";
  c.reject_epoch = 1;
  assert_int_equal(kvds_dir_retain_owners(d, keep_owner, &c),
                   RKEYS / 8 * 4);                 /* masks 1, 3, 5, 7 */
  check_stats(d, RKEYS / 8 * 4, RKEYS / 8 * 4, 1); /* masks 4..7: w2 */
  c.reject_id = "w2";
  assert_int_equal(kvds_dir_retain_owners(d, keep_owner, &c), RKEYS / 8 * 4);
  check_stats(d, 0, 0, 0);
  kvds_dir_free(d);
}

/* Distinct epochs of one id are distinct owners. */
static void test_retain_owners_epochs(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  uint8_t k[8];
  struct kvds_dir_owner o[2];
  for (uint32_t i = 0; i < 200; i++)
    assert_int_equal(kvds_dir_add(d, k, key_of(k, i), "w3", i < 100 ? 1 : 2),
                     1);
  check_stats(d, 200, 200, 2);
  struct keep_ctx c = {.reject_id = "w3", .reject_epoch = 1};
  assert_int_equal(kvds_dir_retain_owners(d, keep_owner, &c), 100);
  assert_int_equal(c.calls[3], 2);
  check_stats(d, 100, 100, 1);
  for (uint32_t i = 0; i < 200; i++) {
    size_t n = kvds_dir_lookup(d, k, key_of(k, i), o, 2);
    assert_int_equal(n, i < 100 ? 0 : 1);
    if (n)
      assert_int_equal(o[0].epoch, 2);
  }
  /* many incarnations of one id: 300 owners, however their hashes fall */
  for (uint32_t i = 0; i < 300; i++)
    assert_int_equal(kvds_dir_add(d, k, key_of(k, 1000 + i), "w4", 10 + i), 1);
  check_stats(d, 400, 400, 301);
  for (uint32_t i = 0; i < 300; i++) {
    assert_int_equal(kvds_dir_lookup(d, k, key_of(k, 1000 + i), o, 2), 1);
    assert_int_equal(o[0].epoch, 10 + i);
  }
  memset(&c, 0, sizeof c);
  assert_int_equal(kvds_dir_retain_owners(d, keep_owner, &c), 0);
  assert_int_equal(c.calls[3] + c.calls[4], 301);
  kvds_dir_free(d);
}

static int keep_even_first(const uint8_t *key, size_t klen, void *ud) {
  size_t *calls = ud;
  (*calls)++;
  return klen > 0 && (key[0] & 1) == 0;
}

static int keep_all_keys(const uint8_t *key, size_t klen, void *ud) {
  (void)key;
  (void)klen;
  (void)ud;
  return 1;
}

static void test_retain_keys(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  struct kvds_dir_owner o[4];
  uint8_t k[3];
  /* 2000 keys {i % 256, i / 256, '\0'}; "a" and "b" hold all, "odd" only
   * those whose first byte is odd */
  for (uint32_t i = 0; i < 2000; i++) {
    k[0] = (uint8_t)i, k[1] = (uint8_t)(i / 256), k[2] = 0;
    assert_int_equal(kvds_dir_add(d, k, 3, "a", 1), 1);
    assert_int_equal(kvds_dir_add(d, k, 3, "b", 1), 1);
    if (i & 1)
      assert_int_equal(kvds_dir_add(d, k, 3, "odd", 1), 1);
  }
  check_stats(d, 2000, 5000, 3);
  assert_int_equal(kvds_dir_retain_keys(d, keep_all_keys, NULL), 0);
  check_stats(d, 2000, 5000, 3);

  size_t calls = 0;
  assert_int_equal(kvds_dir_retain_keys(d, keep_even_first, &calls), 1000);
  assert_int_equal(calls, 2000);
  check_stats(d, 1000, 2000, 2); /* "odd" lost its last location */
  for (uint32_t i = 0; i < 2000; i++) {
    k[0] = (uint8_t)i, k[1] = (uint8_t)(i / 256), k[2] = 0;
    size_t n = kvds_dir_lookup(d, k, 3, o, 4);
    assert_int_equal(n, (i & 1) ? 0 : 2);
    if (n) {
      assert_string_equal(o[0].id, "a");
      assert_string_equal(o[1].id, "b");
    }
  }
  calls = 0;
  assert_int_equal(kvds_dir_retain_keys(d, keep_even_first, &calls), 0);
  assert_int_equal(calls, 1000);
  kvds_dir_free(d);
}

#define GKEYS 100000

static void test_growth(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  uint8_t k[8];
  struct kvds_dir_owner o[2];
  char id[8];
  for (uint32_t i = 0; i < GKEYS; i++) {
    snprintf(id, sizeof id, "w%u", i % 5);
    assert_int_equal(kvds_dir_add(d, k, key_of(k, i), id, 1), 1);
  }
  check_stats(d, GKEYS, GKEYS, 5);
  for (uint32_t i = 0; i < GKEYS; i++) {
    snprintf(id, sizeof id, "w%u", i % 5);
    assert_int_equal(kvds_dir_lookup(d, k, key_of(k, i), o, 2), 1);
    assert_string_equal(o[0].id, id);
  }
  assert_int_equal(kvds_dir_lookup(d, k, key_of(k, GKEYS), o, 2), 0);
  for (uint32_t i = 0; i < GKEYS; i += 2) {
    snprintf(id, sizeof id, "w%u", i % 5);
    assert_int_equal(kvds_dir_remove(d, k, key_of(k, i), id, 1), 1);
  }
  check_stats(d, GKEYS / 2, GKEYS / 2, 5);
  for (uint32_t i = 0; i < GKEYS; i++)
    assert_int_equal(kvds_dir_lookup(d, k, key_of(k, i), o, 2), i & 1);
  kvds_dir_free(d);
}

/* ---- threads ------------------------------------------------------------ */

#define TTHREADS 4
#define TKEYS 512
#define TITERS 40000

struct worker {
  pthread_t th;
  kvds_directory *d;
  int t;
  uint8_t st[TKEYS]; /* this thread's epoch on key i; 0: none */
  long mismatches;
};

static uint64_t xorshift(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static int keep_all_owners(const char *id, uint64_t epoch, void *ud) {
  (void)id;
  (void)epoch;
  (void)ud;
  return 1;
}

/* Each thread adds and removes only its own id, so its own state predicts
 * every return value, whatever the others do. cmocka's asserts are not for
 * threads: mismatches are counted and checked after the join. */
static void *worker_main(void *arg) {
  struct worker *w = arg;
  uint64_t rnd = 0x9e3779b97f4a7c15ull * (uint64_t)(w->t + 1);
  char id[8];
  uint8_t k[8];
  struct kvds_dir_owner o[KVDS_DIR_MAX_OWNERS];
  snprintf(id, sizeof id, "t%d", w->t);
  for (int it = 0; it < TITERS; it++) {
    uint64_t r = xorshift(&rnd);
    uint32_t i = (uint32_t)(r >> 8) % TKEYS;
    size_t klen = key_of(k, i);
    uint8_t e = (uint8_t)(1 + ((r >> 40) & 1));
    int rc, want;
    switch (r % 8) {
    case 0:
    case 1:
    case 2:
      rc = kvds_dir_add(w->d, k, klen, id, e);
      want = w->st[i] < e;
      if (want)
        w->st[i] = e;
      w->mismatches += rc != want;
      break;
    case 3:
    case 4:
      rc = kvds_dir_remove(w->d, k, klen, id, e);
      want = w->st[i] == e;
      if (want)
        w->st[i] = 0;
      w->mismatches += rc != want;
      break;
    case 5:
    case 6: {
      size_t n = kvds_dir_lookup(w->d, k, klen, o, KVDS_DIR_MAX_OWNERS);
      uint8_t seen = 0;
      for (size_t j = 0; j < n && j < KVDS_DIR_MAX_OWNERS; j++)
        if (strcmp(o[j].id, id) == 0)
          seen = (uint8_t)o[j].epoch;
      w->mismatches += n > TTHREADS || seen != w->st[i];
      break;
    }
    default: {
      struct kvds_dir_stats s;
      kvds_dir_stats(w->d, &s);
      w->mismatches += s.owners > 2 * TTHREADS || s.keys > TKEYS;
      if (it % 64 == 7) {
        w->mismatches += kvds_dir_retain_owners(w->d, keep_all_owners, 0);
        w->mismatches += kvds_dir_retain_keys(w->d, keep_all_keys, 0);
      }
      break;
    }
    }
  }
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  kvds_directory *d = dir_new();
  static struct worker w[TTHREADS];
  memset(w, 0, sizeof w);
  for (int t = 0; t < TTHREADS; t++) {
    w[t].d = d;
    w[t].t = t;
    assert_int_equal(pthread_create(&w[t].th, NULL, worker_main, &w[t]), 0);
  }
  for (int t = 0; t < TTHREADS; t++)
    assert_int_equal(pthread_join(w[t].th, NULL), 0);

  uint64_t keys = 0, locs = 0;
  int owner_seen[TTHREADS][3] = {{0}};
  uint8_t k[8];
  struct kvds_dir_owner o[KVDS_DIR_MAX_OWNERS];
  for (int t = 0; t < TTHREADS; t++)
    assert_int_equal(w[t].mismatches, 0);
  for (uint32_t i = 0; i < TKEYS; i++) {
    size_t want = 0;
    for (int t = 0; t < TTHREADS; t++)
      if (w[t].st[i]) {
        want++;
        owner_seen[t][w[t].st[i]] = 1;
      }
    keys += want > 0;
    locs += want;
    size_t n = kvds_dir_lookup(d, k, key_of(k, i), o, KVDS_DIR_MAX_OWNERS);
    assert_int_equal(n, want);
    for (size_t j = 0; j < n; j++) {
      int t = o[j].id[1] - '0';
      assert_true(o[j].id[0] == 't' && t >= 0 && t < TTHREADS);
      assert_int_equal(o[j].epoch, w[t].st[i]);
    }
  }
  uint64_t owners = 0;
  for (int t = 0; t < TTHREADS; t++)
    owners += (uint64_t)(owner_seen[t][1] + owner_seen[t][2]);
  assert_true(locs > 0);
  check_stats(d, keys, locs, owners);
  kvds_dir_free(d);
}

/* ---- allocation failures ------------------------------------------------ */

#define FKEYS 300
#define FIDS 40

static void owner_id(char *id, size_t size, uint32_t i) {
  snprintf(id, size, "worker-%u", i);
}

/* One add with the budget armed. A failure must change nothing visible, and
 * the same call must succeed once memory is back. Returns 1 if it failed. */
static int add_armed(kvds_directory *d, const uint8_t *k, size_t klen,
                     const char *id, uint64_t epoch) {
  struct kvds_dir_stats before, after;
  struct kvds_dir_owner ob[KVDS_DIR_MAX_OWNERS], oa[KVDS_DIR_MAX_OWNERS];
  size_t nb, na;
  long budget = alloc_budget;
  alloc_budget = -1;
  kvds_dir_stats(d, &before);
  memset(ob, 0, sizeof ob);
  nb = kvds_dir_lookup(d, k, klen, ob, KVDS_DIR_MAX_OWNERS);
  unsigned long failed = alloc_failed;
  alloc_budget = budget;
  int rc = kvds_dir_add(d, k, klen, id, epoch);
  /* one failure per run: disarmed once an allocation failed */
  budget = alloc_failed == failed ? alloc_budget : -1;
  alloc_budget = -1;
  if (rc == -ENOMEM) {
    kvds_dir_stats(d, &after);
    assert_memory_equal(&before, &after, sizeof before);
    memset(oa, 0, sizeof oa);
    na = kvds_dir_lookup(d, k, klen, oa, KVDS_DIR_MAX_OWNERS);
    assert_int_equal(na, nb);
    assert_memory_equal(oa, ob, sizeof oa);
    assert_int_equal(kvds_dir_add(d, k, klen, id, epoch), 1);
    return 1;
  }
  alloc_budget = budget;
  assert_int_equal(rc, 1);
  return 0;
}

/* Fails each allocation in turn; at the end the directory holds exactly
 * what a run without failures holds. */
static void test_alloc_failures(void **state) {
  (void)state;
  kvds_directory *d = (kvds_directory *)0x1;
  uint8_t k[8];
  char id[32];
  struct kvds_dir_owner o[KVDS_DIR_MAX_OWNERS];
  unsigned long enomem = 0, silent = 0;

  for (long b = 0; b < 3; b++) {
    alloc_budget = b;
    assert_int_equal(kvds_dir_new(&d), -ENOMEM);
    assert_ptr_equal(d, (kvds_directory *)0x1);
  }
  alloc_budget = -1;

  for (long budget = 0;; budget++) {
    unsigned long failed0 = alloc_failed, enomem0 = enomem;
    d = dir_new();
    alloc_budget = budget;
    /* new keys and new owners; both tables grow */
    for (uint32_t i = 0; i < FKEYS; i++) {
      owner_id(id, sizeof id, i % FIDS);
      enomem += (unsigned long)add_armed(d, k, key_of(k, i), id, 1);
    }
    /* one key with the most owners, each new: its owner array moves to the
     * heap and grows there */
    for (uint32_t i = 1; i < KVDS_DIR_MAX_OWNERS; i++) {
      owner_id(id, sizeof id, FIDS + i);
      enomem += (unsigned long)add_armed(d, k, key_of(k, 0), id, 1);
    }
    /* a newer incarnation replaces the location (a new owner) */
    owner_id(id, sizeof id, 1);
    enomem += (unsigned long)add_armed(d, k, key_of(k, 1), id, 2);
    alloc_budget = -1;

    check_stats(d, FKEYS, FKEYS + KVDS_DIR_MAX_OWNERS - 1,
                FIDS + KVDS_DIR_MAX_OWNERS);
    for (uint32_t i = 0; i < FKEYS; i++) {
      size_t n = kvds_dir_lookup(d, k, key_of(k, i), o, KVDS_DIR_MAX_OWNERS);
      assert_int_equal(n, i == 0 ? KVDS_DIR_MAX_OWNERS : 1);
      owner_id(id, sizeof id, i % FIDS);
      assert_string_equal(o[0].id, id);
      assert_int_equal(o[0].epoch, i == 1 ? 2 : 1);
      for (size_t j = 1; j < n; j++) {
        owner_id(id, sizeof id, FIDS + (uint32_t)j);
        assert_string_equal(o[j].id, id);
      }
    }
    kvds_dir_free(d);
    if (alloc_failed == failed0)
      break; /* this budget was never reached: every allocation was tried */
    silent += enomem == enomem0; /* a failed table growth is not an error */
  }
  assert_true(enomem >= FKEYS / 2);
  assert_true(silent >= 3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_basics),
      cmocka_unit_test(test_idempotent),
      cmocka_unit_test(test_epochs),
      cmocka_unit_test(test_max_owners),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_binary_keys),
      cmocka_unit_test(test_retain_owners),
      cmocka_unit_test(test_retain_owners_epochs),
      cmocka_unit_test(test_retain_keys),
      cmocka_unit_test(test_growth),
      cmocka_unit_test(test_threads),
      cmocka_unit_test(test_alloc_failures),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
