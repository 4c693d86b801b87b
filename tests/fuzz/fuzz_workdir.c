/* fuzz_workdir.c -- fuzz target for the work-file reader (common/workdir.c),
 * the bytes a resumed `kiln build` reads back from its work dir.
 *
 * Each input is written as work file "x" of one open work dir and read
 * twice:
 *  - as given: magic, checksums, fingerprint, size and table checks;
 *  - with its fingerprint set to the dir's, its file size field set to the
 *    input's length and both CRCs recomputed (where the input holds a
 *    header and a table), so the checks behind them (segment bounds,
 *    overlap, the segment CRCs) are reached.
 * Every segment the reader accepts is read; a read must succeed or fail
 * with a status, within the segment's length. A successful open must
 * report segments that lie inside the file. Any broken promise calls
 * abort(), which libFuzzer and the replay driver report.
 *
 * Design decisions:
 *  1. One work dir per process, created on the first input (its manifest
 *     fixes the fingerprint) and removed at exit; the input goes through the
 *     real file path (open, fstat, pread), as a resume reads it.
 *  2. Seeds are work files written by kiln_workdir_put itself (0, 1 and 3
 *     segments, one empty), so mutations start from the real layout.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"
#include "fuzz_util.h"
#include "../../common/crc32c_internal.h"
#include "../../common/workdir_internal.h"

#define FUZZ_FINGERPRINT 0x6b696c6e66757a7aULL
#define FUZZ_MAX_SEG     ((uint64_t)1 << 24) /* bytes of one segment read */

static kiln_workdir *fuzz_wd;
static char fuzz_dir[1100];

static void fuzz_wd_remove(void) {
    kiln_workdir_remove(fuzz_wd);
    fuzz_wd = NULL;
}

static kiln_workdir *wd_get(void) {
    if (fuzz_wd)
        return fuzz_wd;
    snprintf(fuzz_dir, sizeof fuzz_dir, "%s", fuzz_path("workdir"));
    if (kiln_workdir_open(fuzz_ctx(), fuzz_dir, FUZZ_FINGERPRINT, "fuzz", true, &fuzz_wd) !=
        KILN_OK)
        abort();
    atexit(fuzz_wd_remove);
    return fuzz_wd;
}

static void write_input(const uint8_t *data, size_t size) {
    char path[1200];
    snprintf(path, sizeof path, "%s/x.kw", fuzz_dir);
    if (!write_file(path, data, size))
        abort();
}

/* Opens "x" and reads every segment, checking the reader's promises. */
static void read_all(kiln_workdir *wd, uint64_t file_len) {
    kiln_workfile *wf = NULL;
    if (kiln_workfile_open(wd, "x", 0, &wf) != KILN_OK) {
        if (wf)
            abort();
        return;
    }
    for (uint32_t i = 0; i < kiln_workfile_segs(wf); i++) {
        const uint64_t len = kiln_workfile_seg_len(wf, i);
        if (len > file_len)
            abort();
        if (len > FUZZ_MAX_SEG)
            continue;
        uint8_t *buf = malloc(len ? len : 1);
        if (!buf)
            abort();
        (void)kiln_workfile_read(wf, i, buf);
        free(buf);
    }
    if (kiln_workfile_seg_len(wf, kiln_workfile_segs(wf)) != 0)
        abort();
    kiln_workfile_close(wf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kiln_workdir *wd = wd_get();
    write_input(data, size);
    read_all(wd, size);
    if (size < 64)
        return 0;
    /* Past the header's own checks: our fingerprint, the real size, fresh
     * CRCs of header and (as far as the input holds it) table. */
    uint8_t *fixed = malloc(size);
    if (!fixed)
        abort();
    memcpy(fixed, data, size);
    memcpy(fixed, "KILNWORK", 8);
    kiln_put_u32le(fixed + 8, 1);
    kiln_put_u64le(fixed + 16, FUZZ_FINGERPRINT);
    kiln_put_u64le(fixed + 24, size);
    const uint64_t segs = kiln_get_u32le(fixed + 12);
    const uint64_t table = segs * 24;
    if (table <= size - 64)
        kiln_put_u32le(fixed + 32, kiln_crc32c(0, fixed + 64, (size_t)table));
    memset(fixed + 36, 0, 24);
    kiln_put_u32le(fixed + 60, kiln_crc32c(0, fixed, 60));
    write_input(fixed, size);
    read_all(wd, size);
    free(fixed);
    return 0;
}

int kiln_fuzz_seed(size_t i, uint8_t **buf, size_t *len) {
    static const char text[] = "segment payload: records, offsets and ids";
    static const uint32_t words[] = {7, 2, 0x3f800000u, 5, 0x40000000u, 9};
    const kiln_work_seg sets[3][3] = {
        {{NULL, 0}}, {{text, sizeof text}}, {{words, sizeof words}, {NULL, 0}, {text, 5}}};
    const uint32_t counts[3] = {0, 1, 3};
    if (i >= 3)
        return 0;
    kiln_workdir *wd = wd_get();
    if (kiln_workdir_put(wd, "seed", sets[i], counts[i]) != KILN_OK)
        abort();
    char path[1200];
    snprintf(path, sizeof path, "%s/seed.kw", fuzz_dir);
    *buf = read_file(path, len);
    if (!*buf)
        abort();
    return 1;
}
