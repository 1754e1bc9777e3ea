/*
 * local.c — `kvds bench local`: put / zero-copy get / copying get against a
 * running worker, each figure printed next to memcpy measured in the same
 * run, plus batched exists throughput and small-get latency.
 *
 * Throughput is computed from the time spent inside the timed calls; the
 * untimed work between them (deleting the previous round's keys before a
 * slot is rewritten) is excluded. Latency is per call; one call moves
 * `batch` values.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/bench/bench.h"
#include "common/util.h"

#define REGION_MIN (256ull << 20) /* per direction; larger than any LLC */
#define EXISTS_KEYS 10000
#define SMALL_SIZE 4096

/* ---- options ------------------------------------------------------------ */

struct local_opts {
  const char *addr;
  uint64_t sizes[BENCH_LIST_MAX];
  int nsizes;
  uint64_t batches[BENCH_LIST_MAX];
  int nbatches;
  double seconds;
  int json;
};

/* Parses cmd_bench's argv: options, then exactly the mode "local".
 * CLI_OK, -1 after printing the help, or CLI_USAGE (one line printed). */
static int local_parse(int argc, char **argv, struct local_opts *o) {
  static const struct option lo[] = {{"worker", required_argument, NULL, 'w'},
                                     {"sizes", required_argument, NULL, 'S'},
                                     {"batch", required_argument, NULL, 'B'},
                                     {"seconds", required_argument, NULL, 'T'},
                                     BENCH_OPTS_COMMON,
                                     {NULL, 0, NULL, 0}};
  int c, first = 1, quick = 0, have_seconds = 0;
  bench_parse_list("--sizes", "4KiB,64KiB,1MiB,16MiB", 1, o->sizes, &o->nsizes);
  bench_parse_list("--batch", "1,64", 0, o->batches, &o->nbatches);
  o->seconds = 3;
  while ((c = cli_getopt("bench", argc, argv, "w:h", lo, &first)) != -1) {
    int rc = CLI_OK;
    switch (c) {
    case 'w':
      o->addr = optarg;
      break;
    case 'S':
      rc = bench_parse_list("--sizes", optarg, 1, o->sizes, &o->nsizes);
      break;
    case 'B':
      rc = bench_parse_list("--batch", optarg, 0, o->batches, &o->nbatches);
      break;
    case 'T':
      rc = bench_parse_double_in("--seconds", optarg, 0.01, 3600, &o->seconds);
      have_seconds = 1;
      break;
    default:
      rc = bench_parse_common(c, &quick, &o->json);
    }
    if (rc)
      return rc;
  }
  if (quick && !have_seconds)
    o->seconds = 0.45;
  if (optind >= argc || strcmp(argv[optind], "local") != 0 ||
      optind + 1 != argc) {
    cli_err("bench",
            "%s (usage: kvds bench local|remote|disk|peers|connector|ttft "
            "[options])",
            optind >= argc ? "missing the mode 'local', 'remote', 'disk', "
                             "'peers', 'connector' or 'ttft'"
                           : "unknown mode or extra argument");
    return CLI_USAGE;
  }
  return CLI_OK;
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

/* One run of `kvds bench local`. */
struct local {
  struct local_opts *o;
  kvds_client *c;
  char via[300];
  struct kvds_stats st0;
  uint64_t budget;   /* most bytes the bench may hold in the pool */
  uint64_t phase_ns; /* time per operation within a case */
  uint8_t *src, *dst;
  size_t region;
  struct memcpy_row mrows[BENCH_LIST_MAX];
  struct row rows[BENCH_LIST_MAX * BENCH_LIST_MAX * 3];
  int nrows;
  double exists_keys_s;
  double small_p50_us, small_p99_us, ping_p50_us;
  char prefix[64];
  struct bench_keyset ks; /* the current case's keys */
};

/* ---- memcpy, measured in the same run ----------------------------------- */

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

static double memcpy_gbps(struct local *b, size_t size, int hot,
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
  } while (t - t0 < dur_ns && !bench_stopped());
  return (double)bytes / (double)(t - t0);
}

static double dram_memcpy_for(const struct local *b, uint64_t size) {
  for (int i = 0; i < b->o->nsizes; i++)
    if (b->mrows[i].size == size)
      return b->mrows[i].dram_gbps;
  return 0;
}

/* ---- the timed calls ---------------------------------------------------- */

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
static int put_batch(struct local *b, struct batch_bufs *bb, size_t first,
                     size_t n, size_t size, struct rot *rs) {
  for (size_t i = 0; i < n; i++)
    bb->vals[i] = (struct kvds_iov){b->src + rot_next(rs) * size, size};
  int rc = kvds_mput(b->c, n, b->ks.iov + first, bb->vals, bb->res);
  return first_error(rc, bb->res, n);
}

/* One timed get call: zero-copy views (kvds_mget + kvds_release), or with
 * rd copies into rotating destinations (kvds_mget_into). */
static int get_batch(struct local *b, struct batch_bufs *bb, size_t first,
                     size_t n, size_t size, struct rot *rd) {
  int rc;
  if (rd) {
    for (size_t i = 0; i < n; i++)
      bb->vals[i] = (struct kvds_iov){b->dst + rot_next(rd) * size, size};
    rc = kvds_mget_into(b->c, n, b->ks.iov + first, NULL, bb->vals, NULL,
                        bb->res);
    return first_error(rc, bb->res, n);
  }
  if ((rc = kvds_mget(b->c, n, b->ks.iov + first, 0, bb->v, bb->res)))
    return rc;
  for (size_t i = 0; i < n; i++)
    if (bb->res[i] == 0 && bb->v[i].len != size)
      bb->res[i] = KVDS_E_RANGE;
  kvds_release(b->c, n, bb->v);
  return first_error(0, bb->res, n);
}

/* About three significant digits: 0.123, 1.23, 12.3, 123, 1234. */
static void add_row(struct local *b, uint64_t size, uint64_t batch,
                    const char *op, struct bench_samples *s) {
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
  bench_samples_p50_p99(s, &r->p50_us, &r->p99_us);
  if (!b->o->json) {
    char sz[32], g[16], m[16], q[16], p50[16], p99[16];
    printf("%9s %6llu  %-10s %11.0f %8s %11s %6s %9s %9s\n",
           kvds_fmt_bytes(size, sz, sizeof sz), (unsigned long long)batch, op,
           r->ops_s, bench_fmt3(r->gbps, g, sizeof g),
           bench_fmt3(r->memcpy_gbps, m, sizeof m),
           bench_fmt3(r->memcpy_gbps > 0 ? r->gbps / r->memcpy_gbps : 0, q,
                      sizeof q),
           bench_fmt3(r->p50_us, p50, sizeof p50),
           bench_fmt3(r->p99_us, p99, sizeof p99));
    fflush(stdout);
  }
}

/* Runs put, zero-copy get and copying get for one size x batch. */
static int run_case(struct local *b, size_t size, size_t batch) {
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
  if (nkeys > BENCH_KEYS_MAX)
    nkeys = BENCH_KEYS_MAX;
  nkeys -= nkeys % batch;
  char tag[48];
  snprintf(tag, sizeof tag, "%zu-%zu", size, batch);
  struct batch_bufs bb = {calloc(batch, sizeof *bb.vals),
                          calloc(batch, sizeof *bb.v),
                          calloc(batch, sizeof *bb.res)};
  struct bench_samples s = {0};
  int rc = -ENOMEM;
  size_t live = 0;
  if (!bb.vals || !bb.v || !bb.res ||
      bench_keyset_make(&b->ks, b->prefix, tag, nkeys))
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
  while (!bench_stopped() && rc == 0) {
    if (wrapped && (rc = bench_delete_keys(b->c, b->ks.iov + j, batch)))
      break;
    uint64_t t0 = kvds_now_ns();
    rc = put_batch(b, &bb, j, batch, size, &rs);
    uint64_t t1 = kvds_now_ns();
    if (rc || (rc = bench_samples_add(&s, t1 - t0)))
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
  if (rc || bench_stopped())
    goto out;
  add_row(b, size, batch, "put", &s);

  for (int copy = 0; copy < 2 && rc == 0 && !bench_stopped(); copy++) {
    s.n = 0;
    s.total_ns = 0;
    wall0 = kvds_now_ns();
    j = 0;
    while (!bench_stopped()) {
      uint64_t t0 = kvds_now_ns();
      rc = get_batch(b, &bb, j, batch, size, copy ? &rd : NULL);
      uint64_t t1 = kvds_now_ns();
      if (rc || (rc = bench_samples_add(&s, t1 - t0)))
        break;
      j = (j + batch) % live;
      if (t1 - wall0 >= b->phase_ns)
        break;
    }
    if (rc == 0 && !bench_stopped())
      add_row(b, size, batch, copy ? "get+copy" : "get 0-copy", &s);
  }
out:
  if (live) {
    int drc = bench_delete_keys(b->c, b->ks.iov, live);
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
static int run_exists(struct local *b) {
  static uint8_t val[64];
  struct kvds_iov vals[BENCH_EXISTS_BATCH];
  uint8_t present[BENCH_EXISTS_BATCH];
  struct bench_samples s = {0};
  int rc = bench_keyset_make(&b->ks, b->prefix, "exists", EXISTS_KEYS);
  size_t written = 0;
  for (size_t i = 0; i < BENCH_EXISTS_BATCH; i++)
    vals[i] = (struct kvds_iov){val, sizeof val};
  for (; rc == 0 && written < EXISTS_KEYS; written += BENCH_EXISTS_BATCH)
    rc = kvds_mput(b->c, BENCH_EXISTS_BATCH, b->ks.iov + written, vals, NULL);
  uint64_t wall0 = kvds_now_ns();
  for (size_t off = 0; rc == 0 && !bench_stopped();
       off = (off + BENCH_EXISTS_BATCH) % EXISTS_KEYS) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_exists(b->c, BENCH_EXISTS_BATCH, b->ks.iov + off, present);
    uint64_t t1 = kvds_now_ns();
    for (size_t i = 0; rc == 0 && i < BENCH_EXISTS_BATCH; i++)
      if (!present[i])
        rc = KVDS_E_NOTFOUND;
    if (rc == 0)
      rc = bench_samples_add(&s, t1 - t0);
    if (t1 - wall0 >= b->phase_ns)
      break;
  }
  if (rc == 0 && s.total_ns)
    b->exists_keys_s =
        (double)s.n * BENCH_EXISTS_BATCH / ((double)s.total_ns / 1e9);
  int drc = bench_delete_keys(b->c, b->ks.iov, written);
  free(s.ns);
  if (rc == 0)
    rc = drc;
  if (rc)
    cli_err("bench", "exists: %s", kvds_strerror(rc));
  return rc;
}

/* Latency of one 4 KiB zero-copy get, and of a ping for reference. */
static int run_small(struct local *b) {
  struct bench_samples s = {0};
  struct kvds_value v;
  int res, rc = bench_keyset_make(&b->ks, b->prefix, "small", 1);
  if (rc == 0)
    rc =
        kvds_put(b->c, b->ks.iov[0].base, b->ks.iov[0].len, b->src, SMALL_SIZE);
  int put_ok = rc == 0;
  uint64_t wall0 = kvds_now_ns(), t1 = wall0;
  while (rc == 0 && !bench_stopped() && t1 - wall0 < b->phase_ns) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_mget(b->c, 1, b->ks.iov, 0, &v, &res);
    if (rc == 0 && (rc = res) == 0)
      kvds_release(b->c, 1, &v);
    t1 = kvds_now_ns();
    if (rc == 0)
      rc = bench_samples_add(&s, t1 - t0);
  }
  bench_samples_p50_p99(&s, &b->small_p50_us, &b->small_p99_us);
  s.n = 0;
  wall0 = t1 = kvds_now_ns();
  while (rc == 0 && !bench_stopped() && t1 - wall0 < b->phase_ns / 2) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_ping(b->c);
    t1 = kvds_now_ns();
    if (rc == 0)
      rc = bench_samples_add(&s, t1 - t0);
  }
  bench_samples_p50_p99(&s, &b->ping_p50_us, NULL);
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

static void print_header(struct local *b) {
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

static void print_footer(const struct local *b) {
  printf("\nget 0-copy hands out pointers into the pool: its GB/s is the "
         "rate at which\nvalues become readable, not bytes moved.\n\n");
  printf("exists (batches of %d):  %.2f M keys/s\n", BENCH_EXISTS_BATCH,
         b->exists_keys_s / 1e6);
  char p50[16], p99[16], ping[16];
  printf("small get (4 KiB, batch 1, zero-copy):  p50 %s us, p99 %s us "
         "(ping p50 %s us)\n",
         bench_fmt3(b->small_p50_us, p50, sizeof p50),
         bench_fmt3(b->small_p99_us, p99, sizeof p99),
         bench_fmt3(b->ping_p50_us, ping, sizeof ping));
}

static int print_json(const struct local *b) {
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
                      json_pack("{s:i, s:f}", "batch", BENCH_EXISTS_BATCH,
                                "keys_per_s", b->exists_keys_s));
  json_object_set_new(root, "small_get",
                      json_pack("{s:i, s:i, s:f, s:f, s:f}", "size", SMALL_SIZE,
                                "batch", 1, "p50_us", b->small_p50_us, "p99_us",
                                b->small_p99_us, "ping_p50_us",
                                b->ping_p50_us));
  return bench_print_json(root);
}

/* ---- entry -------------------------------------------------------------- */

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

static int alloc_regions(struct local *b) {
  uint64_t maxsize = 0;
  for (int i = 0; i < b->o->nsizes; i++)
    if (b->o->sizes[i] > maxsize)
      maxsize = b->o->sizes[i];
  b->region = (size_t)(REGION_MIN > 2 * maxsize ? REGION_MIN : 2 * maxsize);
  return bench_alloc_buffers(b->region, &b->src, &b->dst);
}

static int run_all(struct local *b) {
  uint64_t memcpy_ns = (uint64_t)(fmin(0.2, b->o->seconds / 9) * 1e9);
  if (!b->o->json) {
    print_header(b);
    printf("memcpy, one thread:\n     size      DRAM GB/s   cache-hot GB/s\n");
  }
  for (int i = 0; i < b->o->nsizes && !bench_stopped(); i++) {
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
  for (int i = 0; i < b->o->nsizes && rc == 0 && !bench_stopped(); i++)
    for (int j = 0; j < b->o->nbatches && rc == 0 && !bench_stopped(); j++)
      rc = run_case(b, (size_t)b->o->sizes[i], (size_t)b->o->batches[j]);
  if (rc == 0 && !bench_stopped())
    rc = run_exists(b);
  if (rc == 0 && !bench_stopped())
    rc = run_small(b);
  return rc;
}

int bench_local(int argc, char **argv) {
  struct local_opts o = {0};
  int rc = local_parse(argc, argv, &o);
  if (rc)
    return rc < 0 ? CLI_OK : rc;
  o.addr = cli_worker_addr(o.addr);
  struct local b = {.o = &o};
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
  bench_catch_signals();
  rc = run_all(&b);
  if (rc || bench_stopped())
    bench_sweep(b.c, b.prefix);
  if (bench_stopped()) {
    fprintf(stderr, "kvds bench: interrupted; the bench's keys were "
                    "removed\n");
    ret = 128 + bench_stopped();
  } else if (rc == 0) {
    ret = o.json ? print_json(&b) : (print_footer(&b), CLI_OK);
  }
out:
  kvds_client_close(b.c);
  free(b.src);
  free(b.dst);
  bench_keyset_free(&b.ks);
  return ret;
}
