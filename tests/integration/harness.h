/*
 * harness.h — the integration tests' harness: runs a real `kvds worker` on a
 * free loopback port with a private $KVDS_RUN_DIR, forks client processes,
 * and derives every value from its key so that any process can verify any
 * value byte for byte.
 *
 * Failure model: KVH_CHECK() prints "FAIL file:line: message". In the test's
 * main process it then prints the tail of every live worker's log, kills
 * those workers and exits 1; in a forked child it exits 1 (the parent checks
 * every child's exit status). Workers and children get PR_SET_PDEATHSIG, so
 * nothing outlives a test that dies.
 *
 * Every wait in here is bounded; the harness never sleeps to synchronise
 * with a peer, only between polls of a condition it then checks.
 */
#ifndef KVDS_TEST_HARNESS_H
#define KVDS_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kvds/kvds.h"
#include "proto/proto.h"

struct kvh_worker {
  pid_t pid;           /* 0 once stopped */
  int port;            /* TCP port on 127.0.0.1 */
  char addr[64];       /* "127.0.0.1:PORT": upgrades to unix + shm */
  char tcp[80];        /* "tcp://127.0.0.1:PORT": values inline */
  char sock[400];      /* the worker's Unix socket path */
  char unix_addr[420]; /* "unix:" + sock */
  char log[400];       /* the worker's stdout + stderr */
};

/* Reads the kvds binary (argv[1], else $KVDS_BIN), makes the private run
 * directory, sets KVDS_RUN_DIR and unsets DS_WORKER_ADDR. Call first. */
void kvh_init(int argc, char **argv, const char *test_name);
/* Stops live workers (checking their exit status), removes the run
 * directory, prints "PASS name (N ms)" and returns 0 for main's return. */
int kvh_finish(void);

const char *kvh_kvds_bin(void);
const char *kvh_run_dir(void);

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int kvh_free_port(void);

/*
 * Starts `kvds worker --listen 127.0.0.1:PORT --memory memory <extra...>`
 * (extra: NULL-terminated list, may be NULL) and waits (<= 20 s) until a
 * client can connect and ping it. Fails the test if it does not.
 */
void kvh_worker_start(struct kvh_worker *w, const char *memory,
                      const char *const *extra);
/* The same on a given port (e.g. to restart a worker where one died). */
void kvh_worker_start_port(struct kvh_worker *w, int port, const char *memory,
                           const char *const *extra);
/* With set = 1, the workers started from now on run as uid:gid, with
 * `also` as their only supplementary group ((gid_t)-1: none) and this
 * umask (the test must be root, and the run directory reachable by that
 * user); set = 0 goes back to this process's user. */
void kvh_worker_run_as(int set, uid_t uid, gid_t gid, gid_t also, mode_t umask);
/* SIGKILL and reap, without judging the exit (the worker is meant to die). */
void kvh_worker_kill9(struct kvh_worker *w);
/* SIGTERM, then waits (bounded; SIGKILL after the deadline) and fails the
 * test unless the worker exited with status 0. */
void kvh_worker_stop(struct kvh_worker *w);
/* For a worker told to stop by other means (kvds stop, a SHUTDOWN request):
 * waits up to timeout_ms for it to exit and fails the test unless it exited
 * with status 0. */
void kvh_worker_reap(struct kvh_worker *w, int timeout_ms);
/* For a worker whose exit status the test collected itself (waitpid):
 * fails the test unless it is a clean exit (status 0, socket removed). */
void kvh_worker_exited(struct kvh_worker *w, int wait_status);
/* Prints the last `bytes` of the worker's log to stderr. */
void kvh_worker_dump_log(const struct kvh_worker *w, size_t bytes);

/* ---- etcd ---------------------------------------------------------------- */

/* A real single-member etcd ($KVDS_ETCD_BIN, else /usr/bin/etcd) on free
 * loopback ports, its data directory and log in the run directory. */
struct kvh_etcd {
  pid_t pid;     /* 0 while stopped */
  int port;      /* client port on 127.0.0.1 */
  int peer_port; /* peer port on 127.0.0.1 */
  char addr[64]; /* "127.0.0.1:PORT" */
  char dir[400]; /* --data-dir */
  char log[400]; /* its stdout + stderr */
};

/* Starts etcd on fresh ports and waits (<= 20 s) until /health answers
 * true. It is SIGKILLed if the test fails. */
void kvh_etcd_start(struct kvh_etcd *e);
/* Starts a stopped etcd again on the same ports and data directory. */
void kvh_etcd_restart(struct kvh_etcd *e);
/* SIGKILL and reap (a crash; the data directory stays). */
void kvh_etcd_kill9(struct kvh_etcd *e);
/* Removes the data directory of a stopped etcd: the next restart is a new,
 * empty etcd on the same address (revisions start over). */
void kvh_etcd_wipe(struct kvh_etcd *e);
/* SIGTERM, then waits (bounded; SIGKILL after 10 s) and reaps. */
void kvh_etcd_stop(struct kvh_etcd *e);
/* Prints the last `bytes` of its log to stderr. */
void kvh_etcd_dump_log(const struct kvh_etcd *e, size_t bytes);

/* kvds_client_connect or fail the test. */
kvds_client *kvh_connect(const char *addr);
/* kvds_stats or fail the test. */
void kvh_stats(kvds_client *c, struct kvds_stats *st);

/* Forks a child that dies with this process (PR_SET_PDEATHSIG). Returns the
 * pid in the parent, 0 in the child; fails the test if fork fails. */
pid_t kvh_fork(void);
/* Waits up to timeout_ms for pid (SIGKILL after it) and returns its raw wait
 * status; fails the test on timeout. */
int kvh_wait_pid(pid_t pid, int timeout_ms);
/* As kvh_wait_pid, and fails unless the child exited with status 0. */
void kvh_wait_child_ok(pid_t pid, int timeout_ms, const char *what);

/* Also SIGKILL pid if the test fails (for processes that are not our
 * children, such as a worker that daemonized). 0 removes nothing. */
void kvh_kill_on_fail(pid_t pid);
void kvh_kill_on_fail_cancel(pid_t pid);

/* Pipes between forked processes. kvh_send_byte writes one byte;
 * kvh_recv_byte reads one (<= timeout_ms) and returns it, or -1 on EOF and
 * -2 on timeout. */
void kvh_send_byte(int fd, uint8_t b);
int kvh_recv_byte(int fd, int timeout_ms);
/* Writes / reads exactly len bytes (bounded by timeout_ms); 0 or -1. */
int kvh_write_all(int fd, const void *buf, size_t len);
int kvh_read_all(int fd, void *buf, size_t len, int timeout_ms);

/* Raw stream sockets to a worker (blocking, CLOEXEC), for tests that speak
 * the wire format themselves. Fail the test if the connect fails. */
int kvh_raw_tcp(int port);
int kvh_raw_unix(const char *path);
/* Opens a raw TCP connection and sends a PUT frame for `key` announcing
 * `size` bytes of data, then only the first `sent` of them (0x5a bytes):
 * a client stopped in the middle of a put. Returns the socket. */
int kvh_raw_partial_put(int port, const char *key, uint64_t size,
                        uint64_t sent);
/* Reads into buf[0..cap) until EOF (or a connection reset) within
 * timeout_ms; *len gets the bytes read (extra bytes past cap are dropped).
 * Returns 0 at EOF, -1 on timeout. */
int kvh_read_to_eof(int fd, void *buf, size_t cap, size_t *len, int timeout_ms);
/* 1 once the worker closed fd (EOF or reset), reading (and dropping)
 * whatever it sent before; 0 while it is open. Never blocks. */
int kvh_peer_closed(int fd);
/* Reads one reply frame from fd within timeout_ms: its header into *h and,
 * if body is not NULL, meta + data into a malloc'd *body (<= 1 MiB).
 * Returns 0, or -1 if the worker closed the connection; fails the test on
 * a timeout or a malformed header. */
int kvh_read_reply(int fd, struct kvds_proto_hdr *h, uint8_t **body,
                   int timeout_ms);

/* ---- hand-made frames ----------------------------------------------------
 * For tests that speak the wire format themselves (hostile bytes, frames
 * the client library never sends). kvh_frame_init starts a request frame,
 * kvh_frame_item appends an item (fails the test if the buffer is full),
 * kvh_frame_seal encodes the header (meta_len from the items unless the
 * caller preset h.meta_len) and its checksum, kvh_frame_data appends n
 * bytes of 0x77 after the meta (the data part; h.data_len is the caller's
 * to set before sealing). */
struct kvh_frame {
  uint8_t b[16384];
  size_t len;
  struct kvds_proto_hdr h;
};

void kvh_frame_init(struct kvh_frame *f, uint8_t op, uint64_t req_id);
void kvh_frame_item(struct kvh_frame *f, uint64_t a, const void *key,
                    size_t klen);
void kvh_frame_seal(struct kvh_frame *f);
void kvh_frame_data(struct kvh_frame *f, size_t n);

/* Monotonic milliseconds. */
uint64_t kvh_now_ms(void);
/* For polling loops only (the condition is then checked, never assumed). */
void kvh_sleep_ms(int ms);

/* ---- values derived from keys ------------------------------------------- */

/* Size of the value of `key`: 1..max_size, skewed towards small (one key in
 * eight gets the whole range). */
size_t kvh_val_size(const void *key, size_t klen, size_t max_size);
/* Fills buf[0..len) with the byte stream derived from key. */
void kvh_val_fill(const void *key, size_t klen, void *buf, size_t len);
/* 1 iff data[0..len) is exactly the value of key with the given size. */
int kvh_val_ok(const void *key, size_t klen, size_t want_len, const void *data,
               size_t len);
/* Fresh malloc'd value of key (len bytes). */
void *kvh_val_new(const void *key, size_t klen, size_t len);

/* A small deterministic PRNG for test decisions (splitmix64). */
uint64_t kvh_rand(uint64_t *state);

/* ---- checks ------------------------------------------------------------- */

void kvh_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

#define KVH_CHECK(cond, ...)                                                   \
  do {                                                                         \
    if (!(cond))                                                               \
      kvh_fail(__FILE__, __LINE__, __VA_ARGS__);                               \
  } while (0)

/* Checks that an API call returned `want` (codes printed by name). */
#define KVH_EXPECT_RC(expr, want)                                              \
  do {                                                                         \
    int kvh_rc_ = (expr);                                                      \
    int kvh_want_ = (want);                                                    \
    if (kvh_rc_ != kvh_want_)                                                  \
      kvh_fail(__FILE__, __LINE__, "%s returned %s (%d), want %s", #expr,      \
               kvds_err_name(kvh_rc_), kvh_rc_, kvds_err_name(kvh_want_));     \
  } while (0)
#define KVH_OK(expr) KVH_EXPECT_RC(expr, 0)

#endif
