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

#endif /* KILN_RNG_INTERNAL_H */
