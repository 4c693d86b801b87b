/* test_shards.c -- shard sets (graph/shardset.c, graph/shard_build.c): the
 * label hash, sets of 2 and 3 shards on siftsmall and fmnistsmall whose
 * search is exactly the merge of the shards searched alone (merged here, by
 * the rule kiln.h states) with recall against exact ground truth, every row
 * in exactly its hash's shard, one shard built at a time then the manifest
 * by a resuming call (the same bytes as one call), a plain index opened as a
 * set of one, and the refusals: a missing, replaced or damaged shard and a
 * damaged, truncated or path-escaping manifest. The build method is the
 * library's default: the device pipeline where there is OpenCL, insertion
 * otherwise. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/crc32c_internal.h"
#include "../graph/hnsw_internal.h"
#include "check.h"
#include "file_util.h"
#include "recall.h"
#include "kiln.h"

#define DATA "../shared/datasets"
#define K    10

static const char *tmp_dir(void) {
    const char *d = getenv("KILN_TEST_TMP");
    return d && *d ? d : "/tmp";
}

/* The hash as kiln.h states it, written out again here. */
static uint32_t fmix64_mod(int64_t label, uint32_t n) {
    uint64_t k = (uint64_t)label;
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return (uint32_t)(k % n);
}

static void test_hash(void) {
    /* Known answers, from an independent implementation (Python's ints):
     * fmix64(1) = 0xb456bcfc34c2cb2c, fmix64(2) = 0x3abf2a20650683e7,
     * fmix64(-1) = 0x64b5720b4b825f21. */
    CHECK(fmix64_mod(1, 1000003) == (uint32_t)(0xb456bcfc34c2cb2cull % 1000003));
    CHECK(kiln_shard_of(1, 1000003) == (uint32_t)(0xb456bcfc34c2cb2cull % 1000003));
    CHECK(kiln_shard_of(2, 1000003) == (uint32_t)(0x3abf2a20650683e7ull % 1000003));
    CHECK(kiln_shard_of(-1, 1000003) == (uint32_t)(0x64b5720b4b825f21ull % 1000003));
    CHECK(kiln_shard_of(77, 7) == 5 && kiln_shard_of(123456789012345, 3) == 2);
    const int64_t labels[] = {0, 1, 2, 77, -1, INT64_MAX, INT64_MIN, 123456789012345};
    for (size_t i = 0; i < sizeof labels / sizeof *labels; i++)
        for (uint32_t n = 1; n <= 7; n++)
            CHECK(kiln_shard_of(labels[i], n) == fmix64_mod(labels[i], n));
    /* Row numbers spread evenly: 30,000 rows within 3% of n / N each. */
    for (uint32_t n = 2; n <= 5; n++) {
        size_t c[5] = {0};
        for (int64_t i = 0; i < 30000; i++)
            c[kiln_shard_of(i, n)]++;
        for (uint32_t s = 0; s < n; s++)
            CHECK_MSG(c[s] > 30000 / n * 97 / 100 && c[s] < 30000 / n * 103 / 100,
                      "%u shards: shard %u gets %zu of 30000 rows", n, s, c[s]);
    }
}

typedef struct cand {
    float d;
    int pad;
    int64_t l;
} cand;

static int cand_cmp(const void *x, const void *y) {
    const cand *a = x, *b = y;
    if (a->pad != b->pad)
        return a->pad - b->pad;
    if (a->d != b->d)
        return a->d < b->d ? -1 : 1;
    return (a->l > b->l) - (a->l < b->l);
}

/* Each shard searched alone, merged here: what the set must return. */
static void merge_alone(kiln_ctx *ctx, const char *set_path, uint32_t n, const float *q, size_t nq,
                        uint32_t ef, int64_t *labels, float *dists) {
    int64_t *l = malloc((size_t)n * nq * K * sizeof *l);
    float *d = malloc((size_t)n * nq * K * sizeof *d);
    cand *c = malloc((size_t)n * K * sizeof *c);
    REQUIRE(l && d && c);
    for (uint32_t s = 0; s < n; s++) {
        char path[4300];
        snprintf(path, sizeof path, "%s-%u-of-%u.kiln", set_path, s, n);
        kiln_index *ix = NULL;
        CHECK_OK(ctx, kiln_index_open(ctx, path, 0, &ix));
        REQUIRE(ix);
        kiln_search_params sp = {.k = K, .ef = ef, .threads = 1};
        CHECK_OK(ctx, kiln_index_search(ix, q, nq, &sp, l + s * nq * K, d + s * nq * K));
        kiln_index_free(ix);
    }
    for (size_t i = 0; i < nq; i++) {
        for (uint32_t s = 0; s < n; s++)
            for (int j = 0; j < K; j++) {
                const size_t at = (s * nq + i) * K + (size_t)j;
                c[s * K + (size_t)j] =
                    (cand){d[at], l[at] == -1 && d[at] == (float)INFINITY, l[at]};
            }
        qsort(c, (size_t)n * K, sizeof *c, cand_cmp);
        for (int j = 0; j < K; j++) {
            labels[i * K + (size_t)j] = c[j].l;
            dists[i * K + (size_t)j] = c[j].d;
        }
    }
    free(l);
    free(d);
    free(c);
}

typedef struct data {
    kiln_dataset *base;
    float *q;
    int64_t *gt;
    size_t nq, gk, n;
} data;

static bool data_open(kiln_ctx *ctx, const char *name, data *dt) {
    char path[256];
    memset(dt, 0, sizeof *dt);
    snprintf(path, sizeof path, DATA "/%s/%s_base.fvecs", name, name);
    if (kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &dt->base)) {
        SKIP_PART("%s: %s (../shared/datasets absent)", name, kiln_errmsg(ctx));
        return false;
    }
    kiln_dataset *qs = NULL, *gtds = NULL;
    snprintf(path, sizeof path, DATA "/%s/%s_query.fvecs", name, name);
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &qs));
    snprintf(path, sizeof path, DATA "/%s/%s_groundtruth.ivecs", name, name);
    CHECK_OK(ctx, kiln_dataset_open(ctx, path, KILN_FORMAT_AUTO, 0, &gtds));
    REQUIRE(qs && gtds);
    dt->n = kiln_dataset_count(dt->base);
    dt->nq = kiln_dataset_count(qs);
    dt->gk = kiln_dataset_dim(gtds);
    const size_t d = kiln_dataset_dim(qs);
    dt->q = malloc(dt->nq * d * sizeof *dt->q);
    int32_t *g32 = malloc(dt->nq * dt->gk * sizeof *g32);
    dt->gt = malloc(dt->nq * dt->gk * sizeof *dt->gt);
    REQUIRE(dt->q && g32 && dt->gt);
    CHECK_OK(ctx, kiln_dataset_read_f32(qs, 0, dt->nq, dt->q));
    CHECK_OK(ctx, kiln_dataset_read_i32(gtds, 0, dt->nq, g32));
    for (size_t i = 0; i < dt->nq * dt->gk; i++)
        dt->gt[i] = g32[i];
    free(g32);
    kiln_dataset_free(qs);
    kiln_dataset_free(gtds);
    return true;
}

static void data_free(data *dt) {
    kiln_dataset_free(dt->base);
    free(dt->q);
    free(dt->gt);
}

/* A set of n shards on a real dataset: labels, merge, recall, threads. */
static void test_set(kiln_ctx *ctx, const char *name, uint32_t n, double min_recall) {
    data dt;
    if (!data_open(ctx, name, &dt))
        return;
    char set_path[4096], work[4200];
    snprintf(set_path, sizeof set_path, "%s/shards_%s_%u.kset", tmp_dir(), name, n);
    snprintf(work, sizeof work, "%s.work", set_path);
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.work_dir = work;
    kiln_shardset_report rep;
    CHECK_OK(ctx, kiln_shardset_build(ctx, dt.base, &p, n, -1, set_path, &rep));
    CHECK(rep.shards == n && rep.built == n && rep.kept == 0 && rep.manifest_written);
    CHECK_MSG(access(work, F_OK) != 0, "%s: the work dir %s is left after success", name, work);

    kiln_shardset *set = NULL;
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, KILN_LOAD_VERIFY, &set));
    REQUIRE(set);
    CHECK(kiln_shardset_shards(set) == n && kiln_shardset_has_manifest(set));
    CHECK(kiln_shardset_count(set) == dt.n);
    /* Every row exactly once, in its hash's shard, in row order, and its
     * vector the row's (white-box: the labels array). */
    uint8_t *seen = calloc(dt.n, 1);
    const size_t d = kiln_dataset_dim(dt.base);
    float *row = malloc(d * sizeof *row);
    REQUIRE(seen && row);
    size_t total = 0, misplaced = 0, unordered = 0, twice = 0, wrong_vec = 0;
    for (uint32_t s = 0; s < n; s++) {
        const struct kiln_index *ix = kiln_shardset_shard(set, s);
        CHECK_OK(ctx, kiln_index_check(ix));
        for (uint64_t i = 0; i < ix->count; i++) {
            const int64_t l = ix->labels[i];
            REQUIRE(l >= 0 && (size_t)l < dt.n);
            misplaced += kiln_shard_of(l, n) != s;
            unordered += i > 0 && l <= ix->labels[i - 1];
            twice += seen[l]++;
            if (i % 13 == 0) {
                CHECK_OK(ctx, kiln_dataset_read_f32(dt.base, (size_t)l, 1, row));
                wrong_vec += memcmp(row, kiln_vector(ix, (uint32_t)i), d * sizeof *row) != 0;
            }
        }
        total += ix->count;
    }
    CHECK_MSG(total == dt.n && misplaced == 0 && unordered == 0 && twice == 0 && wrong_vec == 0,
              "%s, %u shards: %zu rows of %zu, %zu misplaced, %zu out of order, %zu twice, %zu "
              "with another row's vector",
              name, n, total, dt.n, misplaced, unordered, twice, wrong_vec);
    free(row);
    free(seen);

    int64_t *got = malloc(dt.nq * K * sizeof *got), *want = malloc(dt.nq * K * sizeof *want);
    float *gd = malloc(dt.nq * K * sizeof *gd), *wd = malloc(dt.nq * K * sizeof *wd);
    int64_t *got2 = malloc(dt.nq * K * sizeof *got2);
    float *gd2 = malloc(dt.nq * K * sizeof *gd2);
    REQUIRE(got && want && gd && wd && got2 && gd2);
    const uint32_t efs[] = {16, 64};
    for (int e = 0; e < 2; e++) {
        kiln_search_params sp = {.k = K, .ef = efs[e], .threads = 2};
        CHECK_OK(ctx, kiln_shardset_search(set, dt.q, dt.nq, &sp, got, gd));
        merge_alone(ctx, set_path, n, dt.q, dt.nq, efs[e], want, wd);
        CHECK_MSG(memcmp(got, want, dt.nq * K * sizeof *got) == 0 &&
                      memcmp(gd, wd, dt.nq * K * sizeof *gd) == 0,
                  "%s, %u shards, ef %u: the set's results are not the merge of its shards'", name,
                  n, efs[e]);
        sp.threads = 1; /* the same whatever the threads, and one query at a time */
        for (size_t i = 0; i < dt.nq; i++)
            CHECK_OK(ctx,
                     kiln_shardset_search(set, dt.q + i * d, 1, &sp, got2 + i * K, gd2 + i * K));
        CHECK(memcmp(got, got2, dt.nq * K * sizeof *got) == 0 &&
              memcmp(gd, gd2, dt.nq * K * sizeof *gd) == 0);
        const double r = recall_at(got, dt.gt, dt.nq, K, dt.gk);
        fprintf(stderr, "%s, %u shards: recall@10 at ef %u = %.4f\n", name, n, efs[e], r);
        if (efs[e] == 64)
            CHECK_MSG(r >= min_recall, "%s, %u shards: recall@10 at ef 64 is %.4f < %.2f", name, n,
                      r, min_recall);
    }
    free(got);
    free(want);
    free(gd);
    free(wd);
    free(got2);
    free(gd2);
    kiln_shardset_free(set);
    data_free(&dt);
}

/* Writes through a set (graph/shardset.c decision 5): deletes and adds
 * routed by the hash give each shard the bytes of the same calls on that
 * shard alone; the set saved in place opens valid with its new files (the
 * old ones gone), never returns a deleted label, keeps its recall against
 * the exact ground truth of what is left, and takes the rows back; a label
 * not in the set is refused and nothing is written. */
static void test_writes(kiln_ctx *ctx) {
    data dt;
    if (!data_open(ctx, "siftsmall", &dt))
        return;
    const uint32_t n = 3;
    char set_path[4096], work[4200];
    snprintf(set_path, sizeof set_path, "%s/shards_writes.kset", tmp_dir());
    snprintf(work, sizeof work, "%s.work", set_path);
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.work_dir = work;
    CHECK_OK(ctx, kiln_shardset_build(ctx, dt.base, &p, n, -1, set_path, NULL));
    const size_t d = kiln_dataset_dim(dt.base);
    float *all = malloc(dt.n * d * sizeof *all);
    REQUIRE(all);
    CHECK_OK(ctx, kiln_dataset_read_f32(dt.base, 0, dt.n, all));
    /* 10% of the labels, seeded. */
    uint8_t *gone = calloc(dt.n, 1);
    int64_t *del = malloc(dt.n * sizeof *del);
    REQUIRE(gone && del);
    size_t nd = 0;
    for (uint64_t x = 12345, i = 0; i < dt.n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        if ((x >> 33) % 10 == 0) {
            gone[i] = 1;
            del[nd++] = (int64_t)i;
        }
    }
    kiln_shardset *set = NULL;
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, 0, &set));
    REQUIRE(set);
    /* Each shard alone, with the labels that hash to it. */
    char alone[3][4200], old[3][4200];
    for (uint32_t s = 0; s < n; s++) {
        snprintf(old[s], sizeof old[s], "%s", kiln_shardset_shard_path(set, s));
        snprintf(alone[s], sizeof alone[s], "%s/shards_writes_alone_%u.kiln", tmp_dir(), s);
        kiln_index *ix = NULL;
        CHECK_OK(ctx, kiln_index_open(ctx, old[s], 0, &ix));
        REQUIRE(ix);
        int64_t *mine = malloc(nd * sizeof *mine);
        size_t m = 0;
        REQUIRE(mine);
        for (size_t j = 0; j < nd; j++)
            if (kiln_shard_of(del[j], n) == s)
                mine[m++] = del[j];
        CHECK_OK(ctx, kiln_index_delete(ix, mine, m));
        CHECK_OK(ctx, kiln_index_save(ix, alone[s]));
        kiln_index_free(ix);
        free(mine);
    }
    CHECK_OK(ctx, kiln_shardset_delete(set, del, nd));
    CHECK(kiln_shardset_count(set) == dt.n - nd);
    CHECK_OK(ctx, kiln_shardset_save(set, set_path));
    kiln_shardset_free(set);
    set = NULL;
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, KILN_LOAD_VERIFY, &set));
    REQUIRE(set);
    CHECK(kiln_shardset_count(set) == dt.n - nd);
    for (uint32_t s = 0; s < n; s++) {
        size_t la = 0, lb = 0;
        uint8_t *a = read_file(alone[s], &la),
                *b = read_file(kiln_shardset_shard_path(set, s), &lb);
        CHECK_MSG(a && b && la == lb && memcmp(a, b, la) == 0,
                  "shard %u after the routed delete is not the shard deleted from alone", s);
        CHECK_MSG(access(old[s], F_OK) != 0, "shard %u's old file %s is left", s, old[s]);
        CHECK_OK(ctx, kiln_index_check(kiln_shardset_shard(set, s)));
        free(a);
        free(b);
        unlink(alone[s]);
    }
    /* Search: no deleted label, recall against the exact neighbours of the rest. */
    const size_t left = dt.n - nd;
    float *rest = malloc(left * d * sizeof *rest);
    int64_t *rest_label = malloc(left * sizeof *rest_label), *gt = malloc(dt.nq * K * sizeof *gt),
            *got = malloc(dt.nq * K * sizeof *got);
    float *dist = malloc(dt.nq * K * sizeof *dist);
    REQUIRE(rest && rest_label && gt && got && dist);
    for (size_t i = 0, j = 0; i < dt.n; i++)
        if (!gone[i]) {
            memcpy(rest + j * d, all + i * d, d * sizeof *rest);
            rest_label[j++] = (int64_t)i;
        }
    CHECK_OK(ctx, kiln_knn_exact(ctx, rest, left, dt.q, dt.nq, d, KILN_METRIC_L2, K, 2, gt, dist));
    for (size_t i = 0; i < dt.nq * K; i++)
        gt[i] = gt[i] >= 0 ? rest_label[gt[i]] : -1;
    kiln_search_params sp = {.k = K, .ef = 64, .threads = 2};
    CHECK_OK(ctx, kiln_shardset_search(set, dt.q, dt.nq, &sp, got, dist));
    size_t deleted_found = 0;
    for (size_t i = 0; i < dt.nq * K; i++)
        deleted_found += got[i] >= 0 && gone[got[i]];
    const double r = recall_at(got, gt, dt.nq, K, K);
    fprintf(stderr,
            "siftsmall, %u shards, %zu deleted through the set: recall@10 at ef 64 = %.4f\n", n, nd,
            r);
    CHECK_MSG(deleted_found == 0 && r >= 0.95,
              "after the routed delete: %zu deleted labels returned, recall@10 at ef 64 %.4f",
              deleted_found, r);
    /* A label the set does not hold: refused, and the manifest stays. */
    size_t before_len = 0, after_len = 0;
    uint8_t *before = read_file(set_path, &before_len);
    const int64_t missing = del[0];
    CHECK_FAILS(ctx, kiln_shardset_delete(set, &missing, 1), KILN_E_ARG, "is not in the index");
    kiln_shardset_free(set);
    set = NULL;
    uint8_t *after = read_file(set_path, &after_len);
    CHECK(before && after && before_len == after_len && memcmp(before, after, after_len) == 0);
    free(before);
    free(after);
    /* A delete within shard 0 only: shard 1 keeps its file. Two writers
     * from the same manifest: the second save is refused, not lost. */
    kiln_shardset *w1 = NULL, *w2 = NULL;
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, 0, &w1));
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, 0, &w2));
    REQUIRE(w1 && w2);
    char keep1[4200];
    snprintf(keep1, sizeof keep1, "%s", kiln_shardset_shard_path(w1, 1));
    int64_t in0 = -1, in2 = -1;
    for (size_t i = 0; i < dt.n && (in0 < 0 || in2 < 0); i++) {
        if (!gone[i] && kiln_shard_of((int64_t)i, n) == 0 && in0 < 0)
            in0 = (int64_t)i;
        if (!gone[i] && kiln_shard_of((int64_t)i, n) == 2 && in2 < 0)
            in2 = (int64_t)i;
    }
    CHECK_OK(ctx, kiln_shardset_delete(w1, &in0, 1));
    CHECK_OK(ctx, kiln_shardset_save(w1, set_path));
    CHECK(strcmp(kiln_shardset_shard_path(w1, 1), keep1) == 0 && access(keep1, F_OK) == 0);
    CHECK_OK(ctx, kiln_shardset_delete(w2, &in2, 1));
    CHECK_FAILS(ctx, kiln_shardset_save(w2, set_path), KILN_E_IO, "changed since it was opened");
    kiln_shardset_free(w2);
    /* Saved elsewhere twice: the second finds its files there already
     * (same bytes, same names) and keeps them. */
    char other[4200];
    snprintf(other, sizeof other, "%s/shards_writes_other.kset", tmp_dir());
    CHECK_OK(ctx, kiln_shardset_save(w1, other));
    kiln_shardset *w3 = NULL;
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, 0, &w3));
    REQUIRE(w3);
    CHECK_OK(ctx, kiln_shardset_save(w3, other));
    kiln_shardset_free(w3);
    CHECK_OK(ctx, kiln_shardset_open(ctx, other, KILN_LOAD_VERIFY, &w3));
    REQUIRE(w3);
    CHECK(kiln_shardset_count(w3) == dt.n - nd - 1);
    for (uint32_t s = 0; s < n; s++)
        unlink(kiln_shardset_shard_path(w3, s));
    kiln_shardset_free(w3);
    unlink(other);
    snprintf(other, sizeof other, "%s/shards_writes_other.kset.lock", tmp_dir());
    unlink(other);
    /* Put in0 back, so that the rest sees the deleted set (w1 is now the
     * other set: a set saved elsewhere is that set). */
    kiln_shardset_free(w1);
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, 0, &w1));
    REQUIRE(w1);
    CHECK_OK(ctx, kiln_shardset_add(w1, all + (size_t)in0 * d, &in0, 1));
    CHECK_OK(ctx, kiln_shardset_save(w1, set_path));
    kiln_shardset_free(w1);
    /* The rows back, with their labels. */
    float *back = malloc(nd * d * sizeof *back);
    REQUIRE(back);
    for (size_t j = 0; j < nd; j++)
        memcpy(back + j * d, all + (size_t)del[j] * d, d * sizeof *back);
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, 0, &set));
    REQUIRE(set);
    CHECK_OK(ctx, kiln_shardset_add(set, back, del, nd));
    CHECK_OK(ctx, kiln_shardset_save(set, set_path));
    kiln_shardset_free(set);
    set = NULL;
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, KILN_LOAD_VERIFY, &set));
    REQUIRE(set);
    CHECK(kiln_shardset_count(set) == dt.n);
    size_t found = 0;
    kiln_search_params one = {.k = 1, .ef = 64, .threads = 2};
    for (size_t j = 0; j < nd; j += 7) {
        int64_t l;
        float dd;
        CHECK_OK(ctx, kiln_shardset_search(set, back + j * d, 1, &one, &l, &dd));
        found += l == del[j] && dd == 0.0f;
    }
    CHECK_MSG(found == (nd + 6) / 7, "%zu of %zu rows added back are found by their vectors", found,
              (nd + 6) / 7);
    kiln_shardset_free(set);
    for (uint32_t s = 0; s < n; s++) { /* the set's files, then the manifest */
        kiln_shardset *tmp = NULL;
        if (s == 0 && kiln_shardset_open(ctx, set_path, 0, &tmp) == KILN_OK) {
            for (uint32_t t = 0; t < n; t++)
                unlink(kiln_shardset_shard_path(tmp, t));
            kiln_shardset_free(tmp);
        }
    }
    unlink(set_path);
    snprintf(work, sizeof work, "%s.lock", set_path);
    unlink(work);
    free(back);
    free(rest);
    free(rest_label);
    free(gt);
    free(got);
    free(dist);
    free(gone);
    free(del);
    free(all);
    data_free(&dt);
}

/* A manifest (len bytes, not NUL-terminated) without its shards' file
 * names and its checksum line, as a string to compare. */
static char *strip_names(const uint8_t *m, size_t len) {
    char *out = malloc(len + 1);
    REQUIRE(out);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        const uint8_t *nl = memchr(m + i, '\n', len - i);
        const size_t end = nl ? (size_t)(nl - m) : len;
        size_t keep = end - i;
        for (size_t k = i; k + 6 <= end; k++)
            if (memcmp(m + k, " file ", 6) == 0) {
                keep = k - i;
                break;
            }
        if (!(keep >= 7 && memcmp(m + i, "crc32c ", 7) == 0)) {
            memcpy(out + o, m + i, keep);
            o += keep;
            out[o++] = '\n';
        }
        i = end + 1;
    }
    out[o] = '\0';
    return out;
}

/* Shard by shard, then the manifest from a resuming call: the same bytes. */
static void test_piecewise(kiln_ctx *ctx) {
    data dt;
    if (!data_open(ctx, "siftsmall", &dt))
        return;
    char a[4096], b[4096], wa[4200], wb[4200];
    snprintf(a, sizeof a, "%s/shards_whole.kset", tmp_dir());
    snprintf(b, sizeof b, "%s/shards_piece.kset", tmp_dir());
    snprintf(wa, sizeof wa, "%s.work", a);
    snprintf(wb, sizeof wb, "%s.work", b);
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.threads = 2;
    p.work_dir = wa;
    CHECK_OK(ctx, kiln_shardset_build(ctx, dt.base, &p, 3, -1, a, NULL));
    p.work_dir = wb;
    unlink(b);
    for (uint32_t s = 0; s < 3; s++) { /* a rerun starts from nothing */
        char pb[4200];
        snprintf(pb, sizeof pb, "%s-%u-of-3.kiln", b, s);
        unlink(pb);
    }
    kiln_shardset_report rep;
    for (int32_t s = 2; s >= 0; s -= 2) { /* shards 2 and 0 on their own */
        CHECK_OK(ctx, kiln_shardset_build(ctx, dt.base, &p, 3, s, b, &rep));
        CHECK(rep.built == 1 && !rep.manifest_written);
        CHECK_MSG(access(b, F_OK) != 0, "a one-shard build wrote the manifest");
    }
    p.resume = 1;
    CHECK_OK(ctx, kiln_shardset_build(ctx, dt.base, &p, 3, -1, b, &rep));
    CHECK_MSG(rep.kept == 2 && rep.built == 1 && rep.manifest_written,
              "resume kept %u and built %u shards", rep.kept, rep.built);
    size_t la, lb;
    uint8_t *ma = read_file(a, &la), *mb = read_file(b, &lb);
    REQUIRE(ma && mb);
    /* The manifests differ only in the shard names: compare the shards. */
    for (uint32_t s = 0; s < 3; s++) {
        char pa[4200], pb[4200];
        snprintf(pa, sizeof pa, "%s-%u-of-3.kiln", a, s);
        snprintf(pb, sizeof pb, "%s-%u-of-3.kiln", b, s);
        size_t sa, sb;
        uint8_t *fa = read_file(pa, &sa), *fb = read_file(pb, &sb);
        REQUIRE(fa && fb);
        CHECK_MSG(sa == sb && memcmp(fa, fb, sa) == 0, "shard %u differs when built alone", s);
        free(fa);
        free(fb);
    }
    /* The manifests agree but for the names (and so their checksum line). */
    char *sa = strip_names(ma, la), *sb = strip_names(mb, lb);
    CHECK_MSG(strcmp(sa, sb) == 0, "the manifests of one call and of three differ:\n%s\n%s", sa,
              sb);
    free(sa);
    free(sb);
    free(ma);
    free(mb);
    /* A kept shard must match: a shard of other parameters is rebuilt. */
    p.M = 12;
    CHECK_OK(ctx, kiln_shardset_build(ctx, dt.base, &p, 3, -1, b, &rep));
    CHECK_MSG(rep.kept == 0 && rep.built == 3, "M changed, yet %u shards were kept", rep.kept);
    data_free(&dt);
}

/* Rewrites the manifest at path with its CRC line made right again. */
static void write_manifest_fixed(const char *path, const char *text) {
    const size_t n = strlen(text);
    char *buf = malloc(n + 32);
    REQUIRE(buf);
    memcpy(buf, text, n);
    snprintf(buf + n, 32, "crc32c %08x\n", kiln_crc32c(0, text, n));
    REQUIRE(write_file(path, buf, strlen(buf)));
    free(buf);
}

static void test_refusals(kiln_ctx *ctx) {
    data dt;
    if (!data_open(ctx, "siftsmall", &dt))
        return;
    char set_path[4096], work[4200], s0[4200], s1[4200], moved[4300];
    snprintf(set_path, sizeof set_path, "%s/shards_bad.kset", tmp_dir());
    snprintf(work, sizeof work, "%s.work", set_path);
    snprintf(s0, sizeof s0, "%s-0-of-2.kiln", set_path);
    snprintf(s1, sizeof s1, "%s-1-of-2.kiln", set_path);
    snprintf(moved, sizeof moved, "%s.moved", s1);
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = KILN_METHOD_INSERT; /* quick: the files are what is tested */
    p.work_dir = work;
    CHECK_OK(ctx, kiln_shardset_build(ctx, dt.base, &p, 2, -1, set_path, NULL));
    size_t mlen;
    char *manifest = (char *)read_file(set_path, &mlen);
    REQUIRE(manifest);
    kiln_shardset *set = NULL;

    REQUIRE(rename(s1, moved) == 0); /* missing */
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, 0, &set), KILN_E_IO, "shard 1 of 2");
    CHECK(set == NULL);
    size_t l0, l1;
    uint8_t *b0 = read_file(s0, &l0), *b1 = read_file(moved, &l1);
    REQUIRE(b0 && b1);
    REQUIRE(write_file(s1, b0, l0)); /* replaced by another shard */
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, 0, &set), KILN_E_CHECKSUM,
                "not the shard this set was built with");
    b1[l1 / 2] ^= 0x40; /* one bit flipped inside a section: found by verify */
    REQUIRE(write_file(s1, b1, l1));
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, 0, &set));
    kiln_shardset_free(set);
    set = NULL;
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, KILN_LOAD_VERIFY, &set), KILN_E_CHECKSUM,
                "checksum mismatch in section");
    b1[l1 / 2] ^= 0x40;
    REQUIRE(write_file(s1, b1, l1));
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, KILN_LOAD_VERIFY, &set));
    kiln_shardset_free(set);
    set = NULL;

    char *text = malloc(mlen + 64);
    REQUIRE(text);
    memcpy(text, manifest, mlen);
    text[20] ^= 0x01; /* damaged */
    REQUIRE(write_file(set_path, text, mlen));
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, 0, &set), KILN_E_CHECKSUM,
                "manifest checksum mismatch");
    REQUIRE(write_file(set_path, manifest, mlen - 5)); /* truncated */
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, 0, &set), KILN_E_FORMAT, "truncated");
    /* A name that leaves the folder, with a right checksum. */
    memcpy(text, manifest, mlen);
    text[mlen] = '\0';
    char *crc = strstr(text, "\ncrc32c "); /* the last line (not header_crc32c) */
    REQUIRE(crc);
    crc[1] = '\0';
    char *name = strstr(text, "file ");
    REQUIRE(name);
    char *nl = strchr(name, '\n');
    char edited[8192];
    snprintf(edited, sizeof edited, "%.*sfile ../etc%s", (int)(name - text), text, nl);
    write_manifest_fixed(set_path, edited);
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, 0, &set), KILN_E_FORMAT,
                "not a plain file name");
    /* Counts that add up but disagree with the shard's: shard 0 one more,
     * shard 1 one less. */
    unsigned long c0, c1;
    REQUIRE(sscanf(strstr(text, "shard 0 count "), "shard 0 count %lu", &c0) == 1 &&
            sscanf(strstr(text, "shard 1 count "), "shard 1 count %lu", &c1) == 1);
    char from0[64], to0[64], from1[64], to1[64];
    snprintf(from0, sizeof from0, "shard 0 count %lu ", c0);
    snprintf(to0, sizeof to0, "shard 0 count %lu ", c0 + 1);
    snprintf(from1, sizeof from1, "shard 1 count %lu ", c1);
    snprintf(to1, sizeof to1, "shard 1 count %lu ", c1 - 1);
    char *a0 = strstr(text, from0), *a1 = strstr(text, from1);
    REQUIRE(a0 && a1 && a0 < a1);
    snprintf(edited, sizeof edited, "%.*s%s%.*s%s%s", (int)(a0 - text), text, to0,
             (int)(a1 - a0 - strlen(from0)), a0 + strlen(from0), to1, a1 + strlen(from1));
    write_manifest_fixed(set_path, edited);
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, 0, &set), KILN_E_FORMAT,
                "but the manifest says");
    /* Two lines naming one file. */
    char *f1 = strstr(strstr(text, "shard 1 count "), " file ");
    REQUIRE(f1);
    const char *n0 = strstr(text, " file ") + 6;
    snprintf(edited, sizeof edited, "%.*s file %.*s", (int)(f1 - text), text,
             (int)(strchr(n0, '\n') - n0 + 1), n0);
    write_manifest_fixed(set_path, edited);
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, 0, &set), KILN_E_FORMAT, "name one file");
    /* Another version, another hash. */
    snprintf(edited, sizeof edited, "kiln-shardset 2\n%s", strchr(text, '\n') + 1);
    write_manifest_fixed(set_path, edited);
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, 0, &set), KILN_E_VERSION,
                "version '2' is not supported");
    char *h = strstr(text, "hash fmix64");
    REQUIRE(h);
    snprintf(edited, sizeof edited, "%.*shash xxh3%s", (int)(h - text), text, h + 11);
    write_manifest_fixed(set_path, edited);
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, 0, &set), KILN_E_UNSUPPORTED, "hash 'xxh3'");
    REQUIRE(write_file(set_path, manifest, mlen));
    /* The same shard rebuilt otherwise (same size, other links): refused by
     * its header checksum alone. */
    kiln_build_params q = p;
    q.ef_construction = 20;
    char other[4200], os1[4300];
    snprintf(other, sizeof other, "%s.other", set_path);
    snprintf(os1, sizeof os1, "%s-1-of-2.kiln", other);
    CHECK_OK(ctx, kiln_shardset_build(ctx, dt.base, &q, 2, 1, other, NULL));
    size_t lo;
    uint8_t *bo = read_file(os1, &lo);
    REQUIRE(bo);
    CHECK_MSG(lo == l1, "the rebuilt shard is %zu bytes, not %zu: the test needs the same size", lo,
              l1);
    REQUIRE(write_file(s1, bo, lo));
    CHECK_FAILS(ctx, kiln_shardset_open(ctx, set_path, 0, &set), KILN_E_CHECKSUM,
                "not the shard this set was built with");
    REQUIRE(write_file(s1, b1, l1));
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, 0, &set));
    kiln_shardset_free(set);
    set = NULL;
    free(bo);
    unlink(os1);
    /* More shards than a set may have; more than the rows fill. */
    CHECK_FAILS(ctx, kiln_shardset_build(ctx, dt.base, &p, 5000, -1, set_path, NULL), KILN_E_ARG,
                "(1 to 4096)");
    CHECK_FAILS(ctx, kiln_shardset_build(ctx, dt.base, &p, 4096, -1, set_path, NULL), KILN_E_ARG,
                "would hold no vectors");
    CHECK_FAILS(ctx, kiln_shardset_build(ctx, dt.base, &p, 2, 2, set_path, NULL), KILN_E_ARG,
                "shard 2 of 2");
    CHECK(set == NULL);
    free(text);
    free(manifest);
    free(b0);
    free(b1);
    unlink(moved);
    data_free(&dt);
}

/* A plain index opened as a set of one answers as the index does. */
static void test_single(kiln_ctx *ctx) {
    const size_t n = 3000, nq = 50, d = 16;
    float *x = malloc((n + nq) * d * sizeof *x);
    REQUIRE(x);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n + nq, d, 8, 5, x, (n + nq) * d));
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = KILN_METHOD_INSERT;
    kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, x, n, d, &p, &ix));
    REQUIRE(ix);
    char path[4096];
    snprintf(path, sizeof path, "%s/shards_single.kiln", tmp_dir());
    CHECK_OK(ctx, kiln_index_save(ix, path));
    kiln_shardset *set = NULL;
    CHECK_OK(ctx, kiln_shardset_open(ctx, path, 0, &set));
    REQUIRE(set);
    CHECK(kiln_shardset_shards(set) == 1 && !kiln_shardset_has_manifest(set) &&
          kiln_shardset_count(set) == n && kiln_shardset_dim(set) == d);
    int64_t a[50 * K], b[50 * K];
    kiln_search_params sp = {.k = K, .ef = 32, .threads = 2};
    CHECK_OK(ctx, kiln_index_search(ix, x + n * d, nq, &sp, a, NULL));
    CHECK_OK(ctx, kiln_shardset_search(set, x + n * d, nq, &sp, b, NULL));
    CHECK(memcmp(a, b, sizeof a) == 0);
    kiln_shardset_free(set);
    kiln_index_free(ix);
    unlink(path);
    free(x);
}

/* 32 shards of siftsmall: more than 4 x the 7 rows a page holds, so the
 * gather reads each shard's rows one by one (graph/shard_build.c decision
 * 1a): every shard must still hold exactly its rows, in order, with their
 * vectors. */
static void test_many_shards(kiln_ctx *ctx) {
    data dt;
    if (!data_open(ctx, "siftsmall", &dt))
        return;
    char set_path[4096];
    snprintf(set_path, sizeof set_path, "%s/shards_many.kset", tmp_dir());
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = KILN_METHOD_INSERT;
    p.ef_construction = 32;
    CHECK_OK(ctx, kiln_shardset_build(ctx, dt.base, &p, 32, -1, set_path, NULL));
    kiln_shardset *set = NULL;
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, KILN_LOAD_VERIFY, &set));
    REQUIRE(set);
    const size_t d = kiln_dataset_dim(dt.base);
    float *row = malloc(d * sizeof *row);
    REQUIRE(row);
    size_t total = 0, wrong = 0, unordered = 0;
    for (uint32_t s = 0; s < 32; s++) {
        const struct kiln_index *ix = kiln_shardset_shard(set, s);
        for (uint64_t i = 0; i < ix->count; i++) {
            const int64_t l = ix->labels[i];
            REQUIRE(l >= 0 && (size_t)l < dt.n);
            unordered += i > 0 && l <= ix->labels[i - 1];
            CHECK_OK(ctx, kiln_dataset_read_f32(dt.base, (size_t)l, 1, row));
            wrong += memcmp(row, kiln_vector(ix, (uint32_t)i), d * sizeof *row) != 0;
        }
        total += ix->count;
    }
    CHECK_MSG(total == dt.n && wrong == 0 && unordered == 0,
              "32 shards: %zu rows of %zu, %zu with another vector, %zu out of order", total, dt.n,
              wrong, unordered);
    free(row);
    kiln_shardset_free(set);
    data_free(&dt);
}

/* Padding and ties: 20 rows in 3 shards, pairs of equal vectors, k above
 * the rows: real results first by (distance, label), then padding. */
static void test_merge_edges(kiln_ctx *ctx) {
    const size_t n = 20, d = 4;
    float x[20 * 4];
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d; j++)
            x[i * d + j] = (float)((i / 2) * 3 + j); /* rows 2m and 2m+1 alike */
    char base[4096], set_path[4096];
    snprintf(base, sizeof base, "%s/shards_edges.fbin", tmp_dir());
    snprintf(set_path, sizeof set_path, "%s/shards_edges.kset", tmp_dir());
    CHECK_OK(ctx, kiln_dataset_write(ctx, base, KILN_FORMAT_FBIN, KILN_DTYPE_F32, x, n, d));
    kiln_dataset *ds = NULL;
    CHECK_OK(ctx, kiln_dataset_open(ctx, base, KILN_FORMAT_FBIN, 0, &ds));
    REQUIRE(ds);
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = KILN_METHOD_INSERT;
    p.M = 4;
    CHECK_OK(ctx, kiln_shardset_build(ctx, ds, &p, 3, -1, set_path, NULL));
    kiln_shardset *set = NULL;
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, 0, &set));
    REQUIRE(set);
    enum { KK = 25 };
    int64_t l[KK];
    float dist[KK];
    kiln_search_params sp = {.k = KK, .ef = 64, .threads = 2};
    CHECK_OK(ctx, kiln_shardset_search(set, x + 6 * d, 1, &sp, l, dist));
    uint8_t seen[20] = {0};
    bool order = true;
    for (int j = 0; j < KK; j++) {
        if (j < 20) {
            order &= l[j] >= 0 && l[j] < 20 && !seen[l[j]]++;
            if (j > 0)
                order &= dist[j] > dist[j - 1] || (dist[j] == dist[j - 1] && l[j] > l[j - 1]);
        } else {
            order &= l[j] == -1 && dist[j] == (float)INFINITY;
        }
    }
    CHECK_MSG(order && l[0] == 6 && l[1] == 7,
              "merge of 3 shards: results out of (distance, label) order or padding misplaced "
              "(first %lld, %lld)",
              (long long)l[0], (long long)l[1]);
    kiln_shardset_free(set);
    kiln_dataset_free(ds);
    unlink(base);
}

/* A set built with the caller's labels (beyond int32, in another order
 * than the rows): each row in the shard of its label's hash with that
 * label and its own vector, recall through the set as with row labels,
 * writes routed to the same shards; repeated labels are refused, naming
 * the rows, before anything is written. */
#define LABEL_BASE 1000000000000ll
static int64_t row_to_label(size_t i, size_t n) {
    return LABEL_BASE + (int64_t)((i * 7919u) % n) * 3; /* 7919 is prime to 10000 and 1000 */
}

static void test_labels(kiln_ctx *ctx) {
    data dt;
    if (!data_open(ctx, "siftsmall", &dt))
        return;
    const uint32_t n = 3;
    char set_path[4096];
    snprintf(set_path, sizeof set_path, "%s/shards_labels.kset", tmp_dir());
    int64_t *lab = malloc(dt.n * sizeof *lab);
    size_t *row_of = malloc(dt.n * sizeof *row_of);
    REQUIRE(lab && row_of);
    for (size_t i = 0; i < dt.n; i++) {
        lab[i] = row_to_label(i, dt.n);
        row_of[(lab[i] - LABEL_BASE) / 3] = i;
    }
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.labels = lab;
    /* Repeated labels: refused, no manifest. */
    const int64_t keep = lab[5];
    lab[5] = lab[17];
    CHECK(kiln_shardset_build(ctx, dt.base, &p, n, -1, set_path, NULL) == KILN_E_ARG);
    CHECK_MSG(strstr(kiln_errmsg(ctx), "rows 5 and 17") != NULL, "repeated labels: '%s'",
              kiln_errmsg(ctx));
    CHECK(access(set_path, F_OK) != 0);
    lab[5] = keep;
    CHECK_OK(ctx, kiln_shardset_build(ctx, dt.base, &p, n, -1, set_path, NULL));
    kiln_shardset *set = NULL;
    CHECK_OK(ctx, kiln_shardset_open(ctx, set_path, 0, &set));
    REQUIRE(set);
    const size_t d = kiln_dataset_dim(dt.base);
    float *row = malloc(d * sizeof *row);
    uint8_t *seen = calloc(dt.n, 1);
    REQUIRE(row && seen);
    size_t total = 0, misplaced = 0, twice = 0, wrong_vec = 0;
    for (uint32_t s = 0; s < n; s++) {
        const struct kiln_index *ix = kiln_shardset_shard(set, s);
        for (uint64_t i = 0; i < ix->count; i++) {
            const int64_t l = ix->labels[i];
            REQUIRE(l >= LABEL_BASE && (l - LABEL_BASE) % 3 == 0 &&
                    (size_t)((l - LABEL_BASE) / 3) < dt.n);
            const size_t r = row_of[(l - LABEL_BASE) / 3];
            misplaced += kiln_shard_of(l, n) != s;
            twice += seen[r]++;
            CHECK_OK(ctx, kiln_dataset_read_f32(dt.base, r, 1, row));
            wrong_vec += memcmp(row, kiln_vector(ix, (uint32_t)i), d * sizeof *row) != 0;
        }
        total += ix->count;
    }
    CHECK_MSG(total == dt.n && misplaced == 0 && twice == 0 && wrong_vec == 0,
              "labelled set: %zu rows of %zu, %zu misplaced, %zu twice, %zu with another row's "
              "vector",
              total, dt.n, misplaced, twice, wrong_vec);
    int64_t *got = malloc(dt.nq * K * sizeof *got);
    REQUIRE(got);
    kiln_search_params sp = {.k = K, .ef = 64, .threads = 2};
    CHECK_OK(ctx, kiln_shardset_search(set, dt.q, dt.nq, &sp, got, NULL));
    for (size_t i = 0; i < dt.nq * K; i++)
        got[i] = got[i] >= 0 ? (int64_t)row_of[(got[i] - LABEL_BASE) / 3] : -1;
    const double r = recall_at(got, dt.gt, dt.nq, K, dt.gk);
    fprintf(stderr, "siftsmall, 3 shards, labels of the caller's: recall@10 at ef 64 = %.4f\n", r);
    CHECK_MSG(r >= 0.95, "labelled set: recall@10 at ef 64 is %.4f < 0.95", r);
    /* Writes find the labels in their shards: delete 100, add them back. */
    int64_t del[100];
    float *back = malloc(100 * d * sizeof *back);
    REQUIRE(back);
    for (size_t i = 0; i < 100; i++) {
        del[i] = lab[i * 37];
        CHECK_OK(ctx, kiln_dataset_read_f32(dt.base, i * 37, 1, back + i * d));
    }
    CHECK_OK(ctx, kiln_shardset_delete(set, del, 100));
    CHECK(kiln_shardset_count(set) == dt.n - 100);
    CHECK_OK(ctx, kiln_shardset_add(set, back, del, 100));
    CHECK(kiln_shardset_count(set) == dt.n);
    free(back);
    free(got);
    free(row);
    free(seen);
    free(lab);
    free(row_of);
    kiln_shardset_free(set);
    data_free(&dt);
}

int main(void) {
    kiln_ctx *ctx;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    kiln_ctx_set_progress(ctx, KILN_PROGRESS_OFF);
    test_hash();
    test_single(ctx);
    test_merge_edges(ctx);
    test_many_shards(ctx);
    test_refusals(ctx);
    test_set(ctx, "siftsmall", 2, 0.95);
    test_set(ctx, "siftsmall", 3, 0.95);
    test_set(ctx, "fmnistsmall", 2, 0.95);
    test_piecewise(ctx);
    test_writes(ctx);
    test_labels(ctx);
    kiln_ctx_free(ctx);
    return check_report("test_shards");
}
