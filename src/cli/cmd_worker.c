/* cmd_worker.c — `kvds worker`: flags -> struct kvds_worker_config, then
 * kvds_worker_run(), in the foreground or as a daemon. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cluster/membership.h"
#include "common/clock.h"
#include "common/util.h"
#include "worker/worker.h"

static const char *const CMD = "worker";

static const char HELP[] =
    "usage: kvds worker [options]\n"
    "\n"
    "Runs the worker: creates the shared-memory pool, listens on TCP and on a\n"
    "Unix socket (clients on the same host map the pool through it), and\n"
    "serves until SIGINT/SIGTERM or 'kvds stop'.\n"
    "\n"
    "  -l, --listen HOST:PORT   TCP listener (default 127.0.0.1:31501;\n"
    "                           --worker_address is the same)\n"
    "      --socket PATH        Unix socket (default $KVDS_RUN_DIR or /tmp,\n"
    "                           + /kvds-<port>.sock)\n"
    "  -m, --memory SIZE        pool size for objects, e.g. 256MiB, 4GiB\n"
    "                           (default 4GiB; --shared_memory_size_mb N\n"
    "                           gives it in MiB)\n"
    "  -t, --threads N          I/O threads (default 1)\n"
    "      --http-port P        serve /metrics, /health, /status on P\n"
    "                           of the --listen host (default 0: off); off\n"
    "                           loopback /metrics and /status want\n"
    "                           'Authorization: Bearer <token>'\n"
    "      --eviction_high_watermark_ratio R, --high-watermark R\n"
    "                           evict when used > R x capacity (default "
    "0.95)\n"
    "      --eviction_ratio R, --eviction-ratio R\n"
    "                           ... down to (high - R) x capacity (default "
    "0.05)\n"
    "      --huge-pages off|try|on  back the pool with huge pages "
    "(default off)\n"
    "      --busy-poll-us N     spin N us for more requests before sleeping\n"
    "                           (default 200)\n"
    "      --frame-timeout-ms N close a connection that stalls in the middle\n"
    "                           of a request, or of a reply it is owed, this\n"
    "                           long (default 30000)\n"
    "      --min-rate SIZE      bytes/s a request or reply in progress must\n"
    "                           move over each --frame-timeout-ms window once\n"
    "                           it lasts longer than that; else the "
    "connection\n"
    "                           is closed and its writes aborted (default\n"
    "                           1MiB; 0: no minimum)\n"
    "      --max-writing-per-conn SIZE\n"
    "                           bytes one connection may hold in objects\n"
    "                           being written (created and not sealed, PUTs\n"
    "                           in flight); more is KVDS_E_NOSPACE, but one\n"
    "                           object alone always fits (default: a quarter\n"
    "                           of the pool)\n"
    "      --idle-timeout-s N   close a connection that holds nothing (no\n"
    "                           pins, writes or waiting GETs) after N s\n"
    "                           without traffic (default 300; 0: never)\n"
    "      --max-connections N  at N open connections, close the least\n"
    "                           recently active idle one for a new one, or\n"
    "                           refuse it (KVDS_E_LIMIT) if none is idle\n"
    "                           (default: RLIMIT_NOFILE less a reserve)\n"
    "      --max-object SIZE    largest value accepted (default: pool size)\n"
    "      --auth-token-file F  TCP clients and peers must prove this shared\n"
    "                           secret (file of >= 16 bytes, mode 0600;\n"
    "                           clients read $KVDS_AUTH_TOKEN_FILE); required\n"
    "                           when --listen is not a loopback address\n"
    "      --allow-group G      besides this worker's user (and root), the\n"
    "                           members of group G may use its Unix socket\n"
    "                           and loopback TCP without the token (default:\n"
    "                           nobody else; others must prove the token)\n"
    "      --log-level L        error, warn, info or debug (default info)\n"
    "  -d, --daemon             detach; returns 0 once the worker serves\n"
    "                           (waits up to 30 s + 0.5 s per GiB of pool),\n"
    "                           else prints why and returns 1\n"
    "      --pidfile FILE       write the worker's pid here; removed on exit\n"
    "      --log-file FILE      append the worker's output here (default\n"
    "                           with --daemon: the socket path with .log for\n"
    "                           .sock, e.g. /tmp/kvds-31501.log)\n"
    "\n"
    "Cluster membership (docs/cluster.md; default: a single node):\n"
    "      --etcd_address LIST, --etcd LIST\n"
    "                           join through etcd: host:port[,host:port...]\n"
    "                           (items may be etcd://host:port or http://)\n"
    "      --cluster NAME       cluster name: the key prefix\n"
    "                           /kvds/NAME/workers/ (default kvds)\n"
    "      --lease-ttl S        etcd lease TTL: a worker that stops renewing\n"
    "                           leaves every view within S s (default 10)\n"
    "      --peers LIST         static cluster without etcd: the other\n"
    "                           workers' host:port[,host:port...]\n"
    "      --advertise-address HOST:PORT\n"
    "                           the data address peers use (default: "
    "--listen;\n"
    "                           required when listening on 0.0.0.0)\n"
    "      --pull-threads N     threads pulling objects from peers (default\n"
    "                           4; each peer gets as many connections)\n"
    "      --pull-timeout-ms MS deadline of a read the cluster resolves\n"
    "                           (directory query + pull; default 4000)\n"
    "      --transport auto|tcp|ucx\n"
    "                           how peers' pools are read: ucx = one-sided\n"
    "                           reads over UCX (RDMA; UCX_TLS and\n"
    "                           UCX_NET_DEVICES apply), tcp = pulls over TCP;\n"
    "                           auto (default) = ucx when this machine has\n"
    "                           an RDMA device, else tcp. A peer without\n"
    "                           UCX is read over TCP (docs/transport.md)\n"
    "      --replicas N         keep N copies of each object sealed here:\n"
    "                           N - 1 other workers (rendezvous hashing)\n"
    "                           pull a copy in the background (default 1;\n"
    "                           --replica_num is the same)\n"
    "\n"
    "Disk tier (docs/tiers.md; default: memory only). Each flag also has an\n"
    "underscore spelling (--disk_dir, --disk_capacity, ...):\n"
    "      --tier dram|posix    dram: objects live in the pool only; posix:\n"
    "                           also as files under --disk-dir. --disk-dir\n"
    "                           alone implies posix; other disk flags with\n"
    "                           dram are an error (default dram)\n"
    "      --disk-dir DIR       directory of the objects' files (created;\n"
    "                           several workers may share it, e.g. on NFS)\n"
    "      --disk-capacity SIZE most bytes of files kept there, e.g. 512GiB;\n"
    "                           the least recently used go beyond it\n"
    "                           (default 0: no limit)\n"
    "      --disk-policy spill|write-through|read-only\n"
    "                           spill: objects leaving the pool are written\n"
    "                           (default); write-through: every seal is on\n"
    "                           disk before it returns; read-only: serve the\n"
    "                           files there, never write or remove any\n"
    "      --fsync none|object  object: fsync each file before it is renamed\n"
    "                           into place (default none)\n"
    "      --disk-threads N     threads doing the disk I/O (1..64, default 2)\n"
    "\n"
    "      --config FILE        read options from FILE first: a JSON object\n"
    "                           of long options (either spelling) and their\n"
    "                           values, e.g. {\"memory\": \"8GiB\", "
    "\"threads\":\n"
    "                           2, \"disk-dir\": \"/mnt/kv\"}; flags on the\n"
    "                           command line override it. UCM's\n"
    "                           store_pipeline, storage_backends and\n"
    "                           cache_buffer_capacity_gb are accepted\n"
    "                           (docs/tiers.md, Configuration)\n"
    "  -h, --help               this text\n";

enum {
  OPT_SOCKET = 256,
  OPT_MB,
  OPT_HTTP,
  OPT_HIGH,
  OPT_RATIO,
  OPT_HUGE,
  OPT_BUSY,
  OPT_FRAME_TIMEOUT,
  OPT_MIN_RATE,
  OPT_MAX_WRITING,
  OPT_IDLE_TIMEOUT,
  OPT_MAX_CONNS,
  OPT_MAXOBJ,
  OPT_LOGLEVEL,
  OPT_PIDFILE,
  OPT_LOGFILE,
  OPT_ETCD,
  OPT_AUTH,
  OPT_CLUSTER,
  OPT_TTL,
  OPT_PEERS,
  OPT_ADVERTISE,
  OPT_PULL_THREADS,
  OPT_PULL_TIMEOUT,
  OPT_REPLICAS,
  OPT_ALLOW_GROUP,
  OPT_CONFIG,
  OPT_TIER,
  OPT_DISK_DIR,
  OPT_DISK_CAPACITY,
  OPT_DISK_POLICY,
  OPT_FSYNC,
  OPT_DISK_THREADS,
  OPT_TRANSPORT,
};

static const struct option LONGOPTS[] = {
    {"listen", required_argument, NULL, 'l'},
    {"worker_address", required_argument, NULL, 'l'},
    {"socket", required_argument, NULL, OPT_SOCKET},
    {"memory", required_argument, NULL, 'm'},
    {"shared_memory_size_mb", required_argument, NULL, OPT_MB},
    {"threads", required_argument, NULL, 't'},
    {"http-port", required_argument, NULL, OPT_HTTP},
    {"eviction_high_watermark_ratio", required_argument, NULL, OPT_HIGH},
    {"high-watermark", required_argument, NULL, OPT_HIGH},
    {"eviction_ratio", required_argument, NULL, OPT_RATIO},
    {"eviction-ratio", required_argument, NULL, OPT_RATIO},
    {"huge-pages", required_argument, NULL, OPT_HUGE},
    {"busy-poll-us", required_argument, NULL, OPT_BUSY},
    {"frame-timeout-ms", required_argument, NULL, OPT_FRAME_TIMEOUT},
    {"min-rate", required_argument, NULL, OPT_MIN_RATE},
    {"max-writing-per-conn", required_argument, NULL, OPT_MAX_WRITING},
    {"idle-timeout-s", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"max-connections", required_argument, NULL, OPT_MAX_CONNS},
    {"max-object", required_argument, NULL, OPT_MAXOBJ},
    {"log-level", required_argument, NULL, OPT_LOGLEVEL},
    {"daemon", no_argument, NULL, 'd'},
    {"pidfile", required_argument, NULL, OPT_PIDFILE},
    {"log-file", required_argument, NULL, OPT_LOGFILE},
    {"etcd_address", required_argument, NULL, OPT_ETCD},
    {"etcd", required_argument, NULL, OPT_ETCD},
    {"auth-token-file", required_argument, NULL, OPT_AUTH},
    {"auth_token_file", required_argument, NULL, OPT_AUTH},
    {"cluster", required_argument, NULL, OPT_CLUSTER},
    {"lease-ttl", required_argument, NULL, OPT_TTL},
    {"lease_ttl", required_argument, NULL, OPT_TTL},
    {"peers", required_argument, NULL, OPT_PEERS},
    {"advertise-address", required_argument, NULL, OPT_ADVERTISE},
    {"advertise_address", required_argument, NULL, OPT_ADVERTISE},
    {"pull-threads", required_argument, NULL, OPT_PULL_THREADS},
    {"pull-timeout-ms", required_argument, NULL, OPT_PULL_TIMEOUT},
    {"replicas", required_argument, NULL, OPT_REPLICAS},
    {"replica_num", required_argument, NULL, OPT_REPLICAS},
    {"allow-group", required_argument, NULL, OPT_ALLOW_GROUP},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"tier", required_argument, NULL, OPT_TIER},
    {"disk-dir", required_argument, NULL, OPT_DISK_DIR},
    {"disk_dir", required_argument, NULL, OPT_DISK_DIR},
    {"disk-capacity", required_argument, NULL, OPT_DISK_CAPACITY},
    {"disk_capacity", required_argument, NULL, OPT_DISK_CAPACITY},
    {"disk-policy", required_argument, NULL, OPT_DISK_POLICY},
    {"disk_policy", required_argument, NULL, OPT_DISK_POLICY},
    {"fsync", required_argument, NULL, OPT_FSYNC},
    {"disk-threads", required_argument, NULL, OPT_DISK_THREADS},
    {"disk_threads", required_argument, NULL, OPT_DISK_THREADS},
    {"transport", required_argument, NULL, OPT_TRANSPORT},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

struct worker_opts {
  struct kvds_worker_config cfg;
  int daemon;
  int tier_given;  /* --tier (or the file's store_pipeline) was given */
  const char *who; /* error prefix: CMD, or CMD + the config file's key */
  char pidfile[PATH_MAX];
  char log_file[PATH_MAX];
};

static int copy_str(const char *who, const char *opt, const char *v, char *dst,
                    size_t cap) {
  if (strlen(v) >= cap) {
    cli_err(who, "%s is too long (at most %zu bytes)", opt, cap - 1);
    return CLI_USAGE;
  }
  memcpy(dst, v, strlen(v) + 1);
  return CLI_OK;
}

static int parse_int(const char *who, const char *opt, const char *v,
                     int *out) {
  uint64_t n;
  int rc = cli_parse_u64_opt(who, opt, v, &n);
  if (rc)
    return rc;
  if (n > INT_MAX) {
    cli_err(who, "%s %s is out of range", opt, v);
    return CLI_USAGE;
  }
  *out = (int)n;
  return CLI_OK;
}

static int parse_ratio(const char *who, const char *opt, const char *v,
                       double *out) {
  if (kvds_parse_ratio(v, out) == 0)
    return CLI_OK;
  cli_err(who, "bad ratio for %s: '%s' (want a number in [0, 1])", opt, v);
  return CLI_USAGE;
}

static int parse_choice(const char *who, const char *opt, const char *v,
                        const char *const *names, int n, int *out) {
  for (int i = 0; i < n; i++)
    if (strcmp(v, names[i]) == 0) {
      *out = i;
      return CLI_OK;
    }
  cli_err(who, "bad value for %s: '%s'", opt, v);
  return CLI_USAGE;
}

/* The same over the worker's names of the tier settings (worker.h). */
static int parse_named(const char *who, const char *opt, const char *v,
                       const char *(*name)(int), int *out) {
  const char *names[8];
  int n = 0;
  while (n < 8 && (names[n] = name(n)))
    n++;
  return parse_choice(who, opt, v, names, n, out);
}

static int parse_opt(struct worker_opts *o, int c, const char *v) {
  /* Index order matches enum kvds_pool_huge and the worker's log levels. */
  static const char *const huge[] = {"off", "try", "on"};
  static const char *const levels[] = {"error", "warn", "info", "debug"};
  struct kvds_worker_config *cfg = &o->cfg;
  const char *who = o->who;
  uint64_t n;
  int rc = CLI_OK;
  switch (c) {
  case 'l':
    return copy_str(who, "--listen", v, cfg->listen, sizeof cfg->listen);
  case OPT_SOCKET:
    return copy_str(who, "--socket", v, cfg->socket_path,
                    sizeof cfg->socket_path);
  case 'm':
    return cli_parse_size_opt(who, "--memory", v, &cfg->memory);
  case OPT_MB:
    if ((rc = cli_parse_u64_opt(who, "--shared_memory_size_mb", v, &n)))
      return rc;
    if (n > (UINT64_MAX >> 20)) {
      cli_err(who, "--shared_memory_size_mb %s is out of range", v);
      return CLI_USAGE;
    }
    cfg->memory = n << 20;
    return CLI_OK;
  case 't':
    return parse_int(who, "--threads", v, &cfg->threads);
  case OPT_HTTP:
    return parse_int(who, "--http-port", v, &cfg->http_port);
  case OPT_HIGH:
    return parse_ratio(who,
                       "--eviction_high_watermark_ratio (--high-watermark)", v,
                       &cfg->high_watermark);
  case OPT_RATIO:
    return parse_ratio(who, "--eviction_ratio (--eviction-ratio)", v,
                       &cfg->eviction_ratio);
  case OPT_HUGE:
    return parse_choice(who, "--huge-pages (off, try or on)", v, huge, 3,
                        &cfg->huge_pages);
  case OPT_BUSY:
    return parse_int(who, "--busy-poll-us", v, &cfg->busy_poll_us);
  case OPT_FRAME_TIMEOUT:
    return parse_int(who, "--frame-timeout-ms", v, &cfg->frame_timeout_ms);
  case OPT_MIN_RATE:
    return cli_parse_size_opt(who, "--min-rate", v, &cfg->min_rate);
  case OPT_MAX_WRITING:
    return cli_parse_size_opt(who, "--max-writing-per-conn", v,
                              &cfg->max_writing);
  case OPT_IDLE_TIMEOUT:
    return parse_int(who, "--idle-timeout-s", v, &cfg->idle_timeout_s);
  case OPT_MAX_CONNS:
    return parse_int(who, "--max-connections", v, &cfg->max_connections);
  case OPT_MAXOBJ:
    return cli_parse_size_opt(who, "--max-object", v, &cfg->max_object);
  case OPT_LOGLEVEL:
    return parse_choice(who, "--log-level (error, warn, info or debug)", v,
                        levels, 4, &cfg->log_level);
  case OPT_AUTH:
    return copy_str(who, "--auth-token-file", v, cfg->auth_token_file,
                    sizeof cfg->auth_token_file);
  case 'd':
    o->daemon = 1;
    return CLI_OK;
  case OPT_PIDFILE:
    return copy_str(who, "--pidfile", v, o->pidfile, sizeof o->pidfile);
  case OPT_LOGFILE:
    return copy_str(who, "--log-file", v, o->log_file, sizeof o->log_file);
  case OPT_ETCD:
    return copy_str(who, "--etcd_address", v, cfg->etcd_address,
                    sizeof cfg->etcd_address);
  case OPT_CLUSTER:
    return copy_str(who, "--cluster", v, cfg->cluster, sizeof cfg->cluster);
  case OPT_TTL:
    if ((rc = parse_int(who, "--lease-ttl", v, &cfg->lease_ttl_s)))
      return rc;
    if (!kvds_membership_ttl_ok(cfg->lease_ttl_s)) {
      cli_err(who, "--lease-ttl must be %d..%d seconds (got %s)",
              KVDS_MEMBERSHIP_TTL_MIN_S, KVDS_MEMBERSHIP_TTL_MAX_S, v);
      return CLI_USAGE;
    }
    return CLI_OK;
  case OPT_PEERS:
    return copy_str(who, "--peers", v, cfg->peers, sizeof cfg->peers);
  case OPT_ADVERTISE:
    return copy_str(who, "--advertise-address", v, cfg->advertise,
                    sizeof cfg->advertise);
  case OPT_PULL_THREADS:
    return parse_int(who, "--pull-threads", v, &cfg->pull_threads);
  case OPT_PULL_TIMEOUT:
    return parse_int(who, "--pull-timeout-ms", v, &cfg->pull_timeout_ms);
  case OPT_REPLICAS:
    return parse_int(who, "--replicas", v, &cfg->replicas);
  case OPT_ALLOW_GROUP:
    return copy_str(who, "--allow-group", v, cfg->allow_group,
                    sizeof cfg->allow_group);
  case OPT_TIER:
    o->tier_given = 1;
    return parse_named(who, "--tier (dram or posix)", v, kvds_worker_tier_name,
                       &cfg->tier);
  case OPT_DISK_DIR:
    return copy_str(who, "--disk-dir", v, cfg->disk_dir, sizeof cfg->disk_dir);
  case OPT_DISK_CAPACITY:
    return cli_parse_size_opt(who, "--disk-capacity", v, &cfg->disk_capacity);
  case OPT_DISK_POLICY:
    return parse_named(who, "--disk-policy (spill, write-through or read-only)",
                       v, kvds_worker_disk_policy_name, &cfg->disk_policy);
  case OPT_FSYNC:
    return parse_named(who, "--fsync (none or object)", v,
                       kvds_worker_disk_fsync_name, &cfg->disk_fsync);
  case OPT_DISK_THREADS:
    return parse_int(who, "--disk-threads", v, &cfg->disk_threads);
  case OPT_TRANSPORT:
    return parse_named(who, "--transport (auto, tcp or ucx)", v,
                       kvds_worker_transport_name, &cfg->transport);
  case OPT_CONFIG:
    cli_err(who, "--config cannot be given in a config file");
    return CLI_USAGE;
  case 'h':
    cli_err(who, "--help is not a setting");
    return CLI_USAGE;
  default:
    return CLI_USAGE;
  }
}

/* ---- pidfile ------------------------------------------------------------ */

static long read_pidfile(const char *path) {
  char buf[32] = {0};
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0;
  ssize_t r = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (r <= 0)
    return 0;
  buf[strcspn(buf, "\n")] = 0;
  uint64_t pid;
  return kvds_parse_u64(buf, &pid) == 0 && pid <= INT_MAX ? (long)pid : 0;
}

static int write_pidfile(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return -errno;
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
  int rc = cli_write_all(fd, buf, (size_t)n);
  close(fd);
  return rc;
}

static void remove_pidfile(const char *path) {
  if (path[0] && read_pidfile(path) == (long)getpid())
    unlink(path);
}

/* Refuses to start over a pidfile that names a live process. */
static int check_pidfile(const char *path) {
  long pid = path[0] ? read_pidfile(path) : 0;
  if (pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM)) {
    cli_err(CMD, "pidfile %s names a running process (pid %ld)", path, pid);
    return CLI_FAIL;
  }
  return CLI_OK;
}

/* ---- running ------------------------------------------------------------ */

static int serve(struct worker_opts *o) {
  if (o->pidfile[0]) {
    int rc = write_pidfile(o->pidfile);
    if (rc) {
      cli_err(CMD, "cannot write pidfile %s: %s", o->pidfile,
              kvds_strerror(rc));
      return CLI_FAIL;
    }
  }
  int rc = kvds_worker_run(&o->cfg);
  remove_pidfile(o->pidfile);
  return rc ? CLI_FAIL : CLI_OK;
}

static int open_log(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0)
    cli_err(CMD, "cannot open log file %s: %s", path, strerror(errno));
  return fd;
}

/* The default daemon log: the socket path with ".log" for ".sock". */
static int default_log_path(const struct kvds_worker_config *cfg, char *out,
                            size_t cap) {
  char sock[256];
  if (cfg->socket_path[0])
    snprintf(sock, sizeof sock, "%s", cfg->socket_path);
  else if (kvds_worker_socket_path(cfg->listen, sock, sizeof sock))
    return KVDS_E_ADDR;
  size_t n = strlen(sock);
  if (n > 5 && strcmp(sock + n - 5, ".sock") == 0)
    sock[n - 5] = 0;
  snprintf(out, cap, "%s.log", sock);
  return 0;
}

/* Parent side of --daemon: waits for the child's "1" on the ready pipe. */
static int await_ready(pid_t pid, int rfd, const char *log, off_t log_from,
                       int timeout_s) {
  uint64_t deadline = kvds_deadline_ms((int64_t)timeout_s * 1000);
  char c = 0;
  for (;;) {
    uint64_t now = kvds_now_us();
    if (now >= deadline) {
      kill(pid, SIGTERM);
      cli_err(CMD,
              "worker (pid %d) did not become ready within %d s; stopped it "
              "(log: %s)",
              (int)pid, timeout_s, log);
      return CLI_FAIL;
    }
    struct pollfd p = {.fd = rfd, .events = POLLIN};
    int n = poll(&p, 1, kvds_deadline_left_ms(deadline, now));
    if (n < 0 && errno == EINTR)
      continue;
    if (n == 0)
      continue;
    ssize_t r = read(rfd, &c, 1);
    if (r < 0 && errno == EINTR)
      continue;
    break;
  }
  if (c == '1')
    return CLI_OK;

  /* The pipe closed without "1": the child is exiting; collect its status. */
  int status = 0, reaped = 0;
  for (int i = 0; i < 100 && !reaped; i++) {
    reaped = waitpid(pid, &status, WNOHANG) == pid;
    if (!reaped)
      kvds_sleep_ms(20);
  }
  char why[64], line[512];
  if (!reaped)
    snprintf(why, sizeof why, "closed its ready pipe");
  else if (WIFSIGNALED(status))
    snprintf(why, sizeof why, "killed by signal %d", WTERMSIG(status));
  else
    snprintf(why, sizeof why, "exit status %d", WEXITSTATUS(status));
  cli_log_tail(log, log_from, line, sizeof line);
  if (line[0])
    cli_err(CMD, "worker failed to start: %s (%s; log: %s)", line, why, log);
  else
    cli_err(CMD, "worker failed to start (%s; log: %s)", why, log);
  return CLI_FAIL;
}

static int daemonize(struct worker_opts *o) {
  char logbuf[300];
  const char *log = o->log_file;
  if (!log[0]) {
    if (default_log_path(&o->cfg, logbuf, sizeof logbuf)) {
      cli_err(CMD, "cannot derive a log path; give --log-file");
      return CLI_USAGE;
    }
    log = logbuf;
  }
  int logfd = open_log(log);
  if (logfd < 0)
    return CLI_FAIL;
  struct stat st;
  off_t log_from = fstat(logfd, &st) == 0 ? st.st_size : 0;
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) < 0) {
    cli_err(CMD, "pipe: %s", strerror(errno));
    close(logfd);
    return CLI_FAIL;
  }
  pid_t pid = fork();
  if (pid < 0) {
    cli_err(CMD, "fork: %s", strerror(errno));
    close(logfd);
    close(pfd[0]);
    close(pfd[1]);
    return CLI_FAIL;
  }
  if (pid == 0) {
    close(pfd[0]);
    setsid();
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull >= 0)
      dup2(devnull, STDIN_FILENO);
    dup2(logfd, STDOUT_FILENO);
    dup2(logfd, STDERR_FILENO);
    o->cfg.ready_fd = pfd[1];
    exit(serve(o));
  }
  close(pfd[1]);
  close(logfd);
  int timeout_s = 30 + (int)((o->cfg.memory >> 30) / 2);
  int rc = await_ready(pid, pfd[0], log, log_from, timeout_s);
  close(pfd[0]);
  return rc;
}

/* cli_option_fn for the config file. */
static int set_from_file(void *arg, int val, const char *value,
                         const char *who) {
  struct worker_opts *o = arg;
  o->who = who;
  int rc = parse_opt(o, val, value);
  o->who = CMD;
  return rc;
}

/* The first pass over argv: --config FILE (once), or --help. *path stays
 * NULL without --config. */
static int find_config(int argc, char **argv, const char **path, int *help) {
  int c, first = 1;
  *path = NULL;
  while ((c = cli_getopt(CMD, argc, argv, "l:m:t:dh", LONGOPTS, &first)) !=
         -1) {
    if (c == '?')
      return CLI_USAGE;
    if (c == 'h')
      *help = 1;
    if (c != OPT_CONFIG)
      continue;
    if (*path) {
      cli_err(CMD, "--config given twice (%s, %s)", *path, optarg);
      return CLI_USAGE;
    }
    *path = optarg;
  }
  return CLI_OK;
}

int cmd_worker(int argc, char **argv) {
  struct worker_opts o = {.daemon = 0, .who = CMD};
  kvds_worker_config_default(&o.cfg);
  /* The file first, then every flag over it, wherever --config stands. */
  const char *config;
  int help = 0;
  int rc = find_config(argc, argv, &config, &help);
  if (rc)
    return rc;
  if (help) {
    fputs(HELP, stdout);
    return CLI_OK;
  }
  if (config &&
      (rc = cli_worker_file_load(config, LONGOPTS, set_from_file, &o)))
    return rc;
  int c, first = 1;
  while ((c = cli_getopt(CMD, argc, argv, "l:m:t:dh", LONGOPTS, &first)) !=
         -1) {
    if (c == OPT_CONFIG)
      continue;
    if ((rc = parse_opt(&o, c, optarg)))
      return rc;
  }
  if (optind < argc) {
    cli_err(CMD, "unexpected argument '%s' (see kvds help worker)",
            argv[optind]);
    return CLI_USAGE;
  }
  /* A directory alone asks for the disk tier (docs/tiers.md). */
  if (!o.tier_given && o.cfg.disk_dir[0])
    o.cfg.tier = KVDS_TIER_POSIX;
  char err[256] = "";
  if (kvds_worker_config_check(&o.cfg, err, sizeof err)) {
    cli_err(CMD, "%s", err[0] ? err : "invalid configuration");
    return CLI_USAGE;
  }
  if (check_pidfile(o.pidfile))
    return CLI_FAIL;
  if (o.daemon)
    return daemonize(&o);
  if (o.log_file[0]) {
    int fd = open_log(o.log_file);
    if (fd < 0)
      return CLI_FAIL;
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
  }
  return serve(&o);
}
