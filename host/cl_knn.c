/* cl_knn.c -- host side of the device kernels: per-cluster top-k on 4-bit
 * codes (kernels/knn_q4.cl) and k-means assignment (kernels/kmeans_assign.cl);
 * contracts in device_internal.h.
 *
 * Design decisions:
 *  1. Clusters go to the device in batches of whole clusters, bounded by a
 *     member limit. For each batch the host gathers the members' codes,
 *     norms and ids into contiguous staging memory, so the kernel reads one
 *     dense block per cluster whatever order the global ids are in.
 *  2. Double buffering: two slots, each with its own staging memory, device
 *     buffers and in-order queue. While the device runs batch i from one
 *     slot, the host gathers batch i+1 into the other and enqueues its
 *     upload, which devices with copy engines overlap with the kernel. A
 *     slot is reused only after its previous batch's events complete, so its
 *     staging memory is never overwritten while a transfer still reads it.
 *     Results are read straight into the caller's output.
 *  3. Halving on exhaustion. CL_OUT_OF_RESOURCES,
 *     CL_MEM_OBJECT_ALLOCATION_FAILURE and CL_OUT_OF_HOST_MEMORY (and host
 *     allocation failures) may come from an enqueue or only when the events
 *     are waited on. Either way both queues are drained, all buffers are
 *     released, the member limit is halved (from the failing batch's size),
 *     and work restarts at the first cluster whose batch was not yet
 *     confirmed complete; batches complete in submission order, so every
 *     cluster before it is final. A batch that is one cluster is never split:
 *     when even the limit 1 fails, the call fails, naming the cluster.
 *  4. The first limit follows device memory: both slots together take at
 *     most half of global memory, the largest buffer fits one allocation,
 *     and at most 2^20 members, so that two batches in flight overlap well.
 *  5. Everything about the device (work-group size, staging, -D options)
 *     comes from kiln_cl_configure; this file only moves data.
 *  6. k-means assignment runs its row batches synchronously on one queue:
 *     the centroids stay on the device, each row crosses the bus once and
 *     the kernel's O(k * dim) work per row dominates, so overlap would buy
 *     little. Exhaustion halves the row batch as in decision 3.
 *  7. Every allocation of a batch is made real before the batch is used, so
 *     each failure is a code that decision 3 sees: host staging failures
 *     become CL_OUT_OF_HOST_MEMORY; device buffers are created with
 *     CL_MEM_ALLOC_HOST_PTR on CPU devices (PoCL then allocates at creation
 *     instead of at the first command, where a failure aborts the process
 *     inside PoCL) and are committed with a blocking write of a few bytes
 *     elsewhere. A test hook (kiln_cl_opts.inject_alloc_site) fails each of
 *     these allocations in turn.
 *  8. The pair kernel's scratch (kernels/knn_q4.cl decision 11: each
 *     work-item unpacks its cluster to 4 bytes per dimension) shares the
 *     buffer of its tile counter, after PAIR_SCRATCH_SKIP bytes, so the
 *     allocation sites stay as decision 7 numbers them. It is sized once for
 *     the call's largest cluster: work-items * largest * 256 W bytes, e.g.
 *     8 * 2304 * 512 = 9 MB at d = 128 for clusters capped at 3 x 768.
 *  9. Cost per pair, how it is measured: bench/bench_cl_knn.c drives this
 *     function on C synthetic clusters of 768 members (K = 32) and reports
 *     the median over reps of the call's CPU time (all PoCL threads) per
 *     unordered pair, C * 768 * 767 / 2 pairs; on an idle machine that is
 *     wall time * compute units / pairs, but this one is shared, and CPU
 *     time moves less. Against it, a one-thread host loop computes every
 *     pair's bit-sliced distance with POPCNT (W a constant, no top-K). On the
 *     2-core AMD EPYC (AVX2, no AVX-512, PoCL 3.1), 300 clusters at d = 128
 *     and 60 at d = 784, three and two alternating runs of the old and new
 *     kernel (bench/RESULTS.md): d = 128 23.3 -> 7.3 ns (the POPCNT loop:
 *     13-16 ns), d = 784 87 -> 38 ns (POPCNT loop: 109-113 ns). The device
 *     knn stage of a 200K x 128 device build: 9.6 -> 6.2 s (medians of 3).
 * 10. The two slots (staging and device buffers) outlive the call: the
 *     device state keeps them, and the next call reuses them when they are
 *     big enough (slot_reserve grows them otherwise), until
 *     kiln_cl_cluster_knn_release or the state's teardown. A build calls
 *     once per batch; fresh buffers each time were a fresh touch of every
 *     page (on a CPU device the buffers are host memory), which is dear
 *     where memory comes from a host (graph/hnsw_index.c decision 4). After
 *     a failure the slots are released as before (decision 3), and a call
 *     with a test's injection hooks starts from released slots so that its
 *     allocations happen.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl_internal.h"
#include "../common/progress_internal.h"

/* ==== Tunables ==== */

/* Members per knn batch at most (decision 4): 2^20 members of d = 128 are
 * 64 MB of codes, enough to keep any device busy for a while, small enough
 * that the next batch's upload overlaps. */
#define KNN_MAX_BATCH ((size_t)1 << 20)
/* Rows per k-means batch at most, for the same reason. */
#define KMEANS_MAX_BATCH ((size_t)1 << 20)
/* Events of one knn batch: six uploads, the kernel, the read-back. */
#define KNN_EVENTS 8
/* Persistent work-items of the pair kernel per compute unit (knn_q4.cl
 * decision 8): more than one, so that a runtime handing several groups to
 * one thread at a time still leaves every thread a running one. */
#define PAIR_ITEMS_PER_UNIT 4
/* Bytes before the pair kernel's scratch in its counter buffer: the
 * kernel's Q4_SCRATCH_SKIP uints, keeping the scratch 128-byte aligned. */
#define PAIR_SCRATCH_SKIP 256

_Static_assert(sizeof(kiln_q4_neighbor) == sizeof(cl_uint2),
               "kiln_q4_neighbor must match the kernel's uint2 (dist, id)");

/* ==== Helpers ==== */

/* The first failure among events, waiting for them all: an error may sit on
 * any command of the batch, and the later ones then only report
 * CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST. */
static cl_int wait_events(cl_uint n, const cl_event *events) {
    const cl_int rc = n ? clWaitForEvents(n, events) : CL_SUCCESS;
    if (rc == CL_SUCCESS)
        return rc;
    for (cl_uint i = 0; i < n; i++) {
        cl_int es = CL_COMPLETE;
        if (clGetEventInfo(events[i], CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof es, &es, NULL) ==
                CL_SUCCESS &&
            es < 0)
            return es;
    }
    return rc;
}

static void release_mem(cl_mem *m) {
    if (*m)
        clReleaseMemObject(*m);
    *m = NULL;
}

/* Grows a capacity to at least need, doubling to limit reallocations but not
 * past max(need, ceiling). */
static size_t grow(size_t need, size_t have, size_t ceiling) {
    size_t cap = have * 2 > need ? have * 2 : need;
    const size_t top = need > ceiling ? need : ceiling;
    return cap > top ? top : cap;
}

/* A buffer whose memory exists when this returns (decision 7), so that
 * running out of it is an error code here rather than later: PoCL allocates
 * lazily at the first command and then aborts on failure. On CPU devices
 * CL_MEM_ALLOC_HOST_PTR makes the runtime allocate at creation; elsewhere a
 * blocking write of a few bytes on queue (idle) makes the driver commit it. */
static cl_int device_buffer(const struct kiln_device_state *st, cl_command_queue queue,
                            cl_mem_flags flags, size_t bytes, cl_mem *out) {
    static const cl_ulong zero = 0;
    const bool host = st->info.type == KILN_DEVICE_CPU;
    cl_int err = CL_SUCCESS;
    *out =
        clCreateBuffer(st->context, flags | (host ? CL_MEM_ALLOC_HOST_PTR : 0), bytes, NULL, &err);
    if (err != CL_SUCCESS || host)
        return err;
    return clEnqueueWriteBuffer(queue, *out, CL_TRUE, 0, bytes < sizeof zero ? bytes : sizeof zero,
                                &zero, 0, NULL, NULL);
}

/* Stand-in for an allocation failure, for tests of decision 3. */
static cl_int injected_failure(uint32_t *left, size_t units) {
    if (*left == 0 || units < 2)
        return CL_SUCCESS;
    (*left)--;
    return CL_MEM_OBJECT_ALLOCATION_FAILURE;
}

static kiln_status make_kernel(kiln_ctx *ctx, struct kiln_device_state *st,
                               struct kiln_cl_config *cfg, cl_kernel *out) {
    kiln_status status = kiln_cl_configure(ctx, st, cfg);
    cl_int clerr = CL_SUCCESS;
    cl_program prog = NULL;
    *out = NULL;
    if (status == KILN_OK)
        status = kiln_cl_program(ctx, st, cfg->file, cfg->options, &prog);
    if (status != KILN_OK)
        goto cleanup;
    KILN_CL_CHECK((*out = clCreateKernel(prog, cfg->kernel, &clerr), clerr));
cleanup:
    return status;
}

/* ==== Per-cluster top-k: types ==== */

struct knn_slot {
    uint64_t *h_codes; /* staging, cap_members * stride */
    uint32_t *h_norms, *h_ids;
    uint32_t *h_offsets; /* cap_clusters + 1 */
    uint32_t *h_tiles;   /* 2 * cap_tiles: (cluster, first slot) */
    size_t cap_members, cap_clusters, cap_tiles;
    size_t k, stride; /* what the buffers were sized for: another call may differ */
    cl_mem codes, norms, ids, offsets, tiles, out;
    cl_mem next;     /* pair kernel: the shared tile counter, then its scratch */
    size_t cap_next; /* bytes of next */
    cl_event events[KNN_EVENTS];
    cl_uint n_events;
    bool busy;             /* a batch is in flight */
    size_t c_begin, c_end; /* its clusters */
};

struct knn_job {
    kiln_ctx *ctx;
    struct kiln_device_state *st;
    const kiln_q4_set *set;
    const uint64_t *offsets; /* the caller's CSR, slots are indexes into members */
    size_t n_clusters;
    const uint32_t *members;
    uint32_t k;
    kiln_q4_neighbor *out;
    cl_kernel kernel;
    uint32_t lws;
    bool paired;                         /* kiln_knn_q4_pair: one tile (work-item) per cluster */
    uint32_t largest;                    /* members of the largest cluster */
    size_t stride;                       /* uint64 words per vector */
    size_t limit;                        /* members per batch */
    uint32_t inject;                     /* failures left to inject */
    uint32_t inject_site, inject_allocs; /* allocation failures left to inject */
    uint32_t batches;                    /* completed */
};

/* ==== Per-cluster top-k: batches ==== */

static void slot_release(struct knn_slot *sl) {
    for (cl_uint i = 0; i < sl->n_events; i++)
        clReleaseEvent(sl->events[i]);
    sl->n_events = 0;
    sl->busy = false;
    release_mem(&sl->next);
    release_mem(&sl->out);
    release_mem(&sl->tiles);
    release_mem(&sl->offsets);
    release_mem(&sl->ids);
    release_mem(&sl->norms);
    release_mem(&sl->codes);
    free(sl->h_tiles);
    free(sl->h_offsets);
    free(sl->h_ids);
    free(sl->h_norms);
    kiln_free_aligned(sl->h_codes);
    memset(sl, 0, sizeof *sl);
}

/* Allocation number site (1..KILN_CL_ALLOC_SITES) of slot_reserve: true
 * while the test hook says it should fail. */
static bool alloc_injected(struct knn_job *job, uint32_t site) {
    if (job->inject_site != site || job->inject_allocs == 0)
        return false;
    job->inject_allocs--;
    return true;
}

/* Host staging memory for slot_reserve; a failure is retryable. */
static kiln_status host_alloc(struct knn_job *job, uint32_t site, size_t bytes, bool aligned,
                              const char *what, void **out) {
    if (alloc_injected(job, site)) {
        *out = NULL;
        return kiln_fail(job->ctx, KILN_E_NOMEM,
                         "out of memory allocating %zu bytes for %s (injected)", bytes, what);
    }
    return aligned ? kiln_alloc_aligned(job->ctx, bytes, what, out)
                   : kiln_alloc(job->ctx, bytes, what, out);
}

/* Work-items of the pair kernel for a batch of nt tiles (knn_q4.cl
 * decision 8). */
static size_t pair_items(const struct knn_job *job, size_t nt) {
    const size_t items = job->st->info.compute_units * (size_t)PAIR_ITEMS_PER_UNIT;
    return items < nt ? items : nt;
}

/* Bytes of the pair kernel's counter and scratch for a batch of nt tiles:
 * the counter's PAIR_SCRATCH_SKIP bytes, then room for the largest cluster's
 * unpacked rows (4 bytes per dimension of 64 W) per work-item (knn_q4.cl
 * decision 11). The largest cluster of the call, not of the batch, so that
 * the buffer is sized once. */
static size_t pair_next_bytes(const struct knn_job *job, size_t nt) {
    if (!job->paired)
        return sizeof(cl_uint);
    return PAIR_SCRATCH_SKIP + pair_items(job, nt) * job->largest * (size_t)job->set->words * 256;
}

/* Room for a batch of m members, nc clusters and nt tiles in sl; queue is
 * the slot's, idle. On failure *clerr_out holds the code that decides the
 * retry (decision 3), CL_OUT_OF_HOST_MEMORY for host memory. */
static kiln_status slot_reserve(struct knn_job *job, struct knn_slot *sl, cl_command_queue queue,
                                size_t m, size_t nc, size_t nt, cl_int *clerr_out) {
    kiln_ctx *ctx = job->ctx;
    kiln_status status = KILN_OK;
    cl_int clerr = CL_SUCCESS;
    const struct kiln_device_state *const st = job->st;
    if (m <= sl->cap_members && nc <= sl->cap_clusters && nt <= sl->cap_tiles &&
        pair_next_bytes(job, nt) <= sl->cap_next && sl->k == job->k && sl->stride == job->stride)
        return KILN_OK;
    if (sl->k != job->k || sl->stride != job->stride)
        slot_release(sl); /* sized for another call's rows (decision 10): start afresh */
    const size_t cm = grow(m, sl->cap_members, job->limit);
    const size_t cc = grow(nc, sl->cap_clusters, job->limit);
    const size_t ct = grow(nt, sl->cap_tiles, job->limit / job->lws + job->limit);
    const size_t next_bytes = pair_next_bytes(job, ct);
    slot_release(sl);
    status = host_alloc(job, 1, cm * job->stride * 8, true, "batch codes", (void **)&sl->h_codes);
    if (status == KILN_OK)
        status = host_alloc(job, 2, cm * 4, false, "batch norms", (void **)&sl->h_norms);
    if (status == KILN_OK)
        status = host_alloc(job, 3, cm * 4, false, "batch ids", (void **)&sl->h_ids);
    if (status == KILN_OK)
        status = host_alloc(job, 4, (cc + 1) * 4, false, "batch offsets", (void **)&sl->h_offsets);
    if (status == KILN_OK)
        status = host_alloc(job, 5, ct * 8, false, "batch tiles", (void **)&sl->h_tiles);
    if (status != KILN_OK) {
        clerr = CL_OUT_OF_HOST_MEMORY; /* retryable, like the device's own */
        goto cleanup;
    }
    const struct {
        cl_mem *mem;
        cl_mem_flags flags;
        size_t bytes;
    } bufs[7] = {{&sl->codes, CL_MEM_READ_ONLY, cm * job->stride * 8},
                 {&sl->norms, CL_MEM_READ_ONLY, cm * 4},
                 {&sl->ids, CL_MEM_READ_ONLY, cm * 4},
                 {&sl->offsets, CL_MEM_READ_ONLY, (cc + 1) * 4},
                 {&sl->tiles, CL_MEM_READ_ONLY, ct * 8},
                 {&sl->out, CL_MEM_WRITE_ONLY, cm * job->k * 8},
                 {&sl->next, CL_MEM_READ_WRITE, next_bytes}};
    for (uint32_t b = 0; b < 7; b++)
        KILN_CL_CHECK(alloc_injected(job, 6 + b)
                          ? CL_MEM_OBJECT_ALLOCATION_FAILURE
                          : device_buffer(st, queue, bufs[b].flags, bufs[b].bytes, bufs[b].mem));
    sl->cap_members = cm;
    sl->cap_clusters = cc;
    sl->cap_tiles = ct;
    sl->cap_next = next_bytes;
    sl->k = job->k;
    sl->stride = job->stride;
cleanup:
    if (status != KILN_OK)
        slot_release(sl);
    *clerr_out = clerr;
    return status;
}

/* The end of the batch starting at cluster c0: whole clusters while the
 * member and cluster counts stay within the limit, at least one. */
static size_t knn_plan(const struct knn_job *job, size_t c0, size_t *members, size_t *tiles) {
    size_t c = c0, m = 0, t = 0;
    while (c < job->n_clusters) {
        const size_t size = job->offsets[c + 1] - job->offsets[c];
        if (c > c0 && (m + size > job->limit || c - c0 >= job->limit))
            break;
        m += size;
        t += job->paired ? 1 : (size + job->lws - 1) / job->lws;
        c++;
    }
    *members = m;
    *tiles = t;
    return c;
}

/* Orders paired tiles by cluster size, largest first, then by cluster. */
static int tile_cmp(const void *pa, const void *pb, void *user) {
    const uint32_t *a = pa, *b = pb, *off = user;
    const uint32_t sa = off[a[0] + 1] - off[a[0]], sb = off[b[0] + 1] - off[b[0]];
    if (sa != sb)
        return sa > sb ? -1 : 1;
    return a[0] < b[0] ? -1 : a[0] > b[0];
}

/* Gathers clusters [c0, c1) into sl and enqueues upload, kernel and
 * read-back on queue (decision 2). */
static kiln_status knn_submit(struct knn_job *job, struct knn_slot *sl, cl_command_queue queue,
                              size_t c0, size_t c1, size_t m, size_t nt, cl_int *clerr_out) {
    kiln_ctx *ctx = job->ctx;
    kiln_status status = KILN_OK;
    cl_int clerr = CL_SUCCESS;
    const size_t nc = c1 - c0, s0 = job->offsets[c0];
    KILN_CL_CHECK(injected_failure(&job->inject, nc));
    status = slot_reserve(job, sl, queue, m, nc, nt, &clerr);
    if (status != KILN_OK)
        goto cleanup;
    sl->busy = true;
    sl->c_begin = c0;
    sl->c_end = c1;
    for (size_t s = 0; s < m; s++) {
        const uint32_t id = job->members[s0 + s];
        memcpy(sl->h_codes + s * job->stride, job->set->planes + (size_t)id * job->stride,
               job->stride * 8);
        sl->h_norms[s] = job->set->norms[id];
        sl->h_ids[s] = id;
    }
    size_t t = 0;
    for (size_t c = 0; c <= nc; c++)
        sl->h_offsets[c] = (uint32_t)(job->offsets[c0 + c] - s0);
    for (size_t c = 0; c < nc; c++)
        for (uint32_t q = sl->h_offsets[c]; q < sl->h_offsets[c + 1]; q += job->lws) {
            sl->h_tiles[2 * t] = (uint32_t)c;
            sl->h_tiles[2 * t + 1] = q;
            t++;
            if (job->paired)
                break;
        }
    if (job->paired) /* decision 7: the longest work-items first */
        qsort_r(sl->h_tiles, t, 2 * sizeof *sl->h_tiles, tile_cmp, sl->h_offsets);
    if (m == 0 || t == 0)
        goto cleanup; /* only empty clusters: nothing to compute */
    cl_event *const ev = sl->events;
    KILN_CL_CHECK(clEnqueueWriteBuffer(queue, sl->tiles, CL_FALSE, 0, t * 8, sl->h_tiles, 0, NULL,
                                       &ev[sl->n_events++]));
    KILN_CL_CHECK(clEnqueueWriteBuffer(queue, sl->offsets, CL_FALSE, 0, (nc + 1) * 4, sl->h_offsets,
                                       0, NULL, &ev[sl->n_events++]));
    KILN_CL_CHECK(clEnqueueWriteBuffer(queue, sl->codes, CL_FALSE, 0, m * job->stride * 8,
                                       sl->h_codes, 0, NULL, &ev[sl->n_events++]));
    KILN_CL_CHECK(clEnqueueWriteBuffer(queue, sl->norms, CL_FALSE, 0, m * 4, sl->h_norms, 0, NULL,
                                       &ev[sl->n_events++]));
    KILN_CL_CHECK(clEnqueueWriteBuffer(queue, sl->ids, CL_FALSE, 0, m * 4, sl->h_ids, 0, NULL,
                                       &ev[sl->n_events++]));
    const cl_mem args[6] = {sl->tiles, sl->offsets, sl->codes, sl->norms, sl->ids, sl->out};
    for (cl_uint a = 0; a < 6; a++)
        KILN_CL_CHECK(clSetKernelArg(job->kernel, a, sizeof(cl_mem), &args[a]));
    size_t local = job->lws, global = t * job->lws;
    if (job->paired) {
        static const cl_uint zero = 0;
        const cl_uint n_tiles = (cl_uint)t;
        KILN_CL_CHECK(clEnqueueWriteBuffer(queue, sl->next, CL_FALSE, 0, sizeof zero, &zero, 0,
                                           NULL, &ev[sl->n_events++]));
        KILN_CL_CHECK(clSetKernelArg(job->kernel, 6, sizeof(cl_mem), &sl->next));
        KILN_CL_CHECK(clSetKernelArg(job->kernel, 7, sizeof n_tiles, &n_tiles));
        KILN_CL_CHECK(clSetKernelArg(job->kernel, 8, sizeof job->largest, &job->largest));
        global = pair_items(job, t);
    }
    KILN_CL_CHECK(clEnqueueNDRangeKernel(queue, job->kernel, 1, NULL, &global, &local, 0, NULL,
                                         &ev[sl->n_events++]));
    KILN_CL_CHECK(clEnqueueReadBuffer(queue, sl->out, CL_FALSE, 0, m * job->k * 8,
                                      job->out + s0 * job->k, 0, NULL, &ev[sl->n_events++]));
    KILN_CL_CHECK(clFlush(queue));
cleanup:
    *clerr_out = clerr;
    return status;
}

/* Waits for sl's batch; on success the batch is final. */
static kiln_status knn_wait(struct knn_job *job, struct knn_slot *sl, cl_int *clerr_out) {
    kiln_ctx *ctx = job->ctx;
    kiln_status status = KILN_OK;
    cl_int clerr = CL_SUCCESS;
    KILN_CL_CHECK(wait_events(sl->n_events, sl->events));
    for (cl_uint i = 0; i < sl->n_events; i++)
        clReleaseEvent(sl->events[i]);
    sl->n_events = 0;
    sl->busy = false;
    job->batches++;
cleanup:
    *clerr_out = clerr;
    return status;
}

/* Runs batches from cluster *done on. *done advances past every batch
 * confirmed complete; on failure *fail_begin / *fail_end name the batch that
 * failed. */
static kiln_status knn_run(struct knn_job *job, struct knn_slot slots[2], size_t *done,
                           cl_int *clerr, size_t *fail_begin, size_t *fail_end) {
    size_t next = *done;
    unsigned s = 0;
    kiln_status status = KILN_OK;
    while (next < job->n_clusters || slots[0].busy || slots[1].busy) {
        struct knn_slot *const sl = &slots[s];
        if (sl->busy) {
            status = knn_wait(job, sl, clerr);
            if (status != KILN_OK) {
                *fail_begin = sl->c_begin;
                *fail_end = sl->c_end;
                return status;
            }
            *done = sl->c_end;
        }
        if (next < job->n_clusters) {
            size_t m, nt;
            const size_t end = knn_plan(job, next, &m, &nt);
            status = knn_submit(job, sl, job->st->queue[s], next, end, m, nt, clerr);
            if (status != KILN_OK) {
                *fail_begin = next;
                *fail_end = end;
                return status;
            }
            next = end;
        }
        s ^= 1;
    }
    return KILN_OK;
}

/* After a failure: nothing may still read or write the slots' memory. */
static void knn_drain(struct knn_job *job, struct knn_slot slots[2]) {
    for (int q = 1; q >= 0; q--)
        clFinish(job->st->queue[q]);
    for (int i = 1; i >= 0; i--)
        slot_release(&slots[i]);
}

/* Decision 4. */
static size_t knn_first_limit(const struct kiln_device_state *st, size_t stride, uint32_t k,
                              size_t requested) {
    const size_t per_member = stride * 8 + 8 + (size_t)k * 8 + 12;
    const size_t largest = stride * 8 > (size_t)k * 8 ? stride * 8 : (size_t)k * 8;
    size_t limit = KNN_MAX_BATCH;
    const uint64_t by_mem = st->info.global_mem_bytes / 4 / per_member;
    const uint64_t by_alloc = st->info.max_alloc_bytes / largest;
    limit = by_mem < limit ? (size_t)by_mem : limit;
    limit = by_alloc < limit ? (size_t)by_alloc : limit;
    if (requested && requested < limit)
        limit = requested;
    return limit ? limit : 1;
}

/* ==== Per-cluster top-k: public ==== */

kiln_status kiln_cl_cluster_knn(kiln_ctx *ctx, const kiln_q4_set *set, const uint64_t *offsets,
                                size_t n_clusters, const uint32_t *members, uint32_t k,
                                const kiln_cl_opts *opts, kiln_q4_neighbor *out,
                                kiln_cl_stats *stats) {
    const double t0 = kiln_now();
    const kiln_cl_opts none = {0};
    if (!opts)
        opts = &none;
    if (stats)
        memset(stats, 0, sizeof *stats);
    if (!set || !offsets)
        return kiln_fail(ctx, KILN_E_ARG, "device cluster kNN: NULL argument");
    if (k < 1 || k > KILN_CL_MAX_K)
        return kiln_fail(ctx, KILN_E_ARG, "device cluster kNN: k = %u is outside 1..%d",
                         (unsigned)k, KILN_CL_MAX_K);
    for (size_t c = 0; c < n_clusters; c++) {
        if (offsets[c + 1] < offsets[c])
            return kiln_fail(ctx, KILN_E_ARG, "cluster offsets decrease at cluster %zu", c);
        if (offsets[c + 1] - offsets[c] > UINT32_MAX)
            return kiln_fail(ctx, KILN_E_RANGE, "cluster %zu has %llu members, more than 2^32 - 1",
                             c, (unsigned long long)(offsets[c + 1] - offsets[c]));
    }
    if (offsets[n_clusters] > offsets[0] && (!members || !out))
        return kiln_fail(ctx, KILN_E_ARG, "device cluster kNN: NULL members or output");
    for (size_t s = offsets[0]; s < offsets[n_clusters]; s++)
        if (members[s] >= set->count)
            return kiln_fail(ctx, KILN_E_RANGE,
                             "cluster member slot %zu holds id %u of %zu vectors", s, members[s],
                             set->count);
    if (n_clusters == 0 || offsets[n_clusters] == offsets[0])
        return KILN_OK;

    struct kiln_device_state *st;
    kiln_status status = kiln_cl_state(ctx, &st);
    if (status != KILN_OK)
        return status;
    struct kiln_cl_config cfg = {.kind = KILN_CL_KNN_Q4,
                                 .k = k,
                                 .words = set->words,
                                 .stage_local = opts->stage_local,
                                 .pair = opts->pair};
    struct knn_job job = {.ctx = ctx,
                          .st = st,
                          .set = set,
                          .offsets = offsets,
                          .n_clusters = n_clusters,
                          .members = members,
                          .k = k,
                          .out = out,
                          .stride = kiln_q4_stride(set->words),
                          .inject = opts->inject_failures,
                          .inject_site = opts->inject_alloc_site,
                          .inject_allocs = opts->inject_alloc_count};
    if (!st->knn_slots && !(st->knn_slots = calloc(2, sizeof *st->knn_slots)))
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory for the device kNN slots");
    struct knn_slot *const slots = st->knn_slots; /* decision 10 */
    if (opts->inject_failures || opts->inject_alloc_count)
        knn_drain(&job, slots);
    uint32_t retries = 0;
    status = make_kernel(ctx, st, &cfg, &job.kernel);
    if (status != KILN_OK)
        goto cleanup;
    job.lws = cfg.lws;
    job.paired = cfg.paired;
    for (size_t c = 0; c < n_clusters; c++)
        if (offsets[c + 1] - offsets[c] > job.largest)
            job.largest = (uint32_t)(offsets[c + 1] - offsets[c]);
    job.limit = knn_first_limit(st, job.stride, k, opts->max_batch);
    size_t done = 0;
    for (;;) {
        cl_int clerr = CL_SUCCESS;
        size_t fb = 0, fe = 0;
        status = knn_run(&job, slots, &done, &clerr, &fb, &fe);
        if (status == KILN_OK)
            break;
        knn_drain(&job, slots);
        if (!kiln_cl_retryable(clerr))
            goto cleanup;
        const size_t failed = offsets[fe] - offsets[fb];
        if (job.limit <= 1) {
            char why[KILN_ERRMSG_MAX];
            snprintf(why, sizeof why, "%s", kiln_errmsg(ctx));
            status = kiln_fail(ctx, KILN_E_DEVICE,
                               "cluster %zu of %zu members does not fit on %s even in a batch of "
                               "its own: %s",
                               fb, failed, st->info.device_name, why);
            goto cleanup;
        }
        job.limit = (failed < job.limit ? failed : job.limit) / 2;
        if (job.limit == 0)
            job.limit = 1;
        retries++;
    }
cleanup:
    if (status != KILN_OK) /* on success the slots are idle, kept (decision 10) */
        knn_drain(&job, slots);
    if (job.kernel)
        clReleaseKernel(job.kernel);
    if (stats) {
        stats->batches = job.batches;
        stats->retries = retries;
        stats->batch_limit = job.limit;
        stats->seconds = kiln_now() - t0;
    }
    return status;
}

void kiln_cl_knn_slots_release(struct kiln_device_state *st) {
    if (!st->knn_slots)
        return;
    slot_release(&st->knn_slots[0]);
    slot_release(&st->knn_slots[1]);
    free(st->knn_slots);
    st->knn_slots = NULL;
}

void kiln_cl_cluster_knn_release(kiln_ctx *ctx) {
    struct kiln_device_state *st = ctx->device;
    if (!st)
        return;
    for (int q = 1; q >= 0; q--)
        clFinish(st->queue[q]);
    kiln_cl_knn_slots_release(st);
}

/* ==== k-means assignment ==== */

struct kmeans_bufs {
    cl_mem rows, ids, dists;
    size_t cap; /* rows */
};

static void kmeans_release(struct kmeans_bufs *b) {
    release_mem(&b->dists);
    release_mem(&b->ids);
    release_mem(&b->rows);
    b->cap = 0;
}

/* What one k-means batch needs besides its row range. */
struct kmeans_job {
    kiln_ctx *ctx;
    struct kiln_device_state *st;
    cl_kernel kernel;
    uint32_t lws;
    const float *rows;
    size_t dim;
    uint32_t r;
    uint32_t *ids;
    float *dists;
    uint32_t inject; /* failures left to inject */
    struct kmeans_bufs bufs;
};

/* Assigns rows [r0, r0 + m) synchronously on queue 0. */
static kiln_status kmeans_batch(struct kmeans_job *job, size_t r0, size_t m, cl_int *clerr_out) {
    kiln_ctx *ctx = job->ctx;
    kiln_status status = KILN_OK;
    cl_int clerr = CL_SUCCESS;
    struct kmeans_bufs *const b = &job->bufs;
    const cl_command_queue q = job->st->queue[0];
    const size_t out_bytes = m * job->r * 4;
    const cl_uint mm = (cl_uint)m;
    KILN_CL_CHECK(injected_failure(&job->inject, m));
    if (b->cap < m) {
        kmeans_release(b);
        KILN_CL_CHECK(device_buffer(job->st, q, CL_MEM_READ_ONLY, m * job->dim * 4, &b->rows));
        KILN_CL_CHECK(device_buffer(job->st, q, CL_MEM_WRITE_ONLY, out_bytes, &b->ids));
        KILN_CL_CHECK(device_buffer(job->st, q, CL_MEM_WRITE_ONLY, out_bytes, &b->dists));
        b->cap = m;
    }
    KILN_CL_CHECK(clEnqueueWriteBuffer(q, b->rows, CL_FALSE, 0, m * job->dim * 4,
                                       job->rows + r0 * job->dim, 0, NULL, NULL));
    KILN_CL_CHECK(clSetKernelArg(job->kernel, 0, sizeof(cl_mem), &b->rows));
    KILN_CL_CHECK(clSetKernelArg(job->kernel, 1, sizeof mm, &mm));
    KILN_CL_CHECK(clSetKernelArg(job->kernel, 4, sizeof(cl_mem), &b->ids));
    KILN_CL_CHECK(clSetKernelArg(job->kernel, 5, sizeof(cl_mem), &b->dists));
    const size_t local = job->lws, global = (m + job->lws - 1) / job->lws * job->lws;
    KILN_CL_CHECK(clEnqueueNDRangeKernel(q, job->kernel, 1, NULL, &global, &local, 0, NULL, NULL));
    KILN_CL_CHECK(clEnqueueReadBuffer(q, b->ids, CL_FALSE, 0, out_bytes, job->ids + r0 * job->r, 0,
                                      NULL, NULL));
    KILN_CL_CHECK(clEnqueueReadBuffer(q, b->dists, CL_TRUE, 0, out_bytes, job->dists + r0 * job->r,
                                      0, NULL, NULL));
cleanup:
    *clerr_out = clerr;
    return status;
}

kiln_status kiln_cl_kmeans_assign(kiln_ctx *ctx, const float *rows, size_t n, size_t dim,
                                  const float *centroids, uint32_t k, uint32_t r,
                                  const kiln_cl_opts *opts, uint32_t *ids, float *dists,
                                  kiln_cl_stats *stats) {
    const double t0 = kiln_now();
    const kiln_cl_opts none = {0};
    if (!opts)
        opts = &none;
    if (stats)
        memset(stats, 0, sizeof *stats);
    if ((n && (!rows || !ids || !dists)) || !centroids || k == 0)
        return kiln_fail(ctx, KILN_E_ARG,
                         "device cluster assignment: NULL argument or no centroids");
    if (dim == 0 || dim > KILN_Q4_MAX_DIM)
        return kiln_fail(ctx, KILN_E_RANGE,
                         "device cluster assignment: dimension %zu is outside 1..%d", dim,
                         KILN_Q4_MAX_DIM);
    if (r == 0 || r > KILN_CL_MAX_TOP)
        return kiln_fail(ctx, KILN_E_ARG, "device cluster assignment: r = %u is outside 1..%d",
                         (unsigned)r, KILN_CL_MAX_TOP);
    if (n == 0)
        return KILN_OK;
    struct kiln_device_state *st;
    kiln_status status = kiln_cl_state(ctx, &st);
    if (status != KILN_OK)
        return status;
    cl_int clerr = CL_SUCCESS;
    cl_mem cent = NULL;
    uint32_t batches = 0, retries = 0;
    const size_t row_bytes = dim * 4, per_row = row_bytes + (size_t)r * 8;
    size_t limit = KMEANS_MAX_BATCH;
    struct kmeans_job job = {.ctx = ctx,
                             .st = st,
                             .rows = rows,
                             .dim = dim,
                             .r = r,
                             .ids = ids,
                             .dists = dists,
                             .inject = opts->inject_failures};
    struct kiln_cl_config cfg = {.kind = KILN_CL_KMEANS_ASSIGN,
                                 .dim = (uint32_t)dim,
                                 .top = r,
                                 .stage_local = opts->stage_local};
    const size_t cent_bytes = (size_t)k * row_bytes;
    if (cent_bytes > st->info.max_alloc_bytes) {
        status = kiln_fail(ctx, KILN_E_RANGE,
                           "%u centroids of dimension %zu exceed the largest buffer of %s (%llu "
                           "bytes)",
                           (unsigned)k, dim, st->info.device_name,
                           (unsigned long long)st->info.max_alloc_bytes);
        goto cleanup;
    }
    if (st->info.max_alloc_bytes / per_row < limit)
        limit = (size_t)(st->info.max_alloc_bytes / per_row);
    if (st->info.global_mem_bytes / 4 / per_row < limit)
        limit = (size_t)(st->info.global_mem_bytes / 4 / per_row);
    if (opts->max_batch && opts->max_batch < limit)
        limit = opts->max_batch;
    limit = limit ? limit : 1;
    status = make_kernel(ctx, st, &cfg, &job.kernel);
    if (status != KILN_OK)
        goto cleanup;
    job.lws = cfg.lws;
    KILN_CL_CHECK(device_buffer(st, st->queue[0], CL_MEM_READ_ONLY, cent_bytes, &cent));
    KILN_CL_CHECK(
        clEnqueueWriteBuffer(st->queue[0], cent, CL_TRUE, 0, cent_bytes, centroids, 0, NULL, NULL));
    KILN_CL_CHECK(clSetKernelArg(job.kernel, 2, sizeof cent, &cent));
    KILN_CL_CHECK(clSetKernelArg(job.kernel, 3, sizeof k, &k));
    for (size_t r0 = 0; r0 < n;) {
        const size_t m = n - r0 < limit ? n - r0 : limit;
        status = kmeans_batch(&job, r0, m, &clerr);
        if (status == KILN_OK) {
            r0 += m;
            batches++;
            continue;
        }
        clFinish(st->queue[0]);
        kmeans_release(&job.bufs);
        if (!kiln_cl_retryable(clerr) || m == 1)
            goto cleanup;
        limit = m / 2; /* decision 3, one queue */
        retries++;
    }
    status = KILN_OK;
cleanup:
    clFinish(st->queue[0]);
    kmeans_release(&job.bufs);
    release_mem(&cent);
    if (job.kernel)
        clReleaseKernel(job.kernel);
    if (stats) {
        stats->batches = batches;
        stats->retries = retries;
        stats->batch_limit = limit;
        stats->seconds = kiln_now() - t0;
    }
    return status;
}

kiln_status kiln_cl_nearest(void *user, kiln_ctx *ctx, kiln_rows rows, kiln_centroids cent,
                            uint32_t r, kiln_nearest_out out) {
    if (rows.dim != cent.dim)
        return kiln_fail(ctx, KILN_E_ARG,
                         "nearest centroids on the device: rows of dim %u, centroids of dim %u",
                         rows.dim, cent.dim);
    return kiln_cl_kmeans_assign(ctx, rows.x, rows.n, rows.dim, cent.c, cent.k, r,
                                 (const kiln_cl_opts *)user, out.ids, out.dists, NULL);
}
