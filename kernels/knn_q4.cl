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
 *  7. kiln_knn_q4_pair is the same contract for CPU devices, where a
 *     work-group is a loop on one core and private arrays are just stack:
 *     one work-item owns a whole cluster and visits each unordered pair
 *     once, offering the distance to both members' top-K lists (the
 *     query's in a private array, the other's in place in `out`, guarded by
 *     its last key). Half the distances of the tile kernel, which has to
 *     compute every pair from both sides because work-items do not share
 *     lists. The K best of a multiset of keys do not depend on the order
 *     keys arrive, so the output is the same bytes. On a GPU one item per
 *     cluster would leave the device idle; there the tile kernel runs.
 *  8. The pair kernel's work-items are persistent: a handful per compute
 *     unit, each taking the next cluster from an atomic counter, largest
 *     clusters first (longest-processing-time scheduling), since a cluster's
 *     cost grows as its size squared. One work-group per cluster left the
 *     balance to the runtime, and PoCL hands a thread up to half the
 *     remaining groups in one grab: on siftsmall (27 clusters) one core got
 *     the 14 largest and 2 cores ran only 1.4x faster than 1.
 *  9. The pair kernel's distance is not the bit-sliced popcount sum (about
 *     150 instructions a pair at d = 128 as PoCL compiles it: 32 POPCNTs and
 *     spills of the 16 plane words). Vector popcounts did not help either:
 *     without VPOPCNTQ (PoCL compiles for the host, AVX2 here) popcount() of
 *     a ulong8 comes from PoCL's prebuilt library as a nibble-table shuffle
 *     sequence, 25% slower than scalar POPCNT on siftsmall.
 * 10. The pair kernel inserts with vector steps (q4_pair_insert_*), fully
 *     unrolled for K <= 64 so the list stays in registers: both lists take
 *     about K (1 + ln(n / K)) insertions each, and a shift loop that ends on
 *     a mispredicted branch cost a quarter of the kernel at d = 128 (20K
 *     slots in clusters of 768, medians of 9: 0.068 s -> 0.056 s). Unrolling
 *     dropped the copy of the result through the stack: 16.0 -> 12.2 ns a
 *     pair (bench/bench_cl_knn.c, CPU time, d = 128, clusters of 768).
 * 11. Instead the pair kernel unpacks its cluster's codes once into floats
 *     (one per dimension, its scratch) and computes dot products as a small
 *     matrix product: 4 query rows against 2 candidate rows, 8 float8
 *     accumulators, 6 loads per 8 FMAs. Exact: codes are 0..15, every
 *     partial sum is an integer at most 225 * 65536 < 2^24, so any order of
 *     additions, fused or not, gives the same integer, and the distance is
 *     then formed in uint32 as in decision 4 (tests/test_cl_knn.c checks
 *     d = 65536 with codes 0 and 15). Measured with bench/bench_cl_knn.c
 *     (host/cl_knn.c decision 9): d = 128 23.3 -> 7.3 ns a pair of CPU
 *     time, d = 784 87 -> 38. With the offers stubbed out the distances
 *     alone took 6 of 12 ns (30 clusters, d = 128) and 35 of 46 (d = 784),
 *     so at d = 128 the top-K offers are now half the cost: about
 *     K (1 + ln(n / K)) of each row's n offers insert, 0.35 a pair at 768.
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
/* Short plane loops unroll, so the query's planes stay in registers; long
 * ones ran slower unrolled (d = 784, W = 13: the pair kernel 1.4x slower). */
#if KILN_W <= 4
#define Q4_UNROLL _Pragma("unroll")
#else
#define Q4_UNROLL
#endif

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

/* The 4-bit distance between codes a and b, generated per pair of address
 * spaces (OpenCL 1.2 has no generic pointers). Must equal kiln_q4_dist_ref()
 * bit for bit (decision 4). Forced inline: PoCL defines `inline` away, and a
 * call per distance reloads the query's planes every time. */
#define Q4_DIST_FN(NAME, A_SPACE, B_SPACE)                                                         \
    __attribute__((always_inline)) uint NAME(const A_SPACE ulong *a, const uint na,                \
                                             const B_SPACE ulong *b, const uint nb) {              \
        uint dot = 0;                                                                              \
        Q4_UNROLL for (int w = 0; w < KILN_W; w++) {                                               \
            const ulong a0 = a[w], a1 = a[KILN_W + w], a2 = a[2 * KILN_W + w],                     \
                        a3 = a[3 * KILN_W + w];                                                    \
            const ulong b0 = b[w], b1 = b[KILN_W + w], b2 = b[2 * KILN_W + w],                     \
                        b3 = b[3 * KILN_W + w];                                                    \
            dot += q4_popcount(a0 & b0);                                                           \
            dot += (q4_popcount(a0 & b1) + q4_popcount(a1 & b0)) << 1;                             \
            dot += (q4_popcount(a0 & b2) + q4_popcount(a1 & b1) + q4_popcount(a2 & b0)) << 2;      \
            dot += (q4_popcount(a0 & b3) + q4_popcount(a1 & b2) + q4_popcount(a2 & b1) +           \
                    q4_popcount(a3 & b0))                                                          \
                   << 3;                                                                           \
            dot += (q4_popcount(a1 & b3) + q4_popcount(a2 & b2) + q4_popcount(a3 & b1)) << 4;      \
            dot += (q4_popcount(a2 & b3) + q4_popcount(a3 & b2)) << 5;                             \
            dot += q4_popcount(a3 & b3) << 6;                                                      \
        }                                                                                          \
        return na + nb - 2u * dot;                                                                 \
    }

Q4_DIST_FN(q4_dist, __global, CAND_SPACE)
Q4_DIST_FN(q4_dist_private, __private, __global)

/* A key (decision 2) as the output's (dist, id) entry. */
#define Q4_KEY_ENTRY(key) ((uint2)((uint)((key) >> 32), (uint)(key)))

/* Inserts key into the ascending list best[0..K), dropping the last; the
 * caller has checked key < best[K-1] (decision 3). */
#define Q4_INSERT(best, key)                                                                       \
    do {                                                                                           \
        int p_ = KILN_K - 1;                                                                       \
        while (p_ > 0 && (best)[p_ - 1] > (key)) {                                                 \
            (best)[p_] = (best)[p_ - 1];                                                           \
            p_--;                                                                                  \
        }                                                                                          \
        (best)[p_] = (key);                                                                        \
    } while (0)

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
            if (key < best[KILN_K - 1])
                Q4_INSERT(best, key);
        }
    }
    if (!active)
        return;
    __global uint2 *const row = out + (size_t)q * KILN_K;
    for (int i = 0; i < KILN_K; i++)
        row[i] = Q4_KEY_ENTRY(best[i]);
}

/* The pair kernel's insertion (decision 10), for lists of K a multiple of 8:
 * the same result as Q4_INSERT, as whole-vector steps without a branch:
 * with L the list and L[-1] = 0, R[i] = L[i] < key ? L[i] : max(key, L[i-1]).
 * Every vector is read before any is written. */
#if KILN_K % 8 == 0
#if KILN_K <= 64
#define Q4_INSERT_UNROLL _Pragma("unroll")
#else
#define Q4_INSERT_UNROLL
#endif
#define Q4_INSERT8_FN(NAME, SPACE)                                                                 \
    __attribute__((always_inline)) void NAME(SPACE ulong *list, const ulong key) {                 \
        ulong8 r[KILN_K / 8];                                                                      \
        ulong carry = 0;                                                                           \
        Q4_INSERT_UNROLL for (int v = 0; v < KILN_K / 8; v++) {                                    \
            const ulong8 l = vload8(v, list);                                                      \
            const ulong8 p = (ulong8)(carry, l.s0, l.s1, l.s2, l.s3, l.s4, l.s5, l.s6);            \
            carry = l.s7;                                                                          \
            r[v] = select(max((ulong8)key, p), l, l < key);                                        \
        }                                                                                          \
        Q4_INSERT_UNROLL for (int v = 0; v < KILN_K / 8; v++)                                      \
            vstore8(r[v], v, list);                                                                \
    }
Q4_INSERT8_FN(q4_pair_insert_global, __global)
Q4_INSERT8_FN(q4_pair_insert_private, __private)
#else
#define q4_pair_insert_global(list, key)  Q4_INSERT(list, key)
#define q4_pair_insert_private(list, key) Q4_INSERT(list, key)
#endif

/* The pair kernel's rows (decision 11): a cluster's codes unpacked to one
 * float per dimension, Q4_LANES float8 per row (64 W dimensions, the ones
 * past d are 0). Its scratch follows the tile counter, Q4_SCRATCH_SKIP uints
 * in, so that it keeps the buffer's 128-byte alignment. */
#define Q4_LANES        (8 * KILN_W)
#define Q4_SCRATCH_SKIP 64

/* Slot s's bit planes as codes 0..15, one float each (exact). */
void q4_unpack(__global const ulong *restrict planes, __global float8 *restrict row) {
    const uint8 lane = (uint8)(0, 1, 2, 3, 4, 5, 6, 7);
    for (int w = 0; w < KILN_W; w++) {
        const ulong p0 = planes[w], p1 = planes[KILN_W + w], p2 = planes[2 * KILN_W + w],
                    p3 = planes[3 * KILN_W + w];
        for (int b = 0; b < 8; b++) {
            /* The 8 bits of each plane for dimensions 64w + 8b .. + 7. */
            const uint8 b0 = ((uint8)(uint)(p0 >> (8 * b)) >> lane) & 1u;
            const uint8 b1 = ((uint8)(uint)(p1 >> (8 * b)) >> lane) & 1u;
            const uint8 b2 = ((uint8)(uint)(p2 >> (8 * b)) >> lane) & 1u;
            const uint8 b3 = ((uint8)(uint)(p3 >> (8 * b)) >> lane) & 1u;
            row[8 * w + b] = convert_float8(b0 | b1 << 1 | b2 << 2 | b3 << 3);
        }
    }
}

/* The lanes of 8 accumulators summed: lane i of the result is the sum of
 * a_i's lanes. Integer-valued partial sums below 2^24 add exactly in any
 * order (decision 11). */
__attribute__((always_inline)) float8 q4_hsum8(const float8 a0, const float8 a1, const float8 a2,
                                               const float8 a3, const float8 a4, const float8 a5,
                                               const float8 a6, const float8 a7) {
    const float8 t0 = (float8)(a0.lo + a0.hi, a1.lo + a1.hi);
    const float8 t1 = (float8)(a2.lo + a2.hi, a3.lo + a3.hi);
    const float8 t2 = (float8)(a4.lo + a4.hi, a5.lo + a5.hi);
    const float8 t3 = (float8)(a6.lo + a6.hi, a7.lo + a7.hi);
    const float8 u0 = (float8)(t0.even + t0.odd, t1.even + t1.odd);
    const float8 u1 = (float8)(t2.even + t2.odd, t3.even + t3.odd);
    return (float8)(u0.even + u0.odd, u1.even + u1.odd);
}

/* Dot products of 4 query rows x (consecutive) with 2 candidate rows y
 * (consecutive): lane r + 4c is x_r . y_c. */
__attribute__((always_inline)) uint8 q4_dots_4x2(const __global float8 *restrict x,
                                                 const __global float8 *restrict y) {
    float8 a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    for (int l = 0; l < Q4_LANES; l++) {
        const float8 x0 = x[l], x1 = x[Q4_LANES + l], x2 = x[2 * Q4_LANES + l],
                     x3 = x[3 * Q4_LANES + l];
        const float8 y0 = y[l], y1 = y[Q4_LANES + l];
        a0 += x0 * y0;
        a1 += x1 * y0;
        a2 += x2 * y0;
        a3 += x3 * y0;
        a4 += x0 * y1;
        a5 += x1 * y1;
        a6 += x2 * y1;
        a7 += x3 * y1;
    }
    return convert_uint8(q4_hsum8(a0, a1, a2, a3, a4, a5, a6, a7));
}

/* The dot product of rows x and y. */
__attribute__((always_inline)) uint q4_dot_1x1(const __global float8 *restrict x,
                                               const __global float8 *restrict y) {
    float8 a = 0;
    for (int l = 0; l < Q4_LANES; l++)
        a += x[l] * y[l];
    const float4 h = a.lo + a.hi;
    const float2 g = h.lo + h.hi;
    return convert_uint(g.x + g.y);
}

/* Offers the pair (query slot of block row r, candidate slot j) at distance
 * d to both lists: the query's private one and j's row of keys. */
#define Q4_OFFER(r, j, d)                                                                          \
    do {                                                                                           \
        const uint cid_ = ids[j];                                                                  \
        if (cid_ != qid[r]) {                                                                      \
            const ulong key_ = (ulong)(d) << 32 | cid_;                                            \
            if (key_ < best[r][KILN_K - 1])                                                        \
                q4_pair_insert_private(best[r], key_);                                             \
            __global ulong *const row_ = keys + (size_t)(j) * KILN_K;                              \
            const ulong other_ = (ulong)(d) << 32 | qid[r];                                        \
            if (other_ < row_[KILN_K - 1])                                                         \
                q4_pair_insert_global(row_, other_);                                               \
        }                                                                                          \
    } while (0)

/* Decision 7: one work-item does cluster c whole, visiting each unordered
 * pair once, in blocks of 4 query rows against 2 candidates at a time
 * (decision 11) out of the rows it unpacked into its scratch. While it works,
 * the cluster's rows of out hold keys dist << 32 | id (decision 2), one
 * compare per offer instead of two fields; a block's 4 rows move to private
 * arrays while they are queries; the last loop rewrites every row as
 * (dist, id) pairs. */
void q4_pair_cluster(const uint c, __global const uint *restrict offsets,
                     __global const ulong *restrict codes, __global const uint *restrict norms,
                     __global const uint *restrict ids, __global uint2 *restrict out,
                     __global float8 *restrict rows) {
    const uint begin = offsets[c], end = offsets[c + 1], n = end - begin;
    __global ulong *const keys = (__global ulong *)out;
    const size_t first = (size_t)begin * KILN_K, last = (size_t)end * KILN_K;
    for (size_t i = first; i < last; i++)
        keys[i] = ULONG_MAX;
    for (uint s = 0; s < n; s++)
        q4_unpack(codes + (size_t)(begin + s) * Q4_STRIDE, rows + (size_t)s * Q4_LANES);
    for (uint b = begin; b < end; b += 4) {
        const uint nb = min(4u, end - b);
        ulong best[4][KILN_K];
        uint qn[4], qid[4];
        for (uint r = 0; r < nb; r++) {
            qn[r] = norms[b + r];
            qid[r] = ids[b + r];
            for (int i = 0; i < KILN_K; i++)
                best[r][i] = keys[(size_t)(b + r) * KILN_K + i];
        }
        const __global float8 *const x = rows + (size_t)(b - begin) * Q4_LANES;
        /* Pairs inside the block: both lists are private. */
        for (uint r = 0; r < nb; r++)
            for (uint t = r + 1; t < nb; t++) {
                if (qid[t] == qid[r])
                    continue;
                const uint d = qn[r] + qn[t] - 2u * q4_dot_1x1(x + r * Q4_LANES, x + t * Q4_LANES);
                const ulong kr = (ulong)d << 32 | qid[t], kt = (ulong)d << 32 | qid[r];
                if (kr < best[r][KILN_K - 1])
                    q4_pair_insert_private(best[r], kr);
                if (kt < best[t][KILN_K - 1])
                    q4_pair_insert_private(best[t], kt);
            }
        /* Pairs with the later slots; a block short of 4 rows is the last. */
        uint j = b + 4;
        if (nb == 4) {
            const uint4 qn4 = (uint4)(qn[0], qn[1], qn[2], qn[3]);
            for (; j + 2 <= end; j += 2) {
                const uint8 dot = q4_dots_4x2(x, rows + (size_t)(j - begin) * Q4_LANES);
                const uint8 d = (uint8)(qn4, qn4) +
                                (uint8)((uint4)norms[j], (uint4)norms[j + 1]) - 2u * dot;
                Q4_OFFER(0, j, d.s0);
                Q4_OFFER(1, j, d.s1);
                Q4_OFFER(2, j, d.s2);
                Q4_OFFER(3, j, d.s3);
                Q4_OFFER(0, j + 1, d.s4);
                Q4_OFFER(1, j + 1, d.s5);
                Q4_OFFER(2, j + 1, d.s6);
                Q4_OFFER(3, j + 1, d.s7);
            }
            for (; j < end; j++)
                for (uint r = 0; r < 4; r++) {
                    const uint d =
                        qn[r] + norms[j] -
                        2u * q4_dot_1x1(x + r * Q4_LANES, rows + (size_t)(j - begin) * Q4_LANES);
                    Q4_OFFER(r, j, d);
                }
        }
        for (uint r = 0; r < nb; r++)
            for (int i = 0; i < KILN_K; i++)
                keys[(size_t)(b + r) * KILN_K + i] = best[r][i];
    }
    for (size_t i = first; i < last; i++)
        out[i] = Q4_KEY_ENTRY(keys[i]);
}

/* Decision 8: a few persistent work-items take clusters from a shared
 * counter, in the order tiles[] lists them (largest first), until none are
 * left. *next starts at 0; after its Q4_SCRATCH_SKIP uints, each work-item
 * owns rows of scratch: room for `largest` unpacked rows, the largest
 * cluster of the batch. */
__kernel __attribute__((reqd_work_group_size(1, 1, 1))) void
kiln_knn_q4_pair(__global const uint2 *restrict tiles, __global const uint *restrict offsets,
                 __global const ulong *restrict codes, __global const uint *restrict norms,
                 __global const uint *restrict ids, __global uint2 *restrict out,
                 __global volatile uint *next, const uint n_tiles, const uint largest) {
    __global float8 *const rows = (__global float8 *)((__global uint *)next + Q4_SCRATCH_SKIP) +
                                  get_global_id(0) * (size_t)largest * Q4_LANES;
    for (;;) {
        const uint t = atomic_inc(next);
        if (t >= n_tiles)
            return;
        q4_pair_cluster(tiles[t].x, offsets, codes, norms, ids, out, rows);
    }
}
