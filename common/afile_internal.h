/* afile_internal.h -- atomic file output: write to a temporary file beside
 * the target, fsync, rename over the target, fsync the folder. A crash or a
 * failure at any point leaves either the old file or nothing under the final
 * name, never a half-written one. Several outputs can be committed together
 * (all replaced, or none, unless a rename fails after an earlier one
 * succeeded: afile.c decision 3). Temporaries are removed on failure, on SIGHUP,
 * SIGINT, SIGTERM and SIGXFSZ, and, when a writer was killed outright, by the
 * next open of the same output. */
#ifndef KILN_AFILE_INTERNAL_H
#define KILN_AFILE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kiln.h"

typedef struct kiln_afile kiln_afile;

/* Creates ".<name>.kiln-tmp.<pid>.<random>" beside path (beside its target
 * when path is a symbolic link), removing stale temporaries of path left by
 * dead processes. A new file gets 0666 minus the umask, a replaced one keeps
 * its mode. Fails when path exists and is not a regular file, or is a
 * symbolic link that does not resolve. */
kiln_status kiln_afile_open(kiln_ctx *ctx, const char *path, kiln_afile **out);
/* Buffered write; errors are sticky and reported here and by commit. */
kiln_status kiln_afile_write(kiln_afile *af, const void *buf, size_t len);
/* Writes zero bytes until the file offset is a multiple of align. */
kiln_status kiln_afile_pad(kiln_afile *af, size_t align);
/* Bytes written so far (the current file offset). */
size_t kiln_afile_offset(const kiln_afile *af);
/* Overwrites bytes at an earlier offset (for headers written last). */
kiln_status kiln_afile_pwrite(kiln_afile *af, const void *buf, size_t len, size_t offset);
/* Flush, fsync, rename, fsync folder; frees af in every case. */
kiln_status kiln_afile_commit(kiln_afile *af);
/* Commits count files together: all are flushed and fsynced, and only when
 * every one succeeded are they renamed into place (each closed, and so
 * unlocked, after its rename); otherwise no target is touched and every
 * temporary is removed. A rename failing after an earlier one succeeded
 * leaves that earlier target replaced (afile.c decision 3). Frees every
 * afs[i] in every case. */
kiln_status kiln_afile_commit_all(kiln_afile *const *afs, size_t count);
/* Removes the temporary file and frees af; NULL is a no-op. */
void kiln_afile_abort(kiln_afile *af);

/* Sets (on) or clears O_DIRECT on fd with fcntl; false when it cannot,
 * which for on includes file systems that refuse it and hosts without it.
 * Shared by the outputs here and the work file reads (common/workdir.c). */
bool kiln_fd_direct(int fd, bool on);
/* The input side: opens path read-only (close-on-exec, and without blocking
 * on a FIFO) and checks that it is a regular file; *fd is the caller's to
 * close, *size its length in bytes. Fails with "PATH: cannot open: ...",
 * "cannot stat: ..." or "not a regular file (a FIFO)" and the like, leaving
 * nothing open. */
kiln_status kiln_open_regular(kiln_ctx *ctx, const char *path, int *fd, uint64_t *size);
/* Reads exactly len bytes at offset of fd (path names it in errors),
 * retrying short reads and EINTR: "PATH: read failed at byte N: ..." or
 * "unexpected end of file at byte N (file changed while reading?)", both
 * KILN_E_IO. */
kiln_status kiln_pread_full(kiln_ctx *ctx, int fd, const char *path, void *buf, size_t len,
                            uint64_t offset);

#endif /* KILN_AFILE_INTERNAL_H */
