/* test_hnsw.c -- the CPU HNSW build (--method insert), search and validator.
 * Recall is always measured against exact ground truth: the corpus's own
 * for siftsmall, kiln_knn_exact (itself tested against a scalar reference)
 * for synthetic sets. */
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "../graph/build_internal.h"
#include "../graph/search_internal.h"
#include "check.h"
#include "recall.h"
#include "kiln.h"

#define SIFT_DIR "../shared/datasets/siftsmall"

/* ==== Helpers ==== */

/* The defaults with the CPU insertion build this file tests. */
static void insert_params(kiln_build_params *p) {
    kiln_build_params_init(p);
    p->method = KILN_METHOD_INSERT;
}

/* ==== siftsmall: the acceptance figure ==== */

static void test_siftsmall(kiln_ctx *ctx) {
    kiln_dataset *base = NULL, *qs = NULL, *gtds = NULL;
    if (kiln_dataset_open(ctx, SIFT_DIR "/siftsmall_base.fvecs", KILN_FORMAT_AUTO, 0, &base)) {
        SKIP_PART("siftsmall: %s (../shared/datasets absent)", kiln_errmsg(ctx));
        return;
    }
    CHECK_OK(ctx,
             kiln_dataset_open(ctx, SIFT_DIR "/siftsmall_query.fvecs", KILN_FORMAT_AUTO, 0, &qs));
    CHECK_OK(ctx, kiln_dataset_open(ctx, SIFT_DIR "/siftsmall_groundtruth.ivecs", KILN_FORMAT_AUTO,
                                    0, &gtds));
    REQUIRE(qs && gtds);
    size_t nq = kiln_dataset_count(qs), d = kiln_dataset_dim(qs), gk = kiln_dataset_dim(gtds);
    float *q = malloc(nq * d * sizeof *q);
    int32_t *gt32 = malloc(nq * gk * sizeof *gt32);
    int64_t *gt = malloc(nq * gk * sizeof *gt);
    REQUIRE(q && gt32 && gt);
    CHECK_OK(ctx, kiln_dataset_read_f32(qs, 0, nq, q));
    CHECK_OK(ctx, kiln_dataset_read_i32(gtds, 0, nq, gt32));
    for (size_t i = 0; i < nq * gk; i++)
        gt[i] = gt32[i];

    for (uint32_t threads = 1; threads <= 2; threads++) {
        kiln_build_params p;
        insert_params(&p);
        p.threads = threads;
        kiln_index *ix = NULL;
        CHECK_OK(ctx, kiln_index_build_dataset(ctx, base, &p, &ix));
        REQUIRE(ix);
        CHECK_OK(ctx, kiln_index_check(ix));
        double r32 = search_recall(ctx, ix, q, nq, gt, (uint32_t)gk, 10, 32);
        CHECK_MSG(r32 >= 0.95, "threads=%u: recall@10 at ef=32 is %.4f, want >= 0.95", threads,
                  r32);
        double r10 = search_recall(ctx, ix, q, nq, gt, (uint32_t)gk, 10, 10);
        double r128 = search_recall(ctx, ix, q, nq, gt, (uint32_t)gk, 10, 128);
        CHECK_MSG(r128 >= r10, "recall should not fall as ef grows: %.4f at 10, %.4f at 128", r10,
                  r128);
        fprintf(stderr, "siftsmall threads=%u: recall@10 ef10 %.4f ef32 %.4f ef128 %.4f\n", threads,
                r10, r32, r128);
        kiln_index_free(ix);
    }
    free(q);
    free(gt32);
    free(gt);
    kiln_dataset_free(base);
    kiln_dataset_free(qs);
    kiln_dataset_free(gtds);
}

/* ==== Synthetic: every metric against exact kNN ==== */

static void test_metrics(kiln_ctx *ctx) {
    const size_t n = 4000, nq = 100, d = 32;
    const uint32_t k = 10;
    float *all = malloc((n + nq) * d * sizeof *all);
    int64_t *gt = malloc(nq * k * sizeof *gt);
    REQUIRE(all && gt);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n + nq, d, 16, 11, all, (size_t)(n + nq) * d));
    const float *q = all + n * d;
    const kiln_metric metrics[] = {KILN_METRIC_L2, KILN_METRIC_IP, KILN_METRIC_COS};
    for (size_t m = 0; m < 3; m++) {
        CHECK_OK(ctx, kiln_knn_exact(ctx, all, n, q, nq, d, metrics[m], k, 0, gt, NULL));
        kiln_build_params p;
        insert_params(&p);
        p.metric = metrics[m];
        kiln_index *ix = NULL;
        CHECK_OK(ctx, kiln_index_build(ctx, all, n, d, &p, &ix));
        REQUIRE(ix);
        CHECK(kiln_index_metric(ix) == metrics[m]);
        CHECK_OK(ctx, kiln_index_check(ix));
        double r = search_recall(ctx, ix, q, nq, gt, k, k, 64);
        CHECK_MSG(r >= 0.95, "%s: recall@10 at ef=64 is %.4f", kiln_metric_name(metrics[m]), r);
        fprintf(stderr, "synthetic %s: recall@10 at ef=64 %.4f\n", kiln_metric_name(metrics[m]), r);

        /* Distances returned are the metric's and ascending. */
        int64_t lab[10];
        float dist[10];
        kiln_search_params sp = {.k = 10, .ef = 64, .threads = 1};
        CHECK_OK(ctx, kiln_index_search(ix, q, 1, &sp, lab, dist));
        for (int j = 1; j < 10; j++)
            CHECK(dist[j - 1] <= dist[j]);
        kiln_index_free(ix);
    }
    free(all);
    free(gt);
}

/* ==== Determinism, threads, padding, edge sizes ==== */

static void test_determinism(kiln_ctx *ctx) {
    const size_t n = 3000, d = 24;
    float *x = malloc(n * d * sizeof *x);
    REQUIRE(x);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n, d, 8, 5, x, (size_t)n * d));
    kiln_build_params p;
    insert_params(&p);
    p.threads = 1;
    p.seed = 7;
    kiln_index *a = NULL, *b = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &a));
    CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &b));
    REQUIRE(a && b);
    CHECK(a->entry_point == b->entry_point && a->max_level == b->max_level);
    CHECK(memcmp(a->levels, b->levels, n) == 0);
    CHECK(memcmp(a->links0, b->links0, n * (a->M0 + 1) * sizeof(uint32_t)) == 0);
    CHECK(a->upper_len == b->upper_len &&
          memcmp(a->upper_pool, b->upper_pool, a->upper_len * sizeof(uint32_t)) == 0);

    /* A different seed gives a different hierarchy. */
    kiln_index *c = NULL;
    p.seed = 8;
    CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &c));
    REQUIRE(c);
    CHECK(memcmp(a->levels, c->levels, n) != 0);

    /* Concurrent search from many threads equals serial search. */
    const size_t nq = 200;
    int64_t *l1 = malloc(nq * 10 * sizeof *l1), *l2 = malloc(nq * 10 * sizeof *l2);
    REQUIRE(l1 && l2);
    kiln_search_params sp = {.k = 10, .ef = 40, .threads = 1};
    CHECK_OK(ctx, kiln_index_search(a, x, nq, &sp, l1, NULL));
    sp.threads = 4;
    CHECK_OK(ctx, kiln_index_search(a, x, nq, &sp, l2, NULL));
    CHECK(memcmp(l1, l2, nq * 10 * sizeof *l1) == 0);
    /* Each base vector finds itself first. */
    size_t self = 0;
    for (size_t i = 0; i < nq; i++)
        self += l1[i * 10] == (int64_t)i;
    CHECK_MSG(self >= nq * 99 / 100, "%zu of %zu vectors found themselves first", self, nq);

    kiln_index_free(a);
    kiln_index_free(b);
    kiln_index_free(c);
    free(l1);
    free(l2);
    free(x);
}

static void test_small_sizes(kiln_ctx *ctx) {
    const float pts[] = {0, 0, 1, 0, 0, 1, 5, 5};
    kiln_build_params p;
    insert_params(&p);
    for (size_t n = 0; n <= 4; n++) {
        kiln_index *ix = NULL;
        CHECK_OK(ctx, kiln_index_build(ctx, pts, n, 2, &p, &ix));
        REQUIRE(ix);
        CHECK(kiln_index_count(ix) == n);
        CHECK_OK(ctx, kiln_index_check(ix));
        int64_t lab[6];
        float dist[6];
        const float q[2] = {0.1f, 0.0f};
        kiln_search_params sp = {.k = 6, .ef = 10, .threads = 1};
        CHECK_OK(ctx, kiln_index_search(ix, q, 1, &sp, lab, dist));
        for (size_t j = 0; j < 6; j++) {
            if (j < n)
                CHECK(lab[j] >= 0 && lab[j] < (int64_t)n);
            else
                CHECK(lab[j] == -1 && isinf(dist[j]));
        }
        if (n > 0)
            CHECK(lab[0] == 0);
        kiln_index_free(ix);
    }
}

static void test_bad_params(kiln_ctx *ctx) {
    const float x[4] = {1, 2, 3, 4};
    kiln_build_params p;
    kiln_index *ix = (kiln_index *)1;
    insert_params(&p);
    p.M = 1;
    CHECK_FAILS(ctx, kiln_index_build(ctx, x, 2, 2, &p, &ix), KILN_E_ARG, "M = 1");
    CHECK(ix == NULL);
    insert_params(&p);
    p.metric = (kiln_metric)9;
    CHECK_FAILS(ctx, kiln_index_build(ctx, x, 2, 2, &p, &ix), KILN_E_ARG, "metric");
    insert_params(&p);
    CHECK_FAILS(ctx, kiln_index_build(ctx, x, 2, 0, &p, &ix), KILN_E_ARG, "dim");
    insert_params(&p);
    CHECK_OK(ctx, kiln_index_build(ctx, x, 2, 2, &p, &ix));
    int64_t lab[2];
    kiln_search_params sp = {.k = 0, .ef = 10, .threads = 1};
    CHECK_FAILS(ctx, kiln_index_search(ix, x, 1, &sp, lab, NULL), KILN_E_ARG, "k must be");
    kiln_index_free(ix);
}

/* ==== Validator: each defect is caught ==== */

static void test_validator(kiln_ctx *ctx) {
    const size_t n = 500, d = 8;
    float *x = malloc(n * d * sizeof *x);
    REQUIRE(x);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n, d, 4, 3, x, (size_t)n * d));
    kiln_build_params p;
    insert_params(&p);
    p.threads = 1;
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &ix));
    REQUIRE(ix);
    CHECK_OK(ctx, kiln_index_check(ix));
    uint32_t *l = kiln_links(ix, 5, 0);
    REQUIRE(l[0] >= 2);
    uint32_t saved[2] = {l[1], l[2]};

    l[1] = 5;
    CHECK_FAILS(ctx, kiln_index_check(ix), KILN_E_INVALID, "links to itself");
    l[1] = saved[0];
    l[2] = saved[0];
    CHECK_FAILS(ctx, kiln_index_check(ix), KILN_E_INVALID, "twice");
    l[2] = (uint32_t)n + 3;
    CHECK_FAILS(ctx, kiln_index_check(ix), KILN_E_INVALID, "out of range");
    l[2] = saved[1];
    uint32_t deg = l[0];
    l[0] = ix->M0 + 1;
    CHECK_FAILS(ctx, kiln_index_check(ix), KILN_E_INVALID, "links on level 0");
    l[0] = deg;
    CHECK_OK(ctx, kiln_index_check(ix));

    /* Entry point off the top level. */
    uint32_t ep = ix->entry_point;
    uint32_t low = 0;
    while (ix->levels[low] == ix->max_level)
        low++;
    ix->entry_point = low;
    CHECK_FAILS(ctx, kiln_index_check(ix), KILN_E_INVALID, "not the top level");
    ix->entry_point = ep;

    /* Cut every in-link of one node: unreachable, then repaired. */
    uint32_t victim = ep == 7 ? 8 : 7;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t *li = kiln_links(ix, i, 0);
        for (uint32_t j = 0; j < li[0]; j++)
            if (li[1 + j] == victim) {
                li[1 + j] = li[li[0]];
                li[0]--;
                j--;
            }
    }
    for (uint32_t lev = 1; lev <= ix->levels[victim]; lev++)
        for (uint32_t i = 0; i < n; i++) {
            if (ix->levels[i] < lev)
                continue;
            uint32_t *li = kiln_links(ix, i, lev);
            for (uint32_t j = 0; j < li[0]; j++)
                if (li[1 + j] == victim) {
                    li[1 + j] = li[li[0]];
                    li[0]--;
                    j--;
                }
        }
    CHECK_FAILS(ctx, kiln_index_check(ix), KILN_E_INVALID, "unreachable");
    kiln_repair_stats rs;
    CHECK_OK(ctx, kiln_repair_reachability(ix, 64, 2, &rs));
    CHECK(rs.links >= 1 && rs.searches == rs.links);
    CHECK_OK(ctx, kiln_index_check(ix));
    kiln_index_free(ix);
    free(x);
}

/* ==== Non-finite vectors (issue 11 T4) ==== */

/* Builds over n rows of which the listed ones hold one NaN component each,
 * and returns recall@10 at ef = 16 against exact ground truth over the
 * finite rows only. Also checks that the validator reports exactly those
 * rows. bad[] ascending. */
static double nan_recall(kiln_ctx *ctx, const float *x, size_t n, size_t d, const float *q,
                         size_t nq, const size_t *bad, size_t nbad, kiln_method method) {
    float *y = malloc(n * d * sizeof *y), *fin = malloc(n * d * sizeof *fin);
    size_t *map = malloc(n * sizeof *map);
    int64_t *gt = malloc(nq * 10 * sizeof *gt);
    REQUIRE(y && fin && map && gt);
    memcpy(y, x, n * d * sizeof *y);
    for (size_t b = 0; b < nbad; b++)
        y[bad[b] * d + (b * 7) % d] = NAN;
    size_t nf = 0;
    for (size_t i = 0, b = 0; i < n; i++) {
        if (b < nbad && bad[b] == i) {
            b++;
            continue;
        }
        memcpy(fin + nf * d, y + i * d, d * sizeof *fin);
        map[nf++] = i;
    }
    CHECK_OK(ctx, kiln_knn_exact(ctx, fin, nf, q, nq, d, KILN_METRIC_L2, 10, 0, gt, NULL));
    for (size_t i = 0; i < nq * 10; i++)
        gt[i] = (int64_t)map[gt[i]];
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = method;
    p.threads = 1;
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, y, n, d, &p, &ix));
    REQUIRE(ix);
    CHECK_OK(ctx, kiln_index_check(ix));
    kiln_index_stats s;
    CHECK_OK(ctx, kiln_index_stats_get(ix, &s));
    CHECK_MSG(s.nonfinite_vectors == nbad, "validator found %llu non-finite vectors, want %zu",
              (unsigned long long)s.nonfinite_vectors, nbad);
    CHECK(nbad == 0 ? s.first_nonfinite == UINT64_MAX : s.first_nonfinite == bad[0]);
    double r = search_recall(ctx, ix, q, nq, gt, 10, 10, 16);
    /* A NaN row is never ranked ahead of a finite one. */
    int64_t lab[10];
    float dist[10];
    kiln_search_params sp = {.k = 10, .ef = 16, .threads = 1};
    CHECK_OK(ctx, kiln_index_search(ix, q, 1, &sp, lab, dist));
    for (int j = 0; j < 10; j++)
        CHECK(!isnan(dist[j]) && (j == 0 || dist[j - 1] <= dist[j]));
    kiln_index_free(ix);
    free(y);
    free(fin);
    free(map);
    free(gt);
    return r;
}

static void test_nonfinite_method(kiln_ctx *ctx, kiln_method method, const char *name) {
    const size_t n = 5000, nq = 200, d = 32;
    float *x = malloc((n + nq) * d * sizeof *x);
    REQUIRE(x);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n + nq, d, 16, 23, x, (n + nq) * d));
    const float *q = x + n * d;
    /* The entry point is fixed by (n, M, seed): poison it too in the
     * 10-row case, the worst place for a NaN. */
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = method;
    p.threads = 1;
    kiln_index *clean = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &clean));
    REQUIRE(clean);
    const size_t ep = clean->entry_point;
    kiln_index_free(clean);
    size_t one[1] = {n / 3}, ten[10];
    bool ep_in = false;
    for (size_t b = 0; b < 10; b++) {
        ten[b] = 97 + 491 * b;
        ep_in |= b < 9 && ten[b] == ep;
    }
    if (!ep_in)
        ten[9] = ep;
    for (size_t b = 1; b < 10; b++) /* ascending, as nan_recall wants */
        for (size_t c = b; c > 0 && ten[c - 1] > ten[c]; c--) {
            size_t t = ten[c];
            ten[c] = ten[c - 1];
            ten[c - 1] = t;
        }
    const double r0 = nan_recall(ctx, x, n, d, q, nq, NULL, 0, method);
    const double r1 = nan_recall(ctx, x, n, d, q, nq, one, 1, method);
    const double r10 = nan_recall(ctx, x, n, d, q, nq, ten, 10, method);
    fprintf(stderr, "%s with NaN rows: recall@10 at ef=16 clean %.4f, 1 NaN row %.4f, 10 %.4f\n",
            name, r0, r1, r10);
    CHECK_MSG(r1 >= r0 - 0.02 && r10 >= r0 - 0.03,
              "%s: NaN rows spoil search: recall %.4f clean, %.4f with 1, %.4f with 10", name, r0,
              r1, r10);
    free(x);
}

static void test_nonfinite(kiln_ctx *ctx) {
    test_nonfinite_method(ctx, KILN_METHOD_INSERT, "insert");
    uint32_t ndev = 0;
    if (kiln_device_count(ctx, &ndev) == KILN_OK && ndev > 0)
        test_nonfinite_method(ctx, KILN_METHOD_DEVICE, "device");
}

/* ==== Input rows used in place (graph/hnsw_build.c decision 5) ==== */

static bool same_graph(const kiln_index *a, const kiln_index *b) {
    return a->count == b->count && a->entry_point == b->entry_point &&
           a->max_level == b->max_level && memcmp(a->levels, b->levels, a->count) == 0 &&
           memcmp(a->links0, b->links0, a->count * kiln_links0_stride(a) * sizeof(uint32_t)) == 0 &&
           a->upper_len == b->upper_len &&
           memcmp(a->upper_pool, b->upper_pool, a->upper_len * sizeof(uint32_t)) == 0 &&
           memcmp(a->vectors, b->vectors, a->count * a->dim * sizeof(float)) == 0;
}

/* fbin and npy float32 rows are adopted as the index's vectors (fvecs rows,
 * and COS, are copied), the graphs equal the build from memory for both
 * methods and every metric, the index outlives its dataset, and a
 * non-finite value in a mapped file is still refused by name. */
static void test_in_place(kiln_ctx *ctx) {
    const size_t n = 2500, d = 20;
    float *x = malloc(n * d * sizeof *x);
    REQUIRE(x);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n, d, 8, 31, x, n * d));
    const char *t = getenv("KILN_TEST_TMP");
    char dir[512], path[3][600];
    snprintf(dir, sizeof dir, "%s", t ? t : "/tmp/kiln-test");
    static const char *const ext[3] = {"fbin", "npy", "fvecs"};
    static const kiln_format fmt[3] = {KILN_FORMAT_FBIN, KILN_FORMAT_NPY, KILN_FORMAT_FVECS};
    for (int f = 0; f < 3; f++) {
        snprintf(path[f], sizeof path[f], "%s/in_place.%s", dir, ext[f]);
        CHECK_OK(ctx, kiln_dataset_write(ctx, path[f], fmt[f], KILN_DTYPE_F32, x, n, d));
    }
    uint32_t ndev = 0;
    const bool device = kiln_device_count(ctx, &ndev) == KILN_OK && ndev > 0;
    static const kiln_metric metrics[3] = {KILN_METRIC_L2, KILN_METRIC_IP, KILN_METRIC_COS};
    for (int method = 0; method < (device ? 2 : 1); method++) {
        for (int m = 0; m < 3; m++) {
            kiln_build_params p;
            kiln_build_params_init(&p);
            p.method = method ? KILN_METHOD_DEVICE : KILN_METHOD_INSERT;
            p.metric = metrics[m];
            p.threads = 2;
            kiln_index *ref = NULL;
            CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &ref));
            REQUIRE(ref);
            for (int f = 0; f < 3; f++) {
                kiln_dataset *ds = NULL;
                CHECK_OK(ctx, kiln_dataset_open(ctx, path[f], KILN_FORMAT_AUTO, 0, &ds));
                kiln_index *ix = NULL;
                CHECK_OK(ctx, kiln_index_build_dataset(ctx, ds, &p, &ix));
                kiln_dataset_free(ds); /* the index keeps its own mapping */
                if (!ix)
                    continue;
                const bool adopted = f < 2 && metrics[m] != KILN_METRIC_COS;
                CHECK_MSG((ix->vectors_map != NULL) == adopted,
                          "%s, metric %d, method %d: vectors %s", ext[f], m, method,
                          ix->vectors_map ? "adopted" : "copied");
                CHECK_MSG(same_graph(ix, ref), "%s, metric %d, method %d: another graph", ext[f], m,
                          method);
                int64_t la[10], lb[10];
                kiln_search_params sp = {.k = 10, .ef = 32, .threads = 1};
                CHECK_OK(ctx, kiln_index_search(ix, x + 77 * d, 1, &sp, la, NULL));
                CHECK_OK(ctx, kiln_index_search(ref, x + 77 * d, 1, &sp, lb, NULL));
                CHECK(memcmp(la, lb, sizeof la) == 0);
                kiln_index_free(ix);
            }
            kiln_index_free(ref);
        }
    }
    /* A NaN in the mapped rows: refused with its place, or taken when
     * allowed. */
    x[1234 * d + 5] = NAN;
    CHECK_OK(ctx, kiln_dataset_write(ctx, path[0], KILN_FORMAT_FBIN, KILN_DTYPE_F32, x, n, d));
    for (int allow = 0; allow < 2; allow++) {
        kiln_dataset *ds = NULL;
        CHECK_OK(ctx, kiln_dataset_open(ctx, path[0], KILN_FORMAT_AUTO,
                                        allow ? KILN_OPEN_ALLOW_NONFINITE : 0, &ds));
        kiln_build_params p;
        insert_params(&p);
        kiln_index *ix = NULL;
        const kiln_status st = ds ? kiln_index_build_dataset(ctx, ds, &p, &ix) : KILN_E_IO;
        if (allow) {
            CHECK_MSG(st == KILN_OK && ix && ix->vectors_map, "a NaN row, allowed: %s",
                      kiln_errmsg(ctx));
        } else {
            CHECK_MSG(st == KILN_E_FORMAT && !ix && strstr(kiln_errmsg(ctx), "record 1234") &&
                          strstr(kiln_errmsg(ctx), "component 5"),
                      "a NaN row: %d, %s", (int)st, kiln_errmsg(ctx));
        }
        kiln_index_free(ix);
        kiln_dataset_free(ds);
    }
    for (int f = 0; f < 3; f++)
        unlink(path[f]);
    free(x);
}

/* ==== Repair work is bounded (issue 11 T12) ==== */

/* A graph with no links at all (what a crafted hnswlib file gives): every
 * node is its own island. The repair must make it whole with at most
 * KILN_REPAIR_SEARCHES searches, never one per node. */
static void test_repair_no_links(kiln_ctx *ctx) {
    const size_t n = 32768, d = 16;
    struct kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_alloc(ctx, n, d, KILN_METRIC_L2, 16, NULL, &ix));
    REQUIRE(ix);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n, d, 8, 29, ix->vectors, (size_t)n * d));
    ix->entry_point = 0;
    ix->max_level = 0;
    CHECK_FAILS(ctx, kiln_index_check(ix), KILN_E_INVALID, "unreachable");
    kiln_repair_stats rs;
    CHECK_OK(ctx, kiln_repair_reachability(ix, 64, 2, &rs));
    CHECK_OK(ctx, kiln_index_check(ix));
    CHECK_MSG(rs.links == n - 1, "%llu links added for %zu singleton islands",
              (unsigned long long)rs.links, n - 1);
    CHECK_MSG(rs.searches <= rs.links && rs.searches <= KILN_REPAIR_SEARCHES(n),
              "repair ran %llu searches for %zu nodes (bound %llu)",
              (unsigned long long)rs.searches, n, (unsigned long long)KILN_REPAIR_SEARCHES(n));
    /* More islands than the bound: it is used in full, the rest are chained. */
    CHECK(rs.searches == KILN_REPAIR_SEARCHES(n));
    kiln_index_free(ix);
}

/* ==== The parallel BFS and list check (graph/validate.c decisions 2, 3) ==== */

/* A random graph of 300K nodes, 8 links each, where no node links to the
 * nodes i % 97 == 5: levels of the BFS pass REACH_PARALLEL_MIN, so the
 * threaded path runs. Its marks must be a one-thread BFS's, for 1, 2 and 4
 * threads, and the validator must name the lowest bad node. */
static void test_parallel_reach(kiln_ctx *ctx) {
    const uint32_t n = 300000, M = 4;
    struct kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_alloc(ctx, n, 1, KILN_METRIC_L2, M, NULL, &ix));
    REQUIRE(ix);
    ix->entry_point = 0;
    ix->max_level = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t *l = kiln_links(ix, i, 0);
        l[0] = 0;
        while (l[0] < ix->M0) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            const uint32_t v = (uint32_t)((rng >> 33) % n);
            bool dup = v == i || v % 97 == 5;
            for (uint32_t t = 0; t < l[0] && !dup; t++)
                dup = l[1 + t] == v;
            if (!dup)
                l[1 + l[0]++] = v;
        }
    }
    uint8_t *want = calloc(n, 1), *seen = malloc(n);
    uint32_t *queue = malloc((size_t)n * sizeof *queue);
    REQUIRE(want && seen && queue);
    uint64_t head = 0, tail = 0, marked = 1;
    want[0] = 1;
    queue[tail++] = 0;
    while (head < tail) {
        const uint32_t *l = kiln_links(ix, queue[head++], 0);
        for (uint32_t j = 0; j < l[0]; j++)
            if (!want[l[1 + j]]) {
                want[l[1 + j]] = 1;
                queue[tail++] = l[1 + j];
                marked++;
            }
    }
    /* The cut nodes, and the few that only they link to, are missed. */
    CHECK_MSG(marked <= n - (n - 5 + 96) / 97 && marked > n / 100 * 98,
              "reference BFS marked %llu of %u", (unsigned long long)marked, n);
    uint32_t first = 0;
    while (want[first])
        first++;
    for (int threads = 1; threads <= 4; threads *= 2) {
        memset(seen, 0, n);
        const uint64_t got = kiln_l0_mark_reachable(ix, seen, queue, 0, threads);
        CHECK_MSG(got == marked && memcmp(seen, want, n) == 0,
                  "%d threads: BFS marked %llu nodes, the reference %llu", threads,
                  (unsigned long long)got, (unsigned long long)marked);
        CHECK(kiln_l0_mark_reachable(ix, seen, queue, 0, threads) == 0); /* marked already */
    }
    char needle[128];
    snprintf(needle, sizeof needle,
             "%llu of %u nodes are unreachable from the entry point on level 0 (first: node %u)",
             (unsigned long long)(n - marked), n, first);
    CHECK_FAILS(ctx, kiln_index_check(ix), KILN_E_INVALID, needle);
    /* Two bad lists: the lower node is the one named. */
    uint32_t *a = kiln_links(ix, 250001, 0), *b = kiln_links(ix, 200003, 0);
    a[2] = a[1];
    b[3] = n;
    CHECK_FAILS(ctx, kiln_index_check(ix), KILN_E_INVALID,
                "node 200003 level 0 links to id 300000, out of range");
    b[3] = b[1];
    snprintf(needle, sizeof needle, "node 200003 links to %u twice on level 0", b[1]);
    CHECK_FAILS(ctx, kiln_index_check(ix), KILN_E_INVALID, needle);
    free(want);
    free(seen);
    free(queue);
    kiln_index_free(ix);
}

/* A candidate heap that cannot grow (a failed realloc, injected) makes the
 * search report KILN_E_NOMEM instead of aborting the process, and the next
 * search with memory is whole again. */
static void test_heap_growth_failure(kiln_ctx *ctx) {
    const size_t n = 4000, d = 16, nq = 20;
    float *x = malloc((n + nq) * d * sizeof *x);
    REQUIRE(x);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n + nq, d, 8, 11, x, (n + nq) * d));
    kiln_build_params p;
    insert_params(&p);
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    sp.ef = 10; /* heaps start at 2 * (ef + 2) candidates and must grow */
    int64_t labels[20 * 10], again[20 * 10];
    for (uint32_t threads = 1; threads <= 2; threads++) {
        /* A new index each time: a pooled scratch keeps the heap it grew. */
        kiln_index *ix = NULL;
        CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &ix));
        REQUIRE(ix);
        sp.threads = threads;
        atomic_store(&kiln_fault_heap_grow, 1000000);
        CHECK_FAILS(ctx, kiln_index_search(ix, x + n * d, nq, &sp, labels, NULL), KILN_E_NOMEM,
                    "out of memory growing the candidate heap");
        CHECK(atomic_load(&kiln_fault_heap_grow) < 1000000); /* growth was attempted */
        atomic_store(&kiln_fault_heap_grow, 0);
        CHECK_OK(ctx, kiln_index_search(ix, x + n * d, nq, &sp, again, NULL));
        kiln_index_free(ix);
    }
    free(x);
}

int main(void) {
    kiln_ctx *ctx;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    kiln_ctx_set_progress(ctx, KILN_PROGRESS_OFF);
    test_bad_params(ctx);
    test_small_sizes(ctx);
    test_validator(ctx);
    test_nonfinite(ctx);
    test_in_place(ctx);
    test_repair_no_links(ctx);
    test_parallel_reach(ctx);
    test_heap_growth_failure(ctx);
    test_determinism(ctx);
    test_metrics(ctx);
    test_siftsmall(ctx);
    kiln_ctx_free(ctx);
    return check_report("test_hnsw");
}
