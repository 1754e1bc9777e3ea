/*
 * test_etcd.c — the etcd client (src/cluster/etcd.c) against a real etcd:
 * keys (binary-safe), prefix ranges, leases that keep keys alive and let
 * them expire, a watch that delivers puts and deletes in order and exactly
 * once across an etcd restart, a RESYNC after compaction, bounded calls
 * against a stopped and a stalled (SIGSTOP) etcd, failover to a second
 * endpoint, and a prompt watch close in every state.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/etcd.h"
#include "harness.h"

#define TIMEOUT_MS 1000
/* Allowances for a loaded 2-core CI machine: they tell a bounded call from
 * a hang, not fast from slow. */
#define SLACK_MS 2000
#define CLOSE_MAX_MS 1500

/* ---- what a watch callback saw --------------------------------------------
 */

#define MAX_SEEN 256

struct seen_ev {
  int type;
  char key[32];
  char val[32];
  int64_t rev;
};

struct seen {
  pthread_mutex_t mu;
  struct seen_ev ev[MAX_SEEN];
  int n;
  int downs, ups, resyncs;
  int down_err; /* the last DOWN's err */
  int resync_n;
  char resync_keys[8][32];
  int64_t resync_rev;
};

static void copy_str(char *dst, size_t cap, const struct kvds_iov *v) {
  size_t n = v->len < cap - 1 ? v->len : cap - 1;
  if (n)
    memcpy(dst, v->base, n);
  dst[n] = 0;
}

static void on_note(void *arg, const struct kvds_etcd_note *n) {
  struct seen *s = arg;
  pthread_mutex_lock(&s->mu);
  switch (n->kind) {
  case KVDS_ETCD_NOTE_EVENTS:
    for (size_t i = 0; i < n->n && s->n < MAX_SEEN; i++) {
      struct seen_ev *e = &s->ev[s->n++];
      e->type = n->events[i].type;
      copy_str(e->key, sizeof e->key, &n->events[i].kv.key);
      copy_str(e->val, sizeof e->val, &n->events[i].kv.value);
      e->rev = n->events[i].kv.mod_revision;
    }
    break;
  case KVDS_ETCD_NOTE_RESYNC:
    s->resyncs++;
    s->resync_n = (int)n->n;
    s->resync_rev = n->revision;
    for (size_t i = 0; i < n->n && i < 8; i++)
      copy_str(s->resync_keys[i], sizeof s->resync_keys[i], &n->kvs[i].key);
    break;
  case KVDS_ETCD_NOTE_DOWN:
    s->downs++;
    s->down_err = n->err;
    break;
  case KVDS_ETCD_NOTE_UP:
    s->ups++;
    break;
  }
  pthread_mutex_unlock(&s->mu);
}

static int seen_count(struct seen *s, int what) {
  pthread_mutex_lock(&s->mu);
  int v = what == 0   ? s->n
          : what == 1 ? s->downs
          : what == 2 ? s->ups
                      : s->resyncs;
  pthread_mutex_unlock(&s->mu);
  return v;
}

/* Polls until the count reaches want (bounded). */
static void wait_seen(struct seen *s, int what, int want, int timeout_ms) {
  uint64_t deadline = kvh_now_ms() + (uint64_t)timeout_ms;
  while (seen_count(s, what) < want) {
    KVH_CHECK(kvh_now_ms() < deadline, "watch: count %d is %d, want %d", what,
              seen_count(s, what), want);
    kvh_sleep_ms(10);
  }
}

static void check_ev(struct seen *s, int i, int type, const char *key,
                     const char *val) {
  pthread_mutex_lock(&s->mu);
  struct seen_ev e = s->ev[i];
  pthread_mutex_unlock(&s->mu);
  KVH_CHECK(e.type == type && strcmp(e.key, key) == 0 &&
                (!val || strcmp(e.val, val) == 0),
            "event %d: %s %s=%s, want %s %s=%s", i,
            e.type == KVDS_ETCD_PUT ? "PUT" : "DELETE", e.key, e.val,
            type == KVDS_ETCD_PUT ? "PUT" : "DELETE", key, val ? val : "*");
}

static kvds_etcd *open_etcd(const char *eps, int timeout_ms) {
  kvds_etcd *e = NULL;
  KVH_OK(kvds_etcd_open(eps, timeout_ms, &e));
  return e;
}

static void put_str(kvds_etcd *e, const char *k, const char *v, int64_t lease) {
  int rc = kvds_etcd_put(e, k, strlen(k), v, strlen(v), lease, NULL);
  KVH_CHECK(rc == 0, "put %s: %s (%s)", k, kvds_err_name(rc),
            kvds_etcd_errmsg(e));
}

/* ---- keys ------------------------------------------------------------------
 */

static void test_keys(const char *addr) {
  kvds_etcd *e = open_etcd(addr, TIMEOUT_MS);
  static const uint8_t k1[] = {'k', '/', 0, 0xff, '\n', '"'};
  static const uint8_t v1[] = {0, 1, 2, 0xfe, '\\', '"', 0};
  size_t big_len = 200000;
  uint8_t *big = kvh_val_new("big", 3, big_len);
  int64_t r1 = 0, r2 = 0;
  KVH_OK(kvds_etcd_put(e, k1, sizeof k1, v1, sizeof v1, 0, &r1));
  KVH_OK(kvds_etcd_put(e, "k/big", 5, big, big_len, 0, &r2));
  KVH_OK(kvds_etcd_put(e, "k/empty", 7, NULL, 0, 0, NULL));
  KVH_OK(kvds_etcd_put(e, "l/other", 7, "x", 1, 0, NULL));
  KVH_CHECK(r1 > 0 && r2 > r1, "revisions %lld %lld", (long long)r1,
            (long long)r2);

  struct kvds_etcd_range r;
  KVH_OK(kvds_etcd_get(e, k1, sizeof k1, &r));
  KVH_CHECK(r.n == 1 && r.kvs[0].key.len == sizeof k1 &&
                memcmp(r.kvs[0].key.base, k1, sizeof k1) == 0 &&
                r.kvs[0].value.len == sizeof v1 &&
                memcmp(r.kvs[0].value.base, v1, sizeof v1) == 0 &&
                r.kvs[0].mod_revision == r1,
            "binary key/value did not round-trip");
  kvds_etcd_range_free(&r);
  KVH_OK(kvds_etcd_get(e, "k/big", 5, &r));
  KVH_CHECK(
      kvh_val_ok("big", 3, big_len, r.kvs[0].value.base, r.kvs[0].value.len),
      "200 kB value did not round-trip");
  kvds_etcd_range_free(&r);
  KVH_EXPECT_RC(kvds_etcd_get(e, "k/none", 6, &r), KVDS_E_NOTFOUND);

  /* The prefix "k/" holds three keys, in key order; "l/other" is out. */
  KVH_OK(kvds_etcd_range_prefix(e, "k/", 2, &r));
  KVH_CHECK(r.n == 3, "range k/: %zu keys", r.n);
  KVH_CHECK(r.kvs[0].key.len == sizeof k1 &&
                memcmp(r.kvs[0].key.base, k1, sizeof k1) == 0 &&
                r.kvs[1].key.len == 5 && r.kvs[2].key.len == 7 &&
                r.kvs[2].value.len == 0 && r.revision >= r2,
            "range k/ content");
  kvds_etcd_range_free(&r);
  KVH_OK(kvds_etcd_range_prefix(e, "nothing/", 8, &r));
  KVH_CHECK(r.n == 0 && r.revision > 0, "empty range");
  kvds_etcd_range_free(&r);

  int64_t del = -1;
  KVH_OK(kvds_etcd_delete(e, k1, sizeof k1, &del));
  KVH_CHECK(del == 1, "deleted %lld", (long long)del);
  KVH_OK(kvds_etcd_delete(e, k1, sizeof k1, &del));
  KVH_CHECK(del == 0, "deleted again %lld", (long long)del);
  KVH_EXPECT_RC(kvds_etcd_get(e, k1, sizeof k1, &r), KVDS_E_NOTFOUND);
  free(big);
  kvds_etcd_close(e);
}

/* ---- leases ----------------------------------------------------------------
 */

static void test_leases(const char *addr) {
  kvds_etcd *e = open_etcd(addr, TIMEOUT_MS);
  struct kvds_etcd_range r;
  int64_t id = 0, ttl = 0;
  KVH_OK(kvds_etcd_lease_grant(e, 1, &id, &ttl));
  KVH_CHECK(id != 0 && ttl >= 1, "grant: id %lld ttl %lld", (long long)id,
            (long long)ttl);
  put_str(e, "lease/kept", "1", id);
  /* Kept alive for three TTLs. */
  uint64_t t0 = kvh_now_ms();
  while (kvh_now_ms() - t0 < 3000u * (uint64_t)ttl) {
    int64_t left = 0;
    KVH_OK(kvds_etcd_lease_keepalive(e, id, &left));
    KVH_CHECK(left >= 1, "keepalive ttl %lld", (long long)left);
    kvh_sleep_ms((int)(ttl * 1000 / 4));
  }
  KVH_OK(kvds_etcd_get(e, "lease/kept", 10, &r));
  kvds_etcd_range_free(&r);
  /* Left alone, the key goes within the TTL (+ slack for etcd's lessor,
   * which checks expiry every 500 ms). */
  t0 = kvh_now_ms();
  for (;;) {
    int rc = kvds_etcd_get(e, "lease/kept", 10, &r);
    if (rc == KVDS_E_NOTFOUND)
      break;
    KVH_OK(rc);
    kvds_etcd_range_free(&r);
    KVH_CHECK(kvh_now_ms() - t0 < (uint64_t)ttl * 1000 + 1500,
              "key still there %llu ms after its last keepalive",
              (unsigned long long)(kvh_now_ms() - t0));
    kvh_sleep_ms(50);
  }
  KVH_EXPECT_RC(kvds_etcd_lease_keepalive(e, id, &ttl), KVDS_E_NOTFOUND);
  KVH_EXPECT_RC(kvds_etcd_put(e, "lease/x", 7, "v", 1, id, NULL),
                KVDS_E_NOTFOUND);

  /* Revoking deletes the lease's keys at once. */
  KVH_OK(kvds_etcd_lease_grant(e, 30, &id, NULL));
  put_str(e, "lease/revoked", "1", id);
  KVH_OK(kvds_etcd_lease_revoke(e, id));
  KVH_EXPECT_RC(kvds_etcd_get(e, "lease/revoked", 13, &r), KVDS_E_NOTFOUND);
  KVH_EXPECT_RC(kvds_etcd_lease_revoke(e, id), KVDS_E_NOTFOUND);
  KVH_EXPECT_RC(kvds_etcd_lease_keepalive(e, id, NULL), KVDS_E_NOTFOUND);
  KVH_EXPECT_RC(kvds_etcd_lease_grant(e, 0, &id, NULL), KVDS_E_INVAL);
  kvds_etcd_close(e);
}

/* ---- watch -----------------------------------------------------------------
 */

static int close_ms(kvds_etcd_watch *w) {
  uint64_t t0 = kvh_now_ms();
  KVH_OK(kvds_etcd_watch_close(w));
  return (int)(kvh_now_ms() - t0);
}

static void test_watch_restart(struct kvh_etcd *etcd) {
  kvds_etcd *e = open_etcd(etcd->addr, TIMEOUT_MS);
  put_str(e, "w/before", "0", 0);
  struct kvds_etcd_range r;
  KVH_OK(kvds_etcd_range_prefix(e, "w/", 2, &r));
  int64_t from = r.revision + 1;
  kvds_etcd_range_free(&r);

  struct seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
  kvds_etcd_watch *w = NULL;
  KVH_OK(kvds_etcd_watch_open(e, "w/", 2, from, on_note, &s, &w));
  put_str(e, "w/a", "1", 0);
  put_str(e, "w/b", "2", 0);
  put_str(e, "x/outside", "-", 0);
  KVH_OK(kvds_etcd_delete(e, "w/a", 3, NULL));
  put_str(e, "w/b", "3", 0);
  wait_seen(&s, 0, 4, 5000);
  check_ev(&s, 0, KVDS_ETCD_PUT, "w/a", "1");
  check_ev(&s, 1, KVDS_ETCD_PUT, "w/b", "2");
  check_ev(&s, 2, KVDS_ETCD_DELETE, "w/a", NULL);
  check_ev(&s, 3, KVDS_ETCD_PUT, "w/b", "3");

  /* etcd goes away (a crash), the watch notices, etcd comes back on the
   * same port and data; changes made before the watch reconnects are
   * delivered too, and nothing twice. */
  kvh_etcd_kill9(etcd);
  wait_seen(&s, 1, 1, 5000);
  kvh_etcd_restart(etcd);
  put_str(e, "w/c", "4", 0);
  KVH_OK(kvds_etcd_delete(e, "w/b", 3, NULL));
  wait_seen(&s, 0, 6, 10000);
  wait_seen(&s, 2, 1, 5000);
  check_ev(&s, 4, KVDS_ETCD_PUT, "w/c", "4");
  check_ev(&s, 5, KVDS_ETCD_DELETE, "w/b", NULL);
  /* A graceful stop and restart as well. */
  kvh_etcd_stop(etcd);
  kvh_etcd_restart(etcd);
  put_str(e, "w/d", "5", 0);
  wait_seen(&s, 0, 7, 10000);
  check_ev(&s, 6, KVDS_ETCD_PUT, "w/d", "5");
  put_str(e, "w/e", "6", 0);
  wait_seen(&s, 0, 8, 5000);
  check_ev(&s, 7, KVDS_ETCD_PUT, "w/e", "6");
  kvh_sleep_ms(200); /* give a duplicate the chance to show up */
  pthread_mutex_lock(&s.mu);
  int n = s.n;
  for (int i = 1; i < n; i++)
    KVH_CHECK(s.ev[i].rev > s.ev[i - 1].rev, "event %d rev %lld after %lld", i,
              (long long)s.ev[i].rev, (long long)s.ev[i - 1].rev);
  pthread_mutex_unlock(&s.mu);
  KVH_CHECK(n == 8, "%d events, want 8 (duplicates?)", n);
  KVH_CHECK(seen_count(&s, 3) == 0, "unexpected RESYNC");

  /* close() of a connected, idle watch is prompt. */
  int ms = close_ms(w);
  KVH_CHECK(ms < CLOSE_MAX_MS, "watch close took %d ms", ms);
  kvds_etcd_close(e);
  printf("  watch across restarts: ok (close %d ms)\n", ms);
}

static void test_watch_compacted(const char *addr) {
  kvds_etcd *e = open_etcd(addr, TIMEOUT_MS);
  put_str(e, "c/1", "a", 0);
  put_str(e, "c/2", "b", 0);
  int64_t rev = 0;
  KVH_OK(kvds_etcd_put(e, "c/1", 3, "c", 1, 0, &rev));
  KVH_OK(kvds_etcd_compact(e, rev));
  KVH_EXPECT_RC(kvds_etcd_compact(e, rev - 1), KVDS_E_RANGE);
  KVH_EXPECT_RC(kvds_etcd_compact(e, rev + 1000), KVDS_E_RANGE);
  struct seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
  kvds_etcd_watch *w = NULL;
  /* Resuming from a compacted revision: the whole prefix instead. */
  KVH_OK(kvds_etcd_watch_open(e, "c/", 2, rev - 1, on_note, &s, &w));
  wait_seen(&s, 3, 1, 5000);
  pthread_mutex_lock(&s.mu);
  KVH_CHECK(s.resync_n == 2 && strcmp(s.resync_keys[0], "c/1") == 0 &&
                strcmp(s.resync_keys[1], "c/2") == 0 && s.resync_rev >= rev,
            "resync: %d keys at %lld", s.resync_n, (long long)s.resync_rev);
  pthread_mutex_unlock(&s.mu);
  put_str(e, "c/3", "d", 0);
  wait_seen(&s, 0, 1, 5000);
  check_ev(&s, 0, KVDS_ETCD_PUT, "c/3", "d");
  KVH_CHECK(seen_count(&s, 0) == 1, "events before the resync revision");
  KVH_OK(kvds_etcd_watch_close(w));
  kvds_etcd_close(e);
}

/* etcd rebuilt from an empty data directory on the same address: its
 * revisions start over below where the watch resumes. The watch sees that
 * the history went backwards and reads the whole prefix (a RESYNC), then
 * delivers what follows. And a resync asked for by the owner. */
static void test_watch_rebuilt(struct kvh_etcd *etcd) {
  kvds_etcd *e = open_etcd(etcd->addr, TIMEOUT_MS);
  for (int i = 0; i < 40; i++)
    put_str(e, "old/filler", "x", 0);
  struct seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
  kvds_etcd_watch *w = NULL;
  struct kvds_etcd_range r;
  KVH_OK(kvds_etcd_range_prefix(e, "r/", 2, &r));
  int64_t from = r.revision + 1;
  kvds_etcd_range_free(&r);
  KVH_OK(kvds_etcd_watch_open(e, "r/", 2, from, on_note, &s, &w));
  put_str(e, "r/old", "1", 0);
  wait_seen(&s, 0, 1, 5000);
  kvh_etcd_kill9(etcd);
  wait_seen(&s, 1, 1, 5000);
  kvh_etcd_wipe(etcd);
  kvh_etcd_restart(etcd);
  put_str(e, "r/new1", "2", 0);
  put_str(e, "r/new2", "3", 0);
  wait_seen(&s, 3, 1, 10000);
  /* The resync holds what was there when the watch came back; what was
   * put after that arrives as events. Together: both keys, once. */
  uint64_t deadline = kvh_now_ms() + 5000;
  int rn, ne;
  for (;;) {
    pthread_mutex_lock(&s.mu);
    rn = s.resync_n;
    ne = s.n - 1;
    pthread_mutex_unlock(&s.mu);
    if (rn + ne >= 2 || kvh_now_ms() > deadline)
      break;
    kvh_sleep_ms(10);
  }
  KVH_CHECK(rn + ne == 2, "after the rebuild: %d keys in the resync, %d events",
            rn, ne);
  /* r/new1 then r/new2: in the resync, or as events after it (the watch
   * may have come back before either was put) */
  pthread_mutex_lock(&s.mu);
  const char *got[2];
  for (int i = 0; i < 2; i++)
    got[i] = i < rn ? s.resync_keys[i] : s.ev[1 + i - rn].key;
  int keys_ok = strcmp(got[0], "r/new1") == 0 && strcmp(got[1], "r/new2") == 0;
  pthread_mutex_unlock(&s.mu);
  KVH_CHECK(keys_ok, "after the rebuild: not r/new1 then r/new2");
  put_str(e, "r/after", "4", 0);
  wait_seen(&s, 0, ne + 2, 5000);
  check_ev(&s, ne + 1, KVDS_ETCD_PUT, "r/after", "4");
  /* Asked for: the prefix again, then events as before. */
  kvds_etcd_watch_resync(w);
  wait_seen(&s, 3, 2, 5000);
  pthread_mutex_lock(&s.mu);
  KVH_CHECK(s.resync_n == 3, "asked resync: %d keys, want 3", s.resync_n);
  pthread_mutex_unlock(&s.mu);
  put_str(e, "r/last", "5", 0);
  wait_seen(&s, 0, ne + 3, 5000);
  check_ev(&s, ne + 2, KVDS_ETCD_PUT, "r/last", "5");
  kvh_sleep_ms(200); /* give a duplicate the chance to show up */
  KVH_CHECK(seen_count(&s, 0) == ne + 3, "%d events, want %d",
            seen_count(&s, 0), ne + 3);
  KVH_OK(kvds_etcd_watch_close(w));
  kvds_etcd_close(e);
}

/* ---- failures --------------------------------------------------------------
 */

/* Every call fails with `want` (or any error if want is 0) within the
 * handle's timeout + slack. */
static void expect_fail_fast(kvds_etcd *e, int timeout_ms, int want,
                             const char *what) {
  struct kvds_etcd_range r;
  int64_t id;
  for (int i = 0; i < 4; i++) {
    uint64_t t0 = kvh_now_ms();
    int rc = i == 0   ? kvds_etcd_put(e, "f/1", 3, "v", 1, 0, NULL)
             : i == 1 ? kvds_etcd_get(e, "f/1", 3, &r)
             : i == 2 ? kvds_etcd_lease_grant(e, 5, &id, NULL)
                      : kvds_etcd_range_prefix(e, "f/", 2, &r);
    uint64_t ms = kvh_now_ms() - t0;
    KVH_CHECK(rc != 0 && (!want || rc == want),
              "%s: call %d returned %s, want %s (%s)", what, i,
              kvds_err_name(rc), want ? kvds_err_name(want) : "an error",
              kvds_etcd_errmsg(e));
    KVH_CHECK(ms < (uint64_t)timeout_ms + SLACK_MS, "%s: call %d took %llu ms",
              what, i, (unsigned long long)ms);
    KVH_CHECK(kvds_etcd_errmsg(e)[0] != 0, "%s: no error message", what);
  }
}

static void test_down_and_stalled(struct kvh_etcd *etcd) {
  kvds_etcd *e = open_etcd(etcd->addr, TIMEOUT_MS);
  put_str(e, "f/0", "up", 0);
  struct seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
  kvds_etcd_watch *w = NULL;
  KVH_OK(kvds_etcd_watch_open(e, "f/", 2, 0, on_note, &s, &w));

  /* Stalled: the process is there but answers nothing. */
  kvds_etcd *quick = open_etcd(etcd->addr, 400);
  put_str(quick, "f/q", "up", 0); /* holds a live connection now */
  kill(etcd->pid, SIGSTOP);
  expect_fail_fast(quick, 400, KVDS_E_TIMEOUT, "stalled etcd");
  kvds_etcd_close(quick);
  int ms = close_ms(w);
  KVH_CHECK(ms < CLOSE_MAX_MS, "close of a watch on a stalled etcd took %d ms",
            ms);
  kill(etcd->pid, SIGCONT);

  /* Stopped: connection refused, at once. */
  kvh_etcd_stop(etcd);
  expect_fail_fast(e, TIMEOUT_MS, -ECONNREFUSED, "stopped etcd");
  printf("  down: %s\n", kvds_etcd_errmsg(e));
  memset(&s, 0, sizeof s);
  pthread_mutex_init(&s.mu, NULL);
  KVH_OK(kvds_etcd_watch_open(e, "f/", 2, 0, on_note, &s, &w));
  wait_seen(&s, 1, 1, 3000);
  kvh_sleep_ms(300); /* let it sit in its backoff */
  ms = close_ms(w);
  KVH_CHECK(ms < CLOSE_MAX_MS, "close of a watch in backoff took %d ms", ms);

  kvh_etcd_restart(etcd);
  struct kvds_etcd_range r;
  KVH_OK(kvds_etcd_get(e, "f/0", 3, &r)); /* the same handle recovers */
  kvds_etcd_range_free(&r);
  kvds_etcd_close(e);
}

static void test_failover(const char *addr) {
  char list[160];
  int dead = kvh_free_port();
  snprintf(list, sizeof list, "etcd://127.0.0.1:%d,http://%s", dead, addr);
  kvds_etcd *e = open_etcd(list, TIMEOUT_MS);
  put_str(e, "fo/1", "v", 0);
  char want[80];
  snprintf(want, sizeof want, "http://%s", addr);
  KVH_CHECK(strcmp(kvds_etcd_endpoint(e), want) == 0, "endpoint %s, want %s",
            kvds_etcd_endpoint(e), want);
  struct kvds_etcd_range r;
  KVH_OK(kvds_etcd_get(e, "fo/1", 4, &r));
  kvds_etcd_range_free(&r);
  /* A watch opened from it starts at the endpoint that worked. */
  struct seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
  kvds_etcd_watch *w = NULL;
  KVH_OK(kvds_etcd_watch_open(e, "fo/", 3, 0, on_note, &s, &w));
  kvh_sleep_ms(100);
  put_str(e, "fo/2", "v", 0);
  wait_seen(&s, 0, 1, 5000);
  check_ev(&s, 0, KVDS_ETCD_PUT, "fo/2", "v");
  KVH_OK(kvds_etcd_watch_close(w));
  kvds_etcd_close(e);

  /* Every endpoint dead: the last error, within the deadline. */
  snprintf(list, sizeof list, "127.0.0.1:%d,127.0.0.1:%d", dead,
           kvh_free_port());
  e = open_etcd(list, TIMEOUT_MS);
  expect_fail_fast(e, TIMEOUT_MS, -ECONNREFUSED, "all endpoints dead");
  kvds_etcd_close(e);
}

/* ---- a gateway that answers with an HTTP error ---------------------------
 */

/* A fake etcd on 127.0.0.1 that answers every request with 403 and the
 * gateway's error body (gRPC code 7, PERMISSION_DENIED), as an etcd with
 * auth enabled does. */
struct fake_gw {
  int lfd, port;
  atomic_int stop;
  pthread_t th;
};

static void fake_serve(int fd) {
  char req[8192];
  size_t n = 0;
  for (;;) { /* the headers, then Content-Length bytes of body */
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (n == sizeof req || poll(&p, 1, 2000) <= 0)
      return;
    ssize_t r = read(fd, req + n, sizeof req - n);
    if (r <= 0)
      return;
    n += (size_t)r;
    char *end = memmem(req, n, "\r\n\r\n", 4);
    if (!end)
      continue;
    char *cl = memmem(req, (size_t)(end - req), "Content-Length:", 15);
    size_t want = cl ? strtoul(cl + 15, NULL, 10) : 0;
    if (n >= (size_t)(end + 4 - req) + want)
      break;
  }
  static const char body[] =
      "{\"error\":\"etcdserver: permission denied\",\"message\":"
      "\"etcdserver: permission denied\",\"code\":7}\n";
  char resp[512];
  int len = snprintf(resp, sizeof resp,
                     "HTTP/1.1 403 Forbidden\r\nContent-Type: "
                     "application/json\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     sizeof body - 1, body);
  KVH_CHECK(write(fd, resp, (size_t)len) == len, "fake gateway: write");
}

static void *fake_main(void *arg) {
  struct fake_gw *g = arg;
  while (!atomic_load(&g->stop)) {
    struct pollfd p = {.fd = g->lfd, .events = POLLIN};
    if (poll(&p, 1, 50) <= 0)
      continue;
    int fd = accept(g->lfd, NULL, NULL);
    if (fd < 0)
      continue;
    fake_serve(fd);
    close(fd);
  }
  return NULL;
}

static void fake_start(struct fake_gw *g) {
  struct sockaddr_in a = {.sin_family = AF_INET};
  socklen_t al = sizeof a;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  g->lfd = socket(AF_INET, SOCK_STREAM, 0);
  KVH_CHECK(g->lfd >= 0 && bind(g->lfd, (struct sockaddr *)&a, sizeof a) == 0 &&
                listen(g->lfd, 16) == 0 &&
                getsockname(g->lfd, (struct sockaddr *)&a, &al) == 0,
            "fake gateway: %s", strerror(errno));
  g->port = ntohs(a.sin_port);
  atomic_init(&g->stop, 0);
  KVH_CHECK(pthread_create(&g->th, NULL, fake_main, g) == 0, "thread");
}

static void fake_stop(struct fake_gw *g) {
  atomic_store(&g->stop, 1);
  pthread_join(g->th, NULL);
  close(g->lfd);
}

/* A watch refused with an HTTP error reports etcd's error (KVDS_E_PERM),
 * not a broken stream (-ECONNRESET); a call gets the same. */
static void test_watch_http_error(void) {
  struct fake_gw g;
  fake_start(&g);
  char ep[64];
  snprintf(ep, sizeof ep, "127.0.0.1:%d", g.port);
  kvds_etcd *e = open_etcd(ep, TIMEOUT_MS);
  int rc = kvds_etcd_put(e, "k", 1, "v", 1, 0, NULL);
  KVH_CHECK(rc == KVDS_E_PERM, "put via 403: %s", kvds_err_name(rc));
  struct seen s;
  memset(&s, 0, sizeof s);
  pthread_mutex_init(&s.mu, NULL);
  kvds_etcd_watch *w = NULL;
  KVH_OK(kvds_etcd_watch_open(e, "p/", 2, 1, on_note, &s, &w));
  wait_seen(&s, 1, 1, TIMEOUT_MS + SLACK_MS);
  pthread_mutex_lock(&s.mu);
  int err = s.down_err;
  pthread_mutex_unlock(&s.mu);
  KVH_CHECK(err == KVDS_E_PERM, "watch via 403: DOWN with %s, want %s",
            kvds_err_name(err), kvds_err_name(KVDS_E_PERM));
  KVH_CHECK(close_ms(w) < CLOSE_MAX_MS, "close");
  kvds_etcd_close(e);
  pthread_mutex_destroy(&s.mu);
  fake_stop(&g);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_etcd");
  struct kvh_etcd etcd;
  kvh_etcd_start(&etcd);
  uint64_t t = kvh_now_ms();
#define STEP(call)                                                             \
  do {                                                                         \
    call;                                                                      \
    printf("  %-28s %llu ms\n", #call,                                         \
           (unsigned long long)(kvh_now_ms() - t));                            \
    t = kvh_now_ms();                                                          \
  } while (0)
  STEP(test_watch_http_error());
  STEP(test_keys(etcd.addr));
  STEP(test_leases(etcd.addr));
  STEP(test_watch_restart(&etcd));
  STEP(test_watch_compacted(etcd.addr));
  STEP(test_watch_rebuilt(&etcd));
  STEP(test_failover(etcd.addr));
  STEP(test_down_and_stalled(&etcd));
  kvh_etcd_stop(&etcd);
  return kvh_finish();
}
