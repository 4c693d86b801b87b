/* test_knn_exact.c -- the exact kNN oracle against a naive double-precision
 * brute force, across metrics, k, thread counts, block boundaries and the
 * dataset variant, and against siftsmall's own ground truth.
 *
 * What "equal" means: kiln computes distances in float, the reference in
 * double, so two candidates whose true distances differ by less than float
 * rounding may come out swapped. At each rank j the id kiln returns must have
 * a reference distance within rounding of the reference's j-th distance; the
 * rounding bound for a sum of dim terms is about (dim + 2) * FLT_EPSILON *
 * (sum of |terms|), doubled for two results and padded for COS's float
 * normalisation. Anything further off is a wrong neighbour. */
#include <errno.h>
#include <float.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../common/rng_internal.h"
#include "check.h"
#include "kiln.h"

#define SIFT_DIR "../shared/datasets/siftsmall"

/* ==== Helpers ==== */

static float *random_rows(uint64_t seed, size_t n, size_t dim) {
    float *v = malloc(n * dim * sizeof(float) + 1);
    REQUIRE(v);
    kiln_rng rng;
    kiln_rng_seed(&rng, seed);
    for (size_t i = 0; i < n * dim; i++)
        v[i] = (float)(2.0 * kiln_rng_uniform(&rng) - 1.0);
    return v;
}

static const char *tmp_dir(void) {
    const char *dir = getenv("KILN_TEST_TMP");
    if (!dir || !*dir)
        dir = "/tmp";
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        SKIP("cannot create scratch folder %s", dir);
    return dir;
}

/* A texmex file (fvecs or ivecs: 4-byte elements) read whole; NULL when
 * absent. Independent of kiln's own reader on purpose. */
static void *read_vecs(const char *path, size_t *n_out, size_t *d_out) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    REQUIRE(fseek(f, 0, SEEK_END) == 0);
    const long len = ftell(f);
    REQUIRE(len > 4 && fseek(f, 0, SEEK_SET) == 0);
    int32_t d;
    REQUIRE(fread(&d, 4, 1, f) == 1 && d > 0);
    const size_t rec = 4 + 4 * (size_t)d;
    REQUIRE((size_t)len % rec == 0);
    const size_t n = (size_t)len / rec;
    uint8_t *out = malloc(n * 4 * (size_t)d);
    REQUIRE(out);
    REQUIRE(fseek(f, 0, SEEK_SET) == 0);
    for (size_t i = 0; i < n; i++) {
        int32_t di;
        REQUIRE(fread(&di, 4, 1, f) == 1 && di == d);
        REQUIRE(fread(out + i * 4 * (size_t)d, 4, (size_t)d, f) == (size_t)d);
    }
    fclose(f);
    *n_out = n;
    *d_out = (size_t)d;
    return out;
}

/* ==== Reference ==== */

typedef struct ref_entry {
    double d;   /* reference distance */
    double mag; /* magnitude its rounding scales with */
    int64_t id;
} ref_entry;

static int ref_cmp(const void *pa, const void *pb) {
    const ref_entry *a = pa, *b = pb;
    if (a->d != b->d)
        return a->d < b->d ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static double norm_d(const float *v, size_t dim) {
    double s = 0.0;
    for (size_t i = 0; i < dim; i++)
        s += (double)v[i] * v[i];
    return sqrt(s);
}

static ref_entry ref_dist(const float *q, const float *b, size_t dim, kiln_metric metric) {
    ref_entry e = {0, 0, 0};
    if (metric == KILN_METRIC_L2) {
        for (size_t i = 0; i < dim; i++) {
            const double t = (double)q[i] - b[i];
            e.d += t * t;
        }
        e.mag = e.d;
        return e;
    }
    double sq = 1.0, sb = 1.0;
    if (metric == KILN_METRIC_COS) {
        const double nq = norm_d(q, dim), nb = norm_d(b, dim);
        sq = nq > 0 ? 1.0 / nq : 0.0;
        sb = nb > 0 ? 1.0 / nb : 0.0;
    }
    double dot = 0.0;
    e.mag = 1.0;
    for (size_t i = 0; i < dim; i++) {
        const double t = (double)q[i] * sq * (double)b[i] * sb;
        dot += t;
        e.mag += fabs(t);
    }
    e.d = 1.0 - dot;
    return e;
}

static double tol(size_t dim, double mag) { return 2.0 * (double)(dim + 8) * FLT_EPSILON * mag; }

/* Checks kiln's answer (labels/dists, nq rows of k) against the reference.
 * Returns the number of rank positions where the ids differ (ties). */
static size_t check_against_ref(const float *base, size_t n, const float *queries, size_t nq,
                                size_t dim, kiln_metric metric, uint32_t k, const int64_t *labels,
                                const float *dists) {
    ref_entry *sorted = malloc((n + 1) * sizeof *sorted);
    ref_entry *by_id = malloc((n + 1) * sizeof *by_id);
    unsigned char *seen = malloc(n + 1);
    REQUIRE(sorted && by_id && seen);
    size_t swaps = 0;
    for (size_t q = 0; q < nq; q++) {
        for (size_t i = 0; i < n; i++) {
            by_id[i] = ref_dist(queries + q * dim, base + i * dim, dim, metric);
            by_id[i].id = (int64_t)i;
        }
        memcpy(sorted, by_id, n * sizeof *sorted);
        qsort(sorted, n, sizeof *sorted, ref_cmp);
        memset(seen, 0, n);
        const int64_t *lab = labels + q * k;
        const float *dis = dists + q * k;
        for (size_t j = 0; j < k; j++) {
            if (j >= n) {
                CHECK_MSG(lab[j] == -1 && isinf(dis[j]) && dis[j] > 0,
                          "q %zu rank %zu: padding %lld %g", q, j, (long long)lab[j],
                          (double)dis[j]);
                continue;
            }
            const int64_t id = lab[j];
            if (id < 0 || (size_t)id >= n || seen[id]) {
                CHECK_MSG(0, "q %zu rank %zu: bad or repeated id %lld", q, j, (long long)id);
                continue;
            }
            seen[id] = 1;
            const ref_entry *got = &by_id[id], *want = &sorted[j];
            CHECK_MSG(fabs(got->d - want->d) <= tol(dim, got->mag) + tol(dim, want->mag),
                      "%s q %zu rank %zu: id %lld at %.9g, reference id %lld at %.9g",
                      kiln_metric_name(metric), q, j, (long long)id, got->d, (long long)want->id,
                      want->d);
            CHECK_MSG(fabs((double)dis[j] - got->d) <= tol(dim, got->mag),
                      "%s q %zu rank %zu: distance %.9g, reference %.9g", kiln_metric_name(metric),
                      q, j, (double)dis[j], got->d);
            swaps += id != want->id;
        }
    }
    free(sorted);
    free(by_id);
    free(seen);
    return swaps;
}

/* Runs kiln_knn_exact and checks it against the reference. */
static void run_and_check(kiln_ctx *ctx, const float *base, size_t n, const float *queries,
                          size_t nq, size_t dim, kiln_metric metric, uint32_t k, uint32_t threads) {
    int64_t *labels = malloc(nq * k * sizeof *labels);
    float *dists = malloc(nq * k * sizeof *dists);
    REQUIRE(labels && dists);
    CHECK_OK(ctx,
             kiln_knn_exact(ctx, base, n, queries, nq, dim, metric, k, threads, labels, dists));
    const size_t swaps = check_against_ref(base, n, queries, nq, dim, metric, k, labels, dists);
    if (swaps)
        fprintf(stderr, "note: %s n %zu k %u: %zu rank swaps among near-ties\n",
                kiln_metric_name(metric), n, k, swaps);
    free(labels);
    free(dists);
}

static const kiln_metric all_metrics[] = {KILN_METRIC_L2, KILN_METRIC_IP, KILN_METRIC_COS};

/* ==== Tests ==== */

static void test_vs_reference(kiln_ctx *ctx) {
    const size_t n = 700, nq = 45, dim = 37;
    float *base = random_rows(1, n, dim), *queries = random_rows(2, nq, dim);
    for (int m = 0; m < 3; m++) {
        run_and_check(ctx, base, n, queries, nq, dim, all_metrics[m], 1, 2);
        run_and_check(ctx, base, n, queries, nq, dim, all_metrics[m], 10, 2);
        run_and_check(ctx, base, n, queries, nq, dim, all_metrics[m], 10, 1);
    }
    /* k > n: every base row, then padding. */
    for (int m = 0; m < 3; m++)
        run_and_check(ctx, base, 7, queries, 5, dim, all_metrics[m], 10, 2);
    /* dim 1 and a dim that is a whole number of AVX-512 steps. */
    run_and_check(ctx, base, 300, queries, 20, 1, KILN_METRIC_L2, 5, 2);
    free(base);
    free(queries);
    base = random_rows(11, 200, 128);
    queries = random_rows(12, 20, 128);
    run_and_check(ctx, base, 200, queries, 20, 128, KILN_METRIC_IP, 5, 2);
    free(base);
    free(queries);
}

/* Several 16K-row blocks, and lanes (few queries, many base rows). */
static void test_blocks_and_lanes(kiln_ctx *ctx) {
    const size_t n = 40000, dim = 8, nq = 40;
    float *base = random_rows(3, n, dim), *queries = random_rows(4, nq, dim);
    run_and_check(ctx, base, n, queries, nq, dim, KILN_METRIC_L2, 10, 2);
    run_and_check(ctx, base, n, queries, nq, dim, KILN_METRIC_COS, 10, 2);
    run_and_check(ctx, base, n, queries, 1, dim, KILN_METRIC_IP, 3, 4);
    free(base);
    free(queries);
}

/* The answer is a function of the input: any thread count, same bytes. */
static void test_threads_identical(kiln_ctx *ctx) {
    const size_t n = 5000, dim = 37;
    const uint32_t k = 10;
    float *base = random_rows(5, n, dim), *queries = random_rows(6, 100, dim);
    static const size_t nqs[] = {1, 3, 100};
    static const uint32_t threads[] = {2, 3, 0, 16};
    int64_t *l1 = malloc(100 * k * sizeof *l1), *l2 = malloc(100 * k * sizeof *l2);
    float *d1 = malloc(100 * k * sizeof *d1), *d2 = malloc(100 * k * sizeof *d2);
    REQUIRE(l1 && l2 && d1 && d2);
    for (int m = 0; m < 3; m++) {
        for (size_t a = 0; a < sizeof nqs / sizeof nqs[0]; a++) {
            const size_t nq = nqs[a];
            CHECK_OK(ctx,
                     kiln_knn_exact(ctx, base, n, queries, nq, dim, all_metrics[m], k, 1, l1, d1));
            for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
                CHECK_OK(ctx, kiln_knn_exact(ctx, base, n, queries, nq, dim, all_metrics[m], k,
                                             threads[t], l2, d2));
                CHECK_MSG(memcmp(l1, l2, nq * k * sizeof *l1) == 0 &&
                              memcmp(d1, d2, nq * k * sizeof *d1) == 0,
                          "%s nq %zu: threads 1 and %u differ", kiln_metric_name(all_metrics[m]),
                          nq, threads[t]);
            }
        }
    }
    /* distances may be NULL. */
    CHECK_OK(ctx, kiln_knn_exact(ctx, base, n, queries, 3, dim, KILN_METRIC_L2, k, 1, l1, d1));
    CHECK_OK(ctx, kiln_knn_exact(ctx, base, n, queries, 3, dim, KILN_METRIC_L2, k, 2, l2, NULL));
    CHECK(memcmp(l1, l2, 3 * k * sizeof *l1) == 0);
    free(base);
    free(queries);
    free(l1);
    free(l2);
    free(d1);
    free(d2);
}

/* Ties go to the smaller id; a NaN distance ranks last, as +inf. */
static void test_ties_and_nan(kiln_ctx *ctx) {
    const size_t dim = 3;
    float base[6 * 3] = {1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0};
    base[3 * 3 + 1] = NAN;
    const float query[3] = {0, 0, 0};
    int64_t lab[8];
    float dis[8];
    CHECK_OK(ctx, kiln_knn_exact(ctx, base, 6, query, 1, dim, KILN_METRIC_L2, 8, 1, lab, dis));
    static const int64_t want[8] = {5, 0, 1, 2, 4, 3, -1, -1};
    CHECK(memcmp(lab, want, sizeof want) == 0);
    CHECK(dis[0] == 0.0f && dis[1] == 1.0f && dis[4] == 1.0f);
    CHECK(isinf(dis[5]) && isinf(dis[6]) && isinf(dis[7]));
    /* k = 2 with the heap full: later equal distances must not displace. */
    CHECK_OK(ctx, kiln_knn_exact(ctx, base, 6, query, 1, dim, KILN_METRIC_L2, 2, 1, lab, dis));
    CHECK(lab[0] == 5 && lab[1] == 0);
}

static void test_args(kiln_ctx *ctx) {
    float v[4] = {0, 1, 2, 3};
    int64_t lab[4];
    float dis[4];
    CHECK_FAILS(ctx, kiln_knn_exact(ctx, v, 2, v, 2, 2, KILN_METRIC_L2, 0, 1, lab, dis), KILN_E_ARG,
                "k is 0");
    CHECK_FAILS(ctx, kiln_knn_exact(ctx, v, 2, v, 2, 0, KILN_METRIC_L2, 1, 1, lab, dis), KILN_E_ARG,
                "dim is 0");
    CHECK_FAILS(ctx, kiln_knn_exact(ctx, v, 2, v, 2, 2, (kiln_metric)0, 1, 1, lab, dis), KILN_E_ARG,
                "metric 0");
    CHECK_FAILS(ctx, kiln_knn_exact(ctx, v, 2, v, 2, 2, (kiln_metric)9, 1, 1, lab, dis), KILN_E_ARG,
                "metric 9");
    CHECK_FAILS(ctx, kiln_knn_exact(ctx, NULL, 2, v, 2, 2, KILN_METRIC_L2, 1, 1, lab, dis),
                KILN_E_ARG, "base is NULL");
    CHECK_FAILS(ctx, kiln_knn_exact(ctx, v, 2, NULL, 2, 2, KILN_METRIC_L2, 1, 1, lab, dis),
                KILN_E_ARG, "queries is NULL");
    CHECK_FAILS(ctx, kiln_knn_exact(ctx, v, 2, v, 2, 2, KILN_METRIC_L2, 1, 1, NULL, dis),
                KILN_E_ARG, "labels is NULL");
    CHECK_FAILS(ctx, kiln_knn_exact(ctx, v, SIZE_MAX / 2, v, 2, 4, KILN_METRIC_L2, 1, 1, lab, dis),
                KILN_E_RANGE, "overflows");
    /* Nothing to do is not an error; an empty base pads everything. */
    CHECK_OK(ctx, kiln_knn_exact(ctx, v, 2, NULL, 0, 2, KILN_METRIC_L2, 1, 1, NULL, NULL));
    CHECK_OK(ctx, kiln_knn_exact(ctx, NULL, 0, v, 2, 2, KILN_METRIC_L2, 2, 1, lab, dis));
    CHECK(lab[0] == -1 && lab[3] == -1 && isinf(dis[0]) && isinf(dis[3]));
    CHECK_FAILS(ctx, kiln_knn_exact_dataset(ctx, NULL, NULL, KILN_METRIC_L2, 1, 1, lab, dis),
                KILN_E_ARG, "dataset is NULL");
}

/* ==== Dataset variant ==== */

static kiln_dataset *write_and_open(kiln_ctx *ctx, const char *name, const float *rows, size_t n,
                                    size_t dim) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", tmp_dir(), name);
    CHECK_OK(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_FVECS, KILN_DTYPE_F32, rows, n, dim));
    kiln_dataset *ds = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_FVECS, 0, &ds));
    REQUIRE(ds);
    return ds;
}

static void test_dataset(kiln_ctx *ctx) {
    /* Datasets on their own context: errors must still reach the caller's. */
    kiln_ctx *dctx = NULL;
    REQUIRE(kiln_ctx_new(&dctx) == KILN_OK);
    /* 20000 rows are two blocks for the dataset variant; 1100 queries make
     * the array variant's in-place blocks short too, 33 make it use lanes. */
    const size_t n = 20000, dim = 9, nq_big = 1100, nq = 33;
    const uint32_t k = 10;
    float *base = random_rows(7, n, dim), *queries = random_rows(8, nq_big, dim);
    kiln_dataset *bds = write_and_open(dctx, "knn_base.fvecs", base, n, dim);
    kiln_dataset *qds = write_and_open(dctx, "knn_query.fvecs", queries, nq, dim);
    kiln_dataset *qbig = write_and_open(dctx, "knn_query_big.fvecs", queries, nq_big, dim);
    int64_t *l1 = malloc(nq_big * k * sizeof *l1), *l2 = malloc(nq_big * k * sizeof *l2);
    float *d1 = malloc(nq_big * k * sizeof *d1), *d2 = malloc(nq_big * k * sizeof *d2);
    REQUIRE(l1 && l2 && d1 && d2);
    for (int m = 0; m < 3; m++) {
        for (int big = 0; big < 2; big++) {
            const size_t nqs = big ? nq_big : nq;
            CHECK_OK(ctx,
                     kiln_knn_exact(ctx, base, n, queries, nqs, dim, all_metrics[m], k, 2, l1, d1));
            CHECK_OK(ctx, kiln_knn_exact_dataset(ctx, bds, big ? qbig : qds, all_metrics[m], k, 2,
                                                 l2, d2));
            CHECK_MSG(memcmp(l1, l2, nqs * k * sizeof *l1) == 0 &&
                          memcmp(d1, d2, nqs * k * sizeof *d1) == 0,
                      "%s nq %zu: dataset and array variants differ",
                      kiln_metric_name(all_metrics[m]), nqs);
        }
    }

    float *q64 = random_rows(9, 2, 64);
    kiln_dataset *q64ds = write_and_open(dctx, "knn_q64.fvecs", q64, 2, 64);
    CHECK_FAILS(ctx, kiln_knn_exact_dataset(ctx, bds, q64ds, KILN_METRIC_L2, k, 1, l2, d2),
                KILN_E_ARG, "queries have dim 64 but base has dim 9");
    CHECK_FAILS(ctx, kiln_knn_exact_dataset(ctx, bds, qds, KILN_METRIC_L2, 0, 1, l2, d2),
                KILN_E_ARG, "k is 0");

    /* A NaN in the second block of the base: the read error surfaces. */
    base[(size_t)17000 * dim + 4] = NAN;
    char path[1024];
    snprintf(path, sizeof path, "%s/knn_base_nan.fvecs", tmp_dir());
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    for (size_t i = 0; i < n; i++) {
        const int32_t d = (int32_t)dim;
        REQUIRE(fwrite(&d, 4, 1, f) == 1 && fwrite(base + i * dim, 4, dim, f) == dim);
    }
    REQUIRE(fclose(f) == 0);
    kiln_dataset *nands = NULL;
    CHECK_OK(dctx, kiln_dataset_open(dctx, path, KILN_FORMAT_FVECS, 0, &nands));
    if (nands) {
        CHECK_FAILS(ctx, kiln_knn_exact_dataset(ctx, nands, qds, KILN_METRIC_L2, k, 2, l2, d2),
                    KILN_E_FORMAT, "17000");
    }

    kiln_dataset_free(nands);
    kiln_dataset_free(q64ds);
    kiln_dataset_free(bds);
    kiln_dataset_free(qds);
    kiln_dataset_free(qbig);
    kiln_ctx_free(dctx);
    free(q64);
    free(base);
    free(queries);
    free(l1);
    free(l2);
    free(d1);
    free(d2);
}

/* ==== siftsmall: the corpus's own ground truth ==== */

static double l2_exact(const float *a, const float *b, size_t dim) {
    double s = 0.0;
    for (size_t i = 0; i < dim; i++) {
        const double t = (double)a[i] - b[i];
        s += t * t;
    }
    return s;
}

static void test_siftsmall(kiln_ctx *ctx) {
    size_t n, dim, nq, qdim, ngt, gk;
    float *base = read_vecs(SIFT_DIR "/siftsmall_base.fvecs", &n, &dim);
    float *queries = read_vecs(SIFT_DIR "/siftsmall_query.fvecs", &nq, &qdim);
    int32_t *gt = read_vecs(SIFT_DIR "/siftsmall_groundtruth.ivecs", &ngt, &gk);
    if (!base || !queries || !gt) {
        SKIP_PART("%s absent, siftsmall check skipped", SIFT_DIR);
        free(base);
        free(queries);
        free(gt);
        return;
    }
    REQUIRE(qdim == dim && ngt == nq && gk >= 10);
    const uint32_t k = 100;
    int64_t *lab = malloc(nq * k * sizeof *lab), *lab2 = malloc(nq * k * sizeof *lab2);
    float *dis = malloc(nq * k * sizeof *dis), *dis2 = malloc(nq * k * sizeof *dis2);
    REQUIRE(lab && dis && lab2 && dis2);
    CHECK_OK(ctx, kiln_knn_exact(ctx, base, n, queries, nq, dim, KILN_METRIC_L2, k, 0, lab, dis));
    size_t swaps = 0;
    for (size_t q = 0; q < nq; q++) {
        const float *qv = queries + q * dim;
        for (size_t j = 0; j < k; j++) {
            const int64_t id = lab[q * k + j];
            REQUIRE(id >= 0 && (size_t)id < n);
            /* SIFT is integer-valued: every float partial sum is exact. */
            CHECK(dis[q * k + j] == (float)l2_exact(qv, base + (size_t)id * dim, dim));
            if (j >= 10)
                continue;
            const int64_t want = gt[q * gk + j];
            if (id == want)
                continue;
            swaps++;
            const double dg = l2_exact(qv, base + (size_t)id * dim, dim);
            const double dw = l2_exact(qv, base + (size_t)want * dim, dim);
            CHECK_MSG(dg == dw,
                      "siftsmall q %zu rank %zu: id %lld at %.0f, ground truth %lld at %.0f", q, j,
                      (long long)id, dg, (long long)want, dw);
        }
    }
    fprintf(stderr,
            "note: siftsmall top-10: %zu positions differ from the ground truth by exact ties\n",
            swaps);

    /* Through the dataset reader, the same bytes. */
    kiln_dataset *bds = NULL, *qds = NULL;
    CHECK_OK(ctx,
             kiln_dataset_open(ctx, SIFT_DIR "/siftsmall_base.fvecs", KILN_FORMAT_AUTO, 0, &bds));
    CHECK_OK(ctx,
             kiln_dataset_open(ctx, SIFT_DIR "/siftsmall_query.fvecs", KILN_FORMAT_AUTO, 0, &qds));
    if (bds && qds) {
        CHECK_OK(ctx, kiln_knn_exact_dataset(ctx, bds, qds, KILN_METRIC_L2, k, 2, lab2, dis2));
        CHECK(memcmp(lab, lab2, nq * k * sizeof *lab) == 0);
        CHECK(memcmp(dis, dis2, nq * k * sizeof *dis) == 0);
    }
    kiln_dataset_free(bds);
    kiln_dataset_free(qds);
    free(lab);
    free(dis);
    free(lab2);
    free(dis2);
    free(base);
    free(queries);
    free(gt);
}

int main(void) {
    kiln_ctx *ctx = NULL;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    CHECK_OK(ctx, kiln_ctx_set_progress(ctx, KILN_PROGRESS_OFF));
    test_args(ctx);
    test_ties_and_nan(ctx);
    test_vs_reference(ctx);
    test_blocks_and_lanes(ctx);
    test_threads_identical(ctx);
    test_dataset(ctx);
    test_siftsmall(ctx);
    kiln_ctx_free(ctx);
    return check_report("test_knn_exact");
}
