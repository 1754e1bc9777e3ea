/*
 * handshake.c — HELLO and AUTH (handshake.h).
 */
#include <string.h>
#include <unistd.h>

#include "net/handshake.h"

int kvds_handshake_hello(struct kvds_rpc *r, int want_shm, const char *peer_id,
                         struct kvds_hello *out, uint64_t deadline) {
  kvds_rpc_begin(r);
  kvds_rpc_item(r, want_shm ? KVDS_HELLO_F_SHM : 0, KVDS_PROTO_VERSION, 0, 0,
                NULL, 0);
  if (peer_id) /* a worker's peer connection says whose it is */
    kvds_rpc_item(r, 0, 0, 0, 0, peer_id, strlen(peer_id));
  int fd = kvds_rpc_take_fd(r); /* none is due before this reply */
  if (fd >= 0)
    close(fd);
  int rc = kvds_rpc_call(r, KVDS_OP_HELLO, 0, 0, deadline);
  fd = kvds_rpc_take_fd(r);
  if (rc)
    goto out;
  if (r->rh.count < 1) {
    rc = kvds_rpc_broken(r, KVDS_E_PROTO, "hello");
    goto out;
  }
  const struct kvds_proto_item *it = &r->rit[0];
  out->nonce = it->d;
  size_t pl = it->klen < sizeof out->sock_path ? it->klen : 0;
  if (pl)
    memcpy(out->sock_path, r->rkey[0], pl);
  out->sock_path[pl] = 0;
  out->features = r->rh.count >= 2 ? r->rit[1].a : 0;
  out->pool_fd = -1;
  if (want_shm) {
    if (fd < 0 || !(r->rh.flags & KVDS_PF_SHM)) {
      rc = kvds_rpc_fail(r, KVDS_E_PROTO, "worker did not pass its pool");
      goto out;
    }
    out->pool_fd = fd;
    fd = -1;
  }
out:
  if (fd >= 0)
    close(fd);
  return rc;
}

int kvds_handshake_auth(struct kvds_rpc *r, const struct kvds_auth_token *tok,
                        uint64_t deadline) {
  uint8_t cn[KVDS_AUTH_NONCE_LEN], wn[KVDS_AUTH_NONCE_LEN];
  uint8_t proof[KVDS_AUTH_PROOF_LEN];
  int rc;
  if ((rc = kvds_auth_nonce(cn)))
    return kvds_rpc_fail(r, rc, "no random bytes for the auth nonce");
  kvds_rpc_begin(r);
  kvds_rpc_item(r, KVDS_AUTH_STEP_NONCE, 0, 0, 0, cn, sizeof cn);
  rc = kvds_rpc_call(r, KVDS_OP_AUTH, 0, 0, deadline);
  if (rc && kvds_rpc_is_up(r)) {
    /* Answered, but not with a challenge: this worker does not
     * authenticate (no --auth-token-file, or it predates AUTH). */
    return kvds_rpc_broken(r, KVDS_E_AUTH,
                           "the worker does not authenticate clients");
  }
  if (rc)
    return rc;
  if (r->rh.count != 2 || r->rit[0].klen != KVDS_AUTH_NONCE_LEN)
    return kvds_rpc_broken(r, KVDS_E_PROTO, "auth challenge");
  memcpy(wn, r->rkey[0], sizeof wn);
  if (kvds_auth_verify(tok, KVDS_AUTH_WORKER, wn, cn, r->rkey[1],
                       r->rit[1].klen))
    return kvds_rpc_broken(r, KVDS_E_AUTH,
                           "the worker does not hold our token");
  kvds_auth_proof(tok, KVDS_AUTH_CLIENT, wn, cn, proof);
  kvds_rpc_begin(r);
  kvds_rpc_item(r, KVDS_AUTH_STEP_PROOF, 0, 0, 0, proof, sizeof proof);
  return kvds_rpc_call(r, KVDS_OP_AUTH, 0, 0, deadline);
}
