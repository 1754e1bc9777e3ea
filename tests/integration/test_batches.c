/*
 * test_batches — batch calls larger than one frame (KVDS_BATCH_MAX items,
 * which the library splits) with long binary keys (NUL and 0xff bytes
 * included, so request meta outgrows the worker's input buffer), on a
 * shared-memory and a TCP connection: mput, mget and mget_into with absent
 * keys and short buffers mixed in, exists, lookup_prefix across chunk
 * boundaries, list in byte order with paging, mcreate/write/mseal, mabort,
 * mdelete.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define N (KVDS_BATCH_MAX + 904) /* 5000: two chunks */
#define KLEN 120
#define MAXV 2048

struct keyset {
  uint8_t k[N][KLEN];
  struct kvds_iov iov[N];
};

/* Key i of a set: a tag byte, 115 derived bytes (any value), the index. */
static void make_keys(struct keyset *ks, uint8_t tag) {
  for (int i = 0; i < N; i++) {
    uint8_t *k = ks->k[i];
    uint64_t s = (uint64_t)i * 0x9e37u + tag;
    k[0] = tag;
    for (int j = 1; j < KLEN - 4; j++)
      k[j] = (uint8_t)kvh_rand(&s);
    k[1] = 0;    /* a NUL early on */
    k[2] = 0xff; /* and a byte that sorts last */
    k[KLEN - 4] = (uint8_t)(i >> 24);
    k[KLEN - 3] = (uint8_t)(i >> 16);
    k[KLEN - 2] = (uint8_t)(i >> 8);
    k[KLEN - 1] = (uint8_t)i;
    ks->iov[i] = (struct kvds_iov){k, KLEN};
  }
}

static size_t vlen(const struct kvds_iov *k) {
  return kvh_val_size(k->base, k->len, MAXV);
}

static int keycmp(const void *a, size_t al, const void *b, size_t bl) {
  int r = memcmp(a, b, al < bl ? al : bl);
  return r ? r : (al > bl) - (al < bl);
}

static void run(const char *addr, uint8_t tag, const char *tr) {
  kvds_client *c = kvh_connect(addr);
  static struct keyset ks, absent;
  make_keys(&ks, tag);
  make_keys(&absent, (uint8_t)(tag + 1));
  static struct kvds_iov vals[N];
  static int res[2 * N];
  for (int i = 0; i < N; i++)
    vals[i] = (struct kvds_iov){
        kvh_val_new(ks.iov[i].base, KLEN, vlen(&ks.iov[i])), vlen(&ks.iov[i])};

  /* mput of all, then of all again (every item EXISTS). */
  KVH_OK(kvds_mput(c, N, ks.iov, vals, res));
  for (int i = 0; i < N; i++)
    KVH_CHECK(res[i] == 0, "%s: mput item %d: %s", tr, i,
              kvds_err_name(res[i]));
  KVH_EXPECT_RC(kvds_mput(c, N, ks.iov, vals, res), KVDS_E_EXISTS);
  for (int i = 0; i < N; i++)
    KVH_CHECK(res[i] == KVDS_E_EXISTS, "%s: second mput item %d: %s", tr, i,
              kvds_err_name(res[i]));

  /* mget of present and absent keys interleaved. */
  static struct kvds_iov mix[2 * N];
  static struct kvds_value mv[2 * N];
  for (int i = 0; i < N; i++) {
    mix[2 * i] = ks.iov[i];
    mix[2 * i + 1] = absent.iov[i];
  }
  KVH_OK(kvds_mget(c, 2 * N, mix, 0, mv, res));
  for (int i = 0; i < N; i++) {
    KVH_CHECK(res[2 * i] == 0 &&
                  kvh_val_ok(ks.iov[i].base, KLEN, vlen(&ks.iov[i]),
                             mv[2 * i].data, mv[2 * i].len),
              "%s: mget item %d: %s", tr, 2 * i, kvds_err_name(res[2 * i]));
    KVH_CHECK(res[2 * i + 1] == KVDS_E_NOTFOUND && mv[2 * i + 1].handle == 0,
              "%s: mget absent item %d: %s", tr, 2 * i + 1,
              kvds_err_name(res[2 * i + 1]));
  }
  KVH_OK(kvds_release(c, 2 * N, mv));

  /* mget_into the same mix: present keys land in their buffers, every
   * third one's buffer is one byte short (TOOBIG, its size reported, not
   * a byte written), absent keys are NOTFOUND; nothing stays pinned. */
  static uint8_t into[2 * N][MAXV + 1];
  static struct kvds_iov bufs[2 * N];
  static size_t lens[2 * N];
  for (int i = 0; i < 2 * N; i++) {
    size_t want = i & 1 ? MAXV : vlen(&ks.iov[i / 2]);
    bufs[i] = (struct kvds_iov){into[i], i % 3 == 0 ? want - 1 : want};
    into[i][bufs[i].len] = 0xee;
    lens[i] = 7;
  }
  KVH_OK(kvds_mget_into(c, 2 * N, mix, NULL, bufs, lens, res));
  for (int i = 0; i < N; i++) {
    int j = 2 * i;
    size_t want = vlen(&ks.iov[i]);
    if (j % 3 == 0)
      KVH_CHECK(res[j] == KVDS_E_TOOBIG && lens[j] == want,
                "%s: mget_into short item %d: %s, len %zu", tr, j,
                kvds_err_name(res[j]), lens[j]);
    else
      KVH_CHECK(res[j] == 0 && lens[j] == want &&
                    kvh_val_ok(ks.iov[i].base, KLEN, want, into[j], lens[j]),
                "%s: mget_into item %d: %s", tr, j, kvds_err_name(res[j]));
    KVH_CHECK(into[j][bufs[j].len] == 0xee, "%s: mget_into wrote past %d", tr,
              j);
    KVH_CHECK(res[j + 1] == KVDS_E_NOTFOUND && lens[j + 1] == 7,
              "%s: mget_into absent item %d: %s", tr, j + 1,
              kvds_err_name(res[j + 1]));
  }
  struct kvds_get_opts pin = {.flags = KVDS_GET_PIN};
  KVH_EXPECT_RC(kvds_mget_into(c, 1, mix, &pin, bufs, lens, res), KVDS_E_INVAL);
  struct kvds_stats st;
  kvh_stats(c, &st);
  KVH_CHECK(st.pinned_objects == 0, "%s: %llu pinned after release", tr,
            (unsigned long long)st.pinned_objects);

  /* exists and lookup_prefix, across the chunk boundary. */
  static uint8_t pr[2 * N];
  KVH_OK(kvds_exists(c, 2 * N, mix, pr));
  for (int i = 0; i < 2 * N; i++)
    KVH_CHECK(pr[i] == !(i & 1), "%s: exists item %d = %d", tr, i, pr[i]);
  size_t cnt = 0;
  KVH_OK(kvds_lookup_prefix(c, N, ks.iov, &cnt));
  KVH_CHECK(cnt == N, "%s: lookup_prefix of all: %zu", tr, cnt);
  struct kvds_iov saved = ks.iov[KVDS_BATCH_MAX + 10];
  ks.iov[KVDS_BATCH_MAX + 10] = absent.iov[0];
  KVH_OK(kvds_lookup_prefix(c, N, ks.iov, &cnt));
  KVH_CHECK(cnt == KVDS_BATCH_MAX + 10,
            "%s: lookup_prefix with a gap at "
            "%d: %zu",
            tr, KVDS_BATCH_MAX + 10, cnt);
  ks.iov[KVDS_BATCH_MAX + 10] = saved;

  /* list by the tag byte: all N, in byte order, whatever the page size. */
  size_t limits[2] = {10000, 777};
  for (int li = 0; li < 2; li++) {
    uint8_t after[KLEN], prev[KLEN];
    size_t alen = 0, seen = 0;
    for (int page = 0; page < 100; page++) {
      struct kvds_list *l;
      KVH_OK(kvds_list(c, &tag, 1, alen ? after : NULL, alen, limits[li], &l));
      KVH_CHECK(l->n <= limits[li], "%s: page of %zu over limit %zu", tr, l->n,
                limits[li]);
      for (size_t i = 0; i < l->n; i++) {
        const struct kvds_list_entry *e = &l->entries[i];
        KVH_CHECK(e->klen == KLEN && ((const uint8_t *)e->key)[0] == tag,
                  "%s: foreign key listed", tr);
        if (seen)
          KVH_CHECK(keycmp(prev, KLEN, e->key, e->klen) < 0,
                    "%s: list out of byte order at %zu", tr, seen);
        memcpy(prev, e->key, KLEN);
        const uint8_t *k = e->key;
        int idx = (k[KLEN - 2] << 8) | k[KLEN - 1];
        KVH_CHECK(idx < N && memcmp(k, ks.k[idx], KLEN) == 0 &&
                      e->info.size == vlen(&ks.iov[idx]),
                  "%s: listed key/size wrong at %zu", tr, seen);
        seen++;
      }
      int more = l->more;
      if (l->n) {
        alen = KLEN;
        memcpy(after, l->entries[l->n - 1].key, KLEN);
      }
      kvds_list_free(l);
      if (!more)
        break;
    }
    KVH_CHECK(seen == N, "%s: listed %zu of %d keys (limit %zu)", tr, seen, N,
              limits[li]);
  }

  /* mdelete all, twice. */
  KVH_OK(kvds_mdelete(c, N, ks.iov, res));
  for (int i = 0; i < N; i++)
    KVH_CHECK(res[i] == 0, "%s: mdelete item %d: %s", tr, i,
              kvds_err_name(res[i]));
  KVH_EXPECT_RC(kvds_mdelete(c, N, ks.iov, res), KVDS_E_NOTFOUND);
  KVH_OK(kvds_exists(c, N, ks.iov, pr));
  for (int i = 0; i < N; i++)
    KVH_CHECK(pr[i] == 0, "%s: deleted key %d exists", tr, i);

  /* Two-phase, batched: create all, write, seal all; abort a few. */
  static size_t sizes[N];
  static struct kvds_wbuf wb[N];
  for (int i = 0; i < N; i++)
    sizes[i] = vlen(&ks.iov[i]);
  KVH_OK(kvds_mcreate(c, N, ks.iov, sizes, wb, res));
  for (int i = 0; i < N; i++) {
    KVH_CHECK(res[i] == 0 && wb[i].len == sizes[i], "%s: mcreate item %d: %s",
              tr, i, kvds_err_name(res[i]));
    KVH_OK(kvds_write(c, &wb[i], 0, vals[i].base, sizes[i]));
  }
  KVH_OK(kvds_mabort(c, 10, wb + N - 10));
  KVH_OK(kvds_mseal(c, N - 10, wb, res));
  kvh_stats(c, &st);
  KVH_CHECK(st.objects_writing == 0, "%s: %llu still writing", tr,
            (unsigned long long)st.objects_writing);
  KVH_OK(kvds_mget(c, N, ks.iov, 0, mv, res));
  for (int i = 0; i < N; i++) {
    if (i >= N - 10) {
      KVH_CHECK(res[i] == KVDS_E_NOTFOUND, "%s: aborted %d: %s", tr, i,
                kvds_err_name(res[i]));
      continue;
    }
    KVH_CHECK(res[i] == 0 && kvh_val_ok(ks.iov[i].base, KLEN, sizes[i],
                                        mv[i].data, mv[i].len),
              "%s: sealed item %d: %s", tr, i, kvds_err_name(res[i]));
  }
  KVH_OK(kvds_release(c, N, mv));
  KVH_EXPECT_RC(kvds_mdelete(c, N, ks.iov, res), KVDS_E_NOTFOUND);
  for (int i = 0; i < N; i++)
    KVH_CHECK(res[i] == (i >= N - 10 ? KVDS_E_NOTFOUND : 0),
              "%s: final mdelete item %d: %s", tr, i, kvds_err_name(res[i]));
  for (int i = 0; i < N; i++)
    free(vals[i].base);
  kvh_stats(c, &st);
  KVH_CHECK(st.objects == 0 && st.pinned_objects == 0 && st.pool_used == 0,
            "%s: objects %llu pinned %llu used %llu at the end", tr,
            (unsigned long long)st.objects,
            (unsigned long long)st.pinned_objects,
            (unsigned long long)st.pool_used);
  kvds_client_close(c);
}

/* Values put over TCP are hashed by the worker as they land, piece by piece
 * (one read takes at most 512 KiB then): sizes around every boundary, in
 * one batch and one at a time. The sum the worker kept (what a shared-memory
 * reader is handed) and the put's own answer equal the bytes' xxh3, and the
 * bytes are right. */
static void tcp_put_sums(const char *tcp, const char *shm) {
  static const size_t sizes[] = {1,      2,      240,     241,
                                 32767,  32768,  65536,   524287,
                                 524288, 524289, 1048579, 5u << 20};
  enum { NS = sizeof sizes / sizeof sizes[0] };
  kvds_client *t = kvh_connect(tcp), *l = kvh_connect(shm);
  char names[2 * NS][32];
  struct kvds_iov keys[2 * NS], vals[2 * NS];
  int res[2 * NS];
  for (int i = 0; i < 2 * NS; i++) {
    size_t sz = sizes[i % NS];
    snprintf(names[i], sizeof names[i], "tcpsum/%d", i);
    keys[i] = (struct kvds_iov){names[i], strlen(names[i])};
    vals[i] = (struct kvds_iov){kvh_val_new(names[i], keys[i].len, sz), sz};
  }
  KVH_OK(kvds_mput(t, NS, keys, vals, res)); /* one batch */
  for (int i = NS; i < 2 * NS; i++)          /* one at a time */
    KVH_OK(kvds_put(t, keys[i].base, keys[i].len, vals[i].base, vals[i].len));
  struct kvds_value v[2 * NS];
  KVH_OK(kvds_mget(l, 2 * NS, keys, 0, v, res));
  for (int i = 0; i < 2 * NS; i++) {
    KVH_CHECK(
        res[i] == 0 && v[i].len == vals[i].len &&
            kvh_val_ok(names[i], keys[i].len, vals[i].len, v[i].data, v[i].len),
        "tcp put %d (%zu B): %s", i, vals[i].len, kvds_err_name(res[i]));
    KVH_CHECK(v[i].checksum == kvds_checksum(vals[i].base, vals[i].len),
              "tcp put %d (%zu B): the worker's sum is wrong", i, vals[i].len);
    free(vals[i].base);
  }
  KVH_OK(kvds_release(l, 2 * NS, v));
  KVH_OK(kvds_mdelete(t, 2 * NS, keys, NULL));
  kvds_client_close(t);
  kvds_client_close(l);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "batches");
  struct kvh_worker w;
  kvh_worker_start(&w, "128MiB", NULL);
  run(w.addr, 0x10, "shm");
  run(w.tcp, 0xf0, "tcp");
  tcp_put_sums(w.tcp, w.addr);
  kvh_worker_stop(&w);
  return kvh_finish();
}
