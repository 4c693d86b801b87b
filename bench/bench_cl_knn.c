/* bench_cl_knn.c -- cost per pair of the per-cluster kNN on the device
 * (kiln_cl_cluster_knn, kernels/knn_q4.cl) against a scalar AND+POPCNT host
 * loop over the same codes (issue 12, "Benchmark").
 *
 * Method: C clusters of S members of dimension d, each cluster a uniform
 * random centre in [0, 1)^d plus uniform noise of width 0.5 per dimension,
 * encoded by an L2 kiln_q4 trained on the first clusters. The device call
 * runs once to build (or load) its program, then `reps` times; the median
 * wall time of the call (kiln_cl_stats.seconds) gives
 *
 *   ns/pair/core = median * compute units / pairs,  pairs = C * S (S-1) / 2
 *
 * (unordered pairs: each distance is needed once per pair), and the same
 * from the process's CPU time (getrusage, PoCL's threads included), which
 * other load on a shared machine disturbs less. The scalar
 * reference computes every unordered pair's distance on one thread with
 * POPCNT (no top-K), median of `reps`, as ns/pair of wall and of CPU time. With --check the device
 * output is compared, entry for entry, with kiln_q4_cluster_knn_ref.
 *
 * Prints one JSON line per result. Usage:
 *   bench_cl_knn [--dim D] [--clusters C] [--size S] [--k K] [--reps R]
 *                [--pair 0|1|-1] [--check] [--skip-scalar]
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/resource.h>

#include "kiln.h"
#include "../common/ctx_internal.h"
#include "../common/progress_internal.h"
#include "../common/rng_internal.h"
#include "../host/device_internal.h"
#include "../host/quant4_internal.h"

/* ==== Tunables ==== */

/* Clusters encoded per round, so d = 784 never holds all its floats. */
#define BENCH_ENCODE_CLUSTERS 16

/* ==== Helpers ==== */

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Fills `count` clusters of `size` rows (row-major, dim floats). */
static void cluster_rows(kiln_rng *rng, float *rows, size_t count, size_t size, size_t dim) {
    for (size_t c = 0; c < count; c++) {
        float *const base = rows + c * size * dim;
        for (size_t i = 0; i < dim; i++)
            base[i] = (float)kiln_rng_uniform(rng);
        for (size_t r = size; r-- > 0;)
            for (size_t i = 0; i < dim; i++)
                base[r * dim + i] = base[i] + (float)(kiln_rng_uniform(rng) - 0.5) * 0.5f;
    }
}

/* x86 needs POPCNT named to inline it; other targets have their own. */
#if defined(__x86_64__) || defined(__i386__)
#define BENCH_POPCNT __attribute__((target("popcnt")))
#else
#define BENCH_POPCNT
#endif

/* The host loop of the reference: one distance per unordered pair, the
 * query's planes in registers where W is a constant (d = 128 and 784 get
 * their own copies, as the kernel gets -DKILN_W). */
BENCH_POPCNT __attribute__((always_inline)) static inline uint32_t
scalar_dist(const uint64_t *a, uint32_t na, const uint64_t *b, uint32_t nb, uint32_t words) {
    uint32_t dot = 0;
    for (uint32_t w = 0; w < words; w++)
        for (unsigned p = 0; p < 4; p++)
            for (unsigned r = 0; r < 4; r++)
                dot += (uint32_t)__builtin_popcountll(a[p * words + w] & b[r * words + w])
                       << (p + r);
    return na + nb - 2u * dot;
}

BENCH_POPCNT __attribute__((always_inline)) static inline uint64_t
scalar_pass_w(const kiln_q4_set *set, size_t clusters, size_t size, uint32_t words) {
    const size_t stride = kiln_q4_stride(words);
    uint64_t sum = 0;
    for (size_t c = 0; c < clusters; c++)
        for (size_t i = c * size; i < (c + 1) * size; i++)
            for (size_t j = i + 1; j < (c + 1) * size; j++)
                sum += scalar_dist(set->planes + i * stride, set->norms[i],
                                   set->planes + j * stride, set->norms[j], words);
    return sum;
}

BENCH_POPCNT static uint64_t scalar_pass(const kiln_q4_set *set,
                                                              size_t clusters, size_t size) {
    switch (set->words) {
    case 2: return scalar_pass_w(set, clusters, size, 2);
    case 13: return scalar_pass_w(set, clusters, size, 13);
    default: return scalar_pass_w(set, clusters, size, set->words);
    }
}

/* CPU seconds of the whole process (PoCL's threads included). */
static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static int usage(void) {
    fprintf(stderr, "usage: bench_cl_knn [--dim D] [--clusters C] [--size S] [--k K] [--reps R] "
                    "[--pair 0|1|-1] [--check] [--skip-scalar]\n");
    return 2;
}

/* ==== Main ==== */

int main(int argc, char **argv) {
    size_t dim = 128, clusters = 300, size = 768;
    uint32_t k = 32;
    int reps = 5, pair = 0;
    bool check = false, scalar = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const bool more = i + 1 < argc;
        if (strcmp(a, "--dim") == 0 && more)
            dim = strtoull(argv[++i], NULL, 10);
        else if (strcmp(a, "--clusters") == 0 && more)
            clusters = strtoull(argv[++i], NULL, 10);
        else if (strcmp(a, "--size") == 0 && more)
            size = strtoull(argv[++i], NULL, 10);
        else if (strcmp(a, "--k") == 0 && more)
            k = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (strcmp(a, "--reps") == 0 && more)
            reps = atoi(argv[++i]);
        else if (strcmp(a, "--pair") == 0 && more)
            pair = atoi(argv[++i]);
        else if (strcmp(a, "--check") == 0)
            check = true;
        else if (strcmp(a, "--skip-scalar") == 0)
            scalar = false;
        else
            return usage();
    }
    if (dim < 1 || dim > 4096 || clusters < 1 || size < 2 || reps < 1 || reps > 99)
        return usage();

    kiln_ctx *ctx = NULL;
    int rc = 1;
    kiln_q4 *q = NULL;
    kiln_q4_set set = {0};
    float *rows = NULL;
    uint64_t *offsets = NULL;
    uint32_t *members = NULL;
    kiln_q4_neighbor *out = NULL, *ref = NULL;
    double times[100], cpu[100];
    kiln_device_info info;
    if (kiln_ctx_new(&ctx) != KILN_OK || kiln_device_select(ctx, NULL, &info) != KILN_OK) {
        fprintf(stderr, "bench_cl_knn: no device: %s\n", ctx ? kiln_errmsg(ctx) : "no context");
        goto cleanup;
    }
    const size_t n = clusters * size, round = BENCH_ENCODE_CLUSTERS < clusters
                                                  ? BENCH_ENCODE_CLUSTERS
                                                  : clusters;
    kiln_rng rng;
    kiln_rng_seed(&rng, 12);
    rows = malloc(round * size * dim * sizeof *rows);
    offsets = malloc((clusters + 1) * sizeof *offsets);
    members = malloc(n * sizeof *members);
    out = malloc(n * k * sizeof *out);
    set.words = kiln_q4_words(dim);
    set.count = n;
    set.norms = malloc(n * sizeof *set.norms);
    if (!rows || !offsets || !members || !out || !set.norms ||
        kiln_alloc_aligned(ctx, n * kiln_q4_stride(set.words) * 8, "codes",
                           (void **)&set.planes) != KILN_OK) {
        fprintf(stderr, "bench_cl_knn: out of memory\n");
        goto cleanup;
    }
    for (size_t c0 = 0; c0 < clusters; c0 += round) {
        const size_t m = clusters - c0 < round ? clusters - c0 : round;
        cluster_rows(&rng, rows, m, size, dim);
        if ((c0 == 0 &&
             kiln_q4_train(ctx, rows, m * size, dim, KILN_METRIC_L2, 7, 0, &q) != KILN_OK) ||
            kiln_q4_encode(ctx, q, rows, m * size, 0,
                           set.planes + c0 * size * kiln_q4_stride(set.words),
                           set.norms + c0 * size) != KILN_OK) {
            fprintf(stderr, "bench_cl_knn: encoding failed: %s\n", kiln_errmsg(ctx));
            goto cleanup;
        }
    }
    for (size_t c = 0; c <= clusters; c++)
        offsets[c] = c * size;
    for (size_t s = 0; s < n; s++)
        members[s] = (uint32_t)s;
    const double pairs = (double)clusters * (double)size * (double)(size - 1) / 2;

    const kiln_cl_opts opts = {.pair = pair};
    kiln_cl_stats stats;
    for (int r = -1; r < reps; r++) { /* r = -1 builds or loads the program */
        const double c0 = cpu_seconds();
        if (kiln_cl_cluster_knn(ctx, &set, offsets, clusters, members, k, &opts, out, &stats) !=
            KILN_OK) {
            fprintf(stderr, "bench_cl_knn: %s\n", kiln_errmsg(ctx));
            goto cleanup;
        }
        if (r >= 0) {
            times[r] = stats.seconds;
            cpu[r] = cpu_seconds() - c0;
        }
    }
    const double dev_s = median(times, reps), dev_cpu = median(cpu, reps);
    if (check) {
        ref = malloc(n * k * sizeof *ref);
        if (!ref || kiln_q4_cluster_knn_ref(ctx, &set, offsets, clusters, members, k, 0, ref) !=
                        KILN_OK) {
            fprintf(stderr, "bench_cl_knn: reference failed\n");
            goto cleanup;
        }
        size_t bad = 0;
        for (size_t i = 0; i < n * k; i++)
            bad += out[i].dist != ref[i].dist || out[i].id != ref[i].id;
        if (bad) {
            fprintf(stderr, "bench_cl_knn: %zu of %zu entries differ from the reference\n", bad,
                    n * k);
            goto cleanup;
        }
    }
    printf("{\"bench\":\"cl_knn\",\"device\":\"%s\",\"units\":%u,\"dim\":%zu,\"clusters\":%zu,"
           "\"size\":%zu,\"k\":%u,\"pair\":%d,\"reps\":%d,\"seconds\":%.4f,"
           "\"ns_pair_core\":%.2f,\"cpu_seconds\":%.4f,\"ns_pair_cpu\":%.2f,\"checked\":%s}\n",
           info.device_name, info.compute_units, dim, clusters, size, k, pair, reps, dev_s,
           dev_s * info.compute_units / pairs * 1e9, dev_cpu, dev_cpu / pairs * 1e9, check ? "true" : "false");
    if (scalar) {
        uint64_t sum = 0;
        for (int r = 0; r < reps; r++) {
            const double t0 = kiln_now(), c0 = cpu_seconds();
            sum += scalar_pass(&set, clusters, size);
            times[r] = kiln_now() - t0;
            cpu[r] = cpu_seconds() - c0;
        }
        const double sc_s = median(times, reps), sc_cpu = median(cpu, reps);
        printf("{\"bench\":\"scalar_popcnt\",\"dim\":%zu,\"clusters\":%zu,\"size\":%zu,"
               "\"reps\":%d,\"seconds\":%.4f,\"ns_pair\":%.2f,\"ns_pair_cpu\":%.2f,"
               "\"checksum\":%llu}\n",
               dim, clusters, size, reps, sc_s, sc_s / pairs * 1e9, sc_cpu / pairs * 1e9,
               (unsigned long long)sum);
    }
    rc = 0;
cleanup:
    free(ref);
    free(out);
    free(members);
    free(offsets);
    free(rows);
    kiln_q4_set_release(&set);
    kiln_q4_free(q);
    kiln_ctx_free(ctx);
    return rc;
}
