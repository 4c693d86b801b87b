/* fuzz_dataset.c -- fuzz target for the dataset readers (common/dataset.c).
 *
 * Each input is written to a temporary file and opened as every one of the
 * eight formats; whatever opens is read back whole (up to a cap) with
 * kiln_dataset_read_f32, and with kiln_dataset_read_i32 where the data is
 * integer. Failing cleanly is fine, crashing or reading outside the mapping
 * is not.
 *
 * Design decisions:
 *  1. The readers map files, so the input goes through a real file rather
 *     than a memory buffer: that is the code path users run.
 *  2. The file is named by pid in $KILN_TEST_TMP (else /tmp) so parallel
 *     ctest runs and libFuzzer workers do not share it.
 *  3. Seeds are small well-formed files of each format (npy in all three
 *     header versions and in every element type, float64, float16 and int64
 *     with values at the edges of their conversions; ground truth with and
 *     without distances) built byte by byte here, so the replay driver's
 *     mutations start from inputs that reach past the header checks. The
 *     seeds of the newer types are also files in tests/fuzz/corpus/
 *     fuzz_dataset, for libFuzzer runs.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "fuzz_util.h"
#include "kiln.h"

/* ==== Tunables ==== */

/* Rows read per open: enough to cover every row of the seeds and their
 * mutations, small enough that a mutated header claiming millions of rows
 * (which only opens when the file really holds them) stays cheap. */
#define FUZZ_MAX_ROWS 1000

/* ==== Helpers ==== */

static const kiln_format fuzz_formats[] = {KILN_FORMAT_FVECS, KILN_FORMAT_BVECS, KILN_FORMAT_IVECS,
                                           KILN_FORMAT_FBIN,  KILN_FORMAT_U8BIN, KILN_FORMAT_I8BIN,
                                           KILN_FORMAT_NPY,   KILN_FORMAT_IBIN};

static bool is_float(kiln_dtype t) {
    return t == KILN_DTYPE_F32 || t == KILN_DTYPE_F64 || t == KILN_DTYPE_F16;
}

/* Reads up to FUZZ_MAX_ROWS rows every way the dataset allows, plus reads
 * that must be refused. */
static void exercise(const kiln_dataset *ds) {
    const size_t n = kiln_dataset_count(ds);
    const size_t d = kiln_dataset_dim(ds);
    const size_t rows = n < FUZZ_MAX_ROWS ? n : FUZZ_MAX_ROWS;
    /* An open file holds rows*d elements of at least one byte, so this is
     * bounded by four times the input's size. */
    float *f = malloc((rows ? rows : 1) * d * sizeof *f);
    int32_t *x = malloc((rows ? rows : 1) * d * sizeof *x);
    if (!f || !x) {
        free(f);
        free(x);
        return;
    }
    kiln_dataset_read_f32(ds, 0, rows, f);
    if (n > 0)
        kiln_dataset_read_f32(ds, n - 1, 1, f);
    kiln_dataset_read_f32(ds, n, 1, f);
    if (!is_float(kiln_dataset_dtype(ds))) {
        kiln_dataset_read_i32(ds, 0, rows, x);
        kiln_dataset_read_i32(ds, n, 1, x);
    }
    free(f);
    free(x);
}

/* ==== Target ==== */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static kiln_ctx *ctx;
    if (!ctx && kiln_ctx_new(&ctx) != KILN_OK)
        return 0;
    const char *path = fuzz_path("in");
    if (!write_file(path, data, size))
        return 0;
    for (size_t i = 0; i < sizeof fuzz_formats / sizeof fuzz_formats[0]; i++) {
        for (unsigned flags = 0; flags <= KILN_OPEN_ALLOW_NONFINITE; flags++) {
            kiln_dataset *ds = NULL;
            if (kiln_dataset_open(ctx, path, fuzz_formats[i], flags, &ds) != KILN_OK)
                continue;
            const bool floats = is_float(kiln_dataset_dtype(ds));
            exercise(ds);
            kiln_dataset_free(ds);
            /* Integer data ignores the flag: one pass is enough. */
            if (!floats)
                break;
        }
    }
    unlink(path);
    return 0;
}

/* ==== Seeds ==== */

/* A growing byte buffer for building seeds. */
typedef struct seed_buf {
    uint8_t *p;
    size_t len;
} seed_buf;

static void put(seed_buf *b, const void *src, size_t n) {
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void put_le32(seed_buf *b, uint32_t v) {
    const uint8_t bytes[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16),
                              (uint8_t)(v >> 24)};
    put(b, bytes, 4);
}

static void put_le64(seed_buf *b, uint64_t v) {
    put_le32(b, (uint32_t)v);
    put_le32(b, (uint32_t)(v >> 32));
}

/* Element k of a seed, as its bytes (8, 4, 2 or 1), varied; the 8- and
 * 2-byte ones include values at the edge of their conversion (float64
 * beyond float32, float16 subnormals and infinity, int64 past int32). */
static void put_elem(seed_buf *b, size_t es, bool is_float, size_t k) {
    if (es == 8 && is_float) {
        const double v = k == 4 ? 1e39 : k == 5 ? -3.5e38 : (double)k * 0.25 - 1.0;
        put(b, &v, 8);
    } else if (es == 8) {
        put_le64(b, k == 7 ? (uint64_t)1 << 31 : (uint64_t)(k * 104729));
    } else if (es == 2) {
        static const uint16_t halves[] = {0x3c00, 0x0001, 0x7bff, 0xc000, 0x7c00, 0x3555};
        const uint16_t h = halves[k % 6];
        put(b, &h, 2);
    } else if (es == 1) {
        const uint8_t v = (uint8_t)(k * 37 + 11);
        put(b, &v, 1);
    } else if (is_float) {
        const float v = (float)k * 0.5f - 3.0f;
        put(b, &v, 4);
    } else {
        put_le32(b, (uint32_t)(k * 7919));
    }
}

/* Seed shapes: 5 rows of 3 (4 bytes ones) or of 6 (one-byte ones). */
#define SEED_N 5

int kiln_fuzz_seed(size_t i, uint8_t **buf, size_t *len) {
    /* texmex x3, big-ann x3, npy: v1 <f4, v2 |u1, v3 <i4, v1 |i1, v1 <f8,
     * v2 <f2, v1 <i8; ground truth with distances and without */
    if (i >= 15)
        return 0;
    seed_buf b = {malloc(512), 0};
    if (!b.p)
        return 0;
    if (i < 3) {
        const size_t es = i == 1 ? 1 : 4, d = i == 1 ? 6 : 3;
        for (size_t r = 0; r < SEED_N; r++) {
            put_le32(&b, (uint32_t)d);
            for (size_t j = 0; j < d; j++)
                put_elem(&b, es, i == 0, r * d + j);
        }
    } else if (i < 6) {
        const size_t es = i == 3 ? 4 : 1, d = i == 3 ? 3 : 6;
        put_le32(&b, SEED_N);
        put_le32(&b, (uint32_t)d);
        for (size_t k = 0; k < SEED_N * d; k++)
            put_elem(&b, es, i == 3, k);
    } else if (i >= 13) {
        put_le32(&b, SEED_N);
        put_le32(&b, 3);
        for (size_t k = 0; k < SEED_N * 3; k++)
            put_le32(&b, (uint32_t)(k * 7));
        for (size_t k = 0; i == 13 && k < SEED_N * 3; k++)
            put_elem(&b, 4, true, k);
    } else {
        static const char *const descr[] = {"<f4", "|u1", "<i4", "|i1", "<f8", "<f2", "<i8"};
        static const int majors[] = {1, 2, 3, 1, 1, 2, 1};
        const size_t v = i - 6; /* 0..6 */
        const int major = majors[v];
        const size_t es = (size_t)(descr[v][2] - '0'), d = es == 1 ? 6 : 3;
        char dict[128];
        const int dl = snprintf(dict, sizeof dict,
                                "{'descr': '%s', 'fortran_order': False, 'shape': (%d, %zu), }",
                                descr[v], SEED_N, d);
        const size_t pre = major == 1 ? 10 : 12;
        size_t hlen = (size_t)dl + 1;
        hlen += (64 - (pre + hlen) % 64) % 64;
        put(&b, "\x93NUMPY", 6);
        const uint8_t ver[2] = {(uint8_t)major, 0};
        put(&b, ver, 2);
        if (major == 1) {
            const uint8_t h16[2] = {(uint8_t)hlen, (uint8_t)(hlen >> 8)};
            put(&b, h16, 2);
        } else {
            put_le32(&b, (uint32_t)hlen);
        }
        put(&b, dict, (size_t)dl);
        while (b.len < pre + hlen - 1)
            put(&b, " ", 1);
        put(&b, "\n", 1);
        for (size_t k = 0; k < SEED_N * d; k++)
            put_elem(&b, es, descr[v][1] == 'f', k);
    }
    *buf = b.p;
    *len = b.len;
    return 1;
}
