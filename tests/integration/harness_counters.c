/* harness_counters.c — see harness_counters.h. */
#include "harness_counters.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "proto/proto.h"

uint64_t kvh_stats_item(int fd, const char *name) {
  struct kvh_frame f;
  kvh_frame_init(&f, KVDS_OP_STATS, 0x5747);
  kvh_frame_seal(&f);
  KVH_CHECK(kvh_write_all(fd, f.b, f.len) == 0, "send STATS: %s",
            strerror(errno));
  struct kvds_proto_hdr h;
  uint8_t *body = NULL;
  KVH_CHECK(kvh_read_reply(fd, &h, &body, 5000) == 0,
            "connection closed instead of a STATS reply");
  KVH_CHECK(h.opcode == KVDS_OP_STATS && h.req_id == 0x5747 && h.status == 0,
            "STATS reply: op %u id %llu status %s", h.opcode,
            (unsigned long long)h.req_id, kvds_err_name(h.status));
  size_t pos = 0, nl = strlen(name);
  for (uint32_t i = 0; i < h.count; i++) {
    struct kvds_proto_item it;
    const uint8_t *key;
    KVH_CHECK(kvds_proto_item_decode(body, h.meta_len, &pos, &it, &key) == 0,
              "bad STATS item %u", i);
    if (it.klen == nl && memcmp(key, name, nl) == 0) {
      free(body);
      return it.a;
    }
  }
  free(body);
  KVH_CHECK(0, "STATS has no item %s", name);
  return 0;
}

uint64_t kvh_metric(int http_port, const char *name) {
  static char buf[65536];
  int fd = kvh_raw_tcp(http_port);
  const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
  KVH_CHECK(kvh_write_all(fd, req, sizeof req - 1) == 0, "send: %s",
            strerror(errno));
  size_t len = 0;
  KVH_CHECK(kvh_read_to_eof(fd, buf, sizeof buf - 1, &len, 5000) == 0,
            "GET /metrics: no complete answer in 5 s");
  close(fd);
  buf[len] = 0;
  char key[160];
  snprintf(key, sizeof key, "\n%s ", name);
  const char *p = strstr(buf, key);
  KVH_CHECK(p, "/metrics has no sample %s", name);
  return strtoull(p + strlen(key), NULL, 10);
}
