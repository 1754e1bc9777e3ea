/*
 * client.c — libkvds: the client side of the kvds protocol (kvds.h), over
 * one framed-RPC connection (net/rpc.h).
 *
 * One connection per client, one request in flight at a time (plus
 * fire-and-forget RELEASE frames, which have no reply). Over a Unix socket the
 * worker's pool is mapped once and values move through shared memory only;
 * over TCP they travel inline. A "host:port" address that turns out to name a
 * worker on this machine (its socket exists and answers with the same
 * instance nonce) is upgraded to the Unix socket automatically.
 *
 * Any I/O error, protocol error or deadline overrun leaves the byte stream in
 * an unknown state, so the client disconnects itself: later calls fail with
 * KVDS_E_CLOSED, and the worker releases everything this client held.
 *
 * Deadlines: each public call fixes one deadline when it starts and hands it
 * to every request, wait and retry inside it; nothing restarts the clock.
 *
 * Interrupts (kvds_client_set_interrupt): a call waiting for a reply header
 * may give up. Its request is abandoned (net/rpc.h): the worker answers it
 * some time later — possibly after replies to later requests, since a
 * waiting GET is parked there — and whichever call then reads that reply
 * discards it, giving back the pins or objects it carries. Nothing else is
 * interruptible, so the stream is always left at a frame boundary.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cluster/auth.h"
#include "common/copy.h"
#include "common/clock.h"
#include "common/util.h"
#include "kvds/kvds.h"
#include "net/handshake.h"
#include "net/rpc.h"
#include "pool/pool.h"
#include "proto/proto.h"

#define DEFAULT_TIMEOUT_MS 5000
/* Handles of values copied over TCP (not worker handles). */
#define TCP_VALUE_HANDLE KVDS_PROTO_HANDLE_LOCAL
/* Receive buffers for TCP values are kept for reuse up to this many bytes:
 * fresh memory costs a page fault per 4 KiB on first touch (~0.7 GB/s). */
#define RXBUF_KEEP (256ull << 20)
/* The pool is pre-faulted in slices, the deadline checked between them. */
#define PREFAULT_SLICE (8ull << 20)

/* One GET reply's values over TCP; freed (or kept) when all are released. */
struct rxbuf {
  struct rxbuf *prev, *next; /* every rxbuf of the client */
  size_t cap;
  uint32_t refs; /* values still out; 0 = idle, reusable */
  uint8_t data[];
};

struct kvds_client {
  struct kvds_rpc rpc; /* the connection, its buffers and errmsg */
  int local;
  int timeout_ms;
  unsigned flags; /* KVDS_CONNECT_* */
  struct kvds_pool pool;
  uint64_t nonce;
  char sock_path[256];
  struct rxbuf *rxbufs; /* TCP value buffers, in use and idle */
  size_t rx_idle_bytes;
};

static void rxbuf_unlink(kvds_client *c, struct rxbuf *b) {
  if (b->prev)
    b->prev->next = b->next;
  else
    c->rxbufs = b->next;
  if (b->next)
    b->next->prev = b->prev;
}

/* An idle buffer of at least `len` bytes, or a new one (NULL on -ENOMEM). */
static struct rxbuf *rxbuf_get(kvds_client *c, size_t len) {
  struct rxbuf *b, *best = NULL;
  for (b = c->rxbufs; b; b = b->next)
    if (!b->refs && b->cap >= len && (!best || b->cap < best->cap))
      best = b;
  if (best) {
    c->rx_idle_bytes -= best->cap;
    return best;
  }
  if (!(b = malloc(sizeof *b + len)))
    return NULL;
  b->cap = len;
  b->refs = 0;
  b->prev = NULL;
  b->next = c->rxbufs;
  if (c->rxbufs)
    c->rxbufs->prev = b;
  c->rxbufs = b;
  return b;
}

/* The buffer has no values out any more: keep it for reuse, or free it. */
static void rxbuf_idle(kvds_client *c, struct rxbuf *b) {
  if (c->rx_idle_bytes + b->cap <= RXBUF_KEEP) {
    c->rx_idle_bytes += b->cap;
    return;
  }
  rxbuf_unlink(c, b);
  free(b);
}

static void rxbuf_unref(kvds_client *c, uint64_t handle) {
  struct rxbuf *b = (struct rxbuf *)(uintptr_t)(handle & ~TCP_VALUE_HANDLE);
  if (--b->refs == 0)
    rxbuf_idle(c, b);
}

/* The deadline of a call without a wait, fixed when it starts. */
static uint64_t io_deadline(kvds_client *c) {
  return kvds_deadline_ms(c->timeout_ms);
}

/* ---- connection --------------------------------------------------------- */

/*
 * Maps the pool's pages writable now, as kvds_pool_attach's prefault does,
 * but in slices while the connect's deadline allows: on a busy machine
 * mapping a large pool takes seconds of CPU, and the connect must still
 * return in time. Pages left fault in on first use (slower, still correct),
 * as they do where the kernel cannot populate (EINVAL).
 */
static int prefault(kvds_client *c, uint64_t deadline) {
  uint64_t total = c->pool.total_size;
  for (uint64_t off = 0; off < total && kvds_now_us() < deadline;) {
    size_t len =
        (size_t)(total - off < PREFAULT_SLICE ? total - off : PREFAULT_SLICE);
    if (madvise(c->pool.base + off, len, MADV_POPULATE_WRITE) == 0) {
      off += len;
      continue;
    }
    if (errno == EINTR || errno == EAGAIN)
      continue;
    if (errno == EINVAL)
      break;
    return errno == EFAULT ? -ENOMEM : -errno;
  }
  return 0;
}

/* HELLO: learns the worker's identity; over a Unix socket maps the pool. */
static int hello(kvds_client *c, int want_shm, uint64_t deadline) {
  struct kvds_hello h;
  int rc = kvds_handshake_hello(&c->rpc, want_shm, NULL, &h, deadline);
  if (rc)
    return rc;
  c->nonce = h.nonce;
  memcpy(c->sock_path, h.sock_path, sizeof c->sock_path);
  if (!want_shm)
    return 0;
  if ((rc = kvds_pool_attach(&c->pool, h.pool_fd, 0))) {
    close(h.pool_fd);
    return kvds_rpc_fail(&c->rpc, rc, "cannot map the worker's pool: %s",
                         kvds_strerror(rc));
  }
  if (!(c->flags & KVDS_CONNECT_LAZY_MAP) && (rc = prefault(c, deadline)))
    return kvds_rpc_fail(&c->rpc, rc, "cannot map the worker's pool: %s",
                         kvds_strerror(rc));
  c->local = 1;
  return 0;
}

/* AUTH over TCP, when $KVDS_AUTH_TOKEN_FILE names a token file (see
 * kvds_handshake_auth). 0 when the variable is unset or the exchange
 * succeeded; KVDS_E_AUTH when the file is unusable, the worker does not
 * authenticate, or either proof is wrong. */
static int authenticate(kvds_client *c, uint64_t deadline) {
  const char *path = getenv("KVDS_AUTH_TOKEN_FILE");
  if (!path || !*path)
    return 0;
  struct kvds_auth_token tok;
  int rc =
      kvds_auth_token_load(path, &tok, c->rpc.errmsg, sizeof c->rpc.errmsg);
  if (rc)
    return rc;
  rc = kvds_handshake_auth(&c->rpc, &tok, deadline);
  kvds_auth_token_wipe(&tok);
  return rc;
}

static kvds_client *client_new(int timeout_ms, unsigned flags) {
  kvds_client *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  kvds_rpc_init(&c->rpc, 0);
  c->flags = flags;
  c->pool.fd = -1;
  c->timeout_ms = timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS;
  return c;
}

static int open_unix(kvds_client *c, const char *path, uint64_t deadline) {
  int rc = kvds_rpc_connect(&c->rpc, &kvds_transport_unix, path, deadline);
  if (rc)
    return rc;
  return hello(c, 1, deadline);
}

int kvds_client_connect(const char *address, int timeout_ms,
                        kvds_client **out) {
  return kvds_client_connect_ex(address, timeout_ms, 0, out);
}

int kvds_client_connect_ex(const char *address, int timeout_ms, unsigned flags,
                           kvds_client **out) {
  if (!address || !*address || !out)
    return KVDS_E_INVAL;
  kvds_client *c = client_new(timeout_ms, flags);
  if (!c)
    return -ENOMEM;
  uint64_t deadline = io_deadline(c);
  int rc;
  if (strncmp(address, "unix:", 5) == 0) {
    rc = open_unix(c, address + 5, deadline);
  } else if (strchr(address, '/') && strncmp(address, "tcp://", 6) != 0) {
    rc = open_unix(c, address, deadline);
  } else {
    int force_tcp =
        strncmp(address, "tcp://", 6) == 0 || (flags & KVDS_CONNECT_TCP_ONLY);
    rc = kvds_rpc_connect(&c->rpc, &kvds_transport_tcp, address, deadline);
    if (!rc)
      rc = authenticate(c, deadline);
    if (!rc)
      rc = hello(c, 0, deadline);
    if (!rc && !force_tcp && c->sock_path[0]) {
      /* Same machine? Then the worker's socket is here and answers with the
       * same nonce: switch to shared memory. */
      kvds_client *u = client_new(c->timeout_ms, flags);
      /* Check identity before asking for the pool: mapping some other
       * worker's pool only to throw it away costs ~70 ms per GiB. */
      if (u &&
          kvds_rpc_connect(&u->rpc, &kvds_transport_unix, c->sock_path,
                           deadline) == 0 &&
          hello(u, 0, deadline) == 0 && u->nonce == c->nonce &&
          hello(u, 1, deadline) == 0) {
        kvds_client_close(c);
        c = u;
      } else {
        kvds_client_close(u);
      }
    }
  }
  if (rc) {
    kvds_client_close(c);
    return rc;
  }
  *out = c;
  return 0;
}

void kvds_client_close(kvds_client *c) {
  if (!c)
    return;
  kvds_rpc_close(&c->rpc);
  if (c->pool.base)
    kvds_pool_destroy(&c->pool);
  else if (c->pool.fd >= 0)
    close(c->pool.fd);
  while (c->rxbufs) {
    struct rxbuf *b = c->rxbufs;
    rxbuf_unlink(c, b);
    free(b);
  }
  free(c);
}

void kvds_client_set_interrupt(kvds_client *c, kvds_interrupt_fn fn, void *ud) {
  kvds_rpc_set_interrupt(&c->rpc, fn, ud);
}

void kvds_client_set_timeout(kvds_client *c, int timeout_ms) {
  if (timeout_ms > 0)
    c->timeout_ms = timeout_ms;
}

int kvds_client_is_local(const kvds_client *c) {
  return c->local;
}

int kvds_client_pool_region(const kvds_client *c, void **base, uint64_t *size) {
  if (!c->local || !c->pool.base)
    return KVDS_E_NOSHM;
  *base = c->pool.base + c->pool.data_offset;
  *size = c->pool.data_size;
  return 0;
}

int kvds_client_is_connected(const kvds_client *c) {
  return kvds_rpc_is_up(&c->rpc);
}

const char *kvds_client_errmsg(const kvds_client *c) {
  return c->rpc.errmsg;
}

int kvds_ping(kvds_client *c) {
  kvds_rpc_begin(&c->rpc);
  return kvds_rpc_call(&c->rpc, KVDS_OP_PING, 0, 0, io_deadline(c));
}

/* ---- helpers for batches ------------------------------------------------ */

static size_t chunk_of(size_t left) {
  return left < KVDS_BATCH_MAX ? left : KVDS_BATCH_MAX;
}

/* ---- create / seal / abort ---------------------------------------------- */

static int mabort(kvds_client *c, size_t n, struct kvds_wbuf *bufs,
                  uint64_t deadline);

static int mcreate_chunk(kvds_client *c, size_t n, const struct kvds_iov *keys,
                         const size_t *sizes, struct kvds_wbuf *bufs,
                         int *results, uint64_t deadline) {
  kvds_rpc_begin(&c->rpc);
  for (size_t i = 0; i < n; i++) {
    int rc =
        kvds_rpc_item(&c->rpc, sizes[i], 0, 0, 0, keys[i].base, keys[i].len);
    if (rc)
      return kvds_rpc_fail(&c->rpc, rc, "out of memory");
  }
  int64_t id = kvds_rpc_send(&c->rpc, KVDS_OP_CREATE, 0, 0, NULL, 0, deadline);
  int rc = kvds_rpc_recv_reply(&c->rpc, id, KVDS_OP_CREATE, deadline);
  if (rc)
    return rc;
  if (c->rpc.rh.count != n)
    return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "create reply");
  for (size_t i = 0; i < n; i++) {
    const struct kvds_proto_item *it = &c->rpc.rit[i];
    memset(&bufs[i], 0, sizeof bufs[i]);
    results[i] = it->status;
    if (it->status)
      continue;
    if (it->c != sizes[i] || it->a == 0 ||
        (c->local && !kvds_pool_contains(&c->pool, it->b, it->c))) {
      results[i] = KVDS_E_PROTO;
      continue;
    }
    bufs[i].len = sizes[i];
    bufs[i].handle = it->a;
    if (c->local) {
      bufs[i].data = kvds_pool_ptr(&c->pool, it->b);
    } else if (!(bufs[i].data = malloc(sizes[i]))) {
      results[i] = -ENOMEM; /* the worker aborts it when we disconnect */
      bufs[i].handle = 0;
    }
  }
  return 0;
}

int kvds_mcreate(kvds_client *c, size_t n, const struct kvds_iov *keys,
                 const size_t *sizes, struct kvds_wbuf *bufs, int *results) {
  int rc = kvds_rpc_check_keys(&c->rpc, n, keys);
  if (rc)
    return rc;
  for (size_t i = 0; i < n; i++)
    if (sizes[i] == 0)
      return kvds_rpc_fail(&c->rpc, KVDS_E_INVAL, "object size 0");
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n; off += chunk_of(n - off)) {
    if ((rc = mcreate_chunk(c, chunk_of(n - off), keys + off, sizes + off,
                            bufs + off, results + off, deadline))) {
      /* The whole call fails: give back what earlier chunks created,
       * keeping the message of the failure itself. (Past the deadline the
       * ABORT times out and disconnects, which aborts them too.) */
      char msg[sizeof c->rpc.errmsg];
      memcpy(msg, c->rpc.errmsg, sizeof msg);
      mabort(c, off, bufs, deadline);
      memcpy(c->rpc.errmsg, msg, sizeof msg);
      return rc;
    }
  }
  return 0;
}

int kvds_create(kvds_client *c, const void *key, size_t klen, size_t size,
                struct kvds_wbuf *buf) {
  struct kvds_iov k = {(void *)key, klen};
  struct kvds_wbuf b;
  int res;
  int rc = kvds_mcreate(c, 1, &k, &size, &b, &res);
  if (rc)
    return rc;
  if (res)
    return kvds_rpc_fail(&c->rpc, res, "create: %s", kvds_strerror(res));
  *buf = b;
  return 0;
}

int kvds_write(kvds_client *c, const struct kvds_wbuf *buf, size_t off,
               const void *src, size_t len) {
  if (!buf->data || off > buf->len || len > buf->len - off)
    return kvds_rpc_fail(&c->rpc, KVDS_E_RANGE,
                         "write of %zu bytes at %zu outside %zu", len, off,
                         buf->len);
  memcpy((uint8_t *)buf->data + off, src, len);
  return 0;
}

static int mseal_chunk(kvds_client *c, size_t n, struct kvds_wbuf *bufs,
                       const uint64_t *sums, int *results, uint64_t deadline) {
  int rc;
  if (!c->local) {
    /* Send the staged bytes first; WRITE and SEAL are pipelined. */
    kvds_rpc_begin(&c->rpc);
    struct iovec *iov = malloc((n ? n : 1) * sizeof *iov);
    if (!iov)
      return kvds_rpc_fail(&c->rpc, -ENOMEM, "out of memory");
    int k = 0;
    for (size_t i = 0; i < n; i++) {
      if (!bufs[i].handle)
        continue;
      kvds_rpc_item(&c->rpc, bufs[i].handle, 0, bufs[i].len, 0, NULL, 0);
      iov[k].iov_base = bufs[i].data;
      iov[k].iov_len = bufs[i].len;
      k++;
    }
    int64_t wid = kvds_rpc_send(&c->rpc, KVDS_OP_WRITE, 0, 0, iov, k, deadline);
    free(iov);
    if (wid < 0)
      return (int)wid;
    kvds_rpc_begin(&c->rpc);
    for (size_t i = 0; i < n; i++)
      if (bufs[i].handle)
        kvds_rpc_item(&c->rpc, bufs[i].handle,
                      sums ? sums[i] : kvds_checksum(bufs[i].data, bufs[i].len),
                      KVDS_SEAL_F_CHECKSUM, 0, NULL, 0);
    int64_t sid = kvds_rpc_send(&c->rpc, KVDS_OP_SEAL, 0, 0, NULL, 0, deadline);
    if (sid < 0)
      return (int)sid;
    if ((rc = kvds_rpc_recv_reply(&c->rpc, wid, KVDS_OP_WRITE, deadline))) {
      if (rc == KVDS_E_INTR &&
          kvds_rpc_is_up(&c->rpc)) /* both replies are still due */
        return kvds_rpc_abandon(&c->rpc, sid, KVDS_OP_SEAL);
      /* The SEAL reply is still on its way: the stream is out of step. */
      return kvds_rpc_is_up(&c->rpc) ? kvds_rpc_broken(&c->rpc, rc, "write")
                                     : rc;
    }
    if ((rc = kvds_rpc_recv_reply(&c->rpc, sid, KVDS_OP_SEAL, deadline)))
      return rc;
  } else {
    kvds_rpc_begin(&c->rpc);
    for (size_t i = 0; i < n; i++)
      if (bufs[i].handle)
        kvds_rpc_item(&c->rpc, bufs[i].handle,
                      sums ? sums[i] : kvds_checksum(bufs[i].data, bufs[i].len),
                      KVDS_SEAL_F_CHECKSUM, 0, NULL, 0);
    if ((rc = kvds_rpc_call(&c->rpc, KVDS_OP_SEAL, 0, 0, deadline)))
      return rc;
  }
  uint32_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (!bufs[i].handle) {
      if (results)
        results[i] = KVDS_E_HANDLE;
      continue;
    }
    int st = k < c->rpc.rh.count ? c->rpc.rit[k].status : KVDS_E_PROTO;
    uint64_t sum = k < c->rpc.rh.count ? c->rpc.rit[k].a : 0;
    k++;
    if (results)
      results[i] = st;
    if (!st) {
      if (!c->local)
        free(bufs[i].data);
      memset(&bufs[i], 0, sizeof bufs[i]);
      bufs[i].checksum = sum;
    }
  }
  return 0;
}

int kvds_mseal_sums(kvds_client *c, size_t n, struct kvds_wbuf *bufs,
                    const uint64_t *sums, int *results) {
  int rc = 0;
  int *res = results ? results : malloc((n ? n : 1) * sizeof *res);
  if (!res)
    return kvds_rpc_fail(&c->rpc, -ENOMEM, "out of memory");
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n && !rc; off += chunk_of(n - off))
    rc = mseal_chunk(c, chunk_of(n - off), bufs + off, sums ? sums + off : NULL,
                     res + off, deadline);
  for (size_t i = 0; i < n && !rc; i++)
    rc = res[i];
  if (res != results)
    free(res);
  return rc;
}

int kvds_mseal(kvds_client *c, size_t n, struct kvds_wbuf *bufs, int *results) {
  return kvds_mseal_sums(c, n, bufs, NULL, results);
}

int kvds_seal(kvds_client *c, struct kvds_wbuf *buf) {
  int res = 0;
  int rc = kvds_mseal(c, 1, buf, &res);
  return rc ? rc : res;
}

static int mabort(kvds_client *c, size_t n, struct kvds_wbuf *bufs,
                  uint64_t deadline) {
  int first = 0;
  for (size_t off = 0; off < n; off += chunk_of(n - off)) {
    size_t m = chunk_of(n - off);
    kvds_rpc_begin(&c->rpc);
    for (size_t i = off; i < off + m; i++)
      if (bufs[i].handle)
        kvds_rpc_item(&c->rpc, bufs[i].handle, 0, 0, 0, NULL, 0);
    int rc = kvds_rpc_call(&c->rpc, KVDS_OP_ABORT, 0, 0, deadline);
    for (size_t i = off; i < off + m; i++) {
      if (!c->local)
        free(bufs[i].data);
      memset(&bufs[i], 0, sizeof bufs[i]);
    }
    if (rc && !first)
      first = rc;
    for (uint32_t k = 0; !rc && k < c->rpc.rh.count; k++)
      if (c->rpc.rit[k].status && !first)
        first = c->rpc.rit[k].status;
  }
  return first;
}

int kvds_mabort(kvds_client *c, size_t n, struct kvds_wbuf *bufs) {
  return mabort(c, n, bufs, io_deadline(c));
}

int kvds_abort(kvds_client *c, struct kvds_wbuf *buf) {
  return kvds_mabort(c, 1, buf);
}

/* ---- put ---------------------------------------------------------------- */

static int mput_local(kvds_client *c, size_t n, const struct kvds_iov *keys,
                      const struct kvds_iov *vals, int *results,
                      uint64_t deadline) {
  size_t *sizes = malloc(n * sizeof *sizes);
  struct kvds_wbuf *bufs = malloc(n * sizeof *bufs);
  int rc = -ENOMEM;
  if (!sizes || !bufs)
    goto out;
  for (size_t i = 0; i < n; i++)
    sizes[i] = vals[i].len;
  if ((rc = mcreate_chunk(c, n, keys, sizes, bufs, results, deadline)))
    goto out;
  kvds_rpc_begin(&c->rpc);
  for (size_t i = 0; i < n; i++) {
    if (results[i])
      continue;
    uint64_t sum = kvds_copy_hash(bufs[i].data, vals[i].base, vals[i].len);
    kvds_rpc_item(&c->rpc, bufs[i].handle, sum, KVDS_SEAL_F_CHECKSUM, 0, NULL,
                  0);
  }
  if (kvds_rpc_count(&c->rpc) == 0)
    goto out;
  if ((rc = kvds_rpc_call(&c->rpc, KVDS_OP_SEAL, 0, 0, deadline)))
    goto out;
  uint32_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (!results[i])
      results[i] = k < c->rpc.rh.count ? c->rpc.rit[k++].status : KVDS_E_PROTO;
out:
  free(sizes);
  free(bufs);
  return rc;
}

static int mput_tcp(kvds_client *c, size_t n, const struct kvds_iov *keys,
                    const struct kvds_iov *vals, int *results,
                    uint64_t deadline) {
  struct iovec *iov = malloc(n * sizeof *iov);
  if (!iov)
    return kvds_rpc_fail(&c->rpc, -ENOMEM, "out of memory");
  kvds_rpc_begin(&c->rpc);
  for (size_t i = 0; i < n; i++) {
    kvds_rpc_item(&c->rpc, vals[i].len, 0, 0, 0, keys[i].base, keys[i].len);
    iov[i].iov_base = vals[i].base;
    iov[i].iov_len = vals[i].len;
  }
  int64_t id = kvds_rpc_send(&c->rpc, KVDS_OP_PUT, 0, 0, iov, (int)n, deadline);
  free(iov);
  int rc = kvds_rpc_recv_reply(&c->rpc, id, KVDS_OP_PUT, deadline);
  if (rc)
    return rc;
  if (c->rpc.rh.count != n)
    return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "put reply");
  for (size_t i = 0; i < n; i++)
    results[i] = c->rpc.rit[i].status;
  return 0;
}

int kvds_mput(kvds_client *c, size_t n, const struct kvds_iov *keys,
              const struct kvds_iov *vals, int *results) {
  int rc = kvds_rpc_check_keys(&c->rpc, n, keys);
  if (rc)
    return rc;
  for (size_t i = 0; i < n; i++)
    if (vals[i].len == 0 || !vals[i].base)
      return kvds_rpc_fail(&c->rpc, KVDS_E_INVAL, "empty value");
  int *res = results ? results : malloc((n ? n : 1) * sizeof *res);
  if (!res)
    return kvds_rpc_fail(&c->rpc, -ENOMEM, "out of memory");
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n && !rc; off += chunk_of(n - off)) {
    size_t m = chunk_of(n - off);
    rc = c->local
             ? mput_local(c, m, keys + off, vals + off, res + off, deadline)
             : mput_tcp(c, m, keys + off, vals + off, res + off, deadline);
  }
  for (size_t i = 0; i < n && !rc; i++)
    if (res[i])
      rc = kvds_rpc_fail(&c->rpc, res[i], "put: %s", kvds_strerror(res[i]));
  if (res != results)
    free(res);
  return rc;
}

int kvds_put(kvds_client *c, const void *key, size_t klen, const void *val,
             size_t vlen) {
  struct kvds_iov k = {(void *)key, klen}, v = {(void *)val, vlen};
  int res;
  return kvds_mput(c, 1, &k, &v, &res);
}

/* ---- get / release ------------------------------------------------------ */

static int release(kvds_client *c, size_t n, struct kvds_value *vals,
                   uint64_t deadline);

/* Request flags and hint item of a GET with options. */
static uint16_t get_flags(kvds_client *c, const struct kvds_get_opts *o) {
  uint16_t f = c->local ? 0 : KVDS_PF_INLINE;
  if (o && (o->flags & KVDS_GET_PIN))
    f = KVDS_PF_PIN;
  if (o && (o->flags & KVDS_GET_LOCAL))
    f |= KVDS_PF_LOCAL;
  if (o && o->hint && *o->hint)
    f |= KVDS_PF_HINT;
  return f;
}

static void get_hint_item(kvds_client *c, const struct kvds_get_opts *o) {
  if (o && o->hint && *o->hint)
    kvds_rpc_item(&c->rpc, 0, 0, 0, 0, o->hint, strlen(o->hint));
}

/* Sends the GET of keys[0..n) and reads its reply's items into *out (the
 * caller frees it); the values' bytes, if any, are left for the caller. */
static int get_call(kvds_client *c, size_t n, const struct kvds_iov *keys,
                    const struct kvds_get_opts *o,
                    const struct kvds_rpc_deadline *dl,
                    struct kvds_proto_item **out) {
  kvds_rpc_begin(&c->rpc);
  for (size_t i = 0; i < n; i++)
    kvds_rpc_item(&c->rpc, 0, 0, 0, 0, keys[i].base, keys[i].len);
  get_hint_item(c, o);
  int64_t id = kvds_rpc_send(&c->rpc, KVDS_OP_GET, get_flags(c, o),
                             kvds_rpc_wait_left(dl, o ? o->wait_ms : 0), NULL,
                             0, dl->io);
  int rc = kvds_rpc_recv_reply(&c->rpc, id, KVDS_OP_GET, dl->io);
  if (rc)
    return rc;
  if (c->rpc.rh.count != n)
    return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "get reply");
  /* Copy the item descriptions: reading data may move the reply buffer. */
  if (!(*out = malloc(n * sizeof **out)))
    return kvds_rpc_broken(&c->rpc, -ENOMEM, "get");
  memcpy(*out, c->rpc.rit, n * sizeof **out);
  return 0;
}

static int mget_chunk(kvds_client *c, size_t n, const struct kvds_iov *keys,
                      const struct kvds_get_opts *o, struct kvds_value *vals,
                      int *results, const struct kvds_rpc_deadline *dl) {
  uint64_t deadline = dl->io;
  struct kvds_proto_item *it;
  int rc = get_call(c, n, keys, o, dl, &it);
  if (rc)
    return rc;
  uint64_t total = 0;
  int pin = o && (o->flags & KVDS_GET_PIN);
  for (size_t i = 0; i < n; i++) {
    memset(&vals[i], 0, sizeof vals[i]);
    results[i] = it[i].status;
    if (it[i].status)
      continue;
    if (pin) { /* handles only: no bytes follow, none are mapped */
      if (!it[i].d || (it[i].d & TCP_VALUE_HANDLE)) {
        free(it);
        return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "get reply handle");
      }
      vals[i] = (struct kvds_value){NULL, it[i].a, it[i].c, it[i].d};
    } else if (c->local) {
      if (!kvds_pool_contains(&c->pool, it[i].b, it[i].a) || !it[i].d) {
        free(it);
        return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "get reply range");
      }
      vals[i] = (struct kvds_value){kvds_pool_ptr(&c->pool, it[i].b), it[i].a,
                                    it[i].c, it[i].d};
    }
  }
  if (!c->local && !pin)
    total = kvds_rpc_values_total(it, n, c->rpc.rh.data_len);
  if (!c->local && total != c->rpc.rh.data_len) {
    free(it);
    return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "get reply length");
  }
  struct rxbuf *rb = NULL;
  if (!c->local && total) {
    /* Values land back to back in one reusable buffer; each value holds a
     * reference to it. */
    if (!(rb = rxbuf_get(c, total))) {
      free(it);
      return kvds_rpc_broken(&c->rpc, -ENOMEM, "get");
    }
    /* Each value is hashed piece by piece as it lands, still in cache. */
    uint64_t off = 0;
    for (size_t i = 0; !rc && i < n; i++) {
      if (it[i].status)
        continue;
      uint8_t *p = rb->data + off;
      off += it[i].a;
      uint64_t sum;
      if ((rc = kvds_rpc_recv_hashed(&c->rpc, p, it[i].a, &sum, deadline)))
        break;
      if (sum != it[i].c) {
        results[i] = KVDS_E_CHECKSUM;
        continue;
      }
      rb->refs++;
      vals[i] = (struct kvds_value){p, it[i].a, it[i].c,
                                    TCP_VALUE_HANDLE | (uint64_t)(uintptr_t)rb};
    }
    if (rc) {
      rb->refs = 0;
      memset(vals, 0, n * sizeof *vals);
    }
    if (!rb->refs)
      rxbuf_idle(c, rb);
  }
  free(it);
  return rc;
}

static int check_opts(kvds_client *c, const struct kvds_get_opts *o) {
  if (o && (o->flags & ~(KVDS_GET_LOCAL | KVDS_GET_PIN)))
    return kvds_rpc_fail(&c->rpc, KVDS_E_INVAL, "unknown get flags 0x%x",
                         o->flags);
  if (o && o->hint && strlen(o->hint) > KVDS_PROTO_HINT_MAX)
    return kvds_rpc_fail(&c->rpc, KVDS_E_INVAL, "hint longer than %u bytes",
                         KVDS_PROTO_HINT_MAX);
  return 0;
}

int kvds_mget(kvds_client *c, size_t n, const struct kvds_iov *keys,
              int wait_ms, struct kvds_value *vals, int *results) {
  struct kvds_get_opts o = {.wait_ms = wait_ms};
  return kvds_mget_ex(c, n, keys, &o, vals, results);
}

int kvds_mget_ex(kvds_client *c, size_t n, const struct kvds_iov *keys,
                 const struct kvds_get_opts *o, struct kvds_value *vals,
                 int *results) {
  int rc = kvds_rpc_check_keys(&c->rpc, n, keys);
  if (!rc)
    rc = check_opts(c, o);
  if (rc)
    return rc;
  struct kvds_rpc_deadline dl =
      kvds_rpc_read_deadline(c->timeout_ms, o ? o->wait_ms : 0);
  for (size_t off = 0; off < n; off += chunk_of(n - off)) {
    if ((rc = mget_chunk(c, chunk_of(n - off), keys + off, o, vals + off,
                         results + off, &dl))) {
      release(c, off, vals, dl.io);
      return rc;
    }
  }
  return 0;
}

static int release(kvds_client *c, size_t n, struct kvds_value *vals,
                   uint64_t deadline) {
  uint64_t stack[64], *h = stack;
  if (n > 64 && !(h = malloc(n * sizeof *h)))
    return kvds_rpc_fail(&c->rpc, -ENOMEM, "out of memory");
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (!vals[i].handle)
      continue;
    if (vals[i].handle & TCP_VALUE_HANDLE)
      rxbuf_unref(c, vals[i].handle);
    else
      h[k++] = vals[i].handle;
    memset(&vals[i], 0, sizeof vals[i]);
  }
  if (k)
    kvds_rpc_release(&c->rpc, h, k, deadline);
  if (h != stack)
    free(h);
  return 0;
}

int kvds_release(kvds_client *c, size_t n, struct kvds_value *vals) {
  return release(c, n, vals, io_deadline(c));
}

int kvds_get(kvds_client *c, const void *key, size_t klen, void *buf,
             size_t cap, size_t *len, int wait_ms) {
  struct kvds_get_opts o = {.wait_ms = wait_ms};
  return kvds_get_ex(c, key, klen, buf, cap, len, &o);
}

/* One chunk of kvds_mget_into: the caller checked keys and options. */
static int mget_into_chunk(kvds_client *c, size_t n,
                           const struct kvds_iov *keys,
                           const struct kvds_get_opts *o,
                           const struct kvds_iov *bufs, size_t *lens,
                           int *results, const struct kvds_rpc_deadline *dl) {
  int rc;
  if (c->local) {
    struct kvds_value stack[16], *v = stack;
    if (n > 16 && !(v = malloc(n * sizeof *v)))
      return kvds_rpc_fail(&c->rpc, -ENOMEM, "out of memory");
    if (!(rc = mget_chunk(c, n, keys, o, v, results, dl))) {
      for (size_t i = 0; i < n; i++) {
        if (results[i])
          continue;
        if (lens)
          lens[i] = v[i].len;
        if (v[i].len > bufs[i].len)
          results[i] = KVDS_E_TOOBIG;
        else
          kvds_copy_stream(bufs[i].base, v[i].data, v[i].len);
      }
      release(c, n, v, dl->io);
    }
    if (v != stack)
      free(v);
    return rc;
  }
  /* TCP: each value is received straight into its buffer when it fits,
   * hashed piece by piece as it lands. */
  uint64_t deadline = dl->io;
  struct kvds_proto_item *it;
  if ((rc = get_call(c, n, keys, o, dl, &it)))
    return rc;
  if (kvds_rpc_values_total(it, n, c->rpc.rh.data_len) != c->rpc.rh.data_len) {
    free(it);
    return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "get reply length");
  }
  for (size_t i = 0; !rc && i < n; i++) {
    results[i] = it[i].status;
    if (it[i].status)
      continue;
    if (lens)
      lens[i] = it[i].a;
    uint64_t sum;
    if (it[i].a > bufs[i].len) {
      results[i] = KVDS_E_TOOBIG;
      rc = kvds_rpc_recv_data(&c->rpc, NULL, it[i].a, deadline);
    } else if (!(rc = kvds_rpc_recv_hashed(&c->rpc, bufs[i].base, it[i].a, &sum,
                                           deadline)) &&
               sum != it[i].c) {
      results[i] = KVDS_E_CHECKSUM;
    }
  }
  free(it);
  return rc;
}

int kvds_mget_into(kvds_client *c, size_t n, const struct kvds_iov *keys,
                   const struct kvds_get_opts *o, const struct kvds_iov *bufs,
                   size_t *lens, int *results) {
  int rc = kvds_rpc_check_keys(&c->rpc, n, keys);
  if (!rc)
    rc = check_opts(c, o);
  if (!rc && o && (o->flags & KVDS_GET_PIN))
    rc =
        kvds_rpc_fail(&c->rpc, KVDS_E_INVAL, "KVDS_GET_PIN needs kvds_mget_ex");
  if (rc)
    return rc;
  struct kvds_rpc_deadline dl =
      kvds_rpc_read_deadline(c->timeout_ms, o ? o->wait_ms : 0);
  for (size_t off = 0; off < n; off += chunk_of(n - off))
    if ((rc = mget_into_chunk(c, chunk_of(n - off), keys + off, o, bufs + off,
                              lens ? lens + off : NULL, results + off, &dl)))
      return rc;
  return 0;
}

int kvds_get_ex(kvds_client *c, const void *key, size_t klen, void *buf,
                size_t cap, size_t *len, const struct kvds_get_opts *o) {
  struct kvds_iov k = {(void *)key, klen}, b = {buf, cap};
  size_t l = 0;
  int res = 0;
  int rc = kvds_mget_into(c, 1, &k, o, &b, &l, &res);
  if (rc)
    return rc;
  if (res == KVDS_E_TOOBIG)
    return kvds_rpc_fail(&c->rpc, res, "value of %zu bytes, buffer of %zu", l,
                         cap);
  if (res == KVDS_E_CHECKSUM)
    return kvds_rpc_fail(&c->rpc, res, "value bytes do not match checksum");
  if (res)
    return kvds_rpc_fail(&c->rpc, res, "get: %s", kvds_strerror(res));
  *len = l;
  return 0;
}

/* ---- index operations --------------------------------------------------- */

static int keys_rpc(kvds_client *c, uint8_t op, size_t n,
                    const struct kvds_iov *keys, uint64_t deadline) {
  kvds_rpc_begin(&c->rpc);
  for (size_t i = 0; i < n; i++)
    kvds_rpc_item(&c->rpc, 0, 0, 0, 0, keys[i].base, keys[i].len);
  int rc = kvds_rpc_call(&c->rpc, op, 0, 0, deadline);
  if (!rc && c->rpc.rh.count != n && op != KVDS_OP_LOOKUP_PREFIX)
    return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "reply count");
  return rc;
}

int kvds_mdelete(kvds_client *c, size_t n, const struct kvds_iov *keys,
                 int *results) {
  int rc = kvds_rpc_check_keys(&c->rpc, n, keys), first = 0;
  if (rc)
    return rc;
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n; off += chunk_of(n - off)) {
    size_t m = chunk_of(n - off);
    if ((rc = keys_rpc(c, KVDS_OP_DELETE, m, keys + off, deadline)))
      return rc;
    for (size_t i = 0; i < m; i++) {
      if (results)
        results[off + i] = c->rpc.rit[i].status;
      if (c->rpc.rit[i].status && !first)
        first = c->rpc.rit[i].status;
    }
  }
  return first
             ? kvds_rpc_fail(&c->rpc, first, "delete: %s", kvds_strerror(first))
             : 0;
}

int kvds_delete(kvds_client *c, const void *key, size_t klen) {
  struct kvds_iov k = {(void *)key, klen};
  return kvds_mdelete(c, 1, &k, NULL);
}

int kvds_exists(kvds_client *c, size_t n, const struct kvds_iov *keys,
                uint8_t *present) {
  int rc = kvds_rpc_check_keys(&c->rpc, n, keys);
  if (rc)
    return rc;
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n; off += chunk_of(n - off)) {
    size_t m = chunk_of(n - off);
    if ((rc = keys_rpc(c, KVDS_OP_EXISTS, m, keys + off, deadline)))
      return rc;
    for (size_t i = 0; i < m; i++)
      present[off + i] = c->rpc.rit[i].status == 0;
  }
  return 0;
}

int kvds_lookup_prefix(kvds_client *c, size_t n, const struct kvds_iov *keys,
                       size_t *count) {
  int rc = kvds_rpc_check_keys(&c->rpc, n, keys);
  if (rc)
    return rc;
  size_t total = 0;
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n; off += chunk_of(n - off)) {
    size_t m = chunk_of(n - off);
    if ((rc = keys_rpc(c, KVDS_OP_LOOKUP_PREFIX, m, keys + off, deadline)))
      return rc;
    if (c->rpc.rh.count != 1 || c->rpc.rit[0].a > m)
      return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "lookup reply");
    total += c->rpc.rit[0].a;
    if (c->rpc.rit[0].a < m)
      break;
  }
  *count = total;
  return 0;
}

int kvds_stat(kvds_client *c, const void *key, size_t klen,
              struct kvds_object_info *info) {
  struct kvds_iov k = {(void *)key, klen};
  int rc = kvds_rpc_check_keys(&c->rpc, 1, &k);
  if (rc)
    return rc;
  kvds_rpc_begin(&c->rpc);
  kvds_rpc_item(&c->rpc, 0, 0, 0, 0, key, klen);
  if ((rc = kvds_rpc_call(&c->rpc, KVDS_OP_STAT, 0, 0, io_deadline(c))))
    return rc;
  if (c->rpc.rh.count != 2)
    return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "stat reply");
  const struct kvds_proto_item *a = &c->rpc.rit[0], *b = &c->rpc.rit[1];
  *info = (struct kvds_object_info){.size = a->a,
                                    .checksum = a->b,
                                    .state = (int)(a->c & 0xff),
                                    .pins = (uint32_t)(a->c >> 32),
                                    .ctime_us = a->d,
                                    .atime_us = b->a};
  return 0;
}

int kvds_list(kvds_client *c, const void *prefix, size_t plen,
              const void *after, size_t alen, size_t limit,
              struct kvds_list **out) {
  if (plen > KVDS_KEY_MAX || alen > KVDS_KEY_MAX)
    return kvds_rpc_fail(&c->rpc, KVDS_E_KEYLEN, "prefix too long");
  kvds_rpc_begin(&c->rpc);
  kvds_rpc_item(&c->rpc, 0, 0, 0, 0, prefix, plen);
  if (alen)
    kvds_rpc_item(&c->rpc, 0, 0, 0, 0, after, alen);
  int rc = kvds_rpc_call(&c->rpc, KVDS_OP_LIST, 0,
                         limit > UINT32_MAX ? UINT32_MAX : (uint32_t)limit,
                         io_deadline(c));
  if (rc)
    return rc;
  size_t n = c->rpc.rh.count, keybytes = 0;
  for (size_t i = 0; i < n; i++)
    keybytes += c->rpc.rit[i].klen;
  struct kvds_list *l =
      malloc(sizeof *l + n * sizeof(struct kvds_list_entry) + keybytes + 1);
  if (!l)
    return kvds_rpc_fail(&c->rpc, -ENOMEM, "out of memory");
  l->n = n;
  l->more = (c->rpc.rh.flags & KVDS_PF_MORE) != 0;
  l->entries = (struct kvds_list_entry *)(l + 1);
  uint8_t *kp = (uint8_t *)(l->entries + n);
  for (size_t i = 0; i < n; i++) {
    const struct kvds_proto_item *it = &c->rpc.rit[i];
    memcpy(kp, c->rpc.rkey[i], it->klen);
    l->entries[i] = (struct kvds_list_entry){.key = kp,
                                             .klen = it->klen,
                                             .info = {.size = it->a,
                                                      .state = (int)it->b,
                                                      .checksum = it->c,
                                                      .pins = (uint32_t)it->d}};
    kp += it->klen;
  }
  *out = l;
  return 0;
}

void kvds_list_free(struct kvds_list *l) {
  free(l);
}

int kvds_stats(kvds_client *c, struct kvds_stats *out) {
  kvds_rpc_begin(&c->rpc);
  int rc = kvds_rpc_call(&c->rpc, KVDS_OP_STATS, 0, 0, io_deadline(c));
  if (rc)
    return rc;
  struct kvds_stats s;
  memset(&s, 0, sizeof s);
  static const struct {
    const char *name;
    size_t off;
  } map[] = {
#define F(x, doc) {#x, offsetof(struct kvds_stats, x)},
      KVDS_STATS_FIELDS(F)
#undef F
  };
  for (uint32_t i = 0; i < c->rpc.rh.count; i++) {
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++) {
      if (strlen(map[k].name) == c->rpc.rit[i].klen &&
          memcmp(map[k].name, c->rpc.rkey[i], c->rpc.rit[i].klen) == 0) {
        memcpy((uint8_t *)&s + map[k].off, &c->rpc.rit[i].a, sizeof(uint64_t));
        break;
      }
    }
  }
  *out = s;
  return 0;
}

/* Largest CLUSTER reply accepted (a view of thousands of workers fits). */
#define CLUSTER_JSON_MAX (16u << 20)

int kvds_cluster_status(kvds_client *c, char **json) {
  kvds_rpc_begin(&c->rpc);
  uint64_t deadline = io_deadline(c);
  int64_t id = kvds_rpc_send(&c->rpc, KVDS_OP_CLUSTER, 0, 0, NULL, 0, deadline);
  int rc = kvds_rpc_recv_reply(&c->rpc, id, KVDS_OP_CLUSTER, deadline);
  if (rc) {
    if (kvds_rpc_is_up(&c->rpc) && c->rpc.rdata_left)
      kvds_rpc_recv_data(&c->rpc, NULL, c->rpc.rdata_left, deadline);
    return rc;
  }
  uint64_t len = c->rpc.rdata_left;
  if (len == 0 || len > CLUSTER_JSON_MAX)
    return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "cluster reply size");
  char *buf = malloc((size_t)len + 1);
  if (!buf) {
    kvds_rpc_recv_data(&c->rpc, NULL, len, deadline);
    return kvds_rpc_fail(&c->rpc, -ENOMEM, "out of memory");
  }
  if ((rc = kvds_rpc_recv_data(&c->rpc, (uint8_t *)buf, len, deadline))) {
    free(buf);
    return rc;
  }
  buf[len] = 0;
  if (strlen(buf) != len) {
    free(buf);
    return kvds_rpc_fail(&c->rpc, KVDS_E_PROTO,
                         "cluster reply holds a NUL byte");
  }
  *json = buf;
  return 0;
}

int kvds_shutdown(kvds_client *c) {
  kvds_rpc_begin(&c->rpc);
  return kvds_rpc_call(&c->rpc, KVDS_OP_SHUTDOWN, 0, 0, io_deadline(c));
}

/* ---- cluster ------------------------------------------------------------ */

int kvds_locate(kvds_client *c, const void *key, size_t klen,
                struct kvds_location **out, size_t *n) {
  struct kvds_iov k = {(void *)key, klen};
  int rc = kvds_rpc_check_keys(&c->rpc, 1, &k);
  if (rc)
    return rc;
  kvds_rpc_begin(&c->rpc);
  kvds_rpc_item(&c->rpc, 0, 0, 0, 0, key, klen);
  if ((rc = kvds_rpc_call(&c->rpc, KVDS_OP_LOCATE, 0, 0, io_deadline(c))))
    return rc;
  /* item 0: the key's status and a = number of owner items after it */
  const struct kvds_proto_item *h = c->rpc.rit;
  size_t m = c->rpc.rh.count ? c->rpc.rh.count - 1 : 0;
  if (!c->rpc.rh.count || h->a != m || (h->status && m))
    return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "locate reply");
  if (h->status && h->status != KVDS_E_NOTFOUND)
    return kvds_rpc_fail(&c->rpc, h->status, "locate: %s",
                         kvds_strerror(h->status));
  struct kvds_location *v = m ? calloc(m, sizeof *v) : NULL;
  if (m && !v)
    return kvds_rpc_fail(&c->rpc, -ENOMEM, "out of memory");
  for (size_t i = 0; i < m; i++) {
    const struct kvds_proto_item *it = &c->rpc.rit[i + 1];
    if (it->klen == 0 || it->klen >= sizeof v->id) {
      free(v);
      return kvds_rpc_broken(&c->rpc, KVDS_E_PROTO, "locate reply");
    }
    memcpy(v[i].id, c->rpc.rkey[i + 1], it->klen);
    v[i].epoch = it->a;
  }
  *out = v;
  *n = m;
  return 0;
}
