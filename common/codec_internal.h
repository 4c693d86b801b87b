/* codec_internal.h -- compact vector rows (f16, int8 with a per-row scale):
 * encoding, decoding and distances, with runtime CPU dispatch like
 * distance_internal.h's.
 *
 * Rows (the in-memory and on-disk layout, docs/FORMAT.md):
 *   F16:  dim IEEE binary16 values, little-endian u16; 2 * dim bytes.
 *   INT8: an f32 scale, an f32 offset, then dim int8 codes in [-127, 127],
 *         padded with zeros to a multiple of 4 bytes; the value of
 *         component i is offset + scale * code[i].
 *
 * Distances, as distance_internal.h's (L2 squared; IP and COS 1 - dot):
 *   kiln_code_dist_fn:  an f32 query against a row (search, insertion);
 *   kiln_code_pair_fn:  a row against a row (pruning, repair, delete).
 */
#ifndef KILN_CODEC_INTERNAL_H
#define KILN_CODEC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

typedef float (*kiln_code_dist_fn)(const float *q, const void *row, size_t dim);
typedef float (*kiln_code_pair_fn)(const void *a, const void *b, size_t dim);

#define KILN_F16_MAX 65504.0f /* the largest finite binary16 */

/* Bytes of one row of dim components: 4 dim (F32), 2 dim (F16), 8 + dim
 * rounded up to 4 (INT8). */
static inline size_t kiln_code_bytes(kiln_storage s, size_t dim) {
    return s == KILN_STORAGE_F16    ? 2 * dim
           : s == KILN_STORAGE_INT8 ? 8 + (dim + 3) / 4 * 4
                                    : 4 * dim;
}

/* IEEE binary16 conversions, round to nearest even; NaN stays NaN (quiet),
 * beyond +-65504 (after rounding) is +-inf. The reference of the F16C
 * instructions, which the tests hold them to bit for bit. */
uint16_t kiln_f32_to_f16(float f);
float kiln_f16_to_f32(uint16_t h);

/* Encodes dim floats into a row of storage s (F16 or INT8). INT8: offset =
 * (max + min) / 2, scale = (max - min) / 254, code = round((x - offset) /
 * scale); a constant row has scale 0 and is exact; a row with a NaN or an
 * infinity gets a NaN scale and zero codes, so it decodes to NaN and its
 * distances are NaN (taken as +inf by the graph). */
void kiln_encode_row(kiln_storage s, const float *x, size_t dim, void *row);
/* Decodes a row of storage s (F16 or INT8) into dim floats. */
void kiln_decode_row(kiln_storage s, const void *row, size_t dim, float *out);

/* The dispatched kernels for a storage (F16 or INT8) and metric (COS as IP). */
kiln_code_dist_fn kiln_code_dist(kiln_storage s, kiln_metric metric);
kiln_code_pair_fn kiln_code_pair(kiln_storage s, kiln_metric metric);

/* Scalar references, the oracle of the SIMD kernels. */
float kiln_l2sq_f16_scalar(const float *q, const void *row, size_t dim);
float kiln_ipdist_f16_scalar(const float *q, const void *row, size_t dim);
float kiln_l2sq_i8_scalar(const float *q, const void *row, size_t dim);
float kiln_ipdist_i8_scalar(const float *q, const void *row, size_t dim);
float kiln_l2sq_f16_pair_scalar(const void *a, const void *b, size_t dim);
float kiln_ipdist_f16_pair_scalar(const void *a, const void *b, size_t dim);
float kiln_l2sq_i8_pair_scalar(const void *a, const void *b, size_t dim);
float kiln_ipdist_i8_pair_scalar(const void *a, const void *b, size_t dim);

/* The SIMD variants, callable where the CPU has them (kiln_cpu_has_*). */
int kiln_cpu_has_f16c(void);
#if defined(__x86_64__) || defined(__i386__)
float kiln_l2sq_f16_avx2(const float *q, const void *row, size_t dim);
float kiln_ipdist_f16_avx2(const float *q, const void *row, size_t dim);
float kiln_l2sq_i8_avx2(const float *q, const void *row, size_t dim);
float kiln_ipdist_i8_avx2(const float *q, const void *row, size_t dim);
float kiln_l2sq_f16_avx512(const float *q, const void *row, size_t dim);
float kiln_ipdist_f16_avx512(const float *q, const void *row, size_t dim);
float kiln_l2sq_i8_avx512(const float *q, const void *row, size_t dim);
float kiln_ipdist_i8_avx512(const float *q, const void *row, size_t dim);
float kiln_l2sq_f16_pair_avx2(const void *a, const void *b, size_t dim);
float kiln_ipdist_f16_pair_avx2(const void *a, const void *b, size_t dim);
float kiln_l2sq_i8_pair_avx2(const void *a, const void *b, size_t dim);
float kiln_ipdist_i8_pair_avx2(const void *a, const void *b, size_t dim);
#endif

#endif /* KILN_CODEC_INTERNAL_H */
