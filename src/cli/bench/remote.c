/*
 * remote.c — `kvds bench remote`: starts two workers peered with each other
 * (or uses running ones) and measures reads on one of values that live on
 * the other (pulled over the peer connections during the call) against raw
 * loopback TCP moving the same bytes over as many streams, plus remote
 * lookup latency. With --transport ucx the workers read each other over
 * UCX, each case's ceiling is ucx_perftest's ucp_get of the same size
 * (ucxperf.c), and every row says how many values came over UCX.
 *
 * Throughput is computed from the time spent inside the timed calls; the
 * untimed work between them (putting the values on A, deleting B's copies
 * before keys are read again) is excluded. Latency is per call; one call
 * moves `batch` values.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/bench/bench.h"
#include "common/clock.h"
#include "common/util.h"

#define R_CLIENTS_MAX 16
/* The worker pulls a value larger than this in ranges over several
 * connections when pull threads are idle (src/worker/cluster/split.c). */
#define R_SPLIT_WHOLE_MAX (2ull << 20)
#define R_LAT_KEYS 64   /* keys cycled by the lookup latency probes */
#define R_CHAIN 32      /* keys of the lookup_prefix chain */
#define R_PUT_CHUNK 256 /* values per untimed kvds_mput on A */
/* A case's reads and its raw TCP take turns this many times, so that both
 * see the same moments of a shared machine. */
#define R_ROUNDS 4

struct remote_opts {
  const char *addr_a, *addr_b; /* running workers; NULL = start them */
  uint64_t sizes[BENCH_LIST_MAX];
  int nsizes;
  uint64_t batches[BENCH_LIST_MAX];
  int nbatches;
  uint64_t memory, max_bytes, dir_size;
  uint64_t pull_threads, threads, clients;
  double seconds;
  int json;
  int ucx; /* --transport ucx */
};

struct rpoint {
  const char *via; /* "hint" or "directory" */
  uint64_t size, batch;
  int streams, skipped;
  uint64_t calls, bytes, pulled;
  double gbps, tcp_gbps, p50_us, p99_us;
  /* --transport ucx: values B read over UCX in this case, and
   * ucx_perftest's bandwidth (or why there is none: ucx_why) */
  uint64_t ucx_in;
  double ucx_gbps;
  char ucx_why[200];
};

struct rlat {
  uint64_t n;
  double p50_us, p99_us;
};

struct remote {
  struct remote_opts *o;
  int started;
  char dir[PATH_MAX];
  struct bench_worker w[2];
  const char *addr_a, *addr_b;
  kvds_client *ca, *cb;
  kvds_client *cbx[R_CLIENTS_MAX]; /* B's clients: cbx[0] is cb */
  char prefix[64];
  uint8_t *src, *dst;
  size_t region;
  uint64_t phase_ns;
  struct bench_tcp tcp;
  int tcp_up;
  struct rpoint pts[BENCH_LIST_MAX * BENCH_LIST_MAX + BENCH_LIST_MAX];
  int npts;
  struct rlat ex_remote, ex_local, pre_remote, pre_local;
  /* --transport ucx */
  char ucxperf[PATH_MAX]; /* ucx_perftest's path; "" when not found */
  char ucx_tls[128];      /* UCX_TLS as worker B reports it */
  char ucx_lanes[160];    /* the lanes of B's endpoint to A */
  char perf_lanes[160];   /* the lanes of ucx_perftest's client */
  int no_ucx_rows;        /* measured rows with no value over UCX */
};

static int remote_parse(int argc, char **argv, struct remote_opts *o) {
  enum {
    O_A = 256,
    O_B,
    O_PULL,
    O_THREADS,
    O_CLIENTS,
    O_SIZES,
    O_BATCH,
    O_MAX,
    O_DIR,
    O_SECONDS,
    O_TRANSPORT
  };
  static const struct option lo[] = {
      {"worker-a", required_argument, NULL, O_A},
      {"worker-b", required_argument, NULL, O_B},
      {"memory", required_argument, NULL, 'm'},
      {"pull-threads", required_argument, NULL, O_PULL},
      {"threads", required_argument, NULL, O_THREADS},
      {"clients", required_argument, NULL, O_CLIENTS},
      {"sizes", required_argument, NULL, O_SIZES},
      {"batch", required_argument, NULL, O_BATCH},
      {"max-bytes", required_argument, NULL, O_MAX},
      {"dir-size", required_argument, NULL, O_DIR},
      {"seconds", required_argument, NULL, O_SECONDS},
      {"transport", required_argument, NULL, O_TRANSPORT},
      BENCH_OPTS_COMMON,
      {NULL, 0, NULL, 0}};
  int c, first = 1, quick = 0, have_mem = 0, have_max = 0, have_secs = 0,
         have_threads = 0;
  bench_parse_list("--sizes", "256KiB,1MiB,4MiB,16MiB", 1, o->sizes,
                   &o->nsizes);
  bench_parse_list("--batch", "1,8,64", 0, o->batches, &o->nbatches);
  o->memory = 2ull << 30;
  o->max_bytes = 512ull << 20;
  o->dir_size = 1ull << 20;
  o->pull_threads = 4;
  o->threads = 1;
  o->clients = 1;
  o->seconds = 0.3;
  while ((c = cli_getopt("bench", argc, argv, "m:h", lo, &first)) != -1) {
    int rc = CLI_OK;
    switch (c) {
    case O_A:
      o->addr_a = optarg;
      break;
    case O_B:
      o->addr_b = optarg;
      break;
    case 'm':
      rc = cli_parse_size_opt("bench", "--memory", optarg, &o->memory);
      have_mem = 1;
      break;
    case O_PULL:
      rc = bench_parse_u64_in("--pull-threads", optarg, 0, 1,
                              BENCH_TCP_STREAMS_MAX, &o->pull_threads);
      break;
    case O_THREADS:
      rc = bench_parse_u64_in("--threads", optarg, 0, 1, 64, &o->threads);
      have_threads = 1;
      break;
    case O_CLIENTS:
      rc = bench_parse_u64_in("--clients", optarg, 0, 1, R_CLIENTS_MAX,
                              &o->clients);
      break;
    case O_SIZES:
      rc = bench_parse_list("--sizes", optarg, 1, o->sizes, &o->nsizes);
      break;
    case O_BATCH:
      rc = bench_parse_list("--batch", optarg, 0, o->batches, &o->nbatches);
      break;
    case O_MAX:
      rc = bench_parse_u64_in("--max-bytes", optarg, 1, 4096, 64ull << 30,
                              &o->max_bytes);
      have_max = 1;
      break;
    case O_DIR:
      rc = bench_parse_u64_in("--dir-size", optarg, 1, 1, 1ull << 30,
                              &o->dir_size);
      break;
    case O_SECONDS:
      rc = bench_parse_double_in("--seconds", optarg, 0.001, 3600, &o->seconds);
      have_secs = 1;
      break;
    case O_TRANSPORT:
      if (strcmp(optarg, "tcp") && strcmp(optarg, "ucx")) {
        cli_err("bench", "--transport must be tcp or ucx, not '%s'", optarg);
        rc = CLI_USAGE;
      }
      o->ucx = strcmp(optarg, "ucx") == 0;
      break;
    default:
      rc = bench_parse_common(c, &quick, &o->json);
    }
    if (rc)
      return rc;
  }
  if (bench_parse_end("remote", argc, argv))
    return CLI_USAGE;
  if (!o->addr_a != !o->addr_b) {
    cli_err("bench", "--worker-a and --worker-b go together");
    return CLI_USAGE;
  }
  if (o->addr_a && (have_mem || have_threads)) {
    cli_err("bench",
            "%s applies to started workers only, not with "
            "--worker-a/--worker-b",
            have_mem ? "--memory" : "--threads");
    return CLI_USAGE;
  }
  if (quick) {
    if (!have_mem)
      o->memory = 256ull << 20;
    if (!have_max)
      o->max_bytes = 32ull << 20;
    if (!have_secs)
      o->seconds = 0.03;
  }
  return CLI_OK;
}

/* ---- keys ---- */

/* Stores keys[i] = the size bytes at src + i * size (untimed). */
static int put_all(kvds_client *c, const struct bench_keyset *ks,
                   const uint8_t *src, size_t size) {
  struct kvds_iov vals[R_PUT_CHUNK];
  for (size_t i = 0; i < ks->n; i += R_PUT_CHUNK) {
    size_t m = ks->n - i < R_PUT_CHUNK ? ks->n - i : R_PUT_CHUNK;
    for (size_t k = 0; k < m; k++)
      vals[k] = (struct kvds_iov){(void *)(src + (i + k) * size), size};
    int rc = kvds_mput(c, m, ks->iov + i, vals, NULL);
    if (rc)
      return rc;
  }
  return 0;
}

/* Waits (untimed, up to 10 s) until c's worker finds every key through the
 * directory: a put on A reaches a key's home asynchronously. */
static int wait_visible(kvds_client *c, const struct bench_keyset *ks) {
  uint8_t present[BENCH_EXISTS_BATCH];
  uint64_t deadline = kvds_now_ns() + 10000000000ull;
  for (size_t i = 0; i < ks->n && !bench_stopped();) {
    size_t m = ks->n - i < BENCH_EXISTS_BATCH ? ks->n - i : BENCH_EXISTS_BATCH;
    int rc = kvds_exists(c, m, ks->iov + i, present);
    if (rc)
      return rc;
    size_t k = 0;
    while (k < m && present[k])
      k++;
    i += k;
    if (k < m) {
      if (kvds_now_ns() > deadline)
        return KVDS_E_NOTFOUND;
      kvds_sleep_ms(1);
    }
  }
  return 0;
}

/* ---- workers ---- */

/* What c's worker has pulled from its peers since it started. */
struct pulled {
  uint64_t bytes;  /* all bytes (bytes_in) */
  uint64_t ucx_in; /* values read over UCX (ucx_in) */
};

/* Adds member m's counter `name` to *sum: 0, or KVDS_E_PROTO when it is
 * not a count. An absent counter (itself, a member it has no connection
 * state for, a worker older than the counter) adds nothing. */
static int add_count(json_t *m, const char *name, uint64_t *sum) {
  json_t *v = json_object_get(m, name);
  if (!v)
    return 0;
  if (!json_is_integer(v) || json_integer_value(v) < 0)
    return KVDS_E_PROTO;
  *sum += (uint64_t)json_integer_value(v);
  return 0;
}

/* c's worker's pulled counts: 0, the request's error or KVDS_E_PROTO. */
static int pulled_counts(kvds_client *c, struct pulled *out) {
  json_t *j, *ms, *m;
  int rc = bench_cluster_members(c, &j, &ms);
  if (rc)
    return rc;
  struct pulled sum = {0};
  size_t i;
  json_array_foreach(ms, i, m) {
    if ((rc = add_count(m, "bytes_in", &sum.bytes)) ||
        (rc = add_count(m, "ucx_in", &sum.ucx_in)))
      break;
  }
  json_decref(j);
  if (rc == 0)
    *out = sum;
  return rc;
}

/* --transport ucx, before the first case: B must read its peers over UCX
 * (its cluster status: transport.reads), else the bench would time TCP.
 * Notes B's UCX_TLS. CLI_OK, or CLI_FAIL after printing one line. */
static int ucx_check(struct remote *r) {
  json_t *j, *ms;
  int rc = bench_cluster_members(r->cb, &j, &ms);
  if (rc) {
    cli_err("bench", "cluster status of %s: %s", r->addr_b, kvds_strerror(rc));
    return CLI_FAIL;
  }
  json_t *t = json_object_get(j, "transport");
  const char *reads = json_string_value(json_object_get(t, "reads"));
  const char *why = json_string_value(json_object_get(t, "why"));
  const char *tls = json_string_value(json_object_get(t, "ucx_tls"));
  int ok = reads && strcmp(reads, "ucx") == 0;
  if (!ok)
    cli_err("bench",
            "--transport ucx: worker %s reads its peers over %s (%s); "
            "start it with --transport ucx",
            r->addr_b, reads ? reads : "TCP (it reports no transport)",
            why ? why : "an older worker");
  snprintf(r->ucx_tls, sizeof r->ucx_tls, "%s", tls ? tls : "");
  json_decref(j);
  return ok ? CLI_OK : CLI_FAIL;
}

/* The lanes of B's UCX endpoint to its peer, into r->ucx_lanes (left as
 * it was when B reports none). */
static void ucx_lanes(struct remote *r) {
  json_t *j, *ms, *m;
  if (bench_cluster_members(r->cb, &j, &ms))
    return;
  size_t i;
  json_array_foreach(ms, i, m) {
    const char *l = json_string_value(json_object_get(m, "ucx_lanes"));
    if (l && *l) {
      snprintf(r->ucx_lanes, sizeof r->ucx_lanes, "%s", l);
      break;
    }
  }
  json_decref(j);
}

/* ---- the streams of the raw TCP ceiling ---- */

/* Streams B uses for a call of `batch` values of `size` bytes from each
 * of the clients: its pull threads, at least 4 keys each (as the
 * cluster's resolver splits a batch: src/worker/cluster/jobs.c), and all of
 * them when a value large enough to come in ranges leaves some idle
 * (split.c). */
static int streams_for(const struct remote *r, uint64_t size, uint64_t batch) {
  uint64_t s = r->o->clients * ((batch + 3) / 4);
  if (size > R_SPLIT_WHOLE_MAX && s < r->o->pull_threads)
    s = r->o->pull_threads;
  return (int)(s < r->o->pull_threads ? s : r->o->pull_threads);
}

/* ---- the measurements ---- */

static void print_rpoint(const struct rpoint *p, const struct remote *r) {
  char sz[32], g[16], tg[16], q[16], p50[16], p99[16];
  if (p->skipped) {
    char cap[32];
    printf("%-9s %9s %6llu  skipped: one call reads more than --max-bytes "
           "(%s)\n",
           p->via, kvds_fmt_bytes(p->size, sz, sizeof sz),
           (unsigned long long)p->batch,
           kvds_fmt_bytes(r->o->max_bytes, cap, sizeof cap));
  } else if (r->o->ucx) {
    char uc[16];
    int perf = !p->ucx_why[0];
    printf("%-9s %9s %6llu %8d %8s %8s %8s %6s %9s %9s %7llu %8llu\n", p->via,
           kvds_fmt_bytes(p->size, sz, sizeof sz), (unsigned long long)p->batch,
           p->streams, bench_fmt3(p->gbps, g, sizeof g),
           bench_fmt3(p->tcp_gbps, tg, sizeof tg),
           perf ? bench_fmt3(p->ucx_gbps, uc, sizeof uc) : "-",
           perf ? bench_fmt3(p->gbps / p->ucx_gbps, q, sizeof q) : "-",
           bench_fmt3(p->p50_us, p50, sizeof p50),
           bench_fmt3(p->p99_us, p99, sizeof p99), (unsigned long long)p->calls,
           (unsigned long long)p->ucx_in);
    /* not found at all: said once, above the table */
    if (!perf && r->ucxperf[0])
      printf("          ucx_perftest skipped: %s\n", p->ucx_why);
    if (p->ucx_in == 0)
      printf("          !! NO value came over UCX (B's ucx_in did not grow): "
             "this row measured TCP\n");
    else if (p->ucx_in < p->calls * p->batch)
      printf("          !! only %llu of %llu values came over UCX, the rest "
             "over TCP (after a UCX error: see B's log)\n",
             (unsigned long long)p->ucx_in,
             (unsigned long long)(p->calls * p->batch));
  } else {
    printf("%-9s %9s %6llu %8d %8s %8s %6s %9s %9s %7llu\n", p->via,
           kvds_fmt_bytes(p->size, sz, sizeof sz), (unsigned long long)p->batch,
           p->streams, bench_fmt3(p->gbps, g, sizeof g),
           bench_fmt3(p->tcp_gbps, tg, sizeof tg),
           bench_fmt3(p->tcp_gbps > 0 ? p->gbps / p->tcp_gbps : 0, q, sizeof q),
           bench_fmt3(p->p50_us, p50, sizeof p50),
           bench_fmt3(p->p99_us, p99, sizeof p99),
           (unsigned long long)p->calls);
  }
  fflush(stdout);
}

/* One client of B reading its slice of a case's keys, `batch` per call,
 * deleting B's copies (untimed) each time it has read them all. */
struct reader {
  struct remote *r;
  kvds_client *c;
  const struct kvds_iov *keys;
  size_t nkeys, batch, size;
  struct kvds_get_opts go;
  struct bench_samples s; /* all rounds */
  size_t j;               /* the next key */
  uint64_t wall0;         /* when the case began */
  uint64_t round_ns;      /* this round: at least this long, */
  uint64_t round_calls;   /* and at least this many calls */
  pthread_t tid;
  int started, rc;
};

static void *reader_main(void *arg) {
  struct reader *rd = arg;
  struct remote *r = rd->r;
  size_t batch = rd->batch;
  struct kvds_value *v = calloc(batch, sizeof *v);
  int *res = calloc(batch, sizeof *res);
  int rc = v && res ? 0 : -ENOMEM;
  size_t j = rd->j, n0 = rd->s.n;
  uint64_t spent0 = rd->s.total_ns;
  while (rc == 0 && !bench_stopped()) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_mget_ex(rd->c, batch, rd->keys + j, &rd->go, v, res);
    uint64_t t1 = kvds_now_ns();
    for (size_t i = 0; rc == 0 && i < batch; i++)
      if ((rc = res[i]) == 0 && v[i].len != rd->size)
        rc = KVDS_E_RANGE;
    if (rc == 0)
      kvds_release(rd->c, batch, v);
    else
      for (size_t i = 0; i < batch; i++)
        if (res[i] == 0)
          kvds_release(rd->c, 1, &v[i]);
    if (rc || (rc = bench_samples_add(&rd->s, t1 - t0)))
      break;
    j += batch;
    if (j == rd->nkeys) {
      /* B now holds every key: drop its copies (A keeps its own). */
      if ((rc = bench_delete_keys(rd->c, rd->keys, rd->nkeys)))
        break;
      j = 0;
    }
    if (rd->s.n - n0 >= rd->round_calls &&
        (rd->s.total_ns - spent0 >= rd->round_ns ||
         t1 - rd->wall0 >= 10 * r->phase_ns + 2000000000ull))
      break;
  }
  free(v);
  free(res);
  rd->j = j;
  rd->rc = rc;
  return NULL;
}

/* Runs n readers at once (the first on this thread). The first error. */
static int run_readers(struct reader *rd, size_t n) {
  int rc = 0;
  for (size_t t = 1; t < n; t++) {
    if ((rc = -pthread_create(&rd[t].tid, NULL, reader_main, &rd[t])))
      break;
    rd[t].started = 1;
  }
  if (rc == 0)
    reader_main(&rd[0]);
  for (size_t t = 1; t < n; t++)
    if (rd[t].started)
      pthread_join(rd[t].tid, NULL);
  for (size_t t = 0; rc == 0 && t < n; t++)
    rc = rd[t].rc;
  return rc;
}

/* --transport ucx: ucx_perftest's ucp_get of p's size with as many gets in
 * flight as a call of all clients reads values (B posts one get per value
 * and waits for all of them), for as many values as the case read (at
 * least 4 windows, 32 gets), after the case's reads. p->ucx_gbps, or the
 * reason in p->ucx_why. */
static void ucx_ceiling(struct remote *r, struct rpoint *p) {
  if (!r->ucxperf[0]) {
    snprintf(p->ucx_why, sizeof p->ucx_why,
             "ucx_perftest not found in $PATH (Debian: ucx-utils)");
    return;
  }
  uint64_t window = p->batch * r->o->clients, iters = p->calls * p->batch;
  if (iters < 4 * window)
    iters = 4 * window;
  if (iters < 32)
    iters = 32;
  if (iters > 1000000)
    iters = 1000000;
  char sz[32];
  if (r->o->json)
    bench_progress("remote", "ucx_perftest ucp_get %s, %llu in flight",
                   kvds_fmt_bytes(p->size, sz, sizeof sz),
                   (unsigned long long)window);
  char lanes[sizeof r->perf_lanes];
  if (bench_ucxperf_get(r->ucxperf, r->dir, (size_t)p->size, window, iters,
                        &p->ucx_gbps, lanes, sizeof lanes, p->ucx_why,
                        sizeof p->ucx_why) != CLI_OK) {
    if (!p->ucx_why[0])
      snprintf(p->ucx_why, sizeof p->ucx_why, "interrupted");
  } else if (lanes[0]) {
    snprintf(r->perf_lanes, sizeof r->perf_lanes, "%s", lanes);
  }
}

/* Puts a fresh set of values on A, times reads of them on B (hint = A, or
 * none: through the directory), deleting B's copies between passes, then
 * raw TCP moving the same bytes (and with --transport ucx, ucx_perftest). */
static int run_rpoint(struct remote *r, const char *via, size_t size,
                      size_t batch) {
  struct rpoint *p = &r->pts[r->npts++];
  *p = (struct rpoint){.via = via,
                       .size = size,
                       .batch = batch,
                       .streams = streams_for(r, size, batch)};
  char sz[32];
  if ((uint64_t)size * batch * r->o->clients > r->o->max_bytes) {
    p->skipped = 1;
    if (!r->o->json)
      print_rpoint(p, r);
    return 0;
  }
  if (r->o->json)
    bench_progress("remote", "%s %s x %zu", via,
                   kvds_fmt_bytes(size, sz, sizeof sz), batch);
  size_t nkeys = (size_t)(r->o->max_bytes / size);
  if (nkeys > BENCH_KEYS_MAX)
    nkeys = BENCH_KEYS_MAX;
  nkeys -= nkeys % (batch * r->o->clients);
  struct bench_keyset ks = {0};
  struct bench_samples s = {0};
  char tag[48];
  snprintf(tag, sizeof tag, "%s-%zu-%zu", via, size, batch);
  int rc = -ENOMEM, put = 0;
  const char *what = ""; /* names the failing step when not a read */
  if (bench_keyset_make(&ks, r->prefix, tag, nkeys))
    goto out;
  put = 1;
  if ((rc = put_all(r->ca, &ks, r->src, size)))
    goto out;
  if (strcmp(via, "directory") == 0 && (rc = wait_visible(r->cb, &ks)))
    goto out;
  struct kvds_get_opts go = {
      .wait_ms = 0, .hint = strcmp(via, "hint") == 0 ? r->addr_a : NULL};
  struct pulled pulled0, pulled1;
  if ((rc = pulled_counts(r->cb, &pulled0))) {
    what = "pulled-bytes count of B: ";
    goto out;
  }
  struct reader rd[R_CLIENTS_MAX];
  size_t nc = (size_t)r->o->clients, slice = nkeys / nc;
  uint64_t wall0 = kvds_now_ns();
  for (size_t t = 0; t < nc; t++)
    rd[t] = (struct reader){.r = r,
                            .c = r->cbx[t],
                            .keys = ks.iov + t * slice,
                            .nkeys = slice,
                            .batch = batch,
                            .size = size,
                            .go = go,
                            .wall0 = wall0};
  /* Reads and raw TCP take turns: per round, the clients read for a share
   * of the case's time (at least 3 calls in all), then raw TCP moves the
   * bytes of as many calls of all clients at once as the slowest client
   * made. */
  uint64_t tcp_ns = 0, tcp_calls = 0, tcp_pos = 0;
  for (int round = 0; round < R_ROUNDS && rc == 0 && !bench_stopped();
       round++) {
    uint64_t calls0 = 0;
    for (size_t t = 0; t < nc; t++) {
      rd[t].round_ns = r->phase_ns / R_ROUNDS;
      rd[t].round_calls =
          round == R_ROUNDS - 1 && rd[t].s.n < 3 ? 3 - rd[t].s.n : 1;
      calls0 += rd[t].s.n;
    }
    if ((rc = run_readers(rd, nc)) || bench_stopped())
      break;
    uint64_t calls = 0;
    for (size_t t = 0; t < nc; t++)
      calls += rd[t].s.n;
    uint64_t ns = 0, tc = (calls - calls0 + nc - 1) / nc;
    rc = bench_tcp_run(&r->tcp, p->streams, nc * batch * size, nkeys * size, tc,
                       &tcp_pos, &ns);
    tcp_ns += ns;
    tcp_calls += tc;
    if (rc == KVDS_E_TIMEOUT)
      what = "raw TCP: a stream stalled: ";
    else if (rc)
      what = "raw TCP: ";
  }
  for (size_t t = 0; t < nc; t++) {
    p->gbps += rd[t].s.total_ns ? (double)(rd[t].s.n * batch * size) /
                                      (double)rd[t].s.total_ns
                                : 0;
    for (size_t k = 0; rc == 0 && k < rd[t].s.n; k++)
      rc = bench_samples_add(&s, rd[t].s.ns[k]);
    free(rd[t].s.ns);
  }
  if (rc || bench_stopped())
    goto out;
  /* B counts a pull's bytes before the seal that answers the call, so the
   * count is complete once the last call has returned. */
  if ((rc = pulled_counts(r->cb, &pulled1))) {
    what = "pulled-bytes count of B: ";
    goto out;
  }
  if (pulled1.bytes < pulled0.bytes || pulled1.ucx_in < pulled0.ucx_in) {
    rc = KVDS_E_PROTO;
    what = "B's pulled counts went backwards: ";
    goto out;
  }
  p->pulled = pulled1.bytes - pulled0.bytes;
  p->ucx_in = pulled1.ucx_in - pulled0.ucx_in;
  p->calls = s.n;
  p->bytes = s.n * batch * size;
  bench_samples_p50_p99(&s, &p->p50_us, &p->p99_us);
  p->tcp_gbps =
      tcp_ns ? (double)(tcp_calls * nc * batch * size) / (double)tcp_ns : 0;
  if (r->o->ucx) {
    if (p->ucx_in == 0)
      r->no_ucx_rows++;
    ucx_ceiling(r, p);
    if (bench_stopped())
      goto out;
  }
  if (!r->o->json)
    print_rpoint(p, r);
out:
  if (put) {
    int drc = bench_delete_keys(r->cb, ks.iov, ks.n);
    if (drc == 0)
      drc = bench_delete_keys(r->ca, ks.iov, ks.n);
    if (rc == 0)
      rc = drc;
  }
  bench_keyset_free(&ks);
  free(s.ns);
  if (rc)
    cli_err("bench", "remote %s %s x %zu: %s%s", via,
            kvds_fmt_bytes(size, sz, sizeof sz), batch, what,
            kvds_strerror(rc));
  return rc;
}

/* Latency of single lookups through client c over `keys` (exists of one
 * key at a time, cycling, when chain is 0; else lookup_prefix of the whole
 * chain), each checked to find everything. */
static int lookup_lat(struct remote *r, kvds_client *c,
                      const struct bench_keyset *ks, int chain,
                      struct rlat *out) {
  struct bench_samples s = {0};
  int rc = 0;
  uint64_t wall0 = kvds_now_ns(), t1 = wall0;
  for (size_t i = 0; rc == 0 && !bench_stopped(); i++) {
    uint64_t t0 = kvds_now_ns();
    uint8_t present = 0;
    size_t count = 0;
    if (chain)
      rc = kvds_lookup_prefix(c, ks->n, ks->iov, &count);
    else
      rc = kvds_exists(c, 1, &ks->iov[i % ks->n], &present);
    t1 = kvds_now_ns();
    if (rc == 0 && (chain ? count != ks->n : !present))
      rc = KVDS_E_NOTFOUND;
    if (rc == 0)
      rc = bench_samples_add(&s, t1 - t0);
    if (s.n >= 100 && t1 - wall0 >= r->phase_ns / 2)
      break;
  }
  if (rc == 0) {
    out->n = s.n;
    bench_samples_p50_p99(&s, &out->p50_us, &out->p99_us);
  }
  free(s.ns);
  return rc;
}

static int run_lookups(struct remote *r) {
  static uint8_t val[64];
  struct bench_keyset one = {0}, chain = {0};
  struct kvds_iov vals[R_LAT_KEYS];
  for (int i = 0; i < R_LAT_KEYS; i++)
    vals[i] = (struct kvds_iov){val, sizeof val};
  int put = 0;
  int rc = bench_keyset_make(&one, r->prefix, "lookup", R_LAT_KEYS);
  if (rc == 0)
    rc = bench_keyset_make(&chain, r->prefix, "chain", R_CHAIN);
  if (rc == 0) {
    put = 1;
    rc = kvds_mput(r->ca, R_LAT_KEYS, one.iov, vals, NULL);
  }
  if (rc == 0)
    rc = kvds_mput(r->ca, R_CHAIN, chain.iov, vals, NULL);
  if (rc == 0)
    rc = wait_visible(r->cb, &one);
  if (rc == 0)
    rc = wait_visible(r->cb, &chain);
  if (rc == 0)
    rc = lookup_lat(r, r->cb, &one, 0, &r->ex_remote);
  if (rc == 0)
    rc = lookup_lat(r, r->ca, &one, 0, &r->ex_local);
  if (rc == 0)
    rc = lookup_lat(r, r->cb, &chain, 1, &r->pre_remote);
  if (rc == 0)
    rc = lookup_lat(r, r->ca, &chain, 1, &r->pre_local);
  if (put) {
    int drc = bench_delete_keys(r->ca, one.iov, one.n);
    if (drc == 0)
      drc = bench_delete_keys(r->ca, chain.iov, chain.n);
    if (rc == 0)
      rc = drc;
  }
  bench_keyset_free(&one);
  bench_keyset_free(&chain);
  if (rc && !bench_stopped())
    cli_err("bench", "remote lookups: %s", kvds_strerror(rc));
  return rc;
}

/* ---- reporting ---- */

static void print_remote_header(const struct remote *r) {
  char mem[32], cap[32];
  printf("kvds bench remote: worker A %s, worker B %s (%s)\n", r->addr_a,
         r->addr_b, r->started ? "started by the bench" : "running workers");
  if (r->started)
    printf("each worker: %s pool, %llu pull threads, %llu I/O thread%s\n",
           kvds_fmt_bytes(r->o->memory, mem, sizeof mem),
           (unsigned long long)r->o->pull_threads,
           (unsigned long long)r->o->threads, r->o->threads == 1 ? "" : "s");
  if (r->o->clients > 1)
    printf("%llu client threads read at once, each its own keys; GB/s is "
           "their sum\n",
           (unsigned long long)r->o->clients);
  printf("reads: kvds_mget_ex on B through a %s client\nof B; the values "
         "live on A only and are pulled A->B (xxh3 verified) inside\nthe "
         "call. At most %s put on A per case, >= %.2f s of reads per case.\n"
         "rawTCP: the same bytes per call over as many loopback streams, "
         "received\nstraight into a buffer. GB/s = 10^9 B/s; latency is per "
         "call.\n\n",
         kvds_client_is_local(r->cb) ? "local shared-memory (zero-copy)"
                                     : "TCP (not zero-copy)",
         kvds_fmt_bytes(r->o->max_bytes, cap, sizeof cap),
         (double)r->phase_ns / 1e9);
  if (!r->o->ucx) {
    printf("via            size  batch  streams     GB/s  rawTCP  ratio    "
           "p50 us    p99 us   calls\n");
    return;
  }
  const char *env = getenv("UCX_TLS");
  printf("transport: UCX, B reads A one-sided (ucp_get)%s.\nUCX_TLS=%s (%s)."
         "\n",
         r->started ? "; both workers started with\n--transport ucx" : "",
         r->ucx_tls[0] ? r->ucx_tls : "?",
         env && *env ? "from the environment"
                     : "unset: UCX's own choice, as the workers'");
  if (r->ucxperf[0])
    printf("ucxperf: %s, ucp_get of the same size; server and\n"
           "client are children of the bench on loopback, in its environment, "
           "run after\neach case's reads with as many gets in flight as a "
           "call reads values (-O\nbatch x clients) and error handling as "
           "the workers' endpoints (-e).\n"
           "ratio = GB/s / ucxperf.\n",
           r->ucxperf);
  else
    printf("ucxperf: skipped: ucx_perftest not found in $PATH (Debian: "
           "ucx-utils); kvds\nfigures only, ratio -.\n");
  printf("viaUCX: values B read from A over UCX in the case (its ucx_in), of "
         "calls x\nbatch.\n\n");
  printf("via            size  batch  streams     GB/s  rawTCP  ucxperf  ratio "
         "   p50 us    p99 us   calls   viaUCX\n");
}

static void print_remote_footer(const struct remote *r) {
  char a[16], b[16], c[16], d[16];
  printf("\n'hint': the call names A as the holder; 'directory': no hint, B "
         "asks each\nkey's home worker where it lives, then pulls.\n\n");
  printf("lookup latency (one call, us)          p50       p99\n");
  printf("exists, 1 key, on B (held on A)   %9s %9s\n",
         bench_fmt3(r->ex_remote.p50_us, a, sizeof a),
         bench_fmt3(r->ex_remote.p99_us, b, sizeof b));
  printf("exists, 1 key, on A (local hit)   %9s %9s\n",
         bench_fmt3(r->ex_local.p50_us, c, sizeof c),
         bench_fmt3(r->ex_local.p99_us, d, sizeof d));
  printf("lookup_prefix, %d keys, on B      %9s %9s\n", R_CHAIN,
         bench_fmt3(r->pre_remote.p50_us, a, sizeof a),
         bench_fmt3(r->pre_remote.p99_us, b, sizeof b));
  printf("lookup_prefix, %d keys, on A      %9s %9s\n", R_CHAIN,
         bench_fmt3(r->pre_local.p50_us, c, sizeof c),
         bench_fmt3(r->pre_local.p99_us, d, sizeof d));
  if (r->o->ucx) {
    printf("\nUCX lanes: B's endpoint to A: %s\n",
           r->ucx_lanes[0] ? r->ucx_lanes : "(B reports none)");
    if (r->perf_lanes[0])
      printf("           ucx_perftest's client: %s\n", r->perf_lanes);
  }
}

static json_t *rlat_json(const struct rlat *l) {
  return json_pack("{s:f, s:f, s:I}", "p50_us", l->p50_us, "p99_us", l->p99_us,
                   "calls", (json_int_t)l->n);
}

static int print_remote_json(const struct remote *r) {
  json_t *root = json_object(), *pts = json_array();
  json_object_set_new(root, "worker_a", json_string(r->addr_a));
  json_object_set_new(root, "worker_b", json_string(r->addr_b));
  json_object_set_new(root, "started", json_boolean(r->started));
  json_object_set_new(root, "shared_memory",
                      json_boolean(kvds_client_is_local(r->cb)));
  if (r->started) {
    json_object_set_new(root, "memory", json_integer((json_int_t)r->o->memory));
    json_object_set_new(root, "io_threads",
                        json_integer((json_int_t)r->o->threads));
  }
  json_object_set_new(root, "clients", json_integer((json_int_t)r->o->clients));
  json_object_set_new(root, "pull_threads",
                      json_integer((json_int_t)r->o->pull_threads));
  json_object_set_new(root, "max_bytes",
                      json_integer((json_int_t)r->o->max_bytes));
  json_object_set_new(root, "seconds_per_case",
                      json_real((double)r->phase_ns / 1e9));
  json_object_set_new(root, "transport",
                      json_string(r->o->ucx ? "ucx" : "tcp"));
  if (r->o->ucx) {
    const char *env = getenv("UCX_TLS");
    json_object_set_new(root, "ucx_tls", json_string(r->ucx_tls));
    json_object_set_new(root, "ucx_tls_env",
                        env ? json_string(env) : json_null());
    json_object_set_new(root, "ucx_lanes", json_string(r->ucx_lanes));
    json_object_set_new(root, "ucx_perftest",
                        r->ucxperf[0] ? json_string(r->ucxperf) : json_null());
    json_object_set_new(root, "ucx_perftest_lanes", json_string(r->perf_lanes));
  }
  for (int i = 0; i < r->npts; i++) {
    const struct rpoint *p = &r->pts[i];
    json_t *o = json_pack("{s:s, s:I, s:I, s:i}", "via", p->via, "size",
                          (json_int_t)p->size, "batch", (json_int_t)p->batch,
                          "streams", p->streams);
    if (p->skipped) {
      json_object_set_new(o, "skipped", json_string("exceeds max_bytes"));
    } else {
      double tcp_ratio = p->tcp_gbps > 0 ? p->gbps / p->tcp_gbps : 0;
      json_object_set_new(o, "gbps", json_real(p->gbps));
      json_object_set_new(o, "tcp_gbps", json_real(p->tcp_gbps));
      if (!r->o->ucx) {
        json_object_set_new(o, "ratio", json_real(tcp_ratio));
      } else {
        /* ratio is kvds over ucx_perftest: null without it */
        if (p->ucx_why[0])
          json_object_set_new(o, "ucx_perftest_skipped",
                              json_string(p->ucx_why));
        else
          json_object_set_new(o, "ucx_perftest_gbps", json_real(p->ucx_gbps));
        json_object_set_new(o, "ratio",
                            p->ucx_why[0] ? json_null()
                                          : json_real(p->gbps / p->ucx_gbps));
        json_object_set_new(o, "tcp_ratio", json_real(tcp_ratio));
        json_object_set_new(o, "values",
                            json_integer((json_int_t)(p->calls * p->batch)));
        json_object_set_new(o, "ucx_in", json_integer((json_int_t)p->ucx_in));
      }
      json_object_set_new(o, "p50_us", json_real(p->p50_us));
      json_object_set_new(o, "p99_us", json_real(p->p99_us));
      json_object_set_new(o, "calls", json_integer((json_int_t)p->calls));
      json_object_set_new(o, "bytes", json_integer((json_int_t)p->bytes));
      json_object_set_new(o, "pulled_bytes",
                          json_integer((json_int_t)p->pulled));
    }
    json_array_append_new(pts, o);
  }
  json_object_set_new(root, "reads", pts);
  json_object_set_new(root, "lookup",
                      json_pack("{s:o, s:o, s:o, s:o, s:i}", "exists_remote",
                                rlat_json(&r->ex_remote), "exists_local",
                                rlat_json(&r->ex_local), "prefix_remote",
                                rlat_json(&r->pre_remote), "prefix_local",
                                rlat_json(&r->pre_local), "chain", R_CHAIN));
  return bench_print_json(root);
}

/* ---- setup and teardown ---- */

static int remote_start_workers(struct remote *r) {
  char mem[32];
  bench_progress("remote", "starting two workers (%s pools)...",
                 kvds_fmt_bytes(r->o->memory, mem, sizeof mem));
  r->started = 1;
  if (bench_pair_start(r->w, r->dir, r->o->memory, r->o->pull_threads,
                       r->o->threads, r->o->ucx ? "ucx" : "tcp"))
    return CLI_FAIL;
  r->addr_a = r->w[0].addr;
  r->addr_b = r->w[1].addr;
  return CLI_OK;
}

static void remote_cleanup(struct remote *r) {
  if (r->tcp_up)
    bench_tcp_teardown(&r->tcp);
  kvds_client_close(r->ca);
  kvds_client_close(r->cb);
  for (int i = 1; i < R_CLIENTS_MAX; i++) {
    kvds_client_close(r->cbx[i]);
    r->cbx[i] = NULL;
  }
  r->ca = r->cb = NULL;
  for (int i = 0; i < 2; i++)
    bench_worker_stop(&r->w[i]);
  if (r->dir[0]) {
    /* The directory is the bench's own (mkdtemp) and its workers are gone:
     * whatever they left there (a socket after a hard kill, a pidfile)
     * goes with it. */
    int rc = bench_remove_tree(r->dir);
    if (rc)
      cli_err("bench", "cannot remove %s: %s", r->dir, kvds_strerror(rc));
    r->dir[0] = '\0';
  }
}

static int remote_measure(struct remote *r) {
  int rc = 0;
  if (!r->o->json)
    print_remote_header(r);
  for (int i = 0; i < r->o->nsizes && rc == 0 && !bench_stopped(); i++)
    for (int j = 0; j < r->o->nbatches && rc == 0 && !bench_stopped(); j++)
      rc = run_rpoint(r, "hint", (size_t)r->o->sizes[i],
                      (size_t)r->o->batches[j]);
  for (int j = 0; j < r->o->nbatches && rc == 0 && !bench_stopped(); j++)
    rc = run_rpoint(r, "directory", (size_t)r->o->dir_size,
                    (size_t)r->o->batches[j]);
  if (rc == 0 && !bench_stopped()) {
    if (r->o->json)
      bench_progress("remote", "lookup latency");
    rc = run_lookups(r);
  }
  return rc;
}

int bench_remote(int argc, char **argv) {
  struct remote_opts o = {0};
  int rc = remote_parse(argc, argv, &o);
  if (rc)
    return rc < 0 ? CLI_OK : rc;
  struct remote r = {.o = &o, .addr_a = o.addr_a, .addr_b = o.addr_b};
  r.phase_ns = (uint64_t)(o.seconds * 1e9);
  snprintf(r.prefix, sizeof r.prefix, "kvds-bench-remote/%ld/", (long)getpid());
  int ret = CLI_FAIL;
  bench_catch_signals();

  /* source of the puts and of raw TCP, destination of raw TCP: as large as
   * a case's set of values, touched before timing */
  r.region = (size_t)o.max_bytes;
  if (bench_alloc_buffers(r.region, &r.src, &r.dst)) {
    cli_err("bench", "cannot allocate 2 x %zu MiB of buffers", r.region >> 20);
    return CLI_FAIL;
  }

  uint64_t t0 = kvds_now_ns();
  /* the started workers' sockets and logs, ucx_perftest's output */
  const char *tmp = getenv("TMPDIR");
  if ((!o.addr_a || o.ucx) &&
      bench_make_dir(tmp && *tmp ? tmp : "/tmp", "kvds-bench-remote", r.dir,
                     sizeof r.dir))
    goto out;
  if (!o.addr_a && remote_start_workers(&r))
    goto out;
  if (cli_connect("bench", r.addr_a, 0, &r.ca, NULL, 0) ||
      cli_connect("bench", r.addr_b, 0, &r.cb, NULL, 0))
    goto out;
  r.cbx[0] = r.cb;
  for (uint64_t i = 1; i < o.clients; i++)
    if (cli_connect("bench", r.addr_b, 0, &r.cbx[i], NULL, 0))
      goto out;
  kvds_client *cs[2] = {r.ca, r.cb};
  const char *addrs[2] = {r.addr_a, r.addr_b};
  if (bench_pair_wait_peered(cs, addrs, kvds_now_ns() + 20000000000ull))
    goto out;
  if (r.started)
    bench_progress("remote", "workers %s and %s up in %.1f s", r.addr_a,
                   r.addr_b, (double)(kvds_now_ns() - t0) / 1e9);
  if (o.ucx) {
    char path[PATH_MAX];
    if (ucx_check(&r))
      goto out;
    if (bench_find_in_path("ucx_perftest", path, sizeof path))
      snprintf(r.ucxperf, sizeof r.ucxperf, "%s", path);
  }
  if ((rc = bench_tcp_setup(&r.tcp, (int)o.pull_threads, r.src, r.dst,
                            r.region))) {
    cli_err("bench", "raw TCP streams: %s", kvds_strerror(rc));
    goto out;
  }
  r.tcp_up = 1;
  rc = remote_measure(&r);
  if ((rc || bench_stopped()) && !r.started) {
    bench_sweep(r.cb, r.prefix);
    bench_sweep(r.ca, r.prefix);
  }
  if (bench_stopped()) {
    fflush(stdout);
    fprintf(stderr, "kvds bench remote: interrupted%s\n",
            r.started ? "; the workers were stopped"
                      : "; the bench's keys were removed");
    ret = 128 + bench_stopped();
  } else if (rc == 0) {
    if (o.ucx)
      ucx_lanes(&r);
    ret = o.json ? print_remote_json(&r) : (print_remote_footer(&r), CLI_OK);
    if (r.no_ucx_rows) {
      fflush(stdout);
      cli_err("bench",
              "--transport ucx: in %d row%s no value came over UCX (B's "
              "ucx_in did not grow): those figures are TCP's",
              r.no_ucx_rows, r.no_ucx_rows == 1 ? "" : "s");
      ret = CLI_FAIL;
    }
  }
out:
  if (bench_stopped() && ret == CLI_FAIL)
    ret = 128 + bench_stopped();
  remote_cleanup(&r);
  free(r.src);
  free(r.dst);
  return ret;
}
