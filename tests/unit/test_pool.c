/* test_pool.c — unit tests for the shared-memory pool (src/pool/pool.c). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvds/kvds.h"
#include "pool/pool.h"

static struct kvds_pool_hdr *hdr_of(const struct kvds_pool *p) {
  return (struct kvds_pool_hdr *)p->base;
}

static int fd_is_open(int fd) {
  return fcntl(fd, F_GETFD) != -1;
}

/* An unsealed memfd of `size` bytes holding `hdr` at offset 0. */
static int fake_fd(const struct kvds_pool_hdr *hdr, uint64_t size) {
  int fd = memfd_create("kvds-test-fake", MFD_CLOEXEC);

  assert_true(fd >= 0);
  assert_int_equal(ftruncate(fd, (off_t)size), 0);
  if (size >= sizeof(*hdr))
    assert_int_equal(pwrite(fd, hdr, sizeof(*hdr), 0), (ssize_t)sizeof(*hdr));
  return fd;
}

/* A header as kvds_pool_create would write it for a 1 MiB data area. */
static struct kvds_pool_hdr good_hdr(void) {
  struct kvds_pool_hdr h;

  memset(&h, 0, sizeof(h));
  h.magic = KVDS_POOL_MAGIC;
  h.version = KVDS_POOL_VERSION;
  h.total_size = KVDS_POOL_HDR_SIZE + (1u << 20);
  h.data_offset = KVDS_POOL_HDR_SIZE;
  h.data_size = 1u << 20;
  h.owner_pid = 1;
  return h;
}

/* Attaching `fd` must fail with `want` and leave the fd open and *pool
 * untouched. Closes fd. */
static void attach_fails(int fd, int want) {
  struct kvds_pool p;
  struct kvds_pool sentinel;

  memset(&p, 0x5a, sizeof(p));
  memcpy(&sentinel, &p, sizeof(p));
  assert_int_equal(kvds_pool_attach(&p, fd, 1), want);
  assert_memory_equal(&p, &sentinel, sizeof(p));
  assert_true(fd_is_open(fd));
  close(fd);
}

static void test_create_header(void **state) {
  struct kvds_pool p;
  struct kvds_pool_hdr *h;
  struct stat st;
  long page = sysconf(_SC_PAGESIZE);

  assert_int_equal(
      kvds_pool_create(&p, "kvds-test", 1u << 20, KVDS_POOL_HUGE_OFF), 0);
  assert_true(p.fd >= 0);
  assert_non_null(p.base);
  assert_int_equal(p.huge, 0);
  h = hdr_of(&p);
  assert_int_equal(h->magic, KVDS_POOL_MAGIC);
  assert_int_equal(h->version, KVDS_POOL_VERSION);
  assert_int_equal(h->flags, 0);
  assert_int_equal(h->total_size, p.total_size);
  assert_int_equal(h->data_offset, KVDS_POOL_HDR_SIZE);
  assert_int_equal(h->data_offset, p.data_offset);
  assert_int_equal(h->data_size, p.data_size);
  assert_int_equal(h->owner_pid, (uint64_t)getpid());
  assert_true(p.data_size >= 1u << 20);
  assert_int_equal(p.data_offset + p.data_size, p.total_size);
  assert_int_equal(p.total_size % (uint64_t)page, 0);

  assert_int_equal(fstat(p.fd, &st), 0);
  assert_int_equal((uint64_t)st.st_size, p.total_size);
  assert_true(fcntl(p.fd, F_GETFD) & FD_CLOEXEC);

  /* The data area starts zeroed and is writable end to end. */
  {
    uint8_t *d = kvds_pool_ptr(&p, p.data_offset);
    assert_int_equal(d[0], 0);
    assert_int_equal(d[p.data_size - 1], 0);
    d[0] = 1;
    d[p.data_size - 1] = 2;
  }
  assert_true(kvds_pool_contains(&p, p.data_offset, p.data_size));
  assert_true(kvds_pool_contains(&p, p.total_size, 0));
  assert_false(kvds_pool_contains(&p, p.data_offset - 1, 1));
  assert_false(kvds_pool_contains(&p, p.data_offset, p.data_size + 1));
  assert_false(kvds_pool_contains(&p, UINT64_MAX, 2));
  assert_false(kvds_pool_contains(&p, p.data_offset, UINT64_MAX));
  kvds_pool_destroy(&p);
  assert_null(p.base);
}

static void test_create_sizes(void **state) {
  struct kvds_pool p, sentinel;
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  char name[1000];

  /* Rounded up to whole pages. */
  assert_int_equal(kvds_pool_create(&p, NULL, 1, KVDS_POOL_HUGE_OFF), 0);
  assert_int_equal(p.total_size % page, 0);
  assert_true(p.data_size >= 1 && p.data_size < page + KVDS_POOL_HDR_SIZE);
  assert_int_equal(p.data_size, p.total_size - KVDS_POOL_HDR_SIZE);
  kvds_pool_destroy(&p);

  /* A name too long for memfd_create is cut, not an error. */
  memset(name, 'n', sizeof(name) - 1);
  name[sizeof(name) - 1] = '\0';
  assert_int_equal(kvds_pool_create(&p, name, 4096, KVDS_POOL_HUGE_OFF), 0);
  kvds_pool_destroy(&p);

  /* Errors write nothing. */
  memset(&p, 0x5a, sizeof(p));
  memcpy(&sentinel, &p, sizeof(p));
  assert_int_equal(kvds_pool_create(&p, "z", 0, KVDS_POOL_HUGE_OFF), -EINVAL);
  assert_int_equal(kvds_pool_create(&p, "z", UINT64_MAX, KVDS_POOL_HUGE_OFF),
                   -EINVAL);
  assert_memory_equal(&p, &sentinel, sizeof(p));
}

/* Clients get the fd: they must not be able to resize the segment. */
static void test_sealed(void **state) {
  struct kvds_pool p;

  assert_int_equal(kvds_pool_create(&p, "seal", 1u << 16, KVDS_POOL_HUGE_OFF),
                   0);
  assert_int_equal(ftruncate(p.fd, 0), -1);
  assert_int_equal(errno, EPERM);
  assert_int_equal(ftruncate(p.fd, (off_t)p.total_size * 2), -1);
  assert_int_equal(errno, EPERM);
  kvds_pool_destroy(&p);
}

static void test_attach_shared(void **state) {
  struct kvds_pool a, b;
  uint8_t *pa, *pb;
  int fd;

  assert_int_equal(kvds_pool_create(&a, "share", 1u << 20, KVDS_POOL_HUGE_OFF),
                   0);
  fd = dup(a.fd);
  assert_true(fd >= 0);
  assert_int_equal(kvds_pool_attach(&b, fd, 1), 0);
  assert_int_equal(b.fd, fd);
  assert_true(b.base != a.base);
  assert_int_equal(b.total_size, a.total_size);
  assert_int_equal(b.data_offset, a.data_offset);
  assert_int_equal(b.data_size, a.data_size);
  assert_int_equal(b.huge, a.huge);

  pa = kvds_pool_ptr(&a, a.data_offset);
  pb = kvds_pool_ptr(&b, b.data_offset);
  memcpy(pa + 100, "hello", 6);
  assert_string_equal((char *)pb + 100, "hello");
  pb[a.data_size - 1] = 0xab;
  assert_int_equal(pa[a.data_size - 1], 0xab);

  /* The attached pool owns its fd: destroy closes it, the creator lives on. */
  kvds_pool_destroy(&b);
  assert_false(fd_is_open(fd));
  assert_int_equal(pa[a.data_size - 1], 0xab);
  kvds_pool_destroy(&a);
}

static void test_attach_rejects(void **state) {
  struct kvds_pool a;
  struct kvds_pool_hdr h;
  int pfd[2];

  assert_int_equal(kvds_pool_create(&a, "rej", 1u << 20, KVDS_POOL_HUGE_OFF),
                   0);
  /* Corrupted magic, then a version from the future, on the real segment. */
  hdr_of(&a)->magic ^= 1;
  attach_fails(dup(a.fd), KVDS_E_PROTO);
  hdr_of(&a)->magic ^= 1;
  hdr_of(&a)->version = KVDS_POOL_VERSION + 1;
  attach_fails(dup(a.fd), KVDS_E_VERSION);
  hdr_of(&a)->version = KVDS_POOL_VERSION;
  hdr_of(&a)->data_size = a.total_size;
  attach_fails(dup(a.fd), KVDS_E_PROTO);
  hdr_of(&a)->data_size = a.data_size;
  {
    struct kvds_pool b;
    int fd = dup(a.fd);
    assert_int_equal(kvds_pool_attach(&b, fd, 1), 0);
    kvds_pool_destroy(&b);
  }
  kvds_pool_destroy(&a);

  /* A valid header on an fd that was truncated below total_size. */
  h = good_hdr();
  attach_fails(fake_fd(&h, h.total_size - 4096), KVDS_E_PROTO);
  /* ... or grown past it. */
  attach_fails(fake_fd(&h, h.total_size + 4096), KVDS_E_PROTO);
  /* Too small to hold a header at all. */
  attach_fails(fake_fd(&h, 0), KVDS_E_PROTO);
  attach_fails(fake_fd(&h, 16), KVDS_E_PROTO);
  /* Inconsistent layout fields. */
  h = good_hdr();
  h.data_offset = 8;
  attach_fails(fake_fd(&h, h.total_size), KVDS_E_PROTO);
  h = good_hdr();
  h.data_offset = h.total_size + 1;
  attach_fails(fake_fd(&h, h.total_size), KVDS_E_PROTO);
  h = good_hdr();
  h.data_size = UINT64_MAX;
  attach_fails(fake_fd(&h, h.total_size), KVDS_E_PROTO);
  h = good_hdr();
  h.flags = 0x80;
  attach_fails(fake_fd(&h, h.total_size), KVDS_E_PROTO);
  h = good_hdr();
  h.version = 0;
  attach_fails(fake_fd(&h, h.total_size), KVDS_E_VERSION);
  /* Not a file. */
  assert_int_equal(pipe(pfd), 0);
  close(pfd[1]);
  attach_fails(pfd[0], KVDS_E_PROTO);
  {
    struct kvds_pool b;
    assert_int_equal(kvds_pool_attach(&b, -1, 1), -EBADF);
  }

  /* The hand-made good header is accepted (the fake is unsealed). */
  {
    struct kvds_pool b;
    int fd;
    h = good_hdr();
    fd = fake_fd(&h, h.total_size);
    assert_int_equal(kvds_pool_attach(&b, fd, 1), 0);
    assert_int_equal(b.data_size, h.data_size);
    kvds_pool_destroy(&b);
  }
}

/* Writes one byte per page without instrumentation: ASan would otherwise
 * fault in shadow pages and blur the count. */
__attribute__((no_sanitize_address, noinline)) static void
touch_pages(volatile uint8_t *p, uint64_t len, uint64_t page) {
  for (uint64_t i = 0; i < len; i += page)
    p[i] = (uint8_t)i;
}

static long minor_faults(void) {
  struct rusage ru;

  assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
  return ru.ru_minflt;
}

/* The data path must never page-fault: after create, writing every page of
 * the pool costs (almost) no minor faults. */
static void test_prefaulted(void **state) {
  const uint64_t size = 64u << 20;
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t pages = size / page;
  struct kvds_pool p, b;
  long before, faults;
  int fd;

  assert_int_equal(kvds_pool_create(&p, "fault", size, KVDS_POOL_HUGE_OFF), 0);
  before = minor_faults();
  touch_pages(kvds_pool_ptr(&p, p.data_offset), p.data_size, page);
  faults = minor_faults() - before;
  assert_true((uint64_t)faults < pages / 64);

  /* The same holds for a process that attaches. */
  fd = dup(p.fd);
  assert_int_equal(kvds_pool_attach(&b, fd, 1), 0);
  before = minor_faults();
  touch_pages(kvds_pool_ptr(&b, b.data_offset), b.data_size, page);
  faults = minor_faults() - before;
  assert_true((uint64_t)faults < pages / 64);
  kvds_pool_destroy(&b);
  kvds_pool_destroy(&p);
}

/* Free huge pages of the default size, from /proc/meminfo (-1 if unknown). */
static long free_huge_pages(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  char line[256];
  long n = -1;

  if (!f)
    return -1;
  while (fgets(line, sizeof(line), f)) {
    if (strncmp(line, "HugePages_Free:", 15) == 0) {
      n = strtol(line + 15, NULL, 10);
      break;
    }
  }
  fclose(f);
  return n;
}

static void test_huge(void **state) {
  struct kvds_pool p;
  long nfree = free_huge_pages();
  int rc;

  /* TRY always gets a pool, of whichever kind, and says which. */
  assert_int_equal(kvds_pool_create(&p, "huge", 1u << 20, KVDS_POOL_HUGE_TRY),
                   0);
  assert_int_equal(hdr_of(&p)->flags & KVDS_POOL_F_HUGE,
                   p.huge ? KVDS_POOL_F_HUGE : 0);
  if (nfree == 0)
    assert_int_equal(p.huge, 0);
  kvds_pool_destroy(&p);

  rc = kvds_pool_create(&p, "huge", 1u << 20, KVDS_POOL_HUGE_ON);
  if (nfree == 0) {
    /* No huge pages: ON refuses rather than silently using small ones. */
    assert_true(rc < 0);
  } else if (rc == 0) {
    assert_int_equal(p.huge, 1);
    assert_int_equal(hdr_of(&p)->flags, KVDS_POOL_F_HUGE);
    kvds_pool_destroy(&p);
  }
}

static void test_destroy_zeroed(void **state) {
  struct kvds_pool p;
  int fd0_open = fd_is_open(0);

  memset(&p, 0, sizeof(p));
  kvds_pool_destroy(&p);
  kvds_pool_destroy(&p);
  kvds_pool_destroy(NULL);
  /* fd 0 of a zeroed struct is not the pool's to close. */
  assert_int_equal(fd_is_open(0), fd0_open);
  assert_null(p.base);

  assert_int_equal(kvds_pool_create(&p, "twice", 4096, KVDS_POOL_HUGE_OFF), 0);
  kvds_pool_destroy(&p);
  kvds_pool_destroy(&p);
  assert_int_equal(fd_is_open(0), fd0_open);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_create_header),
      cmocka_unit_test(test_create_sizes),
      cmocka_unit_test(test_sealed),
      cmocka_unit_test(test_attach_shared),
      cmocka_unit_test(test_attach_rejects),
      cmocka_unit_test(test_prefaulted),
      cmocka_unit_test(test_huge),
      cmocka_unit_test(test_destroy_zeroed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
