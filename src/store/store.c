/* store.c — object lifecycle, pins, eviction and waiters. */
#include "store/store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kvds/kvds.h"

int kvds_store_init(struct kvds_store *st, struct kvds_pool *pool,
                    const struct kvds_evict_policy *policy, uint64_t max_object,
                    kvds_store_wake_fn wake, void *wake_ud) {
  int rc;
  memset(st, 0, sizeof *st);
  if ((rc = kvds_evict_policy_check(policy)))
    return rc;
  st->policy = *policy;
  st->pool = pool;
  st->wake = wake;
  st->wake_ud = wake_ud;
  if ((rc = kvds_alloc_init(&st->alloc, pool->data_offset, pool->data_size)))
    return rc;
  st->max_object = max_object && max_object < st->alloc.capacity
                       ? max_object
                       : st->alloc.capacity;
  if ((rc = kvds_index_init(&st->index, 12))) {
    kvds_alloc_fini(&st->alloc);
    return rc;
  }
  kvds_lru_init(&st->lru);
  kvds_lru_init(&st->orphans);
  kvds_lru_init(&st->dirty);
  pthread_mutex_init(&st->lock, NULL);
  return 0;
}

void kvds_store_fini(struct kvds_store *st) {
  /* Walk the chains by hand: the objects are freed as we go. */
  for (uint64_t i = 0; st->index.buckets && i <= st->index.mask; i++) {
    struct kvds_index_node *n = st->index.buckets[i], *next;
    for (; n; n = next) {
      next = n->next;
      free(kvds_store_obj(n));
    }
  }
  struct kvds_lru_node *o;
  while ((o = kvds_lru_oldest(&st->orphans))) {
    kvds_lru_remove(&st->orphans, o);
    free((char *)o - offsetof(struct kvds_object, lru));
  }
  kvds_index_fini(&st->index);
  kvds_alloc_fini(&st->alloc);
  pthread_mutex_destroy(&st->lock);
}

/* The LRU holds exactly the evictable objects; lru_bytes is their size in
 * the allocator, so used - lru_bytes is what eviction can never free. */
static void lru_add(struct kvds_store *st, struct kvds_object *o) {
  kvds_lru_push(&st->lru, &o->lru);
  if (st->spill && !o->ondisk)
    kvds_lru_push(&st->dirty, &o->dlru);
  st->lru_bytes += kvds_alloc_rounded(o->size);
}

static void lru_del(struct kvds_store *st, struct kvds_object *o) {
  if (!kvds_lru_linked(&o->lru))
    return;
  kvds_lru_remove(&st->lru, &o->lru);
  kvds_lru_remove(&st->dirty, &o->dlru);
  st->lru_bytes -= kvds_alloc_rounded(o->size);
}

static void obj_free(struct kvds_store *st, struct kvds_object *o) {
  kvds_alloc_free(&st->alloc, o->ahandle);
  free(o);
}

/* Unlinks an object from the index and the LRU; frees it unless pinned or
 * being written out. An evicted object with a copy on disk stays readable
 * here: no notify then. */
static void obj_unlink(struct kvds_store *st, struct kvds_object *o,
                       int evicted) {
  if (o->indexed && o->state == KVDS_STATE_SEALED && st->notify &&
      !(evicted && o->ondisk))
    st->notify(o->key, o->inode.klen, 0, st->notify_ud);
  if (o->indexed) {
    kvds_index_remove(&st->index, &o->inode);
    o->indexed = 0;
  }
  lru_del(st, o);
  if (o->pins == 0 && !o->io)
    obj_free(st, o);
  else
    kvds_lru_push(&st->orphans, &o->lru);
}

/* The least recently used object not being written out (those are few:
 * the disk tier's writes in flight). */
static struct kvds_object *evict_victim(struct kvds_store *st) {
  struct kvds_lru_node *n = kvds_lru_oldest(&st->lru);
  for (; n && n != &st->lru.head; n = n->prev) {
    struct kvds_object *o =
        (struct kvds_object *)((char *)n - offsetof(struct kvds_object, lru));
    if (!o->io)
      return o;
  }
  return NULL;
}

static int evict_one(struct kvds_store *st) {
  struct kvds_object *o = evict_victim(st);
  if (!o)
    return 0;
  lru_del(st, o);
  st->ctr.evictions++;
  st->ctr.evicted_bytes += o->size;
  if (st->spill && !o->ondisk)
    st->ctr.evicted_unspilled++;
  obj_unlink(st, o, 1);
  return 1;
}

static int reserve(struct kvds_store *st, uint64_t size, uint64_t *off,
                   uint32_t *h) {
  uint64_t want = kvds_alloc_rounded(size);
  /* Cannot fit even if every evictable object went: fail before evicting
   * anything (pinned and WRITING objects stay where they are). */
  if (want > st->alloc.capacity - (st->alloc.used - st->lru_bytes))
    return KVDS_E_NOSPACE;
  uint64_t need = kvds_evict_bytes_needed(&st->policy, st->alloc.capacity,
                                          st->alloc.used, want);
  if (need) {
    uint64_t target = st->alloc.used > need ? st->alloc.used - need : 0;
    while (st->alloc.used > target && evict_one(st))
      ;
  }
  for (;;) {
    int rc = kvds_alloc_alloc(&st->alloc, size, off, h);
    if (rc != KVDS_E_NOSPACE)
      return rc;
    /* Fragmented or full: keep evicting until it fits or nothing is left. */
    if (!evict_one(st))
      return KVDS_E_NOSPACE;
  }
}

int kvds_store_create(struct kvds_store *st, const void *key, size_t klen,
                      uint64_t size, struct kvds_object **out) {
  if (klen == 0 || klen > KVDS_KEY_MAX)
    return KVDS_E_KEYLEN;
  if (size == 0)
    return KVDS_E_INVAL;
  if (size > st->max_object)
    return KVDS_E_TOOBIG;
  uint64_t hash = kvds_index_hash(key, klen);
  if (kvds_index_find(&st->index, key, klen, hash))
    return KVDS_E_EXISTS;
  struct kvds_object *o = malloc(sizeof *o + klen);
  if (!o)
    return -ENOMEM;
  int rc = reserve(st, size, &o->off, &o->ahandle);
  if (rc) {
    if (rc == KVDS_E_NOSPACE)
      st->ctr.nospace++;
    free(o);
    return rc;
  }
  memcpy(o->key, key, klen);
  o->inode = (struct kvds_index_node){
      .next = NULL, .hash = hash, .key = o->key, .klen = (uint32_t)klen};
  o->lru.prev = o->lru.next = NULL;
  o->size = size;
  o->checksum = 0;
  o->ctime_us = o->atime_us = kvds_wall_us();
  o->pins = 0;
  o->state = KVDS_STATE_WRITING;
  o->indexed = 1;
  o->replica = 0;
  o->ondisk = 0;
  o->io = 0;
  o->promo = 0;
  o->doomed = 0;
  o->dlru.prev = o->dlru.next = NULL;
  kvds_index_insert(&st->index, &o->inode);
  st->ctr.writing_objects++;
  *out = o;
  return 0;
}

static int key_eq(const struct kvds_waiter *w, const struct kvds_object *o) {
  return w->hash == o->inode.hash && w->klen == o->inode.klen &&
         memcmp(w->key, o->key, w->klen) == 0;
}

void kvds_store_seal(struct kvds_store *st, struct kvds_object *o,
                     uint64_t checksum) {
  o->checksum = checksum;
  o->state = KVDS_STATE_SEALED;
  st->ctr.writing_objects--;
  st->ctr.puts++;
  if (o->pins == 0)
    lru_add(st, o);
  if (st->notify)
    st->notify(o->key, o->inode.klen, o->replica ? 2 : 1, st->notify_ud);
  if (!st->n_waiters)
    return;
  struct kvds_waiter **b = &st->waits[o->inode.hash % KVDS_STORE_WAIT_BUCKETS];
  struct kvds_waiter *w = *b, *next;
  for (; w; w = next) {
    next = w->next;
    if (!key_eq(w, o))
      continue;
    kvds_store_wait_remove(st, w);
    kvds_store_pin(st, o);
    st->ctr.hits++;
    st->wake(w, o, st->wake_ud);
  }
}

void kvds_store_abort(struct kvds_store *st, struct kvds_object *o) {
  st->ctr.writing_objects--;
  obj_unlink(st, o, 0);
}

struct kvds_object *kvds_store_find(struct kvds_store *st, const void *key,
                                    size_t klen) {
  if (klen == 0 || klen > KVDS_KEY_MAX)
    return NULL;
  struct kvds_index_node *n =
      kvds_index_find(&st->index, key, klen, kvds_index_hash(key, klen));
  return n ? kvds_store_obj(n) : NULL;
}

struct kvds_object *kvds_store_get(struct kvds_store *st, const void *key,
                                   size_t klen) {
  struct kvds_object *o = kvds_store_find(st, key, klen);
  if (!o || o->state != KVDS_STATE_SEALED)
    return NULL;
  o->atime_us = kvds_wall_us();
  kvds_store_pin(st, o);
  st->ctr.hits++;
  return o;
}

void kvds_store_pin(struct kvds_store *st, struct kvds_object *o) {
  if (o->pins++ == 0) {
    lru_del(st, o);
    st->ctr.pinned_objects++;
  }
}

void kvds_store_unpin(struct kvds_store *st, struct kvds_object *o) {
  if (--o->pins > 0)
    return;
  st->ctr.pinned_objects--;
  if (!o->indexed) {
    if (!o->io) { /* else kvds_store_io_done frees it */
      kvds_lru_remove(&st->orphans, &o->lru);
      obj_free(st, o);
    }
  } else if (o->state == KVDS_STATE_SEALED)
    lru_add(st, o);
}

int kvds_store_delete(struct kvds_store *st, const void *key, size_t klen) {
  if (klen == 0 || klen > KVDS_KEY_MAX)
    return KVDS_E_KEYLEN;
  struct kvds_object *o = kvds_store_find(st, key, klen);
  if (!o)
    return KVDS_E_NOTFOUND;
  if (o->state != KVDS_STATE_SEALED)
    return KVDS_E_STATE;
  obj_unlink(st, o, 0);
  return 0;
}

void kvds_store_set_ondisk(struct kvds_store *st, struct kvds_object *o,
                           int ondisk) {
  o->ondisk = (uint8_t)(ondisk != 0);
  if (o->ondisk)
    kvds_lru_remove(&st->dirty, &o->dlru);
  else if (st->spill && kvds_lru_linked(&o->lru) && !kvds_lru_linked(&o->dlru))
    kvds_lru_push(&st->dirty, &o->dlru);
}

static struct kvds_object *dirty_obj(struct kvds_store *st,
                                     struct kvds_lru_node *n) {
  for (; n && n != &st->dirty.head; n = n->prev) {
    struct kvds_object *o =
        (struct kvds_object *)((char *)n - offsetof(struct kvds_object, dlru));
    if (!o->io)
      return o;
  }
  return NULL;
}

struct kvds_object *kvds_store_dirty_oldest(struct kvds_store *st) {
  return dirty_obj(st, kvds_lru_oldest(&st->dirty));
}

struct kvds_object *kvds_store_dirty_next(struct kvds_store *st,
                                          struct kvds_object *o) {
  return dirty_obj(st, o->dlru.prev);
}

int kvds_store_io_done(struct kvds_store *st, struct kvds_object *o) {
  o->io = 0;
  if (o->indexed)
    return 0;
  if (o->pins == 0) {
    kvds_lru_remove(&st->orphans, &o->lru);
    obj_free(st, o);
  }
  return 1;
}

void kvds_store_wait_add(struct kvds_store *st, struct kvds_waiter *w) {
  struct kvds_waiter **b = &st->waits[w->hash % KVDS_STORE_WAIT_BUCKETS];
  w->prev = NULL;
  w->next = *b;
  if (*b)
    (*b)->prev = w;
  *b = w;
  w->armed = 1;
  st->n_waiters++;
}

void kvds_store_wait_remove(struct kvds_store *st, struct kvds_waiter *w) {
  if (!w->armed)
    return;
  if (w->prev)
    w->prev->next = w->next;
  else
    st->waits[w->hash % KVDS_STORE_WAIT_BUCKETS] = w->next;
  if (w->next)
    w->next->prev = w->prev;
  w->prev = w->next = NULL;
  w->armed = 0;
  st->n_waiters--;
}

void kvds_store_set_notify(struct kvds_store *st, kvds_store_notify_fn fn,
                           void *ud) {
  st->notify = fn;
  st->notify_ud = ud;
}

struct foreach_ctx {
  void (*fn)(const struct kvds_object *o, void *ud);
  void *ud;
};

static int foreach_sealed(struct kvds_index_node *n, void *arg) {
  struct foreach_ctx *fc = arg;
  struct kvds_object *o = kvds_store_obj(n);
  if (o->state == KVDS_STATE_SEALED)
    fc->fn(o, fc->ud);
  return 0;
}

void kvds_store_foreach_sealed(struct kvds_store *st,
                               void (*fn)(const struct kvds_object *o,
                                          void *ud),
                               void *ud) {
  struct foreach_ctx fc = {fn, ud};
  kvds_index_foreach(&st->index, foreach_sealed, &fc);
}
