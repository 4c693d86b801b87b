/* distance_internal.h -- float distances with runtime CPU dispatch.
 *
 * Each kernel has a scalar reference (kiln_*_scalar) that the SIMD versions
 * are tested against. kiln_distance_fn() picks the widest instruction set the
 * CPU supports (AVX-512F, AVX2+FMA, scalar) once per process; the environment
 * variable KILN_SIMD=scalar|avx2|avx512 caps it (for tests and benchmarks).
 *
 * Distances, smaller is nearer:
 *   L2:       sum (a_i - b_i)^2            (squared, no sqrt)
 *   IP, COS:  1 - sum a_i b_i              (hnswlib's "ip"; COS vectors are
 *                                           normalised before they get here)
 */
#ifndef KILN_DISTANCE_INTERNAL_H
#define KILN_DISTANCE_INTERNAL_H

#include <stddef.h>

#include "kiln.h"

/* 1 where the x86 SIMD kernels exist (AVX2, AVX-512, SSE2 helpers); other
 * architectures (aarch64) build the scalar references only. */
#if defined(__x86_64__) || defined(__i386__)
#define KILN_SIMD_X86 1
#else
#define KILN_SIMD_X86 0
#endif

typedef float (*kiln_dist_fn)(const float *a, const float *b, size_t dim);

/* The dispatched distance for a metric (COS maps to IP). */
kiln_dist_fn kiln_distance_fn(kiln_metric metric);
/* "avx512", "avx2" or "scalar": what kiln_distance_fn dispatches to. */
const char *kiln_simd_name(void);
/* The same as a level: 2 avx512, 1 avx2, 0 scalar (common/codec.c follows it). */
int kiln_simd_level(void);

float kiln_l2sq_scalar(const float *a, const float *b, size_t dim);
float kiln_ipdist_scalar(const float *a, const float *b, size_t dim);
/* The SIMD variants, callable directly only where the CPU supports them;
 * on other architectures kiln_cpu_has_* are 0 and the variants are absent. */
int kiln_cpu_has_avx2(void);
int kiln_cpu_has_avx512(void);
#if KILN_SIMD_X86
float kiln_l2sq_avx2(const float *a, const float *b, size_t dim);
float kiln_ipdist_avx2(const float *a, const float *b, size_t dim);
float kiln_l2sq_avx512(const float *a, const float *b, size_t dim);
float kiln_ipdist_avx512(const float *a, const float *b, size_t dim);
#endif

/* Scales v to unit L2 norm in place; a zero vector stays zero. */
void kiln_normalize(float *v, size_t dim);

#endif /* KILN_DISTANCE_INTERNAL_H */
