/*
 * conn.c — one client connection of the worker: reads frames (header, meta,
 * then bulk data straight into pool memory), queues replies (owned buffers
 * and pinned pool ranges, sent with writev), and keeps the connection's
 * handle table of pins and objects being written.
 */
#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/hash.h"
#include "common/util.h"
#include "kvds/kvds.h"
#include "worker/cluster/cluster.h"
#include "worker/server.h"

enum { RX_HDR, RX_META, RX_DATA };

#define IBUF_SIZE (64u << 10)
/* The input buffer of a TCP connection that has not authenticated yet: an
 * AUTH frame is at most a header and AUTH_META_MAX bytes of meta. It grows
 * to IBUF_SIZE once the connection authenticated. */
#define IBUF_AUTH_SIZE (4u << 10)
/* Longest wait for a TCP connection to authenticate (or the frame timeout
 * if that is shorter): each costs a socket and a buffer until then. */
#define AUTH_WAIT_MAX_MS 5000u
/* Stop reading while this much reply data waits in memory. */
#define OQ_PAUSE_BYTES (32ull << 20)
/* Largest meta block accepted before the connection authenticated (an AUTH
 * request needs about 80 bytes). */
#define AUTH_META_MAX 1024u
/* Bulk data at least this large is read straight into its destination. */
#define DIRECT_RX_MIN (32u << 10)
#define MAX_IOV 64
#define DISCARD_SIZE (64u << 10)
/* Bulk bytes one connection may read per turn of the event loop. */
#define DATA_BUDGET (8u << 20)
/* Longest wait for the first request of a connection refused at
 * --max-connections (or the frame timeout if that is shorter). */
#define REFUSE_WAIT_MAX_MS 1000u

static void on_read(evutil_socket_t fd, short what, void *arg);
static void on_write(evutil_socket_t fd, short what, void *arg);

static void set_reading(struct conn *c, int on) {
  if (on && !c->reading) {
    event_add(c->rev, NULL);
    /* Paused by us (output backpressure): the rate window starts again. */
    if (c->rx_win_us) {
      c->rx_win_us = kvds_now_us();
      c->rx_win_bytes = 0;
    }
  } else if (!on && c->reading) {
    event_del(c->rev);
  }
  c->reading = (uint8_t)on;
}

/* ---- idleness ----------------------------------------------------------- */

enum { IDLE_NONE, IDLE_FRESH, IDLE_USED };

/* Holds something a client may come back for: pins, objects being written
 * (a PUT in flight included), waiting requests. */
static int conn_holds(const struct conn *c) {
  return c->nheld || c->npending || c->waits;
}

/* Holds nothing and has nothing in progress: may be closed as idle. */
static int conn_idle(const struct conn *c) {
  return !c->closing && !c->refusing && !conn_holds(c) && c->rx == RX_HDR &&
         c->ilen == c->ipos && !c->oq_head;
}

/* Keeps th->idle_fresh / idle_used (read by other threads) in step with c,
 * ignoring what is only in progress for a moment (a frame, output). */
static void idle_publish(struct conn *c, int gone) {
  struct io_thread *th = c->th;
  uint8_t k = (gone || c->closing || c->refusing || conn_holds(c)) ? IDLE_NONE
              : c->nreq                                            ? IDLE_USED
                                                                   : IDLE_FRESH;
  if (k == c->idle_class)
    return;
  if (c->idle_class == IDLE_FRESH)
    atomic_fetch_sub(&th->idle_fresh, 1);
  else if (c->idle_class == IDLE_USED)
    atomic_fetch_sub(&th->idle_used, 1);
  if (k == IDLE_FRESH)
    atomic_fetch_add(&th->idle_fresh, 1);
  else if (k == IDLE_USED)
    atomic_fetch_add(&th->idle_used, 1);
  c->idle_class = k;
}

static void conn_unlink(struct conn *c) {
  struct io_thread *th = c->th;
  if (c->prev)
    c->prev->next = c->next;
  else
    th->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  else
    th->conns_tail = c->prev;
  c->prev = c->next = NULL;
}

static void conn_link_head(struct conn *c) {
  struct io_thread *th = c->th;
  c->prev = NULL;
  c->next = th->conns;
  if (th->conns)
    th->conns->prev = c;
  else
    th->conns_tail = c;
  th->conns = c;
}

/* c moved bytes: most recently active now. */
static void touch(struct conn *c, uint64_t now) {
  c->active_us = now;
  if (c->th->conns != c) {
    conn_unlink(c);
    conn_link_head(c);
  }
}

struct conn *kvds__conn_victim(struct io_thread *th) {
  struct conn *used = NULL;
  for (struct conn *c = th->conns_tail; c; c = c->prev) {
    if (!conn_idle(c))
      continue;
    if (!c->nreq)
      return c;
    if (!used)
      used = c;
  }
  return used;
}

struct conn *kvds__conn_new(struct io_thread *th, int fd, int is_unix,
                            int refuse) {
  struct conn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->th = th;
  c->fd = fd;
  c->is_unix = (uint8_t)is_unix;
  /* The owner's (root's, --allow-group's) Unix and token-less loopback
   * TCP connections may go on; TCP with a token set, and anyone else, must
   * prove the token first (refused where there is none). */
  struct kvds_server *srv = th->srv;
  int allowed = 1;
  if (!refuse && (is_unix || !srv->auth)) {
    uid_t uid = (uid_t)-1;
    int r = kvds__peer_uid(fd, is_unix, &uid);
    allowed = r == 0 && kvds__uid_allowed(&srv->access, uid);
    if (!allowed) {
      /* counted always, logged at most every 10 s */
      static atomic_uint_fast64_t last_log_us;
      uint64_t now = kvds_now_us(), last = atomic_load(&last_log_us);
      atomic_fetch_add(&srv->access_refused, 1);
      char who[64];
      if (r)
        snprintf(who, sizeof who, "an unknown user (%s)", kvds_strerror(r));
      else
        snprintf(who, sizeof who, "uid %u", (unsigned)uid);
      if (now - last > 10000000u &&
          atomic_compare_exchange_strong(&last_log_us, &last, now))
        kvds__logf(1,
                   "refused a %s connection from %s: not this worker's "
                   "user%s%s",
                   is_unix ? "Unix" : "TCP", who,
                   srv->access.has_group ? " nor in --allow-group" : "",
                   srv->auth ? " (it may still prove the token)" : "");
    }
  }
  c->authed = (uint8_t)(allowed && !refuse && (is_unix || !srv->auth));
  c->refusing = (uint8_t)refuse;
  c->active_us = kvds_now_us();
  if (!c->authed) {
    /* Refused at the cap, or not authenticated yet: a small buffer, and
     * closed by the sweep if the request does not come in time. */
    uint64_t wait_ms = (uint64_t)th->srv->cfg.frame_timeout_ms;
    uint64_t max_ms = refuse ? REFUSE_WAIT_MAX_MS : AUTH_WAIT_MAX_MS;
    if (wait_ms > max_ms)
      wait_ms = max_ms;
    c->auth_deadline_us = kvds_deadline_after(c->active_us, (int64_t)wait_ms);
  }
  c->icap = c->authed ? IBUF_SIZE : IBUF_AUTH_SIZE;
  c->ib = malloc(c->icap);
  c->rev = event_new(th->base, fd, EV_READ | EV_PERSIST, on_read, c);
  c->wev = event_new(th->base, fd, EV_WRITE | EV_PERSIST, on_write, c);
  c->free_ref = UINT32_MAX;
  if (!c->ib || !c->rev || !c->wev) {
    free(c->ib);
    if (c->rev)
      event_free(c->rev);
    if (c->wev)
      event_free(c->wev);
    free(c);
    return NULL;
  }
  conn_link_head(c);
  if (!is_unix)
    atomic_fetch_add(&th->ntcp, 1);
  if (refuse) {
    atomic_fetch_add(&srv->refusing, 1);
  } else {
    atomic_fetch_add(&srv->connections, 1);
    atomic_fetch_add(&srv->connections_total, 1);
  }
  idle_publish(c, 0);
  set_reading(c, 1);
  return c;
}

/* ---- handle table ------------------------------------------------------- */

uint64_t kvds__ref_add(struct conn *c, struct kvds_object *o, int kind) {
  uint32_t i;
  if (c->free_ref != UINT32_MAX) {
    i = c->free_ref;
    c->free_ref = c->refs[i].next_free;
  } else {
    if (c->nrefs == c->caprefs) {
      uint32_t nc = c->caprefs ? c->caprefs * 2 : 64;
      struct ref *nr = realloc(c->refs, nc * sizeof *nr);
      if (!nr)
        return 0;
      c->refs = nr;
      c->caprefs = nc;
    }
    i = c->nrefs++;
    c->refs[i].gen = 0;
  }
  struct ref *r = &c->refs[i];
  c->nheld++;
  r->obj = o;
  r->kind = (uint8_t)kind;
  r->gen++;
  if (r->gen == 0)
    r->gen = 1;
  return ((uint64_t)r->gen << 32) | (uint64_t)(i + 1);
}

struct ref *kvds__ref_get(struct conn *c, uint64_t handle, int kind) {
  uint64_t i = (handle & 0xffffffffu);
  if (i == 0 || i > c->nrefs)
    return NULL;
  struct ref *r = &c->refs[i - 1];
  if (r->kind != kind || r->gen != (uint32_t)(handle >> 32))
    return NULL;
  return r;
}

void kvds__ref_drop(struct conn *c, struct ref *r) {
  c->nheld--;
  r->obj = NULL;
  r->kind = REF_NONE;
  r->next_free = c->free_ref;
  c->free_ref = (uint32_t)(r - c->refs);
}

/* ---- output ------------------------------------------------------------- */

int kvds__conn_queue(struct conn *c, const uint8_t *p, size_t len, uint8_t *own,
                     struct kvds_object *pin, int send_fd) {
  struct ochunk *k = malloc(sizeof *k);
  if (!k) {
    free(own);
    if (pin) {
      struct kvds_store *st = &c->th->srv->store;
      pthread_mutex_lock(&st->lock);
      kvds_store_unpin(st, pin);
      pthread_mutex_unlock(&st->lock);
    }
    c->closing = 1;
    return -ENOMEM;
  }
  *k = (struct ochunk){
      .p = p, .len = len, .own = own, .pin = pin, .send_fd = send_fd};
  if (c->oq_tail)
    c->oq_tail->next = k;
  else
    c->oq_head = k;
  c->oq_tail = k;
  /* Pinned pool ranges count too: they hold pool space until sent. */
  c->oq_bytes += len;
  if (!c->tx_since_us)
    c->tx_since_us = kvds_now_us();
  if (!c->tx_win_us)
    c->tx_win_us = c->tx_since_us;
  return 0;
}

/* Frees sent chunks; pins are released under one lock acquisition. */
static void chunks_free(struct conn *c, struct ochunk *k, struct ochunk *end) {
  struct kvds_store *st = &c->th->srv->store;
  int locked = 0;
  while (k != end) {
    struct ochunk *next = k->next;
    c->oq_bytes -= k->len;
    free(k->own);
    if (k->pin) {
      if (!locked) {
        pthread_mutex_lock(&st->lock);
        locked = 1;
      }
      kvds_store_unpin(st, k->pin);
    }
    free(k);
    k = next;
  }
  if (locked)
    pthread_mutex_unlock(&st->lock);
}

static ssize_t send_with_fd(struct conn *c, struct ochunk *k) {
  struct iovec iov = {(void *)(k->p + k->off), k->len - k->off};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  memset(&u, 0, sizeof u);
  mh.msg_control = u.buf;
  mh.msg_controllen = sizeof u.buf;
  struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &k->send_fd, sizeof(int));
  ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
  if (n > 0)
    k->send_fd = -1; /* the fd rides on the first byte only */
  return n;
}

void kvds__conn_flush(struct conn *c) {
  struct kvds_server *s = c->th->srv;
  while (c->oq_head) {
    struct iovec iov[MAX_IOV];
    int n = 0;
    ssize_t w;
    if (c->oq_head->send_fd >= 0) {
      w = send_with_fd(c, c->oq_head);
    } else {
      for (struct ochunk *k = c->oq_head; k && n < MAX_IOV; k = k->next) {
        if (k->send_fd >= 0)
          break;
        iov[n].iov_base = (void *)(k->p + k->off);
        iov[n].iov_len = k->len - k->off;
        n++;
      }
      struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
      w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
    }
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!c->writing) {
          event_add(c->wev, NULL);
          c->writing = 1;
        }
        idle_publish(c, 0);
        return;
      }
      kvds__conn_close(c);
      return;
    }
    atomic_fetch_add(&s->bytes_out, (uint64_t)w);
    if (c->peer)
      kvds__peer_count_out(c->peer, (uint64_t)w);
    c->tx_since_us = kvds_now_us();
    c->tx_win_bytes += (uint64_t)w;
    touch(c, c->tx_since_us);
    size_t left = (size_t)w;
    struct ochunk *k = c->oq_head;
    while (k && left >= k->len - k->off) {
      left -= k->len - k->off;
      k->off = k->len;
      k = k->next;
    }
    if (k)
      k->off += left;
    struct ochunk *done = c->oq_head;
    c->oq_head = k;
    if (!k)
      c->oq_tail = NULL;
    chunks_free(c, done, k);
  }
  c->tx_since_us = 0;
  c->tx_win_us = c->tx_win_bytes = 0;
  if (c->writing) {
    event_del(c->wev);
    c->writing = 0;
  }
  if (c->closing) {
    kvds__conn_close(c);
    return;
  }
  if (!c->reading) {
    set_reading(c, 1);
    /* Frames may already sit in the buffer: no read event would come for
     * them, so run the read callback now. */
    if (c->ilen > c->ipos)
      event_active(c->rev, EV_READ, 0);
  }
  idle_publish(c, 0);
}

/* ---- input -------------------------------------------------------------- */

/* Makes room for `need` contiguous bytes at ib[ipos..). Returns 0 or
 * -ENOMEM. */
static int ib_reserve(struct conn *c, size_t need) {
  if (c->ipos > 0 && c->icap - c->ipos < need) {
    memmove(c->ib, c->ib + c->ipos, c->ilen - c->ipos);
    c->ilen -= c->ipos;
    c->ipos = 0;
  }
  if (c->icap < need) {
    uint8_t *nb = realloc(c->ib, need);
    if (!nb)
      return -ENOMEM;
    c->ib = nb;
    c->icap = need;
  }
  return 0;
}

/* Reads more bytes into ib. Returns bytes read, 0 on EAGAIN, -1 when the
 * connection is gone. */
static ssize_t ib_fill(struct conn *c) {
  /* Authenticated since it was accepted with the small buffer: grow it (on
   * failure the small one still works). */
  if (c->authed && c->icap < IBUF_SIZE)
    (void)ib_reserve(c, IBUF_SIZE);
  if (c->ipos == c->ilen) {
    c->ipos = c->ilen = 0;
    if (c->icap > IBUF_SIZE) { /* a large meta block passed: give it back */
      uint8_t *nb = realloc(c->ib, IBUF_SIZE);
      if (nb) {
        c->ib = nb;
        c->icap = IBUF_SIZE;
      }
    }
  }
  if (c->ilen == c->icap) {
    if (ib_reserve(c, c->icap - c->ipos + 1) || c->ilen == c->icap)
      return -1;
  }
  for (;;) {
    ssize_t n = recv(c->fd, c->ib + c->ilen, c->icap - c->ilen, 0);
    if (n > 0) {
      c->ilen += (size_t)n;
      c->rx_win_bytes += (uint64_t)n;
      atomic_fetch_add(&c->th->srv->bytes_in, (uint64_t)n);
      return n;
    }
    if (n == 0)
      return -1;
    if (errno == EINTR)
      continue;
    return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
  }
}

/* Steps past segments that are complete (also zero-length ones). */
static void segs_skip_done(struct conn *c) {
  while (c->seg < c->nsegs && c->seg_off == c->segs[c->seg].len) {
    c->seg++;
    c->seg_off = 0;
  }
}

/* Counts `step` bytes that just landed in the current segment at seg_off
 * (hashing them first when the connection hashes its segments) and moves
 * to the next segment when this one is complete. */
static void seg_took(struct conn *c, uint64_t step) {
  struct rx_seg *sg = &c->segs[c->seg];
  if (c->hash_rx && sg->p) {
    if (c->seg_off == 0)
      kvds_hash_reset(c->rx_hash);
    kvds_hash_update(c->rx_hash, sg->p + c->seg_off, (size_t)step);
    if (c->seg_off + step == sg->len) {
      sg->sum = kvds_hash_digest(c->rx_hash);
      sg->summed = 1;
    }
  }
  c->seg_off += step;
  c->data_left -= step;
  if (c->seg_off == sg->len) {
    c->seg++;
    c->seg_off = 0;
  }
}

/* Copies buffered bytes into the current data segments. */
static void data_from_ib(struct conn *c) {
  while (c->data_left && c->ipos < c->ilen) {
    segs_skip_done(c);
    struct rx_seg *sg = &c->segs[c->seg];
    uint64_t want = sg->len - c->seg_off;
    size_t take = c->ilen - c->ipos;
    if (take > want)
      take = (size_t)want;
    if (sg->p)
      memcpy(sg->p + c->seg_off, c->ib + c->ipos, take);
    c->ipos += take;
    seg_took(c, take);
  }
}

/* Reads bulk data straight into the segments. Returns as ib_fill. When the
 * segments are hashed, one read takes at most HASH_RX_MAX bytes, so what it
 * brought is still in cache when it is hashed. */
#define HASH_RX_MAX (512u << 10)
static ssize_t data_direct(struct conn *c) {
  struct iovec iov[MAX_IOV];
  int n = 0;
  uint64_t room = c->hash_rx ? HASH_RX_MAX : UINT64_MAX;
  segs_skip_done(c);
  for (uint32_t i = c->seg; i < c->nsegs && n < MAX_IOV && room; i++) {
    uint64_t off = i == c->seg ? c->seg_off : 0;
    uint64_t len = c->segs[i].len - off;
    if (len == 0)
      continue;
    if (len > room)
      len = room;
    room -= len;
    if (!c->segs[i].p) {
      /* The discard buffer can back one iovec only. */
      iov[n].iov_base = c->th->discard;
      iov[n].iov_len = len > DISCARD_SIZE ? DISCARD_SIZE : (size_t)len;
      n++;
      break;
    }
    iov[n].iov_base = c->segs[i].p + off;
    iov[n].iov_len = (size_t)len;
    n++;
  }
  if (n == 0)
    return 0;
  for (;;) {
    ssize_t r = readv(c->fd, iov, n);
    if (r > 0) {
      atomic_fetch_add(&c->th->srv->bytes_in, (uint64_t)r);
      c->rx_win_bytes += (uint64_t)r;
      uint64_t left = (uint64_t)r;
      while (left) {
        segs_skip_done(c);
        struct rx_seg *sg = &c->segs[c->seg];
        uint64_t step = sg->len - c->seg_off;
        if (step > left)
          step = left;
        seg_took(c, step);
        left -= step;
      }
      segs_skip_done(c);
      return r;
    }
    if (r == 0)
      return -1;
    if (errno == EINTR)
      continue;
    return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
  }
}

static void protocol_error(struct conn *c, int err) {
  atomic_fetch_add(&c->th->srv->protocol_errors, 1);
  kvds__reply_status(c, c->h.opcode, c->h.req_id, err);
  c->closing = 1;
  set_reading(c, 0);
}

/* Parses and runs as many complete frames as are buffered. Returns 0 to keep
 * going, 1 when the connection is closing (flush, then it closes), 2 when it
 * used its bulk-data budget for this turn, -1 when it was closed and freed. */
static int process(struct conn *c) {
  for (;;) {
    if (c->closing)
      return 1;
    if (c->rx == RX_HDR) {
      if (c->ilen - c->ipos < KVDS_PROTO_HDR_LEN)
        return 0;
      /* Output backpressure: leave further frames in the buffer until the
       * client has read what it was sent (flush resumes us). */
      if (c->oq_bytes > OQ_PAUSE_BYTES) {
        set_reading(c, 0);
        return 0;
      }
      memcpy(c->hraw, c->ib + c->ipos, KVDS_PROTO_HDR_LEN);
      struct kvds_proto_hdr h;
      int rc = kvds_proto_hdr_decode(c->hraw, KVDS_PROTO_HDR_LEN, &h);
      if (rc && rc != KVDS_E_BADOP) {
        /* Answer with the request's id when its magic says it is ours. */
        int ours = kvds_get_u32(c->hraw) == KVDS_PROTO_MAGIC;
        c->h = (struct kvds_proto_hdr){
            .opcode = ours ? c->hraw[5] : 0,
            .req_id = ours ? kvds_get_u64(c->hraw + 8) : 0};
        protocol_error(c, rc);
        return 1;
      }
      c->h = h;
      /* Over --max-connections with nothing idle to close: the first
       * request learns why (its id echoed), then the connection goes. */
      if (c->refusing) {
        kvds__reply_status(c, c->h.opcode, c->h.req_id, KVDS_E_LIMIT);
        c->closing = 1;
        set_reading(c, 0);
        return 1;
      }
      if (rc) {
        protocol_error(c, rc);
        return 1;
      }
      if (c->h.flags & KVDS_PF_REPLY) {
        protocol_error(c, KVDS_E_PROTO);
        return 1;
      }
      /* Until it proved the token, a TCP connection may only authenticate
       * (small frames): anything else is refused and the connection closed
       * (counted in auth_failures when it closes). */
      if (!c->authed && (c->h.opcode != KVDS_OP_AUTH ||
                         c->h.meta_len > AUTH_META_MAX || c->h.data_len)) {
        kvds__reply_status(c, c->h.opcode, c->h.req_id, KVDS_E_AUTH);
        c->closing = 1;
        set_reading(c, 0);
        return 1;
      }
      c->ipos += KVDS_PROTO_HDR_LEN;
      c->rx = RX_META;
    }
    if (c->rx == RX_META) {
      size_t ml = c->h.meta_len;
      if (c->ilen - c->ipos < ml) {
        if (c->icap - c->ipos < ml && ib_reserve(c, ml)) {
          protocol_error(c, -ENOMEM);
          return 1;
        }
        return 0;
      }
      const uint8_t *meta = c->ib + c->ipos;
      int rc = kvds_proto_verify(c->hraw, meta, ml);
      if (!rc)
        rc = kvds_proto_meta_validate(meta, ml, c->h.count);
      if (rc) {
        protocol_error(c, rc);
        return 1;
      }
      c->ipos += ml;
      c->nreq++;
      atomic_fetch_add(&c->th->srv->requests, 1);
      rc = kvds__server_request(c, meta);
      if (rc < 0) {
        protocol_error(c, rc);
        return 1;
      }
      if (rc == 0) {
        c->rx = RX_HDR;
        continue;
      }
      c->rx = RX_DATA;
    }
    /* RX_DATA */
    data_from_ib(c);
    uint64_t budget = DATA_BUDGET;
    while (c->data_left) {
      ssize_t r;
      if (c->data_left >= DIRECT_RX_MIN)
        r = data_direct(c);
      else if ((r = ib_fill(c)) > 0)
        data_from_ib(c);
      if (r < 0) {
        kvds__conn_close(c);
        return -1;
      }
      if (r == 0)
        return 0;
      /* A huge value must not keep this thread from its other connections:
       * yield, and be called again next turn (also when the rest is already
       * buffered and the socket itself stays quiet). */
      if ((uint64_t)r >= budget && c->data_left) {
        event_active(c->rev, EV_READ, 0);
        return 2;
      }
      budget -= (uint64_t)r < budget ? (uint64_t)r : budget;
    }
    c->rx = RX_HDR;
    kvds__server_data_done(c);
  }
}

/* A frame is incomplete when data is pending or unparsed bytes remain. Its
 * --min-rate window opens with it (counting the bytes of the read that
 * started it) and closes when no frame is in progress. */
static void note_progress(struct conn *c, uint64_t now) {
  int partial = c->rx != RX_HDR || c->ilen > c->ipos;
  c->rx_since_us = partial ? now : 0;
  if (!partial)
    c->rx_win_us = c->rx_win_bytes = 0;
  else if (!c->rx_win_us)
    c->rx_win_us = now;
}

/* A transfer in progress since *since (0: none) must move `rate` bytes per
 * second over each window of `win` us; a window that did starts the next.
 * Returns the rate of a window that fell short (bytes/s), else 0. */
static uint64_t too_slow(uint64_t *since, uint64_t *bytes, uint64_t now,
                         uint64_t win, uint64_t rate) {
  if (!rate || !*since || now - *since < win)
    return 0;
  double secs = (double)(now - *since) / 1e6;
  if ((double)*bytes < (double)rate * secs)
    return (uint64_t)((double)*bytes / secs) + 1;
  *since = now;
  *bytes = 0;
  return 0;
}

void kvds__conn_sweep(struct io_thread *th, uint64_t now_us) {
  struct kvds_server *s = th->srv;
  uint64_t limit = (uint64_t)s->cfg.frame_timeout_ms * 1000u;
  uint64_t idle = (uint64_t)s->cfg.idle_timeout_s * 1000000u;
  uint64_t rate = s->cfg.min_rate;
  struct conn *c = th->conns, *next;
  for (; c; c = next) {
    next = c->next;
    if (!c->authed && now_us > c->auth_deadline_us) {
      /* never authenticated (auth_failures), or refused at the cap */
      kvds__conn_close(c);
      continue;
    }
    int stalled = (c->rx_since_us && now_us - c->rx_since_us > limit) ||
                  (c->tx_since_us && now_us - c->tx_since_us > limit);
    uint64_t slow = 0;
    if (!stalled && c->reading)
      slow = too_slow(&c->rx_win_us, &c->rx_win_bytes, now_us, limit, rate);
    if (!stalled && !slow)
      slow = too_slow(&c->tx_win_us, &c->tx_win_bytes, now_us, limit, rate);
    if (stalled || slow) {
      /* Its WRITING objects are aborted, its pins released by the close. */
      atomic_fetch_add(&s->protocol_errors, 1);
      atomic_fetch_add(&s->closed_slow, 1);
      if (slow && now_us - th->limit_log_us > 10000000u) {
        th->limit_log_us = now_us;
        kvds__logf(1,
                   "closed a connection moving %llu bytes/s, under "
                   "--min-rate %llu",
                   (unsigned long long)slow, (unsigned long long)rate);
      }
      kvds__conn_close(c);
      continue;
    }
    if (idle && conn_idle(c) && now_us - c->active_us > idle) {
      atomic_fetch_add(&s->closed_idle, 1);
      kvds__conn_close(c);
    }
  }
}

static void on_read(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  (void)fd;
  (void)what;
  uint64_t now = kvds_now_us();
  c->th->last_activity_us = now;
  touch(c, now);
  int r = 0;
  if (c->rx == RX_DATA && (r = process(c)) < 0)
    return; /* closed and freed */
  note_progress(c, now);
  /* Bounded: a client that streams forever still lets others run. */
  for (int rounds = 0; r == 0 && rounds < 16; rounds++) {
    ssize_t n = ib_fill(c);
    if (n < 0) {
      kvds__conn_close(c);
      return;
    }
    if ((r = process(c)) < 0)
      return; /* closed and freed */
    note_progress(c, now);
    if (n == 0 || !c->reading)
      break;
  }
  kvds__conn_flush(c);
}

static void on_write(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  (void)fd;
  (void)what;
  c->th->last_activity_us = kvds_now_us();
  kvds__conn_flush(c);
}

void kvds__conn_close(struct conn *c) {
  struct io_thread *th = c->th;
  struct kvds_store *st = &th->srv->store;
  event_free(c->rev);
  event_free(c->wev);
  close(c->fd);
  pthread_mutex_lock(&st->lock);
  kvds_wait_cancel_all_locked(st, &c->waits);
  for (uint32_t i = 0; i < c->nrefs; i++) {
    struct ref *r = &c->refs[i];
    if (r->kind == REF_PIN)
      kvds_store_unpin(st, r->obj);
    else if (r->kind == REF_WRITER)
      kvds_store_abort(st, r->obj);
  }
  for (uint32_t i = 0; i < c->npending; i++)
    if (c->pending[i])
      kvds_store_abort(st, c->pending[i]);
  pthread_mutex_unlock(&st->lock);
  chunks_free(c, c->oq_head, NULL);
  idle_publish(c, 1);
  conn_unlink(c);
  if (!c->is_unix)
    atomic_fetch_sub(&th->ntcp, 1);
  if (c->refusing) {
    atomic_fetch_sub(&th->srv->refusing, 1);
  } else {
    atomic_fetch_sub(&th->srv->connections, 1);
    if (!c->authed && !atomic_load(&th->srv->stopping))
      atomic_fetch_add(&th->srv->auth_failures, 1);
  }
  free(c->refs);
  free(c->segs);
  free(c->rx_hash);
  free(c->pending);
  free(c->pstatus);
  free(c->meta);
  free(c->ib);
  free(c->peer_name);
  free(c);
}
