/* device_build.c -- the device build pipeline (kiln build --method device):
 * quantize, cluster, per-cluster kNN on the OpenCL device with an exact
 * rerank and a local prune per batch, the hierarchy, then the union into
 * HNSW level 0 (graph/merge.c).
 *
 * Design decisions:
 *  1. The per-cluster all-pairs work uses 4-bit bit-sliced
 *     codes (host/quant4.c): the device only ranks candidates; every distance
 *     that decides a link is recomputed exactly in full precision in the
 *     batch (rerank_slot), so code error costs candidates, not wrong links.
 *  2. k-means runs its nearest-centroid steps (training, and the
 *     replicas + spare nearest centroids of the capped assignment) on the
 *     device through kiln_cl_nearest when the device is a GPU or accelerator.
 *     When the OpenCL device is the host CPU itself (PoCL), the same ranking
 *     runs on the host's SIMD backend instead: same silicon, exact same
 *     ranking rule, and measured 14x faster on siftsmall (0.15 s vs 0.011 s,
 *     PoCL's per-launch overhead dominating small Lloyd steps).
 *  3. Clusters go to the device in batches of consecutive clusters whose
 *     member slots fit the plan's bound (decision 8), so host memory for
 *     the device's input and output is O(batch), whatever n is.
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
 *  7. Batches carry their own vectors. A batch gathers its members'
 *     vectors (from the index's storage: with a mapped input these are
 *     sequential reads per cluster), encodes them, runs the device kNN,
 *     reranks every member's K candidates with exact distances and prunes
 *     them locally (the heuristic, then the nearest until 3M/4:
 *     graph/prune.c decision 4) while the vectors are resident, hashes the
 *     direction of each kept link (graph/prune.c decision 5), then writes
 *     one work file of compact records (owner, n, n x (distance, id,
 *     hash)) and keeps only its buffers for the next batch (the device's
 *     too: host/cl_knn.c decision 10). Making level 0 from them reads no vector
 *     but for the rare entrance descent (graph/merge.c decisions 1, 4a); the
 *     reachability repair after it searches as usual. A finished batch
 *     file is a checkpoint: --resume skips it. Clusters, the hierarchy and
 *     level 0 are checkpoints too; the quantizer and the plan are
 *     recomputed (deterministic, and cheap).
 *  7a. A batch's members are its clusters' lists, each ascending
 *     (cluster/assign.c), so a gather in slot order would sweep the vector
 *     map once per cluster (about a hundred times per batch). The gather
 *     copies them in row order instead (a sort of the batch's ids): one
 *     sweep per batch in increasing offsets, so a map that the page cache
 *     cannot hold is read once in disk order. At 1B the rows of one batch
 *     are still scattered over the whole map; a cluster-ordered copy
 *     written during the assignment is the step after this (docs/SCALE.md).
 *  8. The plan: a batch holds at most DEVICE_GROUP_BYTES of slots
 *     (slot_bytes: vector, codes twice, device output, record) and a
 *     partition of the streaming passes DEVICE_PART_BYTES of nodes
 *     (node_bytes), or more, where the budget has room, so that there are
 *     about DEVICE_AIM_BATCHES batches and DEVICE_AIM_PARTS partitions
 *     whatever n is (the passes read batches x partitions segments); with
 *     a memory limit, whatever the index and clusters
 *     leave of it is split between the two, each at least what the
 *     largest cluster / 256 nodes need, else the build is refused up front
 *     with the figures. Neither size changes the result: a cluster's kNN
 *     does not depend on its batch, and a node's candidates are the same
 *     set whichever partition reads them, so any budget gives the same
 *     bytes (tests/test_device_build.c checks it).
 *  9. Level 0 is made by two streaming passes over partitions of node ids
 *     (graph/merge.c decision 6): the forward pass reads its nodes'
 *     segments of every batch file, prunes, and writes the reverse edges as
 *     a work file with one segment per target partition; the reverse pass
 *     reads its segment of every such file and applies them. Memory is one
 *     partition's records; disk is 12 bytes per kept candidate plus 32 per
 *     link (its own edge and its reverse edge), written once and read once.
 * 10. The work dir's fingerprint covers everything that changes the bytes:
 *     the vectors (CRC-32C; across ranks each rank's share of the rows, so
 *     that a changed row is refused by the rank it belongs to, and with it
 *     the job), n, dim, metric, M, ef_construction, seed,
 *     replicas and boundary extras, knn_k, clusters, cluster_size, the byte order and
 *     DEVICE_PIPELINE_VERSION. Threads and the memory limit are not in it:
 *     neither changes the result.
 * 11. Across ranks (kiln_build_params.collective under MPI, R ranks): every
 *     rank maps the input and holds the index's arrays (pages it never
 *     touches cost nothing), and the work splits as follows.
 *     - k-means on rank 0 and the hierarchy on rank 1 at the same time
 *       (neither needs the other), each then broadcast as its work file's
 *       segments (share_workfile), which every receiver writes into its
 *       own work dir and reads back with the usual checks; so is rank 0's
 *       plan. The quantizer is recomputed everywhere (deterministic).
 *     - Batch b runs on rank b mod R, in rounds of R. Partitions are owned
 *       in contiguous runs (part_lo), so a batch's records for one owner are
 *       one contiguous run of its segments: the all-to-all of each round
 *       (kiln_dist_exchange) sends them without a copy, and each owner
 *       checks every record and writes its partitions' segments as its
 *       batch file. A batch is finished when every rank holds its file: a
 *       resumed job counts them over the ranks and reruns the others.
 *     - Each rank runs the forward pass over its own partitions, a round at
 *       a time, and the reverse edges go to their targets' owners the same
 *       way; then the reverse pass over its own partitions.
 *     - Level 0 is gathered on rank 0 a partition per rank per round (so
 *       rank 0 holds R partitions in flight, not the ranks' whole share),
 *       checked, and rank 0 alone repairs, validates and writes the index.
 *     Every segment of every file holds the bytes of a one-process build's
 *     (the records of a batch and the edges of a partition do not depend
 *     on who made them), so the index is the one-process index, byte for
 *     byte. Every round ends in kiln_dist_agree, and so does every receive
 *     that cannot get its buffer (common/dist.c), so a rank's failure stops
 *     every rank at the same place with its message. Before any work the
 *     ranks compare a fingerprint of the job (parameters, n, dim, byte
 *     order, a sample of JOB_SAMPLE_ROWS rows) with rank 0's
 *     (check_same_job): a stale copy of BASE on one host is refused rather
 *     than mixed in. Records travel in host byte order, as in the work
 *     files, which that check makes common. The plan gives every rank at
 *     least two batches and a partition. What is not yet bounded: a shared
 *     work file travels whole (the clusters, 9 bytes a vector, and the
 *     upper levels, ~21, held once more by sender and receivers while it
 *     does), and level 0 is gathered whole on rank 0 (docs/SCALE.md).
 * 12. The device add (graph/hnsw_live.c decision 9) is this pipeline over
 *     the old nodes and the new ones together, with two differences: the
 *     hierarchy is the caller's (the old upper levels, with the new nodes
 *     inserted into them), and each old node's level-0 list joins its
 *     candidates as one more batch record (step_seed), so the streaming
 *     passes' union and prune see what the graph had found for it beside
 *     its cluster neighbours, new and old. It runs in one process, in a
 *     private work dir (an add is not resumed: the index in memory is
 *     unchanged until it succeeds).
 */
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../cluster/kmeans_internal.h"
#include "../graph/build_internal.h"
#include "../common/ctx_internal.h"
#include "device_internal.h"
#include "../common/crc32c_internal.h"
#include "../common/dist_internal.h"
#include "../common/le_internal.h"
#include "../common/progress_internal.h"
#include "../common/workdir_internal.h"
#include "quant4_internal.h"
#include "../common/sort_internal.h"

#define U64_LESS(a, b) ((a) < (b))
KILN_DEFINE_SORT(u64_sort, uint64_t, U64_LESS)

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
 * DEVICE_HIERARCHY_EF / 200, so the default ef_construction (200) gives 16.
 * With level 1 at 1/4 of the nodes (graph/hnsw_build.c
 * KILN_DEVICE_LEVEL_BASE) the hierarchy is a quarter of an insertion build;
 * 64 keeps it at 7.6 s of a 46 s build at 1M x 128 with the recall in that
 * note. It used to be min(ef_construction, 64), which made every value above
 * 64 give the same graph. Measured, siftsmall, 1 thread, beam = the full
 * ef_construction 64/200/400: recall@10 at ef 10/16/64 0.941/0.974/0.999,
 * 0.940/0.976/0.998, 0.941/0.974/0.998 (no gain), hierarchy stage
 * 0.09/0.25/0.42 s of a ~0.9 s build; so the full beam would cost the
 * default build time for nothing, and the scaled one keeps the default's
 * graph and cost while larger values still buy a wider beam. Then 64 -> 32
 * -> 16, measured at 1M and 4M x 128 (synthetic, 1000 queries, 2 threads,
 * with the entrance of graph/merge.c decision 4a), hierarchy stage seconds
 * and recall@10 at ef 10/16/32/64/128:
 *   1M  64: 17.0 s  0.8767/0.9401/0.9849/0.9961/0.9978
 *       32: 10.3 s  0.8724/0.9394/0.9846/0.9954/0.9968
 *       16:  5.1 s  0.8674/0.9347/0.9805/0.9943/0.9978
 *   4M  32: 56.9 s  0.7987/0.8866/0.9646/0.9934/0.9991
 *       16: 32.5 s  0.7964/0.8809/0.9615/0.9921/0.9983
 * (hnswlib at 1M: 0.8564/0.9216/0.9649/0.9762/0.9780), so 16: a quarter of
 * the build at 4M for at most 0.006 of recall. Tried and dropped: level 1
 * made like level 0, by the streaming passes from each level-1 node's exact
 * 32 nearest level-1 members of each of its clusters, with levels >= 2
 * inserted as its highways. Its hierarchy took 4.6 s at 1M, but recall fell
 * to 0.8558/0.9258/0.9760/0.9892/0.9908: a level 1 of local links gives
 * level 0 local highways (graph/merge.c decision 4), and insertion's long
 * links are what they are for. The beam is at least M, which a list needs
 * to be filled. */
#define DEVICE_HIERARCHY_EF 16
#define DEVICE_HIERARCHY_OF 200
/* The hard cap, as a multiple of the target: k-means clusters are uneven. */
#define DEVICE_CAP_FACTOR 3
/* Host bytes per group of clusters sent to kiln_cl_cluster_knn (codes and
 * top-K output per member slot): bounds host memory whatever n is, and is
 * large enough that PoCL's per-call overhead is amortised. */
#define DEVICE_GROUP_BYTES ((uint64_t)128 << 20)
/* Bytes of one partition of the streaming passes (decision 8). */
#define DEVICE_PART_BYTES ((uint64_t)128 << 20)
/* Batches and partitions the plan aims at when the budget has room for
 * bigger ones than the bytes above (decision 8): the forward pass reads a
 * segment of every batch file per partition and the reverse pass one of
 * every partition's file, batches x partitions + partitions^2 reads in all,
 * so fixed sizes made the passes grow as n^2 (at 4M x 128: 125 batches and
 * 154 partitions, 43K segment reads, each a disk request). */
#define DEVICE_AIM_BATCHES 32
#define DEVICE_AIM_PARTS   16
/* Bumped whenever the pipeline's output for the same input changes, so an
 * older work dir is refused instead of mixed in (decision 10). */
#define DEVICE_PIPELINE_VERSION 6

/* Replicas when the caller gives none: 2, and once the set has more than
 * DEVICE_WIDE_CELLS clusters' worth of vectors, a third for the vectors
 * near a boundary (cluster/assign.c decision 6). With a fixed cluster size
 * the clusters get finer as n grows, a vector's true neighbours spread over
 * more of them, and 2 replicas find fewer: measured, synthetic 128-d,
 * recall@10 at ef 10/16/32/64/128 (hnswlib 0.6.2, M 16, ef_construction
 * 200, on the same data in brackets):
 *   1M, 2 replicas: 0.8920/0.9467/0.9851/0.9962/0.9977
 *       (0.8608/0.9250/0.9706/0.9808/0.9816)
 *   4M, 2 replicas: 0.8252/0.9016/0.9676/0.9926/0.9985, 169 s
 *       3 replicas: 0.8811/0.9396/0.9834/0.9955/0.9987, 196 s
 *       (0.8308/0.9054/0.9610/0.9736/0.9746, 1750 s)
 * 1M is 1302 clusters' worth at 768 and 4M 5208, so the switch is between
 * them; a wider hierarchy beam (32) got 4M only level with hnswlib at ef
 * 10 (0.8306) for +25 s. A third replica for every vector is 1.5 times the
 * device and merge work; the vectors that need it are those between
 * centroids. At 4M (build seconds, without the save, of one build each on
 * the same machine: fd3bad1 and a trial of this rule, then 8a38653):
 *   2 replicas:                          139 s, recall as above
 *   + a third within 1.30 (50% of them, k from 2 replicas, so clusters of
 *     ~960):                             173 s  0.8743/0.9352/0.9825/0.9969/0.9990
 *   + a third within 1.15 (22%, k from 2.3 replicas, clusters ~768):
 *                                        152 s  0.8480/0.9148/0.9755/0.9947/0.9985
 *   the same with k from 2.25 (DEVICE_BOUNDARY_SHARE; 2.22 per vector):
 *                                        146 s  0.8415/0.9117/0.9757/0.9958/0.9984
 * so 1.15: +5% of time for +0.016 at ef 10, above both hnswlib runs at
 * every ef, where 3 replicas for all cost 1.4x (bench/RESULTS.md). */
#define DEVICE_WIDE_CELLS     2048
#define DEVICE_BOUNDARY_RATIO 1.15f
#define DEVICE_BOUNDARY_SHARE 0.25
static void default_replicas(uint64_t n, const kiln_build_params *p, uint32_t *replicas,
                             uint32_t *extra) {
    const uint64_t size = p->cluster_size ? p->cluster_size : DEVICE_TARGET_CLUSTER;
    const uint64_t cells = p->clusters ? p->clusters / 2 : n / size;
    *replicas = 2;
    *extra = cells > DEVICE_WIDE_CELLS ? 1 : 0;
}

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

/* ==== The pipeline's state ==== */

/* Everything one device build holds between its stages. */
typedef struct pipeline {
    kiln_ctx *ctx;
    struct kiln_index *ix;
    const kiln_build_params *p;
    kiln_build_report *rep;
    int threads;
    uint32_t K;               /* device neighbours per member per cluster */
    uint32_t replicas, extra; /* clusters per vector, and boundary extras (default_replicas) */
    bool residual;            /* decision 6 */
    kiln_clusters cl;         /* step 1 */
    kiln_q4 *q;               /* step 2 */
    kiln_workdir *wd;         /* decision 7 */
    bool temp_wd;             /* a private dir of this call, removed at its end */
    /* The plan (decision 8): */
    size_t max_slots;   /* member slots per batch */
    uint32_t n_batches; /* batch b is clusters [batch_first[b], batch_first[b + 1]) */
    uint32_t *batch_first;
    uint32_t part_nodes; /* nodes per partition of the streaming passes */
    uint32_t parts;
    uint64_t candidates; /* read by the forward pass, for the report */
    float *planes;       /* the hash planes (graph/prune.c decision 5) */
    /* A device add (decision 12): nodes [0, seeded) have lists already,
     * which seed_files more batch files carry into the streaming passes. */
    uint64_t seeded;
    uint32_t seed_files;
    /* Across ranks (decision 11); one process is rank 0 of 1. */
    int rank, ranks;
    uint64_t bytes_sent; /* to the other ranks */
} pipeline;

/* Hands the heap the allocator keeps after a stage's big temporaries back
 * to the kernel, so resident memory is what is live (decision 8: the budget
 * is checked against what /proc says is resident). */
static void trim_heap(void) {
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

static void stage(kiln_build_report *rep, const char *name, double seconds) {
    trim_heap();
    rep->peak_rss_anon = kiln_peak_rss_anon();
    kiln_report_stage(rep, name, seconds);
}

/* Bytes of one member slot while its batch is resident: its vector and its
 * place in the gather, its codes (and the device's copy: on a CPU device
 * the buffers are host memory too), its cluster, its device top-K, and its
 * reranked record; across ranks, the copy of the record its owner receives. */
static size_t slot_bytes(const pipeline *pl) {
    const size_t code = kiln_q4_stride(kiln_q4_words(pl->ix->dim)) * sizeof(uint64_t) + 4;
    return (size_t)pl->ix->dim * sizeof(float) + sizeof(uint64_t) + 2 * code +
           2 * sizeof(uint32_t) + 2 * (size_t)pl->K * sizeof(kiln_q4_neighbor) +
           2 * sizeof(uint32_t) + (size_t)pl->K * (sizeof(kiln_hcand) + sizeof(kiln_cand)) +
           KILN_HASH_BITS * sizeof(float) +
           (pl->ranks > 1 ? 2 * sizeof(uint32_t) + (size_t)pl->K * sizeof(kiln_hcand) : 0);
}

/* Bytes per node of a partition in the streaming passes: its candidates
 * (every replica's K) and offsets, then its reverse edges out and in. */
static size_t node_bytes(const pipeline *pl) {
    return (size_t)(pl->replicas + pl->extra) * pl->K * sizeof(kiln_hcand) + 2 * sizeof(uint64_t) +
           (size_t)pl->ix->M0 * (4 * sizeof(kiln_edge) + 5 * sizeof(kiln_hcand));
}

/* ==== Work files ==== */

/* Step 1's clusters as a work file: counts, offsets, members, centroids. */
static kiln_status clusters_put(pipeline *pl) {
    const kiln_clusters *c = &pl->cl;
    const uint64_t head[9] = {c->k,           c->dim,           c->replicas,
                              c->max_members, c->offsets[c->k], c->spilled_vectors,
                              c->far_vectors, c->short_vectors, c->extra_vectors};
    const kiln_work_seg segs[4] = {{head, sizeof head},
                                   {c->offsets, ((size_t)c->k + 1) * sizeof *c->offsets},
                                   {c->members, (size_t)c->offsets[c->k] * sizeof *c->members},
                                   {c->centroids, (size_t)c->k * c->dim * sizeof *c->centroids}};
    return kiln_workdir_put(pl->wd, "clusters", segs, 4);
}

static kiln_status clusters_get(pipeline *pl) {
    kiln_ctx *ctx = pl->ctx;
    kiln_clusters *c = &pl->cl;
    kiln_workfile *wf = NULL;
    uint64_t head[9];
    kiln_status st = kiln_workfile_open(pl->wd, "clusters", 4, &wf);
    if (st == KILN_OK && kiln_workfile_seg_len(wf, 0) != sizeof head)
        st = kiln_fail(ctx, KILN_E_FORMAT, "work file clusters.kw: bad header segment");
    if (st == KILN_OK)
        st = kiln_workfile_read(wf, 0, head);
    const uint64_t n = pl->ix->count;
    if (st == KILN_OK && (head[0] < 1 || head[0] > n || head[1] != pl->ix->dim || head[2] < 1 ||
                          head[2] > 16 || head[4] > n * head[2] || head[3] > head[4] ||
                          kiln_workfile_seg_len(wf, 1) != (head[0] + 1) * sizeof(uint64_t) ||
                          kiln_workfile_seg_len(wf, 2) != head[4] * sizeof(uint32_t) ||
                          kiln_workfile_seg_len(wf, 3) != head[0] * head[1] * sizeof(float)))
        st = kiln_fail(ctx, KILN_E_FORMAT, "work file clusters.kw: counts do not fit the input");
    if (st == KILN_OK) {
        c->k = (uint32_t)head[0];
        c->dim = (uint32_t)head[1];
        c->replicas = (uint32_t)head[2];
        c->max_members = (uint32_t)head[3];
        c->spilled_vectors = head[5];
        c->far_vectors = head[6];
        c->short_vectors = head[7];
        c->extra_vectors = head[8];
    }
    if (st == KILN_OK && ((st = kiln_alloc(ctx, kiln_workfile_seg_len(wf, 1), "cluster offsets",
                                           (void **)&c->offsets)) ||
                          (st = kiln_alloc(ctx, kiln_workfile_seg_len(wf, 2) + 1, "cluster members",
                                           (void **)&c->members)) ||
                          (st = kiln_alloc(ctx, kiln_workfile_seg_len(wf, 3), "centroids",
                                           (void **)&c->centroids)) ||
                          (st = kiln_workfile_read(wf, 1, c->offsets)) ||
                          (st = kiln_workfile_read(wf, 2, c->members)) ||
                          (st = kiln_workfile_read(wf, 3, c->centroids)))) {
        /* st says what failed */
    }
    /* What the batches index by must hold even for a damaged file. */
    for (uint32_t j = 0; st == KILN_OK && j < c->k; j++)
        if (c->offsets[0] != 0 || c->offsets[j + 1] < c->offsets[j] ||
            c->offsets[j + 1] - c->offsets[j] > c->max_members)
            st = kiln_fail(ctx, KILN_E_FORMAT, "work file clusters.kw: offsets out of order");
    if (st == KILN_OK && c->offsets[c->k] != head[4])
        st = kiln_fail(ctx, KILN_E_FORMAT, "work file clusters.kw: offsets out of order");
    for (uint64_t s = 0; st == KILN_OK && s < head[4]; s++)
        if (c->members[s] >= n)
            st = kiln_fail(ctx, KILN_E_FORMAT, "work file clusters.kw: member %llu out of range",
                           (unsigned long long)s);
    kiln_workfile_close(wf);
    if (st)
        kiln_clusters_free(c);
    return st;
}

/* The hierarchy (levels >= 1) as a work file: entry point, top level, pool. */
static kiln_status hierarchy_put(pipeline *pl) {
    const struct kiln_index *ix = pl->ix;
    const uint64_t head[3] = {ix->entry_point, ix->max_level, ix->upper_len};
    const kiln_work_seg segs[2] = {{head, sizeof head},
                                   {ix->upper_pool, ix->upper_len * sizeof(uint32_t)}};
    return kiln_workdir_put(pl->wd, "hierarchy", segs, 2);
}

static kiln_status hierarchy_get(pipeline *pl) {
    struct kiln_index *ix = pl->ix;
    kiln_workfile *wf = NULL;
    uint64_t head[3];
    kiln_status st = kiln_workfile_open(pl->wd, "hierarchy", 2, &wf);
    if (st == KILN_OK && kiln_workfile_seg_len(wf, 0) != sizeof head)
        st = kiln_fail(pl->ctx, KILN_E_FORMAT, "work file hierarchy.kw: bad header segment");
    if (st == KILN_OK && (st = kiln_workfile_read(wf, 0, head)) == KILN_OK &&
        (head[0] >= ix->count || head[2] != ix->upper_len ||
         kiln_workfile_seg_len(wf, 1) != ix->upper_len * sizeof(uint32_t) ||
         ix->levels[head[0]] != head[1]))
        st = kiln_fail(pl->ctx, KILN_E_FORMAT, "work file hierarchy.kw: does not fit the levels");
    if (st == KILN_OK && (st = kiln_workfile_read(wf, 1, ix->upper_pool)) == KILN_OK) {
        ix->entry_point = (uint32_t)head[0];
        ix->max_level = (uint32_t)head[1];
    }
    kiln_workfile_close(wf);
    /* The forward pass follows these links before the validator runs: every
     * count and id must be in range, and every target on the level. */
    for (uint32_t i = 0; st == KILN_OK && i < ix->count; i++)
        for (unsigned l = 1; st == KILN_OK && l <= ix->levels[i]; l++) {
            const uint32_t *b = kiln_links(ix, i, l);
            if (b[0] > ix->M)
                st = kiln_fail(pl->ctx, KILN_E_FORMAT,
                               "work file hierarchy.kw: node %u has %u links on level %u", i, b[0],
                               l);
            for (uint32_t j = 0; st == KILN_OK && j < b[0]; j++)
                if (b[1 + j] >= ix->count || ix->levels[b[1 + j]] < l)
                    st = kiln_fail(pl->ctx, KILN_E_FORMAT,
                                   "work file hierarchy.kw: node %u links to %u on level %u", i,
                                   b[1 + j], l);
        }
    return st;
}

/* The plan (decision 8) as a work file: batch files are cut by it, so a
 * resumed build must use the same one. */
static kiln_status plan_put(pipeline *pl) {
    const uint64_t head[5] = {pl->rep->memory_limit, pl->max_slots, pl->part_nodes, pl->parts,
                              pl->n_batches};
    const kiln_work_seg segs[2] = {
        {head, sizeof head},
        {pl->batch_first, ((size_t)pl->n_batches + 1) * sizeof *pl->batch_first}};
    return kiln_workdir_put(pl->wd, "plan", segs, 2);
}

static kiln_status plan_get(pipeline *pl) {
    kiln_ctx *ctx = pl->ctx;
    const kiln_clusters *cl = &pl->cl;
    kiln_workfile *wf = NULL;
    uint64_t head[5];
    kiln_status st = kiln_workfile_open(pl->wd, "plan", 2, &wf);
    if (st == KILN_OK && kiln_workfile_seg_len(wf, 0) != sizeof head)
        st = kiln_fail(ctx, KILN_E_FORMAT, "work file plan.kw: bad header segment");
    if (st == KILN_OK && (st = kiln_workfile_read(wf, 0, head)) == KILN_OK &&
        (head[1] < cl->max_members || head[1] > cl->offsets[cl->k] + (uint64_t)cl->max_members ||
         head[2] < 1 || head[2] > pl->ix->count || head[4] < 1 || head[4] > cl->k ||
         head[3] != (pl->ix->count + head[2] - 1) / head[2] ||
         kiln_workfile_seg_len(wf, 1) != (head[4] + 1) * sizeof(uint32_t)))
        st = kiln_fail(ctx, KILN_E_FORMAT, "work file plan.kw: does not fit the clusters");
    if (st == KILN_OK && (st = kiln_alloc(ctx, (head[4] + 1) * sizeof *pl->batch_first,
                                          "batch plan", (void **)&pl->batch_first)) == KILN_OK)
        st = kiln_workfile_read(wf, 1, pl->batch_first);
    kiln_workfile_close(wf);
    if (st)
        return st;
    pl->max_slots = (size_t)head[1];
    pl->part_nodes = (uint32_t)head[2];
    pl->parts = (uint32_t)head[3];
    pl->n_batches = (uint32_t)head[4];
    for (uint32_t b = 0; b < pl->n_batches; b++) {
        const uint32_t c0 = pl->batch_first[b], c1 = pl->batch_first[b + 1];
        if (c0 >= c1 || c1 > cl->k || (b == 0 && c0 != 0) ||
            (c1 - c0 > 1 && cl->offsets[c1] - cl->offsets[c0] > pl->max_slots))
            return kiln_fail(ctx, KILN_E_FORMAT, "work file plan.kw: batch %u is malformed", b);
    }
    if (pl->batch_first[pl->n_batches] != cl->k)
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "work file plan.kw: batches do not cover the clusters");
    if (pl->rep->memory_limit < head[0])
        return kiln_fail(ctx, KILN_E_RANGE,
                         "build: the work dir was planned for a memory limit of %.1f MiB; resume "
                         "it with at least that (--memory-limit)",
                         head[0] / 1048576.0);
    pl->rep->batches = pl->n_batches;
    pl->rep->partitions = pl->parts;
    pl->rep->resumed_steps++;
    return KILN_OK;
}

/* ==== The batches (decision 7) ==== */

/* One batch's resident state: the members' vectors and codes, the device's
 * output and the reranked records. */
typedef struct batch_buf {
    float *vec;            /* max_slots * dim */
    kiln_q4_set codes;     /* max_slots */
    uint32_t *identity;    /* 0..max_slots-1: the device's "members" */
    uint32_t *center_of;   /* each slot's cluster */
    uint64_t *offsets;     /* the batch's clusters, slot offsets from 0 */
    kiln_q4_neighbor *out; /* max_slots * K */
    float *proj;           /* max_slots * KILN_HASH_BITS: the slots' hash projections */
    uint32_t *rec;         /* records, partition by partition (decision 9) */
    uint64_t *by_row;      /* (member id << 32 | slot), by member id: the gather's order */
    uint64_t *part_len, *part_fill;
} batch_buf;

static kiln_status batch_buf_new(pipeline *pl, batch_buf *b) {
    kiln_ctx *ctx = pl->ctx;
    const size_t S = pl->max_slots, d = pl->ix->dim;
    const uint32_t words = kiln_q4_words(d);
    memset(b, 0, sizeof *b);
    b->codes.words = words;
    kiln_status st;
    if ((st = kiln_alloc_aligned(ctx, S * d * sizeof(float), "batch vectors", (void **)&b->vec)) ||
        (st = kiln_alloc_aligned(ctx, S * kiln_q4_stride(words) * sizeof(uint64_t), "batch codes",
                                 (void **)&b->codes.planes)) ||
        (st = kiln_alloc(ctx, S * sizeof(uint32_t), "batch norms", (void **)&b->codes.norms)) ||
        (st = kiln_alloc(ctx, S * sizeof(uint32_t), "batch slots", (void **)&b->identity)) ||
        (st = kiln_alloc(ctx, S * sizeof(uint32_t), "batch slot clusters",
                         (void **)&b->center_of)) ||
        (st = kiln_alloc(ctx, ((size_t)pl->cl.max_members + S + 1) * sizeof(uint64_t),
                         "batch offsets", (void **)&b->offsets)) ||
        (st = kiln_alloc(ctx, S * pl->K * sizeof *b->out, "device results", (void **)&b->out)) ||
        (st = kiln_alloc(ctx, S * KILN_HASH_BITS * sizeof(float), "batch projections",
                         (void **)&b->proj)) ||
        (st = kiln_alloc(ctx, S * (2 + 3 * (size_t)pl->K) * sizeof(uint32_t), "batch records",
                         (void **)&b->rec)) ||
        (st = kiln_alloc(ctx, S * sizeof(uint64_t), "batch gather order", (void **)&b->by_row)) ||
        (st = kiln_alloc(ctx, ((size_t)pl->parts + 1) * sizeof(uint64_t), "partition sizes",
                         (void **)&b->part_len)) ||
        (st = kiln_alloc(ctx, ((size_t)pl->parts + 1) * sizeof(uint64_t), "partition sizes",
                         (void **)&b->part_fill)))
        return st;
    for (size_t i = 0; i < S; i++)
        b->identity[i] = (uint32_t)i;
    return KILN_OK;
}

static void batch_buf_free(batch_buf *b) {
    kiln_free_aligned(b->vec);
    kiln_free_aligned(b->codes.planes);
    free(b->codes.norms);
    free(b->identity);
    free(b->center_of);
    free(b->offsets);
    free(b->out);
    free(b->proj);
    free(b->rec);
    free(b->by_row);
    free(b->part_len);
    free(b->part_fill);
    memset(b, 0, sizeof *b);
}

/* The K device candidates of slot s, reranked by exact distance (NaN as
 * +inf, graph/hnsw_internal.h) and pruned locally while their vectors are
 * resident (graph/prune.c decision 4) into res as (distance, global id,
 * hash); returns how many. Candidates are slots of s's own cluster, whose
 * members ascend by id (cluster/assign.c), so ties by slot are ties by id. */
static uint32_t rerank_slot(const pipeline *pl, const batch_buf *b, uint64_t base, uint64_t s,
                            kiln_hcand *res) {
    const struct kiln_index *ix = pl->ix;
    const uint32_t d = ix->dim;
    const float *v = b->vec + s * d;
    kiln_cand sorted[KILN_CL_MAX_K];
    uint32_t m = 0;
    for (uint32_t j = 0; j < pl->K; j++) {
        const uint32_t t = b->out[s * pl->K + j].id;
        if (t == KILN_Q4_NO_ID || t == s)
            continue;
        float dist = ix->dist(v, b->vec + (size_t)t * d, d);
        sorted[m++] = (kiln_cand){dist == dist ? dist : (float)INFINITY, t};
    }
    kiln_cands_sort(sorted, m);
    return kiln_local_links(b->vec, d, ix->dist, b->proj, (uint32_t)s, sorted, m, ix->M, ix->M0,
                            pl->cl.members + base, res);
}

static void batch_name(char *name, size_t cap, uint32_t b) { snprintf(name, cap, "batch-%06u", b); }

/* Runs batch bi: gathers its members' vectors, encodes them, runs the
 * device kNN, reranks every member's candidates exactly, and leaves the
 * records in b->rec, partition q's in segs[q], back to back in partition
 * order (decision 9). */
static kiln_status run_batch(pipeline *pl, batch_buf *b, uint32_t bi, kiln_work_seg *segs) {
    kiln_ctx *ctx = pl->ctx;
    const struct kiln_index *ix = pl->ix;
    const kiln_clusters *cl = &pl->cl;
    const uint32_t c0 = pl->batch_first[bi], c1 = pl->batch_first[bi + 1], d = ix->dim;
    const uint64_t base = cl->offsets[c0], S = cl->offsets[c1] - base;
    for (uint32_t c = c0; c <= c1; c++)
        b->offsets[c - c0] = cl->offsets[c] - base;
    for (uint32_t c = c0; c < c1; c++)
        for (uint64_t s = cl->offsets[c]; s < cl->offsets[c + 1]; s++)
            b->center_of[s - base] = c;
    /* The gather reads the rows in id order (decision 7a). */
    for (uint64_t s = 0; s < S; s++)
        b->by_row[s] = (uint64_t)cl->members[base + s] << 32 | s;
    u64_sort(b->by_row, (ptrdiff_t)S);
#pragma omp parallel for num_threads(pl->threads) schedule(static)
    for (uint64_t j = 0; j < S; j++)
        memcpy(b->vec + (b->by_row[j] & UINT32_MAX) * d,
               kiln_vector(ix, (uint32_t)(b->by_row[j] >> 32)), d * sizeof(float));
    kiln_status st =
        pl->residual
            ? kiln_q4_encode_residuals(ctx, pl->q, b->vec, b->identity, cl->centroids, b->center_of,
                                       S, pl->p->threads, b->codes.planes, b->codes.norms)
            : kiln_q4_encode(ctx, pl->q, b->vec, S, pl->p->threads, b->codes.planes,
                             b->codes.norms);
    if (st)
        return st;
#pragma omp parallel for num_threads(pl->threads) schedule(static, 256)
    for (uint64_t j = 0; j < S; j++)
        kiln_hash_project(pl->planes, d, b->vec + j * d, b->proj + j * KILN_HASH_BITS);
    b->codes.count = S;
    kiln_cl_stats cs = {0};
    st = kiln_cl_cluster_knn(ctx, &b->codes, b->offsets, c1 - c0, b->identity, pl->K, NULL, b->out,
                             &cs);
    pl->rep->device_batches += cs.batches;
    pl->rep->batch_retries += cs.retries;
    if (st)
        return st;

    /* Records [owner, n, n x (dist, id, hash)] in uint32 words, grouped by
     * the owner's partition; slots in order within a partition. */
    const uint32_t P = pl->parts, rec_words = 2 + 3 * pl->K;
    memset(b->part_len, 0, ((size_t)P + 1) * sizeof *b->part_len);
    for (uint64_t s = 0; s < S; s++)
        b->part_len[cl->members[base + s] / pl->part_nodes + 1]++;
    for (uint32_t q = 0; q < P; q++)
        b->part_len[q + 1] += b->part_len[q]; /* first slot index of each partition */
    memcpy(b->part_fill, b->part_len, ((size_t)P + 1) * sizeof *b->part_fill);
    /* Rerank into fixed-width records in partition order, in parallel; the
     * position of each slot is fixed first, so the bytes do not depend on
     * the threads. */
    uint64_t *pos = NULL;
    if ((st = kiln_alloc(ctx, (S + 1) * sizeof *pos, "batch record positions", (void **)&pos)))
        return st;
    for (uint64_t s = 0; s < S; s++)
        pos[s] = b->part_fill[cl->members[base + s] / pl->part_nodes]++;
#pragma omp parallel for num_threads(pl->threads) schedule(dynamic, 64)
    for (uint64_t s = 0; s < S; s++) {
        uint32_t *r = b->rec + pos[s] * rec_words;
        r[0] = cl->members[base + s];
        r[1] = rerank_slot(pl, b, base, s, (kiln_hcand *)(r + 2));
    }
    free(pos);
    /* Compact each record to its length, partition by partition. */
    uint64_t w = 0;
    for (uint32_t q = 0; q < P; q++) {
        const uint64_t w0 = w;
        for (uint64_t i = b->part_len[q]; i < b->part_len[q + 1]; i++) {
            const uint32_t *r = b->rec + i * rec_words;
            const uint64_t len = 2 + 3 * (uint64_t)r[1];
            memmove(b->rec + w, r, len * sizeof(uint32_t));
            w += len;
        }
        segs[q] = (kiln_work_seg){b->rec + w0, (w - w0) * sizeof(uint32_t)};
    }
    return KILN_OK;
}

/* ==== The streaming passes (decision 9) ==== */

/* The streaming passes keep their buffers from partition to partition
 * (kiln_grow_buf): at 4M x 128 freeing and allocating per partition was
 * measured at 39.0 -> 60.1 s of merge+prune when partitions grew from 26K
 * to 250K nodes, the freed pages going back to the host before the next
 * partition took them. */
/* The buffers of both passes: the forward pass's records and then its
 * sorted edges, its candidates, its edges; the reverse pass's edges, its
 * incoming lists, their scratch. */
typedef struct {
    kiln_grow_buf a, b, c;
} pass_bufs;

static void pass_bufs_free(pass_bufs *pb) {
    kiln_grow_buf_free(&pb->a);
    kiln_grow_buf_free(&pb->b);
    kiln_grow_buf_free(&pb->c);
}

/* Reads segment q of every work file named by name_of(0..count) into buf
 * (*len bytes). */
typedef void (*name_fn)(char *name, size_t cap, uint32_t i);

static kiln_status gather_segment(pipeline *pl, name_fn name_of, uint32_t count, uint32_t q,
                                  kiln_grow_buf *buf, uint64_t *len) {
    kiln_ctx *ctx = pl->ctx;
    *len = 0;
    kiln_workfile **wf = NULL;
    kiln_status st = kiln_calloc(ctx, ((size_t)count + 1) * sizeof *wf, "work files", (void **)&wf);
    uint64_t total = 0;
    for (uint32_t i = 0; i < count && st == KILN_OK; i++) {
        char name[32];
        name_of(name, sizeof name, i);
        if ((st = kiln_workfile_open(pl->wd, name, pl->parts, &wf[i])) == KILN_OK)
            total += kiln_workfile_seg_len(wf[i], q);
    }
    if (st == KILN_OK &&
        (st = kiln_grow_buf_fit(ctx, buf, (size_t)total + 1, "partition records")) == KILN_OK) {
        uint64_t at = 0;
        for (uint32_t i = 0; i < count && st == KILN_OK; i++) {
            st = kiln_workfile_read(wf[i], q, (uint8_t *)buf->p + at);
            at += kiln_workfile_seg_len(wf[i], q);
        }
        *len = total;
    }
    for (uint32_t i = 0; wf && i < count; i++)
        kiln_workfile_close(wf[i]);
    free(wf);
    return st;
}

static void batch_name_fn(char *name, size_t cap, uint32_t i) { batch_name(name, cap, i); }

static void rev_name(char *name, size_t cap, uint32_t i) { snprintf(name, cap, "rev-%05u", i); }

/* Nodes [first, first + count) of partition q. */
static void part_range(const pipeline *pl, uint32_t q, uint32_t *first, uint32_t *count) {
    const uint64_t a = (uint64_t)q * pl->part_nodes, e = a + pl->part_nodes;
    *first = (uint32_t)a;
    *count = (uint32_t)((e < pl->ix->count ? e : pl->ix->count) - a);
}

/* The forward pass over partition q: its nodes' records from every batch,
 * grouped by node (in batch order), then kiln_l0_forward; the reverse edges
 * are left in pb->a, those into partition t in segs[t], back to back in
 * target order (for work file rev-q). */
static kiln_status forward_part(pipeline *pl, pass_bufs *pb, uint32_t q, kiln_work_seg *segs) {
    kiln_ctx *ctx = pl->ctx;
    uint32_t first, count;
    part_range(pl, q, &first, &count);
    uint64_t raw_len = 0;
    uint64_t *off = NULL;
    kiln_hcand *cands = NULL;
    kiln_edge *rev = NULL, *sorted = NULL;
    uint64_t *at = NULL;
    kiln_status st =
        gather_segment(pl, batch_name_fn, pl->n_batches + pl->seed_files, q, &pb->a, &raw_len);
    const uint8_t *raw = pb->a.p;
    if (st == KILN_OK && raw_len % sizeof(uint32_t))
        st = kiln_fail(ctx, KILN_E_FORMAT, "batch records of partition %u are cut short", q);
    if (st ||
        (st = kiln_calloc(ctx, ((size_t)count + 2) * sizeof *off, "node offsets", (void **)&off)))
        goto done;
    /* Pass 1: check every record and count candidates per node. A record
     * holds at most min(K, M0) links (kiln_local_links). */
    const uint32_t rec_max = pl->K < pl->ix->M0 ? pl->K : pl->ix->M0;
    const uint32_t *w = (const uint32_t *)raw;
    const uint64_t words = raw_len / sizeof(uint32_t);
    uint64_t total = 0;
    for (uint64_t i = 0, len; i < words; i += len) {
        if ((len = kiln_rec_len_batch(&rec_max, w + i, words - i)) == 0 || w[i] < first ||
            w[i] - first >= count) {
            st = kiln_fail(ctx, KILN_E_FORMAT,
                           "batch records of partition %u: record at word %llu is malformed", q,
                           (unsigned long long)i);
            goto done;
        }
        off[w[i] - first + 1] += w[i + 1];
        total += w[i + 1];
    }
    for (uint32_t i = 0; i < count; i++)
        off[i + 1] += off[i];
    if ((st =
             kiln_grow_buf_fit(ctx, &pb->b, (total + 1) * sizeof *cands, "partition candidates")) ||
        (st = kiln_alloc(ctx, ((size_t)count + 1) * sizeof *at, "node fill", (void **)&at)))
        goto done;
    cands = pb->b.p;
    memcpy(at, off, (size_t)count * sizeof *at);
    for (uint64_t i = 0; i < words;) {
        const uint32_t node = w[i] - first, n = w[i + 1];
        const kiln_hcand *c = (const kiln_hcand *)(w + i + 2);
        for (uint32_t j = 0; j < n; j++) {
            kiln_hcand x = c[j];
            if (x.id >= pl->ix->count || x.dist != x.dist || x.hash > KILN_HASH_MASK) {
                st = kiln_fail(ctx, KILN_E_FORMAT,
                               "batch records of partition %u: candidate (id %u, hash %#x) is "
                               "out of range or its distance is NaN",
                               q, x.id, x.hash);
                goto done;
            }
            cands[at[node]++] = x;
        }
        i += 2 + 3 * (uint64_t)n;
    }
    pl->candidates += total;
    raw = NULL; /* pb->a holds the sorted edges next */
    free(at);
    at = NULL;
    const kiln_l0_block blk = {first, count, off, cands};
    uint64_t n_rev = 0;
    if ((st = kiln_grow_buf_fit(ctx, &pb->c, (2 * (size_t)count * pl->ix->M0 + 1) * sizeof *rev,
                                "reverse edges")))
        goto done;
    rev = pb->c.p;
    if ((st = kiln_l0_forward(pl->ix, &blk, pl->threads, rev, &n_rev)))
        goto done;
    /* Group by target partition (counting sort, stable). */
    const uint32_t P = pl->parts;
    if ((st = kiln_calloc(ctx, ((size_t)P + 1) * sizeof *at, "partition sizes", (void **)&at)) ||
        (st = kiln_grow_buf_fit(ctx, &pb->a, (n_rev + 1) * sizeof *sorted, "sorted reverse edges")))
        goto done;
    sorted = pb->a.p;
    for (uint64_t e = 0; e < n_rev; e++)
        at[rev[e].to / pl->part_nodes + 1]++;
    for (uint32_t t = 0; t < P; t++)
        at[t + 1] += at[t];
    for (uint32_t t = 0; t < P; t++)
        segs[t] = (kiln_work_seg){sorted + at[t], (at[t + 1] - at[t]) * sizeof *sorted};
    for (uint64_t e = 0; e < n_rev; e++)
        sorted[at[rev[e].to / pl->part_nodes]++] = rev[e];
done:
    free(at);
    free(off);
    return st;
}

/* The reverse pass over partition q: the edges into its nodes from every
 * rev file, grouped by target in file order, then kiln_l0_reverse. */
static kiln_status reverse_part(pipeline *pl, pass_bufs *pb, uint32_t q) {
    kiln_ctx *ctx = pl->ctx;
    uint32_t first, count;
    part_range(pl, q, &first, &count);
    uint64_t raw_len = 0, *off = NULL;
    kiln_status st = gather_segment(pl, rev_name, pl->parts, q, &pb->a, &raw_len);
    const uint8_t *raw = pb->a.p;
    if (st == KILN_OK && raw_len % sizeof(kiln_edge))
        st = kiln_fail(ctx, KILN_E_FORMAT, "reverse edges of partition %u are cut short", q);
    const kiln_edge *e = (const kiln_edge *)raw;
    const uint64_t n = raw_len / sizeof(kiln_edge);
    if (st ||
        (st = kiln_calloc(ctx, ((size_t)count + 2) * sizeof *off, "node offsets", (void **)&off)))
        goto done;
    for (uint64_t i = 0; i < n; i++) {
        if (e[i].to < first || e[i].to - first >= count || e[i].from >= pl->ix->count ||
            (e[i].hash & ~KILN_EDGE_OWN) > KILN_HASH_MASK || e[i].dist != e[i].dist) {
            st = kiln_fail(ctx, KILN_E_FORMAT,
                           "reverse edges of partition %u: edge %llu is out of range", q,
                           (unsigned long long)i);
            goto done;
        }
    }
    if ((st = kiln_grow_buf_fit(ctx, &pb->b, (n + 1) * sizeof(kiln_hcand), "incoming edges")) ||
        (st = kiln_grow_buf_fit(ctx, &pb->c, (n + 1) * sizeof(kiln_hcand), "incoming scratch")))
        goto done;
    kiln_hcand *in = pb->b.p, *scratch = pb->c.p;
    kiln_edges_by_target(e, n, first, count, off, in);
    const kiln_l0_block blk = {first, count, off, in};
    st = kiln_l0_reverse(pl->ix, &blk, scratch, pl->threads);
done:
    free(off);
    return st;
}

/* ==== Steps ==== */

bool kiln_build_device_available(void) {
#ifdef KILN_HAVE_OPENCL
    return true;
#else
    return false;
#endif
}

/* What the build holds whatever the plan: the index and the clusters (k
 * clusters, max_members the largest). */
static uint64_t held_bytes(const pipeline *pl, uint64_t k, uint64_t slots) {
    return kiln_index_memory(pl->ix) + slots * sizeof(uint32_t) + (k + 1) * sizeof(uint64_t) +
           k * pl->ix->dim * sizeof(float);
}

/* Refuses a budget the input cannot fit in: the index and clusters, one
 * batch of the largest cluster, one partition of 256 nodes. Before
 * clustering (up front) with the cluster cap as the largest size, after it
 * with the real one. */
static kiln_status check_budget(pipeline *pl, uint64_t k, uint64_t slots, uint64_t max_members,
                                uint64_t sample_need, uint64_t *room) {
    const uint64_t limit = kiln_build_budget(pl->p);
    pl->rep->memory_limit = limit;
    /* What is resident now (the index, the OpenCL runtime, anything of the
     * caller's) counts as well, plus the clusters when not yet made. */
    uint64_t held = held_bytes(pl, k, slots);
    const uint64_t now = kiln_rss_anon() + (pl->cl.offsets ? 0 : held - kiln_index_memory(pl->ix));
    if (now > held)
        held = now;
    const uint64_t min_batch = max_members * slot_bytes(pl);
    const uint64_t min_part = 256 * (uint64_t)node_bytes(pl);
    *room = limit > held ? limit - held : 0;
    const uint64_t need = held + min_batch + min_part;
    if (limit && (*room < min_batch + min_part || sample_need > limit))
        return kiln_fail(
            pl->ctx, KILN_E_RANGE,
            "build: a memory limit of %.1f MiB%s is too small for this input: it "
            "needs at least %.1f MiB (%.1f MiB already resident with the index and clusters, %.1f "
            "MiB for the largest cluster's batch, %.1f MiB for the streaming "
            "passes; %.1f MiB while k-means holds its sample)",
            limit / 1048576.0, pl->p->memory_limit ? "" : " (the default, half of physical memory)",
            (need > sample_need ? need : sample_need) / 1048576.0, held / 1048576.0,
            min_batch / 1048576.0, min_part / 1048576.0, sample_need / 1048576.0);
    return KILN_OK;
}

/* Step 1: k-means with replicas under a size cap, or the clusters of the
 * work dir. */
/* The k-means parameters of step 1, and the budget checked against them up
 * front. */
static kiln_status kmeans_setup(pipeline *pl, kiln_kmeans_params *out) {
    const kiln_build_params *p = pl->p;
    const size_t n = pl->ix->count;
    kiln_kmeans_params kp;
    kiln_kmeans_params_init(&kp);
    kp.clusters = p->clusters;
    kp.target_size = p->cluster_size ? p->cluster_size : DEVICE_TARGET_CLUSTER;
    kp.replicas = pl->replicas; /* kiln_build_device chose them */
    kp.extra = pl->extra;
    kp.extra_ratio = DEVICE_BOUNDARY_RATIO;
    kp.extra_share = (float)DEVICE_BOUNDARY_SHARE;
    kp.seed = p->seed;
    kp.threads = p->threads;
    /* With boundary extras, k (kiln_kmeans_k) and the fair share count the
     * placements expected (DEVICE_BOUNDARY_SHARE), so clusters stay near
     * their target. */
    const double expected = pl->replicas + (double)pl->extra * DEVICE_BOUNDARY_SHARE;
    uint32_t k;
    kiln_status st = kiln_kmeans_k(pl->ctx, n, &kp, &k);
    if (st)
        return st;
    uint64_t sample = (uint64_t)k * DEVICE_KMEANS_PER_CENTROID;
    kp.sample = (uint32_t)(sample < n ? sample : n);
    uint64_t fair = (uint64_t)ceil((double)n * expected / k);
    uint64_t cap = fair * DEVICE_CAP_FACTOR;
    kp.max_size = (uint32_t)(cap < n ? cap : n);
    /* Up front: the budget against the cap, and against the k-means sample
     * (a copy of its rows, and a quarter more for the per-cell rows and
     * assignments, cluster/hkmeans.c) on top of what is resident now. */
    const uint64_t sample_need =
        (uint64_t)kp.sample * pl->ix->dim * sizeof(float) / 4 * 5 + kiln_rss_anon();
    uint64_t room;
    *out = kp;
    return check_budget(pl, k, (uint64_t)n * (kp.replicas + kp.extra), kp.max_size, sample_need,
                        &room);
}

static kiln_status step_clusters(pipeline *pl, const kiln_device_info *info) {
    if (kiln_workdir_has(pl->wd, "clusters")) {
        pl->rep->resumed_steps++;
        return clusters_get(pl);
    }
    const kiln_build_params *p = pl->p;
    const size_t n = pl->ix->count;
    kiln_kmeans_params kp;
    kiln_status st = kmeans_setup(pl, &kp);
    if (st)
        return st;
    nearest_user nu = {.cpu = {.threads = p->threads}, .on_device = info->type != KILN_DEVICE_CPU};
    const kiln_nearest_backend backend = {nearest_backend, &nu};
    if ((st = kiln_clusters_build(pl->ctx, (kiln_rows){pl->ix->vectors, n, pl->ix->dim}, &kp,
                                  &backend, &pl->cl)))
        return st;
    return clusters_put(pl);
}

/* A residual training sample: up to Q4_SAMPLE slots spread evenly over all
 * slots of all clusters (deterministic), each x_v - centroid_c. The
 * quantizer keeps two percentiles per dimension (0.1% and 99.9%, from two
 * small heaps per dimension in one pass: host/quant4.c), which 16K rows pin
 * to within a few hundredths of a percent; the sample's cost grows with its
 * rows (64K rows cost fmnist60k 0.40 s when it was chosen). IP trains on
 * the vectors themselves (global codes, decision 6; kiln_q4_train samples). */
#define Q4_SAMPLE 16384
static kiln_status step_quantizer(pipeline *pl) {
    const struct kiln_index *ix = pl->ix;
    if (!pl->residual)
        return kiln_q4_train(pl->ctx, ix->vectors, ix->count, ix->dim, ix->metric, pl->p->seed,
                             pl->p->threads, &pl->q);
    const kiln_clusters *cl = &pl->cl;
    const uint64_t slots = cl->offsets[cl->k];
    const size_t m = slots < Q4_SAMPLE ? (size_t)slots : Q4_SAMPLE;
    float *rows = NULL;
    kiln_status st =
        kiln_alloc(pl->ctx, m * ix->dim * sizeof(float), "quantizer sample", (void **)&rows);
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
    st = kiln_q4_train(pl->ctx, rows, m, ix->dim, KILN_METRIC_L2, pl->p->seed, pl->p->threads,
                       &pl->q);
    free(rows);
    return st;
}

/* Refuses a work dir without room for this rank's files: the batch records
 * and the reverse edges (across ranks, its partitions' share of them), the
 * level 0 (on rank 0), with a margin. */
static kiln_status check_disk(pipeline *pl) {
    const kiln_clusters *cl = &pl->cl;
    const struct kiln_index *ix = pl->ix;
    const uint64_t R = (uint64_t)pl->ranks;
    const uint64_t need = ((uint64_t)cl->offsets[cl->k] * (2 + 3 * (uint64_t)pl->K) * 4 / R +
                           2 * ix->count * (uint64_t)ix->M0 * sizeof(kiln_edge) / R +
                           (pl->rank == 0 ? ix->count * kiln_links0_stride(ix) * 4 : 0)) /
                              10 * 11 +
                          ((uint64_t)pl->parts * pl->n_batches + pl->parts) * 4096;
    const uint64_t free_bytes = kiln_workdir_free_bytes(pl->wd);
    if (free_bytes != UINT64_MAX && free_bytes < need)
        return kiln_fail(pl->ctx, KILN_E_IO,
                         "build: work dir %s has %.1f MiB free, and this build needs up to "
                         "%.1f MiB there (choose another --work-dir)",
                         kiln_workdir_path(pl->wd), free_bytes / 1048576.0, need / 1048576.0);
    return KILN_OK;
}

/* Decision 8: batch and partition sizes from the memory budget. */
static kiln_status step_plan(pipeline *pl) {
    kiln_ctx *ctx = pl->ctx;
    const kiln_clusters *cl = &pl->cl;
    const struct kiln_index *ix = pl->ix;
    const uint64_t min_batch = (uint64_t)cl->max_members * slot_bytes(pl);
    uint64_t room;
    kiln_status st = check_budget(pl, cl->k, cl->offsets[cl->k], cl->max_members, 0, &room);
    if (st)
        return st;
    const uint64_t limit = pl->rep->memory_limit;
    if (kiln_workdir_has(pl->wd, "plan")) /* across ranks every rank checks its own disk */
        return (st = plan_get(pl)) || pl->ranks == 1 ? st : check_disk(pl);
    /* The bytes of decision 8, or more where the work would make more than
     * DEVICE_AIM_BATCHES batches or DEVICE_AIM_PARTS partitions of them;
     * with a limit, within half the room for the batch and the rest for
     * the partition. */
    const uint64_t all_slots = (uint64_t)cl->offsets[cl->k] * slot_bytes(pl),
                   all_nodes = ix->count * (uint64_t)node_bytes(pl);
    uint64_t batch_bytes = DEVICE_GROUP_BYTES, part_bytes = DEVICE_PART_BYTES;
    if (batch_bytes < all_slots / DEVICE_AIM_BATCHES)
        batch_bytes = all_slots / DEVICE_AIM_BATCHES;
    if (part_bytes < all_nodes / DEVICE_AIM_PARTS)
        part_bytes = all_nodes / DEVICE_AIM_PARTS;
    /* Across ranks, at least two batches and one partition for each. */
    if (pl->ranks > 1 && batch_bytes > all_slots / (2 * (uint64_t)pl->ranks))
        batch_bytes = all_slots / (2 * (uint64_t)pl->ranks);
    if (pl->ranks > 1 && part_bytes > all_nodes / (uint64_t)pl->ranks)
        part_bytes = all_nodes / (uint64_t)pl->ranks;
    if (limit) {
        if (batch_bytes > room / 2)
            batch_bytes = room / 2 > min_batch ? room / 2 : min_batch;
        if (part_bytes > room - batch_bytes)
            part_bytes = room - batch_bytes;
    }
    size_t S = (size_t)(batch_bytes / slot_bytes(pl));
    if (S > cl->offsets[cl->k])
        S = (size_t)cl->offsets[cl->k];
    if (S < cl->max_members)
        S = cl->max_members;
    pl->max_slots = S;
    uint64_t nodes = part_bytes / node_bytes(pl);
    if (nodes > ix->count)
        nodes = ix->count;
    if (nodes < 1)
        nodes = 1;
    pl->part_nodes = (uint32_t)nodes;
    pl->parts = (uint32_t)((ix->count + nodes - 1) / nodes);
    /* Batches: consecutive clusters while their slots fit. */
    st = kiln_alloc(ctx, ((size_t)cl->k + 2) * sizeof *pl->batch_first, "batch plan",
                    (void **)&pl->batch_first);
    if (st)
        return st;
    uint32_t nb = 0, c0 = 0;
    while (c0 < cl->k) {
        uint32_t c1 = c0 + 1;
        while (c1 < cl->k && cl->offsets[c1 + 1] - cl->offsets[c0] <= S)
            c1++;
        pl->batch_first[nb++] = c0;
        c0 = c1;
    }
    pl->batch_first[nb] = cl->k;
    pl->n_batches = nb;
    if ((st = check_disk(pl)))
        return st;
    pl->rep->batches = nb;
    pl->rep->partitions = pl->parts;
    return plan_put(pl);
}

/* Step 4: the hierarchy (levels >= 1), or the work dir's. */
static kiln_status step_hierarchy(pipeline *pl) {
    struct kiln_index *ix = pl->ix;
    const kiln_build_params *p = pl->p;
    if (kiln_workdir_has(pl->wd, "hierarchy")) {
        pl->rep->resumed_steps++;
        return hierarchy_get(pl);
    }
    uint64_t hier_ef =
        ((uint64_t)p->ef_construction * DEVICE_HIERARCHY_EF + DEVICE_HIERARCHY_OF - 1) /
        DEVICE_HIERARCHY_OF;
    if (hier_ef < p->M) /* a beam narrower than a list could not fill it */
        hier_ef = p->M;
    /* Its compact copy goes to the work dir when the budget has no room
     * for it beside what is resident (graph/hnsw_insert.c decision 6). */
    const uint64_t limit = kiln_build_budget(p);
    kiln_status st;
    if (ix->count < KILN_UPPER_COMPACT_MIN)
        st = kiln_hnsw_insert_levels(ix, (uint32_t)hier_ef, pl->threads, 1);
    else
        st = kiln_hnsw_insert_upper(
            ix, (uint32_t)hier_ef, pl->threads,
            limit && kiln_rss_anon() + kiln_hnsw_upper_bytes(ix, pl->threads) > limit
                ? kiln_workdir_path(pl->wd)
                : NULL);
    return st ? st : hierarchy_put(pl);
}

/* ==== Across ranks (decision 11) ==== */

/* Partitions [part_lo(pl, r), part_lo(pl, r + 1)) are rank r's. */
static uint32_t part_lo(const pipeline *pl, int r) {
    return (uint32_t)((uint64_t)pl->parts * (uint64_t)r / (uint64_t)pl->ranks);
}

/* The most partitions any rank owns: the rounds of the streaming passes. */
static uint32_t part_rounds(const pipeline *pl) {
    uint32_t most = 0;
    for (int r = 0; r < pl->ranks; r++)
        if (part_lo(pl, r + 1) - part_lo(pl, r) > most)
            most = part_lo(pl, r + 1) - part_lo(pl, r);
    return most;
}

/* One all-to-all's buffers (kiln_dist_exchange), an entry per rank. */
typedef struct xchg {
    const void **send;
    uint64_t *send_len;
    void **recv;
    uint64_t *recv_len;
} xchg;

static kiln_status xchg_new(pipeline *pl, xchg *x) {
    const size_t R = (size_t)pl->ranks;
    memset(x, 0, sizeof *x);
    kiln_status st;
    if ((st = kiln_calloc(pl->ctx, R * sizeof *x->send, "exchange", (void **)&x->send)) ||
        (st = kiln_calloc(pl->ctx, R * sizeof *x->send_len, "exchange", (void **)&x->send_len)) ||
        (st = kiln_calloc(pl->ctx, R * sizeof *x->recv, "exchange", (void **)&x->recv)))
        return st;
    return kiln_calloc(pl->ctx, R * sizeof *x->recv_len, "exchange", (void **)&x->recv_len);
}

/* The exchange buffers of a step across ranks and its received segments
 * (a partition each), when st, the rank's status so far, is KILN_OK; an
 * empty x otherwise, which xchg_free takes. */
static kiln_status xchg_begin(pipeline *pl, xchg *x, kiln_work_seg **in, kiln_status st) {
    memset(x, 0, sizeof *x);
    if (st == KILN_OK)
        st = xchg_new(pl, x);
    if (st == KILN_OK)
        st = kiln_alloc(pl->ctx, (size_t)pl->parts * sizeof **in, "received segments", (void **)in);
    return st;
}

/* Frees what the last exchange brought and clears what to send. */
static void xchg_reset(const pipeline *pl, xchg *x) {
    for (int r = 0; x->recv_len && r < pl->ranks; r++) {
        free(x->recv[r]);
        x->recv[r] = NULL;
        x->recv_len[r] = 0;
        x->send[r] = NULL;
        x->send_len[r] = 0;
    }
}

static void xchg_free(const pipeline *pl, xchg *x) {
    xchg_reset(pl, x);
    free(x->send);
    free(x->send_len);
    free(x->recv);
    free(x->recv_len);
    memset(x, 0, sizeof *x);
}

/* The exchange itself, counting what this rank sends the others. */
static kiln_status xchg_run(pipeline *pl, xchg *x) {
    for (int r = 0; r < pl->ranks; r++)
        if (r != pl->rank)
            pl->bytes_sent += x->send_len[r];
    return kiln_dist_exchange(pl->ctx, x->send, x->send_len, x->recv, x->recv_len);
}

/* Sends segs [part_lo(s), part_lo(s + 1)), one contiguous run of bytes, to
 * each rank s (decision 11). */
static void xchg_by_owner(const pipeline *pl, xchg *x, const kiln_work_seg *segs) {
    for (int s = 0; s < pl->ranks; s++) {
        const uint32_t lo = part_lo(pl, s), hi = part_lo(pl, s + 1);
        uint64_t len = 0;
        for (uint32_t q = lo; q < hi; q++)
            len += segs[q].len;
        x->send[s] = len ? segs[lo].data : NULL;
        x->send_len[s] = len;
    }
}

/* Work file `name` (n_segs segments) of rank `from`, written into every
 * other rank's work dir: a broadcast of its segments' lengths (uint64
 * each), then their bytes. The receiver checks the lengths against the
 * message; the file's contents get the usual checks when it is read back.
 * The report counts R - 1 copies at the root, however MPI relays them. */
static kiln_status share_workfile(pipeline *pl, int from, const char *name, uint32_t n_segs) {
    kiln_ctx *ctx = pl->ctx;
    uint8_t *buf = NULL;
    const uint64_t head = (uint64_t)n_segs * sizeof(uint64_t);
    uint64_t len = head;
    kiln_status st = KILN_OK;
    if (pl->rank == from) {
        kiln_workfile *wf = NULL;
        st = kiln_workfile_open(pl->wd, name, n_segs, &wf);
        for (uint32_t i = 0; st == KILN_OK && i < n_segs; i++)
            len += kiln_workfile_seg_len(wf, i);
        if (st == KILN_OK)
            st = kiln_alloc(ctx, (size_t)len, "shared work file", (void **)&buf);
        for (uint64_t i = 0, at = head; st == KILN_OK && i < n_segs; i++) {
            const uint64_t l = kiln_workfile_seg_len(wf, (uint32_t)i);
            memcpy(buf + i * sizeof l, &l, sizeof l);
            st = kiln_workfile_read(wf, (uint32_t)i, buf + at);
            at += l;
        }
        kiln_workfile_close(wf);
    }
    void *msg = buf;
    uint64_t msg_len = len;
    if ((st = kiln_dist_agree(ctx, st)) == KILN_OK &&
        (st = kiln_dist_bcast(ctx, from, &msg, &msg_len)) == KILN_OK && pl->rank == from)
        pl->bytes_sent += len * (uint64_t)(pl->ranks - 1);
    kiln_work_seg *segs = NULL;
    if (st == KILN_OK && pl->rank != from &&
        (st = kiln_calloc(ctx, (size_t)n_segs * sizeof *segs, "shared segments", (void **)&segs)) ==
            KILN_OK) {
        char what[96];
        snprintf(what, sizeof what, "rank %d: work file %s sent by rank %d", pl->rank, name, from);
        if ((st = kiln_work_segs_unpack(ctx, msg, msg_len, n_segs, segs, what)) == KILN_OK)
            st = kiln_workdir_put(pl->wd, name, segs, n_segs);
    }
    free(segs);
    if (pl->rank != from)
        free(msg);
    free(buf);
    return kiln_dist_agree(ctx, st);
}

/* Cuts what rank `from` sent this rank (records of rec_len, each headed
 * by its node, or the target, in this rank's partitions) into segs by
 * partition, checking every record against the message
 * (kiln_work_segs_split). */
static kiln_status split_received(const pipeline *pl, const char *what, int from, const void *in,
                                  uint64_t len, kiln_rec_len_fn rec_len, const void *user,
                                  kiln_work_seg *segs) {
    const uint32_t q0 = part_lo(pl, pl->rank), q1 = part_lo(pl, pl->rank + 1);
    const uint64_t lo = (uint64_t)q0 * pl->part_nodes,
                   hi = (uint64_t)q1 * pl->part_nodes < pl->ix->count
                            ? (uint64_t)q1 * pl->part_nodes
                            : pl->ix->count;
    char where[128];
    snprintf(where, sizeof where, "rank %d: %s from rank %d", pl->rank, what, from);
    return kiln_work_segs_split(pl->ctx, in, len, lo, hi > lo ? hi : lo, pl->part_nodes, pl->parts,
                                rec_len, user, segs, where);
}

/* Checks n level-0 lists at rows (nodes first..): counts and ids in range;
 * what names the source for the message. */
static kiln_status links0_check(const pipeline *pl, const uint32_t *rows, uint32_t first,
                                uint32_t n, const char *what) {
    const struct kiln_index *ix = pl->ix;
    const size_t stride = kiln_links0_stride(ix);
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t *b = rows + (size_t)i * stride;
        bool ok = b[0] <= ix->M0;
        for (uint32_t j = 0; ok && j < b[0]; j++)
            ok = b[1 + j] < ix->count;
        if (!ok)
            return kiln_fail(pl->ctx, KILN_E_FORMAT, "%s: node %u has a link out of range", what,
                             first + i);
    }
    return KILN_OK;
}

/* ==== Steps 3 and 5 ==== */

/* Step 3 in one process: every batch not already in the work dir
 * (decision 7). */
static kiln_status batches_local(pipeline *pl, batch_buf *b, kiln_work_seg *segs,
                                 kiln_progress_bar *bar) {
    kiln_status st = KILN_OK;
    for (uint32_t i = 0; i < pl->n_batches && st == KILN_OK; i++) {
        char name[32];
        batch_name(name, sizeof name, i);
        if (kiln_workdir_has(pl->wd, name)) {
            pl->rep->resumed_batches++;
        } else if ((st = run_batch(pl, b, i, segs)) == KILN_OK) {
            st = kiln_workdir_put(pl->wd, name, segs, pl->parts);
            pl->rep->peak_rss_anon = kiln_peak_rss_anon();
            kiln_fault_point("batch");
        }
        kiln_progress_add(bar, 1);
    }
    return st;
}

/* Step 3 across ranks (decision 11): batch t * R + r on rank r in round t,
 * its records to their partitions' owners. Collective: st is this rank's
 * status so far. */
static kiln_status batches_ranks(pipeline *pl, batch_buf *b, kiln_work_seg *segs,
                                 kiln_progress_bar *bar, kiln_status st) {
    kiln_ctx *ctx = pl->ctx;
    const uint32_t nb = pl->n_batches, R = (uint32_t)pl->ranks;
    const uint32_t rec_max = pl->K < pl->ix->M0 ? pl->K : pl->ix->M0; /* kiln_local_links */
    uint64_t *held = NULL;
    kiln_work_seg *in = NULL;
    xchg x;
    st = xchg_begin(pl, &x, &in, st);
    if (st == KILN_OK)
        st = kiln_calloc(ctx, (size_t)nb * sizeof *held, "batches held", (void **)&held);
    for (uint32_t i = 0; st == KILN_OK && i < nb; i++) {
        char name[32];
        batch_name(name, sizeof name, i);
        held[i] = kiln_workdir_has(pl->wd, name);
    }
    if ((st = kiln_dist_agree(ctx, st)) == KILN_OK)
        st = kiln_dist_sum_u64(ctx, held, nb);
    for (uint64_t b0 = 0; st == KILN_OK && b0 < nb; b0 += R) {
        const uint32_t in_round = nb - b0 < R ? (uint32_t)(nb - b0) : R;
        const uint64_t mine = b0 + (uint64_t)pl->rank;
        bool todo = false;
        for (uint32_t r = 0; r < in_round; r++)
            todo |= held[b0 + r] != R;
        const bool run = mine < nb && held[mine] != R;
        if (mine < nb && !run)
            pl->rep->resumed_batches++;
        if (todo) {
            xchg_reset(pl, &x);
            st = kiln_dist_agree(ctx, run ? run_batch(pl, b, (uint32_t)mine, segs) : KILN_OK);
            if (st == KILN_OK && run)
                xchg_by_owner(pl, &x, segs);
            if (st == KILN_OK)
                st = xchg_run(pl, &x);
            for (uint32_t r = 0; st == KILN_OK && r < in_round; r++) {
                const uint32_t bi = (uint32_t)b0 + r;
                if (held[bi] == R)
                    continue;
                char name[48];
                snprintf(name, sizeof name, "the records of batch %u", bi);
                if ((st = split_received(pl, name, (int)r, x.recv[r], x.recv_len[r],
                                         kiln_rec_len_batch, &rec_max, in)) == KILN_OK) {
                    batch_name(name, sizeof name, bi);
                    st = kiln_workdir_put(pl->wd, name, in, pl->parts);
                }
            }
            xchg_reset(pl, &x);
            st = kiln_dist_agree(ctx, st);
            pl->rep->peak_rss_anon = kiln_peak_rss_anon();
            if (st == KILN_OK && run)
                kiln_fault_point("batch");
        }
        kiln_progress_add(bar, in_round);
    }
    xchg_free(pl, &x);
    free(held);
    free(in);
    return st;
}

/* Step 3: the batches (decision 7). */
static kiln_status step_batches(pipeline *pl) {
    batch_buf b = {0};
    kiln_work_seg *segs = NULL;
    kiln_status st = kiln_hash_planes(pl->ctx, pl->ix->dim, pl->ix->seed, &pl->planes);
    if (st == KILN_OK)
        st = batch_buf_new(pl, &b);
    if (st == KILN_OK)
        st =
            kiln_alloc(pl->ctx, (size_t)pl->parts * sizeof *segs, "batch segments", (void **)&segs);
    kiln_progress_bar bar;
    kiln_progress_begin(&bar, pl->ctx, "cluster knn", pl->n_batches);
    if (pl->ranks > 1)
        st = batches_ranks(pl, &b, segs, &bar, st);
    else if (st == KILN_OK)
        st = batches_local(pl, &b, segs, &bar);
    kiln_progress_end(&bar);
    free(segs);
    batch_buf_free(&b);
    kiln_cl_cluster_knn_release(pl->ctx);
    return st;
}

/* The seed of a device add (decision 12): node i < seeded keeps its
 * level-0 list as candidates, as a record (owner, n, n x (distance, id,
 * hash)) like a batch's, nearest first and at most min(K, M0) long, so the
 * forward pass takes them as one more cluster's. Partition q's records
 * are batch file n_batches + q, the only one of its segments that is not
 * empty: one partition's records are held at a time. */
static kiln_status step_seed(pipeline *pl) {
    kiln_ctx *ctx = pl->ctx;
    const struct kiln_index *ix = pl->ix;
    const uint64_t n = pl->seeded;
    const uint32_t d = ix->dim, cap = pl->K < ix->M0 ? pl->K : ix->M0;
    float *proj = NULL;
    uint32_t *rec = NULL;
    kiln_work_seg *segs = NULL;
    kiln_status st = kiln_alloc(ctx, (size_t)n * KILN_HASH_BITS * sizeof *proj, "seed projections",
                                (void **)&proj);
    if (st == KILN_OK)
        st = kiln_calloc(ctx, (size_t)pl->parts * sizeof *segs, "seed segments", (void **)&segs);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, ((size_t)pl->part_nodes * (2 + 3 * (size_t)cap) + 1) * sizeof *rec,
                        "seed records", (void **)&rec);
    if (st)
        goto done;
#pragma omp parallel for num_threads(pl->threads) schedule(static, 1024)
    for (uint64_t i = 0; i < n; i++)
        kiln_hash_project(pl->planes, d, kiln_vector(ix, (uint32_t)i), proj + i * KILN_HASH_BITS);
    const uint32_t rec_words = 2 + 3 * cap;
    for (uint32_t q = 0; q < pl->parts && st == KILN_OK; q++) {
        uint32_t first, count;
        part_range(pl, q, &first, &count);
        const uint32_t end = first + count < n ? first + count : (uint32_t)(first < n ? n : first);
#pragma omp parallel for num_threads(pl->threads) schedule(dynamic, 256)
        for (uint32_t u = first; u < end; u++) {
            uint32_t *r = rec + (size_t)(u - first) * rec_words;
            kiln_hcand *c = (kiln_hcand *)(r + 2);
            kiln_hcand all[KILN_CL_MAX_K > 2 * KILN_MAX_M ? KILN_CL_MAX_K : 2 * KILN_MAX_M];
            const uint32_t *l = kiln_links(ix, u, 0);
            const float *vu = kiln_vector(ix, u);
            uint32_t m = 0;
            for (uint32_t j = 0; j < l[0]; j++) {
                const uint32_t v = l[1 + j];
                if (v >= n || v == u)
                    continue;
                const float dist = ix->dist(vu, kiln_vector(ix, v), d);
                all[m++] = (kiln_hcand){dist == dist ? dist : (float)INFINITY, v,
                                        kiln_hash_edge(proj + (size_t)u * KILN_HASH_BITS,
                                                       proj + (size_t)v * KILN_HASH_BITS)};
            }
            kiln_hcands_sort(all, m);
            m = m < cap ? m : cap;
            memcpy(c, all, m * sizeof *c);
            r[0] = u;
            r[1] = m;
        }
        /* Compact the records to their lengths. */
        uint64_t w = 0;
        for (uint32_t u = first; u < end; u++) {
            const uint32_t *r = rec + (size_t)(u - first) * rec_words;
            const uint64_t len = 2 + 3 * (uint64_t)r[1];
            memmove(rec + w, r, len * sizeof *rec);
            w += len;
        }
        for (uint32_t t = 0; t < pl->parts; t++)
            segs[t] = (kiln_work_seg){rec, t == q ? w * sizeof *rec : 0};
        char name[32];
        batch_name(name, sizeof name, pl->n_batches + q);
        st = kiln_workdir_put(pl->wd, name, segs, pl->parts);
    }
    if (st == KILN_OK)
        pl->seed_files = pl->parts;
done:
    free(proj);
    free(rec);
    free(segs);
    return st;
}

/* Level 0 from the work dir's checkpoint. */
static kiln_status level0_get(pipeline *pl) {
    struct kiln_index *ix = pl->ix;
    const size_t bytes = ix->count * kiln_links0_stride(ix) * sizeof(uint32_t);
    kiln_workfile *wf = NULL;
    kiln_status st = kiln_workfile_open(pl->wd, "level0", 1, &wf);
    if (st == KILN_OK && kiln_workfile_seg_len(wf, 0) != bytes)
        st = kiln_fail(pl->ctx, KILN_E_FORMAT, "work file level0.kw does not fit the input");
    if (st == KILN_OK)
        st = kiln_workfile_read(wf, 0, ix->links0);
    kiln_workfile_close(wf);
    /* The repair walks these before the validator: bound every list. */
    if (st == KILN_OK)
        st = links0_check(pl, ix->links0, 0, (uint32_t)ix->count, "work file level0.kw");
    pl->rep->resumed_steps++;
    return st;
}

/* The streaming passes in one process. */
static kiln_status level0_local(pipeline *pl, pass_bufs *pb, kiln_work_seg *segs,
                                kiln_progress_bar *bar) {
    kiln_status st = KILN_OK;
    for (uint32_t q = 0; q < pl->parts && st == KILN_OK; q++) {
        if ((st = forward_part(pl, pb, q, segs)) == KILN_OK) {
            char name[32];
            rev_name(name, sizeof name, q);
            st = kiln_workdir_put(pl->wd, name, segs, pl->parts);
        }
        kiln_progress_add(bar, 1);
    }
    kiln_fault_point("forward");
    for (uint32_t q = 0; q < pl->parts && st == KILN_OK; q++) {
        st = reverse_part(pl, pb, q);
        kiln_progress_add(bar, 1);
    }
    return st;
}

/* The streaming passes across ranks (decision 11): each rank's forward
 * passes a round at a time, the reverse edges to their owners, each rank's
 * reverse passes, then level 0 gathered on rank 0. Collective: st is this
 * rank's status so far. */
static kiln_status level0_ranks(pipeline *pl, pass_bufs *pb, kiln_work_seg *segs,
                                kiln_progress_bar *bar, kiln_status st) {
    kiln_ctx *ctx = pl->ctx;
    struct kiln_index *ix = pl->ix;
    const uint32_t q0 = part_lo(pl, pl->rank), q1 = part_lo(pl, pl->rank + 1),
                   rounds = part_rounds(pl), edge_words = sizeof(kiln_edge) / sizeof(uint32_t);
    kiln_work_seg *in = NULL;
    xchg x;
    st = kiln_dist_agree(ctx, xchg_begin(pl, &x, &in, st));
    for (uint32_t i = 0; i < rounds && st == KILN_OK; i++) {
        const bool run = q0 + i < q1;
        xchg_reset(pl, &x);
        st = kiln_dist_agree(ctx, run ? forward_part(pl, pb, q0 + i, segs) : KILN_OK);
        if (st == KILN_OK && run)
            xchg_by_owner(pl, &x, segs);
        if (st == KILN_OK)
            st = xchg_run(pl, &x);
        for (int r = 0; st == KILN_OK && r < pl->ranks; r++) {
            const uint32_t q = part_lo(pl, r) + i;
            if (q >= part_lo(pl, r + 1))
                continue;
            char name[48];
            snprintf(name, sizeof name, "the reverse edges of partition %u", q);
            if ((st = split_received(pl, name, r, x.recv[r], x.recv_len[r], kiln_rec_len_fixed,
                                     &edge_words, in)) == KILN_OK) {
                rev_name(name, sizeof name, q);
                st = kiln_workdir_put(pl->wd, name, in, pl->parts);
            }
        }
        xchg_reset(pl, &x);
        st = kiln_dist_agree(ctx, st);
        if (run)
            kiln_progress_add(bar, 1);
    }
    if (st == KILN_OK)
        kiln_fault_point("forward");
    for (uint32_t q = q0; q < q1 && st == KILN_OK; q++) {
        st = reverse_part(pl, pb, q);
        kiln_progress_add(bar, 1);
    }
    st = kiln_dist_agree(ctx, st);
    /* Level 0 on rank 0, a partition from each rank per round. */
    const size_t row = kiln_links0_stride(ix) * sizeof(uint32_t);
    for (uint32_t i = 0; i < rounds && st == KILN_OK; i++) {
        uint32_t first, count;
        xchg_reset(pl, &x);
        if (pl->rank != 0 && q0 + i < q1) {
            part_range(pl, q0 + i, &first, &count);
            x.send[0] = kiln_links(ix, first, 0);
            x.send_len[0] = (uint64_t)count * row;
        }
        st = xchg_run(pl, &x);
        for (int r = 1; st == KILN_OK && pl->rank == 0 && r < pl->ranks; r++) {
            const uint32_t q = part_lo(pl, r) + i;
            if (q >= part_lo(pl, r + 1))
                continue;
            part_range(pl, q, &first, &count);
            char what[64];
            snprintf(what, sizeof what, "rank 0: level 0 of partition %u from rank %d", q, r);
            if (x.recv_len[r] != (uint64_t)count * row)
                st = kiln_fail(ctx, KILN_E_FORMAT, "%s: %llu bytes, not %llu", what,
                               (unsigned long long)x.recv_len[r], (unsigned long long)count * row);
            else if ((st = links0_check(pl, x.recv[r], first, count, what)) == KILN_OK)
                memcpy(kiln_links(ix, first, 0), x.recv[r], (size_t)count * row);
        }
        xchg_reset(pl, &x);
        st = kiln_dist_agree(ctx, st);
    }
    xchg_free(pl, &x);
    free(in);
    return st;
}

/* Step 5: the streaming passes, or the level 0 of the work dir (rank 0's,
 * across ranks). */
static kiln_status step_level0(pipeline *pl) {
    struct kiln_index *ix = pl->ix;
    uint64_t done = pl->rank == 0 && kiln_workdir_has(pl->wd, "level0");
    kiln_status st = pl->ranks > 1 ? kiln_dist_sum_u64(pl->ctx, &done, 1) : KILN_OK;
    if (st)
        return st;
    if (done) { /* across ranks, only rank 0 needs it */
        st = pl->rank == 0 ? level0_get(pl) : KILN_OK;
        return pl->ranks > 1 ? kiln_dist_agree(pl->ctx, st) : st;
    }
    kiln_progress_bar bar;
    pass_bufs pb;
    memset(&pb, 0, sizeof pb);
    kiln_work_seg *segs = NULL;
    st = kiln_alloc(pl->ctx, (size_t)pl->parts * sizeof *segs, "pass segments", (void **)&segs);
    kiln_progress_begin(&bar, pl->ctx, "union+links",
                        2 * (uint64_t)(part_lo(pl, pl->rank + 1) - part_lo(pl, pl->rank)));
    if (pl->ranks > 1)
        st = level0_ranks(pl, &pb, segs, &bar, st);
    else if (st == KILN_OK)
        st = level0_local(pl, &pb, segs, &bar);
    kiln_progress_end(&bar);
    pass_bufs_free(&pb);
    free(segs);
    if (st == KILN_OK && pl->rank == 0) {
        const kiln_work_seg seg = {ix->links0,
                                   ix->count * kiln_links0_stride(ix) * sizeof(uint32_t)};
        st = kiln_workdir_put(pl->wd, "level0", &seg, 1);
        kiln_fault_point("level0");
    }
    return pl->ranks > 1 ? kiln_dist_agree(pl->ctx, st) : st;
}

/* The report of a build across ranks (decision 11): stage seconds and
 * peak memory of the slowest rank, counts summed, bytes sent per rank. */
static kiln_status report_ranks(pipeline *pl) {
    kiln_ctx *ctx = pl->ctx;
    kiln_build_report *rep = pl->rep;
    const size_t R = (size_t)pl->ranks;
    kiln_status st = kiln_calloc(ctx, R * sizeof *pl->ix->rank_bytes, "bytes per rank",
                                 (void **)&pl->ix->rank_bytes);
    if ((st = kiln_dist_agree(ctx, st)))
        return st;
    pl->ix->rank_bytes[pl->rank] = pl->bytes_sent;
    uint64_t sums[5] = {rep->device_batches, rep->batch_retries, rep->resumed_batches,
                        rep->work_bytes_written, rep->work_bytes_read};
    double peak = (double)rep->peak_rss_anon;
    if ((st = kiln_dist_sum_u64(ctx, pl->ix->rank_bytes, R)) ||
        (st = kiln_dist_sum_u64(ctx, sums, 5)) || (st = kiln_dist_max_f64(ctx, &peak)))
        return st;
    for (uint32_t i = 0; i < rep->n_stages; i++)
        if ((st = kiln_dist_max_f64(ctx, &rep->stages[i].seconds)))
            return st;
    rep->device_batches = (uint32_t)sums[0];
    rep->batch_retries = (uint32_t)sums[1];
    rep->resumed_batches = (uint32_t)sums[2];
    rep->work_bytes_written = sums[3];
    rep->work_bytes_read = sums[4];
    rep->peak_rss_anon = (uint64_t)peak;
    rep->ranks = (uint32_t)R;
    rep->rank_bytes_sent = pl->ix->rank_bytes;
    return KILN_OK;
}

/* ==== Work dir and fingerprint ==== */

/* Decision 10: what a work dir must match to be resumed. */
/* Rows of the sample every rank of a job fingerprints alike (decision 11). */
#define JOB_SAMPLE_ROWS 256

/* job: the fingerprint that every rank of one job must share (a sample of
 * rows, no rank), else this rank's work dir's (its share of the rows). */
static uint64_t fingerprint(const pipeline *pl, bool job, char *desc, size_t cap) {
    const struct kiln_index *ix = pl->ix;
    const kiln_build_params *p = pl->p;
    char ranks[96] = "";
    size_t first, count; /* the rows this rank checked (graph/hnsw_build.c decision 6) */
    kiln_rank_share(p, ix->count, &first, &count);
    uint32_t crc = 0;
    if (job) {
        for (uint64_t i = 0; i < JOB_SAMPLE_ROWS; i++)
            crc = kiln_crc32c(
                crc, kiln_vector(ix, (uint32_t)((ix->count - 1) * i / (JOB_SAMPLE_ROWS - 1))),
                ix->dim * sizeof(float));
        snprintf(ranks, sizeof ranks, ", %d ranks (crc32c of %d rows)", pl->ranks, JOB_SAMPLE_ROWS);
    } else {
        crc = kiln_crc32c(0, ix->vectors + first * ix->dim, count * ix->dim * sizeof(float));
        if (pl->ranks > 1) /* a rank's files hold its share (decision 11) */
            snprintf(ranks, sizeof ranks, ", rank %d of %d (crc32c of rows %zu..%zu)", pl->rank,
                     pl->ranks, first, first + count);
    }
    snprintf(desc, cap,
             "device build v%d of %llu x %u %s vectors (crc32c %08x), M %u, ef_construction "
             "%u, seed %llu, replicas %u + %u within %.3f, knn_k %u, clusters %u, cluster_size %u, "
             "%s-endian%s",
             DEVICE_PIPELINE_VERSION, (unsigned long long)ix->count, ix->dim,
             kiln_metric_name(ix->metric), crc, ix->M, p->ef_construction,
             (unsigned long long)p->seed, pl->replicas, pl->extra,
             pl->extra ? (double)DEVICE_BOUNDARY_RATIO : 0.0, pl->K, p->clusters, p->cluster_size,
             KILN_HOST_BIG_ENDIAN ? "big" : "little", ranks);
    const uint32_t a = kiln_crc32c(0, desc, strlen(desc));
    const uint32_t b = kiln_crc32c(0x9e3779b9u, desc, strlen(desc));
    return (uint64_t)a << 32 | b;
}

/* Decision 11: every rank must build the same job; each compares its job
 * fingerprint with rank 0's (a stale copy of BASE on one host, or other
 * options, would mix another input's links into the graph). */
static kiln_status check_same_job(pipeline *pl) {
    char desc[512];
    uint64_t fp = fingerprint(pl, true, desc, sizeof desc), len = sizeof fp;
    void *msg = pl->rank == 0 ? &fp : NULL;
    kiln_status st = kiln_dist_bcast(pl->ctx, 0, &msg, &len);
    if (st == KILN_OK && pl->rank != 0 && (len != sizeof fp || memcmp(msg, &fp, sizeof fp) != 0))
        st = kiln_fail(pl->ctx, KILN_E_ARG,
                       "build: this rank's input or options differ from rank 0's (here: %s); every "
                       "rank must read the same BASE with the same options",
                       desc);
    if (pl->rank != 0)
        free(msg);
    return kiln_dist_agree(pl->ctx, st);
}

static kiln_status open_workdir(pipeline *pl) {
    char desc[512];
    const uint64_t fp = fingerprint(pl, false, desc, sizeof desc);
    const char *dir = pl->p->work_dir;
    char tmp[4096], rank_dir[4096];
    if (dir && pl->ranks > 1) { /* decision 11: a folder per rank */
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            return kiln_fail(pl->ctx, KILN_E_IO, "work dir %s: cannot create: %s", dir,
                             strerror(errno));
        if (snprintf(rank_dir, sizeof rank_dir, "%s/rank-%d", dir, pl->rank) >=
            (int)sizeof rank_dir)
            return kiln_fail(pl->ctx, KILN_E_ARG, "work dir %s: the path is too long", dir);
        dir = rank_dir;
    }
    if (!dir) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp, sizeof tmp, "%s/kiln-work-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmp))
            return kiln_fail(pl->ctx, KILN_E_IO, "build: cannot create a work dir in %s: %s",
                             base && *base ? base : "/tmp", strerror(errno));
        dir = tmp;
        pl->temp_wd = true;
    }
    kiln_status st = kiln_workdir_open(pl->ctx, dir, fp, desc, pl->p->resume != 0, &pl->wd);
    if (st && pl->temp_wd)
        rmdir(tmp);
    return st;
}

/* ==== Pipeline ==== */

kiln_status kiln_build_device(struct kiln_index *ix, const kiln_build_params *p,
                              kiln_build_report *rep, const kiln_device_seed *seed) {
    kiln_ctx *ctx = ix->ctx;
    if (seed && (p->collective || p->work_dir || p->resume)) /* decision 12 */
        return kiln_fail(ctx, KILN_E_ARG,
                         "add: the device add runs in one process, in a private work dir");
    pipeline pl = {.ctx = ctx,
                   .ix = ix,
                   .p = p,
                   .rep = rep,
                   .threads = kiln_threads(p->threads),
                   .K = p->knn_k ? p->knn_k : 2 * p->M,
                   .residual = ix->metric != KILN_METRIC_IP,
                   .rank = p->collective ? kiln_dist_rank() : 0,
                   .ranks = p->collective ? kiln_dist_size() : 1,
                   .seeded = seed ? seed->seeded : 0};
    if (p->replicas)
        pl.replicas = p->replicas;
    else
        default_replicas(ix->count, p, &pl.replicas, &pl.extra);
    if (pl.K > KILN_CL_MAX_K)
        return kiln_fail(ctx, KILN_E_ARG, "build: knn_k = %u is above the device limit %d", pl.K,
                         KILN_CL_MAX_K);
    if (pl.replicas < 2 || pl.replicas > 16)
        return kiln_fail(ctx, KILN_E_ARG, "build: replicas = %u is out of range [2, 16]",
                         pl.replicas);

    kiln_device_info info;
    kiln_status st = kiln_device_select(ctx, p->device, &info);
    if (pl.ranks > 1) /* collective from here on: every rank stops together */
        st = kiln_dist_agree(ctx, st);
    if (st)
        return st;
    if (ix->count == 0)
        return KILN_OK;
    snprintf(rep->device_name, sizeof rep->device_name, "%.60s / %.60s", info.platform_name,
             info.device_name);
    if (pl.ranks > 1 && (st = check_same_job(&pl)))
        return st;
    st = open_workdir(&pl);
    if (pl.ranks > 1)
        st = kiln_dist_agree(ctx, st);
    double t = kiln_now();
    if (st)
        goto cleanup;

    /* 1. Cluster and assign with replicas under a size cap; across ranks,
     * the hierarchy at the same time on rank 1 (decision 11). */
    const int hier_rank = pl.ranks > 1 ? 1 : 0;
    if (pl.ranks > 1) {
        /* Up front on every rank, before rank 1 spends the hierarchy's
         * time: the budget against k-means's and the clusters' figures. */
        kiln_kmeans_params kp;
        if ((st = kiln_dist_agree(
                 ctx, kiln_workdir_has(pl.wd, "clusters") ? KILN_OK : kmeans_setup(&pl, &kp))))
            goto cleanup;
        if (pl.rank == 0)
            st = step_clusters(&pl, &info);
        stage(rep, "kmeans+assign", kiln_now() - t);
        t = kiln_now();
        if (st == KILN_OK && pl.rank == hier_rank)
            st = step_hierarchy(&pl);
        stage(rep, "hierarchy", kiln_now() - t);
        t = kiln_now();
        if ((st = kiln_dist_agree(ctx, st)) || (st = share_workfile(&pl, 0, "clusters", 4)) ||
            (st = kiln_dist_agree(ctx, pl.rank != 0 ? clusters_get(&pl) : KILN_OK)) ||
            (st = share_workfile(&pl, hier_rank, "hierarchy", 2)) ||
            (st = kiln_dist_agree(ctx, pl.rank != hier_rank ? hierarchy_get(&pl) : KILN_OK)))
            goto cleanup;
        stage(rep, "share", kiln_now() - t);
    } else {
        if ((st = step_clusters(&pl, &info)))
            goto cleanup;
        stage(rep, "kmeans+assign", kiln_now() - t);
    }
    rep->clusters = pl.cl.k;
    rep->replicas = pl.replicas;
    rep->mean_replicas = (double)pl.cl.offsets[pl.cl.k] / (double)ix->count;
    rep->max_cluster_size = pl.cl.max_members;
    kiln_fault_point("clusters");

    /* 2. Quantizer and plan (rank 0's, across ranks). */
    t = kiln_now();
    st = step_quantizer(&pl);
    if (pl.ranks > 1) {
        if (st == KILN_OK && pl.rank == 0)
            st = step_plan(&pl);
        if ((st = kiln_dist_agree(ctx, st)) || (st = share_workfile(&pl, 0, "plan", 2)) ||
            (st = kiln_dist_agree(ctx, pl.rank != 0 ? step_plan(&pl) : KILN_OK)))
            goto cleanup;
    } else if (st || (st = step_plan(&pl))) {
        goto cleanup;
    }
    stage(rep, "quantize", kiln_now() - t);

    /* 3. The batches: per-cluster kNN on the device, reranked and pruned in
     * place. */
    t = kiln_now();
    if ((st = step_batches(&pl)))
        goto cleanup;
    stage(rep, "device knn", kiln_now() - t);

    /* 4. Hierarchy, before level 0: its level-1 links seed it
     * (graph/merge.c). A device add brings its own (decision 12), and its
     * old lists. */
    if (seed) {
        t = kiln_now();
        if (pl.seeded && (st = step_seed(&pl)))
            goto cleanup;
        stage(rep, "seed", kiln_now() - t);
    } else if (pl.ranks == 1) {
        t = kiln_now();
        if ((st = step_hierarchy(&pl)))
            goto cleanup;
        stage(rep, "hierarchy", kiln_now() - t);
    }
    kiln_fault_point("hierarchy");

    ix->ef_construction = p->ef_construction; /* what the header records: the parameter */

    /* 5. Union, prune, reverse links: streamed by partition of node ids. */
    t = kiln_now();
    st = step_level0(&pl);
    if (st == KILN_OK && pl.ranks > 1)
        st = kiln_dist_sum_u64(ctx, &pl.candidates, 1);
    rep->candidates_per_vector = (double)pl.candidates / (double)ix->count;
    stage(rep, "merge+prune", kiln_now() - t);

cleanup:;
    const kiln_workdir_stats ws = kiln_workdir_stats_get(pl.wd);
    rep->work_bytes_written = ws.bytes_written;
    rep->work_bytes_read = ws.bytes_read;
    if (st == KILN_OK && pl.ranks > 1) /* agreed: every rank is here */
        st = report_ranks(&pl);
    /* A private dir goes at the end, and so does one that failed before any
     * checkpoint beyond the manifest: nothing in it to resume. */
    if (pl.temp_wd || (st && ws.files_written <= 1 && rep->resumed_steps == 0))
        kiln_workdir_remove(pl.wd);
    else
        kiln_workdir_close(pl.wd);
    free(pl.batch_first);
    kiln_clusters_free(&pl.cl);
    free(pl.planes);
    kiln_q4_free(pl.q);
    return st;
}
