/* data_util.h -- the shared datasets (../shared/datasets) as the tests read
 * them: base and queries in memory, and optionally the exact top k of each
 * query (kiln_knn_exact, L2), the oracle every recall check uses. A dataset
 * that is absent skips its part of the test (SKIP_PART), never fails it. */
#ifndef KILN_DATA_UTIL_H
#define KILN_DATA_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "kiln.h"

#define TEST_DATA_DIR "../shared/datasets"

typedef struct test_data {
    const char *name;
    float *base, *q;
    size_t n, nq, d;
    int64_t *gt; /* nq rows of the exact top gt_k labels (row numbers); NULL when gt_k is 0 */
} test_data;

/* Reads DIR/name/name_base.fvecs and _query.fvecs, and with gt_k > 0 the
 * exact top gt_k of each query. false (a skipped part) when absent. */
static inline bool test_data_load(kiln_ctx *ctx, const char *name, uint32_t gt_k, test_data *out) {
    char path[512];
    kiln_dataset *b = NULL, *q = NULL;
    snprintf(path, sizeof path, TEST_DATA_DIR "/%s/%s_base.fvecs", name, name);
    if (kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &b)) {
        SKIP_PART("%s: %s (../shared/datasets absent)", name, kiln_errmsg(ctx));
        return false;
    }
    snprintf(path, sizeof path, TEST_DATA_DIR "/%s/%s_query.fvecs", name, name);
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &q));
    REQUIRE(q);
    out->name = name;
    out->n = kiln_dataset_count(b);
    out->d = kiln_dataset_dim(b);
    out->nq = kiln_dataset_count(q);
    out->base = malloc(out->n * out->d * sizeof(float));
    out->q = malloc(out->nq * out->d * sizeof(float));
    out->gt = gt_k ? malloc(out->nq * gt_k * sizeof *out->gt) : NULL;
    REQUIRE(out->base && out->q && (!gt_k || out->gt));
    CHECK_OK(ctx, kiln_dataset_read_f32(b, 0, out->n, out->base));
    CHECK_OK(ctx, kiln_dataset_read_f32(q, 0, out->nq, out->q));
    if (gt_k)
        CHECK_OK(ctx, kiln_knn_exact(ctx, out->base, out->n, out->q, out->nq, out->d,
                                     KILN_METRIC_L2, gt_k, 0, out->gt, NULL));
    kiln_dataset_free(b);
    kiln_dataset_free(q);
    return true;
}

static inline void test_data_free(test_data *d) {
    free(d->base);
    free(d->q);
    free(d->gt);
}

#endif /* KILN_DATA_UTIL_H */
