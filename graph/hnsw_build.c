/* build.c -- build orchestration: parameter checks, loading vectors into the
 * index, and the method chosen (insertion on the CPU, or the device
 * pipeline), then the reachability repair every graph gets.
 *
 * Design decisions:
 *  1. Rows are read from a dataset straight into the index's vector storage,
 *     so a build holds the vectors once, not a dataset copy and an index copy.
 *  2. Cosine vectors are normalised on the way in (Redis vector sets do the
 *     same), so from here on COS is IP on unit vectors.
 *  3. Stage times go to ctx for the one-line breakdown the CLI prints.
 *  4. A device build from a dataset with a work dir whose budget cannot
 *     hold the vectors and level 0 on the heap (fits_in_budget) keeps them
 *     in shared mappings of unnamed files there
 *     (kiln_index_spill_storage): the kernel can write their pages back and
 *     drop them, so a build bounded by --memory-limit holds only the
 *     smaller arrays (labels, levels, upper levels) and its batches in
 *     anonymous memory, and the input can be larger than the budget.
 *     Reads from the page cache cost about what reads from the heap do
 *     while the files fit in memory; beyond that the random reads of the
 *     hierarchy and the prune go to disk (docs/SCALE.md). Measured at 1M x
 *     128 (2 threads, one run each): heap 54.1 s build, mapped 59.2 s, no
 *     difference beyond the run-to-run spread; peak RssAnon 816 MiB heap,
 *     219 MiB mapped. The heap is kept where it fits, so a build with room
 *     to spare does not write its vectors to the work dir's disk.
 *  5. Rows that need no conversion (float32 back to back: fbin, npy <f4)
 *     and no normalising (L2, IP) are not copied at all: the index adopts a
 *     private read-only mapping of the input (kiln_dataset_map_f32) as its
 *     vectors, which then are page cache, like the spilled vectors of
 *     decision 4 but without writing them anywhere. Copying them cost the
 *     build a fresh page per 4 KiB of input, which the kernel must find and
 *     zero: at 1M x 128 on the development VM (whose balloon hands freed
 *     pages back to the host, so fresh pages are dear) the load took 1.0 to
 *     9.0 s and a third of the build's first 12 s of samples were the
 *     zeroing; mapped, it is the finiteness scan. The input must not change
 *     while the build (or a search of the built index in this process)
 *     runs, as for every mmap reader (common/dataset.c decision 7).
 *  6. In a build across ranks (host/device_build.c decision 11) every rank
 *     adopts the whole input, since its batches gather rows from anywhere,
 *     but checks only its share for non-finite values (kiln_rank_share),
 *     and the work dir's fingerprint covers the same share: at 1B x 128
 *     each of 8 ranks reads 64 GB for them instead of 512 GB. The ranks
 *     agree before the build (collective_gate), so a bad value in any
 *     share stops them all with the message naming its record.
 *  7. Compact storage (kiln_build_params.storage, graph/storage.c) is the
 *     last stage: the graph is built and repaired on f32 rows, then they
 *     are encoded (and dropped unless rerank keeps them), so every method
 *     builds the same graph whatever the storage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "build_internal.h"
#include "../common/ctx_internal.h"
#include "../common/dataset_internal.h"
#include "../common/dist_internal.h"
#include "../common/progress_internal.h"
#include "../common/sort_internal.h"

#define KILN_LOAD_CHUNK 65536 /* rows per read: big enough to stream, small for progress */

/* Level sampling base of device builds: levels ~ floor(-ln(U) / ln(base)),
 * so level 1 holds 1/base of the nodes. Insertion uses base M (hnswlib's
 * mL = 1/ln(M)). The device pipeline embeds level 1 into level 0 as its
 * long-range links (graph/merge.c decision 4), and a denser level 1 gives
 * them a finer scale: measured on synth1m (1M x 128), base 16 -> 4 raised
 * recall@10 at ef=10/32/64 from 0.80/0.88/0.92 to 0.86/0.93/0.96 (hnswlib:
 * 0.82/0.93/0.96) and QPS with it; base 8 gave 0.80/0.89/0.95. */
#define KILN_DEVICE_LEVEL_BASE 4

/* One line on stderr with seconds per stage, when progress is shown. */
static void report_print(const kiln_ctx *ctx, const kiln_build_report *rep) {
    if (!kiln_progress_enabled(ctx))
        return;
    fprintf(stderr, "[kiln] stages:");
    for (uint32_t i = 0; i < rep->n_stages; i++)
        fprintf(stderr, " %s %.2fs", rep->stages[i].name, rep->stages[i].seconds);
    fprintf(stderr, " | total %.2fs\n", rep->total_seconds);
}

void kiln_build_params_init(kiln_build_params *p) {
    memset(p, 0, sizeof *p);
    p->metric = KILN_METRIC_L2;
    p->M = 16;
    p->ef_construction = 200;
    p->method = kiln_build_device_available() ? KILN_METHOD_DEVICE : KILN_METHOD_INSERT;
    p->threads = 0;
    p->seed = 1;
    p->replicas = 0; /* the device build chooses (host/device_build.c) */
    p->storage = KILN_STORAGE_F32;
}

#define I64_LESS(a, b) ((a) < (b))
KILN_DEFINE_SORT(i64_sort, int64_t, I64_LESS)

/* The caller's labels: none -1 (search's padding), no two alike (the live
 * index's label map, graph/hnsw_live.c, needs them unique). */
kiln_status kiln_build_labels_check(kiln_ctx *ctx, const int64_t *labels, size_t n) {
    int64_t *sorted = NULL;
    kiln_status st = kiln_alloc(ctx, (n + 1) * sizeof *sorted, "label check", (void **)&sorted);
    if (st)
        return st;
    for (size_t i = 0; i < n; i++) {
        if (labels[i] == -1) {
            free(sorted);
            return kiln_fail(ctx, KILN_E_ARG,
                             "build: the label of row %zu is -1, which search uses for no result",
                             i);
        }
        sorted[i] = labels[i];
    }
    i64_sort(sorted, (ptrdiff_t)n);
    for (size_t i = 1; i < n && st == KILN_OK; i++)
        if (sorted[i] == sorted[i - 1]) {
            size_t a = n, b = n; /* name the first two rows that hold it */
            for (size_t j = 0; j < n && b == n; j++)
                if (labels[j] == sorted[i])
                    a == n ? (void)(a = j) : (void)(b = j);
            st = kiln_fail(ctx, KILN_E_ARG, "build: rows %zu and %zu have the same label %lld", a,
                           b, (long long)sorted[i]);
        }
    free(sorted);
    return st;
}

static kiln_status check_params(kiln_ctx *ctx, const kiln_build_params *p, size_t n, size_t dim) {
    if (!p)
        return kiln_fail(ctx, KILN_E_ARG, "build: NULL params");
    if (p->metric != KILN_METRIC_L2 && p->metric != KILN_METRIC_IP && p->metric != KILN_METRIC_COS)
        return kiln_fail(ctx, KILN_E_ARG, "build: metric %d is not l2, ip or cos", (int)p->metric);
    if (p->M < 2 || p->M > KILN_MAX_M)
        return kiln_fail(ctx, KILN_E_ARG, "build: M = %u is out of range [2, %u]", p->M,
                         KILN_MAX_M);
    if (p->ef_construction < 1)
        return kiln_fail(ctx, KILN_E_ARG, "build: ef_construction must be at least 1");
    if (p->method == KILN_METHOD_DEVICE && (p->replicas == 1 || p->replicas > 16))
        return kiln_fail(ctx, KILN_E_ARG, "build: replicas = %u is not 0 (automatic) or in [2, 16]",
                         p->replicas);
    if (p->method != KILN_METHOD_INSERT && p->method != KILN_METHOD_DEVICE)
        return kiln_fail(ctx, KILN_E_ARG, "build: method %d is not insert or device",
                         (int)p->method);
    if (p->collective && p->method != KILN_METHOD_DEVICE && kiln_dist_size() > 1)
        return kiln_fail(ctx, KILN_E_ARG,
                         "build: across ranks kiln builds with the device method only (rank %d "
                         "of %d)",
                         kiln_dist_rank(), kiln_dist_size());
    if (p->storage != KILN_STORAGE_F32 && p->storage != KILN_STORAGE_F16 &&
        p->storage != KILN_STORAGE_INT8)
        return kiln_fail(ctx, KILN_E_ARG, "build: storage %d is not f32, f16 or int8",
                         (int)p->storage);
    if (p->rerank && p->storage == KILN_STORAGE_F32)
        return kiln_fail(ctx, KILN_E_ARG,
                         "build: rerank keeps f32 vectors beside compact ones: it needs storage "
                         "f16 or int8");
    if (dim < 1 || dim > KILN_MAX_DIM)
        return kiln_fail(ctx, KILN_E_ARG, "build: dim = %zu is out of range [1, %d]", dim,
                         KILN_MAX_DIM);
    if (n >= KILN_NO_NODE)
        return kiln_fail(ctx, KILN_E_RANGE, "build: %zu vectors exceed the limit of %u", n,
                         KILN_NO_NODE - 1);
    return p->labels ? kiln_build_labels_check(ctx, p->labels, n) : KILN_OK;
}

/* Whether a device build of ix can keep its vectors and level 0 on the heap
 * within the budget (decision 4): the index whole, the clusters (replicas
 * ids a vector), a k-means sample of up to a quarter of the rows (64 rows
 * per centroid of clusters of 768 with 3 replicas, the most the automatic
 * choice takes: a sixth with 2) and its working quarter, and
 * a batch and a partition of 128 MiB each. An estimate: the device build
 * checks the budget itself, with what is resident. */
static bool fits_in_budget(const struct kiln_index *ix, const kiln_build_params *p) {
    const uint64_t limit = kiln_build_budget(p);
    const uint64_t n = ix->count,
                   replicas = p->replicas ? p->replicas : 3; /* the most auto picks */
    const uint64_t sample = replicas < 12 ? n * replicas / 12 : n;
    const uint64_t need = kiln_index_memory(ix) + n * replicas * sizeof(uint32_t) +
                          sample * ix->dim * sizeof(float) / 4 * 5 + ((uint64_t)256 << 20) +
                          kiln_rss_anon();
    return need <= limit;
}

/* Allocates the index with sampled levels. */
static kiln_status index_new(kiln_ctx *ctx, size_t n, size_t dim, const kiln_build_params *p,
                             struct kiln_index **out) {
    uint8_t *levels = NULL;
    kiln_status st = kiln_alloc(ctx, n ? n : 1, "levels", (void **)&levels);
    if (st)
        return st;
    kiln_sample_levels(levels, n, p->method == KILN_METHOD_DEVICE ? KILN_DEVICE_LEVEL_BASE : p->M,
                       p->seed);
    st = kiln_index_alloc(ctx, n, (uint32_t)dim, p->metric, p->M, levels, out);
    free(levels);
    if (st == KILN_OK && (st = kiln_calloc(ctx, sizeof(kiln_build_report), "build report",
                                           (void **)&(*out)->report))) {
        kiln_index_free(*out);
        *out = NULL;
    }
    if (st == KILN_OK) {
        (*out)->seed = p->seed;
        (*out)->ef_construction = p->ef_construction;
        for (size_t i = 0; i < n; i++)
            (*out)->labels[i] = p->labels ? p->labels[i] : (int64_t)i;
    }
    return st;
}

void kiln_rank_share(const kiln_build_params *p, uint64_t n, size_t *first, size_t *count) {
    const bool ranks = p->collective && p->method == KILN_METHOD_DEVICE && kiln_dist_size() > 1;
    const uint64_t r = ranks ? (uint64_t)kiln_dist_rank() : 0, R = ranks ? kiln_dist_size() : 1;
    *first = (size_t)(n * r / R);
    *count = (size_t)(n * (r + 1) / R - n * r / R);
}

/* Whether this rank's part of a collective build is done once the device
 * build returns: the index is assembled, repaired and returned on rank 0
 * (host/device_build.c decision 11). */
static bool built_elsewhere(const kiln_build_params *p) {
    return p->collective && p->method == KILN_METHOD_DEVICE && kiln_dist_size() > 1 &&
           kiln_dist_rank() != 0;
}

/* The ranks of a collective build meet here once before the device build,
 * whichever way each got here, so that one rank's failure to load stops
 * them all with its message (host/device_build.c decision 11). */
static kiln_status collective_gate(kiln_ctx *ctx, const kiln_build_params *p, kiln_status st) {
    return p && p->collective && p->method == KILN_METHOD_DEVICE && kiln_dist_size() > 1
               ? kiln_dist_agree(ctx, st)
               : st;
}

/* Runs the chosen method on an index whose vectors are in place; the report
 * goes to ix->report (already holding the load stage, if any). */
static kiln_status build_graph(struct kiln_index *ix, const kiln_build_params *p, double t_start) {
    kiln_ctx *ctx = ix->ctx;
    kiln_build_report *rep = ix->report;
    rep->method = p->method;
    rep->ranks = 1; /* a collective build's report_ranks says how many */
    if (ix->metric == KILN_METRIC_COS)
        for (uint64_t i = 0; i < ix->count; i++)
            kiln_normalize(ix->vectors + i * ix->dim, ix->dim);
    kiln_status st = kiln_threads_check(ctx, kiln_threads(p->threads));
    if (st == KILN_OK) /* before the build, not after it (graph/storage.c decision 4) */
        st = kiln_storage_fits(ix, p->storage);
    st = collective_gate(ctx, p, st);
    if (st)
        return st;
    double t = kiln_now();
    if (p->method == KILN_METHOD_DEVICE) {
        st = kiln_build_device(ix, p, rep, NULL);
    } else {
        /* Insertion holds the whole index: a budget below that is refused
         * before any work. */
        const uint64_t need = kiln_index_memory(ix);
        if (p->memory_limit && need > p->memory_limit)
            return kiln_fail(ctx, KILN_E_RANGE,
                             "build: --method insert holds the whole index in memory, %.1f MiB, "
                             "above the memory limit of %.1f MiB (--method device builds in "
                             "bounded memory)",
                             need / 1048576.0, p->memory_limit / 1048576.0);
        rep->memory_limit = p->memory_limit;
        st = kiln_hnsw_insert_all(ix, p->ef_construction, kiln_threads(p->threads));
        kiln_report_stage(rep, "insert", kiln_now() - t);
    }
    if (st)
        return st;
    /* Across ranks the repair is rank 0's, and every rank learns how it went. */
    t = kiln_now();
    kiln_repair_stats rs = {0};
    if (!built_elsewhere(p))
        st = kiln_repair_reachability(ix, p->ef_construction, kiln_threads(p->threads), &rs);
    st = collective_gate(ctx, p, st);
    if (st || built_elsewhere(p))
        return st;
    rep->repaired_links = rs.links;
    kiln_report_stage(rep, "repair", kiln_now() - t);
    if (p->storage != KILN_STORAGE_F32) { /* graph/storage.c decision 1 */
        t = kiln_now();
        if ((st = kiln_index_compress(ix, p->storage, p->rerank != 0)))
            return st;
        kiln_report_stage(rep, "compress", kiln_now() - t);
    }
    rep->total_seconds = kiln_now() - t_start;
    report_print(ctx, rep);
    return st;
}

kiln_status kiln_index_build(kiln_ctx *ctx, const float *vectors, size_t n, size_t dim,
                             const kiln_build_params *p, kiln_index **out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "build: NULL output");
    *out = NULL;
    if (!vectors && n)
        return kiln_fail(ctx, KILN_E_ARG, "build: NULL vectors");
    double t0 = kiln_now();
    kiln_status st = check_params(ctx, p, n, dim);
    struct kiln_index *ix = NULL;
    if (st || (st = index_new(ctx, n, dim, p, &ix)))
        return collective_gate(ctx, p, st);
    memcpy(ix->vectors, vectors, n * dim * sizeof(float));
    if ((st = build_graph(ix, p, t0)) || built_elsewhere(p)) {
        kiln_index_free(ix);
        return st;
    }
    *out = ix;
    return KILN_OK;
}

kiln_status kiln_index_build_dataset(kiln_ctx *ctx, const kiln_dataset *ds,
                                     const kiln_build_params *p, kiln_index **out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "build: NULL output");
    *out = NULL;
    if (!ds)
        return kiln_fail(ctx, KILN_E_ARG, "build: NULL dataset");
    const size_t n = kiln_dataset_count(ds), dim = kiln_dataset_dim(ds);
    double t0 = kiln_now();
    kiln_status st = check_params(ctx, p, n, dim);
    struct kiln_index *ix = NULL;
    if (st || (st = index_new(ctx, n, dim, p, &ix)))
        return collective_gate(ctx, p, st);
    /* Decision 5: the input itself, where it needs no conversion; a rank
     * of a collective build checks its share of the rows (decision 6). */
    const double t_load = kiln_now();
    kiln_f32_map in_place = {0};
    size_t share_first, share_count;
    kiln_rank_share(p, n, &share_first, &share_count);
    if (p->metric != KILN_METRIC_COS && n &&
        (st = kiln_dataset_map_f32(ds, share_first, share_count, &in_place))) {
        if (ds->ctx != ctx)
            kiln_fail(ctx, st, "%s", kiln_errmsg(ds->ctx));
        kiln_index_free(ix);
        return collective_gate(ctx, p, st);
    }
    if (in_place.base)
        kiln_index_adopt_vectors(ix, in_place.base, in_place.len, in_place.rows);
    /* Decision 4: with a work dir and a budget they do not fit, the vectors
     * (unless adopted) and level 0 live in files. */
    if (p->method == KILN_METHOD_DEVICE && p->work_dir && !fits_in_budget(ix, p) &&
        ((mkdir(p->work_dir, 0700) != 0 && errno != EEXIST &&
          (st = kiln_fail(ctx, KILN_E_IO, "work dir %s: cannot create: %s", p->work_dir,
                          strerror(errno)))) ||
         (st = kiln_index_spill_storage(ix, p->work_dir)))) {
        kiln_index_free(ix);
        return collective_gate(ctx, p, st);
    }
    kiln_progress_bar bar;
    kiln_progress_begin(&bar, ctx, "load", n);
    for (size_t first = 0; !in_place.base && first < n && st == KILN_OK; first += KILN_LOAD_CHUNK) {
        size_t rows = n - first < KILN_LOAD_CHUNK ? n - first : KILN_LOAD_CHUNK;
        st = kiln_dataset_read_f32(ds, first, rows, ix->vectors + first * dim);
        if (st != KILN_OK && ds->ctx != ctx)
            kiln_fail(ctx, st, "%s", kiln_errmsg(ds->ctx));
        kiln_progress_add(&bar, rows);
    }
    if (in_place.base)
        kiln_progress_add(&bar, n);
    kiln_progress_end(&bar);
    kiln_report_stage(ix->report, "load", kiln_now() - t_load);
    st = st ? collective_gate(ctx, p, st) : build_graph(ix, p, t0);
    if (st || built_elsewhere(p)) {
        kiln_index_free(ix);
        return st;
    }
    *out = ix;
    return KILN_OK;
}
