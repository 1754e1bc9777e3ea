/*
 * membership.c — cluster membership: the member record and view (pure
 * parts), and the etcd mode's keeper thread (lease grant, record put,
 * keepalive every TTL/3, rejoin) and watch handling.
 */
#include "cluster/membership.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/etcd.h"
#include "common/array.h"
#include "common/clock.h"
#include "common/util.h"
#include "kvds/kvds.h"

/* Retry after a failed etcd call: 100 ms doubling up to the renew interval
 * (and never more than 2 s), so a returning etcd is noticed quickly. */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000

struct kvds_membership {
  enum kvds_membership_mode mode;
  char cluster[KVDS_CLUSTER_NAME_MAX];
  char *etcd_eps;
  char prefix[KVDS_CLUSTER_NAME_MAX + 32];
  size_t plen;
  char key[KVDS_CLUSTER_NAME_MAX + 32 + KVDS_MEMBER_ID_MAX];
  size_t klen;
  struct kvds_member self;
  int ttl_s, timeout_ms;
  kvds_membership_log_fn log;
  void *log_arg;
  kvds_membership_change_fn on_change;
  void *change_arg;

  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct kvds__member_view view; /* under mu */
  uint64_t gen;                  /* under mu */
  int started, stopping, stopped;
  pthread_t keeper;
  kvds_etcd *etcd;
  kvds_etcd_watch *watch;
  struct watch_ctx *wctx; /* the watch callback's way to m */
  /* etcd state, under mu */
  int64_t lease;
  int etcd_ok;     /* the last keeper call succeeded */
  int ever_ok;     /* some keeper call succeeded once */
  int watch_up;    /* the watch stream is established */
  int need_put;    /* our key was deleted: put it again */
  int down_logged; /* "etcd unreachable" said for this outage */
  uint64_t rejoins;
  char last_error[256];
};

/* What the watch callback gets instead of m itself. If the watch's close
 * times out (a callback is stuck, e.g. in on_change), the watch thread may
 * still be inside m, or about to enter, after stop returned:
 *  - closed (set by stop then) turns any later callback away;
 *  - busy counts callbacks inside m; destroy leaves m to such a callback
 *    (orphan), which frees m and the context when it returns;
 *  - done: a callback ran after closed, so (one thread, stop already set)
 *    none can follow and destroy frees everything itself.
 * Otherwise (close timed out, no callback seen since) destroy frees m but
 * leaves the context, a few bytes, to a callback that may still come. */
struct watch_ctx {
  pthread_mutex_t mu;
  int closed, busy, orphan, done;
  kvds_membership *m;
};

/* ---- pure parts ---------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (jansson's rules: no overlongs,
 * no surrogates, at most U+10FFFF), 0 if there is none. */
static size_t utf8_seq(const unsigned char *s) {
  unsigned c = s[0];
  unsigned lo = 0x80, hi = 0xBF;
  size_t n;
  if (c < 0x80)
    return 1;
  if (c >= 0xC2 && c <= 0xDF)
    n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0)
      lo = 0xA0;
    else if (c == 0xED)
      hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F;
  } else
    return 0;
  if (s[1] < lo || s[1] > hi)
    return 0;
  for (size_t i = 2; i < n; i++)
    if (s[i] < 0x80 || s[i] > 0xBF)
      return 0;
  return n;
}

int kvds__utf8_ok(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    size_t n = utf8_seq(p);
    if (!n)
      return 0;
    p += n;
  }
  return 1;
}

void kvds__utf8_scrub(char *s) {
  unsigned char *p = (unsigned char *)s;
  while (*p) {
    size_t n = utf8_seq(p);
    if (!n) {
      *p++ = '?';
      continue;
    }
    p += n;
  }
}

int kvds__cluster_name_ok(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n >= KVDS_CLUSTER_NAME_MAX)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
      return 0;
  }
  return 1;
}

size_t kvds__member_prefix(const char *cluster, char *out, size_t cap) {
  int n = snprintf(out, cap, "/kvds/%s/workers/", cluster);
  return n < 0 || (size_t)n >= cap ? 0 : (size_t)n;
}

char *kvds__member_encode(const struct kvds_member *m, const char *cluster) {
  json_t *o = json_pack("{s:s,s:s,s:I,s:I,s:s}", "id", m->id, "addr", m->addr,
                        "capacity", (json_int_t)m->capacity, "epoch",
                        (json_int_t)m->epoch, "cluster", cluster);
  if (!o)
    return NULL;
  char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(o);
  return s;
}

int kvds__member_key_id(const char *prefix, const void *key, size_t klen,
                        char *id, size_t cap) {
  size_t plen = strlen(prefix);
  if (klen <= plen || memcmp(key, prefix, plen) != 0)
    return KVDS_E_PROTO;
  const char *p = (const char *)key + plen;
  size_t n = klen - plen;
  if (n >= cap || memchr(p, '/', n) || memchr(p, 0, n))
    return KVDS_E_PROTO;
  memcpy(id, p, n);
  id[n] = 0;
  return 0;
}

static int copy_json_str(const json_t *j, char *dst, size_t cap) {
  if (!json_is_string(j))
    return KVDS_E_PROTO;
  size_t n = json_string_length(j);
  const char *s = json_string_value(j);
  if (n == 0 || n >= cap || memchr(s, 0, n))
    return KVDS_E_PROTO;
  memcpy(dst, s, n + 1);
  return 0;
}

int kvds__member_decode(const char *prefix, const char *cluster,
                        const void *key, size_t klen, const void *val,
                        size_t vlen, struct kvds_member *out) {
  struct kvds_member m;
  char kid[KVDS_MEMBER_ID_MAX], cl[KVDS_CLUSTER_NAME_MAX];
  int rc = KVDS_E_PROTO;
  memset(&m, 0, sizeof m);
  if (kvds__member_key_id(prefix, key, klen, kid, sizeof kid) || !val || !vlen)
    return KVDS_E_PROTO;
  json_error_t jerr;
  json_t *o = json_loadb(val, vlen, JSON_REJECT_DUPLICATES, &jerr);
  if (!json_is_object(o))
    goto out;
  const json_t *cap = json_object_get(o, "capacity");
  const json_t *ep = json_object_get(o, "epoch");
  if (copy_json_str(json_object_get(o, "id"), m.id, sizeof m.id) ||
      copy_json_str(json_object_get(o, "addr"), m.addr, sizeof m.addr) ||
      copy_json_str(json_object_get(o, "cluster"), cl, sizeof cl) ||
      !json_is_integer(cap) || !json_is_integer(ep) ||
      json_integer_value(cap) < 0 || json_integer_value(ep) <= 0 ||
      strcmp(m.id, kid) != 0 || strcmp(cl, cluster) != 0)
    goto out;
  m.capacity = (uint64_t)json_integer_value(cap);
  m.epoch = (uint64_t)json_integer_value(ep);
  *out = m;
  rc = 0;
out:
  json_decref(o);
  return rc;
}

void kvds__view_free(struct kvds__member_view *v) {
  free(v->m);
  memset(v, 0, sizeof *v);
}

/* Index where id is or would go (lower bound). */
static size_t view_lower(const struct kvds__member_view *v, const char *id) {
  size_t lo = 0, hi = v->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (strcmp(v->m[mid].id, id) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

long kvds__view_find(const struct kvds__member_view *v, const char *id) {
  size_t i = view_lower(v, id);
  return i < v->n && strcmp(v->m[i].id, id) == 0 ? (long)i : -1;
}

int kvds__view_put(struct kvds__member_view *v, const struct kvds_member *m) {
  size_t i = view_lower(v, m->id);
  if (i < v->n && strcmp(v->m[i].id, m->id) == 0) {
    struct kvds_member *cur = &v->m[i];
    if (cur->epoch > m->epoch)
      return 0;
    if (strcmp(cur->addr, m->addr) == 0 && cur->capacity == m->capacity &&
        cur->epoch == m->epoch && cur->self == m->self)
      return 0;
    *cur = *m;
    return 1;
  }
  if (KVDS_ARRAY_GROW(v->m, v->cap, v->n + 1, 8))
    return -ENOMEM;
  memmove(&v->m[i + 1], &v->m[i], (v->n - i) * sizeof *v->m);
  v->m[i] = *m;
  v->n++;
  return 1;
}

int kvds__view_delete(struct kvds__member_view *v, const char *id) {
  long i = kvds__view_find(v, id);
  if (i < 0)
    return 0;
  memmove(&v->m[i], &v->m[i + 1], (v->n - (size_t)i - 1) * sizeof *v->m);
  v->n--;
  return 1;
}

/* ---- logging ------------------------------------------------------------- */

static void mlog(kvds_membership *m, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void mlog(kvds_membership *m, int level, const char *fmt, ...) {
  if (!m->log)
    return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  m->log(m->log_arg, level, msg);
}

/* ---- life cycle ---------------------------------------------------------- */

/* Adds the --peers list to m's view. */
static int add_peers(kvds_membership *m, const char *peers, char *err,
                     size_t errcap) {
  const char *p = peers;
  while (*p) {
    size_t n = strcspn(p, ",");
    struct kvds_member pm;
    char host[KVDS_MEMBER_ID_MAX];
    uint16_t port;
    memset(&pm, 0, sizeof pm);
    if (n == 0 || n >= sizeof pm.addr)
      return kvds_errf(err, errcap, KVDS_E_ADDR, "--peers: bad item '%.*s'",
                       (int)n, p);
    memcpy(pm.addr, p, n);
    pm.addr[n] = 0;
    if (kvds_split_hostport(pm.addr, host, sizeof host, &port))
      return kvds_errf(err, errcap, KVDS_E_ADDR,
                       "--peers: '%s' is not host:port", pm.addr);
    memcpy(pm.id, pm.addr, n + 1);
    if (strcmp(pm.id, m->self.id) != 0 && kvds__view_put(&m->view, &pm) < 0)
      return -ENOMEM;
    p += n;
    if (*p == ',')
      p++;
  }
  return 0;
}

int kvds_membership_create(const struct kvds_membership_config *cfg,
                           kvds_membership **out, char *err, size_t errcap) {
  char host[KVDS_MEMBER_ID_MAX];
  uint16_t port;
  const char *cluster =
      cfg->cluster[0] ? cfg->cluster : KVDS_MEMBERSHIP_DEFAULT_CLUSTER;
  if (cfg->mode < KVDS_MEMBERSHIP_EMBEDDED || cfg->mode > KVDS_MEMBERSHIP_ETCD)
    return kvds_errf(err, errcap, KVDS_E_INVAL, "bad membership mode");
  if (!kvds__cluster_name_ok(cluster))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "--cluster '%s': want 1-63 of [A-Za-z0-9._-]", cluster);
  if (kvds_split_hostport(cfg->self_addr, host, sizeof host, &port))
    return kvds_errf(err, errcap, KVDS_E_ADDR,
                     "advertise address '%s' is not "
                     "host:port",
                     cfg->self_addr);
  if (strchr(cfg->self_id[0] ? cfg->self_id : cfg->self_addr, '/'))
    return kvds_errf(err, errcap, KVDS_E_INVAL,
                     "member id may not contain '/'");
  /* Everything here ends up in JSON (the record, /status), which must be
   * UTF-8: refuse bytes that are not, rather than fail later. */
  if (!kvds__utf8_ok(cfg->self_id) || !kvds__utf8_ok(cfg->self_addr) ||
      (cfg->peers && !kvds__utf8_ok(cfg->peers)) ||
      (cfg->etcd && !kvds__utf8_ok(cfg->etcd)))
    return kvds_errf(err, errcap, KVDS_E_ADDR,
                     "member id, addresses and endpoints must be UTF-8 text");
  int ttl = cfg->lease_ttl_s ? cfg->lease_ttl_s : KVDS_MEMBERSHIP_DEFAULT_TTL_S;
  if (!kvds_membership_ttl_ok(ttl))
    return kvds_errf(err, errcap, KVDS_E_INVAL, "--lease-ttl must be %d..%d s",
                     KVDS_MEMBERSHIP_TTL_MIN_S, KVDS_MEMBERSHIP_TTL_MAX_S);
  if (cfg->mode == KVDS_MEMBERSHIP_ETCD) {
    struct kvds__etcd_ep *eps;
    size_t n;
    if (!cfg->etcd || kvds__etcd_parse_endpoints(cfg->etcd, &eps, &n))
      return kvds_errf(err, errcap, KVDS_E_ADDR,
                       "--etcd_address '%s': want host:port[,host:port...] "
                       "(etcd:// or http:// allowed)",
                       cfg->etcd ? cfg->etcd : "");
    free(eps);
  }
  kvds_membership *m = calloc(1, sizeof *m);
  if (!m)
    return -ENOMEM;
  m->mode = cfg->mode;
  snprintf(m->cluster, sizeof m->cluster, "%s", cluster);
  m->ttl_s = ttl;
  m->timeout_ms = cfg->etcd_timeout_ms;
  if (m->timeout_ms <= 0) {
    m->timeout_ms = ttl * 1000 / 3;
    if (m->timeout_ms < 300)
      m->timeout_ms = 300;
    if (m->timeout_ms > 2000)
      m->timeout_ms = 2000;
  }
  m->log = cfg->log;
  m->log_arg = cfg->log_arg;
  m->on_change = cfg->on_change;
  m->change_arg = cfg->change_arg;
  snprintf(m->self.id, sizeof m->self.id, "%s",
           cfg->self_id[0] ? cfg->self_id : cfg->self_addr);
  snprintf(m->self.addr, sizeof m->self.addr, "%s", cfg->self_addr);
  m->self.capacity = cfg->capacity;
  m->self.epoch = cfg->epoch ? cfg->epoch : kvds_wall_us();
  m->self.self = 1;
  m->plen = kvds__member_prefix(m->cluster, m->prefix, sizeof m->prefix);
  int n = snprintf(m->key, sizeof m->key, "%s%s", m->prefix, m->self.id);
  m->klen = n > 0 ? (size_t)n : 0;
  pthread_mutex_init(&m->mu, NULL);
  kvds_cond_init_mono(&m->cv);
  int rc = kvds__view_put(&m->view, &m->self) < 0 ? -ENOMEM : 0;
  if (!rc && cfg->mode == KVDS_MEMBERSHIP_STATIC && cfg->peers)
    rc = add_peers(m, cfg->peers, err, errcap);
  if (!rc && cfg->mode == KVDS_MEMBERSHIP_ETCD) {
    m->etcd_eps = strdup(cfg->etcd);
    rc = m->etcd_eps ? kvds_etcd_open(m->etcd_eps, m->timeout_ms, &m->etcd)
                     : -ENOMEM;
    if (rc)
      kvds_errf(err, errcap, rc, "--etcd_address '%s': %s", cfg->etcd,
                kvds_strerror(rc));
  }
  if (rc) {
    kvds_membership_destroy(m);
    return rc;
  }
  m->gen = 1;
  *out = m;
  return 0;
}

static void notify(kvds_membership *m, uint64_t gen) {
  if (m->on_change)
    m->on_change(m->change_arg, gen);
}

/* ---- the watch ----------------------------------------------------------- */

/* Applies a PUT of one record (mu held); 1 if the view changed. */
static int apply_put_locked(kvds_membership *m, const struct kvds_etcd_kv *kv,
                            int *bad_records) {
  struct kvds_member rec;
  if (kvds__member_decode(m->prefix, m->cluster, kv->key.base, kv->key.len,
                          kv->value.base, kv->value.len, &rec)) {
    (*bad_records)++;
    return 0;
  }
  if (strcmp(rec.id, m->self.id) == 0) {
    /* An older incarnation's record over ours (it re-put late): assert
     * ours again. A newer one is someone else's problem to report. */
    if (rec.epoch < m->self.epoch)
      m->need_put = 1;
    return 0;
  }
  return kvds__view_put(&m->view, &rec) > 0;
}

/* Replaces the etcd part of the view by kvs (mu held). */
static int rebuild_locked(kvds_membership *m, const struct kvds_etcd_kv *kvs,
                          size_t n, int *bad_records) {
  struct kvds__member_view old = m->view;
  memset(&m->view, 0, sizeof m->view);
  int changed = 0;
  if (kvds__view_put(&m->view, &m->self) < 0)
    goto oom;
  int self_seen = 0;
  for (size_t i = 0; i < n; i++) {
    char id[KVDS_MEMBER_ID_MAX];
    if (!kvds__member_key_id(m->prefix, kvs[i].key.base, kvs[i].key.len, id,
                             sizeof id) &&
        strcmp(id, m->self.id) == 0)
      self_seen = 1;
    apply_put_locked(m, &kvs[i], bad_records);
  }
  if (!self_seen && m->lease)
    m->need_put = 1;
  changed = old.n != m->view.n;
  for (size_t i = 0; !changed && i < old.n; i++)
    changed = memcmp(&old.m[i], &m->view.m[i], sizeof old.m[i]) != 0;
  kvds__view_free(&old);
  return changed;
oom:
  kvds__view_free(&m->view);
  m->view = old;
  return 0;
}

static void on_note(void *arg, const struct kvds_etcd_note *n) {
  kvds_membership *m = arg;
  int changed = 0, bad_records = 0, wake = 0;
  pthread_mutex_lock(&m->mu);
  switch (n->kind) {
  case KVDS_ETCD_NOTE_EVENTS:
    for (size_t i = 0; i < n->n; i++) {
      const struct kvds_etcd_event *ev = &n->events[i];
      if (ev->type == KVDS_ETCD_PUT) {
        changed |= apply_put_locked(m, &ev->kv, &bad_records);
        continue;
      }
      char id[KVDS_MEMBER_ID_MAX];
      if (kvds__member_key_id(m->prefix, ev->kv.key.base, ev->kv.key.len, id,
                              sizeof id))
        continue;
      if (strcmp(id, m->self.id) == 0)
        m->need_put = 1;
      else
        changed |= kvds__view_delete(&m->view, id);
    }
    break;
  case KVDS_ETCD_NOTE_RESYNC:
    changed = rebuild_locked(m, n->kvs, n->n, &bad_records);
    break;
  case KVDS_ETCD_NOTE_DOWN:
    m->watch_up = 0;
    break;
  case KVDS_ETCD_NOTE_UP:
    m->watch_up = 1;
    break;
  }
  if (m->need_put && !m->stopping)
    wake = 1;
  uint64_t gen = changed ? ++m->gen : m->gen;
  if (wake)
    pthread_cond_signal(&m->cv);
  pthread_mutex_unlock(&m->mu);
  if (bad_records)
    mlog(m, 1, "ignored %d malformed member record%s under %s", bad_records,
         bad_records > 1 ? "s" : "", m->prefix);
  if (n->kind == KVDS_ETCD_NOTE_DOWN)
    mlog(m, 1, "etcd watch broke (%s); keeping the last view",
         kvds_strerror(n->err));
  else if (n->kind == KVDS_ETCD_NOTE_UP)
    mlog(m, 2, "etcd watch re-established");
  else if (n->kind == KVDS_ETCD_NOTE_RESYNC)
    mlog(m, 2, "etcd history compacted: view rebuilt");
  if (changed)
    notify(m, gen);
}

static void free_m(kvds_membership *m);

/* The watch's callback: reaches m through the context, never after stop
 * closed it. */
static void on_watch_note(void *arg, const struct kvds_etcd_note *n) {
  struct watch_ctx *x = arg;
  pthread_mutex_lock(&x->mu);
  if (x->closed) {
    x->done = 1;
    pthread_mutex_unlock(&x->mu);
    return;
  }
  x->busy++;
  pthread_mutex_unlock(&x->mu);
  on_note(x->m, n);
  pthread_mutex_lock(&x->mu);
  x->busy--;
  x->done = x->closed;
  int orphan = x->orphan;
  kvds_membership *m = x->m;
  pthread_mutex_unlock(&x->mu);
  /* destroy left m to us (its close timed out while we were inside); no
   * callback follows this one (the watch is stopping). */
  if (orphan) {
    pthread_mutex_destroy(&x->mu);
    free(x);
    free_m(m);
  }
}

/* ---- the keeper thread --------------------------------------------------- */

static int is_stopping(kvds_membership *m) {
  pthread_mutex_lock(&m->mu);
  int s = m->stopping;
  pthread_mutex_unlock(&m->mu);
  return s;
}

/* Leaves lease to kvds_membership_stop to revoke (the keeper is quitting). */
static void hand_over_lease(kvds_membership *m, int64_t lease) {
  pthread_mutex_lock(&m->mu);
  m->lease = lease;
  pthread_mutex_unlock(&m->mu);
}

static int put_record(kvds_membership *m, int64_t lease) {
  char *rec = kvds__member_encode(&m->self, m->cluster);
  if (!rec)
    return -ENOMEM;
  int rc =
      kvds_etcd_put(m->etcd, m->key, m->klen, rec, strlen(rec), lease, NULL);
  free(rec);
  return rc;
}

/* Grants a lease and puts our record under it. */
static int join(kvds_membership *m, int64_t *lease_out) {
  int64_t lease = 0, ttl = 0;
  int rc = kvds_etcd_lease_grant(m->etcd, m->ttl_s, &lease, &ttl);
  if (rc)
    return rc;
  /* Stopping: no more calls here; stop revokes the lease (one call). */
  if (is_stopping(m)) {
    hand_over_lease(m, lease);
    return KVDS_E_SHUTDOWN;
  }
  rc = put_record(m, lease);
  if (rc) {
    if (is_stopping(m))
      hand_over_lease(m, lease);
    else
      kvds_etcd_lease_revoke(m->etcd, lease);
    return rc;
  }
  *lease_out = lease;
  return 0;
}

/* Reads the prefix, rebuilds the view and starts the watch after it. */
static int start_watch(kvds_membership *m) {
  struct kvds_etcd_range r = {0};
  int rc = kvds_etcd_range_prefix(m->etcd, m->prefix, m->plen, &r);
  if (rc)
    return rc;
  int bad_records = 0;
  struct watch_ctx *x = calloc(1, sizeof *x);
  if (!x) {
    kvds_etcd_range_free(&r);
    return -ENOMEM;
  }
  pthread_mutex_init(&x->mu, NULL);
  x->m = m;
  pthread_mutex_lock(&m->mu);
  int changed = rebuild_locked(m, r.kvs, r.n, &bad_records);
  uint64_t gen = changed ? ++m->gen : m->gen;
  /* Up before the thread exists: a DOWN it sends at once must win. */
  m->watch_up = 1;
  pthread_mutex_unlock(&m->mu);
  kvds_etcd_watch *w = NULL;
  rc = kvds_etcd_watch_open(m->etcd, m->prefix, m->plen, r.revision + 1,
                            on_watch_note, x, &w);
  pthread_mutex_lock(&m->mu);
  if (rc) {
    m->watch_up = 0;
    pthread_mutex_destroy(&x->mu);
    free(x);
  } else {
    m->watch = w;
    m->wctx = x;
  }
  pthread_mutex_unlock(&m->mu);
  kvds_etcd_range_free(&r);
  if (bad_records)
    mlog(m, 1, "ignored %d malformed member record%s under %s", bad_records,
         bad_records > 1 ? "s" : "", m->prefix);
  if (changed)
    notify(m, gen);
  return rc;
}

static void set_state(kvds_membership *m, int rc, const char *what) {
  pthread_mutex_lock(&m->mu);
  int was = m->etcd_ok, ever = m->ever_ok, say_down = rc && !m->down_logged;
  m->etcd_ok = rc == 0;
  m->down_logged = rc != 0;
  if (rc == 0)
    m->ever_ok = 1;
  else
    snprintf(m->last_error, sizeof m->last_error, "%s: %s", what,
             kvds_etcd_errmsg(m->etcd)[0] ? kvds_etcd_errmsg(m->etcd)
                                          : kvds_strerror(rc));
  /* snprintf may have cut a character in two (and etcd's text was cut
   * before): JSON needs valid UTF-8. */
  if (rc)
    kvds__utf8_scrub(m->last_error);
  pthread_mutex_unlock(&m->mu);
  if (say_down)
    mlog(m, 1,
         "etcd unreachable (%s: %s); serving with the last view, "
         "retrying",
         what, kvds_strerror(rc));
  else if (!rc && !was && ever)
    mlog(m, 2, "etcd reachable again");
}

static void *keeper_main(void *arg) {
  kvds_membership *m = arg;
  int64_t lease = 0;
  int watching = 0, backoff_ms = 0;
  uint64_t interval_ms = (uint64_t)m->ttl_s * 1000u / 3u;
  if (interval_ms < 100)
    interval_ms = 100;
  uint64_t next_renew = 0;
  pthread_mutex_lock(&m->mu);
  while (!m->stopping) {
    int need_put = m->need_put;
    m->need_put = 0;
    pthread_mutex_unlock(&m->mu);
    int rc = 0;
    const char *what = "";
    if (!lease) {
      what = "join";
      rc = join(m, &lease);
      if (!rc) {
        next_renew = kvds_now_us() / 1000u + interval_ms;
        pthread_mutex_lock(&m->mu);
        m->lease = lease;
        int again = m->ever_ok;
        uint64_t rj = again ? ++m->rejoins : m->rejoins;
        /* Our lease vanished: we were dropped by everyone (a stall past
         * the TTL) or etcd lost its data (rebuilt). The watch may have
         * missed changes either way: read the whole prefix again; and the
         * others forgot where our keys are (on_change with the rejoin
         * counter up: the worker announces every key again). */
        kvds_etcd_watch *w = again ? m->watch : NULL;
        uint64_t gen = again ? ++m->gen : m->gen;
        pthread_mutex_unlock(&m->mu);
        mlog(m, 2, "%s cluster %s as %s (lease %" PRIx64 ", TTL %d s)",
             rj ? "rejoined" : "joined", m->cluster, m->self.id,
             (uint64_t)lease, m->ttl_s);
        if (again) {
          kvds_etcd_watch_resync(w);
          notify(m, gen);
        }
      }
    } else if (need_put) {
      what = "put";
      rc = put_record(m, lease);
      if (rc && rc != KVDS_E_NOTFOUND) {
        /* not put: try again, or the lease lives on with no record */
        pthread_mutex_lock(&m->mu);
        m->need_put = 1;
        pthread_mutex_unlock(&m->mu);
      }
    }
    /* Each call may take the whole call timeout: look at stopping between
     * them, so that stop waits for one call at most (and then revokes). */
    if (is_stopping(m))
      goto quit;
    if (!rc && !watching) {
      what = "watch";
      rc = start_watch(m);
      watching = rc == 0;
      if (is_stopping(m))
        goto quit;
    }
    /* The lease is renewed whatever else failed: a watch that cannot be
     * set up must not let the lease (and our record) expire. */
    if (rc != KVDS_E_NOTFOUND && lease && kvds_now_us() / 1000u >= next_renew) {
      int krc = kvds_etcd_lease_keepalive(m->etcd, lease, NULL);
      if (!krc)
        next_renew = kvds_now_us() / 1000u + interval_ms;
      if (krc && (!rc || krc == KVDS_E_NOTFOUND)) {
        what = "keepalive";
        rc = krc;
      }
    }
    if (rc == KVDS_E_NOTFOUND && lease) {
      mlog(m, 1,
           "lease %" PRIx64 " is gone (etcd was away longer than the "
           "TTL?); rejoining",
           (uint64_t)lease);
      lease = 0;
      pthread_mutex_lock(&m->mu);
      m->lease = 0;
      continue; /* with mu held, at once */
    }
    set_state(m, rc, what);
    uint64_t wait_ms;
    if (rc) {
      backoff_ms = backoff_ms ? backoff_ms * 2 : BACKOFF_MIN_MS;
      if ((uint64_t)backoff_ms > interval_ms)
        backoff_ms = (int)interval_ms;
      if (backoff_ms > BACKOFF_MAX_MS)
        backoff_ms = BACKOFF_MAX_MS;
      if (backoff_ms < BACKOFF_MIN_MS)
        backoff_ms = BACKOFF_MIN_MS;
      wait_ms = (uint64_t)backoff_ms;
    } else {
      backoff_ms = 0;
      uint64_t now = kvds_now_us() / 1000u;
      wait_ms = next_renew > now ? next_renew - now : 0;
    }
    uint64_t until = kvds_deadline_ms((int64_t)wait_ms);
    pthread_mutex_lock(&m->mu);
    while (!m->stopping && !m->need_put)
      if (kvds_cond_wait_until(&m->cv, &m->mu, until) == -ETIMEDOUT)
        break;
  }
  pthread_mutex_unlock(&m->mu);
quit:
  return NULL;
}

int kvds_membership_start(kvds_membership *m) {
  if (m->mode != KVDS_MEMBERSHIP_ETCD || m->started)
    return 0;
  int rc = -pthread_create(&m->keeper, NULL, keeper_main, m);
  if (!rc)
    m->started = 1;
  return rc;
}

void kvds_membership_stop(kvds_membership *m) {
  if (!m || m->stopped)
    return;
  pthread_mutex_lock(&m->mu);
  m->stopping = 1;
  pthread_cond_broadcast(&m->cv);
  pthread_mutex_unlock(&m->mu);
  if (m->started)
    pthread_join(m->keeper, NULL);
  /* Revoke first: the others drop us now rather than after the TTL. */
  int64_t lease = m->lease;
  if (m->etcd && lease) {
    int rc = kvds_etcd_lease_revoke(m->etcd, lease);
    if (rc && rc != KVDS_E_NOTFOUND)
      mlog(m, 1,
           "could not revoke lease %" PRIx64 " (%s); the others drop "
           "this worker when it expires",
           (uint64_t)lease, kvds_strerror(rc));
    else
      mlog(m, 2, "left cluster %s", m->cluster);
    pthread_mutex_lock(&m->mu);
    m->lease = 0;
    pthread_mutex_unlock(&m->mu);
  }
  struct watch_ctx *x = m->wctx;
  if (m->watch && kvds_etcd_watch_close(m->watch)) {
    /* Its thread lives on and may still call on_watch_note: turn it away
     * from now on. One already inside m is handled by destroy. */
    mlog(m, 1, "etcd watch did not stop in time; left to finish on its own");
    pthread_mutex_lock(&x->mu);
    x->closed = 1;
    pthread_mutex_unlock(&x->mu);
  } else if (x) {
    /* Joined: no callback runs any more. */
    pthread_mutex_destroy(&x->mu);
    free(x);
    m->wctx = NULL;
  }
  m->watch = NULL;
  m->stopped = 1;
}

static void free_m(kvds_membership *m) {
  kvds_etcd_close(m->etcd);
  free(m->etcd_eps);
  kvds__view_free(&m->view);
  pthread_cond_destroy(&m->cv);
  pthread_mutex_destroy(&m->mu);
  free(m);
}

void kvds_membership_destroy(kvds_membership *m) {
  if (!m)
    return;
  kvds_membership_stop(m);
  struct watch_ctx *x = m->wctx;
  if (x) {
    /* The watch was left running (stop's close timed out): see struct
     * watch_ctx. */
    pthread_mutex_lock(&x->mu);
    int inside = x->busy > 0, done = x->done;
    x->orphan = inside;
    pthread_mutex_unlock(&x->mu);
    if (inside) {
      mlog(m, 1,
           "a watch callback is still running; it frees the membership "
           "when it returns");
      return;
    }
    if (done) {
      pthread_mutex_destroy(&x->mu);
      free(x);
    }
  }
  free_m(m);
}

/* ---- accessors ----------------------------------------------------------- */

int kvds_membership_view(kvds_membership *m, struct kvds_member **out,
                         size_t *n, uint64_t *generation) {
  pthread_mutex_lock(&m->mu);
  size_t cnt = m->view.n;
  struct kvds_member *a = malloc((cnt ? cnt : 1) * sizeof *a);
  if (a && cnt)
    memcpy(a, m->view.m, cnt * sizeof *a);
  uint64_t gen = m->gen;
  pthread_mutex_unlock(&m->mu);
  if (!a)
    return -ENOMEM;
  *out = a;
  *n = cnt;
  if (generation)
    *generation = gen;
  return 0;
}

uint64_t kvds_membership_rejoins(kvds_membership *m) {
  pthread_mutex_lock(&m->mu);
  uint64_t r = m->rejoins;
  pthread_mutex_unlock(&m->mu);
  return r;
}

uint64_t kvds_membership_generation(kvds_membership *m) {
  pthread_mutex_lock(&m->mu);
  uint64_t g = m->gen;
  pthread_mutex_unlock(&m->mu);
  return g;
}

enum kvds_membership_mode kvds_membership_mode(const kvds_membership *m) {
  return m->mode;
}

int kvds_membership_etcd_up(kvds_membership *m) {
  if (m->mode != KVDS_MEMBERSHIP_ETCD)
    return 0;
  pthread_mutex_lock(&m->mu);
  int up = m->etcd_ok && m->watch_up;
  pthread_mutex_unlock(&m->mu);
  return up;
}

size_t kvds_membership_size(kvds_membership *m) {
  pthread_mutex_lock(&m->mu);
  size_t n = m->view.n;
  pthread_mutex_unlock(&m->mu);
  return n;
}

static const char *mode_name(enum kvds_membership_mode mode) {
  return mode == KVDS_MEMBERSHIP_ETCD     ? "etcd"
         : mode == KVDS_MEMBERSHIP_STATIC ? "static"
                                          : "embedded";
}

json_t *kvds_membership_json(kvds_membership *m) {
  uint64_t now = kvds_wall_us();
  json_t *root = json_object();
  json_t *members = json_array();
  json_t *self = json_pack("{s:s,s:s,s:I}", "id", m->self.id, "addr",
                           m->self.addr, "epoch", (json_int_t)m->self.epoch);
  int ok = root && members && self;
  pthread_mutex_lock(&m->mu);
  int up = m->etcd_ok && m->watch_up;
  const char *state = m->mode == KVDS_MEMBERSHIP_STATIC ? "static"
                      : m->mode == KVDS_MEMBERSHIP_ETCD ? (up ? "up" : "stale")
                                                        : "self";
  for (size_t i = 0; ok && i < m->view.n; i++) {
    const struct kvds_member *x = &m->view.m[i];
    uint64_t age = x->epoch && now > x->epoch ? (now - x->epoch) / 1000000u : 0;
    json_t *o = json_pack("{s:s,s:s,s:I,s:I,s:I,s:s,s:b}", "id", x->id, "addr",
                          x->addr, "capacity", (json_int_t)x->capacity, "epoch",
                          (json_int_t)x->epoch, "age_s", (json_int_t)age,
                          "state", x->self ? "self" : state, "self", x->self);
    ok = o && json_array_append_new(members, o) == 0;
  }
  if (ok)
    ok = json_object_set_new(root, "mode", json_string(mode_name(m->mode))) ==
             0 &&
         json_object_set_new(root, "name", json_string(m->cluster)) == 0 &&
         json_object_set(root, "self", self) == 0;
  if (ok && m->mode == KVDS_MEMBERSHIP_ETCD) {
    char lease[32];
    snprintf(lease, sizeof lease, "%" PRIx64, (uint64_t)m->lease);
    json_t *e = json_pack(
        "{s:s,s:s,s:I,s:s,s:I,s:s}", "endpoints", m->etcd_eps, "state",
        up           ? "up"
        : m->ever_ok ? "down"
                     : "connecting",
        "lease_ttl_s", (json_int_t)m->ttl_s, "lease", lease, "rejoins",
        (json_int_t)m->rejoins, "last_error", m->last_error);
    ok = e && json_object_set_new(root, "etcd", e) == 0;
  }
  if (ok)
    ok = json_object_set_new(root, "generation",
                             json_integer((json_int_t)m->gen)) == 0;
  pthread_mutex_unlock(&m->mu);
  if (ok)
    ok = json_object_set(root, "members", members) == 0;
  json_decref(members);
  json_decref(self);
  if (!ok) {
    json_decref(root);
    return NULL;
  }
  return root;
}

char *kvds_membership_json_string(kvds_membership *m) {
  json_t *j = kvds_membership_json(m);
  if (!j)
    return NULL;
  char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(j);
  return s;
}
