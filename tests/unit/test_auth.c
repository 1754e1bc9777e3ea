/*
 * test_auth.c — token files, HMAC-SHA256 and the proofs of the TCP
 * authentication (src/cluster/auth.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluster/auth.h"
#include "kvds/kvds.h"

static char g_dir[256];

static int setup(void **state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/kvds-test-auth-XXXXXX");
  return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* Writes a token file with the given bytes and mode; returns its path. */
static const char *token_file(const char *name, const void *data, size_t len,
                              mode_t mode) {
  static char path[300];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  unlink(path);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, data, len), (ssize_t)len);
  assert_int_equal(fchmod(fd, mode), 0);
  close(fd);
  return path;
}

static void hex(const uint8_t *b, size_t n, char *out) {
  for (size_t i = 0; i < n; i++)
    sprintf(out + 2 * i, "%02x", b[i]);
}

/* RFC 4231 test cases 1 and 2. */
static void test_hmac_known_answer(void **state) {
  (void)state;
  uint8_t out[KVDS_AUTH_PROOF_LEN];
  char h[2 * KVDS_AUTH_PROOF_LEN + 1];
  kvds_auth_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, out);
  hex(out, sizeof out, h);
  assert_string_equal(
      h, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  uint8_t key[20];
  memset(key, 0x0b, sizeof key);
  kvds_auth_hmac_sha256(key, sizeof key, "Hi There", 8, out);
  hex(out, sizeof out, h);
  assert_string_equal(
      h, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
}

static void make_token(struct kvds_auth_token *t, const char *s) {
  memset(t, 0, sizeof *t);
  t->len = strlen(s);
  memcpy(t->bytes, s, t->len);
}

/* The proof is HMAC-SHA256(token, "kvds-auth-v1" || label || wn || cn). */
static void test_proof_layout(void **state) {
  (void)state;
  struct kvds_auth_token t;
  make_token(&t, "0123456789abcdef-secret");
  uint8_t wn[KVDS_AUTH_NONCE_LEN], cn[KVDS_AUTH_NONCE_LEN];
  memset(wn, 0xaa, sizeof wn);
  memset(cn, 0x55, sizeof cn);
  uint8_t msg[12 + 6 + 64], want[32], got[32];
  memcpy(msg, "kvds-auth-v1", 12);
  memcpy(msg + 12, "client", 6);
  memcpy(msg + 18, wn, 32);
  memcpy(msg + 50, cn, 32);
  kvds_auth_hmac_sha256(t.bytes, t.len, msg, sizeof msg, want);
  kvds_auth_proof(&t, KVDS_AUTH_CLIENT, wn, cn, got);
  assert_memory_equal(got, want, 32);
  memcpy(msg + 12, "worker", 6);
  kvds_auth_hmac_sha256(t.bytes, t.len, msg, sizeof msg, want);
  kvds_auth_proof(&t, KVDS_AUTH_WORKER, wn, cn, got);
  assert_memory_equal(got, want, 32);
}

static void test_proofs_differ(void **state) {
  (void)state;
  struct kvds_auth_token t, t2;
  make_token(&t, "0123456789abcdef-secret");
  make_token(&t2, "0123456789abcdef-secreT");
  uint8_t wn[32], cn[32], wn2[32], p[32], q[32];
  assert_int_equal(kvds_auth_nonce(wn), 0);
  assert_int_equal(kvds_auth_nonce(cn), 0);
  assert_int_equal(kvds_auth_nonce(wn2), 0);
  assert_memory_not_equal(wn, cn, 32); /* fresh random nonces */
  assert_memory_not_equal(wn, wn2, 32);

  kvds_auth_proof(&t, KVDS_AUTH_CLIENT, wn, cn, p);
  assert_int_equal(kvds_auth_verify(&t, KVDS_AUTH_CLIENT, wn, cn, p, sizeof p),
                   0);
  /* Direction: a client proof is no worker proof (no reflection). */
  kvds_auth_proof(&t, KVDS_AUTH_WORKER, wn, cn, q);
  assert_memory_not_equal(p, q, 32);
  assert_int_equal(kvds_auth_verify(&t, KVDS_AUTH_WORKER, wn, cn, p, 32),
                   KVDS_E_AUTH);
  /* Nonces: another connection's proof does not verify (no replay). */
  kvds_auth_proof(&t, KVDS_AUTH_CLIENT, wn2, cn, q);
  assert_memory_not_equal(p, q, 32);
  assert_int_equal(kvds_auth_verify(&t, KVDS_AUTH_CLIENT, wn2, cn, p, 32),
                   KVDS_E_AUTH);
  assert_int_equal(kvds_auth_verify(&t, KVDS_AUTH_CLIENT, cn, wn, p, 32),
                   KVDS_E_AUTH);
  /* Token: one byte different, another proof. */
  kvds_auth_proof(&t2, KVDS_AUTH_CLIENT, wn, cn, q);
  assert_memory_not_equal(p, q, 32);
  assert_int_equal(kvds_auth_verify(&t2, KVDS_AUTH_CLIENT, wn, cn, p, 32),
                   KVDS_E_AUTH);
  /* A flipped bit, a truncated or an empty proof. */
  p[31] ^= 1;
  assert_int_equal(kvds_auth_verify(&t, KVDS_AUTH_CLIENT, wn, cn, p, 32),
                   KVDS_E_AUTH);
  p[31] ^= 1;
  assert_int_equal(kvds_auth_verify(&t, KVDS_AUTH_CLIENT, wn, cn, p, 31),
                   KVDS_E_AUTH);
  assert_int_equal(kvds_auth_verify(&t, KVDS_AUTH_CLIENT, wn, cn, p, 0),
                   KVDS_E_AUTH);
}

static void expect_refused(const char *path, const char *needle) {
  struct kvds_auth_token t;
  memset(&t, 0x77, sizeof t);
  char err[256] = "";
  assert_int_equal(kvds_auth_token_load(path, &t, err, sizeof err),
                   KVDS_E_AUTH);
  if (!strstr(err, path) || !strstr(err, needle))
    fail_msg("message \"%s\" should name %s and say \"%s\"", err, path, needle);
  assert_int_equal(t.len, 0x7777777777777777ull); /* not written */
}

static void test_token_file(void **state) {
  (void)state;
  struct kvds_auth_token t;
  char err[256] = "";
  const char *p = token_file("ok", "0123456789abcdef\n", 17, 0600);
  assert_int_equal(kvds_auth_token_load(p, &t, err, sizeof err), 0);
  assert_int_equal(t.len, 16); /* trailing newline stripped */
  assert_memory_equal(t.bytes, "0123456789abcdef", 16);
  p = token_file("crlf", "0123456789abcdefXY \t\r\n\n", 23, 0400);
  assert_int_equal(kvds_auth_token_load(p, &t, err, sizeof err), 0);
  assert_int_equal(t.len, 18);
  /* Leading and inner bytes are the token's own. */
  p = token_file("inner", " 0123456789 abcdef", 18, 0600);
  assert_int_equal(kvds_auth_token_load(p, &t, err, sizeof err), 0);
  assert_int_equal(t.len, 18);
  kvds_auth_token_wipe(&t);
  assert_int_equal(t.len, 0);

  expect_refused(token_file("empty", "", 0, 0600), "empty");
  expect_refused(token_file("blank", "\n \n", 3, 0600), "empty");
  expect_refused(token_file("short", "0123456789abcde\n", 16, 0600),
                 "at least 16");
  expect_refused(token_file("g", "0123456789abcdef", 16, 0640), "chmod 600");
  expect_refused(token_file("o", "0123456789abcdef", 16, 0644), "0644");
  expect_refused(token_file("w", "0123456789abcdef", 16, 0602), "chmod 600");
  char big[KVDS_AUTH_TOKEN_MAX + 1];
  memset(big, 'x', sizeof big);
  expect_refused(token_file("big", big, sizeof big, 0600), "too long");
  char missing[300];
  snprintf(missing, sizeof missing, "%s/missing", g_dir);
  expect_refused(missing, "No such file");
  expect_refused(g_dir, "not a regular file");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hmac_known_answer),
      cmocka_unit_test(test_proof_layout),
      cmocka_unit_test(test_proofs_differ),
      cmocka_unit_test(test_token_file),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
