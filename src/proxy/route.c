/* route.c — routing policies and the prefix-affinity table (route.h). */
#include "proxy/route.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

int kvds_route_policy_parse(const char *s, enum kvds_route_policy *out) {
  if (strcmp(s, "prefix-affinity") == 0)
    *out = KVDS_ROUTE_PREFIX_AFFINITY;
  else if (strcmp(s, "round-robin") == 0)
    *out = KVDS_ROUTE_ROUND_ROBIN;
  else if (strcmp(s, "least-outstanding") == 0)
    *out = KVDS_ROUTE_LEAST_OUTSTANDING;
  else
    return -1;
  return 0;
}

const char *kvds_route_policy_name(enum kvds_route_policy p) {
  switch (p) {
  case KVDS_ROUTE_PREFIX_AFFINITY:
    return "prefix-affinity";
  case KVDS_ROUTE_ROUND_ROBIN:
    return "round-robin";
  case KVDS_ROUTE_LEAST_OUTSTANDING:
    return "least-outstanding";
  }
  return "?";
}

int kvds_route_init(struct kvds_route *r, enum kvds_route_policy p,
                    uint32_t slack) {
  memset(r, 0, sizeof *r);
  r->policy = p;
  r->slack = slack;
  if (p == KVDS_ROUTE_PREFIX_AFFINITY) {
    r->slots = calloc(KVDS_ROUTE_SLOTS, sizeof *r->slots);
    if (!r->slots)
      return -1;
  }
  return 0;
}

void kvds_route_destroy(struct kvds_route *r) {
  free(r->slots);
  r->slots = NULL;
}

size_t kvds_route_chain(const void *data, size_t len, size_t block,
                        uint64_t *out, size_t cap) {
  const unsigned char *p = data;
  uint64_t h = 0x6b766473u; /* "kvds" */
  size_t n = 0;
  if (block == 0)
    block = 1;
  for (size_t off = 0; off < len && n < cap; off += block) {
    size_t b = len - off < block ? len - off : block;
    h = XXH3_64bits_withSeed(p + off, b, h);
    out[n++] = h ? h : 1;
  }
  return n;
}

/* Index of the usable backend with the fewest in flight, scanning from the
 * round-robin cursor so ties rotate; -1 when none is usable. */
static int least_loaded(const struct kvds_route *r,
                        const struct kvds_route_cand *c, size_t n) {
  int best = -1;
  for (size_t k = 0; k < n; k++) {
    size_t i = (r->next + k) % n;
    if (c[i].usable && (best < 0 || c[i].outstanding < c[best].outstanding))
      best = (int)i;
  }
  return best;
}

static int round_robin(const struct kvds_route *r,
                       const struct kvds_route_cand *c, size_t n) {
  for (size_t k = 0; k < n; k++) {
    size_t i = (r->next + k) % n;
    if (c[i].usable)
      return (int)i;
  }
  return -1;
}

/* The backend that served the longest recorded prefix, or -1. */
static int affinity_lookup(const struct kvds_route *r, const uint64_t *h,
                           size_t nh, size_t n) {
  for (size_t i = nh; i-- > 0;) {
    const struct kvds_route_slot *s = &r->slots[h[i] % KVDS_ROUTE_SLOTS];
    if (s->hash == h[i] && s->backend < n)
      return (int)s->backend;
  }
  return -1;
}

int kvds_route_pick(struct kvds_route *r, const struct kvds_route_cand *c,
                    size_t n, const uint64_t *h, size_t nh, int *affinity_hit) {
  int pick = -1, hit = 0;
  if (affinity_hit)
    *affinity_hit = 0;
  if (n == 0)
    return -1;
  switch (r->policy) {
  case KVDS_ROUTE_ROUND_ROBIN:
    pick = round_robin(r, c, n);
    break;
  case KVDS_ROUTE_LEAST_OUTSTANDING:
    pick = least_loaded(r, c, n);
    break;
  case KVDS_ROUTE_PREFIX_AFFINITY: {
    int least = least_loaded(r, c, n);
    int aff = r->slots ? affinity_lookup(r, h, nh, n) : -1;
    if (aff >= 0 && c[aff].usable && least >= 0 &&
        c[aff].outstanding <= c[least].outstanding + r->slack) {
      pick = aff;
      hit = 1;
    } else {
      pick = least;
    }
    if (pick >= 0 && r->slots)
      for (size_t i = 0; i < nh; i++) {
        struct kvds_route_slot *s = &r->slots[h[i] % KVDS_ROUTE_SLOTS];
        s->hash = h[i];
        s->backend = (uint32_t)pick;
      }
    break;
  }
  }
  if (pick >= 0)
    r->next = (uint32_t)((size_t)pick + 1) % (uint32_t)n;
  if (affinity_hit)
    *affinity_hit = hit;
  return pick;
}
