/* kiln_main.c -- the kiln command: build, search, eval, groundtruth, info,
 * check, generate, export, import, devices. Uses the public API (kiln.h) only.
 *
 * Design decisions:
 *  1. Every failure prints one line "kiln CMD: what is wrong" on stderr and
 *     exits non-zero (2 for usage errors, 1 otherwise); outputs are written
 *     atomically by the library, so a failed command leaves nothing behind.
 *  2. Human-readable tables go to stdout; --json switches to one JSON object
 *     per line for scripts and benchmarks.
 *  3. eval times queries one at a time, as a serving system sees them, after
 *     a warm-up pass; latency percentiles come from per-query timings.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli_opts.h"
#include "kiln.h"

#define EVAL_MAX_EFS 32

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ==== Shared helpers ==== */

static int fail(const char *cmd, kiln_ctx *ctx) {
    fprintf(stderr, "kiln %s: %s\n", cmd, kiln_errmsg(ctx));
    return 1;
}

static int setup(const cli_args *a, kiln_ctx **ctx) {
    if (kiln_ctx_new(ctx) != KILN_OK) {
        fprintf(stderr, "kiln: out of memory\n");
        return 1;
    }
    int i;
    for (i = 0; a->cmd->opts[i].name; i++)
        if (strcmp(a->cmd->opts[i].name, "progress") == 0)
            break;
    if (a->cmd->opts[i].name && cli_flag(a, "progress"))
        kiln_ctx_set_progress(*ctx, KILN_PROGRESS_ON);
    return 0;
}

/* Opens a dataset with the --format/--allow-nonfinite options of a. */
static kiln_status open_ds(kiln_ctx *ctx, const cli_args *a, const char *path, kiln_dataset **out) {
    kiln_format fmt = KILN_FORMAT_AUTO;
    const char *f = cli_str(a, "format");
    if (f && kiln_format_parse(f, &fmt) != KILN_OK) {
        fprintf(stderr,
                "kiln %s: --format: '%s' is not one of auto, fvecs, bvecs, ivecs, fbin, "
                "u8bin, i8bin, npy\n",
                a->cmd->name, f);
        exit(2);
    }
    unsigned flags = cli_flag(a, "allow-nonfinite") ? KILN_OPEN_ALLOW_NONFINITE : 0;
    return kiln_dataset_open(ctx, path, fmt, flags, out);
}

/* Reads a whole dataset as floats (caller frees). */
static kiln_status read_all_f32(kiln_ctx *ctx, const cli_args *a, const char *path, float **out,
                                size_t *n, size_t *d) {
    kiln_dataset *ds = NULL;
    *out = NULL;
    kiln_status st = open_ds(ctx, a, path, &ds);
    if (st)
        return st;
    *n = kiln_dataset_count(ds);
    *d = kiln_dataset_dim(ds);
    float *buf = malloc((*n ? *n : 1) * *d * sizeof(float));
    if (!buf) {
        kiln_dataset_free(ds);
        fprintf(stderr, "kiln %s: out of memory reading %s\n", a->cmd->name, path);
        exit(1);
    }
    st = kiln_dataset_read_f32(ds, 0, *n, buf);
    kiln_dataset_free(ds);
    if (st) {
        free(buf);
        return st;
    }
    *out = buf;
    return KILN_OK;
}

static bool parse_metric(const cli_args *a, kiln_metric *m) {
    const char *s = cli_str(a, "metric");
    if (kiln_metric_parse(s, m) != KILN_OK) {
        fprintf(stderr, "kiln %s: --metric: '%s' is not one of l2, ip, cos\n", a->cmd->name, s);
        return false;
    }
    return true;
}

/* ==== build ==== */

static const cli_opt build_opts[] = {
    {"output", 'o', "INDEX", NULL, "index file to write (required)"},
    {"metric", 0, "l2|ip|cos", "l2", "distance"},
    {"M", 'M', "N", "16", "links per node on upper levels; 2M on level 0"},
    {"ef-construction", 0, "N", "200", "beam width while building"},
    {"method", 0, "device|insert", "device",
     "device: the OpenCL pipeline; insert: CPU HNSW insertion"},
    {"device", 0, "auto|cpu|gpu|P:D", NULL,
     "OpenCL device for --method device (default: $KILN_DEVICE, else auto = a GPU if any)"},
    {"clusters", 0, "N", "0", "device: k-means clusters; 0 = from n and --cluster-size"},
    {"cluster-size", 0, "N", "768", "device: target members per cluster"},
    {"replicas", 0, "N", "2", "device: nearest clusters each vector joins (>= 2)"},
    {"knn-k", 0, "N", "0", "device: neighbours kept per vector per cluster; 0 = 2M"},
    {"threads", 't', "N", "0", "build threads; 0 = all cores"},
    {"seed", 0, "N", "1", "seed of the level sampling and every other random choice"},
    {"format", 0, "FMT", "auto",
     "input format: auto (by extension), fvecs, bvecs, fbin, u8bin, i8bin, npy"},
    {"allow-nonfinite", 0, NULL, NULL, "accept NaN/Inf values instead of rejecting the file"},
    {"progress", 0, NULL, NULL, "show progress on stderr even when it is not a terminal"},
    {"json", 0, NULL, NULL, "print the summary as one JSON line"},
    {NULL, 0, NULL, NULL, NULL}};
static const cli_cmd build_cmd = {"build",
                                  "BASE -o INDEX [options]",
                                  "Build an HNSW index over the vectors in BASE.",
                                  build_opts,
                                  1,
                                  1};

static int cmd_build(const cli_args *a) {
    kiln_build_params p;
    kiln_build_params_init(&p);
    const char *out = cli_str(a, "output");
    const char *method = cli_str(a, "method");
    if (!out) {
        fprintf(stderr, "kiln build: -o INDEX is required\n");
        return 2;
    }
    if (!parse_metric(a, &p.metric) || !cli_u32(a, "M", &p.M) ||
        !cli_u32(a, "ef-construction", &p.ef_construction) || !cli_u32(a, "threads", &p.threads) ||
        !cli_u64(a, "seed", &p.seed) || !cli_u32(a, "clusters", &p.clusters) ||
        !cli_u32(a, "cluster-size", &p.cluster_size) || !cli_u32(a, "replicas", &p.replicas) ||
        !cli_u32(a, "knn-k", &p.knn_k))
        return 2;
    p.device = cli_str(a, "device");
    if (strcmp(method, "insert") == 0)
        p.method = KILN_METHOD_INSERT;
    else if (strcmp(method, "device") == 0)
        p.method = KILN_METHOD_DEVICE;
    else {
        fprintf(stderr, "kiln build: --method: '%s' is not insert or device\n", method);
        return 2;
    }
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_dataset *ds = NULL;
    kiln_index *ix = NULL;
    int rc = 0;
    double t0 = now_s();
    if (open_ds(ctx, a, a->pos[0], &ds) || kiln_index_build_dataset(ctx, ds, &p, &ix)) {
        rc = fail("build", ctx);
        goto done;
    }
    double t_build = now_s() - t0;
    if (kiln_index_check(ix) != KILN_OK) {
        rc = fail("build", ctx);
        goto done;
    }
    double t1 = now_s();
    if (kiln_index_save(ix, out) != KILN_OK) {
        rc = fail("build", ctx);
        goto done;
    }
    double t_save = now_s() - t1;
    kiln_index_stats s;
    kiln_index_stats_get(ix, &s);
    kiln_build_report rep;
    kiln_index_build_report(ix, &rep);
    char stages[1024] = "";
    size_t used = 0;
    for (uint32_t i = 0; i < rep.n_stages && used < sizeof stages; i++)
        used += (size_t)snprintf(stages + used, sizeof stages - used, "%s\"%s\": %.4f",
                                 i ? ", " : "", rep.stages[i].name, rep.stages[i].seconds);
    if (cli_flag(a, "json")) {
        printf("{\"build_seconds\": %.4f, \"save_seconds\": %.4f, \"count\": %llu, \"dim\": %u, "
               "\"metric\": \"%s\", \"M\": %u, \"ef_construction\": %u, \"method\": \"%s\", "
               "\"threads\": %u, \"seed\": %llu, \"levels\": %u, \"avg_degree0\": %.3f, "
               "\"repaired_links\": %llu, \"stages\": {%s}",
               t_build, t_save, (unsigned long long)s.count, s.dim, kiln_metric_name(p.metric), p.M,
               p.ef_construction, method, p.threads, (unsigned long long)p.seed, s.levels,
               s.avg_degree[0], (unsigned long long)rep.repaired_links, stages);
        if (p.method == KILN_METHOD_DEVICE)
            printf(", \"device\": \"%s\", \"clusters\": %u, \"max_cluster_size\": %u, "
                   "\"device_batches\": %u, \"batch_retries\": %u, \"candidates_per_vector\": %.2f",
                   rep.device_name, rep.clusters, rep.max_cluster_size, rep.device_batches,
                   rep.batch_retries, rep.candidates_per_vector);
        printf(", \"version\": \"%s\"}\n", kiln_version_string());
    } else {
        printf("built %s: %llu vectors, dim %u, %s, M=%u, ef_construction=%u, method %s, "
               "%u levels, %.2f s build, %.2f s write\n",
               out, (unsigned long long)s.count, s.dim, kiln_metric_name(p.metric), p.M,
               p.ef_construction, method, s.levels, t_build, t_save);
        if (p.method == KILN_METHOD_DEVICE)
            printf("device %s: %u clusters (largest %u), %u batches, %u retries\n", rep.device_name,
                   rep.clusters, rep.max_cluster_size, rep.device_batches, rep.batch_retries);
        printf("stages (s): %s\n", stages);
    }
done:
    kiln_index_free(ix);
    kiln_dataset_free(ds);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== search ==== */

static const cli_opt search_opts[] = {
    {"k", 'k', "N", "10", "neighbours per query"},
    {"ef", 0, "N", "64", "search beam width (raised to k when smaller)"},
    {"output", 'o', "RESULT.ivecs", NULL, "write ids as .ivecs (default: print them)"},
    {"distances", 0, "DIST.fvecs", NULL, "also write distances as .fvecs"},
    {"threads", 't', "N", "0", "search threads; 0 = all cores"},
    {"format", 0, "FMT", "auto", "query file format"},
    {"allow-nonfinite", 0, NULL, NULL, "accept NaN/Inf query values"},
    {NULL, 0, NULL, NULL, NULL}};
static const cli_cmd search_cmd = {"search",
                                   "INDEX QUERIES [options]",
                                   "Search INDEX for the k nearest neighbours of each query.",
                                   search_opts,
                                   2,
                                   2};

static int cmd_search(const cli_args *a) {
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    if (!cli_u32(a, "k", &sp.k) || !cli_u32(a, "ef", &sp.ef) || !cli_u32(a, "threads", &sp.threads))
        return 2;
    if (sp.k == 0) {
        fprintf(stderr, "kiln search: -k must be at least 1\n");
        return 2;
    }
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_index *ix = NULL;
    float *q = NULL, *dist = NULL;
    int64_t *labels = NULL;
    int32_t *ids = NULL;
    size_t nq = 0, d = 0;
    int rc = 0;
    if (kiln_index_load(ctx, a->pos[0], &ix) || read_all_f32(ctx, a, a->pos[1], &q, &nq, &d)) {
        rc = fail("search", ctx);
        goto done;
    }
    if (d != kiln_index_dim(ix)) {
        fprintf(stderr, "kiln search: %s has dim %zu but the index has dim %zu\n", a->pos[1], d,
                kiln_index_dim(ix));
        rc = 1;
        goto done;
    }
    labels = malloc((nq ? nq : 1) * sp.k * sizeof *labels);
    dist = malloc((nq ? nq : 1) * sp.k * sizeof *dist);
    ids = malloc((nq ? nq : 1) * sp.k * sizeof *ids);
    if (!labels || !dist || !ids) {
        fprintf(stderr, "kiln search: out of memory for %zu results\n", nq * sp.k);
        rc = 1;
        goto done;
    }
    if (kiln_index_search(ix, q, nq, &sp, labels, dist)) {
        rc = fail("search", ctx);
        goto done;
    }
    for (size_t i = 0; i < nq * sp.k; i++)
        ids[i] = labels[i] > INT32_MAX ? -1 : (int32_t)labels[i];
    const char *out = cli_str(a, "output"), *dout = cli_str(a, "distances");
    if (out && kiln_dataset_write(ctx, out, KILN_FORMAT_IVECS, KILN_DTYPE_I32, ids, nq, sp.k)) {
        rc = fail("search", ctx);
        goto done;
    }
    if (dout && kiln_dataset_write(ctx, dout, KILN_FORMAT_FVECS, KILN_DTYPE_F32, dist, nq, sp.k)) {
        rc = fail("search", ctx);
        goto done;
    }
    if (!out) {
        for (size_t i = 0; i < nq; i++) {
            printf("%zu:", i);
            for (uint32_t j = 0; j < sp.k; j++)
                printf(" %lld", (long long)labels[i * sp.k + j]);
            putchar('\n');
        }
    }
done:
    free(ids);
    free(labels);
    free(dist);
    free(q);
    kiln_index_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== eval ==== */

static const cli_opt eval_opts[] = {
    {"k", 'k', "N", "10", "recall@k"},
    {"ef", 0, "LIST", "10,16,32,64,128", "comma-separated beam widths to sweep"},
    {"threads", 't', "N", "1", "query threads (queries are still sent one at a time)"},
    {"repeat", 0, "N", "1", "timed passes per ef; the median QPS is reported"},
    {"format", 0, "FMT", "auto", "query file format"},
    {"gt-format", 0, "FMT", "auto", "ground-truth file format (ivecs, ibin = big-ann .gt, npy)"},
    {"json", 0, NULL, NULL,
     "one JSON object per ef (keys ef, k, recall, qps, mean_ms, p99_ms, threads)"},
    {NULL, 0, NULL, NULL, NULL}};
static const cli_cmd eval_cmd = {"eval",
                                 "INDEX QUERIES GROUNDTRUTH [options]",
                                 "Measure recall@k, QPS and latency of INDEX over a sweep of ef.",
                                 eval_opts,
                                 3,
                                 3};

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static int cmd_eval(const cli_args *a) {
    uint32_t k, threads, repeat, efs[EVAL_MAX_EFS];
    size_t nef;
    if (!cli_u32(a, "k", &k) || !cli_u32(a, "threads", &threads) ||
        !cli_u32(a, "repeat", &repeat) || !cli_u32_list(a, "ef", efs, EVAL_MAX_EFS, &nef))
        return 2;
    if (k == 0 || repeat == 0) {
        fprintf(stderr, "kiln eval: -k and --repeat must be at least 1\n");
        return 2;
    }
    if (threads == 0)
        threads = (uint32_t)omp_get_num_procs();
    kiln_format gt_format;
    if (kiln_format_parse(cli_str(a, "gt-format"), &gt_format) != KILN_OK) {
        fprintf(stderr,
                "kiln eval: --gt-format: '%s' is not one of auto, fvecs, bvecs, ivecs, fbin, "
                "u8bin, i8bin, npy, ibin\n",
                cli_str(a, "gt-format"));
        return 2;
    }
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_index *ix = NULL;
    kiln_dataset *gtds = NULL;
    float *q = NULL;
    int32_t *gt = NULL;
    int64_t *labels = NULL;
    double *lat = NULL, *qps_runs = NULL;
    size_t nq = 0, d = 0;
    int rc = 0;
    if (kiln_index_load(ctx, a->pos[0], &ix) || read_all_f32(ctx, a, a->pos[1], &q, &nq, &d)) {
        rc = fail("eval", ctx);
        goto done;
    }
    if (kiln_dataset_open(ctx, a->pos[2], gt_format, 0, &gtds)) {
        fprintf(stderr, "kiln eval: %s%s\n", kiln_errmsg(ctx),
                gt_format == KILN_FORMAT_AUTO ? " (for the ground truth: --gt-format)" : "");
        rc = 1;
        goto done;
    }
    size_t gk = kiln_dataset_dim(gtds);
    if (d != kiln_index_dim(ix) || kiln_dataset_count(gtds) != nq || gk < k) {
        fprintf(stderr,
                "kiln eval: mismatch: queries %zu x %zu, index dim %zu, ground truth %zu x %zu "
                "(needs %zu rows of at least k=%u)\n",
                nq, d, kiln_index_dim(ix), kiln_dataset_count(gtds), gk, nq, k);
        rc = 1;
        goto done;
    }
    gt = malloc((nq ? nq : 1) * gk * sizeof *gt);
    labels = malloc((nq ? nq : 1) * k * sizeof *labels);
    lat = malloc((nq ? nq : 1) * sizeof *lat);
    qps_runs = malloc(repeat * sizeof *qps_runs);
    if (!gt || !labels || !lat || !qps_runs) {
        fprintf(stderr, "kiln eval: out of memory\n");
        rc = 1;
        goto done;
    }
    if (kiln_dataset_read_i32(gtds, 0, nq, gt)) {
        rc = fail("eval", ctx);
        goto done;
    }
    bool json = cli_flag(a, "json");
    if (!json)
        printf("%-6s %-10s %-12s %-10s %-10s\n", "ef", "recall@k", "QPS", "mean_ms", "p99_ms");
    for (size_t e = 0; e < nef; e++) {
        kiln_search_params sp = {.k = k, .ef = efs[e], .threads = 1};
        kiln_status st = KILN_OK;
        for (uint32_t pass = 0; pass <= repeat; pass++) { /* pass 0 warms up */
            double t0 = now_s();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
            for (size_t i = 0; i < nq; i++) {
                double ts = now_s();
                kiln_status s = kiln_index_search(ix, q + i * d, 1, &sp, labels + i * k, NULL);
                lat[i] = now_s() - ts;
                if (s) {
#pragma omp atomic write
                    st = s;
                }
            }
            if (pass > 0)
                qps_runs[pass - 1] = nq / (now_s() - t0);
        }
        if (st) {
            rc = fail("eval", ctx);
            goto done;
        }
        size_t hits = 0;
        for (size_t i = 0; i < nq; i++)
            for (uint32_t j = 0; j < k; j++)
                for (uint32_t g = 0; g < k; g++)
                    if (labels[i * k + j] == gt[i * gk + g]) {
                        hits++;
                        break;
                    }
        double recall = nq ? (double)hits / ((double)nq * k) : 0.0;
        double mean = 0;
        for (size_t i = 0; i < nq; i++)
            mean += lat[i];
        mean = nq ? mean / nq : 0;
        qsort(lat, nq, sizeof *lat, cmp_double);
        double p99 = nq ? lat[(size_t)ceil(0.99 * nq) - 1] : 0;
        qsort(qps_runs, repeat, sizeof *qps_runs, cmp_double);
        double qps = qps_runs[repeat / 2];
        if (json)
            printf("{\"ef\": %u, \"k\": %u, \"recall\": %.6f, \"qps\": %.1f, \"mean_ms\": %.5f, "
                   "\"p99_ms\": %.5f, \"threads\": %u}\n",
                   efs[e], k, recall, qps, mean * 1e3, p99 * 1e3, threads);
        else
            printf("%-6u %-10.4f %-12.1f %-10.4f %-10.4f\n", efs[e], recall, qps, mean * 1e3,
                   p99 * 1e3);
        fflush(stdout);
    }
done:
    free(qps_runs);
    free(lat);
    free(labels);
    free(gt);
    free(q);
    kiln_dataset_free(gtds);
    kiln_index_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== groundtruth ==== */

static const cli_opt gt_opts[] = {
    {"k", 'k', "N", "100", "neighbours per query"},
    {"output", 'o', "GT.ivecs", NULL, "ids to write as .ivecs (required)"},
    {"distances", 0, "DIST.fvecs", NULL, "also write the distances as .fvecs"},
    {"metric", 0, "l2|ip|cos", "l2", "distance"},
    {"threads", 't', "N", "0", "threads; 0 = all cores"},
    {"format", 0, "FMT", "auto", "input format of BASE and QUERIES"},
    {"allow-nonfinite", 0, NULL, NULL, "accept NaN/Inf values"},
    {"progress", 0, NULL, NULL, "show progress on stderr even when it is not a terminal"},
    {NULL, 0, NULL, NULL, NULL}};
static const cli_cmd gt_cmd = {"groundtruth",
                               "BASE QUERIES -o GT.ivecs [options]",
                               "Exact k nearest neighbours by brute force (the recall oracle).",
                               gt_opts,
                               2,
                               2};

static int cmd_groundtruth(const cli_args *a) {
    uint32_t k, threads;
    kiln_metric metric;
    const char *out = cli_str(a, "output"), *dout = cli_str(a, "distances");
    if (!cli_u32(a, "k", &k) || !cli_u32(a, "threads", &threads) || !parse_metric(a, &metric))
        return 2;
    if (!out || k == 0) {
        fprintf(stderr, "kiln groundtruth: -o GT.ivecs is required and -k must be at least 1\n");
        return 2;
    }
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_dataset *base = NULL, *qs = NULL;
    int64_t *labels = NULL;
    float *dist = NULL;
    int32_t *ids = NULL;
    int rc = 0;
    if (open_ds(ctx, a, a->pos[0], &base) || open_ds(ctx, a, a->pos[1], &qs)) {
        rc = fail("groundtruth", ctx);
        goto done;
    }
    size_t nq = kiln_dataset_count(qs);
    labels = malloc((nq ? nq : 1) * k * sizeof *labels);
    dist = malloc((nq ? nq : 1) * k * sizeof *dist);
    ids = malloc((nq ? nq : 1) * k * sizeof *ids);
    if (!labels || !dist || !ids) {
        fprintf(stderr, "kiln groundtruth: out of memory for %zu x %u results\n", nq, k);
        rc = 1;
        goto done;
    }
    if (kiln_knn_exact_dataset(ctx, base, qs, metric, k, threads, labels, dist)) {
        rc = fail("groundtruth", ctx);
        goto done;
    }
    for (size_t i = 0; i < nq * k; i++)
        ids[i] = (int32_t)labels[i];
    if (kiln_dataset_write(ctx, out, KILN_FORMAT_IVECS, KILN_DTYPE_I32, ids, nq, k) ||
        (dout && kiln_dataset_write(ctx, dout, KILN_FORMAT_FVECS, KILN_DTYPE_F32, dist, nq, k))) {
        rc = fail("groundtruth", ctx);
        goto done;
    }
done:
    free(ids);
    free(dist);
    free(labels);
    kiln_dataset_free(qs);
    kiln_dataset_free(base);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== info, check ==== */

static const cli_opt no_opts[] = {{NULL, 0, NULL, NULL, NULL}};
static const cli_opt info_opts[] = {
    {"header", 0, NULL, NULL,
     "read the header alone (constant time for any size); no per-level stats"},
    {NULL, 0, NULL, NULL, NULL}};
static const cli_cmd info_cmd = {
    "info", "INDEX [--header]", "Show an index's header, levels, degrees and size.", info_opts, 1,
    1};
static const cli_cmd check_cmd = {
    "check", "INDEX", "Verify an index file and run the graph validator.", no_opts, 1, 1};

static int cmd_info(const cli_args *a) {
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_index_info h;
    kiln_index *ix = NULL;
    int rc = 0;
    bool header_only = cli_flag(a, "header");
    if (kiln_index_info_read(ctx, a->pos[0], &h) ||
        (!header_only && kiln_index_load(ctx, a->pos[0], &ix))) {
        rc = fail("info", ctx);
        goto done;
    }
    kiln_index_stats s = {.levels = h.count ? h.max_level + 1 : 0};
    if (ix)
        kiln_index_stats_get(ix, &s);
    printf("file:            %s\n", a->pos[0]);
    printf("format version:  %u\n", h.format_version);
    printf("count:           %llu\n", (unsigned long long)h.count);
    printf("dim:             %u\n", h.dim);
    printf("metric:          %s\n", kiln_metric_name(h.metric));
    printf("M:               %u (level 0: %u)\n", h.M, h.M0);
    printf("ef_construction: %u\n", h.ef_construction);
    printf("seed:            %llu\n", (unsigned long long)h.seed);
    printf("layers:          %u\n", s.levels);
    printf("entry point:     %u\n", h.entry_point);
    printf("file bytes:      %llu\n", (unsigned long long)h.file_bytes);
    if (header_only)
        goto done;
    printf("memory bytes:    %llu\n", (unsigned long long)s.memory_bytes);
    printf("%-6s %-12s %-10s %-10s\n", "level", "nodes", "avg_deg", "max_deg");
    for (uint32_t l = 0; l < s.levels; l++)
        printf("%-6u %-12llu %-10.2f %-10u\n", l, (unsigned long long)s.nodes_per_level[l],
               s.avg_degree[l], s.max_degree[l]);
done:
    kiln_index_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

static int cmd_check(const cli_args *a) {
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_index *ix = NULL;
    int rc = 0;
    if (kiln_index_load(ctx, a->pos[0], &ix) || kiln_index_check(ix))
        rc = fail("check", ctx);
    else
        printf("%s: ok (%zu vectors, graph valid)\n", a->pos[0], kiln_index_count(ix));
    kiln_index_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== export, import ==== */

static const cli_opt export_opts[] = {
    {"output", 'o', "FILE", NULL, "file to write (required)"},
    {"format", 0, "hnswlib", "hnswlib",
     "file format: hnswlib = HierarchicalNSW::saveIndex layout (see docs/FORMAT.md)"},
    {NULL, 0, NULL, NULL, NULL}};
static const cli_cmd export_cmd = {"export",
                                   "INDEX --format hnswlib -o FILE",
                                   "Write a kiln index in another library's file format.",
                                   export_opts,
                                   1,
                                   1};
static const cli_opt import_opts[] = {
    {"output", 'o', "INDEX", NULL, "kiln index file to write (required)"},
    {"format", 0, "hnswlib", "hnswlib", "format of FILE: hnswlib = a saveIndex file of floats"},
    {"dim", 'd', "D", NULL, "vector dimension (required: hnswlib files do not store it)"},
    {"metric", 0, "l2|ip|cos", "l2",
     "distance the file was built with (hnswlib l2, ip, cosine); cos normalises vectors"},
    {NULL, 0, NULL, NULL, NULL}};
static const cli_cmd import_cmd = {
    "import",
    "FILE --format hnswlib --dim D [--metric l2|ip|cos] -o INDEX",
    "Convert another library's index file into a kiln index, repairing reachability.",
    import_opts,
    1,
    1};

/* hnswlib's name of the space matching a kiln metric. */
static const char *hnswlib_space(kiln_metric m) {
    return m == KILN_METRIC_L2 ? "l2" : m == KILN_METRIC_IP ? "ip" : "cosine";
}

static bool format_is_hnswlib(const cli_args *a) {
    const char *f = cli_str(a, "format");
    if (strcmp(f, "hnswlib") != 0) {
        fprintf(stderr, "kiln %s: --format: '%s' is not supported (only hnswlib)\n", a->cmd->name,
                f);
        return false;
    }
    return true;
}

static int cmd_export(const cli_args *a) {
    const char *out = cli_str(a, "output");
    if (!out) {
        fprintf(stderr, "kiln export: need -o FILE\n");
        return 2;
    }
    if (!format_is_hnswlib(a))
        return 2;
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_index *ix = NULL;
    int rc = 0;
    if (kiln_index_load(ctx, a->pos[0], &ix) || kiln_index_export_hnswlib(ix, out)) {
        rc = fail("export", ctx);
    } else {
        kiln_index_stats s;
        kiln_index_stats_get(ix, &s);
        printf("%s: %zu vectors, dim %zu, M %u (maxM0 %u); load it with hnswlib space '%s'\n", out,
               kiln_index_count(ix), kiln_index_dim(ix), s.M, s.M0,
               hnswlib_space(kiln_index_metric(ix)));
    }
    kiln_index_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

static int cmd_import(const cli_args *a) {
    const char *out = cli_str(a, "output");
    uint32_t dim = 0;
    kiln_metric metric;
    if (!out || !cli_str(a, "dim")) {
        fprintf(stderr, "kiln import: need --dim D and -o INDEX\n");
        return 2;
    }
    if (!format_is_hnswlib(a) || !cli_u32(a, "dim", &dim) || !parse_metric(a, &metric))
        return 2;
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_index *ix = NULL;
    kiln_build_report rep;
    int rc = 0;
    if (kiln_index_import_hnswlib(ctx, a->pos[0], dim, metric, &ix) ||
        kiln_index_build_report(ix, &rep) || kiln_index_check(ix) || kiln_index_save(ix, out))
        rc = fail("import", ctx);
    else
        printf("%s: %zu vectors, dim %u, %s; reachability repair: %llu links added\n", out,
               kiln_index_count(ix), dim, kiln_metric_name(metric),
               (unsigned long long)rep.repaired_links);
    kiln_index_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== devices ==== */

static const cli_cmd devices_cmd = {
    "devices", "", "List the OpenCL platforms and devices --device can name.", no_opts, 0, 0};

static int cmd_devices(const cli_args *a) {
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    uint32_t n = 0;
    int rc = 0;
    if (kiln_device_count(ctx, &n) != KILN_OK) {
        rc = fail("devices", ctx);
    } else {
        printf("%-5s %-4s %-5s %-28s %-36s %-10s %s\n", "index", "P:D", "type", "platform",
               "device", "memory", "units");
        for (uint32_t i = 0; i < n; i++) {
            kiln_device_info d;
            if (kiln_device_info_get(ctx, i, &d) != KILN_OK) {
                rc = fail("devices", ctx);
                break;
            }
            char pd[16];
            snprintf(pd, sizeof pd, "%u:%u", d.platform_index, d.device_index);
            printf("%-5u %-4s %-5s %-28.28s %-36.36s %-10.1f %u\n", d.index, pd,
                   d.type == KILN_DEVICE_GPU   ? "gpu"
                   : d.type == KILN_DEVICE_CPU ? "cpu"
                                               : "other",
                   d.platform_name, d.device_name, (double)d.global_mem_bytes / (1 << 30),
                   d.compute_units);
        }
        kiln_device_info chosen;
        if (rc == 0 && kiln_device_select(ctx, NULL, &chosen) == KILN_OK)
            printf("default (--device auto or $KILN_DEVICE): %u:%u %s\n", chosen.platform_index,
                   chosen.device_index, chosen.device_name);
    }
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== generate ==== */

static const cli_opt gen_opts[] = {
    {"n", 'n', "N", "10000", "base vectors"},
    {"dim", 'd', "D", "128", "dimension"},
    {"clusters", 0, "C", "64", "mixture components"},
    {"seed", 0, "N", "1", "seed"},
    {"output", 'o', "BASE", NULL, "base file to write (required; format from extension)"},
    {"queries", 0, "NQ", "0", "held-out queries drawn from the same mixture"},
    {"queries-out", 0, "FILE", NULL, "query file to write (required when --queries > 0)"},
    {NULL, 0, NULL, NULL, NULL}};
static const cli_cmd gen_cmd = {"generate",
                                "-o BASE [options]",
                                "Write a seeded clustered synthetic dataset (fvecs, fbin or npy).",
                                gen_opts,
                                0,
                                0};

static kiln_status write_f32(kiln_ctx *ctx, const char *path, const float *v, size_t n, size_t d) {
    kiln_format fmt = KILN_FORMAT_FVECS;
    const char *dot = strrchr(path, '.');
    if (dot && kiln_format_parse(dot + 1, &fmt) != KILN_OK)
        fmt = KILN_FORMAT_FVECS;
    return kiln_dataset_write(ctx, path, fmt, KILN_DTYPE_F32, v, n, d);
}

static int cmd_generate(const cli_args *a) {
    uint64_t n, nq, seed;
    uint32_t d, clusters;
    const char *out = cli_str(a, "output"), *qout = cli_str(a, "queries-out");
    if (!cli_u64(a, "n", &n) || !cli_u32(a, "dim", &d) || !cli_u32(a, "clusters", &clusters) ||
        !cli_u64(a, "seed", &seed) || !cli_u64(a, "queries", &nq))
        return 2;
    if (!out || (nq && !qout) || d == 0 || clusters == 0) {
        fprintf(stderr, "kiln generate: need -o BASE, --queries-out with --queries, dim >= 1, "
                        "clusters >= 1\n");
        return 2;
    }
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    float *v = malloc((size_t)(n + nq ? n + nq : 1) * d * sizeof(float));
    int rc = 0;
    if (!v) {
        fprintf(stderr, "kiln generate: out of memory for %llu x %u\n",
                (unsigned long long)(n + nq), d);
        rc = 1;
    } else if (kiln_synth_clustered(ctx, n + nq, d, clusters, seed, v) ||
               write_f32(ctx, out, v, n, d) || (nq && write_f32(ctx, qout, v + n * d, nq, d))) {
        rc = fail("generate", ctx);
    }
    free(v);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== main ==== */

typedef struct command {
    const cli_cmd *cmd;
    int (*run)(const cli_args *a);
} command;

static const command commands[] = {
    {&build_cmd, cmd_build},    {&search_cmd, cmd_search},   {&eval_cmd, cmd_eval},
    {&gt_cmd, cmd_groundtruth}, {&info_cmd, cmd_info},       {&check_cmd, cmd_check},
    {&gen_cmd, cmd_generate},   {&devices_cmd, cmd_devices}, {&export_cmd, cmd_export},
    {&import_cmd, cmd_import},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *to) {
    fprintf(to,
            "kiln %s -- batch HNSW index builder\n\nusage: kiln COMMAND [options]\n\ncommands:\n",
            kiln_version_string());
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(to, "  %-12s %s\n", commands[i].cmd->name, commands[i].cmd->summary);
    fprintf(to, "  %-12s %s\n", "version", "Print the version.");
    fprintf(to, "\nRun 'kiln COMMAND --help' for the options of a command, with their defaults.\n");
    for (size_t i = 0; i < NCOMMANDS; i++) {
        fputc('\n', to);
        cli_help(commands[i].cmd, to);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("kiln %s\n", kiln_version_string());
        return 0;
    }
    for (size_t i = 0; i < NCOMMANDS; i++) {
        if (strcmp(argv[1], commands[i].cmd->name) == 0) {
            cli_args a;
            int r = cli_parse(commands[i].cmd, argc - 2, argv + 2, &a);
            if (r == 1)
                return 0;
            if (r == 2)
                return 2;
            return commands[i].run(&a);
        }
    }
    fprintf(stderr, "kiln: unknown command '%s' (see kiln --help)\n", argv[1]);
    return 2;
}
