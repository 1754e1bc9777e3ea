/*
 * resolver.h — the seam between the worker's request handling and whatever
 * can produce keys this worker does not hold: "who can produce key K?".
 *
 * A resolver is a `static const struct kvds_resolver_ops` table plus its
 * state, set on the server before it serves (s->resolver): the cluster
 * (worker/cluster/) when the worker is a member of one, nothing on an
 * embedded single worker. Every call is made with no lock held; the
 * resolver does its work off the I/O threads and reports through wait.h.
 *
 * Where a new one goes: a resolver that answers misses from somewhere else
 * (the disk tier, another transport's directory) implements these ops in
 * its own directory and is set in kvds_worker_run where the cluster's is;
 * tests run a worker with a fake one (tests/unit/test_resolver.c) through
 * kvds__worker_run_with.
 */
#ifndef KVDS_WORKER_RESOLVER_H
#define KVDS_WORKER_RESOLVER_H

#include <stdint.h>

#include "proto/proto.h"

struct kvds_resolver;
struct kvds_wait;
struct reply;

/* A batch of keys a request missed here. */
struct kvds_miss {
  struct kvds_wait *wait; /* its keys and local answers; held by the caller
                             for the duration of submit only */
  const uint8_t *hint;    /* the worker the client named (GET), or NULL */
  uint32_t hlen;
  uint64_t deadline_us; /* settle every key by then (monotonic) */
  int wait_ms;          /* GET: how long the client waits for a key that
                           nobody holds yet (0: answer at once) */
  /* The resolver to hand on to what this one cannot produce (the disk
   * tier's next is the cluster when the request may go remote), or NULL:
   * then this one settles every key itself. */
  const struct kvds_resolver *next;
};

struct kvds_resolver_ops {
  const char *name;
  /* 1 when misses should be asked of it now (e.g. a cluster with another
   * live member). Cheap, any thread. */
  int (*active)(void *self);
  /* Takes on the open keys of m->wait (kvds_wait_open), holding the wait
   * (kvds_wait_hold) for as long as it works on them, and settles each
   * through wait.h by the deadline. Returns 0, or an error when it took
   * nothing (the wait then just runs to its deadline). */
  int (*submit)(void *self, const struct kvds_miss *m);
  /* ANNOUNCE from member `owner` (epoch): it holds (items[i].a = 1) or no
   * longer holds (0) keys[i]. KVDS_E_STATE when the owner is not live in
   * this resolver's view. NULL: a resolver without a directory (the
   * ANNOUNCE is refused with KVDS_E_STATE). */
  int (*announce)(void *self, const char *owner, uint64_t epoch, uint32_t n,
                  const struct kvds_proto_item *items,
                  const uint8_t *const *keys);
  /* LOCATE answered from what this worker knows alone: adds to r, per key,
   * an item (status, a = number of owners) and an item per owner (key = its
   * id, a = its epoch). NULL: this worker's store alone answers. */
  void (*locate_local)(void *self, struct reply *r, uint32_t n,
                       const uint8_t *const *keys, const uint32_t *klens);
  /* Stops: drops every hold it has on waits and takes no more. Called
   * once, after the I/O threads stopped and before their wait boxes go. */
  void (*stop)(void *self);
};

struct kvds_resolver {
  const struct kvds_resolver_ops *ops; /* NULL: none */
  void *self;
};

static inline int kvds_resolver_active(const struct kvds_resolver *r) {
  return r->ops && r->ops->active(r->self);
}

static inline int kvds_resolver_submit(const struct kvds_resolver *r,
                                       const struct kvds_miss *m) {
  return r->ops ? r->ops->submit(r->self, m) : KVDS_E_STATE;
}

static inline void kvds_resolver_stop(struct kvds_resolver *r) {
  if (r->ops && r->ops->stop)
    r->ops->stop(r->self);
  *r = (struct kvds_resolver){NULL, NULL};
}

struct kvds_worker_config;
/* kvds_worker_run (worker.h) with `resolver` (copied; NULL: none) in place
 * of the cluster's: a test's fake one. */
int kvds__worker_run_with(const struct kvds_worker_config *cfg,
                          const struct kvds_resolver *resolver);

#endif
