/*
 * pool.c — the shared-memory pool segment (see pool.h).
 *
 * The segment is a sealed memfd: the creator fixes its size with
 * F_SEAL_SHRINK | F_SEAL_GROW so that no process holding the fd (clients
 * receive it) can truncate it under another's mapping and turn every later
 * access into SIGBUS.
 */
#include "pool/pool.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvds/kvds.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

#define POOL_DEFAULT_NAME "kvds-pool"
/* memfd_create() rejects names longer than 249 bytes. */
#define POOL_NAME_MAX 249

_Static_assert(sizeof(struct kvds_pool_hdr) <= KVDS_POOL_HDR_SIZE,
               "header fits in its reserved bytes");

/* Memory that cannot be reserved is reported as -ENOMEM whichever way the
 * kernel words it (shmem and hugetlbfs say ENOSPC). */
static int err_nomem(int e) {
  return e == ENOSPC ? -ENOMEM : -e;
}

/*
 * Maps every page of a fresh segment writable so that the data path never
 * faults. MAP_POPULATE only read-faults a shared mapping: on fresh shmem that
 * was measured to leave the first write to each page ten times slower (0.1 s
 * per GiB, paid later on the data path). MADV_POPULATE_WRITE installs
 * writable, dirty entries and reports failure; after fallocate it also
 * measured fastest (about 0.33 s per GiB in all, 0.43 s with MAP_POPULATE).
 */
static int prefault(uint8_t *p, uint64_t len, uint64_t page) {
  volatile uint8_t *v = p;

  if (madvise(p, (size_t)len, MADV_POPULATE_WRITE) == 0)
    return 0;
  if (errno != EINVAL)
    return errno == EFAULT ? -ENOMEM : err_nomem(errno);
  /* Kernels before 5.14: write-fault each page by hand. The segment is
   * still all zeroes, so storing zero changes nothing. */
  for (uint64_t i = 0; i < len; i += page)
    v[i] = 0;
  return 0;
}

/* One attempt at a pool with the given page kind; fills *p on success. */
static int pool_make(struct kvds_pool *p, const char *name, uint64_t data_size,
                     int huge) {
  char label[POOL_NAME_MAX + 1];
  unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  struct kvds_pool_hdr *hdr;
  struct stat st;
  uint64_t page, total;
  void *base = MAP_FAILED;
  size_t len;
  int fd, rc = 0;

  if (!name)
    name = POOL_DEFAULT_NAME;
  len = strnlen(name, POOL_NAME_MAX);
  memcpy(label, name, len);
  label[len] = '\0';
  if (huge)
    flags |= MFD_HUGETLB;
  fd = memfd_create(label, flags);
  if (fd < 0)
    return -errno;

  /* hugetlbfs reports its page size as the block size; a size that is not a
   * multiple of it cannot be mapped. */
  if (huge) {
    if (fstat(fd, &st) < 0) {
      rc = -errno;
      goto out;
    }
    page = (uint64_t)st.st_blksize;
  } else {
    long ps = sysconf(_SC_PAGESIZE);
    page = ps > 0 ? (uint64_t)ps : 4096u;
  }
  if (page == 0 || (page & (page - 1)) != 0 ||
      data_size > (uint64_t)INT64_MAX - KVDS_POOL_HDR_SIZE - page) {
    rc = -EINVAL;
    goto out;
  }
  total = (KVDS_POOL_HDR_SIZE + data_size + page - 1) & ~(page - 1);
  if (total > SIZE_MAX) {
    rc = -ENOMEM;
    goto out;
  }

  if (ftruncate(fd, (off_t)total) < 0) {
    rc = err_nomem(errno);
    goto out;
  }
  /* fallocate reserves every page up front and fails cleanly (ENOSPC) when
   * memory or huge pages are short, before anything is mapped. */
  if (fallocate(fd, 0, 0, (off_t)total) < 0 && errno != EOPNOTSUPP) {
    rc = err_nomem(errno);
    goto out;
  }
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
    rc = -errno;
    goto out;
  }
  base = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    rc = err_nomem(errno);
    goto out;
  }
  rc = prefault(base, total, page);
  if (rc < 0)
    goto out;

  hdr = base;
  hdr->magic = KVDS_POOL_MAGIC;
  hdr->version = KVDS_POOL_VERSION;
  hdr->flags = huge ? KVDS_POOL_F_HUGE : 0;
  hdr->total_size = total;
  hdr->data_offset = KVDS_POOL_HDR_SIZE;
  hdr->data_size = total - KVDS_POOL_HDR_SIZE;
  hdr->owner_pid = (uint64_t)getpid();

  p->fd = fd;
  p->base = base;
  p->total_size = total;
  p->data_offset = hdr->data_offset;
  p->data_size = hdr->data_size;
  p->huge = huge;
out:
  if (rc < 0) {
    if (base != MAP_FAILED)
      munmap(base, (size_t)total);
    close(fd);
  }
  return rc;
}

int kvds_pool_create(struct kvds_pool *pool, const char *name,
                     uint64_t data_size, enum kvds_pool_huge huge) {
  struct kvds_pool tmp;
  int rc;

  if (data_size == 0)
    return -EINVAL;
  if (huge == KVDS_POOL_HUGE_ON || huge == KVDS_POOL_HUGE_TRY) {
    rc = pool_make(&tmp, name, data_size, 1);
    if (rc == 0 || huge == KVDS_POOL_HUGE_ON)
      goto out;
  }
  rc = pool_make(&tmp, name, data_size, 0);
out:
  if (rc == 0)
    *pool = tmp;
  return rc;
}

int kvds_pool_attach(struct kvds_pool *pool, int fd, int prefault) {
  struct kvds_pool_hdr hdr;
  struct stat st;
  void *base;
  ssize_t n;

  if (fd < 0)
    return -EBADF;
  if (fstat(fd, &st) < 0)
    return -errno;
  if (!S_ISREG(st.st_mode) || st.st_size < (off_t)KVDS_POOL_HDR_SIZE)
    return KVDS_E_PROTO;
  /* Read, not mapped: a hugetlbfs fd can only be mapped in whole huge
   * pages, and nothing is mapped until the header has been validated. */
  n = pread(fd, &hdr, sizeof(hdr), 0);
  if (n < 0)
    return -errno;
  if ((size_t)n != sizeof(hdr) || hdr.magic != KVDS_POOL_MAGIC)
    return KVDS_E_PROTO;
  if (hdr.version != KVDS_POOL_VERSION)
    return KVDS_E_VERSION;
  if ((hdr.flags & ~KVDS_POOL_F_HUGE) != 0 ||
      hdr.total_size != (uint64_t)st.st_size ||
      hdr.data_offset < KVDS_POOL_HDR_SIZE ||
      hdr.data_offset > hdr.total_size ||
      hdr.data_size > hdr.total_size - hdr.data_offset)
    return KVDS_E_PROTO;
  if (hdr.total_size > SIZE_MAX)
    return -ENOMEM;

  base = mmap(NULL, (size_t)hdr.total_size, PROT_READ | PROT_WRITE, MAP_SHARED,
              fd, 0);
  if (base == MAP_FAILED)
    return -errno;
  /* The creator allocated every page; map them all writable now. MAP_POPULATE
   * would install read-only entries on a shared mapping, and the first write
   * to each page would then fault on the data path (measured: ~150k faults
   * per GiB written, half the put bandwidth). If the kernel cannot populate,
   * pages fault in lazily — slower, still correct. */
  if (prefault &&
      madvise(base, (size_t)hdr.total_size, MADV_POPULATE_WRITE) != 0 &&
      errno != EINVAL) {
    int e = errno;
    munmap(base, (size_t)hdr.total_size);
    return e == EFAULT ? -ENOMEM : -e;
  }
  /* The sizes come from our validated copy, not from the live header the
   * other process could still change. */
  pool->fd = fd;
  pool->base = base;
  pool->total_size = hdr.total_size;
  pool->data_offset = hdr.data_offset;
  pool->data_size = hdr.data_size;
  pool->huge = (hdr.flags & KVDS_POOL_F_HUGE) != 0;
  return 0;
}

void kvds_pool_destroy(struct kvds_pool *pool) {
  if (!pool)
    return;
  /* A zeroed struct has fd 0 (someone's stdin): only a mapped pool owns
   * its fd. */
  if (pool->base) {
    munmap(pool->base, (size_t)pool->total_size);
    close(pool->fd);
  }
  memset(pool, 0, sizeof(*pool));
  pool->fd = -1;
}
