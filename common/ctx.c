/* ctx.c -- the kiln context, error reporting, checked allocation, and the
 * small name tables of the public API.
 *
 * Design decisions:
 *  1. The message buffer lives in the context (sqlite3_errmsg style) and is
 *     guarded by a mutex, so concurrent searches that fail cannot tear it.
 *  2. Allocation failures are ordinary errors with the size and purpose in
 *     the message; callers can shrink a batch and retry.
 */
#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctx_internal.h"

/* ==== Public: status, version ==== */

const char *kiln_status_str(kiln_status status) {
    switch (status) {
    case KILN_OK: return "KILN_OK";
    case KILN_E_ARG: return "KILN_E_ARG";
    case KILN_E_NOMEM: return "KILN_E_NOMEM";
    case KILN_E_IO: return "KILN_E_IO";
    case KILN_E_FORMAT: return "KILN_E_FORMAT";
    case KILN_E_VERSION: return "KILN_E_VERSION";
    case KILN_E_CHECKSUM: return "KILN_E_CHECKSUM";
    case KILN_E_RANGE: return "KILN_E_RANGE";
    case KILN_E_UNSUPPORTED: return "KILN_E_UNSUPPORTED";
    case KILN_E_DEVICE: return "KILN_E_DEVICE";
    case KILN_E_NO_DEVICE: return "KILN_E_NO_DEVICE";
    case KILN_E_INVALID: return "KILN_E_INVALID";
    case KILN_E_INTERNAL: return "KILN_E_INTERNAL";
    }
    return "KILN_E_UNKNOWN";
}

int kiln_version_number(void) { return KILN_VERSION_NUMBER; }
const char *kiln_version_string(void) { return KILN_VERSION_STRING; }

/* ==== Public: context ==== */

kiln_status kiln_ctx_new(kiln_ctx **out) {
    if (!out)
        return KILN_E_ARG;
    *out = NULL;
    kiln_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return KILN_E_NOMEM;
    pthread_mutex_init(&ctx->lock, NULL);
    ctx->progress = KILN_PROGRESS_AUTO;
    *out = ctx;
    return KILN_OK;
}

void kiln_ctx_set_device(kiln_ctx *ctx, void *device, void (*device_free)(void *device)) {
    if (ctx->device_free)
        ctx->device_free(ctx->device);
    ctx->device = device;
    ctx->device_free = device ? device_free : NULL;
}

void kiln_ctx_free(kiln_ctx *ctx) {
    if (!ctx)
        return;
    kiln_ctx_set_device(ctx, NULL, NULL);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
}

const char *kiln_errmsg(const kiln_ctx *ctx) { return ctx ? ctx->errmsg : "no context"; }

kiln_status kiln_ctx_set_progress(kiln_ctx *ctx, kiln_progress mode) {
    if (!ctx)
        return KILN_E_ARG;
    if (mode != KILN_PROGRESS_AUTO && mode != KILN_PROGRESS_ON && mode != KILN_PROGRESS_OFF)
        return kiln_fail(ctx, KILN_E_ARG, "progress mode %d is not one of AUTO, ON, OFF",
                         (int)mode);
    ctx->progress = mode;
    return KILN_OK;
}

/* ==== Public: names ==== */

const char *kiln_metric_name(kiln_metric metric) {
    switch (metric) {
    case KILN_METRIC_L2: return "l2";
    case KILN_METRIC_IP: return "ip";
    case KILN_METRIC_COS: return "cos";
    }
    return "invalid";
}

kiln_status kiln_metric_parse(const char *name, kiln_metric *out) {
    static const kiln_metric all[] = {KILN_METRIC_L2, KILN_METRIC_IP, KILN_METRIC_COS};
    if (!name || !out)
        return KILN_E_ARG;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(name, kiln_metric_name(all[i])) == 0) {
            *out = all[i];
            return KILN_OK;
        }
    }
    if (strcmp(name, "cosine") == 0) {
        *out = KILN_METRIC_COS;
        return KILN_OK;
    }
    return KILN_E_ARG;
}

const char *kiln_dtype_name(kiln_dtype dtype) {
    switch (dtype) {
    case KILN_DTYPE_F32: return "float32";
    case KILN_DTYPE_U8: return "uint8";
    case KILN_DTYPE_I8: return "int8";
    case KILN_DTYPE_I32: return "int32";
    case KILN_DTYPE_F64: return "float64";
    case KILN_DTYPE_F16: return "float16";
    case KILN_DTYPE_I64: return "int64";
    }
    return "invalid";
}

/* ==== Internal: errors, allocation, threads ==== */

kiln_status kiln_vfail(kiln_ctx *ctx, kiln_status status, const char *fmt, va_list ap) {
    if (!ctx)
        return status;
    pthread_mutex_lock(&ctx->lock);
    vsnprintf(ctx->errmsg, sizeof ctx->errmsg, fmt, ap);
    pthread_mutex_unlock(&ctx->lock);
    return status;
}

kiln_status kiln_fail(kiln_ctx *ctx, kiln_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kiln_vfail(ctx, status, fmt, ap);
    va_end(ap);
    return status;
}

void kiln_clear_error(kiln_ctx *ctx) {
    if (!ctx)
        return;
    pthread_mutex_lock(&ctx->lock);
    ctx->errmsg[0] = '\0';
    pthread_mutex_unlock(&ctx->lock);
}

kiln_status kiln_alloc(kiln_ctx *ctx, size_t bytes, const char *what, void **out) {
    *out = malloc(bytes ? bytes : 1);
    if (!*out)
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory allocating %zu bytes for %s", bytes,
                         what);
    return KILN_OK;
}

kiln_status kiln_calloc(kiln_ctx *ctx, size_t bytes, const char *what, void **out) {
    *out = calloc(1, bytes ? bytes : 1);
    if (!*out)
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory allocating %zu bytes for %s", bytes,
                         what);
    return KILN_OK;
}

kiln_status kiln_alloc_aligned(kiln_ctx *ctx, size_t bytes, const char *what, void **out) {
    size_t rounded = (bytes + 63) & ~(size_t)63;
    *out = NULL;
    if (rounded < bytes || posix_memalign(out, 64, rounded ? rounded : 64) != 0) {
        *out = NULL;
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory allocating %zu bytes for %s", bytes,
                         what);
    }
    return KILN_OK;
}

void kiln_free_aligned(void *p) { free(p); }

int kiln_threads(uint32_t threads) {
    if (threads > 0)
        return threads > 4096 ? 4096 : (int)threads;
    int n = omp_get_num_procs();
    return n > 0 ? n : 1;
}
