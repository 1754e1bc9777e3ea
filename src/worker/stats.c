/*
 * stats.c — the worker's counters (see stats.h): one snapshot, and their
 * Prometheus names.
 */
#include "worker/stats.h"

#include <pthread.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "worker/server.h"
#include "worker/tier/tier.h"

/*
 * How /metrics shows each counter of struct kvds__stats, in the order it
 * writes them: X(field, type, name, HELP) for the sample kvds_<name>; type
 * NULL: not in /metrics. The one table of the Prometheus names (most add a
 * unit or _total to the field's name; dashboards and docs/grafana/kvds.json
 * depend on them). Every field is in it exactly once (checked below).
 */
#define KVDS__METRICS(X)                                                       \
  X(pool_capacity, "gauge", "pool_capacity_bytes",                             \
    "Bytes of the pool usable for objects.")                                   \
  X(pool_used, "gauge", "pool_used_bytes", "Bytes allocated to objects.")      \
  X(pool_free, "gauge", "pool_free_bytes", "Bytes not allocated.")             \
  X(pool_largest_free, "gauge", "pool_largest_free_bytes",                     \
    "Largest contiguous free extent.")                                         \
  X(pool_fragmentation_ppm, "gauge", "pool_fragmentation_ppm",                 \
    "1 - largest_free/free, parts per million.")                               \
  X(objects, "gauge", "objects", "Objects in the index (sealed and writing).") \
  X(objects_writing, "gauge", "objects_writing", "Objects being written.")     \
  X(pinned_objects, "gauge", "objects_pinned",                                 \
    "Objects with at least one pin.")                                          \
  X(puts, "counter", "puts_total", "Objects sealed.")                          \
  X(hits, "counter", "hits_total", "Get items found.")                         \
  X(misses, "counter", "misses_total", "Get items not found.")                 \
  X(evictions, "counter", "evictions_total", "Objects evicted.")               \
  X(evicted_bytes, "counter", "evicted_bytes_total", "Bytes evicted.")         \
  X(nospace, "counter", "nospace_total", "Creates refused for lack of space.") \
  X(connections, "gauge", "connections", "Open client connections.")           \
  X(connections_total, "counter", "connections_total",                         \
    "Client connections accepted.")                                            \
  X(max_connections, "gauge", "max_connections",                               \
    "Connections admitted at most (--max-connections).")                       \
  X(connections_closed_idle, "counter", "connections_closed_idle_total",       \
    "Connections closed after --idle-timeout-s holding nothing.")              \
  X(connections_closed_for_room, "counter",                                    \
    "connections_closed_for_room_total",                                       \
    "Idle connections closed at --max-connections to admit new ones.")         \
  X(connections_refused, "counter", "connections_refused_total",               \
    "New connections refused at --max-connections (none idle).")               \
  X(connections_closed_slow, "counter", "connections_closed_slow_total",       \
    "Connections closed mid-transfer: no progress for --frame-timeout-ms, "    \
    "or slower than --min-rate.")                                              \
  X(writing_refused, "counter", "writing_refused_total",                       \
    "Creates (and PUT items) refused with KVDS_E_NOSPACE: their connection "   \
    "held --max-writing-per-conn bytes being written.")                        \
  X(requests, "counter", "requests_total", "Request frames received.")         \
  X(bytes_in, "counter", "received_bytes_total",                               \
    "Bytes received on client sockets.")                                       \
  X(bytes_out, "counter", "sent_bytes_total", "Bytes sent on client sockets.") \
  X(protocol_errors, "counter", "protocol_errors_total",                       \
    "Malformed frames received.")                                              \
  X(auth_required, "gauge", "auth_required",                                   \
    "1 if TCP connections must prove the auth token.")                         \
  X(auth_failures, "counter", "auth_failures_total",                           \
    "TCP connections closed before they authenticated.")                       \
  X(access_refused, "counter", "access_refused_total",                         \
    "Connections from users other than the worker's (root, --allow-group) "    \
    "that could not go on without the token.")                                 \
  X(uptime_s, "gauge", "uptime_seconds", "Seconds since start.")               \
  X(disk_policy, "gauge", "disk_policy",                                       \
    "Disk tier: 0 none, 1 spill, 2 write-through, 3 read-only.")               \
  X(disk_objects, "gauge", "disk_objects", "Objects in the disk tier.")        \
  X(disk_bytes, "gauge", "disk_bytes", "Bytes of the disk tier's files.")      \
  X(disk_capacity, "gauge", "disk_capacity_bytes",                             \
    "Disk tier capacity (0: no limit, or no disk tier).")                      \
  X(disk_writes, "counter", "disk_writes_total",                               \
    "Objects written to disk (spills and write-through seals).")               \
  X(disk_write_bytes, "counter", "disk_write_bytes_total",                     \
    "Value bytes written to disk.")                                            \
  X(disk_write_errors, "counter", "disk_write_errors_total",                   \
    "Writes to disk that failed (disk full, unwritable).")                     \
  X(disk_reads, "counter", "disk_reads_total",                                 \
    "Objects read back from disk into DRAM (promotions).")                     \
  X(disk_read_bytes, "counter", "disk_read_bytes_total",                       \
    "Value bytes read back from disk.")                                        \
  X(disk_corrupt, "counter", "disk_corrupt_total",                             \
    "Files found corrupt or truncated: removed, never served.")                \
  X(disk_evictions, "counter", "disk_evictions_total",                         \
    "Files removed to stay within --disk-capacity.")                           \
  X(disk_spills, "counter", "disk_spills_total",                               \
    "Objects written to disk ahead of their eviction from DRAM.")              \
  X(disk_spill_skipped, "counter", "disk_spill_skipped_total",                 \
    "Objects evicted from DRAM with no copy on disk (the spill fell behind "   \
    "or failed).")                                                             \
  X(pid, NULL, NULL, NULL)                                                     \
  X(high_watermark_ppm, NULL, NULL, NULL)                                      \
  X(eviction_ratio_ppm, NULL, NULL, NULL)                                      \
  X(pool_free_extents, NULL, NULL, NULL)

/* Each field once: a field named twice does not compile (duplicate member),
 * one that does not exist fails offsetof, and one left out leaves this
 * struct smaller than struct kvds__stats. */
struct metrics_fields {
#define FIELD(field, type, name, help) uint64_t field;
  KVDS__METRICS(FIELD)
#undef FIELD
};
_Static_assert(sizeof(struct metrics_fields) == sizeof(struct kvds__stats),
               "KVDS__METRICS must name every field of struct kvds__stats");

static const struct metric {
  size_t off;
  const char *type, *name, *help;
} metrics[] = {
#define ROW(field, type, name, help)                                           \
  {offsetof(struct kvds__stats, field), type, name, help},
    KVDS__METRICS(ROW)
#undef ROW
};

void kvds__stats_read(struct kvds_server *s, struct kvds__stats *out) {
  struct kvds_alloc_stats as;
  struct kvds_store_counters ct;
  uint64_t objects;
  pthread_mutex_lock(&s->store.lock);
  kvds_alloc_stats(&s->store.alloc, &as);
  ct = s->store.ctr;
  objects = s->store.index.count;
  pthread_mutex_unlock(&s->store.lock);
  *out = (struct kvds__stats){
      .pool_capacity = as.capacity,
      .pool_used = as.used,
      .pool_free = as.free,
      .pool_largest_free = as.largest_free,
      .objects = objects,
      .objects_writing = ct.writing_objects,
      .pinned_objects = ct.pinned_objects,
      .evictions = ct.evictions,
      .evicted_bytes = ct.evicted_bytes,
      .hits = ct.hits,
      .misses = ct.misses,
      .puts = ct.puts,
      .nospace = ct.nospace,
      .connections = atomic_load(&s->connections),
      .protocol_errors = atomic_load(&s->protocol_errors),
      .uptime_s = (kvds_now_us() - s->start_us) / 1000000u,
      .pid = (uint64_t)getpid(),
      .high_watermark_ppm = (uint64_t)(s->cfg.high_watermark * 1e6 + 0.5),
      .eviction_ratio_ppm = (uint64_t)(s->cfg.eviction_ratio * 1e6 + 0.5),
      .max_connections = (uint64_t)s->max_conns,
      .connections_closed_idle = atomic_load(&s->closed_idle),
      .connections_closed_for_room = atomic_load(&s->closed_for_room),
      .connections_refused = atomic_load(&s->refused),
      .connections_closed_slow = atomic_load(&s->closed_slow),
      .writing_refused = atomic_load(&s->writing_refused),
      .pool_free_extents = as.free_extents,
      .pool_fragmentation_ppm = as.fragmentation_ppm,
      .connections_total = atomic_load(&s->connections_total),
      .requests = atomic_load(&s->requests),
      .bytes_in = atomic_load(&s->bytes_in),
      .bytes_out = atomic_load(&s->bytes_out),
      .auth_required = (uint64_t)s->auth,
      .auth_failures = atomic_load(&s->auth_failures),
      .access_refused = atomic_load(&s->access_refused),
      .disk_spill_skipped = ct.evicted_unspilled,
  };
  kvds__tier_stats(s, out);
}

void kvds__metric_write(FILE *f, const char *type, const char *name,
                        const char *help, uint64_t v) {
  fprintf(f, "# HELP kvds_%s %s\n# TYPE kvds_%s %s\nkvds_%s %llu\n", name, help,
          name, type, name, (unsigned long long)v);
}

void kvds__stats_write_metrics(const struct kvds__stats *st, FILE *f) {
  for (size_t i = 0; i < sizeof metrics / sizeof metrics[0]; i++) {
    const struct metric *m = &metrics[i];
    uint64_t v;
    if (!m->name)
      continue;
    memcpy(&v, (const uint8_t *)st + m->off, sizeof v);
    kvds__metric_write(f, m->type, m->name, m->help, v);
  }
}
