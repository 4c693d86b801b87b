/* test_dataset.c -- dataset I/O (common/dataset.c): every format round-trips
 * every element type it can hold, AUTO picks formats by extension, each kind
 * of malformed input fails with its status and a message naming the file and
 * the place, and the real siftsmall files read back as a plain fread sees
 * them.
 *
 * Design decisions:
 *  1. Bad inputs are built byte by byte here, not with kiln_dataset_write, so
 *     the reader is checked against the format description rather than
 *     against the writer's reading of it.
 *  2. Files go under $KILN_TEST_TMP (else /tmp), named with the pid, so the
 *     normal and sanitizer builds can run side by side.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "kiln.h"

/* ==== Fixture ==== */

#define PATH_CAP 1024

static kiln_ctx *ctx;
static char tmp_dir[PATH_CAP];

/* mkdir -p; failures surface when the first file cannot be written. */
static void make_dirs(const char *dir) {
    char buf[PATH_CAP];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    mkdir(buf, 0755);
}

static void setup_tmp(void) {
    const char *env = getenv("KILN_TEST_TMP");
    snprintf(tmp_dir, sizeof tmp_dir, "%s", env && *env ? env : "/tmp");
    make_dirs(tmp_dir);
}

/* out gets "<tmp>/test_dataset_<pid>_<name>". */
static void tmp_path(char *out, const char *name) {
    const int len =
        snprintf(out, PATH_CAP, "%s/test_dataset_%ld_%s", tmp_dir, (long)getpid(), name);
    REQUIRE(len > 0 && len < PATH_CAP);
}

static void write_bytes(const char *path, const void *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    REQUIRE(f != NULL);
    REQUIRE(len == 0 || fwrite(buf, 1, len, f) == len);
    REQUIRE(fclose(f) == 0);
}

static void put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_f32(uint8_t *p, float v) { memcpy(p, &v, sizeof v); }

/* True when kiln_errmsg(ctx) starts with path, as every message must. */
static bool msg_starts_with(const char *path) {
    return strncmp(kiln_errmsg(ctx), path, strlen(path)) == 0;
}

/* ==== Generated data ==== */

static size_t dtype_size(kiln_dtype dtype) {
    return dtype == KILN_DTYPE_F32 || dtype == KILN_DTYPE_I32 ? 4 : 1;
}

/* Element (i, j) of the test matrix, as the float read_f32 must return:
 * fractions and negatives for float, the full range of each integer type. */
static float expected_value(kiln_dtype dtype, size_t i, size_t j) {
    const uint32_t h = (uint32_t)(i * 2654435761u + j * 40503u);
    switch (dtype) {
    case KILN_DTYPE_F32: return (float)(h % 20001) / 8.0f - 1250.0f;
    case KILN_DTYPE_U8: return (float)(h & 0xff);
    case KILN_DTYPE_I8: return (float)((int)(h & 0xff) - 128);
    case KILN_DTYPE_I32: return (float)((int32_t)(h % 2000001) - 1000000);
    default: break; /* the npy-only types have tests of their own */
    }
    return 0;
}

/* n*d elements of dtype in a malloc'd buffer. */
static void *make_data(kiln_dtype dtype, size_t n, size_t d) {
    uint8_t *buf = malloc(n * d * dtype_size(dtype) + 1);
    REQUIRE(buf != NULL);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < d; j++) {
            const float v = expected_value(dtype, i, j);
            const size_t k = i * d + j;
            switch (dtype) {
            case KILN_DTYPE_F32: memcpy(buf + 4 * k, &v, 4); break;
            case KILN_DTYPE_U8: buf[k] = (uint8_t)v; break;
            case KILN_DTYPE_I8: buf[k] = (uint8_t)(int8_t)v; break;
            case KILN_DTYPE_I32: {
                const int32_t x = (int32_t)v;
                memcpy(buf + 4 * k, &x, 4);
                break;
            }
            default: REQUIRE(!"a type of round_trip");
            }
        }
    }
    return buf;
}

/* ==== Names ==== */

static void test_names(void) {
    static const kiln_format all[] = {KILN_FORMAT_AUTO,  KILN_FORMAT_FVECS, KILN_FORMAT_BVECS,
                                      KILN_FORMAT_IVECS, KILN_FORMAT_FBIN,  KILN_FORMAT_U8BIN,
                                      KILN_FORMAT_I8BIN, KILN_FORMAT_NPY,   KILN_FORMAT_IBIN};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        kiln_format f = (kiln_format)0;
        CHECK(kiln_format_parse(kiln_format_name(all[i]), &f) == KILN_OK);
        CHECK(f == all[i]);
    }
    CHECK(strcmp(kiln_format_name(KILN_FORMAT_FVECS), "fvecs") == 0);
    CHECK(strcmp(kiln_format_name(KILN_FORMAT_NPY), "npy") == 0);
    CHECK(strcmp(kiln_format_name((kiln_format)99), "invalid") == 0);
    kiln_format f = (kiln_format)0;
    CHECK(kiln_format_parse("U8BIN", &f) == KILN_OK && f == KILN_FORMAT_U8BIN);
    CHECK(kiln_format_parse("bin", &f) == KILN_E_ARG);
    CHECK(kiln_format_parse("ibin", &f) == KILN_OK && f == KILN_FORMAT_IBIN);
    CHECK(strcmp(kiln_dtype_name(KILN_DTYPE_F64), "float64") == 0);
    CHECK(strcmp(kiln_dtype_name(KILN_DTYPE_F16), "float16") == 0);
    CHECK(strcmp(kiln_dtype_name(KILN_DTYPE_I64), "int64") == 0);
    CHECK(kiln_format_parse(NULL, &f) == KILN_E_ARG);
}

/* ==== Round trips ==== */

typedef struct combo {
    kiln_format format;
    kiln_dtype dtype;
} combo;

static const combo combos[] = {
    {KILN_FORMAT_FVECS, KILN_DTYPE_F32}, {KILN_FORMAT_BVECS, KILN_DTYPE_U8},
    {KILN_FORMAT_IVECS, KILN_DTYPE_I32}, {KILN_FORMAT_FBIN, KILN_DTYPE_F32},
    {KILN_FORMAT_U8BIN, KILN_DTYPE_U8},  {KILN_FORMAT_I8BIN, KILN_DTYPE_I8},
    {KILN_FORMAT_NPY, KILN_DTYPE_F32},   {KILN_FORMAT_NPY, KILN_DTYPE_U8},
    {KILN_FORMAT_NPY, KILN_DTYPE_I8},    {KILN_FORMAT_NPY, KILN_DTYPE_I32},
};

/* Bytes the writer must produce for n rows of d elements. */
static size_t expected_file_size(kiln_format format, kiln_dtype dtype, size_t n, size_t d) {
    const size_t es = dtype_size(dtype);
    switch (format) {
    case KILN_FORMAT_FVECS:
    case KILN_FORMAT_BVECS:
    case KILN_FORMAT_IVECS: return n * (4 + d * es);
    case KILN_FORMAT_FBIN:
    case KILN_FORMAT_U8BIN:
    case KILN_FORMAT_I8BIN: return 8 + n * d * es;
    default: return 0; /* npy: checked separately */
    }
}

static void check_contents(const kiln_dataset *ds, kiln_dtype dtype, size_t n, size_t d) {
    float *f = malloc(n * d * sizeof *f + 1);
    int32_t *x = malloc(n * d * sizeof *x + 1);
    REQUIRE(f && x);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, n, f));
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++)
            wrong += f[i * d + j] != expected_value(dtype, i, j);
    CHECK_MSG(wrong == 0, "%zu of %zu values differ (%s, n %zu, d %zu)", wrong, n * d,
              kiln_dtype_name(dtype), n, d);
    if (n > 1) {
        /* A slice starts at the right row. */
        CHECK_OK(ctx, kiln_dataset_read_f32(ds, n - 1, 1, f));
        CHECK(f[0] == expected_value(dtype, n - 1, 0));
        CHECK(f[d - 1] == expected_value(dtype, n - 1, d - 1));
    }
    if (dtype == KILN_DTYPE_F32) {
        CHECK_FAILS(ctx, kiln_dataset_read_i32(ds, 0, n, x), KILN_E_ARG, "cannot be read as int32");
    } else {
        CHECK_OK(ctx, kiln_dataset_read_i32(ds, 0, n, x));
        wrong = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < d; j++)
                wrong += (float)x[i * d + j] != expected_value(dtype, i, j);
        CHECK_MSG(wrong == 0, "read_i32: %zu of %zu values differ (%s)", wrong, n * d,
                  kiln_dtype_name(dtype));
    }
    free(f);
    free(x);
}

static void round_trip(combo c, size_t n, size_t d) {
    char path[PATH_CAP], name[64];
    snprintf(name, sizeof name, "rt.%s", kiln_format_name(c.format));
    tmp_path(path, name);
    void *data = make_data(c.dtype, n, d);
    CHECK_OK(ctx, kiln_dataset_write(ctx, path, c.format, c.dtype, data, n, d));
    free(data);

    struct stat st;
    REQUIRE(stat(path, &st) == 0);
    const size_t bytes = n * d * dtype_size(c.dtype);
    if (c.format == KILN_FORMAT_NPY) {
        /* The header is padded so the data starts on a 64-byte boundary. */
        const size_t header = (size_t)st.st_size - bytes;
        CHECK_MSG(header % 64 == 0, "npy header of %zu bytes", header);
        FILE *fp = fopen(path, "rb");
        REQUIRE(fp != NULL);
        REQUIRE(fseek(fp, (long)header - 1, SEEK_SET) == 0);
        CHECK(fgetc(fp) == '\n');
        fclose(fp);
    } else {
        CHECK((size_t)st.st_size == expected_file_size(c.format, c.dtype, n, d));
    }

    /* Named explicitly, and found by AUTO from the extension. */
    const kiln_format how[2] = {c.format, KILN_FORMAT_AUTO};
    for (int k = 0; k < 2; k++) {
        kiln_dataset *ds = NULL;
        CHECK_OK(ctx, kiln_dataset_open(ctx, path, how[k], 0, &ds));
        if (!ds)
            continue;
        CHECK(kiln_dataset_count(ds) == n);
        CHECK(kiln_dataset_dim(ds) == d);
        CHECK(kiln_dataset_dtype(ds) == c.dtype);
        CHECK(kiln_dataset_format(ds) == c.format);
        check_contents(ds, c.dtype, n, d);
        kiln_dataset_free(ds);
    }
    unlink(path);
}

static void test_round_trips(void) {
    static const size_t shapes[][2] = {{1, 1}, {1, 1000}, {13, 1}, {9, 1000}, {100, 32}};
    for (size_t i = 0; i < sizeof combos / sizeof combos[0]; i++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            round_trip(combos[i], shapes[s][0], shapes[s][1]);

    /* n = 0 is a valid, empty big-ann or npy dataset. */
    const kiln_format empty_ok[] = {KILN_FORMAT_FBIN, KILN_FORMAT_NPY};
    for (size_t k = 0; k < 2; k++) {
        char path[PATH_CAP];
        tmp_path(path, k == 0 ? "empty.fbin" : "empty.npy");
        CHECK_OK(ctx, kiln_dataset_write(ctx, path, empty_ok[k], KILN_DTYPE_F32, NULL, 0, 5));
        kiln_dataset *ds = NULL;
        CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds));
        CHECK(kiln_dataset_count(ds) == 0 && kiln_dataset_dim(ds) == 5);
        float f[5];
        CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 0, f));
        CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 0, 1, f), KILN_E_RANGE, "out of range");
        kiln_dataset_free(ds);
        unlink(path);
    }
}

/* The write side's own refusals, and AUTO on write. */
static void test_write_errors(void) {
    char path[PATH_CAP];
    tmp_path(path, "w.fvecs");
    const float f[4] = {1, 2, 3, 4};
    CHECK_FAILS(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_FVECS, KILN_DTYPE_U8, f, 1, 4),
                KILN_E_ARG, "format fvecs holds float32, not uint8");
    CHECK_FAILS(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_I8BIN, KILN_DTYPE_F32, f, 1, 4),
                KILN_E_ARG, "format i8bin holds int8, not float32");
    CHECK_FAILS(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_IVECS, KILN_DTYPE_F32, f, 1, 4),
                KILN_E_ARG, "holds int32");
    CHECK_FAILS(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_NPY, (kiln_dtype)9, f, 1, 4),
                KILN_E_ARG, "not a kiln_dtype");
    CHECK_FAILS(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_FVECS, KILN_DTYPE_F32, f, 1, 0),
                KILN_E_ARG, "dimension 0");
    CHECK_FAILS(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_FVECS, KILN_DTYPE_F32, NULL, 1, 4),
                KILN_E_ARG, "data is NULL");
    CHECK_FAILS(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_FVECS, KILN_DTYPE_F32, f, 1, 70000),
                KILN_E_RANGE, "exceeds the limit 65536");
    CHECK_FAILS(ctx,
                kiln_dataset_write(ctx, path, KILN_FORMAT_NPY, KILN_DTYPE_F32, f, SIZE_MAX / 2, 4),
                KILN_E_RANGE, "overflow");
    CHECK(access(path, F_OK) != 0);

    char bad[PATH_CAP];
    tmp_path(bad, "w.bin");
    CHECK_FAILS(ctx, kiln_dataset_write(ctx, bad, KILN_FORMAT_AUTO, KILN_DTYPE_F32, f, 1, 4),
                KILN_E_ARG, "--format");

    /* A folder that does not exist: KILN_E_IO, and no file left behind. */
    char missing[PATH_CAP];
    tmp_path(missing, "no_such_dir/x.fbin");
    CHECK_FAILS(ctx, kiln_dataset_write(ctx, missing, KILN_FORMAT_AUTO, KILN_DTYPE_F32, f, 1, 4),
                KILN_E_IO, "No such file or directory");
    CHECK(access(missing, F_OK) != 0);

    /* AUTO on write goes by the extension, and the result reads back. */
    tmp_path(path, "w.FBIN");
    CHECK_OK(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_AUTO, KILN_DTYPE_F32, f, 2, 2));
    kiln_dataset *ds = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds));
    CHECK(kiln_dataset_format(ds) == KILN_FORMAT_FBIN && kiln_dataset_count(ds) == 2);
    kiln_dataset_free(ds);

    /* Overwriting replaces the old contents whole. */
    CHECK_OK(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_AUTO, KILN_DTYPE_F32, f, 1, 3));
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds));
    CHECK(kiln_dataset_count(ds) == 1 && kiln_dataset_dim(ds) == 3);
    kiln_dataset_free(ds);
    unlink(path);
}

/* ==== Open: arguments, AUTO, files that are not there ==== */

static void test_open_errors(void) {
    kiln_dataset *ds = (kiln_dataset *)&ds; /* must come back NULL */
    char path[PATH_CAP];

    tmp_path(path, "data.bin");
    write_bytes(path, "12345678", 8);
    CHECK_FAILS(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds), KILN_E_ARG,
                "unknown file extension \".bin\"; name the format with --format "
                "fvecs|bvecs|ivecs|fbin|u8bin|i8bin|npy");
    CHECK(ds == NULL);
    CHECK(msg_starts_with(path));
    unlink(path);

    tmp_path(path, "noext");
    CHECK_FAILS(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds), KILN_E_ARG,
                "--format");

    tmp_path(path, "absent.fvecs");
    CHECK_FAILS(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds), KILN_E_IO,
                "No such file or directory");
    CHECK(msg_starts_with(path));
    CHECK(ds == NULL);

    CHECK_FAILS(ctx, kiln_dataset_open(ctx, tmp_dir, KILN_FORMAT_FVECS, 0, &ds), KILN_E_IO,
                "not a regular file");

    tmp_path(path, "flags.fbin");
    CHECK_FAILS(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_FBIN, 0x80, &ds), KILN_E_ARG,
                "unknown open flags");
    CHECK_FAILS(ctx, kiln_dataset_open(ctx, path, (kiln_format)42, 0, &ds), KILN_E_ARG,
                "not a kiln_format");
    CHECK(kiln_dataset_open(ctx, NULL, KILN_FORMAT_FBIN, 0, &ds) == KILN_E_ARG);
    CHECK(kiln_dataset_open(ctx, path, KILN_FORMAT_FBIN, 0, NULL) == KILN_E_ARG);

    /* An empty file is an error in every format. */
    static const kiln_format all[] = {KILN_FORMAT_FVECS, KILN_FORMAT_BVECS, KILN_FORMAT_IVECS,
                                      KILN_FORMAT_FBIN,  KILN_FORMAT_U8BIN, KILN_FORMAT_I8BIN,
                                      KILN_FORMAT_NPY};
    tmp_path(path, "empty.dat");
    write_bytes(path, "", 0);
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        CHECK_FAILS(ctx, kiln_dataset_open(ctx, path, all[i], 0, &ds), KILN_E_FORMAT, "empty file");
    unlink(path);

    /* NULL tolerance of the inspectors. */
    kiln_dataset_free(NULL);
    CHECK(kiln_dataset_count(NULL) == 0 && kiln_dataset_dim(NULL) == 0);
}

/* ==== Malformed texmex ==== */

/* n records of dimension d (d as written: dims[i] when dims is given). */
static size_t make_fvecs(uint8_t *buf, size_t n, int32_t d, const int32_t *dims) {
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        put_le32(buf + off, (uint32_t)(dims ? dims[i] : d));
        off += 4;
        for (int32_t j = 0; j < d; j++, off += 4)
            put_f32(buf + off, (float)(i * 10 + (size_t)j));
    }
    return off;
}

static void expect_open_fails(const char *name, const void *bytes, size_t len, kiln_format format,
                              kiln_status status, const char *needle) {
    char path[PATH_CAP];
    tmp_path(path, name);
    write_bytes(path, bytes, len);
    kiln_dataset *ds = NULL;
    CHECK_FAILS(ctx, kiln_dataset_open(ctx, path, format, 0, &ds), status, needle);
    CHECK(ds == NULL);
    CHECK_MSG(msg_starts_with(path), "message does not start with the path: %s", kiln_errmsg(ctx));
    unlink(path);
}

static void test_bad_texmex(void) {
    uint8_t buf[4096];

    /* 3 whole records of 20 bytes, then 10 bytes of a fourth. */
    size_t len = make_fvecs(buf, 4, 4, NULL);
    expect_open_fails("trunc.fvecs", buf, len - 10, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "truncated: record 3 at byte offset 60 needs 20 bytes, 10 left");
    expect_open_fails("trunc2.fvecs", buf, 2, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "truncated: record 0 at byte offset 0 needs 4 bytes, 2 left");

    const int32_t dims[4] = {4, 4, 5, 4};
    len = make_fvecs(buf, 4, 4, dims);
    expect_open_fails("incons.fvecs", buf, len, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "inconsistent dimension: record 2 at byte offset 40 has d = 5, record 0 "
                      "has d = 4");
    /* The same defect in a partial last record is named as such too. */
    expect_open_fails("incons2.fvecs", buf, 48, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "inconsistent dimension: record 2 at byte offset 40 has d = 5");

    len = make_fvecs(buf, 1, 4, (const int32_t[]){0});
    expect_open_fails("d0.fvecs", buf, len, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "record 0 at byte offset 0: dimension 0 is not positive");
    len = make_fvecs(buf, 1, 4, (const int32_t[]){-1});
    expect_open_fails("dneg.ivecs", buf, len, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "dimension -1 is not positive");
    put_le32(buf, 70000);
    expect_open_fails("dbig.bvecs", buf, 16, KILN_FORMAT_AUTO, KILN_E_RANGE,
                      "dimension 70000 exceeds the limit 65536");

    /* bvecs records are 4 + d bytes: d = 3 gives 7-byte records. */
    uint8_t b[32] = {0};
    for (int i = 0; i < 3; i++)
        put_le32(b + 7 * i, 3);
    expect_open_fails("trunc.bvecs", b, 19, KILN_FORMAT_BVECS, KILN_E_FORMAT,
                      "truncated: record 2 at byte offset 14 needs 7 bytes, 5 left");
}

/* ==== Malformed big-ann ==== */

static void test_bad_bigann(void) {
    uint8_t buf[256] = {0};
    put_le32(buf, 3);
    put_le32(buf + 4, 4);
    expect_open_fails("short.fbin", buf, 8 + 2 * 16, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "size mismatch: header n = 3, d = 4 needs 56 bytes (8 + 48), file has 40 "
                      "(truncated)");
    expect_open_fails("long.fbin", buf, 8 + 3 * 16 + 1, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "file has 57 (trailing bytes)");
    expect_open_fails("short.u8bin", buf, 8 + 11, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "needs 20 bytes (8 + 12), file has 19");

    put_le32(buf, 0xFFFFFFFFu);
    put_le32(buf + 4, 0xFFFFFFFFu);
    expect_open_fails("ovf.fbin", buf, 64, KILN_FORMAT_AUTO, KILN_E_RANGE,
                      "header n = 4294967295, d = 4294967295: n * d * 4 bytes overflows");
    expect_open_fails("ovf.i8bin", buf, 64, KILN_FORMAT_AUTO, KILN_E_RANGE,
                      "dimension 4294967295 exceeds the limit 65536");

    put_le32(buf, 5);
    put_le32(buf + 4, 0);
    expect_open_fails("d0.fbin", buf, 8, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "header has dimension 0 (n = 5)");
    expect_open_fails("hdr.fbin", buf, 7, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "truncated header: needs 8 bytes");

    /* n = 0, d > 0: a valid empty dataset. */
    char path[PATH_CAP];
    tmp_path(path, "n0.u8bin");
    put_le32(buf, 0);
    put_le32(buf + 4, 7);
    write_bytes(path, buf, 8);
    kiln_dataset *ds = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds));
    CHECK(kiln_dataset_count(ds) == 0 && kiln_dataset_dim(ds) == 7);
    CHECK(kiln_dataset_dtype(ds) == KILN_DTYPE_U8);
    kiln_dataset_free(ds);
    unlink(path);
}

/* ==== npy ==== */

/* An npy file: preamble for version major.0, the dict text, then (when pad)
 * spaces to a 64-byte boundary and '\n', then data. Returns its length. */
static size_t make_npy(uint8_t *out, int major, const char *dict, bool pad, const void *data,
                       size_t data_len) {
    const size_t pre = major == 1 ? 10 : 12;
    size_t hlen = strlen(dict);
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (uint8_t)major;
    out[7] = 0;
    memcpy(out + pre, dict, hlen);
    if (pad) {
        while ((pre + hlen + 1) % 64)
            out[pre + hlen++] = ' ';
        out[pre + hlen++] = '\n';
    }
    if (major == 1) {
        out[8] = (uint8_t)(hlen & 0xff);
        out[9] = (uint8_t)(hlen >> 8);
    } else {
        put_le32(out + 8, (uint32_t)hlen);
    }
    memcpy(out + pre + hlen, data, data_len);
    return pre + hlen + data_len;
}

/* Opens an npy built from the arguments and checks shape, dtype, first and
 * last element against data. */
static void expect_npy_ok(int major, const char *dict, const void *data, size_t n, size_t d,
                          kiln_dtype dtype) {
    uint8_t buf[1024];
    char path[PATH_CAP];
    tmp_path(path, "ok.npy");
    const size_t es = dtype_size(dtype);
    write_bytes(path, buf, make_npy(buf, major, dict, true, data, n * d * es));
    kiln_dataset *ds = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds));
    if (ds) {
        CHECK_MSG(kiln_dataset_count(ds) == n && kiln_dataset_dim(ds) == d, "%s", dict);
        CHECK_MSG(kiln_dataset_dtype(ds) == dtype, "%s", dict);
        float f[64];
        REQUIRE(n * d <= 64);
        CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, n, f));
        CHECK_MSG(f[0] == expected_value(dtype, 0, 0), "%s", dict);
        CHECK_MSG(f[n * d - 1] == expected_value(dtype, n - 1, d - 1), "%s", dict);
    }
    kiln_dataset_free(ds);
    unlink(path);
}

static void expect_npy_fails(int major, const char *dict, bool pad, const void *data,
                             size_t data_len, kiln_status status, const char *needle) {
    uint8_t buf[1024];
    expect_open_fails("bad.npy", buf, make_npy(buf, major, dict, pad, data, data_len),
                      KILN_FORMAT_AUTO, status, needle);
}

static void test_npy(void) {
    void *f4 = make_data(KILN_DTYPE_F32, 3, 4);
    void *u1 = make_data(KILN_DTYPE_U8, 3, 4);
    void *i1 = make_data(KILN_DTYPE_I8, 3, 4);
    void *i4 = make_data(KILN_DTYPE_I32, 3, 4);

    /* Accepted spellings: versions 1-3, key order, quotes, spacing, commas,
     * Python 2 long suffixes, either byte-order mark on one-byte types. */
    expect_npy_ok(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", f4, 3, 4,
                  KILN_DTYPE_F32);
    expect_npy_ok(2, "{'shape': (3, 4), 'fortran_order': False, 'descr': '<f4'}", f4, 3, 4,
                  KILN_DTYPE_F32);
    expect_npy_ok(3, "{\"fortran_order\":False,\"shape\":(3,4,),\"descr\":\"<i4\",}", i4, 3, 4,
                  KILN_DTYPE_I32);
    expect_npy_ok(1, "  {  'descr' : '|u1' , 'shape' : ( 3L , 4L ) , 'fortran_order' : False }", u1,
                  3, 4, KILN_DTYPE_U8);
    expect_npy_ok(1, "{'descr': '<u1', 'fortran_order': False, 'shape': (3, 4)}", u1, 3, 4,
                  KILN_DTYPE_U8);
    expect_npy_ok(1, "{'descr': '|i1', 'fortran_order': False, 'shape': (3, 4)}", i1, 3, 4,
                  KILN_DTYPE_I8);
    expect_npy_ok(1, "{'descr': '<i1', 'fortran_order': False, 'shape': (3, 4)}", i1, 3, 4,
                  KILN_DTYPE_I8);

    const size_t fb = 3 * 4 * 4;
    uint8_t bad_magic[80];
    memcpy(bad_magic, "\x93NUMPZ\x01\x00", 8);
    memset(bad_magic + 8, ' ', sizeof bad_magic - 8);
    expect_open_fails("magic.npy", bad_magic, sizeof bad_magic, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "not an npy file: bad magic");
    expect_npy_fails(4, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", true, f4, fb,
                     KILN_E_VERSION, "npy version 4.0 at byte offset 6 is not supported");
    expect_npy_fails(1, "{'descr': '>f8', 'fortran_order': False, 'shape': (3, 4), }", true, f4, fb,
                     KILN_E_FORMAT, "unsupported npy dtype '>f8'");
    expect_npy_fails(1, "{'descr': '<c8', 'fortran_order': False, 'shape': (3, 4), }", true, f4, fb,
                     KILN_E_FORMAT, "unsupported npy dtype '<c8'");
    expect_npy_fails(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (3, 4), }", true, f4, fb,
                     KILN_E_FORMAT, "unsupported npy dtype '>f4'");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }", true, f4, fb,
                     KILN_E_FORMAT, "Fortran order");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2, 2), }", true, f4,
                     fb, KILN_E_FORMAT, "npy array is 3-D; kiln needs a 2-D array (n, d)");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (12,), }", true, f4, fb,
                     KILN_E_FORMAT, "npy array is 1-D");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", true, f4, fb,
                     KILN_E_FORMAT, "npy array is 0-D");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 0), }", true, f4, 0,
                     KILN_E_FORMAT, "has dimension 0");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 70000), }", true, f4,
                     fb, KILN_E_RANGE, "dimension 70000 exceeds the limit 65536");
    expect_npy_fails(1,
                     "{'descr': '<f4', 'fortran_order': False, "
                     "'shape': (18446744073709551615, 4), }",
                     true, f4, fb, KILN_E_RANGE, "overflows");
    expect_npy_fails(1,
                     "{'descr': '<f4', 'fortran_order': False, "
                     "'shape': (99999999999999999999, 4), }",
                     true, f4, fb, KILN_E_RANGE, "integer too large");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", true, f4,
                     fb - 1, KILN_E_FORMAT, "(truncated)");
    uint8_t f4_long[64] = {0}; /* the data and 4 bytes more */
    memcpy(f4_long, f4, fb);
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", true,
                     f4_long, fb + 4, KILN_E_FORMAT, "(trailing bytes)");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), 'x': 1}", true,
                     f4, fb, KILN_E_FORMAT, "unexpected key 'x'");
    expect_npy_fails(1, "{'descr': '<f4', 'shape': (3, 4), 'descr': '<f4'}", true, f4, fb,
                     KILN_E_FORMAT, "key 'descr' repeated");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': False}", true, f4, fb, KILN_E_FORMAT,
                     "lacks the 'shape' key");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': false, 'shape': (3, 4)}", true, f4, fb,
                     KILN_E_FORMAT, "expected True or False");
    expect_npy_fails(1, "{'descr': '<f4' 'fortran_order': False, 'shape': (3, 4)}", true, f4, fb,
                     KILN_E_FORMAT, "expected ',' or '}' after a value at byte offset 26");
    expect_npy_fails(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4)} junk", true, f4,
                     fb, KILN_E_FORMAT, "unexpected text after the dictionary");
    expect_npy_fails(1, "{'descr': '<f4, 'fortran_order': False, 'shape': (3, 4)}", true, f4, fb,
                     KILN_E_FORMAT, "npy header");
    /* An unpadded 51-byte dict puts <f4 data at byte offset 61. */
    expect_npy_fails(1, "{'descr':'<f4','fortran_order':False,'shape':(3,4)}", false, f4, fb,
                     KILN_E_FORMAT, "is not aligned to its 4-byte elements");

    /* A header length running past the end of the file. */
    uint8_t hdr[16];
    memcpy(hdr, "\x93NUMPY\x01\x00\xff\x00{}", 12);
    expect_open_fails("hlen.npy", hdr, 12, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "truncated npy header: needs 255 bytes at byte offset 10, 2 left");
    expect_open_fails("pre.npy", hdr, 9, KILN_FORMAT_AUTO, KILN_E_FORMAT, "truncated npy preamble");

    free(f4);
    free(u1);
    free(i1);
    free(i4);
}

/* ==== Wide and narrow npy types (converted on read) ==== */

/* Writes an npy of the given descr and shape (3, 4) holding data; returns
 * the byte offset of the data. */
static size_t write_npy(const char *path, const char *descr, const void *data, size_t len) {
    uint8_t buf[1024];
    char dict[128];
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (3, 4), }",
             descr);
    REQUIRE(len <= 800);
    const size_t total = make_npy(buf, 1, dict, true, data, len);
    write_bytes(path, buf, total);
    return total - len;
}

/* The message read_*: "<what>: record R, component C, byte offset O" for
 * element e of a (3, 4) array of es-byte elements at data offset off. */
static const char *where(const char *what, size_t off, size_t es, size_t e) {
    static char buf[256];
    snprintf(buf, sizeof buf, "%s: record %zu, component %zu, byte offset %zu", what, e / 4, e % 4,
             off + e * es);
    return buf;
}

static kiln_dataset *open_ok(const char *path, unsigned flags, kiln_dtype dtype) {
    kiln_dataset *ds = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, flags, &ds));
    REQUIRE(ds);
    CHECK(kiln_dataset_count(ds) == 3 && kiln_dataset_dim(ds) == 4);
    CHECK_MSG(kiln_dataset_dtype(ds) == dtype, "dtype %s", kiln_dtype_name(kiln_dataset_dtype(ds)));
    return ds;
}

static void test_npy_f64(void) {
    char path[PATH_CAP];
    tmp_path(path, "f8.npy");
    double v[12];
    float want[12], got[12];
    int32_t x[12];
    for (int i = 0; i < 12; i++) {
        v[i] = (i - 5) * 0.375 + (i == 7 ? 1e-40 : 0) + (i == 3 ? 1e30 : 0);
        want[i] = (float)v[i];
    }
    const size_t off = write_npy(path, "<f8", v, sizeof v);
    kiln_dataset *ds = open_ok(path, 0, KILN_DTYPE_F64);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 3, got));
    CHECK(memcmp(got, want, sizeof got) == 0);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 2, 1, got));
    CHECK(memcmp(got, want + 8, 4 * sizeof *got) == 0);
    CHECK_FAILS(ctx, kiln_dataset_read_i32(ds, 0, 3, x), KILN_E_ARG, "cannot be read as int32");
    kiln_dataset_free(ds);
    /* The writer keeps the type: the same values come back. */
    char wpath[PATH_CAP];
    tmp_path(wpath, "w8.npy");
    CHECK_OK(ctx, kiln_dataset_write(ctx, wpath, KILN_FORMAT_NPY, KILN_DTYPE_F64, v, 3, 4));
    ds = open_ok(wpath, 0, KILN_DTYPE_F64);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 3, got));
    CHECK(memcmp(got, want, sizeof got) == 0);
    kiln_dataset_free(ds);
    unlink(wpath);
    CHECK_FAILS(ctx, kiln_dataset_write(ctx, wpath, KILN_FORMAT_FBIN, KILN_DTYPE_F64, v, 3, 4),
                KILN_E_ARG, "holds float32, not float64");
    /* Too large for float32: refused even where non-finite values are
     * allowed, since it is not what the file says. */
    v[6] = -1e300;
    write_npy(path, "<f8", v, sizeof v);
    for (unsigned flags = 0; flags <= KILN_OPEN_ALLOW_NONFINITE; flags++) {
        ds = open_ok(path, flags, KILN_DTYPE_F64);
        CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 0, 3, got), KILN_E_RANGE,
                    where("float64 value -1e+300 is outside the float32 range", off, 8, 6));
        CHECK_OK(ctx, kiln_dataset_read_f32(ds, 2, 1, got));
        kiln_dataset_free(ds);
    }
    /* NaN and infinity: non-finite, refused unless allowed. */
    v[6] = NAN;
    v[11] = -INFINITY;
    write_npy(path, "<f8", v, sizeof v);
    ds = open_ok(path, 0, KILN_DTYPE_F64);
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 0, 3, got), KILN_E_FORMAT,
                where("non-finite value nan", off, 8, 6));
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 2, 1, got), KILN_E_FORMAT,
                where("non-finite value -inf", off, 8, 11));
    kiln_dataset_free(ds);
    ds = open_ok(path, KILN_OPEN_ALLOW_NONFINITE, KILN_DTYPE_F64);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 3, got));
    CHECK(isnan(got[6]) && isinf(got[11]) && got[11] < 0);
    kiln_dataset_free(ds);
    unlink(path);
    /* Truncated by one byte, or by a whole element. */
    char msg[128];
    snprintf(msg, sizeof msg, "needs %zu bytes (%zu + 96), file has %zu", off + 96, off, off + 95);
    expect_npy_fails(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", true, v,
                     sizeof v - 1, KILN_E_FORMAT, msg);
    expect_npy_fails(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }", true, v,
                     sizeof v - 8, KILN_E_FORMAT, "(truncated)");
}

static void test_npy_f16(void) {
    /* 1, -2, 1/3 rounded, the smallest subnormal, the largest finite, -0,
     * 0.5 + one ulp, a larger subnormal, -65504, 2^-14, 1024, 0. */
    static const uint16_t h[12] = {0x3c00, 0xc000, 0x3555, 0x0001, 0x7bff, 0x8000,
                                   0x3801, 0x03ff, 0xfbff, 0x0400, 0x6400, 0x0000};
    static const float want[12] = {1.0f,
                                   -2.0f,
                                   0.333251953125f,
                                   5.9604644775390625e-08f,
                                   65504.0f,
                                   -0.0f,
                                   0.500488281250f,
                                   6.0975551605224609375e-05f,
                                   -65504.0f,
                                   6.103515625e-05f,
                                   1024.0f,
                                   0.0f};
    char path[PATH_CAP];
    tmp_path(path, "f2.npy");
    const size_t off = write_npy(path, "<f2", h, sizeof h);
    float got[12];
    kiln_dataset *ds = open_ok(path, 0, KILN_DTYPE_F16);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 3, got));
    size_t wrong = 0;
    for (int i = 0; i < 12; i++)
        if (memcmp(&got[i], &want[i], sizeof got[i]) != 0) {
            wrong++;
            fprintf(stderr, "float16 0x%04x: got %.10g, want %.10g\n", h[i], (double)got[i],
                    (double)want[i]);
        }
    CHECK(wrong == 0);
    kiln_dataset_free(ds);
    /* Infinity and NaN in float16 are non-finite. */
    uint16_t bad[12];
    memcpy(bad, h, sizeof bad);
    bad[5] = 0x7c00;
    bad[9] = 0x7e00;
    write_npy(path, "<f2", bad, sizeof bad);
    ds = open_ok(path, 0, KILN_DTYPE_F16);
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 0, 3, got), KILN_E_FORMAT,
                where("non-finite value inf", off, 2, 5));
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 2, 1, got), KILN_E_FORMAT,
                where("non-finite value nan", off, 2, 9));
    kiln_dataset_free(ds);
    ds = open_ok(path, KILN_OPEN_ALLOW_NONFINITE, KILN_DTYPE_F16);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 3, got));
    CHECK(isinf(got[5]) && got[5] > 0 && isnan(got[9]));
    kiln_dataset_free(ds);
    unlink(path);
    char msg[128];
    snprintf(msg, sizeof msg, "needs %zu bytes (%zu + 24), file has %zu", off + 24, off, off + 23);
    expect_npy_fails(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (3, 4), }", true, h,
                     sizeof h - 1, KILN_E_FORMAT, msg);
}

static void test_npy_i64(void) {
    int64_t ids[12];
    for (int i = 0; i < 12; i++)
        ids[i] = (int64_t)i * 1000003 - 7;
    ids[4] = INT32_MAX;
    ids[5] = INT32_MIN;
    char path[PATH_CAP];
    tmp_path(path, "i8.npy");
    const size_t off = write_npy(path, "<i8", ids, sizeof ids);
    int32_t x[12];
    float f[12];
    kiln_dataset *ds = open_ok(path, 0, KILN_DTYPE_I64);
    CHECK_OK(ctx, kiln_dataset_read_i32(ds, 0, 3, x));
    size_t wrong = 0;
    for (int i = 0; i < 12; i++)
        wrong += x[i] != ids[i];
    CHECK(wrong == 0);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 3, f));
    CHECK(f[1] == (float)ids[1] && f[11] == (float)ids[11]);
    kiln_dataset_free(ds);
    /* An id past int32: named, for reading as int32 only. */
    ids[10] = (int64_t)INT32_MAX + 1;
    ids[3] = INT64_MIN;
    write_npy(path, "<i8", ids, sizeof ids);
    ds = open_ok(path, 0, KILN_DTYPE_I64);
    CHECK_FAILS(ctx, kiln_dataset_read_i32(ds, 0, 3, x), KILN_E_RANGE,
                where("int64 value -9223372036854775808 does not fit int32", off, 8, 3));
    CHECK_FAILS(ctx, kiln_dataset_read_i32(ds, 1, 2, x), KILN_E_RANGE,
                where("int64 value 2147483648 does not fit int32", off, 8, 10));
    CHECK_OK(ctx, kiln_dataset_read_i32(ds, 1, 1, x));
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 3, f));
    kiln_dataset_free(ds);
    unlink(path);
    expect_npy_fails(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (3, 4), }", true, ids,
                     sizeof ids - 3, KILN_E_FORMAT, "(truncated)");
    expect_npy_fails(1, "{'descr': '>i8', 'fortran_order': False, 'shape': (3, 4), }", true, ids,
                     sizeof ids, KILN_E_FORMAT, "unsupported npy dtype '>i8'");
}

/* ==== big-ann ground truth (.ibin) ==== */

/* n, k, n*k int32 ids and, with dists, n*k float32 distances. */
static size_t make_gt(uint8_t *buf, uint32_t n, uint32_t k, bool dists) {
    put_le32(buf, n);
    put_le32(buf + 4, k);
    size_t off = 8;
    for (uint32_t i = 0; i < n * k; i++, off += 4)
        put_le32(buf + off, i * 7919u % 100000u);
    for (uint32_t i = 0; dists && i < n * k; i++, off += 4)
        put_f32(buf + off, (float)i * 0.25f);
    return off;
}

static void test_gt_bin(void) {
    uint8_t buf[1024];
    char path[PATH_CAP];
    int32_t x[40];
    /* With distances and without; found by .gt, .ibin or a groundtruth
     * name, or named with the format. */
    static const char *const names[] = {"a.gt", "b.ibin", "groundtruth.public.10K.bin",
                                        "GT.10M.bin", "msspacev-gt-10M.bin"};
    for (int variant = 0; variant < 2; variant++)
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            tmp_path(path, names[i]);
            write_bytes(path, buf, make_gt(buf, 5, 8, variant == 0));
            for (int how = 0; how < 2; how++) {
                kiln_dataset *ds = NULL;
                CHECK_OK(ctx, kiln_dataset_open(ctx, path,
                                                how ? KILN_FORMAT_IBIN : KILN_FORMAT_AUTO, 0, &ds));
                if (!ds)
                    continue;
                CHECK(kiln_dataset_count(ds) == 5 && kiln_dataset_dim(ds) == 8);
                CHECK(kiln_dataset_format(ds) == KILN_FORMAT_IBIN);
                CHECK(kiln_dataset_dtype(ds) == KILN_DTYPE_I32);
                CHECK_OK(ctx, kiln_dataset_read_i32(ds, 0, 5, x));
                size_t wrong = 0;
                for (uint32_t j = 0; j < 40; j++)
                    wrong += x[j] != (int32_t)(j * 7919u % 100000u);
                CHECK_MSG(wrong == 0, "%s: %zu ids differ", names[i], wrong);
                CHECK_OK(ctx, kiln_dataset_read_i32(ds, 4, 1, x));
                CHECK(x[0] == (int32_t)(32 * 7919u % 100000u));
                kiln_dataset_free(ds);
            }
            unlink(path);
        }
    /* Other .bin names are not guessed. */
    tmp_path(path, "gtx.vectors.bin");
    write_bytes(path, buf, make_gt(buf, 5, 8, true));
    kiln_dataset *ds = NULL;
    CHECK_FAILS(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds), KILN_E_ARG,
                "unknown file extension \".bin\"");
    unlink(path);
    /* Malformed: every count and size checked before use. */
    const size_t full = make_gt(buf, 5, 8, true);
    expect_open_fails("short.gt", buf, 7, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "truncated header: needs 8 bytes (uint32 n, uint32 k), file has 7");
    expect_open_fails("cut.gt", buf, full - 1, KILN_FORMAT_AUTO, KILN_E_FORMAT,
                      "size mismatch: header n = 5, k = 8 needs 328 bytes (ids and distances) or "
                      "168 (ids only), file has 327");
    expect_open_fails("cut2.gt", buf, 100, KILN_FORMAT_AUTO, KILN_E_FORMAT, "file has 100");
    uint8_t big[400];
    memcpy(big, buf, full);
    memset(big + full, 0, sizeof big - full);
    expect_open_fails("long.gt", big, full + 4, KILN_FORMAT_AUTO, KILN_E_FORMAT, "file has 332");
    put_le32(buf + 4, 0);
    expect_open_fails("k0.gt", buf, full, KILN_FORMAT_AUTO, KILN_E_FORMAT, "k = 0");
    put_le32(buf, 0xffffffffu);
    put_le32(buf + 4, 0xffffffffu);
    expect_open_fails("huge.gt", buf, full, KILN_FORMAT_AUTO, KILN_E_RANGE, "overflows");
    put_le32(buf, 1);
    put_le32(buf + 4, 70000);
    expect_open_fails("wide.gt", buf, full, KILN_FORMAT_AUTO, KILN_E_RANGE,
                      "k = 70000 exceeds the limit 65536");
    /* kiln writes ids only (search and groundtruth -o R.ibin): the same
     * layout without the distances, which reads back as written. */
    for (uint32_t i = 0; i < 40; i++)
        x[i] = (int32_t)(i * 31u + 5u);
    tmp_path(path, "w.gt");
    CHECK_OK(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_IBIN, KILN_DTYPE_I32, x, 5, 8));
    kiln_dataset *back = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &back));
    if (back) {
        int32_t y[40] = {0};
        CHECK(kiln_dataset_count(back) == 5 && kiln_dataset_dim(back) == 8);
        CHECK_OK(ctx, kiln_dataset_read_i32(back, 0, 5, y));
        CHECK(memcmp(x, y, sizeof x) == 0);
        kiln_dataset_free(back);
    }
}

/* ==== Non-finite values and row ranges ==== */

static void test_nonfinite(void) {
    char path[PATH_CAP];
    float v[12];
    for (int i = 0; i < 12; i++)
        v[i] = (float)i;
    v[2 * 4 + 1] = NAN;
    float out[12];

    /* fvecs record 2 starts at 40; component 1 is 4 + 4 bytes further. */
    tmp_path(path, "nan.fvecs");
    CHECK_OK(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_FVECS, KILN_DTYPE_F32, v, 3, 4));
    kiln_dataset *ds = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds));
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 0, 3, out), KILN_E_FORMAT,
                "non-finite value nan: record 2, component 1, byte offset 48");
    CHECK(msg_starts_with(path));
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 2, out)); /* rows before it are fine */
    kiln_dataset_free(ds);
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, KILN_OPEN_ALLOW_NONFINITE, &ds));
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 3, out));
    CHECK(isnan(out[9]) && out[8] == 8.0f);
    kiln_dataset_free(ds);
    unlink(path);

    v[9] = 7;
    v[11] = -INFINITY;
    tmp_path(path, "inf.fbin");
    CHECK_OK(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_FBIN, KILN_DTYPE_F32, v, 3, 4));
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds));
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 1, 2, out), KILN_E_FORMAT,
                "non-finite value -inf: record 2, component 3, byte offset 52");
    kiln_dataset_free(ds);
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, KILN_OPEN_ALLOW_NONFINITE, &ds));
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 3, out));
    CHECK(isinf(out[11]) && out[11] < 0);
    kiln_dataset_free(ds);
    unlink(path);

    v[11] = INFINITY;
    tmp_path(path, "inf.npy");
    CHECK_OK(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_NPY, KILN_DTYPE_F32, v, 3, 4));
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds));
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 0, 3, out), KILN_E_FORMAT,
                "non-finite value inf: record 2, component 3, byte offset 172");
    kiln_dataset_free(ds);
    unlink(path);

    /* Above the parallel threshold the first bad value is still the one named. */
    const size_t n = 70000;
    float *big = malloc(n * sizeof *big);
    REQUIRE(big != NULL);
    for (size_t i = 0; i < n; i++)
        big[i] = (float)i;
    big[68000] = NAN;
    big[69999] = INFINITY;
    tmp_path(path, "big.fbin");
    CHECK_OK(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_FBIN, KILN_DTYPE_F32, big, n, 1));
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds));
    float *back = malloc(n * sizeof *back);
    REQUIRE(back != NULL);
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 0, n, back), KILN_E_FORMAT,
                "non-finite value nan: record 68000, component 0, byte offset 272008");
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 68000, back));
    size_t wrong = 0;
    for (size_t i = 0; i < 68000; i++)
        wrong += back[i] != (float)i;
    CHECK(wrong == 0);
    kiln_dataset_free(ds);
    unlink(path);
    free(big);
    free(back);
}

static void test_ranges(void) {
    char path[PATH_CAP];
    tmp_path(path, "range.ivecs");
    const int32_t v[6] = {1, -2, 3, -4, 5, -6};
    CHECK_OK(ctx, kiln_dataset_write(ctx, path, KILN_FORMAT_IVECS, KILN_DTYPE_I32, v, 3, 2));
    kiln_dataset *ds = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds));
    REQUIRE(ds != NULL);
    float f[8];
    int32_t x[8];
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 3, 1, f), KILN_E_RANGE,
                "rows 3..3+1 out of range: the dataset has 3 rows");
    CHECK(msg_starts_with(path));
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 0, 4, f), KILN_E_RANGE, "out of range");
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 4, 0, f), KILN_E_RANGE, "out of range");
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, SIZE_MAX, 2, f), KILN_E_RANGE, "out of range");
    CHECK_FAILS(ctx, kiln_dataset_read_f32(ds, 2, SIZE_MAX, f), KILN_E_RANGE, "out of range");
    CHECK_FAILS(ctx, kiln_dataset_read_i32(ds, 1, 3, x), KILN_E_RANGE, "out of range");
    CHECK_FAILS(ctx, kiln_dataset_read_i32(ds, 0, 1, NULL), KILN_E_ARG, "NULL");
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 3, 0, f));
    CHECK_OK(ctx, kiln_dataset_read_i32(ds, 1, 2, x));
    CHECK(x[0] == 3 && x[1] == -4 && x[2] == 5 && x[3] == -6);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 2, 1, f));
    CHECK(f[0] == 5.0f && f[1] == -6.0f);
    kiln_dataset_free(ds);
    unlink(path);
}

/* ==== Real data ==== */

static void *read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    REQUIRE(fp != NULL);
    REQUIRE(fseek(fp, 0, SEEK_END) == 0);
    const long size = ftell(fp);
    REQUIRE(size > 0);
    rewind(fp);
    void *buf = malloc((size_t)size);
    REQUIRE(buf != NULL);
    REQUIRE(fread(buf, 1, (size_t)size, fp) == (size_t)size);
    fclose(fp);
    *len = (size_t)size;
    return buf;
}

static void test_siftsmall(void) {
    const char *base = "../shared/datasets/siftsmall/siftsmall_base.fvecs";
    const char *gt = "../shared/datasets/siftsmall/siftsmall_groundtruth.ivecs";
    if (access(base, R_OK) != 0 || access(gt, R_OK) != 0) {
        SKIP_PART("../shared/datasets/siftsmall absent, real-data part skipped");
        return;
    }
    kiln_dataset *ds = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, base, KILN_FORMAT_AUTO, 0, &ds));
    REQUIRE(ds != NULL);
    CHECK(kiln_dataset_count(ds) == 10000);
    CHECK(kiln_dataset_dim(ds) == 128);
    CHECK(kiln_dataset_dtype(ds) == KILN_DTYPE_F32);
    CHECK(kiln_dataset_format(ds) == KILN_FORMAT_FVECS);
    float *rows = malloc(10000 * 128 * sizeof *rows);
    REQUIRE(rows != NULL);
    CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, 10000, rows));
    size_t len;
    uint8_t *raw = read_file(base, &len);
    REQUIRE(len == 10000 * (4 + 128 * 4));
    size_t wrong = 0;
    for (size_t i = 0; i < 10000; i++)
        wrong += memcmp(rows + i * 128, raw + i * 516 + 4, 128 * 4) != 0;
    CHECK_MSG(wrong == 0, "%zu of 10000 siftsmall rows differ from fread", wrong);
    float first[4];
    memcpy(first, raw + 4, sizeof first);
    CHECK(rows[0] == first[0] && rows[3] == first[3]);
    free(raw);
    free(rows);
    kiln_dataset_free(ds);

    CHECK_OK(ctx, kiln_dataset_open(ctx, gt, KILN_FORMAT_AUTO, 0, &ds));
    REQUIRE(ds != NULL);
    CHECK(kiln_dataset_count(ds) == 100 && kiln_dataset_dim(ds) == 100);
    CHECK(kiln_dataset_dtype(ds) == KILN_DTYPE_I32);
    int32_t *ids = malloc(100 * 100 * sizeof *ids);
    REQUIRE(ids != NULL);
    CHECK_OK(ctx, kiln_dataset_read_i32(ds, 0, 100, ids));
    raw = read_file(gt, &len);
    REQUIRE(len == 100 * (4 + 100 * 4));
    wrong = 0;
    for (size_t i = 0; i < 100; i++)
        for (size_t j = 0; j < 100; j++) {
            int32_t id;
            memcpy(&id, raw + i * 404 + 4 + j * 4, 4);
            wrong += ids[i * 100 + j] != id || id < 0 || id >= 10000;
        }
    CHECK(wrong == 0);
    free(raw);
    free(ids);
    kiln_dataset_free(ds);
}

int main(void) {
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    setup_tmp();
    test_names();
    test_round_trips();
    test_write_errors();
    test_open_errors();
    test_bad_texmex();
    test_bad_bigann();
    test_npy();
    test_npy_f64();
    test_npy_f16();
    test_npy_i64();
    test_gt_bin();
    test_nonfinite();
    test_ranges();
    test_siftsmall();
    kiln_ctx_free(ctx);
    return check_report("test_dataset");
}
