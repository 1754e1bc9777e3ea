/*
 * test_proto.c — unit tests of the wire format: header and item
 * round-trips, checksums, and every rejection path of the decoders. Buffers
 * that feed decoders are malloc'ed at their exact size so that ASan turns
 * any read past the end into a failure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <xxhash.h>

#include "kvds/kvds.h"
#include "proto/proto.h"

/* Decoders must not touch their out-parameters on failure; tests fill them
 * with this byte first and check it is still there. */
#define POISON 0xA5

static struct kvds_proto_hdr sample_hdr(void) {
  struct kvds_proto_hdr h = {
      .magic = KVDS_PROTO_MAGIC,
      .version = KVDS_PROTO_VERSION,
      .opcode = KVDS_OP_GET,
      .flags = KVDS_PF_REPLY | KVDS_PF_INLINE,
      .req_id = 0x0123456789abcdefull,
      .status = KVDS_E_NOTFOUND,
      .count = 2,
      .meta_len = 2 * KVDS_PROTO_ITEM_LEN + 7,
      .arg = 0xdeadbeefu,
      .data_len = 0x000000ab12345678ull,
      .checksum = 0x11223344u,
  };
  return h;
}

/* Copies src into a malloc'ed buffer of exactly len bytes. */
static uint8_t *exact_copy(const void *src, size_t len) {
  /* malloc(0) gives a zero-byte block (or NULL, which the decoders accept
   * with a zero length), so even a 1-byte overread is caught. */
  if (len > PTRDIFF_MAX) { /* also tells GCC -O3 the size is sane */
    fail_msg("exact_copy of %zu bytes", len);
    return NULL;
  }
  uint8_t *p = malloc(len);

  if (len > 0) {
    assert_non_null(p);
    memcpy(p, src, len);
  }
  return p;
}

static void assert_poisoned(const void *p, size_t len) {
  const uint8_t *b = p;

  for (size_t i = 0; i < len; i++)
    assert_int_equal(b[i], POISON);
}

static void assert_hdr_equal(const struct kvds_proto_hdr *a,
                             const struct kvds_proto_hdr *b) {
  assert_int_equal(a->magic, b->magic);
  assert_int_equal(a->version, b->version);
  assert_int_equal(a->opcode, b->opcode);
  assert_int_equal(a->flags, b->flags);
  assert_true(a->req_id == b->req_id);
  assert_int_equal(a->status, b->status);
  assert_int_equal(a->count, b->count);
  assert_int_equal(a->meta_len, b->meta_len);
  assert_int_equal(a->arg, b->arg);
  assert_true(a->data_len == b->data_len);
  assert_int_equal(a->checksum, b->checksum);
}

/* Encodes h, lets `mutate` corrupt the bytes, decodes from an exact-size
 * buffer and returns the decoder's result. */
static int decode_mutated(const struct kvds_proto_hdr *h, size_t off,
                          const void *bytes, size_t n,
                          struct kvds_proto_hdr *out) {
  uint8_t buf[KVDS_PROTO_HDR_LEN];
  uint8_t *exact;
  int rc;

  kvds_proto_hdr_encode(h, buf);
  if (n > 0)
    memcpy(buf + off, bytes, n);
  exact = exact_copy(buf, sizeof(buf));
  memset(out, POISON, sizeof(*out));
  rc = kvds_proto_hdr_decode(exact, sizeof(buf), out);
  free(exact);
  return rc;
}

static int decode_hdr(const struct kvds_proto_hdr *h,
                      struct kvds_proto_hdr *out) {
  return decode_mutated(h, 0, NULL, 0, out);
}

static void test_op_names(void **state) {
  static const char *const names[] = {
      "HELLO",    "PING",   "CREATE",  "WRITE",    "SEAL",   "ABORT",
      "PUT",      "GET",    "RELEASE", "DELETE",   "EXISTS", "LOOKUP_PREFIX",
      "LIST",     "STAT",   "STATS",   "SHUTDOWN", "AUTH",   "CLUSTER",
      "ANNOUNCE", "LOCATE", "UCX_INFO"};

  assert_int_equal(sizeof(names) / sizeof(names[0]), KVDS_OP__MAX);
  for (unsigned op = 1; op <= KVDS_OP__MAX; op++)
    assert_string_equal(kvds_proto_op_name(op), names[op - 1]);
  assert_string_equal(kvds_proto_op_name(0), "?");
  assert_string_equal(kvds_proto_op_name(KVDS_OP__MAX + 1), "?");
  assert_string_equal(kvds_proto_op_name(255), "?");
  assert_string_equal(kvds_proto_op_name(~0u), "?");
}

static void test_hdr_layout(void **state) {
  struct kvds_proto_hdr h = sample_hdr();
  uint8_t buf[KVDS_PROTO_HDR_LEN];

  memset(buf, POISON, sizeof(buf));
  kvds_proto_hdr_encode(&h, buf);
  /* The magic spells "KVDS" on the wire. */
  assert_memory_equal(buf, "KVDS", 4);
  assert_int_equal(buf[4], KVDS_PROTO_VERSION);
  assert_int_equal(buf[5], KVDS_OP_GET);
  assert_int_equal(buf[6], 0x05);
  assert_int_equal(buf[7], 0x00);
  /* req_id little-endian: least significant byte first. */
  assert_int_equal(buf[8], 0xef);
  assert_int_equal(buf[15], 0x01);
  /* status -30001 = 0xffff8acf. */
  assert_int_equal(buf[16], 0xcf);
  assert_int_equal(buf[17], 0x8a);
  assert_int_equal(buf[18], 0xff);
  assert_int_equal(buf[19], 0xff);
  assert_int_equal(buf[20], 2);
  assert_int_equal(buf[24], 2 * KVDS_PROTO_ITEM_LEN + 7);
  assert_int_equal(buf[28], 0xef);
  assert_int_equal(buf[31], 0xde);
  assert_int_equal(buf[32], 0x78);
  assert_int_equal(buf[36], 0xab);
  assert_int_equal(buf[37], 0x00);
  assert_int_equal(buf[40], 0x44);
  assert_int_equal(buf[43], 0x11);
  /* Reserved is always written as zero. */
  for (int i = 44; i < 48; i++)
    assert_int_equal(buf[i], 0);
}

static void test_hdr_roundtrip(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;

  assert_int_equal(decode_hdr(&h, &out), 0);
  assert_hdr_equal(&h, &out);

  /* Extremes of every field that the decoder accepts. */
  h.opcode = KVDS_OP__MAX;
  h.flags = KVDS_PF_ALL;
  h.req_id = UINT64_MAX;
  h.status = INT32_MIN;
  h.count = KVDS_PROTO_COUNT_MAX;
  h.meta_len = KVDS_PROTO_META_MAX;
  h.arg = UINT32_MAX;
  h.data_len = KVDS_PROTO_DATA_MAX;
  h.checksum = UINT32_MAX;
  assert_int_equal(decode_hdr(&h, &out), 0);
  assert_hdr_equal(&h, &out);

  h.opcode = KVDS_OP_HELLO;
  h.flags = 0;
  h.req_id = 0;
  h.status = INT32_MAX;
  h.count = 0;
  h.meta_len = 0;
  h.arg = 0;
  h.data_len = 0;
  h.checksum = 0;
  assert_int_equal(decode_hdr(&h, &out), 0);
  assert_hdr_equal(&h, &out);

  h.status = -1;
  h.data_len = (1ull << 32) + 1; /* needs all 64 bits */
  assert_int_equal(decode_hdr(&h, &out), 0);
  assert_hdr_equal(&h, &out);
}

static void test_hdr_longer_buffer(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;
  uint8_t buf[KVDS_PROTO_HDR_LEN + 16];

  memset(buf, 0xff, sizeof(buf));
  kvds_proto_hdr_encode(&h, buf);
  assert_int_equal(kvds_proto_hdr_decode(buf, sizeof(buf), &out), 0);
  assert_hdr_equal(&h, &out);
}

static void test_hdr_short(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;
  uint8_t buf[KVDS_PROTO_HDR_LEN];

  kvds_proto_hdr_encode(&h, buf);
  for (size_t len = 0; len < KVDS_PROTO_HDR_LEN; len++) {
    uint8_t *exact = exact_copy(buf, len);

    memset(&out, POISON, sizeof(out));
    assert_int_equal(kvds_proto_hdr_decode(exact, len, &out), KVDS_E_PROTO);
    assert_poisoned(&out, sizeof(out));
    free(exact);
  }
}

static void test_hdr_bad_magic(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;

  h.magic = 0x5344564cu;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  assert_poisoned(&out, sizeof(out));
  h.magic = 0;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  /* Big-endian "KVDS" is not our magic. */
  h.magic = 0x4b564453u;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  /* Magic is checked before version. */
  h.version = 2;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
}

static void test_hdr_bad_version(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;
  static const uint8_t nonzero[4] = {0, 0, 0, 1};

  h.version = 0;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_VERSION);
  assert_poisoned(&out, sizeof(out));
  h.version = 2;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_VERSION);
  h.version = 255;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_VERSION);
  /* Version wins over every later check. */
  h.flags = 0x8000;
  h.opcode = 0;
  h.count = UINT32_MAX;
  h.meta_len = UINT32_MAX;
  h.data_len = UINT64_MAX;
  assert_int_equal(decode_mutated(&h, 44, nonzero, 4, &out), KVDS_E_VERSION);
  assert_poisoned(&out, sizeof(out));
}

static void test_hdr_reserved(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;

  for (size_t i = 44; i < 48; i++) {
    uint8_t one = 0x80;

    assert_int_equal(decode_mutated(&h, i, &one, 1, &out), KVDS_E_PROTO);
    assert_poisoned(&out, sizeof(out));
  }
  /* A framing error is reported even when the opcode is also bad. */
  h.opcode = 0;
  assert_int_equal(decode_mutated(&h, 44, "\x01", 1, &out), KVDS_E_PROTO);
}

static void test_hdr_flags(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;

  for (unsigned bit = 0; bit < 16; bit++) {
    h.flags = (uint16_t)(1u << bit);
    if (h.flags & KVDS_PF_ALL) {
      assert_int_equal(decode_hdr(&h, &out), 0);
      assert_int_equal(out.flags, h.flags);
    } else {
      assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
      assert_poisoned(&out, sizeof(out));
    }
  }
  h.flags = KVDS_PF_ALL | 0x200;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  h.flags = 0x200;
  h.opcode = KVDS_OP__MAX + 1;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
}

static void test_hdr_meta_len(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;

  h.meta_len = KVDS_PROTO_META_MAX;
  assert_int_equal(decode_hdr(&h, &out), 0);
  h.meta_len = KVDS_PROTO_META_MAX + 1;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  assert_poisoned(&out, sizeof(out));
  h.meta_len = UINT32_MAX;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
}

static void test_hdr_count(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;

  h.meta_len = KVDS_PROTO_META_MAX;
  h.count = KVDS_PROTO_COUNT_MAX;
  assert_int_equal(decode_hdr(&h, &out), 0);
  h.count = KVDS_PROTO_COUNT_MAX + 1;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  assert_poisoned(&out, sizeof(out));
  /* 0x06666667 * 40 wraps to 24 in 32 bits; must still be rejected. */
  h.count = 0x06666667u;
  h.meta_len = 64;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  h.count = UINT32_MAX;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
}

static void test_hdr_count_vs_meta(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;

  h.count = 2;
  h.meta_len = 2 * KVDS_PROTO_ITEM_LEN;
  assert_int_equal(decode_hdr(&h, &out), 0);
  h.meta_len = 2 * KVDS_PROTO_ITEM_LEN - 1;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  assert_poisoned(&out, sizeof(out));
  h.count = 1;
  h.meta_len = 0;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  h.count = KVDS_PROTO_COUNT_MAX;
  h.meta_len = KVDS_PROTO_COUNT_MAX * KVDS_PROTO_ITEM_LEN - 1;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  h.count = 0;
  h.meta_len = 0;
  assert_int_equal(decode_hdr(&h, &out), 0);
}

static void test_hdr_data_len(void **state) {
  struct kvds_proto_hdr h = sample_hdr(), out;

  h.data_len = KVDS_PROTO_DATA_MAX;
  assert_int_equal(decode_hdr(&h, &out), 0);
  assert_true(out.data_len == KVDS_PROTO_DATA_MAX);
  h.data_len = KVDS_PROTO_DATA_MAX + 1;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  assert_poisoned(&out, sizeof(out));
  h.data_len = UINT64_MAX;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
  /* data_len is a framing error, so it beats a bad opcode. */
  h.opcode = 0;
  assert_int_equal(decode_hdr(&h, &out), KVDS_E_PROTO);
}

static void test_hdr_badop(void **state) {
  static const uint8_t bad_ops[] = {0, KVDS_OP__MAX + 1, 200, 255};
  struct kvds_proto_hdr h = sample_hdr(), out;

  for (size_t i = 0; i < sizeof(bad_ops); i++) {
    h.opcode = bad_ops[i];
    h.req_id = 0xfeedface00000000ull + i;
    assert_int_equal(decode_hdr(&h, &out), KVDS_E_BADOP);
    /* Filled in so the caller can answer with the request id. */
    assert_hdr_equal(&h, &out);
  }
}

/* Builds a header+meta frame and seals it. */
static void build_frame(uint8_t *hdr, uint8_t *meta, size_t meta_len) {
  struct kvds_proto_hdr h = sample_hdr();

  h.count = 0;
  h.meta_len = (uint32_t)meta_len;
  for (size_t i = 0; i < meta_len; i++)
    meta[i] = (uint8_t)(i * 7 + 3);
  kvds_proto_hdr_encode(&h, hdr);
  kvds_proto_seal_frame(hdr, meta, meta_len);
}

static void test_checksum_definition(void **state) {
  uint8_t hdr[KVDS_PROTO_HDR_LEN], meta[100];
  uint8_t cat[KVDS_PROTO_HDR_LEN + sizeof(meta)];
  uint32_t stored;

  build_frame(hdr, meta, sizeof(meta));
  memcpy(&stored, hdr + 40, 4);
  /* Independent computation: one-shot XXH3 over a copy with the field
   * zeroed, then meta. */
  memcpy(cat, hdr, sizeof(hdr));
  memset(cat + 40, 0, 4);
  memcpy(cat + sizeof(hdr), meta, sizeof(meta));
  assert_int_equal(stored, (uint32_t)XXH3_64bits(cat, sizeof(cat)));
  assert_int_equal(kvds_proto_checksum(hdr, meta, sizeof(meta)), stored);
  /* The stored value does not feed the checksum. */
  memset(hdr + 40, 0x5a, 4);
  assert_int_equal(kvds_proto_checksum(hdr, meta, sizeof(meta)), stored);

  /* No meta: NULL is allowed. */
  build_frame(hdr, NULL, 0);
  memcpy(&stored, hdr + 40, 4);
  memcpy(cat, hdr, sizeof(hdr));
  memset(cat + 40, 0, 4);
  assert_int_equal(stored, (uint32_t)XXH3_64bits(cat, sizeof(hdr)));
  assert_int_equal(kvds_proto_verify(hdr, NULL, 0), 0);
}

static void test_checksum_bitflips(void **state) {
  uint8_t hdr[KVDS_PROTO_HDR_LEN], meta[2 * KVDS_PROTO_ITEM_LEN + 9];

  build_frame(hdr, meta, sizeof(meta));
  assert_int_equal(kvds_proto_verify(hdr, meta, sizeof(meta)), 0);
  for (size_t i = 0; i < sizeof(hdr) * 8; i++) {
    hdr[i / 8] ^= (uint8_t)(1u << (i % 8));
    assert_int_equal(kvds_proto_verify(hdr, meta, sizeof(meta)),
                     KVDS_E_CHECKSUM);
    hdr[i / 8] ^= (uint8_t)(1u << (i % 8));
  }
  for (size_t i = 0; i < sizeof(meta) * 8; i++) {
    meta[i / 8] ^= (uint8_t)(1u << (i % 8));
    assert_int_equal(kvds_proto_verify(hdr, meta, sizeof(meta)),
                     KVDS_E_CHECKSUM);
    meta[i / 8] ^= (uint8_t)(1u << (i % 8));
  }
  /* A truncated meta does not verify either. */
  assert_int_equal(kvds_proto_verify(hdr, meta, sizeof(meta) - 1),
                   KVDS_E_CHECKSUM);
  assert_int_equal(kvds_proto_verify(hdr, meta, sizeof(meta)), 0);
}

static struct kvds_proto_item sample_item(uint32_t klen) {
  struct kvds_proto_item it = {
      .status = KVDS_E_TIMEOUT,
      .klen = klen,
      .a = 0x0102030405060708ull,
      .b = UINT64_MAX,
      .c = 0,
      .d = 0x8000000000000000ull,
  };
  return it;
}

static void assert_item_equal(const struct kvds_proto_item *a,
                              const struct kvds_proto_item *b) {
  assert_int_equal(a->status, b->status);
  assert_int_equal(a->klen, b->klen);
  assert_true(a->a == b->a);
  assert_true(a->b == b->b);
  assert_true(a->c == b->c);
  assert_true(a->d == b->d);
}

static void test_item_roundtrip(void **state) {
  uint8_t key[KVDS_PROTO_KEY_MAX];
  struct kvds_proto_item in0 = sample_item(0);
  struct kvds_proto_item in1 = sample_item(KVDS_PROTO_KEY_MAX);
  struct kvds_proto_item in2 = sample_item(3), out;
  size_t total = kvds_proto_item_size(0) +
                 kvds_proto_item_size(KVDS_PROTO_KEY_MAX) +
                 kvds_proto_item_size(3);
  uint8_t *buf = malloc(total), *meta;
  const uint8_t *k;
  size_t n = 0, pos = 0;

  assert_non_null(buf);
  for (size_t i = 0; i < sizeof(key); i++)
    key[i] = (uint8_t)(i ^ 0x5c);
  in0.status = 0;
  in2.status = INT32_MIN;
  n += kvds_proto_item_encode(&in0, NULL, buf + n);
  assert_int_equal(n, KVDS_PROTO_ITEM_LEN);
  n += kvds_proto_item_encode(&in1, key, buf + n);
  assert_int_equal(n, 2 * KVDS_PROTO_ITEM_LEN + KVDS_PROTO_KEY_MAX);
  n += kvds_proto_item_encode(&in2, "abc", buf + n);
  assert_int_equal(n, total);
  meta = exact_copy(buf, total);

  assert_int_equal(kvds_proto_item_decode(meta, total, &pos, &out, &k), 0);
  assert_item_equal(&in0, &out);
  assert_null(k);
  assert_int_equal(pos, KVDS_PROTO_ITEM_LEN);

  assert_int_equal(kvds_proto_item_decode(meta, total, &pos, &out, &k), 0);
  assert_item_equal(&in1, &out);
  /* The key points into meta; nothing is copied. */
  assert_ptr_equal(k, meta + 2 * KVDS_PROTO_ITEM_LEN);
  assert_memory_equal(k, key, KVDS_PROTO_KEY_MAX);
  assert_int_equal(pos, 2 * KVDS_PROTO_ITEM_LEN + KVDS_PROTO_KEY_MAX);

  assert_int_equal(kvds_proto_item_decode(meta, total, &pos, &out, &k), 0);
  assert_item_equal(&in2, &out);
  assert_memory_equal(k, "abc", 3);
  assert_int_equal(pos, total);

  /* At the end: nothing more to decode. */
  assert_int_equal(kvds_proto_item_decode(meta, total, &pos, &out, &k),
                   KVDS_E_PROTO);
  assert_int_equal(pos, total);

  assert_int_equal(kvds_proto_meta_validate(meta, total, 3), 0);
  free(meta);
  free(buf);
}

/* Decodes the item at meta[pos] from an exact-size buffer and expects a
 * rejection that leaves every out-parameter untouched. */
static void expect_item_reject(const uint8_t *src, size_t len, size_t pos) {
  uint8_t *meta = exact_copy(src, len);
  struct kvds_proto_item it;
  const uint8_t *k;
  size_t p = pos;

  memset(&it, POISON, sizeof(it));
  memset(&k, POISON, sizeof(k));
  assert_int_equal(kvds_proto_item_decode(meta, len, &p, &it, &k),
                   KVDS_E_PROTO);
  assert_int_equal(p, pos);
  assert_poisoned(&it, sizeof(it));
  assert_poisoned(&k, sizeof(k));
  free(meta);
}

static int validate_exact(const uint8_t *src, size_t len, uint32_t count) {
  uint8_t *meta = exact_copy(src, len);
  int rc = kvds_proto_meta_validate(meta, len, count);

  free(meta);
  return rc;
}

static void test_item_key_too_long(void **state) {
  static const uint8_t key[KVDS_PROTO_KEY_MAX + 1];
  size_t len = kvds_proto_item_size(sizeof(key));
  uint8_t *buf = malloc(len);
  struct kvds_proto_item it = sample_item(sizeof(key));

  assert_non_null(buf);
  /* The encoder does not police klen; the decoder must. */
  assert_int_equal(kvds_proto_item_encode(&it, key, buf), len);
  expect_item_reject(buf, len, 0);
  assert_int_equal(validate_exact(buf, len, 1), KVDS_E_PROTO);

  /* A klen that would wrap a 32-bit pos + klen. */
  memset(buf + 4, 0xff, 4);
  expect_item_reject(buf, len, 0);
  free(buf);
}

static void test_item_truncated(void **state) {
  static const uint32_t klens[] = {0, 1, 17, KVDS_PROTO_KEY_MAX};

  for (size_t k = 0; k < sizeof(klens) / sizeof(klens[0]); k++) {
    struct kvds_proto_item it = sample_item(klens[k]), out;
    size_t size = kvds_proto_item_size(klens[k]);
    /* The item sits after a 5-byte prefix so pos != 0 is covered too. */
    size_t full = 5 + size, pos;
    uint8_t *buf = malloc(full), *meta;
    const uint8_t *key;

    assert_non_null(buf);
    memset(buf, 'k', full);
    kvds_proto_item_encode(&it, buf + 5 + KVDS_PROTO_ITEM_LEN, buf + 5);
    for (size_t n = 0; n < full; n++)
      expect_item_reject(buf, n, 5);

    meta = exact_copy(buf, full);
    pos = 5;
    assert_int_equal(kvds_proto_item_decode(meta, full, &pos, &out, &key), 0);
    assert_item_equal(&it, &out);
    assert_int_equal(pos, full);
    free(meta);
    free(buf);
  }
}

static void test_item_bad_pos(void **state) {
  uint8_t buf[KVDS_PROTO_ITEM_LEN];
  struct kvds_proto_item it = sample_item(0);

  kvds_proto_item_encode(&it, NULL, buf);
  expect_item_reject(buf, sizeof(buf), sizeof(buf) + 1);
  expect_item_reject(buf, sizeof(buf), SIZE_MAX);
  expect_item_reject(buf, sizeof(buf), SIZE_MAX - KVDS_PROTO_ITEM_LEN + 1);
  expect_item_reject(buf, sizeof(buf), 1);
}

/* Three items with keys "", "k1" and "key-3" (size 40 + 42 + 45). */
static size_t build_meta(uint8_t *out) {
  static const char *const keys[] = {"", "k1", "key-3"};
  size_t n = 0;

  for (size_t i = 0; i < 3; i++) {
    struct kvds_proto_item it = sample_item((uint32_t)strlen(keys[i]));

    it.a = i;
    n += kvds_proto_item_encode(&it, keys[i], out + n);
  }
  return n;
}

static void test_meta_validate(void **state) {
  uint8_t buf[256];
  size_t len = build_meta(buf);

  assert_int_equal(len, 3 * KVDS_PROTO_ITEM_LEN + 7);
  assert_int_equal(validate_exact(buf, len, 3), 0);
  if (len >= sizeof buf) { /* also tells GCC -O3 that buf[len] is in bounds */
    fail();
    return;
  }

  /* Trailing garbage after the last item. */
  buf[len] = 0;
  assert_int_equal(validate_exact(buf, len + 1, 3), KVDS_E_PROTO);
  /* Fewer items declared than present is also trailing garbage. */
  assert_int_equal(validate_exact(buf, len, 2), KVDS_E_PROTO);
  assert_int_equal(validate_exact(buf, len, 0), KVDS_E_PROTO);
  /* More items declared than present. */
  assert_int_equal(validate_exact(buf, len, 4), KVDS_E_PROTO);
  assert_int_equal(validate_exact(buf, len, UINT32_MAX), KVDS_E_PROTO);
  /* Last item cut short. */
  assert_int_equal(validate_exact(buf, len - 1, 3), KVDS_E_PROTO);
  /* A middle item whose klen eats into the next one misaligns the walk. */
  buf[KVDS_PROTO_ITEM_LEN + 4] = 3;
  assert_int_equal(validate_exact(buf, len, 3), KVDS_E_PROTO);
  buf[KVDS_PROTO_ITEM_LEN + 4] = 2;
  assert_int_equal(validate_exact(buf, len, 3), 0);
}

static void test_meta_validate_empty(void **state) {
  uint8_t byte = 0;

  assert_int_equal(kvds_proto_meta_validate(NULL, 0, 0), 0);
  assert_int_equal(validate_exact(&byte, 0, 0), 0);
  assert_int_equal(validate_exact(&byte, 1, 0), KVDS_E_PROTO);
  assert_int_equal(kvds_proto_meta_validate(NULL, 0, 1), KVDS_E_PROTO);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_op_names),
      cmocka_unit_test(test_hdr_layout),
      cmocka_unit_test(test_hdr_roundtrip),
      cmocka_unit_test(test_hdr_longer_buffer),
      cmocka_unit_test(test_hdr_short),
      cmocka_unit_test(test_hdr_bad_magic),
      cmocka_unit_test(test_hdr_bad_version),
      cmocka_unit_test(test_hdr_reserved),
      cmocka_unit_test(test_hdr_flags),
      cmocka_unit_test(test_hdr_meta_len),
      cmocka_unit_test(test_hdr_count),
      cmocka_unit_test(test_hdr_count_vs_meta),
      cmocka_unit_test(test_hdr_data_len),
      cmocka_unit_test(test_hdr_badop),
      cmocka_unit_test(test_checksum_definition),
      cmocka_unit_test(test_checksum_bitflips),
      cmocka_unit_test(test_item_roundtrip),
      cmocka_unit_test(test_item_key_too_long),
      cmocka_unit_test(test_item_truncated),
      cmocka_unit_test(test_item_bad_pos),
      cmocka_unit_test(test_meta_validate),
      cmocka_unit_test(test_meta_validate_empty),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
