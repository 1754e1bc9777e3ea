/* proxy.c — the listening socket, the proxy's own endpoints, signals. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/util.h"
#include "proxy/internal.h"

#define DRAIN_S 10
#define MAX_HEADERS (64u << 10)

void px_send_error(struct kvds_proxy *px, struct evhttp_request *creq, int code,
                   const char *type, const char *param, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  px_count_error(px, code);
  json_t *e = json_pack("{s:{s:s,s:s,s:o,s:i}}", "error", "message", msg,
                        "type", type, "param",
                        param ? json_string(param) : json_null(), "code", code);
  char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
  json_decref(e);
  struct evbuffer *b = evbuffer_new();
  if (b && s)
    evbuffer_add(b, s, strlen(s));
  free(s);
  evhttp_add_header(evhttp_request_get_output_headers(creq), "Content-Type",
                    "application/json");
  evhttp_send_reply(creq, code, NULL, b);
  if (b)
    evbuffer_free(b);
}

static void reply_written(struct evhttp_request *creq, void *arg) {
  (void)creq;
  struct kvds_proxy *px = arg;
  if (px->writing)
    px->writing--;
  px_maybe_exit(px);
}

void px_track_reply(struct kvds_proxy *px, struct evhttp_request *creq) {
  evhttp_request_set_on_complete_cb(creq, reply_written, px);
  px->writing++;
}

void px_maybe_exit(struct kvds_proxy *px) {
  if (px->stopping && px->in_flight == 0 && px->writing == 0)
    event_base_loopexit(px->base, NULL);
}

static void send_json(struct kvds_proxy *px, struct evhttp_request *creq,
                      int code, json_t *j) {
  char *s = j ? json_dumps(j, JSON_COMPACT | JSON_INDENT(0)) : NULL;
  json_decref(j);
  struct evbuffer *b = evbuffer_new();
  if (b && s) {
    evbuffer_add(b, s, strlen(s));
    evbuffer_add(b, "\n", 1);
  }
  free(s);
  evhttp_add_header(evhttp_request_get_output_headers(creq), "Content-Type",
                    "application/json");
  px_track_reply(px, creq);
  evhttp_send_reply(creq, code, NULL, b);
  if (b)
    evbuffer_free(b);
}

static void on_health(struct kvds_proxy *px, struct evhttp_request *creq) {
  json_t *backends = json_array();
  for (int p = 0; p < 2; p++)
    for (size_t i = 0; i < px->pool[p].n; i++) {
      const struct px_backend *b = &px->pool[p].b[i];
      json_t *o = json_pack("{s:s,s:s,s:b,s:I}", "role", px_role_name(b->role),
                            "backend", b->name, "up", b->up, "outstanding",
                            (json_int_t)b->outstanding);
      if (o && !b->up)
        json_object_set_new(o, "why", json_string(b->why));
      json_array_append_new(backends, o);
    }
  int ok =
      px_pool_up(&px->pool[0]) > 0 && (!px->pd || px_pool_up(&px->pool[1]));
  if (px->stopping)
    ok = 0;
  send_json(px, creq, ok ? 200 : 503,
            json_pack("{s:s,s:s,s:s,s:o}", "status",
                      px->stopping ? "stopping"
                      : ok         ? "ok"
                                   : "unavailable",
                      "mode", px->pd ? "pd" : "colocated", "policy",
                      kvds_route_policy_name(px->cfg.policy), "backends",
                      backends));
}

static void on_metrics(struct kvds_proxy *px, struct evhttp_request *creq) {
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    evhttp_send_error(creq, 500, NULL);
    return;
  }
  static const char *const ep[2] = {"completions", "chat"};
  kvds_metric_head(b, "kvds_proxy_requests_total", "counter",
                   "Completion requests received, by endpoint.");
  for (int i = 0; i < 2; i++)
    evbuffer_add_printf(b, "kvds_proxy_requests_total{endpoint=\"%s\"} %llu\n",
                        ep[i], (unsigned long long)px->requests[i]);
  kvds_metric_head(b, "kvds_proxy_errors_total", "counter",
                   "Error answers sent to clients, by HTTP status.");
  for (int c = 0; c < PX_MAX_CODE; c++)
    if (px->errors[c])
      evbuffer_add_printf(b, "kvds_proxy_errors_total{code=\"%d\"} %llu\n", c,
                          (unsigned long long)px->errors[c]);
  kvds_metric_head(b, "kvds_proxy_retries_total", "counter",
                   "Hops retried on another instance, by role.");
  for (int r = 0; r < 3; r++)
    evbuffer_add_printf(b, "kvds_proxy_retries_total{role=\"%s\"} %llu\n",
                        px_role_name((enum px_role)r),
                        (unsigned long long)px->retries[r]);
  kvds_metric_head(b, "kvds_proxy_client_disconnects_total", "counter",
                   "Clients that went away before their answer was complete.");
  evbuffer_add_printf(b, "kvds_proxy_client_disconnects_total %llu\n",
                      (unsigned long long)px->disconnects);
  kvds_metric_head(b, "kvds_proxy_in_flight", "gauge",
                   "Client requests in flight.");
  evbuffer_add_printf(b, "kvds_proxy_in_flight %llu\n",
                      (unsigned long long)px->in_flight);
  kvds_metric_head(b, "kvds_proxy_ttft_seconds", "histogram",
                   "Request received to the answer's first byte sent.");
  kvds_hist_print(b, "kvds_proxy_ttft_seconds", "", &px->ttft);
  kvds_metric_head(b, "kvds_proxy_request_seconds", "histogram",
                   "Request received to its answer complete.");
  kvds_hist_print(b, "kvds_proxy_request_seconds", "", &px->total);

  static const struct {
    const char *name, *type, *help;
  } per[] = {
      {"kvds_proxy_backend_up", "gauge", "1 when the instance is healthy."},
      {"kvds_proxy_backend_outstanding", "gauge",
       "Requests in flight to the instance."},
      {"kvds_proxy_backend_requests_total", "counter",
       "Requests sent to the instance."},
      {"kvds_proxy_backend_failures_total", "counter",
       "Requests to the instance that failed (connection, 5xx, deadline)."},
  };
  for (size_t k = 0; k < sizeof per / sizeof per[0]; k++) {
    kvds_metric_head(b, per[k].name, per[k].type, per[k].help);
    for (int p = 0; p < 2; p++)
      for (size_t i = 0; i < px->pool[p].n; i++) {
        const struct px_backend *be = &px->pool[p].b[i];
        unsigned long long v = k == 0   ? (unsigned long long)be->up
                               : k == 1 ? be->outstanding
                               : k == 2 ? be->requests
                                        : be->failures;
        evbuffer_add_printf(b, "%s{role=\"%s\",backend=\"%s\"} %llu\n",
                            per[k].name, px_role_name(be->role), be->name, v);
      }
  }
  kvds_metric_head(b, "kvds_proxy_backend_seconds", "histogram",
                   "Per instance: prefill answer time; decode (and "
                   "colocated) time to first byte.");
  for (int p = 0; p < 2; p++)
    for (size_t i = 0; i < px->pool[p].n; i++) {
      const struct px_backend *be = &px->pool[p].b[i];
      char labels[400];
      snprintf(labels, sizeof labels, "role=\"%s\",backend=\"%s\"",
               px_role_name(be->role), be->name);
      kvds_hist_print(b, "kvds_proxy_backend_seconds", labels, &be->lat);
    }
  evhttp_add_header(evhttp_request_get_output_headers(creq), "Content-Type",
                    "text/plain; version=0.0.4");
  px_track_reply(px, creq);
  evhttp_send_reply(creq, 200, NULL, b);
  evbuffer_free(b);
}

static void on_request(struct evhttp_request *creq, void *arg) {
  struct kvds_proxy *px = arg;
  const char *uri = evhttp_request_get_uri(creq);
  char path[256];
  size_t n = strcspn(uri, "?");
  snprintf(path, sizeof path, "%.*s", (int)(n < 255 ? n : 255), uri);
  enum evhttp_cmd_type m = evhttp_request_get_command(creq);
  int post = m == EVHTTP_REQ_POST, get = m == EVHTTP_REQ_GET;
  if (strcmp(path, "/v1/completions") == 0 ||
      strcmp(path, "/v1/chat/completions") == 0) {
    if (!post) {
      evhttp_add_header(evhttp_request_get_output_headers(creq), "Allow",
                        "POST");
      px_send_error(px, creq, 405, "invalid_request_error", NULL,
                    "%s takes POST", path);
      return;
    }
    if (px->stopping) {
      px_send_error(px, creq, 503, "server_error", NULL,
                    "the proxy is shutting down");
      return;
    }
    px_forward(px, creq,
               path[4] == 'c' && path[5] == 'h' ? PX_CHAT : PX_COMPLETIONS);
    return;
  }
  const char *gets[] = {"/health", "/metrics", "/v1/models"};
  for (int i = 0; i < 3; i++)
    if (strcmp(path, gets[i]) == 0) {
      if (!get) {
        evhttp_add_header(evhttp_request_get_output_headers(creq), "Allow",
                          "GET");
        px_send_error(px, creq, 405, "invalid_request_error", NULL,
                      "%s takes GET", path);
      } else if (i == 0) {
        on_health(px, creq);
      } else if (i == 1) {
        on_metrics(px, creq);
      } else if (px->stopping) {
        px_send_error(px, creq, 503, "server_error", NULL,
                      "the proxy is shutting down");
      } else {
        px_forward(px, creq, PX_MODELS);
      }
      return;
    }
  px_send_error(px, creq, 404, "invalid_request_error", NULL,
                "no such endpoint: %s (the proxy serves /v1/completions, "
                "/v1/chat/completions, /v1/models, /health, /metrics)",
                path);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)what;
  struct kvds_proxy *px = arg;
  if (px->stopping) {
    fprintf(stderr, "kvds proxy: second signal: exiting now\n");
    event_base_loopexit(px->base, NULL);
    return;
  }
  px->stopping = 1;
  fprintf(stderr,
          "kvds proxy: %s: no new requests; %llu in flight get up to %d s\n",
          sig == SIGINT ? "SIGINT" : "SIGTERM",
          (unsigned long long)px->in_flight, DRAIN_S);
  if (px->sock) {
    evhttp_del_accept_socket(px->http, px->sock);
    px->sock = NULL;
  }
  struct timeval tv = {DRAIN_S, 0};
  evtimer_add(px->drain, &tv);
  px_maybe_exit(px);
}

static void on_drain(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct kvds_proxy *px = arg;
  fprintf(stderr, "kvds proxy: %llu requests still in flight: cancelled\n",
          (unsigned long long)px->in_flight);
  event_base_loopexit(px->base, NULL);
}

static char *dup_or_null(const char *s) {
  return s ? strdup(s) : NULL;
}

int kvds_proxy_new(const struct kvds_proxy_config *cfg, kvds_proxy **out,
                   char *err, size_t ecap) {
  *out = NULL;
  if (cfg->nprefill == 0)
    return kvds_errf(err, ecap, -1, "no %s given (--prefill HOST:PORT)",
                     cfg->ndecode ? "prefill instance" : "instance");
  struct kvds_proxy *px = calloc(1, sizeof *px);
  if (!px)
    return kvds_errf(err, ecap, -1, "out of memory");
  px->cfg = *cfg;
  px->cfg.host = px->host_copy =
      dup_or_null(cfg->host ? cfg->host : "127.0.0.1");
  px->cfg.api_key = px->api_key_copy = dup_or_null(cfg->api_key);
  px->cfg.prefill = px->cfg.decode = NULL;
  if (px->cfg.affinity_block == 0)
    px->cfg.affinity_block = 128;
  px->pd = cfg->ndecode > 0;
  /* Deadlines on the precise monotonic clock: the default coarse one
   * (1-4 ms ticks) lets a timer fire before its time has passed. */
  struct event_config *ec = event_config_new();
  if (ec && event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER) == 0)
    px->base = event_base_new_with_config(ec);
  if (ec)
    event_config_free(ec);
  if (!px->base || !px->host_copy) {
    snprintf(err, ecap, "out of memory");
    goto fail;
  }
  if (px_pool_init(px, &px->pool[0], px->pd ? PX_PREFILL : PX_BOTH,
                   cfg->prefill, cfg->nprefill, err, ecap) != 0 ||
      px_pool_init(px, &px->pool[1], PX_DECODE, cfg->decode, cfg->ndecode, err,
                   ecap) != 0)
    goto fail;
  px->http = evhttp_new(px->base);
  px->drain = evtimer_new(px->base, on_drain, px);
  px->sig[0] = evsignal_new(px->base, SIGINT, on_signal, px);
  px->sig[1] = evsignal_new(px->base, SIGTERM, on_signal, px);
  if (!px->http || !px->drain || !px->sig[0] || !px->sig[1]) {
    snprintf(err, ecap, "out of memory");
    goto fail;
  }
  /* libevent answers bodies above its own limit with a bare 413; up to
   * twice ours (and at least 1 MiB more) the client gets our JSON error. */
  uint64_t hard = cfg->max_body > (UINT64_MAX >> 2)
                      ? (UINT64_MAX >> 2)
                      : cfg->max_body * 2 + (1u << 20);
  evhttp_set_max_body_size(px->http, (ev_ssize_t)hard);
  evhttp_set_max_headers_size(px->http, MAX_HEADERS);
  /* Every method reaches on_request, which answers 405 in JSON. */
  evhttp_set_allowed_methods(
      px->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                    EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                    EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
  /* A client waits for a whole prefill and decode without I/O. */
  evhttp_set_timeout(
      px->http,
      (int)((cfg->prefill_timeout_ms + cfg->decode_timeout_ms) / 1000 + 60));
  evhttp_set_gencb(px->http, on_request, px);
  /* No text/html default for an answer whose backend sent no type. */
  evhttp_set_default_content_type(px->http, NULL);
  px->sock = evhttp_bind_socket_with_handle(px->http, px->cfg.host, cfg->port);
  if (!px->sock) {
    snprintf(err, ecap, "cannot listen on %s:%u: %s", px->cfg.host,
             (unsigned)cfg->port, strerror(errno));
    goto fail;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  evutil_socket_t fd = evhttp_bound_socket_get_fd(px->sock);
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
    px->port =
        ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                       : ((struct sockaddr_in *)&ss)->sin_port);
  if (event_add(px->sig[0], NULL) != 0 || event_add(px->sig[1], NULL) != 0 ||
      px_health_start(px) != 0) {
    snprintf(err, ecap, "cannot start the event loop");
    goto fail;
  }
  *out = px;
  return 0;
fail:
  kvds_proxy_free(px);
  return -1;
}

uint16_t kvds_proxy_port(const kvds_proxy *px) {
  return px->port;
}

int kvds_proxy_run(kvds_proxy *px) {
  return event_base_dispatch(px->base) < 0 ? -1 : 0;
}

void kvds_proxy_free(kvds_proxy *px) {
  if (!px)
    return;
  px->stopping = 1;
  px_forward_abort_all(px);
  if (px->writing && px->base) {
    /* Let the answers just sent (503s, cut streams) go out: up to 1 s. */
    struct timeval tv = {1, 0};
    event_base_loopexit(px->base, &tv);
    event_base_dispatch(px->base);
  }
  if (px->http)
    evhttp_free(px->http);
  for (int p = 0; p < 2; p++)
    px_pool_destroy(&px->pool[p]);
  for (int i = 0; i < 2; i++)
    if (px->sig[i])
      event_free(px->sig[i]);
  if (px->drain)
    event_free(px->drain);
  if (px->base) {
    /* Let the cancelled connections' deferred frees run. */
    event_base_loop(px->base, EVLOOP_NONBLOCK);
    event_base_free(px->base);
  }
  free(px->host_copy);
  free(px->api_key_copy);
  free(px);
}
