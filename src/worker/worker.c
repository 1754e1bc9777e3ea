/*
 * worker.c — start-up and main loop of the worker: configuration, the pool,
 * the listening sockets, the I/O threads (with their short busy-poll before
 * sleeping), signals and the HTTP endpoint.
 */
#include "worker/worker.h"

#include <errno.h>
#include <stdarg.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/addr.h"
#include "common/util.h"
#include "disk/disk.h" /* enum kvds_disk_fsync */
#include "kvds/kvds.h"
#include "net/ucx.h"
#include "worker/cluster/cluster.h"
#include "worker/server.h"
#include "worker/tier/tier.h"

static int g_log_level = 2;

#define logf_ kvds__logf
void kvds__logf(int level, const char *fmt, ...) {
  static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
  if (level > g_log_level)
    return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "kvds worker [%s] %s\n", names[level], msg);
}

static void member_log(void *arg, int level, const char *msg) {
  (void)arg;
  logf_(level, "cluster: %s", msg);
}

void kvds_worker_config_default(struct kvds_worker_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  snprintf(cfg->listen, sizeof cfg->listen, "%s", KVDS_DEFAULT_ADDR);
  cfg->memory = 4ull << 30;
  cfg->threads = 1;
  cfg->high_watermark = 0.95;
  cfg->eviction_ratio = 0.05;
  cfg->huge_pages = KVDS_POOL_HUGE_OFF;
  cfg->busy_poll_us = 200;
  cfg->frame_timeout_ms = 30000;
  cfg->min_rate = 1u << 20;
  cfg->idle_timeout_s = 300;
  cfg->ready_fd = -1;
  cfg->log_level = 2;
  cfg->pull_threads = 4;
  cfg->pull_timeout_ms = 4000;
  cfg->replicas = 1;
  cfg->tier = KVDS_TIER_DRAM;
  cfg->disk_policy = KVDS_DISK_SPILL;
  cfg->disk_fsync = KVDS_DISK_FSYNC_NONE;
  cfg->disk_threads = 2;
}

static const char *name_of(const char *const *names, int n, int v) {
  return v >= 0 && v < n ? names[v] : NULL;
}

const char *kvds_worker_tier_name(int tier) {
  static const char *const names[] = {
      [KVDS_TIER_DRAM] = "dram", [KVDS_TIER_POSIX] = "posix"};
  return name_of(names, 2, tier);
}

const char *kvds_worker_disk_policy_name(int policy) {
  static const char *const names[] = {[KVDS_DISK_SPILL] = "spill",
                                      [KVDS_DISK_WRITE_THROUGH] =
                                          "write-through",
                                      [KVDS_DISK_READ_ONLY] = "read-only"};
  return name_of(names, 3, policy);
}

const char *kvds_worker_transport_name(int transport) {
  static const char *const names[] = {[KVDS_TRANSPORT_AUTO] = "auto",
                                      [KVDS_TRANSPORT_TCP] = "tcp",
                                      [KVDS_TRANSPORT_UCX] = "ucx"};
  return name_of(names, 3, transport);
}

const char *kvds_worker_disk_fsync_name(int fsync) {
  static const char *const names[] = {
      [KVDS_DISK_FSYNC_NONE] = "none", [KVDS_DISK_FSYNC_OBJECT] = "object"};
  return name_of(names, 2, fsync);
}

/* The first disk setting cfg gives that differs from its default (as the
 * option that sets it), or NULL. */
static const char *disk_setting(const struct kvds_worker_config *cfg) {
  struct kvds_worker_config def;
  kvds_worker_config_default(&def);
  if (cfg->disk_dir[0])
    return "--disk-dir";
  if (cfg->disk_capacity != def.disk_capacity)
    return "--disk-capacity";
  if (cfg->disk_policy != def.disk_policy)
    return "--disk-policy";
  if (cfg->disk_fsync != def.disk_fsync)
    return "--fsync";
  if (cfg->disk_threads != def.disk_threads)
    return "--disk-threads";
  return NULL;
}

static int tier_check(const struct kvds_worker_config *cfg, char *err,
                      size_t errcap) {
  const char *disk = disk_setting(cfg);
  if (!kvds_worker_tier_name(cfg->tier))
    return kvds_errf(err, errcap, KVDS_E_INVAL, "--tier must be dram or posix");
  if (!kvds_worker_disk_policy_name(cfg->disk_policy))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--disk-policy must be spill, write-through or "
                     "read-only");
  if (!kvds_worker_disk_fsync_name(cfg->disk_fsync))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--fsync must be none or object");
  if (cfg->disk_threads < 1 || cfg->disk_threads > 64)
    return kvds_errf(err, errcap, KVDS_E_INVAL, "--disk-threads must be 1..64");
  if (cfg->tier == KVDS_TIER_POSIX && !cfg->disk_dir[0])
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--tier posix needs --disk-dir DIR (where the objects' "
                     "files go)");
  if (cfg->tier == KVDS_TIER_DRAM && disk)
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "%s is a disk tier setting, but the tier is dram "
                     "(objects in memory only): use --tier posix --disk-dir "
                     "DIR, or drop %s",
                     disk, disk);
  return 0;
}

int kvds_worker_socket_path(const char *listen, char *out, size_t cap) {
  char host[256];
  uint16_t port;
  int rc = kvds_split_hostport(listen, host, sizeof host, &port);
  if (rc)
    return rc;
  const char *dir = getenv("KVDS_RUN_DIR");
  if (!dir || !*dir)
    dir = "/tmp";
  int n = snprintf(out, cap, "%s/kvds-%u.sock", dir, (unsigned)port);
  return n < 0 || (size_t)n >= cap ? KVDS_E_ADDR : 0;
}

/* 1 if host is a wildcard address (listening on every interface). */
static int host_is_wildcard(const char *host) {
  return !host[0] || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 ||
         strcmp(host, "*") == 0;
}

/* The membership configuration cfg asks for (strings borrowed from cfg). */
static int membership_config(const struct kvds_worker_config *cfg,
                             struct kvds_membership_config *mc, char *err,
                             size_t errcap) {
  char host[256];
  uint16_t port;
  memset(mc, 0, sizeof *mc);
  if (cfg->etcd_address[0] && cfg->peers[0])
    return kvds_errf(
        err, errcap, KVDS_E_INVAL,
        "--etcd_address and --peers exclude each other (etcd finds the "
        "peers itself; --peers is for a cluster without etcd)");
  mc->mode = cfg->etcd_address[0] ? KVDS_MEMBERSHIP_ETCD
             : cfg->peers[0]      ? KVDS_MEMBERSHIP_STATIC
                                  : KVDS_MEMBERSHIP_EMBEDDED;
  const char *adv = cfg->advertise[0] ? cfg->advertise : cfg->listen;
  if (mc->mode != KVDS_MEMBERSHIP_EMBEDDED) {
    if (!adv[0])
      return kvds_errf(err, errcap, KVDS_E_INVAL,
                       "a cluster member needs a TCP address: give "
                       "--listen or --advertise-address");
    if (kvds_split_hostport(adv, host, sizeof host, &port) ||
        host_is_wildcard(host))
      return kvds_errf(err, errcap, KVDS_E_INVAL,
                       "%s %s is not an address peers can connect to: give "
                       "--advertise-address HOST:PORT",
                       cfg->advertise[0] ? "--advertise-address" : "--listen",
                       adv);
  }
  snprintf(mc->cluster, sizeof mc->cluster, "%s", cfg->cluster);
  snprintf(mc->self_addr, sizeof mc->self_addr, "%s",
           adv[0] ? adv : "127.0.0.1:0");
  mc->capacity = cfg->memory;
  mc->etcd = cfg->etcd_address;
  mc->peers = cfg->peers;
  mc->lease_ttl_s = cfg->lease_ttl_s;
  return 0;
}

int kvds_worker_config_check(const struct kvds_worker_config *cfg, char *err,
                             size_t errcap) {
  char host[256];
  uint16_t port;
  struct kvds_evict_policy p = {cfg->high_watermark, cfg->eviction_ratio};
  if (cfg->listen[0] &&
      kvds_split_hostport(cfg->listen, host, sizeof host, &port))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--listen '%s' is not host:port", cfg->listen);
  if (!cfg->listen[0] && !cfg->socket_path[0])
    return kvds_errf(err, errcap, KVDS_E_INVAL, "need --listen or --socket");
  if (cfg->memory < (1u << 20))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--memory must be at least 1MiB");
  if (cfg->threads < 1 || cfg->threads > 64)
    return kvds_errf(err, errcap, KVDS_E_INVAL, "--threads must be 1..64");
  if (cfg->http_port < 0 || cfg->http_port > 65535)
    return kvds_errf(err, errcap, KVDS_E_INVAL, "--http-port must be 0..65535");
  if (kvds_evict_policy_check(&p))
    return kvds_errf(
        err, errcap, KVDS_E_INVAL,
        "need 0 < eviction_high_watermark_ratio <= 1 and 0 <= "
        "eviction_ratio < eviction_high_watermark_ratio (got %g, %g)",
        cfg->high_watermark, cfg->eviction_ratio);
  if (cfg->busy_poll_us < 0 || cfg->busy_poll_us > 100000)
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--busy-poll-us must be 0..100000");
  if (cfg->frame_timeout_ms < 100)
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--frame-timeout-ms must be at least 100");
  if (cfg->min_rate > (1ull << 40))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--min-rate must be at most 1TiB (per second)");
  if (cfg->idle_timeout_s < 0 || cfg->idle_timeout_s > 7 * 86400)
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--idle-timeout-s must be 0..604800 (0: never)");
  if (cfg->max_connections < 0 || cfg->max_connections > (1 << 24))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--max-connections must be 0..16777216 (0: from the file "
                     "descriptor limit)");
  if (strlen(cfg->socket_path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
    return kvds_errf(err, errcap, KVDS_E_INVAL, "--socket path is too long");
  if (cfg->lease_ttl_s != 0 && !kvds_membership_ttl_ok(cfg->lease_ttl_s))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--lease-ttl must be %d..%d seconds",
                     KVDS_MEMBERSHIP_TTL_MIN_S, KVDS_MEMBERSHIP_TTL_MAX_S);
  if (cfg->pull_threads < 1 || cfg->pull_threads > 64)
    return kvds_errf(err, errcap, KVDS_E_INVAL, "--pull-threads must be 1..64");
  if (!kvds_worker_transport_name(cfg->transport))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--transport must be auto, tcp or ucx");
  if (cfg->transport == KVDS_TRANSPORT_UCX && !kvds_ucx_built())
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--transport ucx: this kvds was built without UCX "
                     "(install libucx-dev and build again)");
  if (cfg->pull_timeout_ms < 10 || cfg->pull_timeout_ms > 600000)
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--pull-timeout-ms must be 10..600000");
  gid_t gid;
  if (cfg->allow_group[0] && kvds__group_lookup(cfg->allow_group, &gid))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--allow-group %s: no such group", cfg->allow_group);
  if (cfg->replicas < 1 || cfg->replicas > KVDS_REPLICAS_MAX)
    return kvds_errf(err, errcap, KVDS_E_INVAL, "--replicas must be 1..%d",
                     KVDS_REPLICAS_MAX);
  if (cfg->replicas > 1 && !cfg->etcd_address[0] && !cfg->peers[0])
    return kvds_errf(
        err, errcap, KVDS_E_INVAL,
        "--replicas %d needs a cluster (--etcd_address or --peers)",
        cfg->replicas);
  if (tier_check(cfg, err, errcap))
    return KVDS_E_INVAL;
  struct kvds_membership_config mc;
  kvds_membership *mem = NULL;
  if (membership_config(cfg, &mc, err, errcap) ||
      kvds_membership_create(&mc, &mem, err, errcap))
    return KVDS_E_INVAL;
  kvds_membership_destroy(mem);
  if (cfg->auth_token_file[0]) {
    struct kvds_auth_token tok;
    int rc = kvds_auth_token_load(cfg->auth_token_file, &tok, err, errcap);
    kvds_auth_token_wipe(&tok);
    if (rc)
      return KVDS_E_INVAL;
  } else if (cfg->listen[0] && !kvds_host_is_loopback(host)) {
    return kvds_errf(
        err, errcap, KVDS_E_INVAL,
        "--listen %s is not a loopback address: anyone who can reach it "
        "could use the worker, so give --auth-token-file FILE (a shared "
        "secret of at least %d bytes, mode 0600) or listen on 127.0.0.1",
        cfg->listen, KVDS_AUTH_TOKEN_MIN);
  }
  return 0;
}

static int listen_tcp(const char *addr, int *out) {
  char host[256], portstr[8];
  uint16_t port;
  int rc = kvds_split_hostport(addr, host, sizeof host, &port);
  if (rc)
    return rc;
  snprintf(portstr, sizeof portstr, "%u", (unsigned)port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *ai;
  if ((rc = getaddrinfo(host, portstr, &hints, &ai)))
    return KVDS_E_ADDR;
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    rc = -errno;
    goto out;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1024)) {
    rc = -errno;
    close(fd);
    goto out;
  }
  *out = fd;
  rc = 0;
out:
  freeaddrinfo(ai);
  return rc;
}

/* Binds the Unix socket. A stale socket file (nobody answers) is replaced;
 * a live one means another worker owns the path. */
/* mode != 0: the socket file gets it (and group, unless (gid_t)-1) before
 * anyone can connect (chmod between bind and listen). */
static int listen_unix(const char *path, mode_t mode, gid_t group, int *out) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  size_t pl = strlen(path);
  if (pl >= sizeof sa.sun_path)
    return -ENAMETOOLONG;
  memcpy(sa.sun_path, path, pl + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa)) {
    int e = -errno;
    if (e != -EADDRINUSE) {
      close(fd);
      return e;
    }
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int live =
        probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (probe >= 0)
      close(probe);
    if (live || unlink(path) || bind(fd, (struct sockaddr *)&sa, sizeof sa)) {
      close(fd);
      return live ? -EADDRINUSE : e;
    }
  }
  if ((mode && chmod(path, mode)) ||
      (group != (gid_t)-1 && chown(path, (uid_t)-1, group))) {
    int e = -errno;
    close(fd);
    unlink(path);
    return e;
  }
  if (listen(fd, 1024)) {
    int e = -errno;
    close(fd);
    return e;
  }
  *out = fd;
  return 0;
}

/* MemAvailable from /proc/meminfo in bytes, 0 if unknown. */
static uint64_t mem_available(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f)
    return 0;
  char line[256];
  unsigned long long kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
      break;
  fclose(f);
  return (uint64_t)kb * 1024u;
}

/* The connection cap when --max-connections is not given: RLIMIT_NOFILE
 * less a reserve (1/16 of it, 32..4096, at most half) for what else needs
 * descriptors: listeners, the pool, event loops, HTTP clients, connections
 * to peers and etcd, connections being refused. */
static int default_max_conns(uint64_t *nofile) {
  struct rlimit rl;
  uint64_t n = 1024;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    n = rl.rlim_cur == RLIM_INFINITY ? (1u << 24) : (uint64_t)rl.rlim_cur;
  if (n > (1u << 24))
    n = 1u << 24;
  uint64_t reserve = n / 16;
  if (reserve < 32)
    reserve = 32;
  if (reserve > 4096)
    reserve = 4096;
  if (reserve > n / 2)
    reserve = n / 2;
  *nofile = n;
  return n - reserve > 0 ? (int)(n - reserve) : 1;
}

/* Connections refused at the cap that may wait for their first request at
 * once (each holds a descriptor for up to a second); more are closed
 * without an answer. */
#define REFUSING_MAX 8

/* At most one log line per thread and 10 s about the connection cap. */
static void limit_log(struct io_thread *th, const char *what) {
  uint64_t now = kvds_now_us();
  if (now - th->limit_log_us < 10000000u)
    return;
  th->limit_log_us = now;
  logf_(1, "%d connections open (--max-connections): %s", th->srv->max_conns,
        what);
}

/* Another thread with an idle connection to close (one that never sent a
 * request, if `fresh_only`), the one with the most; NULL if none. */
static struct io_thread *thread_with_idle(struct io_thread *th,
                                          int fresh_only) {
  struct kvds_server *s = th->srv;
  struct io_thread *best = NULL;
  unsigned most = 0;
  for (int pass = 0; pass < (fresh_only ? 1 : 2) && !best; pass++) {
    for (int i = 0; i < s->nthreads; i++) {
      struct io_thread *o = &s->threads[i];
      unsigned n = atomic_load(pass ? &o->idle_used : &o->idle_fresh);
      if (o != th && n > most) {
        most = n;
        best = o;
      }
    }
  }
  return best;
}

/* Queues a new connection for thread `to`; 0 if its queue is full. */
static int handoff(struct io_thread *to, int fd, int is_unix) {
  pthread_mutex_lock(&to->handoff_lock);
  int ok = to->nhandoff < HANDOFF_MAX;
  if (ok) {
    to->handoff[to->nhandoff++] = (struct handoff){fd, (uint8_t)is_unix};
    atomic_fetch_add(&to->nhanded, 1);
  }
  pthread_mutex_unlock(&to->handoff_lock);
  if (ok)
    event_active(to->handoff_ev, EV_READ, 0);
  return ok;
}

/*
 * Takes a new connection on th. At --max-connections the least recently
 * active idle connection is closed for it — one that never sent a request
 * before any other — th's own, or another thread's (which then takes the
 * new connection: a thread closes only its own). With none idle the new
 * connection is refused: its first request is answered KVDS_E_LIMIT (a few
 * at a time; beyond that it is closed at once). `handed`: it came from
 * another thread, which looked already.
 */
static void admit(struct io_thread *th, int fd, int is_unix, int handed) {
  struct kvds_server *s = th->srv;
  int refuse = 0;
  if (atomic_load(&s->connections) >= (uint64_t)s->max_conns) {
    struct conn *v = kvds__conn_victim(th);
    struct io_thread *to = NULL;
    if (!handed && (!v || v->nreq))
      to = thread_with_idle(th, v != NULL);
    if (to && handoff(to, fd, is_unix))
      return;
    if (v) {
      atomic_fetch_add(&s->closed_for_room, 1);
      limit_log(th, "closing the least recently active idle ones for new");
      kvds__conn_close(v);
    } else {
      refuse = 1;
      atomic_fetch_add(&s->refused, 1);
      limit_log(th, "none idle, refusing new ones (KVDS_E_LIMIT)");
      if (atomic_load(&s->refusing) >= REFUSING_MAX) {
        close(fd);
        return;
      }
    }
  }
  if (!kvds__conn_new(th, fd, is_unix, refuse)) {
    logf_(1, "out of memory for a new connection");
    close(fd);
  }
}

/* The thread with the fewest TCP connections (counting those handed to
 * it and not taken yet); th when it is one of them. */
static struct io_thread *fewest_tcp(struct io_thread *th) {
  struct kvds_server *s = th->srv;
  struct io_thread *best = th;
  unsigned least = atomic_load(&th->ntcp) + atomic_load(&th->nhanded);
  for (int i = 0; i < s->nthreads; i++) {
    struct io_thread *o = &s->threads[i];
    unsigned n = atomic_load(&o->ntcp) + atomic_load(&o->nhanded);
    if (n < least) {
      least = n;
      best = o;
    }
  }
  return best;
}

/* Connections handed over by other threads (at the cap, or to spread
 * them). */
static void on_handoff(evutil_socket_t fd, short what, void *arg) {
  struct io_thread *th = arg;
  (void)fd;
  (void)what;
  for (;;) {
    pthread_mutex_lock(&th->handoff_lock);
    struct handoff h = {.fd = -1};
    if (th->nhandoff) {
      h = th->handoff[--th->nhandoff];
      atomic_fetch_sub(&th->nhanded, 1);
    }
    pthread_mutex_unlock(&th->handoff_lock);
    if (h.fd < 0)
      break;
    admit(th, h.fd, h.is_unix, 1);
  }
}

static void on_accept(evutil_socket_t lfd, short what, void *arg) {
  struct io_thread *th = arg;
  struct kvds_server *s = th->srv;
  (void)what;
  int is_unix = lfd == s->unix_fd;
  for (int i = 0; i < 64; i++) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED)
        return;
      /* Out of fds or memory: the listener stays readable, so stop
       * listening for a moment instead of spinning, and log rarely. */
      uint64_t now = kvds_now_us();
      if (now - th->accept_log_us > 10000000u) {
        logf_(1, "accept: %s; pausing new connections for 100 ms", strerror(e));
        th->accept_log_us = now;
      }
      for (int k = 0; k < 2; k++)
        if (th->listen_ev[k])
          event_del(th->listen_ev[k]);
      struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
      evtimer_add(th->resume_ev, &tv);
      return;
    }
    if (!is_unix) {
      /* Keepalive and a user timeout notice a peer that vanished without a
       * FIN (host down, partition): its pins and writes are released. */
      int one = 1, idle = 30, intvl = 5, cnt = 3;
      unsigned int uto = (unsigned int)s->cfg.frame_timeout_ms;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
      setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof uto);
      /* Spread TCP connections over the I/O threads: whichever thread
       * wakes first accepts, so the busiest (still polling) would take
       * them all, and a peer's parallel pulls would be sent from one
       * core. At --max-connections it stays here: only the accepting
       * thread may close another thread's idle connection to make room. */
      struct io_thread *to = fewest_tcp(th);
      if (to != th && atomic_load(&s->connections) < (uint64_t)s->max_conns &&
          handoff(to, fd, 0))
        continue;
    }
    admit(th, fd, is_unix, 0);
  }
}

static void on_resume(evutil_socket_t fd, short what, void *arg) {
  struct io_thread *th = arg;
  (void)fd;
  (void)what;
  for (int k = 0; k < 2; k++)
    if (th->listen_ev[k])
      event_add(th->listen_ev[k], NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)what;
  logf_(2, "signal %d: stopping", (int)sig);
  kvds__server_stop(arg);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  kvds__conn_sweep(arg, kvds_now_us());
}

/* Wakes a thread's loop (kvds__server_stop); nothing else to do. */
static void on_wake(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
}

static int thread_setup(struct kvds_server *s, struct io_thread *th) {
  th->srv = s;
  pthread_mutex_init(&th->handoff_lock, NULL);
  th->base = event_base_new();
  th->discard = malloc(64u << 10);
  if (!th->base || !th->discard)
    return -ENOMEM;
  int fds[2] = {s->tcp_fd, s->unix_fd};
  for (int i = 0; i < 2; i++) {
    if (fds[i] < 0)
      continue;
    th->listen_ev[i] =
        event_new(th->base, fds[i], EV_READ | EV_PERSIST, on_accept, th);
    if (!th->listen_ev[i] || event_add(th->listen_ev[i], NULL))
      return -ENOMEM;
  }
  th->wake_ev = event_new(th->base, -1, 0, on_wake, th);
  th->sweep_ev = event_new(th->base, -1, EV_PERSIST, on_sweep, th);
  th->resume_ev = evtimer_new(th->base, on_resume, th);
  th->handoff_ev = event_new(th->base, -1, 0, on_handoff, th);
  struct timeval tv = {.tv_sec = 1};
  if (kvds_waitbox_create(th->base, &s->store, kvds__server_on_answer,
                          kvds__server_after_answer, &th->waits))
    return -ENOMEM;
  if (!th->wake_ev || !th->sweep_ev || !th->resume_ev || !th->handoff_ev ||
      event_add(th->sweep_ev, &tv))
    return -ENOMEM;
  return 0;
}

/* Runs a thread's loop. After any activity it keeps polling without
 * sleeping for busy_poll_us: a sleeping vCPU takes ~50 us to wake, a request
 * arriving while we spin is answered in a few. */
static void thread_loop(struct io_thread *th) {
  struct kvds_server *s = th->srv;
  uint64_t spin = (uint64_t)s->cfg.busy_poll_us;
  while (!atomic_load(&s->stopping)) {
    if (spin && kvds_now_us() - th->last_activity_us < spin) {
      event_base_loop(th->base, EVLOOP_NONBLOCK);
      /* The client we wait for may share this CPU: let it run. */
      sched_yield();
    } else
      event_base_loop(th->base, EVLOOP_ONCE);
  }
}

static void *thread_main(void *arg) {
  thread_loop(arg);
  return NULL;
}

static void thread_teardown(struct io_thread *th) {
  while (th->conns)
    kvds__conn_close(th->conns);
  for (int i = 0; i < th->nhandoff; i++)
    close(th->handoff[i].fd);
  th->nhandoff = 0;
  if (th->handoff_ev)
    event_free(th->handoff_ev);
  if (th->srv)
    pthread_mutex_destroy(&th->handoff_lock);
  for (int i = 0; i < 2; i++)
    if (th->listen_ev[i])
      event_free(th->listen_ev[i]);
  kvds_waitbox_destroy(th->waits);
  if (th->wake_ev)
    event_free(th->wake_ev);
  if (th->sweep_ev)
    event_free(th->sweep_ev);
  if (th->resume_ev)
    event_free(th->resume_ev);
  if (th->base)
    event_base_free(th->base);
  free(th->discard);
}

/* --transport: opens UCX over the pool when it is asked for (ucx: a
 * failure stops the start) or when auto finds an RDMA device (a failure
 * leaves TCP, with a warning). A single node reads no peers: no UCX. */
static int transport_start(struct kvds_server *s) {
  int want = s->cfg.transport;
  char dev[64] = "";
  size_t cap = sizeof s->transport_why;
  if (kvds_membership_mode(s->members) == KVDS_MEMBERSHIP_EMBEDDED) {
    snprintf(s->transport_why, cap, "single node: no peers to read");
    return 0;
  }
  if (want == KVDS_TRANSPORT_TCP) {
    snprintf(s->transport_why, cap, "--transport tcp");
    return 0;
  }
  if (want == KVDS_TRANSPORT_AUTO) {
    if (!kvds_ucx_built()) {
      snprintf(s->transport_why, cap, "auto: built without UCX");
      return 0;
    }
    if (!kvds_ucx_fabric(dev, sizeof dev)) {
      snprintf(s->transport_why, cap,
               "auto: no RDMA device (/sys/class/infiniband is empty)");
      return 0;
    }
  }
  char err[256] = "";
  int rc =
      kvds_ucx_open(s->pool.base, s->pool.total_size, &s->ucx, err, sizeof err);
  if (rc) {
    if (want == KVDS_TRANSPORT_UCX) {
      logf_(0, "--transport ucx: %s", err);
      return rc;
    }
    logf_(1,
          "--transport auto: RDMA device %s, but UCX did not start (%s): "
          "peers are read over TCP",
          dev, err);
    snprintf(s->transport_why, cap, "auto: UCX did not start: %s", err);
    return 0;
  }
  if (want == KVDS_TRANSPORT_UCX)
    snprintf(s->transport_why, cap, "--transport ucx (UCX_TLS=%s)",
             kvds_ucx_tls(s->ucx));
  else
    snprintf(s->transport_why, cap, "auto: RDMA device %s (UCX_TLS=%s)", dev,
             kvds_ucx_tls(s->ucx));
  logf_(2, "peers' pools are read over UCX: %s", s->transport_why);
  return 0;
}

int kvds_worker_run(const struct kvds_worker_config *cfg) {
  return kvds__worker_run_with(cfg, NULL);
}

int kvds__worker_run_with(const struct kvds_worker_config *cfg,
                          const struct kvds_resolver *resolver) {
  struct kvds_server *s = calloc(1, sizeof *s);
  struct event *sigs[2] = {0};
  char err[256];
  int rc;
  if (!s)
    return -ENOMEM;
  s->cfg = *cfg;
  s->tcp_fd = s->unix_fd = -1;
  g_log_level = cfg->log_level;
  if ((rc = kvds_worker_config_check(cfg, err, sizeof err))) {
    logf_(0, "%s", err);
    goto out;
  }
  signal(SIGPIPE, SIG_IGN);
  evthread_use_pthreads();
  s->start_us = kvds_now_us();
  if (getrandom(&s->nonce, sizeof s->nonce, 0) != sizeof s->nonce)
    s->nonce = kvds_now_ns() ^ (uint64_t)getpid();

  if (cfg->auth_token_file[0]) {
    if ((rc = kvds_auth_token_load(cfg->auth_token_file, &s->token, err,
                                   sizeof err))) {
      logf_(0, "%s", err);
      goto out;
    }
    s->auth = 1;
  }
  if (cfg->socket_path[0])
    snprintf(s->socket_path, sizeof s->socket_path, "%s", cfg->socket_path);
  else if ((rc = kvds_worker_socket_path(cfg->listen, s->socket_path,
                                         sizeof s->socket_path))) {
    logf_(0, "cannot derive a socket path from --listen %s", cfg->listen);
    goto out;
  }
  if (cfg->listen[0] && (rc = listen_tcp(cfg->listen, &s->tcp_fd))) {
    logf_(0, "cannot listen on %s: %s", cfg->listen, kvds_strerror(rc));
    goto out;
  }
  /* The worker's user only (and --allow-group), whatever the umask; every
   * connection's user is checked as well (peercred.h). */
  s->access.owner = geteuid();
  s->access.has_group =
      cfg->allow_group[0] &&
      kvds__group_lookup(cfg->allow_group, &s->access.group) == 0;
  if ((rc = listen_unix(s->socket_path, s->access.has_group ? 0660 : 0600,
                        s->access.has_group ? s->access.group : (gid_t)-1,
                        &s->unix_fd))) {
    logf_(0, "cannot listen on %s: %s%s", s->socket_path, kvds_strerror(rc),
          rc == -EADDRINUSE ? " (another worker is running there)"
          : rc == -EPERM && s->access.has_group
              ? " (to give the socket to --allow-group, this user must be "
                "a member of the group)"
              : "");
    goto out;
  }

  uint64_t avail = mem_available();
  if (avail && cfg->memory > avail) {
    char want[32], have[32];
    logf_(0,
          "--memory %s is more than this machine has available (%s); "
          "reserving it would invoke the OOM killer",
          kvds_fmt_bytes(cfg->memory, want, sizeof want),
          kvds_fmt_bytes(avail, have, sizeof have));
    rc = -ENOMEM;
    goto out;
  }
  /* A disk directory that will not do fails the start before the pool is
   * reserved (which takes seconds for a large one). */
  if ((rc = kvds__tier_open(s)))
    goto out;
  uint64_t t0 = kvds_now_us();
  if ((rc = kvds_pool_create(&s->pool, "kvds-pool", cfg->memory,
                             (enum kvds_pool_huge)cfg->huge_pages))) {
    logf_(0, "cannot create a %llu-byte pool: %s",
          (unsigned long long)cfg->memory, kvds_strerror(rc));
    goto out;
  }
  struct kvds_evict_policy pol = {cfg->high_watermark, cfg->eviction_ratio};
  if ((rc = kvds_store_init(&s->store, &s->pool, &pol, cfg->max_object,
                            kvds_wait_on_seal, s))) {
    logf_(0, "cannot set up the store: %s", kvds_strerror(rc));
    goto out;
  }
  char sz[32];
  logf_(2, "pool of %s ready in %llu ms%s",
        kvds_fmt_bytes(s->pool.data_size, sz, sizeof sz),
        (unsigned long long)(kvds_now_us() - t0) / 1000,
        s->pool.huge ? " (huge pages)" : "");

  uint64_t nofile;
  s->max_conns = default_max_conns(&nofile);
  if (cfg->max_connections > 0) {
    if (cfg->max_connections > s->max_conns)
      logf_(1,
            "--max-connections %d is more than RLIMIT_NOFILE %llu leaves "
            "room for (%d): new connections may fail to be accepted",
            cfg->max_connections, (unsigned long long)nofile, s->max_conns);
    s->max_conns = cfg->max_connections;
  }
  s->max_writing = cfg->max_writing ? cfg->max_writing : s->pool.data_size / 4;
  char mw[32], rate[32], mr[40] = "none", it[32] = "none";
  if (cfg->idle_timeout_s)
    snprintf(it, sizeof it, "%d s", cfg->idle_timeout_s);
  if (cfg->min_rate)
    snprintf(mr, sizeof mr, "%s/s",
             kvds_fmt_bytes(cfg->min_rate, rate, sizeof rate));
  logf_(2,
        "limits: %d connections, idle timeout %s, min rate %s, %s being "
        "written per connection",
        s->max_conns, it, mr, kvds_fmt_bytes(s->max_writing, mw, sizeof mw));

  s->nthreads = cfg->threads;
  s->threads = calloc((size_t)s->nthreads, sizeof *s->threads);
  if (!s->threads) {
    rc = -ENOMEM;
    goto out;
  }
  for (int i = 0; i < s->nthreads; i++) {
    s->threads[i].idx = i;
    if ((rc = thread_setup(s, &s->threads[i]))) {
      logf_(0, "cannot set up I/O thread %d", i);
      goto out;
    }
  }
  sigs[0] = evsignal_new(s->threads[0].base, SIGINT, on_signal, s);
  sigs[1] = evsignal_new(s->threads[0].base, SIGTERM, on_signal, s);
  if (!sigs[0] || !sigs[1] || evsignal_add(sigs[0], NULL) ||
      evsignal_add(sigs[1], NULL)) {
    rc = -ENOMEM;
    goto out;
  }
  /* The membership exists before anything that may read it (HTTP, I/O
   * threads answering CLUSTER); it starts talking to etcd once they run. */
  struct kvds_membership_config mc;
  err[0] = 0;
  if ((rc = membership_config(cfg, &mc, err, sizeof err)) == 0) {
    mc.log = member_log;
    mc.on_change = kvds__cluster_on_view;
    mc.change_arg = s;
    rc = kvds_membership_create(&mc, &s->members, err, sizeof err);
  }
  if (rc) {
    logf_(0, "cannot set up the cluster membership: %s",
          err[0] ? err : kvds_strerror(rc));
    goto out;
  }
  if (cfg->http_port) {
    char host[256] = "127.0.0.1";
    uint16_t port;
    if (cfg->listen[0])
      kvds_split_hostport(cfg->listen, host, sizeof host, &port);
    if ((rc = kvds__http_start(s, host, cfg->http_port,
                               s->auth && !kvds_host_is_loopback(host),
                               &s->http))) {
      logf_(0, "cannot serve HTTP on %s:%d: %s", host, cfg->http_port,
            kvds_strerror(rc));
      goto out;
    }
  }
  /* The disk tier before the cluster, which announces what it holds. */
  if ((rc = kvds__tier_start(s)))
    goto out;
  if ((rc = transport_start(s)))
    goto out;
  /* The resolver is set before any I/O thread may read it. */
  if ((rc = kvds__cluster_start(s))) {
    logf_(0, "cannot start the cluster's threads: %s", kvds_strerror(rc));
    goto out;
  }
  if (resolver)
    s->resolver = *resolver;
  for (int i = 1; i < s->nthreads; i++) {
    if ((rc = -pthread_create(&s->threads[i].tid, NULL, thread_main,
                              &s->threads[i]))) {
      logf_(0, "cannot start I/O thread %d", i);
      kvds__server_stop(s);
      for (int k = 1; k < i; k++)
        pthread_join(s->threads[k].tid, NULL);
      goto out;
    }
  }
  if ((rc = kvds_membership_start(s->members))) {
    logf_(0, "cannot set up the cluster membership: %s",
          err[0] ? err : kvds_strerror(rc));
    kvds__server_stop(s);
    for (int k = 1; k < s->nthreads; k++)
      pthread_join(s->threads[k].tid, NULL);
    goto out;
  }
  if (mc.mode == KVDS_MEMBERSHIP_ETCD)
    logf_(2, "cluster %s via etcd %s as %s (lease TTL %d s)",
          mc.cluster[0] ? mc.cluster : KVDS_MEMBERSHIP_DEFAULT_CLUSTER,
          cfg->etcd_address, mc.self_addr,
          cfg->lease_ttl_s ? cfg->lease_ttl_s : KVDS_MEMBERSHIP_DEFAULT_TTL_S);
  else if (mc.mode == KVDS_MEMBERSHIP_STATIC)
    logf_(2, "static cluster: %zu members (--peers)",
          kvds_membership_size(s->members));
  logf_(2, "serving on %s%s%s (pid %d, %d thread%s%s)",
        cfg->listen[0] ? cfg->listen : "", cfg->listen[0] ? " and " : "",
        s->socket_path, (int)getpid(), s->nthreads, s->nthreads > 1 ? "s" : "",
        s->auth ? ", TCP clients must authenticate" : "");
  if (cfg->ready_fd >= 0) {
    ssize_t w = write(cfg->ready_fd, "1", 1);
    (void)w;
    close(cfg->ready_fd);
  }
  thread_loop(&s->threads[0]);
  /* Leave the cluster first: the lease is revoked while the others can
   * still reach us, so they drop us at once. */
  kvds_membership_stop(s->members);
  for (int i = 1; i < s->nthreads; i++)
    pthread_join(s->threads[i].tid, NULL);
  logf_(2, "stopped");
  rc = 0;
out:
  if (s->http)
    kvds__http_stop(s->http);
  /* Resolvers let go of every wait before the boxes go (the cluster: its
   * threads joined, queued jobs dropped); the disk tier first, as it hands
   * misses on to the cluster. */
  kvds__tier_stop(s);
  kvds_resolver_stop(&s->resolver);
  kvds__cluster_stop(s);
  kvds_ucx_close(s->ucx); /* after the cluster: its endpoints are gone */
  kvds__tier_free(s);
  kvds_membership_destroy(s->members);
  for (int i = 0; i < 2; i++)
    if (sigs[i])
      event_free(sigs[i]);
  if (s->threads)
    for (int i = 0; i < s->nthreads; i++)
      thread_teardown(&s->threads[i]);
  free(s->threads);
  if (s->unix_fd >= 0) {
    close(s->unix_fd);
    unlink(s->socket_path);
  }
  if (s->tcp_fd >= 0)
    close(s->tcp_fd);
  if (s->store.index.buckets)
    kvds_store_fini(&s->store);
  kvds_pool_destroy(&s->pool);
  kvds_auth_token_wipe(&s->token);
  free(s);
  return rc;
}
