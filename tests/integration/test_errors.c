/*
 * test_errors — every documented error of the client API, on a shared-memory
 * and on a TCP connection: key lengths, existing and absent keys, values
 * over --max-object, a full pool, a buffer too small, seal/abort of handles
 * that are no longer valid, ranges, empty values, deleting a key being
 * written, connecting to nothing, a worker that stops answering
 * (KVDS_E_TIMEOUT, then KVDS_E_CLOSED); and kvds_strerror/kvds_err_name of
 * every code. After each other error the connection keeps working.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define MAXOBJ (1u << 20)

static const int all_codes[] = {
#define X(name, val, msg) KVDS_E_##name,
    KVDS_ERRNO_MAP(X)
#undef X
};
#define NCODES (sizeof all_codes / sizeof all_codes[0])

static void key_lengths(kvds_client *c, const char *tr) {
  static char k1025[KVDS_KEY_MAX + 1];
  memset(k1025, 'x', sizeof k1025);
  const struct {
    const char *k;
    size_t n;
  } bad[] = {{"", 0}, {k1025, sizeof k1025}};
  for (int i = 0; i < 2; i++) {
    const char *k = bad[i].k;
    size_t n = bad[i].n, len;
    uint8_t b[8], pr[2];
    struct kvds_iov ks[2] = {{"ok", 2}, {(void *)k, n}};
    struct kvds_iov vs[2] = {{"v", 1}, {"v", 1}};
    struct kvds_value vals[2];
    int res[2];
    struct kvds_wbuf wb;
    struct kvds_object_info info;
    size_t cnt;
    KVH_EXPECT_RC(kvds_put(c, k, n, "v", 1), KVDS_E_KEYLEN);
    KVH_EXPECT_RC(kvds_mput(c, 2, ks, vs, res), KVDS_E_KEYLEN);
    KVH_EXPECT_RC(kvds_get(c, k, n, b, sizeof b, &len, 0), KVDS_E_KEYLEN);
    KVH_EXPECT_RC(kvds_mget(c, 2, ks, 0, vals, res), KVDS_E_KEYLEN);
    KVH_EXPECT_RC(kvds_create(c, k, n, 10, &wb), KVDS_E_KEYLEN);
    KVH_EXPECT_RC(kvds_delete(c, k, n), KVDS_E_KEYLEN);
    KVH_EXPECT_RC(kvds_exists(c, 2, ks, pr), KVDS_E_KEYLEN);
    KVH_EXPECT_RC(kvds_lookup_prefix(c, 2, ks, &cnt), KVDS_E_KEYLEN);
    KVH_EXPECT_RC(kvds_stat(c, k, n, &info), KVDS_E_KEYLEN);
    KVH_OK(kvds_ping(c));
  }
  struct kvds_list *l;
  KVH_EXPECT_RC(kvds_list(c, k1025, sizeof k1025, NULL, 0, 0, &l),
                KVDS_E_KEYLEN);
  /* A 1024-byte key (with every byte value) is fine. */
  char k1024[KVDS_KEY_MAX];
  for (size_t i = 0; i < sizeof k1024; i++)
    k1024[i] = (char)(i * 7 + (size_t)tr[0]);
  uint8_t *v = kvh_val_new(k1024, sizeof k1024, 777), b[777];
  size_t len = 0;
  KVH_OK(kvds_put(c, k1024, sizeof k1024, v, 777));
  KVH_OK(kvds_get(c, k1024, sizeof k1024, b, sizeof b, &len, 0));
  KVH_CHECK(kvh_val_ok(k1024, sizeof k1024, 777, b, len),
            "%s: 1024-byte key: wrong value", tr);
  KVH_OK(kvds_list(c, k1024, sizeof k1024, NULL, 0, 0, &l));
  KVH_CHECK(l->n == 1 && l->entries[0].klen == sizeof k1024 &&
                memcmp(l->entries[0].key, k1024, sizeof k1024) == 0,
            "%s: list by a 1024-byte prefix: %zu entries", tr, l->n);
  kvds_list_free(l);
  KVH_OK(kvds_delete(c, k1024, sizeof k1024));
  free(v);
}

static void run(const struct kvh_worker *w, const char *addr, const char *tr) {
  kvds_client *c = kvh_connect(addr);
  char k[64];
  size_t kl = (size_t)snprintf(k, sizeof k, "%s/key", tr), len = 0;
  uint8_t small[16];
  struct kvds_wbuf wb, copy;
  struct kvds_object_info info;

  key_lengths(c, tr);

  /* Listing: a prefix nothing matches, then everything (empty prefix). */
  struct kvds_list *l;
  KVH_OK(kvds_list(c, "no-such-prefix/", 15, NULL, 0, 0, &l));
  KVH_CHECK(l->n == 0 && !l->more, "%s: list of nothing: %zu entries", tr,
            l->n);
  kvds_list_free(l);
  KVH_OK(kvds_list(c, NULL, 0, NULL, 0, 0, &l));
  kvds_list_free(l);
  KVH_OK(kvds_ping(c));

  /* Absent, then present, then present again. */
  KVH_EXPECT_RC(kvds_get(c, k, kl, small, sizeof small, &len, 0),
                KVDS_E_NOTFOUND);
  KVH_EXPECT_RC(kvds_delete(c, k, kl), KVDS_E_NOTFOUND);
  KVH_EXPECT_RC(kvds_stat(c, k, kl, &info), KVDS_E_NOTFOUND);
  size_t vlen = 100000;
  uint8_t *v = kvh_val_new(k, kl, vlen), *buf = malloc(MAXOBJ + 1);
  KVH_OK(kvds_put(c, k, kl, v, vlen));
  KVH_EXPECT_RC(kvds_put(c, k, kl, v, vlen), KVDS_E_EXISTS);
  KVH_EXPECT_RC(kvds_create(c, k, kl, 10, &wb), KVDS_E_EXISTS);

  /* A buffer one byte short: TOOBIG, *len untouched, and the connection
   * (over TCP: the value's bytes in flight) stays in sync. */
  len = 12345;
  KVH_EXPECT_RC(kvds_get(c, k, kl, buf, vlen - 1, &len, 0), KVDS_E_TOOBIG);
  KVH_CHECK(len == 12345, "%s: *len written on failure", tr);
  KVH_OK(kvds_ping(c));
  KVH_OK(kvds_get(c, k, kl, buf, vlen, &len, 0));
  KVH_CHECK(kvh_val_ok(k, kl, vlen, buf, len), "%s: get after TOOBIG", tr);

  /* Empty values and objects. */
  KVH_EXPECT_RC(kvds_put(c, "empty", 5, "", 0), KVDS_E_INVAL);
  KVH_EXPECT_RC(kvds_create(c, "empty", 5, 0, &wb), KVDS_E_INVAL);

  /* --max-object: the limit itself is fine, one byte more is not. */
  char kb[64];
  size_t kbl = (size_t)snprintf(kb, sizeof kb, "%s/max", tr);
  uint8_t *big = kvh_val_new(kb, kbl, MAXOBJ + 1);
  KVH_EXPECT_RC(kvds_put(c, kb, kbl, big, MAXOBJ + 1), KVDS_E_TOOBIG);
  KVH_EXPECT_RC(kvds_create(c, kb, kbl, MAXOBJ + 1, &wb), KVDS_E_TOOBIG);
  KVH_OK(kvds_put(c, kb, kbl, big, MAXOBJ));
  KVH_OK(kvds_get(c, kb, kbl, buf, MAXOBJ + 1, &len, 0));
  KVH_CHECK(kvh_val_ok(kb, kbl, MAXOBJ, buf, len), "%s: max object", tr);
  KVH_OK(kvds_delete(c, kb, kbl));
  free(big);

  /* Two-phase misuse. */
  char kw[64];
  size_t kwl = (size_t)snprintf(kw, sizeof kw, "%s/wr", tr);
  KVH_OK(kvds_create(c, kw, kwl, 1000, &wb));
  KVH_EXPECT_RC(kvds_write(c, &wb, 1000, "x", 1), KVDS_E_RANGE);
  KVH_EXPECT_RC(kvds_write(c, &wb, 999, "xy", 2), KVDS_E_RANGE);
  KVH_EXPECT_RC(kvds_write(c, &wb, SIZE_MAX, "x", 1), KVDS_E_RANGE);
  KVH_EXPECT_RC(kvds_delete(c, kw, kwl), KVDS_E_STATE);
  KVH_EXPECT_RC(kvds_put(c, kw, kwl, "v", 1), KVDS_E_EXISTS);
  KVH_EXPECT_RC(kvds_get(c, kw, kwl, buf, 1000, &len, 0), KVDS_E_NOTFOUND);
  uint8_t *wv = kvh_val_new(kw, kwl, 1000);
  KVH_OK(kvds_write(c, &wb, 0, wv, 1000));
  copy = wb;
  KVH_OK(kvds_seal(c, &wb));
  /* Sealing (or aborting) the now-cleared wbuf again is an error. */
  int rc = kvds_seal(c, &wb);
  KVH_CHECK(rc == KVDS_E_HANDLE || rc == KVDS_E_STATE,
            "%s: second seal of a sealed wbuf: %s", tr, kvds_err_name(rc));
  if (kvds_client_is_local(c)) {
    /* A stale copy of the handle, too (over TCP the copy's staging buffer
     * was freed by the seal, so only the local case can try it). */
    rc = kvds_seal(c, &copy);
    KVH_CHECK(rc == KVDS_E_HANDLE || rc == KVDS_E_STATE,
              "%s: seal of a stale wbuf copy: %s", tr, kvds_err_name(rc));
    rc = kvds_abort(c, &copy);
    KVH_CHECK(rc == KVDS_E_HANDLE || rc == KVDS_E_STATE,
              "%s: abort of a sealed object: %s", tr, kvds_err_name(rc));
  }
  KVH_OK(kvds_ping(c));
  KVH_OK(kvds_get(c, kw, kwl, buf, 1000, &len, 0));
  KVH_CHECK(kvh_val_ok(kw, kwl, 1000, buf, len),
            "%s: object changed by a second seal", tr);
  KVH_OK(kvds_stat(c, kw, kwl, &info));
  KVH_CHECK(info.state == KVDS_STATE_SEALED && info.size == 1000 &&
                info.checksum == kvds_checksum(wv, 1000),
            "%s: stat after double seal", tr);
  free(wv);
  /* Releasing zeroed entries is a no-op. */
  struct kvds_value zero[2];
  memset(zero, 0, sizeof zero);
  KVH_OK(kvds_release(c, 2, zero));

  /* A full pool: WRITING objects cannot be evicted. */
  struct kvds_wbuf hold[64];
  int nh = 0;
  for (; nh < 64; nh++) {
    char kh[64];
    size_t khl = (size_t)snprintf(kh, sizeof kh, "%s/hold%02d", tr, nh);
    rc = kvds_create(c, kh, khl, MAXOBJ, &hold[nh]);
    if (rc)
      break;
  }
  KVH_CHECK(rc == KVDS_E_NOSPACE && nh > 2 && nh < 64,
            "%s: filling the pool: %s after %d objects", tr, kvds_err_name(rc),
            nh);
  KVH_EXPECT_RC(kvds_put(c, "nospace", 7, buf, MAXOBJ), KVDS_E_NOSPACE);
  KVH_OK(kvds_ping(c));
  for (int i = 0; i < nh; i++)
    KVH_OK(kvds_abort(c, &hold[i]));
  KVH_OK(kvds_put(c, "nospace", 7, buf, MAXOBJ));
  KVH_OK(kvds_delete(c, "nospace", 7));

  struct kvds_stats st;
  kvh_stats(c, &st);
  KVH_CHECK(
      st.objects_writing == 0 && st.pinned_objects == 0 && st.nospace >= 2,
      "%s: writing %llu pinned %llu nospace %llu", tr,
      (unsigned long long)st.objects_writing,
      (unsigned long long)st.pinned_objects, (unsigned long long)st.nospace);
  KVH_CHECK(kvds_client_errmsg(c) != NULL, "errmsg is NULL");
  (void)w;
  free(v);
  free(buf);
  kvds_client_close(c);
}

static void connect_errors(void) {
  int port = kvh_free_port();
  char a[64];
  kvds_client *c = NULL;
  uint64_t t0 = kvh_now_ms();
  snprintf(a, sizeof a, "127.0.0.1:%d", port);
  KVH_EXPECT_RC(kvds_client_connect(a, 5000, &c), -ECONNREFUSED);
  snprintf(a, sizeof a, "tcp://127.0.0.1:%d", port);
  KVH_EXPECT_RC(kvds_client_connect(a, 5000, &c), -ECONNREFUSED);
  KVH_CHECK(kvh_now_ms() - t0 < 1000, "refused connects took %llu ms",
            (unsigned long long)(kvh_now_ms() - t0));
  KVH_CHECK(c == NULL, "out-parameter written on failure");
  char path[512];
  snprintf(path, sizeof path, "unix:%s/nothing-here.sock", kvh_run_dir());
  KVH_EXPECT_RC(kvds_client_connect(path, 1000, &c), -ENOENT);
  KVH_EXPECT_RC(kvds_client_connect("127.0.0.1:99999", 1000, &c), KVDS_E_ADDR);
  KVH_EXPECT_RC(kvds_client_connect("no-port-here", 1000, &c), KVDS_E_ADDR);
  KVH_EXPECT_RC(kvds_client_connect("", 1000, &c), KVDS_E_INVAL);
  KVH_EXPECT_RC(kvds_client_connect(NULL, 1000, &c), KVDS_E_INVAL);
  KVH_CHECK(c == NULL, "out-parameter written on failure");
  kvds_client_close(NULL);
}

static void messages(void) {
  for (size_t i = 0; i < NCODES; i++) {
    const char *m = kvds_strerror(all_codes[i]);
    const char *n = kvds_err_name(all_codes[i]);
    KVH_CHECK(m && *m && n && strncmp(n, "KVDS_E_", 7) == 0,
              "code %d: message '%s' name '%s'", all_codes[i], m ? m : "",
              n ? n : "");
    for (size_t j = 0; j < i; j++) {
      KVH_CHECK(strcmp(m, kvds_strerror(all_codes[j])) != 0,
                "codes %d and %d share the message '%s'", all_codes[i],
                all_codes[j], m);
      KVH_CHECK(strcmp(n, kvds_err_name(all_codes[j])) != 0,
                "codes %d and %d share the name '%s'", all_codes[i],
                all_codes[j], n);
    }
    KVH_CHECK(strcmp(m, kvds_strerror(-ECONNREFUSED)) != 0,
              "code %d reads like ECONNREFUSED", all_codes[i]);
  }
  KVH_CHECK(*kvds_strerror(-ECONNREFUSED) && *kvds_strerror(-ENOENT) &&
                strcmp(kvds_err_name(-ECONNREFUSED), "ECONNREFUSED") == 0,
            "errno messages");
  KVH_CHECK(kvds_strerror(-29999) && kvds_strerror(1) && kvds_strerror(0) &&
                kvds_err_name(-29999) && kvds_err_name(123456),
            "unknown codes must still give a string");
}

/* A worker that stops answering (SIGSTOP): every call returns
 * KVDS_E_TIMEOUT after the client's timeout (plus wait_ms for a waiting
 * get) instead of hanging, the client then reports KVDS_E_CLOSED, and the
 * worker serves new clients once it runs again. */
static void timeouts(struct kvh_worker *w) {
  kvds_client *c = kvh_connect(w->addr), *t = kvh_connect(w->tcp);
  kvds_client_set_timeout(c, 300);
  kvds_client_set_timeout(t, 300);
  KVH_OK(kvds_put(c, "t/present", 9, "v", 1));
  KVH_CHECK(kill(w->pid, SIGSTOP) == 0, "SIGSTOP: %s", strerror(errno));
  uint64_t t0 = kvh_now_ms();
  KVH_EXPECT_RC(kvds_ping(c), KVDS_E_TIMEOUT);
  uint64_t el = kvh_now_ms() - t0;
  KVH_CHECK(el >= 270 && el < 3000, "ping timed out after %llu ms",
            (unsigned long long)el);
  KVH_EXPECT_RC(kvds_ping(c), KVDS_E_CLOSED);
  struct kvds_iov k = {"t/absent", 8};
  struct kvds_value v;
  int res;
  t0 = kvh_now_ms();
  KVH_EXPECT_RC(kvds_mget(t, 1, &k, 400, &v, &res), KVDS_E_TIMEOUT);
  el = kvh_now_ms() - t0;
  KVH_CHECK(el >= 630 && el < 4000, "waiting mget timed out after %llu ms",
            (unsigned long long)el);
  kvds_client *n = NULL;
  t0 = kvh_now_ms();
  KVH_EXPECT_RC(kvds_client_connect(w->tcp, 300, &n), KVDS_E_TIMEOUT);
  KVH_CHECK(n == NULL && kvh_now_ms() - t0 < 3000,
            "connect to a stopped "
            "worker: %llu ms",
            (unsigned long long)(kvh_now_ms() - t0));
  KVH_CHECK(kill(w->pid, SIGCONT) == 0, "SIGCONT: %s", strerror(errno));
  kvds_client_close(c);
  kvds_client_close(t);
  c = kvh_connect(w->addr);
  uint8_t b[4];
  size_t len;
  KVH_OK(kvds_get(c, "t/present", 9, b, sizeof b, &len, 0));
  KVH_OK(kvds_delete(c, "t/present", 9));
  kvds_client_close(c);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "errors");
  messages();
  connect_errors();
  struct kvh_worker w;
  /* One connection fills the pool with objects being written (run()): no
   * per-connection cap below the pool. */
  kvh_worker_start(&w, "12MiB",
                   (const char *const[]){"--max-object", "1MiB",
                                         "--max-writing-per-conn", "12MiB",
                                         NULL});
  run(&w, w.addr, "shm");
  run(&w, w.tcp, "tcp");
  timeouts(&w);
  /* The SHUTDOWN request: acknowledged, then the worker exits 0. */
  kvds_client *c = kvh_connect(w.tcp);
  KVH_OK(kvds_shutdown(c));
  kvds_client_close(c);
  kvh_worker_reap(&w, 10000);
  KVH_EXPECT_RC(kvds_client_connect(w.tcp, 1000, &c), -ECONNREFUSED);
  return kvh_finish();
}
