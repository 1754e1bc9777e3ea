/*
 * write.c — objects copied out to the disk: write-through seals (answered
 * once their files are written) and spills (the maintenance thread copies
 * the coldest objects out ahead of their eviction, so that evicting them
 * loses nothing).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "kvds/kvds.h"
#include "worker/server.h"
#include "worker/tier/internal.h"
#include "worker/wait.h"

/* After a failed spill (disk full, unwritable) spills pause this long. */
#define SPILL_PAUSE_MS 1000

/* ---- write-through --------------------------------------------------------*/

struct pgroup {
  struct kvds_wait *w; /* held */
  uint32_t n;
  struct kvds_object **objs; /* a pin of the tier's on each (or NULL) */
  int32_t *status;
  atomic_uint parts;
};

struct pjob {
  struct tjob base;
  struct pgroup *g;
  uint32_t lo, hi;
};

static int write_obj(struct kvds_tier *t, struct kvds_object *o) {
  struct kvds_store *st = &t->s->store;
  int rc = kvds_disk_write(t->disk, o->key, o->inode.klen,
                           kvds_store_data(st, o), o->size, o->checksum);
  if (rc)
    kvds__tier_log_error(t, "writing", o->key, o->inode.klen, rc);
  return rc;
}

/* What to do once o's file was written (rc 0) or not, decided under the
 * store lock: o still the key's object — mark whether the disk has its
 * copy now (the disk may have evicted it already); o deleted meanwhile —
 * its file must not outlive it: remove it, unless a newer object of the
 * key took its place; if that one's copy was already on disk, ours may
 * have replaced it: write it again (*again, pinned). */
enum { AFTER_NONE, AFTER_REMOVE, AFTER_REWRITE };

static int after_write_locked(struct kvds_tier *t, struct kvds_object *o,
                              int rc, struct kvds_object **again) {
  struct kvds_store *st = &t->s->store;
  const uint8_t *key = o->key;
  uint32_t klen = o->inode.klen;
  if (o->indexed) {
    if (!rc)
      kvds_store_set_ondisk(st, o, kvds_disk_has(t->disk, key, klen, NULL));
    return AFTER_NONE;
  }
  if (rc)
    return AFTER_NONE;
  struct kvds_object *cur = kvds_store_find(st, key, klen);
  if (!cur)
    return AFTER_REMOVE;
  if (cur->state == KVDS_STATE_SEALED && cur->ondisk) {
    kvds_store_pin(st, cur);
    *again = cur;
    return AFTER_REWRITE;
  }
  return AFTER_NONE; /* its own write (write-through, spill) comes later */
}

/* The second half of after_write_locked, the store lock not held. */
static void after_write(struct kvds_tier *t, int what, const uint8_t *key,
                        uint32_t klen, struct kvds_object *again) {
  struct kvds_store *st = &t->s->store;
  if (what == AFTER_REMOVE) {
    kvds_disk_remove(t->disk, key, klen);
  } else if (what == AFTER_REWRITE) {
    int rc = write_obj(t, again);
    pthread_mutex_lock(&st->lock);
    if (again->indexed)
      kvds_store_set_ondisk(st, again,
                            !rc && kvds_disk_has(t->disk, key, klen, NULL));
    kvds_store_unpin(st, again);
    pthread_mutex_unlock(&st->lock);
  }
}

static void pgroup_done(struct pgroup *g) {
  kvds_wait_answer(g->w, g->status, NULL, 0, 0);
  kvds_wait_unhold(g->w);
  free(g->objs);
  free(g->status);
  free(g);
}

/* Settles objs[lo, hi) with rc (or by writing them when rc is 0). */
static void persist_range(struct kvds_tier *t, struct pgroup *g, uint32_t lo,
                          uint32_t hi, int rc) {
  struct kvds_store *st = &t->s->store;
  for (uint32_t i = lo; i < hi; i++) {
    struct kvds_object *o = g->objs[i];
    if (!o)
      continue;
    int r = rc ? rc : write_obj(t, o);
    struct kvds_object *again = NULL;
    pthread_mutex_lock(&st->lock);
    int what = after_write_locked(t, o, r, &again);
    pthread_mutex_unlock(&st->lock);
    after_write(t, what, o->key, o->inode.klen, again); /* o pinned */
    pthread_mutex_lock(&st->lock);
    kvds_store_unpin(st, o);
    pthread_mutex_unlock(&st->lock);
    g->status[i] = r;
  }
  if (atomic_fetch_sub(&g->parts, 1) == 1)
    pgroup_done(g);
}

static void pjob_run(struct kvds_tier *t, struct tjob *tj) {
  struct pjob *j = (struct pjob *)tj;
  struct pgroup *g = j->g;
  uint32_t lo = j->lo, hi = j->hi;
  free(j);
  persist_range(t, g, lo, hi, 0);
}

void kvds__tier_persist(struct kvds_tier *t, struct kvds_wait *w, uint32_t n,
                        struct kvds_object **objs) {
  struct kvds_store *st = &t->s->store;
  struct pgroup *g = calloc(1, sizeof *g);
  if (g) {
    g->objs = malloc((n ? n : 1) * sizeof *g->objs);
    g->status = calloc(n ? n : 1, sizeof *g->status);
  }
  if (!g || !g->objs || !g->status) {
    /* No memory: the seals are answered -ENOMEM (their DRAM copies stay). */
    int32_t *st32 = calloc(n ? n : 1, sizeof *st32);
    pthread_mutex_lock(&st->lock);
    for (uint32_t i = 0; i < n; i++)
      if (objs[i])
        kvds_store_unpin(st, objs[i]);
    pthread_mutex_unlock(&st->lock);
    for (uint32_t i = 0; st32 && i < n; i++)
      st32[i] = -ENOMEM;
    if (st32)
      kvds_wait_answer(w, st32, NULL, 0, 0);
    free(st32);
    if (g) {
      free(g->objs);
      free(g->status);
      free(g);
    }
    return;
  }
  memcpy(g->objs, objs, n * sizeof *objs);
  g->n = n;
  kvds_wait_hold(w);
  g->w = w;
  uint32_t count = 0;
  for (uint32_t i = 0; i < n; i++)
    count += objs[i] != NULL;
  uint32_t parts =
      count < (uint32_t)t->nthreads ? count : (uint32_t)t->nthreads;
  if (!parts)
    parts = 1;
  atomic_store(&g->parts, parts);
  for (uint32_t p = 0; p < parts; p++) {
    uint32_t lo = (uint32_t)((uint64_t)n * p / parts);
    uint32_t hi = (uint32_t)((uint64_t)n * (p + 1) / parts);
    struct pjob *j = malloc(sizeof *j);
    if (j) {
      *j = (struct pjob){.base.run = pjob_run, .g = g, .lo = lo, .hi = hi};
      if (!kvds__tier_queue(t, &j->base, 0))
        continue;
      free(j);
      persist_range(t, g, lo, hi, KVDS_E_SHUTDOWN);
    } else {
      persist_range(t, g, lo, hi, -ENOMEM);
    }
  }
}

/* ---- spills ---------------------------------------------------------------*/

struct sjob {
  struct tjob base;
  struct kvds_object *o; /* o->io set: not evicted, not freed */
  uint32_t klen;
  uint8_t key[];
};

static void sjob_run(struct kvds_tier *t, struct tjob *tj) {
  struct sjob *j = (struct sjob *)tj;
  struct kvds_store *st = &t->s->store;
  int rc = write_obj(t, j->o);
  struct kvds_object *again = NULL;
  pthread_mutex_lock(&st->lock);
  int what = after_write_locked(t, j->o, rc, &again);
  int deleted = kvds_store_io_done(st, j->o); /* j->o may be freed now */
  pthread_mutex_unlock(&st->lock);
  after_write(t, what, j->key, j->klen, again);
  if (!rc && !deleted) /* (failures: the disk's write_errors) */
    atomic_fetch_add(&t->spills, 1);
  pthread_mutex_lock(&t->lock);
  t->spills_inflight--;
  if (rc)
    t->spill_pause_until_us = kvds_deadline_ms(SPILL_PAUSE_MS);
  pthread_cond_signal(&t->mcv);
  pthread_mutex_unlock(&t->lock);
  free(j);
}

/*
 * Eviction takes objects from the cold end of the LRU once the pool passes
 * its high watermark. Once the pool is within `window` of the watermark —
 * half the pool, or twice what one eviction round frees if more — spills
 * copy out the coldest objects that have no copy yet (so a writer briefly
 * faster than the disk still finds its victims copied).
 * At most two writes per disk thread are in flight.
 */
void kvds__tier_spill_run(struct kvds_tier *t) {
  struct kvds_store *st = &t->s->store;
  uint64_t now = kvds_now_us();
  pthread_mutex_lock(&t->lock);
  int room = 2 * t->nthreads - t->spills_inflight;
  int paused = now < t->spill_pause_until_us;
  pthread_mutex_unlock(&t->lock);
  if (room <= 0 || paused)
    return;
  struct kvds_object **pick = malloc((size_t)room * sizeof *pick);
  if (!pick)
    return;
  int n = 0;
  pthread_mutex_lock(&st->lock);
  uint64_t cap = st->alloc.capacity, used = st->alloc.used;
  uint64_t high = (uint64_t)(st->policy.high_watermark * (double)cap);
  uint64_t window = cap / 2;
  uint64_t round = (uint64_t)(2 * st->policy.eviction_ratio * (double)cap);
  if (round > window)
    window = round;
  if (used + window >= high) {
    /* the coldest objects with no copy (the dirty list: no walk over the
     * ones already copied) */
    struct kvds_object *o = kvds_store_dirty_oldest(st), *next;
    for (; o && n < room; o = next) {
      next = kvds_store_dirty_next(st, o);
      o->io = 1;
      pick[n++] = o;
    }
  }
  struct sjob **jobs = calloc(n ? (size_t)n : 1, sizeof *jobs);
  for (int i = 0; i < n; i++) {
    uint32_t kl = pick[i]->inode.klen;
    if (jobs && (jobs[i] = malloc(sizeof **jobs + kl))) {
      jobs[i]->base.run = sjob_run;
      jobs[i]->o = pick[i];
      jobs[i]->klen = kl;
      memcpy(jobs[i]->key, pick[i]->key, kl);
    } else {
      kvds_store_io_done(st, pick[i]); /* no memory: not now */
    }
  }
  pthread_mutex_unlock(&st->lock);
  for (int i = 0; jobs && i < n; i++) {
    if (!jobs[i])
      continue;
    pthread_mutex_lock(&t->lock);
    t->spills_inflight++;
    pthread_mutex_unlock(&t->lock);
    if (kvds__tier_queue(t, &jobs[i]->base, 0)) { /* stopping */
      pthread_mutex_lock(&st->lock);
      kvds_store_io_done(st, jobs[i]->o);
      pthread_mutex_unlock(&st->lock);
      pthread_mutex_lock(&t->lock);
      t->spills_inflight--;
      pthread_mutex_unlock(&t->lock);
      free(jobs[i]);
    }
  }
  free(jobs);
  free(pick);
}
