/*
 * test_net.c — unit tests of the framed-RPC layer (src/net/rpc.h) over a
 * socketpair: one end is the connection under test, the other a fake
 * worker in the same thread that reads requests and writes replies built
 * with the shared frame builder (proto.h). Socket buffers hold a reply
 * written before the call that reads it, so no thread is needed.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "kvds/kvds.h"
#include "net/handshake.h"
#include "net/rpc.h"
#include "proto/proto.h"

struct pair {
  struct kvds_rpc rpc; /* the connection under test */
  int fake;            /* the fake worker's end (blocking) */
};

static int pair_setup(void **state) {
  struct pair *p = calloc(1, sizeof *p);
  int sv[2];
  assert_non_null(p);
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  kvds_rpc_init(&p->rpc, 0);
  assert_int_equal(kvds_rpc_adopt(&p->rpc, &kvds_transport_unix, sv[0]), 0);
  assert_true(kvds_rpc_is_up(&p->rpc));
  p->fake = sv[1];
  *state = p;
  return 0;
}

static int pair_teardown(void **state) {
  struct pair *p = *state;
  kvds_rpc_close(&p->rpc);
  if (p->fake >= 0)
    close(p->fake);
  free(p);
  return 0;
}

static uint64_t in_ms(int ms) {
  return kvds_now_us() + (uint64_t)ms * 1000u;
}

static void read_exact(int fd, void *buf, size_t len) {
  uint8_t *b = buf;
  while (len) {
    ssize_t r = read(fd, b, len);
    assert_true(r > 0);
    b += r;
    len -= (size_t)r;
  }
}

static void write_exact(int fd, const void *buf, size_t len) {
  const uint8_t *b = buf;
  while (len) {
    ssize_t w = write(fd, b, len);
    assert_true(w > 0);
    b += w;
    len -= (size_t)w;
  }
}

/* A request the fake worker read: header, items, data. */
struct req {
  struct kvds_proto_hdr h;
  uint8_t *meta;
  struct kvds_proto_item it[8];
  const uint8_t *key[8];
  uint8_t *data;
};

static void req_read(int fd, struct req *q) {
  uint8_t hdr[KVDS_PROTO_HDR_LEN];
  read_exact(fd, hdr, sizeof hdr);
  assert_int_equal(kvds_proto_hdr_decode(hdr, sizeof hdr, &q->h), 0);
  assert_false(q->h.flags & KVDS_PF_REPLY);
  assert_true(q->h.count <= 8);
  q->meta = malloc(q->h.meta_len ? q->h.meta_len : 1);
  q->data = malloc(q->h.data_len ? q->h.data_len : 1);
  assert_non_null(q->meta);
  assert_non_null(q->data);
  read_exact(fd, q->meta, q->h.meta_len);
  assert_int_equal(kvds_proto_verify(hdr, q->meta, q->h.meta_len), 0);
  size_t pos = 0;
  for (uint32_t i = 0; i < q->h.count; i++)
    assert_int_equal(kvds_proto_item_decode(q->meta, q->h.meta_len, &pos,
                                            &q->it[i], &q->key[i]),
                     0);
  assert_int_equal(pos, q->h.meta_len);
  read_exact(fd, q->data, q->h.data_len);
}

static void req_free(struct req *q) {
  free(q->meta);
  free(q->data);
}

/* Writes a reply built with the shared builder: header and items, then
 * `dlen` bytes of data; pass_fd >= 0 goes along with SCM_RIGHTS. */
static void reply_write(int fd, struct kvds_proto_builder *b, uint8_t op,
                        uint64_t req_id, uint16_t flags, int32_t status,
                        const void *data, size_t dlen, int pass_fd) {
  struct kvds_proto_hdr h = {.opcode = op,
                             .flags = (uint16_t)(flags | KVDS_PF_REPLY),
                             .req_id = req_id,
                             .status = status,
                             .data_len = dlen};
  assert_int_equal(kvds_proto_build_finish(b, &h), 0);
  if (pass_fd >= 0) {
    union {
      char buf[CMSG_SPACE(sizeof(int))];
      struct cmsghdr align;
    } u;
    struct iovec iov = {b->buf, b->len};
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = u.buf,
                        .msg_controllen = sizeof u.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
    assert_int_equal(sendmsg(fd, &mh, 0), (ssize_t)b->len);
  } else {
    write_exact(fd, b->buf, b->len);
  }
  if (dlen)
    write_exact(fd, data, dlen);
  kvds_proto_build_free(b);
}

static void item(struct kvds_proto_builder *b, int32_t status, uint64_t a,
                 uint64_t bb, uint64_t c, uint64_t d, const char *key) {
  struct kvds_proto_item it = {.status = status,
                               .klen = key ? (uint32_t)strlen(key) : 0,
                               .a = a,
                               .b = bb,
                               .c = c,
                               .d = d};
  assert_int_equal(kvds_proto_build_item(b, &it, key), 0);
}

/* ---- tests ----------------------------------------------------------------
 */

/* A request with items and bulk data goes out as one frame; its reply's
 * header and items come back decoded. */
static void test_call_round_trip(void **state) {
  struct pair *p = *state;
  struct kvds_rpc *r = &p->rpc;
  static const char val[] = "0123456789";
  struct iovec data[2] = {{(void *)val, 4}, {(void *)(val + 4), 6}};

  kvds_rpc_begin(r);
  assert_int_equal(kvds_rpc_item(r, 10, 2, 3, 4, "key-a", 5), 0);
  assert_int_equal(kvds_rpc_item(r, 0, 0, 0, 0, NULL, 0), 0);
  assert_int_equal(kvds_rpc_count(r), 2);
  int64_t id = kvds_rpc_send(r, KVDS_OP_PUT, 0, 77, data, 2, in_ms(1000));
  assert_true(id > 0);

  struct req q;
  req_read(p->fake, &q);
  assert_int_equal(q.h.opcode, KVDS_OP_PUT);
  assert_int_equal(q.h.req_id, (uint64_t)id);
  assert_int_equal(q.h.arg, 77);
  assert_int_equal(q.h.count, 2);
  assert_int_equal(q.h.data_len, 10);
  assert_int_equal(q.it[0].a, 10);
  assert_int_equal(q.it[0].d, 4);
  assert_int_equal(q.it[0].klen, 5);
  assert_memory_equal(q.key[0], "key-a", 5);
  assert_null(q.key[1]);
  assert_memory_equal(q.data, val, 10);
  req_free(&q);

  struct kvds_proto_builder b;
  kvds_proto_build_init(&b);
  item(&b, 0, 1, 0, 0, 0, NULL);
  item(&b, KVDS_E_NOTFOUND, 0, 0, 0, 0, "k2");
  reply_write(p->fake, &b, KVDS_OP_PUT, (uint64_t)id, 0, 0, NULL, 0, -1);
  assert_int_equal(kvds_rpc_recv_reply(r, id, KVDS_OP_PUT, in_ms(1000)), 0);
  assert_int_equal(r->rh.count, 2);
  assert_int_equal(r->rit[0].a, 1);
  assert_int_equal(r->rit[1].status, KVDS_E_NOTFOUND);
  assert_memory_equal(r->rkey[1], "k2", 2);
  assert_int_equal(r->rdata_left, 0);
  assert_false(kvds_rpc_stale(r));

  /* A refusal of the whole request: its status, the connection stays. */
  kvds_rpc_begin(r);
  int64_t id2 = kvds_rpc_send(r, KVDS_OP_PING, 0, 0, NULL, 0, in_ms(1000));
  req_read(p->fake, &q);
  req_free(&q);
  kvds_proto_build_init(&b);
  reply_write(p->fake, &b, KVDS_OP_PING, (uint64_t)id2, 0, KVDS_E_SHUTDOWN,
              NULL, 0, -1);
  assert_int_equal(kvds_rpc_recv_reply(r, id2, KVDS_OP_PING, in_ms(1000)),
                   KVDS_E_SHUTDOWN);
  assert_true(kvds_rpc_is_up(r));
  assert_string_equal(r->errmsg, "worker: worker is shutting down");
}

/* Bulk data lands straight in caller memory, hashed on the way. */
static void test_bulk_into_caller_memory(void **state) {
  struct pair *p = *state;
  struct kvds_rpc *r = &p->rpc;
  /* Larger than the socket buffer and the read buffer: most bytes arrive
   * after the call started reading, in several pieces. */
  size_t len = 3u << 20;
  uint8_t *src = malloc(len), *dst = malloc(len);
  assert_non_null(src);
  assert_non_null(dst);
  for (size_t i = 0; i < len; i++)
    src[i] = (uint8_t)(i * 31 + (i >> 12));

  kvds_rpc_begin(r);
  kvds_rpc_item(r, 0, 0, 0, 0, "k", 1);
  int64_t id =
      kvds_rpc_send(r, KVDS_OP_GET, KVDS_PF_INLINE, 0, NULL, 0, in_ms(5000));
  struct req q;
  req_read(p->fake, &q);
  req_free(&q);

  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) { /* the fake worker writes while the parent reads */
    struct kvds_proto_builder b;
    kvds_proto_build_init(&b);
    struct kvds_proto_item it = {.a = len, .c = kvds_checksum(src, len)};
    kvds_proto_build_item(&b, &it, NULL);
    struct kvds_proto_hdr h = {.opcode = KVDS_OP_GET,
                               .flags = KVDS_PF_REPLY | KVDS_PF_INLINE,
                               .req_id = (uint64_t)id,
                               .data_len = len};
    kvds_proto_build_finish(&b, &h);
    int ok = write(p->fake, b.buf, b.len) == (ssize_t)b.len;
    for (size_t off = 0; ok && off < len;) {
      ssize_t w = write(p->fake, src + off, len - off);
      ok = w > 0;
      off += ok ? (size_t)w : 0;
    }
    _exit(ok ? 0 : 1);
  }
  assert_int_equal(kvds_rpc_recv_reply(r, id, KVDS_OP_GET, in_ms(5000)), 0);
  assert_int_equal(r->rdata_left, len);
  uint64_t sum = 0;
  size_t first = 1000;
  assert_int_equal(kvds_rpc_recv_hashed(r, dst, first, &sum, in_ms(5000)), 0);
  assert_int_equal(sum, kvds_checksum(src, first));
  assert_int_equal(
      kvds_rpc_recv_hashed(r, dst + first, len - first, &sum, in_ms(5000)), 0);
  assert_int_equal(sum, kvds_checksum(src + first, len - first));
  assert_memory_equal(dst, src, len);
  assert_int_equal(r->rdata_left, 0);
  int st = -1;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  /* Asking for more than the reply carries is a protocol error. */
  assert_int_equal(kvds_rpc_recv_data(r, dst, 1, in_ms(100)), KVDS_E_PROTO);
  assert_false(kvds_rpc_is_up(r));
  free(src);
  free(dst);
}

/* A peer that never answers: the call returns by its deadline, broken. */
static void test_deadline_silent_peer(void **state) {
  struct pair *p = *state;
  struct kvds_rpc *r = &p->rpc;
  kvds_rpc_begin(r);
  uint64_t t0 = kvds_now_us(), deadline = t0 + 50 * 1000;
  int64_t id = kvds_rpc_send(r, KVDS_OP_PING, 0, 0, NULL, 0, deadline);
  assert_true(id > 0);
  assert_int_equal(kvds_rpc_recv_reply(r, id, KVDS_OP_PING, deadline),
                   KVDS_E_TIMEOUT);
  assert_true(kvds_now_us() >= deadline);
  assert_false(kvds_rpc_is_up(r));
  assert_string_equal(r->errmsg, "receive: deadline exceeded (disconnected)");
  assert_true(kvds_rpc_stale(r));
  /* Later calls fail at once. */
  kvds_rpc_begin(r);
  assert_int_equal(kvds_rpc_send(r, KVDS_OP_PING, 0, 0, NULL, 0, in_ms(1000)),
                   KVDS_E_CLOSED);
  assert_string_equal(r->errmsg, "not connected (an earlier error closed it)");
}

/* An idle connection goes stale when the peer closes it or sends
 * something unasked; a call on a closed one fails with KVDS_E_CLOSED. */
static void test_peer_closed(void **state) {
  struct pair *p = *state;
  struct kvds_rpc *r = &p->rpc;
  assert_false(kvds_rpc_stale(r));
  write_exact(p->fake, "x", 1);
  assert_true(kvds_rpc_stale(r));
  uint8_t x;
  assert_int_equal(recv(r->t.fd, &x, 1, 0), 1); /* take it back */
  assert_false(kvds_rpc_stale(r));

  kvds_rpc_begin(r);
  int64_t id = kvds_rpc_send(r, KVDS_OP_PING, 0, 0, NULL, 0, in_ms(1000));
  assert_true(id > 0);
  struct req q;
  req_read(p->fake, &q); /* read, so the close is an end of stream */
  req_free(&q);
  close(p->fake);
  p->fake = -1;
  assert_true(kvds_rpc_stale(r));
  assert_int_equal(kvds_rpc_recv_reply(r, id, KVDS_OP_PING, in_ms(1000)),
                   KVDS_E_CLOSED);
  assert_false(kvds_rpc_is_up(r));
  assert_int_equal(r->t.fd, -1); /* closed, not only shut down */
}

/* With KVDS_RPC_KEEP_FD an error only shuts the socket down, and
 * kvds_rpc_shutdown ends a wait in progress. */
static void test_keep_fd_shutdown(void **state) {
  struct pair *p = *state;
  struct kvds_rpc *r = &p->rpc;
  r->flags |= KVDS_RPC_KEEP_FD;
  kvds_rpc_begin(r);
  int64_t id = kvds_rpc_send(r, KVDS_OP_PING, 0, 0, NULL, 0, in_ms(1000));
  kvds_rpc_shutdown(r); /* as another thread would */
  assert_int_equal(kvds_rpc_recv_reply(r, id, KVDS_OP_PING, in_ms(5000)),
                   KVDS_E_CLOSED);
  assert_false(kvds_rpc_is_up(r));
  assert_true(r->t.fd >= 0);
}

static int intr_yes(void *ud) {
  (*(int *)ud)++;
  return 1;
}

/* An interrupted wait abandons its request: its reply, when it comes, is
 * skipped by the next call, and the pins it carries are released. */
static void test_interrupt_abandons(void **state) {
  struct pair *p = *state;
  struct kvds_rpc *r = &p->rpc;
  int asked = 0;
  kvds_rpc_set_interrupt(r, intr_yes, &asked);
  kvds_rpc_begin(r);
  kvds_rpc_item(r, 0, 0, 0, 0, "k", 1);
  int64_t get = kvds_rpc_send(r, KVDS_OP_GET, 0, 1000, NULL, 0, in_ms(5000));
  assert_int_equal(kvds_rpc_recv_reply(r, get, KVDS_OP_GET, in_ms(5000)),
                   KVDS_E_INTR);
  assert_true(asked > 0);
  assert_true(kvds_rpc_is_up(r));
  assert_true(kvds_rpc_stale(r)); /* a reply is still due */
  kvds_rpc_set_interrupt(r, NULL, NULL);

  kvds_rpc_begin(r);
  int64_t ping = kvds_rpc_send(r, KVDS_OP_PING, 0, 0, NULL, 0, in_ms(1000));
  struct req q;
  req_read(p->fake, &q);
  req_free(&q);
  req_read(p->fake, &q);
  req_free(&q);
  struct kvds_proto_builder b;
  kvds_proto_build_init(&b);
  item(&b, 0, 5, 0, 0, 0xabcd, NULL); /* pinned, handle 0xabcd */
  reply_write(p->fake, &b, KVDS_OP_GET, (uint64_t)get, 0, 0, NULL, 0, -1);
  kvds_proto_build_init(&b);
  reply_write(p->fake, &b, KVDS_OP_PING, (uint64_t)ping, 0, 0, NULL, 0, -1);
  assert_int_equal(kvds_rpc_recv_reply(r, ping, KVDS_OP_PING, in_ms(1000)), 0);
  assert_false(kvds_rpc_stale(r));

  req_read(p->fake, &q); /* the pin given back */
  assert_int_equal(q.h.opcode, KVDS_OP_RELEASE);
  assert_true(q.h.flags & KVDS_PF_NOREPLY);
  assert_int_equal(q.h.count, 1);
  assert_int_equal(q.it[0].a, 0xabcd);
  req_free(&q);
}

/* A reply to nothing asked is a protocol error. */
static void test_unexpected_reply(void **state) {
  struct pair *p = *state;
  struct kvds_rpc *r = &p->rpc;
  kvds_rpc_begin(r);
  int64_t id = kvds_rpc_send(r, KVDS_OP_PING, 0, 0, NULL, 0, in_ms(1000));
  struct kvds_proto_builder b;
  kvds_proto_build_init(&b);
  reply_write(p->fake, &b, KVDS_OP_PING, (uint64_t)id + 5, 0, 0, NULL, 0, -1);
  assert_int_equal(kvds_rpc_recv_reply(r, id, KVDS_OP_PING, in_ms(1000)),
                   KVDS_E_PROTO);
  assert_string_equal(
      r->errmsg,
      "unexpected reply: protocol error (malformed frame) (disconnected)");
}

/* HELLO over a Unix socket: the pool's fd comes with the reply. */
static void test_hello_passes_fd(void **state) {
  struct pair *p = *state;
  struct kvds_rpc *r = &p->rpc;
  int memfd = memfd_create("kvds-test", MFD_CLOEXEC);
  assert_true(memfd >= 0);
  /* The first request's id is 1: answer ahead of it. */
  struct kvds_proto_builder b;
  kvds_proto_build_init(&b);
  item(&b, 0, 4096, 64, 1234, 0xfeed, "/tmp/kvds.sock");
  reply_write(p->fake, &b, KVDS_OP_HELLO, 1, KVDS_PF_SHM, 0, NULL, 0, memfd);
  close(memfd);

  struct kvds_hello h;
  assert_int_equal(kvds_handshake_hello(r, 1, "peer-a", &h, in_ms(1000)), 0);
  assert_int_equal(h.nonce, 0xfeed);
  assert_string_equal(h.sock_path, "/tmp/kvds.sock");
  assert_true(h.pool_fd >= 0);
  close(h.pool_fd);

  struct req q;
  req_read(p->fake, &q);
  assert_int_equal(q.h.opcode, KVDS_OP_HELLO);
  assert_int_equal(q.h.count, 2);
  assert_int_equal(q.it[0].a, KVDS_HELLO_F_SHM);
  assert_int_equal(q.it[0].b, KVDS_PROTO_VERSION);
  assert_memory_equal(q.key[1], "peer-a", 6);
  req_free(&q);

  /* No fd with the pool asked for: refused, the connection stays. */
  kvds_proto_build_init(&b);
  item(&b, 0, 0, 0, 0, 1, NULL);
  reply_write(p->fake, &b, KVDS_OP_HELLO, 2, 0, 0, NULL, 0, -1);
  assert_int_equal(kvds_handshake_hello(r, 1, NULL, &h, in_ms(1000)),
                   KVDS_E_PROTO);
  assert_string_equal(r->errmsg, "worker did not pass its pool");
  assert_true(kvds_rpc_is_up(r));
}

/* The builder: an empty frame, and one whose allocation fails is refused
 * by finish (kept sticky for later items). */
static void test_builder(void **state) {
  (void)state;
  struct kvds_proto_builder b;
  struct kvds_proto_hdr h = {.opcode = KVDS_OP_PING, .req_id = 9};
  struct kvds_proto_hdr d;
  kvds_proto_build_init(&b);
  assert_null(b.buf);
  assert_int_equal(kvds_proto_build_finish(&b, &h), 0);
  assert_int_equal(b.len, KVDS_PROTO_HDR_LEN);
  assert_int_equal(kvds_proto_hdr_decode(b.buf, b.len, &d), 0);
  assert_int_equal(d.req_id, 9);
  assert_int_equal(d.count, 0);
  assert_int_equal(kvds_proto_verify(b.buf, b.buf + b.len, 0), 0);
  kvds_proto_build_reset(&b);
  for (int i = 0; i < 100; i++)
    item(&b, 0, (uint64_t)i, 0, 0, 0, "a-key-of-some-length");
  assert_int_equal(kvds_proto_build_finish(&b, &h), 0);
  assert_int_equal(kvds_proto_hdr_decode(b.buf, KVDS_PROTO_HDR_LEN, &d), 0);
  assert_int_equal(d.count, 100);
  assert_int_equal(
      kvds_proto_meta_validate(b.buf + KVDS_PROTO_HDR_LEN, d.meta_len, d.count),
      0);
  b.oom = 1; /* as after a failed realloc */
  struct kvds_proto_item it = {0};
  assert_int_equal(kvds_proto_build_item(&b, &it, NULL), -ENOMEM);
  assert_int_equal(kvds_proto_build_finish(&b, &h), -ENOMEM);
  kvds_proto_build_free(&b);
  assert_null(b.buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_call_round_trip, pair_setup,
                                      pair_teardown),
      cmocka_unit_test_setup_teardown(test_bulk_into_caller_memory, pair_setup,
                                      pair_teardown),
      cmocka_unit_test_setup_teardown(test_deadline_silent_peer, pair_setup,
                                      pair_teardown),
      cmocka_unit_test_setup_teardown(test_peer_closed, pair_setup,
                                      pair_teardown),
      cmocka_unit_test_setup_teardown(test_keep_fd_shutdown, pair_setup,
                                      pair_teardown),
      cmocka_unit_test_setup_teardown(test_interrupt_abandons, pair_setup,
                                      pair_teardown),
      cmocka_unit_test_setup_teardown(test_unexpected_reply, pair_setup,
                                      pair_teardown),
      cmocka_unit_test_setup_teardown(test_hello_passes_fd, pair_setup,
                                      pair_teardown),
      cmocka_unit_test(test_builder),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
