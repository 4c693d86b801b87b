/* prune.c -- neighbour selection and link insertion with re-pruning, the
 * part of HNSW that bounds degrees. Used by insertion and by the device
 * pipeline's merge step.
 *
 * Design decisions:
 *  1. The heuristic is hnswlib's getNeighborsByHeuristic2 exactly (no
 *     extendCandidates, no keepPrunedConnections), so graphs are comparable
 *     with hnswlib's and recall differences come from elsewhere.
 *  2. A full list is re-pruned from its current members plus the new one,
 *     bounded by the level's capacity (M0 on level 0, M above).
 */
#include <string.h>

#include "build_internal.h"

uint32_t kiln_select_neighbors(const struct kiln_index *ix, const kiln_cand *sorted, uint32_t n,
                               uint32_t M, uint32_t *out) {
    if (n < M) {
        for (uint32_t i = 0; i < n; i++)
            out[i] = sorted[i].id;
        return n;
    }
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n && kept < M; i++) {
        const float *v = kiln_vector(ix, sorted[i].id);
        bool good = true;
        for (uint32_t j = 0; j < kept; j++) {
            if (kiln_node_dist(ix, v, out[j]) < sorted[i].dist) {
                good = false;
                break;
            }
        }
        if (good)
            out[kept++] = sorted[i].id;
    }
    return kept;
}

void kiln_link_add(const struct kiln_index *ix, kiln_node_lock *locks, uint32_t from, uint32_t to,
                   unsigned level) {
    const uint32_t cap = level ? ix->M : ix->M0;
    kiln_lock(locks, from);
    uint32_t *l = kiln_links(ix, from, level);
    uint32_t n = l[0];
    for (uint32_t j = 0; j < n; j++) {
        if (l[1 + j] == to) {
            kiln_unlock(locks, from);
            return;
        }
    }
    if (n < cap) {
        l[1 + n] = to;
        l[0] = n + 1;
        kiln_unlock(locks, from);
        return;
    }
    kiln_cand cands[2 * KILN_MAX_M + 1];
    const float *fv = kiln_vector(ix, from);
    for (uint32_t j = 0; j < n; j++)
        cands[j] = (kiln_cand){kiln_node_dist(ix, fv, l[1 + j]), l[1 + j]};
    cands[n] = (kiln_cand){kiln_node_dist(ix, fv, to), to};
    kiln_cands_sort(cands, n + 1);
    uint32_t kept[2 * KILN_MAX_M];
    uint32_t m = kiln_select_neighbors(ix, cands, n + 1, cap, kept);
    memcpy(l + 1, kept, m * sizeof(uint32_t));
    l[0] = m;
    kiln_unlock(locks, from);
}
