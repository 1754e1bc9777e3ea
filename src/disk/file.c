/* file.c — the disk tier's file format: names, the header, whole-buffer
 * pread/pwrite. No state, no locks. */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/util.h"
#include "disk/internal.h"
#include "kvds/kvds.h"

static const char hexd[] = "0123456789abcdef";

void kvds__disk_name(const void *key, uint32_t klen, uint8_t name[16]) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(key, klen));
  memcpy(name, c.digest, 16);
}

void kvds__disk_shard_path(const uint8_t name[16], char *path) {
  memcpy(path, "kvds/", 5);
  path[5] = hexd[name[0] >> 4];
  path[6] = hexd[name[0] & 15];
  path[7] = '\0';
}

void kvds__disk_path(const uint8_t name[16], char *path) {
  kvds__disk_shard_path(name, path);
  char *p = path + 7;
  *p++ = '/';
  for (int i = 0; i < 16; i++) {
    *p++ = hexd[name[i] >> 4];
    *p++ = hexd[name[i] & 15];
  }
  memcpy(p, ".kv", 4);
}

static int unhex(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

int kvds__disk_parse_name(const char *s, uint8_t name[16]) {
  for (int i = 0; i < 16; i++) {
    int hi = unhex(s[2 * i]), lo = hi < 0 ? -1 : unhex(s[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return -1;
    name[i] = (uint8_t)(hi << 4 | lo);
  }
  return strcmp(s + 32, ".kv") == 0 ? 0 : -1;
}

int kvds__disk_is_tmp(const char *s) {
  size_t n = strlen(s);
  return s[0] == '.' && n > 5 && strcmp(s + n - 4, ".tmp") == 0;
}

/* The header checksum: the first 56 + klen bytes, the checksum field read
 * as zero. */
static uint64_t hdr_sum(const uint8_t *hdr, uint32_t klen) {
  uint8_t b[KVDS_DISK_HDR];
  memcpy(b, hdr, KVDS__DISK_KEYOFF + klen);
  memset(b + 48, 0, 8);
  return kvds_checksum(b, KVDS__DISK_KEYOFF + klen);
}

void kvds__disk_hdr_encode(uint8_t *hdr, const void *key, uint32_t klen,
                           uint64_t size, uint64_t sum, uint64_t ctime_us) {
  memset(hdr, 0, KVDS_DISK_HDR);
  memcpy(hdr, KVDS__DISK_MAGIC, 8);
  kvds_put_u32(hdr + 8, KVDS__DISK_VERSION);
  kvds_put_u32(hdr + 12, KVDS_DISK_HDR);
  kvds_put_u32(hdr + 16, klen);
  kvds_put_u64(hdr + 24, size);
  kvds_put_u64(hdr + 32, sum);
  kvds_put_u64(hdr + 40, ctime_us);
  memcpy(hdr + KVDS__DISK_KEYOFF, key, klen);
  kvds_put_u64(hdr + 48, hdr_sum(hdr, klen));
}

int kvds__disk_hdr_decode(const uint8_t *hdr, uint64_t file_size,
                          struct kvds__disk_hdr *out) {
  if (memcmp(hdr, KVDS__DISK_MAGIC, 8) != 0 ||
      kvds_get_u32(hdr + 8) != KVDS__DISK_VERSION ||
      kvds_get_u32(hdr + 12) != KVDS_DISK_HDR || kvds_get_u32(hdr + 20) != 0)
    return KVDS_E_CHECKSUM;
  uint32_t klen = kvds_get_u32(hdr + 16);
  if (klen == 0 || klen > KVDS__DISK_MAXKEY)
    return KVDS_E_CHECKSUM;
  if (kvds_get_u64(hdr + 48) != hdr_sum(hdr, klen))
    return KVDS_E_CHECKSUM;
  uint64_t size = kvds_get_u64(hdr + 24);
  if (file_size < KVDS_DISK_HDR || file_size - KVDS_DISK_HDR != size)
    return KVDS_E_CHECKSUM;
  out->klen = klen;
  out->size = size;
  out->checksum = kvds_get_u64(hdr + 32);
  out->ctime_us = kvds_get_u64(hdr + 40);
  out->key = hdr + KVDS__DISK_KEYOFF;
  return 0;
}

ssize_t kvds__disk_pread(int fd, void *buf, size_t len, uint64_t off) {
  size_t done = 0;
  while (done < len) {
    ssize_t r = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      break;
    done += (size_t)r;
  }
  return (ssize_t)done;
}

int kvds__disk_pwrite(int fd, const void *buf, size_t len, uint64_t off) {
  size_t done = 0;
  while (done < len) {
    ssize_t r =
        pwrite(fd, (const char *)buf + done, len - done, (off_t)(off + done));
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      return -EIO;
    done += (size_t)r;
  }
  return 0;
}
