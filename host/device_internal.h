/* device_internal.h -- what the device pipeline calls on the OpenCL device
 * chosen on a kiln_ctx: per-cluster top-k on 4-bit codes and k-means
 * assignment. Free of <CL/cl.h>, so any module may include it; builds without
 * OpenCL link host/device_stub.c, whose versions answer KILN_E_NO_DEVICE.
 *
 * Both functions use ctx's device (kiln_device_select), opening the default
 * one (env KILN_DEVICE, else "auto") when none was chosen. Neither may run
 * concurrently with other device work on the same ctx. Inputs are borrowed;
 * outputs are the caller's.
 */
#ifndef KILN_DEVICE_INTERNAL_H
#define KILN_DEVICE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.h"
#include "../cluster/kmeans_internal.h"
#include "quant4_internal.h"

#define KILN_CL_MAX_K 256 /* bound of KILN_K in kernels/knn_q4.cl */

/* The tail of every "no OpenCL" message: how to get a platform on any CPU. */
#define KILN_OPENCL_HINT                                                                           \
    "install an OpenCL platform, e.g. PoCL for CPUs: apt-get install pocl-opencl-icd "             \
    "ocl-icd-opencl-dev"

/* Optional knobs; all zero (or a NULL pointer) means the defaults. */
typedef struct kiln_cl_opts {
    size_t max_batch;            /* member slots (knn) or rows (k-means) per batch;
                                    0 = sized from the device's memory */
    int stage_local;             /* 0 = by the device's local memory type,
                                    1 = stage in local memory, -1 = read in place */
    int pair;                    /* knn kernel: 0 = by device type (CPU: pair), 1 = pair
                                    kernel, -1 = tile kernel (kernels/knn_q4.cl decision 7) */
    uint32_t inject_failures;    /* test hook: the first N batches that could be
                                    halved fail as CL_MEM_OBJECT_ALLOCATION_FAILURE */
    uint32_t inject_alloc_site;  /* test hook: one allocation of a knn batch,
                                    1..KILN_CL_ALLOC_SITES (host/cl_knn.c
                                    slot_reserve, in its order), fails ... */
    uint32_t inject_alloc_count; /* ... this many times: host memory as
                                    KILN_E_NOMEM, a device buffer as
                                    CL_MEM_OBJECT_ALLOCATION_FAILURE */
} kiln_cl_opts;

/* Allocations of one knn batch slot: five host staging arrays (codes, norms,
 * ids, offsets, tiles), then seven device buffers (the same five, the
 * results and the pair kernel's counter). */
#define KILN_CL_ALLOC_SITES 12

typedef struct kiln_cl_stats {
    uint32_t batches;   /* batches completed */
    uint32_t retries;   /* batch halvings after running out of device resources */
    size_t batch_limit; /* the per-batch limit in force at the end */
    double seconds;     /* wall time of the call */
} kiln_cl_stats;

/* Per-cluster top-k on the device; the same contract and the same output,
 * bit for bit, as kiln_q4_cluster_knn_ref (host/quant4_internal.h): for member
 * slot s, out[s*k .. s*k+k) gets its k nearest other members of its cluster
 * by (dist, id), padded with (KILN_Q4_NO_DIST, KILN_Q4_NO_ID). k is
 * 1..KILN_CL_MAX_K. Clusters go to the device in batches; a batch that runs
 * out of device or host resources is halved and retried. stats may be NULL. */
kiln_status kiln_cl_cluster_knn(kiln_ctx *ctx, const kiln_q4_set *set, const uint64_t *offsets,
                                size_t n_clusters, const uint32_t *members, uint32_t k,
                                const kiln_cl_opts *opts, kiln_q4_neighbor *out,
                                kiln_cl_stats *stats);

/* Releases the buffers kiln_cl_cluster_knn keeps from call to call for the
 * next one (host/cl_knn.c decision 10), e.g. when the batches are done.
 * Those live in ctx's device state: one call at a time per ctx. */
void kiln_cl_cluster_knn_release(kiln_ctx *ctx);

#define KILN_CL_MAX_TOP 64 /* bound of KILN_TOP in kernels/kmeans_assign.cl */

/* For each of n rows (dim floats), its r nearest of the k centroids (k*dim
 * floats) by squared L2: ids[i*r + j], dists[i*r + j], nearest first, ties by
 * smaller index, a NaN distance ranking as +inf; (UINT32_MAX, INFINITY) past
 * k. r is 1..KILN_CL_MAX_TOP. Each row's answer is independent of batching,
 * so the bytes do not depend on the batch split. stats may be NULL. */
kiln_status kiln_cl_kmeans_assign(kiln_ctx *ctx, const float *rows, size_t n, size_t dim,
                                  const float *centroids, uint32_t k, uint32_t r,
                                  const kiln_cl_opts *opts, uint32_t *ids, float *dists,
                                  kiln_cl_stats *stats);

/* kiln_cl_kmeans_assign in the shape of kiln_nearest_fn (cluster/
 * kmeans_internal.h), so k-means can run its assignment on the device:
 * user is a const kiln_cl_opts * or NULL. r must be <= k there. */
kiln_status kiln_cl_nearest(void *user, kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                            uint32_t r, kiln_nearest_out out);

/* Builds kernels/<file> with the given options on ctx's device through the
 * program caches: KILN_OK, or KILN_E_DEVICE with the build log. For tests and
 * for checking a device before a long build. from_disk (may be NULL) tells
 * whether this call took the program from the on-disk binary cache
 * (host/cl_cache.c). */
kiln_status kiln_cl_program_check(kiln_ctx *ctx, const char *file, const char *options,
                                  bool *from_disk);

#endif /* KILN_DEVICE_INTERNAL_H */
