/*
 * route.h — which backend gets a request (pure; no I/O, no clocks).
 *
 * The proxy keeps one kvds_route per role (prefill, decode, or both when
 * colocated). A caller describes the candidates of one decision — each
 * backend's index, whether it may be used now (healthy and not yet tried by
 * this request) and its requests in flight — and the route picks one:
 *
 *   round-robin        the next usable backend after the last pick
 *   least-outstanding  fewest in flight; ties in round-robin order
 *   prefix-affinity    the backend that served the longest prefix of this
 *                      prompt before, unless it has more than `slack`
 *                      requests in flight above the least loaded one;
 *                      otherwise least-outstanding
 *
 * Prefix-affinity works on chain hashes of fixed-size prompt blocks
 * (kvds_route_chain): hash i covers blocks 0..i, so two prompts share hash i
 * exactly when they share their first i+1 blocks. A direct-mapped table of
 * KVDS_ROUTE_SLOTS slots remembers, per chain hash, the backend that last
 * got it; a colliding hash overwrites the slot (it is a cache: a lost entry
 * only costs one miss). Memory is fixed: no allocation after init.
 *
 * Not thread-safe: the proxy's single event loop owns it.
 */
#ifndef KVDS_PROXY_ROUTE_H
#define KVDS_PROXY_ROUTE_H

#include <stddef.h>
#include <stdint.h>

enum kvds_route_policy {
  KVDS_ROUTE_PREFIX_AFFINITY = 0,
  KVDS_ROUTE_ROUND_ROBIN,
  KVDS_ROUTE_LEAST_OUTSTANDING,
};

#define KVDS_ROUTE_SLOTS (1u << 16)

struct kvds_route_slot {
  uint64_t hash; /* 0: empty */
  uint32_t backend;
};

struct kvds_route {
  enum kvds_route_policy policy;
  uint32_t slack; /* prefix-affinity: in-flight excess tolerated */
  uint32_t next;  /* round-robin cursor */
  struct kvds_route_slot *slots; /* KVDS_ROUTE_SLOTS, prefix-affinity only */
};

/* Backend i as the caller sees it at decision time (cands[i] of a call
 * describes backend i; every call passes all backends of the role). */
struct kvds_route_cand {
  int usable; /* healthy and not yet tried by this request */
  uint32_t outstanding;
};

/* Parses "prefix-affinity" | "round-robin" | "least-outstanding". Returns 0
 * or -1. */
int kvds_route_policy_parse(const char *s, enum kvds_route_policy *out);
const char *kvds_route_policy_name(enum kvds_route_policy p);

/* Returns 0 or -1 (out of memory). */
int kvds_route_init(struct kvds_route *r, enum kvds_route_policy p,
                    uint32_t slack);
void kvds_route_destroy(struct kvds_route *r);

/*
 * Chain hashes of `len` bytes cut into blocks of `block` bytes (the last,
 * shorter block included): out[i] covers bytes [0, min((i+1)*block, len)).
 * Writes at most `cap` hashes (the first ones) and returns how many. Never
 * returns 0 hash values (0 marks an empty slot).
 */
size_t kvds_route_chain(const void *data, size_t len, size_t block,
                        uint64_t *out, size_t cap);

/*
 * Picks a usable backend among cands[0..n) and, for prefix-affinity,
 * records the chain hashes h[0..nh) as served by it. Returns the backend's
 * index, or -1 when none is usable. *affinity_hit (optional) is set to 1
 * when the pick is the backend that served the longest known prefix.
 */
int kvds_route_pick(struct kvds_route *r, const struct kvds_route_cand *cands,
                    size_t n, const uint64_t *h, size_t nh, int *affinity_hit);

#endif
