/*
 * auth.h — the shared-secret authentication of TCP connections (leaf
 * module: libc and libcrypto only, pure apart from reading the token file
 * and drawing random nonces).
 *
 * Every worker of a cluster and every remote client hold the same token (a
 * file of at least KVDS_AUTH_TOKEN_MIN bytes, readable by its owner only).
 * A connection proves knowledge of it both ways, without sending it:
 *
 *   proof(dir) = HMAC-SHA256(token, "kvds-auth-v1" || label(dir)
 *                                   || worker_nonce || client_nonce)
 *
 * with label "client" or "worker" (6 bytes each) and 32-byte nonces, so a
 * proof is bound to one direction and one connection and cannot be
 * reflected or replayed. The wire exchange is in docs/protocol.md.
 */
#ifndef KVDS_AUTH_H
#define KVDS_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define KVDS_AUTH_TOKEN_MIN 16
#define KVDS_AUTH_TOKEN_MAX 1024
#define KVDS_AUTH_NONCE_LEN 32
#define KVDS_AUTH_PROOF_LEN 32

/* Who proves: the client to the worker, or the worker to the client. */
enum kvds_auth_dir { KVDS_AUTH_CLIENT = 0, KVDS_AUTH_WORKER = 1 };

struct kvds_auth_token {
  size_t len;
  uint8_t bytes[KVDS_AUTH_TOKEN_MAX];
};

/*
 * Reads the token from `path`: the file's bytes with trailing whitespace
 * (newline, CR, tab, space) removed. Refuses a file that group or others may
 * access (mode & 077, as ssh does for keys), one that is not a regular file,
 * and a token that is empty, shorter than KVDS_AUTH_TOKEN_MIN or longer than
 * KVDS_AUTH_TOKEN_MAX bytes. Returns 0 and fills *out, or KVDS_E_AUTH with a
 * one-line reason naming the file in err[errcap]; *out is not written on
 * failure.
 */
int kvds_auth_token_load(const char *path, struct kvds_auth_token *out,
                         char *err, size_t errcap);

/* Overwrites the token's bytes (not optimised away). NULL is a no-op. */
void kvds_auth_token_wipe(struct kvds_auth_token *t);

/* Fills out[KVDS_AUTH_NONCE_LEN] with random bytes. 0, or -EIO when the
 * system has no randomness to give. */
int kvds_auth_nonce(uint8_t *out);

/* HMAC-SHA256 of msg under key into out[KVDS_AUTH_PROOF_LEN]. */
void kvds_auth_hmac_sha256(const void *key, size_t klen, const void *msg,
                           size_t mlen, uint8_t *out);

/* The proof of direction `dir` for the nonces of one connection
 * (worker_nonce and client_nonce are KVDS_AUTH_NONCE_LEN bytes) into
 * out[KVDS_AUTH_PROOF_LEN]. */
void kvds_auth_proof(const struct kvds_auth_token *t, enum kvds_auth_dir dir,
                     const uint8_t *worker_nonce, const uint8_t *client_nonce,
                     uint8_t *out);

/* 0 if proof[0..len) is the proof of `dir` for these nonces (compared in
 * constant time), else KVDS_E_AUTH (also for a wrong length). */
int kvds_auth_verify(const struct kvds_auth_token *t, enum kvds_auth_dir dir,
                     const uint8_t *worker_nonce, const uint8_t *client_nonce,
                     const uint8_t *proof, size_t len);

#endif
