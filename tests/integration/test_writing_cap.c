/*
 * test_writing_cap — one connection may hold at most --max-writing-per-conn
 * bytes in objects being written (default: a quarter of the pool; here a
 * 16 MiB pool, so 4 MiB), counting objects created and not sealed and PUTs
 * in flight:
 *
 *  - CREATE beyond it answers KVDS_E_NOSPACE for that item (what clients
 *    already skip, as for a full pool), counted in STATS writing_refused
 *    (and nospace);
 *  - a PUT item beyond it answers KVDS_E_NOSPACE, its data is read and
 *    dropped (the connection stays in step), and nothing is left behind;
 *  - sealing or aborting gives the room back; other connections have their
 *    own room; a single object larger than the cap is still taken by a
 *    connection that writes nothing else;
 *  - closing the connection aborts what it was writing.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "harness_counters.h"
#include "proto/proto.h"

#define OBJ (1536u << 10) /* three of them pass the 4 MiB cap */

/* Reads a reply to req_id and returns its items' statuses in st[] and their
 * `a` fields in a[] (either may be NULL); the reply's own status is the
 * return value. */
static int reply_items(int fd, uint64_t req_id, uint32_t n, int32_t *st,
                       uint64_t *a) {
  struct kvds_proto_hdr h;
  uint8_t *body = NULL;
  KVH_CHECK(kvh_read_reply(fd, &h, &body, 5000) == 0,
            "connection closed instead of replying to request %llu",
            (unsigned long long)req_id);
  KVH_CHECK(h.req_id == req_id, "reply to %llu, want %llu",
            (unsigned long long)h.req_id, (unsigned long long)req_id);
  KVH_CHECK(h.status || h.count == n, "%u reply items, want %u", h.count, n);
  size_t pos = 0;
  for (uint32_t i = 0; i < h.count && i < n; i++) {
    struct kvds_proto_item it;
    const uint8_t *key;
    KVH_CHECK(kvds_proto_item_decode(body, h.meta_len, &pos, &it, &key) == 0,
              "bad reply item");
    if (st)
      st[i] = it.status;
    if (a)
      a[i] = it.a;
  }
  free(body);
  return h.status;
}

/* CREATE key (size bytes); returns the item's status, *handle on success. */
static int create(int fd, const char *key, uint64_t size, uint64_t *handle) {
  static uint64_t id = 100;
  struct kvh_frame f;
  kvh_frame_init(&f, KVDS_OP_CREATE, ++id);
  kvh_frame_item(&f, size, key, strlen(key));
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send CREATE");
  int32_t st;
  uint64_t a;
  KVH_OK(reply_items(fd, id, 1, &st, &a));
  if (st == 0)
    *handle = a;
  return st;
}

static void abort_handle(int fd, uint64_t handle) {
  struct kvh_frame f;
  kvh_frame_init(&f, KVDS_OP_ABORT, 90);
  kvh_frame_item(&f, handle, NULL, 0);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send ABORT");
  int32_t st;
  KVH_OK(reply_items(fd, 90, 1, &st, NULL));
  KVH_OK(st);
}

/* PUT of n keys with sizes[i] bytes each (all data sent); statuses in st. */
static void put(int fd, uint32_t n, const char *const *keys,
                const uint64_t *sizes, int32_t *st) {
  struct kvh_frame f;
  uint64_t total = 0;
  kvh_frame_init(&f, KVDS_OP_PUT, 80);
  for (uint32_t i = 0; i < n; i++) {
    kvh_frame_item(&f, sizes[i], keys[i], strlen(keys[i]));
    total += sizes[i];
  }
  f.h.data_len = total;
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send PUT");
  uint8_t *data = malloc(total);
  KVH_CHECK(data, "out of memory");
  memset(data, 0x33, total);
  KVH_CHECK(kvh_write_all(fd, data, total) == 0, "send PUT data: %s",
            strerror(errno));
  free(data);
  KVH_OK(reply_items(fd, 80, n, st, NULL));
}

static void ping(int fd) {
  struct kvh_frame f;
  kvh_frame_init(&f, KVDS_OP_PING, 70);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send PING");
  KVH_OK(reply_items(fd, 70, 0, NULL, NULL));
}

static int present(kvds_client *c, const char *key) {
  uint8_t p = 0;
  KVH_OK(kvds_exists(c, 1, &(struct kvds_iov){(void *)key, strlen(key)}, &p));
  return p;
}

static uint64_t writing(kvds_client *c) {
  struct kvds_stats st;
  kvh_stats(c, &st);
  return st.objects_writing;
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_writing_cap");
  struct kvh_worker w;
  kvh_worker_start(&w, "16MiB", NULL);
  kvds_client *c = kvh_connect(w.unix_addr);
  int r = kvh_raw_tcp(w.port);
  uint64_t ha, hb, hc;

  KVH_OK(create(r, "a", OBJ, &ha));
  KVH_OK(create(r, "b", OBJ, &hb));
  KVH_EXPECT_RC(create(r, "c", OBJ, &hc), KVDS_E_NOSPACE);
  int32_t st[2];
  put(r, 1, (const char *[]){"d"}, (uint64_t[]){OBJ}, st);
  KVH_EXPECT_RC(st[0], KVDS_E_NOSPACE);
  ping(r); /* the refused PUT's data was consumed: still in step */
  KVH_CHECK(writing(c) == 2, "%llu objects writing, want 2",
            (unsigned long long)writing(c));
  KVH_CHECK(!present(c, "c") && !present(c, "d"), "a refused key exists");

  /* Another connection has its own room. */
  void *val = kvh_val_new("other", 5, OBJ);
  KVH_OK(kvds_put(c, "other", 5, val, OBJ));
  free(val);

  /* Aborting gives the room back. */
  abort_handle(r, ha);
  KVH_OK(create(r, "c", OBJ, &hc));

  /* A batch PUT: the first item fits, the second would pass the cap. */
  int r2 = kvh_raw_tcp(w.port);
  put(r2, 2, (const char *[]){"e", "f"}, (uint64_t[]){OBJ, 2 * OBJ}, st);
  KVH_OK(st[0]);
  KVH_EXPECT_RC(st[1], KVDS_E_NOSPACE);
  KVH_CHECK(present(c, "e") && !present(c, "f"), "batch PUT: e %d, f %d",
            present(c, "e"), present(c, "f"));
  /* On a connection that writes nothing else, one object larger than the
   * cap is taken (any value up to --max-object can be stored). */
  put(r2, 1, (const char *[]){"huge"}, (uint64_t[]){6u << 20}, st);
  KVH_OK(st[0]);
  KVH_CHECK(present(c, "huge"), "huge value missing");
  KVH_CHECK(kvh_stats_item(r2, "writing_refused") == 3,
            "STATS writing_refused != 3");
  struct kvds_stats sst; /* every create answered NOSPACE counts there */
  kvh_stats(c, &sst);
  KVH_CHECK(sst.nospace == 3, "STATS nospace %llu, want 3",
            (unsigned long long)sst.nospace);
  close(r2);

  /* Closing aborts what r was writing. */
  close(r);
  uint64_t t0 = kvh_now_ms();
  while (writing(c) != 0 && kvh_now_ms() - t0 < 5000)
    kvh_sleep_ms(10);
  KVH_CHECK(writing(c) == 0, "%llu objects writing after the close",
            (unsigned long long)writing(c));
  KVH_CHECK(!present(c, "b") && !present(c, "c"), "unsealed object visible");
  kvds_client_close(c);
  kvh_worker_stop(&w);
  return kvh_finish();
}
