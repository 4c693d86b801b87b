/* dataset_internal.h -- the mapped dataset behind the public kiln_dataset. */
#ifndef KILN_DATASET_INTERNAL_H
#define KILN_DATASET_INTERNAL_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

/* 1 when any of v[0..d) is NaN or infinite. Branch-free so it vectorises:
 * the comparison is false for NaN as well as for |v| = inf. */
static inline int kiln_row_nonfinite(const float *v, size_t d) {
    int bad = 0;
    for (size_t j = 0; j < d; j++)
        bad |= !(fabsf(v[j]) <= FLT_MAX);
    return bad;
}

struct kiln_dataset {
    kiln_ctx *ctx;
    char *path; /* owned copy, for error messages */
    kiln_format format;
    kiln_dtype dtype;
    size_t n, dim;
    size_t elem_size;   /* bytes per element */
    const uint8_t *map; /* whole file, read-only mapping (NULL when empty) */
    int fd;             /* the mapped file, kept open for kiln_dataset_map_f32; -1 when none */
    size_t map_len;
    size_t data_offset; /* byte offset of row 0's first element */
    size_t row_stride;  /* bytes from one row's first element to the next */
    unsigned flags;     /* KILN_OPEN_* */
};

/* Pointer to row i's first element inside the mapping (no copy). */
static inline const void *kiln_dataset_row(const kiln_dataset *ds, size_t i) {
    return ds->map + ds->data_offset + i * ds->row_stride;
}

/* A private read-only mapping of a dataset's file, for rows used in place. */
typedef struct kiln_f32_map {
    void *base; /* for munmap(base, len); NULL when the rows cannot be used in place */
    size_t len;
    const float *rows; /* row 0; n x dim floats back to back */
} kiln_f32_map;

/* When ds holds float32 rows back to back (fbin, npy <f4: no conversion),
 * maps its file once more and checks rows [first, first + count) (clamped
 * to n) for non-finite values as kiln_dataset_read_f32 does (unless opened
 * with KILN_OPEN_ALLOW_NONFINITE): out->rows then holds all n rows, and the
 * mapping is the caller's, valid after kiln_dataset_free. out->base is
 * NULL, with KILN_OK, when the rows need converting (other types, texmex
 * record headers) or the mapping fails: read them instead. A non-finite
 * value fails as read_f32 fails. One process checks all rows (0, n); the
 * ranks of a collective build each check their share. */
kiln_status kiln_dataset_map_f32(const kiln_dataset *ds, size_t first, size_t count,
                                 kiln_f32_map *out);

#endif /* KILN_DATASET_INTERNAL_H */
