/*
 * fuzz_etcd.c — libFuzzer target for the etcd client's pure parts in
 * src/cluster/etcd.c: every reply parser (range, header, grant, keepalive,
 * error, one watch-stream line), base64 and endpoint lists. The first byte
 * picks the parser, the rest is the untrusted body. ASan/UBSan catch
 * over-reads and undefined arithmetic; CHECK catches broken properties.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/etcd.h"
#include "kvds/kvds.h"

/* Not assert(): the fuzzer must stop on a broken invariant in any build. */
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      abort();                                                                 \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A parsed key/value must lie in memory the parser owns: touch every byte. */
static unsigned touch(const struct kvds_iov *v) {
  unsigned s = 0;
  for (size_t i = 0; i < v->len; i++)
    s += ((const uint8_t *)v->base)[i];
  return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  const char *body = (const char *)data + 1;
  size_t len = size - 1;
  char msg[256];
  volatile unsigned sink = 0;
  switch (data[0] % 8) {
  case 0: {
    struct kvds_etcd_range r = {0};
    if (!kvds__etcd_parse_range(body, len, &r, msg, sizeof msg))
      for (size_t i = 0; i < r.n; i++)
        sink += touch(&r.kvs[i].key) + touch(&r.kvs[i].value);
    kvds_etcd_range_free(&r);
    break;
  }
  case 1: {
    int64_t rev = 0, del = 0;
    (void)kvds__etcd_parse_header(body, len, &rev, &del, msg, sizeof msg);
    break;
  }
  case 2: {
    int64_t id = 0, ttl = 0;
    if (!kvds__etcd_parse_grant(body, len, &id, &ttl, msg, sizeof msg))
      CHECK(id != 0 && ttl > 0);
    break;
  }
  case 3: {
    int64_t ttl = 0;
    int rc = kvds__etcd_parse_keepalive(body, len, &ttl, msg, sizeof msg);
    CHECK(rc || ttl > 0);
    break;
  }
  case 4:
    CHECK(kvds__etcd_parse_error(body, len, msg, sizeof msg) != 0);
    break;
  case 5: {
    struct kvds__etcd_watch_msg m;
    memset(&m, 0, sizeof m);
    if (!kvds__etcd_parse_watch(body, len, &m, msg, sizeof msg))
      for (size_t i = 0; i < m.n; i++)
        sink += touch(&m.events[i].kv.key) + touch(&m.events[i].kv.value);
    kvds__etcd_watch_msg_free(&m);
    break;
  }
  case 6: {
    /* decode → encode gives the input back (only canonical input decodes) */
    uint8_t out[4096];
    size_t n = 0;
    if (!kvds__etcd_b64_decode(body, len, out, sizeof out, &n)) {
      char *enc = malloc(kvds__etcd_b64_len(n) + 1);
      CHECK(enc);
      CHECK(!kvds__etcd_b64_encode(out, n, enc, kvds__etcd_b64_len(n) + 1));
      CHECK(strlen(enc) == len && memcmp(enc, body, len) == 0);
      free(enc);
    }
    break;
  }
  default: {
    char *s = malloc(len + 1);
    CHECK(s);
    memcpy(s, body, len);
    s[len] = 0;
    struct kvds__etcd_ep *eps = NULL;
    size_t n = 0;
    if (!kvds__etcd_parse_endpoints(s, &eps, &n)) {
      CHECK(n >= 1);
      for (size_t i = 0; i < n; i++)
        CHECK(strncmp(eps[i].url, "http://", 7) == 0);
    }
    free(eps);
    free(s);
    break;
  }
  }
  (void)sink;
  return 0;
}
