/* hnsw_insert.c -- the CPU HNSW build by insertion (Malkov & Yashunin,
 * algorithm 1): kiln build --method insert, and the hierarchy of the device
 * pipeline (levels >= 1 only). Nodes go in by batches, in parallel, and the
 * graph is the same whatever the thread count (ParlayANN's prefix-doubling
 * batch insertion, Manohar et al., PPoPP 2024).
 *
 * Design decisions:
 *  1. Levels are sampled before insertion (graph/hnsw_index.c), so the node
 *     of the highest level is known: it is inserted first and is the entry
 *     point throughout, and every search descends from it.
 *  2. Batches. Each batch of nodes is inserted in three phases with a
 *     barrier between them, so nothing depends on thread timing:
 *     a. every node searches the graph as it was at the start of the batch
 *        (read-only, so searches read lists in place with no lock), selects
 *        its neighbours on each of its levels with the heuristic, and writes
 *        its own lists at once: no node links to it yet, so no search of
 *        this batch can reach them. Each selected link also goes to a
 *        reverse-edge buffer as (target, level, distance, source);
 *     b. the buffer is sorted by (target, level, distance, source);
 *     c. each (target, level) merges its incoming edges in that order
 *        (kiln_links_merge: appended while they fit, else one re-prune of
 *        the old list plus all of them), one thread per target.
 *     Every tie is broken by id. Nodes of one batch do not see each other,
 *     so batch sizes double from 1 (the entry point) while the graph grows,
 *     up to a cap (BATCH_DIV, decision 4), which bounds what a node can miss
 *     and the buffer: batch x levels x M entries. A link list is written by
 *     one thread at a time, so no locks.
 *  3. The order is the entry point, then by id. With batches of one node
 *     the code is the old one-thread insertion, and the file is the same
 *     byte for byte (checked: siftsmall and synthetic 200K x 128 device
 *     builds, 1 thread). A seeded permutation was tried: on the 200K set
 *     (64 clusters, 1000 queries) it left 2 queries with 0 of 10 found at
 *     ef 64 and 128 (recall 0.998) where the id order and the old code
 *     found all, so it bought nothing for its own random stream. A file
 *     sorted by class or time would put one region's nodes in one batch,
 *     blind to each other; the 0.1% cap bounds that.
 *  4. The cap. Nodes of a batch miss each other, which costs recall at
 *     level 0 (the insert method) when the cap is large against n.
 *     siftsmall / fmnistsmall insert builds, recall@10 at ef 10, 1 thread
 *     (the graph does not depend on it): one node per batch (the old
 *     one-thread graph, byte for byte) 0.929 / 0.9862; cap n/1000, at
 *     least 8: 0.932 / 0.9850; n/400, 16: 0.931 / 0.9842; n/200, 32:
 *     0.924 / 0.9834. So n/1000 and 8: about 1000 batches whatever n, and
 *     at 1B nodes batches of 1M.
 *     Measured with the cap, --threads 2 on the shared 2-core machine
 *     (load 4-6 from other work; the old build gives another graph each
 *     run, so its figures are ranges over 3 runs), recall@10 at ef
 *     10/16/64/128, old -> new:
 *       siftsmall device   0.938-0.944/0.972-0.975/0.999/1.000 ->
 *                          0.941/0.973/0.999/1.000
 *       siftsmall insert   0.923-0.932/0.965-0.967/0.996-0.997/1.000 ->
 *                          0.932/0.969/0.997/1.000
 *       fmnistsmall device 0.9958-0.9966/0.9994/1/1 -> 0.9960/0.9994/1/1
 *       fmnistsmall insert 0.9858-0.9872/0.9954-0.9968/1/1 ->
 *                          0.9850/0.9958/1/1
 *       synthetic 200K x 128 device (1000 queries)
 *                          0.9402-0.9404/0.9776-0.9782/1/1 ->
 *                          0.9402/0.9775/1/1
 *     Stage seconds (wall, noisy): siftsmall hierarchy 0.16-0.27 -> 0.12,
 *     insert 1.65-3.85 -> 1.32; fmnistsmall 0.01-0.02 -> 0.01, insert
 *     0.17-0.23 -> 0.14; 200K hierarchy 6.6-12.0 -> 12.7 with 2 threads,
 *     4.5 with 1 (old, 1 thread: 7.2): on this machine the second thread
 *     mostly waits for a core at the 2 x ~1000 batch ends.
 *  5. Who runs a batch does not change it, so a batch of fewer than
 *     PARALLEL_MIN nodes per thread runs on the calling thread. Each
 *     parallel batch end cost milliseconds here (a thread waiting for a
 *     core): with every batch parallel, siftsmall's insert build with
 *     --threads 2 took 16 s instead of 1.3 s.
 *  6. The upper levels of a device build (kiln_hnsw_insert_upper) are an
 *     insertion build of their own: the nodes of level >= 1 become an index
 *     of dense ids in id order, with copies of their vectors side by side
 *     and a level 0 of M links (their level 1), built with bottom 0, and its
 *     links are mapped back. Ids keep their order, so the entry point, the
 *     insertion order, the batches and every tie are the same as with
 *     bottom 1 in place, and so is the graph, byte for byte (test_hierarchy
 *     compares them). What changes is the memory a search touches: in place,
 *     each visited neighbour reads the whole set's visited tags, levels and
 *     upper offsets at random, and its vector from rows 4 times as far apart
 *     (level 1 holds 1/4 of the nodes, graph/hnsw_build.c); at 4M nodes
 *     those arrays are 8, 4 and 32 MB, past the cache, where at 1M they
 *     mostly fit, and a node's insertion cost 1.5 times as much. Measured
 *     (one build each, 2 threads, synthetic 128-d, 2 replicas): in place
 *     6.5 s at 1M and 39.7 s at 4M (under perf record, which costs about
 *     8%), compact 5.0 and 28.4 s; the copy itself is one pass. The copy
 *     costs n/4 vectors of memory, or of the work dir's disk when the
 *     budget has no room for it (the caller passes a spill dir). Below
 *     KILN_UPPER_COMPACT_MIN nodes those arrays fit in the cache anyway and
 *     the copy is the cost, so the device build calls it from there on:
 *     fmnist60k's hierarchy (784-d, 15K level-1 nodes) took 0.76-0.83 s
 *     with it against 0.6-0.7 s in place.
 *  7. Adds to a live index (kiln_hnsw_insert_nodes, graph/hnsw_live.c) go
 *     through the same batches over a graph that already holds base nodes,
 *     so batch sizes start at the cap. A new node whose level is above the
 *     graph's top gets empty lists up there and, once its batch is merged,
 *     becomes the entry point (the first of its batch's highest): the
 *     graph's top only rises between batches, so every search of a batch
 *     descends from one entry point, and the result is thread-independent.
 *  8. Searches of a live index run while it grows (graph/hnsw_live.c
 *     decision 8). Phase a only reads the graph and writes the lists of the
 *     batch's own nodes, which no list names yet, so it runs beside them;
 *     phases c and the entry point's move write what they read, so they run
 *     in the writer's exclusive section (kiln_commit_begin), once per batch.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "../common/sort_internal.h"
#include "build_internal.h"

/* ==== Tunables ==== */

/* A batch holds at most max(BATCH_MIN, nodes / BATCH_DIV) nodes, nodes being
 * those inserted (decision 2); chosen by recall in decision 4. */
#define BATCH_DIV 1000
#define BATCH_MIN 8
/* A batch runs on all threads only with at least this many nodes per
 * thread; smaller ones run on the calling thread, which gives the same
 * graph (decision 5). */
#define PARALLEL_MIN 16

/* ==== Types ==== */

/* A link that a node of the batch chose, to be added in reverse. */
typedef struct rev_edge {
    uint32_t target; /* the old node to get the link; KILN_NO_NODE: empty slot */
    uint32_t level;
    kiln_cand src; /* the new node and its distance to target */
} rev_edge;

/* What the threads of one insertion share. */
typedef struct batch_state {
    struct kiln_index *ix;
    uint32_t efc, bottom;
    const uint32_t *order; /* the nodes to insert, entry point first */
    size_t *slot;          /* per node of the batch: its first slot in edges (+1 entry) */
    rev_edge *edges;       /* slot[batch] entries */
    size_t used;           /* filled entries of edges after the sort */
} batch_state;

/* ==== Static helpers ==== */

static inline bool edge_less(rev_edge a, rev_edge b) {
    if (a.target != b.target)
        return a.target < b.target;
    if (a.level != b.level)
        return a.level < b.level;
    if (a.src.dist != b.src.dist)
        return a.src.dist < b.src.dist;
    return a.src.id < b.src.id;
}
KILN_DEFINE_SORT(edges_sort, rev_edge, edge_less)

/* The levels node q is inserted on: bottom .. top(q). */
static inline uint32_t levels_of(const struct kiln_index *ix, uint32_t q, uint32_t bottom) {
    return ix->levels[q] >= bottom ? ix->levels[q] - bottom + 1 : 0;
}

/* The end of the batch that starts at order[start]: as many nodes as are
 * in the graph (those of order before start, plus base already there), at
 * most cap, at most what is left (decision 2). */
static inline uint32_t batch_end(uint32_t start, uint32_t n, uint32_t cap, uint64_t base) {
    const uint64_t in_graph = base + start;
    const uint32_t size = in_graph < cap ? (uint32_t)in_graph : cap;
    return n - start < size ? n : start + size;
}

/* Each node's first slot in the reverse-edge buffer, for the batch
 * order[start .. end); returns the slots in all. */
static size_t fill_slots(const batch_state *bs, uint32_t start, uint32_t end) {
    size_t *slot = bs->slot;
    slot[0] = 0;
    for (uint32_t k = start; k < end; k++)
        slot[k - start + 1] =
            slot[k - start] + (size_t)levels_of(bs->ix, bs->order[k], bs->bottom) * bs->ix->M;
    return slot[end - start];
}

/* Phase a (decision 2): node q's search and selection on each of its levels
 * >= bottom, in the graph as it stands; writes q's own lists and its reverse
 * edges to e (levels_of(q) * M slots). */
static void select_one(const batch_state *bs, kiln_scratch *sc, uint32_t q, rev_edge *e) {
    const struct kiln_index *ix = bs->ix;
    const uint32_t M = ix->M, top = ix->levels[q];
    const float *qv = kiln_node_query(ix, q, sc->qbuf);
    /* Levels above the graph's top (a node added to a live index,
     * decision 7) start empty: there is no one there to link to. */
    const uint32_t reach = top < ix->max_level ? top : ix->max_level;
    for (uint32_t level = top; level > reach; level--, e += M) {
        kiln_links(ix, q, level)[0] = 0;
        for (uint32_t j = 0; j < M; j++)
            e[j] = (rev_edge){KILN_NO_NODE, 0, {0.0f, KILN_NO_NODE}};
    }
    uint32_t cur = ix->entry_point;
    float cur_dist = kiln_node_dist(ix, qv, cur);
    kiln_greedy_descend(ix, qv, ix->max_level, reach, &cur, &cur_dist);
    for (uint32_t level = reach + 1; level-- > bs->bottom; e += M) {
        kiln_search_level(ix, sc, qv, cur, cur_dist, bs->efc, level);
        const uint32_t n = sc->top.size;
        kiln_cand *c = sc->top.v;
        kiln_cands_sort(c, n);
        uint32_t *l = kiln_links(ix, q, level);
        const uint32_t m = kiln_select_neighbors(ix, c, n, M, l + 1);
        l[0] = m;
        /* The selected come out in the candidates' order: walk both for
         * their distances. */
        for (uint32_t j = 0, i = 0; j < M; j++) {
            if (j < m) {
                while (c[i].id != l[1 + j])
                    i++;
                e[j] = (rev_edge){l[1 + j], level, {c[i].dist, q}};
            } else {
                e[j] = (rev_edge){KILN_NO_NODE, 0, {0.0f, KILN_NO_NODE}};
            }
        }
        cur = c[0].id;
        cur_dist = c[0].dist;
    }
}

/* Phase c: the group of edges to one (target, level) starting at edges[i]
 * (the first of its group), merged into the target's list. buf has room
 * for the group plus a list. */
static void merge_group(const batch_state *bs, size_t i, kiln_cand *buf) {
    const rev_edge *e = bs->edges;
    const uint32_t t = e[i].target, level = e[i].level;
    uint32_t n = 0;
    for (size_t j = i; j < bs->used && e[j].target == t && e[j].level == level; j++)
        buf[n++] = e[j].src;
    kiln_links_merge(bs->ix, t, level, 0, buf, n);
}

static kiln_status insert_from(struct kiln_index *ix, uint32_t ef_construction, int threads,
                               uint32_t bottom, const char *what);
static kiln_status insert_order(struct kiln_index *ix, const uint32_t *order, uint32_t n,
                                uint64_t base, uint32_t ef_construction, int threads,
                                uint32_t bottom, kiln_progress_bar *bar);

/* ==== Public functions ==== */

kiln_status kiln_hnsw_insert_all(struct kiln_index *ix, uint32_t ef_construction, int threads) {
    return kiln_hnsw_insert_levels(ix, ef_construction, threads, 0);
}

kiln_status kiln_hnsw_insert_levels(struct kiln_index *ix, uint32_t ef_construction, int threads,
                                    uint32_t bottom) {
    return insert_from(ix, ef_construction, threads, bottom, bottom ? "upper levels" : "insert");
}

kiln_status kiln_hnsw_insert_nodes(struct kiln_index *ix, const uint32_t *nodes, uint32_t n,
                                   uint64_t base, uint32_t ef_construction, int threads) {
    return kiln_hnsw_insert_nodes_from(ix, nodes, n, base, ef_construction, threads, 0);
}

kiln_status kiln_hnsw_insert_nodes_from(struct kiln_index *ix, const uint32_t *nodes, uint32_t n,
                                        uint64_t base, uint32_t ef_construction, int threads,
                                        uint32_t bottom) {
    kiln_progress_bar bar;
    kiln_progress_begin(&bar, ix->ctx, bottom ? "add upper levels" : "add", n);
    const kiln_status st =
        insert_order(ix, nodes, n, base, ef_construction, threads > 0 ? threads : 1, bottom, &bar);
    kiln_progress_end(&bar);
    return st;
}

uint64_t kiln_hnsw_upper_bytes(const struct kiln_index *ix, int threads) {
    uint64_t n1 = 0, pool = 0;
    for (uint64_t i = 0; i < ix->count; i++)
        if (ix->levels[i]) {
            n1++;
            pool += (uint64_t)(ix->levels[i] - 1) * (ix->M + 1);
        }
    const uint64_t per_node = (uint64_t)ix->dim * sizeof(float) +
                              (uint64_t)(ix->M + 1) * sizeof(uint32_t) + 2 * sizeof(uint32_t) +
                              sizeof(int64_t) + 1 + sizeof(uint64_t) +
                              (uint64_t)(threads > 0 ? threads : 1) * sizeof(uint16_t);
    return n1 * per_node + pool * sizeof(uint32_t);
}

kiln_status kiln_hnsw_insert_upper(struct kiln_index *ix, uint32_t ef_construction, int threads,
                                   const char *spill_dir) {
    kiln_ctx *ctx = ix->ctx;
    uint64_t n1 = 0;
    for (uint64_t i = 0; i < ix->count; i++)
        n1 += ix->levels[i] != 0;
    if (n1 == 0) /* no upper level: only the entry point to set */
        return kiln_hnsw_insert_levels(ix, ef_construction, threads, 1);

    /* Decision 6: level >= 1 as an index of its own, ids in the same order. */
    uint32_t *map = NULL;
    uint8_t *levels = NULL;
    struct kiln_index *sub = NULL;
    kiln_status st = kiln_alloc(ctx, n1 * sizeof *map, "upper-level ids", (void **)&map);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, n1, "upper-level levels", (void **)&levels);
    if (st == KILN_OK) {
        for (uint64_t i = 0, j = 0; i < ix->count; i++)
            if (ix->levels[i]) {
                map[j] = (uint32_t)i;
                levels[j++] = (uint8_t)(ix->levels[i] - 1);
            }
        st = kiln_index_alloc_m0(ctx, n1, ix->dim, ix->metric, ix->M, ix->M, levels, &sub);
    }
    free(levels);
    if (st == KILN_OK && spill_dir)
        st = kiln_index_spill_storage(sub, spill_dir);
    if (st) {
        kiln_index_free(sub);
        free(map);
        return st;
    }
    const size_t row = (size_t)ix->dim * sizeof(float);
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static, 4096)
    for (uint64_t j = 0; j < n1; j++)
        memcpy(sub->vectors + j * ix->dim, kiln_vector(ix, map[j]), row);

    st = insert_from(sub, ef_construction, threads, 0, "upper levels");
    if (st == KILN_OK) {
        for (uint64_t j = 0; j < n1; j++)
            for (uint32_t level = 0; level <= sub->levels[j]; level++) {
                const uint32_t *from = kiln_links(sub, (uint32_t)j, level);
                uint32_t *to = kiln_links(ix, map[j], level + 1);
                to[0] = from[0];
                for (uint32_t t = 0; t < from[0]; t++)
                    to[1 + t] = map[from[1 + t]];
            }
        ix->entry_point = map[sub->entry_point];
        ix->max_level = sub->max_level + 1;
        ix->ef_construction = ef_construction;
    }
    kiln_index_free(sub);
    free(map);
    return st;
}

static kiln_status insert_from(struct kiln_index *ix, uint32_t ef_construction, int threads,
                               uint32_t bottom, const char *what) {
    kiln_ctx *ctx = ix->ctx;
    if (ix->count == 0)
        return KILN_OK;
    threads = threads > 0 ? threads : 1;
    uint32_t ep = 0;
    for (uint32_t i = 1; i < ix->count; i++)
        if (ix->levels[i] > ix->levels[ep])
            ep = i;
    ix->entry_point = ep;
    ix->max_level = ix->levels[ep];
    ix->ef_construction = ef_construction;

    /* Decision 3: the nodes that reach bottom, entry point first, then by id. */
    uint32_t *order = NULL;
    kiln_status st = kiln_alloc(ctx, ix->count * sizeof *order, "insertion order", (void **)&order);
    if (st)
        return st;
    uint32_t n = 0;
    for (uint32_t i = 0; i < ix->count; i++)
        if (ix->levels[i] >= bottom && i != ep)
            order[n++] = i;
    kiln_progress_bar bar;
    kiln_progress_begin(&bar, ctx, what, (uint64_t)n + 1);
    kiln_progress_add(&bar, 1);
    st = insert_order(ix, order, n, 1, ef_construction, threads, bottom, &bar);
    kiln_progress_end(&bar);
    free(order);
    return st;
}

/* Inserts order[0 .. n) into a graph of base nodes (an entry point set, at
 * least one node) on levels bottom and up, by batches (decision 2). */
static kiln_status insert_order(struct kiln_index *ix, const uint32_t *order, uint32_t n,
                                uint64_t base, uint32_t ef_construction, int threads,
                                uint32_t bottom, kiln_progress_bar *bar) {
    kiln_ctx *ctx = ix->ctx;
    kiln_status st = KILN_OK;
    /* Decision 2: batch sizes, and the largest reverse-edge buffer. */
    const uint64_t all_nodes = base + n;
    const uint32_t cap =
        all_nodes / BATCH_DIV > BATCH_MIN ? (uint32_t)(all_nodes / BATCH_DIV) : BATCH_MIN;
    batch_state bs = {.ix = ix, .efc = ef_construction, .bottom = bottom, .order = order};
    size_t max_edges = 0;
    if ((st = kiln_alloc(ctx, ((size_t)cap + 1) * sizeof *bs.slot, "batch slots",
                         (void **)&bs.slot)) == KILN_OK)
        for (uint32_t start = 0, end; start < n; start = end) {
            end = batch_end(start, n, cap, base);
            const size_t slots = fill_slots(&bs, start, end);
            max_edges = slots > max_edges ? slots : max_edges;
        }
    if (st || (st = kiln_alloc(ctx, (max_edges ? max_edges : 1) * sizeof *bs.edges, "reverse edges",
                               (void **)&bs.edges))) {
        free(bs.slot);
        return st;
    }

    /* Per-thread search scratch and merge buffer, made here so that the
     * batches' parallel loops cannot fail. */
    kiln_scratch **scs = NULL;
    kiln_cand **bufs = NULL;
    if ((st = kiln_calloc(ctx, (size_t)threads * sizeof *scs, "insert scratch", (void **)&scs)) ||
        (st = kiln_calloc(ctx, (size_t)threads * sizeof *bufs, "merge buffers", (void **)&bufs)))
        goto cleanup;
    for (int t = 0; t < threads; t++)
        if ((st = kiln_scratch_new(ctx, ix, ef_construction, &scs[t])) ||
            (st = kiln_alloc(ctx, ((size_t)cap + ix->M0) * sizeof **bufs, "merge buffer",
                             (void **)&bufs[t])))
            goto cleanup;

    for (uint32_t start = 0, end; start < n && st == KILN_OK; start = end) {
        end = batch_end(start, n, cap, base);
        const size_t all = fill_slots(&bs, start, end);
        /* Decision 5: who runs a batch does not change it. */
        const int team = end - start >= (uint64_t)PARALLEL_MIN * (unsigned)threads ? threads : 1;
#pragma omp parallel for num_threads(team) schedule(dynamic, 4)
        for (uint32_t k = start; k < end; k++)
            select_one(&bs, scs[omp_get_thread_num()], order[k], bs.edges + bs.slot[k - start]);
        for (int t = 0; t < threads; t++)
            if (scs[t]->cand.short_of_memory) /* kiln_heap_push: links may be missing */
                st = kiln_fail(ctx, KILN_E_NOMEM,
                               "insert: out of memory growing the candidate heap (ef %u)",
                               ef_construction);
        if (st)
            break;
        edges_sort(bs.edges, (ptrdiff_t)all);
        bs.used = all;
        while (bs.used > 0 && bs.edges[bs.used - 1].target == KILN_NO_NODE)
            bs.used--;
        kiln_commit_begin(ix); /* decision 8: phase c writes lists searches read */
#pragma omp parallel for num_threads(team) schedule(dynamic, 64)
        for (size_t i = 0; i < bs.used; i++)
            if (i == 0 || bs.edges[i - 1].target != bs.edges[i].target ||
                bs.edges[i - 1].level != bs.edges[i].level)
                merge_group(&bs, i, bufs[omp_get_thread_num()]);
        /* Decision 7: a node above the top becomes the entry point, the
         * first of the batch's highest. */
        for (uint32_t k = start; k < end; k++)
            if (ix->levels[order[k]] > ix->max_level) {
                ix->max_level = ix->levels[order[k]];
                ix->entry_point = order[k];
            }
        kiln_commit_end(ix);
        kiln_progress_add(bar, end - start);
    }
cleanup:
    for (int t = 0; scs && t < threads; t++)
        kiln_scratch_free(scs[t]);
    for (int t = 0; bufs && t < threads; t++)
        free(bufs[t]);
    free(scs);
    free(bufs);
    free(bs.edges);
    free(bs.slot);
    return st;
}
