/* cl_cache.c -- the on-disk cache of built OpenCL programs (see
 * cl_internal.h): a process that builds an index starts from a program
 * binary instead of compiling the kernel source again.
 *
 * Design decisions:
 *  1. Why: clBuildProgram from source costs PoCL 23 ms even when PoCL's own
 *     cache already holds the compiled kernel (it preprocesses the source
 *     with clang to compute its key), against 1 ms from a binary; on a
 *     10K-vector build that is 7% of the whole process. NVIDIA's driver
 *     likewise runs its front end before consulting ~/.nv/ComputeCache.
 *     CLBlast and ArrayFire keep binary caches for the same reason.
 *  2. The key is a 64-bit FNV-1a hash of everything the binary depends on:
 *     platform name and version, device name and version, driver version,
 *     the kernel file name, its full source text and the build options. A
 *     new driver, kernel or option set is a new file; stale files are never
 *     read, only left behind (`rm -r` of the folder is always safe).
 *  3. A file is a 40-byte header (magic, key, payload size, CRC-32C, MAC)
 *     and the binary (host/cache_entry.c). Anything that does not match --
 *     a short read, another key, a bad checksum or MAC, a binary the driver
 *     rejects -- is a miss: the program is built from source as before and
 *     the file rewritten. The cache can make a build faster, never fail one.
 *  4. Files are written to a fresh mkstemp name in the folder (O_EXCL, mode
 *     0600, never following a planted symlink) and renamed into place, so
 *     concurrent builds never see a half-written file; no fsync, since a
 *     torn file after a crash is just a miss (decision 3).
 *  5. The folder is $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else
 *     $HOME/.cache/kiln; KILN_CACHE_DIR=off turns the cache off. Errors
 *     reading or writing it are silent: ctx's last error is never touched.
 *  6. Threat model. OpenCL runtimes do not validate program binaries: PoCL
 *     loads a cached binary as native code, and mutated entries with a
 *     recomputed CRC overflowed its heap. So whoever can write an entry can
 *     crash, or run code in, every later build. Hence:
 *     - the folder must be private to the user: kiln creates missing
 *       folders 0700 and refuses (one note on stderr, then builds from
 *       source as if the cache were off) a folder that is not a directory,
 *       is not owned by the user, or is writable by group or others;
 *     - every entry carries a SipHash-2-4 MAC under a 128-bit per-user
 *       secret, the file "key" in the folder: created once from
 *       /dev/urandom through a mkstemp file linked into place (so two
 *       builds never see half a key), mode 0600, and refused unless it is a
 *       regular file of the user's with no group or other permission bits.
 *       An entry that kiln did not write under this secret -- copied from
 *       another machine or account, edited, or damaged in a way that keeps
 *       its CRC -- is a miss, never loaded.
 *     Out of scope: someone who can read the user's files or run as the
 *     user (they can forge entries, but could equally run code directly).
 *     Only the cache folder itself is checked, not its parents: a folder
 *     that someone else swaps in through a parent they can write is theirs,
 *     and the owner check refuses it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache_entry_internal.h"
#include "cl_internal.h"

#define CACHE_PATH_MAX 4200
#define CACHE_KEY_FILE "key"

/* ==== Key ==== */

static uint64_t fnv1a(uint64_t h, const void *data, size_t len) {
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Hashes a string with its terminator, so "ab" + "c" differs from "a" + "bc". */
static uint64_t fnv1a_str(uint64_t h, const char *s) { return fnv1a(h, s, strlen(s) + 1); }

static uint64_t device_string_hash(uint64_t h, const struct kiln_device_state *st,
                                   cl_device_info what) {
    char buf[256];
    size_t len = 0;
    if (clGetDeviceInfo(st->device, what, sizeof buf - 1, buf, &len) != CL_SUCCESS)
        len = 0;
    buf[len < sizeof buf ? len : sizeof buf - 1] = '\0';
    return fnv1a_str(h, buf);
}

static uint64_t cache_key(const struct kiln_device_state *st, const char *file, const char *text,
                          const char *options) {
    uint64_t h = 0xcbf29ce484222325ULL;
    char buf[256];
    size_t len = 0;
    if (clGetPlatformInfo(st->platform, CL_PLATFORM_VERSION, sizeof buf - 1, buf, &len) !=
        CL_SUCCESS)
        len = 0;
    buf[len < sizeof buf ? len : sizeof buf - 1] = '\0';
    h = fnv1a_str(h, st->info.platform_name);
    h = fnv1a_str(h, buf);
    h = fnv1a_str(h, st->info.device_name);
    h = device_string_hash(h, st, CL_DEVICE_VERSION);
    h = device_string_hash(h, st, CL_DRIVER_VERSION);
    h = fnv1a_str(h, file);
    h = fnv1a_str(h, text);
    return fnv1a_str(h, options);
}

/* ==== Folder and secret ==== */

/* One note per process about a cache that is not used (decision 6): the
 * build goes on from source, so this is advice, not an error. */
static void note_refused(const char *dir, const char *why) {
    static atomic_flag noted = ATOMIC_FLAG_INIT;
    if (!atomic_flag_test_and_set(&noted))
        fprintf(stderr,
                "kiln: note: program cache %s not used: %s; make it private to you (chmod 700) "
                "or set KILN_CACHE_DIR\n",
                dir, why);
}

/* mkdir -p: every missing folder on the way to path, private (0700). */
static bool make_dirs(char *path) {
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        const bool ok = mkdir(path, 0700) == 0 || errno == EEXIST;
        *p = '/';
        if (!ok)
            return false;
    }
    return mkdir(path, 0700) == 0 || errno == EEXIST;
}

/* Decision 6: a directory of the user's that nobody else can write. */
static bool dir_private(const char *dir) {
    struct stat sb;
    char why[96];
    if (stat(dir, &sb) != 0)
        return false; /* mkdir_p failed already: nothing to say twice */
    if (!S_ISDIR(sb.st_mode)) {
        note_refused(dir, "it is not a folder");
        return false;
    }
    if (sb.st_uid != geteuid()) {
        snprintf(why, sizeof why, "it belongs to uid %ld, not to you", (long)sb.st_uid);
        note_refused(dir, why);
        return false;
    }
    if (sb.st_mode & (S_IWGRP | S_IWOTH)) {
        snprintf(why, sizeof why, "it is writable by %s (mode %03o)",
                 sb.st_mode & S_IWOTH ? "others" : "its group", (unsigned)(sb.st_mode & 0777));
        note_refused(dir, why);
        return false;
    }
    return true;
}

/* The cache folder (decision 5), created if missing and checked private
 * (decision 6); false when off, unavailable or refused. */
static bool cache_dir(char *out, size_t cap) {
    const char *env = getenv("KILN_CACHE_DIR");
    int len;
    if (env && *env) {
        if (strcmp(env, "off") == 0)
            return false;
        len = snprintf(out, cap, "%s", env);
    } else if ((env = getenv("XDG_CACHE_HOME")) && *env) {
        len = snprintf(out, cap, "%s/kiln", env);
    } else if ((env = getenv("HOME")) && *env) {
        len = snprintf(out, cap, "%s/.cache/kiln", env);
    } else {
        return false;
    }
    return len > 0 && (size_t)len < cap && make_dirs(out) && dir_private(out);
}

/* Reads the secret from an open key file after checking what it is. */
static bool read_secret(int fd, const char *dir, uint8_t secret[KILN_CACHE_SECRET]) {
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size != KILN_CACHE_SECRET)
        return false;
    if (sb.st_uid != geteuid() || (sb.st_mode & 077) != 0) {
        note_refused(dir, "its key file is not yours alone (want mode 600)");
        return false;
    }
    return read(fd, secret, KILN_CACHE_SECRET) == KILN_CACHE_SECRET;
}

/* A new secret in a mkstemp file, linked to dir/key only when complete:
 * link fails if another process got there first, and then its key is
 * read instead. */
static bool create_secret(const char *dir, const char *path) {
    char tmp[CACHE_PATH_MAX];
    uint8_t secret[KILN_CACHE_SECRET];
    if (snprintf(tmp, sizeof tmp, "%s/.key-XXXXXX", dir) >= (int)sizeof tmp)
        return false;
    const int rnd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (rnd < 0)
        return false;
    const bool got = read(rnd, secret, sizeof secret) == (ssize_t)sizeof secret;
    close(rnd);
    const int fd = got ? mkstemp(tmp) : -1;
    if (fd < 0)
        return false;
    bool ok = fchmod(fd, 0600) == 0 && write(fd, secret, sizeof secret) == (ssize_t)sizeof secret;
    ok = close(fd) == 0 && ok;
    const bool linked = ok && link(tmp, path) == 0;
    const bool lost_race = ok && !linked && errno == EEXIST;
    unlink(tmp);
    memset(secret, 0, sizeof secret);
    return linked || lost_race;
}

/* The folder's secret (decision 6), created on first use. */
static bool cache_secret(const char *dir, uint8_t secret[KILN_CACHE_SECRET]) {
    char path[CACHE_PATH_MAX];
    if (snprintf(path, sizeof path, "%s/" CACHE_KEY_FILE, dir) >= (int)sizeof path)
        return false;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create_secret(dir, path))
        fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return false;
    const bool ok = read_secret(fd, dir, secret);
    close(fd);
    return ok;
}

/* ==== Entries ==== */

/* Where the entry for (file, key) lives, and the secret that signs it. */
static bool cache_place(const char *file, uint64_t key, char *dir, char *path,
                        uint8_t secret[KILN_CACHE_SECRET]) {
    if (!cache_dir(dir, CACHE_PATH_MAX) || !cache_secret(dir, secret))
        return false;
    const int len =
        snprintf(path, CACHE_PATH_MAX, "%s/%s-%016llx.bin", dir, file, (unsigned long long)key);
    return len > 0 && len < CACHE_PATH_MAX;
}

/* The whole file at path when it is a regular file of plausible size, or
 * NULL. */
static uint8_t *read_file(const char *path, size_t *len) {
    const int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat sb;
    uint8_t *buf = NULL;
    size_t got = 0;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > KILN_CACHE_HEADER &&
        (uint64_t)sb.st_size <= KILN_CACHE_HEADER + KILN_CACHE_MAX_BINARY &&
        (buf = malloc((size_t)sb.st_size)) != NULL) {
        while (got < (size_t)sb.st_size) {
            const ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
    }
    close(fd);
    if (buf && got != (size_t)sb.st_size) {
        free(buf);
        buf = NULL;
    }
    *len = got;
    return buf;
}

/* Decision 4. */
static void write_entry(const char *dir, const char *path, uint64_t key, const uint8_t *bin,
                        size_t size, const uint8_t secret[KILN_CACHE_SECRET]) {
    char tmp[CACHE_PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s/.tmp-XXXXXX", dir) >= (int)sizeof tmp)
        return;
    const int fd = mkstemp(tmp);
    if (fd < 0)
        return;
    uint8_t head[KILN_CACHE_HEADER];
    kiln_cache_entry_header(head, key, bin, size, secret);
    bool ok = fchmod(fd, 0600) == 0;
    const uint8_t *parts[2] = {head, bin};
    const size_t lens[2] = {sizeof head, size};
    for (int i = 0; i < 2 && ok; i++)
        for (size_t done = 0; ok && done < lens[i];) {
            const ssize_t w = write(fd, parts[i] + done, lens[i] - done);
            ok = w > 0;
            done += ok ? (size_t)w : 0;
        }
    if (close(fd) != 0 || !ok || rename(tmp, path) != 0)
        unlink(tmp);
}

/* ==== Public ==== */

cl_program kiln_cl_cache_load(struct kiln_device_state *st, const char *file, const char *text,
                              const char *options) {
    char dir[CACHE_PATH_MAX], path[CACHE_PATH_MAX];
    uint8_t secret[KILN_CACHE_SECRET];
    const uint64_t key = cache_key(st, file, text, options);
    size_t len = 0, size = 0;
    const uint8_t *payload = NULL;
    uint8_t *buf = NULL;
    const bool found = cache_place(file, key, dir, path, secret) && (buf = read_file(path, &len)) &&
                       kiln_cache_entry_parse(buf, len, key, secret, &payload, &size);
    explicit_bzero(secret, sizeof secret); /* the key stays in its file only */
    if (!found) {
        free(buf);
        return NULL;
    }
    cl_int err = CL_SUCCESS, bin_status = CL_SUCCESS;
    const unsigned char *bins[1] = {payload};
    cl_program prog =
        clCreateProgramWithBinary(st->context, 1, &st->device, &size, bins, &bin_status, &err);
    free(buf);
    if (err == CL_SUCCESS && bin_status == CL_SUCCESS &&
        clBuildProgram(prog, 1, &st->device, options, NULL, NULL) == CL_SUCCESS) {
        st->cache_hits++;
        return prog;
    }
    if (prog)
        clReleaseProgram(prog);
    return NULL;
}

void kiln_cl_cache_store(const struct kiln_device_state *st, const char *file, const char *text,
                         const char *options, cl_program prog) {
    char dir[CACHE_PATH_MAX], path[CACHE_PATH_MAX];
    uint8_t secret[KILN_CACHE_SECRET];
    const uint64_t key = cache_key(st, file, text, options);
    size_t size = 0;
    if (!cache_place(file, key, dir, path, secret) ||
        clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS ||
        size == 0 || size > KILN_CACHE_MAX_BINARY) {
        explicit_bzero(secret, sizeof secret);
        return;
    }
    unsigned char *bin = malloc(size);
    unsigned char *bins[1] = {bin};
    if (bin && clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) == CL_SUCCESS)
        write_entry(dir, path, key, bin, size, secret);
    explicit_bzero(secret, sizeof secret);
    free(bin);
}
