/* ctx.c -- the kiln context, error reporting, checked allocation, and the
 * small name tables of the public API.
 *
 * Design decisions:
 *  1. The message buffer lives in the context (sqlite3_errmsg style) and is
 *     guarded by a mutex, so concurrent searches that fail cannot tear it;
 *     kiln_errmsg copies it out under that mutex into a buffer per thread.
 *  2. Allocation failures are ordinary errors with the size and purpose in
 *     the message, and the address-space limit when one is set (ulimit -v:
 *     then the limit, not the machine, is what ran out); callers can shrink
 *     a batch and retry.
 *  3. libgomp cannot report a thread it fails to start: it prints "Thread
 *     creation failed" and exits. Under an address-space limit (ulimit -v)
 *     that is what many threads' stacks run into, so kiln_threads_check
 *     first starts the team's worth of threads itself, as libgomp would
 *     (default attributes, or OMP_STACKSIZE), holds them all at once and
 *     joins them; a failure becomes an error that names the limit. Without
 *     a limit it does nothing, so ordinary runs pay nothing.
 *  4. Large arrays (the vectors, level 0, the upper links, the visited tags,
 *     the batches' buffers) are marked MADV_HUGEPAGE, the aligned ones 2 MiB
 *     aligned: graph builds and searches read
 *     them at random, and with 4 KiB pages nearly every read past a few MiB
 *     misses the TLB (Debian's default THP mode is "madvise", so nothing is
 *     huge unless asked for). The rounding costs at most 2 MiB per array.
 */
#include <ctype.h>
#include <errno.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/resource.h>
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

/* Decision 1: the message is copied out under the lock into a buffer of the
 * calling thread, so a reader never sees a message half overwritten by a
 * failing search on another thread. The lock is taken through a cast that
 * drops const: it guards the message, not the context's meaning. */
const char *kiln_errmsg(const kiln_ctx *ctx) {
    static _Thread_local char copy[KILN_ERRMSG_MAX];
    if (!ctx)
        return "no context";
    kiln_ctx *const mctx = (kiln_ctx *)(uintptr_t)ctx;
    pthread_mutex_lock(&mctx->lock);
    memcpy(copy, ctx->errmsg, sizeof copy);
    pthread_mutex_unlock(&mctx->lock);
    return copy;
}

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

/* Decision 2's message, naming the address-space limit (ulimit -v) when one
 * is set: under it "out of memory" is the limit, not the machine. */
static kiln_status out_of_memory(kiln_ctx *ctx, size_t bytes, const char *what) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        return kiln_fail(ctx, KILN_E_NOMEM,
                         "out of memory allocating %zu bytes for %s under the %llu MB "
                         "address-space limit (ulimit -v)",
                         bytes, what, (unsigned long long)(rl.rlim_cur >> 20));
    return kiln_fail(ctx, KILN_E_NOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
}

/* Arrays from this size on get huge pages (decision 4). */
#define HUGE_FROM  ((size_t)8 << 20)
#define HUGE_ALIGN ((size_t)2 << 20)

/* Decision 4: advice on the whole 2 MiB units inside [p, p + bytes); a
 * failure changes nothing but speed. */
static void *advise_huge(void *p, size_t bytes) {
#ifdef MADV_HUGEPAGE
    if (p && bytes >= HUGE_FROM) {
        const uintptr_t a = ((uintptr_t)p + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1);
        const uintptr_t b = ((uintptr_t)p + bytes) & ~(uintptr_t)(HUGE_ALIGN - 1);
        if (b > a)
            (void)madvise((void *)a, b - a, MADV_HUGEPAGE);
    }
#endif
    return p;
}

kiln_status kiln_alloc(kiln_ctx *ctx, size_t bytes, const char *what, void **out) {
    *out = advise_huge(malloc(bytes ? bytes : 1), bytes);
    return *out ? KILN_OK : out_of_memory(ctx, bytes, what);
}

kiln_status kiln_calloc(kiln_ctx *ctx, size_t bytes, const char *what, void **out) {
    *out = advise_huge(calloc(1, bytes ? bytes : 1), bytes);
    return *out ? KILN_OK : out_of_memory(ctx, bytes, what);
}

kiln_status kiln_alloc_aligned(kiln_ctx *ctx, size_t bytes, const char *what, void **out) {
    const size_t align = bytes >= HUGE_FROM ? HUGE_ALIGN : 64;
    size_t rounded = (bytes + align - 1) & ~(align - 1);
    *out = NULL;
    if (rounded < bytes || posix_memalign(out, align, rounded ? rounded : 64) != 0) {
        *out = NULL;
        return out_of_memory(ctx, bytes, what);
    }
    advise_huge(*out, rounded);
    return KILN_OK;
}

void kiln_free_aligned(void *p) { free(p); }

int kiln_threads(uint32_t threads) {
    if (threads > 0)
        return threads > 4096 ? 4096 : (int)threads;
    int n = omp_get_num_procs();
    return n > 0 ? n : 1;
}

/* Threads of kiln_threads_check wait here until all exist (decision 3). */
struct thread_gate {
    pthread_mutex_t lock;
    pthread_cond_t open;
    bool go;
};

static void *gate_wait(void *arg) {
    struct thread_gate *g = arg;
    pthread_mutex_lock(&g->lock);
    while (!g->go)
        pthread_cond_wait(&g->open, &g->lock);
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

/* OMP_STACKSIZE (or GOMP_STACKSIZE) as libgomp reads it: a size with an
 * optional B, K, M or G suffix, K when none; 0 when unset or unreadable. */
static size_t omp_stacksize(void) {
    const char *env = getenv("OMP_STACKSIZE");
    if (!env || !*env)
        env = getenv("GOMP_STACKSIZE");
    if (!env || !*env)
        return 0;
    char *end;
    const unsigned long long v = strtoull(env, &end, 10);
    while (isspace((unsigned char)*end))
        end++;
    const int unit = toupper((unsigned char)*end);
    const unsigned shift = unit == 'B' ? 0 : unit == 'M' ? 20 : unit == 'G' ? 30 : 10;
    return end == env || v > (SIZE_MAX >> shift) ? 0 : (size_t)v << shift;
}

kiln_status kiln_threads_check(kiln_ctx *ctx, int threads) {
    struct rlimit rl;
    if (threads <= 1 || getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return KILN_OK;
    pthread_t *ids = calloc((size_t)threads, sizeof *ids);
    if (!ids)
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory checking that %d threads can start",
                         threads);
    struct thread_gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false};
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    const size_t want = omp_stacksize();
    if (want)
        pthread_attr_setstacksize(&attr, want);
    size_t stack = 0;
    pthread_attr_getstacksize(&attr, &stack);
    int started = 0, err = 0;
    while (started < threads - 1 &&
           (err = pthread_create(&ids[started], &attr, gate_wait, &g)) == 0)
        started++;
    pthread_mutex_lock(&g.lock);
    g.go = true;
    pthread_cond_broadcast(&g.open);
    pthread_mutex_unlock(&g.lock);
    for (int i = 0; i < started; i++)
        pthread_join(ids[i], NULL);
    pthread_attr_destroy(&attr);
    free(ids);
    if (started == threads - 1)
        return KILN_OK;
    return kiln_fail(ctx, KILN_E_NOMEM,
                     "cannot start %d threads: only %d could (%s) under the %llu MB "
                     "address-space limit (ulimit -v), with %zu MB of stack each; use at most "
                     "%d threads or raise the limit",
                     threads, started + 1, strerror(err), (unsigned long long)(rl.rlim_cur >> 20),
                     stack >> 20, started + 1);
}

/* ==== Test kill points and memory figures ==== */

void kiln_fault_point(const char *name) {
    static _Atomic uint64_t hits;
    const char *spec = getenv("KILN_TEST_KILL_AT");
    if (!spec)
        return;
    const char *colon = strrchr(spec, ':');
    const size_t len = strlen(name);
    if (!colon || (size_t)(colon - spec) != len || strncmp(spec, name, len) != 0)
        return;
    const uint64_t n = strtoull(colon + 1, NULL, 10);
    if (atomic_fetch_add(&hits, 1) + 1 == n)
        raise(SIGKILL);
}

/* The first number after `key` in a /proc or /sys file, times unit; 0 when
 * absent. */
static uint64_t file_number(const char *path, const char *key, uint64_t unit) {
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    char line[256];
    uint64_t v = 0;
    const size_t kl = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) == 0) {
            v = strtoull(line + kl, NULL, 10) * unit;
            break;
        }
    }
    fclose(f);
    return v;
}

uint64_t kiln_physical_memory(void) {
    uint64_t mem = file_number("/proc/meminfo", "MemTotal:", 1024);
    /* cgroup v2, then v1; "max" parses as 0 and is ignored. */
    uint64_t cg = file_number("/sys/fs/cgroup/memory.max", "", 1);
    if (!cg)
        cg = file_number("/sys/fs/cgroup/memory/memory.limit_in_bytes", "", 1);
    if (cg && (mem == 0 || cg < mem))
        mem = cg;
    return mem;
}

uint64_t kiln_rss_anon(void) { return file_number("/proc/self/status", "RssAnon:", 1024); }

uint64_t kiln_peak_rss_anon(void) {
    static _Atomic uint64_t peak;
    const uint64_t now = kiln_rss_anon();
    uint64_t seen = atomic_load(&peak);
    while (now > seen && !atomic_compare_exchange_weak(&peak, &seen, now))
        ;
    return now > seen ? now : seen;
}

kiln_status kiln_grow_buf_fit(kiln_ctx *ctx, kiln_grow_buf *b, size_t bytes, const char *what) {
    if (bytes <= b->cap && b->p)
        return KILN_OK;
    kiln_grow_buf_free(b);
    const size_t cap = bytes + bytes / 4 + 64;
    kiln_status st = kiln_alloc(ctx, cap, what, &b->p);
    if (st == KILN_OK)
        b->cap = cap;
    return st;
}

void kiln_grow_buf_free(kiln_grow_buf *b) {
    free(b->p);
    b->p = NULL;
    b->cap = 0;
}
