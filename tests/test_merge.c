/* test_merge.c -- level 0 from candidate lists (the device pipeline's local
 * prune, union and reverse links) plus the hierarchy by insertion on levels >= 1, with
 * candidates from exact kNN so the graph side is tested on its own. */
#include "../graph/build_internal.h"
#include "../common/rng_internal.h"
#include "check.h"
#include "recall.h"
#include "kiln.h"

static void test_from_exact_candidates(kiln_ctx *ctx) {
    const size_t n = 5000, nq = 200, d = 24;
    const uint32_t width = 40; /* with duplicates and self below */
    float *x = malloc((n + nq) * d * sizeof *x);
    int64_t *nn = malloc(n * 33 * sizeof *nn), *gt = malloc(nq * 10 * sizeof *gt);
    uint32_t *cand = malloc(n * width * sizeof *cand);
    REQUIRE(x && nn && gt && cand);
    CHECK_OK(ctx, kiln_synth_clustered(ctx, n + nq, d, 20, 21, x, (size_t)(n + nq) * d));
    CHECK_OK(ctx, kiln_knn_exact(ctx, x, n, x, n, d, KILN_METRIC_L2, 33, 0, nn, NULL));
    CHECK_OK(ctx, kiln_knn_exact(ctx, x, n, x + n * d, nq, d, KILN_METRIC_L2, 10, 0, gt, NULL));
    for (size_t i = 0; i < n; i++) {
        uint32_t *c = cand + i * width;
        for (uint32_t j = 0; j < 33; j++)
            c[j] = (uint32_t)nn[i * 33 + j]; /* includes i itself */
        for (uint32_t j = 33; j < 37; j++)
            c[j] = c[j - 33 + 1]; /* duplicates */
        for (uint32_t j = 37; j < width; j++)
            c[j] = KILN_NO_NODE;
    }

    uint8_t *levels = malloc(n);
    REQUIRE(levels);
    kiln_sample_levels(levels, n, 16, 5);
    struct kiln_index *ix = NULL;
    CHECK_OK(ctx, kiln_index_alloc(ctx, n, d, KILN_METRIC_L2, 16, levels, &ix));
    REQUIRE(ix);
    memcpy(ix->vectors, x, n * d * sizeof *x);
    for (size_t i = 0; i < n; i++)
        ix->labels[i] = (int64_t)i;
    CHECK_OK(ctx, kiln_hnsw_insert_levels(ix, 100, 2, 1));
    CHECK_OK(ctx, kiln_level0_from_candidates(ix, cand, width, 2));

    /* Level-0 lists are deduplicated, bounded and contain no self link. */
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t *l = kiln_links(ix, i, 0);
        CHECK(l[0] <= ix->M0);
        total += l[0];
    }
    CHECK_MSG(total / n >= 8, "average level-0 degree %llu is too low",
              (unsigned long long)(total / n));

    /* Highways: every level-1 link is embedded in level 0 (protected: the
     * reverse pass never re-selects them). */
    uint64_t up_links = 0, embedded = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (ix->levels[i] < 1)
            continue;
        const uint32_t *u = kiln_links(ix, i, 1), *l0 = kiln_links(ix, i, 0);
        for (uint32_t j = 0; j < u[0]; j++) {
            up_links++;
            for (uint32_t t = 0; t < l0[0]; t++)
                if (l0[1 + t] == u[1 + j]) {
                    embedded++;
                    break;
                }
        }
    }
    CHECK_MSG(up_links > 0 && embedded == up_links, "%llu of %llu level-1 links are in level 0",
              (unsigned long long)embedded, (unsigned long long)up_links);

    kiln_repair_stats rs;
    CHECK_OK(ctx, kiln_repair_reachability(ix, 100, 2, &rs));
    CHECK_OK(ctx, kiln_index_check(ix));
    double r = search_recall(ctx, ix, x + n * d, nq, gt, 10, 10, 64);
    CHECK_MSG(r >= 0.95, "recall@10 at ef=64 from exact candidates: %.4f", r);
    fprintf(stderr, "merge from exact 32-NN candidates: recall@10 ef64 %.4f, repaired %llu\n", r,
            (unsigned long long)rs.links);

    kiln_index_free(ix);
    free(levels);
    free(cand);
    free(nn);
    free(gt);
    free(x);
}

static int cand_cmp(const void *a, const void *b) {
    const kiln_cand *x = a, *y = b;
    if (x->dist != y->dist)
        return x->dist < y->dist ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* kiln_cands_sort (graph/sort_internal.h) against qsort: every length from
 * 0 through past the insertion-sort cutoff, few distinct distances (ties
 * broken by id), sorted and reversed inputs. */
static void test_cands_sort(void) {
    kiln_rng rng;
    kiln_rng_seed(&rng, 3);
    kiln_cand a[300], b[300];
    size_t bad = 0, cases = 0;
    for (uint32_t n = 0; n <= 300; n += n < 64 ? 1 : 59) {
        for (int shape = 0; shape < 4; shape++) {
            for (uint32_t i = 0; i < n; i++) {
                const uint32_t r = (uint32_t)kiln_rng_below(&rng, shape == 1 ? 4 : 1000);
                a[i] = (kiln_cand){shape == 2   ? (float)i
                                   : shape == 3 ? (float)(n - i)
                                                : (float)r,
                                   (uint32_t)kiln_rng_below(&rng, 50)};
            }
            memcpy(b, a, n * sizeof *a);
            kiln_cands_sort(a, n);
            qsort(b, n, sizeof *b, cand_cmp);
            bad += n && memcmp(a, b, n * sizeof *a) != 0;
            cases++;
        }
    }
    CHECK_MSG(bad == 0, "%zu of %zu sorts differ from qsort", bad, cases);
}

/* The vector-free selection's parts (graph/prune.c decisions 4 and 5):
 * the reverse hash is the hash of the reverse edge; the hash selection
 * keeps the nearest of each bucket, in order, up to cap; the local prune
 * keeps the heuristic's picks and the nearest others up to fill. */
static void test_hash_selection(kiln_ctx *ctx) {
    const uint32_t d = 16, n = 64;
    float *planes = NULL, x[64 * 16], proj[64 * KILN_HASH_BITS];
    kiln_rng rng;
    kiln_rng_seed(&rng, 9);
    for (uint32_t i = 0; i < n * d; i++)
        x[i] = (float)kiln_rng_uniform(&rng);
    CHECK_OK(ctx, kiln_hash_planes(ctx, d, 7, &planes));
    REQUIRE(planes);
    for (uint32_t i = 0; i < n; i++)
        kiln_hash_project(planes, d, x + i * d, proj + i * KILN_HASH_BITS);
    uint32_t bad_rev = 0, distinct = 0;
    for (uint32_t i = 1; i < n; i++) {
        const uint32_t h = kiln_hash_edge(proj, proj + i * KILN_HASH_BITS);
        bad_rev += kiln_hash_reverse(h) != kiln_hash_edge(proj + i * KILN_HASH_BITS, proj);
        distinct += h != kiln_hash_edge(proj, proj + (i - 1) * KILN_HASH_BITS);
        CHECK(h <= KILN_HASH_MASK);
    }
    CHECK_MSG(bad_rev == 0, "%u reverse hashes differ from the reverse edge's", bad_rev);
    CHECK_MSG(distinct > n / 2, "only %u of %u neighbouring hashes differ", distinct, n - 1);

    /* Buckets 5, 3, 5, 7, 3, 9 by distance: the first of each stays. */
    kiln_hcand c[6] = {{1, 10, 5}, {2, 11, 3}, {3, 12, 5}, {4, 13, 7}, {5, 14, 3}, {6, 15, 9}};
    uint32_t k = kiln_hash_select(c, 6, 16, 0);
    CHECK(k == 4 && c[0].id == 10 && c[1].id == 11 && c[2].id == 13 && c[3].id == 15);
    kiln_hcand c2[6] = {{1, 10, 5}, {2, 11, 3}, {3, 12, 5}, {4, 13, 7}, {5, 14, 3}, {6, 15, 9}};
    k = kiln_hash_select(c2, 6, 2, 0);
    CHECK(k == 2 && c2[0].id == 10 && c2[1].id == 11);
    /* With a fill of 4 the nearest unchosen (12, 13) follow, in order. */
    kiln_hcand c3[6] = {{1, 10, 5}, {2, 11, 3}, {3, 12, 5}, {4, 13, 7}, {5, 14, 3}, {6, 15, 9}};
    k = kiln_hash_select(c3, 6, 2, 4);
    CHECK(k == 4 && c3[0].id == 10 && c3[1].id == 11 && c3[2].id == 12 && c3[3].id == 13);

    /* Local prune of row 0's 40 nearest rows. */
    kiln_dist_fn l2 = kiln_distance_fn(KILN_METRIC_L2);
    kiln_cand sorted[63];
    for (uint32_t i = 1; i < n; i++)
        sorted[i - 1] = (kiln_cand){l2(x, x + i * d, d), i};
    kiln_cands_sort(sorted, n - 1);
    uint32_t heur[63], pick[63];
    const uint32_t nh = kiln_select_rows(x, d, l2, sorted, 40, 32, heur);
    const uint32_t np = kiln_prune_local(x, d, l2, sorted, 40, 32, 12, pick);
    CHECK_MSG(nh >= 1 && nh < 40, "the heuristic kept %u of 40", nh);
    CHECK(np == (nh > 12 ? nh : 12));
    bool ascending = true, has_heur = true, nearest = true;
    for (uint32_t j = 1; j < np; j++)
        ascending &= pick[j] > pick[j - 1];
    for (uint32_t a = 0; a < nh; a++) {
        bool found = false;
        for (uint32_t j = 0; j < np && !found; j++)
            found = pick[j] == heur[a];
        has_heur &= found;
    }
    /* The fill takes the nearest pruned ones: nothing left out is nearer
     * than a filled one. */
    for (uint32_t j = 0; j < np; j++) {
        bool filled = true;
        for (uint32_t a = 0; a < nh && filled; a++)
            filled = heur[a] != pick[j];
        for (uint32_t i = 0; filled && i < pick[j]; i++) {
            bool in = false;
            for (uint32_t t = 0; t < np && !in; t++)
                in = pick[t] == i;
            nearest &= in;
        }
    }
    CHECK_MSG(ascending && has_heur && nearest,
              "local prune: ascending %d, keeps the heuristic's %d, nearest fill %d", ascending,
              has_heur, nearest);
    free(planes);
}

int main(void) {
    kiln_ctx *ctx;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    kiln_ctx_set_progress(ctx, KILN_PROGRESS_OFF);
    test_cands_sort();
    test_hash_selection(ctx);
    test_from_exact_candidates(ctx);
    kiln_ctx_free(ctx);
    return check_report("test_merge");
}
