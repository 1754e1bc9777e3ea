/*
 * test_deadlines — every libkvds call returns by its deadline under load:
 * 200 client processes (half over shared memory, half over TCP) start at
 * the same moment against one worker and, for about 15 s, connect, put,
 * get, get with a wait on keys nobody writes, mget with a wait, pin and
 * exists, each bounded by a 1 s I/O timeout (150 ms for one client in
 * four, so that some calls do time out). Every call — the connect
 * included (TCP connect, HELLO, the switch to the Unix socket and the
 * mapping of the pool) — must return within its timeout (+ wait_ms for
 * waiting reads) plus a margin, whatever it returns: a deadline overrun is
 * reported as KVDS_E_TIMEOUT, never by answering late. No speed is asserted:
 * calls may time out, and a client that timed out reconnects. Values that
 * come back are checked byte for byte, and the worker ends healthy with no
 * pins left.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define CLIENTS 200
#define TIMEOUT_MS 1000 /* the clients' I/O timeout */
#define SHORT_MS 150    /* one client in four: timeouts are bound to happen */
#define WAIT_MS 300     /* wait_ms of the waiting reads */
#define MARGIN_MS 1500  /* scheduling slack on 2 busy cores */
#define RUN_MS 15000    /* how long each client keeps calling */
#define VAL_MAX 8192

/* What a child reports to the parent through its pipe. */
struct tally {
  int timeout_ms; /* this client's */
  uint64_t calls, ok, timeouts, other, reconnects;
  uint64_t worst_ms; /* largest lateness past the call's own bound + 0 */
};

static void note(struct tally *t, int rc) {
  t->calls++;
  if (rc == 0)
    t->ok++;
  else if (rc == KVDS_E_TIMEOUT)
    t->timeouts++;
  else
    t->other++;
}

/* Fails the child unless the call that started at t0 ended by its bound. */
static void bounded(struct tally *t, uint64_t t0, int wait_ms, const char *op,
                    int rc) {
  uint64_t el = kvh_now_ms() - t0;
  uint64_t bound = (uint64_t)t->timeout_ms + (uint64_t)wait_ms;
  if (el > bound && el - bound > t->worst_ms)
    t->worst_ms = el - bound;
  KVH_CHECK(el <= bound + MARGIN_MS,
            "%s returned %s after %llu ms (timeout %d ms, wait %d ms)", op,
            kvds_err_name(rc), (unsigned long long)el, t->timeout_ms, wait_ms);
  note(t, rc);
}

static size_t mkkey(char *k, size_t cap, const char *kind, int id, int n) {
  return (size_t)snprintf(k, cap, "dl/%s/%d/%d", kind, id, n);
}

static void client(const struct kvh_worker *w, int id, int start_fd,
                   int out_fd) {
  const char *addr = id % 2 ? w->tcp : w->addr;
  /* Short timeouts on both transports. */
  struct tally t = {.timeout_ms =
                        id % 8 == 3 || id % 8 == 6 ? SHORT_MS : TIMEOUT_MS};
  uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1);
  uint8_t *buf = malloc(VAL_MAX);
  KVH_CHECK(buf, "out of memory");
  /* Everyone starts at once: the parent closes the pipe. */
  KVH_CHECK(kvh_recv_byte(start_fd, 60000) == -1, "no start signal");
  uint64_t end = kvh_now_ms() + RUN_MS;
  kvds_client *c = NULL;
  int puts = 0;
  while (kvh_now_ms() < end) {
    if (c && !kvds_client_is_connected(c)) {
      kvds_client_close(c);
      c = NULL;
      t.reconnects++;
    }
    if (!c) {
      uint64_t t0 = kvh_now_ms();
      int rc = kvds_client_connect(addr, t.timeout_ms, &c);
      bounded(&t, t0, 0, "connect", rc);
      if (rc)
        c = NULL;
      continue;
    }
    char k[64], k2[64];
    size_t kl, kl2, len = 0;
    int rc, op = (int)(kvh_rand(&rng) % 6);
    uint64_t t0 = kvh_now_ms();
    if (op == 0 || puts == 0) { /* put a new key */
      kl = mkkey(k, sizeof k, "v", id, puts);
      size_t vl = kvh_val_size(k, kl, VAL_MAX);
      kvh_val_fill(k, kl, buf, vl);
      rc = kvds_put(c, k, kl, buf, vl);
      bounded(&t, t0, 0, "put", rc);
      KVH_CHECK(rc == 0 || rc == KVDS_E_TIMEOUT || rc == KVDS_E_EXISTS ||
                    rc == KVDS_E_CLOSED,
                "put: %s", kvds_err_name(rc));
      puts++;             /* a timed-out put may still have stored the key */
    } else if (op == 1) { /* get one of ours */
      int n = (int)(kvh_rand(&rng) % (uint64_t)puts);
      kl = mkkey(k, sizeof k, "v", id, n);
      rc = kvds_get(c, k, kl, buf, VAL_MAX, &len, 0);
      bounded(&t, t0, 0, "get", rc);
      KVH_CHECK(rc != 0 ||
                    kvh_val_ok(k, kl, kvh_val_size(k, kl, VAL_MAX), buf, len),
                "get '%s': wrong value", k);
    } else if (op == 2) { /* wait for a key nobody writes */
      kl = mkkey(k, sizeof k, "never", id, (int)t.calls);
      rc = kvds_get(c, k, kl, buf, VAL_MAX, &len, WAIT_MS);
      bounded(&t, t0, WAIT_MS, "get with wait", rc);
      KVH_CHECK(rc == KVDS_E_TIMEOUT || rc == KVDS_E_CLOSED,
                "get of a key nobody writes: %s", kvds_err_name(rc));
    } else if (op == 3 || op == 4) { /* mget or pin: ours + never, waiting */
      int n = (int)(kvh_rand(&rng) % (uint64_t)puts);
      kl = mkkey(k, sizeof k, "v", id, n);
      kl2 = mkkey(k2, sizeof k2, "never", id, (int)t.calls);
      struct kvds_iov keys[2] = {{k, kl}, {k2, kl2}};
      struct kvds_value vals[2];
      int res[2];
      struct kvds_get_opts o = {.wait_ms = WAIT_MS,
                                .flags = op == 4 ? KVDS_GET_PIN : 0};
      rc = kvds_mget_ex(c, 2, keys, &o, vals, res);
      bounded(&t, t0, WAIT_MS, op == 4 ? "pin" : "mget", rc);
      if (rc == 0) {
        KVH_CHECK(res[1] == KVDS_E_TIMEOUT, "mget of a key nobody writes: %s",
                  kvds_err_name(res[1]));
        size_t want = kvh_val_size(k, kl, VAL_MAX);
        KVH_CHECK(res[0] != 0 || op == 4 ||
                      kvh_val_ok(k, kl, want, vals[0].data, vals[0].len),
                  "mget '%s': wrong value", k);
        KVH_CHECK(res[0] != 0 || vals[0].len == want, "pin '%s': size %zu", k,
                  vals[0].len);
        KVH_OK(kvds_release(c, 2, vals));
      }
    } else { /* exists */
      kl = mkkey(k, sizeof k, "v", id, 0);
      uint8_t present = 0;
      struct kvds_iov key = {k, kl};
      rc = kvds_exists(c, 1, &key, &present);
      bounded(&t, t0, 0, "exists", rc);
    }
  }
  kvds_client_close(c);
  free(buf);
  KVH_CHECK(kvh_write_all(out_fd, &t, sizeof t) == 0, "report");
  _exit(0);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_deadlines");
  struct kvh_worker w;
  static const char *const extra[] = {"--threads", "2", NULL};
  kvh_worker_start(&w, "256MiB", extra);

  int start[2], out[2];
  KVH_CHECK(pipe(start) == 0 && pipe(out) == 0, "pipe");
  pid_t pids[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) {
    pids[i] = kvh_fork();
    if (pids[i] == 0) {
      close(start[1]);
      close(out[0]);
      client(&w, i, start[0], out[1]);
    }
  }
  close(start[0]);
  close(out[1]);
  close(start[1]); /* go */

  struct tally sum = {0};
  for (int i = 0; i < CLIENTS; i++) {
    struct tally t;
    KVH_CHECK(kvh_read_all(out[0], &t, sizeof t, RUN_MS + 60000) == 0,
              "a client reported nothing (see its FAIL line)");
    sum.calls += t.calls;
    sum.ok += t.ok;
    sum.timeouts += t.timeouts;
    sum.other += t.other;
    sum.reconnects += t.reconnects;
    if (t.worst_ms > sum.worst_ms)
      sum.worst_ms = t.worst_ms;
  }
  for (int i = 0; i < CLIENTS; i++)
    kvh_wait_child_ok(pids[i], 30000, "load client");
  close(out[0]);
  printf("%d clients: %llu calls, %llu ok, %llu timeouts, %llu other errors, "
         "%llu reconnects; latest return %llu ms past timeout (+ wait)\n",
         CLIENTS, (unsigned long long)sum.calls, (unsigned long long)sum.ok,
         (unsigned long long)sum.timeouts, (unsigned long long)sum.other,
         (unsigned long long)sum.reconnects, (unsigned long long)sum.worst_ms);
  KVH_CHECK(sum.ok > 0, "no call succeeded");

  /* The worker is healthy, and every pin went with its client. */
  kvds_client *c = kvh_connect(w.addr);
  struct kvds_stats st;
  uint64_t t0 = kvh_now_ms();
  for (;;) {
    kvh_stats(c, &st);
    if ((st.pinned_objects == 0 && st.connections == 1) ||
        kvh_now_ms() - t0 > 10000)
      break;
    kvh_sleep_ms(20);
  }
  KVH_CHECK(st.pinned_objects == 0, "%llu objects still pinned",
            (unsigned long long)st.pinned_objects);
  KVH_CHECK(st.connections == 1, "%llu connections still open",
            (unsigned long long)st.connections);
  KVH_CHECK(st.objects_writing == 0, "%llu objects still being written",
            (unsigned long long)st.objects_writing);
  kvds_client_close(c);
  kvh_worker_stop(&w);
  return kvh_finish();
}
