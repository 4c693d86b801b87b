/* knn_exact.c -- brute-force k nearest neighbours: the recall oracle.
 *
 * Every query is compared with every base vector through the dispatched SIMD
 * distance, and each query keeps the k best in a bounded max-heap.
 *
 * Design decisions:
 *  1. Exact by construction: each pair's distance is the very function the
 *     index uses (kiln_distance_fn), never the ||q||^2 + ||b||^2 - 2 q.b
 *     expansion, whose cancellation reorders near neighbours. The result is
 *     the brute force of the reference distance up to float rounding, which
 *     is exact for integer-valued data such as SIFT.
 *  2. A total order on (distance, id) -- ties go to the smaller id, a NaN
 *     distance ranks as +inf -- makes the answer a function of the input
 *     alone: the order in which threads, tiles and blocks meet the
 *     candidates cannot change it, so any thread count gives identical bytes.
 *  3. The base is walked in blocks of bounded bytes (read from the dataset,
 *     or normalised copies for COS, or the caller's rows in place), so the
 *     dataset variant never holds the whole base and the array variant never
 *     copies it. Queries are held whole; they are the small side.
 *  4. Within a block, work is tiled: a tile of queries against a run of base
 *     rows small enough to stay in L2, so each base row fetched from memory
 *     serves a whole tile of queries rather than one.
 *  5. Work items are (query tile, lane), where a lane is a slice of every
 *     block with its own heaps. With many queries there is one lane and the
 *     parallelism is over queries; with few queries (one query, a million
 *     base rows) the base is split into lanes as well and the lanes' heaps
 *     are merged at the end, which decision 2 makes order-independent.
 */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ctx_internal.h"
#include "dataset_internal.h"
#include "distance_internal.h"
#include "progress_internal.h"

/* ==== Tunables ==== */

/* Bytes of base rows per streamed block: large enough that the per-block
 * fork/join and the serial dataset read are amortised over many distances,
 * small enough that a 100M-row base costs 32 MiB of buffer, not the file. */
#define KNN_BLOCK_BYTES ((size_t)32 << 20)
/* Upper bound on rows per buffered block (16K rows of SIFT is 8 MiB): with
 * many queries every thread works in the same block, which then stays in a
 * shared L3 and is fetched from memory once for all of them. */
#define KNN_BLOCK_ROWS_MAX ((size_t)16384)
/* When the base is used in place, a block holds at least this many
 * distances (about 0.1 s of one core at dim 128), so the fork/join that
 * separates blocks is amortised even for a handful of queries. */
#define KNN_BLOCK_PAIRS_MIN ((size_t)1 << 24)
/* Queries per tile: each base run loaded from memory is reused this many
 * times. 32 queries of dim 128 are 16 KiB, half of an L1d. */
#define KNN_TILE_QUERIES ((size_t)32)
/* Bytes of base rows per tile run: fits in a 1-2 MiB L2 with room left for
 * the queries and heaps (512 rows at dim 128, 83 at dim 784). */
#define KNN_TILE_BYTES ((size_t)256 << 10)
/* Work items wanted per thread for dynamic load balance; below this many
 * query tiles the base is split into lanes too. */
#define KNN_ITEMS_PER_THREAD 4
/* A lane's slice of a block is not made smaller than this many rows, so a
 * tiny base does not shatter into items that are all overhead. */
#define KNN_LANE_ROWS_MIN ((size_t)256)

/* ==== Types ==== */

/* The k best candidates of one query in one lane: a max-heap on (dist, id),
 * so the root is the worst kept and the first to go. */
typedef struct knn_heap {
    float *dist; /* cap entries */
    int64_t *id; /* cap entries */
    uint32_t count;
} knn_heap;

/* One call's state. Rows come either from a caller's array or a dataset. */
typedef struct knn_job {
    kiln_ctx *ctx;
    const float *base; /* caller's rows, or NULL when reading base_ds */
    const kiln_dataset *base_ds;
    size_t n, nq, dim;
    const float *queries; /* nq*dim, normalised when COS */
    kiln_metric metric;
    kiln_dist_fn dist;
    uint32_t cap; /* heap capacity: min(k, n) */
    int threads;
    size_t lanes; /* base slices with their own heaps */
    size_t block_rows;
    float *block;     /* block_rows*dim floats, or NULL when rows are used in place */
    knn_heap *heaps;  /* lanes*nq, heap (lane, q) at lane*nq + q */
    float *heap_dist; /* lanes*nq*cap */
    int64_t *heap_id; /* lanes*nq*cap */
    kiln_progress_bar bar;
} knn_job;

/* ==== Heap ==== */

/* (da, ia) ranks strictly before (db, ib): nearer, or as near with a smaller id. */
static inline bool knn_before(float da, int64_t ia, float db, int64_t ib) {
    return da < db || (da == db && ia < ib);
}

static void heap_sift_down(float *hd, int64_t *hi, size_t count, size_t at) {
    const float d = hd[at];
    const int64_t id = hi[at];
    for (;;) {
        size_t child = 2 * at + 1;
        if (child >= count)
            break;
        if (child + 1 < count && knn_before(hd[child], hi[child], hd[child + 1], hi[child + 1]))
            child++;
        if (!knn_before(d, id, hd[child], hi[child]))
            break;
        hd[at] = hd[child];
        hi[at] = hi[child];
        at = child;
    }
    hd[at] = d;
    hi[at] = id;
}

/* Offers a candidate; keeps it when the heap has room or it beats the root. */
static inline void heap_offer(knn_heap *h, uint32_t cap, float d, int64_t id) {
    if (isnan(d))
        d = INFINITY;
    float *const hd = h->dist;
    int64_t *const hi = h->id;
    if (h->count < cap) {
        size_t at = h->count++;
        while (at > 0) {
            const size_t parent = (at - 1) / 2;
            if (!knn_before(hd[parent], hi[parent], d, id))
                break;
            hd[at] = hd[parent];
            hi[at] = hi[parent];
            at = parent;
        }
        hd[at] = d;
        hi[at] = id;
    } else if (knn_before(d, id, hd[0], hi[0])) {
        hd[0] = d;
        hi[0] = id;
        heap_sift_down(hd, hi, h->count, 0);
    }
}

/* Empties the heap into out_id/out_dist (k slots) nearest first, padding the
 * slots past count with -1 / +inf. */
static void heap_drain(knn_heap *h, uint32_t k, int64_t *out_id, float *out_dist) {
    for (uint32_t j = h->count; j < k; j++) {
        out_id[j] = -1;
        if (out_dist)
            out_dist[j] = INFINITY;
    }
    while (h->count > 0) {
        const uint32_t last = --h->count;
        out_id[last] = h->id[0];
        if (out_dist)
            out_dist[last] = h->dist[0];
        h->dist[0] = h->dist[last];
        h->id[0] = h->id[last];
        heap_sift_down(h->dist, h->id, h->count, 0);
    }
}

/* ==== Scan ==== */

/* One work item: queries [q0, q1) against rows [r0, r1) of the block that
 * starts at base row `first`, in runs of rows that stay in cache. */
static void scan_item(const knn_job *job, const float *rows, size_t first, size_t lane, size_t q0,
                      size_t q1, size_t r0, size_t r1) {
    const size_t dim = job->dim;
    const kiln_dist_fn dist = job->dist;
    size_t run = KNN_TILE_BYTES / (dim * sizeof(float));
    if (run == 0)
        run = 1;
    knn_heap *const heaps = job->heaps + lane * job->nq;
    for (size_t s0 = r0; s0 < r1; s0 += run) {
        const size_t s1 = s0 + run < r1 ? s0 + run : r1;
        for (size_t q = q0; q < q1; q++) {
            const float *const qv = job->queries + q * dim;
            knn_heap *const h = &heaps[q];
            for (size_t r = s0; r < s1; r++) {
                const float d = dist(qv, rows + r * dim, dim);
                /* Most candidates lose to the root: reject them inline. A
                 * NaN fails the test and is only kept (as +inf) while the
                 * heap is filling. */
                if (h->count < job->cap || d <= h->dist[0])
                    heap_offer(h, job->cap, d, (int64_t)(first + r));
            }
        }
    }
}

/* Scans one block of `count` rows starting at base row `first`. */
static void scan_block(knn_job *job, const float *rows, size_t first, size_t count) {
    const size_t tiles = (job->nq + KNN_TILE_QUERIES - 1) / KNN_TILE_QUERIES;
    const size_t lanes = job->lanes;
    const long items = (long)(tiles * lanes);
#pragma omp parallel for num_threads(job->threads) schedule(dynamic, 1)
    for (long item = 0; item < items; item++) {
        const size_t tile = (size_t)item / lanes, lane = (size_t)item % lanes;
        const size_t q0 = tile * KNN_TILE_QUERIES;
        const size_t q1 = q0 + KNN_TILE_QUERIES < job->nq ? q0 + KNN_TILE_QUERIES : job->nq;
        const size_t r0 = count * lane / lanes, r1 = count * (lane + 1) / lanes;
        scan_item(job, rows, first, lane, q0, q1, r0, r1);
        kiln_progress_add(&job->bar, (uint64_t)(q1 - q0) * (r1 - r0));
    }
}

/* Rows [first, first+count) as floats ready for the distance: the caller's
 * rows in place, or read/copied into job->block and normalised for COS. */
static kiln_status load_block(knn_job *job, size_t first, size_t count, const float **rows) {
    const size_t dim = job->dim;
    if (!job->block) {
        *rows = job->base + first * dim;
        return KILN_OK;
    }
    if (job->base_ds) {
        const kiln_status st = kiln_dataset_read_f32(job->base_ds, first, count, job->block);
        if (st != KILN_OK) {
            /* The dataset reports on its own context; bring the message here. */
            if (job->base_ds->ctx != job->ctx)
                kiln_fail(job->ctx, st, "%s", kiln_errmsg(job->base_ds->ctx));
            return st;
        }
    } else {
        memcpy(job->block, job->base + first * dim, count * dim * sizeof(float));
    }
    if (job->metric == KILN_METRIC_COS) {
        float *const block = job->block;
        const long c = (long)count;
#pragma omp parallel for num_threads(job->threads) schedule(static)
        for (long i = 0; i < c; i++)
            kiln_normalize(block + (size_t)i * dim, dim);
    }
    *rows = job->block;
    return KILN_OK;
}

/* ==== Driver ==== */

static kiln_status check_common(kiln_ctx *ctx, const char *fn, kiln_metric metric, uint32_t k,
                                const int64_t *labels, size_t nq) {
    if (metric != KILN_METRIC_L2 && metric != KILN_METRIC_IP && metric != KILN_METRIC_COS)
        return kiln_fail(ctx, KILN_E_ARG, "%s: metric %d is not one of L2, IP, COS", fn,
                         (int)metric);
    if (k == 0)
        return kiln_fail(ctx, KILN_E_ARG, "%s: k is 0, must be at least 1", fn);
    if (nq > 0 && !labels)
        return kiln_fail(ctx, KILN_E_ARG, "%s: labels is NULL", fn);
    size_t out_len;
    if (kiln_mul_size(nq, k, &out_len) || kiln_mul_size(out_len, sizeof(int64_t), &out_len))
        return kiln_fail(ctx, KILN_E_RANGE, "%s: %zu queries x k %u results overflow size_t", fn,
                         nq, k);
    return KILN_OK;
}

/* Sizes the job (threads, lanes, blocks) and allocates the heaps and, when
 * rows cannot be used in place, the block buffer. */
static kiln_status job_setup(knn_job *job, uint32_t k, uint32_t threads, bool need_block) {
    kiln_ctx *const ctx = job->ctx;
    job->dist = kiln_distance_fn(job->metric);
    job->cap = (uint64_t)k < job->n ? k : (uint32_t)job->n;
    job->threads = kiln_threads(threads);

    const size_t row_bytes = job->dim * sizeof(float);
    size_t rows = KNN_BLOCK_BYTES / row_bytes;
    rows = rows < KNN_BLOCK_ROWS_MAX ? rows : KNN_BLOCK_ROWS_MAX;
    rows = rows > 0 ? rows : 1;
    if (!need_block) {
        /* Rows used in place cost no buffer, so a block is only a unit of
         * synchronisation: few queries get long blocks (one for one query),
         * many queries keep short ones that all threads share in cache. */
        const size_t for_work = (KNN_BLOCK_PAIRS_MIN + job->nq - 1) / job->nq;
        rows = rows > for_work ? rows : for_work;
    }
    job->block_rows = rows < job->n ? rows : (job->n > 0 ? job->n : 1);

    const size_t tiles = (job->nq + KNN_TILE_QUERIES - 1) / KNN_TILE_QUERIES;
    const size_t want = (size_t)job->threads * KNN_ITEMS_PER_THREAD;
    size_t lanes = 1;
    if (job->threads > 1 && tiles > 0 && tiles < want) {
        lanes = (want + tiles - 1) / tiles;
        const size_t by_rows = job->block_rows / KNN_LANE_ROWS_MIN;
        lanes = lanes < by_rows ? lanes : by_rows;
        lanes = lanes > 0 ? lanes : 1;
    }
    job->lanes = lanes;

    size_t heaps, heap_bytes, slots, bytes;
    if (kiln_mul_size(lanes, job->nq, &heaps) ||
        kiln_mul_size(heaps, sizeof(knn_heap), &heap_bytes) ||
        kiln_mul_size(heaps, job->cap, &slots) || kiln_mul_size(slots, sizeof(int64_t), &bytes))
        return kiln_fail(ctx, KILN_E_RANGE,
                         "exact kNN: %zu queries x k %u x %zu lanes of heap overflow size_t",
                         job->nq, job->cap, lanes);
    kiln_status st;
    if ((st = kiln_calloc(ctx, heap_bytes, "exact kNN heaps", (void **)&job->heaps)) != KILN_OK ||
        (st = kiln_alloc(ctx, slots * sizeof(float), "exact kNN heap distances",
                         (void **)&job->heap_dist)) != KILN_OK ||
        (st = kiln_alloc(ctx, bytes, "exact kNN heap ids", (void **)&job->heap_id)) != KILN_OK)
        return st;
    for (size_t h = 0; h < heaps; h++) {
        job->heaps[h].dist = job->heap_dist + h * job->cap;
        job->heaps[h].id = job->heap_id + h * job->cap;
    }
    if (need_block) {
        if ((st = kiln_alloc_aligned(ctx, job->block_rows * row_bytes, "exact kNN base block",
                                     (void **)&job->block)) != KILN_OK)
            return st;
    }
    return KILN_OK;
}

static void job_free(knn_job *job) {
    kiln_free_aligned(job->block);
    free(job->heaps);
    free(job->heap_dist);
    free(job->heap_id);
}

/* Streams every block, then merges lanes and writes each query's row. */
static kiln_status job_run(knn_job *job, uint32_t k, int64_t *labels, float *distances) {
    kiln_progress_begin(&job->bar, job->ctx, "groundtruth", (uint64_t)job->n * job->nq);
    for (size_t first = 0; first < job->n; first += job->block_rows) {
        const size_t count = job->n - first < job->block_rows ? job->n - first : job->block_rows;
        const float *rows;
        const kiln_status st = load_block(job, first, count, &rows);
        if (st != KILN_OK)
            return st;
        scan_block(job, rows, first, count);
    }
    const long nq = (long)job->nq;
#pragma omp parallel for num_threads(job->threads) schedule(static)
    for (long q = 0; q < nq; q++) {
        knn_heap *const h = &job->heaps[q];
        for (size_t lane = 1; lane < job->lanes; lane++) {
            const knn_heap *const other = &job->heaps[lane * job->nq + (size_t)q];
            for (uint32_t j = 0; j < other->count; j++)
                heap_offer(h, job->cap, other->dist[j], other->id[j]);
        }
        heap_drain(h, k, labels + (size_t)q * k, distances ? distances + (size_t)q * k : NULL);
    }
    kiln_progress_end(&job->bar);
    return KILN_OK;
}

/* Normalised copy of nq*dim query floats for COS. */
static kiln_status normalized_copy(kiln_ctx *ctx, const float *src, size_t nq, size_t dim,
                                   float **out) {
    const size_t bytes = nq * dim * sizeof(float); /* checked by the caller */
    kiln_status st = kiln_alloc_aligned(ctx, bytes, "normalised queries", (void **)out);
    if (st != KILN_OK)
        return st;
    memcpy(*out, src, bytes);
    for (size_t i = 0; i < nq; i++)
        kiln_normalize(*out + i * dim, dim);
    return KILN_OK;
}

/* ==== Public ==== */

kiln_status kiln_knn_exact(kiln_ctx *ctx, const float *base, size_t n, const float *queries,
                           size_t nq, size_t dim, kiln_metric metric, uint32_t k, uint32_t threads,
                           int64_t *labels, float *distances) {
    static const char fn[] = "exact kNN";
    kiln_status st = check_common(ctx, fn, metric, k, labels, nq);
    if (st != KILN_OK)
        return st;
    if (dim == 0)
        return kiln_fail(ctx, KILN_E_ARG, "%s: dim is 0, must be at least 1", fn);
    if (n > 0 && !base)
        return kiln_fail(ctx, KILN_E_ARG, "%s: base is NULL with n = %zu", fn, n);
    if (nq > 0 && !queries)
        return kiln_fail(ctx, KILN_E_ARG, "%s: queries is NULL with nq = %zu", fn, nq);
    size_t bytes;
    if (kiln_mul_size(n, dim, &bytes) || kiln_mul_size(bytes, sizeof(float), &bytes))
        return kiln_fail(ctx, KILN_E_RANGE, "%s: base of %zu x %zu floats overflows size_t", fn, n,
                         dim);
    if (kiln_mul_size(nq, dim, &bytes) || kiln_mul_size(bytes, sizeof(float), &bytes))
        return kiln_fail(ctx, KILN_E_RANGE, "%s: %zu queries x %zu floats overflow size_t", fn, nq,
                         dim);
    if (nq == 0)
        return KILN_OK;

    knn_job job = {.ctx = ctx, .base = base, .n = n, .nq = nq, .dim = dim, .metric = metric};
    float *qcopy = NULL;
    if (metric == KILN_METRIC_COS) {
        if ((st = normalized_copy(ctx, queries, nq, dim, &qcopy)) != KILN_OK)
            return st;
    }
    job.queries = qcopy ? qcopy : queries;
    if ((st = job_setup(&job, k, threads, metric == KILN_METRIC_COS)) == KILN_OK)
        st = job_run(&job, k, labels, distances);
    job_free(&job);
    kiln_free_aligned(qcopy);
    return st;
}

kiln_status kiln_knn_exact_dataset(kiln_ctx *ctx, const kiln_dataset *base,
                                   const kiln_dataset *queries, kiln_metric metric, uint32_t k,
                                   uint32_t threads, int64_t *labels, float *distances) {
    static const char fn[] = "exact kNN";
    if (!base || !queries)
        return kiln_fail(ctx, KILN_E_ARG, "%s: %s dataset is NULL", fn, base ? "queries" : "base");
    const size_t n = kiln_dataset_count(base), dim = kiln_dataset_dim(base);
    const size_t nq = kiln_dataset_count(queries), qdim = kiln_dataset_dim(queries);
    kiln_status st = check_common(ctx, fn, metric, k, labels, nq);
    if (st != KILN_OK)
        return st;
    if (qdim != dim)
        return kiln_fail(ctx, KILN_E_ARG, "%s: queries have dim %zu but base has dim %zu", fn, qdim,
                         dim);
    if (dim == 0)
        return kiln_fail(ctx, KILN_E_ARG, "%s: datasets have dim 0", fn);
    size_t bytes;
    if (kiln_mul_size(nq, dim, &bytes) || kiln_mul_size(bytes, sizeof(float), &bytes))
        return kiln_fail(ctx, KILN_E_RANGE, "%s: %zu queries x %zu floats overflow size_t", fn, nq,
                         dim);
    if (nq == 0)
        return KILN_OK;

    float *qrows = NULL;
    if ((st = kiln_alloc_aligned(ctx, bytes, "queries", (void **)&qrows)) != KILN_OK)
        return st;
    if ((st = kiln_dataset_read_f32(queries, 0, nq, qrows)) != KILN_OK) {
        if (queries->ctx != ctx)
            kiln_fail(ctx, st, "%s", kiln_errmsg(queries->ctx));
        kiln_free_aligned(qrows);
        return st;
    }
    if (metric == KILN_METRIC_COS) {
        for (size_t i = 0; i < nq; i++)
            kiln_normalize(qrows + i * dim, dim);
    }
    knn_job job = {.ctx = ctx,
                   .base_ds = base,
                   .n = n,
                   .nq = nq,
                   .dim = dim,
                   .metric = metric,
                   .queries = qrows};
    if ((st = job_setup(&job, k, threads, true)) == KILN_OK)
        st = job_run(&job, k, labels, distances);
    job_free(&job);
    kiln_free_aligned(qrows);
    return st;
}
