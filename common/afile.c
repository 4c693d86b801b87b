/* afile.c -- atomic file output, and opening a regular file for input (see afile_internal.h).
 *
 * Design decisions:
 *  1. The temporary file lives in the target's folder so rename() is atomic
 *     (same file system). It is named ".<name>.kiln-tmp.<pid>.<6 random>":
 *     hidden, recognisable as ours, tied to the output it replaces and to the
 *     process that writes it.
 *  2. Write errors are sticky: the first one is reported and every later
 *     call, commit included, fails, so callers may check only at the end.
 *  3. Several outputs of one command commit together
 *     (kiln_afile_commit_all): every temporary is flushed and fsynced first
 *     (and stays open, so locked, until its rename: decision 4), and only
 *     when all of them succeeded are they renamed, one after the other; any failure before that
 * removes every temporary and replaces nothing. A rename that fails after an earlier one succeeded
 *     (a dying disk: the temporaries are already written in the target's own
 *     folder) is reported, and the later temporaries are removed.
 *  4. Temporaries of killed runs are cleaned up twice over. While a file is
 *     open its temporary name sits in a fixed table that a SIGHUP, SIGINT,
 *     SIGTERM or SIGXFSZ handler unlinks (unlink is async-signal-safe) before
 *     re-raising the signal with its default action. The handler is installed
 *     on the first open, for each of those signals whose disposition is still
 *     the default, so an application's own handler or SIG_IGN is never
 *     replaced. SIGKILL and power loss cannot be caught, so every open also
 *     removes stale temporaries of the same output: a sibling is stale when
 *     the pid in its name is not a live process AND an exclusive flock() on
 *     it succeeds. The writer holds that flock from creation to close, so a
 *     live writer's temporary is never removed, even when its pid is not
 *     visible here (another pid namespace, another NFS client); a reused pid
 *     only makes a stale file survive until a later open.
 *  5. Modes: a new output is created with 0666 minus the umask (open(2)
 *     applies it, and any default ACL, exactly as for a file the shell
 *     creates); a replaced output keeps the permission bits of the file it
 *     replaces (the temporary is created with no more than those bits, so
 *     the content is never more readable while it is written). Owner and
 *     group are those of the writer.
 *  6. An output path that is a symbolic link is written through: the link's
 *     final target (realpath) is replaced, in the target's folder, and the
 *     link stays. A link to a missing file is refused rather than guessed
 *     at, and so is a target that exists but is not a regular file
 *     (directories, devices, FIFOs: renaming over them would replace them).
 *  7. Output goes through our own AFILE_BUFFER-byte buffer, aligned to
 *     AFILE_DIRECT_ALIGN, and full buffers are written with O_DIRECT where
 *     the file system takes it: the bytes go from the buffer to the disk
 *     without a page-cache copy. Outputs here are written once and read
 *     back once at most (work files, an index that a server maps later),
 *     so the page cache only costs: each fresh page-cache page is a page
 *     the kernel must find and zero, and on the development VM (a balloon
 *     that hands freed pages back to the host) writing 1 GiB into the page
 *     cache took 10.9-14.6 s against 1.15 s with O_DIRECT (dd, bs=1M; a
 *     1M x 128 build spent a third of its samples in the page-cache copy).
 *     A tail that is not a whole number of 4 KiB blocks, a pwrite of bytes
 *     already written (headers patched last: bytes still in the buffer are
 *     patched there), and every write after either, go through the page
 *     cache (O_DIRECT cleared with fcntl); so does everything where O_DIRECT
 *     is refused (tmpfs before Linux 6.6, some FUSE and network file
 *     systems): setting the flag failing, or a direct write failing with
 *     EINVAL, turns it off for that file, never the result.
 *  8. Inputs are opened with O_NONBLOCK so that naming a FIFO (or a
 *     terminal) fails at once with "not a regular file" instead of blocking
 *     in open(2) for a writer that never comes; the flag is cleared before
 *     the descriptor is returned.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "afile_internal.h"
#include "ctx_internal.h"

/* ==== Tunables ==== */

/* Output buffer per file (decision 7): 1 MiB turns a multi-GB index into a
 * few thousand write() calls, and O_DIRECT writes of 1 MiB ran at disk speed
 * (dd: 1.15 s per GiB). A multiple of AFILE_DIRECT_ALIGN. */
#define AFILE_BUFFER (1u << 20)

/* Alignment of O_DIRECT buffers, file offsets and lengths: 4096 satisfies
 * every logical block size Linux file systems use (512 or 4096). */
#define AFILE_DIRECT_ALIGN 4096

/* Temporaries the signal handler can remove at once. A command has at most
 * three outputs open; a library user with more still gets the stale sweep. */
#define AFILE_SLOTS 16

/* Tries at a fresh random temporary name before giving up. */
#define AFILE_NAME_TRIES 64

/* ==== Types ==== */

struct kiln_afile {
    kiln_ctx *ctx;
    int fd;       /* -1 once closed */
    bool direct;  /* O_DIRECT is set on fd (decision 7) */
    char *buf;    /* AFILE_BUFFER bytes, AFILE_DIRECT_ALIGN-aligned */
    size_t fill;  /* bytes of buf not yet written; buf starts at offset - fill */
    char *path;   /* final name as the caller gave it (for messages) */
    char *target; /* what is replaced: path, or its symlink's target */
    char *tmp;    /* temporary name, in target's folder */
    int slot;     /* registry slot, -1 when the table was full */
    size_t offset;
    kiln_status err; /* first error, sticky */
};

/* Signal-time registry of open temporaries (decision 4). A slot is FREE,
 * BUSY while its name is being written, LIVE, or CLAIMED by the signal
 * handler: the handler moves LIVE to CLAIMED before it reads the name, and a
 * thread frees only a slot it can move from LIVE, so a name is never reused
 * while the handler reads it. */
enum { SLOT_FREE = 0, SLOT_BUSY = 1, SLOT_LIVE = 2, SLOT_CLAIMED = 3 };
static struct {
    atomic_int state;
    char name[PATH_MAX];
} registry[AFILE_SLOTS];

static pthread_once_t handlers_once = PTHREAD_ONCE_INIT;
static const int cleanup_signals[] = {SIGHUP, SIGINT, SIGTERM, SIGXFSZ};

/* ==== Helpers: signals and the registry ==== */

static void on_signal(int sig) {
    const int saved = errno;
    for (int i = 0; i < AFILE_SLOTS; i++) {
        int expect = SLOT_LIVE;
        if (atomic_compare_exchange_strong(&registry[i].state, &expect, SLOT_CLAIMED))
            unlink(registry[i].name); /* the process ends: the slot stays claimed */
    }
    /* SA_RESETHAND restored the default action; the raised signal is
     * delivered when the handler returns. */
    raise(sig);
    errno = saved;
}

static void install_handlers(void) {
    for (size_t i = 0; i < sizeof cleanup_signals / sizeof cleanup_signals[0]; i++) {
        struct sigaction old;
        if (sigaction(cleanup_signals[i], NULL, &old) != 0 || (old.sa_flags & SA_SIGINFO) ||
            old.sa_handler != SIG_DFL)
            continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sa.sa_flags = SA_RESETHAND;
        sigemptyset(&sa.sa_mask);
        sigaction(cleanup_signals[i], &sa, NULL);
    }
}

static int registry_add(const char *name) {
    if (strlen(name) >= PATH_MAX)
        return -1;
    for (int i = 0; i < AFILE_SLOTS; i++) {
        int expect = SLOT_FREE;
        if (atomic_compare_exchange_strong(&registry[i].state, &expect, SLOT_BUSY)) {
            strcpy(registry[i].name, name);
            atomic_store(&registry[i].state, SLOT_LIVE);
            return i;
        }
    }
    return -1;
}

static void registry_remove(int slot) {
    int expect = SLOT_LIVE;
    if (slot >= 0) /* fails only when the handler claimed it, as the process ends */
        atomic_compare_exchange_strong(&registry[slot].state, &expect, SLOT_FREE);
}

/* ==== Helpers: names ==== */

/* Splits path into a malloc'd folder ("." when there is none) and a pointer
 * to its last component inside path. */
static char *folder_of(const char *path, const char **base) {
    const char *slash = strrchr(path, '/');
    *base = slash ? slash + 1 : path;
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* 1 when name is "." base ".kiln-tmp." <pid> "." <6 chars>; *pid set. */
static bool parse_temp_name(const char *name, const char *base, long *pid) {
    static const char tag[] = ".kiln-tmp.";
    const size_t blen = strlen(base);
    if (name[0] != '.' || strncmp(name + 1, base, blen) != 0 ||
        strncmp(name + 1 + blen, tag, sizeof tag - 1) != 0)
        return false;
    const char *p = name + 1 + blen + sizeof tag - 1;
    char *end;
    errno = 0;
    const long v = strtol(p, &end, 10);
    if (end == p || *end != '.' || errno || v <= 0 || v > INT_MAX || strlen(end + 1) != 6)
        return false;
    *pid = v;
    return true;
}

/* Removes base's temporaries in dir whose writer is gone (decision 4). */
static void sweep_stale(const char *dir, const char *base) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    const int dfd = dirfd(d);
    const struct dirent *de;
    while ((de = readdir(d))) {
        long pid;
        if (!parse_temp_name(de->d_name, base, &pid) || pid == (long)getpid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        const int fd = openat(dfd, de->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0)
            continue;
        struct stat sb;
        if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0)
            unlinkat(dfd, de->d_name, 0);
        close(fd);
    }
    closedir(d);
}

/* Six characters of [0-9A-Za-z] from getrandom, else from the clock. */
static void random_suffix(char out[7]) {
    static const char alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    static atomic_uint counter;
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec ^
            (uint64_t)atomic_fetch_add(&counter, 1) << 40;
    }
    for (int i = 0; i < 6; i++, r /= 62)
        out[i] = alphabet[r % 62];
    out[6] = '\0';
}

/* What the output replaces: path itself, or the final target of the
 * symlink path names (decision 6). *exists and *sb describe the target. */
static kiln_status resolve_target(kiln_ctx *ctx, const char *path, char **target, bool *exists,
                                  struct stat *sb) {
    struct stat lsb;
    *target = NULL;
    *exists = false;
    if (lstat(path, &lsb) != 0) {
        if (errno != ENOENT)
            return kiln_fail(ctx, KILN_E_IO, "%s: cannot check the output: %s", path,
                             strerror(errno));
        *target = strdup(path);
    } else if (S_ISLNK(lsb.st_mode)) {
        *target = realpath(path, NULL);
        if (!*target)
            return kiln_fail(ctx, KILN_E_IO,
                             "%s: output is a symbolic link that does not resolve: %s", path,
                             strerror(errno));
    } else {
        *target = strdup(path);
    }
    if (!*target)
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory opening %s", path);
    if (stat(*target, sb) == 0) {
        *exists = true;
        if (!S_ISREG(sb->st_mode)) {
            free(*target);
            *target = NULL;
            return kiln_fail(ctx, KILN_E_IO, "%s: output exists and is not a regular file%s", path,
                             S_ISDIR(sb->st_mode) ? " (a directory)" : "");
        }
    }
    return KILN_OK;
}

/* Creates and locks a fresh temporary beside target; *tmp is malloc'd. */
static kiln_status create_temp(kiln_ctx *ctx, const char *path, const char *target, mode_t mode,
                               char **tmp, int *fd_out) {
    const char *base;
    char *dir = folder_of(target, &base);
    if (!dir)
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory opening %s", path);
    sweep_stale(dir, base);
    const size_t cap = strlen(dir) + strlen(base) + 64;
    char *name = malloc(cap);
    if (!name) {
        free(dir);
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory opening %s", path);
    }
    int e = EEXIST;
    for (int tries = 0; tries < AFILE_NAME_TRIES; tries++) {
        char suffix[7];
        random_suffix(suffix);
        snprintf(name, cap, "%s/.%s.kiln-tmp.%ld.%s", dir, base, (long)getpid(), suffix);
        const int fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (fd < 0) {
            e = errno;
            if (e == EEXIST)
                continue;
            break;
        }
        /* Another process's sweep may have locked it between open and here
         * (possible only across pid namespaces): leave it to that sweep. */
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            close(fd);
            e = EEXIST;
            continue;
        }
        free(dir);
        *tmp = name;
        *fd_out = fd;
        return KILN_OK;
    }
    free(name);
    kiln_status st =
        kiln_fail(ctx, KILN_E_IO, "%s: cannot create a file in %s: %s", path, dir, strerror(e));
    free(dir);
    return st;
}

static void afile_release(kiln_afile *af) {
    free(af->buf);
    free(af->path);
    free(af->target);
    free(af->tmp);
    free(af);
}

/* Closes (if open), removes the temporary and frees af. */
static void afile_discard(kiln_afile *af) {
    if (af->fd >= 0)
        close(af->fd);
    af->fd = -1;
    unlink(af->tmp);
    registry_remove(af->slot);
    afile_release(af);
}

static kiln_status afile_error(kiln_afile *af, int e) {
    if (af->err == KILN_OK)
        af->err = kiln_fail(af->ctx, KILN_E_IO, "%s: write failed at byte %zu: %s", af->path,
                            af->offset, strerror(e));
    return af->err;
}

/* Sets or clears O_DIRECT on af's descriptor; false when it cannot. */
static bool set_direct(kiln_afile *af, bool on) {
    if (!kiln_fd_direct(af->fd, on))
        return false;
    af->direct = on;
    return true;
}

/* Writes all of buf[0..len) at the current end; with O_DIRECT, len and the
 * file offset are multiples of AFILE_DIRECT_ALIGN. A direct write the file
 * system refuses (EINVAL) is retried through the page cache (decision 7). */
static kiln_status write_out(kiln_afile *af, const char *buf, size_t len) {
    while (len > 0) {
        const ssize_t w = write(af->fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EINVAL && af->direct && set_direct(af, false))
            continue;
        if (w <= 0)
            return afile_error(af, w < 0 ? errno : EIO);
        buf += w;
        len -= (size_t)w;
        if (af->direct && len % AFILE_DIRECT_ALIGN && !set_direct(af, false))
            return afile_error(af, EIO); /* a short direct write left the offset unaligned */
    }
    return KILN_OK;
}

/* Writes what the buffer holds; the tail of a file (not a whole number of
 * aligned blocks) goes through the page cache. */
static kiln_status flush_buffer(kiln_afile *af) {
    if (af->err != KILN_OK || af->fill == 0)
        return af->err;
    if (af->direct && af->fill % AFILE_DIRECT_ALIGN && !set_direct(af, false))
        return afile_error(af, EIO);
    const kiln_status st = write_out(af, af->buf, af->fill);
    af->fill = 0;
    return st;
}

/* Flush and fsync. The file stays open, and so locked (decision 4), until
 * it is renamed into place: a sweep by another writer never sees it
 * unlocked while a group commit fsyncs the others. */
static kiln_status afile_finish(kiln_afile *af) {
    kiln_status st = flush_buffer(af);
    if (st == KILN_OK && fsync(af->fd) != 0)
        st = afile_error(af, errno);
    return st;
}

/* Makes a rename in target's folder durable. */
static void sync_folder(const char *target) {
    const char *base;
    char *dir = folder_of(target, &base);
    if (!dir)
        return;
    const int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
}

/* ==== Public: output ==== */

kiln_status kiln_afile_open(kiln_ctx *ctx, const char *path, kiln_afile **out) {
    *out = NULL;
    if (!path || !*path)
        return kiln_fail(ctx, KILN_E_ARG, "empty output path");
    pthread_once(&handlers_once, install_handlers);
    kiln_afile *af = calloc(1, sizeof *af);
    char *dup = strdup(path);
    void *buf = NULL;
    if (posix_memalign(&buf, AFILE_DIRECT_ALIGN, AFILE_BUFFER) != 0)
        buf = NULL;
    if (!af || !dup || !buf) {
        free(af), free(dup), free(buf);
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory opening %s", path);
    }
    af->ctx = ctx;
    af->path = dup;
    af->buf = buf;
    af->slot = -1;
    af->fd = -1;
    bool exists;
    struct stat sb;
    kiln_status st = resolve_target(ctx, path, &af->target, &exists, &sb);
    int fd = -1;
    if (st == KILN_OK)
        st = create_temp(ctx, path, af->target, exists ? (sb.st_mode & 0777) : 0666, &af->tmp, &fd);
    if (st != KILN_OK) {
        afile_release(af);
        return st;
    }
    af->slot = registry_add(af->tmp);
    /* The umask may have removed bits the replaced file had. */
    if (exists && fchmod(fd, sb.st_mode & 0777) != 0) {
        const int e = errno;
        af->fd = fd;
        afile_discard(af);
        return kiln_fail(ctx, KILN_E_IO, "%s: cannot keep the mode of the file it replaces: %s",
                         path, strerror(e));
    }
    af->fd = fd;
    set_direct(af, true); /* best effort: without it, the page cache (decision 7) */
    *out = af;
    return KILN_OK;
}

kiln_status kiln_afile_write(kiln_afile *af, const void *buf, size_t len) {
    const char *p = buf;
    while (af->err == KILN_OK && len > 0) {
        size_t take = AFILE_BUFFER - af->fill;
        take = take < len ? take : len;
        memcpy(af->buf + af->fill, p, take);
        af->fill += take;
        af->offset += take;
        p += take;
        len -= take;
        if (af->fill == AFILE_BUFFER)
            flush_buffer(af);
    }
    return af->err;
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
    if (offset > af->offset || len > af->offset - offset)
        return kiln_fail(af->ctx, KILN_E_INTERNAL, "%s: pwrite past the end", af->path);
    const size_t buffered = af->offset - af->fill; /* where buf starts */
    if (offset >= buffered) {                      /* all of it is still in the buffer */
        memcpy(af->buf + (offset - buffered), buf, len);
        return KILN_OK;
    }
    /* Headers written last: the rest goes through the page cache. */
    if (flush_buffer(af) != KILN_OK || (af->direct && !set_direct(af, false)))
        return af->err ? af->err : afile_error(af, EIO);
    ssize_t w = pwrite(af->fd, buf, len, (off_t)offset);
    if (w < 0 || (size_t)w != len)
        return afile_error(af, w < 0 ? errno : EIO);
    return KILN_OK;
}

kiln_status kiln_afile_commit_all(kiln_afile *const *afs, size_t count) {
    kiln_status st = KILN_OK;
    for (size_t i = 0; i < count && st == KILN_OK; i++)
        st = afile_finish(afs[i]); /* the first failure is the one reported */
    size_t renamed = 0;
    for (; st == KILN_OK && renamed < count; renamed++) {
        kiln_afile *af = afs[renamed];
        if (rename(af->tmp, af->target) != 0) {
            st =
                kiln_fail(af->ctx, KILN_E_IO, "%s: cannot rename the temporary file into place: %s",
                          af->path, strerror(errno));
            break;
        }
        registry_remove(af->slot);
        sync_folder(af->target);
    }
    for (size_t i = 0; i < count; i++) {
        if (i < renamed) {
            /* fsynced already: a failing close loses nothing, but says so */
            if (close(afs[i]->fd) != 0 && st == KILN_OK)
                st = kiln_fail(afs[i]->ctx, KILN_E_IO, "%s: close failed after the rename: %s",
                               afs[i]->path, strerror(errno));
            afs[i]->fd = -1;
            afile_release(afs[i]);
        } else {
            afile_discard(afs[i]);
        }
    }
    return st;
}

kiln_status kiln_afile_commit(kiln_afile *af) { return kiln_afile_commit_all(&af, 1); }

void kiln_afile_abort(kiln_afile *af) {
    if (af)
        afile_discard(af);
}

/* ==== Public: direct I/O ==== */

bool kiln_fd_direct(int fd, bool on) {
#ifdef O_DIRECT
    const int flags = fcntl(fd, F_GETFL);
    return flags >= 0 && fcntl(fd, F_SETFL, on ? flags | O_DIRECT : flags & ~O_DIRECT) == 0;
#else
    (void)fd;
    return !on;
#endif
}

/* ==== Public: input ==== */

kiln_status kiln_open_regular(kiln_ctx *ctx, const char *path, int *fd, uint64_t *size) {
    *fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (*fd < 0)
        return kiln_fail(ctx, KILN_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    const char *what = NULL;
    int err = 0;
    int flags;
    if (fstat(*fd, &sb) != 0) {
        what = "cannot stat";
        err = errno;
    } else if (!S_ISREG(sb.st_mode)) {
        what = S_ISFIFO(sb.st_mode)                         ? "not a regular file (a FIFO)"
               : S_ISDIR(sb.st_mode)                        ? "not a regular file (a directory)"
               : S_ISCHR(sb.st_mode) || S_ISBLK(sb.st_mode) ? "not a regular file (a device)"
                                                            : "not a regular file";
    } else if ((flags = fcntl(*fd, F_GETFL)) < 0 || fcntl(*fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
        what = "cannot open";
        err = errno;
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

kiln_status kiln_pread_full(kiln_ctx *ctx, int fd, const char *path, void *buf, size_t len,
                            uint64_t offset) {
    uint8_t *p = buf;
    while (len) {
        const ssize_t r = pread(fd, p, len, (off_t)offset);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return kiln_fail(ctx, KILN_E_IO, "%s: read failed at byte %llu: %s", path,
                             (unsigned long long)offset, strerror(errno));
        if (r == 0)
            return kiln_fail(ctx, KILN_E_IO,
                             "%s: unexpected end of file at byte %llu (file changed while "
                             "reading?)",
                             path, (unsigned long long)offset);
        p += r;
        len -= (size_t)r;
        offset += (uint64_t)r;
    }
    return KILN_OK;
}
