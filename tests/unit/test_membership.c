/*
 * test_membership.c — the pure parts of the cluster membership: member
 * record JSON (round trip, malformed records refused), key -> id, cluster
 * names, the view's merge rules (sorted, newer epoch replaces, older never
 * hides a newer one, delete removes), and the embedded and static modes'
 * views.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "cluster/membership.h"
#include "kvds/kvds.h"

#define PREFIX "/kvds/c1/workers/"

static struct kvds_member mk(const char *id, uint64_t epoch) {
  struct kvds_member m;
  memset(&m, 0, sizeof m);
  snprintf(m.id, sizeof m.id, "%s", id);
  snprintf(m.addr, sizeof m.addr, "%s", id);
  m.capacity = 1u << 20;
  m.epoch = epoch;
  return m;
}

static int decode(const char *key, const char *val, struct kvds_member *out) {
  return kvds__member_decode(PREFIX, "c1", key, strlen(key), val,
                             val ? strlen(val) : 0, out);
}

static void test_prefix_and_names(void **state) {
  (void)state;
  char buf[64];
  assert_int_equal(kvds__member_prefix("c1", buf, sizeof buf), strlen(PREFIX));
  assert_string_equal(buf, PREFIX);
  assert_int_equal(kvds__member_prefix("c1", buf, 8), 0);
  assert_true(kvds__cluster_name_ok("kvds"));
  assert_true(kvds__cluster_name_ok("prod-eu_1.a"));
  assert_false(kvds__cluster_name_ok(""));
  assert_false(kvds__cluster_name_ok("a/b"));
  assert_false(kvds__cluster_name_ok("a b"));
  char longname[80];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  assert_false(kvds__cluster_name_ok(longname));
}

static void test_round_trip(void **state) {
  (void)state;
  struct kvds_member m = mk("10.0.0.5:31501", 1763740000123456ull), d;
  m.capacity = 4ull << 30;
  char *rec = kvds__member_encode(&m, "c1");
  assert_non_null(rec);
  assert_int_equal(decode(PREFIX "10.0.0.5:31501", rec, &d), 0);
  assert_string_equal(d.id, m.id);
  assert_string_equal(d.addr, m.addr);
  assert_int_equal(d.capacity, m.capacity);
  assert_int_equal(d.epoch, m.epoch);
  assert_int_equal(d.self, 0);
  /* The same record under another key, or from another cluster: refused. */
  assert_int_equal(decode(PREFIX "10.0.0.6:31501", rec, &d), KVDS_E_PROTO);
  assert_int_equal(
      kvds__member_decode(
          "/kvds/c2/workers/", "c2", "/kvds/c2/workers/10.0.0.5:31501",
          strlen("/kvds/c2/workers/10.0.0.5:31501"), rec, strlen(rec), &d),
      KVDS_E_PROTO);
  free(rec);
  /* Unknown fields are ignored (a newer worker may add some). */
  assert_int_equal(decode(PREFIX "a:1",
                          "{\"id\":\"a:1\",\"addr\":\"h:2\",\"capacity\":0,"
                          "\"epoch\":7,\"cluster\":\"c1\",\"zone\":\"z\"}",
                          &d),
                   0);
  assert_string_equal(d.addr, "h:2");
  assert_int_equal(d.epoch, 7);
}

static void test_malformed(void **state) {
  (void)state;
  static const char *const bad[] = {
      "",
      "not json",
      "[]",
      "{}",
      "{\"id\":\"a:1\",\"addr\":\"h:2\",\"capacity\":1,\"epoch\":7}",
      "{\"id\":\"a:1\",\"addr\":\"h:2\",\"capacity\":1,\"cluster\":\"c1\"}",
      "{\"id\":\"a:1\",\"addr\":\"\",\"capacity\":1,\"epoch\":7,"
      "\"cluster\":\"c1\"}",
      "{\"id\":\"a:1\",\"addr\":\"h:2\",\"capacity\":-1,\"epoch\":7,"
      "\"cluster\":\"c1\"}",
      "{\"id\":\"a:1\",\"addr\":\"h:2\",\"capacity\":1,\"epoch\":0,"
      "\"cluster\":\"c1\"}",
      "{\"id\":\"a:1\",\"addr\":\"h:2\",\"capacity\":\"1\",\"epoch\":7,"
      "\"cluster\":\"c1\"}",
      "{\"id\":\"a:1\",\"addr\":7,\"capacity\":1,\"epoch\":7,"
      "\"cluster\":\"c1\"}",
      "{\"id\":\"a:1\",\"id\":\"a:1\",\"addr\":\"h:2\",\"capacity\":1,"
      "\"epoch\":7,\"cluster\":\"c1\"}",
      "{\"id\":\"a:1\",\"addr\":\"h:2\",\"capacity\":1,\"epoch\":7,"
      "\"cluster\":\"other\"}",
      "{\"id\":\"a:1\",\"addr\":\"h:2\",\"capacity\":1,\"epoch\":7,"
      "\"cluster\":\"c1\"",
  };
  struct kvds_member d = mk("untouched", 1);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(decode(PREFIX "a:1", bad[i], &d), KVDS_E_PROTO);
    assert_string_equal(d.id, "untouched"); /* out written only on success */
  }
  assert_int_equal(decode(PREFIX "a:1", NULL, &d), KVDS_E_PROTO);
  /* A NUL inside the value's strings. */
  static const char nul[] = "{\"id\":\"a:1\",\"addr\":\"h\\u0000:2\","
                            "\"capacity\":1,\"epoch\":7,\"cluster\":\"c1\"}";
  assert_int_equal(decode(PREFIX "a:1", nul, &d), KVDS_E_PROTO);
}

static void test_key_id(void **state) {
  (void)state;
  char id[16];
  assert_int_equal(kvds__member_key_id(PREFIX, PREFIX "x:1", strlen(PREFIX) + 3,
                                       id, sizeof id),
                   0);
  assert_string_equal(id, "x:1");
  assert_int_equal(
      kvds__member_key_id(PREFIX, PREFIX, strlen(PREFIX), id, sizeof id),
      KVDS_E_PROTO);
  assert_int_equal(kvds__member_key_id(PREFIX, "/kvds/c2/workers/x:1",
                                       strlen("/kvds/c2/workers/x:1"), id,
                                       sizeof id),
                   KVDS_E_PROTO);
  assert_int_equal(kvds__member_key_id(PREFIX, PREFIX "a/b", strlen(PREFIX) + 3,
                                       id, sizeof id),
                   KVDS_E_PROTO);
  assert_int_equal(kvds__member_key_id(PREFIX, PREFIX "0123456789abcdef",
                                       strlen(PREFIX) + 16, id, sizeof id),
                   KVDS_E_PROTO);
  static const char withnul[] = PREFIX "a\0b";
  assert_int_equal(
      kvds__member_key_id(PREFIX, withnul, sizeof withnul - 1, id, sizeof id),
      KVDS_E_PROTO);
}

static void test_view_rules(void **state) {
  (void)state;
  struct kvds__member_view v = {0};
  struct kvds_member b = mk("b:1", 10), a = mk("a:1", 10), c = mk("c:1", 10);
  assert_int_equal(kvds__view_put(&v, &b), 1);
  assert_int_equal(kvds__view_put(&v, &c), 1);
  assert_int_equal(kvds__view_put(&v, &a), 1);
  assert_int_equal(v.n, 3);
  assert_string_equal(v.m[0].id, "a:1"); /* sorted by id */
  assert_string_equal(v.m[1].id, "b:1");
  assert_string_equal(v.m[2].id, "c:1");
  /* The same record again: no change. */
  assert_int_equal(kvds__view_put(&v, &b), 0);
  /* A newer incarnation replaces. */
  struct kvds_member b2 = mk("b:1", 20);
  snprintf(b2.addr, sizeof b2.addr, "b:2");
  assert_int_equal(kvds__view_put(&v, &b2), 1);
  assert_int_equal(v.n, 3);
  assert_int_equal(v.m[1].epoch, 20);
  assert_string_equal(v.m[1].addr, "b:2");
  /* An older one never hides it. */
  assert_int_equal(kvds__view_put(&v, &b), 0);
  assert_int_equal(v.m[1].epoch, 20);
  /* Same epoch, changed capacity: replaced. */
  b2.capacity = 99;
  assert_int_equal(kvds__view_put(&v, &b2), 1);
  assert_int_equal(v.m[1].capacity, 99);
  /* Delete removes; deleting an absent id changes nothing. */
  assert_int_equal(kvds__view_delete(&v, "b:1"), 1);
  assert_int_equal(kvds__view_delete(&v, "b:1"), 0);
  assert_int_equal(v.n, 2);
  assert_int_equal(kvds__view_find(&v, "a:1"), 0);
  assert_int_equal(kvds__view_find(&v, "c:1"), 1);
  assert_int_equal(kvds__view_find(&v, "b:1"), -1);
  /* Growth past the first allocation. */
  for (int i = 0; i < 100; i++) {
    char id[16];
    snprintf(id, sizeof id, "n%03d:1", 99 - i);
    struct kvds_member x = mk(id, 1);
    assert_int_equal(kvds__view_put(&v, &x), 1);
  }
  assert_int_equal(v.n, 102);
  for (size_t i = 1; i < v.n; i++)
    assert_true(strcmp(v.m[i - 1].id, v.m[i].id) < 0);
  kvds__view_free(&v);
  assert_int_equal(v.n, 0);
}

static int create(enum kvds_membership_mode mode, const char *self,
                  const char *peers, const char *etcd, kvds_membership **out,
                  char *err, size_t cap) {
  struct kvds_membership_config c;
  memset(&c, 0, sizeof c);
  c.mode = mode;
  snprintf(c.self_addr, sizeof c.self_addr, "%s", self);
  c.capacity = 1u << 30;
  c.peers = peers;
  c.etcd = etcd;
  return kvds_membership_create(&c, out, err, cap);
}

static void test_modes(void **state) {
  (void)state;
  kvds_membership *m = NULL;
  char err[256] = "";
  struct kvds_member *v;
  size_t n;
  uint64_t gen;
  /* Embedded: just me. */
  assert_int_equal(create(KVDS_MEMBERSHIP_EMBEDDED, "127.0.0.1:5", NULL, NULL,
                          &m, err, sizeof err),
                   0);
  assert_int_equal(kvds_membership_start(m), 0);
  assert_int_equal(kvds_membership_view(m, &v, &n, &gen), 0);
  assert_int_equal(n, 1);
  assert_true(v[0].self);
  assert_string_equal(v[0].id, "127.0.0.1:5");
  assert_true(v[0].epoch > 0);
  free(v);
  assert_int_equal(kvds_membership_etcd_up(m), 0);
  char *js = kvds_membership_json_string(m);
  assert_non_null(js);
  assert_non_null(strstr(js, "\"mode\":\"embedded\""));
  free(js);
  kvds_membership_destroy(m);

  /* Static: me + peers, sorted, me not twice. */
  assert_int_equal(create(KVDS_MEMBERSHIP_STATIC, "127.0.0.1:5",
                          "127.0.0.1:7,127.0.0.1:5,127.0.0.1:6", NULL, &m, err,
                          sizeof err),
                   0);
  assert_int_equal(kvds_membership_view(m, &v, &n, NULL), 0);
  assert_int_equal(n, 3);
  assert_string_equal(v[0].id, "127.0.0.1:5");
  assert_true(v[0].self);
  assert_string_equal(v[1].id, "127.0.0.1:6");
  assert_false(v[1].self);
  assert_string_equal(v[2].id, "127.0.0.1:7");
  free(v);
  assert_int_equal(kvds_membership_size(m), 3);
  json_t *j = kvds_membership_json(m);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "mode")), "static");
  assert_int_equal(json_array_size(json_object_get(j, "members")), 3);
  json_decref(j);
  kvds_membership_destroy(m);

  /* Refusals, each with a reason. */
  assert_int_equal(create(KVDS_MEMBERSHIP_STATIC, "127.0.0.1:5", "nohost", NULL,
                          &m, err, sizeof err),
                   KVDS_E_ADDR);
  assert_non_null(strstr(err, "--peers"));
  assert_int_equal(create(KVDS_MEMBERSHIP_STATIC, "127.0.0.1:5", "a:1,,b:2",
                          NULL, &m, err, sizeof err),
                   KVDS_E_ADDR);
  assert_int_equal(create(KVDS_MEMBERSHIP_ETCD, "127.0.0.1:5", NULL,
                          "https://x:1", &m, err, sizeof err),
                   KVDS_E_ADDR);
  assert_non_null(strstr(err, "--etcd_address"));
  assert_int_equal(create(KVDS_MEMBERSHIP_EMBEDDED, "nonsense", NULL, NULL, &m,
                          err, sizeof err),
                   KVDS_E_ADDR);
  /* etcd mode: creating contacts nothing; a comma list with etcd:// items
   * parses. */
  assert_int_equal(create(KVDS_MEMBERSHIP_ETCD, "127.0.0.1:5", NULL,
                          "etcd://127.0.0.1:1,http://127.0.0.1:2,127.0.0.1:3",
                          &m, err, sizeof err),
                   0);
  assert_int_equal(kvds_membership_size(m), 1);
  kvds_membership_destroy(m);
}

/* Error texts are cut to a buffer with snprintf, maybe inside a character:
 * scrubbed, they must be valid UTF-8 that jansson takes. */
static void test_utf8(void **state) {
  (void)state;
  char msg[1200], cut[256];
  size_t n = 0;
  n += (size_t)snprintf(msg, sizeof msg, "join: etcd said ");
  while (n + 2 < sizeof msg - 1) {
    memcpy(msg + n, "\xc3\xa9", 2); /* é */
    n += 2;
  }
  msg[n] = 0;
  assert_true(kvds__utf8_ok(msg));
  /* 16 ASCII bytes + 2-byte characters: 255 bytes end mid-character. */
  memcpy(cut, msg, sizeof cut - 1); /* what snprintf into cut[256] does */
  cut[sizeof cut - 1] = 0;
  assert_int_equal(strlen(cut), 255);
  assert_false(kvds__utf8_ok(cut));
  json_t *j = json_string(cut);
  assert_null(j); /* the bug: json_pack of such a string fails */
  kvds__utf8_scrub(cut);
  assert_true(kvds__utf8_ok(cut));
  assert_int_equal(strlen(cut), 255);
  assert_int_equal(cut[254], '?');
  assert_memory_equal(cut + 250, "\xc3\xa9\xc3\xa9", 4);
  j = json_pack("{s:s}", "last_error", cut);
  assert_non_null(j);
  json_decref(j);
  /* Cut 3- and 4-byte characters, stray continuation bytes, overlongs,
   * surrogates, beyond U+10FFFF. */
  static const struct {
    const char *in, *out;
  } cases[] = {
      {"a\xe2\x82", "a??"},    {"a\xe2\x82\xac", "a\xe2\x82\xac"},
      {"\xf0\x9f\x98", "???"}, {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},
      {"x\x80y", "x?y"},       {"\xc0\xaf", "??"},
      {"\xed\xa0\x80", "???"}, {"\xf4\x90\x80\x80", "????"},
      {"\xff", "?"},           {"plain", "plain"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char b[16];
    snprintf(b, sizeof b, "%s", cases[i].in);
    kvds__utf8_scrub(b);
    assert_string_equal(b, cases[i].out);
    assert_true(kvds__utf8_ok(b));
    j = json_string(b);
    assert_non_null(j);
    json_decref(j);
  }
  /* Ids and addresses that are not UTF-8 are refused at create, so that the
   * record and /status can always be built. */
  struct kvds_membership_config c;
  memset(&c, 0, sizeof c);
  c.mode = KVDS_MEMBERSHIP_EMBEDDED;
  snprintf(c.self_addr, sizeof c.self_addr, "h\xc3:5");
  kvds_membership *m = NULL;
  char err[256] = "";
  assert_int_equal(kvds_membership_create(&c, &m, err, sizeof err),
                   KVDS_E_ADDR);
  assert_non_null(strstr(err, "UTF-8"));
  snprintf(c.self_addr, sizeof c.self_addr, "127.0.0.1:5");
  snprintf(c.self_id, sizeof c.self_id, "n\xe9");
  assert_int_equal(kvds_membership_create(&c, &m, err, sizeof err),
                   KVDS_E_ADDR);
  c.self_id[0] = 0;
  c.mode = KVDS_MEMBERSHIP_ETCD;
  c.etcd = "127.0.0.1:1,h\xff:2";
  assert_int_equal(kvds_membership_create(&c, &m, err, sizeof err),
                   KVDS_E_ADDR);
  /* UTF-8 ids are fine and appear in the JSON. */
  c.mode = KVDS_MEMBERSHIP_EMBEDDED;
  c.etcd = NULL;
  snprintf(c.self_id, sizeof c.self_id, "n\xc3\xa9ud");
  assert_int_equal(kvds_membership_create(&c, &m, err, sizeof err), 0);
  char *js = kvds_membership_json_string(m);
  assert_non_null(js);
  assert_non_null(strstr(js, "n\xc3\xa9ud"));
  free(js);
  kvds_membership_destroy(m);
}

/* The lease TTLs a member may ask for: one rule for the CLI, the worker's
 * config check and kvds_membership_create. */
static void test_lease_ttl(void **state) {
  (void)state;
  assert_int_equal(KVDS_MEMBERSHIP_TTL_MIN_S, 1);
  assert_int_equal(KVDS_MEMBERSHIP_TTL_MAX_S, 3600);
  const int ok[] = {1, 2, 10, 3599, 3600};
  const int bad[] = {0, -1, 3601, 86400, INT_MAX, INT_MIN};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
    assert_int_equal(kvds_membership_ttl_ok(ok[i]), 1);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(kvds_membership_ttl_ok(bad[i]), 0);
  assert_true(kvds_membership_ttl_ok(KVDS_MEMBERSHIP_DEFAULT_TTL_S));

  /* create applies it (0 = the default); nothing is contacted. */
  struct kvds_membership_config c;
  memset(&c, 0, sizeof c);
  c.mode = KVDS_MEMBERSHIP_EMBEDDED;
  snprintf(c.self_addr, sizeof c.self_addr, "127.0.0.1:5");
  const int create_ok[] = {0, 1, 3600};
  for (size_t i = 0; i < sizeof create_ok / sizeof create_ok[0]; i++) {
    kvds_membership *m = NULL;
    c.lease_ttl_s = create_ok[i];
    assert_int_equal(kvds_membership_create(&c, &m, NULL, 0), 0);
    kvds_membership_destroy(m);
  }
  const int create_bad[] = {-1, 3601, INT_MAX};
  for (size_t i = 0; i < sizeof create_bad / sizeof create_bad[0]; i++) {
    kvds_membership *m = NULL;
    char err[256] = "";
    c.lease_ttl_s = create_bad[i];
    assert_int_equal(kvds_membership_create(&c, &m, err, sizeof err),
                     KVDS_E_INVAL);
    assert_null(m);
    assert_string_equal(err, "--lease-ttl must be 1..3600 s");
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_prefix_and_names),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_key_id),
      cmocka_unit_test(test_view_rules),
      cmocka_unit_test(test_modes),
      cmocka_unit_test(test_utf8),
      cmocka_unit_test(test_lease_ttl),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
