/*
 * test_regressions — reproducers from a code review, turned into tests. Each
 * section starts its own worker(s) and checks one fixed behaviour:
 *
 *  zero_segments  a PUT/WRITE item of 0 bytes gets a per-item error; the
 *                 stream stays in step, the connection stays usable and the
 *                 other items of the batch are stored intact
 *  reply_ids      an error reply to a bad header carries that frame's
 *                 request id (not the previous frame's); a frame that is
 *                 not ours (bad magic) is answered with id 0 or closed
 *  backpressure   a client that pipelines LISTs and reads nothing cannot
 *                 make the worker queue unbounded replies (worker RSS stays
 *                 bounded), a LIST page is capped at 1 MiB, others are
 *                 served throughout
 *  stuck_reader   a client that pipelines inline GETs and reads nothing
 *                 pins objects only until --frame-timeout-ms: the worker
 *                 then closes it and the pool can evict again
 *  stale_view     after a deadline overrun the client disconnects itself:
 *                 kvds_client_is_connected() is 0, calls fail with
 *                 KVDS_E_CLOSED and its pins are gone
 *  upgrade        "host:port" upgrades to shared memory, "tcp://" and
 *                 KVDS_CONNECT_TCP_ONLY do not; an upgrade checks the
 *                 worker's identity before it maps any pool
 *
 * Usage: test_regressions KVDS_BIN [SECTION]
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "proto/proto.h"

#define KiB (1024u)
#define MiB (1024u * 1024u)

/* ---- raw frames ---------------------------------------------------------- */

struct rframe {
  uint8_t *b;
  size_t len, cap;
  struct kvds_proto_hdr h;
};

static void rf_reserve(struct rframe *f, size_t more) {
  if (f->len + more <= f->cap)
    return;
  size_t cap = f->cap ? f->cap : 4096;
  while (cap < f->len + more)
    cap *= 2;
  f->b = realloc(f->b, cap);
  KVH_CHECK(f->b, "out of memory");
  f->cap = cap;
}

static void rf_begin(struct rframe *f, uint8_t op, uint16_t flags,
                     uint64_t req_id, uint32_t arg) {
  rf_reserve(f, KVDS_PROTO_HDR_LEN);
  f->len = KVDS_PROTO_HDR_LEN;
  f->h = (struct kvds_proto_hdr){.magic = KVDS_PROTO_MAGIC,
                                 .version = KVDS_PROTO_VERSION,
                                 .opcode = op,
                                 .flags = flags,
                                 .req_id = req_id,
                                 .arg = arg};
}

static void rf_item(struct rframe *f, uint64_t a, uint64_t b, uint64_t c,
                    const void *key, size_t klen) {
  struct kvds_proto_item it = {.klen = (uint32_t)klen, .a = a, .b = b, .c = c};
  rf_reserve(f, kvds_proto_item_size(klen));
  f->len += kvds_proto_item_encode(&it, key, f->b + f->len);
  f->h.count++;
}

/* Encodes the header (count and meta_len from the items) and seals it. */
static void rf_end(struct rframe *f, uint64_t data_len) {
  f->h.meta_len = (uint32_t)(f->len - KVDS_PROTO_HDR_LEN);
  f->h.data_len = data_len;
  kvds_proto_hdr_encode(&f->h, f->b);
  kvds_proto_seal_frame(f->b, f->b + KVDS_PROTO_HDR_LEN, f->h.meta_len);
}

static void rf_append(struct rframe *f, const void *p, size_t n) {
  rf_reserve(f, n);
  memcpy(f->b + f->len, p, n);
  f->len += n;
}

static void rf_send(int fd, const struct rframe *f) {
  KVH_CHECK(kvh_write_all(fd, f->b, f->len) == 0, "send frame: %s",
            strerror(errno));
}

#define MAX_RITEMS 16

struct rreply {
  struct kvds_proto_hdr h;
  struct kvds_proto_item it[MAX_RITEMS];
};

/* Reads one reply frame (header, meta; data skipped) within timeout_ms.
 * Returns 0, or -1 if the connection closed or nothing came in time. */
static int read_reply(int fd, struct rreply *r, int timeout_ms) {
  uint8_t hb[KVDS_PROTO_HDR_LEN];
  memset(r, 0, sizeof *r);
  if (kvh_read_all(fd, hb, sizeof hb, timeout_ms))
    return -1;
  int rc = kvds_proto_hdr_decode(hb, sizeof hb, &r->h);
  /* An error reply to an unknown opcode echoes that opcode. */
  KVH_CHECK(rc == 0 || rc == KVDS_E_BADOP, "reply header does not decode: %s",
            kvds_err_name(rc));
  KVH_CHECK(r->h.flags & KVDS_PF_REPLY, "frame from the worker is no reply");
  uint8_t *meta = malloc(r->h.meta_len + 1);
  KVH_CHECK(meta, "out of memory");
  if (kvh_read_all(fd, meta, r->h.meta_len, timeout_ms)) {
    free(meta);
    return -1;
  }
  KVH_CHECK(kvds_proto_verify(hb, meta, r->h.meta_len) == 0,
            "reply checksum mismatch");
  size_t pos = 0;
  for (uint32_t i = 0; i < r->h.count; i++) {
    struct kvds_proto_item it;
    const uint8_t *key;
    KVH_CHECK(kvds_proto_item_decode(meta, r->h.meta_len, &pos, &it, &key) == 0,
              "reply item %u does not decode", i);
    if (i < MAX_RITEMS)
      r->it[i] = it;
  }
  free(meta);
  uint8_t sink[4096];
  for (uint64_t left = r->h.data_len; left;) {
    size_t n = left < sizeof sink ? (size_t)left : sizeof sink;
    if (kvh_read_all(fd, sink, n, timeout_ms))
      return -1;
    left -= n;
  }
  return 0;
}

/* Sends a PING with this id and checks that it is answered. */
static void ping_raw(int fd, uint64_t id) {
  struct rframe f = {0};
  struct rreply r;
  rf_begin(&f, KVDS_OP_PING, 0, id, 0);
  rf_end(&f, 0);
  rf_send(fd, &f);
  free(f.b);
  KVH_CHECK(read_reply(fd, &r, 5000) == 0,
            "PING %llu: no reply (connection closed or timed out)",
            (unsigned long long)id);
  KVH_CHECK(r.h.opcode == KVDS_OP_PING && r.h.req_id == id && r.h.status == 0,
            "PING %llu answered with op %u id %llu status %s",
            (unsigned long long)id, r.h.opcode, (unsigned long long)r.h.req_id,
            kvds_err_name(r.h.status));
}

/* A TCP connection whose receive buffer is tiny (set before connect, so the
 * advertised window stays small), non-blocking. */
static int tcp_small_rcvbuf(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  KVH_CHECK(fd >= 0, "socket: %s", strerror(errno));
  int small = 4096;
  KVH_CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0,
            "SO_RCVBUF: %s", strerror(errno));
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  KVH_CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0,
            "connect 127.0.0.1:%d: %s", port, strerror(errno));
  KVH_CHECK(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0,
            "O_NONBLOCK: %s", strerror(errno));
  return fd;
}

/* Sends as much of buf as the peer takes within timeout_ms (non-blocking
 * fd); returns the bytes sent. */
static size_t send_some(int fd, const uint8_t *buf, size_t len,
                        int timeout_ms) {
  uint64_t deadline = kvh_now_ms() + (uint64_t)timeout_ms;
  size_t sent = 0;
  while (sent < len) {
    ssize_t w = send(fd, buf + sent, len - sent, MSG_NOSIGNAL);
    if (w > 0) {
      sent += (size_t)w;
      continue;
    }
    KVH_CHECK(w < 0 && (errno == EAGAIN || errno == EINTR), "send: %s",
              w < 0 ? strerror(errno) : "0 bytes");
    uint64_t now = kvh_now_ms();
    if (now >= deadline)
      break;
    struct pollfd pf = {.fd = fd, .events = POLLOUT};
    poll(&pf, 1, (int)(deadline - now < 100 ? deadline - now : 100));
  }
  return sent;
}

/* ---- /proc --------------------------------------------------------------- */

/* A "Name:  N kB" field of /proc/<pid>/status in KiB (pid 0: self). */
static long proc_status_kb(pid_t pid, const char *field) {
  char path[64], line[256];
  if (pid)
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  else
    snprintf(path, sizeof path, "/proc/self/status");
  FILE *fp = fopen(path, "r");
  KVH_CHECK(fp, "open %s: %s", path, strerror(errno));
  long v = -1;
  size_t fl = strlen(field);
  while (fgets(line, sizeof line, fp))
    if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
      v = strtol(line + fl + 1, NULL, 10);
      break;
    }
  fclose(fp);
  KVH_CHECK(v >= 0, "no %s in %s", field, path);
  return v;
}

/* The state letter of a process (R, S, T, ...). */
static char proc_state(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  KVH_CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  KVH_CHECK(n > 0, "read %s", path);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* comm may contain spaces */
  KVH_CHECK(p && p[1] == ' ', "cannot parse %s", path);
  return p[2];
}

/* ---- 1. zero-length segments --------------------------------------------- */

/*
 * One raw PUT with items of the given sizes (keys prefix/0, prefix/1, ...)
 * and the values of the non-empty ones. split: send header + meta first and
 * the data afterwards (large values then go straight from the socket into
 * the pool); else everything in one write (small values are then copied
 * from the input buffer).
 */
static void put_with_empty(int fd, kvds_client *c, const char *prefix,
                           const size_t *sizes, unsigned n, int split,
                           uint64_t id) {
  struct rframe f = {0};
  char keys[8][32];
  size_t total = 0;
  KVH_CHECK(n <= 8, "too many items");
  rf_begin(&f, KVDS_OP_PUT, 0, id, 0);
  for (unsigned i = 0; i < n; i++) {
    snprintf(keys[i], sizeof keys[i], "%s/%u", prefix, i);
    rf_item(&f, sizes[i], 0, 0, keys[i], strlen(keys[i]));
    total += sizes[i];
  }
  rf_end(&f, total);
  size_t meta_end = f.len;
  for (unsigned i = 0; i < n; i++) {
    if (!sizes[i])
      continue;
    void *v = kvh_val_new(keys[i], strlen(keys[i]), sizes[i]);
    rf_append(&f, v, sizes[i]);
    free(v);
  }
  if (split) {
    KVH_CHECK(kvh_write_all(fd, f.b, meta_end) == 0, "send meta");
    KVH_CHECK(kvh_write_all(fd, f.b + meta_end, f.len - meta_end) == 0,
              "send data: %s", strerror(errno));
  } else {
    rf_send(fd, &f);
  }
  free(f.b);

  struct rreply r;
  KVH_CHECK(read_reply(fd, &r, 5000) == 0,
            "%s: PUT with a zero-length item got no reply (connection "
            "closed or timed out)",
            prefix);
  KVH_CHECK(r.h.opcode == KVDS_OP_PUT && r.h.req_id == id,
            "%s: reply op %u id %llu", prefix, r.h.opcode,
            (unsigned long long)r.h.req_id);
  KVH_CHECK(r.h.status == 0, "%s: whole PUT failed: %s", prefix,
            kvds_err_name(r.h.status));
  KVH_CHECK(r.h.count == n, "%s: %u reply items for %u", prefix, r.h.count, n);
  for (unsigned i = 0; i < n; i++) {
    int want = sizes[i] ? 0 : KVDS_E_INVAL;
    KVH_CHECK(r.it[i].status == want, "%s: item %u (%zu bytes): %s, want %s",
              prefix, i, sizes[i], kvds_err_name(r.it[i].status),
              kvds_err_name(want));
  }
  /* The connection is still in step: the next request is answered. */
  ping_raw(fd, id + 1);

  /* Every non-empty value is stored intact (read by another client). */
  for (unsigned i = 0; i < n; i++) {
    size_t kl = strlen(keys[i]);
    uint8_t present = 1;
    KVH_OK(kvds_exists(c, 1, &(struct kvds_iov){keys[i], kl}, &present));
    if (!sizes[i]) {
      KVH_CHECK(!present, "%s: the empty item was stored", keys[i]);
      continue;
    }
    KVH_CHECK(present, "%s: not stored", keys[i]);
    uint8_t *buf = malloc(sizes[i]);
    size_t got = 0;
    KVH_CHECK(buf, "out of memory");
    KVH_OK(kvds_get(c, keys[i], kl, buf, sizes[i], &got, 0));
    KVH_CHECK(kvh_val_ok(keys[i], kl, sizes[i], buf, got),
              "%s: value damaged (%zu bytes, want %zu)", keys[i], got,
              sizes[i]);
    KVH_CHECK(r.it[i].a == kvds_checksum(buf, got),
              "%s: reply checksum %llx does not match the value", keys[i],
              (unsigned long long)r.it[i].a);
    free(buf);
  }
}

static void sec_zero_segments(void) {
  struct kvh_worker w;
  kvh_worker_start(&w, "64MiB", NULL);
  kvds_client *c = kvh_connect(w.tcp);
  int fd = kvh_raw_tcp(w.port);

  /* The reviewer's case: 256 KiB, 0, 256 KiB, data sent after the meta. */
  const size_t big[] = {256 * KiB, 0, 256 * KiB};
  put_with_empty(fd, c, "zbig", big, 3, 1, 7);
  /* The same with values small enough to arrive with the header. */
  const size_t small[] = {1000, 0, 1000};
  put_with_empty(fd, c, "zsmall", small, 3, 0, 10);
  /* Empty items first, last, and several in a row. */
  const size_t first[] = {0, 0, 100 * KiB};
  put_with_empty(fd, c, "zfirst", first, 3, 1, 20);
  const size_t last[] = {100 * KiB, 0, 0};
  put_with_empty(fd, c, "zlast", last, 3, 1, 30);
  const size_t mixed[] = {3, 0, 64 * KiB, 0, 5};
  put_with_empty(fd, c, "zmixed", mixed, 5, 0, 40);

  /* WRITE: an item with a foreign handle and no bytes, then a valid one. */
  const size_t wsize = 64 * KiB;
  struct rframe f = {0};
  struct rreply r;
  rf_begin(&f, KVDS_OP_CREATE, 0, 50, 0);
  rf_item(&f, wsize, 0, 0, "zwrite", 6);
  rf_end(&f, 0);
  rf_send(fd, &f);
  KVH_CHECK(read_reply(fd, &r, 5000) == 0, "CREATE: no reply");
  KVH_CHECK(r.h.status == 0 && r.h.count == 1 && r.it[0].status == 0,
            "CREATE: %s / %s", kvds_err_name(r.h.status),
            kvds_err_name(r.it[0].status));
  uint64_t handle = r.it[0].a;
  KVH_CHECK(handle != 0, "CREATE returned handle 0");
  uint64_t bogus = handle ^ 0x7777000000000000ull;
  void *val = kvh_val_new("zwrite", 6, wsize);
  for (int split = 0; split < 2; split++) {
    rf_begin(&f, KVDS_OP_WRITE, 0, 51 + (uint64_t)split, 0);
    rf_item(&f, bogus, 0, 0, NULL, 0);
    rf_item(&f, handle, split ? 0 : wsize / 2, wsize / 2, NULL, 0);
    rf_item(&f, bogus, 0, 0, NULL, 0);
    rf_end(&f, wsize / 2);
    size_t meta_end = f.len;
    rf_append(&f, (uint8_t *)val + (split ? 0 : wsize / 2), wsize / 2);
    if (split) {
      KVH_CHECK(kvh_write_all(fd, f.b, meta_end) == 0, "send meta");
      KVH_CHECK(kvh_write_all(fd, f.b + meta_end, f.len - meta_end) == 0,
                "send data");
    } else {
      rf_send(fd, &f);
    }
    KVH_CHECK(read_reply(fd, &r, 5000) == 0,
              "WRITE with an empty foreign-handle item got no reply "
              "(connection closed or timed out)");
    KVH_CHECK(
        r.h.req_id == 51 + (uint64_t)split && r.h.status == 0 && r.h.count == 3,
        "WRITE: id %llu status %s count %u", (unsigned long long)r.h.req_id,
        kvds_err_name(r.h.status), r.h.count);
    KVH_CHECK(r.it[0].status == KVDS_E_HANDLE &&
                  r.it[2].status == KVDS_E_HANDLE,
              "WRITE: foreign handle items: %s, %s (want KVDS_E_HANDLE)",
              kvds_err_name(r.it[0].status), kvds_err_name(r.it[2].status));
    KVH_CHECK(r.it[1].status == 0, "WRITE: valid item: %s",
              kvds_err_name(r.it[1].status));
  }
  ping_raw(fd, 60);
  rf_begin(&f, KVDS_OP_SEAL, 0, 61, 0);
  rf_item(&f, handle, kvds_checksum(val, wsize), 1, NULL, 0);
  rf_end(&f, 0);
  rf_send(fd, &f);
  KVH_CHECK(read_reply(fd, &r, 5000) == 0, "SEAL: no reply");
  KVH_CHECK(r.h.status == 0 && r.it[0].status == 0,
            "SEAL (the written bytes do not match?): %s / %s",
            kvds_err_name(r.h.status), kvds_err_name(r.it[0].status));
  uint8_t *buf = malloc(wsize);
  size_t got = 0;
  KVH_OK(kvds_get(c, "zwrite", 6, buf, wsize, &got, 0));
  KVH_CHECK(kvh_val_ok("zwrite", 6, wsize, buf, got), "zwrite damaged");
  free(buf);
  free(val);
  free(f.b);

  /* Per-item errors are not protocol errors; the connection is still up. */
  struct kvds_stats st;
  kvh_stats(c, &st);
  KVH_CHECK(st.protocol_errors == 0, "%llu protocol errors counted",
            (unsigned long long)st.protocol_errors);
  KVH_CHECK(st.objects_writing == 0, "%llu objects left writing",
            (unsigned long long)st.objects_writing);
  ping_raw(fd, 62);
  close(fd);
  kvds_client_close(c);
  kvh_worker_stop(&w);
  printf("ok zero_segments\n");
}

/* ---- 2. request ids in error replies ------------------------------------- */

/* On a fresh connection: PING `good_id`, then a frame with a bad header
 * (made by `spoil`) and id `bad_id`. The error reply must carry bad_id and
 * `want`, then the worker closes the connection. */
static void bad_header_case(int port, const char *what, uint64_t good_id,
                            uint64_t bad_id, int want,
                            void (*spoil)(struct kvds_proto_hdr *)) {
  int fd = kvh_raw_tcp(port);
  ping_raw(fd, good_id);
  struct rframe f = {0};
  rf_begin(&f, KVDS_OP_PING, 0, bad_id, 0);
  spoil(&f.h);
  rf_end(&f, 0); /* checksum valid: only the spoiled field is wrong */
  rf_send(fd, &f);
  free(f.b);
  struct rreply r;
  KVH_CHECK(read_reply(fd, &r, 5000) == 0, "%s: no error reply", what);
  KVH_CHECK(r.h.req_id == bad_id,
            "%s: error reply carries req_id %llu, want %llu (the previous "
            "request was %llu)",
            what, (unsigned long long)r.h.req_id, (unsigned long long)bad_id,
            (unsigned long long)good_id);
  KVH_CHECK(r.h.status == want, "%s: error reply status %s, want %s", what,
            kvds_err_name(r.h.status), kvds_err_name(want));
  size_t got;
  char rest[256];
  KVH_CHECK(kvh_read_to_eof(fd, rest, sizeof rest, &got, 5000) == 0,
            "%s: connection not closed after the error reply", what);
  KVH_CHECK(got == 0, "%s: %zu more bytes after the error reply", what, got);
  close(fd);
}

static void spoil_version(struct kvds_proto_hdr *h) {
  h->version = 2;
}
static void spoil_flags(struct kvds_proto_hdr *h) {
  h->flags = 0x8000;
}
static void spoil_opcode(struct kvds_proto_hdr *h) {
  h->opcode = 200;
}

static void sec_reply_ids(void) {
  struct kvh_worker w;
  kvh_worker_start(&w, "64MiB", NULL);
  bad_header_case(w.port, "version 2", 77, 78, KVDS_E_VERSION, spoil_version);
  bad_header_case(w.port, "unknown flags", 79, 80, KVDS_E_PROTO, spoil_flags);
  bad_header_case(w.port, "unknown opcode", 81, 82, KVDS_E_BADOP, spoil_opcode);

  /* Not our magic: nothing in the header can be trusted, so the reply (if
   * any) has id 0; the connection is closed either way. */
  int fd = kvh_raw_tcp(w.port);
  ping_raw(fd, 83);
  struct rframe f = {0};
  rf_begin(&f, KVDS_OP_PING, 0, 84, 0);
  rf_end(&f, 0);
  f.b[0] ^= 0x55;
  rf_send(fd, &f);
  free(f.b);
  uint8_t buf[4096];
  size_t got;
  KVH_CHECK(kvh_read_to_eof(fd, buf, sizeof buf, &got, 5000) == 0,
            "bad magic: connection not closed");
  KVH_CHECK(got == 0 || got >= KVDS_PROTO_HDR_LEN,
            "bad magic: %zu bytes, not a frame", got);
  if (got) {
    struct kvds_proto_hdr h;
    int rc = kvds_proto_hdr_decode(buf, got, &h); /* opcode 0: BADOP */
    KVH_CHECK(rc == 0 || rc == KVDS_E_BADOP, "bad magic: reply is %s",
              kvds_err_name(rc));
    KVH_CHECK(h.req_id == 0 && h.status != 0,
              "bad magic: reply has req_id %llu status %s, want 0 and an "
              "error",
              (unsigned long long)h.req_id, kvds_err_name(h.status));
  }
  close(fd);

  /* Other connections were not affected. */
  kvds_client *c = kvh_connect(w.addr);
  KVH_OK(kvds_ping(c));
  struct kvds_stats st;
  kvh_stats(c, &st);
  KVH_CHECK(st.protocol_errors >= 4, "protocol_errors %llu, want >= 4",
            (unsigned long long)st.protocol_errors);
  kvds_client_close(c);
  kvh_worker_stop(&w);
  printf("ok reply_ids\n");
}

/* ---- 4. output backpressure ---------------------------------------------- */

#define BP_KEYS 5000
#define BP_KLEN 200
#define BP_LISTS 2000
#define BP_POOL_MIB 64

static size_t bp_key(char *k, unsigned i) {
  memset(k, 'x', BP_KLEN);
  int n = snprintf(k, BP_KLEN, "bp%05u/", i);
  k[n] = 'x'; /* snprintf's NUL */
  return BP_KLEN;
}

/* A normal client: put / get / delete until told to stop; exits 0 only if
 * every call succeeded. Reports its iteration count on out_fd. */
static void bp_normal_client(const char *addr, int stop_fd, int out_fd) {
  kvds_client *c = kvh_connect(addr);
  uint8_t buf[4096];
  unsigned n = 0;
  uint64_t t0 = kvh_now_ms();
  for (; kvh_now_ms() - t0 < 60000; n++) {
    if (kvh_recv_byte(stop_fd, 0) != -2)
      break;
    char k[32];
    size_t kl = (size_t)snprintf(k, sizeof k, "normal/%u", n);
    size_t len = kvh_val_size(k, kl, sizeof buf), got = 0;
    kvh_val_fill(k, kl, buf, len);
    int rc = kvds_put(c, k, kl, buf, len);
    KVH_CHECK(rc == 0, "normal client: put %s: %s (%s)", k, kvds_err_name(rc),
              kvds_client_errmsg(c));
    memset(buf, 0, len);
    rc = kvds_get(c, k, kl, buf, sizeof buf, &got, 0);
    KVH_CHECK(rc == 0 && kvh_val_ok(k, kl, len, buf, got),
              "normal client: get %s: %s (%s)", k, kvds_err_name(rc),
              kvds_client_errmsg(c));
    if (n >= 16) {
      kl = (size_t)snprintf(k, sizeof k, "normal/%u", n - 16);
      rc = kvds_delete(c, k, kl);
      KVH_CHECK(rc == 0, "normal client: delete %s: %s", k, kvds_err_name(rc));
    }
    if (n == 0)
      kvh_send_byte(out_fd, 'R');
  }
  KVH_CHECK(kvh_write_all(out_fd, &n, sizeof n) == 0, "pipe");
  kvds_client_close(c);
  _exit(0);
}

static void sec_backpressure(void) {
  struct kvh_worker w;
  char mem[32];
  snprintf(mem, sizeof mem, "%dMiB", BP_POOL_MIB);
  /* Under AddressSanitizer freed memory sits in a quarantine (256 MiB by
   * default) and counts in RSS: the normal client's churn alone would fill
   * it. Keep it small for this worker so that RSS measures live memory.
   * (No effect on a build without ASan.) */
  const char *prev = getenv("ASAN_OPTIONS");
  char *saved = prev ? strdup(prev) : NULL;
  char opts[1024];
  snprintf(opts, sizeof opts, "%s%squarantine_size_mb=16", prev ? prev : "",
           prev && *prev ? ":" : "");
  setenv("ASAN_OPTIONS", opts, 1);
  kvh_worker_start(&w, mem, NULL);
  if (saved)
    setenv("ASAN_OPTIONS", saved, 1);
  else
    unsetenv("ASAN_OPTIONS");
  free(saved);
  kvds_client *c = kvh_connect(w.addr);

  /* 5000 keys of 200 bytes, tiny values. */
  char(*keys)[BP_KLEN] = malloc(sizeof *keys * BP_KEYS);
  struct kvds_iov *k = malloc(sizeof *k * BP_KEYS);
  struct kvds_iov *v = malloc(sizeof *v * BP_KEYS);
  uint8_t(*vals)[8] = malloc(sizeof *vals * BP_KEYS);
  KVH_CHECK(keys && k && v && vals, "out of memory");
  for (unsigned i = 0; i < BP_KEYS; i++) {
    k[i] = (struct kvds_iov){keys[i], bp_key(keys[i], i)};
    kvh_val_fill(keys[i], BP_KLEN, vals[i], 8);
    v[i] = (struct kvds_iov){vals[i], 8};
  }
  KVH_OK(kvds_mput(c, BP_KEYS, k, v, NULL));

  /* A LIST page stops at 1 MiB of reply: 5000 entries of 240 bytes would
   * be 1.2 MB. Paging still returns every key exactly once, in order. */
  unsigned seen = 0, pages = 0;
  char after[BP_KLEN];
  size_t alen = 0;
  for (;;) {
    struct kvds_list *l = NULL;
    KVH_OK(kvds_list(c, "bp", 2, alen ? after : NULL, alen, 10000, &l));
    pages++;
    KVH_CHECK(l->n * (KVDS_PROTO_ITEM_LEN + BP_KLEN) <= (1u << 20) + 4096,
              "LIST page of %zu entries (%zu bytes of reply) over 1 MiB", l->n,
              l->n * (KVDS_PROTO_ITEM_LEN + BP_KLEN));
    for (size_t i = 0; i < l->n; i++, seen++) {
      KVH_CHECK(seen < BP_KEYS, "LIST returned more than %u keys", BP_KEYS);
      KVH_CHECK(l->entries[i].klen == BP_KLEN &&
                    memcmp(l->entries[i].key, keys[seen], BP_KLEN) == 0,
                "LIST entry %u is not bp%05u", seen, seen);
    }
    int more = l->more;
    if (l->n) {
      memcpy(after, l->entries[l->n - 1].key, BP_KLEN);
      alen = BP_KLEN;
    }
    KVH_CHECK(l->n || !more, "empty LIST page with MORE set");
    kvds_list_free(l);
    if (!more)
      break;
    KVH_CHECK(pages < 100, "LIST does not end");
  }
  KVH_CHECK(seen == BP_KEYS, "LIST paged through %u keys, want %u", seen,
            BP_KEYS);
  KVH_CHECK(pages >= 2, "a 1.2 MB LIST came back in one page");

  /* A normal client works throughout. */
  int stop[2], out[2];
  KVH_CHECK(pipe(stop) == 0 && pipe(out) == 0, "pipe");
  pid_t normal = kvh_fork();
  if (normal == 0) {
    close(stop[1]);
    close(out[0]);
    bp_normal_client(w.addr, stop[0], out[1]);
  }
  close(stop[0]);
  close(out[1]);
  KVH_CHECK(kvh_recv_byte(out[0], 10000) == 'R', "normal client not running");

  long rss0 = proc_status_kb(w.pid, "VmRSS");
  const long limit_kb = (BP_POOL_MIB + 256) * 1024L;

  /* The flood: 2000 pipelined LISTs (limit 10000) from a client with a
   * tiny receive buffer that reads nothing. */
  struct rframe f = {0};
  rf_begin(&f, KVDS_OP_LIST, 0, 1, 10000);
  rf_item(&f, 0, 0, 0, NULL, 0);
  rf_end(&f, 0);
  size_t fl = f.len;
  uint8_t *burst = malloc(fl * BP_LISTS);
  KVH_CHECK(burst, "out of memory");
  for (unsigned i = 0; i < BP_LISTS; i++) {
    f.h.req_id = i + 1;
    kvds_proto_hdr_encode(&f.h, f.b);
    kvds_proto_seal_frame(f.b, f.b + KVDS_PROTO_HDR_LEN, f.h.meta_len);
    memcpy(burst + i * fl, f.b, fl);
  }
  free(f.b);
  int flood = tcp_small_rcvbuf(w.port);
  size_t sent = send_some(flood, burst, fl * BP_LISTS, 3000);
  free(burst);
  KVH_CHECK(sent >= 64 * fl, "only %zu bytes of LISTs went out", sent);

  /* While the replies are queued, the worker's memory stays bounded. */
  long peak = 0;
  for (int i = 0; i < 8; i++) {
    kvh_sleep_ms(250);
    long rss = proc_status_kb(w.pid, "VmRSS");
    if (rss > peak)
      peak = rss;
    KVH_CHECK(rss < limit_kb,
              "worker RSS %ld KiB with %u LISTs (%zu bytes) pipelined by a "
              "client that does not read: over pool + 256 MiB (%ld KiB; "
              "%ld KiB before)",
              rss, BP_LISTS, sent, limit_kb, rss0);
    KVH_OK(kvds_ping(c));
  }
  struct kvds_stats st;
  kvh_stats(c, &st);
  KVH_CHECK(st.connections >= 3, "the flooding connection is gone (%llu)",
            (unsigned long long)st.connections);

  kvh_send_byte(stop[1], 'S');
  unsigned iters = 0;
  KVH_CHECK(kvh_read_all(out[0], &iters, sizeof iters, 15000) == 0,
            "normal client did not report");
  kvh_wait_child_ok(normal, 15000, "normal client");
  close(stop[1]);
  close(out[0]);

  /* Closing the flooder leaves a worker that serves. */
  close(flood);
  uint64_t t0 = kvh_now_ms();
  do {
    kvh_stats(c, &st);
  } while (st.connections != 1 && kvh_now_ms() - t0 < 10000 &&
           (kvh_sleep_ms(20), 1));
  KVH_CHECK(st.connections == 1, "%llu connections after the flooder left",
            (unsigned long long)st.connections);
  uint8_t got[8];
  size_t glen = 0;
  KVH_OK(kvds_get(c, keys[BP_KEYS - 1], BP_KLEN, got, sizeof got, &glen, 0));
  KVH_CHECK(glen == 8 && memcmp(got, vals[BP_KEYS - 1], 8) == 0,
            "value changed");
  KVH_OK(kvds_put(c, "after-flood", 11, "ok", 2));
  struct kvds_list *l = NULL;
  KVH_OK(kvds_list(c, "bp", 2, NULL, 0, 10, &l));
  KVH_CHECK(l->n == 10 && l->more, "LIST after the flood: %zu entries", l->n);
  kvds_list_free(l);
  printf("ok backpressure (worker RSS %ld KiB before, peak %ld KiB, limit "
         "%ld KiB; %zu bytes of LISTs sent; normal client did %u rounds)\n",
         rss0, peak, limit_kb, sent, iters);
  free(keys);
  free(k);
  free(v);
  free(vals);
  kvds_client_close(c);
  kvh_worker_stop(&w);
}

/* ---- 5. a stuck reader releases its pins --------------------------------- */

#define SR_OBJS 16

static void sec_stuck_reader(void) {
  struct kvh_worker w;
  /* high watermark 1: the 16 objects fill the pool without evicting, and
   * any further put needs an eviction. */
  const char *extra[] = {"--frame-timeout-ms", "1500", "--high-watermark",
                         "1.0", NULL};
  kvh_worker_start(&w, "16MiB", extra);
  kvds_client *c = kvh_connect(w.addr);
  void *val = malloc(MiB);
  KVH_CHECK(val, "out of memory");
  char keys[SR_OBJS][8];
  for (unsigned i = 0; i < SR_OBJS; i++) {
    snprintf(keys[i], sizeof keys[i], "sr%02u", i);
    kvh_val_fill(keys[i], 4, val, MiB);
    KVH_OK(kvds_put(c, keys[i], 4, val, MiB));
  }
  struct kvds_stats st;
  kvh_stats(c, &st);
  KVH_CHECK(st.evictions == 0 && st.objects == SR_OBJS && st.pool_free < MiB,
            "setup: %llu evictions, %llu objects, %llu bytes free",
            (unsigned long long)st.evictions, (unsigned long long)st.objects,
            (unsigned long long)st.pool_free);

  /* Pipelined inline GETs of every key (16 MiB of reply each), never read. */
  struct rframe f = {0};
  int flood = tcp_small_rcvbuf(w.port);
  size_t sent = 0;
  for (unsigned r = 0; r < 64; r++) {
    rf_begin(&f, KVDS_OP_GET, KVDS_PF_INLINE, r + 1, 0);
    for (unsigned i = 0; i < SR_OBJS; i++)
      rf_item(&f, 0, 0, 0, keys[i], 4);
    rf_end(&f, 0);
    size_t s = send_some(flood, f.b, f.len, 1000);
    sent += s;
    if (s < f.len)
      break;
  }
  free(f.b);
  uint64_t t_sent = kvh_now_ms();

  /* Stuck: its replies pin the objects, so nothing can be evicted. */
  do {
    kvh_stats(c, &st);
  } while (st.pinned_objects == 0 && kvh_now_ms() - t_sent < 1000 &&
           (kvh_sleep_ms(5), 1));
  KVH_CHECK(st.pinned_objects > 0,
            "the stuck reader pins nothing (%zu bytes of GETs sent)", sent);
  uint64_t pinned_stuck = st.pinned_objects;
  int rc = kvds_put(c, "blocked", 7, val, MiB);
  uint64_t t_put = kvh_now_ms() - t_sent;
  /* (Only a stall of this process past the frame timeout could let the
   * sweep free the pins first.) */
  KVH_CHECK(rc == KVDS_E_NOSPACE || (rc == 0 && t_put >= 1400),
            "put while %llu objects are pinned: %s, want KVDS_E_NOSPACE",
            (unsigned long long)st.pinned_objects, kvds_err_name(rc));

  /* The worker gives up on it after --frame-timeout-ms (swept once a
   * second) and its pins go. */
  do {
    kvh_stats(c, &st);
  } while (st.pinned_objects != 0 && kvh_now_ms() - t_sent < 10000 &&
           (kvh_sleep_ms(20), 1));
  uint64_t waited = kvh_now_ms() - t_sent;
  KVH_CHECK(st.pinned_objects == 0,
            "%llu objects still pinned %llu ms after a client stopped reading",
            (unsigned long long)st.pinned_objects, (unsigned long long)waited);
  KVH_CHECK(st.connections == 1, "%llu connections: the stuck one is open",
            (unsigned long long)st.connections);
  size_t got;
  char sink[4096];
  KVH_CHECK(kvh_read_to_eof(flood, sink, sizeof sink, &got, 10000) == 0,
            "the stuck connection was not closed");
  close(flood);

  /* A put that needs an eviction succeeds again (the pool is full: refill
   * it in case "blocked" went in after all). */
  for (unsigned i = 0; st.pool_free >= MiB && i < 4; i++) {
    char fk[16];
    snprintf(fk, sizeof fk, "fill%u", i);
    KVH_OK(kvds_put(c, fk, strlen(fk), val, MiB));
    kvh_stats(c, &st);
  }
  KVH_CHECK(st.pool_free < MiB, "pool not full: %llu bytes free",
            (unsigned long long)st.pool_free);
  uint64_t ev0 = st.evictions;
  kvh_val_fill("extra", 5, val, MiB);
  KVH_OK(kvds_put(c, "extra", 5, val, MiB));
  kvh_stats(c, &st);
  KVH_CHECK(st.evictions > ev0, "the put evicted nothing");
  uint8_t *buf = malloc(MiB);
  KVH_OK(kvds_get(c, "extra", 5, buf, MiB, &got, 0));
  KVH_CHECK(kvh_val_ok("extra", 5, MiB, buf, got), "extra damaged");
  free(buf);
  free(val);
  kvds_client_close(c);
  kvh_worker_stop(&w);
  printf("ok stuck_reader (%llu objects pinned while stuck, released after "
         "%llu ms)\n",
         (unsigned long long)pinned_stuck, (unsigned long long)waited);
}

/* ---- 6. a client that timed out has no pins ------------------------------ */

static void sec_stale_view(void) {
  struct kvh_worker w;
  kvh_worker_start(&w, "64MiB", NULL);
  kvds_client *c = kvh_connect(w.addr);
  kvds_client *o = kvh_connect(w.addr);
  KVH_CHECK(kvds_client_is_local(c), "not a shared-memory client");
  void *val = kvh_val_new("v", 1, MiB);
  KVH_OK(kvds_put(c, "v", 1, val, MiB));
  struct kvds_iov key = {"v", 1};
  struct kvds_value view;
  int res;
  KVH_OK(kvds_mget(c, 1, &key, 0, &view, &res));
  KVH_CHECK(res == 0 && kvh_val_ok("v", 1, MiB, view.data, view.len),
            "mget v: %s", kvds_err_name(res));
  struct kvds_object_info info;
  KVH_OK(kvds_stat(o, "v", 1, &info));
  KVH_CHECK(info.pins == 1, "v has %u pins", info.pins);
  KVH_CHECK(kvds_client_is_connected(c) == 1, "connected client says 0");

  /* A call on c misses its 50 ms deadline: the worker is stopped. */
  kvds_client_set_timeout(c, 50);
  KVH_CHECK(kill(w.pid, SIGSTOP) == 0, "SIGSTOP: %s", strerror(errno));
  uint64_t t0 = kvh_now_ms();
  while (proc_state(w.pid) != 'T' && kvh_now_ms() - t0 < 5000)
    kvh_sleep_ms(1);
  char state = proc_state(w.pid);
  int rc = state == 'T' ? kvds_ping(c) : 0;
  kill(w.pid, SIGCONT);
  KVH_CHECK(state == 'T', "worker did not stop (state %c)", state);
  KVH_CHECK(rc == KVDS_E_TIMEOUT, "ping on a stopped worker: %s",
            kvds_err_name(rc));

  /* c disconnected itself; every later call says so. */
  KVH_CHECK(kvds_client_is_connected(c) == 0,
            "client still connected after a deadline overrun");
  kvds_client_set_timeout(c, 5000);
  KVH_EXPECT_RC(kvds_ping(c), KVDS_E_CLOSED);
  struct kvds_stats st;
  KVH_EXPECT_RC(kvds_stats(c, &st), KVDS_E_CLOSED);
  uint8_t small[16];
  size_t got;
  KVH_EXPECT_RC(kvds_get(c, "v", 1, small, sizeof small, &got, 0),
                KVDS_E_CLOSED);
  KVH_EXPECT_RC(kvds_put(c, "v2", 2, "x", 1), KVDS_E_CLOSED);
  KVH_CHECK(kvds_client_is_connected(c) == 0, "reconnected by itself");

  /* The worker dropped c's pin: another client sees none, and deleting the
   * key frees its memory at once (a pinned object would linger). */
  t0 = kvh_now_ms();
  do {
    KVH_OK(kvds_stat(o, "v", 1, &info));
    kvh_stats(o, &st);
  } while ((info.pins || st.pinned_objects || st.connections != 1) &&
           kvh_now_ms() - t0 < 5000 && (kvh_sleep_ms(10), 1));
  KVH_CHECK(info.pins == 0 && st.pinned_objects == 0,
            "v still has %u pins (%llu pinned objects) after its client "
            "disconnected",
            info.pins, (unsigned long long)st.pinned_objects);
  KVH_CHECK(st.connections == 1, "%llu connections, want 1",
            (unsigned long long)st.connections);
  uint64_t used = st.pool_used;
  KVH_OK(kvds_delete(o, "v", 1));
  kvh_stats(o, &st);
  KVH_CHECK(st.pool_used + MiB <= used,
            "delete freed %llu bytes of a 1 MiB object (still pinned?)",
            (unsigned long long)(used - st.pool_used));
  KVH_EXPECT_RC(kvds_stat(o, "v", 1, &info), KVDS_E_NOTFOUND);

  /* Releasing and closing the stale client is still safe. */
  kvds_release(c, 1, &view);
  kvds_client_close(c);
  KVH_OK(kvds_ping(o));
  kvds_client_close(o);
  free(val);
  kvh_worker_stop(&w);
  printf("ok stale_view\n");
}

/* ---- 7. TCP -> Unix upgrade ---------------------------------------------- */

static kvds_client *connect_ex(const char *addr, unsigned flags) {
  kvds_client *c = NULL;
  int rc = kvds_client_connect_ex(addr, 5000, flags, &c);
  KVH_CHECK(rc == 0, "connect %s (flags %#x): %s", addr, flags,
            kvds_err_name(rc));
  return c;
}

static void put_get(kvds_client *c, const char *key) {
  size_t kl = strlen(key), got = 0;
  char buf[64];
  void *v = kvh_val_new(key, kl, 48);
  KVH_OK(kvds_put(c, key, kl, v, 48));
  KVH_OK(kvds_get(c, key, kl, buf, sizeof buf, &got, 0));
  KVH_CHECK(kvh_val_ok(key, kl, 48, buf, got), "%s damaged", key);
  free(v);
}

static int has_key(const char *addr, unsigned flags, const char *key) {
  kvds_client *c = connect_ex(addr, flags);
  uint8_t present = 0;
  KVH_OK(kvds_exists(c, 1, &(struct kvds_iov){(void *)key, strlen(key)},
                     &present));
  kvds_client_close(c);
  return present;
}

static void sec_upgrade(void) {
  struct kvh_worker a, b;
  kvh_worker_start(&a, "64MiB", NULL);

  /* Which address forms give a shared-memory client. */
  kvds_client *c = connect_ex(a.addr, 0);
  KVH_CHECK(kvds_client_is_local(c) == 1, "%s did not upgrade", a.addr);
  put_get(c, "up/local");
  kvds_client_close(c);
  c = connect_ex(a.addr, KVDS_CONNECT_TCP_ONLY);
  KVH_CHECK(kvds_client_is_local(c) == 0, "%s with TCP_ONLY is local", a.addr);
  put_get(c, "up/tcp-only");
  kvds_client_close(c);
  c = connect_ex(a.tcp, 0);
  KVH_CHECK(kvds_client_is_local(c) == 0, "%s is local", a.tcp);
  put_get(c, "up/tcp");
  kvds_client_close(c);
  c = connect_ex(a.unix_addr, 0);
  KVH_CHECK(kvds_client_is_local(c) == 1, "%s is not local", a.unix_addr);
  kvds_client_close(c);

  /* Worker a keeps serving on its socket, moved away; worker b (512 MiB
   * pool) takes a's old socket path. a still advertises that path, so an
   * upgrade from a's TCP port reaches b: it must notice (different
   * instance) before it maps b's pool, and stay on TCP with a. */
  char moved[sizeof a.sock + 8];
  snprintf(moved, sizeof moved, "%s.moved", a.sock);
  KVH_CHECK(rename(a.sock, moved) == 0, "rename %s: %s", a.sock,
            strerror(errno));
  const char *extra[] = {"--socket", a.sock, NULL};
  kvh_worker_start(&b, "512MiB", extra);
  char b_unix[sizeof a.unix_addr];
  snprintf(b_unix, sizeof b_unix, "unix:%s", a.sock);
  char a_moved[sizeof moved + 8];
  snprintf(a_moved, sizeof a_moved, "unix:%s", moved);

  pid_t pid = kvh_fork();
  if (pid == 0) {
    /* Peak RSS from here on: mapping b's pool (pre-faulted) would add its
     * 512 MiB. */
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    KVH_CHECK(fd >= 0 && write(fd, "5", 1) == 1,
              "cannot reset the peak RSS: %s", strerror(errno));
    close(fd);
    long hwm0 = proc_status_kb(0, "VmHWM");
    kvds_client *u = connect_ex(a.addr, 0);
    long hwm1 = proc_status_kb(0, "VmHWM");
    KVH_CHECK(kvds_client_is_local(u) == 0,
              "upgraded to the wrong worker's socket");
    put_get(u, "up/identity");
    kvds_client_close(u);
    KVH_CHECK(hwm1 - hwm0 < 128 * 1024,
              "connecting to %s raised peak RSS by %ld KiB: the other "
              "worker's pool was mapped before its identity was checked",
              a.addr, hwm1 - hwm0);
    _exit(0);
  }
  kvh_wait_child_ok(pid, 30000, "identity check");
  KVH_CHECK(has_key(a.tcp, 0, "up/identity"), "the key is not on a");
  KVH_CHECK(!has_key(b_unix, 0, "up/identity"), "the key went to b");
  c = connect_ex(a_moved, 0);
  KVH_CHECK(kvds_client_is_local(c), "a's moved socket is not local");
  kvds_client_close(c);
  c = connect_ex(b.addr, 0);
  KVH_CHECK(kvds_client_is_local(c), "b did not upgrade on its own socket");
  kvds_client_close(c);

  /* b first: it removes its socket (a's old path); a then finds it gone. */
  kvh_worker_stop(&b);
  unlink(moved);
  kvh_worker_stop(&a);
  printf("ok upgrade\n");
}

/* ---- main ---------------------------------------------------------------- */

static const struct {
  const char *name;
  void (*fn)(void);
} SECTIONS[] = {
    {"zero_segments", sec_zero_segments}, {"reply_ids", sec_reply_ids},
    {"backpressure", sec_backpressure},   {"stuck_reader", sec_stuck_reader},
    {"stale_view", sec_stale_view},       {"upgrade", sec_upgrade},
};

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_regressions");
  const char *only = argc > 2 ? argv[2] : NULL;
  int ran = 0;
  for (size_t i = 0; i < sizeof SECTIONS / sizeof SECTIONS[0]; i++)
    if (!only || strcmp(only, SECTIONS[i].name) == 0) {
      SECTIONS[i].fn();
      ran++;
    }
  KVH_CHECK(ran, "no section named %s", only);
  return kvh_finish();
}
