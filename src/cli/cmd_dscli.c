/* cmd_dscli.c — the `dscli` front: `dscli start -w` / `dscli stop -w` as in
 * the openyuanrong-datasystem docs, mapped onto `kvds worker --daemon` and
 * the shutdown request. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/clock.h"
#include "common/util.h"

static const char HELP[] =
    "usage: dscli start -w [--worker_address ADDR] [kvds worker options]\n"
    "       dscli stop -w [--worker_address ADDR]\n"
    "\n"
    "start  starts a worker daemon listening on ADDR (kvds worker --listen "
    "ADDR\n"
    "       --daemon ...) and reports success once it answers requests.\n"
    "       Other options (--memory 4GiB, --threads N, --huge-pages try, "
    "...)\n"
    "       are passed to 'kvds worker'; see kvds help worker.\n"
    "stop   asks the worker at ADDR to shut down and waits until it is gone.\n"
    "\n"
    "  -w, --worker             act on the worker service (the only one; "
    "may be\n"
    "                           omitted)\n"
    "  --worker_address ADDR    host:port (default $DS_WORKER_ADDR, then\n"
    "                           127.0.0.1:31501)\n"
    "  --etcd_address ADDR      join the cluster through etcd at ADDR\n"
    "                           (host:port[,host:port...]; kvds worker\n"
    "                           --etcd_address)\n"
    "  --auth-token-file F      the worker's shared secret (kvds worker\n"
    "                           --auth-token-file; needed for a non-loopback\n"
    "                           ADDR); start and stop also prove it\n"
    "  -h, --help               this text\n"
    "\n"
    "exit status: 0 success, 1 failure, 2 usage error.\n";

/* Deadline for the started worker to answer a ping. */
#define DSCLI_PING_MS 10000
#define DSCLI_STOP_MS 30000

struct dscli_args {
  const char *addr;
  const char *etcd;
  const char *auth; /* --auth-token-file: the worker's, and ours */
  char **pass;      /* other arguments, handed to kvds worker */
  int npass;
};

/* Matches "--name VALUE" and "--name=VALUE"; advances *i past the value. */
static int take_value(const char *name, int argc, char **argv, int *i,
                      const char **out, int *bad) {
  size_t n = strlen(name);
  const char *a = argv[*i];
  if (strncmp(a, name, n) != 0)
    return 0;
  if (a[n] == '=') {
    *out = a + n + 1;
    return 1;
  }
  if (a[n] != 0)
    return 0;
  if (*i + 1 >= argc) {
    fprintf(stderr, "dscli: option '%s' needs a value\n", name);
    *bad = 1;
    return 1;
  }
  *out = argv[++*i];
  return 1;
}

/* Returns -1 after --help, CLI_USAGE on a usage error, else 0. */
static int parse(int argc, char **argv, int allow_pass, struct dscli_args *a) {
  int bad = 0;
  a->pass = calloc((size_t)argc + 1, sizeof *a->pass);
  if (!a->pass)
    return CLI_FAIL;
  for (int i = 1; i < argc && !bad; i++) {
    const char *s = argv[i];
    if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) {
      fputs(HELP, stdout);
      return -1;
    }
    if (strcmp(s, "-w") == 0 || strcmp(s, "--worker") == 0)
      continue;
    if (take_value("--worker_address", argc, argv, &i, &a->addr, &bad) ||
        take_value("--etcd_address", argc, argv, &i, &a->etcd, &bad))
      continue;
    int first = i;
    if (take_value("--auth-token-file", argc, argv, &i, &a->auth, &bad)) {
      /* Handed to the worker as given; this process proves it too. */
      for (int k = first; allow_pass && k <= i; k++)
        a->pass[a->npass++] = argv[k];
      continue;
    }
    if (!allow_pass) {
      fprintf(stderr, "dscli %s: unknown option '%s' (see dscli --help)\n",
              argv[0], s);
      return CLI_USAGE;
    }
    a->pass[a->npass++] = argv[i];
  }
  if (bad)
    return CLI_USAGE;
  a->addr = cli_worker_addr(a->addr);
  if (a->auth && *a->auth)
    setenv("KVDS_AUTH_TOKEN_FILE", a->auth, 1);
  return 0;
}

/* Runs argv with stdout+stderr captured; returns the wait status (or -1) and
 * the last non-empty output line in last[cap]. */
static int run_captured(char **argv, char *last, size_t cap) {
  last[0] = 0;
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    snprintf(last, cap, "pipe: %s", strerror(errno));
    return -1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(last, cap, "fork: %s", strerror(errno));
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid == 0) {
    dup2(p[1], STDOUT_FILENO);
    dup2(p[1], STDERR_FILENO);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "cannot run /proc/self/exe: %s\n", strerror(errno));
    _exit(127);
  }
  close(p[1]);
  char buf[4096];
  size_t n = 0;
  for (;;) {
    ssize_t r = read(p[0], buf + n, sizeof buf - 1 - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    n += (size_t)r;
    if (n == sizeof buf - 1) { /* keep the tail only */
      memmove(buf, buf + n / 2, n - n / 2);
      n -= n / 2;
    }
  }
  close(p[0]);
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      return -1;
  buf[n] = 0;
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    buf[--n] = 0;
  char *line = strrchr(buf, '\n');
  line = line ? line + 1 : buf;
  if (strncmp(line, "kvds worker: ", 13) == 0)
    line += 13;
  if (strncmp(line, "worker failed to start: ", 24) == 0)
    line += 24;
  snprintf(last, cap, "%.*s", (int)cap - 1, line);
  return status;
}

/* Waits until the worker at addr answers a ping; fills *pid. */
static int wait_ping(const char *addr, int timeout_ms, uint64_t *pid) {
  uint64_t deadline = kvds_deadline_ms(timeout_ms);
  int rc;
  for (;;) {
    kvds_client *c;
    rc = cli_try_connect(addr, 1000, KVDS_CONNECT_LAZY_MAP, &c, NULL, 0);
    if (rc == 0) {
      struct kvds_stats st;
      rc = kvds_ping(c);
      if (rc == 0 && kvds_stats(c, &st) == 0)
        *pid = st.pid;
      kvds_client_close(c);
      if (rc == 0)
        return 0;
    }
    if (kvds_now_us() >= deadline)
      return rc;
    kvds_sleep_ms(50);
  }
}

__attribute__((format(printf, 2, 3))) static int
start_err(const char *addr, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[ERROR] Start worker service @ %s failed: ", addr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return CLI_FAIL;
}

static int dscli_start(int argc, char **argv) {
  struct dscli_args a = {0};
  int rc = parse(argc, argv, 1, &a);
  if (rc) {
    free(a.pass);
    return rc < 0 ? CLI_OK : rc;
  }
  int ret = CLI_FAIL;
  char **wargv = NULL;
  uint64_t pid = 0;
  kvds_client *c;
  if (cli_try_connect(a.addr, 1000, KVDS_CONNECT_LAZY_MAP, &c, NULL, 0) == 0) {
    struct kvds_stats st;
    char who[48] = "";
    if (kvds_stats(c, &st) == 0)
      snprintf(who, sizeof who, " (PID: %llu)", (unsigned long long)st.pid);
    kvds_client_close(c);
    start_err(a.addr, "a worker is already running there%s", who);
    goto out;
  }
  wargv = calloc((size_t)a.npass + 9, sizeof *wargv);
  if (!wargv) {
    start_err(a.addr, "%s", strerror(ENOMEM));
    goto out;
  }
  int n = 0;
  wargv[n++] = "kvds";
  wargv[n++] = "worker";
  wargv[n++] = "--listen";
  wargv[n++] = (char *)a.addr;
  if (a.etcd) {
    wargv[n++] = "--etcd_address";
    wargv[n++] = (char *)a.etcd;
  }
  for (int i = 0; i < a.npass; i++)
    wargv[n++] = a.pass[i];
  wargv[n++] = "--daemon";
  char last[512];
  int status = run_captured(wargv, last, sizeof last);
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    start_err(a.addr, "%s", last[0] ? last : "kvds worker failed");
    if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == CLI_USAGE)
      ret = CLI_USAGE;
    goto out;
  }
  rc = wait_ping(a.addr, DSCLI_PING_MS, &pid);
  if (rc) {
    start_err(a.addr, "the worker does not answer: %s", kvds_strerror(rc));
    goto out;
  }
  printf("[INFO] [  OK  ] Start worker service @ %s success, PID: %llu\n",
         a.addr, (unsigned long long)pid);
  ret = CLI_OK;
out:
  free(wargv);
  free(a.pass);
  return ret;
}

static int dscli_stop(int argc, char **argv) {
  struct dscli_args a = {0};
  int rc = parse(argc, argv, 0, &a);
  free(a.pass);
  if (rc)
    return rc < 0 ? CLI_OK : rc;
  rc = cli_stop_worker(a.addr, DSCLI_STOP_MS, NULL);
  if (rc == 0) {
    printf("[INFO] [  OK  ] Stop worker service @ %s success\n", a.addr);
    return CLI_OK;
  }
  const char *why = kvds_strerror(rc);
  char buf[160];
  if (rc == -ECONNREFUSED || rc == -ENOENT) {
    snprintf(buf, sizeof buf, "no worker is running there (%s)", why);
    why = buf;
  } else if (rc == KVDS_E_TIMEOUT) {
    snprintf(buf, sizeof buf, "still running after %d s", DSCLI_STOP_MS / 1000);
    why = buf;
  }
  fprintf(stderr, "[ERROR] Stop worker service @ %s failed: %s\n", a.addr, why);
  return CLI_FAIL;
}

int dscli_main(int argc, char **argv) {
  if (argc < 2) {
    fputs(HELP, stderr);
    return CLI_USAGE;
  }
  const char *c = argv[1];
  if (strcmp(c, "-h") == 0 || strcmp(c, "--help") == 0 ||
      strcmp(c, "help") == 0) {
    fputs(HELP, stdout);
    return CLI_OK;
  }
  if (strcmp(c, "-V") == 0 || strcmp(c, "--version") == 0) {
    printf("dscli (kvds) %s\n", KVDS_VERSION_STRING);
    return CLI_OK;
  }
  if (strcmp(c, "start") == 0)
    return dscli_start(argc - 1, argv + 1);
  if (strcmp(c, "stop") == 0)
    return dscli_stop(argc - 1, argv + 1);
  fprintf(stderr,
          "dscli: unknown command '%s' (use start or stop; see "
          "dscli --help)\n",
          c);
  return CLI_USAGE;
}
