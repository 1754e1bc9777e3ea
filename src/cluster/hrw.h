/*
 * hrw.h — rendezvous (highest random weight) hashing: which live worker is
 * the home of a key (pure; xxhash for worker seeds).
 *
 * Every worker scores every key: score(key, worker) = a 64-bit mix of the
 * key's hash (kvds_checksum of the key, computed once) and the worker's seed,
 * and the key's home is the worker with the highest score. All workers that see
 * the same membership agree on the home without talking; when a worker leaves,
 * only the keys it was home of move (each to its second-best worker), and a
 * worker that joins takes about 1/n of the keys from the others.
 *
 * A worker's seed is kvds_hrw_seed(id) of its member id — not of its
 * incarnation, so a restarted worker is home of the same keys again.
 */
#ifndef KVDS_HRW_H
#define KVDS_HRW_H

#include <stddef.h>
#include <stdint.h>

/* The seed of a worker, from its member id. */
uint64_t kvds_hrw_seed(const void *id, size_t len);

/* score(key, worker): a bijective 64-bit mix, so distinct seeds give
 * distinct scores for the same key. */
uint64_t kvds_hrw_score(uint64_t key_hash, uint64_t seed);

/* Index in seeds[0..n) of the key's home (the highest score; ties, which
 * need equal seeds, go to the lower index); -1 when n is 0. */
int kvds_hrw_home(uint64_t key_hash, const uint64_t *seeds, size_t n);

/* The k best workers for the key, best first, into out[0..min(k, n, 64));
 * returns how many were written (k is capped at 64). For replica
 * placement. */
size_t kvds_hrw_top(uint64_t key_hash, const uint64_t *seeds, size_t n,
                    size_t *out, size_t k);

#endif
