/* recall.h -- recall@k against exact ground truth, the measure every
 * recall check in the tests uses: the fraction of each query's true k
 * nearest (the first k of its ground-truth row) that the index returned. */
#ifndef KILN_RECALL_H
#define KILN_RECALL_H

#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "kiln.h"

/* labels: nq rows of k; gt: nq rows of gk >= k ids. */
static inline double recall_at(const int64_t *labels, const int64_t *gt, size_t nq, uint32_t k,
                               size_t gk) {
    size_t hits = 0;
    for (size_t i = 0; i < nq; i++)
        for (uint32_t j = 0; j < k; j++)
            for (uint32_t g = 0; g < k; g++)
                if (labels[i * k + j] == gt[i * gk + g]) {
                    hits++;
                    break;
                }
    return nq ? (double)hits / ((double)nq * k) : 0.0;
}

/* Searches the nq queries with (k, ef) on one thread and returns recall@k. */
static inline double search_recall(kiln_ctx *ctx, const kiln_index *ix, const float *q, size_t nq,
                                   const int64_t *gt, size_t gk, uint32_t k, uint32_t ef) {
    int64_t *labels = malloc((nq ? nq : 1) * k * sizeof *labels);
    REQUIRE(labels);
    kiln_search_params sp = {.k = k, .ef = ef, .threads = 1};
    CHECK_OK(ctx, kiln_index_search(ix, q, nq, &sp, labels, NULL));
    double r = recall_at(labels, gt, nq, k, gk);
    free(labels);
    return r;
}

#endif /* KILN_RECALL_H */
