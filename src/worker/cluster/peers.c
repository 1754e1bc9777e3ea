/*
 * peers.c — the other members of the cluster and this worker's
 * connections to them (internal.h): up to conns_per_peer each, idle ones
 * kept while the peer lives in the same incarnation, busy ones shut down
 * at stop.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/util.h"
#include "worker/cluster/internal.h"

struct kvds_peer *kvds__peer_find_locked(struct kvds_cluster *cl,
                                         const char *id, size_t len) {
  for (size_t i = 0; i < cl->npeers; i++) {
    struct kvds_peer *p = cl->peers[i];
    if (strlen(p->id) == len && memcmp(p->id, id, len) == 0)
      return p;
  }
  return NULL;
}

struct kvds_peer *kvds__peer_new(const struct kvds_member *m, int conns) {
  struct kvds_peer *p = calloc(1, sizeof *p);
  if (!p)
    return NULL;
  p->idle = calloc((size_t)conns, sizeof *p->idle);
  p->busy = calloc((size_t)conns, sizeof *p->busy);
  if (!p->idle || !p->busy) {
    free(p->idle);
    free(p->busy);
    free(p);
    return NULL;
  }
  snprintf(p->id, sizeof p->id, "%s", m->id);
  snprintf(p->addr, sizeof p->addr, "%s", m->addr);
  p->epoch = m->epoch;
  return p;
}

void kvds__peer_free(struct kvds_peer *p) {
  kvds__pconn_drop_idle_locked(p);
  kvds_ucx_ep_unref(p->uep);
  free(p->idle);
  free(p->busy);
  free(p);
}

/* A new connection to p answered HELLO with `nonce` (cl->lock held). A
 * different nonce than before means p restarted: with etcd the view shows
 * that by its epoch; a static peer's epoch is unknown, so its home shard is
 * rebuilt by announcing everything again. */
static void peer_seen_locked(struct kvds_cluster *cl, struct kvds_peer *p,
                             uint64_t nonce) {
  if (p->nonce && p->nonce != nonce && p->epoch == 0) {
    cl->reannounce_all = 1;
    pthread_cond_signal(&cl->maint_cv);
  }
  p->nonce = nonce;
}

/* A connection to p, or NULL with *err set (KVDS_E_PEER when it cannot be
 * reached or stopped living, KVDS_E_TIMEOUT when all stayed busy). */
struct kvds_peerconn *kvds__pconn_get(struct kvds_cluster *cl,
                                      struct kvds_peer *p, uint64_t deadline_us,
                                      uint64_t *gen, int *err) {
  struct kvds_server *s = cl->s;
  pthread_mutex_lock(&cl->lock);
  for (;;) {
    if (cl->stopping || !p->live) {
      *err = cl->stopping ? KVDS_E_SHUTDOWN : KVDS_E_PEER;
      break;
    }
    if (p->nidle) {
      struct pconn pc = p->idle[--p->nidle];
      if (kvds_peerconn_stale(pc.c)) { /* the peer closed it: next one */
        kvds_peerconn_close(pc.c);
        p->nopen--;
        continue;
      }
      p->busy[p->nbusy++] = pc.c;
      *gen = pc.gen;
      pthread_mutex_unlock(&cl->lock);
      return pc.c;
    }
    if (p->nopen < cl->conns_per_peer) {
      p->nopen++;
      uint64_t g = p->gen;
      char addr[KVDS_MEMBER_ID_MAX];
      memcpy(addr, p->addr, sizeof addr);
      pthread_mutex_unlock(&cl->lock);
      uint64_t now = kvds_now_us();
      int ms = kvds_deadline_left_ms(deadline_us, now);
      struct kvds_peerconn *c = NULL;
      int rc =
          kvds_peerconn_open(addr, ms < CONNECT_MS ? (ms ? ms : 1) : CONNECT_MS,
                             s->auth ? &s->token : NULL, cl->self_id, &c);
      pthread_mutex_lock(&cl->lock);
      if (rc) {
        p->nopen--;
        pthread_cond_broadcast(&cl->conn_cv);
        *err = KVDS_E_PEER;
        break;
      }
      p->busy[p->nbusy++] = c;
      peer_seen_locked(cl, p, kvds_peerconn_nonce(c));
      *gen = g;
      pthread_mutex_unlock(&cl->lock);
      return c;
    }
    if (kvds_cond_wait_until(&cl->conn_cv, &cl->lock, deadline_us) ==
        -ETIMEDOUT) {
      *err = KVDS_E_TIMEOUT;
      break;
    }
  }
  pthread_mutex_unlock(&cl->lock);
  return NULL;
}

/* Gives a connection back: kept if it still works and the peer is the same
 * incarnation, else closed. */
void kvds__pconn_put(struct kvds_cluster *cl, struct kvds_peer *p,
                     struct kvds_peerconn *c, uint64_t gen) {
  pthread_mutex_lock(&cl->lock);
  for (int i = 0; i < p->nbusy; i++)
    if (p->busy[i] == c) {
      p->busy[i] = p->busy[--p->nbusy];
      break;
    }
  if (!cl->stopping && p->live && gen == p->gen &&
      kvds_peerconn_is_connected(c)) {
    p->idle[p->nidle++] = (struct pconn){c, gen};
    c = NULL;
  } else {
    p->nopen--;
  }
  pthread_cond_broadcast(&cl->conn_cv);
  pthread_mutex_unlock(&cl->lock);
  kvds_peerconn_close(c);
}

/* Closes p's idle connections (cl->lock held). */
void kvds__pconn_drop_idle_locked(struct kvds_peer *p) {
  for (int i = 0; i < p->nidle; i++)
    kvds_peerconn_close(p->idle[i].c);
  p->nopen -= p->nidle;
  p->nidle = 0;
}

/* Opens the connections a live peer does not have yet (maintenance
 * thread), so the first request finds them ready. */
void kvds__peers_connect(struct kvds_cluster *cl) {
  struct kvds_view v;
  int rc = kvds__cluster_view(cl, &v);
  if (rc)
    return;
  for (size_t i = 0; i < v.n; i++) {
    struct kvds_peer *p = vpeer(&v, i);
    if (!p)
      continue;
    for (;;) {
      pthread_mutex_lock(&cl->lock);
      int want = !cl->stopping && p->live && p->nopen < cl->conns_per_peer;
      uint64_t gen = p->gen;
      if (want)
        p->nopen++;
      pthread_mutex_unlock(&cl->lock);
      if (!want)
        break;
      struct kvds_peerconn *c = NULL;
      int r = kvds_peerconn_open(p->addr, CONNECT_MS,
                                 cl->s->auth ? &cl->s->token : NULL,
                                 cl->self_id, &c);
      pthread_mutex_lock(&cl->lock);
      if (r || gen != p->gen || !p->live || cl->stopping) {
        p->nopen--;
        pthread_mutex_unlock(&cl->lock);
        kvds_peerconn_close(c);
        if (r)
          kvds__logf(3, "cluster: cannot connect to %s (%s): %s", p->id,
                     p->addr, kvds_strerror(r));
        break;
      }
      p->idle[p->nidle++] = (struct pconn){c, gen};
      peer_seen_locked(cl, p, kvds_peerconn_nonce(c));
      pthread_cond_broadcast(&cl->conn_cv);
      pthread_mutex_unlock(&cl->lock);
    }
  }
  kvds_view_free(&v);
}

void kvds__peers_shutdown_locked(struct kvds_cluster *cl) {
  for (size_t i = 0; i < cl->npeers; i++)
    for (int k = 0; k < cl->peers[i]->nbusy; k++)
      kvds_peerconn_shutdown(cl->peers[i]->busy[k]);
}
