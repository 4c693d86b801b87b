/* test_concurrent.c -- searches while one writer changes the index (issue 14
 * item 5; graph/hnsw_live.c decision 8). Four threads search a siftsmall
 * index without pause while the main thread deletes 10% of it, waits, adds
 * the same rows back under the same labels, and updates 5%, round after
 * round. Every result row is checked as it comes back:
 *  - each label is -1 or one of the index's, and none is repeated;
 *  - its distance is the exact L2 distance from the query to that label's
 *    row (the rows never change value here), so a torn or freed row, or a
 *    label read from the wrong slot, fails;
 *  - no label appears that a delete which returned before the search began
 *    removed, unless its re-add had begun by the time of the check.
 * The test also requires that searches really ran during writes and inside
 * the windows between a delete's return and the re-add, so that it cannot
 * pass by not overlapping. At the end the index is valid, holds every row,
 * and its recall@10 against exact ground truth is within 0.01 of a fresh
 * build of the same rows. CI runs it under ThreadSanitizer too (make
 * test-tsan), with the writer on two OpenMP threads (libarcher tells TSan
 * about OpenMP's synchronisation). */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "data_util.h"
#include "kiln.h"
#include "recall.h"

#define K          10
#define READERS    4
#define ROWS       3000 /* of siftsmall: the TSan run stays within a minute or two */
#define ROUNDS     4
#define DELETE_PCT 10
#define UPDATE_PCT 5

typedef struct shared {
    kiln_ctx *ctx;
    kiln_index *ix;
    const float *rows;
    size_t n, d;
    /* The writer's record, per label: the generation (1, 2, ...) of the
     * last delete that removed it and returned, and of the last re-add that
     * began. deletes_done: the generation of the last delete returned. */
    _Atomic uint32_t *deleted_by, *readd_from;
    _Atomic uint32_t deletes_done;
    _Atomic uint32_t writes; /* writer calls begun or ended, for overlap counts */
    _Atomic bool in_window;  /* between a delete's return and its re-add */
    _Atomic bool done;
} shared;

typedef struct reader_stats {
    uint64_t searches, overlapped, in_window, bad_label, bad_dist, deleted_seen, failed;
    uint64_t seed;
} reader_stats;

typedef struct reader {
    shared *sh;
    reader_stats st;
} reader;

static uint64_t next_rand(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float l2(const float *a, const float *b, size_t d) {
    double s = 0;
    for (size_t i = 0; i < d; i++)
        s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return (float)s;
}

static void *reader_main(void *arg) {
    reader *r = arg;
    shared *sh = r->sh;
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    sp.k = K;
    sp.ef = 32;
    sp.threads = 1;
    int64_t got[K];
    float dist[K];
    float q[128];
    REQUIRE(sh->d <= 128);
    while (!atomic_load_explicit(&sh->done, memory_order_acquire)) {
        /* A base row, moved a little so that the query is not the row. */
        const size_t row = next_rand(&r->st.seed) % sh->n;
        for (size_t j = 0; j < sh->d; j++)
            q[j] = sh->rows[row * sh->d + j] + 0.5f;
        const uint32_t w0 = atomic_load_explicit(&sh->writes, memory_order_acquire);
        const bool window0 = atomic_load_explicit(&sh->in_window, memory_order_acquire);
        const uint32_t g0 = atomic_load_explicit(&sh->deletes_done, memory_order_acquire);
        if (kiln_index_search(sh->ix, q, 1, &sp, got, dist) != KILN_OK) {
            r->st.failed++;
            continue;
        }
        const uint32_t w1 = atomic_load_explicit(&sh->writes, memory_order_acquire);
        r->st.searches++;
        r->st.overlapped += w1 != w0 || (w0 & 1);
        r->st.in_window += window0 && w1 == w0;
        for (int j = 0; j < K; j++) {
            const int64_t l = got[j];
            if (l == -1)
                continue;
            bool repeated = false;
            for (int i = 0; i < j; i++)
                repeated |= got[i] == l;
            if (l < 0 || (uint64_t)l >= sh->n || repeated) {
                r->st.bad_label++;
                continue;
            }
            const float want = l2(q, sh->rows + (size_t)l * sh->d, sh->d);
            if (!(fabsf(dist[j] - want) <= 1e-3f * (want > 1.0f ? want : 1.0f)))
                r->st.bad_dist++;
            const uint32_t del = atomic_load_explicit(&sh->deleted_by[l], memory_order_acquire);
            const uint32_t add = atomic_load_explicit(&sh->readd_from[l], memory_order_acquire);
            if (del && del <= g0 && add < del)
                r->st.deleted_seen++;
        }
    }
    return NULL;
}

/* A writer call, counted odd while it runs. */
static void write_begin(shared *sh) {
    atomic_fetch_add_explicit(&sh->writes, 1, memory_order_acq_rel);
}
static void write_end(shared *sh) {
    atomic_fetch_add_explicit(&sh->writes, 1, memory_order_acq_rel);
}

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* A seeded choice of m distinct labels of 0 .. n-1. */
static void choose(int64_t *out, size_t m, size_t n, uint64_t *seed) {
    uint32_t *p = malloc(n * sizeof *p);
    REQUIRE(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint32_t)i;
    for (size_t i = 0; i < m; i++) {
        const size_t j = i + next_rand(seed) % (n - i);
        const uint32_t t = p[i];
        p[i] = p[j];
        p[j] = t;
        out[i] = p[i];
    }
    free(p);
}

static void writer_rounds(shared *sh) {
    const size_t nd = sh->n * DELETE_PCT / 100, nu = sh->n * UPDATE_PCT / 100;
    int64_t *lab = malloc(nd * sizeof *lab);
    float *rows = malloc(nd * sh->d * sizeof *rows);
    REQUIRE(lab && rows);
    uint64_t seed = 14;
    for (uint32_t g = 1; g <= ROUNDS; g++) {
        choose(lab, nd, sh->n, &seed);
        for (size_t k = 0; k < nd; k++)
            memcpy(rows + k * sh->d, sh->rows + (size_t)lab[k] * sh->d, sh->d * sizeof *rows);
        write_begin(sh);
        CHECK_OK(sh->ctx, kiln_index_delete(sh->ix, lab, nd));
        for (size_t k = 0; k < nd; k++)
            atomic_store_explicit(&sh->deleted_by[lab[k]], g, memory_order_release);
        atomic_store_explicit(&sh->deletes_done, g, memory_order_release);
        write_end(sh);
        /* The window: searches here must not see the deleted labels. */
        atomic_store_explicit(&sh->in_window, true, memory_order_release);
        pause_ms(50);
        atomic_store_explicit(&sh->in_window, false, memory_order_release);
        for (size_t k = 0; k < nd; k++)
            atomic_store_explicit(&sh->readd_from[lab[k]], g, memory_order_release);
        write_begin(sh);
        CHECK_OK(sh->ctx, kiln_index_add(sh->ix, rows, lab, nd));
        write_end(sh);
        /* An update to the same values: the rows move through delete and
         * add again, and stay findable at the same distances. */
        write_begin(sh);
        CHECK_OK(sh->ctx, kiln_index_update(sh->ix, rows, lab, nu));
        write_end(sh);
        CHECK_MSG(kiln_index_count(sh->ix) == sh->n, "round %u: %zu rows, want %zu", g,
                  kiln_index_count(sh->ix), sh->n);
    }
    free(lab);
    free(rows);
}

static double recall_of(kiln_ctx *ctx, kiln_index *ix, const test_data *ds, const int64_t *gt) {
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    sp.k = K;
    sp.ef = 16;
    int64_t *got = malloc(ds->nq * K * sizeof *got);
    REQUIRE(got);
    CHECK_OK(ctx, kiln_index_search(ix, ds->q, ds->nq, &sp, got, NULL));
    const double r = recall_at(got, gt, ds->nq, K, K);
    free(got);
    return r;
}

int main(void) {
    kiln_ctx *ctx;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    kiln_ctx_set_progress(ctx, KILN_PROGRESS_OFF);
    test_data ds;
    if (!test_data_load(ctx, "siftsmall", 0, &ds)) {
        kiln_ctx_free(ctx);
        return check_report("test_concurrent");
    }
    const size_t n = ds.n < ROWS ? ds.n : ROWS;
    kiln_build_params bp;
    kiln_build_params_init(&bp);
    bp.method = KILN_METHOD_INSERT;
    kiln_index *ix = NULL, *fresh = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, ds.base, n, ds.d, &bp, &ix));
    CHECK_OK(ctx, kiln_index_build(ctx, ds.base, n, ds.d, &bp, &fresh));
    REQUIRE(ix && fresh);
    CHECK_OK(ctx, kiln_index_set_threads(ix, 2));

    shared sh = {.ctx = ctx, .ix = ix, .rows = ds.base, .n = n, .d = ds.d};
    sh.deleted_by = calloc(n, sizeof *sh.deleted_by);
    sh.readd_from = calloc(n, sizeof *sh.readd_from);
    REQUIRE(sh.deleted_by && sh.readd_from);
    reader rd[READERS];
    pthread_t th[READERS];
    for (int t = 0; t < READERS; t++) {
        rd[t] = (reader){.sh = &sh, .st = {.seed = 1000 + (uint64_t)t}};
        REQUIRE(pthread_create(&th[t], NULL, reader_main, &rd[t]) == 0);
    }
    writer_rounds(&sh);
    atomic_store_explicit(&sh.done, true, memory_order_release);
    reader_stats all = {0};
    for (int t = 0; t < READERS; t++) {
        REQUIRE(pthread_join(th[t], NULL) == 0);
        all.searches += rd[t].st.searches;
        all.overlapped += rd[t].st.overlapped;
        all.in_window += rd[t].st.in_window;
        all.bad_label += rd[t].st.bad_label;
        all.bad_dist += rd[t].st.bad_dist;
        all.deleted_seen += rd[t].st.deleted_seen;
        all.failed += rd[t].st.failed;
    }
    fprintf(stderr,
            "test_concurrent: %llu searches, %llu during writes, %llu inside delete windows; "
            "bad labels %llu, wrong distances %llu, deleted labels seen %llu, failed %llu\n",
            (unsigned long long)all.searches, (unsigned long long)all.overlapped,
            (unsigned long long)all.in_window, (unsigned long long)all.bad_label,
            (unsigned long long)all.bad_dist, (unsigned long long)all.deleted_seen,
            (unsigned long long)all.failed);
    CHECK_MSG(all.overlapped >= 100, "only %llu searches overlapped a write",
              (unsigned long long)all.overlapped);
    CHECK_MSG(all.in_window >= 10, "only %llu searches ran inside a delete window",
              (unsigned long long)all.in_window);
    CHECK(all.bad_label == 0);
    CHECK(all.bad_dist == 0);
    CHECK(all.deleted_seen == 0);
    CHECK(all.failed == 0);

    /* After the churn: valid, whole, and as good as a fresh build. */
    CHECK_OK(ctx, kiln_index_check(ix));
    CHECK(kiln_index_count(ix) == n);
    int64_t *gt = malloc(ds.nq * K * sizeof *gt);
    REQUIRE(gt);
    CHECK_OK(ctx,
             kiln_knn_exact(ctx, ds.base, n, ds.q, ds.nq, ds.d, KILN_METRIC_L2, K, 0, gt, NULL));
    const double r_live = recall_of(ctx, ix, &ds, gt), r_fresh = recall_of(ctx, fresh, &ds, gt);
    fprintf(stderr, "test_concurrent: recall@10 at ef 16 after churn %.4f, fresh build %.4f\n",
            r_live, r_fresh);
    CHECK_MSG(r_live >= r_fresh - 0.01, "recall %.4f after churn, fresh %.4f", r_live, r_fresh);

    free(gt);
    free(sh.deleted_by);
    free(sh.readd_from);
    kiln_index_free(ix);
    kiln_index_free(fresh);
    test_data_free(&ds);
    kiln_ctx_free(ctx);
    return check_report("test_concurrent");
}
