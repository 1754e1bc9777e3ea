/*
 * test_garbage — hostile bytes on the worker's TCP port and Unix socket
 * while two well-behaved clients (one per transport) keep putting, reading
 * and verifying. Every malformed connection must get an error reply (a
 * proper reply frame with a non-zero status, the specific code where the
 * protocol defines one) and/or be closed by the worker; the good clients
 * never see an error; afterwards the worker still serves, their objects are
 * intact and protocol_errors counted the bad frames. Well-formed requests
 * with bad items (foreign handles, an empty key, an empty value) get
 * per-item errors on a connection that stays usable.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "proto/proto.h"

#define WINDOW 64 /* keys each good client keeps */
#define GOOD_MAX_ITERS 200000
#define GOOD_MAX_MS 60000
#define MAXVAL (64u << 10)

/* ---- the good clients ---------------------------------------------------- */

static size_t good_key(char *k, int who, unsigned n) {
  return (size_t)snprintf(k, 32, "good%d/%07u", who, n);
}

static void good_client(const char *addr, int who, int stop_fd, int out_fd) {
  kvds_client *c = kvh_connect(addr);
  uint8_t *buf = malloc(MAXVAL);
  KVH_CHECK(buf, "out of memory");
  uint64_t t0 = kvh_now_ms();
  unsigned n = 0;
  for (; n < GOOD_MAX_ITERS && kvh_now_ms() - t0 < GOOD_MAX_MS; n++) {
    if (kvh_recv_byte(stop_fd, 0) != -2)
      break; /* stop byte or the parent went away */
    char k[32];
    size_t kl = good_key(k, who, n), len = kvh_val_size(k, kl, MAXVAL), got;
    kvh_val_fill(k, kl, buf, len);
    int rc = kvds_put(c, k, kl, buf, len);
    KVH_CHECK(rc == 0, "good client %d: put %s: %s (%s)", who, k,
              kvds_err_name(rc), kvds_client_errmsg(c));
    memset(buf, 0, len);
    rc = kvds_get(c, k, kl, buf, MAXVAL, &got, 0);
    KVH_CHECK(rc == 0 && kvh_val_ok(k, kl, len, buf, got),
              "good client %d: get %s: %s", who, k, kvds_err_name(rc));
    if (n == 0)
      kvh_send_byte(out_fd, 'R'); /* running: the garbage may start */
    if (n >= WINDOW) {
      kl = good_key(k, who, n - WINDOW);
      KVH_OK(kvds_delete(c, k, kl));
    }
    if (n % 8 == 7) { /* re-read four older keys of the window */
      char ks[4][32];
      struct kvds_iov keys[4];
      struct kvds_value vals[4];
      int res[4];
      for (unsigned i = 0; i < 4; i++)
        keys[i] = (struct kvds_iov){
            ks[i], good_key(ks[i], who, n - (n < WINDOW ? i : i * 13))};
      KVH_OK(kvds_mget(c, 4, keys, 0, vals, res));
      for (unsigned i = 0; i < 4; i++)
        KVH_CHECK(
            res[i] == 0 && kvh_val_ok(ks[i], keys[i].len,
                                      kvh_val_size(ks[i], keys[i].len, MAXVAL),
                                      vals[i].data, vals[i].len),
            "good client %d: mget %s: %s", who, ks[i], kvds_err_name(res[i]));
      KVH_OK(kvds_release(c, 4, vals));
    }
  }
  KVH_CHECK(kvh_write_all(out_fd, &n, sizeof n) == 0, "pipe");
  kvds_client_close(c);
  free(buf);
  _exit(0);
}

enum { ANY = 1 }; /* an error reply or a plain close */

struct gcase {
  const char *name;
  int expect;    /* ANY or the status of the error reply */
  int half;      /* send only this many bytes, then shut down writing */
  uint64_t echo; /* expected req_id in the reply (0: not checked) */
};

/* Builds case i into f; returns its description (NULL past the last). */
static int build_case(int i, struct kvh_frame *f, struct gcase *gc) {
  static char bigkey[2000];
  memset(bigkey, 'k', sizeof bigkey);
  memset(gc, 0, sizeof *gc);
  switch (i) {
  case 0: {
    uint64_t s = 0xbadc0ffeeull;
    f->len = 4096;
    for (size_t k = 0; k < f->len; k += 8) {
      uint64_t v = kvh_rand(&s);
      memcpy(f->b + k, &v, 8);
    }
    f->b[0] = 'X'; /* never the magic */
    *gc = (struct gcase){.name = "random bytes", .expect = ANY};
    return 1;
  }
  case 1:
    kvh_frame_init(f, KVDS_OP_PING, 11);
    f->h.magic = 0x12345678u;
    kvh_frame_seal(f);
    *gc = (struct gcase){.name = "bad magic", .expect = KVDS_E_PROTO};
    return 1;
  case 2:
    kvh_frame_init(f, KVDS_OP_PING, 12);
    f->h.version = KVDS_PROTO_VERSION + 1;
    kvh_frame_seal(f);
    *gc = (struct gcase){.name = "bad version", .expect = KVDS_E_VERSION};
    return 1;
  case 3:
    kvh_frame_init(f, KVDS_OP_GET, 13);
    f->h.meta_len = KVDS_PROTO_META_MAX + 1;
    f->h.count = 1;
    kvds_proto_hdr_encode(&f->h, f->b);
    *gc = (struct gcase){.name = "meta_len over the limit",
                         .expect = KVDS_E_PROTO};
    return 1;
  case 4:
    kvh_frame_init(f, KVDS_OP_GET, 14);
    kvh_frame_item(f, 0, "truncated-key", 13);
    kvh_frame_seal(f);
    *gc = (struct gcase){.name = "truncated frame, then close",
                         .expect = ANY,
                         .half = KVDS_PROTO_HDR_LEN + 20};
    return 1;
  case 5:
    kvh_frame_init(f, KVDS_OP_GET, 15);
    kvh_frame_item(f, 0, "some-key", 8);
    kvh_frame_seal(f);
    f->b[40] ^= 0x01; /* low byte of the checksum */
    *gc = (struct gcase){.name = "wrong checksum", .expect = KVDS_E_CHECKSUM};
    return 1;
  case 6:
    kvh_frame_init(f, 99, 0x1234567890ull);
    kvh_frame_seal(f);
    *gc = (struct gcase){.name = "unknown opcode",
                         .expect = KVDS_E_BADOP,
                         .echo = 0x1234567890ull};
    return 1;
  case 7:
    kvh_frame_init(f, KVDS_OP_PUT, 17);
    kvh_frame_item(f, 100, "put-mismatch", 12);
    f->h.data_len = 50;
    kvh_frame_seal(f);
    kvh_frame_data(f, 50);
    *gc = (struct gcase){.name = "PUT data_len disagrees with its items",
                         .expect = KVDS_E_PROTO};
    return 1;
  case 8:
    kvh_frame_init(f, KVDS_OP_GET, 18);
    kvh_frame_item(f, 0, bigkey, sizeof bigkey);
    kvh_frame_seal(f);
    *gc = (struct gcase){.name = "2000-byte key", .expect = KVDS_E_PROTO};
    return 1;
  case 9:
    kvh_frame_init(f, KVDS_OP_PUT, 19);
    kvh_frame_item(f, 10, bigkey, sizeof bigkey);
    f->h.data_len = 10;
    kvh_frame_seal(f);
    kvh_frame_data(f, 10);
    *gc = (struct gcase){.name = "2000-byte key in a PUT",
                         .expect = KVDS_E_PROTO};
    return 1;
  case 10:
    kvh_frame_init(f, KVDS_OP_PING, 20);
    f->h.flags = KVDS_PF_REPLY;
    kvh_frame_seal(f);
    *gc = (struct gcase){.name = "a reply sent as a request",
                         .expect = KVDS_E_PROTO};
    return 1;
  case 11:
    kvh_frame_init(f, KVDS_OP_PING, 21);
    f->h.flags = 0x8000;
    kvh_frame_seal(f);
    *gc = (struct gcase){.name = "unknown flags", .expect = KVDS_E_PROTO};
    return 1;
  case 12:
    kvh_frame_init(f, KVDS_OP_PING, 22);
    kvds_proto_hdr_encode(&f->h, f->b);
    f->b[44] = 1; /* reserved */
    kvds_proto_seal_frame(f->b, f->b + KVDS_PROTO_HDR_LEN, 0);
    *gc = (struct gcase){.name = "reserved field set", .expect = KVDS_E_PROTO};
    return 1;
  case 13:
    kvh_frame_init(f, KVDS_OP_GET, 23);
    kvh_frame_item(f, 0, "k", 1);
    f->h.count = 5;
    kvh_frame_seal(f);
    *gc = (struct gcase){.name = "count larger than meta",
                         .expect = KVDS_E_PROTO};
    return 1;
  case 14:
    kvh_frame_init(f, KVDS_OP_GET, 24);
    kvh_frame_item(f, 0, "k", 1);
    f->h.data_len = 16;
    kvh_frame_seal(f);
    kvh_frame_data(f, 16);
    *gc = (struct gcase){.name = "data on a GET", .expect = KVDS_E_PROTO};
    return 1;
  case 15:
    kvh_frame_init(f, KVDS_OP_STAT, 25);
    kvh_frame_item(f, 0, "k1", 2);
    kvh_frame_item(f, 0, "k2", 2);
    kvh_frame_seal(f);
    *gc = (struct gcase){.name = "STAT with two keys", .expect = KVDS_E_PROTO};
    return 1;
  case 16:
    kvh_frame_init(f, KVDS_OP_PUT, 26);
    kvh_frame_item(f, 1ull << 41, "huge", 4);
    f->h.data_len = 1ull << 41;
    kvh_frame_seal(f);
    *gc = (struct gcase){.name = "data_len over the limit",
                         .expect = KVDS_E_PROTO};
    return 1;
  case 17:
    kvh_frame_init(f, KVDS_OP_GET, 27);
    kvh_frame_item(f, 0, "k", 1);
    f->h.meta_len = (uint32_t)(f->len - KVDS_PROTO_HDR_LEN + 7);
    kvh_frame_seal(f);
    kvh_frame_data(f, 7); /* meta with 7 stray bytes after the last item */
    kvds_proto_seal_frame(f->b, f->b + KVDS_PROTO_HDR_LEN,
                          f->len - KVDS_PROTO_HDR_LEN);
    *gc = (struct gcase){.name = "meta longer than its items",
                         .expect = KVDS_E_PROTO};
    return 1;
  case 18:
    kvh_frame_init(f, KVDS_OP_PUT, 28);
    kvh_frame_item(f, 1u << 20, "big-truncated", 13);
    f->h.data_len = 1u << 20;
    kvh_frame_seal(f);
    kvh_frame_data(f, 1000);
    *gc = (struct gcase){.name = "PUT cut short, then close",
                         .expect = ANY,
                         .half = (int)f->len};
    return 1;
  }
  return 0;
}

/* Sends case i on fd and checks the worker's answer. */
static void run_case(int fd, int i, const char *transport) {
  struct kvh_frame f;
  struct gcase gc;
  build_case(i, &f, &gc);
  size_t n = gc.half ? (size_t)gc.half : f.len;
  if (kvh_write_all(fd, f.b, n) != 0)
    KVH_CHECK(errno == EPIPE || errno == ECONNRESET, "%s / %s: send: %s",
              transport, gc.name, strerror(errno));
  if (gc.half || gc.expect == ANY)
    shutdown(fd, SHUT_WR);
  uint8_t in[4096];
  size_t len = 0;
  KVH_CHECK(kvh_read_to_eof(fd, in, sizeof in, &len, 5000) == 0,
            "%s / %s: connection neither answered nor closed in 5 s "
            "(%zu bytes received)",
            transport, gc.name, len);
  if (len == 0) {
    KVH_CHECK(gc.expect == ANY, "%s / %s: closed without the %s reply",
              transport, gc.name, kvds_err_name(gc.expect));
    return;
  }
  struct kvds_proto_hdr h;
  /* A reply may echo an opcode outside 1..KVDS_OP__MAX (the request's):
   * the decoder then still fills the header and says KVDS_E_BADOP. */
  int drc = len >= KVDS_PROTO_HDR_LEN ? kvds_proto_hdr_decode(in, len, &h)
                                      : KVDS_E_PROTO;
  KVH_CHECK(drc == 0 || drc == KVDS_E_BADOP,
            "%s / %s: %zu bytes back that are not a reply header (%s)",
            transport, gc.name, len, kvds_err_name(drc));
  KVH_CHECK(len == KVDS_PROTO_HDR_LEN + h.meta_len && h.data_len == 0 &&
                kvds_proto_verify(in, in + KVDS_PROTO_HDR_LEN, h.meta_len) == 0,
            "%s / %s: malformed reply (%zu bytes, meta %u)", transport, gc.name,
            len, h.meta_len);
  KVH_CHECK(h.flags & KVDS_PF_REPLY, "%s / %s: reply flag missing", transport,
            gc.name);
  if (gc.expect == ANY)
    KVH_CHECK(h.status != 0, "%s / %s: reply with status 0", transport,
              gc.name);
  else
    KVH_CHECK(h.status == gc.expect, "%s / %s: reply status %s, want %s",
              transport, gc.name, kvds_err_name(h.status),
              kvds_err_name(gc.expect));
  if (gc.echo)
    KVH_CHECK(h.req_id == gc.echo, "%s / %s: req_id %llu not echoed", transport,
              gc.name, (unsigned long long)h.req_id);
}

/* Requests that are wrong but well-formed get per-item errors and leave the
 * connection usable. */
static void run_item_errors(int fd, const char *transport) {
  struct kvh_frame f;
  /* WRITE and SEAL with handles this connection never had, a RELEASE
   * (no reply), a PUT of an empty value, then a PING. */
  kvh_frame_init(&f, KVDS_OP_SEAL, 31);
  kvh_frame_item(&f, 0xdeadbeef00000001ull, NULL, 0);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send");
  kvh_frame_init(&f, KVDS_OP_RELEASE, 32);
  f.h.flags = KVDS_PF_NOREPLY;
  kvh_frame_item(&f, 0x77ull, NULL, 0);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send");
  kvh_frame_init(&f, KVDS_OP_PUT, 33);
  kvh_frame_item(&f, 0, "empty-value", 11);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send");
  kvh_frame_init(&f, KVDS_OP_PING, 34);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send");
  /* Read the three replies (RELEASE has none); the worker keeps the
   * connection open. */
  uint8_t in[4096];
  size_t len = 0, pos = 0;
  uint64_t deadline = kvh_now_ms() + 5000;
  for (int got = 0; got < 3;) {
    struct kvds_proto_hdr h;
    if (len - pos >= KVDS_PROTO_HDR_LEN &&
        kvds_proto_hdr_decode(in + pos, len - pos, &h) == 0 &&
        len - pos >= KVDS_PROTO_HDR_LEN + h.meta_len) {
      pos += KVDS_PROTO_HDR_LEN + h.meta_len;
      got++;
      continue;
    }
    KVH_CHECK(kvh_now_ms() < deadline && len < sizeof in,
              "%s: item errors: %d of 3 replies in 5 s", transport, got);
    uint64_t left = deadline - kvh_now_ms();
    KVH_CHECK(kvh_read_all(fd, in + len, 1, (int)left + 1) == 0,
              "%s: item errors: connection closed after %d replies", transport,
              got);
    len++;
  }
  pos = 0;
  static const struct {
    uint64_t id;
    int item_status;
  } want[] = {{31, KVDS_E_HANDLE}, {33, KVDS_E_INVAL}, {34, 0}};
  for (int i = 0; i < 3; i++) {
    struct kvds_proto_hdr h;
    KVH_CHECK(len - pos >= KVDS_PROTO_HDR_LEN &&
                  kvds_proto_hdr_decode(in + pos, len - pos, &h) == 0 &&
                  len - pos >= KVDS_PROTO_HDR_LEN + h.meta_len,
              "%s: reply %d missing (%zu bytes)", transport, i, len - pos);
    KVH_CHECK(h.req_id == want[i].id && h.status == 0,
              "%s: reply %d: req_id %llu status %s", transport, i,
              (unsigned long long)h.req_id, kvds_err_name(h.status));
    if (want[i].id != 34) {
      struct kvds_proto_item it;
      const uint8_t *key;
      size_t ip = 0;
      KVH_CHECK(h.count == 1 &&
                    kvds_proto_item_decode(in + pos + KVDS_PROTO_HDR_LEN,
                                           h.meta_len, &ip, &it, &key) == 0 &&
                    it.status == want[i].item_status,
                "%s: reply %llu: item status %s, want %s", transport,
                (unsigned long long)h.req_id, kvds_err_name(it.status),
                kvds_err_name(want[i].item_status));
    }
    pos += KVDS_PROTO_HDR_LEN + h.meta_len;
  }
  KVH_CHECK(pos == len, "%s: %zu unexpected bytes after the replies", transport,
            len - pos);
}

/* Reads one whole reply (header, meta, data) into buf; returns its
 * header; fails the test if none comes within 5 s. */
static struct kvds_proto_hdr read_reply(int fd, uint8_t *buf, size_t cap,
                                        const char *what) {
  struct kvds_proto_hdr h;
  KVH_CHECK(kvh_read_all(fd, buf, KVDS_PROTO_HDR_LEN, 5000) == 0,
            "%s: no reply", what);
  int rc = kvds_proto_hdr_decode(buf, KVDS_PROTO_HDR_LEN, &h);
  KVH_CHECK(rc == 0 && (h.flags & KVDS_PF_REPLY) &&
                KVDS_PROTO_HDR_LEN + h.meta_len + h.data_len <= cap,
            "%s: bad reply header (%s)", what, kvds_err_name(rc));
  KVH_CHECK(kvh_read_all(fd, buf + KVDS_PROTO_HDR_LEN, h.meta_len + h.data_len,
                         5000) == 0,
            "%s: reply cut short", what);
  KVH_CHECK(kvds_proto_verify(buf, buf + KVDS_PROTO_HDR_LEN, h.meta_len) == 0,
            "%s: reply checksum", what);
  return h;
}

static struct kvds_proto_item first_item(const uint8_t *buf,
                                         const struct kvds_proto_hdr *h,
                                         const char *what) {
  struct kvds_proto_item it;
  const uint8_t *key;
  size_t pos = 0;
  KVH_CHECK(h->count >= 1 &&
                kvds_proto_item_decode(buf + KVDS_PROTO_HDR_LEN, h->meta_len,
                                       &pos, &it, &key) == 0,
            "%s: reply without items", what);
  return it;
}

/* Handles belong to the connection that got them: another connection
 * cannot write, seal or abort someone else's object, or release their pin;
 * and a GET item with an empty key is a per-item KVDS_E_KEYLEN. */
static void run_handles(const struct kvh_worker *w, kvds_client *c) {
  static uint8_t in[1 << 16];
  struct kvh_frame f;
  int a = kvh_raw_tcp(w->port), b = kvh_raw_unix(w->sock);
  kvh_frame_init(&f, KVDS_OP_CREATE, 41);
  kvh_frame_item(&f, 16, "hijack", 6);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(a, f.b, f.len) == 0, "send");
  struct kvds_proto_hdr h = read_reply(a, in, sizeof in, "create");
  struct kvds_proto_item it = first_item(in, &h, "create");
  KVH_CHECK(h.req_id == 41 && it.status == 0 && it.a != 0, "raw create: %s",
            kvds_err_name(it.status));
  uint64_t handle = it.a;
  KVH_OK(kvds_put(c, "pinned-elsewhere", 16, "v", 1));

  static const uint8_t ops[] = {KVDS_OP_SEAL, KVDS_OP_ABORT, KVDS_OP_RELEASE,
                                KVDS_OP_WRITE};
  for (int i = 0; i < 4; i++) {
    kvh_frame_init(&f, ops[i], 50 + (uint64_t)i);
    struct kvds_proto_item wi = {.a = handle, .b = 0, .c = 16};
    f.len += kvds_proto_item_encode(&wi, NULL, f.b + f.len);
    f.h.count = 1;
    if (ops[i] == KVDS_OP_WRITE)
      f.h.data_len = 16;
    kvh_frame_seal(&f);
    if (ops[i] == KVDS_OP_WRITE)
      kvh_frame_data(&f, 16);
    KVH_CHECK(kvh_write_all(b, f.b, f.len) == 0, "send");
    h = read_reply(b, in, sizeof in, kvds_proto_op_name(ops[i]));
    it = first_item(in, &h, kvds_proto_op_name(ops[i]));
    KVH_CHECK(h.req_id == 50 + (uint64_t)i && it.status == KVDS_E_HANDLE,
              "%s of another connection's handle: %s",
              kvds_proto_op_name(ops[i]), kvds_err_name(it.status));
  }
  struct kvds_object_info info;
  KVH_OK(kvds_stat(c, "hijack", 6, &info));
  KVH_CHECK(info.state == KVDS_STATE_WRITING, "hijack: state %d", info.state);

  /* An empty key in a GET batch: that item fails, the others and the
   * connection do not. */
  kvh_frame_init(&f, KVDS_OP_GET, 60);
  f.h.flags = KVDS_PF_INLINE;
  kvh_frame_item(&f, 0, NULL, 0);
  kvh_frame_item(&f, 0, "pinned-elsewhere", 16);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(b, f.b, f.len) == 0, "send");
  h = read_reply(b, in, sizeof in, "get with an empty key");
  it = first_item(in, &h, "get with an empty key");
  KVH_CHECK(h.count == 2 && it.status == KVDS_E_KEYLEN && h.data_len == 1,
            "get [empty key, key]: count %u status %s data %llu", h.count,
            kvds_err_name(it.status), (unsigned long long)h.data_len);

  /* The creator's connection closes: its object goes away. */
  close(a);
  close(b);
  uint64_t deadline = kvh_now_ms() + 5000;
  int rc;
  while ((rc = kvds_stat(c, "hijack", 6, &info)) == 0 &&
         kvh_now_ms() < deadline)
    kvh_sleep_ms(5);
  KVH_CHECK(rc == KVDS_E_NOTFOUND, "hijack after its writer left: %s",
            kvds_err_name(rc));
  KVH_OK(kvds_delete(c, "pinned-elsewhere", 16));
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "garbage");
  struct kvh_worker w;
  kvh_worker_start(&w, "64MiB", (const char *const[]){"--threads", "2", NULL});

  int stop[2][2], out[2][2];
  pid_t good[2];
  for (int i = 0; i < 2; i++) {
    KVH_CHECK(pipe(stop[i]) == 0 && pipe(out[i]) == 0, "pipe");
    good[i] = kvh_fork();
    if (good[i] == 0) {
      close(stop[i][1]);
      close(out[i][0]);
      good_client(i == 0 ? w.addr : w.tcp, i, stop[i][0], out[i][1]);
    }
    close(stop[i][0]);
    close(out[i][1]);
  }
  for (int i = 0; i < 2; i++)
    KVH_CHECK(kvh_recv_byte(out[i][0], 10000) == 'R',
              "good client %d did not start", i);

  kvds_client *c = kvh_connect(w.tcp);
  int ncases = 0, nreplies = 0;
  struct kvh_frame f;
  struct gcase gc;
  for (int round = 0; round < 4; round++) {
    for (int i = 0; build_case(i, &f, &gc); i++) {
      for (int tr = 0; tr < 2; tr++) {
        int fd = tr ? kvh_raw_unix(w.sock) : kvh_raw_tcp(w.port);
        uint64_t tc = kvh_now_ms();
        run_case(fd, i, tr ? "unix" : "tcp");
        if (getenv("KVH_VERBOSE"))
          fprintf(stderr, "case %d %s: %llu ms\n", i, tr ? "unix" : "tcp",
                  (unsigned long long)(kvh_now_ms() - tc));
        close(fd);
        KVH_OK(kvds_ping(c));
        ncases++;
        nreplies += gc.expect != ANY;
      }
    }
    for (int tr = 0; tr < 2; tr++) {
      int fd = tr ? kvh_raw_unix(w.sock) : kvh_raw_tcp(w.port);
      run_item_errors(fd, tr ? "unix" : "tcp");
      close(fd);
    }
  }

  run_handles(&w, c);

  struct kvds_stats st;
  kvh_stats(c, &st);
  KVH_CHECK(st.protocol_errors >= (uint64_t)nreplies,
            "protocol_errors %llu after %d malformed frames",
            (unsigned long long)st.protocol_errors, nreplies);

  unsigned n[2];
  for (int i = 0; i < 2; i++) {
    kvh_send_byte(stop[i][1], 's');
    kvh_wait_child_ok(good[i], GOOD_MAX_MS + 10000, "good client");
    KVH_CHECK(kvh_read_all(out[i][0], &n[i], sizeof n[i], 1000) == 0,
              "good client %d sent no count", i);
    KVH_CHECK(n[i] > 0, "good client %d made no progress", i);
    close(stop[i][1]);
    close(out[i][0]);
  }
  /* Their last WINDOW keys are exactly what is left, intact. */
  uint8_t *buf = malloc(MAXVAL);
  for (int i = 0; i < 2; i++) {
    char prefix[8];
    snprintf(prefix, sizeof prefix, "good%d/", i);
    struct kvds_list *l;
    KVH_OK(kvds_list(c, prefix, 6, NULL, 0, 1000, &l));
    unsigned want = n[i] < WINDOW ? n[i] : WINDOW;
    KVH_CHECK(l->n == want && !l->more, "good client %d: %zu keys, want %u", i,
              l->n, want);
    kvds_list_free(l);
    for (unsigned j = n[i] - want; j < n[i]; j++) {
      char k[32];
      size_t kl = good_key(k, i, j), got;
      KVH_OK(kvds_get(c, k, kl, buf, MAXVAL, &got, 0));
      KVH_CHECK(kvh_val_ok(k, kl, kvh_val_size(k, kl, MAXVAL), buf, got),
                "%s corrupted", k);
    }
  }
  free(buf);
  /* Nothing that arrived on a garbage connection was stored. */
  static const char *const junk[] = {"put-mismatch", "empty-value", "huge",
                                     "big-truncated"};
  for (int i = 0; i < 4; i++) {
    struct kvds_object_info info;
    KVH_EXPECT_RC(kvds_stat(c, junk[i], strlen(junk[i]), &info),
                  KVDS_E_NOTFOUND);
  }
  uint64_t deadline = kvh_now_ms() + 5000;
  do {
    kvh_stats(c, &st);
    if (st.connections == 1 && st.objects_writing == 0)
      break;
    kvh_sleep_ms(10);
  } while (kvh_now_ms() < deadline);
  KVH_CHECK(st.connections == 1 && st.objects_writing == 0 &&
                st.pinned_objects == 0,
            "connections %llu writing %llu pinned %llu after the garbage",
            (unsigned long long)st.connections,
            (unsigned long long)st.objects_writing,
            (unsigned long long)st.pinned_objects);
  uint64_t left =
      (n[0] < WINDOW ? n[0] : WINDOW) + (n[1] < WINDOW ? n[1] : WINDOW);
  KVH_CHECK(st.objects == left, "%llu objects left, want %llu",
            (unsigned long long)st.objects, (unsigned long long)left);
  fprintf(stderr, "%d garbage connections, good clients did %u + %u puts\n",
          ncases, n[0], n[1]);
  kvds_client_close(c);
  kvh_worker_stop(&w);
  return kvh_finish();
}
