/* dataset_internal.h -- the mapped dataset behind the public kiln_dataset. */
#ifndef KILN_DATASET_INTERNAL_H
#define KILN_DATASET_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

struct kiln_dataset {
    kiln_ctx *ctx;
    char *path; /* owned copy, for error messages */
    kiln_format format;
    kiln_dtype dtype;
    size_t n, dim;
    size_t elem_size;   /* bytes per element */
    const uint8_t *map; /* whole file, read-only mapping (NULL when empty) */
    size_t map_len;
    size_t data_offset; /* byte offset of row 0's first element */
    size_t row_stride;  /* bytes from one row's first element to the next */
    unsigned flags;     /* KILN_OPEN_* */
};

/* Pointer to row i's first element inside the mapping (no copy). */
static inline const void *kiln_dataset_row(const kiln_dataset *ds, size_t i) {
    return ds->map + ds->data_offset + i * ds->row_stride;
}

#endif /* KILN_DATASET_INTERNAL_H */
