/*
 * view.h — a snapshot of the cluster's live members and the pure questions
 * asked of it: which member is a key's home (rendezvous hashing over the
 * members, hrw.h; keys hash with kvds_checksum), whether an owner is live,
 * whether a key's home moved between two views, and which of a key's
 * owners to pull from next. No locks, no I/O; unit-tested alone
 * (tests/unit/test_view.c).
 */
#ifndef KVDS_CLUSTER_VIEW_H
#define KVDS_CLUSTER_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include "cluster/directory.h"

/* A member. id is borrowed (it must outlive the view); ud is the caller's
 * (the worker: its peer, NULL for itself). */
struct kvds_view_member {
  void *ud;
  const char *id;
  uint64_t epoch; /* 0: unknown (a static peer) */
};

/* Members and their rendezvous seeds (parallel arrays, one allocation). */
struct kvds_view {
  struct kvds_view_member *m;
  uint64_t *seeds;
  size_t n;
};

/* Room for cap members, none yet. 0 or -ENOMEM (v then empty). */
int kvds_view_init(struct kvds_view *v, size_t cap);
/* Frees the arrays (not the ids); v becomes empty. */
void kvds_view_free(struct kvds_view *v);
/* out = a copy of v (ids still borrowed). 0 or -ENOMEM. */
int kvds_view_copy(struct kvds_view *out, const struct kvds_view *v);
/* Appends a member; the caller made room for it (kvds_view_init). */
void kvds_view_add(struct kvds_view *v, void *ud, const char *id,
                   uint64_t epoch);

/* Index in v (n >= 1) of the home of key[klen]. */
size_t kvds_view_home(const struct kvds_view *v, const uint8_t *key,
                      size_t klen);
/* The k best members for key[klen] (rendezvous order; the first is its
 * home): their indexes in v into out[k]. Returns how many (min(k, n)). */
size_t kvds_view_top(const struct kvds_view *v, const uint8_t *key, size_t klen,
                     size_t *out, size_t k);
/* Index in v of member id, or -1. */
long kvds_view_find(const struct kvds_view *v, const char *id);
/* 1 if (id, epoch) is a member of v (an epoch of 0 on either side — a
 * static peer — matches any). */
int kvds_view_has(const struct kvds_view *v, const char *id, uint64_t epoch);
/* 1 if the key's home in nv is another member (id or epoch) than in old. */
int kvds_view_home_moved(const struct kvds_view *old,
                         const struct kvds_view *nv, const uint8_t *key,
                         size_t klen);
/* The index in v of the first of owners[0..n) (best first) to pull from: a
 * member of v (kvds_view_has), not `self`, whose ud is not among
 * tried[0..ntried). -1 if there is none. */
long kvds_view_next_owner(const struct kvds_view *v, const char *self,
                          const struct kvds_dir_owner *owners, size_t n,
                          void *const *tried, size_t ntried);

#endif
