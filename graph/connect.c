/* connect.c -- level-0 reachability repair, the last step of every build.
 *
 * Heuristic pruning can leave a node with no incoming link on level 0 (its
 * last in-link pruned away by a neighbour's re-prune); search can then never
 * return it, and the validator rejects such a graph. hnswlib leaves these
 * nodes unreachable; kiln links each one back in.
 *
 * Design decisions:
 *  1. One BFS from the entry point marks what is reachable; each node it
 *     missed is searched for from the entry point, and the nearest found
 *     node that the BFS reached and that has a free slot links to it. Where
 *     none has room, a link r->w is rerouted r->u->w (see relink), so the
 *     reachable set only grows and one pass suffices; a second pass checks.
 *  2. After each repair the BFS continues from the repaired node, so a whole
 *     unreachable island costs one repair: the nodes the BFS has not reached
 *     when the scan (in id order) comes to them are the islands' roots, and
 *     only roots are searched for, never the rest of an island.
 *  3. The searches are bounded: at most REPAIR_SEARCHES(count) roots get a
 *     search (O(ef * M0) distances each); any root past that is linked from
 *     the root repaired before it, which is reachable by then, with the
 *     same fallback as decision 1 when that node is full. A graph that
 *     needs more is not a graph a builder made (a crafted hnswlib file with
 *     no links has an island per node: 32K elements took 5.1 s, 1M would
 *     take minutes), so what matters there is that the work stays linear
 *     and the result reachable, not that those links are good. Built graphs
 *     and real hnswlib files need a handful of repairs per thousand nodes,
 *     far inside the bound, and get every repair searched.
 *  4. The BFS is the validator's (kiln_l0_mark_reachable, graph/validate.c
 *     decision 3), on the build's threads. Its marks do not depend on them,
 *     and the repair reads nothing else of it, so the links are the same.
 *  5. Free slots of a live index (graph/hnsw_live.c) are marked reached
 *     before the BFS: they are not nodes, and nothing may link to them.
 *  6. The repair of a live index runs while it is searched (graph/hnsw_live.c
 *     decision 8): the BFS and the searches only read, and each repair's
 *     writes are one exclusive section (kiln_commit_begin).
 */
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "build_internal.h"

#define KILN_REPAIR_ROUNDS 3 /* one pass suffices (decision 1); the rest verify */

/* Slot of node's level-0 link to its farthest neighbour. */
static uint32_t farthest_link(const struct kiln_index *ix, uint32_t node) {
    const uint32_t *l = kiln_links(ix, node, 0);
    uint32_t worst = 0;
    float worst_d = -1.0f;
    for (uint32_t i = 0; i < l[0]; i++) {
        float d = kiln_pair_dist(ix, node, l[1 + i]);
        if (d > worst_d) {
            worst_d = d;
            worst = i;
        }
    }
    return worst;
}

/* Makes reachable node r link to u. Where r is full, its farthest link r->w
 * becomes r->u, and u->w is added (replacing u's own farthest link if u is
 * full), so w stays reachable through u. Nothing reachable before is lost:
 * the only link u drops led into u's unreachable island. */
static void link_from(struct kiln_index *ix, uint32_t r, uint32_t u) {
    uint32_t *l = kiln_links(ix, r, 0);
    if (l[0] < ix->M0) {
        l[1 + l[0]++] = u;
        return;
    }
    uint32_t slot = farthest_link(ix, r);
    uint32_t w = l[1 + slot];
    l[1 + slot] = u;
    uint32_t *lu = kiln_links(ix, u, 0);
    for (uint32_t i = 0; i < lu[0]; i++)
        if (lu[1 + i] == w)
            return;
    if (lu[0] < ix->M0)
        lu[1 + lu[0]++] = w;
    else
        lu[1 + farthest_link(ix, u)] = w;
}

/* Links node u from a reachable node near it. The search may pass through
 * nodes that only the upper levels reach, so candidates are filtered by
 * seen[]; the entry point is the fallback, reachable by definition. */
static void relink(struct kiln_index *ix, kiln_scratch *sc, const uint8_t *seen, uint32_t u,
                   uint32_t ef) {
    const float *q = kiln_node_query(ix, u, sc->qbuf);
    uint32_t cur = ix->entry_point;
    float cur_dist = kiln_node_dist(ix, q, cur);
    kiln_greedy_descend(ix, q, ix->max_level, 0, &cur, &cur_dist);
    kiln_search_level(ix, sc, q, cur, cur_dist, ef, 0);
    /* A search short of memory (kiln_heap_push) still ends on reachable
     * nodes or the entry point, so the repair stays correct: no report. */
    sc->cand.short_of_memory = false;
    uint32_t n = sc->top.size;
    kiln_cands_sort(sc->top.v, n);
    uint32_t nearest = ix->entry_point;
    kiln_commit_begin(ix); /* decision 6 */
    for (uint32_t j = 0; j < n; j++) {
        uint32_t r = sc->top.v[j].id;
        if (!seen[r] || r == u)
            continue;
        if (nearest == ix->entry_point)
            nearest = r;
        uint32_t *l = kiln_links(ix, r, 0);
        if (l[0] < ix->M0) {
            l[1 + l[0]++] = u;
            kiln_commit_end(ix);
            return;
        }
    }
    /* Every reachable candidate is full: the nearest one makes room. */
    link_from(ix, nearest, u);
    kiln_commit_end(ix);
}

kiln_status kiln_repair_reachability(struct kiln_index *ix, uint32_t ef, int threads,
                                     kiln_repair_stats *out) {
    kiln_ctx *ctx = ix->ctx;
    memset(out, 0, sizeof *out);
    if (ix->count <= 1 || ix->entry_point == KILN_NO_NODE)
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
        for (uint64_t i = 0; ix->freed && i < ix->count; i++)
            seen[i] = ix->freed[i]; /* decision 5 */
        kiln_l0_mark_reachable(ix, seen, queue, ix->entry_point, threads);
        uint64_t fixed = 0;
        uint32_t prev = ix->entry_point; /* the last root linked in: reachable */
        for (uint32_t u = 0; u < ix->count; u++) {
            if (seen[u])
                continue;
            if (out->searches < KILN_REPAIR_SEARCHES(ix->count)) {
                relink(ix, sc, seen, u, ef);
                out->searches++;
            } else {
                kiln_commit_begin(ix);
                link_from(ix, prev, u); /* decision 3 */
                kiln_commit_end(ix);
            }
            fixed++;
            prev = u;
            kiln_l0_mark_reachable(ix, seen, queue, u, threads);
        }
        out->links += fixed;
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
