/*
 * test_heal.c — sealed data stays reachable through the directory after
 * the faults an operator meets (docs/cluster.md, "Healing"), with a real
 * etcd and real `kvds worker` processes:
 *
 *  1. a worker stalls (SIGSTOP) past its lease TTL, is dropped by the
 *     others and resumes: within a few seconds every one of its keys is
 *     found again from the other workers, without hints;
 *  2. ANNOUNCE is taken only from a connection whose HELLO named that
 *     owner, a live member with that epoch: a client cannot remove another
 *     worker's locations;
 *  3. etcd is rebuilt (killed, data directory wiped, a fresh etcd on the
 *     same address): every worker, and one started afterwards, converges
 *     on the same view, and the old keys are read from the new worker;
 *  4. a pull that runs past its deadline leaves nothing being written on
 *     the reader once the reader's answer arrived;
 *  5. --replicas 2: each object sealed on a worker is copied to one other
 *     in the background; removing one copy leaves the other; the only
 *     original holder killed, every key is read from its copy.
 *
 * Values are derived from their keys (kvh_val_*): every read checks every
 * byte. Waits are polls with deadlines; no assertion is about speed.
 */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness_cluster.h"
#include "proto/proto.h"

#define TTL_S 2
#define JOIN_MS 20000
/* After a rejoin the keys must be found again within this (the issue asks
 * for "a few seconds"; a loaded 2-core machine running ASan gets slack). */
#define HEAL_MS 8000
#define NKEYS 200
#define VMAX (32u << 10)

static struct kvh_etcd etcd;
static struct kvh_worker A, B, C, D;
static const char *ext[32];

/* ---- keys ---------------------------------------------------------------- */

static size_t kname(char *buf, size_t cap, const char *set, unsigned i) {
  return (size_t)snprintf(buf, cap, "%s/%04u", set, i);
}

static kvds_client *tcp_client(const struct kvh_worker *w) {
  kvds_client *c = NULL;
  int rc = kvds_client_connect_ex(w->tcp, 10000, KVDS_CONNECT_TCP_ONLY, &c);
  KVH_CHECK(rc == 0, "connect %s: %s", w->tcp, kvds_err_name(rc));
  return c;
}

static void put_set(const struct kvh_worker *w, const char *set, unsigned n) {
  kvds_client *c = tcp_client(w);
  for (unsigned i = 0; i < n; i++) {
    char k[64];
    size_t kl = kname(k, sizeof k, set, i);
    size_t len = kvh_val_size(k, kl, VMAX);
    void *v = kvh_val_new(k, kl, len);
    KVH_OK(kvds_put(c, k, kl, v, len));
    free(v);
  }
  kvds_client_close(c);
}

/* How many keys of set the cluster finds through w (EXISTS asks the
 * homes of the keys w lacks). */
static unsigned present(const struct kvh_worker *w, const char *set,
                        unsigned n) {
  kvds_client *c = tcp_client(w);
  unsigned found = 0;
  for (unsigned i = 0; i < n; i++) {
    char k[64];
    struct kvds_iov key = {k, kname(k, sizeof k, set, i)};
    uint8_t p = 0;
    int rc = kvds_exists(c, 1, &key, &p);
    KVH_CHECK(rc == 0, "exists %s on %s: %s", k, w->addr, kvds_err_name(rc));
    found += p;
  }
  kvds_client_close(c);
  return found;
}

/* Polls until every key of set is found through w; returns the ms it took
 * or fails after timeout_ms. */
static uint64_t await_present(const struct kvh_worker *w, const char *set,
                              unsigned n, int timeout_ms, const char *what) {
  uint64_t t0 = kvh_now_ms();
  for (;;) {
    unsigned f = present(w, set, n);
    if (f == n)
      return kvh_now_ms() - t0;
    KVH_CHECK(kvh_now_ms() - t0 < (uint64_t)timeout_ms,
              "%s: %u of %u keys of %s found through %s after %d ms", what, f,
              n, set, w->addr, timeout_ms);
    kvh_sleep_ms(100);
  }
}

/* Reads every key of set through w (the directory, then a pull) and
 * checks the bytes. */
static void check_set(const struct kvh_worker *w, const char *set, unsigned n) {
  kvds_client *c = tcp_client(w);
  void *buf = malloc(VMAX);
  KVH_CHECK(buf, "out of memory");
  for (unsigned i = 0; i < n; i++) {
    char k[64];
    size_t kl = kname(k, sizeof k, set, i), len = 0;
    int rc = kvds_get(c, k, kl, buf, VMAX, &len, 0);
    KVH_CHECK(rc == 0, "get %s through %s: %s", k, w->addr, kvds_err_name(rc));
    KVH_CHECK(kvh_val_ok(k, kl, kvh_val_size(k, kl, VMAX), buf, len),
              "get %s through %s: wrong bytes", k, w->addr);
  }
  free(buf);
  kvds_client_close(c);
}

static void await_views(struct kvh_worker *const *who, size_t n,
                        const char *what) {
  const char *ids[8];
  for (size_t i = 0; i < n; i++)
    ids[i] = who[i]->addr;
  kvh_await_views(who, n, ids, n, JOIN_MS, what);
}

/* ---- 1. a stall past the lease TTL --------------------------------------- */

static void test_stall(void) {
  put_set(&A, "st", NKEYS);
  await_present(&B, "st", NKEYS, JOIN_MS, "before the stall");
  KVH_CHECK(kill(A.pid, SIGSTOP) == 0, "SIGSTOP A: %s", strerror(errno));
  /* The others drop A once its lease expired. */
  struct kvh_worker *bc[] = {&B, &C}, *abc[] = {&A, &B, &C};
  const char *ids_bc[] = {B.addr, C.addr};
  kvh_await_views(bc, 2, ids_bc, 2, TTL_S * 1000 + JOIN_MS, "A dropped");
  /* ... and forget where its keys are. */
  KVH_CHECK(present(&C, "st", NKEYS) == 0,
            "keys of a dropped worker are still found");
  kvh_sleep_ms(500);
  KVH_CHECK(kill(A.pid, SIGCONT) == 0, "SIGCONT A: %s", strerror(errno));
  await_views(abc, 3, "A back");
  uint64_t tb = await_present(&B, "st", NKEYS, HEAL_MS, "after the stall");
  uint64_t tc = await_present(&C, "st", NKEYS, HEAL_MS, "after the stall");
  fprintf(stderr,
          "1. stall past the TTL: all %u keys found again %llu ms (B) / "
          "%llu ms (C) after the views healed\n",
          NKEYS, (unsigned long long)tb, (unsigned long long)(tb + tc));
  check_set(&C, "st", NKEYS);
  fprintf(stderr, "1. stall past the TTL: ok\n");
}

/* ---- 2. forged ANNOUNCE frames ------------------------------------------- */

/* Sends an ANNOUNCE as owner (epoch) removing keys st/0..9 on a fresh TCP
 * connection to w; first a HELLO naming hello_id unless it is NULL.
 * Returns the ANNOUNCE's status. */
static int announce_as(const struct kvh_worker *w, const char *hello_id,
                       const char *owner, uint64_t epoch) {
  int fd = kvh_raw_tcp(w->port);
  struct kvds_proto_hdr h;
  static struct kvh_frame f;
  if (hello_id) {
    kvh_frame_init(&f, KVDS_OP_HELLO, 1);
    kvh_frame_item(&f, 0, NULL, 0);
    kvh_frame_item(&f, 0, hello_id, strlen(hello_id));
    kvh_frame_seal(&f);
    KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send HELLO");
    KVH_CHECK(kvh_read_reply(fd, &h, NULL, 5000) == 0 && h.status == 0,
              "HELLO as %s refused", hello_id);
  }
  kvh_frame_init(&f, KVDS_OP_ANNOUNCE, 2);
  kvh_frame_item(&f, epoch, owner, strlen(owner));
  for (unsigned i = 0; i < 10; i++) {
    char k[64];
    size_t kl = kname(k, sizeof k, "st", i);
    kvh_frame_item(&f, 0, k, kl);
  }
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send ANNOUNCE");
  KVH_CHECK(kvh_read_reply(fd, &h, NULL, 5000) == 0 &&
                h.opcode == KVDS_OP_ANNOUNCE && h.req_id == 2,
            "no ANNOUNCE reply");
  /* A refusal is an answer, not a broken connection. */
  kvh_frame_init(&f, KVDS_OP_PING, 3);
  kvh_frame_seal(&f);
  struct kvds_proto_hdr p;
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0 &&
                kvh_read_reply(fd, &p, NULL, 5000) == 0 && p.status == 0,
            "connection unusable after the ANNOUNCE");
  close(fd);
  return h.status;
}

static void test_forged_announce(void) {
  struct kvh_worker *ws[] = {&A, &B, &C};
  for (int i = 0; i < 3; i++) {
    struct kvh_worker *w = ws[i];
    uint64_t ea = kvh_view_epoch(w->addr, A.addr);
    uint64_t ec = kvh_view_epoch(w->addr, C.addr);
    KVH_CHECK(ea && ec, "%s does not see A and C", w->addr);
    const char *other = w == &C ? B.addr : C.addr;
    uint64_t eo = w == &C ? kvh_view_epoch(w->addr, B.addr) : ec;
    int rc = announce_as(w, NULL, A.addr, ea);
    KVH_CHECK(rc == KVDS_E_PERM, "no HELLO, as A on %s: %s", w->addr,
              kvds_err_name(rc));
    rc = announce_as(w, other, A.addr, ea);
    KVH_CHECK(rc == KVDS_E_PERM, "HELLO as %s, announce as A on %s: %s", other,
              w->addr, kvds_err_name(rc));
    rc = announce_as(w, "127.0.0.1:1", "127.0.0.1:1", 7);
    KVH_CHECK(rc == KVDS_E_STATE, "a non-member on %s: %s", w->addr,
              kvds_err_name(rc));
    rc = announce_as(w, other, other, eo + 1);
    KVH_CHECK(rc == KVDS_E_STATE, "%s with a wrong epoch on %s: %s", other,
              w->addr, kvds_err_name(rc));
  }
  /* None of the forged removals took: A's keys are all still found. */
  KVH_CHECK(present(&B, "st", NKEYS) == NKEYS &&
                present(&C, "st", NKEYS) == NKEYS,
            "a forged ANNOUNCE removed locations");
  fprintf(stderr, "2. forged ANNOUNCE frames refused: ok\n");
}

/* ---- 3. etcd rebuilt ----------------------------------------------------- */

static void test_etcd_rebuilt(void) {
  put_set(&B, "eb", NKEYS);
  await_present(&C, "eb", NKEYS, JOIN_MS, "before the rebuild");
  kvh_etcd_kill9(&etcd);
  kvh_etcd_wipe(&etcd);
  kvh_etcd_restart(&etcd);
  /* A worker that knows only the new etcd. */
  kvh_worker_start(&D, "256MiB", ext);
  struct kvh_worker *all[] = {&A, &B, &C, &D};
  uint64_t t0 = kvh_now_ms();
  await_views(all, 4, "etcd rebuilt, D started");
  fprintf(stderr,
          "3. etcd rebuilt: four workers see each other after %llu "
          "ms\n",
          (unsigned long long)(kvh_now_ms() - t0));
  uint64_t t = await_present(&D, "eb", NKEYS, HEAL_MS, "etcd rebuilt");
  await_present(&D, "st", NKEYS, HEAL_MS, "etcd rebuilt");
  fprintf(stderr, "3. old keys found from D %llu ms after the views healed\n",
          (unsigned long long)t);
  check_set(&D, "eb", NKEYS);
  check_set(&D, "st", 50);
  /* New keys on D reach the old workers. */
  put_set(&D, "ed", 50);
  await_present(&A, "ed", 50, HEAL_MS, "D's keys from A");
  check_set(&A, "ed", 50);
  fprintf(stderr, "3. etcd rebuilt: ok\n");
}

/* ---- 4. a pull past its deadline ----------------------------------------- */

#define BIG (256u << 20)

static void test_pull_timeout(void) {
  struct kvh_worker P, Q;
  int pp = kvh_free_port(), qp = kvh_free_port();
  char ppeer[64], qpeer[64];
  snprintf(ppeer, sizeof ppeer, "127.0.0.1:%d", qp);
  snprintf(qpeer, sizeof qpeer, "127.0.0.1:%d", pp);
  const char *pe[] = {"--peers", ppeer, NULL};
  const char *qe[] = {"--peers", qpeer, "--pull-timeout-ms", "20", NULL};
  kvh_worker_start_port(&P, pp, "600MiB", pe);
  kvh_worker_start_port(&Q, qp, "600MiB", qe);
  kvds_client *pc = kvh_connect(P.addr);
  void *v = kvh_val_new("big", 3, BIG);
  KVH_OK(kvds_put(pc, "big", 3, v, BIG));
  kvds_client *qc = tcp_client(&Q), *qs = kvh_connect(Q.addr);
  int timeouts = 0;
  for (int i = 0; i < 6; i++) {
    size_t len = 0;
    int rc = kvds_get(qc, "big", 3, v, BIG, &len, 0);
    struct kvds_stats st;
    kvh_stats(qs, &st);
    KVH_CHECK(st.objects_writing == 0,
              "try %d: the read answered %s while %llu objects are still "
              "being written on the reader",
              i, kvds_err_name(rc), (unsigned long long)st.objects_writing);
    if (rc == 0) {
      KVH_CHECK(kvh_val_ok("big", 3, BIG, v, len), "wrong bytes");
      KVH_OK(kvds_delete(qs, "big", 3)); /* pull it again */
    } else {
      KVH_CHECK(rc == KVDS_E_TIMEOUT, "try %d: %s, want a timeout", i,
                kvds_err_name(rc));
      timeouts++;
    }
  }
  fprintf(stderr,
          "4. a 256 MiB pull with a 20 ms deadline: %d of 6 timed "
          "out, none left an object being written\n",
          timeouts);
  KVH_CHECK(timeouts > 0, "no pull ran past its deadline: nothing tested");
  free(v);
  kvds_client_close(qs);
  kvds_client_close(qc);
  kvds_client_close(pc);
  kvh_worker_stop(&Q);
  kvh_worker_stop(&P);
  fprintf(stderr, "4. pull past its deadline: ok\n");
}

/* ---- 5. replicas ----------------------------------------------------------
 */

/* Where key lives, asked through w (its home answers). */
static size_t holders(const struct kvh_worker *w, const char *key,
                      char ids[][256], size_t cap) {
  kvds_client *c = tcp_client(w);
  struct kvds_location *l = NULL;
  size_t n = 0;
  int rc = kvds_locate(c, key, strlen(key), &l, &n);
  KVH_CHECK(rc == 0, "locate %s through %s: %s", key, w->addr,
            kvds_err_name(rc));
  for (size_t i = 0; i < n && i < cap; i++)
    snprintf(ids[i], 256, "%s", l[i].id);
  free(l);
  kvds_client_close(c);
  return n;
}

#define RN 60

static void test_replicas(void) {
  struct kvh_etcd re;
  kvh_etcd_start(&re);
  const char *e[] = {"--etcd_address", re.addr, "--lease-ttl", "2",
                     "--cluster",      "trep",  "--replicas",  "2",
                     "--log-level",    "debug", NULL};
  struct kvh_worker P, Q, R;
  kvh_worker_start(&P, "128MiB", e);
  kvh_worker_start(&Q, "128MiB", e);
  kvh_worker_start(&R, "128MiB", e);
  struct kvh_worker *pqr[] = {&P, &Q, &R};
  await_views(pqr, 3, "replica cluster");
  put_set(&P, "rp", RN);
  /* Every key gets one copy besides P's, on Q or R, in the background. */
  char ids[8][256];
  uint64_t deadline = kvh_now_ms() + JOIN_MS;
  unsigned on_q = 0, on_r = 0;
  uint8_t copy_on_r[RN];
  for (unsigned i = 0; i < RN; i++) {
    char k[64];
    kname(k, sizeof k, "rp", i);
    size_t n;
    for (;;) {
      n = holders(&Q, k, ids, 8);
      if (n >= 2 || kvh_now_ms() > deadline)
        break;
      kvh_sleep_ms(50);
    }
    KVH_CHECK(n == 2, "%s has %zu holders, want 2 (P and one copy)", k, n);
    int p_there = strcmp(ids[0], P.addr) == 0 || strcmp(ids[1], P.addr) == 0;
    KVH_CHECK(p_there, "%s: P is not among its holders", k);
    const char *other = strcmp(ids[0], P.addr) == 0 ? ids[1] : ids[0];
    on_q += strcmp(other, Q.addr) == 0;
    on_r += strcmp(other, R.addr) == 0;
    copy_on_r[i] = strcmp(other, R.addr) == 0;
  }
  KVH_CHECK(on_q + on_r == RN, "copies on a worker that is not Q or R");
  fprintf(stderr, "5. replicas: %u copies on Q, %u on R\n", on_q, on_r);
  /* Removing one copy leaves the others: key rp/0000's copy goes. */
  char k0[64];
  kname(k0, sizeof k0, "rp", 0);
  holders(&Q, k0, ids, 8);
  struct kvh_worker *cw =
      strcmp(ids[0], Q.addr) == 0 || strcmp(ids[1], Q.addr) == 0 ? &Q : &R;
  kvds_client *cc = kvh_connect(cw->addr);
  KVH_OK(kvds_delete(cc, k0, strlen(k0)));
  kvds_client_close(cc);
  deadline = kvh_now_ms() + JOIN_MS;
  for (;;) {
    size_t n = holders(&Q, k0, ids, 8);
    if (n == 1 && strcmp(ids[0], P.addr) == 0)
      break;
    KVH_CHECK(kvh_now_ms() < deadline, "%s: %zu holders after its copy went",
              k0, n);
    kvh_sleep_ms(50);
  }
  /* A copy whose target died (still in the views for up to the TTL) is
   * made again, on whoever is its target once the views changed: Q is
   * killed, keys are put on P at once, Q comes back. */
  int qport = Q.port;
  kvh_worker_kill9(&Q);
  put_set(&P, "rq", RN);
  kvh_worker_start_port(&Q, qport, "128MiB", e);
  await_views(pqr, 3, "Q back");
  deadline = kvh_now_ms() + JOIN_MS;
  for (unsigned i = 0; i < RN; i++) {
    char k[64];
    kname(k, sizeof k, "rq", i);
    size_t n;
    for (;;) {
      n = holders(&R, k, ids, 8);
      if (n >= 2 || kvh_now_ms() > deadline)
        break;
      kvh_sleep_ms(100);
    }
    KVH_CHECK(n == 2, "%s, put while its copy's target was dead: %zu holders",
              k, n);
  }
  fprintf(stderr, "5. replicas: copies aimed at a dead worker made again\n");
  /* kvds status shows what was made. */
  json_t *cl = kvh_cluster_of(P.addr);
  json_t *rep = json_object_get(cl, "replicas");
  KVH_CHECK(json_integer_value(json_object_get(rep, "copies")) == 2 &&
                json_integer_value(json_object_get(rep, "made")) >= 2 * RN &&
                json_integer_value(json_object_get(rep, "failed")) > 0,
            "P's status: replicas copies %lld made %lld",
            (long long)json_integer_value(json_object_get(rep, "copies")),
            (long long)json_integer_value(json_object_get(rep, "made")));
  json_decref(cl);
  /* The only original holder dies: every key whose copy lives is read
   * from it, through both survivors. */
  kvh_worker_kill9(&P);
  struct kvh_worker *qr[] = {&Q, &R};
  await_views(qr, 2, "P gone");
  unsigned read = 0;
  for (int w = 0; w < 2; w++) {
    kvds_client *c = tcp_client(qr[w]);
    void *buf = malloc(VMAX);
    for (unsigned i = 1; i < 2 * RN; i++) {
      char k[64];
      if (i < RN && !copy_on_r[i])
        continue; /* its copy was on Q, killed above: two holders lost */
      size_t kl = i < RN ? kname(k, sizeof k, "rp", i)
                         : kname(k, sizeof k, "rq", i - RN),
             len = 0;
      int rc = kvds_get(c, k, kl, buf, VMAX, &len, 0);
      KVH_CHECK(rc == 0, "%s through %s after P died: %s", k, qr[w]->addr,
                kvds_err_name(rc));
      KVH_CHECK(kvh_val_ok(k, kl, kvh_val_size(k, kl, VMAX), buf, len),
                "%s: wrong bytes", k);
      read++;
    }
    free(buf);
    kvds_client_close(c);
  }
  fprintf(stderr, "5. replicas: %u reads after the original holder died\n",
          read);
  kvh_worker_stop(&R);
  kvh_worker_stop(&Q);
  kvh_etcd_stop(&re);
  fprintf(stderr, "5. replicas: ok\n");
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_heal");
  kvh_etcd_start(&etcd);
  const char *e[] = {"--etcd_address", etcd.addr, "--lease-ttl", "2",
                     "--cluster",      "theal",   "--log-level", "debug",
                     "--pull-threads", "2",       NULL};
  memcpy(ext, e, sizeof e);
  kvh_worker_start(&A, "256MiB", ext);
  kvh_worker_start(&B, "256MiB", ext);
  kvh_worker_start(&C, "256MiB", ext);
  struct kvh_worker *abc[] = {&A, &B, &C};
  await_views(abc, 3, "three workers join");

  test_stall();
  test_forged_announce();
  test_etcd_rebuilt();

  kvh_worker_stop(&D);
  kvh_worker_stop(&C);
  kvh_worker_stop(&B);
  kvh_worker_stop(&A);
  kvh_etcd_stop(&etcd);

  test_pull_timeout();
  test_replicas();
  return kvh_finish();
}
