/* device_stub.c -- stands in for host/cl_*.c in builds without OpenCL: every
 * device function reports KILN_E_NO_DEVICE with how to get an OpenCL
 * platform, and the context never gets device state. */
#include <string.h>

#include "../common/ctx_internal.h"
#include "device_internal.h"

#define NO_OPENCL                                                                                  \
    "this kiln was built without OpenCL (-DKILN_OPENCL=OFF); " KILN_OPENCL_HINT ", then rebuild"

kiln_status kiln_device_count(kiln_ctx *ctx, uint32_t *out) {
    if (out)
        *out = 0;
    return kiln_fail(ctx, KILN_E_NO_DEVICE, NO_OPENCL);
}

kiln_status kiln_device_info_get(kiln_ctx *ctx, uint32_t index, kiln_device_info *out) {
    (void)index;
    if (out)
        memset(out, 0, sizeof *out);
    return kiln_fail(ctx, KILN_E_NO_DEVICE, NO_OPENCL);
}

kiln_status kiln_device_select(kiln_ctx *ctx, const char *spec, kiln_device_info *out) {
    (void)spec;
    if (out)
        memset(out, 0, sizeof *out);
    return kiln_fail(ctx, KILN_E_NO_DEVICE, NO_OPENCL);
}

kiln_status kiln_cl_cluster_knn(kiln_ctx *ctx, const kiln_q4_set *set, const uint64_t *offsets,
                                size_t n_clusters, const uint32_t *members, uint32_t k,
                                const kiln_cl_opts *opts, kiln_q4_neighbor *out,
                                kiln_cl_stats *stats) {
    (void)set, (void)offsets, (void)n_clusters, (void)members, (void)k, (void)opts, (void)out;
    if (stats)
        memset(stats, 0, sizeof *stats);
    return kiln_fail(ctx, KILN_E_NO_DEVICE, NO_OPENCL);
}

void kiln_cl_cluster_knn_release(kiln_ctx *ctx) { (void)ctx; }

kiln_status kiln_cl_kmeans_assign(kiln_ctx *ctx, const float *rows, size_t n, size_t dim,
                                  const float *centroids, uint32_t k, uint32_t r,
                                  const kiln_cl_opts *opts, uint32_t *ids, float *dists,
                                  kiln_cl_stats *stats) {
    (void)rows, (void)n, (void)dim, (void)centroids, (void)k, (void)r, (void)opts;
    (void)ids, (void)dists;
    if (stats)
        memset(stats, 0, sizeof *stats);
    return kiln_fail(ctx, KILN_E_NO_DEVICE, NO_OPENCL);
}

kiln_status kiln_cl_nearest(void *user, kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                            uint32_t r, kiln_nearest_out out) {
    (void)user, (void)rows, (void)cent, (void)r, (void)out;
    return kiln_fail(ctx, KILN_E_NO_DEVICE, NO_OPENCL);
}

kiln_status kiln_cl_program_check(kiln_ctx *ctx, const char *file, const char *options,
                                  bool *from_disk) {
    (void)file, (void)options;
    if (from_disk)
        *from_disk = false;
    return kiln_fail(ctx, KILN_E_NO_DEVICE, NO_OPENCL);
}
