/* validate.c -- the graph validator (antirez's hnsw_validate_graph): every
 * invariant search relies on, checked on any index, built or loaded. Tests
 * run it after every build; `kiln check` runs it on a file.
 *
 * Invariants:
 *  1. The entry point is a node on the top level; no node is above it.
 *  2. On every level a node is on: link count within the bound (M0 on level
 *     0, M above), ids in range, no self link, no duplicate link, and on
 *     upper levels only links to nodes present on that level.
 *  3. Every node is reachable from the entry point on level 0.
 *
 * Design decisions:
 *  1. A vector with a NaN or an infinity is a finding, not a defect: the
 *     graph around it is sound, every graph distance takes NaN as +inf
 *     (kiln_node_dist) so search ranks such rows last, and kiln build
 *     --allow-nonfinite makes them on purpose (failing the check would fail
 *     that build). So kiln_index_check passes them, kiln_index_nonfinite
 *     counts them, kiln_index_stats_get reports the count and the first
 *     node, and `kiln check` prints it.
 */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "hnsw_internal.h"

static kiln_status check_lists(const struct kiln_index *ix, uint32_t *stamp) {
    kiln_ctx *ctx = ix->ctx;
    uint32_t tick = 0;
    for (uint64_t i = 0; i < ix->count; i++) {
        if (ix->levels[i] > ix->max_level)
            return kiln_fail(ctx, KILN_E_INVALID, "node %llu has level %u above the top level %u",
                             (unsigned long long)i, ix->levels[i], ix->max_level);
        for (uint32_t level = 0; level <= ix->levels[i]; level++) {
            const uint32_t *l = kiln_links(ix, (uint32_t)i, level);
            uint32_t bound = level ? ix->M : ix->M0;
            if (l[0] > bound)
                return kiln_fail(ctx, KILN_E_INVALID,
                                 "node %llu has %u links on level %u (bound %u)",
                                 (unsigned long long)i, l[0], level, bound);
            if (++tick == 0) { /* stamps wrapped: start over */
                memset(stamp, 0, ix->count * sizeof *stamp);
                tick = 1;
            }
            for (uint32_t j = 0; j < l[0]; j++) {
                uint32_t v = l[1 + j];
                if (v >= ix->count)
                    return kiln_fail(ctx, KILN_E_INVALID,
                                     "node %llu level %u links to id %u, out of range (count %llu)",
                                     (unsigned long long)i, level, v,
                                     (unsigned long long)ix->count);
                if (v == i)
                    return kiln_fail(ctx, KILN_E_INVALID, "node %llu links to itself on level %u",
                                     (unsigned long long)i, level);
                if (stamp[v] == tick)
                    return kiln_fail(ctx, KILN_E_INVALID, "node %llu links to %u twice on level %u",
                                     (unsigned long long)i, v, level);
                stamp[v] = tick;
                if (ix->levels[v] < level)
                    return kiln_fail(ctx, KILN_E_INVALID,
                                     "node %llu links on level %u to node %u, which is only on "
                                     "levels 0..%u",
                                     (unsigned long long)i, level, v, ix->levels[v]);
            }
        }
    }
    return KILN_OK;
}

/* BFS on level 0; queue reuses the stamp array's memory. */
static kiln_status check_reachable(const struct kiln_index *ix, uint32_t *queue) {
    uint8_t *seen = calloc(ix->count, 1);
    if (!seen)
        return kiln_fail(ix->ctx, KILN_E_NOMEM,
                         "out of memory allocating %llu bytes for the validator",
                         (unsigned long long)ix->count);
    uint64_t head = 0, tail = 0;
    seen[ix->entry_point] = 1;
    queue[tail++] = ix->entry_point;
    while (head < tail) {
        const uint32_t *l = kiln_links(ix, queue[head++], 0);
        for (uint32_t j = 0; j < l[0]; j++) {
            if (!seen[l[1 + j]]) {
                seen[l[1 + j]] = 1;
                queue[tail++] = l[1 + j];
            }
        }
    }
    kiln_status st = KILN_OK;
    if (tail < ix->count) {
        uint64_t first = 0;
        while (seen[first])
            first++;
        st = kiln_fail(ix->ctx, KILN_E_INVALID,
                       "%llu of %llu nodes are unreachable from the entry point on level 0 "
                       "(first: node %llu)",
                       (unsigned long long)(ix->count - tail), (unsigned long long)ix->count,
                       (unsigned long long)first);
    }
    free(seen);
    return st;
}

uint64_t kiln_index_nonfinite(const struct kiln_index *ix, uint64_t *first) {
    uint64_t n = 0;
    *first = UINT64_MAX;
    for (uint64_t i = 0; i < ix->count; i++) {
        const float *v = kiln_vector(ix, (uint32_t)i);
        bool bad = false;
        for (uint32_t d = 0; d < ix->dim && !bad; d++)
            bad = !isfinite(v[d]);
        if (bad && n++ == 0)
            *first = i;
    }
    return n;
}

kiln_status kiln_index_check(const kiln_index *ix) {
    if (!ix)
        return KILN_E_ARG;
    kiln_ctx *ctx = ix->ctx;
    if (ix->count == 0)
        return KILN_OK;
    if (ix->entry_point >= ix->count)
        return kiln_fail(ctx, KILN_E_INVALID, "entry point %u is out of range (count %llu)",
                         ix->entry_point, (unsigned long long)ix->count);
    if (ix->max_level >= KILN_MAX_LEVELS)
        return kiln_fail(ctx, KILN_E_INVALID, "top level %u is above the limit %d", ix->max_level,
                         KILN_MAX_LEVELS - 1);
    if (ix->levels[ix->entry_point] != ix->max_level)
        return kiln_fail(ctx, KILN_E_INVALID, "entry point %u is on level %u, not the top level %u",
                         ix->entry_point, ix->levels[ix->entry_point], ix->max_level);
    if (ix->M0 > 2 * KILN_MAX_M || ix->M > KILN_MAX_M)
        return kiln_fail(ctx, KILN_E_INVALID, "degree bounds M=%u M0=%u are out of range", ix->M,
                         ix->M0);
    uint32_t *scratch = calloc(ix->count, sizeof *scratch);
    if (!scratch)
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory allocating the validator's scratch");
    kiln_status st = check_lists(ix, scratch);
    if (st == KILN_OK)
        st = check_reachable(ix, scratch);
    free(scratch);
    return st;
}
