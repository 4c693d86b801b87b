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

/* The same rule over rows of a block of vectors instead of an index's
 * nodes: candidate i is row sorted[i].id of rows (dim floats each),
 * compared with dist (NaN as +inf); at most M kept, their positions in
 * sorted to pick. Short lists are judged too (no shortcut below M). */
uint32_t kiln_select_rows(const float *rows, uint32_t dim, kiln_dist_fn dist,
                          const kiln_cand *sorted, uint32_t n, uint32_t M, uint32_t *pick);

/* The local prune of a node's candidates from one cluster (graph/prune.c
 * decision 4): the heuristic over sorted (rows as in kiln_select_rows) to
 * at most cap, then the nearest others until fill are kept. Positions in
 * sorted go to pick, ascending (room for n); returns how many. Candidates
 * past the first KILN_PRUNE_LOCAL_MAX are ignored. */
#define KILN_PRUNE_LOCAL_MAX 256
uint32_t kiln_prune_local(const float *rows, uint32_t dim, kiln_dist_fn dist,
                          const kiln_cand *sorted, uint32_t n, uint32_t cap, uint32_t fill,
                          uint32_t *pick);
/* How many of a node's candidates from one cluster the local prune keeps
 * at least: 3M/4 (graph/prune.c decision 4). */
static inline uint32_t kiln_local_fill(uint32_t M) { return (3 * M + 3) / 4; }

/* Direction hashes (graph/prune.c decision 5): the sign bits of
 * KILN_HASH_BITS random projections of v - u, from projections of u and v
 * made by kiln_hash_project with the same planes. */
#define KILN_HASH_BITS 12
#define KILN_HASH_MASK ((1u << KILN_HASH_BITS) - 1)
/* KILN_HASH_BITS Gaussian planes of dim components drawn from seed, stored
 * component-major: plane k's component j at j * KILN_HASH_BITS + k (the
 * caller frees). */
kiln_status kiln_hash_planes(kiln_ctx *ctx, uint32_t dim, uint64_t seed, float **planes);
void kiln_hash_project(const float *planes, uint32_t dim, const float *v,
                       float proj[KILN_HASH_BITS]);
static inline uint32_t kiln_hash_edge(const float *pu, const float *pv) {
    uint32_t h = 0;
    for (unsigned k = 0; k < KILN_HASH_BITS; k++)
        h |= (uint32_t)(pv[k] > pu[k]) << k;
    return h;
}
/* The hash of v -> u from that of u -> v: every sign flips. */
static inline uint32_t kiln_hash_reverse(uint32_t h) { return ~h & KILN_HASH_MASK; }

/* A candidate link with its direction hash. */
typedef struct kiln_hcand {
    float dist;
    uint32_t id;
    uint32_t hash;
} kiln_hcand;

/* One node's links from one group of resident rows (a cluster batch):
 * sorted holds its candidates nearest first (id = row), self its row, proj
 * KILN_HASH_BITS projections per row. The local prune (cap M0, fill
 * kiln_local_fill(M)) picks; each pick goes to out as (distance, global id,
 * hash of self -> it), global[row] or the row itself when global is NULL.
 * Returns how many (at most n). */
uint32_t kiln_local_links(const float *rows, uint32_t dim, kiln_dist_fn dist, const float *proj,
                          uint32_t self, const kiln_cand *sorted, uint32_t n, uint32_t M,
                          uint32_t M0, const uint32_t *global, kiln_hcand *out);

/* From candidates sorted by (dist, id), distinct ids, hashes <=
 * KILN_HASH_MASK: choose each whose hash no nearer chosen one has, up to cap
 * (graph/prune.c decision 5), then keep the nearest others until fill; the
 * kept are moved to the front of c in distance order. Returns how many. */
uint32_t kiln_hash_select(kiln_hcand *c, uint32_t n, uint32_t cap, uint32_t fill);
void kiln_hcands_sort(kiln_hcand *c, uint32_t n);

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
/* Inserts nodes[0 .. n) (vectors and levels set, lists empty, no link to
 * them) into the graph of ix, which holds base >= 1 other nodes and an entry
 * point: the same batches on `threads` threads, thread-independent; a node
 * above the top level becomes the entry point (graph/hnsw_insert.c decision
 * 7). kiln_index_add's insertion. */
kiln_status kiln_hnsw_insert_nodes(struct kiln_index *ix, const uint32_t *nodes, uint32_t n,
                                   uint64_t base, uint32_t ef_construction, int threads);
/* The same on levels bottom and up only: nodes[0 .. n) reach bottom, and
 * base >= 1 nodes of the graph do (graph/hnsw_live.c decision 9: the
 * device add inserts its new nodes' upper levels with bottom 1). */
kiln_status kiln_hnsw_insert_nodes_from(struct kiln_index *ix, const uint32_t *nodes, uint32_t n,
                                        uint64_t base, uint32_t ef_construction, int threads,
                                        uint32_t bottom);
/* The same for levels bottom and up only, over the nodes that reach bottom:
 * with bottom = 1 it builds the hierarchy above a level 0 made otherwise. */
kiln_status kiln_hnsw_insert_levels(struct kiln_index *ix, uint32_t ef_construction, int threads,
                                    uint32_t bottom);
/* The same graph as kiln_hnsw_insert_levels with bottom 1, built over a
 * compact copy of the level >= 1 nodes (graph/hnsw_insert.c decision 6):
 * their vectors side by side, in the heap, or in unnamed files in spill_dir
 * when it is not NULL. */
kiln_status kiln_hnsw_insert_upper(struct kiln_index *ix, uint32_t ef_construction, int threads,
                                   const char *spill_dir);
/* Nodes from which kiln_hnsw_insert_upper pays for its copy (decision 6). */
#define KILN_UPPER_COMPACT_MIN 262144
/* Heap bytes kiln_hnsw_insert_upper holds beyond ix with no spill_dir (its
 * copy of the vectors and its links, the id map and insertion order, one
 * visited tag per node per thread; not the per-batch reverse-edge buffer,
 * M levels x 16 bytes for each of at most n / 1000 nodes). */
uint64_t kiln_hnsw_upper_bytes(const struct kiln_index *ix, int threads);

/* Builds level 0 from candidate neighbour lists: node i's candidates are
 * cand[i*width .. i*width+width) (KILN_NO_NODE pads; duplicates and self
 * allowed; width <= KILN_PRUNE_LOCAL_MAX). With the whole set resident as
 * one group, each list is deduplicated, ranked by exact distance and pruned
 * locally (kiln_local_links), then goes through the forward and reverse
 * passes as the device pipeline's lists do. Level-1 links are embedded as
 * protected "highways" (graph/merge.c decision 4), so build the upper
 * levels first. */
kiln_status kiln_level0_from_candidates(struct kiln_index *ix, const uint32_t *cand, uint32_t width,
                                        int threads);

/* A block of consecutive nodes [first, first + count) with a list of
 * candidates each: node first+i's are cands[offsets[i] .. offsets[i+1]),
 * each with its exact distance from the node and the direction hash of
 * node -> candidate (graph/merge.c decisions 1 and 6). */
typedef struct kiln_l0_block {
    uint32_t first, count;
    const uint64_t *offsets; /* count + 1 */
    const kiln_hcand *cands;
} kiln_l0_block;

/* A level-0 link seen from its target: source -> target at distance dist,
 * with the hash of target -> source. With KILN_EDGE_OWN in hash it is
 * instead one of the target's own forward links (from = the link), which
 * the reverse pass needs with its distance and hash (graph/merge.c
 * decision 2). */
typedef struct kiln_edge {
    uint32_t to, from;
    float dist;
    uint32_t hash;
} kiln_edge;
#define KILN_EDGE_OWN 0x80000000u

/* Groups n edges, every target in [first, first + count), by target,
 * stably (their order kept within a target): off (count + 1, caller's)
 * gets a block's offsets and in (n entries) each edge as (dist, from,
 * hash), the candidates of kiln_l0_reverse. */
void kiln_edges_by_target(const kiln_edge *e, uint64_t n, uint32_t first, uint32_t count,
                          uint64_t *off, kiln_hcand *in);

/* Length of the longest list of a block. */
uint64_t kiln_l0_block_max(const kiln_l0_block *b);

/* Forward pass over a block (duplicates and self allowed among the
 * candidates, which carry the hash of node -> candidate): each node's list
 * is deduplicated, selected by hash to at most M0 after the protected
 * highway links (graph/merge.c decision 1), and written to its level-0
 * block. It reads no vector. rev (room for 2 * count * M0) gets, in node
 * order, every link that wants a reverse link and every node's own links
 * (KILN_EDGE_OWN); *n_rev their number. Build the upper levels first. */
kiln_status kiln_l0_forward(struct kiln_index *ix, const kiln_l0_block *b, int threads,
                            kiln_edge *rev, uint64_t *n_rev);
/* Reverse pass over a block of targets whose candidates are their edges
 * (kiln_edges_by_target): a target's own links (KILN_EDGE_OWN), then its
 * incoming links in source id order, each appended while there is room;
 * a full list is re-selected by hash (never its protected links). It reads
 * no vector. scratch has room for offsets[count] entries. Deterministic:
 * the same block gives the same lists whatever the threads. */
kiln_status kiln_l0_reverse(struct kiln_index *ix, const kiln_l0_block *b, kiln_hcand *scratch,
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
 * before instead of a search. threads run the BFS. *out says what was
 * done. */
kiln_status kiln_repair_reachability(struct kiln_index *ix, uint32_t ef, int threads,
                                     kiln_repair_stats *out);

/* Removes from the graph, as kiln_index_delete does (graph/hnsw_live.c
 * decisions 1-4), every slot marked in doomed (count marks; slots free
 * already are skipped): their in-neighbours are relinked, the slots freed in
 * id order, the entry point moved when it is one of them, and level 0
 * repaired with beam ef (*rep says what the repair added, zero when nothing
 * was marked). By slot, not label, so labels need not be unique: the label
 * map is dropped, and the next write builds it from the live slots. For the
 * hnswlib importer's elements marked deleted (graph/hnswlib_file.c). */
kiln_status kiln_live_remove_marked(struct kiln_index *ix, const uint8_t *doomed, uint32_t ef,
                                    kiln_repair_stats *rep);

/* Refuses labels (n of them) that repeat or hold -1, naming the rows. */
kiln_status kiln_build_labels_check(kiln_ctx *ctx, const int64_t *labels, size_t n);

/* The build's memory budget in bytes: params->memory_limit, else half of
 * physical memory (or of the cgroup's limit). */
static inline uint64_t kiln_build_budget(const kiln_build_params *p) {
    return p->memory_limit ? p->memory_limit : kiln_physical_memory() / 2;
}

/* The device method, on an index whose vectors are in place: graph/ declares
 * it and the library it is linked into defines it, so graph/ never includes
 * host/. In libkiln it is host/device_build.c; in libkiln-core, which has no
 * device side, graph/device_absent.c answers KILN_E_NO_DEVICE. */
/* seed is NULL for a build. For the device add (graph/hnsw_live.c
 * decision 9) it says that nodes [0, seeded) already form a graph: their
 * level-0 lists join their candidates, so they keep what was found before,
 * and the upper levels of every node are built by the caller. */
typedef struct kiln_device_seed {
    uint64_t seeded;
} kiln_device_seed;
kiln_status kiln_build_device(struct kiln_index *ix, const kiln_build_params *p,
                              kiln_build_report *rep, const kiln_device_seed *seed);
/* The rows [first, first + count) of n that this rank checks and
 * fingerprints in a collective build (graph/hnsw_build.c decision 6): its
 * 1/R of them; all n in one process. */
void kiln_rank_share(const kiln_build_params *p, uint64_t n, size_t *first, size_t *count);
/* Whether kiln_build_device can run at all in this library (libkiln built
 * with OpenCL): it decides the default method of kiln_build_params_init. */
bool kiln_build_device_available(void);

#endif /* KILN_BUILD_INTERNAL_H */
