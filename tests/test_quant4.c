/* test_quant4.c -- host/quant4.c: training ranges, encode/decode error,
 * clipping, the bit-sliced distance against the unsliced one (bit-exact),
 * the IP norm identity, the per-cluster top-k oracle, and, where the shared
 * datasets exist, how well the 4-bit distance ranks real data. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kiln.h"
#include "../host/quant4_internal.h"
#include "../common/rng_internal.h"

#define DATASETS "../shared/datasets"

static kiln_ctx *ctx;

/* ==== Helpers ==== */

static float *random_rows(kiln_rng *rng, size_t n, size_t dim) {
    float *v = malloc(n * dim * sizeof *v);
    REQUIRE(v);
    /* Dimensions with different offsets and widths, as real data has. */
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < dim; i++)
            v[r * dim + i] =
                (float)((double)(i % 7) - 3.0 + (1.0 + (double)(i % 5)) * kiln_rng_uniform(rng));
    return v;
}

/* Reads a whole .fvecs file (texmex) or returns NULL when it is absent. */
static float *read_fvecs(const char *path, size_t *n, size_t *dim) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    int32_t d = 0;
    REQUIRE(fread(&d, 4, 1, f) == 1 && d > 0);
    fseek(f, 0, SEEK_END);
    const long bytes = ftell(f);
    const size_t rec = 4 + (size_t)d * 4;
    REQUIRE(bytes > 0 && (size_t)bytes % rec == 0);
    *n = (size_t)bytes / rec;
    *dim = (size_t)d;
    float *v = malloc(*n * *dim * sizeof *v);
    REQUIRE(v);
    fseek(f, 0, SEEK_SET);
    for (size_t r = 0; r < *n; r++) {
        REQUIRE(fread(&d, 4, 1, f) == 1 && (size_t)d == *dim);
        REQUIRE(fread(v + r * *dim, 4, *dim, f) == *dim);
    }
    fclose(f);
    return v;
}

static int32_t *read_ivecs(const char *path, size_t *n, size_t *dim) {
    return (int32_t *)read_fvecs(path, n, dim); /* same framing, 4-byte elements */
}

/* Encodes rows and returns their codes, planes and norms. */
typedef struct encoded {
    uint8_t *codes;
    kiln_q4_set set;
} encoded;

static encoded encode_all(const kiln_q4 *q, const float *rows, size_t n) {
    encoded e = {0};
    e.codes = malloc(n * q->dim);
    REQUIRE(e.codes);
    for (size_t r = 0; r < n; r++)
        kiln_q4_codes(q, rows + r * q->dim, e.codes + r * q->dim);
    CHECK_OK(ctx, kiln_q4_set_encode(ctx, q, rows, n, 2, &e.set));
    REQUIRE(e.set.planes);
    return e;
}

static void encoded_free(encoded *e) {
    free(e->codes);
    kiln_q4_set_release(&e->set);
}

static const uint64_t *planes_of(const kiln_q4_set *s, size_t v) {
    return s->planes + v * kiln_q4_stride(s->words);
}

/* ==== Tests ==== */

static void test_errors(void) {
    float row[4] = {1, 2, 3, 4};
    kiln_q4 *q = (kiln_q4 *)1;
    CHECK_FAILS(ctx, kiln_q4_train(ctx, row, 1, 0, KILN_METRIC_L2, 1, 1, &q), KILN_E_RANGE,
                "dimension 0");
    CHECK(q == NULL);
    CHECK_FAILS(ctx, kiln_q4_train(ctx, row, 0, 4, KILN_METRIC_L2, 1, 1, &q), KILN_E_ARG,
                "no rows");
    CHECK_FAILS(ctx, kiln_q4_train(ctx, row, 1, KILN_Q4_MAX_DIM + 1, KILN_METRIC_L2, 1, 1, &q),
                KILN_E_RANGE, "outside 1..65536");
    CHECK_FAILS(ctx, kiln_q4_train(ctx, row, 1, 4, (kiln_metric)9, 1, 1, &q), KILN_E_ARG,
                "metric 9");
    kiln_q4_free(NULL);
    kiln_q4_set_release(NULL);
}

/* Inside [lo, lo + 15 step] the decoded value is within step/2; outside it
 * clips to the end levels. */
static void test_encode_decode(kiln_metric metric) {
    kiln_rng rng;
    kiln_rng_seed(&rng, 11);
    const size_t n = 3000, dim = 37;
    float *rows = random_rows(&rng, n, dim);
    kiln_q4 *q = NULL;
    CHECK_OK(ctx, kiln_q4_train(ctx, rows, n, dim, metric, 5, 2, &q));
    REQUIRE(q);
    CHECK(q->step > 0 && q->dim == dim && q->words == 1 && q->sample_rows == n);
    float x[37], y[37];
    uint8_t c[37];
    int bad = 0;
    for (int t = 0; t < 2000; t++) {
        for (size_t i = 0; i < dim; i++)
            x[i] = q->lo[i] + (float)(15.0 * kiln_rng_uniform(&rng)) * q->step;
        kiln_q4_codes(q, x, c);
        kiln_q4_decode(q, c, y);
        for (size_t i = 0; i < dim; i++) {
            const float tol = q->step * 0.5f * (1 + 1e-5f) + fabsf(x[i]) * 1e-6f;
            bad += c[i] > 15 || fabsf(y[i] - x[i]) > tol;
        }
    }
    CHECK_MSG(bad == 0, "%d values decoded further than step/2 (%s)", bad,
              kiln_metric_name(metric));
    for (size_t i = 0; i < dim; i++) {
        x[i] = i % 2 ? q->lo[i] - 10 * q->step - 1 : q->lo[i] + 16 * q->step + 1;
        if (i == 3)
            x[i] = NAN;
    }
    kiln_q4_codes(q, x, c);
    for (size_t i = 0; i < dim; i++)
        CHECK(c[i] == (i == 3 || i % 2 ? 0 : 15));
    /* Every trained range covers the middle 99.8% of its training values. */
    size_t outside = 0;
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < dim; i++) {
            const float v = rows[r * dim + i];
            const float lo = q->lo[i] - q->step * 0.5f, hi = q->lo[i] + q->step * 15.5f;
            outside += v < lo || v > hi;
        }
    CHECK_MSG(outside <= n * dim * 3 / 1000, "%zu of %zu training values clip", outside, n * dim);
    kiln_q4_free(q);
    free(rows);
}

/* Percentile ranges ignore a few outliers; the step follows the widest
 * dimension, and each dimension's levels are centred on its own range. */
static void test_clipping(void) {
    const size_t n = 10000, dim = 3;
    float *rows = malloc(n * dim * sizeof *rows);
    REQUIRE(rows);
    for (size_t r = 0; r < n; r++) {
        rows[r * dim + 0] = (float)(r % 100);          /* 0..99 */
        rows[r * dim + 1] = 1000.0f + (float)(r % 10); /* 1000..1009 */
        rows[r * dim + 2] = (float)(r % 50);
    }
    rows[5 * dim + 0] = 1e9f; /* 2 outliers in 10000: below the 0.1% cut */
    rows[6 * dim + 2] = -1e9f;
    kiln_q4 *q = NULL;
    CHECK_OK(ctx, kiln_q4_train(ctx, rows, n, dim, KILN_METRIC_L2, 1, 1, &q));
    REQUIRE(q);
    CHECK_MSG(fabsf(q->step - 99.0f / 15) < 1e-4f, "step %g", q->step);
    CHECK(fabsf(q->lo[0] + 7.5f * q->step - 49.5f) < 1e-3f);
    CHECK(fabsf(q->lo[1] + 7.5f * q->step - 1004.5f) < 1e-3f);
    CHECK(fabsf(q->lo[2] + 7.5f * q->step - 24.5f) < 1e-3f);
    kiln_q4_free(q);

    /* Constant data: step 1, equal codes, every distance 0. */
    for (size_t i = 0; i < n * dim; i++)
        rows[i] = 2.5f;
    CHECK_OK(ctx, kiln_q4_train(ctx, rows, n, dim, KILN_METRIC_L2, 1, 1, &q));
    REQUIRE(q);
    CHECK(q->step == 1.0f);
    encoded e = encode_all(q, rows, 4);
    float y[3];
    kiln_q4_decode(q, e.codes, y);
    CHECK(fabsf(y[0] - 2.5f) <= 0.5f && fabsf(y[1] - 2.5f) <= 0.5f && fabsf(y[2] - 2.5f) <= 0.5f);
    CHECK(kiln_q4_dist_ref(planes_of(&e.set, 0), e.set.norms[0], planes_of(&e.set, 3),
                           e.set.norms[3], e.set.words) == 0);
    encoded_free(&e);
    kiln_q4_free(q);
    free(rows);
}

/* More rows than the sample: the seeded sample is used, same seed same
 * quantizer. */
static void test_sampling(void) {
    kiln_rng rng;
    kiln_rng_seed(&rng, 3);
    const size_t n = 150000, dim = 5;
    float *rows = random_rows(&rng, n, dim);
    kiln_q4 *a = NULL, *b = NULL;
    CHECK_OK(ctx, kiln_q4_train(ctx, rows, n, dim, KILN_METRIC_L2, 42, 2, &a));
    CHECK_OK(ctx, kiln_q4_train(ctx, rows, n, dim, KILN_METRIC_L2, 42, 1, &b));
    REQUIRE(a && b);
    CHECK(a->sample_rows == 100000);
    CHECK(a->step == b->step && memcmp(a->lo, b->lo, dim * sizeof *a->lo) == 0);
    /* Widest dimension spans 5 units: the step is close to 5/15. */
    CHECK_MSG(fabsf(a->step - 5.0f / 15) < 0.01f, "step %g", a->step);
    kiln_q4_free(a);
    kiln_q4_free(b);
    free(rows);
}

/* Bit-slicing written the plain way, one bit at a time: what
 * kiln_q4_slice's packed version must equal. */
static void slice_ref(const kiln_q4 *q, const uint8_t *codes, uint64_t *planes) {
    const uint32_t w = q->words;
    memset(planes, 0, kiln_q4_stride(w) * sizeof *planes);
    for (uint32_t i = 0; i < q->dim; i++)
        for (unsigned p = 0; p < 4; p++)
            if (codes[i] >> p & 1)
                planes[p * w + i / 64] |= (uint64_t)1 << (i & 63);
}

/* Random codes (extremes included) through both references, for one metric
 * and dimension; checks padding bits and the metric's own identity. */
static void check_refs(kiln_metric metric, size_t dim, const float *rows, size_t n) {
    kiln_q4 *q = NULL;
    CHECK_OK(ctx, kiln_q4_train(ctx, rows, n, dim, metric, 9, 2, &q));
    REQUIRE(q);
    CHECK(q->words == kiln_q4_words(dim));
    encoded e = encode_all(q, rows, n);
    const uint32_t w = q->words;
    int mismatches = 0, pad_bits = 0, identity = 0;
    /* The plain slicing of the codes kiln_q4_codes gave equals kiln_q4_encode's. */
    uint64_t *pl = malloc(kiln_q4_stride(w) * sizeof *pl);
    REQUIRE(pl);
    for (size_t r = 0; r < n; r++) {
        slice_ref(q, e.codes + r * dim, pl);
        mismatches += memcmp(pl, planes_of(&e.set, r), kiln_q4_stride(w) * sizeof *pl) != 0;
        mismatches += kiln_q4_norm(q, e.codes + r * dim) != e.set.norms[r];
        if (dim % 64)
            for (unsigned p = 0; p < 4; p++)
                pad_bits += (pl[p * w + w - 1] >> (dim % 64)) != 0;
    }
    for (size_t t = 0; t + 2 < n; t++) {
        const uint8_t *ca = e.codes + t * dim, *cb = e.codes + (t + 1) * dim;
        const uint32_t na = e.set.norms[t], nb = e.set.norms[t + 1];
        const uint32_t sliced =
            kiln_q4_dist_ref(planes_of(&e.set, t), na, planes_of(&e.set, t + 1), nb, w);
        const uint32_t plain = kiln_q4_dist_codes(ca, na, cb, nb, dim);
        mismatches += sliced != plain;
        if (metric == KILN_METRIC_L2) {
            uint32_t direct = 0;
            for (size_t i = 0; i < dim; i++)
                direct += (uint32_t)((int)ca[i] - cb[i]) * (uint32_t)((int)ca[i] - cb[i]);
            identity += direct != sliced;
        } else {
            /* dist(a,b) - dist(a,c) = 2 (<a,c> - <a,b>) / s^2 on the decoded
             * vectors, up to the two rounded weight terms (<= 1 together). */
            const uint8_t *cc = e.codes + (t + 2) * dim;
            const uint32_t ac = kiln_q4_dist_codes(ca, na, cc, e.set.norms[t + 2], dim);
            float *xa = malloc(3 * dim * sizeof *xa);
            REQUIRE(xa);
            kiln_q4_decode(q, ca, xa);
            kiln_q4_decode(q, cb, xa + dim);
            kiln_q4_decode(q, cc, xa + 2 * dim);
            double ab_ip = 0, ac_ip = 0, mag = 0;
            for (size_t i = 0; i < dim; i++) {
                ab_ip += (double)xa[i] * xa[dim + i];
                ac_ip += (double)xa[i] * xa[2 * dim + i];
                mag += fabs((double)xa[i]) * (fabs((double)xa[dim + i]) + fabs(xa[2 * dim + i]));
            }
            const double s2 = (double)q->step * q->step;
            const double want = 2 * (ac_ip - ab_ip) / s2;
            const double got = (double)plain - (double)ac;
            identity += fabs(got - want) > 1.0 + 1e-5 * mag / s2;
            free(xa);
        }
    }
    /* Extremes: all codes 15 against all 15, and 15 against 0. */
    uint8_t *hi = malloc(dim), *zero = calloc(dim, 1);
    uint64_t *phi = malloc(kiln_q4_stride(w) * sizeof *phi), *pz = malloc(kiln_q4_stride(w) * 8);
    REQUIRE(hi && zero && phi && pz);
    memset(hi, 15, dim);
    kiln_q4_slice(q, hi, phi);
    kiln_q4_slice(q, zero, pz);
    const uint32_t nh = kiln_q4_norm(q, hi), nz = kiln_q4_norm(q, zero);
    CHECK(kiln_q4_dist_ref(phi, nh, phi, nh, w) == kiln_q4_dist_codes(hi, nh, hi, nh, dim));
    CHECK(kiln_q4_dist_ref(phi, nh, pz, nz, w) == kiln_q4_dist_codes(hi, nh, zero, nz, dim));
    if (metric == KILN_METRIC_L2)
        CHECK(kiln_q4_dist_ref(phi, nh, pz, nz, w) == 225 * dim);
    CHECK(kiln_q4_dist_ref(phi, nh, pz, nz, w) != KILN_Q4_NO_DIST);
    CHECK_MSG(mismatches == 0, "d=%zu %s: %d sliced/unsliced mismatches", dim,
              kiln_metric_name(metric), mismatches);
    CHECK_MSG(pad_bits == 0, "d=%zu: %d planes with bits past the dimension", dim, pad_bits);
    CHECK_MSG(identity == 0, "d=%zu %s: %d pairs break the metric identity", dim,
              kiln_metric_name(metric), identity);
    free(hi), free(zero), free(phi), free(pz), free(pl);
    encoded_free(&e);
    kiln_q4_free(q);
}

static void test_refs_random(void) {
    static const size_t dims[] = {1, 63, 64, 65, 128, 784};
    kiln_rng rng;
    kiln_rng_seed(&rng, 21);
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        const size_t n = dims[i] > 200 ? 200 : 600;
        float *rows = random_rows(&rng, n, dims[i]);
        check_refs(KILN_METRIC_L2, dims[i], rows, n);
        check_refs(KILN_METRIC_IP, dims[i], rows, n);
        /* COS is IP on rows the caller normalised. */
        for (size_t r = 0; r < n; r++) {
            double s = 0;
            for (size_t j = 0; j < dims[i]; j++)
                s += (double)rows[r * dims[i] + j] * rows[r * dims[i] + j];
            for (size_t j = 0; j < dims[i]; j++)
                rows[r * dims[i] + j] = (float)(rows[r * dims[i] + j] / sqrt(s > 0 ? s : 1));
        }
        check_refs(KILN_METRIC_COS, dims[i], rows, n);
        free(rows);
    }
}

/* A mean far larger than the spread overflows the IP weight term: the
 * symmetric fallback keeps norms and distances in range. */
/* Residuals encoded in place equal the subtracted rows run through
 * kiln_q4_encode, bit for bit, at dimensions on and off the 8-code groups. */
static void test_encode_residuals(void) {
    kiln_rng rng;
    kiln_rng_seed(&rng, 11);
    const size_t dims[] = {1, 7, 64, 100, 129};
    for (size_t t = 0; t < sizeof dims / sizeof *dims; t++) {
        const size_t dim = dims[t], n = 300, k = 5, count = 500;
        float *base = random_rows(&rng, n, dim), *centers = random_rows(&rng, k, dim);
        float *rows = malloc(count * dim * sizeof *rows);
        uint32_t *ids = malloc(count * sizeof *ids), *center_of = malloc(count * sizeof *center_of);
        REQUIRE(rows && ids && center_of);
        for (size_t r = 0; r < count; r++) {
            ids[r] = (uint32_t)kiln_rng_below(&rng, n);
            center_of[r] = (uint32_t)kiln_rng_below(&rng, k);
            for (size_t i = 0; i < dim; i++)
                rows[r * dim + i] = base[ids[r] * dim + i] - centers[center_of[r] * dim + i];
        }
        kiln_q4 *q = NULL;
        CHECK_OK(ctx, kiln_q4_train(ctx, rows, count, dim, KILN_METRIC_L2, 5, 2, &q));
        REQUIRE(q);
        const size_t words = count * kiln_q4_stride(q->words);
        uint64_t *pa = malloc(words * 8), *pb = malloc(words * 8);
        uint32_t *na = malloc(count * 4), *nb = malloc(count * 4);
        REQUIRE(pa && pb && na && nb);
        CHECK_OK(ctx, kiln_q4_encode(ctx, q, rows, count, 2, pa, na));
        CHECK_OK(ctx,
                 kiln_q4_encode_residuals(ctx, q, base, ids, centers, center_of, count, 2, pb, nb));
        CHECK_MSG(memcmp(pa, pb, words * 8) == 0 && memcmp(na, nb, count * 4) == 0,
                  "d=%zu: residual codes differ from the subtracted rows' codes", dim);
        CHECK_FAILS(ctx,
                    kiln_q4_encode_residuals(ctx, q, base, NULL, centers, center_of, 1, 1, pb, nb),
                    KILN_E_ARG, "NULL argument");
        free(pa), free(pb), free(na), free(nb);
        kiln_q4_free(q);
        free(base), free(centers), free(rows), free(ids), free(center_of);
    }
}

static void test_ip_fallback(void) {
    kiln_rng rng;
    kiln_rng_seed(&rng, 8);
    const size_t n = 500, dim = 512;
    float *rows = malloc(n * dim * sizeof *rows);
    REQUIRE(rows);
    for (size_t i = 0; i < n * dim; i++)
        rows[i] = 1e6f + (float)kiln_rng_uniform(&rng);
    kiln_q4 *q = NULL;
    CHECK_OK(ctx, kiln_q4_train(ctx, rows, n, dim, KILN_METRIC_IP, 1, 1, &q));
    REQUIRE(q);
    CHECK(q->ip_offset == 0 && q->ip_weight[0] == 0);
    CHECK(fabsf(q->lo[0] + 7.5f * q->step) <= 1e-6f * 7.5f * q->step);
    kiln_q4_free(q);
    check_refs(KILN_METRIC_IP, dim, rows, n);
    free(rows);
}

/* The oracle itself on a hand-checkable case: d = 1, codes 0..5. */
static void test_cluster_ref(void) {
    const size_t n = 6, dim = 1;
    const float rows[6] = {0, 1, 2, 3, 4, 15};
    kiln_q4 *q = NULL;
    CHECK_OK(ctx, kiln_q4_train(ctx, rows, n, dim, KILN_METRIC_L2, 1, 1, &q));
    REQUIRE(q);
    encoded e = encode_all(q, rows, n);
    /* Codes: step 1, lo = 0 -> code = value. */
    for (size_t i = 0; i < n; i++)
        CHECK(e.codes[i] == (uint8_t)rows[i]);
    /* Cluster 0 = {2, 0, 4}, cluster 1 = {5}, cluster 2 = {}, cluster 3 = {3, 1}. */
    const uint64_t offsets[5] = {0, 3, 4, 4, 6};
    const uint32_t members[6] = {2, 0, 4, 5, 3, 1};
    kiln_q4_neighbor out[6 * 3];
    CHECK_OK(ctx, kiln_q4_cluster_knn_ref(ctx, &e.set, offsets, 4, members, 3, 1, out));
    /* Member 2 (code 2): 0 and 4 both at distance 4, tie by smaller id. */
    CHECK(out[0].dist == 4 && out[0].id == 0 && out[1].dist == 4 && out[1].id == 4);
    CHECK(out[2].dist == KILN_Q4_NO_DIST && out[2].id == KILN_Q4_NO_ID);
    CHECK(out[3].dist == 4 && out[3].id == 2 && out[4].dist == 16 && out[4].id == 4);
    CHECK(out[9].dist == KILN_Q4_NO_DIST && out[9].id == KILN_Q4_NO_ID); /* singleton */
    CHECK(out[12].dist == 4 && out[12].id == 1 && out[15].dist == 4 && out[15].id == 3);
    const uint32_t bad[6] = {2, 0, 99, 5, 3, 1};
    CHECK_FAILS(ctx, kiln_q4_cluster_knn_ref(ctx, &e.set, offsets, 4, bad, 3, 1, out), KILN_E_RANGE,
                "slot 2 holds id 99");
    encoded_free(&e);
    kiln_q4_free(q);
}

/* On real data the 4-bit distance must rank well: the true 10 nearest are
 * almost all within the 4-bit top 30 (the rerank then sorts them). */
static void test_dataset(const char *name, kiln_metric metric, double min_recall) {
    char path[256];
    size_t n, dim, nq, qdim, ng, gdim;
    snprintf(path, sizeof path, DATASETS "/%s/%s_base.fvecs", name, name);
    float *base = read_fvecs(path, &n, &dim);
    if (!base) {
        SKIP_PART("%s not found, dataset check skipped", path);
        return;
    }
    snprintf(path, sizeof path, DATASETS "/%s/%s_query.fvecs", name, name);
    float *queries = read_fvecs(path, &nq, &qdim);
    snprintf(path, sizeof path, DATASETS "/%s/%s_groundtruth.ivecs", name, name);
    int32_t *gt = read_ivecs(path, &ng, &gdim);
    REQUIRE(queries && gt && qdim == dim && ng == nq && gdim >= 10);
    kiln_q4 *q = NULL;
    CHECK_OK(ctx, kiln_q4_train(ctx, base, n, dim, metric, 1, 0, &q));
    REQUIRE(q);
    encoded eb = encode_all(q, base, n), eq = encode_all(q, queries, nq);
    uint64_t *keys = malloc(n * sizeof *keys);
    REQUIRE(keys);
    size_t hits = 0, hits10 = 0, mismatches = 0;
    const size_t depth = 30;
    for (size_t i = 0; i < nq; i++) {
        for (size_t j = 0; j < n; j++) {
            const uint32_t d = kiln_q4_dist_ref(planes_of(&eq.set, i), eq.set.norms[i],
                                                planes_of(&eb.set, j), eb.set.norms[j], q->words);
            if (j % 97 == i % 97)
                mismatches += d != kiln_q4_dist_codes(eq.codes + i * dim, eq.set.norms[i],
                                                      eb.codes + j * dim, eb.set.norms[j], dim);
            keys[j] = (uint64_t)d << 32 | j;
        }
        /* Partial selection of the top `depth` by (dist, id). */
        for (size_t a = 0; a < depth; a++)
            for (size_t b = a + 1; b < n; b++)
                if (keys[b] < keys[a]) {
                    const uint64_t t = keys[a];
                    keys[a] = keys[b];
                    keys[b] = t;
                }
        for (size_t g = 0; g < 10; g++)
            for (size_t a = 0; a < depth; a++)
                if ((uint32_t)keys[a] == (uint32_t)gt[i * gdim + g]) {
                    hits++;
                    hits10 += a < 10;
                    break;
                }
    }
    const double recall = (double)hits / (double)(nq * 10);
    fprintf(stderr, "%s: true top-10 inside 4-bit top-10: %.4f, top-%zu: %.4f (step %g)\n", name,
            (double)hits10 / (double)(nq * 10), depth, recall, q->step);
    CHECK_MSG(recall >= min_recall, "%s recall %.4f < %.2f", name, recall, min_recall);
    CHECK_MSG(mismatches == 0, "%s: %zu sliced/unsliced mismatches", name, mismatches);
    free(keys);
    encoded_free(&eb);
    encoded_free(&eq);
    kiln_q4_free(q);
    free(base);
    free(queries);
    free(gt);
}

int main(void) {
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    test_errors();
    test_encode_decode(KILN_METRIC_L2);
    test_encode_decode(KILN_METRIC_IP);
    test_clipping();
    test_sampling();
    test_refs_random();
    test_encode_residuals();
    test_ip_fallback();
    test_cluster_ref();
    test_dataset("siftsmall", KILN_METRIC_L2, 0.95);
    test_dataset("fmnistsmall", KILN_METRIC_L2, 0.95);
    kiln_ctx_free(ctx);
    return check_report("test_quant4");
}
