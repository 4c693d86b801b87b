/* le_internal.h -- fixed-width little-endian fields, for every reader and
 * writer of on-disk formats (kiln index files, hnswlib files, datasets).
 * Byte by byte, so they are right on any host and at any alignment. */
#ifndef KILN_LE_INTERNAL_H
#define KILN_LE_INTERNAL_H

#include <stdint.h>
#include <string.h>

/* 1 on a big-endian host: the writers that lay arrays out in place (index
 * files, gathered rows) swap them there, and fingerprints name the order. */
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) &&                                    \
    __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define KILN_HOST_BIG_ENDIAN 1
#else
#define KILN_HOST_BIG_ENDIAN 0
#endif

static inline uint16_t kiln_get_u16le(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static inline uint32_t kiln_get_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t kiln_get_u64le(const uint8_t *p) {
    return (uint64_t)kiln_get_u32le(p) | (uint64_t)kiln_get_u32le(p + 4) << 32;
}

static inline float kiln_get_f32le(const uint8_t *p) {
    const uint32_t u = kiln_get_u32le(p);
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

static inline void kiln_put_u32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void kiln_put_u64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void kiln_put_f32le(uint8_t *p, float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    kiln_put_u32le(p, u);
}

#endif /* KILN_LE_INTERNAL_H */
