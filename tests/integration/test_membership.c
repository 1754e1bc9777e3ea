/*
 * test_membership.c — cluster membership with a real etcd and real
 * `kvds worker` processes (--etcd_address, --lease-ttl 2): every view shows
 * all workers; a worker killed with SIGKILL leaves every view within the
 * lease TTL; restarted on the same port it comes back with a newer epoch; a
 * worker stopped with SIGTERM leaves at once (its lease is revoked); with
 * etcd stopped the workers keep serving and keep their last view, a worker
 * started meanwhile still starts, and once etcd returns every view is
 * right again. Then the static --peers mode, the --etcd/--peers conflict
 * (usage error) and `kvds status`' peer list.
 *
 * Views are read with kvds_cluster_status (the CLUSTER request). Every wait
 * is a poll with a deadline.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster/membership.h"
#include "harness_cluster.h"

#define TTL_S 2
/* Allowance on top of the TTL for a loaded 2-core CI machine: it tells
 * "dropped because the lease expired" from "never dropped". */
#define SLACK_MS 4000
#define JOIN_MS 15000

static const char TTL[] = "2";

static void put_get(const char *addr, const char *key) {
  kvds_client *c = kvh_connect(addr);
  static const char val[] = "value during the etcd outage";
  KVH_OK(kvds_put(c, key, strlen(key), val, sizeof val));
  char buf[64];
  size_t len = 0;
  KVH_OK(kvds_get(c, key, strlen(key), buf, sizeof buf, &len, 0));
  KVH_CHECK(len == sizeof val && memcmp(buf, val, len) == 0, "get %s on %s",
            key, addr);
  kvds_client_close(c);
}

/* Runs the kvds binary with args; stdout+stderr into out[cap]; returns the
 * exit status (or -1). */
static int run_kvds(const char *const *args, char *out, size_t cap) {
  int p[2];
  KVH_CHECK(pipe(p) == 0, "pipe: %s", strerror(errno));
  pid_t pid = kvh_fork();
  if (pid == 0) {
    const char *argv[32];
    int n = 0;
    argv[n++] = "kvds";
    for (int i = 0; args[i] && n < 31; i++)
      argv[n++] = args[i];
    argv[n] = NULL;
    dup2(p[1], STDOUT_FILENO);
    dup2(p[1], STDERR_FILENO);
    close(p[0]);
    close(p[1]);
    execv(kvh_kvds_bin(), (char *const *)argv);
    _exit(127);
  }
  close(p[1]);
  size_t len = 0;
  uint64_t deadline = kvh_now_ms() + 10000;
  while (kvh_now_ms() < deadline) {
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    if (poll(&pf, 1, 100) <= 0)
      continue;
    ssize_t r = read(p[0], out + len, cap - 1 - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    len += (size_t)r;
    if (len == cap - 1)
      break;
  }
  out[len] = 0;
  close(p[0]);
  int st = kvh_wait_pid(pid, 10000);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- a change callback that hangs (in-process membership) -------------- */

struct hang {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int entered, release;
};

static void hang_change(void *arg, uint64_t gen) {
  struct hang *h = arg;
  (void)gen;
  pthread_mutex_lock(&h->mu);
  h->entered++;
  pthread_cond_broadcast(&h->cv);
  while (!h->release)
    pthread_cond_wait(&h->cv, &h->mu);
  pthread_mutex_unlock(&h->mu);
}

static kvds_membership *in_process(const char *etcd, int port,
                                   kvds_membership_change_fn fn, void *arg) {
  struct kvds_membership_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.mode = KVDS_MEMBERSHIP_ETCD;
  snprintf(cfg.cluster, sizeof cfg.cluster, "hang");
  snprintf(cfg.self_addr, sizeof cfg.self_addr, "127.0.0.1:%d", port);
  cfg.capacity = 1;
  cfg.etcd = etcd;
  cfg.lease_ttl_s = TTL_S;
  cfg.on_change = fn;
  cfg.change_arg = arg;
  kvds_membership *m = NULL;
  char err[256] = "";
  KVH_CHECK(kvds_membership_create(&cfg, &m, err, sizeof err) == 0,
            "membership: %s", err);
  KVH_OK(kvds_membership_start(m));
  return m;
}

/* The watch's callback is stuck in on_change when the membership is
 * destroyed: destroy returns in bounded time (the watch close times out)
 * and the stuck callback, once it returns, frees the membership itself
 * (ASan: no use after free, no leak). */
static void test_stuck_callback(const char *etcd) {
  static struct hang h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                          0, 0};
  kvds_membership *m1 = in_process(etcd, 1, hang_change, &h);
  uint64_t deadline = kvh_now_ms() + JOIN_MS;
  while (!kvds_membership_etcd_up(m1)) {
    KVH_CHECK(kvh_now_ms() < deadline, "in-process member never up");
    kvh_sleep_ms(20);
  }
  /* A second member: m1's watch sees it and calls on_change, which hangs. */
  kvds_membership *m2 = in_process(etcd, 2, NULL, NULL);
  pthread_mutex_lock(&h.mu);
  while (!h.entered) {
    pthread_mutex_unlock(&h.mu);
    KVH_CHECK(kvh_now_ms() < deadline, "on_change never called");
    kvh_sleep_ms(20);
    pthread_mutex_lock(&h.mu);
  }
  pthread_mutex_unlock(&h.mu);
  uint64_t t0 = kvh_now_ms();
  kvds_membership_destroy(m1);
  uint64_t took = kvh_now_ms() - t0;
  fprintf(stderr, "destroy with a stuck callback: %llu ms\n",
          (unsigned long long)took);
  /* Stop's bound: 2 x the call timeout (666 ms at TTL 2) + 1 s, and the
   * watch close's own timeout + 1 s. */
  KVH_CHECK(took < 4000 + SLACK_MS,
            "destroy with a stuck callback took %llu ms",
            (unsigned long long)took);
  pthread_mutex_lock(&h.mu);
  h.release = 1;
  pthread_cond_broadcast(&h.cv);
  pthread_mutex_unlock(&h.mu);
  kvds_membership_destroy(m2);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "test_membership");
  struct kvh_etcd etcd;
  kvh_etcd_start(&etcd);
  test_stuck_callback(etcd.addr);
  const char *const ext[] = {"--etcd_address", etcd.addr, "--lease-ttl", TTL,
                             "--cluster",      "t1",      NULL};
  struct kvh_worker a, b, c, d;
  kvh_worker_start(&a, "32MiB", ext);
  kvh_worker_start(&b, "32MiB", ext);
  kvh_worker_start(&c, "32MiB", ext);

  /* 1. Everyone sees everyone. */
  struct kvh_worker *abc[] = {&a, &b, &c};
  const char *ids3[] = {a.addr, b.addr, c.addr};
  uint64_t ms = kvh_await_views(abc, 3, ids3, 3, JOIN_MS, "three workers join");
  fprintf(stderr, "three views complete after %llu ms\n",
          (unsigned long long)ms);
  json_t *cl = kvh_cluster_of(a.addr);
  KVH_CHECK(cl, "no cluster object from %s", a.addr);
  KVH_CHECK(
      strcmp(json_string_value(json_object_get(cl, "mode")), "etcd") == 0 &&
          strcmp(json_string_value(json_object_get(cl, "name")), "t1") == 0,
      "mode/name wrong");
  json_t *mc = kvh_member(cl, c.addr);
  KVH_CHECK(json_integer_value(json_object_get(mc, "capacity")) == 32 << 20,
            "capacity of %s not 32MiB", c.addr);
  KVH_CHECK(strcmp(json_string_value(
                       json_object_get(json_object_get(cl, "etcd"), "state")),
                   "up") == 0,
            "etcd state not up");
  uint64_t c_epoch = kvh_epoch_of(cl, c.addr);
  KVH_CHECK(c_epoch > 0, "no epoch for %s", c.addr);
  json_decref(cl);

  /* 2. kill -9: the others drop it within the TTL (+ slack). */
  int c_port = c.port;
  uint64_t t0 = kvh_now_ms();
  kvh_worker_kill9(&c);
  struct kvh_worker *ab[] = {&a, &b};
  const char *ids2[] = {a.addr, b.addr};
  kvh_await_views(ab, 2, ids2, 2, TTL_S * 1000 + SLACK_MS, "kill -9 of C");
  fprintf(stderr, "killed worker dropped after %llu ms (TTL %d s)\n",
          (unsigned long long)(kvh_now_ms() - t0), TTL_S);

  /* 3. Restarted on the same port (same id): back, with a newer epoch. Its
   * lease is long (30 s) so that step 4 can only pass by revocation. */
  const char *const ext_long[] = {
      "--etcd_address", etcd.addr, "--lease-ttl", "30",
      "--cluster",      "t1",      NULL};
  kvh_worker_start_port(&c, c_port, "32MiB", ext_long);
  kvh_await_views(abc, 3, ids3, 3, JOIN_MS, "C restarted");
  cl = kvh_cluster_of(a.addr);
  uint64_t c_epoch2 = kvh_epoch_of(cl, c.addr);
  json_decref(cl);
  KVH_CHECK(c_epoch2 > c_epoch,
            "restarted C has epoch %llu, not newer than %llu",
            (unsigned long long)c_epoch2, (unsigned long long)c_epoch);

  /* 4. SIGTERM: the lease is revoked, the others drop it at once (well
   * before its 30 s TTL). */
  t0 = kvh_now_ms();
  kvh_worker_stop(&c);
  kvh_await_views(ab, 2, ids2, 2, SLACK_MS, "SIGTERM of C (lease revoked)");
  fprintf(stderr, "stopped worker dropped after %llu ms (TTL 30 s)\n",
          (unsigned long long)(kvh_now_ms() - t0));

  /* 5. etcd goes away: the workers keep serving and keep their view, for
   * longer than the TTL; a worker started meanwhile starts (alone). */
  kvh_etcd_stop(&etcd);
  /* D names etcd the other ways users do: --etcd and an etcd:// URL. */
  char etcd_url[96];
  snprintf(etcd_url, sizeof etcd_url, "etcd://%s", etcd.addr);
  const char *const ext_d[] = {"--etcd",    etcd_url, "--lease-ttl", TTL,
                               "--cluster", "t1",     NULL};
  kvh_worker_start(&d, "32MiB", ext_d);
  uint64_t until = kvh_now_ms() + (TTL_S * 1000) + 1500;
  int saw_down = 0;
  while (kvh_now_ms() < until) {
    KVH_CHECK(kvh_view_is(a.addr, ids2, 2) && kvh_view_is(b.addr, ids2, 2),
              "a view changed while etcd was down");
    cl = kvh_cluster_of(a.addr);
    const char *st = json_string_value(
        json_object_get(json_object_get(cl, "etcd"), "state"));
    saw_down |= st && strcmp(st, "down") == 0;
    json_decref(cl);
    kvh_sleep_ms(100);
  }
  KVH_CHECK(saw_down, "etcd state never reported down");
  put_get(a.addr, "outage-a");
  put_get(b.addr, "outage-b");
  put_get(d.addr, "outage-d");
  const char *idd[] = {d.addr};
  KVH_CHECK(kvh_view_is(d.addr, idd, 1), "D's view during the outage is not "
                                         "just itself");

  /* 6. etcd returns: D is seen by everyone, and sees everyone. */
  kvh_etcd_restart(&etcd);
  struct kvh_worker *abd[] = {&a, &b, &d};
  const char *ids_abd[] = {a.addr, b.addr, d.addr};
  ms = kvh_await_views(abd, 3, ids_abd, 3, JOIN_MS, "after etcd returned");
  fprintf(stderr, "views complete %llu ms after etcd returned\n",
          (unsigned long long)ms);

  /* `kvds status` lists the peers with their state. */
  char out[8192];
  const char *const st_args[] = {"status", "-w", a.addr, NULL};
  KVH_CHECK(run_kvds(st_args, out, sizeof out) == 0, "kvds status: %s", out);
  KVH_CHECK(strstr(out, "etcd mode, 3 members"),
            "kvds status does not show the cluster:\n%s", out);
  /* each peer on its own line, in state "up" (A itself is "self") */
  const char *peer_addr[] = {b.addr, d.addr};
  for (int i = 0; i < 2; i++) {
    char want[128];
    snprintf(want, sizeof want, "  peer       %-24s %-6s addr", peer_addr[i],
             "up");
    KVH_CHECK(strstr(out, want), "kvds status: no \"%s\" line:\n%s", want, out);
  }
  fputs(out, stderr);

  kvh_worker_stop(&d);
  kvh_worker_stop(&b);
  kvh_worker_stop(&a);
  kvh_etcd_stop(&etcd);

  /* 7. Static cluster: me + --peers. */
  struct kvh_worker s;
  const char *const st_ext[] = {"--peers", "127.0.0.1:1,127.0.0.1:2", NULL};
  kvh_worker_start(&s, "32MiB", st_ext);
  const char *ids_s[] = {s.addr, "127.0.0.1:1", "127.0.0.1:2"};
  KVH_CHECK(kvh_view_is(s.addr, ids_s, 3), "static view wrong");
  cl = kvh_cluster_of(s.addr);
  KVH_CHECK(strcmp(json_string_value(json_object_get(cl, "mode")), "static") ==
                0,
            "static mode not reported");
  json_decref(cl);
  kvh_worker_stop(&s);

  /* 7b. Two real workers naming each other with --peers: each lists the
   * other (state "static") next to itself, and `kvds status` shows it. */
  int p1 = kvh_free_port(), p2 = kvh_free_port();
  char a1[64], a2[64];
  snprintf(a1, sizeof a1, "127.0.0.1:%d", p1);
  snprintf(a2, sizeof a2, "127.0.0.1:%d", p2);
  struct kvh_worker s1, s2;
  const char *const ext1[] = {"--peers", a2, NULL};
  const char *const ext2[] = {"--peers", a1, NULL};
  kvh_worker_start_port(&s1, p1, "32MiB", ext1);
  kvh_worker_start_port(&s2, p2, "32MiB", ext2);
  const char *pair[] = {a1, a2};
  KVH_CHECK(kvh_view_is(s1.addr, pair, 2) && kvh_view_is(s2.addr, pair, 2),
            "static peers do not list each other");
  const char *const st1[] = {"status", "-w", s1.addr, NULL};
  KVH_CHECK(run_kvds(st1, out, sizeof out) == 0, "kvds status: %s", out);
  char want2[128];
  snprintf(want2, sizeof want2, "  peer       %-24s %-6s addr", a2, "static");
  KVH_CHECK(strstr(out, want2), "kvds status: no \"%s\" line:\n%s", want2, out);
  kvh_worker_stop(&s2);
  kvh_worker_stop(&s1);

  /* 8. --etcd and --peers together: usage error with a reason. */
  const char *const both[] = {
      "worker",         "--listen", "127.0.0.1:1", "--etcd",
      "127.0.0.1:2379", "--peers",  "127.0.0.1:3", NULL};
  int rc = run_kvds(both, out, sizeof out);
  KVH_CHECK(rc == 2 && strstr(out, "exclude each other"),
            "--etcd + --peers: exit %d, output: %s", rc, out);
  return kvh_finish();
}
