/*
 * jobs.c — the cluster as the server's resolver (resolver.h): the open
 * keys of a wait are split into jobs for the job threads. GET: ask the
 * keys' homes (or go straight to a hinted worker) and pull each value from
 * an owner straight into a new object of this pool, sealed as a replica
 * once its checksum matched (the seal wakes the wait), the next owner on a
 * failure; what stays missing fails through the wait. EXISTS /
 * LOOKUP_PREFIX / LOCATE: ask the homes and answer the wait.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/hash.h"
#include "common/util.h"
#include "worker/cluster/internal.h"

/* A directory query to one home gets at most this long (and at most the
 * request's deadline): a stalled home must not eat the time of the keys
 * homed elsewhere, which are asked after it. */
#define LOCATE_MS 1000
/* After a UCX endpoint error, a peer is read over TCP for this long (or
 * until it restarts) before UCX is tried again. */
#define UCX_RETRY_MS 30000

/* State of one key of a GET job. */
enum { K_PENDING = 0, K_DONE = 1, K_FAILED = 2 };

struct jkey {
  const uint8_t *key;
  uint32_t klen;
  uint8_t state;
  int32_t err;                        /* last error seen for it */
  void *tried[LOCATE_MAX_OWNERS + 1]; /* peers */
  int ntried;
  struct kvds_dir_owner *owners; /* from its home, best first */
  size_t nowners;
};

/* A pull of some keys from one peer into this pool. */
struct pull_ctx {
  struct kvds_server *s;
  struct kvds_cluster *cl;
  struct kvds_peer *peer;
  struct jkey **k;
  struct kvds_object **obj;
  struct split **sp; /* values coming in ranges, or NULL */
  uint64_t deadline_us;
};

/* Creates the object value i of `size` bytes lands in (pc->obj[i]): its
 * memory, or NULL when there is nothing to receive (the key settled). */
static uint8_t *pull_create(struct pull_ctx *pc, size_t i, uint64_t size) {
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

static void *pull_dst(void *ud, size_t i, uint64_t size, uint64_t off,
                      uint64_t len, uint64_t checksum) {
  struct pull_ctx *pc = ud;
  struct kvds_server *s = pc->s;
  struct jkey *k = pc->k[i];
  (void)off; /* 0: the pull asked for heads */
  uint8_t *base = pull_create(pc, i, size);
  if (!base)
    return NULL;
  if (len < size &&
      !(pc->sp[i] = kvds__split_new(pc->cl, pc->peer, k->key, k->klen, base,
                                    size, checksum, pc->deadline_us))) {
    pthread_mutex_lock(&s->store.lock);
    kvds_store_abort(&s->store, pc->obj[i]); /* never visible */
    pthread_mutex_unlock(&s->store.lock);
    pc->obj[i] = NULL;
    k->err = -ENOMEM;
    return NULL;
  }
  return base;
}

static void pull_landed(void *ud, size_t i, const void *p, size_t n) {
  struct pull_ctx *pc = ud;
  (void)p;
  kvds__split_head_landed(pc->sp[i], n);
}

/* Value i is over: sealed (status 0, its bytes verified) or aborted. */
static void pull_end(struct pull_ctx *pc, size_t i, int status,
                     uint64_t checksum) {
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

static void pull_done(void *ud, size_t i, int status, uint64_t checksum) {
  struct pull_ctx *pc = ud;
  if (pc->sp[i]) { /* its head: the rest comes with kvds__split_finish */
    kvds__split_head_done(pc->sp[i], status);
    return;
  }
  pull_end(pc, i, status, checksum);
}

/* Whether a pull of n keys may ask for heads only: no wait (a waiting
 * request is answered whole) and job threads idle to help. */
static int split_worth(struct kvds_cluster *cl, int wait_ms) {
  if (wait_ms > 0 || cl->npullers < 2)
    return 0;
  pthread_mutex_lock(&cl->lock);
  int idle = cl->nbusy + cl->nqueued < cl->npullers;
  pthread_mutex_unlock(&cl->lock);
  return idle;
}

/* The wait a pull asks of p (at most what is left before the deadline),
 * and c's I/O timeout: the time left besides that wait. */
static int pull_wait(struct kvds_peerconn *c, int wait_ms, uint64_t now,
                     uint64_t deadline_us) {
  int left = kvds_deadline_left_ms(deadline_us, now);
  if (left < 1)
    left = 1;
  if (wait_ms > left)
    wait_ms = left;
  /* the client's deadline is its timeout + the wait */
  int io_ms = left - (wait_ms > 0 ? wait_ms : 0);
  kvds_peerconn_set_timeout(c, io_ms > 0 ? io_ms : 1);
  return wait_ms;
}

/* Pulls keys k[0..n) from p over c (TCP), waiting up to wait_ms there for
 * keys not sealed yet. */
static void pull_tcp(struct kvds_cluster *cl, struct kvds_peer *p,
                     struct kvds_peerconn *c, struct jkey **k, size_t n,
                     int wait_ms, uint64_t deadline_us) {
  struct kvds_server *s = cl->s;
  /* ranges only from a peer that serves them (an older worker refuses) */
  int split = split_worth(cl, wait_ms) && kvds_peerconn_can_range(c);
  struct kvds_iov *iov = malloc(n * sizeof *iov);
  struct kvds_object **obj = calloc(n, sizeof *obj);
  struct split **sp = calloc(n, sizeof *sp);
  struct kvds_peerconn_range *rg = split ? malloc(n * sizeof *rg) : NULL;
  if (!iov || !obj || !sp || (split && !rg)) {
    free(iov);
    free(obj);
    free(sp);
    free(rg);
    for (size_t i = 0; i < n; i++)
      k[i]->err = -ENOMEM;
    return;
  }
  for (size_t i = 0; i < n; i++) {
    iov[i] = (struct kvds_iov){(void *)k[i]->key, k[i]->klen};
    if (rg)
      rg[i] = (struct kvds_peerconn_range){0, SPLIT_HEAD, 0, SPLIT_WHOLE_MAX};
  }
  uint64_t t0 = kvds_now_us();
  wait_ms = pull_wait(c, wait_ms, t0, deadline_us);
  struct pull_ctx pc = {s, cl, p, k, obj, sp, deadline_us};
  struct kvds_peerconn_pull_ops ops = {pull_dst, pull_landed, pull_done, &pc};
  int rc = kvds_peerconn_pull(c, n, iov, wait_ms, rg, &ops);
  /* The values that came in part: the rest over this connection and the
   * helpers' (a failure aborts the value, never visible). */
  int up = rc == 0 && kvds_peerconn_is_connected(c);
  for (size_t i = 0; i < n; i++) {
    if (!sp[i])
      continue;
    uint64_t sum;
    int src = kvds__split_finish(sp[i], up ? c : NULL, &sum);
    sp[i] = NULL;
    up = up && kvds_peerconn_is_connected(c);
    /* as a whole pull's failure reads: the peer's, or the deadline */
    if (src && src != KVDS_E_TIMEOUT && src != KVDS_E_CHECKSUM &&
        src != -ENOMEM)
      src = KVDS_E_PEER;
    pull_end(&pc, i, src, sum);
    if (!src)
      atomic_fetch_add(&p->ranged_in, 1);
    if (src && !rc) {
      atomic_fetch_add(&p->pull_errors, 1);
      kvds__logf(2, "cluster: ranged pull of a value from %s failed: %s", p->id,
                 kvds_strerror(src));
    }
  }
  uint64_t us = kvds_now_us() - t0;
  atomic_fetch_add(&p->pulls, 1);
  kvds__peer_lat_record(p, us);
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
  free(sp);
  free(rg);
}

/* p's UCX endpoint for the incarnation c talks to (one reference, the
 * caller's), opened with what UCX_INFO over c gives when there is none;
 * NULL: read p over TCP (UCX off here or there, or failed lately). */
static struct kvds_ucx_ep *ucx_ep(struct kvds_cluster *cl, struct kvds_peer *p,
                                  struct kvds_peerconn *c) {
  struct kvds_server *s = cl->s;
  if (!s->ucx || !kvds_peerconn_can_ucx(c))
    return NULL;
  uint64_t nonce = kvds_peerconn_nonce(c), now = kvds_now_us();
  struct kvds_ucx_ep *ep = NULL, *old = NULL;
  pthread_mutex_lock(&cl->lock);
  int off = p->ucx_off_nonce == nonce && now < p->ucx_off_until_us;
  if (!off && p->uep && p->ucx_nonce == nonce && kvds_ucx_ep_ok(p->uep)) {
    ep = p->uep;
    kvds_ucx_ep_ref(ep);
  }
  pthread_mutex_unlock(&cl->lock);
  if (off || ep)
    return ep;
  uint8_t *blob = NULL;
  size_t len = 0;
  kvds_peerconn_set_timeout(c, CONNECT_MS);
  int rc = kvds_peerconn_ucx_info(c, KVDS_UCX_INFO_MAX, &blob, &len);
  if (!rc)
    rc = kvds_ucx_ep_open(s->ucx, blob, len, &ep);
  free(blob);
  pthread_mutex_lock(&cl->lock);
  if (rc) {
    p->ucx_off_nonce = nonce;
    p->ucx_off_until_us = now + UCX_RETRY_MS * 1000;
    pthread_mutex_unlock(&cl->lock);
    atomic_fetch_add(&p->ucx_errors, 1);
    kvds__logf(1, "cluster: no UCX endpoint to %s (%s): read over TCP", p->id,
               kvds_strerror(rc));
    return NULL;
  }
  old = p->uep; /* another thread's, or a broken one */
  p->uep = ep;
  p->ucx_nonce = nonce;
  p->ucx_lanes[0] = 0;
  kvds_ucx_ep_ref(ep);
  pthread_mutex_unlock(&cl->lock);
  kvds_ucx_ep_unref(old);
  return ep;
}

/* After an endpoint error: p is read over TCP until UCX_RETRY_MS passed or
 * it restarted; the endpoint goes with the last reader's reference. */
static void ucx_failed(struct kvds_cluster *cl, struct kvds_peer *p,
                       struct kvds_ucx_ep *ep, int rc) {
  struct kvds_ucx_ep *old = NULL;
  pthread_mutex_lock(&cl->lock);
  if (p->uep == ep) {
    old = p->uep;
    p->uep = NULL;
    p->ucx_off_nonce = p->ucx_nonce;
    p->ucx_off_until_us = kvds_now_us() + UCX_RETRY_MS * 1000;
  }
  pthread_mutex_unlock(&cl->lock);
  kvds_ucx_ep_unref(old);
  atomic_fetch_add(&p->ucx_errors, 1);
  kvds__logf(1, "cluster: UCX read from %s failed (%s): TCP for the next %d s",
             p->id, kvds_strerror(rc), UCX_RETRY_MS / 1000);
}

/* Pulls k[0..n) from p over UCX: pins the values there (over c), reads
 * each one-sided straight into a new object here, seals it once its
 * checksum matched, then drops the pins. Returns 0; the endpoint's error
 * (the keys still pending may be pulled over TCP); or c's (the keys' err
 * is set). */
static int pull_ucx(struct kvds_cluster *cl, struct kvds_peer *p,
                    struct kvds_peerconn *c, struct kvds_ucx_ep *ep,
                    struct jkey **k, size_t n, int wait_ms,
                    uint64_t deadline_us) {
  struct kvds_server *s = cl->s;
  struct kvds_iov *iov = malloc(n * sizeof *iov);
  struct kvds_value *vals = calloc(n, sizeof *vals);
  int *res = calloc(n, sizeof *res);
  uint64_t *offs = calloc(n, sizeof *offs);
  struct kvds_object **obj = calloc(n, sizeof *obj);
  struct kvds_ucx_read *rd = malloc(n * sizeof *rd);
  size_t *idx = malloc(n * sizeof *idx);
  int rc = -ENOMEM;
  uint64_t t0 = kvds_now_us();
  if (!iov || !vals || !res || !offs || !obj || !rd || !idx) {
    for (size_t i = 0; i < n; i++)
      k[i]->err = rc;
    goto out;
  }
  for (size_t i = 0; i < n; i++)
    iov[i] = (struct kvds_iov){(void *)k[i]->key, k[i]->klen};
  struct kvds_get_opts o = {pull_wait(c, wait_ms, t0, deadline_us), NULL,
                            KVDS_GET_LOCAL};
  if ((rc = kvds_peerconn_pin(c, n, iov, &o, vals, res, offs))) {
    atomic_fetch_add(&p->pull_errors, 1);
    kvds__logf(2, "cluster: pinning %zu keys on %s failed: %s", n, p->id,
               kvds_strerror(rc));
    for (size_t i = 0; i < n; i++)
      k[i]->err = rc == KVDS_E_TIMEOUT ? KVDS_E_TIMEOUT : KVDS_E_PEER;
    goto out;
  }
  struct pull_ctx pc = {s, cl, p, k, obj, NULL, deadline_us};
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t *dst;
    if (res[i])
      k[i]->err = res[i]; /* the owner's answer: not retried over TCP */
    else if ((dst = pull_create(&pc, i, vals[i].len))) {
      rd[m] = (struct kvds_ucx_read){offs[i], vals[i].len, dst};
      idx[m++] = i;
    }
  }
  rc = m ? kvds_ucx_read(ep, rd, m, deadline_us) : 0;
  for (size_t j = 0; j < m; j++) {
    size_t i = idx[j];
    if (rc == KVDS_E_STATE) { /* UCX may still write there: never reused */
      obj[i] = NULL;
      k[i]->err = KVDS_E_PEER;
      continue;
    }
    uint64_t sum = rc ? 0 : kvds_checksum(rd[j].dst, rd[j].len);
    int st = rc ? rc : sum == vals[i].checksum ? 0 : KVDS_E_CHECKSUM;
    if (st == KVDS_E_CHECKSUM)
      kvds__logf(1,
                 "cluster: a value read from %s over UCX has the wrong "
                 "checksum: dropped",
                 p->id);
    pull_end(&pc, i, st, sum);
    if (!st)
      atomic_fetch_add(&p->ucx_in, 1);
  }
  if (rc == KVDS_E_STATE)
    kvds__logf(0,
               "cluster: UCX kept reads from %s after their endpoint was "
               "closed: %zu objects are left unused",
               p->id, m);
  if (kvds_peerconn_is_connected(c))
    kvds_peerconn_release(c, n, vals);
  atomic_fetch_add(&p->pulls, 1);
  kvds__peer_lat_record(p, kvds_now_us() - t0);
  if (rc) {
    atomic_fetch_add(&p->pull_errors, 1);
    ucx_failed(cl, p, ep, rc);
  }
out:
  free(iov);
  free(vals);
  free(res);
  free(offs);
  free(obj);
  free(rd);
  free(idx);
  return rc;
}

/* Pulls keys k[0..n) from p, waiting up to wait_ms there for keys not
 * sealed yet: over UCX when both ends have it (what its endpoint fails to
 * read comes over TCP then), else over TCP. */
static void pull_from(struct kvds_cluster *cl, struct kvds_peer *p,
                      struct jkey **k, size_t n, int wait_ms,
                      uint64_t deadline_us) {
  int err = 0;
  uint64_t gen;
  for (size_t i = 0; i < n; i++)
    if (k[i]->ntried <= LOCATE_MAX_OWNERS)
      k[i]->tried[k[i]->ntried++] = p;
  struct kvds_peerconn *c = kvds__pconn_get(cl, p, deadline_us, &gen, &err);
  if (!c) {
    for (size_t i = 0; i < n; i++)
      k[i]->err = err;
    atomic_fetch_add(&p->pull_errors, 1);
    return;
  }
  struct kvds_ucx_ep *ep = ucx_ep(cl, p, c);
  if (ep) {
    int rc = pull_ucx(cl, p, c, ep, k, n, wait_ms, deadline_us);
    kvds_ucx_ep_unref(ep);
    /* the endpoint failed (not the connection): what it failed to read
     * (each such key's err is the endpoint's) over TCP */
    size_t m = 0;
    if (rc && rc != KVDS_E_STATE && kvds_peerconn_is_connected(c) &&
        kvds_now_us() < deadline_us)
      for (size_t i = 0; i < n; i++)
        if (k[i]->state == K_PENDING && k[i]->err == rc)
          k[m++] = k[i];
    n = m;
  }
  if (n)
    pull_tcp(cl, p, c, k, n, wait_ms, deadline_us);
  kvds__pconn_put(cl, p, c, gen);
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
static void locate(struct kvds_cluster *cl, const struct kvds_view *v,
                   struct jkey **k, size_t n, uint64_t deadline_us) {
  size_t *home = malloc((n ? n : 1) * sizeof *home);
  struct jkey **grp = malloc((n ? n : 1) * sizeof *grp);
  struct kvds_proto_item *it = malloc((n ? n : 1) * sizeof *it);
  const void **keys = malloc((n ? n : 1) * sizeof *keys);
  if (!home || !grp || !it || !keys)
    goto out;
  for (size_t i = 0; i < n; i++)
    home[i] = kvds_view_home(v, k[i]->key, k[i]->klen);
  for (size_t h = 0; h < v->n; h++) {
    size_t g = 0;
    for (size_t i = 0; i < n; i++)
      if (home[i] == h)
        grp[g++] = k[i];
    if (!g)
      continue;
    if (!vpeer(v, h)) { /* our own shard */
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
    uint64_t gen, cap = kvds_deadline_ms(LOCATE_MS);
    uint64_t until = deadline_us < cap ? deadline_us : cap;
    struct kvds_peerconn *c =
        kvds__pconn_get(cl, vpeer(v, h), until, &gen, &err);
    if (c) {
      uint64_t now = kvds_now_us();
      kvds_peerconn_set_timeout(c, kvds_deadline_left_ms(until, now));
      struct loc_ctx lc = {grp, g, 0, 0};
      rc = kvds_peerconn_call(c, KVDS_OP_LOCATE, KVDS_PF_LOCAL, 0, g, it, keys,
                              loc_item, &lc);
      kvds__pconn_put(cl, vpeer(v, h), c, gen);
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
                                    const struct kvds_view *v, struct jkey *k) {
  long at = kvds_view_next_owner(v, cl->self_id, k->owners, k->nowners,
                                 k->tried, (size_t)k->ntried);
  return at < 0 ? NULL : vpeer(v, (size_t)at);
}

/* The live peer a hint names (by id or data address), or NULL. */
static struct kvds_peer *hint_peer(const struct kvds_view *v, const uint8_t *h,
                                   uint32_t hl) {
  for (size_t i = 0; hl && i < v->n; i++) {
    struct kvds_peer *p = vpeer(v, i);
    if (p && ((strlen(p->id) == hl && memcmp(p->id, h, hl) == 0) ||
              (strlen(p->addr) == hl && memcmp(p->addr, h, hl) == 0)))
      return p;
  }
  return NULL;
}

/* State for n keys of w (idx[i], or i when idx is NULL) and room for n
 * pointers to them; 0 or -ENOMEM. */
static int jkeys_new(const struct kvds_wait *w, const uint32_t *idx, size_t n,
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
    uint32_t kl;
    const uint8_t *key = kvds_wait_key(w, idx ? idx[i] : (uint32_t)i, &kl);
    (*ks)[i] = (struct jkey){.key = key, .klen = kl, .err = KVDS_E_NOTFOUND};
  }
  return 0;
}

static void jkeys_free(struct jkey *ks, struct jkey **pk, size_t n) {
  for (size_t i = 0; ks && i < n; i++)
    free(ks[i].owners);
  free(ks);
  free(pk);
}

/* GET: pull the job's keys; what stays missing fails through the wait. */
static void run_get(struct kvds_cluster *cl, struct job *j,
                    const struct kvds_view *v) {
  size_t n = j->n;
  struct jkey *ks, **pk;
  if (jkeys_new(j->w, j->idx, n, &ks, &pk))
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
      int left = kvds_deadline_left_ms(j->deadline_us, now);
      if (ms > left)
        ms = left;
      kvds_sleep_ms(ms);
      backoff = backoff * 2 > 100 ? 100 : backoff * 2;
      for (size_t i = 0; i < m; i++)
        pk[i]->ntried = 0; /* owners may have it now */
    }
  }
  /* 3. What is still missing fails now rather than at the deadline (all
   * at once; key by key if there is no memory for the list). */
  size_t found = 0, missed = 0;
  uint32_t *fidx = malloc(n * sizeof *fidx);
  int32_t *fst = malloc(n * sizeof *fst);
  for (size_t i = 0; i < n; i++) {
    if (ks[i].state == K_DONE) {
      found++;
      continue;
    }
    int32_t e = ks[i].err;
    if (e == KVDS_E_NOTFOUND && j->wait_ms > 0)
      e = KVDS_E_TIMEOUT;
    if (fidx && fst) {
      fidx[missed] = j->idx[i];
      fst[missed] = e;
    } else {
      kvds_wait_fail(j->w, 1, &j->idx[i], &e);
    }
    missed++;
  }
  if (fidx && fst)
    kvds_wait_fail(j->w, (uint32_t)missed, fidx, fst);
  free(fidx);
  free(fst);
  atomic_fetch_add(&cl->remote_found, found);
  atomic_fetch_add(&cl->remote_missed, missed);
  jkeys_free(ks, pk, n);
}

/* EXISTS / LOOKUP_PREFIX / LOCATE: ask the homes of the keys not here. */
static void run_find(struct kvds_cluster *cl, struct job *j,
                     const struct kvds_view *v) {
  struct kvds_wait *w = j->w;
  int kind = kvds_wait_kind(w);
  size_t n = kvds_wait_count(w);
  struct jkey *ks, **pk;
  int32_t *st = NULL;
  struct reply r;
  kvds__reply_init(&r);
  if (jkeys_new(w, NULL, n, &ks, &pk))
    goto out;
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (kind == KVDS_WAIT_LOCATE || kvds_wait_local(w, (uint32_t)i))
      pk[m++] = &ks[i];
  locate(cl, v, pk, m, j->deadline_us);
  if (kind == KVDS_WAIT_LOCATE) {
    for (size_t i = 0; i < n; i++) {
      struct jkey *k = &ks[i];
      size_t live = 0;
      int here = kvds_wait_local(w, (uint32_t)i) == 0, self_listed = 0;
      for (size_t o = 0; o < k->nowners; o++) {
        int me = strcmp(k->owners[o].id, cl->self_id) == 0;
        self_listed |= me;
        live +=
            me ? here : kvds_view_has(v, k->owners[o].id, k->owners[o].epoch);
      }
      int add_self = here && !self_listed;
      kvds__reply_item(&r, live + add_self ? 0 : KVDS_E_NOTFOUND,
                       live + add_self, 0, 0, 0, NULL, 0);
      if (add_self)
        kvds__reply_item(&r, 0, cl->self_epoch, 0, 0, 0, cl->self_id,
                         (uint32_t)strlen(cl->self_id));
      for (size_t o = 0; o < k->nowners; o++) {
        int me = strcmp(k->owners[o].id, cl->self_id) == 0;
        if (me ? here : kvds_view_has(v, k->owners[o].id, k->owners[o].epoch))
          kvds__reply_item(&r, 0, k->owners[o].epoch, 0, 0, 0, k->owners[o].id,
                           (uint32_t)strlen(k->owners[o].id));
      }
    }
  } else {
    if (!(st = malloc((n ? n : 1) * sizeof *st)))
      goto out;
    for (size_t i = 0; i < n; i++) {
      st[i] = kvds_wait_local(w, (uint32_t)i);
      for (size_t o = 0; st[i] && o < ks[i].nowners; o++)
        if (strcmp(ks[i].owners[o].id, cl->self_id) != 0 &&
            kvds_view_has(v, ks[i].owners[o].id, ks[i].owners[o].epoch))
          st[i] = 0;
    }
    if (kind == KVDS_WAIT_LOOKUP) {
      size_t p = 0;
      while (p < n && st[p] == 0)
        p++;
      kvds__reply_item(&r, 0, p, 0, 0, 0, NULL, 0);
    }
  }
  if (!r.b.oom) {
    kvds_wait_answer(w, kind == KVDS_WAIT_EXISTS ? st : NULL, r.b.buf, r.b.len,
                     r.b.count);
    r.b.buf = NULL;
  }
out:
  free(st);
  free(r.b.buf);
  jkeys_free(ks, pk, n);
}

void *kvds__jobs_main(void *arg) {
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
    cl->nqueued--;
    if (j->split) {
      int stop = cl->stopping;
      cl->nbusy++;
      pthread_mutex_unlock(&cl->lock);
      if (stop)
        kvds__split_unref(j->split);
      else
        kvds__split_help(cl, j->split);
      free(j);
      pthread_mutex_lock(&cl->lock);
      cl->nbusy--;
      continue;
    }
    cl->nbusy++;
    struct kvds_view v;
    int rc = kvds_view_copy(&v, &cl->view);
    int stop = cl->stopping;
    pthread_mutex_unlock(&cl->lock);
    if (!rc && !stop) {
      if (kvds_wait_kind(j->w) == KVDS_WAIT_GET)
        run_get(cl, j, &v);
      else
        run_find(cl, j, &v);
    }
    if (!rc)
      kvds_view_free(&v);
    kvds__job_drop(j);
    pthread_mutex_lock(&cl->lock);
    cl->nbusy--;
  }
  pthread_mutex_unlock(&cl->lock);
  return NULL;
}

void kvds__job_drop(struct job *j) {
  if (j->split) {
    kvds__split_unref(j->split);
    free(j);
    return;
  }
  kvds_wait_unhold(j->w);
  free(j->idx);
  free(j);
}

int kvds__jobs_submit(void *self, const struct kvds_miss *m) {
  struct kvds_cluster *cl = self;
  struct kvds_wait *w = m->wait;
  int get = kvds_wait_kind(w) == KVDS_WAIT_GET;
  uint32_t n = kvds_wait_count(w);
  uint32_t hlen = m->hlen < KVDS_MEMBER_ID_MAX ? m->hlen : 0; /* else no
                                                                 member */
  uint32_t *open = malloc((n ? n : 1) * sizeof *open);
  if (!open)
    return -ENOMEM;
  /* The keys still awaited (a seal on another thread may have filled some
   * since the request registered its waits). */
  uint32_t nopen = kvds_wait_open(w, open);
  /* Parallel streams: a GET's keys are split over the job threads, at
   * least 4 keys per job (each job asks the homes once). */
  uint32_t njobs = get ? (nopen + 3) / 4 : 1;
  if (njobs > (uint32_t)cl->npullers)
    njobs = (uint32_t)cl->npullers;
  if (!nopen || !njobs) {
    free(open);
    return 0;
  }
  struct job **js = calloc(njobs, sizeof *js);
  int rc = js ? 0 : -ENOMEM;
  for (uint32_t k = 0; !rc && k < njobs; k++) {
    uint32_t lo = (uint32_t)((uint64_t)nopen * k / njobs);
    uint32_t hi = (uint32_t)((uint64_t)nopen * (k + 1) / njobs);
    struct job *j = calloc(1, sizeof *j);
    if (j && get && !(j->idx = malloc((hi - lo) * sizeof *j->idx))) {
      free(j);
      j = NULL;
    }
    if (!j) {
      rc = -ENOMEM;
      break;
    }
    j->w = w;
    j->n = hi - lo;
    if (j->idx)
      memcpy(j->idx, open + lo, j->n * sizeof *j->idx);
    j->deadline_us = m->deadline_us;
    j->wait_ms = m->wait_ms;
    j->hlen = hlen;
    if (hlen)
      memcpy(j->hint, m->hint, hlen);
    kvds_wait_hold(w);
    js[k] = j;
  }
  free(open);
  if (rc) {
    for (uint32_t k = 0; js && k < njobs; k++)
      if (js[k])
        kvds__job_drop(js[k]);
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
  cl->nqueued += (int)njobs;
  pthread_cond_broadcast(&cl->job_cv);
  pthread_mutex_unlock(&cl->lock);
  free(js);
  return 0;
}
