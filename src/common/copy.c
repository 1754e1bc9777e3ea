/* copy.c — streaming copies and fused copy + checksum. */
#include "common/copy.h"

#include "kvds/kvds.h"

#include <string.h>

#include "common/hash.h"
#if defined(__x86_64__) || defined(__SSE2__)
#include <emmintrin.h>
#define KVDS_HAVE_SSE2 1
#endif

/* Below this size the destination is likely to be read back soon, or the
 * copy is too short for streaming stores to matter. */
#define STREAM_MIN (64u << 10)
/* Copy-then-hash granularity: the hash reads what the copy just loaded, from
 * L1. 4 KiB measured best here (1 MiB: 11.4 GB/s against 7.8 with 64 KiB
 * chunks, memcpy 8.7). */
#define CHUNK (4u << 10)

/* Non-temporal copy without the closing fence (the caller fences). */
static void copy_nt(void *dst, const void *src, size_t len) {
#ifdef KVDS_HAVE_SSE2
  if (len >= 128) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15;
    memcpy(d, s, head);
    d += head;
    s += head;
    len -= head;
    size_t n = len / 64;
    for (size_t i = 0; i < n; i++, d += 64, s += 64) {
      __m128i a = _mm_loadu_si128((const __m128i *)s);
      __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
      __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
      __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
      _mm_stream_si128((__m128i *)d, a);
      _mm_stream_si128((__m128i *)(d + 16), b);
      _mm_stream_si128((__m128i *)(d + 32), c);
      _mm_stream_si128((__m128i *)(d + 48), e);
    }
    memcpy(d, s, len % 64);
    return;
  }
#endif
  memcpy(dst, src, len);
}

void kvds_copy_stream(void *dst, const void *src, size_t len) {
  if (len < STREAM_MIN) {
    memcpy(dst, src, len);
    return;
  }
  copy_nt(dst, src, len);
#ifdef KVDS_HAVE_SSE2
  /* Streaming stores are weakly ordered: fence before the caller tells
   * anyone (the worker, a reader) that the bytes are there. */
  _mm_sfence();
#endif
}

uint64_t kvds_copy_hash(void *dst, const void *src, size_t len) {
  if (len < STREAM_MIN) {
    memcpy(dst, src, len);
    return kvds_checksum(src, len);
  }
  struct kvds_hash st;
  kvds_hash_reset(&st);
  for (size_t off = 0; off < len; off += CHUNK) {
    size_t k = len - off < CHUNK ? len - off : CHUNK;
    copy_nt((uint8_t *)dst + off, (const uint8_t *)src + off, k);
    kvds_hash_update(&st, (const uint8_t *)src + off, k);
  }
#ifdef KVDS_HAVE_SSE2
  _mm_sfence();
#endif
  return kvds_hash_digest(&st);
}

uint64_t kvds_gather(void *dst, const struct kvds_iov *segs, size_t n) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++)
    total += segs[i].len;
  int nt = total >= STREAM_MIN;
  struct kvds_hash st;
  kvds_hash_reset(&st);
  uint8_t *d = dst;
  for (size_t i = 0; i < n; i++) {
    const uint8_t *s = segs[i].base;
    for (size_t off = 0; off < segs[i].len; off += CHUNK) {
      size_t k = segs[i].len - off < CHUNK ? segs[i].len - off : CHUNK;
      if (nt)
        copy_nt(d, s + off, k);
      else
        memcpy(d, s + off, k);
      kvds_hash_update(&st, s + off, k);
      d += k;
    }
  }
#ifdef KVDS_HAVE_SSE2
  if (nt)
    _mm_sfence();
#endif
  return kvds_hash_digest(&st);
}
