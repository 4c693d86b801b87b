/* test_device_build.c -- kiln build --method device end to end on PoCL (or
 * whatever OpenCL device is present): recall against exact ground truth on
 * real and synthetic data for every metric, the validator after every build,
 * determinism with one thread, tiny inputs, and bad device specs. Skips when
 * no OpenCL platform is installed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../graph/hnsw_internal.h"
#include "check.h"
#include "recall.h"
#include "kiln.h"

#define DATA "../shared/datasets"

static void device_params(kiln_build_params *p) {
    kiln_build_params_init(p);
    p->method = KILN_METHOD_DEVICE;
}

/* A real dataset with its own ground truth: recall@10 at ef=64 >= 0.95. */
static void test_real(kiln_ctx *ctx, const char *name) {
    char path[256];
    kiln_dataset *base = NULL, *qs = NULL, *gtds = NULL;
    snprintf(path, sizeof path, DATA "/%s/%s_base.fvecs", name, name);
    if (kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &base)) {
        SKIP_PART("%s: %s (../shared/datasets absent)", name, kiln_errmsg(ctx));
        return;
    }
    snprintf(path, sizeof path, DATA "/%s/%s_query.fvecs", name, name);
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &qs));
    snprintf(path, sizeof path, DATA "/%s/%s_groundtruth.ivecs", name, name);
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &gtds));
    REQUIRE(qs && gtds);
    size_t nq = kiln_dataset_count(qs), d = kiln_dataset_dim(qs), gk = kiln_dataset_dim(gtds);
    float *q = malloc(nq * d * sizeof *q);
    int32_t *g32 = malloc(nq * gk * sizeof *g32);
    int64_t *gt = malloc(nq * gk * sizeof *gt);
    REQUIRE(q && g32 && gt);
    CHECK_OK(ctx, kiln_dataset_read_f32(qs, 0, nq, q));
    CHECK_OK(ctx, kiln_dataset_read_i32(gtds, 0, nq, g32));
    for (size_t i = 0; i < nq * gk; i++)
        gt[i] = g32[i];

    kiln_build_params p;
    device_params(&p);
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_build_dataset(ctx, base, &p, &ix));
    REQUIRE(ix);
    CHECK_OK(ctx, kiln_index_check(ix));
    kiln_build_report rep;
    CHECK_OK(ctx, kiln_index_build_report(ix, &rep));
    CHECK(rep.method == KILN_METHOD_DEVICE && rep.clusters >= 1 && rep.device_batches >= 1);
    CHECK(rep.device_name[0] != '\0' && rep.n_stages >= 5);
    double r = search_recall(ctx, ix, q, nq, gt, gk, 10, 64);
    CHECK_MSG(r >= 0.95, "%s: device build recall@10 at ef=64 is %.4f", name, r);
    fprintf(stderr,
            "%s device build: recall@10 ef64 %.4f, %u clusters (largest %u), %.1f "
            "candidates/vector\n",
            name, r, rep.clusters, rep.max_cluster_size, rep.candidates_per_vector);
    kiln_index_free(ix);
    free(q);
    free(g32);
    free(gt);
    kiln_dataset_free(base);
    kiln_dataset_free(qs);
    kiln_dataset_free(gtds);
}

/* Every metric on a seeded set, against kiln_knn_exact. */
static void test_metrics(kiln_ctx *ctx) {
    const size_t n = 6000, nq = 200, d = 48;
    float *x = malloc((n + nq) * d * sizeof *x);
    int64_t *gt = malloc(nq * 10 * sizeof *gt);
    REQUIRE(x && gt);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n + nq, d, 24, 17, x, (size_t)(n + nq) * d));
    const kiln_metric metrics[] = {KILN_METRIC_L2, KILN_METRIC_IP, KILN_METRIC_COS};
    for (size_t m = 0; m < 3; m++) {
        CHECK_OK(ctx, kiln_knn_exact(ctx, x, n, x + n * d, nq, d, metrics[m], 10, 0, gt, NULL));
        kiln_build_params p;
        device_params(&p);
        p.metric = metrics[m];
        kiln_index *ix = NULL;
        CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &ix));
        REQUIRE(ix);
        CHECK_OK(ctx, kiln_index_check(ix));
        double r = search_recall(ctx, ix, x + n * d, nq, gt, 10, 10, 64);
        CHECK_MSG(r >= 0.95, "%s: device build recall@10 at ef=64 is %.4f",
                  kiln_metric_name(metrics[m]), r);
        fprintf(stderr, "synthetic %s device build: recall@10 ef64 %.4f\n",
                kiln_metric_name(metrics[m]), r);
        kiln_index_free(ix);
    }
    free(x);
    free(gt);
}

/* Boundary extras (host/device_build.c default_replicas): above 2048
 * clusters' worth, the automatic choice adds a third cluster for some of
 * the vectors, which an explicit --replicas 2 does not; both graphs are
 * valid and find their neighbours. (A test-sized set has few points per
 * centroid, so its centroids sit close to their members and few vectors
 * are near a boundary: about 1% here, 22% at 4M x 128; test_kmeans checks
 * the rule itself.) */
static void test_boundary_replicas(kiln_ctx *ctx) {
    const size_t n = 20000, nq = 200, d = 16;
    float *x = malloc((n + nq) * d * sizeof *x);
    int64_t *gt = malloc(nq * 10 * sizeof *gt);
    REQUIRE(x && gt);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n + nq, d, 40, 23, x, (size_t)(n + nq) * d));
    CHECK_OK(ctx, kiln_knn_exact(ctx, x, n, x + n * d, nq, d, KILN_METRIC_L2, 10, 0, gt, NULL));
    double mean[2] = {0, 0}, recall[2] = {0, 0};
    for (int fixed = 0; fixed < 2; fixed++) {
        kiln_build_params p;
        device_params(&p);
        p.clusters = 4400; /* 2200 clusters' worth: above the 2048 of the switch */
        p.replicas = fixed ? 2 : 0;
        kiln_index *ix = NULL;
        CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &ix));
        REQUIRE(ix);
        CHECK_OK(ctx, kiln_index_check(ix));
        kiln_build_report rep;
        CHECK_OK(ctx, kiln_index_build_report(ix, &rep));
        CHECK(rep.replicas == 2 && rep.clusters == 4400);
        mean[fixed] = rep.mean_replicas;
        recall[fixed] = search_recall(ctx, ix, x + n * d, nq, gt, 10, 10, 64);
        kiln_index_free(ix);
    }
    CHECK_MSG(mean[0] > 2.0 && mean[0] < 2.9 && mean[1] == 2.0,
              "mean replicas: automatic %.4f, fixed 2 %.4f", mean[0], mean[1]);
    CHECK_MSG(recall[0] >= 0.9 && recall[1] >= 0.9,
              "recall@10 at ef 64: automatic %.4f, fixed 2 %.4f", recall[0], recall[1]);
    fprintf(stderr,
            "boundary extras: mean replicas %.4f (fixed 2: %.4f), recall@10 ef64 %.4f / %.4f\n",
            mean[0], mean[1], recall[0], recall[1]);
    free(x);
    free(gt);
}

static void test_determinism(kiln_ctx *ctx) {
    const size_t n = 3000, d = 20;
    float *x = malloc(n * d * sizeof *x);
    REQUIRE(x);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n, d, 10, 2, x, (size_t)n * d));
    kiln_build_params p;
    device_params(&p);
    p.threads = 1;
    p.seed = 3;
    kiln_index *a = NULL, *b = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &a));
    CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &b));
    REQUIRE(a && b);
    CHECK(a->entry_point == b->entry_point);
    CHECK(memcmp(a->links0, b->links0, n * (a->M0 + 1) * sizeof(uint32_t)) == 0);
    CHECK(a->upper_len == b->upper_len &&
          memcmp(a->upper_pool, b->upper_pool, a->upper_len * sizeof(uint32_t)) == 0);
    kiln_index_free(a);
    kiln_index_free(b);
    free(x);
}

static void test_small_and_bad(kiln_ctx *ctx) {
    float x[40 * 3];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        x[i] = (float)((i * 7919) % 113) / 17.0f;
    kiln_build_params p;
    device_params(&p);
    const size_t sizes[] = {0, 1, 2, 3, 40};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        kiln_index *ix = NULL;
        CHECK_OK(ctx, kiln_index_build(ctx, x, sizes[s], 3, &p, &ix));
        REQUIRE(ix);
        CHECK(kiln_index_count(ix) == sizes[s]);
        CHECK_OK(ctx, kiln_index_check(ix));
        if (sizes[s]) {
            int64_t lab[1];
            kiln_search_params sp = {.k = 1, .ef = 16, .threads = 1};
            CHECK_OK(ctx, kiln_index_search(ix, x, 1, &sp, lab, NULL));
            CHECK(lab[0] == 0);
        }
        kiln_index_free(ix);
    }
    kiln_index *ix = (kiln_index *)1;
    p.device = "7:7";
    CHECK_FAILS(ctx, kiln_index_build(ctx, x, 40, 3, &p, &ix), KILN_E_NO_DEVICE, "7:7");
    CHECK(ix == NULL);
    p.device = "banana";
    CHECK(kiln_index_build(ctx, x, 40, 3, &p, &ix) == KILN_E_ARG);
    device_params(&p);
    p.replicas = 1;
    CHECK_FAILS(ctx, kiln_index_build(ctx, x, 40, 3, &p, &ix), KILN_E_ARG, "replicas");
}

/* ef_construction changes the device build (issue 11 U1: above 64 it was
 * ignored) and is what the index file and the hnswlib export record. */
static void test_ef_construction(kiln_ctx *ctx) {
    const size_t n = 4000, d = 24;
    float *x = malloc(n * d * sizeof *x);
    REQUIRE(x);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n, d, 12, 4, x, n * d));
    const uint32_t efs[2] = {200, 400};
    kiln_index *ix[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        kiln_build_params p;
        device_params(&p);
        p.threads = 1;
        p.ef_construction = efs[i];
        CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &ix[i]));
        REQUIRE(ix[i]);
        CHECK_OK(ctx, kiln_index_check(ix[i]));
        CHECK_MSG(ix[i]->ef_construction == efs[i], "ef_construction %u recorded as %u", efs[i],
                  ix[i]->ef_construction);
        const char *dir = getenv("KILN_TEST_TMP");
        char path[4096];
        snprintf(path, sizeof path, "%s/device_efc.kiln", dir && *dir ? dir : "/tmp");
        CHECK_OK(ctx, kiln_index_save(ix[i], path));
        kiln_index_info info;
        CHECK_OK(ctx, kiln_index_info_read(ctx, path, &info));
        CHECK(info.ef_construction == efs[i]);
        snprintf(path, sizeof path, "%s/device_efc.hnswlib", dir && *dir ? dir : "/tmp");
        CHECK_OK(ctx, kiln_index_export_hnswlib(ix[i], path, NULL));
        FILE *f = fopen(path, "rb");
        uint8_t h[96];
        REQUIRE(f && fread(h, 1, sizeof h, f) == sizeof h);
        fclose(f);
        uint64_t efc = 0;
        for (int b = 7; b >= 0; b--)
            efc = efc << 8 | h[88 + b]; /* hnswlib's ef_construction_ */
        CHECK(efc == efs[i]);
    }
    CHECK_MSG(ix[0]->upper_len != ix[1]->upper_len ||
                  memcmp(ix[0]->upper_pool, ix[1]->upper_pool,
                         ix[0]->upper_len * sizeof(uint32_t)) != 0 ||
                  memcmp(ix[0]->links0, ix[1]->links0, n * (ix[0]->M0 + 1) * sizeof(uint32_t)) != 0,
              "ef_construction %u and %u gave the same graph", efs[0], efs[1]);
    kiln_index_free(ix[0]);
    kiln_index_free(ix[1]);
    free(x);
}

int main(void) {
    kiln_ctx *ctx;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    kiln_ctx_set_progress(ctx, KILN_PROGRESS_OFF);
    uint32_t ndev = 0;
    if (kiln_device_count(ctx, &ndev) != KILN_OK || ndev == 0)
        SKIP("no OpenCL device: %s", kiln_errmsg(ctx));
    test_small_and_bad(ctx);
    test_determinism(ctx);
    test_ef_construction(ctx);
    test_metrics(ctx);
    test_boundary_replicas(ctx);
    test_real(ctx, "siftsmall");
    test_real(ctx, "fmnistsmall");
    kiln_ctx_free(ctx);
    return check_report("test_device_build");
}
