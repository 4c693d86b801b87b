/* assign.c -- capped multi-assignment: every vector into its `replicas`
 * nearest clusters, no cluster above max_size members, as CSR.
 *
 * Design decisions:
 *  1. Each vector gets a candidate list, its L = replicas + spare nearest
 *     centroids (one backend call per chunk of rows), and the lists are
 *     resolved by deferred acceptance (Gale-Shapley with capacities):
 *     vectors propose to their candidates nearest first; a full cluster keeps
 *     its max_size nearest proposers, on (distance, vector id), and turns
 *     away or evicts the farthest, who proposes to its next candidate. So a
 *     cluster's members are the vectors that want it most, a vector keeps
 *     its nearest clusters unless nearer vectors fill them, and overflow
 *     spills to the next-nearest cluster with room -- "keep the max_size
 *     closest, spill the rest, repeat until stable" done in one pass.
 *  2. The pass is sequential, in vector id order, with evicted vectors
 *     re-proposing at once; so the result is a function of the candidate
 *     lists alone, hence of the backend's answers, whatever the thread
 *     count. It costs O(n L log max_size) at worst and n * replicas heap
 *     pushes when nothing overflows.
 *  3. A vector that runs out of candidates before it has `replicas`
 *     clusters (its whole list is full of nearer vectors) goes to the
 *     nearest clusters with room, over all k, from a full ranking by the
 *     backend for just those vectors; a full cluster is never entered, so
 *     the cap is a hard guarantee. Room always exists for one placement
 *     each (k * max_size >= n * (replicas + extra), checked up front: then
 *     the others hold at most (n - 1) (replicas + extra) slots), so every
 *     vector lands somewhere; `replicas` distinct clusters are best effort,
 *     and the misses are counted in short_vectors (normally zero).
 *  4. Members are listed per cluster in ascending id order, by a counting
 *     sort over vectors taken in id order.
 *  5. With a two-level tree (kiln_clusters_assign_tree, what
 *     kiln_clusters_build uses from k = 256 up) the candidate lists come from
 *     kiln_kmeans_tree_nearest instead of a flat search: the exact L nearest
 *     among the centroids filed under the vector's nearest coarse cell
 *     (hkmeans.c decisions 4 and 5). Same distances and tie rule, so the
 *     acceptance above is unchanged; only centroids outside that file are
 *     missed (the nearest one for 0.4% of vectors on synth1m), and those
 *     were not going to take most vectors anyway. At 1M x 128, k = 2605,
 *     the lists cost 1.2 us per vector against 4.3 us flat (2 cores). The
 *     full ranking of decision 3 stays flat over all k: it is rare, and it
 *     keeps the cap a guarantee whatever the lists missed.
 *  6. Boundary replicas (p->extra, p->extra_ratio): a vector whose next
 *     candidates after its `replicas` nearest are almost as near as its
 *     nearest (squared distance at most extra_ratio times) wants up to
 *     `extra` more clusters, each while the rule holds (the list is sorted,
 *     so the wanted ones are a prefix). It proposes for them like for the
 *     others, nearer vectors first, so an extra may take a slot that a
 *     farther vector's base placement wanted (which then spills as in
 *     decision 1); but an extra never spills itself: a vector proposes past
 *     its wanted prefix only while it lacks one of its `replicas`, and the
 *     leftover placement of decision 3 fills only those. This is SPANN's boundary
 *     duplication (Chen et al., NeurIPS 2021) on top of a fixed base: with
 *     more, finer clusters a vector's true neighbours spread over more of
 *     them, and it is the vectors between centroids whose neighbours are
 *     spread most. Measured on synthetic 128-d data (FAISS k-means, k =
 *     1041 on 400K rows, 50K of them ranked), the ratio of the
 *     third-nearest centroid's squared distance to the nearest's has
 *     quantiles 1.17 / 1.28 / 1.46 / 1.75 at 10 / 25 / 50 / 75%, so a
 *     ratio singles out a fraction rather than all or none; with this
 *     directory's two-level k-means at 4M, 1.15 took 22% and 1.30 50% (the
 *     device build's figures are in host/device_build.c).
 */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "../common/progress_internal.h"
#include "kmeans_internal.h"

/* ==== Tunables ==== */

/* Rows per backend call for the candidate lists: large enough for a device
 * batch to pay off, and for the two-level search's per-cell calls to hold
 * thousands of rows each (hkmeans.c TREE_CHUNK_ROWS), small enough for the
 * progress line to move. */
#define ASSIGN_CHUNK_ROWS ((size_t)1 << 18)
/* Bytes of ids and distances per full-ranking call (decision 3): at k =
 * 1000, 8K vectors per call. */
#define ASSIGN_RANK_BYTES ((size_t)64 << 20)

/* ==== Types ==== */

/* A cluster's hold on a vector; a max-heap per cluster keeps the farthest on top. */
typedef struct assign_slot {
    float dist;
    uint32_t vec;
} assign_slot;

/* One assignment call: what kiln_clusters_assign(_tree) were given, with
 * what assign_all derives from it. */
typedef struct assign_job {
    kiln_rows rows;
    kiln_centroids cent;          /* cent.dim == rows.dim */
    const kiln_kmeans_tree *tree; /* NULL: flat candidate lists */
    kiln_nearest_backend nearest; /* fn not NULL */
    uint32_t threads;             /* p->threads */
    uint32_t rep;                 /* replicas + extra, clamped to k: the most per vector */
    uint32_t cap;                 /* members per cluster at most; UINT32_MAX = no cap */
    uint32_t L;                   /* candidates per vector: rep + spare, clamped to k */
    uint32_t base;                /* the placements every vector gets: min(p->replicas, k) */
} assign_job;

/* The clusters each vector is in so far, and the clusters' sizes. */
typedef struct assign_lists {
    uint32_t *vcl;  /* n*rep: vector v's clusters are vcl[v*rep .. v*rep + vcnt[v]) */
    uint32_t *vcnt; /* n */
    uint32_t *size; /* k: members per cluster */
} assign_lists;

/* The state of deferred acceptance. */
typedef struct assign_state {
    size_t n;
    uint32_t k, L, rep, cap;
    uint32_t base;            /* placements every vector gets (decision 6) */
    const uint8_t *want;      /* n: base plus the extras wanted (decision 6) */
    const uint32_t *cand_ids; /* n*L, each vector's candidates nearest first */
    const float *cand_dist;   /* n*L, NaN already mapped to +inf */
    uint64_t *heap_off;       /* k+1: cluster c's heap is slots[heap_off[c] ..] */
    uint32_t *heap_len;       /* k */
    assign_slot *slots;
    uint32_t *next;  /* n: index into the vector's list of its next proposal */
    uint32_t *open;  /* n: placements still wanted */
    uint32_t *stack; /* n: evicted vectors waiting to propose again */
    bool *queued;    /* n */
} assign_state;

/* ==== Deferred acceptance ==== */

/* (da, va) is nearer than (db, vb): the cluster's order on its proposers. */
static inline bool slot_before(float da, uint32_t va, float db, uint32_t vb) {
    return da < db || (da == db && va < vb);
}

static void slot_sift_up(assign_slot *h, uint32_t at) {
    const assign_slot s = h[at];
    while (at > 0) {
        const uint32_t parent = (at - 1) / 2;
        if (!slot_before(h[parent].dist, h[parent].vec, s.dist, s.vec))
            break;
        h[at] = h[parent];
        at = parent;
    }
    h[at] = s;
}

static void slot_sift_down(assign_slot *h, uint32_t len, uint32_t at) {
    const assign_slot s = h[at];
    for (;;) {
        uint32_t child = 2 * at + 1;
        if (child >= len)
            break;
        if (child + 1 < len &&
            slot_before(h[child].dist, h[child].vec, h[child + 1].dist, h[child + 1].vec))
            child++;
        if (!slot_before(s.dist, s.vec, h[child].dist, h[child].vec))
            break;
        h[at] = h[child];
        at = child;
    }
    h[at] = s;
}

/* Vector v proposes down its list until its open slots are filled or the
 * list runs out; an evicted vector goes on the stack. Returns the stack
 * depth after. */
static size_t propose(assign_state *s, uint32_t v, size_t depth) {
    const uint32_t *const ids = s->cand_ids + (size_t)v * s->L;
    const float *const ds = s->cand_dist + (size_t)v * s->L;
    /* Decision 6: past its wanted prefix only while a base placement is missing. */
    while (s->open[v] > 0 && s->next[v] < s->L &&
           (s->next[v] < s->want[v] || s->open[v] > (uint32_t)(s->want[v] - s->base))) {
        const uint32_t j = s->next[v]++;
        const uint32_t c = ids[j];
        const float d = ds[j];
        assign_slot *const h = s->slots + s->heap_off[c];
        if (s->heap_len[c] < s->cap) {
            h[s->heap_len[c]] = (assign_slot){d, v};
            slot_sift_up(h, s->heap_len[c]++);
            s->open[v]--;
        } else if (slot_before(d, v, h[0].dist, h[0].vec)) {
            const uint32_t u = h[0].vec;
            h[0] = (assign_slot){d, v};
            slot_sift_down(h, s->heap_len[c], 0);
            s->open[v]--;
            s->open[u]++;
            if (!s->queued[u]) {
                s->queued[u] = true;
                s->stack[depth++] = u;
            }
        }
    }
    return depth;
}

static void defer_accept(assign_state *s) {
    for (size_t v = 0; v < s->n; v++) {
        size_t depth = propose(s, (uint32_t)v, 0);
        while (depth > 0) {
            const uint32_t u = s->stack[--depth];
            s->queued[u] = false;
            depth = propose(s, u, depth);
        }
    }
}

/* ==== Helpers ==== */

/* Candidate lists for all rows, chunk by chunk through the backend, flat
 * or, with a tree, by its two-level search (decision 5): job->L per row
 * into out. */
static kiln_status candidates(kiln_ctx *ctx, const assign_job *job, kiln_nearest_out out) {
    const size_t n = job->rows.n;
    const uint32_t dim = job->rows.dim, k = job->cent.k, L = job->L;
    const kiln_kmeans_tree_search search = {
        .tree = job->tree, .nearest = job->nearest, .threads = job->threads};
    kiln_progress_bar bar;
    kiln_progress_begin(&bar, ctx, "assign", n);
    kiln_status st = KILN_OK;
    for (size_t b = 0; b < n && st == KILN_OK; b += ASSIGN_CHUNK_ROWS) {
        const size_t count = n - b < ASSIGN_CHUNK_ROWS ? n - b : ASSIGN_CHUNK_ROWS;
        const kiln_rows chunk = {job->rows.x + b * dim, count, dim};
        const kiln_nearest_out lists = {out.ids + b * L, out.dists + b * L};
        if (job->tree)
            st = kiln_kmeans_tree_nearest(ctx, &search, chunk, job->cent, L, lists);
        else
            st = job->nearest.fn(job->nearest.user, ctx, chunk, job->cent, L, lists);
        kiln_progress_add(&bar, count);
    }
    kiln_progress_end(&bar);
    if (st != KILN_OK)
        return st;
    for (size_t i = 0; i < n * L; i++) {
        if (out.ids[i] >= k)
            return kiln_fail(ctx, KILN_E_INTERNAL,
                             "nearest-centroid backend returned centroid id %u >= k %u for row %zu",
                             out.ids[i], k, i / L);
        if (isnan(out.dists[i]))
            out.dists[i] = INFINITY;
    }
    return KILN_OK;
}

static bool has_cluster(const uint32_t *list, uint32_t len, uint32_t c) {
    for (uint32_t j = 0; j < len; j++)
        if (list[j] == c)
            return true;
    return false;
}

/* Decision 3: the vectors left[0..nleft), which have open slots, in id
 * order, take the nearest clusters with room over all k. lists are updated
 * in place; *far counts the vectors that gained a cluster. */
static kiln_status place_leftovers(kiln_ctx *ctx, const assign_job *job, const uint32_t *left,
                                   size_t nleft, assign_lists *lists, uint64_t *far) {
    const float *const x = job->rows.x;
    const uint32_t dim = job->rows.dim, k = job->cent.k, rep = job->rep, cap = job->cap;
    uint32_t *const vcl = lists->vcl, *const vcnt = lists->vcnt, *const size = lists->size;
    size_t chunk = ASSIGN_RANK_BYTES / ((size_t)k * (sizeof(uint32_t) + sizeof(float)));
    if (chunk == 0)
        chunk = 1;
    if (chunk > nleft)
        chunk = nleft;
    uint32_t *ids = NULL;
    float *dists = NULL, *rows = NULL;
    kiln_status st = kiln_alloc(ctx, chunk * k * sizeof *ids, "full ranking ids", (void **)&ids);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, chunk * k * sizeof *dists, "full ranking distances", (void **)&dists);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, chunk * dim * sizeof *rows, "leftover rows", (void **)&rows);
    for (size_t b = 0; st == KILN_OK && b < nleft; b += chunk) {
        const size_t count = nleft - b < chunk ? nleft - b : chunk;
        for (size_t i = 0; i < count; i++)
            memcpy(rows + i * dim, x + (size_t)left[b + i] * dim, dim * sizeof *rows);
        st = job->nearest.fn(job->nearest.user, ctx, (kiln_rows){rows, count, dim}, job->cent, k,
                             (kiln_nearest_out){ids, dists});
        for (size_t i = 0; st == KILN_OK && i < count; i++) {
            const uint32_t v = left[b + i];
            uint32_t *const mine = vcl + (size_t)v * rep;
            const uint32_t before = vcnt[v];
            for (uint32_t j = 0; j < k && vcnt[v] < job->base; j++) {
                const uint32_t c = ids[i * k + j];
                if (c >= k)
                    st = kiln_fail(ctx, KILN_E_INTERNAL,
                                   "nearest-centroid backend returned centroid id %u >= k %u "
                                   "for row %u",
                                   c, k, v);
                else if (size[c] < cap && !has_cluster(mine, vcnt[v], c)) {
                    mine[vcnt[v]++] = c;
                    size[c]++;
                }
            }
            *far += vcnt[v] > before;
        }
    }
    free(ids);
    free(dists);
    free(rows);
    return st;
}

/* ==== Assignment ==== */

/* kiln_clusters_assign, with candidate lists from given->tree when not
 * NULL; given holds the rows, centroids, tree and backend (fn NULL = CPU). */
static kiln_status assign_all(kiln_ctx *ctx, const assign_job *given, const kiln_kmeans_params *p,
                              kiln_clusters *out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "cluster assignment: out must not be NULL");
    memset(out, 0, sizeof *out);
    const float *const x = given->rows.x, *const centroids = given->cent.c;
    const size_t n = given->rows.n;
    const uint32_t dim = given->rows.dim, k = given->cent.k;
    if (!p || !centroids || (n > 0 && !x) || k == 0 || dim == 0)
        return kiln_fail(ctx, KILN_E_ARG,
                         "cluster assignment: need params, centroids, rows, k >= 1 and dim >= 1");
    if (given->cent.dim != dim)
        return kiln_fail(ctx, KILN_E_ARG,
                         "cluster assignment: centroids of dim %u for rows of dim %u",
                         given->cent.dim, dim);
    if (n > UINT32_MAX)
        return kiln_fail(ctx, KILN_E_ARG,
                         "cluster assignment: %zu vectors exceed the 32-bit id range", n);
    if (p->replicas == 0)
        return kiln_fail(ctx, KILN_E_ARG, "cluster assignment: replicas must be >= 1");
    if (p->extra > 16 || (p->extra && !(p->extra_ratio >= 0.0f && isfinite(p->extra_ratio))))
        return kiln_fail(ctx, KILN_E_ARG,
                         "cluster assignment: extra = %u (at most 16) with extra_ratio %g (finite, "
                         ">= 0)",
                         p->extra, (double)p->extra_ratio);
    const uint32_t base = p->replicas < k ? p->replicas : k;
    const uint32_t rep = (uint64_t)p->replicas + p->extra < k ? p->replicas + p->extra : k;
    const uint32_t cap = p->max_size ? p->max_size : UINT32_MAX;
    if ((uint64_t)k * cap < (uint64_t)n * rep)
        return kiln_fail(ctx, KILN_E_ARG,
                         "cluster assignment: cluster cap too small: %u clusters x max_size %u = "
                         "%llu slots < %zu vectors x %u replicas",
                         k, cap, (unsigned long long)((uint64_t)k * cap), n, rep);
    const uint32_t L = (uint64_t)rep + p->spare < k ? rep + p->spare : k;
    kiln_nearest_cpu_opts cpu = {.threads = p->threads};
    assign_job job = *given;
    job.nearest = kiln_nearest_or_cpu(&given->nearest, &cpu);
    job.threads = p->threads;
    job.rep = rep;
    job.base = base;
    job.cap = cap;
    job.L = L;
    size_t nL, nrep;
    if (kiln_mul_size(n, L, &nL) || kiln_mul_size(n, rep, &nrep))
        return kiln_fail(ctx, KILN_E_ARG,
                         "cluster assignment: %zu vectors x %u candidates overflow", n, L);

    assign_state s = {.n = n, .k = k, .L = L, .rep = rep, .cap = cap, .base = base};
    uint32_t *cand_ids = NULL, *vcl = NULL, *vcnt = NULL, *left = NULL, *fill = NULL;
    uint8_t *want = NULL;
    float *cand_dist = NULL;
    float *cent = NULL;
    uint64_t *offsets = NULL;
    uint32_t *members = NULL;
    kiln_status st = kiln_alloc(ctx, nL * sizeof *cand_ids, "candidate ids", (void **)&cand_ids);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, nL * sizeof *cand_dist, "candidate distances", (void **)&cand_dist);
    if (st == KILN_OK)
        st = kiln_calloc(ctx, ((size_t)k + 1) * sizeof *s.heap_off, "cluster heap offsets",
                         (void **)&s.heap_off);
    if (st == KILN_OK)
        st =
            kiln_calloc(ctx, (size_t)k * sizeof *s.heap_len, "cluster sizes", (void **)&s.heap_len);
    if (st == KILN_OK)
        st = kiln_calloc(ctx, n * sizeof *s.next, "proposal cursors", (void **)&s.next);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, n * sizeof *s.open, "open slots", (void **)&s.open);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, n * sizeof *s.stack, "eviction stack", (void **)&s.stack);
    if (st == KILN_OK)
        st = kiln_calloc(ctx, n * sizeof *s.queued, "eviction flags", (void **)&s.queued);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, nrep * sizeof *vcl, "vector clusters", (void **)&vcl);
    if (st == KILN_OK)
        st = kiln_calloc(ctx, n * sizeof *vcnt, "vector cluster counts", (void **)&vcnt);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, n ? n : 1, "wanted placements", (void **)&want);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)k * dim * sizeof *cent, "centroids", (void **)&cent);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, ((size_t)k + 1) * sizeof *offsets, "cluster offsets",
                        (void **)&offsets);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)k * sizeof *fill, "cluster fill", (void **)&fill);
    if (st == KILN_OK)
        st = candidates(ctx, &job, (kiln_nearest_out){cand_ids, cand_dist});
    if (st != KILN_OK)
        goto done;
    s.cand_ids = cand_ids;
    s.cand_dist = cand_dist;

    /* A cluster holds at most min(cap, lists naming it) proposers: size
     * each heap so, which bounds the slots by n * L whatever the cap. */
    for (size_t i = 0; i < nL; i++)
        s.heap_off[cand_ids[i] + 1]++;
    for (uint32_t c = 0; c < k; c++) {
        const uint64_t room = s.heap_off[c + 1] < cap ? s.heap_off[c + 1] : cap;
        s.heap_off[c + 1] = s.heap_off[c] + room;
    }
    st = kiln_alloc(ctx, (size_t)s.heap_off[k] * sizeof *s.slots, "cluster heaps",
                    (void **)&s.slots);
    if (st != KILN_OK)
        goto done;
    /* Decision 6: the wanted extras are the prefix of candidates base.. that
     * stay within extra_ratio of the nearest. */
    for (size_t v = 0; v < n; v++) {
        const float *const d = cand_dist + v * L;
        uint32_t w = base;
        while (w < rep && d[w] <= p->extra_ratio * d[0])
            w++;
        want[v] = (uint8_t)w;
        s.open[v] = w;
    }
    s.want = want;
    defer_accept(&s);

    /* Per-vector cluster lists from the heaps; the heap lengths become the
     * cluster sizes that leftovers may grow up to the cap. */
    for (uint32_t c = 0; c < k; c++) {
        const assign_slot *const h = s.slots + s.heap_off[c];
        for (uint32_t j = 0; j < s.heap_len[c]; j++) {
            const uint32_t v = h[j].vec;
            vcl[(size_t)v * rep + vcnt[v]++] = c;
        }
    }
    free(s.slots);
    s.slots = NULL;
    size_t nleft = 0;
    for (size_t v = 0; v < n; v++) {
        if (vcnt[v] < base) {
            s.stack[nleft++] = (uint32_t)v;
            continue;
        }
        const uint32_t *const nearest_rep = cand_ids + v * L;
        for (uint32_t j = 0; j < base; j++) {
            if (!has_cluster(vcl + v * rep, vcnt[v], nearest_rep[j])) {
                out->spilled_vectors++;
                break;
            }
        }
    }
    left = s.stack;
    s.stack = NULL;
    if (nleft > 0) {
        out->spilled_vectors += nleft;
        assign_lists lists = {vcl, vcnt, s.heap_len};
        st = place_leftovers(ctx, &job, left, nleft, &lists, &out->far_vectors);
        if (st != KILN_OK)
            goto done;
        for (size_t i = 0; i < nleft; i++)
            out->short_vectors += vcnt[left[i]] < base;
    }

    /* CSR, members ascending (decision 4). */
    for (size_t v = 0; v < n; v++)
        out->extra_vectors += vcnt[v] > base;
    offsets[0] = 0;
    for (uint32_t c = 0; c < k; c++) {
        offsets[c + 1] = offsets[c] + s.heap_len[c];
        fill[c] = 0;
        if (s.heap_len[c] > out->max_members)
            out->max_members = s.heap_len[c];
    }
    st =
        kiln_alloc(ctx, (size_t)offsets[k] * sizeof *members, "cluster members", (void **)&members);
    if (st != KILN_OK)
        goto done;
    for (size_t v = 0; v < n; v++)
        for (uint32_t j = 0; j < vcnt[v]; j++) {
            const uint32_t c = vcl[v * rep + j];
            members[offsets[c] + fill[c]++] = (uint32_t)v;
        }
    memcpy(cent, centroids, (size_t)k * dim * sizeof *cent);
    out->k = k;
    out->dim = dim;
    out->replicas = rep;
    out->centroids = cent;
    out->offsets = offsets;
    out->members = members;
    cent = NULL;
    offsets = NULL;
    members = NULL;

done:
    if (st != KILN_OK)
        memset(out, 0, sizeof *out);
    free(cand_ids);
    free(cand_dist);
    free(s.heap_off);
    free(s.heap_len);
    free(s.slots);
    free(s.next);
    free(s.open);
    free(s.stack);
    free(s.queued);
    free(left);
    free(vcl);
    free(vcnt);
    free(want);
    free(fill);
    free(cent);
    free(offsets);
    free(members);
    return st;
}

/* ==== Public ==== */

kiln_status kiln_clusters_assign(kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                                 const kiln_kmeans_params *p, const kiln_nearest_backend *nearest,
                                 kiln_clusters *out) {
    const assign_job given = {
        .rows = rows, .cent = cent, .nearest = nearest ? *nearest : (kiln_nearest_backend){0}};
    return assign_all(ctx, &given, p, out);
}

kiln_status kiln_clusters_assign_tree(kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                                      const kiln_kmeans_tree *tree, const kiln_kmeans_params *p,
                                      const kiln_nearest_backend *nearest, kiln_clusters *out) {
    if (out)
        memset(out, 0, sizeof *out);
    if (!tree || tree->dim != rows.dim)
        return kiln_fail(ctx, KILN_E_ARG,
                         "cluster assignment: need a centroid tree of the rows' dim %u", rows.dim);
    const assign_job given = {.rows = rows,
                              .cent = cent,
                              .tree = tree,
                              .nearest = nearest ? *nearest : (kiln_nearest_backend){0}};
    return assign_all(ctx, &given, p, out);
}

kiln_status kiln_clusters_build(kiln_ctx *ctx, kiln_rows rows, const kiln_kmeans_params *p,
                                const kiln_nearest_backend *nearest, kiln_clusters *out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "clusters: out must not be NULL");
    memset(out, 0, sizeof *out);
    uint32_t k;
    kiln_status st = kiln_kmeans_k(ctx, rows.n, p, &k);
    if (st != KILN_OK)
        return st;
    const uint32_t dim = rows.dim;
    if (dim == 0)
        return kiln_fail(ctx, KILN_E_ARG, "clusters: dim must be >= 1");
    float *centroids = NULL;
    kiln_kmeans_tree tree = {0};
    st = kiln_alloc(ctx, (size_t)k * dim * sizeof *centroids, "centroids", (void **)&centroids);
    if (st == KILN_OK)
        st = kiln_kmeans_train_tree(ctx, rows, p, nearest, centroids, &tree);
    if (st == KILN_OK)
        st = kiln_clusters_assign_tree(ctx, rows, (kiln_centroids){centroids, k, dim}, &tree, p,
                                       nearest, out);
    kiln_kmeans_tree_free(&tree);
    free(centroids);
    return st;
}

void kiln_clusters_free(kiln_clusters *c) {
    if (!c)
        return;
    free(c->centroids);
    free(c->offsets);
    free(c->members);
    memset(c, 0, sizeof *c);
}
