/* test_store.c — unit tests for the object store (src/store/store.c) over a
 * real pool. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvds/kvds.h"
#include "pool/alloc.h"
#include "pool/pool.h"
#include "store/store.h"

#define KiB (1024ull)
#define MiB (1024ull * KiB)
#define POOL_SIZE (4 * MiB)

/* ---- malloc tracking (linked with -Wl,--wrap=malloc,--wrap=free) --------
 * The store mallocs one block per object. Tracking those blocks shows which
 * objects are still allocated after fini, without needing ASan, and lets a
 * test fail an allocation. */

void *__real_malloc(size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void __wrap_free(void *p);

#define MAX_TRACKED 4096
static void *tracked[MAX_TRACKED];
static unsigned n_tracked;
static int malloc_fail_next;

void *__wrap_malloc(size_t n) {
  if (malloc_fail_next) {
    malloc_fail_next = 0;
    return NULL;
  }
  void *p = __real_malloc(n);
  if (p && n_tracked < MAX_TRACKED)
    tracked[n_tracked++] = p;
  return p;
}

void __wrap_free(void *p) {
  for (unsigned i = 0; i < n_tracked; i++) {
    if (tracked[i] == p) {
      tracked[i] = tracked[--n_tracked];
      break;
    }
  }
  __real_free(p);
}

/* ---- fixture ------------------------------------------------------------ */

struct wake_call {
  struct kvds_waiter *w;
  struct kvds_object *obj;
  uint32_t pins;  /* obj->pins inside the callback */
  uint8_t armed;  /* w->armed inside the callback */
  uint8_t linked; /* obj in the LRU inside the callback */
};

struct fx {
  struct kvds_pool pool;
  struct kvds_store st;
  int open;
  unsigned ncalls;
  struct wake_call calls[16];
};

static void on_wake(struct kvds_waiter *w, struct kvds_object *obj, void *ud) {
  struct fx *f = ud;
  assert_true(f->ncalls < 16);
  f->calls[f->ncalls++] =
      (struct wake_call){.w = w,
                         .obj = obj,
                         .pins = obj->pins,
                         .armed = w->armed,
                         .linked = (uint8_t)kvds_lru_linked(&obj->lru)};
}

static int setup(void **state) {
  struct fx *f = calloc(1, sizeof *f);
  if (!f)
    return -1;
  n_tracked = 0;
  malloc_fail_next = 0;
  if (kvds_pool_create(&f->pool, "kvds-test-store", POOL_SIZE,
                       KVDS_POOL_HUGE_OFF) != 0) {
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

struct collect {
  struct kvds_object *obj[256];
  unsigned n;
};

static int collect_one(struct kvds_index_node *n, void *arg) {
  struct collect *c = arg;
  if (c->n == 256)
    return 1;
  c->obj[c->n++] = kvds_store_obj(n);
  return 0;
}

/* Drops every indexed object through the public calls (unpin, abort,
 * delete), so that teardown's fini runs on an empty index: fini with live
 * objects is exercised by the test_fini_* tests alone. */
static void drain(struct kvds_store *st) {
  struct collect c;
  do {
    c.n = 0;
    kvds_index_foreach(&st->index, collect_one, &c);
    for (unsigned i = 0; i < c.n; i++) {
      struct kvds_object *o = c.obj[i];
      while (o->pins)
        kvds_store_unpin(st, o);
      if (o->state == KVDS_STATE_WRITING)
        kvds_store_abort(st, o);
      else
        kvds_store_delete(st, o->key, o->inode.klen);
    }
  } while (c.n);
}

static int teardown(void **state) {
  struct fx *f = *state;
  if (f->open) {
    drain(&f->st);
    kvds_store_fini(&f->st);
  }
  kvds_pool_destroy(&f->pool);
  free(f);
  /* Every object block the store allocated is gone. */
  assert_int_equal(n_tracked, 0);
  return 0;
}

static struct kvds_store *open_store(struct fx *f, double high, double ratio,
                                     uint64_t max_object) {
  struct kvds_evict_policy p = {.high_watermark = high,
                                .eviction_ratio = ratio};
  assert_int_equal(
      kvds_store_init(&f->st, &f->pool, &p, max_object, on_wake, f), 0);
  f->open = 1;
  assert_int_equal(f->st.alloc.capacity, POOL_SIZE);
  return &f->st;
}

static struct kvds_object *create(struct kvds_store *st, const char *key,
                                  uint64_t size) {
  struct kvds_object *o = NULL;
  int rc = kvds_store_create(st, key, strlen(key), size, &o);
  if (rc)
    fail_msg("create %s (%llu bytes): %s", key, (unsigned long long)size,
             kvds_err_name(rc));
  assert_non_null(o);
  return o;
}

static struct kvds_object *put(struct kvds_store *st, const char *key,
                               uint64_t size) {
  struct kvds_object *o = create(st, key, size);
  kvds_store_seal(st, o, size ^ 0x5eal);
  return o;
}

static struct kvds_object *find(struct kvds_store *st, const char *key) {
  return kvds_store_find(st, key, strlen(key));
}

static struct kvds_object *get(struct kvds_store *st, const char *key) {
  return kvds_store_get(st, key, strlen(key));
}

static void keyname(char *buf, size_t cap, unsigned i) {
  snprintf(buf, cap, "key-%u", i);
}

struct lru_audit {
  uint64_t evictable;
  uint64_t writing;
  uint64_t pinned;
};

static int audit_one(struct kvds_index_node *n, void *arg) {
  struct lru_audit *a = arg;
  struct kvds_object *o = kvds_store_obj(n);
  int evictable = o->state == KVDS_STATE_SEALED && o->pins == 0;
  assert_true(o->indexed);
  assert_int_equal(kvds_lru_linked(&o->lru), evictable);
  a->evictable += (uint64_t)evictable;
  a->writing += o->state == KVDS_STATE_WRITING;
  a->pinned += o->pins > 0;
  return 0;
}

/* The LRU holds exactly the indexed sealed unpinned objects; the allocator
 * is consistent. */
static void audit(struct kvds_store *st) {
  struct lru_audit a = {0};
  assert_int_equal(kvds_index_foreach(&st->index, audit_one, &a), 0);
  assert_int_equal(st->lru.count, a.evictable);
  assert_int_equal(st->ctr.writing_objects, a.writing);
  assert_true(st->ctr.pinned_objects >= a.pinned);
  assert_int_equal(kvds_alloc_check(&st->alloc), 0);
}

static void make_waiter(struct kvds_waiter *w, const void *key, size_t klen,
                        uint32_t idx) {
  memset(w, 0, sizeof *w);
  w->key = key;
  w->klen = (uint32_t)klen;
  w->hash = kvds_index_hash(key, klen);
  w->idx = idx;
}

/* ---- init --------------------------------------------------------------- */

static void test_init(void **state) {
  struct fx *f = *state;
  struct kvds_store *st;
  struct kvds_evict_policy bad = {.high_watermark = 0.5, .eviction_ratio = 0.5};

  assert_int_equal(kvds_store_init(&f->st, &f->pool, &bad, 0, on_wake, f),
                   KVDS_E_INVAL);
  bad.high_watermark = 1.5;
  bad.eviction_ratio = 0.1;
  assert_int_equal(kvds_store_init(&f->st, &f->pool, &bad, 0, on_wake, f),
                   KVDS_E_INVAL);

  st = open_store(f, 0.9, 0.1, 0);
  assert_int_equal(st->max_object, POOL_SIZE); /* 0: the whole pool */
  assert_int_equal(st->alloc.used, 0);
  assert_int_equal(st->lru.count, 0);
  assert_int_equal(st->index.count, 0);
  assert_int_equal(st->n_waiters, 0);
  kvds_store_fini(st);
  f->open = 0;

  st = open_store(f, 0.9, 0.1, 10 * POOL_SIZE);
  assert_int_equal(st->max_object, POOL_SIZE); /* capped by the pool */
  kvds_store_fini(st);
  f->open = 0;

  st = open_store(f, 0.9, 0.1, 1000);
  assert_int_equal(st->max_object, 1000);
}

/* ---- lifecycle ---------------------------------------------------------- */

static void test_create_seal_get(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_object *o;

  assert_null(find(st, "k1"));
  o = create(st, "k1", 1000);
  assert_int_equal(o->state, KVDS_STATE_WRITING);
  assert_int_equal(o->size, 1000);
  assert_int_equal(o->pins, 0);
  assert_true(o->indexed);
  assert_false(kvds_lru_linked(&o->lru));
  assert_true(kvds_pool_contains(&f->pool, o->off, o->size));
  assert_int_equal(o->off % KVDS_ALLOC_ALIGN, 0);
  assert_int_equal(st->alloc.used, kvds_alloc_rounded(1000));
  assert_int_equal(st->ctr.writing_objects, 1);
  assert_int_equal(st->ctr.puts, 0);
  assert_int_equal(st->lru.count, 0);

  /* WRITING: found by find, but not by get (not "exists"). */
  assert_ptr_equal(find(st, "k1"), o);
  assert_int_equal(find(st, "k1")->state, KVDS_STATE_WRITING);
  assert_null(get(st, "k1"));
  assert_int_equal(o->pins, 0);
  assert_int_equal(st->ctr.hits, 0);
  assert_int_equal(st->ctr.misses, 0); /* the caller counts misses */

  uint8_t *d = kvds_store_data(st, o);
  for (unsigned i = 0; i < 1000; i++)
    d[i] = (uint8_t)(i * 7);
  kvds_store_seal(st, o, 0xabcdef);
  assert_int_equal(o->state, KVDS_STATE_SEALED);
  assert_int_equal(o->checksum, 0xabcdef);
  assert_true(kvds_lru_linked(&o->lru));
  assert_int_equal(st->lru.count, 1);
  assert_int_equal(st->ctr.writing_objects, 0);
  assert_int_equal(st->ctr.puts, 1);
  assert_int_equal(find(st, "k1")->state, KVDS_STATE_SEALED);

  /* get pins and takes the object off the LRU; each get adds a pin. */
  assert_ptr_equal(get(st, "k1"), o);
  assert_int_equal(o->pins, 1);
  assert_false(kvds_lru_linked(&o->lru));
  assert_int_equal(st->lru.count, 0);
  assert_int_equal(st->ctr.pinned_objects, 1);
  assert_int_equal(st->ctr.hits, 1);
  assert_ptr_equal(get(st, "k1"), o);
  assert_int_equal(o->pins, 2);
  assert_int_equal(st->ctr.pinned_objects, 1);
  assert_int_equal(st->ctr.hits, 2);
  audit(st);

  kvds_store_unpin(st, o);
  assert_int_equal(o->pins, 1);
  assert_false(kvds_lru_linked(&o->lru));
  kvds_store_unpin(st, o);
  assert_int_equal(o->pins, 0);
  assert_true(kvds_lru_linked(&o->lru));
  assert_int_equal(st->lru.count, 1);
  assert_int_equal(st->ctr.pinned_objects, 0);

  /* Explicit pin/unpin behave the same. */
  kvds_store_pin(st, o);
  assert_false(kvds_lru_linked(&o->lru));
  kvds_store_unpin(st, o);
  assert_true(kvds_lru_linked(&o->lru));

  d = kvds_store_data(st, o);
  for (unsigned i = 0; i < 1000; i++)
    assert_int_equal(d[i], (uint8_t)(i * 7));
  assert_int_equal(st->alloc.used, kvds_alloc_rounded(1000));
  audit(st);
}

/* A pin taken while WRITING does not put the object on the LRU on unpin. */
static void test_pin_writing(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_object *o = create(st, "w", 100);

  kvds_store_pin(st, o);
  kvds_store_unpin(st, o);
  assert_int_equal(o->pins, 0);
  assert_false(kvds_lru_linked(&o->lru));
  assert_ptr_equal(find(st, "w"), o);
  assert_int_equal(o->state, KVDS_STATE_WRITING);
  /* Sealing while pinned: stays off the LRU until the pin goes. */
  kvds_store_pin(st, o);
  kvds_store_seal(st, o, 1);
  assert_false(kvds_lru_linked(&o->lru));
  kvds_store_unpin(st, o);
  assert_true(kvds_lru_linked(&o->lru));
  audit(st);
}

static void test_create_errors(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 64 * KiB);
  struct kvds_object *sentinel = (struct kvds_object *)(uintptr_t)0x1;
  struct kvds_object *o = sentinel;
  uint8_t key[KVDS_KEY_MAX + 1];

  memset(key, 'k', sizeof key);
  assert_int_equal(kvds_store_create(st, key, 0, 100, &o), KVDS_E_KEYLEN);
  assert_int_equal(kvds_store_create(st, key, KVDS_KEY_MAX + 1, 100, &o),
                   KVDS_E_KEYLEN);
  assert_int_equal(kvds_store_create(st, key, 10, 0, &o), KVDS_E_INVAL);
  assert_int_equal(kvds_store_create(st, key, 10, 64 * KiB + 1, &o),
                   KVDS_E_TOOBIG);
  assert_int_equal(kvds_store_create(st, key, 10, UINT64_MAX, &o),
                   KVDS_E_TOOBIG);
  assert_ptr_equal(o, sentinel); /* out-parameter untouched on error */
  assert_int_equal(st->alloc.used, 0);
  assert_int_equal(st->index.count, 0);
  assert_int_equal(st->ctr.writing_objects, 0);
  assert_int_equal(st->ctr.nospace, 0);
  assert_int_equal(n_tracked, 0);

  /* Boundaries that are accepted: 1- and 1024-byte keys, max_object. */
  assert_int_equal(kvds_store_create(st, key, KVDS_KEY_MAX, 64 * KiB, &o), 0);
  assert_ptr_not_equal(o, sentinel);
  assert_int_equal(o->inode.klen, KVDS_KEY_MAX);
  kvds_store_seal(st, o, 0);
  assert_int_equal(kvds_store_create(st, key, 1, 1, &o), 0);
  assert_int_equal(st->alloc.used, 64 * KiB + KVDS_ALLOC_ALIGN);
  kvds_store_seal(st, o, 0);
  assert_non_null(kvds_store_find(st, key, 1));
  assert_non_null(kvds_store_find(st, key, KVDS_KEY_MAX));
  assert_null(kvds_store_find(st, key, 2));

  /* find/get/delete reject bad key lengths too. */
  assert_null(kvds_store_find(st, key, 0));
  assert_null(kvds_store_find(st, key, KVDS_KEY_MAX + 1));
  assert_null(kvds_store_get(st, key, KVDS_KEY_MAX + 1));
  assert_int_equal(kvds_store_delete(st, key, 0), KVDS_E_KEYLEN);
  assert_int_equal(kvds_store_delete(st, key, KVDS_KEY_MAX + 1), KVDS_E_KEYLEN);
  audit(st);
}

/* -ENOMEM when the object's metadata cannot be allocated: nothing changes. */
static void test_create_enomem(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_object *o = NULL;

  malloc_fail_next = 1;
  assert_int_equal(kvds_store_create(st, "m", 1, 4096, &o), -ENOMEM);
  assert_null(o);
  assert_null(find(st, "m"));
  assert_int_equal(st->alloc.used, 0);
  assert_int_equal(st->index.count, 0);
  assert_int_equal(st->ctr.writing_objects, 0);
  o = create(st, "m", 4096);
  assert_int_equal(st->alloc.used, 4096);
}

static void test_duplicate(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_object *o, *o2 = NULL;

  o = create(st, "dup", 100);
  /* While WRITING. */
  assert_int_equal(kvds_store_create(st, "dup", 3, 100, &o2), KVDS_E_EXISTS);
  assert_int_equal(kvds_store_create(st, "dup", 3, 5000, &o2), KVDS_E_EXISTS);
  assert_null(o2);
  assert_int_equal(st->alloc.used, kvds_alloc_rounded(100));
  assert_int_equal(st->ctr.writing_objects, 1);
  /* Once SEALED. */
  kvds_store_seal(st, o, 9);
  assert_int_equal(kvds_store_create(st, "dup", 3, 100, &o2), KVDS_E_EXISTS);
  assert_null(o2);
  assert_int_equal(st->index.count, 1);
  assert_int_equal(st->ctr.puts, 1);

  /* Keys that differ in an embedded zero byte or in length are distinct. */
  assert_int_equal(kvds_store_create(st, "a\0b", 3, 64, &o2), 0);
  assert_int_equal(kvds_store_create(st, "a\0c", 3, 64, &o2), 0);
  assert_int_equal(kvds_store_create(st, "a\0", 2, 64, &o2), 0);
  assert_int_equal(kvds_store_create(st, "a\0b", 3, 64, &o2), KVDS_E_EXISTS);
  assert_int_equal(st->index.count, 4);
  audit(st);
}

static void test_delete(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_object *o;

  assert_int_equal(kvds_store_delete(st, "d", 1), KVDS_E_NOTFOUND);
  o = create(st, "d", 8192);
  /* A WRITING object cannot be deleted; it stays as it was. */
  assert_int_equal(kvds_store_delete(st, "d", 1), KVDS_E_STATE);
  assert_ptr_equal(find(st, "d"), o);
  assert_int_equal(o->state, KVDS_STATE_WRITING);
  assert_int_equal(st->alloc.used, 8192);

  kvds_store_seal(st, o, 1);
  assert_int_equal(st->lru.count, 1);
  assert_int_equal(kvds_store_delete(st, "d", 1), 0);
  assert_null(find(st, "d"));
  assert_null(get(st, "d"));
  assert_int_equal(st->alloc.used, 0);
  assert_int_equal(st->alloc.n_alloc, 0);
  assert_int_equal(st->lru.count, 0);
  assert_int_equal(st->index.count, 0);
  assert_int_equal(n_tracked, 0);
  assert_int_equal(kvds_store_delete(st, "d", 1), KVDS_E_NOTFOUND);
  /* Not an eviction. */
  assert_int_equal(st->ctr.evictions, 0);

  o = create(st, "d", 100);
  assert_int_equal(o->state, KVDS_STATE_WRITING);
  audit(st);
}

/* delete of a pinned object unlinks it at once; memory goes at last unpin. */
static void test_delete_pinned(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_object *old, *nw;

  old = create(st, "p", 64 * KiB);
  memset(kvds_store_data(st, old), 0xa5, 64 * KiB);
  kvds_store_seal(st, old, 1);
  assert_ptr_equal(get(st, "p"), old);
  assert_ptr_equal(get(st, "p"), old);
  assert_int_equal(old->pins, 2);

  assert_int_equal(kvds_store_delete(st, "p", 1), 0);
  assert_null(find(st, "p"));
  assert_null(get(st, "p"));
  assert_int_equal(st->index.count, 0);
  assert_false(old->indexed);
  /* Off the LRU (eviction cannot reach it), on the orphan list. */
  assert_int_equal(st->lru.count, 0);
  assert_int_equal(st->orphans.count, 1);
  /* Still allocated: a reader holds it. */
  assert_int_equal(st->alloc.used, 64 * KiB);
  assert_int_equal(st->alloc.n_alloc, 1);
  assert_int_equal(kvds_store_delete(st, "p", 1), KVDS_E_NOTFOUND);

  /* The key is free for a new object while the old one is still pinned. */
  nw = create(st, "p", 128 * KiB);
  assert_ptr_not_equal(nw, old);
  assert_int_not_equal(nw->off, old->off);
  memset(kvds_store_data(st, nw), 0x3c, 128 * KiB);
  kvds_store_seal(st, nw, 2);
  assert_int_equal(st->alloc.used, 192 * KiB);
  assert_ptr_equal(find(st, "p"), nw);

  /* The old bytes are intact for their reader. */
  const uint8_t *d = kvds_store_data(st, old);
  for (size_t i = 0; i < 64 * KiB; i += 4096)
    assert_int_equal(d[i], 0xa5);

  kvds_store_unpin(st, old);
  assert_int_equal(st->alloc.used, 192 * KiB); /* one pin left */
  assert_int_equal(st->ctr.pinned_objects, 1);
  kvds_store_unpin(st, old); /* last pin: freed now */
  assert_int_equal(st->alloc.used, 128 * KiB);
  assert_int_equal(st->alloc.n_alloc, 1);
  assert_int_equal(st->ctr.pinned_objects, 0);
  assert_int_equal(n_tracked, 1);
  assert_ptr_equal(find(st, "p"), nw);
  assert_int_equal(nw->state, KVDS_STATE_SEALED);
  assert_true(kvds_lru_linked(&nw->lru));
  assert_int_equal(st->lru.count, 1);
  audit(st);
}

static void test_abort(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_object *o, *keep;

  keep = put(st, "keep", 4096);
  o = create(st, "ab", 100 * KiB);
  assert_int_equal(st->alloc.used, 4096 + 100 * KiB);
  assert_int_equal(n_tracked, 2);
  kvds_store_abort(st, o);
  assert_int_equal(st->alloc.used, 4096);
  assert_int_equal(st->alloc.n_alloc, 1);
  assert_int_equal(n_tracked, 1);
  assert_null(find(st, "ab"));
  assert_int_equal(st->ctr.writing_objects, 0);
  assert_int_equal(st->ctr.puts, 1);
  assert_int_equal(st->index.count, 1);
  assert_int_equal(st->lru.count, 1);
  assert_ptr_equal(find(st, "keep"), keep);

  /* The key can be created again. */
  o = create(st, "ab", 64);
  assert_int_equal(o->state, KVDS_STATE_WRITING);
  kvds_store_abort(st, o);
  assert_int_equal(st->alloc.used, 4096);
  audit(st);
}

/* ---- eviction ----------------------------------------------------------- */

/*
 * high 0.75, ratio 0.25 over 4 MiB: high = 3 MiB, low = 2 MiB. Twelve
 * 256 KiB objects fill exactly to high. k0 is pinned, k1 stays WRITING and k2
 * is read (so it is the most recently used). A 200 KiB create then needs
 * 12 * 256K + 200K - 2M = 1M + 200K evicted: five 256 KiB objects, the five
 * oldest unpinned sealed ones, k3..k7.
 */
static void test_evict_order(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.75, 0.25, 0);
  struct kvds_object *obj[12], *o;
  char k[32];

  for (unsigned i = 0; i < 12; i++) {
    keyname(k, sizeof k, i);
    obj[i] = create(st, k, 256 * KiB);
    if (i != 1)
      kvds_store_seal(st, obj[i], i);
  }
  assert_int_equal(st->alloc.used, 3 * MiB);
  assert_int_equal(st->ctr.evictions, 0);
  assert_ptr_equal(get(st, "key-0"), obj[0]); /* held */
  assert_ptr_equal(get(st, "key-2"), obj[2]);
  kvds_store_unpin(st, obj[2]);
  assert_int_equal(st->lru.count, 10);

  o = create(st, "new", 200 * KiB);
  assert_int_equal(st->ctr.evictions, 5);
  assert_int_equal(st->ctr.evicted_bytes, 5 * 256 * KiB);
  for (unsigned i = 0; i < 12; i++) {
    keyname(k, sizeof k, i);
    if (i >= 3 && i <= 7)
      assert_null(find(st, k));
    else
      assert_ptr_equal(find(st, k), obj[i]);
  }
  assert_ptr_equal(find(st, "new"), o);
  assert_int_equal(st->alloc.used, 7 * 256 * KiB + 200 * KiB);
  assert_true(st->alloc.used <= (uint64_t)((0.75 - 0.25) * POOL_SIZE));
  assert_int_equal(obj[0]->pins, 1);
  assert_int_equal(obj[1]->state, KVDS_STATE_WRITING);
  assert_int_equal(n_tracked, 13 - 5);
  audit(st);

  /* Under more pressure the pinned and the WRITING objects still stay. */
  kvds_store_seal(st, o, 0);
  for (unsigned i = 0; i < 40; i++) {
    keyname(k, sizeof k, 100 + i);
    put(st, k, 256 * KiB);
    assert_ptr_equal(find(st, "key-0"), obj[0]);
    assert_ptr_equal(find(st, "key-1"), obj[1]);
    assert_true(st->alloc.used <= 3 * MiB);
  }
  assert_null(find(st, "key-2"));
  assert_null(find(st, "new"));
  kvds_store_unpin(st, obj[0]);
  kvds_store_seal(st, obj[1], 1);
  audit(st);
}

/*
 * Uniform 256 KiB objects with high 0.75, ratio 0.25 (exact in binary):
 * after twelve objects (3 MiB = high) a thirteenth must bring used + want down
 * to 2 MiB, i.e. evict exactly five objects, leaving used at 2 MiB.
 */
static void test_evict_exact_boundary(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.75, 0.25, 0);
  char k[32];

  for (unsigned i = 0; i < 12; i++) {
    keyname(k, sizeof k, i);
    put(st, k, 256 * KiB);
  }
  assert_int_equal(st->ctr.evictions, 0);
  create(st, "trigger", 256 * KiB);
  assert_true(st->alloc.used <= 2 * MiB);
  assert_int_equal(st->ctr.evictions, 5);
  assert_int_equal(st->ctr.evicted_bytes, 5 * 256 * KiB);
  assert_int_equal(st->alloc.used, 2 * MiB);
  for (unsigned i = 0; i < 12; i++) {
    keyname(k, sizeof k, i);
    if (i < 5)
      assert_null(find(st, k));
    else
      assert_non_null(find(st, k));
  }
  audit(st);
}

/* A stream of puts of mixed sizes with no reads: FIFO eviction, the live keys
 * are always the most recent ones, and every create that evicts leaves used
 * at or below the low mark. */
static void test_evict_stream(void **state) {
  struct fx *f = *state;
  const double high = 0.875, ratio = 0.25;
  struct kvds_store *st = open_store(f, high, ratio, 0);
  const uint64_t low = (uint64_t)((high - ratio) * POOL_SIZE);
  unsigned oldest_live = 0;
  char k[32];

  for (unsigned i = 0; i < 300; i++) {
    uint64_t size = (uint64_t)(1 + (i * 7919u) % 300) * KiB;
    uint64_t before = st->ctr.evictions;
    keyname(k, sizeof k, i);
    put(st, k, size);
    if (st->ctr.evictions != before)
      assert_true(st->alloc.used <= low);
    assert_true(st->alloc.used <= (uint64_t)(high * POOL_SIZE));
    /* Evicted keys are a prefix of the put sequence. */
    while (oldest_live < i) {
      keyname(k, sizeof k, oldest_live);
      if (find(st, k))
        break;
      oldest_live++;
    }
    for (unsigned j = oldest_live; j <= i; j++) {
      keyname(k, sizeof k, j);
      assert_non_null(find(st, k));
    }
    assert_int_equal(st->ctr.evictions + st->index.count, i + 1);
  }
  assert_true(st->ctr.evictions > 0);
  audit(st);
}

/* Nothing evictable: the create fails with NOSPACE and changes nothing. */
static void test_nospace(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.2, 0);
  struct kvds_object *obj[4], *o = NULL;
  char k[32];

  /* Pin each as soon as it is sealed: the 4th create crosses high with an
   * empty LRU and still succeeds since the pool has room. */
  for (unsigned i = 0; i < 4; i++) {
    keyname(k, sizeof k, i);
    obj[i] = put(st, k, 1 * MiB);
    assert_ptr_equal(get(st, k), obj[i]);
  }
  assert_int_equal(st->alloc.used, POOL_SIZE);
  assert_int_equal(st->ctr.evictions, 0);

  assert_int_equal(kvds_store_create(st, "x", 1, 1 * MiB, &o), KVDS_E_NOSPACE);
  assert_int_equal(kvds_store_create(st, "y", 1, 64, &o), KVDS_E_NOSPACE);
  assert_null(o);
  assert_int_equal(st->ctr.nospace, 2);
  assert_int_equal(st->ctr.evictions, 0);
  assert_null(find(st, "x"));
  assert_null(find(st, "y"));
  assert_int_equal(st->alloc.used, POOL_SIZE);
  assert_int_equal(n_tracked, 4);
  for (unsigned i = 0; i < 4; i++) {
    keyname(k, sizeof k, i);
    assert_ptr_equal(find(st, k), obj[i]);
  }

  /* Pinned and WRITING mixed: still nothing evictable. */
  kvds_store_unpin(st, obj[3]);
  assert_int_equal(kvds_store_delete(st, "key-3", 5), 0);
  o = create(st, "w", 1 * MiB); /* WRITING fills the last MiB */
  struct kvds_object *o2 = NULL;
  assert_int_equal(kvds_store_create(st, "z", 1, 64, &o2), KVDS_E_NOSPACE);
  assert_int_equal(st->ctr.nospace, 3);

  /* One unpin makes exactly that object evictable. */
  kvds_store_unpin(st, obj[1]);
  o2 = create(st, "z", 64);
  assert_int_equal(st->ctr.evictions, 1);
  assert_null(find(st, "key-1"));
  assert_ptr_equal(find(st, "key-0"), obj[0]);
  assert_ptr_equal(find(st, "key-2"), obj[2]);
  assert_ptr_equal(find(st, "w"), o);

  kvds_store_unpin(st, obj[0]);
  kvds_store_unpin(st, obj[2]);
  kvds_store_abort(st, o);
  audit(st);
}

/* ---- waiters ------------------------------------------------------------ */

static void test_waiters(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_waiter wa1, wa2, wb, wlen, wcoll;
  struct kvds_object *a, *b;
  char coll[32];
  const uint64_t ha = kvds_index_hash("A", 1);

  /* A different key in A's wait bucket. */
  for (unsigned i = 0;; i++) {
    snprintf(coll, sizeof coll, "c%u", i);
    if (kvds_index_hash(coll, strlen(coll)) % KVDS_STORE_WAIT_BUCKETS ==
        ha % KVDS_STORE_WAIT_BUCKETS)
      break;
  }

  make_waiter(&wa1, "A", 1, 1);
  make_waiter(&wa2, "A", 1, 2);
  make_waiter(&wb, "B", 1, 3);
  make_waiter(&wlen, "A\0", 2, 4); /* longer key, same prefix */
  make_waiter(&wcoll, coll, strlen(coll), 5);
  kvds_store_wait_add(st, &wa1);
  kvds_store_wait_add(st, &wb);
  kvds_store_wait_add(st, &wcoll);
  kvds_store_wait_add(st, &wa2);
  kvds_store_wait_add(st, &wlen);
  assert_int_equal(st->n_waiters, 5);
  assert_true(wa1.armed && wa2.armed && wb.armed && wlen.armed && wcoll.armed);

  /* Creating does not wake; sealing does. */
  a = create(st, "A", 1000);
  assert_int_equal(f->ncalls, 0);
  kvds_store_seal(st, a, 77);
  assert_int_equal(f->ncalls, 2);
  assert_int_equal(a->pins, 2);
  assert_int_equal(st->ctr.pinned_objects, 1);
  assert_false(kvds_lru_linked(&a->lru));
  assert_int_equal(st->lru.count, 0);
  int seen1 = 0, seen2 = 0;
  for (unsigned i = 0; i < f->ncalls; i++) {
    struct wake_call *c = &f->calls[i];
    assert_ptr_equal(c->obj, a);
    assert_int_equal(c->armed, 0);    /* removed before the callback */
    assert_int_equal(c->pins, i + 1); /* a pin is taken for each waiter */
    assert_int_equal(c->linked, 0);
    seen1 += c->w == &wa1;
    seen2 += c->w == &wa2;
  }
  assert_int_equal(seen1, 1);
  assert_int_equal(seen2, 1);
  assert_int_equal(wa1.idx, 1);
  assert_int_equal(wa2.idx, 2);
  assert_false(wa1.armed);
  assert_false(wa2.armed);
  assert_true(wb.armed);
  assert_true(wlen.armed);
  assert_true(wcoll.armed);
  assert_int_equal(st->n_waiters, 3);

  /* The callers own those pins. */
  kvds_store_unpin(st, a);
  kvds_store_unpin(st, a);
  assert_true(kvds_lru_linked(&a->lru));
  assert_int_equal(st->ctr.pinned_objects, 0);

  /* Sealing B wakes only wb. */
  f->ncalls = 0;
  b = create(st, "B", 10);
  kvds_store_seal(st, b, 1);
  assert_int_equal(f->ncalls, 1);
  assert_ptr_equal(f->calls[0].w, &wb);
  assert_ptr_equal(f->calls[0].obj, b);
  assert_int_equal(b->pins, 1);
  assert_false(wb.armed);
  assert_int_equal(st->n_waiters, 2);
  kvds_store_unpin(st, b);

  /* A sealed object with no waiters wakes nobody. */
  f->ncalls = 0;
  put(st, "C", 10);
  assert_int_equal(f->ncalls, 0);

  /* The colliding key's waiter is still there and still works. */
  put(st, coll, 10);
  assert_int_equal(f->ncalls, 1);
  assert_ptr_equal(f->calls[0].w, &wcoll);
  kvds_store_unpin(st, f->calls[0].obj);

  kvds_store_wait_remove(st, &wlen);
  assert_int_equal(st->n_waiters, 0);
  audit(st);
}

static void test_wait_remove(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_waiter w[4];
  struct kvds_object *o;

  for (unsigned i = 0; i < 4; i++) {
    make_waiter(&w[i], "K", 1, i);
    kvds_store_wait_add(st, &w[i]);
  }
  assert_int_equal(st->n_waiters, 4);

  /* Armed: removed (from the middle of the bucket, then its head). */
  kvds_store_wait_remove(st, &w[1]);
  assert_false(w[1].armed);
  assert_int_equal(st->n_waiters, 3);
  kvds_store_wait_remove(st, &w[3]); /* added last: head of the bucket */
  assert_false(w[3].armed);
  assert_int_equal(st->n_waiters, 2);
  /* Unarmed: no-op. */
  kvds_store_wait_remove(st, &w[1]);
  kvds_store_wait_remove(st, &w[3]);
  assert_int_equal(st->n_waiters, 2);

  o = create(st, "K", 64);
  kvds_store_seal(st, o, 0);
  assert_int_equal(f->ncalls, 2);
  for (unsigned i = 0; i < f->ncalls; i++)
    assert_true(f->calls[i].w == &w[0] || f->calls[i].w == &w[2]);
  assert_ptr_not_equal(f->calls[0].w, f->calls[1].w);
  assert_int_equal(o->pins, 2);
  assert_int_equal(st->n_waiters, 0);

  /* Removing a waiter that was woken is a no-op. */
  kvds_store_wait_remove(st, &w[0]);
  kvds_store_wait_remove(st, &w[2]);
  assert_int_equal(st->n_waiters, 0);
  kvds_store_unpin(st, o);
  kvds_store_unpin(st, o);

  /* A removed waiter can be added again and is woken by the next seal. */
  kvds_store_wait_add(st, &w[1]);
  assert_true(w[1].armed);
  assert_int_equal(kvds_store_delete(st, "K", 1), 0);
  f->ncalls = 0;
  o = put(st, "K", 64);
  assert_int_equal(f->ncalls, 1);
  assert_ptr_equal(f->calls[0].w, &w[1]);
  kvds_store_unpin(st, o);
  audit(st);
}

/* ---- fini --------------------------------------------------------------- */

/* fini frees every live object: sealed, pinned, WRITING. */
static void test_fini_live_objects(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  char k[32];

  for (unsigned i = 0; i < 50; i++) {
    keyname(k, sizeof k, i);
    struct kvds_object *o = create(st, k, 1000 + i);
    if (i % 3)
      kvds_store_seal(st, o, i);
    if (i % 3 == 1)
      assert_ptr_equal(get(st, k), o);
  }
  assert_int_equal(n_tracked, 50);
  f->open = 0;
  kvds_store_fini(st);
  assert_int_equal(n_tracked, 0);
}

/* An object deleted while pinned is no longer indexed but still alive: fini
 * must free it as well ("frees every object"). It is the only object, so
 * fini has nothing to walk in the index. */
static void test_fini_deleted_pinned(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_object *o = put(st, "gone", 4096);

  assert_ptr_equal(get(st, "gone"), o);
  assert_int_equal(kvds_store_delete(st, "gone", 4), 0);
  assert_int_equal(st->index.count, 0);
  assert_int_equal(n_tracked, 1);
  f->open = 0;
  kvds_store_fini(st);
  assert_int_equal(n_tracked, 0);
}

/* fini on a store whose objects were all released: nothing left behind. */
static void test_fini_empty(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.9, 0.1, 0);
  struct kvds_object *o = put(st, "a", 100);

  kvds_store_abort(st, create(st, "b", 100));
  assert_int_equal(kvds_store_delete(st, "a", 1), 0);
  (void)o;
  assert_int_equal(n_tracked, 0);
  f->open = 0;
  kvds_store_fini(st);
  assert_int_equal(n_tracked, 0);
}

/* ---- regressions: creates that cannot fit ------------------------------ */

#define BIG_POOL_SIZE (16 * MiB)

static int setup_big(void **state) {
  struct fx *f = calloc(1, sizeof *f);
  if (!f)
    return -1;
  n_tracked = 0;
  malloc_fail_next = 0;
  if (kvds_pool_create(&f->pool, "kvds-test-store-big", BIG_POOL_SIZE,
                       KVDS_POOL_HUGE_OFF) != 0) {
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

static void assert_present(struct kvds_store *st, const char *fmt,
                           unsigned from, unsigned to, int present) {
  char k[32];
  for (unsigned i = from; i < to; i++) {
    snprintf(k, sizeof k, fmt, i);
    if (present && !find(st, k))
      fail_msg("%s was evicted", k);
    if (!present && find(st, k))
      fail_msg("%s is still there", k);
  }
}

/*
 * A create larger than what eviction could ever free (the pool minus the
 * pinned and WRITING objects) fails with NOSPACE without evicting anything.
 * Policy over 16 MiB: high 15 MiB, low 14 MiB (exact in binary). 8 MiB are
 * pinned and six 1 MiB objects are sealed and unpinned (14 MiB used, at or
 * under high: no eviction yet), so at most 8 MiB can be had.
 */
static void test_hopeless_create_keeps_objects(void **state) {
  struct fx *f = *state;
  struct kvds_evict_policy p = {.high_watermark = 0.9375,
                                .eviction_ratio = 0.0625};
  assert_int_equal(kvds_store_init(&f->st, &f->pool, &p, 0, on_wake, f), 0);
  f->open = 1;
  struct kvds_store *st = &f->st;
  assert_int_equal(st->alloc.capacity, BIG_POOL_SIZE);
  struct kvds_object *pinned, *hot[6], *o = NULL;
  char k[32];

  pinned = put(st, "pinned", 8 * MiB);
  assert_ptr_equal(get(st, "pinned"), pinned);
  for (unsigned i = 0; i < 6; i++) {
    snprintf(k, sizeof k, "hot%u", i);
    hot[i] = put(st, k, 1 * MiB);
  }
  assert_int_equal(st->alloc.used, 14 * MiB);
  assert_int_equal(st->lru.count, 6);
  assert_int_equal(st->ctr.evictions, 0);
  assert_int_equal(n_tracked, 7);

  /* 10 MiB, and 8 MiB + 1 byte: more than the 8 MiB eviction could free. */
  const uint64_t hopeless[] = {10 * MiB, 8 * MiB + 1, BIG_POOL_SIZE};
  for (unsigned t = 0; t < 3; t++) {
    assert_int_equal(kvds_store_create(st, "huge", 4, hopeless[t], &o),
                     KVDS_E_NOSPACE);
    assert_null(o);
    assert_int_equal(st->ctr.nospace, t + 1);
    assert_int_equal(st->ctr.evictions, 0);
    assert_int_equal(st->ctr.evicted_bytes, 0);
    assert_int_equal(st->alloc.used, 14 * MiB);
    assert_int_equal(st->lru.count, 6);
    assert_null(find(st, "huge"));
    for (unsigned i = 0; i < 6; i++) {
      snprintf(k, sizeof k, "hot%u", i);
      assert_ptr_equal(find(st, k), hot[i]);
      assert_int_equal(hot[i]->state, KVDS_STATE_SEALED);
    }
    assert_ptr_equal(find(st, "pinned"), pinned);
    assert_int_equal(pinned->pins, 1);
    assert_int_equal(n_tracked, 7);
    audit(st);
  }

  /* A create that fits only after evicting still evicts, oldest first:
   * 14 + 2 MiB crosses high (15 MiB), so 2 MiB go (hot0, hot1) to bring
   * used + want down to low (14 MiB). It stays WRITING: not evictable. */
  struct kvds_object *w = create(st, "w", 2 * MiB);
  assert_int_equal(st->ctr.evictions, 2);
  assert_int_equal(st->ctr.evicted_bytes, 2 * MiB);
  assert_present(st, "hot%u", 0, 2, 0);
  assert_present(st, "hot%u", 2, 6, 1);
  assert_int_equal(st->alloc.used, 14 * MiB);
  audit(st);

  /* Now 10 MiB cannot move (8 pinned + 2 WRITING) and 4 MiB can: 7 MiB is
   * hopeless and evicts nothing... */
  o = NULL;
  assert_int_equal(kvds_store_create(st, "seven", 5, 7 * MiB, &o),
                   KVDS_E_NOSPACE);
  assert_null(o);
  assert_int_equal(st->ctr.evictions, 2);
  assert_present(st, "hot%u", 2, 6, 1);
  assert_int_equal(st->alloc.used, 14 * MiB);

  /* ...while 6 MiB fits exactly once all four evictable objects are gone. */
  o = create(st, "six", 6 * MiB);
  assert_int_equal(st->ctr.evictions, 6);
  assert_int_equal(st->ctr.evicted_bytes, 6 * MiB);
  assert_present(st, "hot%u", 0, 6, 0);
  assert_ptr_equal(find(st, "pinned"), pinned);
  assert_ptr_equal(find(st, "w"), w);
  assert_ptr_equal(find(st, "six"), o);
  assert_int_equal(st->alloc.used, BIG_POOL_SIZE);
  assert_int_equal(st->lru.count, 0);
  audit(st);

  kvds_store_seal(st, w, 1);
  kvds_store_seal(st, o, 2);
  kvds_store_unpin(st, pinned);
  audit(st);
}

/* The bound counts only what is evictable right now: an object that gets
 * unpinned becomes part of it, one that gets pinned stops being part of it,
 * and a deleted-but-pinned object (an orphan) never is. */
static void test_hopeless_create_tracks_pins(void **state) {
  struct fx *f = *state;
  struct kvds_evict_policy p = {.high_watermark = 0.9375,
                                .eviction_ratio = 0.0625};
  assert_int_equal(kvds_store_init(&f->st, &f->pool, &p, 0, on_wake, f), 0);
  f->open = 1;
  struct kvds_store *st = &f->st;
  struct kvds_object *a, *b, *o = NULL;

  a = put(st, "a", 6 * MiB);
  b = put(st, "b", 6 * MiB);
  assert_ptr_equal(get(st, "a"), a);
  assert_ptr_equal(get(st, "b"), b);
  /* 12 MiB pinned: 5 MiB can never fit. */
  assert_int_equal(kvds_store_create(st, "x", 1, 5 * MiB, &o), KVDS_E_NOSPACE);
  assert_int_equal(st->ctr.evictions, 0);

  /* b unpinned: 10 MiB could be had, so 5 MiB evicts b and fits. */
  kvds_store_unpin(st, b);
  o = create(st, "x", 5 * MiB);
  assert_int_equal(st->ctr.evictions, 1);
  assert_null(find(st, "b"));
  kvds_store_seal(st, o, 3);

  /* a deleted while pinned: still occupies 6 MiB that eviction cannot
   * free; x (5 MiB) is evictable, so 10 MiB fits but 11 MiB does not. */
  assert_int_equal(kvds_store_delete(st, "a", 1), 0);
  o = NULL;
  assert_int_equal(kvds_store_create(st, "y", 1, 11 * MiB, &o), KVDS_E_NOSPACE);
  assert_int_equal(st->ctr.evictions, 1);
  assert_non_null(find(st, "x"));
  o = create(st, "y", 10 * MiB);
  assert_int_equal(st->ctr.evictions, 2);
  assert_null(find(st, "x"));
  kvds_store_seal(st, o, 4);
  kvds_store_unpin(st, a); /* the orphan goes now */
  assert_int_equal(st->alloc.used, 10 * MiB);
  audit(st);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define TB(fn) cmocka_unit_test_setup_teardown(fn, setup_big, teardown)

/* ---- the disk tier's marks (ondisk, io) ------------------------------ */

static int notified_gone;
static void on_notify(const uint8_t *key, uint32_t klen, int sealed, void *ud) {
  (void)key;
  (void)klen;
  (void)ud;
  notified_gone += sealed == 0;
}

/* Same pool and watermarks as test_evict_order. An object being written out
 * (io) is skipped by eviction and survives its delete until io_done; one
 * with a disk copy (ondisk) is evicted without telling anyone it is gone;
 * with spill set, one evicted with no copy is counted. */
static void test_disk_marks(void **state) {
  struct fx *f = *state;
  struct kvds_store *st = open_store(f, 0.75, 0.25, 0);
  struct kvds_object *obj[12];
  char k[32];
  kvds_store_set_notify(st, on_notify, NULL);
  st->spill = 1;
  notified_gone = 0;
  for (unsigned i = 0; i < 12; i++) {
    keyname(k, sizeof k, i);
    obj[i] = put(st, k, 256 * KiB);
  }
  /* with spill set the dirty list follows the LRU, oldest first */
  assert_int_equal(st->dirty.count, 12);
  assert_ptr_equal(kvds_store_dirty_oldest(st), obj[0]);
  obj[0]->io = 1; /* the oldest is being written out: not offered */
  assert_ptr_equal(kvds_store_dirty_oldest(st), obj[1]);
  assert_ptr_equal(kvds_store_dirty_next(st, obj[1]), obj[2]);
  kvds_store_set_ondisk(st, obj[1], 1); /* the next has a copy on disk */
  assert_int_equal(st->dirty.count, 11);
  assert_ptr_equal(kvds_store_dirty_oldest(st), obj[2]);
  /* Needs five evictions: key-1..key-5 (key-0 skipped). */
  put(st, "new", 200 * KiB);
  assert_int_equal(st->ctr.evictions, 5);
  assert_ptr_equal(find(st, "key-0"), obj[0]);
  assert_null(find(st, "key-1"));
  assert_null(find(st, "key-5"));
  assert_int_equal(notified_gone, 4);             /* not key-1 */
  assert_int_equal(st->ctr.evicted_unspilled, 4); /* key-2..key-5 */
  /* Deleted while written out: unindexed at once, freed at io_done. */
  uint64_t used = st->alloc.used;
  assert_int_equal(kvds_store_delete(st, "key-0", 5), 0);
  assert_null(find(st, "key-0"));
  assert_int_equal(st->alloc.used, used); /* still allocated */
  assert_int_equal(kvds_store_io_done(st, obj[0]), 1);
  assert_int_equal(st->alloc.used, used - 256 * KiB);
  /* evicted, deleted: off the dirty list too */
  assert_int_equal(st->dirty.count, 12 - 5 - 1 + 1); /* + "new" */
  /* a copy gone: back on the dirty list; pinned: off it */
  kvds_store_set_ondisk(st, obj[7], 1);
  assert_int_equal(st->dirty.count, 6);
  kvds_store_set_ondisk(st, obj[7], 0);
  assert_int_equal(st->dirty.count, 7);
  kvds_store_pin(st, obj[7]);
  assert_int_equal(st->dirty.count, 6);
  kvds_store_unpin(st, obj[7]);
  assert_int_equal(st->dirty.count, 7);
  /* io_done of a live object: nothing else changes. */
  obj[6]->io = 1;
  assert_int_equal(kvds_store_io_done(st, obj[6]), 0);
  assert_ptr_equal(find(st, "key-6"), obj[6]);
  kvds_store_set_notify(st, NULL, NULL);
  audit(st);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_disk_marks, setup, teardown),
      T(test_init),
      T(test_create_seal_get),
      T(test_pin_writing),
      T(test_create_errors),
      T(test_create_enomem),
      T(test_duplicate),
      T(test_delete),
      T(test_delete_pinned),
      T(test_abort),
      T(test_evict_order),
      T(test_evict_exact_boundary),
      T(test_evict_stream),
      T(test_nospace),
      T(test_waiters),
      T(test_wait_remove),
      TB(test_hopeless_create_keeps_objects),
      TB(test_hopeless_create_tracks_pins),
      T(test_fini_empty),
      /* Last: under ASan the first fails by aborting the process. */
      T(test_fini_deleted_pinned),
      T(test_fini_live_objects),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
