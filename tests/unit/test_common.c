/* test_common.c — unit tests for error codes and the helpers in
 * src/common (errors.c, util.c). */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/util.h"
#include "kvds/kvds.h"

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
      cmocka_unit_test(test_gather),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
