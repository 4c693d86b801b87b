/* codec.c -- compact vector rows for kiln_storage F16 and INT8: binary16
 * conversion, the per-row int8 scale, and the distances search and the
 * live writers compute on them, with scalar references, AVX2 (+F16C, FMA)
 * and AVX-512F kernels and runtime dispatch (issue 14 item 7).
 *
 * Design decisions:
 *  1. Search distances are asymmetric: the query stays f32 and each row is
 *     widened to f32 in registers (vcvtph2ps; vpmovsxbd + vcvtdq2ps), so
 *     the only error is the row's own rounding, and a query needs no
 *     preparation. INT8 L2 is sum ((q_i - o) - s c_i)^2 with one fused
 *     multiply-subtract per component, not a norm expansion, which would
 *     need a norm per row and cancels badly for near rows.
 *  2. INT8 is Redis vector sets' Q8 (modules/vector-sets/hnsw.c) with an
 *     offset: one f32 scale per row and codes in [-127, 127], so no
 *     training pass and no global range (a row added later is encoded
 *     alone, as a row of the build was), adapting to each row's norm; and
 *     one f32 offset per row, the middle of the row's range, so a row whose
 *     components are all of one sign (SIFT, image pixels: most embedding
 *     data after a ReLU) uses all 255 levels, not the 128 of Q8's
 *     max|x| / 127, halving the rounding step. For a row symmetric about
 *     zero the offset is 0 and the codes are Q8's. Measured on siftsmall
 *     (insert build, one thread), recall@10 at ef 16 / 64 against f32's
 *     0.9690 / 0.9970: Q8 0.9580 / 0.9860, with the offset 0.9660 / 0.9930
 *     (tests/test_storage.c asserts ef 64 within 0.01). 4 bytes a row
 *     more: 136 bytes for 128 components against f32's 512. Scale and
 *     offset sit in front of the codes, one stream of bytes to fetch.
 *  3. Row against row (pruning, repair and reconnection of the live
 *     writers): INT8 in integers, sum ca, cb, ca^2, cb^2 and ca cb exact
 *     in int32 (127^2 * 65536 < 2^31), combined in double, so the distance
 *     of two near rows does not cancel. F16 widens both.
 *     These run once per candidate pair in the writers, not per query, so
 *     they have AVX2 kernels only (an AVX-512 process uses those).
 *  4. Tails (dim not a multiple of the lanes) are copied into a zeroed
 *     register-sized buffer rather than read with masks: byte and 16-bit
 *     masked loads need AVX-512BW, and a zero component adds nothing to
 *     either distance. The query's tail is read with the float masks of
 *     common/distance.c.
 *  5. The scalar conversion rounds to nearest even and handles subnormals,
 *     infinities and NaN as F16C does; the tests check it against the
 *     instructions on all 65536 halves and on random floats. Off x86 only
 *     the scalar kernels exist (common/distance.c decision 6).
 *  6. The choice of kernels follows kiln_simd_level (KILN_SIMD caps both),
 *     so one process never mixes widths between f32 and compact rows.
 */
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "codec_internal.h"
#include "distance_internal.h"

#if KILN_SIMD_X86
#include <cpuid.h>
#include <immintrin.h>
#endif

/* ==== Tunables ==== */

#define INT8_LEVELS 127.0f /* codes in [-127, 127]: symmetric, as Redis's Q8 */

/* ==== Binary16 ==== */

uint16_t kiln_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf, or NaN kept quiet with its top payload bits */
        return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0));
    if (a >= 0x477ff000u) /* rounds to 65520 or more: beyond binary16 */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {    /* below 2^-14: a subnormal half, or zero */
        if (a <= 0x33000000u) /* at most 2^-25: rounds (to even) to zero */
            return sign;
        const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        r += rem > half || (rem == half && (r & 1));
        return (uint16_t)(sign | r); /* r == 0x400 is the smallest normal, as wanted */
    }
    const uint32_t r = a - 0x38000000u; /* exponent rebased from 127 to 15 */
    uint32_t h = r >> 13;
    const uint32_t rem = r & 0x1fffu;
    h += rem > 0x1000u || (rem == 0x1000u && (h & 1));
    return (uint16_t)(sign | h);
}

float kiln_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t x;
    if (e == 0x1f)
        x = sign | 0x7f800000u | (m << 13);
    else if (e)
        x = sign | ((e + 112) << 23) | (m << 13);
    else {
        const float v = (float)m * 0x1p-24f; /* exact: m < 2^10 */
        memcpy(&x, &v, sizeof x);
        x |= sign;
    }
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

/* ==== Rows ==== */

static inline float row_scale(const void *row) {
    float s;
    memcpy(&s, row, sizeof s);
    return s;
}

static inline float row_offset(const void *row) {
    float o;
    memcpy(&o, (const uint8_t *)row + 4, sizeof o);
    return o;
}

static inline const int8_t *row_codes(const void *row) { return (const int8_t *)row + 8; }

void kiln_encode_row(kiln_storage s, const float *x, size_t dim, void *row) {
    if (s == KILN_STORAGE_F16) {
        uint16_t *h = row;
        for (size_t i = 0; i < dim; i++)
            h[i] = kiln_f32_to_f16(x[i]);
        return;
    }
    float lo = dim ? x[0] : 0.0f, hi = lo;
    bool finite = true;
    for (size_t i = 0; i < dim; i++) {
        finite = finite && isfinite(x[i]);
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    int8_t *c = (int8_t *)row + 8;
    memset(c, 0, kiln_code_bytes(s, dim) - 8); /* the padding too: files are canonical */
    /* Halves first, so that neither overflows for rows near FLT_MAX. */
    const float offset = finite ? hi / 2 + lo / 2 : 0.0f;
    const float scale = finite ? hi / (2 * INT8_LEVELS) - lo / (2 * INT8_LEVELS) : NAN;
    memcpy(row, &scale, sizeof scale);
    memcpy((uint8_t *)row + 4, &offset, sizeof offset);
    if (!finite || !(scale > 0.0f))
        return;
    const float inv = 1.0f / scale;
    for (size_t i = 0; i < dim; i++) {
        const float v = roundf((x[i] - offset) * inv);
        c[i] = (int8_t)(v > INT8_LEVELS ? INT8_LEVELS : v < -INT8_LEVELS ? -INT8_LEVELS : v);
    }
}

void kiln_decode_row(kiln_storage s, const void *row, size_t dim, float *out) {
    if (s == KILN_STORAGE_F16) {
        const uint16_t *h = row;
        for (size_t i = 0; i < dim; i++)
            out[i] = kiln_f16_to_f32(h[i]);
        return;
    }
    const float scale = row_scale(row), offset = row_offset(row);
    const int8_t *c = row_codes(row);
    for (size_t i = 0; i < dim; i++)
        out[i] = offset + scale * (float)c[i];
}

/* ==== Scalar references ==== */

float kiln_l2sq_f16_scalar(const float *q, const void *row, size_t dim) {
    const uint16_t *h = row;
    float sum = 0.0f;
    for (size_t i = 0; i < dim; i++) {
        const float d = q[i] - kiln_f16_to_f32(h[i]);
        sum += d * d;
    }
    return sum;
}

float kiln_ipdist_f16_scalar(const float *q, const void *row, size_t dim) {
    const uint16_t *h = row;
    float dot = 0.0f;
    for (size_t i = 0; i < dim; i++)
        dot += q[i] * kiln_f16_to_f32(h[i]);
    return 1.0f - dot;
}

float kiln_l2sq_i8_scalar(const float *q, const void *row, size_t dim) {
    const float s = row_scale(row), o = row_offset(row);
    const int8_t *c = row_codes(row);
    float sum = 0.0f;
    for (size_t i = 0; i < dim; i++) {
        const float d = (q[i] - o) - s * (float)c[i];
        sum += d * d;
    }
    return sum;
}

float kiln_ipdist_i8_scalar(const float *q, const void *row, size_t dim) {
    const int8_t *c = row_codes(row);
    float qsum = 0.0f, dot = 0.0f;
    for (size_t i = 0; i < dim; i++) {
        qsum += q[i];
        dot += q[i] * (float)c[i];
    }
    return 1.0f - (row_offset(row) * qsum + row_scale(row) * dot);
}

float kiln_l2sq_f16_pair_scalar(const void *a, const void *b, size_t dim) {
    const uint16_t *x = a, *y = b;
    float sum = 0.0f;
    for (size_t i = 0; i < dim; i++) {
        const float d = kiln_f16_to_f32(x[i]) - kiln_f16_to_f32(y[i]);
        sum += d * d;
    }
    return sum;
}

float kiln_ipdist_f16_pair_scalar(const void *a, const void *b, size_t dim) {
    const uint16_t *x = a, *y = b;
    float dot = 0.0f;
    for (size_t i = 0; i < dim; i++)
        dot += kiln_f16_to_f32(x[i]) * kiln_f16_to_f32(y[i]);
    return 1.0f - dot;
}

/* Exact integer sums over two rows' codes (decision 3): sum ca, cb, ca^2,
 * cb^2 and ca cb. */
typedef struct i8_sums {
    int64_t a, b, aa, bb, ab;
} i8_sums;

/* Decision 3: sum ((oa - ob) + sa ca - sb cb)^2 from the sums, in double. */
static float i8_pair_l2(const void *ra, const void *rb, size_t dim, i8_sums t) {
    const double sa = row_scale(ra), sb = row_scale(rb);
    const double dof = (double)row_offset(ra) - (double)row_offset(rb);
    const double d = (double)dim * dof * dof + sa * sa * (double)t.aa + sb * sb * (double)t.bb +
                     2.0 * dof * (sa * (double)t.a - sb * (double)t.b) -
                     2.0 * sa * sb * (double)t.ab;
    return d > 0.0 ? (float)d : d == d ? 0.0f : NAN;
}

/* 1 - sum (oa + sa ca)(ob + sb cb) from the sums. */
static float i8_pair_ip(const void *ra, const void *rb, size_t dim, i8_sums t) {
    const double sa = row_scale(ra), sb = row_scale(rb), oa = row_offset(ra), ob = row_offset(rb);
    return (float)(1.0 - ((double)dim * oa * ob + oa * sb * (double)t.b + ob * sa * (double)t.a +
                          sa * sb * (double)t.ab));
}

static i8_sums i8_sums_scalar(const void *ra, const void *rb, size_t dim) {
    const int8_t *x = row_codes(ra), *y = row_codes(rb);
    int32_t a = 0, b = 0, aa = 0, bb = 0, ab = 0;
    for (size_t i = 0; i < dim; i++) {
        a += x[i];
        b += y[i];
        aa += x[i] * x[i];
        bb += y[i] * y[i];
        ab += x[i] * y[i];
    }
    return (i8_sums){a, b, aa, bb, ab};
}

float kiln_l2sq_i8_pair_scalar(const void *a, const void *b, size_t dim) {
    return i8_pair_l2(a, b, dim, i8_sums_scalar(a, b, dim));
}

float kiln_ipdist_i8_pair_scalar(const void *a, const void *b, size_t dim) {
    return i8_pair_ip(a, b, dim, i8_sums_scalar(a, b, dim));
}

#if KILN_SIMD_X86

/* ==== AVX2 + F16C + FMA ==== */

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

static const int32_t tail_mask_tab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

AVX2_TARGET static inline __m256 avx2_load_q_tail(const float *q, size_t r) {
    return _mm256_maskload_ps(q, _mm256_loadu_si256((const __m256i *)(tail_mask_tab + 8 - r)));
}

AVX2_TARGET static inline float avx2_sum(__m256 v) {
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* 8 halves at h, widened. */
AVX2_TARGET static inline __m256 avx2_f16(const uint16_t *h) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)h));
}

/* The last r < 8 halves at h, zero-padded (decision 4). */
AVX2_TARGET static inline __m256 avx2_f16_tail(const uint16_t *h, size_t r) {
    uint16_t t[8] = {0};
    memcpy(t, h, r * sizeof *t);
    return avx2_f16(t);
}

/* 8 codes at c, widened. */
AVX2_TARGET static inline __m256 avx2_i8(const int8_t *c) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)c)));
}

AVX2_TARGET static inline __m256 avx2_i8_tail(const int8_t *c, size_t r) {
    int8_t t[8] = {0};
    memcpy(t, c, r);
    return avx2_i8(t);
}

AVX2_TARGET float kiln_l2sq_f16_avx2(const float *q, const void *row, size_t dim) {
    const uint16_t *h = row;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(q + i), avx2_f16(h + i));
        const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(q + i + 8), avx2_f16(h + i + 8));
        const __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(q + i + 16), avx2_f16(h + i + 16));
        const __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(q + i + 24), avx2_f16(h + i + 24));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
        s2 = _mm256_fmadd_ps(d2, d2, s2);
        s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    for (; i + 8 <= dim; i += 8) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(q + i), avx2_f16(h + i));
        s0 = _mm256_fmadd_ps(d, d, s0);
    }
    if (i < dim) {
        const __m256 d =
            _mm256_sub_ps(avx2_load_q_tail(q + i, dim - i), avx2_f16_tail(h + i, dim - i));
        s1 = _mm256_fmadd_ps(d, d, s1);
    }
    return avx2_sum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

AVX2_TARGET float kiln_ipdist_f16_avx2(const float *q, const void *row, size_t dim) {
    const uint16_t *h = row;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), avx2_f16(h + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), avx2_f16(h + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 16), avx2_f16(h + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 24), avx2_f16(h + i + 24), s3);
    }
    for (; i + 8 <= dim; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), avx2_f16(h + i), s0);
    if (i < dim)
        s1 = _mm256_fmadd_ps(avx2_load_q_tail(q + i, dim - i), avx2_f16_tail(h + i, dim - i), s1);
    return 1.0f - avx2_sum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

AVX2_TARGET float kiln_l2sq_i8_avx2(const float *q, const void *row, size_t dim) {
    const int8_t *c = row_codes(row);
    const __m256 s = _mm256_set1_ps(row_scale(row)), o = _mm256_set1_ps(row_offset(row));
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
#define Q(k) _mm256_sub_ps(_mm256_loadu_ps(q + i + (k)), o)
    for (; i + 32 <= dim; i += 32) {
        const __m256 d0 = _mm256_fnmadd_ps(s, avx2_i8(c + i), Q(0));
        const __m256 d1 = _mm256_fnmadd_ps(s, avx2_i8(c + i + 8), Q(8));
        const __m256 d2 = _mm256_fnmadd_ps(s, avx2_i8(c + i + 16), Q(16));
        const __m256 d3 = _mm256_fnmadd_ps(s, avx2_i8(c + i + 24), Q(24));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
        s2 = _mm256_fmadd_ps(d2, d2, s2);
        s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    for (; i + 8 <= dim; i += 8) {
        const __m256 d = _mm256_fnmadd_ps(s, avx2_i8(c + i), Q(0));
        s0 = _mm256_fmadd_ps(d, d, s0);
    }
#undef Q
    if (i < dim) { /* the tail's padding lanes must give 0: q - o there is masked too */
        const __m256i m = _mm256_loadu_si256((const __m256i *)(tail_mask_tab + 8 - (dim - i)));
        const __m256 qo = _mm256_and_ps(_mm256_sub_ps(avx2_load_q_tail(q + i, dim - i), o),
                                        _mm256_castsi256_ps(m));
        const __m256 d = _mm256_fnmadd_ps(s, avx2_i8_tail(c + i, dim - i), qo);
        s1 = _mm256_fmadd_ps(d, d, s1);
    }
    return avx2_sum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

AVX2_TARGET float kiln_ipdist_i8_avx2(const float *q, const void *row, size_t dim) {
    const int8_t *c = row_codes(row);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 q0 = _mm256_setzero_ps(), q1 = _mm256_setzero_ps(); /* sum q, for the offset */
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        const __m256 a = _mm256_loadu_ps(q + i), b = _mm256_loadu_ps(q + i + 8);
        s0 = _mm256_fmadd_ps(a, avx2_i8(c + i), s0);
        s1 = _mm256_fmadd_ps(b, avx2_i8(c + i + 8), s1);
        q0 = _mm256_add_ps(q0, a);
        q1 = _mm256_add_ps(q1, b);
    }
    for (; i + 8 <= dim; i += 8) {
        const __m256 a = _mm256_loadu_ps(q + i);
        s0 = _mm256_fmadd_ps(a, avx2_i8(c + i), s0);
        q0 = _mm256_add_ps(q0, a);
    }
    if (i < dim) {
        const __m256 a = avx2_load_q_tail(q + i, dim - i);
        s1 = _mm256_fmadd_ps(a, avx2_i8_tail(c + i, dim - i), s1);
        q1 = _mm256_add_ps(q1, a);
    }
    return 1.0f - (row_offset(row) * avx2_sum(_mm256_add_ps(q0, q1)) +
                   row_scale(row) * avx2_sum(_mm256_add_ps(s0, s1)));
}

AVX2_TARGET float kiln_l2sq_f16_pair_avx2(const void *a, const void *b, size_t dim) {
    const uint16_t *x = a, *y = b;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        const __m256 d0 = _mm256_sub_ps(avx2_f16(x + i), avx2_f16(y + i));
        const __m256 d1 = _mm256_sub_ps(avx2_f16(x + i + 8), avx2_f16(y + i + 8));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
    }
    for (; i < dim; i += 8) {
        const size_t r = dim - i < 8 ? dim - i : 8;
        const __m256 d = _mm256_sub_ps(avx2_f16_tail(x + i, r), avx2_f16_tail(y + i, r));
        s0 = _mm256_fmadd_ps(d, d, s0);
    }
    return avx2_sum(_mm256_add_ps(s0, s1));
}

AVX2_TARGET float kiln_ipdist_f16_pair_avx2(const void *a, const void *b, size_t dim) {
    const uint16_t *x = a, *y = b;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        s0 = _mm256_fmadd_ps(avx2_f16(x + i), avx2_f16(y + i), s0);
        s1 = _mm256_fmadd_ps(avx2_f16(x + i + 8), avx2_f16(y + i + 8), s1);
    }
    for (; i < dim; i += 8) {
        const size_t r = dim - i < 8 ? dim - i : 8;
        s0 = _mm256_fmadd_ps(avx2_f16_tail(x + i, r), avx2_f16_tail(y + i, r), s0);
    }
    return 1.0f - avx2_sum(_mm256_add_ps(s0, s1));
}

AVX2_TARGET static inline int64_t avx2_isum(__m256i v) {
    const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1)));
}

/* The sums of i8_sums_scalar, exact in int32 lanes (decision 3). */
AVX2_TARGET static inline i8_sums avx2_i8_sums(const void *ra, const void *rb, size_t dim) {
    const int8_t *x = row_codes(ra), *y = row_codes(rb);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i sa = _mm256_setzero_si256(), sb = _mm256_setzero_si256(), saa = _mm256_setzero_si256(),
            sbb = _mm256_setzero_si256(), sab = _mm256_setzero_si256();
    for (size_t i = 0; i < dim; i += 16) {
        __m128i xa, ya;
        if (dim - i >= 16) {
            xa = _mm_loadu_si128((const __m128i *)(const void *)(x + i));
            ya = _mm_loadu_si128((const __m128i *)(const void *)(y + i));
        } else { /* decision 4 */
            int8_t tx[16] = {0}, ty[16] = {0};
            memcpy(tx, x + i, dim - i);
            memcpy(ty, y + i, dim - i);
            xa = _mm_loadu_si128((const __m128i *)(const void *)tx);
            ya = _mm_loadu_si128((const __m128i *)(const void *)ty);
        }
        const __m256i xw = _mm256_cvtepi8_epi16(xa), yw = _mm256_cvtepi8_epi16(ya);
        sa = _mm256_add_epi32(sa, _mm256_madd_epi16(xw, ones));
        sb = _mm256_add_epi32(sb, _mm256_madd_epi16(yw, ones));
        saa = _mm256_add_epi32(saa, _mm256_madd_epi16(xw, xw));
        sbb = _mm256_add_epi32(sbb, _mm256_madd_epi16(yw, yw));
        sab = _mm256_add_epi32(sab, _mm256_madd_epi16(xw, yw));
    }
    return (i8_sums){avx2_isum(sa), avx2_isum(sb), avx2_isum(saa), avx2_isum(sbb), avx2_isum(sab)};
}

AVX2_TARGET float kiln_l2sq_i8_pair_avx2(const void *a, const void *b, size_t dim) {
    return i8_pair_l2(a, b, dim, avx2_i8_sums(a, b, dim));
}

AVX2_TARGET float kiln_ipdist_i8_pair_avx2(const void *a, const void *b, size_t dim) {
    return i8_pair_ip(a, b, dim, avx2_i8_sums(a, b, dim));
}

/* ==== AVX-512F ==== */

#define AVX512_TARGET __attribute__((target("avx512f")))

AVX512_TARGET static inline __m512 avx512_f16(const uint16_t *h) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)h));
}

AVX512_TARGET static inline __m512 avx512_i8(const int8_t *c) {
    return _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)c)));
}

/* The query's last r < 16 floats, zero-padded (the row's go through a
 * buffer, decision 4). */
AVX512_TARGET static inline __m512 avx512_q_tail(const float *q, size_t r) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << r) - 1u), q);
}

AVX512_TARGET float kiln_l2sq_f16_avx512(const float *q, const void *row, size_t dim) {
    const uint16_t *h = row;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= dim; i += 64) {
        const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(q + i), avx512_f16(h + i));
        const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(q + i + 16), avx512_f16(h + i + 16));
        const __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(q + i + 32), avx512_f16(h + i + 32));
        const __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(q + i + 48), avx512_f16(h + i + 48));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
        s2 = _mm512_fmadd_ps(d2, d2, s2);
        s3 = _mm512_fmadd_ps(d3, d3, s3);
    }
    for (; i + 16 <= dim; i += 16) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(q + i), avx512_f16(h + i));
        s0 = _mm512_fmadd_ps(d, d, s0);
    }
    if (i < dim) {
        uint16_t t[16] = {0};
        memcpy(t, h + i, (dim - i) * sizeof *t);
        const __m512 d = _mm512_sub_ps(avx512_q_tail(q + i, dim - i), avx512_f16(t));
        s1 = _mm512_fmadd_ps(d, d, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

AVX512_TARGET float kiln_ipdist_f16_avx512(const float *q, const void *row, size_t dim) {
    const uint16_t *h = row;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= dim; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), avx512_f16(h + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), avx512_f16(h + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 32), avx512_f16(h + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 48), avx512_f16(h + i + 48), s3);
    }
    for (; i + 16 <= dim; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), avx512_f16(h + i), s0);
    if (i < dim) {
        uint16_t t[16] = {0};
        memcpy(t, h + i, (dim - i) * sizeof *t);
        s1 = _mm512_fmadd_ps(avx512_q_tail(q + i, dim - i), avx512_f16(t), s1);
    }
    return 1.0f - _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

AVX512_TARGET float kiln_l2sq_i8_avx512(const float *q, const void *row, size_t dim) {
    const int8_t *c = row_codes(row);
    const __m512 s = _mm512_set1_ps(row_scale(row)), o = _mm512_set1_ps(row_offset(row));
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;
#define Q(k) _mm512_sub_ps(_mm512_loadu_ps(q + i + (k)), o)
    for (; i + 64 <= dim; i += 64) {
        const __m512 d0 = _mm512_fnmadd_ps(s, avx512_i8(c + i), Q(0));
        const __m512 d1 = _mm512_fnmadd_ps(s, avx512_i8(c + i + 16), Q(16));
        const __m512 d2 = _mm512_fnmadd_ps(s, avx512_i8(c + i + 32), Q(32));
        const __m512 d3 = _mm512_fnmadd_ps(s, avx512_i8(c + i + 48), Q(48));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
        s2 = _mm512_fmadd_ps(d2, d2, s2);
        s3 = _mm512_fmadd_ps(d3, d3, s3);
    }
    for (; i + 16 <= dim; i += 16) {
        const __m512 d = _mm512_fnmadd_ps(s, avx512_i8(c + i), Q(0));
        s0 = _mm512_fmadd_ps(d, d, s0);
    }
#undef Q
    if (i < dim) {
        int8_t t[16] = {0};
        memcpy(t, c + i, dim - i);
        const __mmask16 m = (__mmask16)((1u << (dim - i)) - 1u);
        const __m512 qo = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, q + i), o);
        const __m512 d = _mm512_fnmadd_ps(s, avx512_i8(t), qo);
        s1 = _mm512_fmadd_ps(d, d, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

AVX512_TARGET float kiln_ipdist_i8_avx512(const float *q, const void *row, size_t dim) {
    const int8_t *c = row_codes(row);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 q0 = _mm512_setzero_ps(), q1 = _mm512_setzero_ps(); /* sum q, for the offset */
    size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        const __m512 a = _mm512_loadu_ps(q + i), b = _mm512_loadu_ps(q + i + 16);
        s0 = _mm512_fmadd_ps(a, avx512_i8(c + i), s0);
        s1 = _mm512_fmadd_ps(b, avx512_i8(c + i + 16), s1);
        q0 = _mm512_add_ps(q0, a);
        q1 = _mm512_add_ps(q1, b);
    }
    for (; i + 16 <= dim; i += 16) {
        const __m512 a = _mm512_loadu_ps(q + i);
        s0 = _mm512_fmadd_ps(a, avx512_i8(c + i), s0);
        q0 = _mm512_add_ps(q0, a);
    }
    if (i < dim) {
        int8_t t[16] = {0};
        memcpy(t, c + i, dim - i);
        const __m512 a = avx512_q_tail(q + i, dim - i);
        s1 = _mm512_fmadd_ps(a, avx512_i8(t), s1);
        q1 = _mm512_add_ps(q1, a);
    }
    return 1.0f - (row_offset(row) * _mm512_reduce_add_ps(_mm512_add_ps(q0, q1)) +
                   row_scale(row) * _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)));
}

/* CPUID leaf 1, ECX bit 29 (clang's __builtin_cpu_supports has no "f16c");
 * the OS's saving of the registers is checked with AVX2's. */
int kiln_cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#else
int kiln_cpu_has_f16c(void) { return 0; }
#endif /* KILN_SIMD_X86 */

/* ==== Dispatch ==== */

typedef struct codec_dispatch {
    kiln_code_dist_fn l2_f16, ip_f16, l2_i8, ip_i8;
    kiln_code_pair_fn pl2_f16, pip_f16, pl2_i8, pip_i8;
} codec_dispatch;

static pthread_once_t codec_once = PTHREAD_ONCE_INIT;
static codec_dispatch codec; /* written once under codec_once, then read-only */

static void codec_init(void) {
    codec = (codec_dispatch){kiln_l2sq_f16_scalar,      kiln_ipdist_f16_scalar,
                             kiln_l2sq_i8_scalar,       kiln_ipdist_i8_scalar,
                             kiln_l2sq_f16_pair_scalar, kiln_ipdist_f16_pair_scalar,
                             kiln_l2sq_i8_pair_scalar,  kiln_ipdist_i8_pair_scalar};
#if KILN_SIMD_X86
    const int level = kiln_simd_level(); /* decision 6 */
    if (level >= 1 && kiln_cpu_has_f16c())
        codec = (codec_dispatch){kiln_l2sq_f16_avx2,      kiln_ipdist_f16_avx2,
                                 kiln_l2sq_i8_avx2,       kiln_ipdist_i8_avx2,
                                 kiln_l2sq_f16_pair_avx2, kiln_ipdist_f16_pair_avx2,
                                 kiln_l2sq_i8_pair_avx2,  kiln_ipdist_i8_pair_avx2};
    if (level >= 2) {
        codec.l2_f16 = kiln_l2sq_f16_avx512;
        codec.ip_f16 = kiln_ipdist_f16_avx512;
        codec.l2_i8 = kiln_l2sq_i8_avx512;
        codec.ip_i8 = kiln_ipdist_i8_avx512;
    }
#endif
}

kiln_code_dist_fn kiln_code_dist(kiln_storage s, kiln_metric metric) {
    pthread_once(&codec_once, codec_init);
    const bool l2 = metric == KILN_METRIC_L2;
    if (s == KILN_STORAGE_F16)
        return l2 ? codec.l2_f16 : codec.ip_f16;
    return l2 ? codec.l2_i8 : codec.ip_i8;
}

kiln_code_pair_fn kiln_code_pair(kiln_storage s, kiln_metric metric) {
    pthread_once(&codec_once, codec_init);
    const bool l2 = metric == KILN_METRIC_L2;
    if (s == KILN_STORAGE_F16)
        return l2 ? codec.pl2_f16 : codec.pip_f16;
    return l2 ? codec.pl2_i8 : codec.pip_i8;
}
