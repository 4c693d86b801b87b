/* bench_live.c -- the kiln side of bench/live.py (issue 14): times
 * kiln_index_add and kiln_index_delete inside one process, and runs a churn
 * schedule with recall against exact ground truth after each round.
 *
 * Usage (one JSON line per result on stdout, errors as one line on stderr):
 *   bench_live build BASE N OUT [-M 16] [--efc 200] [--seed 1] [--cpus C]
 *   bench_live add INDEX BASE FIRST COUNT [--method insert|device] [--cpus C]
 *   bench_live delete INDEX LABELS [--cpus C]
 *   bench_live churn INDEX BASE QUERIES SCHEDULE ROUNDS [--initial N] [--ef 16,64]
 *              [-k 10] [--cpus C]
 *   bench_live stall INDEX BASE QUERIES SECONDS [--writer 0|1] [--readers R] [--batch B]
 *              [--ef 64] [-k 10] [--cpus C]
 * build: an insert-method index over rows [0, N) of BASE (labels = rows).
 * add: rows [FIRST, FIRST + COUNT) added with labels = rows. delete: the
 * labels of LABELS (raw little-endian int64). churn: round r (1..ROUNDS)
 * deletes SCHEDULE/del-r.i64, then adds the rows SCHEDULE/add-r.i64 (labels =
 * rows), then writes the exact top-k of the queries over the live rows to
 * SCHEDULE/gt-r.i64 (labels, nq x k int64; the hnswlib side reads them) and
 * measures recall@k at each ef; rows [0, --initial) are live at the start.
 * stall: R search threads (default 1) send the queries one at a time for
 * SECONDS and time each; with --writer 1 the main thread meanwhile deletes
 * B labels (default 100; rows of the index, labels = rows) and adds them
 * back, round after round, on one thread (kiln_index_set_threads). Prints
 * the queries per second and the latency percentiles (decision 4).
 *
 * Design decisions:
 *  1. One process per measurement, called by bench/live.py, which samples
 *     its RssAnon from /proc; only the library call is timed (not the load,
 *     the read of BASE or a save), as hnswlib's add_items is timed alone on
 *     its side. The index is read into the heap (KILN_LOAD_READ), so the
 *     first write's copy of a mapped file is not in the timing; the growth
 *     of an index's arrays for an add is (hnswlib sizes its arrays up front
 *     from max_elements, kiln grows them when it needs to).
 *  2. --cpus C pins the process to the first C CPUs it may run on before
 *     the first kiln call: the live calls run on all cores the process has
 *     (kiln_threads(0), omp_get_num_procs, which follows the affinity mask),
 *     so this sets their thread count without an API for it.
 *  3. Ground truth is kiln_knn_exact over the live rows (ties by smaller
 *     row, as `kiln groundtruth`), mapped to labels, so both systems are
 *     measured against the same file.
 *  4. The stall measurement (graph/hnsw_live.c decision 8): a search holds
 *     the index's lock shared and a writer takes it exclusively to publish,
 *     so a query that arrives during a commit waits for it. Run once
 *     without and once with the writer, the latency tail (p99, p99.9, max)
 *     shows what the commits cost searches; the queries per second also
 *     carry the CPU the writer takes from them (on 2 cores, 1 reader and 1
 *     writer each have one).
 */
#include <pthread.h>
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln.h"

/* ==== Helpers ==== */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("bench_live: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void check(kiln_ctx *ctx, kiln_status st, const char *what) {
    if (st != KILN_OK)
        die("%s: %s", what, kiln_errmsg(ctx));
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

/* Decision 2: the first c CPUs of the process's mask. */
static void pin_cpus(int c) {
    cpu_set_t have, want;
    if (sched_getaffinity(0, sizeof have, &have) != 0)
        die("sched_getaffinity: %s", strerror(errno));
    CPU_ZERO(&want);
    int got = 0;
    for (int i = 0; i < CPU_SETSIZE && got < c; i++)
        if (CPU_ISSET(i, &have)) {
            CPU_SET(i, &want);
            got++;
        }
    if (got < c)
        die("--cpus %d: the process may run on %d CPUs", c, got);
    if (sched_setaffinity(0, sizeof want, &want) != 0)
        die("sched_setaffinity: %s", strerror(errno));
}

/* Every row of a dataset as float32; *n and *dim get its shape. */
static float *read_rows(kiln_ctx *ctx, const char *path, size_t *n, size_t *dim) {
    kiln_dataset *ds = NULL;
    check(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &ds), path);
    *n = kiln_dataset_count(ds);
    *dim = kiln_dataset_dim(ds);
    float *v = xmalloc(*n * *dim * sizeof *v);
    check(ctx, kiln_dataset_read_f32(ds, 0, *n, v), path);
    kiln_dataset_free(ds);
    return v;
}

/* A raw little-endian int64 file (bench/live.py writes them with numpy). */
static int64_t *read_i64(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        die("%s: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0)
        die("%s: cannot seek", path);
    const long bytes = ftell(f);
    if (bytes < 0 || bytes % 8 != 0)
        die("%s: %ld bytes is not a whole number of int64", path, bytes);
    rewind(f);
    *n = (size_t)bytes / 8;
    int64_t *v = xmalloc((size_t)bytes);
    if (fread(v, 8, *n, f) != *n)
        die("%s: short read", path);
    fclose(f);
    return v;
}

static void write_i64(const char *path, const int64_t *v, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(v, 8, n, f) != n || fclose(f) != 0)
        die("%s: cannot write", path);
}

static kiln_index *load(kiln_ctx *ctx, const char *path) {
    kiln_index *ix = NULL;
    check(ctx, kiln_index_open(ctx, path, KILN_LOAD_READ, &ix), path); /* decision 1 */
    return ix;
}

static const char *opt(int argc, char **argv, const char *name, const char *def) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return def;
}

/* ==== Modes ==== */

static void cmd_build(kiln_ctx *ctx, int argc, char **argv) {
    if (argc < 5)
        die("usage: bench_live build BASE N OUT [-M 16] [--efc 200] [--seed 1]");
    size_t n = 0, dim = 0;
    float *v = read_rows(ctx, argv[2], &n, &dim);
    const size_t take = strtoull(argv[3], NULL, 10);
    if (take < 1 || take > n)
        die("build: N %zu is not in [1, %zu]", take, n);
    kiln_build_params bp;
    kiln_build_params_init(&bp);
    bp.method = KILN_METHOD_INSERT;
    bp.M = (uint32_t)atoi(opt(argc, argv, "-M", "16"));
    bp.ef_construction = (uint32_t)atoi(opt(argc, argv, "--efc", "200"));
    bp.seed = strtoull(opt(argc, argv, "--seed", "1"), NULL, 10);
    kiln_index *ix = NULL;
    const double t0 = now();
    check(ctx, kiln_index_build(ctx, v, take, dim, &bp, &ix), "build");
    const double s = now() - t0;
    check(ctx, kiln_index_save(ix, argv[4]), argv[4]);
    printf("{\"op\":\"build\",\"n\":%zu,\"seconds\":%.6f}\n", take, s);
    kiln_index_free(ix);
    free(v);
}

static void cmd_add(kiln_ctx *ctx, int argc, char **argv) {
    if (argc < 6)
        die("usage: bench_live add INDEX BASE FIRST COUNT");
    size_t n = 0, dim = 0;
    float *v = read_rows(ctx, argv[3], &n, &dim);
    const size_t first = strtoull(argv[4], NULL, 10), count = strtoull(argv[5], NULL, 10);
    if (first > n || count > n - first)
        die("add: rows [%zu, %zu) are not all in %s (%zu rows)", first, first + count, argv[3], n);
    int64_t *labels = xmalloc(count * sizeof *labels);
    for (size_t i = 0; i < count; i++)
        labels[i] = (int64_t)(first + i);
    kiln_index *ix = load(ctx, argv[2]);
    const double t0 = now();
    kiln_add_params ap; /* hnswlib's add_items inserts: so does this */
    kiln_add_params_init(&ap);
    ap.method = strcmp(opt(argc, argv, "--method", "insert"), "device") == 0 ? KILN_ADD_DEVICE
                                                                             : KILN_ADD_INSERT;
    check(ctx, kiln_index_add_ex(ix, v + first * dim, labels, count, &ap), "add");
    const double s = now() - t0;
    printf("{\"op\":\"add\",\"count\":%zu,\"seconds\":%.6f,\"per_s\":%.1f}\n", count, s,
           (double)count / s);
    kiln_index_free(ix);
    free(labels);
    free(v);
}

static void cmd_delete(kiln_ctx *ctx, int argc, char **argv) {
    if (argc < 4)
        die("usage: bench_live delete INDEX LABELS");
    size_t n = 0;
    int64_t *labels = read_i64(argv[3], &n);
    kiln_index *ix = load(ctx, argv[2]);
    const double t0 = now();
    check(ctx, kiln_index_delete(ix, labels, n), "delete");
    const double s = now() - t0;
    printf("{\"op\":\"delete\",\"count\":%zu,\"seconds\":%.6f,\"per_s\":%.1f}\n", n, s,
           (double)n / s);
    kiln_index_free(ix);
    free(labels);
}

static double recall_at(const int64_t *got, const int64_t *gt, size_t nq, uint32_t k) {
    size_t hit = 0;
    for (size_t q = 0; q < nq; q++)
        for (uint32_t i = 0; i < k; i++)
            for (uint32_t j = 0; j < k; j++)
                if (got[q * k + i] == gt[q * k + j]) {
                    hit++;
                    break;
                }
    return nq ? (double)hit / ((double)nq * k) : 0.0;
}

static void cmd_churn(kiln_ctx *ctx, int argc, char **argv) {
    if (argc < 7)
        die("usage: bench_live churn INDEX BASE QUERIES SCHEDULE ROUNDS [--initial N] "
            "[--ef 16,64] [-k 10]");
    size_t n = 0, dim = 0, nq = 0, qdim = 0;
    float *v = read_rows(ctx, argv[3], &n, &dim);
    float *q = read_rows(ctx, argv[4], &nq, &qdim);
    if (qdim != dim)
        die("churn: queries of dim %zu, base of dim %zu", qdim, dim);
    const char *sched = argv[5];
    const int rounds = atoi(argv[6]);
    const size_t initial = strtoull(opt(argc, argv, "--initial", "0"), NULL, 10);
    const uint32_t k = (uint32_t)atoi(opt(argc, argv, "-k", "10"));
    uint32_t efs[16];
    size_t nef = 0;
    char eflist[256];
    snprintf(eflist, sizeof eflist, "%s", opt(argc, argv, "--ef", "16,64"));
    for (char *tok = strtok(eflist, ","); tok && nef < 16; tok = strtok(NULL, ","))
        efs[nef++] = (uint32_t)atoi(tok);
    if (initial > n || k < 1)
        die("churn: --initial %zu of %zu rows, k %u", initial, n, k);
    uint8_t *live = calloc(n, 1);
    float *rows = xmalloc(n * dim * sizeof *rows);
    int64_t *row_of = xmalloc(n * sizeof *row_of), *gt = xmalloc(nq * k * sizeof *gt);
    int64_t *got = xmalloc(nq * k * sizeof *got);
    if (!live)
        die("out of memory");
    memset(live, 1, initial);
    kiln_index *ix = load(ctx, argv[2]);
    for (int r = 1; r <= rounds; r++) {
        char path[4096];
        size_t nd = 0, na = 0;
        snprintf(path, sizeof path, "%s/del-%d.i64", sched, r);
        int64_t *del = read_i64(path, &nd);
        snprintf(path, sizeof path, "%s/add-%d.i64", sched, r);
        int64_t *add = read_i64(path, &na);
        float *av = xmalloc(na * dim * sizeof *av);
        for (size_t i = 0; i < na; i++) {
            if (add[i] < 0 || (size_t)add[i] >= n)
                die("%s: row %lld is not in the base", path, (long long)add[i]);
            memcpy(av + i * dim, v + (size_t)add[i] * dim, dim * sizeof *av);
        }
        const double t0 = now();
        check(ctx, kiln_index_delete(ix, del, nd), "churn delete");
        const double t1 = now();
        check(ctx, kiln_index_add(ix, av, add, na), "churn add");
        const double t2 = now();
        for (size_t i = 0; i < nd; i++)
            live[del[i]] = 0;
        for (size_t i = 0; i < na; i++)
            live[add[i]] = 1;
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (live[i]) {
                memcpy(rows + m * dim, v + i * dim, dim * sizeof *rows);
                row_of[m++] = (int64_t)i;
            }
        check(ctx, kiln_knn_exact(ctx, rows, m, q, nq, dim, KILN_METRIC_L2, k, 0, gt, NULL),
              "ground truth");
        for (size_t i = 0; i < nq * k; i++)
            gt[i] = gt[i] >= 0 ? row_of[gt[i]] : -1;
        snprintf(path, sizeof path, "%s/gt-%d.i64", sched, r);
        write_i64(path, gt, nq * k);
        check(ctx, kiln_index_check(ix), "check after the round");
        printf("{\"op\":\"churn\",\"round\":%d,\"live\":%zu,\"deleted\":%zu,\"added\":%zu,"
               "\"delete_seconds\":%.6f,\"add_seconds\":%.6f,\"recall\":{",
               r, m, nd, na, t1 - t0, t2 - t1);
        for (size_t e = 0; e < nef; e++) {
            kiln_search_params sp = {.k = k, .ef = efs[e], .threads = 1};
            check(ctx, kiln_index_search(ix, q, nq, &sp, got, NULL), "search");
            printf("%s\"%u\":%.6f", e ? "," : "", efs[e], recall_at(got, gt, nq, k));
        }
        printf("}}\n");
        fflush(stdout);
        free(av);
        free(del);
        free(add);
    }
    kiln_index_free(ix);
    free(live);
    free(rows);
    free(row_of);
    free(gt);
    free(got);
    free(v);
    free(q);
}

/* ==== stall (decision 4) ==== */

typedef struct stall_reader {
    const kiln_index *ix;
    const float *q;
    size_t nq, dim, start;
    uint32_t k, ef;
    double until;
    double *lat; /* seconds per query */
    size_t n, cap;
} stall_reader;

static void *stall_read(void *arg) {
    stall_reader *r = arg;
    int64_t labels[256];
    kiln_search_params sp = {.k = r->k, .ef = r->ef, .threads = 1};
    for (size_t i = r->start; now() < r->until; i++) {
        const double t0 = now();
        if (kiln_index_search(r->ix, r->q + (i % r->nq) * r->dim, 1, &sp, labels, NULL) != KILN_OK)
            die("stall: a search failed");
        if (r->n == r->cap) {
            r->cap = r->cap ? 2 * r->cap : 65536;
            double *g = realloc(r->lat, r->cap * sizeof *g);
            if (!g)
                die("stall: out of memory for latencies");
            r->lat = g;
        }
        r->lat[r->n++] = now() - t0;
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void cmd_stall(kiln_ctx *ctx, int argc, char **argv) {
    if (argc < 6)
        die("usage: bench_live stall INDEX BASE QUERIES SECONDS [--writer 0|1] [--readers R] "
            "[--batch B] [--ef 64] [-k 10]");
    const double seconds = atof(argv[5]);
    const int writer = atoi(opt(argc, argv, "--writer", "0"));
    const int readers = atoi(opt(argc, argv, "--readers", "1"));
    const size_t batch = strtoull(opt(argc, argv, "--batch", "100"), NULL, 10);
    const uint32_t ef = (uint32_t)atoi(opt(argc, argv, "--ef", "64"));
    const uint32_t k = (uint32_t)atoi(opt(argc, argv, "-k", "10"));
    if (readers < 1 || readers > 64 || k < 1 || k > 256 || seconds <= 0 || batch < 1)
        die("stall: --readers 1..64, -k 1..256, SECONDS > 0, --batch >= 1");
    size_t n = 0, dim = 0, nq = 0, qdim = 0;
    float *base = read_rows(ctx, argv[3], &n, &dim);
    float *q = read_rows(ctx, argv[4], &nq, &qdim);
    kiln_index *ix = load(ctx, argv[2]);
    const size_t count = kiln_index_count(ix);
    if (qdim != dim || kiln_index_dim(ix) != dim || count > n || batch > count)
        die("stall: the index, BASE and QUERIES do not fit together");
    check(ctx, kiln_index_set_threads(ix, 1), "set threads");
    stall_reader *r = calloc((size_t)readers, sizeof *r);
    pthread_t *th = calloc((size_t)readers, sizeof *th);
    int64_t *labels = xmalloc(batch * sizeof *labels);
    if (!r || !th)
        die("out of memory");
    const double t0 = now(), until = t0 + seconds;
    for (int i = 0; i < readers; i++) {
        r[i] = (stall_reader){.ix = ix, .q = q, .nq = nq, .dim = dim, .k = k, .ef = ef,
                              .until = until, .start = (size_t)i * 97};
        if (pthread_create(&th[i], NULL, stall_read, &r[i]) != 0)
            die("pthread_create failed");
    }
    size_t rounds = 0, at = 0;
    double write_s = 0;
    while (writer && now() < until) {
        for (size_t j = 0; j < batch; j++)
            labels[j] = (int64_t)((at + j) % count);
        const double w0 = now();
        check(ctx, kiln_index_delete(ix, labels, batch), "stall: delete");
        for (size_t j = 0; j < batch; j++) /* the same rows back, one call per run of rows */
            if (j == 0 || labels[j] != labels[j - 1] + 1) {
                size_t e = j + 1;
                while (e < batch && labels[e] == labels[e - 1] + 1)
                    e++;
                check(ctx,
                      kiln_index_add(ix, base + (size_t)labels[j] * dim, labels + j, e - j),
                      "stall: add");
            }
        write_s += now() - w0;
        rounds++;
        at = (at + batch) % count;
    }
    for (int i = 0; i < readers; i++)
        pthread_join(th[i], NULL);
    const double wall = now() - t0;
    size_t total = 0;
    for (int i = 0; i < readers; i++)
        total += r[i].n;
    double *all = xmalloc(total * sizeof *all);
    for (int i = 0, w = 0; i < readers; i++) {
        memcpy(all + w, r[i].lat, r[i].n * sizeof *all);
        w += (int)r[i].n;
        free(r[i].lat);
    }
    qsort(all, total, sizeof *all, cmp_double);
#define PCT(p) (total ? all[(size_t)((double)(total - 1) * (p))] * 1e6 : 0.0)
    printf("{\"op\":\"stall\",\"writer\":%d,\"readers\":%d,\"queries\":%zu,\"qps\":%.1f,"
           "\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,"
           "\"write_rounds\":%zu,\"batch\":%zu,\"write_s_per_round\":%.6f,\"ef\":%u}\n",
           writer, readers, total, (double)total / wall, PCT(0.5), PCT(0.99), PCT(0.999),
           PCT(1.0), rounds, batch, rounds ? write_s / (double)rounds : 0.0, ef);
#undef PCT
    free(all);
    free(labels);
    free(r);
    free(th);
    kiln_index_free(ix);
    free(q);
    free(base);
}

int main(int argc, char **argv) {
    if (argc < 2)
        die("usage: bench_live build|add|delete|churn|stall ... (see bench/bench_live.c)");
    const int cpus = atoi(opt(argc, argv, "--cpus", "0"));
    if (cpus > 0)
        pin_cpus(cpus);
    kiln_ctx *ctx = NULL;
    if (kiln_ctx_new(&ctx) != KILN_OK)
        die("kiln_ctx_new failed");
    if (strcmp(argv[1], "build") == 0)
        cmd_build(ctx, argc, argv);
    else if (strcmp(argv[1], "add") == 0)
        cmd_add(ctx, argc, argv);
    else if (strcmp(argv[1], "delete") == 0)
        cmd_delete(ctx, argc, argv);
    else if (strcmp(argv[1], "churn") == 0)
        cmd_churn(ctx, argc, argv);
    else if (strcmp(argv[1], "stall") == 0)
        cmd_stall(ctx, argc, argv);
    else
        die("unknown mode '%s' (build, add, delete, churn, stall)", argv[1]);
    kiln_ctx_free(ctx);
    return 0;
}
