/* etcd.c — see etcd.h. Blocking calls use one curl easy handle per
 * kvds_etcd (its connection cache keeps one keep-alive connection); a watch
 * drives its stream and its resync reads through a curl multi handle so that
 * close() can wake it (curl_multi_wakeup) wherever it waits. */
#include "cluster/etcd.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/array.h"
#include "common/clock.h"
#include "common/util.h"

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define POLL_MS 1000

/* ---- base64, prefixes, endpoints (pure) ---------------------------------- */

static const char B64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t kvds__etcd_b64_len(size_t n) {
  return (n + 2) / 3 * 4;
}

int kvds__etcd_b64_encode(const void *in, size_t n, char *out, size_t cap) {
  if (n > (SIZE_MAX - 3) / 4 * 3 || cap <= kvds__etcd_b64_len(n))
    return KVDS_E_INVAL;
  const uint8_t *p = in;
  size_t o = 0, i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    out[o++] = B64[v >> 18];
    out[o++] = B64[(v >> 12) & 63];
    out[o++] = B64[(v >> 6) & 63];
    out[o++] = B64[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)p[i] << 16;
    if (i + 1 < n)
      v |= (uint32_t)p[i + 1] << 8;
    out[o++] = B64[v >> 18];
    out[o++] = B64[(v >> 12) & 63];
    out[o++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
    out[o++] = '=';
  }
  out[o] = 0;
  return 0;
}

static int b64_val(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+')
    return 62;
  if (c == '/')
    return 63;
  return -1;
}

int kvds__etcd_b64_decode(const char *in, size_t n, void *out, size_t cap,
                          size_t *outlen) {
  if (n % 4)
    return KVDS_E_PROTO;
  size_t pad = 0;
  if (n >= 1 && in[n - 1] == '=')
    pad++;
  if (n >= 2 && in[n - 2] == '=')
    pad++;
  size_t len = n / 4 * 3 - pad;
  if (len > cap)
    return KVDS_E_INVAL;
  uint8_t *o = out;
  size_t w = 0;
  for (size_t i = 0; i < n; i += 4) {
    int last = i + 4 == n;
    int v[4];
    for (int k = 0; k < 4; k++) {
      unsigned char c = (unsigned char)in[i + (size_t)k];
      if (c == '=' && last && k >= 4 - (int)pad) {
        v[k] = 0;
        continue;
      }
      v[k] = b64_val(c);
      if (v[k] < 0)
        return KVDS_E_PROTO;
    }
    uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 |
                 (uint32_t)v[2] << 6 | (uint32_t)v[3];
    /* Canonical only: the bits that padding drops must be zero. */
    if (last && pad == 2 && (x & 0xffff))
      return KVDS_E_PROTO;
    if (last && pad == 1 && (x & 0xff))
      return KVDS_E_PROTO;
    size_t take = last ? 3 - pad : 3;
    uint8_t b[3] = {(uint8_t)(x >> 16), (uint8_t)(x >> 8), (uint8_t)x};
    memcpy(o + w, b, take);
    w += take;
  }
  *outlen = w;
  return 0;
}

size_t kvds__etcd_prefix_end(const void *prefix, size_t plen, uint8_t *end) {
  const uint8_t *p = prefix;
  for (size_t i = plen; i > 0; i--) {
    if (p[i - 1] != 0xff) {
      memcpy(end, p, i);
      end[i - 1]++;
      return i;
    }
  }
  end[0] = 0;
  return 1;
}

int kvds__etcd_parse_endpoints(const char *s, struct kvds__etcd_ep **eps,
                               size_t *n) {
  if (!s || !*s)
    return KVDS_E_ADDR;
  struct kvds__etcd_ep *v = calloc(KVDS_ETCD_MAX_ENDPOINTS, sizeof *v);
  if (!v)
    return -ENOMEM;
  size_t cnt = 0;
  int rc = 0;
  const char *p = s;
  for (;;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    char item[280];
    if (len == 0 || len >= sizeof item || cnt == KVDS_ETCD_MAX_ENDPOINTS) {
      rc = KVDS_E_ADDR;
      goto out;
    }
    memcpy(item, p, len);
    item[len] = 0;
    const char *a = item;
    if (strncmp(a, "etcd://", 7) == 0)
      a += 7;
    else if (strncmp(a, "http://", 7) == 0)
      a += 7;
    else if (strstr(a, "://")) { /* https and anything else: unsupported */
      rc = KVDS_E_ADDR;
      goto out;
    }
    size_t al = strlen(a);
    if (al && a[al - 1] == '/') /* "http://h:p/" */
      item[(size_t)(a - item) + --al] = 0;
    char host[256];
    uint16_t port;
    if (kvds_split_hostport(a, host, sizeof host, &port) != 0 ||
        strpbrk(host, "/?#@ \t")) {
      rc = KVDS_E_ADDR;
      goto out;
    }
    int v6 = strchr(host, ':') != NULL;
    snprintf(v[cnt].url, sizeof v[cnt].url, "http://%s%s%s:%u", v6 ? "[" : "",
             host, v6 ? "]" : "", (unsigned)port);
    cnt++;
    if (!comma)
      break;
    p = comma + 1;
  }
out:
  if (rc) {
    free(v);
    return rc;
  }
  *eps = v;
  *n = cnt;
  return 0;
}

/* ---- reply parsing (pure) ------------------------------------------------ */

static void set_msg(char *msg, size_t cap, const char *fmt, const char *a) {
  if (msg && cap)
    snprintf(msg, cap, fmt, a ? a : "");
}

int kvds__etcd_json_i64(const struct json_t *cj, int64_t *out) {
  json_t *j = (json_t *)cj;
  if (!j) {
    *out = 0;
    return 0;
  }
  if (json_is_integer(j)) {
    *out = (int64_t)json_integer_value(j);
    return 0;
  }
  if (!json_is_string(j))
    return KVDS_E_PROTO;
  const char *s = json_string_value(j);
  size_t len = json_string_length(j);
  size_t i = 0;
  int neg = 0;
  if (len && s[0] == '-') {
    neg = 1;
    i = 1;
  }
  if (i == len || len - i > 19)
    return KVDS_E_PROTO;
  uint64_t v = 0;
  for (; i < len; i++) {
    if (s[i] < '0' || s[i] > '9')
      return KVDS_E_PROTO;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v > (uint64_t)INT64_MAX + (uint64_t)neg)
    return KVDS_E_PROTO;
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 0;
}

static json_t *load(const char *body, size_t len, char *msg, size_t cap) {
  json_error_t err;
  json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
  if (!j) {
    set_msg(msg, cap, "malformed JSON from etcd: %s", err.text);
    return NULL;
  }
  if (!json_is_object(j)) {
    set_msg(msg, cap, "etcd reply is not a JSON object%s", NULL);
    json_decref(j);
    return NULL;
  }
  return j;
}

static int grpc_code_err(int64_t code) {
  switch (code) {
  case 3:
    return KVDS_E_INVAL;
  case 4:
    return KVDS_E_TIMEOUT;
  case 5:
    return KVDS_E_NOTFOUND;
  case 7:
  case 16:
    return KVDS_E_PERM;
  case 11:
    return KVDS_E_RANGE;
  case 14:
    return -EAGAIN;
  default:
    return -EIO;
  }
}

/* The gateway's error object: {"error":"text","message":"text","code":5}
 * for unary calls, {"error":{"grpc_code":5,"message":"text",...}} inside a
 * stream. Returns 0 if j carries no error. */
static int error_of(json_t *j, char *msg, size_t cap) {
  json_t *e = json_object_get(j, "error");
  if (!e)
    return 0;
  int64_t code = -1;
  const char *text = NULL;
  if (json_is_object(e)) {
    if (kvds__etcd_json_i64(json_object_get(e, "grpc_code"), &code) != 0)
      code = -1;
    text = json_string_value(json_object_get(e, "message"));
  } else {
    if (kvds__etcd_json_i64(json_object_get(j, "code"), &code) != 0)
      code = -1;
    text = json_string_value(json_object_get(j, "message"));
    if (!text)
      text = json_string_value(e);
  }
  set_msg(msg, cap, "etcd: %s", text ? text : "error without a message");
  return grpc_code_err(code);
}

int kvds__etcd_parse_error(const char *body, size_t len, char *msg,
                           size_t cap) {
  json_t *j = load(body, len, msg, cap);
  if (!j)
    return KVDS_E_PROTO;
  int rc = error_of(j, msg, cap);
  if (rc == 0) {
    set_msg(msg, cap, "etcd error reply without an error field%s", NULL);
    rc = KVDS_E_PROTO;
  }
  json_decref(j);
  return rc;
}

/* Checks a base64 JSON string field (absent: empty) and gives an upper
 * bound of its decoded length. */
static int b64_field(json_t *s, size_t *len) {
  if (!s) {
    *len = 0;
    return 0;
  }
  if (!json_is_string(s))
    return KVDS_E_PROTO;
  size_t n = json_string_length(s);
  if (n % 4)
    return KVDS_E_PROTO;
  *len = n / 4 * 3;
  return 0;
}

static int parse_kv(json_t *o, struct kvds_etcd_kv *kv, char *msg, size_t cap) {
  if (!json_is_object(o))
    goto proto;
  json_t *jk = json_object_get(o, "key"), *jv = json_object_get(o, "value");
  size_t kmax, vmax;
  if (b64_field(jk, &kmax) || b64_field(jv, &vmax))
    goto proto;
  struct kvds_etcd_kv t = {0};
  if (kvds__etcd_json_i64(json_object_get(o, "create_revision"),
                          &t.create_revision) ||
      kvds__etcd_json_i64(json_object_get(o, "mod_revision"),
                          &t.mod_revision) ||
      kvds__etcd_json_i64(json_object_get(o, "version"), &t.version) ||
      kvds__etcd_json_i64(json_object_get(o, "lease"), &t.lease))
    goto proto;
  uint8_t *buf = malloc(kmax + vmax + 1);
  if (!buf)
    return -ENOMEM;
  size_t kl = 0, vl = 0;
  if ((jk && kvds__etcd_b64_decode(json_string_value(jk),
                                   json_string_length(jk), buf, kmax, &kl)) ||
      (jv &&
       kvds__etcd_b64_decode(json_string_value(jv), json_string_length(jv),
                             buf + kl, vmax, &vl))) {
    free(buf);
    goto proto;
  }
  t.key = (struct kvds_iov){buf, kl};
  t.value = (struct kvds_iov){buf + kl, vl};
  *kv = t;
  return 0;
proto:
  set_msg(msg, cap, "malformed key-value in etcd reply%s", NULL);
  return KVDS_E_PROTO;
}

void kvds_etcd_range_free(struct kvds_etcd_range *r) {
  if (!r)
    return;
  for (size_t i = 0; i < r->n; i++)
    free(r->kvs[i].key.base);
  free(r->kvs);
  memset(r, 0, sizeof *r);
}

static int header_rev(json_t *j, int64_t *rev, char *msg, size_t cap) {
  json_t *h = json_object_get(j, "header");
  if (!json_is_object(h) ||
      kvds__etcd_json_i64(json_object_get(h, "revision"), rev) != 0) {
    set_msg(msg, cap, "etcd reply without a valid header%s", NULL);
    return KVDS_E_PROTO;
  }
  return 0;
}

int kvds__etcd_parse_range(const char *body, size_t len,
                           struct kvds_etcd_range *out, char *msg, size_t cap) {
  json_t *j = load(body, len, msg, cap);
  if (!j)
    return KVDS_E_PROTO;
  struct kvds_etcd_range r = {0};
  int rc = error_of(j, msg, cap);
  if (rc || (rc = header_rev(j, &r.revision, msg, cap)))
    goto out;
  json_t *kvs = json_object_get(j, "kvs");
  if (kvs && !json_is_array(kvs)) {
    set_msg(msg, cap, "etcd range reply: kvs is not an array%s", NULL);
    rc = KVDS_E_PROTO;
    goto out;
  }
  size_t n = kvs ? json_array_size(kvs) : 0;
  if (n) {
    r.kvs = calloc(n, sizeof *r.kvs);
    if (!r.kvs) {
      rc = -ENOMEM;
      goto out;
    }
  }
  for (size_t i = 0; i < n; i++) {
    if ((rc = parse_kv(json_array_get(kvs, i), &r.kvs[i], msg, cap)))
      goto out;
    r.n++;
  }
out:
  json_decref(j);
  if (rc) {
    kvds_etcd_range_free(&r);
    return rc;
  }
  *out = r;
  return 0;
}

int kvds__etcd_parse_header(const char *body, size_t len, int64_t *revision,
                            int64_t *deleted, char *msg, size_t cap) {
  json_t *j = load(body, len, msg, cap);
  if (!j)
    return KVDS_E_PROTO;
  int64_t rev, del = 0;
  int rc = error_of(j, msg, cap);
  if (!rc)
    rc = header_rev(j, &rev, msg, cap);
  if (!rc && kvds__etcd_json_i64(json_object_get(j, "deleted"), &del)) {
    set_msg(msg, cap, "etcd reply: bad 'deleted'%s", NULL);
    rc = KVDS_E_PROTO;
  }
  json_decref(j);
  if (rc)
    return rc;
  if (revision)
    *revision = rev;
  if (deleted)
    *deleted = del;
  return 0;
}

int kvds__etcd_parse_grant(const char *body, size_t len, int64_t *id,
                           int64_t *ttl, char *msg, size_t cap) {
  json_t *j = load(body, len, msg, cap);
  if (!j)
    return KVDS_E_PROTO;
  int64_t i = 0, t = 0;
  int rc = error_of(j, msg, cap);
  if (!rc) {
    if (kvds__etcd_json_i64(json_object_get(j, "ID"), &i) ||
        kvds__etcd_json_i64(json_object_get(j, "TTL"), &t) || i == 0 ||
        t <= 0) {
      set_msg(msg, cap, "etcd lease grant reply without ID/TTL%s", NULL);
      rc = KVDS_E_PROTO;
    }
  }
  json_decref(j);
  if (rc)
    return rc;
  *id = i;
  *ttl = t;
  return 0;
}

int kvds__etcd_parse_keepalive(const char *body, size_t len, int64_t *ttl,
                               char *msg, size_t cap) {
  json_t *j = load(body, len, msg, cap);
  if (!j)
    return KVDS_E_PROTO;
  int64_t t = 0;
  int rc = error_of(j, msg, cap);
  json_t *r = json_object_get(j, "result");
  if (!rc && !json_is_object(r)) {
    set_msg(msg, cap, "etcd keepalive reply without a result%s", NULL);
    rc = KVDS_E_PROTO;
  }
  if (!rc && kvds__etcd_json_i64(json_object_get(r, "TTL"), &t)) {
    set_msg(msg, cap, "etcd keepalive reply: bad TTL%s", NULL);
    rc = KVDS_E_PROTO;
  }
  if (!rc && t <= 0) {
    set_msg(msg, cap, "lease not found (expired or revoked)%s", NULL);
    rc = KVDS_E_NOTFOUND;
  }
  json_decref(j);
  if (rc)
    return rc;
  *ttl = t;
  return 0;
}

void kvds__etcd_watch_msg_free(struct kvds__etcd_watch_msg *m) {
  if (!m)
    return;
  for (size_t i = 0; i < m->n; i++)
    free(m->events[i].kv.key.base);
  free(m->events);
  memset(m, 0, sizeof *m);
}

int kvds__etcd_parse_watch(const char *body, size_t len,
                           struct kvds__etcd_watch_msg *m, char *msg,
                           size_t cap) {
  json_t *j = load(body, len, msg, cap);
  if (!j)
    return KVDS_E_PROTO;
  struct kvds__etcd_watch_msg w = {0};
  int rc = error_of(j, msg, cap);
  if (rc) {
    rc = -ECONNRESET;
    goto out;
  }
  json_t *r = json_object_get(j, "result");
  json_t *h = json_object_get(r, "header");
  json_t *evs = json_object_get(r, "events");
  if (!json_is_object(r) || (h && !json_is_object(h)) ||
      (evs && !json_is_array(evs)) ||
      kvds__etcd_json_i64(json_object_get(h, "revision"), &w.revision) ||
      kvds__etcd_json_i64(json_object_get(r, "compact_revision"),
                          &w.compact_revision)) {
    set_msg(msg, cap, "malformed watch message from etcd%s", NULL);
    rc = KVDS_E_PROTO;
    goto out;
  }
  json_t *cid = json_object_get(h, "cluster_id");
  if (json_is_string(cid) && json_string_length(cid) < sizeof w.cluster_id)
    memcpy(w.cluster_id, json_string_value(cid), json_string_length(cid) + 1);
  else if (json_is_integer(cid))
    snprintf(w.cluster_id, sizeof w.cluster_id, "%llu",
             (unsigned long long)json_integer_value(cid));
  w.created = json_is_true(json_object_get(r, "created"));
  w.canceled = json_is_true(json_object_get(r, "canceled"));
  size_t n = evs ? json_array_size(evs) : 0;
  if (n) {
    w.events = calloc(n, sizeof *w.events);
    if (!w.events) {
      rc = -ENOMEM;
      goto out;
    }
  }
  for (size_t i = 0; i < n; i++) {
    json_t *ev = json_array_get(evs, i);
    json_t *type = json_object_get(ev, "type");
    struct kvds_etcd_event *e = &w.events[i];
    /* The gateway omits the default enum value: no "type" means PUT. */
    if (!json_is_object(ev) || (type && !json_is_string(type))) {
      rc = KVDS_E_PROTO;
      goto out;
    }
    const char *ts = type ? json_string_value(type) : "PUT";
    if (strcmp(ts, "PUT") == 0)
      e->type = KVDS_ETCD_PUT;
    else if (strcmp(ts, "DELETE") == 0)
      e->type = KVDS_ETCD_DELETE;
    else {
      set_msg(msg, cap, "unknown watch event type '%s'", ts);
      rc = KVDS_E_PROTO;
      goto out;
    }
    if ((rc = parse_kv(json_object_get(ev, "kv"), &e->kv, msg, cap)))
      goto out;
    w.n++;
  }
out:
  json_decref(j);
  if (rc) {
    if (rc == KVDS_E_PROTO && msg && cap && !msg[0])
      set_msg(msg, cap, "malformed watch message from etcd%s", NULL);
    kvds__etcd_watch_msg_free(&w);
    return rc;
  }
  *m = w;
  return 0;
}

/* ---- HTTP ---------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct buf {
  char *p;
  size_t len, cap;
  int over; /* the reply passed KVDS_ETCD_REPLY_MAX */
};

static int buf_add(struct buf *b, const char *d, size_t n) {
  if (n > KVDS_ETCD_REPLY_MAX - b->len) {
    b->over = 1;
    return -1;
  }
  if (KVDS_ARRAY_GROW(b->p, b->cap, b->len + n + 1, 1024))
    return -1;
  memcpy(b->p + b->len, d, n);
  b->len += n;
  b->p[b->len] = 0;
  return 0;
}

static size_t write_buf(char *d, size_t sz, size_t nm, void *u) {
  return buf_add(u, d, sz * nm) == 0 ? sz * nm : 0; /* sz is always 1 */
}

/* A connection to one etcd cluster: the endpoint list, the one that last
 * worked, a curl easy handle, and for a watch the multi handle that drives
 * it (NULL: blocking curl_easy_perform). */
struct conn {
  struct kvds__etcd_ep *eps;
  size_t n, cur;
  int timeout_ms;
  CURL *easy;
  CURLM *multi;
  atomic_int *stop;
  atomic_int *kick; /* NULL, or: set = break off a perform (watch resync) */
  struct curl_slist *hdrs;
  char curlerr[CURL_ERROR_SIZE];
  char msg[1024];
};

static int conn_init(struct conn *c, const struct kvds__etcd_ep *eps, size_t n,
                     int timeout_ms, int with_multi) {
  memset(c, 0, sizeof *c);
  pthread_once(&curl_once, curl_init);
  c->eps = malloc(n * sizeof *eps);
  c->easy = curl_easy_init();
  c->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  struct curl_slist *h2 = c->hdrs ? curl_slist_append(c->hdrs, "Expect:") : 0;
  if (with_multi)
    c->multi = curl_multi_init();
  if (!c->eps || !c->easy || !h2 || (with_multi && !c->multi))
    return -ENOMEM;
  memcpy(c->eps, eps, n * sizeof *eps);
  c->n = n;
  c->timeout_ms = timeout_ms;
  return 0;
}

static void conn_fini(struct conn *c) {
  if (c->easy)
    curl_easy_cleanup(c->easy);
  if (c->multi)
    curl_multi_cleanup(c->multi);
  curl_slist_free_all(c->hdrs);
  free(c->eps);
}

static int map_curl(struct conn *c, CURLcode rc, const struct buf *b) {
  switch (rc) {
  case CURLE_OK:
    return 0;
  case CURLE_OPERATION_TIMEDOUT:
    return KVDS_E_TIMEOUT;
  case CURLE_COULDNT_RESOLVE_HOST:
    return -EHOSTUNREACH;
  case CURLE_COULDNT_CONNECT: {
    long oe = 0;
    curl_easy_getinfo(c->easy, CURLINFO_OS_ERRNO, &oe);
    return oe > 0 && oe < 4096 ? -(int)oe : -ECONNREFUSED;
  }
  case CURLE_OUT_OF_MEMORY:
    return -ENOMEM;
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
    return -ECONNRESET;
  case CURLE_ABORTED_BY_CALLBACK:
    return KVDS_E_SHUTDOWN;
  case CURLE_WRITE_ERROR:
    return b && b->over ? KVDS_E_LIMIT : -ENOMEM;
  default:
    return -EIO;
  }
}

/* Runs the transfer set up on c->easy: blocking, or through the multi
 * handle, returning early (CURLE_ABORTED_BY_CALLBACK) once *stop is set. */
static CURLcode perform(struct conn *c) {
  if (!c->multi)
    return curl_easy_perform(c->easy);
  if (curl_multi_add_handle(c->multi, c->easy) != CURLM_OK)
    return CURLE_OUT_OF_MEMORY;
  CURLcode res = CURLE_ABORTED_BY_CALLBACK;
  for (;;) {
    int running = 0, q;
    if (atomic_load(c->stop) || (c->kick && atomic_load(c->kick)))
      break;
    if (curl_multi_perform(c->multi, &running) != CURLM_OK) {
      res = CURLE_OUT_OF_MEMORY;
      break;
    }
    CURLMsg *m = curl_multi_info_read(c->multi, &q);
    if (m && m->msg == CURLMSG_DONE) {
      res = m->data.result;
      break;
    }
    if (!running) { /* done without a message: should not happen */
      res = CURLE_RECV_ERROR;
      break;
    }
    if (atomic_load(c->stop) || (c->kick && atomic_load(c->kick)))
      break;
    curl_multi_poll(c->multi, NULL, 0, POLL_MS, NULL);
  }
  curl_multi_remove_handle(c->multi, c->easy);
  return res;
}

/* Keepalive probes before a silent peer counts as dead: with KEEPIDLE 10 s
 * and KEEPINTVL 5 s, a dead host is noticed after 10 + 3 x 5 = 25 s (the
 * kernel's default count, 9, would make it 55 s). */
#define KEEPALIVE_PROBES 3

static int sockopt_cb(void *arg, curl_socket_t fd, curlsocktype purpose) {
  (void)arg;
  if (purpose == CURLSOCKTYPE_IPCXN) {
    int cnt = KEEPALIVE_PROBES;
    /* Best effort: a socket that refuses keeps the kernel's count. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  }
  return CURL_SOCKOPT_OK;
}

/* Sets the options every request shares. timeout_ms 0: no total limit (a
 * watch stream). */
static void setup(struct conn *c, const char *url, const char *body,
                  long connect_ms, long timeout_ms, curl_write_callback wr,
                  void *wd) {
  CURL *h = c->easy;
  c->curlerr[0] = 0;
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->hdrs);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, wr);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, wd);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->curlerr);
  curl_easy_setopt(h, CURLOPT_PROXY, "");
  curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 10L);
  curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 5L);
  curl_easy_setopt(h, CURLOPT_SOCKOPTFUNCTION, sockopt_cb);
}

static void conn_fail(struct conn *c, const char *url, int rc) {
  snprintf(c->msg, sizeof c->msg, "%s: %s (%s)", url, kvds_err_name(rc),
           c->curlerr[0] ? c->curlerr : kvds_strerror(rc));
}

/* A failure to reach this endpoint at all: try the next one. */
static int connect_failure(struct conn *c, CURLcode rc) {
  if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST)
    return 1;
  if (rc == CURLE_OPERATION_TIMEDOUT) {
    curl_off_t t = 0;
    curl_easy_getinfo(c->easy, CURLINFO_CONNECT_TIME_T, &t);
    return t == 0;
  }
  return 0;
}

/* POSTs body to path on the current endpoint, moving on to the next ones
 * when one cannot be reached, all within the timeout. On success *out holds
 * the reply body and *status the HTTP status. */
static int conn_post(struct conn *c, const char *path, const char *body,
                     struct buf *out, long *status) {
  uint64_t deadline = kvds_deadline_ms(c->timeout_ms);
  int err = KVDS_E_TIMEOUT;
  c->msg[0] = 0;
  for (size_t i = 0; i < c->n; i++) {
    size_t idx = (c->cur + i) % c->n;
    char url[400];
    snprintf(url, sizeof url, "%s%s", c->eps[idx].url, path);
    uint64_t now = kvds_now_us();
    if (now >= deadline) {
      err = KVDS_E_TIMEOUT;
      snprintf(c->msg, sizeof c->msg, "%s: deadline of %d ms passed", url,
               c->timeout_ms);
      break;
    }
    long left = kvds_deadline_left_ms(deadline, now);
    /* Leave the endpoints after this one a share of the time to connect. */
    long cto = left / (long)(c->n - i);
    struct buf b = {0};
    setup(c, url, body, cto > 0 ? cto : 1, left, write_buf, &b);
    CURLcode rc = perform(c);
    if (rc == CURLE_OK) {
      long st = 0;
      curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &st);
      c->cur = idx;
      *out = b;
      *status = st;
      return 0;
    }
    free(b.p);
    err = map_curl(c, rc, &b);
    conn_fail(c, url, err);
    if (!connect_failure(c, rc))
      break;
  }
  return err;
}

/* ---- the blocking handle ------------------------------------------------- */

struct kvds_etcd {
  pthread_mutex_t mu;
  struct conn c;
};

int kvds_etcd_open(const char *endpoints, int timeout_ms, kvds_etcd **out) {
  if (timeout_ms <= 0)
    return KVDS_E_INVAL;
  struct kvds__etcd_ep *eps;
  size_t n;
  int rc = kvds__etcd_parse_endpoints(endpoints, &eps, &n);
  if (rc)
    return rc;
  kvds_etcd *e = calloc(1, sizeof *e);
  if (!e) {
    free(eps);
    return -ENOMEM;
  }
  rc = conn_init(&e->c, eps, n, timeout_ms, 0);
  free(eps);
  if (rc) {
    conn_fini(&e->c);
    free(e);
    return rc;
  }
  pthread_mutex_init(&e->mu, NULL);
  *out = e;
  return 0;
}

void kvds_etcd_close(kvds_etcd *e) {
  if (!e)
    return;
  conn_fini(&e->c);
  pthread_mutex_destroy(&e->mu);
  free(e);
}

const char *kvds_etcd_errmsg(kvds_etcd *e) {
  return e->c.msg;
}

const char *kvds_etcd_endpoint(kvds_etcd *e) {
  return e->c.eps[e->c.cur].url;
}

typedef int (*parse_fn)(const char *body, size_t len, void *ctx, char *msg,
                        size_t cap);

/* One request: JSON body j (consumed), reply parsed by fn on 200, by the
 * error parser otherwise. */
static int call_locked(struct conn *c, const char *path, json_t *j, parse_fn fn,
                       void *ctx) {
  int rc;
  struct buf b = {0};
  char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  if (!body) {
    snprintf(c->msg, sizeof c->msg, "out of memory");
    return -ENOMEM;
  }
  long status = 0;
  rc = conn_post(c, path, body, &b, &status);
  free(body);
  if (rc)
    goto out;
  c->msg[0] = 0;
  if (status == 200)
    rc = fn(b.p ? b.p : "", b.len, ctx, c->msg, sizeof c->msg);
  else {
    rc = kvds__etcd_parse_error(b.p ? b.p : "", b.len, c->msg, sizeof c->msg);
    if (rc == KVDS_E_PROTO) {
      snprintf(c->msg, sizeof c->msg, "%s: HTTP %ld from etcd",
               c->eps[c->cur].url, status);
      rc = status == 404 ? KVDS_E_BADOP : -EIO;
    }
  }
out:
  free(b.p);
  return rc;
}

static int call(kvds_etcd *e, const char *path, json_t *j, parse_fn fn,
                void *ctx) {
  pthread_mutex_lock(&e->mu);
  int rc = call_locked(&e->c, path, j, fn, ctx);
  pthread_mutex_unlock(&e->mu);
  return rc;
}

/* Sets j[name] to the base64 of p[0..n). Returns -1 on allocation failure. */
static int set_b64(json_t *j, const char *name, const void *p, size_t n) {
  size_t cap = kvds__etcd_b64_len(n) + 1;
  char *s = malloc(cap);
  if (!s || kvds__etcd_b64_encode(p, n, s, cap) != 0) {
    free(s);
    return -1;
  }
  int rc = json_object_set_new(j, name, json_stringn(s, cap - 1));
  free(s);
  return rc;
}

static int set_i64(json_t *j, const char *name, int64_t v) {
  char s[24];
  snprintf(s, sizeof s, "%lld", (long long)v);
  return json_object_set_new(j, name, json_string(s));
}

struct i64_pair {
  int64_t a, b;
};

static int p_grant(const char *body, size_t len, void *ctx, char *msg,
                   size_t cap) {
  struct i64_pair *p = ctx;
  return kvds__etcd_parse_grant(body, len, &p->a, &p->b, msg, cap);
}
static int p_keepalive(const char *body, size_t len, void *ctx, char *msg,
                       size_t cap) {
  return kvds__etcd_parse_keepalive(body, len, ctx, msg, cap);
}
static int p_header(const char *body, size_t len, void *ctx, char *msg,
                    size_t cap) {
  struct i64_pair *p = ctx;
  return kvds__etcd_parse_header(body, len, &p->a, &p->b, msg, cap);
}
static int p_range(const char *body, size_t len, void *ctx, char *msg,
                   size_t cap) {
  return kvds__etcd_parse_range(body, len, ctx, msg, cap);
}

static json_t *obj_or_null(int fail, json_t *j) {
  if (fail) {
    json_decref(j);
    return NULL;
  }
  return j;
}

int kvds_etcd_lease_grant(kvds_etcd *e, int64_t ttl_s, int64_t *id,
                          int64_t *ttl_out) {
  if (ttl_s <= 0 || !id)
    return KVDS_E_INVAL;
  json_t *j = json_object();
  j = obj_or_null(!j || set_i64(j, "TTL", ttl_s), j);
  struct i64_pair p;
  int rc = call(e, "/v3/lease/grant", j, p_grant, &p);
  if (rc)
    return rc;
  *id = p.a;
  if (ttl_out)
    *ttl_out = p.b;
  return 0;
}

int kvds_etcd_lease_keepalive(kvds_etcd *e, int64_t id, int64_t *ttl_s) {
  json_t *j = json_object();
  j = obj_or_null(!j || set_i64(j, "ID", id), j);
  int64_t t;
  int rc = call(e, "/v3/lease/keepalive", j, p_keepalive, &t);
  if (rc == 0 && ttl_s)
    *ttl_s = t;
  return rc;
}

int kvds_etcd_lease_revoke(kvds_etcd *e, int64_t id) {
  json_t *j = json_object();
  j = obj_or_null(!j || set_i64(j, "ID", id), j);
  struct i64_pair p;
  return call(e, "/v3/lease/revoke", j, p_header, &p);
}

int kvds_etcd_put(kvds_etcd *e, const void *key, size_t klen, const void *val,
                  size_t vlen, int64_t lease, int64_t *revision) {
  if (!key || klen == 0 || (!val && vlen))
    return KVDS_E_INVAL;
  json_t *j = json_object();
  j = obj_or_null(!j || set_b64(j, "key", key, klen) ||
                      set_b64(j, "value", val ? val : "", vlen) ||
                      (lease && set_i64(j, "lease", lease)),
                  j);
  struct i64_pair p;
  int rc = call(e, "/v3/kv/put", j, p_header, &p);
  if (rc == 0 && revision)
    *revision = p.a;
  return rc;
}

static int range(kvds_etcd *e, const void *key, size_t klen, const void *end,
                 size_t elen, struct kvds_etcd_range *out) {
  json_t *j = json_object();
  j = obj_or_null(!j || set_b64(j, "key", key, klen) ||
                      (end && set_b64(j, "range_end", end, elen)),
                  j);
  return call(e, "/v3/kv/range", j, p_range, out);
}

int kvds_etcd_get(kvds_etcd *e, const void *key, size_t klen,
                  struct kvds_etcd_range *out) {
  if (!key || klen == 0 || !out)
    return KVDS_E_INVAL;
  struct kvds_etcd_range r;
  int rc = range(e, key, klen, NULL, 0, &r);
  if (rc)
    return rc;
  if (r.n != 1) {
    kvds_etcd_range_free(&r);
    pthread_mutex_lock(&e->mu);
    snprintf(e->c.msg, sizeof e->c.msg, "key not found");
    pthread_mutex_unlock(&e->mu);
    return KVDS_E_NOTFOUND;
  }
  *out = r;
  return 0;
}

int kvds_etcd_range_prefix(kvds_etcd *e, const void *prefix, size_t plen,
                           struct kvds_etcd_range *out) {
  if ((!prefix && plen) || !out)
    return KVDS_E_INVAL;
  uint8_t *end = malloc(plen ? plen : 1);
  if (!end)
    return -ENOMEM;
  size_t elen = kvds__etcd_prefix_end(prefix, plen, end);
  /* An empty prefix: from "\0" to the end, i.e. every key. */
  static const uint8_t zero = 0;
  int rc = range(e, plen ? prefix : &zero, plen ? plen : 1, end, elen, out);
  free(end);
  return rc;
}

int kvds_etcd_delete(kvds_etcd *e, const void *key, size_t klen,
                     int64_t *deleted) {
  if (!key || klen == 0)
    return KVDS_E_INVAL;
  json_t *j = json_object();
  j = obj_or_null(!j || set_b64(j, "key", key, klen), j);
  struct i64_pair p;
  int rc = call(e, "/v3/kv/deleterange", j, p_header, &p);
  if (rc == 0 && deleted)
    *deleted = p.b;
  return rc;
}

int kvds_etcd_compact(kvds_etcd *e, int64_t revision) {
  if (revision <= 0)
    return KVDS_E_INVAL;
  json_t *j = json_object();
  j = obj_or_null(!j || set_i64(j, "revision", revision), j);
  struct i64_pair p;
  return call(e, "/v3/kv/compaction", j, p_header, &p);
}

/* ---- watch --------------------------------------------------------------- */

enum { STREAM_RESYNC = 1 };

struct kvds_etcd_watch {
  struct conn c;
  atomic_int stop;
  uint8_t *prefix, *end;
  size_t plen, elen;
  kvds_etcd_watch_fn fn;
  void *arg;
  int64_t next_rev; /* 0: from now on (until the stream says where "now" is) */
  int need_resync;
  atomic_int resync_req; /* kvds_etcd_watch_resync asked for one */
  char cluster_id[24];   /* of the etcd that served the last stream */
  int down;              /* a DOWN note was sent and no UP yet */
  int created;
  long status;   /* the stream's HTTP status, 0 until its first bytes */
  int abort_why; /* why the write callback ended the stream */
  struct buf line;
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int refs; /* the thread and the owner */
};

static void watch_unref(kvds_etcd_watch *w) {
  pthread_mutex_lock(&w->mu);
  int last = --w->refs == 0;
  pthread_mutex_unlock(&w->mu);
  if (!last)
    return;
  conn_fini(&w->c);
  free(w->prefix);
  free(w->end);
  free(w->line.p);
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
  free(w);
}

static void note(kvds_etcd_watch *w, struct kvds_etcd_note *n) {
  if (!atomic_load(&w->stop))
    w->fn(w->arg, n);
}

/* One line of the stream. Returns 0 to go on, else the reason to stop. */
static int watch_line(kvds_etcd_watch *w, const char *s, size_t len) {
  struct kvds__etcd_watch_msg m;
  int rc = kvds__etcd_parse_watch(s, len, &m, w->c.msg, sizeof w->c.msg);
  if (rc)
    return rc;
  if (m.canceled) {
    rc = m.compact_revision > 0 ? STREAM_RESYNC : -ECONNRESET;
    if (!m.compact_revision)
      snprintf(w->c.msg, sizeof w->c.msg, "etcd cancelled the watch");
    goto out;
  }
  if (m.created) {
    /* A new etcd cluster, or one whose revision went backwards (rebuilt
     * from an empty data directory on the same address): what we resume
     * from means nothing there, and events would be missed. Read it all. */
    int other = m.cluster_id[0] && w->cluster_id[0] &&
                strcmp(m.cluster_id, w->cluster_id) != 0;
    int behind =
        w->next_rev > 0 && m.revision > 0 && m.revision < w->next_rev - 1;
    if (m.cluster_id[0])
      memcpy(w->cluster_id, m.cluster_id, sizeof w->cluster_id);
    if (other || behind) {
      snprintf(w->c.msg, sizeof w->c.msg,
               "etcd %s (revision %lld, resuming at %lld): resync",
               other ? "cluster id changed" : "history went backwards",
               (long long)m.revision, (long long)w->next_rev);
      rc = STREAM_RESYNC;
      goto out;
    }
    w->created = 1;
    if (w->next_rev == 0)
      w->next_rev = m.revision + 1;
    if (w->down) {
      w->down = 0;
      note(w, &(struct kvds_etcd_note){.kind = KVDS_ETCD_NOTE_UP,
                                       .revision = m.revision});
    }
  }
  /* Deliver each revision once: skip anything before the resume point. */
  size_t k = 0;
  for (size_t i = 0; i < m.n; i++)
    if (m.events[i].kv.mod_revision >= w->next_rev)
      m.events[k++] = m.events[i];
    else
      free(m.events[i].kv.key.base);
  m.n = k;
  if (k) {
    int64_t last = m.events[k - 1].kv.mod_revision;
    note(w, &(struct kvds_etcd_note){.kind = KVDS_ETCD_NOTE_EVENTS,
                                     .events = m.events,
                                     .n = k,
                                     .revision = last});
    w->next_rev = last + 1;
  }
out:
  kvds__etcd_watch_msg_free(&m);
  return rc;
}

static size_t watch_write(char *d, size_t sz, size_t nm, void *u) {
  kvds_etcd_watch *w = u;
  nm *= sz; /* sz is always 1 */
  if (atomic_load(&w->stop) || buf_add(&w->line, d, nm) != 0) {
    w->abort_why = atomic_load(&w->stop) ? KVDS_E_SHUTDOWN : KVDS_E_LIMIT;
    return 0;
  }
  if (!w->status)
    curl_easy_getinfo(w->c.easy, CURLINFO_RESPONSE_CODE, &w->status);
  /* Not a stream but an error reply (gateway errors are not split in
   * lines): keep it whole for watch_stream to map. */
  if (w->status != 200)
    return nm;
  /* The gateway ends every message with '\n' (JSON escapes any inside). */
  size_t start = 0;
  for (;;) {
    char *nl = memchr(w->line.p + start, '\n', w->line.len - start);
    if (!nl)
      break;
    size_t l = (size_t)(nl - (w->line.p + start));
    int rc = l ? watch_line(w, w->line.p + start, l) : 0;
    start += l + 1;
    if (rc) {
      w->abort_why = rc;
      return 0;
    }
  }
  memmove(w->line.p, w->line.p + start, w->line.len - start);
  w->line.len -= start;
  return nm;
}

/* One stream: from connect to break. Returns why it ended. */
static int watch_stream(kvds_etcd_watch *w) {
  json_t *cr = json_object(), *j = json_object();
  int bad = !cr || !j || set_b64(cr, "key", w->prefix, w->plen) ||
            set_b64(cr, "range_end", w->end, w->elen) ||
            (w->next_rev && set_i64(cr, "start_revision", w->next_rev)) ||
            json_object_set(j, "create_request", cr);
  json_decref(cr);
  char *body = bad ? NULL : json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (!body)
    return -ENOMEM;
  char url[400];
  snprintf(url, sizeof url, "%s/v3/watch", w->c.eps[w->c.cur].url);
  w->line.len = 0;
  w->line.over = 0;
  w->abort_why = 0;
  w->created = 0;
  w->status = 0;
  setup(&w->c, url, body, w->c.timeout_ms, 0, watch_write, w);
  w->c.kick = &w->resync_req; /* only the stream is broken off */
  CURLcode cc = perform(&w->c);
  w->c.kick = NULL;
  free(body);
  if (atomic_load(&w->stop))
    return KVDS_E_SHUTDOWN;
  if (atomic_exchange(&w->resync_req, 0))
    return STREAM_RESYNC;
  if (cc == CURLE_WRITE_ERROR && w->abort_why)
    return w->abort_why;
  int rc = cc == CURLE_OK ? -ECONNRESET : map_curl(&w->c, cc, &w->line);
  long st = 0;
  curl_easy_getinfo(w->c.easy, CURLINFO_RESPONSE_CODE, &st);
  if (cc == CURLE_OK && st != 200) {
    rc = kvds__etcd_parse_error(w->line.p ? w->line.p : "", w->line.len,
                                w->c.msg, sizeof w->c.msg);
    if (rc == KVDS_E_PROTO) {
      snprintf(w->c.msg, sizeof w->c.msg, "%s: HTTP %ld from etcd", url, st);
      rc = -EIO;
    }
    return rc;
  }
  conn_fail(&w->c, url, rc);
  return rc;
}

/* The whole prefix, then resume after its revision. */
static int watch_resync(kvds_etcd_watch *w) {
  json_t *j = json_object();
  j = obj_or_null(!j || set_b64(j, "key", w->prefix, w->plen) ||
                      set_b64(j, "range_end", w->end, w->elen),
                  j);
  struct kvds_etcd_range r;
  int rc = call_locked(&w->c, "/v3/kv/range", j, p_range, &r);
  if (rc)
    return atomic_load(&w->stop) ? KVDS_E_SHUTDOWN : rc;
  note(w, &(struct kvds_etcd_note){.kind = KVDS_ETCD_NOTE_RESYNC,
                                   .kvs = r.kvs,
                                   .n = r.n,
                                   .revision = r.revision});
  w->next_rev = r.revision + 1;
  w->need_resync = 0;
  kvds_etcd_range_free(&r);
  return 0;
}

/* Waits ms or until close(); returns nonzero once stopping. */
static int watch_pause(kvds_etcd_watch *w, int ms) {
  uint64_t until = kvds_deadline_ms(ms);
  pthread_mutex_lock(&w->mu);
  while (!atomic_load(&w->stop) && !atomic_load(&w->resync_req) &&
         kvds_cond_wait_until(&w->cv, &w->mu, until) == 0)
    ;
  pthread_mutex_unlock(&w->mu);
  return atomic_load(&w->stop);
}

static void *watch_main(void *arg) {
  kvds_etcd_watch *w = arg;
  int backoff = BACKOFF_MIN_MS;
  while (!atomic_load(&w->stop)) {
    if (atomic_exchange(&w->resync_req, 0))
      w->need_resync = 1;
    int rc = w->need_resync ? watch_resync(w) : 0;
    if (rc == 0 && !w->need_resync) {
      rc = watch_stream(w);
      if (w->created) /* it got going: the next break starts over */
        backoff = BACKOFF_MIN_MS;
      if (rc == STREAM_RESYNC) {
        w->need_resync = 1;
        continue;
      }
    }
    if (atomic_load(&w->stop))
      break;
    if (!w->down) {
      w->down = 1;
      note(w, &(struct kvds_etcd_note){.kind = KVDS_ETCD_NOTE_DOWN, .err = rc});
    }
    /* Another endpoint may be up. */
    w->c.cur = (w->c.cur + 1) % w->c.n;
    if (watch_pause(w, backoff))
      break;
    backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
  }
  watch_unref(w);
  return NULL;
}

int kvds_etcd_watch_open(kvds_etcd *e, const void *prefix, size_t plen,
                         int64_t start_revision, kvds_etcd_watch_fn fn,
                         void *arg, kvds_etcd_watch **out) {
  if (!e || !prefix || plen == 0 || !fn || !out || start_revision < 0)
    return KVDS_E_INVAL;
  kvds_etcd_watch *w = calloc(1, sizeof *w);
  if (!w)
    return -ENOMEM;
  pthread_mutex_lock(&e->mu);
  int rc = conn_init(&w->c, e->c.eps, e->c.n, e->c.timeout_ms, 1);
  w->c.cur = e->c.cur;
  pthread_mutex_unlock(&e->mu);
  w->c.stop = &w->stop;
  w->prefix = malloc(plen);
  w->end = malloc(plen);
  if (rc || !w->prefix || !w->end) {
    rc = rc ? rc : -ENOMEM;
    goto fail;
  }
  memcpy(w->prefix, prefix, plen);
  w->plen = plen;
  w->elen = kvds__etcd_prefix_end(prefix, plen, w->end);
  w->fn = fn;
  w->arg = arg;
  w->next_rev = start_revision;
  w->refs = 2;
  atomic_init(&w->stop, 0);
  atomic_init(&w->resync_req, 0);
  pthread_mutex_init(&w->mu, NULL);
  kvds_cond_init_mono(&w->cv);
  rc = -pthread_create(&w->th, NULL, watch_main, w);
  if (rc) {
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    goto fail;
  }
  *out = w;
  return 0;
fail:
  conn_fini(&w->c);
  free(w->prefix);
  free(w->end);
  free(w);
  return rc;
}

void kvds_etcd_watch_resync(kvds_etcd_watch *w) {
  if (!w)
    return;
  pthread_mutex_lock(&w->mu);
  atomic_store(&w->resync_req, 1);
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  curl_multi_wakeup(w->c.multi);
}

int kvds_etcd_watch_close(kvds_etcd_watch *w) {
  if (!w)
    return 0;
  pthread_mutex_lock(&w->mu);
  atomic_store(&w->stop, 1);
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  curl_multi_wakeup(w->c.multi);
  int rc = 0;
  if (pthread_equal(pthread_self(), w->th)) {
    pthread_detach(w->th);
    rc = KVDS_E_INVAL;
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ms = (int64_t)w->c.timeout_ms + 1000;
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    if (pthread_timedjoin_np(w->th, NULL, &ts) != 0) {
      pthread_detach(w->th);
      rc = KVDS_E_TIMEOUT;
    }
  }
  watch_unref(w);
  return rc;
}
