/*
 * The resolver seam (src/worker/resolver.h) with a fake resolver in a real
 * worker (in this process, its own threads and sockets) and a real libkvds
 * client: a miss the resolver answers (it writes the key through its own
 * client: the seal wakes the wait), fails, never answers (the request's
 * deadline), and one whose client disconnects while the resolver holds
 * it; EXISTS and LOOKUP_PREFIX answered by the resolver.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "kvds/kvds.h"
#include "worker/resolver.h"
#include "worker/server.h"
#include "worker/wait.h"
#include "worker/worker.h"

#define MAXW 64

/* The fake: submit queues the wait (held); its thread settles each key by
 * the key's first letter: f(ound) written through a client, x (failed)
 * with KVDS_E_PEER, s(low) never; finds answered "present". */
struct fake {
  pthread_mutex_t lock;
  pthread_cond_t cv;
  struct kvds_wait *q[MAXW];
  int nq, stop;
  int submits, cancelled_seen, stopped;
  /* failures seen on the worker's or the fake's thread (asserted by the
   * test thread: cmocka's asserts only work there) */
  int bad_deadline, failed_puts;
  char sock[256];
  pthread_t th;
};

static struct fake fk;

static int fake_active(void *self) {
  (void)self;
  return 1;
}

static int fake_submit(void *self, const struct kvds_miss *m) {
  struct fake *f = self;
  if (m->deadline_us <= kvds_now_us())
    f->bad_deadline++;
  kvds_wait_hold(m->wait);
  pthread_mutex_lock(&f->lock);
  f->submits++;
  if (f->nq == MAXW) {
    pthread_mutex_unlock(&f->lock);
    kvds_wait_unhold(m->wait);
    return -ENOMEM;
  }
  f->q[f->nq++] = m->wait;
  pthread_cond_signal(&f->cv);
  pthread_mutex_unlock(&f->lock);
  return 0;
}

static int fake_announce(void *self, const char *owner, uint64_t epoch,
                         uint32_t n, const struct kvds_proto_item *it,
                         const uint8_t *const *keys) {
  return KVDS_E_STATE;
}

static void fake_locate(void *self, struct reply *r, uint32_t n,
                        const uint8_t *const *keys, const uint32_t *klens) {
  for (uint32_t i = 0; i < n; i++)
    kvds__reply_item(r, KVDS_E_NOTFOUND, 0, 0, 0, 0, NULL, 0);
}

static void *fake_main(void *arg);

/* The worker stops: the fake lets go of every wait (its thread unholds
 * them all on its way out) before the worker frees them. */
static void fake_stop(void *self) {
  struct fake *f = self;
  pthread_mutex_lock(&f->lock);
  f->stop = 1;
  pthread_cond_signal(&f->cv);
  pthread_mutex_unlock(&f->lock);
  pthread_join(f->th, NULL);
  f->stopped = 1;
}

static const struct kvds_resolver_ops fake_ops = {
    .name = "fake",
    .active = fake_active,
    .submit = fake_submit,
    .announce = fake_announce,
    .locate_local = fake_locate,
    .stop = fake_stop,
};

/* Settles w; returns 1 when it is done with it. */
static int settle(struct fake *f, kvds_client *c, struct kvds_wait *w) {
  uint32_t idx[16], n = kvds_wait_open(w, idx);
  int kind = kvds_wait_kind(w);
  if (kind != KVDS_WAIT_GET) {
    int32_t st[16];
    uint32_t cnt = kvds_wait_count(w);
    for (uint32_t i = 0; i < cnt; i++)
      st[i] = 0;
    if (kind == KVDS_WAIT_EXISTS) {
      kvds_wait_answer(w, st, NULL, 0, 0);
    } else {
      struct reply r;
      kvds__reply_init(&r);
      kvds__reply_item(&r, 0, cnt, 0, 0, 0, NULL, 0); /* all present */
      kvds_wait_answer(w, NULL, r.b.buf, r.b.len, r.b.count);
    }
    return 1;
  }
  if (n == 0) { /* held with a key left open: answered at its deadline,
                   or cancelled */
    f->cancelled_seen++;
    return 1;
  }
  int keep = 0;
  for (uint32_t k = 0; k < n; k++) {
    uint32_t kl;
    const uint8_t *key = kvds_wait_key(w, idx[k], &kl);
    if (key[0] == 'f') {
      char val[32];
      int vl = snprintf(val, sizeof val, "from-resolver:%.*s", (int)kl, key);
      if (kvds_put(c, key, kl, val, (size_t)vl))
        f->failed_puts++;
    } else if (key[0] == 'x') {
      int32_t st = KVDS_E_PEER;
      kvds_wait_fail(w, 1, &idx[k], &st);
    } else {
      keep = 1; /* 's': held, never settled, until cancelled or answered */
    }
  }
  return !keep;
}

static void *fake_main(void *arg) {
  struct fake *f = arg;
  kvds_client *c = NULL;
  struct kvds_wait *held[MAXW];
  int nheld = 0;
  for (;;) {
    pthread_mutex_lock(&f->lock);
    while (!f->stop && !f->nq && !nheld)
      pthread_cond_wait(&f->cv, &f->lock);
    int stop = f->stop;
    while (f->nq)
      held[nheld++] = f->q[--f->nq];
    pthread_mutex_unlock(&f->lock);
    if (!c && !stop) {
      if (kvds_client_connect(f->sock, 2000, &c))
        c = NULL;
      else
        kvds_client_set_timeout(c, 1000);
    }
    for (int i = 0; i < nheld;)
      if (stop || (c && settle(f, c, held[i]))) {
        kvds_wait_unhold(held[i]);
        held[i] = held[--nheld];
      } else {
        i++;
      }
    if (stop && !nheld)
      break;
    usleep(2000);
  }
  kvds_client_close(c);
  return NULL;
}

struct worker {
  struct kvds_worker_config cfg;
  pthread_t th;
  int rc;
};

static void *worker_main(void *arg) {
  struct worker *w = arg;
  struct kvds_resolver r = {&fake_ops, &fk};
  w->rc = kvds__worker_run_with(&w->cfg, &r);
  return NULL;
}

static struct worker wk;

/* A free loopback TCP port (the worker listens there too: a member needs a
 * data address). */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  socklen_t al = sizeof a;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
      getsockname(fd, (struct sockaddr *)&a, &al))
    return -1;
  close(fd);
  return ntohs(a.sin_port);
}

static int setup(void **state) {
  (void)state;
  int p[2];
  char buf[1];
  memset(&fk, 0, sizeof fk);
  pthread_mutex_init(&fk.lock, NULL);
  pthread_cond_init(&fk.cv, NULL);
  kvds_worker_config_default(&wk.cfg);
  int port = free_port();
  if (port <= 0)
    return -1;
  snprintf(wk.cfg.listen, sizeof wk.cfg.listen, "127.0.0.1:%d", port);
  snprintf(wk.cfg.socket_path, sizeof wk.cfg.socket_path,
           "/tmp/kvds-test-resolver-%d.sock", (int)getpid());
  snprintf(fk.sock, sizeof fk.sock, "%s", wk.cfg.socket_path);
  wk.cfg.memory = 64u << 20;
  wk.cfg.pull_timeout_ms = 2000; /* the deadline of a resolved read */
  wk.cfg.log_level = 0;
  if (pipe(p))
    return -1;
  wk.cfg.ready_fd = p[1];
  struct pollfd pfd = {.fd = p[0], .events = POLLIN};
  if (pthread_create(&wk.th, NULL, worker_main, &wk) ||
      poll(&pfd, 1, 10000) != 1 || read(p[0], buf, 1) != 1)
    return -1; /* the worker did not start (its log says why) */
  close(p[0]);
  return pthread_create(&fk.th, NULL, fake_main, &fk);
}

static int teardown(void **state) {
  (void)state;
  kvds_client *c;
  if (kvds_client_connect(fk.sock, 2000, &c) == 0) {
    kvds_shutdown(c);
    kvds_client_close(c);
  }
  pthread_join(wk.th, NULL);
  assert_int_equal(wk.rc, 0);
  assert_true(fk.stopped); /* the worker stopped its resolver */
  assert_int_equal(fk.bad_deadline, 0);
  assert_int_equal(fk.failed_puts, 0);
  return 0;
}

static kvds_client *client(void) {
  kvds_client *c;
  assert_int_equal(kvds_client_connect(fk.sock, 2000, &c), 0);
  return c;
}

/* A miss the resolver supplies: the client gets the resolver's value. */
static void test_miss_answered(void **state) {
  (void)state;
  kvds_client *c = client();
  char buf[64];
  size_t len = 0;
  assert_int_equal(kvds_get(c, "found-1", 7, buf, sizeof buf, &len, 0), 0);
  assert_int_equal(len, strlen("from-resolver:found-1"));
  assert_memory_equal(buf, "from-resolver:found-1", len);
  /* now it is here: no second trip to the resolver */
  int before = fk.submits;
  assert_int_equal(kvds_get(c, "found-1", 7, buf, sizeof buf, &len, 0), 0);
  assert_int_equal(fk.submits, before);
  kvds_client_close(c);
}

/* A batch: one here, one supplied, one failed by the resolver. */
static void test_miss_failed(void **state) {
  (void)state;
  kvds_client *c = client();
  assert_int_equal(kvds_put(c, "here", 4, "v", 1), 0);
  struct kvds_iov keys[3] = {{"here", 4}, {"found-2", 7}, {"xfail", 5}};
  struct kvds_value vals[3];
  int res[3];
  memset(vals, 0, sizeof vals);
  assert_int_equal(kvds_mget_ex(c, 3, keys, NULL, vals, res), 0);
  assert_int_equal(res[0], 0);
  assert_int_equal(res[1], 0);
  assert_int_equal(vals[1].len, strlen("from-resolver:found-2"));
  assert_int_equal(res[2], KVDS_E_PEER);
  kvds_release(c, 3, vals);
  kvds_client_close(c);
}

/* A miss nobody settles: answered at the request's deadline (the
 * pull timeout, 2 s) with KVDS_E_TIMEOUT; the resolver sees it closed. */
static void test_miss_timed_out(void **state) {
  (void)state;
  kvds_client *c = client();
  char buf[8];
  size_t len;
  int seen = fk.cancelled_seen;
  uint64_t t0 = kvds_now_us();
  assert_int_equal(kvds_get(c, "slow-1", 6, buf, sizeof buf, &len, 0),
                   KVDS_E_TIMEOUT);
  assert_true(kvds_now_us() - t0 >= 2000000);
  for (int i = 0; i < 500 && fk.cancelled_seen == seen; i++)
    usleep(2000);
  assert_int_equal(fk.cancelled_seen, seen + 1);
  kvds_client_close(c);
}

/* The client goes away while the resolver holds its wait: the wait is
 * cancelled (the resolver sees no open key) long before its deadline, and
 * the resolver's unhold frees it (ASan: no leak). */
static void test_miss_cancelled_by_disconnect(void **state) {
  (void)state;
  kvds_client *c = client();
  char buf[8];
  size_t len;
  int seen = fk.cancelled_seen, sub = fk.submits;
  kvds_client_set_timeout(c, 50); /* gives up and disconnects */
  uint64_t t0 = kvds_now_us();
  assert_int_not_equal(kvds_get(c, "slow-2", 6, buf, sizeof buf, &len, 0), 0);
  kvds_client_close(c);
  for (int i = 0; i < 1500 && fk.cancelled_seen == seen; i++)
    usleep(1000);
  assert_int_equal(fk.submits, sub + 1);
  assert_int_equal(fk.cancelled_seen, seen + 1);
  assert_true(kvds_now_us() - t0 < 1800000); /* not the 2 s deadline */
}

/* EXISTS and LOOKUP_PREFIX of keys missing here: the resolver's answer. */
static void test_finds_answered(void **state) {
  (void)state;
  kvds_client *c = client();
  struct kvds_iov keys[2] = {{"nowhere-1", 9}, {"nowhere-2", 9}};
  uint8_t present[2] = {0, 0};
  assert_int_equal(kvds_exists(c, 2, keys, present), 0);
  assert_int_equal(present[0], 1);
  assert_int_equal(present[1], 1);
  size_t prefix = 0;
  assert_int_equal(kvds_lookup_prefix(c, 2, keys, &prefix), 0);
  assert_int_equal(prefix, 2);
  kvds_client_close(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_miss_answered),
      cmocka_unit_test(test_miss_failed),
      cmocka_unit_test(test_miss_timed_out),
      cmocka_unit_test(test_miss_cancelled_by_disconnect),
      cmocka_unit_test(test_finds_answered),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
