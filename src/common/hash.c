/* hash.c — xxh3-64 with a run-time AVX2 choice (see hash.h). */
#include "common/hash.h"

#include "kvds/kvds.h"

#if defined(__x86_64__) && defined(__GNUC__)
/* xxhash.h compiled into this file (XXH_INLINE_ALL: every name private to
 * it), with its AVX2 kernels marked for AVX2 code generation the way the
 * library's own x86 dispatcher does; the rest of the file stays baseline
 * x86-64, and the AVX2 paths run only where the CPU has AVX2. */
#include <immintrin.h>
#define XXH_INLINE_ALL
#define XXH_DISPATCH_AVX2 1
#define XXH_TARGET_AVX2 __attribute__((__target__("avx2")))
/* The AVX2 kernels load the accumulators as aligned 256-bit vectors; the
 * baseline build would align them for SSE2 (16 bytes) only. */
#define XXH_ACC_ALIGN 64
#include <xxhash.h>
#define KVDS_HASH_AVX2 1
#else
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#endif

_Static_assert(sizeof(XXH3_state_t) <= KVDS_HASH_STATE_SIZE,
               "KVDS_HASH_STATE_SIZE too small for XXH3_state_t");
_Static_assert(_Alignof(XXH3_state_t) <= 64, "XXH3_state_t over-aligned");

#ifdef KVDS_HASH_AVX2
static int have_avx2(void) {
  static int v = -1; /* racy but idempotent */
  if (v < 0) {
    __builtin_cpu_init();
    v = __builtin_cpu_supports("avx2") ? 1 : 0;
  }
  return v;
}

XXH_TARGET_AVX2 static uint64_t long_avx2(const void *data, size_t len) {
  return XXH3_hashLong_64b_internal(
      data, len, XXH3_kSecret, sizeof(XXH3_kSecret), XXH3_accumulate_512_avx2,
      XXH3_scrambleAcc_avx2);
}

XXH_TARGET_AVX2 static void update_avx2(XXH3_state_t *st, const void *data,
                                        size_t len) {
  XXH3_update(st, (const xxh_u8 *)data, len, XXH3_accumulate_512_avx2,
              XXH3_scrambleAcc_avx2);
}
#endif

uint64_t kvds_checksum(const void *data, size_t len) {
#ifdef KVDS_HASH_AVX2
  /* Above XXH3_MIDSIZE_MAX (240 B) XXH3_64bits is the long loop with the
   * default secret; below it there is no vector loop to speed up. */
  if (len > XXH3_MIDSIZE_MAX && have_avx2())
    return long_avx2(data, len);
#endif
  return XXH3_64bits(data, len);
}

void kvds_hash_reset(struct kvds_hash *h) {
  XXH3_64bits_reset((XXH3_state_t *)(void *)h->st);
}

void kvds_hash_update(struct kvds_hash *h, const void *data, size_t len) {
  XXH3_state_t *st = (XXH3_state_t *)(void *)h->st;
#ifdef KVDS_HASH_AVX2
  if (have_avx2()) {
    update_avx2(st, data, len);
    return;
  }
#endif
  XXH3_64bits_update(st, data, len);
}

uint64_t kvds_hash_digest(const struct kvds_hash *h) {
  return XXH3_64bits_digest((const XXH3_state_t *)(const void *)h->st);
}
