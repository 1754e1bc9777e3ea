/*
 * test_min_rate — a frame in progress must keep moving at --min-rate once
 * it has been in progress longer than --frame-timeout-ms, in both
 * directions:
 *
 *  - PUTs whose data trickles in (a byte every 200 ms: progress, so the
 *    no-progress frame timeout never fires) are cut off, their objects
 *    aborted and never visible, the pool space given back, the closes
 *    counted (STATS connections_closed_slow, /metrics);
 *  - readers that take a large GET reply at a trickle (over the Unix socket,
 *    where the worker still makes progress every few hundred ms; over TCP)
 *    are cut off and their pins released (what the kernel had buffered
 *    still reaches them, so the worker's side is what is checked);
 *  - a PUT streaming steadily well above the rate for longer than the frame
 *    timeout is stored.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "harness_counters.h"
#include "proto/proto.h"

#define NTRICKLE 4
#define TRICKLE_SIZE (8u << 20)
#define BIG (24u << 20) /* more than socket buffers hold */
#define STEADY_CHUNK (512u << 10)
#define STEADY_CHUNKS 24

static void wait_writing(kvds_client *c, uint64_t want) {
  struct kvds_stats st;
  uint64_t t0 = kvh_now_ms();
  do {
    kvh_stats(c, &st);
  } while (st.objects_writing != want && kvh_now_ms() - t0 < 5000 &&
           (kvh_sleep_ms(10), 1));
  KVH_CHECK(st.objects_writing == want, "%llu objects writing, want %llu",
            (unsigned long long)st.objects_writing, (unsigned long long)want);
}

static void trickling_puts(struct kvh_worker *w, kvds_client *c) {
  int fd[NTRICKLE], open_n = NTRICKLE;
  char key[NTRICKLE][16];
  for (int i = 0; i < NTRICKLE; i++) {
    snprintf(key[i], sizeof key[i], "trickle-%d", i);
    fd[i] = kvh_raw_partial_put(w->port, key[i], TRICKLE_SIZE, 4096);
  }
  wait_writing(c, NTRICKLE);
  struct kvds_stats st;
  kvh_stats(c, &st);
  KVH_CHECK(st.pool_used >= (uint64_t)NTRICKLE * TRICKLE_SIZE,
            "the trickling PUTs hold only %llu bytes",
            (unsigned long long)st.pool_used);

  uint64_t t0 = kvh_now_ms();
  while (open_n > 0 && kvh_now_ms() - t0 < 15000) {
    for (int i = 0; i < NTRICKLE; i++) {
      if (fd[i] < 0)
        continue;
      uint8_t b = 0x5a;
      ssize_t r = send(fd[i], &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      if ((r < 0 && errno != EAGAIN) || kvh_peer_closed(fd[i])) {
        close(fd[i]);
        fd[i] = -1;
        open_n--;
      }
    }
    kvh_sleep_ms(200);
  }
  uint64_t took = kvh_now_ms() - t0;
  KVH_CHECK(open_n == 0,
            "%d PUTs trickling a byte every 200 ms kept their connections "
            "(and %u MiB each) for 15 s",
            open_n, TRICKLE_SIZE >> 20);
  KVH_CHECK(took >= 1000, "cut off after %llu ms, before the frame timeout",
            (unsigned long long)took);

  wait_writing(c, 0);
  kvh_stats(c, &st);
  KVH_CHECK(st.pool_used == 0, "%llu pool bytes still used",
            (unsigned long long)st.pool_used);
  for (int i = 0; i < NTRICKLE; i++) {
    uint8_t present = 1;
    KVH_OK(kvds_exists(c, 1, &(struct kvds_iov){key[i], strlen(key[i])},
                       &present));
    KVH_CHECK(!present, "%s is visible after its PUT was cut off", key[i]);
  }
}

/*
 * A GET of BIG bytes sent inline, read 64 KiB every 300 ms (about
 * 213 KiB/s). Over the Unix socket (small socket buffers) the worker makes
 * progress every few hundred ms, so only --min-rate can cut it off; over
 * TCP the worker's socket buffer grows to megabytes and drains so slowly
 * that the no-progress frame timeout does it.
 */
static void trickling_reader(struct kvh_worker *w, kvds_client *c,
                             int is_unix) {
  int fd;
  if (is_unix) {
    fd = kvh_raw_unix(w->sock);
  } else {
    /* A small receive buffer, set before connecting. */
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 16 << 10;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)w->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    KVH_CHECK(fd >= 0 &&
                  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) ==
                      0 &&
                  connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0,
              "connect: %s", strerror(errno));
  }
  struct kvh_frame f;
  kvh_frame_init(&f, KVDS_OP_GET, 7);
  f.h.flags = KVDS_PF_INLINE;
  kvh_frame_item(&f, 0, "big", 3);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send GET");

  static uint8_t buf[64u << 10];
  uint64_t got = 0, t0 = kvh_now_ms();
  struct kvds_stats st;
  do {
    kvh_stats(c, &st);
  } while (st.pinned_objects != 1 && kvh_now_ms() - t0 < 5000 &&
           (kvh_sleep_ms(10), 1));
  KVH_CHECK(st.pinned_objects == 1, "the value being sent is not pinned");
  while (st.pinned_objects && kvh_now_ms() - t0 < 15000) {
    ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r > 0)
      got += (uint64_t)r;
    kvh_sleep_ms(300);
    kvh_stats(c, &st);
  }
  close(fd);
  KVH_CHECK(st.pinned_objects == 0,
            "a %s reader taking 213 KiB/s held its pin for 15 s (%llu bytes "
            "read)",
            is_unix ? "Unix" : "TCP", (unsigned long long)got);
  KVH_CHECK(got < BIG, "the whole value arrived (%llu bytes)",
            (unsigned long long)got);
}

/* STEADY_CHUNKS x 512 KiB, one chunk every 100 ms (about 5 MiB/s), lasting
 * longer than the frame timeout: stored. */
static void steady_put(struct kvh_worker *w, kvds_client *c) {
  const uint64_t size = (uint64_t)STEADY_CHUNK * STEADY_CHUNKS;
  int fd = kvh_raw_partial_put(w->port, "steady", size, 0);
  uint8_t *chunk = malloc(STEADY_CHUNK);
  KVH_CHECK(chunk, "out of memory");
  memset(chunk, 0x5a, STEADY_CHUNK);
  for (int i = 0; i < STEADY_CHUNKS; i++) {
    KVH_CHECK(kvh_write_all(fd, chunk, STEADY_CHUNK) == 0,
              "steady PUT cut off after %d chunks: %s", i, strerror(errno));
    kvh_sleep_ms(100);
  }
  free(chunk);
  struct kvds_proto_hdr h;
  uint8_t *body = NULL;
  KVH_CHECK(kvh_read_reply(fd, &h, &body, 5000) == 0,
            "steady PUT: connection closed instead of a reply");
  struct kvds_proto_item it;
  const uint8_t *key;
  size_t pos = 0;
  KVH_CHECK(h.status == 0 && h.count == 1 &&
                kvds_proto_item_decode(body, h.meta_len, &pos, &it, &key) ==
                    0 &&
                it.status == 0,
            "steady PUT failed: %s", kvds_err_name(h.status));
  free(body);
  close(fd);
  uint8_t present = 0;
  KVH_OK(kvds_exists(c, 1, &(struct kvds_iov){"steady", 6}, &present));
  KVH_CHECK(present, "steady value missing");
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_min_rate");
  struct kvh_worker w;
  int hport = kvh_free_port();
  char hp[16];
  snprintf(hp, sizeof hp, "%d", hport);
  const char *extra[] = {"--frame-timeout-ms", "1500", "--min-rate", "512KiB",
                         "--http-port",        hp,     NULL};
  kvh_worker_start(&w, "64MiB", extra);
  kvds_client *c = kvh_connect(w.unix_addr);

  trickling_puts(&w, c);
  int s = kvh_raw_tcp(w.port);
  KVH_CHECK(kvh_stats_item(s, "connections_closed_slow") == NTRICKLE,
            "STATS connections_closed_slow != %d", NTRICKLE);

  void *val = kvh_val_new("big", 3, BIG);
  KVH_OK(kvds_put(c, "big", 3, val, BIG));
  free(val);
  trickling_reader(&w, c, 1);
  trickling_reader(&w, c, 0);
  KVH_CHECK(kvh_metric(hport, "kvds_connections_closed_slow_total") ==
                NTRICKLE + 2,
            "kvds_connections_closed_slow_total != %d", NTRICKLE + 2);

  steady_put(&w, c);
  KVH_CHECK(kvh_stats_item(s, "connections_closed_slow") == NTRICKLE + 2,
            "the steady PUT was counted as slow");
  close(s);
  kvds_client_close(c);
  kvh_worker_stop(&w);
  return kvh_finish();
}
