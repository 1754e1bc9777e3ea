/*
 * internal.h — what the disk tier's files share (tier.c: life cycle,
 * threads and queue; read.c: the resolver; write.c: write-through and
 * spills). Not for the rest of the worker (tier.h).
 */
#ifndef KVDS_WORKER_TIER_INTERNAL_H
#define KVDS_WORKER_TIER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "disk/disk.h"
#include "worker/resolver.h"
#include "worker/tier/tier.h"

struct kvds_server;
struct retry;

/* A unit of work for the tier's threads. */
struct tjob {
  struct tjob *next;
  void (*run)(struct kvds_tier *t, struct tjob *j); /* frees j */
};

struct kvds_tier {
  struct kvds_server *s;
  struct kvds_disk *disk;
  int policy; /* enum kvds_disk_policy */
  int probing;
  struct kvds_resolver res;
  pthread_mutex_t lock;       /* the queue, the retry list, spill state */
  pthread_cond_t cv;          /* jobs queued, or stopping */
  pthread_cond_t mcv;         /* the maintenance thread: something to do */
  struct tjob *head, *tail;   /* reads, writes, spills */
  struct tjob *lhead, *ltail; /* looks again for waiting GETs: after those */
  int stopping;
  pthread_t *threads;
  int nthreads, started;
  atomic_int ready; /* the store is set up: the disk's eviction hook may
                       look at it */
  pthread_t maint;
  int maint_started;
  struct retry *retries;         /* GETs waiting for a key to appear (lock) */
  int spills_inflight;           /* lock */
  uint64_t spill_pause_until_us; /* lock: after a failed spill */
  atomic_uint_fast64_t spills;
  uint64_t err_log_us; /* lock: last logged disk error */
};

/* Queues j for the tier's threads (lock not held); `low`: behind every
 * other job. 0, or KVDS_E_SHUTDOWN (j not taken). */
int kvds__tier_queue(struct kvds_tier *t, struct tjob *j, int low);
/* The disk no longer has key (evicted for capacity, found corrupt): a
 * sealed DRAM copy must be copied out again before its eviction (or is
 * lost then); with none, this worker no longer holds the key (the
 * cluster is told). A promotion in flight checks the index before its
 * seal. Store lock not held. */
void kvds__tier_lost(struct kvds_server *s, const uint8_t *key, uint32_t klen);
/* Logs a disk error at most every 10 s (lock not held). */
void kvds__tier_log_error(struct kvds_tier *t, const char *what,
                          const uint8_t *key, uint32_t klen, int rc);

/* read.c */
extern const struct kvds_resolver_ops kvds__tier_ops;
/* The maintenance thread's share of read.c: GETs whose keys did not turn
 * up yet (probe again, or fail them at the client's deadline). */
void kvds__tier_retries_run(struct kvds_tier *t, uint64_t now_us);
/* Drops every retry (stopping). */
void kvds__tier_retries_drop(struct kvds_tier *t);

/* write.c: picks objects to copy out before their eviction (spill); lock
 * not held. */
void kvds__tier_spill_run(struct kvds_tier *t);

#endif
