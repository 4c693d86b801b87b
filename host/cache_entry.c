/* cache_entry.c -- the bytes of one program-cache entry (see
 * cache_entry_internal.h and the design notes of host/cl_cache.c).
 *
 * Layout (little-endian):
 *   0  magic "KILNCLB2"
 *   8  u64 cache key (host/cl_cache.c decision 2)
 *  16  u64 payload size
 *  24  u32 CRC-32C of the payload
 *  28  u32 reserved, 0
 *  32  u64 SipHash-2-4 under the per-user secret of bytes 0..31 + payload
 *  40  payload: the program binary
 *
 * Version history: KILNCLB1 (32-byte header, CRC only) was read until the
 * MAC came in; such files are now misses and are rewritten.
 *
 * Design decisions:
 *  1. SipHash-2-4 is a keyed pseudo-random function designed as a MAC for
 *     short to medium inputs; with a 128-bit secret that never leaves the
 *     user's private cache folder, a forger who cannot read the secret can
 *     only guess a 64-bit tag, one build per guess. It is small enough to
 *     implement here and is checked against the reference vector of its
 *     paper in tests/test_cl_knn.c. The CRC stays as a cheap first filter
 *     that tells torn files from foreign ones when debugging.
 *  2. The parser takes bytes, not a file, so that libFuzzer can drive it
 *     (tests/fuzz/fuzz_cl_cache.c), and checks every field against the
 *     length before any use: the payload size against the bytes that are
 *     there, and the MAC last, over exactly those bytes.
 */
#include <string.h>

#include "cache_entry_internal.h"
#include "../common/crc32c_internal.h"
#include "../common/le_internal.h"

/* ==== SipHash-2-4 ==== */

typedef struct sip_state {
    uint64_t v[4];
    uint8_t buf[8]; /* bytes not yet in a full word */
    size_t nbuf;
    uint64_t total; /* bytes absorbed; only its low 8 bits are used */
} sip_state;

static uint64_t rotl64(uint64_t x, unsigned b) { return (x << b) | (x >> (64 - b)); }

static void sip_rounds(uint64_t v[4], int n) {
    for (int i = 0; i < n; i++) {
        v[0] += v[1];
        v[1] = rotl64(v[1], 13);
        v[1] ^= v[0];
        v[0] = rotl64(v[0], 32);
        v[2] += v[3];
        v[3] = rotl64(v[3], 16);
        v[3] ^= v[2];
        v[0] += v[3];
        v[3] = rotl64(v[3], 21);
        v[3] ^= v[0];
        v[2] += v[1];
        v[1] = rotl64(v[1], 17);
        v[1] ^= v[2];
        v[2] = rotl64(v[2], 32);
    }
}

static void sip_init(sip_state *s, const uint8_t key[KILN_CACHE_SECRET]) {
    const uint64_t k0 = kiln_get_u64le(key), k1 = kiln_get_u64le(key + 8);
    s->v[0] = k0 ^ 0x736f6d6570736575ULL;
    s->v[1] = k1 ^ 0x646f72616e646f6dULL;
    s->v[2] = k0 ^ 0x6c7967656e657261ULL;
    s->v[3] = k1 ^ 0x7465646279746573ULL;
    s->nbuf = 0;
    s->total = 0;
}

static void sip_word(sip_state *s, uint64_t m) {
    s->v[3] ^= m;
    sip_rounds(s->v, 2);
    s->v[0] ^= m;
}

static void sip_update(sip_state *s, const uint8_t *p, size_t len) {
    s->total += len;
    while (len > 0 && s->nbuf > 0) {
        s->buf[s->nbuf++] = *p++;
        len--;
        if (s->nbuf == 8) {
            sip_word(s, kiln_get_u64le(s->buf));
            s->nbuf = 0;
        }
    }
    for (; len >= 8; p += 8, len -= 8)
        sip_word(s, kiln_get_u64le(p));
    memcpy(s->buf, p, len);
    s->nbuf += len;
}

static uint64_t sip_final(sip_state *s) {
    uint64_t b = s->total << 56;
    for (size_t i = 0; i < s->nbuf; i++)
        b |= (uint64_t)s->buf[i] << (8 * i);
    sip_word(s, b);
    s->v[2] ^= 0xff;
    sip_rounds(s->v, 4);
    return s->v[0] ^ s->v[1] ^ s->v[2] ^ s->v[3];
}

uint64_t kiln_siphash24(const uint8_t key[KILN_CACHE_SECRET], const void *data, size_t len) {
    sip_state s;
    sip_init(&s, key);
    sip_update(&s, data, len);
    return sip_final(&s);
}

/* ==== Entries ==== */

static uint64_t entry_mac(const uint8_t head[KILN_CACHE_HEADER], const uint8_t *payload,
                          size_t size, const uint8_t secret[KILN_CACHE_SECRET]) {
    sip_state s;
    sip_init(&s, secret);
    sip_update(&s, head, 32);
    sip_update(&s, payload, size);
    return sip_final(&s);
}

void kiln_cache_entry_header(uint8_t head[KILN_CACHE_HEADER], uint64_t key, const uint8_t *payload,
                             size_t size, const uint8_t secret[KILN_CACHE_SECRET]) {
    memset(head, 0, KILN_CACHE_HEADER);
    memcpy(head, KILN_CACHE_MAGIC, 8);
    kiln_put_u64le(head + 8, key);
    kiln_put_u64le(head + 16, size);
    kiln_put_u32le(head + 24, kiln_crc32c(0, payload, size));
    kiln_put_u64le(head + 32, entry_mac(head, payload, size, secret));
}

bool kiln_cache_entry_parse(const uint8_t *bytes, size_t len, uint64_t key,
                            const uint8_t secret[KILN_CACHE_SECRET], const uint8_t **payload,
                            size_t *size) {
    *payload = NULL;
    *size = 0;
    if (len < KILN_CACHE_HEADER || memcmp(bytes, KILN_CACHE_MAGIC, 8) != 0 ||
        kiln_get_u64le(bytes + 8) != key || kiln_get_u32le(bytes + 28) != 0)
        return false;
    const uint64_t n = kiln_get_u64le(bytes + 16);
    if (n == 0 || n > KILN_CACHE_MAX_BINARY || n != len - KILN_CACHE_HEADER)
        return false;
    const uint8_t *const body = bytes + KILN_CACHE_HEADER;
    if (kiln_crc32c(0, body, (size_t)n) != kiln_get_u32le(bytes + 24) ||
        entry_mac(bytes, body, (size_t)n, secret) != kiln_get_u64le(bytes + 32))
        return false;
    *payload = body;
    *size = (size_t)n;
    return true;
}
