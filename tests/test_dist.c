/* test_dist.c -- the collectives of common/dist.c. Run by ctest as one
 * process (the world of one rank: every exchange is a copy), and by
 * tests/mpi/check.sh under `mpirun -np 3` with KILN_TEST_DIST_PIECE set
 * small, so that buffers of unequal sizes (empty ones included) travel
 * between every pair of ranks in several pieces each: every byte received
 * must be the sender's, a broadcast must bring every rank the root's
 * bytes, and kiln_dist_agree must give every rank the lowest failing
 * rank's status and message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/ctx_internal.h"
#include "../common/dist_internal.h"
#include "check.h"
#include "kiln.h"

/* Bytes rank `from` sends rank `to`: a length and contents both depend on
 * the pair, some pairs send nothing. */
static uint64_t pair_len(int from, int to) {
    return (uint64_t)((from * 7 + to * 13) % 5) * 3001 + (from == to ? 17 : 0);
}
static uint8_t pair_byte(int from, int to, uint64_t i) {
    return (uint8_t)(i * 31 + (uint64_t)from * 101 + (uint64_t)to * 7);
}

int main(int argc, char **argv) {
    kiln_ctx *ctx;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    if (kiln_dist_launched_size() > 1 && kiln_dist_init(ctx, &argc, &argv) != KILN_OK)
        SKIP("%s", kiln_errmsg(ctx));
    const int me = kiln_dist_rank(), n = kiln_dist_size();
    if (getenv("KILN_TEST_DIST_NOMEM") && n > 1) {
        /* tests/mpi/check.sh sets KILN_TEST_DIST_NOMEM=1:1: rank 1's first
         * receive buffer fails. The exchange must fail on every rank with
         * rank 1's message instead of leaving the others waiting, and the
         * next exchange and broadcast must work. */
        const void **snd = calloc((size_t)n, sizeof *snd);
        void **rcv = calloc((size_t)n, sizeof *rcv);
        uint64_t *sl = calloc((size_t)n, sizeof *sl), *rl = calloc((size_t)n, sizeof *rl);
        static const char bytes[100] = "a message of a hundred bytes";
        REQUIRE(snd && rcv && sl && rl);
        for (int r = 0; r < n; r++) {
            snd[r] = bytes;
            sl[r] = sizeof bytes;
        }
        char want[64];
        snprintf(want, sizeof want, "rank 1 of %d: out of memory", n);
        CHECK_FAILS(ctx, kiln_dist_exchange(ctx, snd, sl, rcv, rl), KILN_E_NOMEM, want);
        for (int r = 0; r < n; r++)
            CHECK(rcv[r] == NULL);
        CHECK_OK(ctx, kiln_dist_exchange(ctx, snd, sl, rcv, rl));
        for (int r = 0; r < n; r++) {
            CHECK(rl[r] == sizeof bytes && rcv[r] && memcmp(rcv[r], bytes, sizeof bytes) == 0);
            free(rcv[r]);
        }
        free((void *)snd);
        free(rcv);
        free(sl);
        free(rl);
        kiln_ctx_free(ctx);
        const int rc = check_report("test_dist (a receive out of memory)");
        kiln_dist_finalize();
        return rc;
    }
    void **send = calloc((size_t)n, sizeof *send), **recv = calloc((size_t)n, sizeof *recv);
    uint64_t *slen = calloc((size_t)n, sizeof *slen), *rlen = calloc((size_t)n, sizeof *rlen);
    REQUIRE(send && recv && slen && rlen);
    for (int r = 0; r < n; r++) {
        slen[r] = pair_len(me, r);
        uint8_t *b = malloc(slen[r] ? slen[r] : 1);
        REQUIRE(b);
        for (uint64_t i = 0; i < slen[r]; i++)
            b[i] = pair_byte(me, r, i);
        send[r] = b;
    }
    CHECK_OK(ctx, kiln_dist_exchange(ctx, (const void *const *)send, slen, recv, rlen));
    size_t wrong = 0;
    for (int r = 0; r < n; r++) {
        CHECK_MSG(rlen[r] == pair_len(r, me), "rank %d: %llu bytes from rank %d, not %llu", me,
                  (unsigned long long)rlen[r], r, (unsigned long long)pair_len(r, me));
        CHECK((rlen[r] == 0) == (recv[r] == NULL));
        for (uint64_t i = 0; i < rlen[r] && i < pair_len(r, me); i++)
            wrong += ((uint8_t *)recv[r])[i] != pair_byte(r, me, i);
        free(recv[r]);
        free(send[r]);
    }
    CHECK_MSG(wrong == 0, "rank %d: %zu bytes differ from what was sent", me, wrong);
    /* A broadcast from the last rank, of several pieces, and an empty one:
     * every rank ends with the root's bytes. */
    const uint64_t bcast_lens[2] = {7001, 0};
    for (int t = 0; t < 2; t++) {
        const uint64_t want_len = bcast_lens[t];
        const int root = n - 1;
        uint8_t *own = malloc(want_len + 1);
        REQUIRE(own);
        for (uint64_t i = 0; i < want_len; i++)
            own[i] = pair_byte(root, root, i);
        void *buf = me == root ? own : NULL;
        uint64_t len = me == root ? want_len : 12345;
        CHECK_OK(ctx, kiln_dist_bcast(ctx, root, &buf, &len));
        CHECK_MSG(len == want_len, "rank %d: broadcast of %llu bytes, not %llu", me,
                  (unsigned long long)len, (unsigned long long)want_len);
        CHECK(me == root || (len == 0) == (buf == NULL));
        CHECK(len == 0 || (buf && memcmp(buf, own, (size_t)len) == 0));
        if (me != root)
            free(buf);
        free(own);
    }
    /* Sums and maxima over the ranks. */
    uint64_t sum[2] = {1, (uint64_t)me};
    double mx = me * 1.5;
    CHECK_OK(ctx, kiln_dist_sum_u64(ctx, sum, 2));
    CHECK_OK(ctx, kiln_dist_max_f64(ctx, &mx));
    CHECK(sum[0] == (uint64_t)n && sum[1] == (uint64_t)n * (n - 1) / 2 && mx == (n - 1) * 1.5);
    /* A failure on the last rank (and, with three or more, on rank 1 too):
     * every rank gets the lowest one's. */
    kiln_status mine = KILN_OK;
    if (n == 1 || me == n - 1 || me == 1)
        mine = kiln_fail(ctx, me == 1 && n > 2 ? KILN_E_NOMEM : KILN_E_IO, "boom on %d", me);
    const int first = n == 1 ? 0 : 1; /* rank 1 fails wherever there is one */
    char want[64];
    if (n > 1)
        snprintf(want, sizeof want, "rank %d of %d: boom on %d", first, n, first);
    else
        snprintf(want, sizeof want, "boom on 0");
    CHECK_FAILS(ctx, kiln_dist_agree(ctx, mine), n > 2 ? KILN_E_NOMEM : KILN_E_IO, want);
    CHECK(kiln_dist_agree(ctx, KILN_OK) == KILN_OK);
    free(send);
    free(recv);
    free(slen);
    free(rlen);
    kiln_ctx_free(ctx);
    const int rc = check_report("test_dist");
    kiln_dist_finalize();
    return rc;
}
