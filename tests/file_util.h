/* file_util.h -- whole-file write and read for tests and fuzz targets, and
 * the little-endian field helpers they use to forge file headers. */
#ifndef KILN_FILE_UTIL_H
#define KILN_FILE_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../common/le_internal.h"

static inline bool write_file(const char *path, const void *data, size_t size) {
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return false;
    const bool ok = (size == 0 || fwrite(data, 1, size, fp) == size);
    return fclose(fp) == 0 && ok;
}

/* The whole file in a malloc'd buffer (NULL on failure), with a NUL after
 * its *size bytes so text can go to the string functions. */
static inline uint8_t *read_file(const char *path, size_t *size) {
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    uint8_t *buf = NULL;
    long n = -1;
    if (fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
            free(buf);
            buf = NULL;
        } else if (buf) {
            buf[n] = 0;
        }
    }
    fclose(fp);
    *size = buf ? (size_t)n : 0;
    return buf;
}

#endif /* KILN_FILE_UTIL_H */
