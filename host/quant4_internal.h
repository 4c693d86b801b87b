/* quant4_internal.h -- 4-bit scalar quantization with bit-sliced codes, the
 * compact form in which the device pipeline compares vectors.
 *
 * A trained kiln_q4 maps a float vector x of dimension d to codes c_i in
 * 0..15 (code c of dimension i stands for lo[i] + c * step; one step for all
 * dimensions, see quant4.c decision 2) and stores them bit-sliced:
 *
 *   vector v -> 4 * W uint64 words, W = ceil(d / 64), plane-major:
 *               word p * W + w holds bit p of the codes of dimensions
 *               64w .. 64w+63 (dimension 64w + j in bit j); bits past d are 0
 *            -> one uint32 "norm" n_v (per-vector term of the distance)
 *
 * and the distance every consumer (host reference, OpenCL kernel) computes is
 *
 *   dist(a, b) = n_a + n_b - 2 * dot(c_a, c_b),
 *   dot = sum_{p,q} popcount(A_p & B_q) << (p + q)
 *
 * in uint32 arithmetic, exact, never negative and never UINT32_MAX (which
 * pads short neighbour lists). For L2, n = sum c_i^2 and dist is the squared
 * L2 distance of the codes; for IP/COS, n carries the per-vector terms of the
 * inner product so that dist ranks like 1 - <x_a, x_b> (quant4.c decision 4).
 */
#ifndef KILN_QUANT4_INTERNAL_H
#define KILN_QUANT4_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

#define KILN_Q4_BITS    4
#define KILN_Q4_LEVELS  16    /* codes 0..15 */
#define KILN_Q4_MAX_DIM 65536 /* keeps every norm and distance inside uint32 */
#define KILN_Q4_NO_DIST UINT32_MAX
#define KILN_Q4_NO_ID   UINT32_MAX

/* Words per bit plane for dimension dim. */
static inline uint32_t kiln_q4_words(size_t dim) { return (uint32_t)((dim + 63) / 64); }
/* uint64 words per encoded vector: 4 planes of W words. */
static inline size_t kiln_q4_stride(uint32_t words) { return (size_t)KILN_Q4_BITS * words; }

/* A trained quantizer. Read-only after kiln_q4_train; free with kiln_q4_free. */
typedef struct kiln_q4 {
    kiln_metric metric; /* COS is treated as IP: rows must come normalised */
    uint32_t dim;       /* 1 .. KILN_Q4_MAX_DIM */
    uint32_t words;     /* kiln_q4_words(dim) */
    float step;         /* > 0, the same for every dimension */
    float *lo;          /* dim; code c of dimension i decodes to lo[i] + c * step */
    double *ip_weight;  /* dim, IP/COS: 2 * (lo[i] + 7.5 step) / step; else NULL */
    uint32_t ip_offset; /* IP/COS: bound on |rounded weight term|, keeps norms >= 0 */
    size_t sample_rows; /* rows the ranges were trained on */
} kiln_q4;

/* Trains per-dimension ranges on a seeded sample of min(n, 100000) rows
 * (row-major, dim floats each, borrowed) and derives one global step. rows
 * must be finite. *out is the caller's (kiln_q4_free). threads 0 = all. */
kiln_status kiln_q4_train(kiln_ctx *ctx, const float *rows, size_t n, size_t dim,
                          kiln_metric metric, uint64_t seed, uint32_t threads, kiln_q4 **out);
void kiln_q4_free(kiln_q4 *q);

/* Codes 0..15 of one row (dim bytes, caller's); values outside the trained
 * range clip to 0 or 15, NaN encodes as 0. */
void kiln_q4_codes(const kiln_q4 *q, const float *row, uint8_t *codes);
/* Bit-slices one vector's codes into planes (kiln_q4_stride(words) words). */
void kiln_q4_slice(const kiln_q4 *q, const uint8_t *codes, uint64_t *planes);
/* The per-vector distance term of one vector's codes. */
uint32_t kiln_q4_norm(const kiln_q4 *q, const uint8_t *codes);
/* The value code c of each dimension stands for (dim floats, caller's). */
void kiln_q4_decode(const kiln_q4 *q, const uint8_t *codes, float *row);

/* Encodes count rows: planes gets count * kiln_q4_stride(words) words,
 * norms count values (both caller's). threads 0 = all. */
kiln_status kiln_q4_encode(kiln_ctx *ctx, const kiln_q4 *q, const float *rows, size_t count,
                           uint32_t threads, uint64_t *planes, uint32_t *norms);
/* kiln_q4_encode of the residuals base[ids[r]] - centers[center_of[r]]
 * (rows of dim floats), without materialising them: the same codes as
 * encoding the subtracted rows. */
kiln_status kiln_q4_encode_residuals(kiln_ctx *ctx, const kiln_q4 *q, const float *base,
                                     const uint32_t *ids, const float *centers,
                                     const uint32_t *center_of, size_t count, uint32_t threads,
                                     uint64_t *planes, uint32_t *norms);

/* Encoded vectors: what the device kernels consume. */
typedef struct kiln_q4_set {
    size_t count;
    uint32_t words;   /* W; vector v's planes at planes + v * kiln_q4_stride(words) */
    uint64_t *planes; /* count * 4W, kiln_alloc_aligned */
    uint32_t *norms;  /* count */
} kiln_q4_set;

/* Allocates and fills *out; release with kiln_q4_set_release. */
kiln_status kiln_q4_set_encode(kiln_ctx *ctx, const kiln_q4 *q, const float *rows, size_t count,
                               uint32_t threads, kiln_q4_set *out);
/* Frees what the set holds and zeroes it; NULL and zeroed sets are fine. */
void kiln_q4_set_release(kiln_q4_set *set);

/* ==== Distances: the scalar references of kernels/knn_q4.cl ==== */

/* Bit-sliced: exactly the integer arithmetic of the kernel. */
uint32_t kiln_q4_dist_ref(const uint64_t *a, uint32_t norm_a, const uint64_t *b, uint32_t norm_b,
                          uint32_t words);
/* The same number from unsliced codes (dim bytes each), for cross-checking. */
uint32_t kiln_q4_dist_codes(const uint8_t *a, uint32_t norm_a, const uint8_t *b, uint32_t norm_b,
                            size_t dim);

/* One entry of a neighbour list; the layout of the kernel's uint2 output. */
typedef struct kiln_q4_neighbor {
    uint32_t dist; /* kiln_q4_dist_ref; KILN_Q4_NO_DIST pads short lists */
    uint32_t id;   /* global vector id; KILN_Q4_NO_ID pads short lists */
} kiln_q4_neighbor;

/* Per-cluster top-k on the CPU, the oracle of kiln_cl_cluster_knn (and a
 * fallback without a device). Clusters are CSR: cluster c's members are
 * members[offsets[c] .. offsets[c+1]), global ids into set, distinct within a
 * cluster. For member slot s (an index into members), out[s*k .. s*k+k) gets
 * its k nearest other members by (dist, id) ascending, padded with
 * (KILN_Q4_NO_DIST, KILN_Q4_NO_ID). out is the caller's, offsets[n_clusters]*k
 * entries. threads 0 = all. */
kiln_status kiln_q4_cluster_knn_ref(kiln_ctx *ctx, const kiln_q4_set *set, const uint64_t *offsets,
                                    size_t n_clusters, const uint32_t *members, uint32_t k,
                                    uint32_t threads, kiln_q4_neighbor *out);

#endif /* KILN_QUANT4_INTERNAL_H */
