/*
 * test_ucx.c — one-sided reads over UCX (src/net/ucx.h) between two pools,
 * over each of UCX's transports this machine has without RDMA hardware
 * (tcp; shared memory offered too): in one process, and from a child process
 * that is killed with SIGKILL while it is being read (the read fails by
 * its deadline, nothing hangs, the endpoint stays broken).
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "kvds/kvds.h"
#include "net/ucx.h"

#define POOL (8u << 20)

/* UCX 1.13's shared-memory transports (posix, sysv, cma) cannot report a
 * dead peer, which kvds asks of every endpoint (a worker must outlive its
 * peers): offered "sm" as well, UCX still reads over tcp here (the lanes
 * are printed). RDMA's rc/dc/ud verbs do report it. */
static const char *tls_list[] = {"tcp", "sm,tcp"};
static char self_exe[4096];

static uint8_t *pool_new(size_t len, uint8_t seed) {
  uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  assert_true(p != MAP_FAILED);
  for (size_t i = 0; i < len; i++)
    p[i] = (uint8_t)(i * 131 + seed + (i >> 12));
  return p;
}

static struct kvds_ucx *open_or_fail(void *base, size_t len) {
  struct kvds_ucx *u = NULL;
  char err[256] = "";
  int rc = kvds_ucx_open(base, len, &u, err, sizeof err);
  if (rc)
    fail_msg("kvds_ucx_open over UCX_TLS=%s: %s (%s)", getenv("UCX_TLS"), err,
             kvds_strerror(rc));
  return u;
}

static void reads_land(void **state) {
  (void)state;
  for (size_t t = 0; t < sizeof tls_list / sizeof *tls_list; t++) {
    setenv("UCX_TLS", tls_list[t], 1);
    uint8_t *a = pool_new(POOL, 7), *b = pool_new(POOL, 99);
    struct kvds_ucx *ua = open_or_fail(a, POOL), *ub = open_or_fail(b, POOL);
    assert_string_equal(kvds_ucx_tls(ua), tls_list[t]);
    const void *blob;
    size_t blen;
    kvds_ucx_info(ua, &blob, &blen);
    struct kvds_ucx_ep *ep;
    assert_int_equal(kvds_ucx_ep_open(ub, blob, blen, &ep), 0);
    assert_true(kvds_ucx_ep_ok(ep));
    /* ranges of every size class, into b's pool and into plain memory */
    static const uint64_t sizes[] = {1, 7, 4096, 65537, 1u << 20, 3u << 20};
    uint8_t *plain = malloc(3u << 20);
    assert_non_null(plain);
    uint64_t at = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
      uint64_t roff = (at * 7919) % (POOL - sizes[i]);
      struct kvds_ucx_read rd[2] = {{roff, sizes[i], b + at},
                                    {POOL - sizes[i], sizes[i], plain}};
      assert_int_equal(kvds_ucx_read(ep, rd, 2, kvds_now_us() + 10000000), 0);
      assert_memory_equal(b + at, a + roff, sizes[i]);
      assert_memory_equal(plain, a + POOL - sizes[i], sizes[i]);
      at += sizes[i];
    }
    char lanes[256];
    kvds_ucx_ep_lanes(ep, lanes, sizeof lanes);
    printf("UCX_TLS=%s: lanes %s\n", tls_list[t], lanes);
    assert_non_null(strstr(lanes, "tcp/"));
    /* outside a's pool: refused, nothing read, and the endpoint broken */
    struct kvds_ucx_read bad = {POOL - 10, 11, b};
    assert_int_equal(kvds_ucx_read(ep, &bad, 1, kvds_now_us() + 1000000),
                     KVDS_E_RANGE);
    kvds_ucx_ep_unref(ep);
    kvds_ucx_close(ub);
    kvds_ucx_close(ua);
    free(plain);
    munmap(a, POOL);
    munmap(b, POOL);
  }
}

static void blobs_are_checked(void **state) {
  (void)state;
  setenv("UCX_TLS", "tcp", 1);
  uint8_t *a = pool_new(POOL, 1);
  struct kvds_ucx *u = open_or_fail(a, POOL);
  const void *blob;
  size_t blen;
  kvds_ucx_info(u, &blob, &blen);
  uint8_t *copy = malloc(blen + 1);
  assert_non_null(copy);
  struct kvds_ucx_ep *ep = (void *)1;
  /* every truncation and a byte too many */
  for (size_t n = 0; n < 40 && n < blen; n++) {
    memcpy(copy, blob, n);
    assert_int_equal(kvds_ucx_ep_open(u, copy, n, &ep), KVDS_E_PROTO);
    assert_null(ep);
  }
  memcpy(copy, blob, blen);
  copy[blen] = 0;
  assert_int_equal(kvds_ucx_ep_open(u, copy, blen + 1, &ep), KVDS_E_PROTO);
  copy[0] ^= 1; /* magic */
  assert_int_equal(kvds_ucx_ep_open(u, copy, blen, &ep), KVDS_E_PROTO);
  copy[0] ^= 1;
  copy[24] ^= 0x40; /* address length */
  assert_int_equal(kvds_ucx_ep_open(u, copy, blen, &ep), KVDS_E_PROTO);
  free(copy);
  kvds_ucx_close(u);
  munmap(a, POOL);
}

/* The owner: a process of its own (this binary, exec'd: UCX does not
 * survive a fork) that opens UCX over a pool of `len` bytes in shared
 * memory (the bytes to expect: the parent maps them too), writes its blob
 * to fd 1 and waits to be killed. */
static int owner_main(const char *len_s) {
  size_t len = strtoull(len_s, NULL, 10);
  uint8_t *pool = pool_new(len, 5);
  struct kvds_ucx *u = NULL;
  char err[256];
  if (kvds_ucx_open(pool, len, &u, err, sizeof err)) {
    fprintf(stderr, "owner: %s\n", err);
    return 3;
  }
  const void *b;
  size_t n;
  kvds_ucx_info(u, &b, &n);
  uint32_t n32 = (uint32_t)n;
  if (write(1, &n32, 4) != 4 || write(1, b, n) != (ssize_t)n)
    return 4;
  for (;;)
    pause();
}

static pid_t owner_child(const char *tls, size_t len, uint8_t *blob,
                         size_t *blen) {
  int pp[2];
  assert_int_equal(pipe(pp), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    setenv("UCX_TLS", tls, 1);
    dup2(pp[1], 1);
    close(pp[0]);
    close(pp[1]);
    char lens[32];
    snprintf(lens, sizeof lens, "%zu", len);
    execl(self_exe, self_exe, "--owner", lens, (char *)NULL);
    _exit(127);
  }
  close(pp[1]);
  uint32_t n32 = 0;
  assert_int_equal(read(pp[0], &n32, 4), 4);
  assert_true(n32 <= KVDS_UCX_INFO_MAX);
  size_t got = 0;
  while (got < n32) {
    ssize_t r = read(pp[0], blob + got, n32 - got);
    assert_true(r > 0);
    got += (size_t)r;
  }
  close(pp[0]);
  *blen = n32;
  return pid;
}

static void owner_killed(void **state) {
  (void)state;
  static uint8_t blob[KVDS_UCX_INFO_MAX];
  for (size_t t = 0; t < sizeof tls_list / sizeof *tls_list; t++) {
    const char *tls = tls_list[t];
    size_t len = 64u << 20;
    size_t blen;
    pid_t pid = owner_child(tls, len, blob, &blen);
    uint8_t *pool = pool_new(len, 5); /* what the owner's pool holds */
    setenv("UCX_TLS", tls, 1);
    uint8_t *mine = pool_new(len, 0);
    struct kvds_ucx *u = open_or_fail(mine, len);
    struct kvds_ucx_ep *ep;
    assert_int_equal(kvds_ucx_ep_open(u, blob, blen, &ep), 0);
    struct kvds_ucx_read rd = {0, len, mine};
    assert_int_equal(kvds_ucx_read(ep, &rd, 1, kvds_now_us() + 30000000), 0);
    assert_memory_equal(mine, pool, len);
    /* the owner dies: reads end by their deadline (or at once), never
     * hang, and the endpoint is broken for good */
    kill(pid, SIGKILL);
    int wst;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    int rc = 0;
    uint64_t t0 = kvds_now_us();
    for (int i = 0; i < 50 && rc == 0; i++)
      rc = kvds_ucx_read(ep, &rd, 1, kvds_now_us() + 2000000);
    assert_true(rc == KVDS_E_PEER || rc == KVDS_E_TIMEOUT);
    assert_true(kvds_now_us() - t0 < 60000000);
    assert_false(kvds_ucx_ep_ok(ep));
    assert_int_equal(kvds_ucx_read(ep, &rd, 1, kvds_now_us() + 2000000),
                     KVDS_E_PEER);
    kvds_ucx_ep_unref(ep);
    kvds_ucx_close(u);
    munmap(mine, len);
    munmap(pool, len);
  }
}

int main(int argc, char **argv) {
  /* loopback only: UCX's tcp transport would listen on every interface,
   * on ports of the ephemeral range, where other tests pick theirs */
  setenv("UCX_NET_DEVICES", "lo", 1);
  setenv("UCX_TCP_PORT_RANGE", "20000-29999", 1);
  if (argc == 3 && !strcmp(argv[1], "--owner"))
    return owner_main(argv[2]);
  ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
  if (n <= 0)
    return 1;
  self_exe[n] = 0;
  if (!kvds_ucx_built()) {
    printf("test_ucx: built without UCX (libucx-dev): nothing to test\n");
    return 0;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(reads_land),
      cmocka_unit_test(blobs_are_checked),
      cmocka_unit_test(owner_killed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
