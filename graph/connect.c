/* connect.c -- level-0 reachability repair, the last step of every build.
 *
 * Heuristic pruning can leave a node with no incoming link on level 0 (its
 * last in-link pruned away by a neighbour's re-prune); search can then never
 * return it, and the validator rejects such a graph. hnswlib leaves these
 * nodes unreachable; kiln links each one back in.
 *
 * Design decisions:
 *  1. One BFS from the entry point marks what is reachable; each node it
 *     missed is searched for from the entry point (so every node the search
 *     finds is reachable), and the nearest found node with a free slot links
 *     to it. Where none has room, the nearest one's farthest link is
 *     replaced; the node it pointed to is checked again on the next round.
 *  2. After each repair the BFS continues from the repaired node, so a whole
 *     unreachable island costs one repair.
 */
#include <stdlib.h>
#include <string.h>

#include "../host/ctx_internal.h"
#include "build_internal.h"

#define KILN_REPAIR_ROUNDS 8 /* replaced links can strand nodes; a few rounds settle it */

/* Marks everything reachable from start on level 0; queue has count slots. */
static void bfs_mark(const struct kiln_index *ix, uint8_t *seen, uint32_t *queue, uint32_t start) {
    if (seen[start])
        return;
    uint64_t head = 0, tail = 0;
    seen[start] = 1;
    queue[tail++] = start;
    while (head < tail) {
        const uint32_t *l = kiln_links(ix, queue[head++], 0);
        for (uint32_t j = 0; j < l[0]; j++) {
            uint32_t v = l[1 + j];
            if (!seen[v]) {
                seen[v] = 1;
                queue[tail++] = v;
            }
        }
    }
}

/* Links node u from a reachable node near it. Returns false if none found. */
static bool relink(struct kiln_index *ix, kiln_scratch *sc, uint32_t u, uint32_t ef) {
    const float *q = kiln_vector(ix, u);
    uint32_t cur = ix->entry_point;
    float cur_dist = ix->dist(q, kiln_vector(ix, cur), ix->dim);
    kiln_greedy_descend(ix, NULL, q, ix->max_level, 0, &cur, &cur_dist);
    kiln_search_level(ix, sc, NULL, q, cur, cur_dist, ef, 0);
    uint32_t n = sc->top.size;
    kiln_cands_sort(sc->top.v, n);
    for (uint32_t j = 0; j < n; j++) {
        uint32_t r = sc->top.v[j].id;
        uint32_t *l = kiln_links(ix, r, 0);
        if (r != u && l[0] < ix->M0) {
            l[1 + l[0]++] = u;
            return true;
        }
    }
    for (uint32_t j = 0; j < n; j++) {
        uint32_t r = sc->top.v[j].id;
        if (r == u)
            continue;
        /* Every candidate is full: replace r's farthest link. */
        uint32_t *l = kiln_links(ix, r, 0);
        const float *rv = kiln_vector(ix, r);
        uint32_t worst = 0;
        float worst_d = -1.0f;
        for (uint32_t i = 0; i < l[0]; i++) {
            float d = ix->dist(rv, kiln_vector(ix, l[1 + i]), ix->dim);
            if (d > worst_d) {
                worst_d = d;
                worst = i;
            }
        }
        l[1 + worst] = u;
        return true;
    }
    return false;
}

kiln_status kiln_repair_reachability(struct kiln_index *ix, uint32_t ef, uint64_t *repaired) {
    kiln_ctx *ctx = ix->ctx;
    *repaired = 0;
    if (ix->count <= 1)
        return KILN_OK;
    uint8_t *seen = NULL;
    uint32_t *queue = NULL;
    kiln_scratch *sc = NULL;
    kiln_status st;
    if ((st = kiln_alloc(ctx, ix->count, "reachability marks", (void **)&seen)) ||
        (st = kiln_alloc(ctx, ix->count * sizeof(uint32_t), "BFS queue", (void **)&queue)) ||
        (st = kiln_scratch_new(ctx, ix, ef, &sc)))
        goto cleanup;

    for (int round = 0; round < KILN_REPAIR_ROUNDS; round++) {
        memset(seen, 0, ix->count);
        bfs_mark(ix, seen, queue, ix->entry_point);
        uint64_t fixed = 0;
        for (uint32_t u = 0; u < ix->count; u++) {
            if (seen[u])
                continue;
            if (!relink(ix, sc, u, ef)) {
                st = kiln_fail(ctx, KILN_E_INTERNAL, "node %u cannot be linked into level 0", u);
                goto cleanup;
            }
            fixed++;
            bfs_mark(ix, seen, queue, u);
        }
        *repaired += fixed;
        if (fixed == 0)
            goto cleanup;
    }
    st = kiln_fail(ctx, KILN_E_INTERNAL, "level 0 still disconnected after %d repair rounds",
                   KILN_REPAIR_ROUNDS);
cleanup:
    kiln_scratch_free(sc);
    free(queue);
    free(seen);
    return st;
}
