/* hnsw_live.c -- live indexes: kiln_index_add, kiln_index_delete and
 * kiln_index_update change a built or loaded index in place, with no
 * rebuild (issue 14). Deletion is true removal, as in Redis's vector sets
 * (modules/vector-sets/hnsw.c, hnsw_delete_node): the node leaves every
 * level and its former in-neighbours are relinked, so the graph keeps no
 * tombstones and search never meets a deleted node.
 *
 * Design decisions:
 *  1. Slots. A deleted node's id becomes a free slot (hnsw_internal.h):
 *     level 0, no links, a zero vector, label -1, freed[] set, its id pushed
 *     on free_list. Adds pop free slots before they append, so ids stay
 *     dense and a churned index does not grow. Ids are never renumbered:
 *     nothing outside the index holds them, but renumbering would rewrite
 *     every list for no gain in search.
 *  2. Reconnection, by batch. A delete of a batch D first finds, in one pass
 *     over every live node u and level, the lists that name a node of D
 *     (there is no reverse index: hnswlib and Redis keep one, at 4-8 bytes a
 *     link, for single deletes; a batch pays one O(links) pass instead).
 *     Each such list keeps its live links in place and refills the places
 *     of the deleted ones from the orphaned candidates, the links of each
 *     deleted node it named on that level (FreshDiskANN's delete
 *     consolidation, Singh et al. 2021; Redis's hnsw_reconnect_nodes pairs
 *     up the deleted node's neighbours instead): the RECONNECT_JUDGED
 *     nearest to u, taken in distance order when the HNSW heuristic passes
 *     them against the links kept (graph/prune.c's rule), then the nearest
 *     others, until the list is as long as before. Where a deleted
 *     neighbour's links are deleted too (large batches) theirs are
 *     gathered as well, after the first hop's (RECONNECT_CANDS_PER_LINK),
 *     so a list does not empty out in a deleted region. Keeping the
 *     length is what holds recall: re-pruning the whole list (live links
 *     plus candidates) with the heuristic, the first version, shortens
 *     almost every list (a 10% delete touches 97% of
 *     nodes at M0 = 32: 1 - 0.9^32), since insertion's lists hold reverse
 *     links appended unpruned. siftsmall, recall@10 at ef 16 against a fresh
 *     build of the same rest (0.964/0.971/0.969), delete 10/30/50%: full
 *     re-prune 0.943/0.941/0.945; refill 0.967/0.971/0.964 (ef 64: within
 *     0.001 of fresh both ways; fmnistsmall at ef 16: refill within 0.003).
 *     Each u's new list depends only on the old lists, and a deleted node's
 *     lists are not written until every u is done, so the pass runs on all
 *     threads and its result does not depend on them.
 *  3. Entry point: when it is deleted, the live node of the highest level
 *     takes its place (the lowest id of those), and the top level drops to
 *     that node's level.
 *  4. Reachability: heuristic relinking can still leave a live node that no
 *     list names (its only in-links were from deleted nodes), so every
 *     delete and add ends with the level-0 repair that ends every build
 *     (graph/connect.c, which skips free slots): kiln_index_check passes
 *     after each call.
 *  5. Adds are HNSW insertions through the builder's batches
 *     (kiln_hnsw_insert_nodes, graph/hnsw_insert.c decision 7) at the
 *     index's ef_construction, on all cores, thread-independent. A new
 *     node's level is drawn from a hash of the index's seed and its label
 *     (not from a stream), so the same calls give the same graph whatever
 *     happened between them, also across a save and load. Labels default to
 *     the largest live label plus one, and so on.
 *  6. Storage: the first write to a mapped index (graph/index_file.c
 *     decision 7), or to one whose vectors or links live in file mappings
 *     (a build's adopted input, its spill files), copies every array to the
 *     heap, so nothing writes through a mapping and the file is untouched.
 *     Capacity then doubles when an add needs more slots (amortised O(1)
 *     per add); the upper-level pool grows the same way, and a deleted
 *     node's upper blocks stay unused in it until the pool would grow
 *     while they are most of it: then the live blocks are moved together.
 *     A save writes node order whatever the pool's (the file stays compact
 *     and canonical).
 *  7. Labels: a hash table (open addressing, linear probing, deletion by
 *     backward shift; MurmurHash3's fmix64 of the label) from label to
 *     slot, built on the first write from the live slots, kept up to date
 *     by each call. A live index needs unique labels: an index built with
 *     repeated ones is refused at that first write, naming the label.
 *     kiln_live_remove_marked (the hnswlib importer's deleted elements,
 *     whose labels may repeat a live one's) deletes by slot instead, and
 *     drops the map for the next write to build.
 *  8. Writers and readers (issue 14 item 5). Searches run while one writer
 *     adds, deletes or updates, with an index-wide reader-writer lock that
 *     the writer takes exclusively only to publish each change, as Redis's
 *     vector sets do (a global lock, and an insertion prepared under the
 *     read side, committed under the write side):
 *     - each search query holds the lock shared (graph/hnsw_search.c
 *       decision 7), and the lock prefers a waiting writer;
 *     - a writer holds the index's writer mutex for its whole call, so it is
 *       the only thread that changes the index: it reads without the lock,
 *       beside the searches, and takes it exclusively (kiln_commit_begin)
 *       only for what a search can read. The costly part of each call runs
 *       outside: a delete's reconnection pass (decision 2) writes its new
 *       lists to per-thread buffers, which one commit copies in with the
 *       slots' release and the entry point's move; an add's searches and
 *       selections (graph/hnsw_insert.c decision 8) run outside and each
 *       batch's reverse-link merge is one commit; so are the filling of the
 *       new slots, each repair (graph/connect.c decision 6), and every array
 *       that moves (growth, the copy of a mapping), whose old copy is freed
 *       inside the commit, when no search can hold it;
 *     - readers of the whole index (kiln_index_check, _save, _stats_get,
 *       export) take the writer mutex: they wait for a call in progress and
 *       see whole calls, never half an add.
 *     So a search never reads freed memory, and once kiln_index_delete has
 *     returned no search returns its labels: their commit came first. A
 *     search that overlaps an update may miss the labels being updated (the
 *     update is a delete and an add). Alternatives: per-node locks with
 *     versioned reads (hnswlib locks lists during insertion, and its
 *     searches read them unlocked, a data race) put an atomic on every link
 *     list a search reads and need epoch-based reclamation for the arrays
 *     that move; copy-on-write link blocks double the memory of a 97%-touched
 *     delete (decision 2). The cost here is one shared lock per query and a
 *     stall of searches during each commit (not yet measured by a benchmark;
 *     test_concurrent checks correctness only).
 *     A delete that runs out of memory for its relinked lists changes
 *     nothing.
 *  9. Large adds on the device (kiln_index_add_ex, KILN_ADD_DEVICE): the
 *     live nodes, renumbered in slot order, and the new ones become one new
 *     index; the new nodes' upper levels are inserted into the old ones
 *     (kiln_hnsw_insert_nodes_from, bottom 1, the device build's hierarchy
 *     beam), then the device pipeline runs over all of it with every old
 *     node's level-0 list as one more candidate record
 *     (host/device_build.c decision 12): new clusters, the per-cluster kNN
 *     of new against new and old, the union with the old lists, the prune
 *     and the reverse links, which give old nodes their new neighbours. The
 *     repair and, for compact storage, the encoding follow, and the new
 *     arrays replace the old ones in one commit (decision 8), so the index
 *     is unchanged unless the whole add succeeds, and it comes back with no
 *     free slot. An insertion costs a beam search per new node against the
 *     whole graph; this costs a device build of old and new minus the old
 *     hierarchy, whatever the batch, so it wins for large batches: 0.35 s
 *     against 0.72 s for 5000 siftsmall rows added to 5000, with recall@10
 *     at ef 16 of 0.979 against 0.958 (a fresh build: 0.975). The
 *     automatic choice takes the device from KILN_ADD_DEVICE_MIN vectors
 *     and KILN_ADD_DEVICE_SHARE of the live count; bench/live.py measures
 *     the crossover (bench/RESULTS.md).
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../common/ctx_internal.h"
#include "../common/dataset_internal.h"
#include "../common/rng_internal.h"
#include "../common/sort_internal.h"
#include "build_internal.h"

/* ==== Tunables ==== */

/* Orphaned candidates gathered for one list, per slot of the level's bound
 * (decision 2): the first hop gives at most bound per deleted neighbour,
 * bound^2 in all, which a 50% delete at M0 = 32 fills by half; the second
 * hop only tops up. 64 x 32 = 2048 candidates, 16 KiB a thread. */
#define RECONNECT_CANDS_PER_LINK 64
/* Orphaned candidates judged for one list, nearest first (decision 2): at
 * most a level-0 list's worth, and at most 64 (a bit mask marks them). */
#define RECONNECT_JUDGED 48
/* Slots an index grows to at least, on its first growth. */
#define LIVE_MIN_CAPACITY 16
/* The beam of the insertions and repairs of an index whose ef_construction
 * is unknown (0, an imported hnswlib file's may be): kiln build's default. */
#define LIVE_DEFAULT_EF 200
/* Decision 9: an automatic add goes to the device from this many vectors
 * and this share of the live count (bench/live.py measures the crossover). */
#define KILN_ADD_DEVICE_MIN   10000
#define KILN_ADD_DEVICE_SHARE 0.2

/* ==== Types ==== */

/* Label -> slot (decision 7). Empty cells hold slot KILN_NO_NODE. */
struct kiln_label_map {
    int64_t *keys;
    uint32_t *slots;
    uint64_t mask; /* cells - 1, cells a power of two */
    uint64_t used;
};

/* ==== Label map ==== */

static void map_free(struct kiln_label_map *m) {
    if (!m)
        return;
    free(m->keys);
    free(m->slots);
    free(m);
}

static kiln_status map_alloc(kiln_ctx *ctx, uint64_t entries, struct kiln_label_map **out) {
    uint64_t cells = 64;
    while (cells < 2 * entries + 2)
        cells *= 2;
    struct kiln_label_map *m = NULL;
    kiln_status st = kiln_calloc(ctx, sizeof *m, "label map", (void **)&m);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, cells * sizeof *m->keys, "label map keys", (void **)&m->keys);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, cells * sizeof *m->slots, "label map slots", (void **)&m->slots);
    if (st) {
        map_free(m);
        return st;
    }
    memset(m->slots, 0xff, cells * sizeof *m->slots);
    m->mask = cells - 1;
    *out = m;
    return KILN_OK;
}

/* The cell of label, or the empty cell where it would go. */
static uint64_t map_cell(const struct kiln_label_map *m, int64_t label) {
    uint64_t c = kiln_fmix64((uint64_t)label) & m->mask;
    while (m->slots[c] != KILN_NO_NODE && m->keys[c] != label)
        c = (c + 1) & m->mask;
    return c;
}

static uint32_t map_find(const struct kiln_label_map *m, int64_t label) {
    return m->slots[map_cell(m, label)];
}

/* Sets label -> slot in a table with room (used < cells / 2). */
static void map_set(struct kiln_label_map *m, int64_t label, uint32_t slot) {
    const uint64_t c = map_cell(m, label);
    m->used += m->slots[c] == KILN_NO_NODE;
    m->keys[c] = label;
    m->slots[c] = slot;
}

static void map_remove(struct kiln_label_map *m, int64_t label) {
    uint64_t c = map_cell(m, label);
    if (m->slots[c] == KILN_NO_NODE)
        return;
    m->slots[c] = KILN_NO_NODE;
    m->used--;
    /* Backward shift: move up each later entry of the run whose home is
     * not between the hole and it, so no lookup stops at the hole. */
    for (uint64_t j = (c + 1) & m->mask; m->slots[j] != KILN_NO_NODE; j = (j + 1) & m->mask) {
        const uint64_t home = kiln_fmix64((uint64_t)m->keys[j]) & m->mask;
        const uint64_t dist_hole = (j - c) & m->mask, dist_home = (j - home) & m->mask;
        if (dist_home >= dist_hole) {
            m->keys[c] = m->keys[j];
            m->slots[c] = m->slots[j];
            m->slots[j] = KILN_NO_NODE;
            c = j;
        }
    }
}

/* Room for `more` entries beyond those held, rehashing into a table twice
 * the size when needed. */
static kiln_status map_reserve(kiln_ctx *ctx, struct kiln_label_map **mp, uint64_t more) {
    struct kiln_label_map *m = *mp;
    if (2 * (m->used + more) + 2 <= m->mask + 1)
        return KILN_OK;
    struct kiln_label_map *g = NULL;
    kiln_status st = map_alloc(ctx, m->used + more, &g);
    if (st)
        return st;
    for (uint64_t c = 0; c <= m->mask; c++)
        if (m->slots[c] != KILN_NO_NODE)
            map_set(g, m->keys[c], m->slots[c]);
    map_free(m);
    *mp = g;
    return KILN_OK;
}

/* The map of the live slots, on the first write (decision 7). */
static kiln_status map_build(struct kiln_index *ix) {
    if (ix->label_map)
        return KILN_OK;
    struct kiln_label_map *m = NULL;
    kiln_status st = map_alloc(ix->ctx, ix->count - ix->free_count, &m);
    if (st)
        return st;
    for (uint64_t i = 0; i < ix->count; i++) {
        if (kiln_slot_free(ix, i))
            continue;
        const uint32_t other = map_find(m, ix->labels[i]);
        if (other != KILN_NO_NODE) {
            map_free(m);
            return kiln_fail(ix->ctx, KILN_E_INVALID,
                             "label %lld is on nodes %u and %llu: an index changed in place "
                             "needs unique labels",
                             (long long)ix->labels[i], other, (unsigned long long)i);
        }
        map_set(m, ix->labels[i], (uint32_t)i);
    }
    ix->label_map = m;
    return KILN_OK;
}

/* ==== Storage ==== */

static bool storage_on_heap(const struct kiln_index *ix) {
    return !ix->map && !ix->vectors_map && !ix->links0_spill_len;
}

/* Heap arrays of at least `need` slots (decision 6): the copy of a mapped
 * index on its first write, then growth by doubling. */
static kiln_status reserve_slots(struct kiln_index *ix, uint64_t need) {
    kiln_ctx *ctx = ix->ctx;
    if (need >= KILN_NO_NODE)
        return kiln_fail(ctx, KILN_E_RANGE, "an index of %llu slots exceeds the limit of %u",
                         (unsigned long long)need, KILN_NO_NODE - 1);
    if (storage_on_heap(ix) && need <= ix->capacity && ix->capacity > 0) {
        if (!ix->freed)
            return kiln_calloc(ctx, (size_t)ix->capacity, "free-slot marks", (void **)&ix->freed);
        return KILN_OK;
    }
    /* A loaded index reserves what it had when it was saved, so the same
     * adds grow it as they would have without the save (decision 6). */
    uint64_t cap = ix->capacity > ix->count ? ix->capacity : ix->count;
    cap = ix->saved_capacity > cap ? ix->saved_capacity : cap;
    if (need > cap)
        cap = cap * 2 > need ? cap * 2 : need;
    cap = cap < LIVE_MIN_CAPACITY ? LIVE_MIN_CAPACITY : cap;
    cap = cap >= KILN_NO_NODE ? KILN_NO_NODE - 1 : cap;
    const size_t stride = kiln_links0_stride(ix), n = (size_t)ix->count;
    size_t vec_bytes, code_bytes, link_bytes;
    if (kiln_mul_size((size_t)cap, (size_t)ix->dim * sizeof(float), &vec_bytes) ||
        kiln_mul_size((size_t)cap, ix->code_bytes, &code_bytes) ||
        kiln_mul_size((size_t)cap, stride * sizeof(uint32_t), &link_bytes))
        return kiln_fail(ctx, KILN_E_RANGE, "an index of %llu x %u does not fit in memory",
                         (unsigned long long)cap, ix->dim);
    float *vectors = NULL;
    uint32_t *links0 = NULL, *pool = NULL;
    int64_t *labels = NULL;
    uint8_t *levels = NULL, *freed = NULL, *codes = NULL;
    uint64_t *upper_off = NULL;
    kiln_status st;
    /* The rows the index has: f32, compact, or both (graph/storage.c). */
    if ((ix->vectors && (st = kiln_alloc_aligned(ctx, vec_bytes, "vectors", (void **)&vectors))) ||
        (ix->codes &&
         (st = kiln_alloc_aligned(ctx, code_bytes, "compact vectors", (void **)&codes))) ||
        (st = kiln_alloc_aligned(ctx, link_bytes, "level-0 links", (void **)&links0)) ||
        (st = kiln_alloc(ctx, (size_t)cap * sizeof *labels, "labels", (void **)&labels)) ||
        (st = kiln_calloc(ctx, (size_t)cap, "levels", (void **)&levels)) ||
        (st = kiln_calloc(ctx, (size_t)cap, "free-slot marks", (void **)&freed)) ||
        (st = kiln_alloc(ctx, (size_t)cap * sizeof *upper_off, "upper offsets",
                         (void **)&upper_off)) ||
        (ix->map && (st = kiln_alloc(ctx, (size_t)(ix->upper_len ? ix->upper_len : 1) * 4,
                                     "upper-level links", (void **)&pool)))) {
        kiln_free_aligned(vectors);
        kiln_free_aligned(codes);
        kiln_free_aligned(links0);
        free(labels);
        free(levels);
        free(freed);
        free(upper_off);
        return st;
    }
    if (vectors)
        memcpy(vectors, ix->vectors, n * ix->dim * sizeof(float));
    if (codes)
        memcpy(codes, ix->codes, n * ix->code_bytes);
    memcpy(links0, ix->links0, n * stride * sizeof(uint32_t));
    memset(links0 + n * stride, 0, ((size_t)cap - n) * stride * sizeof(uint32_t));
    memcpy(labels, ix->labels, n * sizeof *labels);
    memcpy(levels, ix->levels, n);
    if (ix->freed)
        memcpy(freed, ix->freed, n);
    memcpy(upper_off, ix->upper_off, n * sizeof *upper_off);
    if (pool)
        memcpy(pool, ix->upper_pool, (size_t)ix->upper_len * sizeof *pool);

    kiln_commit_begin(ix); /* decision 8: every array moves */
    if (ix->map) {
        munmap(ix->map, ix->map_bytes);
        ix->map = NULL;
        ix->upper_pool = pool;
        ix->upper_cap = ix->upper_len;
    } else {
        kiln_index_free_arrays(ix);
    }
    free(ix->freed);
    free(ix->upper_off);
    ix->vectors_map = NULL;
    ix->links0_spill_len = 0;
    ix->vectors = vectors;
    ix->codes = codes;
    ix->links0 = links0;
    ix->labels = labels;
    ix->levels = levels;
    ix->freed = freed;
    ix->upper_off = upper_off;
    ix->capacity = cap;
    ix->file_bytes = 0; /* no longer the file it was opened from */
    ix->file_header_crc = 0;
    kiln_commit_end(ix);
    return KILN_OK;
}

/* Room for `more` uint32_t at the end of the upper-level pool: when the
 * blocks of deleted nodes are most of it, the live blocks are first moved
 * together, in node order, into a pool of their own size plus `more`
 * (decision 6); else the pool doubles. */
static kiln_status reserve_upper(struct kiln_index *ix, uint64_t more) {
    if (ix->upper_len + more <= ix->upper_cap)
        return KILN_OK;
    const uint64_t block = (uint64_t)ix->M + 1;
    uint64_t used = 0;
    for (uint64_t i = 0; i < ix->count; i++)
        used += ix->levels[i] * block;
    const bool compact = 2 * used < ix->upper_len;
    uint64_t cap = compact ? used + more
                           : (ix->upper_cap * 2 > ix->upper_len + more ? ix->upper_cap * 2
                                                                       : ix->upper_len + more);
    size_t bytes;
    if (kiln_mul_size((size_t)cap, sizeof(uint32_t), &bytes))
        return kiln_fail(ix->ctx, KILN_E_RANGE,
                         "upper-level link pool of %llu entries is too large",
                         (unsigned long long)cap);
    kiln_commit_begin(ix); /* decision 8: the pool moves */
    uint32_t *p = compact ? malloc(bytes ? bytes : 4) : realloc(ix->upper_pool, bytes ? bytes : 4);
    if (!p) {
        kiln_commit_end(ix);
        return kiln_fail(ix->ctx, KILN_E_NOMEM,
                         "out of memory growing the upper-level links to %.1f MiB",
                         bytes / 1048576.0);
    }
    if (compact) {
        uint64_t at = 0;
        for (uint64_t i = 0; i < ix->count; i++)
            if (ix->levels[i]) {
                memcpy(p + at, ix->upper_pool + ix->upper_off[i],
                       (size_t)(ix->levels[i] * block) * sizeof *p);
                ix->upper_off[i] = at;
                at += ix->levels[i] * block;
            }
        free(ix->upper_pool);
        ix->upper_len = at;
    }
    ix->upper_pool = p;
    ix->upper_cap = cap;
    kiln_commit_end(ix);
    return KILN_OK;
}

static kiln_status reserve_free_list(struct kiln_index *ix, uint64_t more) {
    if (ix->free_count + more <= ix->free_list_cap)
        return KILN_OK;
    uint64_t cap = ix->free_list_cap * 2 > ix->free_count + more ? ix->free_list_cap * 2
                                                                 : ix->free_count + more;
    uint32_t *p = realloc(ix->free_list, (size_t)cap * sizeof *p);
    if (!p)
        return kiln_fail(ix->ctx, KILN_E_NOMEM, "out of memory growing the free list to %llu slots",
                         (unsigned long long)cap);
    ix->free_list = p;
    ix->free_list_cap = cap;
    return KILN_OK;
}

/* What every writer needs first: the label map and heap arrays. */
static kiln_status live_begin(struct kiln_index *ix, uint64_t slots) {
    kiln_status st = map_build(ix);
    if (st == KILN_OK)
        st = reserve_slots(ix, slots);
    return st;
}

static uint32_t live_ef(const struct kiln_index *ix) {
    return ix->ef_construction ? ix->ef_construction : LIVE_DEFAULT_EF;
}

/* ==== Delete ==== */

/* What the reconnection pass shares (decision 2). */
typedef struct reconnect_state {
    struct kiln_index *ix;
    const uint8_t *doomed; /* count marks: 1 = deleted by this call */
} reconnect_state;

/* Appends to c (at most cap entries in all) the live links other than u
 * of deleted node v on level; with second, those of v's deleted links. */
static uint32_t gather(const reconnect_state *rs, uint32_t u, uint32_t v, unsigned level,
                       bool second, kiln_cand *c, uint32_t n, uint32_t cap) {
    const uint32_t *l = kiln_links(rs->ix, v, level);
    for (uint32_t j = 0; j < l[0] && n < cap; j++) {
        const uint32_t w = l[1 + j];
        if (second && rs->doomed[w])
            n = gather(rs, u, w, level, false, c, n, cap);
        else if (!second && w != u && !rs->doomed[w])
            c[n++] = (kiln_cand){0.0f, w};
    }
    return n;
}

static inline bool cand_id_less(kiln_cand a, kiln_cand b) { return a.id < b.id; }
KILN_DEFINE_SORT(cands_by_id, kiln_cand, cand_id_less)

/* u's new list on level when its list names a deleted node (decision 2):
 * its length, with the links in pick (room for the level's bound); c has
 * room for cap candidates. UINT32_MAX when the list stays as it is. The
 * list itself is not written (decision 8). */
static uint32_t reconnect(const reconnect_state *rs, uint32_t u, unsigned level, kiln_cand *c,
                          uint32_t cap, uint32_t *pick) {
    struct kiln_index *ix = rs->ix;
    const uint32_t *l = kiln_links(ix, u, level);
    const uint32_t had = l[0];
    uint32_t live = 0, n = 0;
    for (uint32_t j = 0; j < had; j++)
        if (!rs->doomed[l[1 + j]])
            pick[live++] = l[1 + j];
    if (live == had)
        return UINT32_MAX;
    /* The orphaned candidates: what the deleted neighbours linked to, then
     * what their deleted neighbours did, breadth first. */
    for (int second = 0; second <= 1; second++)
        for (uint32_t j = 0; j < had && n < cap; j++)
            if (rs->doomed[l[1 + j]])
                n = gather(rs, u, l[1 + j], level, second, c, n, cap);
    cands_by_id(c, (ptrdiff_t)n);
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (i > 0 && c[i].id == c[i - 1].id)
            continue;
        bool kept = false;
        for (uint32_t j = 0; j < live && !kept; j++)
            kept = pick[j] == c[i].id;
        if (!kept)
            c[m++] = (kiln_cand){kiln_pair_dist(ix, u, c[i].id), c[i].id};
    }
    kiln_cands_sort(c, m);
    if (m > RECONNECT_JUDGED)
        m = RECONNECT_JUDGED;
    /* The heuristic against the links kept, then the nearest others, until
     * the list is as long as it was. */
    const uint32_t want = had;
    uint64_t taken = 0; /* bit i: c[i] chosen; m <= 64 */
    for (uint32_t i = 0; i < m && live < want; i++) {
        bool good = true;
        for (uint32_t j = 0; j < live && good; j++)
            good = !(kiln_pair_dist(ix, c[i].id, pick[j]) < c[i].dist);
        if (good) {
            pick[live++] = c[i].id;
            taken |= 1ull << i;
        }
    }
    for (uint32_t i = 0; i < m && live < want; i++)
        if (!(taken >> i & 1))
            pick[live++] = c[i].id;
    return live;
}

/* The lists one thread rebuilt, waiting for the commit (decision 8):
 * records of [u, level, n, ids (bound)], stride bound + 3. */
typedef struct relinked {
    uint32_t *rec;
    size_t used, cap; /* records */
    bool short_of_memory;
} relinked;

/* Appends u's new list on level (n links in pick) to r. */
static void relinked_add(relinked *r, uint32_t stride, uint32_t u, unsigned level, uint32_t n,
                         const uint32_t *pick) {
    if (r->short_of_memory)
        return;
    if (r->used == r->cap) {
        const size_t cap = r->cap ? 2 * r->cap : 256;
        uint32_t *p = realloc(r->rec, cap * stride * sizeof *p);
        if (!p) {
            r->short_of_memory = true;
            return;
        }
        r->rec = p;
        r->cap = cap;
    }
    uint32_t *at = r->rec + r->used++ * stride;
    at[0] = u;
    at[1] = level;
    at[2] = n;
    memcpy(at + 3, pick, n * sizeof *pick);
}

/* Writes the records of r into their lists (in the commit). */
static void relinked_apply(struct kiln_index *ix, const relinked *r, uint32_t stride) {
    for (size_t k = 0; k < r->used; k++) {
        const uint32_t *at = r->rec + k * stride;
        uint32_t *l = kiln_links(ix, at[0], at[1]);
        memcpy(l + 1, at + 3, at[2] * sizeof *l);
        l[0] = at[2];
    }
}

/* The new entry point after a delete (decision 3). */
static void choose_entry_point(struct kiln_index *ix) {
    uint32_t ep = KILN_NO_NODE;
    for (uint32_t i = 0; i < ix->count; i++)
        if (!kiln_slot_free(ix, i) && (ep == KILN_NO_NODE || ix->levels[i] > ix->levels[ep]))
            ep = i;
    ix->entry_point = ep;
    ix->max_level = ep == KILN_NO_NODE ? 0 : ix->levels[ep];
}

/* Removes the n distinct live slots (doomed marks them) from the graph and
 * frees them, in that order on the free list (decision 1). */
static kiln_status remove_slots(struct kiln_index *ix, const uint32_t *slots, size_t n,
                                const uint8_t *doomed, uint32_t ef, kiln_repair_stats *rep) {
    kiln_ctx *ctx = ix->ctx;
    kiln_status st = reserve_free_list(ix, n);
    if (st)
        return st;
    const int threads = kiln_threads(ix->write_threads);
    const uint32_t bound = ix->M0 > ix->M ? ix->M0 : ix->M;
    const uint32_t cap = bound * RECONNECT_CANDS_PER_LINK, stride = bound + 3;
    kiln_cand **cbuf = NULL;
    uint32_t **pbuf = NULL;
    relinked *out = NULL;
    if ((st = kiln_calloc(ctx, (size_t)threads * sizeof *cbuf, "reconnect buffers",
                          (void **)&cbuf)) ||
        (st = kiln_calloc(ctx, (size_t)threads * sizeof *pbuf, "reconnect buffers",
                          (void **)&pbuf)) ||
        (st = kiln_calloc(ctx, (size_t)threads * sizeof *out, "relinked lists", (void **)&out)))
        goto cleanup;
    for (int t = 0; t < threads; t++)
        if ((st = kiln_alloc(ctx, (size_t)cap * sizeof **cbuf, "reconnect candidates",
                             (void **)&cbuf[t])) ||
            (st = kiln_alloc(ctx, (size_t)bound * sizeof **pbuf, "reconnect picks",
                             (void **)&pbuf[t])))
            goto cleanup;

    const reconnect_state rs = {.ix = ix, .doomed = doomed};
    const long count = (long)ix->count;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 256)
    for (long i = 0; i < count; i++) {
        const uint32_t u = (uint32_t)i;
        if (doomed[u] || kiln_slot_free(ix, u))
            continue;
        const int t = omp_get_thread_num();
        for (unsigned level = 0; level <= ix->levels[u]; level++) {
            const uint32_t m = reconnect(&rs, u, level, cbuf[t], cap, pbuf[t]);
            if (m != UINT32_MAX)
                relinked_add(&out[t], stride, u, level, m, pbuf[t]);
        }
    }
    for (int t = 0; t < threads; t++)
        if (out[t].short_of_memory) { /* nothing is changed yet */
            st = kiln_fail(ctx, KILN_E_NOMEM, "delete: out of memory holding the relinked lists");
            goto cleanup;
        }

    kiln_commit_begin(ix); /* decision 8 */
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++)
        relinked_apply(ix, &out[t], stride);
    for (size_t k = 0; k < n; k++) {
        const uint32_t x = slots[k];
        if (ix->label_map)
            map_remove(ix->label_map, ix->labels[x]);
        kiln_links(ix, x, 0)[0] = 0;
        ix->levels[x] = 0;
        ix->upper_off[x] = KILN_NO_UPPER;
        ix->labels[x] = -1;
        kiln_storage_clear(ix, x);
        ix->freed[x] = 1;
        ix->free_list[ix->free_count++] = x;
    }
    if (ix->entry_point == KILN_NO_NODE || doomed[ix->entry_point])
        choose_entry_point(ix);
    kiln_commit_end(ix);
    st = kiln_repair_reachability(ix, ef, threads, rep);
cleanup:
    for (int t = 0; cbuf && t < threads; t++)
        free(cbuf[t]);
    for (int t = 0; pbuf && t < threads; t++)
        free(pbuf[t]);
    for (int t = 0; out && t < threads; t++)
        free(out[t].rec);
    free(cbuf);
    free(pbuf);
    free(out);
    return st;
}

/* The slots of n distinct live labels, marked in *doomed (count bytes, the
 * caller frees); `what` names the call in messages. */
static kiln_status resolve_labels(struct kiln_index *ix, const int64_t *labels, size_t n,
                                  const char *what, uint32_t **slots, uint8_t **doomed) {
    kiln_ctx *ctx = ix->ctx;
    *slots = NULL;
    *doomed = NULL;
    kiln_status st = kiln_alloc(ctx, (n ? n : 1) * sizeof **slots, "slots", (void **)slots);
    if (st == KILN_OK)
        st = kiln_calloc(ctx, ix->count ? (size_t)ix->count : 1, "delete marks", (void **)doomed);
    for (size_t k = 0; st == KILN_OK && k < n; k++) {
        const uint32_t s = map_find(ix->label_map, labels[k]);
        if (s == KILN_NO_NODE)
            st = kiln_fail(ctx, KILN_E_ARG, "%s: label %lld (entry %zu) is not in the index", what,
                           (long long)labels[k], k);
        else if ((*doomed)[s])
            st = kiln_fail(ctx, KILN_E_ARG, "%s: label %lld is given twice (entry %zu)", what,
                           (long long)labels[k], k);
        else {
            (*doomed)[s] = 1;
            (*slots)[k] = s;
        }
    }
    if (st) {
        free(*slots);
        free(*doomed);
        *slots = NULL;
        *doomed = NULL;
    }
    return st;
}

/* ==== Add ==== */

/* A new node's level, from the seed and its label (decision 5): floor(-ln(U)
 * / ln(M)) as kiln_sample_levels draws it, capped the same way. */
static uint8_t label_level(const struct kiln_index *ix, int64_t label) {
    const uint64_t h = kiln_fmix64((uint64_t)label ^ kiln_fmix64(ix->seed ^ 0x6c6976656c76656cull));
    const double u = (double)((h >> 11) + 1) * 0x1.0p-53; /* (0, 1] */
    const double l = floor(-log(u) / log((double)ix->M));
    return (uint8_t)(l > KILN_MAX_LEVELS - 1 ? KILN_MAX_LEVELS - 1 : l);
}

static inline bool label_less(int64_t a, int64_t b) { return a < b; }
KILN_DEFINE_SORT(labels_sort, int64_t, label_less)

/* Checks n new labels: none live, none twice, none the -1 of "no result". */
static kiln_status check_new_labels(struct kiln_index *ix, const int64_t *labels, size_t n) {
    int64_t *sorted = NULL;
    kiln_status st =
        kiln_alloc(ix->ctx, (n ? n : 1) * sizeof *sorted, "label check", (void **)&sorted);
    if (st)
        return st;
    memcpy(sorted, labels, n * sizeof *sorted);
    labels_sort(sorted, (ptrdiff_t)n);
    for (size_t k = 0; k < n && st == KILN_OK; k++) {
        if (k > 0 && sorted[k] == sorted[k - 1])
            st = kiln_fail(ix->ctx, KILN_E_ARG, "add: label %lld is given twice",
                           (long long)sorted[k]);
        else if (sorted[k] == -1)
            st = kiln_fail(ix->ctx, KILN_E_ARG,
                           "add: label -1 is reserved (search pads missing results with it)");
    }
    for (size_t k = 0; k < n && st == KILN_OK; k++)
        if (map_find(ix->label_map, labels[k]) != KILN_NO_NODE)
            st = kiln_fail(ix->ctx, KILN_E_ARG,
                           "add: label %lld (entry %zu) is already in the index (update it "
                           "instead)",
                           (long long)labels[k], k);
    free(sorted);
    return st;
}

static kiln_status check_vectors(const struct kiln_index *ix, const float *vectors, size_t n,
                                 const char *what) {
    for (size_t k = 0; k < n; k++)
        if (kiln_row_nonfinite(vectors + k * ix->dim, ix->dim))
            return kiln_fail(ix->ctx, KILN_E_ARG, "%s: vector %zu has a NaN or infinite component",
                             what, k);
    return kiln_storage_check_rows(ix, vectors, n, what);
}

/* Puts the n vectors with their labels into slots (the `reused` from the
 * top of the free list first, then past count; capacity reserved, label
 * map with room) and inserts them into the graph of live_before nodes. */
static kiln_status insert_slots(struct kiln_index *ix, const float *vectors, const int64_t *labels,
                                const uint32_t *slots, size_t n, uint64_t reused,
                                uint64_t live_before) {
    kiln_status st = KILN_OK;
    uint64_t upper = 0;
    for (size_t k = 0; k < n; k++)
        upper += (uint64_t)label_level(ix, labels[k]) * (ix->M + 1);
    float *scratch = NULL; /* kiln_storage_put's row: nothing may fail in the commit */
    if ((st = reserve_upper(ix, upper)) ||
        (st = kiln_alloc(ix->ctx, (size_t)ix->dim * sizeof *scratch, "a row", (void **)&scratch)))
        return st;
    /* Decision 8: the slots fill, and the count grows, where searches see
     * it; their lists are written by the insertion, before anything links
     * to them. */
    kiln_commit_begin(ix);
    ix->free_count -= reused;
    for (size_t k = 0; k < n; k++) {
        const uint32_t s = slots[k];
        if (s >= ix->count)
            ix->count = (uint64_t)s + 1;
        ix->labels[s] = labels[k];
        ix->freed[s] = 0;
        const uint8_t level = label_level(ix, labels[k]);
        ix->levels[s] = level;
        kiln_links(ix, s, 0)[0] = 0;
        ix->upper_off[s] = level ? ix->upper_len : KILN_NO_UPPER;
        memset(ix->upper_pool + ix->upper_len, 0, (size_t)level * (ix->M + 1) * sizeof(uint32_t));
        ix->upper_len += (uint64_t)level * (ix->M + 1);
        map_set(ix->label_map, labels[k], s);
    }
    kiln_storage_put(ix, vectors, slots, n, scratch);
    free(scratch);
    const uint32_t *order = slots;
    uint64_t base = live_before;
    size_t todo = n;
    if (ix->entry_point == KILN_NO_NODE) { /* an empty graph: the first node is all of it */
        ix->entry_point = slots[0];
        ix->max_level = ix->levels[slots[0]];
        order++;
        base = 1;
        todo--;
    }
    kiln_commit_end(ix);
    const int threads = kiln_threads(ix->write_threads);
    if (todo &&
        (st = kiln_hnsw_insert_nodes(ix, order, (uint32_t)todo, base, live_ef(ix), threads)))
        return st;
    kiln_repair_stats rep;
    return kiln_repair_reachability(ix, live_ef(ix), threads, &rep);
}

/* ==== The device add (decision 9) ==== */

/* The hierarchy's beam for a device add: the device build's scale
 * (host/device_build.c DEVICE_HIERARCHY_EF / DEVICE_HIERARCHY_OF), at
 * least M. */
static uint32_t device_add_hier_ef(const struct kiln_index *ix) {
    const uint32_t ef = (live_ef(ix) * 16 + 199) / 200;
    return ef < ix->M ? ix->M : ef;
}

/* Copies node u of ix (live) to node id[u] of t: row, label, lists with
 * their ids renumbered (links to free slots cannot exist: deletes relink). */
static void device_add_copy(const struct kiln_index *ix, struct kiln_index *t, const uint32_t *id,
                            uint32_t u, float *row) {
    const uint32_t v = id[u];
    memcpy(t->vectors + (size_t)v * t->dim, kiln_node_query(ix, u, row), t->dim * sizeof(float));
    t->labels[v] = ix->labels[u];
    for (unsigned level = 0; level <= ix->levels[u]; level++) {
        const uint32_t *from = kiln_links(ix, u, level);
        uint32_t *to = kiln_links(t, v, level), m = 0;
        for (uint32_t j = 0; j < from[0]; j++)
            if (from[1 + j] < ix->count && id[from[1 + j]] != KILN_NO_NODE)
                to[1 + m++] = id[from[1 + j]];
        to[0] = m;
    }
}

/* The new index of a device add: the live nodes of ix, renumbered in slot
 * order with their rows, labels and every list, then the n new ones (row,
 * label, level from its label) with empty lists. */
static kiln_status device_add_index(struct kiln_index *ix, const float *vectors,
                                    const int64_t *labels, size_t n, struct kiln_index **out) {
    kiln_ctx *ctx = ix->ctx;
    const uint64_t live = ix->count - ix->free_count, total = live + n;
    uint8_t *levels = NULL;
    uint32_t *id = NULL;
    float *rows = NULL;
    const int threads = kiln_threads(ix->write_threads);
    kiln_status st = kiln_alloc(ctx, (size_t)total + 1, "levels", (void **)&levels);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, ((size_t)ix->count + 1) * sizeof *id, "new ids", (void **)&id);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)threads * ix->dim * sizeof *rows, "rows", (void **)&rows);
    if (st)
        goto done;
    uint64_t next = 0;
    for (uint64_t u = 0; u < ix->count; u++) {
        id[u] = kiln_slot_free(ix, u) ? KILN_NO_NODE : (uint32_t)next;
        if (id[u] != KILN_NO_NODE)
            levels[next++] = ix->levels[u];
    }
    for (size_t k = 0; k < n; k++)
        levels[live + k] = label_level(ix, labels[k]);
    if ((st = kiln_index_alloc_m0(ctx, total, ix->dim, ix->metric, ix->M, ix->M0, levels, out)))
        goto done;
    struct kiln_index *t = *out;
    t->seed = ix->seed;
    t->ef_construction = ix->ef_construction;
    t->saved_capacity = ix->saved_capacity;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1024)
    for (uint64_t u = 0; u < ix->count; u++)
        if (id[u] != KILN_NO_NODE)
            device_add_copy(ix, t, id, (uint32_t)u, rows + (size_t)omp_get_thread_num() * ix->dim);
    for (size_t k = 0; k < n; k++) {
        memcpy(t->vectors + (live + k) * t->dim, vectors + k * t->dim, t->dim * sizeof(float));
        if (t->metric == KILN_METRIC_COS)
            kiln_normalize(t->vectors + (live + k) * t->dim, t->dim);
        t->labels[live + k] = labels[k];
    }
    if (ix->entry_point != KILN_NO_NODE) {
        t->entry_point = id[ix->entry_point];
        t->max_level = ix->max_level;
    }
done:
    free(levels);
    free(id);
    free(rows);
    return st;
}

/* The new nodes' upper levels, inserted into the old ones (bottom 1); with
 * no old node above level 0 the highest new one (the first of them) is the
 * entry point the others are inserted under. */
static kiln_status device_add_upper(struct kiln_index *t, uint64_t live, int threads) {
    kiln_ctx *ctx = t->ctx;
    uint64_t base = 0, up = 0;
    for (uint64_t i = 0; i < t->count; i++) {
        base += i < live && t->levels[i] > 0;
        up += i >= live && t->levels[i] > 0;
    }
    if (up == 0)
        return KILN_OK;
    uint32_t *order = NULL;
    kiln_status st = kiln_alloc(ctx, up * sizeof *order, "upper order", (void **)&order);
    if (st)
        return st;
    uint32_t m = 0, top = KILN_NO_NODE;
    if (base == 0) {
        for (uint64_t i = live; i < t->count; i++)
            if (top == KILN_NO_NODE || t->levels[i] > t->levels[top])
                top = (uint32_t)i;
        t->entry_point = top;
        t->max_level = t->levels[top];
        base = 1;
    }
    for (uint64_t i = live; i < t->count; i++)
        if (t->levels[i] > 0 && i != top)
            order[m++] = (uint32_t)i;
    if (m)
        st = kiln_hnsw_insert_nodes_from(t, order, m, base, device_add_hier_ef(t), threads, 1);
    free(order);
    return st;
}

/* Swaps everything a search reads between ix and t, in one commit: ix gets
 * the new graph, t the old arrays, which kiln_index_free(t) then frees. */
static void device_add_adopt(struct kiln_index *ix, struct kiln_index *t) {
    kiln_commit_begin(ix);
#define SWAP_FIELD(f)                                                                              \
    do {                                                                                           \
        const __typeof__(ix->f) was = ix->f;                                                       \
        ix->f = t->f;                                                                              \
        t->f = was;                                                                                \
    } while (0)
    SWAP_FIELD(count);
    SWAP_FIELD(max_level);
    SWAP_FIELD(entry_point);
    SWAP_FIELD(storage);
    SWAP_FIELD(code_bytes);
    SWAP_FIELD(code_dist);
    SWAP_FIELD(code_pair);
    SWAP_FIELD(codes);
    SWAP_FIELD(vectors);
    SWAP_FIELD(labels);
    SWAP_FIELD(levels);
    SWAP_FIELD(links0);
    SWAP_FIELD(upper_off);
    SWAP_FIELD(upper_pool);
    SWAP_FIELD(upper_len);
    SWAP_FIELD(map);
    SWAP_FIELD(map_bytes);
    SWAP_FIELD(vectors_map);
    SWAP_FIELD(vectors_map_len);
    SWAP_FIELD(links0_spill_len);
    SWAP_FIELD(capacity);
    SWAP_FIELD(upper_cap);
    SWAP_FIELD(freed);
    SWAP_FIELD(free_list);
    SWAP_FIELD(free_count);
    SWAP_FIELD(free_list_cap);
#undef SWAP_FIELD
    kiln_commit_end(ix);
    map_free(ix->label_map); /* the slots moved: the next write builds it */
    ix->label_map = NULL;
}

/* Adds n checked vectors with their checked labels through the device
 * pipeline (decision 9). ix is unchanged unless it succeeds. */
static kiln_status add_by_device(struct kiln_index *ix, const float *vectors, const int64_t *labels,
                                 size_t n, const kiln_add_params *ap) {
    kiln_ctx *ctx = ix->ctx;
    const uint64_t live = ix->count - ix->free_count;
    const int threads = kiln_threads(ix->write_threads);
    struct kiln_index *t = NULL;
    kiln_build_report rep;
    memset(&rep, 0, sizeof rep);
    kiln_status st = device_add_index(ix, vectors, labels, n, &t);
    if (st == KILN_OK)
        st = live ? device_add_upper(t, live, threads)
                  : kiln_hnsw_insert_levels(t, device_add_hier_ef(t), threads, 1);
    if (st == KILN_OK) {
        kiln_build_params bp;
        kiln_build_params_init(&bp);
        bp.method = KILN_METHOD_DEVICE;
        bp.metric = ix->metric;
        bp.M = ix->M;
        bp.ef_construction = live_ef(ix);
        bp.seed = ix->seed;
        bp.threads = (uint32_t)threads;
        bp.device = ap->device;
        bp.memory_limit = ap->memory_limit;
        const kiln_device_seed seed = {live};
        st = kiln_build_device(t, &bp, &rep, &seed);
    }
    kiln_repair_stats rs;
    if (st == KILN_OK)
        st = kiln_repair_reachability(t, live_ef(ix), threads, &rs);
    if (st == KILN_OK && ix->storage != KILN_STORAGE_F32)
        st = kiln_index_compress(t, ix->storage, ix->vectors != NULL);
    if (st == KILN_OK) {
        t->ef_construction = ix->ef_construction;
        device_add_adopt(ix, t);
    }
    kiln_index_free(t);
    (void)ctx;
    return st;
}

/* Decision 9: the method of an add. */
static bool add_on_device(const struct kiln_index *ix, size_t n, const kiln_add_params *ap) {
    if (ap->method == KILN_ADD_INSERT || !kiln_build_device_available())
        return false;
    if (ap->method == KILN_ADD_DEVICE)
        return true;
    const uint64_t live = ix->count - ix->free_count;
    const double share = ap->device_share > 0 ? ap->device_share : KILN_ADD_DEVICE_SHARE;
    return n >= KILN_ADD_DEVICE_MIN && (double)n >= share * (double)live;
}

/* ==== Public ==== */

static kiln_status delete_labels(kiln_index *ix, const int64_t *labels, size_t n) {
    if (n && !labels)
        return kiln_fail(ix->ctx, KILN_E_ARG, "delete: NULL labels");
    if (n == 0)
        return KILN_OK;
    kiln_status st = live_begin(ix, ix->count);
    uint32_t *slots = NULL;
    uint8_t *doomed = NULL;
    kiln_repair_stats rep;
    if (st == KILN_OK && (st = resolve_labels(ix, labels, n, "delete", &slots, &doomed)) == KILN_OK)
        st = remove_slots(ix, slots, n, doomed, live_ef(ix), &rep);
    free(slots);
    free(doomed);
    return st;
}

static kiln_status add_vectors(kiln_index *ix, const float *vectors, const int64_t *labels,
                               size_t n, const kiln_add_params *ap) {
    if (n && !vectors)
        return kiln_fail(ix->ctx, KILN_E_ARG, "add: NULL vectors");
    if (n == 0)
        return KILN_OK;
    kiln_ctx *ctx = ix->ctx;
    if (n >= KILN_NO_NODE)
        return kiln_fail(ctx, KILN_E_RANGE, "add: %zu vectors exceed the limit of %u per index", n,
                         KILN_NO_NODE - 1);
    const uint64_t reuse = ix->free_count < n ? ix->free_count : n;
    const bool device = add_on_device(ix, n, ap);
    kiln_status st = check_vectors(ix, vectors, n, "add");
    /* The device add makes a new index (decision 9): no slots to reserve. */
    if (st == KILN_OK)
        st = device ? map_build(ix) : live_begin(ix, ix->count + (n - reuse));
    if (st == KILN_OK)
        st = map_reserve(ctx, &ix->label_map, n);
    int64_t *own = NULL;
    uint32_t *slots = NULL;
    if (st == KILN_OK && !labels) { /* decision 5: after the largest live label */
        int64_t next = 0;
        for (uint64_t i = 0; i < ix->count; i++)
            if (!kiln_slot_free(ix, i) && ix->labels[i] >= next)
                next = ix->labels[i] == INT64_MAX ? INT64_MAX : ix->labels[i] + 1;
        if ((uint64_t)(INT64_MAX - next) < n)
            st = kiln_fail(ctx, KILN_E_RANGE, "add: default labels after %lld overflow int64",
                           (long long)next);
        else if ((st = kiln_alloc(ctx, n * sizeof *own, "labels", (void **)&own)) == KILN_OK)
            for (size_t k = 0; k < n; k++)
                own[k] = next + (int64_t)k;
        labels = own;
    }
    if (st == KILN_OK)
        st = check_new_labels(ix, labels, n);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, n * sizeof *slots, "slots", (void **)&slots);
    if (st == KILN_OK) {
        /* Decision 1: free slots first, the last freed first. */
        const uint64_t live = ix->count - ix->free_count;
        uint64_t next = ix->count;
        for (size_t k = 0; k < n; k++)
            slots[k] = k < reuse ? ix->free_list[ix->free_count - 1 - k] : (uint32_t)next++;
        st = device ? add_by_device(ix, vectors, labels, n, ap)
                    : insert_slots(ix, vectors, labels, slots, n, reuse, live);
    }
    free(slots);
    free(own);
    return st;
}

static kiln_status update_vectors(kiln_index *ix, const float *vectors, const int64_t *labels,
                                  size_t n) {
    if (n && (!vectors || !labels))
        return kiln_fail(ix->ctx, KILN_E_ARG, "update: NULL vectors or labels");
    if (n == 0)
        return KILN_OK;
    kiln_status st = check_vectors(ix, vectors, n, "update");
    if (st == KILN_OK)
        st = live_begin(ix, ix->count);
    uint32_t *slots = NULL;
    uint8_t *doomed = NULL;
    kiln_repair_stats rep;
    if (st == KILN_OK &&
        (st = resolve_labels(ix, labels, n, "update", &slots, &doomed)) == KILN_OK &&
        (st = remove_slots(ix, slots, n, doomed, live_ef(ix), &rep)) == KILN_OK) {
        /* The same slots back, off the top of the free list where
         * remove_slots put them in this order. */
        const uint64_t live = ix->count - ix->free_count;
        st = insert_slots(ix, vectors, labels, slots, n, n, live);
    }
    free(slots);
    free(doomed);
    return st;
}

/* Decision 8: one writer at a time, for the whole call. */
kiln_status kiln_index_delete(kiln_index *ix, const int64_t *labels, size_t n) {
    if (!ix)
        return KILN_E_ARG;
    kiln_writer_begin(ix);
    const kiln_status st = delete_labels(ix, labels, n);
    kiln_writer_end(ix);
    return st;
}

void kiln_add_params_init(kiln_add_params *p) {
    memset(p, 0, sizeof *p);
    p->method = KILN_ADD_AUTO;
}

kiln_status kiln_index_add_ex(kiln_index *ix, const float *vectors, const int64_t *labels, size_t n,
                              const kiln_add_params *params) {
    if (!ix)
        return KILN_E_ARG;
    kiln_add_params ap;
    if (params)
        ap = *params;
    else
        kiln_add_params_init(&ap);
    if (ap.method != KILN_ADD_AUTO && ap.method != KILN_ADD_INSERT && ap.method != KILN_ADD_DEVICE)
        return kiln_fail(ix->ctx, KILN_E_ARG, "add: unknown method %d", (int)ap.method);
    if (ap.method == KILN_ADD_DEVICE && !kiln_build_device_available())
        return kiln_fail(ix->ctx, KILN_E_NO_DEVICE,
                         "add: method device is not in this library (libkiln-core); link libkiln");
    kiln_writer_begin(ix);
    const kiln_status st = add_vectors(ix, vectors, labels, n, &ap);
    kiln_writer_end(ix);
    return st;
}

kiln_status kiln_index_add(kiln_index *ix, const float *vectors, const int64_t *labels, size_t n) {
    return kiln_index_add_ex(ix, vectors, labels, n, NULL);
}

kiln_status kiln_index_update(kiln_index *ix, const float *vectors, const int64_t *labels,
                              size_t n) {
    if (!ix)
        return KILN_E_ARG;
    kiln_writer_begin(ix);
    const kiln_status st = update_vectors(ix, vectors, labels, n);
    kiln_writer_end(ix);
    return st;
}

/* Decision 8: a writer like the others, so its changes are committed the
 * same way even though the importer's index is not shared yet. */
static kiln_status remove_marked(struct kiln_index *ix, const uint8_t *doomed, uint32_t ef,
                                 kiln_repair_stats *rep) {
    size_t n = 0;
    for (uint64_t i = 0; i < ix->count; i++)
        n += doomed[i] && !kiln_slot_free(ix, i);
    if (n == 0)
        return KILN_OK;
    /* Labels may repeat among the doomed and the rest (a forged file):
     * no map now, the next write builds one from the live slots. */
    map_free(ix->label_map);
    ix->label_map = NULL;
    kiln_status st = reserve_slots(ix, ix->count);
    uint32_t *slots = NULL;
    if (st == KILN_OK && (st = kiln_alloc(ix->ctx, n * sizeof *slots, "slots", (void **)&slots)))
        return st;
    for (uint64_t i = 0, k = 0; st == KILN_OK && i < ix->count; i++)
        if (doomed[i] && !kiln_slot_free(ix, i))
            slots[k++] = (uint32_t)i;
    if (st == KILN_OK)
        st = remove_slots(ix, slots, n, doomed, ef, rep);
    free(slots);
    return st;
}

kiln_status kiln_live_remove_marked(struct kiln_index *ix, const uint8_t *doomed, uint32_t ef,
                                    kiln_repair_stats *rep) {
    memset(rep, 0, sizeof *rep);
    kiln_writer_begin(ix);
    const kiln_status st = remove_marked(ix, doomed, ef, rep);
    kiln_writer_end(ix);
    return st;
}

void kiln_live_free(struct kiln_index *ix) {
    map_free(ix->label_map);
    ix->label_map = NULL;
    free(ix->freed);
    free(ix->free_list);
    ix->freed = NULL;
    ix->free_list = NULL;
}
