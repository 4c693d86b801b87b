/* fuzz_cl_cache.c -- fuzz target for the program-cache entry parser
 * (host/cache_entry.c), the bytes that host/cl_cache.c reads from disk
 * before handing a binary to the OpenCL runtime.
 *
 * Each input is parsed three ways:
 *  - as given, under the key its own bytes 8..15 name, so the magic, key,
 *    size and checksum checks are reached and only the MAC stops it;
 *  - with its CRC and MAC recomputed over what its size field claims (when
 *    that fits the input), so mutations of the size and of the length
 *    reach the checks behind the MAC;
 *  - as the payload of a fresh entry (round trip): that must parse, give
 *    back exactly the input, and be refused after any one-bit change of the
 *    MAC or under another secret.
 * A parse that succeeds must point inside the input. Any broken promise
 * calls abort(), which both libFuzzer and the replay driver report.
 *
 * Design decisions:
 *  1. The parser takes bytes, so no file is involved (unlike the dataset
 *     and index targets): the file reading in cl_cache.c is open, fstat and
 *     a bounded read, and the structure is all in the parser.
 *  2. The secret is fixed, so every run is reproducible; seeds are a valid
 *     entry, one with a wrong MAC and one cut short, built here, and the
 *     same bytes are in tests/fuzz/corpus/fuzz_cl_cache for libFuzzer.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "../../common/crc32c_internal.h"
#include "../../common/le_internal.h"
#include "../../host/cache_entry_internal.h"

/* ==== Tunables ==== */

/* Largest round-trip payload: the parser's cost is linear, so a cap only
 * keeps libFuzzer's long inputs from dominating a run. */
#define FUZZ_MAX_PAYLOAD ((size_t)1 << 20)

static const uint8_t fuzz_secret[KILN_CACHE_SECRET] = {'k', 'i', 'l', 'n', '-', 'f', 'u', 'z',
                                                       'z', '-', 's', 'e', 'c', 'r', 'e', 't'};

/* ==== Helpers ==== */

/* Parses and checks that a success points inside bytes. */
static bool parse_in_bounds(const uint8_t *bytes, size_t len, uint64_t key, const uint8_t *secret) {
    const uint8_t *payload = (const uint8_t *)1;
    size_t size = 1;
    const bool ok = kiln_cache_entry_parse(bytes, len, key, secret, &payload, &size);
    if (!ok && (payload || size))
        abort();
    if (ok && (size == 0 || payload < bytes || payload + size != bytes + len))
        abort();
    return ok;
}

/* ==== Target ==== */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint64_t own_key = size >= 16 ? kiln_get_u64le(data + 8) : 0;
    parse_in_bounds(data, size, own_key, fuzz_secret);

    if (size >= KILN_CACHE_HEADER && size <= KILN_CACHE_HEADER + FUZZ_MAX_PAYLOAD) {
        uint8_t *copy = malloc(size);
        if (!copy)
            return 0;
        memcpy(copy, data, size);
        const uint64_t claimed = kiln_get_u64le(copy + 16);
        if (claimed <= size - KILN_CACHE_HEADER) {
            /* Re-sign what the header claims; the parser still decides on
             * the real length. */
            uint8_t head[KILN_CACHE_HEADER];
            kiln_cache_entry_header(head, own_key, copy + KILN_CACHE_HEADER, (size_t)claimed,
                                    fuzz_secret);
            memcpy(head, copy, 8);           /* keep the input's magic */
            memcpy(head + 28, copy + 28, 4); /* and its reserved field */
            memcpy(copy + 24, head + 24, 4);
            memcpy(copy + 32, head + 32, 8);
            const bool ok = parse_in_bounds(copy, size, own_key, fuzz_secret);
            if (ok && claimed != size - KILN_CACHE_HEADER)
                abort();
        }
        free(copy);
    }

    if (size >= 1 && size <= FUZZ_MAX_PAYLOAD) {
        uint8_t *entry = malloc(KILN_CACHE_HEADER + size);
        if (!entry)
            return 0;
        kiln_cache_entry_header(entry, own_key, data, size, fuzz_secret);
        memcpy(entry + KILN_CACHE_HEADER, data, size);
        const uint8_t *payload;
        size_t got;
        if (!kiln_cache_entry_parse(entry, KILN_CACHE_HEADER + size, own_key, fuzz_secret, &payload,
                                    &got) ||
            got != size || memcmp(payload, data, size) != 0)
            abort();
        uint8_t other[KILN_CACHE_SECRET];
        memcpy(other, fuzz_secret, sizeof other);
        other[size % KILN_CACHE_SECRET] ^= (uint8_t)(1u << (size % 8));
        if (parse_in_bounds(entry, KILN_CACHE_HEADER + size, own_key, other))
            abort();
        entry[32 + size % 8] ^= (uint8_t)(1u << (data[0] % 8));
        if (parse_in_bounds(entry, KILN_CACHE_HEADER + size, own_key, fuzz_secret))
            abort();
        free(entry);
    }
    return 0;
}

/* ==== Seeds ==== */

int kiln_fuzz_seed(size_t i, uint8_t **buf, size_t *len) {
    /* 0: valid entry, 1: wrong MAC, 2: cut short */
    if (i >= 3)
        return 0;
    static const char payload[] = "\x7f"
                                  "ELF stand-in for a program binary, 48 bytes long.";
    const size_t n = sizeof payload - 1;
    uint8_t *b = malloc(KILN_CACHE_HEADER + n);
    if (!b)
        return 0;
    kiln_cache_entry_header(b, 0x6b696c6e63616368ULL, (const uint8_t *)payload, n, fuzz_secret);
    memcpy(b + KILN_CACHE_HEADER, payload, n);
    if (i == 1)
        b[33] ^= 0x10;
    *buf = b;
    *len = i == 2 ? KILN_CACHE_HEADER + n / 2 : KILN_CACHE_HEADER + n;
    return 1;
}
