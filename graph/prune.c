/* prune.c -- neighbour selection and link insertion with re-pruning, the
 * part of HNSW that bounds degrees. Used by insertion, by the device
 * pipeline's batches (the local prune, direction hashes) and by its union
 * (the hash selection, graph/merge.c).
 *
 * Design decisions:
 *  1. The heuristic is hnswlib's getNeighborsByHeuristic2 exactly (no
 *     extendCandidates, no keepPrunedConnections), so graphs are comparable
 *     with hnswlib's and recall differences come from elsewhere.
 *  2. A list that overflows is re-pruned from its current members plus all
 *     the new ones at once, bounded by the level's capacity (M0 on level 0,
 *     M above); new links that fit are appended in the order given, so the
 *     caller's order (graph/hnsw_insert.c sorts them) fixes the result.
 *  3. The heuristic reads each candidate's vector; with insertion they
 *     were just read by the beam search, so the next SELECT_PREFETCH
 *     candidates' vectors are prefetched whole.
 *  4. The device pipeline's local prune (kiln_prune_local): a node's K
 *     nearest from one cluster are pruned with the same heuristic while
 *     the cluster's vectors are resident in its batch, to at most M0, and
 *     the nearest pruned ones are kept until 3M/4 (kiln_local_fill), so
 *     the union over the node's clusters (graph/merge.c decision 1) still
 *     has near neighbours to choose from. Measured at 1M x 128 and on
 *     fmnist60k, recall@10 at ef 10/16/32/64/128, fill 8 / 12 / 16:
 *       1M       0.8659/0.9337/0.9797/0.9944/0.9975,
 *                0.8918/0.9462/0.9855/0.9961/0.9978, (16 not run)
 *       fmnist   0.9508/0.9778/0.9934/0.9980/0.9994,
 *                0.9609/0.9804/0.9936/0.9980/0.9994,
 *                0.9589/0.9777/0.9915/0.9973/0.9992
 *     (24: 0.9348 at ef 10 on fmnist; the hash selection cannot thin a
 *     list of mostly nearest neighbours).
 *  5. Direction hashes: KILN_HASH_BITS Gaussian planes drawn from the
 *     build's seed; an edge u -> v hashes to the signs of the planes'
 *     products with v - u, from each vector's projections (computed once
 *     per batch slot, KILN_HASH_BITS floats), so the hash costs
 *     KILN_HASH_BITS compares per edge and v -> u is its complement.
 *     Candidates in one bucket point the same way from u, and the nearest
 *     of them stands for the rest, which is what the heuristic decides
 *     with a distance between the two. 12 bits (4096 buckets) for up to
 *     ~64 candidates. Measured at 1M x 128 with the local prune (fill 16
 *     then), recall@10 at ef 10/16/32/64/128 for 10 / 12 / 16 bits:
 *     0.8854/0.9397/0.9807/0.9946/0.9973, 0.8867/0.9399/0.9794/0.9939/
 *     0.9973, 0.8857/0.9406/0.9789/0.9933/0.9970: flat, so the middle.
 */

#include <math.h>
#include <string.h>

#include "../common/rng_internal.h"
#include "../common/sort_internal.h"
#include "build_internal.h"

/* Candidates whose vectors are requested ahead of the one being judged. */
#define SELECT_PREFETCH 4

uint32_t kiln_select_rows(const float *rows, uint32_t dim, kiln_dist_fn dist,
                          const kiln_cand *sorted, uint32_t n, uint32_t M, uint32_t *pick) {
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n && kept < M; i++) {
        const float *v = rows + (size_t)sorted[i].id * dim;
        bool good = true;
        for (uint32_t j = 0; j < kept && good; j++) {
            const float d = dist(v, rows + (size_t)sorted[pick[j]].id * dim, dim);
            good = !(d < sorted[i].dist); /* NaN: +inf, never nearer */
        }
        if (good)
            pick[kept++] = i;
    }
    return kept;
}

uint32_t kiln_prune_local(const float *rows, uint32_t dim, kiln_dist_fn dist,
                          const kiln_cand *sorted, uint32_t n, uint32_t cap, uint32_t fill,
                          uint32_t *pick) {
    if (n > KILN_PRUNE_LOCAL_MAX)
        n = KILN_PRUNE_LOCAL_MAX; /* the farthest beyond it are never picked */
    /* The heuristic judges every list longer than fill, also one shorter
     * than cap (a small cluster, or --knn-k below 2M), where hnswlib's
     * shortcut would keep all of it. */
    if (n <= fill) {
        for (uint32_t i = 0; i < n; i++)
            pick[i] = i;
        return n;
    }
    const uint32_t kept = kiln_select_rows(rows, dim, dist, sorted, n, cap, pick);
    if (kept >= fill)
        return kept;
    /* Then the nearest pruned ones, all in position order. */
    uint64_t mark[KILN_PRUNE_LOCAL_MAX / 64] = {0};
    for (uint32_t j = 0; j < kept; j++)
        mark[pick[j] / 64] |= 1ull << (pick[j] % 64);
    uint32_t m = 0, extra = fill - kept;
    for (uint32_t i = 0; i < n; i++) {
        if (mark[i / 64] >> (i % 64) & 1)
            pick[m++] = i;
        else if (extra > 0) {
            extra--;
            pick[m++] = i;
        }
    }
    return m;
}

uint32_t kiln_local_links(const float *rows, uint32_t dim, kiln_dist_fn dist, const float *proj,
                          uint32_t self, const kiln_cand *sorted, uint32_t n, uint32_t M,
                          uint32_t M0, const uint32_t *global, kiln_hcand *out) {
    uint32_t pick[KILN_PRUNE_LOCAL_MAX];
    const uint32_t kept =
        kiln_prune_local(rows, dim, dist, sorted, n, M0, kiln_local_fill(M), pick);
    const float *ps = proj + (size_t)self * KILN_HASH_BITS;
    for (uint32_t j = 0; j < kept; j++) {
        const uint32_t row = sorted[pick[j]].id;
        out[j] = (kiln_hcand){sorted[pick[j]].dist, global ? global[row] : row,
                              kiln_hash_edge(ps, proj + (size_t)row * KILN_HASH_BITS)};
    }
    return kept;
}

kiln_status kiln_hash_planes(kiln_ctx *ctx, uint32_t dim, uint64_t seed, float **planes) {
    kiln_status st = kiln_alloc(ctx, (size_t)KILN_HASH_BITS * dim * sizeof **planes, "hash planes",
                                (void **)planes);
    if (st)
        return st;
    kiln_rng r;
    kiln_rng_seed(&r, seed ^ 0x68617368706c616eull); /* "hashplan" */
    /* Drawn plane by plane, stored component-major (decision 5). */
    for (size_t i = 0; i < (size_t)KILN_HASH_BITS * dim; i++) {
        /* Box-Muller: a Gaussian makes the direction of the plane uniform. */
        const double u1 = 1.0 - kiln_rng_uniform(&r), u2 = kiln_rng_uniform(&r);
        (*planes)[i % dim * KILN_HASH_BITS + i / dim] =
            (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
    return KILN_OK;
}

void kiln_hash_project(const float *planes, uint32_t dim, const float *v,
                       float proj[KILN_HASH_BITS]) {
    /* All planes at once, component by component: each plane's sum is
     * still taken in component order, so the bits are those of one plane
     * at a time, and the inner loop is a vector of KILN_HASH_BITS lanes. */
    float s[KILN_HASH_BITS] = {0};
    for (uint32_t j = 0; j < dim; j++) {
        const float x = v[j], *w = planes + (size_t)j * KILN_HASH_BITS;
        for (unsigned k = 0; k < KILN_HASH_BITS; k++)
            s[k] += w[k] * x;
    }
    memcpy(proj, s, sizeof s);
}

#define HCAND_BEFORE(a, b) ((a).dist < (b).dist || ((a).dist == (b).dist && (a).id < (b).id))
KILN_DEFINE_SORT(hcand_sort, kiln_hcand, HCAND_BEFORE)
void kiln_hcands_sort(kiln_hcand *c, uint32_t n) { hcand_sort(c, (ptrdiff_t)n); }

uint32_t kiln_hash_select(kiln_hcand *c, uint32_t n, uint32_t cap, uint32_t fill) {
    /* A bit per bucket: 2^KILN_HASH_BITS bits on the stack; the chosen are
     * marked in the hash's top bit, above any bucket. */
    const uint32_t chosen_bit = 0x80000000u;
    uint64_t taken[(KILN_HASH_MASK + 1) / 64] = {0};
    uint32_t chosen = 0;
    for (uint32_t i = 0; i < n && chosen < cap; i++) {
        const uint32_t h = c[i].hash & KILN_HASH_MASK;
        if (taken[h / 64] >> (h % 64) & 1)
            continue;
        taken[h / 64] |= 1ull << (h % 64);
        c[i].hash |= chosen_bit;
        chosen++;
    }
    uint32_t extra = fill > chosen ? fill - chosen : 0, kept = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (c[i].hash & chosen_bit)
            c[i].hash &= ~chosen_bit;
        else if (extra > 0)
            extra--;
        else
            continue;
        c[kept++] = c[i];
    }
    return kept;
}

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
        bool good = true;
        for (uint32_t j = 0; j < kept; j++) {
            if (kiln_pair_dist(ix, sorted[i].id, out[j]) < sorted[i].dist) {
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
    uint32_t m = fresh;
    for (uint32_t j = keep; j < have; j++)
        in[m++] = (kiln_cand){kiln_pair_dist(ix, node, l[1 + j]), l[1 + j]};
    kiln_cands_sort(in, m);
    /* The old members are all in `in` now, so the list is the output. */
    l[0] = keep + kiln_select_neighbors(ix, in, m, cap - keep, l + 1 + keep);
}
