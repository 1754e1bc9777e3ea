/*
 * test_kill9 — clients that die with SIGKILL in the middle of things:
 *  - one holding pins (mget without release) and WRITING objects on a
 *    shared-memory and a TCP connection: after the kill the worker drops the
 *    pins and aborts the objects (stats return to zero), the half-written
 *    keys do not exist and can be created anew, and the formerly pinned keys
 *    can be deleted and evicted;
 *  - one killed half-way through the bulk data of an 8 MiB TCP PUT (a raw
 *    frame): the key never appears, its space comes back, and the worker
 *    keeps serving;
 *  - one that asked for an 8 MiB value inline over TCP and never read it
 *    (the value stays pinned while queued): the pin goes with the
 *    connection, and the object can be deleted and its space reused;
 *  - the worker itself: waiting clients fail fast, a zero-copy view stays
 *    readable, and a new worker takes the port over the stale socket.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "proto/proto.h"

#define VAL (256u << 10)
#define NPIN 4
#define BIG (8u << 20)

static void wait_stats(kvds_client *c, uint64_t pinned, uint64_t writing,
                       struct kvds_stats *st, const char *when) {
  uint64_t deadline = kvh_now_ms() + 5000;
  for (;;) {
    kvh_stats(c, st);
    if (st->pinned_objects == pinned && st->objects_writing == writing)
      return;
    KVH_CHECK(kvh_now_ms() < deadline,
              "%s: pinned %llu writing %llu, want %llu and %llu", when,
              (unsigned long long)st->pinned_objects,
              (unsigned long long)st->objects_writing,
              (unsigned long long)pinned, (unsigned long long)writing);
    kvh_sleep_ms(10);
  }
}

static int exists1(kvds_client *c, const char *k) {
  struct kvds_iov ki = {(void *)k, strlen(k)};
  uint8_t p = 2;
  KVH_OK(kvds_exists(c, 1, &ki, &p));
  return p;
}

static void put_derived(kvds_client *c, const char *k, size_t len) {
  void *v = kvh_val_new(k, strlen(k), len);
  KVH_OK(kvds_put(c, k, strlen(k), v, len));
  free(v);
}

static void get_check(kvds_client *c, const char *k, size_t len) {
  uint8_t *buf = malloc(len);
  size_t got = 0;
  KVH_OK(kvds_get(c, k, strlen(k), buf, len, &got, 0));
  KVH_CHECK(kvh_val_ok(k, strlen(k), len, buf, got), "'%s': wrong value", k);
  free(buf);
}

/* Child: pins NPIN keys, leaves two objects half-written, says 'R', blocks. */
static void holder(const struct kvh_worker *w, int fd, int block_fd) {
  kvds_client *c = kvh_connect(w->addr);
  kvds_client *t = kvh_connect(w->tcp);
  char k[NPIN][16];
  struct kvds_iov keys[NPIN];
  struct kvds_value vals[NPIN];
  int res[NPIN];
  for (int i = 0; i < NPIN; i++)
    keys[i] = (struct kvds_iov){k[i], (size_t)snprintf(k[i], 16, "pin/%d", i)};
  KVH_OK(kvds_mget(c, NPIN, keys, 0, vals, res));
  for (int i = 0; i < NPIN; i++)
    KVH_CHECK(res[i] == 0, "holder mget pin/%d: %s", i, kvds_err_name(res[i]));
  struct kvds_wbuf a, b;
  KVH_OK(kvds_create(c, "half-shm", 8, 1u << 20, &a));
  memset(a.data, 0xab, (1u << 20) / 2);
  KVH_OK(kvds_create(t, "half-tcp", 8, 1u << 20, &b));
  memset(b.data, 0xcd, (1u << 20) / 2);
  kvh_send_byte(fd, 'R');
  kvh_recv_byte(block_fd, 60000); /* killed long before */
  _exit(3);
}

/* Child: a PUT frame announcing BIG bytes, half of them sent, then 'R'. */
static void half_put(const struct kvh_worker *w, int fd, int block_fd) {
  kvh_raw_partial_put(w->port, "big", BIG, BIG / 2);
  kvh_send_byte(fd, 'R');
  kvh_recv_byte(block_fd, 60000);
  _exit(3);
}

/* Child: asks for BIG bytes inline over TCP and never reads them. */
static void slow_reader(const struct kvh_worker *w, int fd, int block_fd) {
  int s = kvh_raw_tcp(w->port);
  int small = 4096;
  setsockopt(s, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  uint8_t frame[KVDS_PROTO_HDR_LEN + KVDS_PROTO_ITEM_LEN + 16];
  size_t ml = kvds_proto_item_encode(&(struct kvds_proto_item){.klen = 9},
                                     "slow-read", frame + KVDS_PROTO_HDR_LEN);
  struct kvds_proto_hdr h = {.magic = KVDS_PROTO_MAGIC,
                             .version = KVDS_PROTO_VERSION,
                             .opcode = KVDS_OP_GET,
                             .flags = KVDS_PF_INLINE,
                             .req_id = 1,
                             .count = 1,
                             .meta_len = (uint32_t)ml};
  kvds_proto_hdr_encode(&h, frame);
  kvds_proto_seal_frame(frame, frame + KVDS_PROTO_HDR_LEN, ml);
  KVH_CHECK(kvh_write_all(s, frame, KVDS_PROTO_HDR_LEN + ml) == 0, "send");
  kvh_send_byte(fd, 'R');
  kvh_recv_byte(block_fd, 60000);
  _exit(3);
}

static pid_t spawn(void (*fn)(const struct kvh_worker *, int, int),
                   const struct kvh_worker *w, int *block_wr) {
  int p[2], q[2];
  KVH_CHECK(pipe(p) == 0 && pipe(q) == 0, "pipe");
  pid_t pid = kvh_fork();
  if (pid == 0) {
    close(p[0]);
    close(q[1]);
    fn(w, p[1], q[0]);
  }
  close(p[1]);
  close(q[0]);
  KVH_CHECK(kvh_recv_byte(p[0], 10000) == 'R', "child not ready");
  close(p[0]);
  *block_wr = q[1];
  return pid;
}

static void kill9(pid_t pid, int block_wr) {
  KVH_CHECK(kill(pid, SIGKILL) == 0, "kill: %s", strerror(errno));
  int st = kvh_wait_pid(pid, 5000);
  KVH_CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
            "child did not die of SIGKILL (status 0x%x)", st);
  close(block_wr);
}

/* Child: waits for a key that never comes; the worker dies meanwhile. */
static void orphan_waiter(const struct kvh_worker *w, int fd, int block_fd) {
  (void)block_fd;
  kvds_client *c = kvh_connect(w->tcp);
  struct kvds_iov k = {"never", 5};
  struct kvds_value v;
  int res;
  kvh_send_byte(fd, 'R');
  uint64_t t0 = kvh_now_ms();
  int rc = kvds_mget(c, 1, &k, 20000, &v, &res);
  KVH_CHECK(rc != 0 && kvh_now_ms() - t0 < 10000,
            "wait across a worker kill: %s after %llu ms", kvds_err_name(rc),
            (unsigned long long)(kvh_now_ms() - t0));
  kvds_client_close(c);
  _exit(0);
}

/* The worker itself is killed -9: clients fail fast instead of hanging, a
 * zero-copy view stays readable (the mapping outlives the worker), and a
 * new worker starts on the same port over the stale socket file. */
static void worker_killed(void) {
  struct kvh_worker w;
  kvh_worker_start(&w, "16MiB", NULL);
  int port = w.port;
  kvds_client *c = kvh_connect(w.addr);
  put_derived(c, "view", VAL);
  struct kvds_iov k = {"view", 4};
  struct kvds_value v;
  int res;
  KVH_OK(kvds_mget(c, 1, &k, 0, &v, &res));
  KVH_CHECK(res == 0, "mget view: %s", kvds_err_name(res));
  int block;
  pid_t pid = spawn(orphan_waiter, &w, &block);
  kvh_worker_kill9(&w);
  kvh_wait_child_ok(pid, 15000, "waiter on a killed worker");
  close(block);
  uint64_t t0 = kvh_now_ms();
  KVH_CHECK(kvds_ping(c) != 0 && kvh_now_ms() - t0 < 6000,
            "ping of a dead worker");
  KVH_CHECK(kvh_val_ok("view", 4, VAL, v.data, v.len),
            "a zero-copy view changed when the worker died");
  KVH_OK(kvds_release(c, 1, &v));
  kvds_client_close(c);

  /* A new worker on the same port: empty, local clients upgrade to it. */
  kvh_worker_start_port(&w, port, "16MiB", NULL);
  c = kvh_connect(w.addr);
  KVH_CHECK(kvds_client_is_local(c), "no shared memory after the restart");
  size_t len;
  KVH_EXPECT_RC(kvds_get(c, "view", 4, NULL, 0, &len, 0), KVDS_E_NOTFOUND);
  put_derived(c, "view", VAL);
  get_check(c, "view", VAL);
  kvds_client_close(c);
  kvh_worker_stop(&w);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "kill9");
  struct kvh_worker w;
  kvh_worker_start(&w, "16MiB",
                   (const char *const[]){"--eviction_high_watermark_ratio",
                                         "0.9", "--eviction_ratio", "0.1",
                                         "--threads", "2", NULL});
  kvds_client *c = kvh_connect(w.addr);
  struct kvds_stats st, base;
  char k[32];
  for (int i = 0; i < NPIN; i++) {
    snprintf(k, sizeof k, "pin/%d", i);
    put_derived(c, k, VAL);
  }
  kvh_stats(c, &base);

  /* --- pins and WRITING objects of a killed client --- */
  int block;
  pid_t pid = spawn(holder, &w, &block);
  kvh_stats(c, &st);
  KVH_CHECK(st.pinned_objects == NPIN && st.objects_writing == 2,
            "before the kill: pinned %llu writing %llu",
            (unsigned long long)st.pinned_objects,
            (unsigned long long)st.objects_writing);
  KVH_CHECK(!exists1(c, "half-shm") && !exists1(c, "half-tcp"),
            "a WRITING object is visible");
  KVH_EXPECT_RC(kvds_delete(c, "half-shm", 8), KVDS_E_STATE);
  struct kvds_wbuf wb;
  KVH_EXPECT_RC(kvds_create(c, "half-tcp", 8, 100, &wb), KVDS_E_EXISTS);
  kill9(pid, block);
  wait_stats(c, 0, 0, &st, "after kill -9 of the holder");
  KVH_CHECK(st.pool_used == base.pool_used && st.objects == base.objects,
            "used %llu objects %llu, before %llu / %llu",
            (unsigned long long)st.pool_used, (unsigned long long)st.objects,
            (unsigned long long)base.pool_used,
            (unsigned long long)base.objects);
  struct kvds_object_info info;
  KVH_CHECK(!exists1(c, "half-shm") && !exists1(c, "half-tcp"),
            "half-written keys exist after the kill");
  KVH_EXPECT_RC(kvds_stat(c, "half-shm", 8, &info), KVDS_E_NOTFOUND);
  KVH_EXPECT_RC(kvds_stat(c, "half-tcp", 8, &info), KVDS_E_NOTFOUND);
  put_derived(c, "half-shm", 1u << 20);
  get_check(c, "half-shm", 1u << 20);
  kvds_client *t = kvh_connect(w.tcp);
  put_derived(t, "half-tcp", 1u << 20);
  get_check(t, "half-tcp", 1u << 20);
  for (int i = 0; i < NPIN; i++) {
    snprintf(k, sizeof k, "pin/%d", i);
    get_check(t, k, VAL);
    KVH_OK(kvds_stat(c, k, strlen(k), &info));
    KVH_CHECK(info.pins == 0, "%s still has %u pins", k, info.pins);
  }
  /* Formerly pinned: deletable, and evictable. */
  kvh_stats(c, &base);
  KVH_OK(kvds_delete(c, "pin/0", 5));
  kvh_stats(c, &st);
  KVH_CHECK(st.pool_used + VAL <= base.pool_used,
            "delete of pin/0 freed nothing (used %llu -> %llu)",
            (unsigned long long)base.pool_used,
            (unsigned long long)st.pool_used);
  for (int i = 0; i < 192; i++) { /* 48 MiB through a 16 MiB pool */
    snprintf(k, sizeof k, "fill/%03d", i);
    put_derived(i & 1 ? t : c, k, VAL);
  }
  kvh_stats(c, &st);
  KVH_CHECK(st.evictions > base.evictions, "no evictions");
  for (int i = 1; i < NPIN; i++) {
    snprintf(k, sizeof k, "pin/%d", i);
    KVH_CHECK(!exists1(c, k), "%s was never evicted", k);
  }

  /* --- killed half-way through a large TCP PUT --- */
  kvh_stats(c, &base);
  pid = spawn(half_put, &w, &block);
  uint64_t deadline = kvh_now_ms() + 5000;
  do { /* the worker creates the object when the frame's meta is in */
    kvh_stats(c, &st);
    if (st.objects_writing == 1)
      break;
    kvh_sleep_ms(5);
  } while (kvh_now_ms() < deadline);
  KVH_CHECK(st.objects_writing == 1, "PUT in flight: %llu writing",
            (unsigned long long)st.objects_writing);
  KVH_CHECK(!exists1(c, "big"), "a PUT in flight is visible");
  kill9(pid, block);
  wait_stats(c, 0, 0, &st, "after kill -9 mid-PUT");
  KVH_CHECK(!exists1(c, "big"), "key of an interrupted PUT exists");
  size_t len;
  KVH_EXPECT_RC(kvds_get(t, "big", 3, NULL, 0, &len, 0), KVDS_E_NOTFOUND);
  KVH_CHECK(st.pool_used <= base.pool_used,
            "interrupted PUT kept its space (used %llu, before %llu)",
            (unsigned long long)st.pool_used,
            (unsigned long long)base.pool_used);
  KVH_OK(kvds_ping(t));
  put_derived(t, "big", BIG);
  get_check(c, "big", BIG);
  get_check(t, "big", BIG);

  /* --- killed while the worker still sends it a large inline value (the
   * queued bytes pin the object) --- */
  KVH_OK(kvds_delete(c, "big", 3));
  put_derived(c, "slow-read", BIG);
  kvh_stats(c, &base);
  pid = spawn(slow_reader, &w, &block);
  deadline = kvh_now_ms() + 5000;
  do {
    kvh_stats(c, &st);
    if (st.pinned_objects == 1)
      break;
    kvh_sleep_ms(5);
  } while (kvh_now_ms() < deadline);
  KVH_CHECK(st.pinned_objects == 1, "value in flight: %llu pinned",
            (unsigned long long)st.pinned_objects);
  KVH_OK(kvds_stat(c, "slow-read", 9, &info));
  KVH_CHECK(info.pins == 1, "slow-read: %u pins", info.pins);
  kill9(pid, block);
  wait_stats(c, 0, 0, &st, "after kill -9 of a slow reader");
  KVH_OK(kvds_delete(c, "slow-read", 9));
  kvh_stats(c, &st);
  KVH_CHECK(st.pool_used + BIG <= base.pool_used,
            "delete after the reader died freed nothing (%llu -> %llu)",
            (unsigned long long)base.pool_used,
            (unsigned long long)st.pool_used);

  kvds_client_close(t);
  kvds_client_close(c);
  kvh_worker_stop(&w);
  worker_killed();
  return kvh_finish();
}
