/*
 * test_interrupt — kvds_client_set_interrupt against a real worker, over
 * shared memory and over TCP. The hook reports a flag that a SIGALRM
 * handler sets (as Python's signal handling does):
 *  - a get waiting 8 s for an absent key gives up with KVDS_E_INTR soon
 *    after the signal, and the client stays connected; the same client
 *    then puts that key — which wakes the GET still parked in the worker —
 *    and reads it, and the worker ends with no pins: the abandoned reply
 *    was discarded and its pin released (also for an mget with
 *    KVDS_GET_PIN, and for a waiting get whose reply is a timeout);
 *  - a create sent to a stopped worker is abandoned; once the worker runs
 *    again the object it made is aborted (the key can be put);
 *  - 64 abandoned requests still unanswered are the limit: the next
 *    interrupt disconnects the client;
 *  - without a hook, a storm of signals neither ends a wait early nor
 *    restarts its clock.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "harness.h"

#define LONG_WAIT 8000
#define ALARM_MS 300
#define MARGIN_MS 1500 /* the hook runs every 100 ms; slack for a busy CI */

static volatile sig_atomic_t interrupted;

static void on_alarm(int sig) {
  (void)sig;
  interrupted = 1;
}

static int hook(void *ud) {
  (*(int *)ud)++;
  return interrupted;
}

/* SIGALRM after ms (and every `every` ms after it, 0 = once), no
 * SA_RESTART: blocking calls see EINTR. */
static void alarm_in(int ms, int every) {
  interrupted = 0;
  struct itimerval it = {.it_interval = {every / 1000, (every % 1000) * 1000},
                         .it_value = {ms / 1000, (ms % 1000) * 1000}};
  KVH_CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0, "setitimer");
}

static void alarm_off(void) {
  struct itimerval it = {0};
  setitimer(ITIMER_REAL, &it, NULL);
}

/* Polls the worker (through c, which reads any late reply on the way)
 * until nothing is pinned or being written. */
static void expect_nothing_held(kvds_client *c, const char *tr) {
  struct kvds_stats st;
  uint64_t t0 = kvh_now_ms();
  for (;;) {
    kvh_stats(c, &st);
    if ((st.pinned_objects == 0 && st.objects_writing == 0) ||
        kvh_now_ms() - t0 > 10000)
      break;
    kvh_sleep_ms(20);
  }
  KVH_CHECK(st.pinned_objects == 0, "%s: %llu objects still pinned", tr,
            (unsigned long long)st.pinned_objects);
  KVH_CHECK(st.objects_writing == 0, "%s: %llu objects still being written", tr,
            (unsigned long long)st.objects_writing);
}

static void put_value(kvds_client *c, const char *k) {
  size_t kl = strlen(k), vl = kvh_val_size(k, kl, 64u << 10);
  uint8_t *v = kvh_val_new(k, kl, vl);
  KVH_OK(kvds_put(c, k, kl, v, vl));
  free(v);
}

static void get_value(kvds_client *c, const char *k) {
  size_t kl = strlen(k), vl = kvh_val_size(k, kl, 64u << 10), len = 0;
  uint8_t *b = malloc(vl);
  KVH_OK(kvds_get(c, k, kl, b, vl, &len, 0));
  KVH_CHECK(kvh_val_ok(k, kl, vl, b, len), "'%s': wrong value", k);
  free(b);
}

/* A call interrupted ALARM_MS after it started: KVDS_E_INTR soon after. */
#define EXPECT_INTR(tr, what, call)                                            \
  do {                                                                         \
    alarm_in(ALARM_MS, 0);                                                     \
    uint64_t t0_ = kvh_now_ms();                                               \
    KVH_EXPECT_RC(call, KVDS_E_INTR);                                          \
    uint64_t el_ = kvh_now_ms() - t0_;                                         \
    alarm_off();                                                               \
    KVH_CHECK(el_ <= ALARM_MS + MARGIN_MS, "%s: %s interrupted after %llu ms", \
              tr, what, (unsigned long long)el_);                              \
    KVH_CHECK(kvds_client_is_connected(c), "%s: %s: disconnected", tr, what);  \
  } while (0)

static void run(struct kvh_worker *w, const char *addr, const char *tr) {
  kvds_client *c = kvh_connect(addr);
  int calls = 0;
  kvds_client_set_interrupt(c, hook, &calls);
  char k[64], k2[64];
  uint8_t buf[16];
  size_t len;

  /* 1. A parked GET abandoned, then woken by our own put. */
  snprintf(k, sizeof k, "intr/%s/get", tr);
  EXPECT_INTR(tr, "get",
              kvds_get(c, k, strlen(k), buf, sizeof buf, &len, LONG_WAIT));
  KVH_CHECK(calls > 0, "%s: the hook was never called", tr);
  put_value(c, k);
  get_value(c, k);
  KVH_OK(kvds_ping(c));
  expect_nothing_held(c, tr);

  /* 2. mget with KVDS_GET_PIN: one present key, one absent. */
  snprintf(k2, sizeof k2, "intr/%s/pin", tr);
  struct kvds_iov keys[2] = {{k, strlen(k)}, {k2, strlen(k2)}};
  struct kvds_value vals[2];
  int res[2];
  struct kvds_get_opts o = {.wait_ms = LONG_WAIT, .flags = KVDS_GET_PIN};
  EXPECT_INTR(tr, "pin", kvds_mget_ex(c, 2, keys, &o, vals, res));
  put_value(c, k2);
  o.wait_ms = 0;
  KVH_OK(kvds_mget_ex(c, 2, keys, &o, vals, res));
  KVH_CHECK(res[0] == 0 && res[1] == 0, "%s: pin after put: %s, %s", tr,
            kvds_err_name(res[0]), kvds_err_name(res[1]));
  KVH_OK(kvds_release(c, 2, vals));
  expect_nothing_held(c, tr);

  /* 3. A waiting get whose answer (a timeout) comes after the interrupt. */
  snprintf(k2, sizeof k2, "intr/%s/never", tr);
  EXPECT_INTR(tr, "short get",
              kvds_get(c, k2, strlen(k2), buf, sizeof buf, &len, 2 * ALARM_MS));
  uint64_t t0 = kvh_now_ms();
  while (kvh_now_ms() - t0 < 3 * ALARM_MS) /* the worker answers meanwhile */
    KVH_OK(kvds_ping(c));
  get_value(c, k);
  KVH_EXPECT_RC(kvds_get(c, k2, strlen(k2), buf, sizeof buf, &len, 0),
                KVDS_E_NOTFOUND);

  /* 4. A create sent to a stopped worker: abandoned, aborted later. */
  snprintf(k2, sizeof k2, "intr/%s/create", tr);
  struct kvds_wbuf wb;
  KVH_CHECK(kill(w->pid, SIGSTOP) == 0, "SIGSTOP");
  alarm_in(ALARM_MS, 0);
  int rc = kvds_create(c, k2, strlen(k2), 4096, &wb);
  alarm_off();
  KVH_CHECK(kill(w->pid, SIGCONT) == 0, "SIGCONT");
  KVH_EXPECT_RC(rc, KVDS_E_INTR);
  KVH_CHECK(kvds_client_is_connected(c), "%s: create: disconnected", tr);
  KVH_OK(kvds_ping(c));
  expect_nothing_held(c, tr);
  put_value(c, k2); /* KVDS_E_EXISTS if the object were still there */
  get_value(c, k2);

  /* 5. Without a hook, signals every 5 ms: the wait runs its full time,
   * ending by its deadline. */
  kvds_client_set_interrupt(c, NULL, NULL);
  alarm_in(5, 5);
  t0 = kvh_now_ms();
  rc = kvds_get(c, k2, 1, buf, sizeof buf, &len, 2 * ALARM_MS);
  uint64_t el = kvh_now_ms() - t0;
  alarm_off();
  KVH_EXPECT_RC(rc, KVDS_E_TIMEOUT);
  KVH_CHECK(el >= 2 * ALARM_MS * 9 / 10 && el <= 2 * ALARM_MS + MARGIN_MS,
            "%s: a wait under signals took %llu ms", tr,
            (unsigned long long)el);
  KVH_OK(kvds_ping(c));
  kvds_client_close(c);
}

/* 64 requests parked and abandoned; the 65th interrupt disconnects. */
static void limit(const struct kvh_worker *w) {
  kvds_client *c = kvh_connect(w->addr);
  int calls = 0;
  kvds_client_set_interrupt(c, hook, &calls);
  interrupted = 1; /* every check says stop: each wait ends at 100 ms */
  char k[64];
  uint8_t buf[16];
  size_t len;
  for (int i = 0; i <= 64; i++) {
    snprintf(k, sizeof k, "intr/limit/%d", i);
    KVH_EXPECT_RC(kvds_get(c, k, strlen(k), buf, sizeof buf, &len, LONG_WAIT),
                  KVDS_E_INTR);
    KVH_CHECK(kvds_client_is_connected(c) == (i < 64),
              "after %d interrupts: connected %d", i + 1,
              kvds_client_is_connected(c));
  }
  KVH_EXPECT_RC(kvds_ping(c), KVDS_E_CLOSED);
  kvds_client_close(c);
  interrupted = 0;
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_interrupt");
  struct sigaction sa = {.sa_handler = on_alarm}; /* no SA_RESTART */
  sigemptyset(&sa.sa_mask);
  KVH_CHECK(sigaction(SIGALRM, &sa, NULL) == 0, "sigaction");
  struct kvh_worker w;
  kvh_worker_start(&w, "64MiB", NULL);
  run(&w, w.addr, "shm");
  run(&w, w.tcp, "tcp");
  limit(&w);
  kvds_client *c = kvh_connect(w.addr);
  expect_nothing_held(c, "end");
  kvds_client_close(c);
  kvh_worker_stop(&w);
  return kvh_finish();
}
