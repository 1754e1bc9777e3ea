/*
 * fuzz_frame.c — libFuzzer target for the wire-format decoders in
 * src/proto/frame.c. Arbitrary bytes are treated as a frame (header, then
 * meta); every decoder runs on them and the properties that must hold for
 * any input are checked. ASan/UBSan catch out-of-bounds reads and undefined
 * arithmetic; CHECK catches logic errors.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvds/kvds.h"
#include "proto/proto.h"

/* Not assert(): release builds define NDEBUG, and the fuzzer must still
 * stop on a broken invariant. */
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      abort();                                                                 \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int hdr_equal(const struct kvds_proto_hdr *a,
                     const struct kvds_proto_hdr *b) {
  return a->magic == b->magic && a->version == b->version &&
         a->opcode == b->opcode && a->flags == b->flags &&
         a->req_id == b->req_id && a->status == b->status &&
         a->count == b->count && a->meta_len == b->meta_len &&
         a->arg == b->arg && a->data_len == b->data_len &&
         a->checksum == b->checksum;
}

static uint64_t le(const uint8_t *p, size_t n) {
  uint64_t v = 0;

  for (size_t i = n; i-- > 0;)
    v = v << 8 | p[i];
  return v;
}

/* Independent oracle for the header verdict, in the documented order. */
static int expected_hdr_rc(const uint8_t *b, size_t size) {
  uint64_t count, meta_len;

  if (size < KVDS_PROTO_HDR_LEN || le(b, 4) != KVDS_PROTO_MAGIC)
    return KVDS_E_PROTO;
  if (b[4] != KVDS_PROTO_VERSION)
    return KVDS_E_VERSION;
  count = le(b + 20, 4);
  meta_len = le(b + 24, 4);
  if (le(b + 44, 4) != 0 || (le(b + 6, 2) & ~(uint64_t)KVDS_PF_ALL) != 0 ||
      meta_len > KVDS_PROTO_META_MAX || count > KVDS_PROTO_COUNT_MAX ||
      count * KVDS_PROTO_ITEM_LEN > meta_len ||
      le(b + 32, 8) > KVDS_PROTO_DATA_MAX)
    return KVDS_E_PROTO;
  if (b[5] < 1 || b[5] > KVDS_OP__MAX)
    return KVDS_E_BADOP;
  return 0;
}

/* Whatever the verdict, a decoded header obeys the limits it was checked
 * against, and encoding it reproduces the input bytes exactly. */
static void check_header(const uint8_t *data, const struct kvds_proto_hdr *h,
                         int rc) {
  uint8_t enc[KVDS_PROTO_HDR_LEN];
  struct kvds_proto_hdr again;

  CHECK(h->magic == KVDS_PROTO_MAGIC);
  CHECK(h->version == KVDS_PROTO_VERSION);
  CHECK((h->flags & ~KVDS_PF_ALL) == 0);
  CHECK(h->meta_len <= KVDS_PROTO_META_MAX);
  CHECK(h->count <= KVDS_PROTO_COUNT_MAX);
  CHECK((uint64_t)h->count * KVDS_PROTO_ITEM_LEN <= h->meta_len);
  CHECK(h->data_len <= KVDS_PROTO_DATA_MAX);
  CHECK((rc == 0) == (h->opcode >= 1 && h->opcode <= KVDS_OP__MAX));
  CHECK((rc == 0) == (kvds_proto_op_name(h->opcode)[0] != '?'));

  kvds_proto_hdr_encode(h, enc);
  CHECK(memcmp(enc, data, KVDS_PROTO_HDR_LEN) == 0);
  CHECK(kvds_proto_hdr_decode(enc, sizeof(enc), &again) == rc);
  CHECK(hdr_equal(h, &again));
}

/* Checksum properties over the real header and meta bytes. */
static void check_checksum(const uint8_t *hdr, const uint8_t *meta,
                           size_t meta_len) {
  uint8_t sealed[KVDS_PROTO_HDR_LEN];
  uint32_t stored, sum = kvds_proto_checksum(hdr, meta, meta_len);
  int rc = kvds_proto_verify(hdr, meta, meta_len);

  CHECK(rc == 0 || rc == KVDS_E_CHECKSUM);
  memcpy(&stored, hdr + 40, sizeof(stored));
  CHECK((rc == 0) == (stored == sum));

  memcpy(sealed, hdr, sizeof(sealed));
  kvds_proto_seal_frame(sealed, meta, meta_len);
  CHECK(kvds_proto_verify(sealed, meta, meta_len) == 0);
  CHECK(kvds_proto_checksum(sealed, meta, meta_len) == sum);
  /* Sealing touches only the checksum field. */
  CHECK(memcmp(sealed, hdr, 40) == 0);
  CHECK(memcmp(sealed + 44, hdr + 44, 4) == 0);
}

/* Independent oracle: does a well-formed item start at meta[pos]? */
static int item_fits(const uint8_t *meta, size_t meta_len, size_t pos) {
  const uint8_t *p;
  uint32_t klen;

  if (pos > meta_len || meta_len - pos < KVDS_PROTO_ITEM_LEN)
    return 0;
  p = meta + pos + 4;
  klen = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
  return klen <= KVDS_PROTO_KEY_MAX &&
         meta_len - pos - KVDS_PROTO_ITEM_LEN >= klen;
}

/* Walks up to `count` items from meta[start]; returns how many decoded and
 * leaves the final position in *end. */
static uint32_t walk_items(const uint8_t *meta, size_t meta_len, size_t start,
                           uint32_t count, size_t *end) {
  uint8_t enc[KVDS_PROTO_ITEM_LEN + KVDS_PROTO_KEY_MAX];
  size_t pos = start;
  uint32_t i;

  for (i = 0; i < count; i++) {
    struct kvds_proto_item it, saved_it;
    const uint8_t *key = (const uint8_t *)&saved_it, *saved_key;
    size_t before = pos;
    int rc, fits;

    fits = item_fits(meta, meta_len, pos);
    memset(&it, 0x5a, sizeof(it));
    saved_it = it;
    saved_key = key;
    rc = kvds_proto_item_decode(meta, meta_len, &pos, &it, &key);
    CHECK(rc == 0 || rc == KVDS_E_PROTO);
    CHECK((rc == 0) == fits);
    if (rc != 0) {
      /* Failure writes nothing. */
      CHECK(pos == before);
      CHECK(memcmp(&it, &saved_it, sizeof(it)) == 0);
      CHECK(key == saved_key);
      break;
    }
    CHECK(it.klen <= KVDS_PROTO_KEY_MAX);
    CHECK(pos - before == kvds_proto_item_size(it.klen));
    CHECK(pos <= meta_len);
    if (it.klen == 0)
      CHECK(key == NULL);
    else
      CHECK(key == meta + before + KVDS_PROTO_ITEM_LEN);
    /* Re-encoding gives back the same bytes. */
    CHECK(kvds_proto_item_encode(&it, key, enc) == pos - before);
    CHECK(memcmp(enc, meta + before, pos - before) == 0);
  }
  *end = pos;
  return i;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct kvds_proto_hdr h, saved;
  const uint8_t *meta;
  size_t meta_len, end;
  uint32_t n;
  int rc, vrc;

  memset(&h, 0x5a, sizeof(h));
  saved = h;
  rc = kvds_proto_hdr_decode(data, size, &h);
  CHECK(rc == expected_hdr_rc(data, size));
  /* Out-parameter untouched on a framing error. */
  if (rc != 0 && rc != KVDS_E_BADOP)
    CHECK(hdr_equal(&h, &saved));

  /* The item decoder must cope with any bytes at any position, framed or
   * not; fuzz it directly over the whole input too. */
  if (size > 0) {
    size_t start = data[0] % (size + 2);
    walk_items(data, size, start, UINT32_MAX, &end);
    CHECK(end <= size || end == start);
  }

  if (rc != 0 && rc != KVDS_E_BADOP)
    return 0;
  check_header(data, &h, rc);

  /* The meta that follows the header; use what is there even when the
   * input is shorter than meta_len, as a reader with a partial frame might
   * (but only ever as many bytes as exist). */
  meta = data + KVDS_PROTO_HDR_LEN;
  meta_len = size - KVDS_PROTO_HDR_LEN;
  if (meta_len > h.meta_len)
    meta_len = h.meta_len;
  check_checksum(data, meta, meta_len);

  vrc = kvds_proto_meta_validate(meta, meta_len, h.count);
  CHECK(vrc == 0 || vrc == KVDS_E_PROTO);
  n = walk_items(meta, meta_len, 0, h.count, &end);
  CHECK(end <= meta_len);
  /* validate accepts exactly when all items decode and fill meta. */
  CHECK((vrc == 0) == (n == h.count && end == meta_len));
  return 0;
}
