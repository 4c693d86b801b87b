/* dist_internal.h -- the few collectives a distributed build needs, over
 * MPI's world communicator (common/dist.c). Compiled twice: with
 * KILN_HAVE_MPI into libkiln when MPI was found, and without it (one
 * process: rank 0 of 1, every collective a copy or a no-op) into
 * libkiln-core and into a libkiln built without MPI, so that the callers in
 * graph/ and host/ have one code path.
 *
 * Every function is collective unless it says otherwise: every rank calls
 * it, in the same order. A failure of the communication itself is
 * KILN_E_IO with MPI's message; the launcher (mpirun) ends the job when a
 * rank dies. */
#ifndef KILN_DIST_INTERNAL_H
#define KILN_DIST_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

/* kiln_dist_agree (kiln.h) is the collective failures travel by. */

/* Sums n uint64 values over the ranks into every rank's buf. */
kiln_status kiln_dist_sum_u64(kiln_ctx *ctx, uint64_t *buf, size_t n);

/* The largest of one double over the ranks. */
kiln_status kiln_dist_max_f64(kiln_ctx *ctx, double *v);

/* Broadcast of rank root's len bytes at *buf: every other rank gets them
 * in *buf (malloc'd, the caller's to free; NULL when empty) and *len. The
 * length goes first, then the bytes in pieces of at most a GiB (MPI's
 * tree, so the root sends about log2(ranks) copies, not ranks - 1). One
 * rank: nothing moves. */
kiln_status kiln_dist_bcast(kiln_ctx *ctx, int root, void **buf, uint64_t *len);

/* Personalised all-to-all of byte buffers, what a build across ranks sends
 * each owner (candidate records, reverse edges): this rank sends the
 * send_len[r] bytes at send[r] to every rank r (its own are copied), and
 * gets rank r's buffer for it in recv[r] (malloc'd, the caller's to free;
 * NULL when empty), recv_len[r] bytes. The lengths go first (one
 * all-to-all), then pairwise rounds (round k: to rank + k, from rank - k)
 * in pieces of at most a GiB, so any sizes and any number of ranks work.
 * On failure every recv[r] is NULL. */
kiln_status kiln_dist_exchange(kiln_ctx *ctx, const void *const *send, const uint64_t *send_len,
                               void **recv, uint64_t *recv_len);

#endif /* KILN_DIST_INTERNAL_H */
