/*
 * cluster.c — life cycle of the worker's cluster part (internal.h): its
 * threads and the store hook, and the resolver ops table through which the
 * server hands it misses (resolver.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/util.h"
#include "worker/cluster/internal.h"

/* A cluster with another live member: requests look beyond this worker. */
static int cluster_active(void *self) {
  struct kvds_cluster *cl = self;
  return atomic_load_explicit(&cl->nlive, memory_order_relaxed) > 1;
}

static void cluster_resolver_stop(void *self) {
  struct kvds_cluster *cl = self;
  kvds__cluster_stop(cl->s);
}

static const struct kvds_resolver_ops cluster_resolver = {
    .name = "cluster",
    .active = cluster_active,
    .submit = kvds__jobs_submit,
    .announce = kvds__shard_announce,
    .locate_local = kvds__shard_locate_local,
    .stop = cluster_resolver_stop,
};

int kvds__cluster_view(struct kvds_cluster *cl, struct kvds_view *out) {
  pthread_mutex_lock(&cl->lock);
  int rc = kvds_view_copy(out, &cl->view);
  pthread_mutex_unlock(&cl->lock);
  return rc;
}

void kvds__cluster_reannounce_all(struct kvds_cluster *cl) {
  pthread_mutex_lock(&cl->lock);
  cl->reannounce_all = 1;
  pthread_mutex_unlock(&cl->lock);
}

struct kvds_peer *kvds__cluster_peer(struct kvds_server *s, const uint8_t *id,
                                     uint32_t len) {
  struct kvds_cluster *cl = s->cluster;
  if (!cl)
    return NULL;
  pthread_mutex_lock(&cl->lock);
  struct kvds_peer *p = kvds__peer_find_locked(cl, (const char *)id, len);
  pthread_mutex_unlock(&cl->lock);
  return p;
}

/* ---- life cycle ---------------------------------------------------------- */

int kvds__cluster_start(struct kvds_server *s) {
  if (kvds_membership_mode(s->members) == KVDS_MEMBERSHIP_EMBEDDED)
    return 0;
  struct kvds_cluster *cl = calloc(1, sizeof *cl);
  if (!cl)
    return -ENOMEM;
  cl->s = s;
  cl->conns_per_peer = s->cfg.pull_threads + 1; /* + the announcer's */
  pthread_mutex_init(&cl->lock, NULL);
  /* Timed waits use the monotonic clock, as kvds_now_us does. */
  kvds_cond_init_mono(&cl->job_cv);
  kvds_cond_init_mono(&cl->conn_cv);
  kvds_cond_init_mono(&cl->maint_cv);
  struct kvds_member *mm = NULL;
  size_t n = 0;
  int rc = kvds_membership_view(s->members, &mm, &n, NULL);
  for (size_t i = 0; !rc && i < n; i++)
    if (mm[i].self) {
      snprintf(cl->self_id, sizeof cl->self_id, "%s", mm[i].id);
      cl->self_epoch = mm[i].epoch;
    }
  free(mm);
  if (!rc)
    rc = kvds_dir_new(&cl->dir);
  if (!rc && !(rc = kvds_view_init(&cl->view, 1))) {
    kvds_view_add(&cl->view, NULL, cl->self_id, cl->self_epoch);
    atomic_store(&cl->nlive, 1);
  }
  /* What the disk tier holds is here from the start: a full pass tells
   * every home (this worker's own shard included; the view changes that
   * follow only announce the keys whose home moved). */
  cl->reannounce_all = s->tier != NULL;
  cl->pullers = calloc((size_t)s->cfg.pull_threads, sizeof *cl->pullers);
  if (!rc && !cl->pullers)
    rc = -ENOMEM;
  s->cluster = cl;
  if (rc) {
    kvds__cluster_stop(s);
    return rc;
  }
  cl->view_dirty = 1; /* read the first view */
  for (int i = 0; i < s->cfg.pull_threads; i++) {
    if ((rc = -pthread_create(&cl->pullers[i], NULL, kvds__jobs_main, cl))) {
      kvds__cluster_stop(s);
      return rc;
    }
    cl->npullers++;
  }
  if ((rc = -pthread_create(&cl->maint, NULL, kvds__maint_main, cl))) {
    kvds__cluster_stop(s);
    return rc;
  }
  cl->maint_started = 1;
  if (s->cfg.replicas > 1 &&
      (rc = kvds__repl_start(s, s->cfg.replicas, &cl->repl))) {
    kvds__cluster_stop(s);
    return rc;
  }
  pthread_mutex_lock(&s->store.lock);
  kvds_store_set_notify(&s->store, kvds__announce_on_store, cl);
  pthread_mutex_unlock(&s->store.lock);
  s->resolver = (struct kvds_resolver){&cluster_resolver, cl};
  return 0;
}

void kvds__cluster_stop(struct kvds_server *s) {
  struct kvds_cluster *cl = s->cluster;
  if (!cl)
    return;
  pthread_mutex_lock(&s->store.lock);
  kvds_store_set_notify(&s->store, NULL, NULL);
  pthread_mutex_unlock(&s->store.lock);
  pthread_mutex_lock(&cl->lock);
  cl->stopping = 1;
  kvds__peers_shutdown_locked(cl);
  pthread_cond_broadcast(&cl->job_cv);
  pthread_cond_broadcast(&cl->conn_cv);
  pthread_cond_broadcast(&cl->maint_cv);
  pthread_mutex_unlock(&cl->lock);
  for (int i = 0; i < cl->npullers; i++)
    pthread_join(cl->pullers[i], NULL);
  if (cl->maint_started)
    pthread_join(cl->maint, NULL);
  kvds__repl_stop(cl->repl); /* its call in flight was shut down above */
  s->cluster = NULL;
  s->resolver = (struct kvds_resolver){NULL, NULL};
  for (struct job *j = cl->jhead, *nx; j; j = nx) {
    nx = j->next;
    kvds__job_drop(j);
  }
  for (struct ann *a = cl->ahead, *nx; a; a = nx) {
    nx = a->next;
    free(a);
  }
  for (size_t i = 0; i < cl->npeers; i++)
    kvds__peer_free(cl->peers[i]);
  free(cl->peers);
  kvds_view_free(&cl->view);
  kvds_dir_free(cl->dir);
  free(cl->pullers);
  pthread_cond_destroy(&cl->job_cv);
  pthread_cond_destroy(&cl->conn_cv);
  pthread_cond_destroy(&cl->maint_cv);
  pthread_mutex_destroy(&cl->lock);
  free(cl);
}
