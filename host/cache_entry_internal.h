/* cache_entry_internal.h -- one entry of the on-disk program cache
 * (host/cl_cache.c) as bytes: its header, its authentication and its parser.
 * Free of <CL/cl.h>, so the fuzz target and tests can use it in any build.
 */
#ifndef KILN_CACHE_ENTRY_INTERNAL_H
#define KILN_CACHE_ENTRY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KILN_CACHE_MAGIC      "KILNCLB2"
#define KILN_CACHE_HEADER     40 /* magic 8, key 8, payload size 8, crc32c 4, reserved 4, mac 8 */
#define KILN_CACHE_SECRET     16 /* bytes of the per-user SipHash key */
#define KILN_CACHE_MAX_BINARY ((uint64_t)256 << 20)

/* SipHash-2-4 (Aumasson and Bernstein) of data under a 16-byte key. */
uint64_t kiln_siphash24(const uint8_t key[KILN_CACHE_SECRET], const void *data, size_t len);

/* Fills the header of an entry for key holding payload (size bytes, 1 ..
 * KILN_CACHE_MAX_BINARY), authenticated with secret. */
void kiln_cache_entry_header(uint8_t head[KILN_CACHE_HEADER], uint64_t key, const uint8_t *payload,
                             size_t size, const uint8_t secret[KILN_CACHE_SECRET]);

/* true when bytes[0 .. len) is exactly one entry for key whose MAC under
 * secret is right; then *payload points into bytes and *size is its length.
 * Anything else -- short, long, another magic or key, a bad size, checksum
 * or MAC -- is false, with *payload NULL and *size 0. */
bool kiln_cache_entry_parse(const uint8_t *bytes, size_t len, uint64_t key,
                            const uint8_t secret[KILN_CACHE_SECRET], const uint8_t **payload,
                            size_t *size);

#endif /* KILN_CACHE_ENTRY_INTERNAL_H */
