/* knn_q4.cl -- per-cluster exact top-K on 4-bit bit-sliced codes (OpenCL C 1.2).
 *
 * Input, one batch of clusters in CSR form (batch-local slot numbers):
 *   offsets[c] .. offsets[c+1]   the slots of cluster c
 *   codes[s * 4W ..]             slot s's bit planes (host/quant4_internal.h)
 *   norms[s], ids[s]             its distance term and global vector id
 *   tiles[g] = (c, first slot)   what work-group g works on
 * Output: out[s * K + j] = (dist, id) of slot s's j-th nearest other member,
 * ascending by (dist, id), padded with (UINT_MAX, UINT_MAX).
 *
 * Design decisions:
 *  1. A work-group owns a tile of KILN_LWS queries of one cluster (one query
 *     per work-item) and walks the whole cluster in chunks of KILN_CHUNK
 *     candidates. On devices with real local memory (KILN_STAGE_LOCAL=1) the
 *     work-group copies each chunk there once, coalesced, and every work-item
 *     reads the same candidate at the same time (a broadcast). Where local
 *     memory is ordinary memory (CPU runtimes such as PoCL report
 *     CL_GLOBAL) the copy is pure cost, so candidates are read in place.
 *  2. (dist, id) is compared as one 64-bit key dist << 32 | id: ties go to the
 *     smaller id with no second comparison, and the padding (UINT_MAX,
 *     UINT_MAX) is ULONG_MAX, larger than any real key.
 *  3. Each work-item keeps its K best keys sorted in a private array with
 *     insertion from the back. After the first K candidates almost every key
 *     fails the single comparison against best[K-1], so the insertion cost
 *     is rare; GPUs spill the array to cached scratch memory for large K.
 *  4. The distance groups the 16 plane pairs by p + q and is integer-exact:
 *     kiln_q4_dist_ref() in host/quant4.c is its scalar reference and the
 *     tests require equality.
 *  5. Self is excluded by id, not by slot, so a vector listed twice in one
 *     cluster is never its own neighbour (members should be distinct).
 *  6. Every size is a -D option (host/cl_runtime.c composes them), so loops
 *     over W unroll and local arrays have static sizes.
 */

/* The host passes every option (host/cl_runtime.c); these defaults only let
 * editors and `clang -x cl -cl-std=CL1.2 -fsyntax-only` check the file. */
#ifndef KILN_K
#define KILN_K 32
#endif
#ifndef KILN_W
#define KILN_W 2
#endif
#ifndef KILN_LWS
#define KILN_LWS 64
#endif
#ifndef KILN_CHUNK
#define KILN_CHUNK 32
#endif
#if KILN_K < 1 || KILN_K > 256
#error "KILN_K out of range 1..256"
#endif
#if KILN_W < 1 || KILN_LWS < 1 || KILN_CHUNK < 1
#error "KILN_W, KILN_LWS and KILN_CHUNK must be positive"
#endif
#ifndef KILN_STAGE_LOCAL
#define KILN_STAGE_LOCAL 0
#endif
#ifndef KILN_NO_POPCOUNT
#define KILN_NO_POPCOUNT 0
#endif

#define Q4_STRIDE (4 * KILN_W)

#if KILN_STAGE_LOCAL
#define CAND_SPACE __local
#else
#define CAND_SPACE __global
#endif

#if KILN_NO_POPCOUNT
/* OpenCL C 1.1 devices lack popcount(): the classic SWAR count. */
uint q4_popcount(ulong x) {
    x = x - ((x >> 1) & 0x5555555555555555UL);
    x = (x & 0x3333333333333333UL) + ((x >> 2) & 0x3333333333333333UL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fUL;
    return (uint)((x * 0x0101010101010101UL) >> 56);
}
#else
#define q4_popcount(x) ((uint)popcount(x))
#endif

/* Must equal kiln_q4_dist_ref() bit for bit (decision 4). */
uint q4_dist(const __global ulong *a, const uint na, const CAND_SPACE ulong *b, const uint nb) {
    uint dot = 0;
    for (int w = 0; w < KILN_W; w++) {
        const ulong a0 = a[w], a1 = a[KILN_W + w], a2 = a[2 * KILN_W + w], a3 = a[3 * KILN_W + w];
        const ulong b0 = b[w], b1 = b[KILN_W + w], b2 = b[2 * KILN_W + w], b3 = b[3 * KILN_W + w];
        dot += q4_popcount(a0 & b0);
        dot += (q4_popcount(a0 & b1) + q4_popcount(a1 & b0)) << 1;
        dot += (q4_popcount(a0 & b2) + q4_popcount(a1 & b1) + q4_popcount(a2 & b0)) << 2;
        dot += (q4_popcount(a0 & b3) + q4_popcount(a1 & b2) + q4_popcount(a2 & b1) +
                q4_popcount(a3 & b0))
               << 3;
        dot += (q4_popcount(a1 & b3) + q4_popcount(a2 & b2) + q4_popcount(a3 & b1)) << 4;
        dot += (q4_popcount(a2 & b3) + q4_popcount(a3 & b2)) << 5;
        dot += q4_popcount(a3 & b3) << 6;
    }
    return na + nb - 2u * dot;
}

__kernel __attribute__((reqd_work_group_size(KILN_LWS, 1, 1))) void
kiln_knn_q4(__global const uint2 *restrict tiles, __global const uint *restrict offsets,
            __global const ulong *restrict codes, __global const uint *restrict norms,
            __global const uint *restrict ids, __global uint2 *restrict out) {
#if KILN_STAGE_LOCAL
    __local ulong l_codes[KILN_CHUNK * Q4_STRIDE];
    __local uint l_norms[KILN_CHUNK];
    __local uint l_ids[KILN_CHUNK];
#endif
    const uint lid = (uint)get_local_id(0);
    const uint2 tile = tiles[get_group_id(0)];
    const uint begin = offsets[tile.x], end = offsets[tile.x + 1];
    const uint q = tile.y + lid;
    const bool active = q < end;
    const uint qs = active ? q : begin; /* inactive items never read past the cluster */
    const __global ulong *const qc = codes + (size_t)qs * Q4_STRIDE;
    const uint qn = norms[qs], qid = ids[qs];

    ulong best[KILN_K];
    for (int i = 0; i < KILN_K; i++)
        best[i] = ULONG_MAX;

    for (uint base = begin; base < end; base += KILN_CHUNK) {
        const uint n = min((uint)KILN_CHUNK, end - base);
#if KILN_STAGE_LOCAL
        barrier(CLK_LOCAL_MEM_FENCE); /* the previous chunk's readers are done */
        for (uint i = lid; i < n * Q4_STRIDE; i += KILN_LWS)
            l_codes[i] = codes[(size_t)base * Q4_STRIDE + i];
        for (uint i = lid; i < n; i += KILN_LWS) {
            l_norms[i] = norms[base + i];
            l_ids[i] = ids[base + i];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        const __local ulong *const cc = l_codes;
        const __local uint *const cn = l_norms;
        const __local uint *const ci = l_ids;
#else
        const __global ulong *const cc = codes + (size_t)base * Q4_STRIDE;
        const __global uint *const cn = norms + base;
        const __global uint *const ci = ids + base;
#endif
        if (!active)
            continue;
        for (uint j = 0; j < n; j++) {
            const uint cid = ci[j];
            if (cid == qid)
                continue;
            const uint d = q4_dist(qc, qn, cc + (size_t)j * Q4_STRIDE, cn[j]);
            const ulong key = (ulong)d << 32 | cid;
            if (key >= best[KILN_K - 1])
                continue;
            int p = KILN_K - 1;
            while (p > 0 && best[p - 1] > key) {
                best[p] = best[p - 1];
                p--;
            }
            best[p] = key;
        }
    }
    if (!active)
        return;
    __global uint2 *const row = out + (size_t)q * KILN_K;
    for (int i = 0; i < KILN_K; i++)
        row[i] = (uint2)((uint)(best[i] >> 32), (uint)best[i]);
}
