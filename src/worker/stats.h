/*
 * stats.h — the worker's counters, read in one snapshot for the STATS reply,
 * /status and /metrics. Each counter is named once:
 *
 *  - KVDS_STATS_FIELDS (kvds.h): struct kvds_stats; the STATS reply carries
 *    each as an item of that name, which kvds_stats() and the bindings read;
 *  - KVDS__STATS_LIMITS: STATS items beyond struct kvds_stats (the limits of
 *    docs/worker.md), read by name (kvds_stats() skips them);
 *  - KVDS__STATS_HTTP: counters only /status and /metrics show.
 *
 * stats.c holds the one table of their Prometheus names, types and HELP
 * texts. Reading a snapshot takes store.lock briefly; call it without it.
 */
#ifndef KVDS_WORKER_STATS_H
#define KVDS_WORKER_STATS_H

#include <stdint.h>
#include <stdio.h>

#include "kvds/kvds.h"

struct kvds_server;

/* X(name) */
#define KVDS__STATS_LIMITS(X)                                                  \
  X(max_connections)                                                           \
  X(connections_closed_idle)                                                   \
  X(connections_closed_for_room)                                               \
  X(connections_refused)                                                       \
  X(connections_closed_slow)                                                   \
  X(writing_refused)

/* X(name) */
#define KVDS__STATS_HTTP(X)                                                    \
  X(pool_free_extents)                                                         \
  X(pool_fragmentation_ppm)                                                    \
  X(connections_total)                                                         \
  X(requests)                                                                  \
  X(bytes_in)                                                                  \
  X(bytes_out)                                                                 \
  X(auth_required)                                                             \
  X(auth_failures)                                                             \
  X(access_refused)

struct kvds__stats {
#define KVDS__STATS_PUBLIC(name, doc) uint64_t name;
#define KVDS__STATS_WORKER(name) uint64_t name;
  KVDS_STATS_FIELDS(KVDS__STATS_PUBLIC)
  KVDS__STATS_LIMITS(KVDS__STATS_WORKER)
  KVDS__STATS_HTTP(KVDS__STATS_WORKER)
#undef KVDS__STATS_PUBLIC
#undef KVDS__STATS_WORKER
};

/* Fills *out with the counters as they are now (the store's under one hold
 * of store.lock, so they agree with each other). */
void kvds__stats_read(struct kvds_server *s, struct kvds__stats *out);

/* Writes one Prometheus sample with its HELP and TYPE lines: kvds_<name>
 * (type "gauge" or "counter") = v. */
void kvds__metric_write(FILE *f, const char *type, const char *name,
                        const char *help, uint64_t v);

/* Writes the Prometheus text of the counters of st that /metrics shows
 * (HELP, TYPE and sample lines, kvds_<name>) to f. */
void kvds__stats_write_metrics(const struct kvds__stats *st, FILE *f);

#endif
