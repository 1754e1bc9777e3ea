/*
 * internal.h — libkvds calls only the worker uses (for its peer
 * connections); not part of the public API, not exported by libkvds.so's
 * header. Same conventions as kvds.h.
 */
#ifndef KVDS_CLIENT_INTERNAL_H
#define KVDS_CLIENT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "cluster/auth.h"
#include "kvds/kvds.h"
#include "proto/proto.h"

/*
 * Connects over TCP to a peer worker at addr (host:port), proving `tok`
 * when it is not NULL (the cluster's token), and introduces itself with
 * HELLO as peer self_id. Never switches to the Unix socket.
 */
int kvds__peer_connect(const char *addr, int timeout_ms,
                       const struct kvds_auth_token *tok, const char *self_id,
                       kvds_client **out);

/* 1 if an idle connection is no good any more: the worker closed it (or
 * sent something unasked). Never blocks. */
int kvds__client_stale(const kvds_client *c);

/* The worker's instance nonce from HELLO (new on every start). */
uint64_t kvds__client_nonce(const kvds_client *c);

/* Shuts the connection's socket down (any thread) so that a call blocked
 * on it in another thread fails at once; the client is closed as usual by
 * its owner. */
void kvds__client_shutdown(kvds_client *c);

/* Where a pull puts each value (see kvds__pull). */
struct kvds__pull_ops {
  /* Item i is there, `size` bytes: return where to receive them (size bytes
   * of writable memory), or NULL to drop them (done then gets
   * KVDS_E_STATE; dst keeps its own reason). */
  void *(*dst)(void *ud, size_t i, uint64_t size);
  /* Item i is over: 0 (its bytes are in dst and match `checksum`), the
   * worker's error for it, KVDS_E_CHECKSUM (dst holds garbage), or the
   * error that broke the whole request. Called exactly once per item. */
  void (*done)(void *ud, size_t i, int status, uint64_t checksum);
  void *ud;
};

/*
 * GET with KVDS_PF_LOCAL of n keys (waiting up to wait_ms on the peer for
 * keys not sealed yet), each value received straight into the memory dst()
 * gives (no staging) and hashed as it arrives. Returns 0 when answered;
 * the worker's refusal of the whole request (the client stays usable); or
 * an I/O or protocol error (the client is then disconnected).
 */
int kvds__pull(kvds_client *c, size_t n, const struct kvds_iov *keys,
               int wait_ms, const struct kvds__pull_ops *ops);

/*
 * One request of `op` with n items (its[i] with keys[i], its[i].klen
 * bytes) and no data; the reply's items are handed to on_item (in order;
 * a non-zero return stops and is returned). The reply's status, or an I/O
 * error, is returned.
 */
int kvds__call(kvds_client *c, uint8_t op, uint16_t flags, uint32_t arg,
               size_t n, const struct kvds_proto_item *its,
               const void *const *keys,
               int (*on_item)(void *ud, size_t i,
                              const struct kvds_proto_item *it,
                              const uint8_t *key),
               void *ud);

#endif
