/*
 * cluster.c — the worker's part of the cluster (docs/cluster.md):
 *
 *  - peers: every other member, with up to `pull_threads` persistent TCP
 *    connections each (net/peer.h, proving the cluster's token), opened
 *    when the member joins and kept while it lives;
 *  - the directory shard: for the keys this worker is home of (rendezvous
 *    hashing over the live members), which workers hold them;
 *  - announcements: every seal and every eviction/deletion here is told to
 *    the key's home, batched, by the maintenance thread; when the view
 *    changes, the keys whose home changed are announced again and the
 *    locations of departed workers are dropped;
 *  - jobs: a GET that misses here asks the keys' homes (or goes straight to
 *    a hinted worker) and pulls each value from an owner straight into a
 *    new object of this pool, sealed as a replica once its checksum
 *    matched; EXISTS / LOOKUP_PREFIX / LOCATE ask the homes.
 *
 * Threads: `pull_threads` job threads and one maintenance thread; the I/O
 * threads only queue jobs and answer ANNOUNCE / local LOCATE. Lock order:
 * store.lock before cl->lock; nothing here takes store.lock while holding
 * cl->lock. Blocking network calls are made with no lock held, each with a
 * deadline; stopping shuts the sockets of calls in flight.
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "cluster/directory.h"
#include "cluster/hrw.h"
#include "common/util.h"
#include "kvds/kvds.h"
#include "net/peer.h"
#include "worker/server.h"

#define CONNECT_MS 1000
#define ANNOUNCE_BATCH 4096
#define ANNOUNCE_QUEUE_MAX (1u << 20)
#define LOCATE_MAX_OWNERS 8
/* A directory query to one home gets at most this long (and at most the
 * request's deadline): a stalled home must not eat the time of the keys
 * homed elsewhere, which are asked after it. */
#define LOCATE_MS 1000
#define LAT_BUCKETS 15

static const uint64_t lat_le_us[LAT_BUCKETS] = {
    100,   250,    500,    1000,   2500,    5000,    10000,  25000,
    50000, 100000, 250000, 500000, 1000000, 2500000, 5000000};

/* A connection of ours to a peer. */
struct pconn {
  struct kvds_peerconn *c;
  uint64_t gen; /* peer->gen when opened */
};

struct kvds_peer {
  char id[KVDS_MEMBER_ID_MAX], addr[KVDS_MEMBER_ID_MAX];
  uint64_t epoch; /* cl->lock */
  int live;       /* cl->lock: in the current view */
  uint64_t gen;   /* cl->lock: bumped when its incarnation changes */
  uint64_t nonce; /* cl->lock: its HELLO nonce, new on every start */
  struct pconn *idle;
  int nidle, nopen; /* cl->lock */
  struct kvds_peerconn **busy;
  int nbusy; /* cl->lock: in use (shut down at stop) */
  atomic_uint_fast64_t bytes_in, bytes_out, objects_in, pulls, pull_errors;
  atomic_uint_fast64_t lat_sum_us, lat[LAT_BUCKETS + 1];
};

/* A member of a view snapshot; peer is NULL for this worker. */
struct vmember {
  struct kvds_peer *peer;
  const char *id; /* the peer's, or cl->self_id */
  uint64_t epoch;
};

/* Members and their rendezvous seeds (parallel arrays, one allocation). */
struct view {
  struct vmember *m;
  uint64_t *seeds;
  size_t n;
};

/* A queued location change of one of our keys. */
struct ann {
  struct ann *next;
  uint8_t add;
  uint32_t klen;
  uint8_t key[];
};

struct job {
  struct job *next;
  struct wait_req *wr;
  uint32_t n;
  uint32_t *idx; /* which of wr's keys */
  uint64_t deadline_us;
  int wait_ms;
  uint32_t hlen;
  uint8_t hint[KVDS_MEMBER_ID_MAX];
};

struct kvds_cluster {
  struct kvds_server *s;
  pthread_mutex_t lock;
  pthread_cond_t job_cv, conn_cv, maint_cv;
  struct kvds_peer **peers;
  size_t npeers, cappeers;
  struct view view; /* cl->lock: live members, this worker included */
  char self_id[KVDS_MEMBER_ID_MAX];
  uint64_t self_epoch;
  int conns_per_peer;
  kvds_directory *dir;
  struct job *jhead, *jtail;
  struct ann *ahead, *atail;
  size_t nann;
  int view_dirty;     /* cl->lock: the membership changed */
  int reannounce_all; /* cl->lock: announce every key again (lost batch) */
  uint64_t rejoins;   /* maintenance thread: the membership's, last seen */
  int stopping;
  pthread_t *pullers;
  int npullers;
  pthread_t maint;
  int maint_started;
  struct kvds_replicator *repl; /* --replicas > 1, else NULL */
  atomic_size_t nlive; /* cl->view.n, read without the lock (GET path) */
  atomic_uint_fast64_t announced, announce_errors, remote_found, remote_missed;
};

/* ---- small helpers ------------------------------------------------------ */

/* Room for n members (contents undefined). */
static int view_alloc(struct view *v, size_t n) {
  size_t m = n ? n : 1;
  v->m = malloc(m * (sizeof *v->m + sizeof *v->seeds));
  v->seeds = v->m ? (uint64_t *)(v->m + m) : NULL;
  v->n = 0;
  return v->m ? 0 : -ENOMEM;
}

static void view_free(struct view *v) {
  free(v->m);
  v->m = NULL;
  v->seeds = NULL;
  v->n = 0;
}

/* Copy of the current view (cl->lock held). */
static int view_copy_locked(struct kvds_cluster *cl, struct view *out) {
  if (view_alloc(out, cl->view.n))
    return -ENOMEM;
  out->n = cl->view.n;
  memcpy(out->m, cl->view.m, out->n * sizeof *out->m);
  memcpy(out->seeds, cl->view.seeds, out->n * sizeof *out->seeds);
  return 0;
}

/* Index in v of the key's home (keys hash with kvds_checksum, hrw.h). */
static size_t home_of(const struct view *v, const uint8_t *k, size_t kl) {
  int h = kvds_hrw_home(kvds_checksum(k, kl), v->seeds, v->n);
  return h < 0 ? 0 : (size_t)h;
}

/* Absolute time for the monotonic condition variables. */
static struct timespec mono_ts(uint64_t us) {
  return (struct timespec){(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
}

/* 1 if (id, epoch) is a live member of v (epoch 0 in the view — a static
 * peer — matches any). */
static int view_has(const struct view *v, const char *id, uint64_t epoch) {
  for (size_t i = 0; i < v->n; i++)
    if (strcmp(v->m[i].id, id) == 0)
      return v->m[i].epoch == 0 || epoch == 0 || v->m[i].epoch == epoch;
  return 0;
}

static struct kvds_peer *peer_find_locked(struct kvds_cluster *cl,
                                          const char *id, size_t len) {
  for (size_t i = 0; i < cl->npeers; i++) {
    struct kvds_peer *p = cl->peers[i];
    if (strlen(p->id) == len && memcmp(p->id, id, len) == 0)
      return p;
  }
  return NULL;
}

static void lat_record(struct kvds_peer *p, uint64_t us) {
  int b = 0;
  while (b < LAT_BUCKETS && us > lat_le_us[b])
    b++;
  atomic_fetch_add(&p->lat[b], 1);
  atomic_fetch_add(&p->lat_sum_us, us);
}

/* ---- peer connections ---------------------------------------------------- */

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
static struct kvds_peerconn *pconn_get(struct kvds_cluster *cl,
                                       struct kvds_peer *p,
                                       uint64_t deadline_us, uint64_t *gen,
                                       int *err) {
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
      int ms = deadline_us > now ? (int)((deadline_us - now) / 1000) : 1;
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
    struct timespec ts = mono_ts(deadline_us);
    if (pthread_cond_timedwait(&cl->conn_cv, &cl->lock, &ts) == ETIMEDOUT) {
      *err = KVDS_E_TIMEOUT;
      break;
    }
  }
  pthread_mutex_unlock(&cl->lock);
  return NULL;
}

/* Gives a connection back: kept if it still works and the peer is the same
 * incarnation, else closed. */
static void pconn_put(struct kvds_cluster *cl, struct kvds_peer *p,
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
static void pconn_drop_idle_locked(struct kvds_peer *p) {
  for (int i = 0; i < p->nidle; i++)
    kvds_peerconn_close(p->idle[i].c);
  p->nopen -= p->nidle;
  p->nidle = 0;
}

/* ---- the directory shard ------------------------------------------------- */

int kvds__cluster_announce(struct kvds_server *s, const char *owner,
                           uint64_t epoch, uint32_t n,
                           const struct kvds_proto_item *it,
                           const uint8_t *const *keys) {
  struct kvds_cluster *cl = s->cluster;
  if (!cl)
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
void kvds__cluster_locate_local(struct kvds_server *s, struct reply *r,
                                uint32_t n, const uint8_t *const *keys,
                                const uint32_t *klens) {
  struct kvds_cluster *cl = s->cluster;
  struct kvds_dir_owner ow[LOCATE_MAX_OWNERS];
  const char *self = cl ? cl->self_id : "";
  uint64_t self_epoch = cl ? cl->self_epoch : 0;
  for (uint32_t i = 0; i < n; i++) {
    size_t no =
        cl ? kvds_dir_lookup(cl->dir, keys[i], klens[i], ow, LOCATE_MAX_OWNERS)
           : 0;
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

/* ---- announcements ------------------------------------------------------- */

/* Store notify hook (store lock held): queue the change for the home. */
static void on_store_change(const uint8_t *key, uint32_t klen, int sealed,
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
  size_t n, cap;
};

static int abatch_add(struct abatch *b, const uint8_t *key, uint32_t klen,
                      int add) {
  if (b->n == b->cap) {
    size_t nc = b->cap ? b->cap * 2 : 64;
    void *a = realloc(b->it, nc * sizeof *b->it);
    if (!a)
      return -ENOMEM;
    b->it = a;
    void *k = realloc(b->keys, nc * sizeof *b->keys);
    if (!k)
      return -ENOMEM;
    b->keys = k;
    b->cap = nc;
  }
  b->it[b->n] = (struct kvds_proto_item){.klen = klen, .a = (uint64_t)add};
  b->keys[b->n++] = key;
  return 0;
}

/* Sends the batch for home m (items from 1 on; item 0 is ours). */
static void abatch_send(struct kvds_cluster *cl, const struct vmember *m,
                        struct abatch *b) {
  if (b->n <= 1)
    return;
  uint64_t deadline = kvds_now_us() + 2000000;
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
    struct kvds_peerconn *c = pconn_get(cl, m->peer, deadline, &gen, &err);
    if (c) {
      kvds_peerconn_set_timeout(c, 2000);
      rc = kvds_peerconn_call(c, KVDS_OP_ANNOUNCE, KVDS_PF_LOCAL, 0, cnt + 1,
                              b->it + off - 1, b->keys + off - 1, NULL, NULL);
      pconn_put(cl, m->peer, c, gen);
    } else {
      rc = err;
    }
    b->it[off - 1] = save;
    b->keys[off - 1] = savek;
    if (rc) {
      atomic_fetch_add(&cl->announce_errors, 1);
      if (rc != KVDS_E_PEER && rc != KVDS_E_SHUTDOWN) {
        pthread_mutex_lock(&cl->lock);
        cl->reannounce_all = 1; /* a live home missed it: tell it again */
        pthread_mutex_unlock(&cl->lock);
      }
      kvds__logf(3, "cluster: announce to %s failed: %s", m->id,
                 kvds_strerror(rc));
    } else {
      atomic_fetch_add(&cl->announced, cnt);
    }
  }
}

/* Routes (key, add) to its home under v: our own shard directly, a peer's
 * into its batch (batches[] parallel to v->m). */
static int route(struct kvds_cluster *cl, const struct view *v,
                 struct abatch *batches, const uint8_t *key, uint32_t klen,
                 int add) {
  size_t h = home_of(v, key, klen);
  if (!v->m[h].peer) {
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
                                  const struct view *v) {
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

static void batches_send_free(struct kvds_cluster *cl, const struct view *v,
                              struct abatch *b) {
  for (size_t i = 0; i < v->n; i++) {
    if (v->m[i].peer)
      abatch_send(cl, &v->m[i], &b[i]);
    free(b[i].it);
    free(b[i].keys);
  }
  free(b);
}

/* Sends what the store queued since the last call. */
static void announce_queued(struct kvds_cluster *cl) {
  struct view v;
  pthread_mutex_lock(&cl->lock);
  struct ann *list = cl->ahead;
  cl->ahead = cl->atail = NULL;
  cl->nann = 0;
  int rc = view_copy_locked(cl, &v);
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
  view_free(&v);
  if (lost) {
    pthread_mutex_lock(&cl->lock);
    cl->reannounce_all = 1;
    pthread_mutex_unlock(&cl->lock);
  }
}

/* Our sealed keys, copied out of the store. */
struct keyset {
  uint8_t *buf;
  size_t len, cap;
  size_t n;
  int oom;
};

static void keyset_add(const struct kvds_object *o, void *ud) {
  struct keyset *ks = ud;
  size_t need = 4 + o->inode.klen;
  if (ks->oom)
    return;
  if (ks->len + need > ks->cap) {
    size_t nc = ks->cap ? ks->cap * 2 : 65536;
    while (nc < ks->len + need)
      nc *= 2;
    uint8_t *nb = realloc(ks->buf, nc);
    if (!nb) {
      ks->oom = 1;
      return;
    }
    ks->buf = nb;
    ks->cap = nc;
  }
  kvds_put_u32(ks->buf + ks->len, o->inode.klen);
  memcpy(ks->buf + ks->len + 4, o->key, o->inode.klen);
  ks->len += need;
  ks->n++;
}

/* Announces our keys whose home differs between old and new (all of them
 * when old is NULL) to their home in new. */
static int reannounce(struct kvds_cluster *cl, const struct view *old,
                      const struct view *nv) {
  struct kvds_server *s = cl->s;
  struct keyset ks = {0};
  pthread_mutex_lock(&s->store.lock);
  kvds_store_foreach_sealed(&s->store, keyset_add, &ks);
  pthread_mutex_unlock(&s->store.lock);
  struct abatch *b = ks.oom ? NULL : batches_new(cl, nv);
  int rc = b ? 0 : -ENOMEM;
  size_t moved = 0;
  for (size_t off = 0; b && off < ks.len;) {
    uint32_t kl = kvds_get_u32(ks.buf + off);
    const uint8_t *k = ks.buf + off + 4;
    off += 4 + kl;
    size_t nh = home_of(nv, k, kl);
    if (old) {
      size_t oh = home_of(old, k, kl);
      if (strcmp(old->m[oh].id, nv->m[nh].id) == 0 &&
          old->m[oh].epoch == nv->m[nh].epoch)
        continue;
    }
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

/* ---- view changes -------------------------------------------------------- */

struct keep_ctx {
  struct kvds_cluster *cl;
  const struct view *v;
};

static int keep_owner(const char *id, uint64_t epoch, void *ud) {
  struct keep_ctx *k = ud;
  return view_has(k->v, id, epoch);
}

static int keep_key(const uint8_t *key, size_t klen, void *ud) {
  struct keep_ctx *k = ud;
  return k->v->m[home_of(k->v, key, klen)].peer == NULL;
}

static struct kvds_peer *peer_new(const struct kvds_member *m, int conns) {
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

/* Reads the membership's view into cl->view and the peer table; returns
 * the previous view in *old. */
static int view_refresh(struct kvds_cluster *cl, struct view *old) {
  struct kvds_member *mm = NULL;
  size_t n = 0;
  int rc = kvds_membership_view(cl->s->members, &mm, &n, NULL);
  if (rc)
    return rc;
  struct view nv;
  if (view_alloc(&nv, n)) {
    free(mm);
    return -ENOMEM;
  }
  pthread_mutex_lock(&cl->lock);
  for (size_t i = 0; i < cl->npeers; i++)
    cl->peers[i]->live = 0;
  for (size_t i = 0; i < n; i++) {
    struct vmember *v = &nv.m[nv.n];
    if (mm[i].self) {
      *v = (struct vmember){NULL, cl->self_id, cl->self_epoch};
    } else {
      struct kvds_peer *p = peer_find_locked(cl, mm[i].id, strlen(mm[i].id));
      if (!p) {
        if (cl->npeers == cl->cappeers) {
          size_t nc = cl->cappeers ? cl->cappeers * 2 : 8;
          void *np = realloc(cl->peers, nc * sizeof *cl->peers);
          if (!np)
            continue;
          cl->peers = np;
          cl->cappeers = nc;
        }
        if (!(p = peer_new(&mm[i], cl->conns_per_peer)))
          continue;
        cl->peers[cl->npeers++] = p;
      } else if (p->epoch != mm[i].epoch || strcmp(p->addr, mm[i].addr)) {
        /* Restarted (or moved): its old connections lead nowhere. */
        p->epoch = mm[i].epoch;
        snprintf(p->addr, sizeof p->addr, "%s", mm[i].addr);
        p->gen++;
        pconn_drop_idle_locked(p);
      }
      p->live = 1;
      *v = (struct vmember){p, p->id, p->epoch};
    }
    nv.seeds[nv.n++] = kvds_hrw_seed(v->id, strlen(v->id));
  }
  for (size_t i = 0; i < cl->npeers; i++)
    if (!cl->peers[i]->live)
      pconn_drop_idle_locked(cl->peers[i]);
  *old = cl->view;
  cl->view = nv;
  atomic_store(&cl->nlive, nv.n);
  pthread_cond_broadcast(&cl->conn_cv);
  pthread_mutex_unlock(&cl->lock);
  free(mm);
  return 0;
}

/* Opens the connections a live peer does not have yet (maintenance
 * thread), so the first request finds them ready. */
static void open_connections(struct kvds_cluster *cl) {
  struct view v;
  pthread_mutex_lock(&cl->lock);
  int rc = view_copy_locked(cl, &v);
  pthread_mutex_unlock(&cl->lock);
  if (rc)
    return;
  for (size_t i = 0; i < v.n; i++) {
    struct kvds_peer *p = v.m[i].peer;
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
  view_free(&v);
}

/* A new view: re-announce moved keys, forget departed owners and keys we
 * are no longer home of, connect to newcomers. */
static void view_changed(struct kvds_cluster *cl) {
  struct view old = {0};
  uint64_t rj = kvds_membership_rejoins(cl->s->members);
  if (rj != cl->rejoins) {
    /* We were dropped by the others (or etcd lost everything): the homes
     * forgot our keys, whether or not our view or epoch changed. */
    cl->rejoins = rj;
    kvds__logf(2, "cluster: rejoined; announcing every key again");
    pthread_mutex_lock(&cl->lock);
    cl->reannounce_all = 1;
    pthread_mutex_unlock(&cl->lock);
  }
  if (view_refresh(cl, &old)) {
    pthread_mutex_lock(&cl->lock);
    cl->view_dirty = 1; /* try again */
    pthread_mutex_unlock(&cl->lock);
    return;
  }
  struct view nv;
  pthread_mutex_lock(&cl->lock);
  int rc = view_copy_locked(cl, &nv);
  pthread_mutex_unlock(&cl->lock);
  if (!rc) {
    /* Connections first: the announcements below use them. */
    open_connections(cl);
    struct keep_ctx k = {cl, &nv};
    size_t dropped = kvds_dir_retain_owners(cl->dir, keep_owner, &k);
    size_t moved = kvds_dir_retain_keys(cl->dir, keep_key, &k);
    if (dropped || moved)
      kvds__logf(3,
                 "cluster: directory dropped %zu locations of departed "
                 "workers, %zu keys now homed elsewhere",
                 dropped, moved);
    if (reannounce(cl, old.n ? &old : NULL, &nv)) {
      pthread_mutex_lock(&cl->lock);
      cl->reannounce_all = 1;
      pthread_mutex_unlock(&cl->lock);
    }
    view_free(&nv);
  }
  view_free(&old);
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

static void *maint_main(void *arg) {
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
      struct view v;
      int rc = view_copy_locked(cl, &v);
      pthread_mutex_unlock(&cl->lock);
      if (!rc) {
        /* Queued changes first, so that a removal queued before this pass
         * cannot undo what it announces. */
        announce_queued(cl);
        if (reannounce(cl, NULL, &v)) {
          pthread_mutex_lock(&cl->lock);
          cl->reannounce_all = 1;
          pthread_mutex_unlock(&cl->lock);
        }
        view_free(&v);
      }
      pthread_mutex_lock(&cl->lock);
      continue;
    }
    if (cl->nann) {
      pthread_mutex_unlock(&cl->lock);
      announce_queued(cl);
      pthread_mutex_lock(&cl->lock);
      continue;
    }
    if (now - last_conn > 1000000) {
      /* Peers that could not be reached yet, or lost connections. */
      last_conn = now;
      pthread_mutex_unlock(&cl->lock);
      open_connections(cl);
      pthread_mutex_lock(&cl->lock);
      continue;
    }
    struct timespec ts = mono_ts(kvds_now_us() + 200000);
    pthread_cond_timedwait(&cl->maint_cv, &cl->lock, &ts);
  }
  pthread_mutex_unlock(&cl->lock);
  return NULL;
}

/* ---- jobs ---------------------------------------------------------------- */

/* State of one key of a GET job. */
enum { K_PENDING = 0, K_DONE = 1, K_FAILED = 2 };

struct jkey {
  const uint8_t *key;
  uint32_t klen;
  uint8_t state;
  int32_t err; /* last error seen for it */
  struct kvds_peer *tried[LOCATE_MAX_OWNERS + 1];
  int ntried;
  struct kvds_dir_owner *owners; /* from its home, best first */
  size_t nowners;
};

/* A pull of some keys from one peer into this pool. */
struct pull_ctx {
  struct kvds_server *s;
  struct kvds_peer *peer;
  struct jkey **k;
  struct kvds_object **obj;
};

static void *pull_dst(void *ud, size_t i, uint64_t size) {
  struct pull_ctx *pc = ud;
  struct kvds_server *s = pc->s;
  struct jkey *k = pc->k[i];
  pthread_mutex_lock(&s->store.lock);
  int rc = kvds_store_create(&s->store, k->key, k->klen, size, &pc->obj[i]);
  pthread_mutex_unlock(&s->store.lock);
  if (rc == KVDS_E_EXISTS) {
    /* Here already, or someone is writing it (another pull): its seal
     * wakes the request. */
    k->state = K_DONE;
    pc->obj[i] = NULL;
    return NULL;
  }
  if (rc) {
    k->err = rc;
    k->state = K_FAILED; /* no room here: no other owner helps */
    pc->obj[i] = NULL;
    return NULL;
  }
  return kvds_store_data(&s->store, pc->obj[i]);
}

static void pull_done(void *ud, size_t i, int status, uint64_t checksum) {
  struct pull_ctx *pc = ud;
  struct kvds_server *s = pc->s;
  struct jkey *k = pc->k[i];
  struct kvds_object *o = pc->obj[i];
  if (o) {
    pthread_mutex_lock(&s->store.lock);
    if (status == 0) {
      /* counted before the seal wakes the reader */
      atomic_fetch_add(&pc->peer->bytes_in, o->size);
      atomic_fetch_add(&pc->peer->objects_in, 1);
      o->replica = 1; /* a copy: not copied on by --replicas */
      kvds_store_seal(&s->store, o, checksum); /* wakes the request */
    } else {
      kvds_store_abort(&s->store, o); /* never visible */
    }
    pthread_mutex_unlock(&s->store.lock);
    pc->obj[i] = NULL;
  }
  if (status == 0)
    k->state = K_DONE;
  else if (status != KVDS_E_STATE)
    k->err = status;
}

/* Pulls keys k[0..n) from p, waiting up to wait_ms there for keys not
 * sealed yet. */
static void pull_from(struct kvds_cluster *cl, struct kvds_peer *p,
                      struct jkey **k, size_t n, int wait_ms,
                      uint64_t deadline_us) {
  struct kvds_server *s = cl->s;
  int err = 0;
  uint64_t gen;
  for (size_t i = 0; i < n; i++)
    if (k[i]->ntried <= LOCATE_MAX_OWNERS)
      k[i]->tried[k[i]->ntried++] = p;
  struct kvds_peerconn *c = pconn_get(cl, p, deadline_us, &gen, &err);
  if (!c) {
    for (size_t i = 0; i < n; i++)
      k[i]->err = err;
    atomic_fetch_add(&p->pull_errors, 1);
    return;
  }
  struct kvds_iov *iov = malloc(n * sizeof *iov);
  struct kvds_object **obj = calloc(n, sizeof *obj);
  if (!iov || !obj) {
    free(iov);
    free(obj);
    pconn_put(cl, p, c, gen);
    for (size_t i = 0; i < n; i++)
      k[i]->err = -ENOMEM;
    return;
  }
  for (size_t i = 0; i < n; i++)
    iov[i] = (struct kvds_iov){(void *)k[i]->key, k[i]->klen};
  uint64_t t0 = kvds_now_us();
  int left = deadline_us > t0 ? (int)((deadline_us - t0) / 1000) : 1;
  if (wait_ms > left)
    wait_ms = left;
  /* the client's deadline is its timeout + the wait */
  int io_ms = left - (wait_ms > 0 ? wait_ms : 0);
  kvds_peerconn_set_timeout(c, io_ms > 0 ? io_ms : 1);
  struct pull_ctx pc = {s, p, k, obj};
  struct kvds_peerconn_pull_ops ops = {pull_dst, pull_done, &pc};
  int rc = kvds_peerconn_pull(c, n, iov, wait_ms, &ops);
  uint64_t us = kvds_now_us() - t0;
  pconn_put(cl, p, c, gen);
  atomic_fetch_add(&p->pulls, 1);
  lat_record(p, us);
  if (rc) {
    atomic_fetch_add(&p->pull_errors, 1);
    kvds__logf(2, "cluster: pull of %zu keys from %s failed after %llu ms: %s",
               n, p->id, (unsigned long long)us / 1000, kvds_strerror(rc));
    for (size_t i = 0; i < n; i++)
      if (k[i]->state == K_PENDING)
        k[i]->err = rc == KVDS_E_TIMEOUT ? KVDS_E_TIMEOUT : KVDS_E_PEER;
  }
  free(iov);
  free(obj);
}

/* Parses a LOCATE reply into owners of keys k[]. */
struct loc_ctx {
  struct jkey **k;
  size_t n, cur;
  size_t left; /* owner items still expected for k[cur - 1] */
};

static int loc_item(void *ud, size_t i, const struct kvds_proto_item *it,
                    const uint8_t *key) {
  struct loc_ctx *lc = ud;
  (void)i;
  if (lc->left == 0) {
    if (lc->cur >= lc->n)
      return KVDS_E_PROTO;
    struct jkey *k = lc->k[lc->cur++];
    lc->left = it->status ? 0 : (size_t)it->a;
    if (lc->left > 4096)
      return KVDS_E_PROTO;
    free(k->owners);
    k->owners = NULL;
    k->nowners = 0;
    if (lc->left &&
        !(k->owners = calloc(lc->left < LOCATE_MAX_OWNERS ? lc->left
                                                          : LOCATE_MAX_OWNERS,
                             sizeof *k->owners)))
      return -ENOMEM;
    return 0;
  }
  struct jkey *k = lc->k[lc->cur - 1];
  lc->left--;
  if (it->klen == 0 || it->klen >= KVDS_MEMBER_ID_MAX)
    return KVDS_E_PROTO;
  if (k->nowners < LOCATE_MAX_OWNERS) {
    memcpy(k->owners[k->nowners].id, key, it->klen);
    k->owners[k->nowners].id[it->klen] = 0;
    k->owners[k->nowners].epoch = it->a;
    k->nowners++;
  }
  return 0;
}

/* Asks each key's home (under v) who holds it: fills k[i]->owners. */
static void locate(struct kvds_cluster *cl, const struct view *v,
                   struct jkey **k, size_t n, uint64_t deadline_us) {
  size_t *home = malloc((n ? n : 1) * sizeof *home);
  struct jkey **grp = malloc((n ? n : 1) * sizeof *grp);
  struct kvds_proto_item *it = malloc((n ? n : 1) * sizeof *it);
  const void **keys = malloc((n ? n : 1) * sizeof *keys);
  if (!home || !grp || !it || !keys)
    goto out;
  for (size_t i = 0; i < n; i++)
    home[i] = home_of(v, k[i]->key, k[i]->klen);
  for (size_t h = 0; h < v->n; h++) {
    size_t g = 0;
    for (size_t i = 0; i < n; i++)
      if (home[i] == h)
        grp[g++] = k[i];
    if (!g)
      continue;
    if (!v->m[h].peer) { /* our own shard */
      for (size_t i = 0; i < g; i++) {
        struct kvds_dir_owner ow[LOCATE_MAX_OWNERS];
        size_t no = kvds_dir_lookup(cl->dir, grp[i]->key, grp[i]->klen, ow,
                                    LOCATE_MAX_OWNERS);
        if (no > LOCATE_MAX_OWNERS)
          no = LOCATE_MAX_OWNERS;
        free(grp[i]->owners);
        grp[i]->owners = no ? malloc(no * sizeof *grp[i]->owners) : NULL;
        grp[i]->nowners = grp[i]->owners ? no : 0;
        if (grp[i]->owners)
          memcpy(grp[i]->owners, ow, no * sizeof *ow);
      }
      continue;
    }
    for (size_t i = 0; i < g; i++) {
      it[i] = (struct kvds_proto_item){.klen = grp[i]->klen};
      keys[i] = grp[i]->key;
    }
    int err = 0, rc;
    uint64_t gen, cap = kvds_now_us() + LOCATE_MS * 1000ull;
    uint64_t until = deadline_us < cap ? deadline_us : cap;
    struct kvds_peerconn *c = pconn_get(cl, v->m[h].peer, until, &gen, &err);
    if (c) {
      uint64_t now = kvds_now_us();
      kvds_peerconn_set_timeout(c, until > now ? (int)((until - now) / 1000) + 1
                                               : 1);
      struct loc_ctx lc = {grp, g, 0, 0};
      rc = kvds_peerconn_call(c, KVDS_OP_LOCATE, KVDS_PF_LOCAL, 0, g, it, keys,
                              loc_item, &lc);
      pconn_put(cl, v->m[h].peer, c, gen);
    } else {
      rc = err;
    }
    if (rc) {
      kvds__logf(3, "cluster: locate at %s failed: %s", v->m[h].id,
                 kvds_strerror(rc));
      for (size_t i = 0; i < g; i++)
        if (grp[i]->err == KVDS_E_NOTFOUND)
          grp[i]->err = KVDS_E_PEER;
    }
  }
out:
  free(home);
  free(grp);
  free(it);
  free(keys);
}

/* The first live owner of k (not us, not tried yet), or NULL. */
static struct kvds_peer *next_owner(struct kvds_cluster *cl,
                                    const struct view *v, struct jkey *k) {
  for (size_t o = 0; o < k->nowners; o++) {
    if (strcmp(k->owners[o].id, cl->self_id) == 0 ||
        !view_has(v, k->owners[o].id, k->owners[o].epoch))
      continue;
    struct kvds_peer *p = NULL;
    for (size_t i = 0; i < v->n; i++)
      if (v->m[i].peer && strcmp(v->m[i].id, k->owners[o].id) == 0)
        p = v->m[i].peer;
    int tried = 0;
    for (int t = 0; p && t < k->ntried; t++)
      tried |= k->tried[t] == p;
    if (p && !tried)
      return p;
  }
  return NULL;
}

/* The live peer a hint names (by id or data address), or NULL. */
static struct kvds_peer *hint_peer(const struct view *v, const uint8_t *h,
                                   uint32_t hl) {
  for (size_t i = 0; hl && i < v->n; i++) {
    struct kvds_peer *p = v->m[i].peer;
    if (p && ((strlen(p->id) == hl && memcmp(p->id, h, hl) == 0) ||
              (strlen(p->addr) == hl && memcmp(p->addr, h, hl) == 0)))
      return p;
  }
  return NULL;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* State for n keys of wr (idx[i], or i when idx is NULL) and room for n
 * pointers to them; 0 or -ENOMEM. */
static int jkeys_new(const struct wait_req *wr, const uint32_t *idx, size_t n,
                     struct jkey **ks, struct jkey ***pk) {
  *ks = calloc(n ? n : 1, sizeof **ks);
  *pk = calloc(n ? n : 1, sizeof **pk);
  if (!*ks || !*pk) {
    free(*ks);
    free(*pk);
    *ks = NULL;
    *pk = NULL;
    return -ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    size_t x = idx ? idx[i] : i;
    (*ks)[i] = (struct jkey){
        .key = wr->keys[x], .klen = wr->klens[x], .err = KVDS_E_NOTFOUND};
  }
  return 0;
}

static void jkeys_free(struct jkey *ks, struct jkey **pk, size_t n) {
  for (size_t i = 0; ks && i < n; i++)
    free(ks[i].owners);
  free(ks);
  free(pk);
}

/* GET: pull the job's keys; failures are written into the request. */
static void run_get(struct kvds_cluster *cl, struct job *j,
                    const struct view *v) {
  struct kvds_server *s = cl->s;
  struct wait_req *wr = j->wr;
  size_t n = j->n;
  struct jkey *ks, **pk;
  if (jkeys_new(wr, j->idx, n, &ks, &pk))
    return; /* the request times out */
  /* 1. The hinted worker, waiting there as the request asked. */
  struct kvds_peer *hp = hint_peer(v, j->hint, j->hlen);
  if (hp) {
    for (size_t i = 0; i < n; i++)
      pk[i] = &ks[i];
    pull_from(cl, hp, pk, n, j->wait_ms, j->deadline_us);
  }
  /* 2. The directory: ask the homes, pull from owners, next owner on a
   * failure; poll while the request waits for keys nobody has yet. */
  int backoff = 5;
  for (int round = 0; !cl->stopping; round++) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
      if (ks[i].state == K_PENDING)
        pk[m++] = &ks[i];
    if (!m || kvds_now_us() >= j->deadline_us)
      break;
    locate(cl, v, pk, m, j->deadline_us);
    int progress = 0;
    for (;;) { /* group by next owner */
      struct kvds_peer *p = NULL;
      size_t g = 0;
      for (size_t i = 0; i < m; i++) {
        if (pk[i]->state != K_PENDING)
          continue;
        struct kvds_peer *o = next_owner(cl, v, pk[i]);
        if (!o)
          continue;
        if (!p)
          p = o;
        if (o == p)
          g++;
      }
      if (!p)
        break;
      struct jkey **sub = malloc(g * sizeof *sub);
      if (!sub)
        break;
      size_t c = 0;
      for (size_t i = 0; i < m; i++)
        if (pk[i]->state == K_PENDING && next_owner(cl, v, pk[i]) == p)
          sub[c++] = pk[i];
      pull_from(cl, p, sub, c, 0, j->deadline_us);
      free(sub);
      progress = 1;
    }
    size_t still = 0;
    for (size_t i = 0; i < m; i++)
      still += pk[i]->state == K_PENDING;
    if (!still)
      break;
    if (j->wait_ms <= 0 && (round > 0 || !progress))
      break; /* no wait asked: one pass (and a retry after failures) */
    if (j->wait_ms > 0) {
      uint64_t now = kvds_now_us();
      if (now >= j->deadline_us)
        break;
      int ms = backoff;
      if ((uint64_t)ms * 1000 > j->deadline_us - now)
        ms = (int)((j->deadline_us - now) / 1000) + 1;
      sleep_ms(ms);
      backoff = backoff * 2 > 100 ? 100 : backoff * 2;
      for (size_t i = 0; i < m; i++)
        pk[i]->ntried = 0; /* owners may have it now */
    }
  }
  /* 3. What is still missing fails now rather than at the deadline. */
  size_t found = 0, missed = 0;
  pthread_mutex_lock(&s->store.lock);
  for (size_t i = 0; i < n; i++) {
    struct kvds_waiter *w = &wr->w[j->idx[i]];
    if (ks[i].state == K_DONE) {
      found++;
      continue;
    }
    missed++;
    if (wr->dead || wr->frozen || !w->armed)
      continue;
    kvds_store_wait_remove(&s->store, w);
    int e = ks[i].err;
    if (e == KVDS_E_NOTFOUND && j->wait_ms > 0)
      e = KVDS_E_TIMEOUT;
    wr->status[j->idx[i]] = e;
    if (--wr->remaining == 0)
      kvds__wait_inbox_locked(wr);
  }
  pthread_mutex_unlock(&s->store.lock);
  atomic_fetch_add(&cl->remote_found, found);
  atomic_fetch_add(&cl->remote_missed, missed);
  jkeys_free(ks, pk, n);
}

/* EXISTS / LOOKUP_PREFIX / LOCATE: ask the homes of the keys not here. */
static void run_find(struct kvds_cluster *cl, struct job *j,
                     const struct view *v) {
  struct kvds_server *s = cl->s;
  struct wait_req *wr = j->wr;
  size_t n = wr->n;
  struct jkey *ks, **pk;
  struct reply r;
  kvds__reply_init(&r);
  if (jkeys_new(wr, NULL, n, &ks, &pk))
    goto out;
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (wr->kind == WR_LOCATE || wr->status[i])
      pk[m++] = &ks[i];
  locate(cl, v, pk, m, j->deadline_us);
  if (wr->kind == WR_LOCATE) {
    for (size_t i = 0; i < n; i++) {
      struct jkey *k = &ks[i];
      size_t live = 0;
      int here = wr->status[i] == 0, self_listed = 0;
      for (size_t o = 0; o < k->nowners; o++) {
        int me = strcmp(k->owners[o].id, cl->self_id) == 0;
        self_listed |= me;
        live += me ? here : view_has(v, k->owners[o].id, k->owners[o].epoch);
      }
      int add_self = here && !self_listed;
      kvds__reply_item(&r, live + add_self ? 0 : KVDS_E_NOTFOUND,
                       live + add_self, 0, 0, 0, NULL, 0);
      if (add_self)
        kvds__reply_item(&r, 0, cl->self_epoch, 0, 0, 0, cl->self_id,
                         (uint32_t)strlen(cl->self_id));
      for (size_t o = 0; o < k->nowners; o++) {
        int me = strcmp(k->owners[o].id, cl->self_id) == 0;
        if (me ? here : view_has(v, k->owners[o].id, k->owners[o].epoch))
          kvds__reply_item(&r, 0, k->owners[o].epoch, 0, 0, 0, k->owners[o].id,
                           (uint32_t)strlen(k->owners[o].id));
      }
    }
  } else {
    int32_t *st = malloc((n ? n : 1) * sizeof *st);
    if (!st)
      goto out;
    for (size_t i = 0; i < n; i++) {
      st[i] = wr->status[i];
      for (size_t o = 0; st[i] && o < ks[i].nowners; o++)
        if (strcmp(ks[i].owners[o].id, cl->self_id) != 0 &&
            view_has(v, ks[i].owners[o].id, ks[i].owners[o].epoch))
          st[i] = 0;
    }
    if (wr->kind == WR_EXISTS) {
      pthread_mutex_lock(&s->store.lock);
      if (!wr->dead && !wr->frozen)
        memcpy(wr->status, st, n * sizeof *st);
      pthread_mutex_unlock(&s->store.lock);
    } else {
      size_t p = 0;
      while (p < n && st[p] == 0)
        p++;
      kvds__reply_item(&r, 0, p, 0, 0, 0, NULL, 0);
    }
    free(st);
  }
  pthread_mutex_lock(&s->store.lock);
  if (!wr->dead && !wr->frozen && !r.oom) {
    free(wr->out.buf);
    wr->out = r;
    r.buf = NULL;
    wr->remaining = 0;
    kvds__wait_inbox_locked(wr);
  }
  pthread_mutex_unlock(&s->store.lock);
out:
  free(r.buf);
  jkeys_free(ks, pk, n);
}

static void *puller_main(void *arg) {
  struct kvds_cluster *cl = arg;
  pthread_mutex_lock(&cl->lock);
  for (;;) {
    while (!cl->stopping && !cl->jhead)
      pthread_cond_wait(&cl->job_cv, &cl->lock);
    struct job *j = cl->jhead;
    if (!j)
      break; /* stopping and nothing left */
    cl->jhead = j->next;
    if (!cl->jhead)
      cl->jtail = NULL;
    struct view v;
    int rc = view_copy_locked(cl, &v);
    int stop = cl->stopping;
    pthread_mutex_unlock(&cl->lock);
    if (!rc && !stop) {
      if (j->wr->kind == WR_GET)
        run_get(cl, j, &v);
      else
        run_find(cl, j, &v);
    }
    if (!rc)
      view_free(&v);
    kvds__wait_job_done(cl->s, j->wr);
    free(j->idx);
    free(j);
    pthread_mutex_lock(&cl->lock);
  }
  pthread_mutex_unlock(&cl->lock);
  return NULL;
}

uint32_t kvds__cluster_njobs(struct kvds_server *s, const struct wait_req *wr) {
  struct kvds_cluster *cl = s->cluster;
  if (wr->kind != WR_GET)
    return 1;
  uint32_t missing = wr->remaining;
  /* Parallel streams: a batch is split over the pull threads, at least 4
   * keys per job (each job asks the homes once). */
  uint32_t jobs = (missing + 3) / 4;
  if (jobs > (uint32_t)cl->npullers)
    jobs = (uint32_t)cl->npullers;
  return jobs ? jobs : 1;
}

int kvds__cluster_submit(struct kvds_server *s, struct wait_req *wr,
                         const uint8_t *hint, uint32_t hlen,
                         uint64_t deadline_us, int wait_ms) {
  struct kvds_cluster *cl = s->cluster;
  uint32_t njobs = wr->jobs; /* set by the caller under the store lock */
  uint32_t *miss = malloc((wr->n ? wr->n : 1) * sizeof *miss);
  struct job **js = calloc(njobs ? njobs : 1, sizeof *js);
  if (hlen >= KVDS_MEMBER_ID_MAX) /* names no member: no hint */
    hlen = 0;
  if (!miss || !js || !njobs) {
    free(miss);
    free(js);
    return -ENOMEM;
  }
  /* The keys still awaited (a seal on another thread may have filled some
   * since the request registered its waits). */
  uint32_t m = 0;
  pthread_mutex_lock(&s->store.lock);
  for (uint32_t i = 0; i < wr->n; i++)
    if (wr->kind != WR_GET || wr->w[i].armed)
      miss[m++] = i;
  pthread_mutex_unlock(&s->store.lock);
  int rc = 0;
  for (uint32_t k = 0; k < njobs; k++) {
    uint32_t lo = (uint32_t)((uint64_t)m * k / njobs);
    uint32_t hi = (uint32_t)((uint64_t)m * (k + 1) / njobs);
    struct job *j = calloc(1, sizeof *j);
    if (j && wr->kind == WR_GET)
      j->idx = malloc(((hi - lo) ? hi - lo : 1) * sizeof *j->idx);
    if (!j || (wr->kind == WR_GET && !j->idx)) {
      if (j)
        free(j);
      rc = -ENOMEM;
      break;
    }
    j->wr = wr;
    j->n = hi - lo;
    if (j->idx)
      memcpy(j->idx, miss + lo, j->n * sizeof *j->idx);
    j->deadline_us = deadline_us;
    j->wait_ms = wait_ms;
    j->hlen = hlen;
    if (hlen)
      memcpy(j->hint, hint, hlen);
    js[k] = j;
  }
  free(miss);
  if (rc) {
    for (uint32_t k = 0; k < njobs; k++)
      if (js[k]) {
        free(js[k]->idx);
        free(js[k]);
      }
    free(js);
    return rc;
  }
  pthread_mutex_lock(&cl->lock);
  for (uint32_t k = 0; k < njobs; k++) {
    if (cl->jtail)
      cl->jtail->next = js[k];
    else
      cl->jhead = js[k];
    cl->jtail = js[k];
  }
  pthread_cond_broadcast(&cl->job_cv);
  pthread_mutex_unlock(&cl->lock);
  free(js);
  return 0;
}

/* ---- replicas (the queue and its thread: replicate.c) ------------------- */

void kvds__cluster_replicate(struct kvds_server *s, size_t n,
                             const struct kvds_iov *keys, int copies,
                             uint64_t deadline_us, uint8_t *done, size_t *made,
                             size_t *failed) {
  struct kvds_cluster *cl = s->cluster;
  struct view v;
  size_t k = (size_t)copies - 1;
  *made = *failed = 0;
  memset(done, 0, n);
  pthread_mutex_lock(&cl->lock);
  int rc = view_copy_locked(cl, &v);
  pthread_mutex_unlock(&cl->lock);
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
    size_t top[9], got = kvds_hrw_top(kvds_checksum(keys[i].base, keys[i].len),
                                      v.seeds, v.n, top, k + 1);
    size_t t = 0;
    for (size_t j = 0; j < got && t < k; j++)
      if (v.m[top[j]].peer)
        target[i * k + t++] = top[j];
    done[i] = t == k; /* unless a copy fails below */
    for (; t < k; t++)
      target[i * k + t] = SIZE_MAX; /* fewer live members than copies */
  }
  struct kvds_get_opts opts = {0, cl->self_id, KVDS_GET_PIN};
  for (size_t m = 0; m < v.n; m++) {
    struct kvds_peer *p = v.m[m].peer;
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
    struct kvds_peerconn *c = pconn_get(cl, p, deadline_us, &gen, &err);
    uint64_t now = kvds_now_us();
    rc = c ? 0 : err;
    if (c && now >= deadline_us)
      rc = KVDS_E_TIMEOUT;
    if (!rc) {
      kvds_peerconn_set_timeout(c, (int)((deadline_us - now) / 1000) + 1);
      rc = kvds_peerconn_pin(c, ns, sub, &opts, vals, res);
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
      pconn_put(cl, p, c, gen);
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
  view_free(&v);
}

/* ---- life cycle ---------------------------------------------------------- */

int kvds__cluster_active(struct kvds_server *s) {
  struct kvds_cluster *cl = s->cluster;
  return cl && atomic_load_explicit(&cl->nlive, memory_order_relaxed) > 1;
}

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
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&cl->job_cv, &ca);
  pthread_cond_init(&cl->conn_cv, &ca);
  pthread_cond_init(&cl->maint_cv, &ca);
  pthread_condattr_destroy(&ca);
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
  if (!rc && !(rc = view_alloc(&cl->view, 1))) {
    cl->view.m[0] = (struct vmember){NULL, cl->self_id, cl->self_epoch};
    cl->view.seeds[0] = kvds_hrw_seed(cl->self_id, strlen(cl->self_id));
    cl->view.n = 1;
    atomic_store(&cl->nlive, 1);
  }
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
    if ((rc = -pthread_create(&cl->pullers[i], NULL, puller_main, cl))) {
      kvds__cluster_stop(s);
      return rc;
    }
    cl->npullers++;
  }
  if ((rc = -pthread_create(&cl->maint, NULL, maint_main, cl))) {
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
  kvds_store_set_notify(&s->store, on_store_change, cl);
  pthread_mutex_unlock(&s->store.lock);
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
  /* Calls in flight fail now instead of at their deadlines. */
  for (size_t i = 0; i < cl->npeers; i++)
    for (int k = 0; k < cl->peers[i]->nbusy; k++)
      kvds_peerconn_shutdown(cl->peers[i]->busy[k]);
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
  for (struct job *j = cl->jhead, *nx; j; j = nx) {
    nx = j->next;
    kvds__wait_job_done(s, j->wr);
    free(j->idx);
    free(j);
  }
  for (struct ann *a = cl->ahead, *nx; a; a = nx) {
    nx = a->next;
    free(a);
  }
  for (size_t i = 0; i < cl->npeers; i++) {
    struct kvds_peer *p = cl->peers[i];
    pconn_drop_idle_locked(p);
    free(p->idle);
    free(p->busy);
    free(p);
  }
  free(cl->peers);
  view_free(&cl->view);
  kvds_dir_free(cl->dir);
  free(cl->pullers);
  pthread_cond_destroy(&cl->job_cv);
  pthread_cond_destroy(&cl->conn_cv);
  pthread_cond_destroy(&cl->maint_cv);
  pthread_mutex_destroy(&cl->lock);
  free(cl);
}

/* ---- observability ------------------------------------------------------- */

int kvds__cluster_is_live(struct kvds_server *s, const char *id,
                          uint64_t epoch) {
  struct kvds_cluster *cl = s->cluster;
  if (!cl)
    return 0;
  pthread_mutex_lock(&cl->lock);
  struct kvds_peer *p = peer_find_locked(cl, id, strlen(id));
  /* a static peer's epoch is not known (0): its id must do */
  int live = p && p->live && (p->epoch == 0 || p->epoch == epoch);
  pthread_mutex_unlock(&cl->lock);
  return live;
}

struct kvds_peer *kvds__cluster_peer(struct kvds_server *s, const uint8_t *id,
                                     uint32_t len) {
  struct kvds_cluster *cl = s->cluster;
  if (!cl)
    return NULL;
  pthread_mutex_lock(&cl->lock);
  struct kvds_peer *p = peer_find_locked(cl, (const char *)id, len);
  pthread_mutex_unlock(&cl->lock);
  return p;
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
    struct kvds_peer *p = id ? peer_find_locked(cl, id, strlen(id)) : NULL;
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
    json_object_set_new(m, "connections", json_integer(p->nopen));
  }
  pthread_mutex_unlock(&cl->lock);
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
  fprintf(f,
          "# HELP kvds_directory_keys Keys in this worker's directory shard "
          "(it is their home).\n# TYPE kvds_directory_keys gauge\n"
          "kvds_directory_keys %llu\n"
          "# HELP kvds_directory_locations Locations (key, owner) in the "
          "shard.\n# TYPE kvds_directory_locations gauge\n"
          "kvds_directory_locations %llu\n"
          "# HELP kvds_announced_total Location changes sent to homes.\n"
          "# TYPE kvds_announced_total counter\nkvds_announced_total %llu\n"
          "# HELP kvds_announce_errors_total Announcements a home did not "
          "take.\n# TYPE kvds_announce_errors_total counter\n"
          "kvds_announce_errors_total %llu\n"
          "# HELP kvds_remote_found_total Keys missing here that the cluster "
          "supplied.\n# TYPE kvds_remote_found_total counter\n"
          "kvds_remote_found_total %llu\n"
          "# HELP kvds_remote_missed_total Keys missing here that the cluster "
          "could not supply.\n# TYPE kvds_remote_missed_total counter\n"
          "kvds_remote_missed_total %llu\n",
          (unsigned long long)ds.keys, (unsigned long long)ds.locations,
          (unsigned long long)atomic_load(&cl->announced),
          (unsigned long long)atomic_load(&cl->announce_errors),
          (unsigned long long)atomic_load(&cl->remote_found),
          (unsigned long long)atomic_load(&cl->remote_missed));
  struct kvds_repl_counts rc = {0};
  if (cl->repl)
    kvds__repl_counts(cl->repl, &rc);
  fprintf(f,
          "# HELP kvds_replica_copies Copies kept of each object sealed "
          "here (--replicas).\n# TYPE kvds_replica_copies gauge\n"
          "kvds_replica_copies %d\n"
          "# HELP kvds_replica_queued Objects waiting to be copied (or "
          "copied again).\n"
          "# TYPE kvds_replica_queued gauge\nkvds_replica_queued %llu\n"
          "# HELP kvds_replica_made_total Copies made on other workers.\n"
          "# TYPE kvds_replica_made_total counter\n"
          "kvds_replica_made_total %llu\n"
          "# HELP kvds_replica_failed_total Copies that failed (target "
          "unreachable or full; tried again).\n"
          "# TYPE kvds_replica_failed_total counter\n"
          "kvds_replica_failed_total %llu\n"
          "# HELP kvds_replica_skipped_total Objects not copied (queue "
          "full).\n# TYPE kvds_replica_skipped_total counter\n"
          "kvds_replica_skipped_total %llu\n"
          "# HELP kvds_replica_gave_up_total Objects whose copies still "
          "failed after a minute of tries.\n"
          "# TYPE kvds_replica_gave_up_total counter\n"
          "kvds_replica_gave_up_total %llu\n",
          cl->s->cfg.replicas, (unsigned long long)rc.queued,
          (unsigned long long)rc.made, (unsigned long long)rc.failed,
          (unsigned long long)rc.skipped, (unsigned long long)rc.gave_up);
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
