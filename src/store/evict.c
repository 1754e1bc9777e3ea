/* evict.c — LRU list and watermark policy. */
#include "store/evict.h"

#include "kvds/kvds.h"

void kvds_lru_init(struct kvds_lru *l) {
  l->head.next = l->head.prev = &l->head;
  l->count = 0;
}

void kvds_lru_push(struct kvds_lru *l, struct kvds_lru_node *n) {
  n->prev = &l->head;
  n->next = l->head.next;
  l->head.next->prev = n;
  l->head.next = n;
  l->count++;
}

void kvds_lru_remove(struct kvds_lru *l, struct kvds_lru_node *n) {
  if (!n->next)
    return;
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->next = n->prev = NULL;
  l->count--;
}

void kvds_lru_touch(struct kvds_lru *l, struct kvds_lru_node *n) {
  if (l->head.next == n)
    return;
  kvds_lru_remove(l, n);
  kvds_lru_push(l, n);
}

struct kvds_lru_node *kvds_lru_oldest(const struct kvds_lru *l) {
  return l->count ? l->head.prev : NULL;
}

int kvds_evict_policy_check(const struct kvds_evict_policy *p) {
  if (!(p->high_watermark > 0.0 && p->high_watermark <= 1.0))
    return KVDS_E_INVAL;
  if (!(p->eviction_ratio >= 0.0 && p->eviction_ratio < p->high_watermark))
    return KVDS_E_INVAL;
  return 0;
}

uint64_t kvds_evict_bytes_needed(const struct kvds_evict_policy *p,
                                 uint64_t capacity, uint64_t used,
                                 uint64_t want) {
  double high = p->high_watermark * (double)capacity;
  if ((double)used + (double)want <= high)
    return 0;
  double low = (p->high_watermark - p->eviction_ratio) * (double)capacity;
  double need = (double)used + (double)want - low;
  if (need <= 0)
    return 0;
  if (need >= (double)used)
    return used;
  uint64_t n = (uint64_t)need;
  return (double)n < need ? n + 1 : n; /* round up, never evict a byte more */
}
