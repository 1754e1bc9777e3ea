/*
 * workers.c — workers a bench starts itself (`kvds worker` of this binary
 * on a free loopback port), waits for, stops, and the bench's own
 * temporary directories (bench.h).
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
    setenv("KVDS_RUN_DIR", dir, 1);
    execv(self, (char *const *)argv);
    _exit(127);
  }
  w->pid = pid;
  return 0;
}

void bench_worker_stop(struct bench_worker *w) {
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
    kvds_sleep_ms(10);
  }
  w->pid = 0;
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
