/* fuzz_rank_msg.c -- fuzz target for the readers of what one MPI rank sends
 * another in a build across ranks (common/workdir.c "Segments between
 * ranks", host/device_build.c decision 11): kiln_work_segs_unpack (a
 * shared work file's segments) and kiln_work_segs_split (batch records and
 * reverse edges, cut by partition).
 *
 * An input is a 16-byte header that picks the receiver's view, then the
 * message:
 *   byte 0: which reader (even: the split, odd: the unpack)
 *   byte 1: segments to unpack, or partitions to split into (1..64)
 *   byte 2: record kind for the split (even: batch records with at most
 *           byte 3 candidates, odd: fixed records of 1 + byte 3 % 8 words)
 *   bytes 4-7: nodes per partition (at least 1), bytes 8-11 and 12-15: the
 *           receiver's nodes [lo, lo + span)
 * The message is copied to a 4-byte aligned buffer, as an MPI receive's
 * malloc'd one is. On success every segment must lie inside the message
 * (or be empty), the unpacked lengths must add up to it, and every split
 * segment must hold whole records of its own partition's nodes, in order,
 * covering the message exactly. Any broken promise calls abort(). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "fuzz_util.h"
#include "../../common/workdir_internal.h"

#define FUZZ_HEAD      16
#define FUZZ_MAX_PARTS 64

static uint32_t get_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static bool inside(const kiln_work_seg *s, const uint8_t *msg, size_t len) {
    if (s->len == 0)
        return true;
    const uint8_t *d = s->data;
    return d >= msg && (size_t)(d - msg) <= len && s->len <= len - (size_t)(d - msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < FUZZ_HEAD)
        return 0;
    const uint32_t parts = 1 + data[1] % FUZZ_MAX_PARTS;
    const uint32_t part_nodes = 1 + get_u32(data + 4) % 100000;
    const uint64_t lo = get_u32(data + 8) % (uint64_t)(parts * (uint64_t)part_nodes);
    uint64_t hi = lo + get_u32(data + 12) % 100000;
    if (hi > (uint64_t)parts * part_nodes)
        hi = (uint64_t)parts * part_nodes;
    const size_t len = size - FUZZ_HEAD;
    uint32_t *msg = malloc(len + sizeof(uint32_t));
    if (!msg)
        abort();
    memcpy(msg, data + FUZZ_HEAD, len);
    const uint8_t *bytes = (const uint8_t *)msg;
    kiln_work_seg segs[FUZZ_MAX_PARTS];
    kiln_ctx *ctx = fuzz_ctx();
    if (data[0] % 2) {
        if (kiln_work_segs_unpack(ctx, msg, len, parts, segs, "fuzz message") == KILN_OK) {
            size_t total = (size_t)parts * sizeof(uint64_t);
            for (uint32_t i = 0; i < parts; i++) {
                if (!inside(&segs[i], bytes, len))
                    abort();
                total += segs[i].len;
            }
            if (total != len)
                abort();
        }
    } else {
        const uint32_t rec_max = data[3], fixed = 1 + data[3] % 8;
        const kiln_rec_len_fn fn = data[2] % 2 ? kiln_rec_len_fixed : kiln_rec_len_batch;
        const void *user = data[2] % 2 ? &fixed : &rec_max;
        if (kiln_work_segs_split(ctx, msg, len, lo, hi, part_nodes, parts, fn, user, segs,
                                 "fuzz message") == KILN_OK) {
            size_t total = 0;
            const uint8_t *end = bytes;
            for (uint32_t q = 0; q < parts; q++) {
                if (!inside(&segs[q], bytes, len) || segs[q].len % sizeof(uint32_t))
                    abort();
                if (segs[q].len == 0)
                    continue;
                /* Segments follow each other through the message. */
                if ((const uint8_t *)segs[q].data != end)
                    abort();
                const uint32_t *w = segs[q].data;
                const uint64_t words = segs[q].len / sizeof(uint32_t);
                for (uint64_t i = 0; i < words;) {
                    const uint64_t n = fn(user, w + i, words - i);
                    if (n == 0 || w[i] < lo || w[i] >= hi || w[i] / part_nodes != q)
                        abort();
                    i += n;
                }
                end += segs[q].len;
                total += segs[q].len;
            }
            if (total != len)
                abort();
        }
    }
    free(msg);
    return 0;
}

/* Seeds: a batch message of three records over two partitions, an edge
 * message, and a two-segment shared file. */
int kiln_fuzz_seed(size_t i, uint8_t **buf, size_t *len) {
    uint8_t head[FUZZ_HEAD] = {0};
    uint32_t body[32];
    size_t words = 0;
    const uint32_t part_nodes = 10, lo = 10, span = 20;
    memcpy(head + 4, &part_nodes, 4);
    memcpy(head + 8, &lo, 4);
    memcpy(head + 12, &span, 4);
    if (i == 0) { /* batch records: node 12 with 2 candidates, 15 with 0, 21 with 1 */
        head[0] = 0, head[1] = 4, head[2] = 0, head[3] = 4;
        const uint32_t r[] = {12, 2, 0x3f800000u, 3, 7,           0x40000000u, 5, 1,
                              15, 0, 21,          1, 0x3f000000u, 2,           9};
        memcpy(body, r, sizeof r);
        words = sizeof r / 4;
    } else if (i == 1) { /* reverse edges (to, from, dist, hash) */
        head[0] = 2, head[1] = 4, head[2] = 1, head[3] = 3;
        const uint32_t r[] = {11, 4, 0x3f800000u, 1, 11, 5, 0x3f900000u, 2, 25, 0, 0x40000000u, 3};
        memcpy(body, r, sizeof r);
        words = sizeof r / 4;
    } else if (i == 2) { /* a shared work file: segments of 5 and 3 bytes */
        head[0] = 1, head[1] = 1;
        const uint64_t l[2] = {5, 3};
        memcpy(body, l, sizeof l);
        memcpy((uint8_t *)body + sizeof l, "abcdefgh", 8);
        words = (sizeof l + 8) / 4;
    } else {
        return 0;
    }
    *len = FUZZ_HEAD + words * 4;
    if (!(*buf = malloc(*len)))
        abort();
    memcpy(*buf, head, FUZZ_HEAD);
    memcpy(*buf + FUZZ_HEAD, body, words * 4);
    return 1;
}
