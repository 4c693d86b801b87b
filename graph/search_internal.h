/* search_internal.h -- the beam search shared by the builders and the query
 * path: bounded heaps, epoch-tagged visited sets, per-node link locks. */
#ifndef KILN_SEARCH_INTERNAL_H
#define KILN_SEARCH_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "hnsw_internal.h"

typedef struct kiln_cand {
    float dist;
    uint32_t id;
} kiln_cand;

/* The order of candidates everywhere: nearer first, ties by smaller id. */
static inline bool kiln_cand_before(kiln_cand a, kiln_cand b) {
    return a.dist < b.dist || (a.dist == b.dist && a.id < b.id);
}

/* A binary heap of candidates; max-heap or min-heap by construction. */
typedef struct kiln_heap {
    kiln_cand *v;
    uint32_t size, cap;
    bool short_of_memory; /* a push could not grow v and was dropped (sticky) */
} kiln_heap;

/* Per-thread search state, reused across queries. The visited set is a tag
 * array: node i is visited when tags[i] == epoch, so clearing is ++epoch. */
typedef struct kiln_scratch {
    uint16_t *tags; /* capacity entries */
    uint64_t capacity;
    uint16_t epoch;
    kiln_heap top;                  /* max-heap: the ef best so far */
    kiln_heap cand;                 /* min-heap: frontier */
    uint32_t *fresh;                /* the unvisited neighbours of the node expanded */
    float *qbuf;                    /* normalised query (COS) */
    struct kiln_scratch *next_free; /* pool link */
} kiln_scratch;

kiln_status kiln_scratch_new(kiln_ctx *ctx, const struct kiln_index *ix, uint32_t ef,
                             kiln_scratch **out);
void kiln_scratch_free(kiln_scratch *sc);
/* Starts a new visited set (amortised O(1)). */
void kiln_scratch_reset(kiln_scratch *sc);

/* Greedy descent from *cur (distance *cur_dist) through levels
 * top .. stop+1; leaves the nearest node found in *cur. */
void kiln_greedy_descend(const struct kiln_index *ix, const float *q, uint32_t top, uint32_t stop,
                         uint32_t *cur, float *cur_dist);

/* Beam search of width ef on one level from entry ep. On return sc->top is a
 * max-heap of up to ef nearest nodes found (unordered). Starts a new visited
 * set itself. */
void kiln_search_level(const struct kiln_index *ix, kiln_scratch *sc, const float *q, uint32_t ep,
                       float ep_dist, uint32_t ef, unsigned level);

/* Heap operations (max-heap when is_max, else min-heap). */
/* Pushes c, growing the heap as needed. When growing fails the candidate is
 * dropped and h->short_of_memory set, so a search under memory exhaustion
 * ends with a worse result that its caller reports as KILN_E_NOMEM instead
 * of the process dying. */
void kiln_heap_push(kiln_heap *h, kiln_cand c, bool is_max);
/* Fault injection for tests: while non-zero, each heap growth fails (and
 * counts it down), as a failed realloc would. */
extern _Atomic uint32_t kiln_fault_heap_grow;
kiln_cand kiln_heap_pop(kiln_heap *h, bool is_max);
/* Sorts the heap's array ascending by (dist, id) in place; destroys the heap. */
void kiln_cands_sort(kiln_cand *v, uint32_t n);
/* Re-scores the n candidates exactly on the index's f32 rows (the rerank
 * of compact storage, graph/storage.c decision 3) and sorts them. */
void kiln_rerank(const struct kiln_index *ix, const float *q, kiln_cand *c, uint32_t n);

#endif /* KILN_SEARCH_INTERNAL_H */
