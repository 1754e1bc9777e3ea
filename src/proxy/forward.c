/*
 * forward.c — one client request through the proxy.
 *
 * A px_req lives from the client's request until its answer is sent or the
 * client goes away. It runs at most one hop (one backend request) at a
 * time:
 *
 *   PD:         prefill hop (JSON answer, kept) -> decode hop (streamed)
 *   colocated:  one hop to a "both" instance (streamed)
 *   /v1/models: one GET hop (streamed)
 *
 * A hop owns its evhttp connection (released after its own callbacks,
 * freed at once elsewhere), a deadline timer and a connect timer. It ends
 * in exactly one of: on_done (the backend answered in full), hop_fail
 * (connection error, 5xx before the first byte passed on, deadline) or
 * hop_cancel (the client went away, or shutdown). A failed
 * hop is retried on another backend of its role, up to cfg.retries more
 * times. Bytes of a streamed answer go to the client as they arrive; once
 * one has gone, a failure can only cut the client's connection.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/util.h"
#include "proxy/internal.h"

#define MAX_CHAIN 4096 /* prefix-affinity blocks looked at */
#define MAX_PREFILL_ANSWER (64u << 20)
#define MAX_ERROR_BODY 4096 /* of a failed backend's answer, for logs */

struct px_hop {
  struct px_req *rq;
  struct px_backend *b;
  struct evhttp_request *req;    /* NULL once ended */
  struct evhttp_connection *con; /* owned; NULL once released */
  struct event *deadline, *conn_timer;
  uint64_t start_us;
  int status;
  int timed_out;
  struct evbuffer *body; /* prefill answer / error text */
  char ctype[128];
  char clen[32];
};

struct px_req {
  struct kvds_proxy *px;
  struct px_req *next, *prev; /* px->reqs */
  enum px_kind kind;
  struct evhttp_request *creq; /* NULL once answered or gone */
  struct evhttp_connection *ccon;
  struct event *cwatch; /* EOF on the client's socket */
  json_t *body;         /* the client's request (NULL for GETs) */
  char rid[80];
  char auth[8192];
  uint64_t chain[MAX_CHAIN];
  size_t nchain;
  uint8_t *tried[2];
  uint32_t tries[2];
  struct px_hop *hop;
  json_t *kvp; /* the prefill answer's kv_transfer_params */
  uint64_t recv_us;
  int started; /* reply headers sent to the client */
  char last_err[512];
  int last_timeout;
};

static void hop_start(struct px_req *rq, int pool);
static void req_finish(struct px_req *rq);

/* ---- helpers ------------------------------------------------------------ */

static double secs_since(uint64_t us) {
  return (double)(kvds_now_us() - us) / 1e6;
}

static void random_id(char *out, size_t cap) {
  unsigned char r[12];
  FILE *f = fopen("/dev/urandom", "rb");
  size_t got = f ? fread(r, 1, sizeof r, f) : 0;
  if (f)
    fclose(f);
  if (got != sizeof r) {
    uint64_t t = kvds_now_ns() ^ ((uint64_t)getpid() << 32);
    memcpy(r, &t, 8);
    memset(r + 8, 0x5a, 4);
  }
  int n = snprintf(out, cap, "kvdsproxy-");
  for (size_t i = 0; i < sizeof r && (size_t)n + 2 < cap; i++)
    n += snprintf(out + n, cap - (size_t)n, "%02x", r[i]);
}

/* ---- the client's side -------------------------------------------------- */

static void client_gone(struct evhttp_connection *c, void *arg);

static void detach_client(struct px_req *rq) {
  if (rq->cwatch) {
    event_free(rq->cwatch);
    rq->cwatch = NULL;
  }
  if (rq->ccon)
    evhttp_connection_set_closecb(rq->ccon, NULL, NULL);
  rq->ccon = NULL;
  rq->creq = NULL;
}

/*
 * Cutting a client's connection (a stream that cannot be completed): what
 * was passed on so far is still delivered, then the connection is freed,
 * so the client sees the answer end without its terminating chunk. A timer
 * polls the connection's output (libevent 2.1 has no "drained" callback
 * for a reply in progress) for up to CUT_WAIT_MS; if libevent frees the
 * connection first (the client left), the close callback drops the timer.
 */
#define CUT_POLL_MS 10
#define CUT_WAIT_MS 5000

static void free_orphan(struct evhttp_request *creq);

struct px_cut {
  struct evhttp_connection *c;
  struct evhttp_request *creq;
  struct event *ev;
  uint64_t until_us;
};

static void cut_closed(struct evhttp_connection *c, void *arg) {
  (void)c;
  struct px_cut *k = arg;
  free_orphan(k->creq);
  event_free(k->ev);
  free(k);
}

static void cut_poll(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct px_cut *k = arg;
  struct bufferevent *bev = evhttp_connection_get_bufferevent(k->c);
  if (bev && evbuffer_get_length(bufferevent_get_output(bev)) > 0 &&
      kvds_now_us() < k->until_us) {
    struct timeval tv = {0, CUT_POLL_MS * 1000};
    evtimer_add(k->ev, &tv);
    return;
  }
  struct evhttp_connection *c = k->c;
  evhttp_connection_set_closecb(c, NULL, NULL);
  event_free(k->ev);
  free(k);
  evhttp_connection_free(c);
}

static void cut_client(struct px_req *rq) {
  struct evhttp_connection *c = rq->ccon;
  struct evhttp_request *creq = rq->creq;
  detach_client(rq);
  if (!c)
    return;
  struct px_cut *k = calloc(1, sizeof *k);
  if (k)
    k->ev = evtimer_new(rq->px->base, cut_poll, k);
  if (!k || !k->ev) {
    free(k);
    struct bufferevent *bev = evhttp_connection_get_bufferevent(c);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0) /* libevent notices on its next I/O */
      shutdown(fd, SHUT_RDWR);
    return;
  }
  k->c = c;
  k->creq = creq;
  k->until_us = kvds_deadline_ms(CUT_WAIT_MS);
  evhttp_connection_set_closecb(c, cut_closed, k);
  struct timeval tv = {0, 0};
  evtimer_add(k->ev, &tv);
}

static void send_error(struct px_req *rq, int code, const char *type,
                       const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void send_error(struct px_req *rq, int code, const char *type,
                       const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (rq->creq) {
    if (rq->started) {
      cut_client(rq);
      return;
    }
    struct evhttp_request *creq = rq->creq;
    detach_client(rq); /* sending may free the connection at once */
    px_send_error(rq->px, creq, code, type, NULL, "%s", msg);
  }
}

/* ---- hops --------------------------------------------------------------- */

static void hop_free(struct px_hop *h) {
  if (h->deadline)
    event_free(h->deadline);
  if (h->conn_timer)
    event_free(h->conn_timer);
  if (h->body)
    evbuffer_free(h->body);
  free(h);
}

/* Ends the hop's accounting (in flight, latency) and detaches it. */
static void hop_end(struct px_hop *h) {
  struct px_backend *b = h->b;
  if (b->outstanding)
    b->outstanding--;
  if (h->con) /* not from its own callbacks: drops the request silently */
    evhttp_connection_free(h->con);
  h->con = NULL;
  h->req = NULL;
  if (h->rq->hop == h)
    h->rq->hop = NULL;
}

/* The hop failed: retried elsewhere or answered with an error. `down`:
 * the failure says the backend is broken (refused, reset, 5xx), not only
 * this request (a deadline, an answer that does not parse), so it is
 * skipped until a health check succeeds. */
static void hop_fail(struct px_hop *h, int down, const char *why) {
  struct px_req *rq = h->rq;
  struct px_backend *b = h->b;
  int pool = b->role == PX_DECODE ? 1 : 0;
  b->failures++;
  if (down)
    px_backend_down(b, why);
  snprintf(rq->last_err, sizeof rq->last_err, "%s instance %s: %s",
           px_role_name(b->role), b->name, why);
  rq->last_timeout = h->timed_out;
  hop_end(h);
  hop_free(h);
  if (!rq->creq) {
    req_finish(rq);
    return;
  }
  if (rq->started) { /* bytes already went out: cannot replay */
    cut_client(rq);
    req_finish(rq);
    return;
  }
  if (rq->tries[pool] <= rq->px->cfg.retries) {
    rq->px->retries[b->role]++;
    hop_start(rq, pool);
    return;
  }
  send_error(rq, rq->last_timeout ? 504 : 502, "server_error",
             "no %s instance answered: %s (tried %u)", px_role_name(b->role),
             rq->last_err, rq->tries[pool]);
  req_finish(rq);
}

/* Client gone or shutdown: freeing the hop's connection drops its request
 * without calling back. */
static void hop_cancel(struct px_hop *h) {
  hop_end(h);
  hop_free(h);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct px_hop *h = arg;
  h->timed_out = 1;
  hop_fail(h, 0, "deadline exceeded");
}

static void on_conn_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct px_hop *h = arg;
  if (!h->con)
    return;
  struct bufferevent *bev = evhttp_connection_get_bufferevent(h->con);
  evutil_socket_t s = bev ? bufferevent_getfd(bev) : -1;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (s >= 0 && getpeername(s, (struct sockaddr *)&ss, &sl) == 0)
    return; /* connected */
  h->timed_out = 1;
  hop_fail(h, 1, "connect timed out");
}

static void on_error(enum evhttp_request_error err, void *arg) {
  struct px_hop *h = arg;
  if (err == EVREQ_HTTP_TIMEOUT)
    h->timed_out = 1;
}

/* The first bytes of a streamed answer: the client's reply starts with the
 * backend's status and content headers. */
static void start_client_reply(struct px_req *rq, struct px_hop *h) {
  struct evkeyvalq *out = evhttp_request_get_output_headers(rq->creq);
  if (h->ctype[0])
    evhttp_add_header(out, "Content-Type", h->ctype);
  if (h->clen[0])
    evhttp_add_header(out, "Content-Length", h->clen);
  evhttp_add_header(out, "X-Request-Id", rq->rid);
  /* HTTP/1.0 has no chunked encoding: an answer of unknown length ends
   * when the connection closes, so a keep-alive request is not kept. */
  if (!h->clen[0] && rq->creq->major == 1 && rq->creq->minor == 0)
    evhttp_remove_header(evhttp_request_get_input_headers(rq->creq),
                         "Connection");
  if (strncmp(h->ctype, "text/event-stream", 17) == 0) {
    evhttp_add_header(out, "Cache-Control", "no-cache");
    evhttp_add_header(out, "X-Accel-Buffering", "no");
  }
  evhttp_send_reply_start(rq->creq, h->status, NULL);
  rq->started = 1;
  if (rq->kind != PX_MODELS) {
    kvds_hist_observe(&rq->px->ttft, secs_since(rq->recv_us));
    if (h->b->role != PX_PREFILL)
      kvds_hist_observe(&h->b->lat, secs_since(h->start_us));
  }
}

static int streams(const struct px_req *rq, const struct px_hop *h) {
  return h->b->role != PX_PREFILL && h->status < 500 && rq->creq;
}

static int on_header(struct evhttp_request *req, void *arg) {
  struct px_hop *h = arg;
  h->status = evhttp_request_get_response_code(req);
  struct evkeyvalq *in = evhttp_request_get_input_headers(req);
  const char *ct = evhttp_find_header(in, "Content-Type");
  const char *cl = evhttp_find_header(in, "Content-Length");
  snprintf(h->ctype, sizeof h->ctype, "%s", ct ? ct : "");
  snprintf(h->clen, sizeof h->clen, "%s", cl ? cl : "");
  return 0;
}

static void on_chunk(struct evhttp_request *req, void *arg) {
  struct px_hop *h = arg;
  struct px_req *rq = h->rq;
  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  if (streams(rq, h)) {
    if (!rq->started)
      start_client_reply(rq, h);
    evhttp_send_reply_chunk(rq->creq, in);
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  size_t have = evbuffer_get_length(h->body);
  /* A prefill's answer (or its 4xx, passed on whole) is kept; a 5xx body
   * only for the log. */
  size_t cap = h->status < 500 ? MAX_PREFILL_ANSWER : MAX_ERROR_BODY;
  size_t n = evbuffer_get_length(in);
  if (have < cap)
    evbuffer_remove_buffer(in, h->body, n < cap - have ? n : cap - have);
  evbuffer_drain(in, evbuffer_get_length(in));
}

/* A prefill answered in full: pass a 4xx on, else read kv_transfer_params
 * and start the decode. */
static void prefill_done(struct px_hop *h) {
  struct px_req *rq = h->rq;
  struct px_backend *b = h->b;
  kvds_hist_observe(&b->lat, secs_since(h->start_us));
  if (h->status >= 300) { /* the request itself is wrong: pass it on */
    if (rq->creq) {
      struct evkeyvalq *out = evhttp_request_get_output_headers(rq->creq);
      if (h->ctype[0])
        evhttp_add_header(out, "Content-Type", h->ctype);
      px_count_error(rq->px, h->status);
      struct evhttp_request *creq = rq->creq;
      detach_client(rq); /* sending may free the connection at once */
      px_track_reply(rq->px, creq);
      evhttp_send_reply(creq, h->status, NULL, h->body);
    }
    hop_end(h);
    hop_free(h);
    req_finish(rq);
    return;
  }
  json_error_t je;
  size_t len = evbuffer_get_length(h->body);
  json_t *ans = json_loadb((const char *)evbuffer_pullup(h->body, -1), len,
                           JSON_ALLOW_NUL, &je);
  if (!ans) {
    hop_fail(h, 0, "answer is not JSON");
    return;
  }
  json_t *kvp = json_object_get(ans, "kv_transfer_params");
  if (json_is_object(kvp)) {
    rq->kvp = json_incref(kvp);
  } else {
    static int warned;
    if (!warned++)
      fprintf(stderr,
              "kvds proxy: prefill instance %s returned no kv_transfer_params:"
              " the decoder computes the prompt itself (normal for a prompt "
              "shorter than one KV block; otherwise, is the instance started "
              "with KvdsConnector?); said once\n",
              b->name);
    rq->kvp = json_null();
  }
  json_decref(ans);
  hop_end(h);
  hop_free(h);
  if (!rq->creq) {
    req_finish(rq);
    return;
  }
  hop_start(rq, 1);
}

static void on_done(struct evhttp_request *req, void *arg) {
  struct px_hop *h = arg;
  px_conn_release(h->rq->px, h->con); /* libevent still uses it */
  h->con = NULL;
  struct px_req *rq = h->rq;
  int code = req ? evhttp_request_get_response_code(req) : 0;
  if (code == 0) {
    hop_fail(h, !h->timed_out,
             h->timed_out ? "timed out" : "connection failed or closed");
    return;
  }
  if (h->status == 0)
    h->status = code;
  if (h->status >= 500 && !rq->started) {
    char why[96];
    snprintf(why, sizeof why, "HTTP %d", h->status);
    hop_fail(h, 1, why);
    return;
  }
  if (h->b->role == PX_PREFILL) {
    prefill_done(h);
    return;
  }
  /* A streamed answer is complete. */
  if (rq->creq) {
    if (!rq->started)
      start_client_reply(rq, h);
    if (h->status >= 400)
      px_count_error(rq->px, h->status);
    struct evhttp_request *creq = rq->creq;
    detach_client(rq); /* ending may free the connection at once */
    px_track_reply(rq->px, creq);
    evhttp_send_reply_end(creq);
  }
  hop_end(h);
  hop_free(h);
  req_finish(rq);
}

/* The body sent to a prefill instance: the request with max_tokens 1, no
 * streaming and do_remote_decode. NULL when out of memory. */
static char *prefill_body(const struct px_req *rq) {
  json_t *p = json_deep_copy(rq->body);
  if (!p)
    return NULL;
  json_object_set_new(p, "max_tokens", json_integer(1));
  if (rq->kind == PX_CHAT || json_object_get(p, "max_completion_tokens"))
    json_object_set_new(p, "max_completion_tokens", json_integer(1));
  json_object_set_new(p, "stream", json_false());
  json_object_del(p, "stream_options");
  json_object_del(p, "min_tokens");
  json_object_set_new(p, "kv_transfer_params",
                      json_pack("{s:b}", "do_remote_decode", 1));
  char *s = json_dumps(p, JSON_COMPACT);
  json_decref(p);
  return s;
}

static char *decode_body(const struct px_req *rq) {
  if (rq->kvp && !json_is_null(rq->kvp))
    json_object_set(rq->body, "kv_transfer_params", rq->kvp);
  return json_dumps(rq->body, JSON_COMPACT);
}

static void hop_start(struct px_req *rq, int pool) {
  struct kvds_proxy *px = rq->px;
  struct px_pool *pl = &px->pool[pool];
  struct kvds_route_cand cands[pl->n ? pl->n : 1];
  int any_up = 0;
  for (size_t i = 0; i < pl->n; i++)
    any_up |= pl->b[i].up && !rq->tried[pool][i];
  for (size_t i = 0; i < pl->n; i++) {
    /* A down backend is tried only when no untried one is up. */
    cands[i].usable = !rq->tried[pool][i] && (pl->b[i].up || !any_up);
    cands[i].outstanding = pl->b[i].outstanding;
  }
  int aff = 0;
  int i = kvds_route_pick(&pl->route, cands, pl->n,
                          rq->kind == PX_MODELS ? NULL : rq->chain,
                          rq->kind == PX_MODELS ? 0 : rq->nchain, &aff);
  if (i < 0) { /* every instance tried (--retries >= the pool's size) */
    send_error(rq, rq->last_timeout ? 504 : 502, "server_error",
               "no %s instance answered: %s", px_role_name(pl->role),
               rq->last_err);
    req_finish(rq);
    return;
  }
  struct px_backend *b = &pl->b[i];
  rq->tried[pool][i] = 1;
  rq->tries[pool]++;
  int prefill = b->role == PX_PREFILL;
  uint32_t tmo =
      prefill ? px->cfg.prefill_timeout_ms : px->cfg.decode_timeout_ms;

  struct px_hop *h = calloc(1, sizeof *h);
  char *body = NULL;
  if (!h || !(h->body = evbuffer_new()))
    goto fail;
  h->rq = rq;
  h->b = b;
  h->start_us = kvds_now_us();
  if (rq->kind != PX_MODELS) {
    body = prefill ? prefill_body(rq) : decode_body(rq);
    if (!body)
      goto fail;
  }
  /* The connection's own timeout is per read or write; the deadline timer
   * bounds the whole hop. */
  h->con = px_backend_connect(b, tmo);
  if (!h->con) {
    free(body);
    b->outstanding++; /* hop_fail gives it back */
    b->requests++;
    rq->hop = h;
    hop_fail(h, 1, "cannot resolve its host");
    return;
  }
  h->req = evhttp_request_new(on_done, h);
  if (!h->req)
    goto fail;
  evhttp_request_set_header_cb(h->req, on_header);
  evhttp_request_set_chunked_cb(h->req, on_chunk);
  evhttp_request_set_error_cb(h->req, on_error);
  struct evkeyvalq *hd = evhttp_request_get_output_headers(h->req);
  char hosthdr[300];
  snprintf(hosthdr, sizeof hosthdr, "%s:%u", b->host, (unsigned)b->port);
  evhttp_add_header(hd, "Host", hosthdr);
  evhttp_add_header(hd, "X-Request-Id", rq->rid);
  /* One request per connection: libevent keeps an idle keep-alive
   * connection (and its socket) until the backend closes it. */
  evhttp_add_header(hd, "Connection", "close");
  if (rq->auth[0])
    evhttp_add_header(hd, "Authorization", rq->auth);
  const char *path = rq->kind == PX_MODELS ? "/v1/models"
                     : rq->kind == PX_CHAT ? "/v1/chat/completions"
                                           : "/v1/completions";
  if (body) {
    char clen[32];
    size_t blen = strlen(body);
    snprintf(clen, sizeof clen, "%zu", blen);
    evhttp_add_header(hd, "Content-Type", "application/json");
    evhttp_add_header(hd, "Content-Length", clen);
    evbuffer_add(evhttp_request_get_output_buffer(h->req), body, blen);
    free(body);
    body = NULL;
  }
  h->deadline = evtimer_new(px->base, on_deadline, h);
  h->conn_timer = evtimer_new(px->base, on_conn_timer, h);
  if (!h->deadline || !h->conn_timer)
    goto fail_req;
  struct timeval dl = {tmo / 1000, (tmo % 1000) * 1000};
  uint32_t ct = px->cfg.connect_timeout_ms;
  struct timeval ctv = {ct / 1000, (ct % 1000) * 1000};
  evtimer_add(h->deadline, &dl);
  evtimer_add(h->conn_timer, &ctv);
  b->outstanding++;
  b->requests++;
  rq->hop = h;
  if (px->cfg.verbose)
    fprintf(stderr, "kvds proxy: %s -> %s %s%s\n", rq->rid,
            px_role_name(b->role), b->name, aff ? " (prefix affinity)" : "");
  /* Nothing of rq or h may be used after this call: a connect that fails
   * at once runs on_done inside it, which may finish the request. */
  if (evhttp_make_request(h->con, h->req,
                          rq->kind == PX_MODELS ? EVHTTP_REQ_GET
                                                : EVHTTP_REQ_POST,
                          path) != 0) {
    h->req = NULL;
    hop_fail(h, 1, "cannot send the request");
    return;
  }
  return;

fail_req:
  evhttp_request_free(h->req);
  h->req = NULL;
fail:
  free(body);
  if (h && h->con)
    evhttp_connection_free(h->con);
  if (h)
    hop_free(h);
  send_error(rq, 500, "server_error", "out of memory");
  req_finish(rq);
}

/* ---- requests ----------------------------------------------------------- */

static void req_finish(struct px_req *rq) {
  struct kvds_proxy *px = rq->px;
  if (rq->hop)
    hop_cancel(rq->hop);
  if (rq->creq) /* never answered: the client gets an error */
    send_error(rq, 500, "server_error", "internal error");
  detach_client(rq);
  if (rq->kind != PX_MODELS)
    kvds_hist_observe(&px->total, secs_since(rq->recv_us));
  if (rq->prev)
    rq->prev->next = rq->next;
  else
    px->reqs = rq->next;
  if (rq->next)
    rq->next->prev = rq->prev;
  json_decref(rq->body);
  json_decref(rq->kvp);
  free(rq->tried[0]);
  free(rq->tried[1]);
  free(rq);
  px->in_flight--;
  px_maybe_exit(px);
}

/* The client's connection is being freed (its close callback). When
 * libevent itself saw the connection fail (a write error, a timeout), it
 * has already detached the request from the connection and leaves it for
 * the user to free; otherwise freeing the connection frees the request. */
static void free_orphan(struct evhttp_request *creq) {
  if (creq && !evhttp_request_get_connection(creq))
    evhttp_request_free(creq);
}

static void client_gone(struct evhttp_connection *c, void *arg) {
  (void)c;
  struct px_req *rq = arg;
  rq->px->disconnects++;
  if (rq->cwatch) {
    event_free(rq->cwatch);
    rq->cwatch = NULL;
  }
  free_orphan(rq->creq);
  rq->ccon = NULL; /* being freed by libevent */
  rq->creq = NULL;
  req_finish(rq);
}

/* libevent 2.1 does not read an incoming connection while its request is
 * being answered, so it would notice a client that went away only when
 * writing the answer. This watches the socket: EOF or an error frees the
 * connection, whose close callback (client_gone) cancels the hops. Data
 * (a pipelined request) ends the watch. */
static void on_client_readable(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  struct px_req *rq = arg;
  char c;
  ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    return;
  if (n > 0) {
    event_free(rq->cwatch);
    rq->cwatch = NULL;
    return;
  }
  evhttp_connection_free(rq->ccon); /* calls client_gone */
}

static void watch_client(struct px_req *rq) {
  struct bufferevent *bev = evhttp_connection_get_bufferevent(rq->ccon);
  evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
  if (fd < 0)
    return;
  rq->cwatch =
      event_new(rq->px->base, fd, EV_READ | EV_PERSIST, on_client_readable, rq);
  if (rq->cwatch && event_add(rq->cwatch, NULL) != 0) {
    event_free(rq->cwatch);
    rq->cwatch = NULL;
  }
}

void px_forward_abort_all(struct kvds_proxy *px) {
  while (px->reqs) {
    struct px_req *rq = px->reqs;
    if (rq->creq && !rq->started) {
      send_error(rq, 503, "server_error", "the proxy is shutting down");
    } else if (rq->creq) {
      cut_client(rq);
    }
    req_finish(rq);
  }
}

void px_forward(struct kvds_proxy *px, struct evhttp_request *creq,
                enum px_kind kind) {
  struct px_req *rq = calloc(1, sizeof *rq);
  if (rq) {
    rq->tried[0] = calloc(px->pool[0].n + 1, 1);
    rq->tried[1] = calloc(px->pool[1].n + 1, 1);
  }
  if (!rq || !rq->tried[0] || !rq->tried[1]) {
    if (rq) {
      free(rq->tried[0]);
      free(rq->tried[1]);
    }
    free(rq);
    px_send_error(px, creq, 500, "server_error", NULL, "out of memory");
    return;
  }
  rq->px = px;
  rq->kind = kind;
  rq->creq = creq;
  rq->recv_us = kvds_now_us();
  struct evkeyvalq *in = evhttp_request_get_input_headers(creq);
  const char *rid = evhttp_find_header(in, "X-Request-Id");
  if (rid && rid[0] && strlen(rid) < sizeof rq->rid &&
      strspn(rid, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                  "0123456789-_.:") == strlen(rid))
    snprintf(rq->rid, sizeof rq->rid, "%s", rid);
  else
    random_id(rq->rid, sizeof rq->rid);
  const char *auth = evhttp_find_header(in, "Authorization");
  if (px->cfg.api_key)
    snprintf(rq->auth, sizeof rq->auth, "Bearer %s", px->cfg.api_key);
  else if (auth && strlen(auth) < sizeof rq->auth)
    snprintf(rq->auth, sizeof rq->auth, "%s", auth);

  if (kind != PX_MODELS) {
    px->requests[kind]++;
    struct evbuffer *b = evhttp_request_get_input_buffer(creq);
    size_t len = evbuffer_get_length(b);
    if (len > px->cfg.max_body) {
      px_send_error(px, creq, 413, "invalid_request_error", NULL,
                    "the request body has %zu bytes, more than the limit of "
                    "%llu (--max-body)",
                    len, (unsigned long long)px->cfg.max_body);
      goto drop;
    }
    json_error_t je;
    rq->body = json_loadb((const char *)evbuffer_pullup(b, -1), len,
                          JSON_ALLOW_NUL, &je);
    if (!rq->body) {
      px_send_error(px, creq, 400, "invalid_request_error", NULL,
                    "the body is not valid JSON: %s (line %d, column %d)",
                    je.text, je.line, je.column);
      goto drop;
    }
    const char *param = NULL;
    const char *bad = px_prompt_check(rq->body, kind == PX_CHAT, &param);
    if (bad) {
      px_send_error(px, creq, 400, "invalid_request_error", param, "%s", bad);
      goto drop;
    }
    rq->nchain = px_prompt_chain(rq->body, kind == PX_CHAT,
                                 px->cfg.affinity_block, rq->chain, MAX_CHAIN);
  }
  /* With every instance of a role down, hop_start still tries them (a
   * check may lag a restart); the client gets 502 when none answers. */
  int first = kind == PX_MODELS ? (px->pd ? 1 : 0) : 0;
  rq->ccon = evhttp_request_get_connection(creq);
  evhttp_connection_set_closecb(rq->ccon, client_gone, rq);
  watch_client(rq);
  rq->next = px->reqs;
  if (px->reqs)
    px->reqs->prev = rq;
  px->reqs = rq;
  px->in_flight++;
  hop_start(rq, first);
  return;

drop:
  json_decref(rq->body);
  free(rq->tried[0]);
  free(rq->tried[1]);
  free(rq);
}
