/* test_live.c -- live indexes (graph/hnsw_live.c): kiln_index_delete, _add
 * and _update on siftsmall and fmnistsmall. Every recall is measured
 * against exact ground truth over the set the index holds at that moment
 * (kiln_knn_exact), and compared with a fresh build of that same set: the
 * issue's bar is a live index within 0.01 of it. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "../common/crc32c_internal.h"
#include "../common/le_internal.h"
#include "../graph/hnsw_internal.h"
#include "check.h"
#include "data_util.h"
#include "file_util.h"
#include "kiln.h"
#include "recall.h"

#define K 10

/* ==== Helpers ==== */

typedef test_data data;

/* splitmix64: the tests' own seeded stream. */
static uint64_t next_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A seeded permutation of 0 .. n-1. */
static uint32_t *permutation(size_t n, uint64_t seed) {
    uint32_t *p = malloc((n ? n : 1) * sizeof *p);
    REQUIRE(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        const size_t j = next_rand(&seed) % i;
        const uint32_t t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
    return p;
}

static kiln_index *build_with(kiln_ctx *ctx, const float *rows, size_t n, size_t d,
                              kiln_method method) {
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = method;
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, rows, n, d, &p, &ix));
    REQUIRE(ix);
    return ix;
}

static kiln_index *build(kiln_ctx *ctx, const float *rows, size_t n, size_t d) {
    return build_with(ctx, rows, n, d, KILN_METHOD_INSERT);
}

/* The m rows of base whose marks are 0, with their labels (row numbers). */
static float *rows_kept(const data *ds, const uint8_t *gone, int64_t *labels, size_t *m) {
    float *v = malloc(ds->n * ds->d * sizeof *v);
    REQUIRE(v);
    size_t k = 0;
    for (size_t i = 0; i < ds->n; i++)
        if (!gone[i]) {
            memcpy(v + k * ds->d, ds->base + i * ds->d, ds->d * sizeof *v);
            labels[k++] = (int64_t)i;
        }
    *m = k;
    return v;
}

/* Exact top K of each query over rows (their labels in lab), as labels. */
static int64_t *exact_truth(kiln_ctx *ctx, const data *ds, const float *rows, const int64_t *lab,
                            size_t m) {
    int64_t *gt = malloc(ds->nq * K * sizeof *gt);
    REQUIRE(gt);
    CHECK_OK(ctx,
             kiln_knn_exact(ctx, rows, m, ds->q, ds->nq, ds->d, KILN_METRIC_L2, K, 0, gt, NULL));
    for (size_t i = 0; i < ds->nq * K; i++)
        gt[i] = gt[i] >= 0 ? lab[gt[i]] : -1;
    return gt;
}

/* recall@K of ix at ef against gt; labels of ix go through map when not NULL
 * (a fresh build labels its rows 0 .. m-1). */
static double recall(kiln_ctx *ctx, const kiln_index *ix, const data *ds, const int64_t *gt,
                     const int64_t *map, uint32_t ef) {
    int64_t *got = malloc(ds->nq * K * sizeof *got);
    REQUIRE(got);
    kiln_search_params sp = {.k = K, .ef = ef, .threads = 1};
    CHECK_OK(ctx, kiln_index_search(ix, ds->q, ds->nq, &sp, got, NULL));
    for (size_t i = 0; map && i < ds->nq * K; i++)
        got[i] = got[i] >= 0 ? map[got[i]] : -1;
    const double r = recall_at(got, gt, ds->nq, K, K);
    free(got);
    return r;
}

/* Searches rows (nr of them) at ef 16 and 64 and counts results whose label
 * is marked gone, or is not a label of the set at all. */
static size_t bad_results(kiln_ctx *ctx, const kiln_index *ix, const float *rows, size_t nr,
                          const uint8_t *gone, size_t n) {
    int64_t *got = malloc((nr ? nr : 1) * K * sizeof *got);
    REQUIRE(got);
    size_t bad = 0;
    for (uint32_t ef = 16; ef <= 64; ef *= 4) {
        kiln_search_params sp = {.k = K, .ef = ef, .threads = 2};
        CHECK_OK(ctx, kiln_index_search(ix, rows, nr, &sp, got, NULL));
        for (size_t i = 0; i < nr * K; i++)
            bad += got[i] != -1 && (got[i] < 0 || (size_t)got[i] >= n || gone[got[i]]);
    }
    free(got);
    return bad;
}

/* ==== Files ==== */

static char test_dir[4096];

static const char *tmp_path(const char *name) {
    static char buf[4][4200];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", test_dir, name);
    return p;
}

static uint8_t *saved(kiln_ctx *ctx, const kiln_index *ix, const char *name, size_t *len) {
    CHECK_OK(ctx, kiln_index_save(ix, tmp_path(name)));
    uint8_t *b = read_file(tmp_path(name), len);
    REQUIRE(b);
    return b;
}

/* Save, open (mapped, read, verified), save again: the same bytes, a valid
 * index, the same search results. */
static void round_trip(kiln_ctx *ctx, const kiln_index *ix, const data *ds, const char *what) {
    size_t n1 = 0, n2 = 0;
    uint8_t *first = saved(ctx, ix, "trip1.kiln", &n1);
    kiln_index_info info;
    CHECK_OK(ctx, kiln_index_info_read(ctx, tmp_path("trip1.kiln"), &info));
    kiln_index_stats st;
    CHECK_OK(ctx, kiln_index_stats_get(ix, &st));
    CHECK(info.format_version == 2 && info.free_slots == st.free_slots &&
          info.count - info.free_slots == kiln_index_count(ix) && info.capacity >= info.count);
    static const uint32_t modes[] = {0, KILN_LOAD_READ, KILN_LOAD_VERIFY};
    int64_t *a = malloc(ds->nq * K * sizeof *a), *b = malloc(ds->nq * K * sizeof *b);
    REQUIRE(a && b);
    kiln_search_params sp = {.k = K, .ef = 32, .threads = 1};
    CHECK_OK(ctx, kiln_index_search(ix, ds->q, ds->nq, &sp, a, NULL));
    for (size_t m = 0; m < 3; m++) {
        kiln_index *back = NULL;
        CHECK_OK(ctx, kiln_index_open(ctx, tmp_path("trip1.kiln"), modes[m], &back));
        REQUIRE(back);
        CHECK_OK(ctx, kiln_index_check(back));
        CHECK(kiln_index_count(back) == kiln_index_count(ix));
        CHECK_OK(ctx, kiln_index_search(back, ds->q, ds->nq, &sp, b, NULL));
        CHECK_MSG(memcmp(a, b, ds->nq * K * sizeof *a) == 0, "%s: search differs after load", what);
        uint8_t *second = saved(ctx, back, "trip2.kiln", &n2);
        CHECK_MSG(n1 == n2 && memcmp(first, second, n1) == 0,
                  "%s: save, load (flags 0x%x), save differs", what, modes[m]);
        free(second);
        kiln_index_free(back);
    }
    free(a);
    free(b);
    free(first);
}

/* The same adds on ix and on a copy of it saved and loaded give the same
 * bytes: the file keeps the free list's order and the capacity. */
static void same_after_load(kiln_ctx *ctx, kiln_index *ix, const data *ds, size_t n) {
    CHECK_OK(ctx, kiln_index_save(ix, tmp_path("before.kiln")));
    kiln_index *copy = NULL;
    CHECK_OK(ctx, kiln_index_load(ctx, tmp_path("before.kiln"), &copy));
    REQUIRE(copy);
    CHECK_OK(ctx, kiln_index_add(ix, ds->base, NULL, n));
    CHECK_OK(ctx, kiln_index_add(copy, ds->base, NULL, n));
    size_t n1 = 0, n2 = 0;
    uint8_t *a = saved(ctx, ix, "after1.kiln", &n1), *b = saved(ctx, copy, "after2.kiln", &n2);
    CHECK_MSG(n1 == n2 && memcmp(a, b, n1) == 0, "adds after a save and load give other bytes");
    CHECK_OK(ctx, kiln_index_check(copy));
    free(a);
    free(b);
    kiln_index_free(copy);
}

/* A saved index with free slots, its FREE section forged (CRCs
 * recomputed): every id the reader takes from it is checked. */
static void forged_free(kiln_ctx *ctx, const kiln_index *ix) {
    size_t len = 0;
    uint8_t *good = saved(ctx, ix, "free.kiln", &len);
    const uint32_t sections = kiln_get_u32le(good + 52);
    uint8_t *e = NULL;
    for (uint32_t i = 0; i < sections; i++)
        if (kiln_get_u32le(good + 128 + 32 * i) == 6)
            e = good + 128 + 32 * i;
    REQUIRE(e && kiln_get_u64le(e + 16) >= 8);
    const uint64_t off = kiln_get_u64le(e + 8);
    uint32_t live = 0; /* a live node that is not the entry point */
    while (kiln_slot_free(ix, live) || live == ix->entry_point)
        live++;
    const struct {
        uint32_t id;
        kiln_status st;
        const char *what;
    } cases[] = {{(uint32_t)ix->count, KILN_E_RANGE, "FREE entry 0 is slot"},
                 {live, KILN_E_FORMAT, "FREE entry 0"},
                 {ix->entry_point, KILN_E_FORMAT, "FREE entry 0"},
                 {kiln_get_u32le(good + off + 4), KILN_E_FORMAT, "FREE entry 1"}};
    uint8_t *f = malloc(len);
    REQUIRE(f);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        memcpy(f, good, len);
        kiln_put_u32le(f + off, cases[c].id);
        uint8_t *fe = f + (e - good);
        kiln_put_u32le(fe + 24, kiln_crc32c(0, f + off, (size_t)kiln_get_u64le(e + 16)));
        kiln_put_u32le(f + 72, kiln_crc32c(0, f + 128, (size_t)sections * 32));
        kiln_put_u32le(f + 124, kiln_crc32c(0, f, 124));
        REQUIRE(write_file(tmp_path("forged.kiln"), f, len));
        for (uint32_t flags = 0; flags <= KILN_LOAD_READ; flags += KILN_LOAD_READ) {
            kiln_index *back = NULL;
            CHECK_FAILS(ctx, kiln_index_open(ctx, tmp_path("forged.kiln"), flags, &back),
                        cases[c].st, cases[c].what);
            CHECK(back == NULL);
        }
    }
    /* A flipped bit in FREE is found at every open, mapped too. */
    memcpy(f, good, len);
    f[off] ^= 1;
    REQUIRE(write_file(tmp_path("forged.kiln"), f, len));
    kiln_index *back = NULL;
    CHECK_FAILS(ctx, kiln_index_open(ctx, tmp_path("forged.kiln"), 0, &back), KILN_E_CHECKSUM,
                "checksum mismatch in section FREE");
    free(f);
    free(good);
}

/* ==== Delete ==== */

/* Deletes a seeded random fraction of ds from a loaded copy of its index
 * (file), and compares it with a fresh build of what is left. */
static void test_delete(kiln_ctx *ctx, const data *ds, const char *file, double frac,
                        uint64_t seed) {
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_load(ctx, file, &ix)); /* mapped: the first write copies it */
    REQUIRE(ix);
    const size_t nd = (size_t)(frac * (double)ds->n);
    uint32_t *perm = permutation(ds->n, seed);
    int64_t *del = malloc(nd * sizeof *del);
    uint8_t *gone = calloc(ds->n, 1);
    int64_t *lab = malloc(ds->n * sizeof *lab);
    REQUIRE(del && gone && lab);
    for (size_t i = 0; i < nd; i++) {
        del[i] = perm[i];
        gone[perm[i]] = 1;
    }
    CHECK_OK(ctx, kiln_index_delete(ix, del, nd));
    CHECK(kiln_index_count(ix) == ds->n - nd);
    CHECK_OK(ctx, kiln_index_check(ix));
    kiln_index_stats st;
    CHECK_OK(ctx, kiln_index_stats_get(ix, &st));
    CHECK(st.free_slots == nd && st.count == ds->n - nd);

    size_t m = 0;
    float *kept = rows_kept(ds, gone, lab, &m);
    int64_t *gt = exact_truth(ctx, ds, kept, lab, m);
    kiln_index *fresh = build(ctx, kept, m, ds->d);
    for (uint32_t ef = 16; ef <= 64; ef *= 4) {
        const double live = recall(ctx, ix, ds, gt, NULL, ef);
        const double base = recall(ctx, fresh, ds, gt, lab, ef);
        fprintf(stderr, "%s: deleted %.0f%%: recall@10 at ef %u %.4f, fresh build %.4f\n", ds->name,
                frac * 100, ef, live, base);
        CHECK_MSG(live >= base - 0.01, "%s delete %.0f%% ef %u: recall %.4f vs fresh %.4f",
                  ds->name, frac * 100, ef, live, base);
    }
    /* No deleted label from the queries, nor from the deleted vectors
     * themselves (each one's nearest neighbour before the delete). */
    CHECK(bad_results(ctx, ix, ds->q, ds->nq, gone, ds->n) == 0);
    float *dv = malloc((nd ? nd : 1) * ds->d * sizeof *dv);
    REQUIRE(dv);
    for (size_t i = 0; i < nd; i++)
        memcpy(dv + i * ds->d, ds->base + (size_t)del[i] * ds->d, ds->d * sizeof *dv);
    CHECK(bad_results(ctx, ix, dv, nd, gone, ds->n) == 0);

    /* A deleted label is gone: deleting it again names it. */
    if (nd) {
        char msg[64];
        snprintf(msg, sizeof msg, "label %lld (entry 0) is not in the index", (long long)del[0]);
        CHECK_FAILS(ctx, kiln_index_delete(ix, del, 1), KILN_E_ARG, msg);
    }
    round_trip(ctx, ix, ds, "delete");
    if (nd >= 2)
        forged_free(ctx, ix);
    /* Adds fill the free slots (the last freed first) before the index
     * grows, the same after a save and load; then it grows (capacity
     * doubles), and then fills what it grew by, the same again. */
    same_after_load(ctx, ix, ds, nd / 2);
    CHECK(kiln_index_count(ix) == ds->n - nd + nd / 2);
    CHECK_OK(ctx, kiln_index_stats_get(ix, &st));
    CHECK(st.free_slots == nd - nd / 2);
    round_trip(ctx, ix, ds, "delete and add");
    same_after_load(ctx, ix, ds, nd - nd / 2 + 10);
    kiln_index_info info;
    CHECK_OK(ctx, kiln_index_save(ix, tmp_path("grown.kiln")));
    CHECK_OK(ctx, kiln_index_info_read(ctx, tmp_path("grown.kiln"), &info));
    CHECK(info.count == ds->n + 10 && info.free_slots == 0 && info.capacity == 2 * ds->n);
    same_after_load(ctx, ix, ds, 10);
    CHECK_OK(ctx, kiln_index_info_read(ctx, tmp_path("after1.kiln"), &info));
    CHECK(info.count == ds->n + 20 && info.capacity == 2 * ds->n);
    CHECK_OK(ctx, kiln_index_check(ix));
    kiln_index_free(fresh);
    kiln_index_free(ix);
    free(dv);
    free(gt);
    free(kept);
    free(lab);
    free(gone);
    free(del);
    free(perm);
}

/* A device-built index (its level 0 from the device pipeline's merge, not
 * from insertion) deletes as well: against a fresh device build of the rest. */
static void test_device_delete(kiln_ctx *ctx, const data *ds) {
    if (!KILN_TEST_OPENCL) { /* a build without OpenCL: nothing to test here */
        fprintf(stderr, "%s: no device build in a kiln without OpenCL\n", ds->name);
        return;
    }
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = KILN_METHOD_DEVICE;
    kiln_index *ix = NULL;
    const kiln_status bst = kiln_index_build(ctx, ds->base, ds->n, ds->d, &p, &ix);
    if (bst == KILN_E_NO_DEVICE) {
        SKIP_PART("%s device build: %s", ds->name, kiln_errmsg(ctx));
        return;
    }
    CHECK_OK(ctx, bst);
    REQUIRE(ix);
    const size_t nd = ds->n * 3 / 10;
    uint32_t *perm = permutation(ds->n, 4242);
    int64_t *del = malloc(nd * sizeof *del), *lab = malloc(ds->n * sizeof *lab);
    uint8_t *gone = calloc(ds->n, 1);
    REQUIRE(del && lab && gone);
    for (size_t i = 0; i < nd; i++) {
        del[i] = perm[i];
        gone[perm[i]] = 1;
    }
    CHECK_OK(ctx, kiln_index_delete(ix, del, nd));
    CHECK_OK(ctx, kiln_index_check(ix));
    size_t m = 0;
    float *kept = rows_kept(ds, gone, lab, &m);
    int64_t *gt = exact_truth(ctx, ds, kept, lab, m);
    kiln_index *fresh = build_with(ctx, kept, m, ds->d, KILN_METHOD_DEVICE);
    for (uint32_t ef = 16; ef <= 64; ef *= 4) {
        const double live = recall(ctx, ix, ds, gt, NULL, ef);
        const double base = recall(ctx, fresh, ds, gt, lab, ef);
        fprintf(stderr, "%s device build: deleted 30%%: recall@10 at ef %u %.4f, fresh %.4f\n",
                ds->name, ef, live, base);
        CHECK_MSG(live >= base - 0.01, "%s device delete ef %u: recall %.4f vs fresh %.4f",
                  ds->name, ef, live, base);
    }
    CHECK(bad_results(ctx, ix, ds->q, ds->nq, gone, ds->n) == 0);
    kiln_index_free(fresh);
    kiln_index_free(ix);
    free(gt);
    free(kept);
    free(gone);
    free(lab);
    free(del);
    free(perm);
}

/* ==== The device add (graph/hnsw_live.c decision 9) ==== */

/* Adds rows [from, n) of ds, labelled by row, to ix by method m. */
static kiln_status add_rows(kiln_index *ix, const data *ds, size_t from, kiln_add_method m) {
    int64_t *lab = malloc((ds->n - from) * sizeof *lab);
    REQUIRE(lab);
    for (size_t i = from; i < ds->n; i++)
        lab[i - from] = (int64_t)i;
    kiln_add_params ap;
    kiln_add_params_init(&ap);
    ap.method = m;
    const kiln_status st = kiln_index_add_ex(ix, ds->base + from * ds->d, lab, ds->n - from, &ap);
    free(lab);
    return st;
}

/* An insert-built half of the set with 10% of it deleted, then the other
 * half added on the device: valid, no free slot left, no deleted label
 * found, recall within 0.01 of a fresh build of the same rows; the same
 * bytes on 1 thread and 2, mapped or read; int8 storage within 0.01 of f32. */
static void test_device_add(kiln_ctx *ctx, const data *ds) {
    const size_t half = ds->n / 2, nd = half / 10;
    kiln_index *ix = build(ctx, ds->base, half, ds->d);
    if (!KILN_TEST_OPENCL) { /* libkiln without a device side refuses, names it */
        CHECK(add_rows(ix, ds, half, KILN_ADD_DEVICE) == KILN_E_NO_DEVICE);
        CHECK(kiln_index_count(ix) == half);
        kiln_index_free(ix);
        return;
    }
    uint32_t *perm = permutation(half, 777);
    int64_t *del = malloc(nd * sizeof *del), *lab = malloc(ds->n * sizeof *lab);
    uint8_t *gone = calloc(ds->n, 1);
    REQUIRE(del && lab && gone);
    for (size_t i = 0; i < nd; i++) {
        del[i] = perm[i];
        gone[perm[i]] = 1;
    }
    CHECK_OK(ctx, kiln_index_delete(ix, del, nd));
    CHECK_OK(ctx, kiln_index_save(ix, tmp_path("dadd-base.kiln")));
    const kiln_status st = add_rows(ix, ds, half, KILN_ADD_DEVICE);
    if (st == KILN_E_NO_DEVICE) {
        SKIP_PART("%s device add: %s", ds->name, kiln_errmsg(ctx));
        goto done;
    }
    CHECK_OK(ctx, st);
    CHECK_OK(ctx, kiln_index_check(ix));
    kiln_index_stats stats;
    CHECK_OK(ctx, kiln_index_stats_get(ix, &stats));
    CHECK(kiln_index_count(ix) == ds->n - nd && stats.free_slots == 0);
    size_t m = 0;
    float *kept = rows_kept(ds, gone, lab, &m);
    int64_t *gt = exact_truth(ctx, ds, kept, lab, m);
    kiln_index *fresh = build(ctx, kept, m, ds->d);
    for (uint32_t ef = 16; ef <= 64; ef *= 4) {
        const double got = recall(ctx, ix, ds, gt, NULL, ef);
        const double base = recall(ctx, fresh, ds, gt, lab, ef);
        fprintf(stderr, "%s device add of half: recall@10 at ef %u %.4f, fresh %.4f\n", ds->name,
                ef, got, base);
        CHECK_MSG(got >= base - 0.01, "%s device add ef %u: recall %.4f vs fresh %.4f", ds->name,
                  ef, got, base);
    }
    CHECK(bad_results(ctx, ix, ds->q, ds->nq, gone, ds->n) == 0);
    round_trip(ctx, ix, ds, "device add");

    /* The same add on one thread, on a mapped copy and on a read one. */
    size_t n1 = 0, n2 = 0;
    uint8_t *a = saved(ctx, ix, "dadd-2t.kiln", &n1);
    static const uint32_t modes[] = {0, KILN_LOAD_READ};
    for (int k = 0; k < 2; k++) {
        kiln_index *other = NULL;
        CHECK_OK(ctx, kiln_index_open(ctx, tmp_path("dadd-base.kiln"), modes[k], &other));
        REQUIRE(other);
        CHECK_OK(ctx, kiln_index_set_threads(other, 1));
        CHECK_OK(ctx, add_rows(other, ds, half, KILN_ADD_DEVICE));
        uint8_t *b = saved(ctx, other, "dadd-1t.kiln", &n2);
        CHECK_MSG(n1 == n2 && memcmp(a, b, n1) == 0,
                  "%s device add: 1 thread (flags 0x%x) and 2 give other bytes", ds->name,
                  modes[k]);
        free(b);
        kiln_index_free(other);
    }
    free(a);

    /* A label in use: refused, the index unchanged. */
    kiln_add_params ap;
    kiln_add_params_init(&ap);
    ap.method = KILN_ADD_DEVICE;
    const int64_t taken = (int64_t)half;
    CHECK(kiln_index_add_ex(ix, ds->base, &taken, 1, &ap) == KILN_E_ARG);
    CHECK(kiln_index_count(ix) == ds->n - nd);

    /* int8 rows: the add reads and writes them, recall stays near f32's. */
    kiln_build_params bp;
    kiln_build_params_init(&bp);
    bp.method = KILN_METHOD_INSERT;
    bp.storage = KILN_STORAGE_INT8;
    kiln_index *i8 = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, ds->base, half, ds->d, &bp, &i8));
    REQUIRE(i8);
    CHECK_OK(ctx, kiln_index_delete(i8, del, nd));
    CHECK_OK(ctx, add_rows(i8, ds, half, KILN_ADD_DEVICE));
    CHECK_OK(ctx, kiln_index_check(i8));
    CHECK_OK(ctx, kiln_index_stats_get(i8, &stats));
    CHECK(stats.storage == KILN_STORAGE_INT8 && kiln_index_count(i8) == ds->n - nd);
    const double r8 = recall(ctx, i8, ds, gt, NULL, 64), r32 = recall(ctx, ix, ds, gt, NULL, 64);
    fprintf(stderr, "%s device add, int8: recall@10 at ef 64 %.4f, f32 %.4f\n", ds->name, r8, r32);
    CHECK_MSG(r8 >= r32 - 0.01, "%s int8 device add: recall %.4f vs f32 %.4f", ds->name, r8, r32);
    kiln_index_free(i8);
    kiln_index_free(fresh);
    free(gt);
    free(kept);
done:
    kiln_index_free(ix);
    free(gone);
    free(lab);
    free(del);
    free(perm);
}

/* ==== Delete everything, add it back ==== */

static void test_empty_and_back(kiln_ctx *ctx, const data *ds, const char *file) {
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_load(ctx, file, &ix));
    REQUIRE(ix);
    uint32_t *perm = permutation(ds->n, 7);
    int64_t *all = malloc(ds->n * sizeof *all);
    uint8_t *none = calloc(ds->n, 1);
    REQUIRE(all && none);
    for (size_t i = 0; i < ds->n; i++)
        all[i] = perm[i];
    CHECK_OK(ctx, kiln_index_delete(ix, all, ds->n));
    CHECK(kiln_index_count(ix) == 0);
    CHECK_OK(ctx, kiln_index_check(ix));
    int64_t got[K];
    kiln_search_params sp = {.k = K, .ef = 16, .threads = 1};
    CHECK_OK(ctx, kiln_index_search(ix, ds->q, 1, &sp, got, NULL));
    for (int j = 0; j < K; j++)
        CHECK(got[j] == -1);

    /* Back in row order, labels by default: max + 1 of an empty index is 0. */
    CHECK_OK(ctx, kiln_index_add(ix, ds->base, NULL, ds->n));
    /* The deleted nodes' upper blocks were all of the pool, so the add moved
     * the live ones together instead of growing it (decision 6). */
    uint64_t blocks = 0;
    for (uint64_t i = 0; i < ix->count; i++)
        blocks += ix->levels[i];
    CHECK_MSG(ix->upper_len == blocks * (ix->M + 1), "upper pool of %llu for %llu blocks",
              (unsigned long long)ix->upper_len, (unsigned long long)blocks);
    CHECK(kiln_index_count(ix) == ds->n);
    CHECK_OK(ctx, kiln_index_check(ix));
    kiln_index_stats st;
    CHECK_OK(ctx, kiln_index_stats_get(ix, &st));
    CHECK(st.free_slots == 0 && st.label_min == 0 && st.label_max == (int64_t)ds->n - 1);
    for (size_t i = 0; i < ds->n; i++)
        all[i] = (int64_t)i;
    int64_t *gt = exact_truth(ctx, ds, ds->base, all, ds->n);
    kiln_index *fresh = build(ctx, ds->base, ds->n, ds->d);
    for (uint32_t ef = 16; ef <= 64; ef *= 4) {
        const double live = recall(ctx, ix, ds, gt, NULL, ef);
        const double base = recall(ctx, fresh, ds, gt, NULL, ef);
        fprintf(stderr, "%s: all deleted and added back: recall@10 at ef %u %.4f, fresh %.4f\n",
                ds->name, ef, live, base);
        CHECK_MSG(live >= base - 0.01, "%s re-added ef %u: recall %.4f vs fresh %.4f", ds->name, ef,
                  live, base);
    }
    /* Default labels continue after the largest; a label in use is refused. */
    CHECK_OK(ctx, kiln_index_add(ix, ds->base, NULL, 1));
    CHECK_OK(ctx, kiln_index_stats_get(ix, &st));
    CHECK(st.label_max == (int64_t)ds->n);
    CHECK_FAILS(ctx, kiln_index_add(ix, ds->base, all + 5, 1), KILN_E_ARG,
                "label 5 (entry 0) is already in the index");
    const int64_t twice[2] = {-5, -5};
    CHECK_FAILS(ctx, kiln_index_add(ix, ds->base, twice, 2), KILN_E_ARG, "given twice");
    CHECK(kiln_index_count(ix) == ds->n + 1);
    round_trip(ctx, ix, ds, "add");
    kiln_index_free(fresh);
    kiln_index_free(ix);
    free(gt);
    free(none);
    free(all);
    free(perm);
}

/* ==== Update ==== */

/* 20% of the labels get other rows' vectors; each new vector then finds its
 * label at distance 0. */
static void test_update(kiln_ctx *ctx, const data *ds, const char *file) {
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_load(ctx, file, &ix));
    REQUIRE(ix);
    const size_t nu = ds->n / 5;
    uint32_t *perm = permutation(ds->n, 99);
    int64_t *lab = malloc(nu * sizeof *lab);
    float *nv = malloc(nu * ds->d * sizeof *nv);
    REQUIRE(lab && nv);
    /* Label perm[i] gets row perm[nu + i]'s vector: sources distinct and
     * never themselves updated. */
    for (size_t i = 0; i < nu; i++) {
        lab[i] = perm[i];
        memcpy(nv + i * ds->d, ds->base + (size_t)perm[nu + i] * ds->d, ds->d * sizeof *nv);
    }
    CHECK_OK(ctx, kiln_index_update(ix, nv, lab, nu));
    CHECK(kiln_index_count(ix) == ds->n);
    CHECK_OK(ctx, kiln_index_check(ix));
    int64_t *got = malloc(nu * K * sizeof *got);
    float *dist = malloc(nu * K * sizeof *dist);
    REQUIRE(got && dist);
    kiln_search_params sp = {.k = K, .ef = 64, .threads = 2};
    CHECK_OK(ctx, kiln_index_search(ix, nv, nu, &sp, got, dist));
    size_t found = 0;
    for (size_t i = 0; i < nu; i++)
        for (int j = 0; j < K; j++)
            if (got[i * K + j] == lab[i]) {
                found++;
                CHECK(dist[i * K + j] == 0.0f);
                break;
            }
    fprintf(stderr, "%s: updated %zu labels, %zu found at their new vectors\n", ds->name, nu,
            found);
    CHECK_MSG(found == nu, "%zu of %zu updated labels found at their new vector", found, nu);
    const int64_t unknown = (int64_t)ds->n + 12345;
    CHECK_FAILS(ctx, kiln_index_update(ix, nv, &unknown, 1), KILN_E_ARG, "is not in the index");
    round_trip(ctx, ix, ds, "update");

    /* The same calls on one thread and on two give the same bytes. */
    kiln_index *one = NULL, *two = NULL;
    CHECK_OK(ctx, kiln_index_load(ctx, file, &one));
    CHECK_OK(ctx, kiln_index_load(ctx, file, &two));
    REQUIRE(one && two);
    kiln_index *pair[2] = {one, two};
    for (int t = 0; t < 2; t++) {
        CHECK_OK(ctx, kiln_index_set_threads(pair[t], (uint32_t)t + 1));
        CHECK_OK(ctx, kiln_index_update(pair[t], nv, lab, nu));
        CHECK_OK(ctx, kiln_index_delete(pair[t], lab, nu / 2));
        CHECK_OK(ctx, kiln_index_add(pair[t], ds->base, NULL, nu));
    }
    size_t n1 = 0, n2 = 0;
    uint8_t *b1 = saved(ctx, one, "threads1.kiln", &n1),
            *b2 = saved(ctx, two, "threads2.kiln", &n2);
    CHECK_MSG(n1 == n2 && memcmp(b1, b2, n1) == 0, "%s: 1 and 2 threads give other bytes",
              ds->name);
    free(b1);
    free(b2);
    kiln_index_free(one);
    kiln_index_free(two);
    free(dist);
    free(got);
    free(nv);
    free(lab);
    free(perm);
    kiln_index_free(ix);
}

/* ==== Per dataset ==== */

static void test_dataset(kiln_ctx *ctx, const char *name) {
    data ds;
    if (!test_data_load(ctx, name, 0, &ds))
        return;
    char file[4200];
    snprintf(file, sizeof file, "%s/%s.kiln", test_dir, name);
    kiln_index *ix = build(ctx, ds.base, ds.n, ds.d);
    CHECK_OK(ctx, kiln_index_save(ix, file));
    kiln_index_free(ix);
    const double fracs[] = {0.1, 0.3, 0.5};
    for (int f = 0; f < 3; f++)
        test_delete(ctx, &ds, file, fracs[f], 1000 + (uint64_t)f);
    test_device_delete(ctx, &ds);
    test_device_add(ctx, &ds);
    test_empty_and_back(ctx, &ds, file);
    test_update(ctx, &ds, file);
    test_data_free(&ds);
}

int main(void) {
    kiln_ctx *ctx;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    kiln_ctx_set_progress(ctx, KILN_PROGRESS_OFF);
    const char *tmp = getenv("KILN_TEST_TMP");
    snprintf(test_dir, sizeof test_dir, "%s/test_live", tmp && *tmp ? tmp : "/tmp");
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", test_dir);
    REQUIRE(system(cmd) == 0);
    test_dataset(ctx, "siftsmall");
    test_dataset(ctx, "fmnistsmall");
    kiln_ctx_free(ctx);
    return check_report("test_live");
}
