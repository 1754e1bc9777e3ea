/*
 * pool.h — the shared-memory pool segment (leaf module).
 *
 * One memfd holds a header page followed by the data area. The header has a
 * magic and a version so that any process can map the fd and check what it
 * got. Everything inside the segment is addressed by offsets relative to the
 * start of the segment, never by pointers. The header is a plain struct in
 * host byte order, unlike the wire format: a pool fd only passes between
 * processes of one host (over the worker's Unix socket), which share it.
 */
#ifndef KVDS_POOL_H
#define KVDS_POOL_H

#include <stddef.h>
#include <stdint.h>

#define KVDS_POOL_MAGIC 0x4c4f4f5053445650ull /* "PVDSPOOL" */
#define KVDS_POOL_VERSION 1
/* Bytes reserved at the start of the segment for the header. */
#define KVDS_POOL_HDR_SIZE 4096u

/* Lives at offset 0 of the segment. */
struct kvds_pool_hdr {
  uint64_t magic;
  uint32_t version;
  uint32_t flags;       /* KVDS_POOL_F_* */
  uint64_t total_size;  /* bytes of the whole segment */
  uint64_t data_offset; /* first byte usable for objects */
  uint64_t data_size;   /* bytes usable for objects */
  uint64_t owner_pid;
};

#define KVDS_POOL_F_HUGE 0x1u

struct kvds_pool {
  int fd;        /* memfd; owned */
  uint8_t *base; /* mapping of the whole segment */
  uint64_t total_size;
  uint64_t data_offset;
  uint64_t data_size;
  int huge; /* 1 if backed by huge pages */
};

enum kvds_pool_huge {
  KVDS_POOL_HUGE_OFF = 0, /* normal pages */
  KVDS_POOL_HUGE_TRY = 1, /* huge pages if available, else normal */
  KVDS_POOL_HUGE_ON = 2   /* huge pages or fail */
};

/*
 * Creates a pool with `data_size` usable bytes (rounded up to the page size)
 * in a new memfd, maps it shared, pre-faults every page (so the data path
 * never page-faults) and writes the header. `name` labels the memfd.
 * Returns 0 and fills *pool, or -errno (-ENOMEM when the memory cannot be
 * reserved, -EINVAL for a zero size).
 */
int kvds_pool_create(struct kvds_pool *pool, const char *name,
                     uint64_t data_size, enum kvds_pool_huge huge);

/*
 * Maps an existing pool fd (received from a worker). Checks magic, version
 * and sizes against the fd's real size; `fd` stays owned by the caller on
 * failure and by the pool on success. With `prefault` every page is mapped
 * writable now (no page faults on the data path later; costs ~70 ms per GiB
 * once), else pages fault in on first use. Returns 0, KVDS_E_VERSION,
 * KVDS_E_PROTO (bad header) or -errno.
 */
int kvds_pool_attach(struct kvds_pool *pool, int fd, int prefault);

/* Unmaps and closes. Safe on a zeroed struct. */
void kvds_pool_destroy(struct kvds_pool *pool);

/* Pointer for an offset; the caller has checked off/len against the pool. */
static inline void *kvds_pool_ptr(const struct kvds_pool *pool, uint64_t off) {
  return pool->base + off;
}

/* 1 if [off, off+len) lies within the data area. */
static inline int kvds_pool_contains(const struct kvds_pool *pool, uint64_t off,
                                     uint64_t len) {
  return off >= pool->data_offset && len <= pool->total_size &&
         off <= pool->total_size - len;
}

#endif
