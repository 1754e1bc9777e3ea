/* test_common.c — unit tests for error codes and the helpers in
 * src/common (errors.c, util.c, clock.c, addr.c, array.c, hash.c,
 * copy.c). */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cmocka.h>
#include <xxhash.h>

#include "common/addr.h"
#include "common/array.h"
#include "common/clock.h"
#include "common/copy.h"
#include "common/hash.h"
#include "common/util.h"
#include "kvds/kvds.h"

/* The test fails chosen reallocs (tests/unit/store.cmake wraps realloc). */
void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n);

/* Reallocs that succeed before one fails; -1 = never fail. */
static long realloc_budget = -1;

void *__wrap_realloc(void *p, size_t n) {
  if (realloc_budget == 0)
    return NULL;
  if (realloc_budget > 0)
    realloc_budget--;
  return __real_realloc(p, n);
}

#define KiB (1024ull)
#define MiB (1024ull * KiB)
#define GiB (1024ull * MiB)
#define TiB (1024ull * GiB)

/* ---- errors ------------------------------------------------------------- */

struct err_entry {
  int code;
  const char *name;
  const char *msg;
};

static const struct err_entry all_errors[] = {
#define E(name, val, msg) {KVDS_E_##name, "KVDS_E_" #name, msg},
    KVDS_ERRNO_MAP(E)
#undef E
};
#define N_ERRORS (sizeof all_errors / sizeof all_errors[0])

static void test_strerror_codes(void **state) {
  (void)state;
  assert_true(N_ERRORS >= 20);
  for (size_t i = 0; i < N_ERRORS; i++) {
    const char *msg = kvds_strerror(all_errors[i].code);
    const char *name = kvds_err_name(all_errors[i].code);
    assert_non_null(msg);
    assert_non_null(name);
    assert_true(strlen(msg) > 0);
    assert_string_equal(msg, all_errors[i].msg);
    assert_string_equal(name, all_errors[i].name);
    assert_string_not_equal(msg, "unknown error");
    /* Library codes sit far from the errno range. */
    assert_true(all_errors[i].code <= -30001);
    for (size_t j = 0; j < i; j++) {
      assert_int_not_equal(all_errors[i].code, all_errors[j].code);
      assert_string_not_equal(name, kvds_err_name(all_errors[j].code));
      assert_string_not_equal(msg, kvds_strerror(all_errors[j].code));
    }
  }
  /* Spot-check the table against the public names. */
  assert_string_equal(kvds_err_name(KVDS_E_NOTFOUND), "KVDS_E_NOTFOUND");
  assert_string_equal(kvds_err_name(KVDS_E_ADDR), "KVDS_E_ADDR");
  assert_string_equal(kvds_strerror(KVDS_E_NOTFOUND), "key not found");
}

static void test_strerror_unknown(void **state) {
  (void)state;
  const int unknown[] = {-30000, KVDS_E_INTR - 1, -30100,  -29999,
                         -5000,  -4096,           1,       2,
                         42,     30001,           INT_MAX, INT_MIN};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    const char *msg = kvds_strerror(unknown[i]);
    const char *name = kvds_err_name(unknown[i]);
    assert_non_null(msg);
    assert_non_null(name);
    if (strcmp(msg, "unknown error") != 0)
      fail_msg("kvds_strerror(%d) = \"%s\"", unknown[i], msg);
    assert_string_equal(name, "UNKNOWN");
  }
  assert_string_equal(kvds_strerror(0), "success");
  assert_true(strlen(kvds_err_name(0)) > 0);
}

static void test_strerror_errno(void **state) {
  (void)state;
  const int codes[] = {ENOENT, ENOMEM, EINVAL, ECONNREFUSED, ETIMEDOUT, EPIPE};
  const char *names[] = {"ENOENT",       "ENOMEM",    "EINVAL",
                         "ECONNREFUSED", "ETIMEDOUT", "EPIPE"};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    assert_string_equal(kvds_strerror(-codes[i]), strerror(codes[i]));
    assert_string_equal(kvds_err_name(-codes[i]), names[i]);
  }
  assert_string_equal(kvds_strerror(-ENOENT), "No such file or directory");
}

/* ---- kvds_parse_size ---------------------------------------------------- */

static void size_ok(const char *s, uint64_t want) {
  uint64_t v = 0xdeadbeef;
  int rc = kvds_parse_size(s, &v);
  if (rc != 0)
    fail_msg("kvds_parse_size(\"%s\") = %s", s, kvds_err_name(rc));
  if (v != want)
    fail_msg("kvds_parse_size(\"%s\") gave %llu, expected %llu", s,
             (unsigned long long)v, (unsigned long long)want);
}

static void size_bad(const char *s) {
  uint64_t v = 0xdeadbeef;
  int rc = kvds_parse_size(s, &v);
  if (rc != KVDS_E_INVAL)
    fail_msg("kvds_parse_size(\"%s\") = %d (%llu), expected KVDS_E_INVAL", s,
             rc, (unsigned long long)v);
  assert_int_equal(v, 0xdeadbeef); /* untouched on error */
}

static void test_parse_size(void **state) {
  (void)state;
  size_ok("4GiB", 4 * GiB);
  size_ok("512MiB", 512 * MiB);
  size_ok("64KiB", 64 * KiB);
  size_ok("1G", GiB);
  size_ok("100", 100);
  size_ok("0", 0);
  size_ok("1.5GiB", 3 * GiB / 2);
  size_ok("2M", 2 * MiB);
  size_ok("3K", 3 * KiB);
  size_ok("1TiB", TiB);
  size_ok("100B", 100);
  size_ok("1GB", 1000000000ull);
  size_ok("64KB", 64000);
  size_ok("4294967296", 4294967296ull);

  size_bad("");
  size_bad("abc");
  size_bad("-1");
  size_bad("4XB");
  size_bad("GiB");
  size_bad(" 4GiB");
  size_bad("4 GiB");
  size_bad("4GiBx");
  size_bad("4GiB ");
  size_bad("1.5.5M");
  size_bad("99999999999TiB"); /* overflows 64 bits */
  assert_int_equal(kvds_parse_size(NULL, &(uint64_t){0}), KVDS_E_INVAL);
}

/* ---- kvds_split_hostport ------------------------------------------------ */

static void hp_ok(const char *addr, const char *host, uint16_t port) {
  char h[64];
  uint16_t p = 0;
  memset(h, 'x', sizeof h);
  int rc = kvds_split_hostport(addr, h, sizeof h, &p);
  if (rc != 0)
    fail_msg("kvds_split_hostport(\"%s\") = %s", addr, kvds_err_name(rc));
  assert_string_equal(h, host);
  assert_int_equal(p, port);
}

static void hp_bad(const char *addr) {
  char h[64];
  uint16_t p = 4321;
  memcpy(h, "untouched", 10);
  int rc = kvds_split_hostport(addr, h, sizeof h, &p);
  if (rc != KVDS_E_ADDR)
    fail_msg("kvds_split_hostport(\"%s\") = %d, expected KVDS_E_ADDR", addr,
             rc);
  assert_string_equal(h, "untouched");
  assert_int_equal(p, 4321);
}

static void test_split_hostport(void **state) {
  (void)state;
  hp_ok("127.0.0.1:8080", "127.0.0.1", 8080);
  hp_ok("localhost:1", "localhost", 1);
  hp_ok("example.com:65535", "example.com", 65535);
  hp_ok("[::1]:80", "::1", 80);
  hp_ok("[fe80::1%eth0]:9000", "fe80::1%eth0", 9000);
  hp_ok("tcp://127.0.0.1:7000", "127.0.0.1", 7000);
  hp_ok("tcp://[::1]:7001", "::1", 7001);
  hp_ok("tcp://host:2", "host", 2);

  hp_bad("127.0.0.1");       /* no port */
  hp_bad("127.0.0.1:");      /* empty port */
  hp_bad("tcp://127.0.0.1"); /* no port after the prefix */
  hp_bad("host:0");
  hp_bad("host:65536");
  hp_bad("host:99999999999999999999");
  hp_bad("host:-1");
  hp_bad("host:+80");
  hp_bad("host:80x");
  hp_bad("host: 80");
  hp_bad(":80"); /* empty host */
  hp_bad("tcp://:80");
  hp_bad("[::1]");
  hp_bad("[::1]80");
  hp_bad("[::1:80");
  hp_bad("[]:80");
  hp_bad("");
  assert_int_equal(kvds_split_hostport(NULL, (char[8]){0}, 8, &(uint16_t){0}),
                   KVDS_E_ADDR);
}

/* The host must fit in hcap - 1 bytes. */
static void test_split_hostport_hcap(void **state) {
  (void)state;
  char h[8];
  uint16_t p = 0;

  memset(h, 'x', sizeof h);
  assert_int_equal(kvds_split_hostport("abcdefg:1", h, sizeof h, &p), 0);
  assert_string_equal(h, "abcdefg");
  assert_int_equal(p, 1);
  p = 7;
  memcpy(h, "keep", 5);
  assert_int_equal(kvds_split_hostport("abcdefgh:1", h, sizeof h, &p),
                   KVDS_E_ADDR);
  assert_int_equal(kvds_split_hostport("[abcdefgh]:1", h, sizeof h, &p),
                   KVDS_E_ADDR);
  assert_string_equal(h, "keep");
  assert_int_equal(p, 7);
  assert_int_equal(kvds_split_hostport("[abcdefg]:2", h, sizeof h, &p), 0);
  assert_string_equal(h, "abcdefg");
  assert_int_equal(p, 2);
}

/* ---- kvds_parse_u64 / kvds_parse_ratio ---------------------------------- */

static void test_parse_u64(void **state) {
  (void)state;
  uint64_t v;

  assert_int_equal(kvds_parse_u64("0", &v), 0);
  assert_int_equal(v, 0);
  assert_int_equal(kvds_parse_u64("42", &v), 0);
  assert_int_equal(v, 42);
  assert_int_equal(kvds_parse_u64("007", &v), 0);
  assert_int_equal(v, 7);
  assert_int_equal(kvds_parse_u64("18446744073709551615", &v), 0);
  assert_int_equal(v, UINT64_MAX);

  const char *bad[] = {"",
                       "18446744073709551616",
                       "99999999999999999999999",
                       "-1",
                       "+1",
                       " 1",
                       "1 ",
                       "12a",
                       "0x10",
                       "1.0",
                       "abc"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    v = 12345;
    if (kvds_parse_u64(bad[i], &v) != KVDS_E_INVAL)
      fail_msg("kvds_parse_u64(\"%s\") accepted", bad[i]);
    assert_int_equal(v, 12345);
  }
  assert_int_equal(kvds_parse_u64(NULL, &v), KVDS_E_INVAL);
}

static void test_parse_ratio(void **state) {
  (void)state;
  double v;

  assert_int_equal(kvds_parse_ratio("0", &v), 0);
  assert_true(v == 0.0);
  assert_int_equal(kvds_parse_ratio("1", &v), 0);
  assert_true(v == 1.0);
  assert_int_equal(kvds_parse_ratio("1.0", &v), 0);
  assert_true(v == 1.0);
  assert_int_equal(kvds_parse_ratio("0.5", &v), 0);
  assert_true(v == 0.5);
  assert_int_equal(kvds_parse_ratio("0.95", &v), 0);
  assert_true(v == 0.95);

  const char *bad[] = {"",    "1.0001", "1.5",  "2",   "-0.1", "-1",
                       "abc", "0.5x",   "x0.5", "nan", "inf",  "0.5 "};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    v = 0.25;
    if (kvds_parse_ratio(bad[i], &v) != KVDS_E_INVAL)
      fail_msg("kvds_parse_ratio(\"%s\") accepted", bad[i]);
    assert_true(v == 0.25);
  }
  assert_int_equal(kvds_parse_ratio(NULL, &v), KVDS_E_INVAL);
}

/* ---- kvds_fmt_bytes ----------------------------------------------------- */

static void test_fmt_bytes(void **state) {
  (void)state;
  char buf[32];

  assert_ptr_equal(kvds_fmt_bytes(0, buf, sizeof buf), buf);
  assert_string_equal(buf, "0 B");
  assert_string_equal(kvds_fmt_bytes(1023, buf, sizeof buf), "1023 B");
  assert_string_equal(kvds_fmt_bytes(1024, buf, sizeof buf), "1.0 KiB");
  assert_string_equal(kvds_fmt_bytes(1536, buf, sizeof buf), "1.5 KiB");
  assert_string_equal(kvds_fmt_bytes(512 * MiB, buf, sizeof buf), "512.0 MiB");
  assert_string_equal(kvds_fmt_bytes(3 * GiB / 2, buf, sizeof buf), "1.5 GiB");
  assert_string_equal(kvds_fmt_bytes(TiB, buf, sizeof buf), "1.0 TiB");
  assert_string_equal(kvds_fmt_bytes(2048 * TiB, buf, sizeof buf),
                      "2048.0 TiB");
  /* A short buffer is truncated and terminated. */
  char small[4];
  memset(small, 'x', sizeof small);
  assert_ptr_equal(kvds_fmt_bytes(1536, small, sizeof small), small);
  assert_string_equal(small, "1.5");
}

/* ---- checksum ----------------------------------------------------------- */

static void test_checksum(void **state) {
  (void)state;
  const uint8_t a[] = {1, 2, 3, 0, 5};
  uint8_t b[sizeof a];

  memcpy(b, a, sizeof a);
  assert_int_equal(kvds_checksum(a, sizeof a), kvds_checksum(b, sizeof b));
  b[4] ^= 1;
  assert_int_not_equal(kvds_checksum(a, sizeof a), kvds_checksum(b, sizeof b));
  assert_int_not_equal(kvds_checksum(a, 4), kvds_checksum(a, 5));
  /* xxh3-64 of the empty input is a fixed, published value. */
  assert_int_equal(kvds_checksum(NULL, 0), 0x2d06800538d394c2ull);
}

/* kvds_checksum, the streaming hash (fed in pieces of every kind) and the
 * fused copy all give libxxhash's own XXH3_64bits() — whichever kernel
 * (AVX2 or not) this CPU runs — around the short/long (240 B), stripe
 * (64 B), block (1 KiB), copy-chunk and non-temporal (64 KiB) boundaries,
 * from unaligned sources into unaligned destinations. */
static void test_hash_is_xxh3(void **state) {
  (void)state;
  enum { MAX = 300 << 10 };
  uint8_t *src = malloc(MAX + 64), *dst = malloc(MAX + 64);
  assert_non_null(src);
  assert_non_null(dst);
  for (size_t i = 0; i < MAX + 64; i++)
    src[i] = (uint8_t)(i * 2654435761u >> 13);
  static const size_t lens[] = {0,     1,     3,     16,    17,     128,
                                129,   240,   241,   255,   256,    1023,
                                1024,  1025,  1088,  4095,  4096,   4097,
                                65535, 65536, 65537, 70001, 262144, MAX};
  static const size_t pieces[] = {1, 7, 64, 100, 4096, 65536};
  for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
    for (size_t shift = 0; shift < 3; shift++) {
      const uint8_t *p = src + shift * 13;
      size_t len = lens[l];
      uint64_t want = XXH3_64bits(p, len);
      assert_int_equal(kvds_checksum(p, len), want);
      for (size_t k = 0; k < sizeof pieces / sizeof pieces[0]; k++) {
        if (pieces[k] == 1 && len > 5000)
          continue; /* byte by byte: the short lengths say enough */
        struct kvds_hash h;
        kvds_hash_reset(&h);
        for (size_t off = 0; off < len; off += pieces[k])
          kvds_hash_update(&h, p + off,
                           len - off < pieces[k] ? len - off : pieces[k]);
        assert_int_equal(kvds_hash_digest(&h), want);
      }
      memset(dst, 0xee, MAX + 64);
      assert_int_equal(kvds_copy_hash(dst + shift * 5, p, len), want);
      assert_memory_equal(dst + shift * 5, p, len);
      assert_int_equal(dst[shift * 5 + len], 0xee);
    }
  }
  free(src);
  free(dst);
}

/* ---- gather ------------------------------------------------------------- */

/* kvds_gather copies segments in order and returns the checksum of the
 * result, for totals below and above the non-temporal threshold, with
 * unaligned destinations and empty or tiny segments among large ones. */
static void test_gather(void **state) {
  (void)state;
  enum { SRC = 600 << 10 };
  uint8_t *src = malloc(SRC), *dst = malloc(SRC + 64), *want = malloc(SRC);
  assert_non_null(src);
  assert_non_null(dst);
  assert_non_null(want);
  for (size_t i = 0; i < SRC; i++)
    src[i] = (uint8_t)(i * 131 + (i >> 9));
  static const size_t lens[][6] = {
      {0, 1, 15, 100, 0, 7},                /* tiny total: memcpy path */
      {40000, 0, 30000, 3, 70000, 129},     /* > 64 KiB total: streaming */
      {300001, 1, 127, 128, 65536, 100000}, /* segments straddling chunks */
  };
  for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
    for (size_t shift = 0; shift < 3; shift++) {
      struct kvds_iov segs[6];
      size_t total = 0, from = 7;
      for (size_t i = 0; i < 6; i++) {
        segs[i].base = src + from;
        segs[i].len = lens[t][i];
        memcpy(want + total, src + from, lens[t][i]);
        total += lens[t][i];
        from = (from + lens[t][i] * 3 + 11) % (SRC - 300001);
      }
      memset(dst, 0xee, SRC + 64);
      uint64_t sum = kvds_gather(dst + shift * 5, segs, 6);
      assert_memory_equal(dst + shift * 5, want, total);
      assert_int_equal(sum, kvds_checksum(want, total));
      assert_int_equal(dst[shift * 5 + total], 0xee); /* nothing past the end */
      if (shift)
        assert_int_equal(dst[shift * 5 - 1], 0xee);
    }
  }
  assert_int_equal(kvds_gather(dst, NULL, 0), kvds_checksum(NULL, 0));
  free(src);
  free(dst);
  free(want);
}

/* ---- kvds_errf ---------------------------------------------------------- */

static int verrf_twice(char *a, size_t acap, char *b, size_t bcap,
                       const char *fmt, ...) {
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int rc = kvds_verrf(a, acap, 7, fmt, ap);
  rc += kvds_verrf(b, bcap, 8, fmt, ap2);
  va_end(ap2);
  va_end(ap);
  return rc;
}

static void test_errf(void **state) {
  (void)state;
  char buf[32];

  assert_int_equal(
      kvds_errf(buf, sizeof buf, KVDS_E_INVAL, "bad %s: %d", "x", 42),
      KVDS_E_INVAL);
  assert_string_equal(buf, "bad x: 42");
  assert_int_equal(kvds_errf(buf, sizeof buf, 0, "fine"), 0);
  assert_string_equal(buf, "fine");
  assert_int_equal(kvds_errf(buf, sizeof buf, -ENOMEM, "%s", ""), -ENOMEM);
  assert_string_equal(buf, "");
  /* Cut to fit, always terminated. */
  char small[5];
  memset(small, 'x', sizeof small);
  assert_int_equal(kvds_errf(small, sizeof small, -1, "%s", "abcdefgh"), -1);
  assert_string_equal(small, "abcd");
  /* No buffer, or no room: nothing written, the code still returned. */
  assert_int_equal(kvds_errf(NULL, 0, KVDS_E_AUTH, "x"), KVDS_E_AUTH);
  assert_int_equal(kvds_errf(NULL, 64, KVDS_E_AUTH, "x %d", 1), KVDS_E_AUTH);
  memcpy(buf, "keep", 5);
  assert_int_equal(kvds_errf(buf, 0, -EINVAL, "overwritten"), -EINVAL);
  assert_string_equal(buf, "keep");
  /* The va_list form. */
  char a[16], b[4];
  assert_int_equal(verrf_twice(a, sizeof a, b, sizeof b, "%d-%s", 12, "ab"),
                   15);
  assert_string_equal(a, "12-ab");
  assert_string_equal(b, "12-");
}

/* ---- deadlines ---------------------------------------------------------- */

static void test_deadline_after(void **state) {
  (void)state;
  assert_true(kvds_deadline_after(1000, 0) == 1000);
  assert_true(kvds_deadline_after(1000, -5) == 1000); /* past: now */
  assert_true(kvds_deadline_after(1000, INT64_MIN) == 1000);
  assert_true(kvds_deadline_after(1000, 1) == 2000);
  assert_true(kvds_deadline_after(0, 3600000) == 3600000000ull);
  /* Huge timeouts saturate at UINT64_MAX (never), without wrapping. */
  assert_true(kvds_deadline_after(0, INT64_MAX) == UINT64_MAX);
  assert_true(kvds_deadline_after(UINT64_MAX / 2, INT64_MAX / 1000) ==
              UINT64_MAX / 2 + (uint64_t)(INT64_MAX / 1000) * 1000u);
  assert_true(kvds_deadline_after(UINT64_MAX / 2, INT64_MAX / 1000 + 1) ==
              UINT64_MAX);
  assert_true(kvds_deadline_after(UINT64_MAX, 1) == UINT64_MAX);
  assert_true(kvds_deadline_after(UINT64_MAX - 1999, 2) == UINT64_MAX);
  assert_true(kvds_deadline_after(UINT64_MAX - 2000, 2) == UINT64_MAX);
  assert_true(kvds_deadline_after(UINT64_MAX - 2001, 2) == UINT64_MAX - 1);
  assert_true(kvds_deadline_after(UINT64_MAX - 2000, 1) == UINT64_MAX - 1000);
  /* From the clock. */
  uint64_t t0 = kvds_now_us();
  uint64_t d0 = kvds_deadline_ms(0), d = kvds_deadline_ms(250);
  uint64_t t1 = kvds_now_us();
  assert_true(d0 >= t0 && d0 <= t1);
  assert_true(d >= t0 + 250000 && d <= t1 + 250000);
  assert_true(kvds_deadline_ms(-1) <= kvds_now_us());
  assert_true(kvds_deadline_ms(INT64_MAX) == UINT64_MAX);
}

static void test_deadline_left(void **state) {
  (void)state;
  /* Passed, just now, or never. */
  assert_true(kvds_deadline_left_us(100, 200) == 0);
  assert_true(kvds_deadline_left_us(200, 200) == 0);
  assert_true(kvds_deadline_left_us(0, UINT64_MAX) == 0);
  assert_true(kvds_deadline_left_us(201, 200) == 1);
  assert_true(kvds_deadline_left_us(UINT64_MAX, 0) == UINT64_MAX);
  assert_int_equal(kvds_deadline_left_ms(100, 200), 0);
  assert_int_equal(kvds_deadline_left_ms(200, 200), 0);
  assert_int_equal(kvds_deadline_left_ms(0, UINT64_MAX), 0);
  /* Milliseconds round up: a wait of that long does not end early. */
  assert_int_equal(kvds_deadline_left_ms(1001, 1000), 1);
  assert_int_equal(kvds_deadline_left_ms(1999, 1000), 1);
  assert_int_equal(kvds_deadline_left_ms(2000, 1000), 1);
  assert_int_equal(kvds_deadline_left_ms(2001, 1000), 2);
  assert_int_equal(kvds_deadline_left_ms(1000 + 250000, 1000), 250);
  /* Huge: clamped to INT_MAX, never negative. */
  assert_int_equal(kvds_deadline_left_ms(UINT64_MAX, 0), INT_MAX);
  assert_int_equal(kvds_deadline_left_ms((uint64_t)INT_MAX * 1000u + 1, 0),
                   INT_MAX);
  assert_int_equal(kvds_deadline_left_ms((uint64_t)INT_MAX * 1000u, 0),
                   INT_MAX);
  assert_int_equal(kvds_deadline_left_ms((uint64_t)(INT_MAX - 1) * 1000u, 0),
                   INT_MAX - 1);
  /* A deadline made by kvds_deadline_after gives its timeout back. */
  for (int64_t ms = 0; ms < 5000; ms += 7)
    assert_int_equal(
        kvds_deadline_left_ms(kvds_deadline_after(123456789, ms), 123456789),
        (int)ms);
}

static void test_mono_timespec(void **state) {
  (void)state;
  struct timespec ts = kvds_mono_timespec(0);
  assert_int_equal(ts.tv_sec, 0);
  assert_int_equal(ts.tv_nsec, 0);
  ts = kvds_mono_timespec(1999999);
  assert_int_equal(ts.tv_sec, 1);
  assert_int_equal(ts.tv_nsec, 999999000);
  ts = kvds_mono_timespec(3000000);
  assert_int_equal(ts.tv_sec, 3);
  assert_int_equal(ts.tv_nsec, 0);
  ts = kvds_mono_timespec(UINT64_MAX);
  assert_true((uint64_t)ts.tv_sec == UINT64_MAX / 1000000u);
  assert_int_equal(ts.tv_nsec, (long)(UINT64_MAX % 1000000u) * 1000);
  assert_true(ts.tv_nsec < 1000000000L);
}

/* ---- monotonic condition variables, sleeps ------------------------------ */

struct cv_box {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int flag;
  int delay_ms;
};

static void *cv_signaller(void *arg) {
  struct cv_box *b = arg;
  kvds_sleep_ms(b->delay_ms);
  pthread_mutex_lock(&b->mu);
  b->flag = 1;
  pthread_cond_signal(&b->cv);
  pthread_mutex_unlock(&b->mu);
  return NULL;
}

static void test_cond_wait_until(void **state) {
  (void)state;
  struct cv_box b = {.delay_ms = 20};
  pthread_mutex_init(&b.mu, NULL);
  assert_int_equal(kvds_cond_init_mono(&b.cv), 0);

  /* Nobody signals: the wait ends at the deadline, not before. On a cv
   * timed by the wall clock this monotonic deadline (time since boot)
   * would be decades past, and the wait would end at once. */
  pthread_mutex_lock(&b.mu);
  uint64_t until = kvds_deadline_ms(60);
  int rc;
  while ((rc = kvds_cond_wait_until(&b.cv, &b.mu, until)) == 0)
    ; /* spurious wake-ups */
  assert_int_equal(rc, -ETIMEDOUT);
  assert_true(kvds_now_us() >= until);
  /* A deadline already past (or 0) times out at once. */
  assert_int_equal(kvds_cond_wait_until(&b.cv, &b.mu, kvds_now_us() - 1),
                   -ETIMEDOUT);
  assert_int_equal(kvds_cond_wait_until(&b.cv, &b.mu, 0), -ETIMEDOUT);
  pthread_mutex_unlock(&b.mu);

  /* A signal before the deadline ends the wait with 0. */
  pthread_t th;
  pthread_mutex_lock(&b.mu);
  assert_int_equal(pthread_create(&th, NULL, cv_signaller, &b), 0);
  until = kvds_deadline_ms(60000);
  while (!b.flag) {
    rc = kvds_cond_wait_until(&b.cv, &b.mu, until);
    assert_int_equal(rc, 0);
  }
  assert_true(kvds_now_us() < until);
  pthread_mutex_unlock(&b.mu);
  pthread_join(th, NULL);

  /* UINT64_MAX: no deadline at all. */
  b.flag = 0;
  pthread_mutex_lock(&b.mu);
  assert_int_equal(pthread_create(&th, NULL, cv_signaller, &b), 0);
  while (!b.flag)
    assert_int_equal(kvds_cond_wait_until(&b.cv, &b.mu, UINT64_MAX), 0);
  pthread_mutex_unlock(&b.mu);
  pthread_join(th, NULL);

  pthread_cond_destroy(&b.cv);
  pthread_mutex_destroy(&b.mu);
}

static void test_sleep_ms(void **state) {
  (void)state;
  uint64_t t0 = kvds_now_us();
  kvds_sleep_ms(30);
  assert_true(kvds_now_us() - t0 >= 30000);
  kvds_sleep_ms(0); /* returns */
  kvds_sleep_ms(-5);
  kvds_sleep_ms(INT_MIN);
}

/* ---- loopback addresses ------------------------------------------------- */

static int v4_loop(const char *ip) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(80)};
  assert_int_equal(inet_pton(AF_INET, ip, &sa.sin_addr), 1);
  return kvds_sockaddr_is_loopback((const struct sockaddr *)&sa);
}

static int v6_loop(const char *ip) {
  struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons(80)};
  assert_int_equal(inet_pton(AF_INET6, ip, &sa.sin6_addr), 1);
  /* As getpeername() gives it: in a sockaddr_storage. */
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  memcpy(&ss, &sa, sizeof sa);
  int r = kvds_sockaddr_is_loopback((const struct sockaddr *)&sa);
  assert_int_equal(kvds_sockaddr_is_loopback((const struct sockaddr *)&ss), r);
  return r;
}

static void test_sockaddr_loopback(void **state) {
  (void)state;
  /* IPv4: all of 127.0.0.0/8. */
  const char *v4_yes[] = {"127.0.0.1", "127.0.0.0", "127.1.2.3",
                          "127.255.255.255"};
  const char *v4_no[] = {"0.0.0.0",   "126.255.255.255", "128.0.0.1",
                         "10.0.0.1",  "192.168.1.1",     "8.8.8.8",
                         "192.0.2.1", "255.255.255.255", "1.127.0.1"};
  for (size_t i = 0; i < sizeof v4_yes / sizeof *v4_yes; i++)
    if (!v4_loop(v4_yes[i]))
      fail_msg("%s is loopback", v4_yes[i]);
  for (size_t i = 0; i < sizeof v4_no / sizeof *v4_no; i++)
    if (v4_loop(v4_no[i]))
      fail_msg("%s is not loopback", v4_no[i]);
  /* IPv6: ::1, and IPv4 loopback mapped into IPv6. */
  const char *v6_yes[] = {"::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1",
                          "::ffff:127.9.8.7", "::ffff:7f00:1"};
  const char *v6_no[] = {"::",
                         "::2",
                         "::ffff:10.0.0.1",
                         "::ffff:128.0.0.1",
                         "::ffff:0.0.0.0",
                         "::127.0.0.1", /* IPv4-compatible, not mapped */
                         "64:ff9b::127.0.0.1",
                         "fe80::1",
                         "2001:db8::1",
                         "ff02::1",
                         "1::1"};
  for (size_t i = 0; i < sizeof v6_yes / sizeof *v6_yes; i++)
    if (!v6_loop(v6_yes[i]))
      fail_msg("%s is loopback", v6_yes[i]);
  for (size_t i = 0; i < sizeof v6_no / sizeof *v6_no; i++)
    if (v6_loop(v6_no[i]))
      fail_msg("%s is not loopback", v6_no[i]);
  /* Other families, and no address at all. */
  struct sockaddr_un un = {.sun_family = AF_UNIX, .sun_path = "/tmp/x"};
  assert_int_equal(kvds_sockaddr_is_loopback((const struct sockaddr *)&un), 0);
  struct sockaddr_storage none;
  memset(&none, 0, sizeof none); /* AF_UNSPEC */
  assert_int_equal(kvds_sockaddr_is_loopback((const struct sockaddr *)&none),
                   0);
  assert_int_equal(kvds_sockaddr_is_loopback(NULL), 0);
}

static void test_host_loopback(void **state) {
  (void)state;
  /* Numeric hosts (no lookup): the same answers as the socket addresses. */
  const char *yes[] = {"127.0.0.1",        "127.3.4.5",       "::1",
                       "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1", "127.255.0.1"};
  const char *no[] = {"0.0.0.0",     "::",        "8.8.8.8",
                      "192.0.2.1",   "10.1.2.3",  "2001:db8::1",
                      "::127.0.0.1", "fe80::1%1", "::ffff:192.0.2.1"};
  for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
    if (!kvds_host_is_loopback(yes[i]))
      fail_msg("%s is loopback", yes[i]);
  for (size_t i = 0; i < sizeof no / sizeof *no; i++)
    if (kvds_host_is_loopback(no[i]))
      fail_msg("%s is not loopback", no[i]);
  /* A name: localhost resolves to 127.0.0.1 and/or ::1, all loopback. */
  assert_int_equal(kvds_host_is_loopback("localhost"), 1);
  /* Nothing to resolve. */
  assert_int_equal(kvds_host_is_loopback(""), 0);
  assert_int_equal(kvds_host_is_loopback(NULL), 0);
  assert_int_equal(kvds_host_is_loopback("[::1]"), 0); /* not a host */
  assert_int_equal(kvds_host_is_loopback("127.0.0.1:80"), 0);
}

/* ---- growable arrays ---------------------------------------------------- */

struct rec {
  uint64_t a, b;
};

static void test_array_grow(void **state) {
  (void)state;
  struct rec *v = NULL;
  size_t n = 0, cap = 0;

  /* Enough room already (also need 0 on an empty array): nothing to do. */
  assert_int_equal(KVDS_ARRAY_GROW(v, cap, 0, 8), 0);
  assert_null(v);
  assert_int_equal(cap, 0);
  /* The first growth takes `first`, then doubling. */
  assert_int_equal(KVDS_ARRAY_GROW(v, cap, 1, 8), 0);
  assert_non_null(v);
  assert_int_equal(cap, 8);
  for (; n < 1000; n++) {
    assert_int_equal(KVDS_ARRAY_GROW(v, cap, n + 1, 8), 0);
    assert_true(cap >= n + 1);
    assert_true((cap & (cap - 1)) == 0); /* 8 * 2^k */
    v[n] = (struct rec){n, ~n};
  }
  assert_int_equal(cap, 1024);
  struct rec *same = v;
  assert_int_equal(KVDS_ARRAY_GROW(v, cap, 1024, 8), 0);
  assert_ptr_equal(v, same);
  assert_int_equal(cap, 1024);
  /* A jump: doubled as often as needed; the contents stay. */
  assert_int_equal(KVDS_ARRAY_GROW(v, cap, 5000, 8), 0);
  assert_int_equal(cap, 8192);
  for (size_t i = 0; i < n; i++)
    assert_true(v[i].a == i && v[i].b == ~(uint64_t)i);
  free(v);

  /* Byte buffers: any capacity doubles; first 0 counts as 1. */
  char *buf = NULL;
  size_t bcap = 0;
  assert_int_equal(KVDS_ARRAY_GROW(buf, bcap, 1, 0), 0);
  assert_int_equal(bcap, 1);
  assert_int_equal(KVDS_ARRAY_GROW(buf, bcap, 3, 0), 0);
  assert_int_equal(bcap, 4);
  bcap = 3; /* a caller's odd starting size */
  assert_int_equal(KVDS_ARRAY_GROW(buf, bcap, 7, 1024), 0);
  assert_int_equal(bcap, 12);
  assert_int_equal(KVDS_ARRAY_GROW(buf, bcap, 2000, 0), 0);
  assert_int_equal(bcap, 3072);
  free(buf);
}

/* Requests whose size does not fit in size_t are refused, never wrapped
 * into a small allocation; the array is left as it was. */
static void test_array_grow_overflow(void **state) {
  (void)state;
  struct rec *v = NULL;
  size_t cap = 0;
  assert_int_equal(KVDS_ARRAY_GROW(v, cap, 4, 4), 0);
  v[3].a = 77;
  struct rec *was = v;
  const size_t needs[] = {SIZE_MAX, SIZE_MAX / 2 + 2, SIZE_MAX / sizeof *v + 1};
  for (size_t i = 0; i < sizeof needs / sizeof needs[0]; i++) {
    assert_int_equal(KVDS_ARRAY_GROW(v, cap, needs[i], 4), -ENOMEM);
    assert_ptr_equal(v, was);
    assert_int_equal(cap, 4);
  }
  /* The doubling itself would pass SIZE_MAX. */
  char *b = NULL;
  size_t bcap = SIZE_MAX / 2 + 1; /* never allocated: refused before */
  assert_int_equal(KVDS_ARRAY_GROW(b, bcap, SIZE_MAX / 2 + 2, 0), -ENOMEM);
  assert_null(b);
  assert_true(bcap == SIZE_MAX / 2 + 1);
  bcap = 0;
  assert_int_equal(KVDS_ARRAY_GROW(b, bcap, SIZE_MAX, 1), -ENOMEM);
  assert_null(b);
  assert_int_equal(bcap, 0);
  assert_int_equal(v[3].a, 77);
  free(v);
}

/* Out of memory: -ENOMEM, the old array and capacity kept. */
static void test_array_grow_nomem(void **state) {
  (void)state;
  struct rec *v = NULL;
  size_t cap = 0;
  realloc_budget = 0;
  assert_int_equal(KVDS_ARRAY_GROW(v, cap, 1, 16), -ENOMEM);
  assert_null(v);
  assert_int_equal(cap, 0);
  realloc_budget = 1;
  assert_int_equal(KVDS_ARRAY_GROW(v, cap, 16, 16), 0);
  assert_int_equal(cap, 16);
  for (size_t i = 0; i < 16; i++)
    v[i] = (struct rec){i, i * 3};
  struct rec *was = v;
  assert_int_equal(KVDS_ARRAY_GROW(v, cap, 17, 16), -ENOMEM);
  assert_ptr_equal(v, was);
  assert_int_equal(cap, 16);
  realloc_budget = -1;
  assert_int_equal(KVDS_ARRAY_GROW(v, cap, 17, 16), 0);
  assert_int_equal(cap, 32);
  for (size_t i = 0; i < 16; i++)
    assert_true(v[i].a == i && v[i].b == i * 3);
  free(v);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strerror_codes),
      cmocka_unit_test(test_strerror_unknown),
      cmocka_unit_test(test_strerror_errno),
      cmocka_unit_test(test_parse_size),
      cmocka_unit_test(test_split_hostport),
      cmocka_unit_test(test_split_hostport_hcap),
      cmocka_unit_test(test_parse_u64),
      cmocka_unit_test(test_parse_ratio),
      cmocka_unit_test(test_fmt_bytes),
      cmocka_unit_test(test_checksum),
      cmocka_unit_test(test_hash_is_xxh3),
      cmocka_unit_test(test_gather),
      cmocka_unit_test(test_errf),
      cmocka_unit_test(test_deadline_after),
      cmocka_unit_test(test_deadline_left),
      cmocka_unit_test(test_mono_timespec),
      cmocka_unit_test(test_cond_wait_until),
      cmocka_unit_test(test_sleep_ms),
      cmocka_unit_test(test_sockaddr_loopback),
      cmocka_unit_test(test_host_loopback),
      cmocka_unit_test(test_array_grow),
      cmocka_unit_test(test_array_grow_overflow),
      cmocka_unit_test(test_array_grow_nomem),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
