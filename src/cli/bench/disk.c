/*
 * disk.c — `kvds bench disk`: the disk tier (--tier posix, spill policy) of
 * a worker the bench starts itself, next to fio on the same directory in
 * the same run.
 *
 * Per object size, with a fresh worker and a fresh disk directory:
 *   spill      objects are put until the working set is --working-set times
 *              the pool; once the pool is full every put pushes objects out
 *              to disk, each put held back until the spill is ahead of the
 *              eviction (phase_spill says why). The figure is the disk
 *              tier's own counter: value bytes written (disk_write_bytes)
 *              between the first spill the bench sees and the last one,
 *              over that time. The counters are polled between puts and,
 *              after the last put, until they stop moving. Next to it: fio
 *              --rw=write of the same bytes.
 *   read-back  zero-copy mgets of --disk-threads keys per call (the worker's
 *              queue depth) that live on disk only (the oldest keys: LRU
 *              evicted them first), one pass; bytes over the time inside
 *              the calls. Next to it: fio --rw=read of the same bytes.
 *   latency    one zero-copy get of one object: a DRAM hit (a key just
 *              promoted) and a disk hit (a key on disk only), each sample
 *              classified by the worker's disk_reads counter.
 * Before every phase, kvds's and fio's, dirty pages are written back and,
 * when the bench may (root), the page cache is dropped; else both read
 * whatever the cache holds, which the report says.
 */
#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/bench/bench.h"
#include "common/clock.h"
#include "common/util.h"

#define D_SETTLE_NS 1000000000ull /* spill counters quiet this long: done */
#define D_SETTLE_MAX_NS 120000000000ull /* give up waiting for the spill */
#define D_IO_TIMEOUT_MS 120000          /* client calls that read from disk */
/* Objects of each size the pool must hold: the spill window (a quarter of
 * the pool) must hold more than one eviction round. */
#define D_MIN_OBJECTS 8
#define D_THROTTLE_MAX_NS 10000000000ull /* a put waits for the spill */

struct disk_opts {
  const char *dir; /* parent of the bench's directory */
  uint64_t sizes[BENCH_LIST_MAX];
  int nsizes;
  uint64_t memory;
  double working_set; /* bytes put per size, in pools */
  uint64_t disk_threads;
  const char *fsync; /* "none" or "object" */
  uint64_t samples;  /* latency samples of each kind */
  int json;
};

/* fio's figure for one phase. */
struct fio_res {
  int ran;        /* 0: skipped or failed (why says which) */
  double gbps;    /* 10^9 B/s */
  uint64_t bytes; /* what it moved */
  char why[160];
};

struct dlat {
  uint64_t n;
  double p50_us, p99_us;
};

/* One size's figures. */
struct dcase {
  uint64_t size, objects;
  /* spill */
  uint64_t spill_bytes, spill_ns, spill_skipped, spilled_total;
  uint64_t throttle_timeouts; /* puts that stopped waiting for the spill */
  double spill_gbps, put_gbps;
  struct fio_res fio_write;
  /* read-back */
  uint64_t read_bytes, read_ns, read_calls, read_from_disk, read_lost;
  uint64_t read_writes; /* disk writes during the read-back */
  double read_gbps;
  struct fio_res fio_read;
  /* latency */
  struct dlat dram, disk;
  uint64_t disk_missed; /* disk-hit attempts answered from DRAM */
};

struct disk {
  struct disk_opts *o;
  char dir[PATH_MAX]; /* the bench's own */
  char data[PATH_MAX + 32];
  char fio_dir[PATH_MAX + 32];
  const char *fio; /* fio's path, or NULL */
  char fio_version[64];
  int can_drop;       /* the page cache can be dropped */
  char drop_why[160]; /* why not */
  struct bench_worker w;
  kvds_client *c;
  uint8_t *src, *dst;
  struct bench_keyset ks;
  struct dcase cases[BENCH_LIST_MAX];
  int ncases;
};

/* ---- options ------------------------------------------------------------ */

static int disk_parse(int argc, char **argv, struct disk_opts *o) {
  enum {
    OPT_DIR = 256,
    OPT_SIZES,
    OPT_WSET,
    OPT_THREADS,
    OPT_FSYNC,
    OPT_SAMPLES,
  };
  static const struct option lo[] = {
      {"dir", required_argument, NULL, OPT_DIR},
      {"sizes", required_argument, NULL, OPT_SIZES},
      {"memory", required_argument, NULL, 'm'},
      {"working-set", required_argument, NULL, OPT_WSET},
      {"disk-threads", required_argument, NULL, OPT_THREADS},
      {"fsync", required_argument, NULL, OPT_FSYNC},
      {"samples", required_argument, NULL, OPT_SAMPLES},
      BENCH_OPTS_COMMON,
      {NULL, 0, NULL, 0}};
  int c, first = 1, quick = 0, have_sizes = 0, have_mem = 0, have_ws = 0,
         have_samples = 0;
  bench_parse_list("--sizes", "1MiB,4MiB,16MiB", 1, o->sizes, &o->nsizes);
  o->dir = "/var/tmp";
  o->memory = 256ull << 20;
  o->working_set = 4;
  o->disk_threads = 2;
  o->fsync = "none";
  o->samples = 20;
  while ((c = cli_getopt("bench", argc, argv, "m:h", lo, &first)) != -1) {
    int rc = CLI_OK;
    switch (c) {
    case OPT_DIR:
      o->dir = optarg;
      break;
    case OPT_SIZES:
      rc = bench_parse_list("--sizes", optarg, 1, o->sizes, &o->nsizes);
      have_sizes = 1;
      break;
    case 'm':
      rc = cli_parse_size_opt("bench", "--memory", optarg, &o->memory);
      have_mem = 1;
      break;
    case OPT_WSET:
      rc = bench_parse_double_in("--working-set", optarg, 2, 64,
                                 &o->working_set);
      have_ws = 1;
      break;
    case OPT_THREADS:
      rc = bench_parse_u64_in("--disk-threads", optarg, 0, 1, 64,
                              &o->disk_threads);
      break;
    case OPT_FSYNC:
      if (strcmp(optarg, "none") && strcmp(optarg, "object")) {
        cli_err("bench", "--fsync %s: none or object", optarg);
        rc = CLI_USAGE;
      }
      o->fsync = optarg;
      break;
    case OPT_SAMPLES:
      rc = bench_parse_u64_in("--samples", optarg, 0, 1, 100000, &o->samples);
      have_samples = 1;
      break;
    default:
      rc = bench_parse_common(c, &quick, &o->json);
    }
    if (rc)
      return rc;
  }
  if (bench_parse_end("disk", argc, argv))
    return CLI_USAGE;
  if (quick) {
    if (!have_sizes)
      bench_parse_list("--sizes", "1MiB,4MiB", 1, o->sizes, &o->nsizes);
    if (!have_mem)
      o->memory = 32ull << 20;
    if (!have_ws)
      o->working_set = 3;
    if (!have_samples)
      o->samples = 5;
  }
  for (int i = 0; i < o->nsizes; i++)
    if (o->sizes[i] * D_MIN_OBJECTS > o->memory) {
      char a[32], b[32];
      cli_err("bench",
              "--sizes %s: the pool (--memory %s) must hold at least %d "
              "objects of each size",
              kvds_fmt_bytes(o->sizes[i], a, sizeof a),
              kvds_fmt_bytes(o->memory, b, sizeof b), D_MIN_OBJECTS);
      return CLI_USAGE;
    }
  return CLI_OK;
}

/* ---- the page cache and fio --------------------------------------------- */

/* Writes back dirty pages and drops the clean ones. 0 or -errno. */
static int drop_caches(void) {
  sync();
  int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  int rc = write(fd, "3", 1) == 1 ? 0 : -errno;
  close(fd);
  return rc;
}

/* Before every phase, kvds's and fio's: the dirty pages of the one before
 * are written back (a write phase never competes with the previous one's
 * writeback), and the cache is dropped when the bench may (a read phase
 * reads from the disk). */
static void before_phase(const struct disk *d) {
  if (!d->can_drop || drop_caches())
    sync();
}

/* Runs argv with stdout into out_path (NULL: /dev/null) and stderr into
 * err_path; waits for it. Its exit status (128 + signal), or -errno. */
static int run_child(char *const *argv, const char *out_path,
                     const char *err_path) {
  pid_t pid;
  int rc = bench_spawn(&pid, (const char *const *)argv,
                       out_path ? out_path : "/dev/null", err_path, NULL);
  return rc ? rc : bench_wait(pid);
}

static void fio_probe(struct disk *d) {
  static char path[PATH_MAX];
  d->fio = bench_find_in_path("fio", path, sizeof path);
  if (!d->fio)
    return;
  char out[PATH_MAX + 32], err[PATH_MAX + 32];
  snprintf(out, sizeof out, "%s/fio-version.txt", d->dir);
  snprintf(err, sizeof err, "%s/fio-version.err", d->dir);
  char *argv[] = {(char *)d->fio, "--version", NULL};
  if (run_child(argv, out, err) == 0) {
    FILE *f = fopen(out, "r");
    if (f && fgets(d->fio_version, sizeof d->fio_version, f))
      d->fio_version[strcspn(d->fio_version, "\n")] = '\0';
    if (f)
      fclose(f);
  }
  unlink(out);
  unlink(err);
  if (!d->fio_version[0])
    snprintf(d->fio_version, sizeof d->fio_version, "fio");
}

/* fio sequential `rw` ("write" or "read") of `total` bytes in blocks of
 * bs over --disk-threads jobs (psync: one synchronous call at a time per
 * job, as the worker's disk threads), one file per job in fio_dir: the
 * read reads the files the write wrote. Both buffered, as the tier's
 * writes and, mostly, its reads (O_DIRECT only where a value's place in
 * the pool is 4 KiB-aligned: docs/tiers.md); fsync after every block for
 * --fsync object. */
static void fio_run(struct disk *d, const char *rw, uint64_t bs, uint64_t total,
                    struct fio_res *r) {
  *r = (struct fio_res){0};
  if (!d->fio) {
    snprintf(r->why, sizeof r->why, "fio not installed");
    return;
  }
  uint64_t jobs = d->o->disk_threads;
  uint64_t per_job = total / jobs / bs * bs;
  if (per_job == 0)
    per_job = bs;
  char a_rw[32], a_bs[40], a_size[40], a_jobs[32], a_dir[PATH_MAX + 48],
      a_out[PATH_MAX + 48], out[PATH_MAX + 32], err[PATH_MAX + 32];
  snprintf(out, sizeof out, "%s/fio-%s.json", d->dir, rw);
  snprintf(err, sizeof err, "%s/fio-%s.err", d->dir, rw);
  snprintf(a_rw, sizeof a_rw, "--rw=%s", rw);
  snprintf(a_bs, sizeof a_bs, "--bs=%llu", (unsigned long long)bs);
  snprintf(a_size, sizeof a_size, "--size=%llu", (unsigned long long)per_job);
  snprintf(a_jobs, sizeof a_jobs, "--numjobs=%llu", (unsigned long long)jobs);
  snprintf(a_dir, sizeof a_dir, "--directory=%s", d->fio_dir);
  snprintf(a_out, sizeof a_out, "--output=%s", out);
  int reading = strcmp(rw, "read") == 0;
  char *argv[] = {(char *)d->fio,
                  "--name=kvds-bench",
                  a_dir,
                  a_rw,
                  a_bs,
                  a_size,
                  a_jobs,
                  "--ioengine=psync",
                  "--iodepth=1",
                  "--fallocate=none",
                  "--group_reporting",
                  "--output-format=json",
                  a_out,
                  "--direct=0",
                  !reading && strcmp(d->o->fsync, "object") == 0 ? "--fsync=1"
                                                                 : NULL,
                  NULL};
  int rc = run_child(argv, NULL, err);
  char tail[160];
  if (rc != 0) {
    snprintf(r->why, sizeof r->why, "fio --rw=%s failed (%s %d): %.100s", rw,
             rc < 0 ? "error" : "status", rc,
             cli_log_tail(err, 0, tail, sizeof tail));
    goto out;
  }
  json_error_t je;
  json_t *j = json_load_file(out, 0, &je);
  json_t *job = json_array_get(json_object_get(j, "jobs"), 0);
  json_t *io = json_object_get(job, rw);
  json_t *bw = json_object_get(io, "bw_bytes");
  json_t *bytes = json_object_get(io, "io_bytes");
  if (!json_is_integer(bw) || !json_is_integer(bytes) ||
      json_integer_value(bw) <= 0) {
    snprintf(r->why, sizeof r->why, "fio --rw=%s: no %s.bw_bytes in %.80s", rw,
             rw, j ? "its JSON" : je.text);
  } else {
    r->ran = 1;
    r->gbps = (double)json_integer_value(bw) / 1e9;
    r->bytes = (uint64_t)json_integer_value(bytes);
  }
  json_decref(j);
out:
  unlink(out);
  unlink(err);
}

/* ---- the worker --------------------------------------------------------- */

static int start_worker(struct disk *d, uint64_t size) {
  char mem[32], threads[24];
  snprintf(d->data, sizeof d->data, "%s/disk-%llu", d->dir,
           (unsigned long long)size);
  snprintf(mem, sizeof mem, "%llu", (unsigned long long)d->o->memory);
  snprintf(threads, sizeof threads, "%llu",
           (unsigned long long)d->o->disk_threads);
  d->w = (struct bench_worker){.port = bench_free_port()};
  if (d->w.port <= 0) {
    cli_err("bench", "no free loopback port");
    return CLI_FAIL;
  }
  const char *args[] = {"--memory",   mem,         "--tier",         "posix",
                        "--disk-dir", d->data,     "--disk-policy",  "spill",
                        "--fsync",    d->o->fsync, "--disk-threads", threads,
                        NULL};
  int rc = bench_worker_spawn(&d->w, d->dir, args);
  if (rc) {
    cli_err("bench", "cannot start a worker: %s", kvds_strerror(rc));
    return CLI_FAIL;
  }
  if (bench_worker_wait_ready(&d->w, kvds_now_ns() + 30000000000ull))
    return CLI_FAIL;
  if (cli_connect("bench", d->w.addr, 0, &d->c, NULL, 0))
    return CLI_FAIL;
  kvds_client_set_timeout(d->c, D_IO_TIMEOUT_MS);
  return CLI_OK;
}

static void stop_worker(struct disk *d) {
  kvds_client_close(d->c);
  d->c = NULL;
  bench_worker_stop(&d->w);
  if (d->data[0]) {
    bench_remove_tree(d->data);
    d->data[0] = '\0';
  }
}

/* ---- the phases --------------------------------------------------------- */

static int stats(struct disk *d, struct kvds_stats *st) {
  int rc = kvds_stats(d->c, st);
  if (rc)
    cli_err("bench", "stats of %s: %s", d->w.addr, kvds_strerror(rc));
  return rc;
}

/* Spill-side state while putting: the first spill seen and the last time
 * the counters moved. */
struct spill_watch {
  uint64_t t_first, w_first; /* 0: none seen yet */
  uint64_t t_last, w_last;
  uint64_t moved; /* writes + skipped at the last poll */
  uint64_t skipped;
};

/* Reads the stats into *st and updates the watch. */
static int spill_poll(struct disk *d, const struct kvds_stats *st0,
                      struct spill_watch *s, struct kvds_stats *st) {
  int rc = stats(d, st);
  if (rc)
    return rc;
  uint64_t now = kvds_now_ns();
  uint64_t moved = st->disk_writes + st->disk_spill_skipped;
  if (st->disk_writes > st0->disk_writes && s->t_first == 0) {
    s->t_first = s->t_last = now;
    s->w_first = s->w_last = st->disk_write_bytes;
  } else if (s->t_first && moved != s->moved) {
    s->t_last = now;
    s->w_last = st->disk_write_bytes;
  }
  s->moved = moved;
  s->skipped = st->disk_spill_skipped - st0->disk_spill_skipped;
  return 0;
}

static void pause_us(long us) {
  struct timespec ts = {0, us * 1000};
  nanosleep(&ts, NULL);
}

/* Puts the working set. The worker does not hold puts back while its
 * spill is behind (it evicts objects without a copy: disk_spill_skipped),
 * so the bench does, and what it measures is the spill path at the rate it
 * sustains without losing objects: once the next put would evict, a put
 * waits until the tier has written at least the bytes eviction has taken
 * plus what the put's eviction round takes (a round of the pool, at least
 * the put's own size). */
static int phase_spill(struct disk *d, struct dcase *k) {
  size_t size = (size_t)k->size;
  struct kvds_stats st0, st;
  struct spill_watch s = {0};
  int rc = stats(d, &st0);
  if (rc)
    return rc;
  uint64_t high = st0.high_watermark_ppm * st0.pool_capacity / 1000000;
  uint64_t round = st0.eviction_ratio_ppm * st0.pool_capacity / 1000000;
  /* a put above the watermark evicts a round (at least its own size) */
  uint64_t margin = round > size ? round : size;
  s.moved = st0.disk_writes + st0.disk_spill_skipped;
  uint64_t put_first = 0, t_put_end = 0;
  for (size_t i = 0; i < d->ks.n && !bench_stopped(); i++) {
    uint64_t give_up = kvds_now_ns() + D_THROTTLE_MAX_NS;
    for (;;) {
      if ((rc = spill_poll(d, &st0, &s, &st)))
        return rc;
      if (s.t_first && !put_first)
        put_first = i;
      if (st.pool_used + size < high ||
          st.disk_write_bytes - st0.disk_write_bytes >=
              st.evicted_bytes - st0.evicted_bytes + margin)
        break;
      if (kvds_now_ns() > give_up) {
        k->throttle_timeouts++;
        break;
      }
      if (bench_stopped())
        break;
      pause_us(50);
    }
    kvds_put_u64(d->src, i); /* no two values alike */
    rc = kvds_put(d->c, d->ks.iov[i].base, d->ks.iov[i].len, d->src, size);
    if (rc) {
      cli_err("bench", "put of %s object %zu: %s",
              kvds_fmt_bytes(size, (char[32]){0}, 32), i, kvds_strerror(rc));
      return rc;
    }
  }
  t_put_end = kvds_now_ns();
  /* after the last put: until the counters stay still */
  uint64_t give_up = t_put_end + D_SETTLE_MAX_NS;
  while (!bench_stopped()) {
    if ((rc = spill_poll(d, &st0, &s, &st)))
      return rc;
    uint64_t now = kvds_now_ns();
    uint64_t since = s.t_first ? s.t_last : t_put_end;
    if (now - (since > t_put_end ? since : t_put_end) >= D_SETTLE_NS ||
        now > give_up)
      break;
    kvds_sleep_ms(1);
  }
  if (bench_stopped())
    return KVDS_E_INTR;
  struct kvds_stats st1;
  if ((rc = stats(d, &st1)))
    return rc;
  k->spilled_total = st1.disk_write_bytes - st0.disk_write_bytes;
  k->spill_skipped = s.skipped;
  if (k->spilled_total == 0) {
    cli_err("bench",
            "%s objects: the worker wrote nothing to disk in %s of puts "
            "(its disk_writes stayed 0: no disk tier behind --tier posix?)",
            kvds_fmt_bytes(size, (char[32]){0}, 32),
            kvds_fmt_bytes(d->ks.n * size, (char[32]){0}, 32));
    return KVDS_E_STATE;
  }
  if (!s.t_first || s.t_last == s.t_first) {
    cli_err("bench",
            "%s objects: the worker wrote %llu bytes to disk in %s of puts; "
            "too few spills to time (a larger --working-set?)",
            kvds_fmt_bytes(size, (char[32]){0}, 32),
            (unsigned long long)k->spilled_total,
            kvds_fmt_bytes(d->ks.n * size, (char[32]){0}, 32));
    return KVDS_E_STATE;
  }
  k->spill_bytes = s.w_last - s.w_first;
  k->spill_ns = s.t_last - s.t_first;
  k->spill_gbps = (double)k->spill_bytes / (double)k->spill_ns;
  if (put_first && put_first < d->ks.n && t_put_end > s.t_first)
    k->put_gbps = (double)((d->ks.n - put_first) * size) /
                  (double)(t_put_end - s.t_first);
  return 0;
}

/* One pass of zero-copy mgets of disk_threads keys over the keys LRU put
 * on disk: the oldest ones, up to those still in DRAM after the puts. */
static int phase_read(struct disk *d, struct dcase *k, size_t *next,
                      size_t *hot) {
  size_t size = (size_t)k->size, batch = (size_t)d->o->disk_threads;
  size_t in_dram = (size_t)(d->o->memory / size) + 1;
  size_t m = d->ks.n > in_dram + batch ? d->ks.n - in_dram - batch : 0;
  m -= m % batch;
  if (m == 0) {
    cli_err("bench", "%s objects: no key lives on disk only",
            kvds_fmt_bytes(size, (char[32]){0}, 32));
    return KVDS_E_STATE;
  }
  struct kvds_value v[64];
  int res[64];
  struct kvds_stats st0, st1;
  int rc = stats(d, &st0);
  if (rc)
    return rc;
  uint64_t ns = 0;
  for (size_t j = 0; j < m && !bench_stopped(); j += batch) {
    uint64_t t0 = kvds_now_ns();
    rc = kvds_mget(d->c, batch, d->ks.iov + j, 0, v, res);
    ns += kvds_now_ns() - t0;
    if (rc) {
      cli_err("bench", "read-back of %s objects: %s",
              kvds_fmt_bytes(size, (char[32]){0}, 32), kvds_strerror(rc));
      return rc;
    }
    for (size_t i = 0; i < batch; i++) {
      if (res[i] == KVDS_E_NOTFOUND) {
        k->read_lost++; /* evicted without a copy on disk */
      } else if (res[i]) {
        rc = res[i];
      } else {
        if (v[i].len != size)
          rc = KVDS_E_RANGE;
        k->read_bytes += v[i].len;
        *hot = j + i;
      }
    }
    kvds_release(d->c, batch, v);
    k->read_calls++;
    if (rc) {
      cli_err("bench", "read-back of %s objects: %s",
              kvds_fmt_bytes(size, (char[32]){0}, 32), kvds_strerror(rc));
      return rc;
    }
  }
  if (bench_stopped())
    return KVDS_E_INTR;
  if ((rc = stats(d, &st1)))
    return rc;
  k->read_ns = ns;
  k->read_gbps = ns ? (double)k->read_bytes / (double)ns : 0;
  k->read_from_disk = st1.disk_read_bytes - st0.disk_read_bytes;
  k->read_writes = st1.disk_writes - st0.disk_writes;
  *next = m;
  return 0;
}

/* Latency of one zero-copy get: of key `hot` (a DRAM hit), then of keys
 * from *next on, cycling (LRU has evicted them: disk hits), each counted as
 * a disk hit only when the worker's disk_reads moved by one. */
static int phase_latency(struct disk *d, struct dcase *k, size_t hot,
                         size_t next) {
  struct bench_samples s = {0};
  struct kvds_stats st0, st1;
  struct kvds_value v;
  int res, rc = 0;
  const struct kvds_iov *keys = d->ks.iov;
  const char *what = "DRAM hit";
  for (int kind = 0; kind < 2 && rc == 0 && !bench_stopped(); kind++) {
    struct dlat *out = kind ? &k->disk : &k->dram;
    s.n = 0;
    s.total_ns = 0;
    if (kind) {
      what = "disk hit";
      before_phase(d);
    }
    for (uint64_t tries = 0; s.n < d->o->samples && rc == 0 &&
                             tries < 3 * d->o->samples && !bench_stopped();
         tries++) {
      size_t i = kind ? next++ % d->ks.n : hot;
      if ((rc = stats(d, &st0)))
        break;
      uint64_t t0 = kvds_now_ns();
      rc = kvds_mget(d->c, 1, &keys[i], 0, &v, &res);
      uint64_t t1 = kvds_now_ns();
      if (rc == 0 && res == 0) {
        if (v.len != k->size)
          rc = KVDS_E_RANGE;
        kvds_release(d->c, 1, &v);
      } else if (rc == 0 && res == KVDS_E_NOTFOUND && kind) {
        continue; /* lost in the spill: not a disk hit */
      } else if (rc == 0) {
        rc = res;
      }
      if (rc || (rc = stats(d, &st1)))
        break;
      uint64_t reads = st1.disk_reads - st0.disk_reads;
      if (kind && reads != 1) {
        k->disk_missed++;
        continue;
      }
      if (!kind && reads != 0) {
        cli_err("bench", "%s objects: a DRAM hit read from disk",
                kvds_fmt_bytes(k->size, (char[32]){0}, 32));
        rc = KVDS_E_STATE;
        break;
      }
      rc = bench_samples_add(&s, t1 - t0);
    }
    if (rc == 0) {
      out->n = s.n;
      bench_samples_p50_p99(&s, &out->p50_us, &out->p99_us);
    }
  }
  free(s.ns);
  if (rc && rc != KVDS_E_STATE && !bench_stopped())
    cli_err("bench", "%s latency of %s objects: %s", what,
            kvds_fmt_bytes(k->size, (char[32]){0}, 32), kvds_strerror(rc));
  return bench_stopped() ? KVDS_E_INTR : rc;
}

/* ---- reporting ---------------------------------------------------------- */

static void print_header(const struct disk *d) {
  char mem[32];
  printf("kvds bench disk: a worker of this binary per size, %s pool, --tier "
         "posix\n--disk-policy spill --fsync %s --disk-threads %llu; "
         "directory %s\n",
         kvds_fmt_bytes(d->o->memory, mem, sizeof mem), d->o->fsync,
         (unsigned long long)d->o->disk_threads, d->dir);
  printf("Working set %.3g x the pool per size.\nPage cache: %s.\n",
         d->o->working_set,
         d->can_drop ? "written back and dropped (sync + vm.drop_caches) "
                       "before every\nphase, kvds's and fio's"
                     : d->drop_why);
  if (d->fio)
    printf("fio: %s, same directory and bytes, --bs = object size, "
           "--numjobs %llu\n--ioengine=psync (one call at a time per job, "
           "as the disk threads), buffered\nlike the tier%s.\n",
           d->fio_version, (unsigned long long)d->o->disk_threads,
           strcmp(d->o->fsync, "object") == 0 ? ", writes with --fsync=1" : "");
  else
    printf("fio: skipped (not installed: apt-get install fio); kvds figures "
           "only.\n");
  printf("spill: disk bytes written by the tier over the time from the first "
         "spill\nto the last; read-back: mgets of %llu keys on disk only per "
         "call.\nGB/s = 10^9 B/s.\n\n",
         (unsigned long long)d->o->disk_threads);
  printf("size      phase          MiB  kvds GB/s  fio GB/s  ratio  notes\n");
}

static void print_row(const char *size, const char *phase, uint64_t bytes,
                      double gbps, const struct fio_res *f, const char *note) {
  char g[16], fg[16], q[16];
  printf("%-9s %-10s %7.0f %10s %9s %6s  %s\n", size, phase,
         (double)bytes / (1 << 20), bench_fmt3(gbps, g, sizeof g),
         f->ran ? bench_fmt3(f->gbps, fg, sizeof fg) : "-",
         f->ran && f->gbps > 0 ? bench_fmt3(gbps / f->gbps, q, sizeof q) : "-",
         note);
}

static void print_case(const struct dcase *k) {
  char sz[32], note[512], g[16];
  kvds_fmt_bytes(k->size, sz, sizeof sz);
  snprintf(note, sizeof note,
           "put %s GB/s with the pool full, %llu skipped, %llu waits "
           "timed out%s%s",
           bench_fmt3(k->put_gbps, g, sizeof g),
           (unsigned long long)k->spill_skipped,
           (unsigned long long)k->throttle_timeouts,
           k->fio_write.ran ? "" : "; ",
           k->fio_write.ran ? "" : k->fio_write.why);
  print_row(sz, "spill", k->spill_bytes, k->spill_gbps, &k->fio_write, note);
  snprintf(note, sizeof note, "%.0f%% from disk, %llu lost, %llu writes%s%s",
           k->read_bytes
               ? 100.0 * (double)k->read_from_disk / (double)k->read_bytes
               : 0.0,
           (unsigned long long)k->read_lost, (unsigned long long)k->read_writes,
           k->fio_read.ran ? "" : "; ", k->fio_read.ran ? "" : k->fio_read.why);
  print_row(sz, "read-back", k->read_bytes, k->read_gbps, &k->fio_read, note);
  fflush(stdout);
}

static void print_latency(const struct disk *d) {
  char sz[32], a[16], b[16], c[16];
  printf("\none zero-copy GET of one object, us      size     p50      p99     "
         "n  disk/DRAM p50\n");
  for (int i = 0; i < d->ncases; i++) {
    const struct dcase *k = &d->cases[i];
    kvds_fmt_bytes(k->size, sz, sizeof sz);
    printf("DRAM hit                            %9s %8s %8s %5llu\n", sz,
           bench_fmt3(k->dram.p50_us, a, sizeof a),
           bench_fmt3(k->dram.p99_us, b, sizeof b),
           (unsigned long long)k->dram.n);
    printf("disk hit                            %9s %8s %8s %5llu  %s\n", sz,
           bench_fmt3(k->disk.p50_us, a, sizeof a),
           bench_fmt3(k->disk.p99_us, b, sizeof b),
           (unsigned long long)k->disk.n,
           k->dram.p50_us > 0
               ? bench_fmt3(k->disk.p50_us / k->dram.p50_us, c, sizeof c)
               : "-");
  }
}

static json_t *fio_json(const struct fio_res *f, double kvds_gbps) {
  if (!f->ran)
    return json_pack("{s:s}", "skipped", f->why);
  return json_pack("{s:f, s:I, s:f}", "gbps", f->gbps, "bytes",
                   (json_int_t)f->bytes, "ratio",
                   f->gbps > 0 ? kvds_gbps / f->gbps : 0.0);
}

static json_t *lat_json(const struct dlat *l) {
  return json_pack("{s:f, s:f, s:I}", "p50_us", l->p50_us, "p99_us", l->p99_us,
                   "samples", (json_int_t)l->n);
}

static int print_json(const struct disk *d) {
  json_t *root = json_object(), *cases = json_array();
  json_object_set_new(root, "dir", json_string(d->dir));
  json_object_set_new(root, "memory", json_integer((json_int_t)d->o->memory));
  json_object_set_new(root, "working_set", json_real(d->o->working_set));
  json_object_set_new(root, "disk_threads",
                      json_integer((json_int_t)d->o->disk_threads));
  json_object_set_new(root, "fsync", json_string(d->o->fsync));
  json_object_set_new(root, "drop_caches", json_boolean(d->can_drop));
  json_object_set_new(root, "fio",
                      d->fio ? json_string(d->fio_version) : json_null());
  for (int i = 0; i < d->ncases; i++) {
    const struct dcase *k = &d->cases[i];
    json_t *sp =
        json_pack("{s:I, s:I, s:f, s:f, s:I, s:I, s:I}", "bytes",
                  (json_int_t)k->spill_bytes, "ns", (json_int_t)k->spill_ns,
                  "gbps", k->spill_gbps, "put_gbps", k->put_gbps, "skipped",
                  (json_int_t)k->spill_skipped, "throttle_timeouts",
                  (json_int_t)k->throttle_timeouts, "bytes_total",
                  (json_int_t)k->spilled_total);
    json_object_set_new(sp, "fio", fio_json(&k->fio_write, k->spill_gbps));
    json_t *rd = json_pack(
        "{s:I, s:I, s:I, s:f, s:I, s:I, s:I}", "bytes",
        (json_int_t)k->read_bytes, "ns", (json_int_t)k->read_ns, "calls",
        (json_int_t)k->read_calls, "gbps", k->read_gbps, "from_disk_bytes",
        (json_int_t)k->read_from_disk, "lost", (json_int_t)k->read_lost,
        "disk_writes", (json_int_t)k->read_writes);
    json_object_set_new(rd, "fio", fio_json(&k->fio_read, k->read_gbps));
    json_array_append_new(
        cases, json_pack("{s:I, s:I, s:o, s:o, s:{s:o, s:o, s:I}}", "size",
                         (json_int_t)k->size, "objects", (json_int_t)k->objects,
                         "spill", sp, "read_back", rd, "latency", "dram",
                         lat_json(&k->dram), "disk", lat_json(&k->disk),
                         "disk_missed", (json_int_t)k->disk_missed));
  }
  json_object_set_new(root, "sizes", cases);
  return bench_print_json(root);
}

/* ---- the run ------------------------------------------------------------ */

static int run_size(struct disk *d, uint64_t size) {
  struct dcase *k = &d->cases[d->ncases];
  *k = (struct dcase){.size = size};
  char sz[32];
  kvds_fmt_bytes(size, sz, sizeof sz);
  k->objects =
      (uint64_t)(d->o->working_set * (double)d->o->memory / (double)size) + 1;
  if (k->objects > BENCH_KEYS_MAX)
    k->objects = BENCH_KEYS_MAX;
  int rc = bench_keyset_make(&d->ks, "kvds-bench-disk/", sz, k->objects);
  if (rc) {
    cli_err("bench", "out of memory");
    return rc;
  }
  bench_progress("disk", "%s: starting a worker, putting %llu objects", sz,
                 (unsigned long long)k->objects);
  if (start_worker(d, size))
    return KVDS_E_STATE;
  size_t next = 0, hot = SIZE_MAX;
  before_phase(d);
  if ((rc = phase_spill(d, k)))
    goto out;
  bench_progress("disk", "%s: spill done, fio write", sz);
  before_phase(d);
  fio_run(d, "write", size, k->spilled_total, &k->fio_write);
  before_phase(d);
  bench_progress("disk", "%s: read-back", sz);
  if ((rc = phase_read(d, k, &next, &hot)))
    goto out;
  if (hot == SIZE_MAX) {
    cli_err("bench", "%s objects: no key was read back from disk (%llu lost)",
            sz, (unsigned long long)k->read_lost);
    rc = KVDS_E_STATE;
    goto out;
  }
  before_phase(d);
  fio_run(d, "read", size, k->read_bytes, &k->fio_read);
  bench_progress("disk", "%s: latency", sz);
  rc = phase_latency(d, k, hot, next);
out:
  stop_worker(d);
  /* fio's files go with the size's disk directory */
  if (d->fio_dir[0] && bench_remove_tree(d->fio_dir) == 0)
    mkdir(d->fio_dir, 0700);
  if (rc == 0) {
    /* the header once a worker has run: a bench that cannot start one
     * prints nothing on stdout */
    if (!d->o->json && d->ncases == 0)
      print_header(d);
    d->ncases++;
    if (!d->o->json)
      print_case(k);
  }
  return rc;
}

/* Room for the worker's files and fio's of the largest size. */
static int check_space(const struct disk *d) {
  uint64_t need = 0;
  for (int i = 0; i < d->o->nsizes; i++) {
    uint64_t n =
        (uint64_t)(d->o->working_set * (double)d->o->memory) + d->o->sizes[i];
    if (2 * n > need)
      need = 2 * n;
  }
  struct statvfs sv;
  if (statvfs(d->dir, &sv) == 0 &&
      (uint64_t)sv.f_bavail * sv.f_frsize < need + (need >> 3)) {
    char a[32], b[32];
    cli_err("bench", "%s has %s free; the bench needs about %s", d->dir,
            kvds_fmt_bytes((uint64_t)sv.f_bavail * sv.f_frsize, a, sizeof a),
            kvds_fmt_bytes(need, b, sizeof b));
    return CLI_FAIL;
  }
  return CLI_OK;
}

int bench_disk(int argc, char **argv) {
  struct disk_opts o = {0};
  int rc = disk_parse(argc, argv, &o);
  if (rc)
    return rc < 0 ? CLI_OK : rc;
  struct disk d = {.o = &o};
  int ret = CLI_FAIL;
  bench_catch_signals();
  uint64_t max = 0;
  for (int i = 0; i < o.nsizes; i++)
    max = o.sizes[i] > max ? o.sizes[i] : max;
  if (bench_alloc_buffers((size_t)max, &d.src, &d.dst)) {
    cli_err("bench", "out of memory");
    return CLI_FAIL;
  }
  if (bench_make_dir(o.dir, "kvds-bench-disk", d.dir, sizeof d.dir))
    goto out;
  if (check_space(&d))
    goto out;
  snprintf(d.fio_dir, sizeof d.fio_dir, "%s/fio", d.dir);
  if (mkdir(d.fio_dir, 0700)) {
    cli_err("bench", "mkdir %s: %s", d.fio_dir, strerror(errno));
    goto out;
  }
  fio_probe(&d);
  rc = drop_caches();
  d.can_drop = rc == 0;
  if (rc)
    snprintf(d.drop_why, sizeof d.drop_why,
             "written back (sync) before every phase but not dropped\n"
             "(vm.drop_caches: %s): kvds and fio read whatever it holds",
             strerror(-rc));
  rc = 0;
  for (int i = 0; i < o.nsizes && rc == 0 && !bench_stopped(); i++)
    rc = run_size(&d, o.sizes[i]);
  if (bench_stopped()) {
    fflush(stdout);
    bench_progress("disk", "interrupted; the worker was stopped");
    ret = 128 + bench_stopped();
  } else if (rc == 0) {
    ret = o.json ? print_json(&d) : (print_latency(&d), CLI_OK);
  }
out:
  stop_worker(&d);
  bench_keyset_free(&d.ks);
  if (d.dir[0]) {
    int drc = bench_remove_tree(d.dir);
    if (drc)
      cli_err("bench", "cannot remove %s: %s", d.dir, kvds_strerror(drc));
  }
  free(d.src);
  free(d.dst);
  return ret;
}
