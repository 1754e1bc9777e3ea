/*
 * frame.c — encoding, decoding and checksumming of kvds frames (see proto.h
 * for the layout). Every decoder treats its input as hostile: lengths are
 * checked against what remains before anything is read, and nothing here
 * asserts on bytes that came from a peer.
 */
#include "proto/proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* XXH3_state_t is only a complete type with static linking enabled; we want
 * it on the stack so checksumming a frame needs no allocation and no copy. */
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "common/array.h"
#include "common/util.h"
#include "kvds/kvds.h"

/* Byte offsets inside the 48-byte header. */
enum {
  HDR_MAGIC = 0,
  HDR_VERSION = 4,
  HDR_OPCODE = 5,
  HDR_FLAGS = 6,
  HDR_REQ_ID = 8,
  HDR_STATUS = 16,
  HDR_COUNT = 20,
  HDR_META_LEN = 24,
  HDR_ARG = 28,
  HDR_DATA_LEN = 32,
  HDR_CHECKSUM = 40,
  HDR_RESERVED = 44
};

/* Byte offsets inside the 40-byte item header. */
enum {
  ITEM_STATUS = 0,
  ITEM_KLEN = 4,
  ITEM_A = 8,
  ITEM_B = 16,
  ITEM_C = 24,
  ITEM_D = 32
};

_Static_assert(HDR_RESERVED + 4 == KVDS_PROTO_HDR_LEN, "header layout");
_Static_assert(ITEM_D + 8 == KVDS_PROTO_ITEM_LEN, "item layout");

static const char *const op_names[KVDS_OP__MAX + 1] = {
    [KVDS_OP_HELLO] = "HELLO",       [KVDS_OP_PING] = "PING",
    [KVDS_OP_CREATE] = "CREATE",     [KVDS_OP_WRITE] = "WRITE",
    [KVDS_OP_SEAL] = "SEAL",         [KVDS_OP_ABORT] = "ABORT",
    [KVDS_OP_PUT] = "PUT",           [KVDS_OP_GET] = "GET",
    [KVDS_OP_RELEASE] = "RELEASE",   [KVDS_OP_DELETE] = "DELETE",
    [KVDS_OP_EXISTS] = "EXISTS",     [KVDS_OP_LOOKUP_PREFIX] = "LOOKUP_PREFIX",
    [KVDS_OP_LIST] = "LIST",         [KVDS_OP_STAT] = "STAT",
    [KVDS_OP_STATS] = "STATS",       [KVDS_OP_SHUTDOWN] = "SHUTDOWN",
    [KVDS_OP_AUTH] = "AUTH",         [KVDS_OP_CLUSTER] = "CLUSTER",
    [KVDS_OP_ANNOUNCE] = "ANNOUNCE", [KVDS_OP_LOCATE] = "LOCATE",
    [KVDS_OP_UCX_INFO] = "UCX_INFO",
};

/* Signed fields travel as their two's-complement bit pattern. */
static void put_i32(uint8_t *p, int32_t v) {
  kvds_put_u32(p, (uint32_t)v);
}

static int32_t get_i32(const uint8_t *p) {
  int32_t v;
  uint32_t u = kvds_get_u32(p);

  /* memcpy rather than a cast: converting an out-of-range unsigned value to
   * a signed type is implementation-defined. */
  memcpy(&v, &u, sizeof(v));
  return v;
}

const char *kvds_proto_op_name(unsigned op) {
  if (op > KVDS_OP__MAX || op_names[op] == NULL)
    return "?";
  return op_names[op];
}

void kvds_proto_hdr_encode(const struct kvds_proto_hdr *h, uint8_t *out) {
  kvds_put_u32(out + HDR_MAGIC, h->magic);
  out[HDR_VERSION] = h->version;
  out[HDR_OPCODE] = h->opcode;
  kvds_put_u16(out + HDR_FLAGS, h->flags);
  kvds_put_u64(out + HDR_REQ_ID, h->req_id);
  put_i32(out + HDR_STATUS, h->status);
  kvds_put_u32(out + HDR_COUNT, h->count);
  kvds_put_u32(out + HDR_META_LEN, h->meta_len);
  kvds_put_u32(out + HDR_ARG, h->arg);
  kvds_put_u64(out + HDR_DATA_LEN, h->data_len);
  kvds_put_u32(out + HDR_CHECKSUM, h->checksum);
  kvds_put_u32(out + HDR_RESERVED, 0);
}

int kvds_proto_hdr_decode(const uint8_t *buf, size_t len,
                          struct kvds_proto_hdr *h) {
  struct kvds_proto_hdr t;
  int rc = KVDS_E_PROTO;

  if (len < KVDS_PROTO_HDR_LEN)
    goto out;

  t.magic = kvds_get_u32(buf + HDR_MAGIC);
  t.version = buf[HDR_VERSION];
  t.opcode = buf[HDR_OPCODE];
  t.flags = kvds_get_u16(buf + HDR_FLAGS);
  t.req_id = kvds_get_u64(buf + HDR_REQ_ID);
  t.status = get_i32(buf + HDR_STATUS);
  t.count = kvds_get_u32(buf + HDR_COUNT);
  t.meta_len = kvds_get_u32(buf + HDR_META_LEN);
  t.arg = kvds_get_u32(buf + HDR_ARG);
  t.data_len = kvds_get_u64(buf + HDR_DATA_LEN);
  t.checksum = kvds_get_u32(buf + HDR_CHECKSUM);

  if (t.magic != KVDS_PROTO_MAGIC)
    goto out;
  /* Version is checked before the rest so a peer speaking another version
   * gets a precise error even if its header layout differs. */
  if (t.version != KVDS_PROTO_VERSION) {
    rc = KVDS_E_VERSION;
    goto out;
  }
  if (kvds_get_u32(buf + HDR_RESERVED) != 0)
    goto out;
  if ((t.flags & ~KVDS_PF_ALL) != 0)
    goto out;
  if (t.meta_len > KVDS_PROTO_META_MAX)
    goto out;
  if (t.count > KVDS_PROTO_COUNT_MAX)
    goto out;
  /* 64-bit product: count * 40 can exceed UINT32_MAX for hostile counts. */
  if ((uint64_t)t.count * KVDS_PROTO_ITEM_LEN > t.meta_len)
    goto out;
  if (t.data_len > KVDS_PROTO_DATA_MAX)
    goto out;

  /* Past this point the framing is sound, so the caller can skip the frame
   * and answer it even when the opcode is unknown. */
  *h = t;
  rc = 0;
  if (t.opcode < 1 || t.opcode > KVDS_OP__MAX)
    rc = KVDS_E_BADOP;
out:
  return rc;
}

uint32_t kvds_proto_checksum(const uint8_t *hdr, const uint8_t *meta,
                             size_t meta_len) {
  static const uint8_t zero[4];
  XXH3_state_t st;

  /* Streaming over the header in three pieces hashes exactly the bytes of
   * "header with checksum zeroed, then meta" without copying either. */
  XXH3_INITSTATE(&st);
  XXH3_64bits_reset(&st);
  XXH3_64bits_update(&st, hdr, HDR_CHECKSUM);
  XXH3_64bits_update(&st, zero, sizeof(zero));
  XXH3_64bits_update(&st, hdr + HDR_RESERVED,
                     KVDS_PROTO_HDR_LEN - HDR_RESERVED);
  if (meta_len > 0)
    XXH3_64bits_update(&st, meta, meta_len);
  return (uint32_t)XXH3_64bits_digest(&st);
}

void kvds_proto_seal_frame(uint8_t *hdr, const uint8_t *meta, size_t meta_len) {
  kvds_put_u32(hdr + HDR_CHECKSUM, kvds_proto_checksum(hdr, meta, meta_len));
}

int kvds_proto_verify(const uint8_t *hdr, const uint8_t *meta,
                      size_t meta_len) {
  if (kvds_get_u32(hdr + HDR_CHECKSUM) !=
      kvds_proto_checksum(hdr, meta, meta_len))
    return KVDS_E_CHECKSUM;
  return 0;
}

size_t kvds_proto_item_encode(const struct kvds_proto_item *it, const void *key,
                              uint8_t *out) {
  put_i32(out + ITEM_STATUS, it->status);
  kvds_put_u32(out + ITEM_KLEN, it->klen);
  kvds_put_u64(out + ITEM_A, it->a);
  kvds_put_u64(out + ITEM_B, it->b);
  kvds_put_u64(out + ITEM_C, it->c);
  kvds_put_u64(out + ITEM_D, it->d);
  /* memcpy with a NULL source is undefined even for zero bytes. */
  if (it->klen > 0)
    memcpy(out + KVDS_PROTO_ITEM_LEN, key, it->klen);
  return kvds_proto_item_size(it->klen);
}

int kvds_proto_item_decode(const uint8_t *meta, size_t meta_len, size_t *pos,
                           struct kvds_proto_item *it, const uint8_t **key) {
  const uint8_t *p;
  size_t avail;
  uint32_t klen;
  int rc = KVDS_E_PROTO;

  /* Subtractions only, never pos + n, so a huge *pos cannot wrap around. */
  if (*pos > meta_len)
    goto out;
  avail = meta_len - *pos;
  if (avail < KVDS_PROTO_ITEM_LEN)
    goto out;
  p = meta + *pos;
  klen = kvds_get_u32(p + ITEM_KLEN);
  if (klen > KVDS_PROTO_KEY_MAX)
    goto out;
  if (avail - KVDS_PROTO_ITEM_LEN < klen)
    goto out;

  it->status = get_i32(p + ITEM_STATUS);
  it->klen = klen;
  it->a = kvds_get_u64(p + ITEM_A);
  it->b = kvds_get_u64(p + ITEM_B);
  it->c = kvds_get_u64(p + ITEM_C);
  it->d = kvds_get_u64(p + ITEM_D);
  *key = klen > 0 ? p + KVDS_PROTO_ITEM_LEN : NULL;
  *pos += kvds_proto_item_size(klen);
  rc = 0;
out:
  return rc;
}

int kvds_proto_meta_validate(const uint8_t *meta, size_t meta_len,
                             uint32_t count) {
  struct kvds_proto_item it;
  const uint8_t *key;
  size_t pos = 0;
  uint32_t i;
  int rc = KVDS_E_PROTO;

  /* Cheap bound first so a hostile count cannot make us loop for long. */
  if ((uint64_t)count * KVDS_PROTO_ITEM_LEN > meta_len)
    goto out;
  for (i = 0; i < count; i++) {
    if (kvds_proto_item_decode(meta, meta_len, &pos, &it, &key) != 0)
      goto out;
  }
  /* Trailing bytes would be silently ignored by item walkers; reject them. */
  if (pos != meta_len)
    goto out;
  rc = 0;
out:
  return rc;
}

/* ---- frame builder ------------------------------------------------------ */

/* First allocation of a builder; doubled as needed. */
#define BUILD_MIN 512

void kvds_proto_build_init(struct kvds_proto_builder *b) {
  memset(b, 0, sizeof *b);
  b->len = KVDS_PROTO_HDR_LEN;
}

void kvds_proto_build_reset(struct kvds_proto_builder *b) {
  b->len = KVDS_PROTO_HDR_LEN;
  b->count = 0;
  b->oom = 0;
}

/* Room for `more` bytes after len; 0 or -ENOMEM (sticky). */
static int build_reserve(struct kvds_proto_builder *b, size_t more) {
  if (b->oom)
    return -ENOMEM;
  if (more > SIZE_MAX - b->len ||
      KVDS_ARRAY_GROW(b->buf, b->cap, b->len + more, BUILD_MIN)) {
    b->oom = 1;
    return -ENOMEM;
  }
  return 0;
}

int kvds_proto_build_item(struct kvds_proto_builder *b,
                          const struct kvds_proto_item *it, const void *key) {
  if (build_reserve(b, kvds_proto_item_size(it->klen)))
    return -ENOMEM;
  b->len += kvds_proto_item_encode(it, key, b->buf + b->len);
  b->count++;
  return 0;
}

int kvds_proto_build_finish(struct kvds_proto_builder *b,
                            struct kvds_proto_hdr *h) {
  /* A frame with no items has no buffer yet: the header needs one. */
  if (build_reserve(b, 0))
    return -ENOMEM;
  h->magic = KVDS_PROTO_MAGIC;
  h->version = KVDS_PROTO_VERSION;
  h->count = b->count;
  h->meta_len = (uint32_t)(b->len - KVDS_PROTO_HDR_LEN);
  kvds_proto_hdr_encode(h, b->buf);
  kvds_proto_seal_frame(b->buf, b->buf + KVDS_PROTO_HDR_LEN, h->meta_len);
  return 0;
}

void kvds_proto_build_free(struct kvds_proto_builder *b) {
  free(b->buf);
  kvds_proto_build_init(b);
}
