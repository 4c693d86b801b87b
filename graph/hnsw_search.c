/* hnsw_search.c -- HNSW search: greedy descent through the upper levels and
 * a beam search of width ef on level 0 (Malkov & Yashunin, algorithms 2 and
 * 5), shared by the builders and by kiln_index_search.
 *
 * Design decisions:
 *  1. The visited set is an array of 16-bit tags compared with an epoch, so
 *     starting a query is one increment; a full clear happens once in 65535
 *     queries. Scratch is kept in a pool on the index (hnswlib's
 *     VisitedListPool), so a loaded, read-only index serves any number of
 *     threads with no per-query allocation.
 *  2. The same level search serves construction and queries, reading link
 *     lists in place: builders never write a list while it may be searched
 *     (graph/hnsw_insert.c searches each batch's snapshot of the graph, then
 *     writes), so the level search takes no lock (decision 7).
 *  3. The search is bound by memory latency, not arithmetic: the frontier's
 *     next node's link block is prefetched while the current node's
 *     neighbours are scored (+11-15% QPS at 1M x 128, where links and
 *     vectors, in separate arrays, both miss the cache), and of an expanded
 *     node's neighbours the unvisited are listed first (their tags fetched
 *     together), then scored with the vectors SEARCH_PREFETCH ahead fetched
 *     whole, not just their first line (as hnswlib's searchBaseLayer).
 *  4. Results are ordered by (distance, id), so equal distances come back in
 *     a stable order whatever the thread count.
 *  5. Every distance is kiln_node_dist's, which takes NaN as +inf: a NaN
 *     compares false with everything, so one NaN row on the beam's top made
 *     the bound NaN and no later candidate was admitted (one NaN component
 *     in one row of 5,000 took recall@10 at ef 16 from 0.9985 to 0.55).
 *     Mapping at the one place a distance is made keeps every comparator a
 *     plain total order. Cost, siftsmall, 100 queries x 201 passes at ef 16
 *     and 64 on the shared 2-core machine: median user CPU 1.22 s against
 *     1.18 s before (spreads 1.12-1.43 and 1.14-1.32), i.e. within noise.
 *  6. Search never trusts a link: a mapped index (graph/index_file.c
 *     decision 7) is opened without reading its links, so each list's count
 *     is clamped to its level's bound and each id followed must be < count
 *     (and, above level 0, on that level, so its block exists); anything
 *     else is skipped. A crafted file then gives wrong neighbours, never a
 *     read outside the index. The alternative, checking every link at open,
 *     is O(links): 132 MB of LINKS0 at 1M x M 16, 13 GB at 100M. Cost,
 *     callgrind instructions in kiln_index_search, siftsmall 100 queries,
 *     k 10, one thread: ef 16 6,537,908 -> 6,663,827 (+1.9%), ef 64
 *     18,805,736 -> 19,155,971 (+1.9%), results identical. Checking
 *     the prefetch's id too (a select per neighbour) cost +3.0% and bought
 *     nothing: a prefetch never faults, so its address may be off the array.
 *  7. A query of kiln_index_search holds the index's read lock while it
 *     runs (graph/hnsw_live.c decision 8), one query at a time, so a writer
 *     waits for at most one query per searching thread and a long batch of
 *     queries does not hold it off. The count can have grown since a
 *     scratch was made, so each query first fits the visited tags to it,
 *     under the lock. The internal level searches (kiln_search_level) take
 *     no lock: their callers, builders and the writer, own the index.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "search_internal.h"
#include "../common/sort_internal.h"

/* Neighbours whose vectors are requested ahead of their distance (decision 3). */
#define SEARCH_PREFETCH 2

/* ==== Heaps ==== */

_Atomic uint32_t kiln_fault_heap_grow;

/* A growth that the fault hook lets through. */
static bool heap_grow_allowed(void) {
    uint32_t left = atomic_load_explicit(&kiln_fault_heap_grow, memory_order_relaxed);
    while (left > 0)
        if (atomic_compare_exchange_weak(&kiln_fault_heap_grow, &left, left - 1))
            return false;
    return true;
}

#define cand_less kiln_cand_before

/* true when a belongs above b in the heap */
static inline bool heap_above(kiln_cand a, kiln_cand b, bool is_max) {
    return is_max ? cand_less(b, a) : cand_less(a, b);
}

void kiln_heap_push(kiln_heap *h, kiln_cand c, bool is_max) {
    if (h->size == h->cap) {
        uint32_t cap = h->cap ? h->cap * 2 : 64;
        kiln_cand *v =
            cap > h->cap && heap_grow_allowed() ? realloc(h->v, (size_t)cap * sizeof *v) : NULL;
        if (!v) {
            h->short_of_memory = true;
            return;
        }
        h->v = v;
        h->cap = cap;
    }
    uint32_t i = h->size++;
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!heap_above(c, h->v[p], is_max))
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = c;
}

kiln_cand kiln_heap_pop(kiln_heap *h, bool is_max) {
    kiln_cand top = h->v[0];
    kiln_cand last = h->v[--h->size];
    uint32_t i = 0, n = h->size;
    for (;;) {
        uint32_t l = 2 * i + 1;
        if (l >= n)
            break;
        uint32_t r = l + 1;
        uint32_t m = (r < n && heap_above(h->v[r], h->v[l], is_max)) ? r : l;
        if (!heap_above(h->v[m], last, is_max))
            break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (n)
        h->v[i] = last;
    return top;
}

KILN_DEFINE_SORT(cands_sort, kiln_cand, cand_less)

void kiln_cands_sort(kiln_cand *v, uint32_t n) { cands_sort(v, (ptrdiff_t)n); }

/* ==== Scratch ==== */

kiln_status kiln_scratch_new(kiln_ctx *ctx, const struct kiln_index *ix, uint32_t ef,
                             kiln_scratch **out) {
    kiln_scratch *sc = NULL;
    kiln_status st = kiln_calloc(ctx, sizeof *sc, "search scratch", (void **)&sc);
    if (st)
        return st;
    sc->capacity = ix->count;
    uint32_t maxdeg = ix->M0 > ix->M ? ix->M0 : ix->M;
    uint32_t hcap = ef + 2;
    if ((st = kiln_calloc(ctx, (ix->count ? ix->count : 1) * sizeof(uint16_t), "visited tags",
                          (void **)&sc->tags)) ||
        (st = kiln_alloc(ctx, (size_t)hcap * sizeof(kiln_cand), "search heap",
                         (void **)&sc->top.v)) ||
        (st = kiln_alloc(ctx, (size_t)hcap * 2 * sizeof(kiln_cand), "search heap",
                         (void **)&sc->cand.v)) ||
        (st = kiln_alloc(ctx, ((size_t)maxdeg + 1) * sizeof(uint32_t), "neighbour buffer",
                         (void **)&sc->fresh)) ||
        (st = kiln_alloc_aligned(ctx, (size_t)ix->dim * sizeof(float), "query buffer",
                                 (void **)&sc->qbuf))) {
        kiln_scratch_free(sc);
        return st;
    }
    sc->top.cap = hcap;
    sc->cand.cap = hcap * 2;
    sc->epoch = 0;
    *out = sc;
    return KILN_OK;
}

void kiln_scratch_free(kiln_scratch *sc) {
    if (!sc)
        return;
    free(sc->tags);
    free(sc->top.v);
    free(sc->cand.v);
    free(sc->fresh);
    kiln_free_aligned(sc->qbuf);
    free(sc);
}

void kiln_scratch_reset(kiln_scratch *sc) {
    if (++sc->epoch == 0) {
        memset(sc->tags, 0, sc->capacity * sizeof(uint16_t));
        sc->epoch = 1;
    }
    sc->top.size = 0;
    sc->cand.size = 0;
}

/* ==== Search ==== */

/* The link list of node on level, in place (the graph is not written while
 * it is searched: builders search a batch's snapshot, graph/hnsw_insert.c).
 * Returns the count, clamped to the level's bound (decision 6); *ids the
 * ids, which the caller bounds-checks. */
static inline uint32_t links_get(const struct kiln_index *ix, uint32_t node, unsigned level,
                                 const uint32_t **ids) {
    const uint32_t *l = kiln_links(ix, node, level);
    const uint32_t bound = level ? ix->M : ix->M0;
    *ids = l + 1;
    return l[0] < bound ? l[0] : bound;
}

void kiln_greedy_descend(const struct kiln_index *ix, const float *q, uint32_t top, uint32_t stop,
                         uint32_t *cur, float *cur_dist) {
    for (uint32_t level = top; level > stop; level--) {
        bool changed = true;
        while (changed) {
            changed = false;
            const uint32_t *ids;
            uint32_t n = links_get(ix, *cur, level, &ids);
            for (uint32_t j = 0; j < n; j++) {
                uint32_t c = ids[j];
                /* Decision 6: a link off the graph or off this level (a
                 * crafted file) is skipped, never followed. */
                if (c >= ix->count || ix->levels[c] < level)
                    continue;
                float d = kiln_node_dist(ix, q, c);
                if (d < *cur_dist || (d == *cur_dist && c < *cur)) {
                    *cur_dist = d;
                    *cur = c;
                    changed = true;
                }
            }
        }
    }
}

void kiln_search_level(const struct kiln_index *ix, kiln_scratch *sc, const float *q, uint32_t ep,
                       float ep_dist, uint32_t ef, unsigned level) {
    kiln_scratch_reset(sc);
    uint16_t *tags = sc->tags;
    const uint16_t epoch = sc->epoch;
    kiln_heap *top = &sc->top, *cand = &sc->cand;
    const uint64_t count = ix->count;

    tags[ep] = epoch;
    kiln_heap_push(top, (kiln_cand){ep_dist, ep}, true);
    kiln_heap_push(cand, (kiln_cand){ep_dist, ep}, false);
    float bound = ep_dist;

    while (cand->size) {
        kiln_cand c = kiln_heap_pop(cand, false);
        if (c.dist > bound && top->size >= ef)
            break;
        /* The frontier's next node is likely the next one expanded: fetch
         * its link block while this one's neighbours are scored. */
        if (cand->size)
            __builtin_prefetch(kiln_links(ix, cand->v[0].id, level));
        const uint32_t *ids;
        const uint32_t n = links_get(ix, c.id, level, &ids);
        /* Decision 3: the unvisited first, then their vectors whole, a
         * couple ahead of the distance that reads them. */
        uint32_t *const fresh = sc->fresh;
        uint32_t m = 0;
        for (uint32_t j = 0; j < n; j++)
            __builtin_prefetch(&tags[ids[j]]);
        for (uint32_t j = 0; j < n; j++) {
            const uint32_t v = ids[j];
            /* Decision 6: ids off the graph or off this level are skipped. */
            if (v >= count || (level && ix->levels[v] < level))
                continue;
            if (tags[v] != epoch) {
                tags[v] = epoch;
                fresh[m++] = v;
            }
        }
        for (uint32_t j = 0; j < m && j < SEARCH_PREFETCH; j++)
            kiln_prefetch_vector(ix, fresh[j]);
        for (uint32_t j = 0; j < m; j++) {
            const uint32_t v = fresh[j];
            if (j + SEARCH_PREFETCH < m)
                kiln_prefetch_vector(ix, fresh[j + SEARCH_PREFETCH]);
            float d = kiln_node_dist(ix, q, v);
            if (top->size < ef || d < bound) {
                kiln_heap_push(cand, (kiln_cand){d, v}, false);
                kiln_heap_push(top, (kiln_cand){d, v}, true);
                if (top->size > ef)
                    kiln_heap_pop(top, true);
                bound = top->v[0].dist;
            }
        }
    }
}

/* ==== Scratch pool (per index) ==== */

/* The pool lives beside the index: a loaded index is otherwise immutable, and
 * the pool only hands out scratch, so searches stay thread-safe. */
typedef struct scratch_pool {
    pthread_mutex_t lock;
    kiln_scratch *free_list;
} scratch_pool;

/* The pool of ix, created on first use. Every search calls this, so the
 * common case is one atomic load; racing creators settle it by
 * compare-and-swap and the loser frees its copy. */
static scratch_pool *pool_of(const struct kiln_index *ix) {
    struct kiln_index *mix = (struct kiln_index *)(uintptr_t)ix;
    void *cur = atomic_load_explicit(&mix->scratch_pool, memory_order_acquire);
    if (cur)
        return cur;
    scratch_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    pthread_mutex_init(&p->lock, NULL);
    if (atomic_compare_exchange_strong_explicit(&mix->scratch_pool, &cur, p, memory_order_acq_rel,
                                                memory_order_acquire))
        return p;
    pthread_mutex_destroy(&p->lock);
    free(p);
    return cur;
}

static kiln_status scratch_take(const struct kiln_index *ix, uint32_t ef, kiln_scratch **out) {
    scratch_pool *p = pool_of(ix);
    if (!p)
        return kiln_fail(ix->ctx, KILN_E_NOMEM, "out of memory allocating a scratch pool");
    pthread_mutex_lock(&p->lock);
    kiln_scratch *sc = p->free_list;
    if (sc)
        p->free_list = sc->next_free;
    pthread_mutex_unlock(&p->lock);
    if (sc && sc->top.cap < ef + 2) {
        kiln_scratch_free(sc);
        sc = NULL;
    }
    if (sc) {
        *out = sc;
        return KILN_OK;
    }
    kiln_read_begin(ix); /* the count it sizes tags by (decision 7) */
    const kiln_status st = kiln_scratch_new(ix->ctx, ix, ef, out);
    kiln_read_end(ix);
    return st;
}

static void scratch_give(const struct kiln_index *ix, kiln_scratch *sc) {
    scratch_pool *p = pool_of(ix); /* exists: scratch_take made it */
    pthread_mutex_lock(&p->lock);
    sc->next_free = p->free_list;
    p->free_list = sc;
    pthread_mutex_unlock(&p->lock);
}

void kiln_scratch_pool_free(struct kiln_index *ix) {
    scratch_pool *p = atomic_load_explicit(&ix->scratch_pool, memory_order_acquire);
    if (!p)
        return;
    while (p->free_list) {
        kiln_scratch *sc = p->free_list;
        p->free_list = sc->next_free;
        kiln_scratch_free(sc);
    }
    pthread_mutex_destroy(&p->lock);
    free(p);
    atomic_store_explicit(&ix->scratch_pool, NULL, memory_order_release);
}

/* ==== Public ==== */

void kiln_search_params_init(kiln_search_params *p) {
    p->k = 10;
    p->ef = 64;
    p->threads = 1;
}

/* Visited tags for every slot of ix (decision 7): an add since sc was made
 * may have raised the count. Room for the capacity, so that adds do not
 * make each search reallocate. false when out of memory. */
static bool scratch_fit(const struct kiln_index *ix, kiln_scratch *sc) {
    if (sc->capacity >= ix->count)
        return true;
    const uint64_t cap = ix->capacity > ix->count ? ix->capacity : ix->count;
    uint16_t *tags = calloc((size_t)cap, sizeof *tags);
    if (!tags)
        return false;
    free(sc->tags);
    sc->tags = tags;
    sc->capacity = cap;
    sc->epoch = 0;
    return true;
}

/* One query: labels/dists rows of k, under the index's read lock (decision
 * 7). false when out of memory (the candidate heap, kiln_heap_push, or the
 * visited tags), so the rows may miss neighbours. */
static bool search_one(const struct kiln_index *ix, kiln_scratch *sc, const float *query,
                       uint32_t k, uint32_t ef, int64_t *labels, float *dists) {
    uint32_t found = 0;
    kiln_read_begin(ix);
    if (!scratch_fit(ix, sc))
        sc->cand.short_of_memory = true;
    else if (ix->entry_point != KILN_NO_NODE) { /* none: empty, or every node deleted */
        const float *q = query;
        if (ix->metric == KILN_METRIC_COS) {
            memcpy(sc->qbuf, query, (size_t)ix->dim * sizeof(float));
            kiln_normalize(sc->qbuf, ix->dim);
            q = sc->qbuf;
        }
        uint32_t cur = ix->entry_point;
        float cur_dist = kiln_node_dist(ix, q, cur);
        kiln_greedy_descend(ix, q, ix->max_level, 0, &cur, &cur_dist);
        kiln_search_level(ix, sc, q, cur, cur_dist, ef, 0);
        found = sc->top.size;
        if (ix->storage != KILN_STORAGE_F32 && ix->vectors)
            kiln_rerank(ix, q, sc->top.v, found); /* graph/storage.c decision 3 */
        else
            kiln_cands_sort(sc->top.v, found);
        if (found > k)
            found = k;
        for (uint32_t j = 0; j < found; j++) {
            labels[j] = ix->labels[sc->top.v[j].id];
            if (dists)
                dists[j] = sc->top.v[j].dist;
        }
    }
    kiln_read_end(ix);
    for (uint32_t j = found; j < k; j++) {
        labels[j] = -1;
        if (dists)
            dists[j] = INFINITY;
    }
    const bool ok = !sc->cand.short_of_memory;
    sc->cand.short_of_memory = false;
    return ok;
}

static kiln_status search_short_of_memory(const struct kiln_index *ix, uint32_t ef) {
    return kiln_fail(ix->ctx, KILN_E_NOMEM,
                     "search: out of memory growing the candidate heap or visited set (ef %u); "
                     "results are incomplete",
                     ef);
}

kiln_status kiln_index_search(const kiln_index *ix, const float *queries, size_t nq,
                              const kiln_search_params *params, int64_t *labels, float *distances) {
    if (!ix)
        return KILN_E_ARG;
    if (!params || !labels || (nq && !queries))
        return kiln_fail(ix->ctx, KILN_E_ARG, "search: NULL params, queries or labels");
    if (params->k < 1)
        return kiln_fail(ix->ctx, KILN_E_ARG, "search: k must be at least 1");
    const uint32_t k = params->k;
    const uint32_t ef = params->ef > k ? params->ef : k;
    int threads = kiln_threads(params->threads);
    if ((size_t)threads > nq)
        threads = nq ? (int)nq : 1;

    if (threads <= 1) {
        kiln_scratch *sc;
        kiln_status st = scratch_take(ix, ef, &sc);
        if (st)
            return st;
        bool ok = true;
        for (size_t i = 0; i < nq; i++)
            ok &= search_one(ix, sc, queries + i * ix->dim, k, ef, labels + i * k,
                             distances ? distances + i * k : NULL);
        scratch_give(ix, sc);
        return ok ? KILN_OK : search_short_of_memory(ix, ef);
    }
    kiln_status result = KILN_OK;
    bool ok = true;
#pragma omp parallel num_threads(threads) reduction(& : ok)
    {
        kiln_scratch *sc = NULL;
        kiln_status st = scratch_take(ix, ef, &sc);
        if (st) {
#pragma omp critical(kiln_search_error)
            result = st;
        }
#pragma omp for schedule(dynamic, 16)
        for (size_t i = 0; i < nq; i++)
            if (sc)
                ok &= search_one(ix, sc, queries + i * ix->dim, k, ef, labels + i * k,
                                 distances ? distances + i * k : NULL);
        if (sc)
            scratch_give(ix, sc);
    }
    return result != KILN_OK ? result : ok ? KILN_OK : search_short_of_memory(ix, ef);
}
