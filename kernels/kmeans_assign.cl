/* kmeans_assign.cl -- the KILN_TOP nearest centroids of each vector, by
 * squared L2 on float data (OpenCL C 1.2).
 *
 * Input: n rows of KILN_DIM floats, c centroids of KILN_DIM floats.
 * Output: for row i, labels[i * TOP + j] and dists[i * TOP + j], j < TOP, its
 * nearest centroids nearest first, ties by smaller index, a NaN distance
 * ranking as +inf; (UINT_MAX, INFINITY) past c. This is the contract of
 * kiln_nearest_fn in cluster/kmeans_internal.h.
 *
 * Design decisions:
 *  1. Float data, not codes: centroids are means and lose most of what makes
 *     them useful when forced onto the 16 levels of the codes, and k-means
 *     runs on a sample, so the float traffic is affordable.
 *  2. TOP results per vector in one pass, so the pipeline can put a vector
 *     into its nearest clusters, with spares for capped clusters.
 *  3. One work-item per vector; centroids are staged in local memory in
 *     chunks of KILN_CHUNK where local memory is real (KILN_STAGE_LOCAL=1),
 *     as in knn_q4.cl.
 *  4. Sums run over dimensions in order with contraction off, so a host loop
 *     in the same order gives the same floats; tests still allow a relative
 *     tolerance, since devices may differ in denormal handling.
 *  5. (distance, index) is compared as a pair, centroids are scanned in index
 *     order and the sentinel is (INFINITY, UINT_MAX): ties go to the smaller
 *     index, and +inf (or NaN) distances still fill the list in index order.
 */
#pragma OPENCL FP_CONTRACT OFF

/* The host passes every option (host/cl_runtime.c); these defaults only let
 * editors and `clang -x cl -cl-std=CL1.2 -fsyntax-only` check the file. */
#ifndef KILN_DIM
#define KILN_DIM 128
#endif
#ifndef KILN_LWS
#define KILN_LWS 64
#endif
#ifndef KILN_CHUNK
#define KILN_CHUNK 16
#endif
#ifndef KILN_TOP
#define KILN_TOP 2
#endif
#if KILN_DIM < 1 || KILN_LWS < 1 || KILN_CHUNK < 1
#error "KILN_DIM, KILN_LWS and KILN_CHUNK must be positive"
#endif
#if KILN_TOP < 1 || KILN_TOP > 64
#error "KILN_TOP out of range 1..64"
#endif
#ifndef KILN_STAGE_LOCAL
#define KILN_STAGE_LOCAL 0
#endif

#if KILN_STAGE_LOCAL
#define CENT_SPACE __local
#else
#define CENT_SPACE __global
#endif

float l2sq(const __global float *a, const CENT_SPACE float *b) {
    float acc = 0.0f;
    for (int i = 0; i < KILN_DIM; i++) {
        const float t = a[i] - b[i];
        acc = acc + t * t;
    }
    return acc;
}

__kernel __attribute__((reqd_work_group_size(KILN_LWS, 1, 1))) void
kiln_kmeans_assign(__global const float *restrict rows, const uint n,
                   __global const float *restrict centroids, const uint c,
                   __global uint *restrict labels, __global float *restrict dists) {
#if KILN_STAGE_LOCAL
    __local float l_cent[KILN_CHUNK * KILN_DIM];
#endif
    const uint i = (uint)get_global_id(0);
    const bool active = i < n;
    const __global float *const x = rows + (size_t)(active ? i : 0) * KILN_DIM;
    float bd[KILN_TOP];
    uint bl[KILN_TOP];
    for (int j = 0; j < KILN_TOP; j++) {
        bd[j] = INFINITY;
        bl[j] = UINT_MAX;
    }
    for (uint base = 0; base < c; base += KILN_CHUNK) {
        const uint m = min((uint)KILN_CHUNK, c - base);
#if KILN_STAGE_LOCAL
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint j = (uint)get_local_id(0); j < m * KILN_DIM; j += KILN_LWS)
            l_cent[j] = centroids[(size_t)base * KILN_DIM + j];
        barrier(CLK_LOCAL_MEM_FENCE);
        const __local float *const cc = l_cent;
#else
        const __global float *const cc = centroids + (size_t)base * KILN_DIM;
#endif
        if (!active)
            continue;
        for (uint j = 0; j < m; j++) {
            float d = l2sq(x, cc + (size_t)j * KILN_DIM);
            d = isnan(d) ? INFINITY : d;
            const uint id = base + j;
            /* id exceeds every listed index, so it enters only on a smaller distance,
             * or on +inf against an unfilled sentinel. */
            if (!(d < bd[KILN_TOP - 1] || (d == bd[KILN_TOP - 1] && bl[KILN_TOP - 1] == UINT_MAX)))
                continue;
            int p = KILN_TOP - 1;
            while (p > 0 && (bd[p - 1] > d || (bd[p - 1] == d && bl[p - 1] == UINT_MAX))) {
                bd[p] = bd[p - 1];
                bl[p] = bl[p - 1];
                p--;
            }
            bd[p] = d;
            bl[p] = id;
        }
    }
    if (!active)
        return;
    for (int j = 0; j < KILN_TOP; j++) {
        labels[(size_t)i * KILN_TOP + j] = bl[j];
        dists[(size_t)i * KILN_TOP + j] = bd[j];
    }
}
