/*
 * redis.c — the Redis rows of `kvds bench peers`: a redis-server the bench
 * starts itself (no persistence, loopback) and a C client on hiredis, one
 * connection per client thread, one round trip per batch (MGET / MSET, or
 * GET / SET for a batch of one) (bench.h).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/bench/bench.h"
#include "common/clock.h"
#include "common/util.h"

#ifdef KVDS_HAVE_HIREDIS
#include <hiredis/hiredis.h>

#define REDIS_START_TIMEOUT_S 20
#define REDIS_IO_TIMEOUT_S 30

static redisContext *redis_connect(int port) {
  struct timeval tv = {.tv_sec = 2};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
  if (c && !c->err) {
    struct timeval io = {.tv_sec = REDIS_IO_TIMEOUT_S};
    redisSetTimeout(c, io);
    return c;
  }
  if (c)
    redisFree(c);
  return NULL;
}

/* The first line of `redis-server`'s log, trimmed, for a failed start. */
static const char *log_tail(const char *path, char *buf, size_t cap) {
  return cli_log_tail(path, 0, buf, cap);
}

int bench_redis_start(struct bench_redis *r, const char *dir, char *why,
                      size_t cap) {
  char exe[PATH_MAX];
  if (!bench_find_in_path("redis-server", exe, sizeof exe)) {
    snprintf(why, cap,
             "redis-server not found in $PATH (Debian: apt-get "
             "install redis-server)");
    return CLI_FAIL;
  }
  r->port = bench_free_port();
  if (r->port <= 0) {
    snprintf(why, cap, "no free loopback port");
    return CLI_FAIL;
  }
  char port[16];
  snprintf(port, sizeof port, "%d", r->port);
  snprintf(r->log, sizeof r->log, "%s/redis-%d.log", dir, r->port);
  /* no RDB, no AOF, no memory limit; its working directory is the bench's */
  const char *argv[] = {
      exe,  "--port",       port, "--bind",      "127.0.0.1", "--save",
      "",   "--appendonly", "no", "--dir",       dir,         "--daemonize",
      "no", "--logfile",    "",   "--databases", "1",         NULL};
  int rc = bench_spawn(&r->pid, argv, r->log, NULL, NULL);
  if (rc) {
    snprintf(why, cap, "cannot start redis-server: %s", kvds_strerror(rc));
    return CLI_FAIL;
  }
  uint64_t deadline = kvds_now_ns() + REDIS_START_TIMEOUT_S * 1000000000ull;
  char tail[256];
  for (;;) {
    int st;
    if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
      r->pid = 0;
      snprintf(why, cap, "redis-server exited while starting: %s",
               log_tail(r->log, tail, sizeof tail));
      return CLI_FAIL;
    }
    redisContext *c = redis_connect(r->port);
    redisReply *rep = c ? redisCommand(c, "INFO server") : NULL;
    if (rep && rep->type == REDIS_REPLY_STRING) {
      const char *v = strstr(rep->str, "redis_version:");
      if (v)
        snprintf(r->version, sizeof r->version, "%.*s",
                 (int)strcspn(v + 14, "\r\n"), v + 14);
      freeReplyObject(rep);
      redisFree(c);
      return CLI_OK;
    }
    if (rep)
      freeReplyObject(rep);
    if (c)
      redisFree(c);
    if (bench_stopped() || kvds_now_ns() > deadline) {
      snprintf(why, cap, "redis-server did not answer in %d s: %s",
               REDIS_START_TIMEOUT_S, log_tail(r->log, tail, sizeof tail));
      return CLI_FAIL;
    }
    kvds_sleep_ms(20);
  }
}

void bench_redis_stop(struct bench_redis *r) {
  bench_proc_stop(&r->pid, SIGTERM, 10);
  if (r->log[0]) {
    unlink(r->log);
    r->log[0] = '\0';
  }
}

/* One client thread's state in a case. */
struct rthread {
  redisContext *c;
  struct bench_keyset ks;
  const char **argv;
  size_t *argl;
  size_t j;      /* next slot */
  uint64_t call; /* calls made: where in src */
};

struct rcase {
  const struct bench_case *bc;
  struct rthread *t;
  char err[160];
};

/* Fills argv for a command over keys [j, j + batch) of thread t: GET/SET
 * for one value, MGET/MSET for more (values from t's slice of src). */
static size_t build_cmd(struct rcase *rc, struct rthread *th, int t, int put) {
  const struct bench_case *bc = rc->bc;
  size_t n = 0;
  uint64_t call = th->call++;
  th->argv[n] =
      bc->batch == 1 ? (put ? "SET" : "GET") : (put ? "MSET" : "MGET");
  th->argl[n] = strlen(th->argv[n]);
  n++;
  for (size_t i = 0; i < bc->batch; i++) {
    th->argv[n] = th->ks.iov[th->j + i].base;
    th->argl[n++] = th->ks.iov[th->j + i].len;
    if (put) {
      th->argv[n] = (const char *)bench_case_src(bc, t, call, i);
      th->argl[n++] = bc->size;
    }
  }
  return n;
}

/* Checks a reply: OK for a put, the values' sizes for a get. */
static int check_reply(const redisReply *rep, const struct bench_case *bc,
                       int put) {
  if (!rep)
    return -1;
  if (put)
    return rep->type == REDIS_REPLY_STATUS ? 0 : -1;
  if (bc->batch == 1)
    return rep->type == REDIS_REPLY_STRING && rep->len == bc->size ? 0 : -1;
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements != bc->batch)
    return -1;
  for (size_t i = 0; i < rep->elements; i++)
    if (rep->element[i]->type != REDIS_REPLY_STRING ||
        rep->element[i]->len != bc->size)
      return -1;
  return 0;
}

static int redis_call(void *ctx, int t, int put, uint64_t *timed_ns) {
  struct rcase *rc = ctx;
  struct rthread *th = &rc->t[t];
  size_t n = build_cmd(rc, th, t, put);
  uint64_t t0 = kvds_now_ns();
  redisReply *rep = redisCommandArgv(th->c, (int)n, th->argv, th->argl);
  *timed_ns = kvds_now_ns() - t0;
  int bad = check_reply(rep, rc->bc, put);
  if (bad && !rc->err[0])
    snprintf(rc->err, sizeof rc->err, "%s: %s", th->argv[0],
             th->c->err                              ? th->c->errstr
             : rep && rep->type == REDIS_REPLY_ERROR ? rep->str
                                                     : "unexpected reply");
  if (rep)
    freeReplyObject(rep);
  th->j += rc->bc->batch;
  if (th->j >= th->ks.n)
    th->j = 0;
  return bad ? -EIO : 0;
}

static int redis_get(void *ctx, int t, uint64_t *timed_ns) {
  return redis_call(ctx, t, 0, timed_ns);
}

static int redis_put(void *ctx, int t, uint64_t *timed_ns) {
  return redis_call(ctx, t, 1, timed_ns);
}

int bench_redis_case(const struct bench_redis *r, const struct bench_case *bc,
                     int put, struct bench_result *out, char *why, size_t cap) {
  struct rcase rc = {.bc = bc};
  int threads = bc->threads, ret = CLI_FAIL;
  size_t nslots = bench_case_slots(bc);
  rc.t = calloc((size_t)threads, sizeof *rc.t);
  if (!rc.t) {
    snprintf(why, cap, "out of memory");
    return CLI_FAIL;
  }
  for (int t = 0; t < threads; t++) {
    struct rthread *th = &rc.t[t];
    char tag[64];
    snprintf(tag, sizeof tag, "%d", t);
    th->argv = calloc(1 + 2 * bc->batch, sizeof *th->argv);
    th->argl = calloc(1 + 2 * bc->batch, sizeof *th->argl);
    if (!th->argv || !th->argl ||
        bench_keyset_make(&th->ks, "kvds-peers/redis/", tag, nslots)) {
      snprintf(why, cap, "out of memory");
      goto out;
    }
    if (!(th->c = redis_connect(r->port))) {
      snprintf(why, cap, "cannot connect to redis-server on port %d", r->port);
      goto out;
    }
  }
  if (!put) { /* the values to read, untimed */
    uint64_t ns;
    for (int t = 0; t < threads; t++)
      for (size_t j = 0; j < nslots; j += bc->batch)
        if (redis_put(&rc, t, &ns)) {
          snprintf(why, cap, "%s", rc.err);
          goto out;
        }
  }
  int err = bench_case_run(bc, put ? redis_put : redis_get, &rc, out);
  if (err) {
    snprintf(why, cap, "%s", rc.err[0] ? rc.err : kvds_strerror(err));
    goto out;
  }
  ret = CLI_OK;
out:
  for (int t = 0; t < threads; t++) {
    if (t == 0 && rc.t[t].c) {
      redisReply *rep = redisCommand(rc.t[t].c, "FLUSHALL");
      if (rep)
        freeReplyObject(rep);
    }
    if (rc.t[t].c)
      redisFree(rc.t[t].c);
    bench_keyset_free(&rc.t[t].ks);
    free(rc.t[t].argv);
    free(rc.t[t].argl);
  }
  free(rc.t);
  return ret;
}

#else /* built without hiredis */

int bench_redis_start(struct bench_redis *r, const char *dir, char *why,
                      size_t cap) {
  (void)r;
  (void)dir;
  snprintf(why, cap,
           "kvds was built without hiredis (install "
           "libhiredis-dev and rebuild)");
  return CLI_FAIL;
}

void bench_redis_stop(struct bench_redis *r) {
  (void)r;
}

int bench_redis_case(const struct bench_redis *r, const struct bench_case *bc,
                     int put, struct bench_result *out, char *why, size_t cap) {
  (void)r;
  (void)bc;
  (void)put;
  (void)out;
  snprintf(why, cap, "built without hiredis");
  return CLI_FAIL;
}

#endif
