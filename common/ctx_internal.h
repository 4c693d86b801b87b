/* ctx_internal.h -- what every module of kiln shares: the context, error
 * reporting, checked allocation and overflow-checked sizes.
 *
 * Design decisions:
 *  1. Errors are reported once, where they are detected, by kiln_fail(),
 *     which formats the message into the context and returns the status, so
 *     a call site reads `return kiln_fail(ctx, KILN_E_FORMAT, "...")`.
 *  2. Messages name what is wrong and where (file, record, byte offset), on
 *     one line, without a trailing newline or period.
 *  3. Every size computed from untrusted input goes through kiln_mul_size /
 *     kiln_add_size before it reaches an allocator.
 */
#ifndef KILN_CTX_INTERNAL_H
#define KILN_CTX_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

#define KILN_ERRMSG_MAX 1024

struct kiln_ctx {
    pthread_mutex_t lock;         /* guards errmsg */
    char errmsg[KILN_ERRMSG_MAX]; /* last failure, NUL-terminated */
    kiln_progress progress;       /* KILN_PROGRESS_* */
    /* Device state, owned by host/: set together with the function that frees
     * it, so common/ never names the device side (kiln_core has none). */
    void *device;                      /* NULL until a device is opened */
    void (*device_free)(void *device); /* non-NULL whenever device is */
};

/* Hands ctx the device state and its teardown, freeing the state it held. */
void kiln_ctx_set_device(kiln_ctx *ctx, void *device, void (*device_free)(void *device));

/* Records a formatted message on ctx (may be NULL) and returns status. */
kiln_status kiln_fail(kiln_ctx *ctx, kiln_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
kiln_status kiln_vfail(kiln_ctx *ctx, kiln_status status, const char *fmt, va_list ap);
void kiln_clear_error(kiln_ctx *ctx);

/* A point where a test may kill the process outright: with the environment
 * variable KILN_TEST_KILL_AT=NAME:N, the N-th time (from 1) point NAME is
 * passed the process raises SIGKILL, as kill -9 or a power cut would. A
 * no-op otherwise. */
void kiln_fault_point(const char *name);

/* Physical memory, or the cgroup's memory limit when lower; 0 when
 * unknown. */
uint64_t kiln_physical_memory(void);
/* The peak anonymous resident memory of this process so far, from /proc
 * (the larger of RssAnon now and the highest seen by earlier calls); 0 when
 * /proc cannot be read. */
uint64_t kiln_peak_rss_anon(void);
/* The anonymous resident memory of this process now; 0 when unknown. */
uint64_t kiln_rss_anon(void);

/* Allocation that reports "out of memory allocating N bytes for WHAT". *out
 * is NULL on failure. kiln_alloc_aligned memory is 64-byte aligned and freed
 * with kiln_free_aligned. kiln_calloc zeroes. */
kiln_status kiln_alloc(kiln_ctx *ctx, size_t bytes, const char *what, void **out);
kiln_status kiln_calloc(kiln_ctx *ctx, size_t bytes, const char *what, void **out);
kiln_status kiln_alloc_aligned(kiln_ctx *ctx, size_t bytes, const char *what, void **out);
void kiln_free_aligned(void *p);

/* A heap buffer kept across the rounds of a loop that only grows, by a
 * quarter more than asked (the rounds differ a little), so that its pages
 * are touched once per loop rather than once per round: a fresh page is
 * dear on a VM that hands freed memory back to its host (common/afile.c
 * decision 7 has the figures; host/device_build.c's streaming passes and
 * cluster/hkmeans.c's probes keep theirs in one). Zero-initialise it. */
typedef struct kiln_grow_buf {
    void *p;
    size_t cap;
} kiln_grow_buf;

/* Makes b hold at least bytes (its contents are not kept when it grows). */
kiln_status kiln_grow_buf_fit(kiln_ctx *ctx, kiln_grow_buf *b, size_t bytes, const char *what);
void kiln_grow_buf_free(kiln_grow_buf *b);

/* true on overflow; *out is a*b (a+b) otherwise. */
static inline bool kiln_mul_size(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out);
}
static inline bool kiln_add_size(size_t a, size_t b, size_t *out) {
    return __builtin_add_overflow(a, b, out);
}

/* Threads to use for a request of `threads` (0 = all online cores). */
int kiln_threads(uint32_t threads);

/* Under an address-space limit (RLIMIT_AS), checks that `threads` threads
 * can exist at once before an OpenMP team of that size is asked for (ctx.c
 * decision 3): KILN_OK, or KILN_E_NOMEM naming the limit. */
kiln_status kiln_threads_check(kiln_ctx *ctx, int threads);

#endif /* KILN_CTX_INTERNAL_H */
