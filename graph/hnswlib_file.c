/* hnswlib_file.c -- hnswlib interop: kiln_index_export_hnswlib writes the
 * byte layout of hnswlib's HierarchicalNSW<float>::saveIndex, and
 * kiln_index_import_hnswlib reads one back. The layout and the mapping are
 * documented in docs/FORMAT.md ("hnswlib files").
 *
 * The layout (hnswlib 0.6.2, /usr/include/hnswlib/hnswalg.h, unchanged in
 * later versions): a 96-byte header of raw fields, then cur_element_count
 * level-0 records of size_data_per_element_ bytes each,
 *     [u32 count | flags][maxM0 x u32 ids][dim x f32][u64 label],
 * then per element a u32 linkListSize (level * size_links_per_element_) and
 * that many bytes of upper-level blocks [u32 count][maxM x u32 ids] for
 * levels 1..level. hnswlib reads the count with getListCount, i.e. the low
 * 16 bits; bit 0 of the third byte is its DELETE_MARK.
 *
 * Design decisions:
 *  1. hnswlib writes its structures raw (native endianness, 8-byte size_t),
 *     so "the format" is the one a 64-bit little-endian hnswlib produces;
 *     kiln reads and writes exactly that on every host, through explicit
 *     little-endian field access.
 *  2. The file has no magic, version or checksum, so the reader checks
 *     everything the header implies instead: offsets and record size against
 *     maxM0 and the caller's dim, maxM0 == 2*maxM (kiln's M0 = 2M), the
 *     exact file size that header and per-element link sizes add up to, and
 *     every level, count, id and label, before the value is used. The count
 *     is bounded by the file size before anything is allocated, so what is
 *     allocated is proportional to the file. An element marked deleted
 *     is checked as any other, except its label and vector, which are
 *     discarded (decision 5): hnswlib keeps the label of a deleted element
 *     and kiln writes one outside int64 (decision 8).
 *  3. "The file size" is what the file holds, not what it claims: a sparse
 *     file (4 KB of header, then a hole to 3 GB) reads as gigabytes of zero
 *     bytes, which is a valid-looking file of empty elements, and sized a
 *     3 GB index. hnswlib writes its files whole, so a file of at least
 *     SPARSE_MIN_BYTES whose data extents (SEEK_DATA/SEEK_HOLE) cover less
 *     than 1/SPARSE_RATIO of it is refused before anything is sized from its
 *     count. Where the file system cannot tell holes (no SEEK_DATA), nothing
 *     is refused.
 *  4. Three sequential passes through one buffered reader: the upper-level
 *     sizes first (levels and the exact file size, needed before
 *     kiln_index_alloc), then the level-0 records straight into the index,
 *     then the upper-level blocks. The upper part is small (about 1/M of the
 *     nodes have one), so reading its sizes twice costs little, and nothing
 *     is held twice in memory.
 *  5. Elements marked deleted come out deleted, as kiln deletes: the whole
 *     graph is read with them in it, then kiln_live_remove_marked
 *     (graph/hnsw_live.c) removes them by slot, relinking the lists that
 *     named them from their own links as kiln_index_delete does, moving the
 *     entry point when it was one of them and ending with the level-0 repair
 *     (decision 7). Their ids stay, as free slots that kiln_index_add
 *     reuses, so node i is still hnswlib's element i, and exporting again
 *     writes them marked deleted where they were (the mapping of hnswlib's
 *     replace_deleted slots). The count is the build report's
 *     deleted_elements. Removing them by slot, not by label, is what lets a
 *     file whose deleted elements share labels with live ones (hnswlib keeps
 *     a deleted element's label; a forged file can repeat it) be imported.
 *     Before this kiln dropped them and renumbered the rest, which lost
 *     hnswlib's ids and the relinking; earlier still it refused the file.
 *     max_elements_ becomes the index's saved capacity (capped at kiln's
 *     slot limit), the slots its first growth reserves, as a kiln file's
 *     capacity does.
 *  6. dim is not stored, but the file implies it: the vector span
 *     label_offset_ - offsetData_ is 4 * dim bytes, with offsetData_ fixed
 *     by maxM0_ and size_data_per_element_ = label_offset_ + 8. With dim 0
 *     the importer takes dim from there (after the same consistency checks);
 *     a dim given is checked against it.
 *  7. hnswlib leaves nodes unreachable on level 0 that kiln's validator
 *     rejects, so import ends with kiln's reachability repair, as every kiln
 *     build does; the links it added are in the index's build report. On a
 *     graph kiln built and exported the repair adds nothing, so kiln ->
 *     hnswlib -> kiln gives back the same graph.
 *  8. Export writes canonical bytes: unused link slots are zero (hnswlib
 *     leaves stale ids there), max_elements_ = cur_element_count unless the
 *     caller asks for more room (kiln_hnswlib_export_params.max_elements),
 *     and mult_ = 1/ln(M), what hnswlib would have used. It refuses a graph
 *     the importer would reject, and negative labels, which size_t cannot
 *     hold. A free slot is written as hnswlib writes an element marked
 *     deleted (DELETE_MARK, no links, level 0; a zero vector), which its
 *     loader counts in num_deleted_ and, with allow_replace_deleted, offers
 *     to replace_deleted adds: the faithful mapping of kiln's free slots;
 *     compacting them out would renumber every link for nothing. Its label
 *     is 2^63 + slot: hnswlib's loader puts every element's label in its
 *     label_lookup_, deleted or not, and replacing a deleted element erases
 *     its label there, so a label shared with a live element (or a later
 *     add) would cut that element off. Above INT64_MAX, no kiln label can
 *     be one of these, and each is distinct. The entry point of an index
 *     whose slots are all free is slot 0 at level 0 (hnswlib needs an id in
 *     range; its search then finds nothing).
 *  9. hnswlib's HierarchicalNSW<float> holds f32 rows only, so a compact
 *     index (graph/storage.c) exports f32: its kept f32 rows with rerank,
 *     else its f16 or int8 rows decoded, the values its own search
 *     measured (refusing would leave such an index no way into hnswlib;
 *     the file is then 4 bytes a component, as any hnswlib file). Import
 *     always gives f32 storage.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/afile_internal.h"
#include "../common/ctx_internal.h"
#include "build_internal.h"
#include "hnsw_internal.h"
#include "../common/le_internal.h"

/* ==== Format constants (hnswlib's saveIndex) ==== */

#define HL_HEADER_BYTES 96u
#define HL_DELETE_MARK  0x1u                /* in bits 16..23 of a level-0 count word */
#define HL_COUNT_MASK   0xffffu             /* getListCount reads an unsigned short */
#define HL_LABEL_MAX    INT64_MAX           /* kiln labels are int64_t */
#define HL_FREE_LABEL   ((uint64_t)1 << 63) /* + slot: a free slot's label (decision 8) */

/* Header field offsets, in saveIndex's order. */
enum {
    HH_OFFSET_LEVEL0 = 0, /* size_t, always 0 */
    HH_MAX_ELEMENTS = 8,  /* size_t, capacity when saved */
    HH_COUNT = 16,        /* size_t cur_element_count */
    HH_SIZE_DATA = 24,    /* size_t size_data_per_element_ */
    HH_LABEL_OFFSET = 32, /* size_t */
    HH_OFFSET_DATA = 40,  /* size_t */
    HH_MAX_LEVEL = 48,    /* int, -1 when empty */
    HH_ENTRY_POINT = 52,  /* unsigned int tableint */
    HH_MAX_M = 56,        /* size_t maxM_ */
    HH_MAX_M0 = 64,       /* size_t maxM0_ */
    HH_M = 72,            /* size_t M_ */
    HH_MULT = 80,         /* double mult_ */
    HH_EF_CONSTRUCTION = 88
};

/* ==== Tunables ==== */

/* Bytes per read and write call. 1 MiB, as in index_file.c: syscall overhead
 * is negligible and the buffer stays cache-friendly. A level-0 record is at
 * most 4 + 4*2048 + 4*65536 + 8 bytes (KILN_MAX_M, KILN_MAX_DIM), so one
 * always fits in the buffer. */
#define IO_CHUNK ((size_t)1 << 20)

/* Beam width of the reachability repair on import: the file's
 * ef_construction, raised to kiln's default search ef so that a file stating
 * a tiny value still gets a useful repair, and capped so that a forged value
 * cannot make the repair's scratch huge; 1024 is above the ef_construction
 * values used in practice (hnswlib suggests 100 to 800). */
#define REPAIR_EF_MIN 64u
#define REPAIR_EF_MAX 1024u

/* Sparse files (decision 3): refused from this size when their data covers
 * less than 1/SPARSE_RATIO of it. Below 64 MiB a hole costs at most that
 * much memory, so small files are never questioned; 1/16 leaves room for a
 * genuine file that a copy tool made partly sparse where it held zero
 * blocks (unused link slots, zero vectors), while a forged hole of almost
 * the whole file is far below it. */
#define SPARSE_MIN_BYTES ((uint64_t)64 << 20)
#define SPARSE_RATIO     16u

/* ==== Types ==== */

typedef struct hl_header {
    uint64_t offset_level0, max_elements, count, size_data, label_offset, offset_data;
    int32_t max_level;
    uint32_t entry_point;
    uint64_t max_m, max_m0, m;
    double mult;
    uint64_t ef_construction;
} hl_header;

/* Sequential reads through one buffer; pos is the absolute offset of the
 * next byte, [buf_off, buf_off + buf_len) what the buffer holds. */
typedef struct hl_reader {
    kiln_ctx *ctx;
    const char *path;
    int fd;
    uint64_t size; /* file size from fstat */
    uint64_t data; /* bytes in data extents, <= size; size when unknown */
    uint8_t *buf;  /* IO_CHUNK bytes */
    uint64_t buf_off;
    size_t buf_len;
    uint64_t pos;
} hl_reader;

/* ==== Sizes ==== */

/* Bytes of one upper-level block / one level-0 link block for bound ids. */
static uint64_t block_bytes(uint64_t bound) { return (bound + 1) * sizeof(uint32_t); }

/* ==== Writer ==== */

/* What the importer (and hnswlib) will insist on, checked before any byte is
 * written, so a bad graph is never persisted. */
static kiln_status check_exportable(const struct kiln_index *ix, const char *path) {
    kiln_ctx *ctx = ix->ctx;
    if (ix->M < 2 || ix->M > KILN_MAX_M || ix->M0 != 2 * ix->M || ix->dim < 1 ||
        ix->dim > KILN_MAX_DIM || ix->count >= KILN_NO_NODE || ix->max_level >= KILN_MAX_LEVELS)
        return kiln_fail(ctx, KILN_E_INVALID,
                         "%s: cannot export: index parameters out of range (dim %u, M %u, M0 %u, "
                         "count %llu, max_level %u)",
                         path, ix->dim, ix->M, ix->M0, (unsigned long long)ix->count,
                         ix->max_level);
    if (ix->count > ix->free_count &&
        (ix->entry_point >= ix->count || kiln_slot_free(ix, ix->entry_point) ||
         ix->levels[ix->entry_point] != ix->max_level))
        return kiln_fail(ctx, KILN_E_INVALID,
                         "%s: cannot export: entry point %u is not a live node on the top level %u",
                         path, ix->entry_point, ix->max_level);
    for (uint32_t i = 0; i < ix->count; i++) {
        if (kiln_slot_free(ix, i)) {
            if (ix->levels[i] != 0 || kiln_links(ix, i, 0)[0] != 0)
                return kiln_fail(ctx, KILN_E_INVALID,
                                 "%s: cannot export: free slot %u has level %u and %u links", path,
                                 i, ix->levels[i], kiln_links(ix, i, 0)[0]);
            continue;
        }
        if (ix->labels[i] < 0)
            return kiln_fail(ctx, KILN_E_RANGE,
                             "%s: cannot export: node %u has label %lld; hnswlib labels are "
                             "unsigned (size_t)",
                             path, i, (long long)ix->labels[i]);
        if (ix->levels[i] > ix->max_level)
            return kiln_fail(ctx, KILN_E_INVALID,
                             "%s: cannot export: node %u has level %u, above max_level %u", path, i,
                             ix->levels[i], ix->max_level);
        for (unsigned l = 0; l <= ix->levels[i]; l++) {
            const uint32_t *block = kiln_links(ix, i, l);
            const uint32_t bound = l ? ix->M : ix->M0;
            if (block[0] > bound)
                return kiln_fail(ctx, KILN_E_INVALID,
                                 "%s: cannot export: node %u level %u has %u links, above the "
                                 "bound %u",
                                 path, i, l, block[0], bound);
            for (uint32_t j = 1; j <= block[0]; j++)
                if (block[j] >= ix->count || ix->levels[block[j]] < l ||
                    kiln_slot_free(ix, block[j]))
                    return kiln_fail(ctx, KILN_E_INVALID,
                                     "%s: cannot export: node %u level %u links to node %u, "
                                     "which is not a live node on that level",
                                     path, i, l, block[j]);
        }
    }
    return KILN_OK;
}

/* A link block as hnswlib keeps it: count, ids, zeros in the unused slots. */
static void put_block(uint8_t *p, const uint32_t *block, uint32_t bound) {
    kiln_put_u32le(p, block[0]);
    for (uint32_t j = 1; j <= bound; j++)
        kiln_put_u32le(p + 4 * (size_t)j, j <= block[0] ? block[j] : 0);
}

static void put_header(uint8_t *h, const struct kiln_index *ix, uint64_t max_elements) {
    const uint64_t level0 = block_bytes(ix->M0);
    const uint64_t data = (uint64_t)ix->dim * sizeof(float);
    memset(h, 0, HL_HEADER_BYTES);
    kiln_put_u64le(h + HH_OFFSET_LEVEL0, 0);
    kiln_put_u64le(h + HH_MAX_ELEMENTS, max_elements);
    kiln_put_u64le(h + HH_COUNT, ix->count);
    kiln_put_u64le(h + HH_SIZE_DATA, level0 + data + sizeof(uint64_t));
    kiln_put_u64le(h + HH_LABEL_OFFSET, level0 + data);
    kiln_put_u64le(h + HH_OFFSET_DATA, level0);
    /* An empty hnswlib index has maxlevel_ -1 and enterpoint_node_ -1; one
     * of free slots only, slot 0 on level 0 (decision 8). */
    const bool live = ix->count > ix->free_count;
    kiln_put_u32le(h + HH_MAX_LEVEL, !ix->count ? UINT32_MAX : live ? ix->max_level : 0);
    kiln_put_u32le(h + HH_ENTRY_POINT, !ix->count ? UINT32_MAX : live ? ix->entry_point : 0);
    kiln_put_u64le(h + HH_MAX_M, ix->M);
    kiln_put_u64le(h + HH_MAX_M0, ix->M0);
    kiln_put_u64le(h + HH_M, ix->M);
    const double mult = 1.0 / log((double)ix->M);
    uint64_t mult_bits;
    memcpy(&mult_bits, &mult, sizeof mult_bits);
    kiln_put_u64le(h + HH_MULT, mult_bits);
    kiln_put_u64le(h + HH_EF_CONSTRUCTION, ix->ef_construction);
}

/* row: dim floats, where a compact index's rows are decoded (decision 9). */
static kiln_status write_body(const struct kiln_index *ix, kiln_afile *af, uint8_t *rec,
                              float *row) {
    const size_t level0 = (size_t)block_bytes(ix->M0);
    const size_t data = (size_t)ix->dim * sizeof(float);
    const size_t upper = (size_t)block_bytes(ix->M);
    kiln_status st;
    for (uint32_t i = 0; i < ix->count; i++) {
        put_block(rec, kiln_links(ix, i, 0), ix->M0);
        const int freed = kiln_slot_free(ix, i);
        const float *v = ix->vectors ? kiln_vector(ix, i) : kiln_node_query(ix, i, row);
        for (uint32_t d = 0; d < ix->dim; d++)
            kiln_put_f32le(rec + level0 + 4 * (size_t)d, freed ? 0.0f : v[d]);
        uint64_t label = (uint64_t)ix->labels[i];
        if (freed) { /* decision 8: hnswlib's deleted element, a zero vector */
            kiln_put_u32le(rec, HL_DELETE_MARK << 16);
            label = HL_FREE_LABEL + i;
        }
        kiln_put_u64le(rec + level0 + data, label);
        if ((st = kiln_afile_write(af, rec, level0 + data + sizeof(uint64_t))))
            return st;
    }
    for (uint32_t i = 0; i < ix->count; i++) {
        const unsigned level = ix->levels[i];
        kiln_put_u32le(rec, (uint32_t)(level * upper));
        for (unsigned l = 1; l <= level; l++)
            put_block(rec + 4 + (l - 1) * upper, kiln_links(ix, i, l), ix->M);
        if ((st = kiln_afile_write(af, rec, 4 + level * upper)))
            return st;
    }
    return KILN_OK;
}

/* ==== Reader ==== */

/* Bytes of the file's size (size) that lie in data extents rather than
 * holes; size when the file system cannot say (decision 3). */
static uint64_t data_bytes(int fd, uint64_t size) {
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
    uint64_t data = 0;
    off_t at = 0;
    while ((uint64_t)at < size) {
        const off_t start = lseek(fd, at, SEEK_DATA);
        if (start < 0)
            return errno == ENXIO ? data : size; /* ENXIO: only a hole is left */
        const off_t end = lseek(fd, start, SEEK_HOLE);
        if (end < start)
            return size;
        data += (uint64_t)(end - start);
        at = end;
    }
    return data;
#else
    (void)fd;
    return size;
#endif
}

static kiln_status rd_open(kiln_ctx *ctx, const char *path, hl_reader *r) {
    memset(r, 0, sizeof *r);
    r->ctx = ctx;
    r->path = path;
    kiln_status st = kiln_open_regular(ctx, path, &r->fd, &r->size);
    if (st)
        return st;
    r->data = r->size >= SPARSE_MIN_BYTES ? data_bytes(r->fd, r->size) : r->size;
    st = kiln_alloc(ctx, IO_CHUNK, "hnswlib read buffer", (void **)&r->buf);
    if (st)
        close(r->fd);
    return st;
}

static void rd_close(hl_reader *r) {
    free(r->buf);
    close(r->fd);
}

static void rd_seek(hl_reader *r, uint64_t pos) { r->pos = pos; }

/* Points *out at the n bytes (n <= IO_CHUNK) at r->pos and moves past them.
 * Callers have checked against r->size that the bytes are there; running
 * short means the file changed under us. */
static kiln_status rd_take(hl_reader *r, size_t n, const uint8_t **out) {
    if (r->pos < r->buf_off || r->pos + n > r->buf_off + r->buf_len) {
        const uint64_t left = r->size > r->pos ? r->size - r->pos : 0;
        const size_t want = left < IO_CHUNK ? (size_t)left : IO_CHUNK;
        size_t got = 0;
        while (got < want) {
            const ssize_t k = pread(r->fd, r->buf + got, want - got, (off_t)(r->pos + got));
            if (k < 0 && errno == EINTR)
                continue;
            if (k < 0)
                return kiln_fail(r->ctx, KILN_E_IO, "%s: read failed at byte %llu: %s", r->path,
                                 (unsigned long long)(r->pos + got), strerror(errno));
            if (k == 0)
                break;
            got += (size_t)k;
        }
        r->buf_off = r->pos;
        r->buf_len = got;
        if (got < n)
            return kiln_fail(r->ctx, KILN_E_FORMAT,
                             "%s: file ends at byte %llu, in the middle of a field at byte %llu "
                             "(did it change while being read?)",
                             r->path, (unsigned long long)(r->pos + got),
                             (unsigned long long)r->pos);
    }
    *out = r->buf + (r->pos - r->buf_off);
    r->pos += n;
    return KILN_OK;
}

/* Every header field checked against the others, the caller's dim and the
 * file size, so that later reads never leave the file and counts never
 * exceed what it can hold. */
static kiln_status check_header(const hl_reader *r, const hl_header *h, uint32_t *dim_io) {
    kiln_ctx *ctx = r->ctx;
    const char *path = r->path;
    if (h->offset_level0 != 0)
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "%s: offsetLevel0_ is %llu, expected 0 (not an hnswlib HierarchicalNSW "
                         "file?)",
                         path, (unsigned long long)h->offset_level0);
    if (h->max_m < 2 || h->max_m > KILN_MAX_M)
        return kiln_fail(ctx, KILN_E_RANGE, "%s: maxM_ %llu is out of kiln's range [2, %u]", path,
                         (unsigned long long)h->max_m, KILN_MAX_M);
    if (h->max_m0 != 2 * h->max_m)
        return kiln_fail(ctx, KILN_E_UNSUPPORTED,
                         "%s: maxM0_ is %llu, but kiln needs maxM0_ = 2 * maxM_ = %llu", path,
                         (unsigned long long)h->max_m0, (unsigned long long)(2 * h->max_m));
    const uint64_t level0 = block_bytes(h->max_m0);
    if (h->offset_data != level0)
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "%s: offsetData_ is %llu, expected %llu for maxM0_ %llu", path,
                         (unsigned long long)h->offset_data, (unsigned long long)level0,
                         (unsigned long long)h->max_m0);
    if (*dim_io == 0) { /* decision 6 */
        const uint64_t span = h->label_offset - h->offset_data;
        if (h->label_offset <= h->offset_data || span % sizeof(float) != 0 ||
            span / sizeof(float) > KILN_MAX_DIM)
            return kiln_fail(ctx, KILN_E_FORMAT,
                             "%s: cannot infer dim: the vectors span label_offset_ %llu - "
                             "offsetData_ %llu bytes, not 4 * dim for a dim in [1, %u]",
                             path, (unsigned long long)h->label_offset,
                             (unsigned long long)h->offset_data, KILN_MAX_DIM);
        *dim_io = (uint32_t)(span / sizeof(float));
    }
    const uint32_t dim = *dim_io;
    const uint64_t want_data = (uint64_t)dim * sizeof(float);
    if (h->label_offset < h->offset_data || h->label_offset - h->offset_data != want_data)
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "%s: vectors span label_offset_ %llu - offsetData_ %llu bytes, but dim "
                         "%u as float32 needs %llu (wrong dim, or not a float index)",
                         path, (unsigned long long)h->label_offset,
                         (unsigned long long)h->offset_data, dim, (unsigned long long)want_data);
    if (h->size_data != h->label_offset + sizeof(uint64_t))
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "%s: size_data_per_element_ is %llu, expected label_offset_ + 8 = %llu",
                         path, (unsigned long long)h->size_data,
                         (unsigned long long)(h->label_offset + sizeof(uint64_t)));
    if (h->count > h->max_elements)
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "%s: cur_element_count %llu exceeds max_elements_ %llu", path,
                         (unsigned long long)h->count, (unsigned long long)h->max_elements);
    /* Every element takes its record plus a 4-byte link size: this bounds
     * count by the file size before anything is sized from it. */
    const uint64_t body = r->size - HL_HEADER_BYTES;
    if (h->count > body / (h->size_data + sizeof(uint32_t)))
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "%s: cur_element_count %llu elements of %llu bytes do not fit in the "
                         "file's %llu bytes (truncated?)",
                         path, (unsigned long long)h->count, (unsigned long long)h->size_data,
                         (unsigned long long)r->size);
    if (h->count > 0 && r->data < r->size / SPARSE_RATIO)
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "%s: the file is sparse: only %llu of its %llu bytes are data, the rest "
                         "holes (cur_element_count %llu); hnswlib writes its files whole",
                         path, (unsigned long long)r->data, (unsigned long long)r->size,
                         (unsigned long long)h->count);
    if (h->count >= KILN_NO_NODE)
        return kiln_fail(ctx, KILN_E_RANGE, "%s: %llu elements exceed kiln's limit of %u", path,
                         (unsigned long long)h->count, KILN_NO_NODE - 1);
    if (h->ef_construction > UINT32_MAX)
        return kiln_fail(ctx, KILN_E_RANGE, "%s: ef_construction_ %llu is out of range", path,
                         (unsigned long long)h->ef_construction);
    if (h->count == 0)
        return KILN_OK; /* maxlevel_ and enterpoint_node_ are unused (-1 in hnswlib) */
    if (h->max_level < 0 || h->max_level >= KILN_MAX_LEVELS)
        return kiln_fail(ctx, KILN_E_RANGE, "%s: maxlevel_ %d is out of kiln's range [0, %d]", path,
                         h->max_level, KILN_MAX_LEVELS - 1);
    if (h->entry_point >= h->count)
        return kiln_fail(ctx, KILN_E_RANGE,
                         "%s: enterpoint_node_ %u is out of range for %llu elements", path,
                         h->entry_point, (unsigned long long)h->count);
    return KILN_OK;
}

static kiln_status read_header(hl_reader *r, hl_header *h, uint32_t *dim) {
    if (r->size < HL_HEADER_BYTES)
        return kiln_fail(r->ctx, KILN_E_FORMAT,
                         "%s: %llu bytes is too short for an hnswlib header (%u bytes)", r->path,
                         (unsigned long long)r->size, HL_HEADER_BYTES);
    const uint8_t *p;
    kiln_status st = rd_take(r, HL_HEADER_BYTES, &p);
    if (st)
        return st;
    h->offset_level0 = kiln_get_u64le(p + HH_OFFSET_LEVEL0);
    h->max_elements = kiln_get_u64le(p + HH_MAX_ELEMENTS);
    h->count = kiln_get_u64le(p + HH_COUNT);
    h->size_data = kiln_get_u64le(p + HH_SIZE_DATA);
    h->label_offset = kiln_get_u64le(p + HH_LABEL_OFFSET);
    h->offset_data = kiln_get_u64le(p + HH_OFFSET_DATA);
    h->max_level = (int32_t)kiln_get_u32le(p + HH_MAX_LEVEL);
    h->entry_point = kiln_get_u32le(p + HH_ENTRY_POINT);
    h->max_m = kiln_get_u64le(p + HH_MAX_M);
    h->max_m0 = kiln_get_u64le(p + HH_MAX_M0);
    h->m = kiln_get_u64le(p + HH_M);
    const uint64_t mult_bits = kiln_get_u64le(p + HH_MULT);
    memcpy(&h->mult, &mult_bits, sizeof h->mult);
    h->ef_construction = kiln_get_u64le(p + HH_EF_CONSTRUCTION);
    return check_header(r, h, dim);
}

/* Pass 1: each element's linkListSize gives its level; the sizes must add up
 * to exactly the file's size. *out gets count levels (caller frees). */
static kiln_status read_levels(hl_reader *r, const hl_header *h, uint8_t **out) {
    const uint64_t upper = block_bytes(h->max_m);
    const uint64_t tail = HL_HEADER_BYTES + h->count * h->size_data; /* fits: check_header */
    uint8_t *levels = NULL;
    kiln_status st = kiln_alloc(r->ctx, (size_t)h->count, "levels", (void **)&levels);
    if (st)
        return st;
    bool top_seen = false;
    rd_seek(r, tail);
    for (uint64_t i = 0; i < h->count; i++) {
        const uint64_t at = r->pos;
        const uint8_t *p;
        if (r->size - at < sizeof(uint32_t)) {
            st = kiln_fail(r->ctx, KILN_E_FORMAT,
                           "%s: truncated: the file ends at byte %llu, before the link size of "
                           "element %llu",
                           r->path, (unsigned long long)r->size, (unsigned long long)i);
            goto fail;
        }
        if ((st = rd_take(r, sizeof(uint32_t), &p)))
            goto fail;
        const uint32_t size = kiln_get_u32le(p);
        if (size % upper != 0) {
            st = kiln_fail(r->ctx, KILN_E_FORMAT,
                           "%s: element %llu: upper-level link size %u at byte %llu is not a "
                           "multiple of %llu (maxM_ %llu)",
                           r->path, (unsigned long long)i, size, (unsigned long long)at,
                           (unsigned long long)upper, (unsigned long long)h->max_m);
            goto fail;
        }
        const uint64_t level = size / upper;
        if (level > (uint64_t)h->max_level) {
            st = kiln_fail(r->ctx, KILN_E_RANGE,
                           "%s: element %llu has level %llu (link size at byte %llu), above "
                           "maxlevel_ %d",
                           r->path, (unsigned long long)i, (unsigned long long)level,
                           (unsigned long long)at, h->max_level);
            goto fail;
        }
        if (r->size - r->pos < size) {
            st = kiln_fail(r->ctx, KILN_E_FORMAT,
                           "%s: truncated: element %llu's %u bytes of upper-level links at byte "
                           "%llu run past the end of the file (%llu bytes)",
                           r->path, (unsigned long long)i, size, (unsigned long long)r->pos,
                           (unsigned long long)r->size);
            goto fail;
        }
        levels[i] = (uint8_t)level;
        top_seen |= level == (uint64_t)h->max_level;
        rd_seek(r, r->pos + size);
    }
    if (r->pos != r->size) {
        st = kiln_fail(r->ctx, KILN_E_FORMAT,
                       "%s: %llu unexpected bytes after the last element, which ends at byte "
                       "%llu",
                       r->path, (unsigned long long)(r->size - r->pos), (unsigned long long)r->pos);
        goto fail;
    }
    if (h->count > 0 && levels[h->entry_point] != (uint64_t)h->max_level) {
        st = kiln_fail(r->ctx, KILN_E_FORMAT,
                       "%s: enterpoint_node_ %u has level %u, not maxlevel_ %d%s", r->path,
                       h->entry_point, levels[h->entry_point], h->max_level,
                       top_seen ? "" : " (no element is on that level)");
        goto fail;
    }
    *out = levels;
    return KILN_OK;
fail:
    free(levels);
    return st;
}

/* The count word of a link block: hnswlib's count in the low 16 bits, only
 * DELETE_MARK (level 0) allowed above. */
static kiln_status block_count(const hl_reader *r, uint32_t word, uint64_t elem, unsigned level,
                               uint64_t at, uint32_t bound, uint32_t *out) {
    const uint32_t flags = word >> 16;
    if (flags & ~(level == 0 ? HL_DELETE_MARK : 0u))
        return kiln_fail(r->ctx, KILN_E_FORMAT,
                         "%s: element %llu level %u: unknown flag bits 0x%x in the link count at "
                         "byte %llu",
                         r->path, (unsigned long long)elem, level, flags, (unsigned long long)at);
    const uint32_t n = word & HL_COUNT_MASK;
    if (n > bound)
        return kiln_fail(r->ctx, KILN_E_RANGE,
                         "%s: element %llu level %u has %u links (byte %llu), above the bound %u",
                         r->path, (unsigned long long)elem, level, n, (unsigned long long)at,
                         bound);
    *out = n;
    return KILN_OK;
}

/* Copies a link block's ids into kiln's block after checking each: in range,
 * and on upper levels present on that level (search reads the target's
 * block there). */
static kiln_status read_block(const hl_reader *r, const struct kiln_index *ix, const uint8_t *p,
                              uint64_t at, uint32_t elem, unsigned level, uint32_t *block) {
    const uint32_t bound = level ? ix->M : ix->M0;
    uint32_t n = 0;
    kiln_status st = block_count(r, kiln_get_u32le(p), elem, level, at, bound, &n);
    if (st)
        return st;
    block[0] = n;
    for (uint32_t j = 1; j <= n; j++) {
        const uint32_t v = kiln_get_u32le(p + 4 * (size_t)j);
        if (v >= ix->count)
            return kiln_fail(r->ctx, KILN_E_RANGE,
                             "%s: element %u level %u links to element %u (byte %llu), beyond "
                             "the %llu elements",
                             r->path, elem, level, v, (unsigned long long)(at + 4 * (uint64_t)j),
                             (unsigned long long)ix->count);
        if (ix->levels[v] < level)
            return kiln_fail(r->ctx, KILN_E_RANGE,
                             "%s: element %u level %u links to element %u (byte %llu), which is "
                             "only on levels 0..%u",
                             r->path, elem, level, v, (unsigned long long)(at + 4 * (uint64_t)j),
                             ix->levels[v]);
        block[j] = v;
    }
    return KILN_OK;
}

/* Pass 2: level-0 links, vectors and labels, record by record; deleted[i]
 * is set for the elements marked deleted, *n_deleted counts them. Their
 * links are read (the relinking gathers from them, decision 5), not their
 * vectors and labels: label -1 and the zero row of a free slot. */
static kiln_status read_level0(hl_reader *r, const hl_header *h, struct kiln_index *ix,
                               uint8_t *deleted, uint64_t *n_deleted) {
    const size_t rec_bytes = (size_t)h->size_data;
    rd_seek(r, HL_HEADER_BYTES);
    *n_deleted = 0;
    for (uint32_t i = 0; i < ix->count; i++) {
        const uint64_t at = r->pos;
        const uint8_t *p;
        kiln_status st = rd_take(r, rec_bytes, &p);
        if (st || (st = read_block(r, ix, p, at, i, 0, kiln_links(ix, i, 0))))
            return st;
        deleted[i] = (kiln_get_u32le(p) >> 16) & HL_DELETE_MARK;
        *n_deleted += deleted[i];
        if (deleted[i]) {
            ix->labels[i] = -1;
            continue;
        }
        float *v = ix->vectors + (size_t)i * ix->dim;
        const uint8_t *src = p + h->offset_data;
        for (uint32_t d = 0; d < ix->dim; d++) {
            v[d] = kiln_get_f32le(src + 4 * (size_t)d);
            if (!isfinite(v[d]))
                return kiln_fail(r->ctx, KILN_E_FORMAT,
                                 "%s: element %u has a non-finite value at dimension %u (byte "
                                 "%llu)",
                                 r->path, i, d,
                                 (unsigned long long)(at + h->offset_data + 4 * (uint64_t)d));
        }
        if (ix->metric == KILN_METRIC_COS)
            kiln_normalize(v, ix->dim);
        const uint64_t label = kiln_get_u64le(p + h->label_offset);
        if (label > (uint64_t)HL_LABEL_MAX)
            return kiln_fail(r->ctx, KILN_E_RANGE,
                             "%s: element %u has label %llu (byte %llu), above kiln's int64 "
                             "maximum",
                             r->path, i, (unsigned long long)label,
                             (unsigned long long)(at + h->label_offset));
        ix->labels[i] = (int64_t)label;
    }
    return KILN_OK;
}

/* Pass 3: the upper-level blocks. */
static kiln_status read_upper(hl_reader *r, const hl_header *h, struct kiln_index *ix) {
    const uint64_t upper = block_bytes(ix->M);
    rd_seek(r, HL_HEADER_BYTES + h->count * h->size_data);
    for (uint32_t i = 0; i < ix->count; i++) {
        const uint8_t *p;
        const uint64_t at = r->pos;
        kiln_status st = rd_take(r, sizeof(uint32_t), &p);
        if (st)
            return st;
        if (kiln_get_u32le(p) != ix->levels[i] * upper)
            return kiln_fail(r->ctx, KILN_E_IO,
                             "%s: element %u's link size at byte %llu changed while the file "
                             "was being read",
                             r->path, i, (unsigned long long)at);
        for (unsigned l = 1; l <= ix->levels[i]; l++) {
            const uint64_t block_at = r->pos;
            if ((st = rd_take(r, (size_t)upper, &p)) ||
                (st = read_block(r, ix, p, block_at, i, l, kiln_links(ix, i, l))))
                return st;
        }
    }
    return KILN_OK;
}

static bool metric_valid(kiln_metric m) {
    return m == KILN_METRIC_L2 || m == KILN_METRIC_IP || m == KILN_METRIC_COS;
}

/* ==== Public ==== */

void kiln_hnswlib_export_params_init(kiln_hnswlib_export_params *params) {
    if (params)
        memset(params, 0, sizeof *params);
}

static kiln_status export_hnswlib(const kiln_index *index, const char *path,
                                  const kiln_hnswlib_export_params *params) {
    kiln_ctx *ctx = index->ctx;
    if (!path || !*path)
        return kiln_fail(ctx, KILN_E_ARG, "hnswlib export: empty output path");
    const uint64_t max_elements =
        params && params->max_elements ? params->max_elements : index->count;
    if (max_elements < index->count)
        return kiln_fail(ctx, KILN_E_ARG,
                         "%s: max_elements %llu is below the index's %llu elements (live and "
                         "deleted)",
                         path, (unsigned long long)max_elements, (unsigned long long)index->count);
    if (max_elements >= KILN_NO_NODE)
        return kiln_fail(ctx, KILN_E_RANGE,
                         "%s: max_elements %llu is above the limit %u (hnswlib's ids are 32-bit)",
                         path, (unsigned long long)max_elements, KILN_NO_NODE - 1);
    kiln_status st = check_exportable(index, path);
    if (st)
        return st;
    /* One buffer fits a level-0 record or one element's upper blocks. */
    const size_t rec_bytes =
        (size_t)block_bytes(index->M0) + (size_t)index->dim * sizeof(float) + sizeof(uint64_t);
    const size_t upper_bytes =
        sizeof(uint32_t) + (size_t)(KILN_MAX_LEVELS - 1) * (size_t)block_bytes(index->M);
    uint8_t *rec = NULL;
    float *row = NULL;
    if ((st = kiln_alloc(ctx, rec_bytes > upper_bytes ? rec_bytes : upper_bytes,
                         "hnswlib record buffer", (void **)&rec)) ||
        (st = kiln_alloc(ctx, (size_t)index->dim * sizeof *row, "a row", (void **)&row))) {
        free(rec);
        return st;
    }
    kiln_afile *af = NULL;
    if ((st = kiln_afile_open(ctx, path, &af))) {
        free(rec);
        free(row);
        return st;
    }
    uint8_t header[HL_HEADER_BYTES];
    put_header(header, index, max_elements);
    if ((st = kiln_afile_write(af, header, sizeof header)) ||
        (st = write_body(index, af, rec, row))) {
        kiln_afile_abort(af);
        free(rec);
        free(row);
        return st;
    }
    free(rec);
    free(row);
    return kiln_afile_commit(af);
}

/* graph/hnsw_live.c decision 8: the writer mutex, so an export sees whole
 * calls of a writer that runs beside it. */
kiln_status kiln_index_export_hnswlib(const kiln_index *index, const char *path,
                                      const kiln_hnswlib_export_params *params) {
    if (!index)
        return KILN_E_ARG;
    kiln_writer_begin(index);
    const kiln_status st = export_hnswlib(index, path, params);
    kiln_writer_end(index);
    return st;
}

kiln_status kiln_index_import_hnswlib(kiln_ctx *ctx, const char *path, uint32_t dim,
                                      kiln_metric metric, kiln_index **out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "hnswlib import: the result pointer is NULL");
    *out = NULL;
    if (!path || !*path)
        return kiln_fail(ctx, KILN_E_ARG, "hnswlib import: empty path");
    if (dim > KILN_MAX_DIM)
        return kiln_fail(ctx, KILN_E_ARG,
                         "hnswlib import: dim %u is out of range [1, %u] (0: from the file)", dim,
                         KILN_MAX_DIM);
    if (!metric_valid(metric))
        return kiln_fail(ctx, KILN_E_ARG, "hnswlib import: metric %d is not l2, ip or cos",
                         (int)metric);
    const double t0 = kiln_now();
    hl_reader r;
    kiln_status st = rd_open(ctx, path, &r);
    if (st)
        return st;
    hl_header h;
    memset(&h, 0, sizeof h);
    uint8_t *levels = NULL, *deleted = NULL;
    uint64_t n_deleted = 0;
    struct kiln_index *ix = NULL;
    if ((st = read_header(&r, &h, &dim)) || (st = read_levels(&r, &h, &levels)))
        goto done;
    st = kiln_index_alloc(ctx, h.count, dim, metric, (uint32_t)h.max_m, levels, &ix);
    free(levels);
    if (st ||
        (st = kiln_calloc(ctx, sizeof(kiln_build_report), "build report", (void **)&ix->report)))
        goto done;
    if ((st = kiln_alloc(ctx, h.count ? h.count : 1, "deleted marks", (void **)&deleted)) ||
        (st = read_level0(&r, &h, ix, deleted, &n_deleted)) || (st = read_upper(&r, &h, ix)))
        goto done;
    ix->ef_construction = (uint32_t)h.ef_construction;
    ix->seed = 0; /* not in hnswlib files */
    ix->saved_capacity = h.max_elements < KILN_NO_NODE ? h.max_elements : KILN_NO_NODE - 1;
    if (ix->count) {
        ix->entry_point = h.entry_point;
        ix->max_level = (uint32_t)h.max_level;
    }
    kiln_build_report *rep = ix->report;
    rep->deleted_elements = n_deleted;
    rep->method = KILN_METHOD_INSERT; /* hnswlib builds by insertion */
    kiln_report_stage(rep, "read", kiln_now() - t0);
    const double t_repair = kiln_now();
    const uint32_t ef = ix->ef_construction < REPAIR_EF_MIN   ? REPAIR_EF_MIN
                        : ix->ef_construction > REPAIR_EF_MAX ? REPAIR_EF_MAX
                                                              : ix->ef_construction;
    kiln_repair_stats rs;
    if (n_deleted) /* decision 5; the removal ends with the repair */
        st = kiln_live_remove_marked(ix, deleted, ef, &rs);
    else
        st = kiln_repair_reachability(ix, ef, kiln_threads(0), &rs);
    rep->repaired_links = rs.links;
    kiln_report_stage(rep, n_deleted ? "delete" : "repair", kiln_now() - t_repair);
    rep->total_seconds = kiln_now() - t0;
done:
    free(deleted);
    rd_close(&r);
    if (st) {
        kiln_index_free(ix);
        return st;
    }
    *out = ix;
    return KILN_OK;
}
