/*
 * test_http — the worker's HTTP endpoint (--http-port): /health answers 200
 * with JSON, /status is JSON whose pool and store numbers agree with the
 * STATS request, /metrics is Prometheus text with the pool capacity and hit
 * counters, an unknown path is 404. Plain HTTP/1.0 over a socket.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

struct http_res {
  int code;
  char buf[65536];
  const char *body;
  char ctype[128]; /* value of Content-Type */
};

static void http_get(int port, const char *method, const char *path,
                     struct http_res *r) {
  int fd = kvh_raw_tcp(port);
  char req[256];
  int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
                   method, path);
  KVH_CHECK(kvh_write_all(fd, req, (size_t)n) == 0, "send: %s",
            strerror(errno));
  size_t len = 0;
  KVH_CHECK(kvh_read_to_eof(fd, r->buf, sizeof r->buf - 1, &len, 5000) == 0,
            "GET %s: no complete answer in 5 s", path);
  close(fd);
  r->buf[len] = 0;
  KVH_CHECK(sscanf(r->buf, "HTTP/1.%*d %d", &r->code) == 1,
            "GET %s: not an HTTP answer: '%.80s'", path, r->buf);
  char *sep = strstr(r->buf, "\r\n\r\n");
  KVH_CHECK(sep, "GET %s: no end of headers", path);
  r->body = sep + 4;
  r->ctype[0] = 0;
  for (char *h = strstr(r->buf, "\r\n"); h && h < sep;
       h = strstr(h + 2, "\r\n")) {
    if (strncasecmp(h + 2, "Content-Type:", 13) == 0) {
      const char *v = h + 15;
      snprintf(r->ctype, sizeof r->ctype, "%.*s", (int)(strstr(v, "\r\n") - v),
               v);
      break;
    }
  }
}

/* Value of the sample `name` (a line "name value"), or -1. */
static long long metric(const char *text, const char *name) {
  size_t nl = strlen(name);
  for (const char *l = text; *l;) {
    if (strncmp(l, name, nl) == 0 && l[nl] == ' ')
      return strtoll(l + nl + 1, NULL, 10);
    const char *e = strchr(l, '\n');
    if (!e)
      break;
    l = e + 1;
  }
  return -1;
}

static json_int_t jint(json_t *o, const char *a, const char *b) {
  json_t *x = json_object_get(o, a);
  json_t *y = b ? json_object_get(x, b) : x;
  KVH_CHECK(json_is_integer(y), "/status: %s%s%s is not an integer", a,
            b ? "." : "", b ? b : "");
  return json_integer_value(y);
}

int main(int argc, char **argv) {
  kvh_init(argc, argv, "http");
  int hport = kvh_free_port();
  char hp[16];
  snprintf(hp, sizeof hp, "%d", hport);
  struct kvh_worker w;
  kvh_worker_start(&w, "32MiB", (const char *const[]){"--http-port", hp, NULL});

  /* Some traffic first, so the counters have something to say. */
  kvds_client *c = kvh_connect(w.addr);
  KVH_OK(kvds_put(c, "h1", 2, "value", 5));
  uint8_t b[8];
  size_t len;
  KVH_OK(kvds_get(c, "h1", 2, b, sizeof b, &len, 0));
  KVH_EXPECT_RC(kvds_get(c, "h2", 2, b, sizeof b, &len, 0), KVDS_E_NOTFOUND);
  struct kvds_stats st;
  kvh_stats(c, &st);

  static struct http_res r;
  http_get(hport, "GET", "/health", &r);
  KVH_CHECK(r.code == 200 && strstr(r.ctype, "json"), "/health: %d (%s)",
            r.code, r.ctype);
  json_error_t je;
  json_t *j = json_loads(r.body, 0, &je);
  KVH_CHECK(j && json_is_string(json_object_get(j, "status")) &&
                strcmp(json_string_value(json_object_get(j, "status")), "ok") ==
                    0,
            "/health body: '%s'", r.body);
  json_decref(j);

  http_get(hport, "GET", "/status", &r);
  KVH_CHECK(r.code == 200 && strstr(r.ctype, "json"), "/status: %d (%s)",
            r.code, r.ctype);
  j = json_loads(r.body, 0, &je);
  KVH_CHECK(j, "/status is not JSON (%s at %d): '%.200s'", je.text, je.line,
            r.body);
  KVH_CHECK(jint(j, "pool", "capacity") == (json_int_t)st.pool_capacity &&
                jint(j, "pool", "used") == (json_int_t)st.pool_used &&
                jint(j, "pool", "free") == (json_int_t)st.pool_free,
            "/status pool disagrees with STATS: '%.300s'", r.body);
  KVH_CHECK(jint(j, "store", "objects") == 1 &&
                jint(j, "store", "puts") == (json_int_t)st.puts &&
                jint(j, "store", "hits") == (json_int_t)st.hits &&
                jint(j, "store", "misses") == (json_int_t)st.misses &&
                st.hits >= 1 && st.misses >= 1,
            "/status store disagrees with STATS: '%.400s'", r.body);
  KVH_CHECK(jint(j, "pid", NULL) == (json_int_t)w.pid,
            "/status pid %lld, worker %d", (long long)jint(j, "pid", NULL),
            (int)w.pid);
  json_decref(j);

  http_get(hport, "GET", "/metrics", &r);
  KVH_CHECK(r.code == 200 && strstr(r.ctype, "text/plain"), "/metrics: %d (%s)",
            r.code, r.ctype);
  KVH_CHECK(metric(r.body, "kvds_pool_capacity_bytes") ==
                (long long)st.pool_capacity,
            "kvds_pool_capacity_bytes %lld, STATS %llu",
            metric(r.body, "kvds_pool_capacity_bytes"),
            (unsigned long long)st.pool_capacity);
  KVH_CHECK(metric(r.body, "kvds_hits_total") == (long long)st.hits,
            "kvds_hits_total %lld, STATS %llu",
            metric(r.body, "kvds_hits_total"), (unsigned long long)st.hits);
  KVH_CHECK(strstr(r.body, "# TYPE kvds_hits_total counter") &&
                strstr(r.body, "# TYPE kvds_pool_capacity_bytes gauge"),
            "/metrics lacks TYPE lines");

  http_get(hport, "GET", "/no/such/page", &r);
  KVH_CHECK(r.code == 404, "unknown path: %d", r.code);
  http_get(hport, "GET", "/health?verbose=1", &r);
  KVH_CHECK(r.code == 200, "/health with a query: %d", r.code);

  /* Still serving clients afterwards. */
  KVH_OK(kvds_ping(c));
  kvds_client_close(c);
  kvh_worker_stop(&w);
  return kvh_finish();
}
