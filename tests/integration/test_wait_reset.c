/*
 * test_wait_reset — a connection with two GETs waiting (pipelined on one
 * TCP connection) is reset by its client at the moment a single SEAL
 * completes both waits. The worker completes the waits from its inbox and
 * finds the connection dead while doing so: it must drop the connection and
 * both waits without touching freed memory, and keep serving.
 *
 * The reset is timed to land while the worker hashes the two large objects
 * being sealed (over TCP the worker checksums what it received), so that
 * the worker sees it only when it writes the first woken reply. A short
 * sleep places the reset inside that window; no assertion depends on it.
 * Several attempts are made; each must leave the worker healthy.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "proto/proto.h"

#define OBJ (48u << 20)
#define ATTEMPTS 4

struct frame {
  uint8_t b[1024];
  size_t len;
  struct kvds_proto_hdr h;
};

static void f_init(struct frame *f, uint8_t op, uint64_t id, uint32_t arg) {
  memset(f, 0, sizeof *f);
  f->h = (struct kvds_proto_hdr){.magic = KVDS_PROTO_MAGIC,
                                 .version = KVDS_PROTO_VERSION,
                                 .opcode = op,
                                 .req_id = id,
                                 .arg = arg};
  f->len = KVDS_PROTO_HDR_LEN;
}

static void f_item(struct frame *f, uint64_t a, uint64_t b, uint64_t c,
                   const void *key, size_t klen) {
  struct kvds_proto_item it = {.klen = (uint32_t)klen, .a = a, .b = b, .c = c};
  f->len += kvds_proto_item_encode(&it, key, f->b + f->len);
  f->h.count++;
}

static void f_send(int fd, struct frame *f, uint64_t data_len) {
  f->h.meta_len = (uint32_t)(f->len - KVDS_PROTO_HDR_LEN);
  f->h.data_len = data_len;
  kvds_proto_hdr_encode(&f->h, f->b);
  kvds_proto_seal_frame(f->b, f->b + KVDS_PROTO_HDR_LEN, f->h.meta_len);
  KVH_CHECK(kvh_write_all(fd, f->b, f->len) == 0, "send: %s", strerror(errno));
}

/* Reads one reply (header + meta, no data expected) and returns its items'
 * `a` fields into a[] (up to n). */
static void read_reply(int fd, uint64_t want_id, uint64_t *a, int n) {
  uint8_t buf[4096];
  struct kvds_proto_hdr h;
  KVH_CHECK(kvh_read_all(fd, buf, KVDS_PROTO_HDR_LEN, 20000) == 0 &&
                kvds_proto_hdr_decode(buf, KVDS_PROTO_HDR_LEN, &h) == 0 &&
                h.req_id == want_id && h.status == 0 &&
                h.meta_len <= sizeof buf - KVDS_PROTO_HDR_LEN &&
                h.data_len == 0,
            "reply %llu missing or wrong", (unsigned long long)want_id);
  KVH_CHECK(kvh_read_all(fd, buf + KVDS_PROTO_HDR_LEN, h.meta_len, 5000) == 0,
            "reply %llu cut short", (unsigned long long)want_id);
  size_t pos = 0;
  for (uint32_t i = 0; i < h.count; i++) {
    struct kvds_proto_item it;
    const uint8_t *key;
    KVH_CHECK(kvds_proto_item_decode(buf + KVDS_PROTO_HDR_LEN, h.meta_len, &pos,
                                     &it, &key) == 0 &&
                  it.status == 0,
              "reply %llu: item %u: %s", (unsigned long long)want_id, i,
              kvds_err_name(it.status));
    if ((int)i < n)
      a[i] = it.a;
  }
}

static void attempt(const struct kvh_worker *w, int i, uint8_t *data) {
  char ka[32], kb[32];
  size_t la = (size_t)snprintf(ka, sizeof ka, "reset/%d/a", i);
  size_t lb = (size_t)snprintf(kb, sizeof kb, "reset/%d/b", i);

  /* The waiter: two GETs pipelined on one connection. */
  int wfd = kvh_raw_tcp(w->port);
  struct frame f;
  f_init(&f, KVDS_OP_GET, 1, 20000);
  f.h.flags = KVDS_PF_INLINE;
  f_item(&f, 0, 0, 0, ka, la);
  f_send(wfd, &f, 0);
  f_init(&f, KVDS_OP_GET, 2, 20000);
  f.h.flags = KVDS_PF_INLINE;
  f_item(&f, 0, 0, 0, kb, lb);
  f_send(wfd, &f, 0);

  /* The writer: both objects created and written, sealed in one SEAL. */
  int xfd = kvh_raw_tcp(w->port);
  f_init(&f, KVDS_OP_CREATE, 10, 0);
  f_item(&f, OBJ, 0, 0, ka, la);
  f_item(&f, OBJ, 0, 0, kb, lb);
  f_send(xfd, &f, 0);
  uint64_t h[2];
  read_reply(xfd, 10, h, 2);
  f_init(&f, KVDS_OP_WRITE, 11, 0);
  f_item(&f, h[0], 0, OBJ, NULL, 0);
  f_item(&f, h[1], 0, OBJ, NULL, 0);
  f_send(xfd, &f, 2ull * OBJ);
  KVH_CHECK(kvh_write_all(xfd, data, OBJ) == 0 &&
                kvh_write_all(xfd, data, OBJ) == 0,
            "send data: %s", strerror(errno));
  read_reply(xfd, 11, NULL, 0);

  /* Seal both, then reset the waiter while the worker hashes. */
  f_init(&f, KVDS_OP_SEAL, 12, 0);
  f_item(&f, h[0], 0, 0, NULL, 0);
  f_item(&f, h[1], 0, 0, NULL, 0);
  f_send(xfd, &f, 0);
  kvh_sleep_ms(1);
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(wfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(wfd);
  read_reply(xfd, 12, NULL, 0);
  close(xfd);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "wait_reset");
  struct kvh_worker w;
  /* Two 48 MiB objects being written on one connection. */
  kvh_worker_start(&w, "256MiB",
                   (const char *const[]){"--threads", "1",
                                         "--max-writing-per-conn", "256MiB",
                                         NULL});
  uint8_t *data = malloc(OBJ);
  KVH_CHECK(data, "out of memory");
  kvh_val_fill("reset", 5, data, OBJ);
  kvds_client *c = kvh_connect(w.tcp);
  for (int i = 0; i < ATTEMPTS; i++) {
    attempt(&w, i, data);
    KVH_OK(kvds_ping(c));
    char k[32];
    for (int j = 0; j < 2; j++) {
      size_t kl = (size_t)snprintf(k, sizeof k, "reset/%d/%c", i, "ab"[j]);
      struct kvds_object_info info;
      KVH_OK(kvds_stat(c, k, kl, &info));
      KVH_CHECK(info.state == KVDS_STATE_SEALED && info.size == OBJ &&
                    info.checksum == kvds_checksum(data, OBJ),
                "%s: state %d size %zu", k, info.state, info.size);
      KVH_OK(kvds_delete(c, k, kl));
    }
  }
  struct kvds_stats st;
  uint64_t deadline = kvh_now_ms() + 5000;
  do {
    kvh_stats(c, &st);
    if (st.pinned_objects == 0 && st.connections == 1)
      break;
    kvh_sleep_ms(10);
  } while (kvh_now_ms() < deadline);
  KVH_CHECK(st.pinned_objects == 0 && st.connections == 1,
            "pinned %llu connections %llu after the resets",
            (unsigned long long)st.pinned_objects,
            (unsigned long long)st.connections);
  kvds_client_close(c);
  free(data);
  kvh_worker_stop(&w);
  return kvh_finish();
}
