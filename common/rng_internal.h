/* rng_internal.h -- the one PRNG of kiln: xoshiro256** seeded through
 * splitmix64. All randomness in a build comes from a kiln_rng seeded from the
 * build's seed, never from time or rand(), so runs repeat exactly. */
#ifndef KILN_RNG_INTERNAL_H
#define KILN_RNG_INTERNAL_H

#include <stdint.h>

typedef struct kiln_rng {
    uint64_t s[4];
} kiln_rng;

void kiln_rng_seed(kiln_rng *rng, uint64_t seed);
uint64_t kiln_rng_next(kiln_rng *rng);
/* Uniform double in (0, 1]: never 0, so -log(u) is finite. */
double kiln_rng_uniform(kiln_rng *rng);
/* Uniform integer in [0, bound), bound > 0, without modulo bias. */
uint64_t kiln_rng_below(kiln_rng *rng, uint64_t bound);

/* MurmurHash3's 64-bit finalizer: a bijection of 64 bits with full
 * avalanche, the hash of labels (graph/shardset.c decision 1, the label map
 * of graph/hnsw_live.c). Fixed forever: shard sets route by it. */
static inline uint64_t kiln_fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

#endif /* KILN_RNG_INTERNAL_H */
