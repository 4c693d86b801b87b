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
 *   st = kiln_clusters_build(ctx, x, n, dim, &p, NULL, NULL, &c);   (NULL = CPU)
 *   ... cluster j is members[offsets[j] .. offsets[j+1]) ...
 *   kiln_clusters_free(&c);
 *
 * Distances are squared L2 throughout. COS data must come normalised (L2 on
 * unit vectors ranks like cosine); for IP the clustering is an L2 heuristic.
 */
#ifndef KILN_KMEANS_INTERNAL_H
#define KILN_KMEANS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

/* ==== Parameters ==== */

typedef struct kiln_kmeans_params {
    uint32_t clusters;    /* k; 0 = choose from n, replicas and target_size (kiln_kmeans_k) */
    uint32_t target_size; /* wanted members per cluster when clusters == 0; default 2048 */
    uint32_t max_size;    /* hard cap on members per cluster after assignment; 0 = no cap;
                             default 0 (the pipeline sets it from the device batch) */
    uint32_t replicas;    /* clusters per vector, >= 1; clamped to k; default 2 */
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
 * build will use: p->clusters when set (1..n), else ceil(n * replicas /
 * target_size), raised to ceil(n * replicas / max_size) when capped and to
 * replicas, then limited to n. Fails with KILN_E_ARG naming the parameter,
 * also when the cap cannot be met (k * max_size < n * min(replicas, k)). */
kiln_status kiln_kmeans_k(kiln_ctx *ctx, size_t n, const kiln_kmeans_params *p, uint32_t *k);

/* ==== Nearest-centroid backend ==== */

/* For each of the n vectors x (row-major, dim floats), the r nearest of the k
 * centroids (row-major, k*dim floats), 1 <= r <= k: ids[i*r + j] and
 * dists[i*r + j] (squared L2), nearest first, ties by smaller id, a NaN
 * distance ranking as +inf. Must be deterministic: the same inputs give the
 * same bytes whatever the batch split or thread count, because training and
 * assignment are only as repeatable as this. All buffers are the caller's;
 * errors go to ctx. */
typedef kiln_status (*kiln_nearest_fn)(void *user, kiln_ctx *ctx, const float *x, size_t n,
                                       const float *centroids, uint32_t k, uint32_t dim, uint32_t r,
                                       uint32_t *ids, float *dists);

/* user for kiln_nearest_cpu; NULL means all cores. */
typedef struct kiln_nearest_cpu_opts {
    uint32_t threads; /* 0 = all cores */
} kiln_nearest_cpu_opts;

/* The CPU backend (user: const kiln_nearest_cpu_opts * or NULL). dists are the
 * dispatched SIMD squared L2 (kiln_distance_fn(KILN_METRIC_L2)), the same
 * values kiln_knn_exact reports, and the ranking is exact for them; the
 * blocked ||x||^2 - 2 x.c + ||c||^2 form only chooses which centroids get an
 * exact distance (kmeans.c decision 6). */
kiln_status kiln_nearest_cpu(void *user, kiln_ctx *ctx, const float *x, size_t n,
                             const float *centroids, uint32_t k, uint32_t dim, uint32_t r,
                             uint32_t *ids, float *dists);

/* ==== Training ==== */

/* Trains k = kiln_kmeans_k(n, p) centroids on a seeded sample of x (n rows of
 * dim floats, borrowed) and writes them to centroids (k*dim floats, the
 * caller's). nearest NULL = kiln_nearest_cpu with p->threads (user ignored).
 * The result depends only on (x, p minus threads, the backend's answers):
 * any thread count gives the same bytes. */
kiln_status kiln_kmeans_train(kiln_ctx *ctx, const float *x, size_t n, uint32_t dim,
                              const kiln_kmeans_params *p, kiln_nearest_fn nearest, void *user,
                              float *centroids);

/* ==== Capped multi-assignment ==== */

/* Clusters as CSR. Filled by kiln_clusters_assign / kiln_clusters_build; the
 * arrays are owned by the struct (kiln_clusters_free). */
typedef struct kiln_clusters {
    uint32_t k, dim;
    uint32_t replicas;        /* effective replicas: min(p->replicas, k) */
    float *centroids;         /* k*dim, a copy */
    uint64_t *offsets;        /* k+1; cluster j is members[offsets[j] .. offsets[j+1]) */
    uint32_t *members;        /* offsets[k] vector ids, ascending within a cluster */
    uint32_t max_members;     /* size of the largest cluster, <= max_size when capped */
    uint64_t spilled_vectors; /* vectors not in all of their `replicas` nearest clusters */
    uint64_t far_vectors;     /* vectors placed outside their replicas+spare nearest */
    uint64_t short_vectors;   /* vectors in fewer than `replicas` clusters (best effort) */
} kiln_clusters;

/* Puts every vector into its `replicas` nearest clusters, distinct, without
 * any cluster exceeding p->max_size (assign.c explains how overflow spills).
 * The cap is a guarantee and every vector lands in at least one cluster;
 * replicas is best effort (short_vectors counts the misses, normally 0).
 * k = number of centroids (k*dim floats, borrowed); p->clusters is ignored
 * here. *out is overwritten (not freed first); on failure it is zeroed. */
kiln_status kiln_clusters_assign(kiln_ctx *ctx, const float *x, size_t n, uint32_t dim,
                                 const float *centroids, uint32_t k, const kiln_kmeans_params *p,
                                 kiln_nearest_fn nearest, void *user, kiln_clusters *out);

/* kiln_kmeans_k, kiln_kmeans_train, then kiln_clusters_assign of all n rows. */
kiln_status kiln_clusters_build(kiln_ctx *ctx, const float *x, size_t n, uint32_t dim,
                                const kiln_kmeans_params *p, kiln_nearest_fn nearest, void *user,
                                kiln_clusters *out);

/* Frees the arrays and zeroes *c; NULL and a zeroed struct are no-ops. */
void kiln_clusters_free(kiln_clusters *c);

#endif /* KILN_KMEANS_INTERNAL_H */
