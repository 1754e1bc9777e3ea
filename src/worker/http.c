/*
 * http.c — the worker's HTTP endpoint (libevent evhttp) on its own thread:
 * /health, /status (JSON) and /metrics (Prometheus text). It reads the store
 * under its lock for a consistent snapshot and never touches connections.
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
#include <unistd.h>

#include "common/util.h"
#include "kvds/kvds.h"
#include "worker/cluster/cluster.h"
#include "worker/server.h"

struct kvds_http {
  struct kvds_server *srv;
  struct event_base *base;
  struct evhttp *http;
  pthread_t tid;
  int need_token; /* /status and /metrics want "Authorization: Bearer" */
};

struct snapshot {
  struct kvds_alloc_stats as;
  struct kvds_store_counters ct;
  uint64_t objects, connections, connections_total, protocol_errors;
  uint64_t bytes_in, bytes_out, requests, uptime_s, auth_failures;
  uint64_t closed_idle, closed_for_room, closed_slow, refused;
  uint64_t writing_refused, access_refused;
};

static void snap(struct kvds_server *s, struct snapshot *sn) {
  pthread_mutex_lock(&s->store.lock);
  kvds_alloc_stats(&s->store.alloc, &sn->as);
  sn->ct = s->store.ctr;
  sn->objects = s->store.index.count;
  pthread_mutex_unlock(&s->store.lock);
  sn->connections = atomic_load(&s->connections);
  sn->connections_total = atomic_load(&s->connections_total);
  sn->protocol_errors = atomic_load(&s->protocol_errors);
  sn->bytes_in = atomic_load(&s->bytes_in);
  sn->bytes_out = atomic_load(&s->bytes_out);
  sn->requests = atomic_load(&s->requests);
  sn->auth_failures = atomic_load(&s->auth_failures);
  sn->closed_idle = atomic_load(&s->closed_idle);
  sn->closed_for_room = atomic_load(&s->closed_for_room);
  sn->closed_slow = atomic_load(&s->closed_slow);
  sn->refused = atomic_load(&s->refused);
  sn->writing_refused = atomic_load(&s->writing_refused);
  sn->access_refused = atomic_load(&s->access_refused);
  sn->uptime_s = (kvds_now_us() - s->start_us) / 1000000u;
}

char *kvds__server_status_json(struct kvds_server *s) {
  struct snapshot sn;
  snap(s, &sn);
  json_t *pool = json_pack(
      "{s:I,s:I,s:I,s:I,s:I,s:I,s:b}", "capacity", (json_int_t)sn.as.capacity,
      "used", (json_int_t)sn.as.used, "free", (json_int_t)sn.as.free,
      "largest_free", (json_int_t)sn.as.largest_free, "free_extents",
      (json_int_t)sn.as.free_extents, "fragmentation_ppm",
      (json_int_t)sn.as.fragmentation_ppm, "huge_pages", s->pool.huge);
  json_t *objs = json_pack(
      "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "objects",
      (json_int_t)sn.objects, "writing", (json_int_t)sn.ct.writing_objects,
      "pinned", (json_int_t)sn.ct.pinned_objects, "puts",
      (json_int_t)sn.ct.puts, "hits", (json_int_t)sn.ct.hits, "misses",
      (json_int_t)sn.ct.misses, "evictions", (json_int_t)sn.ct.evictions,
      "evicted_bytes", (json_int_t)sn.ct.evicted_bytes, "nospace",
      (json_int_t)sn.ct.nospace);
  json_t *net =
      json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:I}", "connections",
                (json_int_t)sn.connections, "connections_total",
                (json_int_t)sn.connections_total, "requests",
                (json_int_t)sn.requests, "bytes_in", (json_int_t)sn.bytes_in,
                "bytes_out", (json_int_t)sn.bytes_out, "protocol_errors",
                (json_int_t)sn.protocol_errors, "auth_required", s->auth,
                "auth_failures", (json_int_t)sn.auth_failures);
  if (net) { /* limits (docs/worker.md), as in STATS */
    json_object_set_new(net, "max_connections", json_integer(s->max_conns));
    json_object_set_new(net, "connections_closed_idle",
                        json_integer((json_int_t)sn.closed_idle));
    json_object_set_new(net, "connections_closed_for_room",
                        json_integer((json_int_t)sn.closed_for_room));
    json_object_set_new(net, "connections_refused",
                        json_integer((json_int_t)sn.refused));
    json_object_set_new(net, "connections_closed_slow",
                        json_integer((json_int_t)sn.closed_slow));
    json_object_set_new(net, "writing_refused",
                        json_integer((json_int_t)sn.writing_refused));
    json_object_set_new(net, "access_refused",
                        json_integer((json_int_t)sn.access_refused));
  }
  json_t *root = json_pack(
      "{s:s,s:s,s:s,s:I,s:I,s:I,s:f,s:f,s:o,s:o,s:o}", "version",
      KVDS_VERSION_STRING, "listen", s->cfg.listen, "socket", s->socket_path,
      "pid", (json_int_t)getpid(), "threads", (json_int_t)s->nthreads,
      "uptime_s", (json_int_t)sn.uptime_s, "eviction_high_watermark_ratio",
      s->cfg.high_watermark, "eviction_ratio", s->cfg.eviction_ratio, "pool",
      pool, "store", objs, "net", net);
  if (!root)
    return NULL;
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
  struct snapshot sn;
  snap(s, &sn);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f)
    return NULL;
#define G(name, help, v)                                                       \
  fprintf(f,                                                                   \
          "# HELP kvds_" name " " help "\n# TYPE kvds_" name                   \
          " gauge\nkvds_" name " %llu\n",                                      \
          (unsigned long long)(v))
#define C(name, help, v)                                                       \
  fprintf(f,                                                                   \
          "# HELP kvds_" name " " help "\n# TYPE kvds_" name                   \
          " counter\nkvds_" name " %llu\n",                                    \
          (unsigned long long)(v))
  G("pool_capacity_bytes", "Bytes of the pool usable for objects.",
    sn.as.capacity);
  G("pool_used_bytes", "Bytes allocated to objects.", sn.as.used);
  G("pool_free_bytes", "Bytes not allocated.", sn.as.free);
  G("pool_largest_free_bytes", "Largest contiguous free extent.",
    sn.as.largest_free);
  G("pool_fragmentation_ppm", "1 - largest_free/free, parts per million.",
    sn.as.fragmentation_ppm);
  G("objects", "Objects in the index (sealed and writing).", sn.objects);
  G("objects_writing", "Objects being written.", sn.ct.writing_objects);
  G("objects_pinned", "Objects with at least one pin.", sn.ct.pinned_objects);
  C("puts_total", "Objects sealed.", sn.ct.puts);
  C("hits_total", "Get items found.", sn.ct.hits);
  C("misses_total", "Get items not found.", sn.ct.misses);
  C("evictions_total", "Objects evicted.", sn.ct.evictions);
  C("evicted_bytes_total", "Bytes evicted.", sn.ct.evicted_bytes);
  C("nospace_total", "Creates refused for lack of space.", sn.ct.nospace);
  G("connections", "Open client connections.", sn.connections);
  C("connections_total", "Client connections accepted.", sn.connections_total);
  G("max_connections", "Connections admitted at most (--max-connections).",
    s->max_conns);
  C("connections_closed_idle_total",
    "Connections closed after --idle-timeout-s holding nothing.",
    sn.closed_idle);
  C("connections_closed_for_room_total",
    "Idle connections closed at --max-connections to admit new ones.",
    sn.closed_for_room);
  C("connections_refused_total",
    "New connections refused at --max-connections (none idle).", sn.refused);
  C("connections_closed_slow_total",
    "Connections closed mid-transfer: no progress for --frame-timeout-ms, "
    "or slower than --min-rate.",
    sn.closed_slow);
  C("writing_refused_total",
    "Creates (and PUT items) refused with KVDS_E_NOSPACE: their connection "
    "held --max-writing-per-conn bytes being written.",
    sn.writing_refused);
  C("requests_total", "Request frames received.", sn.requests);
  C("received_bytes_total", "Bytes received on client sockets.", sn.bytes_in);
  C("sent_bytes_total", "Bytes sent on client sockets.", sn.bytes_out);
  C("protocol_errors_total", "Malformed frames received.", sn.protocol_errors);
  G("auth_required", "1 if TCP connections must prove the auth token.",
    s->auth);
  C("auth_failures_total", "TCP connections closed before they authenticated.",
    sn.auth_failures);
  C("access_refused_total",
    "Connections from users other than the worker's (root, --allow-group) "
    "that could not go on without the token.",
    sn.access_refused);
  G("uptime_seconds", "Seconds since start.", sn.uptime_s);
  if (s->members) {
    G("cluster_members",
      "Workers in this worker's view of the cluster "
      "(itself included).",
      kvds_membership_size(s->members));
    G("etcd_up",
      "1 if etcd answers and the member watch is connected "
      "(etcd mode; else 0).",
      kvds_membership_etcd_up(s->members));
  }
  kvds__cluster_metrics(s, f);
#undef G
#undef C
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
