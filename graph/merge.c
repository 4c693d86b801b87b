/* merge.c -- level 0 from candidate neighbour lists: the union and the
 * reverse links of the device pipeline.
 *
 * The device gives each vector approximate nearest neighbours from each
 * cluster it belongs to, ranked by 4-bit distances; the batch reranks them
 * exactly and prunes them locally (host/device_build.c). Here the lists
 * become an HNSW level 0 with the same degree bounds as insertion.
 *
 * Design decisions:
 *  1. No vector is read here (issue 12, item 1): each node's candidates
 *     arrive already pruned inside their clusters, where the vectors were
 *     resident (graph/prune.c decision 4), each with its exact distance
 *     and the direction hash of node -> candidate (graph/prune.c decision
 *     5). The union of a node's lists keeps, nearest first, one candidate
 *     per hash (PiPNN's HashPrune, Rubel et al. 2026: the heuristic's
 *     "no kept neighbour in that direction" judged by the bucket of the
 *     direction instead of by a distance), up to M0 after the protected
 *     links, all in parallel with no locks: node i writes only its own
 *     list. Measured at 1M x 128 against the heuristic over the whole
 *     union (which read up to ~80 vectors per node at random): recall@10
 *     at ef 10/16/32/64/128 0.8674/0.9347/0.9805/0.9943/0.9978 ->
 *     0.8920/0.9467/0.9851/0.9962/0.9977; fmnist60k 0.9507/0.9774/0.9941/
 *     0.9982/0.9995 -> 0.9604/0.9809/0.9938/0.9980/0.9994. Hashing the
 *     raw K candidates without the local heuristic was lower (1M, 12 bits:
 *     0.8733/0.9254/0.9704/0.9908/0.9968); 6, 9 and 16 bits were no better
 *     than 12.
 *  1a. The selection keeps few of a node's nearest neighbours on clustered
 *     data, which strands nodes, so the nearest others are kept up to M,
 *     the paper's keepPrunedConnections; reverse links fill the rest up to
 *     M0.
 *  2. Reverse links are added afterwards: a link that fits is appended, a
 *     full list is re-selected by hash from its members plus the new one
 *     (never the protected links of decision 4). The forward pass sends
 *     each node its own links back with their distances and hashes
 *     (KILN_EDGE_OWN edges) beside the reverse edges, and the reverse hash
 *     is the forward one with every sign flipped, so this pass reads no
 *     vector either.
 *  3. Forward lists come before any reverse link, so a node's final list
 *     is its own selection plus what others chose to add.
 *  4. Highways. A kNN graph has only local links: of well-separated clusters
 *     it has none between them, and even inside one cluster a beam needs many
 *     hops (measured on 200K synthetic clustered vectors: recall@10 stuck at
 *     0.972 at ef=256 while insertion reached 1.000). The upper levels, built
 *     first by insertion over the sparser level-1 nodes, are exactly a
 *     navigable long-range graph, so level 0 embeds it: a level-1 node keeps
 *     its level-1 links, and every other node keeps a link to a level-1 node
 *     (its "entrance"). These links are protected from the selection, which
 *     would drop them as far, and from the re-selection of full lists; they
 *     get no reverse link (an entrance is a one-way ramp, and level-1 links
 *     are mostly mutual already). Measured, same data: ef=64 0.945 -> 0.986,
 *     ef=256 0.972 -> 1.000. The entrance's level-1 links used to join the
 *     candidates too, and level-1 links to send reverse edges: both needed
 *     vectors for their distances, and with the hash selection dropping
 *     them changed recall@10 at 1M by at most +-0.001.
 *  4a. The entrance is the nearest level-1 node among the node's own
 *     candidates (exact distances, ties by id); only a node with none of
 *     them on level 1 descends from the entry point, the one place here
 *     that reads vectors. The descent was a dozen random vector reads per
 *     node: at 1M x 128 (2 threads), without it merge+prune went from 14.8
 *     to 11.6 s, and recall@10 went up at ef 10/16/32.
 *  6. Both passes work on a block of consecutive nodes at a time
 *     (kiln_l0_block), so the caller can stream them partition by
 *     partition from spill files in bounded memory: the forward pass
 *     returns each link as a reverse edge (target, source, distance, hash)
 *     and an own edge, and the reverse pass takes a block of targets with
 *     their edges. Equal ids always carry equal distances and hashes (the
 *     same functions of the same two vectors; distances are symmetric for
 *     every metric), so after a sort by (distance, id) duplicates are
 *     adjacent.
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
KILN_DEFINE_SORT(by_id_sort, kiln_hcand, BY_ID)

/* The protected links of node i (decision 4): a level-1 node keeps its
 * level-1 links; any other node keeps its entrance, the nearest level-1
 * node among its n_in candidates in (decision 4a). Returns how many went to
 * prot. */
static uint32_t highway_links(const struct kiln_index *ix, uint32_t i, const kiln_hcand *in,
                              uint32_t n_in, uint32_t *prot) {
    if (ix->levels[i] >= 1) {
        const uint32_t *up = kiln_links(ix, i, 1);
        memcpy(prot, up + 1, up[0] * sizeof(uint32_t));
        return up[0];
    }
    if (ix->max_level == 0 || ix->entry_point >= ix->count) /* no hierarchy built */
        return 0;
    kiln_cand best = {0, KILN_NO_NODE};
    for (uint32_t j = 0; j < n_in; j++) {
        const kiln_cand c = {in[j].dist, in[j].id};
        if (ix->levels[c.id] >= 1 && (best.id == KILN_NO_NODE || kiln_cand_before(c, best)))
            best = c;
    }
    if (best.id == KILN_NO_NODE) {
        /* None of its candidates is on level 1 (rare: a quarter of the
         * nodes are): a greedy descent, the one place that reads vectors. */
        const float *v = kiln_vector(ix, i);
        best.id = ix->entry_point;
        best.dist = kiln_node_dist(ix, v, best.id);
        kiln_greedy_descend(ix, v, ix->max_level, 1, &best.id, &best.dist);
    }
    prot[0] = best.id;
    return 1;
}

/* Node i's forward list, written to its level-0 block: the protected links,
 * then the hash selection among the candidates, then the nearest others up
 * to M. in holds the node's candidates (duplicates and self allowed); cands
 * has room for n_in entries and gets the list's unprotected links, of which
 * the count is returned. */
static uint32_t select_forward(struct kiln_index *ix, const kiln_hcand *in, uint64_t n_in,
                               uint32_t i, kiln_hcand *cands) {
    uint32_t prot[KILN_MAX_M];
    uint32_t n = 0;
    for (uint64_t j = 0; j < n_in; j++)
        if (in[j].id != i && in[j].id < ix->count)
            cands[n++] = in[j];
    const uint32_t np = highway_links(ix, i, cands, n, prot);
    /* By (distance, id): equal ids carry equal distances and hashes
     * (decision 6), so duplicates are adjacent. */
    kiln_hcands_sort(cands, n);
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
    /* Decision 1: one link per direction, nearest first, then the nearest
     * others up to M (decision 1a), all in distance order. */
    const uint32_t room = np < ix->M0 ? ix->M0 - np : 0;
    const uint32_t sel = kiln_hash_select(cands, m, room, np < ix->M ? ix->M - np : 0);
    uint32_t *l = kiln_links(ix, i, 0);
    memcpy(l + 1, prot, np * sizeof(uint32_t));
    for (uint32_t t = 0; t < sel; t++)
        l[1 + np + t] = cands[t].id;
    l[0] = np + sel;
    return sel;
}

/* How many links at the head of node i's forward list are protected: the
 * ones highway_links gave it. Stable while reverse links are added, since
 * the reverse pass never moves them. */
static uint32_t protected_count(const struct kiln_index *ix, uint32_t i) {
    if (ix->levels[i] >= 1)
        return kiln_links(ix, i, 1)[0];
    return ix->max_level >= 1 && ix->entry_point < ix->count ? 1 : 0;
}

void kiln_edges_by_target(const kiln_edge *e, uint64_t n, uint32_t first, uint32_t count,
                          uint64_t *off, kiln_hcand *in) {
    memset(off, 0, ((size_t)count + 1) * sizeof *off);
    for (uint64_t i = 0; i < n; i++)
        off[e[i].to - first + 1]++;
    for (uint32_t t = 0; t < count; t++)
        off[t + 1] += off[t];
    /* Scatter with off[t] as the fill cursor of target t, which leaves it
     * at the next target's start; shifting back restores the starts. */
    for (uint64_t i = 0; i < n; i++)
        in[off[e[i].to - first]++] = (kiln_hcand){e[i].dist, e[i].from, e[i].hash};
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
    kiln_hcand *links = NULL;
    uint32_t *n_links = NULL;
    kiln_status result = kiln_alloc(ctx, ((size_t)b->count * ix->M0 + 1) * sizeof *links,
                                    "forward links", (void **)&links);
    if (result || (result = kiln_alloc(ctx, ((size_t)b->count + 1) * sizeof *n_links,
                                       "forward link counts", (void **)&n_links))) {
        free(links);
        return result;
    }
#pragma omp parallel num_threads(threads)
    {
        kiln_hcand *cands = malloc(((size_t)widest + 1) * sizeof *cands);
        if (!cands) {
#pragma omp critical(kiln_merge_error)
            result = kiln_fail(ctx, KILN_E_NOMEM, "out of memory for forward buffers");
        }
#pragma omp for schedule(dynamic, 256)
        for (uint32_t k = 0; k < b->count; k++)
            if (cands) {
                n_links[k] = select_forward(ix, b->cands + b->offsets[k],
                                            b->offsets[k + 1] - b->offsets[k], b->first + k, cands);
                memcpy(links + (size_t)k * ix->M0, cands, n_links[k] * sizeof *cands);
            }
        free(cands);
    }
    /* Each node's own links, and their reverse edges, in node order, so the
     * output is the same whatever the threads. Protected links give none:
     * an entrance is a one-way ramp, and a level-1 node's level-1 links are
     * mostly mutual already (decision 4). */
    uint64_t m = 0;
    for (uint32_t k = 0; result == KILN_OK && k < b->count; k++) {
        const uint32_t i = b->first + k;
        const kiln_hcand *f = links + (size_t)k * ix->M0;
        for (uint32_t j = 0; j < n_links[k]; j++) {
            rev[m++] = (kiln_edge){i, f[j].id, f[j].dist, f[j].hash | KILN_EDGE_OWN};
            rev[m++] = (kiln_edge){f[j].id, i, f[j].dist, kiln_hash_reverse(f[j].hash)};
        }
    }
    *n_rev = m;
    free(n_links);
    free(links);
    return result;
}

/* Target u's list from its edges e (n, in file order): the protected head
 * stays, its own links come back with their distances and hashes, then the
 * incoming ones by source id, appended while there is room and re-selected
 * by hash when the list is full (decision 2). */
/* Whether id may join u's list cur (nc long) after its keep protected
 * links: not u, not already there. */
static bool link_is_new(const uint32_t *l, uint32_t keep, const kiln_hcand *cur, uint32_t nc,
                        uint32_t u, uint32_t id) {
    bool dup = id == u;
    for (uint32_t t = 0; t < keep && !dup; t++)
        dup = l[1 + t] == id;
    for (uint32_t t = 0; t < nc && !dup; t++)
        dup = cur[t].id == id;
    return !dup;
}

static void apply_reverse(struct kiln_index *ix, uint32_t u, kiln_hcand *e, uint32_t n) {
    uint32_t *l = kiln_links(ix, u, 0);
    const uint32_t keep = protected_count(ix, u), cap = keep < ix->M0 ? ix->M0 - keep : 0;
    kiln_hcand cur[2 * KILN_MAX_M + 1];
    uint32_t nc = 0, n_in = 0;
    /* Own links first, in their order (a damaged edge file cannot add a
     * self link, a duplicate or more than fit). */
    for (uint32_t j = 0; j < n; j++) {
        if (!(e[j].hash & KILN_EDGE_OWN))
            e[n_in++] = e[j];
        else if (nc < cap && link_is_new(l, keep, cur, nc, u, e[j].id))
            cur[nc++] = (kiln_hcand){e[j].dist, e[j].id, e[j].hash & KILN_HASH_MASK};
    }
    /* By source id (decision 7): the order decides which survive a
     * re-selection, so it must not depend on where the edges came from. */
    by_id_sort(e, n_in);
    for (uint32_t j = 0; j < n_in; j++) {
        const uint32_t id = e[j].id;
        if (!link_is_new(l, keep, cur, nc, u, id))
            continue;
        cur[nc++] = (kiln_hcand){e[j].dist, id, e[j].hash & KILN_HASH_MASK};
        if (nc > cap) {
            kiln_hcands_sort(cur, nc);
            nc = kiln_hash_select(cur, nc, cap, 0);
        }
    }
    for (uint32_t t = 0; t < nc; t++)
        l[1 + keep + t] = cur[t].id;
    l[0] = keep + nc;
}

kiln_status kiln_l0_reverse(struct kiln_index *ix, const kiln_l0_block *b, kiln_hcand *scratch,
                            int threads) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 256)
    for (uint32_t k = 0; k < b->count; k++) {
        kiln_hcand *e = scratch + b->offsets[k];
        const uint32_t n = (uint32_t)(b->offsets[k + 1] - b->offsets[k]);
        memcpy(e, b->cands + b->offsets[k], n * sizeof *e);
        apply_reverse(ix, b->first + k, e, n);
    }
    return KILN_OK;
}

kiln_status kiln_level0_from_candidates(struct kiln_index *ix, const uint32_t *cand, uint32_t width,
                                        int threads) {
    kiln_ctx *ctx = ix->ctx;
    const uint32_t n = (uint32_t)ix->count;
    kiln_hcand *c = NULL, *scratch = NULL;
    uint64_t *off = NULL;
    kiln_edge *rev = NULL;
    float *planes = NULL, *proj = NULL;
    uint32_t *len = NULL;
    size_t slots;
    kiln_status st = kiln_mul_size(n, width, &slots) || width > KILN_PRUNE_LOCAL_MAX
                         ? kiln_fail(ctx, KILN_E_RANGE,
                                     "merge: %u x %u candidates overflow or are wider than %d", n,
                                     width, KILN_PRUNE_LOCAL_MAX)
                         : KILN_OK;
    if (st || (st = kiln_alloc(ctx, (slots + 1) * sizeof *c, "candidates", (void **)&c)) ||
        (st = kiln_alloc(ctx, ((size_t)n + 1) * sizeof *off, "candidate offsets", (void **)&off)) ||
        (st = kiln_alloc(ctx, ((size_t)n + 1) * sizeof *len, "candidate counts", (void **)&len)) ||
        (st = kiln_alloc(ctx, (2 * (size_t)n * ix->M0 + 1) * sizeof *rev, "reverse edges",
                         (void **)&rev)) ||
        (st = kiln_alloc(ctx, ((size_t)n * KILN_HASH_BITS + 1) * sizeof *proj, "projections",
                         (void **)&proj)) ||
        (st = kiln_hash_planes(ctx, ix->dim, ix->seed, &planes)))
        goto done;
        /* The whole set is resident here, so it is one group: every node's
         * list is pruned locally as a cluster batch would (decision 1). */
#pragma omp parallel for num_threads(threads) schedule(static, 1024)
    for (uint32_t i = 0; i < n; i++)
        kiln_hash_project(planes, ix->dim, kiln_vector(ix, i), proj + (size_t)i * KILN_HASH_BITS);
#pragma omp parallel num_threads(threads)
    {
        kiln_cand sorted[KILN_PRUNE_LOCAL_MAX];
#pragma omp for schedule(dynamic, 256)
        for (uint32_t i = 0; i < n; i++) {
            const float *v = kiln_vector(ix, i);
            uint32_t m = 0;
            for (uint32_t j = 0; j < width; j++) {
                const uint32_t id = cand[(size_t)i * width + j];
                if (id != KILN_NO_NODE && id < n && id != i)
                    sorted[m++] = (kiln_cand){kiln_node_dist(ix, v, id), id};
            }
            kiln_cands_sort(sorted, m);
            uint32_t u = 0;
            for (uint32_t j = 0; j < m; j++)
                if (u == 0 || sorted[j].id != sorted[u - 1].id)
                    sorted[u++] = sorted[j];
            len[i] = kiln_local_links(ix->vectors, ix->dim, ix->dist, proj, i, sorted, u, ix->M,
                                      ix->M0, NULL, c + (size_t)i * width);
        }
    }
    /* Close up the lists. */
    uint64_t m = 0;
    for (uint32_t i = 0; i < n; i++) {
        off[i] = m;
        memmove(c + m, c + (size_t)i * width, len[i] * sizeof *c);
        m += len[i];
    }
    off[n] = m;
    kiln_l0_block b = {0, n, off, c};
    uint64_t n_rev = 0;
    if ((st = kiln_l0_forward(ix, &b, threads, rev, &n_rev)))
        goto done;
    /* Group the edges by target (counting sort, stable). */
    free(c);
    c = NULL;
    if ((st = kiln_alloc(ctx, (n_rev + 1) * sizeof *c, "reverse candidates", (void **)&c)) ||
        (st = kiln_alloc(ctx, (n_rev + 1) * sizeof *scratch, "reverse scratch", (void **)&scratch)))
        goto done;
    kiln_edges_by_target(rev, n_rev, 0, n, off, c);
    b.cands = c;
    st = kiln_l0_reverse(ix, &b, scratch, threads);
done:
    free(planes);
    free(proj);
    free(len);
    free(scratch);
    free(rev);
    free(off);
    free(c);
    return st;
}
