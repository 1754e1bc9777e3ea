/*
 * cli.h — private to the kvds command-line front end (src/cli/).
 *
 * Every command is `int cmd_x(int argc, char **argv)` where argv[0] is the
 * command name; it returns the process exit status: 0 ok, 1 failure,
 * 2 usage error. Commands print results on stdout and exactly one line per
 * error on stderr, "kvds <cmd>: <what went wrong>".
 */
#ifndef KVDS_CLI_H
#define KVDS_CLI_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "kvds/kvds.h"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Connect and I/O timeout for the short commands (ms). */
#define CLI_TIMEOUT_MS 5000

/* ---- Commands (cmd_*.c, bench/bench.c) ----------------------------------- */

int cmd_worker(int argc, char **argv);
int cmd_stop(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_put(int argc, char **argv);
int cmd_get(int argc, char **argv);
int cmd_ls(int argc, char **argv);
int cmd_stat(int argc, char **argv);
int cmd_rm(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_proxy(int argc, char **argv);
/* The `dscli` front (argv[0] is "dscli"). */
int dscli_main(int argc, char **argv);

/* ---- Helpers (cli_util.c) ----------------------------------------------- */

/* Prints "kvds <cmd>: <message>\n" on stderr. */
void cli_err(const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * getopt_long() with our error reporting: unknown options and missing
 * arguments print one line and return '?'. Resets getopt's state when
 * *first is set (and clears it).
 */
int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
               const struct option *longopts, int *first);

/* The worker address: `flag` if non-NULL, else $DS_WORKER_ADDR, else
 * 127.0.0.1:31501. */
const char *cli_worker_addr(const char *flag);

/*
 * Connects to the worker at `addr` with KVDS_CONNECT_* `flags` (short
 * commands pass KVDS_CONNECT_LAZY_MAP). On failure prints one line naming
 * the address and returns CLI_FAIL. `via` (optional, vcap bytes) receives
 * the transport in words ("Unix socket, shared memory", "TCP").
 */
int cli_connect(const char *cmd, const char *addr, unsigned flags,
                kvds_client **out, char *via, size_t vcap);

/* Same without printing; returns 0 or the connect error. */
int cli_try_connect(const char *addr, int timeout_ms, unsigned flags,
                    kvds_client **out, char *via, size_t vcap);

/*
 * Asks the worker at addr to shut down and waits (up to timeout_ms) until it
 * no longer answers and, for a loopback address, its process is gone.
 * *pid (optional) gets the worker's pid. Returns 0, -ECONNREFUSED (or
 * another connect error) when nothing answers there, KVDS_E_TIMEOUT when it
 * is still up at the deadline, or the shutdown request's error.
 */
int cli_stop_worker(const char *addr, int timeout_ms, uint64_t *pid);

/* Writes key bytes with non-printable bytes (and '\') escaped as \xNN. */
void cli_print_key(FILE *f, const void *key, size_t klen);
/* The same into buf (truncated with "..." past cap). Returns buf. */
char *cli_fmt_key(const void *key, size_t klen, char *buf, size_t cap);

/* Formats CLOCK_REALTIME microseconds as ISO 8601 UTC
 * ("2024-05-01T12:00:00.123Z"). Returns buf. */
char *cli_fmt_time_us(uint64_t us, char *buf, size_t cap);

/* Reads fd to EOF into a malloc'd *buf (*len bytes), but stops with
 * KVDS_E_TOOBIG (freeing what it read) as soon as more than limit bytes
 * came: a stream cannot grow memory without bound. Returns 0 or -errno. */
int cli_read_capped(int fd, uint64_t limit, uint8_t **buf, size_t *len);
/* Writes all of buf to fd, retrying short writes. Returns 0 or -errno. */
int cli_write_all(int fd, const void *buf, size_t len);

/* Parses a size ("4KiB") or prints "kvds <cmd>: bad size for --opt: 'x'
 * (use e.g. 4096, 64KiB, 1MiB, 4GiB)" and returns CLI_USAGE. */
int cli_parse_size_opt(const char *cmd, const char *opt, const char *s,
                       uint64_t *out);
/* Parses a non-negative integer option, else prints and returns CLI_USAGE. */
int cli_parse_u64_opt(const char *cmd, const char *opt, const char *s,
                      uint64_t *out);
/* Parses a non-negative decimal (seconds, ratios). */
int cli_parse_double_opt(const char *cmd, const char *opt, const char *s,
                         double *out);

/* ---- The worker's config file (worker_file.c) --------------------------- */

/* Sets option `val` (a struct option's val) to `value` (NULL for an option
 * without argument) as the command line would; errors are printed as
 * cli_err(who, ...), where `who` names the command, file and key. Returns
 * CLI_OK or CLI_USAGE. */
typedef int (*cli_option_fn)(void *arg, int val, const char *value,
                             const char *who);

/*
 * Reads `path`, a JSON object of options (docs/tiers.md "Configuration"):
 * each key is a long option of `longopts` ("disk-dir" or "disk_dir"), its
 * value the option's argument (a string or a number; true/false for an
 * option without argument), or one of UCM's names (store_pipeline,
 * storage_backends, cache_buffer_capacity_gb) for --tier, --disk-dir,
 * --memory. Calls set() for each, in the file's order. A file that cannot
 * be read or parsed (line and column named), an unknown key, a value of
 * the wrong type, two keys for one option, or set() failing: one line on
 * stderr naming the file (and key), CLI_USAGE. Returns CLI_OK otherwise.
 */
int cli_worker_file_load(const char *path, const struct option *longopts,
                         cli_option_fn set, void *arg);

/* 1 if addr is a Unix socket path or the host of its "host:port" is
 * loopback (kvds_host_is_loopback: every address it resolves to). */
int cli_addr_is_loopback(const char *addr);

/* The last non-empty line written to the log at path after offset `from`
 * (0: the whole file; only its last 4 KiB are read), without a leading
 * "kvds worker [LEVEL] " tag, into out (cap bytes; "" when there is none).
 * Returns out. */
char *cli_log_tail(const char *path, off_t from, char *out, size_t cap);

#endif
