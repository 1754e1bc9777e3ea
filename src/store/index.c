/* index.c — chained hash index with full rehash on growth. */
#include "store/index.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

uint64_t kvds_index_hash(const void *key, size_t klen) {
  return XXH3_64bits(key, klen);
}

int kvds_index_init(struct kvds_index *ix, unsigned log2_buckets) {
  uint64_t n = 1ull << log2_buckets;
  ix->buckets = calloc(n, sizeof *ix->buckets);
  if (!ix->buckets)
    return -ENOMEM;
  ix->mask = n - 1;
  ix->count = 0;
  return 0;
}

void kvds_index_fini(struct kvds_index *ix) {
  free(ix->buckets);
  ix->buckets = NULL;
  ix->mask = 0;
  ix->count = 0;
}

struct kvds_index_node *kvds_index_find(const struct kvds_index *ix,
                                        const void *key, size_t klen,
                                        uint64_t hash) {
  for (struct kvds_index_node *n = ix->buckets[hash & ix->mask]; n;
       n = n->next) {
    if (n->hash == hash && n->klen == klen && memcmp(n->key, key, klen) == 0)
      return n;
  }
  return NULL;
}

static void grow(struct kvds_index *ix) {
  uint64_t nb = (ix->mask + 1) * 2;
  struct kvds_index_node **b = calloc(nb, sizeof *b);
  if (!b)
    return; /* keep the old table: correct, only slower */
  for (uint64_t i = 0; i <= ix->mask; i++) {
    struct kvds_index_node *n = ix->buckets[i], *next;
    for (; n; n = next) {
      next = n->next;
      uint64_t j = n->hash & (nb - 1);
      n->next = b[j];
      b[j] = n;
    }
  }
  free(ix->buckets);
  ix->buckets = b;
  ix->mask = nb - 1;
}

void kvds_index_insert(struct kvds_index *ix, struct kvds_index_node *n) {
  if (ix->count >= ix->mask + 1)
    grow(ix);
  struct kvds_index_node **head = &ix->buckets[n->hash & ix->mask];
  n->next = *head;
  *head = n;
  ix->count++;
}

void kvds_index_remove(struct kvds_index *ix, struct kvds_index_node *n) {
  struct kvds_index_node **p = &ix->buckets[n->hash & ix->mask];
  while (*p && *p != n)
    p = &(*p)->next;
  if (*p) {
    *p = n->next;
    n->next = NULL;
    ix->count--;
  }
}

int kvds_index_foreach(const struct kvds_index *ix,
                       int (*fn)(struct kvds_index_node *n, void *arg),
                       void *arg) {
  for (uint64_t i = 0; i <= ix->mask; i++) {
    for (struct kvds_index_node *n = ix->buckets[i]; n; n = n->next) {
      int r = fn(n, arg);
      if (r)
        return r;
    }
  }
  return 0;
}
