/* merge.c -- level 0 from candidate neighbour lists: the union, exact
 * rerank and prune steps of the device pipeline.
 *
 * The device gives each vector approximate nearest neighbours from each
 * cluster it belongs to, ranked by 4-bit distances. Here they become an HNSW
 * level 0 with the same degree bounds and selection rule as insertion.
 *
 * Design decisions:
 *  1. Each node's candidates are deduplicated and reranked with exact
 *     full-precision distances, then pruned with the HNSW heuristic to at most
 *     M0 (hnswlib's selection rule, graph/prune.c), all in parallel with no
 *     locks: node i writes only its own list.
 *  1a. Candidates here are a node's nearest neighbours, far tighter than the
 *     ef_construction-wide beam insertion prunes from, and the heuristic keeps
 *     only a handful of them (measured: ~4 of 32 on clustered data), which
 *     strands nodes. So the nearest pruned candidates are kept up to M, the
 *     paper's keepPrunedConnections; reverse links fill the rest up to M0.
 *  2. Reverse links are added afterwards, re-pruning full lists like
 *     kiln_link_add (but never the protected links of decision 4), under
 *     per-node locks; heuristic-pruned forward lists leave
 *     room, so most reverse links land without a re-prune.
 *  3. Forward lists are written before any reverse link, so a node's final
 *     list is its own selection plus what others chose to add.
 *  4. Highways. A kNN graph has only local links: of well-separated clusters
 *     it has none between them, and even inside one cluster a beam needs many
 *     hops (measured on 200K synthetic clustered vectors: recall@10 stuck at
 *     0.972 at ef=256 while insertion reached 1.000). The upper levels, built
 *     first by insertion over the sparser level-1 nodes, are exactly a
 *     navigable long-range graph, so level 0 embeds it: a level-1 node keeps
 *     its level-1 links, and every other node keeps a link to the level-1
 *     node a greedy descent for its vector ends on (its "entrance") and takes
 *     that node's level-1 links as candidates. These links are protected from
 *     the heuristic, which would prune them as dominated by nearer nodes (a
 *     refinement pass that re-pruned from a local beam did exactly that and
 *     lost recall), and from the re-prune of full lists while reverse links
 *     are added; an entrance gets no reverse link. Measured, same data:
 *     ef=64 0.945 -> 0.986, ef=256 0.972 -> 1.000.
 *  5. The rerank reads ~57 vectors per node from anywhere in the set, so it
 *     is bound by memory latency (about 230 ns a distance at 200K x 128);
 *     the next MERGE_PREFETCH candidates' vectors are prefetched whole.
 */
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "../common/progress_internal.h"
#include "build_internal.h"
#include "../common/sort_internal.h"

/* Candidates whose vectors are requested ahead of their rerank distance. */
#define MERGE_PREFETCH 4

#define U32_LESS(a, b) ((a) < (b))
KILN_DEFINE_SORT(ids_sort, uint32_t, U32_LESS)

/* The protected links of node i (decision 4): a level-1 node keeps its
 * level-1 links; any other node keeps the level-1 node that a greedy descent
 * for its vector ends on. Returns how many went to prot. Also appends to
 * ids[*n] the descent node's level-1 links as ordinary candidates. */
static uint32_t highway_links(const struct kiln_index *ix, uint32_t i, uint32_t *prot,
                              uint32_t *ids, uint32_t *n) {
    if (ix->levels[i] >= 1) {
        const uint32_t *up = kiln_links(ix, i, 1);
        memcpy(prot, up + 1, up[0] * sizeof(uint32_t));
        return up[0];
    }
    if (ix->max_level == 0 || ix->entry_point >= ix->count) /* no hierarchy built */
        return 0;
    const float *v = kiln_vector(ix, i);
    uint32_t cur = ix->entry_point;
    float cur_dist = kiln_node_dist(ix, v, cur);
    kiln_greedy_descend(ix, NULL, v, ix->max_level, 1, &cur, &cur_dist);
    const uint32_t *up = kiln_links(ix, cur, 1);
    for (uint32_t j = 0; j < up[0]; j++)
        ids[(*n)++] = up[1 + j];
    prot[0] = cur;
    return 1;
}

/* Node i's forward list, written to its level-0 block: the protected links,
 * then the heuristic's choice among the candidates, then the nearest pruned
 * candidates up to M. cands and ids have room for width + M entries. */
static void select_forward(struct kiln_index *ix, const uint32_t *cand, uint32_t width, uint32_t i,
                           uint32_t *ids, kiln_cand *cands) {
    uint32_t prot[KILN_MAX_M];
    uint32_t n = 0;
    for (uint32_t j = 0; j < width; j++)
        if (cand[j] != KILN_NO_NODE && cand[j] != i && cand[j] < ix->count)
            ids[n++] = cand[j];
    const uint32_t np = highway_links(ix, i, prot, ids, &n);
    ids_sort(ids, n);
    uint32_t u = 0; /* unique, unprotected candidates to the front */
    for (uint32_t j = 0; j < n; j++) {
        if (j > 0 && ids[j] == ids[j - 1])
            continue;
        bool is_prot = false;
        for (uint32_t t = 0; t < np && !is_prot; t++)
            is_prot = prot[t] == ids[j];
        if (!is_prot)
            ids[u++] = ids[j];
    }
    /* Decision 5: the vectors are scattered over the whole set, so each
     * distance would wait on memory; fetch a few ahead. */
    const float *v = kiln_vector(ix, i);
    for (uint32_t j = 0; j < u && j < MERGE_PREFETCH; j++)
        kiln_prefetch_vector(ix, ids[j]);
    uint32_t m = 0;
    for (uint32_t j = 0; j < u; j++) {
        if (j + MERGE_PREFETCH < u)
            kiln_prefetch_vector(ix, ids[j + MERGE_PREFETCH]);
        cands[m++] = (kiln_cand){kiln_node_dist(ix, v, ids[j]), ids[j]};
    }
    kiln_cands_sort(cands, m);
    uint32_t *l = kiln_links(ix, i, 0);
    memcpy(l + 1, prot, np * sizeof(uint32_t));
    uint32_t kept = np + kiln_select_neighbors(ix, cands, m, ix->M0 - np, l + 1 + np);
    for (uint32_t j = 0; j < m && kept < ix->M; j++) {
        bool have = false;
        for (uint32_t t = 0; t < kept && !have; t++)
            have = l[1 + t] == cands[j].id;
        if (!have)
            l[1 + kept++] = cands[j].id;
    }
    l[0] = kept;
}

/* How many links at the head of node i's forward list are protected: the
 * ones highway_links gave it. Stable while reverse links are added, since
 * link_add_keep never moves them. */
static uint32_t protected_count(const struct kiln_index *ix, uint32_t i) {
    if (ix->levels[i] >= 1)
        return kiln_links(ix, i, 1)[0];
    return ix->max_level >= 1 && ix->entry_point < ix->count ? 1 : 0;
}

/* kiln_link_add for level 0 that leaves from's first keep links in place and
 * re-prunes only the rest when the list is full. */
static void link_add_keep(const struct kiln_index *ix, kiln_node_lock *locks, uint32_t from,
                          uint32_t to, uint32_t keep) {
    kiln_lock(locks, from);
    uint32_t *l = kiln_links(ix, from, 0);
    const uint32_t n = l[0];
    bool have = false;
    for (uint32_t j = 0; j < n && !have; j++)
        have = l[1 + j] == to;
    if (have || n < ix->M0) {
        if (!have)
            l[1 + l[0]++] = to;
        kiln_unlock(locks, from);
        return;
    }
    kiln_cand cands[2 * KILN_MAX_M + 1];
    const float *fv = kiln_vector(ix, from);
    uint32_t m = 0;
    for (uint32_t j = keep; j < n; j++)
        cands[m++] = (kiln_cand){kiln_node_dist(ix, fv, l[1 + j]), l[1 + j]};
    cands[m++] = (kiln_cand){kiln_node_dist(ix, fv, to), to};
    kiln_cands_sort(cands, m);
    l[0] = keep + kiln_select_neighbors(ix, cands, m, ix->M0 - keep, l + 1 + keep);
    kiln_unlock(locks, from);
}

kiln_status kiln_level0_from_candidates(struct kiln_index *ix, const uint32_t *cand, uint32_t width,
                                        int threads) {
    kiln_ctx *ctx = ix->ctx;
    const uint32_t n = (uint32_t)ix->count;
    void *lock_mem = NULL, *fwd_mem = NULL;
    kiln_status st = kiln_calloc(ctx, (size_t)n * sizeof(kiln_node_lock), "link locks", &lock_mem);
    if (st)
        return st;
    size_t stride = kiln_links0_stride(ix);
    if ((st = kiln_alloc(ctx, (size_t)n * stride * sizeof(uint32_t), "forward lists", &fwd_mem))) {
        free(lock_mem);
        return st;
    }
    kiln_node_lock *locks = lock_mem;
    uint32_t *fwd = fwd_mem;
    kiln_progress_bar bar;
    kiln_progress_begin(&bar, ctx, "rerank+prune", n);
    kiln_status result = KILN_OK;
#pragma omp parallel num_threads(threads)
    {
        uint32_t *ids = malloc(((size_t)width + ix->M) * sizeof *ids);
        kiln_cand *cands = malloc(((size_t)width + ix->M) * sizeof *cands);
        if (!ids || !cands) {
#pragma omp critical(kiln_merge_error)
            result = kiln_fail(ctx, KILN_E_NOMEM, "out of memory for rerank buffers");
        }
#pragma omp for schedule(dynamic, 256)
        for (uint32_t i = 0; i < n; i++) {
            if (!ids || !cands)
                continue;
            select_forward(ix, cand + (size_t)i * width, width, i, ids, cands);
            if ((i & 1023) == 1023)
                kiln_progress_add(&bar, 1024);
        }
        free(ids);
        free(cands);
    }
    kiln_progress_add(&bar, n & 1023); /* the last partial batch */
    kiln_progress_end(&bar);
    if (result == KILN_OK) {
        /* Snapshot forward lists: reverse links change the live ones. */
        memcpy(fwd, ix->links0, (size_t)n * stride * sizeof(uint32_t));
        kiln_progress_begin(&bar, ctx, "reverse links", n);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 256)
        for (uint32_t i = 0; i < n; i++) {
            const uint32_t *f = fwd + (size_t)i * stride;
            /* An entrance is a one-way ramp: no link back (decision 4). */
            for (uint32_t j = ix->levels[i] >= 1 ? 0 : protected_count(ix, i); j < f[0]; j++)
                link_add_keep(ix, locks, f[1 + j], i, protected_count(ix, f[1 + j]));
            if ((i & 1023) == 1023)
                kiln_progress_add(&bar, 1024);
        }
        kiln_progress_add(&bar, n & 1023);
        kiln_progress_end(&bar);
    }
    free(fwd_mem);
    free(lock_mem);
    return result;
}
