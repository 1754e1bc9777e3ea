/*
 * client.c — libkvds: the client side of the kvds protocol.
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
 * may give up. Its request id goes on the abandoned list; the worker answers
 * it some time later — possibly after replies to later requests, since a
 * waiting GET is parked there — and whichever call then reads that reply
 * discards it, giving back the pins or objects it carries. Nothing else is
 * interruptible, so the stream is always left at a frame boundary.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "client/internal.h"
#include "cluster/auth.h"
#include "common/copy.h"
#include "common/util.h"
#include "kvds/kvds.h"
#include "pool/pool.h"
#include "proto/proto.h"

#define DEFAULT_TIMEOUT_MS 5000
/* Spin on the socket this long before sleeping in poll(): a sleeping vCPU
 * takes ~50 us to wake, the worker usually answers in a few. */
#define SPIN_US 60
/* Handles of values copied over TCP (not worker handles). */
#define TCP_VALUE_HANDLE (1ull << 63)
/* Receive buffers for TCP values are kept for reuse up to this many bytes:
 * fresh memory costs a page fault per 4 KiB on first touch (~0.7 GB/s). */
#define RXBUF_KEEP (256ull << 20)
/* With an interrupt hook, a waiting call asks it at least this often. */
#define INTR_POLL_MS 100
/* Requests abandoned by interrupts and not answered yet, at most. */
#define ABANDON_MAX 64
/* The pool is pre-faulted in slices, the deadline checked between them. */
#define PREFAULT_SLICE (8ull << 20)

/* A request given up by an interrupt: its reply is discarded on arrival. */
struct abandoned {
  uint64_t id;
  uint8_t op;
};

/* One GET reply's values over TCP; freed (or kept) when all are released. */
struct rxbuf {
  struct rxbuf *prev, *next; /* every rxbuf of the client */
  size_t cap;
  uint32_t refs; /* values still out; 0 = idle, reusable */
  uint8_t data[];
};
#define SEAL_F_CHECKSUM 1u

struct kvds_client {
  int fd;
  int local;
  int timeout_ms;
  unsigned flags; /* KVDS_CONNECT_* */
  struct kvds_pool pool;
  uint64_t next_req;
  uint64_t nonce;
  char sock_path[256];
  char errmsg[256];
  char peer_id[256]; /* kvds__peer_connect: our worker's member id */
  int sock; /* peer clients: the socket, open until kvds_client_close */
  /* request meta being built (header space first) */
  uint8_t *wb;
  size_t wlen, wcap;
  uint32_t wcount;
  int wfail; /* an item could not be added: the request must not go out */
  /* reply: header + meta in rb, decoded items */
  uint8_t *rb;
  size_t rcap, rlen, rpos;
  struct kvds_proto_hdr rh;
  struct kvds_proto_item *rit;
  const uint8_t **rkey;
  uint32_t ritcap;
  uint64_t rdata_left;  /* reply data not read yet */
  int recv_fd;          /* fd received with SCM_RIGHTS, -1 if none */
  struct rxbuf *rxbufs; /* TCP value buffers, in use and idle */
  size_t rx_idle_bytes;
  kvds_interrupt_fn intr_fn; /* kvds_client_set_interrupt */
  void *intr_ud;
  int intr_ok; /* the wait under way may be interrupted */
  uint32_t nab;
  struct abandoned ab[ABANDON_MAX];
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

static int fail(kvds_client *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(kvds_client *c, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
  va_end(ap);
  return rc;
}

/* The stream is out of sync: drop the connection. */
static int broken(kvds_client *c, int rc, const char *what) {
  if (c->fd >= 0) {
    if (c->fd == c->sock) /* closed by kvds_client_close */
      shutdown(c->fd, SHUT_RDWR);
    else
      close(c->fd);
    c->fd = -1;
  }
  return fail(c, rc, "%s: %s (disconnected)", what, kvds_strerror(rc));
}

/* Waits for fd readiness until the deadline (a signal does not restart the
 * clock). With `intr` (a client whose interrupt hook applies to this wait)
 * the hook is asked on EINTR and every INTR_POLL_MS. 0, KVDS_E_TIMEOUT,
 * KVDS_E_INTR or -errno. */
static int wait_fd(int fd, short ev, uint64_t deadline, kvds_client *intr) {
  for (;;) {
    uint64_t now = kvds_now_us();
    if (now >= deadline)
      return KVDS_E_TIMEOUT;
    uint64_t left_ms = (deadline - now + 999) / 1000;
    if (left_ms > 3600000)
      left_ms = 3600000;
    if (intr && left_ms > INTR_POLL_MS)
      left_ms = INTR_POLL_MS;
    struct pollfd p = {.fd = fd, .events = ev};
    int n = poll(&p, 1, (int)left_ms);
    if (n > 0)
      return 0;
    if (n < 0 && errno != EINTR)
      return -errno;
    if (intr && intr->intr_fn(intr->intr_ud))
      return KVDS_E_INTR;
  }
}

/* ---- sending ------------------------------------------------------------ */

static int wb_reserve(kvds_client *c, size_t more) {
  if (c->wlen + more <= c->wcap)
    return 0;
  size_t nc = c->wcap ? c->wcap : 4096;
  while (nc < c->wlen + more)
    nc *= 2;
  uint8_t *nb = realloc(c->wb, nc);
  if (!nb)
    return -ENOMEM;
  c->wb = nb;
  c->wcap = nc;
  return 0;
}

static void req_begin(kvds_client *c) {
  c->wlen = KVDS_PROTO_HDR_LEN;
  c->wcount = 0;
  c->wfail = 0;
}

static int req_item(kvds_client *c, uint64_t a, uint64_t b, uint64_t cc,
                    uint64_t d, const void *key, size_t klen) {
  if (klen > KVDS_KEY_MAX)
    return c->wfail = KVDS_E_KEYLEN;
  if (wb_reserve(c, kvds_proto_item_size(klen)))
    return c->wfail = -ENOMEM;
  struct kvds_proto_item it = {
      .klen = (uint32_t)klen, .a = a, .b = b, .c = cc, .d = d};
  c->wlen += kvds_proto_item_encode(&it, key, c->wb + c->wlen);
  c->wcount++;
  return 0;
}

static int send_all(kvds_client *c, struct iovec *iov, int n,
                    uint64_t deadline) {
  while (n > 0) {
    struct msghdr mh = {.msg_iov = iov,
                        .msg_iovlen = (size_t)(n > 64 ? 64 : n)};
    ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        int rc = wait_fd(c->fd, POLLOUT, deadline, NULL);
        if (rc)
          return rc;
        continue;
      }
      return -errno;
    }
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

/* Sends the request built in wb plus `ndata` data iovecs (may be 0). Returns
 * the request id (> 0) or an error; on error the client is disconnected. */
static int64_t req_send(kvds_client *c, uint8_t op, uint16_t flags,
                        uint32_t arg, const struct iovec *data, int ndata,
                        uint64_t deadline) {
  if (c->fd < 0)
    return fail(c, KVDS_E_CLOSED, "not connected (an earlier error closed it)");
  if (c->wfail)
    return fail(c, c->wfail, "cannot build the request: %s",
                kvds_strerror(c->wfail));
  uint64_t data_len = 0;
  for (int i = 0; i < ndata; i++)
    data_len += data[i].iov_len;
  uint64_t id = ++c->next_req;
  struct kvds_proto_hdr h = {.magic = KVDS_PROTO_MAGIC,
                             .version = KVDS_PROTO_VERSION,
                             .opcode = op,
                             .flags = flags,
                             .req_id = id,
                             .count = c->wcount,
                             .meta_len =
                                 (uint32_t)(c->wlen - KVDS_PROTO_HDR_LEN),
                             .arg = arg,
                             .data_len = data_len};
  if (c->wlen - KVDS_PROTO_HDR_LEN > KVDS_PROTO_META_MAX)
    return fail(c, KVDS_E_LIMIT, "request too large");
  kvds_proto_hdr_encode(&h, c->wb);
  kvds_proto_seal_frame(c->wb, c->wb + KVDS_PROTO_HDR_LEN, h.meta_len);
  struct iovec stack[65], *iov = stack;
  if (ndata + 1 > 65 && !(iov = malloc((size_t)(ndata + 1) * sizeof *iov)))
    return fail(c, -ENOMEM, "out of memory");
  iov[0].iov_base = c->wb;
  iov[0].iov_len = c->wlen;
  for (int i = 0; i < ndata; i++)
    iov[i + 1] = data[i];
  int rc = send_all(c, iov, ndata + 1, deadline);
  if (iov != stack)
    free(iov);
  if (rc)
    return broken(c, rc, "send");
  return (int64_t)id;
}

/* ---- receiving ---------------------------------------------------------- */

static void take_fds(kvds_client *c, struct msghdr *mh) {
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
      continue;
    size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < nfd; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      if (c->recv_fd < 0)
        c->recv_fd = fd;
      else
        close(fd);
    }
  }
}

/* One read into iov (spinning briefly, then polling). Returns bytes (> 0) or
 * an error. */
static ssize_t read_some(kvds_client *c, struct iovec *iov, int n,
                         uint64_t deadline) {
  uint64_t spin_until = 0;
  for (;;) {
    union {
      char buf[CMSG_SPACE(4 * sizeof(int))];
      struct cmsghdr align;
    } u;
    struct msghdr mh = {.msg_iov = iov,
                        .msg_iovlen = (size_t)n,
                        .msg_control = u.buf,
                        .msg_controllen = sizeof u.buf};
    ssize_t r = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r > 0) {
      if (mh.msg_controllen)
        take_fds(c, &mh);
      return r;
    }
    if (r == 0)
      return KVDS_E_CLOSED;
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return -errno;
    uint64_t now = kvds_now_us();
    if (!spin_until)
      spin_until = now + SPIN_US;
    if (now < spin_until) {
      sched_yield(); /* the worker may share this CPU */
      continue;
    }
    int rc =
        wait_fd(c->fd, POLLIN, deadline, c->intr_ok && c->intr_fn ? c : NULL);
    if (rc)
      return rc;
  }
}

/* Ensures `need` bytes are buffered at rb[rpos..). */
static int rb_fill(kvds_client *c, size_t need, uint64_t deadline) {
  if (c->rlen - c->rpos >= need)
    return 0;
  if (c->rpos && c->rcap - c->rpos < need) {
    memmove(c->rb, c->rb + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  if (c->rcap - c->rpos < need) {
    size_t nc = c->rcap ? c->rcap : 65536;
    while (nc < c->rpos + need)
      nc *= 2;
    uint8_t *nb = realloc(c->rb, nc);
    if (!nb)
      return -ENOMEM;
    c->rb = nb;
    c->rcap = nc;
  }
  while (c->rlen - c->rpos < need) {
    struct iovec iov = {c->rb + c->rlen, c->rcap - c->rlen};
    ssize_t r = read_some(c, &iov, 1, deadline);
    if (r < 0)
      return (int)r;
    c->rlen += (size_t)r;
  }
  return 0;
}

/*
 * Reads the next reply frame's header and meta, decoded into rh, rit[] and
 * rkey[] (valid until the next frame); its data (rh.data_len bytes) is left
 * for recv_data/skip. Returns 0; KVDS_E_INTR when the interrupt hook gave up
 * the wait (nothing consumed: the frame stays buffered for the next call);
 * or an error after which the client is disconnected.
 */
static int recv_frame(kvds_client *c, uint64_t deadline) {
  int rc;
  if (c->rpos == c->rlen)
    c->rpos = c->rlen = 0;
  c->intr_ok = 1;
  rc = rb_fill(c, KVDS_PROTO_HDR_LEN, deadline);
  if (!rc) {
    if ((rc = kvds_proto_hdr_decode(c->rb + c->rpos, KVDS_PROTO_HDR_LEN,
                                    &c->rh))) {
      c->intr_ok = 0;
      return broken(c, rc, "reply header");
    }
    rc = rb_fill(c, KVDS_PROTO_HDR_LEN + c->rh.meta_len, deadline);
  }
  c->intr_ok = 0;
  if (rc == KVDS_E_INTR)
    return rc;
  if (rc)
    return broken(c, rc, "receive");
  if (!(c->rh.flags & KVDS_PF_REPLY))
    return broken(c, KVDS_E_PROTO, "unexpected reply");
  const uint8_t *hraw = c->rb + c->rpos;
  const uint8_t *meta = hraw + KVDS_PROTO_HDR_LEN;
  if ((rc = kvds_proto_verify(hraw, meta, c->rh.meta_len)) ||
      (rc = kvds_proto_meta_validate(meta, c->rh.meta_len, c->rh.count)))
    return broken(c, rc, "reply meta");
  if (c->rh.count > c->ritcap) {
    uint32_t nc = c->rh.count;
    void *a = realloc(c->rit, nc * sizeof *c->rit);
    if (a)
      c->rit = a;
    void *b = a ? realloc(c->rkey, nc * sizeof *c->rkey) : NULL;
    if (b)
      c->rkey = b;
    if (!a || !b)
      return broken(c, -ENOMEM, "reply");
    c->ritcap = nc;
  }
  size_t pos = 0;
  for (uint32_t i = 0; i < c->rh.count; i++)
    kvds_proto_item_decode(meta, c->rh.meta_len, &pos, &c->rit[i], &c->rkey[i]);
  c->rpos += KVDS_PROTO_HDR_LEN + c->rh.meta_len;
  c->rdata_left = c->rh.data_len;
  return 0;
}

static int recv_data(kvds_client *c, uint8_t *dst, uint64_t len,
                     uint64_t deadline);

/* Gives request `id` up (an interrupt): its reply is discarded when it comes.
 * Returns KVDS_E_INTR; the client is disconnected when too many replies are
 * outstanding already. */
static int abandon(kvds_client *c, int64_t id, uint8_t op) {
  if (c->nab == ABANDON_MAX)
    return broken(c, KVDS_E_INTR,
                  "interrupted, with too many requests "
                  "abandoned and unanswered");
  c->ab[c->nab++] = (struct abandoned){(uint64_t)id, op};
  return fail(c, KVDS_E_INTR, "interrupted; the request was abandoned");
}

/*
 * The frame in rh/rit[] answers abandoned request ab[k]: skips its data and
 * gives back what it holds — the pins of a GET answered with handles
 * (shared memory, KVDS_PF_PIN), the objects of a CREATE (aborted; that
 * ABORT's reply is abandoned in turn). 0, or an error after which the
 * client is disconnected.
 */
static int discard(kvds_client *c, uint32_t k, uint64_t deadline) {
  struct abandoned a = c->ab[k];
  c->ab[k] = c->ab[--c->nab];
  if (c->rh.opcode != a.op && c->rh.status == 0)
    return broken(c, KVDS_E_PROTO, "unexpected reply");
  int rc = c->rdata_left ? recv_data(c, NULL, c->rdata_left, deadline) : 0;
  if (rc || c->rh.status)
    return rc;
  uint8_t op = 0;
  if (a.op == KVDS_OP_GET && !(c->rh.flags & KVDS_PF_INLINE))
    op = KVDS_OP_RELEASE;
  else if (a.op == KVDS_OP_CREATE)
    op = KVDS_OP_ABORT;
  if (!op)
    return 0;
  req_begin(c);
  for (uint32_t i = 0; i < c->rh.count; i++) {
    uint64_t h = op == KVDS_OP_RELEASE ? c->rit[i].d : c->rit[i].a;
    if (!c->rit[i].status && h)
      req_item(c, h, 0, 0, 0, NULL, 0);
  }
  if (!c->wcount)
    return 0;
  int64_t id = req_send(c, op, op == KVDS_OP_RELEASE ? KVDS_PF_NOREPLY : 0, 0,
                        NULL, 0, deadline);
  if (id < 0)
    return (int)id;
  if (op == KVDS_OP_ABORT) /* room: ab[k] was just freed */
    c->ab[c->nab++] = (struct abandoned){(uint64_t)id, op};
  return 0;
}

/*
 * Reads the reply to request `id` (op), discarding on the way the replies
 * of abandoned requests. Header and meta are decoded into rh, rit[] and
 * rkey[] (valid until the next call); data (rh.data_len bytes) is left for
 * recv_data. Returns the reply's status; KVDS_E_INTR (the request is
 * abandoned, the client still connected); or an error after which the
 * client is disconnected.
 */
static int recv_reply(kvds_client *c, int64_t id, uint8_t op,
                      uint64_t deadline) {
  if (id < 0)
    return (int)id;
  for (;;) {
    int rc = recv_frame(c, deadline);
    if (rc == KVDS_E_INTR)
      return abandon(c, id, op);
    if (rc)
      return rc;
    if (c->rh.req_id == (uint64_t)id)
      break;
    uint32_t k = 0;
    while (k < c->nab && c->ab[k].id != c->rh.req_id)
      k++;
    if (k == c->nab)
      return broken(c, KVDS_E_PROTO, "unexpected reply");
    if ((rc = discard(c, k, deadline)))
      return rc;
  }
  if (c->rh.opcode != op && c->rh.status == 0)
    return broken(c, KVDS_E_PROTO, "unexpected reply");
  if (c->rh.status)
    fail(c, c->rh.status, "worker: %s", kvds_strerror(c->rh.status));
  return c->rh.status;
}

/* Reads `len` reply data bytes into dst (NULL = discard). With `hash`
 * (dst required) the bytes are also fed to it piece by piece as they
 * arrive, while each piece (<= 256 KiB) is still in cache. */
static int recv_data_h(kvds_client *c, uint8_t *dst, uint64_t len,
                       XXH3_state_t *hash, uint64_t deadline) {
  if (len > c->rdata_left)
    return broken(c, KVDS_E_PROTO, "reply data");
  c->rdata_left -= len;
  /* First whatever is already buffered. */
  size_t have = c->rlen - c->rpos;
  if (have > len)
    have = (size_t)len;
  if (dst)
    memcpy(dst, c->rb + c->rpos, have);
  if (hash)
    XXH3_64bits_update(hash, dst, have);
  c->rpos += have;
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
    ssize_t r = read_some(c, &iov, 1, deadline);
    if (r < 0)
      return broken(c, (int)r, "receive");
    if (hash)
      XXH3_64bits_update(hash, dst, (size_t)r);
    len -= (uint64_t)r;
    if (dst)
      dst += r;
  }
  return 0;
}

static int recv_data(kvds_client *c, uint8_t *dst, uint64_t len,
                     uint64_t deadline) {
  return recv_data_h(c, dst, len, NULL, deadline);
}

/* Sends a request with no data and reads its reply header + meta. */
static int rpc(kvds_client *c, uint8_t op, uint16_t flags, uint32_t arg,
               uint64_t deadline) {
  int64_t id = req_send(c, op, flags, arg, NULL, 0, deadline);
  int rc = recv_reply(c, id, op, deadline);
  if (c->fd >= 0 && c->rdata_left) {
    int r2 = recv_data(c, NULL, c->rdata_left, deadline);
    if (r2)
      return r2;
  }
  return rc;
}

/* The deadline of a call without a wait, fixed when it starts. */
static uint64_t io_deadline(kvds_client *c) {
  return kvds_now_us() + (uint64_t)c->timeout_ms * 1000u;
}

/* ---- connection --------------------------------------------------------- */

/* A Unix-socket connect waits while the worker's accept queue is full (a
 * non-blocking one would fail with EAGAIN at once): blocking, bounded by
 * SO_SNDTIMEO set to what is left of the deadline, then non-blocking. */
static int connect_unix(const char *path, int *out, uint64_t deadline) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  size_t pl = strlen(path);
  if (pl == 0 || pl >= sizeof sa.sun_path)
    return KVDS_E_ADDR;
  memcpy(sa.sun_path, path, pl + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int e = 0;
  for (;;) {
    uint64_t now = kvds_now_us();
    if (now >= deadline) {
      e = KVDS_E_TIMEOUT;
      break;
    }
    uint64_t left = deadline - now; /* > 0: a zero timeout never expires */
    struct timeval tv = {.tv_sec = (time_t)(left / 1000000),
                         .tv_usec = (suseconds_t)(left % 1000000)};
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv)) {
      e = -errno;
      break;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
      break;
    if (errno == EINTR)
      continue;
    e = errno == EAGAIN ? KVDS_E_TIMEOUT : -errno;
    break;
  }
  struct timeval none = {0, 0};
  if (!e && (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none) ||
             fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)))
    e = -errno;
  if (e) {
    close(fd);
    return e;
  }
  *out = fd;
  return 0;
}

static int connect_tcp(const char *addr, int *out, uint64_t deadline) {
  char host[256], port_s[8];
  uint16_t port;
  if (kvds_split_hostport(addr, host, sizeof host, &port))
    return KVDS_E_ADDR;
  snprintf(port_s, sizeof port_s, "%u", (unsigned)port);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICSERV};
  struct addrinfo *ai, *p;
  if (getaddrinfo(host, port_s, &hints, &ai))
    return KVDS_E_ADDR;
  int rc = -ECONNREFUSED;
  for (p = ai; p; p = p->ai_next) {
    int fd =
        socket(p->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      rc = -errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, p->ai_addr, p->ai_addrlen) == 0) {
      rc = 0;
    } else if (errno == EINPROGRESS) {
      rc = wait_fd(fd, POLLOUT, deadline, NULL);
      if (!rc) {
        int e = 0;
        socklen_t l = sizeof e;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l);
        rc = -e;
      }
    } else {
      rc = -errno;
    }
    if (!rc) {
      *out = fd;
      break;
    }
    close(fd);
  }
  freeaddrinfo(ai);
  return rc;
}

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
  req_begin(c);
  req_item(c, want_shm ? 1 : 0, KVDS_PROTO_VERSION, 0, 0, NULL, 0);
  if (c->peer_id[0]) /* a worker's peer connection says whose it is */
    req_item(c, 0, 0, 0, 0, c->peer_id, strlen(c->peer_id));
  c->recv_fd = -1;
  int rc = rpc(c, KVDS_OP_HELLO, 0, 0, deadline);
  int fd = c->recv_fd;
  c->recv_fd = -1;
  if (rc)
    goto out;
  if (c->rh.count < 1) {
    rc = broken(c, KVDS_E_PROTO, "hello");
    goto out;
  }
  const struct kvds_proto_item *it = &c->rit[0];
  c->nonce = it->d;
  size_t pl = it->klen < sizeof c->sock_path ? it->klen : 0;
  if (pl)
    memcpy(c->sock_path, c->rkey[0], pl);
  c->sock_path[pl] = 0;
  if (want_shm) {
    if (fd < 0 || !(c->rh.flags & KVDS_PF_SHM)) {
      rc = fail(c, KVDS_E_PROTO, "worker did not pass its pool");
      goto out;
    }
    if ((rc = kvds_pool_attach(&c->pool, fd, 0))) {
      fail(c, rc, "cannot map the worker's pool: %s", kvds_strerror(rc));
      goto out;
    }
    fd = -1;
    if (!(c->flags & KVDS_CONNECT_LAZY_MAP) && (rc = prefault(c, deadline))) {
      fail(c, rc, "cannot map the worker's pool: %s", kvds_strerror(rc));
      goto out;
    }
    c->local = 1;
  }
out:
  if (fd >= 0)
    close(fd);
  return rc;
}

/*
 * AUTH over TCP, when $KVDS_AUTH_TOKEN_FILE names a token file: sends our
 * nonce, checks the worker's proof (so nothing else goes to a worker that
 * does not hold the token), then proves the token ourselves. 0 when the
 * variable is unset or the exchange succeeded; KVDS_E_AUTH when the file is
 * unusable, the worker does not authenticate, or either proof is wrong.
 */
static int authenticate_with(kvds_client *c, const struct kvds_auth_token *tok,
                             uint64_t deadline) {
  uint8_t cn[KVDS_AUTH_NONCE_LEN], wn[KVDS_AUTH_NONCE_LEN];
  uint8_t proof[KVDS_AUTH_PROOF_LEN];
  int rc;
  if ((rc = kvds_auth_nonce(cn)))
    return fail(c, rc, "no random bytes for the auth nonce");
  req_begin(c);
  req_item(c, 1, 0, 0, 0, cn, sizeof cn);
  rc = rpc(c, KVDS_OP_AUTH, 0, 0, deadline);
  if (rc && c->fd >= 0) {
    /* Answered, but not with a challenge: this worker does not
     * authenticate (no --auth-token-file, or it predates AUTH). */
    return broken(c, KVDS_E_AUTH, "the worker does not authenticate clients");
  }
  if (rc)
    return rc;
  if (c->rh.count != 2 || c->rit[0].klen != KVDS_AUTH_NONCE_LEN)
    return broken(c, KVDS_E_PROTO, "auth challenge");
  memcpy(wn, c->rkey[0], sizeof wn);
  if (kvds_auth_verify(tok, KVDS_AUTH_WORKER, wn, cn, c->rkey[1],
                       c->rit[1].klen))
    return broken(c, KVDS_E_AUTH, "the worker does not hold our token");
  kvds_auth_proof(tok, KVDS_AUTH_CLIENT, wn, cn, proof);
  req_begin(c);
  req_item(c, 2, 0, 0, 0, proof, sizeof proof);
  return rpc(c, KVDS_OP_AUTH, 0, 0, deadline);
}

static int authenticate(kvds_client *c, uint64_t deadline) {
  const char *path = getenv("KVDS_AUTH_TOKEN_FILE");
  if (!path || !*path)
    return 0;
  struct kvds_auth_token tok;
  int rc = kvds_auth_token_load(path, &tok, c->errmsg, sizeof c->errmsg);
  if (rc)
    return rc;
  rc = authenticate_with(c, &tok, deadline);
  kvds_auth_token_wipe(&tok);
  return rc;
}

static kvds_client *client_new(int timeout_ms, unsigned flags) {
  kvds_client *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->flags = flags;
  c->fd = -1;
  c->sock = -1;
  c->recv_fd = -1;
  c->pool.fd = -1;
  c->timeout_ms = timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS;
  return c;
}

static int open_unix(kvds_client *c, const char *path, uint64_t deadline) {
  int rc = connect_unix(path, &c->fd, deadline);
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
    rc = connect_tcp(address, &c->fd, deadline);
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
      if (u && connect_unix(c->sock_path, &u->fd, deadline) == 0 &&
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
  if (c->fd >= 0)
    close(c->fd);
  else if (c->sock >= 0)
    close(c->sock);
  if (c->recv_fd >= 0)
    close(c->recv_fd);
  if (c->pool.base)
    kvds_pool_destroy(&c->pool);
  else if (c->pool.fd >= 0)
    close(c->pool.fd);
  while (c->rxbufs) {
    struct rxbuf *b = c->rxbufs;
    rxbuf_unlink(c, b);
    free(b);
  }
  free(c->wb);
  free(c->rb);
  free(c->rit);
  free(c->rkey);
  free(c);
}

void kvds_client_set_interrupt(kvds_client *c, kvds_interrupt_fn fn, void *ud) {
  c->intr_fn = fn;
  c->intr_ud = ud;
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
  return c->fd >= 0;
}

const char *kvds_client_errmsg(const kvds_client *c) {
  return c->errmsg;
}

int kvds_ping(kvds_client *c) {
  req_begin(c);
  return rpc(c, KVDS_OP_PING, 0, 0, io_deadline(c));
}

/* ---- helpers for batches ------------------------------------------------ */

static int check_key(kvds_client *c, const struct kvds_iov *k) {
  if (!k->base || k->len == 0 || k->len > KVDS_KEY_MAX)
    return fail(c, KVDS_E_KEYLEN, "key length %zu out of range (1..%d)", k->len,
                KVDS_KEY_MAX);
  return 0;
}

static int check_keys(kvds_client *c, size_t n, const struct kvds_iov *keys) {
  for (size_t i = 0; i < n; i++) {
    int rc = check_key(c, &keys[i]);
    if (rc)
      return rc;
  }
  return 0;
}

static size_t chunk_of(size_t left) {
  return left < KVDS_BATCH_MAX ? left : KVDS_BATCH_MAX;
}

/* ---- create / seal / abort ---------------------------------------------- */

static int mabort(kvds_client *c, size_t n, struct kvds_wbuf *bufs,
                  uint64_t deadline);

static int mcreate_chunk(kvds_client *c, size_t n, const struct kvds_iov *keys,
                         const size_t *sizes, struct kvds_wbuf *bufs,
                         int *results, uint64_t deadline) {
  req_begin(c);
  for (size_t i = 0; i < n; i++) {
    int rc = req_item(c, sizes[i], 0, 0, 0, keys[i].base, keys[i].len);
    if (rc)
      return fail(c, rc, "out of memory");
  }
  int64_t id = req_send(c, KVDS_OP_CREATE, 0, 0, NULL, 0, deadline);
  int rc = recv_reply(c, id, KVDS_OP_CREATE, deadline);
  if (rc)
    return rc;
  if (c->rh.count != n)
    return broken(c, KVDS_E_PROTO, "create reply");
  for (size_t i = 0; i < n; i++) {
    const struct kvds_proto_item *it = &c->rit[i];
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
  int rc = check_keys(c, n, keys);
  if (rc)
    return rc;
  for (size_t i = 0; i < n; i++)
    if (sizes[i] == 0)
      return fail(c, KVDS_E_INVAL, "object size 0");
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n; off += chunk_of(n - off)) {
    if ((rc = mcreate_chunk(c, chunk_of(n - off), keys + off, sizes + off,
                            bufs + off, results + off, deadline))) {
      /* The whole call fails: give back what earlier chunks created,
       * keeping the message of the failure itself. (Past the deadline the
       * ABORT times out and disconnects, which aborts them too.) */
      char msg[sizeof c->errmsg];
      memcpy(msg, c->errmsg, sizeof msg);
      mabort(c, off, bufs, deadline);
      memcpy(c->errmsg, msg, sizeof msg);
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
    return fail(c, res, "create: %s", kvds_strerror(res));
  *buf = b;
  return 0;
}

int kvds_write(kvds_client *c, const struct kvds_wbuf *buf, size_t off,
               const void *src, size_t len) {
  if (!buf->data || off > buf->len || len > buf->len - off)
    return fail(c, KVDS_E_RANGE, "write of %zu bytes at %zu outside %zu", len,
                off, buf->len);
  memcpy((uint8_t *)buf->data + off, src, len);
  return 0;
}

static int mseal_chunk(kvds_client *c, size_t n, struct kvds_wbuf *bufs,
                       const uint64_t *sums, int *results, uint64_t deadline) {
  int rc;
  if (!c->local) {
    /* Send the staged bytes first; WRITE and SEAL are pipelined. */
    req_begin(c);
    struct iovec *iov = malloc((n ? n : 1) * sizeof *iov);
    if (!iov)
      return fail(c, -ENOMEM, "out of memory");
    int k = 0;
    for (size_t i = 0; i < n; i++) {
      if (!bufs[i].handle)
        continue;
      req_item(c, bufs[i].handle, 0, bufs[i].len, 0, NULL, 0);
      iov[k].iov_base = bufs[i].data;
      iov[k].iov_len = bufs[i].len;
      k++;
    }
    int64_t wid = req_send(c, KVDS_OP_WRITE, 0, 0, iov, k, deadline);
    free(iov);
    if (wid < 0)
      return (int)wid;
    req_begin(c);
    for (size_t i = 0; i < n; i++)
      if (bufs[i].handle)
        req_item(c, bufs[i].handle,
                 sums ? sums[i] : kvds_checksum(bufs[i].data, bufs[i].len),
                 SEAL_F_CHECKSUM, 0, NULL, 0);
    int64_t sid = req_send(c, KVDS_OP_SEAL, 0, 0, NULL, 0, deadline);
    if (sid < 0)
      return (int)sid;
    if ((rc = recv_reply(c, wid, KVDS_OP_WRITE, deadline))) {
      if (rc == KVDS_E_INTR && c->fd >= 0) /* both replies are still due */
        return abandon(c, sid, KVDS_OP_SEAL);
      /* The SEAL reply is still on its way: the stream is out of step. */
      return c->fd >= 0 ? broken(c, rc, "write") : rc;
    }
    if ((rc = recv_reply(c, sid, KVDS_OP_SEAL, deadline)))
      return rc;
  } else {
    req_begin(c);
    for (size_t i = 0; i < n; i++)
      if (bufs[i].handle)
        req_item(c, bufs[i].handle,
                 sums ? sums[i] : kvds_checksum(bufs[i].data, bufs[i].len),
                 SEAL_F_CHECKSUM, 0, NULL, 0);
    if ((rc = rpc(c, KVDS_OP_SEAL, 0, 0, deadline)))
      return rc;
  }
  uint32_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (!bufs[i].handle) {
      if (results)
        results[i] = KVDS_E_HANDLE;
      continue;
    }
    int st = k < c->rh.count ? c->rit[k].status : KVDS_E_PROTO;
    uint64_t sum = k < c->rh.count ? c->rit[k].a : 0;
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
    return fail(c, -ENOMEM, "out of memory");
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
    req_begin(c);
    for (size_t i = off; i < off + m; i++)
      if (bufs[i].handle)
        req_item(c, bufs[i].handle, 0, 0, 0, NULL, 0);
    int rc = rpc(c, KVDS_OP_ABORT, 0, 0, deadline);
    for (size_t i = off; i < off + m; i++) {
      if (!c->local)
        free(bufs[i].data);
      memset(&bufs[i], 0, sizeof bufs[i]);
    }
    if (rc && !first)
      first = rc;
    for (uint32_t k = 0; !rc && k < c->rh.count; k++)
      if (c->rit[k].status && !first)
        first = c->rit[k].status;
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
  req_begin(c);
  for (size_t i = 0; i < n; i++) {
    if (results[i])
      continue;
    uint64_t sum = kvds_copy_hash(bufs[i].data, vals[i].base, vals[i].len);
    req_item(c, bufs[i].handle, sum, SEAL_F_CHECKSUM, 0, NULL, 0);
  }
  if (c->wcount == 0)
    goto out;
  if ((rc = rpc(c, KVDS_OP_SEAL, 0, 0, deadline)))
    goto out;
  uint32_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (!results[i])
      results[i] = k < c->rh.count ? c->rit[k++].status : KVDS_E_PROTO;
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
    return fail(c, -ENOMEM, "out of memory");
  req_begin(c);
  for (size_t i = 0; i < n; i++) {
    req_item(c, vals[i].len, 0, 0, 0, keys[i].base, keys[i].len);
    iov[i].iov_base = vals[i].base;
    iov[i].iov_len = vals[i].len;
  }
  int64_t id = req_send(c, KVDS_OP_PUT, 0, 0, iov, (int)n, deadline);
  free(iov);
  int rc = recv_reply(c, id, KVDS_OP_PUT, deadline);
  if (rc)
    return rc;
  if (c->rh.count != n)
    return broken(c, KVDS_E_PROTO, "put reply");
  for (size_t i = 0; i < n; i++)
    results[i] = c->rit[i].status;
  return 0;
}

int kvds_mput(kvds_client *c, size_t n, const struct kvds_iov *keys,
              const struct kvds_iov *vals, int *results) {
  int rc = check_keys(c, n, keys);
  if (rc)
    return rc;
  for (size_t i = 0; i < n; i++)
    if (vals[i].len == 0 || !vals[i].base)
      return fail(c, KVDS_E_INVAL, "empty value");
  int *res = results ? results : malloc((n ? n : 1) * sizeof *res);
  if (!res)
    return fail(c, -ENOMEM, "out of memory");
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n && !rc; off += chunk_of(n - off)) {
    size_t m = chunk_of(n - off);
    rc = c->local
             ? mput_local(c, m, keys + off, vals + off, res + off, deadline)
             : mput_tcp(c, m, keys + off, vals + off, res + off, deadline);
  }
  for (size_t i = 0; i < n && !rc; i++)
    if (res[i])
      rc = fail(c, res[i], "put: %s", kvds_strerror(res[i]));
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

static void release_send(kvds_client *c, const uint64_t *handles, size_t n,
                         uint64_t deadline) {
  for (size_t off = 0; off < n && c->fd >= 0; off += chunk_of(n - off)) {
    req_begin(c);
    for (size_t i = off; i < off + chunk_of(n - off); i++)
      req_item(c, handles[i], 0, 0, 0, NULL, 0);
    req_send(c, KVDS_OP_RELEASE, KVDS_PF_NOREPLY, 0, NULL, 0, deadline);
  }
}

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
    req_item(c, 0, 0, 0, 0, o->hint, strlen(o->hint));
}

/* Sum of the sizes of the found items, or max + 1 as soon as it passes max
 * (sizes come from the worker: they must not wrap). */
static uint64_t values_total(const struct kvds_proto_item *it, size_t n,
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

/* The deadlines of one read: its wait for keys ends at `wait`, the whole
 * call at `io` (the I/O timeout later). */
struct read_deadline {
  uint64_t wait, io;
};

static struct read_deadline read_deadline(kvds_client *c, int wait_ms) {
  uint64_t now = kvds_now_us();
  uint64_t w = wait_ms > 0 ? (uint64_t)wait_ms * 1000u : 0;
  return (struct read_deadline){now + w,
                                now + w + (uint64_t)c->timeout_ms * 1000u};
}

/* The wait (ms) of the read's next request: what is left of it, and at
 * least 1 ms once one was asked for (0 would answer NOTFOUND, not
 * TIMEOUT). */
static uint32_t wait_left(const struct read_deadline *d, int wait_ms) {
  if (wait_ms <= 0)
    return 0;
  uint64_t now = kvds_now_us();
  uint64_t ms = d->wait > now ? (d->wait - now + 999) / 1000 : 1;
  return ms < (uint64_t)wait_ms ? (uint32_t)ms : (uint32_t)wait_ms;
}

static int mget_chunk(kvds_client *c, size_t n, const struct kvds_iov *keys,
                      const struct kvds_get_opts *o, struct kvds_value *vals,
                      int *results, const struct read_deadline *dl) {
  uint64_t deadline = dl->io;
  req_begin(c);
  for (size_t i = 0; i < n; i++)
    req_item(c, 0, 0, 0, 0, keys[i].base, keys[i].len);
  get_hint_item(c, o);
  int64_t id = req_send(c, KVDS_OP_GET, get_flags(c, o),
                        wait_left(dl, o ? o->wait_ms : 0), NULL, 0, deadline);
  int rc = recv_reply(c, id, KVDS_OP_GET, deadline);
  if (rc)
    return rc;
  if (c->rh.count != n)
    return broken(c, KVDS_E_PROTO, "get reply");
  /* Copy the item descriptions: reading data may move the reply buffer. */
  struct kvds_proto_item *it = malloc(n * sizeof *it);
  if (!it)
    return broken(c, -ENOMEM, "get");
  memcpy(it, c->rit, n * sizeof *it);
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
        return broken(c, KVDS_E_PROTO, "get reply handle");
      }
      vals[i] = (struct kvds_value){NULL, it[i].a, it[i].c, it[i].d};
    } else if (c->local) {
      if (!kvds_pool_contains(&c->pool, it[i].b, it[i].a) || !it[i].d) {
        free(it);
        return broken(c, KVDS_E_PROTO, "get reply range");
      }
      vals[i] = (struct kvds_value){kvds_pool_ptr(&c->pool, it[i].b), it[i].a,
                                    it[i].c, it[i].d};
    }
  }
  if (!c->local && !pin)
    total = values_total(it, n, c->rh.data_len);
  if (!c->local && total != c->rh.data_len) {
    free(it);
    return broken(c, KVDS_E_PROTO, "get reply length");
  }
  struct rxbuf *rb = NULL;
  if (!c->local && total) {
    /* Values land back to back in one reusable buffer; each value holds a
     * reference to it. */
    if (!(rb = rxbuf_get(c, total))) {
      free(it);
      return broken(c, -ENOMEM, "get");
    }
    rc = recv_data(c, rb->data, total, deadline);
    uint64_t off = 0;
    for (size_t i = 0; !rc && i < n; i++) {
      if (it[i].status)
        continue;
      const uint8_t *p = rb->data + off;
      off += it[i].a;
      if (kvds_checksum(p, it[i].a) != it[i].c) {
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

/* A hint names a member (id or address): at most 255 bytes. */
#define HINT_MAX 255

static int check_opts(kvds_client *c, const struct kvds_get_opts *o) {
  if (o && (o->flags & ~(KVDS_GET_LOCAL | KVDS_GET_PIN)))
    return fail(c, KVDS_E_INVAL, "unknown get flags 0x%x", o->flags);
  if (o && o->hint && strlen(o->hint) > HINT_MAX)
    return fail(c, KVDS_E_INVAL, "hint longer than %d bytes", HINT_MAX);
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
  int rc = check_keys(c, n, keys);
  if (!rc)
    rc = check_opts(c, o);
  if (rc)
    return rc;
  struct read_deadline dl = read_deadline(c, o ? o->wait_ms : 0);
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
    return fail(c, -ENOMEM, "out of memory");
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
    release_send(c, h, k, deadline);
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

int kvds_get_ex(kvds_client *c, const void *key, size_t klen, void *buf,
                size_t cap, size_t *len, const struct kvds_get_opts *o) {
  struct kvds_iov k = {(void *)key, klen};
  struct kvds_value v;
  int res, wait_ms = o ? o->wait_ms : 0;
  struct read_deadline dl = read_deadline(c, wait_ms);
  int rc = check_key(c, &k);
  if (!rc)
    rc = check_opts(c, o);
  if (!rc && o && (o->flags & KVDS_GET_PIN))
    rc = fail(c, KVDS_E_INVAL, "KVDS_GET_PIN needs kvds_mget_ex");
  if (rc)
    return rc;
  if (c->local) {
    if ((rc = mget_chunk(c, 1, &k, o, &v, &res, &dl)))
      return rc;
    if (res)
      return fail(c, res, "get: %s", kvds_strerror(res));
    if (v.len > cap)
      rc = fail(c, KVDS_E_TOOBIG, "value of %zu bytes, buffer of %zu", v.len,
                cap);
    else
      memcpy(buf, v.data, v.len);
    size_t l = v.len;
    release(c, 1, &v, dl.io);
    if (!rc)
      *len = l;
    return rc;
  }
  /* TCP: receive straight into the caller's buffer when it fits. */
  uint64_t deadline = dl.io;
  req_begin(c);
  req_item(c, 0, 0, 0, 0, key, klen);
  get_hint_item(c, o);
  int64_t id = req_send(c, KVDS_OP_GET, get_flags(c, o),
                        wait_left(&dl, wait_ms), NULL, 0, deadline);
  if ((rc = recv_reply(c, id, KVDS_OP_GET, deadline)))
    return rc;
  if (c->rh.count != 1)
    return broken(c, KVDS_E_PROTO, "get reply");
  struct kvds_proto_item it = c->rit[0];
  if (it.status)
    return fail(c, it.status, "get: %s", kvds_strerror(it.status));
  if (it.a != c->rh.data_len)
    return broken(c, KVDS_E_PROTO, "get reply length");
  int fits = it.a <= cap;
  if ((rc = recv_data(c, fits ? buf : NULL, it.a, deadline)))
    return rc;
  if (!fits)
    return fail(c, KVDS_E_TOOBIG, "value of %llu bytes, buffer of %zu",
                (unsigned long long)it.a, cap);
  if (kvds_checksum(buf, it.a) != it.c)
    return fail(c, KVDS_E_CHECKSUM, "value bytes do not match checksum");
  *len = it.a;
  return 0;
}

/* ---- index operations --------------------------------------------------- */

static int keys_rpc(kvds_client *c, uint8_t op, size_t n,
                    const struct kvds_iov *keys, uint64_t deadline) {
  req_begin(c);
  for (size_t i = 0; i < n; i++)
    req_item(c, 0, 0, 0, 0, keys[i].base, keys[i].len);
  int rc = rpc(c, op, 0, 0, deadline);
  if (!rc && c->rh.count != n && op != KVDS_OP_LOOKUP_PREFIX)
    return broken(c, KVDS_E_PROTO, "reply count");
  return rc;
}

int kvds_mdelete(kvds_client *c, size_t n, const struct kvds_iov *keys,
                 int *results) {
  int rc = check_keys(c, n, keys), first = 0;
  if (rc)
    return rc;
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n; off += chunk_of(n - off)) {
    size_t m = chunk_of(n - off);
    if ((rc = keys_rpc(c, KVDS_OP_DELETE, m, keys + off, deadline)))
      return rc;
    for (size_t i = 0; i < m; i++) {
      if (results)
        results[off + i] = c->rit[i].status;
      if (c->rit[i].status && !first)
        first = c->rit[i].status;
    }
  }
  return first ? fail(c, first, "delete: %s", kvds_strerror(first)) : 0;
}

int kvds_delete(kvds_client *c, const void *key, size_t klen) {
  struct kvds_iov k = {(void *)key, klen};
  return kvds_mdelete(c, 1, &k, NULL);
}

int kvds_exists(kvds_client *c, size_t n, const struct kvds_iov *keys,
                uint8_t *present) {
  int rc = check_keys(c, n, keys);
  if (rc)
    return rc;
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n; off += chunk_of(n - off)) {
    size_t m = chunk_of(n - off);
    if ((rc = keys_rpc(c, KVDS_OP_EXISTS, m, keys + off, deadline)))
      return rc;
    for (size_t i = 0; i < m; i++)
      present[off + i] = c->rit[i].status == 0;
  }
  return 0;
}

int kvds_lookup_prefix(kvds_client *c, size_t n, const struct kvds_iov *keys,
                       size_t *count) {
  int rc = check_keys(c, n, keys);
  if (rc)
    return rc;
  size_t total = 0;
  uint64_t deadline = io_deadline(c);
  for (size_t off = 0; off < n; off += chunk_of(n - off)) {
    size_t m = chunk_of(n - off);
    if ((rc = keys_rpc(c, KVDS_OP_LOOKUP_PREFIX, m, keys + off, deadline)))
      return rc;
    if (c->rh.count != 1 || c->rit[0].a > m)
      return broken(c, KVDS_E_PROTO, "lookup reply");
    total += c->rit[0].a;
    if (c->rit[0].a < m)
      break;
  }
  *count = total;
  return 0;
}

int kvds_stat(kvds_client *c, const void *key, size_t klen,
              struct kvds_object_info *info) {
  struct kvds_iov k = {(void *)key, klen};
  int rc = check_key(c, &k);
  if (rc)
    return rc;
  req_begin(c);
  req_item(c, 0, 0, 0, 0, key, klen);
  if ((rc = rpc(c, KVDS_OP_STAT, 0, 0, io_deadline(c))))
    return rc;
  if (c->rh.count != 2)
    return broken(c, KVDS_E_PROTO, "stat reply");
  const struct kvds_proto_item *a = &c->rit[0], *b = &c->rit[1];
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
    return fail(c, KVDS_E_KEYLEN, "prefix too long");
  req_begin(c);
  req_item(c, 0, 0, 0, 0, prefix, plen);
  if (alen)
    req_item(c, 0, 0, 0, 0, after, alen);
  int rc =
      rpc(c, KVDS_OP_LIST, 0, limit > UINT32_MAX ? UINT32_MAX : (uint32_t)limit,
          io_deadline(c));
  if (rc)
    return rc;
  size_t n = c->rh.count, keybytes = 0;
  for (size_t i = 0; i < n; i++)
    keybytes += c->rit[i].klen;
  struct kvds_list *l =
      malloc(sizeof *l + n * sizeof(struct kvds_list_entry) + keybytes + 1);
  if (!l)
    return fail(c, -ENOMEM, "out of memory");
  l->n = n;
  l->more = (c->rh.flags & KVDS_PF_MORE) != 0;
  l->entries = (struct kvds_list_entry *)(l + 1);
  uint8_t *kp = (uint8_t *)(l->entries + n);
  for (size_t i = 0; i < n; i++) {
    const struct kvds_proto_item *it = &c->rit[i];
    memcpy(kp, c->rkey[i], it->klen);
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
  req_begin(c);
  int rc = rpc(c, KVDS_OP_STATS, 0, 0, io_deadline(c));
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
  for (uint32_t i = 0; i < c->rh.count; i++) {
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++) {
      if (strlen(map[k].name) == c->rit[i].klen &&
          memcmp(map[k].name, c->rkey[i], c->rit[i].klen) == 0) {
        memcpy((uint8_t *)&s + map[k].off, &c->rit[i].a, sizeof(uint64_t));
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
  req_begin(c);
  uint64_t deadline = io_deadline(c);
  int64_t id = req_send(c, KVDS_OP_CLUSTER, 0, 0, NULL, 0, deadline);
  int rc = recv_reply(c, id, KVDS_OP_CLUSTER, deadline);
  if (rc) {
    if (c->fd >= 0 && c->rdata_left)
      recv_data(c, NULL, c->rdata_left, deadline);
    return rc;
  }
  uint64_t len = c->rdata_left;
  if (len == 0 || len > CLUSTER_JSON_MAX)
    return broken(c, KVDS_E_PROTO, "cluster reply size");
  char *buf = malloc((size_t)len + 1);
  if (!buf) {
    recv_data(c, NULL, len, deadline);
    return fail(c, -ENOMEM, "out of memory");
  }
  if ((rc = recv_data(c, (uint8_t *)buf, len, deadline))) {
    free(buf);
    return rc;
  }
  buf[len] = 0;
  if (strlen(buf) != len) {
    free(buf);
    return fail(c, KVDS_E_PROTO, "cluster reply holds a NUL byte");
  }
  *json = buf;
  return 0;
}

int kvds_shutdown(kvds_client *c) {
  req_begin(c);
  return rpc(c, KVDS_OP_SHUTDOWN, 0, 0, io_deadline(c));
}

/* ---- cluster ------------------------------------------------------------ */

int kvds_locate(kvds_client *c, const void *key, size_t klen,
                struct kvds_location **out, size_t *n) {
  struct kvds_iov k = {(void *)key, klen};
  int rc = check_key(c, &k);
  if (rc)
    return rc;
  req_begin(c);
  req_item(c, 0, 0, 0, 0, key, klen);
  if ((rc = rpc(c, KVDS_OP_LOCATE, 0, 0, io_deadline(c))))
    return rc;
  /* item 0: the key's status and a = number of owner items after it */
  const struct kvds_proto_item *h = c->rit;
  size_t m = c->rh.count ? c->rh.count - 1 : 0;
  if (!c->rh.count || h->a != m || (h->status && m))
    return broken(c, KVDS_E_PROTO, "locate reply");
  if (h->status && h->status != KVDS_E_NOTFOUND)
    return fail(c, h->status, "locate: %s", kvds_strerror(h->status));
  struct kvds_location *v = m ? calloc(m, sizeof *v) : NULL;
  if (m && !v)
    return fail(c, -ENOMEM, "out of memory");
  for (size_t i = 0; i < m; i++) {
    const struct kvds_proto_item *it = &c->rit[i + 1];
    if (it->klen == 0 || it->klen >= sizeof v->id) {
      free(v);
      return broken(c, KVDS_E_PROTO, "locate reply");
    }
    memcpy(v[i].id, c->rkey[i + 1], it->klen);
    v[i].epoch = it->a;
  }
  *out = v;
  *n = m;
  return 0;
}

int kvds__call(kvds_client *c, uint8_t op, uint16_t flags, uint32_t arg,
               size_t n, const struct kvds_proto_item *its,
               const void *const *keys,
               int (*on_item)(void *ud, size_t i,
                              const struct kvds_proto_item *it,
                              const uint8_t *key),
               void *ud) {
  req_begin(c);
  for (size_t i = 0; i < n; i++)
    req_item(c, its[i].a, its[i].b, its[i].c, its[i].d, keys[i], its[i].klen);
  int rc = rpc(c, op, flags, arg, io_deadline(c));
  if (rc)
    return rc;
  for (uint32_t i = 0; on_item && i < c->rh.count; i++)
    if ((rc = on_item(ud, i, &c->rit[i], c->rkey[i])))
      return rc;
  return 0;
}

int kvds__peer_connect(const char *addr, int timeout_ms,
                       const struct kvds_auth_token *tok, const char *self_id,
                       kvds_client **out) {
  if (!addr || !*addr || !self_id || !*self_id ||
      strlen(self_id) >= sizeof((kvds_client *)0)->peer_id)
    return KVDS_E_INVAL;
  kvds_client *c = client_new(timeout_ms, KVDS_CONNECT_TCP_ONLY);
  if (!c)
    return -ENOMEM;
  snprintf(c->peer_id, sizeof c->peer_id, "%s", self_id);
  uint64_t deadline = io_deadline(c);
  int rc = connect_tcp(addr, &c->fd, deadline);
  c->sock = rc ? -1 : c->fd;
  if (!rc && tok)
    rc = authenticate_with(c, tok, deadline);
  if (!rc)
    rc = hello(c, 0, deadline);
  if (rc) {
    kvds_client_close(c);
    return rc;
  }
  *out = c;
  return 0;
}

int kvds__pull(kvds_client *c, size_t n, const struct kvds_iov *keys,
               int wait_ms, const struct kvds__pull_ops *ops) {
  size_t i = 0;
  int rc = n > KVDS_BATCH_MAX ? KVDS_E_LIMIT : 0;
  uint64_t deadline = read_deadline(c, wait_ms).io;
  struct kvds_proto_item *it = NULL;
  if (!rc) {
    req_begin(c);
    for (size_t k = 0; k < n; k++)
      req_item(c, 0, 0, 0, 0, keys[k].base, keys[k].len);
    int64_t id =
        req_send(c, KVDS_OP_GET, KVDS_PF_INLINE | KVDS_PF_LOCAL,
                 wait_ms > 0 ? (uint32_t)wait_ms : 0, NULL, 0, deadline);
    rc = recv_reply(c, id, KVDS_OP_GET, deadline);
    if (rc && c->fd >= 0 && c->rdata_left) /* a refusal: keep in sync */
      recv_data(c, NULL, c->rdata_left, deadline);
  }
  if (!rc && c->rh.count != n)
    rc = broken(c, KVDS_E_PROTO, "get reply");
  if (!rc && !(it = malloc((n ? n : 1) * sizeof *it)))
    rc = broken(c, -ENOMEM, "get");
  if (!rc) {
    /* Copy the descriptions: receiving data may move the reply buffer. */
    memcpy(it, c->rit, n * sizeof *it);
    if (values_total(it, n, c->rh.data_len) != c->rh.data_len)
      rc = broken(c, KVDS_E_PROTO, "get reply length");
  }
  for (; !rc && i < n; i++) {
    if (it[i].status) {
      ops->done(ops->ud, i, it[i].status, 0);
      continue;
    }
    uint8_t *dst = ops->dst(ops->ud, i, it[i].a);
    if (!dst) {
      if ((rc = recv_data(c, NULL, it[i].a, deadline)))
        break;
      ops->done(ops->ud, i, KVDS_E_STATE, 0);
      continue;
    }
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    if ((rc = recv_data_h(c, dst, it[i].a, &st, deadline)))
      break;
    ops->done(ops->ud, i,
              XXH3_64bits_digest(&st) == it[i].c ? 0 : KVDS_E_CHECKSUM,
              it[i].c);
  }
  for (; rc && i < n; i++)
    ops->done(ops->ud, i, rc, 0);
  free(it);
  return rc;
}

void kvds__client_shutdown(kvds_client *c) {
  /* c->sock stays open until kvds_client_close (broken() only shuts it
   * down), so its number cannot be another socket by now. */
  if (c && c->sock >= 0)
    shutdown(c->sock, SHUT_RDWR);
}

uint64_t kvds__client_nonce(const kvds_client *c) {
  return c->nonce;
}

int kvds__client_stale(const kvds_client *c) {
  if (c->fd < 0 || c->rpos != c->rlen || c->rdata_left || c->nab)
    return 1; /* broken, bytes nobody asked for, or replies still due */
  struct pollfd p = {.fd = c->fd, .events = POLLIN};
  return poll(&p, 1, 0) != 0; /* input, hang-up or error while idle */
}
