/* afile.c -- atomic file output, and opening a regular file for input (see afile_internal.h).
 *
 * Design decisions:
 *  1. The temporary file lives in the target's folder so rename() is atomic
 *     (same file system) and a crash leaves only a "*.tmp.*" file behind.
 *  2. Write errors are sticky: the first one is reported and every later
 *     call, commit included, fails, so callers may check only at the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "afile_internal.h"
#include "ctx_internal.h"

struct kiln_afile {
    kiln_ctx *ctx;
    FILE *fp;
    char *path; /* final name */
    char *tmp;  /* temporary name */
    size_t offset;
    kiln_status err; /* first error, sticky */
};

kiln_status kiln_afile_open(kiln_ctx *ctx, const char *path, kiln_afile **out) {
    *out = NULL;
    if (!path || !*path)
        return kiln_fail(ctx, KILN_E_ARG, "empty output path");
    kiln_afile *af = calloc(1, sizeof *af);
    size_t len = strlen(path);
    char *tmp = malloc(len + 16);
    char *dup = strdup(path);
    if (!af || !tmp || !dup) {
        free(af), free(tmp), free(dup);
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory opening %s", path);
    }
    snprintf(tmp, len + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(af), free(tmp), free(dup);
        return kiln_fail(ctx, KILN_E_IO, "%s: cannot create file: %s", path, strerror(e));
    }
    fchmod(fd, 0644);
    af->fp = fdopen(fd, "wb");
    if (!af->fp) {
        int e = errno;
        close(fd);
        unlink(tmp);
        free(af), free(tmp), free(dup);
        return kiln_fail(ctx, KILN_E_IO, "%s: %s", path, strerror(e));
    }
    setvbuf(af->fp, NULL, _IOFBF, 1 << 20);
    af->ctx = ctx;
    af->path = dup;
    af->tmp = tmp;
    *out = af;
    return KILN_OK;
}

static kiln_status afile_error(kiln_afile *af, int e) {
    if (af->err == KILN_OK)
        af->err = kiln_fail(af->ctx, KILN_E_IO, "%s: write failed at byte %zu: %s", af->path,
                            af->offset, strerror(e));
    return af->err;
}

kiln_status kiln_afile_write(kiln_afile *af, const void *buf, size_t len) {
    if (af->err != KILN_OK)
        return af->err;
    if (len && fwrite(buf, 1, len, af->fp) != len)
        return afile_error(af, errno ? errno : EIO);
    af->offset += len;
    return KILN_OK;
}

kiln_status kiln_afile_pad(kiln_afile *af, size_t align) {
    static const char zeros[64];
    while (af->err == KILN_OK && af->offset % align) {
        size_t n = align - af->offset % align;
        kiln_afile_write(af, zeros, n < sizeof zeros ? n : sizeof zeros);
    }
    return af->err;
}

size_t kiln_afile_offset(const kiln_afile *af) { return af->offset; }

kiln_status kiln_afile_pwrite(kiln_afile *af, const void *buf, size_t len, size_t offset) {
    if (af->err != KILN_OK)
        return af->err;
    if (fflush(af->fp) != 0)
        return afile_error(af, errno);
    ssize_t w = pwrite(fileno(af->fp), buf, len, (off_t)offset);
    if (w < 0 || (size_t)w != len)
        return afile_error(af, w < 0 ? errno : EIO);
    return KILN_OK;
}

static void afile_release(kiln_afile *af) {
    free(af->path);
    free(af->tmp);
    free(af);
}

kiln_status kiln_afile_commit(kiln_afile *af) {
    kiln_status st = af->err;
    if (st == KILN_OK && (fflush(af->fp) != 0 || fsync(fileno(af->fp)) != 0))
        st = afile_error(af, errno);
    if (fclose(af->fp) != 0 && st == KILN_OK)
        st = afile_error(af, errno);
    af->fp = NULL;
    if (st == KILN_OK && rename(af->tmp, af->path) != 0)
        st = kiln_fail(af->ctx, KILN_E_IO, "%s: cannot rename temporary file into place: %s",
                       af->path, strerror(errno));
    if (st != KILN_OK) {
        unlink(af->tmp);
        afile_release(af);
        return st;
    }
    /* Make the rename itself durable. */
    char *dir_copy = strdup(af->path);
    if (dir_copy) {
        int dfd = open(dirname(dir_copy), O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dir_copy);
    }
    afile_release(af);
    return KILN_OK;
}

void kiln_afile_abort(kiln_afile *af) {
    if (!af)
        return;
    if (af->fp)
        fclose(af->fp);
    unlink(af->tmp);
    afile_release(af);
}

/* ==== Input ==== */

kiln_status kiln_open_regular(kiln_ctx *ctx, const char *path, int *fd, uint64_t *size) {
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0)
        return kiln_fail(ctx, KILN_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    const char *what = NULL;
    int err = 0;
    if (fstat(*fd, &sb) != 0) {
        what = "cannot stat";
        err = errno;
    } else if (!S_ISREG(sb.st_mode)) {
        what = "not a regular file";
    }
    if (what) {
        close(*fd);
        *fd = -1;
        return kiln_fail(ctx, KILN_E_IO, "%s: %s%s%s", path, what, err ? ": " : "",
                         err ? strerror(err) : "");
    }
    *size = (uint64_t)sb.st_size;
    return KILN_OK;
}
