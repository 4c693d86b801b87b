/* test_kmeans.c -- cluster/: the CPU nearest-centroid backend against brute
 * force, k-means training on separable blobs and siftsmall, and the capped
 * multi-assignment's guarantees (cap, replicas, distinct, ascending,
 * nearest-first spill, determinism across thread counts, argument errors).
 *
 * What "equal" means for nearest centroids: the backend promises exactly the
 * ranking of the dispatched float L2 with ties by smaller id, so it is
 * compared bit for bit with a brute force over kiln_distance_fn; against a
 * double-precision brute force it must agree exactly on integer-valued data
 * (every float sum is then exact, so ties are real ties) and within float
 * rounding otherwise.
 *
 * The two-level path (cluster/hkmeans.c, k >= 256) is checked on seeded
 * clustered data against the flat one: its search is the exact r nearest
 * among the centroids it visits, so each of its distances is the brute-force
 * distance of its id and never below the brute force's at the same rank; it
 * must find the true nearest for nearly every row, and give the same bytes
 * with 1 and 2 threads.
 *
 * The main binary re-runs the backend tests in child processes with
 * KILN_SIMD=avx2 and KILN_SIMD=scalar, so every register-blocked kernel is
 * checked on a machine that has it. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../cluster/kmeans_internal.h"
#include "../common/distance_internal.h"
#include "../common/rng_internal.h"
#include "check.h"
#include "kiln.h"

#define SIFT_BASE "../shared/datasets/siftsmall/siftsmall_base.fvecs"

/* ==== Helpers ==== */

static float *alloc_floats(size_t count) {
    float *v = malloc(count * sizeof(float) + 1);
    REQUIRE(v);
    return v;
}

static float *uniform_rows(uint64_t seed, size_t n, size_t dim, double lo, double hi) {
    float *v = alloc_floats(n * dim);
    kiln_rng rng;
    kiln_rng_seed(&rng, seed);
    for (size_t i = 0; i < n * dim; i++)
        v[i] = (float)(lo + (hi - lo) * kiln_rng_uniform(&rng));
    return v;
}

/* Small integers: every float sum of their squared differences is exact. */
static float *integer_rows(uint64_t seed, size_t n, size_t dim, uint32_t levels) {
    float *v = alloc_floats(n * dim);
    kiln_rng rng;
    kiln_rng_seed(&rng, seed);
    for (size_t i = 0; i < n * dim; i++)
        v[i] = (float)kiln_rng_below(&rng, levels);
    return v;
}

static double gauss(kiln_rng *rng) {
    const double u = kiln_rng_uniform(rng), w = kiln_rng_uniform(rng);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * w);
}

/* n points in blobs of the given sizes around random centres in
 * [-spread, spread]^dim with unit noise; blob[i] is the blob of row i. */
static float *blob_rows(uint64_t seed, size_t dim, const size_t *sizes, uint32_t nblobs,
                        double spread, double noise, uint32_t *blob) {
    kiln_rng rng;
    kiln_rng_seed(&rng, seed);
    size_t n = 0;
    for (uint32_t b = 0; b < nblobs; b++)
        n += sizes[b];
    double centre[16][64];
    REQUIRE(nblobs <= 16 && dim <= 64);
    for (uint32_t b = 0; b < nblobs; b++)
        for (size_t j = 0; j < dim; j++)
            centre[b][j] = spread * (2.0 * kiln_rng_uniform(&rng) - 1.0);
    float *v = alloc_floats(n * dim);
    size_t row = 0;
    for (uint32_t b = 0; b < nblobs; b++)
        for (size_t i = 0; i < sizes[b]; i++, row++) {
            blob[row] = b;
            for (size_t j = 0; j < dim; j++)
                v[row * dim + j] = (float)(centre[b][j] + noise * gauss(&rng));
        }
    return v;
}

static double l2_double(const float *a, const float *b, size_t dim) {
    double s = 0.0;
    for (size_t j = 0; j < dim; j++) {
        const double d = (double)a[j] - (double)b[j];
        s += d * d;
    }
    return s;
}

typedef struct ref_pair {
    double dist;
    uint32_t id;
} ref_pair;

static int ref_cmp(const void *pa, const void *pb) {
    const ref_pair *a = pa, *b = pb;
    if (a->dist != b->dist)
        return a->dist < b->dist ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

/* All k centroids of row x ranked by double L2, ties by smaller id. */
static void ref_rank(const float *x, const float *cent, uint32_t k, size_t dim, ref_pair *out) {
    for (uint32_t c = 0; c < k; c++)
        out[c] = (ref_pair){l2_double(x, cent + (size_t)c * dim, dim), c};
    qsort(out, k, sizeof *out, ref_cmp);
}

static uint32_t ref_nearest(const float *x, const float *cent, uint32_t k, size_t dim) {
    uint32_t best = 0;
    double bd = INFINITY;
    for (uint32_t c = 0; c < k; c++) {
        const double d = l2_double(x, cent + (size_t)c * dim, dim);
        if (d < bd) {
            bd = d;
            best = c;
        }
    }
    return best;
}

static double sse(const float *x, size_t n, size_t dim, const float *cent, uint32_t k) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        const float *const row = x + i * dim;
        s += l2_double(row, cent + (size_t)ref_nearest(row, cent, k, dim) * dim, dim);
    }
    return s;
}

/* The invariants every assignment must meet; returns the failures found. */
static int check_clusters(const kiln_clusters *c, size_t n, uint32_t max_size, uint32_t rep) {
    int bad = 0;
    uint32_t *count = calloc(n + 1, sizeof *count);
    REQUIRE(count);
    if (c->offsets[0] != 0)
        bad++;
    for (uint32_t j = 0; j < c->k; j++) {
        const uint64_t b = c->offsets[j], e = c->offsets[j + 1];
        if (e < b || (max_size && e - b > max_size) || e - b > c->max_members)
            bad++;
        for (uint64_t t = b; t < e; t++) {
            if (c->members[t] >= n) {
                bad++;
                continue;
            }
            if (t > b && c->members[t] <= c->members[t - 1])
                bad++; /* not ascending, or listed twice */
            count[c->members[t]]++;
        }
    }
    uint64_t short_vectors = 0;
    for (size_t v = 0; v < n; v++) {
        if (count[v] < 1 || count[v] > rep)
            bad++;
        short_vectors += count[v] < rep;
    }
    if (short_vectors != c->short_vectors)
        bad++;
    free(count);
    return bad;
}

/* ==== Nearest centroids ==== */

/* Brute force with the very distance the backend promises. */
static void float_rank(const float *x, const float *cent, uint32_t k, size_t dim, ref_pair *out) {
    const kiln_dist_fn dist = kiln_distance_fn(KILN_METRIC_L2);
    for (uint32_t c = 0; c < k; c++) {
        const float d = dist(x, cent + (size_t)c * dim, dim);
        out[c] = (ref_pair){isnan(d) ? INFINITY : (double)d, c};
    }
    qsort(out, k, sizeof *out, ref_cmp);
}

static void test_nearest_case(kiln_ctx *ctx, const float *x, size_t n, const float *cent,
                              uint32_t k, uint32_t dim, uint32_t r, uint32_t threads,
                              int integer_valued) {
    uint32_t *ids = malloc((size_t)n * r * sizeof *ids);
    float *dists = alloc_floats((size_t)n * r);
    ref_pair *fr = malloc(k * sizeof *fr), *dr = malloc(k * sizeof *dr);
    REQUIRE(ids && fr && dr);
    kiln_nearest_cpu_opts opts = {.threads = threads};
    CHECK_OK(ctx,
             kiln_nearest_cpu(&opts, ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim}, r,
                              (kiln_nearest_out){ids, dists}));
    size_t exact_bad = 0, ref_bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float *const row = x + i * dim;
        float_rank(row, cent, k, dim, fr);
        ref_rank(row, cent, k, dim, dr);
        for (uint32_t j = 0; j < r; j++) {
            const uint32_t got = ids[i * r + j];
            if (got != fr[j].id || (double)dists[i * r + j] != fr[j].dist)
                exact_bad++;
            if (integer_valued) {
                ref_bad += got != dr[j].id;
            } else {
                /* Within float rounding of the reference's j-th distance. */
                const double tol = 4.0 * (dim + 2) * 0x1.0p-24 * (dr[j].dist + 1.0);
                ref_bad += fabs(l2_double(row, cent + (size_t)got * dim, dim) - dr[j].dist) > tol;
            }
        }
    }
    CHECK_MSG(exact_bad == 0,
              "n %zu k %u dim %u r %u threads %u: %zu ranks differ from float "
              "brute force",
              n, k, dim, r, threads, exact_bad);
    CHECK_MSG(ref_bad == 0,
              "n %zu k %u dim %u r %u threads %u: %zu ranks differ from double "
              "brute force",
              n, k, dim, r, threads, ref_bad);
    free(ids);
    free(dists);
    free(fr);
    free(dr);
}

static void test_nearest(kiln_ctx *ctx) {
    /* Odd sizes: rows not a multiple of the 48-row block or the kernels'
     * row counts, k not a multiple of a panel, dims with SIMD tails. */
    static const struct {
        size_t n;
        uint32_t k, dim;
    } shapes[] = {{1, 1, 1}, {5, 3, 7}, {301, 70, 37}, {500, 129, 128}, {97, 33, 200}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const size_t n = shapes[s].n;
        const uint32_t k = shapes[s].k, dim = shapes[s].dim;
        float *x = uniform_rows(100 + s, n, dim, -1.0, 1.0);
        float *cent = uniform_rows(200 + s, k, dim, -1.0, 1.0);
        const uint32_t rs[] = {1, k < 3 ? k : 3, k};
        for (size_t t = 0; t < 3; t++)
            test_nearest_case(ctx, x, n, cent, k, dim, rs[t], (uint32_t)(1 + t % 2), 0);
        free(x);
        free(cent);

        /* Integer-valued, with centroid 1 duplicated at the end: real ties,
         * broken by smaller id, and exact agreement with double. */
        x = integer_rows(300 + s, n, dim, 4);
        cent = integer_rows(400 + s, k, dim, 4);
        if (k >= 3)
            memcpy(cent + (size_t)(k - 1) * dim, cent + dim, dim * sizeof *cent);
        test_nearest_case(ctx, x, n, cent, k, dim, 1, 2, 1);
        test_nearest_case(ctx, x, n, cent, k, dim, k < 4 ? k : 4, 1, 1);
        test_nearest_case(ctx, x, n, cent, k, dim, k, 2, 1);
        free(x);
        free(cent);
    }

    /* Large norms, tiny differences: the expanded form cancels badly here,
     * so the candidate window must still find the exact nearest. */
    {
        const size_t n = 200;
        const uint32_t k = 64, dim = 96;
        float *x = uniform_rows(500, n, dim, -1.0, 1.0),
              *cent = uniform_rows(501, k, dim, -1.0, 1.0);
        for (size_t i = 0; i < n * dim; i++)
            x[i] += 1000.0f;
        for (size_t i = 0; i < (size_t)k * dim; i++)
            cent[i] += 1000.0f;
        test_nearest_case(ctx, x, n, cent, k, dim, 1, 2, 0);
        test_nearest_case(ctx, x, n, cent, k, dim, 5, 2, 0);
        free(x);
        free(cent);
    }

    /* Argument errors. */
    uint32_t id;
    float d, one = 0.0f;
    CHECK_FAILS(ctx,
                kiln_nearest_cpu(NULL, ctx, (kiln_rows){&one, 1, 1}, (kiln_centroids){&one, 1, 1},
                                 2, (kiln_nearest_out){&id, &d}),
                KILN_E_ARG, "1 <= r <= k");
    CHECK_FAILS(ctx,
                kiln_nearest_cpu(NULL, ctx, (kiln_rows){&one, 1, 1}, (kiln_centroids){NULL, 1, 1},
                                 1, (kiln_nearest_out){&id, &d}),
                KILN_E_ARG, "NULL");
}

/* Few centroids per panel and r above the panel count: the selection
 * bounds the r-th smallest by lane-group minima (kmeans.c decision 8). */
static void test_nearest_small_k(kiln_ctx *ctx) {
    static const struct {
        size_t n;
        uint32_t k, dim, r;
    } shapes[] = {{300, 20, 24, 17}, {300, 50, 24, 10}, {200, 100, 40, 12}, {97, 150, 128, 10}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const size_t n = shapes[s].n;
        const uint32_t k = shapes[s].k, dim = shapes[s].dim, r = shapes[s].r;
        float *x = uniform_rows(600 + s, n, dim, -1.0, 1.0);
        float *cent = uniform_rows(700 + s, k, dim, -1.0, 1.0);
        test_nearest_case(ctx, x, n, cent, k, dim, r, 2, 0);
        free(x);
        free(cent);
        x = integer_rows(800 + s, n, dim, 3);
        cent = integer_rows(900 + s, k, dim, 3);
        memcpy(cent + (size_t)(k - 1) * dim, cent + dim, dim * sizeof *cent);
        test_nearest_case(ctx, x, n, cent, k, dim, r, 1, 1);
        free(x);
        free(cent);
    }
    /* A panel of padding only (k = 10 of 32 columns) and rows whose
     * distances are all NaN: every centroid ties at +inf, so the window
     * admits everything, and the padding must still never be read. */
    float *x = uniform_rows(1000, 7, 24, -1.0, 1.0), *cent = uniform_rows(1001, 10, 24, -1.0, 1.0);
    x[3 * 24 + 5] = NAN;
    test_nearest_case(ctx, x, 7, cent, 10, 24, 10, 1, 0);
    test_nearest_case(ctx, x, 7, cent, 10, 24, 9, 2, 0);
    free(x);
    free(cent);
}

/* ==== Training ==== */

/* Three well-separated blobs: the trained centroids put each blob in its
 * own cluster, and the assignment is the double-precision nearest. */
static void test_blobs(kiln_ctx *ctx) {
    const size_t sizes[3] = {700, 650, 650};
    const size_t n = 2000, dim = 8;
    uint32_t blob[2000];
    float *x = blob_rows(11, dim, sizes, 3, 20.0, 1.0, blob);
    kiln_kmeans_params p;
    kiln_kmeans_params_init(&p);
    p.clusters = 3;
    p.replicas = 1;
    p.threads = 2;
    p.seed = 5;
    uint32_t k = 0;
    CHECK_OK(ctx, kiln_kmeans_k(ctx, n, &p, &k));
    REQUIRE(k == 3);
    float cent[3 * 8];
    CHECK_OK(ctx, kiln_kmeans_train(ctx, (kiln_rows){x, n, (uint32_t)dim}, &p, NULL, cent));
    kiln_clusters c;
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){x, n, (uint32_t)dim},
                                       (kiln_centroids){cent, k, (uint32_t)dim}, &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(check_clusters(&c, n, 0, 1) == 0);
    CHECK(memcmp(c.centroids, cent, sizeof cent) == 0);
    uint32_t *of = malloc(n * sizeof *of);
    REQUIRE(of);
    for (uint32_t j = 0; j < k; j++)
        for (uint64_t t = c.offsets[j]; t < c.offsets[j + 1]; t++)
            of[c.members[t]] = j;
    size_t mismatch = 0, split = 0;
    uint32_t blob_cluster[3];
    for (uint32_t b = 0; b < 3; b++)
        blob_cluster[b] = UINT32_MAX;
    for (size_t i = 0; i < n; i++) {
        mismatch += of[i] != ref_nearest(x + i * dim, cent, k, dim);
        if (blob_cluster[blob[i]] == UINT32_MAX)
            blob_cluster[blob[i]] = of[i];
        split += of[i] != blob_cluster[blob[i]];
    }
    CHECK_MSG(mismatch == 0, "%zu rows not in their nearest cluster", mismatch);
    CHECK_MSG(split == 0, "%zu rows away from their blob's cluster", split);
    CHECK(blob_cluster[0] != blob_cluster[1] && blob_cluster[1] != blob_cluster[2] &&
          blob_cluster[0] != blob_cluster[2]);
    CHECK(c.spilled_vectors == 0 && c.far_vectors == 0 && c.short_vectors == 0);
    kiln_clusters_free(&c);
    CHECK(c.members == NULL && c.k == 0);
    kiln_clusters_free(&c);
    kiln_clusters_free(NULL);

    /* More clusters than blobs: training still leaves none empty. */
    p.clusters = 20;
    p.sample = 1000;
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, (uint32_t)dim}, &p, NULL, &c));
    REQUIRE(c.members);
    uint32_t empty = 0;
    for (uint32_t j = 0; j < c.k; j++)
        empty += c.offsets[j + 1] == c.offsets[j];
    CHECK_MSG(empty == 0, "%u of 20 clusters empty", empty);
    CHECK(check_clusters(&c, n, 0, 1) == 0);
    kiln_clusters_free(&c);
    free(of);
    free(x);
}

/* Same seed, 1 and 2 threads: identical centroids and members. */
static void test_determinism(kiln_ctx *ctx) {
    const size_t n = 6000, dim = 16;
    float *x = uniform_rows(21, n, dim, -1.0, 1.0);
    for (size_t i = 0; i < n / 2; i++) /* skew: half the rows crowd one corner */
        for (size_t j = 0; j < dim; j++)
            x[i * dim + j] = 0.9f + 0.1f * x[i * dim + j];
    kiln_kmeans_params p;
    kiln_kmeans_params_init(&p);
    p.clusters = 12;
    p.max_size = 1200;
    p.sample = 3000;
    p.seed = 77;
    kiln_clusters a, b;
    p.threads = 1;
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, (uint32_t)dim}, &p, NULL, &a));
    p.threads = 2;
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, (uint32_t)dim}, &p, NULL, &b));
    REQUIRE(a.members && b.members);
    CHECK(check_clusters(&a, n, p.max_size, 2) == 0);
    CHECK(a.k == b.k && a.max_members <= p.max_size);
    CHECK(memcmp(a.centroids, b.centroids, (size_t)a.k * dim * sizeof(float)) == 0);
    CHECK(memcmp(a.offsets, b.offsets, (a.k + 1) * sizeof *a.offsets) == 0);
    CHECK(memcmp(a.members, b.members, a.offsets[a.k] * sizeof *a.members) == 0);
    CHECK(a.spilled_vectors == b.spilled_vectors && a.far_vectors == b.far_vectors);
    kiln_clusters_free(&b);

    /* A different seed gives different centroids (the seed is used). */
    p.seed = 78;
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, (uint32_t)dim}, &p, NULL, &b));
    REQUIRE(b.centroids);
    CHECK(memcmp(a.centroids, b.centroids, (size_t)a.k * dim * sizeof(float)) != 0);
    kiln_clusters_free(&a);
    kiln_clusters_free(&b);
    free(x);
}

/* siftsmall, k = 8: every cluster non-empty, training lowers the SSE. */
static void test_siftsmall(kiln_ctx *ctx) {
    struct stat sb;
    if (stat(SIFT_BASE, &sb) != 0) {
        SKIP_PART("%s absent, siftsmall case skipped", SIFT_BASE);
        return;
    }
    kiln_dataset *ds = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, SIFT_BASE, KILN_FORMAT_AUTO, 0, &ds));
    REQUIRE(ds);
    const size_t n = kiln_dataset_count(ds), dim = kiln_dataset_dim(ds);
    float *x = alloc_floats(n * dim);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, n, x));
    kiln_dataset_free(ds);

    kiln_kmeans_params p;
    kiln_kmeans_params_init(&p);
    p.clusters = 8;
    p.replicas = 1;
    p.threads = 2;
    float *seeds = alloc_floats(8 * dim), *trained = alloc_floats(8 * dim);
    p.iters = 0;
    CHECK_OK(ctx, kiln_kmeans_train(ctx, (kiln_rows){x, n, (uint32_t)dim}, &p, NULL, seeds));
    p.iters = 8;
    CHECK_OK(ctx, kiln_kmeans_train(ctx, (kiln_rows){x, n, (uint32_t)dim}, &p, NULL, trained));
    const double s0 = sse(x, n, dim, seeds, 8), s1 = sse(x, n, dim, trained, 8);
    CHECK_MSG(s1 < 0.95 * s0, "SSE %.4g after training, %.4g at the seeds", s1, s0);
    kiln_clusters c;
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){x, n, (uint32_t)dim},
                                       (kiln_centroids){trained, 8, (uint32_t)dim}, &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(check_clusters(&c, n, 0, 1) == 0);
    for (uint32_t j = 0; j < 8; j++)
        CHECK_MSG(c.offsets[j + 1] - c.offsets[j] >= 100, "cluster %u has %llu members", j,
                  (unsigned long long)(c.offsets[j + 1] - c.offsets[j]));
    kiln_clusters_free(&c);

    /* The default-sized build: k from target_size, 2 replicas, capped. */
    kiln_kmeans_params_init(&p);
    p.target_size = 1000;
    p.max_size = 1500;
    p.threads = 2;
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, (uint32_t)dim}, &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(c.k == 20 && c.replicas == 2);
    CHECK(check_clusters(&c, n, 1500, 2) == 0);
    CHECK(c.offsets[c.k] == 2 * n - c.short_vectors);
    fprintf(stderr, "siftsmall k=20: largest %u, spilled %llu, far %llu, short %llu\n",
            c.max_members, (unsigned long long)c.spilled_vectors, (unsigned long long)c.far_vectors,
            (unsigned long long)c.short_vectors);
    kiln_clusters_free(&c);
    free(seeds);
    free(trained);
    free(x);
}

/* ==== Capped multi-assignment ==== */

/* Two replicas, no cap: each vector in exactly its two nearest clusters. */
static void test_replicas(kiln_ctx *ctx) {
    const size_t n = 1500;
    const uint32_t dim = 10, k = 9;
    float *x = uniform_rows(31, n, dim, -1.0, 1.0), *cent = uniform_rows(32, k, dim, -1.0, 1.0);
    kiln_kmeans_params p;
    kiln_kmeans_params_init(&p);
    p.replicas = 2;
    p.max_size = (uint32_t)n; /* generous: never binds */
    p.threads = 2;
    kiln_clusters c;
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim},
                                       &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(check_clusters(&c, n, 0, 2) == 0);
    CHECK(c.offsets[k] == 2 * n);
    CHECK(c.spilled_vectors == 0 && c.far_vectors == 0 && c.short_vectors == 0);
    uint32_t *ids = malloc(n * 2 * sizeof *ids);
    float *d = alloc_floats(n * 2);
    REQUIRE(ids);
    CHECK_OK(ctx, kiln_nearest_cpu(NULL, ctx, (kiln_rows){x, n, dim},
                                   (kiln_centroids){cent, k, dim}, 2, (kiln_nearest_out){ids, d}));
    size_t wrong = 0;
    for (uint32_t j = 0; j < k; j++)
        for (uint64_t t = c.offsets[j]; t < c.offsets[j + 1]; t++) {
            const uint32_t v = c.members[t];
            wrong += ids[2 * v] != j && ids[2 * v + 1] != j;
        }
    CHECK_MSG(wrong == 0, "%zu memberships outside the two nearest", wrong);
    kiln_clusters_free(&c);

    /* No vectors: k empty clusters. */
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){NULL, 0, dim},
                                       (kiln_centroids){cent, k, dim}, &p, NULL, &c));
    REQUIRE(c.offsets);
    CHECK(c.k == k && c.offsets[k] == 0 && c.max_members == 0);
    kiln_clusters_free(&c);

    /* replicas above k is clamped to k: everyone in every cluster. */
    p.replicas = 20;
    p.max_size = 0;
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){x, 40, dim}, (kiln_centroids){cent, 3, dim},
                                       &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(c.replicas == 3 && c.offsets[3] == 120 && check_clusters(&c, 40, 0, 3) == 0);
    kiln_clusters_free(&c);
    free(ids);
    free(d);
    free(x);
    free(cent);
}

/* Boundary extras (assign.c decision 6), no cap: each vector in its two
 * nearest clusters, and in its third exactly when that one's squared
 * distance is within extra_ratio of its nearest's. */
static void test_boundary_replicas(kiln_ctx *ctx) {
    const size_t n = 1500;
    const uint32_t dim = 10, k = 9;
    float *x = uniform_rows(33, n, dim, -1.0, 1.0), *cent = uniform_rows(34, k, dim, -1.0, 1.0);
    uint32_t *ids = malloc(n * 3 * sizeof *ids);
    float *d = alloc_floats(n * 3);
    REQUIRE(ids);
    CHECK_OK(ctx, kiln_nearest_cpu(NULL, ctx, (kiln_rows){x, n, dim},
                                   (kiln_centroids){cent, k, dim}, 3, (kiln_nearest_out){ids, d}));
    kiln_kmeans_params p;
    kiln_kmeans_params_init(&p);
    p.replicas = 2;
    p.extra = 1;
    p.extra_ratio = 1.1f;
    p.max_size = (uint32_t)n; /* generous: never binds */
    p.threads = 2;
    kiln_clusters c;
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim},
                                       &p, NULL, &c));
    REQUIRE(c.members);
    kiln_clusters as3 = c; /* check_clusters counts as short those below 3 */
    as3.short_vectors = n - c.extra_vectors;
    CHECK(c.replicas == 3 && check_clusters(&as3, n, 0, 3) == 0);
    size_t near = 0, wrong = 0;
    uint8_t *in = calloc(n * 3, 1);
    REQUIRE(in);
    for (uint32_t j = 0; j < k; j++)
        for (uint64_t t = c.offsets[j]; t < c.offsets[j + 1]; t++) {
            const uint32_t v = c.members[t];
            int r = 0;
            while (r < 3 && ids[3 * v + r] != j)
                r++;
            if (r == 3)
                wrong++;
            else
                in[3 * v + r] = 1;
        }
    for (size_t v = 0; v < n; v++) {
        const bool wants = d[3 * v + 2] <= 1.1f * d[3 * v];
        near += wants;
        wrong += !in[3 * v] || !in[3 * v + 1] || in[3 * v + 2] != wants;
    }
    CHECK_MSG(wrong == 0, "%zu vectors not in exactly their wanted nearest clusters", wrong);
    CHECK_MSG(near > n / 20 && near < n - n / 20,
              "%zu of %zu near a boundary: the test's rule "
              "must single out a fraction",
              near, n);
    CHECK(c.extra_vectors == near && c.offsets[k] == 2 * n + near && c.short_vectors == 0);
    kiln_clusters_free(&c);

    /* A binding cap: every vector still gets its base (at least one
     * cluster, two here), no cluster exceeds the cap, and no vector is in a
     * cluster past its wanted prefix except to complete its two (an extra
     * never spills). */
    p.extra_ratio = 1.3f;
    p.max_size = (uint32_t)(n * 3 / k); /* the least the check accepts: n x 3 slots */
    uint32_t *all = malloc(n * k * sizeof *all);
    float *alld = alloc_floats(n * k);
    REQUIRE(all);
    CHECK_OK(ctx,
             kiln_nearest_cpu(NULL, ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim}, k,
                              (kiln_nearest_out){all, alld}));
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim},
                                       &p, NULL, &c));
    REQUIRE(c.members);
    kiln_clusters capped = c;
    capped.short_vectors = 0;
    uint32_t *cnt = calloc(n, sizeof *cnt), *inside = calloc(n, sizeof *inside);
    REQUIRE(cnt && inside);
    for (uint32_t j = 0; j < k; j++)
        for (uint64_t t = c.offsets[j]; t < c.offsets[j + 1]; t++) {
            const uint32_t v = c.members[t];
            uint32_t w = 2;
            while (w < 3 && alld[v * k + w] <= 1.3f * alld[v * k])
                w++;
            uint32_t r = 0;
            while (all[v * k + r] != j)
                r++;
            cnt[v]++;
            inside[v] += r < w;
        }
    size_t spilt_extra = 0, lost = 0;
    for (size_t v = 0; v < n; v++) {
        lost += cnt[v] < 2;
        spilt_extra += cnt[v] - inside[v] > (inside[v] < 2 ? 2 - inside[v] : 0);
    }
    CHECK_MSG(lost == 0 && c.short_vectors == 0, "%zu vectors in fewer than 2 clusters", lost);
    CHECK_MSG(spilt_extra == 0, "%zu vectors have an extra past their wanted clusters",
              spilt_extra);
    CHECK(c.max_members <= p.max_size && c.spilled_vectors > 0 && c.extra_vectors > 0);
    for (size_t v = 0; v < n; v++)
        capped.short_vectors += cnt[v] < 3; /* check_clusters counts below 3 */
    CHECK(check_clusters(&capped, n, p.max_size, 3) == 0);
    free(cnt);
    free(inside);
    free(all);
    free(alld);
    kiln_clusters_free(&c);
    /* A cap too small for every vector's base and extras is refused. */
    p.max_size = (uint32_t)(n * 3 / k) - 1;
    CHECK(kiln_clusters_assign(ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim}, &p,
                               NULL, &c) == KILN_E_ARG);
    p.max_size = (uint32_t)n;

    /* A ratio no candidate meets: two each. A NaN ratio is refused. */
    p.extra_ratio = 0.5f;
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim},
                                       &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(c.offsets[k] == 2 * n && c.extra_vectors == 0);
    kiln_clusters_free(&c);
    p.extra_ratio = NAN;
    CHECK(kiln_clusters_assign(ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim}, &p,
                               NULL, &c) == KILN_E_ARG);
    free(in);
    free(ids);
    free(d);
    free(x);
    free(cent);
}

/* One blob holds 80% of the rows: the cap holds, its cluster keeps the
 * nearest rows, the rest spill. */
static void test_cap(kiln_ctx *ctx) {
    const size_t sizes[3] = {2400, 300, 300};
    const size_t n = 3000;
    const uint32_t dim = 8, k = 6;
    uint32_t blob[3000];
    float *x = blob_rows(41, dim, sizes, 3, 10.0, 1.0, blob);
    /* Centroids: the three blob means and three random points. */
    float cent[6 * 8] = {0};
    for (size_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < dim; j++)
            cent[blob[i] * dim + j] += x[i * dim + j] / (float)sizes[blob[i]];
    kiln_rng rng;
    kiln_rng_seed(&rng, 42);
    for (uint32_t j = 3 * dim; j < k * dim; j++)
        cent[j] = (float)(20.0 * kiln_rng_uniform(&rng) - 10.0);

    kiln_kmeans_params p;
    kiln_kmeans_params_init(&p);
    p.replicas = 1;
    p.max_size = 800;
    p.threads = 2;
    kiln_clusters c;
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim},
                                       &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(check_clusters(&c, n, 800, 1) == 0);
    CHECK(c.max_members == 800 && c.offsets[1] - c.offsets[0] == 800);
    CHECK(c.spilled_vectors == 1600 && c.short_vectors == 0);
    /* Cluster 0 kept the blob-0 rows nearest its centroid. */
    float *in0 = calloc(n, sizeof *in0);
    REQUIRE(in0);
    for (uint64_t t = c.offsets[0]; t < c.offsets[1]; t++)
        in0[c.members[t]] = 1.0f;
    double kept_max = 0.0, out_min = INFINITY;
    const kiln_dist_fn dist = kiln_distance_fn(KILN_METRIC_L2);
    for (size_t i = 0; i < n; i++) {
        const double d = dist(x + i * dim, cent, dim);
        if (in0[i] != 0.0f && d > kept_max)
            kept_max = d;
        if (in0[i] == 0.0f && blob[i] == 0 && d < out_min)
            out_min = d;
    }
    CHECK_MSG(kept_max <= out_min, "cluster 0 kept a row at %g but spilled one at %g", kept_max,
              out_min);
    kiln_clusters_free(&c);
    free(in0);

    /* Two replicas and a cap that leaves no slack for the big blob. */
    p.replicas = 2;
    p.max_size = 1000;
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim},
                                       &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(check_clusters(&c, n, 1000, 2) == 0);
    CHECK(c.max_members <= 1000);
    kiln_clusters_free(&c);

    /* Exactly enough slots, no spare candidates: vectors run out of their
     * list and are placed wherever there is room (decision 3 of assign.c). */
    p.replicas = 1;
    p.spare = 0;
    p.max_size = 500;
    CHECK_OK(ctx, kiln_clusters_assign(ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, k, dim},
                                       &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(check_clusters(&c, n, 500, 1) == 0);
    CHECK(c.offsets[k] == n && c.max_members == 500 && c.far_vectors > 0 && c.short_vectors == 0);
    kiln_clusters_free(&c);

    /* Trained on the skewed data and capped: the cap still holds. */
    kiln_kmeans_params_init(&p);
    p.clusters = 6;
    p.max_size = 1100;
    p.threads = 2;
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, dim}, &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(check_clusters(&c, n, 1100, 2) == 0);
    kiln_clusters_free(&c);
    free(x);
}

/* ==== Backends and arguments ==== */

typedef struct counting_backend {
    unsigned calls;
    uint32_t bad_id; /* nonzero: return this id, to test the check */
} counting_backend;

static kiln_status counting_nearest(void *user, kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                                    uint32_t r, kiln_nearest_out out) {
    counting_backend *const cb = user;
    cb->calls++;
    kiln_status st = kiln_nearest_cpu(NULL, ctx, rows, cent, r, out);
    if (cb->bad_id && rows.n > 0)
        out.ids[0] = cb->bad_id;
    return st;
}

static void test_backend_and_args(kiln_ctx *ctx) {
    const size_t n = 400;
    const uint32_t dim = 6;
    float *x = uniform_rows(51, n, dim, 0.0, 1.0);
    kiln_kmeans_params p;
    kiln_kmeans_params_init(&p);
    p.clusters = 5;
    p.iters = 3;
    counting_backend cb = {0, 0};
    kiln_clusters a, b;
    const kiln_nearest_backend counting = {counting_nearest, &cb};
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, dim}, &p, &counting, &a));
    CHECK(cb.calls >= 2);
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, dim}, &p, NULL, &b));
    REQUIRE(a.members && b.members);
    CHECK(memcmp(a.members, b.members, a.offsets[a.k] * sizeof *a.members) == 0);
    kiln_clusters_free(&a);
    kiln_clusters_free(&b);
    cb.bad_id = 5;
    CHECK_FAILS(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, dim}, &p, &counting, &a),
                KILN_E_INTERNAL, "returned centroid id 5 >= k 5");
    CHECK(a.members == NULL && a.offsets == NULL);

    /* The choice of k. */
    uint32_t k;
    kiln_kmeans_params_init(&p);
    CHECK_OK(ctx, kiln_kmeans_k(ctx, 1000000, &p, &k));
    CHECK(k == 977); /* ceil(1e6 * 2 / 2048) */
    p.max_size = 1024;
    CHECK_OK(ctx, kiln_kmeans_k(ctx, 1000000, &p, &k));
    CHECK(k == 1954); /* raised so the cap is feasible */
    kiln_kmeans_params_init(&p);
    CHECK_OK(ctx, kiln_kmeans_k(ctx, 100, &p, &k));
    CHECK(k == 2); /* at least `replicas` */
    CHECK_OK(ctx, kiln_kmeans_k(ctx, 1, &p, &k));
    CHECK(k == 1);

    /* One vector. */
    kiln_clusters c;
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, 1, dim}, &p, NULL, &c));
    REQUIRE(c.members);
    CHECK(c.k == 1 && c.offsets[1] == 1 && c.members[0] == 0 && c.replicas == 1);
    CHECK(memcmp(c.centroids, x, dim * sizeof *x) == 0);
    kiln_clusters_free(&c);

    /* Impossible or invalid requests. */
    p.clusters = 4;
    p.max_size = 150;
    CHECK_FAILS(ctx, kiln_kmeans_k(ctx, n, &p, &k), KILN_E_ARG, "cluster cap too small");
    CHECK_FAILS(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, dim}, &p, NULL, &c), KILN_E_ARG,
                "4 clusters x max_size 150 = 600 slots < 400 vectors x 2 replicas");
    float cent[4 * 6] = {0};
    CHECK_FAILS(ctx,
                kiln_clusters_assign(ctx, (kiln_rows){x, n, dim}, (kiln_centroids){cent, 4, dim},
                                     &p, NULL, &c),
                KILN_E_ARG, "cluster cap too small");
    CHECK(c.members == NULL);
    p.max_size = 0;
    p.clusters = 401;
    CHECK_FAILS(ctx, kiln_kmeans_k(ctx, n, &p, &k), KILN_E_ARG, "clusters 401 exceeds");
    p.clusters = 0;
    p.replicas = 0;
    CHECK_FAILS(ctx, kiln_kmeans_k(ctx, n, &p, &k), KILN_E_ARG, "replicas must be >= 1");
    p.replicas = 2;
    p.target_size = 0;
    CHECK_FAILS(ctx, kiln_kmeans_k(ctx, n, &p, &k), KILN_E_ARG, "target_size");
    p.target_size = 100;
    CHECK_FAILS(ctx, kiln_kmeans_k(ctx, 0, &p, &k), KILN_E_ARG, "no vectors");
    free(x);
}

/* ==== Two-level k-means ==== */

/* The invariants of one row's list from a search of r over k centroids:
 * ids in range and distinct, distances nondecreasing, each the float
 * brute-force distance of its id. Returns the failures. */
static size_t check_list(const float *row, const float *cent, uint32_t k, uint32_t dim, uint32_t r,
                         const uint32_t *ids, const float *dists) {
    const kiln_dist_fn dist = kiln_distance_fn(KILN_METRIC_L2);
    size_t bad = 0;
    for (uint32_t j = 0; j < r; j++) {
        if (ids[j] >= k) {
            bad++;
            continue;
        }
        for (uint32_t t = 0; t < j; t++)
            bad += ids[t] == ids[j];
        bad += j > 0 && dists[j] < dists[j - 1];
        bad += dists[j] != dist(row, cent + (size_t)ids[j] * dim, dim);
    }
    return bad;
}

/* Seeded clustered data, k = 300 (two levels): training and assignment
 * give the same bytes with 1 and 2 threads; the search agrees with brute
 * force; the cap and the one-cluster floor hold. */
static void test_tree(kiln_ctx *ctx) {
    const size_t n = 40000;
    const uint32_t dim = 16, k = 300, r = 3;
    float *x = alloc_floats(n * dim);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n, dim, 120, 11, x, (size_t)n * dim));
    kiln_kmeans_params p;
    kiln_kmeans_params_init(&p);
    p.clusters = k;
    p.max_size = (uint32_t)(3 * (n * 2 / k)); /* the device build's 3x the fair share */
    p.sample = 64 * k;
    p.seed = 5;
    p.threads = 1;
    float *c1 = alloc_floats((size_t)k * dim), *c2 = alloc_floats((size_t)k * dim);
    kiln_kmeans_tree t1, t2;
    CHECK_OK(ctx, kiln_kmeans_train_tree(ctx, (kiln_rows){x, n, dim}, &p, NULL, c1, &t1));
    p.threads = 2;
    CHECK_OK(ctx, kiln_kmeans_train_tree(ctx, (kiln_rows){x, n, dim}, &p, NULL, c2, &t2));
    REQUIRE(t1.coarse && t2.coarse);
    CHECK_MSG(t1.cells > 1 && t1.cells <= 18, "%u coarse cells for k %u", t1.cells, k);
    CHECK(t1.cells == t2.cells && t1.dim == dim);
    CHECK(memcmp(t1.coarse, t2.coarse, (size_t)t1.cells * dim * sizeof(float)) == 0);
    CHECK(memcmp(c1, c2, (size_t)k * dim * sizeof(float)) == 0);

    /* The search against brute force, for the assignment's setting (0, 0)
     * and the refining Lloyd's (3 probes, 1 copy), and one where centroids
     * sit in several probed files (3, 3). */
    const size_t q = 5000;
    const float *const xq = x + (n - q) * dim;
    uint32_t *fid = malloc(q * r * sizeof *fid), *tid = malloc(q * r * sizeof *tid),
             *tid2 = malloc(q * r * sizeof *tid2);
    float *fd = alloc_floats(q * r), *td = alloc_floats(q * r), *td2 = alloc_floats(q * r);
    REQUIRE(fid && tid && tid2);
    const kiln_rows rq = {xq, q, dim};
    const kiln_centroids cq = {c1, k, dim};
    CHECK_OK(ctx, kiln_nearest_cpu(NULL, ctx, rq, cq, r, (kiln_nearest_out){fid, fd}));
    static const uint32_t settings[][2] = {{0, 0}, {3, 1}, {3, 3}};
    for (size_t v = 0; v < 3; v++) {
        const uint32_t probes = settings[v][0], copies = settings[v][1];
        kiln_kmeans_tree_search ts = {.tree = &t1, .probes = probes, .copies = copies};
        ts.threads = 1;
        CHECK_OK(ctx, kiln_kmeans_tree_nearest(ctx, &ts, rq, cq, r, (kiln_nearest_out){tid, td}));
        ts.threads = 2;
        CHECK_OK(ctx, kiln_kmeans_tree_nearest(ctx, &ts, rq, cq, r, (kiln_nearest_out){tid2, td2}));
        CHECK(memcmp(tid, tid2, q * r * sizeof *tid) == 0);
        CHECK(memcmp(td, td2, q * r * sizeof *td) == 0);
        size_t bad = 0, below = 0, first = 0, all = 0;
        for (size_t i = 0; i < q; i++) {
            bad += check_list(xq + i * dim, c1, k, dim, r, tid + i * r, td + i * r);
            for (uint32_t j = 0; j < r; j++)
                below += td[i * r + j] < fd[i * r + j];
            first += tid[i * r] == fid[i * r];
            all += memcmp(tid + i * r, fid + i * r, r * sizeof *tid) == 0;
        }
        const double share1 = (double)first / q, share_all = (double)all / q;
        fprintf(stderr, "tree search probes %u copies %u: nearest %.4f, all %u %.4f\n", probes,
                copies, share1, r, share_all);
        CHECK_MSG(bad == 0, "probes %u copies %u: %zu bad list entries", probes, copies, bad);
        CHECK_MSG(below == 0, "probes %u copies %u: %zu distances below brute force", probes,
                  copies, below);
        CHECK_MSG(share1 >= 0.95, "probes %u copies %u: nearest found for %.4f of rows", probes,
                  copies, share1);
        CHECK_MSG(share_all >= 0.80, "probes %u copies %u: all %u nearest for %.4f of rows", probes,
                  copies, r, share_all);
    }

    /* The whole build, both thread counts: the same bytes, the cap held,
     * every vector placed; as good a clustering as the flat code's. */
    kiln_clusters a, b;
    p.threads = 1;
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, dim}, &p, NULL, &a));
    p.threads = 2;
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, dim}, &p, NULL, &b));
    REQUIRE(a.members && b.members);
    CHECK(a.k == k && b.k == k);
    CHECK(memcmp(a.centroids, c1, (size_t)k * dim * sizeof(float)) == 0);
    CHECK(memcmp(a.centroids, b.centroids, (size_t)k * dim * sizeof(float)) == 0);
    CHECK(memcmp(a.offsets, b.offsets, (k + 1) * sizeof *a.offsets) == 0);
    CHECK(memcmp(a.members, b.members, a.offsets[k] * sizeof *a.members) == 0);
    CHECK(a.spilled_vectors == b.spilled_vectors && a.far_vectors == b.far_vectors &&
          a.short_vectors == b.short_vectors);
    CHECK(check_clusters(&a, n, p.max_size, 2) == 0);
    CHECK(a.max_members <= p.max_size);
    float *flat = alloc_floats((size_t)k * dim);
    CHECK_OK(ctx, kiln_kmeans_train(ctx, (kiln_rows){x, n, dim}, &p, NULL, flat));
    const double s_tree = sse(x, n, dim, c1, k), s_flat = sse(x, n, dim, flat, k);
    fprintf(stderr, "tree k=%u: SSE %.5g (flat %.5g), largest %u, spilled %llu, far %llu\n", k,
            s_tree, s_flat, a.max_members, (unsigned long long)a.spilled_vectors,
            (unsigned long long)a.far_vectors);
    CHECK_MSG(s_tree < 1.05 * s_flat, "SSE %.5g two-level, %.5g flat", s_tree, s_flat);
    kiln_clusters_free(&a);
    kiln_clusters_free(&b);

    /* A tight cap: the full-ranking fallback (assign.c decision 3) places
     * what the lists cannot, and the cap still holds. */
    p.max_size = (uint32_t)((n * 2 + k - 1) / k) + 2;
    p.spare = 0;
    CHECK_OK(ctx, kiln_clusters_build(ctx, (kiln_rows){x, n, dim}, &p, NULL, &a));
    REQUIRE(a.members);
    CHECK(check_clusters(&a, n, p.max_size, 2) == 0);
    CHECK_MSG(a.far_vectors > 0, "tight cap: no vector needed the full ranking");
    kiln_clusters_free(&a);

    /* Below the threshold the flat trainer runs, byte for byte. */
    kiln_kmeans_params_init(&p);
    p.clusters = 40;
    p.seed = 5;
    kiln_kmeans_tree t3;
    CHECK_OK(ctx, kiln_kmeans_train_tree(ctx, (kiln_rows){x, n, dim}, &p, NULL, c1, &t3));
    CHECK_OK(ctx, kiln_kmeans_train(ctx, (kiln_rows){x, n, dim}, &p, NULL, c2));
    CHECK(t3.cells == 0 && t3.coarse == NULL && t3.dim == dim);
    CHECK(memcmp(c1, c2, 40 * dim * sizeof(float)) == 0);
    kiln_kmeans_tree_free(&t3);

    /* A backend's bad answer inside the search fails loudly. */
    counting_backend cb = {0, 1000000};
    const kiln_kmeans_tree_search bad = {
        .tree = &t1, .nearest = {counting_nearest, &cb}, .threads = 2};
    CHECK_FAILS(ctx, kiln_kmeans_tree_nearest(ctx, &bad, rq, cq, r, (kiln_nearest_out){tid, td}),
                KILN_E_INTERNAL, "coarse cell 1000000");
    const kiln_kmeans_tree_search lists = {.tree = &t1, .threads = 2};
    CHECK_FAILS(ctx,
                kiln_kmeans_tree_nearest(ctx, &lists, rq, cq, k + 1, (kiln_nearest_out){tid, td}),
                KILN_E_ARG, "1 <= r <= k");

    kiln_kmeans_tree_free(&t1);
    kiln_kmeans_tree_free(&t2);
    CHECK(t1.coarse == NULL && t1.cells == 0);
    kiln_kmeans_tree_free(&t1);
    kiln_kmeans_tree_free(NULL);
    free(fid);
    free(tid);
    free(tid2);
    free(fd);
    free(td);
    free(td2);
    free(flat);
    free(c1);
    free(c2);
    free(x);
}

/* ==== Main ==== */

/* Re-runs this binary's backend tests with a narrower KILN_SIMD (the
 * dispatch is fixed once per process). Skips ISAs the CPU lacks. */
static void run_child(const char *self, const char *simd) {
    if (strcmp(simd, "avx2") == 0 && !kiln_cpu_has_avx2())
        return;
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        setenv("KILN_SIMD", simd, 1);
        execl(self, self, "--nearest-only", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "KILN_SIMD=%s child failed", simd);
}

int main(int argc, char **argv) {
    kiln_ctx *ctx = NULL;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    kiln_ctx_set_progress(ctx, KILN_PROGRESS_OFF);
    fprintf(stderr, "simd: %s\n", kiln_simd_name());
    test_nearest(ctx);
    test_nearest_small_k(ctx);
    if (argc > 1 && strcmp(argv[1], "--nearest-only") == 0) {
        kiln_ctx_free(ctx);
        return check_report("test_kmeans (child)");
    }
    test_blobs(ctx);
    test_replicas(ctx);
    test_boundary_replicas(ctx);
    test_cap(ctx);
    test_determinism(ctx);
    test_backend_and_args(ctx);
    test_siftsmall(ctx);
    test_tree(ctx);
    kiln_ctx_free(ctx);
    if (!getenv("KILN_SIMD")) {
        run_child("/proc/self/exe", "avx2");
        run_child("/proc/self/exe", "scalar");
    }
    return check_report("test_kmeans");
}
