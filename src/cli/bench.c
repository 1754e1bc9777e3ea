/*
 * bench.c — `kvds bench local`: put / zero-copy get / copying get against a
 * running worker, each figure printed next to memcpy measured in the same
 * run, plus batched exists throughput and small-get latency.
 * `kvds bench connector` runs the Python bench of the vLLM connector
 * (python/kvds/bench_connector.py) in $KVDS_PYTHON, else python3.
 *
 * Throughput is computed from the time spent inside the timed calls; the
 * untimed work between them (deleting the previous round's keys before a
 * slot is rewritten) is excluded. Latency is per call; one call moves
 * `batch` values.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/util.h"

static const char HELP[] =
    "usage: kvds bench local [options]\n"
    "       kvds bench connector [options]\n"
    "\n"
    "kvds bench local:\n"
    "Measures a running worker (start one first; the bench spawns nothing):\n"
    "memcpy bandwidth first (DRAM-realistic: buffers far larger than the\n"
    "caches, rotated; and cache-hot), then for every size x batch: put\n"
    "(kvds_mput: create, copy+checksum, seal), zero-copy get (mget + release) "
    "and get with\n"
    "copy (mget + memcpy + release) with ops/s, GB/s (10^9 B/s), the ratio to\n"
    "DRAM memcpy, and p50/p99 latency per call; then batched exists\n"
    "throughput and the latency of a single 4 KiB get. The bench keeps its\n"
    "working set under half of the pool (and under the eviction watermark)\n"
    "and deletes everything it wrote.\n"
    "\n"
    "  -w, --worker ADDR   worker address (default $DS_WORKER_ADDR, then\n"
    "                      127.0.0.1:31501); a loopback address uses the\n"
    "                      worker's Unix socket and shared memory\n"
    "      --sizes LIST    value sizes (default 4KiB,64KiB,1MiB,16MiB)\n"
    "      --batch LIST    values per call (default 1,64; at most 4096)\n"
    "      --seconds S     time per size x batch case, split over its three\n"
    "                      operations (default 3: about 30 s in all)\n"
    "      --quick         short run, about 5 s (--seconds 0.45)\n"
    "      --json          print one JSON document instead of tables\n"
    "  -h, --help          this text\n"
    "\n"
    "kvds bench connector:\n"
    "Save and load time per request through the vLLM connector\n"
    "(kvds.vllm.KvdsConnector driven with vLLM's own classes) for a paged KV\n"
    "cache of Qwen2.5-7B's geometry (896 KiB per block) at 1k, 4k and 16k\n"
    "tokens, next to the raw client's put/get of the same bytes and memcpy\n"
    "measured in the same run. Runs the Python module kvds.bench_connector\n"
    "in $KVDS_PYTHON (else python3), which needs the kvds package (make\n"
    "python) and vLLM 0.32.0; without --addr it starts a worker of this\n"
    "binary and stops it at the end. `kvds bench connector --help` lists its\n"
    "options (--addr, --tokens, --layers, --iters, --layout, --json, ...).\n";

#define MAX_LIST 16
#define REGION_MIN (256ull << 20) /* per direction; larger than any LLC */
#define KEYS_MAX 65536            /* keys per case */
#define KEY_STRIDE 64             /* bytes per generated key */
#define EXISTS_BATCH 1000
#define EXISTS_KEYS 10000
#define SMALL_SIZE 4096

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
  g_stop = sig;
}

/* ---- options ------------------------------------------------------------ */

struct bench_opts {
  const char *addr;
  uint64_t sizes[MAX_LIST];
  int nsizes;
  uint64_t batches[MAX_LIST];
  int nbatches;
  double seconds;
  int json;
};

/* Parses a comma-separated list with parse(); 0 or CLI_USAGE. */
static int parse_list(const char *opt, const char *s, int sizes, uint64_t *out,
                      int *n) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", s);
  *n = 0;
  char *save = NULL;
  for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (*n == MAX_LIST) {
      cli_err("bench", "%s: at most %d values", opt, MAX_LIST);
      return CLI_USAGE;
    }
    uint64_t v;
    int rc = sizes ? cli_parse_size_opt("bench", opt, t, &v)
                   : cli_parse_u64_opt("bench", opt, t, &v);
    if (rc)
      return rc;
    uint64_t max = sizes ? (1ull << 30) : KVDS_BATCH_MAX;
    if (v == 0 || v > max) {
      cli_err("bench", "%s: %s is out of range (1..%llu)", opt, t,
              (unsigned long long)max);
      return CLI_USAGE;
    }
    out[(*n)++] = v;
  }
  if (*n == 0) {
    cli_err("bench", "%s: empty list", opt);
    return CLI_USAGE;
  }
  return CLI_OK;
}

static int parse_opts(int argc, char **argv, struct bench_opts *o) {
  static const struct option lo[] = {{"worker", required_argument, NULL, 'w'},
                                     {"sizes", required_argument, NULL, 'S'},
                                     {"batch", required_argument, NULL, 'B'},
                                     {"seconds", required_argument, NULL, 'T'},
                                     {"quick", no_argument, NULL, 'q'},
                                     {"json", no_argument, NULL, 'j'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  int c, first = 1, quick = 0, have_seconds = 0;
  parse_list("--sizes", "4KiB,64KiB,1MiB,16MiB", 1, o->sizes, &o->nsizes);
  parse_list("--batch", "1,64", 0, o->batches, &o->nbatches);
  o->seconds = 3;
  while ((c = cli_getopt("bench", argc, argv, "w:h", lo, &first)) != -1) {
    int rc = CLI_OK;
    switch (c) {
    case 'w':
      o->addr = optarg;
      break;
    case 'S':
      rc = parse_list("--sizes", optarg, 1, o->sizes, &o->nsizes);
      break;
    case 'B':
      rc = parse_list("--batch", optarg, 0, o->batches, &o->nbatches);
      break;
    case 'T':
      rc = cli_parse_double_opt("bench", "--seconds", optarg, &o->seconds);
      if (rc == CLI_OK && (o->seconds < 0.01 || o->seconds > 3600)) {
        cli_err("bench", "--seconds %s is out of range (0.01..3600)", optarg);
        rc = CLI_USAGE;
      }
      have_seconds = 1;
      break;
    case 'q':
      quick = 1;
      break;
    case 'j':
      o->json = 1;
      break;
    case 'h':
      fputs(HELP, stdout);
      return -1;
    default:
      return CLI_USAGE;
    }
    if (rc)
      return rc;
  }
  if (quick && !have_seconds)
    o->seconds = 0.45;
  if (optind >= argc || strcmp(argv[optind], "local") != 0 ||
      optind + 1 != argc) {
    cli_err("bench", "%s (usage: kvds bench local|connector [options])",
            optind >= argc ? "missing the mode 'local' or 'connector'"
                           : "unknown mode or extra argument");
    return CLI_USAGE;
  }
  return CLI_OK;
}

/* ---- latency samples ---------------------------------------------------- */

struct samples {
  uint64_t *ns;
  size_t n, cap;
  uint64_t total_ns;
};

static int samples_add(struct samples *s, uint64_t ns) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 4096;
    uint64_t *p = realloc(s->ns, cap * sizeof *p);
    if (!p)
      return -ENOMEM;
    s->ns = p;
    s->cap = cap;
  }
  s->ns[s->n++] = ns;
  s->total_ns += ns;
  return 0;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* Sorts the samples; then percentile q in [0,1] in microseconds. */
static double samples_pct_us(struct samples *s, double q) {
  if (s->n == 0)
    return 0;
  return (double)s->ns[(size_t)(q * (double)(s->n - 1) + 0.5)] / 1e3;
}

/* ---- the run ------------------------------------------------------------ */

struct row {
  uint64_t size;
  uint64_t batch;
  const char *op; /* "put", "get 0-copy", "get+copy"; NULL = skipped */
  double ops_s, gbps, memcpy_gbps, p50_us, p99_us;
  uint64_t calls;
};

struct memcpy_row {
  uint64_t size;
  double dram_gbps, hot_gbps;
};

struct bench {
  struct bench_opts *o;
  kvds_client *c;
  char via[300];
  struct kvds_stats st0;
  uint64_t budget;   /* most bytes the bench may hold in the pool */
  uint64_t phase_ns; /* time per operation within a case */
  uint8_t *src, *dst;
  size_t region;
  struct memcpy_row mrows[MAX_LIST];
  struct row rows[MAX_LIST * MAX_LIST * 3];
  int nrows;
  double exists_keys_s;
  double small_p50_us, small_p99_us, ping_p50_us;
  char prefix[64];
  char *keys; /* KEY_STRIDE bytes each */
  struct kvds_iov *iov;
  size_t nkeys;
};

/* Rotating chunk picker over a region: a stride coprime to the chunk count
 * visits every chunk in a scattered order. */
struct rot {
  size_t n, pos, stride;
};

static size_t gcd(size_t a, size_t b) {
  while (b) {
    size_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

static void rot_init(struct rot *r, size_t region, size_t size) {
  r->n = region / size;
  r->pos = 0;
  r->stride = (size_t)((double)r->n * 0.618) | 1;
  while (r->n > 1 && gcd(r->stride, r->n) != 1)
    r->stride += 2;
}

static size_t rot_next(struct rot *r) {
  r->pos = (r->pos + r->stride) % r->n;
  return r->pos;
}

static void barrier(void) {
  __asm__ __volatile__("" ::: "memory");
}

static double memcpy_gbps(struct bench *b, size_t size, int hot,
                          uint64_t dur_ns) {
  struct rot rs, rd;
  rot_init(&rs, b->region, size);
  rot_init(&rd, b->region, size);
  rd.pos = rd.n / 2;
  uint64_t bytes = 0, t0 = kvds_now_ns(), t;
  do {
    for (int i = 0; i < 16; i++) {
      if (hot)
        memcpy(b->dst, b->src, size);
      else
        memcpy(b->dst + rot_next(&rd) * size, b->src + rot_next(&rs) * size,
               size);
      barrier();
    }
    bytes += 16 * size;
    t = kvds_now_ns();
  } while (t - t0 < dur_ns && !g_stop);
  return (double)bytes / (double)(t - t0);
}

static double dram_memcpy_for(const struct bench *b, uint64_t size) {
  for (int i = 0; i < b->o->nsizes; i++)
    if (b->mrows[i].size == size)
      return b->mrows[i].dram_gbps;
  return 0;
}

/* Generates keys prefix/<tag>/<i> for i < n into b->keys / b->iov. */
static int make_keys(struct bench *b, const char *tag, size_t n) {
  free(b->keys);
  free(b->iov);
  b->keys = malloc(n * KEY_STRIDE);
  b->iov = malloc(n * sizeof *b->iov);
  b->nkeys = 0;
  if (!b->keys || !b->iov)
    return -ENOMEM;
  for (size_t i = 0; i < n; i++) {
    char *k = b->keys + i * KEY_STRIDE;
    int len = snprintf(k, KEY_STRIDE, "%s%s/%zu", b->prefix, tag, i);
    b->iov[i].base = k;
    b->iov[i].len = (size_t)len;
  }
  b->nkeys = n;
  return 0;
}

/* Deletes keys [first, first + n) of the current set; missing keys (say,
 * evicted) are fine. */
static int delete_keys_range(struct bench *b, size_t first, size_t n) {
  for (size_t i = first; i < first + n; i += KVDS_BATCH_MAX) {
    size_t m = first + n - i < KVDS_BATCH_MAX ? first + n - i : KVDS_BATCH_MAX;
    int rc = kvds_mdelete(b->c, m, b->iov + i, NULL);
    if (rc && rc != KVDS_E_NOTFOUND)
      return rc;
  }
  return 0;
}

/* Per-batch scratch. */
struct batch_bufs {
  struct kvds_iov *vals;
  struct kvds_value *v;
  int *res;
};

static int first_error(int rc, const int *res, size_t n) {
  for (size_t i = 0; rc == 0 && i < n; i++)
    rc = res[i];
  return rc;
}

/* One timed put call: kvds_mput of values from a rotating source (over shared
 * memory: create, copy + hash in one pass, seal). */
static int put_batch(struct bench *b, struct batch_bufs *bb, size_t first,
                     size_t n, size_t size, struct rot *rs) {
  for (size_t i = 0; i < n; i++)
    bb->vals[i] = (struct kvds_iov){b->src + rot_next(rs) * size, size};
  int rc = kvds_mput(b->c, n, b->iov + first, bb->vals, bb->res);
  return first_error(rc, bb->res, n);
}

/* One timed get call; copies the values out when rd is set. */
static int get_batch(struct bench *b, struct batch_bufs *bb, size_t first,
                     size_t n, size_t size, struct rot *rd) {
  int rc = kvds_mget(b->c, n, b->iov + first, 0, bb->v, bb->res);
  if (rc)
    return rc;
  for (size_t i = 0; i < n; i++) {
    if (bb->res[i] == 0 && bb->v[i].len != size)
      bb->res[i] = KVDS_E_RANGE;
    if (bb->res[i] == 0 && rd)
      memcpy(b->dst + rot_next(rd) * size, bb->v[i].data, size);
  }
  kvds_release(b->c, n, bb->v);
  return first_error(0, bb->res, n);
}

/* About three significant digits: 0.123, 1.23, 12.3, 123, 1234. */
static char *fmt3(double v, char *buf, size_t cap) {
  snprintf(buf, cap, v < 10 ? "%.2f" : v < 100 ? "%.1f" : "%.0f", v);
  return buf;
}

static void add_row(struct bench *b, uint64_t size, uint64_t batch,
                    const char *op, struct samples *s) {
  struct row *r = &b->rows[b->nrows++];
  qsort(s->ns, s->n, sizeof *s->ns, cmp_u64);
  double secs = (double)s->total_ns / 1e9;
  double ops = (double)s->n * (double)batch;
  *r = (struct row){.size = size,
                    .batch = batch,
                    .op = op,
                    .ops_s = secs > 0 ? ops / secs : 0,
                    .gbps = secs > 0 ? ops * (double)size / secs / 1e9 : 0,
                    .memcpy_gbps = dram_memcpy_for(b, size),
                    .p50_us = samples_pct_us(s, 0.50),
                    .p99_us = samples_pct_us(s, 0.99),
                    .calls = s->n};
  if (!b->o->json) {
    char sz[32], g[16], m[16], q[16], p50[16], p99[16];
    printf("%9s %6llu  %-10s %11.0f %8s %11s %6s %9s %9s\n",
           kvds_fmt_bytes(size, sz, sizeof sz), (unsigned long long)batch, op,
           r->ops_s, fmt3(r->gbps, g, sizeof g),
           fmt3(r->memcpy_gbps, m, sizeof m),
           fmt3(r->memcpy_gbps > 0 ? r->gbps / r->memcpy_gbps : 0, q, sizeof q),
           fmt3(r->p50_us, p50, sizeof p50), fmt3(r->p99_us, p99, sizeof p99));
    fflush(stdout);
  }
}

/* Runs put, zero-copy get and copying get for one size x batch. */
static int run_case(struct bench *b, size_t size, size_t batch) {
  char sz[32], bud[32];
  if ((uint64_t)size * batch > b->budget) {
    struct row *r = &b->rows[b->nrows++];
    *r = (struct row){.size = size, .batch = batch, .op = NULL};
    if (!b->o->json)
      printf("%9s %6zu  skipped: one call needs more than the bench budget "
             "(%s)\n",
             kvds_fmt_bytes(size, sz, sizeof sz), batch,
             kvds_fmt_bytes(b->budget, bud, sizeof bud));
    return 0;
  }
  size_t nkeys = (size_t)(b->budget / size);
  if (nkeys > KEYS_MAX)
    nkeys = KEYS_MAX;
  nkeys -= nkeys % batch;
  char tag[48];
  snprintf(tag, sizeof tag, "%zu-%zu", size, batch);
  struct batch_bufs bb = {calloc(batch, sizeof *bb.vals),
                          calloc(batch, sizeof *bb.v),
                          calloc(batch, sizeof *bb.res)};
  struct samples s = {0};
  int rc = -ENOMEM;
  size_t live = 0;
  if (!bb.vals || !bb.v || !bb.res || make_keys(b, tag, nkeys))
    goto out;

  /* put: rewrite the ring of nkeys slots; a slot's old key is deleted
   * (untimed) before it is written again. */
  struct rot rs, rd;
  rot_init(&rs, b->region, size);
  rot_init(&rd, b->region, size);
  uint64_t wall0 = kvds_now_ns();
  size_t j = 0;
  int wrapped = 0;
  rc = 0;
  while (!g_stop && rc == 0) {
    if (wrapped && (rc = delete_keys_range(b, j, batch)))
      break;
    uint64_t t0 = kvds_now_ns();
    rc = put_batch(b, &bb, j, batch, size, &rs);
    uint64_t t1 = kvds_now_ns();
    if (rc || (rc = samples_add(&s, t1 - t0)))
      break;
    j += batch;
    if (j == nkeys) {
      j = 0;
      wrapped = 1;
    }
    if (s.total_ns >= b->phase_ns || t1 - wall0 >= 3 * b->phase_ns)
      break;
  }
  live = wrapped ? nkeys : j;
  if (rc || g_stop)
    goto out;
  add_row(b, size, batch, "put", &s);

  for (int copy = 0; copy < 2 && rc == 0 && !g_stop; copy++) {
    s.n = 0;
    s.total_ns = 0;
    wall0 = kvds_now_ns();
    j = 0;
    while (!g_stop) {
      uint64_t t0 = kvds_now_ns();
      rc = get_batch(b, &bb, j, batch, size, copy ? &rd : NULL);
      uint64_t t1 = kvds_now_ns();
      if (rc || (rc = samples_add(&s, t1 - t0)))
        break;
      j = (j + batch) % live;
      if (t1 - wall0 >= b->phase_ns)
        break;
    }
    if (rc == 0 && !g_stop)
      add_row(b, size, batch, copy ? "get+copy" : "get 0-copy", &s);
  }
out:
  if (live) {
    int drc = delete_keys_range(b, 0, live);
    if (rc == 0)
      rc = drc;
  }
  free(s.ns);
  free(bb.vals);
  free(bb.v);
  free(bb.res);
  if (rc)
    cli_err("bench", "%s x %zu: %s", kvds_fmt_bytes(size, sz, sizeof sz), batch,
            kvds_strerror(rc));
  return rc;
}

/* Batched kvds_exists over EXISTS_KEYS small keys. */
static int run_exists(struct bench *b) {
  static uint8_t val[64];
  struct kvds_iov vals[EXISTS_BATCH];
  uint8_t present[EXISTS_BATCH];
  struct samples s = {0};
  int rc = make_keys(b, "exists", EXISTS_KEYS);
  size_t written = 0;
  for (size_t i = 0; i < EXISTS_BATCH; i++)
    vals[i] = (struct kvds_iov){val, sizeof val};
  for (; rc == 0 && written < EXISTS_KEYS; written += EXISTS_BATCH)
    rc = kvds_mput(b->c, EXISTS_BATCH, b->iov + written, vals, NULL);
  uint64_t wall0 = kvds_now_ns();
  for (size_t off = 0; rc == 0 && !g_stop;
       off = (off + EXISTS_BATCH) % EXISTS_KEYS) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_exists(b->c, EXISTS_BATCH, b->iov + off, present);
    uint64_t t1 = kvds_now_ns();
    for (size_t i = 0; rc == 0 && i < EXISTS_BATCH; i++)
      if (!present[i])
        rc = KVDS_E_NOTFOUND;
    if (rc == 0)
      rc = samples_add(&s, t1 - t0);
    if (t1 - wall0 >= b->phase_ns)
      break;
  }
  if (rc == 0 && s.total_ns)
    b->exists_keys_s = (double)s.n * EXISTS_BATCH / ((double)s.total_ns / 1e9);
  int drc = delete_keys_range(b, 0, written);
  free(s.ns);
  if (rc == 0)
    rc = drc;
  if (rc)
    cli_err("bench", "exists: %s", kvds_strerror(rc));
  return rc;
}

/* Latency of one 4 KiB zero-copy get, and of a ping for reference. */
static int run_small(struct bench *b) {
  struct samples s = {0};
  struct kvds_value v;
  int res, rc = make_keys(b, "small", 1);
  if (rc == 0)
    rc = kvds_put(b->c, b->iov[0].base, b->iov[0].len, b->src, SMALL_SIZE);
  int put_ok = rc == 0;
  uint64_t wall0 = kvds_now_ns(), t1 = wall0;
  while (rc == 0 && !g_stop && t1 - wall0 < b->phase_ns) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_mget(b->c, 1, b->iov, 0, &v, &res);
    if (rc == 0 && (rc = res) == 0)
      kvds_release(b->c, 1, &v);
    t1 = kvds_now_ns();
    if (rc == 0)
      rc = samples_add(&s, t1 - t0);
  }
  qsort(s.ns, s.n, sizeof *s.ns, cmp_u64);
  b->small_p50_us = samples_pct_us(&s, 0.5);
  b->small_p99_us = samples_pct_us(&s, 0.99);
  s.n = 0;
  wall0 = t1 = kvds_now_ns();
  while (rc == 0 && !g_stop && t1 - wall0 < b->phase_ns / 2) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_ping(b->c);
    t1 = kvds_now_ns();
    if (rc == 0)
      rc = samples_add(&s, t1 - t0);
  }
  qsort(s.ns, s.n, sizeof *s.ns, cmp_u64);
  b->ping_p50_us = samples_pct_us(&s, 0.5);
  free(s.ns);
  if (put_ok) {
    int drc = kvds_delete(b->c, b->iov[0].base, b->iov[0].len);
    if (rc == 0)
      rc = drc;
  }
  if (rc)
    cli_err("bench", "small get: %s", kvds_strerror(rc));
  return rc;
}

/* Deletes anything left under the bench's prefix (after an error). */
static void sweep(struct bench *b) {
  for (int pass = 0; pass < 100; pass++) {
    struct kvds_list *l;
    if (kvds_list(b->c, b->prefix, strlen(b->prefix), NULL, 0, 1000, &l))
      return;
    size_t n = l->n;
    for (size_t i = 0; i < l->n; i++)
      kvds_delete(b->c, l->entries[i].key, l->entries[i].klen);
    kvds_list_free(l);
    if (n == 0)
      return;
  }
}

/* ---- reporting ---------------------------------------------------------- */

static void print_header(struct bench *b) {
  char cap[32], used[32], bud[32];
  printf("kvds bench local: worker %s via %s%s\n", b->o->addr, b->via,
         kvds_client_is_local(b->c)
             ? ""
             : " (values are copied through the socket: not zero-copy)");
  printf("pool %s, %s used; bench working set at most %s; %.2f s per "
         "operation per case\n",
         kvds_fmt_bytes(b->st0.pool_capacity, cap, sizeof cap),
         kvds_fmt_bytes(b->st0.pool_used, used, sizeof used),
         kvds_fmt_bytes(b->budget, bud, sizeof bud), (double)b->phase_ns / 1e9);
  printf("GB/s = 10^9 B/s; latency is per call (a call moves `batch` "
         "values)\n\n");
}

static void print_memcpy_row(const struct memcpy_row *m) {
  char sz[32];
  printf("%9s %14.2f %16.2f\n", kvds_fmt_bytes(m->size, sz, sizeof sz),
         m->dram_gbps, m->hot_gbps);
  fflush(stdout);
}

static void print_footer(const struct bench *b) {
  printf("\nget 0-copy hands out pointers into the pool: its GB/s is the "
         "rate at which\nvalues become readable, not bytes moved.\n\n");
  printf("exists (batches of %d):  %.2f M keys/s\n", EXISTS_BATCH,
         b->exists_keys_s / 1e6);
  char p50[16], p99[16], ping[16];
  printf("small get (4 KiB, batch 1, zero-copy):  p50 %s us, p99 %s us "
         "(ping p50 %s us)\n",
         fmt3(b->small_p50_us, p50, sizeof p50),
         fmt3(b->small_p99_us, p99, sizeof p99),
         fmt3(b->ping_p50_us, ping, sizeof ping));
}

static int print_json(const struct bench *b) {
  json_t *root = json_object(), *mem = json_array(), *cases = json_array();
  json_object_set_new(root, "worker", json_string(b->o->addr));
  json_object_set_new(root, "via", json_string(b->via));
  json_object_set_new(root, "shared_memory",
                      json_boolean(kvds_client_is_local(b->c)));
  json_object_set_new(root, "pool_capacity",
                      json_integer((json_int_t)b->st0.pool_capacity));
  json_object_set_new(root, "budget_bytes",
                      json_integer((json_int_t)b->budget));
  json_object_set_new(root, "seconds_per_op",
                      json_real((double)b->phase_ns / 1e9));
  for (int i = 0; i < b->o->nsizes; i++)
    json_array_append_new(mem, json_pack("{s:I, s:f, s:f}", "size",
                                         (json_int_t)b->mrows[i].size,
                                         "dram_gbps", b->mrows[i].dram_gbps,
                                         "hot_gbps", b->mrows[i].hot_gbps));
  for (int i = 0; i < b->nrows; i++) {
    const struct row *r = &b->rows[i];
    json_t *o = json_pack("{s:I, s:I}", "size", (json_int_t)r->size, "batch",
                          (json_int_t)r->batch);
    if (!r->op) {
      json_object_set_new(o, "skipped", json_string("exceeds budget"));
    } else {
      json_object_set_new(o, "op", json_string(r->op));
      json_object_set_new(o, "ops_per_s", json_real(r->ops_s));
      json_object_set_new(o, "gbps", json_real(r->gbps));
      json_object_set_new(o, "memcpy_gbps", json_real(r->memcpy_gbps));
      json_object_set_new(
          o, "ratio",
          json_real(r->memcpy_gbps > 0 ? r->gbps / r->memcpy_gbps : 0));
      json_object_set_new(o, "p50_us", json_real(r->p50_us));
      json_object_set_new(o, "p99_us", json_real(r->p99_us));
      json_object_set_new(o, "calls", json_integer((json_int_t)r->calls));
    }
    json_array_append_new(cases, o);
  }
  json_object_set_new(root, "memcpy", mem);
  json_object_set_new(root, "cases", cases);
  json_object_set_new(root, "exists",
                      json_pack("{s:i, s:f}", "batch", EXISTS_BATCH,
                                "keys_per_s", b->exists_keys_s));
  json_object_set_new(root, "small_get",
                      json_pack("{s:i, s:i, s:f, s:f, s:f}", "size", SMALL_SIZE,
                                "batch", 1, "p50_us", b->small_p50_us, "p99_us",
                                b->small_p99_us, "ping_p50_us",
                                b->ping_p50_us));
  int rc =
      json_dumpf(root, stdout,
                 JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
  putchar('\n');
  json_decref(root);
  return rc ? CLI_FAIL : CLI_OK;
}

/* ---- entry -------------------------------------------------------------- */

/* The Python side of `kvds bench connector`: a clear message when the
 * interpreter lacks the kvds package, then kvds.bench_connector.main(). */
static const char CONNECTOR_BOOT[] =
    "import sys\n"
    "try:\n"
    "    from kvds.bench_connector import main\n"
    "except ImportError as e:\n"
    "    sys.exit(f'kvds bench connector: {sys.executable} cannot import '\n"
    "             f'kvds.bench_connector ({e}); set $KVDS_PYTHON to the '\n"
    "             f'Python the kvds package is installed in (make python: '\n"
    "             f'.venv/bin/python)')\n"
    "sys.exit(main())\n";

/* `kvds bench connector ARGS...`: replaces this process with
 * $KVDS_PYTHON -c CONNECTOR_BOOT --kvds-bin <this binary> ARGS...; returns
 * only on failure. */
static int run_connector(int argc, char **argv) {
  const char *py = getenv("KVDS_PYTHON");
  if (!py || !*py)
    py = "python3";
  static char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  char **args = calloc((size_t)argc + 6, sizeof *args);
  if (!args) {
    cli_err("bench", "out of memory");
    return CLI_FAIL;
  }
  int k = 0;
  args[k++] = (char *)py;
  args[k++] = "-c";
  args[k++] = (char *)CONNECTOR_BOOT;
  if (n > 0) {
    self[n] = '\0';
    args[k++] = "--kvds-bin";
    args[k++] = self;
  }
  for (int i = 1; i < argc; i++)
    args[k++] = argv[i];
  args[k] = NULL;
  setenv("KVDS_BENCH_PROG", "kvds bench connector", 1);
  fflush(NULL);
  execvp(py, args);
  int err = errno;
  cli_err("bench",
          "cannot run the Python interpreter '%s': %s (set "
          "$KVDS_PYTHON to a Python with the kvds package and vLLM)",
          py, strerror(err));
  free(args);
  return CLI_FAIL;
}

/* Half the pool, and never past 90% of the room left below the eviction
 * watermark, so the bench evicts nothing. */
static uint64_t compute_budget(const struct kvds_stats *st) {
  double high = (double)st->high_watermark_ppm / 1e6;
  double room = high * (double)st->pool_capacity - (double)st->pool_used;
  uint64_t budget = st->pool_capacity / 2;
  if (room < 0)
    room = 0;
  if ((double)budget > room * 0.9)
    budget = (uint64_t)(room * 0.9);
  return budget;
}

static int alloc_regions(struct bench *b) {
  uint64_t maxsize = 0;
  for (int i = 0; i < b->o->nsizes; i++)
    if (b->o->sizes[i] > maxsize)
      maxsize = b->o->sizes[i];
  b->region = (size_t)(REGION_MIN > 2 * maxsize ? REGION_MIN : 2 * maxsize);
  void *s = NULL, *d = NULL;
  if (posix_memalign(&s, 4096, b->region) ||
      posix_memalign(&d, 4096, b->region)) {
    free(s);
    return -ENOMEM;
  }
  b->src = s;
  b->dst = d;
  /* Touch every page (and make the source non-zero) before timing. */
  for (size_t i = 0; i < b->region; i += 8)
    kvds_put_u64(b->src + i, i * 0x9e3779b97f4a7c15ull);
  memset(b->dst, 0, b->region);
  return 0;
}

static int run_all(struct bench *b) {
  uint64_t memcpy_ns = (uint64_t)(fmin(0.2, b->o->seconds / 9) * 1e9);
  if (!b->o->json) {
    print_header(b);
    printf("memcpy, one thread:\n     size      DRAM GB/s   cache-hot GB/s\n");
  }
  for (int i = 0; i < b->o->nsizes && !g_stop; i++) {
    struct memcpy_row *m = &b->mrows[i];
    m->size = b->o->sizes[i];
    m->dram_gbps = memcpy_gbps(b, (size_t)m->size, 0, memcpy_ns);
    m->hot_gbps = memcpy_gbps(b, (size_t)m->size, 1, memcpy_ns);
    if (!b->o->json)
      print_memcpy_row(m);
  }
  if (!b->o->json)
    printf("\n     size  batch  op               ops/s     GB/s memcpy GB/s "
           "ratio    p50 us    p99 us\n");
  int rc = 0;
  for (int i = 0; i < b->o->nsizes && rc == 0 && !g_stop; i++)
    for (int j = 0; j < b->o->nbatches && rc == 0 && !g_stop; j++)
      rc = run_case(b, (size_t)b->o->sizes[i], (size_t)b->o->batches[j]);
  if (rc == 0 && !g_stop)
    rc = run_exists(b);
  if (rc == 0 && !g_stop)
    rc = run_small(b);
  return rc;
}

int cmd_bench(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "connector") == 0)
    return run_connector(argc - 1, argv + 1);
  struct bench_opts o = {0};
  int rc = parse_opts(argc, argv, &o);
  if (rc)
    return rc < 0 ? CLI_OK : rc;
  o.addr = cli_worker_addr(o.addr);
  struct bench b = {.o = &o};
  if (cli_connect("bench", o.addr, 0, &b.c, b.via, sizeof b.via))
    return CLI_FAIL;
  int ret = CLI_FAIL;
  rc = kvds_stats(b.c, &b.st0);
  if (rc) {
    cli_err("bench", "stats request failed: %s", kvds_strerror(rc));
    goto out;
  }
  b.budget = compute_budget(&b.st0);
  b.phase_ns = (uint64_t)(o.seconds / 3 * 1e9);
  snprintf(b.prefix, sizeof b.prefix, "kvds-bench/%ld/", (long)getpid());
  if (alloc_regions(&b)) {
    cli_err("bench", "cannot allocate 2 x %zu MiB of copy buffers",
            b.region >> 20);
    goto out;
  }
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  rc = run_all(&b);
  if (rc || g_stop)
    sweep(&b);
  if (g_stop) {
    fprintf(stderr, "kvds bench: interrupted; the bench's keys were "
                    "removed\n");
    ret = 128 + (int)g_stop;
  } else if (rc == 0) {
    ret = o.json ? print_json(&b) : (print_footer(&b), CLI_OK);
  }
out:
  kvds_client_close(b.c);
  free(b.src);
  free(b.dst);
  free(b.keys);
  free(b.iov);
  return ret;
}
