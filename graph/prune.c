/* prune.c -- neighbour selection and link insertion with re-pruning, the
 * part of HNSW that bounds degrees. Used by insertion and by the device
 * pipeline's merge step.
 *
 * Design decisions:
 *  1. The heuristic is hnswlib's getNeighborsByHeuristic2 exactly (no
 *     extendCandidates, no keepPrunedConnections), so graphs are comparable
 *     with hnswlib's and recall differences come from elsewhere.
 *  2. A list that overflows is re-pruned from its current members plus all
 *     the new ones at once, bounded by the level's capacity (M0 on level 0,
 *     M above); new links that fit are appended in the order given, so the
 *     caller's order (graph/hnsw_insert.c sorts them) fixes the result.
 *  3. The heuristic reads each candidate's vector, from anywhere in the set
 *     when the candidates come from the device pipeline's lists (with
 *     insertion they were just read by the beam search), so the next
 *     SELECT_PREFETCH candidates' vectors are prefetched whole: the merge
 *     used to get this from its exact rerank, which read every candidate
 *     first and now comes with the candidates (graph/merge.c decision 5).
 */

#include "build_internal.h"

/* Candidates whose vectors are requested ahead of the one being judged. */
#define SELECT_PREFETCH 4

uint32_t kiln_select_neighbors(const struct kiln_index *ix, const kiln_cand *sorted, uint32_t n,
                               uint32_t M, uint32_t *out) {
    if (n < M) {
        for (uint32_t i = 0; i < n; i++)
            out[i] = sorted[i].id;
        return n;
    }
    uint32_t kept = 0;
    /* Decision 3: the candidates' vectors, a few ahead. */
    for (uint32_t i = 0; i < n && i < SELECT_PREFETCH; i++)
        kiln_prefetch_vector(ix, sorted[i].id);
    for (uint32_t i = 0; i < n && kept < M; i++) {
        if (i + SELECT_PREFETCH < n)
            kiln_prefetch_vector(ix, sorted[i + SELECT_PREFETCH].id);
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

void kiln_links_merge(const struct kiln_index *ix, uint32_t node, unsigned level, uint32_t keep,
                      kiln_cand *in, uint32_t n) {
    const uint32_t cap = level ? ix->M : ix->M0;
    uint32_t *l = kiln_links(ix, node, level);
    const uint32_t have = l[0];
    uint32_t fresh = 0; /* the incoming not yet in the list, in their order */
    for (uint32_t i = 0; i < n; i++) {
        bool dup = in[i].id == node;
        for (uint32_t j = 0; j < have && !dup; j++)
            dup = l[1 + j] == in[i].id;
        if (!dup)
            in[fresh++] = in[i];
    }
    if (have + fresh <= cap) {
        for (uint32_t i = 0; i < fresh; i++)
            l[1 + have + i] = in[i].id;
        l[0] = have + fresh;
        return;
    }
    const float *v = kiln_vector(ix, node);
    uint32_t m = fresh;
    for (uint32_t j = keep; j < have; j++)
        in[m++] = (kiln_cand){kiln_node_dist(ix, v, l[1 + j]), l[1 + j]};
    kiln_cands_sort(in, m);
    /* The old members are all in `in` now, so the list is the output. */
    l[0] = keep + kiln_select_neighbors(ix, in, m, cap - keep, l + 1 + keep);
}
