/*
 * test_stall: a client that stops in the middle of a request is cut off
 * after --frame-timeout-ms, and what it was writing is aborted, while an
 * idle connection and one blocked in a long GET wait are left alone.
 *
 *  - a TCP PUT announcing 1 MiB sends half the data and goes quiet;
 *  - a Unix connection sends half a header and goes quiet;
 *  - an idle client and a client waiting 10 s for a key stay connected.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "proto/proto.h"

#define BIG (1u << 20)

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_stall");
  struct kvh_worker w;
  const char *extra[] = {"--frame-timeout-ms", "1500", NULL};
  kvh_worker_start(&w, "64MiB", extra);
  kvds_client *c = kvh_connect(w.addr);
  kvds_client *idle = kvh_connect(w.tcp);

  int put_fd = kvh_raw_partial_put(w.port, "stalled", BIG, BIG / 2);
  int hdr_fd = kvh_raw_unix(w.sock);
  uint8_t half[KVDS_PROTO_HDR_LEN / 2];
  memset(half, 0, sizeof half);
  KVH_CHECK(kvh_write_all(hdr_fd, half, sizeof half) == 0, "send half");

  /* The PUT's object exists, being written, until the stall is noticed. */
  struct kvds_stats st;
  uint64_t t0 = kvh_now_ms();
  do {
    kvh_stats(c, &st);
  } while (st.objects_writing != 1 && kvh_now_ms() - t0 < 5000 &&
           (kvh_sleep_ms(10), 1));
  KVH_CHECK(st.objects_writing == 1, "the stalled PUT holds %llu objects",
            (unsigned long long)st.objects_writing);

  /* A waiting GET that outlives the frame timeout must not be cut off. */
  pid_t waiter = kvh_fork();
  if (waiter == 0) {
    kvds_client *wc = kvh_connect(w.addr);
    struct kvds_iov k = {"late", 4};
    struct kvds_value v;
    int res;
    int rc = kvds_mget(wc, 1, &k, 10000, &v, &res);
    KVH_CHECK(rc == 0 && res == 0, "waiting get: %s / %s", kvds_strerror(rc),
              kvds_strerror(res));
    KVH_CHECK(kvh_val_ok("late", 4, 100, v.data, v.len), "late value");
    kvds_release(wc, 1, &v);
    kvds_client_close(wc);
    _exit(0);
  }

  /* Both stalled connections are closed by the worker. */
  size_t got;
  char buf[256];
  KVH_CHECK(kvh_read_to_eof(put_fd, buf, sizeof buf, &got, 10000) == 0,
            "stalled PUT connection was not closed");
  KVH_CHECK(kvh_read_to_eof(hdr_fd, buf, sizeof buf, &got, 10000) == 0,
            "stalled header connection was not closed");
  uint64_t waited = kvh_now_ms() - t0;
  KVH_CHECK(waited >= 1000, "closed after %llu ms, before the timeout",
            (unsigned long long)waited);
  kvh_stats(c, &st);
  KVH_CHECK(st.objects_writing == 0, "stalled PUT left %llu objects writing",
            (unsigned long long)st.objects_writing);
  uint8_t present = 1;
  KVH_CHECK(kvds_exists(c, 1, &(struct kvds_iov){"stalled", 7}, &present) == 0,
            "exists");
  KVH_CHECK(!present, "half-written key is visible");

  /* The idle connection and the waiter survived; the waiter gets its key. */
  KVH_CHECK(kvds_ping(idle) == 0, "idle client was cut off: %s",
            kvds_client_errmsg(idle));
  void *val = kvh_val_new("late", 4, 100);
  KVH_CHECK(kvds_put(c, "late", 4, val, 100) == 0, "put late");
  free(val);
  kvh_wait_child_ok(waiter, 15000, "waiting client");

  kvds_client_close(idle);
  kvds_client_close(c);
  close(put_fd);
  close(hdr_fd);
  kvh_worker_stop(&w);
  return kvh_finish();
}
