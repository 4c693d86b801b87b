/* crc32c.c -- CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the
 * checksum of every section of kiln's index files (see docs/FORMAT.md).
 *
 * Design decisions:
 *  1. CRC-32C rather than zlib's CRC-32: x86-64 computes it with one
 *     instruction (SSE4.2 `crc32`), and it detects the same error classes
 *     (every burst up to 32 bits, every odd number of bit flips). It is also
 *     what iSCSI, ext4 and LevelDB use, so other tools can check our files.
 *  2. Standard convention: the register starts at ~0 and is inverted at the
 *     end, and the public value is passed back in to continue, so
 *     crc(crc(0, a), b) == crc(0, a || b). The check value is
 *     crc("123456789") == 0xE3069283.
 *  3. Two paths that must give the same value: the SSE4.2 instruction
 *     (chosen at run time with __builtin_cpu_supports, so the library still
 *     runs on CPUs without it) and slicing-by-8 tables, which are the
 *     reference the tests compare against on every length and alignment.
 *  4. The hardware loop is one dependent chain of 8-byte steps (about
 *     8 bytes per 3 cycles, i.e. several GB/s). Three interleaved chains
 *     would be ~3x faster, but the checksum runs beside disk I/O and an
 *     fsync, so the extra combine code is not worth its risk here.
 *  5. The tables are built once on first use under pthread_once, so any
 *     thread may call kiln_crc32c first.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define KILN_CRC32C_HAVE_SSE42 1
#else
#define KILN_CRC32C_HAVE_SSE42 0
#endif

#include "crc32c_internal.h"

/* ==== Tunables ==== */

/* The reflected Castagnoli polynomial; fixed by the file format. */
#define CRC32C_POLY 0x82F63B78u

/* ==== Scalar path: slicing-by-8 ==== */

/* crc_table[k][b] is the CRC of byte b followed by k zero bytes, so eight
 * input bytes are folded with eight independent lookups. */
static uint32_t crc_table[8][256];
static pthread_once_t crc_table_once = PTHREAD_ONCE_INIT;

static void crc_table_build(void) {
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int bit = 0; bit < 8; bit++)
            c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
        crc_table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = crc_table[0][b];
        for (int k = 1; k < 8; k++) {
            c = (c >> 8) ^ crc_table[0][c & 0xffu];
            crc_table[k][b] = c;
        }
    }
}

/* Reads 8 bytes as a little-endian value whatever the host's byte order,
 * so the sliced step below is the same arithmetic everywhere. */
static inline uint64_t load_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

uint32_t kiln_crc32c_scalar(uint32_t crc, const void *buf, size_t len) {
    pthread_once(&crc_table_once, crc_table_build);
    const uint8_t *p = buf;
    uint32_t c = ~crc;
    /* Bytewise up to 8-byte alignment, so the word loads below are aligned. */
    while (len && ((uintptr_t)p & 7u)) {
        c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xffu];
        len--;
    }
    while (len >= 8) {
        const uint64_t w = load_u64le(p) ^ c;
        c = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
            crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
            crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
            crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xffu];
    return ~c;
}

/* ==== Hardware path: SSE4.2 ==== */

#if KILN_CRC32C_HAVE_SSE42
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const void *buf,
                                                               size_t len) {
    const uint8_t *p = buf;
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7u)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, sizeof w); /* aligned here; memcpy keeps it free of aliasing UB */
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

/* ==== Public (internal API) ==== */

uint32_t kiln_crc32c(uint32_t crc, const void *buf, size_t len) {
#if KILN_CRC32C_HAVE_SSE42
    /* __builtin_cpu_init is idempotent and cheap; calling it makes the
     * check valid even from another library's constructor. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        return crc32c_sse42(crc, buf, len);
#endif
    return kiln_crc32c_scalar(crc, buf, len);
}
