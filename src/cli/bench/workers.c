/*
 * workers.c — processes a bench starts itself: workers (`kvds worker` of
 * this binary on a free loopback port) and other programs (redis-server,
 * a Python driver), waited for and stopped; a pair of workers peered with
 * each other; and the bench's own temporary directories (bench.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/bench/bench.h"
#include "common/clock.h"
#include "common/util.h"

#define SPAWN_ARGS_MAX 40 /* argv entries of a started worker */

int bench_free_port(void) {
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

int bench_spawn(pid_t *pid, const char *const *argv, const char *out,
                const char *err, const char *const *env) {
  pid_t parent = getpid();
  fflush(NULL);
  pid_t p = fork();
  if (p < 0)
    return -errno;
  if (p == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
      _exit(127);
    int fds[3] = {open("/dev/null", O_RDONLY), -1, -1};
    const char *paths[3] = {NULL, out, err ? err : out};
    for (int i = 1; i < 3; i++)
      if (paths[i] &&
          (fds[i] = open(paths[i],
                         O_WRONLY | O_CREAT | O_APPEND | (i == 1 ? O_TRUNC : 0),
                         0600)) < 0)
        _exit(127);
    for (int i = 0; i < 3; i++)
      if (fds[i] >= 0 && dup2(fds[i], i) < 0)
        _exit(127);
    for (int i = 0; i < 3; i++)
      if (fds[i] > STDERR_FILENO)
        close(fds[i]);
    for (; env && env[0]; env += 2)
      setenv(env[0], env[1], 1);
    execvp(argv[0], (char *const *)argv);
    _exit(127);
  }
  *pid = p;
  return 0;
}

int bench_wait(pid_t pid) {
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR)
      return -errno;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void bench_proc_stop(pid_t *pid, int sig, int grace_s) {
  if (*pid <= 0)
    return;
  kill(*pid, sig);
  uint64_t deadline = kvds_now_ns() + (uint64_t)grace_s * 1000000000ull;
  int st;
  for (;;) {
    pid_t p = waitpid(*pid, &st, WNOHANG);
    if (p == *pid || (p < 0 && errno != EINTR))
      break;
    if (kvds_now_ns() > deadline) {
      /* the whole group: what the process started goes with it */
      kill(-*pid, SIGKILL);
      while (waitpid(*pid, &st, 0) < 0 && errno == EINTR)
        ;
      break;
    }
    kvds_sleep_ms(10);
  }
  *pid = 0;
}

const char *bench_find_in_path(const char *name, char *out, size_t cap) {
  const char *path = getenv("PATH");
  if (!path || !*path)
    path = "/usr/local/bin:/usr/bin:/bin";
  for (const char *p = path; *p;) {
    const char *e = strchr(p, ':');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    int n = snprintf(out, cap, "%.*s/%s", (int)len, len ? p : ".", name);
    if (n > 0 && (size_t)n < cap && access(out, X_OK) == 0)
      return out;
    p += len + (e != NULL);
  }
  return NULL;
}

int bench_worker_spawn(struct bench_worker *w, const char *dir,
                       const char *const *args) {
  const char *self = bench_self_exe();
  if (!self)
    return -errno;
  const char *argv[SPAWN_ARGS_MAX];
  int k = 0;
  snprintf(w->addr, sizeof w->addr, "127.0.0.1:%d", w->port);
  snprintf(w->log, sizeof w->log, "%s/worker-%d.log", dir, w->port);
  argv[k++] = self;
  argv[k++] = "worker";
  argv[k++] = "--listen";
  argv[k++] = w->addr;
  for (; *args; args++) {
    if (k >= SPAWN_ARGS_MAX - 3)
      return -E2BIG;
    argv[k++] = *args;
  }
  const char *token = getenv("KVDS_AUTH_TOKEN_FILE");
  if (token && *token) {
    argv[k++] = "--auth-token-file";
    argv[k++] = token;
  }
  argv[k] = NULL;
  const char *env[] = {"KVDS_RUN_DIR", dir, NULL};
  return bench_spawn(&w->pid, argv, w->log, NULL, env);
}

void bench_worker_stop(struct bench_worker *w) {
  if (w->log[0]) {
    unlink(w->log);
    w->log[0] = '\0';
  }
  bench_proc_stop(&w->pid, SIGTERM, 30);
}

int bench_worker_wait_ready(struct bench_worker *w, uint64_t deadline_ns) {
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
    if (bench_stopped())
      return CLI_FAIL;
    if (kvds_now_ns() > deadline_ns) {
      cli_err("bench", "worker %s did not start in time: %s", w->addr,
              cli_log_tail(w->log, 0, tail, sizeof tail));
      return CLI_FAIL;
    }
    kvds_sleep_ms(20);
  }
}

/* ---- a pair of peered workers ---- */

int bench_pair_start(struct bench_worker w[2], const char *dir, uint64_t memory,
                     uint64_t pull_threads, uint64_t threads,
                     const char *transport) {
  w[0].port = bench_free_port();
  w[1].port = bench_free_port();
  if (w[0].port <= 0 || w[1].port <= 0 || w[0].port == w[1].port) {
    cli_err("bench", "no free loopback ports");
    return CLI_FAIL;
  }
  char mem[32], pulls[24], thr[24];
  snprintf(mem, sizeof mem, "%llu", (unsigned long long)memory);
  snprintf(pulls, sizeof pulls, "%llu", (unsigned long long)pull_threads);
  snprintf(thr, sizeof thr, "%llu", (unsigned long long)threads);
  for (int i = 0; i < 2; i++) {
    char peers[64];
    snprintf(peers, sizeof peers, "127.0.0.1:%d", w[1 - i].port);
    const char *args[] = {"--peers",
                          peers,
                          "--memory",
                          mem,
                          "--pull-threads",
                          pulls,
                          "--threads",
                          thr,
                          transport ? "--transport" : NULL,
                          transport,
                          NULL};
    int rc = bench_worker_spawn(&w[i], dir, args);
    if (rc) {
      cli_err("bench", "cannot start a worker: %s", kvds_strerror(rc));
      return CLI_FAIL;
    }
  }
  /* 30 s + 4 s per GiB of pool: generously more than `kvds worker --daemon`
   * allows (30 s + 0.5 s per GiB), as two pools start at once */
  uint64_t deadline =
      kvds_now_ns() + 30000000000ull + 4 * (memory >> 30) * 1000000000ull;
  for (int i = 0; i < 2; i++)
    if (bench_worker_wait_ready(&w[i], deadline))
      return CLI_FAIL;
  return CLI_OK;
}

int bench_cluster_members(kvds_client *c, json_t **root, json_t **members) {
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
  int rc = bench_cluster_members(c, &j, &ms);
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

int bench_pair_wait_peered(kvds_client *const cs[2], const char *const addrs[2],
                           uint64_t deadline_ns) {
  for (int i = 0; i < 2; i++) {
    for (;;) {
      size_t n = 0;
      int conn = 0;
      int rc = cluster_view(cs[i], &n, &conn);
      if (rc) {
        cli_err("bench", "cluster status of %s: %s", addrs[i],
                kvds_strerror(rc));
        return CLI_FAIL;
      }
      if (n >= 2 && conn)
        break;
      if (bench_stopped())
        return CLI_FAIL;
      if (kvds_now_ns() > deadline_ns) {
        cli_err("bench",
                "worker %s does not see its peer (%zu member%s in its view; "
                "is it started with --peers?)",
                addrs[i], n, n == 1 ? "" : "s");
        return CLI_FAIL;
      }
      kvds_sleep_ms(20);
    }
  }
  return CLI_OK;
}

/* ---- directories ---- */

int bench_make_dir(const char *parent, const char *name, char *out,
                   size_t cap) {
  int n = snprintf(out, cap, "%s/%s.XXXXXX", parent, name);
  if (n < 0 || (size_t)n >= cap) {
    cli_err("bench", "directory name under %s is too long", parent);
    out[0] = '\0';
    return CLI_FAIL;
  }
  if (!mkdtemp(out)) {
    cli_err("bench", "cannot create a directory under %s: %s", parent,
            strerror(errno));
    out[0] = '\0';
    return CLI_FAIL;
  }
  return CLI_OK;
}

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw) {
  (void)sb;
  (void)ftw;
  /* keep going past what cannot be removed: rmdir of the top reports it */
  if (flag == FTW_DP)
    rmdir(path);
  else
    unlink(path);
  return 0;
}

int bench_remove_tree(const char *path) {
  if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 &&
      errno != ENOENT)
    return -errno;
  if (access(path, F_OK) == 0)
    return -ENOTEMPTY;
  return 0;
}
