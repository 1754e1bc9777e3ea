/*
 * alloc.c — TLSF offset allocator (see alloc.h).
 *
 * Every extent of [base, base + capacity) — free or allocated — is a node in
 * a private array, linked to its address-order neighbours. Free extents are
 * also linked into one of LEVELS x SUBBINS size-class bins. Sizes are binned
 * in units of KVDS_ALLOC_ALIGN bytes: the first level is floor(log2(units)),
 * the second splits that power of two into SUBBINS linear steps (levels below
 * SUBBINS_LOG2 have fewer distinct sizes than sub-bins, so each of their bins
 * holds exactly one size).
 *
 * Node indices are the handles given to callers. Splitting keeps the low part
 * in the original node and coalescing keeps the lower node, so the extent at
 * `base` is always node 0: that is the head of the address list, which the
 * fixed struct layout has no field for.
 */
#include "pool/alloc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvds/kvds.h"

#define ALLOC_INIT_NODES 64u
/* Handles are uint32 and UINT32_MAX means "none". */
#define ALLOC_MAX_NODES (UINT32_MAX - 1u)
#define ALLOC_SHIFT 6 /* log2(KVDS_ALLOC_ALIGN) */
#define ALLOC_MAX_UNITS ((1ull << KVDS_ALLOC_LEVELS) - 1u)

_Static_assert(KVDS_ALLOC_ALIGN == 1u << ALLOC_SHIFT, "ALLOC_SHIFT");
_Static_assert(KVDS_ALLOC_SUBBINS <= 32, "sl_bitmap is 32 bits");
_Static_assert(KVDS_ALLOC_LEVELS <= 64, "fl_bitmap is 64 bits");

enum node_state {
  NODE_UNUSED = 0, /* on the recycled list */
  NODE_USED = 1,   /* allocated extent */
  NODE_FREE = 2    /* free extent, in a bin */
};

struct kvds_alloc_node {
  uint64_t off;
  uint64_t size; /* bytes, multiple of ALIGN */
  uint32_t prev_addr, next_addr;
  /* Bin list links; next_free also links the recycled-node list. */
  uint32_t prev_free, next_free;
  uint32_t state; /* enum node_state */
};

static unsigned log2_u64(uint64_t v) {
  return 63u - (unsigned)__builtin_clzll(v);
}

/* Bin of a free extent of `size` bytes (size >= ALIGN, < 2^LEVELS units). */
static void bin_of(uint64_t size, unsigned *fl, unsigned *sl) {
  uint64_t units = size >> ALLOC_SHIFT;
  unsigned f = log2_u64(units);

  *fl = f;
  if (f < KVDS_ALLOC_SUBBINS_LOG2)
    *sl = (unsigned)(units - (1ull << f));
  else
    *sl =
        (unsigned)(units >> (f - KVDS_ALLOC_SUBBINS_LOG2)) - KVDS_ALLOC_SUBBINS;
}

static void bin_insert(struct kvds_alloc *a, uint32_t n) {
  struct kvds_alloc_node *node = &a->nodes[n];
  unsigned fl, sl;

  bin_of(node->size, &fl, &sl);
  node->state = NODE_FREE;
  node->prev_free = KVDS_ALLOC_NONE;
  node->next_free = a->bins[fl][sl];
  if (node->next_free != KVDS_ALLOC_NONE)
    a->nodes[node->next_free].prev_free = n;
  a->bins[fl][sl] = n;
  a->sl_bitmap[fl] |= 1u << sl;
  a->fl_bitmap |= 1ull << fl;
  a->n_free_extents++;
}

static void bin_remove(struct kvds_alloc *a, uint32_t n) {
  struct kvds_alloc_node *node = &a->nodes[n];
  unsigned fl, sl;

  bin_of(node->size, &fl, &sl);
  if (node->prev_free != KVDS_ALLOC_NONE)
    a->nodes[node->prev_free].next_free = node->next_free;
  else
    a->bins[fl][sl] = node->next_free;
  if (node->next_free != KVDS_ALLOC_NONE)
    a->nodes[node->next_free].prev_free = node->prev_free;
  if (a->bins[fl][sl] == KVDS_ALLOC_NONE) {
    a->sl_bitmap[fl] &= ~(1u << sl);
    if (a->sl_bitmap[fl] == 0)
      a->fl_bitmap &= ~(1ull << fl);
  }
  node->prev_free = node->next_free = KVDS_ALLOC_NONE;
  a->n_free_extents--;
}

/* Takes a node from the recycled list or the array's tail, growing the array
 * when full. Indices stay valid across growth; node pointers do not. */
static int node_get(struct kvds_alloc *a, uint32_t *out) {
  uint32_t n = a->free_nodes;

  if (n != KVDS_ALLOC_NONE) {
    a->free_nodes = a->nodes[n].next_free;
    goto out;
  }
  if (a->n_nodes == a->cap_nodes) {
    uint64_t cap = a->cap_nodes ? (uint64_t)a->cap_nodes * 2 : ALLOC_INIT_NODES;
    struct kvds_alloc_node *nodes;

    if (cap > ALLOC_MAX_NODES)
      cap = ALLOC_MAX_NODES;
    if (cap <= a->cap_nodes || cap > SIZE_MAX / sizeof(*nodes))
      return -ENOMEM;
    nodes = realloc(a->nodes, (size_t)cap * sizeof(*nodes));
    if (!nodes)
      return -ENOMEM;
    a->nodes = nodes;
    a->cap_nodes = (uint32_t)cap;
  }
  n = a->n_nodes++;
out:
  memset(&a->nodes[n], 0, sizeof(a->nodes[n]));
  a->nodes[n].prev_addr = a->nodes[n].next_addr = KVDS_ALLOC_NONE;
  a->nodes[n].prev_free = a->nodes[n].next_free = KVDS_ALLOC_NONE;
  *out = n;
  return 0;
}

static void node_put(struct kvds_alloc *a, uint32_t n) {
  a->nodes[n].state = NODE_UNUSED;
  a->nodes[n].next_free = a->free_nodes;
  a->free_nodes = n;
}

/* Removes n from the address list; its neighbours become adjacent. */
static void addr_unlink(struct kvds_alloc *a, uint32_t n) {
  struct kvds_alloc_node *node = &a->nodes[n];

  if (node->prev_addr != KVDS_ALLOC_NONE)
    a->nodes[node->prev_addr].next_addr = node->next_addr;
  if (node->next_addr != KVDS_ALLOC_NONE)
    a->nodes[node->next_addr].prev_addr = node->prev_addr;
}

/* First non-empty bin at or above (fl, sl), or 0 if there is none. */
static int bin_search(const struct kvds_alloc *a, unsigned *fl, unsigned *sl) {
  uint32_t sl_map = a->sl_bitmap[*fl] & (~0u << *sl);
  uint64_t fl_map;

  if (sl_map) {
    *sl = (unsigned)__builtin_ctz(sl_map);
    return 1;
  }
  fl_map = *fl + 1 < 64 ? a->fl_bitmap & (~0ull << (*fl + 1)) : 0;
  if (!fl_map)
    return 0;
  *fl = (unsigned)__builtin_ctzll(fl_map);
  *sl = (unsigned)__builtin_ctz(a->sl_bitmap[*fl]);
  return 1;
}

/* A free node of at least `size` bytes (a multiple of ALIGN), or NONE. */
static uint32_t find_fit(const struct kvds_alloc *a, uint64_t size) {
  uint64_t units = size >> ALLOC_SHIFT;
  unsigned fl, sl, gfl, gsl;
  uint32_t n;

  bin_of(size, &fl, &sl);
  /* Rounding the request up to the next bin boundary makes every extent of
   * the bin found a fit, so the head can be taken without scanning. */
  if (fl >= KVDS_ALLOC_SUBBINS_LOG2)
    units += (1ull << (fl - KVDS_ALLOC_SUBBINS_LOG2)) - 1;
  if (units <= ALLOC_MAX_UNITS) {
    bin_of(units << ALLOC_SHIFT, &gfl, &gsl);
    if (bin_search(a, &gfl, &gsl))
      return a->bins[gfl][gsl];
    if (gfl == fl && gsl == sl)
      return KVDS_ALLOC_NONE;
  }
  /* The request's own bin may still hold a big enough extent; scanning it
   * makes a request equal to the largest free extent always succeed. */
  for (n = a->bins[fl][sl]; n != KVDS_ALLOC_NONE; n = a->nodes[n].next_free)
    if (a->nodes[n].size >= size)
      return n;
  return KVDS_ALLOC_NONE;
}

int kvds_alloc_init(struct kvds_alloc *a, uint64_t base, uint64_t capacity) {
  struct kvds_alloc tmp;
  uint32_t n;
  int rc;

  capacity &= ~(uint64_t)(KVDS_ALLOC_ALIGN - 1);
  if (capacity < KVDS_ALLOC_ALIGN ||
      (capacity >> ALLOC_SHIFT) > ALLOC_MAX_UNITS ||
      base > UINT64_MAX - capacity)
    return -EINVAL;

  /* Built aside so that *a is written only on success. */
  memset(&tmp, 0, sizeof(tmp));
  memset(tmp.bins, 0xff, sizeof(tmp.bins));
  tmp.free_nodes = KVDS_ALLOC_NONE;
  tmp.base = base;
  tmp.capacity = capacity;
  rc = node_get(&tmp, &n);
  if (rc < 0)
    goto out;
  tmp.nodes[n].off = base;
  tmp.nodes[n].size = capacity;
  bin_insert(&tmp, n);
  *a = tmp;
out:
  return rc;
}

void kvds_alloc_fini(struct kvds_alloc *a) {
  if (!a)
    return;
  free(a->nodes);
  memset(a, 0, sizeof(*a));
}

int kvds_alloc_alloc(struct kvds_alloc *a, uint64_t size, uint64_t *off,
                     uint32_t *h) {
  uint64_t need;
  uint32_t n, rest;
  int rc = 0;

  if (size == 0 || size > a->capacity)
    return KVDS_E_INVAL;
  need = kvds_alloc_rounded(size);
  n = find_fit(a, need);
  if (n == KVDS_ALLOC_NONE)
    return KVDS_E_NOSPACE;

  if (a->nodes[n].size > need) {
    /* Get the remainder's node before changing anything, so -ENOMEM leaves
     * the allocator as it was. */
    rc = node_get(a, &rest);
    if (rc < 0)
      goto out;
    bin_remove(a, n);
    a->nodes[rest].off = a->nodes[n].off + need;
    a->nodes[rest].size = a->nodes[n].size - need;
    a->nodes[rest].prev_addr = n;
    a->nodes[rest].next_addr = a->nodes[n].next_addr;
    if (a->nodes[n].next_addr != KVDS_ALLOC_NONE)
      a->nodes[a->nodes[n].next_addr].prev_addr = rest;
    a->nodes[n].next_addr = rest;
    a->nodes[n].size = need;
    bin_insert(a, rest);
  } else {
    bin_remove(a, n);
  }
  a->nodes[n].state = NODE_USED;
  a->used += need;
  a->n_alloc++;
  *off = a->nodes[n].off;
  *h = n;
out:
  return rc;
}

void kvds_alloc_free(struct kvds_alloc *a, uint32_t h) {
  uint32_t p, nx;

  /* Handles never come from outside the process, but a stale one must not
   * corrupt the lists: ignore anything that is not a live allocation. */
  if (h >= a->n_nodes || a->nodes[h].state != NODE_USED)
    return;
  a->used -= a->nodes[h].size;
  a->n_alloc--;

  p = a->nodes[h].prev_addr;
  if (p != KVDS_ALLOC_NONE && a->nodes[p].state == NODE_FREE) {
    bin_remove(a, p);
    a->nodes[p].size += a->nodes[h].size;
    addr_unlink(a, h);
    node_put(a, h);
    h = p;
  }
  nx = a->nodes[h].next_addr;
  if (nx != KVDS_ALLOC_NONE && a->nodes[nx].state == NODE_FREE) {
    bin_remove(a, nx);
    a->nodes[h].size += a->nodes[nx].size;
    addr_unlink(a, nx);
    node_put(a, nx);
  }
  bin_insert(a, h);
}

void kvds_alloc_stats(const struct kvds_alloc *a, struct kvds_alloc_stats *st) {
  uint64_t largest = 0, diff, den;
  uint32_t n;

  memset(st, 0, sizeof(*st));
  if (a->fl_bitmap) {
    unsigned fl = log2_u64(a->fl_bitmap);
    unsigned sl = 31u - (unsigned)__builtin_clz(a->sl_bitmap[fl]);

    /* Only the top bin can hold the largest extent, but its extents differ
     * in size, so it is scanned. */
    for (n = a->bins[fl][sl]; n != KVDS_ALLOC_NONE; n = a->nodes[n].next_free)
      if (a->nodes[n].size > largest)
        largest = a->nodes[n].size;
  }
  st->capacity = a->capacity;
  st->used = a->used;
  st->free = a->capacity - a->used;
  st->largest_free = largest;
  st->allocations = a->n_alloc;
  st->free_extents = a->n_free_extents;
  if (st->free) {
    diff = st->free - largest;
    /* Free space is below 2^54, so scale both down when diff * 10^6 would
     * overflow; ppm needs only about 20 significant bits. */
    den = st->free;
    while (diff > UINT64_MAX / 1000000u) {
      diff >>= 1;
      den >>= 1;
    }
    st->fragmentation_ppm = diff * 1000000u / den;
  }
}

/* Walks one bin's list; returns the number of nodes or -1 on a bad link. */
static int64_t check_bin(const struct kvds_alloc *a, unsigned fl, unsigned sl) {
  uint32_t n, prev = KVDS_ALLOC_NONE;
  int64_t count = 0;

  for (n = a->bins[fl][sl]; n != KVDS_ALLOC_NONE; n = a->nodes[n].next_free) {
    const struct kvds_alloc_node *node;
    unsigned nfl, nsl;

    if (n >= a->n_nodes || count >= a->n_nodes)
      return -1;
    node = &a->nodes[n];
    if (node->state != NODE_FREE || node->prev_free != prev)
      return -1;
    bin_of(node->size, &nfl, &nsl);
    if (nfl != fl || nsl != sl)
      return -1;
    prev = n;
    count++;
  }
  return count;
}

int kvds_alloc_check(const struct kvds_alloc *a) {
  uint64_t off, used = 0, n_alloc = 0, n_free = 0, n_binned = 0;
  uint64_t n_live = 0, n_recycled = 0;
  uint32_t n, prev = KVDS_ALLOC_NONE;
  int prev_free = 0;

  if (!a->nodes || a->n_nodes == 0 || a->n_nodes > a->cap_nodes)
    return -1;

  /* Address order: extents tile [base, base + capacity) exactly, and no two
   * free extents are adjacent (they would have been coalesced). */
  off = a->base;
  for (n = 0; n != KVDS_ALLOC_NONE; n = a->nodes[n].next_addr) {
    const struct kvds_alloc_node *node;

    if (n >= a->n_nodes || n_live >= a->n_nodes)
      return -1;
    node = &a->nodes[n];
    if (node->prev_addr != prev || node->off != off || node->size == 0 ||
        node->size % KVDS_ALLOC_ALIGN != 0 ||
        node->size > a->base + a->capacity - off)
      return -1;
    if (node->state == NODE_USED) {
      used += node->size;
      n_alloc++;
      prev_free = 0;
    } else if (node->state == NODE_FREE) {
      if (prev_free)
        return -1;
      n_free++;
      prev_free = 1;
    } else {
      return -1;
    }
    off += node->size;
    prev = n;
    n_live++;
  }
  if (off != a->base + a->capacity || used != a->used ||
      n_alloc != a->n_alloc || n_free != a->n_free_extents)
    return -1;

  /* Bins: each list holds free extents of its class, bitmaps mirror which
   * lists are non-empty, and every free extent is in some list. */
  for (unsigned fl = 0; fl < KVDS_ALLOC_LEVELS; fl++) {
    for (unsigned sl = 0; sl < KVDS_ALLOC_SUBBINS; sl++) {
      int64_t c = check_bin(a, fl, sl);
      int bit = (a->sl_bitmap[fl] >> sl) & 1u;

      if (c < 0 || (c > 0) != bit)
        return -1;
      n_binned += (uint64_t)c;
    }
    if ((a->sl_bitmap[fl] & ~(uint32_t)((1ull << KVDS_ALLOC_SUBBINS) - 1)) ||
        (a->sl_bitmap[fl] != 0) != ((a->fl_bitmap >> fl) & 1u))
      return -1;
  }
  if ((a->fl_bitmap >> KVDS_ALLOC_LEVELS) != 0 || n_binned != n_free)
    return -1;

  /* Every node is either an extent or recycled. */
  for (n = a->free_nodes; n != KVDS_ALLOC_NONE; n = a->nodes[n].next_free) {
    if (n >= a->n_nodes || n_recycled >= a->n_nodes ||
        a->nodes[n].state != NODE_UNUSED)
      return -1;
    n_recycled++;
  }
  if (n_live + n_recycled != a->n_nodes)
    return -1;
  return 0;
}
