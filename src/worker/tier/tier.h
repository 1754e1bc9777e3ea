/*
 * tier.h — the worker's disk tier (docs/tiers.md): DRAM in front of files
 * (src/disk/). What the rest of the worker calls.
 *
 * The tier is a miss resolver (resolver.h) placed in front of the
 * cluster's: a key missing from DRAM that the disk has is read straight
 * into a new pool object and sealed (which wakes the waiting request, as
 * a cluster pull does); what the disk lacks is handed on to the cluster
 * (kvds_miss.next) or settled here. Writes: `spill` copies objects out
 * ahead of their eviction (a maintenance thread picks them from the cold
 * end of the LRU), `write-through` persists every seal before the seal is
 * answered (a KVDS_WAIT_SEAL wait), `read-only` never writes. A directory
 * shared with other workers (write-through, read-only) is probed for keys
 * the index lacks before "absent" is answered.
 *
 * All disk I/O runs on the tier's threads, never on the I/O threads.
 * Locks: store.lock before the tier's and the disk index's; the tier never
 * writes or reads a file with store.lock held.
 */
#ifndef KVDS_WORKER_TIER_H
#define KVDS_WORKER_TIER_H

#include <stdint.h>

#include "worker/resolver.h"

/* A write-through seal not persisted by then is answered KVDS_E_TIMEOUT
 * (its DRAM copy stays sealed; the file may still land). */
#define KVDS_DISK_SEAL_TIMEOUT_MS 60000

struct kvds_server;
struct kvds_tier;
struct kvds_object;
struct kvds_wait;
struct kvds__stats;

/* Opens the disk (scanning it) and sets s->tier when s->cfg says --tier
 * posix (else does nothing): first thing at start-up, so that a bad
 * directory fails it at once. 0, or an error (logged with its reason). */
int kvds__tier_open(struct kvds_server *s);
/* Starts the tier's threads (the store is set up). Before the cluster
 * starts (which announces what the disk holds) and before the I/O
 * threads. 0, or an error (logged). */
int kvds__tier_start(struct kvds_server *s);
/* Stops the threads (whether or not they started; NULL s->tier: nothing),
 * dropping every hold on waits. After the I/O threads stopped, before the
 * cluster stops (the tier hands misses on to it). */
void kvds__tier_stop(struct kvds_server *s);
/* Stops (if need be) and frees the tier, closing the disk: after the
 * cluster stopped (its announcements read the disk's keys). */
void kvds__tier_free(struct kvds_server *s);

/* The tier's resolver (misses of GETs, and finds when it probes). */
const struct kvds_resolver *kvds__tier_resolver(struct kvds_tier *t);
/* 1 when the disk index has key (memory only; any lock may be held). */
int kvds__tier_has(struct kvds_tier *t, const uint8_t *key, uint32_t klen);
/* 1 when misses must look for files the index lacks (a shared directory:
 * write-through or read-only). */
int kvds__tier_probes(const struct kvds_tier *t);
/* 1 when seals are answered only once persisted (write-through). */
int kvds__tier_write_through(const struct kvds_tier *t);

/* Write-through: persists objs[0..n) (sealed; NULL entries skipped; a pin
 * on each is the tier's now) and answers w (KVDS_WAIT_SEAL) with a status
 * per object. Any thread, no lock held. */
void kvds__tier_persist(struct kvds_tier *t, struct kvds_wait *w, uint32_t n,
                        struct kvds_object **objs);

/* DELETE of key on disk (the DRAM copy is the caller's): 0 when a file
 * was removed, KVDS_E_NOTFOUND, KVDS_E_STATE (read-only). Blocks on the
 * unlink; no lock held. */
int kvds__tier_delete(struct kvds_tier *t, const uint8_t *key, uint32_t klen);

/* Calls fn for every key on disk (the tier's lock held: fn must not call
 * into the tier or the store). */
void kvds__tier_foreach(struct kvds_tier *t,
                        void (*fn)(const uint8_t *key, uint32_t klen, void *ud),
                        void *ud);

/* Adds the tier's counters to a stats snapshot (s->tier may be NULL). */
void kvds__tier_stats(struct kvds_server *s, struct kvds__stats *out);

#endif
