/*
 * peers.c — `kvds bench peers`: kvds next to Redis and Mooncake on this
 * machine, every process started by the bench on loopback in a fresh
 * temporary directory, and the ceilings (memcpy, raw TCP) measured in the
 * same run; one table (or one JSON document) of the same work: value sizes
 * x batch x client threads, GET and PUT GB/s, with kvds / peer ratios.
 *
 * Systems (each client thread has its own client or connection; a call
 * moves `batch` values):
 *   memcpy      each thread copies its values from its source slice to its
 *               destination slice (the local ceiling)
 *   tcp         raw TCP: one loopback stream per thread, the call's bytes
 *               received straight into a buffer (tcp.c; the remote
 *               ceiling)
 *   kvds-local  worker A through a shared-memory client: put = kvds_mput,
 *               get = kvds_mget_into (copies out of the pool)
 *   kvds-pull   get only: kvds_mget_ex on worker B (shared-memory client,
 *               hint = A) of values that live on A: B pulls them over its
 *               peer connections inside the call (`kvds bench remote`)
 *   kvds-tcp    worker A through a TCP client (KVDS_CONNECT_TCP_ONLY):
 *               kvds_mput / kvds_mget_into, the values crossing the socket
 *               (received into the buffers) — the like-for-like of a
 *               Redis client
 *   redis       redis.c
 *   mooncake-te, mooncake-store
 *               python/kvds/bench_peers_mooncake.py in $KVDS_PYTHON with
 *               the wheel's overlay (--peers-path) on PYTHONPATH and its
 *               CUDA stand-ins on LD_LIBRARY_PATH: it starts Mooncake's
 *               processes once and measures one point at a time as asked
 *               over two FIFOs in the bench's directory (JSON lines)
 * The points run one after the other, every system at each: a point's
 * figures come from the same minute of a shared machine. A peer that
 * cannot start or fails is one "skipped: <reason>" line; the rest runs.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/bench/bench.h"
#include "common/clock.h"
#include "common/util.h"

#define P_THREADS_MAX 16
#define P_RING_MAX (64ull << 20) /* values per thread's key ring */
#define P_PUT_CHUNK 64           /* values per untimed kvds_mput */
#define P_ROWS_MAX 4096
#define P_REGION_MIN (256ull << 20) /* src and dst, each */

enum sys {
  S_MEMCPY,
  S_TCP,
  S_REDIS,
  S_MC_TE,
  S_MC_STORE,
  S_KVDS_LOCAL,
  S_KVDS_PULL,
  S_KVDS_TCP,
  S_N
};

/* Names in JSON and in --json's "skipped"; labels in the table. */
static const char *const SYS_NAME[S_N] = {
    "memcpy",         "tcp",        "redis",     "mooncake-te",
    "mooncake-store", "kvds-local", "kvds-pull", "kvds-tcp"};
static const char *const SYS_LABEL[S_N][2] = {
    /* get, put */
    {"memcpy (ceiling)", "memcpy (ceiling)"},
    {"raw TCP (ceiling)", "raw TCP (ceiling)"},
    {"redis MGET", "redis MSET"},
    {"mooncake TE read", "mooncake TE write"},
    {"mooncake store get", "mooncake store put"},
    {"kvds local get+copy", "kvds local put"},
    {"kvds pull B<-A", NULL},
    {"kvds TCP client get", "kvds TCP client put"}};
static const char *const SYS_SHORT[S_N] = {
    "memcpy", "raw TCP", "redis", "mc-te", "mc-store", "", "", ""};

struct peers_opts {
  uint64_t sizes[BENCH_LIST_MAX];
  int nsizes;
  uint64_t batches[BENCH_LIST_MAX];
  int nbatches;
  uint64_t threads[BENCH_LIST_MAX];
  int nthreads;
  uint64_t max_bytes;
  double seconds;
  const char *peers_path; /* the Mooncake overlay, or NULL */
  int json, quick;
};

struct prow {
  enum sys sys;
  int put;
  uint64_t size, batch, threads;
  double gbps;
  uint64_t calls;
};

struct peers {
  struct peers_opts *o;
  char dir[PATH_MAX];
  struct bench_worker w[2];
  kvds_client *ca;                /* A, untimed work */
  kvds_client *cl[P_THREADS_MAX]; /* A, shared memory */
  kvds_client *ct[P_THREADS_MAX]; /* A, TCP */
  kvds_client *cb[P_THREADS_MAX]; /* B, shared memory */
  struct bench_redis redis;
  struct bench_tcp tcp;
  int tcp_up;
  uint8_t *src, *dst;
  size_t region;
  uint64_t memory;
  char why[S_N][256]; /* a skipped system's reason; "" = measured */
  char mc_version[64];
  pid_t mc_pid;         /* the Mooncake driver */
  int mc_cmd, mc_reply; /* its FIFOs */
  char mcbuf[65536];    /* its replies */
  size_t mclen, mcoff;
  struct prow *rows;
  int nrows;
};

/* ---- options ---- */

static int peers_parse(int argc, char **argv, struct peers_opts *o) {
  enum { O_SIZES = 256, O_BATCH, O_THREADS, O_SECONDS, O_MAX, O_PEERS };
  static const struct option lo[] = {
      {"sizes", required_argument, NULL, O_SIZES},
      {"batch", required_argument, NULL, O_BATCH},
      {"threads", required_argument, NULL, O_THREADS},
      {"seconds", required_argument, NULL, O_SECONDS},
      {"max-bytes", required_argument, NULL, O_MAX},
      {"peers-path", required_argument, NULL, O_PEERS},
      BENCH_OPTS_COMMON,
      {NULL, 0, NULL, 0}};
  int c, first = 1, quick = 0, have_sizes = 0, have_batch = 0, have_threads = 0,
         have_secs = 0, have_max = 0;
  bench_parse_list("--sizes", "64KiB,256KiB,1MiB,4MiB,16MiB", 1, o->sizes,
                   &o->nsizes);
  bench_parse_list("--batch", "1,8,64", 0, o->batches, &o->nbatches);
  bench_parse_list("--threads", "1,4", 0, o->threads, &o->nthreads);
  o->max_bytes = 512ull << 20;
  o->seconds = 0.2;
  while ((c = cli_getopt("bench", argc, argv, "h", lo, &first)) != -1) {
    int rc = CLI_OK;
    switch (c) {
    case O_SIZES:
      rc = bench_parse_list("--sizes", optarg, 1, o->sizes, &o->nsizes);
      have_sizes = 1;
      break;
    case O_BATCH:
      rc = bench_parse_list("--batch", optarg, 0, o->batches, &o->nbatches);
      have_batch = 1;
      break;
    case O_THREADS:
      rc = bench_parse_list("--threads", optarg, 0, o->threads, &o->nthreads);
      for (int i = 0; rc == 0 && i < o->nthreads; i++)
        if (o->threads[i] > P_THREADS_MAX) {
          cli_err("bench", "--threads: at most %d", P_THREADS_MAX);
          rc = CLI_USAGE;
        }
      have_threads = 1;
      break;
    case O_SECONDS:
      rc = bench_parse_double_in("--seconds", optarg, 0.01, 600, &o->seconds);
      have_secs = 1;
      break;
    case O_MAX:
      rc = bench_parse_u64_in("--max-bytes", optarg, 1, 1ull << 20, 16ull << 30,
                              &o->max_bytes);
      have_max = 1;
      break;
    case O_PEERS:
      o->peers_path = optarg;
      break;
    default:
      rc = bench_parse_common(c, &quick, &o->json);
    }
    if (rc)
      return rc;
  }
  if (bench_parse_end("peers", argc, argv))
    return CLI_USAGE;
  o->quick = quick;
  if (quick) {
    if (!have_sizes)
      bench_parse_list("--sizes", "1MiB", 1, o->sizes, &o->nsizes);
    if (!have_batch)
      bench_parse_list("--batch", "8", 0, o->batches, &o->nbatches);
    if (!have_threads)
      bench_parse_list("--threads", "1", 0, o->threads, &o->nthreads);
    if (!have_secs)
      o->seconds = 0.05;
    if (!have_max)
      o->max_bytes = 32ull << 20;
  }
  return CLI_OK;
}

/* The Mooncake overlay: --peers-path, else $KVDS_PEERS_PATH, else
 * <venv>/peers next to $KVDS_PYTHON's <venv>/bin/python when that exists
 * (scripts/install-deps.sh puts it there), else NULL. */
static const char *peers_path(const struct peers_opts *o, char *buf,
                              size_t cap) {
  if (o->peers_path)
    return o->peers_path;
  const char *env = getenv("KVDS_PEERS_PATH");
  if (env && *env)
    return env;
  const char *py = getenv("KVDS_PYTHON");
  const char *bin = py ? strrchr(py, '/') : NULL;
  struct stat st;
  if (bin && bin - py >= 4 && strncmp(bin - 4, "/bin", 4) == 0 &&
      snprintf(buf, cap, "%.*s/peers", (int)(bin - 4 - py), py) < (int)cap &&
      stat(buf, &st) == 0 && S_ISDIR(st.st_mode))
    return buf;
  return NULL;
}

/* ---- the case harness ---- */

size_t bench_case_slots(const struct bench_case *bc) {
  uint64_t ring = bc->max_bytes / (uint64_t)bc->threads;
  if (ring > P_RING_MAX)
    ring = P_RING_MAX;
  size_t n = (size_t)(ring / bc->size) / bc->batch * bc->batch;
  return n < bc->batch ? bc->batch : n;
}

/* Offset of value i of thread t's call number `call` in src or dst: the
 * calls walk as many bytes of the thread's slice as its key ring holds,
 * so that the copies of memcpy and of the stores meet the same working set
 * (far larger than the caches in a full run). */
static size_t case_off(const struct bench_case *bc, int t, uint64_t call,
                       size_t i) {
  size_t slice = bc->region / (size_t)bc->threads;
  size_t steps = bench_case_slots(bc) / bc->batch;
  return slice * (size_t)t +
         (size_t)(call % (steps ? steps : 1)) * bc->batch * bc->size +
         i * bc->size;
}

const uint8_t *bench_case_src(const struct bench_case *bc, int t, uint64_t call,
                              size_t i) {
  return bc->src + case_off(bc, t, call, i);
}

static uint8_t *case_dst(const struct bench_case *bc, int t, uint64_t call,
                         size_t i) {
  return bc->dst + case_off(bc, t, call, i);
}

struct case_run {
  const struct bench_case *bc;
  bench_call_fn fn;
  void *ctx;
  pthread_mutex_t lock;
  pthread_cond_t gate; /* opens once every thread is there (or failed) */
  int open;            /* under lock */
  int err;             /* the first call's error; atomic */
  struct case_thread {
    struct case_run *r;
    int t;
    pthread_t th;
    uint64_t busy_ns, calls;
  } th[P_THREADS_MAX];
};

static void *case_thread(void *arg) {
  struct case_thread *ct = arg;
  struct case_run *r = ct->r;
  const struct bench_case *bc = r->bc;
  uint64_t want = (uint64_t)(bc->seconds * 1e9);
  uint64_t cap = 10 * want + 2000000000ull;
  pthread_mutex_lock(&r->lock);
  while (!r->open)
    pthread_cond_wait(&r->gate, &r->lock);
  pthread_mutex_unlock(&r->lock);
  uint64_t wall0 = kvds_now_ns();
  while (!__atomic_load_n(&r->err, __ATOMIC_RELAXED) && !bench_stopped()) {
    uint64_t ns = 0;
    int rc = r->fn(r->ctx, ct->t, &ns);
    if (rc) {
      int zero = 0;
      __atomic_compare_exchange_n(&r->err, &zero, rc, 0, __ATOMIC_RELAXED,
                                  __ATOMIC_RELAXED);
      break;
    }
    ct->busy_ns += ns;
    ct->calls++;
    if (ct->calls >= 3 && (ct->busy_ns >= want || kvds_now_ns() - wall0 >= cap))
      break;
  }
  return NULL;
}

int bench_case_run(const struct bench_case *bc, bench_call_fn fn, void *ctx,
                   struct bench_result *out) {
  struct case_run *r = calloc(1, sizeof *r);
  if (!r)
    return -ENOMEM;
  *r = (struct case_run){.bc = bc, .fn = fn, .ctx = ctx};
  pthread_mutex_init(&r->lock, NULL);
  pthread_cond_init(&r->gate, NULL);
  int n = bc->threads, started = 1, rc;
  for (int t = 0; t < n; t++)
    r->th[t] = (struct case_thread){.r = r, .t = t};
  for (; started < n; started++)
    if ((rc = pthread_create(&r->th[started].th, NULL, case_thread,
                             &r->th[started]))) {
      r->err = -rc; /* the started threads see it and leave at once */
      break;
    }
  pthread_mutex_lock(&r->lock);
  r->open = 1;
  pthread_cond_broadcast(&r->gate);
  pthread_mutex_unlock(&r->lock);
  if (!r->err)
    case_thread(&r->th[0]);
  for (int t = 1; t < started; t++)
    pthread_join(r->th[t].th, NULL);
  uint64_t busy = 0, calls = 0;
  for (int t = 0; t < n; t++) {
    busy = r->th[t].busy_ns > busy ? r->th[t].busy_ns : busy;
    calls += r->th[t].calls;
  }
  rc = r->err ? r->err : bench_stopped() ? -EINTR : busy == 0 ? -EIO : 0;
  if (rc == 0) {
    out->calls = calls;
    out->gbps =
        (double)calls * (double)bc->batch * (double)bc->size / (double)busy;
  }
  pthread_cond_destroy(&r->gate);
  pthread_mutex_destroy(&r->lock);
  free(r);
  return rc;
}

/* ---- the systems measured here ---- */

struct kcase {
  struct peers *p;
  const struct bench_case *bc;
  int put;
  struct bench_keyset ks[P_THREADS_MAX];
  size_t j[P_THREADS_MAX];       /* next ring slot */
  uint64_t calls[P_THREADS_MAX]; /* calls made: where in src/dst */
  int wrapped[P_THREADS_MAX];
  struct kvds_value *v[P_THREADS_MAX];
  int *res[P_THREADS_MAX];
  struct kvds_iov *vals[P_THREADS_MAX];
  size_t *lens[P_THREADS_MAX];
};

static int memcpy_call(void *ctx, int t, uint64_t *ns) {
  struct kcase *k = ctx;
  const struct bench_case *bc = k->bc;
  uint64_t call = k->calls[t]++;
  uint64_t t0 = kvds_now_ns();
  for (size_t i = 0; i < bc->batch; i++)
    memcpy(case_dst(bc, t, call, i), bench_case_src(bc, t, call, i), bc->size);
  __asm__ __volatile__("" ::: "memory");
  *ns = kvds_now_ns() - t0;
  return 0;
}

static int first_error(int rc, const int *res, size_t n) {
  for (size_t i = 0; rc == 0 && i < n; i++)
    rc = res[i];
  return rc;
}

/* Puts of the ring (untimed) through c: the values of a get. */
static int put_ring(kvds_client *c, const struct bench_case *bc,
                    const struct bench_keyset *ks, int t) {
  struct kvds_iov vals[P_PUT_CHUNK];
  for (size_t i = 0; i < ks->n; i += P_PUT_CHUNK) {
    size_t m = ks->n - i < P_PUT_CHUNK ? ks->n - i : P_PUT_CHUNK;
    for (size_t x = 0; x < m; x++)
      vals[x] =
          (struct kvds_iov){(void *)bench_case_src(bc, t, (i + x) / bc->batch,
                                                   (i + x) % bc->batch),
                            bc->size};
    int rc = kvds_mput(c, m, ks->iov + i, vals, NULL);
    if (rc)
      return rc;
  }
  return 0;
}

/* kvds put through c (local or TCP): a ring slot's old key is deleted
 * (untimed) before it is written again. */
static int kvds_put_call(struct kcase *k, kvds_client *c, int t, uint64_t *ns) {
  const struct bench_case *bc = k->bc;
  struct bench_keyset *ks = &k->ks[t];
  int rc;
  if (k->wrapped[t] &&
      (rc = bench_delete_keys(c, ks->iov + k->j[t], bc->batch)))
    return rc;
  uint64_t call = k->calls[t]++;
  for (size_t i = 0; i < bc->batch; i++)
    k->vals[t][i] =
        (struct kvds_iov){(void *)bench_case_src(bc, t, call, i), bc->size};
  uint64_t t0 = kvds_now_ns();
  rc = kvds_mput(c, bc->batch, ks->iov + k->j[t], k->vals[t], k->res[t]);
  *ns = kvds_now_ns() - t0;
  rc = first_error(rc, k->res[t], bc->batch);
  k->j[t] += bc->batch;
  if (k->j[t] >= ks->n) {
    k->j[t] = 0;
    k->wrapped[t] = 1;
  }
  return rc;
}

/* kvds get through c into the thread's destination slice
 * (kvds_mget_into: a local client copies out of the pool, a TCP client
 * receives the values straight into the buffers, verified as they land). */
static int kvds_get_into_call(struct kcase *k, kvds_client *c, int t,
                              uint64_t *ns) {
  const struct bench_case *bc = k->bc;
  struct bench_keyset *ks = &k->ks[t];
  uint64_t call = k->calls[t]++;
  for (size_t i = 0; i < bc->batch; i++)
    k->vals[t][i] = (struct kvds_iov){case_dst(bc, t, call, i), bc->size};
  size_t *lens = k->lens[t];
  uint64_t t0 = kvds_now_ns();
  int rc = kvds_mget_into(c, bc->batch, ks->iov + k->j[t], NULL, k->vals[t],
                          lens, k->res[t]);
  *ns = kvds_now_ns() - t0;
  rc = first_error(rc, k->res[t], bc->batch);
  for (size_t i = 0; rc == 0 && i < bc->batch; i++)
    if (lens[i] != bc->size)
      rc = KVDS_E_RANGE;
  k->j[t] = (k->j[t] + bc->batch) % ks->n;
  return rc;
}

/* A pull on B (hint = A): zero-copy views of the pulled values + release,
 * as `kvds bench remote`. B's copies are dropped (untimed) when the ring
 * has been read, so that every call pulls. */
static int pull_get_call(struct kcase *k, kvds_client *c, int t,
                         const char *hint, uint64_t *ns) {
  const struct bench_case *bc = k->bc;
  struct bench_keyset *ks = &k->ks[t];
  struct kvds_get_opts go = {.hint = hint};
  struct kvds_value *v = k->v[t];
  int *res = k->res[t];
  uint64_t t0 = kvds_now_ns();
  int rc = kvds_mget_ex(c, bc->batch, ks->iov + k->j[t], &go, v, res);
  for (size_t i = 0; rc == 0 && i < bc->batch; i++)
    if ((rc = res[i]) == 0 && v[i].len != bc->size)
      rc = KVDS_E_RANGE;
  if (rc == 0)
    kvds_release(c, bc->batch, v);
  *ns = kvds_now_ns() - t0;
  if (rc)
    for (size_t i = 0; i < bc->batch; i++)
      if (res[i] == 0)
        kvds_release(c, 1, &v[i]);
  k->j[t] += bc->batch;
  if (k->j[t] >= ks->n) {
    k->j[t] = 0;
    if (rc == 0)
      rc = bench_delete_keys(c, ks->iov, ks->n);
  }
  return rc;
}

static int local_call(void *ctx, int t, uint64_t *ns) {
  struct kcase *k = ctx;
  return k->put ? kvds_put_call(k, k->p->cl[t], t, ns)
                : kvds_get_into_call(k, k->p->cl[t], t, ns);
}

static int tcp_client_call(void *ctx, int t, uint64_t *ns) {
  struct kcase *k = ctx;
  return k->put ? kvds_put_call(k, k->p->ct[t], t, ns)
                : kvds_get_into_call(k, k->p->ct[t], t, ns);
}

static int pull_call(void *ctx, int t, uint64_t *ns) {
  struct kcase *k = ctx;
  return pull_get_call(k, k->p->cb[t], t, k->p->w[0].addr, ns);
}

static void kcase_free(struct kcase *k, int threads) {
  for (int t = 0; t < threads; t++) {
    bench_keyset_free(&k->ks[t]);
    free(k->v[t]);
    free(k->res[t]);
    free(k->vals[t]);
    free(k->lens[t]);
  }
}

/* One kvds case (sys S_KVDS_*, or S_MEMCPY). */
static int run_kvds(struct peers *p, enum sys sys, const struct bench_case *bc,
                    int put, struct bench_result *out, char *why, size_t cap) {
  static unsigned seq;
  struct kcase k = {.p = p, .bc = bc, .put = put};
  int threads = bc->threads, rc = 0;
  size_t nslots = bench_case_slots(bc);
  char prefix[64];
  snprintf(prefix, sizeof prefix, "kvds-peers/%ld/%u/", (long)getpid(), seq++);
  for (int t = 0; sys != S_MEMCPY && t < threads; t++) {
    char tag[16];
    snprintf(tag, sizeof tag, "%d", t);
    k.v[t] = calloc(bc->batch, sizeof *k.v[t]);
    k.res[t] = calloc(bc->batch, sizeof *k.res[t]);
    k.vals[t] = calloc(bc->batch, sizeof *k.vals[t]);
    k.lens[t] = calloc(bc->batch, sizeof *k.lens[t]);
    if (!k.v[t] || !k.res[t] || !k.vals[t] || !k.lens[t] ||
        bench_keyset_make(&k.ks[t], prefix, tag, nslots)) {
      rc = -ENOMEM;
      goto out;
    }
  }
  /* the values of a get: on A (read there, or pulled from there by B) */
  for (int t = 0; sys != S_MEMCPY && !put && t < threads && rc == 0; t++)
    rc = put_ring(sys == S_KVDS_PULL  ? p->ca
                  : sys == S_KVDS_TCP ? p->ct[t]
                                      : p->cl[t],
                  bc, &k.ks[t], t);
  if (rc)
    goto out;
  bench_call_fn fn = sys == S_MEMCPY       ? memcpy_call
                     : sys == S_KVDS_LOCAL ? local_call
                     : sys == S_KVDS_TCP   ? tcp_client_call
                                           : pull_call;
  rc = bench_case_run(bc, fn, &k, out);
out:
  for (int t = 0; t < threads; t++) {
    if (!k.ks[t].n)
      continue;
    if (sys == S_KVDS_PULL)
      bench_delete_keys(p->cb[t], k.ks[t].iov, k.ks[t].n);
    bench_delete_keys(p->ca, k.ks[t].iov, k.ks[t].n);
  }
  kcase_free(&k, threads);
  if (rc)
    snprintf(why, cap, "%s", kvds_strerror(rc));
  return rc ? CLI_FAIL : CLI_OK;
}

/* Raw TCP: one stream per thread, each call `batch` values per stream: 3
 * calls to learn the pace, then as many as fill `seconds`. */
static int run_tcp(struct peers *p, const struct bench_case *bc,
                   struct bench_result *out, char *why, size_t cap) {
  size_t per_call = bc->batch * (size_t)bc->threads * bc->size; /* bytes */
  /* the calls walk as many bytes as the threads' key rings hold */
  size_t span = bench_case_slots(bc) * (size_t)bc->threads * bc->size;
  uint64_t ns = 0, calls = 3, pos = 0;
  int rc =
      bench_tcp_run(&p->tcp, bc->threads, per_call, span, calls, &pos, &ns);
  if (rc == 0 && ns > 0) {
    uint64_t want = (uint64_t)(bc->seconds * 1e9);
    uint64_t more = (uint64_t)((double)want / ((double)ns / 3.0));
    calls = more > 3 ? more : 3;
    pos = 0;
    rc = bench_tcp_run(&p->tcp, bc->threads, per_call, span, calls, &pos, &ns);
  }
  if (rc || ns == 0 || bench_stopped()) {
    snprintf(why, cap, "%s", rc ? kvds_strerror(rc) : "interrupted");
    return CLI_FAIL;
  }
  out->calls = calls * (uint64_t)bc->threads;
  out->gbps = (double)calls * (double)per_call / (double)ns;
  return CLI_OK;
}

static void add_row(struct peers *p, enum sys sys, int put,
                    const struct bench_case *bc, const struct bench_result *r) {
  if (p->nrows == P_ROWS_MAX)
    return;
  p->rows[p->nrows++] = (struct prow){.sys = sys,
                                      .put = put,
                                      .size = bc->size,
                                      .batch = bc->batch,
                                      .threads = (uint64_t)bc->threads,
                                      .gbps = r->gbps,
                                      .calls = r->calls};
}

static const struct prow *find_row(const struct peers *p, enum sys sys, int put,
                                   uint64_t size, uint64_t batch,
                                   uint64_t threads) {
  /* the ceilings serve both directions */
  if (sys == S_MEMCPY || sys == S_TCP)
    put = 0;
  for (int i = 0; i < p->nrows; i++) {
    const struct prow *r = &p->rows[i];
    if (r->sys == sys && r->put == put && r->size == size &&
        r->batch == batch && r->threads == threads)
      return r;
  }
  return NULL;
}

/* ---- Mooncake (the Python driver, one point at a time) ---- */

#define MC_START_S                                                             \
  180                  /* the driver's start: Python, the processes it starts  \
                        */
#define MC_POINT_S 120 /* one point beyond the store's timed calls */

/* Fails both Mooncake systems with one reason (when not failed already). */
static void mc_skip(struct peers *p, const char *why) {
  for (enum sys s = S_MC_TE; s <= S_MC_STORE; s++)
    if (!p->why[s][0])
      snprintf(p->why[s], sizeof p->why[s], "%.250s", why);
}

/* Mooncake's systems the driver reports as skipped (a JSON object). */
static void mc_take_skips(struct peers *p, json_t *skipped) {
  for (enum sys s = S_MC_TE; s <= S_MC_STORE; s++) {
    const char *why = json_string_value(json_object_get(skipped, SYS_NAME[s]));
    if (why && !p->why[s][0])
      snprintf(p->why[s], sizeof p->why[s], "%s", why);
  }
}

/* The driver's next reply line, NUL-terminated in p->mcbuf (valid until
 * the next call): 0, or -1 after mc_skip (it exited, no line by
 * deadline_ns, the bench was stopped). */
static int mc_read_line(struct peers *p, uint64_t deadline_ns, char **line) {
  for (;;) {
    char *nl = memchr(p->mcbuf + p->mcoff, '\n', p->mclen - p->mcoff);
    if (nl) {
      *nl = '\0';
      *line = p->mcbuf + p->mcoff;
      p->mcoff = (size_t)(nl + 1 - p->mcbuf);
      return 0;
    }
    if (p->mcoff) { /* keep the partial line at the front */
      memmove(p->mcbuf, p->mcbuf + p->mcoff, p->mclen - p->mcoff);
      p->mclen -= p->mcoff;
      p->mcoff = 0;
    }
    if (p->mclen == sizeof p->mcbuf - 1) {
      mc_skip(p, "the Mooncake driver wrote a line too long");
      return -1;
    }
    ssize_t n =
        read(p->mc_reply, p->mcbuf + p->mclen, sizeof p->mcbuf - 1 - p->mclen);
    if (n > 0) {
      p->mclen += (size_t)n;
      continue;
    }
    int st;
    if (waitpid(p->mc_pid, &st, WNOHANG) == p->mc_pid) {
      p->mc_pid = 0;
      char why[128];
      snprintf(why, sizeof why,
               "the Mooncake driver (kvds.bench_peers_mooncake in %s) "
               "exited (%s %d)",
               bench_python(), WIFEXITED(st) ? "status" : "signal",
               WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
      mc_skip(p, why);
      return -1;
    }
    if (bench_stopped() || kvds_now_ns() > deadline_ns) {
      mc_skip(p, bench_stopped()
                     ? "interrupted"
                     : "the Mooncake driver did not answer in time");
      return -1;
    }
    struct pollfd pf = {.fd = p->mc_reply, .events = POLLIN};
    /* no writer yet (or any more) reads as POLLHUP at once: sleep instead */
    if (poll(&pf, 1, 100) > 0 && !(pf.revents & POLLIN))
      kvds_sleep_ms(50);
  }
}

/* Starts python/kvds/bench_peers_mooncake.py serving points over two
 * FIFOs in the bench's directory, and reads its first line (version, the
 * systems that did not start). Failures are Mooncake's skips. */
static void mc_start(struct peers *p) {
  const struct peers_opts *o = p->o;
  char pathbuf[PATH_MAX], sizes[256] = "", batches[128] = "", threads[128] = "";
  const char *overlay = peers_path(o, pathbuf, sizeof pathbuf);
  for (int i = 0; i < o->nsizes; i++)
    snprintf(sizes + strlen(sizes), sizeof sizes - strlen(sizes), "%s%llu",
             i ? "," : "", (unsigned long long)o->sizes[i]);
  for (int i = 0; i < o->nbatches; i++)
    snprintf(batches + strlen(batches), sizeof batches - strlen(batches),
             "%s%llu", i ? "," : "", (unsigned long long)o->batches[i]);
  for (int i = 0; i < o->nthreads; i++)
    snprintf(threads + strlen(threads), sizeof threads - strlen(threads),
             "%s%llu", i ? "," : "", (unsigned long long)o->threads[i]);
  char secs[32], maxb[32], cmd[PATH_MAX + 16], reply[PATH_MAX + 16],
      pypath[2 * PATH_MAX + 8], ldpath[2 * PATH_MAX + 24], why[PATH_MAX + 128];
  snprintf(secs, sizeof secs, "%g", o->seconds);
  snprintf(maxb, sizeof maxb, "%llu", (unsigned long long)o->max_bytes);
  snprintf(cmd, sizeof cmd, "%s/mc-cmd", p->dir);
  snprintf(reply, sizeof reply, "%s/mc-reply", p->dir);
  p->mc_cmd = p->mc_reply = -1;
  /* neither open blocks: the bench holds a writer of cmd itself, and a
   * reader of reply */
  if (mkfifo(cmd, 0600) || mkfifo(reply, 0600) ||
      (p->mc_reply = open(reply, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) < 0 ||
      (p->mc_cmd = open(cmd, O_RDWR | O_CLOEXEC)) < 0) {
    snprintf(why, sizeof why, "cannot make the driver's FIFOs in %s: %s",
             p->dir, strerror(errno));
    mc_skip(p, why);
    return;
  }
  const char *argv[] = {bench_python(),
                        "-c",
                        bench_python_boot,
                        "kvds.bench_peers_mooncake",
                        "kvds bench peers",
                        "--sizes",
                        sizes,
                        "--batch",
                        batches,
                        "--threads",
                        threads,
                        "--seconds",
                        secs,
                        "--max-bytes",
                        maxb,
                        "--dir",
                        p->dir,
                        "--cmd",
                        cmd,
                        "--reply",
                        reply,
                        NULL};
  const char *env[7] = {NULL};
  int ne = 0;
  if (overlay) {
    const char *pp = getenv("PYTHONPATH"), *ld = getenv("LD_LIBRARY_PATH");
    snprintf(pypath, sizeof pypath, "%s%s%s", overlay, pp && *pp ? ":" : "",
             pp && *pp ? pp : "");
    snprintf(ldpath, sizeof ldpath, "%s/kvds-stubs%s%s", overlay,
             ld && *ld ? ":" : "", ld && *ld ? ld : "");
    env[ne++] = "PYTHONPATH";
    env[ne++] = pypath;
    env[ne++] = "LD_LIBRARY_PATH";
    env[ne++] = ldpath;
  }
  env[ne++] = "KVDS_BENCH_PROG";
  env[ne++] = "kvds bench peers";
  bench_progress("peers", "starting Mooncake: %s (overlay %s)...",
                 bench_python(),
                 overlay ? overlay : "none: the interpreter's own packages");
  /* stdout and stderr stay the bench's: the driver's progress lines */
  int rc = bench_spawn(&p->mc_pid, argv, NULL, NULL, env);
  if (rc) {
    snprintf(why, sizeof why, "cannot run %s: %s", bench_python(),
             kvds_strerror(rc));
    mc_skip(p, why);
    return;
  }
  char *line;
  if (mc_read_line(p, kvds_now_ns() + MC_START_S * 1000000000ull, &line))
    return;
  json_t *doc = json_loads(line, 0, NULL);
  const char *ver = json_string_value(json_object_get(doc, "version"));
  snprintf(p->mc_version, sizeof p->mc_version, "%s", ver ? ver : "");
  mc_take_skips(p, json_object_get(doc, "skipped"));
  json_decref(doc);
}

/* The driver's rows of one point. */
static void mc_point(struct peers *p, const struct bench_case *bc) {
  if (!p->mc_pid || (p->why[S_MC_TE][0] && p->why[S_MC_STORE][0]))
    return;
  char req[96], *line;
  int n = snprintf(req, sizeof req, "%zu %zu %d\n", bc->size, bc->batch,
                   bc->threads);
  if (write(p->mc_cmd, req, (size_t)n) != n) {
    mc_skip(p, "cannot write to the Mooncake driver");
    return;
  }
  uint64_t limit =
      (MC_POINT_S + (uint64_t)(20 * p->o->seconds)) * 1000000000ull;
  if (mc_read_line(p, kvds_now_ns() + limit, &line))
    return;
  json_t *doc = json_loads(line, 0, NULL), *r;
  mc_take_skips(p, json_object_get(doc, "skipped"));
  size_t i;
  json_array_foreach(json_object_get(doc, "rows"), i, r) {
    const char *sys = json_string_value(json_object_get(r, "system"));
    const char *op = json_string_value(json_object_get(r, "op"));
    if (!sys || !op)
      continue;
    struct bench_result res = {
        .gbps = json_number_value(json_object_get(r, "gbps")),
        .calls = (uint64_t)json_integer_value(json_object_get(r, "calls"))};
    enum sys s = strcmp(sys, SYS_NAME[S_MC_TE]) == 0 ? S_MC_TE : S_MC_STORE;
    add_row(p, s, strcmp(op, "put") == 0, bc, &res);
  }
  json_decref(doc);
}

/* Asks the driver to stop what it started and exit; it is stopped when it
 * does not by the deadline. */
static void mc_stop(struct peers *p) {
  if (p->mc_pid > 0 && p->mc_cmd >= 0 && !bench_stopped() &&
      write(p->mc_cmd, "quit\n", 5) == 5) {
    uint64_t deadline = kvds_now_ns() + 30000000000ull;
    while (waitpid(p->mc_pid, NULL, WNOHANG) != p->mc_pid &&
           kvds_now_ns() < deadline)
      kvds_sleep_ms(50);
    if (kvds_now_ns() < deadline)
      p->mc_pid = 0;
  }
  /* SIGINT: Python's finally blocks stop what it started */
  bench_proc_stop(&p->mc_pid, SIGINT, 20);
  if (p->mc_cmd >= 0)
    close(p->mc_cmd);
  if (p->mc_reply >= 0)
    close(p->mc_reply);
  p->mc_cmd = p->mc_reply = -1;
}

/* ---- reporting ---- */

static void fmt_gbps(const struct prow *r, char *buf, size_t cap) {
  if (r)
    bench_fmt3(r->gbps, buf, cap);
  else
    snprintf(buf, cap, "-");
}

/* The peers a kvds row is compared with: its ceiling, then the peers. */
static int compare_with(enum sys sys, enum sys out[4]) {
  int n = 0;
  out[n++] = sys == S_KVDS_LOCAL ? S_MEMCPY : S_TCP;
  out[n++] = S_REDIS;
  out[n++] = S_MC_TE;
  out[n++] = S_MC_STORE;
  return n;
}

static void print_table(const struct peers *p) {
  const struct peers_opts *o = p->o;
  char sz[32], mem[32];
  printf("kvds bench peers: every system started by the bench on this "
         "machine, over loopback\n");
  printf("kvds: workers A and B (%s pools, 4 pull threads, 1 I/O thread); "
         "redis-server %s;\nmooncake-transfer-engine %s. GB/s = 10^9 B/s "
         "over the time inside the timed calls\n(all threads' bytes over "
         "the longest thread's time); batch = values per call;\nthreads = "
         "client threads, each its own connection (Mooncake: threads of one "
         "client).\n'-': one call of all threads would move more than "
         "--max-bytes (%s). 'vs X':\nthe kvds figure over X's at the same "
         "point.\n",
         kvds_fmt_bytes(p->memory, mem, sizeof mem),
         p->redis.version[0] ? p->redis.version : "(not run)",
         p->mc_version[0] ? p->mc_version : "(not run)",
         kvds_fmt_bytes(o->max_bytes, sz, sizeof sz));
  for (enum sys s = 0; s < S_N; s++)
    if (p->why[s][0])
      printf("%-18s skipped: %s\n", SYS_NAME[s], p->why[s]);
  for (int put = 0; put < 2; put++)
    for (int bi = 0; bi < o->nbatches; bi++)
      for (int ti = 0; ti < o->nthreads; ti++) {
        uint64_t batch = o->batches[bi], thr = o->threads[ti];
        char head[64];
        snprintf(head, sizeof head, "%s, batch %llu, %llu thread%s",
                 put ? "PUT" : "GET", (unsigned long long)batch,
                 (unsigned long long)thr, thr == 1 ? "" : "s");
        printf("\n%-26s", head);
        for (int si = 0; si < o->nsizes; si++)
          printf(" %8s", kvds_fmt_bytes(o->sizes[si], sz, sizeof sz));
        printf("\n");
        static const enum sys order[] = {S_MEMCPY,    S_TCP,      S_REDIS,
                                         S_MC_TE,     S_MC_STORE, S_KVDS_LOCAL,
                                         S_KVDS_PULL, S_KVDS_TCP};
        for (size_t k = 0; k < sizeof order / sizeof *order; k++) {
          enum sys s = order[k];
          if (p->why[s][0] || !SYS_LABEL[s][put])
            continue;
          printf("  %-24s", SYS_LABEL[s][put]);
          for (int si = 0; si < o->nsizes; si++) {
            char g[16];
            fmt_gbps(find_row(p, s, put, o->sizes[si], batch, thr), g,
                     sizeof g);
            printf(" %8s", g);
          }
          printf("\n");
          if (s < S_KVDS_LOCAL)
            continue;
          enum sys vs[4];
          int nvs = compare_with(s, vs);
          for (int v = 0; v < nvs; v++) {
            if (p->why[vs[v]][0])
              continue;
            printf("    vs %-20s", SYS_SHORT[vs[v]]);
            for (int si = 0; si < o->nsizes; si++) {
              const struct prow *a =
                  find_row(p, s, put, o->sizes[si], batch, thr);
              const struct prow *b =
                  find_row(p, vs[v], put, o->sizes[si], batch, thr);
              char q[16] = "-";
              if (a && b && b->gbps > 0) {
                bench_fmt3(a->gbps / b->gbps, q, sizeof q - 1);
                strcat(q, "x");
              }
              printf(" %8s", q);
            }
            printf("\n");
          }
        }
      }
}

static int print_json(const struct peers *p) {
  const struct peers_opts *o = p->o;
  json_t *root = json_object(), *rows = json_array(), *sk = json_object();
  json_object_set_new(root, "pool_bytes", json_integer((json_int_t)p->memory));
  json_object_set_new(root, "max_bytes",
                      json_integer((json_int_t)o->max_bytes));
  json_object_set_new(root, "seconds_per_case", json_real(o->seconds));
  json_object_set_new(root, "redis_version", json_string(p->redis.version));
  json_object_set_new(root, "mooncake_version", json_string(p->mc_version));
  for (enum sys s = 0; s < S_N; s++)
    if (p->why[s][0])
      json_object_set_new(sk, SYS_NAME[s], json_string(p->why[s]));
  for (int i = 0; i < p->nrows; i++) {
    const struct prow *r = &p->rows[i];
    json_t *j = json_pack(
        "{s:s, s:s, s:I, s:I, s:I, s:f, s:I}", "system", SYS_NAME[r->sys], "op",
        r->sys <= S_TCP ? "ceiling"
        : r->put        ? "put"
                        : "get",
        "size", (json_int_t)r->size, "batch", (json_int_t)r->batch, "threads",
        (json_int_t)r->threads, "gbps", r->gbps, "calls", (json_int_t)r->calls);
    if (r->sys >= S_KVDS_LOCAL) {
      json_t *vsj = json_object();
      enum sys vs[4];
      int nvs = compare_with(r->sys, vs);
      for (int v = 0; v < nvs; v++) {
        const struct prow *b =
            find_row(p, vs[v], r->put, r->size, r->batch, r->threads);
        if (b && b->gbps > 0)
          json_object_set_new(vsj, SYS_NAME[vs[v]],
                              json_real(r->gbps / b->gbps));
      }
      json_object_set_new(j, "vs", vsj);
    }
    json_array_append_new(rows, j);
  }
  json_object_set_new(root, "skipped", sk);
  json_object_set_new(root, "rows", rows);
  return bench_print_json(root);
}

/* ---- setup, the run, teardown ---- */

static int connect_all(struct peers *p, int threads) {
  if (cli_connect("bench", p->w[0].addr, 0, &p->ca, NULL, 0))
    return CLI_FAIL;
  for (int t = 0; t < threads; t++)
    if (cli_connect("bench", p->w[0].addr, 0, &p->cl[t], NULL, 0) ||
        cli_connect("bench", p->w[0].addr, KVDS_CONNECT_TCP_ONLY, &p->ct[t],
                    NULL, 0) ||
        cli_connect("bench", p->w[1].addr, 0, &p->cb[t], NULL, 0))
      return CLI_FAIL;
  kvds_client *cs[2] = {p->ca, p->cb[0]};
  const char *addrs[2] = {p->w[0].addr, p->w[1].addr};
  return bench_pair_wait_peered(cs, addrs, kvds_now_ns() + 20000000000ull);
}

static void cleanup(struct peers *p) {
  mc_stop(p);
  if (p->tcp_up)
    bench_tcp_teardown(&p->tcp);
  p->tcp_up = 0;
  kvds_client_close(p->ca);
  p->ca = NULL;
  for (int t = 0; t < P_THREADS_MAX; t++) {
    kvds_client_close(p->cl[t]);
    kvds_client_close(p->ct[t]);
    kvds_client_close(p->cb[t]);
    p->cl[t] = p->ct[t] = p->cb[t] = NULL;
  }
  for (int i = 0; i < 2; i++)
    bench_worker_stop(&p->w[i]);
  bench_redis_stop(&p->redis);
}

/* One point of one system measured here, get then put (a failure is the
 * system's skip line: it is not measured again). */
static void measure(struct peers *p, enum sys sys,
                    const struct bench_case *bc) {
  for (int put = 0; put < 2 && !p->why[sys][0] && !bench_stopped(); put++) {
    if ((sys == S_KVDS_PULL || sys == S_MEMCPY || sys == S_TCP) && put)
      continue;
    char sz[32], why[200] = "";
    struct bench_result r = {0};
    int rc = sys == S_REDIS
                 ? bench_redis_case(&p->redis, bc, put, &r, why, sizeof why)
             : sys == S_TCP ? run_tcp(p, bc, &r, why, sizeof why)
                            : run_kvds(p, sys, bc, put, &r, why, sizeof why);
    if (rc) {
      if (!bench_stopped())
        snprintf(p->why[sys], sizeof p->why[sys], "%s %s x %zu: %s",
                 put ? "put" : "get", kvds_fmt_bytes(bc->size, sz, sizeof sz),
                 bc->batch, why);
      return;
    }
    add_row(p, sys, put, bc, &r);
  }
}

/* Every system at every point, point after point: a point's figures come
 * from the same minute of the machine. A kvds or ceiling failure ends the
 * run (CLI_FAIL, printed); a peer's is its skip line. */
static int measure_all(struct peers *p) {
  const struct peers_opts *o = p->o;
  static const enum sys here[] = {S_MEMCPY,    S_TCP,      S_KVDS_LOCAL,
                                  S_KVDS_PULL, S_KVDS_TCP, S_REDIS};
  for (int si = 0; si < o->nsizes; si++)
    for (int bi = 0; bi < o->nbatches; bi++)
      for (int ti = 0; ti < o->nthreads; ti++) {
        struct bench_case bc = {.size = (size_t)o->sizes[si],
                                .batch = (size_t)o->batches[bi],
                                .threads = (int)o->threads[ti],
                                .max_bytes = o->max_bytes,
                                .seconds = o->seconds,
                                .src = p->src,
                                .dst = p->dst,
                                .region = p->region};
        if ((uint64_t)bc.size * bc.batch * (uint64_t)bc.threads > o->max_bytes)
          continue;
        char sz[32];
        bench_progress("peers", "%s x %zu, %d thread%s",
                       kvds_fmt_bytes(bc.size, sz, sizeof sz), bc.batch,
                       bc.threads, bc.threads == 1 ? "" : "s");
        for (size_t i = 0; i < sizeof here / sizeof *here; i++) {
          if (bench_stopped())
            return CLI_FAIL;
          measure(p, here[i], &bc);
          if (p->why[here[i]][0] && here[i] != S_REDIS) {
            cli_err("bench", "%s: %s", SYS_NAME[here[i]], p->why[here[i]]);
            return CLI_FAIL;
          }
        }
        mc_point(p, &bc);
      }
  return bench_stopped() ? CLI_FAIL : CLI_OK;
}

static int max_threads(const struct peers_opts *o) {
  uint64_t m = 1;
  for (int i = 0; i < o->nthreads; i++)
    m = o->threads[i] > m ? o->threads[i] : m;
  return (int)m;
}

int bench_peers(int argc, char **argv) {
  struct peers_opts o = {0};
  int rc = peers_parse(argc, argv, &o);
  if (rc)
    return rc < 0 ? CLI_OK : rc;
  struct peers p = {.o = &o, .mc_cmd = -1, .mc_reply = -1};
  int ret = CLI_FAIL, threads = max_threads(&o);
  bench_catch_signals();
  p.rows = calloc(P_ROWS_MAX, sizeof *p.rows);
  /* sources and destinations far larger than the caches (local.c's rule) */
  p.region = (size_t)(o.max_bytes > P_REGION_MIN ? o.max_bytes : P_REGION_MIN);
  if (!p.rows || bench_alloc_buffers(p.region, &p.src, &p.dst)) {
    cli_err("bench", "cannot allocate 2 x %zu MiB of buffers", p.region >> 20);
    goto out;
  }
  const char *tmp = getenv("TMPDIR");
  if (bench_make_dir(tmp && *tmp ? tmp : "/tmp", "kvds-bench-peers", p.dir,
                     sizeof p.dir))
    goto out;
  /* the key rings of one case and the copies B pulls, with room to spare
   * below the eviction watermark */
  p.memory = 2 * o.max_bytes + (128ull << 20);
  char mem[32];
  bench_progress("peers", "starting workers A and B (%s pools)...",
                 kvds_fmt_bytes(p.memory, mem, sizeof mem));
  if (bench_pair_start(p.w, p.dir, p.memory, 4, 1, NULL) ||
      connect_all(&p, threads))
    goto out;
  if ((rc = bench_tcp_setup(&p.tcp, threads, p.src, p.dst, p.region))) {
    cli_err("bench", "raw TCP streams: %s", kvds_strerror(rc));
    goto out;
  }
  p.tcp_up = 1;
  bench_progress("peers", "starting redis-server...");
  if (bench_redis_start(&p.redis, p.dir, p.why[S_REDIS], sizeof p.why[S_REDIS]))
    bench_progress("peers", "redis skipped: %s", p.why[S_REDIS]);
  mc_start(&p);
  rc = measure_all(&p);
  cleanup(&p);
  if (bench_stopped()) {
    fflush(stdout);
    fprintf(stderr, "kvds bench peers: interrupted; everything it started "
                    "was stopped\n");
    ret = 128 + bench_stopped();
  } else if (rc == 0) {
    ret = o.json ? print_json(&p) : (print_table(&p), CLI_OK);
  }
out:
  if (bench_stopped() && ret == CLI_FAIL)
    ret = 128 + bench_stopped();
  cleanup(&p);
  if (p.dir[0]) {
    int drc = bench_remove_tree(p.dir);
    if (drc)
      cli_err("bench", "cannot remove %s: %s", p.dir, kvds_strerror(drc));
  }
  free(p.rows);
  free(p.src);
  free(p.dst);
  return ret;
}
