/* view.c — member snapshots and the questions asked of them (view.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/hrw.h"
#include "cluster/view.h"
#include "common/util.h"
#include "kvds/kvds.h"

int kvds_view_init(struct kvds_view *v, size_t cap) {
  size_t m = cap ? cap : 1;
  v->m = malloc(m * (sizeof *v->m + sizeof *v->seeds));
  v->seeds = v->m ? (uint64_t *)(v->m + m) : NULL;
  v->n = 0;
  return v->m ? 0 : -ENOMEM;
}

void kvds_view_free(struct kvds_view *v) {
  free(v->m);
  v->m = NULL;
  v->seeds = NULL;
  v->n = 0;
}

int kvds_view_copy(struct kvds_view *out, const struct kvds_view *v) {
  if (kvds_view_init(out, v->n))
    return -ENOMEM;
  out->n = v->n;
  memcpy(out->m, v->m, v->n * sizeof *v->m);
  memcpy(out->seeds, v->seeds, v->n * sizeof *v->seeds);
  return 0;
}

void kvds_view_add(struct kvds_view *v, void *ud, const char *id,
                   uint64_t epoch) {
  v->m[v->n] = (struct kvds_view_member){ud, id, epoch};
  v->seeds[v->n++] = kvds_hrw_seed(id, strlen(id));
}

size_t kvds_view_home(const struct kvds_view *v, const uint8_t *key,
                      size_t klen) {
  int h = kvds_hrw_home(kvds_checksum(key, klen), v->seeds, v->n);
  return h < 0 ? 0 : (size_t)h;
}

size_t kvds_view_top(const struct kvds_view *v, const uint8_t *key, size_t klen,
                     size_t *out, size_t k) {
  return kvds_hrw_top(kvds_checksum(key, klen), v->seeds, v->n, out, k);
}

long kvds_view_find(const struct kvds_view *v, const char *id) {
  for (size_t i = 0; i < v->n; i++)
    if (strcmp(v->m[i].id, id) == 0)
      return (long)i;
  return -1;
}

int kvds_view_has(const struct kvds_view *v, const char *id, uint64_t epoch) {
  long i = kvds_view_find(v, id);
  return i >= 0 && (v->m[i].epoch == 0 || epoch == 0 || v->m[i].epoch == epoch);
}

int kvds_view_home_moved(const struct kvds_view *old,
                         const struct kvds_view *nv, const uint8_t *key,
                         size_t klen) {
  size_t oh = kvds_view_home(old, key, klen);
  size_t nh = kvds_view_home(nv, key, klen);
  return strcmp(old->m[oh].id, nv->m[nh].id) != 0 ||
         old->m[oh].epoch != nv->m[nh].epoch;
}

long kvds_view_next_owner(const struct kvds_view *v, const char *self,
                          const struct kvds_dir_owner *owners, size_t n,
                          void *const *tried, size_t ntried) {
  for (size_t o = 0; o < n; o++) {
    if (strcmp(owners[o].id, self) == 0 ||
        !kvds_view_has(v, owners[o].id, owners[o].epoch))
      continue;
    long at = kvds_view_find(v, owners[o].id);
    int seen = !v->m[at].ud; /* this worker under another name: skip */
    for (size_t t = 0; t < ntried; t++)
      seen |= tried[t] == v->m[at].ud;
    if (!seen)
      return at;
  }
  return -1;
}
