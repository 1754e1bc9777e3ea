/*
 * test_cli — the kvds and dscli command lines against real workers:
 *  - kvds put/get/ls/stat/rm/status/stop round trips, binary data through
 *    stdin and stdout compared byte for byte, --force, --output, the
 *    DS_WORKER_ADDR default, exit codes (0 ok, 1 failure, 2 usage) and a
 *    single stderr line per failure (missing key, no worker running);
 *  - dscli start -w prints the documented success line with the worker's
 *    pid and the worker answers; a second start on the same address fails
 *    clearly with exit 1; with --etcd_address (a real etcd) the worker
 *    joins the cluster, a bad etcd address is a usage error; dscli stop -w
 *    stops it
 *    (the process is gone and exited 0);
 *  - kvds worker refuses bad flags (exit 2) and a port or socket another
 *    worker holds (exit 1) without disturbing it; dscli start on a port
 *    held by something else fails with one [ERROR] line;
 *  - kvds stop succeeds once the worker has exited, even before its parent
 *    reaped it;
 *  - kvds bench local and kvds bench remote produce well-formed reports
 *    (remote starts and stops its own pair of workers and leaves its
 *    $TMPDIR empty, also when a worker fails to start; with --transport
 *    ucx every row counts values read over UCX and carries ucx_perftest's
 *    ceiling or why there is none); kvds bench disk
 *    --quick prints every row (spill and read-back next to fio when fio is
 *    installed, DRAM-hit and disk-hit latency, per size) and leaves its
 *    --dir empty, also when its worker fails to start.
 * The test is a child subreaper, so the daemonized worker becomes its child:
 * it reaps it (as init would) and checks its exit status.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define CMD_TIMEOUT_MS 40000

struct res {
  int code; /* exit status, or -1 if killed */
  char out[1 << 20];
  size_t out_len;
  char err[8192];
  size_t err_len;
};

/* Runs prog (argv0 names it) with stdin `in`, capturing stdout/stderr. While
 * it runs, reaps `reap` (if > 0) into *reap_st. */
static void run_v(struct res *r, const char *prog, const void *in,
                  size_t in_len, pid_t reap, int *reap_st, char **argv) {
  int pin[2], pout[2], perr[2];
  KVH_CHECK(pipe2(pin, O_CLOEXEC) == 0 && pipe2(pout, O_CLOEXEC) == 0 &&
                pipe2(perr, O_CLOEXEC) == 0,
            "pipe: %s", strerror(errno));
  pid_t pid = kvh_fork();
  if (pid == 0) {
    dup2(pin[0], STDIN_FILENO);
    dup2(pout[1], STDOUT_FILENO);
    dup2(perr[1], STDERR_FILENO);
    execv(prog, argv);
    fprintf(stderr, "exec %s: %s\n", prog, strerror(errno));
    _exit(127);
  }
  close(pin[0]);
  close(pout[1]);
  close(perr[1]);
  fcntl(pin[1], F_SETFL, O_NONBLOCK);
  if (in_len == 0) {
    close(pin[1]);
    pin[1] = -1;
  }
  memset(r, 0, sizeof *r);
  size_t in_off = 0;
  int open_out = 1, open_err = 1, st = 0, exited = 0;
  uint64_t deadline = kvh_now_ms() + CMD_TIMEOUT_MS;
  while (open_out || open_err || !exited) {
    if (reap > 0 && *reap_st == -1) {
      int s;
      if (waitpid(reap, &s, WNOHANG) == reap)
        *reap_st = s;
    }
    if (!exited && waitpid(pid, &st, WNOHANG) == pid)
      exited = 1;
    if (kvh_now_ms() > deadline) {
      kill(pid, SIGKILL);
      KVH_CHECK(0, "'%s %s' still running after %d ms", argv[0],
                argv[1] ? argv[1] : "", CMD_TIMEOUT_MS);
    }
    struct pollfd pf[3];
    int n = 0;
    if (open_out)
      pf[n++] = (struct pollfd){.fd = pout[0], .events = POLLIN};
    if (open_err)
      pf[n++] = (struct pollfd){.fd = perr[0], .events = POLLIN};
    if (pin[1] >= 0)
      pf[n++] = (struct pollfd){.fd = pin[1], .events = POLLOUT};
    if (n == 0) {
      kvh_sleep_ms(2); /* outputs closed; polling for the exit status */
      continue;
    }
    if (poll(pf, (nfds_t)n, 10) <= 0)
      continue;
    for (int i = 0; i < n; i++) {
      if (!pf[i].revents)
        continue;
      if (pf[i].fd == pin[1]) {
        ssize_t w = write(pin[1], (const char *)in + in_off, in_len - in_off);
        if (w > 0)
          in_off += (size_t)w;
        if ((w < 0 && errno != EAGAIN) || in_off == in_len) {
          close(pin[1]);
          pin[1] = -1;
        }
        continue;
      }
      int is_out = pf[i].fd == pout[0];
      char *dst = is_out ? r->out + r->out_len : r->err + r->err_len;
      size_t room = is_out ? sizeof r->out - 1 - r->out_len
                           : sizeof r->err - 1 - r->err_len;
      KVH_CHECK(room > 0, "'%s' printed too much", argv[0]);
      ssize_t got = read(pf[i].fd, dst, room);
      if (got > 0) {
        *(is_out ? &r->out_len : &r->err_len) += (size_t)got;
      } else if (got == 0 || errno != EINTR) {
        close(pf[i].fd);
        *(is_out ? &open_out : &open_err) = 0;
      }
    }
  }
  if (pin[1] >= 0)
    close(pin[1]);
  r->out[r->out_len] = 0;
  r->err[r->err_len] = 0;
  r->code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char dscli_path[1024];

#define KVDS(r, in, inl, ...)                                                  \
  run_v(r, kvh_kvds_bin(), in, inl, 0, NULL,                                   \
        (char *[]){"kvds", __VA_ARGS__, NULL})
#define DSCLI(r, reap, reap_st, ...)                                           \
  run_v(r, dscli_path, NULL, 0, reap, reap_st,                                 \
        (char *[]){"dscli", __VA_ARGS__, NULL})

/* Exit code `code`, nothing on stdout, exactly one stderr line containing
 * `needle`. */
static void expect_fail(const struct res *r, int code, const char *needle,
                        const char *what) {
  const char *nl = strchr(r->err, '\n');
  KVH_CHECK(r->code == code, "%s: exit %d, want %d (stderr: %s)", what, r->code,
            code, r->err);
  KVH_CHECK(r->err_len > 1 && nl == r->err + r->err_len - 1,
            "%s: stderr is not one line: '%s'", what, r->err);
  KVH_CHECK(strstr(r->err, needle), "%s: stderr '%s' lacks '%s'", what, r->err,
            needle);
}

static void expect_ok(const struct res *r, const char *what) {
  KVH_CHECK(r->code == 0 && r->err_len == 0, "%s: exit %d, stderr '%s'", what,
            r->code, r->err);
}

static void write_file(const char *path, const void *data, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  KVH_CHECK(fd >= 0 && kvh_write_all(fd, data, len) == 0 && close(fd) == 0,
            "write %s: %s", path, strerror(errno));
}

static void expect_file(const char *path, const void *data, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  KVH_CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
  uint8_t *b = malloc(len + 1);
  KVH_CHECK(b && kvh_read_all(fd, b, len, 5000) == 0 &&
                read(fd, b + len, 1) == 0 && memcmp(b, data, len) == 0,
            "%s differs from what was put", path);
  close(fd);
  free(b);
}

static void kvds_commands(void) {
  static struct res r;
  struct kvh_worker w;
  kvh_worker_start(&w, "64MiB", NULL);
  char *A = w.addr;

  /* Binary data (every byte value, NULs included) through stdin. */
  size_t blen = 300001;
  uint8_t *bin = kvh_val_new("bin", 3, blen);
  for (size_t i = 0; i < 256; i++)
    bin[i] = (uint8_t)i;
  KVDS(&r, bin, blen, "put", "bin/one", "-", "--worker", A);
  expect_ok(&r, "put from stdin");
  KVH_CHECK(r.out_len == 0, "put printed '%s'", r.out);
  KVDS(&r, NULL, 0, "get", "bin/one", "--worker", A);
  expect_ok(&r, "get to stdout");
  KVH_CHECK(r.out_len == blen && memcmp(r.out, bin, blen) == 0,
            "get to stdout: %zu bytes back, %zu put, or they differ", r.out_len,
            blen);
  char path[600];
  snprintf(path, sizeof path, "%s/out.bin", kvh_run_dir());
  KVDS(&r, NULL, 0, "get", "bin/one", "-o", path, "--worker", w.tcp);
  expect_ok(&r, "get -o over tcp://");
  expect_file(path, bin, blen);

  /* Write-once, unless --force. */
  KVDS(&r, bin, 100, "put", "bin/one", "-", "--worker", A);
  expect_fail(&r, 1, "already exists", "put of an existing key");
  KVDS(&r, bin + 1000, 100, "put", "--force", "bin/one", "-", "--worker", A);
  expect_ok(&r, "put --force");
  KVDS(&r, NULL, 0, "get", "bin/one", "--worker", A);
  KVH_CHECK(r.code == 0 && r.out_len == 100 &&
                memcmp(r.out, bin + 1000, 100) == 0,
            "get after put --force");

  /* From a file. */
  snprintf(path, sizeof path, "%s/in.txt", kvh_run_dir());
  write_file(path, "hello, kvds\n", 12);
  KVDS(&r, NULL, 0, "put", "text/a", path, "--worker", A);
  expect_ok(&r, "put FILE");

  /* ls, with and without a prefix, and the DS_WORKER_ADDR default. */
  KVDS(&r, NULL, 0, "ls", "--worker", A);
  expect_ok(&r, "ls");
  KVH_CHECK(strstr(r.out, "bin/one") && strstr(r.out, "text/a") &&
                strchr(r.out, '\n') && strchr(strchr(r.out, '\n') + 1, '\n') &&
                !strchr(strchr(strchr(r.out, '\n') + 1, '\n') + 1, '\n'),
            "ls: '%s'", r.out);
  KVH_CHECK(strstr(r.out, "100") && strstr(r.out, "12") &&
                strstr(r.out, "sealed"),
            "ls lacks sizes/state: '%s'", r.out);
  setenv("DS_WORKER_ADDR", A, 1);
  KVDS(&r, NULL, 0, "ls", "text/");
  unsetenv("DS_WORKER_ADDR");
  expect_ok(&r, "ls PREFIX via DS_WORKER_ADDR");
  KVH_CHECK(strstr(r.out, "text/a") && !strstr(r.out, "bin/one") &&
                strchr(r.out, '\n') == r.out + r.out_len - 1,
            "ls text/: '%s'", r.out);

  /* An endless stream is refused once it passes the pool's size (64 MiB),
   * without growing the client's memory; a file that big, before reading
   * it; a file of 512 KiB goes straight into the object, also over TCP. */
  KVDS(&r, NULL, 0, "put", "zero", "/dev/zero", "--worker", A);
  expect_fail(&r, 1, "more than the worker's pool can hold", "put /dev/zero");
  char bigp[600];
  snprintf(bigp, sizeof bigp, "%s/big.bin", kvh_run_dir());
  {
    int fd = open(bigp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    KVH_CHECK(fd >= 0 && ftruncate(fd, 65 << 20) == 0, "big file: %s",
              strerror(errno));
    close(fd);
  }
  KVDS(&r, NULL, 0, "put", "big", bigp, "--worker", A);
  expect_fail(&r, 1, "more than the worker's pool can hold", "put of 65 MiB");
  uint8_t *mib = kvh_val_new("mib", 3, 512 << 10);
  write_file(bigp, mib, 512 << 10);
  KVDS(&r, NULL, 0, "put", "mib", bigp, "--worker", w.tcp);
  expect_ok(&r, "put of a 512 KiB file over TCP");
  KVDS(&r, NULL, 0, "get", "mib", "--worker", A);
  KVH_CHECK(r.code == 0 && r.out_len == (512u << 10) &&
                memcmp(r.out, mib, 512 << 10) == 0,
            "get of the 512 KiB file");
  free(mib);
  KVDS(&r, NULL, 0, "ls", "zero", "--worker", A);
  KVH_CHECK(r.code == 0 && !strstr(r.out, "zero"), "a refused put left '%s'",
            r.out);
  KVDS(&r, NULL, 0, "rm", "mib", "--worker", A);
  expect_ok(&r, "rm mib");

  /* A token file that is not there is named as such. */
  setenv("KVDS_AUTH_TOKEN_FILE", "/nonexistent/kvds.token", 1);
  KVDS(&r, NULL, 0, "ls", "--worker", w.tcp);
  unsetenv("KVDS_AUTH_TOKEN_FILE");
  expect_fail(&r, 1,
              "auth token file /nonexistent/kvds.token (KVDS_AUTH_TOKEN_FILE) "
              "cannot be read: No such file or directory",
              "a missing token file");

  /* stat shows the size, the state and the checksum. */
  KVDS(&r, NULL, 0, "stat", "bin/one", "--worker", A);
  expect_ok(&r, "stat");
  char sum[32];
  snprintf(sum, sizeof sum, "%016llx",
           (unsigned long long)kvds_checksum(bin + 1000, 100));
  KVH_CHECK(strstr(r.out, "100") && strstr(r.out, "sealed") &&
                strstr(r.out, sum),
            "stat lacks size/state/checksum %s: '%s'", sum, r.out);

  /* status, as text and as JSON. */
  KVDS(&r, NULL, 0, "status", "--worker", A);
  expect_ok(&r, "status");
  KVH_CHECK(strstr(r.out, "pool") && strstr(r.out, "objects"), "status: '%s'",
            r.out);
  KVDS(&r, NULL, 0, "status", "--json", "--worker", A);
  expect_ok(&r, "status --json");
  json_error_t je;
  json_t *j = json_loads(r.out, 0, &je);
  KVH_CHECK(j, "status --json is not JSON (%s): '%s'", je.text, r.out);
  kvds_client *c = kvh_connect(A);
  struct kvds_stats st;
  kvh_stats(c, &st);
  kvds_client_close(c);
  KVH_CHECK(json_integer_value(json_object_get(j, "pool_capacity")) ==
                    (json_int_t)st.pool_capacity &&
                json_integer_value(json_object_get(j, "objects")) == 2 &&
                json_integer_value(json_object_get(j, "pid")) ==
                    (json_int_t)w.pid,
            "status --json: wrong numbers: '%s'", r.out);
  json_decref(j);

  /* rm, then every read of the key fails with one line. */
  KVDS(&r, NULL, 0, "rm", "bin/one", "--worker", A);
  expect_ok(&r, "rm");
  KVDS(&r, NULL, 0, "get", "bin/one", "--worker", A);
  expect_fail(&r, 1, "not found", "get of a missing key");
  KVH_CHECK(r.out_len == 0, "get of a missing key printed to stdout");
  KVDS(&r, NULL, 0, "stat", "bin/one", "--worker", A);
  expect_fail(&r, 1, "not found", "stat of a missing key");
  KVDS(&r, NULL, 0, "rm", "bin/one", "--worker", A);
  expect_fail(&r, 1, "not found", "rm of a missing key");

  /* Usage errors exit 2. */
  KVDS(&r, NULL, 0, "get", "--worker", A);
  expect_fail(&r, 2, "kvds get", "get without a key");
  KVDS(&r, NULL, 0, "frobnicate");
  expect_fail(&r, 2, "frobnicate", "unknown command");
  KVDS(&r, NULL, 0, "ls", "--bogus");
  expect_fail(&r, 2, "--bogus", "unknown option");

  /* No worker there: one line naming the address, exit 1. */
  char none[64];
  snprintf(none, sizeof none, "127.0.0.1:%d", kvh_free_port());
  KVDS(&r, NULL, 0, "get", "x", "--worker", none);
  expect_fail(&r, 1, none, "get with no worker");
  KVDS(&r, NULL, 0, "status", "--worker", none);
  expect_fail(&r, 1, none, "status with no worker");
  KVDS(&r, "v", 1, "put", "x", "-", "--worker", none);
  expect_fail(&r, 1, none, "put with no worker");
  KVDS(&r, NULL, 0, "stop", "--worker", none);
  expect_fail(&r, 1, none, "stop with no worker");

  /* kvds stop: the worker exits cleanly (status 0). */
  int reaped = -1;
  char want[128];
  snprintf(want, sizeof want, "(pid %d)", (int)w.pid);
  run_v(&r, kvh_kvds_bin(), NULL, 0, w.pid, &reaped,
        (char *[]){"kvds", "stop", "--worker", A, NULL});
  expect_ok(&r, "stop");
  KVH_CHECK(strstr(r.out, want), "stop: '%s' lacks '%s'", r.out, want);
  if (reaped == -1)
    reaped = kvh_wait_pid(w.pid, 10000);
  kvh_worker_exited(&w, reaped);
  free(bin);
}

static void dscli_commands(void) {
  static struct res r;
  int port = kvh_free_port();
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  int none = -1;

  DSCLI(&r, 0, &none, "start", "-w", "--worker_address", addr, "--memory",
        "64MiB");
  KVH_CHECK(r.code == 0, "dscli start: exit %d, stderr '%s'", r.code, r.err);
  char prefix[160];
  snprintf(prefix, sizeof prefix,
           "[INFO] [  OK  ] Start worker service @ %s success, PID: ", addr);
  KVH_CHECK(strncmp(r.out, prefix, strlen(prefix)) == 0,
            "dscli start printed '%s'", r.out);
  char *end;
  long pid = strtol(r.out + strlen(prefix), &end, 10);
  KVH_CHECK(pid > 1 && strcmp(end, "\n") == 0, "dscli start printed '%s'",
            r.out);
  kvh_kill_on_fail((pid_t)pid);
  KVH_CHECK(kill((pid_t)pid, 0) == 0, "PID %ld is not running", pid);

  /* It answers, and is the process that was announced. */
  kvds_client *c = kvh_connect(addr);
  struct kvds_stats st;
  kvh_stats(c, &st);
  KVH_CHECK(st.pid == (uint64_t)pid, "worker pid %llu, announced %ld",
            (unsigned long long)st.pid, pid);
  KVH_CHECK(st.pool_capacity > 32u << 20 && st.pool_capacity <= 64u << 20,
            "--memory 64MiB gave a pool of %llu bytes",
            (unsigned long long)st.pool_capacity);
  KVH_OK(kvds_put(c, "dscli", 5, "ok", 2));
  kvds_client_close(c);

  /* A second start on the same address fails, exit 1, one clear line. */
  DSCLI(&r, 0, &none, "start", "-w", "--worker_address", addr, "--memory",
        "64MiB");
  expect_fail(&r, 1, "already running", "second dscli start");
  KVH_CHECK(strstr(r.err, "[ERROR]") && strstr(r.err, addr),
            "second start: '%s'", r.err);
  KVH_CHECK(kill((pid_t)pid, 0) == 0, "the first worker died");

  /* Cluster mode as in the seeds: dscli start -w --worker_address A
   * --etcd_address E starts a worker that joins through a real etcd; a bad
   * etcd address is a usage error and nothing starts. */
  int port3 = kvh_free_port();
  char addr3[64];
  snprintf(addr3, sizeof addr3, "127.0.0.1:%d", port3);
  DSCLI(&r, 0, &none, "start", "-w", "--worker_address", addr3,
        "--etcd_address", "https://127.0.0.1:2379", "--memory", "64MiB");
  expect_fail(&r, 2, "etcd", "start with an https etcd address");
  KVH_EXPECT_RC(kvds_client_connect(addr3, 1000, &c), -ECONNREFUSED);
  struct kvh_etcd etcd;
  kvh_etcd_start(&etcd);
  DSCLI(&r, 0, &none, "start", "-w", "--worker_address", addr3,
        "--etcd_address", etcd.addr, "--memory", "64MiB");
  KVH_CHECK(r.code == 0, "dscli start --etcd_address: exit %d, stderr '%s'",
            r.code, r.err);
  snprintf(prefix, sizeof prefix,
           "[INFO] [  OK  ] Start worker service @ %s success, PID: ", addr3);
  KVH_CHECK(strncmp(r.out, prefix, strlen(prefix)) == 0,
            "dscli start --etcd_address printed '%s'", r.out);
  long pid3 = strtol(r.out + strlen(prefix), &end, 10);
  KVH_CHECK(pid3 > 1, "dscli start printed '%s'", r.out);
  kvh_kill_on_fail((pid_t)pid3);
  c = kvh_connect(addr3);
  char *cl = NULL;
  uint64_t deadline = kvh_now_ms() + 10000;
  for (;;) {
    KVH_OK(kvds_cluster_status(c, &cl));
    if (strstr(cl, "\"mode\":\"etcd\"") && strstr(cl, "\"state\":\"up\"") &&
        strstr(cl, addr3))
      break;
    KVH_CHECK(kvh_now_ms() < deadline, "worker did not join etcd: %s", cl);
    free(cl);
    kvh_sleep_ms(50);
  }
  free(cl);
  kvds_client_close(c);
  int reaped3 = -1;
  DSCLI(&r, (pid_t)pid3, &reaped3, "stop", "-w", "--worker_address", addr3);
  KVH_CHECK(r.code == 0, "dscli stop (etcd worker): exit %d, err '%s'", r.code,
            r.err);
  if (reaped3 == -1)
    reaped3 = kvh_wait_pid((pid_t)pid3, 10000);
  kvh_kill_on_fail_cancel((pid_t)pid3);
  KVH_CHECK(WIFEXITED(reaped3) && WEXITSTATUS(reaped3) == 0,
            "etcd worker exit status 0x%x", reaped3);
  kvh_etcd_stop(&etcd);

  /* Stop: the worker exits 0 and is gone. */
  int reaped = -1;
  DSCLI(&r, (pid_t)pid, &reaped, "stop", "-w", "--worker_address", addr);
  KVH_CHECK(r.code == 0 && strstr(r.out, "Stop worker service") &&
                strstr(r.out, "success"),
            "dscli stop: exit %d, out '%s', err '%s'", r.code, r.out, r.err);
  if (reaped == -1) /* it had not exited yet when dscli returned */
    reaped = kvh_wait_pid((pid_t)pid, 10000);
  kvh_kill_on_fail_cancel((pid_t)pid);
  KVH_CHECK(WIFEXITED(reaped) && WEXITSTATUS(reaped) == 0,
            "the dscli-started worker ended with status 0x%x", reaped);
  KVH_CHECK(kill((pid_t)pid, 0) == -1 && errno == ESRCH, "pid %ld still there",
            pid);
  KVH_EXPECT_RC(kvds_client_connect(addr, 1000, &c), -ECONNREFUSED);

  DSCLI(&r, 0, &none, "stop", "-w", "--worker_address", addr);
  expect_fail(&r, 1, "no worker", "dscli stop with nothing running");
  DSCLI(&r, 0, &none, "start", "-w", "--worker_address", addr, "--memory",
        "lots");
  KVH_CHECK(r.code == 2 && strstr(r.err, "lots"),
            "dscli start --memory lots: exit %d, '%s'", r.code, r.err);
  KVH_EXPECT_RC(kvds_client_connect(addr, 1000, &c), -ECONNREFUSED);
}

/* `kvds worker` refuses bad flags (exit 2, one line naming the flag) and
 * an address or socket that another worker holds (exit 1), leaving that
 * worker untouched; dscli start on a port something else listens on fails
 * clearly. */
static void worker_start_errors(void) {
  static struct res r;
  struct kvh_worker w;
  kvh_worker_start(&w, "8MiB", NULL);
  char free_addr[64];
  snprintf(free_addr, sizeof free_addr, "127.0.0.1:%d", kvh_free_port());
  static const struct {
    const char *flag, *value, *needle;
  } bad[] = {
      {"--memory", "100", "--memory"},
      {"--memory", "lots", "--memory"},
      {"--threads", "0", "--threads"},
      {"--eviction_ratio", "0.95", "eviction"},
      {"--eviction_high_watermark_ratio", "1.5", "eviction_high_watermark"},
      {"--listen", "no-port", "--listen"},
      {"--http-port", "70000", "--http-port"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const char *listen = strcmp(bad[i].flag, "--listen") ? free_addr : "";
    if (*listen)
      KVDS(&r, NULL, 0, "worker", "--listen", free_addr, "--memory", "8MiB",
           (char *)bad[i].flag, (char *)bad[i].value);
    else
      KVDS(&r, NULL, 0, "worker", "--memory", "8MiB", (char *)bad[i].flag,
           (char *)bad[i].value);
    char what[128];
    snprintf(what, sizeof what, "kvds worker %s %s", bad[i].flag, bad[i].value);
    expect_fail(&r, 2, bad[i].needle, what);
  }
  /* More memory than the machine has: refused before reserving any. */
  KVDS(&r, NULL, 0, "worker", "--listen", free_addr, "--memory", "64TiB");
  expect_fail(&r, 1, "available", "kvds worker --memory 64TiB");
  /* The TCP address is taken. */
  KVDS(&r, NULL, 0, "worker", "--listen", w.addr, "--memory", "8MiB");
  expect_fail(&r, 1, w.addr, "second worker on a busy port");
  /* The Unix socket is taken (another TCP port, same --socket). */
  KVDS(&r, NULL, 0, "worker", "--listen", free_addr, "--socket", w.sock,
       "--memory", "8MiB");
  expect_fail(&r, 1, "another worker", "second worker on a busy socket");
  kvds_client *c = kvh_connect(w.addr);
  KVH_CHECK(kvds_client_is_local(c), "the first worker lost its socket");
  KVH_OK(kvds_ping(c));
  kvds_client_close(c);
  kvh_worker_stop(&w);

  /* dscli start where a non-kvds listener holds the port. */
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  KVH_CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
                listen(fd, 8) == 0 &&
                getsockname(fd, (struct sockaddr *)&sa, &sl) == 0,
            "listener: %s", strerror(errno));
  char busy[64];
  snprintf(busy, sizeof busy, "127.0.0.1:%d", ntohs(sa.sin_port));
  int none = -1;
  DSCLI(&r, 0, &none, "start", "-w", "--worker_address", busy, "--memory",
        "8MiB");
  expect_fail(&r, 1, "[ERROR] Start worker service",
              "dscli start on a busy "
              "port");
  KVH_CHECK(strstr(r.err, busy), "dscli start on a busy port: '%s'", r.err);
  close(fd);
}

/* `kvds stop` must see that the worker exited even while its parent has
 * not reaped it yet (a zombie: e.g. under a container's init that never
 * reaps, or a supervisor that is busy). Here the test is that parent and
 * deliberately waits until the command returns. */
static void stop_zombie(void) {
  static struct res r;
  struct kvh_worker w;
  kvh_worker_start(&w, "8MiB", NULL);
  KVDS(&r, NULL, 0, "stop", "--timeout", "3", "--worker", w.addr);
  int st = kvh_wait_pid(w.pid, 10000);
  kvh_worker_exited(&w, st);
  KVH_CHECK(r.code == 0 && strstr(r.out, "stopped worker"),
            "kvds stop of a worker that exited but is not reaped yet: exit "
            "%d, stderr '%s'",
            r.code, r.err);
}

/* `kvds bench local --json` against a real worker: a well-formed report with
 * a row per size x batch x operation, memcpy ceilings measured, every call
 * succeeding, and the pool left as it was found. No speed is asserted. */
static void bench_smoke(void) {
  static struct res r;
  struct kvh_worker w;
  kvh_worker_start(&w, "64MiB", NULL);
  kvds_client *c = kvh_connect(w.addr);
  KVH_OK(kvds_put(c, "keep", 4, "kept", 4));
  struct kvds_stats before, after;
  kvh_stats(c, &before);
  KVDS(&r, NULL, 0, "bench", "local", "--worker", w.addr, "--json", "--sizes",
       "4KiB,64KiB", "--batch", "1,4", "--seconds", "0.15");
  KVH_CHECK(r.code == 0, "bench exited %d: %s", r.code, r.err);
  json_error_t je;
  json_t *j = json_loads(r.out, 0, &je);
  KVH_CHECK(j, "bench --json is not JSON: %s", je.text);
  KVH_CHECK(json_is_true(json_object_get(j, "shared_memory")),
            "bench did not use shared memory");
  json_t *mem = json_object_get(j, "memcpy"),
         *cases = json_object_get(j, "cases");
  KVH_CHECK(json_array_size(mem) == 2, "memcpy rows: %zu",
            json_array_size(mem));
  /* 2 sizes x 2 batches x 3 operations */
  KVH_CHECK(json_array_size(cases) == 12, "bench rows: %zu",
            json_array_size(cases));
  size_t i;
  json_t *row;
  json_array_foreach(cases, i, row) {
    const char *op = json_string_value(json_object_get(row, "op"));
    KVH_CHECK(op, "row %zu has no op (skipped?)", i);
    KVH_CHECK(json_real_value(json_object_get(row, "gbps")) > 0 &&
                  json_real_value(json_object_get(row, "memcpy_gbps")) > 0 &&
                  json_integer_value(json_object_get(row, "calls")) > 0,
              "row %zu (%s): no measurement", i, op);
  }
  KVH_CHECK(json_real_value(json_object_get(json_object_get(j, "exists"),
                                            "keys_per_s")) > 0,
            "no exists figure");
  json_decref(j);
  kvh_stats(c, &after);
  KVH_CHECK(
      after.objects == before.objects && after.pool_used == before.pool_used,
      "bench left %llu objects / %llu bytes (before %llu / %llu)",
      (unsigned long long)after.objects, (unsigned long long)after.pool_used,
      (unsigned long long)before.objects, (unsigned long long)before.pool_used);
  uint8_t present = 0;
  KVH_OK(kvds_exists(c, 1, &(struct kvds_iov){"keep", 4}, &present));
  KVH_CHECK(present, "bench removed a key it did not write");
  kvds_client_close(c);
  kvh_worker_stop(&w);
}

/* A fresh empty directory under the test's run directory (for $TMPDIR). */
static void fresh_dir(char *path, size_t cap, const char *name) {
  snprintf(path, cap, "%s/%s", kvh_run_dir(), name);
  KVH_CHECK(mkdir(path, 0700) == 0, "mkdir %s: %s", path, strerror(errno));
}

/* Entries in path besides . and .. (-1 if it cannot be read). */
static int dir_entries(const char *path, char *first, size_t cap) {
  DIR *d = opendir(path);
  if (!d)
    return -1;
  int n = 0;
  struct dirent *e;
  first[0] = 0;
  while ((e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && n++ == 0)
      snprintf(first, cap, "%s", e->d_name);
  closedir(d);
  return n;
}

static void expect_empty_dir(const char *path, const char *what) {
  char first[256];
  int n = dir_entries(path, first, sizeof first);
  KVH_CHECK(n == 0, "%s: %s holds %d entries (first: %s)", what, path, n,
            first);
}

/* `kvds bench remote --quick --json`: the bench starts its own pair of
 * peered workers in a fresh directory under $TMPDIR, reports every size x
 * batch (measured ones with at least the 3 calls the bench guarantees, the
 * bytes they read, the bytes B pulled equal to them, the streams B uses,
 * p50 <= p99 and a ratio that is kvds over raw TCP) and the lookup
 * latencies (at least 100 calls each), and stops its workers: nothing
 * answers at their addresses afterwards and $TMPDIR is empty again. A
 * worker that fails to start (a pool below the minimum) fails the bench
 * with exit 1 and one stderr line, and leaves $TMPDIR empty too. No speed
 * is asserted. */
static void bench_remote_smoke(void) {
  static struct res r;
  char tmp[1200];
  fresh_dir(tmp, sizeof tmp, "bench-remote-fail");
  setenv("TMPDIR", tmp, 1);
  KVDS(&r, NULL, 0, "bench", "remote", "--quick", "--memory", "1KiB");
  /* progress lines, then exactly one error line */
  KVH_CHECK(r.code == 1, "bench remote with a 1 KiB pool: exit %d (%s)", r.code,
            r.err);
  int errors = 0;
  for (const char *l = r.err; *l;) {
    const char *nl = strchr(l, '\n');
    size_t len = nl ? (size_t)(nl - l) : strlen(l);
    if (strncmp(l, "kvds bench remote: ", 19) != 0) {
      errors++;
      KVH_CHECK(memmem(l, len, "while starting", 14),
                "bench remote with a 1 KiB pool: unexpected line '%.*s'",
                (int)len, l);
    }
    l += len + (nl != NULL);
  }
  KVH_CHECK(errors == 1, "bench remote with a 1 KiB pool: %d error lines: %s",
            errors, r.err);
  KVH_CHECK(r.out_len == 0, "bench remote with a 1 KiB pool printed '%s'",
            r.out);
  expect_empty_dir(tmp, "bench remote with a 1 KiB pool");

  fresh_dir(tmp, sizeof tmp, "bench-remote");
  setenv("TMPDIR", tmp, 1);
  KVDS(&r, NULL, 0, "bench", "remote", "--quick", "--json", "--sizes",
       "256KiB,1MiB", "--batch", "1,8", "--memory", "128MiB");
  unsetenv("TMPDIR");
  KVH_CHECK(r.code == 0, "bench remote exited %d: %s", r.code, r.err);
  expect_empty_dir(tmp, "bench remote");
  json_error_t je;
  json_t *j = json_loads(r.out, 0, &je);
  KVH_CHECK(j, "bench remote --json is not JSON: %s", je.text);
  KVH_CHECK(json_is_true(json_object_get(j, "started")) &&
                json_is_true(json_object_get(j, "shared_memory")),
            "bench remote did not start workers or use shared memory");
  json_int_t pulls = json_integer_value(json_object_get(j, "pull_threads"));
  KVH_CHECK(pulls == 4, "bench remote pull_threads %lld", (long long)pulls);
  json_t *reads = json_object_get(j, "reads");
  /* 2 sizes x 2 batches with a hint, 2 batches through the directory */
  KVH_CHECK(json_array_size(reads) == 6, "bench remote rows: %zu",
            json_array_size(reads));
  size_t i;
  json_t *row;
  json_array_foreach(reads, i, row) {
    KVH_CHECK(!json_object_get(row, "skipped"), "row %zu skipped", i);
    json_int_t size = json_integer_value(json_object_get(row, "size"));
    json_int_t batch = json_integer_value(json_object_get(row, "batch"));
    json_int_t calls = json_integer_value(json_object_get(row, "calls"));
    json_int_t bytes = json_integer_value(json_object_get(row, "bytes"));
    json_int_t streams = json_integer_value(json_object_get(row, "streams"));
    json_int_t want_streams = (batch + 3) / 4 < pulls ? (batch + 3) / 4 : pulls;
    KVH_CHECK(
        calls >= 3 && size > 0 && batch > 0 && bytes == calls * size * batch,
        "row %zu: %lld calls of %lld x %lld B but %lld bytes", i,
        (long long)calls, (long long)batch, (long long)size, (long long)bytes);
    KVH_CHECK(streams == want_streams, "row %zu: %lld streams, want %lld", i,
              (long long)streams, (long long)want_streams);
    KVH_CHECK(
        json_integer_value(json_object_get(row, "pulled_bytes")) == bytes,
        "row %zu: B pulled %lld bytes for %lld read", i,
        (long long)json_integer_value(json_object_get(row, "pulled_bytes")),
        (long long)bytes);
    double gbps = json_real_value(json_object_get(row, "gbps"));
    double tcp = json_real_value(json_object_get(row, "tcp_gbps"));
    double ratio = json_real_value(json_object_get(row, "ratio"));
    double p50 = json_real_value(json_object_get(row, "p50_us"));
    double p99 = json_real_value(json_object_get(row, "p99_us"));
    double q = tcp > 0 ? gbps / tcp : 0; /* the JSON keeps 6 digits */
    KVH_CHECK(q > 0 && ratio >= q * (1 - 1e-4) && ratio <= q * (1 + 1e-4),
              "row %zu: ratio %g is not %g / %g", i, ratio, gbps, tcp);
    KVH_CHECK(p50 > 0 && p50 <= p99, "row %zu: p50 %g us, p99 %g us", i, p50,
              p99);
  }
  json_t *lk = json_object_get(j, "lookup");
  const char *names[] = {"exists_remote", "exists_local", "prefix_remote",
                         "prefix_local"};
  for (i = 0; i < 4; i++) {
    json_t *l = json_object_get(lk, names[i]);
    json_int_t calls = json_integer_value(json_object_get(l, "calls"));
    double p50 = json_real_value(json_object_get(l, "p50_us"));
    double p99 = json_real_value(json_object_get(l, "p99_us"));
    KVH_CHECK(calls >= 100 && p50 > 0 && p50 <= p99,
              "%s latency: %lld calls, p50 %g us, p99 %g us", names[i],
              (long long)calls, p50, p99);
  }
  const char *addrs[] = {json_string_value(json_object_get(j, "worker_a")),
                         json_string_value(json_object_get(j, "worker_b"))};
  for (i = 0; i < 2; i++) {
    KVH_CHECK(addrs[i], "no worker address in the report");
    kvds_client *c;
    int rc = kvds_client_connect(addrs[i], 1000, &c);
    if (rc == 0)
      kvds_client_close(c);
    KVH_CHECK(rc == -ECONNREFUSED,
              "worker %s still answers after the bench "
              "(%s)",
              addrs[i], kvds_strerror(rc));
  }
  json_decref(j);

  /* Two client threads reading values that B pulls in ranges: every
   * pulled byte counted once, raw TCP over all pull threads' streams. */
  setenv("TMPDIR", tmp, 1);
  KVDS(&r, NULL, 0, "bench", "remote", "--quick", "--json", "--sizes", "4MiB",
       "--batch", "1", "--clients", "2", "--memory", "128MiB");
  unsetenv("TMPDIR");
  KVH_CHECK(r.code == 0, "bench remote --clients 2 exited %d: %s", r.code,
            r.err);
  expect_empty_dir(tmp, "bench remote --clients 2");
  j = json_loads(r.out, 0, &je);
  KVH_CHECK(j, "bench remote --clients 2 --json is not JSON: %s", je.text);
  KVH_CHECK(json_integer_value(json_object_get(j, "clients")) == 2,
            "bench remote --clients 2: no clients: 2 in the report");
  reads = json_object_get(j, "reads");
  KVH_CHECK(json_array_size(reads) == 2, "bench remote --clients 2 rows: %zu",
            json_array_size(reads));
  row = json_array_get(reads, 0);
  json_int_t calls = json_integer_value(json_object_get(row, "calls"));
  json_int_t bytes = json_integer_value(json_object_get(row, "bytes"));
  KVH_CHECK(calls >= 6 && bytes == calls * (4 << 20),
            "--clients 2: %lld calls, %lld bytes", (long long)calls,
            (long long)bytes);
  KVH_CHECK(json_integer_value(json_object_get(row, "pulled_bytes")) == bytes,
            "--clients 2: B pulled %lld bytes for %lld read",
            (long long)json_integer_value(json_object_get(row, "pulled_bytes")),
            (long long)bytes);
  KVH_CHECK(json_integer_value(json_object_get(row, "streams")) == pulls,
            "--clients 2, 4 MiB values: %lld streams, want %lld",
            (long long)json_integer_value(json_object_get(row, "streams")),
            (long long)pulls);
  json_decref(j);
}

/* The line of text that starts with `start` and has `word` after it, or
 * NULL. */
static const char *find_row(const char *text, const char *start,
                            const char *word) {
  size_t n = strlen(start);
  for (const char *l = text; *l;) {
    const char *nl = strchr(l, '\n');
    size_t len = nl ? (size_t)(nl - l) : strlen(l);
    if (len > n && strncmp(l, start, n) == 0 &&
        memmem(l, len, word, strlen(word)))
      return l;
    l += len + (nl != NULL);
  }
  return NULL;
}

/* `kvds bench remote --transport ucx`, with UCX_TLS=tcp (on a host
 * without RDMA, the one UCX transport that reports a dead peer, which the
 * workers ask of every endpoint): the JSON report says ucx, B's UCX_TLS
 * and the lanes of its endpoint to A; every row counts values that came
 * over UCX (0 < ucx_in <= calls x batch) and B pulled the bytes it read;
 * its ceiling is either ucx_perftest's bandwidth (> 0, ratio = gbps
 * over it) or the reason there is none (ratio null). With ucx_perftest out of
 * $PATH the text report says so above the table and still prints every row, its
 * ceiling and ratio '-', and its viaUCX count. $TMPDIR is empty afterwards. No
 * speed is asserted. A kvds built without UCX: the bench refuses with the
 * reason (checked), the rest is skipped. */
static void bench_remote_ucx_smoke(void) {
  static struct res r;
  char tmp[1200], *path = getenv("PATH");
  char saved_path[4096];
  snprintf(saved_path, sizeof saved_path, "%s", path ? path : "/usr/bin:/bin");
  const char *tls = getenv("UCX_TLS");
  char saved_tls[256] = "";
  if (tls)
    snprintf(saved_tls, sizeof saved_tls, "%s", tls);
  setenv("UCX_TLS", "tcp", 1);
  /* loopback, and listeners out of the ephemeral ports other tests take */
  setenv("UCX_NET_DEVICES", "lo", 1);
  setenv("UCX_TCP_PORT_RANGE", "20000-29999", 1);
  fresh_dir(tmp, sizeof tmp, "bench-remote-ucx");
  setenv("TMPDIR", tmp, 1);
  KVDS(&r, NULL, 0, "bench", "remote", "--quick", "--json", "--transport",
       "ucx", "--sizes", "256KiB", "--batch", "1,8", "--dir-size", "64KiB",
       "--memory", "128MiB");
  unsetenv("TMPDIR");
  expect_empty_dir(tmp, "bench remote --transport ucx");
  if (r.code != 0 && strstr(r.err, "built without UCX")) {
    fprintf(stderr, "test_cli: kvds built without UCX: bench remote "
                    "--transport ucx refused as it should; rest skipped\n");
    goto out;
  }
  KVH_CHECK(r.code == 0, "bench remote --transport ucx exited %d: %s", r.code,
            r.err);
  json_error_t je;
  json_t *j = json_loads(r.out, 0, &je);
  KVH_CHECK(j, "bench remote --transport ucx --json is not JSON: %s", je.text);
  const char *tr = json_string_value(json_object_get(j, "transport"));
  const char *jt = json_string_value(json_object_get(j, "ucx_tls"));
  const char *lanes = json_string_value(json_object_get(j, "ucx_lanes"));
  KVH_CHECK(tr && strcmp(tr, "ucx") == 0 && jt && strcmp(jt, "tcp") == 0,
            "--transport ucx report: transport %s, ucx_tls %s", tr ? tr : "-",
            jt ? jt : "-");
  KVH_CHECK(lanes && strstr(lanes, "tcp"), "B's UCX lanes: '%s'",
            lanes ? lanes : "(none)");
  json_t *reads = json_object_get(j, "reads");
  /* 1 size x 2 batches with a hint, 2 batches through the directory */
  KVH_CHECK(json_array_size(reads) == 4, "--transport ucx rows: %zu",
            json_array_size(reads));
  size_t i;
  json_t *row;
  json_array_foreach(reads, i, row) {
    KVH_CHECK(!json_object_get(row, "skipped"), "ucx row %zu skipped", i);
    json_int_t calls = json_integer_value(json_object_get(row, "calls"));
    json_int_t batch = json_integer_value(json_object_get(row, "batch"));
    json_int_t bytes = json_integer_value(json_object_get(row, "bytes"));
    json_int_t values = json_integer_value(json_object_get(row, "values"));
    json_int_t ucx_in = json_integer_value(json_object_get(row, "ucx_in"));
    KVH_CHECK(calls >= 3 && values == calls * batch,
              "ucx row %zu: %lld calls x %lld but %lld values", i,
              (long long)calls, (long long)batch, (long long)values);
    KVH_CHECK(ucx_in > 0 && ucx_in <= values,
              "ucx row %zu: %lld of %lld values came over UCX", i,
              (long long)ucx_in, (long long)values);
    KVH_CHECK(
        json_integer_value(json_object_get(row, "pulled_bytes")) == bytes,
        "ucx row %zu: B pulled %lld bytes for %lld read", i,
        (long long)json_integer_value(json_object_get(row, "pulled_bytes")),
        (long long)bytes);
    double gbps = json_real_value(json_object_get(row, "gbps"));
    json_t *perf = json_object_get(row, "ucx_perftest_gbps");
    json_t *ratio = json_object_get(row, "ratio");
    const char *skip =
        json_string_value(json_object_get(row, "ucx_perftest_skipped"));
    KVH_CHECK(!perf != !skip, "ucx row %zu: ceiling %s, skip reason %s", i,
              perf ? "present" : "absent", skip ? skip : "absent");
    if (perf) {
      double pg = json_real_value(perf), q = gbps / pg;
      double rv = json_real_value(ratio);
      KVH_CHECK(pg > 0 && json_is_real(ratio) && rv >= q * (1 - 1e-4) &&
                    rv <= q * (1 + 1e-4),
                "ucx row %zu: ratio %g is not %g / %g", i, rv, gbps, pg);
    } else {
      KVH_CHECK(*skip && json_is_null(ratio),
                "ucx row %zu: skipped ceiling without a reason, or a ratio", i);
    }
  }
  json_decref(j);

  /* ucx_perftest not in $PATH: kvds figures and viaUCX still, '-' else */
  fresh_dir(tmp, sizeof tmp, "bench-remote-ucx-noperf");
  setenv("TMPDIR", tmp, 1);
  setenv("PATH", "/nonexistent", 1);
  KVDS(&r, NULL, 0, "bench", "remote", "--quick", "--transport", "ucx",
       "--sizes", "256KiB", "--batch", "4", "--dir-size", "64KiB", "--memory",
       "128MiB");
  setenv("PATH", saved_path, 1);
  unsetenv("TMPDIR");
  KVH_CHECK(r.code == 0,
            "bench remote --transport ucx, no ucx_perftest: "
            "exited %d: %s",
            r.code, r.err);
  expect_empty_dir(tmp, "bench remote --transport ucx, no ucx_perftest");
  KVH_CHECK(strstr(r.out, "ucxperf: skipped: ucx_perftest not found in $PATH"),
            "no skip line for a missing ucx_perftest: %s", r.out);
  KVH_CHECK(strstr(r.out, "UCX_TLS=tcp") && !strstr(r.out, "!! "),
            "no UCX_TLS, or a warning, in: %s", r.out);
  const char *vias[] = {"hint ", "directory "};
  for (i = 0; i < 2; i++) {
    const char *l = find_row(r.out, vias[i], "KiB");
    KVH_CHECK(l, "bench remote --transport ucx: no %srow: %s", vias[i], r.out);
    char via[16], num[16], unit[16], g[16], tg[16], perf[16], q[16], p50[16],
        p99[16];
    unsigned long long batch, calls, over;
    int streams;
    int n = sscanf(l,
                   "%15s %15s %15s %llu %d %15s %15s %15s %15s %15s %15s "
                   "%llu %llu",
                   via, num, unit, &batch, &streams, g, tg, perf, q, p50, p99,
                   &calls, &over);
    KVH_CHECK(n == 13 && strtod(g, NULL) > 0 && strcmp(perf, "-") == 0 &&
                  strcmp(q, "-") == 0 && over > 0 && over <= calls * batch,
              "bench remote --transport ucx row: %.160s", l);
  }
out:
  unsetenv("UCX_NET_DEVICES");
  unsetenv("UCX_TCP_PORT_RANGE");
  if (saved_tls[0])
    setenv("UCX_TLS", saved_tls, 1);
  else
    unsetenv("UCX_TLS");
}

/* 1 when `path` is an executable in $PATH. */
static int in_path(const char *name) {
  char buf[1024];
  const char *p = getenv("PATH");
  while (p && *p) {
    const char *e = strchr(p, ':');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    snprintf(buf, sizeof buf, "%.*s/%s", (int)len, p, name);
    if (access(buf, X_OK) == 0)
      return 1;
    p += len + (e != NULL);
  }
  return 0;
}

/* `kvds bench disk --quick`: the bench starts a worker with the disk tier
 * per size in a fresh directory under --dir, and prints for each size a
 * spill and a read-back row with a kvds figure (and fio's and the ratio
 * when fio is installed, else a skip note) and a DRAM-hit and a disk-hit
 * latency row, then removes everything it wrote: --dir is empty again. A
 * worker that fails to start (a pool below the minimum) fails the bench
 * with exit 1 and one error line, nothing on stdout, --dir empty. No speed
 * is asserted. */
static void bench_disk_smoke(void) {
  static struct res r;
  char dir[1200];
  fresh_dir(dir, sizeof dir, "bench-disk-fail");
  KVDS(&r, NULL, 0, "bench", "disk", "--dir", dir, "--memory", "2KiB",
       "--sizes", "256");
  KVH_CHECK(r.code == 1, "bench disk with a 2 KiB pool: exit %d (%s)", r.code,
            r.err);
  int errors = 0;
  for (const char *l = r.err; *l;) {
    const char *nl = strchr(l, '\n');
    size_t len = nl ? (size_t)(nl - l) : strlen(l);
    if (strncmp(l, "kvds bench disk: ", 17) != 0) {
      errors++;
      KVH_CHECK(memmem(l, len, "while starting", 14),
                "bench disk with a 2 KiB pool: unexpected line '%.*s'",
                (int)len, l);
    }
    l += len + (nl != NULL);
  }
  KVH_CHECK(errors == 1, "bench disk with a 2 KiB pool: %d error lines: %s",
            errors, r.err);
  KVH_CHECK(r.out_len == 0, "bench disk with a 2 KiB pool printed '%s'", r.out);
  expect_empty_dir(dir, "bench disk with a 2 KiB pool");

  fresh_dir(dir, sizeof dir, "bench-disk");
  KVDS(&r, NULL, 0, "bench", "disk", "--quick", "--dir", dir);
  KVH_CHECK(r.code == 0, "bench disk --quick exited %d: %s", r.code, r.err);
  expect_empty_dir(dir, "bench disk");
  int fio = in_path("fio");
  KVH_CHECK(strstr(r.out, fio ? "fio: fio-" : "fio: skipped"),
            "bench disk: no fio line (fio %s): %s",
            fio ? "installed" : "missing", r.out);
  const char *sizes[] = {"1.0 MiB", "4.0 MiB"};
  const char *phases[] = {"spill", "read-back"};
  for (int i = 0; i < 2; i++) {
    for (int p = 0; p < 2; p++) {
      const char *row = find_row(r.out, sizes[i], phases[p]);
      KVH_CHECK(row, "bench disk: no %s row for %s: %s", phases[p], sizes[i],
                r.out);
      char size[16], unit[16], phase[16], kv[16], fg[16], ratio[16];
      double mib = 0;
      int n = sscanf(row, "%15s %15s %15s %lf %15s %15s %15s", size, unit,
                     phase, &mib, kv, fg, ratio);
      KVH_CHECK(n == 7 && mib > 0 && strtod(kv, NULL) > 0,
                "bench disk: %s %s row without figures: %.120s", sizes[i],
                phases[p], row);
      KVH_CHECK(fio ? strtod(fg, NULL) > 0 && strtod(ratio, NULL) > 0
                    : strcmp(fg, "-") == 0,
                "bench disk: %s %s row: fio column '%s' ratio '%s' (fio %s)",
                sizes[i], phases[p], fg, ratio, fio ? "installed" : "missing");
    }
    KVH_CHECK(find_row(r.out, "DRAM hit", sizes[i]) &&
                  find_row(r.out, "disk hit", sizes[i]),
              "bench disk: no latency rows for %s: %s", sizes[i], r.out);
  }
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "cli");
  /* Orphans (the daemonized worker) are re-parented to us, not to an init
   * that may never reap them. */
  KVH_CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "subreaper: %s",
            strerror(errno));
  char dir[1024];
  snprintf(dir, sizeof dir, "%s", kvh_kvds_bin());
  snprintf(dscli_path, sizeof dscli_path, "%s/dscli", dirname(dir));
  KVH_CHECK(access(dscli_path, X_OK) == 0, "%s: %s", dscli_path,
            strerror(errno));
  kvds_commands();
  dscli_commands();
  worker_start_errors();
  stop_zombie();
  bench_smoke();
  bench_remote_smoke();
  bench_remote_ucx_smoke();
  bench_disk_smoke();
  return kvh_finish();
}
