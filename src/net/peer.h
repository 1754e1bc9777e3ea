/*
 * peer.h — a worker's connection to a peer worker: TCP, proving the
 * cluster's token, introduced by HELLO as the peer `self_id`; the pulls,
 * directory calls and pins the cluster makes over it. Built on rpc.h (the
 * same framing and handshake as libkvds, not libkvds itself).
 *
 * Conventions as in kvds.h: 0 or a KVDS_E_* / -errno code; every call is
 * bounded by the connection's timeout (kvds_peerconn_set_timeout), counted
 * from the start of the call, plus the wait a pull asks for. An I/O or
 * protocol error or a deadline overrun breaks the connection
 * (kvds_peerconn_is_connected turns 0); a refusal by the peer leaves it
 * usable.
 *
 * Threads: one thread at a time per connection, except
 * kvds_peerconn_shutdown.
 */
#ifndef KVDS_NET_PEER_H
#define KVDS_NET_PEER_H

#include <stddef.h>
#include <stdint.h>

#include "cluster/auth.h"
#include "kvds/kvds.h"
#include "proto/proto.h"

struct kvds_peerconn;

/*
 * Connects over TCP to the peer worker at addr (host:port) within
 * timeout_ms (also the connection's timeout; <= 0: 5000 ms), proving `tok`
 * when it is not NULL, and introduces itself with HELLO as peer self_id
 * (1..255 bytes, else KVDS_E_INVAL). *out is set on success only; close it
 * with kvds_peerconn_close.
 */
int kvds_peerconn_open(const char *addr, int timeout_ms,
                       const struct kvds_auth_token *tok, const char *self_id,
                       struct kvds_peerconn **out);

/* Closes the connection and frees pc. NULL is a no-op. */
void kvds_peerconn_close(struct kvds_peerconn *pc);

/* The I/O timeout of later calls (ms; values <= 0 are ignored). */
void kvds_peerconn_set_timeout(struct kvds_peerconn *pc, int timeout_ms);

/* 1 while the connection works (no error broke it), else 0. */
int kvds_peerconn_is_connected(const struct kvds_peerconn *pc);

/* Whether the peer serves ranged pulls (KVDS_PF_RANGE): it said so in its
 * HELLO. A worker of an older version does not, and refuses the flag. */
int kvds_peerconn_can_range(const struct kvds_peerconn *pc);

/* Whether the peer's pool can be read over UCX: it said so in its HELLO
 * (KVDS_HELLO_FEAT_UCX). */
int kvds_peerconn_can_ucx(const struct kvds_peerconn *pc);

/* UCX_INFO: what the peer's kvds_ucx_info gives (ucx.h), at most `max`
 * bytes, into a malloc'd *blob (the caller frees it) of *len bytes.
 * Errors: the peer's refusal (KVDS_E_STATE: it has no UCX), KVDS_E_PROTO
 * (the items do not add up; the connection is broken), I/O errors. */
int kvds_peerconn_ucx_info(struct kvds_peerconn *pc, size_t max, uint8_t **blob,
                           size_t *len);

/* 1 if an idle connection is no good any more: the peer closed it (or sent
 * something unasked). Never blocks. */
int kvds_peerconn_stale(const struct kvds_peerconn *pc);

/* The peer's instance nonce from HELLO (new on every start). */
uint64_t kvds_peerconn_nonce(const struct kvds_peerconn *pc);

/* Shuts the connection down (any thread) so that a call blocked on it in
 * another thread fails at once; pc is closed as usual by its owner. */
void kvds_peerconn_shutdown(struct kvds_peerconn *pc);

/* Where a pull puts each value (see kvds_peerconn_pull). */
struct kvds_peerconn_pull_ops {
  /* Item i is there: a value of `size` bytes with `checksum`, of which the
   * `len` bytes at offset `off` come now (all of them unless the pull asked
   * for ranges). Return where to receive those len bytes (len bytes of
   * writable memory), or NULL to drop them (done then gets KVDS_E_STATE;
   * dst keeps its own reason). */
  void *(*dst)(void *ud, size_t i, uint64_t size, uint64_t off, uint64_t len,
               uint64_t checksum);
  /* With ranges, for an item that came in part (len < size): the bytes
   * p[0..n) landed, in order, each piece while it is still in cache (the
   * pull cannot hash part of a value: the caller does). */
  void (*landed)(void *ud, size_t i, const void *p, size_t n);
  /* Item i is over: 0 (its bytes are in dst and, for a whole value, match
   * `checksum`; for a part, `landed` saw them all), the peer's error for
   * it, KVDS_E_CHECKSUM (dst holds garbage), or the error that broke the
   * whole request. Called exactly once per item. */
  void (*done)(void *ud, size_t i, int status, uint64_t checksum);
  void *ud;
};

/* A byte range of one value (KVDS_PF_RANGE, proto.h): `len` bytes from
 * `off` (0: to the end), the whole value when it is at most `whole`
 * bytes; a range with off > 0 is of the value whose checksum is
 * `checksum` (else the peer answers KVDS_E_NOTFOUND). */
struct kvds_peerconn_range {
  uint64_t off, len, checksum, whole;
};

/*
 * GET with KVDS_PF_LOCAL of n keys (at most KVDS_BATCH_MAX, else
 * KVDS_E_LIMIT), waiting up to wait_ms on the peer for keys not sealed
 * yet, each value received straight into the memory dst() gives (no
 * staging) and hashed as it arrives. With rg (n ranges), only those bytes
 * of each value come (KVDS_PF_RANGE; a waiting request gets whole values,
 * and a range with an offset never waits): a whole value is verified
 * here, a part is handed to ops->landed. Returns 0 when answered; the
 * peer's refusal of the whole request (the connection stays usable); or
 * an I/O or protocol error (the connection is then broken).
 */
int kvds_peerconn_pull(struct kvds_peerconn *pc, size_t n,
                       const struct kvds_iov *keys, int wait_ms,
                       const struct kvds_peerconn_range *rg,
                       const struct kvds_peerconn_pull_ops *ops);

/*
 * One request of `op` with n items (its[i] with keys[i], its[i].klen
 * bytes) and no data; the reply's items are handed to on_item (in order;
 * a non-zero return stops and is returned; key is valid during the call
 * only). The reply's status, or an I/O error, is returned.
 */
int kvds_peerconn_call(struct kvds_peerconn *pc, uint8_t op, uint16_t flags,
                       uint32_t arg, size_t n,
                       const struct kvds_proto_item *its,
                       const void *const *keys,
                       int (*on_item)(void *ud, size_t i,
                                      const struct kvds_proto_item *it,
                                      const uint8_t *key),
                       void *ud);

/*
 * GET with KVDS_PF_PIN of n keys: as kvds_mget_ex with KVDS_GET_PIN (o's
 * wait_ms, hint and KVDS_GET_LOCAL apply; PIN is implied): the peer pins
 * each value it has, vals[i] gets its size, checksum and handle (data
 * NULL), results[i] 0 or the peer's error. Release with
 * kvds_peerconn_release. With offs (may be NULL), offs[i] gets where
 * value i lies in the peer's pool (its offset from the segment's start:
 * what a UCX read of it asks for). On failure nothing stays pinned.
 */
int kvds_peerconn_pin(struct kvds_peerconn *pc, size_t n,
                      const struct kvds_iov *keys,
                      const struct kvds_get_opts *o, struct kvds_value *vals,
                      int *results, uint64_t *offs);

/* Drops the pins of vals[0..n) (entries with handle 0 are skipped) and
 * zeroes them. Returns 0 (RELEASE has no reply). */
int kvds_peerconn_release(struct kvds_peerconn *pc, size_t n,
                          struct kvds_value *vals);

#endif
