/*
 * test_call_deadline — one deadline per call, whatever the call sends. A
 * slow fake worker (a child process speaking the wire format, on a Unix
 * socket that passes a real pool, and on TCP) answers every request after
 * 60% of the client's I/O timeout (a GET after its wait plus that). A call
 * made of two requests would finish after 120% of the timeout if each
 * request had a clock of its own; it must fail with KVDS_E_TIMEOUT by its
 * one deadline instead (plus a margin):
 *  - a put over shared memory (CREATE, then SEAL);
 *  - batches over KVDS_BATCH_MAX, sent as two requests: mput, mget (also
 *    with a wait, whose second request asks only for what is left of it),
 *    mcreate, exists, mdelete.
 * And one request that is answered within the timeout succeeds, so the
 * fake is known to answer. A Unix-socket connect to a worker whose accept
 * queue is full waits for room (it used to fail at once, or "succeed" on a
 * socket that was never connected), until its deadline.
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"
#include "pool/pool.h"
#include "proto/proto.h"

#define TIMEOUT_MS 1000
#define DELAY_MS 600 /* each reply: 60% of the timeout */
#define WAIT_MS 500
#define MARGIN_MS 1000
#define BIG (KVDS_BATCH_MAX + 1) /* two requests */

static struct kvds_pool pool;

/* ---- the fake worker ------------------------------------------------------
 */

struct reply {
  uint8_t *b;
  size_t len, cap;
  struct kvds_proto_hdr h;
};

static void reply_item(struct reply *r, int32_t st, uint64_t a, uint64_t b,
                       uint64_t c) {
  struct kvds_proto_item it = {.status = st, .a = a, .b = b, .c = c};
  if (r->len + kvds_proto_item_size(0) > r->cap) {
    r->cap = r->cap * 2 + 4096;
    KVH_CHECK((r->b = realloc(r->b, r->cap)), "out of memory");
  }
  r->len += kvds_proto_item_encode(&it, NULL, r->b + r->len);
  r->h.count++;
}

/* Sends the reply (with the pool fd when fd >= 0); a client that gave up
 * and hung up is no error. */
static void reply_send(int cfd, struct reply *r, int fd) {
  r->h.meta_len = (uint32_t)(r->len - KVDS_PROTO_HDR_LEN);
  kvds_proto_hdr_encode(&r->h, r->b);
  kvds_proto_seal_frame(r->b, r->b + KVDS_PROTO_HDR_LEN, r->h.meta_len);
  struct iovec iov = {r->b, r->len};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    mh.msg_control = u.buf;
    mh.msg_controllen = sizeof u.buf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
  }
  ssize_t w = sendmsg(cfd, &mh, MSG_NOSIGNAL);
  (void)w;
}

/* A client silent this long is gone (the fake never waits unbounded). */
#define SERVE_IDLE_MS 60000

/* Serves one connection until the client hangs up. */
static void serve(int cfd, int is_unix) {
  struct reply r = {0};
  uint8_t hraw[KVDS_PROTO_HDR_LEN];
  while (kvh_read_all(cfd, hraw, sizeof hraw, SERVE_IDLE_MS) == 0) {
    struct kvds_proto_hdr h;
    KVH_CHECK(kvds_proto_hdr_decode(hraw, sizeof hraw, &h) == 0, "bad frame");
    uint8_t *rest = malloc(h.meta_len + h.data_len + 1);
    KVH_CHECK(rest, "out of memory");
    if (kvh_read_all(cfd, rest, h.meta_len + h.data_len, SERVE_IDLE_MS)) {
      free(rest);
      break;
    }
    r.len = KVDS_PROTO_HDR_LEN;
    r.h = (struct kvds_proto_hdr){.magic = KVDS_PROTO_MAGIC,
                                  .version = KVDS_PROTO_VERSION,
                                  .opcode = h.opcode,
                                  .flags = KVDS_PF_REPLY,
                                  .req_id = h.req_id};
    int fd = -1, delay = DELAY_MS;
    size_t pos = 0;
    struct kvds_proto_item it;
    const uint8_t *key;
    for (uint32_t i = 0; i < h.count; i++) {
      KVH_CHECK(kvds_proto_item_decode(rest, h.meta_len, &pos, &it, &key) == 0,
                "bad item");
      switch (h.opcode) {
      case KVDS_OP_HELLO: /* no socket path: TCP clients stay on TCP */
        if (i == 0) {
          reply_item(&r, 0, pool.total_size, pool.data_offset, 0);
          if (is_unix && (it.a & 1)) {
            fd = pool.fd;
            r.h.flags |= KVDS_PF_SHM;
          }
        }
        delay = 0;
        break;
      case KVDS_OP_CREATE: /* every object at the start of the data area */
        reply_item(&r, 0, i + 1, pool.data_offset, it.a);
        break;
      case KVDS_OP_GET:
        reply_item(&r, h.arg ? KVDS_E_TIMEOUT : KVDS_E_NOTFOUND, 0, 0, 0);
        delay = (int)h.arg + DELAY_MS;
        break;
      default: /* SEAL, PUT, EXISTS, DELETE, ABORT: done */
        reply_item(&r, 0, 0, 0, 0);
        break;
      }
    }
    free(rest);
    if (h.opcode == KVDS_OP_ABORT || h.opcode == KVDS_OP_PING)
      delay = 0;
    if (h.flags & KVDS_PF_NOREPLY)
      continue;
    kvh_sleep_ms(delay); /* the slowness under test */
    reply_send(cfd, &r, fd);
  }
  free(r.b);
  close(cfd);
}

/* Accepts on both sockets, one connection at a time, until killed; starts
 * after delay_ms. */
static void fake_worker(int ufd, int tfd, int delay_ms) {
  kvh_sleep_ms(delay_ms);
  for (;;) {
    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(ufd, &rd);
    FD_SET(tfd, &rd);
    if (select((ufd > tfd ? ufd : tfd) + 1, &rd, NULL, NULL, NULL) < 0)
      continue;
    int is_unix = FD_ISSET(ufd, &rd);
    int cfd = accept(is_unix ? ufd : tfd, NULL, NULL);
    if (cfd >= 0)
      serve(cfd, is_unix);
  }
}

/* ---- the client side ------------------------------------------------------
 */

struct keys {
  struct kvds_iov iov[BIG];
  char k[BIG][16];
};

static void keys_init(struct keys *ks) {
  for (int i = 0; i < BIG; i++)
    ks->iov[i] = (struct kvds_iov){
        ks->k[i], (size_t)snprintf(ks->k[i], sizeof ks->k[i], "k%d", i)};
}

/* A client of the fake with the I/O timeout under test (the connect gets
 * longer: the fake may still be busy with the last client's request). */
static kvds_client *connect_fake(const char *addr) {
  kvds_client *c = NULL;
  int rc = kvds_client_connect(addr, 10000, &c);
  KVH_CHECK(rc == 0, "connect %s: %s", addr, kvds_strerror(rc));
  kvds_client_set_timeout(c, TIMEOUT_MS);
  return c;
}

/* A worker whose accept queue is full (two connections nobody accepted yet,
 * then closed) and that starts accepting after 1.5 s: a connect with a
 * shorter timeout fails by its deadline, a connect with a longer one waits
 * and works. */
static void full_queue(void) {
  struct sockaddr_un su = {.sun_family = AF_UNIX};
  char addr[sizeof su.sun_path + 8];
  snprintf(su.sun_path, sizeof su.sun_path, "%s/full.sock", kvh_run_dir());
  snprintf(addr, sizeof addr, "unix:%s", su.sun_path);
  int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  KVH_CHECK(lfd >= 0 && bind(lfd, (struct sockaddr *)&su, sizeof su) == 0 &&
                listen(lfd, 1) == 0,
            "unix listen: %s", strerror(errno));
  int queued[2];
  for (int i = 0; i < 2; i++) {
    queued[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    KVH_CHECK(queued[i] >= 0 &&
                  connect(queued[i], (struct sockaddr *)&su, sizeof su) == 0,
              "filling the accept queue: %s", strerror(errno));
  }
  int extra = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  KVH_CHECK(connect(extra, (struct sockaddr *)&su, sizeof su) < 0 &&
                errno == EAGAIN,
            "the accept queue is not full");
  close(extra);
  for (int i = 0; i < 2; i++) /* queued still, until accepted */
    close(queued[i]);
  pid_t fake = kvh_fork();
  if (fake == 0)
    fake_worker(lfd, lfd, 1500);
  kvh_kill_on_fail(fake);
  close(lfd);

  kvds_client *c = NULL;
  uint64_t t0 = kvh_now_ms();
  int rc = kvds_client_connect(addr, 500, &c);
  uint64_t el = kvh_now_ms() - t0;
  KVH_CHECK(rc == KVDS_E_TIMEOUT && el <= 500 + MARGIN_MS,
            "connect to a full queue: %s after %llu ms (timeout 500 ms)",
            kvds_err_name(rc), (unsigned long long)el);
  rc = kvds_client_connect(addr, 10000, &c);
  KVH_CHECK(rc == 0, "connect once there is room: %s", kvds_err_name(rc));
  KVH_CHECK(kvds_client_is_local(c), "the fake's pool was not mapped");
  KVH_OK(kvds_ping(c));
  kvds_client_close(c);
  kill(fake, SIGKILL);
  kvh_wait_pid(fake, 10000);
  kvh_kill_on_fail_cancel(fake);
}

/* The call `expr` on a fresh client of addr fails with KVDS_E_TIMEOUT by
 * its deadline (TIMEOUT_MS + wait) plus the margin. */
#define BY_DEADLINE(addr, wait, what, expr)                                    \
  do {                                                                         \
    kvds_client *c = connect_fake(addr);                                       \
    uint64_t t0_ = kvh_now_ms();                                               \
    int rc_ = (expr);                                                          \
    uint64_t el_ = kvh_now_ms() - t0_;                                         \
    KVH_CHECK(rc_ == KVDS_E_TIMEOUT && el_ <= TIMEOUT_MS + (wait) + MARGIN_MS, \
              "%s returned %s after %llu ms (deadline %d ms)", what,           \
              kvds_err_name(rc_), (unsigned long long)el_,                     \
              TIMEOUT_MS + (wait));                                            \
    KVH_CHECK(!kvds_client_is_connected(c), "%s: still connected", what);      \
    kvds_client_close(c);                                                      \
  } while (0)

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_call_deadline");
  KVH_OK(kvds_pool_create(&pool, "fake", 1u << 20, KVDS_POOL_HUGE_OFF));
  struct sockaddr_un su = {.sun_family = AF_UNIX};
  char uaddr[sizeof su.sun_path + 8], taddr[64];
  int pl =
      snprintf(su.sun_path, sizeof su.sun_path, "%s/fake.sock", kvh_run_dir());
  KVH_CHECK(pl > 0 && (size_t)pl < sizeof su.sun_path, "run dir too long");
  snprintf(uaddr, sizeof uaddr, "unix:%s", su.sun_path);
  int ufd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  KVH_CHECK(ufd >= 0 && bind(ufd, (struct sockaddr *)&su, sizeof su) == 0 &&
                listen(ufd, 16) == 0,
            "unix listen: %s", strerror(errno));
  int tfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in si = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof si;
  KVH_CHECK(tfd >= 0 && bind(tfd, (struct sockaddr *)&si, sizeof si) == 0 &&
                listen(tfd, 16) == 0 &&
                getsockname(tfd, (struct sockaddr *)&si, &sl) == 0,
            "tcp listen: %s", strerror(errno));
  snprintf(taddr, sizeof taddr, "tcp://127.0.0.1:%d", ntohs(si.sin_port));
  pid_t fake = kvh_fork();
  if (fake == 0)
    fake_worker(ufd, tfd, 0);
  kvh_kill_on_fail(fake);
  close(ufd);
  close(tfd);

  /* The fake answers: one request within the timeout succeeds. */
  kvds_client *one = connect_fake(uaddr);
  KVH_CHECK(kvds_client_is_local(one), "the fake's pool was not mapped");
  kvds_client_set_timeout(one, 10000);
  struct kvds_wbuf wb;
  KVH_OK(kvds_create(one, "one", 3, 100, &wb));
  KVH_OK(kvds_abort(one, &wb));
  kvds_client_close(one);

  static struct keys ks;
  keys_init(&ks);
  static struct kvds_iov vals[BIG];
  static size_t sizes[BIG];
  static struct kvds_value got[BIG];
  static struct kvds_wbuf bufs[BIG];
  static int res[BIG];
  static uint8_t present[BIG];
  for (int i = 0; i < BIG; i++) {
    vals[i] = (struct kvds_iov){"v", 1};
    sizes[i] = 1;
  }

  BY_DEADLINE(uaddr, 0, "local put (CREATE + SEAL)",
              kvds_put(c, "k", 1, "value", 5));
  BY_DEADLINE(taddr, 0, "mput of two requests",
              kvds_mput(c, BIG, ks.iov, vals, res));
  BY_DEADLINE(taddr, 0, "mget of two requests",
              kvds_mget(c, BIG, ks.iov, 0, got, res));
  BY_DEADLINE(uaddr, 0, "local mget of two requests",
              kvds_mget(c, BIG, ks.iov, 0, got, res));
  BY_DEADLINE(taddr, WAIT_MS, "waiting mget of two requests",
              kvds_mget(c, BIG, ks.iov, WAIT_MS, got, res));
  BY_DEADLINE(taddr, 0, "mcreate of two requests",
              kvds_mcreate(c, BIG, ks.iov, sizes, bufs, res));
  BY_DEADLINE(taddr, 0, "exists of two requests",
              kvds_exists(c, BIG, ks.iov, present));
  BY_DEADLINE(taddr, 0, "mdelete of two requests",
              kvds_mdelete(c, BIG, ks.iov, res));

  kill(fake, SIGKILL);
  kvh_wait_pid(fake, 10000);
  kvh_kill_on_fail_cancel(fake);
  full_queue();
  kvds_pool_destroy(&pool);
  return kvh_finish();
}
