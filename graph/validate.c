/* validate.c -- the graph validator (antirez's hnsw_validate_graph): every
 * invariant search relies on, checked on any index, built or loaded. Tests
 * run it after every build; `kiln check` runs it on a file.
 *
 * Invariants:
 *  1. The entry point is a node on the top level; no node is above it.
 *  2. On every level a node is on: link count within the bound (M0 on level
 *     0, M above), ids in range, no self link, no duplicate link, and on
 *     upper levels only links to nodes present on that level.
 *  3. Every node is reachable from the entry point on level 0.
 *  4. A free slot of a live index (graph/hnsw_live.c) has level 0 and no
 *     links, no link names it, the entry point is not one, and the free
 *     list names each free slot once.
 *
 * Design decisions:
 *  1. A vector with a NaN or an infinity is a finding, not a defect: the
 *     graph around it is sound, every graph distance takes NaN as +inf
 *     (kiln_node_dist) so search ranks such rows last, and kiln build
 *     --allow-nonfinite makes them on purpose (failing the check would fail
 *     that build). So kiln_index_check passes them, kiln_index_nonfinite
 *     counts them, kiln_index_stats_get reports the count and the first
 *     node, and `kiln check` prints it.
 *  2. The check runs on every core (every `kiln build` ends with it, and
 *     `kiln check` opens 100 GB files). It used to mark each link in an
 *     array of n stamps, a random write per link, on one thread: 8.7 s of
 *     CPU at 10M x 128, 2.4 s at 4M. Now each node is checked alone (a
 *     4096-bit map of the ids on its list, a scan of the list only on a
 *     bit already set), so nodes go in parallel with no shared state, and
 *     the failure reported is the lowest node's, found again on one thread
 *     with its message, as the one-thread loop reported it.
 *  3. Reachability is a level-synchronous BFS (kiln_l0_mark_reachable,
 *     also the repair's: graph/connect.c): a level of REACH_PARALLEL_MIN
 *     nodes or more is split over the threads, each node claimed by the
 *     atomic exchange that sets its mark, the claims appended to the queue
 *     in blocks. The marks are the closure of the entry point, so they do
 *     not depend on the threads (the queue's order does, and nothing reads
 *     it after).
 */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "../common/dataset_internal.h"
#include "hnsw_internal.h"

/* A BFS level this large goes to all threads (decision 3); a smaller one
 * costs less than the fork. */
#define REACH_PARALLEL_MIN 8192
/* Claims a thread holds before it appends them to the queue. */
#define REACH_BLOCK 1024
/* Queue entries ahead whose link list is prefetched. */
#define REACH_AHEAD 8

/* Node i against invariant 2 (and its level against the top), links in
 * list order, so the first violation of a list is the one reported; with
 * ctx NULL nothing is recorded. Duplicates are found by a bitmap of
 * id % LIST_BITS and confirmed by a scan of the list so far (decision 2). */
#define LIST_BITS 4096u
static kiln_status check_node(const struct kiln_index *ix, uint32_t i, kiln_ctx *ctx) {
    if (kiln_slot_free(ix, i)) { /* invariant 4 */
        if (ix->levels[i] != 0 || kiln_links(ix, i, 0)[0] != 0)
            return kiln_fail(ctx, KILN_E_INVALID,
                             "free slot %u has level %u and %u level-0 links (expected 0 and 0)", i,
                             ix->levels[i], kiln_links(ix, i, 0)[0]);
        return KILN_OK;
    }
    if (ix->levels[i] > ix->max_level)
        return kiln_fail(ctx, KILN_E_INVALID, "node %u has level %u above the top level %u", i,
                         ix->levels[i], ix->max_level);
    uint64_t bits[LIST_BITS / 64] = {0};
    for (uint32_t level = 0; level <= ix->levels[i]; level++) {
        const uint32_t *l = kiln_links(ix, i, level);
        const uint32_t bound = level ? ix->M : ix->M0;
        if (l[0] > bound)
            return kiln_fail(ctx, KILN_E_INVALID, "node %u has %u links on level %u (bound %u)", i,
                             l[0], level, bound);
        kiln_status st = KILN_OK;
        uint32_t j = 0;
        for (; j < l[0] && st == KILN_OK; j++) {
            const uint32_t v = l[1 + j], b = v % LIST_BITS;
            bool dup = false;
            if (bits[b / 64] >> (b % 64) & 1)
                for (uint32_t t = 0; t < j && !dup; t++)
                    dup = l[1 + t] == v;
            bits[b / 64] |= (uint64_t)1 << (b % 64);
            if (v >= ix->count)
                st = kiln_fail(ctx, KILN_E_INVALID,
                               "node %u level %u links to id %u, out of range (count %llu)", i,
                               level, v, (unsigned long long)ix->count);
            else if (kiln_slot_free(ix, v))
                st = kiln_fail(ctx, KILN_E_INVALID, "node %u level %u links to free slot %u", i,
                               level, v);
            else if (v == i)
                st =
                    kiln_fail(ctx, KILN_E_INVALID, "node %u links to itself on level %u", i, level);
            else if (dup)
                st = kiln_fail(ctx, KILN_E_INVALID, "node %u links to %u twice on level %u", i, v,
                               level);
            else if (level > 0 && ix->levels[v] < level) /* every node is on level 0 */
                st = kiln_fail(ctx, KILN_E_INVALID,
                               "node %u links on level %u to node %u, which is only on levels "
                               "0..%u",
                               i, level, v, ix->levels[v]);
        }
        for (uint32_t t = 0; t < j; t++) /* clear what this list set */
            bits[l[1 + t] % LIST_BITS / 64] = 0;
        if (st)
            return st;
    }
    return KILN_OK;
}

/* Invariant 2 on every node, in parallel; the node of lowest id that fails
 * is checked again to record its message, so the report does not depend on
 * the threads. */
static kiln_status check_lists(const struct kiln_index *ix, int threads) {
    const long n = (long)ix->count;
    long bad = n;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4096) reduction(min : bad)
    for (long i = 0; i < n; i++)
        if (i < bad && check_node(ix, (uint32_t)i, NULL) != KILN_OK)
            bad = i;
    return bad < n ? check_node(ix, (uint32_t)bad, ix->ctx) : KILN_OK;
}

uint64_t kiln_l0_mark_reachable(const struct kiln_index *ix, uint8_t *seen, uint32_t *queue,
                                uint32_t start, int threads) {
    if (seen[start])
        return 0;
    seen[start] = 1;
    queue[0] = start;
    uint64_t head = 0, tail = 1;
    while (head < tail) {
        const uint64_t end = tail;
        if (threads <= 1 || end - head < REACH_PARALLEL_MIN) {
            for (; head < end; head++) {
                const uint32_t *l = kiln_links(ix, queue[head], 0);
                for (uint32_t j = 0; j < l[0]; j++)
                    if (!seen[l[1 + j]]) {
                        seen[l[1 + j]] = 1;
                        queue[tail++] = l[1 + j];
                    }
            }
            continue;
        }
        /* One level of the BFS on all threads: a node is claimed by the
         * thread whose exchange sets its mark, and the claims go to the
         * queue's end in blocks (decision 3). */
        uint64_t next = tail;
        const long lo = (long)head, hi = (long)end;
#pragma omp parallel num_threads(threads)
        {
            uint32_t found[REACH_BLOCK];
            uint32_t nf = 0;
#pragma omp for schedule(dynamic, 1024)
            for (long h = lo; h < hi; h++) {
                if (h + REACH_AHEAD < hi)
                    __builtin_prefetch(kiln_links(ix, queue[h + REACH_AHEAD], 0));
                const uint32_t *l = kiln_links(ix, queue[h], 0);
                for (uint32_t j = 0; j < l[0]; j++) {
                    const uint32_t v = l[1 + j];
                    if (__atomic_load_n(&seen[v], __ATOMIC_RELAXED) ||
                        __atomic_exchange_n(&seen[v], 1, __ATOMIC_RELAXED))
                        continue;
                    found[nf++] = v;
                    if (nf == REACH_BLOCK) {
                        const uint64_t at = __atomic_fetch_add(&next, nf, __ATOMIC_RELAXED);
                        memcpy(queue + at, found, nf * sizeof *found);
                        nf = 0;
                    }
                }
            }
            const uint64_t at = __atomic_fetch_add(&next, nf, __ATOMIC_RELAXED);
            memcpy(queue + at, found, nf * sizeof *found);
        }
        head = end;
        tail = next;
    }
    return tail;
}

/* Invariant 4's free list: every entry a free slot, each free slot once. */
static kiln_status check_free_list(const struct kiln_index *ix) {
    uint64_t marked = 0;
    for (uint64_t i = 0; ix->freed && i < ix->count; i++)
        marked += ix->freed[i] != 0;
    if (marked != ix->free_count)
        return kiln_fail(ix->ctx, KILN_E_INVALID,
                         "%llu slots are marked free, the free list has %llu",
                         (unsigned long long)marked, (unsigned long long)ix->free_count);
    if (!ix->free_count)
        return KILN_OK;
    uint8_t *once = NULL;
    kiln_status st = kiln_calloc(ix->ctx, ix->count, "the validator's free marks", (void **)&once);
    for (uint64_t j = 0; st == KILN_OK && j < ix->free_count; j++) {
        const uint32_t v = ix->free_list[j];
        if (v >= ix->count || !ix->freed[v] || once[v])
            st = kiln_fail(ix->ctx, KILN_E_INVALID,
                           "free list entry %llu is slot %u, not a free slot named once",
                           (unsigned long long)j, v);
        else
            once[v] = 1;
    }
    free(once);
    return st;
}

/* Invariant 3. */
static kiln_status check_reachable(const struct kiln_index *ix, int threads) {
    kiln_ctx *ctx = ix->ctx;
    uint8_t *seen = NULL;
    uint32_t *queue = NULL;
    kiln_status st;
    if ((st = kiln_calloc(ctx, ix->count, "the validator's marks", (void **)&seen)) ||
        (st = kiln_alloc(ctx, ix->count * sizeof *queue, "the validator's queue",
                         (void **)&queue))) {
        free(seen);
        return st;
    }
    for (uint64_t i = 0; ix->freed && i < ix->count; i++)
        seen[i] = ix->freed[i]; /* free slots are not nodes (invariant 4) */
    const uint64_t live = ix->count - ix->free_count;
    const uint64_t reached = kiln_l0_mark_reachable(ix, seen, queue, ix->entry_point, threads);
    if (reached < live) {
        uint64_t first = 0;
        while (seen[first])
            first++;
        st = kiln_fail(ctx, KILN_E_INVALID,
                       "%llu of %llu nodes are unreachable from the entry point on level 0 "
                       "(first: node %llu)",
                       (unsigned long long)(live - reached), (unsigned long long)live,
                       (unsigned long long)first);
    }
    free(queue);
    free(seen);
    return st;
}

uint64_t kiln_index_nonfinite(const struct kiln_index *ix, uint64_t *first) {
    const long n = (long)ix->count;
    uint64_t bad = 0;
    long low = n;
#pragma omp parallel for num_threads(kiln_threads(0)) schedule(static, 16384)                     \
    reduction(+ : bad) reduction(min : low)
    for (long i = 0; i < n; i++) {
        if (kiln_node_nonfinite(ix, (uint32_t)i)) {
            bad++;
            low = i < low ? i : low;
        }
    }
    *first = bad ? (uint64_t)low : UINT64_MAX;
    return bad;
}

static kiln_status check_index(const kiln_index *ix);

kiln_status kiln_index_check(const kiln_index *ix) {
    if (!ix)
        return KILN_E_ARG;
    kiln_writer_begin(ix);
    const kiln_status st = check_index(ix);
    kiln_writer_end(ix);
    return st;
}

static kiln_status check_index(const kiln_index *ix) {
    kiln_ctx *ctx = ix->ctx;
    if (ix->free_count > ix->count)
        return kiln_fail(ctx, KILN_E_INVALID, "%llu free slots in an index of %llu",
                         (unsigned long long)ix->free_count, (unsigned long long)ix->count);
    kiln_status fst = check_free_list(ix);
    if (fst)
        return fst;
    if (ix->count == ix->free_count) {
        if (ix->entry_point != KILN_NO_NODE || ix->max_level != 0)
            return kiln_fail(ctx, KILN_E_INVALID,
                             "an index with no live node has entry point %u and top level %u",
                             ix->entry_point, ix->max_level);
        return ix->count ? check_lists(ix, kiln_threads(0)) : KILN_OK;
    }
    if (ix->entry_point >= ix->count)
        return kiln_fail(ctx, KILN_E_INVALID, "entry point %u is out of range (count %llu)",
                         ix->entry_point, (unsigned long long)ix->count);
    if (ix->max_level >= KILN_MAX_LEVELS)
        return kiln_fail(ctx, KILN_E_INVALID, "top level %u is above the limit %d", ix->max_level,
                         KILN_MAX_LEVELS - 1);
    if (kiln_slot_free(ix, ix->entry_point))
        return kiln_fail(ctx, KILN_E_INVALID, "entry point %u is a free slot", ix->entry_point);
    if (ix->levels[ix->entry_point] != ix->max_level)
        return kiln_fail(ctx, KILN_E_INVALID, "entry point %u is on level %u, not the top level %u",
                         ix->entry_point, ix->levels[ix->entry_point], ix->max_level);
    if (ix->M0 > 2 * KILN_MAX_M || ix->M > KILN_MAX_M)
        return kiln_fail(ctx, KILN_E_INVALID, "degree bounds M=%u M0=%u are out of range", ix->M,
                         ix->M0);
    const int threads = kiln_threads(0);
    kiln_status st = check_lists(ix, threads);
    if (st == KILN_OK)
        st = check_reachable(ix, threads);
    return st;
}
