/* cl_runtime.c -- OpenCL platforms and devices, the device state of a
 * kiln_ctx, build options and the program cache (see cl_internal.h).
 *
 * Design decisions:
 *  1. Devices are enumerated afresh on every listing call: it is cheap, and
 *     a list cached in the context could go stale. Only an opened device
 *     (context, two in-order queues, programs) lives in ctx->device.
 *  2. One check macro (KILN_CL_CHECK) and one cleanup label per function.
 *     The two OpenCL "nothing there" answers (CL_PLATFORM_NOT_FOUND_KHR,
 *     CL_DEVICE_NOT_FOUND) are turned into empty lists by small wrappers, so
 *     the caller sees counts and reports KILN_E_NO_DEVICE with the PoCL hint.
 *  3. All tunables and device quirks become -D options in kiln_cl_configure,
 *     the one place that knows both the kernels' needs and the device:
 *     work-group size by device type, chunk size from local memory, staging
 *     through local memory only where it is real, and the OpenCL C 1.1
 *     fallbacks (no -cl-std, no popcount()).
 *  4. Programs are cached per (device, file, options) for the life of the
 *     device state, since PoCL and GPU drivers take from 0.1 s to seconds to
 *     build one, and their binaries on disk across processes
 *     (host/cl_cache.c); kernels are created per call (cheap, and a
 *     cl_kernel's arguments are per-object state that must not be shared).
 *  5. A failed build reports the build log on one line, starting at its
 *     first "error", which is where the cause is.
 *  6. Under an address-space limit (ulimit -v, RLIMIT_AS) an OpenCL runtime
 *     that cannot map its libraries (PoCL loads LLVM) reports no platform
 *     at all, or CL_OUT_OF_HOST_MEMORY while listing devices; "install
 *     PoCL" would then be wrong advice. So when the listing finds nothing or
 *     runs out of host memory, or opening the device does, and a limit is
 *     set, the message names the limit instead. Without a limit the answer
 *     stays as it was.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include "cl_internal.h"

/* ==== Tunables ==== */

/* Work-group size on GPUs: two NVIDIA warps or one AMD wavefront, enough
 * queries to amortise each staged chunk while keeping a tile of a small
 * cluster from idling most of its items. */
#define CL_LWS_GPU 64
/* On CPU runtimes a work-group is a loop on one core: smaller groups make
 * more of them, so the cores balance across many small clusters. */
#define CL_LWS_CPU 16
/* Local memory one work-group stages into: half of the 64 KB most GPUs have
 * per compute unit, so two groups can be resident at once. */
#define CL_LOCAL_BUDGET 32768
/* Vectors per round: past 64 the barriers are already amortised. */
#define CL_CHUNK_MAX 64

/* Not in every cl.h: the ICD loader's answer when no platform is installed. */
#define KILN_CL_PLATFORM_NOT_FOUND_KHR (-1001)

/* ==== Errors ==== */

const char *kiln_cl_error_name(cl_int err) {
    switch (err) {
#define KILN_CL_NAME(code)                                                                         \
    case code: return #code;
        KILN_CL_NAME(CL_SUCCESS)
        KILN_CL_NAME(CL_DEVICE_NOT_FOUND)
        KILN_CL_NAME(CL_DEVICE_NOT_AVAILABLE)
        KILN_CL_NAME(CL_COMPILER_NOT_AVAILABLE)
        KILN_CL_NAME(CL_MEM_OBJECT_ALLOCATION_FAILURE)
        KILN_CL_NAME(CL_OUT_OF_RESOURCES)
        KILN_CL_NAME(CL_OUT_OF_HOST_MEMORY)
        KILN_CL_NAME(CL_PROFILING_INFO_NOT_AVAILABLE)
        KILN_CL_NAME(CL_MEM_COPY_OVERLAP)
        KILN_CL_NAME(CL_IMAGE_FORMAT_MISMATCH)
        KILN_CL_NAME(CL_IMAGE_FORMAT_NOT_SUPPORTED)
        KILN_CL_NAME(CL_BUILD_PROGRAM_FAILURE)
        KILN_CL_NAME(CL_MAP_FAILURE)
        KILN_CL_NAME(CL_MISALIGNED_SUB_BUFFER_OFFSET)
        KILN_CL_NAME(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)
        KILN_CL_NAME(CL_COMPILE_PROGRAM_FAILURE)
        KILN_CL_NAME(CL_LINKER_NOT_AVAILABLE)
        KILN_CL_NAME(CL_LINK_PROGRAM_FAILURE)
        KILN_CL_NAME(CL_DEVICE_PARTITION_FAILED)
        KILN_CL_NAME(CL_KERNEL_ARG_INFO_NOT_AVAILABLE)
        KILN_CL_NAME(CL_INVALID_VALUE)
        KILN_CL_NAME(CL_INVALID_DEVICE_TYPE)
        KILN_CL_NAME(CL_INVALID_PLATFORM)
        KILN_CL_NAME(CL_INVALID_DEVICE)
        KILN_CL_NAME(CL_INVALID_CONTEXT)
        KILN_CL_NAME(CL_INVALID_QUEUE_PROPERTIES)
        KILN_CL_NAME(CL_INVALID_COMMAND_QUEUE)
        KILN_CL_NAME(CL_INVALID_HOST_PTR)
        KILN_CL_NAME(CL_INVALID_MEM_OBJECT)
        KILN_CL_NAME(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)
        KILN_CL_NAME(CL_INVALID_IMAGE_SIZE)
        KILN_CL_NAME(CL_INVALID_SAMPLER)
        KILN_CL_NAME(CL_INVALID_BINARY)
        KILN_CL_NAME(CL_INVALID_BUILD_OPTIONS)
        KILN_CL_NAME(CL_INVALID_PROGRAM)
        KILN_CL_NAME(CL_INVALID_PROGRAM_EXECUTABLE)
        KILN_CL_NAME(CL_INVALID_KERNEL_NAME)
        KILN_CL_NAME(CL_INVALID_KERNEL_DEFINITION)
        KILN_CL_NAME(CL_INVALID_KERNEL)
        KILN_CL_NAME(CL_INVALID_ARG_INDEX)
        KILN_CL_NAME(CL_INVALID_ARG_VALUE)
        KILN_CL_NAME(CL_INVALID_ARG_SIZE)
        KILN_CL_NAME(CL_INVALID_KERNEL_ARGS)
        KILN_CL_NAME(CL_INVALID_WORK_DIMENSION)
        KILN_CL_NAME(CL_INVALID_WORK_GROUP_SIZE)
        KILN_CL_NAME(CL_INVALID_WORK_ITEM_SIZE)
        KILN_CL_NAME(CL_INVALID_GLOBAL_OFFSET)
        KILN_CL_NAME(CL_INVALID_EVENT_WAIT_LIST)
        KILN_CL_NAME(CL_INVALID_EVENT)
        KILN_CL_NAME(CL_INVALID_OPERATION)
        KILN_CL_NAME(CL_INVALID_GL_OBJECT)
        KILN_CL_NAME(CL_INVALID_BUFFER_SIZE)
        KILN_CL_NAME(CL_INVALID_MIP_LEVEL)
        KILN_CL_NAME(CL_INVALID_GLOBAL_WORK_SIZE)
        KILN_CL_NAME(CL_INVALID_PROPERTY)
        KILN_CL_NAME(CL_INVALID_IMAGE_DESCRIPTOR)
        KILN_CL_NAME(CL_INVALID_COMPILER_OPTIONS)
        KILN_CL_NAME(CL_INVALID_LINKER_OPTIONS)
        KILN_CL_NAME(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef KILN_CL_NAME
    case KILN_CL_PLATFORM_NOT_FOUND_KHR: return "CL_PLATFORM_NOT_FOUND_KHR";
    }
    return "CL_UNKNOWN_ERROR";
}

kiln_status kiln_cl_fail(kiln_ctx *ctx, cl_int err, const char *call, const char *file, int line) {
    const char *base = strrchr(file, '/');
    const struct kiln_device_state *st = ctx ? ctx->device : NULL;
    return kiln_fail(ctx, KILN_E_DEVICE, "%s failed with %s (%d) at %s:%d%s%s", call,
                     kiln_cl_error_name(err), (int)err, base ? base + 1 : file, line,
                     st ? " on " : "", st ? st->info.device_name : "");
}

static kiln_status no_platform(kiln_ctx *ctx) {
    return kiln_fail(ctx, KILN_E_NO_DEVICE, "no OpenCL platform found; " KILN_OPENCL_HINT);
}

/* Decision 6: the runtime did not start; name the address-space limit when
 * one is set, else keep status and its message. */
static kiln_status runtime_start_failed(kiln_ctx *ctx, kiln_status status) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return status;
    return kiln_fail(ctx, KILN_E_NO_DEVICE,
                     "the OpenCL runtime could not start: the %llu MB address-space limit "
                     "(ulimit -v) may be too small; raise it (ulimit -v unlimited)",
                     (unsigned long long)(rl.rlim_cur >> 20));
}

/* ==== Enumeration ==== */

/* One device of the flat list: index i of kiln_device_info_get. */
typedef struct dev_entry {
    cl_platform_id platform;
    cl_device_id device;
    uint32_t p, d; /* "P:D" */
    kiln_device_type type;
} dev_entry;

/* clGetPlatformIDs with "no platform" as an empty answer (decision 2). */
static cl_int platform_ids(cl_uint cap, cl_platform_id *ids, cl_uint *n) {
    const cl_int rc = clGetPlatformIDs(cap, ids, n);
    if (rc == KILN_CL_PLATFORM_NOT_FOUND_KHR) {
        *n = 0;
        return CL_SUCCESS;
    }
    return rc;
}

static cl_int device_ids(cl_platform_id p, cl_uint cap, cl_device_id *ids, cl_uint *n) {
    const cl_int rc = clGetDeviceIDs(p, CL_DEVICE_TYPE_ALL, cap, ids, n);
    if (rc == CL_DEVICE_NOT_FOUND) {
        *n = 0;
        return CL_SUCCESS;
    }
    return rc;
}

static kiln_device_type device_type(cl_device_type t) {
    if (t & CL_DEVICE_TYPE_GPU)
        return KILN_DEVICE_GPU;
    if (t & CL_DEVICE_TYPE_CPU)
        return KILN_DEVICE_CPU;
    return KILN_DEVICE_OTHER;
}

/* All devices of all platforms; *out is the caller's (free). */
static kiln_status list_devices(kiln_ctx *ctx, dev_entry **out, uint32_t *count) {
    kiln_status status = KILN_OK;
    cl_int clerr = CL_SUCCESS;
    cl_platform_id *plats = NULL;
    cl_device_id *devs = NULL;
    dev_entry *list = NULL;
    cl_uint np = 0, most = 0;
    size_t total = 0, n = 0;
    *out = NULL;
    *count = 0;
    KILN_CL_CHECK(platform_ids(0, NULL, &np));
    if (np == 0) {
        status = no_platform(ctx);
        goto cleanup;
    }
    status = kiln_alloc(ctx, np * sizeof *plats, "OpenCL platforms", (void **)&plats);
    if (status != KILN_OK)
        goto cleanup;
    KILN_CL_CHECK(platform_ids(np, plats, &np));
    for (cl_uint p = 0; p < np; p++) {
        cl_uint nd = 0;
        KILN_CL_CHECK(device_ids(plats[p], 0, NULL, &nd));
        total += nd;
        most = nd > most ? nd : most;
    }
    if (total == 0) {
        status =
            kiln_fail(ctx, KILN_E_NO_DEVICE,
                      "%u OpenCL platform(s) found but no device; " KILN_OPENCL_HINT, (unsigned)np);
        goto cleanup;
    }
    status = kiln_alloc(ctx, total * sizeof *list, "OpenCL device list", (void **)&list);
    if (status == KILN_OK)
        status = kiln_alloc(ctx, most * sizeof *devs, "OpenCL device ids", (void **)&devs);
    if (status != KILN_OK)
        goto cleanup;
    for (cl_uint p = 0; p < np; p++) {
        cl_uint nd = 0;
        KILN_CL_CHECK(device_ids(plats[p], most, devs, &nd));
        for (cl_uint d = 0; d < nd && d < most && n < total; d++) {
            cl_device_type t = 0;
            KILN_CL_CHECK(clGetDeviceInfo(devs[d], CL_DEVICE_TYPE, sizeof t, &t, NULL));
            list[n++] = (dev_entry){plats[p], devs[d], p, d, device_type(t)};
        }
    }
cleanup:
    free(devs);
    free(plats);
    if (status != KILN_OK && (np == 0 || clerr == CL_OUT_OF_HOST_MEMORY))
        status = runtime_start_failed(ctx, status);
    if (status == KILN_OK) {
        *out = list;
        *count = (uint32_t)n;
    } else {
        free(list);
    }
    return status;
}

/* A platform (d == NULL) or device string into dst, trimmed and cut to
 * KILN_DEVICE_NAME_MAX. */
static kiln_status info_string(kiln_ctx *ctx, cl_platform_id p, cl_device_id d, cl_uint param,
                               char *dst) {
    kiln_status status = KILN_OK;
    cl_int clerr = CL_SUCCESS;
    char *buf = NULL;
    size_t len = 0;
    dst[0] = '\0';
    KILN_CL_CHECK(d ? clGetDeviceInfo(d, param, 0, NULL, &len)
                    : clGetPlatformInfo(p, param, 0, NULL, &len));
    status = kiln_alloc(ctx, len + 1, "OpenCL info string", (void **)&buf);
    if (status != KILN_OK)
        goto cleanup;
    KILN_CL_CHECK(d ? clGetDeviceInfo(d, param, len, buf, NULL)
                    : clGetPlatformInfo(p, param, len, buf, NULL));
    buf[len] = '\0';
    const char *s = buf;
    while (isspace((unsigned char)*s))
        s++;
    snprintf(dst, KILN_DEVICE_NAME_MAX, "%s", s);
    for (size_t end = strlen(dst); end > 0 && isspace((unsigned char)dst[end - 1]); end--)
        dst[end - 1] = '\0';
cleanup:
    free(buf);
    return status;
}

static kiln_status fill_info(kiln_ctx *ctx, const dev_entry *e, uint32_t index,
                             kiln_device_info *out) {
    kiln_status status = KILN_OK;
    cl_int clerr = CL_SUCCESS;
    cl_ulong global = 0, alloc = 0, local = 0;
    cl_uint units = 0;
    memset(out, 0, sizeof *out);
    out->index = index;
    out->platform_index = e->p;
    out->device_index = e->d;
    out->type = e->type;
    status = info_string(ctx, e->platform, NULL, CL_PLATFORM_NAME, out->platform_name);
    if (status == KILN_OK)
        status = info_string(ctx, NULL, e->device, CL_DEVICE_NAME, out->device_name);
    if (status == KILN_OK)
        status = info_string(ctx, NULL, e->device, CL_DEVICE_VERSION, out->version);
    if (status != KILN_OK)
        goto cleanup;
    KILN_CL_CHECK(
        clGetDeviceInfo(e->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof global, &global, NULL));
    KILN_CL_CHECK(
        clGetDeviceInfo(e->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof alloc, &alloc, NULL));
    KILN_CL_CHECK(clGetDeviceInfo(e->device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof local, &local, NULL));
    KILN_CL_CHECK(
        clGetDeviceInfo(e->device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof units, &units, NULL));
    out->global_mem_bytes = global;
    out->max_alloc_bytes = alloc;
    out->local_mem_bytes = local;
    out->compute_units = units;
cleanup:
    return status;
}

/* Parses "P:D" (decimal, nothing else). */
static bool parse_pd(const char *s, uint32_t *p, uint32_t *d) {
    char *end;
    if (!isdigit((unsigned char)*s))
        return false;
    const unsigned long a = strtoul(s, &end, 10);
    if (*end != ':' || !isdigit((unsigned char)end[1]))
        return false;
    const unsigned long b = strtoul(end + 1, &end, 10);
    if (*end != '\0' || a > UINT32_MAX || b > UINT32_MAX)
        return false;
    *p = (uint32_t)a;
    *d = (uint32_t)b;
    return true;
}

/* The list index that spec names (NULL: env KILN_DEVICE, else "auto"). */
static kiln_status resolve_spec(kiln_ctx *ctx, const char *spec, const dev_entry *list, uint32_t n,
                                uint32_t *index) {
    const char *from = "";
    if (!spec) {
        const char *env = getenv("KILN_DEVICE");
        spec = env && *env ? env : "auto";
        from = env && *env ? " (from KILN_DEVICE)" : "";
    }
    uint32_t p, d;
    if (strcasecmp(spec, "auto") == 0) {
        *index = 0;
        for (uint32_t i = 0; i < n; i++)
            if (list[i].type == KILN_DEVICE_GPU) {
                *index = i;
                break;
            }
        return KILN_OK;
    }
    if (strcasecmp(spec, "cpu") == 0 || strcasecmp(spec, "gpu") == 0) {
        const kiln_device_type want =
            strcasecmp(spec, "cpu") == 0 ? KILN_DEVICE_CPU : KILN_DEVICE_GPU;
        for (uint32_t i = 0; i < n; i++)
            if (list[i].type == want) {
                *index = i;
                return KILN_OK;
            }
        return kiln_fail(ctx, KILN_E_NO_DEVICE,
                         "device spec \"%s\"%s: no OpenCL %s device among the %u found (kiln "
                         "devices lists them)",
                         spec, from, want == KILN_DEVICE_CPU ? "CPU" : "GPU", (unsigned)n);
    }
    if (parse_pd(spec, &p, &d)) {
        for (uint32_t i = 0; i < n; i++)
            if (list[i].p == p && list[i].d == d) {
                *index = i;
                return KILN_OK;
            }
        return kiln_fail(ctx, KILN_E_NO_DEVICE,
                         "device spec \"%s\"%s: there is no device %u on platform %u among the "
                         "%u found (kiln devices lists them)",
                         spec, from, (unsigned)d, (unsigned)p, (unsigned)n);
    }
    return kiln_fail(ctx, KILN_E_ARG, "device spec \"%s\"%s is not auto, cpu, gpu or P:D", spec,
                     from);
}

/* ==== Device state ==== */

static void state_release(struct kiln_device_state *st) {
    if (!st)
        return;
    for (int q = 1; q >= 0; q--)
        if (st->queue[q])
            clFinish(st->queue[q]);
    kiln_cl_knn_slots_release(st);
    for (size_t i = st->n_programs; i-- > 0;) {
        clReleaseProgram(st->programs[i].program);
        free(st->programs[i].file);
        free(st->programs[i].options);
    }
    free(st->programs);
    for (int q = 1; q >= 0; q--)
        if (st->queue[q]) {
            clFinish(st->queue[q]);
            clReleaseCommandQueue(st->queue[q]);
        }
    if (st->context)
        clReleaseContext(st->context);
    free(st);
}

/* The teardown registered on the context (kiln_ctx_set_device). */
static void state_release_any(void *st) { state_release(st); }

static kiln_status state_open(kiln_ctx *ctx, const dev_entry *e, uint32_t index,
                              struct kiln_device_state **out) {
    kiln_status status = KILN_OK;
    cl_int clerr = CL_SUCCESS;
    struct kiln_device_state *st = NULL;
    char cver[KILN_DEVICE_NAME_MAX];
    cl_device_local_mem_type ltype = CL_LOCAL;
    *out = NULL;
    status = kiln_calloc(ctx, sizeof *st, "OpenCL device state", (void **)&st);
    if (status != KILN_OK)
        goto cleanup;
    st->platform = e->platform;
    st->device = e->device;
    status = fill_info(ctx, e, index, &st->info);
    if (status == KILN_OK)
        status = info_string(ctx, NULL, e->device, CL_DEVICE_OPENCL_C_VERSION, cver);
    if (status != KILN_OK)
        goto cleanup;
    KILN_CL_CHECK(clGetDeviceInfo(e->device, CL_DEVICE_LOCAL_MEM_TYPE, sizeof ltype, &ltype, NULL));
    KILN_CL_CHECK(clGetDeviceInfo(e->device, CL_DEVICE_MAX_WORK_GROUP_SIZE,
                                  sizeof st->max_work_group, &st->max_work_group, NULL));
    st->local_is_global = ltype == CL_GLOBAL;
    /* "OpenCL C 1.1 ..." is the one version below what the kernels target. */
    st->opencl_c_12 =
        strncmp(cver, "OpenCL C 1.0", 12) != 0 && strncmp(cver, "OpenCL C 1.1", 12) != 0;
    const cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)e->platform,
                                           0};
    KILN_CL_CHECK(
        (st->context = clCreateContext(props, 1, &st->device, NULL, NULL, &clerr), clerr));
    for (int q = 0; q < 2; q++)
        KILN_CL_CHECK(
            (st->queue[q] = clCreateCommandQueue(st->context, st->device, 0, &clerr), clerr));
    *out = st;
    st = NULL;
cleanup:
    state_release(st);
    if (clerr == CL_OUT_OF_HOST_MEMORY)
        status = runtime_start_failed(ctx, status);
    return status;
}

kiln_status kiln_cl_state(kiln_ctx *ctx, struct kiln_device_state **out) {
    *out = ctx->device;
    if (*out)
        return KILN_OK;
    const kiln_status status = kiln_device_select(ctx, NULL, NULL);
    *out = ctx->device;
    return status;
}

/* ==== Public: devices ==== */

kiln_status kiln_device_count(kiln_ctx *ctx, uint32_t *out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "counting devices: the result pointer is NULL");
    *out = 0;
    dev_entry *list;
    uint32_t n;
    const kiln_status status = list_devices(ctx, &list, &n);
    if (status == KILN_OK)
        *out = n;
    free(list);
    return status;
}

kiln_status kiln_device_info_get(kiln_ctx *ctx, uint32_t index, kiln_device_info *out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "describing a device: the result pointer is NULL");
    memset(out, 0, sizeof *out);
    dev_entry *list;
    uint32_t n;
    kiln_status status = list_devices(ctx, &list, &n);
    if (status == KILN_OK && index >= n)
        status = kiln_fail(ctx, KILN_E_RANGE, "device index %u is out of range: %u device(s)",
                           (unsigned)index, (unsigned)n);
    if (status == KILN_OK)
        status = fill_info(ctx, &list[index], index, out);
    free(list);
    return status;
}

kiln_status kiln_device_select(kiln_ctx *ctx, const char *spec, kiln_device_info *out) {
    if (!ctx)
        return KILN_E_ARG;
    if (out)
        memset(out, 0, sizeof *out);
    dev_entry *list;
    uint32_t n, index = 0;
    struct kiln_device_state *st = NULL;
    kiln_status status = list_devices(ctx, &list, &n);
    if (status == KILN_OK)
        status = resolve_spec(ctx, spec, list, n, &index);
    if (status == KILN_OK)
        status = state_open(ctx, &list[index], index, &st);
    free(list);
    if (status != KILN_OK)
        return status;
    kiln_ctx_set_device(ctx, st, state_release_any);
    if (out)
        *out = st->info;
    return KILN_OK;
}

/* ==== Build options ==== */

static uint32_t floor_pow2(size_t x) {
    uint32_t p = 1;
    while ((size_t)p * 2 <= x && p < (1u << 30))
        p *= 2;
    return p;
}

kiln_status kiln_cl_configure(kiln_ctx *ctx, const struct kiln_device_state *st,
                              struct kiln_cl_config *cfg) {
    size_t per_vector; /* bytes one staged vector takes in local memory */
    char kind_defines[96];
    switch (cfg->kind) {
    case KILN_CL_KNN_Q4:
        if (cfg->k < 1 || cfg->k > KILN_CL_MAX_K)
            return kiln_fail(ctx, KILN_E_ARG, "k = %u is outside 1..%d", (unsigned)cfg->k,
                             KILN_CL_MAX_K);
        if (cfg->words < 1 || cfg->words > kiln_q4_words(KILN_Q4_MAX_DIM))
            return kiln_fail(ctx, KILN_E_ARG, "%u words per bit plane is outside 1..%u",
                             (unsigned)cfg->words, (unsigned)kiln_q4_words(KILN_Q4_MAX_DIM));
        cfg->file = "knn_q4.cl";
        cfg->kernel = "kiln_knn_q4";
        per_vector = kiln_q4_stride(cfg->words) * sizeof(cl_ulong) + 2 * sizeof(cl_uint);
        snprintf(kind_defines, sizeof kind_defines, "-DKILN_K=%u -DKILN_W=%u", (unsigned)cfg->k,
                 (unsigned)cfg->words);
        break;
    case KILN_CL_KMEANS_ASSIGN:
        if (cfg->dim < 1 || cfg->dim > KILN_Q4_MAX_DIM)
            return kiln_fail(ctx, KILN_E_ARG, "dimension %u is outside 1..%d", (unsigned)cfg->dim,
                             KILN_Q4_MAX_DIM);
        if (cfg->top < 1 || cfg->top > KILN_CL_MAX_TOP)
            return kiln_fail(ctx, KILN_E_ARG, "r = %u nearest centroids is outside 1..%d",
                             (unsigned)cfg->top, KILN_CL_MAX_TOP);
        cfg->file = "kmeans_assign.cl";
        cfg->kernel = "kiln_kmeans_assign";
        per_vector = (size_t)cfg->dim * sizeof(cl_float);
        snprintf(kind_defines, sizeof kind_defines, "-DKILN_DIM=%u -DKILN_TOP=%u",
                 (unsigned)cfg->dim, (unsigned)cfg->top);
        break;
    default: return kiln_fail(ctx, KILN_E_INTERNAL, "unknown kernel kind %d", (int)cfg->kind);
    }
    const size_t lws_want = st->info.type == KILN_DEVICE_GPU ? CL_LWS_GPU : CL_LWS_CPU;
    cfg->lws = floor_pow2(lws_want < st->max_work_group ? lws_want : st->max_work_group);
    cfg->paired = cfg->kind == KILN_CL_KNN_Q4 &&
                  (cfg->pair > 0 || (cfg->pair == 0 && st->info.type == KILN_DEVICE_CPU));
    if (cfg->paired) {
        cfg->kernel = "kiln_knn_q4_pair";
        cfg->lws = 1;
        cfg->stage_local = -1; /* no shared chunk to stage */
    }
    const size_t budget =
        st->info.local_mem_bytes < CL_LOCAL_BUDGET ? st->info.local_mem_bytes : CL_LOCAL_BUDGET;
    const size_t fit = budget / per_vector;
    cfg->staged = cfg->stage_local > 0 || (cfg->stage_local == 0 && !st->local_is_global);
    if (cfg->staged && fit == 0)
        cfg->staged = false; /* one vector does not fit: read in place */
    cfg->chunk = cfg->staged ? (uint32_t)(fit < CL_CHUNK_MAX ? fit : CL_CHUNK_MAX) : CL_CHUNK_MAX;
    const int len = snprintf(cfg->options, sizeof cfg->options,
                             "%s%s -DKILN_LWS=%u -DKILN_CHUNK=%u -DKILN_STAGE_LOCAL=%d%s",
                             st->opencl_c_12 ? "-cl-std=CL1.2 " : "", kind_defines,
                             (unsigned)cfg->lws, (unsigned)cfg->chunk, cfg->staged ? 1 : 0,
                             st->opencl_c_12 ? "" : " -DKILN_NO_POPCOUNT=1");
    if (len < 0 || (size_t)len >= sizeof cfg->options)
        return kiln_fail(ctx, KILN_E_INTERNAL, "OpenCL build options do not fit in %zu bytes",
                         sizeof cfg->options);
    return KILN_OK;
}

/* ==== Program cache ==== */

/* The build log on one line, from its first "error" (decision 5). */
static void flatten_log(char *log) {
    char *from = strstr(log, "error");
    if (from) {
        while (from > log && from[-1] != '\n')
            from--;
        memmove(log, from, strlen(from) + 1);
    }
    size_t w = 0;
    for (size_t r = 0; log[r]; r++) {
        const bool space = isspace((unsigned char)log[r]);
        if (space && (w == 0 || log[w - 1] == ' '))
            continue;
        log[w++] = space ? ' ' : log[r];
    }
    while (w > 0 && log[w - 1] == ' ')
        w--;
    log[w] = '\0';
}

static kiln_status build_failed(kiln_ctx *ctx, const struct kiln_device_state *st, cl_program prog,
                                const char *file, const char *options, cl_int err) {
    size_t len = 0;
    char *log = NULL;
    if (clGetProgramBuildInfo(prog, st->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &len) ==
            CL_SUCCESS &&
        (log = malloc(len + 1)) != NULL &&
        clGetProgramBuildInfo(prog, st->device, CL_PROGRAM_BUILD_LOG, len, log, NULL) ==
            CL_SUCCESS) {
        log[len] = '\0';
        flatten_log(log);
    }
    const kiln_status status = kiln_fail(
        ctx, KILN_E_DEVICE, "kernels/%s failed to build on %s (%s): %s [options: %s]", file,
        st->info.device_name, kiln_cl_error_name(err), log && *log ? log : "no build log", options);
    free(log);
    return status;
}

kiln_status kiln_cl_program(kiln_ctx *ctx, struct kiln_device_state *st, const char *file,
                            const char *options, cl_program *out) {
    *out = NULL;
    for (size_t i = 0; i < st->n_programs; i++) {
        const struct kiln_cl_program *p = &st->programs[i];
        if (p->device == st->device && strcmp(p->file, file) == 0 &&
            strcmp(p->options, options) == 0) {
            *out = p->program;
            return KILN_OK;
        }
    }
    const struct kiln_kernel_source *src = kiln_kernel_sources;
    while (src->name && strcmp(src->name, file) != 0)
        src++;
    if (!src->name)
        return kiln_fail(ctx, KILN_E_INTERNAL, "kernel file %s is not among the embedded kernels",
                         file);
    kiln_status status = KILN_OK;
    cl_int clerr = CL_SUCCESS;
    cl_program prog = NULL;
    char *fdup = NULL, *odup = NULL;
    struct kiln_cl_program *grown = NULL;
    const char *text = src->text;
    prog = kiln_cl_cache_load(st, file, text, options);
    if (!prog) {
        KILN_CL_CHECK(
            (prog = clCreateProgramWithSource(st->context, 1, &text, NULL, &clerr), clerr));
        clerr = clBuildProgram(prog, 1, &st->device, options, NULL, NULL);
        if (clerr != CL_SUCCESS) {
            status = build_failed(ctx, st, prog, file, options, clerr);
            goto cleanup;
        }
        kiln_cl_cache_store(st, file, text, options, prog);
    }
    fdup = strdup(file);
    odup = strdup(options);
    grown = realloc(st->programs, (st->n_programs + 1) * sizeof *grown);
    if (!fdup || !odup || !grown) {
        status =
            kiln_fail(ctx, KILN_E_NOMEM, "out of memory caching the program of kernels/%s", file);
        goto cleanup;
    }
    st->programs = grown;
    grown = NULL;
    st->programs[st->n_programs++] = (struct kiln_cl_program){st->device, fdup, odup, prog};
    *out = prog;
    prog = NULL;
    fdup = odup = NULL;
cleanup:
    if (grown)
        st->programs = grown; /* realloc succeeded: the old block is gone */
    free(odup);
    free(fdup);
    if (prog)
        clReleaseProgram(prog);
    return status;
}

kiln_status kiln_cl_program_check(kiln_ctx *ctx, const char *file, const char *options,
                                  bool *from_disk) {
    if (from_disk)
        *from_disk = false;
    if (!ctx || !file || !options)
        return kiln_fail(ctx, KILN_E_ARG, "device program check: NULL argument");
    struct kiln_device_state *st;
    cl_program prog;
    kiln_status status = kiln_cl_state(ctx, &st);
    if (status != KILN_OK)
        return status;
    const uint32_t hits = st->cache_hits;
    status = kiln_cl_program(ctx, st, file, options, &prog);
    if (from_disk)
        *from_disk = st->cache_hits != hits;
    return status;
}
