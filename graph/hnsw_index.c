/* hnsw_index.c -- the kiln_index object: allocation, level sampling,
 * statistics and accessors (a mapped index is opened in graph/index_file.c
 * and freed here). Builders, search, validator and file I/O live in
 * their own files and share the layout in hnsw_internal.h.
 *
 * Design decisions:
 *  1. Levels are sampled for all nodes up front from the build's seed, so the
 *     hierarchy is the same whatever the thread count, and the upper-level
 *     link pool is laid out once, with no per-node allocation.
 *  2. mL = 1/ln(M) (Malkov & Yashunin); levels are capped at
 *     KILN_MAX_LEVELS-1, which no realistic n reaches for M >= 2.
 *  3. A mapped index's arrays are the file's page cache: kiln_index_memory
 *     (and stats memory_bytes) count heap bytes only, i.e. the struct and
 *     upper_off, since mapped pages are shared with every other reader of
 *     the file and the kernel drops them under pressure.
 *  4. The level-0 links are zeroed by all cores: the zeroing is the first
 *     touch of their pages, and a fresh page is dear where memory comes from
 *     a host (on the development VM one thread touched 1 GiB in 8-15 s, two
 *     in about 5; at 4M x 128 a serial memset of the 528 MB took 8.7 s).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../common/ctx_internal.h"
#include "../common/rng_internal.h"
#include "hnsw_internal.h"

/* Bytes each thread zeroes at a time (decision 4). */
#define INDEX_ZERO_BLOCK ((size_t)2 << 20)

/* ==== Internal ==== */

void kiln_sample_levels(uint8_t *levels, uint64_t count, uint32_t M, uint64_t seed) {
    kiln_rng rng;
    kiln_rng_seed(&rng, seed ^ 0x6c6576656c73ULL); /* "levels": apart from other streams */
    const double mult = 1.0 / log(M < 2 ? 2.0 : (double)M);
    for (uint64_t i = 0; i < count; i++) {
        double l = floor(-log(kiln_rng_uniform(&rng)) * mult);
        levels[i] = (uint8_t)(l > KILN_MAX_LEVELS - 1 ? KILN_MAX_LEVELS - 1 : l);
    }
}

uint64_t kiln_upper_layout(const uint8_t *levels, uint64_t count, uint32_t M, uint64_t *upper_off) {
    uint64_t pool = 0;
    for (uint64_t i = 0; i < count; i++) {
        upper_off[i] = levels[i] ? pool : KILN_NO_UPPER;
        pool += (uint64_t)levels[i] * (M + 1);
    }
    return pool;
}

kiln_status kiln_index_alloc(kiln_ctx *ctx, uint64_t count, uint32_t dim, kiln_metric metric,
                             uint32_t M, const uint8_t *levels, struct kiln_index **out) {
    return kiln_index_alloc_m0(ctx, count, dim, metric, M, 2 * M, levels, out);
}

kiln_status kiln_index_alloc_m0(kiln_ctx *ctx, uint64_t count, uint32_t dim, kiln_metric metric,
                                uint32_t M, uint32_t M0, const uint8_t *levels,
                                struct kiln_index **out) {
    *out = NULL;
    if (M < 2 || M > KILN_MAX_M)
        return kiln_fail(ctx, KILN_E_ARG, "M = %u is out of range [2, %u]", M, KILN_MAX_M);
    if (M0 < M || M0 > 2 * M)
        return kiln_fail(ctx, KILN_E_ARG, "M0 = %u is out of range [M, 2M] = [%u, %u]", M0, M,
                         2 * M);
    if (dim < 1 || dim > KILN_MAX_DIM)
        return kiln_fail(ctx, KILN_E_ARG, "dim = %u is out of range [1, %u]", dim, KILN_MAX_DIM);
    if (count >= KILN_NO_NODE)
        return kiln_fail(ctx, KILN_E_RANGE, "%llu vectors exceed the limit of %u per index",
                         (unsigned long long)count, KILN_NO_NODE - 1);
    size_t vec_bytes, link_bytes, label_bytes, off_bytes;
    if (kiln_mul_size(count, (size_t)dim * sizeof(float), &vec_bytes) ||
        kiln_mul_size(count, ((size_t)M0 + 1) * sizeof(uint32_t), &link_bytes) ||
        kiln_mul_size(count, sizeof(int64_t), &label_bytes) ||
        kiln_mul_size(count, sizeof(uint64_t), &off_bytes))
        return kiln_fail(ctx, KILN_E_RANGE, "index of %llu x %u does not fit in memory",
                         (unsigned long long)count, dim);

    struct kiln_index *ix = NULL;
    kiln_status st = kiln_calloc(ctx, sizeof *ix, "index", (void **)&ix);
    if (st)
        return st;
    kiln_index_locks_init(ix);
    ix->ctx = ctx;
    ix->dim = dim;
    ix->metric = metric;
    ix->M = M;
    ix->M0 = M0;
    ix->count = count;
    ix->capacity = count;
    ix->entry_point = KILN_NO_NODE;
    ix->dist = kiln_distance_fn(metric);
    kiln_storage_bind(ix, KILN_STORAGE_F32); /* a build's compact rows come at its end */

    if ((st = kiln_alloc_aligned(ctx, vec_bytes, "vectors", (void **)&ix->vectors)) ||
        (st = kiln_alloc_aligned(ctx, link_bytes, "level-0 links", (void **)&ix->links0)) ||
        (st = kiln_alloc(ctx, label_bytes, "labels", (void **)&ix->labels)) ||
        (st = kiln_calloc(ctx, count, "levels", (void **)&ix->levels)) ||
        (st = kiln_alloc(ctx, off_bytes, "upper offsets", (void **)&ix->upper_off))) {
        kiln_index_free(ix);
        return st;
    }
    /* Decision 4: the zeroing is the first touch of every page, parallel. */
    const size_t blocks = (link_bytes + INDEX_ZERO_BLOCK - 1) / INDEX_ZERO_BLOCK;
#pragma omp parallel for schedule(static) if (blocks > 1)
    for (size_t b = 0; b < blocks; b++) {
        const size_t at = b * INDEX_ZERO_BLOCK, left = link_bytes - at;
        memset((char *)ix->links0 + at, 0, left < INDEX_ZERO_BLOCK ? left : INDEX_ZERO_BLOCK);
    }
    if (levels)
        memcpy(ix->levels, levels, count);

    uint32_t top = 0;
    for (uint64_t i = 0; i < count; i++) {
        uint32_t l = ix->levels[i];
        if (l >= KILN_MAX_LEVELS) {
            kiln_index_free(ix);
            return kiln_fail(ctx, KILN_E_RANGE, "node %llu has level %u, above the limit %d",
                             (unsigned long long)i, l, KILN_MAX_LEVELS - 1);
        }
        if (l > top)
            top = l;
    }
    const uint64_t pool = kiln_upper_layout(ix->levels, count, M, ix->upper_off);
    ix->upper_len = pool;
    ix->max_level = top;
    size_t pool_bytes;
    if (pool > SIZE_MAX / sizeof(uint32_t) ||
        kiln_mul_size((size_t)pool, sizeof(uint32_t), &pool_bytes)) {
        kiln_index_free(ix);
        return kiln_fail(ctx, KILN_E_RANGE, "upper-level link pool of %llu entries is too large",
                         (unsigned long long)pool);
    }
    if ((st = kiln_calloc(ctx, pool_bytes, "upper-level links", (void **)&ix->upper_pool))) {
        kiln_index_free(ix);
        return st;
    }
    ix->upper_cap = pool;
    *out = ix;
    return KILN_OK;
}

uint64_t kiln_index_memory(const struct kiln_index *ix) {
    if (ix->map) /* only upper_off is heap (decision 3) */
        return sizeof *ix + ix->count * sizeof(uint64_t);
    const uint64_t heap =
        (ix->vectors_map || !ix->vectors ? 0 : (uint64_t)ix->dim * sizeof(float)) + ix->code_bytes +
        (ix->links0_spill_len ? 0 : kiln_links0_stride(ix) * sizeof(uint32_t));
    return sizeof *ix + ix->capacity * (heap + sizeof(int64_t) + 1 + sizeof(uint64_t)) +
           (ix->freed ? ix->capacity : 0) + ix->free_list_cap * sizeof(uint32_t) +
           ix->upper_cap * sizeof(uint32_t);
}

/* A shared mapping of len zero bytes backed by an unnamed file in dir. */
static kiln_status spill_map(kiln_ctx *ctx, const char *dir, size_t len, const char *what,
                             void **out) {
    int fd = -1;
#ifdef O_TMPFILE
    fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
#endif
    if (fd < 0) { /* no O_TMPFILE here, or not on this file system */
        char path[4096];
        snprintf(path, sizeof path, "%s/.kiln-spill.%ld.%p", dir, (long)getpid(), (void *)out);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd >= 0)
            unlink(path);
    }
    if (fd < 0)
        return kiln_fail(ctx, KILN_E_IO, "%s: cannot create a file for the %s: %s", dir, what,
                         strerror(errno));
    int err = 0;
    if (ftruncate(fd, (off_t)len) != 0)
        err = errno;
    void *p = err ? MAP_FAILED : mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (!err && p == MAP_FAILED)
        err = errno;
    close(fd);
    if (err)
        return kiln_fail(ctx, KILN_E_IO, "%s: cannot map %.1f MiB for the %s: %s", dir,
                         len / 1048576.0, what, strerror(err));
    *out = p;
    return KILN_OK;
}

kiln_status kiln_index_spill_storage(struct kiln_index *ix, const char *dir) {
    const size_t vb = ix->count * ix->dim * sizeof(float);
    const size_t lb = ix->count * kiln_links0_stride(ix) * sizeof(uint32_t);
    if (ix->count == 0 || ix->links0_spill_len)
        return KILN_OK;
    void *v = NULL, *l = NULL;
    kiln_status st = ix->vectors_map ? KILN_OK : spill_map(ix->ctx, dir, vb, "vectors", &v);
    if (st == KILN_OK && (st = spill_map(ix->ctx, dir, lb, "level-0 links", &l))) {
        if (v)
            munmap(v, vb);
        return st;
    }
    if (st)
        return st;
    if (v) {
        kiln_free_aligned(ix->vectors);
        ix->vectors = v;
        ix->vectors_map = v;
        ix->vectors_map_len = vb;
    }
    kiln_free_aligned(ix->links0);
    ix->links0 = l;
    ix->links0_spill_len = lb;
    return KILN_OK;
}

void kiln_index_adopt_vectors(struct kiln_index *ix, void *map, size_t len, const float *rows) {
    if (ix->vectors_map)
        munmap(ix->vectors_map, ix->vectors_map_len);
    else
        kiln_free_aligned(ix->vectors);
    ix->vectors = (float *)(uintptr_t)rows; /* read-only: see the declaration */
    ix->vectors_map = map;
    ix->vectors_map_len = len;
}

/* ==== Public ==== */

void kiln_index_locks_init(struct kiln_index *ix) {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
#ifdef __GLIBC__
    /* glibc prefers readers by default: searches that overlap one another
     * would keep a writer out forever (hnsw_live.c decision 8). */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    pthread_rwlock_init(&ix->rw, &attr);
    pthread_rwlockattr_destroy(&attr);
    pthread_mutex_init(&ix->writer, NULL);
}

void kiln_index_free(kiln_index *ix) {
    if (!ix)
        return;
    pthread_rwlock_destroy(&ix->rw);
    pthread_mutex_destroy(&ix->writer);
    kiln_scratch_pool_free(ix);
    kiln_live_free(ix);
    free(ix->report);
    free(ix->rank_bytes);
    free(ix->upper_off);
    if (ix->map) {
        munmap(ix->map, ix->map_bytes);
        free(ix);
        return;
    }
    kiln_index_free_arrays(ix);
    free(ix->upper_pool);
    free(ix);
}

void kiln_index_free_arrays(struct kiln_index *ix) {
    if (ix->vectors_map)
        munmap(ix->vectors_map, ix->vectors_map_len);
    else
        kiln_free_aligned(ix->vectors);
    kiln_free_aligned(ix->codes);
    if (ix->links0_spill_len)
        munmap(ix->links0, ix->links0_spill_len);
    else
        kiln_free_aligned(ix->links0);
    free(ix->labels);
    free(ix->levels);
}

size_t kiln_index_count(const kiln_index *ix) {
    if (!ix)
        return 0;
    kiln_read_begin(ix);
    const size_t n = (size_t)(ix->count - ix->free_count);
    kiln_read_end(ix);
    return n;
}

kiln_status kiln_index_set_threads(kiln_index *ix, uint32_t threads) {
    if (!ix)
        return KILN_E_ARG;
    kiln_writer_begin(ix);
    ix->write_threads = threads;
    kiln_writer_end(ix);
    return KILN_OK;
}
size_t kiln_index_dim(const kiln_index *ix) { return ix ? ix->dim : 0; }
kiln_metric kiln_index_metric(const kiln_index *ix) { return ix ? ix->metric : KILN_METRIC_L2; }

kiln_status kiln_index_build_report(const kiln_index *ix, kiln_build_report *out) {
    if (!ix || !out)
        return KILN_E_ARG;
    if (!ix->report)
        return kiln_fail(ix->ctx, KILN_E_ARG,
                         "this index was loaded, not built: it has no build report");
    *out = *ix->report;
    return KILN_OK;
}

static void stats_of(const struct kiln_index *ix, kiln_index_stats *out);

kiln_status kiln_index_stats_get(const kiln_index *ix, kiln_index_stats *out) {
    if (!ix || !out)
        return KILN_E_ARG;
    kiln_writer_begin(ix);
    stats_of(ix, out);
    kiln_writer_end(ix);
    return KILN_OK;
}

static void stats_of(const struct kiln_index *ix, kiln_index_stats *out) {
    memset(out, 0, sizeof *out);
    out->count = ix->count - ix->free_count;
    out->free_slots = ix->free_count;
    out->dim = ix->dim;
    out->metric = ix->metric;
    out->M = ix->M;
    out->M0 = ix->M0;
    out->levels = ix->count ? ix->max_level + 1 : 0;
    out->memory_bytes = kiln_index_memory(ix);
    out->storage = ix->storage;
    out->rerank = ix->storage != KILN_STORAGE_F32 && ix->vectors;
    out->vector_bytes = kiln_vector_bytes(ix);
    /* What the file's sections hold: rows, level-0 blocks, labels, levels,
     * and the upper blocks of the nodes' levels (not the pool's slack). */
    uint64_t upper = 0;
    for (uint64_t i = 0; i < ix->count; i++)
        upper += ix->levels[i];
    out->data_bytes = ix->count * (out->vector_bytes + kiln_links0_stride(ix) * sizeof(uint32_t) +
                                   sizeof(int64_t) + 1) +
                      upper * (ix->M + 1) * sizeof(uint32_t);
    out->nonfinite_vectors = kiln_index_nonfinite(ix, &out->first_nonfinite);
    uint64_t links[KILN_MAX_LEVELS] = {0};
    out->labels_are_rows = 1;
    int first = 1;
    for (uint64_t i = 0; i < ix->count; i++) {
        if (kiln_slot_free(ix, i)) {
            out->labels_are_rows = 0; /* the live rows are no longer 0 .. count-1 */
            continue;
        }
        const int64_t lab = ix->labels[i];
        if (first)
            out->label_min = out->label_max = lab;
        first = 0;
        out->labels_are_rows &= lab == (int64_t)i;
        out->label_min = lab < out->label_min ? lab : out->label_min;
        out->label_max = lab > out->label_max ? lab : out->label_max;
        for (uint32_t l = 0; l <= ix->levels[i]; l++) {
            uint32_t deg = kiln_links(ix, (uint32_t)i, l)[0];
            out->nodes_per_level[l]++;
            links[l] += deg;
            if (deg > out->max_degree[l])
                out->max_degree[l] = deg;
        }
    }
    for (uint32_t l = 0; l < out->levels; l++)
        out->avg_degree[l] =
            out->nodes_per_level[l] ? (double)links[l] / (double)out->nodes_per_level[l] : 0.0;
}
