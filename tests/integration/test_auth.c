/*
 * test_auth.c — TCP authentication against a real worker: a non-loopback
 * listener needs --auth-token-file; clients with the right token work over
 * TCP (and still upgrade to the Unix socket); no token, a wrong token, a
 * worker without a token, a bad proof on the wire, garbage and silence are
 * refused, the connection closed and counted in /metrics and /status
 * (silence within 5 s even with the default 30 s frame timeout); a 1 MiB
 * value after AUTH (the small pre-auth buffer grows); Unix
 * clients need no token; the CLI reads $KVDS_AUTH_TOKEN_FILE too.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "proto/proto.h"

#define ENV "KVDS_AUTH_TOKEN_FILE"

static void write_file(const char *path, const char *text, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  KVH_CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
  KVH_CHECK(kvh_write_all(fd, text, strlen(text)) == 0, "write %s", path);
  KVH_CHECK(fchmod(fd, mode) == 0, "chmod %s", path);
  close(fd);
}

/* GET path on 127.0.0.1:port (with extra header lines, "" for none); the
 * response (headers and body) in out. */
static void http_get_h(int port, const char *path, const char *hdrs, char *out,
                       size_t cap) {
  int fd = kvh_raw_tcp(port);
  char req[512];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\n%s\r\n", path, hdrs);
  KVH_CHECK(kvh_write_all(fd, req, (size_t)n) == 0, "send http request");
  size_t len = 0;
  KVH_CHECK(kvh_read_to_eof(fd, out, cap - 1, &len, 5000) == 0,
            "http response");
  out[len] = 0;
  close(fd);
}

static void http_get(int port, const char *path, char *out, size_t cap) {
  http_get_h(port, path, "", out, cap);
}

static unsigned long long metric(int hport, const char *name) {
  char body[16384];
  http_get(hport, "/metrics", body, sizeof body);
  char key[128];
  snprintf(key, sizeof key, "\n%s ", name);
  const char *p = strstr(body, key);
  KVH_CHECK(p, "metric %s missing from /metrics", name);
  return strtoull(p + strlen(key), NULL, 10);
}

/* Waits (bounded) until the worker counted `want` failures, then checks it
 * counted no more. */
static void expect_failures(int hport, unsigned long long want) {
  uint64_t deadline = kvh_now_ms() + 5000;
  unsigned long long got;
  while ((got = metric(hport, "kvds_auth_failures_total")) < want &&
         kvh_now_ms() < deadline)
    kvh_sleep_ms(20);
  KVH_CHECK(got == want, "kvds_auth_failures_total = %llu, want %llu", got,
            want);
}

static void put_get(kvds_client *c, const char *key) {
  char buf[64];
  size_t len = 0;
  KVH_OK(kvds_put(c, key, strlen(key), "value", 5));
  KVH_OK(kvds_get(c, key, strlen(key), buf, sizeof buf, &len, 0));
  KVH_CHECK(len == 5 && memcmp(buf, "value", 5) == 0, "value of %s", key);
}

static void expect_refused(const char *addr) {
  kvds_client *c = NULL;
  KVH_EXPECT_RC(kvds_client_connect(addr, 3000, &c), KVDS_E_AUTH);
  KVH_CHECK(c == NULL, "out-parameter written on failure");
}

/* The connection was closed by the worker (EOF within 5 s). */
static void expect_closed(int fd, const char *what) {
  char buf[4096];
  size_t len = 0;
  KVH_CHECK(kvh_read_to_eof(fd, buf, sizeof buf, &len, 5000) == 0,
            "%s: the worker did not close the connection", what);
  close(fd);
}

/* A raw AUTH frame with one item (a = step, key = bytes). */
static void send_auth(int fd, uint64_t step, const uint8_t *key, size_t klen) {
  uint8_t frame[KVDS_PROTO_HDR_LEN + KVDS_PROTO_ITEM_LEN + 64];
  struct kvds_proto_item it = {.klen = (uint32_t)klen, .a = step};
  size_t ml = kvds_proto_item_encode(&it, key, frame + KVDS_PROTO_HDR_LEN);
  struct kvds_proto_hdr h = {.magic = KVDS_PROTO_MAGIC,
                             .version = KVDS_PROTO_VERSION,
                             .opcode = KVDS_OP_AUTH,
                             .req_id = 7,
                             .count = 1,
                             .meta_len = (uint32_t)ml};
  kvds_proto_hdr_encode(&h, frame);
  kvds_proto_seal_frame(frame, frame + KVDS_PROTO_HDR_LEN, ml);
  KVH_CHECK(kvh_write_all(fd, frame, KVDS_PROTO_HDR_LEN + ml) == 0,
            "send AUTH");
}

/* Reads one reply header and returns its status. */
static int32_t reply_status(int fd) {
  uint8_t hdr[KVDS_PROTO_HDR_LEN];
  struct kvds_proto_hdr h;
  KVH_CHECK(kvh_read_all(fd, hdr, sizeof hdr, 5000) == 0, "read reply");
  KVH_CHECK(kvds_proto_hdr_decode(hdr, sizeof hdr, &h) == 0, "reply header");
  KVH_CHECK(h.opcode == KVDS_OP_AUTH && h.req_id == 7, "AUTH reply");
  return h.status;
}

/* Runs `kvds worker ARGS` in the foreground; returns its exit status and
 * its output in out. */
static int run_worker(const char *const *args, char *out, size_t cap) {
  char log[400];
  snprintf(log, sizeof log, "%s/fg-worker.log", kvh_run_dir());
  pid_t pid = kvh_fork();
  if (pid == 0) {
    const char *argv[16] = {"kvds", "worker"};
    int n = 2;
    for (int i = 0; args[i] && n < 15; i++)
      argv[n++] = args[i];
    argv[n] = NULL;
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execv(kvh_kvds_bin(), (char *const *)argv);
    _exit(127);
  }
  int st = kvh_wait_pid(pid, 20000);
  int fd = open(log, O_RDONLY | O_CLOEXEC);
  ssize_t r = fd >= 0 ? read(fd, out, cap - 1) : -1;
  out[r > 0 ? r : 0] = 0;
  if (fd >= 0)
    close(fd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_auth");
  char token[300], wrong[300], loose[300];
  snprintf(token, sizeof token, "%s/token", kvh_run_dir());
  snprintf(wrong, sizeof wrong, "%s/wrong", kvh_run_dir());
  snprintf(loose, sizeof loose, "%s/loose", kvh_run_dir());
  write_file(token, "correct horse battery staple\n", 0600);
  write_file(wrong, "correct horse battery stapler\n", 0600);
  write_file(loose, "correct horse battery staple\n", 0644);
  unsetenv(ENV);

  /* A non-loopback listener without a token is refused at start... */
  char out[4096], listen[64], port_s[16];
  int port = kvh_free_port();
  snprintf(listen, sizeof listen, "0.0.0.0:%d", port);
  const char *no_token[] = {"--listen", listen, "--memory", "16MiB", NULL};
  int rc = run_worker(no_token, out, sizeof out);
  KVH_CHECK(rc == 2 && strstr(out, "not a loopback address") &&
                strstr(out, "--auth-token-file"),
            "worker on %s without a token: exit %d, output: %s", listen, rc,
            out);
  /* ... and so is an unusable token file. */
  const char *loose_args[] = {"--listen",          listen, "--memory", "16MiB",
                              "--auth-token-file", loose,  NULL};
  rc = run_worker(loose_args, out, sizeof out);
  KVH_CHECK(rc == 2 && strstr(out, loose) && strstr(out, "chmod 600"),
            "worker with a 0644 token file: exit %d, output: %s", rc, out);

  /* With a token it starts (the harness's readiness ping authenticates). */
  setenv(ENV, token, 1);
  struct kvh_worker wide;
  char wport[16];
  int whp = kvh_free_port();
  snprintf(wport, sizeof wport, "%d", whp);
  const char *wide_args[] = {"--listen", listen,        "--auth-token-file",
                             token,      "--http-port", wport,
                             NULL};
  kvh_worker_start_port(&wide, port, "16MiB", wide_args);
  /* Its HTTP endpoint is not on loopback either: /status and /metrics
   * want the token as a bearer, /health does not. */
  static char hbody[1 << 16];
  http_get(whp, "/metrics", hbody, sizeof hbody);
  KVH_CHECK(strncmp(hbody, "HTTP/1.1 401", 12) == 0 ||
                strncmp(hbody, "HTTP/1.0 401", 12) == 0,
            "/metrics without a token: %.60s", hbody);
  KVH_CHECK(!strstr(hbody, "kvds_pool"), "/metrics leaked without a token");
  http_get_h(whp, "/status", "Authorization: Bearer correct horse battery\r\n",
             hbody, sizeof hbody);
  KVH_CHECK(strstr(hbody, " 401 "), "/status with a wrong token: %.60s", hbody);
  http_get_h(whp, "/metrics",
             "Authorization: Bearer correct horse battery staple\r\n", hbody,
             sizeof hbody);
  KVH_CHECK(strstr(hbody, " 200 ") && strstr(hbody, "kvds_auth_required 1"),
            "/metrics with the token: %.60s", hbody);
  http_get(whp, "/health", hbody, sizeof hbody);
  KVH_CHECK(strstr(hbody, " 200 "), "/health: %.60s", hbody);
  kvds_client *c = kvh_connect(wide.tcp);
  put_get(c, "wide");
  /* After AUTH the connection's small pre-auth input buffer grows: large
   * requests still work. */
  size_t big_len = 1u << 20, got_len = 0;
  char *big = malloc(big_len), *got = malloc(big_len);
  KVH_CHECK(big && got, "malloc");
  for (size_t i = 0; i < big_len; i++)
    big[i] = (char)(i * 31u);
  KVH_OK(kvds_put(c, "big", 3, big, big_len));
  KVH_OK(kvds_get(c, "big", 3, got, big_len, &got_len, 0));
  KVH_CHECK(got_len == big_len && memcmp(big, got, big_len) == 0,
            "1 MiB value over TCP");
  free(big);
  free(got);
  kvds_client_close(c);
  /* The default frame timeout is 30 s, but a connection that does not
   * authenticate is closed after 5 s (the sweep runs every second). */
  int sfd = kvh_raw_tcp(wide.port);
  uint64_t t0 = kvh_now_ms();
  char sbuf[64];
  size_t slen = 0;
  KVH_CHECK(kvh_read_to_eof(sfd, sbuf, sizeof sbuf, &slen, 15000) == 0,
            "silent connection to a worker with the default frame timeout "
            "still open after 15 s");
  uint64_t waited = kvh_now_ms() - t0;
  close(sfd);
  KVH_CHECK(waited >= 4000 && waited < 10000,
            "silent unauthenticated connection closed after %llu ms, want "
            "about 5 s",
            (unsigned long long)waited);
  kvh_worker_stop(&wide);

  /* The worker under test: token, HTTP, a short frame timeout. */
  int hport = kvh_free_port();
  snprintf(port_s, sizeof port_s, "%d", hport);
  struct kvh_worker w;
  const char *args[] = {"--auth-token-file",  token, "--http-port", port_s,
                        "--frame-timeout-ms", "500", NULL};
  kvh_worker_start(&w, "64MiB", args);
  KVH_CHECK(metric(hport, "kvds_auth_required") == 1, "auth_required");
  /* The harness's readiness probes may have given up on a connection the
   * worker accepted only later (counted): start from what is counted now. */
  unsigned long long failures = metric(hport, "kvds_auth_failures_total");

  /* The right token: TCP works, and host:port still upgrades to shm. */
  c = kvh_connect(w.tcp);
  KVH_CHECK(!kvds_client_is_local(c), "tcp:// stays on TCP");
  put_get(c, "tcp-key");
  kvds_client_close(c);
  c = kvh_connect(w.addr);
  KVH_CHECK(kvds_client_is_local(c), "host:port upgrades to the socket");
  put_get(c, "local-key");
  kvds_client_close(c);
  expect_failures(hport, failures);

  /* No token: refused with KVDS_E_AUTH, over tcp:// and host:port. */
  unsetenv(ENV);
  expect_refused(w.tcp);
  expect_refused(w.addr);
  failures += 2;
  expect_failures(hport, failures);
  /* A wrong token: the worker's proof does not verify, we hang up. */
  setenv(ENV, wrong, 1);
  expect_refused(w.tcp);
  expect_failures(hport, ++failures);
  /* A token file the client must not use. */
  setenv(ENV, loose, 1);
  expect_refused(w.tcp);
  expect_failures(hport, ++failures);

  /* Unix-socket clients of the worker's user need no token; the socket is
   * theirs (the user only, whatever the umask the worker started with;
   * test_access covers other users and --allow-group). */
  struct stat sst;
  KVH_CHECK(stat(w.sock, &sst) == 0, "stat %s: %s", w.sock, strerror(errno));
  KVH_CHECK((sst.st_mode & 0777) == 0600, "socket mode %o, want 0600",
            (unsigned)(sst.st_mode & 0777));
  unsetenv(ENV);
  c = kvh_connect(w.unix_addr);
  put_get(c, "unix-key");
  uint8_t present = 0;
  struct kvds_iov k = {"tcp-key", 7};
  KVH_OK(kvds_exists(c, 1, &k, &present));
  KVH_CHECK(present, "the TCP client's object is there");

  /* A client proof without a challenge, and a wrong proof after one. */
  uint8_t zeros[32] = {0}, nonce[32];
  memset(nonce, 0x42, sizeof nonce);
  int fd = kvh_raw_tcp(w.port);
  send_auth(fd, 2, zeros, sizeof zeros);
  KVH_CHECK(reply_status(fd) == KVDS_E_AUTH, "proof without a challenge");
  expect_closed(fd, "proof without a challenge");
  fd = kvh_raw_tcp(w.port);
  send_auth(fd, 1, nonce, sizeof nonce);
  KVH_CHECK(reply_status(fd) == 0, "challenge");
  send_auth(fd, 2, zeros, sizeof zeros);
  expect_closed(fd, "wrong proof");
  failures += 2;
  expect_failures(hport, failures);

  /* Garbage: closed and counted. */
  fd = kvh_raw_tcp(w.port);
  uint8_t junk[256];
  uint64_t seed = 12345;
  for (size_t i = 0; i < sizeof junk; i++)
    junk[i] = (uint8_t)kvh_rand(&seed);
  KVH_CHECK(kvh_write_all(fd, junk, sizeof junk) == 0, "send garbage");
  expect_closed(fd, "garbage");
  expect_failures(hport, ++failures);
  /* Silence: closed after the frame timeout, counted. */
  fd = kvh_raw_tcp(w.port);
  expect_closed(fd, "silent connection");
  expect_failures(hport, ++failures);

  /* The worker is unaffected; /status says the same. */
  KVH_OK(kvds_ping(c));
  kvds_client_close(c);
  char status[16384];
  http_get(hport, "/status", status, sizeof status);
  char want[64];
  snprintf(want, sizeof want, "\"auth_failures\": %llu", failures);
  KVH_CHECK(strstr(status, want) && strstr(status, "\"auth_required\": true"),
            "/status lacks %s: %s", want, status);

  /* The CLI reads $KVDS_AUTH_TOKEN_FILE. */
  char cmd[1200];
  snprintf(cmd, sizeof cmd,
           "DS_WORKER_ADDR=%s " ENV "=%s %s stat tcp-key >/dev/null 2>&1",
           w.tcp, token, kvh_kvds_bin());
  KVH_CHECK(system(cmd) == 0, "kvds stat with the token");
  snprintf(cmd, sizeof cmd,
           "DS_WORKER_ADDR=%s %s stat tcp-key 2>%s/cli.err >/dev/null", w.tcp,
           kvh_kvds_bin(), kvh_run_dir());
  rc = system(cmd);
  KVH_CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "kvds stat without token");
  snprintf(cmd, sizeof cmd, "%s/cli.err", kvh_run_dir());
  fd = open(cmd, O_RDONLY | O_CLOEXEC);
  ssize_t r = read(fd, out, sizeof out - 1);
  close(fd);
  out[r > 0 ? r : 0] = 0;
  KVH_CHECK(strstr(out, "authentication"), "CLI error: %s", out);
  failures++;

  /* A client with a token refuses a worker that has none. */
  struct kvh_worker open_w;
  kvh_worker_start(&open_w, "16MiB", NULL);
  setenv(ENV, token, 1);
  expect_refused(open_w.tcp);
  expect_refused(open_w.addr);
  c = kvh_connect(open_w.unix_addr);
  put_get(c, "open");
  kvds_client_close(c);
  kvh_worker_stop(&open_w);

  expect_failures(hport, failures);
  kvh_worker_stop(&w);
  return kvh_finish();
}
