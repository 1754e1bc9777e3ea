/*
 * replicate.c — background copies of sealed objects (--replicas N,
 * docs/directory.md "Replicas"): what to copy and when. Each object sealed
 * here by a client (not a copy pulled from a peer) is queued; one thread
 * takes batches off the queue and has the cluster copy them to the other
 * members of each key's replica set (kvds__cluster_replicate: rendezvous
 * hashing, the copy is a pull made by the target). The queue is bounded:
 * beyond it, objects are counted as skipped, never blocking a seal.
 *
 * Locks: the notify hook runs under store.lock and takes r->lock (store
 * before replicator, nothing here takes store.lock while holding r->lock).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "kvds/kvds.h"
#include "worker/server.h"

#define QUEUE_MAX 65536
#define BATCH 256

struct rkey {
  struct rkey *next;
  uint32_t klen;
  uint8_t key[];
};

struct kvds_replicator {
  struct kvds_server *s;
  int copies; /* N of --replicas: this one + N - 1 */
  pthread_mutex_t lock;
  pthread_cond_t cv;
  struct rkey *head, *tail;
  size_t n;
  int stopping;
  pthread_t th;
  atomic_uint_fast64_t made, failed, skipped;
};

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
  k->next = NULL;
  k->klen = klen;
  memcpy(k->key, key, klen);
  if (r->tail)
    r->tail->next = k;
  else
    r->head = k;
  r->tail = k;
  if (r->n++ == 0)
    pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->lock);
}

static void *repl_main(void *arg) {
  struct kvds_replicator *r = arg;
  struct kvds_iov iov[BATCH];
  struct rkey *taken[BATCH];
  pthread_mutex_lock(&r->lock);
  for (;;) {
    while (!r->stopping && !r->head)
      pthread_cond_wait(&r->cv, &r->lock);
    if (r->stopping)
      break;
    size_t m = 0;
    while (r->head && m < BATCH) {
      struct rkey *k = r->head;
      r->head = k->next;
      taken[m] = k;
      iov[m] = (struct kvds_iov){k->key, k->klen};
      m++;
    }
    if (!r->head)
      r->tail = NULL;
    r->n -= m;
    pthread_mutex_unlock(&r->lock);
    size_t made = 0, failed = 0;
    uint64_t deadline =
        kvds_now_us() + (uint64_t)r->s->cfg.pull_timeout_ms * 1000u + 1000000u;
    kvds__cluster_replicate(r->s, m, iov, r->copies, deadline, &made, &failed);
    atomic_fetch_add(&r->made, made);
    atomic_fetch_add(&r->failed, failed);
    for (size_t i = 0; i < m; i++)
      free(taken[i]);
    pthread_mutex_lock(&r->lock);
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
  pthread_cond_init(&r->cv, NULL);
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
  for (struct rkey *k = r->head, *nx; k; k = nx) {
    nx = k->next;
    free(k);
  }
  pthread_cond_destroy(&r->cv);
  pthread_mutex_destroy(&r->lock);
  free(r);
}

void kvds__repl_counts(struct kvds_replicator *r, uint64_t *queued,
                       uint64_t *made, uint64_t *failed, uint64_t *skipped) {
  pthread_mutex_lock(&r->lock);
  *queued = r->n;
  pthread_mutex_unlock(&r->lock);
  *made = atomic_load(&r->made);
  *failed = atomic_load(&r->failed);
  *skipped = atomic_load(&r->skipped);
}
