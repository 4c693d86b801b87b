/* workdir_internal.h -- a build's work directory: the checksummed
 * intermediates that let a long build bound its memory (spills) and continue
 * after being killed (--resume).
 *
 * A work dir holds a manifest (the fingerprint of the inputs and parameters
 * the build was started with, and a one-line description of them) and named
 * work files. Each work file is written atomically (common/afile.c) and is a
 * 64-byte header, a table of segments and the segments, every part with its
 * own CRC-32C, like an index file: so a file either is whole and verifiable
 * or is not there at all, and a reader can take one segment without reading
 * the rest. An exclusive flock on DIR/lock.kw keeps two builds out of one dir.
 */
#ifndef KILN_WORKDIR_INTERNAL_H
#define KILN_WORKDIR_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

typedef struct kiln_workdir kiln_workdir;

/* Bytes moved through a work dir, for the build report. */
typedef struct kiln_workdir_stats {
    uint64_t bytes_written, bytes_read;
    uint64_t files_written, files_reused;
} kiln_workdir_stats;

/* Opens dir (creating it, mode 0700, when absent; its parent must exist).
 * An existing manifest with another fingerprint is refused (KILN_E_FORMAT,
 * "holds a build of other inputs or parameters"), and so is an existing one
 * without resume ("holds an unfinished build: --resume continues it"). A new
 * or resumed dir gets this build's manifest. desc: a short description of
 * inputs and parameters, kept in the manifest for that message. */
kiln_status kiln_workdir_open(kiln_ctx *ctx, const char *dir, uint64_t fingerprint,
                              const char *desc, bool resume, kiln_workdir **out);
/* Closes the dir (releasing the lock) and keeps its files; NULL is a no-op. */
void kiln_workdir_close(kiln_workdir *wd);
/* Removes every work file, the manifest and the lock, and the dir itself
 * when this build created it (or it is left empty); then closes. */
kiln_status kiln_workdir_remove(kiln_workdir *wd);
const char *kiln_workdir_path(const kiln_workdir *wd);
kiln_workdir_stats kiln_workdir_stats_get(const kiln_workdir *wd); /* zeros for NULL */
/* Free bytes of the file system the dir is on (statvfs), UINT64_MAX when
 * unknown. */
uint64_t kiln_workdir_free_bytes(const kiln_workdir *wd);

/* One segment of a work file to write. */
typedef struct kiln_work_seg {
    const void *data;
    size_t len;
} kiln_work_seg;

/* Writes work file `name` (letters, digits, '-' and '.' only) from n_segs
 * segments, atomically; replaces one of the same name. */
kiln_status kiln_workdir_put(kiln_workdir *wd, const char *name, const kiln_work_seg *segs,
                             uint32_t n_segs);
/* Whether work file `name` exists (not whether it is valid). */
bool kiln_workdir_has(const kiln_workdir *wd, const char *name);

/* An open work file, header and table verified. */
typedef struct kiln_workfile kiln_workfile;

/* ==== Segments between ranks ====
 * A build across MPI ranks (host/device_build.c decision 11) sends work-file
 * segments from rank to rank; these read such a message, checking every
 * length and record against it before anything points into it. */

/* A message of n_segs segments, [n_segs x u64 length][their bytes]: segs[i]
 * points into msg. KILN_E_FORMAT, naming `what`, when the lengths do not
 * add up to len. */
kiln_status kiln_work_segs_unpack(kiln_ctx *ctx, const void *msg, uint64_t len, uint32_t n_segs,
                                  kiln_work_seg *segs, const char *what);

/* The words of the record at w, where left words remain; 0 when it does
 * not fit or is malformed. */
typedef uint64_t (*kiln_rec_len_fn)(const void *user, const uint32_t *w, uint64_t left);
/* A batch record [node, n, n x (dist, id, hash)] with n <= *(uint32_t *)user. */
uint64_t kiln_rec_len_batch(const void *user, const uint32_t *w, uint64_t left);
/* A fixed record of *(uint32_t *)user words (>= 1), such as a reverse edge. */
uint64_t kiln_rec_len_fixed(const void *user, const uint32_t *w, uint64_t left);

/* Cuts a message of uint32 records, each headed by its node id, into
 * segs[0..parts) by partition (node / part_nodes): every record must fit
 * the message, its node lie in [lo, hi) and its partition not precede the
 * one before; partitions with no record get empty segments (pointing at
 * segs). KILN_E_FORMAT naming `what` and the word otherwise. */
kiln_status kiln_work_segs_split(kiln_ctx *ctx, const void *msg, uint64_t len, uint64_t lo,
                                 uint64_t hi, uint32_t part_nodes, uint32_t parts,
                                 kiln_rec_len_fn rec_len, const void *user, kiln_work_seg *segs,
                                 const char *what);

/* Opens work file `name` and verifies its header, fingerprint and table;
 * expect_segs 0 accepts any count. Any defect is KILN_E_FORMAT or
 * KILN_E_CHECKSUM naming the file. */
kiln_status kiln_workfile_open(kiln_workdir *wd, const char *name, uint32_t expect_segs,
                               kiln_workfile **out);
uint32_t kiln_workfile_segs(const kiln_workfile *wf);
uint64_t kiln_workfile_seg_len(const kiln_workfile *wf, uint32_t seg);
/* Reads segment seg (seg_len bytes) into buf and verifies its CRC. Reads
 * of one dir's files go through one bounce buffer (workdir.c decision 4):
 * one thread at a time. */
kiln_status kiln_workfile_read(kiln_workfile *wf, uint32_t seg, void *buf);
void kiln_workfile_close(kiln_workfile *wf);

#endif /* KILN_WORKDIR_INTERNAL_H */
