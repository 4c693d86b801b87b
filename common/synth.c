/* synth.c -- seeded synthetic datasets for the demo, tests and benchmarks.
 *
 * Design decisions:
 *  1. Each component is centre + U z + noise, with U a dim x 12 random matrix
 *     and z ~ N(0, I): the data has low intrinsic dimension like real
 *     embeddings (isotropic Gaussians in 128-d make every neighbour nearly
 *     equidistant, which tests nothing that users see).
 *  2. Row i is generated from its own PRNG stream (seed, i), so rows can be
 *     made in parallel and any prefix is stable.
 *  3. The caller gives the length of out in floats, and n * dim is checked
 *     against it (with an overflow check) before anything is written: a
 *     wrapped size upstream (kiln generate once computed (n + q) * d * 4 = 0
 *     for n = 2^62) becomes an error here instead of a write past the end.
 */
#include <math.h>
#include <stdlib.h>

#include "ctx_internal.h"
#include "rng_internal.h"

#define SYNTH_LATENT        12 /* latent dimensions per component; SIFT's intrinsic dim is ~10-20 */
#define SYNTH_CENTRE_SPREAD 1.0f
#define SYNTH_LATENT_SCALE  0.35f /* component extent relative to centre spread */
#define SYNTH_NOISE         0.02f /* isotropic noise, keeps rows distinct */

static float gauss(kiln_rng *r) {
    /* Box-Muller; one value per call is plenty fast here. */
    double u1 = kiln_rng_uniform(r), u2 = kiln_rng_uniform(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

kiln_status kiln_synth_clustered(kiln_ctx *ctx, size_t n, size_t dim, uint32_t clusters,
                                 uint64_t seed, float *out, size_t out_len) {
    if (dim == 0 || clusters == 0)
        return kiln_fail(ctx, KILN_E_ARG, "synthetic data: need dim >= 1 and clusters >= 1");
    size_t need;
    if (kiln_mul_size(n, dim, &need))
        return kiln_fail(ctx, KILN_E_RANGE, "synthetic data: %zu rows of dim %zu overflow size_t",
                         n, dim);
    if (need > 0 && !out)
        return kiln_fail(ctx, KILN_E_ARG, "synthetic data: no output buffer for %zu floats", need);
    if (need > out_len)
        return kiln_fail(
            ctx, KILN_E_ARG,
            "synthetic data: %zu rows of dim %zu need %zu floats, the buffer holds %zu", n, dim,
            need, out_len);
    if (need == 0)
        return KILN_OK;
    size_t per = dim * (1 + SYNTH_LATENT), total;
    if (kiln_mul_size(per, clusters, &total) || kiln_mul_size(total, sizeof(float), &total))
        return kiln_fail(ctx, KILN_E_RANGE, "synthetic data: %u clusters of dim %zu are too many",
                         clusters, dim);
    float *model = NULL;
    kiln_status st = kiln_alloc(ctx, total, "synthetic mixture", (void **)&model);
    if (st)
        return st;
    kiln_rng r;
    kiln_rng_seed(&r, seed ^ 0x6d6f64656cULL);
    for (size_t c = 0; c < clusters; c++) {
        float *centre = model + c * per, *u = centre + dim;
        for (size_t j = 0; j < dim; j++)
            centre[j] = SYNTH_CENTRE_SPREAD * gauss(&r);
        for (size_t j = 0; j < dim * SYNTH_LATENT; j++)
            u[j] = SYNTH_LATENT_SCALE * gauss(&r) / sqrtf((float)SYNTH_LATENT);
    }
#pragma omp parallel for schedule(static, 1024)
    for (size_t i = 0; i < n; i++) {
        kiln_rng ri;
        kiln_rng_seed(&ri, seed + 0x9e3779b97f4a7c15ULL * (i + 1));
        const float *centre = model + kiln_rng_below(&ri, clusters) * per, *u = centre + dim;
        float z[SYNTH_LATENT];
        for (int t = 0; t < SYNTH_LATENT; t++)
            z[t] = gauss(&ri);
        float *row = out + i * dim;
        for (size_t j = 0; j < dim; j++) {
            float v = centre[j] + SYNTH_NOISE * gauss(&ri);
            for (int t = 0; t < SYNTH_LATENT; t++)
                v += u[j * SYNTH_LATENT + t] * z[t];
            row[j] = v;
        }
    }
    free(model);
    return KILN_OK;
}
