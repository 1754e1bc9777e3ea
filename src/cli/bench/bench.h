/*
 * bench.h — private to `kvds bench` (src/cli/bench/): what its benchmarks
 * share. One file per benchmark, one per shared piece:
 *
 *   bench.c    cmd_bench: the mode dispatch, the help text, the modes
 *              written in Python (connector, ttft) and the interpreter
 *              they and peers' Mooncake driver run in, the stop flag, this
 *              binary's path
 *   local.c    `kvds bench local`: put / get against a running worker next
 *              to memcpy
 *   remote.c   `kvds bench remote`: reads pulled across two workers next
 *              to raw loopback TCP
 *   disk.c     `kvds bench disk`: the disk tier's spill and read-back next
 *              to fio, and disk-hit vs DRAM-hit latency
 *   peers.c    `kvds bench peers`: kvds next to Redis and Mooncake, all
 *              started by the bench, and the ceilings; the timed case over
 *              client threads
 *   redis.c    the Redis rows of `kvds bench peers` (redis-server and a
 *              hiredis client)
 *   workers.c  processes a bench starts itself (workers, peers, helper
 *              commands), a pair of peered workers, and its temporary
 *              directories
 *   tcp.c      raw loopback TCP streams: the ceiling of remote reads
 *   ucxperf.c  ucx_perftest's ucp_get: the ceiling of remote reads over
 *              UCX (`kvds bench remote --transport ucx`)
 *   opts.c     ranged option values, --sizes / --batch lists, and the
 *              options every mode has
 *   samples.c  per-call latency samples and their percentiles
 *   keys.c     generated key sets, and deleting keys on a worker
 *   buffers.c  the source and destination buffers of the timed copies
 *   report.c   number formatting, the JSON report, progress lines
 *
 * The benches are clients of kvds.h, with cli.h and common/util.h (clock,
 * byte formatting) besides. Everything here is called from the main
 * thread only, except in the threads of bench_case_run (peers.c), which
 * call what their call function uses: bench_case_src, the keys' helpers on
 * a client of their own, bench_progress; the raw-TCP threads of tcp.c use
 * none of it. Errors are printed as one line "kvds bench: ..." (cli_err)
 * by the function that knows the most about them: the helpers below that
 * print say so, the others return the error and print nothing.
 */
#ifndef KVDS_CLI_BENCH_H
#define KVDS_CLI_BENCH_H

#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/types.h>

#include "cli/cli.h"

#define BENCH_LIST_MAX 16       /* values in a --sizes or --batch list */
#define BENCH_KEYS_MAX 65536    /* keys of one case */
#define BENCH_EXISTS_BATCH 1000 /* keys per kvds_exists call */

/* ---- modes (local.c, remote.c, disk.c) ---------------------------------- */

/* `kvds bench [options] local` with cmd_bench's argc/argv unchanged
 * (argv[0] is "bench"): also what runs for a missing or unknown mode,
 * which it reports as a usage error. Returns the exit status. */
int bench_local(int argc, char **argv);

/* `kvds bench remote [options]` (argv[0] is "remote"). Returns the exit
 * status. */
int bench_remote(int argc, char **argv);

/* `kvds bench disk [options]` (argv[0] is "disk"). Returns the exit
 * status. */
int bench_disk(int argc, char **argv);

/* `kvds bench peers [options]` (argv[0] is "peers"). Returns the exit
 * status. */
int bench_peers(int argc, char **argv);

/* ---- process (bench.c) -------------------------------------------------- */

/* Prints the help of every mode (`kvds bench --help`) on stdout. */
void bench_print_help(void);

/* From now on SIGINT and SIGTERM set the stop flag instead of ending the
 * process: the benches check it between calls, clean up and exit with
 * 128 + the signal. */
void bench_catch_signals(void);

/* The signal that stopped the bench, or 0. */
int bench_stopped(void);

/* The interpreter of the benches written in Python: $KVDS_PYTHON, else
 * python3. */
const char *bench_python(void);

/* `python -c bench_python_boot MODULE PROG ARGS...` runs MODULE's main()
 * with sys.argv = [.., ARGS...], or exits with one line naming PROG when
 * the interpreter cannot import it. */
extern const char bench_python_boot[];

/* This binary's path (static storage, valid until the process ends), or
 * NULL with errno set. */
const char *bench_self_exe(void);

/* ---- started workers and directories (workers.c) ----------------------- */

/* A worker started by a bench. Zero-initialise, set port, then
 * bench_worker_spawn. */
struct bench_worker {
  pid_t pid; /* 0: none (or reaped) */
  int port;
  char addr[64];
  char log[PATH_MAX + 32];
};

/* A TCP port on 127.0.0.1 that was free a moment ago, or -1. */
int bench_free_port(void);

/* Starts argv (argv[0] looked up in $PATH when it has no '/'; borrowed
 * until the call returns) in its own process group, stdin from /dev/null,
 * stdout into the file out and stderr into the file err (out truncated
 * first; err NULL: the same file as out; out NULL: the bench's own), with
 * the NULL-terminated name/value pairs of env (NULL: none) set; it dies
 * with the bench. *pid on success; 0 or -errno. Prints nothing. */
int bench_spawn(pid_t *pid, const char *const *argv, const char *out,
                const char *err, const char *const *env);

/* Waits for the child pid: its exit status (128 + signal), or -errno. */
int bench_wait(pid_t pid);

/* Sends sig to *pid, waits up to grace_s seconds for it to exit, then
 * SIGKILLs its process group; reaps it and sets *pid = 0. *pid <= 0 is a
 * no-op. */
void bench_proc_stop(pid_t *pid, int sig, int grace_s);

/* The path of the executable `name` in $PATH into out[cap], or NULL. */
const char *bench_find_in_path(const char *name, char *out, size_t cap);

/* Starts `<this binary> worker --listen 127.0.0.1:<w->port> ARGS...` (args:
 * NULL-terminated, borrowed until the call returns), plus
 * --auth-token-file $KVDS_AUTH_TOKEN_FILE when that is set, with
 * KVDS_RUN_DIR=dir (its Unix socket goes there) and its output in
 * dir/worker-<port>.log (w->log), as bench_spawn. A terminal's ^C reaches
 * the bench, which stops the worker in order. 0, or -errno (-E2BIG: too
 * many args) with nothing started. Prints nothing. */
int bench_worker_spawn(struct bench_worker *w, const char *dir,
                       const char *const *args);

/* Polls until the worker answers a ping. CLI_OK; CLI_FAIL after printing
 * one line (the worker exited while starting, or did not answer by
 * deadline_ns: either with the last line of its log), or silently when the
 * bench was stopped. */
int bench_worker_wait_ready(struct bench_worker *w, uint64_t deadline_ns);

/* SIGTERM, then waits up to 30 s (SIGKILL after); then removes its log,
 * also when the worker had already exited and been reaped. A worker never
 * started (pid 0, no log) is a no-op. */
void bench_worker_stop(struct bench_worker *w);

/* Starts two workers on free loopback ports in dir, w[0] (A) and w[1] (B),
 * each with --peers naming the other, --memory, --pull-threads, --threads
 * and --transport transport (NULL: none, the worker's default), and waits
 * until both answer. CLI_OK, or CLI_FAIL after printing one line (the
 * caller stops what was started). */
int bench_pair_start(struct bench_worker w[2], const char *dir, uint64_t memory,
                     uint64_t pull_threads, uint64_t threads,
                     const char *transport);

/* Waits until each of the two workers (clients cs, addresses addrs for
 * messages) sees the other with connections open. CLI_OK, or CLI_FAIL
 * after printing one line (silently when the bench was stopped). */
int bench_pair_wait_peered(kvds_client *const cs[2], const char *const addrs[2],
                           uint64_t deadline_ns);

/* c's worker's cluster status: *root (caller decrefs) and its "members"
 * array (borrowed from *root). 0, the request's error or KVDS_E_PROTO. */
int bench_cluster_members(kvds_client *c, json_t **root, json_t **members);

/* Creates a fresh directory parent/name.XXXXXX (mkdtemp) into out[cap].
 * CLI_OK, or one line printed, out = "" and CLI_FAIL. */
int bench_make_dir(const char *parent, const char *name, char *out, size_t cap);

/* Removes path and everything under it (symlinks are not followed). 0,
 * or -errno (-ENOTEMPTY: something under it could not be removed). Prints
 * nothing. */
int bench_remove_tree(const char *path);

/* ---- raw TCP ceiling (tcp.c) -------------------------------------------- */

#define BENCH_TCP_STREAMS_MAX 64
#define BENCH_TCP_IO_TIMEOUT_S 10 /* a stream stalled this long fails */

/* Raw TCP over loopback: stream i is a connection between a receiving
 * thread (asks for len bytes at src_off, receives them at dst_off) and a
 * sending thread (answers from the source buffer). A call posts the go
 * semaphore of the streams it uses only, so idle receivers stay asleep. */
struct bench_tcp;
struct bench_tcp_stream {
  struct bench_tcp *t;
  int sfd, rfd; /* the sender's and the receiver's ends */
  pthread_t sender, receiver;
  int have_sender, have_receiver, have_go;
  sem_t go;                       /* one post per call, or at quit */
  uint64_t len, src_off, dst_off; /* this call's transfer */
};

struct bench_tcp {
  pthread_mutex_t lock;
  pthread_cond_t done; /* on CLOCK_MONOTONIC */
  int ndone, err;      /* receivers finished with this call; first error */
  int quit;            /* written before the posts that wake for it */
  const uint8_t *src;
  uint8_t *dst;
  size_t region;
  int n; /* streams set up */
  struct bench_tcp_stream s[BENCH_TCP_STREAMS_MAX];
};

/* n (1..BENCH_TCP_STREAMS_MAX) connected loopback streams with their
 * threads over src and dst (region bytes each, borrowed until
 * bench_tcp_teardown). Every socket gets BENCH_TCP_IO_TIMEOUT_S send and
 * receive timeouts. 0, or -errno with nothing left set up. */
int bench_tcp_setup(struct bench_tcp *t, int n, const uint8_t *src,
                    uint8_t *dst, size_t region);

/* `calls` calls of per_call bytes each, walking span bytes of src/dst
 * (per_call <= span <= region) from *pos (0 for a fresh walk; *pos +
 * per_call <= span): each call moves on by per_call, back to 0 when the
 * next would pass span, and *pos is left where the next call starts, so
 * that runs taking turns with other work continue one walk. Each call's
 * bytes are split evenly over the first `streams`
 * streams (stream k moves bytes [per_call * k / streams, per_call * (k+1)
 * / streams) of it). *ns: time of all calls. 0, KVDS_E_TIMEOUT (a call did
 * not finish in 2 x BENCH_TCP_IO_TIMEOUT_S plus its bytes at 100 MB/s), or
 * a socket error. */
int bench_tcp_run(struct bench_tcp *t, int streams, size_t per_call,
                  size_t span, uint64_t calls, uint64_t *pos, uint64_t *ns);

/* Stops the threads and closes the streams. */
void bench_tcp_teardown(struct bench_tcp *t);

/* ---- UCX ceiling (ucxperf.c) ------------------------------------------- */

/* One ucp_get run of ucx_perftest (the executable exe) on loopback: a
 * server (`exe -p PORT -e`) and a client (`exe 127.0.0.1 -p PORT -t
 * ucp_get -s size -n iters -w max(iters / 10, outstanding) -O outstanding
 * -e`), children of the bench (bench_spawn) in its environment, their
 * output in dir (removed after). -e gives their endpoints error handling,
 * as the workers' have, so that UCX offers them the same transports.
 * CLI_OK with *gbps (the client's overall bandwidth, 10^9 B/s) and the
 * lanes its endpoint used into lanes[lcap] ("" when UCX did not say);
 * else CLI_FAIL with the reason in why[cap] ("" when the bench was
 * stopped). Prints nothing; both processes are gone when it returns. */
int bench_ucxperf_get(const char *exe, const char *dir, size_t size,
                      uint64_t outstanding, uint64_t iters, double *gbps,
                      char *lanes, size_t lcap, char *why, size_t cap);

/* ---- a timed case over client threads (peers.c) ----------------------- */

/* One point of `kvds bench peers`: `threads` client threads, each making
 * calls of `batch` values of `size` bytes from its own slice of src (or
 * into its slice of dst: region / threads bytes, >= batch * size). */
struct bench_case {
  size_t size, batch;
  int threads;
  uint64_t max_bytes; /* bounds the key rings of all threads together */
  double seconds;     /* timed calls per thread: at least this, >= 3 calls */
  const uint8_t *src;
  uint8_t *dst;
  size_t region;
};

struct bench_result {
  double gbps;    /* all threads' bytes / the longest thread's timed time */
  uint64_t calls; /* of all threads */
};

/* One call of thread t: its timed part's duration into *timed_ns (the
 * call may do untimed work besides). 0, or an error that ends the case. */
typedef int (*bench_call_fn)(void *ctx, int t, uint64_t *timed_ns);

/* Keys in each thread's ring: at most 64 MiB and max_bytes / threads of
 * values, a multiple of batch, at least one batch. */
size_t bench_case_slots(const struct bench_case *bc);

/* Where value i of thread t's call number `call` comes from: in t's slice
 * of src, the calls walking the slice (a source far larger than the
 * caches, as memcpy's). */
const uint8_t *bench_case_src(const struct bench_case *bc, int t, uint64_t call,
                              size_t i);

/* Runs fn on bc->threads threads (the caller's and bc->threads - 1 more)
 * started together, until each has made its timed calls (or 10 x seconds
 * + 2 s passed, still >= 3 calls), a call fails or the stop flag is set.
 * fn runs on several threads at once: it may only touch what belongs to
 * its thread t. 0 with *out; the first failing call's error; -EINTR when
 * stopped; -errno when a thread could not start. Prints nothing. */
int bench_case_run(const struct bench_case *bc, bench_call_fn fn, void *ctx,
                   struct bench_result *out);

/* ---- Redis (redis.c) ---------------------------------------------------- */

/* A redis-server started by the bench. Zero-initialise. */
struct bench_redis {
  pid_t pid;
  int port;
  char version[32];
  char log[PATH_MAX + 32];
};

/* Starts redis-server from $PATH on a free loopback port (no RDB, no AOF,
 * its files in dir) and waits until it answers. CLI_OK, or CLI_FAIL with
 * the reason in why[cap] (nothing printed; the caller stops it). */
int bench_redis_start(struct bench_redis *r, const char *dir, char *why,
                      size_t cap);

/* Stops it (SIGTERM, SIGKILL after 10 s) and removes its log. */
void bench_redis_stop(struct bench_redis *r);

/* One case against r: one hiredis connection per thread, one round trip
 * per call (MGET/MSET of the batch; GET/SET for one value); a get's
 * values are written first (untimed), and every key is dropped after
 * (FLUSHALL). CLI_OK with *out, or CLI_FAIL with the reason in why. */
int bench_redis_case(const struct bench_redis *r, const struct bench_case *bc,
                     int put, struct bench_result *out, char *why, size_t cap);

/* ---- options (opts.c) --------------------------------------------------- */

/* The long options every mode has, for its struct option table. */
#define BENCH_OPTS_COMMON                                                      \
  {"quick", no_argument, NULL, 'q'}, {"json", no_argument, NULL, 'j'}, {       \
    "help", no_argument, NULL, 'h'                                             \
  }

/* A getopt result c that the mode's own options did not take: --quick
 * (*quick = 1) and --json (*json = 1) give CLI_OK; --help prints the help
 * and gives -1; anything else is CLI_USAGE (getopt printed why). */
int bench_parse_common(int c, int *quick, int *json);

/* CLI_OK when no argument follows the options, else one line printed and
 * CLI_USAGE. */
int bench_parse_end(const char *mode, int argc, char **argv);

/* Parses opt's argument as a size ("64KiB"; when size is set) or a plain
 * integer in [lo, hi] into *out. Else prints one line and returns
 * CLI_USAGE (*out untouched). */
int bench_parse_u64_in(const char *opt, const char *arg, int size, uint64_t lo,
                       uint64_t hi, uint64_t *out);

/* The same for a decimal number (seconds). */
int bench_parse_double_in(const char *opt, const char *arg, double lo,
                          double hi, double *out);

/* Parses a comma-separated list of sizes (1..1GiB; when sizes is set) or
 * of batches (1..KVDS_BATCH_MAX), at most BENCH_LIST_MAX of them, into
 * out[0..*n). CLI_OK, or one line printed and CLI_USAGE (out and *n then
 * hold the values before the bad one). */
int bench_parse_list(const char *opt, const char *s, int sizes, uint64_t *out,
                     int *n);

/* ---- latency samples (samples.c) ---------------------------------------- */

/* Durations of timed calls. Zero-initialise; ns is malloc'd by
 * bench_samples_add and owned by the struct: free(s.ns) when done. n = 0
 * (and total_ns = 0) starts a new series in the same memory. */
struct bench_samples {
  uint64_t *ns;
  size_t n, cap;
  uint64_t total_ns; /* sum of ns[0..n) */
};

/* Appends one duration. 0 or -ENOMEM (s unchanged). */
int bench_samples_add(struct bench_samples *s, uint64_t ns);

/* Sorts the samples; *p50 and *p99 (optional) in microseconds (0 when
 * there are none). */
void bench_samples_p50_p99(struct bench_samples *s, double *p50, double *p99);

/* ---- keys (keys.c) ------------------------------------------------------ */

/* n keys "<prefix><tag>/<i>", i = 0..n-1: iov[i] points into buf. Owned by
 * the struct; zero-initialise, bench_keyset_free when done. */
struct bench_keyset {
  char *buf;
  struct kvds_iov *iov;
  size_t n;
};

/* Makes ks the n keys of prefix and tag (freeing what it held). 0, or
 * -ENOMEM with ks empty. */
int bench_keyset_make(struct bench_keyset *ks, const char *prefix,
                      const char *tag, size_t n);

/* Frees the keys; ks is empty (and can be made again) afterwards. */
void bench_keyset_free(struct bench_keyset *ks);

/* Deletes n keys on c's worker (its own copies only), KVDS_BATCH_MAX per
 * call; absent keys (say, evicted) are fine. 0 or the first other error. */
int bench_delete_keys(kvds_client *c, const struct kvds_iov *keys, size_t n);

/* Deletes whatever is left under prefix on c's worker (after an error or
 * an interrupt); errors are ignored. c may be NULL. */
void bench_sweep(kvds_client *c, const char *prefix);

/* ---- buffers (buffers.c) ------------------------------------------------ */

/* Two page-aligned buffers of region bytes, every page touched (the source
 * filled with non-zero bytes) so that no timing pays for page faults. The
 * caller frees both. 0 or -ENOMEM (nothing allocated). */
int bench_alloc_buffers(size_t region, uint8_t **src, uint8_t **dst);

/* ---- reports (report.c) ------------------------------------------------- */

/* v with about three significant digits (0.123, 1.23, 12.3, 123, 1234)
 * into buf. Returns buf. */
char *bench_fmt3(double v, char *buf, size_t cap);

/* A progress line "kvds bench <mode>: ..." on stderr (errors are "kvds
 * bench: ..." lines, cli_err). */
__attribute__((format(printf, 2, 3))) void bench_progress(const char *mode,
                                                          const char *fmt, ...);

/* Prints root as the bench's JSON document (indented, keys in insertion
 * order, 6 significant digits) and a newline on stdout, and releases root.
 * CLI_OK, or CLI_FAIL when it could not be written. */
int bench_print_json(json_t *root);

#endif
