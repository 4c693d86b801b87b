/* hkmeans.c -- two-level k-means for large k: coarse centroids that route
 * every search over the k fine ones, fine centroids trained inside each
 * coarse cell and then refined together, and the nearest fine centroids of
 * a row searched only in the files of a few coarse cells. kmeans.c does the
 * training at each level; the backend (kiln_nearest_fn) computes every
 * distance, so a device backend still does the heavy part.
 *
 * Design decisions:
 *  1. Flat training and assignment cost O(k) distances per row, so the
 *     partitioning step grows as n k = n^2 replicas / target_size. At 1M x
 *     128 (k = 2605: target 768, 2 replicas, 64 training rows per centroid)
 *     that was 3.5G pairs of training and 2.6G of assignment, 9.5 s on 2
 *     cores. Two levels of ~sqrt(k) cells cost O(sqrt(k)) per row: 2.1 s
 *     (training 0.8 s, assignment 1.3 s), with recall@10 of the built index
 *     within noise of the flat code's (mean of 6 builds, seeds 1-5: -0.002
 *     at ef 10 and 32, -0.0004 at ef 64; builds of one seed differ by up to
 *     0.006 run to run). Below TREE_MIN_K the flat code runs unchanged.
 *  2. Training: k1 = ceil(sqrt(k)) coarse centroids by the flat code on
 *     TREE_COARSE_PER_CELL rows each, drawn from the training sample, which
 *     is then split by nearest coarse centroid. Each non-empty cell gets
 *     fine centroids in proportion to its rows, by largest remainder on
 *     exact integers (ties by smaller cell), so the counts sum to k and the
 *     clusters come out about equally full, which the size cap wants. A cell
 *     below one centroid's share is raised to 1 at the expense of the cell
 *     with most (ties by smaller cell); none gets more centroids than rows,
 *     since floor(k c / m) rounds up only when not whole and k <= m. Empty
 *     cells are dropped. Each cell's centroids are trained by the flat code
 *     on that cell's rows alone, with its own seed.
 *  3. Cells trained apart leave junk: a cell of fringe rows from several
 *     blobs gets centroids between them that are nobody's nearest (42 of
 *     2605 on synth1m) or many rows' second, so the candidate lists asked
 *     for 102.8K places beyond the size caps and 111.8K vectors spilled.
 *     TREE_REFINE_ITERS Lloyd iterations on the whole sample follow, with
 *     the search of decision 4 as the nearest function (probes
 *     TREE_REFINE_PROBES, copies 1): dead centroids empty out and are split
 *     into big clusters, junk moves. After two: 8 dead, 23.9K beyond the
 *     caps, 24.5K spilled (flat code: 0, 16.6K, 18.2K).
 *  4. Search: every fine centroid is filed under its `copies` nearest coarse
 *     cells, and a file shorter than r gets the r centroids nearest its
 *     cell's centroid, so every file holds r. One backend call gives each
 *     row its `probes` nearest cells; the (row, cell) pairs are sorted by
 *     cell and each cell gets one backend call over the rows probing it
 *     (gathered in row order) and its file (ascending ids, so ties by local
 *     id are ties by global id). Each row's lists are merged to its r best
 *     on (distance, id), NaN as +inf, a centroid filed twice taken once
 *     (its two entries are equal, hence adjacent in that order). Distances
 *     and ties are the backend's: the answer is the exact r nearest among
 *     the probed files, and only centroids outside them are missed. A GPU
 *     backend gets 2 + cells calls per round of up to 256K rows.
 *  5. Two settings of decision 4, because each list costs: the CPU backend
 *     spends 0.7-0.9 us more per row at r = 10 than at r = 1 (ten exact
 *     distances and their ranking; one thread, 50-150 centroids). Measured
 *     on synth1m (1M x 128, k = 2605, 52 cells, 2 threads, per row; flat
 *     search: 4.3 us at r = 10):
 *       probes 3, copies 1: true nearest for 99.7%; 1.1 us at r = 1,
 *         2.5 us at r = 10 (three lists per row);
 *       probes 1, copies 3: 99.6%; 0.7 us at r = 1, 1.2 us at r = 10;
 *       probes 1, copies 2 / 4: 99.0% / 99.8%; 1.1 / 1.4 us at r = 10.
 *     The assignment's lists (r = replicas + spare) use probes 1, copies
 *     TREE_LIST_COPIES: one list per row. Lloyd (r = 1) uses probes
 *     TREE_REFINE_PROBES, copies 1, though dearer: refining through the
 *     copies-3 files instead grew a hub, a central centroid present in many
 *     files that collected the misrouted rows until it was the second
 *     nearest of 60K vectors.
 *  6. Determinism: every backend answer for a row depends only on that row
 *     and the centroids passed; cells are trained one after another with
 *     seeds drawn in cell order on one thread; gathers and merges are per
 *     row. The bytes do not depend on threads or chunking.
 */
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "../common/progress_internal.h"
#include "../common/rng_internal.h"
#include "kmeans_internal.h"

/* ==== Tunables ==== */

/* The smallest k trained and searched in two levels (decision 1). On
 * kiln_synth_clustered data shaped like synth1m (n = 384 k, d = 128, 2.6
 * centroids per blob, device-build parameters) the two levels break even
 * near k = 192 (0.088 s against 0.094 s flat), take 13% less at 256, 42%
 * less at 512 and 62% less at 1024, at the same SSE (within 0.7%). Below,
 * the flat code is as fast and exact. */
#define TREE_MIN_K 256u
/* Coarse training rows per coarse centroid (decision 2): the coarse cells
 * only route, and 256 per centroid is the flat default (kmeans.c decision
 * 3); training them on all 64 k rows cost 0.33 s at 1M for nothing. */
#define TREE_COARSE_PER_CELL 256u
/* Lloyd iterations over all cells after the per-cell training (decision
 * 3), ~0.1 s each at 1M: vectors spilled past their 2 nearest on synth1m
 * after 0 / 1 / 2 / 3 of them: 111.8K (8.4K of them needing the full
 * ranking) / 32.6K / 24.5K / 31.9K. */
#define TREE_REFINE_ITERS 2u
/* The Lloyd search (decision 5): cells probed per row; 2 finds the true
 * nearest for 99.1% of rows, 3 for 99.7%, 4 for 99.9%. */
#define TREE_REFINE_PROBES 3u
/* The assignment's candidate lists (decision 5): copies of each centroid
 * among the files; 2 / 3 / 4 find the true nearest for 99.0 / 99.6 / 99.8%
 * of rows at 1.1 / 1.2 / 1.4 us per row. */
#define TREE_LIST_COPIES 3u
/* Most probes or copies a search makes; beyond, it is flat (the per-row
 * merge keeps its list heads on the stack). */
#define TREE_MAX_PROBES 64u
/* Rows per round of a search: bounds its scratch (20 + 8 r bytes per row
 * and probe: 26 MiB for the assignment's lists, 22 MiB for Lloyd's three
 * probes, plus the largest cell's gathered rows) while giving each cell's
 * backend call thousands of rows; fewer, larger calls also mean fewer
 * fork/joins (kmeans.c KMEANS_PARALLEL_MIN). */
#define TREE_CHUNK_ROWS ((size_t)1 << 18)
/* Rows below which a cell's gather stays on one thread (4 MiB at d = 128:
 * a memcpy that size is ~0.3 ms, about what a fork/join can cost). */
#define TREE_GATHER_PARALLEL 8192
/* Stream constant mixed into the seed, so the two-level draws do not repeat
 * the flat trainer's. */
#define TREE_RNG_STREAM 0x686b6d65616e73ull

/* ==== Types ==== */

/* A cell's largest-remainder standing: the remainder of k count / m. */
typedef struct tree_rem {
    uint64_t rem;
    uint32_t cell;
} tree_rem;

/* The files of decision 4, each packed for one backend call. */
typedef struct tree_files {
    uint64_t *at;  /* cells+1: cell g's file is ids[at[g] .. at[g+1]), >= r long */
    uint32_t *ids; /* global ids, ascending within a file */
    float *packed; /* the centroids of ids, in that order, dim floats each */
} tree_files;

/* One search round's scratch, sized for TREE_CHUNK_ROWS rows. */
typedef struct tree_round {
    uint32_t *cid;      /* n*P: probed cells, nearest first */
    float *cdist;       /* n*P */
    uint64_t *cell_at;  /* cells+1: pairs of cell g are pairs[cell_at[g] ..] */
    uint32_t *pairs;    /* n*P: pair index i*P + j, sorted by cell, then row */
    size_t *list_at;    /* n*P: where pair i*P + j's list starts in ids/dists */
    uint32_t *ids;      /* n*P*r: each pair's list, global ids */
    float *dists;       /* n*P*r */
    kiln_grow_buf rows; /* one cell's gathered rows, dim floats each */
} tree_round;

/* One kiln_kmeans_tree_nearest call, checked and resolved. */
typedef struct tree_job {
    const kiln_kmeans_tree *tree; /* cells >= 1 */
    kiln_centroids cent;          /* the fine centroids searched, dim tree->dim */
    kiln_nearest_backend nearest; /* fn not NULL */
    uint32_t P;                   /* probes per row, 1..min(cells, TREE_MAX_PROBES) */
    uint32_t copies;              /* files per centroid, 1..TREE_MAX_PROBES */
    uint32_t r;                   /* nearest per row, 1..cent.k */
    int threads;                  /* team size, >= 1 */
} tree_job;

/* ==== Training helpers ==== */

/* ceil(sqrt(k)) in integers, so no libm rounding enters the choice. */
static uint32_t tree_cells(uint32_t k) {
    uint32_t c = (uint32_t)sqrt((double)k);
    while ((uint64_t)c * c < k)
        c++;
    while (c > 1 && (uint64_t)(c - 1) * (c - 1) >= k)
        c--;
    return c;
}

/* Larger remainder first, then smaller cell. */
static int tree_rem_cmp(const void *pa, const void *pb) {
    const tree_rem *a = pa, *b = pb;
    if (a->rem != b->rem)
        return a->rem > b->rem ? -1 : 1;
    return (a->cell > b->cell) - (a->cell < b->cell);
}

/* Fine centroids per cell (decision 2): count[c] rows of m, quotas summing
 * to k, each in [1, count[c]]. rems is scratch of `cells` entries. Needs
 * cells <= k <= m and every count >= 1. */
static void tree_quota(const uint64_t *count, uint32_t cells, uint64_t m, uint32_t k,
                       uint32_t *quota, tree_rem *rems) {
    uint64_t given = 0;
    for (uint32_t c = 0; c < cells; c++) {
        const uint64_t share = count[c] * k; /* < 2^64: count <= m < 2^32, k < 2^32 */
        quota[c] = (uint32_t)(share / m);
        rems[c] = (tree_rem){share % m, c};
        given += quota[c];
    }
    qsort(rems, cells, sizeof *rems, tree_rem_cmp);
    for (uint64_t j = 0; given + j < k; j++)
        quota[rems[j].cell]++;
    for (uint32_t c = 0; c < cells; c++) {
        if (quota[c] > 0)
            continue;
        uint32_t big = 0;
        for (uint32_t b = 1; b < cells; b++)
            if (quota[b] > quota[big])
                big = b;
        quota[big]--;
        quota[c] = 1;
    }
}

/* ==== Search helpers ==== */

static void tree_files_free(tree_files *f) {
    free(f->at);
    free(f->ids);
    free(f->packed);
}

static int tree_u32_cmp(const void *pa, const void *pb) {
    const uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
    return (a > b) - (a < b);
}

/* Builds the files of decision 4: each of the k centroids under its
 * `copies` nearest cells (one backend call), and a file shorter than r
 * padded with the r centroids nearest its cell's centroid (one more call,
 * only when some file is short). */
static kiln_status tree_file(kiln_ctx *ctx, const tree_job *job, tree_files *f) {
    const kiln_kmeans_tree *const tree = job->tree;
    const kiln_nearest_backend nearest = job->nearest;
    const float *const centroids = job->cent.c;
    const uint32_t k = job->cent.k, copies = job->copies, r = job->r;
    const uint32_t cells = tree->cells, dim = tree->dim;
    const kiln_centroids coarse = {tree->coarse, cells, dim};
    const uint32_t q = copies < cells ? copies : cells;
    uint32_t *near_cells = NULL, *near_fine = NULL;
    float *dist = NULL;
    uint64_t *cursor = NULL;
    size_t filed, extra, most;
    if (kiln_mul_size(k, q, &filed) || kiln_mul_size(cells, r, &extra) ||
        kiln_add_size(filed, extra, &most))
        return kiln_fail(ctx, KILN_E_ARG, "tree search: %u centroids x %u copies overflow", k, q);
    kiln_status st =
        kiln_alloc(ctx, filed * sizeof *near_cells, "centroid cells", (void **)&near_cells);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (filed > extra ? filed : extra) * sizeof *dist, "filing distances",
                        (void **)&dist);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)cells * sizeof *cursor, "file cursors", (void **)&cursor);
    if (st == KILN_OK)
        st = kiln_calloc(ctx, ((size_t)cells + 1) * sizeof *f->at, "cell files", (void **)&f->at);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, most * sizeof *f->ids, "cell file ids", (void **)&f->ids);
    if (st == KILN_OK)
        st = nearest.fn(nearest.user, ctx, (kiln_rows){centroids, k, dim}, coarse, q,
                        (kiln_nearest_out){near_cells, dist});
    for (size_t j = 0; st == KILN_OK && j < filed; j++) {
        if (near_cells[j] >= cells)
            st = kiln_fail(ctx, KILN_E_INTERNAL,
                           "nearest-centroid backend returned coarse cell %u >= %u", near_cells[j],
                           cells);
        else
            f->at[near_cells[j] + 1]++;
    }
    bool short_file = false;
    for (uint32_t g = 0; st == KILN_OK && g < cells; g++)
        short_file |= f->at[g + 1] < r;
    if (short_file) {
        st = kiln_alloc(ctx, extra * sizeof *near_fine, "cell centroids", (void **)&near_fine);
        if (st == KILN_OK)
            st = nearest.fn(nearest.user, ctx, (kiln_rows){tree->coarse, cells, dim}, job->cent, r,
                            (kiln_nearest_out){near_fine, dist});
        for (size_t j = 0; st == KILN_OK && j < extra; j++)
            if (near_fine[j] >= k)
                st = kiln_fail(ctx, KILN_E_INTERNAL,
                               "nearest-centroid backend returned centroid %u >= k %u",
                               near_fine[j], k);
    }
    if (st != KILN_OK)
        goto done;

    /* Each file is laid out with room for its padding, filled in id
     * order, then sorted and compacted leftwards without duplicates; at[g]
     * becomes the compacted start. */
    uint64_t *const at = f->at;
    for (uint32_t g = 0; g < cells; g++) {
        const uint32_t pad = at[g + 1] < r ? r : 0;
        at[g + 1] += at[g] + pad;
        if (pad)
            memcpy(f->ids + at[g], near_fine + (size_t)g * r, pad * sizeof *f->ids);
        cursor[g] = at[g] + pad;
    }
    for (uint32_t c = 0; c < k; c++)
        for (uint32_t j = 0; j < q; j++)
            f->ids[cursor[near_cells[(size_t)c * q + j]]++] = c;
    uint64_t out = 0, raw_b = 0;
    for (uint32_t g = 0; g < cells; g++) {
        const uint64_t raw_e = at[g + 1];
        if (short_file)
            qsort(f->ids + raw_b, raw_e - raw_b, sizeof *f->ids, tree_u32_cmp);
        at[g] = out;
        for (uint64_t t = raw_b; t < raw_e; t++)
            if (out == at[g] || f->ids[out - 1] != f->ids[t])
                f->ids[out++] = f->ids[t];
        raw_b = raw_e;
    }
    at[cells] = out;
    st = kiln_alloc(ctx, (size_t)out * dim * sizeof *f->packed, "cell file centroids",
                    (void **)&f->packed);
    if (st != KILN_OK)
        goto done;
    for (uint64_t t = 0; t < out; t++)
        memcpy(f->packed + t * dim, centroids + (size_t)f->ids[t] * dim, dim * sizeof *f->packed);

done:
    free(near_cells);
    free(near_fine);
    free(dist);
    free(cursor);
    return st;
}

/* (da, ia) ranks before (db, ib): distance with NaN as +inf, then id. */
static inline bool tree_before(float da, uint32_t ia, float db, uint32_t ib) {
    da = isnan(da) ? INFINITY : da;
    db = isnan(db) ? INFINITY : db;
    return da < db || (da == db && ia < ib);
}

/* One round of the search over rows.n <= TREE_CHUNK_ROWS rows with job->P
 * probes (decision 4), through the files f, into out. */
static kiln_status tree_search_round(kiln_ctx *ctx, const tree_job *job, const tree_files *f,
                                     kiln_rows rows, tree_round *s, kiln_nearest_out out) {
    const kiln_kmeans_tree *const tree = job->tree;
    const kiln_nearest_backend nearest = job->nearest;
    const uint32_t P = job->P, r = job->r;
    const int threads = job->threads;
    const float *const x = rows.x;
    const size_t n = rows.n;
    uint32_t *const ids = out.ids;
    float *const dists = out.dists;
    const uint32_t cells = tree->cells, dim = tree->dim;
    const size_t np = n * P;
    kiln_status st = nearest.fn(nearest.user, ctx, rows, (kiln_centroids){tree->coarse, cells, dim},
                                P, (kiln_nearest_out){s->cid, s->cdist});
    if (st != KILN_OK)
        return st;
    memset(s->cell_at, 0, ((size_t)cells + 1) * sizeof *s->cell_at);
    for (size_t q = 0; q < np; q++) {
        if (s->cid[q] >= cells)
            return kiln_fail(ctx, KILN_E_INTERNAL,
                             "nearest-centroid backend returned coarse cell %u >= %u for row %zu",
                             s->cid[q], cells, q / P);
        s->cell_at[s->cid[q] + 1]++;
    }
    uint64_t most = 0;
    for (uint32_t g = 0; g < cells; g++) {
        most = s->cell_at[g + 1] > most ? s->cell_at[g + 1] : most;
        s->cell_at[g + 1] += s->cell_at[g];
    }
    if ((st = kiln_grow_buf_fit(ctx, &s->rows, (size_t)most * dim * sizeof(float), "probe rows")))
        return st;
    float *const cell_rows = s->rows.p;
    for (size_t q = 0; q < np; q++)
        s->pairs[s->cell_at[s->cid[q]]++] = (uint32_t)q;
    for (uint32_t g = cells; g > 0; g--)
        s->cell_at[g] = s->cell_at[g - 1];
    s->cell_at[0] = 0;

    /* Cell by cell: the rows probing it gathered, one backend call over its
     * file, r ids and distances per pair in the cell's pair order. */
    size_t at = 0;
    for (uint32_t g = 0; g < cells && st == KILN_OK; g++) {
        const uint64_t b = s->cell_at[g], e = s->cell_at[g + 1];
        if (b == e)
            continue;
        const uint32_t kg = (uint32_t)(f->at[g + 1] - f->at[g]);
        const uint32_t *const pg = s->pairs + b;
        const long lcount = (long)(e - b);
#pragma omp parallel for num_threads(threads) schedule(static) if (lcount >= TREE_GATHER_PARALLEL)
        for (long t = 0; t < lcount; t++)
            memcpy(cell_rows + (size_t)t * dim, x + (size_t)(pg[t] / P) * dim,
                   dim * sizeof *cell_rows);
        uint32_t *const gid = s->ids + at;
        st = nearest.fn(nearest.user, ctx, (kiln_rows){cell_rows, (size_t)(e - b), dim},
                        (kiln_centroids){f->packed + f->at[g] * dim, kg, dim}, r,
                        (kiln_nearest_out){gid, s->dists + at});
        const uint32_t *const file = f->ids + f->at[g];
        for (size_t t = 0; st == KILN_OK && t < (size_t)(e - b) * r; t++) {
            if (gid[t] >= kg)
                st = kiln_fail(ctx, KILN_E_INTERNAL,
                               "nearest-centroid backend returned centroid %u >= %u of cell %u's "
                               "file",
                               gid[t], kg, g);
            else
                gid[t] = file[gid[t]];
        }
        for (uint64_t t = 0; t < e - b; t++)
            s->list_at[pg[t]] = at + (size_t)t * r;
        at += (size_t)(e - b) * r;
    }
    if (st != KILN_OK)
        return st;

    /* Each row: a P-way merge of its lists to the r best, nearest first. */
    const long ln = (long)n;
    int repeated = 0;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < ln; i++) {
        uint32_t head[TREE_MAX_PROBES] = {0};
        const size_t q0 = (size_t)i * P;
        uint32_t *const out_ids = ids + (size_t)i * r;
        float *const out_d = dists + (size_t)i * r;
        for (uint32_t t = 0; t < r;) {
            uint32_t best = 0, bid = 0;
            float bd = 0.0f;
            bool any = false;
            for (uint32_t j = 0; j < P; j++) {
                if (head[j] == r)
                    continue;
                const size_t w = s->list_at[q0 + j] + head[j];
                if (!any || tree_before(s->dists[w], s->ids[w], bd, bid)) {
                    any = true;
                    best = j;
                    bd = s->dists[w];
                    bid = s->ids[w];
                }
            }
            if (!any) {
                /* Every list holds r distinct centroids, unless the backend
                 * repeated one. */
#pragma omp atomic write
                repeated = 1;
                break;
            }
            head[best]++;
            if (t > 0 && out_ids[t - 1] == bid)
                continue;
            out_ids[t] = bid;
            out_d[t++] = bd;
        }
    }
    if (repeated)
        return kiln_fail(ctx, KILN_E_INTERNAL,
                         "nearest-centroid backend repeated a centroid in one row's list");
    return KILN_OK;
}

/* kiln_nearest_fn over a const kiln_kmeans_tree_search *: the refining
 * Lloyd's nearest centroid (decision 3). */
static kiln_status tree_route_nearest(void *user, kiln_ctx *ctx, kiln_rows rows,
                                      kiln_centroids cent, uint32_t r, kiln_nearest_out out) {
    return kiln_kmeans_tree_nearest(ctx, user, rows, cent, r, out);
}

/* ==== Public ==== */

kiln_status kiln_kmeans_train_tree(kiln_ctx *ctx, kiln_rows data, const kiln_kmeans_params *p,
                                   const kiln_nearest_backend *backend, float *centroids,
                                   kiln_kmeans_tree *tree) {
    const float *const x = data.x;
    const size_t n = data.n;
    const uint32_t dim = data.dim;
    if (!tree)
        return kiln_fail(ctx, KILN_E_ARG, "k-means: tree must not be NULL");
    memset(tree, 0, sizeof *tree);
    uint32_t k;
    kiln_status st = kiln_kmeans_k(ctx, n, p, &k);
    if (st != KILN_OK)
        return st;
    if (!x || !centroids || dim == 0)
        return kiln_fail(ctx, KILN_E_ARG, "k-means: need rows, centroids and dim >= 1");
    if (k < TREE_MIN_K) {
        tree->dim = dim;
        return kiln_kmeans_train(ctx, data, p, backend, centroids);
    }
    kiln_nearest_cpu_opts cpu = {.threads = p->threads};
    const kiln_nearest_backend nearest = kiln_nearest_or_cpu(backend, &cpu);
    kiln_rng rng;
    kiln_rng_seed(&rng, p->seed ^ TREE_RNG_STREAM);
    const uint64_t sample_seed = kiln_rng_next(&rng), coarse_sample_seed = kiln_rng_next(&rng),
                   coarse_seed = kiln_rng_next(&rng);
    const size_t m = kiln_kmeans_sample_rows(n, k, p);
    const uint32_t k1 = tree_cells(k);
    const size_t m1 = (size_t)k1 * TREE_COARSE_PER_CELL < m ? (size_t)k1 * TREE_COARSE_PER_CELL : m;

    float *copy = NULL, *coarse = NULL, *dist = NULL, *rows = NULL;
    uint32_t *cell_of = NULL, *order = NULL, *quota = NULL, *remap = NULL, *first = NULL;
    uint64_t *count = NULL;
    tree_rem *rems = NULL;
    const float *xs = x;
    if (m < n) {
        st = kiln_alloc(ctx, m * dim * sizeof *copy, "k-means sample rows", (void **)&copy);
        if (st == KILN_OK)
            st = kiln_kmeans_sample(ctx, data, m, sample_seed, p->threads, copy);
        xs = copy;
    }
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)k1 * dim * sizeof *coarse, "coarse centroids",
                        (void **)&coarse);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, m * sizeof *cell_of, "coarse cells", (void **)&cell_of);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, m * sizeof *dist, "coarse distances", (void **)&dist);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, m * sizeof *order, "rows by cell", (void **)&order);
    if (st == KILN_OK)
        st = kiln_calloc(ctx, ((size_t)k1 + 1) * sizeof *count, "cell rows", (void **)&count);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)k1 * sizeof *quota, "cell quotas", (void **)&quota);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)k1 * sizeof *remap, "cell numbers", (void **)&remap);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)k1 * sizeof *rems, "cell remainders", (void **)&rems);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, ((size_t)k1 + 1) * sizeof *first, "cell centroids", (void **)&first);
    /* The coarse rows go where the cell rows will later (m1 <= m). */
    if (st == KILN_OK)
        st = kiln_alloc(ctx, m1 * dim * sizeof *rows, "coarse rows", (void **)&rows);
    if (st == KILN_OK)
        st = kiln_kmeans_sample(ctx, (kiln_rows){xs, m, dim}, m1, coarse_sample_seed, p->threads,
                                rows);
    if (st != KILN_OK)
        goto done;

    uint32_t cells = 0;
    kiln_progress_bar bar;
    kiln_progress_begin(&bar, ctx, "kmeans", (uint64_t)p->iters * (1 + k1) + TREE_REFINE_ITERS);
    kiln_kmeans_run run = {.iters = p->iters,
                           .threads = p->threads,
                           .seed = coarse_seed,
                           .nearest = nearest,
                           .bar = &bar};
    st = kiln_kmeans_train_rows(ctx, (kiln_rows){rows, m1, dim}, k1, &run, coarse);
    if (st == KILN_OK)
        st = nearest.fn(nearest.user, ctx, (kiln_rows){xs, m, dim},
                        (kiln_centroids){coarse, k1, dim}, 1, (kiln_nearest_out){cell_of, dist});
    for (size_t i = 0; st == KILN_OK && i < m; i++) {
        if (cell_of[i] >= k1)
            st = kiln_fail(ctx, KILN_E_INTERNAL,
                           "nearest-centroid backend returned coarse cell %u >= %u for row %zu",
                           cell_of[i], k1, i);
        else
            count[cell_of[i]]++;
    }
    if (st != KILN_OK)
        goto end_bar;

    /* Drop empty cells, renumbering the rest in order (decision 2). */
    for (uint32_t c = 0; c < k1; c++) {
        if (count[c] == 0)
            continue;
        remap[c] = cells;
        count[cells] = count[c];
        if (cells != c)
            memcpy(coarse + (size_t)cells * dim, coarse + (size_t)c * dim, dim * sizeof *coarse);
        cells++;
    }
    kiln_progress_add(&bar, (uint64_t)p->iters * (k1 - cells));
    tree_quota(count, cells, m, k, quota, rems);
    first[0] = 0;
    uint64_t most = 0;
    for (uint32_t c = 0; c < cells; c++) {
        first[c + 1] = first[c] + quota[c];
        most = count[c] > most ? count[c] : most;
    }
    /* Rows by cell, in sample order: count becomes the cells' starts. */
    for (uint32_t c = 0, start = 0; c < cells; c++) {
        const uint64_t rows_c = count[c];
        count[c] = start;
        start += (uint32_t)rows_c;
    }
    for (size_t i = 0; i < m; i++)
        order[count[remap[cell_of[i]]]++] = (uint32_t)i;
    for (uint32_t c = cells; c > 0; c--)
        count[c] = count[c - 1];
    count[0] = 0;

    if (most > m1) {
        free(rows);
        rows = NULL;
        st = kiln_alloc(ctx, (size_t)most * dim * sizeof *rows, "cell rows", (void **)&rows);
    }
    for (uint32_t c = 0; c < cells && st == KILN_OK; c++) {
        const uint64_t b = count[c], e = count[c + 1];
        for (uint64_t t = b; t < e; t++)
            memcpy(rows + (t - b) * dim, xs + (size_t)order[t] * dim, dim * sizeof *rows);
        run.seed = kiln_rng_next(&rng);
        st = kiln_kmeans_train_rows(ctx, (kiln_rows){rows, (size_t)(e - b), dim}, quota[c], &run,
                                    centroids + (size_t)first[c] * dim);
    }
    *tree = (kiln_kmeans_tree){.cells = cells, .dim = dim, .coarse = coarse};
    if (st == KILN_OK) {
        kiln_kmeans_tree_search route = {.tree = tree,
                                         .probes = TREE_REFINE_PROBES,
                                         .copies = 1,
                                         .nearest = nearest,
                                         .threads = p->threads};
        run = (kiln_kmeans_run){.iters = TREE_REFINE_ITERS,
                                .threads = p->threads,
                                .seed = kiln_rng_next(&rng),
                                .nearest = {tree_route_nearest, &route},
                                .bar = &bar};
        st = kiln_kmeans_refine_rows(ctx, (kiln_rows){xs, m, dim}, k, &run, centroids);
    }
    if (st == KILN_OK)
        coarse = NULL;
    else
        memset(tree, 0, sizeof *tree);
end_bar:
    kiln_progress_end(&bar);

done:
    free(copy);
    free(coarse);
    free(dist);
    free(rows);
    free(cell_of);
    free(order);
    free(quota);
    free(remap);
    free(count);
    free(rems);
    free(first);
    return st;
}

kiln_status kiln_kmeans_tree_nearest(kiln_ctx *ctx, const kiln_kmeans_tree_search *search,
                                     kiln_rows rows, kiln_centroids cent, uint32_t r,
                                     kiln_nearest_out out) {
    const kiln_kmeans_tree *const tree = search ? search->tree : NULL;
    if (!tree || tree->dim == 0 || (tree->cells > 0 && !tree->coarse))
        return kiln_fail(ctx, KILN_E_ARG, "tree search: no trained tree");
    const size_t n = rows.n;
    const uint32_t k = cent.k;
    if (n == 0)
        return KILN_OK;
    if (!rows.x || !cent.c || !out.ids || !out.dists)
        return kiln_fail(ctx, KILN_E_ARG, "tree search: NULL array");
    if (k == 0 || r == 0 || r > k)
        return kiln_fail(ctx, KILN_E_ARG, "tree search: need 1 <= r <= k (r %u, k %u)", r, k);
    if (rows.dim != tree->dim || cent.dim != tree->dim)
        return kiln_fail(ctx, KILN_E_ARG,
                         "tree search: rows of dim %u and centroids of dim %u, tree of dim %u",
                         rows.dim, cent.dim, tree->dim);
    kiln_nearest_cpu_opts cpu = {.threads = search->threads};
    const kiln_nearest_backend nearest = kiln_nearest_or_cpu(&search->nearest, &cpu);
    uint32_t probes = search->probes, copies = search->copies;
    if (probes == 0 && copies == 0) {
        probes = 1;
        copies = TREE_LIST_COPIES;
    }
    const uint32_t P = probes < tree->cells ? probes : tree->cells;
    /* A flat tree, or so many probes or copies that the search would visit
     * most centroids anyway: the flat search is cheaper, and exact. */
    if (tree->cells == 0 || P == 0 || copies == 0 || P > TREE_MAX_PROBES ||
        copies > TREE_MAX_PROBES)
        return nearest.fn(nearest.user, ctx, rows, cent, r, out);

    const tree_job job = {.tree = tree,
                          .cent = cent,
                          .nearest = nearest,
                          .P = P,
                          .copies = copies,
                          .r = r,
                          .threads = kiln_threads(search->threads)};
    tree_files f = {0};
    kiln_status st = tree_file(ctx, &job, &f);
    const size_t chunk = n < TREE_CHUNK_ROWS ? n : TREE_CHUNK_ROWS;
    const uint32_t dim = tree->dim;
    size_t lists = 0;
    if (st == KILN_OK && kiln_mul_size(chunk * P, r, &lists))
        st = kiln_fail(ctx, KILN_E_ARG, "tree search: %u probes x %u nearest overflow", P, r);
    tree_round s = {0};
    if (st == KILN_OK)
        st = kiln_alloc(ctx, chunk * P * sizeof *s.cid, "probed cells", (void **)&s.cid);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, chunk * P * sizeof *s.cdist, "probe distances", (void **)&s.cdist);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, ((size_t)tree->cells + 1) * sizeof *s.cell_at, "cell pairs",
                        (void **)&s.cell_at);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, chunk * P * sizeof *s.pairs, "probe pairs", (void **)&s.pairs);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, chunk * P * sizeof *s.list_at, "probe lists", (void **)&s.list_at);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, lists * sizeof *s.ids, "probe ids", (void **)&s.ids);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, lists * sizeof *s.dists, "probe distances", (void **)&s.dists);
    for (size_t b = 0; b < n && st == KILN_OK; b += chunk) {
        const size_t count = n - b < chunk ? n - b : chunk;
        st = tree_search_round(ctx, &job, &f, (kiln_rows){rows.x + b * dim, count, dim}, &s,
                               (kiln_nearest_out){out.ids + b * r, out.dists + b * r});
    }
    tree_files_free(&f);
    free(s.cid);
    free(s.cdist);
    free(s.cell_at);
    free(s.pairs);
    free(s.list_at);
    free(s.ids);
    free(s.dists);
    kiln_grow_buf_free(&s.rows);
    return st;
}

void kiln_kmeans_tree_free(kiln_kmeans_tree *tree) {
    if (!tree)
        return;
    free(tree->coarse);
    memset(tree, 0, sizeof *tree);
}
