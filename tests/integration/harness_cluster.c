/* harness_cluster.c — cluster views for the integration tests. */
#include "harness_cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_t *kvh_cluster_of(const char *addr) {
  kvds_client *c = NULL;
  if (kvds_client_connect(addr, 2000, &c))
    return NULL;
  char *text = NULL;
  int rc = kvds_cluster_status(c, &text);
  kvds_client_close(c);
  if (rc)
    return NULL;
  json_error_t jerr;
  json_t *j = json_loads(text, 0, &jerr);
  KVH_CHECK(j, "CLUSTER reply from %s is not JSON (%s): %s", addr, jerr.text,
            text);
  free(text);
  return j;
}

json_t *kvh_member(json_t *cl, const char *id) {
  size_t i;
  json_t *m;
  json_array_foreach(json_object_get(cl, "members"), i, m) {
    const char *mid = json_string_value(json_object_get(m, "id"));
    if (mid && strcmp(mid, id) == 0)
      return m;
  }
  return NULL;
}

uint64_t kvh_epoch_of(json_t *cl, const char *id) {
  json_t *m = kvh_member(cl, id);
  return m ? (uint64_t)json_integer_value(json_object_get(m, "epoch")) : 0;
}

uint64_t kvh_view_epoch(const char *viewer, const char *id) {
  json_t *cl = kvh_cluster_of(viewer);
  uint64_t e = cl ? kvh_epoch_of(cl, id) : 0;
  json_decref(cl);
  return e;
}

int kvh_view_is(const char *addr, const char *const *want, size_t n) {
  json_t *cl = kvh_cluster_of(addr);
  if (!cl)
    return 0;
  int ok = json_array_size(json_object_get(cl, "members")) == n;
  for (size_t i = 0; ok && i < n; i++)
    ok = kvh_member(cl, want[i]) != NULL;
  json_decref(cl);
  return ok;
}

void kvh_dump_view(const char *addr) {
  json_t *cl = kvh_cluster_of(addr);
  char *s = cl ? json_dumps(cl, JSON_COMPACT) : NULL;
  fprintf(stderr, "view of %s: %s\n", addr, s ? s : "(no answer)");
  free(s);
  json_decref(cl);
}

uint64_t kvh_await_views(struct kvh_worker *const *who, size_t nw,
                         const char *const *want, size_t n, int timeout_ms,
                         const char *what) {
  uint64_t t0 = kvh_now_ms();
  for (;;) {
    size_t ok = 0;
    for (size_t i = 0; i < nw; i++)
      ok += (size_t)kvh_view_is(who[i]->addr, want, n);
    if (ok == nw)
      return kvh_now_ms() - t0;
    if (kvh_now_ms() - t0 > (uint64_t)timeout_ms) {
      for (size_t i = 0; i < nw; i++)
        kvh_dump_view(who[i]->addr);
      KVH_CHECK(0, "%s: views not right after %d ms", what, timeout_ms);
    }
    kvh_sleep_ms(50);
  }
}
