/* fuzz_index_file.c -- fuzz target for the index file reader
 * (graph/index_file.c).
 *
 * Each input is written to a temporary file and read with
 * kiln_index_info_read and kiln_index_open in its three ways: mapped (the
 * default), read into memory (KILN_LOAD_READ) and verified
 * (KILN_LOAD_VERIFY). Failing cleanly is fine; crashing, leaking or reading
 * out of bounds is not. The target checks what each open promises:
 *  - a mapped open verifies only what bounds memory reads, so whatever it
 *    accepts must search safely: the validator runs to an answer, and a
 *    search runs even when the validator rejects the graph (the read path's
 *    heap arrays put ASan's redzones where the mapping has none, so the
 *    same search on the read copy catches a read past an array);
 *  - what the read or the verifying open accepts, the mapped open accepts
 *    too (they check a superset), and it searches to the same labels;
 *  - info_read accepted the same file and agrees with the index;
 *  - the writer accepts what the verifying open accepts, and save is
 *    deterministic: saving that index, loading the copy and saving again
 *    gives the same bytes.
 *
 * Design decisions:
 *  1. The input goes through a real file, named by pid in $KILN_TEST_TMP
 *     (else /tmp), because the reader uses open/fstat/mmap/pread, and
 *     parallel ctest runs or libFuzzer workers must not share it. Each run
 *     frees its indexes (unmapping the file) before the next input is
 *     written over it.
 *  2. Seeds are small valid index files: hand-made graphs (count 0, 1 and a
 *     few nodes, several levels, all three metrics, M = 2 and 3) saved with
 *     kiln_index_save, plus one built by kiln_index_build and the same after
 *     deletes and adds (a version 2 file with free slots), so mutations
 *     start past the header checks and reach sections, links, levels and
 *     the free list; and built with f16, int8 and int8 with rerank storage
 *     (version 3 files, section CODES), one of them after deletes and adds.
 *  3. Every input is tried twice: as given, and with its CRCs recomputed
 *     from its own section table, so mutations of counts, offsets, levels
 *     and link ids reach the checks behind the checksums.
 *  4. Any broken promise calls abort(), which both libFuzzer and the replay
 *     driver report as a failure.
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
#include "../../graph/hnsw_internal.h"
#include "../../common/crc32c_internal.h"
#include "../../common/rng_internal.h"

/* ==== Helpers ==== */

/* Saves ix to the out path and returns the bytes (NULL when the save fails). */
static uint8_t *save_bytes(const kiln_index *ix, size_t *size) {
    if (kiln_index_save(ix, fuzz_path("out")) != KILN_OK)
        return NULL;
    return read_file(fuzz_path("out"), size);
}

/* One search for node 0's vector; labels gets FUZZ_K ids. */
static void search_labels(const kiln_index *ix, int64_t *labels) {
    const size_t dim = kiln_index_dim(ix);
    float *q = calloc(dim ? dim : 1, sizeof *q);
    if (!q)
        abort();
    const float *v = ix->count ? kiln_node_query(ix, 0, q) : q; /* decoded into q when compact */
    if (v != q)
        memcpy(q, v, dim * sizeof *q);
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    sp.k = FUZZ_K;
    sp.ef = FUZZ_EF;
    sp.threads = 1;
    if (kiln_index_search(ix, q, 1, &sp, labels, NULL) != KILN_OK)
        abort();
    free(q);
}

/* The promises of an index that the verifying open accepted. */
static void check_verified(kiln_ctx *ctx, const kiln_index *ix) {
    size_t n1 = 0, n2 = 0;
    uint8_t *first = save_bytes(ix, &n1);
    if (!first)
        abort(); /* the writer refused what the reader accepted */
    kiln_index *again = NULL;
    if (kiln_index_load(ctx, fuzz_path("out"), &again) != KILN_OK)
        abort();
    uint8_t *second = save_bytes(again, &n2);
    if (!second || n1 != n2 || memcmp(first, second, n1) != 0)
        abort();
    free(first);
    free(second);
    kiln_index_free(again);
}

/* Recomputes the section, table and header CRCs (offsets from
 * docs/FORMAT.md) wherever the input's own table says they are, so a
 * mutated field gets past the checksums and reaches the checks behind them;
 * otherwise almost every mutation would stop at a CRC mismatch. */
static void fix_crcs(uint8_t *buf, size_t size) {
    if (size < 128)
        return;
    uint32_t sections = kiln_get_u32le(buf + 52);
    if (sections > 64)
        sections = 64;
    const size_t table = (size_t)sections * 32;
    if (128 + table <= size) {
        for (uint32_t i = 0; i < sections; i++) {
            uint8_t *e = buf + 128 + (size_t)i * 32;
            const uint64_t off = kiln_get_u64le(e + 8), len = kiln_get_u64le(e + 16);
            if (off <= size && len <= size - off)
                kiln_put_u32le(e + 24, kiln_crc32c(0, buf + off, (size_t)len));
        }
        kiln_put_u32le(buf + 72, kiln_crc32c(0, buf + 128, table));
    }
    kiln_put_u32le(buf + 124, kiln_crc32c(0, buf, 124));
}

static void run_one(kiln_ctx *ctx, const uint8_t *data, size_t size) {
    const char *path = fuzz_path("in");
    if (!write_file(path, data, size))
        return;
    kiln_index_info info;
    const kiln_status info_st = kiln_index_info_read(ctx, path, &info);
    kiln_index *mapped = NULL, *read = NULL, *verified = NULL;
    const bool map_ok = kiln_index_open(ctx, path, 0, &mapped) == KILN_OK;
    const bool read_ok = kiln_index_open(ctx, path, KILN_LOAD_READ, &read) == KILN_OK;
    const bool verify_ok = kiln_index_open(ctx, path, KILN_LOAD_VERIFY, &verified) == KILN_OK;
    if ((read_ok || verify_ok) && !map_ok)
        abort(); /* the mapped open refused what a stricter one accepted */
    if (map_ok) {
        if (info_st != KILN_OK || info.count - info.free_slots != kiln_index_count(mapped) ||
            info.dim != kiln_index_dim(mapped) || info.metric != kiln_index_metric(mapped))
            abort();
        kiln_index_check(mapped);
        int64_t a[FUZZ_K], b[FUZZ_K];
        search_labels(mapped, a);
        if (read_ok) {
            search_labels(read, b);
            if (memcmp(a, b, sizeof a) != 0)
                abort();
        }
    }
    if (verify_ok)
        check_verified(ctx, verified);
    kiln_index_free(mapped);
    kiln_index_free(read);
    kiln_index_free(verified);
}

/* ==== Target ==== */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kiln_ctx *ctx = fuzz_ctx();
    run_one(ctx, data, size);
    uint8_t *fixed = malloc(size ? size : 1);
    if (!fixed)
        abort();
    memcpy(fixed, data, size);
    fix_crcs(fixed, size);
    if (memcmp(fixed, data, size) != 0)
        run_one(ctx, fixed, size);
    free(fixed);
    return 0;
}

/* ==== Seeds ==== */

/* A small valid graph: a level-0 ring plus random links, random links among
 * the nodes of each upper level. */
static struct kiln_index *seed_graph(uint64_t count, uint32_t dim, kiln_metric metric, uint32_t M,
                                     uint64_t seed) {
    uint8_t levels[64] = {0};
    kiln_sample_levels(levels, count, M, seed);
    if (count >= 3)
        levels[count - 1] = 2;
    struct kiln_index *ix = NULL;
    if (kiln_index_alloc(fuzz_ctx(), count, dim, metric, M, levels, &ix) != KILN_OK)
        abort();
    kiln_rng rng;
    kiln_rng_seed(&rng, seed);
    for (uint64_t i = 0; i < count * dim; i++)
        ix->vectors[i] = (float)kiln_rng_uniform(&rng);
    for (uint64_t i = 0; i < count; i++)
        ix->labels[i] = (int64_t)(i * 10 + 3);
    for (uint32_t l = 0; l <= ix->max_level; l++) {
        const uint32_t bound = l ? M : 2 * M;
        for (uint32_t i = 0; i < count; i++) {
            if (ix->levels[i] < l)
                continue;
            uint32_t *block = kiln_links(ix, i, l);
            uint32_t n = 0;
            if (l == 0 && count >= 2)
                block[1 + n++] = (uint32_t)((i + 1) % count);
            for (uint32_t t = 0; t < 4 * bound && n < bound; t++) {
                const uint32_t v = (uint32_t)kiln_rng_below(&rng, count);
                bool ok = v != i && ix->levels[v] >= l && kiln_rng_below(&rng, 2);
                for (uint32_t j = 0; j < n && ok; j++)
                    ok = block[1 + j] != v;
                if (ok)
                    block[1 + n++] = v;
            }
            block[0] = n;
        }
    }
    for (uint32_t i = 0; i < count && ix->entry_point == KILN_NO_NODE; i++)
        if (ix->levels[i] == ix->max_level)
            ix->entry_point = i;
    ix->ef_construction = 20;
    ix->seed = seed;
    return ix;
}

/* live: deletes and adds after the build; storage and rerank as in
 * kiln_build_params (version 3 files for f16 and int8). */
static struct kiln_index *seed_built(bool live, kiln_storage storage, int rerank) {
    float v[30 * 4];
    kiln_rng rng;
    kiln_rng_seed(&rng, 77);
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        v[i] = (float)kiln_rng_uniform(&rng);
    kiln_build_params bp;
    kiln_build_params_init(&bp);
    bp.method = KILN_METHOD_INSERT;
    bp.M = 3;
    bp.ef_construction = 16;
    bp.threads = 1;
    bp.seed = 5;
    bp.storage = storage;
    bp.rerank = rerank;
    kiln_index *ix = NULL;
    if (kiln_index_build(fuzz_ctx(), v, 30, 4, &bp, &ix) != KILN_OK)
        abort();
    /* A version 2 file with free slots (FREE and a capacity), one of them
     * reused: delete 6 labels (the entry point's among them), add 2 back. */
    int64_t gone[6] = {3, 7, 11, 15, 19, ix->labels[ix->entry_point]};
    const size_t ngone = gone[5] % 4 == 3 && gone[5] < 20 ? 5 : 6; /* already listed */
    if (live && (kiln_index_delete(ix, gone, ngone) != KILN_OK ||
                 kiln_index_add(ix, v, NULL, 2) != KILN_OK))
        abort();
    return ix;
}

int kiln_fuzz_seed(size_t i, uint8_t **buf, size_t *len) {
    static const struct {
        uint64_t count;
        uint32_t dim;
        kiln_metric metric;
        uint32_t M;
    } graphs[] = {{0, 3, KILN_METRIC_L2, 2},
                  {1, 2, KILN_METRIC_IP, 2},
                  {5, 3, KILN_METRIC_COS, 2},
                  {20, 4, KILN_METRIC_L2, 3},
                  {40, 2, KILN_METRIC_IP, 2}};
    /* Built: f32, f32 after deletes and adds, then the compact storages
     * (f16, int8, int8 with rerank, int8 after deletes and adds). */
    static const struct {
        bool live;
        kiln_storage storage;
        int rerank;
    } built[] = {{false, KILN_STORAGE_F32, 0},  {true, KILN_STORAGE_F32, 0},
                 {false, KILN_STORAGE_F16, 0},  {false, KILN_STORAGE_INT8, 0},
                 {false, KILN_STORAGE_INT8, 1}, {true, KILN_STORAGE_INT8, 0}};
    const size_t ngraphs = sizeof graphs / sizeof graphs[0],
                 nbuilt = sizeof built / sizeof built[0];
    if (i >= ngraphs + nbuilt)
        return 0;
    struct kiln_index *ix =
        i < ngraphs
            ? seed_graph(graphs[i].count, graphs[i].dim, graphs[i].metric, graphs[i].M, 100 + i)
            : seed_built(built[i - ngraphs].live, built[i - ngraphs].storage,
                         built[i - ngraphs].rerank);
    if (kiln_index_save(ix, fuzz_path("seed")) != KILN_OK)
        abort();
    kiln_index_free(ix);
    *buf = read_file(fuzz_path("seed"), len);
    if (!*buf)
        abort();
    unlink(fuzz_path("seed"));
    return 1;
}
