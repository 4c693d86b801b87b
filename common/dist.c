/* dist.c -- distributed runs: MPI set-up, the launcher's environment, and
 * the collectives of common/dist_internal.h. Built with KILN_HAVE_MPI into
 * a libkiln configured with MPI, and without it everywhere else, where the
 * world is one rank (CMakeLists.txt compiles this file once per flavour).
 *
 * Design decisions:
 *  1. A launcher announces itself in the environment before MPI exists in
 *     the process: Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE, MPICH's
 *     Hydra and Slurm's PMI set PMI_SIZE, MVAPICH MV2_COMM_WORLD_SIZE, and
 *     srun SLURM_STEP_NUM_TASKS inside a job step; the ranks of this node
 *     and this rank's place among them come the same way
 *     (OMPI_COMM_WORLD_LOCAL_SIZE / _RANK, MPICH's MPI_LOCALNRANKS /
 *     MPI_LOCALRANKID, Slurm's SLURM_LOCALID). A kiln without MPI that
 *     sees a world of more than one refuses to run (kiln_dist_init), since N
 *     copies of one build writing one output would race, and none would be
 *     faster.
 *  2. MPI_THREAD_FUNNELED: only the thread that called kiln_dist_init
 *     communicates; the OpenMP teams never do.
 *  3. kiln_dist_agree is how a failure travels: every rank reaches the same
 *     agree with its status, the lowest failing rank broadcasts its message,
 *     and every rank returns that status. So no rank waits forever at a
 *     collective its peer will never reach, and the message that ends the
 *     job names the rank and what went wrong there.
 *  4. Byte counts above INT_MAX go in pieces of DIST_PIECE, since MPI's
 *     counts are int.
 */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx_internal.h"
#include "dist_internal.h"

#ifdef KILN_HAVE_MPI
#include <mpi.h>
#endif

#define DIST_PIECE ((size_t)1 << 30) /* bytes per MPI call (decision 4) */

#ifdef KILN_HAVE_MPI
/* The piece size: DIST_PIECE, or a test's smaller one (KILN_TEST_DIST_PIECE
 * bytes), so that the splitting is exercised without gigabytes. */
static size_t dist_piece(void) {
    const char *t = getenv("KILN_TEST_DIST_PIECE");
    const long v = t ? atol(t) : 0;
    return v > 0 && (size_t)v < DIST_PIECE ? (size_t)v : DIST_PIECE;
}
#endif

static int dist_rank, dist_size = 1;

/* Whether this receive's buffer fails as if memory ran out: the test hook
 * KILN_TEST_DIST_NOMEM=R:K fails the K-th receive buffer on rank R, so that
 * tests/test_dist.c can show every rank stopping together. */
static bool dist_test_alloc_fails(void) {
    static int seen;
    const char *t = getenv("KILN_TEST_DIST_NOMEM");
    const char *colon = t ? strchr(t, ':') : NULL;
    return colon && atoi(t) == dist_rank && ++seen == atoi(colon + 1);
}
#ifdef KILN_HAVE_MPI
static int dist_started; /* kiln_dist_init called MPI_Init_thread */
#endif

int kiln_dist_available(void) {
#ifdef KILN_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

/* The value of the first of n launcher variables that is set to at least
 * min, else dflt (decision 1). */
static int env_first(const char *const *vars, size_t n, int min, int dflt) {
    for (size_t i = 0; i < n; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) >= min)
            return atoi(v);
    }
    return dflt;
}

int kiln_dist_launched_size(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"};
    const int n = env_first(vars, 3, 1, 0);
    if (n > 0)
        return n;
    const char *v = getenv("SLURM_STEP_NUM_TASKS");
    if (v && getenv("SLURM_STEP_ID") && atoi(v) > 0)
        return atoi(v);
    return 1;
}

int kiln_dist_local_size(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"};
    return env_first(vars, 2, 2, 1);
}

int kiln_dist_local_rank(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                       "SLURM_LOCALID"};
    return env_first(vars, 3, 0, 0);
}

kiln_status kiln_dist_init(kiln_ctx *ctx, int *argc, char ***argv) {
#ifdef KILN_HAVE_MPI
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return kiln_fail(ctx, KILN_E_IO, "MPI_Init_thread failed");
        dist_started = 1;
        if (provided < MPI_THREAD_FUNNELED)
            return kiln_fail(ctx, KILN_E_UNSUPPORTED,
                             "this MPI gives no MPI_THREAD_FUNNELED (only %d): kiln's threads "
                             "need it",
                             provided);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &dist_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dist_size);
    return KILN_OK;
#else
    (void)argc;
    (void)argv;
    const int n = kiln_dist_launched_size();
    if (n > 1)
        return kiln_fail(ctx, KILN_E_UNSUPPORTED,
                         "started as one of %d ranks (mpirun, srun), but this kiln was built "
                         "without MPI: configure with libopenmpi-dev installed (cmake finds MPI; "
                         "-DKILN_MPI=ON requires it), or run one process",
                         n);
    return KILN_OK;
#endif
}

void kiln_dist_finalize(void) {
#ifdef KILN_HAVE_MPI
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (dist_started && !finalized)
        MPI_Finalize();
    dist_started = 0;
#endif
    dist_rank = 0;
    dist_size = 1;
}

int kiln_dist_rank(void) { return dist_rank; }
int kiln_dist_size(void) { return dist_size; }

#ifdef KILN_HAVE_MPI
static kiln_status mpi_failed(kiln_ctx *ctx, const char *what, int code) {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(code, msg, &len);
    return kiln_fail(ctx, KILN_E_IO, "rank %d of %d: %s failed: %s", dist_rank, dist_size, what,
                     msg);
}
#endif

/* Decision 3. */
kiln_status kiln_dist_agree(kiln_ctx *ctx, kiln_status st) {
    if (dist_size == 1)
        return st;
#ifdef KILN_HAVE_MPI
    int mine = st == KILN_OK ? INT_MAX : dist_rank, first = INT_MAX;
    int rc = MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return mpi_failed(ctx, "MPI_Allreduce", rc);
    if (first == INT_MAX)
        return KILN_OK;
    struct {
        int status;
        char msg[KILN_ERRMSG_MAX];
    } what = {0};
    if (dist_rank == first) {
        what.status = (int)st;
        snprintf(what.msg, sizeof what.msg, "%s", kiln_errmsg(ctx));
    }
    rc = MPI_Bcast(&what, (int)sizeof what, MPI_BYTE, first, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return mpi_failed(ctx, "MPI_Bcast", rc);
    what.msg[sizeof what.msg - 1] = '\0';
    if (strncmp(what.msg, "rank ", 5) == 0) /* already named (a nested agree) */
        return kiln_fail(ctx, (kiln_status)what.status, "%s", what.msg);
    return kiln_fail(ctx, (kiln_status)what.status, "rank %d of %d: %s", first, dist_size,
                     what.msg);
#else
    (void)ctx;
    return st;
#endif
}

kiln_status kiln_dist_sum_u64(kiln_ctx *ctx, uint64_t *buf, size_t n) {
    if (dist_size == 1)
        return KILN_OK;
#ifdef KILN_HAVE_MPI
    const size_t piece = DIST_PIECE / sizeof *buf;
    for (size_t off = 0; off < n; off += piece) {
        const size_t m = n - off < piece ? n - off : piece;
        const int rc =
            MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)m, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS)
            return mpi_failed(ctx, "MPI_Allreduce", rc);
    }
#else
    (void)ctx;
    (void)buf;
    (void)n;
#endif
    return KILN_OK;
}

kiln_status kiln_dist_max_f64(kiln_ctx *ctx, double *v) {
    if (dist_size == 1)
        return KILN_OK;
#ifdef KILN_HAVE_MPI
    const int rc = MPI_Allreduce(MPI_IN_PLACE, v, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return mpi_failed(ctx, "MPI_Allreduce", rc);
#else
    (void)ctx;
    (void)v;
#endif
    return KILN_OK;
}

kiln_status kiln_dist_bcast(kiln_ctx *ctx, int root, void **buf, uint64_t *len) {
    if (dist_size == 1)
        return KILN_OK;
#ifdef KILN_HAVE_MPI
    int rc = MPI_Bcast(len, 1, MPI_UINT64_T, root, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS)
        return mpi_failed(ctx, "MPI_Bcast", rc);
    kiln_status st = KILN_OK;
    if (dist_rank != root) {
        *buf = NULL;
        if (*len && (dist_test_alloc_fails() || !(*buf = malloc((size_t)*len))))
            st = kiln_fail(ctx, KILN_E_NOMEM,
                           "rank %d of %d: out of memory for %llu bytes from rank %d", dist_rank,
                           dist_size, (unsigned long long)*len, root);
    }
    /* A rank that cannot take the bytes must not leave the others waiting
     * in the broadcast: they all stop. */
    if ((st = kiln_dist_agree(ctx, st))) {
        if (dist_rank != root) {
            free(*buf);
            *buf = NULL;
        }
        return st;
    }
    const size_t piece = dist_piece();
    for (uint64_t off = 0; off < *len; off += piece) {
        const size_t m = *len - off < piece ? (size_t)(*len - off) : piece;
        if ((rc = MPI_Bcast((char *)*buf + off, (int)m, MPI_BYTE, root, MPI_COMM_WORLD)) !=
            MPI_SUCCESS) {
            if (dist_rank != root) {
                free(*buf);
                *buf = NULL;
            }
            return mpi_failed(ctx, "MPI_Bcast", rc);
        }
    }
#else
    (void)ctx;
    (void)root;
    (void)buf;
    (void)len;
#endif
    return KILN_OK;
}

static void free_all(void **recv, int n) {
    for (int r = 0; r < n; r++) {
        free(recv[r]);
        recv[r] = NULL;
    }
}

kiln_status kiln_dist_exchange(kiln_ctx *ctx, const void *const *send, const uint64_t *send_len,
                               void **recv, uint64_t *recv_len) {
    const int n = dist_size, me = dist_rank;
    for (int r = 0; r < n; r++)
        recv[r] = NULL;
#ifdef KILN_HAVE_MPI
    int rc = MPI_SUCCESS;
    if (n > 1 && (rc = MPI_Alltoall(send_len, 1, MPI_UINT64_T, recv_len, 1, MPI_UINT64_T,
                                    MPI_COMM_WORLD)) != MPI_SUCCESS)
        return mpi_failed(ctx, "MPI_Alltoall", rc);
#endif
    if (n == 1) /* one rank (MPI not started, or a world of one) */
        recv_len[0] = send_len[0];
    kiln_status st = KILN_OK;
    for (int r = 0; r < n && st == KILN_OK; r++)
        if (recv_len[r] && (dist_test_alloc_fails() || !(recv[r] = malloc((size_t)recv_len[r]))))
            st = kiln_fail(ctx, KILN_E_NOMEM,
                           "rank %d of %d: out of memory for %llu bytes from rank %d", me, n,
                           (unsigned long long)recv_len[r], r);
    /* A rank that cannot take its bytes must not leave its peers waiting in
     * the rounds below: they all stop here (decision 3). */
    if ((st = kiln_dist_agree(ctx, st))) {
        free_all(recv, n);
        return st;
    }
    if (recv_len[me])
        memcpy(recv[me], send[me], (size_t)recv_len[me]);
#ifdef KILN_HAVE_MPI
    const size_t piece = dist_piece();
    for (int k = 1; k < n; k++) {
        const int to = (me + k) % n, from = (me - k + n) % n;
        const uint64_t out = send_len[to], in = recv_len[from];
        for (uint64_t off = 0; off < out || off < in; off += piece) {
            const size_t so = off < out ? (size_t)(out - off < piece ? out - off : piece) : 0;
            const size_t si = off < in ? (size_t)(in - off < piece ? in - off : piece) : 0;
            /* A side with nothing left is MPI_PROC_NULL: no empty message is sent that
             * its peer would not receive, so each pair matches piece for piece. */
            rc = MPI_Sendrecv(so ? (const char *)send[to] + off : NULL, (int)so, MPI_BYTE,
                              so ? to : MPI_PROC_NULL, k, si ? (char *)recv[from] + off : NULL,
                              (int)si, MPI_BYTE, si ? from : MPI_PROC_NULL, k, MPI_COMM_WORLD,
                              MPI_STATUS_IGNORE);
            if (rc != MPI_SUCCESS) {
                free_all(recv, n);
                return mpi_failed(ctx, "MPI_Sendrecv", rc);
            }
        }
    }
#endif
    return KILN_OK;
}
