/*
 * test_eviction — a 16 MiB pool with watermarks 0.9 / 0.1 takes four times
 * its size in puts: older objects are evicted, pinned objects survive intact
 * (through their zero-copy views and through fresh reads), so do objects
 * pinned without their bytes (KVDS_GET_PIN, over TCP and shared memory),
 * the newest keys
 * stay, an object larger than the pool is refused, and once every byte is
 * pinned or being written a put fails with KVDS_E_NOSPACE instead of
 * hanging.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define VAL (256u << 10)
#define NPIN 4
#define NFILL 256 /* 64 MiB through a 16 MiB pool */
#define MAX_WRITING 64

static size_t key_of(char *buf, size_t cap, const char *kind, int i) {
  return (size_t)snprintf(buf, cap, "%s/%04d", kind, i);
}

static void put_derived(kvds_client *c, const char *kind, int i, size_t len) {
  char k[32];
  size_t kl = key_of(k, sizeof k, kind, i);
  void *v = kvh_val_new(k, kl, len);
  int rc = kvds_put(c, k, kl, v, len);
  KVH_CHECK(rc == 0, "put '%s' (%zu bytes): %s (%s)", k, len, kvds_err_name(rc),
            kvds_client_errmsg(c));
  free(v);
}

static int present(kvds_client *c, const char *kind, int i) {
  char k[32];
  struct kvds_iov ki = {k, key_of(k, sizeof k, kind, i)};
  uint8_t p = 2;
  KVH_OK(kvds_exists(c, 1, &ki, &p));
  return p;
}

static void check_get(kvds_client *c, const char *kind, int i, size_t len,
                      uint8_t *buf) {
  char k[32];
  size_t kl = key_of(k, sizeof k, kind, i), got = 0;
  int rc = kvds_get(c, k, kl, buf, VAL, &got, 0);
  KVH_CHECK(rc == 0, "get '%s': %s", k, kvds_err_name(rc));
  KVH_CHECK(kvh_val_ok(k, kl, len, buf, got), "value of '%s' corrupted", k);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "eviction");
  struct kvh_worker w;
  /* Two connections fill the pool with objects being written: no
   * per-connection cap below the pool. */
  kvh_worker_start(&w, "16MiB",
                   (const char *const[]){"--eviction_high_watermark_ratio",
                                         "0.9", "--eviction_ratio", "0.1",
                                         "--max-writing-per-conn", "16MiB",
                                         NULL});
  kvds_client *c = kvh_connect(w.addr); /* shared memory */
  kvds_client *t = kvh_connect(w.tcp);  /* TCP */
  KVH_CHECK(kvds_client_is_local(c) && !kvds_client_is_local(t),
            "transports: local %d, tcp %d", kvds_client_is_local(c),
            kvds_client_is_local(t));
  uint8_t *buf = malloc(VAL);
  KVH_CHECK(buf, "out of memory");
  struct kvds_stats st;
  kvh_stats(c, &st);
  KVH_CHECK(st.high_watermark_ppm == 900000 && st.eviction_ratio_ppm == 100000,
            "watermarks not applied: %llu / %llu ppm",
            (unsigned long long)st.high_watermark_ppm,
            (unsigned long long)st.eviction_ratio_ppm);
  uint64_t capacity = st.pool_capacity;
  KVH_CHECK(capacity > 8u << 20 && capacity <= 16u << 20,
            "capacity %llu for a 16 MiB pool", (unsigned long long)capacity);

  /* Pin a few objects and keep the views. */
  struct kvds_iov pkeys[NPIN];
  char pk[NPIN][32];
  struct kvds_value pins[NPIN];
  int res[NPIN];
  for (int i = 0; i < NPIN; i++) {
    put_derived(c, "pin", i, VAL - (size_t)i);
    pkeys[i] = (struct kvds_iov){pk[i], key_of(pk[i], sizeof pk[i], "pin", i)};
  }
  KVH_OK(kvds_mget(c, NPIN, pkeys, 0, pins, res));
  for (int i = 0; i < NPIN; i++)
    KVH_CHECK(res[i] == 0, "mget pin/%d: %s", i, kvds_err_name(res[i]));
  kvh_stats(c, &st);
  KVH_CHECK(st.pinned_objects == NPIN, "%llu pinned, want %d",
            (unsigned long long)st.pinned_objects, NPIN);

  /* Pins without bytes (KVDS_GET_PIN): over TCP nothing is sent, the
   * handle alone holds the object; a missing key is reported, not pinned. */
  struct kvds_value hp[3];
  int hres[3];
  for (int i = 0; i < 2; i++)
    put_derived(c, "hpin", i, VAL / 2 + (size_t)i);
  char hk[3][32];
  struct kvds_iov hkeys[3];
  for (int i = 0; i < 3; i++)
    hkeys[i] = (struct kvds_iov){hk[i], key_of(hk[i], sizeof hk[i], "hpin", i)};
  struct kvds_get_opts pin_opts = {.flags = KVDS_GET_PIN};
  struct kvds_stats s_before, s_after;
  kvh_stats(c, &s_before);
  KVH_OK(kvds_mget_ex(t, 2, hkeys, &pin_opts, hp, hres));
  KVH_OK(kvds_mget_ex(c, 1, hkeys + 2, &pin_opts, hp + 2, hres + 2));
  KVH_CHECK(hres[0] == 0 && hres[1] == 0 && hres[2] == KVDS_E_NOTFOUND,
            "pin-only results %s %s %s", kvds_err_name(hres[0]),
            kvds_err_name(hres[1]), kvds_err_name(hres[2]));
  for (int i = 0; i < 2; i++)
    KVH_CHECK(!hp[i].data && hp[i].len == VAL / 2 + (size_t)i && hp[i].handle &&
                  hp[i].checksum,
              "pin-only value %d: data %p len %zu handle %llu", i, hp[i].data,
              hp[i].len, (unsigned long long)hp[i].handle);
  KVH_CHECK(!hp[2].handle, "a missing key got a handle");
  kvh_stats(c, &s_after);
  /* (The client refuses a reply that carries data for a pin-only GET.) */
  KVH_CHECK(s_after.pinned_objects == s_before.pinned_objects + 2,
            "pin-only: pinned %llu -> %llu",
            (unsigned long long)s_before.pinned_objects,
            (unsigned long long)s_after.pinned_objects);
  {
    size_t got;
    KVH_EXPECT_RC(
        kvds_get_ex(t, hk[0], hkeys[0].len, buf, VAL, &got, &pin_opts),
        KVDS_E_INVAL);
    struct kvds_get_opts bad = {.flags = 0x80};
    KVH_EXPECT_RC(kvds_mget_ex(c, 1, hkeys, &bad, hp + 2, hres + 2),
                  KVDS_E_INVAL);
  }

  /* Deleting a pinned object: it leaves the index at once (the key can be
   * put again, with other bytes), the view keeps the old bytes, and its
   * memory comes back only when the pin is released. */
  {
    size_t old_len = 100000, new_len = 3000;
    put_derived(c, "del", 0, old_len);
    struct kvds_iov dk = {"del/0000", 8};
    struct kvds_value dv;
    int dres;
    KVH_OK(kvds_mget(c, 1, &dk, 0, &dv, &dres));
    KVH_CHECK(dres == 0, "mget del/0000: %s", kvds_err_name(dres));
    struct kvds_stats s0, s1;
    kvh_stats(c, &s0);
    KVH_OK(kvds_delete(c, dk.base, dk.len));
    KVH_CHECK(!present(c, "del", 0), "deleted key still exists");
    size_t got;
    KVH_EXPECT_RC(kvds_get(t, dk.base, dk.len, buf, VAL, &got, 0),
                  KVDS_E_NOTFOUND);
    kvh_stats(c, &s1);
    KVH_CHECK(s1.pool_used == s0.pool_used && s1.pinned_objects == NPIN + 3,
              "pinned + deleted: used %llu -> %llu, pinned %llu",
              (unsigned long long)s0.pool_used,
              (unsigned long long)s1.pool_used,
              (unsigned long long)s1.pinned_objects);
    void *nv = malloc(new_len);
    memset(nv, 0xee, new_len);
    KVH_OK(kvds_put(t, dk.base, dk.len, nv, new_len));
    KVH_OK(kvds_get(t, dk.base, dk.len, buf, VAL, &got, 0));
    KVH_CHECK(got == new_len && memcmp(buf, nv, new_len) == 0,
              "re-put of a deleted pinned key: wrong value");
    KVH_CHECK(kvh_val_ok(dk.base, dk.len, old_len, dv.data, dv.len),
              "the pinned view changed after delete + re-put");
    kvh_stats(c, &s0);
    KVH_OK(kvds_release(c, 1, &dv));
    KVH_OK(kvds_ping(c));
    kvh_stats(c, &s1);
    KVH_CHECK(
        s1.pinned_objects == NPIN + 2 && s1.pool_used + old_len <= s0.pool_used,
        "release of a deleted object: used %llu -> %llu, pinned %llu",
        (unsigned long long)s0.pool_used, (unsigned long long)s1.pool_used,
        (unsigned long long)s1.pinned_objects);
    KVH_OK(kvds_delete(c, dk.base, dk.len));
    free(nv);
  }

  /* Four pools' worth of puts, alternating shared memory and TCP. */
  for (int i = 0; i < NFILL; i++)
    put_derived(i & 1 ? t : c, "fill", i, VAL);
  kvh_stats(c, &st);
  KVH_CHECK(st.evictions > 0 && st.evicted_bytes >= st.evictions,
            "no evictions after %d puts of %u bytes into %llu", NFILL, VAL,
            (unsigned long long)capacity);
  KVH_CHECK(st.pool_used <= st.pool_capacity &&
                st.pool_used + st.pool_free == st.pool_capacity,
            "pool used %llu free %llu capacity %llu",
            (unsigned long long)st.pool_used, (unsigned long long)st.pool_free,
            (unsigned long long)st.pool_capacity);
  KVH_CHECK(st.pool_used <= capacity * 9 / 10 + VAL,
            "used %llu is above the high watermark",
            (unsigned long long)st.pool_used);
  KVH_CHECK(st.pinned_objects == NPIN + 2 && st.nospace == 0,
            "pinned %llu nospace %llu", (unsigned long long)st.pinned_objects,
            (unsigned long long)st.nospace);
  /* Pinned without bytes: the fill did not evict them. */
  for (int i = 0; i < 2; i++)
    check_get(c, "hpin", i, VAL / 2 + (size_t)i, buf);
  KVH_OK(kvds_release(t, 2, hp));
  KVH_OK(kvds_ping(t));
  kvh_stats(c, &st);
  KVH_CHECK(st.pinned_objects == NPIN, "pinned %llu after the pin-only release",
            (unsigned long long)st.pinned_objects);

  /* Pinned objects: still intact through the views and readable anew. */
  for (int i = 0; i < NPIN; i++) {
    KVH_CHECK(kvh_val_ok(pk[i], pkeys[i].len, VAL - (size_t)i, pins[i].data,
                         pins[i].len),
              "pinned view of pin/%d changed under eviction", i);
    check_get(t, "pin", i, VAL - (size_t)i, buf);
    check_get(c, "pin", i, VAL - (size_t)i, buf);
  }
  /* The newest keys are there, the oldest were evicted first (LRU). */
  for (int i = NFILL - 16; i < NFILL; i++)
    check_get(i & 1 ? c : t, "fill", i, VAL, buf);
  for (int i = 0; i < 16; i++)
    KVH_CHECK(!present(c, "fill", i), "fill/%04d (oldest) was not evicted", i);

  /* Larger than the whole pool: refused, on both transports. */
  struct kvds_wbuf wb;
  size_t huge = (size_t)capacity + (1u << 20);
  int rc = kvds_create(c, "huge", 4, huge, &wb);
  KVH_CHECK(rc == KVDS_E_TOOBIG || rc == KVDS_E_NOSPACE,
            "create of %zu bytes in a %llu pool: %s", huge,
            (unsigned long long)capacity, kvds_err_name(rc));
  rc = kvds_create(t, "huge", 4, huge, &wb);
  KVH_CHECK(rc == KVDS_E_TOOBIG || rc == KVDS_E_NOSPACE,
            "tcp create of %zu bytes: %s", huge, kvds_err_name(rc));
  KVH_OK(kvds_ping(c));
  KVH_OK(kvds_ping(t));

  /* Fill the rest with objects being written: sealed ones get evicted to
   * make room, until only pinned and WRITING bytes are left. */
  struct kvds_wbuf wr[MAX_WRITING];
  int nw = 0;
  for (; nw < MAX_WRITING; nw++) {
    char k[32];
    size_t kl = key_of(k, sizeof k, "writing", nw);
    rc = kvds_create(nw & 1 ? t : c, k, kl, 1u << 20, &wr[nw]);
    if (rc == KVDS_E_NOSPACE)
      break;
    KVH_CHECK(rc == 0, "create writing/%d: %s", nw, kvds_err_name(rc));
  }
  KVH_CHECK(nw > 4 && nw < MAX_WRITING, "%d writing objects fit", nw);
  kvh_stats(c, &st);
  KVH_CHECK(st.objects_writing == (uint64_t)nw && st.nospace >= 1 &&
                st.objects == (uint64_t)(nw + NPIN),
            "writing %llu objects %llu nospace %llu (want %d, %d, >= 1)",
            (unsigned long long)st.objects_writing,
            (unsigned long long)st.objects, (unsigned long long)st.nospace, nw,
            nw + NPIN);
  /* Nothing left to evict: a put fails at once, on both transports. */
  uint64_t t0 = kvh_now_ms();
  void *v = kvh_val_new("late", 4, 1u << 20);
  KVH_EXPECT_RC(kvds_put(c, "late", 4, v, 1u << 20), KVDS_E_NOSPACE);
  KVH_EXPECT_RC(kvds_put(t, "late", 4, v, 1u << 20), KVDS_E_NOSPACE);
  KVH_CHECK(kvh_now_ms() - t0 < 4000, "NOSPACE took %llu ms",
            (unsigned long long)(kvh_now_ms() - t0));
  KVH_OK(kvds_ping(c));
  KVH_OK(kvds_ping(t));
  for (int i = 0; i < NPIN; i++)
    KVH_CHECK(kvh_val_ok(pk[i], pkeys[i].len, VAL - (size_t)i, pins[i].data,
                         pins[i].len),
              "pinned view of pin/%d changed", i);

  /* Give the space back: the same put now succeeds. */
  for (int i = 0; i < nw; i++)
    KVH_OK(kvds_abort(i & 1 ? t : c, &wr[i]));
  KVH_OK(kvds_release(c, NPIN, pins));
  KVH_OK(kvds_put(c, "late", 4, v, 1u << 20));
  free(v);
  kvh_stats(c, &st);
  KVH_CHECK(st.objects_writing == 0 && st.pinned_objects == 0,
            "writing %llu pinned %llu after abort + release",
            (unsigned long long)st.objects_writing,
            (unsigned long long)st.pinned_objects);

  free(buf);
  kvds_client_close(c);
  kvds_client_close(t);
  kvh_worker_stop(&w);
  return kvh_finish();
}
