/*
 * ucx.c — one-sided reads between workers' pools over UCX (see ucx.h).
 *
 * Locks: ep->post (posting reads, closing the endpoint) is never taken by
 * a UCX callback, and a callback takes only its read call's lock: the
 * UCP worker's own lock (held by whoever progresses, and by every UCP
 * call) never waits on ours while we hold one of ours across a UCP call
 * that a callback of another thread would need.
 */
#include "net/ucx.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "kvds/kvds.h"

int kvds_ucx_fabric(char *what, size_t cap) {
  DIR *d = opendir("/sys/class/infiniband");
  if (!d)
    return 0;
  int found = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.')
      continue;
    if (what && cap)
      snprintf(what, cap, "%s", e->d_name);
    found = 1;
    break;
  }
  closedir(d);
  return found;
}

#ifndef KVDS_HAVE_UCX

int kvds_ucx_built(void) {
  return 0;
}

int kvds_ucx_open(void *base, size_t len, struct kvds_ucx **out, char *err,
                  size_t errcap) {
  (void)base;
  (void)len;
  *out = NULL;
  snprintf(err, errcap, "this kvds was built without UCX (libucx-dev)");
  return KVDS_E_INVAL;
}

void kvds_ucx_close(struct kvds_ucx *u) {
  (void)u;
}

void kvds_ucx_info(const struct kvds_ucx *u, const void **blob, size_t *len) {
  (void)u;
  *blob = NULL;
  *len = 0;
}

const char *kvds_ucx_tls(const struct kvds_ucx *u) {
  (void)u;
  return "";
}

int kvds_ucx_ep_open(struct kvds_ucx *u, const void *blob, size_t len,
                     struct kvds_ucx_ep **out) {
  (void)u;
  (void)blob;
  (void)len;
  *out = NULL;
  return KVDS_E_INVAL;
}

void kvds_ucx_ep_ref(struct kvds_ucx_ep *ep) {
  (void)ep;
}
void kvds_ucx_ep_lanes(struct kvds_ucx_ep *ep, char *buf, size_t cap) {
  (void)ep;
  if (cap)
    *buf = 0;
}
void kvds_ucx_ep_unref(struct kvds_ucx_ep *ep) {
  (void)ep;
}
int kvds_ucx_ep_ok(const struct kvds_ucx_ep *ep) {
  (void)ep;
  return 0;
}
int kvds_ucx_read(struct kvds_ucx_ep *ep, const struct kvds_ucx_read *rd,
                  size_t n, uint64_t deadline_us) {
  (void)ep;
  (void)rd;
  (void)n;
  (void)deadline_us;
  return KVDS_E_PEER;
}

#else

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

/* The blob: u32 magic "KVUX", u32 version, u64 pool base, u64 pool length,
 * u32 address length, u32 rkey length, the UCP worker address, the packed
 * rkey. Little-endian, as the hosts (x86-64, aarch64). */
#define INFO_MAGIC 0x5855564bu
#define INFO_VERSION 1u
#define INFO_HDR 32
/* After a forced close, UCX completes the requests in flight with an error;
 * this is how long that may take before they are given up as stuck. */
#define CLOSE_GRACE_MS 2000
/* A healthy endpoint's close flushes first, for at most this long. */
#define FLUSH_MS 1000

struct kvds_ucx {
  ucp_context_h ctx;
  ucp_worker_h worker;
  ucp_mem_h memh;
  uint8_t *base;
  size_t len;
  uint8_t *info;
  size_t info_len;
  char tls[128];
  int efd;    /* the UCP worker's event fd */
  int stopfd; /* eventfd: the progress thread stops */
  pthread_t thread;
  int started;
  atomic_int stop;
};

struct kvds_ucx_ep {
  struct kvds_ucx *u;
  ucp_ep_h ep;
  ucp_rkey_h rkey;
  uint64_t rbase, rlen;
  atomic_int refs;
  atomic_int ok;
  atomic_size_t inflight; /* requests posted and not completed */
  pthread_mutex_t post;   /* posting vs closing */
  int closed;             /* post: the UCP endpoint is closed */
};

/* One kvds_ucx_read call: its requests in flight. */
struct rcall {
  pthread_mutex_t lock;
  pthread_cond_t cv;
  size_t pending;
  ucs_status_t err;
  struct kvds_ucx_ep *ep;
};

int kvds_ucx_built(void) {
  return 1;
}

static void put_u32(uint8_t *p, uint32_t v) {
  memcpy(p, &v, 4);
}
static void put_u64(uint8_t *p, uint64_t v) {
  memcpy(p, &v, 8);
}
static uint32_t get_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
static uint64_t get_u64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

static void *progress_main(void *arg) {
  struct kvds_ucx *u = arg;
  while (!atomic_load(&u->stop)) {
    while (ucp_worker_progress(u->worker))
      ;
    ucs_status_t st = ucp_worker_arm(u->worker);
    if (st == UCS_ERR_BUSY)
      continue; /* more to do right away */
    struct pollfd pf[2] = {{u->efd, POLLIN, 0}, {u->stopfd, POLLIN, 0}};
    /* not armed (an error): poll briefly instead of sleeping on the fd */
    (void)poll(pf, 2, st == UCS_OK ? 1000 : 1);
  }
  return NULL;
}

/* Progresses the worker from this thread until req is complete or ms
 * passed; 1 if it completed (req is then freed). */
static int wait_req(struct kvds_ucx *u, void *req, int ms) {
  uint64_t until = kvds_deadline_ms(ms);
  while (ucp_request_check_status(req) == UCS_INPROGRESS) {
    if (kvds_now_us() >= until)
      return 0;
    if (!ucp_worker_progress(u->worker))
      usleep(100);
  }
  ucp_request_free(req);
  return 1;
}

static int fail(char *err, size_t cap, int rc, const char *what,
                ucs_status_t st) {
  snprintf(err, cap, "UCX: %s: %s", what, ucs_status_string(st));
  return rc;
}

int kvds_ucx_open(void *base, size_t len, struct kvds_ucx **out, char *err,
                  size_t errcap) {
  *out = NULL;
  struct kvds_ucx *u = calloc(1, sizeof *u);
  if (!u)
    return -ENOMEM;
  u->base = base;
  u->len = len;
  u->efd = u->stopfd = -1;
  const char *tls = getenv("UCX_TLS");
  snprintf(u->tls, sizeof u->tls, "%s", tls && *tls ? tls : "all");
  int rc = KVDS_E_PEER;
  ucp_config_t *cfg = NULL;
  ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
  if (st != UCS_OK) {
    rc = fail(err, errcap, rc, "reading UCX_* settings", st);
    goto out;
  }
  ucp_params_t pp = {
      .field_mask =
          UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED,
      .features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP,
      .mt_workers_shared = 0,
  };
  st = ucp_init(&pp, cfg, &u->ctx);
  ucp_config_release(cfg);
  if (st != UCS_OK) {
    rc = fail(err, errcap, rc, "ucp_init (UCX_TLS, UCX_NET_DEVICES?)", st);
    goto out;
  }
  ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                            .thread_mode = UCS_THREAD_MODE_MULTI};
  if ((st = ucp_worker_create(u->ctx, &wp, &u->worker)) != UCS_OK) {
    rc = fail(err, errcap, rc, "ucp_worker_create", st);
    goto out;
  }
  ucp_worker_attr_t wa = {.field_mask = UCP_WORKER_ATTR_FIELD_THREAD_MODE};
  if (ucp_worker_query(u->worker, &wa) != UCS_OK ||
      wa.thread_mode != UCS_THREAD_MODE_MULTI) {
    snprintf(err, errcap,
             "UCX: this libucx has no thread support (--enable-mt)");
    goto out;
  }
  ucp_mem_map_params_t mp = {.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS |
                                           UCP_MEM_MAP_PARAM_FIELD_LENGTH,
                             .address = base,
                             .length = len};
  if ((st = ucp_mem_map(u->ctx, &mp, &u->memh)) != UCS_OK) {
    rc = fail(err, errcap, rc, "registering the pool (ucp_mem_map)", st);
    goto out;
  }
  void *rkey = NULL;
  size_t rkey_len = 0;
  if ((st = ucp_rkey_pack(u->ctx, u->memh, &rkey, &rkey_len)) != UCS_OK) {
    rc = fail(err, errcap, rc, "ucp_rkey_pack", st);
    goto out;
  }
  ucp_address_t *addr = NULL;
  size_t addr_len = 0;
  if ((st = ucp_worker_get_address(u->worker, &addr, &addr_len)) != UCS_OK) {
    ucp_rkey_buffer_release(rkey);
    rc = fail(err, errcap, rc, "ucp_worker_get_address", st);
    goto out;
  }
  u->info_len = INFO_HDR + addr_len + rkey_len;
  if (u->info_len <= KVDS_UCX_INFO_MAX && (u->info = malloc(u->info_len))) {
    put_u32(u->info, INFO_MAGIC);
    put_u32(u->info + 4, INFO_VERSION);
    put_u64(u->info + 8, (uint64_t)(uintptr_t)base);
    put_u64(u->info + 16, len);
    put_u32(u->info + 24, (uint32_t)addr_len);
    put_u32(u->info + 28, (uint32_t)rkey_len);
    memcpy(u->info + INFO_HDR, addr, addr_len);
    memcpy(u->info + INFO_HDR + addr_len, rkey, rkey_len);
  }
  ucp_worker_release_address(u->worker, addr);
  ucp_rkey_buffer_release(rkey);
  if (!u->info) {
    rc = -ENOMEM;
    snprintf(err, errcap, "UCX: worker address and rkey of %zu bytes",
             u->info_len);
    goto out;
  }
  if ((st = ucp_worker_get_efd(u->worker, &u->efd)) != UCS_OK) {
    rc = fail(err, errcap, rc, "ucp_worker_get_efd", st);
    goto out;
  }
  if ((u->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
    rc = -errno;
    snprintf(err, errcap, "UCX: eventfd: %s", strerror(errno));
    goto out;
  }
  int e = pthread_create(&u->thread, NULL, progress_main, u);
  if (e) {
    rc = -e;
    snprintf(err, errcap, "UCX: progress thread: %s", strerror(e));
    goto out;
  }
  u->started = 1;
  *out = u;
  return 0;
out:
  kvds_ucx_close(u);
  return rc;
}

void kvds_ucx_close(struct kvds_ucx *u) {
  if (!u)
    return;
  if (u->started) {
    atomic_store(&u->stop, 1);
    uint64_t one = 1;
    if (write(u->stopfd, &one, sizeof one) < 0) {
      /* the thread still sees stop within its poll's second */
    }
    pthread_join(u->thread, NULL);
  }
  if (u->stopfd >= 0)
    close(u->stopfd);
  if (u->memh)
    ucp_mem_unmap(u->ctx, u->memh);
  if (u->worker)
    ucp_worker_destroy(u->worker); /* the efd goes with it */
  if (u->ctx)
    ucp_cleanup(u->ctx);
  free(u->info);
  free(u);
}

void kvds_ucx_info(const struct kvds_ucx *u, const void **blob, size_t *len) {
  *blob = u->info;
  *len = u->info_len;
}

const char *kvds_ucx_tls(const struct kvds_ucx *u) {
  return u->tls;
}

static void ep_failed(void *arg, ucp_ep_h ep, ucs_status_t st) {
  struct kvds_ucx_ep *e = arg;
  (void)ep;
  (void)st;
  atomic_store(&e->ok, 0);
}

int kvds_ucx_ep_open(struct kvds_ucx *u, const void *blob, size_t len,
                     struct kvds_ucx_ep **out) {
  const uint8_t *b = blob;
  *out = NULL;
  if (len < INFO_HDR || len > KVDS_UCX_INFO_MAX || get_u32(b) != INFO_MAGIC ||
      get_u32(b + 4) != INFO_VERSION)
    return KVDS_E_PROTO;
  uint64_t alen = get_u32(b + 24), klen = get_u32(b + 28);
  if (!alen || !klen || INFO_HDR + alen + klen != len || !get_u64(b + 16))
    return KVDS_E_PROTO;
  struct kvds_ucx_ep *e = calloc(1, sizeof *e);
  if (!e)
    return -ENOMEM;
  e->u = u;
  e->rbase = get_u64(b + 8);
  e->rlen = get_u64(b + 16);
  atomic_init(&e->refs, 1);
  atomic_init(&e->ok, 1);
  atomic_init(&e->inflight, 0);
  pthread_mutex_init(&e->post, NULL);
  ucp_ep_params_t ep = {
      .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                    UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER,
      .address = (const ucp_address_t *)(b + INFO_HDR),
      .err_mode = UCP_ERR_HANDLING_MODE_PEER,
      .err_handler = {.cb = ep_failed, .arg = e},
  };
  if (ucp_ep_create(u->worker, &ep, &e->ep) != UCS_OK) {
    pthread_mutex_destroy(&e->post);
    free(e);
    return KVDS_E_PEER;
  }
  if (ucp_ep_rkey_unpack(e->ep, b + INFO_HDR + alen, &e->rkey) != UCS_OK) {
    e->rkey = NULL;
    atomic_store(&e->ok, 0);
    kvds_ucx_ep_unref(e);
    return KVDS_E_PEER;
  }
  *out = e;
  return 0;
}

void kvds_ucx_ep_ref(struct kvds_ucx_ep *e) {
  atomic_fetch_add(&e->refs, 1);
}

int kvds_ucx_ep_ok(const struct kvds_ucx_ep *e) {
  return atomic_load(&((struct kvds_ucx_ep *)e)->ok);
}

void kvds_ucx_ep_lanes(struct kvds_ucx_ep *e, char *buf, size_t cap) {
  if (!cap)
    return;
  *buf = 0;
  char *text = NULL;
  size_t tlen = 0;
  FILE *f = open_memstream(&text, &tlen);
  if (!f)
    return;
  pthread_mutex_lock(&e->post);
  if (!e->closed)
    ucp_ep_print_info(e->ep, f);
  pthread_mutex_unlock(&e->post);
  fclose(f);
  /* "#  lane[0]:  0:tcp/lo.0 md[0] -> ...": the word after "N:" */
  size_t at = 0;
  for (char *l = text; l && *l;) {
    char *nl = strchr(l, '\n');
    if (nl)
      *nl = 0;
    char *p = strstr(l, "lane[");
    if (p && (p = strchr(p, ':')) && (p = strchr(p + 1, ':'))) {
      p++;
      size_t n = strcspn(p, " \t");
      char name[64];
      snprintf(name, sizeof name, "%.*s", (int)n, p);
      char *dot = strrchr(name, '.');
      if (dot && dot > strchr(name, '/'))
        *dot = 0; /* "lo.0": the device's index */
      if (!strstr(buf, name) && at + strlen(name) + 2 < cap)
        at += (size_t)snprintf(buf + at, cap - at, "%s%s", at ? "," : "", name);
    }
    l = nl ? nl + 1 : NULL;
  }
  free(text);
}

/* Closes the endpoint (once): flushed when `force` is 0, else forced, which
 * completes every request in flight with an error. Then waits for the
 * requests in flight to come back: 0 if they did, -1 if not in time. */
static int ep_close(struct kvds_ucx_ep *e, int force) {
  struct kvds_ucx *u = e->u;
  pthread_mutex_lock(&e->post);
  if (!e->closed) {
    e->closed = 1;
    atomic_store(&e->ok, 0);
    ucp_request_param_t cp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                              .flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0};
    void *r = ucp_ep_close_nbx(e->ep, &cp);
    if (UCS_PTR_IS_PTR(r) &&
        !wait_req(u, r, force ? CLOSE_GRACE_MS : FLUSH_MS) && !force) {
      ucp_request_cancel(u->worker, r); /* the flush hangs */
      wait_req(u, r, CLOSE_GRACE_MS);
    }
  }
  pthread_mutex_unlock(&e->post);
  uint64_t until = kvds_deadline_ms(CLOSE_GRACE_MS);
  while (atomic_load(&e->inflight)) {
    if (kvds_now_us() >= until)
      return -1;
    if (!ucp_worker_progress(u->worker))
      usleep(100);
  }
  return 0;
}

void kvds_ucx_ep_unref(struct kvds_ucx_ep *e) {
  if (!e || atomic_fetch_sub(&e->refs, 1) != 1)
    return;
  if (ep_close(e, !atomic_load(&e->ok)))
    return; /* a request UCX never gave back uses e and its rkey: leaked */
  if (e->rkey)
    ucp_rkey_destroy(e->rkey);
  pthread_mutex_destroy(&e->post);
  free(e);
}

static void get_done(void *req, ucs_status_t st, void *ud) {
  struct rcall *c = ud;
  atomic_fetch_sub(&c->ep->inflight, 1);
  ucp_request_free(req);
  pthread_mutex_lock(&c->lock);
  if (st != UCS_OK && c->err == UCS_OK)
    c->err = st;
  if (--c->pending == 0)
    pthread_cond_signal(&c->cv);
  pthread_mutex_unlock(&c->lock); /* the last touch of c */
}

/* Waits for c->pending to reach 0 until `until` (µs); c->lock held. */
static void call_wait(struct rcall *c, uint64_t until) {
  while (c->pending) {
    uint64_t now = kvds_now_us();
    if (now >= until)
      return;
    uint64_t left = until - now;
    if (left > 100000)
      left = 100000; /* look again now and then */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(left / 1000000);
    ts.tv_nsec += (long)(left % 1000000) * 1000;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&c->cv, &c->lock, &ts);
  }
}

int kvds_ucx_read(struct kvds_ucx_ep *e, const struct kvds_ucx_read *rd,
                  size_t n, uint64_t deadline_us) {
  struct kvds_ucx *u = e->u;
  for (size_t i = 0; i < n; i++)
    if (!rd[i].len || rd[i].roff > e->rlen || rd[i].len > e->rlen - rd[i].roff)
      return KVDS_E_RANGE;
  /* on the heap: a request UCX never gives back keeps pointing at it */
  struct rcall *c = calloc(1, sizeof *c);
  if (!c)
    return -ENOMEM;
  c->ep = e;
  pthread_mutex_init(&c->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&c->cv, &ca);
  pthread_condattr_destroy(&ca);
  ucs_status_t err = UCS_OK;
  pthread_mutex_lock(&e->post);
  if (e->closed || !atomic_load(&e->ok))
    err = UCS_ERR_CONNECTION_RESET;
  for (size_t i = 0; i < n && err == UCS_OK; i++) {
    ucp_request_param_t p = {
        .op_attr_mask =
            UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = get_done,
        .user_data = c,
    };
    uint8_t *d = rd[i].dst;
    if (d >= u->base && d + rd[i].len <= u->base + u->len) {
      p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH; /* our pool: registered */
      p.memh = u->memh;
    }
    /* counted first: the callback may run on the progress thread at once */
    pthread_mutex_lock(&c->lock);
    c->pending++;
    pthread_mutex_unlock(&c->lock);
    atomic_fetch_add(&e->inflight, 1);
    ucs_status_ptr_t r =
        ucp_get_nbx(e->ep, d, rd[i].len, e->rbase + rd[i].roff, e->rkey, &p);
    if (!UCS_PTR_IS_PTR(r)) { /* done now, or failed now: no callback */
      atomic_fetch_sub(&e->inflight, 1);
      pthread_mutex_lock(&c->lock);
      c->pending--;
      pthread_mutex_unlock(&c->lock);
      if (UCS_PTR_IS_ERR(r))
        err = UCS_PTR_STATUS(r);
    }
  }
  pthread_mutex_unlock(&e->post);
  int timed_out = 0;
  if (err == UCS_OK) {
    ucp_worker_signal(u->worker); /* the progress thread picks them up */
    pthread_mutex_lock(&c->lock);
    call_wait(c, deadline_us);
    timed_out = c->pending > 0;
    err = c->err;
    pthread_mutex_unlock(&c->lock);
  }
  int rc = 0;
  if (timed_out || err != UCS_OK) {
    /* cancel what is still in flight: nothing may land after we return */
    atomic_store(&e->ok, 0);
    ep_close(e, 1);
    pthread_mutex_lock(&c->lock);
    call_wait(c, kvds_deadline_ms(CLOSE_GRACE_MS));
    int stuck = c->pending > 0;
    pthread_mutex_unlock(&c->lock);
    if (stuck)
      return KVDS_E_STATE; /* c is leaked: UCX still has requests on it */
    rc = timed_out ? KVDS_E_TIMEOUT : KVDS_E_PEER;
  }
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->lock);
  free(c);
  return rc;
}

#endif
