/*
 * cluster.h — the worker's cluster part as the rest of the worker sees it
 * (its files: internal.h). Set up when the worker is a member of a
 * cluster (etcd or static peers); absent on an embedded single worker.
 * Misses reach it through the server's resolver (resolver.h), which
 * kvds__cluster_start installs.
 */
#ifndef KVDS_WORKER_CLUSTER_H
#define KVDS_WORKER_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kvds/kvds.h"

struct kvds_server;
struct kvds_peer;
struct kvds_replicator;
struct json_t;

/* Sets up and starts the cluster part (peers, directory, jobs) and makes
 * it the server's resolver; a no-op for the embedded single node. Call
 * after the membership was created and before it starts (it registers the
 * change callback's target). */
int kvds__cluster_start(struct kvds_server *s);
/* Stops its threads (pulls in flight fail at once) and frees it. */
void kvds__cluster_stop(struct kvds_server *s);
/* The membership's change callback. */
void kvds__cluster_on_view(void *arg, uint64_t generation);

/* The peer a HELLO names (NULL if not a member), for its byte counters. */
struct kvds_peer *kvds__cluster_peer(struct kvds_server *s, const uint8_t *id,
                                     uint32_t len);
void kvds__peer_count_out(struct kvds_peer *p, uint64_t bytes);
/* Adds per-member transfer figures to a membership JSON object (its
 * "members" entries) and "directory" / "replicas" objects. */
void kvds__cluster_annotate(struct kvds_server *s, struct json_t *cluster);
/* Writes the cluster's Prometheus lines (per-peer counters, pull latency
 * histograms, directory size) to f; nothing for a single embedded worker. */
void kvds__cluster_metrics(struct kvds_server *s, FILE *f);

/* ---- replicas (replicate.c; --replicas N > 1) ----------------------------
 * kvds__cluster_replicate copies keys[0..n), sealed here, to the other
 * members of each key's replica set: the `copies` best members by
 * rendezvous hashing over the live view, this worker left out and the
 * rest cut to copies - 1. Each copy is a GET with this worker as hint and
 * KVDS_GET_PIN sent to the target: the target pulls the value into its
 * pool (a replica it announces) and only a pin comes back, released at
 * once. Bounded by deadline_us; *made / *failed count the copies, and
 * done[i] = 1 when key i has all its copies (0: a target failed, or there
 * are fewer live members than copies - 1). */
void kvds__cluster_replicate(struct kvds_server *s, size_t n,
                             const struct kvds_iov *keys, int copies,
                             uint64_t deadline_us, uint8_t *done, size_t *made,
                             size_t *failed);
int kvds__repl_start(struct kvds_server *s, int copies,
                     struct kvds_replicator **out);
/* Joins the thread; call after the cluster's connections were shut down
 * (a copy in flight then fails at once). NULL is a no-op. */
void kvds__repl_stop(struct kvds_replicator *r);
/* Queues a key sealed here (store lock held: the notify hook). */
void kvds__repl_queue_locked(struct kvds_replicator *r, const uint8_t *key,
                             uint32_t klen);
struct kvds_repl_counts {
  uint64_t queued, made, failed, skipped, gave_up;
};
void kvds__repl_counts(struct kvds_replicator *r, struct kvds_repl_counts *out);

#endif
