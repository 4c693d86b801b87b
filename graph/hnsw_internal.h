/* hnsw_internal.h -- the in-memory HNSW graph behind kiln_index, shared by
 * the builders (graph/hnsw_insert.c, and graph/merge.c for the device
 * pipeline of host/device_build.c), the search module, the validator and
 * the index file reader/writer.
 *
 * Layout (after hnswlib, with ids as uint32_t like its tableint):
 *  - vectors: count rows of dim floats, row-major, 64-byte aligned; COS rows
 *    are stored normalised.
 *  - codes (storage F16 or INT8, graph/storage.c): count rows of code_bytes,
 *    the compact rows every graph distance reads; vectors is then NULL, or
 *    with rerank the exact rows that search re-scores its candidates with.
 *  - level 0: one fixed-stride block per node, [n_links, id_0 .. id_{M0-1}],
 *    so node i's list is at links0 + i * (1 + M0).
 *  - upper levels: node i with level L > 0 owns L consecutive blocks of
 *    [n_links, id_0 .. id_{M-1}] (for levels 1..L) in upper_pool, starting at
 *    upper_off[i] (in uint32_t units); upper_off[i] is KILN_NO_UPPER when L == 0.
 *  - labels: the user's id of each node (row number by default).
 *  - free slots (graph/hnsw_live.c): a deleted node's slot keeps its id but
 *    holds nothing: level 0, no links, a zero vector, label -1, freed[i] = 1,
 *    and its id on free_list until an add reuses it. count counts slots, live
 *    or free; count - free_count are live. No link ever names a free slot.
 */
#ifndef KILN_HNSW_INTERNAL_H
#define KILN_HNSW_INTERNAL_H

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.h"
#include "../common/codec_internal.h"
#include "../common/distance_internal.h"

#define KILN_NO_NODE  UINT32_MAX
#define KILN_NO_UPPER UINT64_MAX
#define KILN_MAX_M    1024 /* bound on M accepted from params and files */
#define KILN_MAX_DIM  65536

struct kiln_index {
    kiln_ctx *ctx;
    uint32_t dim;
    kiln_metric metric;
    uint32_t M;  /* upper-level degree bound */
    uint32_t M0; /* level-0 degree bound: 2M (M in the upper levels' compact copy,
                    graph/hnsw_insert.c decision 6) */
    uint32_t ef_construction;
    uint64_t seed;
    uint64_t count;              /* slots in the graph: live nodes plus free_count free ones */
    uint32_t max_level;          /* top level; 0 when count == 0 */
    uint32_t entry_point;        /* a node on max_level; KILN_NO_NODE when empty */
    kiln_dist_fn dist;           /* kiln_distance_fn(metric) */
    kiln_storage storage;        /* what graph distances read: vectors (F32) or codes */
    size_t code_bytes;           /* bytes per row of codes; 0 for F32 */
    kiln_code_dist_fn code_dist; /* f32 query vs a row of codes; NULL for F32 */
    kiln_code_pair_fn code_pair; /* a row of codes vs another; NULL for F32 */
    uint8_t *codes; /* count rows of code_bytes (F16, INT8): kiln_alloc_aligned, or inside
                       map; NULL for F32 */

    float *vectors;       /* count * dim: kiln_alloc_aligned, or inside vectors_map (then
                             read-only, and rows may be only 4-byte aligned) */
    int64_t *labels;      /* count */
    uint8_t *levels;      /* count; each <= max_level */
    uint32_t *links0;     /* count * (1 + M0), kiln_alloc_aligned */
    uint64_t *upper_off;  /* count */
    uint32_t *upper_pool; /* upper_len uint32_t */
    uint64_t upper_len;
    /* A mapped index (graph/index_file.c): vectors, labels, levels, links0
     * and upper_pool point into this read-only mapping of map_bytes, which
     * kiln_index_free unmaps; only upper_off is heap. NULL when every array
     * is heap. Nothing may write through those pointers (PROT_READ): only
     * builders write links, and they work on indexes they allocated. */
    void *map;
    size_t map_bytes;
    /* An opened index: its file's size and header CRC-32C (which vouches for
     * every section), what a shard set's manifest records; 0 for a built one. */
    uint64_t file_bytes;
    uint32_t file_header_crc;

    /* When vectors live in a file mapping rather than on the heap: a shared
     * mapping of an unnamed file (kiln_index_spill_storage) or a private
     * read-only mapping of the build's input (kiln_index_adopt_vectors);
     * vectors points inside it, and kiln_index_free unmaps it. */
    void *vectors_map;
    size_t vectors_map_len;
    /* Non-zero when links0 is a shared mapping of an unnamed file: its
     * length, for munmap. */
    size_t links0_spill_len;

    /* Live indexes (graph/hnsw_live.c). A writer (kiln_index_add, _delete,
     * _update) owns every field of the index while it runs: it may move the
     * arrays (capacity growth, the copy of a mapped index), rewrite link
     * blocks in place and drop the scratch pool, so no search may run
     * meanwhile. */
    uint64_t capacity;       /* slots the heap arrays hold (>= count); == count when mapped */
    uint64_t saved_capacity; /* the capacity in the file it was opened from (0 if none): the
                                first growth reserves at least this, a save records
                                max(capacity, saved_capacity) */
    uint64_t upper_cap;      /* uint32_t the upper_pool allocation holds (>= upper_len) */
    uint8_t *freed;          /* capacity marks, 1 = free slot; NULL when no slot was ever freed */
    uint32_t *free_list;     /* free slots, the next one to reuse last; free_count entries */
    uint64_t free_count;     /* free slots */
    uint64_t free_list_cap;  /* entries free_list holds */
    struct kiln_label_map *label_map; /* label -> slot of the live nodes; built on first use */

    /* Readers and the writer (graph/hnsw_live.c decision 8). A writer holds
     * `writer` for its whole call, which makes it the only thread that
     * changes the index, so it reads without rw and takes rw exclusively
     * only to change what a search can read (kiln_commit_*). A search query
     * holds rw shared; the readers of the whole index (check, save, stats,
     * export) hold `writer`, so they see whole calls. write_threads: the
     * writer's threads (kiln_index_set_threads; 0 = all cores). */
    pthread_rwlock_t rw;
    pthread_mutex_t writer;
    uint32_t write_threads;

    _Atomic(void *) scratch_pool; /* graph/hnsw_search.c: reusable per-thread search state,
                                     created once on first search */
    kiln_build_report *report;    /* set by graph/hnsw_build.c; NULL for a loaded index */
    uint64_t *rank_bytes;         /* report->rank_bytes_sent of a collective build, or NULL */
};

static inline size_t kiln_links0_stride(const struct kiln_index *ix) { return (size_t)ix->M0 + 1; }

/* The link block [n, ids...] of node on level (level <= levels[node]). */
static inline uint32_t *kiln_links(const struct kiln_index *ix, uint32_t node, unsigned level) {
    if (level == 0)
        return ix->links0 + (size_t)node * kiln_links0_stride(ix);
    return ix->upper_pool + ix->upper_off[node] + (size_t)(level - 1) * (ix->M + 1);
}

/* Node's f32 row: F32 storage, or the rerank copy (ix->vectors non-NULL). */
static inline const float *kiln_vector(const struct kiln_index *ix, uint32_t node) {
    return ix->vectors + (size_t)node * ix->dim;
}

/* Node's compact row (storage F16 or INT8). */
static inline const void *kiln_code(const struct kiln_index *ix, uint32_t node) {
    return ix->codes + (size_t)node * ix->code_bytes;
}

/* The distance every graph comparison uses (search, insertion, pruning,
 * merge, repair): the metric's, with NaN taken as +inf. A vector with a NaN
 * component (kiln build --allow-nonfinite) then ranks after every finite
 * one instead of making each comparison with it false, which poisoned the
 * beam's bound. One compare and select per distance, measured free (see
 * graph/hnsw_search.c decision 5). */
static inline float kiln_node_dist(const struct kiln_index *ix, const float *q, uint32_t node) {
    const float d = ix->storage == KILN_STORAGE_F32
                        ? ix->dist(q, kiln_vector(ix, node), ix->dim)
                        : ix->code_dist(q, kiln_code(ix, node), ix->dim);
    return d == d ? d : (float)INFINITY;
}

/* The distance between two nodes, on the rows graph distances read (for
 * compact storage, row against row: common/codec.c decision 3). */
static inline float kiln_pair_dist(const struct kiln_index *ix, uint32_t a, uint32_t b) {
    const float d = ix->storage == KILN_STORAGE_F32
                        ? ix->dist(kiln_vector(ix, a), kiln_vector(ix, b), ix->dim)
                        : ix->code_pair(kiln_code(ix, a), kiln_code(ix, b), ix->dim);
    return d == d ? d : (float)INFINITY;
}

/* Node's row as an f32 query: the row itself for F32, else decoded into buf
 * (dim floats), which is returned. */
static inline const float *kiln_node_query(const struct kiln_index *ix, uint32_t node, float *buf) {
    if (ix->storage == KILN_STORAGE_F32)
        return kiln_vector(ix, node);
    kiln_decode_row(ix->storage, kiln_code(ix, node), ix->dim, buf);
    return buf;
}

/* Asks for node's whole row (up to its first 1 KiB) to be fetched into
 * cache, for loops that know the next few nodes they will read. */
static inline void kiln_prefetch_vector(const struct kiln_index *ix, uint32_t node) {
    const bool f32 = ix->storage == KILN_STORAGE_F32;
    const char *p = f32 ? (const char *)kiln_vector(ix, node) : (const char *)kiln_code(ix, node);
    const size_t bytes = f32 ? (size_t)ix->dim * sizeof(float) : ix->code_bytes;
    for (size_t off = 0; off < bytes && off < 1024; off += 64)
        __builtin_prefetch(p + off);
}

/* Allocates an empty index of `count` nodes with the given per-node levels
 * (copied; NULL = all 0): vectors, labels, link blocks zeroed, upper_off laid
 * out. The caller fills vectors/labels and links. */
kiln_status kiln_index_alloc(kiln_ctx *ctx, uint64_t count, uint32_t dim, kiln_metric metric,
                             uint32_t M, const uint8_t *levels, struct kiln_index **out);
/* The same with level-0 lists of M0 links instead of 2M (M <= M0 <= 2M):
 * graph/hnsw_insert.c builds the upper levels as an index whose level 0 is
 * level 1, of M links. */
kiln_status kiln_index_alloc_m0(kiln_ctx *ctx, uint64_t count, uint32_t dim, kiln_metric metric,
                                uint32_t M, uint32_t M0, const uint8_t *levels,
                                struct kiln_index **out);

/* Moves the (still empty) vectors and level-0 links of ix into shared
 * mappings of unnamed files in dir (O_TMPFILE, or a file unlinked at once):
 * their pages are then the page cache's, which the kernel writes back and
 * drops under pressure, so they do not count against a build's memory
 * budget; the files vanish with the mappings. Both arrays must hold no data
 * yet. */
kiln_status kiln_index_spill_storage(struct kiln_index *ix, const char *dir);

/* Makes rows (count x dim floats inside the read-only mapping map of len
 * bytes, which ix now owns and unmaps) the vectors of ix, in place of its
 * still empty heap array: graph/hnsw_build.c decision 5. Nothing may write
 * them afterwards (COS normalises, so it never adopts). */
void kiln_index_adopt_vectors(struct kiln_index *ix, void *map, size_t len, const float *rows);

/* Lays out the upper-level pool for count nodes of the given levels (each
 * < KILN_MAX_LEVELS, checked by the caller): upper_off[i] (count entries)
 * gets node i's first block, KILN_NO_UPPER for level 0. Returns the pool's
 * length in uint32_t. */
uint64_t kiln_upper_layout(const uint8_t *levels, uint64_t count, uint32_t M, uint64_t *upper_off);

/* Samples per-node levels: floor(-ln(U) / ln(M)), capped at KILN_MAX_LEVELS-1,
 * from a kiln_rng seeded with seed. Deterministic for (count, M, seed). */
void kiln_sample_levels(uint8_t *levels, uint64_t count, uint32_t M, uint64_t seed);

/* Frees the search scratch pool (kiln_index_free calls it). */
void kiln_scratch_pool_free(struct kiln_index *ix);

/* Vectors with a NaN or an infinity (graph/validate.c); *first gets the
 * first such node, UINT64_MAX when none. */
uint64_t kiln_index_nonfinite(const struct kiln_index *ix, uint64_t *first);

/* Marks seen[v] = 1 for every node reachable from start on level 0 that was
 * not marked yet, by a BFS over threads (graph/validate.c decision 3), and
 * returns how many it marked: 0 when start was marked already. queue has
 * ix->count slots. */
uint64_t kiln_l0_mark_reachable(const struct kiln_index *ix, uint8_t *seen, uint32_t *queue,
                                uint32_t start, int threads);

/* Non-zero when slot i is free (deleted, not yet reused). */
static inline int kiln_slot_free(const struct kiln_index *ix, uint64_t i) {
    return ix->freed && ix->freed[i];
}

/* Makes the reader-writer lock and writer mutex of a new index (both
 * places that allocate one call it). */
void kiln_index_locks_init(struct kiln_index *ix);

/* A search query's hold on the index: no writer changes what it reads
 * meanwhile (decision 8 of graph/hnsw_live.c). Never nested: the lock
 * prefers a waiting writer, so a thread that takes it twice can deadlock. */
static inline void kiln_read_begin(const struct kiln_index *ix) {
    pthread_rwlock_rdlock((pthread_rwlock_t *)(uintptr_t)&ix->rw);
}
static inline void kiln_read_end(const struct kiln_index *ix) {
    pthread_rwlock_unlock((pthread_rwlock_t *)(uintptr_t)&ix->rw);
}
/* A writer's call, or a reader of the whole index: no writer runs meanwhile. */
static inline void kiln_writer_begin(const struct kiln_index *ix) {
    pthread_mutex_lock((pthread_mutex_t *)(uintptr_t)&ix->writer);
}
static inline void kiln_writer_end(const struct kiln_index *ix) {
    pthread_mutex_unlock((pthread_mutex_t *)(uintptr_t)&ix->writer);
}
/* The writer's exclusive section, around each change readers could see: a
 * link list written, a slot filled or freed, an array moved. Builders take
 * it too (uncontended, one atomic), so the code that writes links is the
 * same for a build and for a live index. */
static inline void kiln_commit_begin(struct kiln_index *ix) { pthread_rwlock_wrlock(&ix->rw); }
static inline void kiln_commit_end(struct kiln_index *ix) { pthread_rwlock_unlock(&ix->rw); }

/* Frees the vectors (heap or file mapping), level 0 (heap or spill), labels
 * and levels of an index that is not a mapped file. */
void kiln_index_free_arrays(struct kiln_index *ix);

/* Frees what graph/hnsw_live.c adds to an index (kiln_index_free calls it). */
void kiln_live_free(struct kiln_index *ix);

/* Bytes of heap the index holds: not its spilled mappings, nor a mapped
 * index's mapping (page cache, shared and droppable). */
uint64_t kiln_index_memory(const struct kiln_index *ix);

/* ==== Compact storage (graph/storage.c) ==== */

/* Bytes per slot of the index's vectors: its rows, plus f32 with rerank. */
uint64_t kiln_vector_bytes(const struct kiln_index *ix);
/* Sets storage, code_bytes and the code kernels for storage s. */
void kiln_storage_bind(struct kiln_index *ix, kiln_storage s);
/* Gives an F32 index of no data yet (the reader's) compact rows: codes for
 * capacity slots, and the f32 vectors freed unless keep_f32. */
kiln_status kiln_storage_alloc(struct kiln_index *ix, kiln_storage s, bool keep_f32);
/* Whether the F32 index's rows fit storage s (F16: no finite component
 * beyond 65504), the error naming the first row that does not. */
kiln_status kiln_storage_fits(const struct kiln_index *ix, kiln_storage s);
/* Converts a built F32 index to storage s: every row encoded, the f32 rows
 * dropped unless keep_f32 (then search re-scores with them). F16 refuses
 * a finite component beyond 65504, naming the node. */
kiln_status kiln_index_compress(struct kiln_index *ix, kiln_storage s, bool keep_f32);
/* Checks n rows for what the index's storage cannot hold (F16: a finite
 * |x| > 65504), naming `what` and the row. */
kiln_status kiln_storage_check_rows(const struct kiln_index *ix, const float *rows, size_t n,
                                    const char *what);
/* Writes n rows into slots (normalised first for COS): vectors and codes as
 * the storage has them. scratch holds dim floats: the row is normalised and
 * encoded there when the index keeps no f32 rows (the caller allocates it
 * before its commit, so nothing can fail inside). */
void kiln_storage_put(struct kiln_index *ix, const float *rows, const uint32_t *slots, size_t n,
                      float *scratch);
/* Zeroes slot's rows (a free slot). */
void kiln_storage_clear(struct kiln_index *ix, uint32_t slot);
/* Whether node's row (the one graph distances read) has a NaN or an
 * infinity. */
bool kiln_node_nonfinite(const struct kiln_index *ix, uint32_t node);

#endif /* KILN_HNSW_INTERNAL_H */
