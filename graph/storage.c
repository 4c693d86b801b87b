/* storage.c -- compact vector storage (issue 14 item 7): an index's rows
 * as f16 or int8 (common/codec.c), the conversion at the end of a build,
 * the rows the live writers put and clear, the exact rerank of a search's
 * candidates, and the bytes an element takes.
 *
 * Design decisions:
 *  1. Builds run on f32 as before (the device pipeline, insertion, the
 *     repair), then kiln_index_compress encodes every row and drops the f32
 *     rows unless rerank keeps them. The graph is then the f32 build's:
 *     compression changes what search measures, not which links exist, so
 *     recall loses only what the rows' rounding costs the traversal.
 *  2. Every graph distance afterwards reads the compact rows
 *     (kiln_node_dist, kiln_pair_dist in hnsw_internal.h), the live
 *     writers' too, so an add, delete or update judges and links with the
 *     distances search will use. With rerank the f32 rows are used for the
 *     final re-score only: writers keep them up to date but never read
 *     them, so an index behaves the same with or without them up to the
 *     last step of a search.
 *  3. The rerank re-scores the ef candidates the level-0 beam ends with (not
 *     just k): the beam's top ef is where compact distances misorder the
 *     true nearest, and ef exact distances cost ef f32 rows, the price of a
 *     few hops of the search.
 *  4. F16 refuses a finite component beyond 65504 (it would become an
 *     infinity and the row unreachable), at the build's conversion and at
 *     each add or update, with the node or row named; int8's per-row scale
 *     holds any finite row. COS rows are normalised before they are
 *     encoded, so they never overflow.
 *  5. A free slot's rows are zero in every storage (codes and scale 0), as
 *     f32's are, so files stay canonical.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../common/ctx_internal.h"
#include "../common/dataset_internal.h"
#include "search_internal.h"

/* ==== Helpers ==== */

static const char *const storage_names[] = {"?", "f32", "f16", "int8"};

/* The first finite component of the n x dim rows beyond f16's range:
 * *row and *col, and true; false when there is none. */
static bool f16_overflow(const float *rows, size_t n, uint32_t dim, size_t *row, size_t *col) {
    for (size_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < dim; j++) {
            const float x = rows[i * dim + j];
            if (isfinite(x) && (kiln_f32_to_f16(x) & 0x7fffu) == 0x7c00u) {
                *row = i;
                *col = j;
                return true;
            }
        }
    return false;
}

/* Frees the f32 rows (heap or file mapping). */
static void drop_f32(struct kiln_index *ix) {
    if (ix->vectors_map)
        munmap(ix->vectors_map, ix->vectors_map_len);
    else
        kiln_free_aligned(ix->vectors);
    ix->vectors = NULL;
    ix->vectors_map = NULL;
    ix->vectors_map_len = 0;
}

/* ==== Internal ==== */

uint64_t kiln_vector_bytes(const struct kiln_index *ix) {
    const uint64_t f32 = (uint64_t)ix->dim * sizeof(float);
    if (ix->storage == KILN_STORAGE_F32)
        return f32;
    return ix->code_bytes + (ix->vectors ? f32 : 0);
}

void kiln_storage_bind(struct kiln_index *ix, kiln_storage s) {
    ix->storage = s;
    if (s == KILN_STORAGE_F32) {
        ix->code_bytes = 0;
        ix->code_dist = NULL;
        ix->code_pair = NULL;
        return;
    }
    ix->code_bytes = kiln_code_bytes(s, ix->dim);
    ix->code_dist = kiln_code_dist(s, ix->metric);
    ix->code_pair = kiln_code_pair(s, ix->metric);
}

kiln_status kiln_storage_alloc(struct kiln_index *ix, kiln_storage s, bool keep_f32) {
    size_t bytes;
    const uint64_t slots = ix->capacity > ix->count ? ix->capacity : ix->count;
    if (kiln_mul_size((size_t)slots, kiln_code_bytes(s, ix->dim), &bytes))
        return kiln_fail(ix->ctx, KILN_E_RANGE, "%llu rows of %s do not fit in memory",
                         (unsigned long long)slots, kiln_storage_name(s));
    kiln_status st =
        kiln_alloc_aligned(ix->ctx, bytes ? bytes : 64, "compact vectors", (void **)&ix->codes);
    if (st)
        return st;
    kiln_storage_bind(ix, s);
    if (!keep_f32)
        drop_f32(ix);
    return KILN_OK;
}

kiln_status kiln_storage_check_rows(const struct kiln_index *ix, const float *rows, size_t n,
                                    const char *what) {
    size_t row, col;
    if (ix->storage != KILN_STORAGE_F16 || ix->metric == KILN_METRIC_COS ||
        !f16_overflow(rows, n, ix->dim, &row, &col))
        return KILN_OK;
    return kiln_fail(ix->ctx, KILN_E_RANGE,
                     "%s: vector %zu component %zu is %g, beyond f16 storage's range of +-65504 "
                     "(use int8 or f32)",
                     what, row, col, (double)rows[row * ix->dim + col]);
}

kiln_status kiln_storage_fits(const struct kiln_index *ix, kiln_storage s) {
    size_t row, col;
    if (s == KILN_STORAGE_F16 && f16_overflow(ix->vectors, (size_t)ix->count, ix->dim, &row, &col))
        return kiln_fail(ix->ctx, KILN_E_RANGE,
                         "build: row %zu component %zu is %g, beyond f16 storage's range of "
                         "+-65504 (use storage int8 or f32)",
                         row, col, (double)ix->vectors[row * ix->dim + col]);
    return KILN_OK;
}

kiln_status kiln_index_compress(struct kiln_index *ix, kiln_storage s, bool keep_f32) {
    if (s == KILN_STORAGE_F32 || ix->storage != KILN_STORAGE_F32)
        return KILN_OK;
    kiln_status st = kiln_storage_fits(ix, s);
    if (st == KILN_OK)
        st = kiln_storage_alloc(ix, s, true); /* the rows are read below */
    if (st)
        return st;
    const long n = (long)ix->count;
#pragma omp parallel for schedule(static, 4096)
    for (long i = 0; i < n; i++)
        kiln_encode_row(s, kiln_vector(ix, (uint32_t)i), ix->dim,
                        ix->codes + (size_t)i * ix->code_bytes);
    if (!keep_f32)
        drop_f32(ix);
    return KILN_OK;
}

void kiln_storage_put(struct kiln_index *ix, const float *rows, const uint32_t *slots, size_t n,
                      float *scratch) {
    const size_t dim = ix->dim;
    for (size_t k = 0; k < n; k++) {
        /* The f32 row where there is one, else the scratch row, normalised
         * there for COS and then encoded. */
        float *row = ix->vectors ? ix->vectors + (size_t)slots[k] * dim : scratch;
        memcpy(row, rows + k * dim, dim * sizeof *row);
        if (ix->metric == KILN_METRIC_COS)
            kiln_normalize(row, dim);
        if (ix->storage != KILN_STORAGE_F32)
            kiln_encode_row(ix->storage, row, dim, ix->codes + (size_t)slots[k] * ix->code_bytes);
    }
}

void kiln_storage_clear(struct kiln_index *ix, uint32_t slot) {
    if (ix->vectors)
        memset(ix->vectors + (size_t)slot * ix->dim, 0, (size_t)ix->dim * sizeof(float));
    if (ix->codes)
        memset(ix->codes + (size_t)slot * ix->code_bytes, 0, ix->code_bytes);
}

bool kiln_node_nonfinite(const struct kiln_index *ix, uint32_t node) {
    if (ix->storage == KILN_STORAGE_F32)
        return kiln_row_nonfinite(kiln_vector(ix, node), ix->dim);
    if (ix->storage == KILN_STORAGE_F16) {
        const uint16_t *h = kiln_code(ix, node);
        for (uint32_t i = 0; i < ix->dim; i++)
            if ((h[i] & 0x7c00u) == 0x7c00u) /* exponent all ones: inf or NaN */
                return true;
        return false;
    }
    float scale; /* an int8 row is non-finite exactly when its scale is */
    memcpy(&scale, kiln_code(ix, node), sizeof scale);
    return !isfinite(scale);
}

void kiln_rerank(const struct kiln_index *ix, const float *q, kiln_cand *c, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        const float d = ix->dist(q, kiln_vector(ix, c[i].id), ix->dim);
        c[i].dist = d == d ? d : (float)INFINITY;
    }
    kiln_cands_sort(c, n);
}

/* ==== Public ==== */

const char *kiln_storage_name(kiln_storage s) {
    return s >= KILN_STORAGE_F32 && s <= KILN_STORAGE_INT8 ? storage_names[s] : storage_names[0];
}
