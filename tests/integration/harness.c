/* harness.c — see harness.h. */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto.h"

#define MAX_WORKERS 8
#define START_TIMEOUT_MS 20000
#define STOP_TIMEOUT_MS 20000

/* The harness's own bookkeeping (one test process). */
static struct {
  const char *bin;
  const char *name;
  char dir[256];
  pid_t main_pid;
  uint64_t t0;
  struct kvh_worker *live[MAX_WORKERS];
  pid_t kill_on_fail[MAX_WORKERS];
} H;

uint64_t kvh_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void kvh_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
    ;
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static void remove_dir(void) {
  if (H.dir[0])
    nftw(H.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void dump_file(const char *path, const char *what, int port,
                      size_t bytes) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return;
  struct stat st;
  off_t from = 0;
  if (fstat(fd, &st) == 0 && (size_t)st.st_size > bytes)
    from = st.st_size - (off_t)bytes;
  char buf[4096];
  ssize_t r;
  fprintf(stderr, "---- %s log %s (port %d, tail) ----\n", what, path, port);
  while ((r = pread(fd, buf, sizeof buf, from)) > 0) {
    fwrite(buf, 1, (size_t)r, stderr);
    from += r;
  }
  fprintf(stderr, "---- end of %s log ----\n", what);
  close(fd);
}

void kvh_worker_dump_log(const struct kvh_worker *w, size_t bytes) {
  dump_file(w->log, "worker", w->port, bytes);
}

void kvh_fail(const char *file, int line, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  int child = getpid() != H.main_pid;
  fprintf(stderr, "FAIL %s:%d: %s%s\n", file, line, msg,
          child ? " (in a child process)" : "");
  fflush(stderr);
  if (child)
    _exit(1);
  for (int i = 0; i < MAX_WORKERS; i++) {
    struct kvh_worker *w = H.live[i];
    if (!w)
      continue;
    /* A worker that is dying (sanitizer report, crash): let it finish, so
     * its log is complete and its end can be told. */
    int st, gone = 0;
    for (int t = 0; t < 50 && !gone; t++) {
      gone = waitpid(w->pid, &st, WNOHANG) == w->pid;
      if (!gone)
        kvh_sleep_ms(10);
    }
    kvh_worker_dump_log(w, 6000);
    if (gone && WIFSIGNALED(st))
      fprintf(stderr, "worker (port %d) had died of signal %d\n", w->port,
              WTERMSIG(st));
    else if (gone)
      fprintf(stderr, "worker (port %d) had exited with status %d\n", w->port,
              WEXITSTATUS(st));
    if (!gone) {
      kill(w->pid, SIGKILL);
      waitpid(w->pid, NULL, 0);
    }
  }
  for (int i = 0; i < MAX_WORKERS; i++)
    if (H.kill_on_fail[i] > 0)
      kill(H.kill_on_fail[i], SIGKILL);
  remove_dir();
  fflush(NULL);
  _exit(1); /* no atexit work (leak reports) for a test cut short */
}

void kvh_kill_on_fail(pid_t pid) {
  for (int i = 0; i < MAX_WORKERS; i++)
    if (H.kill_on_fail[i] <= 0) {
      H.kill_on_fail[i] = pid;
      return;
    }
}

void kvh_kill_on_fail_cancel(pid_t pid) {
  for (int i = 0; i < MAX_WORKERS; i++)
    if (H.kill_on_fail[i] == pid)
      H.kill_on_fail[i] = 0;
}

void kvh_init(int argc, char **argv, const char *test_name) {
  H.name = test_name;
  H.main_pid = getpid();
  H.t0 = kvh_now_ms();
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  H.bin = argc > 1 ? argv[1] : getenv("KVDS_BIN");
  KVH_CHECK(H.bin && access(H.bin, X_OK) == 0,
            "usage: %s PATH-TO-kvds (or set KVDS_BIN); got '%s'", argv[0],
            H.bin ? H.bin : "(none)");
  const char *tmp = getenv("TMPDIR");
  snprintf(H.dir, sizeof H.dir, "%s/kvds-it-%s-XXXXXX",
           tmp && *tmp && strlen(tmp) < 120 ? tmp : "/tmp", test_name);
  KVH_CHECK(mkdtemp(H.dir), "mkdtemp %s: %s", H.dir, strerror(errno));
  setenv("KVDS_RUN_DIR", H.dir, 1);
  unsetenv("DS_WORKER_ADDR");
}

const char *kvh_kvds_bin(void) {
  return H.bin;
}
const char *kvh_run_dir(void) {
  return H.dir;
}

int kvh_finish(void) {
  for (int i = 0; i < MAX_WORKERS; i++)
    if (H.live[i])
      kvh_worker_stop(H.live[i]);
  remove_dir();
  printf("PASS %s (%llu ms)\n", H.name,
         (unsigned long long)(kvh_now_ms() - H.t0));
  return 0;
}

int kvh_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  KVH_CHECK(fd >= 0, "socket: %s", strerror(errno));
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t l = sizeof sa;
  KVH_CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
                getsockname(fd, (struct sockaddr *)&sa, &l) == 0,
            "bind port 0: %s", strerror(errno));
  close(fd);
  return ntohs(sa.sin_port);
}

pid_t kvh_fork(void) {
  fflush(stdout);
  fflush(stderr);
  pid_t parent = getpid();
  pid_t pid = fork();
  KVH_CHECK(pid >= 0, "fork: %s", strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) /* the parent died before prctl */
      _exit(1);
  }
  return pid;
}

/* Starts bin with argv, stdin from /dev/null and stdout/stderr appended to
 * log; returns the child's pid (a process of the harness: kvh_fork). */
/* Who the next workers run as (kvh_worker_run_as). */
static struct {
  int set;
  uid_t uid;
  gid_t gid, also;
  mode_t umask;
} as_user;

void kvh_worker_run_as(int set, uid_t uid, gid_t gid, gid_t also, mode_t mask) {
  as_user.set = set;
  as_user.uid = uid;
  as_user.gid = gid;
  as_user.also = also;
  as_user.umask = mask;
}

static pid_t spawn_logged(const char *bin, const char *const *argv,
                          const char *log) {
  int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  KVH_CHECK(logfd >= 0, "open %s: %s", log, strerror(errno));
  int as = as_user.set && strcmp(argv[1] ? argv[1] : "", "worker") == 0;
  pid_t pid = kvh_fork();
  if (pid == 0) {
    if (as) {
      umask(as_user.umask);
      gid_t also = as_user.also;
      if (setgroups(also == (gid_t)-1 ? 0 : 1, &also) || setgid(as_user.gid) ||
          setuid(as_user.uid)) {
        fprintf(stderr, "run as %u:%u: %s\n", (unsigned)as_user.uid,
                (unsigned)as_user.gid, strerror(errno));
        _exit(126);
      }
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0)
      dup2(devnull, STDIN_FILENO);
    dup2(logfd, STDOUT_FILENO);
    dup2(logfd, STDERR_FILENO);
    execv(bin, (char *const *)argv);
    fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
    _exit(127);
  }
  close(logfd);
  return pid;
}

int kvh_wait_pid(pid_t pid, int timeout_ms) {
  uint64_t deadline = kvh_now_ms() + (uint64_t)timeout_ms;
  int status;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid)
      return status;
    KVH_CHECK(r == 0 || errno == EINTR, "waitpid %d: %s", (int)pid,
              strerror(errno));
    if (kvh_now_ms() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      KVH_CHECK(0, "process %d still running after %d ms (killed)", (int)pid,
                timeout_ms);
    }
    kvh_sleep_ms(5);
  }
}

void kvh_wait_child_ok(pid_t pid, int timeout_ms, const char *what) {
  int st = kvh_wait_pid(pid, timeout_ms);
  KVH_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s (pid %d) %s %d", what,
            (int)pid,
            WIFEXITED(st) ? "exited with status" : "was killed by signal",
            WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

void kvh_send_byte(int fd, uint8_t b) {
  KVH_CHECK(kvh_write_all(fd, &b, 1) == 0, "pipe write: %s", strerror(errno));
}

int kvh_write_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len) {
    ssize_t w = write(fd, p, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

int kvh_read_all(int fd, void *buf, size_t len, int timeout_ms) {
  uint64_t deadline = kvh_now_ms() + (uint64_t)timeout_ms;
  uint8_t *p = buf;
  while (len) {
    uint64_t now = kvh_now_ms();
    if (now >= deadline)
      return -1;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int n = poll(&pf, 1, (int)(deadline - now));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    ssize_t r = read(fd, p, len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

int kvh_recv_byte(int fd, int timeout_ms) {
  uint64_t deadline = kvh_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    uint64_t now = kvh_now_ms();
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int n = poll(&pf, 1, now >= deadline ? 0 : (int)(deadline - now));
    if (n < 0 && errno == EINTR)
      continue;
    if (n == 0)
      return -2;
    uint8_t b;
    ssize_t r = read(fd, &b, 1);
    if (r < 0 && errno == EINTR)
      continue;
    return r == 1 ? b : -1;
  }
}

int kvh_raw_tcp(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  KVH_CHECK(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0,
            "connect 127.0.0.1:%d: %s", port, strerror(errno));
  return fd;
}

int kvh_raw_unix(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  KVH_CHECK(strlen(path) < sizeof sa.sun_path, "socket path too long");
  memcpy(sa.sun_path, path, strlen(path) + 1);
  KVH_CHECK(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0,
            "connect %s: %s", path, strerror(errno));
  return fd;
}

int kvh_read_to_eof(int fd, void *buf, size_t cap, size_t *len,
                    int timeout_ms) {
  uint64_t deadline = kvh_now_ms() + (uint64_t)timeout_ms;
  uint8_t scratch[4096];
  *len = 0;
  for (;;) {
    uint64_t now = kvh_now_ms();
    if (now >= deadline)
      return -1;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int n = poll(&pf, 1, (int)(deadline - now));
    if (n < 0 && errno == EINTR)
      continue;
    if (n == 0)
      return -1;
    uint8_t *dst = *len < cap ? (uint8_t *)buf + *len : scratch;
    size_t room = *len < cap ? cap - *len : sizeof scratch;
    ssize_t r = recv(fd, dst, room, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r == 0 || (r < 0 && errno == ECONNRESET))
      return 0;
    KVH_CHECK(r > 0, "recv: %s", strerror(errno));
    if (*len < cap)
      *len += (size_t)r;
  }
}

/* ---- worker ------------------------------------------------------------- */

kvds_client *kvh_connect(const char *addr) {
  kvds_client *c = NULL;
  int rc = kvds_client_connect(addr, 5000, &c);
  KVH_CHECK(rc == 0, "connect %s: %s", addr, kvds_err_name(rc));
  return c;
}

void kvh_stats(kvds_client *c, struct kvds_stats *st) {
  int rc = kvds_stats(c, st);
  KVH_CHECK(rc == 0, "kvds_stats: %s (%s)", kvds_err_name(rc),
            kvds_client_errmsg(c));
}

void kvh_worker_start(struct kvh_worker *w, const char *memory,
                      const char *const *extra) {
  kvh_worker_start_port(w, kvh_free_port(), memory, extra);
}

void kvh_worker_kill9(struct kvh_worker *w) {
  if (!w->pid)
    return;
  kill(w->pid, SIGKILL);
  waitpid(w->pid, NULL, 0);
  w->pid = 0;
  for (int i = 0; i < MAX_WORKERS; i++)
    if (H.live[i] == w)
      H.live[i] = NULL;
}

void kvh_worker_start_port(struct kvh_worker *w, int port, const char *memory,
                           const char *const *extra) {
  memset(w, 0, sizeof *w);
  int slot = -1;
  for (int i = 0; i < MAX_WORKERS && slot < 0; i++)
    if (!H.live[i])
      slot = i;
  KVH_CHECK(slot >= 0, "too many workers");
  w->port = port;
  snprintf(w->addr, sizeof w->addr, "127.0.0.1:%d", w->port);
  snprintf(w->tcp, sizeof w->tcp, "tcp://127.0.0.1:%d", w->port);
  snprintf(w->sock, sizeof w->sock, "%s/kvds-%d.sock", H.dir, w->port);
  snprintf(w->unix_addr, sizeof w->unix_addr, "unix:%s", w->sock);
  snprintf(w->log, sizeof w->log, "%s/worker-%d.log", H.dir, w->port);

  const char *argv[64];
  int n = 0;
  argv[n++] = "kvds";
  argv[n++] = "worker";
  argv[n++] = "--listen";
  argv[n++] = w->addr;
  argv[n++] = "--memory";
  argv[n++] = memory;
  for (int i = 0; extra && extra[i] && n < 62; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;

  pid_t pid = spawn_logged(H.bin, argv, w->log);
  w->pid = pid;
  H.live[slot] = w;

  /* Ready when a client gets an answer (bounded; fails fast if it died). */
  uint64_t deadline = kvh_now_ms() + START_TIMEOUT_MS;
  int rc = -1;
  for (;;) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      H.live[slot] = NULL;
      w->pid = 0;
      kvh_worker_dump_log(w, 4000);
      KVH_CHECK(0, "worker on port %d exited during start-up (status 0x%x)",
                w->port, st);
    }
    kvds_client *c;
    rc = kvds_client_connect(w->addr, 1000, &c);
    if (rc == 0) {
      rc = kvds_ping(c);
      kvds_client_close(c);
      if (rc == 0)
        break;
    }
    KVH_CHECK(kvh_now_ms() < deadline,
              "worker on port %d not answering after %d ms (last: %s)", w->port,
              START_TIMEOUT_MS, kvds_err_name(rc));
    kvh_sleep_ms(20);
  }
}

static void worker_wait(struct kvh_worker *w, int sig, int timeout_ms) {
  if (!w->pid)
    return;
  pid_t pid = w->pid;
  if (sig)
    kill(pid, sig);
  uint64_t deadline = kvh_now_ms() + (uint64_t)timeout_ms;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid)
      break;
    if (kvh_now_ms() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      w->pid = 0;
      for (int i = 0; i < MAX_WORKERS; i++)
        if (H.live[i] == w)
          H.live[i] = NULL;
      kvh_worker_dump_log(w, 4000);
      KVH_CHECK(0, "worker (port %d) did not exit within %d ms%s", w->port,
                timeout_ms, sig ? " of SIGTERM" : "");
    }
    kvh_sleep_ms(5);
  }
  kvh_worker_exited(w, st);
}

void kvh_worker_exited(struct kvh_worker *w, int st) {
  w->pid = 0;
  for (int i = 0; i < MAX_WORKERS; i++)
    if (H.live[i] == w)
      H.live[i] = NULL;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    kvh_worker_dump_log(w, 8000);
    KVH_CHECK(0, "worker (port %d) %s %d", w->port,
              WIFEXITED(st) ? "exited with status" : "was killed by signal",
              WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
  }
  KVH_CHECK(access(w->sock, F_OK) != 0,
            "worker (port %d) left its socket %s behind", w->port, w->sock);
}

void kvh_worker_stop(struct kvh_worker *w) {
  worker_wait(w, SIGTERM, STOP_TIMEOUT_MS);
}

void kvh_worker_reap(struct kvh_worker *w, int timeout_ms) {
  worker_wait(w, 0, timeout_ms);
}

/* ---- values --------------------------------------------------------------*/

uint64_t kvh_rand(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

size_t kvh_val_size(const void *key, size_t klen, size_t max_size) {
  uint64_t s = kvds_checksum(key, klen) ^ 0x5157a11u;
  uint64_t a = kvh_rand(&s), b = kvh_rand(&s);
  size_t small = max_size < 4096 ? max_size : 4096;
  return 1 + (size_t)((a & 7) == 0 ? b % max_size : b % small);
}

void kvh_val_fill(const void *key, size_t klen, void *buf, size_t len) {
  uint64_t s = kvds_checksum(key, klen);
  uint8_t *p = buf;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = kvh_rand(&s);
    memcpy(p + i, &v, 8);
  }
  if (i < len) {
    uint64_t v = kvh_rand(&s);
    memcpy(p + i, &v, len - i);
  }
}

void *kvh_val_new(const void *key, size_t klen, size_t len) {
  void *p = malloc(len ? len : 1);
  KVH_CHECK(p, "out of memory");
  kvh_val_fill(key, klen, p, len);
  return p;
}

int kvh_val_ok(const void *key, size_t klen, size_t want_len, const void *data,
               size_t len) {
  if (len != want_len || (len && !data))
    return 0;
  uint64_t s = kvds_checksum(key, klen);
  const uint8_t *p = data;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = kvh_rand(&s);
    if (memcmp(p + i, &v, 8) != 0)
      return 0;
  }
  if (i < len) {
    uint64_t v = kvh_rand(&s);
    if (memcmp(p + i, &v, len - i) != 0)
      return 0;
  }
  return 1;
}

int kvh_raw_partial_put(int port, const char *key, uint64_t size,
                        uint64_t sent) {
  int s = kvh_raw_tcp(port);
  size_t klen = strlen(key);
  uint8_t frame[KVDS_PROTO_HDR_LEN + KVDS_PROTO_ITEM_LEN + 256];
  KVH_CHECK(klen <= 256, "key too long for a raw put");
  size_t ml = kvds_proto_item_encode(
      &(struct kvds_proto_item){.klen = (uint32_t)klen, .a = size}, key,
      frame + KVDS_PROTO_HDR_LEN);
  struct kvds_proto_hdr h = {.magic = KVDS_PROTO_MAGIC,
                             .version = KVDS_PROTO_VERSION,
                             .opcode = KVDS_OP_PUT,
                             .req_id = 1,
                             .count = 1,
                             .meta_len = (uint32_t)ml,
                             .data_len = size};
  kvds_proto_hdr_encode(&h, frame);
  kvds_proto_seal_frame(frame, frame + KVDS_PROTO_HDR_LEN, ml);
  KVH_CHECK(kvh_write_all(s, frame, KVDS_PROTO_HDR_LEN + ml) == 0, "send");
  uint8_t *data = malloc(sent ? sent : 1);
  KVH_CHECK(data != NULL, "out of memory");
  memset(data, 0x5a, sent);
  KVH_CHECK(kvh_write_all(s, data, sent) == 0, "send data: %s",
            strerror(errno));
  free(data);
  return s;
}

/* ---- etcd ---------------------------------------------------------------- */

#define ETCD_START_TIMEOUT_MS 20000
#define ETCD_STOP_TIMEOUT_MS 10000

void kvh_etcd_dump_log(const struct kvh_etcd *e, size_t bytes) {
  dump_file(e->log, "etcd", e->port, bytes);
}

/* 1 iff GET /health on the client port says {"health":"true"}. */
static int etcd_healthy(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int ok = 0;
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
    static const char req[] = "GET /health HTTP/1.0\r\n\r\n";
    char buf[2048];
    size_t len = 0;
    if (kvh_write_all(fd, req, sizeof req - 1) == 0 &&
        kvh_read_to_eof(fd, buf, sizeof buf - 1, &len, 1000) == 0) {
      buf[len] = 0;
      ok = strstr(buf, "\"health\":\"true\"") != NULL;
    }
  }
  close(fd);
  return ok;
}

void kvh_etcd_restart(struct kvh_etcd *e) {
  KVH_CHECK(e->pid == 0, "etcd on port %d is still running", e->port);
  const char *bin = getenv("KVDS_ETCD_BIN");
  if (!bin || !*bin)
    bin = "/usr/bin/etcd";
  KVH_CHECK(access(bin, X_OK) == 0,
            "no etcd at %s (scripts/install-deps.sh installs etcd-server)",
            bin);
  char client[64], peer[64], cluster[80];
  snprintf(client, sizeof client, "http://127.0.0.1:%d", e->port);
  snprintf(peer, sizeof peer, "http://127.0.0.1:%d", e->peer_port);
  snprintf(cluster, sizeof cluster, "t=%s", peer);
  /* Short raft timers: a lone member elects itself in well under a second
   * after every (re)start. */
  const char *argv[] = {"etcd",  "--name",
                        "t",     "--data-dir",
                        e->dir,  "--listen-client-urls",
                        client,  "--advertise-client-urls",
                        client,  "--listen-peer-urls",
                        peer,    "--initial-advertise-peer-urls",
                        peer,    "--initial-cluster",
                        cluster, "--heartbeat-interval",
                        "25",    "--election-timeout",
                        "250",   NULL};
  pid_t pid = spawn_logged(bin, argv, e->log);
  e->pid = pid;
  kvh_kill_on_fail(pid);
  uint64_t deadline = kvh_now_ms() + ETCD_START_TIMEOUT_MS;
  for (;;) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      kvh_kill_on_fail_cancel(pid);
      e->pid = 0;
      kvh_etcd_dump_log(e, 4000);
      KVH_CHECK(0, "etcd on port %d exited during start-up (status 0x%x)",
                e->port, st);
    }
    if (etcd_healthy(e->port))
      return;
    if (kvh_now_ms() >= deadline) {
      kvh_etcd_dump_log(e, 4000);
      KVH_CHECK(0, "etcd on port %d not healthy after %d ms", e->port,
                ETCD_START_TIMEOUT_MS);
    }
    kvh_sleep_ms(20);
  }
}

void kvh_etcd_start(struct kvh_etcd *e) {
  memset(e, 0, sizeof *e);
  e->port = kvh_free_port();
  do
    e->peer_port = kvh_free_port();
  while (e->peer_port == e->port);
  snprintf(e->addr, sizeof e->addr, "127.0.0.1:%d", e->port);
  snprintf(e->dir, sizeof e->dir, "%s/etcd-%d.data", H.dir, e->port);
  snprintf(e->log, sizeof e->log, "%s/etcd-%d.log", H.dir, e->port);
  kvh_etcd_restart(e);
}

static void etcd_end(struct kvh_etcd *e, int sig) {
  if (!e->pid)
    return;
  kill(e->pid, sig);
  uint64_t deadline = kvh_now_ms() + ETCD_STOP_TIMEOUT_MS;
  while (waitpid(e->pid, NULL, WNOHANG) != e->pid) {
    if (kvh_now_ms() >= deadline) {
      kill(e->pid, SIGKILL);
      waitpid(e->pid, NULL, 0);
      break;
    }
    kvh_sleep_ms(5);
  }
  kvh_kill_on_fail_cancel(e->pid);
  e->pid = 0;
}

void kvh_etcd_wipe(struct kvh_etcd *e) {
  KVH_CHECK(e->pid == 0, "etcd on port %d is still running", e->port);
  nftw(e->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  KVH_CHECK(access(e->dir, F_OK) != 0, "%s is still there", e->dir);
}

void kvh_etcd_kill9(struct kvh_etcd *e) {
  etcd_end(e, SIGKILL);
}

void kvh_etcd_stop(struct kvh_etcd *e) {
  etcd_end(e, SIGTERM);
}

/* ---- hand-made frames ---------------------------------------------------- */

void kvh_frame_init(struct kvh_frame *f, uint8_t op, uint64_t req_id) {
  memset(f, 0, sizeof *f);
  f->h = (struct kvds_proto_hdr){.magic = KVDS_PROTO_MAGIC,
                                 .version = KVDS_PROTO_VERSION,
                                 .opcode = op,
                                 .req_id = req_id};
  f->len = KVDS_PROTO_HDR_LEN;
}

void kvh_frame_item(struct kvh_frame *f, uint64_t a, const void *key,
                    size_t klen) {
  struct kvds_proto_item it = {.klen = (uint32_t)klen, .a = a};
  KVH_CHECK(f->len + kvds_proto_item_size(klen) <= sizeof f->b, "frame full");
  f->len += kvds_proto_item_encode(&it, key, f->b + f->len);
  f->h.count++;
}

void kvh_frame_seal(struct kvh_frame *f) {
  if (!f->h.meta_len)
    f->h.meta_len = (uint32_t)(f->len - KVDS_PROTO_HDR_LEN);
  kvds_proto_hdr_encode(&f->h, f->b);
  kvds_proto_seal_frame(f->b, f->b + KVDS_PROTO_HDR_LEN,
                        f->len - KVDS_PROTO_HDR_LEN);
}

void kvh_frame_data(struct kvh_frame *f, size_t n) {
  KVH_CHECK(f->len + n <= sizeof f->b, "frame full");
  memset(f->b + f->len, 0x77, n);
  f->len += n;
}

int kvh_read_reply(int fd, struct kvds_proto_hdr *h, uint8_t **body,
                   int timeout_ms) {
  uint8_t hdr[KVDS_PROTO_HDR_LEN];
  uint64_t t0 = kvh_now_ms();
  size_t got = 0;
  while (got < sizeof hdr) {
    KVH_CHECK(kvh_now_ms() - t0 < (uint64_t)timeout_ms,
              "no reply and no close within %d ms", timeout_ms);
    ssize_t r = recv(fd, hdr + got, sizeof hdr - got, MSG_DONTWAIT);
    if (r == 0 || (r < 0 && errno == ECONNRESET))
      return -1;
    if (r < 0) {
      KVH_CHECK(errno == EAGAIN || errno == EINTR, "recv: %s", strerror(errno));
      kvh_sleep_ms(5);
      continue;
    }
    got += (size_t)r;
  }
  int rc = kvds_proto_hdr_decode(hdr, sizeof hdr, h);
  KVH_CHECK(rc == 0 && (h->flags & KVDS_PF_REPLY), "malformed reply header: %s",
            kvds_err_name(rc));
  size_t rest = h->meta_len + (size_t)h->data_len;
  KVH_CHECK(rest <= (1u << 20), "reply of %zu bytes", rest);
  uint8_t *tmp = malloc(rest ? rest : 1);
  KVH_CHECK(tmp, "out of memory");
  int r = kvh_read_all(fd, tmp, rest, timeout_ms);
  if (r == 0 && body)
    *body = tmp;
  else
    free(tmp);
  return r == 0 ? 0 : -1;
}

int kvh_peer_closed(int fd) {
  uint8_t buf[4096];
  for (;;) {
    ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE)))
      return 1;
    if (r < 0)
      return 0;
  }
}
