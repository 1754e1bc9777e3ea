/*
 * test_wait_wakeup — GETs that wait for keys, over the Unix socket and over
 * TCP, with the waiter and the writer on different transports (and, with two
 * I/O threads, possibly on different threads):
 *  - a waiter on three absent keys is woken once a second process has
 *    created, written (in ranges) and sealed all three, with the right bytes
 *    and well before its deadline;
 *  - a wait for a key nobody writes ends with KVDS_E_TIMEOUT after about
 *    wait_ms (a batch with one present key returns that one);
 *  - a key that is WRITING when the GET arrives and is then aborted ends in
 *    a timeout, and one that is WRITING and then sealed wakes the waiter;
 *  - a waiter killed while waiting leaves the worker healthy;
 *  - one key of a batch sealed during the wait and one never: the found one
 *    comes back with the timeout of the other; a key asked twice is pinned
 *    twice and released twice;
 *  - SIGTERM while GETs wait (and a pin and a WRITING object are held):
 *    the worker exits 0 at once and the waiters fail fast.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define WAIT_LONG 5000
#define WAIT_SHORT 400
#define GRACE_MS 150 /* lets the waiter block; no assertion depends on it */

static size_t mkkey(char *k, size_t cap, const char *tag, const char *name) {
  return (size_t)snprintf(k, cap, "%s/%s", tag, name);
}

/* create, write in three ranges last-first, seal. */
static void write_ranges(kvds_client *c, const char *k, size_t kl, size_t len) {
  uint8_t *v = kvh_val_new(k, kl, len);
  struct kvds_wbuf wb;
  KVH_OK(kvds_create(c, k, kl, len, &wb));
  size_t a = len / 3, b = 2 * len / 3;
  KVH_OK(kvds_write(c, &wb, b, v + b, len - b));
  KVH_OK(kvds_write(c, &wb, a, v + a, b - a));
  KVH_OK(kvds_write(c, &wb, 0, v, a));
  KVH_OK(kvds_seal(c, &wb));
  free(v);
}

static size_t len_of(const char *k, size_t kl) {
  return kvh_val_size(k, kl, 200u << 10) + 1000;
}

/* Child: signals 'W' on fd, then waits in one mget for the keys. */
static void waiter(const char *addr, int fd, const char *tag,
                   const char *const *names, int n, int wait_ms, int want_rc) {
  kvds_client *c = kvh_connect(addr);
  char k[8][64];
  struct kvds_iov keys[8];
  struct kvds_value vals[8];
  int res[8];
  for (int i = 0; i < n; i++)
    keys[i] = (struct kvds_iov){k[i], mkkey(k[i], sizeof k[i], tag, names[i])};
  kvh_send_byte(fd, 'W');
  uint64_t t0 = kvh_now_ms();
  KVH_OK(kvds_mget(c, (size_t)n, keys, wait_ms, vals, res));
  uint64_t el = kvh_now_ms() - t0;
  for (int i = 0; i < n; i++) {
    KVH_CHECK(res[i] == want_rc, "waiting mget '%s': %s, want %s", k[i],
              kvds_err_name(res[i]), kvds_err_name(want_rc));
    if (want_rc == 0)
      KVH_CHECK(kvh_val_ok(k[i], keys[i].len, len_of(k[i], keys[i].len),
                           vals[i].data, vals[i].len),
                "woken mget '%s': wrong value", k[i]);
    else
      KVH_CHECK(vals[i].handle == 0 && vals[i].data == NULL,
                "failed item %d has a value", i);
  }
  if (want_rc == 0)
    KVH_CHECK(el < (uint64_t)wait_ms * 8 / 10,
              "woken after %llu ms of a %d ms wait", (unsigned long long)el,
              wait_ms);
  else
    KVH_CHECK(el >= (uint64_t)wait_ms * 9 / 10,
              "timed out after %llu ms of a %d ms wait", (unsigned long long)el,
              wait_ms);
  KVH_OK(kvds_release(c, (size_t)n, vals));
  KVH_OK(kvds_ping(c));
  kvds_client_close(c);
  _exit(0);
}

static pid_t start_waiter(const char *addr, int *rfd, const char *tag,
                          const char *const *names, int n, int wait_ms,
                          int want_rc) {
  int p[2];
  KVH_CHECK(pipe(p) == 0, "pipe");
  pid_t pid = kvh_fork();
  if (pid == 0) {
    close(p[0]);
    waiter(addr, p[1], tag, names, n, wait_ms, want_rc);
  }
  close(p[1]);
  KVH_CHECK(kvh_recv_byte(p[0], 10000) == 'W', "waiter did not start");
  *rfd = p[0];
  return pid;
}

static void scenario(const struct kvh_worker *w, const char *wait_addr,
                     const char *write_addr, const char *tag) {
  kvds_client *wc = kvh_connect(write_addr);
  int fd;
  char k[64];
  size_t kl;

  /* 1. Three absent keys, written one by one in ranges, then sealed. */
  static const char *const three[] = {"a", "b", "c"};
  pid_t pid = start_waiter(wait_addr, &fd, tag, three, 3, WAIT_LONG, 0);
  kvh_sleep_ms(GRACE_MS);
  for (int i = 0; i < 3; i++) {
    kl = mkkey(k, sizeof k, tag, three[i]);
    write_ranges(wc, k, kl, len_of(k, kl));
  }
  kvh_wait_child_ok(pid, WAIT_LONG + 10000, "waiter on 3 keys");
  close(fd);

  /* 2. Never written: KVDS_E_TIMEOUT after about wait_ms, through both the
   * copying get and a batch whose other key is present. */
  kvds_client *c = kvh_connect(wait_addr);
  kl = mkkey(k, sizeof k, tag, "never");
  size_t len = 0;
  uint64_t t0 = kvh_now_ms();
  KVH_EXPECT_RC(kvds_get(c, k, kl, NULL, 0, &len, WAIT_SHORT), KVDS_E_TIMEOUT);
  uint64_t el = kvh_now_ms() - t0;
  KVH_CHECK(el >= WAIT_SHORT * 9 / 10, "get timed out after %llu ms",
            (unsigned long long)el);
  KVH_EXPECT_RC(kvds_get(c, k, kl, NULL, 0, &len, 0), KVDS_E_NOTFOUND);
  char ka[64];
  struct kvds_iov two[2] = {{ka, mkkey(ka, sizeof ka, tag, "a")}, {k, kl}};
  struct kvds_value vals[2];
  int res[2];
  t0 = kvh_now_ms();
  KVH_OK(kvds_mget(c, 2, two, WAIT_SHORT, vals, res));
  el = kvh_now_ms() - t0;
  KVH_CHECK(res[0] == 0 && res[1] == KVDS_E_TIMEOUT,
            "mget [present, never]: %s, %s", kvds_err_name(res[0]),
            kvds_err_name(res[1]));
  KVH_CHECK(el >= WAIT_SHORT * 9 / 10, "mget timed out after %llu ms",
            (unsigned long long)el);
  KVH_CHECK(kvh_val_ok(ka, two[0].len, len_of(ka, two[0].len), vals[0].data,
                       vals[0].len),
            "present key of a timed-out batch: wrong value");
  KVH_OK(kvds_release(c, 2, vals));

  /* 3. WRITING when the GET arrives, then aborted: a timeout, no crash. */
  static const char *const wr[] = {"writing"};
  kl = mkkey(k, sizeof k, tag, "writing");
  struct kvds_wbuf wb;
  KVH_OK(kvds_create(wc, k, kl, len_of(k, kl), &wb));
  pid =
      start_waiter(wait_addr, &fd, tag, wr, 1, 2 * WAIT_SHORT, KVDS_E_TIMEOUT);
  kvh_sleep_ms(GRACE_MS);
  KVH_OK(kvds_write(wc, &wb, 0, "partial", 7));
  KVH_OK(kvds_abort(wc, &wb));
  kvh_wait_child_ok(pid, 2 * WAIT_SHORT + 10000, "waiter on aborted key");
  close(fd);
  KVH_OK(kvds_ping(c));
  KVH_EXPECT_RC(kvds_get(c, k, kl, NULL, 0, &len, 0), KVDS_E_NOTFOUND);

  /* 4. WRITING when the GET arrives, then sealed: the waiter is woken. */
  uint8_t *v = kvh_val_new(k, kl, len_of(k, kl));
  KVH_OK(kvds_create(wc, k, kl, len_of(k, kl), &wb));
  KVH_OK(kvds_write(wc, &wb, 0, v, len_of(k, kl) / 2));
  pid = start_waiter(wait_addr, &fd, tag, wr, 1, WAIT_LONG, 0);
  kvh_sleep_ms(GRACE_MS);
  KVH_OK(kvds_write(wc, &wb, len_of(k, kl) / 2, v + len_of(k, kl) / 2,
                    len_of(k, kl) - len_of(k, kl) / 2));
  KVH_OK(kvds_seal(wc, &wb));
  kvh_wait_child_ok(pid, WAIT_LONG + 10000, "waiter on a sealed WRITING key");
  close(fd);
  free(v);

  /* 5. A waiter killed mid-wait; the key is sealed afterwards. */
  static const char *const late[] = {"late"};
  pid = start_waiter(wait_addr, &fd, tag, late, 1, WAIT_LONG, 0);
  kvh_sleep_ms(GRACE_MS);
  kill(pid, SIGKILL);
  int st = kvh_wait_pid(pid, 5000);
  KVH_CHECK(WIFSIGNALED(st), "killed waiter: status 0x%x", st);
  close(fd);
  kl = mkkey(k, sizeof k, tag, "late");
  write_ranges(wc, k, kl, len_of(k, kl));
  uint8_t *buf = malloc(len_of(k, kl));
  KVH_OK(kvds_get(c, k, kl, buf, len_of(k, kl), &len, 0));
  KVH_CHECK(kvh_val_ok(k, kl, len_of(k, kl), buf, len), "late: wrong value");
  free(buf);

  /* 6. One key of a batch sealed during the wait, one never; and the same
   * absent key twice in one batch. The woken pins are all given back. */
  char kx[64], kn[64];
  struct kvds_iov mixed[3] = {{kx, mkkey(kx, sizeof kx, tag, "partial")},
                              {kn, mkkey(kn, sizeof kn, tag, "never2")},
                              {kx, 0}};
  mixed[2].len = mixed[0].len; /* the same key again */
  struct kvds_value mv[3];
  int mres[3];
  int p6[2];
  KVH_CHECK(pipe(p6) == 0, "pipe");
  pid = kvh_fork();
  if (pid == 0) { /* the writer, this time */
    close(p6[1]);
    KVH_CHECK(kvh_recv_byte(p6[0], 10000) == 'G', "no go");
    kvh_sleep_ms(GRACE_MS);
    kvds_client *x = kvh_connect(write_addr);
    write_ranges(x, kx, mixed[0].len, len_of(kx, mixed[0].len));
    kvds_client_close(x);
    _exit(0);
  }
  close(p6[0]);
  kvh_send_byte(p6[1], 'G');
  t0 = kvh_now_ms();
  KVH_OK(kvds_mget(c, 3, mixed, 2 * WAIT_SHORT, mv, mres));
  el = kvh_now_ms() - t0;
  kvh_wait_child_ok(pid, 10000, "writer of the partial batch");
  close(p6[1]);
  KVH_CHECK(mres[0] == 0 && mres[1] == KVDS_E_TIMEOUT && mres[2] == 0,
            "%s: [sealed later, never, same key]: %s %s %s", tag,
            kvds_err_name(mres[0]), kvds_err_name(mres[1]),
            kvds_err_name(mres[2]));
  KVH_CHECK(el >= 2 * WAIT_SHORT * 9 / 10,
            "partial batch returned after %llu"
            " ms",
            (unsigned long long)el);
  for (int i = 0; i < 3; i += 2)
    KVH_CHECK(kvh_val_ok(kx, mixed[0].len, len_of(kx, mixed[0].len), mv[i].data,
                         mv[i].len),
              "%s: partial batch item %d: wrong value", tag, i);
  struct kvds_object_info oi;
  KVH_OK(kvds_stat(wc, kx, mixed[0].len, &oi));
  /* Over TCP the worker pins a value only while sending it and unpins right
   * after its send call returns, which can be a moment after the client has
   * the bytes: poll (bounded) for that. */
  for (uint64_t t1 = kvh_now_ms();
       !kvds_client_is_local(c) && oi.pins && kvh_now_ms() - t1 < 2000;) {
    kvh_sleep_ms(5);
    KVH_OK(kvds_stat(wc, kx, mixed[0].len, &oi));
  }
  KVH_CHECK(oi.pins == (kvds_client_is_local(c) ? 2u : 0u),
            "%s: %u pins on a key held twice by a %s client", tag, oi.pins,
            kvds_client_is_local(c) ? "local" : "TCP");
  KVH_OK(kvds_release(c, 3, mv));
  KVH_OK(kvds_ping(c));
  KVH_OK(kvds_stat(wc, kx, mixed[0].len, &oi));
  KVH_CHECK(oi.pins == 0, "%s: %u pins left after release", tag, oi.pins);

  /* No pin or half-written object left behind. */
  kvds_client_close(c);
  kvds_client_close(wc);
  c = kvh_connect(w->addr);
  struct kvds_stats s;
  uint64_t deadline = kvh_now_ms() + 5000;
  do {
    kvh_stats(c, &s);
    if (s.pinned_objects == 0 && s.objects_writing == 0 && s.connections == 1)
      break;
    kvh_sleep_ms(10);
  } while (kvh_now_ms() < deadline);
  KVH_CHECK(
      s.pinned_objects == 0 && s.objects_writing == 0 && s.connections == 1,
      "%s: pinned %llu writing %llu connections %llu", tag,
      (unsigned long long)s.pinned_objects,
      (unsigned long long)s.objects_writing, (unsigned long long)s.connections);
  kvds_client_close(c);
}

/* Child: a long wait that the worker's shutdown must cut short. */
static void shutdown_waiter(const char *addr, int fd) {
  kvds_client *c = kvh_connect(addr);
  struct kvds_iov k = {"never-sealed", 12};
  struct kvds_value v;
  int res;
  kvh_send_byte(fd, 'W');
  uint64_t t0 = kvh_now_ms();
  int rc = kvds_mget(c, 1, &k, 10000, &v, &res);
  uint64_t el = kvh_now_ms() - t0;
  KVH_CHECK(rc != 0 && el < 8000,
            "a wait across the worker's shutdown: %s after %llu ms",
            kvds_err_name(rc), (unsigned long long)el);
  kvds_client_close(c);
  _exit(0);
}

/* SIGTERM while a GET waits on each transport and a client holds a pin and
 * an object being written: the worker exits 0 promptly and the waiters get
 * an error at once instead of waiting out their wait_ms. */
static void shutdown_with_waiters(struct kvh_worker *w) {
  pid_t pids[2];
  int fds[2];
  const char *addrs[2] = {w->addr, w->tcp};
  for (int i = 0; i < 2; i++) {
    int p[2];
    KVH_CHECK(pipe(p) == 0, "pipe");
    pids[i] = kvh_fork();
    if (pids[i] == 0) {
      close(p[0]);
      shutdown_waiter(addrs[i], p[1]);
    }
    close(p[1]);
    KVH_CHECK(kvh_recv_byte(p[0], 10000) == 'W', "waiter did not start");
    fds[i] = p[0];
  }
  kvds_client *c = kvh_connect(w->addr);
  KVH_OK(kvds_put(c, "held", 4, "held", 4));
  struct kvds_iov k = {"held", 4};
  struct kvds_value v;
  int res;
  KVH_OK(kvds_mget(c, 1, &k, 0, &v, &res));
  struct kvds_wbuf wb;
  KVH_OK(kvds_create(c, "being-written", 13, 4096, &wb));
  kvh_sleep_ms(GRACE_MS);
  uint64_t t0 = kvh_now_ms();
  kvh_worker_stop(w);
  KVH_CHECK(kvh_now_ms() - t0 < 5000, "shutdown took %llu ms",
            (unsigned long long)(kvh_now_ms() - t0));
  for (int i = 0; i < 2; i++) {
    kvh_wait_child_ok(pids[i], 15000, "waiter across shutdown");
    close(fds[i]);
  }
  KVH_CHECK(kvds_ping(c) != 0, "ping answered after the worker stopped");
  kvds_client_close(c);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "wait_wakeup");
  struct kvh_worker w;
  kvh_worker_start(&w, "64MiB", (const char *const[]){"--threads", "2", NULL});
  scenario(&w, w.addr, w.tcp, "shm-waits");
  scenario(&w, w.tcp, w.addr, "tcp-waits");
  shutdown_with_waiters(&w);
  return kvh_finish();
}
