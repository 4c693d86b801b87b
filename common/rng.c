/* rng.c -- xoshiro256** (Blackman & Vigna), seeded through splitmix64 so that
 * any 64-bit seed, 0 included, gives a well-mixed state. */
#include "rng_internal.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void kiln_rng_seed(kiln_rng *rng, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&x);
}

uint64_t kiln_rng_next(kiln_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double kiln_rng_uniform(kiln_rng *rng) {
    /* 53 random bits, shifted by one so the result is in (0, 1]. */
    return ((kiln_rng_next(rng) >> 11) + 1) * 0x1.0p-53;
}

uint64_t kiln_rng_below(kiln_rng *rng, uint64_t bound) {
    /* Lemire's multiply-shift with rejection of the biased low range. */
    __uint128_t m = (__uint128_t)kiln_rng_next(rng) * bound;
    uint64_t lo = (uint64_t)m;
    if (lo < bound) {
        uint64_t threshold = -bound % bound;
        while (lo < threshold) {
            m = (__uint128_t)kiln_rng_next(rng) * bound;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}
