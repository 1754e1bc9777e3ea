/*
 * rpc.h — a framed-RPC connection to a worker: kvds frames (proto.h) over a
 * transport (transport.h). Used by libkvds for its clients and by the
 * worker for its connections to peer workers (peer.h).
 *
 * One request is built at a time (kvds_rpc_begin, kvds_rpc_item), sent
 * with its bulk data straight from the caller's iovecs (kvds_rpc_send), and
 * answered by a reply whose header and meta are read into the connection
 * (kvds_rpc_recv_reply: rh, rit[], rkey[]) and whose bulk data is received
 * straight into caller memory (kvds_rpc_recv_data / _recv_hashed), never
 * staged. Several requests may be in flight; replies come in order, except
 * that a waiting GET may be answered after later requests.
 *
 * Errors: every function returning int gives 0 or a KVDS_E_* / -errno
 * code and leaves a message in errmsg (kvds_client_errmsg shows it). Any
 * I/O error, protocol error or deadline overrun leaves the byte stream in
 * an unknown state: the connection then breaks itself (kvds_rpc_is_up
 * turns 0) and later calls fail with KVDS_E_CLOSED.
 *
 * Deadlines are kvds_now_us() values fixed by the caller when its call
 * starts; nothing here restarts the clock.
 *
 * Interrupts (kvds_rpc_set_interrupt): only a wait for a reply header may
 * give up, so the stream is always left at a frame boundary. The request
 * is then abandoned (kvds_rpc_abandon): its reply is discarded on arrival
 * by whichever call reads it, and the pins (GET) or objects (CREATE) it
 * carries are given back to the worker.
 *
 * Not thread-safe, except kvds_rpc_shutdown (see there).
 */
#ifndef KVDS_NET_RPC_H
#define KVDS_NET_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "kvds/kvds.h"
#include "net/transport.h"
#include "proto/proto.h"

/* Requests abandoned by interrupts and not answered yet, at most. */
#define KVDS_RPC_ABANDON_MAX 64

/* kvds_rpc_init flags. */
/* An error shuts the transport down instead of closing it, so its
 * descriptor stays this connection's until kvds_rpc_close and
 * kvds_rpc_shutdown may be called from another thread at any time. */
#define KVDS_RPC_KEEP_FD 0x1u

struct kvds_rpc_abandoned {
  uint64_t id;
  uint8_t op;
};

struct kvds_rpc {
  struct kvds_transport t;
  unsigned flags; /* KVDS_RPC_* */
  int up;         /* connected and at a frame boundary we know */
  uint64_t next_req;
  char errmsg[256]; /* the last error's text */
  /* the request being built */
  struct kvds_proto_builder req;
  int wfail; /* an item could not be added: the request must not go out */
  /* the reply: header + meta buffered in rb, decoded into rh/rit/rkey
   * (valid until the next frame is read) */
  uint8_t *rb;
  size_t rcap, rlen, rpos;
  struct kvds_proto_hdr rh;
  struct kvds_proto_item *rit;
  const uint8_t **rkey;
  uint32_t ritcap;
  uint64_t rdata_left; /* bulk data of the reply not read yet */
  /* interrupts */
  int (*intr_fn)(void *ud);
  void *intr_ud;
  int intr_ok; /* the wait under way may be interrupted */
  uint32_t nab;
  struct kvds_rpc_abandoned ab[KVDS_RPC_ABANDON_MAX];
};

/* A closed connection; allocates nothing. */
void kvds_rpc_init(struct kvds_rpc *r, unsigned flags);

/* Connects with the transport `ops` to addr before the deadline. 0,
 * KVDS_E_ADDR, KVDS_E_TIMEOUT or -errno (no message). */
int kvds_rpc_connect(struct kvds_rpc *r, const struct kvds_transport_ops *ops,
                     const char *addr, uint64_t deadline);

/* Takes fd, a connected socket of the kind `ops` handles. 0 or -errno (fd
 * is then still the caller's). */
int kvds_rpc_adopt(struct kvds_rpc *r, const struct kvds_transport_ops *ops,
                   int fd);

/* Closes the transport and frees the buffers; r is then as after
 * kvds_rpc_init. */
void kvds_rpc_close(struct kvds_rpc *r);

/* 1 while connected and in step, else 0. */
static inline int kvds_rpc_is_up(const struct kvds_rpc *r) {
  return r->up;
}

/* The hook asked while waiting for a reply (NULL: none). */
void kvds_rpc_set_interrupt(struct kvds_rpc *r, int (*fn)(void *ud), void *ud);

/* Ends the stream (any thread, only with KVDS_RPC_KEEP_FD) so that a call
 * blocked on it in another thread fails at once; r is closed as usual by
 * its owner. */
void kvds_rpc_shutdown(struct kvds_rpc *r);

/* 1 if an idle connection is no good any more: broken, bytes nobody asked
 * for, replies still due, or the worker closed it. Never blocks. */
int kvds_rpc_stale(const struct kvds_rpc *r);

/* The first descriptor the worker passed since the last call (Unix
 * socket; the caller owns it), or -1. */
int kvds_rpc_take_fd(struct kvds_rpc *r);

/* Formats errmsg; returns rc. */
int kvds_rpc_fail(struct kvds_rpc *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The stream is out of sync: breaks the connection, errmsg "<what>: <rc's
 * text> (disconnected)"; returns rc. */
int kvds_rpc_broken(struct kvds_rpc *r, int rc, const char *what);

/* ---- requests ------------------------------------------------------------ */

/* Starts a new request (no items). */
void kvds_rpc_begin(struct kvds_rpc *r);

/* Appends an item (klen bytes of key, at most KVDS_KEY_MAX). 0,
 * KVDS_E_KEYLEN or -ENOMEM; a failure makes kvds_rpc_send refuse the
 * request, so callers may add items without checking each one. */
int kvds_rpc_item(struct kvds_rpc *r, uint64_t a, uint64_t b, uint64_t c,
                  uint64_t d, const void *key, size_t klen);

/* Items added to the request being built. */
static inline uint32_t kvds_rpc_count(const struct kvds_rpc *r) {
  return r->req.count;
}

/*
 * Sends the request built, of `op`, then the ndata iovecs of bulk data
 * (data_len is their sum; they are sent from where they are). Returns the
 * request id (> 0); KVDS_E_CLOSED when not connected; the item failure;
 * KVDS_E_LIMIT when the meta is over KVDS_PROTO_META_MAX; or an I/O error
 * (the connection is then broken).
 */
int64_t kvds_rpc_send(struct kvds_rpc *r, uint8_t op, uint16_t flags,
                      uint32_t arg, const struct iovec *data, int ndata,
                      uint64_t deadline);

/* ---- replies ------------------------------------------------------------- */

/*
 * Reads the reply to request `id` (op; an id < 0 is a failed send, returned
 * as is), discarding on the way the replies of abandoned requests. Header
 * and meta are decoded into rh, rit[] and rkey[] (valid until the next
 * frame); the bulk data (rdata_left bytes) is left for kvds_rpc_recv_data.
 * Returns the reply's status (errmsg "worker: <text>"); KVDS_E_INTR (the
 * interrupt hook gave up: the request is abandoned, r still up); or an
 * error after which r is broken.
 */
int kvds_rpc_recv_reply(struct kvds_rpc *r, int64_t id, uint8_t op,
                        uint64_t deadline);

/* Receives `len` bytes of the reply's data into dst (NULL: discards them).
 * 0 or an error after which r is broken. */
int kvds_rpc_recv_data(struct kvds_rpc *r, void *dst, uint64_t len,
                       uint64_t deadline);

/* Receives `len` bytes into dst as kvds_rpc_recv_data does, hashing them
 * piece by piece as they arrive (while each piece is still in cache): on
 * success *sum is kvds_checksum() of the bytes. */
int kvds_rpc_recv_hashed(struct kvds_rpc *r, void *dst, uint64_t len,
                         uint64_t *sum, uint64_t deadline);

/* Sends the request built (no data) and reads its reply header and meta,
 * discarding any data the reply carries. The reply's status or an error. */
int kvds_rpc_call(struct kvds_rpc *r, uint8_t op, uint16_t flags, uint32_t arg,
                  uint64_t deadline);

/* Gives request `id` (op) up: its reply is discarded when it comes.
 * Returns KVDS_E_INTR; r is broken when too many replies are outstanding
 * already. */
int kvds_rpc_abandon(struct kvds_rpc *r, int64_t id, uint8_t op);

/* ---- helpers of the kvds operations ---------------------------------------
 */

/* KVDS_E_KEYLEN (with its message) unless every key is 1..KVDS_KEY_MAX
 * bytes. */
int kvds_rpc_check_keys(struct kvds_rpc *r, size_t n,
                        const struct kvds_iov *keys);

/* Sends RELEASE (no reply) for handles[0..n), in batches, while r is up. */
void kvds_rpc_release(struct kvds_rpc *r, const uint64_t *handles, size_t n,
                      uint64_t deadline);

/* Sum of the sizes (a) of the found items of a GET reply, or max + 1 as
 * soon as it passes max (sizes come from the worker: they must not wrap). */
uint64_t kvds_rpc_values_total(const struct kvds_proto_item *it, size_t n,
                               uint64_t max);

/* The deadlines of a read: its wait for keys ends at `wait`, the whole call
 * at `io` (the I/O timeout later). */
struct kvds_rpc_deadline {
  uint64_t wait, io;
};

/* The deadlines of a read starting now. */
struct kvds_rpc_deadline kvds_rpc_read_deadline(int timeout_ms, int wait_ms);

/* The wait (ms) of the read's next request: what is left of it, and at
 * least 1 ms once one was asked for (0 would answer NOTFOUND, not
 * TIMEOUT). */
uint32_t kvds_rpc_wait_left(const struct kvds_rpc_deadline *d, int wait_ms);

#endif
