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
 *     kiln_links_merge does (but never the protected links of decision 4);
 *     heuristic-pruned forward lists leave room, so most reverse links land
 *     without a re-prune.
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
 *  4a. The entrance is the nearest level-1 node among the node's own
 *     candidates (exact distances, ties by id); only a node with none of
 *     them on level 1 descends from the entry point. The descent was a
 *     dozen random vector reads per node: at 1M x 128 (2 threads), without
 *     it merge+prune went from 14.8 to 11.6 s, and the candidate's
 *     entrance is nearer, so recall@10 went up at ef 10/16/32 (0.8728/0.9368/0.9836 ->
 *     0.8767/0.9401/0.9849) and stayed within 0.001 at 64/128.
 *  5. The exact distances come with the candidates: the device pipeline
 *     computes them inside each cluster batch, where the members' vectors
 *     are resident (host/device_build.c), so only the highway candidates and
 *     the heuristic read vectors from anywhere in the set; those reads are
 *     bound by memory latency and the next MERGE_PREFETCH are prefetched.
 *  6. Both passes work on a block of consecutive nodes at a time
 *     (kiln_l0_block), so the caller can stream them partition by
 *     partition from spill files in bounded memory: the forward pass
 *     returns each link as a reverse edge (target, source, distance), and
 *     the reverse pass takes a block of targets with their incoming edges.
 *     Equal ids always carry equal distances (the same distance function on
 *     the same two vectors, symmetric for every metric), so after a sort by
 *     (distance, id) duplicates are adjacent.
 *  7. Deterministic whatever the threads: each node's forward list depends
 *     only on its own candidates; a target's incoming edges are applied by
 *     one thread, in source id order, so no locks are taken and the same
 *     input gives the same lists, byte for byte (the concurrent version it
 *     replaced added reverse links in thread order). Source id order is what
 *     that version did on one thread, so one-thread graphs are unchanged
 *     (siftsmall and fmnistsmall files byte-identical); nearest first was
 *     measured 0.0016 lower in recall@10 at ef 10 and 16 on fmnistsmall.
 */
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "../common/progress_internal.h"
#include "build_internal.h"
#include "../common/sort_internal.h"

#define BY_ID(a, b) ((a).id < (b).id)
KILN_DEFINE_SORT(by_id_sort, kiln_cand, BY_ID)

/* Candidates whose vectors are requested ahead of their rerank distance. */
#define MERGE_PREFETCH 4

/* The protected links of node i (decision 4): a level-1 node keeps its
 * level-1 links; any other node keeps its entrance, the nearest level-1
 * node among its n_in candidates in (decision 4a). Returns how many went to
 * prot. Also appends to ids[*n] the entrance's level-1 links as ordinary
 * candidates. */
static uint32_t highway_links(const struct kiln_index *ix, uint32_t i, const kiln_cand *in,
                              uint32_t n_in, uint32_t *prot, uint32_t *ids, uint32_t *n) {
    if (ix->levels[i] >= 1) {
        const uint32_t *up = kiln_links(ix, i, 1);
        memcpy(prot, up + 1, up[0] * sizeof(uint32_t));
        return up[0];
    }
    if (ix->max_level == 0 || ix->entry_point >= ix->count) /* no hierarchy built */
        return 0;
    kiln_cand best = {0, KILN_NO_NODE};
    for (uint32_t j = 0; j < n_in; j++)
        if (ix->levels[in[j].id] >= 1 && (best.id == KILN_NO_NODE || kiln_cand_before(in[j], best)))
            best = in[j];
    uint32_t cur = best.id;
    float cur_dist = best.dist;
    if (cur == KILN_NO_NODE) {
        const float *v = kiln_vector(ix, i);
        cur = ix->entry_point;
        cur_dist = kiln_node_dist(ix, v, cur);
        kiln_greedy_descend(ix, v, ix->max_level, 1, &cur, &cur_dist);
    }
    const uint32_t *up = kiln_links(ix, cur, 1);
    for (uint32_t j = 0; j < up[0]; j++)
        ids[(*n)++] = up[1 + j];
    prot[0] = cur;
    return 1;
}

/* Node i's forward list, written to its level-0 block: the protected links,
 * then the heuristic's choice among the candidates, then the nearest pruned
 * candidates up to M. in holds the node's candidates with their exact
 * distances (duplicates and self allowed); cands has room for n_in + M
 * entries. */
static void select_forward(struct kiln_index *ix, const kiln_cand *in, uint64_t n_in, uint32_t i,
                           kiln_cand *cands, float *dist) {
    uint32_t prot[KILN_MAX_M], hw[KILN_MAX_M + 1];
    uint32_t n = 0, nh = 0;
    for (uint64_t j = 0; j < n_in; j++)
        if (in[j].id != i && in[j].id < ix->count)
            cands[n++] = in[j];
    const uint32_t np = highway_links(ix, i, cands, n, prot, hw, &nh);
    /* Decision 5: the highway candidates are scattered over the whole set,
     * so each distance would wait on memory; fetch a few ahead. */
    const float *v = kiln_vector(ix, i);
    for (uint32_t j = 0; j < nh && j < MERGE_PREFETCH; j++)
        kiln_prefetch_vector(ix, hw[j]);
    for (uint32_t j = 0; j < nh; j++) {
        if (j + MERGE_PREFETCH < nh)
            kiln_prefetch_vector(ix, hw[j + MERGE_PREFETCH]);
        if (hw[j] != i)
            cands[n++] = (kiln_cand){kiln_node_dist(ix, v, hw[j]), hw[j]};
    }
    /* By (distance, id): equal ids carry equal distances (decision 6), so
     * duplicates are adjacent. */
    kiln_cands_sort(cands, n);
    uint32_t m = 0;
    for (uint32_t j = 0; j < n; j++) {
        if (m > 0 && cands[j].id == cands[m - 1].id)
            continue;
        bool is_prot = false;
        for (uint32_t t = 0; t < np && !is_prot; t++)
            is_prot = prot[t] == cands[j].id;
        if (!is_prot)
            cands[m++] = cands[j];
    }
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
    /* Each link's distance, for its reverse edge: from the candidates where
     * it is one (the common case), else computed. */
    for (uint32_t t = 0; t < kept; t++) {
        bool found = false;
        for (uint32_t j = 0; j < m && !found; j++)
            if ((found = cands[j].id == l[1 + t]))
                dist[t] = cands[j].dist;
        if (!found)
            dist[t] = kiln_node_dist(ix, v, l[1 + t]);
    }
}

/* How many links at the head of node i's forward list are protected: the
 * ones highway_links gave it. Stable while reverse links are added, since
 * link_add_keep never moves them. */
static uint32_t protected_count(const struct kiln_index *ix, uint32_t i) {
    if (ix->levels[i] >= 1)
        return kiln_links(ix, i, 1)[0];
    return ix->max_level >= 1 && ix->entry_point < ix->count ? 1 : 0;
}

/* Adds link from -> to (at distance d) on level 0, leaving from's first
 * keep links in place and re-pruning only the rest when the list is full.
 * The caller owns from's list (decision 7): no lock. */
static void link_add_keep(const struct kiln_index *ix, uint32_t from, kiln_cand to, uint32_t keep) {
    uint32_t *l = kiln_links(ix, from, 0);
    const uint32_t n = l[0];
    for (uint32_t j = 0; j < n; j++)
        if (l[1 + j] == to.id)
            return;
    if (n < ix->M0) {
        l[1 + l[0]++] = to.id;
        return;
    }
    kiln_cand cands[2 * KILN_MAX_M + 1];
    const float *fv = kiln_vector(ix, from);
    uint32_t m = 0;
    for (uint32_t j = keep; j < n && j < keep + MERGE_PREFETCH; j++)
        kiln_prefetch_vector(ix, l[1 + j]);
    for (uint32_t j = keep; j < n; j++) {
        if (j + MERGE_PREFETCH < n)
            kiln_prefetch_vector(ix, l[1 + j + MERGE_PREFETCH]);
        cands[m++] = (kiln_cand){kiln_node_dist(ix, fv, l[1 + j]), l[1 + j]};
    }
    cands[m++] = to;
    kiln_cands_sort(cands, m);
    l[0] = keep + kiln_select_neighbors(ix, cands, m, ix->M0 - keep, l + 1 + keep);
}

void kiln_edges_by_target(const kiln_edge *e, uint64_t n, uint32_t first, uint32_t count,
                          uint64_t *off, kiln_cand *in) {
    memset(off, 0, ((size_t)count + 1) * sizeof *off);
    for (uint64_t i = 0; i < n; i++)
        off[e[i].to - first + 1]++;
    for (uint32_t t = 0; t < count; t++)
        off[t + 1] += off[t];
    /* Scatter with off[t] as the fill cursor of target t, which leaves it
     * at the next target's start; shifting back restores the starts. */
    for (uint64_t i = 0; i < n; i++)
        in[off[e[i].to - first]++] = (kiln_cand){e[i].dist, e[i].from};
    for (uint32_t t = count; t > 0; t--)
        off[t] = off[t - 1];
    off[0] = 0;
}

uint64_t kiln_l0_block_max(const kiln_l0_block *b) {
    uint64_t most = 0;
    for (uint32_t i = 0; i < b->count; i++)
        if (b->offsets[i + 1] - b->offsets[i] > most)
            most = b->offsets[i + 1] - b->offsets[i];
    return most;
}

kiln_status kiln_l0_forward(struct kiln_index *ix, const kiln_l0_block *b, int threads,
                            kiln_edge *rev, uint64_t *n_rev) {
    kiln_ctx *ctx = ix->ctx;
    const uint64_t widest = kiln_l0_block_max(b);
    float *dist = NULL;
    kiln_status result = kiln_alloc(ctx, ((size_t)b->count * ix->M0 + 1) * sizeof *dist,
                                    "link distances", (void **)&dist);
    if (result)
        return result;
#pragma omp parallel num_threads(threads)
    {
        kiln_cand *cands = malloc(((size_t)widest + ix->M + 1) * sizeof *cands);
        if (!cands) {
#pragma omp critical(kiln_merge_error)
            result = kiln_fail(ctx, KILN_E_NOMEM, "out of memory for rerank buffers");
        }
#pragma omp for schedule(dynamic, 256)
        for (uint32_t i = 0; i < b->count; i++)
            if (cands)
                select_forward(ix, b->cands + b->offsets[i], b->offsets[i + 1] - b->offsets[i],
                               b->first + i, cands, dist + (size_t)i * ix->M0);
        free(cands);
    }
    if (result) {
        free(dist);
        return result;
    }
    /* Reverse edges in node order, so the output is the same whatever the
     * threads. An entrance is a one-way ramp: no link back (decision 4). */
    uint64_t m = 0;
    for (uint32_t k = 0; k < b->count; k++) {
        const uint32_t i = b->first + k;
        const uint32_t *f = kiln_links(ix, i, 0);
        const float *fd = dist + (size_t)k * ix->M0;
        for (uint32_t j = ix->levels[i] >= 1 ? 0 : protected_count(ix, i); j < f[0]; j++)
            rev[m++] = (kiln_edge){f[1 + j], i, fd[j]};
    }
    *n_rev = m;
    free(dist);
    return KILN_OK;
}

kiln_status kiln_l0_reverse(struct kiln_index *ix, const kiln_l0_block *b, kiln_cand *scratch,
                            int threads) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 256)
    for (uint32_t k = 0; k < b->count; k++) {
        const uint32_t u = b->first + k;
        kiln_cand *in = scratch + b->offsets[k];
        const uint32_t n = (uint32_t)(b->offsets[k + 1] - b->offsets[k]);
        memcpy(in, b->cands + b->offsets[k], n * sizeof *in);
        /* By source id (decision 7): the order decides which survive a
         * re-prune, so it must not depend on where the edges came from. */
        by_id_sort(in, n);
        const uint32_t keep = protected_count(ix, u);
        for (uint32_t j = 0; j < n; j++)
            link_add_keep(ix, u, in[j], keep);
    }
    return KILN_OK;
}

kiln_status kiln_level0_from_candidates(struct kiln_index *ix, const uint32_t *cand, uint32_t width,
                                        int threads) {
    kiln_ctx *ctx = ix->ctx;
    const uint32_t n = (uint32_t)ix->count;
    kiln_cand *c = NULL, *scratch = NULL;
    uint64_t *off = NULL;
    kiln_edge *rev = NULL;
    size_t slots;
    kiln_status st =
        kiln_mul_size(n, width, &slots)
            ? kiln_fail(ctx, KILN_E_RANGE, "merge: %u x %u candidates overflow", n, width)
            : KILN_OK;
    if (st || (st = kiln_alloc(ctx, (slots + 1) * sizeof *c, "candidates", (void **)&c)) ||
        (st = kiln_alloc(ctx, ((size_t)n + 1) * sizeof *off, "candidate offsets", (void **)&off)) ||
        (st = kiln_alloc(ctx, ((size_t)n * ix->M0 + 1) * sizeof *rev, "reverse edges",
                         (void **)&rev)))
        goto done;
    uint64_t m = 0;
    for (uint32_t i = 0; i < n; i++) {
        off[i] = m;
        const float *v = kiln_vector(ix, i);
        for (uint32_t j = 0; j < width; j++) {
            const uint32_t id = cand[(size_t)i * width + j];
            if (id != KILN_NO_NODE && id < n)
                c[m++] = (kiln_cand){kiln_node_dist(ix, v, id), id};
        }
    }
    off[n] = m;
    kiln_l0_block b = {0, n, off, c};
    uint64_t n_rev = 0;
    if ((st = kiln_l0_forward(ix, &b, threads, rev, &n_rev)))
        goto done;
    /* Group the reverse edges by target (counting sort, stable). */
    free(c);
    c = NULL;
    if ((st = kiln_alloc(ctx, (n_rev + 1) * sizeof *c, "reverse candidates", (void **)&c)) ||
        (st = kiln_alloc(ctx, (n_rev + 1) * sizeof *scratch, "reverse scratch", (void **)&scratch)))
        goto done;
    kiln_edges_by_target(rev, n_rev, 0, n, off, c);
    b.cands = c;
    st = kiln_l0_reverse(ix, &b, scratch, threads);
done:
    free(scratch);
    free(rev);
    free(off);
    free(c);
    return st;
}
