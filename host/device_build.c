/* device_build.c -- the device build pipeline (kiln build --method device):
 * quantize, cluster, per-cluster kNN on the OpenCL device, then union,
 * exact rerank and prune into HNSW level 0, and the hierarchy above it.
 *
 * Design decisions:
 *  1. The per-cluster all-pairs work uses 4-bit bit-sliced
 *     codes (host/quant4.c): the device only ranks candidates; every distance
 *     that decides a link is recomputed exactly in full precision
 *     (graph/merge.c), so code error costs candidates, not wrong links.
 *  2. k-means runs its nearest-centroid steps (training, and the
 *     replicas + spare nearest centroids of the capped assignment) on the
 *     device through kiln_cl_nearest when the device is a GPU or accelerator.
 *     When the OpenCL device is the host CPU itself (PoCL), the same ranking
 *     runs on the host's SIMD backend instead: same silicon, exact same
 *     ranking rule, and measured 14x faster on siftsmall (0.15 s vs 0.011 s,
 *     PoCL's per-launch overhead dominating small Lloyd steps).
 *  3. Clusters go to the device in groups whose member slots fit a bounded
 *     host buffer, so host memory for device output stays O(group) while the
 *     candidate table is O(n * replicas * K) uint32 ids.
 *  4. The cluster size cap is sized from the device: a cluster's codes must
 *     fit one work-group batch (kiln_cl_cluster_knn halves batches that fail,
 *     never a single cluster, so the cap is what guarantees progress).
 *  5. Levels are sampled as for insertion but with base 4 instead of M
 *     (graph/hnsw_build.c KILN_DEVICE_LEVEL_BASE), so a quarter of the
 *     nodes are on level 1; the upper levels are built by HNSW insertion restricted to
 *     levels >= 1, which gives search its entry point and level 0 its
 *     long-range links; so they are built before level 0.
 *  6. For L2 and COS the device compares residuals x - centroid, quantized
 *     with a step trained on residuals (IVF-style): one global step over the
 *     raw data spends the 16 levels on the spread between clusters and
 *     leaves the neighbours inside a tight cluster nearly indistinguishable
 *     (measured when chosen: synthetic clustered L2 recall@10 at ef=64 was
 *     0.955 with global codes and rose with residual ones; the figure after
 *     was not recorded).
 *     Unit vectors rank the same by L2 as by IP, so COS qualifies; raw IP
 *     keeps the global codes. Residuals are encoded per group of clusters,
 *     slot by slot, so a vector's code differs per cluster it is in.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../cluster/kmeans_internal.h"
#include "../graph/build_internal.h"
#include "../common/ctx_internal.h"
#include "device_internal.h"
#include "../common/progress_internal.h"
#include "quant4_internal.h"

/* Target cluster size when the caller gives neither clusters nor size: the
 * all-pairs cost per vector is replicas * size 4-bit distances, and k-means
 * cost grows with k^2. Measured on fmnist60k (PoCL, 2 cores): 512 -> 5.2 s,
 * 768 -> 5.8 s, 1024 -> 7.1 s build, recall@10 at ef=10 0.943 / 0.946 /
 * 0.948 (hnswlib 0.932); 768 balances the k^2 k-means term at 1M. */
#define DEVICE_TARGET_CLUSTER 768
/* k-means training rows per centroid. Clusters here only group candidates
 * (every vector joins 2+ of them, and links are decided by exact distances
 * later), so coarse centroids suffice: 64 is above FAISS's warning floor of
 * 39 and cut the k-means stage at 1M x 128 from 16.8 s to 6.7 s against
 * the default 256. */
#define DEVICE_KMEANS_PER_CENTROID 64
/* Beam width for building the upper levels: ef_construction scaled by
 * DEVICE_HIERARCHY_EF / 200, so the default ef_construction (200) gives 64.
 * With level 1 at 1/4 of the nodes (graph/hnsw_build.c
 * KILN_DEVICE_LEVEL_BASE) the hierarchy is a quarter of an insertion build;
 * 64 keeps it at 7.6 s of a 46 s build at 1M x 128 with the recall in that
 * note. It used to be min(ef_construction, 64), which made every value above
 * 64 give the same graph. Measured, siftsmall, 1 thread, beam = the full
 * ef_construction 64/200/400: recall@10 at ef 10/16/64 0.941/0.974/0.999,
 * 0.940/0.976/0.998, 0.941/0.974/0.998 (no gain), hierarchy stage
 * 0.09/0.25/0.42 s of a ~0.9 s build; so the full beam would cost the
 * default build time for nothing, and the scaled one keeps the default's
 * graph and cost while larger values still buy a wider beam. */
#define DEVICE_HIERARCHY_EF 64
#define DEVICE_HIERARCHY_OF 200
/* The hard cap, as a multiple of the target: k-means clusters are uneven. */
#define DEVICE_CAP_FACTOR 3
/* Host bytes per group of clusters sent to kiln_cl_cluster_knn (codes and
 * top-K output per member slot): bounds host memory whatever n is, and is
 * large enough that PoCL's per-call overhead is amortised. */
#define DEVICE_GROUP_BYTES ((size_t)256 << 20)

/* ==== Nearest-centroid backend ==== */

typedef struct nearest_user {
    kiln_nearest_cpu_opts cpu;
    bool on_device; /* decision 2: the device is a GPU or accelerator */
} nearest_user;

/* k-means asks for r = replicas + spare nearest centroids, and rarely for a
 * full ranking (r = k) when a vector found no cluster with room; the device
 * kernel keeps at most KILN_CL_MAX_TOP per row, so that rare case runs on the
 * CPU with the same ranking rule (ties by smaller id). */
static kiln_status nearest_backend(void *user, kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                                   uint32_t r, kiln_nearest_out out) {
    nearest_user *u = user;
    if (!u->on_device || r > KILN_CL_MAX_TOP)
        return kiln_nearest_cpu(&u->cpu, ctx, rows, cent, r, out);
    return kiln_cl_nearest(NULL, ctx, rows, cent, r, out);
}

/* ==== Report ==== */

static void stage(kiln_build_report *rep, const char *name, double seconds) {
    if (rep->n_stages < KILN_REPORT_MAX_STAGES) {
        rep->stages[rep->n_stages].name = name;
        rep->stages[rep->n_stages].seconds = seconds;
        rep->n_stages++;
    }
}

/* ==== Codes ==== */

/* Decision 6: what the device compares. With residual codes (L2, COS) each
 * member slot of a group is encoded as x_v - centroid_c; otherwise (IP) the
 * global codes of every vector are used as they are. */
typedef struct codes {
    bool residual;
    const kiln_q4 *q;
    kiln_q4_set global;  /* IP: all n vectors */
    kiln_q4_set group;   /* residual: one group's slots, capacity cap_slots */
    uint32_t *identity;  /* residual: 0..cap_slots-1, the "members" of a group */
    uint32_t *center_of; /* residual: each slot's cluster, for one group */
} codes;

/* A residual training sample: up to Q4_SAMPLE slots spread evenly over all
 * slots of all clusters (deterministic), each x_v - centroid_c. The
 * quantizer keeps two percentiles per dimension (0.1% and 99.9%, from two
 * small heaps per dimension in one pass: host/quant4.c), which 16K rows pin
 * to within a few hundredths of a percent; the sample's cost grows with its
 * rows (64K rows cost fmnist60k 0.40 s when it was chosen). */
#define Q4_SAMPLE 16384
static kiln_status train_residual(kiln_ctx *ctx, const struct kiln_index *ix,
                                  const kiln_clusters *cl, const kiln_build_params *p,
                                  kiln_q4 **out) {
    const uint64_t slots = cl->offsets[cl->k];
    const size_t m = slots < Q4_SAMPLE ? (size_t)slots : Q4_SAMPLE;
    float *rows = NULL;
    kiln_status st =
        kiln_alloc(ctx, m * ix->dim * sizeof(float), "quantizer sample", (void **)&rows);
    if (st)
        return st;
    uint32_t c = 0;
    for (size_t i = 0; i < m; i++) {
        uint64_t s = (uint64_t)((double)i * (double)slots / (double)m);
        while (cl->offsets[c + 1] <= s)
            c++;
        const float *x = kiln_vector(ix, cl->members[s]),
                    *cen = cl->centroids + (size_t)c * ix->dim;
        for (uint32_t j = 0; j < ix->dim; j++)
            rows[i * ix->dim + j] = x[j] - cen[j];
    }
    st = kiln_q4_train(ctx, rows, m, ix->dim, KILN_METRIC_L2, p->seed, p->threads, out);
    free(rows);
    return st;
}

/* Encodes the residuals of the slots of clusters [c0, c1) into co->group. */
static kiln_status encode_group(kiln_ctx *ctx, const struct kiln_index *ix, const kiln_clusters *cl,
                                uint32_t c0, uint32_t c1, codes *co, uint32_t threads) {
    const uint64_t base = cl->offsets[c0], count = cl->offsets[c1] - base;
    for (uint32_t c = c0; c < c1; c++)
        for (uint64_t s = cl->offsets[c]; s < cl->offsets[c + 1]; s++)
            co->center_of[s - base] = c;
    kiln_status st =
        kiln_q4_encode_residuals(ctx, co->q, ix->vectors, cl->members + base, cl->centroids,
                                 co->center_of, count, threads, co->group.planes, co->group.norms);
    co->group.count = count;
    return st;
}

/* ==== Per-cluster kNN into the candidate table ==== */

/* Runs clusters [c0, c1) on the device and scatters each member's top-K ids
 * into cand (row v has width = replicas * K slots; fill[v] counts the
 * replicas already written). */
static kiln_status knn_group(kiln_ctx *ctx, const struct kiln_index *ix, codes *co,
                             const kiln_clusters *cl, uint32_t c0, uint32_t c1, uint32_t K,
                             uint32_t width, uint32_t *cand, uint8_t *fill, uint64_t *offsets,
                             kiln_q4_neighbor *out, uint32_t threads, kiln_build_report *rep) {
    const uint64_t base = cl->offsets[c0], slots = cl->offsets[c1] - base;
    for (uint32_t c = c0; c <= c1; c++)
        offsets[c - c0] = cl->offsets[c] - base;
    kiln_status st;
    if (co->residual && (st = encode_group(ctx, ix, cl, c0, c1, co, threads)))
        return st;
    kiln_cl_stats cs = {0};
    st = kiln_cl_cluster_knn(ctx, co->residual ? &co->group : &co->global, offsets, c1 - c0,
                             co->residual ? co->identity : cl->members + base, K, NULL, out, &cs);
    rep->device_batches += cs.batches;
    rep->batch_retries += cs.retries;
    if (st)
        return st;
    for (uint64_t s = 0; s < slots; s++) {
        uint32_t v = cl->members[base + s];
        uint32_t *row = cand + (size_t)v * width + (size_t)fill[v] * K;
        fill[v]++;
        for (uint32_t j = 0; j < K; j++) {
            uint32_t id = out[s * K + j].id;
            /* Residual codes are numbered by slot within the group. */
            row[j] = id == KILN_Q4_NO_ID ? KILN_NO_NODE
                     : co->residual      ? cl->members[base + id]
                                         : id;
        }
    }
    return KILN_OK;
}

/* ==== Pipeline ==== */

bool kiln_build_device_available(void) {
#ifdef KILN_HAVE_OPENCL
    return true;
#else
    return false;
#endif
}

kiln_status kiln_build_device(struct kiln_index *ix, const kiln_build_params *p,
                              kiln_build_report *rep) {
    kiln_ctx *ctx = ix->ctx;
    const int threads = kiln_threads(p->threads);
    const uint32_t K = p->knn_k ? p->knn_k : 2 * p->M;
    const uint32_t replicas = p->replicas ? p->replicas : 2;
    if (K > KILN_CL_MAX_K)
        return kiln_fail(ctx, KILN_E_ARG, "build: knn_k = %u is above the device limit %d", K,
                         KILN_CL_MAX_K);
    if (replicas < 2 || replicas > 16)
        return kiln_fail(ctx, KILN_E_ARG, "build: replicas = %u is out of range [2, 16]", replicas);

    kiln_device_info info;
    kiln_status st = kiln_device_select(ctx, p->device, &info);
    if (st)
        return st;
    if (ix->count == 0)
        return KILN_OK;
    snprintf(rep->device_name, sizeof rep->device_name, "%.60s / %.60s", info.platform_name,
             info.device_name);

    kiln_q4 *q = NULL;
    codes co = {.residual = ix->metric != KILN_METRIC_IP};
    kiln_clusters cl = {0};
    uint32_t *cand = NULL;
    uint64_t *offsets = NULL;
    uint8_t *fill = NULL;
    kiln_q4_neighbor *out = NULL;
    const size_t n = ix->count;
    double t;

    /* 1. Cluster and assign with replicas under a size cap. */
    t = kiln_now();
    kiln_kmeans_params kp;
    kiln_kmeans_params_init(&kp);
    kp.clusters = p->clusters;
    kp.target_size = p->cluster_size ? p->cluster_size : DEVICE_TARGET_CLUSTER;
    kp.replicas = replicas;
    kp.seed = p->seed;
    kp.threads = p->threads;
    uint32_t k;
    if ((st = kiln_kmeans_k(ctx, n, &kp, &k)))
        goto cleanup;
    {
        uint64_t sample = (uint64_t)k * DEVICE_KMEANS_PER_CENTROID;
        kp.sample = (uint32_t)(sample < n ? sample : n);
        uint64_t fair = ((uint64_t)n * replicas + k - 1) / k;
        uint64_t cap = fair * DEVICE_CAP_FACTOR;
        kp.max_size = (uint32_t)(cap < n ? cap : n);
    }
    nearest_user nu = {.cpu = {.threads = p->threads}, .on_device = info.type != KILN_DEVICE_CPU};
    const kiln_nearest_backend backend = {nearest_backend, &nu};
    if ((st = kiln_clusters_build(ctx, (kiln_rows){ix->vectors, n, ix->dim}, &kp, &backend, &cl)))
        goto cleanup;
    rep->clusters = cl.k;
    rep->max_cluster_size = cl.max_members;
    stage(rep, "kmeans+assign", kiln_now() - t);

    /* 2. Quantize: train, and for IP encode every vector once. */
    t = kiln_now();
    const uint32_t words = kiln_q4_words(ix->dim);
    const size_t code_bytes = kiln_q4_stride(words) * sizeof(uint64_t) + sizeof(uint32_t);
    size_t max_slots = DEVICE_GROUP_BYTES / (code_bytes + (size_t)K * sizeof(kiln_q4_neighbor));
    if (max_slots > cl.offsets[cl.k]) /* small inputs: one group, no spare room to touch */
        max_slots = (size_t)cl.offsets[cl.k];
    if (max_slots < cl.max_members)
        max_slots = cl.max_members;
    if (co.residual) {
        if ((st = train_residual(ctx, ix, &cl, p, &q)) ||
            (st = kiln_alloc_aligned(ctx, max_slots * kiln_q4_stride(words) * sizeof(uint64_t),
                                     "group codes", (void **)&co.group.planes)) ||
            (st = kiln_alloc(ctx, max_slots * sizeof(uint32_t), "group norms",
                             (void **)&co.group.norms)) ||
            (st = kiln_alloc(ctx, max_slots * sizeof(uint32_t), "group slots",
                             (void **)&co.identity)) ||
            (st = kiln_alloc(ctx, max_slots * sizeof(uint32_t), "group slot clusters",
                             (void **)&co.center_of)))
            goto cleanup;
        co.group.words = words;
        for (size_t i = 0; i < max_slots; i++)
            co.identity[i] = (uint32_t)i;
    } else if ((st = kiln_q4_train(ctx, ix->vectors, n, ix->dim, ix->metric, p->seed, p->threads,
                                   &q)) ||
               (st = kiln_q4_set_encode(ctx, q, ix->vectors, n, p->threads, &co.global))) {
        goto cleanup;
    }
    co.q = q;
    stage(rep, "quantize", kiln_now() - t);

    /* 3. Per-cluster kNN on the device, group by group. */
    t = kiln_now();
    const uint32_t width = cl.replicas * K;
    size_t cand_len;
    if (kiln_mul_size(n, width, &cand_len)) {
        st = kiln_fail(ctx, KILN_E_RANGE, "build: candidate table of %zu x %u overflows", n, width);
        goto cleanup;
    }
    if ((st = kiln_alloc(ctx, cand_len * sizeof *cand, "candidate table", (void **)&cand)) ||
        (st = kiln_calloc(ctx, n, "replica counts", (void **)&fill)) ||
        (st = kiln_alloc(ctx, ((size_t)cl.k + 1) * sizeof *offsets, "cluster offsets",
                         (void **)&offsets)) ||
        (st = kiln_alloc(ctx, max_slots * K * sizeof *out, "device results", (void **)&out)))
        goto cleanup;
    memset(cand, 0xff, cand_len * sizeof *cand);
    {
        kiln_progress_bar bar;
        kiln_progress_begin(&bar, ctx, "cluster knn", cl.k);
        uint32_t c0 = 0;
        while (c0 < cl.k && st == KILN_OK) {
            uint32_t c1 = c0 + 1;
            while (c1 < cl.k && cl.offsets[c1 + 1] - cl.offsets[c0] <= max_slots)
                c1++;
            st = knn_group(ctx, ix, &co, &cl, c0, c1, K, width, cand, fill, offsets, out,
                           p->threads, rep);
            kiln_progress_add(&bar, c1 - c0);
            c0 = c1;
        }
        kiln_progress_end(&bar);
        if (st)
            goto cleanup;
    }
    stage(rep, "device knn", kiln_now() - t);

    /* 4. Hierarchy, first: its level-1 links seed level 0 (graph/merge.c). */
    t = kiln_now();
    const uint64_t hier_ef =
        ((uint64_t)p->ef_construction * DEVICE_HIERARCHY_EF + DEVICE_HIERARCHY_OF - 1) /
        DEVICE_HIERARCHY_OF;
    if ((st = kiln_hnsw_insert_levels(ix, (uint32_t)hier_ef, threads, 1)))
        goto cleanup;
    ix->ef_construction = p->ef_construction; /* what the header records: the parameter */
    stage(rep, "hierarchy", kiln_now() - t);

    /* 5. Union, exact rerank, prune, reverse links. */
    t = kiln_now();
    {
        uint64_t filled = 0;
        for (size_t i = 0; i < cand_len; i++)
            filled += cand[i] != KILN_NO_NODE;
        rep->candidates_per_vector = (double)filled / (double)n;
    }
    st = kiln_level0_from_candidates(ix, cand, width, threads);
    stage(rep, "merge+prune", kiln_now() - t);

cleanup:
    free(out);
    free(offsets);
    free(fill);
    free(cand);
    kiln_clusters_free(&cl);
    kiln_free_aligned(co.group.planes);
    free(co.group.norms);
    free(co.identity);
    free(co.center_of);
    kiln_q4_set_release(&co.global);
    kiln_q4_free(q);
    return st;
}
