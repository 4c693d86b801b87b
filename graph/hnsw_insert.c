/* hnsw_insert.c -- the CPU HNSW build by insertion (Malkov & Yashunin,
 * algorithm 1): kiln build --method insert, and the code that will insert
 * single vectors into a built index.
 *
 * Design decisions:
 *  1. Levels are sampled before insertion (graph/hnsw_index.c), so the node
 *     of the highest level is known: it is inserted first and is the entry
 *     point throughout. Concurrent inserts then need no global lock, only
 *     the per-node link locks (hnswlib takes a global lock whenever a node
 *     raises the top level).
 *  2. With one thread the insertion order is fixed (entry point, then by id)
 *     and so is every tie-break: the same seed gives the same graph and the
 *     same file, byte for byte.
 *  3. A link list is written under its node's lock and never read without it
 *     while building; no thread holds two locks at once, so no deadlock.
 */
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "build_internal.h"

/* Inserts node q on levels bottom..levels[q]; the entry point is fixed
 * (decision 1). */
static void insert_one(struct kiln_index *ix, kiln_scratch *sc, kiln_node_lock *locks, uint32_t q,
                       uint32_t efc, uint32_t bottom) {
    const uint32_t ep = ix->entry_point;
    if (q == ep)
        return;
    const float *qv = kiln_vector(ix, q);
    const uint32_t L = ix->levels[q];
    if (L < bottom)
        return;
    uint32_t cur = ep;
    float cur_dist = kiln_node_dist(ix, qv, ep);
    kiln_greedy_descend(ix, locks, qv, ix->max_level, L, &cur, &cur_dist);

    uint32_t selected[KILN_MAX_M];
    for (int level = (int)(L < ix->max_level ? L : ix->max_level); level >= (int)bottom; level--) {
        kiln_search_level(ix, sc, locks, qv, cur, cur_dist, efc, (unsigned)level);
        uint32_t n = sc->top.size;
        kiln_cands_sort(sc->top.v, n);
        uint32_t m = kiln_select_neighbors(ix, sc->top.v, n, ix->M, selected);
        cur = sc->top.v[0].id;
        cur_dist = sc->top.v[0].dist;

        kiln_lock(locks, q);
        uint32_t *l = kiln_links(ix, q, (unsigned)level);
        memcpy(l + 1, selected, m * sizeof(uint32_t));
        l[0] = m;
        kiln_unlock(locks, q);
        for (uint32_t j = 0; j < m; j++)
            kiln_link_add(ix, locks, selected[j], q, (unsigned)level);
    }
}

kiln_status kiln_hnsw_insert_all(struct kiln_index *ix, uint32_t ef_construction, int threads) {
    return kiln_hnsw_insert_levels(ix, ef_construction, threads, 0);
}

kiln_status kiln_hnsw_insert_levels(struct kiln_index *ix, uint32_t ef_construction, int threads,
                                    uint32_t bottom) {
    kiln_ctx *ctx = ix->ctx;
    if (ix->count == 0)
        return KILN_OK;
    uint32_t ep = 0;
    for (uint32_t i = 1; i < ix->count; i++)
        if (ix->levels[i] > ix->levels[ep])
            ep = i;
    ix->entry_point = ep;
    ix->max_level = ix->levels[ep];
    ix->ef_construction = ef_construction;

    void *lock_mem = NULL;
    kiln_status st = kiln_calloc(ctx, ix->count * sizeof(kiln_node_lock), "link locks", &lock_mem);
    if (st)
        return st;
    kiln_node_lock *locks = lock_mem;
    kiln_progress_bar bar;
    /* Only nodes that reach `bottom` take part; list them so threads share
     * the work evenly. */
    uint32_t *order = NULL;
    if ((st = kiln_alloc(ctx, ix->count * sizeof *order, "insertion order", (void **)&order))) {
        free(lock_mem);
        return st;
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < ix->count; i++)
        if (ix->levels[i] >= bottom)
            order[n++] = i;
    kiln_progress_begin(&bar, ctx, bottom ? "upper levels" : "insert", n);
    kiln_status result = KILN_OK;

#pragma omp parallel num_threads(threads)
    {
        kiln_scratch *sc = NULL;
        kiln_status my = kiln_scratch_new(ctx, ix, ef_construction, &sc);
        if (my) {
#pragma omp critical(kiln_insert_error)
            result = my;
        }
        uint32_t since = 0;
#pragma omp for schedule(dynamic, 64)
        for (uint32_t i = 0; i < n; i++) {
            if (!sc)
                continue;
            insert_one(ix, sc, locks, order[i], ef_construction, bottom);
            if (sc->cand.short_of_memory) { /* kiln_heap_push: links may be missing */
                sc->cand.short_of_memory = false;
#pragma omp critical(kiln_insert_error)
                result = kiln_fail(ctx, KILN_E_NOMEM,
                                   "insert: out of memory growing the candidate heap (ef %u)",
                                   ef_construction);
            }
            if (++since == 256) {
                kiln_progress_add(&bar, since);
                since = 0;
            }
        }
        kiln_progress_add(&bar, since);
        kiln_scratch_free(sc);
    }
    kiln_progress_end(&bar);
    free(order);
    free(lock_mem);
    return result;
}
