/*
 * internal.h — shared by the proxy's files (src/proxy/), not installed.
 *
 *   proxy.c    listening socket, endpoints (/health, /metrics), signals
 *   backend.c  the backend pools, address resolution, health checks
 *   forward.c  one client request: prefill hop, decode hop, streaming,
 *              retries, deadlines, cancellation
 *   prompt.c   request-body checks, the prompt's routing text
 *   route.c    which backend (pure)
 *   metrics.c  histograms, Prometheus text (pure)
 *
 * Everything runs on the one event loop of struct kvds_proxy; nothing here
 * is thread-safe or needs to be.
 */
#ifndef KVDS_PROXY_INTERNAL_H
#define KVDS_PROXY_INTERNAL_H

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <stdint.h>

#include "proxy/metrics.h"
#include "proxy/proxy.h"
#include "proxy/route.h"

enum px_role { PX_PREFILL = 0, PX_DECODE = 1, PX_BOTH = 2 };

struct px_backend {
  struct kvds_proxy *px;
  enum px_role role;
  uint32_t idx;
  char name[280]; /* host:port as given */
  char host[256]; /* as given (the Host header) */
  char ip[64];    /* resolved numeric address; "" when unresolved */
  uint16_t port;
  int up;                  /* last health check (or request) succeeded */
  uint64_t resolved_us;    /* when ip was last resolved */
  uint64_t health_sent_us; /* when the check in flight was sent */
  char why[160];           /* why it is down */
  uint32_t outstanding;
  uint64_t requests, failures;
  struct kvds_hist lat; /* prefill: whole answer; decode: first byte */
  struct event *health_timer;
  struct evhttp_connection *health_con; /* check in flight, or NULL */
};

struct px_pool {
  enum px_role role;
  struct px_backend *b;
  size_t n;
  struct kvds_route route;
};

#define PX_MAX_CODE 600

struct kvds_proxy {
  struct kvds_proxy_config cfg; /* strings below are owned copies */
  char *host_copy, *api_key_copy;
  struct event_base *base;
  struct evhttp *http;
  struct evhttp_bound_socket *sock;
  uint16_t port;
  struct px_pool pool[2]; /* [0] prefill (or colocated), [1] decode */
  int pd;                 /* decoders given */
  /* counters */
  uint64_t requests[2]; /* completions, chat */
  uint64_t errors[PX_MAX_CODE];
  uint64_t retries[3];
  uint64_t disconnects;
  uint64_t in_flight;
  uint64_t writing; /* final replies not yet written out (px_track_reply) */
  struct kvds_hist ttft, total;
  struct px_req *reqs; /* in flight, for shutdown */
  struct event *sig[2], *drain;
  int stopping;
};

/* ---- backend.c ---------------------------------------------------------- */

/* Builds pool[role] from "host:port" strings. Returns 0 or -1 with err. */
int px_pool_init(struct kvds_proxy *px, struct px_pool *pool, enum px_role role,
                 const char *const *addrs, size_t n, char *err, size_t ecap);
void px_pool_destroy(struct px_pool *pool);
/* Starts the periodic health checks of every backend (first one now). */
int px_health_start(struct kvds_proxy *px);
/* A request to b failed (connection error, 5xx, timeout): down until a
 * health check succeeds. */
void px_backend_down(struct px_backend *b, const char *why);
const char *px_role_name(enum px_role r);
/* Number of backends of the pool that are up. */
size_t px_pool_up(const struct px_pool *pool);
/*
 * A new outgoing connection to b with the given timeout (0: none); NULL on
 * failure. The caller owns it: px_conn_release() from the request's own
 * callbacks (libevent still uses the connection after they return), or
 * evhttp_connection_free() elsewhere, which drops its request without
 * calling back.
 */
struct evhttp_connection *px_backend_connect(struct px_backend *b,
                                             uint32_t timeout_ms);
/* Frees c on the next loop iteration. */
void px_conn_release(struct kvds_proxy *px, struct evhttp_connection *c);

/* ---- forward.c ---------------------------------------------------------- */

enum px_kind { PX_COMPLETIONS = 0, PX_CHAT = 1, PX_MODELS = 2 };

/* Handles one client request of the kind (the body not yet parsed). */
void px_forward(struct kvds_proxy *px, struct evhttp_request *creq,
                enum px_kind kind);
/* Cancels every in-flight request (shutdown). */
void px_forward_abort_all(struct kvds_proxy *px);

/* ---- prompt.c ----------------------------------------------------------- */

/* NULL when the body of a completions (chat 0) or chat request is usable;
 * else what is wrong, and *param the field (or NULL). */
const char *px_prompt_check(const json_t *body, int chat, const char **param);
/*
 * Prefix-affinity chain hashes (kvds_route_chain) of the prompt: a string
 * in blocks of `block` bytes, token ids in blocks of `block` ids, a batch by
 * its first prompt, chat messages by role and text in order. Returns how
 * many were written to out[0..cap).
 */
size_t px_prompt_chain(const json_t *body, int chat, uint32_t block,
                       uint64_t *out, size_t cap);

/* ---- proxy.c ------------------------------------------------------------ */

/* Counts an error answer (by HTTP status) in /metrics. */
static inline void px_count_error(struct kvds_proxy *px, int code) {
  px->errors[code > 0 && code < PX_MAX_CODE ? code : 0]++;
}
/* Sends an OpenAI-style error body and counts it. */
void px_send_error(struct kvds_proxy *px, struct evhttp_request *creq, int code,
                   const char *type, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Called before a final evhttp_send_reply / evhttp_send_reply_end: the
 * proxy, when stopping, exits only once every such reply is written out
 * (libevent writes it on a later loop pass). */
void px_track_reply(struct kvds_proxy *px, struct evhttp_request *creq);
/* Exits the loop when stopping and nothing is in flight or being written. */
void px_maybe_exit(struct kvds_proxy *px);

#endif
