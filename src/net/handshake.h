/*
 * handshake.h — the first requests on a connection to a worker, written
 * once for libkvds's clients and the worker's peer connections: AUTH (the
 * mutual proof of the cluster's token over TCP) and HELLO (the worker's
 * identity, and its pool over a Unix socket). Errors and messages as in
 * rpc.h.
 */
#ifndef KVDS_NET_HANDSHAKE_H
#define KVDS_NET_HANDSHAKE_H

#include <stdint.h>

#include "cluster/auth.h"
#include "net/rpc.h"

/* Longest peer id a HELLO introduces (bytes, NUL excluded). */
#define KVDS_HELLO_PEER_MAX 255

/* What HELLO learnt about the worker. */
struct kvds_hello {
  uint64_t nonce;      /* the worker's instance nonce (new on every start) */
  char sock_path[256]; /* its Unix socket, "" if none (or too long) */
  int pool_fd;         /* want_shm: its pool's fd (the caller owns it) */
  uint64_t features;   /* KVDS_HELLO_FEAT_* it announced (0: an older one) */
};

/*
 * HELLO: asks for the pool when want_shm (over a Unix socket) and, when
 * peer_id is not NULL, introduces this connection as the peer worker
 * peer_id (at most KVDS_HELLO_PEER_MAX bytes). On success fills *out.
 * KVDS_E_PROTO when the reply is malformed, or when the pool was asked for
 * and did not come ("worker did not pass its pool"; r stays up); else as
 * kvds_rpc_call.
 */
int kvds_handshake_hello(struct kvds_rpc *r, int want_shm, const char *peer_id,
                         struct kvds_hello *out, uint64_t deadline);

/*
 * AUTH with token `tok`: sends our nonce, checks the worker's proof (so
 * nothing else goes to a worker that does not hold the token), then proves
 * the token ourselves. 0, or KVDS_E_AUTH when the worker does not
 * authenticate or either proof is wrong (r is then broken), or an error of
 * the exchange.
 */
int kvds_handshake_auth(struct kvds_rpc *r, const struct kvds_auth_token *tok,
                        uint64_t deadline);

#endif
