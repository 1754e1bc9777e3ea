/* backend.c — backend pools, address resolution, health checks. */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/util.h"
#include "proxy/internal.h"

#define HEALTH_TIMEOUT_MS 5000
#define RESOLVE_EVERY_MS 30000

const char *px_role_name(enum px_role r) {
  switch (r) {
  case PX_PREFILL:
    return "prefill";
  case PX_DECODE:
    return "decode";
  case PX_BOTH:
    return "both";
  }
  return "?";
}

/* Resolves b->host into b->ip (IPv4 first, then IPv6: a name such as
 * localhost that has both is most often served on IPv4). Blocking
 * getaddrinfo: called at start and while the backend is down only. */
static int resolve(struct px_backend *b) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
  if (getaddrinfo(b->host, NULL, &hints, &res) != 0 || !res)
    return -1;
  const struct addrinfo *pick = NULL;
  for (const struct addrinfo *a = res; a; a = a->ai_next)
    if (a->ai_family == AF_INET) {
      pick = a;
      break;
    }
  if (!pick)
    pick = res;
  const void *src =
      pick->ai_family == AF_INET
          ? (const void *)&((struct sockaddr_in *)pick->ai_addr)->sin_addr
          : (const void *)&((struct sockaddr_in6 *)pick->ai_addr)->sin6_addr;
  int ok = inet_ntop(pick->ai_family, src, b->ip, sizeof b->ip) != NULL;
  freeaddrinfo(res);
  b->resolved_us = kvds_now_us();
  return ok ? 0 : -1;
}

int px_pool_init(struct kvds_proxy *px, struct px_pool *pool, enum px_role role,
                 const char *const *addrs, size_t n, char *err, size_t ecap) {
  memset(pool, 0, sizeof *pool);
  pool->role = role;
  if (n == 0)
    return 0;
  pool->b = calloc(n, sizeof *pool->b);
  if (!pool->b || kvds_route_init(&pool->route, px->cfg.policy,
                                  px->cfg.affinity_slack) != 0)
    return kvds_errf(err, ecap, -1, "out of memory");
  pool->n = n;
  for (size_t i = 0; i < n; i++) {
    struct px_backend *b = &pool->b[i];
    b->px = px;
    b->role = role;
    b->idx = (uint32_t)i;
    b->up = 1; /* until a check or a request says otherwise */
    snprintf(b->name, sizeof b->name, "%s", addrs[i]);
    if (kvds_split_hostport(addrs[i], b->host, sizeof b->host, &b->port) != 0 ||
        b->port == 0)
      return kvds_errf(err, ecap, -1, "%s instance '%s' is not host:port",
                       px_role_name(role), addrs[i]);
    for (size_t j = 0; j < i; j++)
      if (strcmp(pool->b[j].host, b->host) == 0 && pool->b[j].port == b->port)
        return kvds_errf(err, ecap, -1, "%s instance %s is given twice",
                         px_role_name(role), addrs[i]);
    if (resolve(b) != 0)
      return kvds_errf(err, ecap, -1,
                       "cannot resolve the host of %s instance %s",
                       px_role_name(role), addrs[i]);
  }
  return 0;
}

void px_pool_destroy(struct px_pool *pool) {
  for (size_t i = 0; i < pool->n; i++) {
    struct px_backend *b = &pool->b[i];
    if (b->health_con) {
      evhttp_connection_free(b->health_con); /* no callback */
      b->health_con = NULL;
    }
    if (b->health_timer)
      event_free(b->health_timer);
  }
  kvds_route_destroy(&pool->route);
  free(pool->b);
  memset(pool, 0, sizeof *pool);
}

size_t px_pool_up(const struct px_pool *pool) {
  size_t k = 0;
  for (size_t i = 0; i < pool->n; i++)
    k += pool->b[i].up != 0;
  return k;
}

void px_backend_down(struct px_backend *b, const char *why) {
  snprintf(b->why, sizeof b->why, "%s", why);
  if (b->up)
    fprintf(stderr, "kvds proxy: %s instance %s is down: %s\n",
            px_role_name(b->role), b->name, why);
  b->up = 0;
}

static void backend_up(struct px_backend *b) {
  if (!b->up)
    fprintf(stderr, "kvds proxy: %s instance %s is up\n", px_role_name(b->role),
            b->name);
  b->up = 1;
  b->why[0] = 0;
}

struct evhttp_connection *px_backend_connect(struct px_backend *b,
                                             uint32_t timeout_ms) {
  if (!b->ip[0] && resolve(b) != 0)
    return NULL;
  struct evhttp_connection *c =
      evhttp_connection_base_new(b->px->base, NULL, b->ip, b->port);
  if (!c)
    return NULL;
  evhttp_connection_set_retries(c, 0);
  if (timeout_ms) {
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(c, &tv);
  }
  return c;
}

static void release_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  evhttp_connection_free(arg);
}

void px_conn_release(struct kvds_proxy *px, struct evhttp_connection *c) {
  static const struct timeval now = {0, 0};
  if (event_base_once(px->base, -1, EV_TIMEOUT, release_cb, c, &now) != 0)
    evhttp_connection_free(c); /* out of memory: best effort */
}

static void health_done(struct evhttp_request *req, void *arg) {
  struct px_backend *b = arg;
  if (!b->health_con)
    return;
  px_conn_release(b->px, b->health_con);
  b->health_con = NULL;
  int code = req ? evhttp_request_get_response_code(req) : 0;
  if (code == 200) {
    backend_up(b);
  } else {
    char why[64];
    if (code == 0)
      snprintf(why, sizeof why, "health check: no answer");
    else
      snprintf(why, sizeof why, "health check: HTTP %d", code);
    px_backend_down(b, why);
  }
}

static void health_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  struct px_backend *b = arg;
  uint64_t now = kvds_now_us();
  if (b->health_con) {
    /* libevent's timeout is per read or write: a backend that trickles
     * bytes would keep a check in flight for ever. */
    if (now - b->health_sent_us < HEALTH_TIMEOUT_MS * 1000ull)
      return;
    evhttp_connection_free(b->health_con); /* no callback */
    b->health_con = NULL;
    px_backend_down(b, "health check: no answer in time");
  }
  /* A down backend's name is resolved again (blocking getaddrinfo, so at
   * most every RESOLVE_EVERY_MS): it may have moved. */
  if (!b->up && now - b->resolved_us > RESOLVE_EVERY_MS * 1000ull &&
      resolve(b) != 0)
    b->ip[0] = 0;
  /* A check may take longer than the interval (a loaded engine): the next
   * tick skips while one is in flight, and only no answer in
   * HEALTH_TIMEOUT_MS (or a refusal, or a non-200) marks the backend down. */
  struct evhttp_connection *c = px_backend_connect(b, HEALTH_TIMEOUT_MS);
  if (!c) {
    px_backend_down(b, "cannot resolve its host");
    return;
  }
  struct evhttp_request *r = evhttp_request_new(health_done, b);
  if (!r) {
    evhttp_connection_free(c);
    return;
  }
  char hosthdr[300];
  snprintf(hosthdr, sizeof hosthdr, "%s:%u", b->host, (unsigned)b->port);
  evhttp_add_header(evhttp_request_get_output_headers(r), "Host", hosthdr);
  evhttp_add_header(evhttp_request_get_output_headers(r), "Connection",
                    "close");
  b->health_con = c;
  b->health_sent_us = now;
  if (evhttp_make_request(c, r, EVHTTP_REQ_GET, "/health") != 0) {
    b->health_con = NULL;
    evhttp_connection_free(c);
    px_backend_down(b, "health check: cannot send");
  }
}

int px_health_start(struct kvds_proxy *px) {
  uint32_t ms = px->cfg.health_interval_ms;
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  for (int p = 0; p < 2; p++)
    for (size_t i = 0; i < px->pool[p].n; i++) {
      struct px_backend *b = &px->pool[p].b[i];
      b->health_timer = event_new(px->base, -1, EV_PERSIST, health_tick, b);
      if (!b->health_timer || event_add(b->health_timer, &tv) != 0)
        return -1;
      health_tick(-1, 0, b);
    }
  return 0;
}
