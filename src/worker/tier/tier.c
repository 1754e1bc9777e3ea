/*
 * tier.c — the disk tier's life cycle (tier.h): opening the disk, the
 * thread pool and its queue, the maintenance thread (spills, retries), the
 * disk's eviction hook, deletes, counters.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "kvds/kvds.h"
#include "worker/server.h"
#include "worker/stats.h"
#include "worker/tier/internal.h"

/* How often the maintenance thread looks at spills and retries. */
#define MAINT_MS 20

void kvds__tier_lost(struct kvds_server *s, const uint8_t *key, uint32_t klen) {
  pthread_mutex_lock(&s->store.lock);
  struct kvds_object *o = kvds_store_find(&s->store, key, klen);
  if (o && o->state == KVDS_STATE_SEALED)
    kvds_store_set_ondisk(&s->store, o, 0);
  else if (!o && s->store.notify) /* (a promotion checks the index before
                                     its seal) */
    s->store.notify(key, klen, 0, s->store.notify_ud);
  pthread_mutex_unlock(&s->store.lock);
}

/* The disk removed key for its capacity. */
static void on_disk_evict(const uint8_t *key, uint32_t klen, void *ud) {
  struct kvds_server *s = ud;
  if (!s->tier || !atomic_load(&s->tier->ready))
    return; /* the scan at open: no store yet, nobody told of anything */
  kvds__tier_lost(s, key, klen);
}

int kvds__tier_queue(struct kvds_tier *t, struct tjob *j, int low) {
  pthread_mutex_lock(&t->lock);
  if (t->stopping) {
    pthread_mutex_unlock(&t->lock);
    return KVDS_E_SHUTDOWN;
  }
  struct tjob **head = low ? &t->lhead : &t->head;
  struct tjob **tail = low ? &t->ltail : &t->tail;
  j->next = NULL;
  if (*tail)
    (*tail)->next = j;
  else
    *head = j;
  *tail = j;
  pthread_cond_signal(&t->cv);
  pthread_mutex_unlock(&t->lock);
  return 0;
}

void kvds__tier_log_error(struct kvds_tier *t, const char *what,
                          const uint8_t *key, uint32_t klen, int rc) {
  uint64_t now = kvds_now_us();
  pthread_mutex_lock(&t->lock);
  int log = now - t->err_log_us > 10000000u || !t->err_log_us;
  if (log)
    t->err_log_us = now;
  pthread_mutex_unlock(&t->lock);
  if (!log)
    return;
  char k[65]; /* the key's first bytes, printable */
  uint32_t n = klen < 64 ? klen : 64;
  for (uint32_t i = 0; i < n; i++)
    k[i] = key[i] >= 0x20 && key[i] < 0x7f ? (char)key[i] : '?';
  k[n] = 0;
  kvds__logf(1,
             "disk tier: %s %s%s failed: %s (%s); more such errors are "
             "counted, logged every 10 s",
             what, k, klen > 64 ? "..." : "", kvds_strerror(rc),
             kvds_err_name(rc));
}

static void *pool_main(void *arg) {
  struct kvds_tier *t = arg;
  pthread_mutex_lock(&t->lock);
  for (;;) {
    while (!t->stopping && !t->head && !t->lhead)
      pthread_cond_wait(&t->cv, &t->lock);
    /* reads, writes and spills before the looks of waiting GETs */
    int low = !t->head;
    struct tjob **head = low ? &t->lhead : &t->head;
    struct tjob *j = *head;
    if (!j)
      break; /* stopping, nothing left */
    *head = j->next;
    if (!*head)
      *(low ? &t->ltail : &t->tail) = NULL;
    pthread_mutex_unlock(&t->lock);
    j->run(t, j);
    pthread_mutex_lock(&t->lock);
  }
  pthread_mutex_unlock(&t->lock);
  return NULL;
}

static void *maint_main(void *arg) {
  struct kvds_tier *t = arg;
  pthread_mutex_lock(&t->lock);
  while (!t->stopping) {
    pthread_mutex_unlock(&t->lock);
    if (t->policy == KVDS_DISK_SPILL)
      kvds__tier_spill_run(t);
    kvds__tier_retries_run(t, kvds_now_us());
    pthread_mutex_lock(&t->lock);
    if (t->stopping)
      break;
    kvds_cond_wait_until(&t->mcv, &t->lock, kvds_deadline_ms(MAINT_MS));
  }
  pthread_mutex_unlock(&t->lock);
  return NULL;
}

static const char *const policy_name[] = {"spill", "write-through",
                                          "read-only"};

int kvds__tier_open(struct kvds_server *s) {
  const struct kvds_worker_config *cfg = &s->cfg;
  if (cfg->tier != KVDS_TIER_POSIX)
    return 0;
  struct kvds_tier *t = calloc(1, sizeof *t);
  if (!t)
    return -ENOMEM;
  t->s = s;
  t->policy = cfg->disk_policy;
  t->probing = t->policy != KVDS_DISK_SPILL;
  t->nthreads = cfg->disk_threads > 0 ? cfg->disk_threads : 2;
  struct kvds_disk_config dc = {.dir = cfg->disk_dir,
                                .capacity = cfg->disk_capacity,
                                .fsync = cfg->disk_fsync,
                                .read_only = t->policy == KVDS_DISK_READ_ONLY,
                                .direct = 1,
                                .scan_threads = t->nthreads,
                                .on_evict = on_disk_evict,
                                .ud = s};
  char err[512] = "";
  uint64_t t0 = kvds_now_us();
  int rc = kvds_disk_open(&dc, &t->disk, err, sizeof err);
  if (rc) {
    /* err names the directory ("disk: cannot create DIR: ...") */
    if (err[0])
      kvds__logf(0, "disk tier: %s", err);
    else
      kvds__logf(0, "disk tier: --disk-dir %s: %s", cfg->disk_dir,
                 kvds_strerror(rc));
    free(t);
    return rc;
  }
  struct kvds_disk_counters dcnt;
  kvds_disk_counters(t->disk, &dcnt);
  kvds__logf(2,
             "disk tier: %s, %s, %llu objects (%llu bytes) indexed in %llu ms "
             "(%llu files scanned, %llu bad)",
             cfg->disk_dir, policy_name[t->policy],
             (unsigned long long)dcnt.objects, (unsigned long long)dcnt.bytes,
             (unsigned long long)((kvds_now_us() - t0) / 1000),
             (unsigned long long)dcnt.scan_files,
             (unsigned long long)dcnt.scan_bad);
  pthread_mutex_init(&t->lock, NULL);
  kvds_cond_init_mono(&t->cv);
  kvds_cond_init_mono(&t->mcv);
  t->res = (struct kvds_resolver){&kvds__tier_ops, t};
  s->tier = t;
  return 0;
}

int kvds__tier_start(struct kvds_server *s) {
  struct kvds_tier *t = s->tier;
  if (!t)
    return 0;
  t->threads = calloc((size_t)t->nthreads, sizeof *t->threads);
  int rc = t->threads ? 0 : -ENOMEM;
  for (; !rc && t->started < t->nthreads; t->started++)
    if ((rc = -pthread_create(&t->threads[t->started], NULL, pool_main, t)))
      break;
  if (!rc && !(rc = -pthread_create(&t->maint, NULL, maint_main, t)))
    t->maint_started = 1;
  s->store.spill = t->policy == KVDS_DISK_SPILL;
  atomic_store(&t->ready, 1);
  if (rc)
    kvds__logf(0, "disk tier: cannot start its threads: %s", kvds_strerror(rc));
  return rc;
}

void kvds__tier_stop(struct kvds_server *s) {
  struct kvds_tier *t = s->tier;
  if (!t)
    return;
  pthread_mutex_lock(&t->lock);
  t->stopping = 1;
  pthread_cond_broadcast(&t->cv);
  pthread_cond_broadcast(&t->mcv);
  pthread_mutex_unlock(&t->lock);
  /* The pool drains its queues first: every job lets its wait go. */
  for (int i = 0; i < t->started; i++)
    pthread_join(t->threads[i], NULL);
  t->started = 0;
  if (t->maint_started)
    pthread_join(t->maint, NULL);
  t->maint_started = 0;
  kvds__tier_retries_drop(t);
  s->store.spill = 0;
}

void kvds__tier_free(struct kvds_server *s) {
  struct kvds_tier *t = s->tier;
  if (!t)
    return;
  kvds__tier_stop(s);
  s->tier = NULL;
  kvds_disk_close(t->disk);
  pthread_cond_destroy(&t->cv);
  pthread_cond_destroy(&t->mcv);
  pthread_mutex_destroy(&t->lock);
  free(t->threads);
  free(t);
}

const struct kvds_resolver *kvds__tier_resolver(struct kvds_tier *t) {
  return &t->res;
}

int kvds__tier_has(struct kvds_tier *t, const uint8_t *key, uint32_t klen) {
  return kvds_disk_has(t->disk, key, klen, NULL);
}

int kvds__tier_probes(const struct kvds_tier *t) {
  return t->probing;
}

int kvds__tier_write_through(const struct kvds_tier *t) {
  return t->policy == KVDS_DISK_WRITE_THROUGH;
}

int kvds__tier_delete(struct kvds_tier *t, const uint8_t *key, uint32_t klen) {
  if (t->policy == KVDS_DISK_READ_ONLY)
    return kvds_disk_has(t->disk, key, klen, NULL) ? KVDS_E_STATE
                                                   : KVDS_E_NOTFOUND;
  return kvds_disk_remove(t->disk, key, klen);
}

struct foreach_ctx {
  void (*fn)(const uint8_t *key, uint32_t klen, void *ud);
  void *ud;
};

static void foreach_one(const uint8_t *key, uint32_t klen, uint64_t size,
                        void *ud) {
  struct foreach_ctx *fc = ud;
  (void)size;
  fc->fn(key, klen, fc->ud);
}

void kvds__tier_foreach(struct kvds_tier *t,
                        void (*fn)(const uint8_t *key, uint32_t klen, void *ud),
                        void *ud) {
  struct foreach_ctx fc = {fn, ud};
  kvds_disk_foreach(t->disk, foreach_one, &fc);
}

void kvds__tier_stats(struct kvds_server *s, struct kvds__stats *out) {
  struct kvds_tier *t = s->tier;
  if (!t)
    return;
  struct kvds_disk_counters c;
  kvds_disk_counters(t->disk, &c);
  out->disk_policy = (uint64_t)t->policy + 1;
  out->disk_objects = c.objects;
  out->disk_bytes = c.bytes;
  /* a read-only worker removes nothing: no capacity it keeps to */
  out->disk_capacity = t->policy == KVDS_DISK_READ_ONLY ? 0 : c.capacity;
  out->disk_writes = c.writes;
  out->disk_write_bytes = c.write_bytes;
  out->disk_write_errors = c.write_errors;
  out->disk_reads = c.reads;
  out->disk_read_bytes = c.read_bytes;
  out->disk_corrupt = c.corrupt + c.scan_bad; /* read, or seen at the scan */
  out->disk_evictions = c.evictions;
  out->disk_spills = atomic_load(&t->spills);
}
