/*
 * metrics.c — what the cluster part shows: per-peer transfer counters and
 * pull latency histograms, the directory shard's size, the replicator's
 * counters, as /status JSON and /metrics lines (internal.h).
 */
#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "worker/cluster/internal.h"
#include "worker/stats.h"

static const uint64_t lat_le_us[LAT_BUCKETS] = {
    100,   250,    500,    1000,   2500,    5000,    10000,  25000,
    50000, 100000, 250000, 500000, 1000000, 2500000, 5000000};

void kvds__peer_lat_record(struct kvds_peer *p, uint64_t us) {
  int b = 0;
  while (b < LAT_BUCKETS && us > lat_le_us[b])
    b++;
  atomic_fetch_add(&p->lat[b], 1);
  atomic_fetch_add(&p->lat_sum_us, us);
}

void kvds__peer_count_out(struct kvds_peer *p, uint64_t bytes) {
  atomic_fetch_add(&p->bytes_out, bytes);
}

void kvds__cluster_annotate(struct kvds_server *s, json_t *cluster) {
  struct kvds_cluster *cl = s->cluster;
  if (!cl || !cluster)
    return;
  json_t *members = json_object_get(cluster, "members");
  pthread_mutex_lock(&cl->lock);
  size_t i;
  json_t *m;
  json_array_foreach(members, i, m) {
    const char *id = json_string_value(json_object_get(m, "id"));
    struct kvds_peer *p =
        id ? kvds__peer_find_locked(cl, id, strlen(id)) : NULL;
    if (!p)
      continue;
    json_object_set_new(m, "bytes_in",
                        json_integer((json_int_t)atomic_load(&p->bytes_in)));
    json_object_set_new(m, "bytes_out",
                        json_integer((json_int_t)atomic_load(&p->bytes_out)));
    json_object_set_new(m, "pulls",
                        json_integer((json_int_t)atomic_load(&p->pulls)));
    json_object_set_new(m, "pull_errors",
                        json_integer((json_int_t)atomic_load(&p->pull_errors)));
    json_object_set_new(m, "ranged_in",
                        json_integer((json_int_t)atomic_load(&p->ranged_in)));
    json_object_set_new(m, "connections", json_integer(p->nopen));
    int ucx = p->uep && kvds_ucx_ep_ok(p->uep);
    if (ucx && !p->ucx_lanes[0])
      kvds_ucx_ep_lanes(p->uep, p->ucx_lanes, sizeof p->ucx_lanes);
    json_object_set_new(m, "transport", json_string(ucx ? "ucx" : "tcp"));
    if (ucx)
      json_object_set_new(m, "ucx_lanes", json_string(p->ucx_lanes));
    json_object_set_new(m, "ucx_in",
                        json_integer((json_int_t)atomic_load(&p->ucx_in)));
    json_object_set_new(m, "ucx_errors",
                        json_integer((json_int_t)atomic_load(&p->ucx_errors)));
  }
  pthread_mutex_unlock(&cl->lock);
  json_object_set_new(cluster, "transport",
                      json_pack("{s:s,s:s,s:s,s:s}", "mode",
                                kvds_worker_transport_name(s->cfg.transport),
                                "reads", s->ucx ? "ucx" : "tcp", "ucx_tls",
                                s->ucx ? kvds_ucx_tls(s->ucx) : "", "why",
                                s->transport_why));
  struct kvds_dir_stats ds;
  kvds_dir_stats(cl->dir, &ds);
  json_object_set_new(
      cluster, "directory",
      json_pack("{s:I,s:I,s:I,s:I,s:I}", "keys", (json_int_t)ds.keys,
                "locations", (json_int_t)ds.locations, "announced",
                (json_int_t)atomic_load(&cl->announced), "remote_found",
                (json_int_t)atomic_load(&cl->remote_found), "remote_missed",
                (json_int_t)atomic_load(&cl->remote_missed)));
  struct kvds_repl_counts rc = {0};
  if (cl->repl)
    kvds__repl_counts(cl->repl, &rc);
  json_object_set_new(
      cluster, "replicas",
      json_pack("{s:i,s:I,s:I,s:I,s:I,s:I}", "copies", cl->s->cfg.replicas,
                "queued", (json_int_t)rc.queued, "made", (json_int_t)rc.made,
                "failed", (json_int_t)rc.failed, "skipped",
                (json_int_t)rc.skipped, "gave_up", (json_int_t)rc.gave_up));
}

void kvds__cluster_metrics(struct kvds_server *s, FILE *f) {
  struct kvds_cluster *cl = s->cluster;
  if (!cl)
    return;
  struct kvds_dir_stats ds;
  kvds_dir_stats(cl->dir, &ds);
  struct kvds_repl_counts rc = {0};
  if (cl->repl)
    kvds__repl_counts(cl->repl, &rc);
  const struct {
    const char *type, *name, *help;
    uint64_t v;
  } one[] = {
      {"gauge", "directory_keys",
       "Keys in this worker's directory shard (it is their home).", ds.keys},
      {"gauge", "directory_locations", "Locations (key, owner) in the shard.",
       ds.locations},
      {"counter", "announced_total", "Location changes sent to homes.",
       atomic_load(&cl->announced)},
      {"counter", "announce_errors_total", "Announcements a home did not take.",
       atomic_load(&cl->announce_errors)},
      {"counter", "remote_found_total",
       "Keys missing here that the cluster supplied.",
       atomic_load(&cl->remote_found)},
      {"counter", "remote_missed_total",
       "Keys missing here that the cluster could not supply.",
       atomic_load(&cl->remote_missed)},
      {"gauge", "replica_copies",
       "Copies kept of each object sealed here (--replicas).",
       (uint64_t)cl->s->cfg.replicas},
      {"gauge", "replica_queued",
       "Objects waiting to be copied (or copied again).", rc.queued},
      {"gauge", "ucx_enabled",
       "1 when peers' pools are read over UCX (--transport), else 0.",
       (uint64_t)(s->ucx != NULL)},
      {"counter", "replica_made_total", "Copies made on other workers.",
       rc.made},
      {"counter", "replica_failed_total",
       "Copies that failed (target unreachable or full; tried again).",
       rc.failed},
      {"counter", "replica_skipped_total", "Objects not copied (queue full).",
       rc.skipped},
      {"counter", "replica_gave_up_total",
       "Objects whose copies still failed after a minute of tries.",
       rc.gave_up},
  };
  for (size_t k = 0; k < sizeof one / sizeof one[0]; k++)
    kvds__metric_write(f, one[k].type, one[k].name, one[k].help, one[k].v);
  pthread_mutex_lock(&cl->lock);
  static const struct {
    const char *name, *type, *help;
    size_t off;
  } ctr[] = {
      {"peer_received_bytes_total", "counter",
       "Bytes pulled from the peer into this pool.",
       offsetof(struct kvds_peer, bytes_in)},
      {"peer_sent_bytes_total", "counter",
       "Bytes sent to the peer on its connections to us.",
       offsetof(struct kvds_peer, bytes_out)},
      {"peer_objects_received_total", "counter",
       "Objects pulled from the peer.", offsetof(struct kvds_peer, objects_in)},
      {"peer_ranged_objects_received_total", "counter",
       "Objects pulled from the peer in ranges over several connections.",
       offsetof(struct kvds_peer, ranged_in)},
      {"peer_ucx_objects_received_total", "counter",
       "Objects read from the peer's pool over UCX.",
       offsetof(struct kvds_peer, ucx_in)},
      {"peer_ucx_errors_total", "counter",
       "UCX endpoints to the peer that failed (it is read over TCP for a "
       "while after each).",
       offsetof(struct kvds_peer, ucx_errors)},
      {"peer_pulls_total", "counter", "Pull requests sent to the peer.",
       offsetof(struct kvds_peer, pulls)},
      {"peer_pull_errors_total", "counter",
       "Pulls from the peer that failed (unreachable, died, deadline).",
       offsetof(struct kvds_peer, pull_errors)},
  };
  for (size_t k = 0; k < sizeof ctr / sizeof ctr[0]; k++) {
    fprintf(f, "# HELP kvds_%s %s\n# TYPE kvds_%s %s\n", ctr[k].name,
            ctr[k].help, ctr[k].name, ctr[k].type);
    for (size_t i = 0; i < cl->npeers; i++) {
      struct kvds_peer *p = cl->peers[i];
      fprintf(f, "kvds_%s{peer=\"%s\"} %llu\n", ctr[k].name, p->id,
              (unsigned long long)atomic_load(
                  (atomic_uint_fast64_t *)((char *)p + ctr[k].off)));
    }
  }
  fprintf(f, "# HELP kvds_peer_up 1 while the peer is in the view.\n"
             "# TYPE kvds_peer_up gauge\n");
  for (size_t i = 0; i < cl->npeers; i++)
    fprintf(f, "kvds_peer_up{peer=\"%s\"} %d\n", cl->peers[i]->id,
            cl->peers[i]->live);
  fprintf(f, "# HELP kvds_peer_transport How the peer's pool is read now "
             "(1 for the transport in use).\n"
             "# TYPE kvds_peer_transport gauge\n");
  for (size_t i = 0; i < cl->npeers; i++) {
    struct kvds_peer *p = cl->peers[i];
    int ucx = p->uep && kvds_ucx_ep_ok(p->uep);
    fprintf(f, "kvds_peer_transport{peer=\"%s\",transport=\"tcp\"} %d\n", p->id,
            !ucx);
    fprintf(f, "kvds_peer_transport{peer=\"%s\",transport=\"ucx\"} %d\n", p->id,
            ucx);
  }
  fprintf(f, "# HELP kvds_peer_connections Open connections to the peer.\n"
             "# TYPE kvds_peer_connections gauge\n");
  for (size_t i = 0; i < cl->npeers; i++)
    fprintf(f, "kvds_peer_connections{peer=\"%s\"} %d\n", cl->peers[i]->id,
            cl->peers[i]->nopen);
  fprintf(f, "# HELP kvds_peer_pull_seconds Latency of pulls (one request, "
             "any number of objects) from the peer.\n"
             "# TYPE kvds_peer_pull_seconds histogram\n");
  for (size_t i = 0; i < cl->npeers; i++) {
    struct kvds_peer *p = cl->peers[i];
    uint64_t cum = 0;
    for (int b = 0; b <= LAT_BUCKETS; b++) {
      cum += atomic_load(&p->lat[b]);
      if (b < LAT_BUCKETS)
        fprintf(f,
                "kvds_peer_pull_seconds_bucket{peer=\"%s\",le=\"%g\"} %llu\n",
                p->id, (double)lat_le_us[b] / 1e6, (unsigned long long)cum);
      else
        fprintf(f,
                "kvds_peer_pull_seconds_bucket{peer=\"%s\",le=\"+Inf\"} %llu\n",
                p->id, (unsigned long long)cum);
    }
    fprintf(f, "kvds_peer_pull_seconds_sum{peer=\"%s\"} %.6f\n", p->id,
            (double)atomic_load(&p->lat_sum_us) / 1e6);
    fprintf(f, "kvds_peer_pull_seconds_count{peer=\"%s\"} %llu\n", p->id,
            (unsigned long long)cum);
  }
  pthread_mutex_unlock(&cl->lock);
}
