/* shard_build.c -- kiln_shardset_build: N independent shard indexes over
 * one dataset, split by kiln_shard_of(row), and the manifest that names
 * them (graph/shardset.c, docs/FORMAT.md "Shard set manifest").
 *
 * Design decisions:
 *  1. A shard is built from a file of its own rows: one sequential pass over
 *     the input gathers them (in row order, converted to float32 as
 *     kiln_dataset_read_f32 converts them) into an fbin file in the work
 *     dir, which the build then maps in place as it maps any fbin input
 *     (graph/hnsw_build.c decision 5). So every shard is an ordinary build,
 *     device or insert, with its budget, work dir, resume and determinism,
 *     and the work dir holds one shard's rows at a time, n d 4 / N bytes.
 *     The price is one read of the input per shard built; the rows of a
 *     shard are spread over the whole input by the hash, so no read of
 *     less would find them.
 *  1a. With many shards a page of the input holds none of most shards' rows
 *     (a 4 KiB page holds 8 rows of 128 floats, and a shard takes one row in
 *     N), so past GATHER_SPARSE_FACTOR times the rows a page holds the
 *     gather reads the shard's rows one by one, touching about n/N pages of
 *     the mapping instead of all of them: the same bytes either way.
 *  2. The labels are the row numbers, or the caller's (params->labels, one
 *     a row: unique, not -1), and the hash routes each row by its label,
 *     so the set's later adds, deletes and updates (graph/shardset.c
 *     decision 5) find it in its shard. They are written into the built
 *     index before it is checked and saved, so a shard's search answers in
 *     the set's labels and the merge needs no table.
 *  3. The manifest is written last, only by a call that builds (or keeps)
 *     every shard, from the headers of the shard files as saved; until then
 *     the set's path does not exist, so no half-built set can be opened.
 *     Shard files are each saved atomically and are finished when present:
 *     with resume, one whose header, labels and a sample of its vectors
 *     match what this call would build is kept (a killed set build, or N
 *     processes each building one shard, ends with a call that only writes
 *     the manifest).
 *  4. Under MPI (kiln_dist_init, more than one rank) every rank opens the
 *     input and builds the shards s with s mod ranks = its rank, with its
 *     own threads and device; then the ranks agree on the outcome
 *     (kiln_dist_agree: a failure anywhere is every rank's failure, named by
 *     rank), rank 0 writes the manifest from the shard files (so the output
 *     folder must be one that rank 0 sees, a shared file system), and the
 *     report sums the shards built and kept and takes the slowest.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build_internal.h"
#include "hnsw_internal.h"
#include "shardset_internal.h"
#include "../common/afile_internal.h"
#include "../common/ctx_internal.h"
#include "../common/dataset_internal.h"
#include "../common/dist_internal.h"
#include "../common/le_internal.h"
#include "../common/progress_internal.h"

/* ==== Tunables ==== */

/* Bytes of rows the gather reads at a time: big enough that the per-call
 * cost of kiln_dataset_read_f32 vanishes, small enough to stay in L2/L3
 * while its rows are filtered and written (16,384 rows at d = 128). */
#define GATHER_CHUNK_BYTES ((size_t)8 << 20)
/* Decision 1a: the gather reads only its shard's rows once there are this
 * many times more shards than rows in a 4 KiB page of the input. */
#define GATHER_SPARSE_FACTOR 4
/* Vectors compared with the input before a finished shard is kept: a check
 * that the shard was built from this input (a different input of the same
 * size differs in almost every row), at 64 row reads whatever the size;
 * the labels and every section's CRC are checked in full beside it. */
#define KEEP_SAMPLE 64

/* ==== Names ==== */

/* "<set_path>-<s>-of-<N>.kiln"; its last component must be a plain name
 * (kiln_shard_name_ok), since the manifest stores it as one. */
static kiln_status shard_path(kiln_ctx *ctx, const char *set_path, uint32_t s, uint32_t n,
                              char *out, size_t cap, const char **name) {
    const int len = snprintf(out, cap, "%s-%u-of-%u.kiln", set_path, s, n);
    if (len < 0 || (size_t)len >= cap)
        return kiln_fail(ctx, KILN_E_ARG, "shard set %s: the path is too long", set_path);
    const char *slash = strrchr(out, '/');
    *name = slash ? slash + 1 : out;
    if (!kiln_shard_name_ok(*name, strlen(*name)))
        return kiln_fail(ctx, KILN_E_ARG,
                         "shard set %s: its file name must be a plain name of [A-Za-z0-9._-] "
                         "(the manifest names the shards beside it)",
                         set_path);
    return KILN_OK;
}

/* ==== Gathering a shard's rows (decision 1) ==== */

/* Reads rows [first, first + count) of ds as float32 into out, with ds's
 * message in ctx on failure. */
static kiln_status read_rows(kiln_ctx *ctx, const kiln_dataset *ds, size_t first, size_t count,
                             float *out) {
    const kiln_status st = kiln_dataset_read_f32(ds, first, count, out);
    if (st && ds->ctx != ctx)
        kiln_fail(ctx, st, "%s", kiln_errmsg(ds->ctx));
    return st;
}

/* Writes the count rows named by rows_of (ascending row numbers) to path
 * as an fbin file. */
static kiln_status gather(kiln_ctx *ctx, const kiln_dataset *ds, uint32_t nshards,
                          const int64_t *rows_of, uint64_t count, const char *path,
                          uint64_t *written) {
    const size_t dim = ds->dim, row = dim * sizeof(float);
    size_t chunk = GATHER_CHUNK_BYTES / row;
    chunk = chunk ? chunk : 1;
    float *buf;
    kiln_status st = kiln_alloc(ctx, chunk * row, "gathered rows", (void **)&buf);
    if (st)
        return st;
    kiln_afile *af;
    if ((st = kiln_afile_open(ctx, path, &af))) {
        free(buf);
        return st;
    }
    uint8_t head[8];
    kiln_put_u32le(head, (uint32_t)count);
    kiln_put_u32le(head + 4, (uint32_t)dim);
    st = kiln_afile_write(af, head, sizeof head);
    /* Decision 1a: rows one by one where a page holds far fewer than one of
     * this shard's, else every row in chunks. */
    const size_t per_page = ds->row_stride < 4096 ? 4096 / ds->row_stride : 1;
    const bool sparse = nshards >= GATHER_SPARSE_FACTOR * per_page;
    uint64_t j = 0; /* the next of the shard's rows */
    for (size_t first = 0; first < ds->n && j < count && !st; first += chunk) {
        const size_t rows = ds->n - first < chunk ? ds->n - first : chunk;
        if (!sparse && (st = read_rows(ctx, ds, first, rows, buf)))
            break;
        for (; j < count && (uint64_t)rows_of[j] < first + rows && !st; j++) {
            float *r = sparse ? buf : buf + ((size_t)rows_of[j] - first) * dim;
            if (sparse && (st = read_rows(ctx, ds, (size_t)rows_of[j], 1, r)))
                break;
            if (KILN_HOST_BIG_ENDIAN)
                for (size_t t = 0; t < dim; t++)
                    kiln_put_f32le((uint8_t *)&r[t], r[t]);
            st = kiln_afile_write(af, r, row);
        }
    }
    if (st) {
        kiln_afile_abort(af);
    } else {
        st = kiln_afile_commit(af);
        *written += sizeof head + count * row;
    }
    free(buf);
    return st;
}

/* Row i's label: the caller's, or i (decision 2). */
static inline int64_t row_label(const kiln_build_params *p, uint64_t i) {
    return p->labels ? p->labels[i] : (int64_t)i;
}

/* ==== Keeping a finished shard (decision 3) ==== */

/* Whether node's rows are those row (normalised for COS) gives: its f32
 * row where it has one, else row's encoding (graph/storage.c), made in
 * code (code_bytes). */
static bool shard_row_is(const struct kiln_index *ix, uint32_t node, const float *row,
                         uint8_t *code) {
    if (ix->vectors)
        return memcmp(row, kiln_vector(ix, node), ix->dim * sizeof *row) == 0;
    kiln_encode_row(ix->storage, row, ix->dim, code);
    return memcmp(code, kiln_code(ix, node), ix->code_bytes) == 0;
}

/* True when the shard file at path is what building shard s would give, as
 * far as the file tells: every section's CRC (a verifying open, a read of
 * the file, far cheaper than its build), its header's parameters (dim,
 * metric, M, ef_construction, seed), every label, and KEEP_SAMPLE of its
 * vectors against the input. The device parameters that the file does not
 * record (clusters, replicas, knn_k) are the caller's to keep the same. */
static bool shard_finished(kiln_ctx *ctx, const kiln_dataset *ds, const kiln_build_params *p,
                           const char *path, const int64_t *labels, const int64_t *rows,
                           uint64_t count) {
    struct stat sb;
    if (stat(path, &sb) != 0)
        return false;
    kiln_index *ix = NULL;
    float *row = NULL;
    uint8_t *code = NULL;
    bool same =
        kiln_index_open(ctx, path, KILN_LOAD_VERIFY, &ix) == KILN_OK && ix->count == count &&
        ix->dim == ds->dim && ix->metric == p->metric && ix->M == p->M &&
        ix->ef_construction == p->ef_construction && ix->seed == p->seed &&
        ix->storage == p->storage &&
        (ix->storage == KILN_STORAGE_F32 || !ix->vectors == !p->rerank) &&
        memcmp(ix->labels, labels, count * sizeof *labels) == 0 &&
        kiln_alloc(ctx, ds->dim * sizeof *row, "a row", (void **)&row) == KILN_OK &&
        kiln_alloc(ctx, ix->code_bytes ? ix->code_bytes : 1, "a row", (void **)&code) == KILN_OK;
    for (uint32_t t = 0; same && t < KEEP_SAMPLE; t++) {
        const uint64_t j = count > 1 ? (count - 1) * t / (KEEP_SAMPLE - 1) : 0;
        same = kiln_dataset_read_f32(ds, (size_t)rows[j], 1, row) == KILN_OK;
        if (same && p->metric == KILN_METRIC_COS)
            kiln_normalize(row, ds->dim);
        same = same && shard_row_is(ix, (uint32_t)j, row, code);
    }
    free(row);
    free(code);
    kiln_index_free(ix);
    kiln_clear_error(ctx);
    return same;
}

/* ==== One shard ==== */

typedef struct set_build {
    kiln_ctx *ctx;
    const kiln_dataset *ds;
    const kiln_build_params *p;
    uint32_t nshards;
    const char *set_path;
    const char *work; /* the set's work dir */
    bool temp;        /* work is a private folder, removed whatever happens */
    uint64_t *counts; /* rows per shard */
    kiln_shardset_report *rep;
} set_build;

/* Removes a shard's build work dir where one is left. */
static kiln_status drop_work_dir(kiln_ctx *ctx, const char *dir) {
    struct stat sb;
    return stat(dir, &sb) == 0 ? kiln_work_dir_remove(ctx, dir) : KILN_OK;
}

static kiln_status build_one(set_build *sb, uint32_t s) {
    kiln_ctx *ctx = sb->ctx;
    const uint64_t count = sb->counts[s];
    char out[4096], rows_path[4096], sub[4096];
    const char *name = out;
    kiln_status st = shard_path(ctx, sb->set_path, s, sb->nshards, out, sizeof out, &name);
    if (st)
        return st;
    int64_t *labels, *rows_of;
    if ((st = kiln_alloc(ctx, 2 * count * sizeof *labels, "shard labels", (void **)&labels)))
        return st;
    rows_of = labels + count;
    for (uint64_t i = 0, j = 0; i < sb->ds->n; i++)
        if (kiln_shard_of(row_label(sb->p, i), sb->nshards) == s) {
            rows_of[j] = (int64_t)i;
            labels[j++] = row_label(sb->p, i);
        }
    snprintf(rows_path, sizeof rows_path, "%s/shard-%u-of-%u.fbin", sb->work, s, sb->nshards);
    snprintf(sub, sizeof sub, "%s/shard-%u-of-%u", sb->work, s, sb->nshards);
    if (sb->p->resume && shard_finished(ctx, sb->ds, sb->p, out, labels, rows_of, count)) {
        free(labels);
        sb->rep->kept++;
        if (drop_work_dir(ctx, sub)) /* a build killed after its save left it */
            kiln_clear_error(ctx);
        return KILN_OK;
    }
    const double t0 = kiln_now();
    kiln_build_params p = *sb->p;
    const bool device = p.method == KILN_METHOD_DEVICE;
    if (device && !p.resume && (st = drop_work_dir(ctx, sub))) { /* built anew */
        free(labels);
        return st;
    }
    p.work_dir = device ? sub : NULL;
    p.resume = device && p.resume;
    p.labels = NULL; /* the shard's own, after its build (decision 2) */
    kiln_dataset *rows = NULL;
    kiln_index *ix = NULL;
    st = gather(ctx, sb->ds, sb->nshards, rows_of, count, rows_path, &sb->rep->work_bytes_written);
    kiln_fault_point("shard"); /* a test's kill -9 between the gather and the build */
    if (!st &&
        !(st = kiln_dataset_open(ctx, rows_path, KILN_FORMAT_FBIN,
                                 sb->ds->flags & KILN_OPEN_ALLOW_NONFINITE, &rows)) &&
        !(st = kiln_index_build_dataset(ctx, rows, &p, &ix))) {
        struct kiln_index *w = ix;
        memcpy(w->labels, labels, count * sizeof *labels); /* decision 2 */
        kiln_build_report br;
        if (kiln_index_build_report(ix, &br) == KILN_OK) {
            sb->rep->work_bytes_written += br.work_bytes_written;
            sb->rep->work_bytes_read += br.work_bytes_read;
        }
        if (!(st = kiln_index_check(ix)) && !(st = kiln_index_save(ix, out)) && device)
            st = kiln_work_dir_remove(ctx, sub);
    }
    kiln_index_free(ix);
    kiln_dataset_free(rows);
    unlink(rows_path); /* a resumed build gathers them again: one read of the input */
    free(labels);
    if (st && device && sb->temp) { /* nothing to resume: a private folder goes */
        char why[KILN_ERRMSG_MAX];
        snprintf(why, sizeof why, "%s", kiln_errmsg(ctx));
        kiln_work_dir_remove(ctx, sub);
        kiln_fail(ctx, st, "%s", why);
    }
    if (st)
        return st;
    const double secs = kiln_now() - t0;
    sb->rep->built++;
    if (secs > sb->rep->slowest_seconds)
        sb->rep->slowest_seconds = secs;
    return KILN_OK;
}

/* ==== The manifest (decision 3) ==== */

static kiln_status write_manifest(set_build *sb) {
    kiln_ctx *ctx = sb->ctx;
    shard_manifest m = {.shards = sb->nshards,
                        .count = sb->ds->n,
                        .dim = (uint32_t)sb->ds->dim,
                        .metric = sb->p->metric};
    kiln_status st =
        kiln_calloc(ctx, sb->nshards * sizeof *m.entry, "manifest entries", (void **)&m.entry);
    for (uint32_t s = 0; s < sb->nshards && !st; s++) {
        char out[4096];
        const char *name = out;
        kiln_index_info info;
        if ((st = shard_path(ctx, sb->set_path, s, sb->nshards, out, sizeof out, &name)) ||
            (st = kiln_index_info_read(ctx, out, &info)))
            break;
        if (info.count != sb->counts[s]) {
            st = kiln_fail(ctx, KILN_E_FORMAT, "%s: holds %llu vectors, shard %u has %llu", out,
                           (unsigned long long)info.count, s, (unsigned long long)sb->counts[s]);
            break;
        }
        memcpy(m.entry[s].file, name, strlen(name) + 1); /* shard_path: <= SHARDSET_NAME_MAX */
        m.entry[s].count = info.count;
        m.entry[s].file_bytes = info.file_bytes;
        m.entry[s].header_crc = info.header_crc32c;
    }
    if (!st)
        st = kiln_manifest_write(ctx, sb->set_path, &m);
    free(m.entry);
    return st;
}

kiln_status kiln_shardset_build(kiln_ctx *ctx, const kiln_dataset *ds,
                                const kiln_build_params *params, uint32_t nshards, int32_t shard,
                                const char *set_path, kiln_shardset_report *rep) {
    kiln_shardset_report local;
    rep = rep ? rep : &local;
    memset(rep, 0, sizeof *rep);
    rep->shards = nshards;
    if (!ds || !params || !set_path || !*set_path)
        return kiln_fail(ctx, KILN_E_ARG, "shard set build: NULL dataset, parameters or path");
    if (nshards < 1 || nshards > KILN_MAX_SHARDS)
        return kiln_fail(ctx, KILN_E_ARG, "shard set build: %u shards (1 to %u)", nshards,
                         KILN_MAX_SHARDS);
    if (shard >= (int32_t)nshards)
        return kiln_fail(ctx, KILN_E_ARG, "shard set build: shard %d of %u (0 to %u)", shard,
                         nshards, nshards - 1);
    const double t0 = kiln_now();
    uint64_t *counts = NULL;
    kiln_status st = params->labels ? kiln_build_labels_check(ctx, params->labels, ds->n) : KILN_OK;
    if (!st)
        st = kiln_calloc(ctx, nshards * sizeof *counts, "shard counts", (void **)&counts);
    for (size_t i = 0; i < ds->n && !st; i++)
        counts[kiln_shard_of(row_label(params, i), nshards)]++;
    for (uint32_t s = 0; s < nshards && !st; s++)
        if (counts[s] == 0)
            st = kiln_fail(ctx, KILN_E_ARG,
                           "shard set build: shard %u of %u would hold no vectors (%zu rows in "
                           "%s): use fewer shards",
                           s, nshards, ds->n, ds->path);
        else if (counts[s] >= UINT32_MAX)
            st = kiln_fail(ctx, KILN_E_ARG,
                           "shard set build: shard %u of %u would hold %llu vectors, more than "
                           "an index can (2^32 - 2): use more shards",
                           s, nshards, (unsigned long long)counts[s]);
    char tmp[4096] = "";
    const char *work = params->work_dir;
    if (!st && !work) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp, sizeof tmp, "%s/kiln-shards-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmp))
            st = kiln_fail(ctx, KILN_E_IO, "shard set build: cannot create a work dir in %s: %s",
                           base && *base ? base : "/tmp", strerror(errno));
        work = tmp;
    } else if (!st && mkdir(work, 0700) != 0 && errno != EEXIST) {
        st = kiln_fail(ctx, KILN_E_IO, "work dir %s: cannot create: %s", work, strerror(errno));
    }
    set_build sb = {.ctx = ctx,
                    .ds = ds,
                    .p = params,
                    .nshards = nshards,
                    .set_path = set_path,
                    .work = work,
                    .temp = *tmp != '\0',
                    .counts = counts,
                    .rep = rep};
    const int rank = kiln_dist_rank(), ranks = kiln_dist_size();
    if (!st && ranks > 1 && shard >= 0)
        st = kiln_fail(ctx, KILN_E_ARG,
                       "shard set build: one shard (%d) asked of each of %d ranks: under MPI "
                       "every rank takes its share of the shards",
                       shard, ranks);
    for (uint32_t s = 0; s < nshards && !st; s++)
        if ((shard < 0 && s % (uint32_t)ranks == (uint32_t)rank) || (uint32_t)shard == s)
            st = build_one(&sb, s);
    /* Decision 4: every rank learns the first failure, then rank 0 writes. */
    st = kiln_dist_agree(ctx, st);
    uint64_t sums[4] = {rep->built, rep->kept, rep->work_bytes_written, rep->work_bytes_read};
    if (!st && !(st = kiln_dist_sum_u64(ctx, sums, 4)) &&
        !(st = kiln_dist_max_f64(ctx, &rep->slowest_seconds))) {
        rep->built = (uint32_t)sums[0];
        rep->kept = (uint32_t)sums[1];
        rep->work_bytes_written = sums[2];
        rep->work_bytes_read = sums[3];
    }
    if (!st && shard < 0) {
        if (rank == 0)
            st = write_manifest(&sb);
        st = kiln_dist_agree(ctx, st);
        rep->manifest_written = st == KILN_OK;
    }
    /* Empty once every shard's files are gone; kept after a failure, for the
     * resume, and after a one-shard call, whose work dir N processes share
     * (the call that writes the manifest removes it). */
    if (*tmp || (shard < 0 && !st))
        rmdir(work);
    free(counts);
    rep->seconds = kiln_now() - t0;
    rep->peak_rss_anon = kiln_peak_rss_anon();
    return st;
}
