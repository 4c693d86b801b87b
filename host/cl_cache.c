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
 *  3. A file is a 32-byte header (magic, key, payload size, CRC-32C of the
 *     payload) and the binary. Anything that does not match -- a short
 *     read, another key, a bad checksum, a binary the driver rejects --
 *     is a miss: the program is built from source as before and the file
 *     rewritten. The cache can make a build faster, never fail one.
 *  4. Files are written to a temporary name and renamed into place, so
 *     concurrent builds never see a half-written file; no fsync, since a
 *     torn file after a crash is just a miss (decision 3).
 *  5. The folder is $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else
 *     $HOME/.cache/kiln; KILN_CACHE_DIR=off turns the cache off. Errors
 *     reading or writing it are silent: ctx's last error is never touched.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cl_internal.h"
#include "../common/crc32c_internal.h"
#include "../common/le_internal.h"

#define CACHE_MAGIC      "KILNCLB1"
#define CACHE_HEADER     32 /* magic 8, key 8, payload size 8, crc32c 4, reserved 4 */
#define CACHE_MAX_BINARY ((uint64_t)256 << 20)

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

/* ==== Files ==== */

/* mkdir -p: every missing folder on the way to path. */
static bool make_dirs(char *path) {
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        const bool ok = mkdir(path, 0755) == 0 || errno == EEXIST;
        *p = '/';
        if (!ok)
            return false;
    }
    return mkdir(path, 0755) == 0 || errno == EEXIST;
}

/* The cache folder (decision 5), created if missing; false when off or
 * unavailable. */
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
    return len > 0 && (size_t)len < cap && make_dirs(out);
}

static bool cache_path(char *out, size_t cap, const char *file, uint64_t key) {
    char dir[4096];
    if (!cache_dir(dir, sizeof dir))
        return false;
    const int len = snprintf(out, cap, "%s/%s-%016llx.bin", dir, file, (unsigned long long)key);
    return len > 0 && (size_t)len < cap;
}

/* The payload of a valid file for key, or NULL (decision 3). */
static unsigned char *read_binary(const char *path, uint64_t key, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char head[CACHE_HEADER], *bin = NULL;
    bool ok = fread(head, 1, sizeof head, f) == sizeof head && memcmp(head, CACHE_MAGIC, 8) == 0 &&
              kiln_get_u64le(head + 8) == key;
    const uint64_t len = ok ? kiln_get_u64le(head + 16) : 0;
    ok = ok && len > 0 && len <= CACHE_MAX_BINARY && (bin = malloc((size_t)len)) != NULL &&
         fread(bin, 1, (size_t)len, f) == len && fgetc(f) == EOF &&
         kiln_crc32c(0, bin, (size_t)len) == kiln_get_u32le(head + 24);
    fclose(f);
    if (!ok) {
        free(bin);
        return NULL;
    }
    *size = (size_t)len;
    return bin;
}

static void write_binary(const char *path, uint64_t key, const unsigned char *bin, size_t size) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return;
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return;
    unsigned char head[CACHE_HEADER] = {0};
    memcpy(head, CACHE_MAGIC, 8);
    kiln_put_u64le(head + 8, key);
    kiln_put_u64le(head + 16, size);
    kiln_put_u32le(head + 24, kiln_crc32c(0, bin, size));
    const bool ok =
        fwrite(head, 1, sizeof head, f) == sizeof head && fwrite(bin, 1, size, f) == size;
    if (fclose(f) != 0 || !ok || rename(tmp, path) != 0)
        unlink(tmp);
}

/* ==== Public ==== */

cl_program kiln_cl_cache_load(struct kiln_device_state *st, const char *file, const char *text,
                              const char *options) {
    char path[4200];
    size_t size = 0;
    const uint64_t key = cache_key(st, file, text, options);
    unsigned char *bin;
    if (!cache_path(path, sizeof path, file, key) || !(bin = read_binary(path, key, &size)))
        return NULL;
    cl_int err = CL_SUCCESS, bin_status = CL_SUCCESS;
    const unsigned char *bins[1] = {bin};
    cl_program prog =
        clCreateProgramWithBinary(st->context, 1, &st->device, &size, bins, &bin_status, &err);
    free(bin);
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
    char path[4200];
    const uint64_t key = cache_key(st, file, text, options);
    size_t size = 0;
    if (!cache_path(path, sizeof path, file, key) ||
        clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS ||
        size == 0 || size > CACHE_MAX_BINARY)
        return;
    unsigned char *bin = malloc(size);
    unsigned char *bins[1] = {bin};
    if (bin && clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) == CL_SUCCESS)
        write_binary(path, key, bin, size);
    free(bin);
}
