/* test_storage.c -- compact vector storage (common/codec.c, graph/storage.c,
 * issue 14 item 7): the f16 conversion against F16C, the int8 rows, every
 * SIMD kernel against its scalar reference, recall of f16 / int8 / int8 with
 * rerank against f32 on siftsmall and fmnistsmall (exact ground truth from
 * kiln_knn_exact), files (version 3, mapped, read, verified, byte-identical
 * round trips, info), adds, deletes and updates with the validator, the
 * hnswlib export, and the refusals. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "../common/codec_internal.h"
#include "../common/distance_internal.h"
#include "../common/rng_internal.h"
#include "../graph/hnsw_internal.h"
#include "check.h"
#include "data_util.h"
#include "file_util.h"
#include "kiln.h"
#include "recall.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#define K  10
#define EF 64

static char test_dir[4096];

static const char *tmp_path(const char *name) {
    static char buf[4][4200];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", test_dir, name);
    return p;
}

static float frand(kiln_rng *r, float lo, float hi) {
    return lo + (hi - lo) * (float)kiln_rng_uniform(r);
}

/* ==== Binary16 ==== */

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0);
}
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

static bool same_float(float a, float b) {
    return (a != a && b != b) || memcmp(&a, &b, sizeof a) == 0;
}
#endif

static void test_f16(void) {
    size_t bad = 0;
    /* Every half decodes and encodes back to itself (NaN to a quiet NaN). */
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = kiln_f16_to_f32((uint16_t)h);
        const uint16_t back = kiln_f32_to_f16(f);
        bad += f == f ? back != h : (back & 0x7c00u) != 0x7c00u || !(back & 0x3ffu);
    }
    CHECK_MSG(bad == 0, "%zu halves do not round-trip", bad);
    CHECK(kiln_f32_to_f16(65504.0f) == 0x7bffu && kiln_f32_to_f16(65520.0f) == 0x7c00u);
    CHECK(kiln_f32_to_f16(65519.0f) == 0x7bffu && kiln_f32_to_f16(-1e9f) == 0xfc00u);
    CHECK(kiln_f32_to_f16(0x1p-24f) == 1 && kiln_f32_to_f16(0x1p-25f) == 0);
    CHECK(kiln_f32_to_f16(0x1.8p-25f) == 1 && kiln_f32_to_f16(0x1.8p-24f) == 2);
#if defined(__x86_64__) || defined(__i386__)
    if (!kiln_cpu_has_f16c()) {
        SKIP_PART("no F16C on this CPU: the conversion is checked against itself only");
        return;
    }
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++)
        bad += !same_float(kiln_f16_to_f32((uint16_t)h), hw_f16_to_f32((uint16_t)h));
    CHECK_MSG(bad == 0, "%zu halves decode unlike vcvtph2ps", bad);
    /* Floats: random bit patterns (every exponent), and values near the
     * half grid's ties and its subnormal and overflow edges. */
    kiln_rng r;
    kiln_rng_seed(&r, 16);
    bad = 0;
    for (int i = 0; i < 400000; i++) {
        uint32_t x = (uint32_t)kiln_rng_next(&r);
        if (i % 4 == 1) /* a tie or its neighbours: 13 low bits 0x1000 +-1 */
            x = (x & ~0x1fffu) | (0x1000u + (uint32_t)(i % 3) - 1u);
        if (i % 4 == 2) /* magnitudes 2^-26 .. 2^17 */
            x = (x & 0x807fffffu) | ((uint32_t)(101 + i % 43) << 23);
        float f;
        memcpy(&f, &x, sizeof f);
        const uint16_t sw = kiln_f32_to_f16(f), hw = hw_f32_to_f16(f);
        bad += f == f ? sw != hw : (sw & 0x7e00u) != (hw & 0x7e00u);
    }
    CHECK_MSG(bad == 0, "%zu floats encode unlike vcvtps2ph", bad);
#endif
}

/* ==== INT8 rows ==== */

static void test_int8_rows(void) {
    kiln_rng r;
    kiln_rng_seed(&r, 8);
    const size_t dim = 37, bytes = kiln_code_bytes(KILN_STORAGE_INT8, dim);
    CHECK(bytes == 8 + 40);
    uint8_t row[64];
    float x[37], y[37];
    for (int t = 0; t < 200; t++) {
        const float lo = frand(&r, -100, 50), hi = lo + frand(&r, 0, 200);
        for (size_t i = 0; i < dim; i++)
            x[i] = frand(&r, lo, hi);
        kiln_encode_row(KILN_STORAGE_INT8, x, dim, row);
        kiln_decode_row(KILN_STORAGE_INT8, row, dim, y);
        float s;
        memcpy(&s, row, sizeof s);
        float worst = 0;
        for (size_t i = 0; i < dim; i++)
            worst = fabsf(x[i] - y[i]) > worst ? fabsf(x[i] - y[i]) : worst;
        /* Half a step, and the float rounding of offset + scale * code. */
        CHECK_MSG(worst <= s * 0.5f + 1e-5f * (fabsf(lo) + fabsf(hi)),
                  "row %d: error %g above half the step %g", t, worst, s);
        CHECK(row[bytes - 1] == 0 && row[bytes - 2] == 0 && row[bytes - 3] == 0); /* padding */
    }
    /* A row symmetric about zero is Redis's Q8: offset 0, codes x * 127 / max|x|. */
    const float sym[4] = {-2.0f, 1.0f, 0.5f, 2.0f};
    kiln_encode_row(KILN_STORAGE_INT8, sym, 4, row);
    const int8_t *c = (const int8_t *)row + 8;
    float off;
    memcpy(&off, row + 4, sizeof off);
    CHECK(off == 0.0f && c[0] == -127 && c[1] == 64 && c[2] == 32 && c[3] == 127);
    /* A constant row is exact; a non-finite one decodes to NaN. */
    const float flat[3] = {7.25f, 7.25f, 7.25f};
    kiln_encode_row(KILN_STORAGE_INT8, flat, 3, row);
    kiln_decode_row(KILN_STORAGE_INT8, row, 3, y);
    CHECK(y[0] == 7.25f && y[2] == 7.25f);
    const float bad[3] = {1.0f, INFINITY, 2.0f};
    kiln_encode_row(KILN_STORAGE_INT8, bad, 3, row);
    kiln_decode_row(KILN_STORAGE_INT8, row, 3, y);
    CHECK(isnan(y[0]) && isnan(y[1]));
}

/* ==== Kernels against the scalar references ==== */

typedef struct kernels {
    const char *name;
    kiln_code_dist_fn q[4]; /* l2 f16, ip f16, l2 i8, ip i8 */
    kiln_code_pair_fn p[4]; /* the same, row against row; NULL: none at this width */
} kernels;

static bool close_to(float a, float b, float scale) {
    return fabsf(a - b) <= 2e-4f * scale + 1e-4f;
}

static void test_kernels(void) {
    kernels sets[3] = {
        {"scalar",
         {kiln_l2sq_f16_scalar, kiln_ipdist_f16_scalar, kiln_l2sq_i8_scalar, kiln_ipdist_i8_scalar},
         {kiln_l2sq_f16_pair_scalar, kiln_ipdist_f16_pair_scalar, kiln_l2sq_i8_pair_scalar,
          kiln_ipdist_i8_pair_scalar}}};
    int nsets = 1;
#if defined(__x86_64__) || defined(__i386__)
    if (kiln_cpu_has_avx2() && kiln_cpu_has_f16c())
        sets[nsets++] = (kernels){
            "avx2",
            {kiln_l2sq_f16_avx2, kiln_ipdist_f16_avx2, kiln_l2sq_i8_avx2, kiln_ipdist_i8_avx2},
            {kiln_l2sq_f16_pair_avx2, kiln_ipdist_f16_pair_avx2, kiln_l2sq_i8_pair_avx2,
             kiln_ipdist_i8_pair_avx2}};
    if (kiln_cpu_has_avx512())
        sets[nsets++] = (kernels){"avx512",
                                  {kiln_l2sq_f16_avx512, kiln_ipdist_f16_avx512,
                                   kiln_l2sq_i8_avx512, kiln_ipdist_i8_avx512},
                                  {NULL, NULL, NULL, NULL}};
    if (nsets < 3)
        fprintf(stderr, "note: %d of 3 kernel widths on this CPU\n", nsets);
#endif
    kiln_rng r;
    kiln_rng_seed(&r, 3);
    static const size_t dims[] = {1,  2,  3,  5,  7,  8,   9,   15,  16,  17,  31,
                                  32, 33, 63, 64, 65, 100, 128, 129, 200, 784, 960};
    enum { MAXD = 960 };
    float q[MAXD], a[MAXD], b[MAXD], da[MAXD], db[MAXD];
    uint8_t ra[2 * MAXD + 8], rb[2 * MAXD + 8];
    size_t bad = 0, checked = 0;
    for (size_t t = 0; t < sizeof dims / sizeof dims[0]; t++) {
        const size_t d = dims[t];
        for (int rep = 0; rep < 20; rep++) {
            const float lo = rep % 2 ? 0.0f : -1.0f; /* one-signed rows and mixed ones */
            for (size_t i = 0; i < d; i++) {
                q[i] = frand(&r, lo, 1);
                a[i] = frand(&r, lo, 1);
                b[i] = frand(&r, lo, 1);
            }
            for (int st = 0; st < 2; st++) {
                const kiln_storage s = st ? KILN_STORAGE_INT8 : KILN_STORAGE_F16;
                kiln_encode_row(s, a, d, ra);
                kiln_encode_row(s, b, d, rb);
                kiln_decode_row(s, ra, d, da);
                kiln_decode_row(s, rb, d, db);
                /* The reference, from the decoded rows in f32 (common/distance.c). */
                const float l2q = kiln_l2sq_scalar(q, da, d), ipq = kiln_ipdist_scalar(q, da, d);
                const float l2p = kiln_l2sq_scalar(da, db, d), ipp = kiln_ipdist_scalar(da, db, d);
                const float scale = (float)d;
                for (int k = 0; k < nsets; k++) {
                    const float gq[2] = {sets[k].q[2 * st](q, ra, d),
                                         sets[k].q[2 * st + 1](q, ra, d)};
                    checked += 2;
                    bad += !close_to(gq[0], l2q, scale) || !close_to(gq[1], ipq, scale);
                    if (!close_to(gq[0], l2q, scale) || !close_to(gq[1], ipq, scale))
                        fprintf(stderr, "%s %s dim %zu: query %g %g, reference %g %g\n",
                                sets[k].name, kiln_storage_name(s), d, gq[0], gq[1], l2q, ipq);
                    if (!sets[k].p[0])
                        continue;
                    const float gp[2] = {sets[k].p[2 * st](ra, rb, d),
                                         sets[k].p[2 * st + 1](ra, rb, d)};
                    checked += 2;
                    bad += !close_to(gp[0], l2p, scale) || !close_to(gp[1], ipp, scale);
                    /* INT8 pairs sum in integers: every width gives the same bits. */
                    if (st && k > 0)
                        bad += gp[0] != sets[0].p[2](ra, rb, d) || gp[1] != sets[0].p[3](ra, rb, d);
                }
            }
        }
    }
    CHECK_MSG(bad == 0, "%zu of %zu kernel results off their references", bad, checked);
    /* The dispatched kernels are one of these. */
    bool found = false;
    for (int k = 0; k < nsets; k++)
        found |= kiln_code_dist(KILN_STORAGE_INT8, KILN_METRIC_L2) == sets[k].q[2];
    CHECK(found);
}

/* ==== Data ==== */

typedef test_data data;

static kiln_index *build(kiln_ctx *ctx, const data *ds, kiln_method method, kiln_storage s,
                         int rerank) {
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = method;
    p.storage = s;
    p.rerank = rerank;
    kiln_index *ix = NULL;
    const kiln_status st = kiln_index_build(ctx, ds->base, ds->n, ds->d, &p, &ix);
    if (st != KILN_OK && method == KILN_METHOD_DEVICE)
        return NULL; /* the caller reports the skip */
    CHECK_OK(ctx, st);
    REQUIRE(ix);
    CHECK_OK(ctx, kiln_index_check(ix));
    return ix;
}

static double recall(kiln_ctx *ctx, const kiln_index *ix, const data *ds, uint32_t ef) {
    return search_recall(ctx, ix, ds->q, ds->nq, ds->gt, K, K, ef);
}

/* ==== Files ==== */

static uint8_t *saved(kiln_ctx *ctx, const kiln_index *ix, const char *name, size_t *len) {
    CHECK_OK(ctx, kiln_index_save(ix, tmp_path(name)));
    uint8_t *b = read_file(tmp_path(name), len);
    REQUIRE(b);
    return b;
}

/* Save; open mapped, read and verified: valid, the same results and
 * distances, and saved again to the same bytes; info names the storage. */
static void round_trip(kiln_ctx *ctx, const kiln_index *ix, const data *ds, const char *what) {
    size_t n1 = 0, n2 = 0;
    uint8_t *first = saved(ctx, ix, "trip1.kiln", &n1);
    kiln_index_stats st;
    CHECK_OK(ctx, kiln_index_stats_get(ix, &st));
    kiln_index_info info;
    CHECK_OK(ctx, kiln_index_info_read(ctx, tmp_path("trip1.kiln"), &info));
    CHECK_MSG(info.format_version == (st.storage == KILN_STORAGE_F32 ? 2u : 3u) &&
                  info.storage == st.storage && info.rerank == st.rerank,
              "%s: info says version %u storage %s rerank %d", what, info.format_version,
              kiln_storage_name(info.storage), info.rerank);
    const size_t nq = ds->nq < 50 ? ds->nq : 50;
    int64_t *a = malloc(nq * K * sizeof *a), *b = malloc(nq * K * sizeof *b);
    float *da = malloc(nq * K * sizeof *da), *db = malloc(nq * K * sizeof *db);
    REQUIRE(a && b && da && db);
    kiln_search_params sp = {.k = K, .ef = 32, .threads = 1};
    CHECK_OK(ctx, kiln_index_search(ix, ds->q, nq, &sp, a, da));
    static const uint32_t modes[] = {0, KILN_LOAD_READ, KILN_LOAD_VERIFY};
    for (size_t m = 0; m < 3; m++) {
        kiln_index *back = NULL;
        CHECK_OK(ctx, kiln_index_open(ctx, tmp_path("trip1.kiln"), modes[m], &back));
        REQUIRE(back);
        CHECK_OK(ctx, kiln_index_check(back));
        kiln_index_stats bs;
        CHECK_OK(ctx, kiln_index_stats_get(back, &bs));
        CHECK(bs.storage == st.storage && bs.rerank == st.rerank &&
              bs.data_bytes == st.data_bytes && bs.vector_bytes == st.vector_bytes);
        CHECK(m != 0 ||
              bs.memory_bytes < st.memory_bytes / 4); /* mapped: the rows are the file's */
        CHECK_OK(ctx, kiln_index_search(back, ds->q, nq, &sp, b, db));
        CHECK_MSG(memcmp(a, b, nq * K * sizeof *a) == 0 && memcmp(da, db, nq * K * sizeof *da) == 0,
                  "%s: search differs after open (flags 0x%x)", what, modes[m]);
        uint8_t *second = saved(ctx, back, "trip2.kiln", &n2);
        CHECK_MSG(n1 == n2 && memcmp(first, second, n1) == 0,
                  "%s: save, open (flags 0x%x), save differs", what, modes[m]);
        free(second);
        kiln_index_free(back);
    }
    free(a);
    free(b);
    free(da);
    free(db);
    free(first);
}

/* ==== Recall ==== */

/* f16, int8 and int8 with rerank against f32, the same graph (one method). */
static void test_recall(kiln_ctx *ctx, const data *ds, kiln_method method) {
    const char *mname = method == KILN_METHOD_DEVICE ? "device" : "insert";
    kiln_index *f32 = build(ctx, ds, method, KILN_STORAGE_F32, 0);
    if (!f32) {
        SKIP_PART("%s device build: %s", ds->name, kiln_errmsg(ctx));
        return;
    }
    kiln_index *f16 = build(ctx, ds, method, KILN_STORAGE_F16, 0);
    kiln_index *i8 = build(ctx, ds, method, KILN_STORAGE_INT8, 0);
    kiln_index *i8r = build(ctx, ds, method, KILN_STORAGE_INT8, 1);
    REQUIRE(f16 && i8 && i8r);
    for (uint32_t ef = 16; ef <= EF; ef *= 4) {
        const double r32 = recall(ctx, f32, ds, ef), r16 = recall(ctx, f16, ds, ef),
                     r8 = recall(ctx, i8, ds, ef), r8r = recall(ctx, i8r, ds, ef);
        fprintf(stderr,
                "%s (%s): recall@10 at ef %u: f32 %.4f, f16 %.4f, int8 %.4f, int8+rerank %.4f\n",
                ds->name, mname, ef, r32, r16, r8, r8r);
        if (ef != EF)
            continue;
        CHECK_MSG(r8 >= r32 - 0.01, "%s: int8 %.4f vs f32 %.4f at ef %u", ds->name, r8, r32, ef);
        CHECK_MSG(r8r >= r32 - 0.002, "%s: int8+rerank %.4f vs f32 %.4f", ds->name, r8r, r32);
        CHECK_MSG(r16 >= r32 - 0.002, "%s: f16 %.4f vs f32 %.4f", ds->name, r16, r32);
    }
    /* Bytes: the rows are what shrinks; links and labels are the same. */
    kiln_index_stats s32, s16, s8, s8r;
    CHECK_OK(ctx, kiln_index_stats_get(f32, &s32));
    CHECK_OK(ctx, kiln_index_stats_get(f16, &s16));
    CHECK_OK(ctx, kiln_index_stats_get(i8, &s8));
    CHECK_OK(ctx, kiln_index_stats_get(i8r, &s8r));
    const uint64_t d = ds->d, n = ds->n;
    CHECK(s32.vector_bytes == 4 * d && s16.vector_bytes == 2 * d &&
          s8.vector_bytes == 8 + (d + 3) / 4 * 4 && s8r.vector_bytes == s8.vector_bytes + 4 * d);
    CHECK(s8.storage == KILN_STORAGE_INT8 && !s8.rerank && s8r.rerank && !s32.rerank);
    CHECK(s32.data_bytes - s8.data_bytes == n * (s32.vector_bytes - s8.vector_bytes));
    CHECK(s8.memory_bytes + n * (s32.vector_bytes - s8.vector_bytes) <= s32.memory_bytes);
    fprintf(stderr, "%s (%s): bytes per element f32 %.1f, f16 %.1f, int8 %.1f, int8+rerank %.1f\n",
            ds->name, mname, (double)s32.data_bytes / n, (double)s16.data_bytes / n,
            (double)s8.data_bytes / n, (double)s8r.data_bytes / n);
    /* With rerank the distances returned are the exact ones. */
    int64_t lab[K];
    float dist[K];
    kiln_search_params sp = {.k = K, .ef = EF, .threads = 1};
    CHECK_OK(ctx, kiln_index_search(i8r, ds->q, 1, &sp, lab, dist));
    CHECK(lab[0] >= 0 && dist[0] == i8r->dist(ds->q, ds->base + (size_t)lab[0] * d, d));
    if (method == KILN_METHOD_INSERT) {
        round_trip(ctx, f16, ds, "f16");
        round_trip(ctx, i8, ds, "int8");
        round_trip(ctx, i8r, ds, "int8+rerank");
        round_trip(ctx, f32, ds, "f32");
        CHECK_OK(ctx, kiln_index_save(i8, tmp_path("int8.kiln")));
        CHECK_OK(ctx, kiln_index_save(i8r, tmp_path("int8r.kiln")));
        CHECK_OK(ctx, kiln_index_save(f32, tmp_path("f32.kiln")));
    }
    kiln_index_free(f32);
    kiln_index_free(f16);
    kiln_index_free(i8);
    kiln_index_free(i8r);
}

/* ==== Live ==== */

/* Each result of a search of rows whose label is gone (marked), or -1. */
static size_t bad_results(kiln_ctx *ctx, const kiln_index *ix, const data *ds,
                          const uint8_t *gone) {
    int64_t *got = malloc(ds->nq * K * sizeof *got);
    REQUIRE(got);
    kiln_search_params sp = {.k = K, .ef = EF, .threads = 2};
    CHECK_OK(ctx, kiln_index_search(ix, ds->q, ds->nq, &sp, got, NULL));
    size_t bad = 0;
    for (size_t i = 0; i < ds->nq * K; i++)
        bad += got[i] < 0 || (size_t)got[i] >= ds->n || gone[got[i]];
    free(got);
    return bad;
}

/* The same deletes, adds and updates on the saved f32 and int8 indexes
 * (mapped: the first write copies them): int8 within 0.01 of f32 on the set
 * they hold, valid after each call, no deleted label found, rerank rows
 * kept up to date, and the files round-trip. */
static void test_live(kiln_ctx *ctx, const data *ds) {
    kiln_index *f32 = NULL, *i8 = NULL, *i8r = NULL;
    CHECK_OK(ctx, kiln_index_open(ctx, tmp_path("f32.kiln"), 0, &f32));
    CHECK_OK(ctx, kiln_index_open(ctx, tmp_path("int8.kiln"), 0, &i8));
    CHECK_OK(ctx, kiln_index_open(ctx, tmp_path("int8r.kiln"), 0, &i8r));
    REQUIRE(f32 && i8 && i8r);
    kiln_index *all[3] = {f32, i8, i8r};
    const size_t nd = ds->n / 10;
    int64_t *del = malloc(nd * sizeof *del);
    uint8_t *gone = calloc(ds->n, 1);
    REQUIRE(del && gone);
    kiln_rng r;
    kiln_rng_seed(&r, 41);
    for (size_t k = 0; k < nd;) {
        const uint64_t v = kiln_rng_below(&r, ds->n);
        if (!gone[v]) {
            gone[v] = 1;
            del[k++] = (int64_t)v;
        }
    }
    for (int i = 0; i < 3; i++) {
        CHECK_OK(ctx, kiln_index_delete(all[i], del, nd));
        CHECK_OK(ctx, kiln_index_check(all[i]));
        CHECK(kiln_index_count(all[i]) == ds->n - nd);
        CHECK(bad_results(ctx, all[i], ds, gone) == 0);
    }
    /* The exact neighbours of the rest. */
    float *kept = malloc(ds->n * ds->d * sizeof *kept);
    int64_t *lab = malloc(ds->n * sizeof *lab), *gt = malloc(ds->nq * K * sizeof *gt);
    REQUIRE(kept && lab && gt);
    size_t m = 0;
    for (size_t i = 0; i < ds->n; i++)
        if (!gone[i]) {
            memcpy(kept + m * ds->d, ds->base + i * ds->d, ds->d * sizeof *kept);
            lab[m++] = (int64_t)i;
        }
    CHECK_OK(ctx,
             kiln_knn_exact(ctx, kept, m, ds->q, ds->nq, ds->d, KILN_METRIC_L2, K, 0, gt, NULL));
    for (size_t i = 0; i < ds->nq * K; i++)
        gt[i] = gt[i] >= 0 ? lab[gt[i]] : -1;
    double rec[3];
    for (int i = 0; i < 3; i++)
        rec[i] = search_recall(ctx, all[i], ds->q, ds->nq, gt, K, K, EF);
    fprintf(stderr,
            "%s: after deleting 10%%: recall@10 at ef %d f32 %.4f, int8 %.4f, +rerank %.4f\n",
            ds->name, EF, rec[0], rec[1], rec[2]);
    CHECK(rec[1] >= rec[0] - 0.01 && rec[2] >= rec[0] - 0.002);

    /* Add the deleted rows back (under their labels), and update another
     * tenth with each other's vectors: recall against the original truth. */
    float *back = malloc(nd * ds->d * sizeof *back);
    REQUIRE(back);
    for (size_t k = 0; k < nd; k++)
        memcpy(back + k * ds->d, ds->base + (size_t)del[k] * ds->d, ds->d * sizeof *back);
    for (int i = 0; i < 3; i++) {
        CHECK_OK(ctx, kiln_index_add(all[i], back, del, nd));
        CHECK_OK(ctx, kiln_index_check(all[i]));
        CHECK(kiln_index_count(all[i]) == ds->n);
    }
    for (int i = 0; i < 3; i++)
        rec[i] = recall(ctx, all[i], ds, EF);
    fprintf(stderr, "%s: deleted rows added back: recall@10 f32 %.4f, int8 %.4f, +rerank %.4f\n",
            ds->name, rec[0], rec[1], rec[2]);
    CHECK(rec[1] >= rec[0] - 0.01 && rec[2] >= rec[0] - 0.002);
    /* Update: the first two deleted labels swap vectors; a search for each
     * vector finds its new label first, and with rerank at distance 0. */
    const int64_t two[2] = {del[0], del[1]};
    float sw[2 * 1024];
    REQUIRE(ds->d <= 1024);
    memcpy(sw, back + ds->d, ds->d * sizeof *sw);
    memcpy(sw + ds->d, back, ds->d * sizeof *sw);
    for (int i = 0; i < 3; i++) {
        CHECK_OK(ctx, kiln_index_update(all[i], sw, two, 2));
        CHECK_OK(ctx, kiln_index_check(all[i]));
        int64_t got[K];
        float dist[K];
        kiln_search_params sp = {.k = K, .ef = EF, .threads = 1};
        CHECK_OK(ctx, kiln_index_search(all[i], sw, 1, &sp, got, dist));
        CHECK_MSG(got[0] == two[0], "index %d: the updated vector finds label %lld first, not %lld",
                  i, (long long)got[0], (long long)two[0]);
        CHECK(i != 2 || (got[0] == two[0] && dist[0] == 0.0f));
    }
    round_trip(ctx, i8, ds, "int8 after deletes, adds and updates");
    round_trip(ctx, i8r, ds, "int8+rerank after deletes, adds and updates");
    free(back);
    free(kept);
    free(lab);
    free(gt);
    free(del);
    free(gone);
    for (int i = 0; i < 3; i++)
        kiln_index_free(all[i]);
}

/* ==== Export, refusals ==== */

/* An int8 index exports its decoded rows; imported back they are the rows
 * (f32 storage) and the graph is the same. */
static void test_export(kiln_ctx *ctx, const data *ds) {
    kiln_index *i8 = NULL, *back = NULL;
    CHECK_OK(ctx, kiln_index_open(ctx, tmp_path("int8.kiln"), 0, &i8));
    REQUIRE(i8);
    CHECK_OK(ctx, kiln_index_export_hnswlib(i8, tmp_path("int8.hnsw"), NULL));
    CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, tmp_path("int8.hnsw"), 0, KILN_METRIC_L2, &back));
    REQUIRE(back);
    CHECK(back->storage == KILN_STORAGE_F32 && back->count == i8->count);
    float *row = malloc(ds->d * sizeof *row);
    REQUIRE(row);
    size_t bad = 0;
    for (uint32_t i = 0; i < i8->count; i++)
        bad +=
            memcmp(kiln_node_query(i8, i, row), kiln_vector(back, i), ds->d * sizeof *row) != 0 ||
            memcmp(kiln_links(i8, i, 0), kiln_links(back, i, 0),
                   (1 + kiln_links(i8, i, 0)[0]) * sizeof(uint32_t)) != 0;
    CHECK_MSG(bad == 0, "%zu nodes differ after export and import", bad);
    free(row);
    kiln_index_free(back);
    kiln_index_free(i8);
}

static void test_refusals(kiln_ctx *ctx) {
    float v[8 * 4];
    for (int i = 0; i < 32; i++)
        v[i] = (float)(i % 7);
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = KILN_METHOD_INSERT;
    kiln_index *ix = NULL;
    p.rerank = 1;
    CHECK_FAILS(ctx, kiln_index_build(ctx, v, 8, 4, &p, &ix), KILN_E_ARG,
                "needs storage f16 or int8");
    p.rerank = 0;
    p.storage = (kiln_storage)0;
    CHECK_FAILS(ctx, kiln_index_build(ctx, v, 8, 4, &p, &ix), KILN_E_ARG,
                "storage 0 is not f32, f16 or int8");
    p.storage = KILN_STORAGE_F16;
    v[13] = 70000.0f;
    CHECK_FAILS(ctx, kiln_index_build(ctx, v, 8, 4, &p, &ix), KILN_E_RANGE,
                "row 3 component 1 is 70000, beyond f16");
    CHECK(ix == NULL);
    v[13] = 65504.0f; /* the largest half: fits */
    CHECK_OK(ctx, kiln_index_build(ctx, v, 8, 4, &p, &ix));
    REQUIRE(ix);
    float big[4] = {1, 2, -1e6f, 4};
    CHECK_FAILS(ctx, kiln_index_add(ix, big, NULL, 1), KILN_E_RANGE,
                "add: vector 0 component 2 is -1e+06, beyond f16");
    CHECK(kiln_index_count(ix) == 8);
    kiln_index_free(ix);
    /* COS rows are normalised before they are encoded: any finite row fits. */
    p.metric = KILN_METRIC_COS;
    v[13] = 1e30f;
    CHECK_OK(ctx, kiln_index_build(ctx, v, 8, 4, &p, &ix));
    CHECK_OK(ctx, kiln_index_check(ix));
    kiln_index_free(ix);
}

/* ==== Main ==== */

static void test_dataset(kiln_ctx *ctx, const char *name, bool device) {
    data ds;
    if (!test_data_load(ctx, name, K, &ds))
        return;
    test_recall(ctx, &ds, KILN_METHOD_INSERT);
    test_live(ctx, &ds);
    test_export(ctx, &ds);
    /* The device build's graph is compressed the same way; without OpenCL
     * this extra part is left out, not skipped (the insert build covers
     * every storage path). */
    if (device && KILN_TEST_OPENCL)
        test_recall(ctx, &ds, KILN_METHOD_DEVICE);
    else if (device)
        fprintf(stderr, "note: %s: no device build (this kiln has no OpenCL)\n", name);
    test_data_free(&ds);
}

int main(void) {
    kiln_ctx *ctx;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    kiln_ctx_set_progress(ctx, KILN_PROGRESS_OFF);
    const char *tmp = getenv("KILN_TEST_TMP");
    snprintf(test_dir, sizeof test_dir, "%s/test_storage", tmp && *tmp ? tmp : "/tmp");
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", test_dir);
    REQUIRE(system(cmd) == 0);
    fprintf(stderr, "kernels: %s\n", kiln_simd_name());
    test_f16();
    test_int8_rows();
    test_kernels();
    test_refusals(ctx);
    test_dataset(ctx, "siftsmall", true);
    test_dataset(ctx, "fmnistsmall", false);
    kiln_ctx_free(ctx);
    return check_report("test_storage");
}
