/* dataset.c -- vector datasets on disk: texmex .fvecs/.bvecs/.ivecs, big-ann
 * .fbin/.u8bin/.i8bin, big-ann ground truth .ibin and NumPy .npy, read
 * through a memory mapping and written atomically.
 *
 * Layouts (every integer little-endian):
 *   texmex  per record: int32 d, then d elements; every record has the same d
 *   big-ann uint32 n, uint32 d, then n*d elements; nothing after them
 *   ibin    big-ann ground truth: uint32 n, uint32 k, n*k int32 ids, then
 *           n*k float32 distances (files without them are accepted too)
 *   npy     "\x93NUMPY", major, minor, header length (uint16 for 1.0, uint32
 *           for 2.0 and 3.0), a Python dict literal with 'descr',
 *           'fortran_order' and 'shape', then the array in C order
 *
 * Design decisions:
 *  1. A dataset is a read-only MAP_PRIVATE mapping of the whole file; rows are
 *     converted into the caller's buffer on demand, so opening a 100 GB file
 *     costs address space, not memory, and nothing is ever copied whole.
 *  2. Everything structural is validated at open, before any row is handed
 *     out: every texmex record's dimension, the exact file size for big-ann
 *     and npy, every size product through kiln_mul_size. After a successful
 *     open, kiln_dataset_row(ds, i) lies inside the mapping for every i < n.
 *  3. Values are checked when read, not at open: the finiteness scan runs
 *     over rows just copied (still in cache), so an open touches one int per
 *     record and a caller who reads a slice pays for that slice only.
 *  4. Header integers are decoded byte by byte (no unaligned loads, any host
 *     byte order); bulk elements are copied as they are, which assumes a
 *     little-endian host, checked at compile time below.
 *  5. The npy header is parsed as the subset of a Python dict literal that
 *     numpy writes (string keys; a string, True/False or a tuple of ints as
 *     values), tolerant of key order, spacing, either quote and trailing
 *     commas, and strict about the rest: unknown or repeated keys, other
 *     dtypes, Fortran order and shapes that are not 2-D are refused by name.
 *  6. The npy data offset must be a multiple of the element size so that
 *     kiln_dataset_row() pointers are aligned for their type. numpy pads its
 *     headers to 16 or 64 bytes, so files it writes always qualify.
 *  7. A file truncated by another process while mapped raises SIGBUS on the
 *     next access to the lost pages; like every mmap reader we accept that
 *     rather than copy the file.
 *  8. npy float64, float16 and int64 are converted on read, like the other
 *     element types, never at open. float16 widens exactly. float64 narrows
 *     with rounding; a finite value beyond float32's range is refused as
 *     KILN_E_RANGE naming its place, whatever KILN_OPEN_ALLOW_NONFINITE says,
 *     since an infinity would not be what the file holds. int64 is meant for
 *     ground-truth ids (numpy's default integer): read_i32 refuses a value
 *     outside int32 by name, read_f32 rounds like any integer, and read_i64
 *     (labels, which are int64) takes every integer type whole. A labels
 *     file is a 1-D array, which only KILN_OPEN_ALLOW_1D opens (as n rows
 *     of 1): elsewhere a 1-D array is a mistake worth naming.
 *  9. big-ann ground truth (ibin): n and k from the header, the ids as an
 *     n x k int32 dataset; the distances that follow are allowed but not
 *     read (kiln compares ids). The file must be exactly ids, or ids and
 *     distances. kiln writes it with the distances whenever it has them
 *     (search and groundtruth -o X.ibin), so its files are big-ann's. AUTO picks it for .ibin and
 * .gt, and for .bin when the name says ground truth ("groundtruth" anywhere, or "gt" as a word),
 *     which is how big-ann-benchmarks names them; other .bin files must be
 *     named with --format, since .bin alone says nothing.
 * 10. float32 rows that lie back to back (fbin, npy <f4) can be handed out
 *     in place (kiln_dataset_map_f32): a second private read-only mapping
 *     of the same open file, which outlives the dataset, so a builder
 *     holds the vectors as page cache instead of copying them (see
 *     graph/hnsw_build.c decision 5). Its rows are checked for non-finite
 *     values once, up front, as reading them would.
 */
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "afile_internal.h"
#include "ctx_internal.h"
#include "dataset_internal.h"
#include "le_internal.h"

#if !defined(__BYTE_ORDER__) || !defined(__ORDER_LITTLE_ENDIAN__)
#error "dataset.c needs the compiler's __BYTE_ORDER__ to check the host byte order"
#elif __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dataset.c copies little-endian file elements as they are: port the bulk copies first"
#endif

/* ==== Tunables ==== */

/* Largest dimension accepted, read or written. Equal to KILN_MAX_DIM in
 * graph/hnsw_internal.h (common/ does not include graph/), so every dataset
 * that opens can also be indexed; it also bounds a texmex record to 256 KiB. */
#define DS_MAX_DIM 65536

/* Rows above which the read functions convert with an OpenMP team. Below it
 * a read is a memory-bound copy of a few MB (16K rows of 128 floats is
 * 8 MB) and waking the team would be a visible share of the cost; above it
 * the copy and the finiteness scan scale with cores, and so does the first
 * touch of the caller's pages (graph/hnsw_index.c decision 4: a build's
 * load reads 64K rows at a time, which the old bound of 64K left serial). */
#define DS_PARALLEL_ROWS 16384

/* Longest npy 'descr' string accepted ("<f4" is 3); anything longer is not a
 * dtype kiln reads, and the bound keeps the copy for the message fixed. */
#define NPY_DESCR_MAX 32

/* Most shape entries parsed before giving up; numpy caps arrays at 64 dims,
 * and we only need to count them to say how many there are. */
#define NPY_MAX_NDIM 64

/* ==== Types ==== */

typedef enum ds_layout { DS_TEXMEX = 1, DS_BIGANN = 2, DS_NPY = 3, DS_GT = 4 } ds_layout;

typedef struct ds_format_info {
    kiln_format format;
    const char *name; /* as kiln_format_name gives it; also the file extension */
    kiln_dtype dtype; /* the element type the format holds; 0 for npy (any) */
    ds_layout layout;
} ds_format_info;

static const ds_format_info ds_formats[] = {
    {KILN_FORMAT_FVECS, "fvecs", KILN_DTYPE_F32, DS_TEXMEX},
    {KILN_FORMAT_BVECS, "bvecs", KILN_DTYPE_U8, DS_TEXMEX},
    {KILN_FORMAT_IVECS, "ivecs", KILN_DTYPE_I32, DS_TEXMEX},
    {KILN_FORMAT_FBIN, "fbin", KILN_DTYPE_F32, DS_BIGANN},
    {KILN_FORMAT_U8BIN, "u8bin", KILN_DTYPE_U8, DS_BIGANN},
    {KILN_FORMAT_I8BIN, "i8bin", KILN_DTYPE_I8, DS_BIGANN},
    {KILN_FORMAT_NPY, "npy", (kiln_dtype)0, DS_NPY},
    {KILN_FORMAT_IBIN, "ibin", KILN_DTYPE_I32, DS_GT},
};

#define DS_FORMAT_LIST "fvecs|bvecs|ivecs|fbin|u8bin|i8bin|npy|ibin"

static const uint8_t npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

/* A read position in the npy header text. */
typedef struct npy_cursor {
    const kiln_dataset *ds; /* for the path and context in messages */
    const uint8_t *text;    /* header text, not NUL-terminated */
    size_t len;             /* bytes of text */
    size_t pos;             /* next byte to read; <= len */
    size_t base;            /* file offset of text[0] */
} npy_cursor;

/* What the npy header says. */
typedef struct npy_header {
    char descr[NPY_DESCR_MAX + 1];
    bool fortran_order;
    uint64_t shape[NPY_MAX_NDIM];
    size_t ndim;
    bool have_descr, have_fortran, have_shape;
} npy_header;

/* ==== Helpers: names, sizes, byte order ==== */

static const ds_format_info *format_info(kiln_format format) {
    for (size_t i = 0; i < sizeof ds_formats / sizeof ds_formats[0]; i++)
        if (ds_formats[i].format == format)
            return &ds_formats[i];
    return NULL;
}

/* Bytes per element; 0 for a value that is not a kiln_dtype. */
static size_t dtype_size(kiln_dtype dtype) {
    switch (dtype) {
    case KILN_DTYPE_F32: return 4;
    case KILN_DTYPE_U8: return 1;
    case KILN_DTYPE_I8: return 1;
    case KILN_DTYPE_I32: return 4;
    case KILN_DTYPE_F64: return 8;
    case KILN_DTYPE_F16: return 2;
    case KILN_DTYPE_I64: return 8;
    }
    return 0;
}

static bool dtype_is_float(kiln_dtype dtype) {
    return dtype == KILN_DTYPE_F32 || dtype == KILN_DTYPE_F64 || dtype == KILN_DTYPE_F16;
}

/* Decision 9: a ".bin" whose name says ground truth: "groundtruth"
 * anywhere, or "gt" as a word of its own ("GT.public.10K.bin",
 * "msspacev-gt-10M.bin"), in any case. */
static bool gt_name(const char *base) {
    for (const char *p = base; *p; p++) {
        if (strncasecmp(p, "groundtruth", 11) == 0)
            return true;
        if (strncasecmp(p, "gt", 2) == 0 && (p == base || !isalnum((unsigned char)p[-1])) &&
            !isalnum((unsigned char)p[2]))
            return true;
    }
    return false;
}

/* Resolves KILN_FORMAT_AUTO from the extension of path's last component. */
static kiln_status format_from_path(kiln_ctx *ctx, const char *path, kiln_format *out) {
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const char *dot = strrchr(base, '.');
    if (!dot || dot[1] == '\0')
        return kiln_fail(ctx, KILN_E_ARG,
                         "%s: no file extension to tell the format by; name the format with "
                         "--format " DS_FORMAT_LIST,
                         path);
    for (size_t i = 0; i < sizeof ds_formats / sizeof ds_formats[0]; i++) {
        if (strcasecmp(dot + 1, ds_formats[i].name) == 0) {
            *out = ds_formats[i].format;
            return KILN_OK;
        }
    }
    if (strcasecmp(dot + 1, "gt") == 0 || (strcasecmp(dot + 1, "bin") == 0 && gt_name(base))) {
        *out = KILN_FORMAT_IBIN;
        return KILN_OK;
    }
    return kiln_fail(
        ctx, KILN_E_ARG,
        "%s: unknown file extension \"%s\"; name the format with --format " DS_FORMAT_LIST, path,
        dot);
}

/* ==== Open: mapping ==== */

static kiln_status ds_map(kiln_dataset *ds) {
    int fd;
    uint64_t size;
    const kiln_status status = kiln_open_regular(ds->ctx, ds->path, &fd, &size);
    if (status != KILN_OK)
        return status;
    if (size == 0) {
        close(fd);
        return kiln_fail(ds->ctx, KILN_E_FORMAT, "%s: empty file", ds->path);
    }
    if (size > SIZE_MAX) {
        close(fd);
        return kiln_fail(ds->ctx, KILN_E_RANGE, "%s: %ju bytes do not fit in the address space",
                         ds->path, (uintmax_t)size);
    }
    const size_t len = (size_t)size;
    void *const map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    const int e = errno;
    if (map == MAP_FAILED) {
        close(fd);
        return kiln_fail(ds->ctx, KILN_E_IO, "%s: cannot map %zu bytes: %s", ds->path, len,
                         strerror(e));
    }
    ds->fd = fd; /* kept for kiln_dataset_map_f32 (decision 10) */
    /* Open validates front to back and builds read rows in order; a failed
     * hint only costs read-ahead, so its result is ignored. */
    (void)madvise(map, len, MADV_SEQUENTIAL);
    ds->map = map;
    ds->map_len = len;
    return KILN_OK;
}

/* ==== Open: texmex ==== */

static kiln_status parse_texmex(kiln_dataset *ds) {
    const size_t size = ds->map_len;
    if (size < 4)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: truncated: record 0 at byte offset 0 needs 4 bytes, %zu left",
                         ds->path, size);
    const uint32_t d_raw = kiln_get_u32le(ds->map);
    const int32_t d = (int32_t)d_raw;
    if (d <= 0)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: record 0 at byte offset 0: dimension %" PRId32 " is not positive",
                         ds->path, d);
    if (d > DS_MAX_DIM)
        return kiln_fail(ds->ctx, KILN_E_RANGE,
                         "%s: record 0 at byte offset 0: dimension %" PRId32
                         " exceeds the limit %d",
                         ds->path, d, DS_MAX_DIM);
    /* d <= DS_MAX_DIM keeps this small; the product itself cannot overflow. */
    const size_t rec = 4 + (size_t)d * ds->elem_size;
    const size_t n = size / rec;
    const size_t tail = size % rec;

    /* Every record's header, so a file spliced from two dimensions is
     * named as such rather than as truncated or silently misread. */
    for (size_t i = 1; i < n; i++) {
        const uint32_t di = kiln_get_u32le(ds->map + i * rec);
        if (di != d_raw)
            return kiln_fail(ds->ctx, KILN_E_FORMAT,
                             "%s: inconsistent dimension: record %zu at byte offset %zu has d = "
                             "%" PRId32 ", record 0 has d = %" PRId32,
                             ds->path, i, i * rec, (int32_t)di, d);
    }
    if (tail != 0) {
        if (tail >= 4 && kiln_get_u32le(ds->map + n * rec) != d_raw)
            return kiln_fail(ds->ctx, KILN_E_FORMAT,
                             "%s: inconsistent dimension: record %zu at byte offset %zu has d = "
                             "%" PRId32 ", record 0 has d = %" PRId32,
                             ds->path, n, n * rec, (int32_t)kiln_get_u32le(ds->map + n * rec), d);
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: truncated: record %zu at byte offset %zu needs %zu bytes, %zu left",
                         ds->path, n, n * rec, rec, tail);
    }
    size_t elems;
    if (kiln_mul_size(n, (size_t)d, &elems))
        return kiln_fail(ds->ctx, KILN_E_RANGE,
                         "%s: %zu records of dimension %" PRId32 " overflow size_t", ds->path, n,
                         d);
    ds->n = n;
    ds->dim = (size_t)d;
    ds->data_offset = 4;
    ds->row_stride = rec;
    return KILN_OK;
}

/* ==== Open: big-ann ==== */

/* big-ann's layout: uint32 n, uint32 d, then n*d elements. Ground truth (gt,
 * format ibin; decision 9) calls d k, and may carry n*k float32 distances
 * after the ids: the one difference, so both share every check. */
static kiln_status parse_bigann(kiln_dataset *ds, bool gt) {
    const size_t size = ds->map_len;
    const char dn = gt ? 'k' : 'd';
    if (size < 8)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: truncated header: needs 8 bytes (uint32 n, uint32 %c), file has %zu",
                         ds->path, dn, size);
    const uint32_t n = kiln_get_u32le(ds->map);
    const uint32_t d = kiln_get_u32le(ds->map + 4);
    if (d == 0)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         gt ? "%s: ground-truth header has k = 0 neighbours (n = %" PRIu32 ")"
                            : "%s: header has dimension 0 (n = %" PRIu32 ")",
                         ds->path, n);
    /* bytes: the elements; total: with the header; more: with gt's float32
     * distances too, as many bytes as its int32 ids */
    size_t elems, bytes, total, more = 0;
    if (kiln_mul_size(n, d, &elems) || kiln_mul_size(elems, ds->elem_size, &bytes) ||
        kiln_add_size(bytes, 8, &total) || (gt && kiln_add_size(total, bytes, &more)))
        return kiln_fail(ds->ctx, KILN_E_RANGE,
                         "%s: header n = %" PRIu32 ", %c = %" PRIu32
                         ": n * %c * %zu bytes overflows size_t",
                         ds->path, n, dn, d, dn, gt ? ds->elem_size + 4 : ds->elem_size);
    if (d > DS_MAX_DIM)
        return kiln_fail(ds->ctx, KILN_E_RANGE,
                         gt ? "%s: ground-truth header k = %" PRIu32 " exceeds the limit %d"
                            : "%s: header dimension %" PRIu32 " exceeds the limit %d",
                         ds->path, d, DS_MAX_DIM);
    if (gt && size != total && size != more)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: size mismatch: header n = %" PRIu32 ", k = %" PRIu32
                         " needs %zu bytes (ids and distances) or %zu (ids only), file has %zu",
                         ds->path, n, d, more, total, size);
    if (!gt && size != total)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: size mismatch: header n = %" PRIu32 ", d = %" PRIu32
                         " needs %zu bytes (8 + %zu), file has %zu (%s)",
                         ds->path, n, d, total, bytes, size,
                         size < total ? "truncated" : "trailing bytes");
    ds->n = n;
    ds->dim = d;
    ds->data_offset = 8;
    ds->row_stride = (size_t)d * ds->elem_size;
    return KILN_OK;
}

/* ==== Open: npy header parser ==== */

static kiln_status npy_error(const npy_cursor *c, const char *what) {
    return kiln_fail(c->ds->ctx, KILN_E_FORMAT, "%s: npy header: %s at byte offset %zu",
                     c->ds->path, what, c->base + c->pos);
}

static void npy_skip_space(npy_cursor *c) {
    while (c->pos < c->len && (c->text[c->pos] == ' ' || c->text[c->pos] == '\t' ||
                               c->text[c->pos] == '\n' || c->text[c->pos] == '\r'))
        c->pos++;
}

/* The next byte, or 0 at the end (the header text holds no NULs we accept). */
static int npy_peek(const npy_cursor *c) { return c->pos < c->len ? c->text[c->pos] : 0; }

static kiln_status npy_expect(npy_cursor *c, char ch, const char *what) {
    if (npy_peek(c) != ch)
        return npy_error(c, what);
    c->pos++;
    return KILN_OK;
}

/* A quoted string without escapes into out (cap bytes with the NUL). */
static kiln_status npy_string(npy_cursor *c, char *out, size_t cap) {
    const int quote = npy_peek(c);
    if (quote != '\'' && quote != '"')
        return npy_error(c, "expected a quoted string");
    c->pos++;
    size_t n = 0;
    for (;;) {
        const int ch = npy_peek(c);
        if (ch == 0)
            return npy_error(c, "unterminated string");
        if (ch == quote)
            break;
        if (ch == '\\' || ch < 0x20 || ch > 0x7e)
            return npy_error(c, "unexpected character in string");
        if (n + 1 >= cap)
            return npy_error(c, "string too long");
        out[n++] = (char)ch;
        c->pos++;
    }
    out[n] = '\0';
    c->pos++;
    return KILN_OK;
}

static kiln_status npy_bool(npy_cursor *c, bool *out) {
    const size_t left = c->len - c->pos;
    if (left >= 4 && memcmp(c->text + c->pos, "True", 4) == 0) {
        *out = true;
        c->pos += 4;
        return KILN_OK;
    }
    if (left >= 5 && memcmp(c->text + c->pos, "False", 5) == 0) {
        *out = false;
        c->pos += 5;
        return KILN_OK;
    }
    return npy_error(c, "expected True or False");
}

/* A non-negative decimal integer, with the 'L' suffix Python 2 numpy wrote. */
static kiln_status npy_uint(npy_cursor *c, uint64_t *out) {
    int ch = npy_peek(c);
    if (ch < '0' || ch > '9')
        return npy_error(c, "expected a non-negative integer");
    uint64_t v = 0;
    while ((ch = npy_peek(c)) >= '0' && ch <= '9') {
        if (v > (UINT64_MAX - (uint64_t)(ch - '0')) / 10)
            return kiln_fail(c->ds->ctx, KILN_E_RANGE,
                             "%s: npy header: integer too large at byte offset %zu", c->ds->path,
                             c->base + c->pos);
        v = v * 10 + (uint64_t)(ch - '0');
        c->pos++;
    }
    if (npy_peek(c) == 'L')
        c->pos++;
    *out = v;
    return KILN_OK;
}

/* "(" [int ("," int)* [","]] ")"; counts every entry, keeps NPY_MAX_NDIM. */
static kiln_status npy_shape(npy_cursor *c, npy_header *h) {
    kiln_status st = npy_expect(c, '(', "expected '(' to open the shape");
    if (st != KILN_OK)
        return st;
    h->ndim = 0;
    npy_skip_space(c);
    while (npy_peek(c) != ')') {
        if (h->ndim == NPY_MAX_NDIM)
            return npy_error(c, "shape has too many dimensions");
        if ((st = npy_uint(c, &h->shape[h->ndim])) != KILN_OK)
            return st;
        h->ndim++;
        npy_skip_space(c);
        if (npy_peek(c) == ',') {
            c->pos++;
            npy_skip_space(c);
        } else if (npy_peek(c) != ')') {
            return npy_error(c, "expected ',' or ')' in the shape");
        }
    }
    c->pos++;
    return KILN_OK;
}

static kiln_status npy_parse_dict(npy_cursor *c, npy_header *h) {
    kiln_status st;
    npy_skip_space(c);
    if ((st = npy_expect(c, '{', "expected '{' to open the dictionary")) != KILN_OK)
        return st;
    for (;;) {
        npy_skip_space(c);
        if (npy_peek(c) == '}')
            break;
        char key[32];
        const size_t key_pos = c->pos;
        if ((st = npy_string(c, key, sizeof key)) != KILN_OK)
            return st;
        npy_skip_space(c);
        if ((st = npy_expect(c, ':', "expected ':' after a key")) != KILN_OK)
            return st;
        npy_skip_space(c);
        bool *seen;
        if (strcmp(key, "descr") == 0) {
            seen = &h->have_descr;
            st = npy_string(c, h->descr, sizeof h->descr);
        } else if (strcmp(key, "fortran_order") == 0) {
            seen = &h->have_fortran;
            st = npy_bool(c, &h->fortran_order);
        } else if (strcmp(key, "shape") == 0) {
            seen = &h->have_shape;
            st = npy_shape(c, h);
        } else {
            return kiln_fail(c->ds->ctx, KILN_E_FORMAT,
                             "%s: npy header: unexpected key '%s' at byte offset %zu", c->ds->path,
                             key, c->base + key_pos);
        }
        if (st != KILN_OK)
            return st;
        if (*seen)
            return kiln_fail(c->ds->ctx, KILN_E_FORMAT,
                             "%s: npy header: key '%s' repeated at byte offset %zu", c->ds->path,
                             key, c->base + key_pos);
        *seen = true;
        npy_skip_space(c);
        if (npy_peek(c) == ',')
            c->pos++;
        else if (npy_peek(c) != '}')
            return npy_error(c, "expected ',' or '}' after a value");
    }
    c->pos++;
    npy_skip_space(c);
    if (c->pos != c->len)
        return npy_error(c, "unexpected text after the dictionary");
    static const char *const keys[] = {"descr", "fortran_order", "shape"};
    const bool have[] = {h->have_descr, h->have_fortran, h->have_shape};
    for (size_t i = 0; i < 3; i++)
        if (!have[i])
            return kiln_fail(c->ds->ctx, KILN_E_FORMAT, "%s: npy header lacks the '%s' key",
                             c->ds->path, keys[i]);
    return KILN_OK;
}

/* The kiln dtype of an npy descr; byte order is irrelevant for one byte. */
static bool npy_dtype(const char *descr, kiln_dtype *out) {
    if (strcmp(descr, "<f4") == 0) {
        *out = KILN_DTYPE_F32;
        return true;
    }
    if (strcmp(descr, "<i4") == 0) {
        *out = KILN_DTYPE_I32;
        return true;
    }
    if (strcmp(descr, "<f8") == 0) {
        *out = KILN_DTYPE_F64;
        return true;
    }
    if (strcmp(descr, "<f2") == 0) {
        *out = KILN_DTYPE_F16;
        return true;
    }
    if (strcmp(descr, "<i8") == 0) {
        *out = KILN_DTYPE_I64;
        return true;
    }
    if (strlen(descr) == 3 && strchr("|<>=", descr[0]) && descr[2] == '1') {
        if (descr[1] == 'u') {
            *out = KILN_DTYPE_U8;
            return true;
        }
        if (descr[1] == 'i') {
            *out = KILN_DTYPE_I8;
            return true;
        }
    }
    return false;
}

/* ==== Open: npy ==== */

static kiln_status parse_npy(kiln_dataset *ds) {
    const size_t size = ds->map_len;
    if (size < sizeof npy_magic || memcmp(ds->map, npy_magic, sizeof npy_magic) != 0)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: not an npy file: bad magic (want \\x93NUMPY at byte offset 0)",
                         ds->path);
    if (size < 10)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: truncated npy preamble: needs 10 bytes, file has %zu", ds->path,
                         size);
    const unsigned major = ds->map[6], minor = ds->map[7];
    size_t hstart, hlen;
    if (major == 1 && minor == 0) {
        hstart = 10;
        hlen = kiln_get_u16le(ds->map + 8);
    } else if ((major == 2 || major == 3) && minor == 0) {
        if (size < 12)
            return kiln_fail(ds->ctx, KILN_E_FORMAT,
                             "%s: truncated npy preamble: needs 12 bytes, file has %zu", ds->path,
                             size);
        hstart = 12;
        hlen = kiln_get_u32le(ds->map + 8);
    } else {
        return kiln_fail(ds->ctx, KILN_E_VERSION,
                         "%s: npy version %u.%u at byte offset 6 is not supported (kiln reads "
                         "1.0, 2.0, 3.0)",
                         ds->path, major, minor);
    }
    if (hlen > size - hstart)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: truncated npy header: needs %zu bytes at byte offset %zu, %zu left",
                         ds->path, hlen, hstart, size - hstart);

    npy_header h;
    memset(&h, 0, sizeof h);
    npy_cursor c = {.ds = ds, .text = ds->map + hstart, .len = hlen, .pos = 0, .base = hstart};
    kiln_status st = npy_parse_dict(&c, &h);
    if (st != KILN_OK)
        return st;

    kiln_dtype dtype;
    if (!npy_dtype(h.descr, &dtype))
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: unsupported npy dtype '%s' (kiln reads '<f4', '<f8', '<f2', '<i4', "
                         "'<i8', '|u1', '|i1')",
                         ds->path, h.descr);
    if (h.fortran_order)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: npy array is in Fortran order; kiln needs C order "
                         "(save np.ascontiguousarray(a))",
                         ds->path);
    if (h.ndim == 1 && (ds->flags & KILN_OPEN_ALLOW_1D)) { /* n values: n rows of 1 */
        h.ndim = 2;
        h.shape[1] = 1;
    }
    if (h.ndim != 2)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: npy array is %zu-D; kiln needs a 2-D array (n, d)", ds->path, h.ndim);
    const uint64_t n = h.shape[0], d = h.shape[1];
    if (d == 0)
        return kiln_fail(ds->ctx, KILN_E_FORMAT, "%s: npy shape (%" PRIu64 ", 0) has dimension 0",
                         ds->path, n);
    ds->dtype = dtype;
    ds->elem_size = dtype_size(dtype);
    const size_t data_offset = hstart + hlen;
    size_t elems, bytes, total;
    if (n > SIZE_MAX || d > SIZE_MAX || kiln_mul_size((size_t)n, (size_t)d, &elems) ||
        kiln_mul_size(elems, ds->elem_size, &bytes) || kiln_add_size(bytes, data_offset, &total))
        return kiln_fail(ds->ctx, KILN_E_RANGE,
                         "%s: npy shape (%" PRIu64 ", %" PRIu64 "): n * d * %zu bytes overflows "
                         "size_t",
                         ds->path, n, d, ds->elem_size);
    if (d > DS_MAX_DIM)
        return kiln_fail(ds->ctx, KILN_E_RANGE,
                         "%s: npy dimension %" PRIu64 " exceeds the limit %d", ds->path, d,
                         DS_MAX_DIM);
    if (data_offset % ds->elem_size != 0)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: npy data at byte offset %zu is not aligned to its %zu-byte elements",
                         ds->path, data_offset, ds->elem_size);
    if (total != size)
        return kiln_fail(ds->ctx, KILN_E_FORMAT,
                         "%s: size mismatch: npy shape (%" PRIu64 ", %" PRIu64
                         ") needs %zu bytes (%zu + %zu), file has %zu (%s)",
                         ds->path, n, d, total, data_offset, bytes, size,
                         size < total ? "truncated" : "trailing bytes");
    ds->n = (size_t)n;
    ds->dim = (size_t)d;
    ds->data_offset = data_offset;
    ds->row_stride = (size_t)d * ds->elem_size;
    return KILN_OK;
}

/* ==== Read helpers ==== */

static kiln_status check_rows(const kiln_dataset *ds, size_t first, size_t count, const void *out) {
    if (first > ds->n || count > ds->n - first)
        return kiln_fail(ds->ctx, KILN_E_RANGE,
                         "%s: rows %zu..%zu+%zu out of range: the dataset has %zu rows", ds->path,
                         first, first, count, ds->n);
    if (count > 0 && !out)
        return kiln_fail(ds->ctx, KILN_E_ARG, "%s: output buffer is NULL", ds->path);
    return KILN_OK;
}

/* float16 bits to float32, exactly: every half is a float. */
static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) { /* infinity or NaN, payload kept */
        bits = sign | 0x7f800000u | man << 13;
    } else if (exp != 0) { /* normal: rebias 15 -> 127 */
        bits = sign | (exp + 112) << 23 | man << 13;
    } else { /* zero or subnormal: man * 2^-24, exact in float */
        const float f = (float)man * 0x1p-24f;
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Converts one row into dst; 1 when a float64 value was finite but beyond
 * float32's range (decision 8), else 0. */
static int row_to_f32(const kiln_dataset *ds, size_t row, float *dst) {
    const uint8_t *const src = kiln_dataset_row(ds, row);
    const size_t d = ds->dim;
    int range = 0;
    switch (ds->dtype) {
    case KILN_DTYPE_F32: memcpy(dst, src, d * sizeof(float)); break;
    case KILN_DTYPE_U8:
        for (size_t j = 0; j < d; j++)
            dst[j] = (float)src[j];
        break;
    case KILN_DTYPE_I8:
        for (size_t j = 0; j < d; j++)
            dst[j] = (float)(int8_t)src[j];
        break;
    case KILN_DTYPE_I32:
        for (size_t j = 0; j < d; j++) {
            int32_t v;
            memcpy(&v, src + 4 * j, sizeof v);
            dst[j] = (float)v;
        }
        break;
    case KILN_DTYPE_F64:
        for (size_t j = 0; j < d; j++) {
            double v;
            memcpy(&v, src + 8 * j, sizeof v);
            /* A finite value past FLT_MAX (even one that would round down
             * to it) is out of range; the cast is kept to representable
             * values, infinities and NaN. */
            const double a = fabs(v);
            const int over = (a > FLT_MAX) & (a <= DBL_MAX);
            range |= over;
            dst[j] = over ? (v < 0 ? -FLT_MAX : FLT_MAX) : (float)v;
        }
        break;
    case KILN_DTYPE_F16:
        for (size_t j = 0; j < d; j++) {
            uint16_t h;
            memcpy(&h, src + 2 * j, sizeof h);
            dst[j] = half_to_float(h);
        }
        break;
    case KILN_DTYPE_I64:
        for (size_t j = 0; j < d; j++) {
            int64_t v;
            memcpy(&v, src + 8 * j, sizeof v);
            dst[j] = (float)v;
        }
        break;
    }
    return range;
}

/* Value j of an integer row (float types are refused by the callers). */
static int64_t int_at(kiln_dtype t, const uint8_t *src, size_t j) {
    switch (t) {
    case KILN_DTYPE_I64: {
        int64_t v;
        memcpy(&v, src + 8 * j, sizeof v);
        return v;
    }
    case KILN_DTYPE_I32: {
        int32_t v;
        memcpy(&v, src + 4 * j, sizeof v);
        return v;
    }
    case KILN_DTYPE_U8: return src[j];
    case KILN_DTYPE_I8: return (int8_t)src[j];
    case KILN_DTYPE_F32:
    case KILN_DTYPE_F64:
    case KILN_DTYPE_F16: break;
    }
    return 0;
}

/* Converts one integer row into dst; 1 when an int64 value did not fit
 * int32 (decision 8), else 0. Float types are refused by the caller. */
static int row_to_i32(const kiln_dataset *ds, size_t row, int32_t *dst) {
    const uint8_t *const src = kiln_dataset_row(ds, row);
    const size_t d = ds->dim;
    if (ds->dtype == KILN_DTYPE_I32) {
        memcpy(dst, src, d * sizeof(int32_t));
        return 0;
    }
    int range = 0;
    for (size_t j = 0; j < d; j++) {
        const int64_t v = int_at(ds->dtype, src, j);
        range |= v < INT32_MIN || v > INT32_MAX;
        dst[j] = (int32_t)(v < INT32_MIN ? INT32_MIN : v > INT32_MAX ? INT32_MAX : v);
    }
    return range;
}

/* The same as int64 (labels files): every integer type fits. */
static void row_to_i64(const kiln_dataset *ds, size_t row, int64_t *dst) {
    const uint8_t *const src = kiln_dataset_row(ds, row);
    for (size_t j = 0; j < ds->dim; j++)
        dst[j] = int_at(ds->dtype, src, j);
}

/* Byte offset of component j of row in the file. */
static size_t elem_offset(const kiln_dataset *ds, size_t row, size_t j) {
    return ds->data_offset + row * ds->row_stride + j * ds->elem_size;
}

/* Names the first value of rows first.. that row_to_f32 (float64) or
 * row_to_i32 (int64) found out of range. */
static kiln_status report_range(const kiln_dataset *ds, size_t first, size_t count) {
    for (size_t r = first; r < first + count; r++) {
        const uint8_t *const src = kiln_dataset_row(ds, r);
        for (size_t j = 0; j < ds->dim; j++) {
            if (ds->dtype == KILN_DTYPE_F64) {
                double v;
                memcpy(&v, src + 8 * j, sizeof v);
                if (!(fabs(v) > FLT_MAX && fabs(v) <= DBL_MAX))
                    continue;
                return kiln_fail(ds->ctx, KILN_E_RANGE,
                                 "%s: float64 value %g is outside the float32 range: record %zu, "
                                 "component %zu, byte offset %zu",
                                 ds->path, v, r, j, elem_offset(ds, r, j));
            }
            int64_t v;
            memcpy(&v, src + 8 * j, sizeof v);
            if (v >= INT32_MIN && v <= INT32_MAX)
                continue;
            return kiln_fail(ds->ctx, KILN_E_RANGE,
                             "%s: int64 value %" PRId64 " does not fit int32: record %zu, "
                             "component %zu, byte offset %zu",
                             ds->path, v, r, j, elem_offset(ds, r, j));
        }
    }
    return kiln_fail(ds->ctx, KILN_E_INTERNAL, "%s: out-of-range value reported but not found",
                     ds->path);
}

/* Names the first non-finite value of out (rows first.. of ds). */
static kiln_status report_nonfinite(const kiln_dataset *ds, size_t first, size_t count,
                                    const float *out) {
    const size_t d = ds->dim;
    for (size_t r = 0; r < count; r++) {
        for (size_t j = 0; j < d; j++) {
            const float v = out[r * d + j];
            if (fabsf(v) <= FLT_MAX)
                continue;
            const size_t row = first + r;
            const size_t offset = elem_offset(ds, row, j);
            return kiln_fail(ds->ctx, KILN_E_FORMAT,
                             "%s: non-finite value %g: record %zu, component %zu, byte offset "
                             "%zu (open with KILN_OPEN_ALLOW_NONFINITE to accept it)",
                             ds->path, (double)v, row, j, offset);
        }
    }
    return kiln_fail(ds->ctx, KILN_E_INTERNAL, "%s: non-finite value reported but not found",
                     ds->path);
}

/* ==== Write helpers ==== */

static const char *npy_descr_of(kiln_dtype dtype) {
    switch (dtype) {
    case KILN_DTYPE_F32: return "<f4";
    case KILN_DTYPE_U8: return "|u1";
    case KILN_DTYPE_I8: return "|i1";
    case KILN_DTYPE_I32: return "<i4";
    case KILN_DTYPE_F64: return "<f8";
    case KILN_DTYPE_F16: return "<f2";
    case KILN_DTYPE_I64: return "<i8";
    }
    return "";
}

/* npy 1.0 preamble and header, padded with spaces so the data starts on a
 * 64-byte boundary and ending in '\n', as numpy.save writes it. */
static kiln_status write_npy_header(kiln_afile *af, kiln_dtype dtype, size_t n, size_t d) {
    char dict[160];
    const int len = snprintf(dict, sizeof dict,
                             "{'descr': '%s', 'fortran_order': False, 'shape': (%zu, %zu), }",
                             npy_descr_of(dtype), n, d);
    uint8_t buf[256];
    /* Two size_t in decimal need at most 40 characters, well inside dict. */
    const size_t dict_len = (size_t)len;
    const size_t unpadded = 10 + dict_len + 1;
    const size_t total = (unpadded + 63) / 64 * 64;
    const size_t hlen = total - 10;
    memcpy(buf, npy_magic, sizeof npy_magic);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (uint8_t)(hlen & 0xff);
    buf[9] = (uint8_t)(hlen >> 8);
    memcpy(buf + 10, dict, dict_len);
    memset(buf + 10 + dict_len, ' ', total - 1 - 10 - dict_len);
    buf[total - 1] = '\n';
    return kiln_afile_write(af, buf, total);
}

/* ==== Public: format names ==== */

const char *kiln_format_name(kiln_format format) {
    if (format == KILN_FORMAT_AUTO)
        return "auto";
    const ds_format_info *const fi = format_info(format);
    return fi ? fi->name : "invalid";
}

kiln_status kiln_format_parse(const char *name, kiln_format *out) {
    if (!name || !out)
        return KILN_E_ARG;
    if (strcasecmp(name, "auto") == 0) {
        *out = KILN_FORMAT_AUTO;
        return KILN_OK;
    }
    for (size_t i = 0; i < sizeof ds_formats / sizeof ds_formats[0]; i++) {
        if (strcasecmp(name, ds_formats[i].name) == 0) {
            *out = ds_formats[i].format;
            return KILN_OK;
        }
    }
    return KILN_E_ARG;
}

/* ==== Public: open and inspect ==== */

kiln_status kiln_dataset_open(kiln_ctx *ctx, const char *path, kiln_format format, unsigned flags,
                              kiln_dataset **out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "opening a dataset: the result pointer is NULL");
    *out = NULL;
    if (!path || !*path)
        return kiln_fail(ctx, KILN_E_ARG, "opening a dataset: empty path");
    const unsigned known = KILN_OPEN_ALLOW_NONFINITE | KILN_OPEN_ALLOW_1D;
    if (flags & ~known)
        return kiln_fail(ctx, KILN_E_ARG, "%s: unknown open flags 0x%x", path, flags & ~known);
    kiln_status st;
    if (format == KILN_FORMAT_AUTO && (st = format_from_path(ctx, path, &format)) != KILN_OK)
        return st;
    const ds_format_info *const fi = format_info(format);
    if (!fi)
        return kiln_fail(ctx, KILN_E_ARG, "%s: format %d is not a kiln_format", path, (int)format);

    kiln_dataset *ds;
    if ((st = kiln_calloc(ctx, sizeof *ds, "dataset", (void **)&ds)) != KILN_OK)
        return st;
    ds->ctx = ctx;
    ds->fd = -1;
    ds->format = format;
    ds->flags = flags;
    ds->dtype = fi->dtype;
    ds->elem_size = dtype_size(fi->dtype);
    const size_t path_len = strlen(path);
    if ((st = kiln_alloc(ctx, path_len + 1, "dataset path", (void **)&ds->path)) != KILN_OK) {
        free(ds);
        return st;
    }
    memcpy(ds->path, path, path_len + 1);

    st = ds_map(ds);
    if (st == KILN_OK) {
        switch (fi->layout) {
        case DS_TEXMEX: st = parse_texmex(ds); break;
        case DS_BIGANN: st = parse_bigann(ds, false); break;
        case DS_NPY: st = parse_npy(ds); break;
        case DS_GT: st = parse_bigann(ds, true); break;
        }
    }
    if (st != KILN_OK) {
        kiln_dataset_free(ds);
        return st;
    }
    *out = ds;
    return KILN_OK;
}

void kiln_dataset_free(kiln_dataset *ds) {
    if (!ds)
        return;
    /* munmap takes a non-const pointer; the mapping is ours to drop. */
    if (ds->map)
        munmap((void *)(uintptr_t)ds->map, ds->map_len);
    if (ds->fd >= 0)
        close(ds->fd);
    free(ds->path);
    free(ds);
}

size_t kiln_dataset_count(const kiln_dataset *ds) { return ds ? ds->n : 0; }
size_t kiln_dataset_dim(const kiln_dataset *ds) { return ds ? ds->dim : 0; }
kiln_dtype kiln_dataset_dtype(const kiln_dataset *ds) { return ds ? ds->dtype : (kiln_dtype)0; }
kiln_format kiln_dataset_format(const kiln_dataset *ds) { return ds ? ds->format : (kiln_format)0; }

/* ==== Public: read ==== */

kiln_status kiln_dataset_read_f32(const kiln_dataset *ds, size_t first, size_t count, float *out) {
    if (!ds)
        return KILN_E_ARG;
    kiln_status st = check_rows(ds, first, count, out);
    if (st != KILN_OK)
        return st;
    const size_t d = ds->dim;
    const bool check = dtype_is_float(ds->dtype) && !(ds->flags & KILN_OPEN_ALLOW_NONFINITE);
    int bad = 0, range = 0;
#pragma omp parallel for schedule(static) reduction(| : bad, range) if (count > DS_PARALLEL_ROWS)
    for (size_t r = 0; r < count; r++) {
        float *const dst = out + r * d;
        range |= row_to_f32(ds, first + r, dst);
        if (check)
            bad |= kiln_row_nonfinite(dst, d);
    }
    if (range)
        return report_range(ds, first, count);
    return bad ? report_nonfinite(ds, first, count, out) : KILN_OK;
}

kiln_status kiln_dataset_map_f32(const kiln_dataset *ds, size_t first, size_t count,
                                 kiln_f32_map *out) {
    memset(out, 0, sizeof *out);
    const size_t d = ds->dim;
    if (ds->dtype != KILN_DTYPE_F32 || ds->row_stride != d * sizeof(float) || ds->n == 0 ||
        ds->fd < 0 || ds->data_offset % sizeof(float))
        return KILN_OK; /* rows need converting: the caller reads them */
    void *const map = mmap(NULL, ds->map_len, PROT_READ, MAP_PRIVATE, ds->fd, 0);
    if (map == MAP_FAILED)
        return KILN_OK; /* address space is short: reading works as well */
    const float *rows = (const float *)(const void *)((const uint8_t *)map + ds->data_offset);
    if (first > ds->n)
        first = ds->n;
    if (count > ds->n - first)
        count = ds->n - first;
    if (!(ds->flags & KILN_OPEN_ALLOW_NONFINITE)) {
        const float *const part = rows + first * d;
        int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (count > DS_PARALLEL_ROWS)
        for (size_t r = 0; r < count; r++)
            bad |= kiln_row_nonfinite(part + r * d, d);
        if (bad) {
            const kiln_status st = report_nonfinite(ds, first, count, part);
            munmap(map, ds->map_len);
            return st;
        }
    }
    out->base = map;
    out->len = ds->map_len;
    out->rows = rows;
    return KILN_OK;
}

/* What an id reader checks first: integer data, and the rows asked for. */
static kiln_status ids_readable(const kiln_dataset *ds, size_t first, size_t count, const void *out,
                                const char *as) {
    if (!ds)
        return KILN_E_ARG;
    if (dtype_is_float(ds->dtype))
        return kiln_fail(ds->ctx, KILN_E_ARG,
                         "%s: %s data cannot be read as %s ids (it holds vectors)", ds->path,
                         kiln_dtype_name(ds->dtype), as);
    return check_rows(ds, first, count, out);
}

kiln_status kiln_dataset_read_i32(const kiln_dataset *ds, size_t first, size_t count,
                                  int32_t *out) {
    kiln_status st = ids_readable(ds, first, count, out, "int32");
    if (st != KILN_OK)
        return st;
    const size_t d = ds->dim;
    int range = 0;
#pragma omp parallel for schedule(static) reduction(| : range) if (count > DS_PARALLEL_ROWS)
    for (size_t r = 0; r < count; r++)
        range |= row_to_i32(ds, first + r, out + r * d);
    return range ? report_range(ds, first, count) : KILN_OK;
}

kiln_status kiln_dataset_read_i64(const kiln_dataset *ds, size_t first, size_t count,
                                  int64_t *out) {
    kiln_status st = ids_readable(ds, first, count, out, "int64");
    if (st != KILN_OK)
        return st;
    for (size_t r = 0; r < count; r++)
        row_to_i64(ds, first + r, out + r * ds->dim);
    return KILN_OK;
}

/* ==== Public: write ==== */

/* Whether a and b name one file: the same name, or (both existing) the same
 * device and inode, as through a link. */
static bool same_file(const char *a, const char *b) {
    struct stat sa, sb;
    if (strcmp(a, b) == 0)
        return true;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* Checks one output and resolves its format; *bytes is its data size. */
static kiln_status check_output(kiln_ctx *ctx, const kiln_dataset_output *o,
                                const ds_format_info **fi_out, size_t *bytes) {
    const char *const path = o->path;
    if (!path || !*path)
        return kiln_fail(ctx, KILN_E_ARG, "writing a dataset: empty path");
    kiln_status st;
    kiln_format format = o->format;
    if (format == KILN_FORMAT_AUTO && (st = format_from_path(ctx, path, &format)) != KILN_OK)
        return st;
    const ds_format_info *const fi = format_info(format);
    if (!fi)
        return kiln_fail(ctx, KILN_E_ARG, "%s: format %d is not a kiln_format", path, (int)format);
    const size_t esz = dtype_size(o->dtype);
    if (esz == 0)
        return kiln_fail(ctx, KILN_E_ARG, "%s: dtype %d is not a kiln_dtype", path, (int)o->dtype);
    if (fi->dtype != 0 && fi->dtype != o->dtype)
        return kiln_fail(ctx, KILN_E_ARG, "%s: format %s holds %s, not %s", path, fi->name,
                         kiln_dtype_name(fi->dtype), kiln_dtype_name(o->dtype));
    const size_t n = o->n, d = o->d;
    if (d == 0)
        return kiln_fail(ctx, KILN_E_ARG, "%s: dimension 0", path);
    if (d > DS_MAX_DIM)
        return kiln_fail(ctx, KILN_E_RANGE, "%s: dimension %zu exceeds the limit %d", path, d,
                         DS_MAX_DIM);
    if ((fi->layout == DS_BIGANN || fi->layout == DS_GT) && n > UINT32_MAX)
        return kiln_fail(ctx, KILN_E_RANGE, "%s: %zu rows exceed the %s limit of %" PRIu32, path, n,
                         fi->name, UINT32_MAX);
    size_t elems;
    if (kiln_mul_size(n, d, &elems) || kiln_mul_size(elems, esz, bytes))
        return kiln_fail(ctx, KILN_E_RANGE, "%s: %zu rows of dimension %zu overflow size_t", path,
                         n, d);
    if (*bytes > 0 && !o->data)
        return kiln_fail(ctx, KILN_E_ARG, "%s: data is NULL", path);
    if (o->distances && fi->layout != DS_GT)
        return kiln_fail(ctx, KILN_E_ARG, "%s: format %s holds no distances after its ids", path,
                         fi->name);
    *fi_out = fi;
    return KILN_OK;
}

static kiln_status write_body(kiln_afile *af, const kiln_dataset_output *o,
                              const ds_format_info *fi, size_t bytes) {
    const uint8_t *const src = o->data;
    const size_t n = o->n, d = o->d;
    kiln_status st = KILN_OK;
    switch (fi->layout) {
    case DS_TEXMEX: {
        uint8_t hdr[4];
        kiln_put_u32le(hdr, (uint32_t)d);
        const size_t row_bytes = d * dtype_size(o->dtype);
        for (size_t i = 0; i < n && st == KILN_OK; i++) {
            st = kiln_afile_write(af, hdr, sizeof hdr);
            if (st == KILN_OK)
                st = kiln_afile_write(af, src + i * row_bytes, row_bytes);
        }
        break;
    }
    case DS_BIGANN:
    case DS_GT: { /* ground truth: the ids, then the distances when given */
        uint8_t hdr[8];
        kiln_put_u32le(hdr, (uint32_t)n);
        kiln_put_u32le(hdr + 4, (uint32_t)d);
        st = kiln_afile_write(af, hdr, sizeof hdr);
        if (st == KILN_OK)
            st = kiln_afile_write(af, src, bytes);
        if (st == KILN_OK && o->distances) /* n*d floats: as many bytes as the int32 ids */
            st = kiln_afile_write(af, o->distances, n * d * sizeof(float));
        break;
    }
    case DS_NPY:
        st = write_npy_header(af, o->dtype, n, d);
        if (st == KILN_OK)
            st = kiln_afile_write(af, src, bytes);
        break;
    }
    return st;
}

kiln_status kiln_dataset_write_all(kiln_ctx *ctx, const kiln_dataset_output *outputs,
                                   size_t count) {
    if (count && !outputs)
        return kiln_fail(ctx, KILN_E_ARG, "writing datasets: the list of outputs is NULL");
    /* Every output is checked before any file is created. */
    kiln_afile **afs = NULL;
    const ds_format_info **fis = NULL;
    size_t *bytes = NULL;
    const size_t slots = count ? count : 1;
    kiln_status st;
    if ((st = kiln_calloc(ctx, slots * sizeof *afs, "output list", (void **)&afs)) ||
        (st = kiln_calloc(ctx, slots * sizeof *fis, "output list", (void **)&fis)) ||
        (st = kiln_calloc(ctx, slots * sizeof *bytes, "output list", (void **)&bytes)))
        goto done;
    for (size_t i = 0; i < count && st == KILN_OK; i++)
        st = check_output(ctx, &outputs[i], &fis[i], &bytes[i]);
    for (size_t i = 0; i < count && st == KILN_OK; i++) /* one file twice: the last would win */
        for (size_t j = i + 1; j < count && st == KILN_OK; j++)
            if (same_file(outputs[i].path, outputs[j].path))
                st = kiln_fail(ctx, KILN_E_ARG, "%s: named twice among the outputs (as %s)",
                               outputs[j].path, outputs[i].path);
    size_t opened = 0;
    for (; opened < count && st == KILN_OK; opened++) {
        if ((st = kiln_afile_open(ctx, outputs[opened].path, &afs[opened])))
            break;
        st = write_body(afs[opened], &outputs[opened], fis[opened], bytes[opened]);
    }
    if (st == KILN_OK) {
        st = kiln_afile_commit_all(afs, count);
    } else {
        for (size_t i = 0; i < opened; i++)
            kiln_afile_abort(afs[i]);
    }
done:
    free(bytes);
    free(fis);
    free(afs);
    return st;
}

kiln_status kiln_dataset_write(kiln_ctx *ctx, const char *path, kiln_format format,
                               kiln_dtype dtype, const void *data, size_t n, size_t d) {
    const kiln_dataset_output o = {path, format, dtype, data, n, d, NULL};
    return kiln_dataset_write_all(ctx, &o, 1);
}
