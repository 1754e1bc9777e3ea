/*
 * directory.c — the object directory (see directory.h).
 *
 * Two tables under one mutex:
 *  - entries: a chained hash table of keys (kvds_checksum of the key), each
 *    entry one allocation with the key inline and its owners as indices into
 *    the owner table — DIR_INLINE of them inline, a heap array above that;
 *  - owners: the interned (id, epoch) pairs in a slot array, with a chained
 *    hash index over slot numbers and a free list of slots. An owner's refs
 *    counts its locations; it leaves the table when that reaches 0.
 * Interning lets retain_owners ask about each owner once and then drop the
 * rejected owners' locations in one pass over the entries (a flag per slot).
 *
 * Both hash tables double when their load passes 1. Growing is best effort:
 * when the bigger bucket array cannot be allocated the table keeps working,
 * only with longer chains, so only the allocations that add data can fail.
 */
#include "cluster/directory.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kvds/kvds.h"

#define DIR_INLINE 4 /* owner indices kept inside the entry */
#define DIR_ID_MAX 255
#define DIR_NIL UINT32_MAX
#define DIR_MIN_BUCKETS 64u
#define DIR_MAX_BUCKETS (1u << 31) /* entries keep 32 bits of the hash */

_Static_assert(KVDS_DIR_MAX_OWNERS <= UINT8_MAX, "entry counts are uint8_t");
_Static_assert(KVDS_KEY_MAX <= UINT16_MAX, "key lengths are uint16_t");

struct dir_entry {
  struct dir_entry *next; /* bucket chain */
  uint32_t hash;          /* low 32 bits of kvds_checksum(key) */
  uint16_t klen;
  uint8_t n;   /* owners listed */
  uint8_t cap; /* DIR_INLINE, or the heap array's size */
  union {
    uint32_t in[DIR_INLINE];
    uint32_t *heap;
  } o; /* owner slots, in the order they were added */
  uint8_t key[];
};

struct dir_owner {
  char *id;        /* NUL-terminated; NULL: slot free */
  uint64_t idhash; /* XXH3 of the id alone (compares ids across epochs) */
  uint64_t epoch;
  uint64_t refs;  /* locations naming this owner; > 0 while in the table */
  uint32_t next;  /* hash chain, or the free list when the slot is free */
  uint16_t idlen; /* 1..DIR_ID_MAX */
  uint8_t drop;   /* retain_owners: keep() returned 0 */
};

struct kvds_directory {
  pthread_mutex_t lock;
  struct dir_entry **buckets;
  uint32_t nbuckets; /* power of two */
  uint64_t nkeys;
  uint64_t nlocations;
  struct dir_owner *owners; /* slots */
  uint32_t nslots;
  uint32_t free_slot; /* head of the free list */
  uint32_t *obuckets; /* owner hash index: first slot of each chain */
  uint32_t nobuckets; /* power of two */
  uint32_t nowners;   /* slots in use */
};

static uint32_t *entry_slots(struct dir_entry *e) {
  return e->cap > DIR_INLINE ? e->o.heap : e->o.in;
}

static uint64_t owner_hash(uint64_t idhash, uint64_t epoch) {
  /* splitmix64's finaliser: spreads epochs of the same id over buckets */
  uint64_t z = idhash ^ (epoch * 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Checks an id and computes its length and hash. */
static int id_check(const char *id, size_t *len, uint64_t *hash) {
  if (id == NULL)
    return KVDS_E_INVAL;
  size_t n = strnlen(id, DIR_ID_MAX + 1);
  if (n == 0 || n > DIR_ID_MAX)
    return KVDS_E_INVAL;
  *len = n;
  *hash = XXH3_64bits(id, n);
  return 0;
}

static int same_id(const struct dir_owner *o, const char *id, size_t len,
                   uint64_t idhash) {
  return o->idhash == idhash && o->idlen == len && memcmp(o->id, id, len) == 0;
}

/* ---- owner table -------------------------------------------------------- */

static uint32_t owner_bucket(const kvds_directory *d, uint64_t idhash,
                             uint64_t epoch) {
  return (uint32_t)owner_hash(idhash, epoch) & (d->nobuckets - 1);
}

static uint32_t owner_find_locked(kvds_directory *d, const char *id, size_t len,
                                  uint64_t idhash, uint64_t epoch) {
  uint32_t b = owner_bucket(d, idhash, epoch);
  for (uint32_t s = d->obuckets[b]; s != DIR_NIL; s = d->owners[s].next) {
    const struct dir_owner *o = &d->owners[s];
    if (o->epoch == epoch && same_id(o, id, len, idhash))
      return s;
  }
  return DIR_NIL;
}

static void owner_link_locked(kvds_directory *d, uint32_t s) {
  struct dir_owner *o = &d->owners[s];
  uint32_t b = owner_bucket(d, o->idhash, o->epoch);
  o->next = d->obuckets[b];
  d->obuckets[b] = s;
}

static void owner_grow_index_locked(kvds_directory *d) {
  if (d->nowners <= d->nobuckets || d->nobuckets >= DIR_MAX_BUCKETS)
    return;
  uint32_t nb = d->nobuckets * 2;
  uint32_t *ob = malloc((size_t)nb * sizeof *ob);
  if (ob == NULL)
    return; /* longer chains, still correct */
  for (uint32_t i = 0; i < nb; i++)
    ob[i] = DIR_NIL;
  free(d->obuckets);
  d->obuckets = ob;
  d->nobuckets = nb;
  for (uint32_t s = 0; s < d->nslots; s++)
    if (d->owners[s].id != NULL)
      owner_link_locked(d, s);
}

/* The slot of owner (id, epoch), interned with refs 0 if it was not there;
 * DIR_NIL when out of memory (nothing changed). A new owner must get a
 * location or be released with owner_release_locked. */
static uint32_t owner_intern_locked(kvds_directory *d, const char *id,
                                    size_t len, uint64_t idhash,
                                    uint64_t epoch) {
  uint32_t s = owner_find_locked(d, id, len, idhash, epoch);
  if (s != DIR_NIL)
    return s;
  if (d->free_slot == DIR_NIL) {
    if (d->nslots >= DIR_NIL / 2)
      return DIR_NIL;
    uint32_t ns = d->nslots ? d->nslots * 2 : 8;
    struct dir_owner *os = realloc(d->owners, (size_t)ns * sizeof *os);
    if (os == NULL)
      return DIR_NIL;
    d->owners = os;
    for (uint32_t i = ns; i-- > d->nslots;) {
      memset(&os[i], 0, sizeof os[i]);
      os[i].next = d->free_slot;
      d->free_slot = i;
    }
    d->nslots = ns;
  }
  char *copy = malloc(len + 1);
  if (copy == NULL)
    return DIR_NIL;
  memcpy(copy, id, len);
  copy[len] = '\0';
  s = d->free_slot;
  struct dir_owner *o = &d->owners[s];
  d->free_slot = o->next;
  o->id = copy;
  o->idlen = (uint16_t)len;
  o->idhash = idhash;
  o->epoch = epoch;
  o->refs = 0;
  o->drop = 0;
  owner_link_locked(d, s);
  d->nowners++;
  owner_grow_index_locked(d);
  return s;
}

/* Removes slot s from the table if no location names it any more. */
static void owner_release_locked(kvds_directory *d, uint32_t s) {
  struct dir_owner *o = &d->owners[s];
  if (o->refs > 0)
    return;
  uint32_t b = owner_bucket(d, o->idhash, o->epoch);
  uint32_t *link = &d->obuckets[b];
  while (*link != s)
    link = &d->owners[*link].next;
  *link = o->next;
  free(o->id);
  memset(o, 0, sizeof *o);
  o->next = d->free_slot;
  d->free_slot = s;
  d->nowners--;
}

static void owner_unref_locked(kvds_directory *d, uint32_t s) {
  d->owners[s].refs--;
  owner_release_locked(d, s);
}

/* ---- entries ------------------------------------------------------------ */

static struct dir_entry **entry_link_locked(kvds_directory *d, const void *key,
                                            size_t klen, uint32_t hash) {
  struct dir_entry **link = &d->buckets[hash & (d->nbuckets - 1)];
  for (; *link != NULL; link = &(*link)->next) {
    struct dir_entry *e = *link;
    if (e->hash == hash && e->klen == klen && memcmp(e->key, key, klen) == 0)
      break;
  }
  return link;
}

static void entries_grow_locked(kvds_directory *d) {
  if (d->nkeys <= d->nbuckets || d->nbuckets >= DIR_MAX_BUCKETS)
    return;
  uint32_t nb = d->nbuckets * 2;
  struct dir_entry **bs = calloc(nb, sizeof *bs);
  if (bs == NULL)
    return; /* longer chains, still correct */
  for (uint32_t i = 0; i < d->nbuckets; i++) {
    struct dir_entry *e = d->buckets[i];
    while (e != NULL) {
      struct dir_entry *next = e->next;
      uint32_t b = e->hash & (nb - 1);
      e->next = bs[b];
      bs[b] = e;
      e = next;
    }
  }
  free(d->buckets);
  d->buckets = bs;
  d->nbuckets = nb;
}

/* Makes room for one more owner in e. 0 or -ENOMEM (e unchanged). */
static int entry_reserve(struct dir_entry *e) {
  if (e->n < e->cap)
    return 0;
  uint8_t cap = (uint8_t)(e->cap * 2);
  if (cap > KVDS_DIR_MAX_OWNERS)
    cap = KVDS_DIR_MAX_OWNERS;
  uint32_t *a;
  if (e->cap > DIR_INLINE) {
    a = realloc(e->o.heap, cap * sizeof *a);
    if (a == NULL)
      return -ENOMEM;
  } else {
    a = malloc(cap * sizeof *a);
    if (a == NULL)
      return -ENOMEM;
    memcpy(a, e->o.in, e->n * sizeof *a);
  }
  e->o.heap = a;
  e->cap = cap;
  return 0;
}

/* Back to the inline array once the owners fit there with room to spare
 * (not at DIR_INLINE, so one owner coming and going does not allocate and
 * free each time). */
static void entry_shrink(struct dir_entry *e) {
  if (e->cap <= DIR_INLINE || e->n > DIR_INLINE / 2)
    return;
  uint32_t *a = e->o.heap;
  memcpy(e->o.in, a, e->n * sizeof *a);
  free(a);
  e->cap = DIR_INLINE;
}

static void entry_destroy(struct dir_entry *e) {
  if (e->cap > DIR_INLINE)
    free(e->o.heap);
  free(e);
}

/* Unlinks *link's entry (no owners left) and frees it. */
static void entry_free_locked(kvds_directory *d, struct dir_entry **link) {
  struct dir_entry *e = *link;
  *link = e->next;
  entry_destroy(e);
  d->nkeys--;
}

/* Checks a call's key and owner id; fills the id's length and hash and the
 * key's 32-bit hash. 0, KVDS_E_KEYLEN or KVDS_E_INVAL. */
static int args_check(const void *key, size_t klen, const char *id,
                      size_t *idlen, uint64_t *idhash, uint32_t *hash) {
  if (klen == 0 || klen > KVDS_KEY_MAX)
    return KVDS_E_KEYLEN;
  int rc = id_check(id, idlen, idhash);
  if (rc == 0)
    *hash = (uint32_t)kvds_checksum(key, klen);
  return rc;
}

/* ---- API ---------------------------------------------------------------- */

int kvds_dir_new(kvds_directory **out) {
  int rc = -ENOMEM;
  kvds_directory *d = calloc(1, sizeof *d);
  if (d == NULL)
    goto out;
  d->buckets = calloc(DIR_MIN_BUCKETS, sizeof *d->buckets);
  d->obuckets = malloc(DIR_MIN_BUCKETS * sizeof *d->obuckets);
  if (d->buckets == NULL || d->obuckets == NULL)
    goto out;
  for (uint32_t i = 0; i < DIR_MIN_BUCKETS; i++)
    d->obuckets[i] = DIR_NIL;
  d->nbuckets = d->nobuckets = DIR_MIN_BUCKETS;
  d->free_slot = DIR_NIL;
  int err = pthread_mutex_init(&d->lock, NULL);
  if (err != 0) {
    rc = -err;
    goto out;
  }
  *out = d;
  d = NULL;
  rc = 0;
out:
  if (d != NULL) {
    free(d->buckets);
    free(d->obuckets);
    free(d);
  }
  return rc;
}

void kvds_dir_free(kvds_directory *d) {
  if (d == NULL)
    return;
  for (uint32_t i = 0; i < d->nbuckets; i++) {
    struct dir_entry *e = d->buckets[i];
    while (e != NULL) {
      struct dir_entry *next = e->next;
      entry_destroy(e);
      e = next;
    }
  }
  for (uint32_t s = 0; s < d->nslots; s++)
    free(d->owners[s].id);
  free(d->owners);
  free(d->obuckets);
  free(d->buckets);
  pthread_mutex_destroy(&d->lock);
  free(d);
}

int kvds_dir_add(kvds_directory *d, const void *key, size_t klen,
                 const char *id, uint64_t epoch) {
  size_t idlen;
  uint64_t idhash;
  uint32_t hash;
  int rc = args_check(key, klen, id, &idlen, &idhash, &hash);
  if (rc != 0)
    return rc;

  pthread_mutex_lock(&d->lock);
  struct dir_entry **link = entry_link_locked(d, key, klen, hash);
  struct dir_entry *e = *link;
  uint32_t s;
  if (e != NULL) {
    uint32_t *slots = entry_slots(e);
    for (uint8_t i = 0; i < e->n; i++) {
      struct dir_owner *o = &d->owners[slots[i]];
      if (!same_id(o, id, idlen, idhash))
        continue;
      rc = 0; /* the same incarnation, or a newer one, is listed */
      if (o->epoch >= epoch)
        goto out;
      s = owner_intern_locked(d, id, idlen, idhash, epoch);
      if (s == DIR_NIL) {
        rc = -ENOMEM;
        goto out;
      }
      uint32_t old = slots[i];
      slots[i] = s;
      d->owners[s].refs++;
      owner_unref_locked(d, old);
      rc = 1;
      goto out;
    }
    rc = 0;
    if (e->n >= KVDS_DIR_MAX_OWNERS)
      goto out;
  }

  rc = -ENOMEM;
  s = owner_intern_locked(d, id, idlen, idhash, epoch);
  if (s == DIR_NIL)
    goto out;
  if (e == NULL) {
    e = malloc(sizeof *e + klen);
    if (e == NULL) {
      owner_release_locked(d, s);
      goto out;
    }
    e->next = NULL;
    e->hash = hash;
    e->klen = (uint16_t)klen;
    e->n = 0;
    e->cap = DIR_INLINE;
    memcpy(e->key, key, klen);
    *link = e;
    d->nkeys++;
  } else if (entry_reserve(e) != 0) {
    owner_release_locked(d, s);
    goto out;
  }
  entry_slots(e)[e->n++] = s;
  d->owners[s].refs++;
  d->nlocations++;
  entries_grow_locked(d);
  rc = 1;
out:
  pthread_mutex_unlock(&d->lock);
  return rc;
}

int kvds_dir_remove(kvds_directory *d, const void *key, size_t klen,
                    const char *id, uint64_t epoch) {
  size_t idlen;
  uint64_t idhash;
  uint32_t hash;
  int rc = args_check(key, klen, id, &idlen, &idhash, &hash);
  if (rc != 0)
    return rc;

  pthread_mutex_lock(&d->lock);
  struct dir_entry **link = entry_link_locked(d, key, klen, hash);
  struct dir_entry *e = *link;
  uint32_t s = owner_find_locked(d, id, idlen, idhash, epoch);
  if (e == NULL || s == DIR_NIL)
    goto out;
  uint32_t *slots = entry_slots(e);
  for (uint8_t i = 0; i < e->n; i++) {
    if (slots[i] != s)
      continue;
    memmove(&slots[i], &slots[i + 1], (size_t)(e->n - i - 1) * sizeof *slots);
    e->n--;
    d->nlocations--;
    owner_unref_locked(d, s);
    if (e->n == 0)
      entry_free_locked(d, link);
    else
      entry_shrink(e);
    rc = 1;
    break;
  }
out:
  pthread_mutex_unlock(&d->lock);
  return rc;
}

size_t kvds_dir_lookup(kvds_directory *d, const void *key, size_t klen,
                       struct kvds_dir_owner *out, size_t max) {
  size_t n = 0;
  if (klen == 0 || klen > KVDS_KEY_MAX)
    return 0;
  uint32_t hash = (uint32_t)kvds_checksum(key, klen);

  pthread_mutex_lock(&d->lock);
  struct dir_entry *e = *entry_link_locked(d, key, klen, hash);
  if (e != NULL) {
    const uint32_t *slots = entry_slots(e);
    n = e->n;
    for (size_t i = 0; i < n && i < max; i++) {
      const struct dir_owner *o = &d->owners[slots[i]];
      memcpy(out[i].id, o->id, (size_t)o->idlen + 1);
      out[i].epoch = o->epoch;
    }
  }
  pthread_mutex_unlock(&d->lock);
  return n;
}

size_t kvds_dir_retain_owners(kvds_directory *d,
                              int (*keep)(const char *id, uint64_t epoch,
                                          void *ud),
                              void *ud) {
  size_t dropped = 0, rejected = 0;
  pthread_mutex_lock(&d->lock);
  for (uint32_t s = 0; s < d->nslots; s++) {
    struct dir_owner *o = &d->owners[s];
    if (o->id != NULL && !keep(o->id, o->epoch, ud)) {
      o->drop = 1;
      rejected++;
    }
  }
  if (rejected == 0)
    goto out;
  for (uint32_t b = 0; b < d->nbuckets; b++) {
    struct dir_entry **link = &d->buckets[b];
    while (*link != NULL) {
      struct dir_entry *e = *link;
      uint32_t *slots = entry_slots(e);
      uint8_t n = 0;
      for (uint8_t i = 0; i < e->n; i++) {
        if (d->owners[slots[i]].drop)
          d->owners[slots[i]].refs--; /* released after the pass */
        else
          slots[n++] = slots[i];
      }
      dropped += (size_t)(e->n - n);
      d->nlocations -= (uint64_t)(e->n - n);
      e->n = n;
      if (n == 0) {
        entry_free_locked(d, link);
        continue;
      }
      entry_shrink(e);
      link = &e->next;
    }
  }
  for (uint32_t s = 0; s < d->nslots; s++)
    if (d->owners[s].id != NULL && d->owners[s].drop)
      owner_release_locked(d, s); /* refs is 0: every location went */
out:
  pthread_mutex_unlock(&d->lock);
  return dropped;
}

size_t kvds_dir_retain_keys(kvds_directory *d,
                            int (*keep)(const uint8_t *key, size_t klen,
                                        void *ud),
                            void *ud) {
  size_t dropped = 0;
  pthread_mutex_lock(&d->lock);
  for (uint32_t b = 0; b < d->nbuckets; b++) {
    struct dir_entry **link = &d->buckets[b];
    while (*link != NULL) {
      struct dir_entry *e = *link;
      if (keep(e->key, e->klen, ud)) {
        link = &e->next;
        continue;
      }
      const uint32_t *slots = entry_slots(e);
      for (uint8_t i = 0; i < e->n; i++)
        owner_unref_locked(d, slots[i]);
      d->nlocations -= e->n;
      entry_free_locked(d, link);
      dropped++;
    }
  }
  pthread_mutex_unlock(&d->lock);
  return dropped;
}

void kvds_dir_stats(kvds_directory *d, struct kvds_dir_stats *out) {
  pthread_mutex_lock(&d->lock);
  out->keys = d->nkeys;
  out->locations = d->nlocations;
  out->owners = d->nowners;
  pthread_mutex_unlock(&d->lock);
}
