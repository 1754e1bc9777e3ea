/*
 * test_conn_limits — connections are bounded:
 *
 *  A. --idle-timeout-s: connections that hold nothing and send nothing are
 *     closed after it (counted in connections_closed_idle); a client holding
 *     pins (Unix or TCP), one writing an object, and one waiting in a GET
 *     outlive it several times over; once the pins are released that
 *     client is idle too and goes.
 *  B. --max-connections: at the cap the worker closes the least recently
 *     active connection that holds nothing — one that never sent a request
 *     first — to admit a new one; with every connection holding pins a new
 *     one is answered KVDS_E_LIMIT and closed; the busy ones keep working.
 *  C. The default cap comes from RLIMIT_NOFILE: with 64 descriptors and 100
 *     idle sockets, a new client is still served (before, accept failed
 *     with EMFILE and new clients hung).
 *  D. Several I/O threads: the idle connections to close may belong to
 *     another thread than the one that accepts.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "harness_counters.h"
#include "proto/proto.h"

static int wait_closed(int fd, int timeout_ms) {
  uint64_t t0 = kvh_now_ms();
  while (!kvh_peer_closed(fd)) {
    if (kvh_now_ms() - t0 > (uint64_t)timeout_ms)
      return 0;
    kvh_sleep_ms(10);
  }
  return 1;
}

static void raw_ping(int fd, uint64_t id) {
  struct kvh_frame f;
  kvh_frame_init(&f, KVDS_OP_PING, id);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send PING");
  struct kvds_proto_hdr h;
  KVH_CHECK(kvh_read_reply(fd, &h, NULL, 5000) == 0 && h.status == 0,
            "PING failed");
}

static void wait_metric(int hport, const char *name, uint64_t want) {
  uint64_t t0 = kvh_now_ms(), v;
  while ((v = kvh_metric(hport, name)) != want && kvh_now_ms() - t0 < 8000)
    kvh_sleep_ms(20);
  KVH_CHECK(v == want, "%s = %llu, want %llu", name, (unsigned long long)v,
            (unsigned long long)want);
}

static const char *port_arg(int port) {
  static char s[4][16];
  static int i;
  i = (i + 1) % 4;
  snprintf(s[i], sizeof s[i], "%d", port);
  return s[i];
}

/* Holds a pin on key: a vLLM scheduler between a lookup and its load. */
static kvds_client *pinner(const char *addr, const char *key,
                           struct kvds_value *v, unsigned flags) {
  kvds_client *c = kvh_connect(addr);
  struct kvds_get_opts o = {.flags = flags};
  int res;
  KVH_OK(kvds_mget_ex(c, 1, &(struct kvds_iov){(void *)key, strlen(key)}, &o, v,
                      &res));
  KVH_OK(res);
  return c;
}

static void part_idle(void) {
  struct kvh_worker w;
  int hport = kvh_free_port();
  const char *extra[] = {"--idle-timeout-s", "1", "--http-port",
                         port_arg(hport), NULL};
  kvh_worker_start(&w, "16MiB", extra);
  kvds_client *c = kvh_connect(w.unix_addr);
  KVH_OK(kvds_put(c, "k", 1, "v", 1));
  kvds_client_close(c);

  uint64_t t0 = kvh_now_ms();
  int raw = kvh_raw_tcp(w.port); /* never says anything */
  kvds_client *used = kvh_connect(w.tcp);
  KVH_OK(kvds_ping(used)); /* then says nothing more */
  struct kvds_value pv, tv;
  kvds_client *p = pinner(w.unix_addr, "k", &pv, 0);
  kvds_client *tp = pinner(w.tcp, "k", &tv, KVDS_GET_PIN);
  kvds_client *wr = kvh_connect(w.unix_addr);
  struct kvds_wbuf wb;
  KVH_OK(kvds_create(wr, "w", 1, 4096, &wb));
  pid_t waiter = kvh_fork();
  if (waiter == 0) {
    kvds_client *wc = kvh_connect(w.unix_addr);
    char b[8];
    size_t len;
    int rc = kvds_get(wc, "late", 4, b, sizeof b, &len, 8000);
    KVH_CHECK(rc == 0 && len == 4 && memcmp(b, "LATE", 4) == 0,
              "waiting GET: %s", kvds_err_name(rc));
    kvds_client_close(wc);
    _exit(0);
  }

  KVH_CHECK(wait_closed(raw, 10000), "an idle connection was not closed");
  KVH_CHECK(kvh_now_ms() - t0 >= 900, "closed before the idle timeout");
  /* Busy clients outlive the timeout three times over. */
  while (kvh_now_ms() - t0 < 3500)
    kvh_sleep_ms(50);
  KVH_CHECK(kvds_ping(used) != 0, "an idle client was not closed");
  KVH_CHECK(kvds_ping(p) == 0, "a client holding a pin was cut off: %s",
            kvds_client_errmsg(p));
  KVH_CHECK(kvds_ping(tp) == 0, "a TCP client holding a pin was cut off: %s",
            kvds_client_errmsg(tp));
  memset(wb.data, 7, wb.len);
  KVH_CHECK(kvds_seal(wr, &wb) == 0, "a client writing was cut off: %s",
            kvds_client_errmsg(wr));
  c = kvh_connect(w.unix_addr);
  KVH_OK(kvds_put(c, "late", 4, "LATE", 4));
  kvh_wait_child_ok(waiter, 10000, "waiting client");
  KVH_CHECK(kvh_metric(hport, "kvds_connections_closed_idle_total") == 2,
            "kvds_connections_closed_idle_total != 2");

  /* Released: idle now, and closed like any other. */
  KVH_OK(kvds_release(p, 1, &pv));
  KVH_OK(kvds_release(tp, 1, &tv));
  /* p, tp, wr (sealed) and c go; the waiter closed its own. */
  wait_metric(hport, "kvds_connections_closed_idle_total", 6);
  KVH_CHECK(kvds_ping(p) != 0, "released client still connected");
  KVH_CHECK(kvds_ping(tp) != 0, "released TCP client still connected");
  close(raw);
  kvds_client_close(used);
  kvds_client_close(p);
  kvds_client_close(tp);
  kvds_client_close(wr);
  kvds_client_close(c);
  kvh_worker_stop(&w);
}

static void part_cap(void) {
  struct kvh_worker w;
  int hport = kvh_free_port();
  const char *extra[] = {"--max-connections", "4", "--http-port",
                         port_arg(hport), NULL};
  kvh_worker_start(&w, "16MiB", extra);
  {
    kvds_client *c = kvh_connect(w.unix_addr);
    KVH_OK(kvds_put(c, "k", 1, "v", 1));
    kvds_client_close(c);
  }
  wait_metric(hport, "kvds_connections", 0);
  KVH_CHECK(kvh_metric(hport, "kvds_max_connections") == 4,
            "kvds_max_connections != 4");

  int r_old = kvh_raw_tcp(w.port);
  wait_metric(hport, "kvds_connections", 1);
  int r_used = kvh_raw_tcp(w.port);
  raw_ping(r_used, 1);
  struct kvds_value v[4];
  kvds_client *p[4];
  p[0] = pinner(w.unix_addr, "k", &v[0], 0);
  int r_new = kvh_raw_tcp(w.port);
  wait_metric(hport, "kvds_connections", 4);

  /* At the cap: the oldest connection that never sent a request goes. */
  kvds_client *n1 = kvh_connect(w.unix_addr);
  KVH_CHECK(wait_closed(r_old, 5000), "r_old not closed to make room");
  KVH_CHECK(!kvh_peer_closed(r_new) && !kvh_peer_closed(r_used),
            "closed the wrong connection");
  kvds_client *n2 = kvh_connect(w.unix_addr);
  KVH_CHECK(wait_closed(r_new, 5000), "r_new not closed to make room");
  /* Then the least recently active one. */
  kvds_client *n3 = kvh_connect(w.unix_addr);
  KVH_CHECK(wait_closed(r_used, 5000), "r_used not closed to make room");
  KVH_OK(kvds_ping(n1));
  KVH_OK(kvds_ping(n2));
  kvds_client_close(n1);
  kvds_client_close(n2);
  kvds_client_close(n3);
  wait_metric(hport, "kvds_connections", 1);
  for (int i = 1; i < 4; i++)
    p[i] = pinner(w.unix_addr, "k", &v[i], 0);
  KVH_CHECK(kvh_metric(hport, "kvds_connections_closed_for_room_total") == 3,
            "kvds_connections_closed_for_room_total != 3");

  /* Every connection holds a pin: a new one is refused with an answer. */
  int r = kvh_raw_tcp(w.port);
  struct kvh_frame f;
  kvh_frame_init(&f, KVDS_OP_PING, 42);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(r, f.b, f.len) == 0, "send PING");
  struct kvds_proto_hdr h;
  KVH_CHECK(kvh_read_reply(r, &h, NULL, 5000) == 0, "refused without a reply");
  KVH_CHECK(h.req_id == 42 && h.status == KVDS_E_LIMIT,
            "refusal: id %llu status %s", (unsigned long long)h.req_id,
            kvds_err_name(h.status));
  KVH_CHECK(wait_closed(r, 5000), "refused connection left open");
  close(r);
  kvds_client *x = NULL;
  int rc = kvds_client_connect(w.unix_addr, 2000, &x);
  KVH_CHECK(rc == KVDS_E_LIMIT, "connect at the cap: %s, want KVDS_E_LIMIT",
            kvds_err_name(rc));
  for (int i = 0; i < 4; i++)
    KVH_CHECK(kvds_ping(p[i]) == 0, "busy client %d cut off: %s", i,
              kvds_client_errmsg(p[i]));
  KVH_CHECK(kvh_metric(hport, "kvds_connections_refused_total") == 2,
            "kvds_connections_refused_total != 2");
  KVH_CHECK(kvh_metric(hport, "kvds_connections") == 4,
            "kvds_connections != 4");

  /* A released client is idle again: it makes room for the next. */
  KVH_OK(kvds_release(p[3], 1, &v[3]));
  KVH_OK(kvds_ping(p[3]));
  kvds_client *n4 = kvh_connect(w.unix_addr);
  KVH_OK(kvds_ping(n4));
  KVH_CHECK(kvds_ping(p[3]) != 0, "the idle client was not the one closed");
  kvds_client_close(n4);
  for (int i = 0; i < 4; i++) {
    if (i < 3)
      KVH_OK(kvds_release(p[i], 1, &v[i]));
    kvds_client_close(p[i]);
  }
  close(r_old);
  close(r_new);
  close(r_used);
  kvh_worker_stop(&w);
}

#define NOFILE 64
#define NIDLE 100

static void part_rlimit(void) {
  struct rlimit old, low;
  KVH_CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0, "getrlimit");
  KVH_CHECK(old.rlim_cur >= 2 * NIDLE, "this test needs %d fds", 2 * NIDLE);
  low = old;
  low.rlim_cur = NOFILE; /* inherited by the worker only */
  KVH_CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit: %s",
            strerror(errno));
  struct kvh_worker w;
  int hport = kvh_free_port();
  const char *extra[] = {"--http-port", port_arg(hport), NULL};
  kvh_worker_start(&w, "8MiB", extra);
  KVH_CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0, "setrlimit: %s",
            strerror(errno));
  uint64_t max = kvh_metric(hport, "kvds_max_connections");
  KVH_CHECK(max > 0 && max < NOFILE, "kvds_max_connections %llu with %d fds",
            (unsigned long long)max, NOFILE);

  int fds[NIDLE];
  for (int i = 0; i < NIDLE; i++)
    fds[i] = kvh_raw_tcp(w.port);
  uint64_t deadline = kvh_now_ms() + 10000;
  int rc;
  for (;;) {
    kvds_client *n = NULL;
    rc = kvds_client_connect(w.tcp, 2000, &n);
    if (rc == 0)
      rc = kvds_ping(n);
    kvds_client_close(n);
    if (rc == 0 || kvh_now_ms() > deadline)
      break;
    kvh_sleep_ms(50);
  }
  KVH_CHECK(rc == 0, "no new client served with %d idle sockets open: %s",
            NIDLE, kvds_err_name(rc));
  KVH_CHECK(kvh_metric(hport, "kvds_connections") <= max,
            "more connections than kvds_max_connections");
  KVH_CHECK(kvh_metric(hport, "kvds_connections_closed_for_room_total") >=
                NIDLE - max,
            "fewer idle connections closed than needed");
  for (int i = 0; i < NIDLE; i++)
    close(fds[i]);
  kvh_worker_stop(&w);
}

#define NRAW 8
#define NCLIENT 10

static void part_threads(void) {
  struct kvh_worker w;
  int hport = kvh_free_port();
  const char *extra[] = {"--threads", "4",           "--max-connections",
                         "8",         "--http-port", port_arg(hport),
                         NULL};
  kvh_worker_start(&w, "16MiB", extra);
  wait_metric(hport, "kvds_connections", 0);
  int raw[NRAW];
  for (int i = 0; i < NRAW; i++)
    raw[i] = kvh_raw_tcp(w.port);
  wait_metric(hport, "kvds_connections", NRAW);
  kvds_client *cl[NCLIENT];
  for (int i = 0; i < NCLIENT; i++) {
    cl[i] = kvh_connect(w.unix_addr);
    KVH_OK(kvds_ping(cl[i]));
  }
  /* The silent sockets went first, whichever thread owned them. */
  for (int i = 0; i < NRAW; i++)
    KVH_CHECK(wait_closed(raw[i], 5000), "silent socket %d still open", i);
  KVH_CHECK(kvh_metric(hport, "kvds_connections") <= 8,
            "more connections than --max-connections");
  KVH_CHECK(kvds_ping(cl[NCLIENT - 1]) == 0, "newest client cut off");
  for (int i = 0; i < NCLIENT; i++)
    kvds_client_close(cl[i]);
  for (int i = 0; i < NRAW; i++)
    close(raw[i]);
  kvh_worker_stop(&w);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_conn_limits");
  part_idle();
  part_cap();
  part_rlimit();
  part_threads();
  return kvh_finish();
}
