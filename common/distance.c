/* distance.c -- float distances (squared L2, 1 - dot) with a scalar reference,
 * AVX2+FMA and AVX-512F kernels, runtime dispatch, and vector normalisation.
 *
 * Design decisions:
 *  1. The SIMD kernels live in this one file, each compiled for its own ISA
 *     through __attribute__((target(...))); the rest of kiln is built for the
 *     baseline x86-64, so one binary runs everywhere and uses what it finds.
 *  2. The choice is made once per process (pthread_once) from
 *     __builtin_cpu_supports, which also checks that the OS saves the wide
 *     registers, and capped by KILN_SIMD=scalar|avx2|avx512 so tests and
 *     benchmarks can force a narrower path. An unknown KILN_SIMD is ignored.
 *  3. Four independent accumulators per kernel: a single accumulator (what
 *     hnswlib's space_l2.h does) serialises every FMA behind the previous
 *     one's 4-cycle latency, so the loop runs at a quarter of the load
 *     bandwidth. Four chains keep two FMA ports busy and make the kernel
 *     load-bound, which is the real limit of a distance between two vectors.
 *  4. Tails are handled with masked loads (AVX-512 k-masks, AVX2 maskload),
 *     never a scalar remainder loop, so dim 129 or 784 costs one extra step
 *     rather than up to fifteen scalar ones. Masked-off lanes are not read,
 *     so a vector that ends at the end of a page cannot fault.
 *  5. The scalar reference is the plain loop with a float accumulator. It is
 *     the oracle the SIMD kernels are tested against; it must stay obvious.
 *     The SIMD kernels sum in a different order, so they agree with it within
 *     floating-point rounding, not bit for bit (exactly, for integer-valued
 *     data such as SIFT, whose partial sums are all exact in float).
 *  6. Off x86 (aarch64: Graviton, Grace) only the scalar reference is built,
 *     behind KILN_SIMD_X86. NEON kernels are not written yet: no aarch64
 *     machine is at hand to measure one against the scalar loop (qemu-user
 *     runs the tests, but its timings say nothing about real cores), and an
 *     unmeasured kernel is not worth its risk.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <strings.h>

#include "distance_internal.h"

#if KILN_SIMD_X86
#include <immintrin.h>
#endif

/* ==== Tunables ==== */

/* Floats per AVX2 register and per AVX-512 register. */
#define KILN_AVX2_LANES   8
#define KILN_AVX512_LANES 16

/* ==== Scalar reference ==== */

float kiln_l2sq_scalar(const float *a, const float *b, size_t dim) {
    float sum = 0.0f;
    for (size_t i = 0; i < dim; i++) {
        const float d = a[i] - b[i];
        sum += d * d;
    }
    return sum;
}

float kiln_ipdist_scalar(const float *a, const float *b, size_t dim) {
    float dot = 0.0f;
    for (size_t i = 0; i < dim; i++)
        dot += a[i] * b[i];
    return 1.0f - dot;
}

#if KILN_SIMD_X86

/* ==== AVX2 + FMA ==== */

/* A sliding window over this table gives the maskload mask for the first r
 * lanes: loading 8 ints from &tab[8 - r] yields r all-ones then zeros. */
static const int32_t avx2_tail_mask_tab[2 * KILN_AVX2_LANES] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                                0,  0,  0,  0,  0,  0,  0,  0};

__attribute__((target("avx2,fma"))) static inline __m256i avx2_tail_mask(size_t r) {
    return _mm256_loadu_si256((const __m256i *)(avx2_tail_mask_tab + KILN_AVX2_LANES - r));
}

__attribute__((target("avx2,fma"))) static inline float avx2_hsum(__m256 v) {
    const __m128 lo = _mm256_castps256_ps128(v);
    const __m128 hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) float kiln_l2sq_avx2(const float *a, const float *b,
                                                         size_t dim) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 4 * KILN_AVX2_LANES <= dim; i += 4 * KILN_AVX2_LANES) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        const __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
        const __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
        s0 = _mm256_fmadd_ps(d0, d0, s0);
        s1 = _mm256_fmadd_ps(d1, d1, s1);
        s2 = _mm256_fmadd_ps(d2, d2, s2);
        s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    for (; i + KILN_AVX2_LANES <= dim; i += KILN_AVX2_LANES) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        s0 = _mm256_fmadd_ps(d, d, s0);
    }
    if (i < dim) {
        const __m256i m = avx2_tail_mask(dim - i);
        const __m256 d = _mm256_sub_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m));
        s1 = _mm256_fmadd_ps(d, d, s1);
    }
    return avx2_hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

__attribute__((target("avx2,fma"))) float kiln_ipdist_avx2(const float *a, const float *b,
                                                           size_t dim) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 4 * KILN_AVX2_LANES <= dim; i += 4 * KILN_AVX2_LANES) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + KILN_AVX2_LANES <= dim; i += KILN_AVX2_LANES)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < dim) {
        const __m256i m = avx2_tail_mask(dim - i);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
    }
    return 1.0f - avx2_hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/* ==== AVX-512F ==== */

__attribute__((target("avx512f"))) float kiln_l2sq_avx512(const float *a, const float *b,
                                                          size_t dim) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 4 * KILN_AVX512_LANES <= dim; i += 4 * KILN_AVX512_LANES) {
        const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        const __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32));
        const __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48));
        s0 = _mm512_fmadd_ps(d0, d0, s0);
        s1 = _mm512_fmadd_ps(d1, d1, s1);
        s2 = _mm512_fmadd_ps(d2, d2, s2);
        s3 = _mm512_fmadd_ps(d3, d3, s3);
    }
    for (; i + KILN_AVX512_LANES <= dim; i += KILN_AVX512_LANES) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        s0 = _mm512_fmadd_ps(d, d, s0);
    }
    if (i < dim) {
        const __mmask16 m = (__mmask16)((1u << (dim - i)) - 1u);
        const __m512 d =
            _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        s1 = _mm512_fmadd_ps(d, d, s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

__attribute__((target("avx512f"))) float kiln_ipdist_avx512(const float *a, const float *b,
                                                            size_t dim) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    __m512 s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    size_t i = 0;
    for (; i + 4 * KILN_AVX512_LANES <= dim; i += 4 * KILN_AVX512_LANES) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + KILN_AVX512_LANES <= dim; i += KILN_AVX512_LANES)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < dim) {
        const __mmask16 m = (__mmask16)((1u << (dim - i)) - 1u);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return 1.0f - _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

#endif /* KILN_SIMD_X86 */

/* ==== Dispatch ==== */

typedef struct dist_dispatch {
    kiln_dist_fn l2;
    kiln_dist_fn ip;
    const char *name;
    int level; /* 2 avx512, 1 avx2, 0 scalar */
} dist_dispatch;

static pthread_once_t dispatch_once = PTHREAD_ONCE_INIT;
static dist_dispatch dispatch; /* written once under dispatch_once, then read-only */

#if KILN_SIMD_X86
int kiln_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

int kiln_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}
#else
int kiln_cpu_has_avx2(void) { return 0; }
int kiln_cpu_has_avx512(void) { return 0; }
#endif

/* Widest level allowed by KILN_SIMD: 0 scalar, 1 avx2, 2 avx512. */
static int simd_cap_from_env(void) {
    const char *env = getenv("KILN_SIMD");
    if (!env)
        return 2;
    if (strcasecmp(env, "scalar") == 0)
        return 0;
    if (strcasecmp(env, "avx2") == 0)
        return 1;
    return 2;
}

static void dispatch_init(void) {
    const int cap = simd_cap_from_env();
#if KILN_SIMD_X86
    if (cap >= 2 && kiln_cpu_has_avx512())
        dispatch = (dist_dispatch){kiln_l2sq_avx512, kiln_ipdist_avx512, "avx512", 2};
    else if (cap >= 1 && kiln_cpu_has_avx2())
        dispatch = (dist_dispatch){kiln_l2sq_avx2, kiln_ipdist_avx2, "avx2", 1};
    else
#else
    (void)cap;
#endif
        dispatch = (dist_dispatch){kiln_l2sq_scalar, kiln_ipdist_scalar, "scalar", 0};
}

kiln_dist_fn kiln_distance_fn(kiln_metric metric) {
    pthread_once(&dispatch_once, dispatch_init);
    return metric == KILN_METRIC_L2 ? dispatch.l2 : dispatch.ip;
}

const char *kiln_simd_name(void) {
    pthread_once(&dispatch_once, dispatch_init);
    return dispatch.name;
}

int kiln_simd_level(void) {
    pthread_once(&dispatch_once, dispatch_init);
    return dispatch.level;
}

/* ==== Normalisation ==== */

void kiln_normalize(float *v, size_t dim) {
    /* The norm is summed in double: it runs once per vector, not per
     * distance, and a float sum of squares of large components could
     * overflow to inf and zero the vector. */
    double sq = 0.0;
    for (size_t i = 0; i < dim; i++)
        sq += (double)v[i] * (double)v[i];
    if (!(sq > 0.0) || !isfinite(sq))
        return;
    const double inv = 1.0 / sqrt(sq);
    for (size_t i = 0; i < dim; i++)
        v[i] = (float)((double)v[i] * inv);
}
