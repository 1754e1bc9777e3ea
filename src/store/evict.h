/*
 * evict.h — eviction policy: an LRU list of evictable objects and the
 * watermark arithmetic (Mooncake's eviction_high_watermark_ratio and
 * eviction_ratio). Leaf-level: knows nothing about objects beyond the
 * embedded list node.
 *
 * The list holds exactly the objects that may be evicted now: sealed and
 * unpinned. Pinning removes an object, the last unpin puts it back at the
 * most-recently-used end, so eviction never has to skip anything.
 */
#ifndef KVDS_EVICT_H
#define KVDS_EVICT_H

#include <stddef.h>
#include <stdint.h>

struct kvds_lru_node {
  struct kvds_lru_node *prev, *next;
};

struct kvds_lru {
  struct kvds_lru_node head; /* head.next = most recent, head.prev = least */
  uint64_t count;
};

void kvds_lru_init(struct kvds_lru *l);
/* Inserts n as most recently used; n must not be in a list. */
void kvds_lru_push(struct kvds_lru *l, struct kvds_lru_node *n);
/* Removes n; a no-op if n is not in a list. */
void kvds_lru_remove(struct kvds_lru *l, struct kvds_lru_node *n);
/* Moves n (in the list) to the most recently used end. */
void kvds_lru_touch(struct kvds_lru *l, struct kvds_lru_node *n);
/* Least recently used node, or NULL when empty. */
struct kvds_lru_node *kvds_lru_oldest(const struct kvds_lru *l);
static inline int kvds_lru_linked(const struct kvds_lru_node *n) {
  return n->next != NULL;
}

struct kvds_evict_policy {
  double high_watermark; /* (0, 1]: start evicting above this share */
  double eviction_ratio; /* [0, high): evict this share below high */
};

/* 0 if 0 < high <= 1 and 0 <= ratio < high, else KVDS_E_INVAL. */
int kvds_evict_policy_check(const struct kvds_evict_policy *p);

/*
 * Bytes to evict before allocating `want` more bytes into a pool of
 * `capacity` with `used` bytes allocated: 0 while used + want stays at or
 * under high * capacity, else enough to bring used + want down to
 * (high - ratio) * capacity (never more than `used`).
 */
uint64_t kvds_evict_bytes_needed(const struct kvds_evict_policy *p,
                                 uint64_t capacity, uint64_t used,
                                 uint64_t want);

#endif
