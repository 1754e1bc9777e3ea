/*
 * replicate.c — background copies of sealed objects (--replicas N,
 * docs/directory.md "Replicas"): what to copy and when. Each object sealed
 * here by a client (not a copy pulled from a peer) is queued; one thread
 * takes batches off the queue and has the cluster copy them to the other
 * members of each key's replica set (kvds__cluster_replicate: rendezvous
 * hashing, the copy is a pull made by the target). A key whose copies did
 * not all succeed (a target that died but is still in the view, a full
 * pool) is tried again with backoff, its targets chosen again each time,
 * for up to a minute while it is still sealed here. The queue is bounded:
 * beyond it, objects are counted as skipped, never blocking a seal.
 *
 * Locks: the notify hook runs under store.lock and takes r->lock (store
 * before replicator, nothing here takes store.lock while holding r->lock).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/util.h"
#include "kvds/kvds.h"
#include "worker/cluster/internal.h"

#define QUEUE_MAX 65536
#define BATCH 256
/* A copy that failed (target dead but still in the view, full, ...) is
 * tried again, with the targets chosen again from the view of that time,
 * after 0.5 s, 1 s, 2 s, ... (at most 5 s apart) for this long. */
#define RETRY_FIRST_US 500000u
#define RETRY_MAX_US 5000000u
#define RETRY_FOR_US 60000000u

struct rkey {
  struct rkey *next;
  uint64_t first_us; /* when it was first queued */
  uint64_t due_us;   /* not before (retries) */
  uint64_t backoff_us;
  uint32_t klen;
  uint8_t key[];
};

struct rlist {
  struct rkey *head, *tail;
};

struct kvds_replicator {
  struct kvds_server *s;
  int copies; /* N of --replicas: this one + N - 1 */
  pthread_mutex_t lock;
  pthread_cond_t cv;
  struct rlist fresh, retry; /* retry: in due order (appended later = due
                                later or about as late) */
  size_t n;
  int stopping;
  pthread_t th;
  atomic_uint_fast64_t made, failed, skipped, gave_up;
};

static void rl_push(struct rlist *l, struct rkey *k) {
  k->next = NULL;
  if (l->tail)
    l->tail->next = k;
  else
    l->head = k;
  l->tail = k;
}

static struct rkey *rl_pop(struct rlist *l) {
  struct rkey *k = l->head;
  if (k && !(l->head = k->next))
    l->tail = NULL;
  return k;
}

void kvds__repl_queue_locked(struct kvds_replicator *r, const uint8_t *key,
                             uint32_t klen) {
  struct rkey *k = malloc(sizeof *k + klen);
  pthread_mutex_lock(&r->lock);
  if (!k || r->n >= QUEUE_MAX || r->stopping) {
    pthread_mutex_unlock(&r->lock);
    free(k);
    atomic_fetch_add(&r->skipped, 1);
    return;
  }
  k->first_us = k->due_us = kvds_now_us();
  k->backoff_us = RETRY_FIRST_US;
  k->klen = klen;
  memcpy(k->key, key, klen);
  rl_push(&r->fresh, k);
  if (r->n++ == 0)
    pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->lock);
}

/* Still sealed here? A key deleted or evicted meanwhile is not copied. */
static int still_here(struct kvds_server *s, const struct rkey *k) {
  pthread_mutex_lock(&s->store.lock);
  struct kvds_object *o = kvds_store_find(&s->store, k->key, k->klen);
  int here = o && o->state == KVDS_STATE_SEALED;
  pthread_mutex_unlock(&s->store.lock);
  return here;
}

static void *repl_main(void *arg) {
  struct kvds_replicator *r = arg;
  struct kvds_iov iov[BATCH];
  struct rkey *taken[BATCH];
  uint8_t done[BATCH];
  pthread_mutex_lock(&r->lock);
  for (;;) {
    uint64_t now = kvds_now_us();
    while (!r->stopping && !r->fresh.head &&
           !(r->retry.head && r->retry.head->due_us <= now)) {
      if (r->retry.head) {
        kvds_cond_wait_until(&r->cv, &r->lock, r->retry.head->due_us);
      } else {
        pthread_cond_wait(&r->cv, &r->lock);
      }
      now = kvds_now_us();
    }
    if (r->stopping)
      break;
    size_t m = 0;
    while (m < BATCH && r->retry.head && r->retry.head->due_us <= now)
      taken[m++] = rl_pop(&r->retry);
    while (m < BATCH && r->fresh.head)
      taken[m++] = rl_pop(&r->fresh);
    r->n -= m;
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < m; i++)
      iov[i] = (struct kvds_iov){taken[i]->key, taken[i]->klen};
    size_t made = 0, failed = 0;
    uint64_t deadline = kvds_deadline_ms(r->s->cfg.pull_timeout_ms + 1000);
    kvds__cluster_replicate(r->s, m, iov, r->copies, deadline, done, &made,
                            &failed);
    atomic_fetch_add(&r->made, made);
    atomic_fetch_add(&r->failed, failed);
    now = kvds_now_us();
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < m; i++) {
      struct rkey *k = taken[i];
      if (done[i] || r->stopping) {
        free(k);
        continue;
      }
      pthread_mutex_unlock(&r->lock);
      int again = now - k->first_us < RETRY_FOR_US && still_here(r->s, k);
      pthread_mutex_lock(&r->lock);
      if (!again) {
        if (now - k->first_us >= RETRY_FOR_US)
          atomic_fetch_add(&r->gave_up, 1);
        free(k);
        continue;
      }
      k->due_us = now + k->backoff_us;
      k->backoff_us =
          k->backoff_us * 2 > RETRY_MAX_US ? RETRY_MAX_US : k->backoff_us * 2;
      rl_push(&r->retry, k);
      r->n++;
    }
  }
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

int kvds__repl_start(struct kvds_server *s, int copies,
                     struct kvds_replicator **out) {
  struct kvds_replicator *r = calloc(1, sizeof *r);
  if (!r)
    return -ENOMEM;
  r->s = s;
  r->copies = copies;
  pthread_mutex_init(&r->lock, NULL);
  kvds_cond_init_mono(&r->cv);
  int rc = -pthread_create(&r->th, NULL, repl_main, r);
  if (rc) {
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->lock);
    free(r);
    return rc;
  }
  *out = r;
  return 0;
}

void kvds__repl_stop(struct kvds_replicator *r) {
  if (!r)
    return;
  pthread_mutex_lock(&r->lock);
  r->stopping = 1;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->lock);
  pthread_join(r->th, NULL);
  for (struct rkey *k; (k = rl_pop(&r->fresh)) || (k = rl_pop(&r->retry));)
    free(k);
  pthread_cond_destroy(&r->cv);
  pthread_mutex_destroy(&r->lock);
  free(r);
}

void kvds__repl_counts(struct kvds_replicator *r,
                       struct kvds_repl_counts *out) {
  pthread_mutex_lock(&r->lock);
  out->queued = r->n;
  pthread_mutex_unlock(&r->lock);
  out->made = atomic_load(&r->made);
  out->failed = atomic_load(&r->failed);
  out->skipped = atomic_load(&r->skipped);
  out->gave_up = atomic_load(&r->gave_up);
}

/* ---- one batch of copies ------------------------------------------------ */

void kvds__cluster_replicate(struct kvds_server *s, size_t n,
                             const struct kvds_iov *keys, int copies,
                             uint64_t deadline_us, uint8_t *done, size_t *made,
                             size_t *failed) {
  struct kvds_cluster *cl = s->cluster;
  struct kvds_view v;
  size_t k = (size_t)copies - 1;
  *made = *failed = 0;
  memset(done, 0, n);
  int rc = kvds__cluster_view(cl, &v);
  if (rc) {
    *failed = n * k;
    return;
  }
  /* target[i * k + j]: the j-th member (index in v) to copy key i to. */
  size_t *target = malloc((n ? n : 1) * k * sizeof *target);
  size_t *subi = malloc((n ? n : 1) * sizeof *subi);
  struct kvds_iov *sub = malloc((n ? n : 1) * sizeof *sub);
  struct kvds_value *vals = calloc(n ? n : 1, sizeof *vals);
  int *res = malloc((n ? n : 1) * sizeof *res);
  if (!target || !subi || !sub || !vals || !res) {
    *failed = n * k;
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    size_t top[KVDS_REPLICAS_MAX];
    size_t got = kvds_view_top(&v, keys[i].base, keys[i].len, top, k + 1);
    size_t t = 0;
    for (size_t j = 0; j < got && t < k; j++)
      if (vpeer(&v, top[j]))
        target[i * k + t++] = top[j];
    done[i] = t == k; /* unless a copy fails below */
    for (; t < k; t++)
      target[i * k + t] = SIZE_MAX; /* fewer live members than copies */
  }
  struct kvds_get_opts opts = {0, cl->self_id, KVDS_GET_PIN};
  for (size_t m = 0; m < v.n; m++) {
    struct kvds_peer *p = vpeer(&v, m);
    if (!p)
      continue;
    size_t ns = 0;
    for (size_t i = 0; i < n; i++)
      for (size_t j = 0; j < k; j++)
        if (target[i * k + j] == m) {
          subi[ns] = i;
          sub[ns++] = keys[i];
        }
    if (!ns)
      continue;
    int err = 0;
    uint64_t gen;
    struct kvds_peerconn *c = kvds__pconn_get(cl, p, deadline_us, &gen, &err);
    uint64_t now = kvds_now_us();
    rc = c ? 0 : err;
    if (c && now >= deadline_us)
      rc = KVDS_E_TIMEOUT;
    if (!rc) {
      kvds_peerconn_set_timeout(c, kvds_deadline_left_ms(deadline_us, now));
      rc = kvds_peerconn_pin(c, ns, sub, &opts, vals, res, NULL);
    }
    for (size_t i = 0; i < ns; i++) {
      if (!rc && res[i] == 0) {
        (*made)++;
      } else {
        (*failed)++;
        done[subi[i]] = 0;
      }
    }
    if (!rc)
      kvds_peerconn_release(c, ns, vals);
    if (c)
      kvds__pconn_put(cl, p, c, gen);
    if (rc)
      kvds__logf(2,
                 "cluster: copies of %zu keys to %s failed (tried again): "
                 "%s",
                 ns, p->id, kvds_strerror(rc));
  }
out:
  free(target);
  free(subi);
  free(sub);
  free(vals);
  free(res);
  kvds_view_free(&v);
}
