/*
 * view.c — view changes and the maintenance thread (internal.h): reads
 * the membership's view into the peer table, connects to newcomers, drops
 * departed owners and keys homed elsewhere from the shard, re-announces
 * moved keys, and sends queued announcements.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/array.h"
#include "common/clock.h"
#include "common/util.h"
#include "worker/cluster/internal.h"

/* Directory retention under the new view (ud: the view). */
static int keep_owner(const char *id, uint64_t epoch, void *ud) {
  return kvds_view_has(ud, id, epoch);
}

static int keep_key(const uint8_t *key, size_t klen, void *ud) {
  const struct kvds_view *v = ud;
  return vpeer(v, kvds_view_home(v, key, klen)) == NULL;
}

/* Reads the membership's view into cl->view and the peer table; returns
 * the previous view in *old. */
static int view_refresh(struct kvds_cluster *cl, struct kvds_view *old) {
  struct kvds_member *mm = NULL;
  size_t n = 0;
  int rc = kvds_membership_view(cl->s->members, &mm, &n, NULL);
  if (rc)
    return rc;
  struct kvds_view nv;
  if (kvds_view_init(&nv, n)) {
    free(mm);
    return -ENOMEM;
  }
  pthread_mutex_lock(&cl->lock);
  for (size_t i = 0; i < cl->npeers; i++)
    cl->peers[i]->live = 0;
  for (size_t i = 0; i < n; i++) {
    if (mm[i].self) {
      kvds_view_add(&nv, NULL, cl->self_id, cl->self_epoch);
    } else {
      struct kvds_peer *p =
          kvds__peer_find_locked(cl, mm[i].id, strlen(mm[i].id));
      if (!p) {
        if (KVDS_ARRAY_GROW(cl->peers, cl->cappeers, cl->npeers + 1, 8))
          continue;
        if (!(p = kvds__peer_new(&mm[i], cl->conns_per_peer)))
          continue;
        cl->peers[cl->npeers++] = p;
      } else if (p->epoch != mm[i].epoch || strcmp(p->addr, mm[i].addr)) {
        /* Restarted (or moved): its old connections lead nowhere. */
        p->epoch = mm[i].epoch;
        snprintf(p->addr, sizeof p->addr, "%s", mm[i].addr);
        p->gen++;
        kvds__pconn_drop_idle_locked(p);
      }
      p->live = 1;
      kvds_view_add(&nv, p, p->id, p->epoch);
    }
  }
  for (size_t i = 0; i < cl->npeers; i++)
    if (!cl->peers[i]->live)
      kvds__pconn_drop_idle_locked(cl->peers[i]);
  *old = cl->view;
  cl->view = nv;
  atomic_store(&cl->nlive, nv.n);
  pthread_cond_broadcast(&cl->conn_cv);
  pthread_mutex_unlock(&cl->lock);
  free(mm);
  return 0;
}

/* A new view: re-announce moved keys, forget departed owners and keys we
 * are no longer home of, connect to newcomers. */
static void view_changed(struct kvds_cluster *cl) {
  struct kvds_view old = {0};
  uint64_t rj = kvds_membership_rejoins(cl->s->members);
  if (rj != cl->rejoins) {
    /* We were dropped by the others (or etcd lost everything): the homes
     * forgot our keys, whether or not our view or epoch changed. */
    cl->rejoins = rj;
    kvds__logf(2, "cluster: rejoined; announcing every key again");
    kvds__cluster_reannounce_all(cl);
  }
  if (view_refresh(cl, &old)) {
    pthread_mutex_lock(&cl->lock);
    cl->view_dirty = 1; /* try again */
    pthread_mutex_unlock(&cl->lock);
    return;
  }
  struct kvds_view nv;
  int rc = kvds__cluster_view(cl, &nv);
  if (!rc) {
    /* Connections first: the announcements below use them. */
    kvds__peers_connect(cl);
    size_t dropped = kvds_dir_retain_owners(cl->dir, keep_owner, &nv);
    size_t moved = kvds_dir_retain_keys(cl->dir, keep_key, &nv);
    if (dropped || moved)
      kvds__logf(3,
                 "cluster: directory dropped %zu locations of departed "
                 "workers, %zu keys now homed elsewhere",
                 dropped, moved);
    if (kvds__announce_moved(cl, old.n ? &old : NULL, &nv)) {
      kvds__cluster_reannounce_all(cl);
    }
    kvds_view_free(&nv);
  }
  kvds_view_free(&old);
}

void kvds__cluster_on_view(void *arg, uint64_t generation) {
  struct kvds_server *s = arg;
  struct kvds_cluster *cl = s->cluster;
  (void)generation;
  if (!cl)
    return;
  pthread_mutex_lock(&cl->lock);
  cl->view_dirty = 1;
  pthread_cond_signal(&cl->maint_cv);
  pthread_mutex_unlock(&cl->lock);
}

void *kvds__maint_main(void *arg) {
  struct kvds_cluster *cl = arg;
  uint64_t last_full = 0, last_conn = 0;
  pthread_mutex_lock(&cl->lock);
  while (!cl->stopping) {
    if (cl->view_dirty) {
      cl->view_dirty = 0;
      pthread_mutex_unlock(&cl->lock);
      view_changed(cl);
      pthread_mutex_lock(&cl->lock);
      continue;
    }
    uint64_t now = kvds_now_us();
    if (cl->reannounce_all && now - last_full > 1000000) {
      cl->reannounce_all = 0;
      last_full = now;
      struct kvds_view v;
      int rc = kvds_view_copy(&v, &cl->view);
      pthread_mutex_unlock(&cl->lock);
      if (!rc) {
        /* Queued changes first, so that a removal queued before this pass
         * cannot undo what it announces. */
        kvds__announce_queued(cl);
        if (kvds__announce_moved(cl, NULL, &v)) {
          kvds__cluster_reannounce_all(cl);
        }
        kvds_view_free(&v);
      }
      pthread_mutex_lock(&cl->lock);
      continue;
    }
    if (cl->nann) {
      pthread_mutex_unlock(&cl->lock);
      kvds__announce_queued(cl);
      pthread_mutex_lock(&cl->lock);
      continue;
    }
    if (now - last_conn > 1000000) {
      /* Peers that could not be reached yet, or lost connections. */
      last_conn = now;
      pthread_mutex_unlock(&cl->lock);
      kvds__peers_connect(cl);
      pthread_mutex_lock(&cl->lock);
      continue;
    }
    kvds_cond_wait_until(&cl->maint_cv, &cl->lock, kvds_deadline_ms(200));
  }
  pthread_mutex_unlock(&cl->lock);
  return NULL;
}
