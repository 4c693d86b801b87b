/* fuzz_hnswlib_file.c -- fuzz target for the hnswlib file reader
 * (graph/hnswlib_file.c, kiln_index_import_hnswlib).
 *
 * Each input is written to a temporary file and imported as an L2 index of
 * several dims. Failing cleanly is fine; crashing, leaking or reading out of
 * bounds is not. When an import succeeds the target also checks what the
 * importer promises:
 *  - the validator (kiln_index_check) passes: import ends with the
 *    reachability repair, and ids, counts, levels and the entry point were
 *    checked, so only self or duplicate links (which hnswlib never writes
 *    but a forged file may hold) can make it fail, and it must run to an
 *    answer either way;
 *  - a search runs;
 *  - export accepts what import accepted, and export -> import -> export
 *    gives the same bytes (the second import's repair has nothing to add).
 *
 * Design decisions:
 *  1. The input goes through a real file named by pid in $KILN_TEST_TMP
 *     (else /tmp): the reader uses open/fstat/pread, and parallel runs must
 *     not share it.
 *  2. hnswlib files do not store dim, so each input is tried with dim 4 and
 *     16 (the seeds' dims) and with the dim its own header implies, when
 *     that is small: a mutation of the record layout then still reaches the
 *     per-element checks instead of stopping at the dim check.
 *  3. Seeds are files kiln exported (count 0, 1 and a few dozen, M = 2..4,
 *     several levels), one with stale ids in the unused link slots as
 *     hnswlib leaves them, and one with an unreachable node, so the repair
 *     runs on import. Crafted ones (issue 11): a file with no links at all
 *     (every element its own island: the repair's bounded worst case), and
 *     one with elements marked deleted, the entry point among them (removed
 *     on import, their slots free). Issue 14: a kiln index after deletes
 *     exported with room (free slots as hnswlib's deleted elements, labels
 *     2^63 + slot, max_elements_ above the count), every element marked
 *     deleted, and deleted elements whose labels are a live one's, above
 *     INT64_MAX, and whose vector holds a NaN (none of which a deleted
 *     element's import uses).
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
#include "../../common/rng_internal.h"

/* ==== Tunables ==== */

/* Neighbours and beam for the one search per imported index: enough to walk
 * several hops of a seed-sized graph. */

/* Largest header-implied dim tried (decision 2): above the seeds' dims, and
 * small enough that a forged header cannot make each try slow. */
#define FUZZ_MAX_DIM 64

/* hnswlib header offsets (docs/FORMAT.md, "hnswlib files"). */
#define HL_HDR       96
#define HL_LABEL_OFF 32
#define HL_OFF_DATA  40

/* ==== Helpers ==== */

/* Exports ix to the out path and returns the bytes (NULL when refused). */
static uint8_t *export_bytes(const kiln_index *ix, size_t *size) {
    if (kiln_index_export_hnswlib(ix, fuzz_path("out"), NULL) != KILN_OK)
        return NULL;
    return read_file(fuzz_path("out"), size);
}

/* The promises of a successful import (see the header comment). */
static void check_imported(kiln_ctx *ctx, const kiln_index *ix, uint32_t dim) {
    if (kiln_index_dim(ix) != dim || kiln_index_metric(ix) != KILN_METRIC_L2)
        abort();
    kiln_index_check(ix);

    fuzz_search_once(ix);

    size_t n1 = 0, n2 = 0;
    uint8_t *first = export_bytes(ix, &n1);
    if (!first)
        abort(); /* the exporter refused what the importer accepted */
    kiln_index *again = NULL;
    if (kiln_index_import_hnswlib(ctx, fuzz_path("out"), dim, KILN_METRIC_L2, &again) != KILN_OK)
        abort();
    uint8_t *second = export_bytes(again, &n2);
    if (!second || n1 != n2 || memcmp(first, second, n1) != 0)
        abort();
    free(first);
    free(second);
    kiln_index_free(again);
}

static void run_one(kiln_ctx *ctx, const char *path, uint32_t dim) {
    kiln_index *ix = NULL;
    const kiln_status st = kiln_index_import_hnswlib(ctx, path, dim, KILN_METRIC_L2, &ix);
    if ((st == KILN_OK) != (ix != NULL))
        abort();
    if (ix) {
        check_imported(ctx, ix, dim);
        kiln_index_free(ix);
    }
}

/* ==== Target ==== */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kiln_ctx *ctx = fuzz_ctx();
    const char *path = fuzz_path("in");
    if (!write_file(path, data, size))
        return 0;
    run_one(ctx, path, 4);
    run_one(ctx, path, 16);
    if (size >= HL_HDR) {
        const uint64_t label_off = kiln_get_u64le(data + HL_LABEL_OFF),
                       off_data = kiln_get_u64le(data + HL_OFF_DATA);
        const uint64_t span = label_off - off_data;
        if (label_off > off_data && span % 4 == 0 && span / 4 <= FUZZ_MAX_DIM && span / 4 != 4 &&
            span / 4 != 16)
            run_one(ctx, path, (uint32_t)(span / 4));
    }
    return 0;
}

/* ==== Seeds ==== */

static kiln_index *seed_built(size_t n, uint32_t dim, uint32_t M, uint64_t seed) {
    float *v = malloc((n ? n : 1) * dim * sizeof *v);
    if (!v)
        abort();
    kiln_rng rng;
    kiln_rng_seed(&rng, seed);
    for (size_t i = 0; i < n * dim; i++)
        v[i] = (float)kiln_rng_uniform(&rng);
    kiln_build_params bp;
    kiln_build_params_init(&bp);
    bp.method = KILN_METHOD_INSERT;
    bp.M = M;
    bp.ef_construction = 16;
    bp.threads = 1;
    bp.seed = seed;
    kiln_index *ix = NULL;
    if (kiln_index_build(fuzz_ctx(), v, n, dim, &bp, &ix) != KILN_OK)
        abort();
    free(v);
    for (uint32_t i = 0; i < ix->count; i++)
        ix->labels[i] = 1000 + 3 * (int64_t)i;
    return ix;
}

int kiln_fuzz_seed(size_t i, uint8_t **buf, size_t *len) {
    static const struct {
        size_t n;
        uint32_t dim, M;
    } seeds[] = {{0, 4, 2},  {1, 16, 2},  {40, 4, 3}, {60, 16, 2}, {30, 4, 4}, {30, 4, 3},
                 {30, 4, 3}, {200, 4, 2}, {40, 4, 3}, {50, 4, 3},  {20, 4, 2}, {40, 16, 3}};
    if (i >= sizeof seeds / sizeof seeds[0])
        return 0;
    kiln_index *ix = seed_built(seeds[i].n, seeds[i].dim, seeds[i].M, 40 + i);
    if (i == 6) {
        /* Node 0 loses every in-link on level 0, so the import must repair. */
        for (uint32_t u = 0; u < ix->count; u++) {
            uint32_t *b = kiln_links(ix, u, 0);
            for (uint32_t j = 1; j <= b[0]; j++)
                if (b[j] == 0 && ix->entry_point != 0)
                    b[j--] = b[b[0]--];
        }
    }
    if (i == 7) /* no links on any level */
        for (uint32_t u = 0; u < ix->count; u++)
            for (unsigned l = 0; l <= ix->levels[u]; l++)
                kiln_links(ix, u, l)[0] = 0;
    kiln_hnswlib_export_params ep;
    kiln_hnswlib_export_params_init(&ep);
    if (i == 9) { /* free slots, the entry point's among them, and room */
        const int64_t gone[4] = {ix->labels[ix->entry_point], 1003, 1012, 1021};
        if (kiln_index_delete(ix, gone, ix->labels[ix->entry_point] == 1003 ? 1 : 4) != KILN_OK)
            abort();
        ep.max_elements = ix->count + 25;
    }
    if (kiln_index_export_hnswlib(ix, fuzz_path("seed"), &ep) != KILN_OK)
        abort();
    *buf = read_file(fuzz_path("seed"), len);
    if (!*buf)
        abort();
    if (i == 8) { /* hnswlib's DELETE_MARK on the entry point and two more */
        const uint64_t sde = kiln_get_u64le(*buf + 24);
        const uint32_t marks[3] = {ix->entry_point, 1, 2};
        for (int m = 0; m < 3; m++)
            (*buf)[HL_HDR + marks[m] * sde + 2] |= 1;
    }
    if (i == 10) /* every element deleted */
        for (uint32_t u = 0; u < ix->count; u++)
            (*buf)[HL_HDR + u * kiln_get_u64le(*buf + 24) + 2] |= 1;
    if (i == 11) { /* deleted: a live element's label, one above INT64_MAX, a NaN */
        const uint64_t sde = kiln_get_u64le(*buf + 24);
        const uint32_t marks[3] = {3, 5, 7};
        for (int m = 0; m < 3; m++)
            (*buf)[HL_HDR + marks[m] * sde + 2] |= 1;
        kiln_put_u64le(*buf + HL_HDR + 3 * sde + sde - 8, (uint64_t)ix->labels[4]);
        kiln_put_u64le(*buf + HL_HDR + 5 * sde + sde - 8, UINT64_MAX);
        kiln_put_u32le(*buf + HL_HDR + 7 * sde + sde - 8 - 4, 0x7fc00000u);
    }
    if (i == 5) {
        /* Stale ids past each level-0 count, as hnswlib leaves them after a
         * re-prune: the reader must ignore them. */
        const uint64_t sde = kiln_get_u64le(*buf + 24);
        for (uint32_t u = 0; u < ix->count; u++) {
            uint8_t *rec = *buf + HL_HDR + u * sde;
            const uint32_t n = ix->links0[u * kiln_links0_stride(ix)];
            for (uint32_t j = n; j < ix->M0; j++)
                kiln_put_u32le(rec + 4 + 4 * j, 0xdead0000u + j);
        }
    }
    kiln_index_free(ix);
    unlink(fuzz_path("seed"));
    return 1;
}
