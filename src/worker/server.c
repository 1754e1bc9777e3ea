/*
 * server.c — request dispatch of the worker: one function per opcode over
 * the object store, and the reply builder. A request that misses keys
 * waits (wait.c) for local seals and asks the resolver (resolver.h: the
 * cluster) for them. Framing and sockets are in conn.c; threads and
 * start-up in worker.c.
 */
#include <errno.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/array.h"
#include "common/clock.h"
#include "common/hash.h"
#include "common/util.h"
#include "kvds/kvds.h"
#include "net/ucx.h"
#include "worker/cluster/cluster.h"
#include "worker/server.h"
#include "worker/stats.h"
#include "worker/tier/tier.h"

/* ---- replies ------------------------------------------------------------ */

void kvds__reply_init(struct reply *r) {
  kvds_proto_build_init(&r->b);
}

void kvds__reply_item(struct reply *r, int32_t status, uint64_t a, uint64_t b,
                      uint64_t c, uint64_t d, const void *key, uint32_t klen) {
  struct kvds_proto_item it = {
      .status = status, .klen = klen, .a = a, .b = b, .c = c, .d = d};
  kvds_proto_build_item(&r->b, &it, key); /* a failure is kept in r->b.oom */
}

int kvds__reply_send(struct conn *c, struct reply *r, uint8_t op,
                     uint64_t req_id, uint16_t flags, int32_t status,
                     uint64_t data_len, int send_fd) {
  struct kvds_proto_hdr h = {.opcode = op,
                             .flags = (uint16_t)(flags | KVDS_PF_REPLY),
                             .req_id = req_id,
                             .status = status,
                             .data_len = data_len};
  if (kvds_proto_build_finish(&r->b, &h)) {
    /* The full answer is lost (and with it, maybe, handles the client will
     * never learn): say why if we can, then drop the connection, whose close
     * releases everything it held. */
    kvds_proto_build_free(&r->b);
    c->closing = 1;
    if (!(flags & KVDS_PF_REPLY)) /* not already the status fallback */
      kvds__reply_status(c, op, req_id, -ENOMEM);
    return -ENOMEM;
  }
  int rc = kvds__conn_queue(c, r->b.buf, r->b.len, r->b.buf, NULL, send_fd);
  r->b.buf = NULL;
  return rc;
}

void kvds__reply_status(struct conn *c, uint8_t op, uint64_t req_id,
                        int32_t status) {
  struct reply r;
  kvds__reply_init(&r);
  kvds__reply_send(c, &r, op, req_id, KVDS_PF_REPLY, status, 0, -1);
}

/* ---- helpers ------------------------------------------------------------ */

struct req_items {
  uint32_t n;
  struct kvds_proto_item *it;
  const uint8_t **key;
};

/* Decodes all items of a validated meta block. */
static int items_decode(const struct kvds_proto_hdr *h, const uint8_t *meta,
                        struct req_items *ri) {
  ri->n = h->count;
  ri->it = malloc((h->count ? h->count : 1) * sizeof *ri->it);
  ri->key = malloc((h->count ? h->count : 1) * sizeof *ri->key);
  if (!ri->it || !ri->key) {
    free(ri->it);
    free(ri->key);
    return -ENOMEM;
  }
  size_t pos = 0;
  for (uint32_t i = 0; i < h->count; i++) {
    if (kvds_proto_item_decode(meta, h->meta_len, &pos, &ri->it[i],
                               &ri->key[i])) {
      free(ri->it);
      free(ri->key);
      return KVDS_E_PROTO;
    }
  }
  return 0;
}

static void items_free(struct req_items *ri) {
  free(ri->it);
  free(ri->key);
}

#define LOCK(s) pthread_mutex_lock(&(s)->store.lock)
#define UNLOCK(s) pthread_mutex_unlock(&(s)->store.lock)

/* GET with KVDS_PF_RANGE: the bytes [*off, *off + *len) of o that request
 * item q asks for (q NULL: all of them, as a waiting request gets). */
static void range_of(const struct kvds_object *o,
                     const struct kvds_proto_item *q, uint64_t *off,
                     uint64_t *len) {
  *off = 0;
  *len = o->size;
  if (!q || (q->a == 0 && o->size <= q->d)) /* whole, as asked */
    return;
  *off = q->a; /* <= o->size: checked by op_get */
  *len = o->size - q->a;
  if (q->b && q->b < *len)
    *len = q->b;
}

/* Queues the reply of a GET whose objects are pinned in objs[] (NULL where
 * status[] says why not). Pins move to the handle table (local) or to the
 * data chunks (inline). With KVDS_PF_RANGE (inline), q[i] says which bytes
 * of value i go out (q NULL: all). */
static void get_reply(struct conn *c, uint64_t req_id, uint16_t flags,
                      uint32_t n, struct kvds_object **objs,
                      const int32_t *status, const struct kvds_proto_item *q) {
  struct kvds_server *s = c->th->srv;
  struct reply r;
  kvds__reply_init(&r);
  int inl = (flags & KVDS_PF_INLINE) != 0;
  int rng = inl && (flags & KVDS_PF_RANGE);
  uint64_t data_len = 0;
  uint32_t misses = 0;
  for (uint32_t i = 0; i < n; i++) {
    struct kvds_object *o = objs[i];
    if (!o) {
      misses++;
      kvds__reply_item(&r, status[i], 0, 0, 0, 0, NULL, 0);
      continue;
    }
    if (rng) {
      uint64_t off, len;
      range_of(o, q ? &q[i] : NULL, &off, &len);
      data_len += len;
      kvds__reply_item(&r, 0, o->size, off, o->checksum, len, NULL, 0);
      continue;
    }
    uint64_t h = 0;
    if (!inl) {
      h = kvds__ref_add(c, o, REF_PIN);
      if (!h) {
        LOCK(s);
        kvds_store_unpin(&s->store, o);
        UNLOCK(s);
        objs[i] = NULL;
        kvds__reply_item(&r, -ENOMEM, 0, 0, 0, 0, NULL, 0);
        continue;
      }
    } else {
      data_len += o->size;
    }
    kvds__reply_item(&r, 0, o->size, inl ? 0 : o->off, o->checksum, h, NULL, 0);
  }
  if (misses) {
    LOCK(s);
    s->store.ctr.misses += misses;
    UNLOCK(s);
  }
  if (r.b.oom) {
    /* Could not describe the values: drop the connection, whose close gives
     * every pin back. Inline pins are not queued yet, so return them. */
    if (inl) {
      LOCK(s);
      for (uint32_t i = 0; i < n; i++)
        if (objs[i])
          kvds_store_unpin(&s->store, objs[i]);
      UNLOCK(s);
    }
    free(r.b.buf);
    c->closing = 1;
    return;
  }
  if (kvds__reply_send(c, &r, KVDS_OP_GET, req_id, flags & KVDS_PF_INLINE, 0,
                       data_len, -1)) {
    if (inl) { /* not queued: give the pins back (the conn is closing) */
      LOCK(s);
      for (uint32_t i = 0; i < n; i++)
        if (objs[i])
          kvds_store_unpin(&s->store, objs[i]);
      UNLOCK(s);
    }
    return;
  }
  for (uint32_t i = 0; inl && i < n; i++) {
    uint64_t off = 0, len = objs[i] ? objs[i]->size : 0;
    if (objs[i] && rng)
      range_of(objs[i], q ? &q[i] : NULL, &off, &len);
    if (objs[i] &&
        kvds__conn_queue(c, kvds_store_data(&s->store, objs[i]) + off,
                         (size_t)len, NULL, objs[i], -1)) {
      /* Queueing failed (pin already dropped): drop the rest too. */
      LOCK(s);
      for (uint32_t k = i + 1; k < n; k++)
        if (objs[k])
          kvds_store_unpin(&s->store, objs[k]);
      UNLOCK(s);
      break;
    }
  }
}

void kvds__reply_find(struct reply *r, int kind, uint32_t n,
                      const int32_t *st) {
  if (kind == KVDS_WAIT_LOOKUP) {
    uint32_t p = 0;
    while (p < n && st[p] == 0)
      p++;
    kvds__reply_item(r, 0, p, 0, 0, 0, NULL, 0);
    return;
  }
  for (uint32_t i = 0; i < n; i++) {
    int here = st[i] == 0;
    if (kind == KVDS_WAIT_EXISTS) {
      kvds__reply_item(r, st[i], 0, 0, 0, 0, NULL, 0);
      continue;
    }
    kvds__reply_item(r, here ? 0 : KVDS_E_NOTFOUND, (uint64_t)here, 0, 0, 0,
                     NULL, 0);
    if (here) /* one owner: this worker, with no id */
      kvds__reply_item(r, 0, 0, 0, 0, 0, "", 0);
  }
}

/* Answers seals whose objects were to be persisted (KVDS_WAIT_SEAL): the
 * tier's status per object (its DRAM copy is sealed whatever it says). */
static void seal_answer(struct conn *c, const struct kvds_wait_answer *a) {
  struct kvds_server *s = c->th->srv;
  struct reply r;
  kvds__reply_init(&r);
  for (uint32_t i = 0; i < a->n; i++) {
    struct kvds_object *o = a->objs[i];
    int32_t rc = o && a->timed_out ? KVDS_E_TIMEOUT : a->status[i];
    kvds__reply_item(&r, rc, o && !rc ? o->checksum : 0, 0, 0, 0, NULL, 0);
  }
  LOCK(s);
  for (uint32_t i = 0; i < a->n; i++)
    if (a->objs[i])
      kvds_store_unpin(&s->store, a->objs[i]);
  UNLOCK(s);
  kvds__reply_send(c, &r, (uint8_t)a->flags, a->req_id, 0, 0, 0, -1);
}

static const uint8_t wait_op[] = {[KVDS_WAIT_GET] = KVDS_OP_GET,
                                  [KVDS_WAIT_EXISTS] = KVDS_OP_EXISTS,
                                  [KVDS_WAIT_LOOKUP] = KVDS_OP_LOOKUP_PREFIX,
                                  [KVDS_WAIT_LOCATE] = KVDS_OP_LOCATE};

/* The wait module's answer hook (owner thread, no lock held). */
void kvds__server_on_answer(void *owner, const struct kvds_wait_answer *a) {
  struct conn *c = owner;
  if (a->kind == KVDS_WAIT_GET) {
    get_reply(c, a->req_id, a->flags, a->n, a->objs, a->status, NULL);
  } else if (a->kind == KVDS_WAIT_SEAL) {
    seal_answer(c, a);
  } else if (a->timed_out) { /* the resolver did not answer in time */
    kvds__reply_status(c, wait_op[a->kind], a->req_id, KVDS_E_TIMEOUT);
  } else if (a->kind == KVDS_WAIT_EXISTS) {
    struct reply r;
    kvds__reply_init(&r);
    kvds__reply_find(&r, KVDS_WAIT_EXISTS, a->n, a->status);
    kvds__reply_send(c, &r, KVDS_OP_EXISTS, a->req_id, 0, 0, 0, -1);
  } else {
    /* the resolver's frame, or an empty one if it sent no bytes */
    struct reply r;
    kvds__reply_init(&r);
    if (a->out && a->out_len >= KVDS_PROTO_HDR_LEN) {
      r.b = (struct kvds_proto_builder){.buf = a->out,
                                        .len = a->out_len,
                                        .cap = a->out_len,
                                        .count = a->out_count};
      *a->out_taken = 1;
    }
    kvds__reply_send(c, &r, wait_op[a->kind], a->req_id, 0, 0, 0, -1);
  }
}

/* The wait module's hook after an answer: send it. */
void kvds__server_after_answer(void *owner) {
  kvds__conn_flush(owner);
}

/* ---- ops without bulk data ---------------------------------------------- */

static int op_hello(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  int want_shm = ri->n > 0 && (ri->it[0].a & KVDS_HELLO_F_SHM);
  int fd = (want_shm && c->is_unix) ? s->pool.fd : -1;
  if (ri->n > 1 && ri->it[1].klen &&
      ri->it[1].klen < KVDS_MEMBER_ID_MAX) { /* a peer worker's connection */
    c->peer = kvds__cluster_peer(s, ri->key[1], ri->it[1].klen);
    free(c->peer_name);
    if ((c->peer_name = malloc(ri->it[1].klen + 1))) {
      memcpy(c->peer_name, ri->key[1], ri->it[1].klen);
      c->peer_name[ri->it[1].klen] = 0;
    }
  }
  struct reply r;
  kvds__reply_init(&r);
  kvds__reply_item(&r, 0, s->pool.total_size, s->pool.data_offset,
                   (uint64_t)getpid(), s->nonce, s->socket_path,
                   (uint32_t)strlen(s->socket_path));
  kvds__reply_item(&r, 0,
                   KVDS_HELLO_FEATURES | (s->ucx ? KVDS_HELLO_FEAT_UCX : 0), 0,
                   0, 0, NULL, 0);
  kvds__reply_send(c, &r, KVDS_OP_HELLO, c->h.req_id, fd >= 0 ? KVDS_PF_SHM : 0,
                   0, 0, fd);
  return 0;
}

/*
 * AUTH, step 1 (item a=1, key = the client's nonce): answers the worker's
 * nonce and the worker's proof. Step 2 (item a=2, key = the client's proof):
 * answers status 0 and lets the connection send requests. A worker without
 * a token, or a malformed or out-of-order step, answers KVDS_E_AUTH; before
 * the connection authenticated that also closes it.
 */
static int op_auth(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  const struct kvds_proto_item *it = ri->n == 1 ? &ri->it[0] : NULL;
  int rc = KVDS_E_AUTH;
  if (!s->auth || !it)
    goto refuse;
  if (it->a == KVDS_AUTH_STEP_NONCE && it->klen == KVDS_AUTH_NONCE_LEN) {
    uint8_t proof[KVDS_AUTH_PROOF_LEN];
    if ((rc = kvds_auth_nonce(c->auth_wn)))
      goto refuse;
    memcpy(c->auth_cn, ri->key[0], KVDS_AUTH_NONCE_LEN);
    kvds_auth_proof(&s->token, KVDS_AUTH_WORKER, c->auth_wn, c->auth_cn, proof);
    c->auth_step = 1;
    struct reply r;
    kvds__reply_init(&r);
    kvds__reply_item(&r, 0, 1, 0, 0, 0, c->auth_wn, KVDS_AUTH_NONCE_LEN);
    kvds__reply_item(&r, 0, 0, 0, 0, 0, proof, KVDS_AUTH_PROOF_LEN);
    kvds__reply_send(c, &r, KVDS_OP_AUTH, c->h.req_id, 0, 0, 0, -1);
    return 0;
  }
  if (it->a == KVDS_AUTH_STEP_PROOF && c->auth_step == 1 &&
      kvds_auth_verify(&s->token, KVDS_AUTH_CLIENT, c->auth_wn, c->auth_cn,
                       ri->key[0], it->klen) == 0) {
    c->auth_step = 0;
    c->authed = 1;
    kvds__reply_status(c, KVDS_OP_AUTH, c->h.req_id, 0);
    return 0;
  }
refuse:
  c->auth_step = 0;
  kvds__reply_status(c, KVDS_OP_AUTH, c->h.req_id, rc);
  if (!c->authed)
    c->closing = 1;
  return 0;
}

/* 0 if c may start writing one more object of `size` bytes: within
 * --max-writing-per-conn, or the only object it writes (so any value up to
 * --max-object can be stored). Objects created and not sealed count, and
 * those of a PUT in flight. Else KVDS_E_NOSPACE (no space for this
 * connection: clients already skip such an object, as for a full pool),
 * counted (in nospace too) and logged. Store lock held. */
static int writing_admit(struct conn *c, uint64_t size) {
  struct kvds_server *s = c->th->srv;
  uint64_t cap = s->max_writing;
  if (c->writing_bytes == 0 || (size <= cap && c->writing_bytes <= cap - size))
    return 0;
  atomic_fetch_add(&s->writing_refused, 1);
  s->store.ctr.nospace++; /* store lock held: a create answered NOSPACE */
  uint64_t now = kvds_now_us();
  if (now - c->th->limit_log_us > 10000000u) {
    c->th->limit_log_us = now;
    kvds__logf(1,
               "a connection writing %llu bytes asked for %llu more: over "
               "--max-writing-per-conn %llu (KVDS_E_NOSPACE)",
               (unsigned long long)c->writing_bytes, (unsigned long long)size,
               (unsigned long long)cap);
  }
  return KVDS_E_NOSPACE;
}

/* kvds_store_create, and KVDS_E_EXISTS for a key the disk tier has (it
 * is readable here as much as one in DRAM) — unless the directory is
 * shared, where its index may be stale (another worker removed the file):
 * then the put writes the file again. Store lock held. */
static int create(struct kvds_server *s, const uint8_t *key, uint32_t klen,
                  uint64_t size, struct kvds_object **o) {
  if (s->tier && !kvds__tier_probes(s->tier) && klen && klen <= KVDS_KEY_MAX &&
      kvds__tier_has(s->tier, key, klen))
    return KVDS_E_EXISTS;
  return kvds_store_create(&s->store, key, klen, size, o);
}

static int op_create(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  struct reply r;
  kvds__reply_init(&r);
  LOCK(s);
  for (uint32_t i = 0; i < ri->n; i++) {
    struct kvds_object *o = NULL;
    int rc = writing_admit(c, ri->it[i].a);
    if (!rc)
      rc = create(s, ri->key[i], ri->it[i].klen, ri->it[i].a, &o);
    uint64_t h = 0;
    if (!rc && !(h = kvds__ref_add(c, o, REF_WRITER))) {
      kvds_store_abort(&s->store, o);
      rc = -ENOMEM;
    }
    if (!rc)
      c->writing_bytes += o->size;
    if (rc)
      kvds__reply_item(&r, rc, 0, 0, 0, 0, NULL, 0);
    else
      kvds__reply_item(&r, 0, h, o->off, o->size, 0, NULL, 0);
  }
  UNLOCK(s);
  kvds__reply_send(c, &r, KVDS_OP_CREATE, c->h.req_id, 0, 0, 0, -1);
  return 0;
}

/* The disk tier when seals must be persisted before they are answered. */
static struct kvds_tier *write_through(struct kvds_server *s) {
  return s->tier && kvds__tier_write_through(s->tier) ? s->tier : NULL;
}

/* A seal to persist, under its seal's lock hold: a pin for its answer and
 * one for the tier's write. */
static struct kvds_object *hold_for_persist(struct kvds_store *st,
                                            struct kvds_object *o) {
  kvds_store_pin(st, o);
  kvds_store_pin(st, o);
  return o;
}

/* Seals to persist before they are answered: objs[i] sealed and pinned
 * twice under the seal's lock hold (one pin for the answer, one for the
 * tier), or NULL with the seal's error in status[i]. Takes objs and
 * status; answers `op` once the tier is done. */
static int seal_persist(struct conn *c, uint8_t op, uint32_t n,
                        struct kvds_object **objs, int32_t *status) {
  struct kvds_server *s = c->th->srv;
  const uint8_t **keys = calloc(n ? n : 1, sizeof *keys);
  uint32_t *klens = calloc(n ? n : 1, sizeof *klens);
  struct kvds_wait *w = NULL;
  if (keys && klens) {
    for (uint32_t i = 0; i < n; i++) {
      keys[i] = objs[i] ? objs[i]->key : NULL;
      klens[i] = objs[i] ? objs[i]->inode.klen : 0;
    }
    w = kvds_wait_create(c->th->waits, c, &c->waits, KVDS_WAIT_SEAL,
                         c->h.req_id, op, n, keys, klens, objs, status);
  }
  free(keys);
  free(klens);
  if (!w) { /* sealed in DRAM, not persisted: say so */
    struct reply r;
    kvds__reply_init(&r);
    LOCK(s);
    for (uint32_t i = 0; i < n; i++)
      if (objs[i]) {
        kvds_store_unpin(&s->store, objs[i]);
        kvds_store_unpin(&s->store, objs[i]);
        status[i] = -ENOMEM;
      }
    UNLOCK(s);
    for (uint32_t i = 0; i < n; i++)
      kvds__reply_item(&r, status[i], 0, 0, 0, 0, NULL, 0);
    free(objs);
    free(status);
    kvds__reply_send(c, &r, op, c->h.req_id, 0, 0, 0, -1);
    return 0;
  }
  kvds_wait_arm(w, KVDS_DISK_SEAL_TIMEOUT_MS);
  kvds__tier_persist(s->tier, w, n, objs);
  return 0;
}

static int op_seal(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  struct reply r;
  kvds__reply_init(&r);
  struct kvds_tier *wt = write_through(s);
  struct kvds_object **objs = NULL;
  int32_t *status = NULL;
  if (wt && (!(objs = calloc(ri->n ? ri->n : 1, sizeof *objs)) ||
             !(status = calloc(ri->n ? ri->n : 1, sizeof *status)))) {
    free(objs);
    return -ENOMEM;
  }
  for (uint32_t i = 0; i < ri->n; i++) {
    const struct kvds_proto_item *it = &ri->it[i];
    struct ref *rf = kvds__ref_get(c, it->a, REF_WRITER);
    if (!rf) {
      if (wt)
        status[i] = KVDS_E_HANDLE;
      else
        kvds__reply_item(&r, KVDS_E_HANDLE, 0, 0, 0, 0, NULL, 0);
      continue;
    }
    struct kvds_object *o = rf->obj;
    uint64_t sum;
    /* A local client hashed the bytes it wrote; over TCP the worker hashes
     * what arrived and checks it against the sender's sum, if given. */
    if (c->is_unix && (it->c & KVDS_SEAL_F_CHECKSUM)) {
      sum = it->b;
    } else {
      sum = kvds_checksum(kvds_store_data(&s->store, o), o->size);
      if ((it->c & KVDS_SEAL_F_CHECKSUM) && sum != it->b) {
        if (wt)
          status[i] = KVDS_E_CHECKSUM;
        else
          kvds__reply_item(&r, KVDS_E_CHECKSUM, 0, 0, 0, 0, NULL, 0);
        continue;
      }
    }
    c->writing_bytes -= o->size;
    LOCK(s);
    kvds_store_seal(&s->store, o, sum);
    if (wt)
      objs[i] = hold_for_persist(&s->store, o);
    UNLOCK(s);
    kvds__ref_drop(c, rf);
    if (!wt)
      kvds__reply_item(&r, 0, sum, 0, 0, 0, NULL, 0);
  }
  if (wt)
    return seal_persist(c, KVDS_OP_SEAL, ri->n, objs, status);
  kvds__reply_send(c, &r, KVDS_OP_SEAL, c->h.req_id, 0, 0, 0, -1);
  return 0;
}

static int op_abort(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  struct reply r;
  kvds__reply_init(&r);
  LOCK(s);
  for (uint32_t i = 0; i < ri->n; i++) {
    struct ref *rf = kvds__ref_get(c, ri->it[i].a, REF_WRITER);
    if (!rf) {
      kvds__reply_item(&r, KVDS_E_HANDLE, 0, 0, 0, 0, NULL, 0);
      continue;
    }
    c->writing_bytes -= rf->obj->size;
    kvds_store_abort(&s->store, rf->obj);
    kvds__ref_drop(c, rf);
    kvds__reply_item(&r, 0, 0, 0, 0, 0, NULL, 0);
  }
  UNLOCK(s);
  kvds__reply_send(c, &r, KVDS_OP_ABORT, c->h.req_id, 0, 0, 0, -1);
  return 0;
}

/* Hands the open keys of w to the resolver (no lock held); if it takes
 * nothing, w just waits for local seals until its deadline. */
static void wait_submit(struct kvds_server *s, struct kvds_wait *w,
                        const uint8_t *hint, uint32_t hlen, uint32_t ms,
                        int wait_ms, int far, int disk) {
  struct kvds_miss m = {w, hint, hlen, kvds_deadline_ms(ms), wait_ms, NULL};
  if (disk) { /* the disk tier first, then the cluster for what it lacks */
    m.next = far ? &s->resolver : NULL;
    kvds_resolver_submit(kvds__tier_resolver(s->tier), &m);
  } else {
    kvds_resolver_submit(&s->resolver, &m);
  }
}

/* A request the resolver works on is answered by it, and its jobs stop at
 * the deadline (a pull past it is aborted, its object never visible); the
 * request's own timer waits this much longer, so that the answer comes
 * after that clean-up, and only a job stuck beyond it is overtaken. */
#define JOB_GRACE_MS 250

static uint32_t remote_ms(struct kvds_server *s, uint32_t arg) {
  uint32_t t = (uint32_t)s->cfg.pull_timeout_ms;
  return arg > t ? arg : t;
}

/* 1 when the request's misses go to the resolver. */
static int remote(struct conn *c) {
  return !(c->h.flags & KVDS_PF_LOCAL) &&
         kvds_resolver_active(&c->th->srv->resolver);
}

static int op_get(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  uint16_t flags = c->h.flags & KVDS_PF_INLINE;
  if (c->h.flags & KVDS_PF_PIN)
    flags = 0; /* pins and handles only, whatever the transport */
  else if (!c->is_unix)
    flags |= KVDS_PF_INLINE; /* TCP clients cannot map the pool */
  /* ranges: a peer's pull (inline, local, nothing else) */
  int rng = (c->h.flags & KVDS_PF_RANGE) != 0, later = 0;
  if (rng) {
    if ((c->h.flags & (KVDS_PF_PIN | KVDS_PF_HINT)) ||
        !(c->h.flags & KVDS_PF_LOCAL) || !(flags & KVDS_PF_INLINE))
      return KVDS_E_INVAL;
    flags |= KVDS_PF_RANGE;
    for (uint32_t i = 0; i < ri->n; i++)
      later |= ri->it[i].a > 0;
  }
  uint32_t n = ri->n;
  const uint8_t *hint = NULL;
  uint32_t hlen = 0;
  if (c->h.flags & KVDS_PF_HINT) { /* the last item names a worker */
    if (n < 2)
      return KVDS_E_PROTO;
    n--;
    hint = ri->key[n];
    hlen = ri->it[n].klen;
  }
  int far = remote(c);
  struct kvds_object **objs = calloc(n ? n : 1, sizeof *objs);
  int32_t *status = calloc(n ? n : 1, sizeof *status);
  if (!objs || !status) {
    free(objs);
    free(status);
    return -ENOMEM;
  }
  uint32_t missing = 0;
  /* the disk tier reads the misses it has (on a shared directory, it
   * looks for all of them) */
  int disk = s->tier && kvds__tier_probes(s->tier);
  LOCK(s);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t kl = ri->it[i].klen;
    if (kl == 0 || kl > KVDS_KEY_MAX) {
      status[i] = KVDS_E_KEYLEN;
      continue;
    }
    objs[i] = kvds_store_get(&s->store, ri->key[i], kl);
    if (objs[i] && rng && ri->it[i].a > 0 &&
        (ri->it[i].a >= objs[i]->size || objs[i]->checksum != ri->it[i].c)) {
      /* not the value whose first bytes the puller has */
      status[i] = ri->it[i].a >= objs[i]->size ? KVDS_E_RANGE : KVDS_E_NOTFOUND;
      kvds_store_unpin(&s->store, objs[i]);
      objs[i] = NULL;
      continue;
    }
    if (!objs[i]) {
      status[i] = KVDS_E_NOTFOUND;
      missing++;
      if (!disk && s->tier)
        disk = kvds__tier_has(s->tier, ri->key[i], kl);
    }
  }
  if (!missing || later)
    disk = 0; /* a later range is of the value the puller began: no wait */
  if (missing && !later && (c->h.arg > 0 || far || disk)) {
    uint32_t *klens = malloc(n * sizeof *klens);
    struct kvds_wait *w = NULL;
    if (klens) {
      for (uint32_t i = 0; i < n; i++)
        klens[i] = ri->it[i].klen;
      w = kvds_wait_create(c->th->waits, c, &c->waits, KVDS_WAIT_GET,
                           c->h.req_id, flags, n, ri->key, klens, objs, status);
      free(klens);
    }
    if (!w) {
      for (uint32_t i = 0; i < n; i++)
        if (objs[i])
          kvds_store_unpin(&s->store, objs[i]);
      UNLOCK(s);
      free(objs);
      free(status);
      return -ENOMEM;
    }
    kvds_wait_watch_locked(w);
    UNLOCK(s);
    int job = far || disk;
    uint32_t ms = job ? remote_ms(s, c->h.arg) : c->h.arg;
    kvds_wait_arm(w, job ? ms + JOB_GRACE_MS : ms);
    if (job)
      wait_submit(s, w, hint, hlen, ms, (int)c->h.arg, far, disk);
    return 0;
  }
  UNLOCK(s);
  get_reply(c, c->h.req_id, flags, n, objs, status, rng ? ri->it : NULL);
  free(objs);
  free(status);
  return 0;
}

static int op_release(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  struct reply r;
  int noreply = (c->h.flags & KVDS_PF_NOREPLY) != 0;
  kvds__reply_init(&r);
  LOCK(s);
  for (uint32_t i = 0; i < ri->n; i++) {
    struct ref *rf = kvds__ref_get(c, ri->it[i].a, REF_PIN);
    int rc = 0;
    if (rf) {
      kvds_store_unpin(&s->store, rf->obj);
      kvds__ref_drop(c, rf);
    } else {
      rc = KVDS_E_HANDLE;
    }
    if (!noreply)
      kvds__reply_item(&r, rc, 0, 0, 0, 0, NULL, 0);
  }
  UNLOCK(s);
  if (noreply)
    free(r.b.buf);
  else
    kvds__reply_send(c, &r, KVDS_OP_RELEASE, c->h.req_id, 0, 0, 0, -1);
  return 0;
}

static int op_delete(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  struct reply r;
  kvds__reply_init(&r);
  for (uint32_t i = 0; i < ri->n; i++) {
    const uint8_t *key = ri->key[i];
    uint32_t kl = ri->it[i].klen;
    int disk = 0;
    LOCK(s);
    int rc = kvds_store_delete(&s->store, key, kl);
    if (rc == KVDS_E_STATE && s->tier) {
      /* being read in from disk: that read ends unseen, and the file goes
       * below (a WRITING object of a client's stays KVDS_E_STATE) */
      struct kvds_object *o = kvds_store_find(&s->store, key, kl);
      if (o && o->promo) {
        o->doomed = 1;
        rc = KVDS_E_NOTFOUND;
      }
    }
    if (s->tier && rc != KVDS_E_KEYLEN && rc != KVDS_E_STATE)
      disk = kvds__tier_probes(s->tier) || kvds__tier_has(s->tier, key, kl);
    UNLOCK(s);
    if (disk) { /* the disk copy too (a key on disk only: from there) */
      int drc = kvds__tier_delete(s->tier, key, kl);
      if (drc == 0 && rc == KVDS_E_NOTFOUND) {
        LOCK(s); /* this worker no longer holds it */
        if (s->store.notify)
          s->store.notify(key, kl, 0, s->store.notify_ud);
        UNLOCK(s);
      }
      /* read-only: the file stays (and serves the key again): say so */
      if (drc == KVDS_E_STATE || (rc == KVDS_E_NOTFOUND && drc != rc))
        rc = drc;
    }
    kvds__reply_item(&r, rc, 0, 0, 0, 0, NULL, 0);
  }
  kvds__reply_send(c, &r, KVDS_OP_DELETE, c->h.req_id, 0, 0, 0, -1);
  return 0;
}

/* Readable here: sealed in DRAM, or on a disk of its own (store lock
 * held). */
static int sealed(struct kvds_server *s, const uint8_t *key, uint32_t kl) {
  struct kvds_object *o = kvds_store_find(&s->store, key, kl);
  if (o)
    return o->state == KVDS_STATE_SEALED;
  /* a shared directory's files may go at any time: there op_find's tier
   * job looks at the file itself */
  return s->tier && !kvds__tier_probes(s->tier) && kl && kl <= KVDS_KEY_MAX &&
         kvds__tier_has(s->tier, key, kl);
}

/* EXISTS, LOOKUP_PREFIX and LOCATE: the local store first; what it lacks
 * is asked of the resolver (one job, the client sees one round trip). */
static int op_find(struct conn *c, const struct req_items *ri, int kind) {
  struct kvds_server *s = c->th->srv;
  int far = remote(c);
  int32_t stack[64], *st = stack;
  uint32_t kl[64], *klens = kl;
  if (ri->n > 64 && (!(st = malloc(ri->n * sizeof *st)) ||
                     !(klens = malloc(ri->n * sizeof *klens)))) {
    if (st != stack)
      free(st);
    return -ENOMEM;
  }
  uint32_t present = 0;
  LOCK(s);
  for (uint32_t i = 0; i < ri->n; i++) {
    klens[i] = ri->it[i].klen;
    st[i] = sealed(s, ri->key[i], klens[i]) ? 0 : KVDS_E_NOTFOUND;
    present += st[i] == 0;
  }
  UNLOCK(s);
  int rc = 0;
  /* a shared directory may have what the index lacks */
  int disk = s->tier && kvds__tier_probes(s->tier) && present < ri->n;
  if ((far || disk) && ri->n && (present < ri->n || kind == KVDS_WAIT_LOCATE)) {
    struct kvds_wait *w =
        kvds_wait_create(c->th->waits, c, &c->waits, kind, c->h.req_id, 0,
                         ri->n, ri->key, klens, NULL, st);
    if (!w) {
      rc = -ENOMEM;
      goto out;
    }
    uint32_t ms = remote_ms(s, 0);
    kvds_wait_arm(w, ms + JOB_GRACE_MS);
    wait_submit(s, w, NULL, 0, ms, 0, far, disk);
    goto out;
  }
  struct reply r;
  kvds__reply_init(&r);
  if (kind == KVDS_WAIT_LOCATE && s->resolver.ops &&
      s->resolver.ops->locate_local) /* the directory it knows */
    s->resolver.ops->locate_local(s->resolver.self, &r, ri->n, ri->key, klens);
  else
    kvds__reply_find(&r, kind, ri->n, st);
  kvds__reply_send(c, &r, wait_op[kind], c->h.req_id, 0, 0, 0, -1);
out:
  if (st != stack)
    free(st);
  if (klens != kl)
    free(klens);
  return rc;
}

/* LIST: collects matching objects, sorts by key, returns one page. */
struct list_ctx {
  const uint8_t *prefix, *after;
  uint32_t plen, alen;
  struct kvds_object **v;
  size_t n, cap;
  int oom;
};

static int keycmp(const uint8_t *a, uint32_t al, const uint8_t *b,
                  uint32_t bl) {
  int r = memcmp(a, b, al < bl ? al : bl);
  if (r)
    return r;
  return al < bl ? -1 : al > bl;
}

static int list_collect(struct kvds_index_node *n, void *arg) {
  struct list_ctx *lc = arg;
  if (n->klen < lc->plen ||
      (lc->plen && memcmp(n->key, lc->prefix, lc->plen) != 0))
    return 0;
  if (lc->alen && keycmp(n->key, n->klen, lc->after, lc->alen) <= 0)
    return 0;
  if (KVDS_ARRAY_GROW(lc->v, lc->cap, lc->n + 1, 256)) {
    lc->oom = 1;
    return 1;
  }
  lc->v[lc->n++] = kvds_store_obj(n);
  return 0;
}

static int obj_keycmp(const void *a, const void *b) {
  const struct kvds_object *x = *(struct kvds_object *const *)a;
  const struct kvds_object *y = *(struct kvds_object *const *)b;
  return keycmp(x->key, x->inode.klen, y->key, y->inode.klen);
}

#define LIST_DEFAULT 1000u
#define LIST_MAX 10000u
/* A page stops growing at this many reply bytes (then MORE is set). */
#define LIST_REPLY_MAX (1u << 20)

static int op_list(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  struct list_ctx lc = {0};
  if (ri->n > 0) {
    lc.prefix = ri->key[0];
    lc.plen = ri->it[0].klen;
  }
  if (ri->n > 1) {
    lc.after = ri->key[1];
    lc.alen = ri->it[1].klen;
  }
  uint32_t limit = c->h.arg ? c->h.arg : LIST_DEFAULT;
  if (limit > LIST_MAX)
    limit = LIST_MAX;
  struct reply r;
  kvds__reply_init(&r);
  LOCK(s);
  kvds_index_foreach(&s->store.index, list_collect, &lc);
  if (lc.oom) {
    UNLOCK(s);
    free(lc.v);
    return -ENOMEM;
  }
  if (lc.n > 1)
    qsort(lc.v, lc.n, sizeof *lc.v, obj_keycmp);
  size_t k = lc.n < limit ? lc.n : limit, i;
  for (i = 0; i < k && r.b.len < LIST_REPLY_MAX; i++) {
    struct kvds_object *o = lc.v[i];
    kvds__reply_item(&r, 0, o->size, o->state, o->checksum, o->pins, o->key,
                     o->inode.klen);
  }
  UNLOCK(s);
  free(lc.v);
  kvds__reply_send(c, &r, KVDS_OP_LIST, c->h.req_id,
                   lc.n > i ? KVDS_PF_MORE : 0, 0, 0, -1);
  return 0;
}

static int op_stat(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  if (ri->n != 1)
    return KVDS_E_PROTO;
  struct reply r;
  kvds__reply_init(&r);
  LOCK(s);
  struct kvds_object *o =
      kvds_store_find(&s->store, ri->key[0], ri->it[0].klen);
  if (o) {
    kvds__reply_item(&r, 0, o->size, o->checksum,
                     o->state | ((uint64_t)o->pins << 32), o->ctime_us, NULL,
                     0);
    kvds__reply_item(&r, 0, o->atime_us, 0, 0, 0, NULL, 0);
  }
  UNLOCK(s);
  kvds__reply_send(c, &r, KVDS_OP_STAT, c->h.req_id, 0, o ? 0 : KVDS_E_NOTFOUND,
                   0, -1);
  return 0;
}

/* STATS: one item per counter, named as the field of struct kvds_stats
 * (KVDS_STATS_FIELDS), then the worker's limits (KVDS__STATS_LIMITS). */
static int op_stats(struct conn *c) {
  struct kvds__stats st;
  kvds__stats_read(c->th->srv, &st);
  struct reply r;
  kvds__reply_init(&r);
#define ITEM(name)                                                             \
  kvds__reply_item(&r, 0, st.name, 0, 0, 0, #name, sizeof #name - 1);
#define PUBLIC_ITEM(name, doc) ITEM(name)
  KVDS_STATS_FIELDS(PUBLIC_ITEM)
  KVDS__STATS_LIMITS(ITEM)
#undef PUBLIC_ITEM
#undef ITEM
  kvds__reply_send(c, &r, KVDS_OP_STATS, c->h.req_id, 0, 0, 0, -1);
  return 0;
}

/* The membership as JSON text in the reply's data (no items). */
static int op_cluster(struct conn *c) {
  struct kvds_server *s = c->th->srv;
  if (!s->members) {
    kvds__reply_status(c, KVDS_OP_CLUSTER, c->h.req_id, KVDS_E_STATE);
    return 0;
  }
  char *json = NULL;
  json_t *j = kvds_membership_json(s->members);
  if (j) {
    kvds__cluster_annotate(s, j);
    json = json_dumps(j, JSON_COMPACT);
    json_decref(j);
  }
  if (!json) {
    kvds__reply_status(c, KVDS_OP_CLUSTER, c->h.req_id, -ENOMEM);
    return 0;
  }
  size_t len = strlen(json);
  struct reply r;
  kvds__reply_init(&r);
  if (kvds__reply_send(c, &r, KVDS_OP_CLUSTER, c->h.req_id, 0, 0, len, -1)) {
    free(json);
    return 0;
  }
  kvds__conn_queue(c, (const uint8_t *)json, len, (uint8_t *)json, NULL, -1);
  return 0;
}

/* ANNOUNCE: item 0 names the owner (key = member id, a = epoch), the rest
 * are its location changes. Taken only on a connection whose HELLO named
 * that owner, and only while the owner is live in our view with that
 * epoch: a client cannot forge another worker's locations or removals. */
static int op_announce(struct conn *c, const struct req_items *ri) {
  char id[KVDS_MEMBER_ID_MAX];
  if (ri->n < 1 || ri->it[0].klen == 0 || ri->it[0].klen >= sizeof id)
    return KVDS_E_PROTO;
  memcpy(id, ri->key[0], ri->it[0].klen);
  id[ri->it[0].klen] = 0;
  struct kvds_server *s = c->th->srv;
  int rc;
  if (!c->peer_name || strcmp(c->peer_name, id) != 0)
    rc = KVDS_E_PERM; /* only a peer, about itself */
  else if (!s->resolver.ops || !s->resolver.ops->announce)
    rc = KVDS_E_STATE; /* no cluster here */
  else                 /* KVDS_E_STATE: not (yet) in our view, it tries again */
    rc = s->resolver.ops->announce(s->resolver.self, id, ri->it[0].a, ri->n - 1,
                                   ri->it + 1, ri->key + 1);
  if (!c->peer && !rc)
    c->peer = kvds__cluster_peer(s, ri->key[0], ri->it[0].klen);
  kvds__reply_status(c, KVDS_OP_ANNOUNCE, c->h.req_id, rc);
  return 0;
}

/* ---- ops with bulk data -------------------------------------------------- */

static int segs_alloc(struct conn *c, uint32_t n) {
  free(c->segs);
  c->segs = calloc(n ? n : 1, sizeof *c->segs);
  if (!c->segs)
    return -ENOMEM;
  c->nsegs = n;
  c->seg = 0;
  c->seg_off = 0;
  c->data_left = c->h.data_len;
  c->hash_rx = 0;
  return 0;
}

static int op_put(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  uint64_t total = 0;
  for (uint32_t i = 0; i < ri->n; i++) {
    if (ri->it[i].a > c->h.data_len - total)
      return KVDS_E_PROTO;
    total += ri->it[i].a;
  }
  if (total != c->h.data_len)
    return KVDS_E_PROTO;
  if (segs_alloc(c, ri->n))
    return -ENOMEM;
  /* The values are hashed as they arrive (conn.c), not in a second pass. */
  if (!c->rx_hash && !(c->rx_hash = aligned_alloc(64, sizeof *c->rx_hash)))
    return -ENOMEM;
  c->hash_rx = 1;
  free(c->pending);
  free(c->pstatus);
  c->pending = calloc(ri->n ? ri->n : 1, sizeof *c->pending);
  c->pstatus = calloc(ri->n ? ri->n : 1, sizeof *c->pstatus);
  c->npending = ri->n;
  if (!c->pending || !c->pstatus) {
    c->npending = 0;
    return -ENOMEM;
  }
  LOCK(s);
  for (uint32_t i = 0; i < ri->n; i++) {
    struct kvds_object *o = NULL;
    /* Refused items are read into the discard buffer like any other. */
    int rc = writing_admit(c, ri->it[i].a);
    if (!rc)
      rc = create(s, ri->key[i], ri->it[i].klen, ri->it[i].a, &o);
    if (!rc)
      c->writing_bytes += o->size;
    c->pstatus[i] = rc;
    c->pending[i] = rc ? NULL : o;
    c->segs[i].len = ri->it[i].a;
    c->segs[i].p = rc ? NULL : kvds_store_data(&s->store, o);
  }
  UNLOCK(s);
  return c->h.data_len ? 1 : (kvds__server_data_done(c), 0);
}

static int op_write(struct conn *c, const struct req_items *ri) {
  struct kvds_server *s = c->th->srv;
  uint64_t total = 0;
  for (uint32_t i = 0; i < ri->n; i++) {
    if (ri->it[i].c > c->h.data_len - total)
      return KVDS_E_PROTO;
    total += ri->it[i].c;
  }
  if (total != c->h.data_len)
    return KVDS_E_PROTO;
  if (segs_alloc(c, ri->n))
    return -ENOMEM;
  free(c->pstatus);
  c->pstatus = calloc(ri->n ? ri->n : 1, sizeof *c->pstatus);
  if (!c->pstatus)
    return -ENOMEM;
  free(c->pending);
  c->pending = NULL;
  c->npending = 0;
  for (uint32_t i = 0; i < ri->n; i++) {
    const struct kvds_proto_item *it = &ri->it[i];
    struct ref *rf = kvds__ref_get(c, it->a, REF_WRITER);
    c->segs[i].len = it->c;
    c->segs[i].p = NULL;
    if (!rf) {
      c->pstatus[i] = KVDS_E_HANDLE;
    } else if (it->b > rf->obj->size || it->c > rf->obj->size - it->b) {
      c->pstatus[i] = KVDS_E_RANGE;
    } else {
      c->pstatus[i] = 0;
      c->segs[i].p = kvds_store_data(&s->store, rf->obj) + it->b;
    }
  }
  return c->h.data_len ? 1 : (kvds__server_data_done(c), 0);
}

void kvds__server_data_done(struct conn *c) {
  struct kvds_server *s = c->th->srv;
  struct reply r;
  kvds__reply_init(&r);
  if (c->h.opcode == KVDS_OP_PUT) {
    uint32_t n = c->npending;
    struct kvds_tier *wt = write_through(s);
    struct kvds_object **objs = wt ? calloc(n ? n : 1, sizeof *objs) : NULL;
    int32_t *status = wt ? malloc((n ? n : 1) * sizeof *status) : NULL;
    if (wt && (!objs || !status)) {
      free(objs);
      free(status);
      objs = NULL;
      status = NULL;
      wt = NULL; /* no memory: answered unpersisted, like an error below */
    }
    uint64_t *sums = malloc((c->npending ? c->npending : 1) * sizeof *sums);
    for (uint32_t i = 0; i < c->npending; i++) {
      struct kvds_object *o = c->pending[i];
      if (o && sums)
        sums[i] = c->segs[i].summed
                      ? c->segs[i].sum
                      : kvds_checksum(kvds_store_data(&s->store, o), o->size);
    }
    LOCK(s);
    for (uint32_t i = 0; i < c->npending; i++) {
      struct kvds_object *o = c->pending[i];
      if (!o)
        continue;
      c->writing_bytes -= o->size;
      if (sums) {
        kvds_store_seal(&s->store, o, sums[i]);
        if (wt)
          objs[i] = hold_for_persist(&s->store, o);
      } else {
        kvds_store_abort(&s->store, o);
        c->pstatus[i] = -ENOMEM;
      }
      c->pending[i] = NULL;
    }
    UNLOCK(s);
    if (wt) {
      memcpy(status, c->pstatus, n * sizeof *status);
      free(sums);
      free(r.b.buf);
      c->npending = 0;
      seal_persist(c, KVDS_OP_PUT, n, objs, status);
      return;
    }
    for (uint32_t i = 0; i < c->npending; i++)
      kvds__reply_item(&r, c->pstatus[i], c->pstatus[i] ? 0 : sums[i], 0, 0, 0,
                       NULL, 0);
    free(sums);
    c->npending = 0;
  } else {
    for (uint32_t i = 0; i < c->nsegs; i++)
      kvds__reply_item(&r, c->pstatus[i], 0, 0, 0, 0, NULL, 0);
  }
  kvds__reply_send(c, &r, c->h.opcode, c->h.req_id, 0, 0, 0, -1);
}

/* UCX_INFO: this pool's UCX blob, in pieces of at most a key's length. */
static int op_ucx_info(struct conn *c) {
  struct kvds_server *s = c->th->srv;
  if (!s->ucx || c->is_unix) { /* a refusal: the connection stays */
    kvds__reply_status(c, KVDS_OP_UCX_INFO, c->h.req_id, KVDS_E_STATE);
    return 0;
  }
  const void *blob;
  size_t len;
  kvds_ucx_info(s->ucx, &blob, &len);
  struct reply r;
  kvds__reply_init(&r);
  for (size_t off = 0; off < len; off += KVDS_PROTO_KEY_MAX) {
    size_t n = len - off < KVDS_PROTO_KEY_MAX ? len - off : KVDS_PROTO_KEY_MAX;
    kvds__reply_item(&r, 0, off ? 0 : len, 0, 0, 0, (const uint8_t *)blob + off,
                     (uint32_t)n);
  }
  kvds__reply_send(c, &r, KVDS_OP_UCX_INFO, c->h.req_id, 0, 0, 0, -1);
  return 0;
}

/* ---- dispatch ------------------------------------------------------------ */

int kvds__server_request(struct conn *c, const uint8_t *meta) {
  const struct kvds_proto_hdr *h = &c->h;
  int has_data = h->opcode == KVDS_OP_PUT || h->opcode == KVDS_OP_WRITE;
  if (!has_data && h->data_len)
    return KVDS_E_PROTO;
  struct req_items ri;
  int rc = items_decode(h, meta, &ri);
  if (rc)
    return rc;
  switch (h->opcode) {
  case KVDS_OP_HELLO:
    rc = op_hello(c, &ri);
    break;
  case KVDS_OP_PING:
    kvds__reply_status(c, KVDS_OP_PING, h->req_id, 0);
    break;
  case KVDS_OP_UCX_INFO:
    rc = op_ucx_info(c);
    break;
  case KVDS_OP_CREATE:
    rc = op_create(c, &ri);
    break;
  case KVDS_OP_WRITE:
    rc = op_write(c, &ri);
    break;
  case KVDS_OP_SEAL:
    rc = op_seal(c, &ri);
    break;
  case KVDS_OP_ABORT:
    rc = op_abort(c, &ri);
    break;
  case KVDS_OP_PUT:
    rc = op_put(c, &ri);
    break;
  case KVDS_OP_GET:
    rc = op_get(c, &ri);
    break;
  case KVDS_OP_RELEASE:
    rc = op_release(c, &ri);
    break;
  case KVDS_OP_DELETE:
    rc = op_delete(c, &ri);
    break;
  case KVDS_OP_EXISTS:
    rc = op_find(c, &ri, KVDS_WAIT_EXISTS);
    break;
  case KVDS_OP_LOOKUP_PREFIX:
    rc = op_find(c, &ri, KVDS_WAIT_LOOKUP);
    break;
  case KVDS_OP_LIST:
    rc = op_list(c, &ri);
    break;
  case KVDS_OP_STAT:
    rc = op_stat(c, &ri);
    break;
  case KVDS_OP_STATS:
    rc = op_stats(c);
    break;
  case KVDS_OP_AUTH:
    rc = op_auth(c, &ri);
    break;
  case KVDS_OP_CLUSTER:
    rc = op_cluster(c);
    break;
  case KVDS_OP_LOCATE:
    rc = op_find(c, &ri, KVDS_WAIT_LOCATE);
    break;
  case KVDS_OP_ANNOUNCE:
    rc = op_announce(c, &ri);
    break;
  case KVDS_OP_SHUTDOWN:
    kvds__reply_status(c, KVDS_OP_SHUTDOWN, h->req_id, 0);
    kvds__server_stop(c->th->srv);
    break;
  default:
    rc = KVDS_E_BADOP;
    break;
  }
  items_free(&ri);
  return rc;
}

void kvds__server_stop(struct kvds_server *s) {
  atomic_store(&s->stopping, 1);
  /* Activating an event wakes a thread even if it has not entered its loop
   * yet (a loopbreak issued before the loop starts would be forgotten). */
  for (int i = 0; i < s->nthreads; i++) {
    if (s->threads[i].wake_ev)
      event_active(s->threads[i].wake_ev, EV_READ, 0);
    if (s->threads[i].base)
      event_base_loopbreak(s->threads[i].base);
  }
}
