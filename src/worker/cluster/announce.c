/*
 * announce.c — the directory shard of this worker (the keys it is home of:
 * who holds them) and announcements: ANNOUNCE from peers goes into the
 * shard; every seal and every eviction/deletion here is queued by the
 * store hook and told to the key's home, batched, by the maintenance
 * thread; after a view change the keys whose home moved are announced
 * again (internal.h).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/array.h"
#include "common/clock.h"
#include "common/util.h"
#include "worker/cluster/internal.h"
#include "worker/tier/tier.h"

#define ANNOUNCE_BATCH 4096
#define ANNOUNCE_QUEUE_MAX (1u << 20)

/* ---- the directory shard ------------------------------------------------ */

/* Taken only while the owner is live in our view with that epoch (a static
 * peer's epoch is not known, 0: its id must do). */
int kvds__shard_announce(void *self, const char *owner, uint64_t epoch,
                         uint32_t n, const struct kvds_proto_item *it,
                         const uint8_t *const *keys) {
  struct kvds_cluster *cl = self;
  pthread_mutex_lock(&cl->lock);
  struct kvds_peer *p = kvds__peer_find_locked(cl, owner, strlen(owner));
  int live = p && p->live && (p->epoch == 0 || p->epoch == epoch);
  pthread_mutex_unlock(&cl->lock);
  if (!live)
    return KVDS_E_STATE;
  int rc = 0;
  for (uint32_t i = 0; i < n; i++) {
    int r = it[i].a
                ? kvds_dir_add(cl->dir, keys[i], it[i].klen, owner, epoch)
                : kvds_dir_remove(cl->dir, keys[i], it[i].klen, owner, epoch);
    if (r < 0 && !rc)
      rc = r;
  }
  return rc;
}

/* Adds to r, for each key, an item (status, a = number of owners) and one
 * item per owner (key = id, a = epoch): this worker's directory, plus this
 * worker itself when it holds the key and the directory does not say so
 * yet (its announcement is on the way). */
void kvds__shard_locate_local(void *cl_, struct reply *r, uint32_t n,
                              const uint8_t *const *keys,
                              const uint32_t *klens) {
  struct kvds_cluster *cl = cl_;
  struct kvds_server *s = cl->s;
  struct kvds_dir_owner ow[LOCATE_MAX_OWNERS];
  const char *self = cl->self_id;
  uint64_t self_epoch = cl->self_epoch;
  for (uint32_t i = 0; i < n; i++) {
    size_t no =
        kvds_dir_lookup(cl->dir, keys[i], klens[i], ow, LOCATE_MAX_OWNERS);
    if (no > LOCATE_MAX_OWNERS)
      no = LOCATE_MAX_OWNERS;
    pthread_mutex_lock(&s->store.lock);
    struct kvds_object *o = kvds_store_find(&s->store, keys[i], klens[i]);
    int here = o && o->state == KVDS_STATE_SEALED;
    pthread_mutex_unlock(&s->store.lock);
    for (size_t k = 0; here && k < no; k++)
      if (strcmp(ow[k].id, self) == 0)
        here = 0; /* listed already */
    kvds__reply_item(r, no + here ? 0 : KVDS_E_NOTFOUND, no + here, 0, 0, 0,
                     NULL, 0);
    if (here)
      kvds__reply_item(r, 0, self_epoch, 0, 0, 0, self, (uint32_t)strlen(self));
    for (size_t k = 0; k < no; k++)
      kvds__reply_item(r, 0, ow[k].epoch, 0, 0, 0, ow[k].id,
                       (uint32_t)strlen(ow[k].id));
  }
}

/* ---- announcements out --------------------------------------------------- */

/* Store notify hook (store lock held): queue the change for the home. */
void kvds__announce_on_store(const uint8_t *key, uint32_t klen, int sealed,
                             void *ud) {
  struct kvds_cluster *cl = ud;
  if (sealed == 1 && cl->repl) /* written here: copies go out */
    kvds__repl_queue_locked(cl->repl, key, klen);
  struct ann *a = malloc(sizeof *a + klen);
  pthread_mutex_lock(&cl->lock);
  if (!a || cl->nann >= ANNOUNCE_QUEUE_MAX) {
    /* Cannot queue it: a later full pass tells the homes everything. */
    cl->reannounce_all = 1;
    pthread_mutex_unlock(&cl->lock);
    free(a);
    return;
  }
  a->next = NULL;
  a->add = sealed != 0;
  a->klen = klen;
  memcpy(a->key, key, klen);
  if (cl->atail)
    cl->atail->next = a;
  else
    cl->ahead = a;
  cl->atail = a;
  if (cl->nann++ == 0)
    pthread_cond_signal(&cl->maint_cv);
  pthread_mutex_unlock(&cl->lock);
}

/* Items of one ANNOUNCE under construction, for one home. */
struct abatch {
  struct kvds_proto_item *it;
  const void **keys;
  size_t n, cap, kcap;
};

static int abatch_add(struct abatch *b, const uint8_t *key, uint32_t klen,
                      int add) {
  if (KVDS_ARRAY_GROW(b->it, b->cap, b->n + 1, 64) ||
      KVDS_ARRAY_GROW(b->keys, b->kcap, b->n + 1, 64))
    return -ENOMEM;
  b->it[b->n] = (struct kvds_proto_item){.klen = klen, .a = (uint64_t)add};
  b->keys[b->n++] = key;
  return 0;
}

/* Sends the batch for home m (items from 1 on; item 0 is ours). */
static void abatch_send(struct kvds_cluster *cl,
                        const struct kvds_view_member *m, struct abatch *b) {
  if (b->n <= 1)
    return;
  uint64_t deadline = kvds_deadline_ms(2000);
  for (size_t off = 1; off < b->n; off += ANNOUNCE_BATCH - 1) {
    size_t cnt =
        b->n - off < ANNOUNCE_BATCH - 1 ? b->n - off : ANNOUNCE_BATCH - 1;
    /* item 0 (the owner) goes in front of this slice */
    struct kvds_proto_item save = b->it[off - 1];
    const void *savek = b->keys[off - 1];
    b->it[off - 1] = b->it[0];
    b->keys[off - 1] = b->keys[0];
    int err = 0, rc;
    uint64_t gen;
    struct kvds_peerconn *c = kvds__pconn_get(cl, m->ud, deadline, &gen, &err);
    if (c) {
      kvds_peerconn_set_timeout(c, 2000);
      rc = kvds_peerconn_call(c, KVDS_OP_ANNOUNCE, KVDS_PF_LOCAL, 0, cnt + 1,
                              b->it + off - 1, b->keys + off - 1, NULL, NULL);
      kvds__pconn_put(cl, m->ud, c, gen);
    } else {
      rc = err;
    }
    b->it[off - 1] = save;
    b->keys[off - 1] = savek;
    if (rc) {
      atomic_fetch_add(&cl->announce_errors, 1);
      if (rc != KVDS_E_PEER && rc != KVDS_E_SHUTDOWN)
        kvds__cluster_reannounce_all(cl); /* a live home missed it */
      kvds__logf(3, "cluster: announce to %s failed: %s", m->id,
                 kvds_strerror(rc));
    } else {
      atomic_fetch_add(&cl->announced, cnt);
    }
  }
}

/* Routes (key, add) to its home under v: our own shard directly, a peer's
 * into its batch (batches[] parallel to v->m). */
static int route(struct kvds_cluster *cl, const struct kvds_view *v,
                 struct abatch *batches, const uint8_t *key, uint32_t klen,
                 int add) {
  size_t h = kvds_view_home(v, key, klen);
  if (!vpeer(v, h)) {
    if (add)
      return kvds_dir_add(cl->dir, key, klen, cl->self_id, cl->self_epoch) < 0
                 ? -ENOMEM
                 : 0;
    kvds_dir_remove(cl->dir, key, klen, cl->self_id, cl->self_epoch);
    return 0;
  }
  return abatch_add(&batches[h], key, klen, add);
}

static struct abatch *batches_new(struct kvds_cluster *cl,
                                  const struct kvds_view *v) {
  struct abatch *b = calloc(v->n ? v->n : 1, sizeof *b);
  if (!b)
    return NULL;
  for (size_t i = 0; i < v->n; i++)
    if (abatch_add(&b[i], (const uint8_t *)cl->self_id,
                   (uint32_t)strlen(cl->self_id), 0)) {
      for (size_t k = 0; k <= i; k++) {
        free(b[k].it);
        free(b[k].keys);
      }
      free(b);
      return NULL;
    }
  for (size_t i = 0; i < v->n; i++)
    b[i].it[0].a = cl->self_epoch;
  return b;
}

static void batches_send_free(struct kvds_cluster *cl,
                              const struct kvds_view *v, struct abatch *b) {
  for (size_t i = 0; i < v->n; i++) {
    if (vpeer(v, i))
      abatch_send(cl, &v->m[i], &b[i]);
    free(b[i].it);
    free(b[i].keys);
  }
  free(b);
}

/* Sends what the store queued since the last call. */
void kvds__announce_queued(struct kvds_cluster *cl) {
  struct kvds_view v;
  pthread_mutex_lock(&cl->lock);
  struct ann *list = cl->ahead;
  cl->ahead = cl->atail = NULL;
  cl->nann = 0;
  int rc = kvds_view_copy(&v, &cl->view);
  pthread_mutex_unlock(&cl->lock);
  struct abatch *b = rc ? NULL : batches_new(cl, &v);
  int lost = !b;
  for (struct ann *a = list; a && b; a = a->next)
    if (route(cl, &v, b, a->key, a->klen, a->add))
      lost = 1;
  if (b)
    batches_send_free(cl, &v, b);
  while (list) {
    struct ann *n = list->next;
    free(list);
    list = n;
  }
  kvds_view_free(&v);
  if (lost) {
    kvds__cluster_reannounce_all(cl);
  }
}

/* Our sealed keys, copied out of the store. */
struct keyset {
  uint8_t *buf;
  size_t len, cap;
  size_t n;
  int oom;
};

static void keyset_add_key(const uint8_t *key, uint32_t klen, void *ud) {
  struct keyset *ks = ud;
  size_t need = 4 + (size_t)klen;
  if (ks->oom)
    return;
  if (KVDS_ARRAY_GROW(ks->buf, ks->cap, ks->len + need, 65536)) {
    ks->oom = 1;
    return;
  }
  kvds_put_u32(ks->buf + ks->len, klen);
  memcpy(ks->buf + ks->len + 4, key, klen);
  ks->len += need;
  ks->n++;
}

static void keyset_add(const struct kvds_object *o, void *ud) {
  keyset_add_key(o->key, o->inode.klen, ud);
}

/* Announces our keys whose home differs between old and new (all of them
 * when old is NULL) to their home in new. */
int kvds__announce_moved(struct kvds_cluster *cl, const struct kvds_view *old,
                         const struct kvds_view *nv) {
  struct kvds_server *s = cl->s;
  struct keyset ks = {0};
  pthread_mutex_lock(&s->store.lock);
  kvds_store_foreach_sealed(&s->store, keyset_add, &ks);
  pthread_mutex_unlock(&s->store.lock);
  if (s->tier) /* what is on disk is held here too */
    kvds__tier_foreach(s->tier, keyset_add_key, &ks);
  struct abatch *b = ks.oom ? NULL : batches_new(cl, nv);
  int rc = b ? 0 : -ENOMEM;
  size_t moved = 0;
  for (size_t off = 0; b && off < ks.len;) {
    uint32_t kl = kvds_get_u32(ks.buf + off);
    const uint8_t *k = ks.buf + off + 4;
    off += 4 + kl;
    if (old && !kvds_view_home_moved(old, nv, k, kl))
      continue;
    moved++;
    if (route(cl, nv, b, k, kl, 1))
      rc = -ENOMEM;
  }
  if (b)
    batches_send_free(cl, nv, b);
  if (moved)
    kvds__logf(3, "cluster: re-announced %zu of %zu keys", moved, ks.n);
  free(ks.buf);
  return rc;
}
