/*
 * bench.h — private to `kvds bench` (src/cli/bench/): what its benchmarks
 * share. One file per benchmark, one per shared piece:
 *
 *   bench.c    cmd_bench: the mode dispatch, the help text, the modes
 *              written in Python (connector, ttft), the stop flag, this
 *              binary's path
 *   local.c    `kvds bench local`: put / get against a running worker next
 *              to memcpy
 *   remote.c   `kvds bench remote`: reads pulled across two workers next
 *              to raw loopback TCP
 *   disk.c     `kvds bench disk`: the disk tier's spill and read-back next
 *              to fio, and disk-hit vs DRAM-hit latency
 *   workers.c  workers a bench starts itself, and its temporary
 *              directories
 *   opts.c     ranged option values and --sizes / --batch lists
 *   samples.c  per-call latency samples and their percentiles
 *   keys.c     generated key sets, and deleting keys on a worker
 *   buffers.c  the source and destination buffers of the timed copies
 *   report.c   number formatting and the JSON report
 *
 * The benches are clients of kvds.h, with cli.h and common/util.h (clock,
 * byte formatting) besides. Everything here is called from the main
 * thread only (the raw-TCP threads of remote.c use none of it). Errors are
 * printed as one line "kvds bench: ..." (cli_err) by the function that
 * knows the most about them: the helpers below that print say so, the
 * others return the error and print nothing.
 */
#ifndef KVDS_CLI_BENCH_H
#define KVDS_CLI_BENCH_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>

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

/* ---- process (bench.c) -------------------------------------------------- */

/* Prints the help of every mode (`kvds bench --help`) on stdout. */
void bench_print_help(void);

/* From now on SIGINT and SIGTERM set the stop flag instead of ending the
 * process: the benches check it between calls, clean up and exit with
 * 128 + the signal. */
void bench_catch_signals(void);

/* The signal that stopped the bench, or 0. */
int bench_stopped(void);

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

/* Starts `<this binary> worker --listen 127.0.0.1:<w->port> ARGS...` (args:
 * NULL-terminated, borrowed until the call returns), plus
 * --auth-token-file $KVDS_AUTH_TOKEN_FILE when that is set, with
 * KVDS_RUN_DIR=dir (its Unix socket goes there) and its output in
 * dir/worker-<port>.log (w->log). The child gets its own process group (a
 * terminal's ^C reaches the bench, which stops the worker in order) and
 * dies with the bench. 0, or -errno (-E2BIG: too many args) with nothing
 * started. Prints nothing. */
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

/* Creates a fresh directory parent/name.XXXXXX (mkdtemp) into out[cap].
 * CLI_OK, or one line printed, out = "" and CLI_FAIL. */
int bench_make_dir(const char *parent, const char *name, char *out, size_t cap);

/* Removes path and everything under it (symlinks are not followed). 0,
 * or -errno (-ENOTEMPTY: something under it could not be removed). Prints
 * nothing. */
int bench_remove_tree(const char *path);

/* ---- options (opts.c) --------------------------------------------------- */

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

/* Prints root as the bench's JSON document (indented, keys in insertion
 * order, 6 significant digits) and a newline on stdout, and releases root.
 * CLI_OK, or CLI_FAIL when it could not be written. */
int bench_print_json(json_t *root);

#endif
