/*
 * bench.c — `kvds bench local`: put / zero-copy get / copying get against a
 * running worker, each figure printed next to memcpy measured in the same
 * run, plus batched exists throughput and small-get latency.
 * `kvds bench connector` runs the Python bench of the vLLM connector
 * (python/kvds/bench_connector.py) in $KVDS_PYTHON, else python3, and
 * `kvds bench ttft` the TTFT bench with real vLLM servers
 * (python/kvds/bench_serve.py) the same way.
 * `kvds bench remote` starts two workers peered with each other and
 * measures reads on one of values that live on the other (pulled over the
 * peer connections during the call) against raw loopback TCP moving the
 * same bytes over as many streams, plus remote lookup latency.
 *
 * Throughput is computed from the time spent inside the timed calls; the
 * untimed work between them (deleting the previous round's keys before a
 * slot is rewritten) is excluded. Latency is per call; one call moves
 * `batch` values.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/util.h"

static const char HELP[] =
    "usage: kvds bench local [options]\n"
    "       kvds bench remote [options]\n"
    "       kvds bench connector [options]\n"
    "       kvds bench ttft [options]\n"
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
    "kvds bench remote:\n"
    "Reads across two workers. Starts worker A and worker B of this binary\n"
    "on free loopback ports, each with --peers naming the other (or uses\n"
    "running ones: --worker-a/--worker-b), waits until each sees the other,\n"
    "then for every size x batch puts fresh values on A (not timed) and\n"
    "times kvds_mget_ex on B through a local shared-memory client of B with\n"
    "hint = A: B pulls the values from A over its peer connections into its\n"
    "pool (xxh3 verified) and answers with zero-copy views. Each call reads\n"
    "keys B does not hold; B's copies are deleted (not timed) before keys\n"
    "are read again. Next to each figure: raw TCP over loopback measured in\n"
    "the same run, moving the same bytes per call over the same number of\n"
    "streams as B uses (min(pull threads, ceil(batch / 4))): a request per\n"
    "stream and call, answered from a source buffer and received straight\n"
    "into a destination buffer, one sending and one receiving thread per\n"
    "stream. Then the same reads without a hint (B asks each key's home\n"
    "worker where it lives) for one size, and lookup latency: kvds_exists\n"
    "of one key and kvds_lookup_prefix of a 32-key chain on B for keys held\n"
    "only on A (the keys' directory homes are spread over both workers by\n"
    "hash), next to the same calls on A answered from its own store.\n"
    "Started workers are stopped at the end, also after an error or SIGINT;\n"
    "their sockets and logs go in a fresh directory under $TMPDIR (else\n"
    "/tmp), removed at the end. Progress lines (\"kvds bench remote: ...\")\n"
    "go to stderr.\n"
    "\n"
    "      --worker-a ADDR   use this running worker as A (with --worker-b;\n"
    "                        B must list A as a peer and run on this host;\n"
    "                        -m and --threads are then usage errors)\n"
    "      --worker-b ADDR   use this running worker as B\n"
    "  -m, --memory SIZE     pool of each started worker (default 2GiB)\n"
    "      --pull-threads N  B's pull threads (default 4): passed to the\n"
    "                        started workers; with --worker-b give B's value\n"
    "      --threads N       I/O threads of each started worker (default 1)\n"
    "      --sizes LIST      value sizes (default 256KiB,1MiB,4MiB,16MiB)\n"
    "      --batch LIST      values per call (default 1,8,64)\n"
    "      --max-bytes SIZE  values put on A per case (default 512MiB); a\n"
    "                        case whose one call reads more is skipped\n"
    "      --dir-size SIZE   value size of the reads without a hint\n"
    "                        (default 1MiB)\n"
    "      --seconds S       timed reads per case (default 0.3): at least S\n"
    "                        and 3 calls, unless the case's wall time reaches\n"
    "                        10 x S + 2 s first (then fewer seconds, still\n"
    "                        >= 3 calls); raw TCP then moves the same bytes\n"
    "      --quick           short run, a few seconds (256MiB pools,\n"
    "                        --max-bytes 32MiB, --seconds 0.03)\n"
    "      --json            print one JSON document instead of tables\n"
    "  -h, --help            this text\n"
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
    "options (--addr, --tokens, --layers, --iters, --layout, --json, ...).\n"
    "With --ttft it starts three vLLM servers instead (plain vLLM and two\n"
    "through kvds, a tiny local model) and prints the time to first token of\n"
    "recompute, vLLM's prefix-cache hit, a kvds local hit and kvds PD.\n"
    "\n"
    "kvds bench ttft:\n"
    "Seed 004's TTFT steps with real vLLM servers through the kvds connector,\n"
    "timed by vLLM's own `vllm bench serve` (random prompts; default 2048\n"
    "tokens in, 10 out, 24 requests, concurrency 6): 1 baseline (set A,\n"
    "nothing cached), 2 local DRAM hit (set B evicts A from vLLM's own\n"
    "cache, then A again: loaded from the node's worker), 3 cross-node hit\n"
    "(A on a second instance with its own worker, pulled from the first),\n"
    "then PD 1P1D and 2P2D through `kvds proxy` of this binary. Prints the\n"
    "TTFT median and p99 per step, the hits and bytes read from the\n"
    "connector's log and the workers, the ratios TTFT3/TTFT2 and\n"
    "TTFT2/TTFT1, and LMCache's row (run side by side when it starts). Runs\n"
    "the Python module kvds.bench_serve in $KVDS_PYTHON (else python3); it\n"
    "starts and stops its own workers, servers and proxies. `kvds bench ttft\n"
    "--help` lists its options (--quick, --steps, --json, --plot FILE.png,\n"
    "...).\n";

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

/* Parses opt's argument as a size (size set) or a plain integer in
 * [lo, hi]; else prints one line and returns CLI_USAGE. */
static int parse_u64_in(const char *opt, const char *arg, int size, uint64_t lo,
                        uint64_t hi, uint64_t *out) {
  uint64_t v;
  int rc = size ? cli_parse_size_opt("bench", opt, arg, &v)
                : cli_parse_u64_opt("bench", opt, arg, &v);
  if (rc)
    return rc;
  if (v < lo || v > hi) {
    char a[32], b[32];
    if (size)
      cli_err("bench", "%s %s is out of range (%s..%s)", opt, arg,
              kvds_fmt_bytes(lo, a, sizeof a), kvds_fmt_bytes(hi, b, sizeof b));
    else
      cli_err("bench", "%s %s is out of range (%llu..%llu)", opt, arg,
              (unsigned long long)lo, (unsigned long long)hi);
    return CLI_USAGE;
  }
  *out = v;
  return CLI_OK;
}

/* The same for a decimal number (seconds). */
static int parse_double_in(const char *opt, const char *arg, double lo,
                           double hi, double *out) {
  double v;
  int rc = cli_parse_double_opt("bench", opt, arg, &v);
  if (rc)
    return rc;
  if (v < lo || v > hi) {
    cli_err("bench", "%s %s is out of range (%g..%g)", opt, arg, lo, hi);
    return CLI_USAGE;
  }
  *out = v;
  return CLI_OK;
}

/* Parses a comma-separated list of sizes (1..1GiB) or of batches
 * (1..KVDS_BATCH_MAX); 0 or CLI_USAGE. */
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
    int rc = parse_u64_in(opt, t, sizes, 1,
                          sizes ? (1ull << 30) : KVDS_BATCH_MAX, &out[*n]);
    if (rc)
      return rc;
    (*n)++;
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
      rc = parse_double_in("--seconds", optarg, 0.01, 3600, &o->seconds);
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
    cli_err("bench",
            "%s (usage: kvds bench local|remote|connector|ttft [options])",
            optind >= argc
                ? "missing the mode 'local', 'remote', 'connector' or 'ttft'"
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

/* Percentile q in [0,1] of sorted samples, in microseconds. */
static double pct_us(const struct samples *s, double q) {
  if (s->n == 0)
    return 0;
  return (double)s->ns[(size_t)(q * (double)(s->n - 1) + 0.5)] / 1e3;
}

/* Sorts the samples; *p50 and *p99 (optional) in microseconds. */
static void samples_p50_p99(struct samples *s, double *p50, double *p99) {
  qsort(s->ns, s->n, sizeof *s->ns, cmp_u64);
  *p50 = pct_us(s, 0.5);
  if (p99)
    *p99 = pct_us(s, 0.99);
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

/* Keys prefix<tag>/<i>, KEY_STRIDE bytes each. */
struct keyset {
  char *buf;
  struct kvds_iov *iov;
  size_t n;
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
  struct keyset ks; /* the current case's keys */
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

static void keyset_free(struct keyset *ks) {
  free(ks->buf);
  free(ks->iov);
  *ks = (struct keyset){0};
}

static int keyset_make(struct keyset *ks, const char *prefix, const char *tag,
                       size_t n) {
  keyset_free(ks);
  ks->buf = malloc(n * KEY_STRIDE);
  ks->iov = malloc(n * sizeof *ks->iov);
  if (!ks->buf || !ks->iov) {
    keyset_free(ks);
    return -ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    char *k = ks->buf + i * KEY_STRIDE;
    int len = snprintf(k, KEY_STRIDE, "%s%s/%zu", prefix, tag, i);
    ks->iov[i] = (struct kvds_iov){k, (size_t)len};
  }
  ks->n = n;
  return 0;
}

/* Deletes n keys on c's worker (its copies only); absent keys (say, evicted)
 * are fine. */
static int delete_keys(kvds_client *c, const struct kvds_iov *keys, size_t n) {
  for (size_t i = 0; i < n; i += KVDS_BATCH_MAX) {
    size_t m = n - i < KVDS_BATCH_MAX ? n - i : KVDS_BATCH_MAX;
    int rc = kvds_mdelete(c, m, keys + i, NULL);
    if (rc && rc != KVDS_E_NOTFOUND)
      return rc;
  }
  return 0;
}

/* Deletes anything left under prefix on c's worker (after an error). */
static void sweep(kvds_client *c, const char *prefix) {
  for (int pass = 0; c && pass < 100; pass++) {
    struct kvds_list *l;
    if (kvds_list(c, prefix, strlen(prefix), NULL, 0, 1000, &l))
      return;
    size_t n = l->n;
    for (size_t i = 0; i < l->n; i++)
      kvds_delete(c, l->entries[i].key, l->entries[i].klen);
    kvds_list_free(l);
    if (n == 0)
      return;
  }
}

/* Two page-aligned buffers of region bytes, every page touched (the source
 * non-zero) so that no timing pays for faults. 0 or -ENOMEM. */
static int alloc_buffers(size_t region, uint8_t **src, uint8_t **dst) {
  void *s = NULL, *d = NULL;
  if (posix_memalign(&s, 4096, region) || posix_memalign(&d, 4096, region)) {
    free(s);
    return -ENOMEM;
  }
  for (size_t i = 0; i < region; i += 8)
    kvds_put_u64((uint8_t *)s + i, i * 0x9e3779b97f4a7c15ull);
  memset(d, 0, region);
  *src = s;
  *dst = d;
  return 0;
}

/* This binary's path (static storage), or NULL. */
static const char *self_exe(void) {
  static char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0)
    return NULL;
  self[n] = '\0';
  return self;
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
  int rc = kvds_mput(b->c, n, b->ks.iov + first, bb->vals, bb->res);
  return first_error(rc, bb->res, n);
}

/* One timed get call; copies the values out when rd is set. */
static int get_batch(struct bench *b, struct batch_bufs *bb, size_t first,
                     size_t n, size_t size, struct rot *rd) {
  int rc = kvds_mget(b->c, n, b->ks.iov + first, 0, bb->v, bb->res);
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
  double secs = (double)s->total_ns / 1e9;
  double ops = (double)s->n * (double)batch;
  *r = (struct row){.size = size,
                    .batch = batch,
                    .op = op,
                    .ops_s = secs > 0 ? ops / secs : 0,
                    .gbps = secs > 0 ? ops * (double)size / secs / 1e9 : 0,
                    .memcpy_gbps = dram_memcpy_for(b, size),
                    .calls = s->n};
  samples_p50_p99(s, &r->p50_us, &r->p99_us);
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
  if (!bb.vals || !bb.v || !bb.res ||
      keyset_make(&b->ks, b->prefix, tag, nkeys))
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
    if (wrapped && (rc = delete_keys(b->c, b->ks.iov + j, batch)))
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
    int drc = delete_keys(b->c, b->ks.iov, live);
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
  int rc = keyset_make(&b->ks, b->prefix, "exists", EXISTS_KEYS);
  size_t written = 0;
  for (size_t i = 0; i < EXISTS_BATCH; i++)
    vals[i] = (struct kvds_iov){val, sizeof val};
  for (; rc == 0 && written < EXISTS_KEYS; written += EXISTS_BATCH)
    rc = kvds_mput(b->c, EXISTS_BATCH, b->ks.iov + written, vals, NULL);
  uint64_t wall0 = kvds_now_ns();
  for (size_t off = 0; rc == 0 && !g_stop;
       off = (off + EXISTS_BATCH) % EXISTS_KEYS) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_exists(b->c, EXISTS_BATCH, b->ks.iov + off, present);
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
  int drc = delete_keys(b->c, b->ks.iov, written);
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
  int res, rc = keyset_make(&b->ks, b->prefix, "small", 1);
  if (rc == 0)
    rc =
        kvds_put(b->c, b->ks.iov[0].base, b->ks.iov[0].len, b->src, SMALL_SIZE);
  int put_ok = rc == 0;
  uint64_t wall0 = kvds_now_ns(), t1 = wall0;
  while (rc == 0 && !g_stop && t1 - wall0 < b->phase_ns) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_mget(b->c, 1, b->ks.iov, 0, &v, &res);
    if (rc == 0 && (rc = res) == 0)
      kvds_release(b->c, 1, &v);
    t1 = kvds_now_ns();
    if (rc == 0)
      rc = samples_add(&s, t1 - t0);
  }
  samples_p50_p99(&s, &b->small_p50_us, &b->small_p99_us);
  s.n = 0;
  wall0 = t1 = kvds_now_ns();
  while (rc == 0 && !g_stop && t1 - wall0 < b->phase_ns / 2) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_ping(b->c);
    t1 = kvds_now_ns();
    if (rc == 0)
      rc = samples_add(&s, t1 - t0);
  }
  samples_p50_p99(&s, &b->ping_p50_us, NULL);
  free(s.ns);
  if (put_ok) {
    int drc = kvds_delete(b->c, b->ks.iov[0].base, b->ks.iov[0].len);
    if (rc == 0)
      rc = drc;
  }
  if (rc)
    cli_err("bench", "small get: %s", kvds_strerror(rc));
  return rc;
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

/* The Python side of `kvds bench connector` and `kvds bench ttft`: a
 * clear message when the interpreter lacks the kvds package, then the
 * module's main(). argv[1] names the module and argv[2] the mode; both are
 * removed before main() parses sys.argv. */
static const char PYTHON_BOOT[] =
    "import importlib, sys\n"
    "mod, prog = sys.argv[1], sys.argv[2]\n"
    "del sys.argv[1:3]\n"
    "try:\n"
    "    main = importlib.import_module(mod).main\n"
    "except ImportError as e:\n"
    "    sys.exit(f'{prog}: {sys.executable} cannot import {mod} ({e}); '\n"
    "             f'set $KVDS_PYTHON to the Python the kvds package is '\n"
    "             f'installed in (make python: .venv/bin/python)')\n"
    "sys.exit(main())\n";

/* `kvds bench MODE ARGS...` for a mode written in Python: replaces this
 * process with $KVDS_PYTHON -c PYTHON_BOOT MODULE "kvds bench MODE"
 * --kvds-bin <this binary> ARGS...; returns only on failure. */
static int run_python(const char *module, int argc, char **argv) {
  const char *py = getenv("KVDS_PYTHON");
  if (!py || !*py)
    py = "python3";
  const char *self = self_exe();
  char prog[64];
  snprintf(prog, sizeof prog, "kvds bench %s", argv[0]);
  char **args = calloc((size_t)argc + 8, sizeof *args);
  if (!args) {
    cli_err("bench", "out of memory");
    return CLI_FAIL;
  }
  int k = 0;
  args[k++] = (char *)py;
  args[k++] = "-c";
  args[k++] = (char *)PYTHON_BOOT;
  args[k++] = (char *)module;
  args[k++] = prog;
  if (self) {
    args[k++] = "--kvds-bin";
    args[k++] = (char *)self;
  }
  for (int i = 1; i < argc; i++)
    args[k++] = argv[i];
  args[k] = NULL;
  setenv("KVDS_BENCH_PROG", prog, 1);
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
  return alloc_buffers(b->region, &b->src, &b->dst);
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

/* ---- kvds bench remote --------------------------------------------------- */

#define R_STREAMS_MAX 64
#define R_LAT_KEYS 64     /* keys cycled by the lookup latency probes */
#define R_CHAIN 32        /* keys of the lookup_prefix chain */
#define R_PUT_CHUNK 256   /* values per untimed kvds_mput on A */
#define R_IO_TIMEOUT_S 10 /* raw TCP: a stream stalled this long fails */

struct remote_opts {
  const char *addr_a, *addr_b; /* running workers; NULL = start them */
  uint64_t sizes[MAX_LIST];
  int nsizes;
  uint64_t batches[MAX_LIST];
  int nbatches;
  uint64_t memory, max_bytes, dir_size;
  uint64_t pull_threads, threads;
  double seconds;
  int json;
};

/* A progress line "kvds bench remote: ..." on stderr (errors are "kvds
 * bench: ..."). */
__attribute__((format(printf, 1, 2))) static void progress(const char *fmt,
                                                           ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "kvds bench remote: %s\n", msg);
}

/* A worker started by the bench. */
struct rworker {
  pid_t pid; /* 0: none (or reaped) */
  int port;
  char addr[64];
  char log[PATH_MAX + 32];
};

/* Raw TCP over loopback: stream i is a connection between a receiving
 * thread (asks for len bytes at src_off, receives them at dst_off) and a
 * sending thread (answers from the source buffer). A call posts the go
 * semaphore of the streams it uses only, so idle receivers stay asleep. */
struct tcp_ceiling;
struct tcp_stream {
  struct tcp_ceiling *t;
  int sfd, rfd; /* the sender's and the receiver's ends */
  pthread_t sender, receiver;
  int have_sender, have_receiver, have_go;
  sem_t go;                       /* one post per call, or at quit */
  uint64_t len, src_off, dst_off; /* this call's transfer */
};

struct tcp_ceiling {
  pthread_mutex_t lock;
  pthread_cond_t done; /* on CLOCK_MONOTONIC */
  int ndone, err;      /* receivers finished with this call; first error */
  int quit;            /* written before the posts that wake for it */
  const uint8_t *src;
  uint8_t *dst;
  size_t region;
  int n; /* streams set up */
  struct tcp_stream s[R_STREAMS_MAX];
};

struct rpoint {
  const char *via; /* "hint" or "directory" */
  uint64_t size, batch;
  int streams, skipped;
  uint64_t calls, bytes, pulled;
  double gbps, tcp_gbps, p50_us, p99_us;
};

struct rlat {
  uint64_t n;
  double p50_us, p99_us;
};

struct remote {
  struct remote_opts *o;
  int started;
  char dir[PATH_MAX];
  struct rworker w[2];
  const char *addr_a, *addr_b;
  kvds_client *ca, *cb;
  char prefix[64];
  uint8_t *src, *dst;
  size_t region;
  uint64_t phase_ns;
  struct tcp_ceiling tcp;
  int tcp_up;
  struct rpoint pts[MAX_LIST * MAX_LIST + MAX_LIST];
  int npts;
  struct rlat ex_remote, ex_local, pre_remote, pre_local;
};

static int remote_parse(int argc, char **argv, struct remote_opts *o) {
  enum {
    O_A = 256,
    O_B,
    O_PULL,
    O_THREADS,
    O_SIZES,
    O_BATCH,
    O_MAX,
    O_DIR,
    O_SECONDS,
    O_QUICK,
    O_JSON
  };
  static const struct option lo[] = {
      {"worker-a", required_argument, NULL, O_A},
      {"worker-b", required_argument, NULL, O_B},
      {"memory", required_argument, NULL, 'm'},
      {"pull-threads", required_argument, NULL, O_PULL},
      {"threads", required_argument, NULL, O_THREADS},
      {"sizes", required_argument, NULL, O_SIZES},
      {"batch", required_argument, NULL, O_BATCH},
      {"max-bytes", required_argument, NULL, O_MAX},
      {"dir-size", required_argument, NULL, O_DIR},
      {"seconds", required_argument, NULL, O_SECONDS},
      {"quick", no_argument, NULL, O_QUICK},
      {"json", no_argument, NULL, O_JSON},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  int c, first = 1, quick = 0, have_mem = 0, have_max = 0, have_secs = 0,
         have_threads = 0;
  parse_list("--sizes", "256KiB,1MiB,4MiB,16MiB", 1, o->sizes, &o->nsizes);
  parse_list("--batch", "1,8,64", 0, o->batches, &o->nbatches);
  o->memory = 2ull << 30;
  o->max_bytes = 512ull << 20;
  o->dir_size = 1ull << 20;
  o->pull_threads = 4;
  o->threads = 1;
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
      rc = parse_u64_in("--pull-threads", optarg, 0, 1, R_STREAMS_MAX,
                        &o->pull_threads);
      break;
    case O_THREADS:
      rc = parse_u64_in("--threads", optarg, 0, 1, 64, &o->threads);
      have_threads = 1;
      break;
    case O_SIZES:
      rc = parse_list("--sizes", optarg, 1, o->sizes, &o->nsizes);
      break;
    case O_BATCH:
      rc = parse_list("--batch", optarg, 0, o->batches, &o->nbatches);
      break;
    case O_MAX:
      rc = parse_u64_in("--max-bytes", optarg, 1, 4096, 64ull << 30,
                        &o->max_bytes);
      have_max = 1;
      break;
    case O_DIR:
      rc = parse_u64_in("--dir-size", optarg, 1, 1, 1ull << 30, &o->dir_size);
      break;
    case O_SECONDS:
      rc = parse_double_in("--seconds", optarg, 0.001, 3600, &o->seconds);
      have_secs = 1;
      break;
    case O_QUICK:
      quick = 1;
      break;
    case O_JSON:
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
  if (optind != argc) {
    cli_err("bench", "remote: unexpected argument '%s'", argv[optind]);
    return CLI_USAGE;
  }
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
static int put_all(kvds_client *c, const struct keyset *ks, const uint8_t *src,
                   size_t size) {
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
static int wait_visible(kvds_client *c, const struct keyset *ks) {
  uint8_t present[EXISTS_BATCH];
  uint64_t deadline = kvds_now_ns() + 10000000000ull;
  for (size_t i = 0; i < ks->n && !g_stop;) {
    size_t m = ks->n - i < EXISTS_BATCH ? ks->n - i : EXISTS_BATCH;
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
      cli_sleep_ms(1);
    }
  }
  return 0;
}

/* ---- workers ---- */

/* A TCP port on 127.0.0.1 that was free a moment ago. */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
      getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
    port = ntohs(sa.sin_port);
  if (fd >= 0)
    close(fd);
  return port;
}

/* Starts `kvds worker` on w->port peered with peer_port; its output goes to
 * w->log, its Unix socket into r->dir. The child gets its own process group
 * (a terminal's ^C reaches the bench, which stops the worker in order) and
 * dies with the bench. */
static int worker_spawn(struct remote *r, struct rworker *w, int peer_port) {
  const char *self = self_exe();
  if (!self)
    return -errno;
  char peers[64], mem[32], pulls[24], threads[24];
  snprintf(w->addr, sizeof w->addr, "127.0.0.1:%d", w->port);
  snprintf(peers, sizeof peers, "127.0.0.1:%d", peer_port);
  snprintf(w->log, sizeof w->log, "%s/worker-%d.log", r->dir, w->port);
  snprintf(mem, sizeof mem, "%llu", (unsigned long long)r->o->memory);
  snprintf(pulls, sizeof pulls, "%llu", (unsigned long long)r->o->pull_threads);
  snprintf(threads, sizeof threads, "%llu", (unsigned long long)r->o->threads);
  const char *token = getenv("KVDS_AUTH_TOKEN_FILE");
  char *args[] = {(char *)self,
                  "worker",
                  "--listen",
                  w->addr,
                  "--peers",
                  peers,
                  "--memory",
                  mem,
                  "--pull-threads",
                  pulls,
                  "--threads",
                  threads,
                  token && *token ? "--auth-token-file" : NULL,
                  (char *)token,
                  NULL};
  pid_t parent = getpid();
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0)
    return -errno;
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
      _exit(127);
    int in = open("/dev/null", O_RDONLY);
    int out = open(w->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (in < 0 || out < 0)
      _exit(127);
    if (dup2(in, STDIN_FILENO) < 0 || dup2(out, STDOUT_FILENO) < 0 ||
        dup2(out, STDERR_FILENO) < 0)
      _exit(127);
    if (in > STDERR_FILENO)
      close(in);
    if (out > STDERR_FILENO)
      close(out);
    setenv("KVDS_RUN_DIR", r->dir, 1);
    execv(self, args);
    _exit(127);
  }
  w->pid = pid;
  return 0;
}

/* SIGTERM, then waits up to 30 s (SIGKILL after); then removes its log,
 * also when the worker had already exited and been reaped. */
static void worker_stop(struct rworker *w) {
  if (w->log[0]) {
    unlink(w->log);
    w->log[0] = '\0';
  }
  if (w->pid <= 0)
    return;
  kill(w->pid, SIGTERM);
  uint64_t deadline = kvds_now_ns() + 30000000000ull;
  int st;
  for (;;) {
    pid_t p = waitpid(w->pid, &st, WNOHANG);
    if (p == w->pid || (p < 0 && errno != EINTR))
      break;
    if (kvds_now_ns() > deadline) {
      kill(w->pid, SIGKILL);
      while (waitpid(w->pid, &st, 0) < 0 && errno == EINTR)
        ;
      break;
    }
    cli_sleep_ms(10);
  }
  w->pid = 0;
}

/* Polls until the worker answers a ping (or exits, or the deadline). */
static int worker_wait_ready(struct rworker *w, uint64_t deadline_ns) {
  char tail[512];
  for (;;) {
    int st;
    if (waitpid(w->pid, &st, WNOHANG) == w->pid) {
      w->pid = 0;
      cli_err("bench", "worker %s exited (%s %d) while starting: %s", w->addr,
              WIFEXITED(st) ? "status" : "signal",
              WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st),
              cli_log_tail(w->log, 0, tail, sizeof tail));
      return CLI_FAIL;
    }
    kvds_client *c;
    if (cli_try_connect(w->addr, 1000, KVDS_CONNECT_LAZY_MAP, &c, NULL, 0) ==
        0) {
      int rc = kvds_ping(c);
      kvds_client_close(c);
      if (rc == 0)
        return CLI_OK;
    }
    if (g_stop)
      return CLI_FAIL;
    if (kvds_now_ns() > deadline_ns) {
      cli_err("bench", "worker %s did not start in time: %s", w->addr,
              cli_log_tail(w->log, 0, tail, sizeof tail));
      return CLI_FAIL;
    }
    cli_sleep_ms(20);
  }
}

/* c's worker's cluster status: *root (caller decrefs) and its "members"
 * array (borrowed from *root). 0, the request's error or KVDS_E_PROTO. */
static int cluster_members(kvds_client *c, json_t **root, json_t **members) {
  char *txt;
  int rc = kvds_cluster_status(c, &txt);
  if (rc)
    return rc;
  json_t *j = json_loads(txt, 0, NULL);
  free(txt);
  json_t *ms = json_object_get(j, "members");
  if (!json_is_array(ms)) {
    json_decref(j);
    return KVDS_E_PROTO;
  }
  *root = j;
  *members = ms;
  return 0;
}

/* Members in c's worker's view, and whether every peer has connections
 * open (when the worker reports them). */
static int cluster_view(kvds_client *c, size_t *members, int *connected) {
  json_t *j, *ms, *m;
  int rc = cluster_members(c, &j, &ms);
  if (rc)
    return rc;
  int conn = 1;
  size_t i;
  json_array_foreach(ms, i, m) {
    json_t *conns = json_object_get(m, "connections");
    if (!json_is_true(json_object_get(m, "self")) && conns &&
        json_integer_value(conns) <= 0)
      conn = 0;
  }
  *members = json_array_size(ms);
  *connected = conn;
  json_decref(j);
  return 0;
}

/* Bytes c's worker has pulled from its peers since it started: 0, the
 * request's error or KVDS_E_PROTO (a bytes_in that is not a count). */
static int pulled_bytes(kvds_client *c, uint64_t *out) {
  json_t *j, *ms, *m;
  int rc = cluster_members(c, &j, &ms);
  if (rc)
    return rc;
  uint64_t sum = 0;
  size_t i;
  json_array_foreach(ms, i, m) {
    json_t *in = json_object_get(m, "bytes_in");
    if (!in) /* itself, or a member it has no connection state for */
      continue;
    if (!json_is_integer(in) || json_integer_value(in) < 0) {
      rc = KVDS_E_PROTO;
      break;
    }
    sum += (uint64_t)json_integer_value(in);
  }
  json_decref(j);
  if (rc == 0)
    *out = sum;
  return rc;
}

static int wait_cluster(struct remote *r, uint64_t deadline_ns) {
  kvds_client *cs[2] = {r->ca, r->cb};
  for (int i = 0; i < 2; i++) {
    for (;;) {
      size_t n = 0;
      int conn = 0;
      int rc = cluster_view(cs[i], &n, &conn);
      if (rc) {
        cli_err("bench", "cluster status of %s: %s", i ? r->addr_b : r->addr_a,
                kvds_strerror(rc));
        return CLI_FAIL;
      }
      if (n >= 2 && conn)
        break;
      if (g_stop)
        return CLI_FAIL;
      if (kvds_now_ns() > deadline_ns) {
        cli_err("bench",
                "worker %s does not see its peer (%zu member%s in its view; "
                "is it started with --peers?)",
                i ? r->addr_b : r->addr_a, n, n == 1 ? "" : "s");
        return CLI_FAIL;
      }
      cli_sleep_ms(20);
    }
  }
  return CLI_OK;
}

/* ---- raw TCP ceiling ---- */

/* A timeout (SO_RCVTIMEO / SO_SNDTIMEO) reads as KVDS_E_TIMEOUT. */
static int send_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len) {
    ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return KVDS_E_TIMEOUT;
    if (w <= 0)
      return w < 0 ? -errno : KVDS_E_CLOSED;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

static int recv_all(int fd, void *buf, size_t len) {
  uint8_t *p = buf;
  while (len) {
    ssize_t n = recv(fd, p, len, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return KVDS_E_TIMEOUT;
    if (n <= 0)
      return n < 0 ? -errno : KVDS_E_CLOSED;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Answers requests {len, src_off} from the source buffer until EOF. On
 * leaving (EOF, a bad request, a stalled peer) it shuts its end down, so
 * the receiver fails at once instead of waiting for bytes. */
static void *tcp_sender(void *arg) {
  struct tcp_stream *s = arg;
  uint64_t req[2];
  while (recv_all(s->sfd, req, sizeof req) == 0) {
    if (req[0] > s->t->region || req[1] > s->t->region - req[0])
      break;
    if (send_all(s->sfd, s->t->src + req[1], (size_t)req[0]))
      break;
  }
  shutdown(s->sfd, SHUT_RDWR);
  return NULL;
}

/* Per post of its go semaphore: asks for its share and receives it straight
 * into dst. */
static void *tcp_receiver(void *arg) {
  struct tcp_stream *s = arg;
  struct tcp_ceiling *t = s->t;
  for (;;) {
    while (sem_wait(&s->go) && errno == EINTR)
      ;
    if (t->quit)
      break;
    uint64_t req[2] = {s->len, s->src_off};
    int err = send_all(s->rfd, req, sizeof req);
    if (!err)
      err = recv_all(s->rfd, t->dst + s->dst_off, (size_t)req[0]);
    pthread_mutex_lock(&t->lock);
    if (err && !t->err)
      t->err = err;
    t->ndone++;
    pthread_cond_signal(&t->done);
    pthread_mutex_unlock(&t->lock);
  }
  return NULL;
}

static void tcp_teardown(struct tcp_ceiling *t) {
  t->quit = 1;
  for (int i = 0; i < t->n; i++) {
    struct tcp_stream *s = &t->s[i];
    if (s->rfd >= 0)
      shutdown(s->rfd, SHUT_RDWR); /* the sender sees EOF; a busy receiver
                                      fails at once */
    if (s->have_go)
      sem_post(&s->go);
  }
  for (int i = 0; i < t->n; i++) {
    struct tcp_stream *s = &t->s[i];
    if (s->have_receiver)
      pthread_join(s->receiver, NULL);
    if (s->have_sender)
      pthread_join(s->sender, NULL);
    if (s->rfd >= 0)
      close(s->rfd);
    if (s->sfd >= 0)
      close(s->sfd);
    if (s->have_go)
      sem_destroy(&s->go);
  }
  pthread_cond_destroy(&t->done);
  pthread_mutex_destroy(&t->lock);
  t->n = 0;
}

/* n connected loopback streams with their threads. Every socket gets
 * R_IO_TIMEOUT_S send and receive timeouts (the senders' ends a send
 * timeout only: they wait for requests between cases). */
static int tcp_setup(struct tcp_ceiling *t, int n, const uint8_t *src,
                     uint8_t *dst, size_t region) {
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&t->lock, NULL);
  pthread_cond_init(&t->done, &ca);
  pthread_condattr_destroy(&ca);
  t->src = src;
  t->dst = dst;
  t->region = region;
  int rc = 0, one = 1;
  struct timeval tv = {.tv_sec = R_IO_TIMEOUT_S};
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) ||
      getsockname(lfd, (struct sockaddr *)&sa, &len) || listen(lfd, n))
    rc = -errno;
  for (int i = 0; rc == 0 && i < n; i++) {
    struct tcp_stream *s = &t->s[i];
    *s = (struct tcp_stream){.t = t, .sfd = -1, .rfd = -1};
    t->n = i + 1;
    s->rfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->rfd < 0 || connect(s->rfd, (struct sockaddr *)&sa, sizeof sa) ||
        (s->sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) < 0) {
      rc = -errno;
      break;
    }
    /* as the kvds client and worker set theirs */
    if (setsockopt(s->rfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ||
        setsockopt(s->sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ||
        setsockopt(s->rfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ||
        setsockopt(s->rfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) ||
        setsockopt(s->sfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv)) {
      rc = -errno;
      break;
    }
    if (sem_init(&s->go, 0, 0)) {
      rc = -errno;
      break;
    }
    s->have_go = 1;
    if ((rc = -pthread_create(&s->sender, NULL, tcp_sender, s)))
      break;
    s->have_sender = 1;
    if ((rc = -pthread_create(&s->receiver, NULL, tcp_receiver, s)))
      break;
    s->have_receiver = 1;
  }
  if (lfd >= 0)
    close(lfd);
  if (rc)
    tcp_teardown(t);
  return rc;
}

/* Streams B uses for a batch: its pull threads, at least 4 keys each (as
 * kvds__cluster_njobs splits a batch). */
static int streams_for(const struct remote *r, uint64_t batch) {
  uint64_t s = (batch + 3) / 4;
  return (int)(s < r->o->pull_threads ? s : r->o->pull_threads);
}

/* `calls` calls of `batch` values of `size` bytes, walking the set of nkeys
 * slots like the kvds reads do, each call split over the streams as the
 * worker splits a batch over its pull jobs. Only the streams a call uses
 * are woken. *ns: time of all calls. A call that has not finished within
 * 2 x R_IO_TIMEOUT_S plus its bytes at 100 MB/s fails with KVDS_E_TIMEOUT
 * (the sockets' own timeouts normally report a stall first). */
static int tcp_run(struct tcp_ceiling *t, int streams, size_t size,
                   size_t batch, size_t nkeys, uint64_t calls, uint64_t *ns) {
  size_t j = 0;
  int rc = 0;
  uint64_t limit_ns = 2ull * R_IO_TIMEOUT_S * 1000000000ull +
                      (uint64_t)batch * size * 10; /* 100 MB/s */
  uint64_t t0 = kvds_now_ns();
  for (uint64_t c = 0; c < calls && rc == 0 && !g_stop; c++) {
    for (int k = 0; k < streams; k++) {
      size_t lo = batch * (size_t)k / (size_t)streams;
      size_t hi = batch * (size_t)(k + 1) / (size_t)streams;
      t->s[k].len = (hi - lo) * size;
      t->s[k].src_off = t->s[k].dst_off = (j + lo) * size;
    }
    pthread_mutex_lock(&t->lock);
    t->ndone = 0;
    pthread_mutex_unlock(&t->lock);
    for (int k = 0; k < streams; k++)
      sem_post(&t->s[k].go);
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    uint64_t dl_ns = (uint64_t)dl.tv_nsec + limit_ns;
    dl.tv_sec += (time_t)(dl_ns / 1000000000ull);
    dl.tv_nsec = (long)(dl_ns % 1000000000ull);
    pthread_mutex_lock(&t->lock);
    while (t->ndone < streams && rc == 0)
      if (pthread_cond_timedwait(&t->done, &t->lock, &dl) == ETIMEDOUT &&
          t->ndone < streams)
        rc = KVDS_E_TIMEOUT;
    if (rc == 0)
      rc = t->err;
    pthread_mutex_unlock(&t->lock);
    j += batch;
    if (j == nkeys)
      j = 0;
  }
  *ns = kvds_now_ns() - t0;
  return rc;
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
  } else {
    printf("%-9s %9s %6llu %8d %8s %8s %6s %9s %9s %7llu\n", p->via,
           kvds_fmt_bytes(p->size, sz, sizeof sz), (unsigned long long)p->batch,
           p->streams, fmt3(p->gbps, g, sizeof g),
           fmt3(p->tcp_gbps, tg, sizeof tg),
           fmt3(p->tcp_gbps > 0 ? p->gbps / p->tcp_gbps : 0, q, sizeof q),
           fmt3(p->p50_us, p50, sizeof p50), fmt3(p->p99_us, p99, sizeof p99),
           (unsigned long long)p->calls);
  }
  fflush(stdout);
}

/* Puts a fresh set of values on A, times reads of them on B (hint = A, or
 * none: through the directory), deleting B's copies between passes, then
 * raw TCP moving the same bytes. */
static int run_rpoint(struct remote *r, const char *via, size_t size,
                      size_t batch) {
  struct rpoint *p = &r->pts[r->npts++];
  *p = (struct rpoint){.via = via,
                       .size = size,
                       .batch = batch,
                       .streams = streams_for(r, batch)};
  char sz[32];
  if ((uint64_t)size * batch > r->o->max_bytes) {
    p->skipped = 1;
    if (!r->o->json)
      print_rpoint(p, r);
    return 0;
  }
  if (r->o->json)
    progress("%s %s x %zu", via, kvds_fmt_bytes(size, sz, sizeof sz), batch);
  size_t nkeys = (size_t)(r->o->max_bytes / size);
  if (nkeys > KEYS_MAX)
    nkeys = KEYS_MAX;
  nkeys -= nkeys % batch;
  struct keyset ks = {0};
  struct kvds_value *v = calloc(batch, sizeof *v);
  int *res = calloc(batch, sizeof *res);
  struct samples s = {0};
  char tag[48];
  snprintf(tag, sizeof tag, "%s-%zu-%zu", via, size, batch);
  int rc = -ENOMEM, put = 0;
  const char *what = ""; /* names the failing step when not a read */
  if (!v || !res || keyset_make(&ks, r->prefix, tag, nkeys))
    goto out;
  put = 1;
  if ((rc = put_all(r->ca, &ks, r->src, size)))
    goto out;
  if (strcmp(via, "directory") == 0 && (rc = wait_visible(r->cb, &ks)))
    goto out;
  struct kvds_get_opts go = {
      .wait_ms = 0, .hint = strcmp(via, "hint") == 0 ? r->addr_a : NULL};
  uint64_t pulled0, pulled1;
  if ((rc = pulled_bytes(r->cb, &pulled0))) {
    what = "pulled-bytes count of B: ";
    goto out;
  }
  uint64_t wall0 = kvds_now_ns();
  size_t j = 0;
  while (!g_stop) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_mget_ex(r->cb, batch, ks.iov + j, &go, v, res);
    uint64_t t1 = kvds_now_ns();
    for (size_t i = 0; rc == 0 && i < batch; i++)
      if ((rc = res[i]) == 0 && v[i].len != size)
        rc = KVDS_E_RANGE;
    if (rc == 0)
      kvds_release(r->cb, batch, v);
    else
      for (size_t i = 0; i < batch; i++)
        if (res[i] == 0)
          kvds_release(r->cb, 1, &v[i]);
    if (rc || (rc = samples_add(&s, t1 - t0)))
      break;
    j += batch;
    if (j == nkeys) {
      /* B now holds every key: drop its copies (A keeps its own). */
      if ((rc = delete_keys(r->cb, ks.iov, nkeys)))
        break;
      j = 0;
    }
    if (s.n >= 3 && (s.total_ns >= r->phase_ns ||
                     t1 - wall0 >= 10 * r->phase_ns + 2000000000ull))
      break;
  }
  if (rc || g_stop)
    goto out;
  /* B counts a pull's bytes before the seal that answers the call, so the
   * count is complete once the last call has returned. */
  if ((rc = pulled_bytes(r->cb, &pulled1))) {
    what = "pulled-bytes count of B: ";
    goto out;
  }
  if (pulled1 < pulled0) {
    rc = KVDS_E_PROTO;
    what = "B's pulled-bytes count went backwards: ";
    goto out;
  }
  p->pulled = pulled1 - pulled0;
  p->calls = s.n;
  p->bytes = s.n * batch * size;
  p->gbps = (double)p->bytes / (double)s.total_ns;
  samples_p50_p99(&s, &p->p50_us, &p->p99_us);
  uint64_t tcp_ns = 0;
  rc = tcp_run(&r->tcp, p->streams, size, batch, nkeys, p->calls, &tcp_ns);
  if (rc == KVDS_E_TIMEOUT)
    what = "raw TCP: a stream stalled: ";
  else if (rc)
    what = "raw TCP: ";
  if (rc || g_stop)
    goto out;
  p->tcp_gbps = tcp_ns ? (double)p->bytes / (double)tcp_ns : 0;
  if (!r->o->json)
    print_rpoint(p, r);
out:
  if (put) {
    int drc = delete_keys(r->cb, ks.iov, ks.n);
    if (drc == 0)
      drc = delete_keys(r->ca, ks.iov, ks.n);
    if (rc == 0)
      rc = drc;
  }
  keyset_free(&ks);
  free(s.ns);
  free(v);
  free(res);
  if (rc)
    cli_err("bench", "remote %s %s x %zu: %s%s", via,
            kvds_fmt_bytes(size, sz, sizeof sz), batch, what,
            kvds_strerror(rc));
  return rc;
}

/* Latency of single lookups through client c over `keys` (exists of one
 * key at a time, cycling, when chain is 0; else lookup_prefix of the whole
 * chain), each checked to find everything. */
static int lookup_lat(struct remote *r, kvds_client *c, const struct keyset *ks,
                      int chain, struct rlat *out) {
  struct samples s = {0};
  int rc = 0;
  uint64_t wall0 = kvds_now_ns(), t1 = wall0;
  for (size_t i = 0; rc == 0 && !g_stop; i++) {
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
      rc = samples_add(&s, t1 - t0);
    if (s.n >= 100 && t1 - wall0 >= r->phase_ns / 2)
      break;
  }
  if (rc == 0) {
    out->n = s.n;
    samples_p50_p99(&s, &out->p50_us, &out->p99_us);
  }
  free(s.ns);
  return rc;
}

static int run_lookups(struct remote *r) {
  static uint8_t val[64];
  struct keyset one = {0}, chain = {0};
  struct kvds_iov vals[R_LAT_KEYS];
  for (int i = 0; i < R_LAT_KEYS; i++)
    vals[i] = (struct kvds_iov){val, sizeof val};
  int put = 0;
  int rc = keyset_make(&one, r->prefix, "lookup", R_LAT_KEYS);
  if (rc == 0)
    rc = keyset_make(&chain, r->prefix, "chain", R_CHAIN);
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
    int drc = delete_keys(r->ca, one.iov, one.n);
    if (drc == 0)
      drc = delete_keys(r->ca, chain.iov, chain.n);
    if (rc == 0)
      rc = drc;
  }
  keyset_free(&one);
  keyset_free(&chain);
  if (rc && !g_stop)
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
  printf(
      "via            size  batch  streams     GB/s  rawTCP  ratio    p50 us "
      "   p99 us   calls\n");
}

static void print_remote_footer(const struct remote *r) {
  char a[16], b[16], c[16], d[16];
  printf("\n'hint': the call names A as the holder; 'directory': no hint, B "
         "asks each\nkey's home worker where it lives, then pulls.\n\n");
  printf("lookup latency (one call, us)          p50       p99\n");
  printf("exists, 1 key, on B (held on A)   %9s %9s\n",
         fmt3(r->ex_remote.p50_us, a, sizeof a),
         fmt3(r->ex_remote.p99_us, b, sizeof b));
  printf("exists, 1 key, on A (local hit)   %9s %9s\n",
         fmt3(r->ex_local.p50_us, c, sizeof c),
         fmt3(r->ex_local.p99_us, d, sizeof d));
  printf("lookup_prefix, %d keys, on B      %9s %9s\n", R_CHAIN,
         fmt3(r->pre_remote.p50_us, a, sizeof a),
         fmt3(r->pre_remote.p99_us, b, sizeof b));
  printf("lookup_prefix, %d keys, on A      %9s %9s\n", R_CHAIN,
         fmt3(r->pre_local.p50_us, c, sizeof c),
         fmt3(r->pre_local.p99_us, d, sizeof d));
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
  json_object_set_new(root, "pull_threads",
                      json_integer((json_int_t)r->o->pull_threads));
  json_object_set_new(root, "max_bytes",
                      json_integer((json_int_t)r->o->max_bytes));
  json_object_set_new(root, "seconds_per_case",
                      json_real((double)r->phase_ns / 1e9));
  for (int i = 0; i < r->npts; i++) {
    const struct rpoint *p = &r->pts[i];
    json_t *o = json_pack("{s:s, s:I, s:I, s:i}", "via", p->via, "size",
                          (json_int_t)p->size, "batch", (json_int_t)p->batch,
                          "streams", p->streams);
    if (p->skipped) {
      json_object_set_new(o, "skipped", json_string("exceeds max_bytes"));
    } else {
      json_object_set_new(o, "gbps", json_real(p->gbps));
      json_object_set_new(o, "tcp_gbps", json_real(p->tcp_gbps));
      json_object_set_new(
          o, "ratio", json_real(p->tcp_gbps > 0 ? p->gbps / p->tcp_gbps : 0));
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
  int rc =
      json_dumpf(root, stdout,
                 JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
  putchar('\n');
  json_decref(root);
  return rc ? CLI_FAIL : CLI_OK;
}

/* ---- setup and teardown ---- */

static int remote_start_workers(struct remote *r) {
  const char *tmp = getenv("TMPDIR");
  snprintf(r->dir, sizeof r->dir, "%s/kvds-bench-remote.XXXXXX",
           tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(r->dir)) {
    cli_err("bench", "cannot create a directory under %s: %s",
            tmp && *tmp ? tmp : "/tmp", strerror(errno));
    r->dir[0] = '\0';
    return CLI_FAIL;
  }
  r->w[0].port = free_port();
  r->w[1].port = free_port();
  if (r->w[0].port <= 0 || r->w[1].port <= 0 || r->w[0].port == r->w[1].port) {
    cli_err("bench", "no free loopback ports");
    return CLI_FAIL;
  }
  char mem[32];
  progress("starting two workers (%s pools)...",
           kvds_fmt_bytes(r->o->memory, mem, sizeof mem));
  r->started = 1;
  for (int i = 0; i < 2; i++) {
    int rc = worker_spawn(r, &r->w[i], r->w[1 - i].port);
    if (rc) {
      cli_err("bench", "cannot start a worker: %s", kvds_strerror(rc));
      return CLI_FAIL;
    }
  }
  r->addr_a = r->w[0].addr;
  r->addr_b = r->w[1].addr;
  /* 30 s + 4 s per GiB of pool: generously more than `kvds worker --daemon`
   * allows (30 s + 0.5 s per GiB), as two pools start at once */
  uint64_t deadline =
      kvds_now_ns() + 30000000000ull + 4 * (r->o->memory >> 30) * 1000000000ull;
  for (int i = 0; i < 2; i++)
    if (worker_wait_ready(&r->w[i], deadline))
      return CLI_FAIL;
  return CLI_OK;
}

static void remote_cleanup(struct remote *r) {
  if (r->tcp_up)
    tcp_teardown(&r->tcp);
  kvds_client_close(r->ca);
  kvds_client_close(r->cb);
  r->ca = r->cb = NULL;
  for (int i = 0; i < 2; i++)
    worker_stop(&r->w[i]);
  if (r->dir[0]) {
    /* The directory is the bench's own (mkdtemp) and its workers are gone:
     * whatever they left there (a socket after a hard kill, a pidfile)
     * goes with it. */
    DIR *d = opendir(r->dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
        unlinkat(dirfd(d), e->d_name, 0);
    if (d)
      closedir(d);
    if (rmdir(r->dir))
      cli_err("bench", "cannot remove %s: %s", r->dir, strerror(errno));
    r->dir[0] = '\0';
  }
}

static int remote_measure(struct remote *r) {
  int rc = 0;
  if (!r->o->json)
    print_remote_header(r);
  for (int i = 0; i < r->o->nsizes && rc == 0 && !g_stop; i++)
    for (int j = 0; j < r->o->nbatches && rc == 0 && !g_stop; j++)
      rc = run_rpoint(r, "hint", (size_t)r->o->sizes[i],
                      (size_t)r->o->batches[j]);
  for (int j = 0; j < r->o->nbatches && rc == 0 && !g_stop; j++)
    rc = run_rpoint(r, "directory", (size_t)r->o->dir_size,
                    (size_t)r->o->batches[j]);
  if (rc == 0 && !g_stop) {
    if (r->o->json)
      progress("lookup latency");
    rc = run_lookups(r);
  }
  return rc;
}

/* `kvds bench remote [options]` (argv[0] is "remote"). */
static int run_remote(int argc, char **argv) {
  struct remote_opts o = {0};
  int rc = remote_parse(argc, argv, &o);
  if (rc)
    return rc < 0 ? CLI_OK : rc;
  struct remote r = {.o = &o, .addr_a = o.addr_a, .addr_b = o.addr_b};
  r.phase_ns = (uint64_t)(o.seconds * 1e9);
  snprintf(r.prefix, sizeof r.prefix, "kvds-bench-remote/%ld/", (long)getpid());
  int ret = CLI_FAIL;
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  /* source of the puts and of raw TCP, destination of raw TCP: as large as
   * a case's set of values, touched before timing */
  r.region = (size_t)o.max_bytes;
  if (alloc_buffers(r.region, &r.src, &r.dst)) {
    cli_err("bench", "cannot allocate 2 x %zu MiB of buffers", r.region >> 20);
    return CLI_FAIL;
  }

  uint64_t t0 = kvds_now_ns();
  if (!o.addr_a && remote_start_workers(&r))
    goto out;
  if (cli_connect("bench", r.addr_a, 0, &r.ca, NULL, 0) ||
      cli_connect("bench", r.addr_b, 0, &r.cb, NULL, 0))
    goto out;
  if (wait_cluster(&r, kvds_now_ns() + 20000000000ull))
    goto out;
  if (r.started)
    progress("workers %s and %s up in %.1f s", r.addr_a, r.addr_b,
             (double)(kvds_now_ns() - t0) / 1e9);
  if ((rc = tcp_setup(&r.tcp, (int)o.pull_threads, r.src, r.dst, r.region))) {
    cli_err("bench", "raw TCP streams: %s", kvds_strerror(rc));
    goto out;
  }
  r.tcp_up = 1;
  rc = remote_measure(&r);
  if ((rc || g_stop) && !r.started) {
    sweep(r.cb, r.prefix);
    sweep(r.ca, r.prefix);
  }
  if (g_stop) {
    fflush(stdout);
    fprintf(stderr, "kvds bench remote: interrupted%s\n",
            r.started ? "; the workers were stopped"
                      : "; the bench's keys were removed");
    ret = 128 + (int)g_stop;
  } else if (rc == 0) {
    ret = o.json ? print_remote_json(&r) : (print_remote_footer(&r), CLI_OK);
  }
out:
  if (g_stop && ret == CLI_FAIL)
    ret = 128 + (int)g_stop;
  remote_cleanup(&r);
  free(r.src);
  free(r.dst);
  return ret;
}

int cmd_bench(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "connector") == 0)
    return run_python("kvds.bench_connector", argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "ttft") == 0)
    return run_python("kvds.bench_serve", argc - 1, argv + 1);
  if (argc > 1 && strcmp(argv[1], "remote") == 0)
    return run_remote(argc - 1, argv + 1);
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
    sweep(b.c, b.prefix);
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
  keyset_free(&b.ks);
  return ret;
}
