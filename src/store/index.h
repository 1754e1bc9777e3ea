/*
 * index.h — hash index of keys (intrusive, chained, power-of-two buckets).
 *
 * Nodes are embedded in the caller's objects; the index never allocates or
 * frees them. Keys are binary-safe; the node points at key bytes owned by the
 * object. Not thread-safe: the owner serialises calls.
 */
#ifndef KVDS_INDEX_H
#define KVDS_INDEX_H

#include <stddef.h>
#include <stdint.h>

struct kvds_index_node {
  struct kvds_index_node *next;
  uint64_t hash;
  const uint8_t *key;
  uint32_t klen;
};

struct kvds_index {
  struct kvds_index_node **buckets;
  uint64_t mask; /* buckets - 1 */
  uint64_t count;
};

/* xxh3 of a key; what nodes must carry in ->hash. */
uint64_t kvds_index_hash(const void *key, size_t klen);

/* Starts with 2^log2_buckets buckets. Returns 0 or -ENOMEM. */
int kvds_index_init(struct kvds_index *ix, unsigned log2_buckets);
/* Frees the bucket array (not the nodes). Safe on a zeroed struct. */
void kvds_index_fini(struct kvds_index *ix);

/* Finds the node with this key, or NULL. */
struct kvds_index_node *kvds_index_find(const struct kvds_index *ix,
                                        const void *key, size_t klen,
                                        uint64_t hash);

/* Inserts n (n->hash, key, klen set; key not present — caller checked).
 * Grows the table when the load factor passes 1; if growing fails the insert
 * still succeeds (chains get longer). */
void kvds_index_insert(struct kvds_index *ix, struct kvds_index_node *n);

/* Removes n, which must be in the index. */
void kvds_index_remove(struct kvds_index *ix, struct kvds_index_node *n);

/* Calls fn for every node; fn must not modify the index. Stops early and
 * returns fn's value when it is non-zero. */
int kvds_index_foreach(const struct kvds_index *ix,
                       int (*fn)(struct kvds_index_node *n, void *arg),
                       void *arg);

#endif
