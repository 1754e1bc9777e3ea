/*
 * http.c — the worker's HTTP endpoint (libevent evhttp) on its own thread:
 * /health, /status (JSON) and /metrics (Prometheus text), both from one
 * snapshot of the counters (stats.h). It never touches connections.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvds/kvds.h"
#include "worker/cluster/cluster.h"
#include "worker/server.h"
#include "worker/stats.h"

struct kvds_http {
  struct kvds_server *srv;
  struct event_base *base;
  struct evhttp *http;
  pthread_t tid;
  int need_token; /* /status and /metrics want "Authorization: Bearer" */
};

char *kvds__server_status_json(struct kvds_server *s) {
  struct kvds__stats st;
  kvds__stats_read(s, &st);
  json_t *pool = json_pack(
      "{s:I,s:I,s:I,s:I,s:I,s:I,s:b}", "capacity", (json_int_t)st.pool_capacity,
      "used", (json_int_t)st.pool_used, "free", (json_int_t)st.pool_free,
      "largest_free", (json_int_t)st.pool_largest_free, "free_extents",
      (json_int_t)st.pool_free_extents, "fragmentation_ppm",
      (json_int_t)st.pool_fragmentation_ppm, "huge_pages", s->pool.huge);
  json_t *objs = json_pack(
      "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "objects",
      (json_int_t)st.objects, "writing", (json_int_t)st.objects_writing,
      "pinned", (json_int_t)st.pinned_objects, "puts", (json_int_t)st.puts,
      "hits", (json_int_t)st.hits, "misses", (json_int_t)st.misses, "evictions",
      (json_int_t)st.evictions, "evicted_bytes", (json_int_t)st.evicted_bytes,
      "nospace", (json_int_t)st.nospace);
  json_t *net =
      json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:I}", "connections",
                (json_int_t)st.connections, "connections_total",
                (json_int_t)st.connections_total, "requests",
                (json_int_t)st.requests, "bytes_in", (json_int_t)st.bytes_in,
                "bytes_out", (json_int_t)st.bytes_out, "protocol_errors",
                (json_int_t)st.protocol_errors, "auth_required", s->auth,
                "auth_failures", (json_int_t)st.auth_failures);
  if (net) { /* limits (docs/worker.md), as in STATS */
#define LIMIT(name)                                                            \
  json_object_set_new(net, #name, json_integer((json_int_t)st.name));
    KVDS__STATS_LIMITS(LIMIT)
#undef LIMIT
    json_object_set_new(net, "access_refused",
                        json_integer((json_int_t)st.access_refused));
    json_t *per = json_array();
    for (int i = 0; per && i < s->nthreads; i++)
      json_array_append_new(
          per, json_integer((json_int_t)atomic_load(&s->threads[i].ntcp)));
    if (per)
      json_object_set_new(net, "tcp_per_thread", per);
  }
  json_t *root = json_pack(
      "{s:s,s:s,s:s,s:I,s:I,s:I,s:f,s:f,s:o,s:o,s:o}", "version",
      KVDS_VERSION_STRING, "listen", s->cfg.listen, "socket", s->socket_path,
      "pid", (json_int_t)st.pid, "threads", (json_int_t)s->nthreads, "uptime_s",
      (json_int_t)st.uptime_s, "eviction_high_watermark_ratio",
      s->cfg.high_watermark, "eviction_ratio", s->cfg.eviction_ratio, "pool",
      pool, "store", objs, "net", net);
  if (!root)
    return NULL;
  /* The tier as configured (disk counters come with the tier itself). */
  const struct kvds_worker_config *c = &s->cfg;
  json_object_set_new(
      root, "tier",
      json_pack("{s:s,s:s,s:I,s:s,s:s,s:i}", "kind",
                kvds_worker_tier_name(c->tier), "dir", c->disk_dir, "capacity",
                (json_int_t)c->disk_capacity, "policy",
                kvds_worker_disk_policy_name(c->disk_policy), "fsync",
                kvds_worker_disk_fsync_name(c->disk_fsync), "threads",
                c->disk_threads));
  json_t *cluster = s->members ? kvds_membership_json(s->members) : NULL;
  if (cluster) {
    kvds__cluster_annotate(s, cluster);
    json_object_set_new(root, "cluster", cluster);
  }
  char *out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  json_decref(root);
  return out;
}

char *kvds__server_metrics_text(struct kvds_server *s) {
  struct kvds__stats st;
  kvds__stats_read(s, &st);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    return NULL;
  kvds__stats_write_metrics(&st, f);
  if (s->members) {
    kvds__metric_write(f, "gauge", "cluster_members",
                       "Workers in this worker's view of the cluster "
                       "(itself included).",
                       kvds_membership_size(s->members));
    kvds__metric_write(f, "gauge", "etcd_up",
                       "1 if etcd answers and the member watch is connected "
                       "(etcd mode; else 0).",
                       (uint64_t)kvds_membership_etcd_up(s->members));
  }
  kvds__cluster_metrics(s, f);
  fclose(f);
  return buf;
}

static void send_text(struct evhttp_request *req, int code, const char *ctype,
                      char *body) {
  if (!body) {
    evhttp_send_error(req, 500, "out of memory");
    return;
  }
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    free(body);
    evhttp_send_error(req, 500, "out of memory");
    return;
  }
  evbuffer_add(b, body, strlen(body));
  free(body);
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                    ctype);
  evhttp_send_reply(req, code,
                    code == 200   ? "OK"
                    : code == 401 ? "Unauthorized"
                                  : "Error",
                    b);
  evbuffer_free(b);
}

/* "Bearer <the token>", compared in constant time. */
static int bearer_ok(struct kvds_http *h, struct evhttp_request *req) {
  const char *v = evhttp_find_header(evhttp_request_get_input_headers(req),
                                     "Authorization");
  const struct kvds_auth_token *t = &h->srv->token;
  if (!v || strncmp(v, "Bearer ", 7) != 0)
    return 0;
  v += 7;
  size_t n = strlen(v);
  unsigned diff = n != t->len;
  for (size_t i = 0; i < t->len; i++)
    diff |= (unsigned)(uint8_t)(i < n ? v[i] : 0) ^ t->bytes[i];
  return diff == 0;
}

static void on_request(struct evhttp_request *req, void *arg) {
  struct kvds_http *h = arg;
  const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
  if (!path)
    path = "/";
  if (h->need_token && strcmp(path, "/health") != 0 && !bearer_ok(h, req)) {
    evhttp_add_header(evhttp_request_get_output_headers(req),
                      "WWW-Authenticate", "Bearer");
    send_text(req, 401, "text/plain",
              strdup("401: this endpoint is not on a loopback address: send "
                     "'Authorization: Bearer <the --auth-token-file "
                     "token>'\n"));
    return;
  }
  if (strcmp(path, "/health") == 0) {
    int ok = !atomic_load(&h->srv->stopping);
    send_text(
        req, ok ? 200 : 503, "application/json",
        strdup(ok ? "{\"status\":\"ok\"}\n" : "{\"status\":\"stopping\"}\n"));
  } else if (strcmp(path, "/status") == 0) {
    send_text(req, 200, "application/json", kvds__server_status_json(h->srv));
  } else if (strcmp(path, "/metrics") == 0) {
    send_text(req, 200, "text/plain; version=0.0.4",
              kvds__server_metrics_text(h->srv));
  } else {
    evhttp_send_error(req, 404, "try /health, /status or /metrics");
  }
}

static void *http_main(void *arg) {
  struct kvds_http *h = arg;
  event_base_loop(h->base, EVLOOP_NO_EXIT_ON_EMPTY);
  return NULL;
}

int kvds__http_start(struct kvds_server *s, const char *host, int port,
                     int need_token, struct kvds_http **out) {
  struct kvds_http *h = calloc(1, sizeof *h);
  if (!h)
    return -ENOMEM;
  h->srv = s;
  h->need_token = need_token;
  h->base = event_base_new();
  h->http = h->base ? evhttp_new(h->base) : NULL;
  if (!h->http)
    goto fail;
  evhttp_set_gencb(h->http, on_request, h);
  evhttp_set_timeout(h->http, 10);
  if (evhttp_bind_socket(h->http, host, (uint16_t)port)) {
    evhttp_free(h->http);
    event_base_free(h->base);
    free(h);
    return -EADDRINUSE;
  }
  if (pthread_create(&h->tid, NULL, http_main, h))
    goto fail;
  *out = h;
  return 0;
fail:
  if (h->http)
    evhttp_free(h->http);
  if (h->base)
    event_base_free(h->base);
  free(h);
  return -ENOMEM;
}

void kvds__http_stop(struct kvds_http *h) {
  if (!h)
    return;
  /* loopexit is delivered as an event, so it also stops a loop that has not
   * started yet (a loopbreak issued before the loop runs would be lost). */
  event_base_loopexit(h->base, NULL);
  pthread_join(h->tid, NULL);
  evhttp_free(h->http);
  event_base_free(h->base);
  free(h);
}
