/* test_etcd.c — the etcd client's pure parts: base64, prefix ends, endpoint
 * lists, int64 fields and the gateway's replies (real ones, recorded from
 * etcd 3.4, and broken ones). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "cluster/etcd.h"

#define HDR                                                                    \
  "\"header\":{\"cluster_id\":\"15118495548433857066\",\"member_id\":"         \
  "\"13668033151171901709\",\"revision\":\"12\",\"raft_term\":\"2\"}"

static void b64_vectors(void **st) {
  (void)st;
  static const char *plain[] = {"",     "f",     "fo",    "foo",
                                "foob", "fooba", "foobar"};
  static const char *enc[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                              "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
  for (int i = 0; i < 7; i++) {
    char out[16];
    assert_int_equal(
        kvds__etcd_b64_encode(plain[i], strlen(plain[i]), out, sizeof out), 0);
    assert_string_equal(out, enc[i]);
    uint8_t dec[16];
    size_t n = 99;
    assert_int_equal(
        kvds__etcd_b64_decode(enc[i], strlen(enc[i]), dec, sizeof dec, &n), 0);
    assert_int_equal(n, strlen(plain[i]));
    if (n)
      assert_memory_equal(dec, plain[i], n);
  }
}

static void b64_round_trips(void **st) {
  (void)st;
  uint8_t in[300] = {0}, dec[300];
  char enc[404];
  uint64_t s = 1;
  for (size_t len = 0; len <= sizeof in; len++) {
    for (size_t i = 0; i < len; i++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      in[i] = (uint8_t)(s >> 56);
    }
    assert_int_equal(kvds__etcd_b64_encode(in, len, enc, sizeof enc), 0);
    assert_int_equal(strlen(enc), kvds__etcd_b64_len(len));
    size_t n = 0;
    assert_int_equal(kvds__etcd_b64_decode(enc, strlen(enc), dec, len, &n), 0);
    assert_int_equal(n, len);
    if (len)
      assert_memory_equal(dec, in, len);
    /* One byte too little room is refused, never overrun. */
    if (len)
      assert_int_equal(
          kvds__etcd_b64_decode(enc, strlen(enc), dec, len - 1, &n),
          KVDS_E_INVAL);
  }
  /* Encoding needs room for the NUL too. */
  char small[5];
  assert_int_equal(kvds__etcd_b64_encode("abc", 3, small, 4), KVDS_E_INVAL);
  assert_int_equal(kvds__etcd_b64_encode("abc", 3, small, 5), 0);
}

static void b64_rejects(void **st) {
  (void)st;
  static const char *bad[] = {"Z",
                              "Zm9",
                              "Zm9v=",
                              "Zm=v",
                              "=m9v",
                              "Zm9v====",
                              "Zh==",
                              "Zm9=",
                              "Zm\n9",
                              "Zm 9",
                              "Zm9v\0\0\0\0",
                              "Z-9v",
                              "====",
                              "Zg=="
                              "Zg=="};
  uint8_t out[32];
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    size_t n = 12345;
    size_t len = i == 10 ? 8 : strlen(bad[i]);
    assert_int_equal(kvds__etcd_b64_decode(bad[i], len, out, sizeof out, &n),
                     KVDS_E_PROTO);
    assert_int_equal(n, 12345); /* untouched on error */
  }
}

static void prefix_ends(void **st) {
  (void)st;
  uint8_t end[8];
  assert_int_equal(kvds__etcd_prefix_end("a/", 2, end), 2);
  assert_memory_equal(end, "a0", 2);
  assert_int_equal(kvds__etcd_prefix_end("a\xff", 2, end), 1);
  assert_memory_equal(end, "b", 1);
  assert_int_equal(kvds__etcd_prefix_end("\xff\xff", 2, end), 1);
  assert_int_equal(end[0], 0);
  assert_int_equal(kvds__etcd_prefix_end("", 0, end), 1);
  assert_int_equal(end[0], 0);
  assert_int_equal(kvds__etcd_prefix_end("x\x00", 2, end), 2);
  assert_memory_equal(end, "x\x01", 2);
}

static void endpoints_good(void **st) {
  (void)st;
  struct kvds__etcd_ep *eps = NULL;
  size_t n = 0;
  assert_int_equal(kvds__etcd_parse_endpoints("127.0.0.1:2379,etcd://h:1,"
                                              "http://node-2.local:65535/,"
                                              "[::1]:2380",
                                              &eps, &n),
                   0);
  assert_int_equal(n, 4);
  assert_string_equal(eps[0].url, "http://127.0.0.1:2379");
  assert_string_equal(eps[1].url, "http://h:1");
  assert_string_equal(eps[2].url, "http://node-2.local:65535");
  assert_string_equal(eps[3].url, "http://[::1]:2380");
  free(eps);
  assert_int_equal(kvds__etcd_parse_endpoints("localhost:2379", &eps, &n), 0);
  assert_int_equal(n, 1);
  free(eps);
  /* The most endpoints allowed. */
  char list[KVDS_ETCD_MAX_ENDPOINTS * 20] = "";
  for (int i = 0; i < KVDS_ETCD_MAX_ENDPOINTS; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%sh%d:%d",
             i ? "," : "", i, 1000 + i);
  assert_int_equal(kvds__etcd_parse_endpoints(list, &eps, &n), 0);
  assert_int_equal(n, KVDS_ETCD_MAX_ENDPOINTS);
  free(eps);
  strcat(list, ",one:1");
  eps = NULL;
  assert_int_equal(kvds__etcd_parse_endpoints(list, &eps, &n), KVDS_E_ADDR);
  assert_null(eps);
}

static void endpoints_bad(void **st) {
  (void)st;
  static const char *bad[] = {
      "",         "host",      "host:",          "host:0",        "host:65536",
      "host:12x", ":2379",     "https://h:2379", "unix:///tmp/s", "a:1,,b:2",
      "a:1,",     ",a:1",      "etcd://",        "http://h:1/v3", "h h:1",
      "user@h:1", "[::1:2379", "[::1]2379"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    struct kvds__etcd_ep *eps = NULL;
    size_t n = 77;
    int rc = kvds__etcd_parse_endpoints(bad[i], &eps, &n);
    if (rc != KVDS_E_ADDR)
      fail_msg("'%s' gave %d", bad[i], rc);
    assert_null(eps);
    assert_int_equal(n, 77);
  }
  struct kvds__etcd_ep *eps;
  size_t n;
  assert_int_equal(kvds__etcd_parse_endpoints(NULL, &eps, &n), KVDS_E_ADDR);
  kvds_etcd *e = NULL;
  assert_int_equal(kvds_etcd_open("nope", 1000, &e), KVDS_E_ADDR);
  assert_int_equal(kvds_etcd_open("h:1", 0, &e), KVDS_E_INVAL);
  assert_null(e);
  assert_int_equal(kvds_etcd_open("h:1", 1000, &e), 0);
  assert_string_equal(kvds_etcd_endpoint(e), "http://h:1");
  assert_string_equal(kvds_etcd_errmsg(e), "");
  kvds_etcd_close(e);
  kvds_etcd_close(NULL);
}

static void int64_fields(void **st) {
  (void)st;
  struct {
    const char *json;
    int ok;
    int64_t v;
  } t[] = {{"\"0\"", 1, 0},
           {"\"123\"", 1, 123},
           {"\"-5\"", 1, -5},
           {"\"9223372036854775807\"", 1, INT64_MAX},
           {"\"-9223372036854775808\"", 1, INT64_MIN},
           {"\"9223372036854775808\"", 0, 0},
           {"\"99999999999999999999\"", 0, 0},
           {"\"\"", 0, 0},
           {"\"-\"", 0, 0},
           {"\"12a\"", 0, 0},
           {"\" 1\"", 0, 0},
           {"\"1.5\"", 0, 0},
           {"42", 1, 42},
           {"1.5", 0, 0},
           {"true", 0, 0},
           {"null", 0, 0},
           {"[1]", 0, 0}};
  for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
    json_t *j = json_loads(t[i].json, JSON_DECODE_ANY, NULL);
    assert_non_null(j);
    int64_t v = 777;
    int rc = kvds__etcd_json_i64(j, &v);
    json_decref(j);
    if (t[i].ok) {
      assert_int_equal(rc, 0);
      assert_true(v == t[i].v);
    } else {
      if (rc != KVDS_E_PROTO)
        fail_msg("%s accepted", t[i].json);
      assert_true(v == 777);
    }
  }
  int64_t v = 5;
  assert_int_equal(kvds__etcd_json_i64(NULL, &v), 0);
  assert_true(v == 0);
}

/* Recorded from etcd 3.4.23: range over "a/" with a binary key "a/\0\xff"
 * (YS8A/w==) and an empty value under a lease. */
static const char RANGE_OK[] =
    "{" HDR ",\"kvs\":[{\"key\":\"YS8A/w==\",\"create_revision\":\"2\","
    "\"mod_revision\":\"3\",\"version\":\"2\",\"value\":\"YmFy\"},"
    "{\"key\":\"YS8x\",\"create_revision\":\"5\",\"mod_revision\":\"5\","
    "\"version\":\"1\",\"lease\":\"4111120151192495634\"}],\"count\":\"2\"}";

static void range_replies(void **st) {
  (void)st;
  struct kvds_etcd_range r;
  char msg[256];
  assert_int_equal(
      kvds__etcd_parse_range(RANGE_OK, strlen(RANGE_OK), &r, msg, sizeof msg),
      0);
  assert_int_equal(r.n, 2);
  assert_true(r.revision == 12);
  assert_int_equal(r.kvs[0].key.len, 4);
  assert_memory_equal(r.kvs[0].key.base, "a/\0\xff", 4);
  assert_int_equal(r.kvs[0].value.len, 3);
  assert_memory_equal(r.kvs[0].value.base, "bar", 3);
  assert_true(r.kvs[0].mod_revision == 3 && r.kvs[0].create_revision == 2 &&
              r.kvs[0].version == 2 && r.kvs[0].lease == 0);
  assert_int_equal(r.kvs[1].value.len, 0);
  assert_true(r.kvs[1].lease == 4111120151192495634ll);
  kvds_etcd_range_free(&r);
  assert_null(r.kvs);
  kvds_etcd_range_free(&r);
  kvds_etcd_range_free(NULL);

  /* No kvs: an empty result. */
  const char *empty = "{" HDR "}";
  assert_int_equal(
      kvds__etcd_parse_range(empty, strlen(empty), &r, msg, sizeof msg), 0);
  assert_int_equal(r.n, 0);
  assert_true(r.revision == 12);
  kvds_etcd_range_free(&r);

  static const char *bad[] = {
      "",
      "{",
      "[]",
      "null",
      "{\"kvs\":[]}",                           /* no header */
      "{\"header\":{\"revision\":\"x\"}}",      /* bad revision */
      "{\"header\":1}",                         /* header not an object */
      "{" HDR ",\"kvs\":{}}",                   /* kvs not an array */
      "{" HDR ",\"kvs\":[1]}",                  /* kv not an object */
      "{" HDR ",\"kvs\":[{\"key\":\"YS8\"}]}",  /* bad base64 length */
      "{" HDR ",\"kvs\":[{\"key\":\"YS8*\"}]}", /* bad base64 char */
      "{" HDR ",\"kvs\":[{\"key\":5}]}",        /* key not a string */
      "{" HDR ",\"kvs\":[{\"key\":\"YQ==\",\"mod_revision\":\"1e3\"}]}",
      "{" HDR ",\"kvs\":[{\"key\":\"YQ==\"},{\"value\":\"!!!!\"}]}",
      "{" HDR "," HDR "}", /* duplicate keys */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    r.n = 99;
    msg[0] = 0;
    int rc =
        kvds__etcd_parse_range(bad[i], strlen(bad[i]), &r, msg, sizeof msg);
    if (rc != KVDS_E_PROTO)
      fail_msg("'%s' gave %d", bad[i], rc);
    assert_int_equal(r.n, 99);
    assert_true(msg[0] != 0);
  }
}

/* Every prefix of a good reply, and every single-byte corruption, is either
 * parsed or refused: never a crash, never a read past len (ASan checks the
 * copies, which have no NUL after them). */
static void replies_never_trusted(void **st) {
  (void)st;
  size_t len = strlen(RANGE_OK);
  for (size_t cut = 0; cut < len; cut++) {
    char *copy = malloc(cut ? cut : 1);
    memcpy(copy, RANGE_OK, cut);
    struct kvds_etcd_range r;
    assert_int_equal(kvds__etcd_parse_range(copy, cut, &r, NULL, 0),
                     KVDS_E_PROTO);
    struct kvds__etcd_watch_msg m;
    assert_int_not_equal(kvds__etcd_parse_watch(copy, cut, &m, NULL, 0), 0);
    free(copy);
  }
  for (size_t i = 0; i < len; i++) {
    char *copy = malloc(len);
    memcpy(copy, RANGE_OK, len);
    copy[i] ^= 0x41;
    struct kvds_etcd_range r;
    int rc = kvds__etcd_parse_range(copy, len, &r, NULL, 0);
    if (rc == 0)
      kvds_etcd_range_free(&r);
    else
      assert_int_equal(rc, KVDS_E_PROTO);
    free(copy);
  }
}

static void error_replies(void **st) {
  (void)st;
  char msg[256];
  const char *nf = "{\"error\":\"etcdserver: requested lease not found\","
                   "\"message\":\"etcdserver: requested lease not found\","
                   "\"code\":5}";
  assert_int_equal(kvds__etcd_parse_error(nf, strlen(nf), msg, sizeof msg),
                   KVDS_E_NOTFOUND);
  assert_non_null(strstr(msg, "requested lease not found"));
  const char *inv = "{\"error\":\"illegal base64 data at input byte 0\","
                    "\"message\":\"illegal base64 data at input byte 0\","
                    "\"code\":3}";
  assert_int_equal(kvds__etcd_parse_error(inv, strlen(inv), msg, sizeof msg),
                   KVDS_E_INVAL);
  const char *unav = "{\"error\":\"etcdserver: no leader\",\"code\":14}";
  assert_int_equal(kvds__etcd_parse_error(unav, strlen(unav), NULL, 0),
                   -EAGAIN);
  const char *other = "{\"error\":\"x\",\"code\":\"13\"}";
  assert_int_equal(kvds__etcd_parse_error(other, strlen(other), NULL, 0), -EIO);
  const char *garbage[] = {"404 page not found\n", "{}", "", "{\"code\":5}"};
  for (int i = 0; i < 4; i++)
    assert_int_equal(
        kvds__etcd_parse_error(garbage[i], strlen(garbage[i]), NULL, 0),
        KVDS_E_PROTO);
  /* An error inside a 200 reply wins over the rest. */
  struct kvds_etcd_range r;
  assert_int_equal(kvds__etcd_parse_range(nf, strlen(nf), &r, NULL, 0),
                   KVDS_E_NOTFOUND);
}

static void lease_replies(void **st) {
  (void)st;
  int64_t id = 0, ttl = 0;
  const char *g = "{" HDR ",\"ID\":\"4111120151192495625\",\"TTL\":\"5\"}";
  assert_int_equal(kvds__etcd_parse_grant(g, strlen(g), &id, &ttl, NULL, 0), 0);
  assert_true(id == 4111120151192495625ll && ttl == 5);
  const char *g2 = "{" HDR ",\"TTL\":\"5\"}";
  assert_int_equal(kvds__etcd_parse_grant(g2, strlen(g2), &id, &ttl, NULL, 0),
                   KVDS_E_PROTO);
  const char *ka = "{\"result\":{" HDR ",\"ID\":\"4111120151192495634\","
                   "\"TTL\":\"5\"}}";
  ttl = 0;
  assert_int_equal(kvds__etcd_parse_keepalive(ka, strlen(ka), &ttl, NULL, 0),
                   0);
  assert_true(ttl == 5);
  /* etcd answers a keepalive for an unknown lease with no TTL. */
  const char *gone = "{\"result\":{" HDR ",\"ID\":\"12345\"}}";
  ttl = 9;
  assert_int_equal(
      kvds__etcd_parse_keepalive(gone, strlen(gone), &ttl, NULL, 0),
      KVDS_E_NOTFOUND);
  assert_true(ttl == 9);
  const char *nores = "{" HDR "}";
  assert_int_equal(
      kvds__etcd_parse_keepalive(nores, strlen(nores), &ttl, NULL, 0),
      KVDS_E_PROTO);
  int64_t rev = 0, del = 0;
  const char *d = "{" HDR ",\"deleted\":\"1\"}";
  assert_int_equal(kvds__etcd_parse_header(d, strlen(d), &rev, &del, NULL, 0),
                   0);
  assert_true(rev == 12 && del == 1);
}

static void watch_messages(void **st) {
  (void)st;
  struct kvds__etcd_watch_msg m;
  char msg[256];
  const char *created = "{\"result\":{" HDR ",\"created\":true}}";
  assert_int_equal(
      kvds__etcd_parse_watch(created, strlen(created), &m, msg, sizeof msg), 0);
  assert_true(m.created && !m.canceled && m.n == 0 && m.revision == 12);
  assert_string_equal(m.cluster_id, "15118495548433857066");
  kvds__etcd_watch_msg_free(&m);

  const char *evs =
      "{\"result\":{" HDR ",\"events\":[{\"type\":\"DELETE\",\"kv\":{\"key\":"
      "\"YS8x\",\"mod_revision\":\"8\"}},{\"kv\":{\"key\":\"YS8z\","
      "\"create_revision\":\"9\",\"mod_revision\":\"9\",\"version\":\"1\","
      "\"value\":\"eA==\"}}]}}";
  assert_int_equal(
      kvds__etcd_parse_watch(evs, strlen(evs), &m, msg, sizeof msg), 0);
  assert_int_equal(m.n, 2);
  assert_int_equal(m.events[0].type, KVDS_ETCD_DELETE);
  assert_memory_equal(m.events[0].kv.key.base, "a/1", 3);
  assert_true(m.events[0].kv.mod_revision == 8);
  assert_int_equal(m.events[1].type, KVDS_ETCD_PUT);
  assert_int_equal(m.events[1].kv.value.len, 1);
  assert_memory_equal(m.events[1].kv.value.base, "x", 1);
  kvds__etcd_watch_msg_free(&m);

  const char *compacted = "{\"result\":{\"header\":{\"cluster_id\":\"1\","
                          "\"raft_term\":\"2\"},\"canceled\":true,"
                          "\"compact_revision\":\"7\"}}";
  assert_int_equal(
      kvds__etcd_parse_watch(compacted, strlen(compacted), &m, msg, sizeof msg),
      0);
  assert_true(m.canceled && m.compact_revision == 7 && m.revision == 0);
  kvds__etcd_watch_msg_free(&m);

  const char *err = "{\"error\":{\"grpc_code\":14,\"http_code\":503,"
                    "\"message\":\"transport is closing\"}}";
  assert_int_equal(
      kvds__etcd_parse_watch(err, strlen(err), &m, msg, sizeof msg),
      -ECONNRESET);
  assert_non_null(strstr(msg, "transport is closing"));

  static const char *bad[] = {
      "{\"result\":5}",
      "{}",
      "{\"result\":{\"events\":{}}}",
      "{\"result\":{\"events\":[{\"type\":\"PATCH\",\"kv\":{}}]}}",
      "{\"result\":{\"events\":[{\"type\":1,\"kv\":{}}]}}",
      "{\"result\":{\"events\":[{\"kv\":{\"key\":\"#\"}}]}}",
      "{\"result\":{\"events\":[{\"kv\":{\"key\":\"YQ==\"}},{}]}}",
      "{\"result\":{\"compact_revision\":\"x\"}}",
      "{\"result\":{" HDR ",\"created\":true}} trailing",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    m.n = 99;
    int rc =
        kvds__etcd_parse_watch(bad[i], strlen(bad[i]), &m, msg, sizeof msg);
    if (rc != KVDS_E_PROTO)
      fail_msg("'%s' gave %d", bad[i], rc);
    assert_int_equal(m.n, 99);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(b64_vectors),
      cmocka_unit_test(b64_round_trips),
      cmocka_unit_test(b64_rejects),
      cmocka_unit_test(prefix_ends),
      cmocka_unit_test(endpoints_good),
      cmocka_unit_test(endpoints_bad),
      cmocka_unit_test(int64_fields),
      cmocka_unit_test(range_replies),
      cmocka_unit_test(replies_never_trusted),
      cmocka_unit_test(error_replies),
      cmocka_unit_test(lease_replies),
      cmocka_unit_test(watch_messages),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
