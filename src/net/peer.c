/*
 * peer.c — a worker's connections to its peers (peer.h) over rpc.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/util.h"
#include "net/handshake.h"
#include "net/peer.h"
#include "net/rpc.h"

#define DEFAULT_TIMEOUT_MS 5000
/* A part of a value is received and handed on in pieces this large: each
 * is hashed while it is still in cache. */
#define PART_PIECE ((size_t)256 << 10)

struct kvds_peerconn {
  struct kvds_rpc rpc; /* KVDS_RPC_KEEP_FD: shut down from other threads */
  int timeout_ms;
  uint64_t nonce;
  uint64_t features; /* KVDS_HELLO_FEAT_* the peer announced */
};

/* The deadline of a call without a wait, fixed when it starts. */
static uint64_t io_deadline(const struct kvds_peerconn *pc) {
  return kvds_deadline_ms(pc->timeout_ms);
}

int kvds_peerconn_open(const char *addr, int timeout_ms,
                       const struct kvds_auth_token *tok, const char *self_id,
                       struct kvds_peerconn **out) {
  if (!addr || !*addr || !self_id || !*self_id ||
      strlen(self_id) > KVDS_HELLO_PEER_MAX)
    return KVDS_E_INVAL;
  struct kvds_peerconn *pc = calloc(1, sizeof *pc);
  if (!pc)
    return -ENOMEM;
  kvds_rpc_init(&pc->rpc, KVDS_RPC_KEEP_FD);
  pc->timeout_ms = timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS;
  uint64_t deadline = io_deadline(pc);
  struct kvds_hello hello;
  int rc = kvds_rpc_connect(&pc->rpc, &kvds_transport_tcp, addr, deadline);
  if (!rc && tok)
    rc = kvds_handshake_auth(&pc->rpc, tok, deadline);
  if (!rc)
    rc = kvds_handshake_hello(&pc->rpc, 0, self_id, &hello, deadline);
  if (rc) {
    kvds_peerconn_close(pc);
    return rc;
  }
  pc->nonce = hello.nonce;
  pc->features = hello.features;
  *out = pc;
  return 0;
}

void kvds_peerconn_close(struct kvds_peerconn *pc) {
  if (!pc)
    return;
  kvds_rpc_close(&pc->rpc);
  free(pc);
}

void kvds_peerconn_set_timeout(struct kvds_peerconn *pc, int timeout_ms) {
  if (timeout_ms > 0)
    pc->timeout_ms = timeout_ms;
}

int kvds_peerconn_can_range(const struct kvds_peerconn *pc) {
  return (pc->features & KVDS_HELLO_FEAT_RANGE) != 0;
}

int kvds_peerconn_can_ucx(const struct kvds_peerconn *pc) {
  return (pc->features & KVDS_HELLO_FEAT_UCX) != 0;
}

/* Collects UCX_INFO's items: the blob's pieces, in order. */
struct ucx_blob {
  uint8_t *p;
  size_t len, max, got;
};

static int ucx_item(void *ud, size_t i, const struct kvds_proto_item *it,
                    const uint8_t *key) {
  struct ucx_blob *b = ud;
  if (it->status)
    return it->status;
  if (i == 0) {
    if (!it->a || it->a > b->max || !(b->p = malloc(it->a)))
      return it->a && it->a <= b->max ? -ENOMEM : KVDS_E_PROTO;
    b->len = it->a;
  }
  if (!b->p || it->klen > b->len - b->got)
    return KVDS_E_PROTO;
  memcpy(b->p + b->got, key, it->klen);
  b->got += it->klen;
  return 0;
}

int kvds_peerconn_ucx_info(struct kvds_peerconn *pc, size_t max, uint8_t **blob,
                           size_t *len) {
  struct ucx_blob b = {NULL, 0, max, 0};
  *blob = NULL;
  *len = 0;
  int rc = kvds_peerconn_call(pc, KVDS_OP_UCX_INFO, 0, 0, 0, NULL, NULL,
                              ucx_item, &b);
  if (!rc && (!b.p || b.got != b.len))
    rc = KVDS_E_PROTO;
  if (rc) {
    if (rc == KVDS_E_PROTO || rc == -ENOMEM)
      kvds_rpc_broken(&pc->rpc, rc, "ucx info reply");
    free(b.p);
    return rc;
  }
  *blob = b.p;
  *len = b.len;
  return 0;
}

int kvds_peerconn_is_connected(const struct kvds_peerconn *pc) {
  return kvds_rpc_is_up(&pc->rpc);
}

int kvds_peerconn_stale(const struct kvds_peerconn *pc) {
  return kvds_rpc_stale(&pc->rpc);
}

uint64_t kvds_peerconn_nonce(const struct kvds_peerconn *pc) {
  return pc->nonce;
}

void kvds_peerconn_shutdown(struct kvds_peerconn *pc) {
  if (pc)
    kvds_rpc_shutdown(&pc->rpc);
}

/* Whether reply item `it` answers range q of a pull (or, when q is NULL,
 * a whole-value pull): the bytes it says it sends are part of the value
 * and the ones asked for. */
static int range_ok(const struct kvds_proto_item *it,
                    const struct kvds_peerconn_range *q) {
  if (!q)
    return 1; /* a = size, all of it */
  if (it->b > it->a || it->d > it->a - it->b)
    return 0;
  if (it->b == 0 && it->d == it->a)
    return q->off == 0; /* the whole value (small, or a waited one) */
  if (it->b != q->off || (q->off && it->c != q->checksum))
    return 0;
  uint64_t want = it->a - q->off;
  if (q->len && q->len < want)
    want = q->len;
  return it->d == want && it->a > q->whole;
}

/* Bytes of item `it` in the data of a pull's reply. */
static uint64_t item_len(const struct kvds_proto_item *it, int ranges) {
  return ranges ? it->d : it->a;
}

/* Receives `len` bytes of part of a value into dst, handing each piece to
 * ops->landed while it is still in cache. The deadline is checked between
 * pieces too: bytes that keep coming never make a receive wait, and a
 * part must end by it (its value's other parts wait for it). */
static int recv_part(struct kvds_rpc *r, uint8_t *dst, uint64_t len, size_t i,
                     const struct kvds_peerconn_pull_ops *ops,
                     uint64_t deadline) {
  while (len) {
    if (kvds_now_us() >= deadline)
      return kvds_rpc_broken(r, KVDS_E_TIMEOUT, "receive");
    size_t piece = len < PART_PIECE ? (size_t)len : PART_PIECE;
    int rc = kvds_rpc_recv_data(r, dst, piece, deadline);
    if (rc)
      return rc;
    ops->landed(ops->ud, i, dst, piece);
    dst += piece;
    len -= piece;
  }
  return 0;
}

int kvds_peerconn_pull(struct kvds_peerconn *pc, size_t n,
                       const struct kvds_iov *keys, int wait_ms,
                       const struct kvds_peerconn_range *rg,
                       const struct kvds_peerconn_pull_ops *ops) {
  struct kvds_rpc *r = &pc->rpc;
  size_t i = 0;
  int rc = n > KVDS_BATCH_MAX ? KVDS_E_LIMIT : 0;
  if (!rc && rg && !ops->landed)
    rc = KVDS_E_INVAL;
  uint64_t deadline = kvds_rpc_read_deadline(pc->timeout_ms, wait_ms).io;
  struct kvds_proto_item *it = NULL;
  if (!rc) {
    kvds_rpc_begin(r);
    for (size_t k = 0; k < n; k++) {
      if (rg)
        kvds_rpc_item(r, rg[k].off, rg[k].len, rg[k].checksum, rg[k].whole,
                      keys[k].base, keys[k].len);
      else
        kvds_rpc_item(r, 0, 0, 0, 0, keys[k].base, keys[k].len);
    }
    uint16_t flags = KVDS_PF_INLINE | KVDS_PF_LOCAL;
    if (rg)
      flags |= KVDS_PF_RANGE;
    int64_t id =
        kvds_rpc_send(r, KVDS_OP_GET, flags,
                      wait_ms > 0 ? (uint32_t)wait_ms : 0, NULL, 0, deadline);
    rc = kvds_rpc_recv_reply(r, id, KVDS_OP_GET, deadline);
    if (rc && kvds_rpc_is_up(r) && r->rdata_left) /* a refusal: keep in sync */
      kvds_rpc_recv_data(r, NULL, r->rdata_left, deadline);
  }
  if (!rc && r->rh.count != n)
    rc = kvds_rpc_broken(r, KVDS_E_PROTO, "get reply");
  if (!rc && !(it = malloc((n ? n : 1) * sizeof *it)))
    rc = kvds_rpc_broken(r, -ENOMEM, "get");
  if (!rc) {
    /* Copy the descriptions: receiving data may move the reply buffer. */
    memcpy(it, r->rit, n * sizeof *it);
    uint64_t sum = 0;
    for (size_t k = 0; k < n && sum <= r->rh.data_len; k++) {
      if (it[k].status)
        continue;
      if (!range_ok(&it[k], rg ? &rg[k] : NULL)) {
        sum = UINT64_MAX;
        break;
      }
      uint64_t l = item_len(&it[k], rg != NULL);
      sum = l > r->rh.data_len - sum ? UINT64_MAX : sum + l;
    }
    if (sum != r->rh.data_len)
      rc = kvds_rpc_broken(r, KVDS_E_PROTO, "get reply length");
  }
  for (; !rc && i < n; i++) {
    if (it[i].status) {
      ops->done(ops->ud, i, it[i].status, 0);
      continue;
    }
    uint64_t off = rg ? it[i].b : 0, len = item_len(&it[i], rg != NULL);
    uint8_t *dst = ops->dst(ops->ud, i, it[i].a, off, len, it[i].c);
    if (!dst) {
      if ((rc = kvds_rpc_recv_data(r, NULL, len, deadline)))
        break;
      ops->done(ops->ud, i, KVDS_E_STATE, 0);
      continue;
    }
    if (len < it[i].a) { /* a part: the caller hashes it */
      if ((rc = recv_part(r, dst, len, i, ops, deadline)))
        break;
      ops->done(ops->ud, i, 0, it[i].c);
      continue;
    }
    uint64_t sum;
    if ((rc = kvds_rpc_recv_hashed(r, dst, len, &sum, deadline)))
      break;
    ops->done(ops->ud, i, sum == it[i].c ? 0 : KVDS_E_CHECKSUM, it[i].c);
  }
  for (; rc && i < n; i++)
    ops->done(ops->ud, i, rc, 0);
  free(it);
  return rc;
}

int kvds_peerconn_call(struct kvds_peerconn *pc, uint8_t op, uint16_t flags,
                       uint32_t arg, size_t n,
                       const struct kvds_proto_item *its,
                       const void *const *keys,
                       int (*on_item)(void *ud, size_t i,
                                      const struct kvds_proto_item *it,
                                      const uint8_t *key),
                       void *ud) {
  struct kvds_rpc *r = &pc->rpc;
  kvds_rpc_begin(r);
  for (size_t i = 0; i < n; i++)
    kvds_rpc_item(r, its[i].a, its[i].b, its[i].c, its[i].d, keys[i],
                  its[i].klen);
  int rc = kvds_rpc_call(r, op, flags, arg, io_deadline(pc));
  if (rc)
    return rc;
  for (uint32_t i = 0; on_item && i < r->rh.count; i++)
    if ((rc = on_item(ud, i, &r->rit[i], r->rkey[i])))
      return rc;
  return 0;
}

static int release_vals(struct kvds_peerconn *pc, size_t n,
                        struct kvds_value *vals, uint64_t deadline);

/* One request of kvds_peerconn_pin (n <= KVDS_BATCH_MAX). */
static int pin_chunk(struct kvds_peerconn *pc, size_t n,
                     const struct kvds_iov *keys, const struct kvds_get_opts *o,
                     struct kvds_value *vals, int *results, uint64_t *offs,
                     const struct kvds_rpc_deadline *dl) {
  struct kvds_rpc *r = &pc->rpc;
  uint16_t flags = KVDS_PF_PIN;
  if (o && (o->flags & KVDS_GET_LOCAL))
    flags |= KVDS_PF_LOCAL;
  kvds_rpc_begin(r);
  for (size_t i = 0; i < n; i++)
    kvds_rpc_item(r, 0, 0, 0, 0, keys[i].base, keys[i].len);
  if (o && o->hint && *o->hint) {
    flags |= KVDS_PF_HINT;
    kvds_rpc_item(r, 0, 0, 0, 0, o->hint, strlen(o->hint));
  }
  int64_t id = kvds_rpc_send(r, KVDS_OP_GET, flags,
                             kvds_rpc_wait_left(dl, o ? o->wait_ms : 0), NULL,
                             0, dl->io);
  int rc = kvds_rpc_recv_reply(r, id, KVDS_OP_GET, dl->io);
  if (rc)
    return rc;
  if (r->rh.count != n)
    return kvds_rpc_broken(r, KVDS_E_PROTO, "get reply");
  for (size_t i = 0; i < n; i++) {
    const struct kvds_proto_item *it = &r->rit[i];
    memset(&vals[i], 0, sizeof vals[i]);
    results[i] = it->status;
    if (it->status)
      continue;
    /* handles only: no bytes follow, none are mapped */
    if (!it->d || (it->d & KVDS_PROTO_HANDLE_LOCAL))
      return kvds_rpc_broken(r, KVDS_E_PROTO, "get reply handle");
    vals[i] = (struct kvds_value){NULL, it->a, it->c, it->d};
    if (offs)
      offs[i] = it->b;
  }
  if (r->rh.data_len)
    return kvds_rpc_broken(r, KVDS_E_PROTO, "get reply length");
  return 0;
}

int kvds_peerconn_pin(struct kvds_peerconn *pc, size_t n,
                      const struct kvds_iov *keys,
                      const struct kvds_get_opts *o, struct kvds_value *vals,
                      int *results, uint64_t *offs) {
  struct kvds_rpc *r = &pc->rpc;
  int rc = kvds_rpc_check_keys(r, n, keys);
  if (rc)
    return rc;
  if (o && (o->flags & ~(KVDS_GET_LOCAL | KVDS_GET_PIN)))
    return kvds_rpc_fail(r, KVDS_E_INVAL, "unknown get flags 0x%x", o->flags);
  if (o && o->hint && strlen(o->hint) > KVDS_PROTO_HINT_MAX)
    return kvds_rpc_fail(r, KVDS_E_INVAL, "hint longer than %u bytes",
                         KVDS_PROTO_HINT_MAX);
  struct kvds_rpc_deadline dl =
      kvds_rpc_read_deadline(pc->timeout_ms, o ? o->wait_ms : 0);
  for (size_t off = 0; off < n;) {
    size_t m = n - off < KVDS_BATCH_MAX ? n - off : KVDS_BATCH_MAX;
    if ((rc = pin_chunk(pc, m, keys + off, o, vals + off, results + off,
                        offs ? offs + off : NULL, &dl))) {
      /* The chunk's own pins are lost with the connection, or were never
       * taken (a refusal); give back those of the chunks before. */
      release_vals(pc, off, vals, dl.io);
      return rc;
    }
    off += m;
  }
  return 0;
}

/* Drops the pins of vals[0..n), by the call's deadline. */
static int release_vals(struct kvds_peerconn *pc, size_t n,
                        struct kvds_value *vals, uint64_t deadline) {
  uint64_t stack[64], *h = stack;
  if (n > 64 && !(h = malloc(n * sizeof *h)))
    return kvds_rpc_fail(&pc->rpc, -ENOMEM, "out of memory");
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (!vals[i].handle)
      continue;
    h[k++] = vals[i].handle;
    memset(&vals[i], 0, sizeof vals[i]);
  }
  if (k)
    kvds_rpc_release(&pc->rpc, h, k, deadline);
  if (h != stack)
    free(h);
  return 0;
}

int kvds_peerconn_release(struct kvds_peerconn *pc, size_t n,
                          struct kvds_value *vals) {
  return release_vals(pc, n, vals, io_deadline(pc));
}
