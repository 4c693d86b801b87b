/* test_synth.c -- the synthetic data generator (common/synth.c): it writes
 * only inside the buffer it is given, refuses sizes that overflow, and a
 * prefix of a larger set is the smaller set. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kiln.h"

static void test_buffer_length(kiln_ctx *ctx) {
    const size_t n = 100, d = 8;
    float *v = malloc((n * d + 1) * sizeof *v);
    REQUIRE(v);
    v[n * d] = 12345.0f; /* a guard just past the rows */
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n, d, 4, 7, v, n * d + 1));
    CHECK(v[n * d] == 12345.0f);
    /* A buffer one float short is refused before anything is written. */
    memset(v, 0, (n * d + 1) * sizeof *v);
    CHECK_FAILS(ctx, kiln_synth_clustered(ctx, n, d, 4, 7, v, n * d - 1), KILN_E_ARG, "buffer");
    bool untouched = true;
    for (size_t i = 0; i < n * d; i++)
        untouched &= v[i] == 0.0f;
    CHECK(untouched);
    /* n * dim that wraps to a small number (the kiln generate overflow). */
    CHECK_FAILS(ctx, kiln_synth_clustered(ctx, (size_t)1 << 62, 4, 4, 7, v, n * d), KILN_E_RANGE,
                "overflow");
    CHECK_FAILS(ctx, kiln_synth_clustered(ctx, n, 0, 4, 7, v, n * d), KILN_E_ARG, "dim");
    CHECK_FAILS(ctx, kiln_synth_clustered(ctx, n, d, 4, 7, NULL, 0), KILN_E_ARG, "buffer");
    CHECK_OK(ctx, kiln_synth_clustered(ctx, 0, d, 4, 7, NULL, 0));
    free(v);
}

static void test_prefix(kiln_ctx *ctx) {
    const size_t d = 16;
    float *a = malloc(50 * d * sizeof *a), *b = malloc(20 * d * sizeof *b);
    REQUIRE(a && b);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, 50, d, 5, 3, a, 50 * d));
    CHECK_OK(ctx, kiln_synth_clustered(ctx, 20, d, 5, 3, b, 20 * d));
    CHECK(memcmp(a, b, 20 * d * sizeof *a) == 0);
    free(a);
    free(b);
}

int main(void) {
    kiln_ctx *ctx;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    test_buffer_length(ctx);
    test_prefix(ctx);
    kiln_ctx_free(ctx);
    return check_report("test_synth");
}
