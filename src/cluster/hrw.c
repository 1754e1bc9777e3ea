/* hrw.c — rendezvous hashing (see hrw.h). */
#include "cluster/hrw.h"

#include <xxhash.h>

uint64_t kvds_hrw_seed(const void *id, size_t len) {
  /* A different seed than key hashes use, so a worker id that is also a
   * key does not score itself specially. */
  return XXH3_64bits_withSeed(id, len, 0x6b76647368727731ull);
}

uint64_t kvds_hrw_score(uint64_t key_hash, uint64_t seed) {
  /* splitmix64's finaliser over the xor: a bijection of 64-bit words. */
  uint64_t z = key_hash ^ seed;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int kvds_hrw_home(uint64_t key_hash, const uint64_t *seeds, size_t n) {
  int best = -1;
  uint64_t top = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t s = kvds_hrw_score(key_hash, seeds[i]);
    if (best < 0 || s > top) {
      best = (int)i;
      top = s;
    }
  }
  return best;
}

size_t kvds_hrw_top(uint64_t key_hash, const uint64_t *seeds, size_t n,
                    size_t *out, size_t k) {
  size_t m = 0;
  uint64_t sc[64];
  if (k > 64)
    k = 64;
  for (size_t i = 0; i < n; i++) {
    uint64_t s = kvds_hrw_score(key_hash, seeds[i]);
    /* insertion into the best-first list of at most k */
    size_t j = m < k ? m++ : k;
    if (j == k && (k == 0 || s <= sc[k - 1]))
      continue;
    if (j == k)
      j = k - 1;
    while (j > 0 && sc[j - 1] < s) {
      sc[j] = sc[j - 1];
      out[j] = out[j - 1];
      j--;
    }
    sc[j] = s;
    out[j] = i;
  }
  return m;
}
