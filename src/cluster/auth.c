/*
 * auth.c — token files, nonces and HMAC-SHA256 proofs for the
 * authentication of TCP connections (see auth.h).
 */
#include "cluster/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "kvds/kvds.h"

#define LABEL_LEN 6
static const char DOMAIN[] = "kvds-auth-v1";
static const char *const LABELS[2] = {"client", "worker"};

int kvds_auth_token_load(const char *path, struct kvds_auth_token *out,
                         char *err, size_t errcap) {
  /* One byte more than the limit tells "too long" from "just fits". */
  uint8_t buf[KVDS_AUTH_TOKEN_MAX + 64];
  size_t len = 0;
  struct stat st;
  int rc;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return kvds_errf(err, errcap, KVDS_E_AUTH, "auth token file %s: %s", path,
                     strerror(errno));
  if (fstat(fd, &st)) {
    rc = kvds_errf(err, errcap, KVDS_E_AUTH, "auth token file %s: %s", path,
                   strerror(errno));
    goto out;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = kvds_errf(err, errcap, KVDS_E_AUTH,
                   "auth token file %s is not a regular file", path);
    goto out;
  }
  if (st.st_mode & 077) {
    rc = kvds_errf(err, errcap, KVDS_E_AUTH,
                   "auth token file %s is accessible by group or others "
                   "(mode 0%03o); it must be private: chmod 600 it",
                   path, (unsigned)(st.st_mode & 0777));
    goto out;
  }
  for (;;) {
    ssize_t r = read(fd, buf + len, sizeof buf - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      rc = kvds_errf(err, errcap, KVDS_E_AUTH, "auth token file %s: %s", path,
                     strerror(errno));
      goto out;
    }
    if (r == 0)
      break;
    len += (size_t)r;
    if (len == sizeof buf)
      break;
  }
  while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' ||
                     buf[len - 1] == ' ' || buf[len - 1] == '\t'))
    len--;
  if (len == 0)
    rc = kvds_errf(err, errcap, KVDS_E_AUTH, "auth token file %s is empty",
                   path);
  else if (len < KVDS_AUTH_TOKEN_MIN)
    rc = kvds_errf(err, errcap, KVDS_E_AUTH,
                   "auth token file %s holds a token of %zu bytes; it must "
                   "have at least %d",
                   path, len, KVDS_AUTH_TOKEN_MIN);
  else if (len > KVDS_AUTH_TOKEN_MAX)
    rc = kvds_errf(err, errcap, KVDS_E_AUTH,
                   "auth token file %s is too long (more than %d bytes)", path,
                   KVDS_AUTH_TOKEN_MAX);
  else
    rc = 0;
  if (!rc) {
    memcpy(out->bytes, buf, len);
    out->len = len;
  }
out:
  OPENSSL_cleanse(buf, sizeof buf);
  close(fd);
  return rc;
}

void kvds_auth_token_wipe(struct kvds_auth_token *t) {
  if (t)
    OPENSSL_cleanse(t, sizeof *t);
}

int kvds_auth_nonce(uint8_t *out) {
  return RAND_bytes(out, KVDS_AUTH_NONCE_LEN) == 1 ? 0 : -EIO;
}

void kvds_auth_hmac_sha256(const void *key, size_t klen, const void *msg,
                           size_t mlen, uint8_t *out) {
  unsigned int n = KVDS_AUTH_PROOF_LEN;
  HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &n);
}

void kvds_auth_proof(const struct kvds_auth_token *t, enum kvds_auth_dir dir,
                     const uint8_t *worker_nonce, const uint8_t *client_nonce,
                     uint8_t *out) {
  uint8_t msg[sizeof DOMAIN - 1 + LABEL_LEN + 2 * KVDS_AUTH_NONCE_LEN];
  size_t n = 0;
  memcpy(msg, DOMAIN, sizeof DOMAIN - 1);
  n += sizeof DOMAIN - 1;
  memcpy(msg + n, LABELS[dir == KVDS_AUTH_WORKER], LABEL_LEN);
  n += LABEL_LEN;
  memcpy(msg + n, worker_nonce, KVDS_AUTH_NONCE_LEN);
  n += KVDS_AUTH_NONCE_LEN;
  memcpy(msg + n, client_nonce, KVDS_AUTH_NONCE_LEN);
  n += KVDS_AUTH_NONCE_LEN;
  kvds_auth_hmac_sha256(t->bytes, t->len, msg, n, out);
}

int kvds_auth_verify(const struct kvds_auth_token *t, enum kvds_auth_dir dir,
                     const uint8_t *worker_nonce, const uint8_t *client_nonce,
                     const uint8_t *proof, size_t len) {
  uint8_t want[KVDS_AUTH_PROOF_LEN];
  if (len != KVDS_AUTH_PROOF_LEN)
    return KVDS_E_AUTH;
  kvds_auth_proof(t, dir, worker_nonce, client_nonce, want);
  int same = CRYPTO_memcmp(want, proof, KVDS_AUTH_PROOF_LEN) == 0;
  OPENSSL_cleanse(want, sizeof want);
  return same ? 0 : KVDS_E_AUTH;
}
