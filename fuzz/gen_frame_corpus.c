/*
 * gen_frame_corpus.c — writes the seed corpus for fuzz_frame: a handful of
 * valid (sealed) frames built with the real encoder, so the fuzzer starts
 * past the magic/version/limit checks. Usage: gen_frame_corpus DIR.
 * The output is checked in under fuzz/corpus/frame/; rerun this after a
 * wire-format change.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "proto/proto.h"

struct seed_item {
  int32_t status;
  const char *key;
  uint32_t klen; /* used when key is NULL: a key of klen 'k' bytes */
  uint64_t a;
};

static uint8_t frame[KVDS_PROTO_HDR_LEN + 4 * KVDS_PROTO_ITEM_LEN + 2048];
static uint8_t longkey[KVDS_PROTO_KEY_MAX];

static int write_seed(const char *dir, const char *name, uint8_t opcode,
                      uint16_t flags, int32_t status,
                      const struct seed_item *items, uint32_t count,
                      uint64_t data_len) {
  struct kvds_proto_hdr h = {.magic = KVDS_PROTO_MAGIC,
                             .version = KVDS_PROTO_VERSION,
                             .opcode = opcode,
                             .flags = flags,
                             .req_id = 42,
                             .status = status,
                             .count = count,
                             .data_len = data_len};
  uint8_t *meta = frame + KVDS_PROTO_HDR_LEN;
  size_t n = 0, want, len;
  char path[4096];
  FILE *f = NULL;
  int rc = -1;

  for (uint32_t i = 0; i < count; i++) {
    struct kvds_proto_item it = {.status = items[i].status, .a = items[i].a};
    const void *key = items[i].key ? (const void *)items[i].key : longkey;

    it.klen = items[i].key ? (uint32_t)strlen(items[i].key) : items[i].klen;
    n += kvds_proto_item_encode(&it, key, meta + n);
  }
  h.meta_len = (uint32_t)n;
  kvds_proto_hdr_encode(&h, frame);
  kvds_proto_seal_frame(frame, meta, n);
  /* A few data bytes after meta, as a real frame would carry. */
  len = KVDS_PROTO_HDR_LEN + n;
  want = data_len < 16 ? (size_t)data_len : 16;
  memset(frame + len, 'v', want);
  len += want;

  if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
    goto out;
  f = fopen(path, "wb");
  if (!f || fwrite(frame, 1, len, f) != len)
    goto out;
  rc = 0;
out:
  if (f && fclose(f) != 0)
    rc = -1;
  if (rc != 0)
    fprintf(stderr, "gen_frame_corpus: cannot write %s\n", path);
  return rc;
}

int main(int argc, char **argv) {
  static const struct seed_item get_req[] = {{0, "layer0/block7", 0, 0},
                                             {0, "layer1/block7", 0, 0}};
  static const struct seed_item get_reply[] = {{0, "", 0, 11},
                                               {-30001, "", 0, 0}};
  static const struct seed_item put_long[] = {{0, NULL, KVDS_PROTO_KEY_MAX, 8},
                                              {0, "x", 0, 4}};
  int rc = 0;

  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  memset(longkey, 'k', sizeof(longkey));
  rc |= write_seed(argv[1], "ping", KVDS_OP_PING, 0, 0, NULL, 0, 0);
  rc |= write_seed(argv[1], "get_req", KVDS_OP_GET, 0, 0, get_req, 2, 0);
  rc |= write_seed(argv[1], "get_reply", KVDS_OP_GET,
                   KVDS_PF_REPLY | KVDS_PF_INLINE, 0, get_reply, 2, 11);
  rc |= write_seed(argv[1], "put_long_key", KVDS_OP_PUT, 0, 0, put_long, 2, 12);
  rc |= write_seed(argv[1], "list_reply_more", KVDS_OP_LIST,
                   KVDS_PF_REPLY | KVDS_PF_MORE, 0, NULL, 0, 0);
  rc |= write_seed(argv[1], "bad_opcode", 0, 0, 0, NULL, 0, 0);
  return rc ? 1 : 0;
}
