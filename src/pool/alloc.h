/*
 * alloc.h — offset allocator for the pool's data area (leaf module).
 *
 * Hands out [offset, offset+size) extents of an abstract address range. Its
 * metadata lives in private memory, never inside the shared segment, so a
 * client scribbling over shared memory cannot corrupt it.
 *
 * Two-level segregated fit (TLSF): free extents are binned by size class
 * (a power of two split into KVDS_ALLOC_SUBBINS linear steps); two bitmaps
 * find a bin that is guaranteed to fit in O(1). Extents are linked in
 * address order so a freed extent coalesces with free neighbours in O(1).
 * Every allocation is rounded up to KVDS_ALLOC_ALIGN bytes.
 *
 * Not thread-safe: the owner serialises calls.
 */
#ifndef KVDS_ALLOC_H
#define KVDS_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#define KVDS_ALLOC_ALIGN 64u
#define KVDS_ALLOC_SUBBINS_LOG2 4
#define KVDS_ALLOC_SUBBINS (1u << KVDS_ALLOC_SUBBINS_LOG2)
#define KVDS_ALLOC_LEVELS 48 /* sizes up to 2^48 units of ALIGN bytes */
#define KVDS_ALLOC_NONE UINT32_MAX

struct kvds_alloc_node; /* private */

struct kvds_alloc {
  uint64_t base;     /* first offset managed */
  uint64_t capacity; /* bytes managed (multiple of ALIGN) */
  uint64_t used;     /* bytes in allocated extents */
  uint64_t n_alloc;  /* live allocations */
  uint64_t n_free_extents;
  uint64_t fl_bitmap;                    /* level has a non-empty bin */
  uint32_t sl_bitmap[KVDS_ALLOC_LEVELS]; /* bins of a level non-empty */
  uint32_t bins[KVDS_ALLOC_LEVELS][KVDS_ALLOC_SUBBINS]; /* free list heads */
  struct kvds_alloc_node *nodes; /* node storage, grows */
  uint32_t n_nodes, cap_nodes;
  uint32_t free_nodes; /* head of recycled node list */
};

struct kvds_alloc_stats {
  uint64_t capacity;
  uint64_t used;
  uint64_t free;
  uint64_t largest_free; /* largest contiguous free extent */
  uint64_t allocations;
  uint64_t free_extents;
  /* 1 - largest_free/free, in parts per million (0 when free == 0). */
  uint64_t fragmentation_ppm;
};

/* Manages [base, base + capacity) (capacity rounded down to ALIGN).
 * Returns 0 or -ENOMEM / -EINVAL (capacity < ALIGN). */
int kvds_alloc_init(struct kvds_alloc *a, uint64_t base, uint64_t capacity);
/* Frees the metadata. Safe on a zeroed struct. */
void kvds_alloc_fini(struct kvds_alloc *a);

/*
 * Allocates `size` bytes (> 0; rounded up to ALIGN). On success stores the
 * extent's offset in *off and an opaque handle for kvds_alloc_free in *h and
 * returns 0. Returns KVDS_E_NOSPACE when no free extent fits, KVDS_E_INVAL
 * for size 0 or larger than capacity, -ENOMEM if metadata cannot grow.
 */
int kvds_alloc_alloc(struct kvds_alloc *a, uint64_t size, uint64_t *off,
                     uint32_t *h);

/* Frees the extent named by handle h (from kvds_alloc_alloc), coalescing it
 * with free neighbours. A handle must be freed exactly once. */
void kvds_alloc_free(struct kvds_alloc *a, uint32_t h);

/* Size actually reserved for a request of `size` bytes. */
static inline uint64_t kvds_alloc_rounded(uint64_t size) {
  return (size + KVDS_ALLOC_ALIGN - 1) & ~(uint64_t)(KVDS_ALLOC_ALIGN - 1);
}

/* Fills *st. O(number of extents in the largest non-empty bin). */
void kvds_alloc_stats(const struct kvds_alloc *a, struct kvds_alloc_stats *st);

/* Consistency check for tests: walks every extent, returns 0 if the address
 * list, bins, bitmaps and counters agree, else -1. O(extents). */
int kvds_alloc_check(const struct kvds_alloc *a);

#endif
