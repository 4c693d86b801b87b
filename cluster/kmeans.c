/* kmeans.c -- k-means training for the device pipeline's partitioning step:
 * parameters and the choice of k, the CPU nearest-centroid backend, k-means++
 * seeding and Lloyd iterations on a seeded sample. The capped assignment of
 * every vector to its clusters is in assign.c; hkmeans.c trains large k in
 * two levels from the pieces exported here (sampling, seeding + Lloyd on
 * given rows, Lloyd from given centroids through any nearest function).
 *
 * Design decisions:
 *  1. The heavy step -- the nearest centroid(s) of many vectors -- is a
 *     callback (kiln_nearest_fn), so the host can run it on the device while
 *     everything else stays here; kiln_nearest_cpu is the CPU implementation.
 *     Everything around the callback is cheap (O(n d) per iteration). The
 *     callback, and every function of cluster/, takes the rows, the
 *     centroids, the output lists and the backend as the small structs of
 *     kmeans_internal.h rather than as 10-15 loose parameters, and each
 *     call's derived state (the static helpers' *_job structs) travels the
 *     same way: no function here takes more than 7 parameters.
 *  2. k, when not given, is ceil(n * replicas / target_size): the pipeline
 *     wants clusters of about target_size members after replication. A
 *     cluster's all-pairs costs size^2 4-bit distances, so the device does
 *     n * replicas * size of them: larger clusters hold more true
 *     neighbours (recall) for linearly more device work, smaller ones mean
 *     a larger k and more k-means work. The device build chooses: its
 *     target is --cluster-size, default 768 (host/device_build.c
 *     DEVICE_TARGET_CLUSTER, measured there), 1536 distances per vector
 *     at 2 replicas. kiln_kmeans_params_init's 2048 (KMEANS_DEFAULT_TARGET)
 *     is only the default of a direct caller that sets neither clusters
 *     nor target_size, such as the tests. k is raised to
 *     ceil(n * replicas / max_size) when a cap is set, so the automatic k is
 *     always feasible, and to `replicas` so a vector can have that many.
 *  3. Training uses a sample of min(n, 256 k) rows chosen by selection
 *     sampling (sorted, uniform, seeded). FAISS caps at 256 points per
 *     centroid for the same reason: beyond that the centroids move less than
 *     the assignment cap will distort them anyway.
 *  4. Seeding is k-means++ (D^2 sampling) on a random subsample of the
 *     training sample of m rows, m = clamp(KMEANS_PP_WORK / (k d), k, 16 k):
 *     exact k-means++ costs k passes over its points, O(k m d), which for
 *     m = 256 k would be 128 GB of memory traffic at k = 1000. With 16
 *     points per centroid the seeds are already spread; the budget makes the
 *     subsample shrink as k grows until, at m = k (k above ~5800 at d = 128),
 *     the seeds are simply k distinct random rows (what FAISS does by
 *     default): Lloyd's iterations do the rest, and random rows follow the
 *     density, which favours balanced clusters under a size cap.
 *  5. Determinism whatever the thread count: the backend's answer for a row
 *     depends only on that row, each centroid's new mean is summed in double
 *     by one thread over its members in sample order (a counting sort by
 *     assignment), k-means++ sums its D^2 weights sequentially, and all
 *     random draws happen on one thread from one kiln_rng. No reduction
 *     depends on how rows are split between threads.
 *  6. kiln_nearest_cpu computes ||x||^2 + ||c||^2 - 2 x.c for a block of 48
 *     rows against every centroid with a register-blocked FMA kernel (the
 *     GEMM shape: 4x32 on AVX-512, 6x16 on AVX2, 1x16 scalar), where each
 *     centroid value loaded serves several rows. On Zen 4 at d = 128, k =
 *     1000 that is 2.6 ns per pair and thread for the nearest centroid (3.9
 *     for the nearest ten) against 8.3 ns for one SIMD distance call per
 *     pair. That form cancels, so it only picks candidates: a centroid can
 *     be among the r nearest only if its approximate distance is within a
 *     rigorous rounding bound (NEAR_ERR_SCALE) of the r-th smallest; the
 *     candidates get the exact dispatched SIMD L2 and the r nearest are
 *     chosen on (exact distance, id). So the answer equals a brute force
 *     with kiln_distance_fn, bit for bit and ties by smaller id, at the cost
 *     of a handful of extra distances per row. Rows and centroids are first
 *     centred on the centroids' mean, which leaves distances alone but
 *     shrinks the norms, hence the bound, to the data's spread: data far
 *     from the origin would otherwise make every centroid a candidate.
 *  7. Empty clusters after an update are re-seeded by splitting the largest
 *     one: both centroids move by KMEANS_SPLIT_STEP along the direction from
 *     its mean to a random member, so the next assignment cuts it in two by
 *     the hyperplane through the old mean. Sizes are halved in a running
 *     estimate so several empties split several clusters.
 *  8. Small k with r > 1, as the two-level search asks (hkmeans.c: 50-200
 *     centroids per call, r = 10), was dominated by selection, not by the
 *     kernel. With fewer panels than r the panel minima bound nothing, so
 *     the minima of NEAR_GROUPS lane groups per panel bound the r-th
 *     smallest instead (any r values from distinct columns do); the
 *     candidate scan tests 4 lanes per SSE compare instead of branching on
 *     each value (a branch that mispredicted about half the time near the
 *     threshold); and the few exact candidates are sorted by insertion.
 *     One thread, Zen 4, d = 128, r = 10: 1268 -> 962 ns per row at k = 50,
 *     1820 -> 1449 at k = 150, unchanged at k = 2605. The bounds only admit
 *     candidates and the order is total, so the answer is the same bytes.
 */
#include <assert.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "../common/distance_internal.h"
#include "../common/progress_internal.h"
#include "../common/rng_internal.h"
#include "../common/sort_internal.h"
#include "kmeans_internal.h"

#if KILN_SIMD_X86
#include <immintrin.h>
#endif

/* ==== Tunables ==== */

/* Defaults of kiln_kmeans_params_init; decision 2 for target_size (the
 * device build passes its own, 768). spare 8:
 * the cap spills a vector past its `replicas` nearest, and 8 more keeps the
 * spill local (cost n * (replicas + 8) ids) while leaving room for skew. */
#define KMEANS_DEFAULT_TARGET   2048u
#define KMEANS_DEFAULT_REPLICAS 2u
#define KMEANS_DEFAULT_SPARE    8u
#define KMEANS_DEFAULT_ITERS    8u
/* Training rows per centroid when p->sample is 0 (decision 3). */
#define KMEANS_SAMPLE_PER_CLUSTER 256u
/* k-means++ budget in element operations (k * m * d, decision 4): 2^32 is a
 * few tenths of a second on one AVX2 core, small next to the Lloyd passes. */
#define KMEANS_PP_WORK        ((uint64_t)1 << 32)
#define KMEANS_PP_PER_CLUSTER 16u
/* Fraction of (member - mean) by which a split moves the two centroids
 * (decision 7). Any positive value gives the same cut; 1/16 keeps both near
 * the old mean if the split comes after the last iteration. */
#define KMEANS_SPLIT_STEP 0.0625f
/* Below this many element operations a k-means++ or Lloyd update runs on
 * one thread. A fork/join costs microseconds on an idle machine but up to a
 * scheduler slice when another process holds a core, and 2^20 operations
 * are only ~0.25 ms of work. The two-level training (hkmeans.c) makes ~3000
 * updates of ~10^5 on its small cells; the flat ones at 1M stay parallel. */
#define KMEANS_PARALLEL_MIN ((size_t)1 << 20)
/* Stream constant mixed into the seed so k-means draws do not repeat the
 * draws other stages make from the same build seed. */
#define KMEANS_RNG_STREAM 0x6b6d65616e73ull

/* Rows per block of kiln_nearest_cpu: a multiple of every kernel's row count
 * (4, 6, 1); 48 rows of d = 128 are 24 KiB, about an L1d. */
#define NEAR_ROWS 48u
/* Candidates sorted by insertion rather than qsort up to this many (a row
 * usually has r to r + 2): 80-100 ns less per row at r = 10, 5-9% of a
 * row at k = 50-400 (decision 8). */
#define NEAR_INSERTION_MAX 32u
/* Lane groups per panel whose minima bound the r-th smallest distance when
 * r exceeds the panels (near_group_min's SSE width). */
#define NEAR_GROUPS 4u
/* Centroids per packed panel: one AVX-512 register, two AVX2 ones. */
#define NEAR_PANEL 16u
/* Columns are padded to a multiple of the widest kernel (2 panels). */
#define NEAR_COL_ALIGN 32u
/* Bytes of packed centroids walked per pass over a row block: fits a 512
 * KiB-2 MiB L2 with the block and its distance rows beside it. */
#define NEAR_CHUNK_BYTES ((size_t)256 << 10)
/* The candidate window, in units of 2^-24 (ulps of 1) times
 * (||x'||^2 + max ||c'||^2), x' and c' centred on the centroids' mean: twice
 * the worst-case bound. Recursive float summation of d terms errs by at most
 * about d ulps of the sum of absolute terms; the expanded form errs by
 * (2d + 6) ulps of (||x'||^2 + ||c'||^2), the centring by 4 more, the exact
 * kernel by (d + 3) ulps of ||x - c||^2 <= 2 (||x'||^2 + ||c'||^2), and two
 * centroids are compared, so 4 (2d + 10) = 8d + 40 suffices; 16d + 64 leaves
 * a margin. For SIFT this is a window of ~30 against distances of 1e4-1e5. */
#define NEAR_ERR_SCALE(dim) (16.0 * (double)(dim) + 64.0)

/* ==== Types ==== */

/* A register-blocked kernel: distances of `rows` block rows to `cols`
 * centroids starting at a panel boundary, written to a (stride lda). */
typedef void (*near_kernel_fn)(const float *xb, const float *xn, size_t dim, const float *panels,
                               const float *cn, float *a, size_t lda);

typedef struct near_kernel {
    near_kernel_fn fn;
    uint32_t rows, cols;
} near_kernel;

/* An exact candidate: (distance, centroid id), ordered by near_cand_less. */
typedef struct near_cand {
    float dist;
    uint32_t id;
} near_cand;

/* One thread's scratch for kiln_nearest_cpu, carved from one allocation. */
typedef struct near_scratch {
    float *xb;       /* NEAR_ROWS * dim: the block's rows, centred, zero past its end */
    float *xn;       /* NEAR_ROWS: their squared norms */
    float *a;        /* NEAR_ROWS * kpad: approximate distances */
    float *pmin;     /* kpad / NEAR_PANEL: one row's panel minima */
    float *pool;     /* kpad: selection scratch (reordered) */
    near_cand *cand; /* k: exact candidates */
} near_scratch;

/* One kiln_nearest_cpu call's shared, read-only state. */
typedef struct near_job {
    const float *x, *centroids;
    size_t n;
    uint32_t k, dim, r;
    size_t kpad;         /* k rounded up to NEAR_COL_ALIGN */
    size_t chunk_cols;   /* columns per cache pass, a multiple of NEAR_COL_ALIGN */
    const float *mu;     /* dim: the centroids' mean, subtracted before the expansion */
    const float *panels; /* kpad / NEAR_PANEL panels of dim x NEAR_PANEL floats, centred */
    const float *cn;     /* kpad squared norms of the centred centroids; +inf in the padding */
    double cn_max;       /* largest finite cn */
    near_kernel kernel;
    kiln_dist_fn dist;
    uint32_t *ids;
    float *dists;
} near_job;

/* One training run on given rows, shared by seeding and Lloyd. */
typedef struct train_job {
    kiln_rows rows;               /* the m training rows */
    uint32_t k;                   /* 1 <= k <= rows.n */
    uint32_t iters;               /* Lloyd iterations at most */
    int threads;                  /* team size, >= 1 */
    kiln_rng *rng;                /* every draw of the run */
    kiln_nearest_backend nearest; /* fn not NULL */
    kiln_progress_bar *bar;       /* NULL, or advanced by one per iteration */
} train_job;

/* Lloyd's scratch, sized by m rows and k centroids. */
typedef struct lloyd_scratch {
    uint32_t *assign, *prev; /* m: this iteration's and the last one's nearest centroid */
    float *dists;            /* m */
    uint32_t *order;         /* m: rows by cluster, in sample order within one */
    uint64_t *offsets;       /* k+1: cluster c's rows are order[offsets[c] .. offsets[c+1]) */
    uint64_t *est;           /* k: split size estimates */
    uint32_t *src;           /* k: the cluster whose rows a split centroid came from */
    double *acc;             /* threads*dim: per-thread sums */
} lloyd_scratch;

/* ==== Register-blocked kernels ==== */

#if KILN_SIMD_X86
/* Each writes a = (||x||^2 + ||c||^2) - 2 x.c with one rounding after the
 * dot products, each dot one FMA chain over the dimensions in order. */

__attribute__((target("avx512f"))) static void near_kernel_avx512(const float *xb, const float *xn,
                                                                  size_t dim, const float *panels,
                                                                  const float *cn, float *a,
                                                                  size_t lda) {
    const float *p0 = panels, *p1 = panels + (size_t)NEAR_PANEL * dim;
    __m512 a00 = _mm512_setzero_ps(), a01 = _mm512_setzero_ps();
    __m512 a10 = _mm512_setzero_ps(), a11 = _mm512_setzero_ps();
    __m512 a20 = _mm512_setzero_ps(), a21 = _mm512_setzero_ps();
    __m512 a30 = _mm512_setzero_ps(), a31 = _mm512_setzero_ps();
    for (size_t j = 0; j < dim; j++) {
        const __m512 c0 = _mm512_loadu_ps(p0 + NEAR_PANEL * j);
        const __m512 c1 = _mm512_loadu_ps(p1 + NEAR_PANEL * j);
        __m512 b = _mm512_set1_ps(xb[j]);
        a00 = _mm512_fmadd_ps(b, c0, a00);
        a01 = _mm512_fmadd_ps(b, c1, a01);
        b = _mm512_set1_ps(xb[dim + j]);
        a10 = _mm512_fmadd_ps(b, c0, a10);
        a11 = _mm512_fmadd_ps(b, c1, a11);
        b = _mm512_set1_ps(xb[2 * dim + j]);
        a20 = _mm512_fmadd_ps(b, c0, a20);
        a21 = _mm512_fmadd_ps(b, c1, a21);
        b = _mm512_set1_ps(xb[3 * dim + j]);
        a30 = _mm512_fmadd_ps(b, c0, a30);
        a31 = _mm512_fmadd_ps(b, c1, a31);
    }
    const __m512 cn0 = _mm512_loadu_ps(cn), cn1 = _mm512_loadu_ps(cn + NEAR_PANEL);
    const __m512 m2 = _mm512_set1_ps(-2.0f);
#define NEAR_STORE512(row, d0, d1)                                                                 \
    do {                                                                                           \
        const __m512 s = _mm512_set1_ps(xn[row]);                                                  \
        _mm512_storeu_ps(a + (row)*lda, _mm512_fmadd_ps(m2, d0, _mm512_add_ps(s, cn0)));           \
        _mm512_storeu_ps(a + (row)*lda + NEAR_PANEL,                                               \
                         _mm512_fmadd_ps(m2, d1, _mm512_add_ps(s, cn1)));                          \
    } while (0)
    NEAR_STORE512(0, a00, a01);
    NEAR_STORE512(1, a10, a11);
    NEAR_STORE512(2, a20, a21);
    NEAR_STORE512(3, a30, a31);
#undef NEAR_STORE512
}

__attribute__((target("avx2,fma"))) static void near_kernel_avx2(const float *xb, const float *xn,
                                                                 size_t dim, const float *panels,
                                                                 const float *cn, float *a,
                                                                 size_t lda) {
    __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps();
    __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
    __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps();
    __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
    __m256 a40 = _mm256_setzero_ps(), a41 = _mm256_setzero_ps();
    __m256 a50 = _mm256_setzero_ps(), a51 = _mm256_setzero_ps();
    for (size_t j = 0; j < dim; j++) {
        const __m256 c0 = _mm256_loadu_ps(panels + NEAR_PANEL * j);
        const __m256 c1 = _mm256_loadu_ps(panels + NEAR_PANEL * j + 8);
        __m256 b = _mm256_broadcast_ss(xb + j);
        a00 = _mm256_fmadd_ps(b, c0, a00);
        a01 = _mm256_fmadd_ps(b, c1, a01);
        b = _mm256_broadcast_ss(xb + dim + j);
        a10 = _mm256_fmadd_ps(b, c0, a10);
        a11 = _mm256_fmadd_ps(b, c1, a11);
        b = _mm256_broadcast_ss(xb + 2 * dim + j);
        a20 = _mm256_fmadd_ps(b, c0, a20);
        a21 = _mm256_fmadd_ps(b, c1, a21);
        b = _mm256_broadcast_ss(xb + 3 * dim + j);
        a30 = _mm256_fmadd_ps(b, c0, a30);
        a31 = _mm256_fmadd_ps(b, c1, a31);
        b = _mm256_broadcast_ss(xb + 4 * dim + j);
        a40 = _mm256_fmadd_ps(b, c0, a40);
        a41 = _mm256_fmadd_ps(b, c1, a41);
        b = _mm256_broadcast_ss(xb + 5 * dim + j);
        a50 = _mm256_fmadd_ps(b, c0, a50);
        a51 = _mm256_fmadd_ps(b, c1, a51);
    }
    const __m256 cn0 = _mm256_loadu_ps(cn), cn1 = _mm256_loadu_ps(cn + 8);
    const __m256 m2 = _mm256_set1_ps(-2.0f);
#define NEAR_STORE256(row, d0, d1)                                                                 \
    do {                                                                                           \
        const __m256 s = _mm256_broadcast_ss(xn + (row));                                          \
        _mm256_storeu_ps(a + (row)*lda, _mm256_fmadd_ps(m2, d0, _mm256_add_ps(s, cn0)));           \
        _mm256_storeu_ps(a + (row)*lda + 8, _mm256_fmadd_ps(m2, d1, _mm256_add_ps(s, cn1)));       \
    } while (0)
    NEAR_STORE256(0, a00, a01);
    NEAR_STORE256(1, a10, a11);
    NEAR_STORE256(2, a20, a21);
    NEAR_STORE256(3, a30, a31);
    NEAR_STORE256(4, a40, a41);
    NEAR_STORE256(5, a50, a51);
#undef NEAR_STORE256
}

#endif /* KILN_SIMD_X86 */

/* The portable kernel: one row against one panel. */
static void near_kernel_scalar(const float *xb, const float *xn, size_t dim, const float *panels,
                               const float *cn, float *a, size_t lda) {
    (void)lda;
    float acc[NEAR_PANEL] = {0};
    for (size_t j = 0; j < dim; j++) {
        const float xj = xb[j];
        const float *const pj = panels + NEAR_PANEL * j;
        for (uint32_t l = 0; l < NEAR_PANEL; l++)
            acc[l] += xj * pj[l];
    }
    for (uint32_t l = 0; l < NEAR_PANEL; l++)
        a[l] = (xn[0] + cn[l]) - 2.0f * acc[l];
}

/* The kernel for the instruction set kiln_distance_fn dispatches to, so
 * KILN_SIMD caps both alike. */
static near_kernel near_pick_kernel(void) {
#if KILN_SIMD_X86
    const char *const simd = kiln_simd_name();
    if (strcmp(simd, "avx512") == 0)
        return (near_kernel){near_kernel_avx512, 4, 2 * NEAR_PANEL};
    if (strcmp(simd, "avx2") == 0)
        return (near_kernel){near_kernel_avx2, 6, NEAR_PANEL};
#endif
    return (near_kernel){near_kernel_scalar, 1, NEAR_PANEL};
}

/* ==== Nearest centroids: selection ==== */

/* A NaN distance ranks as +inf (kiln_nearest_fn contract). */
static inline float near_key(float d) { return isnan(d) ? INFINITY : d; }

static inline bool near_cand_less(near_cand a, near_cand b) {
    return a.dist < b.dist || (a.dist == b.dist && a.id < b.id);
}
/* Sorts by near_cand_less without a comparator call per comparison
 * (common/sort_internal.h): the full rankings of assign.c decision 3 sort k
 * candidates per row, and qsort spent 2.5% of a 200K x 128 build there. */
KILN_DEFINE_SORT(near_cands_sort, near_cand, near_cand_less)

/* Insertion sort by near_cand_less's order, for the few candidates a row
 * usually has: qsort's calls through a comparator cost more than the
 * sorting itself there. The order is total (ids differ), so the result is
 * the same as qsort's. */
static void near_cand_sort_small(near_cand *c, uint32_t count) {
    for (uint32_t i = 1; i < count; i++) {
        const near_cand v = c[i];
        uint32_t j = i;
        for (; j > 0 && (c[j - 1].dist > v.dist || (c[j - 1].dist == v.dist && c[j - 1].id > v.id));
             j--)
            c[j] = c[j - 1];
        c[j] = v;
    }
}

#if KILN_SIMD_X86
/* The smallest of v[0..NEAR_PANEL), NaN ignored (+inf when all are NaN):
 * SSE2, part of the x86-64 baseline, because compilers leave this loop
 * scalar and it touches every approximate distance. MINPS returns its second
 * operand when either is NaN, so the accumulator never picks one up. */
static inline float near_panel_min(const float *v) {
    __m128 m = _mm_set1_ps(INFINITY);
    for (uint32_t l = 0; l < NEAR_PANEL; l += 4)
        m = _mm_min_ps(_mm_loadu_ps(v + l), m);
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

/* The minima of the NEAR_GROUPS lane groups {l, l + 4, l + 8, l + 12} of
 * v[0..NEAR_PANEL), NaN ignored (+inf when a group is all NaN), as in
 * near_panel_min. */
static inline void near_group_min(const float *v, float *out) {
    __m128 m = _mm_set1_ps(INFINITY);
    for (uint32_t l = 0; l < NEAR_PANEL; l += 4)
        m = _mm_min_ps(_mm_loadu_ps(v + l), m);
    _mm_storeu_ps(out, m);
}

/* Bit l set when !(v[l] > thr), for l < NEAR_PANEL (NaN counts as a hit,
 * as in the scalar test): one compare per 4 lanes instead of a branch per
 * value, which mispredicted about half the time on the panels near the
 * threshold and made candidate collection the costliest part of a row at
 * small k (SSE2, the x86-64 baseline). */
static inline uint32_t near_panel_hits(const float *v, float thr) {
    const __m128 t = _mm_set1_ps(thr);
    uint32_t hits = 0;
    for (uint32_t l = 0; l < NEAR_PANEL; l += 4)
        hits |= (uint32_t)_mm_movemask_ps(_mm_cmpngt_ps(_mm_loadu_ps(v + l), t)) << l;
    return hits;
}

#else
/* The portable forms of the three SSE2 helpers above, with the same NaN
 * rules, for architectures without SSE2 (aarch64). */
static inline float near_panel_min(const float *v) {
    float m = INFINITY;
    for (uint32_t l = 0; l < NEAR_PANEL; l++)
        m = v[l] < m ? v[l] : m;
    return m;
}

static inline void near_group_min(const float *v, float *out) {
    for (uint32_t g = 0; g < NEAR_GROUPS; g++) {
        float m = INFINITY;
        for (uint32_t l = g; l < NEAR_PANEL; l += NEAR_GROUPS)
            m = v[l] < m ? v[l] : m;
        out[g] = m;
    }
}

static inline uint32_t near_panel_hits(const float *v, float thr) {
    uint32_t hits = 0;
    for (uint32_t l = 0; l < NEAR_PANEL; l++)
        hits |= (uint32_t) !(v[l] > thr) << l;
    return hits;
}
#endif /* KILN_SIMD_X86 */

/* The value of 0-based rank `rank` in v[0..count), reordering v (Wirth's
 * selection: linear on average, no NaN allowed). */
static float near_rank_value(float *v, uint32_t count, uint32_t rank) {
    long lo = 0, hi = (long)count - 1;
    const long kk = rank;
    while (lo < hi) {
        const float pivot = v[kk];
        long i = lo, j = hi;
        do {
            while (v[i] < pivot)
                i++;
            while (pivot < v[j])
                j--;
            if (i <= j) {
                const float t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                j--;
            }
        } while (i <= j);
        if (j < kk)
            lo = i;
        if (kk < i)
            hi = j;
    }
    return v[kk];
}

/* A bound on the approximate distance of any of the r nearest, given an
 * upper bound on the r-th smallest approximate distance: the rounding window
 * of decision 6 added and rounded up; a NaN or inf result admits all. */
static float near_threshold(const near_job *job, float xn, float bound) {
    const double window = NEAR_ERR_SCALE(job->dim) * 0x1.0p-24 * ((double)xn + job->cn_max);
    const float thr = (float)((double)bound + window);
    return isfinite(thr) ? nextafterf(thr, INFINITY) : thr;
}

/* Exact r nearest of one row from its approximate distances arow[0..kpad)
 * (decision 6). Most centroids are far, so the scan runs on the minima of
 * panels of NEAR_PANEL columns: r panels reach down to the r-th smallest
 * panel minimum u, so at least r distances are <= u and u bounds the r-th
 * smallest t from above. Only panels reaching below threshold(u) are read;
 * among their distances below it, t is found, and only those below
 * threshold(t) get an exact distance. Padding columns are +inf. */
static void near_select(const near_job *job, near_scratch *sc, size_t row, float xn,
                        const float *arow) {
    const uint32_t k = job->k, r = job->r;
    const float *const xrow = job->x + row * job->dim;
    uint32_t *const ids = job->ids + row * r;
    float *const dists = job->dists + row * r;
    const uint32_t panels = (uint32_t)(job->kpad / NEAR_PANEL);
    float least = INFINITY;
    for (uint32_t q = 0; q < panels; q++) {
        sc->pool[q] = sc->pmin[q] = near_panel_min(arow + (size_t)q * NEAR_PANEL);
        least = sc->pmin[q] < least ? sc->pmin[q] : least;
    }
    float u = least;
    if (r > 1 && r <= panels) {
        u = near_rank_value(sc->pool, panels, r - 1);
    } else if (r > 1 && r <= NEAR_GROUPS * panels) {
        /* Fewer panels than r (small k): the minima of NEAR_GROUPS lane
         * groups per panel bound the r-th smallest the same way. */
        for (uint32_t q = 0; q < panels; q++)
            near_group_min(arow + (size_t)q * NEAR_PANEL, sc->pool + (size_t)q * NEAR_GROUPS);
        u = near_rank_value(sc->pool, NEAR_GROUPS * panels, r - 1);
    } else if (r > 1) {
        u = INFINITY;
    }
    const float thr_u = near_threshold(job, xn, u);
    uint32_t m = 0;
    for (uint32_t q = 0; q < panels; q++) {
        if (sc->pmin[q] > thr_u)
            continue;
        const uint32_t c0 = q * NEAR_PANEL;
        if (c0 >= k)
            break; /* the rest is padding, +inf, which an infinite window admits */
        uint32_t hits = near_panel_hits(arow + c0, thr_u);
        if (k - c0 < NEAR_PANEL)
            hits &= (1u << (k - c0)) - 1u;
        while (hits) {
            const uint32_t c = c0 + (uint32_t)__builtin_ctz(hits);
            hits &= hits - 1u;
            sc->pool[m] = near_key(arow[c]);
            sc->cand[m++] = (near_cand){arow[c], c};
        }
    }
    assert(m >= r);
    const float thr_t = near_threshold(job, xn, near_rank_value(sc->pool, m, r - 1));
    uint32_t e = 0;
    for (uint32_t j = 0; j < m; j++) {
        if (!(sc->cand[j].dist > thr_t)) {
            const uint32_t c = sc->cand[j].id;
            const float *const cv = job->centroids + (size_t)c * job->dim;
            sc->cand[e++] = (near_cand){near_key(job->dist(xrow, cv, job->dim)), c};
        }
    }
    assert(e >= r);
    if (e > NEAR_INSERTION_MAX)
        near_cands_sort(sc->cand, (ptrdiff_t)e);
    else
        near_cand_sort_small(sc->cand, e);
    for (uint32_t j = 0; j < r; j++) {
        ids[j] = sc->cand[j].id;
        dists[j] = sc->cand[j].dist;
    }
}

/* ==== Nearest centroids: blocks ==== */

/* Squared norm in double, four independent sums so the adds overlap. */
static float near_norm(const float *v, size_t dim) {
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    size_t j = 0;
    for (; j + 4 <= dim; j += 4)
        for (size_t l = 0; l < 4; l++)
            s[l] += (double)v[j + l] * v[j + l];
    for (; j < dim; j++)
        s[0] += (double)v[j] * v[j];
    return (float)((s[0] + s[1]) + (s[2] + s[3]));
}

/* Rows [b0, b0 + count) of job->x, count <= NEAR_ROWS. */
static void near_block(const near_job *job, near_scratch *sc, size_t b0, size_t count) {
    const size_t dim = job->dim, kpad = job->kpad;
    const near_kernel kern = job->kernel;
    float *const xb = sc->xb, *const xn = sc->xn, *const a = sc->a;
    for (size_t i = 0; i < count; i++)
        for (size_t j = 0; j < dim; j++)
            xb[i * dim + j] = job->x[(b0 + i) * dim + j] - job->mu[j];
    memset(xb + count * dim, 0, (NEAR_ROWS - count) * dim * sizeof *xb);
    for (size_t i = 0; i < NEAR_ROWS; i++)
        xn[i] = near_norm(xb + i * dim, dim);
    const size_t rows = (count + kern.rows - 1) / kern.rows * kern.rows;
    for (size_t c0 = 0; c0 < kpad; c0 += job->chunk_cols) {
        const size_t c1 = c0 + job->chunk_cols < kpad ? c0 + job->chunk_cols : kpad;
        for (size_t i = 0; i < rows; i += kern.rows)
            for (size_t c = c0; c < c1; c += kern.cols)
                kern.fn(xb + i * dim, xn + i, dim, job->panels + c * dim, job->cn + c,
                        a + i * kpad + c, kpad);
    }
    for (size_t i = 0; i < count; i++)
        near_select(job, sc, b0 + i, xn[i], a + i * kpad);
}

/* ==== Training helpers ==== */

/* m sorted distinct indices in [0, n), uniformly (Knuth's Algorithm S). */
static void sample_sorted(kiln_rng *rng, size_t n, size_t m, uint32_t *out) {
    size_t need = m;
    for (size_t i = 0; i < n && need > 0; i++) {
        if (kiln_rng_below(rng, n - i) < need) {
            out[m - need] = (uint32_t)i;
            need--;
        }
    }
}

/* k-means++ on the m rows pts[0..m) of job->rows (decision 4): job->k
 * seeds into centroids. */
static kiln_status kmeanspp(kiln_ctx *ctx, const train_job *job, const uint32_t *pts, size_t m,
                            float *centroids) {
    const float *const x = job->rows.x;
    const uint32_t k = job->k, dim = job->rows.dim;
    kiln_rng *const rng = job->rng;
    if (m == k) {
        for (uint32_t c = 0; c < k; c++)
            memcpy(centroids + (size_t)c * dim, x + (size_t)pts[c] * dim, dim * sizeof(float));
        return KILN_OK;
    }
    float *mind = NULL;
    bool *chosen = NULL;
    kiln_status st = kiln_alloc(ctx, m * sizeof *mind, "k-means++ distances", (void **)&mind);
    if (st == KILN_OK)
        st = kiln_calloc(ctx, m * sizeof *chosen, "k-means++ flags", (void **)&chosen);
    if (st != KILN_OK) {
        free(mind);
        return st;
    }
    const kiln_dist_fn dist = kiln_distance_fn(KILN_METRIC_L2);
    const int team = m * dim >= KMEANS_PARALLEL_MIN ? job->threads : 1;
    size_t pick = (size_t)kiln_rng_below(rng, m);
    for (uint32_t c = 0;; c++) {
        chosen[pick] = true;
        float *const cv = centroids + (size_t)c * dim;
        memcpy(cv, x + (size_t)pts[pick] * dim, dim * sizeof(float));
        if (c + 1 == k)
            break;
        const long lm = (long)m;
#pragma omp parallel for num_threads(team) schedule(static)
        for (long i = 0; i < lm; i++) {
            const float d = near_key(dist(x + (size_t)pts[i] * dim, cv, dim));
            if (c == 0 || d < mind[i])
                mind[i] = d;
        }
        double total = 0.0;
        for (size_t i = 0; i < m; i++)
            total += chosen[i] ? 0.0 : (double)mind[i];
        if (total > 0.0 && isfinite(total)) {
            const double target = kiln_rng_uniform(rng) * total;
            double cum = 0.0;
            pick = SIZE_MAX;
            for (size_t i = 0; i < m; i++) {
                if (chosen[i] || !(mind[i] > 0.0f))
                    continue;
                pick = i; /* the last eligible row, should rounding leave cum < target */
                cum += (double)mind[i];
                if (cum >= target)
                    break;
            }
        } else {
            /* Every row coincides with a seed (or the data is not finite):
             * any unchosen row will do. */
            size_t left = 0;
            for (size_t i = 0; i < m; i++)
                left += !chosen[i];
            size_t skip = (size_t)kiln_rng_below(rng, left);
            for (pick = 0; chosen[pick] || skip-- > 0; pick++)
                ;
        }
    }
    free(mind);
    free(chosen);
    return KILN_OK;
}

/* Checks a backend's ids, so a faulty device path fails loudly here rather
 * than corrupting memory later. */
static kiln_status check_ids(kiln_ctx *ctx, const uint32_t *ids, size_t count, uint32_t k) {
    for (size_t i = 0; i < count; i++)
        if (ids[i] >= k)
            return kiln_fail(ctx, KILN_E_INTERNAL,
                             "nearest-centroid backend returned centroid id %u >= k %u at "
                             "entry %zu",
                             ids[i], k, i);
    return KILN_OK;
}

/* One Lloyd update from s->assign: each centroid becomes the
 * double-precision mean of its rows in sample order (decision 5); empty
 * clusters keep their centroid and are reported through an empty range.
 * s->order/offsets come out as the CSR of rows by cluster. */
static void lloyd_update(const train_job *job, lloyd_scratch *s, float *centroids) {
    const float *const xs = job->rows.x;
    const size_t m = job->rows.n;
    const uint32_t dim = job->rows.dim, k = job->k;
    const uint32_t *const assign = s->assign;
    uint64_t *const offsets = s->offsets;
    uint32_t *const order = s->order;
    memset(offsets, 0, (k + 1) * sizeof *offsets);
    for (size_t i = 0; i < m; i++)
        offsets[assign[i] + 1]++;
    for (uint32_t c = 0; c < k; c++)
        offsets[c + 1] += offsets[c];
    for (size_t i = 0; i < m; i++)
        order[offsets[assign[i]]++] = (uint32_t)i;
    for (uint32_t c = k; c > 0; c--)
        offsets[c] = offsets[c - 1];
    offsets[0] = 0;
    const long lk = (long)k;
    const int team = m * dim >= KMEANS_PARALLEL_MIN ? job->threads : 1;
#pragma omp parallel for num_threads(team) schedule(dynamic, 16)
    for (long c = 0; c < lk; c++) {
        const uint64_t b = offsets[c], e = offsets[c + 1];
        if (b == e)
            continue;
        double *const acc = s->acc + (size_t)omp_get_thread_num() * dim;
        memset(acc, 0, dim * sizeof *acc);
        for (uint64_t t = b; t < e; t++) {
            const float *const row = xs + (size_t)order[t] * dim;
            for (uint32_t j = 0; j < dim; j++)
                acc[j] += row[j];
        }
        float *const cv = centroids + (size_t)c * dim;
        for (uint32_t j = 0; j < dim; j++)
            cv[j] = (float)(acc[j] / (double)(e - b));
    }
}

/* Splits the largest cluster into every empty one (decision 7), from the
 * CSR that lloyd_update left in s. Returns the number of clusters
 * re-seeded. */
static uint32_t reseed_empty(const train_job *job, lloyd_scratch *s, float *centroids) {
    const float *const xs = job->rows.x;
    const uint32_t dim = job->rows.dim, k = job->k;
    const uint64_t *const offsets = s->offsets;
    const uint32_t *const order = s->order;
    uint64_t *const est = s->est;
    uint32_t *const src = s->src;
    uint32_t reseeded = 0;
    for (uint32_t c = 0; c < k; c++) {
        est[c] = offsets[c + 1] - offsets[c];
        src[c] = c;
    }
    for (uint32_t j = 0; j < k; j++) {
        if (offsets[j + 1] != offsets[j])
            continue;
        uint32_t big = 0;
        for (uint32_t c = 1; c < k; c++)
            if (est[c] > est[big])
                big = c;
        const uint64_t members = offsets[src[big] + 1] - offsets[src[big]];
        if (est[big] < 2 || members == 0)
            break;
        const uint32_t pick = order[offsets[src[big]] + kiln_rng_below(job->rng, members)];
        const float *const pv = xs + (size_t)pick * dim;
        float *const cb = centroids + (size_t)big * dim, *const cj = centroids + (size_t)j * dim;
        for (uint32_t t = 0; t < dim; t++) {
            const float step = KMEANS_SPLIT_STEP * (pv[t] - cb[t]);
            cj[t] = cb[t] + step;
            cb[t] -= step;
        }
        est[j] = est[big] / 2;
        est[big] -= est[j];
        src[j] = src[big];
        reseeded++;
    }
    return reseeded;
}

/* ==== Public: parameters ==== */

void kiln_kmeans_params_init(kiln_kmeans_params *p) {
    memset(p, 0, sizeof *p);
    p->target_size = KMEANS_DEFAULT_TARGET;
    p->replicas = KMEANS_DEFAULT_REPLICAS;
    p->spare = KMEANS_DEFAULT_SPARE;
    p->iters = KMEANS_DEFAULT_ITERS;
    p->seed = 1;
}

kiln_status kiln_kmeans_k(kiln_ctx *ctx, size_t n, const kiln_kmeans_params *p, uint32_t *k) {
    if (!p || !k)
        return kiln_fail(ctx, KILN_E_ARG, "k-means: params and k must not be NULL");
    *k = 0;
    if (n == 0)
        return kiln_fail(ctx, KILN_E_ARG, "k-means: no vectors to cluster");
    if (n > UINT32_MAX)
        return kiln_fail(ctx, KILN_E_ARG, "k-means: %zu vectors exceed the 32-bit id range", n);
    if (p->replicas == 0)
        return kiln_fail(ctx, KILN_E_ARG, "k-means: replicas must be >= 1");
    uint64_t kk;
    if (p->clusters) {
        if (p->clusters > n)
            return kiln_fail(ctx, KILN_E_ARG, "k-means: clusters %u exceeds the %zu vectors",
                             p->clusters, n);
        kk = p->clusters;
    } else {
        if (p->target_size == 0)
            return kiln_fail(ctx, KILN_E_ARG,
                             "k-means: target_size must be >= 1 when clusters is 0");
        const uint64_t slots = (uint64_t)n * p->replicas;
        kk = (slots + p->target_size - 1) / p->target_size;
        if (p->extra && p->extra_share > 0) { /* the boundary extras' placements too */
            const double want = ceil((double)n * (p->replicas + (double)p->extra * p->extra_share) /
                                     p->target_size);
            kk = want < 1 ? 1 : want > (double)n ? n : (uint64_t)want;
        }
        if (p->max_size && (slots + p->max_size - 1) / p->max_size > kk)
            kk = (slots + p->max_size - 1) / p->max_size;
        if (kk < p->replicas)
            kk = p->replicas;
        if (kk > n)
            kk = n;
    }
    const uint32_t rep = p->replicas < kk ? p->replicas : (uint32_t)kk;
    if (p->max_size && kk * p->max_size < (uint64_t)n * rep)
        return kiln_fail(ctx, KILN_E_ARG,
                         "k-means: cluster cap too small: %llu clusters x max_size %u = %llu "
                         "slots < %zu vectors x %u replicas",
                         (unsigned long long)kk, p->max_size,
                         (unsigned long long)(kk * p->max_size), n, rep);
    *k = (uint32_t)kk;
    return KILN_OK;
}

/* ==== Public: CPU backend ==== */

kiln_status kiln_nearest_cpu(void *user, kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                             uint32_t r, kiln_nearest_out out) {
    const kiln_nearest_cpu_opts *const opts = user;
    const float *const x = rows.x, *const centroids = cent.c;
    const size_t n = rows.n;
    const uint32_t k = cent.k, dim = rows.dim;
    uint32_t *const ids = out.ids;
    float *const dists = out.dists;
    if (n == 0)
        return KILN_OK;
    if (!x || !centroids || !ids || !dists)
        return kiln_fail(ctx, KILN_E_ARG, "nearest centroids: NULL array");
    if (k == 0 || dim == 0 || r == 0 || r > k)
        return kiln_fail(ctx, KILN_E_ARG,
                         "nearest centroids: need k >= 1, dim >= 1, 1 <= r <= k (k %u, dim %u, "
                         "r %u)",
                         k, dim, r);
    if (cent.dim != dim)
        return kiln_fail(ctx, KILN_E_ARG, "nearest centroids: rows of dim %u, centroids of dim %u",
                         dim, cent.dim);
    near_job job = {.x = x,
                    .centroids = centroids,
                    .n = n,
                    .k = k,
                    .dim = dim,
                    .r = r,
                    .kernel = near_pick_kernel(),
                    .dist = kiln_distance_fn(KILN_METRIC_L2),
                    .ids = ids,
                    .dists = dists};
    job.kpad = ((size_t)k + NEAR_COL_ALIGN - 1) / NEAR_COL_ALIGN * NEAR_COL_ALIGN;
    size_t chunk = NEAR_CHUNK_BYTES / ((size_t)dim * sizeof(float)) / NEAR_COL_ALIGN;
    job.chunk_cols = (chunk ? chunk : 1) * NEAR_COL_ALIGN;

    const size_t blocks = (n + NEAR_ROWS - 1) / NEAR_ROWS;
    int threads = kiln_threads(opts ? opts->threads : 0);
    if ((size_t)threads > blocks)
        threads = (int)blocks;
        /* Per-thread scratch (near_scratch), each part rounded to 64 bytes. */
#define NEAR_ROUND64(bytes) (((bytes) + 63) & ~(size_t)63)
    const size_t xb_b = NEAR_ROUND64((size_t)NEAR_ROWS * dim * sizeof(float));
    const size_t xn_b = NEAR_ROUND64(NEAR_ROWS * sizeof(float));
    const size_t pmin_b = NEAR_ROUND64(job.kpad / NEAR_PANEL * sizeof(float));
    const size_t pool_b = NEAR_ROUND64(job.kpad * sizeof(float));
    const size_t cand_b = NEAR_ROUND64((size_t)k * sizeof(near_cand));
#undef NEAR_ROUND64
    size_t a_b, per_thread, scratch_b, panel_b;
    if (kiln_mul_size((size_t)NEAR_ROWS * sizeof(float), job.kpad, &a_b) ||
        kiln_add_size(xb_b + xn_b + pmin_b + pool_b + cand_b, a_b, &per_thread) ||
        kiln_mul_size(per_thread, (size_t)threads, &scratch_b) ||
        kiln_mul_size(job.kpad + 1, ((size_t)dim + 1) * sizeof(float), &panel_b))
        return kiln_fail(ctx, KILN_E_ARG, "nearest centroids: %u centroids of dim %u overflow", k,
                         dim);
    float *panels = NULL;
    unsigned char *scratch = NULL;
    kiln_status st = kiln_alloc_aligned(ctx, panel_b, "packed centroids", (void **)&panels);
    if (st == KILN_OK)
        st = kiln_alloc_aligned(ctx, scratch_b, "nearest-centroid scratch", (void **)&scratch);
    if (st != KILN_OK) {
        kiln_free_aligned(panels);
        return st;
    }

    /* Centre on the centroids' mean: distances do not change, but the norms
     * in the expansion, and with them its rounding and the candidate window,
     * shrink to the spread of the data rather than its offset from 0. */
    float *const cn = panels + job.kpad * dim;
    float *const mu = cn + job.kpad;
    for (size_t j = 0; j < dim; j++) {
        double s = 0.0;
        for (size_t c = 0; c < k; c++)
            s += centroids[c * dim + j];
        mu[j] = (float)(s / k);
    }
    /* Pack: panel q holds centroids 16q..16q+15 as dim rows of 16. */
    double cn_max = 0.0;
    for (size_t c = 0; c < job.kpad; c++) {
        float *const dst = panels + (c / NEAR_PANEL) * NEAR_PANEL * dim + c % NEAR_PANEL;
        if (c >= k) {
            for (size_t j = 0; j < dim; j++)
                dst[j * NEAR_PANEL] = 0.0f;
            cn[c] = INFINITY;
            continue;
        }
        const float *const src = centroids + c * dim;
        double s = 0.0;
        for (size_t j = 0; j < dim; j++) {
            const float v = src[j] - mu[j];
            dst[j * NEAR_PANEL] = v;
            s += (double)v * v;
        }
        cn[c] = (float)s;
        if (isfinite(cn[c]) && cn[c] > cn_max)
            cn_max = cn[c];
    }
    job.mu = mu;
    job.panels = panels;
    job.cn = cn;
    job.cn_max = cn_max;

    const long lblocks = (long)blocks;
#pragma omp parallel num_threads(threads)
    {
        unsigned char *at = scratch + (size_t)omp_get_thread_num() * per_thread;
        near_scratch sc;
        sc.xb = (float *)at;
        sc.xn = (float *)(at += xb_b);
        sc.pmin = (float *)(at += xn_b);
        sc.pool = (float *)(at += pmin_b);
        sc.cand = (near_cand *)(at += pool_b);
        sc.a = (float *)(at + cand_b);
#pragma omp for schedule(dynamic, 1)
        for (long b = 0; b < lblocks; b++) {
            const size_t b0 = (size_t)b * NEAR_ROWS;
            const size_t count = n - b0 < NEAR_ROWS ? n - b0 : NEAR_ROWS;
            near_block(&job, &sc, b0, count);
        }
    }
    kiln_free_aligned(scratch);
    kiln_free_aligned(panels);
    return KILN_OK;
}

/* ==== Training core ==== */

/* Up to job->iters Lloyd iterations on job->rows from the job->k centroids
 * as they are, drawing splits from job->rng. */
static kiln_status lloyd_rows(kiln_ctx *ctx, const train_job *job, float *centroids) {
    /* Everything is sized by m, whose rows the caller already holds. */
    const size_t m = job->rows.n;
    const uint32_t dim = job->rows.dim, k = job->k, iters = job->iters;
    lloyd_scratch s = {0};
    kiln_status st =
        kiln_alloc(ctx, m * sizeof *s.assign, "k-means assignment", (void **)&s.assign);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, m * sizeof *s.prev, "k-means assignment", (void **)&s.prev);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, m * sizeof *s.dists, "k-means distances", (void **)&s.dists);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, m * sizeof *s.order, "k-means order", (void **)&s.order);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, ((size_t)k + 1) * sizeof *s.offsets, "k-means offsets",
                        (void **)&s.offsets);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)k * sizeof *s.est, "k-means sizes", (void **)&s.est);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)k * sizeof *s.src, "k-means split sources", (void **)&s.src);
    if (st == KILN_OK)
        st = kiln_alloc(ctx, (size_t)job->threads * dim * sizeof *s.acc, "k-means sums",
                        (void **)&s.acc);
    if (st != KILN_OK)
        goto done;

    const kiln_centroids cent = {centroids, k, dim};
    uint32_t reseeded = 0;
    for (uint32_t it = 0; it < iters; it++) {
        st = job->nearest.fn(job->nearest.user, ctx, job->rows, cent, 1,
                             (kiln_nearest_out){s.assign, s.dists});
        if (st == KILN_OK)
            st = check_ids(ctx, s.assign, m, k);
        if (st != KILN_OK)
            break;
        /* Same assignment as last time, and no split since: the means
         * would come out the same, so the centroids have converged. */
        if (it > 0 && reseeded == 0 && memcmp(s.assign, s.prev, m * sizeof *s.assign) == 0) {
            if (job->bar)
                kiln_progress_add(job->bar, iters - it);
            break;
        }
        lloyd_update(job, &s, centroids);
        reseeded = reseed_empty(job, &s, centroids);
        uint32_t *const t = s.prev;
        s.prev = s.assign;
        s.assign = t;
        if (job->bar)
            kiln_progress_add(job->bar, 1);
    }

done:
    free(s.assign);
    free(s.prev);
    free(s.dists);
    free(s.order);
    free(s.offsets);
    free(s.est);
    free(s.src);
    free(s.acc);
    return st;
}

/* k-means++ seeding (decision 4) and Lloyd on exactly job->rows
 * (1 <= k <= m), drawing from job->rng. */
static kiln_status train_rows(kiln_ctx *ctx, const train_job *job, float *centroids) {
    const size_t m = job->rows.n;
    const uint32_t k = job->k;
    assert(k >= 1 && k <= m);
    uint64_t mpp = KMEANS_PP_WORK / ((uint64_t)k * job->rows.dim);
    if (mpp > (uint64_t)KMEANS_PP_PER_CLUSTER * k)
        mpp = (uint64_t)KMEANS_PP_PER_CLUSTER * k;
    if (mpp < k)
        mpp = k;
    if (mpp > m)
        mpp = m;
    uint32_t *pp_ids = NULL;
    kiln_status st = kiln_alloc(ctx, mpp * sizeof *pp_ids, "k-means++ rows", (void **)&pp_ids);
    if (st != KILN_OK)
        return st;
    sample_sorted(job->rng, m, mpp, pp_ids);
    st = kmeanspp(ctx, job, pp_ids, mpp, centroids);
    free(pp_ids);
    if (st == KILN_OK)
        st = lloyd_rows(ctx, job, centroids);
    return st;
}

/* ==== Public: training ==== */

/* out[i] = rows.x[ids[i]] for i < m, in parallel: the copy is the first
 * touch of out's pages, which costs far more than the copy where memory
 * comes from a host (graph/hnsw_index.c decision 4). */
static void gather_rows(kiln_rows rows, const uint32_t *ids, size_t m, int threads, float *out) {
    const size_t dim = rows.dim;
#pragma omp parallel for num_threads(threads) schedule(static, 1024) if (m > 65536)
    for (size_t i = 0; i < m; i++)
        memcpy(out + i * dim, rows.x + (size_t)ids[i] * dim, dim * sizeof *out);
}

size_t kiln_kmeans_sample_rows(size_t n, uint32_t k, const kiln_kmeans_params *p) {
    uint64_t m = p->sample ? p->sample : (uint64_t)KMEANS_SAMPLE_PER_CLUSTER * k;
    if (m < k)
        m = k;
    if (m > n)
        m = n;
    return (size_t)m;
}

kiln_status kiln_kmeans_sample(kiln_ctx *ctx, kiln_rows rows, size_t m, uint64_t seed, int threads,
                               float *out) {
    const size_t n = rows.n;
    if (m > n)
        return kiln_fail(ctx, KILN_E_ARG, "k-means sample: %zu rows out of %zu", m, n);
    uint32_t *ids = NULL;
    kiln_status st = kiln_alloc(ctx, m * sizeof *ids, "k-means sample ids", (void **)&ids);
    if (st != KILN_OK)
        return st;
    kiln_rng rng;
    kiln_rng_seed(&rng, seed ^ KMEANS_RNG_STREAM);
    sample_sorted(&rng, n, m, ids);
    gather_rows(rows, ids, m, kiln_threads(threads), out);
    free(ids);
    return KILN_OK;
}

/* The checks and the job of one run; refine = Lloyd steps from the given
 * centroids (kiln_kmeans_refine_rows), else seeding first. */
static kiln_status run_rows(kiln_ctx *ctx, kiln_rows rows, uint32_t k, const kiln_kmeans_run *run,
                            float *centroids, bool refine) {
    if (!rows.x || !centroids || !run || rows.dim == 0 || k == 0 || k > rows.n)
        return kiln_fail(ctx, KILN_E_ARG,
                         "k-means: need rows, centroids, run settings, dim >= 1 and 1 <= k <= rows "
                         "(k %u, rows %zu)",
                         k, rows.n);
    kiln_nearest_cpu_opts cpu = {.threads = run->threads};
    kiln_rng rng;
    kiln_rng_seed(&rng, run->seed ^ KMEANS_RNG_STREAM);
    const train_job job = {.rows = rows,
                           .k = k,
                           .iters = run->iters,
                           .threads = kiln_threads(run->threads),
                           .rng = &rng,
                           .nearest = kiln_nearest_or_cpu(&run->nearest, &cpu),
                           .bar = run->bar};
    return refine ? lloyd_rows(ctx, &job, centroids) : train_rows(ctx, &job, centroids);
}

kiln_status kiln_kmeans_train_rows(kiln_ctx *ctx, kiln_rows rows, uint32_t k,
                                   const kiln_kmeans_run *run, float *centroids) {
    return run_rows(ctx, rows, k, run, centroids, false);
}

kiln_status kiln_kmeans_refine_rows(kiln_ctx *ctx, kiln_rows rows, uint32_t k,
                                    const kiln_kmeans_run *run, float *centroids) {
    return run_rows(ctx, rows, k, run, centroids, true);
}

kiln_status kiln_kmeans_train(kiln_ctx *ctx, kiln_rows rows, const kiln_kmeans_params *p,
                              const kiln_nearest_backend *nearest, float *centroids) {
    const size_t n = rows.n;
    const uint32_t dim = rows.dim;
    uint32_t k;
    kiln_status st = kiln_kmeans_k(ctx, n, p, &k);
    if (st != KILN_OK)
        return st;
    if (!rows.x || !centroids || dim == 0)
        return kiln_fail(ctx, KILN_E_ARG, "k-means: need rows, centroids and dim >= 1");
    kiln_nearest_cpu_opts cpu = {.threads = p->threads};
    kiln_rng rng;
    kiln_rng_seed(&rng, p->seed ^ KMEANS_RNG_STREAM);
    const size_t m = kiln_kmeans_sample_rows(n, k, p);

    /* The sample is drawn from the same stream that then seeds and splits,
     * so the sequence of draws is sample, k-means++ rows, seeds, splits. */
    uint32_t *sample_ids = NULL;
    float *copy = NULL;
    const float *xs = rows.x;
    if (m < n) {
        st = kiln_alloc(ctx, m * sizeof *sample_ids, "k-means sample ids", (void **)&sample_ids);
        if (st == KILN_OK)
            st = kiln_alloc(ctx, m * dim * sizeof *copy, "k-means sample rows", (void **)&copy);
        if (st != KILN_OK)
            goto done;
        sample_sorted(&rng, n, m, sample_ids);
        gather_rows(rows, sample_ids, m, kiln_threads(p->threads), copy);
        xs = copy;
    }
    kiln_progress_bar bar;
    kiln_progress_begin(&bar, ctx, "kmeans", p->iters);
    const train_job job = {.rows = {xs, m, dim},
                           .k = k,
                           .iters = p->iters,
                           .threads = kiln_threads(p->threads),
                           .rng = &rng,
                           .nearest = kiln_nearest_or_cpu(nearest, &cpu),
                           .bar = &bar};
    st = train_rows(ctx, &job, centroids);
    kiln_progress_end(&bar);

done:
    free(sample_ids);
    free(copy);
    return st;
}
