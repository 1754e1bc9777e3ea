/* index.c — the disk tier's index: key -> size by the key's 128-bit name,
 * the LRU list and the capacity. Every function but init/fini/ent_new
 * runs under ix->mu (taken by the caller). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "disk/internal.h"

int kvds__disk_index_init(struct kvds__disk_index *ix, uint64_t capacity) {
  memset(ix, 0, sizeof *ix);
  ix->capacity = capacity;
  ix->nbuckets = 1024;
  ix->tab = calloc(ix->nbuckets, sizeof *ix->tab);
  if (!ix->tab)
    return -ENOMEM;
  int rc = pthread_mutex_init(&ix->mu, NULL);
  if (rc) {
    free(ix->tab);
    return -rc;
  }
  return 0;
}

void kvds__disk_index_fini(struct kvds__disk_index *ix) {
  struct kvds__disk_ent *e = ix->head;
  while (e) {
    struct kvds__disk_ent *next = e->next;
    free(e);
    e = next;
  }
  free(ix->tab);
  pthread_mutex_destroy(&ix->mu);
}

struct kvds__disk_ent *kvds__disk_ent_new(const uint8_t name[16],
                                          const void *key, uint32_t klen,
                                          uint64_t size) {
  struct kvds__disk_ent *e = malloc(sizeof *e + klen);
  if (!e)
    return NULL;
  memset(e, 0, sizeof *e);
  memcpy(e->name, name, 16);
  memcpy(e->key, key, klen);
  e->klen = klen;
  e->size = size;
  e->fbytes = KVDS_DISK_HDR + size;
  return e;
}

static size_t bucket(const struct kvds__disk_index *ix,
                     const uint8_t name[16]) {
  /* the name is a hash already: its last 8 bytes spread well */
  return (size_t)(kvds_get_u64(name + 8) & (ix->nbuckets - 1));
}

static struct kvds__disk_ent **slot(struct kvds__disk_index *ix,
                                    const uint8_t name[16]) {
  struct kvds__disk_ent **p = &ix->tab[bucket(ix, name)];
  while (*p && memcmp((*p)->name, name, 16) != 0)
    p = &(*p)->hnext;
  return p;
}

struct kvds__disk_ent *kvds__disk_find_locked(struct kvds__disk_index *ix,
                                              const uint8_t name[16],
                                              const void *key, uint32_t klen) {
  struct kvds__disk_ent *e = *slot(ix, name);
  if (e && (e->klen != klen || memcmp(e->key, key, klen) != 0))
    return NULL;
  return e;
}

static void lru_unlink(struct kvds__disk_index *ix, struct kvds__disk_ent *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    ix->head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  else
    ix->tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push(struct kvds__disk_index *ix, struct kvds__disk_ent *e) {
  e->prev = NULL;
  e->next = ix->head;
  if (ix->head)
    ix->head->prev = e;
  else
    ix->tail = e;
  ix->head = e;
}

/* Doubles the bucket array (on failure the chains just grow longer). */
static void grow(struct kvds__disk_index *ix) {
  size_t nb = ix->nbuckets * 2;
  struct kvds__disk_ent **tab = calloc(nb, sizeof *tab);
  if (!tab)
    return;
  struct kvds__disk_ent **old = ix->tab;
  size_t onb = ix->nbuckets;
  ix->tab = tab;
  ix->nbuckets = nb;
  for (size_t i = 0; i < onb; i++) {
    struct kvds__disk_ent *e = old[i];
    while (e) {
      struct kvds__disk_ent *next = e->hnext;
      size_t b = bucket(ix, e->name);
      e->hnext = tab[b];
      tab[b] = e;
      e = next;
    }
  }
  free(old);
}

void kvds__disk_insert_locked(struct kvds__disk_index *ix,
                              struct kvds__disk_ent *e) {
  struct kvds__disk_ent **p = slot(ix, e->name);
  struct kvds__disk_ent *old = *p;
  if (old) {
    /* the file of this name now holds e's key: the old entry is gone */
    e->hnext = old->hnext;
    *p = e;
    lru_unlink(ix, old);
    ix->bytes -= old->fbytes;
    free(old);
  } else {
    e->hnext = NULL;
    *p = e;
    ix->n++;
  }
  lru_push(ix, e);
  ix->bytes += e->fbytes;
  if (ix->n > ix->nbuckets)
    grow(ix);
}

void kvds__disk_touch_locked(struct kvds__disk_index *ix,
                             struct kvds__disk_ent *e) {
  if (ix->head == e)
    return;
  lru_unlink(ix, e);
  lru_push(ix, e);
}

void kvds__disk_unlink_locked(struct kvds__disk_index *ix,
                              struct kvds__disk_ent *e) {
  struct kvds__disk_ent **p = slot(ix, e->name);
  if (*p == e)
    *p = e->hnext;
  e->hnext = NULL;
  lru_unlink(ix, e);
  ix->bytes -= e->fbytes;
  ix->n--;
}

struct kvds__disk_ent *kvds__disk_evict_locked(struct kvds__disk_index *ix) {
  struct kvds__disk_ent *chain = NULL, **end = &chain;
  while (ix->capacity && ix->bytes > ix->capacity && ix->tail) {
    struct kvds__disk_ent *e = ix->tail;
    kvds__disk_unlink_locked(ix, e);
    *end = e; /* in eviction order */
    end = &e->hnext;
  }
  return chain;
}
