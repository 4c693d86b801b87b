/* kmeans_internal.h -- k-means clustering and capped multi-assignment, the
 * partitioning step of the device pipeline (quantize -> cluster -> per-cluster
 * all-pairs kNN on the device -> union, rerank, prune).
 *
 * The heavy step, "the r nearest of k centroids for each of n vectors", goes
 * through a kiln_nearest_fn callback so the host can run it on the device;
 * kiln_nearest_cpu is the CPU implementation and the reference for others.
 *
 * Typical use:
 *
 *   kiln_kmeans_params p;  kiln_kmeans_params_init(&p);
 *   p.max_size = device_batch_rows;  p.threads = threads;  p.seed = seed;
 *   kiln_clusters c;
 *   st = kiln_clusters_build(ctx, (kiln_rows){x, n, dim}, &p, NULL, &c);   (NULL = CPU)
 *   ... cluster j is members[offsets[j] .. offsets[j+1]) ...
 *   kiln_clusters_free(&c);
 *
 * What travels together travels as one struct: the rows (kiln_rows), the
 * centroids (kiln_centroids), the output lists (kiln_nearest_out) -- borrowed
 * views, passed by value -- and the backend (kiln_nearest_backend, a
 * function with its user pointer), passed by pointer, NULL meaning the CPU.
 *
 * From k = 256 up, kiln_clusters_build trains and assigns in two levels
 * (hkmeans.c: coarse cells route every search), which is O(sqrt(k)) rather
 * than O(k) per row; below, and in kiln_clusters_assign, it is flat.
 *
 * Distances are squared L2 throughout. COS data must come normalised (L2 on
 * unit vectors ranks like cosine); for IP the clustering is an L2 heuristic.
 */
#ifndef KILN_KMEANS_INTERNAL_H
#define KILN_KMEANS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"
#include "../common/progress_internal.h"

/* ==== Parameters ==== */

typedef struct kiln_kmeans_params {
    uint32_t clusters;    /* k; 0 = choose from n, replicas and target_size (kiln_kmeans_k) */
    uint32_t target_size; /* wanted members per cluster when clusters == 0; default 2048
                             (the device build passes its own, default 768) */
    uint32_t max_size;    /* hard cap on members per cluster after assignment; 0 = no cap;
                             default 0 (the pipeline sets it from the device batch) */
    uint32_t replicas;    /* clusters per vector, >= 1; clamped to k; default 2 */
    uint32_t extra;       /* clusters beyond `replicas` that a vector near a boundary also
                             asks for, among its first candidates only (assign.c decision 6;
                             the cap must hold n * (replicas + extra)); default 0 */
    float extra_ratio;    /* near: its next candidate's squared distance is at most
                             extra_ratio times its nearest's; used when extra > 0 */
    float extra_share;    /* the share of vectors expected near a boundary: with extra > 0
                             and clusters == 0, k counts their placements too, so clusters
                             stay near target_size (kiln_kmeans_k); default 0 */
    uint32_t spare;       /* candidates beyond `replicas` a vector may spill to before it
                             goes wherever there is room; default 8 */
    uint32_t iters;       /* Lloyd iterations (fewer when assignments stop changing);
                             0 = seeding only; default 8 */
    uint32_t sample;      /* training rows; 0 = min(n, 256 * k); raised to k, capped at n */
    uint64_t seed;        /* default 1 */
    uint32_t threads;     /* CPU threads; 0 = all cores; default 0 */
} kiln_kmeans_params;

/* Sets the defaults above. */
void kiln_kmeans_params_init(kiln_kmeans_params *p);

/* Validates p for n vectors and gives the number of clusters k that train and
 * build will use: p->clusters when set (1..n), else ceil(n * (replicas +
 * extra * extra_share) / target_size), raised to ceil(n * replicas / max_size) when capped and to
 * replicas, then limited to n. Fails with KILN_E_ARG naming the parameter,
 * also when the cap cannot be met (k * max_size < n * min(replicas, k)). */
kiln_status kiln_kmeans_k(kiln_ctx *ctx, size_t n, const kiln_kmeans_params *p, uint32_t *k);

/* ==== Rows, centroids, backend ==== */

/* n rows of dim floats, row-major: the vectors clustered or searched. A
 * borrowed view. */
typedef struct kiln_rows {
    const float *x; /* n*dim; may be NULL when n == 0 */
    size_t n;
    uint32_t dim;
} kiln_rows;

/* k centroids of dim floats, row-major. A borrowed view; where rows are
 * searched against it, its dim must be theirs. */
typedef struct kiln_centroids {
    const float *c; /* k*dim */
    uint32_t k;
    uint32_t dim;
} kiln_centroids;

/* The r nearest of each of n rows: ids[i*r + j] and dists[i*r + j] (squared
 * L2), n*r entries each, the caller's. */
typedef struct kiln_nearest_out {
    uint32_t *ids;
    float *dists;
} kiln_nearest_out;

/* For each of the rows, the r nearest of the centroids (rows.dim ==
 * cent.dim), 1 <= r <= cent.k, into out: nearest first, ties by smaller id,
 * a NaN distance ranking as +inf. Must be deterministic: the same inputs
 * give the same bytes whatever the batch split or thread count, because
 * training and assignment are only as repeatable as this. All buffers are
 * the caller's; errors go to ctx. */
typedef kiln_status (*kiln_nearest_fn)(void *user, kiln_ctx *ctx, kiln_rows rows,
                                       kiln_centroids cent, uint32_t r, kiln_nearest_out out);

/* A nearest-centroid backend: fn called with user. Wherever one is taken, a
 * NULL backend or a NULL fn means kiln_nearest_cpu with the call's threads
 * (user ignored). */
typedef struct kiln_nearest_backend {
    kiln_nearest_fn fn;
    void *user;
} kiln_nearest_backend;

/* user for kiln_nearest_cpu; NULL means all cores. */
typedef struct kiln_nearest_cpu_opts {
    uint32_t threads; /* 0 = all cores */
} kiln_nearest_cpu_opts;

/* The CPU backend (user: const kiln_nearest_cpu_opts * or NULL). dists are the
 * dispatched SIMD squared L2 (kiln_distance_fn(KILN_METRIC_L2)), the same
 * values kiln_knn_exact reports, and the ranking is exact for them; the
 * blocked ||x||^2 - 2 x.c + ||c||^2 form only chooses which centroids get an
 * exact distance (kmeans.c decision 6). */
kiln_status kiln_nearest_cpu(void *user, kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                             uint32_t r, kiln_nearest_out out);

/* The backend b, or, when b or b->fn is NULL, kiln_nearest_cpu with cpu
 * (whose threads the caller has set; it must outlive the backend's use). */
static inline kiln_nearest_backend kiln_nearest_or_cpu(const kiln_nearest_backend *b,
                                                       kiln_nearest_cpu_opts *cpu) {
    if (b && b->fn)
        return *b;
    return (kiln_nearest_backend){kiln_nearest_cpu, cpu};
}

/* ==== Training ==== */

/* Trains k = kiln_kmeans_k(rows.n, p) centroids on a seeded sample of the
 * rows and writes them to centroids (k*rows.dim floats, the caller's).
 * nearest NULL = kiln_nearest_cpu with p->threads. The result depends only
 * on (rows, p minus threads, the backend's answers): any thread count gives
 * the same bytes. */
kiln_status kiln_kmeans_train(kiln_ctx *ctx, kiln_rows rows, const kiln_kmeans_params *p,
                              const kiln_nearest_backend *nearest, float *centroids);

/* ==== Two-level training and search (hkmeans.c) ==== */

/* Coarse centroids that route searches over many fine centroids. A search
 * files each fine centroid under its nearest coarse cells and looks for a
 * row's nearest fine centroids only in the files of its nearest cells; the
 * files are made per search, so any centroids can be searched (training
 * moves them). cells == 0 is the flat case: searches go straight to the
 * backend. Owned by the struct (kiln_kmeans_tree_free). */
typedef struct kiln_kmeans_tree {
    uint32_t cells; /* coarse centroids; 0 = flat */
    uint32_t dim;
    float *coarse; /* cells*dim; NULL when flat */
} kiln_kmeans_tree;

/* Trains k = kiln_kmeans_k(rows.n, p) centroids, like kiln_kmeans_train,
 * into centroids (k*rows.dim floats, the caller's) and leaves in *tree (overwritten,
 * not freed first; zeroed on failure) the coarse centroids that route
 * searches over them. Below a threshold on k this is kiln_kmeans_train
 * exactly and the tree is flat; above it, training runs in two levels
 * (hkmeans.c). Same determinism as kiln_kmeans_train. */
kiln_status kiln_kmeans_train_tree(kiln_ctx *ctx, kiln_rows rows, const kiln_kmeans_params *p,
                                   const kiln_nearest_backend *nearest, float *centroids,
                                   kiln_kmeans_tree *tree);

/* How kiln_kmeans_tree_nearest searches. */
typedef struct kiln_kmeans_tree_search {
    const kiln_kmeans_tree *tree;
    uint32_t probes;              /* coarse cells searched per row */
    uint32_t copies;              /* cells each centroid is filed under; probes = copies = 0:
                                     the setting for candidate lists */
    kiln_nearest_backend nearest; /* fn NULL = kiln_nearest_cpu with threads */
    uint32_t threads;             /* gather rows and merge lists, and drive the CPU backend;
                                     0 = all cores */
} kiln_kmeans_tree_search;

/* The r nearest of the centroids for each of the rows (rows.dim == cent.dim
 * == s->tree->dim), with the kiln_nearest_fn output contract, but searched
 * only in the files of each row's s->probes nearest coarse cells, where
 * every centroid is filed under its s->copies nearest cells and a file
 * shorter than r is padded with the r centroids nearest its cell: the exact
 * r nearest among the probed files, by the backend's distances and ties
 * (hkmeans.c decisions 4 and 5). One of probes and copies 0 (not both), a
 * flat tree, or more than 64 of either makes it one flat backend call. The
 * backend must give a (row, centroid) pair the same distance in every call.
 * Deterministic like the backend, whatever s->threads is. */
kiln_status kiln_kmeans_tree_nearest(kiln_ctx *ctx, const kiln_kmeans_tree_search *s,
                                     kiln_rows rows, kiln_centroids cent, uint32_t r,
                                     kiln_nearest_out out);

/* Frees the coarse centroids and zeroes *tree; NULL and a zeroed struct are
 * no-ops. */
void kiln_kmeans_tree_free(kiln_kmeans_tree *tree);

/* Building blocks that kmeans.c shares with hkmeans.c. */

/* The number of training rows for k centroids out of n (p->sample, else
 * 256 k; at least k, at most n). */
size_t kiln_kmeans_sample_rows(size_t n, uint32_t k, const kiln_kmeans_params *p);

/* m <= rows.n of the rows chosen uniformly by seeded selection sampling,
 * copied in ascending id order to out (m*rows.dim floats, the caller's) by
 * `threads` threads (0 = all cores). */
kiln_status kiln_kmeans_sample(kiln_ctx *ctx, kiln_rows rows, size_t m, uint64_t seed, int threads,
                               float *out);

/* One run of kiln_kmeans_train_rows or kiln_kmeans_refine_rows: what
 * hkmeans.c sets per call. */
typedef struct kiln_kmeans_run {
    uint32_t iters;               /* Lloyd iterations at most */
    uint32_t threads;             /* 0 = all cores */
    uint64_t seed;                /* the run's draws */
    kiln_nearest_backend nearest; /* fn NULL = kiln_nearest_cpu with threads */
    kiln_progress_bar *bar;       /* NULL, or advanced by one per iteration */
} kiln_kmeans_run;

/* k-means++ seeding and run->iters Lloyd iterations on exactly the rows,
 * 1 <= k <= rows.n, into centroids (k*rows.dim floats, the caller's).
 * Deterministic like kiln_kmeans_train. */
kiln_status kiln_kmeans_train_rows(kiln_ctx *ctx, kiln_rows rows, uint32_t k,
                                   const kiln_kmeans_run *run, float *centroids);

/* Up to run->iters Lloyd iterations on the rows from the k centroids as they
 * are (no seeding), 1 <= k <= rows.n. */
kiln_status kiln_kmeans_refine_rows(kiln_ctx *ctx, kiln_rows rows, uint32_t k,
                                    const kiln_kmeans_run *run, float *centroids);

/* ==== Capped multi-assignment ==== */

/* Clusters as CSR. Filled by kiln_clusters_assign / kiln_clusters_build; the
 * arrays are owned by the struct (kiln_clusters_free). */
typedef struct kiln_clusters {
    uint32_t k, dim;
    uint32_t replicas;        /* the most clusters a vector is in: min(p->replicas +
                                 p->extra, k) */
    float *centroids;         /* k*dim, a copy */
    uint64_t *offsets;        /* k+1; cluster j is members[offsets[j] .. offsets[j+1]) */
    uint32_t *members;        /* offsets[k] vector ids, ascending within a cluster */
    uint32_t max_members;     /* size of the largest cluster, <= max_size when capped */
    uint64_t spilled_vectors; /* vectors not in all of their `replicas` nearest clusters */
    uint64_t far_vectors;     /* vectors placed outside their replicas+spare nearest */
    uint64_t short_vectors;   /* vectors in fewer than `replicas` clusters (best effort) */
    uint64_t extra_vectors;   /* vectors in more than p->replicas clusters (p->extra) */
} kiln_clusters;

/* Puts every row into its `replicas` nearest clusters, distinct, without
 * any cluster exceeding p->max_size (assign.c explains how overflow spills).
 * The cap is a guarantee and every vector lands in at least one cluster;
 * replicas is best effort (short_vectors counts the misses, normally 0).
 * cent: the k clusters' centroids (cent.dim == rows.dim); p->clusters is
 * ignored here. nearest NULL = kiln_nearest_cpu with p->threads. *out is
 * overwritten (not freed first); on failure it is zeroed. */
kiln_status kiln_clusters_assign(kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                                 const kiln_kmeans_params *p, const kiln_nearest_backend *nearest,
                                 kiln_clusters *out);

/* kiln_clusters_assign with candidate lists from kiln_kmeans_tree_nearest
 * (its list setting; tree->dim == rows.dim) instead of a flat search; the
 * full ranking of decision 3 of assign.c stays flat over all k. */
kiln_status kiln_clusters_assign_tree(kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                                      const kiln_kmeans_tree *tree, const kiln_kmeans_params *p,
                                      const kiln_nearest_backend *nearest, kiln_clusters *out);

/* kiln_kmeans_k, kiln_kmeans_train_tree, then kiln_clusters_assign_tree of
 * all the rows. */
kiln_status kiln_clusters_build(kiln_ctx *ctx, kiln_rows rows, const kiln_kmeans_params *p,
                                const kiln_nearest_backend *nearest, kiln_clusters *out);

/* Frees the arrays and zeroes *c; NULL and a zeroed struct are no-ops. */
void kiln_clusters_free(kiln_clusters *c);

#endif /* KILN_KMEANS_INTERNAL_H */
