/*
 * hash.h — xxh3-64 of values, one-shot and streaming (leaf).
 *
 * Every value carries the xxh3-64 of its bytes (kvds_checksum, kvds.h). On
 * an x86-64 CPU with AVX-512 (or AVX2) the long-input loop runs on 512-bit
 * (256-bit) vectors, chosen at run time (KVDS_HASH_NO_AVX512=1 in the
 * environment stops at AVX2); AVX2 is about 1.3-1.6x the library's SSE2
 * build, AVX-512 1.5x AVX2 from cache and 2x from DRAM. The values are the
 * same bit for bit as XXH3_64bits(). Elsewhere this is libxxhash.
 */
#ifndef KVDS_HASH_H
#define KVDS_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Streaming state (an XXH3_state_t inside). Plain memory: no cleanup. */
#define KVDS_HASH_STATE_SIZE 640
struct kvds_hash {
  _Alignas(64) unsigned char st[KVDS_HASH_STATE_SIZE];
};

void kvds_hash_reset(struct kvds_hash *h);
void kvds_hash_update(struct kvds_hash *h, const void *data, size_t len);
/* The xxh3-64 of everything given since the reset (h is not changed). */
uint64_t kvds_hash_digest(const struct kvds_hash *h);

#endif
