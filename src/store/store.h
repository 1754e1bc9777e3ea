/*
 * store.h — the object store of one worker: objects in the pool, their index,
 * two-phase lifecycle, pins, eviction and waiters.
 *
 * Lifecycle: create -> WRITING (only its writer may write) -> seal -> SEALED
 * (checksum fixed, waiters woken). abort frees a WRITING object. A pinned
 * object is never evicted or freed: delete unlinks it from the index at once
 * and the last unpin frees it.
 *
 * Thread-safety: none inside. Every call must be made with `lock` held; the
 * worker takes it around each batch of store calls. Objects stay valid while
 * the caller holds a pin or is their writer.
 */
#ifndef KVDS_STORE_H
#define KVDS_STORE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "pool/alloc.h"
#include "pool/pool.h"
#include "store/evict.h"
#include "store/index.h"

struct kvds_object {
  struct kvds_index_node inode; /* key and hash */
  struct kvds_lru_node lru;     /* in st->lru iff sealed, unpinned, indexed;
                                   in st->orphans iff deleted while pinned */
  struct kvds_lru_node dlru;    /* in st->dirty iff in st->lru, st->spill
                                   and no copy on disk (same order) */
  uint64_t off;                 /* offset of the value in the pool */
  uint64_t size;                /* value bytes */
  uint64_t checksum;            /* xxh3-64, valid once sealed */
  uint64_t ctime_us, atime_us;  /* wall clock */
  uint32_t ahandle;             /* allocator handle */
  uint32_t pins;
  uint8_t state;   /* KVDS_STATE_WRITING / KVDS_STATE_SEALED */
  uint8_t indexed; /* 1 while reachable by key */
  uint8_t replica; /* a copy pulled from a peer (set before the seal) */
  uint8_t ondisk;  /* the disk tier has a copy: evicting it loses nothing
                      (the key stays readable here, no notify) */
  uint8_t io;      /* the disk tier is writing it out: not evicted, and not
                      freed before kvds_store_io_done */
  uint8_t promo;   /* WRITING: the disk tier is reading it in */
  uint8_t doomed;  /* a promotion deleted meanwhile: aborted, not sealed */
  uint8_t key[];   /* klen bytes */
};

/* A registration for "wake me when this key is sealed". The store does not
 * own it; the caller keeps it alive until it is woken or removed. */
struct kvds_waiter {
  struct kvds_waiter *prev, *next; /* in the wait bucket */
  uint64_t hash;
  const uint8_t *key; /* owned by the caller */
  uint32_t klen;
  uint8_t armed; /* 1 while registered */
  void *req;     /* caller's */
  uint32_t idx;  /* caller's */
};

/* Called (with the lock held) when a waited-for key is sealed. The waiter is
 * already removed. The callback receives a pin on obj that it now owns. */
typedef void (*kvds_store_wake_fn)(struct kvds_waiter *w,
                                   struct kvds_object *obj, void *ud);

/* Called (with the lock held) when a key becomes readable (sealed = 1 for
 * an object written here, 2 for a replica: o->replica was set) or a sealed
 * key stops being readable here (sealed = 0: deleted, or evicted with no
 * copy on disk — an object with o->ondisk stays readable after its
 * eviction, through the disk tier). The
 * cluster uses it to tell the keys' homes and to queue copies; it must not
 * call into the store. */
typedef void (*kvds_store_notify_fn)(const uint8_t *key, uint32_t klen,
                                     int sealed, void *ud);

struct kvds_store_counters {
  uint64_t evictions, evicted_bytes, hits, misses, puts, nospace;
  uint64_t pinned_objects, writing_objects;
  uint64_t evicted_unspilled; /* with st->spill: evicted with no disk copy */
};

#define KVDS_STORE_WAIT_BUCKETS 1024

struct kvds_store {
  pthread_mutex_t lock;
  struct kvds_pool *pool; /* borrowed */
  struct kvds_alloc alloc;
  struct kvds_index index;
  struct kvds_lru lru;
  struct kvds_lru orphans; /* deleted while pinned: freed at the last unpin */
  uint64_t lru_bytes;      /* allocator bytes of the objects on the LRU */
  struct kvds_evict_policy policy;
  uint64_t max_object;
  struct kvds_waiter *waits[KVDS_STORE_WAIT_BUCKETS];
  uint64_t n_waiters;
  kvds_store_wake_fn wake;
  void *wake_ud;
  kvds_store_notify_fn notify; /* may be NULL */
  void *notify_ud;
  int spill; /* a disk tier copies objects out before eviction (counts
                evicted_unspilled, keeps `dirty`) */
  struct kvds_lru dirty; /* with spill: the evictable objects with no copy
                            on disk, least recently used first */
  struct kvds_store_counters ctr;
};

/* Sets up a store over the data area of `pool` (borrowed; must outlive the
 * store). Returns 0, KVDS_E_INVAL (policy) or -ENOMEM. */
int kvds_store_init(struct kvds_store *st, struct kvds_pool *pool,
                    const struct kvds_evict_policy *policy, uint64_t max_object,
                    kvds_store_wake_fn wake, void *wake_ud);
/* Sets (or clears, fn = NULL) the notify hook; call before the store is
 * shared or with the lock held. */
void kvds_store_set_notify(struct kvds_store *st, kvds_store_notify_fn fn,
                           void *ud);
/* Calls fn for every sealed, indexed key (lock held; fn must not call into
 * the store). */
void kvds_store_foreach_sealed(struct kvds_store *st,
                               void (*fn)(const struct kvds_object *o,
                                          void *ud),
                               void *ud);

/* Frees every object and the metadata. */
void kvds_store_fini(struct kvds_store *st);

/*
 * Creates a WRITING object of `size` bytes, evicting LRU objects first when
 * the high watermark would be crossed. *out gets the object; the caller is its
 * writer and must seal or abort it. Errors: KVDS_E_KEYLEN, KVDS_E_INVAL (size
 * 0), KVDS_E_TOOBIG (> max_object), KVDS_E_EXISTS, KVDS_E_NOSPACE, -ENOMEM.
 */
int kvds_store_create(struct kvds_store *st, const void *key, size_t klen,
                      uint64_t size, struct kvds_object **out);

/* Seals a WRITING object with its checksum and wakes its waiters. The
 * caller stops being its writer. */
void kvds_store_seal(struct kvds_store *st, struct kvds_object *o,
                     uint64_t checksum);

/* Frees a WRITING object (its writer gave up or vanished). */
void kvds_store_abort(struct kvds_store *st, struct kvds_object *o);

/* Looks up a key in any state; NULL if absent. No pin is taken. */
struct kvds_object *kvds_store_find(struct kvds_store *st, const void *key,
                                    size_t klen);

/* Finds a SEALED object, pins it and marks it used. NULL if absent or still
 * writing. Counts a hit; the caller counts misses (it may wait first). */
struct kvds_object *kvds_store_get(struct kvds_store *st, const void *key,
                                   size_t klen);

void kvds_store_pin(struct kvds_store *st, struct kvds_object *o);
/* Drops a pin; frees the object if it was deleted and this was the last. */
void kvds_store_unpin(struct kvds_store *st, struct kvds_object *o);

/* Deletes a SEALED object (KVDS_E_NOTFOUND, KVDS_E_STATE if writing). */
int kvds_store_delete(struct kvds_store *st, const void *key, size_t klen);

/* Marks whether the disk tier has a copy of o (o->ondisk), keeping the
 * dirty list. */
void kvds_store_set_ondisk(struct kvds_store *st, struct kvds_object *o,
                           int ondisk);
/* The least recently used evictable object with no copy on disk and none
 * being written (spill set), or NULL: where spilling starts. Then
 * kvds_store_dirty_next for the next one toward the recent end. */
struct kvds_object *kvds_store_dirty_oldest(struct kvds_store *st);
struct kvds_object *kvds_store_dirty_next(struct kvds_store *st,
                                          struct kvds_object *o);

/* The disk tier finished writing o out (o->io was set under the lock):
 * frees o if it was deleted meanwhile and nothing else holds it. Returns 1
 * when o was deleted while being written (the caller removes the copy it
 * made), else 0. */
int kvds_store_io_done(struct kvds_store *st, struct kvds_object *o);

/* Registers w (hash, key, klen, req, idx set by the caller). */
void kvds_store_wait_add(struct kvds_store *st, struct kvds_waiter *w);
/* Unregisters w if still armed. */
void kvds_store_wait_remove(struct kvds_store *st, struct kvds_waiter *w);

/* Pointer to an object's bytes. */
static inline uint8_t *kvds_store_data(const struct kvds_store *st,
                                       const struct kvds_object *o) {
  return (uint8_t *)kvds_pool_ptr(st->pool, o->off);
}

static inline struct kvds_object *kvds_store_obj(struct kvds_index_node *n) {
  return (struct kvds_object *)((char *)n -
                                offsetof(struct kvds_object, inode));
}

#endif
