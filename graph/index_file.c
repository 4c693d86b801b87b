/* index_file.c -- kiln's index file: kiln_index_save, kiln_index_open (and
 * kiln_index_load) and kiln_index_info_read. The byte layout and every rule the reader enforces
 * are documented in docs/FORMAT.md; this file is their implementation.
 *
 * Design decisions:
 *  1. A fixed 128-byte header (magic "KILNHNSW", format version, the graph's
 *     parameters, total file size) protected by its own CRC-32C, then a
 *     section table, then the arrays as sections at 64-byte aligned offsets,
 *     each with a CRC-32C in the table. The header carries the table's CRC,
 *     so one verified header vouches for everything after it.
 *  2. The reader trusts nothing: it checks magic, version, the header CRC,
 *     the recorded file size against fstat, every field against kiln's
 *     limits, and that each section's length is exactly what count, dim and
 *     M imply and lies inside the file, BEFORE it allocates. So what it
 *     allocates is bounded by a small multiple of the file's size, and a
 *     forged header cannot make it allocate 2^50 bytes.
 *  3. What bounds a memory read is checked at every open: header, table,
 *     section bounds, LEVELS (its CRC and every level), the UPPER length the
 *     levels imply and the entry point's level, so kiln_links stays inside
 *     the arrays for every node < count and level <= its level. Link counts
 *     and ids are not read at open (decision 9): search clamps and skips
 *     them (graph/hnsw_search.c decision 6), and every other reader of
 *     links checks them before following one (validator, hnswlib export;
 *     stats reads counts only). KILN_LOAD_VERIFY adds the old full check:
 *     every section CRC, every link count within its bound, every id <
 *     count and every upper-level link to a node on that level. Graph
 *     quality (reachability, duplicates, self links) is the validator's
 *     job (kiln_index_check), not the loader's.
 *  4. Little-endian on disk always. On a little-endian host the arrays are
 *     written and read in place; on a big-endian host they go through a
 *     byte swap. Both paths are compiled everywhere (a constant selects one)
 *     so the big-endian code is at least type-checked on every build.
 *  5. The writer streams each section in chunks, folding the CRC as it goes,
 *     and writes the table and header last with kiln_afile_pwrite; the file
 *     appears under its name only by an atomic rename after fsync.
 *  6. Files are canonical: unused link slots (past a block's count) are
 *     written as zeros and nothing time- or address-dependent is stored, so
 *     the same graph always gives the same bytes, and save never modifies
 *     the index. The writer also refuses an in-memory graph its own reader
 *     would reject (KILN_E_INVALID), so a bad index is never persisted.
 *  7. Opening maps the file (PROT_READ, MAP_SHARED) and uses VECTORS,
 *     LABELS, LEVELS, LINKS0 and UPPER in place: version 1 already puts
 *     every section at a 64-byte aligned offset in little-endian order, so
 *     the layout needs no change and the version stays 1. Only upper_off
 *     (8 bytes a node) is derived onto the heap. kiln_index_free unmaps.
 *     Nothing writes through the mapping: a loaded index is read-only
 *     (builders, the reachability repair and the hnswlib importer write
 *     only indexes they allocated; COS vectors are stored normalised).
 *  8. The read path stays for a big-endian host (the arrays need a byte
 *     swap), for a file mmap refuses (it falls back silently), and on
 *     request (KILN_LOAD_READ, which the tests use to keep it covered). It
 *     reads each section in IO_CHUNK pieces and folds every CRC as it
 *     goes, since that costs nothing next to the read.
 *  9. Checking every link at open is O(links): measured with the old
 *     check's loop on random-graph files (M 16, 128-d) on the shared 2-core
 *     machine, warm: 0.14-0.17 s at 1M nodes (132 MB of LINKS0), 0.75-0.99
 *     s at 4M; 100M nodes (13 GB of LINKS0) would need ~20 s. So the check
 *     moved to search, one compare per neighbour: +1.9% instructions
 *     (graph/hnsw_search.c decision 6). The open itself is then O(count)
 *     bytes of LEVELS plus upper_off: best of 20 warm opens 0.78 ms at 200K
 *     (135 MB file), 2.6 ms at 1M (658 MB), 18 ms at 4M (2.6 GB), against
 *     1.37 s (median of 5) for the old read-and-verify loader at 1M; see
 *     docs/FORMAT.md, "Opening: mapping and what is verified".
 * 10. No madvise: MADV_RANDOM made the first cold search of a 1M random
 *     graph 0.48-0.81 s instead of 0.93-1.07 s but the next ten 150-280 ms
 *     each instead of 9-10 ms, since the kernel's read-around prefetches
 *     what later searches touch. KILN_LOAD_POPULATE (MAP_POPULATE) is the
 *     opt-in for a warm page cache: it maps every page at open (0.02-0.19 s
 *     for 658 MB, warm), so the first searches take no page faults.
 * 11. A mapped file that shrinks under the reader (another process
 *     truncating or rewriting it in place) makes the next touch of a lost
 *     page raise SIGBUS. Every mmap reader has this (hnswlib's, FAISS's
 *     IO_FLAG_MMAP, DiskANN's); it is documented, not hidden behind a
 *     signal handler. kiln's own writer replaces files by rename, which
 *     leaves an open mapping on the old inode intact.
 * 12. Version 2 (live indexes, graph/hnsw_live.c) adds what an index
 *     changed in place needs back: the header's capacity (slots reserved
 *     for adds) and free_count in what were reserved bytes, and a sixth
 *     section FREE, the free slots in free-list order, so that a save, load
 *     and the same adds give the same slots as no save would. Free slots
 *     are stored like any node (zero vector, label -1, level 0, empty
 *     list), so every other section keeps its layout, and version 1 files,
 *     which have neither, are still read (as capacity = count, no free
 *     slot). FREE is read and checked at every open, as LEVELS is: each id
 *     below count, named once, on level 0 with no links, not the entry
 *     point; it is free_count * 4 bytes, against count bytes of LEVELS.
 *     The writer writes version 2 only, even with no free slot: one layout
 *     to write keeps save canonical (the same index, the same bytes).
 * 13. Version 3 is compact storage (graph/storage.c): the header's storage
 *     (F16 or INT8) and flags (rerank: f32 rows kept) in what were reserved
 *     bytes 92..99, and a seventh section CODES of count rows of the
 *     storage's row bytes (common/codec_internal.h), 64-byte aligned like
 *     every section so a mapped open uses it in place. VECTORS stays in
 *     the table, empty without rerank, so every other section keeps its
 *     kind and layout. An f32 index is still written as version 2, byte
 *     for byte as before (the storage decides the version, so save stays
 *     canonical), and a kiln that reads only versions 1 and 2 refuses a
 *     compact file by its version instead of misreading it. CODES is
 *     CRC-checked as the other big sections are (KILN_LOAD_VERIFY, or the
 *     read path); a code is any byte and a scale any float, so no value in
 *     it can take a read out of bounds.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../common/afile_internal.h"
#include "../common/crc32c_internal.h"
#include "../common/ctx_internal.h"
#include "hnsw_internal.h"
#include "../common/le_internal.h"

/* ==== Format constants (fixed by docs/FORMAT.md) ==== */

#define FILE_MAGIC         "KILNHNSW"
#define FILE_MAGIC_LEN     8u
#define FILE_VERSION       2u /* written for F32 storage; version 1 is still read (decision 12) */
#define FILE_VERSION_CODES 3u /* written for F16 and INT8 storage (decision 13) */
#define HEADER_BYTES       128u
#define SECTION_ENTRY      32u  /* bytes per section table entry */
#define SECTION_ALIGN      64u  /* every section offset is a multiple of this */
#define SECTION_OPTIONAL   0x1u /* flag: a reader that does not know the kind skips it */
#define MAX_SECTIONS       64u  /* bound on section_count, so the table stays small */
#define KNOWN_SECTIONS     7u   /* version 3's; version 2 has the first 6, version 1 the first 5 */
#define STORAGE_RERANK     0x1u /* version 3 storage flag: VECTORS holds the f32 rows too */

/* Header field offsets. */
enum {
    H_MAGIC = 0,
    H_VERSION = 8,
    H_HEADER_BYTES = 12,
    H_DIM = 16,
    H_METRIC = 20,
    H_M = 24,
    H_M0 = 28,
    H_EF_CONSTRUCTION = 32,
    H_MAX_LEVEL = 36,
    H_COUNT = 40,
    H_ENTRY_POINT = 48,
    H_SECTION_COUNT = 52,
    H_SEED = 56,
    H_FILE_BYTES = 64,
    H_TABLE_CRC = 72,
    H_CAPACITY = 76,      /* version 2: u64 */
    H_FREE_COUNT = 84,    /* version 2: u64 */
    H_STORAGE = 92,       /* version 3: u32, kiln_storage F16 or INT8 */
    H_STORAGE_FLAGS = 96, /* version 3: u32, STORAGE_RERANK */
    H_RESERVED_V1 = 76,   /* version 1: through 123, zeros */
    H_RESERVED_V2 = 92,   /* version 2: through 123, zeros */
    H_RESERVED = 100,     /* version 3: through 123, zeros */
    H_CRC = 124
};

/* Section table entry field offsets. */
enum { S_KIND = 0, S_FLAGS = 4, S_OFFSET = 8, S_LENGTH = 16, S_CRC = 24, S_RESERVED = 28 };

/* Section kinds; the values are on disk. */
enum {
    SEC_VECTORS = 1, /* count * dim f32 */
    SEC_LABELS = 2,  /* count i64 */
    SEC_LEVELS = 3,  /* count u8 */
    SEC_LINKS0 = 4,  /* count * (1 + M0) u32 */
    SEC_UPPER = 5,   /* sum over nodes of levels[i] * (1 + M) u32 */
    SEC_FREE = 6,    /* version 2: free_count u32, the free slots */
    SEC_CODES = 7    /* version 3: count rows of the storage's compact rows */
};

/* The known sections of a version: each must appear once. */
static inline uint32_t known_sections(uint32_t version) { return version + 4u; }

static const char *const section_names[KNOWN_SECTIONS + 1] = {
    "?", "VECTORS", "LABELS", "LEVELS", "LINKS0", "UPPER", "FREE", "CODES"};

#ifdef MAP_POPULATE
#define MAP_POPULATE_FLAG MAP_POPULATE
#else
#define MAP_POPULATE_FLAG 0 /* not Linux: KILN_LOAD_POPULATE only maps */
#endif

/* ==== Tunables ==== */

/* Bytes per read, write and CRC step. 1 MiB: large enough that syscall
 * overhead is negligible, small enough that the CRC pass over a chunk just
 * read or staged still finds it in L2. */
#define IO_CHUNK ((size_t)1 << 20)

/* ==== Types ==== */

typedef struct file_header {
    uint32_t version, header_bytes, dim, metric, M, M0, ef_construction, max_level;
    uint64_t count;
    uint32_t entry_point, section_count;
    uint64_t seed, file_bytes;
    uint64_t capacity, free_count;   /* version 2; count and 0 in version 1 */
    uint32_t storage, storage_flags; /* version 3; F32 and 0 before */
    uint32_t table_crc, header_crc;
} file_header;

typedef struct section_entry {
    uint32_t kind, flags;
    uint64_t offset, length;
    uint32_t crc, reserved;
} section_entry;

/* An open index file whose header and section table have passed every check. */
typedef struct index_file {
    kiln_ctx *ctx;
    const char *path;
    int fd;
    file_header h;
    section_entry sec[KNOWN_SECTIONS + 1]; /* by kind; [0] unused */
} index_file;

/* ==== Byte order ==== */

/* Reverses the bytes of each of n elements of elem (2, 4 or 8) bytes in
 * place; only big-endian hosts call it. */
static void swap_array(void *data, size_t n, size_t elem) {
    uint8_t *p = data;
    for (size_t i = 0; i < n; i++, p += elem) {
        if (elem == 2) {
            const uint8_t t = p[0];
            p[0] = p[1];
            p[1] = t;
        } else if (elem == 4) {
            uint32_t v;
            memcpy(&v, p, 4);
            v = __builtin_bswap32(v);
            memcpy(p, &v, 4);
        } else {
            uint64_t v;
            memcpy(&v, p, 8);
            v = __builtin_bswap64(v);
            memcpy(p, &v, 8);
        }
    }
}

/* The same for n compact rows of storage s, stride bytes apart: f16's
 * halves, int8's scale (its codes are bytes). */
static void swap_codes(uint32_t s, void *rows, size_t n, size_t stride) {
    uint8_t *p = rows;
    for (size_t i = 0; i < n; i++, p += stride)
        swap_array(p, s == KILN_STORAGE_F16 ? stride / 2 : 1, s == KILN_STORAGE_F16 ? 2 : 4);
}

static bool metric_valid(uint32_t m) {
    return m == KILN_METRIC_L2 || m == KILN_METRIC_IP || m == KILN_METRIC_COS;
}

/* Whether the header's index keeps f32 rows in VECTORS. */
static bool has_f32(const file_header *h) {
    return h->storage == KILN_STORAGE_F32 || (h->storage_flags & STORAGE_RERANK);
}

/* Bytes each known section must hold for the header's count, dim and M;
 * UPPER is checked separately (its length depends on LEVELS). All products
 * fit in 64 bits because count < 2^32, dim <= 2^16 and M0 <= 2^11. */
static uint64_t section_expected(const file_header *h, uint32_t kind) {
    switch (kind) {
    case SEC_VECTORS: return has_f32(h) ? h->count * h->dim * sizeof(float) : 0;
    case SEC_CODES:
        return h->storage == KILN_STORAGE_F32
                   ? 0
                   : h->count * kiln_code_bytes((kiln_storage)h->storage, h->dim);
    case SEC_LABELS: return h->count * sizeof(int64_t);
    case SEC_LEVELS: return h->count;
    case SEC_LINKS0: return h->count * ((uint64_t)h->M0 + 1) * sizeof(uint32_t);
    case SEC_FREE: return h->free_count * sizeof(uint32_t);
    default: return 0;
    }
}

/* ==== Writer ==== */

typedef struct writer {
    const struct kiln_index *ix;
    kiln_ctx *ctx;
    const char *path;
    kiln_afile *af;
    uint8_t *stage; /* IO_CHUNK bytes for links and big-endian swaps */
    size_t staged;  /* bytes in stage */
    uint32_t crc;   /* running CRC of the open section */
    uint32_t kind;  /* the open section */
    section_entry sec[KNOWN_SECTIONS];
} writer;

static kiln_status section_begin(writer *w, uint32_t kind) {
    kiln_status st = kiln_afile_pad(w->af, SECTION_ALIGN);
    if (st)
        return st;
    w->kind = kind;
    w->crc = 0;
    w->staged = 0;
    section_entry *s = &w->sec[kind - 1];
    s->kind = kind;
    s->offset = kiln_afile_offset(w->af);
    return KILN_OK;
}

static kiln_status section_put(writer *w, const void *p, size_t len) {
    w->crc = kiln_crc32c(w->crc, p, len);
    return kiln_afile_write(w->af, p, len);
}

static kiln_status stage_flush(writer *w) {
    kiln_status st = section_put(w, w->stage, w->staged);
    w->staged = 0;
    return st;
}

static kiln_status section_end(writer *w) {
    kiln_status st = stage_flush(w);
    section_entry *s = &w->sec[w->kind - 1];
    s->length = kiln_afile_offset(w->af) - s->offset;
    s->crc = w->crc;
    return st;
}

/* Streams n elements of elem bytes (1, 4 or 8) as little-endian. */
static kiln_status write_array(writer *w, const void *src, size_t n, size_t elem) {
    const uint8_t *p = src;
    size_t left = n * elem; /* fits: the array is in memory */
    while (left) {
        size_t len = left < IO_CHUNK ? left : IO_CHUNK;
        kiln_status st;
        if (KILN_HOST_BIG_ENDIAN && elem > 1) {
            memcpy(w->stage, p, len);
            swap_array(w->stage, len / elem, elem);
            st = section_put(w, w->stage, len);
        } else {
            st = section_put(w, p, len);
        }
        if (st)
            return st;
        p += len;
        left -= len;
    }
    return KILN_OK;
}

/* Stages one link block [n, ids...] of bound slots, zeroing the slots past
 * n, after checking what the reader will check. */
static kiln_status write_block(writer *w, const uint32_t *block, uint32_t bound, uint32_t node,
                               unsigned level) {
    const struct kiln_index *ix = w->ix;
    const size_t bytes = ((size_t)bound + 1) * sizeof(uint32_t);
    if (w->staged + bytes > IO_CHUNK) {
        kiln_status st = stage_flush(w);
        if (st)
            return st;
    }
    const uint32_t n = block[0];
    if (n > bound)
        return kiln_fail(w->ctx, KILN_E_INVALID,
                         "%s: cannot save: node %u level %u has %u links, above the bound %u",
                         w->path, node, level, n, bound);
    uint32_t *out = (uint32_t *)(void *)(w->stage + w->staged);
    out[0] = n;
    for (uint32_t j = 1; j <= n; j++) {
        if (block[j] >= ix->count)
            return kiln_fail(w->ctx, KILN_E_INVALID,
                             "%s: cannot save: node %u level %u links to node %u, beyond the "
                             "%llu nodes",
                             w->path, node, level, block[j], (unsigned long long)ix->count);
        if (ix->levels[block[j]] < level)
            return kiln_fail(w->ctx, KILN_E_INVALID,
                             "%s: cannot save: node %u level %u links to node %u, which is "
                             "only on levels 0..%u",
                             w->path, node, level, block[j], ix->levels[block[j]]);
        if (kiln_slot_free(ix, block[j]))
            return kiln_fail(w->ctx, KILN_E_INVALID,
                             "%s: cannot save: node %u level %u links to free slot %u", w->path,
                             node, level, block[j]);
        out[j] = block[j];
    }
    memset(out + 1 + n, 0, (size_t)(bound - n) * sizeof(uint32_t));
    if (KILN_HOST_BIG_ENDIAN)
        swap_array(out, (size_t)bound + 1, sizeof(uint32_t));
    w->staged += bytes;
    return KILN_OK;
}

/* The compact rows, little-endian (whole rows staged on a big-endian host). */
static kiln_status write_codes(writer *w) {
    const struct kiln_index *ix = w->ix;
    const size_t stride = ix->code_bytes, n = (size_t)ix->count;
    if (!KILN_HOST_BIG_ENDIAN)
        return write_array(w, ix->codes, n * stride, 1);
    const size_t per = IO_CHUNK / stride; /* >= 1: a row is at most 128 KiB */
    for (size_t i = 0; i < n; i += per) {
        const size_t rows = n - i < per ? n - i : per;
        memcpy(w->stage, ix->codes + i * stride, rows * stride);
        swap_codes(ix->storage, w->stage, rows, stride);
        kiln_status st = section_put(w, w->stage, rows * stride);
        if (st)
            return st;
    }
    return KILN_OK;
}

/* The sections a save writes: CODES only for compact storage (decision 13). */
static uint32_t saved_sections(const struct kiln_index *ix) {
    return ix->storage == KILN_STORAGE_F32 ? KNOWN_SECTIONS - 1 : KNOWN_SECTIONS;
}

/* The header fields and levels the reader will insist on. */
static kiln_status check_savable(const writer *w) {
    const struct kiln_index *ix = w->ix;
    if (ix->dim < 1 || ix->dim > KILN_MAX_DIM || ix->M < 2 || ix->M > KILN_MAX_M ||
        ix->M0 != 2 * ix->M || !metric_valid((uint32_t)ix->metric) || ix->count >= KILN_NO_NODE ||
        ix->max_level >= KILN_MAX_LEVELS)
        return kiln_fail(w->ctx, KILN_E_INVALID,
                         "%s: cannot save: index parameters out of range (dim %u, M %u, M0 %u, "
                         "metric %d, count %llu, max_level %u)",
                         w->path, ix->dim, ix->M, ix->M0, (int)ix->metric,
                         (unsigned long long)ix->count, ix->max_level);
    if ((ix->storage != KILN_STORAGE_F32 && ix->storage != KILN_STORAGE_F16 &&
         ix->storage != KILN_STORAGE_INT8) ||
        (ix->storage == KILN_STORAGE_F32
             ? !ix->vectors && ix->count
             : !ix->codes || ix->code_bytes != kiln_code_bytes(ix->storage, ix->dim)))
        return kiln_fail(w->ctx, KILN_E_INVALID, "%s: cannot save: storage %d without its rows",
                         w->path, (int)ix->storage);
    if (ix->free_count > ix->count)
        return kiln_fail(w->ctx, KILN_E_INVALID, "%s: cannot save: %llu free slots of %llu",
                         w->path, (unsigned long long)ix->free_count,
                         (unsigned long long)ix->count);
    for (uint64_t j = 0; j < ix->free_count; j++) {
        const uint32_t v = ix->free_list[j];
        if (v >= ix->count || !kiln_slot_free(ix, v) || ix->levels[v] != 0 ||
            kiln_links(ix, v, 0)[0] != 0)
            return kiln_fail(w->ctx, KILN_E_INVALID,
                             "%s: cannot save: free list entry %llu (slot %u) is not an empty "
                             "free slot",
                             w->path, (unsigned long long)j, v);
    }
    if (ix->count == ix->free_count) {
        if (ix->entry_point != KILN_NO_NODE || ix->max_level != 0)
            return kiln_fail(w->ctx, KILN_E_INVALID,
                             "%s: cannot save: empty index with entry point %u and max_level %u",
                             w->path, ix->entry_point, ix->max_level);
    } else if (ix->entry_point >= ix->count || kiln_slot_free(ix, ix->entry_point) ||
               ix->levels[ix->entry_point] != ix->max_level) {
        return kiln_fail(w->ctx, KILN_E_INVALID,
                         "%s: cannot save: entry point %u is not a node on the top level %u",
                         w->path, ix->entry_point, ix->max_level);
    }
    for (uint64_t i = 0; i < ix->count; i++)
        if (ix->levels[i] > ix->max_level)
            return kiln_fail(w->ctx, KILN_E_INVALID,
                             "%s: cannot save: node %llu has level %u, above max_level %u", w->path,
                             (unsigned long long)i, ix->levels[i], ix->max_level);
    return KILN_OK;
}

static kiln_status write_sections(writer *w) {
    const struct kiln_index *ix = w->ix;
    const size_t n = (size_t)ix->count;
    kiln_status st;
    /* VECTORS: the f32 rows, none for a compact index without rerank. */
    if ((st = section_begin(w, SEC_VECTORS)) ||
        (ix->vectors && (st = write_array(w, ix->vectors, n * ix->dim, sizeof(float)))) ||
        (st = section_end(w)) || (st = section_begin(w, SEC_LABELS)) ||
        (st = write_array(w, ix->labels, n, sizeof(int64_t))) || (st = section_end(w)) ||
        (st = section_begin(w, SEC_LEVELS)) || (st = write_array(w, ix->levels, n, 1)) ||
        (st = section_end(w)))
        return st;

    if ((st = section_begin(w, SEC_LINKS0)))
        return st;
    for (uint32_t i = 0; i < n; i++)
        if ((st = write_block(w, kiln_links(ix, i, 0), ix->M0, i, 0)))
            return st;
    if ((st = section_end(w)))
        return st;

    /* Node by node, level by level: the order the reader's layout assumes,
     * whatever upper_off the builder used. */
    if ((st = section_begin(w, SEC_UPPER)))
        return st;
    for (uint32_t i = 0; i < n; i++)
        for (unsigned l = 1; l <= ix->levels[i]; l++)
            if ((st = write_block(w, kiln_links(ix, i, l), ix->M, i, l)))
                return st;
    if ((st = section_end(w)) || (st = section_begin(w, SEC_FREE)) ||
        (st = write_array(w, ix->free_list, (size_t)ix->free_count, sizeof(uint32_t))) ||
        (st = section_end(w)))
        return st;
    if (ix->storage == KILN_STORAGE_F32)
        return KILN_OK;
    return (st = section_begin(w, SEC_CODES)) || (st = write_codes(w)) ? st : section_end(w);
}

/* The capacity a save records (decision 12). */
static uint64_t saved_capacity(const struct kiln_index *ix) {
    uint64_t c = ix->capacity > ix->saved_capacity ? ix->capacity : ix->saved_capacity;
    return c > ix->count ? c : ix->count;
}

/* Table and header, written over the placeholders at the start. */
static kiln_status write_front(writer *w) {
    const struct kiln_index *ix = w->ix;
    const uint32_t nsec = saved_sections(ix);
    uint8_t table[KNOWN_SECTIONS * SECTION_ENTRY];
    memset(table, 0, sizeof table);
    for (unsigned k = 0; k < nsec; k++) {
        uint8_t *e = table + k * SECTION_ENTRY;
        kiln_put_u32le(e + S_KIND, w->sec[k].kind);
        kiln_put_u32le(e + S_FLAGS, 0);
        kiln_put_u64le(e + S_OFFSET, w->sec[k].offset);
        kiln_put_u64le(e + S_LENGTH, w->sec[k].length);
        kiln_put_u32le(e + S_CRC, w->sec[k].crc);
    }
    uint8_t hb[HEADER_BYTES];
    memset(hb, 0, sizeof hb);
    memcpy(hb + H_MAGIC, FILE_MAGIC, FILE_MAGIC_LEN);
    const bool compact = ix->storage != KILN_STORAGE_F32;
    kiln_put_u32le(hb + H_VERSION, compact ? FILE_VERSION_CODES : FILE_VERSION);
    kiln_put_u32le(hb + H_HEADER_BYTES, HEADER_BYTES);
    kiln_put_u32le(hb + H_DIM, ix->dim);
    kiln_put_u32le(hb + H_METRIC, (uint32_t)ix->metric);
    kiln_put_u32le(hb + H_M, ix->M);
    kiln_put_u32le(hb + H_M0, ix->M0);
    kiln_put_u32le(hb + H_EF_CONSTRUCTION, ix->ef_construction);
    kiln_put_u32le(hb + H_MAX_LEVEL, ix->max_level);
    kiln_put_u64le(hb + H_COUNT, ix->count);
    kiln_put_u32le(hb + H_ENTRY_POINT, ix->entry_point);
    kiln_put_u32le(hb + H_SECTION_COUNT, nsec);
    kiln_put_u64le(hb + H_SEED, ix->seed);
    kiln_put_u64le(hb + H_FILE_BYTES, kiln_afile_offset(w->af));
    kiln_put_u64le(hb + H_CAPACITY, saved_capacity(ix));
    kiln_put_u64le(hb + H_FREE_COUNT, ix->free_count);
    if (compact) {
        kiln_put_u32le(hb + H_STORAGE, (uint32_t)ix->storage);
        kiln_put_u32le(hb + H_STORAGE_FLAGS, ix->vectors ? STORAGE_RERANK : 0);
    }
    const size_t table_len = (size_t)nsec * SECTION_ENTRY;
    kiln_put_u32le(hb + H_TABLE_CRC, kiln_crc32c(0, table, table_len));
    kiln_put_u32le(hb + H_CRC, kiln_crc32c(0, hb, H_CRC));
    kiln_status st = kiln_afile_pwrite(w->af, table, table_len, HEADER_BYTES);
    return st ? st : kiln_afile_pwrite(w->af, hb, sizeof hb, 0);
}

/* ==== Reader ==== */

/* Version history of the index file (reject anything else, as SQLite does
 * with a newer read-version: a file we cannot fully understand is refused,
 * never half-read):
 *   1 (kiln 0.1) -- 128-byte header, section table, sections VECTORS,
 *                   LABELS, LEVELS, LINKS0, UPPER; flag 0x1 = optional.
 *   2 (kiln 0.1, issue 14) -- header bytes 76..91 hold capacity and
 *                   free_count; section FREE (kind 6) lists the free slots
 *                   (decision 12). Version 1 files are read as before.
 *   3 (kiln 0.1, issue 14 item 7) -- compact storage: header bytes 92..99
 *                   hold storage (F16 or INT8) and its flags (bit 0: f32
 *                   rows kept for rerank); section CODES (kind 7) holds the
 *                   compact rows, VECTORS the f32 rows or nothing (decision
 *                   13). Written for compact storage only.
 */

static kiln_status read_at(const index_file *f, void *buf, size_t len, uint64_t offset) {
    return kiln_pread_full(f->ctx, f->fd, f->path, buf, len, offset);
}

static kiln_status open_file(kiln_ctx *ctx, const char *path, index_file *f, uint64_t *size) {
    f->ctx = ctx;
    f->path = path;
    return kiln_open_regular(ctx, path, &f->fd, size);
}

static kiln_status truncated_header(const index_file *f, uint64_t size) {
    return kiln_fail(f->ctx, KILN_E_FORMAT,
                     "%s: truncated: file is %llu bytes, shorter than the %u-byte header", f->path,
                     (unsigned long long)size, HEADER_BYTES);
}

/* Magic, version, header CRC, size, and every field against kiln's limits. */
static kiln_status check_header(index_file *f, uint64_t size) {
    uint8_t hb[HEADER_BYTES];
    const size_t got = size < HEADER_BYTES ? (size_t)size : HEADER_BYTES;
    kiln_status st = read_at(f, hb, got, 0);
    if (st)
        return st;
    const size_t cmp = got < FILE_MAGIC_LEN ? got : FILE_MAGIC_LEN;
    if (memcmp(hb, FILE_MAGIC, cmp) != 0)
        return kiln_fail(f->ctx, KILN_E_FORMAT, "%s: not a kiln index file (bad magic)", f->path);
    if (got < H_VERSION + 4)
        return truncated_header(f, size);
    /* The version comes before the CRC: another version may lay out (and
     * checksum) its header differently. */
    file_header *h = &f->h;
    h->version = kiln_get_u32le(hb + H_VERSION);
    if (h->version < 1 || h->version > FILE_VERSION_CODES)
        return kiln_fail(f->ctx, KILN_E_VERSION,
                         "%s: index format version %u is not supported (this kiln reads "
                         "versions 1 to %u)",
                         f->path, h->version, FILE_VERSION_CODES);
    if (got < HEADER_BYTES)
        return truncated_header(f, size);
    const uint32_t stored = kiln_get_u32le(hb + H_CRC), computed = kiln_crc32c(0, hb, H_CRC);
    if (stored != computed)
        return kiln_fail(f->ctx, KILN_E_CHECKSUM,
                         "%s: header checksum mismatch (stored 0x%08x, computed 0x%08x)", f->path,
                         stored, computed);
    h->header_crc = stored;

    h->header_bytes = kiln_get_u32le(hb + H_HEADER_BYTES);
    h->dim = kiln_get_u32le(hb + H_DIM);
    h->metric = kiln_get_u32le(hb + H_METRIC);
    h->M = kiln_get_u32le(hb + H_M);
    h->M0 = kiln_get_u32le(hb + H_M0);
    h->ef_construction = kiln_get_u32le(hb + H_EF_CONSTRUCTION);
    h->max_level = kiln_get_u32le(hb + H_MAX_LEVEL);
    h->count = kiln_get_u64le(hb + H_COUNT);
    h->entry_point = kiln_get_u32le(hb + H_ENTRY_POINT);
    h->section_count = kiln_get_u32le(hb + H_SECTION_COUNT);
    h->seed = kiln_get_u64le(hb + H_SEED);
    h->file_bytes = kiln_get_u64le(hb + H_FILE_BYTES);
    h->table_crc = kiln_get_u32le(hb + H_TABLE_CRC);
    const unsigned reserved = h->version == 1   ? H_RESERVED_V1
                              : h->version == 2 ? H_RESERVED_V2
                                                : H_RESERVED;
    h->storage = h->version < 3 ? KILN_STORAGE_F32 : kiln_get_u32le(hb + H_STORAGE);
    h->storage_flags = h->version < 3 ? 0 : kiln_get_u32le(hb + H_STORAGE_FLAGS);
    h->capacity = h->version == 1 ? h->count : kiln_get_u64le(hb + H_CAPACITY);
    h->free_count = h->version == 1 ? 0 : kiln_get_u64le(hb + H_FREE_COUNT);

    if (h->header_bytes != HEADER_BYTES)
        return kiln_fail(f->ctx, KILN_E_FORMAT, "%s: header_bytes is %u, version %u uses %u",
                         f->path, h->header_bytes, h->version, HEADER_BYTES);
    if (h->file_bytes != size)
        return kiln_fail(f->ctx, KILN_E_FORMAT,
                         "%s: file is %llu bytes but its header records %llu (truncated or "
                         "appended to)",
                         f->path, (unsigned long long)size, (unsigned long long)h->file_bytes);
    for (unsigned i = reserved; i < H_CRC; i++)
        if (hb[i])
            return kiln_fail(f->ctx, KILN_E_FORMAT, "%s: reserved header byte %u is not zero",
                             f->path, i);
    if (h->dim < 1 || h->dim > KILN_MAX_DIM)
        return kiln_fail(f->ctx, KILN_E_RANGE, "%s: dim %u is out of range [1, %u]", f->path,
                         h->dim, KILN_MAX_DIM);
    /* Version 3 is compact storage only: f32 is written as version 2. */
    if (h->version >= 3 && ((h->storage != KILN_STORAGE_F16 && h->storage != KILN_STORAGE_INT8) ||
                            (h->storage_flags & ~STORAGE_RERANK)))
        return kiln_fail(f->ctx, KILN_E_FORMAT,
                         "%s: unknown vector storage %u (flags 0x%x) in a version 3 file", f->path,
                         h->storage, h->storage_flags);
    if (!metric_valid(h->metric))
        return kiln_fail(f->ctx, KILN_E_FORMAT, "%s: unknown metric %u", f->path, h->metric);
    if (h->M < 2 || h->M > KILN_MAX_M)
        return kiln_fail(f->ctx, KILN_E_RANGE, "%s: M %u is out of range [2, %u]", f->path, h->M,
                         KILN_MAX_M);
    if (h->M0 != 2 * h->M)
        return kiln_fail(f->ctx, KILN_E_FORMAT, "%s: M0 is %u, expected 2*M = %u", f->path, h->M0,
                         2 * h->M);
    if (h->count >= KILN_NO_NODE)
        return kiln_fail(f->ctx, KILN_E_RANGE, "%s: count %llu exceeds the limit of %u nodes",
                         f->path, (unsigned long long)h->count, KILN_NO_NODE - 1);
    if (h->max_level >= KILN_MAX_LEVELS)
        return kiln_fail(f->ctx, KILN_E_RANGE, "%s: max_level %u is above the limit %u", f->path,
                         h->max_level, KILN_MAX_LEVELS - 1);
    if (h->capacity >= KILN_NO_NODE)
        return kiln_fail(f->ctx, KILN_E_RANGE, "%s: capacity %llu is above the limit %u", f->path,
                         (unsigned long long)h->capacity, KILN_NO_NODE - 1);
    if (h->free_count > h->count)
        return kiln_fail(f->ctx, KILN_E_RANGE, "%s: %llu free slots in an index of %llu", f->path,
                         (unsigned long long)h->free_count, (unsigned long long)h->count);
    const bool no_live = h->count == h->free_count;
    if (no_live && (h->entry_point != KILN_NO_NODE || h->max_level != 0))
        return kiln_fail(f->ctx, KILN_E_FORMAT,
                         "%s: index of no live node with entry point %u and max_level %u "
                         "(expected %u and 0)",
                         f->path, h->entry_point, h->max_level, KILN_NO_NODE);
    if (!no_live && h->entry_point >= h->count)
        return kiln_fail(f->ctx, KILN_E_RANGE, "%s: entry point %u is out of range for %llu nodes",
                         f->path, h->entry_point, (unsigned long long)h->count);
    if (h->section_count < known_sections(h->version) || h->section_count > MAX_SECTIONS)
        return kiln_fail(f->ctx, KILN_E_FORMAT, "%s: section_count %u is out of range [%u, %u]",
                         f->path, h->section_count, known_sections(h->version), MAX_SECTIONS);
    return KILN_OK;
}

/* Reads the table and checks each entry: CRC, flags, alignment, bounds, no
 * overlap, each known kind exactly once with exactly the implied length. */
static kiln_status check_table(index_file *f) {
    const file_header *h = &f->h;
    const uint64_t table_end = HEADER_BYTES + (uint64_t)h->section_count * SECTION_ENTRY;
    if (table_end > h->file_bytes)
        return kiln_fail(f->ctx, KILN_E_FORMAT,
                         "%s: section table of %u entries runs past the end of the file", f->path,
                         h->section_count);
    uint8_t table[MAX_SECTIONS * SECTION_ENTRY];
    const size_t table_len = (size_t)h->section_count * SECTION_ENTRY;
    kiln_status st = read_at(f, table, table_len, HEADER_BYTES);
    if (st)
        return st;
    const uint32_t computed = kiln_crc32c(0, table, table_len);
    if (computed != h->table_crc)
        return kiln_fail(f->ctx, KILN_E_CHECKSUM,
                         "%s: section table checksum mismatch (stored 0x%08x, computed 0x%08x)",
                         f->path, h->table_crc, computed);

    section_entry all[MAX_SECTIONS];
    memset(f->sec, 0, sizeof f->sec);
    for (uint32_t i = 0; i < h->section_count; i++) {
        const uint8_t *e = table + (size_t)i * SECTION_ENTRY;
        section_entry *s = &all[i];
        s->kind = kiln_get_u32le(e + S_KIND);
        s->flags = kiln_get_u32le(e + S_FLAGS);
        s->offset = kiln_get_u64le(e + S_OFFSET);
        s->length = kiln_get_u64le(e + S_LENGTH);
        s->crc = kiln_get_u32le(e + S_CRC);
        s->reserved = kiln_get_u32le(e + S_RESERVED);
        const bool known = s->kind >= 1 && s->kind <= known_sections(h->version);
        if (s->reserved != 0 || (s->flags & ~SECTION_OPTIONAL) != 0 || (known && s->flags != 0))
            return kiln_fail(f->ctx, KILN_E_FORMAT,
                             "%s: section %u (kind %u) has flags 0x%x and reserved 0x%x, not "
                             "allowed in version %u",
                             f->path, i, s->kind, s->flags, s->reserved, h->version);
        if (!known && !(s->flags & SECTION_OPTIONAL))
            return kiln_fail(f->ctx, KILN_E_FORMAT,
                             "%s: section %u has unknown kind %u and is not marked optional",
                             f->path, i, s->kind);
        if (s->offset % SECTION_ALIGN != 0 || s->offset < table_end || s->offset > h->file_bytes ||
            s->length > h->file_bytes - s->offset)
            return kiln_fail(f->ctx, KILN_E_FORMAT,
                             "%s: section %u (kind %u) at byte %llu, %llu bytes, is misaligned "
                             "or outside the data area [%llu, %llu)",
                             f->path, i, s->kind, (unsigned long long)s->offset,
                             (unsigned long long)s->length, (unsigned long long)table_end,
                             (unsigned long long)h->file_bytes);
        for (uint32_t j = 0; j < i; j++) {
            const section_entry *o = &all[j];
            if (s->length && o->length && s->offset < o->offset + o->length &&
                o->offset < s->offset + s->length)
                return kiln_fail(f->ctx, KILN_E_FORMAT, "%s: sections %u and %u overlap", f->path,
                                 j, i);
        }
        if (!known)
            continue;
        if (f->sec[s->kind].kind)
            return kiln_fail(f->ctx, KILN_E_FORMAT, "%s: section %s appears twice", f->path,
                             section_names[s->kind]);
        /* Only bites where size_t is 32 bits: every later size is a size_t. */
        if ((uint64_t)(size_t)s->length != s->length)
            return kiln_fail(f->ctx, KILN_E_RANGE,
                             "%s: section %s of %llu bytes does not fit in this host's memory",
                             f->path, section_names[s->kind], (unsigned long long)s->length);
        f->sec[s->kind] = *s;
    }

    for (uint32_t k = 1; k <= known_sections(h->version); k++) {
        const section_entry *s = &f->sec[k];
        if (!s->kind)
            return kiln_fail(f->ctx, KILN_E_FORMAT, "%s: section %s is missing", f->path,
                             section_names[k]);
        if (k == SEC_UPPER) {
            /* Exact length needs LEVELS; here: whole blocks, at most
             * max_level per node. */
            const uint64_t block = ((uint64_t)h->M + 1) * sizeof(uint32_t);
            if (s->length % block != 0 || s->length / block > h->count * h->max_level)
                return kiln_fail(f->ctx, KILN_E_FORMAT,
                                 "%s: section UPPER is %llu bytes, not a whole number of at "
                                 "most %llu blocks of %llu bytes",
                                 f->path, (unsigned long long)s->length,
                                 (unsigned long long)(h->count * h->max_level),
                                 (unsigned long long)block);
        } else if (s->length != section_expected(h, k)) {
            return kiln_fail(f->ctx, KILN_E_FORMAT,
                             "%s: section %s is %llu bytes, expected %llu for %llu nodes of "
                             "dim %u, M %u",
                             f->path, section_names[k], (unsigned long long)s->length,
                             (unsigned long long)section_expected(h, k),
                             (unsigned long long)h->count, h->dim, h->M);
        }
    }
    /* After the sections, which say more when count itself is forged. */
    if (h->capacity < h->count)
        return kiln_fail(f->ctx, KILN_E_RANGE, "%s: capacity %llu is below the count %llu", f->path,
                         (unsigned long long)h->capacity, (unsigned long long)h->count);
    return KILN_OK;
}

/* Opens path and checks header and table; on success the caller closes f->fd. */
static kiln_status open_index_file(kiln_ctx *ctx, const char *path, index_file *f) {
    uint64_t size = 0;
    kiln_status st = open_file(ctx, path, f, &size);
    if (st)
        return st;
    if ((st = check_header(f, size)) || (st = check_table(f))) {
        close(f->fd);
        return st;
    }
    return KILN_OK;
}

/* Reads section kind into dst in chunks, checks its CRC, then converts
 * elements of elem bytes to host order. dst was sized by kiln_index_alloc
 * (or load_read) from the same count, dim and M that check_table matched
 * the section's length against, so the length fits in dst and in size_t. */
static kiln_status read_section(const index_file *f, uint32_t kind, void *dst, size_t elem) {
    const section_entry *s = &f->sec[kind];
    uint8_t *p = dst;
    size_t left = (size_t)s->length;
    uint64_t offset = s->offset;
    uint32_t crc = 0;
    while (left) {
        const size_t len = left < IO_CHUNK ? left : IO_CHUNK;
        kiln_status st = read_at(f, p, len, offset);
        if (st)
            return st;
        crc = kiln_crc32c(crc, p, len);
        p += len;
        left -= len;
        offset += len;
    }
    if (crc != s->crc)
        return kiln_fail(f->ctx, KILN_E_CHECKSUM, "%s: checksum mismatch in section %s", f->path,
                         section_names[kind]);
    if (KILN_HOST_BIG_ENDIAN && elem > 1)
        swap_array(dst, (size_t)s->length / elem, elem);
    return KILN_OK;
}

/* Every link block: count within its bound, ids within the graph, and
 * upper-level links only to nodes on that level. */
static kiln_status check_links(const index_file *f, const struct kiln_index *ix) {
    for (uint32_t i = 0; i < ix->count; i++) {
        for (unsigned l = 0; l <= ix->levels[i]; l++) {
            const uint32_t *block = kiln_links(ix, i, l);
            const uint32_t bound = l ? ix->M : ix->M0;
            if (block[0] > bound)
                return kiln_fail(f->ctx, KILN_E_RANGE,
                                 "%s: node %u level %u has %u links, above the bound %u", f->path,
                                 i, l, block[0], bound);
            for (uint32_t j = 1; j <= block[0]; j++) {
                const uint32_t v = block[j];
                if (v >= ix->count)
                    return kiln_fail(f->ctx, KILN_E_RANGE,
                                     "%s: node %u level %u links to node %u, beyond the %llu "
                                     "nodes",
                                     f->path, i, l, v, (unsigned long long)ix->count);
                /* Search follows this link on level l and reads v's block
                 * there, which exists only if v is on that level. */
                if (kiln_slot_free(ix, v))
                    return kiln_fail(f->ctx, KILN_E_RANGE,
                                     "%s: node %u level %u links to free slot %u", f->path, i, l,
                                     v);
                if (ix->levels[v] < l)
                    return kiln_fail(f->ctx, KILN_E_RANGE,
                                     "%s: node %u level %u links to node %u, which is only on "
                                     "levels 0..%u",
                                     f->path, i, l, v, ix->levels[v]);
            }
        }
    }
    return KILN_OK;
}

/* Every level within max_level, the UPPER length they imply, and the entry
 * point on the top level: what kiln_links needs to stay inside the pool. */
static kiln_status check_levels(const index_file *f, const uint8_t *levels) {
    const file_header *h = &f->h;
    uint64_t blocks = 0;
    for (uint64_t i = 0; i < h->count; i++) {
        if (levels[i] > h->max_level)
            return kiln_fail(f->ctx, KILN_E_RANGE,
                             "%s: node %llu has level %u, above the header's max_level %u", f->path,
                             (unsigned long long)i, levels[i], h->max_level);
        blocks += levels[i];
    }
    const uint64_t upper_bytes = blocks * ((uint64_t)h->M + 1) * sizeof(uint32_t);
    if (upper_bytes != f->sec[SEC_UPPER].length)
        return kiln_fail(
            f->ctx, KILN_E_FORMAT, "%s: section UPPER is %llu bytes, but LEVELS implies %llu",
            f->path, (unsigned long long)f->sec[SEC_UPPER].length, (unsigned long long)upper_bytes);
    if (h->count > h->free_count && levels[h->entry_point] != h->max_level)
        return kiln_fail(f->ctx, KILN_E_FORMAT,
                         "%s: entry point %u has level %u, not the top level %u", f->path,
                         h->entry_point, levels[h->entry_point], h->max_level);
    return KILN_OK;
}

/* The FREE section's ids (host order): each a slot < count, named once, on
 * level 0 with no level-0 links, and not the entry point. Sets ix->freed
 * and ix->free_list (heap, count and free_count entries: bounded by LEVELS
 * and FREE, which the file holds). */
static kiln_status load_free(const index_file *f, const uint32_t *ids, struct kiln_index *ix) {
    const file_header *h = &f->h;
    if (h->free_count == 0)
        return KILN_OK;
    kiln_status st;
    if ((st = kiln_calloc(f->ctx, (size_t)h->count, "free-slot marks", (void **)&ix->freed)) ||
        (st = kiln_alloc(f->ctx, (size_t)h->free_count * sizeof *ix->free_list, "free list",
                         (void **)&ix->free_list)))
        return st;
    ix->free_list_cap = h->free_count;
    for (uint64_t j = 0; j < h->free_count; j++) {
        const uint32_t v = ids[j];
        if (v >= h->count)
            return kiln_fail(f->ctx, KILN_E_RANGE,
                             "%s: FREE entry %llu is slot %u, beyond the %llu slots", f->path,
                             (unsigned long long)j, v, (unsigned long long)h->count);
        if (ix->freed[v] || ix->levels[v] != 0 || kiln_links(ix, v, 0)[0] != 0 ||
            v == h->entry_point)
            return kiln_fail(f->ctx, KILN_E_FORMAT,
                             "%s: FREE entry %llu, slot %u, is named twice, is the entry point, "
                             "or has a level or links",
                             f->path, (unsigned long long)j, v);
        ix->freed[v] = 1;
        ix->free_list[j] = v;
    }
    ix->free_count = h->free_count;
    return KILN_OK;
}

/* The header fields every index gets, read or mapped. */
static void finish_index(const index_file *f, struct kiln_index *ix) {
    const file_header *h = &f->h;
    ix->ef_construction = h->ef_construction;
    ix->seed = h->seed;
    ix->max_level = h->max_level;
    ix->entry_point = h->entry_point;
    ix->file_header_crc = h->header_crc;
    ix->file_bytes = h->file_bytes;
    ix->saved_capacity = h->capacity;
    ix->dist = kiln_distance_fn(ix->metric);
    kiln_storage_bind(ix, (kiln_storage)h->storage);
    ix->ctx = f->ctx;
}

/* The read path: every section read into heap arrays and CRC-checked as it
 * is read (decision 8). */
static kiln_status load_read(const index_file *f, uint32_t flags, struct kiln_index **out) {
    const file_header *h = &f->h;
    uint8_t *levels = NULL;
    struct kiln_index *ix = NULL;
    kiln_status st = kiln_alloc(f->ctx, (size_t)h->count, "levels", (void **)&levels);
    if (st || (st = read_section(f, SEC_LEVELS, levels, 1)) || (st = check_levels(f, levels))) {
        free(levels);
        return st;
    }
    st = kiln_index_alloc(f->ctx, h->count, h->dim, (kiln_metric)h->metric, h->M, levels, &ix);
    free(levels);
    if (st == KILN_OK && h->storage != KILN_STORAGE_F32)
        st = kiln_storage_alloc(ix, (kiln_storage)h->storage, has_f32(h));
    if (st) {
        kiln_index_free(ix);
        return st;
    }
    if ((ix->codes && (st = read_section(f, SEC_CODES, ix->codes, 1))) ||
        (ix->vectors && (st = read_section(f, SEC_VECTORS, ix->vectors, sizeof(float)))) ||
        (st = read_section(f, SEC_LABELS, ix->labels, sizeof(int64_t))) ||
        (st = read_section(f, SEC_LINKS0, ix->links0, sizeof(uint32_t))) ||
        (st = read_section(f, SEC_UPPER, ix->upper_pool, sizeof(uint32_t)))) {
        kiln_index_free(ix);
        return st;
    }
    if (KILN_HOST_BIG_ENDIAN && ix->codes)
        swap_codes(h->storage, ix->codes, (size_t)h->count, ix->code_bytes);
    finish_index(f, ix);
    uint32_t *ids = NULL;
    if (h->free_count) {
        st = kiln_alloc(f->ctx, (size_t)h->free_count * sizeof *ids, "free list", (void **)&ids);
        if (st == KILN_OK)
            st = read_section(f, SEC_FREE, ids, sizeof(uint32_t));
    }
    if (st == KILN_OK)
        st = load_free(f, ids, ix);
    free(ids);
    if (st || ((flags & KILN_LOAD_VERIFY) && (st = check_links(f, ix)))) {
        kiln_index_free(ix);
        return st;
    }
    *out = ix;
    return KILN_OK;
}

/* CRC of section kind, in place in the mapping. */
static kiln_status verify_mapped(const index_file *f, const uint8_t *base, uint32_t kind) {
    const section_entry *s = &f->sec[kind];
    if (kiln_crc32c(0, base + s->offset, (size_t)s->length) != s->crc)
        return kiln_fail(f->ctx, KILN_E_CHECKSUM, "%s: checksum mismatch in section %s", f->path,
                         section_names[kind]);
    return KILN_OK;
}

/* The mapped path (decisions 7-9): the arrays are used in place; LEVELS is
 * CRC-checked and range-checked, upper_off derived from it on the heap. On
 * success the index owns the mapping; on failure the caller unmaps it. */
static kiln_status open_mapped(const index_file *f, uint8_t *base, uint32_t flags,
                               struct kiln_index **out) {
    const file_header *h = &f->h;
    const uint8_t *levels = base + f->sec[SEC_LEVELS].offset;
    kiln_status st;
    if ((st = verify_mapped(f, base, SEC_LEVELS)) || (st = check_levels(f, levels)))
        return st;
    if (h->free_count && (st = verify_mapped(f, base, SEC_FREE)))
        return st; /* read at every open, like LEVELS */
    if (flags & KILN_LOAD_VERIFY)
        for (uint32_t k = 1; k <= known_sections(h->version); k++)
            if (k != SEC_LEVELS && k != SEC_FREE && (st = verify_mapped(f, base, k)))
                return st;
    struct kiln_index *ix = NULL;
    if ((st = kiln_calloc(f->ctx, sizeof *ix, "index", (void **)&ix)))
        return st;
    /* The table matched every length to count, dim and M, and count < 2^32
     * nodes of these sizes fit in the mapping, so no product overflows. */
    if ((st = kiln_alloc(f->ctx, (size_t)(h->count ? h->count : 1) * sizeof(uint64_t),
                         "upper offsets", (void **)&ix->upper_off))) {
        free(ix);
        return st;
    }
    ix->dim = h->dim;
    ix->metric = (kiln_metric)h->metric;
    ix->M = h->M;
    ix->M0 = h->M0;
    ix->count = h->count;
    ix->vectors = has_f32(h) ? (float *)(void *)(base + f->sec[SEC_VECTORS].offset) : NULL;
    ix->codes = h->storage != KILN_STORAGE_F32 ? base + f->sec[SEC_CODES].offset : NULL;
    ix->labels = (int64_t *)(void *)(base + f->sec[SEC_LABELS].offset);
    ix->levels = base + f->sec[SEC_LEVELS].offset;
    ix->links0 = (uint32_t *)(void *)(base + f->sec[SEC_LINKS0].offset);
    ix->upper_pool = (uint32_t *)(void *)(base + f->sec[SEC_UPPER].offset);
    ix->upper_len = kiln_upper_layout(ix->levels, h->count, h->M, ix->upper_off);
    ix->capacity = h->count;
    ix->upper_cap = ix->upper_len;
    finish_index(f, ix);
    if ((st = load_free(f, (const uint32_t *)(const void *)(base + f->sec[SEC_FREE].offset), ix)) ||
        ((flags & KILN_LOAD_VERIFY) && (st = check_links(f, ix)))) {
        kiln_live_free(ix);
        free(ix->upper_off);
        free(ix);
        return st;
    }
    ix->map = base;
    ix->map_bytes = (size_t)h->file_bytes;
    kiln_index_locks_init(ix);
    *out = ix;
    return KILN_OK;
}

/* ==== Public ==== */

static kiln_status save_index(const kiln_index *index, const char *path);

kiln_status kiln_index_save(const kiln_index *index, const char *path) {
    if (!index)
        return KILN_E_ARG;
    kiln_writer_begin(index);
    const kiln_status st = save_index(index, path);
    kiln_writer_end(index);
    return st;
}

static kiln_status save_index(const kiln_index *index, const char *path) {
    if (!path || !*path)
        return kiln_fail(index->ctx, KILN_E_ARG, "saving an index: empty output path");
    writer w = {.ix = index, .ctx = index->ctx, .path = path};
    kiln_status st = check_savable(&w);
    if (st)
        return st;
    if ((st = kiln_alloc(w.ctx, IO_CHUNK, "index file buffer", (void **)&w.stage)))
        return st;
    if ((st = kiln_afile_open(w.ctx, path, &w.af))) {
        free(w.stage);
        return st;
    }
    /* Placeholders for the header and table, overwritten by write_front. */
    static const uint8_t zeros[HEADER_BYTES + KNOWN_SECTIONS * SECTION_ENTRY];
    if ((st =
             kiln_afile_write(w.af, zeros, HEADER_BYTES + saved_sections(index) * SECTION_ENTRY)) ||
        (st = write_sections(&w)) || (st = write_front(&w))) {
        kiln_afile_abort(w.af);
        free(w.stage);
        return st;
    }
    free(w.stage);
    return kiln_afile_commit(w.af);
}

kiln_status kiln_index_open(kiln_ctx *ctx, const char *path, uint32_t flags, kiln_index **out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "loading an index: the result pointer is NULL");
    *out = NULL;
    if (!path || !*path)
        return kiln_fail(ctx, KILN_E_ARG, "loading an index: empty path");
    const uint32_t known = KILN_LOAD_VERIFY | KILN_LOAD_READ | KILN_LOAD_POPULATE;
    if (flags & ~known)
        return kiln_fail(ctx, KILN_E_ARG, "loading an index: unknown flags 0x%x", flags & ~known);
    index_file f;
    kiln_status st = open_index_file(ctx, path, &f);
    if (st)
        return st;
    void *map = MAP_FAILED;
    /* check_table made every section length fit in size_t; the whole file
     * must too, to be mapped (decision 8: else it is read). */
    if (!KILN_HOST_BIG_ENDIAN && !(flags & KILN_LOAD_READ) &&
        (uint64_t)(size_t)f.h.file_bytes == f.h.file_bytes)
        map = mmap(NULL, (size_t)f.h.file_bytes, PROT_READ,
                   MAP_SHARED | ((flags & KILN_LOAD_POPULATE) ? MAP_POPULATE_FLAG : 0), f.fd, 0);
    if (map != MAP_FAILED) {
        st = open_mapped(&f, map, flags, out);
        if (st)
            munmap(map, (size_t)f.h.file_bytes);
    } else {
        st = load_read(&f, flags, out);
    }
    close(f.fd); /* a mapping keeps the file open */
    return st;
}

kiln_status kiln_index_load(kiln_ctx *ctx, const char *path, kiln_index **out) {
    return kiln_index_open(ctx, path, 0, out);
}

kiln_status kiln_index_info_read(kiln_ctx *ctx, const char *path, kiln_index_info *out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "reading an index header: the result pointer is NULL");
    memset(out, 0, sizeof *out);
    if (!path || !*path)
        return kiln_fail(ctx, KILN_E_ARG, "reading an index header: empty path");
    index_file f;
    kiln_status st = open_index_file(ctx, path, &f);
    if (st)
        return st;
    close(f.fd);
    out->format_version = f.h.version;
    out->dim = f.h.dim;
    out->metric = (kiln_metric)f.h.metric;
    out->M = f.h.M;
    out->M0 = f.h.M0;
    out->ef_construction = f.h.ef_construction;
    out->count = f.h.count;
    out->max_level = f.h.max_level;
    out->entry_point = f.h.entry_point;
    out->seed = f.h.seed;
    out->file_bytes = f.h.file_bytes;
    out->header_crc32c = f.h.header_crc;
    out->capacity = f.h.capacity;
    out->free_slots = f.h.free_count;
    out->storage = (kiln_storage)f.h.storage;
    out->rerank = f.h.storage != KILN_STORAGE_F32 && has_f32(&f.h);
    return KILN_OK;
}
