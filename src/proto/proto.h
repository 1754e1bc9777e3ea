/*
 * proto.h — the kvds wire format (leaf module: depends only on libc and
 * xxhash). Pure functions over byte buffers; nothing here trusts a length.
 *
 * A frame is
 *
 *   header (48 bytes, little-endian)
 *     0  u32 magic     KVDS_PROTO_MAGIC
 *     4  u8  version   KVDS_PROTO_VERSION
 *     5  u8  opcode    enum kvds_op
 *     6  u16 flags     KVDS_PF_*
 *     8  u64 req_id    echoed in the reply
 *    16  i32 status    reply: 0 or an error code for the whole request
 *    20  u32 count     number of items in meta
 *    24  u32 meta_len  bytes of meta (<= KVDS_PROTO_META_MAX)
 *    28  u32 arg       op-specific (GET: wait ms; LIST: limit)
 *    32  u64 data_len  bytes of bulk data after meta
 *    40  u32 checksum  low 32 bits of XXH3-64 over header (checksum field
 *                      zeroed) followed by meta
 *    44  u32 reserved  must be 0
 *   meta: `count` items, each a 40-byte item header followed by klen key bytes
 *     0 i32 status, 4 u32 klen, 8 u64 a, 16 u64 b, 24 u64 c, 32 u64 d
 *   data: data_len bytes (values, in item order; covered by the objects'
 *         own checksums, not by the frame checksum)
 *
 * The meaning of a/b/c/d per opcode is documented in docs/protocol.md.
 */
#ifndef KVDS_PROTO_H
#define KVDS_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define KVDS_PROTO_MAGIC 0x5344564bu /* "KVDS" read as little-endian u32 */
#define KVDS_PROTO_VERSION 1
#define KVDS_PROTO_HDR_LEN 48
#define KVDS_PROTO_ITEM_LEN 40
#define KVDS_PROTO_META_MAX (64u << 20)
#define KVDS_PROTO_COUNT_MAX 65536u
#define KVDS_PROTO_KEY_MAX 1024u
/* Upper bound on data_len accepted by any decoder (servers apply the pool
 * size on top). */
#define KVDS_PROTO_DATA_MAX (1ull << 40)

enum kvds_op {
  KVDS_OP_HELLO = 1,
  KVDS_OP_PING = 2,
  KVDS_OP_CREATE = 3,
  KVDS_OP_WRITE = 4,
  KVDS_OP_SEAL = 5,
  KVDS_OP_ABORT = 6,
  KVDS_OP_PUT = 7,
  KVDS_OP_GET = 8,
  KVDS_OP_RELEASE = 9,
  KVDS_OP_DELETE = 10,
  KVDS_OP_EXISTS = 11,
  KVDS_OP_LOOKUP_PREFIX = 12,
  KVDS_OP_LIST = 13,
  KVDS_OP_STAT = 14,
  KVDS_OP_STATS = 15,
  KVDS_OP_SHUTDOWN = 16,
  KVDS_OP_AUTH = 17,
  KVDS_OP_CLUSTER = 18,
  KVDS_OP_ANNOUNCE = 19, /* worker -> home: locations sealed / gone */
  KVDS_OP_LOCATE = 20,   /* which workers hold these keys */
  KVDS_OP_UCX_INFO = 21, /* what a peer needs to read this pool over UCX */
  KVDS_OP__MAX = 21
};

/* Header flags. */
#define KVDS_PF_REPLY 0x0001u   /* frame is a reply */
#define KVDS_PF_NOREPLY 0x0002u /* request: do not answer (RELEASE) */
#define KVDS_PF_INLINE 0x0004u  /* GET: send values in data, pin nothing */
#define KVDS_PF_MORE 0x0008u    /* LIST reply: truncated at limit */
#define KVDS_PF_SHM 0x0010u     /* HELLO reply: pool fd attached */
/* GET / EXISTS / LOOKUP_PREFIX / LOCATE: answer from this worker only (its
 * store, or its directory shard for LOCATE), never ask the cluster. Peers
 * always set it, so no request travels further than one hop. */
#define KVDS_PF_LOCAL 0x0020u
/* GET: the last item is not a key but the hint (the member id or data
 * address of a worker that holds the keys): missing keys are pulled from
 * there first, with no directory round trip. */
#define KVDS_PF_HINT 0x0040u
/* GET: pin the values and answer with handles and sizes only, over TCP too
 * (no INLINE, no data): the client learns what is there and keeps it from
 * being evicted without moving its bytes. RELEASE drops the pins. */
#define KVDS_PF_PIN 0x0080u
/* GET with KVDS_PF_LOCAL and KVDS_PF_INLINE (a peer's pull): each item asks
 * for a byte range of its value, so that one large value can come over
 * several connections at once. Request item: a = offset, b = most bytes
 * wanted (0: to the end), c = the checksum the value must have when a > 0
 * (else KVDS_E_NOTFOUND: the value changed since the first range), d =
 * send the whole value when it is at most d bytes. Reply item: a = the
 * value's size, b = the offset of the bytes sent, c = its checksum, d =
 * how many bytes of it are in the data. A request with an offset > 0 never
 * waits; a waiting one is answered with whole values. */
#define KVDS_PF_RANGE 0x0100u
#define KVDS_PF_ALL 0x01ffu

/* Item flags and values of particular opcodes (see docs/protocol.md). */
/* HELLO request item 0, a: the client wants the pool (its fd comes with the
 * reply over a Unix socket, KVDS_PF_SHM). */
#define KVDS_HELLO_F_SHM 0x1u
/* HELLO reply, second item, field a: what this worker serves beyond the
 * first protocol version (an older worker sends one item: none of them). */
#define KVDS_HELLO_FEAT_RANGE 0x1u /* GET with KVDS_PF_RANGE */
/* UCX_INFO: peers may read this worker's pool over UCX (it runs with
 * --transport ucx, or auto on a machine with RDMA). */
#define KVDS_HELLO_FEAT_UCX 0x2u
#define KVDS_HELLO_FEATURES KVDS_HELLO_FEAT_RANGE
/* AUTH request item a: the step of the exchange (step 1 carries the
 * client's nonce, step 2 its proof). */
#define KVDS_AUTH_STEP_NONCE 1u
#define KVDS_AUTH_STEP_PROOF 2u
/* SEAL request item c: b holds the value's checksum (the worker trusts it
 * from a local client, checks it against the bytes over TCP). */
#define KVDS_SEAL_F_CHECKSUM 0x1u
/* GET with KVDS_PF_HINT: the hint item's key is at most this long. */
#define KVDS_PROTO_HINT_MAX 255u
/* Handles a worker hands out never have this bit set (libkvds marks the
 * handles of values it received inline with it). */
#define KVDS_PROTO_HANDLE_LOCAL (1ull << 63)

struct kvds_proto_hdr {
  uint32_t magic;
  uint8_t version;
  uint8_t opcode;
  uint16_t flags;
  uint64_t req_id;
  int32_t status;
  uint32_t count;
  uint32_t meta_len;
  uint32_t arg;
  uint64_t data_len;
  uint32_t checksum;
};

struct kvds_proto_item {
  int32_t status;
  uint32_t klen;
  uint64_t a, b, c, d;
};

/*
 * A frame being built: header space, then items, in one growing buffer
 * (requests in libkvds, replies in the worker).
 *
 *   kvds_proto_build_init(&b);           // or _reset to reuse b.buf
 *   kvds_proto_build_item(&b, &it, key); // any number of times
 *   kvds_proto_build_finish(&b, &hdr);   // b.buf[0..b.len) is the frame
 *
 * b owns buf (free it with kvds_proto_build_free, or take it: set buf to
 * NULL). A failed allocation is remembered in oom; later items are dropped
 * and finish fails, so callers may add items without checking each one.
 */
struct kvds_proto_builder {
  uint8_t *buf;   /* header (KVDS_PROTO_HDR_LEN bytes) then meta */
  size_t len;     /* bytes used, header included */
  size_t cap;     /* bytes allocated */
  uint32_t count; /* items added */
  int oom;        /* an allocation failed: the frame is incomplete */
};

/* Starts an empty frame in b, with no buffer yet (allocates nothing). */
void kvds_proto_build_init(struct kvds_proto_builder *b);

/* Starts a new frame in b, keeping its buffer for reuse. */
void kvds_proto_build_reset(struct kvds_proto_builder *b);

/* Appends an item (it->klen bytes of key; key may be NULL when klen is 0).
 * Returns 0, or -ENOMEM (then and from now on: oom is set). */
int kvds_proto_build_item(struct kvds_proto_builder *b,
                          const struct kvds_proto_item *it, const void *key);

/*
 * Completes the frame: h's magic, version, count and meta_len are set from
 * b (the caller fills the rest: opcode, flags, req_id, status, arg,
 * data_len), the header is encoded in front of the items and the checksum
 * sealed. Returns 0, or -ENOMEM when an allocation failed (now or for an
 * earlier item). Does not limit meta_len (senders check their own limits).
 */
int kvds_proto_build_finish(struct kvds_proto_builder *b,
                            struct kvds_proto_hdr *h);

/* Frees b's buffer; b is then as after kvds_proto_build_init. */
void kvds_proto_build_free(struct kvds_proto_builder *b);

/* Name of an opcode ("GET"), or "?" for unknown values. */
const char *kvds_proto_op_name(unsigned op);

/* Serialises h into out[KVDS_PROTO_HDR_LEN]; the checksum field is written
 * as given (use kvds_proto_seal_frame to fill it). */
void kvds_proto_hdr_encode(const struct kvds_proto_hdr *h, uint8_t *out);

/*
 * Parses and validates a header from buf[0..len).
 * Returns 0 and fills *h; KVDS_E_PROTO if len < KVDS_PROTO_HDR_LEN, on a bad
 * magic, unknown flags, non-zero reserved field, meta_len > META_MAX,
 * count > COUNT_MAX, count * ITEM_LEN > meta_len, or data_len > DATA_MAX;
 * KVDS_E_VERSION on a version mismatch; KVDS_E_BADOP for an opcode outside
 * 1..KVDS_OP__MAX (the header is still filled in so the caller can answer
 * with the request id).
 */
int kvds_proto_hdr_decode(const uint8_t *buf, size_t len,
                          struct kvds_proto_hdr *h);

/* Checksum over an encoded header (its checksum field treated as 0) and the
 * meta bytes. */
uint32_t kvds_proto_checksum(const uint8_t *hdr, const uint8_t *meta,
                             size_t meta_len);

/* Computes the checksum of hdr+meta and stores it into the encoded header. */
void kvds_proto_seal_frame(uint8_t *hdr, const uint8_t *meta, size_t meta_len);

/* 0 if the checksum stored in the encoded header matches, else
 * KVDS_E_CHECKSUM. */
int kvds_proto_verify(const uint8_t *hdr, const uint8_t *meta, size_t meta_len);

/* Bytes an item with a klen-byte key takes in meta. */
static inline size_t kvds_proto_item_size(size_t klen) {
  return KVDS_PROTO_ITEM_LEN + klen;
}

/* Writes an item (header + key) at out; returns bytes written
 * (kvds_proto_item_size(it->klen)). key may be NULL when klen is 0. */
size_t kvds_proto_item_encode(const struct kvds_proto_item *it, const void *key,
                              uint8_t *out);

/*
 * Decodes the item at meta[*pos]. On success fills *it, points *key into
 * meta (NULL if klen is 0), advances *pos and returns 0. Returns KVDS_E_PROTO
 * if the item header or its key would run past meta_len, or klen >
 * KVDS_PROTO_KEY_MAX. Nothing is written on failure.
 */
int kvds_proto_item_decode(const uint8_t *meta, size_t meta_len, size_t *pos,
                           struct kvds_proto_item *it, const uint8_t **key);

/*
 * Validates a whole meta block: exactly `count` well-formed items that use
 * all meta_len bytes. Returns 0 or KVDS_E_PROTO.
 */
int kvds_proto_meta_validate(const uint8_t *meta, size_t meta_len,
                             uint32_t count);

#endif
