/* quant4.c -- 4-bit scalar quantization, bit-sliced codes, and the scalar
 * references of the device kernel's distance and per-cluster top-k (see
 * quant4_internal.h for the layout and the distance).
 *
 * Design decisions:
 *  1. Ranges come from the 0.1% and 99.9% percentiles of each dimension over
 *     a seeded sample of at most 100000 rows, not from mean +- 3 sigma: real
 *     embeddings are skewed (SIFT dimensions are mostly zeros with a long
 *     tail), and mean +- 3 sigma would spend levels below the minimum while
 *     still clipping the tail. Percentiles clip a known 0.2% of values per
 *     dimension whatever the shape. The sample is drawn with replacement
 *     (kiln_rng_below) and sorted: O(sample) whatever n is, and duplicates
 *     do not bias a percentile estimate.
 *  2. One step for all dimensions, per-dimension offsets. With per-dimension
 *     steps s_i, code-space L2 weighs dimension i by 1/s_i^2 and stops ranking
 *     like the true metric. With one step s, code-space L2 is exactly the
 *     squared L2 distance of the decoded vectors divided by s^2, for every
 *     pair. s = (widest clipped range) / 15, and each dimension's 16 levels
 *     are centred on the middle of its own range: a narrow dimension uses
 *     fewer levels, but it also contributes less to the distance, and the
 *     absolute error (<= s/2) is the same in every dimension, which is what
 *     L2 sees. The exact rerank on the host repairs what 4 bits lose.
 *  3. Round to the nearest level and clip outside the range; NaN encodes as
 *     0 rather than as undefined behaviour (the readers reject NaN anyway).
 *  4. IP/COS. Write x_i ~ mu_i + s (c_i - 7.5), mu_i = lo_i + 7.5 s. Then
 *       2 (1 - <x_a, x_b>) / s^2 = const + N_a + N_b - 2 dot(c_a, c_b),
 *       N = 15 sum c_i - sum_i (2 mu_i / s)(c_i - 7.5).
 *     The second term is rounded per vector (error <= 0.5 in units of s^2,
 *     against dot products of order 56 d) and R, a bound on its magnitude,
 *     is added so every N >= 0 and, as 15a + 15b - 2ab >= 0 on [0,15]^2,
 *     every distance >= 0: the kernel stays one formula in uint32 for all
 *     metrics, with no metric switch. When 225 d + 2R would not fit in int32
 *     (a mean far larger than the spread), mu = 0 is used instead: symmetric
 *     levels around zero, N = 15 sum c_i, which always fits.
 *  5. Integer distances are exact, so the host references here and the
 *     kernel agree bit for bit; tests compare them with ==, not a tolerance.
 */
#include <assert.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "../common/le_internal.h"
#include "quant4_internal.h"
#include "../common/rng_internal.h"

/* ==== Tunables ==== */

/* Rows the ranges are trained on: the 0.1% percentile of 100000 values rests
 * on 100 order statistics, plenty for a range estimate, and the gather costs
 * 100000 * d reads whatever n is. */
#define Q4_SAMPLE_ROWS 100000
/* Fraction clipped at each end of every dimension (decision 1). */
#define Q4_CLIP_FRACTION 0.001
/* Dimensions gathered per pass over the sample: 16 floats are one 64-byte
 * cache line of a row, so one row fetch serves 16 columns. */
#define Q4_DIM_BLOCK 16
/* Threads for training: the gather is memory-bound and each thread holds
 * Q4_DIM_BLOCK * 100000 floats (6.4 MB); more threads only cost memory. */
#define Q4_TRAIN_MAX_THREADS 16
/* Bound of select_tails' heaps: Q4_CLIP_FRACTION * Q4_SAMPLE_ROWS + 1. */
#define Q4_EXTREME_MAX 128

/* ==== Helpers ==== */

static int cmp_size(const void *a, const void *b) {
    const size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

static int cmp_u64(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Pushes x into a heap of the cap smallest values seen (a max-heap: the
 * largest kept on top), or of the cap largest when sign is -1 (a min-heap of
 * the negated order). */
static void extreme_push(float *h, size_t *len, size_t cap, float x, float sign) {
    const float key = sign * x;
    if (*len == cap) {
        if (!(key < sign * h[0]))
            return;   /* not among the cap most extreme (NaN never is) */
        size_t i = 0; /* replace the top, sift down */
        for (;;) {
            const size_t l = 2 * i + 1, r = l + 1;
            size_t top = i;
            float tk = key;
            if (l < cap && sign * h[l] > tk)
                top = l, tk = sign * h[l];
            if (r < cap && sign * h[r] > tk)
                top = r;
            if (top == i)
                break;
            h[i] = h[top];
            i = top;
        }
        h[i] = x;
        return;
    }
    if (key != key)
        return;
    size_t i = (*len)++; /* sift up */
    while (i > 0 && sign * h[(i - 1) / 2] < key) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = x;
}

/* The (k+1)-th smallest and (k+1)-th largest of v[0..n) (k < n, k + 1 <=
 * Q4_EXTREME_MAX), in one pass with two heaps of k + 1 values: the
 * percentiles the quantizer clips to are far in the tails, where this reads
 * each value once instead of quickselect's partitions (15 ms -> 2 ms for
 * 16K x 128). NaNs are skipped; an all-NaN column gives NaN. */
static void select_tails(const float *v, size_t n, size_t k, float *lo, float *hi) {
    float small[Q4_EXTREME_MAX] = {0}, large[Q4_EXTREME_MAX] = {0};
    size_t ns = 0, nl = 0;
    const size_t cap = k + 1;
    for (size_t i = 0; i < n; i++) {
        extreme_push(small, &ns, cap, v[i], 1.0f);
        extreme_push(large, &nl, cap, v[i], -1.0f);
    }
    *lo = ns ? small[0] : NAN;
    *hi = nl ? large[0] : NAN;
}

static inline uint8_t q4_code(float x, float lo, float step) {
    const float t = (x - lo) / step + 0.5f;
    if (!(t >= 1.0f))
        return 0;
    if (t >= 15.0f)
        return 15;
    return (uint8_t)t;
}

static bool metric_valid(kiln_metric m) {
    return m == KILN_METRIC_L2 || m == KILN_METRIC_IP || m == KILN_METRIC_COS;
}

/* Percentile ranges [plo[i], phi[i]] of every dimension over the sample. */
static kiln_status train_ranges(kiln_ctx *ctx, const float *rows, size_t dim, const size_t *idx,
                                size_t m, uint32_t threads, float *plo, float *phi) {
    const int nt =
        kiln_threads(threads) < Q4_TRAIN_MAX_THREADS ? kiln_threads(threads) : Q4_TRAIN_MAX_THREADS;
    size_t per_thread, total;
    if (kiln_mul_size(m, Q4_DIM_BLOCK, &per_thread) ||
        kiln_mul_size(per_thread, (size_t)nt, &total) || kiln_mul_size(total, 4, &total))
        return kiln_fail(ctx, KILN_E_RANGE, "quantizer training sample of %zu rows is too large",
                         m);
    const size_t k_lo = (size_t)(Q4_CLIP_FRACTION * (double)(m - 1));
    if (k_lo + 1 > Q4_EXTREME_MAX)
        return kiln_fail(ctx, KILN_E_INTERNAL,
                         "quantizer sample of %zu rows is above the %d-row tails", m,
                         Q4_EXTREME_MAX);
    float *cols;
    kiln_status st = kiln_alloc(ctx, total, "quantizer training columns", (void **)&cols);
    if (st != KILN_OK)
        return st;
    const ptrdiff_t blocks = (ptrdiff_t)((dim + Q4_DIM_BLOCK - 1) / Q4_DIM_BLOCK);
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (ptrdiff_t b = 0; b < blocks; b++) {
        float *const col = cols + (size_t)omp_get_thread_num() * per_thread;
        const size_t d0 = (size_t)b * Q4_DIM_BLOCK;
        const size_t nd = dim - d0 < Q4_DIM_BLOCK ? dim - d0 : Q4_DIM_BLOCK;
        for (size_t r = 0; r < m; r++) {
            const float *const src = rows + (idx ? idx[r] : r) * dim + d0;
            for (size_t j = 0; j < nd; j++)
                col[j * m + r] = src[j];
        }
        for (size_t j = 0; j < nd; j++)
            select_tails(col + j * m, m, k_lo, &plo[d0 + j], &phi[d0 + j]);
    }
    free(cols);
    return KILN_OK;
}

/* Decision 2: one step, levels centred on each dimension's range. */
static void derive_centred(kiln_q4 *q, const float *plo, const float *phi) {
    double widest = 0;
    for (uint32_t i = 0; i < q->dim; i++)
        if ((double)phi[i] - plo[i] > widest)
            widest = (double)phi[i] - plo[i];
    float step = (float)(widest / (KILN_Q4_LEVELS - 1));
    if (!(step >= FLT_MIN) || !isfinite(step))
        step = 1.0f; /* every dimension constant: all codes equal, any step will do */
    q->step = step;
    for (uint32_t i = 0; i < q->dim; i++)
        q->lo[i] = (float)(((double)plo[i] + phi[i]) / 2 - 7.5 * step);
}

/* Decision 4: the weights and the offset R of the IP norm, or false when
 * 225 d + 2R does not fit in int32. */
static bool derive_ip_weights(kiln_q4 *q) {
    double bound = 0;
    for (uint32_t i = 0; i < q->dim; i++) {
        q->ip_weight[i] = 2.0 * ((double)q->lo[i] + 7.5 * q->step) / q->step;
        bound += 7.5 * fabs(q->ip_weight[i]);
    }
    const double r = ceil(bound) + 1;
    if (!(225.0 * q->dim + 2 * r <= (double)INT32_MAX))
        return false;
    q->ip_offset = (uint32_t)r;
    return true;
}

/* Decision 4's fallback: symmetric levels around zero, no weight term. */
static void derive_symmetric(kiln_q4 *q, const float *plo, const float *phi) {
    double amax = 0;
    for (uint32_t i = 0; i < q->dim; i++) {
        amax = fabs((double)plo[i]) > amax ? fabs((double)plo[i]) : amax;
        amax = fabs((double)phi[i]) > amax ? fabs((double)phi[i]) : amax;
    }
    float step = (float)(amax / 7.5);
    if (!(step >= FLT_MIN) || !isfinite(step))
        step = 1.0f;
    q->step = step;
    for (uint32_t i = 0; i < q->dim; i++) {
        q->lo[i] = -7.5f * step;
        q->ip_weight[i] = 0;
    }
    q->ip_offset = 0;
}

/* ==== Training ==== */

kiln_status kiln_q4_train(kiln_ctx *ctx, const float *rows, size_t n, size_t dim,
                          kiln_metric metric, uint64_t seed, uint32_t threads, kiln_q4 **out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "quantizer training: the result pointer is NULL");
    *out = NULL;
    if (!rows || n == 0)
        return kiln_fail(ctx, KILN_E_ARG, "quantizer training: no rows to train on");
    if (dim == 0 || dim > KILN_Q4_MAX_DIM)
        return kiln_fail(ctx, KILN_E_RANGE, "quantizer training: dimension %zu is outside 1..%d",
                         dim, KILN_Q4_MAX_DIM);
    if (!metric_valid(metric))
        return kiln_fail(ctx, KILN_E_ARG, "quantizer training: metric %d is not L2, IP or COS",
                         (int)metric);
    const size_t m = n < Q4_SAMPLE_ROWS ? n : Q4_SAMPLE_ROWS;
    kiln_q4 *q = NULL;
    size_t *idx = NULL;
    float *plo = NULL, *phi = NULL;
    kiln_status st = kiln_calloc(ctx, sizeof *q, "quantizer", (void **)&q);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, dim * sizeof *q->lo, "quantizer offsets", (void **)&q->lo);
    if (st == KILN_OK && metric != KILN_METRIC_L2)
        st = kiln_alloc(ctx, dim * sizeof *q->ip_weight, "quantizer weights",
                        (void **)&q->ip_weight);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, dim * sizeof *plo, "quantizer ranges", (void **)&plo);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, dim * sizeof *phi, "quantizer ranges", (void **)&phi);
    if (st == KILN_OK && m < n) {
        st = kiln_alloc(ctx, m * sizeof *idx, "quantizer sample", (void **)&idx);
        if (st == KILN_OK) {
            kiln_rng rng;
            kiln_rng_seed(&rng, seed);
            for (size_t r = 0; r < m; r++)
                idx[r] = (size_t)kiln_rng_below(&rng, n);
            qsort(idx, m, sizeof *idx, cmp_size); /* rows in file order: locality */
        }
    }
    if (st == KILN_OK)
        st = train_ranges(ctx, rows, dim, idx, m, threads, plo, phi);
    if (st == KILN_OK) {
        q->metric = metric;
        q->dim = (uint32_t)dim;
        q->words = kiln_q4_words(dim);
        q->sample_rows = m;
        derive_centred(q, plo, phi);
        if (metric != KILN_METRIC_L2 && !derive_ip_weights(q))
            derive_symmetric(q, plo, phi);
        *out = q;
        q = NULL;
    }
    free(idx);
    free(plo);
    free(phi);
    kiln_q4_free(q);
    return st;
}

void kiln_q4_free(kiln_q4 *q) {
    if (!q)
        return;
    free(q->lo);
    free(q->ip_weight);
    free(q);
}

/* ==== Encoding ==== */

void kiln_q4_codes(const kiln_q4 *q, const float *row, uint8_t *codes) {
    for (uint32_t i = 0; i < q->dim; i++)
        codes[i] = q4_code(row[i], q->lo[i], q->step);
}

/* Bit p of each of the 8 code bytes in x (byte k from the least significant
 * end), packed so that byte k's bit lands at bit k: the mask leaves one bit
 * per byte, and the multiply moves byte k's bit from position 8k to 56 + k
 * (its partial products never overlap, so nothing carries). */
static inline uint64_t q4_gather8(uint64_t x, unsigned p) {
    return ((x >> p & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56;
}

void kiln_q4_slice(const kiln_q4 *q, const uint8_t *codes, uint64_t *planes) {
    const uint32_t w = q->words;
    memset(planes, 0, kiln_q4_stride(w) * sizeof *planes);
    for (uint32_t i = 0; i < q->dim; i += 8) {
        uint8_t group[8] = {0};
        memcpy(group, codes + i, q->dim - i < 8 ? q->dim - i : 8);
        const uint64_t x = kiln_get_u64le(group);
        for (unsigned p = 0; p < KILN_Q4_BITS; p++)
            planes[p * w + i / 64] |= q4_gather8(x, p) << (i & 63);
    }
}

uint32_t kiln_q4_norm(const kiln_q4 *q, const uint8_t *codes) {
    if (q->metric == KILN_METRIC_L2) {
        uint32_t sum = 0;
        for (uint32_t i = 0; i < q->dim; i++)
            sum += (uint32_t)codes[i] * codes[i];
        return sum;
    }
    int64_t sum = 0;
    double weighted = 0;
    for (uint32_t i = 0; i < q->dim; i++) {
        sum += codes[i];
        weighted += q->ip_weight[i] * ((double)codes[i] - 7.5);
    }
    const int64_t norm = 15 * sum - (int64_t)llround(weighted) + (int64_t)q->ip_offset;
    assert(norm >= 0 && norm <= 225 * (int64_t)q->dim + 2 * (int64_t)q->ip_offset);
    return (uint32_t)norm;
}

void kiln_q4_decode(const kiln_q4 *q, const uint8_t *codes, float *row) {
    for (uint32_t i = 0; i < q->dim; i++)
        row[i] = q->lo[i] + (float)codes[i] * q->step;
}

/* Rows r of [0, count): row r is rows[r] (rows != NULL), or base[ids[r]] -
 * centers[center_of[r]] (a residual, rows == NULL), each dim floats. */
typedef struct encode_src {
    const float *rows;
    const float *base, *centers;
    const uint32_t *ids, *center_of;
} encode_src;

static kiln_status encode(kiln_ctx *ctx, const kiln_q4 *q, const encode_src *src, size_t count,
                          uint32_t threads, uint64_t *planes, uint32_t *norms) {
    if (count == 0)
        return KILN_OK;
    const int nt = kiln_threads(threads);
    uint8_t *scratch;
    const kiln_status st =
        kiln_alloc(ctx, (size_t)nt * q->dim, "quantizer codes", (void **)&scratch);
    if (st != KILN_OK)
        return st;
    const size_t stride = kiln_q4_stride(q->words), dim = q->dim;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (ptrdiff_t r = 0; r < (ptrdiff_t)count; r++) {
        uint8_t *const codes = scratch + (size_t)omp_get_thread_num() * dim;
        if (src->rows) {
            kiln_q4_codes(q, src->rows + (size_t)r * dim, codes);
        } else {
            const float *x = src->base + (size_t)src->ids[r] * dim;
            const float *c = src->centers + (size_t)src->center_of[r] * dim;
            for (size_t i = 0; i < dim; i++)
                codes[i] = q4_code(x[i] - c[i], q->lo[i], q->step);
        }
        kiln_q4_slice(q, codes, planes + (size_t)r * stride);
        norms[r] = kiln_q4_norm(q, codes);
    }
    free(scratch);
    return KILN_OK;
}

kiln_status kiln_q4_encode(kiln_ctx *ctx, const kiln_q4 *q, const float *rows, size_t count,
                           uint32_t threads, uint64_t *planes, uint32_t *norms) {
    if (!q || (count && (!rows || !planes || !norms)))
        return kiln_fail(ctx, KILN_E_ARG, "quantized encoding: NULL argument");
    const encode_src src = {.rows = rows};
    return encode(ctx, q, &src, count, threads, planes, norms);
}

kiln_status kiln_q4_encode_residuals(kiln_ctx *ctx, const kiln_q4 *q, const float *base,
                                     const uint32_t *ids, const float *centers,
                                     const uint32_t *center_of, size_t count, uint32_t threads,
                                     uint64_t *planes, uint32_t *norms) {
    if (!q || (count && (!base || !ids || !centers || !center_of || !planes || !norms)))
        return kiln_fail(ctx, KILN_E_ARG, "quantized residual encoding: NULL argument");
    const encode_src src = {.base = base, .centers = centers, .ids = ids, .center_of = center_of};
    return encode(ctx, q, &src, count, threads, planes, norms);
}

kiln_status kiln_q4_set_encode(kiln_ctx *ctx, const kiln_q4 *q, const float *rows, size_t count,
                               uint32_t threads, kiln_q4_set *out) {
    if (!q || !out)
        return kiln_fail(ctx, KILN_E_ARG, "quantized set encoding: NULL argument");
    memset(out, 0, sizeof *out);
    size_t words, bytes;
    if (kiln_mul_size(count, kiln_q4_stride(q->words), &words) ||
        kiln_mul_size(words, sizeof(uint64_t), &bytes))
        return kiln_fail(ctx, KILN_E_RANGE, "%zu vectors of dimension %u are too many to encode",
                         count, q->dim);
    kiln_q4_set set = {.count = count, .words = q->words};
    kiln_status st = kiln_alloc_aligned(ctx, bytes, "4-bit codes", (void **)&set.planes);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, count * sizeof *set.norms, "4-bit norms", (void **)&set.norms);
    if (st == KILN_OK)
        st = kiln_q4_encode(ctx, q, rows, count, threads, set.planes, set.norms);
    if (st != KILN_OK) {
        kiln_q4_set_release(&set);
        return st;
    }
    *out = set;
    return KILN_OK;
}

void kiln_q4_set_release(kiln_q4_set *set) {
    if (!set)
        return;
    kiln_free_aligned(set->planes);
    free(set->norms);
    memset(set, 0, sizeof *set);
}

/* ==== Distances ==== */

uint32_t kiln_q4_dist_ref(const uint64_t *a, uint32_t norm_a, const uint64_t *b, uint32_t norm_b,
                          uint32_t words) {
    uint32_t dot = 0;
    for (uint32_t w = 0; w < words; w++)
        for (unsigned p = 0; p < KILN_Q4_BITS; p++)
            for (unsigned r = 0; r < KILN_Q4_BITS; r++)
                dot += (uint32_t)__builtin_popcountll(a[p * words + w] & b[r * words + w])
                       << (p + r);
    return norm_a + norm_b - 2u * dot;
}

uint32_t kiln_q4_dist_codes(const uint8_t *a, uint32_t norm_a, const uint8_t *b, uint32_t norm_b,
                            size_t dim) {
    uint32_t dot = 0;
    for (size_t i = 0; i < dim; i++)
        dot += (uint32_t)a[i] * b[i];
    return norm_a + norm_b - 2u * dot;
}

/* ==== Per-cluster top-k reference ==== */

kiln_status kiln_q4_cluster_knn_ref(kiln_ctx *ctx, const kiln_q4_set *set, const uint64_t *offsets,
                                    size_t n_clusters, const uint32_t *members, uint32_t k,
                                    uint32_t threads, kiln_q4_neighbor *out) {
    if (!set || !offsets || k == 0)
        return kiln_fail(ctx, KILN_E_ARG, "reference cluster kNN: NULL argument or k = 0");
    size_t largest = 0;
    for (size_t c = 0; c < n_clusters; c++) {
        if (offsets[c + 1] < offsets[c])
            return kiln_fail(ctx, KILN_E_ARG, "cluster offsets decrease at cluster %zu", c);
        if (offsets[c + 1] - offsets[c] > largest)
            largest = offsets[c + 1] - offsets[c];
    }
    if (offsets[n_clusters] > offsets[0] && (!members || !out))
        return kiln_fail(ctx, KILN_E_ARG, "reference cluster kNN: NULL members or output");
    for (size_t s = offsets[0]; s < offsets[n_clusters]; s++)
        if (members[s] >= set->count)
            return kiln_fail(ctx, KILN_E_RANGE,
                             "cluster member slot %zu holds id %u of %zu vectors", s, members[s],
                             set->count);
    const int nt = kiln_threads(threads);
    size_t key_bytes;
    if (kiln_mul_size(largest + 1, (size_t)nt * sizeof(uint64_t), &key_bytes))
        return kiln_fail(ctx, KILN_E_RANGE, "a cluster of %zu members is too large", largest);
    uint64_t *keys;
    const kiln_status st = kiln_alloc(ctx, key_bytes, "top-k reference keys", (void **)&keys);
    if (st != KILN_OK)
        return st;
    const size_t stride = kiln_q4_stride(set->words);
#pragma omp parallel for num_threads(nt) schedule(dynamic)
    for (ptrdiff_t c = 0; c < (ptrdiff_t)n_clusters; c++) {
        uint64_t *const key = keys + (size_t)omp_get_thread_num() * (largest + 1);
        for (size_t s = offsets[c]; s < offsets[c + 1]; s++) {
            const uint32_t qid = members[s];
            size_t nk = 0;
            for (size_t t = offsets[c]; t < offsets[c + 1]; t++) {
                const uint32_t id = members[t];
                if (id == qid)
                    continue;
                const uint32_t d =
                    kiln_q4_dist_ref(set->planes + (size_t)qid * stride, set->norms[qid],
                                     set->planes + (size_t)id * stride, set->norms[id], set->words);
                key[nk++] = (uint64_t)d << 32 | id; /* (dist, id) order as one integer */
            }
            qsort(key, nk, sizeof *key, cmp_u64);
            kiln_q4_neighbor *const row = out + (size_t)s * k;
            for (uint32_t j = 0; j < k; j++) {
                row[j].dist = j < nk ? (uint32_t)(key[j] >> 32) : KILN_Q4_NO_DIST;
                row[j].id = j < nk ? (uint32_t)key[j] : KILN_Q4_NO_ID;
            }
        }
    }
    free(keys);
    return KILN_OK;
}
