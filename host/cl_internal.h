/* cl_internal.h -- the OpenCL runtime shared by host/cl_*.c, the only files
 * that include <CL/cl.h>: the device state kept in ctx->device, the check
 * macro, build options and the program cache. Other modules use
 * device_internal.h instead.
 */
#ifndef KILN_CL_INTERNAL_H
#define KILN_CL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <CL/cl.h>

#include "../common/ctx_internal.h"
#include "device_internal.h"

/* The kernels/ folder, embedded at build time by scripts/embed_kernels.cmake
 * (build/kiln_kernels_embed.c): {file name, NUL-terminated text}, ended by
 * {NULL, NULL}. */
struct kiln_kernel_source {
    const char *name;
    const char *text;
};
extern const struct kiln_kernel_source kiln_kernel_sources[];

/* One built program, keyed by (device, kernel file, options). */
struct kiln_cl_program {
    cl_device_id device;
    char *file;
    char *options;
    cl_program program;
};

/* ctx->device once a device is open. Owned by ctx, which releases it through
 * the teardown cl_runtime.c registers with it (kiln_ctx_set_device). */
struct knn_slot; /* host/cl_knn.c */

struct kiln_device_state {
    kiln_device_info info;
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queue[2]; /* in-order; two so one batch uploads while another computes */
    bool local_is_global;      /* CL_DEVICE_LOCAL_MEM_TYPE is CL_GLOBAL (CPU runtimes) */
    bool opencl_c_12;          /* OpenCL C >= 1.2: -cl-std=CL1.2 and popcount() exist */
    size_t max_work_group;     /* CL_DEVICE_MAX_WORK_GROUP_SIZE */
    struct kiln_cl_program *programs; /* the program cache, n_programs entries */
    size_t n_programs;
    uint32_t cache_hits;        /* programs taken from the on-disk cache (host/cl_cache.c) */
    struct knn_slot *knn_slots; /* host/cl_knn.c decision 10: two, kept between calls; or NULL */
};

/* Releases the kNN slots st keeps between calls (host/cl_knn.c decision 10);
 * nothing may be in flight. */
void kiln_cl_knn_slots_release(struct kiln_device_state *st);

/* Records a failed OpenCL call on ctx ("CALL failed with CL_NAME (code) at
 * FILE:LINE on DEVICE") and returns KILN_E_DEVICE. */
kiln_status kiln_cl_fail(kiln_ctx *ctx, cl_int err, const char *call, const char *file, int line);
/* "CL_OUT_OF_RESOURCES" etc.; "CL_UNKNOWN_ERROR" for codes not in the table. */
const char *kiln_cl_error_name(cl_int err);

/* The one check macro of host/cl_*.c. The function using it declares
 * `kiln_status status`, `cl_int clerr` and a single `cleanup:` label that
 * releases its handles in reverse order, each NULL-tolerant. On failure it
 * leaves the code in clerr (for retry decisions), records call text, file,
 * line and code name on ctx, and jumps to cleanup. Calls that return a
 * handle are checked through a comma expression:
 *     KILN_CL_CHECK((buf = clCreateBuffer(..., &clerr), clerr)); */
#define KILN_CL_CHECK(call)                                                                        \
    do {                                                                                           \
        clerr = (call);                                                                            \
        if (clerr != CL_SUCCESS) {                                                                 \
            status = kiln_cl_fail(ctx, clerr, #call, __FILE__, __LINE__);                          \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/* ctx's device state, opening the default device (env KILN_DEVICE, else
 * "auto") when none was selected. */
kiln_status kiln_cl_state(kiln_ctx *ctx, struct kiln_device_state **out);

/* The kernels kiln builds. */
typedef enum kiln_cl_kernel_kind {
    KILN_CL_KNN_Q4 = 1,       /* kernels/knn_q4.cl, kiln_knn_q4 */
    KILN_CL_KMEANS_ASSIGN = 2 /* kernels/kmeans_assign.cl, kiln_kmeans_assign */
} kiln_cl_kernel_kind;

#define KILN_CL_OPTIONS_MAX 512

/* A kernel build: the request (kind and sizes) and what kiln_cl_configure
 * chose for the device. */
struct kiln_cl_config {
    kiln_cl_kernel_kind kind;
    uint32_t k;      /* KNN_Q4: neighbours per member */
    uint32_t words;  /* KNN_Q4: 64-bit words per bit plane */
    uint32_t dim;    /* KMEANS_ASSIGN: floats per vector */
    uint32_t top;    /* KMEANS_ASSIGN: nearest centroids per vector */
    int stage_local; /* kiln_cl_opts.stage_local */
    int pair;        /* KNN_Q4: kiln_cl_opts.pair */
    /* chosen */
    const char *file;   /* kernel file in kiln_kernel_sources */
    const char *kernel; /* kernel function name */
    uint32_t lws;       /* work-group size */
    uint32_t chunk;     /* vectors per round through local memory */
    bool staged;        /* KILN_STAGE_LOCAL */
    bool paired;        /* KNN_Q4: kiln_knn_q4_pair, one work-item per cluster */
    char options[KILN_CL_OPTIONS_MAX];
};

/* The one place where tunables and device quirks become -D build options
 * (as CLBlast's GetDefines). Fills the chosen fields of cfg. */
kiln_status kiln_cl_configure(kiln_ctx *ctx, const struct kiln_device_state *st,
                              struct kiln_cl_config *cfg);

/* The program for (st's device, file, options), built on first use and then
 * cached in st, which owns it. A failed build reports CL_PROGRAM_BUILD_LOG. */
kiln_status kiln_cl_program(kiln_ctx *ctx, struct kiln_device_state *st, const char *file,
                            const char *options, cl_program *out);

/* The on-disk cache of program binaries (host/cl_cache.c). load returns a
 * program built from a cached binary of (st's device, file, text, options)
 * whose MAC checks out, or NULL on any miss; store records a built
 * program's binary. Neither fails nor touches ctx: a cache problem only
 * costs a build from source (a folder that is not private also prints one
 * note on stderr per process). */
cl_program kiln_cl_cache_load(struct kiln_device_state *st, const char *file, const char *text,
                              const char *options);
void kiln_cl_cache_store(const struct kiln_device_state *st, const char *file, const char *text,
                         const char *options, cl_program prog);

/* true for the errors that a smaller batch may avoid. */
static inline bool kiln_cl_retryable(cl_int err) {
    return err == CL_OUT_OF_RESOURCES || err == CL_MEM_OBJECT_ALLOCATION_FAILURE ||
           err == CL_OUT_OF_HOST_MEMORY;
}

#endif /* KILN_CL_INTERNAL_H */
