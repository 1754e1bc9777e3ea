/*
 * read.c — the disk tier as a miss resolver (resolver.h): GET misses the
 * disk has are read straight into new pool objects and sealed (waking the
 * request); finds on a shared directory look for the files; what the disk
 * lacks goes to the next resolver (the cluster) or is settled here: at
 * once for a GET that does not wait, else when the client's wait ends (a
 * shared directory is looked at again meanwhile: another worker may write
 * the file).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "kvds/kvds.h"
#include "worker/server.h"
#include "worker/tier/internal.h"
#include "worker/wait.h"

/* Keys per read job at least (a GET's keys are spread over the threads). */
#define KEYS_PER_JOB 2
/* A GET waiting for keys on a shared directory looks again after this,
 * doubling up to RETRY_MAX_MS. */
#define RETRY_MIN_MS 20
#define RETRY_MAX_MS 320

/* A request the tier works on. */
struct group {
  struct kvds_tier *t;
  struct kvds_wait *w; /* held */
  int kind;
  uint8_t *hint;
  uint32_t hlen;
  uint64_t deadline_us;        /* the request's */
  int wait_ms;                 /* the client's */
  uint64_t client_deadline_us; /* GET: when its wait ends */
  int retry_ms;                /* the next retry's delay */
  const struct kvds_resolver *next;
  uint8_t *found;    /* finds: the file is there */
  uint8_t *busy;     /* GET: another request is reading it in (its seal
                        settles the key) */
  int low;           /* a look again: behind other jobs */
  atomic_uint parts; /* jobs not finished */
};

struct rjob {
  struct tjob base;
  struct group *g;
  uint32_t n;
  uint32_t idx[];
};

/* A GET whose keys did not turn up yet. */
struct retry {
  struct retry *next;
  struct group *g; /* its wait held */
  uint64_t at_us;  /* look again then (shared directory) */
};

static void group_free(struct group *g) {
  if (g->w)
    kvds_wait_unhold(g->w);
  free(g->hint);
  free(g->found);
  free(g->busy);
  free(g);
}

/* promote: another request is reading the key in, or writing it */
#define BUSY 1

/* Reads key's file into a new object of the pool and seals it (waking
 * whoever waits for it). 0 when it is here now; BUSY when someone else
 * creates it (whose seal wakes the waiters); KVDS_E_NOTFOUND (also when
 * the key was deleted while it was read), KVDS_E_CHECKSUM (corrupt: not
 * served), KVDS_E_NOSPACE, -errno. */
static int promote(struct kvds_tier *t, const uint8_t *key, uint32_t klen) {
  struct kvds_server *s = t->s;
  struct kvds_disk_obj fo;
  int rc = kvds_disk_open_obj(t->disk, key, klen, &fo);
  if (rc) {
    if (rc == KVDS_E_CHECKSUM)
      kvds__tier_lost(t->s, key, klen);
    else if (rc != KVDS_E_NOTFOUND)
      kvds__tier_log_error(t, "opening", key, klen, rc);
    return rc;
  }
  struct kvds_object *o = NULL;
  pthread_mutex_lock(&s->store.lock);
  rc = kvds_store_create(&s->store, key, klen, fo.size, &o);
  if (!rc)
    o->promo = 1; /* a DELETE now dooms it rather than failing */
  pthread_mutex_unlock(&s->store.lock);
  if (rc) {
    kvds_disk_close_obj(&fo);
    return rc == KVDS_E_EXISTS ? BUSY : rc;
  }
  rc =
      kvds_disk_read_obj(t->disk, key, klen, &fo, kvds_store_data(&s->store, o),
                         kvds_alloc_rounded(fo.size));
  pthread_mutex_lock(&s->store.lock);
  /* Deleted while it was read (the DELETE dropped the index entry, or
   * doomed the object): never visible. Also what tells whether the file is
   * still there for a later eviction (the disk may have evicted it). */
  if (!rc && (o->doomed || !kvds_disk_has(t->disk, key, klen, NULL)))
    rc = KVDS_E_NOTFOUND;
  o->promo = 0;
  if (!rc) {
    o->ondisk = 1;  /* evicting it again loses nothing (not on the LRU yet) */
    o->replica = 1; /* a copy: --replicas does not copy it on */
    kvds_store_seal(&s->store, o, fo.checksum); /* wakes the request */
  } else {
    kvds_store_abort(&s->store, o); /* never visible */
  }
  pthread_mutex_unlock(&s->store.lock);
  if (rc == KVDS_E_CHECKSUM)
    kvds__tier_lost(t->s, key, klen);
  else if (rc && rc != KVDS_E_NOTFOUND)
    kvds__tier_log_error(t, "reading", key, klen, rc);
  return rc;
}

/* Fails the open keys of w but those `skip` marks (NULL: none). */
static void fail_open(struct kvds_wait *w, int32_t status,
                      const uint8_t *skip) {
  uint32_t n = kvds_wait_count(w);
  uint32_t *idx = malloc((n ? n : 1) * sizeof *idx);
  int32_t *st = malloc((n ? n : 1) * sizeof *st);
  if (idx && st) {
    uint32_t m = kvds_wait_open(w, idx), k = 0;
    for (uint32_t i = 0; i < m; i++)
      if (!skip || !skip[idx[i]]) {
        idx[k] = idx[i];
        st[k++] = status;
      }
    kvds_wait_fail(w, k, idx, st);
  }
  /* else: the request's timer answers it */
  free(idx);
  free(st);
}

/* Finds answered here (no next resolver): what this worker has, DRAM or
 * disk. */
static void answer_find(struct group *g) {
  struct kvds_wait *w = g->w;
  uint32_t n = kvds_wait_count(w);
  int32_t *st = malloc((n ? n : 1) * sizeof *st);
  struct reply r;
  kvds__reply_init(&r);
  if (!st)
    return; /* the request's timer answers it */
  for (uint32_t i = 0; i < n; i++)
    st[i] = kvds_wait_local(w, i);
  if (g->kind != KVDS_WAIT_EXISTS) /* EXISTS: the server builds it */
    kvds__reply_find(&r, g->kind, n, st);
  if (!r.b.oom) {
    kvds_wait_answer(w, g->kind == KVDS_WAIT_EXISTS ? st : NULL, r.b.buf,
                     r.b.len, r.b.count);
    r.b.buf = NULL;
  }
  free(r.b.buf);
  free(st);
}

static void retry_add(struct group *g) {
  struct kvds_tier *t = g->t;
  struct retry *r = malloc(sizeof *r);
  if (!r) {
    group_free(g); /* the request's timer answers it */
    return;
  }
  r->g = g;
  r->at_us = kvds_now_us() + (uint64_t)g->retry_ms * 1000u;
  g->retry_ms = g->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : g->retry_ms * 2;
  pthread_mutex_lock(&t->lock);
  if (t->stopping) {
    pthread_mutex_unlock(&t->lock);
    free(r);
    group_free(g);
    return;
  }
  r->next = t->retries;
  t->retries = r;
  pthread_mutex_unlock(&t->lock);
}

/* Every job of g is done: hand what is left on, or settle it. */
static void group_done(struct group *g) {
  struct kvds_wait *w = g->w;
  if (kvds_now_us() >= g->deadline_us) {
    group_free(g); /* the request's timer answers it */
    return;
  }
  if (g->kind != KVDS_WAIT_GET) {
    for (uint32_t i = 0; g->found && i < kvds_wait_count(w); i++)
      if (g->found[i])
        kvds_wait_set_local(w, i, 0);
  }
  if (g->next) {
    struct kvds_miss m = {w,          g->hint, g->hlen, g->deadline_us,
                          g->wait_ms, NULL};
    kvds_resolver_submit(g->next, &m);
  } else if (g->kind != KVDS_WAIT_GET) {
    answer_find(g);
  } else if (g->wait_ms <= 0) {
    fail_open(w, KVDS_E_NOTFOUND, g->busy);
  } else if (kvds_now_us() >= g->client_deadline_us) {
    fail_open(w, KVDS_E_TIMEOUT, g->busy);
  } else {
    retry_add(g); /* keeps g */
    return;
  }
  group_free(g);
}

static void rjob_run(struct kvds_tier *t, struct tjob *tj) {
  struct rjob *j = (struct rjob *)tj;
  struct group *g = j->g;
  for (uint32_t k = 0; k < j->n && kvds_now_us() < g->deadline_us; k++) {
    uint32_t i = j->idx[k], klen;
    const uint8_t *key = kvds_wait_key(g->w, i, &klen);
    if (g->kind != KVDS_WAIT_GET) {
      struct kvds_disk_obj fo;
      if (kvds_disk_open_obj(t->disk, key, klen, &fo) == 0) {
        kvds_disk_close_obj(&fo);
        g->found[i] = 1;
      }
      continue;
    }
    int rc = promote(t, key, klen);
    if (rc == BUSY)
      g->busy[i] = 1;
    else if (rc == KVDS_E_NOSPACE) /* no room here: nobody else helps */
      kvds_wait_fail(g->w, 1, &i, &rc);
  }
  free(j);
  if (atomic_fetch_sub(&g->parts, 1) == 1)
    group_done(g);
}

/* Starts the jobs of g over keys idx[0..n) (n > 0); takes g. */
static void group_start(struct group *g, const uint32_t *idx, uint32_t n) {
  struct kvds_tier *t = g->t;
  uint32_t parts = (n + KEYS_PER_JOB - 1) / KEYS_PER_JOB;
  if (parts > (uint32_t)t->nthreads)
    parts = (uint32_t)t->nthreads;
  atomic_store(&g->parts, parts);
  for (uint32_t p = 0; p < parts; p++) {
    uint32_t lo = (uint32_t)((uint64_t)n * p / parts);
    uint32_t hi = (uint32_t)((uint64_t)n * (p + 1) / parts);
    struct rjob *j = malloc(sizeof *j + (hi - lo) * sizeof *j->idx);
    if (j) {
      j->base.run = rjob_run;
      j->g = g;
      j->n = hi - lo;
      memcpy(j->idx, idx + lo, j->n * sizeof *idx);
      if (!kvds__tier_queue(t, &j->base, g->low))
        continue;
      free(j);
    }
    /* no memory, or stopping: this part is done with nothing found */
    if (atomic_fetch_sub(&g->parts, 1) == 1)
      group_done(g);
  }
}

/* The keys of g the disk may have: GET, the open ones it has (all open
 * ones on a shared directory); finds, those not here. */
static uint32_t group_keys(struct group *g, uint32_t *idx) {
  struct kvds_tier *t = g->t;
  struct kvds_wait *w = g->w;
  uint32_t n = 0, m;
  if (g->kind == KVDS_WAIT_GET) {
    m = kvds_wait_open(w, idx);
    for (uint32_t k = 0; k < m; k++) {
      uint32_t klen;
      const uint8_t *key = kvds_wait_key(w, idx[k], &klen);
      if (t->probing || kvds_disk_has(t->disk, key, klen, NULL))
        idx[n++] = idx[k];
    }
  } else {
    m = kvds_wait_count(w);
    for (uint32_t i = 0; i < m; i++)
      if (kvds_wait_local(w, i) != 0)
        idx[n++] = i;
  }
  return n;
}

static int group_run(struct group *g) {
  uint32_t cnt = kvds_wait_count(g->w);
  uint32_t *idx = malloc((cnt ? cnt : 1) * sizeof *idx);
  if (!idx)
    return -ENOMEM;
  uint32_t n = group_keys(g, idx);
  if (n)
    group_start(g, idx, n);
  else
    group_done(g);
  free(idx);
  return 0;
}

static int tier_submit(void *self, const struct kvds_miss *m) {
  struct kvds_tier *t = self;
  struct kvds_wait *w = m->wait;
  struct group *g = calloc(1, sizeof *g);
  if (!g)
    return -ENOMEM;
  g->t = t;
  g->kind = kvds_wait_kind(w);
  g->deadline_us = m->deadline_us;
  g->wait_ms = m->wait_ms;
  g->client_deadline_us =
      m->wait_ms > 0 ? kvds_deadline_ms(m->wait_ms) : kvds_now_us();
  g->retry_ms = RETRY_MIN_MS;
  g->next = m->next && kvds_resolver_active(m->next) ? m->next : NULL;
  if (m->hlen && (g->hint = malloc(m->hlen))) {
    memcpy(g->hint, m->hint, m->hlen);
    g->hlen = m->hlen;
  }
  uint32_t n = kvds_wait_count(w) ? kvds_wait_count(w) : 1;
  if (g->kind != KVDS_WAIT_GET ? !(g->found = calloc(n, 1))
                               : !(g->busy = calloc(n, 1))) {
    group_free(g);
    return -ENOMEM;
  }
  kvds_wait_hold(w);
  g->w = w;
  int rc = group_run(g);
  if (rc)
    group_free(g);
  return rc;
}

void kvds__tier_retries_run(struct kvds_tier *t, uint64_t now_us) {
  pthread_mutex_lock(&t->lock);
  struct retry *r = t->retries, *keep = NULL, *next;
  t->retries = NULL;
  pthread_mutex_unlock(&t->lock);
  for (; r; r = next) {
    next = r->next;
    struct group *g = r->g;
    uint32_t cnt = kvds_wait_count(g->w);
    uint32_t *idx = malloc((cnt ? cnt : 1) * sizeof *idx);
    uint32_t open = idx ? kvds_wait_open(g->w, idx) : 1;
    free(idx);
    if (!open) { /* answered (sealed here, or its deadline) */
      free(r);
      group_free(g);
    } else if (now_us >= g->client_deadline_us) {
      fail_open(g->w, KVDS_E_TIMEOUT, g->busy);
      free(r);
      group_free(g);
    } else if (t->probing && now_us >= r->at_us) {
      free(r);
      g->low = 1;
      if (group_run(g)) /* looks again; may come back here */
        group_free(g);
    } else {
      r->next = keep;
      keep = r;
    }
  }
  if (!keep)
    return;
  pthread_mutex_lock(&t->lock);
  struct retry **tail = &keep;
  while (*tail)
    tail = &(*tail)->next;
  *tail = t->retries;
  t->retries = keep;
  pthread_mutex_unlock(&t->lock);
}

void kvds__tier_retries_drop(struct kvds_tier *t) {
  pthread_mutex_lock(&t->lock);
  struct retry *r = t->retries, *next;
  t->retries = NULL;
  pthread_mutex_unlock(&t->lock);
  for (; r; r = next) {
    next = r->next;
    group_free(r->g);
    free(r);
  }
}

static int tier_active(void *self) {
  (void)self;
  return 1;
}

const struct kvds_resolver_ops kvds__tier_ops = {
    .name = "disk",
    .active = tier_active,
    .submit = tier_submit,
    .announce = NULL,
    .locate_local = NULL,
    .stop = NULL, /* kvds__tier_stop drains the jobs and retries */
};
