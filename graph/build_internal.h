/* build_internal.h -- graph construction pieces shared by the builders:
 * the HNSW neighbour-selection heuristic, insertion, and the level-0
 * reachability repair that every builder runs last. graph/hnsw_build.c
 * drives them, and host/device_build.c for the device method. */
#ifndef KILN_BUILD_INTERNAL_H
#define KILN_BUILD_INTERNAL_H

#include "../common/ctx_internal.h"
#include "../common/progress_internal.h"
#include "search_internal.h"

/* Appends a stage's seconds to a build report (the first
 * KILN_REPORT_MAX_STAGES stages are kept). */
static inline void kiln_report_stage(kiln_build_report *rep, const char *name, double seconds) {
    if (rep->n_stages < KILN_REPORT_MAX_STAGES) {
        rep->stages[rep->n_stages].name = name;
        rep->stages[rep->n_stages].seconds = seconds;
        rep->n_stages++;
    }
}

/* Malkov & Yashunin's heuristic (algorithm 4, hnswlib's
 * getNeighborsByHeuristic2): from candidates sorted nearest first, keep c
 * unless an already kept neighbour is nearer to c than the base node is.
 * Returns how many ids went to out (at most M). Fewer than M candidates are
 * all kept. */
uint32_t kiln_select_neighbors(const struct kiln_index *ix, const kiln_cand *sorted, uint32_t n,
                               uint32_t M, uint32_t *out);

/* Adds links node -> in[i].id on level (in[i].dist the distance from node),
 * for the n entries of in, sorted by (dist, id); ids already in the list
 * (and node itself) are skipped. When they fit they are appended in that
 * order; otherwise the list is re-pruned with the heuristic from its members
 * after the first `keep` (which stay in place) plus the new ones, to the
 * level's capacity. in must have room for n + capacity entries and is
 * overwritten. Takes no lock: the caller makes sure no one else touches
 * node's list meanwhile. */
void kiln_links_merge(const struct kiln_index *ix, uint32_t node, unsigned level, uint32_t keep,
                      kiln_cand *in, uint32_t n);

/* Inserts every node of ix (vectors, labels and levels set; links empty) by
 * HNSW insertion with beam width ef_construction on `threads` threads, in
 * batches of growing size (graph/hnsw_insert.c): the node of the highest
 * level first (it stays the entry point), the others in an order drawn from
 * ix->seed. The graph is the same whatever the thread count. */
kiln_status kiln_hnsw_insert_all(struct kiln_index *ix, uint32_t ef_construction, int threads);
/* The same for levels bottom and up only, over the nodes that reach bottom:
 * with bottom = 1 it builds the hierarchy above a level 0 made otherwise. */
kiln_status kiln_hnsw_insert_levels(struct kiln_index *ix, uint32_t ef_construction, int threads,
                                    uint32_t bottom);

/* Builds level 0 from candidate neighbour lists: node i's candidates are
 * cand[i*width .. i*width+width) (KILN_NO_NODE pads; duplicates and self
 * allowed). Each list is deduplicated, reranked with exact distances, pruned
 * with the heuristic to at most M0, then reverse links are added with
 * re-pruning of full lists. Level-1 links are embedded as protected
 * "highways" (graph/merge.c decision 4), so build the upper levels first. */
kiln_status kiln_level0_from_candidates(struct kiln_index *ix, const uint32_t *cand, uint32_t width,
                                        int threads);

/* A block of consecutive nodes [first, first + count) with a list of
 * candidates each: node first+i's are cands[offsets[i] .. offsets[i+1]),
 * each with its exact distance from the node (graph/merge.c decision 6). */
typedef struct kiln_l0_block {
    uint32_t first, count;
    const uint64_t *offsets; /* count + 1 */
    const kiln_cand *cands;
} kiln_l0_block;

/* A level-0 link seen from its target: source -> target at distance dist. */
typedef struct kiln_edge {
    uint32_t to, from;
    float dist;
} kiln_edge;

/* Groups n edges, every target in [first, first + count), by target,
 * stably (their order kept within a target): off (count + 1, caller's)
 * gets a block's offsets and in (n entries) each edge as (dist, from), the
 * candidates of kiln_l0_reverse. */
void kiln_edges_by_target(const kiln_edge *e, uint64_t n, uint32_t first, uint32_t count,
                          uint64_t *off, kiln_cand *in);

/* Length of the longest list of a block. */
uint64_t kiln_l0_block_max(const kiln_l0_block *b);

/* Forward pass over a block (duplicates and self allowed among the
 * candidates): each node's list is deduplicated, pruned with the heuristic
 * to at most M0 after the protected highway links, and written to its
 * level-0 block. rev (room for count * M0) gets every link that wants a
 * reverse link, in node order; *n_rev their number. Build the upper levels
 * first. */
kiln_status kiln_l0_forward(struct kiln_index *ix, const kiln_l0_block *b, int threads,
                            kiln_edge *rev, uint64_t *n_rev);
/* Reverse pass over a block of targets whose candidates are their incoming
 * edges (id = source): each is added to the target's list nearest first,
 * re-pruning a full list (never its protected links). scratch has room for
 * offsets[count] entries. Deterministic: the same block gives the same
 * lists whatever the threads. */
kiln_status kiln_l0_reverse(struct kiln_index *ix, const kiln_l0_block *b, kiln_cand *scratch,
                            int threads);

/* What a reachability repair did. */
typedef struct kiln_repair_stats {
    uint64_t links;    /* links added: one per unreachable island */
    uint64_t searches; /* beam searches run, <= KILN_REPAIR_SEARCHES(count) */
} kiln_repair_stats;

/* Searches one repair may run (graph/connect.c decision 3): far above what
 * any built graph needs, linear in the node count. */
#define KILN_REPAIR_SEARCHES(count) (1024 + (uint64_t)(count) / 16)

/* Makes every node reachable from the entry point on level 0: each island a
 * BFS does not reach is linked, at its first node in id order, from its
 * nearest reachable node that has room (or, failing that, replaces that
 * node's farthest link), then the BFS goes on from it. Past
 * KILN_REPAIR_SEARCHES islands the link comes from the island repaired
 * before instead of a search. *out says what was done. */
kiln_status kiln_repair_reachability(struct kiln_index *ix, uint32_t ef, kiln_repair_stats *out);

/* The build's memory budget in bytes: params->memory_limit, else half of
 * physical memory (or of the cgroup's limit). */
static inline uint64_t kiln_build_budget(const kiln_build_params *p) {
    return p->memory_limit ? p->memory_limit : kiln_physical_memory() / 2;
}

/* The device method, on an index whose vectors are in place: graph/ declares
 * it and the library it is linked into defines it, so graph/ never includes
 * host/. In libkiln it is host/device_build.c; in libkiln-core, which has no
 * device side, graph/device_absent.c answers KILN_E_NO_DEVICE. */
kiln_status kiln_build_device(struct kiln_index *ix, const kiln_build_params *p,
                              kiln_build_report *rep);
/* Whether kiln_build_device can run at all in this library (libkiln built
 * with OpenCL): it decides the default method of kiln_build_params_init. */
bool kiln_build_device_available(void);

#endif /* KILN_BUILD_INTERNAL_H */
