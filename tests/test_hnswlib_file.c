/* test_hnswlib_file.c -- hnswlib interop (graph/hnswlib_file.c):
 * kiln_index_export_hnswlib and kiln_index_import_hnswlib, and the
 * `kiln export` / `kiln import` commands.
 *
 * What is checked:
 *  1. hnswlib reads kiln's files: a kiln index (siftsmall, insert, M = 16,
 *     ef_construction = 200; skipped without the dataset) is exported and
 *     loaded by Python hnswlib (/usr/bin/python3; skipped without it), which
 *     searches at ef = 64: the top-10 of at least 99% of the queries equal
 *     kiln's own search at the same ef. The same for IP and COS on synthetic
 *     data with labels above 2^32, which must come back from hnswlib as the
 *     labels kiln had.
 *  2. kiln reads hnswlib's files: hnswlib builds an index over synthetic
 *     data with labels 1000 + i and saves it; kiln imports it, the result
 *     passes kiln_index_check, holds the same vectors and labels, and its
 *     recall@10 against kiln_knn_exact at ef = 64 is at least hnswlib's own
 *     recall minus 0.01. Also a cosine index, and files with 10% and 30% of
 *     their elements marked deleted by hnswlib (the entry point among them
 *     in the second): kiln imports them deleted, as its own deletes leave
 *     them (free slots, the lists that named them relinked): the live rows
 *     keep their ids, labels and vectors, every live node is reachable and
 *     finds itself, no deleted label is ever returned, recall@10 against
 *     the exact neighbours of the live rows is at least hnswlib's own on
 *     the same file minus 0.02, and adding the rows back reuses the slots.
 *  3. Round trips kiln -> hnswlib file -> kiln for all metrics and an empty
 *     index: same levels, links (in order), entry point, labels, vectors
 *     (COS: within float rounding, as they are normalised again), no links
 *     added by the repair, and exporting the import gives the same bytes.
 *  4. Damaged and forged files: truncation at every few bytes, appended
 *     bytes, huge and inconsistent counts, bad maxM0/maxM, offsets, wrong
 *     dim, ids out of range, links to nodes not on the level, huge levels,
 *     bad entry points, deleted marks, unknown flag bits, huge labels, NaN
 *     values. Each must fail with the right status and a message naming the
 *     file, never crash (ASan would abort on a bad read or a forged size
 *     reaching an allocator).
 *  4d. Free slots exported (a kiln index after deletes, the entry point
 *     among them): each is an element marked deleted with label 2^63 + slot
 *     and no links, max_elements_ is what was asked (below the count
 *     refused), the import gives back the same index and the same bytes.
 *     hnswlib loads the file (Python, and the C++ headers through
 *     bench/hnswlib_runner when KILN_HNSWLIB_RUNNER is set): it reports
 *     the count, max_elements and the deleted elements, searches like kiln
 *     (top-10 agreement, recall against exact within 0.01, no deleted
 *     label), and add_items fills it to max_elements and refuses one more.
 *  5. The CLI (when KILN_CLI is set): export (with --max-elements, and
 *     below the count refused), import (deleted elements reported), and
 *     --help listing the options with their defaults.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "file_util.h"
#include "kiln.h"
#include "../graph/hnsw_internal.h"
#include "../common/rng_internal.h"

/* ==== Tunables ==== */

/* Search settings every comparison uses, as the task states them. */
#define K  10
#define EF 64

/* Synthetic sets: big enough for a few levels at M = 16 and a meaningful
 * recall, small enough that the whole test runs in seconds. */
#define SYN_N   3000
#define SYN_DIM 32
#define SYN_NQ  100
#define HL_N    2000 /* rows of the index hnswlib builds */

/* Where hnswlib's layout puts things (docs/FORMAT.md, "hnswlib files"). */
#define HL_HDR        96
#define HL_COUNT      16
#define HL_MAX_ELEMS  8
#define HL_SIZE_DATA  24
#define HL_LABEL_OFF  32
#define HL_OFF_DATA   40
#define HL_MAX_LEVEL  48
#define HL_ENTRY      52
#define HL_MAX_M      56
#define HL_MAX_M0     64
#define HL_OFF_LEVEL0 0

/* ==== Files and scratch ==== */

static char test_dir[4096];

static void make_test_dir(void) {
    const char *base = getenv("KILN_TEST_TMP");
    if (!base || !*base)
        base = "/tmp";
    snprintf(test_dir, sizeof test_dir, "%s/test_hnswlib_file", base);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", test_dir);
    REQUIRE(system(cmd) == 0);
}

static const char *tpath(const char *name) {
    static char bufs[8][4200];
    static int next;
    char *p = bufs[next++ % 8];
    snprintf(p, sizeof bufs[0], "%s/%s", test_dir, name);
    return p;
}

/* ==== Python hnswlib ==== */

/* query SPACE DIM INDEX QUERIES EF K OUT: load a saved index, search raw
 * float32 queries, write the labels as raw int64.
 * build SPACE DIM BASE QUERIES M EFC EF K DELETED PREFIX: build over raw
 * float32 base rows with labels 1000 + i (marking deleted the raw int64
 * labels in file DELETED, unless it is '-'), save PREFIX.bin, and write
 * hnswlib's own search labels at ef to PREFIX.ids.
 * grow SPACE DIM INDEX QUERIES EF K OUT EXTRA: load, write "max_elements
 * element_count" to OUT.meta, search the queries (labels to OUT), add the
 * raw float32 rows of EXTRA (labels 5000000 + i), then one row more, which
 * must be refused ("refused" appended to OUT.meta), and search each added
 * row for its nearest (labels to OUT.self). */
static const char py_script[] =
    "import sys\n"
    "import numpy as np\n"
    "import hnswlib\n"
    "mode = sys.argv[1]\n"
    "space, dim = sys.argv[2], int(sys.argv[3])\n"
    "if mode == 'query':\n"
    "    path, qpath, ef, k, out = sys.argv[4], sys.argv[5], int(sys.argv[6]), "
    "int(sys.argv[7]), sys.argv[8]\n"
    "    q = np.fromfile(qpath, dtype='<f4').reshape(-1, dim)\n"
    "    p = hnswlib.Index(space=space, dim=dim)\n"
    "    p.load_index(path)\n"
    "    p.set_ef(ef)\n"
    "    labels, _ = p.knn_query(q, k=k)\n"
    "    np.ascontiguousarray(labels.astype('<i8')).tofile(out)\n"
    "elif mode == 'grow':\n"
    "    path, qpath, ef, k, out, epath = sys.argv[4], sys.argv[5], int(sys.argv[6]), "
    "int(sys.argv[7]), sys.argv[8], sys.argv[9]\n"
    "    q = np.fromfile(qpath, dtype='<f4').reshape(-1, dim)\n"
    "    x = np.fromfile(epath, dtype='<f4').reshape(-1, dim)\n"
    "    p = hnswlib.Index(space=space, dim=dim)\n"
    "    p.load_index(path)\n"
    "    meta = '%d %d' % (p.get_max_elements(), p.get_current_count())\n"
    "    p.set_ef(ef)\n"
    "    labels, _ = p.knn_query(q, k=k)\n"
    "    np.ascontiguousarray(labels.astype('<i8')).tofile(out)\n"
    "    p.add_items(x, np.arange(len(x)) + 5000000)\n"
    "    try:\n"
    "        p.add_items(x[:1], [4999999])\n"
    "    except RuntimeError:\n"
    "        meta += ' refused'\n"
    "    open(out + '.meta', 'w').write(meta)\n"
    "    labels, _ = p.knn_query(x, k=1)\n"
    "    np.ascontiguousarray(labels.astype('<i8')).tofile(out + '.self')\n"
    "else:\n"
    "    bpath, qpath = sys.argv[4], sys.argv[5]\n"
    "    M, efc, ef, k = [int(a) for a in sys.argv[6:10]]\n"
    "    delpath, prefix = sys.argv[10], sys.argv[11]\n"
    "    x = np.fromfile(bpath, dtype='<f4').reshape(-1, dim)\n"
    "    q = np.fromfile(qpath, dtype='<f4').reshape(-1, dim)\n"
    "    p = hnswlib.Index(space=space, dim=dim)\n"
    "    p.init_index(max_elements=len(x) + 10, M=M, ef_construction=efc, random_seed=100)\n"
    "    p.set_num_threads(1)\n"
    "    p.add_items(x, np.arange(len(x)) + 1000)\n"
    "    if delpath != '-':\n"
    "        for label in np.fromfile(delpath, dtype='<i8'):\n"
    "            p.mark_deleted(int(label))\n"
    "    p.save_index(prefix + '.bin')\n"
    "    p.set_ef(ef)\n"
    "    labels, _ = p.knn_query(q, k=k)\n"
    "    np.ascontiguousarray(labels.astype('<i8')).tofile(prefix + '.ids')\n";

static bool run_python(const char *args) {
    const char *script = tpath("hnswlib_helper.py");
    if (!write_file(script, py_script, sizeof py_script - 1))
        return false;
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' %s", script, args);
    const int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "python helper failed (%d): %s\n", rc, cmd);
    return rc == 0;
}

/* nq*k int64 labels written by the helper. */
static int64_t *read_labels(const char *path, size_t count) {
    size_t size = 0;
    uint8_t *b = read_file(path, &size);
    if (!b || size != count * sizeof(int64_t)) {
        free(b);
        return NULL;
    }
    int64_t *out = malloc(count * sizeof *out);
    REQUIRE(out);
    for (size_t i = 0; i < count; i++)
        out[i] = (int64_t)kiln_get_u64le(b + i * 8);
    free(b);
    return out;
}

/* Fraction of queries whose k labels are the same set in a and b. */
static double same_topk(const int64_t *a, const int64_t *b, size_t nq, size_t k) {
    size_t same = 0;
    for (size_t q = 0; q < nq; q++) {
        bool eq = true;
        for (size_t i = 0; i < k && eq; i++) {
            bool found = false;
            for (size_t j = 0; j < k && !found; j++)
                found = a[q * k + i] == b[q * k + j];
            eq = found;
        }
        same += eq;
    }
    return nq ? (double)same / (double)nq : 1.0;
}

/* recall@k of found against truth (both nq*k). */
static double recall(const int64_t *found, const int64_t *truth, size_t nq, size_t k) {
    size_t hit = 0;
    for (size_t q = 0; q < nq; q++)
        for (size_t i = 0; i < k; i++)
            for (size_t j = 0; j < k; j++)
                if (found[q * k + i] == truth[q * k + j]) {
                    hit++;
                    break;
                }
    return (double)hit / (double)(nq * k);
}

/* ==== Helpers ==== */

static kiln_index *build(kiln_ctx *ctx, const float *v, size_t n, size_t dim, kiln_metric metric,
                         uint32_t M, uint32_t efc) {
    kiln_build_params bp;
    kiln_build_params_init(&bp);
    bp.method = KILN_METHOD_INSERT;
    bp.metric = metric;
    bp.M = M;
    bp.ef_construction = efc;
    bp.seed = 3;
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, v, n, dim, &bp, &ix));
    REQUIRE(ix);
    return ix;
}

static int64_t *kiln_search(const kiln_index *ix, const float *q, size_t nq) {
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    sp.k = K;
    sp.ef = EF;
    int64_t *labels = malloc(nq * K * sizeof *labels);
    REQUIRE(labels);
    CHECK(kiln_index_search(ix, q, nq, &sp, labels, NULL) == KILN_OK);
    return labels;
}

static float *synth(kiln_ctx *ctx, size_t n, size_t dim, uint64_t seed) {
    float *v = malloc(n * dim * sizeof *v);
    REQUIRE(v);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n, dim, 16, seed, v, (size_t)n * dim));
    return v;
}

/* Same graph, labels and parameters; vectors within tol (0 = bit-equal). */
static void check_same_index(const struct kiln_index *a, const struct kiln_index *b, float tol) {
    REQUIRE(a->count == b->count && a->dim == b->dim);
    CHECK(a->metric == b->metric);
    CHECK(a->M == b->M && a->M0 == b->M0);
    CHECK(a->ef_construction == b->ef_construction);
    CHECK(a->max_level == b->max_level);
    CHECK(a->entry_point == b->entry_point);
    size_t bad_links = 0, bad_vec = 0, bad_label = 0, bad_level = 0;
    for (uint32_t i = 0; i < a->count; i++) {
        bad_label += a->labels[i] != b->labels[i];
        if (a->levels[i] != b->levels[i]) {
            bad_level++;
            continue;
        }
        for (unsigned l = 0; l <= a->levels[i]; l++) {
            const uint32_t *x = kiln_links(a, i, l), *y = kiln_links(b, i, l);
            bad_links += x[0] != y[0] || memcmp(x + 1, y + 1, x[0] * sizeof *x) != 0;
        }
        for (uint32_t d = 0; d < a->dim; d++) {
            const float u = kiln_vector(a, i)[d], w = kiln_vector(b, i)[d];
            bad_vec += tol == 0.0f ? memcmp(&u, &w, sizeof u) != 0 : fabsf(u - w) > tol;
        }
    }
    CHECK_MSG(bad_links == 0 && bad_vec == 0 && bad_label == 0 && bad_level == 0,
              "links %zu, vectors %zu, labels %zu, levels %zu differ", bad_links, bad_vec,
              bad_label, bad_level);
}

/* ==== 1. hnswlib reads kiln's files ==== */

/* Exports ix, has hnswlib search queries at EF, compares with kiln's search;
 * labels must be kiln's labels. */
static void hnswlib_agrees(const kiln_index *ix, const char *space, const float *q, size_t nq,
                           const char *name) {
    char file[64], qfile[64], out[64];
    snprintf(file, sizeof file, "%s.hnswlib.bin", name);
    snprintf(qfile, sizeof qfile, "%s.queries.f32", name);
    snprintf(out, sizeof out, "%s.hnswlib.ids", name);
    const size_t dim = kiln_index_dim(ix);
    CHECK_OK(ix->ctx, kiln_index_export_hnswlib(ix, tpath(file), NULL));
    REQUIRE(write_file(tpath(qfile), q, nq * dim * sizeof *q));
    char args[8192];
    snprintf(args, sizeof args, "query %s %zu '%s' '%s' %d %d '%s'", space, dim, tpath(file),
             tpath(qfile), EF, K, tpath(out));
    CHECK(run_python(args));
    int64_t *theirs = read_labels(tpath(out), nq * K);
    CHECK(theirs != NULL);
    if (!theirs)
        return;
    int64_t *ours = kiln_search(ix, q, nq);
    const double same = same_topk(ours, theirs, nq, K);
    fprintf(stderr, "%s: hnswlib and kiln agree on the top-%d of %.1f%% of queries\n", name, K,
            100.0 * same);
    CHECK_MSG(same >= 0.99, "%s: only %.3f of queries agree", name, same);
    size_t foreign = 0; /* labels hnswlib returned that kiln does not have */
    for (size_t i = 0; i < nq * K; i++) {
        bool found = false;
        for (uint32_t j = 0; j < ix->count && !found; j++)
            found = ix->labels[j] == theirs[i];
        foreign += !found;
    }
    CHECK_MSG(foreign == 0, "%s: %zu labels from hnswlib are not kiln's", name, foreign);
    free(ours);
    free(theirs);
}

static void test_sift_to_hnswlib(kiln_ctx *ctx) {
    kiln_dataset *base = NULL, *queries = NULL;
    if (kiln_dataset_open(ctx, "../shared/datasets/siftsmall/siftsmall_base.fvecs",
                          KILN_FORMAT_AUTO, 0, &base) != KILN_OK ||
        kiln_dataset_open(ctx, "../shared/datasets/siftsmall/siftsmall_query.fvecs",
                          KILN_FORMAT_AUTO, 0, &queries) != KILN_OK) {
        SKIP_PART("siftsmall not found under ../shared/datasets (%s)", kiln_errmsg(ctx));
        kiln_dataset_free(base);
        return;
    }
    const size_t nq = kiln_dataset_count(queries), dim = kiln_dataset_dim(queries);
    float *q = malloc(nq * dim * sizeof *q);
    REQUIRE(q);
    CHECK_OK(ctx, kiln_dataset_read_f32(queries, 0, nq, q));
    kiln_build_params bp;
    kiln_build_params_init(&bp);
    bp.method = KILN_METHOD_INSERT;
    bp.M = 16;
    bp.ef_construction = 200;
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_build_dataset(ctx, base, &bp, &ix));
    if (ix)
        hnswlib_agrees(ix, "l2", q, nq, "sift");
    kiln_index_free(ix);
    free(q);
    kiln_dataset_free(queries);
    kiln_dataset_free(base);
}

static void test_synth_to_hnswlib(kiln_ctx *ctx, kiln_metric metric, const char *space) {
    float *v = synth(ctx, SYN_N + SYN_NQ, SYN_DIM, 11);
    kiln_index *ix = build(ctx, v, SYN_N, SYN_DIM, metric, 16, 100);
    for (uint32_t i = 0; i < ix->count; i++) /* above 2^32: size_t must carry them */
        ix->labels[i] = (int64_t)10000000000LL + 7 * (int64_t)i;
    hnswlib_agrees(ix, space, v + (size_t)SYN_N * SYN_DIM, SYN_NQ, space);
    kiln_index_free(ix);
    free(v);
}

/* ==== 2. kiln reads hnswlib's files ==== */

/* hnswlib builds over uniform random data (labels 1000 + i: HL_N rows, then
 * SYN_NQ queries), marks the nd labels del deleted, and saves; returns false
 * when the helper failed. Uniform data in 32 dimensions is hard enough that
 * recall at ef 64 is below 1, so the recall comparison means something. */
static bool hnswlib_build(const char *space, const char *prefix, const int64_t *del, size_t nd,
                          float **base_out) {
    const size_t total = (size_t)(HL_N + SYN_NQ) * SYN_DIM;
    float *v = malloc(total * sizeof *v);
    REQUIRE(v);
    kiln_rng rng;
    kiln_rng_seed(&rng, 23);
    for (size_t i = 0; i < total; i++)
        v[i] = (float)kiln_rng_uniform(&rng);
    char bfile[64], qfile[64];
    snprintf(bfile, sizeof bfile, "%s.base.f32", prefix);
    snprintf(qfile, sizeof qfile, "%s.queries.f32", prefix);
    REQUIRE(write_file(tpath(bfile), v, (size_t)HL_N * SYN_DIM * sizeof *v));
    REQUIRE(
        write_file(tpath(qfile), v + (size_t)HL_N * SYN_DIM, (size_t)SYN_NQ * SYN_DIM * sizeof *v));
    char dfile[64];
    snprintf(dfile, sizeof dfile, "%s.deleted.i64", prefix);
    if (nd)
        REQUIRE(write_file(tpath(dfile), del, nd * sizeof *del));
    char args[8192];
    snprintf(args, sizeof args, "build %s %d '%s' '%s' 16 100 %d %d '%s' '%s'", space, SYN_DIM,
             tpath(bfile), tpath(qfile), EF, K, nd ? tpath(dfile) : "-", tpath(prefix));
    const bool ok = run_python(args);
    CHECK(ok);
    *base_out = v;
    return ok;
}

static void test_hnswlib_to_kiln(kiln_ctx *ctx, kiln_metric metric, const char *space) {
    char prefix[32], file[64], ids[64];
    snprintf(prefix, sizeof prefix, "from_hnswlib_%s", space);
    snprintf(file, sizeof file, "%s.bin", prefix);
    snprintf(ids, sizeof ids, "%s.ids", prefix);
    float *v = NULL;
    if (!hnswlib_build(space, prefix, NULL, 0, &v)) {
        free(v);
        return;
    }
    const float *q = v + (size_t)HL_N * SYN_DIM;
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, tpath(file), SYN_DIM, metric, &ix));
    if (!ix) {
        free(v);
        return;
    }
    CHECK_OK(ctx, kiln_index_check(ix));
    CHECK(kiln_index_count(ix) == HL_N && kiln_index_dim(ix) == SYN_DIM);
    CHECK(ix->M == 16 && ix->M0 == 32 && ix->ef_construction == 100);
    kiln_build_report rep;
    CHECK_OK(ctx, kiln_index_build_report(ix, &rep));
    fprintf(stderr, "%s: imported, repair added %llu links\n", prefix,
            (unsigned long long)rep.repaired_links);

    /* hnswlib (one thread) inserts in row order: node i is row i. */
    size_t bad_label = 0, bad_vec = 0;
    for (uint32_t i = 0; i < HL_N; i++) {
        bad_label += ix->labels[i] != 1000 + (int64_t)i;
        float row[SYN_DIM];
        memcpy(row, v + (size_t)i * SYN_DIM, sizeof row);
        double norm = 0;
        for (int d = 0; d < SYN_DIM; d++)
            norm += (double)row[d] * row[d];
        for (int d = 0; d < SYN_DIM; d++) {
            const float want = metric == KILN_METRIC_COS ? (float)(row[d] / sqrt(norm)) : row[d];
            bad_vec +=
                fabsf(kiln_vector(ix, i)[d] - want) > (metric == KILN_METRIC_COS ? 1e-6f : 0);
        }
    }
    CHECK_MSG(bad_label == 0 && bad_vec == 0, "%zu labels, %zu values differ", bad_label, bad_vec);

    int64_t *truth = malloc((size_t)SYN_NQ * K * sizeof *truth);
    REQUIRE(truth);
    CHECK_OK(ctx, kiln_knn_exact(ctx, v, HL_N, q, SYN_NQ, SYN_DIM, metric, K, 0, truth, NULL));
    for (size_t i = 0; i < (size_t)SYN_NQ * K; i++)
        truth[i] += 1000;
    int64_t *theirs = read_labels(tpath(ids), (size_t)SYN_NQ * K);
    CHECK(theirs != NULL);
    int64_t *ours = kiln_search(ix, q, SYN_NQ);
    if (theirs) {
        const double r_kiln = recall(ours, truth, SYN_NQ, K);
        const double r_hnswlib = recall(theirs, truth, SYN_NQ, K);
        fprintf(stderr, "%s: recall@%d at ef %d: kiln %.4f, hnswlib %.4f\n", prefix, K, EF, r_kiln,
                r_hnswlib);
        CHECK_MSG(r_kiln >= r_hnswlib - 0.01, "kiln %.4f vs hnswlib %.4f", r_kiln, r_hnswlib);
    }

    /* And back: the import exported again is a file hnswlib's loader takes
     * that searches like kiln does. */
    hnswlib_agrees(ix, space, q, SYN_NQ, prefix);
    free(ours);
    free(theirs);
    free(truth);
    kiln_index_free(ix);
    free(v);
}

/* Labels kiln returns for nq queries at (k, ef), one thread. */
static int64_t *search_k(const kiln_index *ix, const float *q, size_t nq, uint32_t k, uint32_t ef) {
    kiln_search_params sp = {.k = k, .ef = ef, .threads = 1};
    int64_t *labels = malloc((nq ? nq : 1) * k * sizeof *labels);
    REQUIRE(labels);
    CHECK(kiln_index_search(ix, q, nq, &sp, labels, NULL) == KILN_OK);
    return labels;
}

/* The exact top-K of the nq queries among the n rows of v not marked gone,
 * in labels (row i's is label0 + i); the caller frees. */
static int64_t *live_truth(kiln_ctx *ctx, const float *v, size_t n, size_t dim, const uint8_t *gone,
                           int64_t label0, const float *q, size_t nq) {
    float *rows = malloc((n ? n : 1) * dim * sizeof *rows);
    int64_t *lab = malloc((n ? n : 1) * sizeof *lab), *truth = malloc(nq * K * sizeof *truth);
    REQUIRE(rows && lab && truth);
    size_t live = 0;
    for (size_t i = 0; i < n; i++)
        if (!gone[i]) {
            memcpy(rows + live * dim, v + i * dim, dim * sizeof *rows);
            lab[live++] = label0 + (int64_t)i;
        }
    CHECK_OK(ctx, kiln_knn_exact(ctx, rows, live, q, nq, dim, KILN_METRIC_L2, K, 0, truth, NULL));
    for (size_t i = 0; i < nq * K; i++)
        truth[i] = lab[truth[i]];
    free(rows);
    free(lab);
    return truth;
}

/* Live nodes reached from the entry point on level 0, free slots aside. */
static uint64_t live_reachable(const struct kiln_index *ix) {
    if (ix->entry_point == KILN_NO_NODE)
        return 0;
    uint8_t *seen = calloc(ix->count ? ix->count : 1, 1);
    uint32_t *queue = malloc((ix->count ? ix->count : 1) * sizeof *queue);
    REQUIRE(seen && queue);
    for (uint64_t i = 0; i < ix->count; i++)
        seen[i] = kiln_slot_free(ix, i);
    const uint64_t n = kiln_l0_mark_reachable(ix, seen, queue, ix->entry_point, 1);
    free(seen);
    free(queue);
    return n;
}

/* hnswlib's own file with pct% of its elements marked deleted (mark_deleted;
 * with ep_too the entry point as well, marked in the file as mark_deleted
 * marks it) comes out deleted (issue 14): the slots free, the rest as they
 * were, recall against the exact neighbours of the live rows near
 * hnswlib's own on the same file, no deleted label returned. */
static void test_hnswlib_deleted(kiln_ctx *ctx, unsigned pct, bool ep_too) {
    char prefix[32], file[64], qfile[64], ids[64];
    snprintf(prefix, sizeof prefix, "deleted%u", pct);
    snprintf(file, sizeof file, "%s.bin", prefix);
    snprintf(qfile, sizeof qfile, "%s.queries.f32", prefix);
    snprintf(ids, sizeof ids, "%s.theirs.ids", prefix);
    uint8_t *gone = calloc(HL_N, 1);
    int64_t *del = malloc(HL_N * sizeof *del);
    REQUIRE(gone && del);
    size_t nd = 0;
    int64_t *theirs = NULL;
    kiln_rng rng;
    kiln_rng_seed(&rng, 61 + pct);
    while (nd < (size_t)HL_N * pct / 100) {
        const uint32_t r = (uint32_t)kiln_rng_below(&rng, HL_N);
        if (!gone[r]) {
            gone[r] = 1;
            del[nd++] = 1000 + (int64_t)r;
        }
    }
    float *v = NULL;
    if (!hnswlib_build("l2", prefix, del, nd, &v))
        goto done;
    if (ep_too) {
        size_t size = 0;
        uint8_t *b = read_file(tpath(file), &size);
        REQUIRE(b && size > HL_HDR);
        const uint32_t ep = kiln_get_u32le(b + HL_ENTRY);
        REQUIRE(ep < HL_N);
        if (!gone[ep]) {
            gone[ep] = 1;
            del[nd++] = 1000 + (int64_t)ep;
            b[HL_HDR + ep * kiln_get_u64le(b + HL_SIZE_DATA) + 2] |= 1; /* DELETE_MARK */
            REQUIRE(write_file(tpath(file), b, size));
        }
        free(b);
    }
    const float *q = v + (size_t)HL_N * SYN_DIM;
    char args[8192];
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, tpath(file), 0, KILN_METRIC_L2, &ix));
    if (!ix)
        goto done;
    const size_t live = HL_N - nd;
    CHECK(ix->count == HL_N && kiln_index_count(ix) == live && ix->free_count == nd);
    CHECK_OK(ctx, kiln_index_check(ix));
    CHECK_MSG(live_reachable(ix) == live, "%llu of %zu live nodes reachable",
              (unsigned long long)live_reachable(ix), live);
    kiln_build_report rep;
    CHECK_OK(ctx, kiln_index_build_report(ix, &rep));
    CHECK(rep.deleted_elements == nd);
    CHECK(rep.n_stages == 2 && strcmp(rep.stages[1].name, "delete") == 0);
    CHECK(!gone[ix->entry_point] && ix->levels[ix->entry_point] == ix->max_level);
    size_t bad = 0;
    for (uint32_t i = 0; i < HL_N; i++) {
        if (gone[i]) {
            bad += !kiln_slot_free(ix, i) || ix->labels[i] != -1;
            continue;
        }
        bad += kiln_slot_free(ix, i) || ix->labels[i] != 1000 + (int64_t)i ||
               memcmp(kiln_vector(ix, i), v + (size_t)i * SYN_DIM, SYN_DIM * sizeof(float)) != 0;
    }
    CHECK_MSG(bad == 0, "%zu slots are not what the file said", bad);

    /* Exact neighbours of the live rows, in labels. */
    int64_t *truth = live_truth(ctx, v, HL_N, SYN_DIM, gone, 1000, q, SYN_NQ);
    int64_t *ours = kiln_search(ix, q, SYN_NQ);
    /* At EF and at a narrow beam, where a worse graph shows. */
    static const unsigned efs[2] = {16, EF};
    for (int e = 0; e < 2; e++) {
        snprintf(args, sizeof args, "query l2 %d '%s' '%s' %u %d '%s'", SYN_DIM, tpath(file),
                 tpath(qfile), efs[e], K, tpath(ids));
        CHECK(run_python(args));
        free(theirs);
        theirs = read_labels(tpath(ids), (size_t)SYN_NQ * K);
        CHECK(theirs != NULL);
        int64_t *mine = search_k(ix, q, SYN_NQ, K, efs[e]);
        if (theirs) {
            const double r_kiln = recall(mine, truth, SYN_NQ, K),
                         r_hnswlib = recall(theirs, truth, SYN_NQ, K);
            fprintf(stderr,
                    "%s: %zu of %d marked deleted%s: recall@%d at ef %u against the live rows: "
                    "kiln %.4f, hnswlib %.4f\n",
                    prefix, nd, HL_N, ep_too ? " (the entry point too)" : "", K, efs[e], r_kiln,
                    r_hnswlib);
            CHECK_MSG(r_kiln >= r_hnswlib - 0.02, "ef %u: kiln %.4f vs hnswlib %.4f", efs[e],
                      r_kiln, r_hnswlib);
        }
        free(mine);
    }
    /* No deleted label, from the queries or from every row, deleted or not;
     * every live row its own nearest. */
    int64_t *all = search_k(ix, v, HL_N, K, EF);
    size_t foreign = 0, self = 0;
    for (size_t i = 0; i < (size_t)HL_N * K; i++) {
        const int64_t l = all[i];
        foreign += l < 1000 || l >= 1000 + HL_N || gone[l - 1000];
    }
    for (size_t i = 0; i < (size_t)SYN_NQ * K; i++)
        foreign += ours[i] < 1000 || ours[i] >= 1000 + HL_N || gone[ours[i] - 1000];
    for (uint32_t i = 0; i < HL_N; i++)
        self += !gone[i] && all[(size_t)i * K] == 1000 + (int64_t)i;
    CHECK_MSG(foreign == 0, "%zu results are deleted or unknown labels", foreign);
    CHECK_MSG(self >= live * 99 / 100, "%zu of %zu live rows find themselves", self, live);
    free(all);

    /* The deleted rows added back take the free slots and are found. */
    float *back = malloc(nd * SYN_DIM * sizeof *back);
    REQUIRE(back);
    for (size_t k = 0; k < nd; k++)
        memcpy(back + k * SYN_DIM, v + (size_t)(del[k] - 1000) * SYN_DIM, SYN_DIM * sizeof *back);
    CHECK_OK(ctx, kiln_index_add(ix, back, del, nd));
    CHECK(ix->count == HL_N && ix->free_count == 0 && kiln_index_count(ix) == HL_N);
    CHECK_OK(ctx, kiln_index_check(ix));
    int64_t *found = search_k(ix, back, nd, 1, EF);
    size_t back_self = 0;
    for (size_t k = 0; k < nd; k++)
        back_self += found[k] == del[k];
    CHECK_MSG(back_self >= nd * 99 / 100, "%zu of %zu rows added back find themselves", back_self,
              nd);
    free(found);
    free(back);
    free(ours);
    free(truth);
    kiln_index_free(ix);
done:
    free(theirs);
    free(v);
    free(gone);
    free(del);
}

/* ==== 3. Round trips ==== */

static void test_round_trip(kiln_ctx *ctx, kiln_metric metric, size_t n) {
    const size_t dim = 12;
    float *v = synth(ctx, n ? n : 1, dim, 5);
    kiln_index *a = build(ctx, v, n, dim, metric, 6, 40);
    for (uint32_t i = 0; i < a->count; i++)
        a->labels[i] = (int64_t)((uint64_t)i * 0x9E3779B97F4A7C15ULL >> 1); /* up to 2^63-1 */
    const char *f1 = tpath("rt1.bin"), *f2 = tpath("rt2.bin");
    CHECK_OK(ctx, kiln_index_export_hnswlib(a, f1, NULL));
    kiln_index *b = NULL;
    CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, f1, (uint32_t)dim, metric, &b));
    if (b) {
        check_same_index(a, b, metric == KILN_METRIC_COS ? 1e-6f : 0.0f);
        kiln_build_report rep;
        CHECK_OK(ctx, kiln_index_build_report(b, &rep));
        CHECK(rep.repaired_links == 0);
        CHECK_OK(ctx, kiln_index_check(b));
        CHECK_OK(ctx, kiln_index_export_hnswlib(b, f2, NULL));
        size_t s1 = 0, s2 = 0;
        uint8_t *b1 = read_file(f1, &s1), *b2 = read_file(f2, &s2);
        REQUIRE(b1 && b2);
        if (metric != KILN_METRIC_COS)
            CHECK(s1 == s2 && memcmp(b1, b2, s1) == 0);
        else
            CHECK(s1 == s2);
        /* The size hnswlib's own loader insists on. */
        uint64_t want = HL_HDR + a->count * kiln_get_u64le(b1 + HL_SIZE_DATA);
        for (uint32_t i = 0; i < a->count; i++)
            want += 4 + (uint64_t)a->levels[i] * (4 + 4 * (uint64_t)a->M);
        CHECK(s1 == want);
        free(b1);
        free(b2);
    }
    kiln_index_free(b);
    kiln_index_free(a);
    free(v);
}

/* An hnswlib graph may leave nodes unreachable on level 0; import repairs
 * them as a kiln build would, and says how many links it added. */
static void test_import_repairs(kiln_ctx *ctx) {
    const size_t n = 400, dim = 8;
    float *v = synth(ctx, n, dim, 17);
    kiln_index *ix = build(ctx, v, n, dim, KILN_METRIC_L2, 4, 40);
    uint32_t cut[3] = {5, 77, 311}, removed = 0;
    for (int c = 0; c < 3; c++) {
        if (cut[c] == ix->entry_point)
            cut[c]++;
        for (uint32_t u = 0; u < ix->count; u++) {
            uint32_t *b = kiln_links(ix, u, 0);
            for (uint32_t j = 1; j <= b[0]; j++)
                if (b[j] == cut[c]) {
                    b[j--] = b[b[0]--];
                    removed++;
                }
        }
    }
    CHECK(removed > 0);
    CHECK(kiln_index_check(ix) == KILN_E_INVALID);
    CHECK_OK(ctx, kiln_index_export_hnswlib(ix, tpath("unreachable.bin"), NULL));
    kiln_index *b = NULL;
    CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, tpath("unreachable.bin"), (uint32_t)dim,
                                            KILN_METRIC_L2, &b));
    if (b) {
        kiln_build_report rep;
        CHECK_OK(ctx, kiln_index_build_report(b, &rep));
        CHECK(rep.repaired_links >= 1 && rep.repaired_links <= 3);
        CHECK(rep.method == KILN_METHOD_INSERT && rep.n_stages == 2);
        CHECK_OK(ctx, kiln_index_check(b));
    }
    kiln_index_free(b);
    kiln_index_free(ix);
    free(v);
}

/* ==== 4. Damaged and forged files ==== */

typedef struct forged {
    uint8_t *bytes;
    size_t size;
    uint64_t sde;  /* size_data_per_element_ */
    uint32_t M;    /* maxM_ */
    uint64_t tail; /* offset of the first link size */
} forged;

static kiln_status import_bytes(kiln_ctx *ctx, const uint8_t *b, size_t n, uint32_t dim) {
    const char *path = tpath("forged.bin");
    REQUIRE(write_file(path, b, n));
    kiln_index *ix = NULL;
    const kiln_status st = kiln_index_import_hnswlib(ctx, path, dim, KILN_METRIC_L2, &ix);
    CHECK((st == KILN_OK) == (ix != NULL));
    if (st == KILN_OK)
        CHECK_OK(ctx, kiln_index_check(ix));
    kiln_index_free(ix);
    return st;
}

/* Offset of element e's link size in the tail, and its level. */
static uint64_t link_size_at(const forged *f, uint32_t e, uint32_t *level) {
    uint64_t at = f->tail;
    for (uint32_t i = 0; i < e; i++)
        at += 4 + kiln_get_u32le(f->bytes + at);
    *level = kiln_get_u32le(f->bytes + at) / (4 + 4 * f->M);
    return at;
}

#define FORGE(f, buf)                                                                              \
    uint8_t *buf = malloc((f)->size);                                                              \
    REQUIRE(buf);                                                                                  \
    memcpy(buf, (f)->bytes, (f)->size)

static void expect_fail(kiln_ctx *ctx, const uint8_t *b, size_t n, uint32_t dim, kiln_status want,
                        const char *needle) {
    CHECK_FAILS(ctx, import_bytes(ctx, b, n, dim), want, needle);
    CHECK(strstr(kiln_errmsg(ctx), "forged.bin") != NULL);
}

static void test_damaged(kiln_ctx *ctx) {
    const uint32_t dim = 4, n = 300;
    float *v = synth(ctx, n, dim, 9);
    kiln_index *ix = build(ctx, v, n, dim, KILN_METRIC_L2, 4, 30);
    REQUIRE(ix->max_level >= 2);
    const char *good = tpath("good.bin");
    CHECK_OK(ctx, kiln_index_export_hnswlib(ix, good, NULL));
    forged f = {0};
    f.bytes = read_file(good, &f.size);
    REQUIRE(f.bytes);
    f.sde = kiln_get_u64le(f.bytes + HL_SIZE_DATA);
    f.M = (uint32_t)kiln_get_u64le(f.bytes + HL_MAX_M);
    f.tail = HL_HDR + n * f.sde;
    CHECK(import_bytes(ctx, f.bytes, f.size, dim) == KILN_OK);

    /* Truncation anywhere, and one byte too many. */
    size_t cuts = 0, cut_fail = 0;
    for (size_t cut = 0; cut < f.size; cut += cut < 200 ? 1 : 13) {
        cuts++;
        const kiln_status st = import_bytes(ctx, f.bytes, cut, dim);
        cut_fail += st == KILN_E_FORMAT && strstr(kiln_errmsg(ctx), "forged.bin");
    }
    CHECK_MSG(cut_fail == cuts, "%zu of %zu truncations failed as KILN_E_FORMAT", cut_fail, cuts);
    {
        uint8_t *b = malloc(f.size + 1);
        REQUIRE(b);
        memcpy(b, f.bytes, f.size);
        b[f.size] = 0;
        expect_fail(ctx, b, f.size + 1, dim, KILN_E_FORMAT, "1 unexpected bytes");
        free(b);
    }
    expect_fail(ctx, f.bytes, 50, dim, KILN_E_FORMAT, "too short");
    expect_fail(ctx, f.bytes, f.size, 5, KILN_E_FORMAT, "dim 5 as float32 needs 20");

    /* Header fields. */
    static const uint64_t huge[] = {UINT64_MAX, 1ULL << 40, 0x100000000ULL, 1ULL << 20};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        FORGE(&f, b);
        kiln_put_u64le(b + HL_COUNT, huge[i]);
        kiln_put_u64le(b + HL_MAX_ELEMS, UINT64_MAX);
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "do not fit");
        free(b);
    }
    {
        FORGE(&f, b); /* one element more than there is: the walk goes astray */
        kiln_put_u64le(b + HL_COUNT, n + 1);
        CHECK(import_bytes(ctx, b, f.size, dim) != KILN_OK);
        free(b);
    }
    {
        FORGE(&f, b);
        kiln_put_u64le(b + HL_MAX_ELEMS, n - 1);
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "exceeds max_elements_");
        free(b);
    }
    {
        FORGE(&f, b);
        kiln_put_u64le(b + HL_MAX_M0, 3 * f.M);
        expect_fail(ctx, b, f.size, dim, KILN_E_UNSUPPORTED, "maxM0_ is 12");
        kiln_put_u64le(b + HL_MAX_M0, UINT64_MAX);
        expect_fail(ctx, b, f.size, dim, KILN_E_UNSUPPORTED, "maxM0_");
        kiln_put_u64le(b + HL_MAX_M, 0);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "maxM_ 0");
        kiln_put_u64le(b + HL_MAX_M, UINT64_MAX);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "maxM_");
        free(b);
    }
    {
        FORGE(&f, b);
        kiln_put_u64le(b + HL_OFF_LEVEL0, 8);
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "offsetLevel0_");
        memcpy(b, f.bytes, f.size);
        kiln_put_u64le(b + HL_OFF_DATA, 4);
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "offsetData_");
        memcpy(b, f.bytes, f.size);
        kiln_put_u64le(b + HL_LABEL_OFF, UINT64_MAX);
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "label_offset_");
        memcpy(b, f.bytes, f.size);
        kiln_put_u64le(b + HL_SIZE_DATA, f.sde + 4);
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "size_data_per_element_");
        free(b);
    }
    {
        FORGE(&f, b);
        kiln_put_u32le(b + HL_MAX_LEVEL, 1000);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "maxlevel_ 1000");
        kiln_put_u32le(b + HL_MAX_LEVEL, UINT32_MAX);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "maxlevel_ -1");
        memcpy(b, f.bytes, f.size);
        kiln_put_u32le(b + HL_ENTRY, n);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "enterpoint_node_ 300");
        free(b);
    }

    /* An element on level 0 only, and one on level >= 1 (not the entry). */
    uint32_t low = 0, high = 0, lvl = 0;
    while (ix->levels[low] != 0)
        low++;
    while (ix->levels[high] == 0 || high == ix->entry_point)
        high++;
    {
        FORGE(&f, b);
        kiln_put_u32le(b + HL_ENTRY, low);
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "not maxlevel_");
        free(b);
    }
    {
        /* The level of an element far above maxlevel_. */
        FORGE(&f, b);
        const uint64_t at = link_size_at(&f, low, &lvl);
        kiln_put_u32le(b + at, 40 * (4 + 4 * f.M));
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "has level 40");
        kiln_put_u32le(b + at, UINT32_MAX - (UINT32_MAX % (4 + 4 * f.M)));
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "above maxlevel_");
        kiln_put_u32le(b + at, 3);
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "not a multiple of 20");
        free(b);
    }
    {
        /* The last element claims one level more than the file holds. */
        FORGE(&f, b);
        const uint64_t at = link_size_at(&f, n - 1, &lvl);
        kiln_put_u32le(b + at, (lvl + 1) * (4 + 4 * f.M));
        kiln_put_u32le(b + HL_MAX_LEVEL, KILN_MAX_LEVELS - 1); /* so the level itself passes */
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "run past the end");
        free(b);
    }

    /* Level-0 records. */
    const uint64_t rec_low = HL_HDR + (uint64_t)low * f.sde;
    REQUIRE(kiln_links(ix, low, 0)[0] >= 1);
    {
        FORGE(&f, b);
        kiln_put_u32le(b + rec_low + 4, n + 3);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "links to element 303");
        kiln_put_u32le(b + rec_low + 4, UINT32_MAX);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "beyond the 300 elements");
        memcpy(b, f.bytes, f.size);
        kiln_put_u32le(b + rec_low, 9);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "above the bound 8");
        memcpy(b, f.bytes, f.size);
        b[rec_low + 2] |= 1; /* deleted: imported deleted (test_import_deleted) */
        CHECK_OK(ctx, import_bytes(ctx, b, f.size, dim));
        kiln_put_u64le(b + rec_low + f.sde - 8, 1ULL << 63);      /* its label is not used */
        kiln_put_u32le(b + rec_low + 4 + 4 * 8 + 4, 0x7fc00000u); /* nor its vector */
        CHECK_OK(ctx, import_bytes(ctx, b, f.size, dim));
        memcpy(b, f.bytes, f.size);
        b[rec_low + 3] = 0x80;
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "unknown flag bits");
        memcpy(b, f.bytes, f.size);
        kiln_put_u64le(b + rec_low + f.sde - 8, 1ULL << 63);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "above kiln's int64 maximum");
        memcpy(b, f.bytes, f.size);
        kiln_put_u32le(b + rec_low + 4 + 4 * 8 + 4, 0x7fc00000u); /* NaN in dimension 1 */
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "non-finite value at dimension 1");
        free(b);
    }

    /* Upper-level blocks: ids out of range, links to a node not on the
     * level, counts above maxM, flag bits (none allowed above level 0). */
    {
        const uint64_t at = link_size_at(&f, high, &lvl) + 4; /* level 1 block */
        REQUIRE(lvl >= 1 && kiln_links(ix, high, 1)[0] >= 1);
        FORGE(&f, b);
        kiln_put_u32le(b + at + 4, n);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "level 1 links to element 300");
        kiln_put_u32le(b + at + 4, low);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "only on levels 0..0");
        memcpy(b, f.bytes, f.size);
        kiln_put_u32le(b + at, f.M + 1);
        expect_fail(ctx, b, f.size, dim, KILN_E_RANGE, "above the bound 4");
        kiln_put_u32le(b + at, 0x10000u | 1);
        expect_fail(ctx, b, f.size, dim, KILN_E_FORMAT, "unknown flag bits");
        free(b);
    }

    /* Arguments and missing files. */
    kiln_index *out = NULL;
    CHECK_FAILS(ctx, kiln_index_import_hnswlib(ctx, good, 70000, KILN_METRIC_L2, &out), KILN_E_ARG,
                "dim 70000");
    CHECK_FAILS(ctx, kiln_index_import_hnswlib(ctx, good, dim, (kiln_metric)0, &out), KILN_E_ARG,
                "metric");
    CHECK_FAILS(ctx,
                kiln_index_import_hnswlib(ctx, tpath("missing.bin"), dim, KILN_METRIC_L2, &out),
                KILN_E_IO, "missing.bin");
    CHECK(out == NULL);

    /* Export refuses labels size_t cannot hold, and leaves nothing behind. */
    const char *neg = tpath("negative.bin");
    unlink(neg);
    ix->labels[7] = -5;
    CHECK_FAILS(ctx, kiln_index_export_hnswlib(ix, neg, NULL), KILN_E_RANGE, "node 7 has label -5");
    struct stat sb;
    CHECK(stat(neg, &sb) != 0);
    ix->labels[7] = 7;
    CHECK_FAILS(ctx, kiln_index_export_hnswlib(ix, tpath("no/such/dir/x.bin"), NULL), KILN_E_IO,
                "");

    free(f.bytes);
    kiln_index_free(ix);
    free(v);
}

/* ==== 4b. Crafted files that cost work or memory (issue 11 T12) ==== */

/* The bytes of an hnswlib file of n level-0 elements with no links at all,
 * vectors from synth, labels i, maxM_ M. Caller frees. */
static uint8_t *no_links_file(kiln_ctx *ctx, uint32_t n, uint32_t dim, uint32_t M, size_t *size) {
    const uint64_t off_data = 4 + 8 * (uint64_t)M, label_off = off_data + 4 * (uint64_t)dim;
    const uint64_t sde = label_off + 8;
    *size = HL_HDR + (size_t)n * (sde + 4);
    uint8_t *b = calloc(1, *size);
    REQUIRE(b);
    kiln_put_u64le(b + HL_MAX_ELEMS, n);
    kiln_put_u64le(b + HL_COUNT, n);
    kiln_put_u64le(b + HL_SIZE_DATA, sde);
    kiln_put_u64le(b + HL_LABEL_OFF, label_off);
    kiln_put_u64le(b + HL_OFF_DATA, off_data);
    kiln_put_u32le(b + HL_MAX_LEVEL, 0);
    kiln_put_u32le(b + HL_ENTRY, 0);
    kiln_put_u64le(b + HL_MAX_M, M);
    kiln_put_u64le(b + HL_MAX_M0, 2 * (uint64_t)M);
    kiln_put_u64le(b + 72, M);  /* M_ */
    kiln_put_u64le(b + 88, 64); /* ef_construction_ */
    float *v = synth(ctx, n, dim, 41);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *rec = b + HL_HDR + (size_t)i * sde;
        for (uint32_t d = 0; d < dim; d++)
            kiln_put_f32le(rec + off_data + 4 * (size_t)d, v[(size_t)i * dim + d]);
        kiln_put_u64le(rec + label_off, i);
    }
    free(v);
    return b; /* the link sizes after the records are all 0: level 0 */
}

/* 32K elements and not one link: every element its own island. The repair
 * must finish (its searches are bounded, graph/connect.c decision 3, and
 * tests/test_hnsw.c counts them) and give a graph the validator passes. */
static void test_import_no_links(kiln_ctx *ctx) {
    const uint32_t n = 32768, dim = 16;
    size_t size = 0;
    uint8_t *b = no_links_file(ctx, n, dim, 16, &size);
    const char *path = tpath("no_links.bin");
    REQUIRE(write_file(path, b, size));
    free(b);
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, path, dim, KILN_METRIC_L2, &ix));
    if (ix) {
        CHECK_OK(ctx, kiln_index_check(ix));
        kiln_build_report rep;
        CHECK_OK(ctx, kiln_index_build_report(ix, &rep));
        CHECK_MSG(rep.repaired_links == n - 1, "%llu links repaired, want one per island (%u)",
                  (unsigned long long)rep.repaired_links, n - 1);
        int64_t lab[1];
        kiln_search_params sp = {.k = 1, .ef = 16, .threads = 1};
        CHECK_OK(ctx, kiln_index_search(ix, ix->vectors, 1, &sp, lab, NULL));
    }
    kiln_index_free(ix);
}

/* A file of 256 MiB whose sizes all add up but that holds only its header:
 * the rest is a hole, read as zeros (a valid-looking file of empty,
 * all-zero elements). It is refused before anything is sized from its
 * count. */
static void test_import_sparse(kiln_ctx *ctx) {
    const uint32_t dim = 128, M = 16;
    const uint64_t sde = 4 + 8 * (uint64_t)M + 4 * (uint64_t)dim + 8;
    const uint64_t n = ((uint64_t)256 << 20) / (sde + 4);
    size_t hsize = 0;
    uint8_t *b = no_links_file(ctx, 1, dim, M, &hsize);
    kiln_put_u64le(b + HL_MAX_ELEMS, n);
    kiln_put_u64le(b + HL_COUNT, n);
    const char *path = tpath("sparse.bin");
    REQUIRE(write_file(path, b, HL_HDR));
    free(b);
    REQUIRE(truncate(path, (off_t)(HL_HDR + n * (sde + 4))) == 0);
    kiln_index *ix = NULL;
    CHECK_FAILS(ctx, kiln_index_import_hnswlib(ctx, path, dim, KILN_METRIC_L2, &ix), KILN_E_FORMAT,
                "holes");
    CHECK(ix == NULL && strstr(kiln_errmsg(ctx), "sparse.bin") != NULL);
    unlink(path);
}

/* ==== 4c. Deleted elements and the dim (issue 11 U13) ==== */

/* A kiln export with elements marked deleted (the entry point among them,
 * one sharing its label with a live element, one with a label above
 * INT64_MAX and one with a NaN, none of which matters for a deleted one):
 * imported with them as free slots at their ids, the live ones as they
 * were, lists that named no deleted element kept, the validator passing;
 * the shared label is then the live element's alone. All deleted: an index
 * of free slots only, which exports, imports and takes adds. */
static void test_import_deleted(kiln_ctx *ctx) {
    const uint32_t dim = 6, n = 500;
    float *v = synth(ctx, n, dim, 13);
    kiln_index *ix = build(ctx, v, n, dim, KILN_METRIC_L2, 4, 40);
    const char *path = tpath("with_deleted.bin");
    CHECK_OK(ctx, kiln_index_export_hnswlib(ix, path, NULL));
    size_t size = 0;
    uint8_t *b = read_file(path, &size);
    REQUIRE(b);
    const uint64_t sde = kiln_get_u64le(b + HL_SIZE_DATA);
    uint8_t del[500] = {0};
    uint32_t upper = 0; /* a deleted element on level >= 1 that is not the entry point */
    while (upper == ix->entry_point || ix->levels[upper] == 0)
        upper++;
    uint32_t marks[] = {ix->entry_point, 3, 4, upper, n - 1};
    uint32_t ndel = 0;
    for (size_t m = 0; m < sizeof marks / sizeof marks[0]; m++) {
        ndel += !del[marks[m]];
        del[marks[m]] = 1;
        b[HL_HDR + marks[m] * sde + 2] |= 1; /* hnswlib's DELETE_MARK */
    }
    REQUIRE(!del[10]);
    kiln_put_u64le(b + HL_HDR + 3 * sde + sde - 8, (uint64_t)ix->labels[10]);
    kiln_put_u64le(b + HL_HDR + 4 * sde + sde - 8, UINT64_MAX);
    kiln_put_u32le(b + HL_HDR + (n - 1) * sde + 4 + 4 * 8, 0x7fc00000u); /* NaN */
    REQUIRE(write_file(path, b, size));
    kiln_index *got = NULL;
    CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, path, dim, KILN_METRIC_L2, &got));
    if (got) {
        CHECK(got->count == n && got->free_count == ndel && kiln_index_count(got) == n - ndel);
        CHECK_OK(ctx, kiln_index_check(got));
        kiln_build_report rep;
        CHECK_OK(ctx, kiln_index_build_report(got, &rep));
        CHECK_MSG(rep.deleted_elements == ndel, "%llu deleted, want %u",
                  (unsigned long long)rep.deleted_elements, ndel);
        CHECK(!del[got->entry_point] && got->levels[got->entry_point] == got->max_level);
        size_t bad = 0, lists = 0, kept = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (del[i]) {
                bad += !kiln_slot_free(got, i) || got->labels[i] != -1;
                continue;
            }
            bad += kiln_slot_free(got, i) || got->labels[i] != ix->labels[i] ||
                   got->levels[i] != ix->levels[i] ||
                   memcmp(kiln_vector(got, i), kiln_vector(ix, i), dim * sizeof(float)) != 0;
            /* A list that named no deleted element is not relinked (the
             * repair may still add to it). */
            const uint32_t *was = kiln_links(ix, i, 0), *is = kiln_links(got, i, 0);
            bool named = false;
            for (uint32_t j = 1; j <= was[0]; j++)
                named |= del[was[j]] != 0;
            if (!named) {
                lists++;
                kept += is[0] >= was[0] && memcmp(is + 1, was + 1, was[0] * sizeof *was) == 0;
            }
        }
        CHECK_MSG(bad == 0, "%zu slots are not what the file said", bad);
        CHECK_MSG(lists > 0 && kept == lists, "%zu of %zu untouched lists kept", kept, lists);
        CHECK(live_reachable(got) == n - ndel);
        /* Label 10's is now on one live node: deleting it finds that one. */
        const int64_t shared = ix->labels[10];
        CHECK_OK(ctx, kiln_index_delete(got, &shared, 1));
        CHECK(kiln_slot_free(got, 10) && kiln_index_count(got) == n - ndel - 1);
        CHECK_OK(ctx, kiln_index_check(got));
    }
    kiln_index_free(got);

    /* All deleted: every slot free; exported as hnswlib's all-deleted file
     * (entry point 0 on level 0) and back; adds reuse the slots. */
    for (uint32_t i = 0; i < n; i++)
        b[HL_HDR + i * sde + 2] |= 1;
    REQUIRE(write_file(path, b, size));
    CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, path, dim, KILN_METRIC_L2, &got));
    if (got) {
        CHECK(got->count == n && got->free_count == n && kiln_index_count(got) == 0);
        CHECK(got->entry_point == KILN_NO_NODE);
        CHECK_OK(ctx, kiln_index_check(got));
        int64_t lab[K];
        kiln_search_params sp = {.k = K, .ef = EF, .threads = 1};
        CHECK_OK(ctx, kiln_index_search(got, v, 1, &sp, lab, NULL));
        CHECK(lab[0] == -1 && lab[K - 1] == -1);
        const char *empty = tpath("all_deleted.bin");
        CHECK_OK(ctx, kiln_index_export_hnswlib(got, empty, NULL));
        size_t esize = 0;
        uint8_t *e = read_file(empty, &esize);
        REQUIRE(e);
        CHECK(kiln_get_u32le(e + HL_ENTRY) == 0 && kiln_get_u32le(e + HL_MAX_LEVEL) == 0);
        CHECK(kiln_get_u64le(e + HL_COUNT) == n);
        free(e);
        kiln_index *again = NULL;
        CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, empty, dim, KILN_METRIC_L2, &again));
        if (again) {
            CHECK(again->count == n && again->free_count == n);
            CHECK_OK(ctx, kiln_index_add(again, v, NULL, 50));
            CHECK(again->count == n && again->free_count == n - 50);
            CHECK_OK(ctx, kiln_index_check(again));
            int64_t *found = search_k(again, v, 50, 1, EF);
            size_t self = 0;
            for (size_t i = 0; i < 50; i++)
                self += found[i] == (int64_t)i;
            CHECK_MSG(self >= 49, "%zu of 50 added rows find themselves", self);
            free(found);
        }
        kiln_index_free(again);
    }
    kiln_index_free(got);
    free(b);
    kiln_index_free(ix);
    free(v);
}

/* ==== 4d. Free slots exported (issue 14) ==== */

/* hnswlib's C++ headers load path (bench/hnswlib_runner --load, when
 * KILN_HNSWLIB_RUNNER names it) and evaluate it against gt (nq x K labels,
 * each < 2^31): *recall gets its recall@K at EF; the load line must give
 * count, max_elements and deleted. */
static void runner_loads(const char *path, const float *q, size_t nq, size_t dim, const int64_t *gt,
                         uint64_t count, uint64_t max_elements, uint64_t deleted,
                         double *recall_out) {
    const char *runner = getenv("KILN_HNSWLIB_RUNNER");
    *recall_out = -1;
    if (!runner || !*runner || access(runner, X_OK) != 0) {
        fprintf(stderr, "SKIP part: KILN_HNSWLIB_RUNNER not set, hnswlib's C++ loader not run\n");
        return;
    }
    kiln_ctx *ctx = NULL;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    int32_t *gt32 = malloc(nq * K * sizeof *gt32);
    REQUIRE(gt32);
    for (size_t i = 0; i < nq * K; i++)
        gt32[i] = (int32_t)gt[i];
    const char *qf = tpath("runner.queries.fbin"), *gf = tpath("runner.gt.ivecs");
    const char *out = tpath("runner.out");
    CHECK_OK(ctx, kiln_dataset_write(ctx, qf, KILN_FORMAT_FBIN, KILN_DTYPE_F32, q, nq, dim));
    CHECK_OK(ctx, kiln_dataset_write(ctx, gf, KILN_FORMAT_IVECS, KILN_DTYPE_I32, gt32, nq, K));
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s '%s' --load '%s' '%s' '%s' --metric l2 -k %d --ef %d >'%s'",
             check_emulator(), runner, path, qf, gf, K, EF, out);
    CHECK(system(cmd) == 0);
    size_t size = 0;
    char *text = (char *)read_file(out, &size);
    REQUIRE(text);
    char want[128];
    snprintf(want, sizeof want, "\"count\":%llu,\"max_elements\":%llu,\"deleted\":%llu",
             (unsigned long long)count, (unsigned long long)max_elements,
             (unsigned long long)deleted);
    CHECK_MSG(strstr(text, want) != NULL, "hnswlib_runner's load line lacks %s", want);
    const char *r = strstr(text, "\"recall\":");
    CHECK(r != NULL);
    if (r)
        *recall_out = strtod(r + 9, NULL);
    free(text);
    free(gt32);
    kiln_ctx_free(ctx);
}

/* A kiln index after deletes (the entry point among them) exported with room
 * to grow: the free slots are elements marked deleted, and hnswlib (Python
 * 0.6.2, and its C++ headers) loads, searches and fills the file. */
static void test_export_deleted(kiln_ctx *ctx, bool have_python) {
    const uint32_t n = 1500, dim = SYN_DIM, room = 400, max_elements = n + room;
    /* Uniform, as hnswlib_build's: hard enough that recall at EF is below 1. */
    float *v = malloc((size_t)(n + SYN_NQ + room) * dim * sizeof *v);
    REQUIRE(v);
    kiln_rng rng;
    kiln_rng_seed(&rng, 71);
    for (size_t i = 0; i < (size_t)(n + SYN_NQ + room) * dim; i++)
        v[i] = (float)kiln_rng_uniform(&rng);
    const float *q = v + (size_t)n * dim, *extra = q + (size_t)SYN_NQ * dim;
    kiln_index *ix = build(ctx, v, n, dim, KILN_METRIC_L2, 16, 100);
    uint8_t *gone = calloc(n, 1);
    int64_t del[150];
    size_t nd = 0;
    del[nd++] = ix->labels[ix->entry_point];
    gone[ix->entry_point] = 1;
    for (uint32_t i = 7; nd < 150; i += 10)
        if (!gone[i]) {
            gone[i] = 1;
            del[nd++] = i;
        }
    CHECK_OK(ctx, kiln_index_delete(ix, del, nd));
    char f1[4200], f2[4200]; /* kept: tpath's buffers are reused */
    snprintf(f1, sizeof f1, "%s", tpath("free1.bin"));
    snprintf(f2, sizeof f2, "%s", tpath("free2.bin"));
    kiln_hnswlib_export_params ep;
    kiln_hnswlib_export_params_init(&ep);
    CHECK(ep.max_elements == 0);
    unlink(f1);
    ep.max_elements = n - 1;
    CHECK_FAILS(ctx, kiln_index_export_hnswlib(ix, f1, &ep), KILN_E_ARG,
                "max_elements 1499 is below the index's 1500 elements");
    ep.max_elements = UINT32_MAX;
    CHECK_FAILS(ctx, kiln_index_export_hnswlib(ix, f1, &ep), KILN_E_RANGE, "max_elements");
    struct stat sb;
    CHECK(stat(f1, &sb) != 0);
    ep.max_elements = max_elements;
    CHECK_OK(ctx, kiln_index_export_hnswlib(ix, f1, &ep));
    size_t size = 0;
    uint8_t *b = read_file(f1, &size);
    REQUIRE(b);
    CHECK(kiln_get_u64le(b + HL_MAX_ELEMS) == max_elements && kiln_get_u64le(b + HL_COUNT) == n);
    CHECK(kiln_get_u32le(b + HL_ENTRY) == ix->entry_point);
    const uint64_t sde = kiln_get_u64le(b + HL_SIZE_DATA);
    size_t bad = 0;
    uint64_t at = HL_HDR + n * sde;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *rec = b + HL_HDR + i * sde;
        const uint32_t word = kiln_get_u32le(rec);
        const uint64_t label = kiln_get_u64le(rec + sde - 8);
        if (gone[i]) {
            bool zero = true;
            for (uint64_t j = 4; j < sde - 8; j++)
                zero &= rec[j] == 0;
            bad += word != 0x10000u || label != (1ULL << 63) + i || !zero ||
                   kiln_get_u32le(b + at) != 0;
        } else {
            bad += (word >> 16) != 0 || label != (uint64_t)i;
        }
        at += 4 + kiln_get_u32le(b + at);
    }
    CHECK_MSG(bad == 0, "%zu elements written wrong", bad);

    /* Back: the same index, free slots where they were, the capacity asked
     * for; exported again, the same bytes. */
    kiln_index *back = NULL;
    CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, f1, dim, KILN_METRIC_L2, &back));
    if (back) {
        check_same_index(ix, back, 0.0f);
        CHECK(back->free_count == nd && back->saved_capacity == max_elements);
        for (uint32_t i = 0; i < n; i++)
            CHECK(kiln_slot_free(back, i) == (gone[i] != 0));
        kiln_build_report rep;
        CHECK_OK(ctx, kiln_index_build_report(back, &rep));
        CHECK(rep.deleted_elements == nd && rep.repaired_links == 0);
        CHECK_OK(ctx, kiln_index_check(back));
        CHECK_OK(ctx, kiln_index_export_hnswlib(back, f2, &ep));
        size_t s2 = 0;
        uint8_t *b2 = read_file(f2, &s2);
        CHECK(b2 && s2 == size && memcmp(b, b2, size) == 0);
        free(b2);
        const char *kf = tpath("free_back.kiln");
        CHECK_OK(ctx, kiln_index_save(back, kf));
        kiln_index_info info;
        CHECK_OK(ctx, kiln_index_info_read(ctx, kf, &info));
        CHECK(info.capacity == max_elements && info.free_slots == nd && info.count == n);
    }
    kiln_index_free(back);
    free(b);

    /* Exact neighbours of the live rows, in labels (= rows). */
    int64_t *truth = live_truth(ctx, v, n, dim, gone, 0, q, SYN_NQ);
    int64_t *ours = kiln_search(ix, q, SYN_NQ);
    const double r_kiln = recall(ours, truth, SYN_NQ, K);

    double r_runner = -1;
    runner_loads(f1, q, SYN_NQ, dim, truth, n, max_elements, nd, &r_runner);
    if (r_runner >= 0) {
        fprintf(stderr, "free slots: recall@%d at ef %d: kiln %.4f, hnswlib C++ %.4f\n", K, EF,
                r_kiln, r_runner);
        CHECK_MSG(fabs(r_runner - r_kiln) <= 0.01, "hnswlib_runner %.4f vs kiln %.4f", r_runner,
                  r_kiln);
    }
    if (have_python) {
        const char *qf = tpath("free.queries.f32"), *xf = tpath("free.extra.f32");
        const char *out = tpath("free.theirs.ids");
        REQUIRE(write_file(qf, q, (size_t)SYN_NQ * dim * sizeof *q));
        REQUIRE(write_file(xf, extra, (size_t)room * dim * sizeof *extra));
        char args[8192];
        snprintf(args, sizeof args, "grow l2 %u '%s' '%s' %d %d '%s' '%s'", dim, f1, qf, EF, K, out,
                 xf);
        CHECK(run_python(args));
        char meta_path[4300];
        snprintf(meta_path, sizeof meta_path, "%s.meta", out);
        size_t msize = 0;
        char *meta = (char *)read_file(meta_path, &msize);
        char want[64];
        snprintf(want, sizeof want, "%u %u refused", max_elements, n);
        CHECK_MSG(meta && msize == strlen(want) && memcmp(meta, want, msize) == 0,
                  "hnswlib says '%.*s', want '%s'", meta ? (int)msize : 0, meta ? meta : "", want);
        free(meta);
        int64_t *theirs = read_labels(out, (size_t)SYN_NQ * K);
        CHECK(theirs != NULL);
        if (theirs) {
            const double r_py = recall(theirs, truth, SYN_NQ, K);
            const double same = same_topk(ours, theirs, SYN_NQ, K);
            fprintf(stderr,
                    "free slots: hnswlib (Python) recall %.4f, kiln %.4f; same top-%d on %.1f%%\n",
                    r_py, r_kiln, K, 100.0 * same);
            CHECK_MSG(fabs(r_py - r_kiln) <= 0.01 && same >= 0.99, "hnswlib %.4f/%.3f, kiln %.4f",
                      r_py, same, r_kiln);
            size_t foreign = 0;
            for (size_t i = 0; i < (size_t)SYN_NQ * K; i++)
                foreign += theirs[i] < 0 || theirs[i] >= n || gone[theirs[i]];
            CHECK_MSG(foreign == 0, "hnswlib returned %zu deleted or unknown labels", foreign);
        }
        free(theirs);
        char self_path[4300];
        snprintf(self_path, sizeof self_path, "%s.self", out);
        int64_t *self = read_labels(self_path, room);
        CHECK(self != NULL);
        size_t found = 0;
        for (size_t i = 0; self && i < room; i++)
            found += self[i] == 5000000 + (int64_t)i;
        CHECK_MSG(found >= room * 99 / 100, "hnswlib finds %zu of the %u rows it added", found,
                  room);
        free(self);
    }
    free(ours);
    free(truth);
    free(gone);
    kiln_index_free(ix);
    free(v);
}

/* dim 0: taken from the record layout; a dim given must match it. */
static void test_import_dim(kiln_ctx *ctx) {
    const uint32_t dim = 12, n = 200;
    float *v = synth(ctx, n, dim, 19);
    kiln_index *ix = build(ctx, v, n, dim, KILN_METRIC_L2, 4, 40);
    const char *path = tpath("dim.bin");
    CHECK_OK(ctx, kiln_index_export_hnswlib(ix, path, NULL));
    kiln_index *got = NULL;
    CHECK_OK(ctx, kiln_index_import_hnswlib(ctx, path, 0, KILN_METRIC_L2, &got));
    if (got) {
        CHECK(kiln_index_dim(got) == dim);
        check_same_index(ix, got, 0.0f);
    }
    kiln_index_free(got);
    got = (kiln_index *)1;
    CHECK_FAILS(ctx, kiln_index_import_hnswlib(ctx, path, dim + 1, KILN_METRIC_L2, &got),
                KILN_E_FORMAT, "dim 13 as float32 needs 52");
    CHECK(got == NULL);
    /* A span that is no whole number of floats cannot give a dim. */
    size_t size = 0;
    uint8_t *b = read_file(path, &size);
    REQUIRE(b);
    kiln_put_u64le(b + HL_LABEL_OFF, kiln_get_u64le(b + HL_LABEL_OFF) - 2);
    kiln_put_u64le(b + HL_SIZE_DATA, kiln_get_u64le(b + HL_SIZE_DATA) - 2);
    REQUIRE(write_file(path, b, size));
    CHECK_FAILS(ctx, kiln_index_import_hnswlib(ctx, path, 0, KILN_METRIC_L2, &got), KILN_E_FORMAT,
                "cannot infer dim");
    free(b);
    kiln_index_free(ix);
    free(v);
}

/* ==== 5. CLI ==== */

static int run_cli(const char *cli, const char *args, const char *capture) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s '%s' %s >'%s' 2>&1", check_emulator(), cli, args, capture);
    return system(cmd);
}

/* Runs the CLI with args; true when it succeeded and its output holds both
 * needles. */
static bool cli_says(const char *cli, const char *args, const char *log, const char *a,
                     const char *b) {
    size_t size = 0;
    const int rc = run_cli(cli, args, log);
    char *text = (char *)read_file(log, &size);
    const bool ok = rc == 0 && text && strstr(text, a) != NULL && strstr(text, b) != NULL;
    if (!ok)
        fprintf(stderr, "kiln %s: status %d, output: %s\n", args, rc, text ? text : "(none)");
    free(text);
    return ok;
}

static void test_cli(kiln_ctx *ctx) {
    const char *cli = getenv("KILN_CLI");
    if (!cli || !*cli || access(cli, X_OK) != 0) {
        fprintf(stderr, "SKIP part: KILN_CLI not set, CLI not tested\n");
        return;
    }
    const size_t n = 500, dim = 8;
    float *v = synth(ctx, n, dim, 31);
    kiln_index *ix = build(ctx, v, n, dim, KILN_METRIC_IP, 8, 50);
    const char *kfile = tpath("cli.kiln"), *hfile = tpath("cli.hnswlib.bin");
    const char *back = tpath("cli_back.kiln"), *log = tpath("cli.log");
    CHECK_OK(ctx, kiln_index_save(ix, kfile));
    char args[12288];
    snprintf(args, sizeof args, "export '%s' --format hnswlib -o '%s'", kfile, hfile);
    CHECK(run_cli(cli, args, log) == 0);
    snprintf(args, sizeof args, "import '%s' --format hnswlib --dim %zu --metric ip -o '%s'", hfile,
             dim, back);
    CHECK(run_cli(cli, args, log) == 0);
    size_t size = 0;
    char *text = (char *)read_file(log, &size);
    CHECK(text && strstr(text, "links added") != NULL);
    free(text);
    kiln_index *b = NULL;
    CHECK_OK(ctx, kiln_index_load(ctx, back, &b));
    if (b)
        check_same_index(ix, b, 0.0f);
    kiln_index_free(b);

    /* Without --dim the file's is used. */
    snprintf(args, sizeof args, "import '%s' --format hnswlib --metric ip -o '%s'", hfile, back);
    CHECK(run_cli(cli, args, log) == 0);
    text = (char *)read_file(log, &size);
    CHECK(text && strstr(text, "dim 8") != NULL);
    free(text);

    /* Deleted elements: imported deleted, with their count on stderr. */
    {
        uint8_t *hb = read_file(hfile, &size);
        REQUIRE(hb);
        const uint64_t sde = kiln_get_u64le(hb + HL_SIZE_DATA);
        for (uint32_t e = 10; e < 13; e++)
            hb[HL_HDR + e * sde + 2] |= 1;
        const char *dfile = tpath("cli_deleted.bin");
        REQUIRE(write_file(dfile, hb, size));
        free(hb);
        snprintf(args, sizeof args, "import '%s' --format hnswlib --metric ip -o '%s'", dfile,
                 back);
        CHECK(cli_says(cli, args, log, "3 elements marked deleted were removed", "497 vectors"));
        kiln_index *d = NULL;
        CHECK_OK(ctx, kiln_index_load(ctx, back, &d));
        if (d) {
            kiln_index_info info;
            CHECK_OK(ctx, kiln_index_info_read(ctx, back, &info));
            CHECK(kiln_index_count(d) == n - 3 && info.count == n && info.free_slots == 3);
        }
        kiln_index_free(d);

        /* Exported again, with room: the free slots marked deleted. */
        snprintf(args, sizeof args, "export '%s' --format hnswlib --max-elements 800 -o '%s'", back,
                 dfile);
        CHECK(cli_says(cli, args, log, "497 vectors and 3 deleted elements", "max_elements 800"));
        hb = read_file(dfile, &size);
        REQUIRE(hb);
        CHECK(kiln_get_u64le(hb + HL_MAX_ELEMS) == 800 && kiln_get_u64le(hb + HL_COUNT) == n);
        for (uint32_t e = 9; e < 14; e++)
            CHECK(((hb[HL_HDR + e * sde + 2] & 1) != 0) == (e >= 10 && e < 13));
        free(hb);
        /* Below the count: one line naming both, nothing written. */
        const char *none = tpath("cli_none.bin");
        unlink(none);
        snprintf(args, sizeof args, "export '%s' --format hnswlib --max-elements 499 -o '%s'", back,
                 none);
        const int rc = run_cli(cli, args, log);
        CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 2);
        text = (char *)read_file(log, &size);
        CHECK(text && strstr(text, "kiln export: --max-elements 499 is below the 500 elements") &&
              strstr(text, "cli_back.kiln") && strchr(text, '\n') == text + size - 1);
        free(text);
        CHECK(access(none, F_OK) != 0);
    }

    /* Usage errors: wrong format, wrong dim. */
    snprintf(args, sizeof args, "export '%s' --format faiss -o '%s'", kfile, hfile);
    CHECK(run_cli(cli, args, log) != 0);
    snprintf(args, sizeof args, "import '%s' --format hnswlib --dim 9 -o '%s'", hfile, back);
    CHECK(run_cli(cli, args, log) != 0);
    text = (char *)read_file(log, &size);
    CHECK(text && strstr(text, "kiln import:") && strstr(text, "dim 9"));
    free(text);

    static const char *const helps[] = {"export", "import"};
    static const char *const want[][4] = {{"--format", "hnswlib", "--max-elements", "default"},
                                          {"--dim", "--metric", "--format", "from the file"}};
    for (int i = 0; i < 2; i++) {
        snprintf(args, sizeof args, "%s --help", helps[i]);
        CHECK(run_cli(cli, args, log) == 0);
        text = (char *)read_file(log, &size);
        REQUIRE(text);
        text[size] = 0;
        for (int j = 0; j < 4; j++)
            CHECK_MSG(strstr(text, want[i][j]) != NULL, "kiln %s --help lacks '%s'", helps[i],
                      want[i][j]);
        free(text);
    }
    kiln_index_free(ix);
    free(v);
}

int main(void) {
    make_test_dir();
    kiln_ctx *ctx = NULL;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);

    test_round_trip(ctx, KILN_METRIC_L2, 1500);
    test_round_trip(ctx, KILN_METRIC_IP, 700);
    test_round_trip(ctx, KILN_METRIC_COS, 700);
    test_round_trip(ctx, KILN_METRIC_L2, 1);
    test_round_trip(ctx, KILN_METRIC_L2, 0);
    test_import_repairs(ctx);
    test_damaged(ctx);
    test_import_no_links(ctx);
    test_import_sparse(ctx);
    test_import_deleted(ctx);
    test_import_dim(ctx);
    test_cli(ctx);

    const bool have_python =
        system("/usr/bin/python3 -c 'import hnswlib, numpy' >/dev/null 2>&1") == 0;
    if (!have_python) {
        fprintf(stderr, "SKIP part: /usr/bin/python3 cannot import hnswlib and numpy; the "
                        "hnswlib interop checks did not run\n");
    } else {
        test_sift_to_hnswlib(ctx);
        test_synth_to_hnswlib(ctx, KILN_METRIC_IP, "ip");
        test_synth_to_hnswlib(ctx, KILN_METRIC_COS, "cosine");
        test_hnswlib_to_kiln(ctx, KILN_METRIC_L2, "l2");
        test_hnswlib_to_kiln(ctx, KILN_METRIC_COS, "cosine");
        test_hnswlib_deleted(ctx, 10, false);
        test_hnswlib_deleted(ctx, 30, true);
    }
    test_export_deleted(ctx, have_python);
    kiln_ctx_free(ctx);
    return check_report("test_hnswlib_file");
}
