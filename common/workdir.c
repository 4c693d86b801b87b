/* workdir.c -- a build's work directory (common/workdir_internal.h).
 *
 * Work file layout (all integers little-endian):
 *   header, 64 bytes: magic "KILNWORK", u32 version (1), u32 segment count,
 *     u64 fingerprint, u64 file bytes, u32 table CRC-32C, 28 reserved zero
 *     bytes, u32 header CRC-32C of bytes 0..59;
 *   table: per segment u64 offset, u64 length, u32 CRC-32C, u32 zero;
 *   segments, each at a 64-byte aligned offset.
 * Segment contents are the build's own records in host byte order: a work
 * dir is not portable between hosts of different endianness, which the
 * fingerprint covers (host/device_build.c mixes in the byte order).
 *
 * Design decisions:
 *  1. Every file is written whole through common/afile.c (temporary, fsync,
 *     rename), so a build killed at any moment leaves each work file either
 *     complete or absent; a CRC mismatch therefore means outside damage and
 *     is refused, not repaired.
 *  2. The manifest is itself a work file (name "manifest", one segment: the
 *     description), so it is verified like the rest, and its fingerprint is
 *     the one every other file must carry: a file copied in from another
 *     build's dir is refused by name.
 *  3. The lock is an flock on DIR/lock.kw, held for the life of the handle: a
 *     second build on the same dir fails at once instead of interleaving
 *     files. The kernel drops it when the process dies, so a killed build
 *     never leaves the dir locked.
 *  4. Work files are read with O_DIRECT where the file system takes it,
 *     through one aligned bounce buffer of the dir's: they were written
 *     with O_DIRECT (common/afile.c decision 7), so their bytes are on the
 *     disk and not in the page cache, and a buffered read would fill fresh
 *     page-cache pages that are read once and dropped. A read covers the
 *     WORK_DIRECT blocks that hold the segment (the block it shares with
 *     its neighbour is read twice; padding every segment to a block would
 *     cost 4 KiB per segment, and tight budgets make thousands), and at
 *     least WORK_MIN_READ bytes, which the buffer keeps for the next read
 *     of the same open file: the header and the table at an open are one
 *     I/O, and so are the small segments that follow them. Every direct
 *     read is a request to the disk (on a VM, an exit to the host), so
 *     their number counts more than their size. A segment larger than the
 *     buffer (WORK_BOUNCE) is read in pieces of that size. Where O_DIRECT
 *     is refused (EINVAL), reads go through the page cache, with the same
 *     result. A dir is used by one thread at a time (the bounce buffer and
 *     the stats are not locked).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "afile_internal.h"
#include "crc32c_internal.h"
#include "ctx_internal.h"
#include "le_internal.h"
#include "workdir_internal.h"

#define WORK_MAGIC     "KILNWORK"
#define WORK_VERSION   1
#define WORK_HEADER    64
#define WORK_ENTRY     24
#define WORK_MAX_SEGS  65536
#define WORK_ALIGN     64
#define WORK_DIRECT    4096 /* O_DIRECT offsets, lengths and buffers (decision 4) */
#define WORK_NAME_MAX  64
#define WORK_MANIFEST  "manifest"
#define WORK_LOCK      "lock"
#define WORK_SUFFIX    ".kw"
#define WORK_DESC_MAX  4096
#define WORK_READ_STEP ((size_t)1 << 24) /* bytes per read(2) call */
#define WORK_BOUNCE    ((size_t)1 << 22) /* O_DIRECT bounce buffer (decision 4) */
#define WORK_MIN_READ  ((size_t)1 << 16) /* bytes a direct read fetches at least (decision 4) */

struct kiln_workdir {
    kiln_ctx *ctx;
    char *path;
    int lock_fd;
    bool created;
    uint64_t fingerprint;
    kiln_workdir_stats stats;
    char *bounce; /* WORK_BOUNCE bytes, WORK_DIRECT-aligned, once a direct read needs it */
    /* What the bounce buffer holds: bytes [held_at, held_at + held_len) of
     * the work file whose serial is held_file (0: nothing). */
    uint64_t held_file, held_at, held_len;
    uint64_t serials; /* the last serial handed to an opened work file */
};

struct kiln_workfile {
    kiln_workdir *wd;
    char name[WORK_NAME_MAX];
    int fd;
    bool direct;     /* O_DIRECT is set on fd (decision 4) */
    uint64_t serial; /* this open's number in its dir, for the bounce buffer (decision 4) */
    uint32_t n_segs;
    uint64_t *off, *len;
    uint32_t *crc;
};

static bool name_ok(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n >= WORK_NAME_MAX || name[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        const char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* DIR/NAME.kw, the path of work file NAME (the lock too). */
static char *join(const kiln_workdir *wd, const char *name) {
    size_t n = strlen(wd->path) + strlen(name) + strlen(WORK_SUFFIX) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s%s", wd->path, name, WORK_SUFFIX);
    return p;
}

/* ==== Writing ==== */

kiln_status kiln_workdir_put(kiln_workdir *wd, const char *name, const kiln_work_seg *segs,
                             uint32_t n_segs) {
    kiln_ctx *ctx = wd->ctx;
    if (!name_ok(name))
        return kiln_fail(ctx, KILN_E_INTERNAL, "work file name \"%s\" is not allowed", name);
    if (n_segs > WORK_MAX_SEGS)
        return kiln_fail(ctx, KILN_E_INTERNAL, "work file %s: %u segments", name, n_segs);
    const size_t table_bytes = (size_t)n_segs * WORK_ENTRY;
    uint8_t *table = calloc(table_bytes ? table_bytes : 1, 1);
    char *path = join(wd, name);
    if (!table || !path) {
        free(table);
        free(path);
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory writing work file %s", name);
    }
    uint64_t off = WORK_HEADER + table_bytes;
    for (uint32_t i = 0; i < n_segs; i++) {
        off = (off + WORK_ALIGN - 1) / WORK_ALIGN * WORK_ALIGN;
        kiln_put_u64le(table + (size_t)i * WORK_ENTRY, off);
        kiln_put_u64le(table + (size_t)i * WORK_ENTRY + 8, segs[i].len);
        kiln_put_u32le(table + (size_t)i * WORK_ENTRY + 16,
                       kiln_crc32c(0, segs[i].data, segs[i].len));
        off += segs[i].len;
    }
    uint8_t h[WORK_HEADER] = {0};
    memcpy(h, WORK_MAGIC, 8);
    kiln_put_u32le(h + 8, WORK_VERSION);
    kiln_put_u32le(h + 12, n_segs);
    kiln_put_u64le(h + 16, wd->fingerprint);
    kiln_put_u64le(h + 24, off);
    kiln_put_u32le(h + 32, kiln_crc32c(0, table, table_bytes));
    kiln_put_u32le(h + 60, kiln_crc32c(0, h, 60));

    kiln_afile *af = NULL;
    kiln_status st = kiln_afile_open(ctx, path, &af);
    if (st == KILN_OK)
        st = kiln_afile_write(af, h, sizeof h);
    if (st == KILN_OK)
        st = kiln_afile_write(af, table, table_bytes);
    for (uint32_t i = 0; i < n_segs && st == KILN_OK; i++) {
        st = kiln_afile_pad(af, WORK_ALIGN);
        if (st == KILN_OK && segs[i].len)
            st = kiln_afile_write(af, segs[i].data, segs[i].len);
    }
    if (st == KILN_OK) {
        st = kiln_afile_commit(af);
        af = NULL;
    }
    kiln_afile_abort(af);
    if (st == KILN_OK) {
        wd->stats.bytes_written += off;
        wd->stats.files_written++;
    }
    free(table);
    free(path);
    return st;
}

bool kiln_workdir_has(const kiln_workdir *wd, const char *name) {
    char *path = join(wd, name);
    struct stat sb;
    bool has = path && stat(path, &sb) == 0;
    free(path);
    return has;
}

/* ==== Reading ==== */

static kiln_status truncated(const kiln_workfile *wf, ssize_t got, uint64_t off) {
    return kiln_fail(wf->wd->ctx, got < 0 ? KILN_E_IO : KILN_E_FORMAT,
                     "work file %s/%s.kw: %s at byte %llu", wf->wd->path, wf->name,
                     got < 0 ? strerror(errno) : "truncated", (unsigned long long)off);
}

/* Clears O_DIRECT on wf's descriptor: reads go through the page cache. */
static void no_direct(kiln_workfile *wf) {
    (void)kiln_fd_direct(wf->fd, false); /* if this fails, the reads fail and say so */
    wf->direct = false;
}

/* Decision 4: aligned blocks into the dir's bounce buffer, then the asked
 * bytes out of it. *done is how many bytes went to buf; on EINVAL (or no
 * bounce buffer) the caller reads the rest through the page cache. */
static kiln_status read_direct(kiln_workfile *wf, uint8_t *p, size_t len, uint64_t off,
                               size_t *done) {
    kiln_workdir *wd = wf->wd;
    *done = 0;
    if (!wd->bounce) {
        void *b = NULL;
        if (posix_memalign(&b, WORK_DIRECT, WORK_BOUNCE) != 0) {
            no_direct(wf);
            return KILN_OK;
        }
        wd->bounce = b;
    }
    while (len > 0) {
        if (wd->held_file == wf->serial && off >= wd->held_at &&
            off < wd->held_at + wd->held_len) { /* read before: no I/O */
            size_t use = (size_t)(wd->held_at + wd->held_len - off);
            use = use < len ? use : len;
            memcpy(p, wd->bounce + (off - wd->held_at), use);
            p += use;
            len -= use;
            off += use;
            *done += use;
            continue;
        }
        const uint64_t start = off / WORK_DIRECT * WORK_DIRECT;
        const size_t skip = (size_t)(off - start);
        size_t want = (skip + len + WORK_DIRECT - 1) / WORK_DIRECT * WORK_DIRECT;
        want = want > WORK_MIN_READ ? want : WORK_MIN_READ;
        want = want < WORK_BOUNCE ? want : WORK_BOUNCE;
        wd->held_file = 0;
        const ssize_t got = pread(wf->fd, wd->bounce, want, (off_t)start);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && errno == EINVAL) {
            no_direct(wf);
            return KILN_OK;
        }
        if (got <= (ssize_t)skip)
            return truncated(wf, got, off);
        wd->held_file = wf->serial; /* the next turn copies from it */
        wd->held_at = start;
        wd->held_len = (uint64_t)got;
    }
    return KILN_OK;
}

static kiln_status read_at(kiln_workfile *wf, void *buf, size_t len, uint64_t off) {
    uint8_t *p = buf;
    if (wf->direct) {
        size_t done;
        const kiln_status st = read_direct(wf, p, len, off, &done);
        if (st)
            return st;
        p += done;
        len -= done;
        off += done;
    }
    while (len > 0) {
        const size_t step = len < WORK_READ_STEP ? len : WORK_READ_STEP;
        const ssize_t got = pread(wf->fd, p, step, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return truncated(wf, got, off);
        p += got;
        len -= (size_t)got;
        off += (uint64_t)got;
    }
    return KILN_OK;
}

static kiln_status bad(const kiln_workfile *wf, kiln_status st, const char *what) {
    return kiln_fail(wf->wd->ctx, st, "work file %s/%s.kw: %s (damaged, or not from this build)",
                     wf->wd->path, wf->name, what);
}

/* Verifies header and table (decision 2: the fingerprint must be ours). */
static kiln_status load_table(kiln_workfile *wf, uint64_t size, uint32_t expect_segs) {
    kiln_ctx *ctx = wf->wd->ctx;
    uint8_t h[WORK_HEADER];
    if (size < WORK_HEADER)
        return bad(wf, KILN_E_FORMAT, "shorter than its header");
    kiln_status st = read_at(wf, h, sizeof h, 0);
    if (st)
        return st;
    if (memcmp(h, WORK_MAGIC, 8) != 0)
        return bad(wf, KILN_E_FORMAT, "not a kiln work file (bad magic)");
    if (kiln_get_u32le(h + 60) != kiln_crc32c(0, h, 60))
        return bad(wf, KILN_E_CHECKSUM, "header checksum mismatch");
    if (kiln_get_u32le(h + 8) != WORK_VERSION)
        return bad(wf, KILN_E_VERSION, "unknown work file version");
    for (int i = 36; i < 60; i++)
        if (h[i])
            return bad(wf, KILN_E_FORMAT, "reserved header bytes are not zero");
    if (kiln_get_u64le(h + 16) != wf->wd->fingerprint)
        return bad(wf, KILN_E_FORMAT, "fingerprint differs from the manifest");
    if (kiln_get_u64le(h + 24) != size)
        return bad(wf, KILN_E_FORMAT, "file size differs from its header (truncated?)");
    const uint32_t n = kiln_get_u32le(h + 12);
    if (n > WORK_MAX_SEGS || (expect_segs && n != expect_segs))
        return bad(wf, KILN_E_FORMAT, "unexpected segment count");
    const size_t table_bytes = (size_t)n * WORK_ENTRY;
    if (WORK_HEADER + table_bytes > size)
        return bad(wf, KILN_E_FORMAT, "segment table runs past the end");
    uint8_t *table = malloc(table_bytes ? table_bytes : 1);
    wf->off = calloc(n ? n : 1, sizeof *wf->off);
    wf->len = calloc(n ? n : 1, sizeof *wf->len);
    wf->crc = calloc(n ? n : 1, sizeof *wf->crc);
    if (!table || !wf->off || !wf->len || !wf->crc) {
        free(table);
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory reading work file %s", wf->name);
    }
    if ((st = read_at(wf, table, table_bytes, WORK_HEADER))) {
        free(table);
        return st;
    }
    if (kiln_get_u32le(h + 32) != kiln_crc32c(0, table, table_bytes)) {
        free(table);
        return bad(wf, KILN_E_CHECKSUM, "segment table checksum mismatch");
    }
    uint64_t prev_end = WORK_HEADER + table_bytes;
    for (uint32_t i = 0; i < n && st == KILN_OK; i++) {
        const uint8_t *e = table + (size_t)i * WORK_ENTRY;
        wf->off[i] = kiln_get_u64le(e);
        wf->len[i] = kiln_get_u64le(e + 8);
        wf->crc[i] = kiln_get_u32le(e + 16);
        if (kiln_get_u32le(e + 20) != 0 || wf->off[i] % WORK_ALIGN || wf->off[i] < prev_end ||
            wf->off[i] > size || wf->len[i] > size - wf->off[i])
            st = bad(wf, KILN_E_FORMAT, "a segment lies outside the file or overlaps another");
        else
            prev_end = wf->off[i] + wf->len[i];
    }
    free(table);
    wf->n_segs = n;
    wf->wd->stats.bytes_read += WORK_HEADER + table_bytes;
    return st;
}

kiln_status kiln_workfile_open(kiln_workdir *wd, const char *name, uint32_t expect_segs,
                               kiln_workfile **out) {
    kiln_ctx *ctx = wd->ctx;
    *out = NULL;
    if (!name_ok(name))
        return kiln_fail(ctx, KILN_E_INTERNAL, "work file name \"%s\" is not allowed", name);
    kiln_workfile *wf = calloc(1, sizeof *wf);
    char *path = join(wd, name);
    if (!wf || !path) {
        free(wf);
        free(path);
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory opening work file %s", name);
    }
    wf->wd = wd;
    wf->fd = -1;
    snprintf(wf->name, sizeof wf->name, "%s", name);
    uint64_t size = 0;
    kiln_status st = kiln_open_regular(ctx, path, &wf->fd, &size);
    free(path);
    if (st == KILN_OK) {
        wf->direct = kiln_fd_direct(wf->fd, true);
        wf->serial = ++wd->serials;
    }
    if (st == KILN_OK)
        st = load_table(wf, size, expect_segs);
    if (st) {
        kiln_workfile_close(wf);
        return st;
    }
    *out = wf;
    return KILN_OK;
}

uint32_t kiln_workfile_segs(const kiln_workfile *wf) { return wf->n_segs; }

uint64_t kiln_workfile_seg_len(const kiln_workfile *wf, uint32_t seg) {
    return seg < wf->n_segs ? wf->len[seg] : 0;
}

kiln_status kiln_workfile_read(kiln_workfile *wf, uint32_t seg, void *buf) {
    if (seg >= wf->n_segs)
        return kiln_fail(wf->wd->ctx, KILN_E_INTERNAL, "work file %s: no segment %u", wf->name,
                         seg);
    kiln_status st = read_at(wf, buf, (size_t)wf->len[seg], wf->off[seg]);
    if (st)
        return st;
    wf->wd->stats.bytes_read += wf->len[seg];
    if (kiln_crc32c(0, buf, (size_t)wf->len[seg]) != wf->crc[seg]) {
        char what[64];
        snprintf(what, sizeof what, "checksum mismatch in segment %u", seg);
        return bad(wf, KILN_E_CHECKSUM, what);
    }
    return KILN_OK;
}

void kiln_workfile_close(kiln_workfile *wf) {
    if (!wf)
        return;
    if (wf->fd >= 0)
        close(wf->fd);
    free(wf->off);
    free(wf->len);
    free(wf->crc);
    free(wf);
}

/* ==== The dir ==== */

static kiln_status take_lock(kiln_workdir *wd) {
    char *path = join(wd, WORK_LOCK);
    if (!path)
        return kiln_fail(wd->ctx, KILN_E_NOMEM, "out of memory opening the work dir");
    wd->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    free(path);
    if (wd->lock_fd < 0)
        return kiln_fail(wd->ctx, KILN_E_IO, "work dir %s: cannot create its lock file: %s",
                         wd->path, strerror(errno));
    if (flock(wd->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return kiln_fail(wd->ctx, KILN_E_IO,
                         "work dir %s is in use by another build (its lock is held)", wd->path);
    return KILN_OK;
}

/* Reads the manifest's fingerprint and description (desc: WORK_DESC_MAX). */
static kiln_status read_manifest(kiln_workdir *wd, uint64_t *fp, char *desc) {
    const uint64_t mine = wd->fingerprint;
    uint8_t h[WORK_HEADER];
    char *path = join(wd, WORK_MANIFEST);
    int fd = -1;
    uint64_t size = 0;
    kiln_status st = path ? kiln_open_regular(wd->ctx, path, &fd, &size)
                          : kiln_fail(wd->ctx, KILN_E_NOMEM, "out of memory");
    free(path);
    if (st)
        return st;
    ssize_t got = size >= WORK_HEADER ? pread(fd, h, sizeof h, 0) : 0;
    close(fd);
    if (got != WORK_HEADER || memcmp(h, WORK_MAGIC, 8) != 0 ||
        kiln_get_u32le(h + 60) != kiln_crc32c(0, h, 60))
        return kiln_fail(wd->ctx, KILN_E_FORMAT,
                         "work dir %s: its manifest is damaged or not a kiln manifest", wd->path);
    /* Verify the whole file under its own fingerprint. */
    wd->fingerprint = kiln_get_u64le(h + 16);
    kiln_workfile *wf = NULL;
    st = kiln_workfile_open(wd, WORK_MANIFEST, 1, &wf);
    if (st == KILN_OK) {
        const uint64_t len = kiln_workfile_seg_len(wf, 0);
        if (len >= WORK_DESC_MAX)
            st = kiln_fail(wd->ctx, KILN_E_FORMAT, "work dir %s: manifest too long", wd->path);
        else if ((st = kiln_workfile_read(wf, 0, desc)) == KILN_OK)
            desc[len] = 0;
    }
    kiln_workfile_close(wf);
    *fp = wd->fingerprint;
    wd->fingerprint = mine;
    return st;
}

/* A handle on dir, not yet locked. */
static kiln_status wd_new(kiln_ctx *ctx, const char *dir, kiln_workdir **out) {
    if (!dir || !*dir)
        return kiln_fail(ctx, KILN_E_ARG, "empty work dir path");
    kiln_workdir *wd = calloc(1, sizeof *wd);
    if (!wd || !(wd->path = strdup(dir))) {
        free(wd);
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory opening the work dir");
    }
    wd->ctx = ctx;
    wd->lock_fd = -1;
    *out = wd;
    return KILN_OK;
}

kiln_status kiln_workdir_open(kiln_ctx *ctx, const char *dir, uint64_t fingerprint,
                              const char *desc, bool resume, kiln_workdir **out) {
    *out = NULL;
    kiln_workdir *wd = NULL;
    kiln_status st0 = wd_new(ctx, dir, &wd);
    if (st0)
        return st0;
    wd->fingerprint = fingerprint;
    kiln_status st = KILN_OK;
    struct stat sb;
    if (mkdir(dir, 0700) == 0) {
        wd->created = true;
    } else if (errno != EEXIST) {
        st = kiln_fail(ctx, KILN_E_IO, "work dir %s: cannot create: %s", dir, strerror(errno));
    } else if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        st = kiln_fail(ctx, KILN_E_IO, "work dir %s: exists and is not a directory", dir);
    }
    if (st == KILN_OK)
        st = take_lock(wd);
    if (st == KILN_OK && kiln_workdir_has(wd, WORK_MANIFEST)) {
        uint64_t fp = 0;
        char *old = malloc(WORK_DESC_MAX);
        if (!old)
            st = kiln_fail(ctx, KILN_E_NOMEM, "out of memory");
        else if ((st = read_manifest(wd, &fp, old)) == KILN_OK && fp != fingerprint)
            st = kiln_fail(ctx, KILN_E_FORMAT,
                           "work dir %s holds a build of other inputs or parameters (%s); "
                           "remove it or choose another --work-dir",
                           dir, old);
        else if (st == KILN_OK && !resume)
            st = kiln_fail(ctx, KILN_E_ARG,
                           "work dir %s holds an unfinished build of these inputs: --resume "
                           "continues it, or remove the folder to start over",
                           dir);
        free(old);
    } else if (st == KILN_OK) {
        const kiln_work_seg seg = {desc, strlen(desc)};
        st = kiln_workdir_put(wd, WORK_MANIFEST, &seg, 1);
    }
    if (st) {
        if (wd->created && !kiln_workdir_has(wd, WORK_MANIFEST)) {
            char *lock = join(wd, WORK_LOCK);
            if (lock)
                unlink(lock);
            free(lock);
            rmdir(dir);
        }
        kiln_workdir_close(wd);
        return st;
    }
    *out = wd;
    return KILN_OK;
}

void kiln_workdir_close(kiln_workdir *wd) {
    if (!wd)
        return;
    if (wd->lock_fd >= 0)
        close(wd->lock_fd);
    free(wd->bounce);
    free(wd->path);
    free(wd);
}

/* Whether name is a file this module writes: a work file (NAME.kw) or a
 * temporary of one (".NAME.kw.kiln-tmp.*", common/afile.c). Nothing else in
 * the dir is touched: it may be a folder of the user's. */
static bool ours(const char *name) {
    const size_t n = strlen(name);
    if (name[0] == '.')
        return strstr(name, WORK_SUFFIX ".kiln-tmp.") != NULL;
    return n > strlen(WORK_SUFFIX) && !strcmp(name + n - strlen(WORK_SUFFIX), WORK_SUFFIX);
}

kiln_status kiln_workdir_remove(kiln_workdir *wd) {
    if (!wd)
        return KILN_OK;
    kiln_status st = KILN_OK;
    DIR *d = opendir(wd->path);
    if (!d) {
        st = kiln_fail(wd->ctx, KILN_E_IO, "work dir %s: cannot list: %s", wd->path,
                       strerror(errno));
    } else {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !ours(e->d_name))
                continue;
            const size_t len = strlen(wd->path) + strlen(e->d_name) + 2;
            char *p = malloc(len);
            if (p)
                snprintf(p, len, "%s/%s", wd->path, e->d_name);
            if (p && unlink(p) != 0 && errno != ENOENT && st == KILN_OK)
                st = kiln_fail(wd->ctx, KILN_E_IO, "work dir %s: cannot remove %s: %s", wd->path,
                               e->d_name, strerror(errno));
            free(p);
        }
        closedir(d);
    }
    char *lock = join(wd, WORK_LOCK);
    if (lock)
        unlink(lock);
    free(lock);
    rmdir(wd->path); /* fails, harmlessly, when the user keeps other files there */
    kiln_workdir_close(wd);
    return st;
}

const char *kiln_workdir_path(const kiln_workdir *wd) { return wd->path; }

kiln_workdir_stats kiln_workdir_stats_get(const kiln_workdir *wd) {
    const kiln_workdir_stats none = {0};
    return wd ? wd->stats : none;
}

uint64_t kiln_workdir_free_bytes(const kiln_workdir *wd) {
    struct statvfs sv;
    if (statvfs(wd->path, &sv) != 0)
        return UINT64_MAX;
    return (uint64_t)sv.f_bavail * sv.f_frsize;
}

kiln_status kiln_work_dir_remove(kiln_ctx *ctx, const char *dir) {
    kiln_workdir *wd = NULL;
    kiln_status st0 = wd_new(ctx, dir, &wd);
    if (st0)
        return st0;
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        kiln_workdir_close(wd);
        return errno == ENOENT ? KILN_OK
                               : kiln_fail(ctx, KILN_E_IO, "work dir %s: %s", dir, strerror(errno));
    }
    kiln_status st = take_lock(wd);
    if (st) {
        kiln_workdir_close(wd);
        return st;
    }
    return kiln_workdir_remove(wd);
}

/* ==== Segments between ranks ==== */

kiln_status kiln_work_segs_unpack(kiln_ctx *ctx, const void *msg, uint64_t len, uint32_t n_segs,
                                  kiln_work_seg *segs, const char *what) {
    const uint8_t *in = msg;
    const uint64_t head = (uint64_t)n_segs * sizeof(uint64_t);
    uint64_t at = head;
    bool ok = len >= head;
    for (uint32_t i = 0; ok && i < n_segs; i++) {
        uint64_t l;
        memcpy(&l, in + (size_t)i * sizeof l, sizeof l);
        ok = l <= len - at;
        if (ok)
            segs[i] = (kiln_work_seg){in + at, (size_t)l};
        at += ok ? l : 0;
    }
    if (!ok || at != len)
        return kiln_fail(ctx, KILN_E_FORMAT, "%s is malformed (%llu bytes for %u segments)", what,
                         (unsigned long long)len, n_segs);
    return KILN_OK;
}

uint64_t kiln_rec_len_batch(const void *user, const uint32_t *w, uint64_t left) {
    const uint32_t rec_max = *(const uint32_t *)user;
    if (left < 2 || w[1] > rec_max || left - 2 < 3 * (uint64_t)w[1])
        return 0;
    return 2 + 3 * (uint64_t)w[1];
}

uint64_t kiln_rec_len_fixed(const void *user, const uint32_t *w, uint64_t left) {
    (void)w;
    const uint32_t n = *(const uint32_t *)user;
    return n >= 1 && left >= n ? n : 0;
}

kiln_status kiln_work_segs_split(kiln_ctx *ctx, const void *msg, uint64_t len, uint64_t lo,
                                 uint64_t hi, uint32_t part_nodes, uint32_t parts,
                                 kiln_rec_len_fn rec_len, const void *user, kiln_work_seg *segs,
                                 const char *what) {
    for (uint32_t q = 0; q < parts; q++)
        segs[q] = (kiln_work_seg){segs, 0};
    if (len % sizeof(uint32_t))
        return kiln_fail(ctx, KILN_E_FORMAT, "%s is cut short (%llu bytes)", what,
                         (unsigned long long)len);
    if (part_nodes == 0 || lo > hi || (hi > lo && (hi - 1) / part_nodes >= parts))
        return kiln_fail(ctx, KILN_E_ARG, "%s: nodes [%llu, %llu) do not fit %u partitions", what,
                         (unsigned long long)lo, (unsigned long long)hi, parts);
    const uint32_t *w = msg;
    const uint64_t words = len / sizeof(uint32_t);
    uint64_t q = lo / part_nodes, start = 0;
    for (uint64_t i = 0; i < words;) {
        const uint64_t n = rec_len(user, w + i, words - i);
        if (n == 0 || w[i] < lo || w[i] >= hi || w[i] / part_nodes < q)
            return kiln_fail(ctx, KILN_E_FORMAT, "%s: the record at word %llu is malformed", what,
                             (unsigned long long)i);
        if (w[i] / part_nodes != q) {
            segs[q] = (kiln_work_seg){w + start, (size_t)(i - start) * sizeof(uint32_t)};
            q = w[i] / part_nodes;
            start = i;
        }
        i += n;
    }
    if (words)
        segs[q] = (kiln_work_seg){w + start, (size_t)(words - start) * sizeof(uint32_t)};
    return KILN_OK;
}
