/* kiln_main.c -- the kiln command: build, search, eval, groundtruth, info,
 * check, generate, export, import, devices, add, delete, update. Uses the
 * public API (kiln.h) only.
 *
 * Design decisions:
 *  1. Every failure prints one line "kiln CMD: what is wrong" on stderr,
 *     naming options and files, never a C function. Usage errors (a bad or
 *     missing option or argument, a value out of range, an output that names
 *     a directory, an unknown extension or one of the inputs) exit 2 and are
 *     found before any work starts; data and runtime errors (a file that
 *     does not open or parse, an output folder that is missing or not
 *     writable, a device that fails, memory) exit 1. Library messages already say which
 *     operation failed ("build: M = ..."); the command's prefix is not
 *     repeated in front of the same word. Outputs are written atomically by
 *     the library, so a failed command leaves nothing behind.
 *  2. Human-readable tables go to stdout; --json switches to one JSON object
 *     per line for scripts and benchmarks. Strings in JSON are escaped
 *     (quote, backslash, control characters; other bytes pass through, so
 *     UTF-8 names stay readable) and a number that is not finite is written
 *     null, since JSON has no NaN or Inf.
 *  3. eval times queries one at a time, as a serving system sees them, after
 *     a warm-up pass; latency percentiles come from per-query timings.
 *  4. Numeric options declare the range the library accepts (the CLI_MAX_*
 *     tunables below mirror its limits), so an out-of-range value is a usage
 *     error naming the option and the real range, not a runtime error.
 *  5. Inputs read as vectors (build's BASE, the QUERIES of search, eval and
 *     groundtruth, groundtruth's BASE) must hold vectors: an int32 file
 *     (.ivecs, npy <i4) is ground-truth ids, and building or searching over
 *     ids is refused rather than done without a word. No override: a user
 *     with int32 vectors converts them, which is rarer than the mistake.
 *  6. Every buffer size is computed with an overflow check; the synthesizer
 *     is told the length of the buffer it fills.
 *  7. search --json writes one object per query line ({"query": i, "ids":
 *     [...], "distances": [...]}), so a script can stream the results.
 *  8. Every output is checked before the work starts (check_outputs): its
 *     folder exists and is writable, it is not a directory or another
 *     non-regular file, and it is not the same file (device and inode, so
 *     through symbolic and hard links) as an input or another output. A
 *     symbolic link as output is written through to its target, as the
 *     library does. The checks are early reports only; the library's
 *     atomic write still decides at the end.
 *  9. Result files take their format from the extension: ids .npy (int64),
 *     .ivecs or .ibin (int32), distances .npy, .fvecs or .fbin (float32);
 *     anything else is refused with that list. An id that does not fit the
 *     int32 formats is refused, naming the query, instead of being truncated
 *     (-1 is also "no result"). The outputs of one command are committed
 *     together (kiln_dataset_write_all): all or none.
 * 10. eval's recall compares the labels search returns with the ground
 *     truth's ids. For a kiln build they are row numbers, as kiln groundtruth
 *     writes; an index with labels of its own (imported) needs ground truth
 *     in its labels, and eval refuses ground truth that cannot be (no id in
 *     the labels' range) rather than report a silent recall of 0.
 * 11. search, eval, info and check take a shard set's manifest wherever they
 *     take an index (kiln_shardset_open opens a plain index as a set of
 *     one), so a set is served by the same commands with the same outputs.
 * 12. Under a launcher (mpirun, srun: kiln_dist_launched_size() > 1) only
 *     build runs: a shard set, whose shards the ranks share, or one index
 *     built across the ranks (kiln_build_params.collective, --method device
 *     only), which rank 0 checks and writes; every other command would run
 *     N identical copies racing for one output, so they refuse. A failure
 *     agreed among the ranks is printed by rank 0 alone, and so are
 *     progress and the summary. Each rank removes its own work folder
 *     (WORK/rank-R) once rank 0 has saved, since on node-local disks no
 *     other rank can.
 * 13. add, delete and update change an index (graph/hnsw_live.c) and write
 *     it to -o, or over INDEX itself when -o is not given, atomically
 *     (kiln_index_save's temporary and rename): the old file stays whole
 *     until the new one is complete, and a search that has INDEX mapped
 *     keeps reading the old inode. The result is validated before it is
 *     written. Labels files are text (one decimal int64 a line, nothing
 *     else on it) or .npy of integers, 1-D or n x 1.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli_opts.h"
#include "kiln.h"

/* ==== Tunables ==== */

/* Timed passes per ef: the median of 1000 is steady; more is a typo. */
#define EVAL_MAX_EFS    32
#define EVAL_MAX_REPEAT 1000

/* Limits of the library that the option tables check (decision 4). Each
 * mirrors a constant the CLI cannot include (it sees kiln.h only); test_cli
 * builds at the edge so a change in the library shows there. */
#define CLI_MAX_M       1024  /* KILN_MAX_M, graph/hnsw_internal.h */
#define CLI_MAX_DIM     65536 /* KILN_MAX_DIM and the dataset readers' limit */
#define CLI_MAX_REPLICA 16    /* build: replicas in [2, 16] */
#define CLI_MAX_SHARDS  4096  /* build: --shards, KILN_MAX_SHARDS */
#define CLI_MAX_KNN_K   256   /* KILN_CL_MAX_K, the device kernel's bound */
#define CLI_MAX_THREADS 4096  /* kiln_threads caps requests there */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ==== Shared helpers ==== */

/* A runtime or data error from the library: exit 1. */
static int fail(const char *cmd, kiln_ctx *ctx) {
    const char *msg = kiln_errmsg(ctx);
    size_t len = strlen(cmd);
    if (strncmp(msg, cmd, len) == 0 && msg[len] == ':' && msg[len + 1] == ' ')
        msg += len + 2; /* "build: M = 3" under "kiln build:" (decision 1) */
    fprintf(stderr, "kiln %s: %s\n", cmd, msg);
    return 1;
}

/* malloc of n * m elements of size bytes (at least one byte), NULL when the
 * size overflows or memory is short. */
static void *alloc_array(size_t n, size_t m, size_t size) {
    size_t bytes;
    if (__builtin_mul_overflow(n, m, &bytes) || __builtin_mul_overflow(bytes, size, &bytes))
        return NULL;
    return malloc(bytes ? bytes : 1);
}

/* A JSON string: quoted, with '"', '\\' and control characters escaped. */
static void json_str(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                printf("\\u%04x", *p);
            else
                putchar(*p);
        }
    }
    putchar('"');
}

/* A JSON number printed with fmt; null when not finite. */
static void json_num(double v, const char *fmt) {
    if (isfinite(v))
        printf(fmt, v);
    else
        fputs("null", stdout);
}

static int setup(const cli_args *a, kiln_ctx **ctx) {
    if (kiln_ctx_new(ctx) != KILN_OK) {
        fprintf(stderr, "kiln: out of memory\n");
        return 1;
    }
    int i;
    for (i = 0; a->cmd->opts[i].name; i++)
        if (strcmp(a->cmd->opts[i].name, "progress") == 0)
            break;
    if (a->cmd->opts[i].name && cli_flag(a, "progress"))
        kiln_ctx_set_progress(*ctx, KILN_PROGRESS_ON);
    return 0;
}

/* --format of a command that reads datasets: false after the usage message,
 * so a bad value is refused before any work (decision 1). */
static bool format_ok(const cli_args *a, kiln_format *fmt) {
    const char *f = cli_str(a, "format");
    *fmt = KILN_FORMAT_AUTO;
    if (!f || kiln_format_parse(f, fmt) == KILN_OK)
        return true;
    fprintf(stderr,
            "kiln %s: --format: '%s' is not one of auto, fvecs, bvecs, ivecs, fbin, u8bin, "
            "i8bin, npy, ibin\n",
            a->cmd->name, f);
    return false;
}

/* Opens a dataset with the --format/--allow-nonfinite options of a (the
 * format already checked by format_ok). */
static kiln_status open_ds(kiln_ctx *ctx, const cli_args *a, const char *path, kiln_dataset **out) {
    kiln_format fmt = KILN_FORMAT_AUTO;
    const char *f = cli_str(a, "format");
    if (f)
        (void)kiln_format_parse(f, &fmt); /* refused before any work by format_ok */
    unsigned flags = cli_flag(a, "allow-nonfinite") ? KILN_OPEN_ALLOW_NONFINITE : 0;
    return kiln_dataset_open(ctx, path, fmt, flags, out);
}

/* Opens a dataset that must hold vectors (decision 5). Returns 0, or the
 * exit code after printing the error. */
static int open_vectors(kiln_ctx *ctx, const cli_args *a, const char *path, kiln_dataset **out) {
    *out = NULL;
    if (open_ds(ctx, a, path, out) != KILN_OK)
        return fail(a->cmd->name, ctx);
    const kiln_dtype dt = kiln_dataset_dtype(*out);
    if (dt == KILN_DTYPE_I32 || dt == KILN_DTYPE_I64) {
        fprintf(stderr,
                "kiln %s: %s holds %s ids (%s, such as ground truth), not vectors; give a "
                "file of float or byte vectors (fvecs, bvecs, fbin, u8bin, i8bin, npy)\n",
                a->cmd->name, path, kiln_dtype_name(dt),
                kiln_format_name(kiln_dataset_format(*out)));
        kiln_dataset_free(*out);
        *out = NULL;
        return 1;
    }
    return 0;
}

/* Reads a whole file of vectors as floats (caller frees). Returns 0, or the
 * exit code after printing the error. */
static int read_all_f32(kiln_ctx *ctx, const cli_args *a, const char *path, float **out, size_t *n,
                        size_t *d) {
    kiln_dataset *ds = NULL;
    *out = NULL;
    int rc = open_vectors(ctx, a, path, &ds);
    if (rc)
        return rc;
    *n = kiln_dataset_count(ds);
    *d = kiln_dataset_dim(ds);
    float *buf = alloc_array(*n, *d, sizeof(float));
    if (!buf) {
        kiln_dataset_free(ds);
        fprintf(stderr, "kiln %s: out of memory reading %s\n", a->cmd->name, path);
        return 1;
    }
    kiln_status st = kiln_dataset_read_f32(ds, 0, *n, buf);
    kiln_dataset_free(ds);
    if (st) {
        free(buf);
        return fail(a->cmd->name, ctx);
    }
    *out = buf;
    return 0;
}

/* --storage and --rerank into p. */
static bool parse_storage(const cli_args *a, kiln_build_params *p) {
    const char *s = cli_str(a, "storage");
    static const kiln_storage all[] = {KILN_STORAGE_F32, KILN_STORAGE_F16, KILN_STORAGE_INT8};
    p->storage = (kiln_storage)0;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, kiln_storage_name(all[i])) == 0)
            p->storage = all[i];
    if (!p->storage) {
        fprintf(stderr, "kiln %s: --storage: '%s' is not one of f32, f16, int8\n", a->cmd->name, s);
        return false;
    }
    p->rerank = cli_flag(a, "rerank");
    if (p->rerank && p->storage == KILN_STORAGE_F32) {
        fprintf(stderr,
                "kiln %s: --rerank keeps f32 vectors beside compact ones: it needs "
                "--storage f16 or int8\n",
                a->cmd->name);
        return false;
    }
    return true;
}

static bool parse_metric(const cli_args *a, kiln_metric *m) {
    const char *s = cli_str(a, "metric");
    if (kiln_metric_parse(s, m) != KILN_OK) {
        fprintf(stderr, "kiln %s: --metric: '%s' is not one of l2, ip, cos\n", a->cmd->name, s);
        return false;
    }
    return true;
}

/* ==== Outputs ==== */

/* An output option of a command and the file it names (NULL: not given). */
typedef struct out_spec {
    const char *opt;
    const char *path;
} out_spec;

/* The name that identifies path's file: realpath when it exists, else the
 * realpath of its folder plus its last component; NULL when the folder is
 * missing or memory ran out. */
static char *canonical(const char *path) {
    char *r = realpath(path, NULL);
    if (r || errno != ENOENT)
        return r;
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    char *rdir = dir ? realpath(dir, NULL) : NULL;
    const char *base = slash ? slash + 1 : path;
    char *out = rdir ? malloc(strlen(rdir) + strlen(base) + 2) : NULL;
    if (out)
        sprintf(out, "%s/%s", rdir, base);
    free(dir);
    free(rdir);
    return out;
}

/* One output's own checks (decision 4); 0, or the exit code after the
 * message. */
static int check_output_path(const char *cmd, const out_spec *o) {
    struct stat sb, lsb;
    if (!*o->path) {
        fprintf(stderr, "kiln %s: %s: empty file name\n", cmd, o->opt);
        return 2;
    }
    if (stat(o->path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "kiln %s: %s %s: is a directory; name a file\n", cmd, o->opt, o->path);
            return 2;
        }
        if (!S_ISREG(sb.st_mode)) {
            fprintf(stderr, "kiln %s: %s %s: exists and is not a regular file\n", cmd, o->opt,
                    o->path);
            return 1;
        }
    } else if (lstat(o->path, &lsb) == 0 && S_ISLNK(lsb.st_mode)) {
        fprintf(stderr, "kiln %s: %s %s: is a symbolic link to a missing file\n", cmd, o->opt,
                o->path);
        return 1;
    }
    /* The folder that will hold the file (the link target's, for a link). */
    char *target = realpath(o->path, NULL);
    const char *t = target ? target : o->path;
    const char *slash = strrchr(t, '/');
    char *dir = slash ? strndup(t, slash == t ? 1 : (size_t)(slash - t)) : strdup(".");
    free(target);
    if (!dir) {
        fprintf(stderr, "kiln %s: out of memory\n", cmd);
        return 1;
    }
    int rc = 0;
    if (stat(dir, &sb) != 0) {
        fprintf(stderr, "kiln %s: %s %s: folder %s does not exist\n", cmd, o->opt, o->path, dir);
        rc = 1;
    } else if (!S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "kiln %s: %s %s: %s is not a folder\n", cmd, o->opt, o->path, dir);
        rc = 1;
    } else if (access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "kiln %s: %s %s: folder %s is not writable\n", cmd, o->opt, o->path, dir);
        rc = 1;
    }
    free(dir);
    return rc;
}

/* Decision 4, before any work: each given output on its own, then against
 * the inputs (same device and inode) and the other outputs. */
static int check_outputs(const char *cmd, const out_spec *outs, size_t nout, const char *const *ins,
                         size_t nin) {
    for (size_t i = 0; i < nout; i++) {
        if (!outs[i].path)
            continue;
        int rc = check_output_path(cmd, &outs[i]);
        if (rc)
            return rc;
        struct stat ob, ib;
        if (stat(outs[i].path, &ob) == 0) {
            for (size_t j = 0; j < nin; j++) {
                if (stat(ins[j], &ib) == 0 && ib.st_dev == ob.st_dev && ib.st_ino == ob.st_ino) {
                    fprintf(stderr, "kiln %s: %s %s: is the same file as the input %s\n", cmd,
                            outs[i].opt, outs[i].path, ins[j]);
                    return 2;
                }
            }
        }
        char *ci = canonical(outs[i].path);
        for (size_t j = 0; j < i && ci; j++) {
            char *cj = outs[j].path ? canonical(outs[j].path) : NULL;
            const bool same = cj && strcmp(ci, cj) == 0;
            free(cj);
            if (same) {
                fprintf(stderr, "kiln %s: %s and %s name the same file %s\n", cmd, outs[j].opt,
                        outs[i].opt, outs[i].path);
                free(ci);
                return 2;
            }
        }
        free(ci);
    }
    return 0;
}

/* The extension of path's last component (after its last dot), or "". */
static const char *extension(const char *path) {
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(slash ? slash + 1 : path, '.');
    return dot ? dot + 1 : "";
}

/* Format and dtype of a result file from its extension (decision 5); false
 * after a usage message. ids: the id formats, else the distance ones. */
static bool result_format(const char *cmd, const out_spec *o, bool ids, kiln_format *fmt,
                          kiln_dtype *dtype) {
    const char *ext = extension(o->path);
    *dtype = ids ? KILN_DTYPE_I32 : KILN_DTYPE_F32;
    if (strcasecmp(ext, "npy") == 0) {
        *fmt = KILN_FORMAT_NPY;
        *dtype = ids ? KILN_DTYPE_I64 : KILN_DTYPE_F32;
    } else if (strcasecmp(ext, ids ? "ivecs" : "fvecs") == 0) {
        *fmt = ids ? KILN_FORMAT_IVECS : KILN_FORMAT_FVECS;
    } else if (strcasecmp(ext, ids ? "ibin" : "fbin") == 0) {
        *fmt = ids ? KILN_FORMAT_IBIN : KILN_FORMAT_FBIN;
    } else {
        fprintf(stderr, "kiln %s: %s %s: unknown extension; use %s\n", cmd, o->opt, o->path,
                ids ? ".npy (int64 ids), .ivecs or .ibin (int32 ids)"
                    : ".npy, .fvecs or .fbin (float32 distances)");
        return false;
    }
    return true;
}

/* The ids of a result as the output's dtype wants them: the labels
 * themselves for int64, else narrowed into ids32 after checking that each
 * fits. False after a message naming the first that does not. */
static bool narrow_ids(const char *cmd, const out_spec *o, kiln_dtype dtype, const int64_t *labels,
                       size_t nq, uint32_t k, int32_t *ids32) {
    if (dtype == KILN_DTYPE_I64)
        return true;
    for (size_t i = 0; i < nq * k; i++) {
        if (labels[i] < INT32_MIN || labels[i] > INT32_MAX) {
            fprintf(stderr,
                    "kiln %s: %s %s: id %lld (query %zu, rank %zu) does not fit int32; write the "
                    "ids as .npy (int64)\n",
                    cmd, o->opt, o->path, (long long)labels[i], i / k, i % k);
            return false;
        }
        ids32[i] = (int32_t)labels[i];
    }
    return true;
}

/* ==== build ==== */

static const cli_opt build_opts[] = {
    {"output", 'o', "INDEX", NULL, "index file to write (required)", 0, 0},
    {"metric", 0, "l2|ip|cos", "l2", "distance", 0, 0},
    {"M", 'M', "N", "16", "links per node on upper levels; 2M on level 0", 2, CLI_MAX_M},
    {"ef-construction", 0, "N", "200", "beam width while building", 1, UINT32_MAX},
    {"method", 0, "device|insert", NULL,
     "device: the OpenCL pipeline (the default where kiln has OpenCL); insert: CPU HNSW "
     "insertion (the default otherwise)",
     0, 0},
    {"device", 0, "auto|cpu|gpu|P:D", NULL,
     "OpenCL device for --method device (default: $KILN_DEVICE, else auto = a GPU if any)", 0, 0},
    {"clusters", 0, "N", "0", "device: k-means clusters; 0 = from n and --cluster-size", 0, 0},
    {"cluster-size", 0, "N", "768", "device: target members per cluster", 0, 0},
    {"replicas", 0, "N", "0",
     "device: nearest clusters each vector joins (2 to 16); 0 = 2, and above 2048 clusters' "
     "worth of vectors a third for those near a boundary",
     0, CLI_MAX_REPLICA},
    {"knn-k", 0, "N", "0", "device: neighbours kept per vector per cluster; 0 = 2M", 0,
     CLI_MAX_KNN_K},
    {"threads", 't', "N", "0", "build threads; 0 = all cores", 0, CLI_MAX_THREADS},
    {"seed", 0, "N", "1", "seed of the level sampling and every other random choice", 0, 0},
    {"memory-limit", 0, "SIZE", NULL,
     "bound on the build's own resident memory, e.g. 4G or 512M (default: half of physical "
     "memory); a budget the input cannot fit in is refused up front",
     0, 0},
    {"work-dir", 0, "DIR", NULL,
     "device: folder for the intermediates, removed after success (default: INDEX.work); under "
     "mpirun, a folder rank-R in it per rank",
     0, 0},
    {"resume", 0, NULL, NULL,
     "device: continue a killed build from its work dir's last finished batch; with --shards, "
     "also keep the shard files already finished",
     0, 0},
    {"labels", 0, "FILE", NULL,
     "the label of each row, which search returns: text (one int64 a line) or .npy of int64; "
     "unique, none -1 (default: the row numbers)",
     0, 0},
    {"storage", 0, "f32|f16|int8", "f32",
     "how the index stores its vectors: f32 exact; f16 half precision (|x| <= 65504); int8 "
     "one byte a component with a scale per vector; search traverses these (docs/FORMAT.md)",
     0, 0},
    {"rerank", 0, NULL, NULL,
     "with --storage f16 or int8: keep the f32 vectors too, and re-score each search's final "
     "candidates exactly with them",
     0, 0},
    {"shards", 0, "N", "0",
     "write a shard set: N indexes, row i in shard hash(i) mod N, and the manifest INDEX that "
     "names them (docs/FORMAT.md); 0 = one index",
     0, CLI_MAX_SHARDS},
    {"shard", 0, "I", NULL,
     "with --shards: build shard I only (one of N processes); a last run without --shard and "
     "with --resume writes the manifest",
     0, CLI_MAX_SHARDS - 1},
    {"format", 0, "FMT", "auto",
     "input format: auto (by extension), fvecs, bvecs, fbin, u8bin, i8bin, npy", 0, 0},
    {"allow-nonfinite", 0, NULL, NULL, "accept NaN/Inf values instead of rejecting the file", 0, 0},
    {"progress", 0, NULL, NULL, "show progress on stderr even when it is not a terminal", 0, 0},
    {"json", 0, NULL, NULL, "print the summary as one JSON line", 0, 0},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd build_cmd = {"build",
                                  "BASE -o INDEX [options]",
                                  "Build an HNSW index over the vectors in BASE. Under mpirun "
                                  "(R ranks): one index built by all of them (--method "
                                  "device), or with --shards their shards shared out.",
                                  build_opts,
                                  1,
                                  1};

/* A --device value is auto, cpu, gpu or P:D (decimal); which devices exist
 * is for the library to say. */
static bool device_spec_ok(const char *spec) {
    if (!spec || strcmp(spec, "auto") == 0 || strcmp(spec, "cpu") == 0 || strcmp(spec, "gpu") == 0)
        return true;
    size_t p = strspn(spec, "0123456789");
    return p > 0 && spec[p] == ':' && spec[p + 1] &&
           strspn(spec + p + 1, "0123456789") == strlen(spec + p + 1);
}

/* What a shard set build did: one line, or one JSON line. */
static void build_set_summary(const cli_args *a, const char *out, const kiln_build_params *p,
                              const char *method, const kiln_shardset_report *r, int32_t shard) {
    if (cli_flag(a, "json")) {
        printf("{\"output\": ");
        json_str(out);
        printf(", \"shards\": %u, \"shard\": %d, \"built\": %u, \"kept\": %u, "
               "\"manifest\": %s, \"method\": \"%s\", \"seed\": %llu, \"seconds\": ",
               r->shards, shard, r->built, r->kept, r->manifest_written ? "true" : "false", method,
               (unsigned long long)p->seed);
        json_num(r->seconds, "%.4f");
        printf(", \"slowest_shard_seconds\": ");
        json_num(r->slowest_seconds, "%.4f");
        printf(", \"work_bytes_written\": %llu, \"work_bytes_read\": %llu, "
               "\"peak_rss_anon\": %llu, \"version\": ",
               (unsigned long long)r->work_bytes_written, (unsigned long long)r->work_bytes_read,
               (unsigned long long)r->peak_rss_anon);
        json_str(kiln_version_string());
        printf("}\n");
        return;
    }
    printf("%s %s: %u of %u shards built, %u kept (finished before), method %s, %.2f s (slowest "
           "shard %.2f s); work %.1f MiB written, %.1f MiB read; peak anonymous RSS %.1f MiB\n",
           r->manifest_written ? "shard set" : "shard", out, r->built, r->shards, r->kept, method,
           r->seconds, r->slowest_seconds, r->work_bytes_written / 1048576.0,
           r->work_bytes_read / 1048576.0, r->peak_rss_anon / 1048576.0);
}

/* Build threads for a rank when --threads is 0: the cores divided among the
 * ranks the launcher put on this node. */
static uint32_t local_threads(void) {
    const int per = omp_get_num_procs() / kiln_dist_local_size();
    return (uint32_t)(per > 0 ? per : 1);
}

/* Under ranks, "auto" and "gpu" (given, or from $KILN_DEVICE) mean one GPU
 * per rank: the node's ranks take its GPUs in turn, local rank mod GPUs, so
 * that a node of 8 GPUs runs 8 ranks on 8 devices without a wrapper. "cpu"
 * and "P:D" are kept as given (every rank on that device); so is the
 * choice where there is no GPU. */
static const char *rank_device(kiln_ctx *ctx, const char *spec, char *buf, size_t cap) {
    const char *s = spec ? spec : getenv("KILN_DEVICE");
    if (s && *s && strcmp(s, "auto") != 0 && strcmp(s, "gpu") != 0)
        return spec;
    uint32_t n = 0, gpus = 0;
    if (kiln_device_count(ctx, &n) != KILN_OK)
        return spec;
    kiln_device_info info, pick = {0};
    for (uint32_t i = 0; i < n; i++)
        if (kiln_device_info_get(ctx, i, &info) == KILN_OK && info.type == KILN_DEVICE_GPU)
            gpus++;
    if (gpus == 0)
        return spec;
    for (uint32_t i = 0, g = 0; i < n; i++)
        if (kiln_device_info_get(ctx, i, &info) == KILN_OK && info.type == KILN_DEVICE_GPU &&
            g++ == (uint32_t)kiln_dist_local_rank() % gpus)
            pick = info;
    snprintf(buf, cap, "%u:%u", pick.platform_index, pick.device_index);
    return buf;
}

static int read_labels(kiln_ctx *ctx, const char *cmd, const char *path, int64_t **out, size_t *n);

static int cmd_build(const cli_args *a) {
    kiln_format fmt;
    kiln_build_params p;
    kiln_build_params_init(&p);
    const char *out = cli_str(a, "output");
    const char *method = cli_str(a, "method");
    if (!method) /* the library's default: device only where it has OpenCL */
        method = p.method == KILN_METHOD_DEVICE ? "device" : "insert";
    if (!out) {
        fprintf(stderr, "kiln build: -o INDEX is required\n");
        return 2;
    }
    if (!parse_metric(a, &p.metric) || !cli_u32(a, "M", &p.M) ||
        !cli_u32(a, "ef-construction", &p.ef_construction) || !cli_u32(a, "threads", &p.threads) ||
        !cli_u64(a, "seed", &p.seed) || !cli_u32(a, "clusters", &p.clusters) ||
        !cli_u32(a, "cluster-size", &p.cluster_size) || !cli_u32(a, "replicas", &p.replicas) ||
        !cli_u32(a, "knn-k", &p.knn_k) || !format_ok(a, &fmt) || !parse_storage(a, &p) ||
        (cli_str(a, "memory-limit") && !cli_size(a, "memory-limit", &p.memory_limit)))
        return 2;
    if (p.replicas == 1) {
        fprintf(stderr, "kiln build: --replicas: 1 is not 0 (automatic) or 2 to %d\n",
                CLI_MAX_REPLICA);
        return 2;
    }
    uint32_t shards = 0, shard_u = 0;
    if (!cli_u32(a, "shards", &shards) || (cli_str(a, "shard") && !cli_u32(a, "shard", &shard_u)))
        return 2;
    const int32_t shard = cli_str(a, "shard") ? (int32_t)shard_u : -1;
    if (shard >= 0 && (shards == 0 || shard_u >= shards)) {
        fprintf(stderr, "kiln build: --shard %u needs --shards N with N > %u\n", shard_u, shard_u);
        return 2;
    }
    p.device = cli_str(a, "device");
    p.resume = cli_flag(a, "resume");
    if (!device_spec_ok(p.device)) {
        fprintf(stderr, "kiln build: --device: '%s' is not auto, cpu, gpu or P:D\n", p.device);
        return 2;
    }
    if (strcmp(method, "insert") == 0)
        p.method = KILN_METHOD_INSERT;
    else if (strcmp(method, "device") == 0)
        p.method = KILN_METHOD_DEVICE;
    else {
        fprintf(stderr, "kiln build: --method: '%s' is not insert or device\n", method);
        return 2;
    }
    if (p.method == KILN_METHOD_INSERT && !shards && (p.resume || cli_str(a, "work-dir"))) {
        fprintf(stderr, "kiln build: %s applies to --method device only\n",
                p.resume ? "--resume" : "--work-dir");
        return 2;
    }
    /* The work dir: beside the output unless given (decision: a resumable
     * build needs a folder that outlives the process). */
    char work_default[4096];
    p.work_dir = cli_str(a, "work-dir");
    if ((p.method == KILN_METHOD_DEVICE || shards) && !p.work_dir) {
        if (snprintf(work_default, sizeof work_default, "%s.work", out) >=
            (int)sizeof work_default) {
            fprintf(stderr, "kiln build: -o: the path is too long\n");
            return 2;
        }
        p.work_dir = work_default;
    }
    const out_spec outs[] = {{"-o", out}};
    int crc = check_outputs("build", outs, 1, a->pos, 1);
    if (crc)
        return crc;
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_dataset *ds = NULL;
    kiln_index *ix = NULL;
    int64_t *labels = NULL;
    int rc = 0;
    /* Under a launcher (mpirun, srun): the ranks share the shards of a set,
     * or build one index together (decision 12). */
    const int ranks = kiln_dist_launched_size();
    char rank_spec[32];
    if (ranks > 1) {
        if (kiln_dist_init(ctx, NULL, NULL) != KILN_OK) {
            rc = fail("build", ctx);
            goto done;
        }
        if (!shards && p.method != KILN_METHOD_DEVICE) {
            fprintf(stderr,
                    "kiln build: started as one of %d ranks: across ranks kiln builds one index "
                    "with --method device, or shard sets (--shards N) with either method\n",
                    ranks);
            rc = 2;
            goto done;
        }
        p.collective = !shards;
        if (kiln_dist_rank() != 0)
            kiln_ctx_set_progress(ctx, KILN_PROGRESS_OFF);
        if (p.threads == 0) /* the node's cores shared among its ranks */
            p.threads = local_threads();
        p.device = rank_device(ctx, p.device, rank_spec, sizeof rank_spec);
    }
    double t0 = now_s();
    rc = open_vectors(ctx, a, a->pos[0], &ds);
    /* Every rank must reach the build's collectives, or none: a rank that
     * cannot open the input has said why; the others stop with it. */
    size_t nl = 0;
    if (!rc && cli_str(a, "labels") &&
        !(rc = read_labels(ctx, "build", cli_str(a, "labels"), &labels, &nl)) &&
        nl != kiln_dataset_count(ds)) {
        fprintf(stderr, "kiln build: %s holds %zu labels for the %zu rows of %s\n",
                cli_str(a, "labels"), nl, kiln_dataset_count(ds), a->pos[0]);
        rc = 1;
    }
    p.labels = labels;
    if (ranks > 1 && kiln_dist_agree(ctx, rc ? KILN_E_IO : KILN_OK) != KILN_OK && !rc)
        rc = 1;
    if (rc)
        goto done;
    kiln_shardset_report srep;
    kiln_status bst = shards ? kiln_shardset_build(ctx, ds, &p, shards, shard, out, &srep)
                             : kiln_index_build_dataset(ctx, ds, &p, &ix);
    if (bst && kiln_dist_rank() != 0) { /* agreed among the ranks: rank 0 says it */
        rc = 1;
        goto done;
    }
    if (bst) {
        rc = fail("build", ctx);
        /* A work dir with finished steps is kept for --resume, and said so
         * after a failure of the machine (not of the inputs or of the work
         * dir itself); an empty one (stopped before its first step) goes. */
        const bool machine = bst == KILN_E_IO || bst == KILN_E_NOMEM || bst == KILN_E_DEVICE;
        if (p.work_dir && rmdir(p.work_dir) != 0 && errno == ENOTEMPTY && machine)
            fprintf(stderr,
                    "kiln build: %s keeps the finished steps: the same command with "
                    "--resume continues the build\n",
                    p.work_dir);
        goto done;
    }
    if (shards) {
        if (kiln_dist_rank() == 0)
            build_set_summary(a, out, &p, method, &srep, shard);
        goto done;
    }
    double t_build = now_s() - t0, t1 = now_s();
    /* Across ranks the index is on rank 0 alone (ix NULL elsewhere). */
    kiln_status sst =
        ix && (kiln_index_check(ix) || kiln_index_save(ix, out)) ? KILN_E_IO : KILN_OK;
    if (sst)
        rc = fail("build", ctx);
    if (p.collective && kiln_dist_agree(ctx, sst) != KILN_OK) {
        rc = 1; /* rank 0 said why; every work folder stays for --resume */
        goto done;
    }
    if (rc)
        goto done;
    /* Only now is the work done: a build killed while saving resumes. */
    char rank_dir[4096 + 32];
    snprintf(rank_dir, sizeof rank_dir, "%s/rank-%d", p.work_dir ? p.work_dir : "",
             kiln_dist_rank());
    if (p.work_dir && kiln_work_dir_remove(ctx, p.collective ? rank_dir : p.work_dir) != KILN_OK)
        fprintf(stderr, "kiln build: warning: %s\n", kiln_errmsg(ctx));
    if (p.collective) { /* the folder of the rank folders, once they are gone */
        kiln_dist_agree(ctx, KILN_OK);
        if (kiln_dist_rank() == 0 && rmdir(p.work_dir) != 0 && errno != ENOENT)
            fprintf(stderr, "kiln build: warning: %s: %s\n", p.work_dir, strerror(errno));
    }
    double t_save = now_s() - t1;
    if (!ix)
        goto done;
    kiln_index_stats s;
    kiln_index_stats_get(ix, &s);
    kiln_build_report rep;
    kiln_index_build_report(ix, &rep);
    if (cli_flag(a, "json")) {
        printf("{\"input\": ");
        json_str(a->pos[0]);
        printf(", \"output\": ");
        json_str(out);
        printf(", \"build_seconds\": ");
        json_num(t_build, "%.4f");
        printf(", \"save_seconds\": ");
        json_num(t_save, "%.4f");
        printf(", \"count\": %llu, \"dim\": %u, \"metric\": \"%s\", \"M\": %u, "
               "\"ef_construction\": %u, \"method\": \"%s\", \"threads\": %u, \"seed\": %llu, "
               "\"levels\": %u, \"storage\": \"%s\", \"rerank\": %s, \"bytes_per_element\": ",
               (unsigned long long)s.count, s.dim, kiln_metric_name(p.metric), p.M,
               p.ef_construction, method, p.threads, (unsigned long long)p.seed, s.levels,
               kiln_storage_name(s.storage), s.rerank ? "true" : "false");
        json_num(s.count ? (double)s.data_bytes / (double)s.count : 0.0, "%.2f");
        printf(", \"avg_degree0\": ");
        json_num(s.avg_degree[0], "%.3f");
        printf(", \"repaired_links\": %llu, \"stages\": {", (unsigned long long)rep.repaired_links);
        for (uint32_t i = 0; i < rep.n_stages; i++) {
            printf("%s", i ? ", " : "");
            json_str(rep.stages[i].name);
            printf(": ");
            json_num(rep.stages[i].seconds, "%.4f");
        }
        printf("}");
        if (p.method == KILN_METHOD_DEVICE) {
            printf(", \"device\": ");
            json_str(rep.device_name);
            printf(", \"clusters\": %u, \"replicas\": %u, \"mean_replicas\": ", rep.clusters,
                   rep.replicas);
            json_num(rep.mean_replicas, "%.4f");
            printf(", \"max_cluster_size\": %u, \"device_batches\": %u, \"batch_retries\": %u, "
                   "\"candidates_per_vector\": ",
                   rep.max_cluster_size, rep.device_batches, rep.batch_retries);
            json_num(rep.candidates_per_vector, "%.2f");
            printf(", \"batches\": %u, \"partitions\": %u, \"resumed_batches\": %u, "
                   "\"resumed_steps\": %u, \"memory_limit\": %llu, \"work_bytes_written\": "
                   "%llu, \"work_bytes_read\": %llu",
                   rep.batches, rep.partitions, rep.resumed_batches, rep.resumed_steps,
                   (unsigned long long)rep.memory_limit, (unsigned long long)rep.work_bytes_written,
                   (unsigned long long)rep.work_bytes_read);
        }
        printf(", \"ranks\": %u", rep.ranks ? rep.ranks : 1);
        if (rep.ranks > 1) {
            printf(", \"bytes_sent_by_rank\": [");
            for (uint32_t r = 0; r < rep.ranks; r++)
                printf("%s%llu", r ? ", " : "", (unsigned long long)rep.rank_bytes_sent[r]);
            printf("]");
        }
        printf(", \"peak_rss_anon\": %llu", (unsigned long long)rep.peak_rss_anon);
        printf(", \"version\": ");
        json_str(kiln_version_string());
        printf("}\n");
    } else {
        printf("built %s: %llu vectors, dim %u, %s, M=%u, ef_construction=%u, method %s, "
               "%u levels, storage %s%s (%.1f bytes per element), %.2f s build, %.2f s write\n",
               out, (unsigned long long)s.count, s.dim, kiln_metric_name(p.metric), p.M,
               p.ef_construction, method, s.levels, kiln_storage_name(s.storage),
               s.rerank ? " + f32 for rerank" : "",
               s.count ? (double)s.data_bytes / (double)s.count : 0.0, t_build, t_save);
        if (p.method == KILN_METHOD_DEVICE) {
            printf("device %s: %u clusters (largest %u, %u per vector, %.2f mean), %u device "
                   "batches, %u retries\n",
                   rep.device_name, rep.clusters, rep.max_cluster_size, rep.replicas,
                   rep.mean_replicas, rep.device_batches, rep.batch_retries);
            printf("work: %u cluster batches (%u resumed), %u partitions, %.1f MiB written, "
                   "%.1f MiB read; memory limit %.1f MiB, peak anonymous RSS %.1f MiB\n",
                   rep.batches, rep.resumed_batches, rep.partitions,
                   rep.work_bytes_written / 1048576.0, rep.work_bytes_read / 1048576.0,
                   rep.memory_limit / 1048576.0, rep.peak_rss_anon / 1048576.0);
        }
        if (rep.ranks > 1) {
            uint64_t all = 0;
            printf("ranks: %u (stage seconds of the slowest), sent (MiB):", rep.ranks);
            for (uint32_t r = 0; r < rep.ranks; r++) {
                printf(" %.1f", rep.rank_bytes_sent[r] / 1048576.0);
                all += rep.rank_bytes_sent[r];
            }
            printf(", %.1f bytes per vector\n", (double)all / (double)(s.count ? s.count : 1));
        }
        printf("stages (s):");
        for (uint32_t i = 0; i < rep.n_stages; i++)
            printf("%s \"%s\": %.4f", i ? "," : "", rep.stages[i].name, rep.stages[i].seconds);
        putchar('\n');
    }
done:
    kiln_index_free(ix);
    kiln_dataset_free(ds);
    free(labels);
    kiln_ctx_free(ctx);
    kiln_dist_finalize();
    return rc;
}

/* ==== search ==== */

static const cli_opt search_opts[] = {
    {"k", 'k', "N", "10", "neighbours per query", 1, UINT32_MAX},
    {"ef", 0, "N", "64", "search beam width (raised to k when smaller)", 0, UINT32_MAX},
    {"output", 'o', "RESULT", NULL,
     "write ids: .npy (int64), .ivecs or .ibin (int32) (default: print them)", 0, 0},
    {"distances", 0, "DIST", NULL, "also write distances: .npy, .fvecs or .fbin", 0, 0},
    {"threads", 't', "N", "0", "search threads; 0 = all cores", 0, CLI_MAX_THREADS},
    {"format", 0, "FMT", "auto", "query file format", 0, 0},
    {"verify", 0, NULL, NULL,
     "verify every section's checksum and every link on open (reads the whole index)", 0, 0},
    {"allow-nonfinite", 0, NULL, NULL, "accept NaN/Inf query values", 0, 0},
    {"json", 0, NULL, NULL,
     "print one JSON object per query, {\"query\": i, \"ids\": [...], \"distances\": [...]}, "
     "nearest first; padding when the index has fewer than k vectors is id -1, distance null",
     0, 0},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd search_cmd = {"search",
                                   "INDEX|SET QUERIES [options]",
                                   "Search INDEX (or every shard of a shard set, merged by "
                                   "distance) for the k nearest neighbours of each query.",
                                   search_opts,
                                   2,
                                   2};

static int cmd_search(const cli_args *a) {
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    kiln_format fmt;
    if (!cli_u32(a, "k", &sp.k) || !cli_u32(a, "ef", &sp.ef) ||
        !cli_u32(a, "threads", &sp.threads) || !format_ok(a, &fmt))
        return 2;
    const out_spec outs[] = {{"-o", cli_str(a, "output")},
                             {"--distances", cli_str(a, "distances")}};
    kiln_dataset_output files[2] = {{0}};
    size_t nfiles = 0;
    for (size_t i = 0; i < 2; i++) {
        if (outs[i].path &&
            !result_format("search", &outs[i], i == 0, &files[nfiles].format, &files[nfiles].dtype))
            return 2;
        if (outs[i].path)
            files[nfiles++].path = outs[i].path;
    }
    int crc = check_outputs("search", outs, 2, a->pos, 2);
    if (crc)
        return crc;
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_shardset *ix = NULL;
    float *q = NULL, *dist = NULL;
    int64_t *labels = NULL;
    int32_t *ids = NULL;
    size_t nq = 0, d = 0;
    int rc = 0;
    if (kiln_shardset_open(ctx, a->pos[0], cli_flag(a, "verify") ? KILN_LOAD_VERIFY : 0, &ix)) {
        rc = fail("search", ctx);
        goto done;
    }
    if ((rc = read_all_f32(ctx, a, a->pos[1], &q, &nq, &d)))
        goto done;
    if (d != kiln_shardset_dim(ix)) {
        fprintf(stderr, "kiln search: %s has dim %zu but the index has dim %zu\n", a->pos[1], d,
                kiln_shardset_dim(ix));
        rc = 1;
        goto done;
    }
    /* int32 copies of the ids only for an int32 result file */
    const bool narrow = outs[0].path && files[0].dtype == KILN_DTYPE_I32;
    labels = alloc_array(nq, sp.k, sizeof *labels);
    dist = alloc_array(nq, sp.k, sizeof *dist);
    ids = narrow ? alloc_array(nq, sp.k, sizeof *ids) : NULL;
    if (!labels || !dist || (narrow && !ids)) {
        fprintf(stderr, "kiln search: out of memory for %zu x %u results\n", nq, sp.k);
        rc = 1;
        goto done;
    }
    if (kiln_shardset_search(ix, q, nq, &sp, labels, dist)) {
        rc = fail("search", ctx);
        goto done;
    }
    size_t f = 0;
    if (outs[0].path) {
        if (!narrow_ids("search", &outs[0], files[0].dtype, labels, nq, sp.k, ids)) {
            rc = 1;
            goto done;
        }
        files[f].data = files[0].dtype == KILN_DTYPE_I64 ? (const void *)labels : (const void *)ids;
        if (files[f].format == KILN_FORMAT_IBIN) /* big-ann's layout: ids, then distances */
            files[f].distances = dist;
        f++;
    }
    if (outs[1].path)
        files[f++].data = dist;
    for (size_t i = 0; i < nfiles; i++) {
        files[i].n = nq;
        files[i].d = sp.k;
    }
    if (nfiles && kiln_dataset_write_all(ctx, files, nfiles)) {
        rc = fail("search", ctx);
        goto done;
    }
    if (cli_flag(a, "json")) {
        for (size_t i = 0; i < nq; i++) {
            printf("{\"query\": %zu, \"ids\": [", i);
            for (uint32_t j = 0; j < sp.k; j++)
                printf("%s%lld", j ? ", " : "", (long long)labels[i * sp.k + j]);
            printf("], \"distances\": [");
            for (uint32_t j = 0; j < sp.k; j++) {
                printf("%s", j ? ", " : "");
                json_num(dist[i * sp.k + j], "%.9g");
            }
            printf("]}\n");
        }
    } else if (!outs[0].path) {
        for (size_t i = 0; i < nq; i++) {
            printf("%zu:", i);
            for (uint32_t j = 0; j < sp.k; j++)
                printf(" %lld", (long long)labels[i * sp.k + j]);
            putchar('\n');
        }
    }
done:
    free(ids);
    free(labels);
    free(dist);
    free(q);
    kiln_shardset_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== eval ==== */

static const cli_opt eval_opts[] = {
    {"k", 'k', "N", "10", "recall@k", 1, UINT32_MAX},
    {"ef", 0, "LIST", "10,16,32,64,128", "comma-separated beam widths to sweep", 1, UINT32_MAX},
    {"threads", 't', "N", "1",
     "query threads (queries are still sent one at a time); 0 = all cores", 0, CLI_MAX_THREADS},
    {"repeat", 0, "N", "1", "timed passes per ef; the median QPS is reported", 1, EVAL_MAX_REPEAT},
    {"format", 0, "FMT", "auto", "query file format", 0, 0},
    {"gt-format", 0, "FMT", "auto", "ground-truth file format (ivecs, ibin = big-ann .gt, npy)", 0,
     0},
    {"verify", 0, NULL, NULL,
     "verify every section's checksum and every link on open (reads the whole index)", 0, 0},
    {"json", 0, NULL, NULL,
     "one JSON object per ef (keys ef, k, recall, qps, mean_ms, p99_ms, threads)", 0, 0},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd eval_cmd = {"eval",
                                 "INDEX|SET QUERIES GROUNDTRUTH [options]",
                                 "Measure recall@k, QPS and latency of INDEX over a sweep of ef.",
                                 eval_opts,
                                 3,
                                 3};

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* Recall compares the labels search returns with the ground truth's ids
 * (decision 10). An index whose labels are not its row numbers (an imported
 * hnswlib file) needs ground truth in those labels: when none of the ids
 * the recall reads falls inside the labels' range, that is said and eval
 * stops (1) instead of reporting recall 0; otherwise a note says so. */
static int check_gt_labels(const kiln_shardset *set, const char *ixpath, const char *gtpath,
                           const int64_t *gt, size_t nq, size_t gk, uint32_t k) {
    kiln_index_stats s;
    /* A set is not checked: its labels are its input's rows unless adds
     * gave it others, and its shards' ranges do not say which. */
    if (kiln_shardset_has_manifest(set) ||
        kiln_index_stats_get(kiln_shardset_shard(set, 0), &s) != KILN_OK || s.labels_are_rows ||
        s.count == 0)
        return 0;
    int64_t lo = INT64_MAX, hi = INT64_MIN;
    size_t inside = 0;
    for (size_t i = 0; i < nq; i++)
        for (size_t j = 0; j < k; j++) {
            const int64_t id = gt[i * gk + j];
            lo = id < lo ? id : lo;
            hi = id > hi ? id : hi;
            inside += id >= s.label_min && id <= s.label_max;
        }
    if (nq && inside == 0) {
        fprintf(stderr,
                "kiln eval: %s has labels of its own (%lld..%lld), but the ids of %s span "
                "%lld..%lld: recall compares labels with ids, so the ground truth must be in "
                "the index's labels\n",
                ixpath, (long long)s.label_min, (long long)s.label_max, gtpath, (long long)lo,
                (long long)hi);
        return 1;
    }
    fprintf(stderr,
            "kiln eval: note: %s has labels of its own; recall compares them with the ids of %s\n",
            ixpath, gtpath);
    return 0;
}

static int cmd_eval(const cli_args *a) {
    uint32_t k, threads, repeat, efs[EVAL_MAX_EFS];
    size_t nef;
    kiln_format fmt;
    if (!cli_u32(a, "k", &k) || !cli_u32(a, "threads", &threads) ||
        !cli_u32(a, "repeat", &repeat) || !cli_u32_list(a, "ef", efs, EVAL_MAX_EFS, &nef) ||
        !format_ok(a, &fmt))
        return 2;
    if (threads == 0)
        threads = (uint32_t)omp_get_num_procs();
    kiln_format gt_format;
    if (kiln_format_parse(cli_str(a, "gt-format"), &gt_format) != KILN_OK) {
        fprintf(stderr,
                "kiln eval: --gt-format: '%s' is not one of auto, fvecs, bvecs, ivecs, fbin, "
                "u8bin, i8bin, npy, ibin\n",
                cli_str(a, "gt-format"));
        return 2;
    }
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_shardset *ix = NULL;
    kiln_dataset *gtds = NULL;
    float *q = NULL;
    int64_t *gt = NULL; /* labels may be any int64 (kiln build --labels) */
    int64_t *labels = NULL;
    double *lat = NULL, *qps_runs = NULL;
    size_t nq = 0, d = 0;
    int rc = 0;
    const char *gtpath = a->pos[2];
    /* Populated: eval times searches, not the page faults of a fresh map. */
    if (kiln_shardset_open(ctx, a->pos[0],
                           KILN_LOAD_POPULATE | (cli_flag(a, "verify") ? KILN_LOAD_VERIFY : 0),
                           &ix)) {
        rc = fail("eval", ctx);
        goto done;
    }
    if ((rc = read_all_f32(ctx, a, a->pos[1], &q, &nq, &d)))
        goto done;
    if (kiln_dataset_open(ctx, gtpath, gt_format, 0, &gtds)) {
        fprintf(stderr, "kiln eval: %s%s\n", kiln_errmsg(ctx),
                gt_format == KILN_FORMAT_AUTO ? " (for the ground truth: --gt-format)" : "");
        rc = 1;
        goto done;
    }
    size_t gk = kiln_dataset_dim(gtds);
    rc = 1;
    if (d != kiln_shardset_dim(ix))
        fprintf(stderr, "kiln eval: %s has dim %zu but the index %s has dim %zu\n", a->pos[1], d,
                a->pos[0], kiln_shardset_dim(ix));
    else if (kiln_dataset_dtype(gtds) != KILN_DTYPE_I32 &&
             kiln_dataset_dtype(gtds) != KILN_DTYPE_I64)
        fprintf(stderr,
                "kiln eval: %s holds %s vectors, not ground-truth ids (an ivecs file as kiln "
                "groundtruth writes)\n",
                gtpath, kiln_dtype_name(kiln_dataset_dtype(gtds)));
    else if (kiln_dataset_count(gtds) != nq)
        fprintf(stderr, "kiln eval: %s has %zu rows but %s has %zu queries\n", gtpath,
                kiln_dataset_count(gtds), a->pos[1], nq);
    else if (gk < k)
        fprintf(stderr, "kiln eval: %s has %zu ids per query, fewer than -k %u\n", gtpath, gk, k);
    else
        rc = 0;
    if (rc)
        goto done;
    gt = alloc_array(nq, gk, sizeof *gt);
    labels = alloc_array(nq, k, sizeof *labels);
    lat = alloc_array(nq, 1, sizeof *lat);
    qps_runs = alloc_array(repeat, 1, sizeof *qps_runs);
    if (!gt || !labels || !lat || !qps_runs) {
        fprintf(stderr, "kiln eval: out of memory\n");
        rc = 1;
        goto done;
    }
    if (kiln_dataset_read_i64(gtds, 0, nq, gt)) {
        rc = fail("eval", ctx);
        goto done;
    }
    if ((rc = check_gt_labels(ix, a->pos[0], gtpath, gt, nq, gk, k)))
        goto done;
    bool json = cli_flag(a, "json");
    if (!json)
        printf("%-6s %-10s %-12s %-10s %-10s\n", "ef", "recall@k", "QPS", "mean_ms", "p99_ms");
    for (size_t e = 0; e < nef; e++) {
        kiln_search_params sp = {.k = k, .ef = efs[e], .threads = 1};
        kiln_status st = KILN_OK;
        for (size_t pass = 0; pass <= (size_t)repeat; pass++) { /* pass 0 warms up */
            double t0 = now_s();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
            for (size_t i = 0; i < nq; i++) {
                double ts = now_s();
                kiln_status s = kiln_shardset_search(ix, q + i * d, 1, &sp, labels + i * k, NULL);
                lat[i] = now_s() - ts;
                if (s) {
#pragma omp atomic write
                    st = s;
                }
            }
            if (pass > 0)
                qps_runs[pass - 1] = nq / (now_s() - t0);
        }
        if (st) {
            rc = fail("eval", ctx);
            goto done;
        }
        size_t hits = 0;
        for (size_t i = 0; i < nq; i++)
            for (uint32_t j = 0; j < k; j++)
                for (uint32_t g = 0; g < k; g++)
                    if (labels[i * k + j] == gt[i * gk + g]) {
                        hits++;
                        break;
                    }
        double recall = nq ? (double)hits / ((double)nq * k) : 0.0;
        double mean = 0;
        for (size_t i = 0; i < nq; i++)
            mean += lat[i];
        mean = nq ? mean / nq : 0;
        qsort(lat, nq, sizeof *lat, cmp_double);
        double p99 = nq ? lat[(size_t)ceil(0.99 * nq) - 1] : 0;
        qsort(qps_runs, repeat, sizeof *qps_runs, cmp_double);
        double qps = qps_runs[repeat / 2];
        if (json) {
            printf("{\"ef\": %u, \"k\": %u, \"recall\": ", efs[e], k);
            json_num(recall, "%.6f");
            printf(", \"qps\": ");
            json_num(qps, "%.1f");
            printf(", \"mean_ms\": ");
            json_num(mean * 1e3, "%.5f");
            printf(", \"p99_ms\": ");
            json_num(p99 * 1e3, "%.5f");
            printf(", \"threads\": %u}\n", threads);
        } else
            printf("%-6u %-10.4f %-12.1f %-10.4f %-10.4f\n", efs[e], recall, qps, mean * 1e3,
                   p99 * 1e3);
        fflush(stdout);
    }
done:
    free(qps_runs);
    free(lat);
    free(labels);
    free(gt);
    free(q);
    kiln_dataset_free(gtds);
    kiln_shardset_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== groundtruth ==== */

static const cli_opt gt_opts[] = {
    {"k", 'k', "N", "100", "neighbours per query", 1, UINT32_MAX},
    {"output", 'o', "GT.ivecs", NULL, "ids to write (required): .ivecs, .ibin or .npy (int64)", 0,
     0},
    {"distances", 0, "DIST.fvecs", NULL, "also write the distances: .fvecs, .fbin or .npy", 0, 0},
    {"metric", 0, "l2|ip|cos", "l2", "distance", 0, 0},
    {"threads", 't', "N", "0", "threads; 0 = all cores", 0, CLI_MAX_THREADS},
    {"format", 0, "FMT", "auto", "input format of BASE and QUERIES", 0, 0},
    {"labels", 0, "FILE", NULL,
     "the label of each BASE row (as kiln build --labels): the ids written are labels", 0, 0},
    {"allow-nonfinite", 0, NULL, NULL, "accept NaN/Inf values", 0, 0},
    {"progress", 0, NULL, NULL, "show progress on stderr even when it is not a terminal", 0, 0},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd gt_cmd = {"groundtruth",
                               "BASE QUERIES -o GT.ivecs [options]",
                               "Exact k nearest neighbours by brute force (the recall oracle).",
                               gt_opts,
                               2,
                               2};

static int cmd_groundtruth(const cli_args *a) {
    uint32_t k, threads;
    kiln_metric metric;
    const char *out = cli_str(a, "output"), *dout = cli_str(a, "distances");
    kiln_format fmt;
    if (!cli_u32(a, "k", &k) || !cli_u32(a, "threads", &threads) || !parse_metric(a, &metric) ||
        !format_ok(a, &fmt))
        return 2;
    if (!out) {
        fprintf(stderr, "kiln groundtruth: -o GT.ivecs is required\n");
        return 2;
    }
    const out_spec outs[] = {{"-o", out}, {"--distances", dout}};
    kiln_dataset_output files[2] = {{.path = out}, {.path = dout}};
    if (!result_format("groundtruth", &outs[0], true, &files[0].format, &files[0].dtype) ||
        (dout && !result_format("groundtruth", &outs[1], false, &files[1].format, &files[1].dtype)))
        return 2;
    int crc = check_outputs("groundtruth", outs, 2, a->pos, 2);
    if (crc)
        return crc;
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_dataset *base = NULL, *qs = NULL;
    int64_t *labels = NULL, *row_label = NULL;
    float *dist = NULL;
    int32_t *ids = NULL;
    size_t nl = 0;
    int rc = 0;
    if ((rc = open_vectors(ctx, a, a->pos[0], &base)) ||
        (rc = open_vectors(ctx, a, a->pos[1], &qs)) ||
        (cli_str(a, "labels") &&
         (rc = read_labels(ctx, "groundtruth", cli_str(a, "labels"), &row_label, &nl))))
        goto done;
    if (row_label && nl != kiln_dataset_count(base)) {
        fprintf(stderr, "kiln groundtruth: %s holds %zu labels for the %zu rows of %s\n",
                cli_str(a, "labels"), nl, kiln_dataset_count(base), a->pos[0]);
        rc = 1;
        goto done;
    }
    if (kiln_dataset_dim(qs) != kiln_dataset_dim(base)) {
        fprintf(stderr, "kiln groundtruth: %s has dim %zu but %s has dim %zu\n", a->pos[1],
                kiln_dataset_dim(qs), a->pos[0], kiln_dataset_dim(base));
        rc = 1;
        goto done;
    }
    size_t nq = kiln_dataset_count(qs);
    const bool narrow = files[0].dtype == KILN_DTYPE_I32; /* as in search */
    labels = alloc_array(nq, k, sizeof *labels);
    dist = alloc_array(nq, k, sizeof *dist);
    ids = narrow ? alloc_array(nq, k, sizeof *ids) : NULL;
    if (!labels || !dist || (narrow && !ids)) {
        fprintf(stderr, "kiln groundtruth: out of memory for %zu x %u results\n", nq, k);
        rc = 1;
        goto done;
    }
    if (kiln_knn_exact_dataset(ctx, base, qs, metric, k, threads, labels, dist)) {
        rc = fail("groundtruth", ctx);
        goto done;
    }
    for (size_t i = 0; row_label && i < nq * (size_t)k; i++) /* rows to labels; -1 stays */
        labels[i] = labels[i] >= 0 && (size_t)labels[i] < nl ? row_label[labels[i]] : -1;
    if (!narrow_ids("groundtruth", &outs[0], files[0].dtype, labels, nq, k, ids)) {
        rc = 1;
        goto done;
    }
    files[0].data = files[0].dtype == KILN_DTYPE_I64 ? (const void *)labels : (const void *)ids;
    if (files[0].format == KILN_FORMAT_IBIN) /* big-ann ground truth: ids, then distances */
        files[0].distances = dist;
    files[1].data = dist;
    files[0].n = files[1].n = nq;
    files[0].d = files[1].d = k;
    if (kiln_dataset_write_all(ctx, files, dout ? 2 : 1)) {
        rc = fail("groundtruth", ctx);
        goto done;
    }
done:
    free(ids);
    free(dist);
    free(labels);
    free(row_label);
    kiln_dataset_free(qs);
    kiln_dataset_free(base);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== info, check ==== */

static const cli_opt no_opts[] = {{NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_opt info_opts[] = {
    {"header", 0, NULL, NULL,
     "read the header alone (constant time for any size); no per-level stats", 0, 0},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd info_cmd = {
    "info",
    "INDEX|SET [--header]",
    "Show an index's header, levels, degrees and size (or a shard set's shards).",
    info_opts,
    1,
    1};
static const cli_cmd check_cmd = {
    "check",
    "INDEX|SET",
    "Verify an index file (every section's checksum, vectors included) and run the graph "
    "validator; for a shard set's manifest, every shard and its labels.",
    no_opts,
    1,
    1};

static int cmd_info(const cli_args *a) {
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_index_info h;
    kiln_index *ix = NULL;
    int rc = 0;
    bool header_only = cli_flag(a, "header");
    kiln_status st = kiln_index_info_read(ctx, a->pos[0], &h);
    if (st == KILN_E_FORMAT) { /* perhaps a shard set's manifest: its error, else the index's */
        kiln_shardset *set = NULL;
        if (kiln_shardset_open(ctx, a->pos[0], 0, &set) == KILN_OK &&
            kiln_shardset_has_manifest(set)) {
            printf("file:            %s\n", a->pos[0]);
            printf("shard set of:    %u shards (row hash fmix64 mod %u)\n",
                   kiln_shardset_shards(set), kiln_shardset_shards(set));
            printf("count:           %zu\n", kiln_shardset_count(set));
            printf("dim:             %zu\n", kiln_shardset_dim(set));
            printf("metric:          %s\n", kiln_metric_name(kiln_shardset_metric(set)));
            for (uint32_t i = 0; i < kiln_shardset_shards(set); i++)
                printf("shard %-9u  %s (%zu vectors)\n", i, kiln_shardset_shard_path(set, i),
                       kiln_index_count(kiln_shardset_shard(set, i)));
            kiln_shardset_free(set);
            goto done;
        }
        kiln_shardset_free(set);
        rc = fail("info", ctx);
        goto done;
    }
    if (st || (!header_only && kiln_index_load(ctx, a->pos[0], &ix))) {
        rc = fail("info", ctx);
        goto done;
    }
    kiln_index_stats s = {.levels = h.count ? h.max_level + 1 : 0};
    if (ix)
        kiln_index_stats_get(ix, &s);
    printf("file:            %s\n", a->pos[0]);
    printf("format version:  %u\n", h.format_version);
    printf("count:           %llu\n", (unsigned long long)(h.count - h.free_slots));
    printf("free slots:      %llu (capacity %llu)\n", (unsigned long long)h.free_slots,
           (unsigned long long)h.capacity);
    printf("dim:             %u\n", h.dim);
    printf("metric:          %s\n", kiln_metric_name(h.metric));
    printf("storage:         %s%s\n", kiln_storage_name(h.storage),
           h.rerank ? " (+ f32 for rerank)" : "");
    printf("M:               %u (level 0: %u)\n", h.M, h.M0);
    printf("ef_construction: %u\n", h.ef_construction);
    printf("seed:            %llu\n", (unsigned long long)h.seed);
    printf("layers:          %u\n", s.levels);
    printf("entry point:     %u\n", h.entry_point);
    printf("file bytes:      %llu\n", (unsigned long long)h.file_bytes);
    if (header_only)
        goto done;
    printf("memory bytes:    %llu\n", (unsigned long long)s.memory_bytes);
    /* Per element: what the file's sections hold over the live count. */
    const double per = s.count ? 1.0 / (double)s.count : 0.0;
    printf("bytes/element:   %.1f (vectors %.1f, links and labels %.1f)\n",
           (double)s.data_bytes * per, (double)(s.vector_bytes * (s.count + s.free_slots)) * per,
           (double)(s.data_bytes - s.vector_bytes * (s.count + s.free_slots)) * per);
    printf("%-6s %-12s %-10s %-10s\n", "level", "nodes", "avg_deg", "max_deg");
    for (uint32_t l = 0; l < s.levels; l++)
        printf("%-6u %-12llu %-10.2f %-10u\n", l, (unsigned long long)s.nodes_per_level[l],
               s.avg_degree[l], s.max_degree[l]);
done:
    kiln_index_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

/* kiln check on one index: verifying open, validator, non-finite count. */
static bool check_one(const char *path, const kiln_index *ix) {
    kiln_index_stats s;
    if (kiln_index_check(ix) || kiln_index_stats_get(ix, &s))
        return false;
    if (s.nonfinite_vectors == 0)
        printf("%s: ok (%zu vectors, graph valid)\n", path, kiln_index_count(ix));
    else /* a finding, not a defect (graph/validate.c decision 1) */
        printf("%s: ok (%zu vectors, graph valid); %llu vectors hold NaN or infinite values "
               "(first: node %llu), search ranks them last\n",
               path, kiln_index_count(ix), (unsigned long long)s.nonfinite_vectors,
               (unsigned long long)s.first_nonfinite);
    return true;
}

static int cmd_check(const cli_args *a) {
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_shardset *set = NULL;
    int rc = 0;
    /* A manifest: every shard verified against it, every label hashed to its
     * shard (kiln_shardset_open with KILN_LOAD_VERIFY), every graph valid. */
    if (kiln_shardset_open(ctx, a->pos[0], KILN_LOAD_VERIFY, &set)) {
        rc = fail("check", ctx);
        goto done;
    }
    for (uint32_t i = 0; i < kiln_shardset_shards(set) && !rc; i++)
        if (!check_one(kiln_shardset_shard_path(set, i), kiln_shardset_shard(set, i))) {
            if (kiln_shardset_has_manifest(set)) /* name the shard the validator faulted */
                fprintf(stderr, "kiln check: %s: %s\n", kiln_shardset_shard_path(set, i),
                        kiln_errmsg(ctx));
            else
                fail("check", ctx);
            rc = 1;
        }
    if (!rc && kiln_shardset_has_manifest(set))
        printf("%s: ok (shard set of %u shards, %zu vectors, every label in its shard)\n",
               a->pos[0], kiln_shardset_shards(set), kiln_shardset_count(set));
done:
    kiln_shardset_free(set);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== export, import ==== */

static const cli_opt export_opts[] = {
    {"output", 'o', "FILE", NULL, "file to write (required)", 0, 0},
    {"format", 0, "hnswlib", "hnswlib",
     "file format: hnswlib = HierarchicalNSW::saveIndex layout (see docs/FORMAT.md)", 0, 0},
    {"max-elements", 0, "N", NULL,
     "hnswlib's max_elements: room for adds in hnswlib before resize_index (default: the "
     "index's count, live and deleted)",
     1, 4294967294u},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd export_cmd = {"export",
                                   "INDEX --format hnswlib [--max-elements N] -o FILE",
                                   "Write a kiln index in another library's file format.",
                                   export_opts,
                                   1,
                                   1};
static const cli_opt import_opts[] = {
    {"output", 'o', "INDEX", NULL, "kiln index file to write (required)", 0, 0},
    {"format", 0, "hnswlib", "hnswlib", "format of FILE: hnswlib = a saveIndex file of floats", 0,
     0},
    {"dim", 'd', "D", NULL, "vector dimension, checked against the file's (default: from the file)",
     1, CLI_MAX_DIM},
    {"metric", 0, "l2|ip|cos", "l2",
     "distance the file was built with (hnswlib l2, ip, cosine); cos normalises vectors", 0, 0},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd import_cmd = {
    "import",
    "FILE --format hnswlib [--dim D] [--metric l2|ip|cos] -o INDEX",
    "Convert another library's index file into a kiln index, repairing reachability.",
    import_opts,
    1,
    1};

/* hnswlib's name of the space matching a kiln metric. */
static const char *hnswlib_space(kiln_metric m) {
    return m == KILN_METRIC_L2 ? "l2" : m == KILN_METRIC_IP ? "ip" : "cosine";
}

static bool format_is_hnswlib(const cli_args *a) {
    const char *f = cli_str(a, "format");
    if (strcmp(f, "hnswlib") != 0) {
        fprintf(stderr, "kiln %s: --format: '%s' is not supported (only hnswlib)\n", a->cmd->name,
                f);
        return false;
    }
    return true;
}

static int cmd_export(const cli_args *a) {
    const char *out = cli_str(a, "output");
    if (!out) {
        fprintf(stderr, "kiln export: need -o FILE\n");
        return 2;
    }
    kiln_hnswlib_export_params ep;
    kiln_hnswlib_export_params_init(&ep);
    if (!format_is_hnswlib(a) ||
        (cli_str(a, "max-elements") && !cli_u64(a, "max-elements", &ep.max_elements)))
        return 2;
    const out_spec outs[] = {{"-o", out}};
    int crc = check_outputs("export", outs, 1, a->pos, 1);
    if (crc)
        return crc;
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_index *ix = NULL;
    int rc = 0;
    if (kiln_index_load(ctx, a->pos[0], &ix)) {
        rc = fail("export", ctx);
        goto done;
    }
    kiln_index_stats s;
    kiln_index_stats_get(ix, &s);
    const uint64_t elements = s.count + s.free_slots; /* hnswlib's cur_element_count */
    if (ep.max_elements && ep.max_elements < elements) {
        /* The library refuses it too, naming the output; name the input. */
        fprintf(stderr,
                "kiln export: --max-elements %llu is below the %llu elements of %s (live and "
                "deleted)\n",
                (unsigned long long)ep.max_elements, (unsigned long long)elements, a->pos[0]);
        rc = 2;
    } else if (kiln_index_export_hnswlib(ix, out, &ep)) {
        rc = fail("export", ctx);
    } else {
        printf("%s: %zu vectors", out, kiln_index_count(ix));
        if (s.free_slots)
            printf(" and %llu deleted elements (free slots)", (unsigned long long)s.free_slots);
        printf(", max_elements %llu, dim %zu, M %u (maxM0 %u); load it with hnswlib space '%s'\n",
               (unsigned long long)(ep.max_elements ? ep.max_elements : elements),
               kiln_index_dim(ix), s.M, s.M0, hnswlib_space(kiln_index_metric(ix)));
        if (s.storage != KILN_STORAGE_F32 && !s.rerank) /* graph/hnswlib_file.c decision 9 */
            fprintf(stderr,
                    "kiln export: note: the index stores %s vectors: written decoded to "
                    "float32, as its search measured them\n",
                    kiln_storage_name(s.storage));
    }
done:
    kiln_index_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

static int cmd_import(const cli_args *a) {
    const char *out = cli_str(a, "output");
    uint32_t dim = 0;
    kiln_metric metric;
    if (!out) {
        fprintf(stderr, "kiln import: need -o INDEX\n");
        return 2;
    }
    if (!format_is_hnswlib(a) || (cli_str(a, "dim") && !cli_u32(a, "dim", &dim)) ||
        !parse_metric(a, &metric))
        return 2; /* --dim's range in the table refuses 0 */
    const out_spec outs[] = {{"-o", out}};
    int crc = check_outputs("import", outs, 1, a->pos, 1);
    if (crc)
        return crc;
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_index *ix = NULL;
    kiln_build_report rep;
    int rc = 0;
    if (kiln_index_import_hnswlib(ctx, a->pos[0], dim, metric, &ix) ||
        kiln_index_build_report(ix, &rep) || kiln_index_check(ix) || kiln_index_save(ix, out)) {
        rc = fail("import", ctx);
    } else {
        if (rep.deleted_elements)
            fprintf(stderr,
                    "kiln import: %s: %llu elements marked deleted were removed from the graph "
                    "(their in-neighbours relinked); their slots are free for kiln add\n",
                    a->pos[0], (unsigned long long)rep.deleted_elements);
        printf("%s: %zu vectors, dim %zu, %s; reachability repair: %llu links added\n", out,
               kiln_index_count(ix), kiln_index_dim(ix), kiln_metric_name(metric),
               (unsigned long long)rep.repaired_links);
    }
    kiln_index_free(ix);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== add, delete, update ==== */

static const cli_opt add_opts[] = {
    {"labels", 0, "FILE", NULL,
     "labels of the new vectors, one each: text (one int64 a line) or .npy of int64 (default: "
     "the index's largest label + 1, + 2, ...)",
     0, 0},
    {"output", 'o', "OUT", NULL, "index to write (default: INDEX itself, replaced atomically)", 0,
     0},
    {"format", 0, "FMT", NULL, "format of NEW_VECTORS (default: from the extension)", 0, 0},
    {"method", 0, "auto|insert|device", NULL,
     "insert node by node, or run the device pipeline over the old and new vectors (default "
     "auto: the device for at least 10000 vectors and 20% of the index, where there is one)",
     0, 0},
    {"device", 0, "auto|cpu|gpu|P:D", NULL,
     "OpenCL device for the device method (default: $KILN_DEVICE, else auto)", 0, 0},
    {"progress", 0, NULL, NULL, "show progress on stderr", 0, 0},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd add_cmd = {
    "add",
    "INDEX NEW_VECTORS [--labels FILE] [-o OUT] [--method auto|insert|device]",
    "Insert vectors into an index (free slots of deleted ones first); a label in use is an error.",
    add_opts,
    2,
    2};
static const cli_opt delete_opts[] = {
    {"output", 'o', "OUT", NULL, "index to write (default: INDEX itself, replaced atomically)", 0,
     0},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd delete_cmd = {"delete",
                                   "INDEX LABELS_FILE [-o OUT]",
                                   "Remove the nodes of these labels (text, one a line, or .npy "
                                   "int64) and relink their neighbours.",
                                   delete_opts,
                                   2,
                                   2};
static const cli_opt update_opts[] = {
    {"labels", 0, "FILE", NULL,
     "the labels whose vectors these are, one each (required): text or .npy of int64", 0, 0},
    {"output", 'o', "OUT", NULL, "index to write (default: INDEX itself, replaced atomically)", 0,
     0},
    {"format", 0, "FMT", NULL, "format of VECTORS (default: from the extension)", 0, 0},
    {"progress", 0, NULL, NULL, "show progress on stderr", 0, 0},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd update_cmd = {"update",
                                   "INDEX VECTORS --labels FILE [-o OUT]",
                                   "Replace the vectors of existing labels and relink them.",
                                   update_opts,
                                   2,
                                   2};

/* Reads a labels file: .npy of integers (1-D, or n x 1), else text with one
 * decimal int64 a line. Returns 0, or the exit code after the message. */
static int read_labels(kiln_ctx *ctx, const char *cmd, const char *path, int64_t **out, size_t *n) {
    *out = NULL;
    *n = 0;
    if (strcasecmp(extension(path), "npy") == 0) {
        kiln_dataset *ds = NULL;
        if (kiln_dataset_open(ctx, path, KILN_FORMAT_NPY, KILN_OPEN_ALLOW_1D, &ds))
            return fail(cmd, ctx);
        int rc = 0;
        if (kiln_dataset_dim(ds) != 1) {
            fprintf(stderr, "kiln %s: %s: labels need one value a row, not %zu\n", cmd, path,
                    kiln_dataset_dim(ds));
            rc = 1;
        } else if (!(*out = alloc_array(kiln_dataset_count(ds) + 1, 1, sizeof **out))) {
            fprintf(stderr, "kiln %s: out of memory reading %s\n", cmd, path);
            rc = 1;
        } else if (kiln_dataset_read_i64(ds, 0, kiln_dataset_count(ds), *out)) {
            rc = fail(cmd, ctx);
        } else {
            *n = kiln_dataset_count(ds);
        }
        kiln_dataset_free(ds);
        if (rc) {
            free(*out);
            *out = NULL;
        }
        return rc;
    }
    FILE *fp = fopen(path, "r");
    if (!fp) {
        fprintf(stderr, "kiln %s: %s: cannot open: %s\n", cmd, path, strerror(errno));
        return 1;
    }
    size_t cap = 1024, line = 0;
    int64_t *v = malloc(cap * sizeof *v);
    char buf[64];
    int rc = v ? 0 : 1;
    if (!v)
        fprintf(stderr, "kiln %s: out of memory reading %s\n", cmd, path);
    while (!rc && fgets(buf, sizeof buf, fp)) {
        line++;
        size_t len = strlen(buf);
        if (len && buf[len - 1] == '\n')
            buf[--len] = 0;
        else if (!feof(fp)) {
            fprintf(stderr, "kiln %s: %s line %zu: longer than a label\n", cmd, path, line);
            rc = 1;
            break;
        }
        char *end = NULL;
        errno = 0;
        const long long x = len ? strtoll(buf, &end, 10) : 0;
        if (!len || errno || *end || buf[0] == ' ' || buf[0] == '+') {
            fprintf(stderr, "kiln %s: %s line %zu: '%s' is not a decimal int64 label\n", cmd, path,
                    line, buf);
            rc = 1;
            break;
        }
        if (*n == cap) {
            int64_t *g = cap < SIZE_MAX / 2 / sizeof *v ? realloc(v, 2 * cap * sizeof *v) : NULL;
            if (!g) {
                fprintf(stderr, "kiln %s: out of memory reading %s\n", cmd, path);
                rc = 1;
                break;
            }
            v = g;
            cap *= 2;
        }
        v[(*n)++] = x;
    }
    if (!rc && ferror(fp)) {
        fprintf(stderr, "kiln %s: %s: read error: %s\n", cmd, path, strerror(errno));
        rc = 1;
    }
    fclose(fp);
    if (rc) {
        free(v);
        *n = 0;
        return rc;
    }
    *out = v;
    return 0;
}

/* add, delete and update: read the index (copied to the heap by the first
 * change), apply, check, save to -o or over INDEX, atomically. A shard
 * set's manifest is taken as INDEX (decision 11): each label goes to its
 * shard, and the set is saved with its changed shards (kiln_shardset_save). */
static int cmd_live(const cli_args *a) {
    const char *cmd = a->cmd->name, *in = a->pos[0];
    const bool del = a->cmd == &delete_cmd, upd = a->cmd == &update_cmd;
    const char *out = cli_str(a, "output") ? cli_str(a, "output") : in;
    const char *lpath = del ? a->pos[1] : cli_str(a, "labels");
    kiln_format fmt;
    if (upd && !lpath) {
        fprintf(stderr, "kiln update: --labels FILE is required\n");
        return 2;
    }
    if (!del && !format_ok(a, &fmt))
        return 2;
    kiln_add_params ap;
    kiln_add_params_init(&ap);
    if (!del && !upd) {
        const char *m = cli_str(a, "method");
        if (!m || strcmp(m, "auto") == 0)
            ap.method = KILN_ADD_AUTO;
        else if (strcmp(m, "insert") == 0)
            ap.method = KILN_ADD_INSERT;
        else if (strcmp(m, "device") == 0)
            ap.method = KILN_ADD_DEVICE;
        else {
            fprintf(stderr, "kiln add: --method: '%s' is not auto, insert or device\n", m);
            return 2;
        }
        ap.device = cli_str(a, "device");
    }
    /* Only -o is checked against the inputs: INDEX itself is the default. */
    if (cli_str(a, "output")) {
        const out_spec outs[] = {{"-o", out}};
        const char *ins[3] = {a->pos[0], a->pos[1], lpath};
        int crc = check_outputs(cmd, outs, 1, ins, lpath && !del ? 3 : 2);
        if (crc)
            return crc;
    }
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    kiln_shardset *set = NULL;
    float *v = NULL;
    int64_t *labels = NULL;
    size_t nv = 0, d = 0, nl = 0;
    int rc = 0;
    if (kiln_shardset_open(ctx, in, 0, &set)) {
        rc = fail(cmd, ctx);
        goto done;
    }
    if ((lpath && (rc = read_labels(ctx, cmd, lpath, &labels, &nl))) ||
        (!del && (rc = read_all_f32(ctx, a, a->pos[1], &v, &nv, &d))))
        goto done;
    if (!del && d != kiln_shardset_dim(set)) {
        fprintf(stderr, "kiln %s: %s has dimension %zu, the index %zu\n", cmd, a->pos[1], d,
                kiln_shardset_dim(set));
        rc = 1;
        goto done;
    }
    if (!del && lpath && nl != nv) {
        fprintf(stderr, "kiln %s: %s holds %zu labels for the %zu vectors of %s\n", cmd, lpath, nl,
                nv, a->pos[1]);
        rc = 1;
        goto done;
    }
    const size_t before = kiln_shardset_count(set);
    kiln_status st = del   ? kiln_shardset_delete(set, labels, nl)
                     : upd ? kiln_shardset_update(set, v, labels, nv)
                           : kiln_shardset_add_ex(set, v, labels, nv, &ap);
    for (uint32_t s = 0; st == KILN_OK && s < kiln_shardset_shards(set); s++)
        st = kiln_index_check(kiln_shardset_shard(set, s));
    if (st || kiln_shardset_save(set, out)) {
        rc = fail(cmd, ctx);
        goto done;
    }
    printf("%s: %s %zu vectors; %zu before, %zu now\n", out,
           del   ? "deleted"
           : upd ? "updated"
                 : "added",
           del ? nl : nv, before, kiln_shardset_count(set));
done:
    free(v);
    free(labels);
    kiln_shardset_free(set);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== devices ==== */

static const cli_cmd devices_cmd = {
    "devices", "", "List the OpenCL platforms and devices --device can name.", no_opts, 0, 0};

static int cmd_devices(const cli_args *a) {
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    uint32_t n = 0;
    int rc = 0;
    if (kiln_device_count(ctx, &n) != KILN_OK) {
        rc = fail("devices", ctx);
    } else {
        printf("%-5s %-4s %-5s %-28s %-36s %-10s %s\n", "index", "P:D", "type", "platform",
               "device", "memory", "units");
        for (uint32_t i = 0; i < n; i++) {
            kiln_device_info d;
            if (kiln_device_info_get(ctx, i, &d) != KILN_OK) {
                rc = fail("devices", ctx);
                break;
            }
            char pd[16];
            snprintf(pd, sizeof pd, "%u:%u", d.platform_index, d.device_index);
            printf("%-5u %-4s %-5s %-28.28s %-36.36s %-10.1f %u\n", d.index, pd,
                   d.type == KILN_DEVICE_GPU   ? "gpu"
                   : d.type == KILN_DEVICE_CPU ? "cpu"
                                               : "other",
                   d.platform_name, d.device_name, (double)d.global_mem_bytes / (1 << 30),
                   d.compute_units);
        }
        kiln_device_info chosen;
        if (rc == 0 && kiln_device_select(ctx, NULL, &chosen) == KILN_OK)
            printf("default (--device auto or $KILN_DEVICE): %u:%u %s\n", chosen.platform_index,
                   chosen.device_index, chosen.device_name);
    }
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== generate ==== */

static const cli_opt gen_opts[] = {
    {"n", 'n', "N", "10000", "base vectors", 1, UINT32_MAX},
    {"dim", 'd', "D", "128", "dimension", 1, CLI_MAX_DIM},
    {"clusters", 0, "C", "64", "mixture components", 1, UINT32_MAX},
    {"seed", 0, "N", "1", "seed", 0, 0},
    {"output", 'o', "BASE", NULL,
     "base file to write (required): .fvecs, .fbin or .npy, the format from the extension", 0, 0},
    {"queries", 0, "NQ", "0", "held-out queries drawn from the same mixture", 0, UINT32_MAX},
    {"queries-out", 0, "FILE", NULL,
     "query file to write (required when --queries > 0): .fvecs, .fbin or .npy", 0, 0},
    {NULL, 0, NULL, NULL, NULL, 0, 0}};
static const cli_cmd gen_cmd = {"generate",
                                "-o BASE [options]",
                                "Write a seeded clustered synthetic dataset (fvecs, fbin or npy).",
                                gen_opts,
                                0,
                                0};

/* The float format named by o's extension; false after a usage message. */
static bool vector_format(const out_spec *o, kiln_format *fmt) {
    const char *ext = extension(o->path);
    if (kiln_format_parse(ext, fmt) == KILN_OK &&
        (*fmt == KILN_FORMAT_FVECS || *fmt == KILN_FORMAT_FBIN || *fmt == KILN_FORMAT_NPY))
        return true;
    fprintf(stderr, "kiln generate: %s %s: unknown extension; use .fvecs, .fbin or .npy\n", o->opt,
            o->path);
    return false;
}

static int cmd_generate(const cli_args *a) {
    uint64_t n, nq, seed;
    uint32_t d, clusters;
    const char *out = cli_str(a, "output"), *qout = cli_str(a, "queries-out");
    if (!cli_u64(a, "n", &n) || !cli_u32(a, "dim", &d) || !cli_u32(a, "clusters", &clusters) ||
        !cli_u64(a, "seed", &seed) || !cli_u64(a, "queries", &nq))
        return 2;
    if (!out) {
        fprintf(stderr, "kiln generate: -o BASE is required\n");
        return 2;
    }
    if (nq && !qout) {
        fprintf(stderr, "kiln generate: --queries %llu needs --queries-out FILE\n",
                (unsigned long long)nq);
        return 2;
    }
    const out_spec outs[] = {{"-o", out}, {"--queries-out", nq ? qout : NULL}};
    kiln_dataset_output files[2] = {{.path = out, .dtype = KILN_DTYPE_F32, .n = n, .d = d},
                                    {.path = qout, .dtype = KILN_DTYPE_F32, .n = nq, .d = d}};
    if (!vector_format(&outs[0], &files[0].format) ||
        (nq && !vector_format(&outs[1], &files[1].format)))
        return 2;
    int crc = check_outputs("generate", outs, 2, NULL, 0);
    if (crc)
        return crc;
    kiln_ctx *ctx;
    if (setup(a, &ctx))
        return 1;
    /* n and nq are at most UINT32_MAX each (their ranges), so the sum fits. */
    size_t rows = (size_t)(n + nq), len;
    float *v = NULL;
    if (!__builtin_mul_overflow(rows, (size_t)d, &len))
        v = alloc_array(len, 1, sizeof(float));
    int rc = 0;
    if (!v) {
        fprintf(stderr, "kiln generate: out of memory for %zu x %u floats\n", rows, d);
        rc = 1;
    } else {
        files[0].data = v;
        files[1].data = v + n * d;
        if (kiln_synth_clustered(ctx, rows, d, clusters, seed, v, len) ||
            kiln_dataset_write_all(ctx, files, nq ? 2 : 1))
            rc = fail("generate", ctx);
    }
    free(v);
    kiln_ctx_free(ctx);
    return rc;
}

/* ==== main ==== */

typedef struct command {
    const cli_cmd *cmd;
    int (*run)(const cli_args *a);
} command;

static const command commands[] = {
    {&build_cmd, cmd_build},    {&search_cmd, cmd_search},   {&eval_cmd, cmd_eval},
    {&gt_cmd, cmd_groundtruth}, {&info_cmd, cmd_info},       {&check_cmd, cmd_check},
    {&gen_cmd, cmd_generate},   {&devices_cmd, cmd_devices}, {&export_cmd, cmd_export},
    {&import_cmd, cmd_import},  {&add_cmd, cmd_live},        {&delete_cmd, cmd_live},
    {&update_cmd, cmd_live},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

/* The short usage: bare `kiln` and an unknown command print it on stderr. */
static void usage_short(FILE *to) {
    fprintf(to, "usage: kiln COMMAND [options] (commands:");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(to, " %s", commands[i].cmd->name);
    fprintf(to, "); kiln help [COMMAND] for help, kiln --version for the version\n");
}

static void usage(FILE *to) {
    fprintf(to,
            "kiln %s -- batch HNSW index builder\n\nusage: kiln COMMAND [options]\n\ncommands:\n",
            kiln_version_string());
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(to, "  %-12s %s\n", commands[i].cmd->name, commands[i].cmd->summary);
    fprintf(to, "  %-12s %s\n", "help [CMD]", "Show this help, or that of one command.");
    fprintf(to, "  %-12s %s\n", "version", "Print the version (also -V, --version).");
    fprintf(to, "\nRun 'kiln help COMMAND' or 'kiln COMMAND --help' for the options of a command, "
                "with their defaults.\n");
    for (size_t i = 0; i < NCOMMANDS; i++) {
        fputc('\n', to);
        cli_help(commands[i].cmd, to);
    }
}

static const command *find_command(const char *name) {
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(name, commands[i].cmd->name) == 0)
            return &commands[i];
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage_short(stderr);
        return 2;
    }
    const char *word = argv[1];
    if (strcmp(word, "--help") == 0 || strcmp(word, "-h") == 0 || strcmp(word, "help") == 0) {
        if (argc == 2) {
            usage(stdout);
            return 0;
        }
        const command *c = find_command(argv[2]);
        if (!c || argc > 3) {
            fprintf(stderr, "kiln help: %s '%s' (see kiln help)\n",
                    c ? "unexpected argument" : "unknown command", c ? argv[3] : argv[2]);
            return 2;
        }
        cli_help(c->cmd, stdout);
        return 0;
    }
    if (strcmp(word, "version") == 0 || strcmp(word, "--version") == 0 || strcmp(word, "-V") == 0) {
        if (argc > 2) {
            fprintf(stderr, "kiln version: unexpected argument '%s'\n", argv[2]);
            return 2;
        }
        printf("kiln %s\n", kiln_version_string());
        return 0;
    }
    const command *c = find_command(word);
    if (!c) {
        fprintf(stderr, "kiln: unknown command '%s' (see kiln help)\n", word);
        return 2;
    }
    if (c->run != cmd_build && kiln_dist_launched_size() > 1) { /* decision 12 */
        fprintf(stderr,
                "kiln %s: started as one of %d ranks (mpirun, srun): only kiln build runs "
                "across ranks; run %s as one process\n",
                word, kiln_dist_launched_size(), word);
        return 2;
    }
    cli_args a;
    switch (cli_parse(c->cmd, argc - 2, argv + 2, stderr, &a)) {
    case CLI_OK: return c->run(&a);
    case CLI_HELP: cli_help(c->cmd, stdout); return 0;
    default: return 2;
    }
}
