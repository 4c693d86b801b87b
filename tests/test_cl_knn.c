/* test_cl_knn.c -- the OpenCL runtime and kernels against their host
 * references: device listing and selection, build-log errors, per-cluster
 * top-k (kernels/knn_q4.cl) bit for bit against kiln_q4_cluster_knn_ref in
 * both the in-place and the local-memory variant, batching and the halving
 * retry, and k-means assignment (kernels/kmeans_assign.cl). Skips when no
 * OpenCL platform is installed. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "file_util.h"
#include "kiln.h"
#include "../common/crc32c_internal.h"
#include "../host/cache_entry_internal.h"
#include "../host/device_internal.h"
#include "../host/quant4_internal.h"
#include "../common/rng_internal.h"

#define DATASETS "../shared/datasets"

static kiln_ctx *ctx;

/* ==== Helpers ==== */

/* A problem: n vectors of dimension dim, encoded, and clusters over them. */
typedef struct problem {
    size_t n, dim;
    uint8_t *codes; /* n * dim, for recomputing distances unsliced */
    kiln_q4_set set;
    uint64_t *offsets; /* n_clusters + 1 */
    uint32_t *members;
    size_t n_clusters;
} problem;

static void problem_free(problem *p) {
    free(p->codes);
    kiln_q4_set_release(&p->set);
    free(p->offsets);
    free(p->members);
}

/* Encodes rows (n x dim) with an L2 quantizer trained on them. */
static void problem_encode(problem *p, const float *rows, size_t n, size_t dim) {
    kiln_q4 *q = NULL;
    p->n = n;
    p->dim = dim;
    CHECK_OK(ctx, kiln_q4_train(ctx, rows, n, dim, KILN_METRIC_L2, 7, 0, &q));
    REQUIRE(q);
    p->codes = malloc(n * dim);
    REQUIRE(p->codes);
    for (size_t r = 0; r < n; r++)
        kiln_q4_codes(q, rows + r * dim, p->codes + r * dim);
    CHECK_OK(ctx, kiln_q4_set_encode(ctx, q, rows, n, 0, &p->set));
    REQUIRE(p->set.planes);
    kiln_q4_free(q);
}

/* Clusters of the given sizes over a random permutation of the ids; with
 * overlap, some ids also appear in a second cluster (never twice in one). */
static void problem_cluster(problem *p, kiln_rng *rng, const size_t *sizes, size_t n_clusters,
                            bool overlap) {
    size_t total = 0;
    for (size_t c = 0; c < n_clusters; c++)
        total += sizes[c];
    uint32_t *perm = malloc(p->n * sizeof *perm);
    p->offsets = malloc((n_clusters + 1) * sizeof *p->offsets);
    p->members = malloc((total ? total : 1) * sizeof *p->members);
    REQUIRE(perm && p->offsets && p->members);
    for (size_t i = 0; i < p->n; i++)
        perm[i] = (uint32_t)i;
    for (size_t i = p->n; i > 1; i--) {
        const size_t j = (size_t)kiln_rng_below(rng, i);
        const uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    size_t s = 0, next = 0;
    for (size_t c = 0; c < n_clusters; c++) {
        p->offsets[c] = s;
        const size_t reuse = overlap && c > 0 && sizes[c] > 2 ? sizes[c] / 3 : 0;
        for (size_t j = 0; j < sizes[c]; j++) {
            /* A reused id comes from before this cluster's own fresh ids. */
            if (j < reuse && p->offsets[c] > 0) {
                p->members[s++] = p->members[kiln_rng_below(rng, p->offsets[c])];
                for (size_t t = p->offsets[c]; t + 1 < s; t++)
                    if (p->members[t] == p->members[s - 1]) {
                        p->members[s - 1] = perm[next++ % p->n];
                        break;
                    }
            } else {
                p->members[s++] = perm[next++ % p->n];
            }
        }
    }
    REQUIRE(next <= p->n); /* fresh ids never repeat */
    p->offsets[n_clusters] = s;
    p->n_clusters = n_clusters;
    free(perm);
}

/* Device top-k == reference top-k, entry for entry, and every reported
 * distance == the unsliced reference on the codes. */
static void check_knn(const problem *p, uint32_t k, const kiln_cl_opts *opts, const char *what,
                      kiln_cl_stats *stats_out) {
    const size_t slots = p->offsets[p->n_clusters];
    kiln_q4_neighbor *dev = malloc((slots ? slots : 1) * k * sizeof *dev);
    kiln_q4_neighbor *ref = malloc((slots ? slots : 1) * k * sizeof *ref);
    REQUIRE(dev && ref);
    memset(dev, 0xAB, (slots ? slots : 1) * k * sizeof *dev);
    kiln_cl_stats stats;
    CHECK_OK(ctx, kiln_cl_cluster_knn(ctx, &p->set, p->offsets, p->n_clusters, p->members, k, opts,
                                      dev, &stats));
    CHECK_OK(ctx, kiln_q4_cluster_knn_ref(ctx, &p->set, p->offsets, p->n_clusters, p->members, k, 0,
                                          ref));
    size_t bad = 0, bad_dist = 0;
    for (size_t s = 0; s < slots; s++)
        for (uint32_t j = 0; j < k; j++) {
            const kiln_q4_neighbor a = dev[s * k + j], b = ref[s * k + j];
            if (a.dist != b.dist || a.id != b.id) {
                if (bad++ == 0)
                    fprintf(stderr, "%s: slot %zu (id %u) rank %u: device (%u, %u), ref (%u, %u)\n",
                            what, s, p->members[s], j, a.dist, a.id, b.dist, b.id);
            }
            if (a.id != KILN_Q4_NO_ID && a.id < p->n) {
                const uint32_t qid = p->members[s];
                bad_dist +=
                    a.dist != kiln_q4_dist_codes(p->codes + (size_t)qid * p->dim, p->set.norms[qid],
                                                 p->codes + (size_t)a.id * p->dim,
                                                 p->set.norms[a.id], p->dim);
            }
        }
    CHECK_MSG(bad == 0, "%s: %zu of %zu entries differ from the reference", what, bad, slots * k);
    CHECK_MSG(bad_dist == 0, "%s: %zu distances differ from the unsliced reference", what,
              bad_dist);
    if (stats_out)
        *stats_out = stats;
    free(dev);
    free(ref);
}

static float *random_rows(kiln_rng *rng, size_t n, size_t dim, size_t distinct) {
    float *v = malloc(n * dim * sizeof *v);
    REQUIRE(v);
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < dim; i++)
            v[r * dim + i] = (float)kiln_rng_uniform(rng);
    /* Exact duplicates, so equal distances (ties) occur at every dimension. */
    for (size_t r = distinct; r < n; r++)
        memcpy(v + r * dim, v + (r % distinct) * dim, dim * sizeof *v);
    return v;
}

/* ==== Tests ==== */

static void test_devices(uint32_t n) {
    kiln_device_info info;
    for (uint32_t i = 0; i < n; i++) {
        CHECK_OK(ctx, kiln_device_info_get(ctx, i, &info));
        fprintf(stderr, "device %u (%u:%u) %s: %s / %s, %s, %u CUs, %llu MB, local %llu KB\n", i,
                info.platform_index, info.device_index,
                info.type == KILN_DEVICE_GPU   ? "gpu"
                : info.type == KILN_DEVICE_CPU ? "cpu"
                                               : "other",
                info.platform_name, info.device_name, info.version, info.compute_units,
                (unsigned long long)(info.global_mem_bytes >> 20),
                (unsigned long long)(info.local_mem_bytes >> 10));
        CHECK(info.index == i && info.device_name[0] && info.platform_name[0]);
        CHECK(info.compute_units > 0 && info.global_mem_bytes > 0 && info.max_alloc_bytes > 0);
    }
    CHECK_FAILS(ctx, kiln_device_info_get(ctx, n, &info), KILN_E_RANGE, "out of range");
    CHECK_FAILS(ctx, kiln_device_select(ctx, "bogus", NULL), KILN_E_ARG,
                "is not auto, cpu, gpu or P:D");
    CHECK_FAILS(ctx, kiln_device_select(ctx, "99:0", NULL), KILN_E_NO_DEVICE,
                "no device 0 on platform 99");
    CHECK_FAILS(ctx, kiln_device_select(ctx, "1:x", NULL), KILN_E_ARG, "\"1:x\"");
    setenv("KILN_DEVICE", "nonsense", 1);
    CHECK_FAILS(ctx, kiln_device_select(ctx, NULL, NULL), KILN_E_ARG, "(from KILN_DEVICE)");
    unsetenv("KILN_DEVICE");
    CHECK_OK(ctx, kiln_device_select(ctx, "0:0", &info));
    CHECK(info.platform_index == 0 && info.device_index == 0);
    CHECK_OK(ctx, kiln_device_select(ctx, "auto", &info));
    fprintf(stderr, "using %s\n", info.device_name);
}

static void test_build_errors(void) {
    CHECK_FAILS(ctx, kiln_cl_program_check(ctx, "knn_q4.cl", "-DKILN_K=0", NULL), KILN_E_DEVICE,
                "KILN_K out of range");
    CHECK_FAILS(ctx, kiln_cl_program_check(ctx, "knn_q4.cl", "-DKILN_K=0", NULL), KILN_E_DEVICE,
                "CL_BUILD_PROGRAM_FAILURE");
    CHECK_FAILS(ctx, kiln_cl_program_check(ctx, "nope.cl", "", NULL), KILN_E_INTERNAL,
                "not among the embedded kernels");
    CHECK_OK(ctx, kiln_cl_program_check(ctx, "knn_q4.cl", "-DKILN_K=4", NULL));
    CHECK_OK(ctx, kiln_cl_program_check(ctx, "kmeans_assign.cl", "-DKILN_DIM=3", NULL));
}

/* The on-disk program cache (host/cl_cache.c): a second context starts from
 * the stored binary; a damaged file is a miss that is rebuilt and rewritten;
 * KILN_CACHE_DIR=off stores nothing. Each case uses fresh options, so
 * nothing is left in the context's in-memory cache from before. */
static size_t count_bins(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s 2>/dev/null | grep -c '\\.bin$'", dir);
    FILE *p = popen(cmd, "r");
    size_t n = 0;
    if (p) {
        if (fscanf(p, "%zu", &n) != 1)
            n = 0;
        pclose(p);
    }
    return n;
}

static bool check_in_new_ctx(const char *options, bool *from_disk) {
    kiln_ctx *c2;
    REQUIRE(kiln_ctx_new(&c2) == KILN_OK);
    const kiln_status st = kiln_cl_program_check(c2, "knn_q4.cl", options, from_disk);
    CHECK_OK(c2, st);
    kiln_ctx_free(c2);
    return st == KILN_OK;
}

/* An entry changed by someone without the secret, with its CRC recomputed
 * so that only the MAC can tell (cl_cache.c decision 6): never loaded, and
 * rebuilt. */
static void test_cache_forged(const char *dir) {
    bool disk = false;
    char path[600];
    CHECK(check_in_new_ctx("-DKILN_K=6", &disk) && !disk);
    CHECK(check_in_new_ctx("-DKILN_K=6", &disk) && disk);
    /* Every entry is forged, so the one K=6 uses is among them. */
    size_t len = 0;
    uint8_t *bytes = NULL;
    char cmd[700];
    snprintf(cmd, sizeof cmd, "ls %s/*.bin", dir);
    FILE *ls = popen(cmd, "r");
    REQUIRE(ls);
    size_t forged = 0;
    while (fgets(path, sizeof path, ls)) {
        path[strcspn(path, "\n")] = '\0';
        bytes = read_file(path, &len);
        REQUIRE(bytes && len > KILN_CACHE_HEADER + 200);
        CHECK(memcmp(bytes, KILN_CACHE_MAGIC, 8) == 0);
        bytes[KILN_CACHE_HEADER + len / 2 - KILN_CACHE_HEADER / 2] ^= 0x5a;
        const uint32_t crc = kiln_crc32c(0, bytes + KILN_CACHE_HEADER, len - KILN_CACHE_HEADER);
        for (int b = 0; b < 4; b++)
            bytes[24 + b] = (uint8_t)(crc >> (8 * b));
        REQUIRE(write_file(path, bytes, len));
        free(bytes);
        forged++;
    }
    pclose(ls);
    CHECK(forged >= 1);
    CHECK(check_in_new_ctx("-DKILN_K=6", &disk) && !disk);
    CHECK(check_in_new_ctx("-DKILN_K=6", &disk) && disk);
}

/* Runs check_in_new_ctx with stderr going to a file; the text into note. */
static bool check_capturing(const char *options, bool *from_disk, char *note, size_t cap) {
    char path[600];
    const char *tmp = getenv("KILN_TEST_TMP");
    snprintf(path, sizeof path, "%s/stderr-%ld", tmp && *tmp ? tmp : "/tmp", (long)getpid());
    fflush(stderr);
    const int saved = dup(2);
    FILE *f = fopen(path, "w+");
    REQUIRE(saved >= 0 && f);
    dup2(fileno(f), 2);
    const bool ok = check_in_new_ctx(options, from_disk);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(f);
    const size_t n = fread(note, 1, cap - 1, f);
    note[n] = '\0';
    fclose(f);
    unlink(path);
    return ok;
}

/* A cache folder others can write, or a key file others can read, is not
 * used (cl_cache.c decision 6): the build still succeeds, from source. */
static void test_cache_unsafe(const char *dir) {
    char open_dir[600], cmd[700], note[1024];
    bool disk = true;
    snprintf(open_dir, sizeof open_dir, "%s/shared", dir);
    REQUIRE(mkdir(open_dir, 0700) == 0 && chmod(open_dir, 0777) == 0);
    setenv("KILN_CACHE_DIR", open_dir, 1);
    CHECK(check_capturing("-DKILN_K=7", &disk, note, sizeof note) && !disk);
    CHECK_MSG(strstr(note, "not used") && strstr(note, "writable by others") &&
                  strstr(note, open_dir),
              "note: %s", note);
    CHECK(check_in_new_ctx("-DKILN_K=7", &disk) && !disk);
    CHECK(count_bins(open_dir) == 0);
    /* Private again: used; then a key file readable by others is refused. */
    REQUIRE(chmod(open_dir, 0700) == 0);
    CHECK(check_in_new_ctx("-DKILN_K=7", &disk) && !disk);
    CHECK(check_in_new_ctx("-DKILN_K=7", &disk) && disk);
    snprintf(cmd, sizeof cmd, "chmod 644 %s/key", open_dir);
    CHECK(system(cmd) == 0);
    CHECK(check_in_new_ctx("-DKILN_K=7", &disk) && !disk);
    snprintf(cmd, sizeof cmd, "chmod 600 %s/key", open_dir);
    CHECK(system(cmd) == 0);
    CHECK(check_in_new_ctx("-DKILN_K=7", &disk) && disk);
    /* Another key (another account's cache copied in): every entry a miss. */
    snprintf(cmd, sizeof cmd, "rm %s/key", open_dir);
    CHECK(system(cmd) == 0);
    CHECK(check_in_new_ctx("-DKILN_K=7", &disk) && !disk);
    CHECK(check_in_new_ctx("-DKILN_K=7", &disk) && disk);
    setenv("KILN_CACHE_DIR", dir, 1);
}

static void test_program_cache(const char *dir) {
    bool disk = true;
    CHECK(count_bins(dir) == 0);
    CHECK(check_in_new_ctx("-DKILN_K=3", &disk) && !disk);
    CHECK_MSG(count_bins(dir) == 1, "%zu cached binaries after one build", count_bins(dir));
    CHECK(check_in_new_ctx("-DKILN_K=3", &disk) && disk);
    /* Damage the payload: a miss, rebuilt from source and stored again. */
    char cmd[700];
    snprintf(cmd, sizeof cmd,
             "for f in %s/*.bin; do printf 'XXXX' | dd of=$f bs=1 seek=100 "
             "conv=notrunc status=none; done",
             dir);
    CHECK(system(cmd) == 0);
    CHECK(check_in_new_ctx("-DKILN_K=3", &disk) && !disk);
    CHECK(check_in_new_ctx("-DKILN_K=3", &disk) && disk);
    /* Truncated to its header: a miss too. */
    snprintf(cmd, sizeof cmd, "for f in %s/*.bin; do truncate -s 32 $f; done", dir);
    CHECK(system(cmd) == 0);
    CHECK(check_in_new_ctx("-DKILN_K=3", &disk) && !disk);
    /* Other options are another key; off stores nothing. */
    CHECK(check_in_new_ctx("-DKILN_K=4", &disk) && !disk);
    CHECK(count_bins(dir) == 2);
    setenv("KILN_CACHE_DIR", "off", 1);
    CHECK(check_in_new_ctx("-DKILN_K=5", &disk) && !disk);
    CHECK(check_in_new_ctx("-DKILN_K=5", &disk) && !disk);
    CHECK(count_bins(dir) == 2);
    setenv("KILN_CACHE_DIR", dir, 1);
    test_cache_forged(dir);
    test_cache_unsafe(dir);
}

static void test_knn_dims(void) {
    static const size_t dims[] = {1, 63, 64, 65, 128, 784};
    /* Singletons, pairs, empty clusters, k and k+1 members, clusters that
     * take several work-group tiles. */
    static const size_t sizes[] = {1, 2, 0, 8, 9, 3, 130, 1, 37, 2, 70, 0, 16, 17};
    const size_t n_clusters = sizeof sizes / sizeof sizes[0];
    kiln_rng rng;
    kiln_rng_seed(&rng, 77);
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        const size_t dim = dims[i], n = 300;
        float *rows = random_rows(&rng, n, dim, 200);
        problem p = {0};
        problem_encode(&p, rows, n, dim);
        problem_cluster(&p, &rng, sizes, n_clusters, true);
        char what[64];
        snprintf(what, sizeof what, "d=%zu k=8", dim);
        check_knn(&p, 8, NULL, what, NULL);
        /* Both kernels whatever the device (knn_q4.cl decision 7). */
        const kiln_cl_opts tile = {.pair = -1}, pair = {.pair = 1};
        snprintf(what, sizeof what, "d=%zu k=8 tile kernel", dim);
        check_knn(&p, 8, &tile, what, NULL);
        snprintf(what, sizeof what, "d=%zu k=8 pair kernel", dim);
        check_knn(&p, 8, &pair, what, NULL);
        if (dim == 1 || dim == 65 || dim == 784) {
            const kiln_cl_opts staged = {.stage_local = 1, .pair = -1};
            snprintf(what, sizeof what, "d=%zu k=8 staged tile kernel", dim);
            check_knn(&p, 8, &staged, what, NULL);
        }
        if (dim == 65) {
            check_knn(&p, 1, &tile, "d=65 k=1 tile", NULL);
            check_knn(&p, 1, &pair, "d=65 k=1 pair", NULL);
            check_knn(&p, 40, &tile, "d=65 k=40 tile", NULL);
            check_knn(&p, 40, &pair, "d=65 k=40 pair", NULL);
            /* The pair kernel's other insertions: K not a multiple of 8, and
             * vector steps past the unrolled sizes (knn_q4.cl decision 10). */
            check_knn(&p, 12, &pair, "d=65 k=12 pair", NULL);
            check_knn(&p, 72, &pair, "d=65 k=72 pair", NULL);
        }
        problem_free(&p);
        free(rows);
    }
}

/* The largest dimension, with codes 0 and 15 only: the pair kernel's float
 * dot products (knn_q4.cl decision 11) reach 225 * 65536, just under 2^24,
 * and must still be exact. */
static void test_knn_extremes(void) {
    const size_t n = 12, dim = KILN_Q4_MAX_DIM;
    float *rows = malloc(n * dim * sizeof *rows);
    REQUIRE(rows);
    kiln_rng rng;
    kiln_rng_seed(&rng, 3);
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < dim; i++) /* rows 0..3 all ones, so two share a cluster; 4 zeros */
            rows[r * dim + i] = r < 4    ? 1.0f
                                : r == 4 ? 0.0f
                                         : (float)(kiln_rng_below(&rng, 8) != 0);
    problem p = {0};
    problem_encode(&p, rows, n, dim);
    size_t extreme = 0;
    for (size_t i = 0; i < dim; i++)
        extreme += p.codes[i] == 15 && p.codes[dim + i] == 15;
    CHECK_MSG(extreme == dim, "%zu of %zu dimensions coded 15 in the all-ones rows", extreme, dim);
    const size_t sizes[2] = {5, 7};
    problem_cluster(&p, &rng, sizes, 2, false);
    const kiln_cl_opts pair = {.pair = 1};
    check_knn(&p, 4, &pair, "d=65536 k=4 pair", NULL);
    check_knn(&p, 8, &pair, "d=65536 k=8 pair", NULL);
    problem_free(&p);
    free(rows);
}

/* Many small batches through both slots, and injected exhaustion that the
 * halving retry absorbs. */
static void test_batches(void) {
    kiln_rng rng;
    kiln_rng_seed(&rng, 5);
    const size_t n = 2000, dim = 100;
    size_t sizes[60];
    for (size_t c = 0; c < 60; c++)
        sizes[c] = 1 + (size_t)kiln_rng_below(&rng, 60);
    float *rows = random_rows(&rng, n, dim, 1500);
    problem p = {0};
    problem_encode(&p, rows, n, dim);
    problem_cluster(&p, &rng, sizes, 60, true);
    kiln_cl_stats stats;
    const kiln_cl_opts small = {.max_batch = 90};
    check_knn(&p, 8, &small, "batches of <= 90", &stats);
    CHECK_MSG(stats.batches >= 10 && stats.retries == 0 && stats.batch_limit == 90,
              "%u batches, %u retries, limit %zu", stats.batches, stats.retries, stats.batch_limit);
    const kiln_cl_opts small_tile = {.max_batch = 90, .pair = -1};
    check_knn(&p, 8, &small_tile, "batches of <= 90, tile kernel", &stats);
    CHECK_MSG(stats.batches >= 10 && stats.retries == 0, "%u batches, %u retries", stats.batches,
              stats.retries);
    const kiln_cl_opts failing = {.max_batch = 400, .inject_failures = 3};
    check_knn(&p, 8, &failing, "3 injected failures", &stats);
    CHECK_MSG(stats.retries == 3 && stats.batch_limit < 400 && stats.batch_limit >= 25,
              "%u retries, limit %zu", stats.retries, stats.batch_limit);
    fprintf(stderr, "injected: %u batches, %u retries, final limit %zu\n", stats.batches,
            stats.retries, stats.batch_limit);
    /* The retried failure stays on record as the check macro wrote it. */
    CHECK_MSG(strstr(kiln_errmsg(ctx), "failed with CL_MEM_OBJECT_ALLOCATION_FAILURE (-4) at "
                                       "cl_knn.c:") != NULL,
              "message: %s", kiln_errmsg(ctx));
    /* Every allocation of the batch path, host or device, that fails is
     * absorbed by halving, and the result stays bit-identical. */
    for (uint32_t site = 1; site <= KILN_CL_ALLOC_SITES; site++) {
        const kiln_cl_opts alloc = {
            .max_batch = 400, .inject_alloc_site = site, .inject_alloc_count = 2};
        char what[64];
        snprintf(what, sizeof what, "allocation %u fails twice", site);
        check_knn(&p, 8, &alloc, what, &stats);
        CHECK_MSG(stats.retries == 2 && stats.batch_limit < 400, "%s: %u retries, limit %zu", what,
                  stats.retries, stats.batch_limit);
    }
    /* An allocation that always fails ends at batches of one cluster, named. */
    kiln_q4_neighbor *sink = malloc(p.offsets[p.n_clusters] * 8 * sizeof *sink);
    REQUIRE(sink);
    const kiln_cl_opts never = {
        .max_batch = 400, .inject_alloc_site = 1, .inject_alloc_count = 1000};
    CHECK_FAILS(ctx,
                kiln_cl_cluster_knn(ctx, &p.set, p.offsets, p.n_clusters, p.members, 8, &never,
                                    sink, &stats),
                KILN_E_DEVICE, "even in a batch of its own");
    const kiln_cl_opts never_dev = {
        .max_batch = 400, .inject_alloc_site = 6, .inject_alloc_count = 1000};
    CHECK_FAILS(ctx,
                kiln_cl_cluster_knn(ctx, &p.set, p.offsets, p.n_clusters, p.members, 8, &never_dev,
                                    sink, &stats),
                KILN_E_DEVICE, "CL_MEM_OBJECT_ALLOCATION_FAILURE");
    free(sink);
    /* Nothing to do: no clusters, only empty ones. */
    const uint64_t empty[3] = {0, 0, 0};
    CHECK_OK(ctx, kiln_cl_cluster_knn(ctx, &p.set, empty, 0, p.members, 4, NULL, NULL, NULL));
    CHECK_OK(ctx, kiln_cl_cluster_knn(ctx, &p.set, empty, 2, p.members, 4, NULL, NULL, NULL));
    /* Argument errors. */
    kiln_q4_neighbor out[8];
    const uint64_t one[2] = {0, 1};
    const uint32_t bad_id[1] = {(uint32_t)n};
    CHECK_FAILS(ctx, kiln_cl_cluster_knn(ctx, &p.set, one, 1, bad_id, 4, NULL, out, NULL),
                KILN_E_RANGE, "holds id 2000");
    CHECK_FAILS(ctx, kiln_cl_cluster_knn(ctx, &p.set, one, 1, p.members, 0, NULL, out, NULL),
                KILN_E_ARG, "k = 0");
    CHECK_FAILS(ctx, kiln_cl_cluster_knn(ctx, &p.set, one, 1, p.members, 257, NULL, out, NULL),
                KILN_E_ARG, "k = 257");
    problem_free(&p);
    free(rows);
}

/* Real data: SIFT descriptors in clusters of a few hundred, k = 32. */
static void test_siftsmall(void) {
    FILE *f = fopen(DATASETS "/siftsmall/siftsmall_base.fvecs", "rb");
    if (!f) {
        SKIP_PART(DATASETS "/siftsmall not found, dataset check skipped");
        return;
    }
    const size_t n = 10000, dim = 128;
    float *rows = malloc(n * dim * sizeof *rows);
    REQUIRE(rows);
    for (size_t r = 0; r < n; r++) {
        int32_t d;
        REQUIRE(fread(&d, 4, 1, f) == 1 && d == (int32_t)dim);
        REQUIRE(fread(rows + r * dim, 4, dim, f) == dim);
    }
    fclose(f);
    kiln_rng rng;
    kiln_rng_seed(&rng, 9);
    size_t sizes[25];
    for (size_t c = 0; c < 25; c++)
        sizes[c] = 400;
    problem p = {0};
    problem_encode(&p, rows, n, dim);
    problem_cluster(&p, &rng, sizes, 25, false);
    kiln_cl_stats stats;
    check_knn(&p, 32, NULL, "siftsmall k=32", &stats);
    fprintf(stderr, "siftsmall: 10000 members in clusters of 400, k=32: %.3f s\n", stats.seconds);
    problem_free(&p);
    free(rows);
}

/* Host oracle of the k-means kernel: the same loop order, then a stable
 * sort by distance (NaN as +inf) keeps smaller indexes first on ties. */
static void assign_ref(const float *rows, size_t n, size_t dim, const float *cent, uint32_t k,
                       uint32_t r, uint32_t *ids, float *dists) {
    for (size_t i = 0; i < n; i++) {
        for (uint32_t j = 0; j < r; j++) {
            ids[i * r + j] = UINT32_MAX;
            dists[i * r + j] = INFINITY;
        }
        for (uint32_t c = 0; c < k; c++) {
            float acc = 0;
            for (size_t t = 0; t < dim; t++) {
                const float e = rows[i * dim + t] - cent[c * dim + t];
                acc = acc + e * e;
            }
            acc = isnan(acc) ? INFINITY : acc;
            uint32_t p = r; /* insert after every entry <= acc */
            while (p > 0 && (dists[i * r + p - 1] > acc || ids[i * r + p - 1] == UINT32_MAX))
                p--;
            if (p == r)
                continue;
            for (uint32_t q = r - 1; q > p; q--) {
                ids[i * r + q] = ids[i * r + q - 1];
                dists[i * r + q] = dists[i * r + q - 1];
            }
            ids[i * r + p] = c;
            dists[i * r + p] = acc;
        }
    }
}

static void check_assign(const float *rows, size_t n, size_t dim, const float *cent, uint32_t k,
                         uint32_t r, const kiln_cl_opts *opts, const char *what) {
    uint32_t *dl = malloc(r * n * sizeof *dl), *rl = malloc(r * n * sizeof *rl);
    float *dd = malloc(r * n * sizeof *dd), *rd = malloc(r * n * sizeof *rd);
    REQUIRE(dl && rl && dd && rd);
    kiln_cl_stats stats;
    CHECK_OK(ctx, kiln_cl_kmeans_assign(ctx, rows, n, dim, cent, k, r, opts, dl, dd, &stats));
    assign_ref(rows, n, dim, cent, k, r, rl, rd);
    size_t exact = 0, bad = 0;
    for (size_t i = 0; i < r * n; i++) {
        exact += dl[i] == rl[i] && memcmp(&dd[i], &rd[i], sizeof dd[i]) == 0;
        /* A different id is fine only for a distance tie within rounding. */
        const bool close = (isinf(dd[i]) && isinf(rd[i])) || fabsf(dd[i] - rd[i]) <= 1e-5f * rd[i];
        bad += !close || (dl[i] != rl[i] && isinf(rd[i]));
    }
    CHECK_MSG(bad == 0, "%s: %zu of %zu assignments differ", what, bad, r * n);
    fprintf(stderr, "%s: %zu of %zu bit-identical, %u batches, %u retries\n", what, exact, r * n,
            stats.batches, stats.retries);
    free(dl), free(rl), free(dd), free(rd);
}

static void test_kmeans_assign(void) {
    kiln_rng rng;
    kiln_rng_seed(&rng, 31);
    const size_t n = 1500, dim = 37;
    const uint32_t k = 50;
    float *rows = random_rows(&rng, n, dim, n);
    float *cent = random_rows(&rng, k, dim, k);
    memcpy(cent + 7 * dim, cent + 3 * dim, dim * sizeof *cent); /* a tie: 3 must win */
    rows[11 * dim + 5] = NAN;                                   /* every distance NaN */
    check_assign(rows, n, dim, cent, k, 2, NULL, "assign r=2");
    check_assign(rows, n, dim, cent, k, 10, NULL, "assign r=10");
    const kiln_cl_opts staged = {.stage_local = 1, .max_batch = 500};
    check_assign(rows, n, dim, cent, k, 3, &staged, "assign r=3 staged, batches of 500");
    const kiln_cl_opts failing = {.max_batch = 1000, .inject_failures = 2};
    check_assign(rows, n, dim, cent, k, 2, &failing, "assign r=2, 2 injected failures");
    check_assign(rows, n, dim, cent, 1, 1, NULL, "assign, one centroid");
    check_assign(rows, n, dim, cent, 3, 5, NULL, "assign, r > k");
    uint32_t l[4];
    float d[4];
    CHECK_OK(ctx, kiln_cl_nearest(NULL, ctx, (kiln_rows){cent + 3 * dim, 1, (uint32_t)dim},
                                  (kiln_centroids){cent, k, (uint32_t)dim}, 2,
                                  (kiln_nearest_out){l, d}));
    CHECK(l[0] == 3 && d[0] == 0 && l[1] == 7 && d[1] == 0);
    CHECK_OK(ctx,
             kiln_cl_kmeans_assign(ctx, rows + 11 * dim, 1, dim, cent, k, 4, NULL, l, d, NULL));
    CHECK(l[0] == 0 && l[1] == 1 && l[2] == 2 && l[3] == 3 && isinf(d[0]) && isinf(d[3]));
    CHECK_OK(ctx, kiln_cl_kmeans_assign(ctx, rows, 1, dim, cent, 1, 2, NULL, l, d, NULL));
    CHECK(l[1] == UINT32_MAX && isinf(d[1]));
    CHECK_FAILS(ctx, kiln_cl_kmeans_assign(ctx, rows, n, dim, cent, 0, 1, NULL, l, d, NULL),
                KILN_E_ARG, "no centroids");
    CHECK_FAILS(ctx, kiln_cl_kmeans_assign(ctx, rows, n, dim, cent, k, 65, NULL, l, d, NULL),
                KILN_E_ARG, "r = 65");
    free(rows);
    free(cent);
}

/* SipHash-2-4 against the reference vector of its paper (appendix A) and
 * the first and last entries of its vectors.h table. */
static void test_siphash(void) {
    uint8_t key[KILN_CACHE_SECRET], msg[64];
    for (int i = 0; i < KILN_CACHE_SECRET; i++)
        key[i] = (uint8_t)i;
    for (int i = 0; i < 64; i++)
        msg[i] = (uint8_t)i;
    CHECK(kiln_siphash24(key, msg, 15) == 0xa129ca6149be45e5ULL);
    CHECK(kiln_siphash24(key, msg, 0) == 0x726fdb47dd0e0e31ULL);
    CHECK(kiln_siphash24(key, msg, 63) == 0x958a324ceb064572ULL);
    /* Header and parser agree, and one changed byte anywhere is refused. */
    uint8_t entry[KILN_CACHE_HEADER + 64];
    memcpy(entry + KILN_CACHE_HEADER, msg, 64);
    kiln_cache_entry_header(entry, 42, msg, 64, key);
    const uint8_t *payload;
    size_t size;
    CHECK(kiln_cache_entry_parse(entry, sizeof entry, 42, key, &payload, &size) && size == 64 &&
          payload == entry + KILN_CACHE_HEADER);
    CHECK(!kiln_cache_entry_parse(entry, sizeof entry, 43, key, &payload, &size) && !payload);
    CHECK(!kiln_cache_entry_parse(entry, sizeof entry - 1, 42, key, &payload, &size));
    size_t refused = 0;
    for (size_t i = 0; i < sizeof entry; i++) {
        entry[i] ^= 1;
        refused += !kiln_cache_entry_parse(entry, sizeof entry, 42, key, &payload, &size);
        entry[i] ^= 1;
    }
    CHECK_MSG(refused == sizeof entry, "%zu of %zu one-byte changes refused", refused,
              sizeof entry);
    key[0] ^= 1;
    CHECK(!kiln_cache_entry_parse(entry, sizeof entry, 42, key, &payload, &size));
}

int main(void) {
    /* A fresh program cache for this run (host/cl_cache.c). */
    char cache[512];
    const char *tmp = getenv("KILN_TEST_TMP");
    snprintf(cache, sizeof cache, "%s/clcache-%ld", tmp && *tmp ? tmp : "/tmp", (long)getpid());
    if (tmp && *tmp)
        mkdir(tmp, 0755);
    REQUIRE(mkdir(cache, 0755) == 0);
    setenv("KILN_CACHE_DIR", cache, 1);
    test_siphash();
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    uint32_t n = 0;
    const kiln_status st = kiln_device_count(ctx, &n);
    if (st == KILN_E_NO_DEVICE) {
        CHECK(strstr(kiln_errmsg(ctx), "pocl-opencl-icd") != NULL);
        fprintf(stderr, "%s\n", kiln_errmsg(ctx));
        kiln_ctx_free(ctx);
        SKIP("no OpenCL platform or device");
    }
    CHECK_OK(ctx, st);
    REQUIRE(n > 0);
    test_devices(n);
    test_program_cache(cache);
    test_build_errors();
    test_knn_dims();
    test_knn_extremes();
    test_batches();
    test_siftsmall();
    test_kmeans_assign();
    kiln_ctx_free(ctx);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", cache);
    CHECK(system(cmd) == 0);
    return check_report("test_cl_knn");
}
