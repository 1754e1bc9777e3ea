/* cli_util.c — helpers shared by the kvds commands: errors, option parsing,
 * connecting to the worker, key escaping, file I/O. */
#include "cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/addr.h"
#include "common/array.h"
#include "common/clock.h"
#include "common/util.h"
#include "worker/worker.h" /* KVDS_DEFAULT_ADDR */

void cli_err(const char *cmd, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "kvds %s: %s\n", cmd, msg);
}

int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
               const struct option *longopts, int *first) {
  if (*first) {
    optind = 0; /* glibc: full re-initialisation */
    opterr = 0;
    *first = 0;
  }
  char spec[128];
  snprintf(spec, sizeof spec, ":%s", shortopts); /* ':' = report missing arg */
  int c = getopt_long(argc, argv, spec, longopts, NULL);
  if (c == '?' || c == ':') {
    const char *bad = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
    char shortbuf[3] = {'-', (char)optopt, 0};
    if (strncmp(bad, "--", 2) != 0 && optopt)
      bad = shortbuf;
    if (c == ':')
      cli_err(cmd, "option '%s' needs a value (see kvds help %s)", bad, cmd);
    else
      cli_err(cmd, "unknown option '%s' (see kvds help %s)", bad, cmd);
    return '?';
  }
  return c;
}

const char *cli_worker_addr(const char *flag) {
  if (flag && *flag)
    return flag;
  const char *env = getenv("DS_WORKER_ADDR");
  if (env && *env)
    return env;
  return KVDS_DEFAULT_ADDR;
}

/* The library's rule: "unix:..." or anything with '/' but "tcp://...". */
static int is_unix_addr(const char *addr) {
  return strncmp(addr, "unix:", 5) == 0 ||
         (strchr(addr, '/') != NULL && strncmp(addr, "tcp://", 6) != 0);
}

int cli_addr_is_loopback(const char *addr) {
  if (is_unix_addr(addr))
    return 1;
  char host[256];
  uint16_t port;
  if (kvds_split_hostport(addr, host, sizeof host, &port))
    return 0;
  return kvds_host_is_loopback(host);
}

static void describe(const kvds_client *c, const char *addr, char *via,
                     size_t vcap) {
  if (via)
    snprintf(via, vcap, "%s",
             kvds_client_is_local(c) ? "Unix socket, shared memory"
             : is_unix_addr(addr)    ? "Unix socket"
                                     : "TCP");
}

int cli_try_connect(const char *addr, int timeout_ms, unsigned flags,
                    kvds_client **out, char *via, size_t vcap) {
  /* The library moves a TCP connection to the worker's Unix socket (and
   * shared memory) by itself when the worker runs on this machine. */
  int rc = kvds_client_connect_ex(addr, timeout_ms, flags, out);
  if (rc == 0)
    describe(*out, addr, via, vcap);
  return rc;
}

int cli_connect(const char *cmd, const char *addr, unsigned flags,
                kvds_client **out, char *via, size_t vcap) {
  int rc = cli_try_connect(addr, CLI_TIMEOUT_MS, flags, out, via, vcap);
  if (rc == 0)
    return CLI_OK;
  const char *tok = getenv("KVDS_AUTH_TOKEN_FILE");
  if (rc == -ECONNREFUSED || rc == -ENOENT)
    cli_err(cmd, "no worker at %s (%s); start one with 'kvds worker'", addr,
            kvds_strerror(rc));
  else if (rc == KVDS_E_AUTH && tok && *tok && access(tok, R_OK) != 0)
    cli_err(cmd,
            "cannot connect to worker at %s: the auth token file %s "
            "(KVDS_AUTH_TOKEN_FILE) cannot be read: %s",
            addr, tok, strerror(errno));
  else
    cli_err(cmd, "cannot connect to worker at %s: %s", addr, kvds_strerror(rc));
  return CLI_FAIL;
}

/* Gone, or a zombie nobody has reaped yet (its parent may never do so). */
static int process_gone(uint64_t pid) {
  if (pid == 0 || (kill((pid_t)pid, 0) == -1 && errno == ESRCH))
    return 1;
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%llu/stat", (unsigned long long)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return 1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  /* "pid (comm) S ...": the state follows the last ')'. */
  const char *p = strrchr(buf, ')');
  return p && p[1] == ' ' && p[2] == 'Z';
}

int cli_stop_worker(const char *addr, int timeout_ms, uint64_t *pid) {
  kvds_client *c;
  int rc = cli_try_connect(addr, timeout_ms < 2000 ? timeout_ms : 2000,
                           KVDS_CONNECT_LAZY_MAP, &c, NULL, 0);
  if (rc)
    return rc;
  struct kvds_stats st;
  uint64_t wpid = kvds_stats(c, &st) == 0 ? st.pid : 0;
  rc = kvds_shutdown(c);
  kvds_client_close(c);
  /* The worker may close the connection before or instead of answering. */
  if (rc && rc != KVDS_E_CLOSED && rc != KVDS_E_SHUTDOWN)
    return rc;
  if (pid)
    *pid = wpid;
  int local = cli_addr_is_loopback(addr);
  uint64_t deadline = kvds_deadline_ms(timeout_ms);
  for (;;) {
    int answers =
        cli_try_connect(addr, 500, KVDS_CONNECT_LAZY_MAP, &c, NULL, 0) == 0;
    if (answers)
      kvds_client_close(c);
    if (!answers && (!local || process_gone(wpid)))
      return 0;
    if (kvds_now_us() >= deadline)
      return KVDS_E_TIMEOUT;
    kvds_sleep_ms(50);
  }
}

char *cli_fmt_key(const void *key, size_t klen, char *buf, size_t cap) {
  static const char hex[] = "0123456789abcdef";
  const uint8_t *k = key;
  size_t o = 0;
  for (size_t i = 0; i < klen; i++) {
    if (o + 8 >= cap) { /* room for "\xNN" + "..." + NUL */
      memcpy(buf + o, "...", 3);
      o += 3;
      break;
    }
    if (k[i] >= 0x20 && k[i] < 0x7f && k[i] != '\\') {
      buf[o++] = (char)k[i];
    } else {
      buf[o++] = '\\';
      buf[o++] = 'x';
      buf[o++] = hex[k[i] >> 4];
      buf[o++] = hex[k[i] & 15];
    }
  }
  buf[o] = 0;
  return buf;
}

void cli_print_key(FILE *f, const void *key, size_t klen) {
  char buf[KVDS_KEY_MAX * 4 + 8];
  fputs(cli_fmt_key(key, klen, buf, sizeof buf), f);
}

char *cli_fmt_time_us(uint64_t us, char *buf, size_t cap) {
  time_t s = (time_t)(us / 1000000u);
  struct tm tm;
  char base[32];
  if (us == 0 || !gmtime_r(&s, &tm) ||
      !strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm)) {
    snprintf(buf, cap, "-");
    return buf;
  }
  snprintf(buf, cap, "%s.%03uZ", base, (unsigned)(us % 1000000u / 1000u));
  return buf;
}

int cli_read_capped(int fd, uint64_t limit, uint8_t **buf, size_t *len) {
  size_t cap = 1 << 16, n = 0;
  uint8_t *b = malloc(cap);
  if (!b)
    return -ENOMEM;
  for (;;) {
    if (KVDS_ARRAY_GROW(b, cap, n + 1, 0)) {
      free(b);
      return -ENOMEM;
    }
    /* never more than one byte past the limit: enough to know */
    size_t want = cap - n;
    if ((uint64_t)want > limit + 1 - n)
      want = (size_t)(limit + 1 - n);
    ssize_t r = read(fd, b + n, want);
    if (r == 0)
      break;
    if (r < 0) {
      if (errno == EINTR)
        continue;
      int e = -errno;
      free(b);
      return e;
    }
    n += (size_t)r;
    if (n > limit) {
      free(b);
      return KVDS_E_TOOBIG;
    }
  }
  *buf = b;
  *len = n;
  return 0;
}

int cli_write_all(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

int cli_parse_size_opt(const char *cmd, const char *opt, const char *s,
                       uint64_t *out) {
  if (kvds_parse_size(s, out) == 0)
    return CLI_OK;
  cli_err(cmd, "bad size for %s: '%s' (use e.g. 4096, 64KiB, 1MiB, 4GiB)", opt,
          s);
  return CLI_USAGE;
}

int cli_parse_u64_opt(const char *cmd, const char *opt, const char *s,
                      uint64_t *out) {
  if (kvds_parse_u64(s, out) == 0)
    return CLI_OK;
  cli_err(cmd, "bad number for %s: '%s' (want a non-negative integer)", opt, s);
  return CLI_USAGE;
}

int cli_parse_double_opt(const char *cmd, const char *opt, const char *s,
                         double *out) {
  char *end;
  errno = 0;
  double v = s && *s ? strtod(s, &end) : -1;
  if (!s || !*s || errno || *end || !(v >= 0)) {
    cli_err(cmd, "bad number for %s: '%s' (want e.g. 0.5 or 3)", opt,
            s ? s : "");
    return CLI_USAGE;
  }
  *out = v;
  return CLI_OK;
}

char *cli_log_tail(const char *path, off_t from, char *out, size_t cap) {
  out[0] = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return out;
  char buf[4096];
  struct stat st;
  off_t start = fstat(fd, &st) == 0 && st.st_size - from > (off_t)sizeof buf
                    ? st.st_size - (off_t)(sizeof buf - 1)
                    : from;
  ssize_t r = pread(fd, buf, sizeof buf - 1, start);
  close(fd);
  if (r <= 0)
    return out;
  buf[r] = 0;
  while (r > 0 && (buf[r - 1] == '\n' || buf[r - 1] == '\r'))
    buf[--r] = 0;
  char *line = strrchr(buf, '\n');
  line = line ? line + 1 : buf;
  /* "kvds worker [ERROR] msg" -> "msg": our own prefix says who. */
  char *tag =
      strncmp(line, "kvds worker [", 13) == 0 ? strstr(line, "] ") : NULL;
  if (tag)
    line = tag + 2;
  snprintf(out, cap, "%.*s", (int)cap - 1, line);
  return out;
}
