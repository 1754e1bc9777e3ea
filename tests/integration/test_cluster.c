/*
 * test_cluster.c — the cluster data path with a real etcd and real
 * `kvds worker` processes (docs/cluster.md): a GET that misses on a worker
 * is resolved by the cluster (the key's home says who holds it, the value
 * is pulled into this worker's pool as a replica, checksum verified);
 * EXISTS / LOOKUP_PREFIX / LOCATE answer cluster-wide; hints; the owner
 * killed in the middle of a pull; etcd gone; a home restarted (its
 * directory shard rebuilt by re-announcement; no shard, read as stored
 * with a raw LOCAL LOCATE, keeps a dead incarnation); hostile bytes and
 * ANNOUNCE frames; the static --peers mode (a hint proven used while the
 * keys' home is stopped); an evicted replica; workers with a wrong or no
 * token; and, as root, a network partition between two network namespaces.
 *
 * Every value is derived from its key (kvh_val_*), so any reader checks
 * every byte. Announcements travel asynchronously: every wait for the
 * cluster to learn something is a poll with a deadline, and what the test
 * then asserts is checked, never assumed. No assertion is about speed; the
 * only time bounds are "an error before the pull deadline (+ slack)" and
 * "dropped within the lease TTL (+ slack)".
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness_cluster.h"
#include "proto/proto.h"

#define TTL_S 2
#define PULL_MS 3000
/* Allowance on top of a deadline for a loaded 2-core machine (and ASan):
 * tells "failed at the deadline" from "hung". */
#define SLACK_MS 4000
#define JOIN_MS 15000
/* How long the cluster may take to learn about new objects (announcements,
 * re-announcements after a view change). */
#define LEARN_MS 15000
#define SMALL_MAX (64u << 10)
#define BIG_SIZE (4u << 20)
#define HUGE_SIZE (32u << 20)
#define CHUNK 64

static struct kvh_etcd etcd;
static struct kvh_worker A, B, C;
static const char *ext_etcd[32];

/* ---- keys and values ----------------------------------------------------- */

/* Key i of a set ("s1", "s1-big", ...): "<set>/<i>". */
static size_t kname(char *buf, size_t cap, const char *set, unsigned i) {
  return (size_t)snprintf(buf, cap, "%s/%05u", set, i);
}

/* The size of a key's value: sets named *-huge hold 32 MiB, *-big about
 * 4 MiB, the others 1 B..64 KiB (skewed towards small). */
static size_t vsize(const char *k, size_t kl) {
  if (strstr(k, "-huge/"))
    return HUGE_SIZE;
  if (strstr(k, "-big/"))
    return BIG_SIZE - (size_t)(kvds_checksum(k, kl) % 4096);
  return kvh_val_size(k, kl, SMALL_MAX);
}

struct keys {
  size_t n;
  char (*name)[64];
  struct kvds_iov *iov;
};

static struct keys keys_new(const char *set, unsigned lo, unsigned hi) {
  struct keys k = {hi - lo, NULL, NULL};
  k.name = calloc(k.n ? k.n : 1, sizeof *k.name);
  k.iov = calloc(k.n ? k.n : 1, sizeof *k.iov);
  KVH_CHECK(k.name && k.iov, "out of memory");
  for (size_t i = 0; i < k.n; i++)
    k.iov[i] = (struct kvds_iov){
        k.name[i], kname(k.name[i], sizeof k.name[i], set, lo + (unsigned)i)};
  return k;
}

static void keys_free(struct keys *k) {
  free(k->name);
  free(k->iov);
  k->name = NULL;
  k->iov = NULL;
}

/* A client that stays on TCP (values travel inline, as from another
 * machine). */
static kvds_client *tcp_client(const struct kvh_worker *w, int timeout_ms) {
  kvds_client *c = NULL;
  int rc =
      kvds_client_connect_ex(w->tcp, timeout_ms, KVDS_CONNECT_TCP_ONLY, &c);
  KVH_CHECK(rc == 0, "connect %s: %s", w->tcp, kvds_err_name(rc));
  KVH_CHECK(!kvds_client_is_local(c), "client of %s is not remote", w->tcp);
  return c;
}

/* Puts keys [lo, hi) of set through c (mput, CHUNK at a time); where
 * names the worker in messages. */
static void put_set_c(kvds_client *c, const char *where, const char *set,
                      unsigned lo, unsigned hi) {
  struct keys k = keys_new(set, lo, hi);
  for (size_t off = 0; off < k.n; off += CHUNK) {
    size_t m = k.n - off < CHUNK ? k.n - off : CHUNK;
    struct kvds_iov vals[CHUNK];
    int res[CHUNK];
    for (size_t i = 0; i < m; i++) {
      struct kvds_iov *key = &k.iov[off + i];
      size_t len = vsize(key->base, key->len);
      vals[i] = (struct kvds_iov){kvh_val_new(key->base, key->len, len), len};
    }
    int rc = kvds_mput(c, m, k.iov + off, vals, res);
    KVH_CHECK(rc == 0, "put %s... on %s: %s (%s)", k.name[off], where,
              kvds_err_name(rc), kvds_client_errmsg(c));
    for (size_t i = 0; i < m; i++) {
      KVH_CHECK(res[i] == 0, "put %s on %s: %s", k.name[off + i], where,
                kvds_err_name(res[i]));
      free(vals[i].base);
    }
  }
  keys_free(&k);
}

/* Puts keys [lo, hi) of set on w (through its Unix socket). */
static void put_set(const struct kvh_worker *w, const char *set, unsigned lo,
                    unsigned hi) {
  kvds_client *c = kvh_connect(w->addr);
  put_set_c(c, w->addr, set, lo, hi);
  kvds_client_close(c);
}

/* Number of keys of k that EXISTS through c reports present; the first
 * absent one's name in *first_absent (NULL if none). */
static size_t count_present(kvds_client *c, const struct keys *k,
                            const char **first_absent) {
  size_t present = 0;
  *first_absent = NULL;
  for (size_t off = 0; off < k->n; off += 256) {
    size_t m = k->n - off < 256 ? k->n - off : 256;
    uint8_t p[256];
    int rc = kvds_exists(c, m, k->iov + off, p);
    KVH_CHECK(rc == 0, "exists %s...: %s (%s)", k->name[off], kvds_err_name(rc),
              kvds_client_errmsg(c));
    for (size_t i = 0; i < m; i++) {
      present += p[i] == 1;
      if (!p[i] && !*first_absent)
        *first_absent = k->name[off + i];
    }
  }
  return present;
}

/* Waits until EXISTS through c reports every key of [lo, hi) of set (the
 * cluster learnt about them); fails after timeout_ms. */
static void await_present_c(kvds_client *c, const char *where, const char *set,
                            unsigned lo, unsigned hi, int timeout_ms,
                            const char *what) {
  struct keys k = keys_new(set, lo, hi);
  uint64_t deadline = kvh_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    const char *absent;
    size_t n = count_present(c, &k, &absent);
    if (n == k.n)
      break;
    KVH_CHECK(kvh_now_ms() < deadline,
              "%s: EXISTS on %s reports %zu of %zu keys of %s after %d ms "
              "(%s absent)",
              what, where, n, k.n, set, timeout_ms, absent);
    kvh_sleep_ms(50);
  }
  keys_free(&k);
}

/* The same through a TCP client of w. */
static void await_present(const struct kvh_worker *w, const char *set,
                          unsigned lo, unsigned hi, int timeout_ms,
                          const char *what) {
  kvds_client *c = tcp_client(w, 10000);
  await_present_c(c, w->tcp, set, lo, hi, timeout_ms, what);
  kvds_client_close(c);
}

/* Reads keys [lo, hi) of set through c with opts o (mget, CHUNK at a time)
 * and checks every byte; every key must be found. */
static void check_set(kvds_client *c, const char *where, const char *set,
                      unsigned lo, unsigned hi, const struct kvds_get_opts *o,
                      const char *what) {
  struct keys k = keys_new(set, lo, hi);
  for (size_t off = 0; off < k.n; off += CHUNK) {
    size_t m = k.n - off < CHUNK ? k.n - off : CHUNK;
    struct kvds_value vals[CHUNK];
    int res[CHUNK];
    int rc = kvds_mget_ex(c, m, k.iov + off, o, vals, res);
    KVH_CHECK(rc == 0, "%s: mget %s... from %s: %s (%s)", what, k.name[off],
              where, kvds_err_name(rc), kvds_client_errmsg(c));
    for (size_t i = 0; i < m; i++) {
      const struct kvds_iov *key = &k.iov[off + i];
      KVH_CHECK(res[i] == 0, "%s: %s from %s: %s", what, k.name[off + i], where,
                kvds_err_name(res[i]));
      KVH_CHECK(kvh_val_ok(key->base, key->len, vsize(key->base, key->len),
                           vals[i].data, vals[i].len),
                "%s: %s from %s: wrong value (%zu bytes, want %zu)", what,
                k.name[off + i], where, vals[i].len,
                vsize(key->base, key->len));
      KVH_CHECK(vals[i].checksum == kvds_checksum(vals[i].data, vals[i].len),
                "%s: %s from %s: checksum field does not match the bytes", what,
                k.name[off + i], where);
    }
    KVH_OK(kvds_release(c, m, vals));
  }
  keys_free(&k);
}

/* The same with kvds_get_ex, one key at a time (values up to cap). */
static void check_set_get(kvds_client *c, const char *where, const char *set,
                          unsigned lo, unsigned hi,
                          const struct kvds_get_opts *o, const char *what) {
  size_t cap = HUGE_SIZE;
  uint8_t *buf = malloc(cap);
  KVH_CHECK(buf, "out of memory");
  for (unsigned i = lo; i < hi; i++) {
    char key[64];
    size_t kl = kname(key, sizeof key, set, i), len = 0;
    int rc = kvds_get_ex(c, key, kl, buf, cap, &len, o);
    KVH_CHECK(rc == 0, "%s: get %s from %s: %s (%s)", what, key, where,
              kvds_err_name(rc), kvds_client_errmsg(c));
    KVH_CHECK(kvh_val_ok(key, kl, vsize(key, kl), buf, len),
              "%s: get %s from %s: wrong value (%zu bytes)", what, key, where,
              len);
  }
  free(buf);
}

/* ---- cluster views (CLUSTER request) --------------------------------------
 */

static const char *etcd_state(json_t *cl) {
  const char *s =
      json_string_value(json_object_get(json_object_get(cl, "etcd"), "state"));
  return s ? s : "";
}

/* Counter name ("pulls", "bytes_out", ...) of member id in viewer's
 * CLUSTER object; fails the test if it is missing. */
static uint64_t peer_counter(const char *viewer, const char *id,
                             const char *name) {
  json_t *cl = kvh_cluster_of(viewer);
  json_t *v = cl ? json_object_get(kvh_member(cl, id), name) : NULL;
  KVH_CHECK(json_is_integer(v), "%s: no %s of %s in the CLUSTER object", viewer,
            name, id);
  uint64_t n = (uint64_t)json_integer_value(v);
  json_decref(cl);
  return n;
}

static void await_abc(const char *what) {
  struct kvh_worker *abc[] = {&A, &B, &C};
  const char *ids[] = {A.addr, B.addr, C.addr};
  kvh_await_views(abc, 3, ids, 3, JOIN_MS, what);
}

/* ---- locations ----------------------------------------------------------- */

struct locs {
  struct kvds_location *v;
  size_t n;
};

static struct locs locate(kvds_client *c, const char *key) {
  struct locs l = {NULL, 0};
  int rc = kvds_locate(c, key, strlen(key), &l.v, &l.n);
  KVH_CHECK(rc == 0, "locate %s: %s (%s)", key, kvds_err_name(rc),
            kvds_client_errmsg(c));
  return l;
}

static int locs_has(const struct locs *l, const char *id) {
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->v[i].id, id) == 0)
      return 1;
  return 0;
}

static void locs_print(const char *key, const struct locs *l) {
  fprintf(stderr, "locate %s: %zu location(s):", key, l->n);
  for (size_t i = 0; i < l->n; i++)
    fprintf(stderr, " %s@%llu", l->v[i].id, (unsigned long long)l->v[i].epoch);
  fprintf(stderr, "\n");
}

/* Every location of l is a member of viewer's view with that epoch. */
static void locs_match_view(const struct locs *l, const char *viewer,
                            const char *key) {
  json_t *cl = kvh_cluster_of(viewer);
  KVH_CHECK(cl, "no cluster object from %s", viewer);
  for (size_t i = 0; i < l->n; i++) {
    json_t *m = kvh_member(cl, l->v[i].id);
    uint64_t e = kvh_epoch_of(cl, l->v[i].id);
    if (!m || e != l->v[i].epoch) {
      locs_print(key, l);
      kvh_dump_view(viewer);
      KVH_CHECK(0, "locate %s lists %s@%llu, not a member of the view (%s)",
                key, l->v[i].id, (unsigned long long)l->v[i].epoch,
                m ? "other epoch" : "unknown id");
    }
  }
  json_decref(cl);
}

/* ---- raw frames and shards as stored --------------------------------------
 */

/* A directory shard entry as a worker stores it (a worker lists at most 8
 * owners, plus itself). */
#define SHARD_MAX 16
struct shard {
  size_t n;
  struct kvds_location v[SHARD_MAX];
};

/*
 * The locations of key as w keeps them, unfiltered: a raw LOCATE with the
 * LOCAL flag (as a peer sends it) answers from w's own shard, plus w itself
 * when it holds the key — never checked against w's view, so a stale
 * (member, old epoch) entry shows here while kvds_locate would hide it.
 * Reply per key: an item (a = number of owners), then one item per owner
 * (key = member id, a = epoch).
 */
static struct shard shard_of(const struct kvh_worker *w, const char *key) {
  struct kvh_frame f;
  kvh_frame_init(&f, KVDS_OP_LOCATE, 77);
  f.h.flags = KVDS_PF_LOCAL;
  kvh_frame_item(&f, 0, key, strlen(key));
  kvh_frame_seal(&f);
  int fd = kvh_raw_tcp(w->port);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "shard of %s: send", key);
  struct kvds_proto_hdr h;
  uint8_t *meta = NULL;
  KVH_CHECK(kvh_read_reply(fd, &h, &meta, 5000) == 0,
            "shard of %s on %s: closed without a reply", key, w->addr);
  close(fd);
  KVH_CHECK(h.opcode == KVDS_OP_LOCATE && h.req_id == 77 && h.status == 0,
            "shard of %s on %s: reply op %u status %s", key, w->addr, h.opcode,
            kvds_err_name(h.status));
  struct shard sh = {0};
  size_t pos = 0;
  struct kvds_proto_item it;
  const uint8_t *k;
  KVH_CHECK(kvds_proto_item_decode(meta, h.meta_len, &pos, &it, &k) == 0 &&
                (it.status == 0 || it.status == KVDS_E_NOTFOUND) &&
                it.a <= SHARD_MAX && h.count == 1 + it.a,
            "shard of %s on %s: malformed reply (status %s, %llu owners, "
            "%u items)",
            key, w->addr, kvds_err_name(it.status), (unsigned long long)it.a,
            h.count);
  sh.n = (size_t)it.a;
  for (size_t i = 0; i < sh.n; i++) {
    KVH_CHECK(kvds_proto_item_decode(meta, h.meta_len, &pos, &it, &k) == 0 &&
                  it.klen > 0 && it.klen < sizeof sh.v[i].id,
              "shard of %s on %s: malformed owner %zu", key, w->addr, i);
    memcpy(sh.v[i].id, k, it.klen);
    sh.v[i].id[it.klen] = 0;
    sh.v[i].epoch = it.a;
  }
  free(meta);
  return sh;
}

/* 1 iff the shard lists (id, epoch). */
static int shard_has(const struct shard *sh, const char *id, uint64_t epoch) {
  for (size_t i = 0; i < sh->n; i++)
    if (strcmp(sh->v[i].id, id) == 0 && sh->v[i].epoch == epoch)
      return 1;
  return 0;
}

/* Number of keys set/lo, lo + step, ... < hi for which a shard of one of
 * the workers who[0..nw) lists (id, epoch); the first such key and worker
 * in *key_out / *where_out. */
static size_t shards_listing(struct kvh_worker *const *who, size_t nw,
                             const char *set, unsigned lo, unsigned hi,
                             unsigned step, const char *id, uint64_t epoch,
                             char *key_out, size_t cap,
                             const char **where_out) {
  size_t found = 0;
  for (unsigned i = lo; i < hi; i += step) {
    char key[64];
    kname(key, sizeof key, set, i);
    int listed = 0;
    for (size_t w = 0; w < nw && !listed; w++) {
      struct shard sh = shard_of(who[w], key);
      if (shard_has(&sh, id, epoch)) {
        listed = 1;
        if (!found) {
          snprintf(key_out, cap, "%s", key);
          *where_out = who[w]->addr;
        }
      }
    }
    found += (size_t)listed;
  }
  return found;
}

/* Waits (<= LEARN_MS: each worker drops them when it applies the view)
 * until no shard of who[0..nw) lists (id, old epoch) for the sample keys
 * set/lo, lo + step, ... < hi; fails if one still does. */
static void await_no_stale(struct kvh_worker *const *who, size_t nw,
                           const char *set, unsigned lo, unsigned hi,
                           unsigned step, const char *id, uint64_t epoch,
                           const char *what) {
  uint64_t deadline = kvh_now_ms() + LEARN_MS;
  for (;;) {
    char key[64] = "";
    const char *where = "";
    size_t n = shards_listing(who, nw, set, lo, hi, step, id, epoch, key,
                              sizeof key, &where);
    if (n == 0)
      return;
    KVH_CHECK(kvh_now_ms() < deadline,
              "%s: %zu keys of %s still listed at %s@%llu after %d ms (%s in "
              "the shard of %s)",
              what, n, set, id, (unsigned long long)epoch, LEARN_MS, key,
              where);
    kvh_sleep_ms(100);
  }
}

/* ---- 1. a spread of values read on other workers ------------------------- */

#define S1_N 3000
#define S1_BIG 4

static void test_spread(void) {
  uint64_t t0 = kvh_now_ms();
  put_set(&A, "s1", 0, S1_N);
  put_set(&A, "s1-big", 0, S1_BIG);
  /* Through B the cluster knows every key (announced to the homes). */
  await_present(&B, "s1", 0, S1_N, LEARN_MS, "announce");
  await_present(&B, "s1-big", 0, S1_BIG, LEARN_MS, "announce");

  /* Read everything from B over TCP (batches and single gets) and from C
   * through its shared memory. */
  kvds_client *b = tcp_client(&B, 10000);
  check_set(b, B.tcp, "s1", 0, S1_N, NULL, "s1 mget from B");
  check_set_get(b, B.tcp, "s1-big", 0, S1_BIG, NULL, "s1 get from B");
  kvds_client *c = kvh_connect(C.addr);
  KVH_CHECK(kvds_client_is_local(c), "client of %s is not local", C.addr);
  check_set(c, C.addr, "s1", 0, S1_N, NULL, "s1 mget from C");
  check_set(c, C.addr, "s1-big", 0, S1_BIG, NULL, "s1 mget from C");

  /* B holds replicas now: its own store has every key. */
  struct kvds_get_opts local = {0, NULL, KVDS_GET_LOCAL};
  check_set(b, B.tcp, "s1", 0, S1_N, &local, "B's replicas");
  check_set_get(b, B.tcp, "s1-big", 0, S1_BIG, &local, "B's replicas");
  struct kvds_stats st;
  kvh_stats(b, &st);
  KVH_CHECK(st.objects >= S1_N + S1_BIG && st.objects_writing == 0,
            "B: %llu objects (%llu writing), want >= %u replicas, 0 writing",
            (unsigned long long)st.objects,
            (unsigned long long)st.objects_writing, S1_N + S1_BIG);

  /* LOCATE through C: A (the original) first, then the replicas on B and
   * C, with the epochs of the view. Replicas are announced asynchronously:
   * poll. */
  const unsigned sample[] = {0, 1, 777, 1500, S1_N - 1};
  for (size_t s = 0; s < sizeof sample / sizeof sample[0] + 1; s++) {
    char key[64];
    if (s < sizeof sample / sizeof sample[0])
      kname(key, sizeof key, "s1", sample[s]);
    else
      kname(key, sizeof key, "s1-big", 1);
    uint64_t deadline = kvh_now_ms() + LEARN_MS;
    struct locs l;
    for (;;) {
      l = locate(c, key);
      if (l.n == 3 && locs_has(&l, A.addr) && locs_has(&l, B.addr) &&
          locs_has(&l, C.addr))
        break;
      if (kvh_now_ms() >= deadline) {
        locs_print(key, &l);
        KVH_CHECK(0, "locate %s on C: want A, B and C", key);
      }
      free(l.v);
      kvh_sleep_ms(50);
    }
    if (strcmp(l.v[0].id, A.addr) != 0) {
      locs_print(key, &l);
      KVH_CHECK(0, "locate %s: the original (A) is not listed first", key);
    }
    locs_match_view(&l, C.addr, key);
    free(l.v);
  }
  kvds_client_close(c);
  kvds_client_close(b);
  fprintf(stderr, "1. spread: %u keys + %u x 4 MiB read on B and C (%llu ms)\n",
          S1_N, S1_BIG, (unsigned long long)(kvh_now_ms() - t0));
}

/* ---- 2. EXISTS and LOOKUP_PREFIX across workers ---------------------------
 */

#define CHAIN 64
#define CHAIN_PUT 50 /* chain[0..50) exists somewhere */
#define CHAIN_GAP 52 /* and chain[52], past the gap */

static void test_prefix(void) {
  /* chain[0..40) on A, [40..50) on C, except chain[44] on B itself. */
  for (unsigned i = 0; i < CHAIN_PUT; i++)
    put_set(i < 40 ? &A : i == 44 ? &B : &C, "s2", i, i + 1);
  put_set(&A, "s2", CHAIN_GAP, CHAIN_GAP + 1);
  struct keys chain = keys_new("s2", 0, CHAIN);
  kvds_client *b = tcp_client(&B, 10000);
  size_t want = CHAIN_PUT, got = 0;
  uint64_t deadline = kvh_now_ms() + LEARN_MS;
  for (;;) {
    int rc = kvds_lookup_prefix(b, CHAIN, chain.iov, &got);
    KVH_CHECK(rc == 0, "lookup_prefix on B: %s (%s)", kvds_err_name(rc),
              kvds_client_errmsg(b));
    KVH_CHECK(got <= want, "lookup_prefix on B: %zu, but only %zu exist", got,
              want);
    if (got == want)
      break;
    KVH_CHECK(kvh_now_ms() < deadline,
              "lookup_prefix on B: %zu after %d ms, "
              "want %zu",
              got, LEARN_MS, want);
    kvh_sleep_ms(50);
  }
  /* A chain that starts with an absent key has no prefix. */
  struct keys other = keys_new("s2-none", 0, 4);
  KVH_OK(kvds_lookup_prefix(b, 4, other.iov, &got));
  KVH_CHECK(got == 0, "lookup_prefix of absent keys: %zu", got);

  /* EXISTS of a mix: absent keys and the chain (present iff put), from
   * its end backwards. */
  struct kvds_iov mix[CHAIN + 4];
  uint8_t expect[CHAIN + 4], present[CHAIN + 4];
  for (unsigned i = 0; i < CHAIN + 4; i++) {
    unsigned idx = CHAIN + 3 - i; /* 67..0: other[3..0], chain[63..0] */
    mix[i] = idx >= CHAIN ? other.iov[idx - CHAIN] : chain.iov[idx];
    expect[i] = idx < CHAIN_PUT || idx == CHAIN_GAP;
  }
  deadline = kvh_now_ms() + LEARN_MS;
  for (;;) {
    KVH_OK(kvds_exists(b, CHAIN + 4, mix, present));
    int same = 1;
    for (unsigned i = 0; i < CHAIN + 4; i++) {
      KVH_CHECK(present[i] <= expect[i], "exists on B: %.*s present, never put",
                (int)mix[i].len, (const char *)mix[i].base);
      same &= present[i] == expect[i];
    }
    if (same)
      break;
    KVH_CHECK(kvh_now_ms() < deadline, "exists on B: not right after %d ms",
              LEARN_MS);
    kvh_sleep_ms(50);
  }
  /* EXISTS and LOOKUP_PREFIX pull nothing: B still holds only chain[44]. */
  struct kvds_get_opts local = {0, NULL, KVDS_GET_LOCAL};
  uint8_t *buf = malloc(SMALL_MAX);
  KVH_CHECK(buf, "out of memory");
  for (unsigned i = 0; i < CHAIN; i++) {
    size_t len = 0;
    int rc = kvds_get_ex(b, chain.iov[i].base, chain.iov[i].len, buf, SMALL_MAX,
                         &len, &local);
    KVH_CHECK(rc == (i == 44 ? 0 : KVDS_E_NOTFOUND), "B's own copy of %s: %s",
              chain.name[i], kvds_err_name(rc));
  }
  free(buf);
  kvds_client_close(b);
  keys_free(&chain);
  keys_free(&other);
  fprintf(stderr, "2. lookup_prefix / exists across workers: ok\n");
}

/* ---- 3. hints, KVDS_GET_LOCAL, absent keys --------------------------------
 */

static void test_hints(void) {
  kvds_client *b = tcp_client(&B, 10000);
  /* A hint needs no directory: read at once after the put. */
  put_set(&A, "s3-h", 0, 200);
  struct kvds_get_opts hint_a = {0, A.addr, 0};
  check_set(b, B.tcp, "s3-h", 0, 200, &hint_a, "hint = A (mget)");
  put_set(&A, "s3-g", 0, 20);
  check_set_get(b, B.tcp, "s3-g", 0, 20, &hint_a, "hint = A (get)");
  kvds_client *bl = kvh_connect(B.addr); /* shared memory */
  put_set(&A, "s3-hl", 0, 50);
  check_set(bl, B.addr, "s3-hl", 0, 50, &hint_a, "hint = A (local client)");

  /* A hint naming no member, or a member without the keys: the directory
   * still finds them (waiting for the announcements). */
  put_set(&A, "s3-u", 0, 100);
  struct kvds_get_opts hint_unknown = {LEARN_MS, "127.0.0.1:1", 0};
  check_set(b, B.tcp, "s3-u", 0, 100, &hint_unknown, "unknown hint");
  /* (with a wait the hinted worker would be waited on: the keys are
   * known to the cluster first) */
  put_set(&A, "s3-c", 0, 100);
  await_present(&B, "s3-c", 0, 100, LEARN_MS, "announce");
  struct kvds_get_opts hint_c = {0, C.addr, 0};
  check_set(b, B.tcp, "s3-c", 0, 100, &hint_c, "hint = C (no keys)");

  /* KVDS_GET_LOCAL: a key only A holds is not found on B, and B does not
   * pull it: B's object count and its pulls from A stay as they were. */
  put_set(&A, "s3-l", 0, 1);
  await_present(&B, "s3-l", 0, 1, LEARN_MS, "announce");
  struct kvds_stats st0, st1;
  kvh_stats(b, &st0);
  uint64_t pulls0 = peer_counter(B.addr, A.addr, "pulls");
  char key[64];
  size_t kl = kname(key, sizeof key, "s3-l", 0), len = 0;
  uint8_t *buf = malloc(SMALL_MAX);
  KVH_CHECK(buf, "out of memory");
  struct kvds_get_opts local = {0, NULL, KVDS_GET_LOCAL};
  KVH_EXPECT_RC(kvds_get_ex(b, key, kl, buf, SMALL_MAX, &len, &local),
                KVDS_E_NOTFOUND);
  struct kvds_iov kv = {key, kl};
  struct kvds_value v;
  int res = 0;
  KVH_OK(kvds_mget_ex(bl, 1, &kv, &local, &v, &res));
  KVH_CHECK(res == KVDS_E_NOTFOUND, "local mget of %s on B: %s", key,
            kvds_err_name(res));
  /* with a hint too: LOCAL wins */
  struct kvds_get_opts local_hint = {0, A.addr, KVDS_GET_LOCAL};
  KVH_EXPECT_RC(kvds_get_ex(b, key, kl, buf, SMALL_MAX, &len, &local_hint),
                KVDS_E_NOTFOUND);
  kvh_stats(b, &st1);
  uint64_t pulls1 = peer_counter(B.addr, A.addr, "pulls");
  KVH_CHECK(st1.objects == st0.objects && st1.objects_writing == 0 &&
                pulls1 == pulls0,
            "local reads of %s on B: objects %llu -> %llu (%llu writing), "
            "pulls from A %llu -> %llu",
            key, (unsigned long long)st0.objects,
            (unsigned long long)st1.objects,
            (unsigned long long)st1.objects_writing, (unsigned long long)pulls0,
            (unsigned long long)pulls1);
  /* ... and a plain GET then pulls it. */
  KVH_OK(kvds_get(b, key, kl, buf, SMALL_MAX, &len, 0));
  KVH_CHECK(kvh_val_ok(key, kl, vsize(key, kl), buf, len), "%s from B", key);
  kvh_stats(b, &st1);
  KVH_CHECK(st1.objects == st0.objects + 1 &&
                peer_counter(B.addr, A.addr, "pulls") > pulls0,
            "a plain GET of %s on B did not pull it (objects %llu -> %llu)",
            key, (unsigned long long)st0.objects,
            (unsigned long long)st1.objects);

  /* A key nobody has: NOTFOUND (not a peer error), before the deadline. */
  uint64_t t0 = kvh_now_ms();
  KVH_EXPECT_RC(kvds_get(b, "s3-nowhere", 10, buf, SMALL_MAX, &len, 0),
                KVDS_E_NOTFOUND);
  uint64_t dt = kvh_now_ms() - t0;
  KVH_CHECK(dt < PULL_MS + SLACK_MS, "GET of an absent key took %llu ms",
            (unsigned long long)dt);
  struct kvds_get_opts hint_nowhere = {0, A.addr, 0};
  KVH_EXPECT_RC(
      kvds_get_ex(b, "s3-nowhere", 10, buf, SMALL_MAX, &len, &hint_nowhere),
      KVDS_E_NOTFOUND);
  free(buf);
  kvds_client_close(bl);
  kvds_client_close(b);
  fprintf(stderr, "3. hints / local reads: ok\n");
}

/* ---- 4. the owner dies in the middle of a pull ----------------------------
 */

#define S4_N 8

struct reader_report {
  int rc;        /* the error that ended the loop */
  int which;     /* "mget" (whole call) = 1, item = 0 */
  unsigned iter; /* reads done before it */
  uint64_t ms;   /* duration of the failing call */
};

/* Child: reads the huge keys from B one by one (each a pull from A),
 * checks them, deletes B's copy so the next round pulls again; 'R' to the
 * parent after each good read; on the first error, reports it and exits. */
static void reader_main(int out_fd) {
  kvds_client *c = kvh_connect(B.addr);
  kvds_client_set_timeout(c, 20000); /* the worker's deadline decides */
  uint64_t stop = kvh_now_ms() + 60000;
  for (unsigned n = 0;; n++) {
    KVH_CHECK(kvh_now_ms() < stop, "reader: no error after %u reads", n);
    char key[64];
    size_t kl = kname(key, sizeof key, "s4-huge", n % S4_N);
    struct kvds_iov k = {key, kl};
    struct kvds_value v;
    int res = 0;
    uint64_t t0 = kvh_now_ms();
    int rc = kvds_mget(c, 1, &k, 0, &v, &res);
    uint64_t dt = kvh_now_ms() - t0;
    if (rc || res) {
      struct reader_report r = {rc ? rc : res, rc != 0, n, dt};
      kvh_send_byte(out_fd, 'E');
      KVH_CHECK(kvh_write_all(out_fd, &r, sizeof r) == 0, "pipe");
      _exit(0);
    }
    KVH_CHECK(kvh_val_ok(key, kl, HUGE_SIZE, v.data, v.len),
              "reader: %s from B: wrong value", key);
    KVH_OK(kvds_release(c, 1, &v));
    KVH_OK(kvds_delete(c, key, kl));
    kvh_send_byte(out_fd, 'R');
  }
}

static void test_owner_killed(void) {
  put_set(&A, "s4-huge", 0, S4_N);
  await_present(&B, "s4-huge", 0, S4_N, LEARN_MS, "announce");
  uint64_t a_epoch = kvh_view_epoch(B.addr, A.addr);
  KVH_CHECK(a_epoch, "A not in B's view");
  /* The shards as stored list the old A for its keys (homes B and C: about
   * two thirds of them), so the checks after the restart can fail. */
  struct kvh_worker *abc[] = {&A, &B, &C}, *bc_only[] = {&B, &C};
  char skey[64];
  const char *swhere;
  KVH_CHECK(shards_listing(bc_only, 2, "s1", 0, S1_N, 100, A.addr, a_epoch,
                           skey, sizeof skey, &swhere) > 0,
            "no shard of B or C lists A@%llu for s1 before the kill",
            (unsigned long long)a_epoch);
  KVH_CHECK(shards_listing(bc_only, 2, "s4-huge", 0, S4_N, 1, A.addr, a_epoch,
                           skey, sizeof skey, &swhere) > 0,
            "no shard of B or C lists A@%llu for s4-huge before the kill",
            (unsigned long long)a_epoch);
  int p[2];
  KVH_CHECK(pipe(p) == 0, "pipe: %s", strerror(errno));
  pid_t rd = kvh_fork();
  if (rd == 0) {
    close(p[0]);
    reader_main(p[1]);
  }
  close(p[1]);
  /* Two whole pulls first (connections made, the path warm). */
  for (int i = 0; i < 2; i++) {
    int b = kvh_recv_byte(p[0], 30000);
    struct reader_report r = {0, 0, 0, 0};
    if (b == 'E')
      (void)kvh_read_all(p[0], &r, sizeof r, 1000);
    KVH_CHECK(b == 'R', "reader failed before the kill (%d): %s", b,
              kvds_err_name(r.rc));
  }
  /* Then A dies while a value is streaming into B. B has an object being
   * written only while a pull runs; A is stopped then, and if B still has
   * it 200 ms later the pull is stuck in the middle of the value (the rest
   * cannot arrive while A is stopped): A is killed there. If the pull ended
   * meanwhile (stopped too late), A goes on and the test tries again. */
  kvds_client *bs = kvh_connect(B.addr);
  uint64_t until = kvh_now_ms() + 30000;
  for (;;) {
    KVH_CHECK(kvh_now_ms() < until,
              "never caught a pull in the middle of a value on B");
    struct kvds_stats st;
    kvh_stats(bs, &st);
    if (st.objects_writing == 0) {
      kvh_sleep_ms(1);
      continue;
    }
    KVH_CHECK(kill(A.pid, SIGSTOP) == 0, "SIGSTOP A: %s", strerror(errno));
    int stuck = 1;
    for (int i = 0; i < 10 && stuck; i++) {
      kvh_sleep_ms(20);
      kvh_stats(bs, &st);
      stuck = st.objects_writing > 0;
    }
    if (stuck)
      break;
    KVH_CHECK(kill(A.pid, SIGCONT) == 0, "SIGCONT A: %s", strerror(errno));
  }
  kvds_client_close(bs);
  /* The reads that completed before A stopped (their 'R' precedes the
   * next pull); none completes while it is stopped. */
  unsigned done = 2;
  for (;;) {
    int rb = kvh_recv_byte(p[0], 200);
    if (rb == -2)
      break;
    KVH_CHECK(rb == 'R', "reader: %s while A was stopped",
              rb == 'E' ? "a read failed" : "EOF");
    done++;
  }
  int a_port = A.port;
  uint64_t t_kill = kvh_now_ms();
  kvh_worker_kill9(&A);
  /* The one report left is the failure of the read that was streaming. */
  struct reader_report r;
  int rb = kvh_recv_byte(p[0], PULL_MS + SLACK_MS + 5000);
  KVH_CHECK(rb == 'E' && kvh_read_all(p[0], &r, sizeof r, 5000) == 0,
            "reader: %s after the kill",
            rb == 'R'  ? "a read succeeded"
            : rb == -1 ? "EOF"
            : rb == -2 ? "no report"
                       : "garbage");
  close(p[0]);
  kvh_wait_child_ok(rd, 10000, "reader");
  fprintf(stderr,
          "4. read %u after kill -9 of the owner: %s (%s) after %llu ms\n",
          r.iter, kvds_err_name(r.rc), r.which ? "whole call" : "item",
          (unsigned long long)r.ms);
  KVH_CHECK(!r.which, "the read failed as a whole: %s (B dropped the client?)",
            kvds_err_name(r.rc));
  KVH_CHECK(r.rc == KVDS_E_PEER || r.rc == KVDS_E_TIMEOUT ||
                r.rc == KVDS_E_NOTFOUND,
            "the read failed with %s, want PEER, TIMEOUT or NOTFOUND",
            kvds_err_name(r.rc));
  KVH_CHECK(r.ms <= PULL_MS + SLACK_MS, "the failed read took %llu ms",
            (unsigned long long)r.ms);
  KVH_CHECK(r.iter == done,
            "the failed read is read %u, but %u had succeeded before the kill "
            "(the streaming one must fail)",
            r.iter, done);

  /* No partial object on B: what it holds is whole, nothing is left being
   * written. */
  kvds_client *b = kvh_connect(B.addr);
  struct kvds_get_opts local = {0, NULL, KVDS_GET_LOCAL};
  for (unsigned i = 0; i < S4_N; i++) {
    char key[64];
    size_t kl = kname(key, sizeof key, "s4-huge", i);
    struct kvds_iov k = {key, kl};
    struct kvds_value v;
    int res = 0;
    KVH_OK(kvds_mget_ex(b, 1, &k, &local, &v, &res));
    KVH_CHECK(res == KVDS_E_NOTFOUND ||
                  (res == 0 && kvh_val_ok(key, kl, HUGE_SIZE, v.data, v.len)),
              "B's copy of %s: %s, %zu bytes%s", key, kvds_err_name(res), v.len,
              res == 0 ? " (wrong bytes)" : "");
    if (res == 0)
      KVH_OK(kvds_release(b, 1, &v));
  }
  uint64_t deadline = kvh_now_ms() + PULL_MS + SLACK_MS;
  for (;;) {
    struct kvds_stats st;
    kvh_stats(b, &st);
    if (st.objects_writing == 0)
      break;
    KVH_CHECK(kvh_now_ms() < deadline, "B: %llu objects still being written",
              (unsigned long long)st.objects_writing);
    kvh_sleep_ms(50);
  }
  kvds_client_close(b);

  /* B and C drop A within the TTL. */
  const char *ids_bc[] = {B.addr, C.addr};
  uint64_t spent = kvh_now_ms() - t_kill;
  int left = TTL_S * 1000 + SLACK_MS - (int)spent;
  kvh_await_views(bc_only, 2, ids_bc, 2, left > 0 ? left : 1, "kill -9 of A");

  /* A comes back on its port with a newer epoch (same id). */
  kvh_worker_start_port(&A, a_port, "1GiB", ext_etcd);
  await_abc("A restarted");
  uint64_t a_epoch2 = kvh_view_epoch(B.addr, A.addr);
  KVH_CHECK(a_epoch2 > a_epoch, "restarted A: epoch %llu, before %llu",
            (unsigned long long)a_epoch2, (unsigned long long)a_epoch);
  KVH_CHECK(kvh_view_epoch(C.addr, A.addr) == a_epoch2 &&
                kvh_view_epoch(A.addr, A.addr) == a_epoch2,
            "the views disagree on A's epoch");

  /* Fresh keys on the new A: found and read from C; LOCATE lists the new
   * incarnation, never the old one. */
  put_set(&A, "s4-fresh", 0, 200);
  await_present(&C, "s4-fresh", 0, 200, LEARN_MS, "announce (new A)");
  kvds_client *c = tcp_client(&C, 10000);
  check_set(c, C.tcp, "s4-fresh", 0, 200, NULL, "fresh keys from C");
  for (unsigned i = 0; i < 200; i += 10) {
    char key[64];
    kname(key, sizeof key, "s4-fresh", i);
    struct locs l = locate(c, key);
    KVH_CHECK(locs_has(&l, A.addr), "locate %s: A not listed", key);
    locs_match_view(&l, C.addr, key);
    free(l.v);
  }
  /* No shard, read as stored, points at the dead incarnation for keys it
   * held (kvds_locate would hide such an entry behind the view). */
  await_no_stale(abc, 3, "s1", 0, S1_N, 100, A.addr, a_epoch,
                 "A restarted: s1");
  await_no_stale(abc, 3, "s4-huge", 0, S4_N, 1, A.addr, a_epoch,
                 "A restarted: s4-huge");
  /* Keys of the old A live on as replicas (B, C): once the homes moved
   * to the new A know them again, they are listed without A, and the new A
   * reads them from there. */
  await_present(&A, "s1", 0, S1_N, LEARN_MS, "new A learns old keys");
  for (unsigned i = 0; i < S1_N; i += 100) {
    char key[64];
    kname(key, sizeof key, "s1", i);
    struct locs l = locate(c, key);
    if (l.n == 0 || locs_has(&l, A.addr)) {
      locs_print(key, &l);
      KVH_CHECK(0, "locate %s after A's restart: want B and C, not A", key);
    }
    locs_match_view(&l, C.addr, key);
    free(l.v);
  }
  /* The huge keys died with A, except copies B may hold: never a wrong
   * byte. */
  uint8_t *buf = malloc(HUGE_SIZE);
  KVH_CHECK(buf, "out of memory");
  for (unsigned i = 0; i < S4_N; i++) {
    char key[64];
    size_t kl = kname(key, sizeof key, "s4-huge", i), len = 0;
    int rc = kvds_get(c, key, kl, buf, HUGE_SIZE, &len, 0);
    KVH_CHECK(rc == KVDS_E_NOTFOUND ||
                  (rc == 0 && kvh_val_ok(key, kl, HUGE_SIZE, buf, len)),
              "%s from C after A died: %s", key, kvds_err_name(rc));
  }
  free(buf);
  kvds_client_close(c);
  kvds_client *a = tcp_client(&A, 10000);
  check_set(a, A.tcp, "s1", 0, 300, NULL, "old keys read on the new A");
  kvds_client_close(a);
  fprintf(stderr, "4. owner killed mid-pull, restarted: ok\n");
}

/* ---- 5. etcd away -------------------------------------------------------- */

static void test_etcd_outage(void) {
  put_set(&A, "s5-pre", 0, 300);
  await_present(&C, "s5-pre", 0, 300, LEARN_MS, "announce");
  kvh_etcd_stop(&etcd);
  /* Longer than the TTL: the views stay (nobody is dropped for lack of
   * news) and etcd is seen as down. */
  const char *ids[] = {A.addr, B.addr, C.addr};
  uint64_t until = kvh_now_ms() + TTL_S * 1000 + 1000;
  int saw_down = 0;
  while (kvh_now_ms() < until) {
    KVH_CHECK(kvh_view_is(A.addr, ids, 3) && kvh_view_is(B.addr, ids, 3) &&
                  kvh_view_is(C.addr, ids, 3),
              "a view changed while etcd was down");
    json_t *cl = kvh_cluster_of(C.addr);
    saw_down |= cl && strcmp(etcd_state(cl), "down") == 0;
    json_decref(cl);
    kvh_sleep_ms(200);
  }
  KVH_CHECK(saw_down, "etcd state never reported down");
  /* Announced before: read across workers. */
  kvds_client *c = tcp_client(&C, 10000);
  check_set(c, C.tcp, "s5-pre", 0, 300, NULL, "etcd down: old keys from C");
  /* New keys: the data path does not need etcd. */
  put_set(&B, "s5-during", 0, 100);
  kvds_client *a = tcp_client(&A, 10000);
  struct kvds_get_opts wait = {LEARN_MS, NULL, 0};
  check_set(a, A.tcp, "s5-during", 0, 100, &wait, "etcd down: new keys on A");
  kvh_etcd_restart(&etcd);
  uint64_t deadline = kvh_now_ms() + JOIN_MS;
  for (;;) {
    int up = 0;
    struct kvh_worker *all[] = {&A, &B, &C};
    for (int i = 0; i < 3; i++) {
      json_t *cl = kvh_cluster_of(all[i]->addr);
      up += cl && strcmp(etcd_state(cl), "up") == 0;
      json_decref(cl);
    }
    if (up == 3)
      break;
    KVH_CHECK(kvh_now_ms() < deadline, "etcd back: not up on every worker");
    kvh_sleep_ms(50);
  }
  await_abc("etcd back");
  put_set(&C, "s5-post", 0, 300);
  await_present(&A, "s5-post", 0, 300, LEARN_MS, "announce after etcd");
  check_set(a, A.tcp, "s5-post", 0, 300, NULL, "etcd back: keys from A");
  kvds_client *b = tcp_client(&B, 10000);
  check_set(b, B.tcp, "s5-post", 0, 300, &wait, "etcd back: keys from B");
  kvds_client_close(b);
  kvds_client_close(a);
  kvds_client_close(c);
  fprintf(stderr, "5. etcd outage: ok\n");
}

/* ---- 6. a home restarts: its directory shard is rebuilt -------------------
 */

#define S6_N 1000

static void test_home_restart(void) {
  put_set(&A, "s6", 0, S6_N);
  await_present(&B, "s6", 0, S6_N, LEARN_MS, "announce");
  uint64_t c_epoch = kvh_view_epoch(A.addr, C.addr);
  int c_port = C.port;
  /* C holds replicas of s1 (test 1): the shards of A and B list it. */
  struct kvh_worker *abc[] = {&A, &B, &C}, *ab[] = {&A, &B};
  char skey[64];
  const char *swhere;
  KVH_CHECK(shards_listing(ab, 2, "s1", 0, S1_N, 100, C.addr, c_epoch, skey,
                           sizeof skey, &swhere) > 0,
            "no shard of A or B lists C@%llu for s1 before its restart",
            (unsigned long long)c_epoch);
  kvh_worker_kill9(&C);
  kvh_worker_start_port(&C, c_port, "1GiB", ext_etcd);
  /* Every view has the new C (the old one may never have been dropped:
   * the new record replaces it). */
  uint64_t deadline = kvh_now_ms() + JOIN_MS + TTL_S * 1000;
  for (;;) {
    uint64_t ea = kvh_view_epoch(A.addr, C.addr),
             eb = kvh_view_epoch(B.addr, C.addr),
             ec = kvh_view_epoch(C.addr, C.addr);
    if (ea > c_epoch && ea == eb && eb == ec)
      break;
    if (kvh_now_ms() >= deadline) {
      kvh_dump_view(A.addr);
      kvh_dump_view(B.addr);
      kvh_dump_view(C.addr);
      KVH_CHECK(0, "the new C is not in every view");
    }
    kvh_sleep_ms(50);
  }
  await_abc("C restarted");
  /* About a third of the keys have the new C as their home: all are found
   * again only if A re-announced them to it. B holds none of them (EXISTS
   * pulls nothing), so every read below goes through the directory. */
  uint64_t t0 = kvh_now_ms();
  await_present(&B, "s6", 0, S6_N, LEARN_MS, "directory rebuilt on new C");
  fprintf(stderr, "6. directory complete %llu ms after the new C joined\n",
          (unsigned long long)(kvh_now_ms() - t0));
  await_no_stale(abc, 3, "s1", 0, S1_N, 100, C.addr, c_epoch,
                 "C restarted: its s1 replicas");
  kvds_client *b = tcp_client(&B, 10000);
  check_set(b, B.tcp, "s6", 0, S6_N, NULL, "s6 from B after C restarted");
  kvds_client_close(b);
  /* The new C reads them too (its own shard and the others'). */
  kvds_client *c = tcp_client(&C, 10000);
  check_set(c, C.tcp, "s6", 0, 200, NULL, "s6 from the new C");
  kvds_client_close(c);
  fprintf(stderr, "6. home restarted: ok\n");
}

/* ---- 8. hostile bytes and ANNOUNCE frames -------------------------------- */

/* Sends f to w on a fresh connection and judges the answer: a reply with
 * status want and/or a close (want_ok = 0: a protocol error), or a reply
 * with status want on a connection that still answers a PING
 * (want_ok = 1). */
static void announce_case(const struct kvh_worker *w, struct kvh_frame *f,
                          int want_ok, int want, const char *what) {
  int fd = kvh_raw_tcp(w->port);
  KVH_CHECK(kvh_write_all(fd, f->b, f->len) == 0, "%s: send", what);
  struct kvds_proto_hdr h;
  int r = kvh_read_reply(fd, &h, NULL, 5000);
  if (want_ok) {
    KVH_CHECK(r == 0, "%s: %s closed the connection", what, w->addr);
    KVH_CHECK(h.opcode == KVDS_OP_ANNOUNCE && h.req_id == f->h.req_id &&
                  h.status == want,
              "%s: reply op %u req %llu status %s, want %s", what, h.opcode,
              (unsigned long long)h.req_id, kvds_err_name(h.status),
              kvds_err_name(want));
    struct kvh_frame p;
    kvh_frame_init(&p, KVDS_OP_PING, 4242);
    kvh_frame_seal(&p);
    KVH_CHECK(kvh_write_all(fd, p.b, p.len) == 0, "%s: ping", what);
    KVH_CHECK(kvh_read_reply(fd, &h, NULL, 5000) == 0 && h.req_id == 4242 &&
                  h.status == 0,
              "%s: connection unusable afterwards", what);
  } else if (r == 0) {
    KVH_CHECK(h.status == want, "%s: %s answered %s, want %s", what, w->addr,
              kvds_err_name(h.status), kvds_err_name(want));
    /* after an error reply the connection is closed or still answers */
  } else {
    size_t len;
    uint8_t scratch[64];
    KVH_CHECK(kvh_read_to_eof(fd, scratch, sizeof scratch, &len, 5000) == 0,
              "%s: no close", what);
  }
  close(fd);
}

static void test_garbage(void) {
  /* Random bytes on the port a peer would use. */
  uint64_t seed = 0x5eed0c1u ^ (uint64_t)getpid();
  for (int i = 0; i < 3; i++) {
    uint8_t junk[4096];
    for (size_t k = 0; k < sizeof junk; k += 8) {
      uint64_t v = kvh_rand(&seed);
      memcpy(junk + k, &v, 8);
    }
    junk[0] = 'X'; /* never the magic */
    int fd = kvh_raw_tcp(B.port);
    (void)kvh_write_all(fd, junk, sizeof junk); /* may be cut short */
    size_t len;
    uint8_t scratch[256];
    KVH_CHECK(kvh_read_to_eof(fd, scratch, sizeof scratch, &len, 5000) == 0,
              "random bytes: B did not close the connection");
    close(fd);
  }

  /* From here on B counts only the ANNOUNCE garbage. */
  kvds_client *b0 = kvh_connect(B.addr);
  struct kvds_stats st0;
  kvh_stats(b0, &st0);
  kvds_client_close(b0);

  /* ANNOUNCE frames with garbage, to every worker. */
  struct kvh_worker *abc[] = {&A, &B, &C};
  static struct kvh_frame f;
  for (int w = 0; w < 3; w++) {
    struct kvh_worker *wk = abc[w];
    /* no items */
    kvh_frame_init(&f, KVDS_OP_ANNOUNCE, 100);
    kvh_frame_seal(&f);
    announce_case(wk, &f, 0, KVDS_E_PROTO, "ANNOUNCE without items");
    /* an empty owner id */
    kvh_frame_init(&f, KVDS_OP_ANNOUNCE, 101);
    kvh_frame_item(&f, 7, NULL, 0);
    kvh_frame_item(&f, 1, "k", 1);
    kvh_frame_seal(&f);
    announce_case(wk, &f, 0, KVDS_E_PROTO, "ANNOUNCE, empty owner");
    /* an owner id of 300 bytes */
    char longid[300];
    memset(longid, 'i', sizeof longid);
    kvh_frame_init(&f, KVDS_OP_ANNOUNCE, 102);
    kvh_frame_item(&f, 7, longid, sizeof longid);
    kvh_frame_item(&f, 1, "k", 1);
    kvh_frame_seal(&f);
    announce_case(wk, &f, 0, KVDS_E_PROTO, "ANNOUNCE, 300-byte owner");
    /* a 2000-byte key */
    static char bigkey[2000];
    memset(bigkey, 'k', sizeof bigkey);
    kvh_frame_init(&f, KVDS_OP_ANNOUNCE, 103);
    kvh_frame_item(&f, 7, "127.0.0.1:1", 11);
    kvh_frame_item(&f, 1, bigkey, sizeof bigkey);
    kvh_frame_seal(&f);
    announce_case(wk, &f, 0, KVDS_E_PROTO, "ANNOUNCE, 2000-byte key");
    /* count larger than the items */
    kvh_frame_init(&f, KVDS_OP_ANNOUNCE, 104);
    kvh_frame_item(&f, 7, "127.0.0.1:1", 11);
    f.h.count = 9;
    kvh_frame_seal(&f);
    announce_case(wk, &f, 0, KVDS_E_PROTO, "ANNOUNCE, count > items");
    /* a well-formed frame: a foreign owner, random keys, random a */
    kvh_frame_init(&f, KVDS_OP_ANNOUNCE, 105);
    kvh_frame_item(&f, kvh_rand(&seed), "127.0.0.1:1", 11);
    for (int k = 0; k < 100; k++) {
      uint8_t key[64];
      size_t kl = 1 + kvh_rand(&seed) % sizeof key;
      for (size_t j = 0; j < kl; j++)
        key[j] = (uint8_t)kvh_rand(&seed);
      kvh_frame_item(&f, kvh_rand(&seed) & 1, key, kl);
    }
    kvh_frame_seal(&f);
    announce_case(wk, &f, 1, KVDS_E_PERM, "ANNOUNCE, random keys");
    /* an empty key among them: refused as well (the connection is not a
     * peer's), the connection stays usable */
    kvh_frame_init(&f, KVDS_OP_ANNOUNCE, 106);
    kvh_frame_item(&f, 5, "127.0.0.1:1", 11);
    kvh_frame_item(&f, 1, NULL, 0);
    kvh_frame_seal(&f);
    announce_case(wk, &f, 1, KVDS_E_PERM, "ANNOUNCE, empty key");
    /* A lie: C (its real epoch) holds s8/0..19, which only A will have.
     * Refused: this connection never named itself C (test_heal covers
     * HELLOs naming another member, a non-member, a wrong epoch). */
    kvh_frame_init(&f, KVDS_OP_ANNOUNCE, 107);
    kvh_frame_item(&f, kvh_view_epoch(wk->addr, C.addr), C.addr,
                   strlen(C.addr));
    for (unsigned k = 0; k < 20; k++) {
      char key[64];
      size_t kl = kname(key, sizeof key, "s8", k);
      kvh_frame_item(&f, 1, key, kl);
    }
    kvh_frame_seal(&f);
    announce_case(wk, &f, 1, KVDS_E_PERM, "ANNOUNCE, a false location");
  }
  /* Every worker is still up, answers and counted the bad frames. */
  for (int w = 0; w < 3; w++) {
    KVH_CHECK(waitpid(abc[w]->pid, NULL, WNOHANG) == 0, "worker %s died",
              abc[w]->addr);
    kvds_client *c = kvh_connect(abc[w]->addr);
    KVH_OK(kvds_ping(c));
    kvds_client_close(c);
  }
  kvds_client *b = tcp_client(&B, 10000);
  struct kvds_stats st1;
  kvh_stats(b, &st1);
  KVH_CHECK(st1.protocol_errors > st0.protocol_errors,
            "protocol_errors on B did not grow (%llu)",
            (unsigned long long)st1.protocol_errors);
  /* The lie was not stored: nothing lists s8 before A put it, and then
   * A alone (through B: kvds_locate asks the home). */
  for (unsigned k = 0; k < 20; k++) {
    char key[64];
    kname(key, sizeof key, "s8", k);
    struct locs l = locate(b, key);
    if (l.n != 0) {
      locs_print(key, &l);
      KVH_CHECK(0, "locate %s: a forged location was stored", key);
    }
    free(l.v);
  }
  put_set(&A, "s8", 0, 20);
  for (unsigned k = 0; k < 20; k++) {
    char key[64];
    kname(key, sizeof key, "s8", k);
    uint64_t deadline = kvh_now_ms() + LEARN_MS;
    for (;;) {
      struct locs l = locate(b, key);
      int ok = l.n == 1 && strcmp(l.v[0].id, A.addr) == 0;
      if (!ok && kvh_now_ms() >= deadline) {
        locs_print(key, &l);
        KVH_CHECK(0, "locate %s: want A alone", key);
      }
      free(l.v);
      if (ok)
        break;
      kvh_sleep_ms(50);
    }
  }
  /* No wait: one pass reads them from A. */
  check_set(b, B.tcp, "s8", 0, 20, NULL, "reads after a false location");
  kvds_client_close(b);
  fprintf(stderr, "8. garbage and ANNOUNCE frames: ok\n");
}

/* ---- 7. static --peers -------------------------------------------------- */

#define S7H_N 30

static void test_static(void) {
  int port[3];
  char addr[3][64];
  for (int i = 0; i < 3; i++) {
    port[i] = kvh_free_port();
    snprintf(addr[i], sizeof addr[i], "127.0.0.1:%d", port[i]);
  }
  struct kvh_worker w[3];
  char peers[3][160];
  const char *ext[3][12];
  for (int i = 0; i < 3; i++) {
    snprintf(peers[i], sizeof peers[i], "%s,%s", addr[(i + 1) % 3],
             addr[(i + 2) % 3]);
    const char *e[] = {"--peers",        peers[i],      "--pull-timeout-ms",
                       "3000",           "--log-level", "debug",
                       "--pull-threads", "2",           NULL};
    memcpy(ext[i], e, sizeof e);
  }
  for (int i = 0; i < 3; i++)
    kvh_worker_start_port(&w[i], port[i], "256MiB", ext[i]);
  put_set(&w[0], "s7", 0, 500);
  put_set(&w[1], "s7-b", 0, 100);
  await_present(&w[1], "s7", 0, 500, LEARN_MS, "static: announce");
  kvds_client *c1 = tcp_client(&w[1], 10000);
  check_set(c1, w[1].tcp, "s7", 0, 500, NULL, "static: from the 2nd worker");
  kvds_client *c2 = kvh_connect(w[2].addr);
  check_set(c2, w[2].addr, "s7", 0, 500, NULL, "static: from the 3rd worker");
  struct kvds_get_opts wait = {LEARN_MS, NULL, 0};
  kvds_client *c0 = tcp_client(&w[0], 10000);
  check_set(c0, w[0].tcp, "s7-b", 0, 100, &wait, "static: from the 1st");
  char key[64];
  kname(key, sizeof key, "s7", 3);
  uint64_t deadline = kvh_now_ms() + LEARN_MS;
  for (;;) {
    struct locs l = locate(c2, key);
    int ok = l.n == 3 && strcmp(l.v[0].id, addr[0]) == 0 &&
             locs_has(&l, addr[1]) && locs_has(&l, addr[2]);
    if (!ok && kvh_now_ms() >= deadline) {
      locs_print(key, &l);
      KVH_CHECK(0, "static: locate %s: want all three, the 1st first", key);
    }
    free(l.v);
    if (ok)
      break;
    kvh_sleep_ms(50);
  }

  /* The hint is used: with the 3rd worker stopped (a static peer never
   * leaves the view, so it stays the home of its keys), the 2nd cannot
   * find the keys homed there through the directory, but finds each of
   * them at once with a hint naming the 1st, which holds them. */
  put_set(&w[0], "s7-h", 0, S7H_N);
  await_present(&w[1], "s7-h", 0, S7H_N, LEARN_MS, "static: announce s7-h");
  /* which keys the 3rd worker is home of (it holds none of them itself) */
  struct keys hk = keys_new("s7-h", 0, S7H_N);
  int home2[S7H_N];
  for (size_t i = 0; i < S7H_N; i++)
    home2[i] = shard_of(&w[2], hk.name[i]).n > 0;
  KVH_CHECK(kill(w[2].pid, SIGSTOP) == 0, "SIGSTOP: %s", strerror(errno));
  struct kvds_value hv[S7H_N];
  int hres[S7H_N];
  kvds_client_set_timeout(c1, PULL_MS + 3 * SLACK_MS);
  uint64_t t0 = kvh_now_ms();
  KVH_OK(kvds_mget(c1, S7H_N, hk.iov, 0, hv, hres));
  uint64_t dt = kvh_now_ms() - t0;
  struct kvds_iov homed_w2[S7H_N];
  size_t nfail = 0;
  for (size_t i = 0; i < S7H_N; i++) {
    /* exactly the keys homed on the stopped worker fail: a stalled home
     * costs its own keys, not the others of the batch */
    KVH_CHECK((hres[i] != 0) == home2[i],
              "static, 3rd worker stopped: %s (homed %s the 3rd) -> %s",
              hk.name[i], home2[i] ? "on" : "off", kvds_err_name(hres[i]));
    if (hres[i] == 0) {
      KVH_CHECK(kvh_val_ok(hk.iov[i].base, hk.iov[i].len,
                           vsize(hk.iov[i].base, hk.iov[i].len), hv[i].data,
                           hv[i].len),
                "static: %s: wrong value", hk.name[i]);
      continue;
    }
    KVH_CHECK(hres[i] == KVDS_E_PEER || hres[i] == KVDS_E_TIMEOUT,
              "static, 3rd worker stopped: %s failed with %s, want PEER or "
              "TIMEOUT",
              hk.name[i], kvds_err_name(hres[i]));
    homed_w2[nfail++] = hk.iov[i];
  }
  KVH_OK(kvds_release(c1, S7H_N, hv));
  fprintf(stderr,
          "7. 3rd worker stopped: %zu of %d keys not found without a hint "
          "(%llu ms)\n",
          nfail, S7H_N, (unsigned long long)dt);
  KVH_CHECK(nfail > 0, "static: no read failed with the 3rd worker (home of "
                       "about a third of the keys) stopped");
  KVH_CHECK(dt <= PULL_MS + SLACK_MS,
            "static: the failing reads took %llu ms (pull deadline %d ms)",
            (unsigned long long)dt, PULL_MS);
  struct kvds_get_opts hint0 = {0, addr[0], 0};
  KVH_OK(kvds_mget_ex(c1, nfail, homed_w2, &hint0, hv, hres));
  for (size_t i = 0; i < nfail; i++)
    KVH_CHECK(
        hres[i] == 0 && kvh_val_ok(homed_w2[i].base, homed_w2[i].len,
                                   vsize(homed_w2[i].base, homed_w2[i].len),
                                   hv[i].data, hv[i].len),
        "static: %.*s with hint = the 1st worker: %s", (int)homed_w2[i].len,
        (const char *)homed_w2[i].base, kvds_err_name(hres[i]));
  KVH_OK(kvds_release(c1, nfail, hv));
  keys_free(&hk);
  KVH_CHECK(kill(w[2].pid, SIGCONT) == 0, "SIGCONT: %s", strerror(errno));

  kvds_client_close(c0);
  kvds_client_close(c1);
  kvds_client_close(c2);
  for (int i = 2; i >= 0; i--)
    kvh_worker_stop(&w[i]);
  fprintf(stderr, "7. static --peers: ok\n");
}

/* ---- 10. evicting a replica keeps the others ------------------------------
 */

#define S10_N 16 /* x ~4 MiB: twice the reader's pool */

/* A static pair, the reader's pool small: reading many values on it evicts
 * replicas it pulled earlier; the directory then lists only the original
 * for such a key, and reading it again pulls it once more. */
static void test_evict_replica(void) {
  int port[2];
  char addr[2][64], peers[2][64];
  for (int i = 0; i < 2; i++) {
    port[i] = kvh_free_port();
    snprintf(addr[i], sizeof addr[i], "127.0.0.1:%d", port[i]);
  }
  struct kvh_worker w[2];
  for (int i = 0; i < 2; i++) {
    snprintf(peers[i], sizeof peers[i], "%s", addr[1 - i]);
    const char *e[] = {"--peers", peers[i],      "--pull-timeout-ms",
                       "3000",    "--log-level", "debug",
                       NULL};
    kvh_worker_start_port(&w[i], port[i], i ? "32MiB" : "256MiB", e);
  }
  put_set(&w[0], "s10-big", 0, S10_N);
  await_present(&w[1], "s10-big", 0, S10_N, LEARN_MS, "evict: announce");
  kvds_client *c1 = tcp_client(&w[1], 20000);
  kvds_client *c0 = tcp_client(&w[0], 20000);
  check_set_get(c1, w[1].tcp, "s10-big", 0, 1, NULL, "evict: first read");
  char key[64];
  size_t kl = kname(key, sizeof key, "s10-big", 0);
  uint64_t deadline = kvh_now_ms() + LEARN_MS;
  for (;;) { /* the replica is announced */
    struct locs l = locate(c0, key);
    int ok = l.n == 2 && locs_has(&l, addr[0]) && locs_has(&l, addr[1]);
    if (!ok && kvh_now_ms() >= deadline) {
      locs_print(key, &l);
      KVH_CHECK(0, "evict: locate %s: want both workers", key);
    }
    free(l.v);
    if (ok)
      break;
    kvh_sleep_ms(50);
  }
  check_set_get(c1, w[1].tcp, "s10-big", 1, S10_N, NULL, "evict: more reads");
  /* The reader evicted replicas: the first one it no longer holds. */
  uint8_t *buf = malloc(BIG_SIZE);
  KVH_CHECK(buf, "out of memory");
  struct kvds_get_opts local = {0, NULL, KVDS_GET_LOCAL};
  unsigned gone = S10_N;
  for (unsigned i = 0; i < S10_N && gone == S10_N; i++) {
    size_t len = 0;
    kl = kname(key, sizeof key, "s10-big", i);
    int rc = kvds_get_ex(c1, key, kl, buf, BIG_SIZE, &len, &local);
    KVH_CHECK(rc == 0 || rc == KVDS_E_NOTFOUND, "evict: local %s: %s", key,
              kvds_err_name(rc));
    if (rc == KVDS_E_NOTFOUND)
      gone = i;
  }
  KVH_CHECK(gone < S10_N,
            "evict: the reader (32 MiB) still holds all %d values of ~4 MiB",
            S10_N);
  kl = kname(key, sizeof key, "s10-big", gone);
  /* Its location goes; the original stays. */
  deadline = kvh_now_ms() + LEARN_MS;
  for (;;) {
    struct locs l = locate(c0, key);
    int ok = l.n == 1 && strcmp(l.v[0].id, addr[0]) == 0;
    if (!ok && kvh_now_ms() >= deadline) {
      locs_print(key, &l);
      KVH_CHECK(0, "evict: locate %s: want the original alone", key);
    }
    free(l.v);
    if (ok)
      break;
    kvh_sleep_ms(50);
  }
  check_set_get(c1, w[1].tcp, "s10-big", gone, gone + 1, NULL,
                "evict: read again after the eviction");
  free(buf);
  kvds_client_close(c0);
  kvds_client_close(c1);
  kvh_worker_stop(&w[1]);
  kvh_worker_stop(&w[0]);
  fprintf(stderr,
          "10. evicted replica %s: only the original listed, read "
          "again: ok\n",
          key);
}

/* ---- 11. a wrong token between workers ------------------------------------
 */

static void write_token(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  KVH_CHECK(fd >= 0 && kvh_write_all(fd, text, strlen(text)) == 0,
            "token %s: %s", path, strerror(errno));
  close(fd);
}

/* A static trio sharing a token; two intruders name the trio in --peers,
 * one with another token, one with none. The intruders' reads of the
 * trio's keys fail before the deadline, and they never got a byte. */
static void test_tokens(void) {
  char tok[400], bad[400];
  snprintf(tok, sizeof tok, "%s/trio-token", kvh_run_dir());
  snprintf(bad, sizeof bad, "%s/other-token", kvh_run_dir());
  write_token(tok, "0123456789abcdef0123456789abcdef\n");
  write_token(bad, "fedcba9876543210fedcba9876543210\n");
  int port[5];
  char addr[5][64];
  for (int i = 0; i < 5; i++) {
    port[i] = kvh_free_port();
    snprintf(addr[i], sizeof addr[i], "127.0.0.1:%d", port[i]);
  }
  char peers[5][200];
  struct kvh_worker w[5]; /* 0..2 the trio, 3 other token, 4 no token */
  for (int i = 0; i < 5; i++) {
    if (i < 3)
      snprintf(peers[i], sizeof peers[i], "%s,%s", addr[(i + 1) % 3],
               addr[(i + 2) % 3]);
    else
      snprintf(peers[i], sizeof peers[i], "%s,%s,%s", addr[0], addr[1],
               addr[2]);
    const char *e[] = {
        "--peers",     peers[i], "--pull-timeout-ms", "3000",
        "--log-level", "debug",  "--auth-token-file", i == 3 ? bad : tok,
        NULL};
    if (i == 4)
      e[6] = NULL; /* no token */
    if (i < 4)
      setenv("KVDS_AUTH_TOKEN_FILE", i == 3 ? bad : tok, 1);
    else
      unsetenv("KVDS_AUTH_TOKEN_FILE");
    kvh_worker_start_port(&w[i], port[i], "64MiB", e);
  }
  unsetenv("KVDS_AUTH_TOKEN_FILE");
  /* Through the Unix sockets: no token needed. */
  kvds_client *t0 = kvh_connect(w[0].unix_addr);
  put_set_c(t0, w[0].unix_addr, "s11", 0, 40);
  kvds_client *t1 = kvh_connect(w[1].unix_addr);
  await_present_c(t1, w[1].unix_addr, "s11", 0, 40, LEARN_MS,
                  "tokens: announce in the trio");
  check_set(t1, w[1].unix_addr, "s11", 0, 40, NULL, "tokens: trio read");
  for (int x = 3; x < 5; x++) {
    kvds_client *c = kvh_connect(w[x].unix_addr);
    kvds_client_set_timeout(c, PULL_MS + 3 * SLACK_MS);
    struct keys k = keys_new("s11", 0, 40);
    struct kvds_value v[40];
    int res[40];
    uint64_t t_0 = kvh_now_ms();
    KVH_OK(kvds_mget(c, 40, k.iov, 0, v, res));
    uint64_t dt = kvh_now_ms() - t_0;
    for (int i = 0; i < 40; i++)
      KVH_CHECK(res[i] == KVDS_E_PEER || res[i] == KVDS_E_NOTFOUND,
                "tokens: %s read %s on the intruder: %s",
                x == 3 ? "other" : "no", k.name[i], kvds_err_name(res[i]));
    KVH_CHECK(dt <= PULL_MS + SLACK_MS,
              "tokens: the intruder's reads took %llu ms",
              (unsigned long long)dt);
    struct kvds_stats st;
    kvh_stats(c, &st);
    KVH_CHECK(st.objects == 0, "tokens: the intruder holds %llu objects",
              (unsigned long long)st.objects);
    json_t *cl = kvh_cluster_of(w[x].unix_addr);
    KVH_CHECK(cl, "tokens: no CLUSTER object from the intruder");
    for (int t = 0; t < 3; t++) {
      json_t *m = kvh_member(cl, addr[t]);
      KVH_CHECK(m, "tokens: %s not in the intruder's view", addr[t]);
      KVH_CHECK(
          json_integer_value(json_object_get(m, "bytes_in")) == 0 &&
              json_integer_value(json_object_get(m, "connections")) == 0,
          "tokens: the intruder got %lld bytes from %s over %lld "
          "connection(s)",
          (long long)json_integer_value(json_object_get(m, "bytes_in")),
          addr[t],
          (long long)json_integer_value(json_object_get(m, "connections")));
    }
    json_decref(cl);
    keys_free(&k);
    kvds_client_close(c);
  }
  /* The trio served nothing to anyone but itself: its peers are only
   * each other, and it still reads its keys. */
  for (int t = 0; t < 3; t++) {
    json_t *cl = kvh_cluster_of(w[t].unix_addr);
    KVH_CHECK(cl && json_array_size(json_object_get(cl, "members")) == 3,
              "tokens: the trio's view changed");
    json_decref(cl);
  }
  kvds_client *t2 = kvh_connect(w[2].unix_addr);
  check_set(t2, w[2].unix_addr, "s11", 0, 40, NULL, "tokens: trio read");
  kvds_client_close(t2);
  kvds_client_close(t1);
  kvds_client_close(t0);
  for (int i = 4; i >= 0; i--)
    kvh_worker_stop(&w[i]);
  fprintf(stderr, "11. wrong or missing token between workers: ok\n");
}

/* ---- 9. network partition between namespaces ------------------------------
 */

#define NS_PORT_1 7411
#define NS_PORT_2 7412
#define NS_PULL_MS 1500

static struct {
  char ns[2][32], veth[2][16], ip[2][32], addr[2][64], tcp[2][80];
  char token[400], log[2][400];
  pid_t w[2];
  int made;        /* namespaces created */
  int sentinel_fd; /* ns_sentinel's pipe */
} N;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
  char cmd[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  int st = system(cmd);
  return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void ns_delete(void) {
  if (!N.made)
    return;
  sh("ip netns del %s >/dev/null 2>&1", N.ns[0]);
  sh("ip netns del %s >/dev/null 2>&1", N.ns[1]);
  N.made = 0;
}

static void ns_dump_logs(void) {
  for (int i = 0; i < 2; i++) {
    FILE *f = fopen(N.log[i], "r");
    if (!f)
      continue;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, sz > 6000 ? sz - 6000 : 0, SEEK_SET);
    fprintf(stderr, "---- namespace worker %s log (tail) ----\n", N.addr[i]);
    char buf[1024];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0)
      fwrite(buf, 1, r, stderr);
    fclose(f);
  }
}

#define NS_CHECK(cond, ...)                                                    \
  do {                                                                         \
    if (!(cond)) {                                                             \
      ns_dump_logs();                                                          \
      KVH_CHECK(0, __VA_ARGS__);                                               \
    }                                                                          \
  } while (0)

/* A process that deletes the namespaces once this test process is gone,
 * however it ends (kvh_fail leaves with _exit, skipping atexit). */
static pid_t ns_sentinel(void) {
  int p[2];
  KVH_CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
  fflush(NULL);
  pid_t pid = fork();
  KVH_CHECK(pid >= 0, "fork: %s", strerror(errno));
  if (pid == 0) {
    close(p[1]);
    int dn = open("/dev/null", O_RDWR);
    if (dn >= 0) {
      dup2(dn, STDOUT_FILENO);
      dup2(dn, STDERR_FILENO);
    }
    setsid();
    for (;;) {
      char c;
      ssize_t r = read(p[0], &c, 1);
      if (r == 0 || (r < 0 && errno != EINTR))
        break;
    }
    execlp("sh", "sh", "-c",
           "ip netns del \"$0\"; ip netns del \"$1\"; ip link del \"$2\"",
           N.ns[0], N.ns[1], N.veth[0], (char *)NULL);
    _exit(0);
  }
  close(p[0]);
  N.sentinel_fd = p[1]; /* open (close-on-exec) while the test runs */
  return pid;
}

/* Sets up the namespaces and the veth pair, after starting the sentinel
 * that removes them (*sentinel); 0, or -1 with the reason in why. */
static int ns_setup(char *why, size_t cap, pid_t *sentinel) {
  pid_t me = getpid();
  snprintf(N.ns[0], sizeof N.ns[0], "kvdsa%d", (int)me);
  snprintf(N.ns[1], sizeof N.ns[1], "kvdsb%d", (int)me);
  snprintf(N.veth[0], sizeof N.veth[0], "kva%d", (int)me % 10000000);
  snprintf(N.veth[1], sizeof N.veth[1], "kvb%d", (int)me % 10000000);
  unsigned net = (unsigned)me % 250;
  for (int i = 0; i < 2; i++) {
    snprintf(N.ip[i], sizeof N.ip[i], "10.213.%u.%d", net, i + 1);
    snprintf(N.addr[i], sizeof N.addr[i], "%s:%d", N.ip[i],
             i ? NS_PORT_2 : NS_PORT_1);
    snprintf(N.tcp[i], sizeof N.tcp[i], "tcp://%s", N.addr[i]);
  }
  *sentinel = ns_sentinel();
  if (sh("ip netns add %s >/dev/null 2>&1", N.ns[0])) {
    snprintf(why, cap, "ip netns add failed");
    return -1;
  }
  N.made = 1;
  if (sh("ip netns add %s >/dev/null 2>&1", N.ns[1]) ||
      sh("ip link add %s type veth peer name %s >/dev/null 2>&1", N.veth[0],
         N.veth[1])) {
    snprintf(why, cap, "ip netns add / ip link add type veth failed");
    ns_delete();
    return -1;
  }
  for (int i = 0; i < 2; i++)
    if (sh("ip link set %s netns %s", N.veth[i], N.ns[i]) ||
        sh("ip -n %s addr add %s/24 dev %s", N.ns[i], N.ip[i], N.veth[i]) ||
        sh("ip -n %s link set %s up", N.ns[i], N.veth[i]) ||
        sh("ip -n %s link set lo up", N.ns[i])) {
      snprintf(why, cap, "configuring the veth pair failed");
      sh("ip link del %s >/dev/null 2>&1", N.veth[0]);
      ns_delete();
      return -1;
    }
  return 0;
}

/* Runs fn(arg) in a child inside namespace i (setns) with the token; fails
 * the test unless it exits 0 within timeout_ms. */
static void ns_run(int i, void (*fn)(const void *), const void *arg,
                   int timeout_ms, const char *what) {
  pid_t pid = kvh_fork();
  if (pid == 0) {
    char path[128];
    snprintf(path, sizeof path, "/run/netns/%s", N.ns[i]);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    KVH_CHECK(fd >= 0 && setns(fd, CLONE_NEWNET) == 0, "setns %s: %s", path,
              strerror(errno));
    close(fd);
    setenv("KVDS_AUTH_TOKEN_FILE", N.token, 1);
    fn(arg);
    _exit(0);
  }
  int st = kvh_wait_pid(pid, timeout_ms);
  NS_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
           "%s (in namespace %s) failed (status 0x%x)", what, N.ns[i], st);
}

struct ns_job {
  int w; /* worker index */
  const char *set;
  unsigned lo, hi;
};

static kvds_client *ns_client(int w) {
  kvds_client *c = NULL;
  int rc = kvds_client_connect_ex(N.tcp[w], 10000, KVDS_CONNECT_TCP_ONLY, &c);
  KVH_CHECK(rc == 0, "connect %s: %s", N.tcp[w], kvds_err_name(rc));
  return c;
}

static void ns_ready(const void *arg) {
  const struct ns_job *j = arg;
  uint64_t deadline = kvh_now_ms() + 20000;
  for (;;) {
    kvds_client *c = NULL;
    int rc =
        kvds_client_connect_ex(N.tcp[j->w], 1000, KVDS_CONNECT_TCP_ONLY, &c);
    if (rc == 0) {
      rc = kvds_ping(c);
      kvds_client_close(c);
      if (rc == 0)
        return;
    }
    KVH_CHECK(kvh_now_ms() < deadline, "worker %s not answering: %s",
              N.addr[j->w], kvds_err_name(rc));
    kvh_sleep_ms(50);
  }
}

static void ns_put(const void *arg) {
  const struct ns_job *j = arg;
  kvds_client *c = ns_client(j->w);
  put_set_c(c, N.addr[j->w], j->set, j->lo, j->hi);
  kvds_client_close(c);
}

/* Waits until the cluster knows the keys (EXISTS through worker w). */
static void ns_known(const void *arg) {
  const struct ns_job *j = arg;
  kvds_client *c = ns_client(j->w);
  await_present_c(c, N.addr[j->w], j->set, j->lo, j->hi, LEARN_MS,
                  "namespace announce");
  kvds_client_close(c);
}

static void ns_read(const void *arg) {
  const struct ns_job *j = arg;
  kvds_client *c = ns_client(j->w);
  check_set(c, N.tcp[j->w], j->set, j->lo, j->hi, NULL, "namespace read");
  kvds_client_close(c);
}

/* Reads must work again within a bound (connections are re-established
 * after the partition). */
static void ns_read_eventually(const void *arg) {
  const struct ns_job *j = arg;
  kvds_client *c = ns_client(j->w);
  struct keys k = keys_new(j->set, j->lo, j->hi);
  uint64_t deadline = kvh_now_ms() + 20000;
  uint8_t *buf = malloc(SMALL_MAX);
  KVH_CHECK(buf, "out of memory");
  for (size_t i = 0; i < k.n;) {
    size_t len = 0;
    int rc = kvds_get(c, k.name[i], k.iov[i].len, buf, SMALL_MAX, &len, 0);
    if (rc == 0) {
      KVH_CHECK(kvh_val_ok(k.name[i], k.iov[i].len,
                           vsize(k.name[i], k.iov[i].len), buf, len),
                "%s after healing: wrong value", k.name[i]);
      i++;
      continue;
    }
    KVH_CHECK(kvh_now_ms() < deadline, "%s after healing: still %s", k.name[i],
              kvds_err_name(rc));
    if (!kvds_client_is_connected(c)) {
      kvds_client_close(c);
      c = ns_client(j->w);
    }
    kvh_sleep_ms(100);
  }
  free(buf);
  keys_free(&k);
  kvds_client_close(c);
}

/* During the partition: a key that lives on the other side fails, before
 * the pull deadline (+ slack), with a peer error. */
static void ns_read_fails(const void *arg) {
  const struct ns_job *j = arg;
  kvds_client *c = ns_client(j->w);
  kvds_client_set_timeout(c, NS_PULL_MS + 3 * SLACK_MS);
  uint8_t *buf = malloc(SMALL_MAX);
  KVH_CHECK(buf, "out of memory");
  for (unsigned i = j->lo; i < j->hi; i++) {
    char key[64];
    size_t kl = kname(key, sizeof key, j->set, i), len = 0;
    uint64_t t0 = kvh_now_ms();
    int rc = kvds_get(c, key, kl, buf, SMALL_MAX, &len, 0);
    uint64_t dt = kvh_now_ms() - t0;
    fprintf(stderr, "9. partitioned read of %s: %s after %llu ms\n", key,
            kvds_err_name(rc), (unsigned long long)dt);
    KVH_CHECK(rc == KVDS_E_PEER || rc == KVDS_E_TIMEOUT ||
                  rc == KVDS_E_NOTFOUND,
              "partitioned read of %s: %s, want a peer error", key,
              kvds_err_name(rc));
    KVH_CHECK(dt <= NS_PULL_MS + SLACK_MS,
              "partitioned read of %s took %llu ms (pull deadline %d ms)", key,
              (unsigned long long)dt, NS_PULL_MS);
  }
  free(buf);
  kvds_client_close(c);
}

static pid_t ns_worker_start(int i) {
  snprintf(N.log[i], sizeof N.log[i], "%s/ns-worker-%d.log", kvh_run_dir(), i);
  int logfd = open(N.log[i], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  KVH_CHECK(logfd >= 0, "open %s: %s", N.log[i], strerror(errno));
  pid_t pid = kvh_fork();
  if (pid == 0) {
    dup2(logfd, STDOUT_FILENO);
    dup2(logfd, STDERR_FILENO);
    const char *argv[] = {"ip",
                          "netns",
                          "exec",
                          N.ns[i],
                          kvh_kvds_bin(),
                          "worker",
                          "--listen",
                          N.addr[i],
                          "--memory",
                          "256MiB",
                          "--peers",
                          N.addr[1 - i],
                          "--auth-token-file",
                          N.token,
                          "--pull-timeout-ms",
                          "1500",
                          "--pull-threads",
                          "2",
                          "--log-level",
                          "debug",
                          NULL};
    execvp("ip", (char *const *)argv);
    _exit(127);
  }
  close(logfd);
  kvh_kill_on_fail(pid);
  return pid;
}

static void ns_worker_stop(int i) {
  kill(N.w[i], SIGTERM);
  int st = kvh_wait_pid(N.w[i], 20000);
  kvh_kill_on_fail_cancel(N.w[i]);
  NS_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
           "namespace worker %s: exit status 0x%x", N.addr[i], st);
  N.w[i] = 0;
}

static void test_partition(void) {
  char why[128] = "";
  if (geteuid() != 0) {
    printf("SKIPPED: network partition test needs root and ip netns (not "
           "root)\n");
    return;
  }
  pid_t sentinel = 0;
  if (ns_setup(why, sizeof why, &sentinel)) {
    close(N.sentinel_fd);
    kvh_wait_pid(sentinel, 10000);
    printf("SKIPPED: network partition test needs root and ip netns (%s)\n",
           why);
    return;
  }
  /* 32 random bytes, hex, private to us. */
  snprintf(N.token, sizeof N.token, "%s/ns-token", kvh_run_dir());
  int fd = open(N.token, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  int rnd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  uint8_t raw[32];
  KVH_CHECK(fd >= 0 && rnd >= 0 && read(rnd, raw, sizeof raw) == sizeof raw,
            "token: %s", strerror(errno));
  char hex[65];
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", raw[i]);
  KVH_CHECK(kvh_write_all(fd, hex, 64) == 0, "token write");
  close(fd);
  close(rnd);

  for (int i = 0; i < 2; i++)
    N.w[i] = ns_worker_start(i);
  struct ns_job j0 = {0, NULL, 0, 0}, j1 = {1, NULL, 0, 0};
  ns_run(0, ns_ready, &j0, 30000, "worker 1 ready");
  ns_run(1, ns_ready, &j1, 30000, "worker 2 ready");

  /* Connected: put on W1, read on W2. */
  struct ns_job put1 = {0, "s9", 0, 50}, read2 = {1, "s9", 0, 50};
  ns_run(0, ns_put, &put1, 30000, "put on W1");
  ns_run(1, ns_known, &read2, 30000, "W2 knows the keys");
  ns_run(1, ns_read, &read2, 30000, "read on W2");

  /* New keys on W1, known to the cluster, then the link goes down. */
  struct ns_job put_new = {0, "s9-new", 0, 4}, new2 = {1, "s9-new", 0, 4};
  ns_run(0, ns_put, &put_new, 30000, "put new keys on W1");
  ns_run(1, ns_known, &new2, 30000, "W2 knows the new keys");
  NS_CHECK(sh("ip -n %s link set %s down", N.ns[0], N.veth[0]) == 0,
           "ip link set down failed");
  ns_run(1, ns_read_fails, &new2, 4 * (NS_PULL_MS + 3 * SLACK_MS),
         "reads during the partition");
  /* W2 still serves its own keys meanwhile. */
  struct ns_job own2 = {1, "s9", 0, 50};
  ns_run(1, ns_read, &own2, 30000, "W2's replicas during the partition");

  /* Healed: the new keys come through. */
  NS_CHECK(sh("ip -n %s link set %s up", N.ns[0], N.veth[0]) == 0,
           "ip link set up failed");
  ns_run(1, ns_read_eventually, &new2, 40000, "reads after healing");

  ns_worker_stop(1);
  ns_worker_stop(0);
  ns_delete();
  close(N.sentinel_fd); /* nothing left for it to delete */
  kvh_wait_pid(sentinel, 10000);
  fprintf(stderr, "9. network partition: ok\n");
}

/* With KVDS_TEST_TRANSPORT=ucx (ctest's test_cluster_ucx, UCX_TLS=tcp):
 * the etcd scenarios with every pull read over UCX; B and C must have read
 * objects over UCX (A was restarted in between: its counts are new). */
static void check_ucx_used(void) {
  struct kvh_worker *all[] = {&A, &B, &C};
  for (int i = 0; i < 3; i++) {
    json_t *cl = kvh_cluster_of(all[i]->addr);
    KVH_CHECK(cl, "%s: no cluster status", all[i]->addr);
    const char *reads = json_string_value(
        json_object_get(json_object_get(cl, "transport"), "reads"));
    KVH_CHECK(reads && !strcmp(reads, "ucx"), "%s reads over %s", all[i]->addr,
              reads ? reads : "?");
    long long in = 0;
    size_t k;
    json_t *m;
    json_array_foreach(json_object_get(cl, "members"), k, m) {
      in += json_integer_value(json_object_get(m, "ucx_in"));
    }
    fprintf(stderr, "%s read %lld objects over UCX\n", all[i]->addr, in);
    KVH_CHECK(in > 0 || all[i] == &A, "%s read nothing over UCX", all[i]->addr);
    json_decref(cl);
  }
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_cluster");
  const char *transport = getenv("KVDS_TEST_TRANSPORT");
  kvh_etcd_start(&etcd);
  const char *e[] = {"--etcd_address",
                     etcd.addr,
                     "--lease-ttl",
                     "2",
                     "--cluster",
                     "tcl",
                     "--pull-timeout-ms",
                     "3000",
                     "--pull-threads",
                     "2",
                     "--log-level",
                     "debug",
                     transport ? "--transport" : NULL,
                     transport,
                     NULL};
  memcpy(ext_etcd, e, sizeof e);
  kvh_worker_start(&A, "1GiB", ext_etcd);
  kvh_worker_start(&B, "1GiB", ext_etcd);
  kvh_worker_start(&C, "1GiB", ext_etcd);
  await_abc("three workers join");

  test_spread();
  test_prefix();
  test_hints();
  test_owner_killed();
  test_etcd_outage();
  test_home_restart();
  test_garbage();
  if (transport && !strcmp(transport, "ucx"))
    check_ucx_used();

  kvh_worker_stop(&C);
  kvh_worker_stop(&B);
  kvh_worker_stop(&A);
  kvh_etcd_stop(&etcd);
  if (transport) /* the rest is about TCP peers: run once, by test_cluster */
    return kvh_finish();

  test_static();
  test_evict_replica();
  test_tokens();
  test_partition();
  return kvh_finish();
}
