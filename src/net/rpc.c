/*
 * rpc.c — framed-RPC connections (rpc.h): requests out, replies in, bulk
 * data straight between the transport and caller memory.
 */
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/array.h"
#include "common/clock.h"
#include "common/hash.h"
#include "common/util.h"
#include "net/rpc.h"

/* Spin on the transport this long before sleeping in a wait: a sleeping
 * vCPU takes ~50 us to wake, the worker usually answers in a few. */
#define SPIN_US 60
/* Iovecs of a request sent from the stack (header + data); more are
 * allocated. */
#define SEND_IOV_STACK 65

void kvds_rpc_init(struct kvds_rpc *r, unsigned flags) {
  memset(r, 0, sizeof *r);
  kvds_transport_init(&r->t);
  kvds_proto_build_init(&r->req);
  r->flags = flags;
}

int kvds_rpc_connect(struct kvds_rpc *r, const struct kvds_transport_ops *ops,
                     const char *addr, uint64_t deadline) {
  int rc = kvds_transport_connect(&r->t, ops, addr, deadline);
  r->up = rc == 0;
  return rc;
}

int kvds_rpc_adopt(struct kvds_rpc *r, const struct kvds_transport_ops *ops,
                   int fd) {
  int rc = kvds_transport_adopt(&r->t, ops, fd);
  r->up = rc == 0;
  return rc;
}

void kvds_rpc_close(struct kvds_rpc *r) {
  unsigned flags = r->flags;
  kvds_transport_close(&r->t);
  kvds_proto_build_free(&r->req);
  free(r->rb);
  free(r->rit);
  free(r->rkey);
  kvds_rpc_init(r, flags);
}

void kvds_rpc_set_interrupt(struct kvds_rpc *r, int (*fn)(void *ud), void *ud) {
  r->intr_fn = fn;
  r->intr_ud = ud;
}

void kvds_rpc_shutdown(struct kvds_rpc *r) {
  /* With KEEP_FD the descriptor stays open until kvds_rpc_close (an error
   * only shuts it down), so it cannot be another socket by now. */
  if (r && (r->flags & KVDS_RPC_KEEP_FD))
    kvds_transport_shutdown(&r->t);
}

int kvds_rpc_stale(const struct kvds_rpc *r) {
  if (!r->up || r->rpos != r->rlen || r->rdata_left || r->nab)
    return 1; /* broken, bytes nobody asked for, or replies still due */
  return kvds_transport_pending(&r->t); /* input, hang-up or error */
}

int kvds_rpc_take_fd(struct kvds_rpc *r) {
  return kvds_transport_take_fd(&r->t);
}

int kvds_rpc_fail(struct kvds_rpc *r, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kvds_verrf(r->errmsg, sizeof r->errmsg, rc, fmt, ap);
  va_end(ap);
  return rc;
}

int kvds_rpc_broken(struct kvds_rpc *r, int rc, const char *what) {
  if (r->up) {
    r->up = 0;
    if (r->flags & KVDS_RPC_KEEP_FD)
      kvds_transport_shutdown(&r->t);
    else
      kvds_transport_close(&r->t);
  }
  return kvds_rpc_fail(r, rc, "%s: %s (disconnected)", what, kvds_strerror(rc));
}

/* ---- sending ------------------------------------------------------------ */

void kvds_rpc_begin(struct kvds_rpc *r) {
  kvds_proto_build_reset(&r->req);
  r->wfail = 0;
}

int kvds_rpc_item(struct kvds_rpc *r, uint64_t a, uint64_t b, uint64_t c,
                  uint64_t d, const void *key, size_t klen) {
  if (klen > KVDS_KEY_MAX)
    return r->wfail = KVDS_E_KEYLEN;
  struct kvds_proto_item it = {
      .klen = (uint32_t)klen, .a = a, .b = b, .c = c, .d = d};
  if (kvds_proto_build_item(&r->req, &it, key))
    return r->wfail = -ENOMEM;
  return 0;
}

/* Sends iov[0..n) whole (iov is consumed), waiting for room until the
 * deadline. */
static int send_all(struct kvds_rpc *r, struct iovec *iov, int n,
                    uint64_t deadline) {
  while (n > 0) {
    ssize_t w = kvds_transport_send(&r->t, iov, n);
    if (w == -EAGAIN) {
      int rc =
          kvds_transport_wait(&r->t, KVDS_TRANSPORT_OUT, deadline, NULL, NULL);
      if (rc)
        return rc;
      continue;
    }
    if (w < 0)
      return (int)w;
    size_t left = (size_t)w;
    while (n > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (uint8_t *)iov->iov_base + left;
      iov->iov_len -= left;
    }
  }
  return 0;
}

int64_t kvds_rpc_send(struct kvds_rpc *r, uint8_t op, uint16_t flags,
                      uint32_t arg, const struct iovec *data, int ndata,
                      uint64_t deadline) {
  if (!r->up)
    return kvds_rpc_fail(r, KVDS_E_CLOSED,
                         "not connected (an earlier error closed it)");
  if (r->wfail)
    return kvds_rpc_fail(r, r->wfail, "cannot build the request: %s",
                         kvds_strerror(r->wfail));
  uint64_t data_len = 0;
  for (int i = 0; i < ndata; i++)
    data_len += data[i].iov_len;
  uint64_t id = ++r->next_req;
  if (r->req.len - KVDS_PROTO_HDR_LEN > KVDS_PROTO_META_MAX)
    return kvds_rpc_fail(r, KVDS_E_LIMIT, "request too large");
  struct kvds_proto_hdr h = {.opcode = op,
                             .flags = flags,
                             .req_id = id,
                             .arg = arg,
                             .data_len = data_len};
  if (kvds_proto_build_finish(&r->req, &h))
    return kvds_rpc_fail(r, -ENOMEM, "cannot build the request: %s",
                         kvds_strerror(-ENOMEM));
  struct iovec stack[SEND_IOV_STACK], *iov = stack;
  if (ndata + 1 > SEND_IOV_STACK &&
      !(iov = malloc((size_t)(ndata + 1) * sizeof *iov)))
    return kvds_rpc_fail(r, -ENOMEM, "out of memory");
  iov[0].iov_base = r->req.buf;
  iov[0].iov_len = r->req.len;
  for (int i = 0; i < ndata; i++)
    iov[i + 1] = data[i];
  int rc = send_all(r, iov, ndata + 1, deadline);
  if (iov != stack)
    free(iov);
  if (rc)
    return kvds_rpc_broken(r, rc, "send");
  return (int64_t)id;
}

/* ---- receiving ---------------------------------------------------------- */

/* One read into iov (spinning briefly, then waiting). Returns bytes (> 0)
 * or an error. */
static ssize_t read_some(struct kvds_rpc *r, struct iovec *iov, int n,
                         uint64_t deadline) {
  uint64_t spin_until = 0;
  for (;;) {
    ssize_t got = kvds_transport_recv(&r->t, iov, n);
    if (got != -EAGAIN)
      return got;
    uint64_t now = kvds_now_us();
    if (!spin_until)
      spin_until = now + SPIN_US;
    if (now < spin_until) {
      sched_yield(); /* the worker may share this CPU */
      continue;
    }
    int intr = r->intr_ok && r->intr_fn;
    int rc = kvds_transport_wait(&r->t, KVDS_TRANSPORT_IN, deadline,
                                 intr ? r->intr_fn : NULL, r->intr_ud);
    if (rc)
      return rc;
  }
}

/* Ensures `need` bytes are buffered at rb[rpos..). */
static int rb_fill(struct kvds_rpc *r, size_t need, uint64_t deadline) {
  if (r->rlen - r->rpos >= need)
    return 0;
  if (r->rpos && r->rcap - r->rpos < need) {
    memmove(r->rb, r->rb + r->rpos, r->rlen - r->rpos);
    r->rlen -= r->rpos;
    r->rpos = 0;
  }
  if (KVDS_ARRAY_GROW(r->rb, r->rcap, r->rpos + need, 65536))
    return -ENOMEM;
  while (r->rlen - r->rpos < need) {
    struct iovec iov = {r->rb + r->rlen, r->rcap - r->rlen};
    ssize_t got = read_some(r, &iov, 1, deadline);
    if (got < 0)
      return (int)got;
    r->rlen += (size_t)got;
  }
  return 0;
}

/*
 * Reads the next reply frame's header and meta, decoded into rh, rit[] and
 * rkey[]; its data (rh.data_len bytes) is left for recv_data. Returns 0;
 * KVDS_E_INTR when the interrupt hook gave up the wait (nothing consumed:
 * the frame stays buffered for the next call); or an error after which r
 * is broken.
 */
static int recv_frame(struct kvds_rpc *r, uint64_t deadline) {
  int rc;
  if (r->rpos == r->rlen)
    r->rpos = r->rlen = 0;
  r->intr_ok = 1;
  rc = rb_fill(r, KVDS_PROTO_HDR_LEN, deadline);
  if (!rc) {
    if ((rc = kvds_proto_hdr_decode(r->rb + r->rpos, KVDS_PROTO_HDR_LEN,
                                    &r->rh))) {
      r->intr_ok = 0;
      return kvds_rpc_broken(r, rc, "reply header");
    }
    rc = rb_fill(r, KVDS_PROTO_HDR_LEN + r->rh.meta_len, deadline);
  }
  r->intr_ok = 0;
  if (rc == KVDS_E_INTR)
    return rc;
  if (rc)
    return kvds_rpc_broken(r, rc, "receive");
  if (!(r->rh.flags & KVDS_PF_REPLY))
    return kvds_rpc_broken(r, KVDS_E_PROTO, "unexpected reply");
  const uint8_t *hraw = r->rb + r->rpos;
  const uint8_t *meta = hraw + KVDS_PROTO_HDR_LEN;
  if ((rc = kvds_proto_verify(hraw, meta, r->rh.meta_len)) ||
      (rc = kvds_proto_meta_validate(meta, r->rh.meta_len, r->rh.count)))
    return kvds_rpc_broken(r, rc, "reply meta");
  if (r->rh.count > r->ritcap) {
    uint32_t nc = r->rh.count;
    void *a = realloc(r->rit, nc * sizeof *r->rit);
    if (a)
      r->rit = a;
    void *b = a ? realloc(r->rkey, nc * sizeof *r->rkey) : NULL;
    if (b)
      r->rkey = b;
    if (!a || !b)
      return kvds_rpc_broken(r, -ENOMEM, "reply");
    r->ritcap = nc;
  }
  size_t pos = 0;
  for (uint32_t i = 0; i < r->rh.count; i++)
    kvds_proto_item_decode(meta, r->rh.meta_len, &pos, &r->rit[i], &r->rkey[i]);
  r->rpos += KVDS_PROTO_HDR_LEN + r->rh.meta_len;
  r->rdata_left = r->rh.data_len;
  return 0;
}

/* Reads `len` reply data bytes into dst (NULL = discard). With `hash`
 * (dst required) the bytes are also fed to it piece by piece as they
 * arrive, while each piece (<= 256 KiB) is still in cache. */
static int recv_data_h(struct kvds_rpc *r, uint8_t *dst, uint64_t len,
                       struct kvds_hash *hash, uint64_t deadline) {
  if (len > r->rdata_left)
    return kvds_rpc_broken(r, KVDS_E_PROTO, "reply data");
  r->rdata_left -= len;
  /* First whatever is already buffered. */
  size_t have = r->rlen - r->rpos;
  if (have > len)
    have = (size_t)len;
  if (dst)
    memcpy(dst, r->rb + r->rpos, have);
  if (hash)
    kvds_hash_update(hash, dst, have);
  r->rpos += have;
  len -= have;
  if (dst)
    dst += have;
  uint8_t scratch[16384];
  while (len) {
    size_t piece = !dst   ? sizeof scratch
                   : hash ? (size_t)256 << 10
                          : (size_t)len;
    struct iovec iov = {dst ? (void *)dst : (void *)scratch,
                        len < piece ? (size_t)len : piece};
    /* A sender that keeps the socket full never makes read_some wait, so
     * the deadline is checked here too, once per piece. */
    if (kvds_now_us() >= deadline)
      return kvds_rpc_broken(r, KVDS_E_TIMEOUT, "receive");
    ssize_t got = read_some(r, &iov, 1, deadline);
    if (got < 0)
      return kvds_rpc_broken(r, (int)got, "receive");
    if (hash)
      kvds_hash_update(hash, dst, (size_t)got);
    len -= (uint64_t)got;
    if (dst)
      dst += got;
  }
  return 0;
}

int kvds_rpc_recv_data(struct kvds_rpc *r, void *dst, uint64_t len,
                       uint64_t deadline) {
  return recv_data_h(r, dst, len, NULL, deadline);
}

int kvds_rpc_recv_hashed(struct kvds_rpc *r, void *dst, uint64_t len,
                         uint64_t *sum, uint64_t deadline) {
  struct kvds_hash st;
  kvds_hash_reset(&st);
  int rc = recv_data_h(r, dst, len, &st, deadline);
  if (!rc)
    *sum = kvds_hash_digest(&st);
  return rc;
}

int kvds_rpc_abandon(struct kvds_rpc *r, int64_t id, uint8_t op) {
  if (r->nab == KVDS_RPC_ABANDON_MAX)
    return kvds_rpc_broken(r, KVDS_E_INTR,
                           "interrupted, with too many requests "
                           "abandoned and unanswered");
  r->ab[r->nab++] = (struct kvds_rpc_abandoned){(uint64_t)id, op};
  return kvds_rpc_fail(r, KVDS_E_INTR,
                       "interrupted; the request was abandoned");
}

/*
 * The frame in rh/rit[] answers abandoned request ab[k]: skips its data and
 * gives back what it holds — the pins of a GET answered with handles
 * (shared memory, KVDS_PF_PIN), the objects of a CREATE (aborted; that
 * ABORT's reply is abandoned in turn). 0, or an error after which r is
 * broken.
 */
static int discard(struct kvds_rpc *r, uint32_t k, uint64_t deadline) {
  struct kvds_rpc_abandoned a = r->ab[k];
  r->ab[k] = r->ab[--r->nab];
  if (r->rh.opcode != a.op && r->rh.status == 0)
    return kvds_rpc_broken(r, KVDS_E_PROTO, "unexpected reply");
  int rc =
      r->rdata_left ? recv_data_h(r, NULL, r->rdata_left, NULL, deadline) : 0;
  if (rc || r->rh.status)
    return rc;
  uint8_t op = 0;
  if (a.op == KVDS_OP_GET && !(r->rh.flags & KVDS_PF_INLINE))
    op = KVDS_OP_RELEASE;
  else if (a.op == KVDS_OP_CREATE)
    op = KVDS_OP_ABORT;
  if (!op)
    return 0;
  kvds_rpc_begin(r);
  for (uint32_t i = 0; i < r->rh.count; i++) {
    uint64_t h = op == KVDS_OP_RELEASE ? r->rit[i].d : r->rit[i].a;
    if (!r->rit[i].status && h)
      kvds_rpc_item(r, h, 0, 0, 0, NULL, 0);
  }
  if (!kvds_rpc_count(r))
    return 0;
  int64_t id = kvds_rpc_send(r, op, op == KVDS_OP_RELEASE ? KVDS_PF_NOREPLY : 0,
                             0, NULL, 0, deadline);
  if (id < 0)
    return (int)id;
  if (op == KVDS_OP_ABORT) /* room: ab[k] was just freed */
    r->ab[r->nab++] = (struct kvds_rpc_abandoned){(uint64_t)id, op};
  return 0;
}

int kvds_rpc_recv_reply(struct kvds_rpc *r, int64_t id, uint8_t op,
                        uint64_t deadline) {
  if (id < 0)
    return (int)id;
  for (;;) {
    int rc = recv_frame(r, deadline);
    if (rc == KVDS_E_INTR)
      return kvds_rpc_abandon(r, id, op);
    if (rc)
      return rc;
    if (r->rh.req_id == (uint64_t)id)
      break;
    uint32_t k = 0;
    while (k < r->nab && r->ab[k].id != r->rh.req_id)
      k++;
    if (k == r->nab)
      return kvds_rpc_broken(r, KVDS_E_PROTO, "unexpected reply");
    if ((rc = discard(r, k, deadline)))
      return rc;
  }
  if (r->rh.opcode != op && r->rh.status == 0)
    return kvds_rpc_broken(r, KVDS_E_PROTO, "unexpected reply");
  if (r->rh.status)
    kvds_rpc_fail(r, r->rh.status, "worker: %s", kvds_strerror(r->rh.status));
  return r->rh.status;
}

int kvds_rpc_call(struct kvds_rpc *r, uint8_t op, uint16_t flags, uint32_t arg,
                  uint64_t deadline) {
  int64_t id = kvds_rpc_send(r, op, flags, arg, NULL, 0, deadline);
  int rc = kvds_rpc_recv_reply(r, id, op, deadline);
  if (r->up && r->rdata_left) {
    int r2 = recv_data_h(r, NULL, r->rdata_left, NULL, deadline);
    if (r2)
      return r2;
  }
  return rc;
}

/* ---- helpers of the kvds operations ---------------------------------------
 */

int kvds_rpc_check_keys(struct kvds_rpc *r, size_t n,
                        const struct kvds_iov *keys) {
  for (size_t i = 0; i < n; i++) {
    const struct kvds_iov *k = &keys[i];
    if (!k->base || k->len == 0 || k->len > KVDS_KEY_MAX)
      return kvds_rpc_fail(r, KVDS_E_KEYLEN,
                           "key length %zu out of range (1..%d)", k->len,
                           KVDS_KEY_MAX);
  }
  return 0;
}

void kvds_rpc_release(struct kvds_rpc *r, const uint64_t *handles, size_t n,
                      uint64_t deadline) {
  for (size_t off = 0; off < n && r->up;) {
    size_t m = n - off < KVDS_BATCH_MAX ? n - off : KVDS_BATCH_MAX;
    kvds_rpc_begin(r);
    for (size_t i = off; i < off + m; i++)
      kvds_rpc_item(r, handles[i], 0, 0, 0, NULL, 0);
    kvds_rpc_send(r, KVDS_OP_RELEASE, KVDS_PF_NOREPLY, 0, NULL, 0, deadline);
    off += m;
  }
}

uint64_t kvds_rpc_values_total(const struct kvds_proto_item *it, size_t n,
                               uint64_t max) {
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (it[i].status)
      continue;
    if (it[i].a > max - total)
      return max + 1;
    total += it[i].a;
  }
  return total;
}

struct kvds_rpc_deadline kvds_rpc_read_deadline(int timeout_ms, int wait_ms) {
  uint64_t wait = kvds_deadline_ms(wait_ms);
  return (struct kvds_rpc_deadline){wait,
                                    kvds_deadline_after(wait, timeout_ms)};
}

uint32_t kvds_rpc_wait_left(const struct kvds_rpc_deadline *d, int wait_ms) {
  if (wait_ms <= 0)
    return 0;
  uint64_t now = kvds_now_us();
  int ms = d->wait > now ? kvds_deadline_left_ms(d->wait, now) : 1;
  return ms < wait_ms ? (uint32_t)ms : (uint32_t)wait_ms;
}
