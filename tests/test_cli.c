/* test_cli.c -- the kiln command as users run it: help text, the full
 * generate -> groundtruth -> build -> check -> info -> search -> eval path,
 * command-line conventions (--, -k3, long-option prefixes, help CMD,
 * --version), JSON output, one-line errors with exit 2 for usage errors and 1
 * for data and runtime errors, and no output left behind by a failed
 * command. Needs KILN_CLI (set by ctest). */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "file_util.h"

static const char *kiln;
static char tmp[512];
static char out_text[1 << 16], err_text[1 << 16];

static void slurp(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(buf, 1, cap - 1, f) : 0;
    buf[n] = '\0';
    if (f)
        fclose(f);
}

/* Runs "kiln ARGS", capturing stdout/stderr; returns the exit code. */
static int run(const char *args) {
    char cmd[8192], o[600], e[600];
    snprintf(o, sizeof o, "%s/stdout.txt", tmp);
    snprintf(e, sizeof e, "%s/stderr.txt", tmp);
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>%s </dev/null", kiln, args, o, e);
    int st = system(cmd);
    slurp(o, out_text, sizeof out_text);
    slurp(e, err_text, sizeof err_text);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static bool exists(const char *name) {
    char p[700];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s", tmp, name);
    return stat(p, &sb) == 0;
}

static bool write_text(const char *name, const char *text) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", tmp, name);
    FILE *f = fopen(p, "wb");
    bool ok = f && fputs(text, f) >= 0;
    return f && fclose(f) == 0 && ok;
}

static bool file_is(const char *name, const char *text) {
    char p[700], buf[256];
    snprintf(p, sizeof p, "%s/%s", tmp, name);
    slurp(p, buf, sizeof buf);
    return strcmp(buf, text) == 0;
}

static size_t count_lines(const char *s) {
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* Runs "PRE kiln ARGS" through sh (PRE: shell commands ending in exec). */
static int run_sh(const char *pre, const char *args) {
    const char *saved = kiln;
    char k[1400];
    snprintf(k, sizeof k, "%s %s", pre, saved);
    kiln = k;
    int rc = run(args);
    kiln = saved;
    return rc;
}

static bool same_bytes(const char *a, const char *b) {
    char c[1500];
    snprintf(c, sizeof c, "cmp -s %s/%s %s/%s", tmp, a, tmp, b);
    return system(c) == 0;
}

static mode_t mode_of(const char *name) {
    char p[700];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s", tmp, name);
    return stat(p, &sb) == 0 ? sb.st_mode & 0777 : (mode_t)-1;
}

/* No afile temporaries (".NAME.kiln-tmp.PID.XXXXXX") left in the scratch
 * folder. */
static bool no_temp_files(void) {
    DIR *d = opendir(tmp);
    struct dirent *de;
    bool clean = true;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".kiln-tmp."))
            clean = false;
    if (d)
        closedir(d);
    return clean;
}

static void test_help(void) {
    CHECK(run("--help") == 0);
    const char *cmds[] = {"build", "search", "eval", "groundtruth", "info", "check", "generate"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        CHECK_MSG(strstr(out_text, cmds[i]) != NULL, "kiln --help lacks %s", cmds[i]);
    CHECK(run("build --help") == 0);
    const char *opts[] = {"--metric",          "(default: l2)",  "-M",        "(default: 16)",
                          "--ef-construction", "(default: 200)", "--method",  "the default where",
                          "--threads",         "--seed",         "--progress"};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        CHECK_MSG(strstr(out_text, opts[i]) != NULL, "kiln build --help lacks %s", opts[i]);
    CHECK(run("eval --help") == 0 && strstr(out_text, "(default: 10,16,32,64,128)"));
    CHECK(run("nosuch") == 2 && strstr(err_text, "unknown command"));
    CHECK(run("build x.fvecs -o y --bogus") == 2 && strstr(err_text, "unknown option '--bogus'"));
    CHECK(run("build x.fvecs -o y -M abc") == 2 && strstr(err_text, "'abc' is not"));
}

/* The ground truth of test_pipeline (gt.ivecs, 50 x 20) rewritten as
 * big-ann ground truth (n, k, ids, distances) and as an npy of int64 ids:
 * eval reads both, by extension or by --gt-format, to the same recall. */
static void test_gt_formats(double recall_ivecs) {
    char p[700], a[4096];
    snprintf(p, sizeof p, "%s/gt.ivecs", tmp);
    FILE *f = fopen(p, "rb");
    REQUIRE(f);
    enum { NQ = 50, K = 20 };
    static int32_t ids[NQ * K];
    for (int i = 0; i < NQ; i++) {
        int32_t d = 0;
        REQUIRE(fread(&d, 4, 1, f) == 1 && d == K);
        REQUIRE(fread(ids + i * K, 4, K, f) == K);
    }
    fclose(f);
    /* ibin under a name that says nothing. */
    snprintf(p, sizeof p, "%s/truth.dat", tmp);
    f = fopen(p, "wb");
    REQUIRE(f);
    const uint32_t head[2] = {NQ, K};
    static const float dists[NQ * K];
    CHECK(fwrite(head, 4, 2, f) == 2 && fwrite(ids, 4, NQ * K, f) == NQ * K &&
          fwrite(dists, 4, NQ * K, f) == NQ * K);
    CHECK(fclose(f) == 0);
    /* npy '<i8'. */
    snprintf(p, sizeof p, "%s/truth.npy", tmp);
    f = fopen(p, "wb");
    REQUIRE(f);
    char hdr[128];
    const int len = snprintf(hdr, sizeof hdr,
                             "\x93NUMPY\x01%c%c%c{'descr': '<i8', 'fortran_order': False, 'shape': "
                             "(%d, %d), }",
                             0, 118, 0, NQ, K);
    REQUIRE(len > 0 && len < 127);
    memset(hdr + len, ' ', sizeof hdr - (size_t)len);
    hdr[127] = '\n';
    CHECK(fwrite(hdr, 1, sizeof hdr, f) == sizeof hdr);
    for (int i = 0; i < NQ * K; i++) {
        const int64_t v = ids[i];
        CHECK(fwrite(&v, 8, 1, f) == 1);
    }
    CHECK(fclose(f) == 0);

    static const char *const how[] = {"truth.dat --gt-format ibin", "truth.npy",
                                      "truth.npy --gt-format npy --format fvecs"};
    for (size_t i = 0; i < sizeof how / sizeof how[0]; i++) {
        snprintf(a, sizeof a, "eval %s/i.kiln %s/q.fvecs %s/%s --ef 64 --json", tmp, tmp, tmp,
                 how[i]);
        CHECK_MSG(run(a) == 0, "%s: %s", how[i], err_text);
        const char *r = strstr(out_text, "\"recall\": ");
        CHECK_MSG(r && atof(r + 10) == recall_ivecs, "%s: %s", how[i], out_text);
    }
    snprintf(a, sizeof a, "eval %s/i.kiln %s/q.fvecs %s/truth.dat --ef 64", tmp, tmp, tmp);
    CHECK(run(a) == 1 && strstr(err_text, "truth.dat") && strstr(err_text, "--gt-format"));
    snprintf(a, sizeof a, "eval %s/i.kiln %s/q.fvecs %s/truth.dat --gt-format nope", tmp, tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, "--gt-format: 'nope'"));
    /* --format is the queries' only: naming ibin there does not read them. */
    snprintf(a, sizeof a, "eval %s/i.kiln %s/q.fvecs %s/truth.dat --format ibin --ef 64", tmp, tmp,
             tmp);
    CHECK(run(a) == 1);
}

static void test_pipeline(void) {
    char a[4096];
    snprintf(a, sizeof a,
             "generate -n 3000 -d 16 --clusters 8 --seed 3 -o %s/b.fvecs --queries 50 "
             "--queries-out %s/q.fvecs",
             tmp, tmp);
    REQUIRE(run(a) == 0);
    snprintf(a, sizeof a, "groundtruth %s/b.fvecs %s/q.fvecs -k 20 -o %s/gt.ivecs", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/i.kiln --threads 1 --seed 9 --json", tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK(strstr(out_text, "\"build_seconds\"") && strstr(out_text, "\"count\": 3000"));
    /* The default method is the device pipeline only where kiln has OpenCL. */
    CHECK_MSG(
        strstr(out_text, KILN_TEST_OPENCL ? "\"method\": \"device\"" : "\"method\": \"insert\""),
        "%s", out_text);
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/i2.kiln --threads 1 --seed 9", tmp, tmp);
    CHECK(run(a) == 0);
    snprintf(a, sizeof a, "cmp -s %s/i.kiln %s/i2.kiln", tmp, tmp);
    CHECK_MSG(system(a) == 0, "same seed and one thread must give identical files");

    snprintf(a, sizeof a, "check %s/i.kiln", tmp);
    CHECK(run(a) == 0 && strstr(out_text, "ok"));
    snprintf(a, sizeof a, "info %s/i.kiln", tmp);
    CHECK(run(a) == 0);
    CHECK(strstr(out_text, "count:           3000") && strstr(out_text, "dim:             16") &&
          strstr(out_text, "avg_deg") && strstr(out_text, "layers:"));
    snprintf(a, sizeof a, "search %s/i.kiln %s/q.fvecs -k 5 -o %s/res.ivecs", tmp, tmp, tmp);
    CHECK(run(a) == 0 && exists("res.ivecs"));
    struct stat sb;
    char p[700];
    snprintf(p, sizeof p, "%s/res.ivecs", tmp);
    CHECK(stat(p, &sb) == 0 && sb.st_size == 50 * (4 + 5 * 4));

    snprintf(a, sizeof a, "eval %s/i.kiln %s/q.fvecs %s/gt.ivecs --ef 10,64 --json", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK(count_lines(out_text) == 2);
    CHECK(strstr(out_text, "\"ef\": 10") && strstr(out_text, "\"recall\"") &&
          strstr(out_text, "\"qps\""));
    const char *last = strstr(out_text, "\"ef\": 64");
    double recall =
        last && strstr(last, "\"recall\": ") ? atof(strstr(last, "\"recall\": ") + 10) : 0;
    CHECK_MSG(recall >= 0.95, "recall@10 at ef=64 from kiln eval: %.4f", recall);
    CHECK(no_temp_files());
    test_gt_formats(recall);
}

/* "key": VALUE unquoted (numbers, true/false) in a JSON line. */
static bool json_raw(const char *text, const char *key, const char *want) {
    char pat[1200];
    snprintf(pat, sizeof pat, "\"%s\": %s,", key, want);
    return strstr(text, pat) != NULL;
}

/* kiln build --shards: the set and its shards, one shard at a time then
 * the manifest, search and eval through the manifest (the same results as
 * a search by hand of every shard would give is test_shards' job; here: the
 * commands, their outputs and their refusals). */
/* recall@10 at ef 64 that kiln eval reports for INDEX against GT. */
static double eval_recall(const char *index, const char *gt) {
    char a[4096];
    snprintf(a, sizeof a, "eval %s/%s %s/q.fvecs %s/%s -k 10 --ef 64 --json", tmp, index, tmp, tmp,
             gt);
    if (run(a) != 0)
        return -1;
    const char *r = strstr(out_text, "\"recall\": ");
    return r ? atof(r + 10) : -1;
}

/* kiln build --labels: search returns the labels (here beyond int32), kiln
 * groundtruth --labels writes them, kiln eval reads them (int64 .npy), and
 * the recall is the unlabelled index's, the graph being the same; repeated
 * labels are refused naming both rows, and --labels with --shards. */
static void test_labels(void) {
    char a[4096];
    snprintf(a, sizeof a, "%s/lab.txt", tmp);
    FILE *lf = fopen(a, "w");
    REQUIRE(lf);
    for (long long i = 0; i < 3000; i++)
        fprintf(lf, "%lld\n", 5000000000LL + 7 * i);
    REQUIRE(fclose(lf) == 0);
    snprintf(a, sizeof a, "build %s/b.fvecs --labels %s/lab.txt -o %s/lab.kiln --threads 1", tmp,
             tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/nolab.kiln --threads 1", tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    snprintf(a, sizeof a,
             "groundtruth %s/b.fvecs %s/q.fvecs -k 10 --labels %s/lab.txt -o %s/labgt.npy", tmp,
             tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    snprintf(a, sizeof a, "groundtruth %s/b.fvecs %s/q.fvecs -k 10 -o %s/rowgt.ivecs", tmp, tmp,
             tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    const double rl = eval_recall("lab.kiln", "labgt.npy"),
                 ru = eval_recall("nolab.kiln", "rowgt.ivecs");
    CHECK_MSG(rl >= 0.9 && rl == ru, "recall@10 at ef 64: labelled %.4f, by rows %.4f", rl, ru);
    snprintf(a, sizeof a, "search %s/lab.kiln %s/q.fvecs -k 3 --json", tmp, tmp);
    CHECK(run(a) == 0 && strstr(out_text, "50000"));
    /* Repeated labels, and --labels with --shards. */
    snprintf(a, sizeof a, "sh -c 'seq 0 2999 | sed 17s/.*/3/ > %s/dup.txt'", tmp);
    REQUIRE(system(a) == 0);
    snprintf(a, sizeof a, "build %s/b.fvecs --labels %s/dup.txt -o %s/dup.kiln", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 1 && strstr(err_text, "rows 3 and 16 have the same label 3") &&
                  !exists("dup.kiln"),
              "%s", err_text);
    /* A shard set routes rows by their labels: searched, evaluated against
     * the labelled ground truth, written through by label. */
    snprintf(a, sizeof a,
             "build %s/b.fvecs --labels %s/lab.txt --shards 2 -o %s/lab.kset --threads 1", tmp, tmp,
             tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    const double rs = eval_recall("lab.kset", "labgt.npy");
    CHECK_MSG(rs >= 0.9, "labelled shard set: recall@10 at ef 64 %.4f", rs);
    snprintf(a, sizeof a, "search %s/lab.kset %s/q.fvecs -k 3 --json", tmp, tmp);
    CHECK(run(a) == 0 && strstr(out_text, "50000"));
    snprintf(a, sizeof a, "sh -c 'head -100 %s/lab.txt > %s/lab100.txt'", tmp, tmp);
    REQUIRE(system(a) == 0);
    snprintf(a, sizeof a, "delete %s/lab.kset %s/lab100.txt", tmp, tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "3000 before, 2900 now"), "%s%s", out_text, err_text);
    snprintf(a, sizeof a, "sh -c 'head -5 %s/lab.txt > %s/short.txt'", tmp, tmp);
    REQUIRE(system(a) == 0);
    snprintf(a, sizeof a, "build %s/b.fvecs --labels %s/short.txt -o %s/short.kiln", tmp, tmp, tmp);
    CHECK(run(a) == 1 && strstr(err_text, "holds 5 labels for the 3000 rows"));
}

/* kiln build --storage f16|int8 [--rerank]: version 3 files that info,
 * check, eval, add and export take, recall near f32's (test_storage has the
 * bars), bytes per element reported; bad values refused with no output. */
static void test_storage(void) {
    char a[4096];
    static const char *const kinds[][2] = {
        {"f32", ""}, {"f16", ""}, {"int8", ""}, {"int8", " --rerank"}};
    double rec[4];
    for (int i = 0; i < 4; i++) {
        snprintf(a, sizeof a, "build %s/b.fvecs --storage %s%s -o %s/st%d.kiln --threads 1", tmp,
                 kinds[i][0], kinds[i][1], tmp, i);
        CHECK_MSG(run(a) == 0 && strstr(out_text, kinds[i][0]), "%s", err_text);
        snprintf(a, sizeof a, "info %s/st%d.kiln", tmp, i);
        CHECK(run(a) == 0 && strstr(out_text, "bytes/element:") &&
              strstr(out_text, i ? "format version:  3" : "format version:  2") &&
              (i < 3 || strstr(out_text, "int8 (+ f32 for rerank)")));
        snprintf(a, sizeof a, "check %s/st%d.kiln", tmp, i);
        CHECK_MSG(run(a) == 0, "%s", err_text);
        char name[32];
        snprintf(name, sizeof name, "st%d.kiln", i);
        rec[i] = eval_recall(name, "gt.ivecs");
    }
    CHECK_MSG(rec[0] > 0.9 && rec[1] >= rec[0] - 0.01 && rec[2] >= rec[0] - 0.02 &&
                  rec[3] >= rec[0] - 0.01,
              "recall@10 at ef 64: f32 %.4f, f16 %.4f, int8 %.4f, int8+rerank %.4f", rec[0], rec[1],
              rec[2], rec[3]);
    snprintf(a, sizeof a, "add %s/st2.kiln %s/q.fvecs -o %s/st2add.kiln", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    snprintf(a, sizeof a, "check %s/st2add.kiln", tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    snprintf(a, sizeof a, "export %s/st2.kiln --format hnswlib -o %s/st2.hnsw", tmp, tmp);
    CHECK(run(a) == 0 && strstr(err_text, "decoded"));
    snprintf(a, sizeof a, "build %s/b.fvecs --storage int4 -o %s/bad.kiln", tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, "--storage: 'int4' is not one of f32, f16, int8") &&
          !exists("bad.kiln"));
    snprintf(a, sizeof a, "build %s/b.fvecs --rerank -o %s/bad.kiln", tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, "needs --storage f16 or int8") && !exists("bad.kiln"));
}

static void test_shards(void) {
    char a[4096];
    snprintf(a, sizeof a, "build %s/b.fvecs --shards 2 -o %s/s.kset --threads 1 --json", tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK(json_raw(out_text, "shards", "2") && json_raw(out_text, "built", "2") &&
          json_raw(out_text, "manifest", "true"));
    CHECK(exists("s.kset") && exists("s.kset-0-of-2.kiln") && exists("s.kset-1-of-2.kiln") &&
          !exists("s.kset.work"));
    snprintf(a, sizeof a, "check %s/s.kset", tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "shard set of 2 shards, 3000 vectors"), "%s%s",
              out_text, err_text);
    snprintf(a, sizeof a, "info %s/s.kset", tmp);
    CHECK(run(a) == 0 && strstr(out_text, "shard set of:    2 shards") &&
          strstr(out_text, "count:           3000"));
    snprintf(a, sizeof a, "eval %s/s.kset %s/q.fvecs %s/gt.ivecs --ef 64 --json", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    const char *r = strstr(out_text, "\"recall\": ");
    const double recall = r ? atof(r + 10) : 0;
    CHECK_MSG(recall >= 0.95, "recall@10 at ef=64 of a 2-shard set from kiln eval: %.4f", recall);
    snprintf(a, sizeof a, "search %s/s.kset %s/q.fvecs -k 5 --json", tmp, tmp);
    CHECK(run(a) == 0 && count_lines(out_text) == 50 && strstr(out_text, "\"distances\""));
    /* kiln delete and add through the manifest: routed to the shards, the
     * set saved in place (new shard files, the old ones gone), still valid. */
    snprintf(a, sizeof a, "sh -c 'seq 0 9 100 > %s/del.txt'", tmp);
    REQUIRE(system(a) == 0);
    snprintf(a, sizeof a, "delete %s/s.kset %s/del.txt", tmp, tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "deleted 12 vectors; 3000 before, 2988 now"), "%s%s",
              out_text, err_text);
    CHECK(!exists("s.kset-0-of-2.kiln") && !exists("s.kset-1-of-2.kiln"));
    snprintf(a, sizeof a, "check %s/s.kset", tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "shard set of 2 shards, 2988 vectors"), "%s%s",
              out_text, err_text);
    snprintf(a, sizeof a, "delete %s/s.kset %s/del.txt", tmp, tmp);
    CHECK_MSG(run(a) == 1 && strstr(err_text, "shard ") && count_lines(err_text) == 1, "%s",
              err_text);
    snprintf(a, sizeof a, "add %s/s.kset %s/q.fvecs", tmp, tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "added 50 vectors; 2988 before, 3038 now"), "%s%s",
              out_text, err_text);
    snprintf(a, sizeof a, "check %s/s.kset", tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "shard set of 2 shards, 3038 vectors"), "%s%s",
              out_text, err_text);
    /* Shard by shard (two processes' work), then the manifest alone. */
    snprintf(a, sizeof a, "build %s/b.fvecs --shards 2 --shard 1 -o %s/p.kset --threads 1", tmp,
             tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK(exists("p.kset-1-of-2.kiln") && !exists("p.kset-0-of-2.kiln") && !exists("p.kset"));
    snprintf(a, sizeof a, "build %s/b.fvecs --shards 2 --shard 0 -o %s/p.kset --threads 1", tmp,
             tmp);
    CHECK(run(a) == 0 && !exists("p.kset"));
    snprintf(a, sizeof a, "build %s/b.fvecs --shards 2 -o %s/p.kset --threads 1 --resume --json",
             tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK(json_raw(out_text, "built", "0") && json_raw(out_text, "kept", "2") && exists("p.kset"));
    snprintf(a, sizeof a, "build %s/b.fvecs --shards 2 -o %s/s.kset --threads 1", tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK(same_bytes("p.kset-0-of-2.kiln", "s.kset-0-of-2.kiln") &&
          same_bytes("p.kset-1-of-2.kiln", "s.kset-1-of-2.kiln"));
    /* Refusals: --shard without --shards, out of range; a shard gone. */
    snprintf(a, sizeof a, "build %s/b.fvecs --shard 0 -o %s/x.kset", tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, "--shard 0 needs --shards N"));
    snprintf(a, sizeof a, "build %s/b.fvecs --shards 2 --shard 2 -o %s/x.kset", tmp, tmp);
    CHECK(run(a) == 2);
    snprintf(a, sizeof a, "rm %s/p.kset-1-of-2.kiln", tmp);
    REQUIRE(system(a) == 0);
    snprintf(a, sizeof a, "search %s/p.kset %s/q.fvecs", tmp, tmp);
    CHECK_MSG(run(a) == 1 && strstr(err_text, "shard 1 of 2") && count_lines(err_text) == 1, "%s",
              err_text);
    CHECK(no_temp_files());
}

/* The final line of each progress stage ("[kiln] STAGE  done/total  ... s",
 * no ETA) reports done == total. Returns the number of final lines seen. */
static size_t check_progress_final(const char *text) {
    size_t finals = 0;
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        const char *nl = strchr(l, '\n');
        size_t len = nl ? (size_t)(nl - l) : strlen(l);
        char line[512];
        if (len >= sizeof line || strncmp(l, "[kiln] ", 7) != 0)
            continue;
        memcpy(line, l, len);
        line[len] = '\0';
        /* Stage names may hold spaces ("reverse links"): find " done/total". */
        unsigned long long done = 0, total = 0;
        const char *num = line + 7;
        while (*num && !(num[-1] == ' ' && sscanf(num, "%llu/%llu", &done, &total) == 2))
            num++;
        if (strstr(line, "ETA") || !*num)
            continue;
        finals++;
        CHECK_MSG(done == total, "progress stage ends short of its total: %s", line);
        CHECK_MSG(!strchr(line, '\033'), "escape codes in non-terminal progress: %s", line);
    }
    return finals;
}

static void test_progress(void) {
    char a[4096];
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/p.kiln --threads 1 --progress", tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK_MSG(check_progress_final(err_text) >= 2, "no progress lines: %s", err_text);
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/p.kiln --method insert --progress", tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK_MSG(check_progress_final(err_text) >= 2, "no progress lines: %s", err_text);
}

/* --, -k3, unambiguous long prefixes, help CMD, bare kiln, --version. */
static void test_conventions(void) {
    char a[4096];
    static char ref[sizeof out_text];
    snprintf(a, sizeof a, "search %s/i.kiln %s/q.fvecs -k 3", tmp, tmp);
    REQUIRE(run(a) == 0);
    snprintf(ref, sizeof ref, "%s", out_text);
    snprintf(a, sizeof a, "search %s/i.kiln %s/q.fvecs -k3", tmp, tmp);
    CHECK_MSG(run(a) == 0 && strcmp(out_text, ref) == 0, "-k3: %s", err_text);
    snprintf(a, sizeof a, "search -k3 -- %s/i.kiln %s/q.fvecs", tmp, tmp);
    CHECK_MSG(run(a) == 0 && strcmp(out_text, ref) == 0, "--: %s", err_text);
    snprintf(a, sizeof a, "search %s/i.kiln %s/q.fvecs --thr 1 --k=3", tmp, tmp);
    CHECK_MSG(run(a) == 0 && strcmp(out_text, ref) == 0, "--thr: %s", err_text);

    /* After --, a name starting with '-' is a file. */
    char p[700];
    snprintf(a, sizeof a, "cp %s/i.kiln %s/-dash.kiln", tmp, tmp);
    REQUIRE(system(a) == 0);
    const char *saved = kiln;
    char in_tmp[1024];
    snprintf(in_tmp, sizeof in_tmp, "cd %s && %s", tmp, saved);
    kiln = in_tmp;
    CHECK(run("check -- -dash.kiln") == 0 && strstr(out_text, "ok"));
    CHECK(run("check -dash.kiln") == 2 && strstr(err_text, "-dash.kiln"));
    kiln = saved;
    snprintf(p, sizeof p, "%s/-dash.kiln", tmp);
    unlink(p);

    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/e.kiln --ef-con 50 --method insert --json", tmp,
             tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "\"ef_construction\": 50"), "%s", err_text);
    /* --m is metric or method: a usage error naming both. */
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/e.kiln --me l2", tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, "--metric") && strstr(err_text, "--method") &&
          count_lines(err_text) == 1);

    CHECK(run("help build") == 0 && strstr(out_text, "usage: kiln build") &&
          !strstr(out_text, "usage: kiln search"));
    CHECK(run("help nosuch") == 2 && strstr(err_text, "nosuch"));
    CHECK(run("") == 2);
    CHECK_MSG(count_lines(err_text) < 20 && strstr(err_text, "kiln help"), "bare kiln: %s",
              err_text);
    CHECK(run("version") == 0);
    snprintf(ref, sizeof ref, "%s", out_text);
    CHECK(strncmp(ref, "kiln ", 5) == 0);
    CHECK(run("-V") == 0 && strcmp(out_text, ref) == 0);
    CHECK(run("--version") == 0 && strcmp(out_text, ref) == 0);
    CHECK(run("search --help") == 0 && strstr(out_text, "--json"));
}

/* A JSON string in text after key: true when it equals want exactly, with
 * the escapes written as JSON writes them. */
static bool json_has(const char *text, const char *key, const char *want) {
    char pat[1200];
    snprintf(pat, sizeof pat, "\"%s\": \"%s\"", key, want);
    return strstr(text, pat) != NULL;
}

static void test_json(void) {
    char a[4096];
    /* A path with a quote and a backslash is escaped in the JSON summary. */
    snprintf(a, sizeof a, "build %s/b.fvecs -o '%s/we\"ird\\x.kiln' --method insert --json", tmp,
             tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    char want[1024];
    snprintf(want, sizeof want, "%s/we\\\"ird\\\\x.kiln", tmp);
    CHECK_MSG(json_has(out_text, "output", want), "json: %s", out_text);
    CHECK(count_lines(out_text) == 1);

    /* search --json: one object per query; with k above the index's count
     * the padding distances (+inf) are null, never inf. */
    snprintf(a, sizeof a,
             "generate -n 4 -d 8 -o %s/tiny.fvecs --queries 3 --queries-out %s/tq.fvecs", tmp, tmp);
    REQUIRE(run(a) == 0);
    snprintf(a, sizeof a, "build %s/tiny.fvecs -o %s/tiny.kiln --method insert", tmp, tmp);
    REQUIRE(run(a) == 0);
    snprintf(a, sizeof a, "search %s/tiny.kiln %s/tq.fvecs -k 6 --json", tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK(count_lines(out_text) == 3);
    CHECK(strstr(out_text, "{\"query\": 0, \"ids\": [") && strstr(out_text, "\"distances\": ["));
    CHECK_MSG(strstr(out_text, "null") && !strstr(out_text, "inf") && !strstr(out_text, "nan"),
              "json: %s", out_text);
}

/* Usage errors exit 2, data and runtime errors 1; every message is one line
 * that says the command once and names no C function. */
static void test_exit_codes(void) {
    /* The CLI's range for -M is the library's: its top builds. */
    char edge[4096];
    snprintf(edge, sizeof edge, "build %s/tiny.fvecs -o %s/edge.kiln -M 1024 --method insert", tmp,
             tmp);
    CHECK_MSG(run(edge) == 0, "-M 1024: %s", err_text);

    static const struct {
        const char *args; /* %1$s = the scratch folder */
        int rc;
        const char *needle;
    } cases[] = {
        {"build", 2, "usage"},
        {"build %1$s/b.fvecs -o %1$s/x.kiln -M 5000", 2, "[2, 1024]"},
        {"build %1$s/b.fvecs -o %1$s/x.kiln -M 99999999999", 2, "[2, 1024]"},
        {"build %1$s/b.fvecs -o %1$s/x.kiln --replicas 1", 2, "--replicas"},
        {"build %1$s/b.fvecs -o %1$s/x.kiln --knn-k 100000", 2, "--knn-k"},
        {"build %1$s/b.fvecs -o %1$s/x.kiln -t 99999", 2, "-t"},
        {"search %1$s/i.kiln %1$s/q.fvecs -k 0", 2, "-k"},
        {"eval %1$s/i.kiln %1$s/q.fvecs %1$s/gt.ivecs -t 4294967295", 2, "-t"},
        {"eval %1$s/i.kiln %1$s/q.fvecs %1$s/gt.ivecs --repeat 4294967295", 2, "--repeat"},
        {"eval %1$s/i.kiln %1$s/q.fvecs %1$s/gt.ivecs --ef 1,,2", 2, "--ef"},
        {"eval %1$s/i.kiln %1$s/q.fvecs %1$s/gt.ivecs --ef 5,", 2, "--ef"},
        {"eval %1$s/i.kiln %1$s/q.fvecs %1$s/gt.ivecs --ef ,5", 2, "--ef"},
        {"generate -n 0 -o %1$s/x.fvecs", 2, "-n"},
        {"generate -d 0 -o %1$s/x.fvecs", 2, "-d"},
        {"generate -n 10 -o %1$s/g.txt", 2, "g.txt"},
        {"generate -n 10 -o %1$s/g.fvecs --queries 5 --queries-out %1$s/q.txt", 2, "q.txt"},
        {"generate -n 4611686018427387904 -d 4 -o %1$s/x.fvecs", 2, "-n"},
        {"import %1$s/nothing.bin --dim 0 -o %1$s/x.kiln", 2, "--dim"},
        {"groundtruth %1$s/b.fvecs %1$s/q.fvecs -o %1$s/x.ivecs -k 0", 2, "-k"},
        {"build %1$s/nonexistent.fvecs -o %1$s/x.kiln", 1, "nonexistent.fvecs"},
        /* a bad --format is a usage error before the index loads */
        {"search %1$s/nonexistent.kiln %1$s/q.fvecs --format bogus", 2, "--format"},
        {"build %1$s/gt.ivecs -o %1$s/x.kiln", 1, "gt.ivecs"},
        /* The device method, the default where kiln has OpenCL, opens --device. */
        {KILN_TEST_OPENCL ? "build %1$s/b.fvecs -o %1$s/x.kiln --device 99:99"
                          : "build %1$s/b.fvecs -o %1$s/x.kiln --method device --device 99:99",
         1, KILN_TEST_OPENCL ? "99:99" : "without OpenCL"},
        {"groundtruth %1$s/b.fvecs %1$s/gt.ivecs -o %1$s/x.ivecs", 1, "gt.ivecs"},
        {"groundtruth %1$s/b.fvecs %1$s/tq.fvecs -o %1$s/x.ivecs", 1, "tq.fvecs"},
        {"search %1$s/i.kiln %1$s/tq.fvecs", 1, "tq.fvecs"},
        {"eval %1$s/i.kiln %1$s/q.fvecs %1$s/b.fvecs", 1, "b.fvecs"},
        {"eval %1$s/i.kiln %1$s/q.fvecs %1$s/nonexistent.ivecs", 1, "nonexistent.ivecs"},
        {"import %1$s/b.fvecs --dim 16 -o %1$s/x.kiln", 1, "b.fvecs"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char a[4096], cmd[64];
        snprintf(a, sizeof a, cases[i].args, tmp);
        int rc = run(a);
        CHECK_MSG(rc == cases[i].rc, "kiln %s: exit %d, want %d (%s)", a, rc, cases[i].rc,
                  err_text);
        CHECK_MSG(strstr(err_text, cases[i].needle) && count_lines(err_text) == 1,
                  "kiln %s: stderr lacks '%s' or is not one line: %s", a, cases[i].needle,
                  err_text);
        CHECK_MSG(!strstr(err_text, "kiln_") && !strstr(err_text, "()"),
                  "kiln %s: C name in message: %s", a, err_text);
        sscanf(a, "%63s", cmd);
        char twice[160];
        snprintf(twice, sizeof twice, "kiln %s: %s:", cmd, cmd);
        CHECK_MSG(!strstr(err_text, twice), "kiln %s: prefix said twice: %s", a, err_text);
        CHECK_MSG(!exists("x.kiln") && !exists("x.fvecs") && !exists("g.txt"),
                  "kiln %s left output behind", a);
        const char *outs[] = {"x.kiln", "x.fvecs", "g.txt"};
        for (size_t j = 0; j < 3; j++) {
            char p[700];
            snprintf(p, sizeof p, "%s/%s", tmp, outs[j]);
            unlink(p);
        }
    }
}

/* T2: a FIFO as input fails at once with a message, in every reader. */
static void test_fifo_input(void) {
    char a[4096], p[700];
    snprintf(p, sizeof p, "%s/fifo.fvecs", tmp);
    REQUIRE(mkfifo(p, 0600) == 0);
    const char *cmds[] = {"build %s -o %s/f.kiln", "info %s", "check %s", "search %s/i2.kiln %s",
                          "export %s -o %s/f.bin"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (i == 3)
            snprintf(a, sizeof a, cmds[i], tmp, p);
        else
            snprintf(a, sizeof a, cmds[i], p, tmp);
        int rc = run_sh("exec timeout 20", a);
        CHECK_MSG(rc == 1 && strstr(err_text, "FIFO") && count_lines(err_text) == 1,
                  "kiln %s: exit %d (124 = hung), stderr: %s", a, rc, err_text);
    }
    unlink(p);
}

/* T10, U5: outputs are checked before the work: a missing folder, a
 * directory, an input, or two outputs naming one file. */
static void test_output_checks(void) {
    char a[4096];
    /* The input is bad too: the output's error comes first, so it was
     * checked before the input was read. */
    snprintf(a, sizeof a, "build %s/trunc-missing.fvecs -o %s/nosuch/i.kiln", tmp, tmp);
    CHECK(run(a) == 1);
    CHECK_MSG(strstr(err_text, "-o") && strstr(err_text, "nosuch") &&
                  strstr(err_text, "does not exist") && count_lines(err_text) == 1,
              "stderr: %s", err_text);
    snprintf(a, sizeof a, "generate -n 10 -d 4 -o %s/nosuch/b.fvecs", tmp);
    CHECK(run(a) == 1 && strstr(err_text, "nosuch"));
    snprintf(a, sizeof a, "search %s/i2.kiln %s/q.fvecs -o %s/nosuch/r.ivecs", tmp, tmp, tmp);
    CHECK(run(a) == 1 && strstr(err_text, "nosuch"));
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s", tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, "is a directory"));

    /* The output is an input: directly, through a symlink, through a hard
     * link. The dataset is untouched. */
    char c[4096];
    snprintf(c, sizeof c,
             "cp %s/b.fvecs %s/b.copy && ln -sf b.fvecs %s/b-link.kiln && ln -f %s/b.fvecs "
             "%s/b-hard.kiln",
             tmp, tmp, tmp, tmp, tmp);
    REQUIRE(system(c) == 0);
    const char *same[] = {"b.fvecs", "b-link.kiln", "b-hard.kiln"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(a, sizeof a, "build %s/b.fvecs -o %s/%s --method insert", tmp, tmp, same[i]);
        CHECK_MSG(run(a) == 2 && strstr(err_text, "same file as the input"), "-o %s: %s", same[i],
                  err_text);
    }
    CHECK(same_bytes("b.fvecs", "b.copy"));
    snprintf(a, sizeof a, "search %s/i2.kiln %s/q.fvecs --distances %s/q.fvecs", tmp, tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, "same file as the input"));
    snprintf(a, sizeof a, "export %s/i2.kiln -o %s/i2.kiln", tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, "same file as the input"));
    snprintf(a, sizeof a, "search %s/i2.kiln %s/q.fvecs -o %s/r.npy --distances %s/r.npy", tmp, tmp,
             tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, "name the same file") && !exists("r.npy"));
    CHECK(no_temp_files());
}

static uint32_t u32_at(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* U2: result files in the format their extension names. */
static void test_result_formats(void) {
    char a[4096], p[700];
    snprintf(a, sizeof a, "search %s/i2.kiln %s/q.fvecs -k 5 -o %s/r.npy --distances %s/d.npy", tmp,
             tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    uint8_t buf[256];
    snprintf(p, sizeof p, "%s/r.npy", tmp);
    FILE *f = fopen(p, "rb");
    size_t got = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[got] = 0;
    CHECK(got >= 128 && memcmp(buf, "\x93NUMPY", 6) == 0 && strstr((char *)buf + 10, "'<i8'") &&
          strstr((char *)buf + 10, "(50, 5)"));
    struct stat sb;
    CHECK(stat(p, &sb) == 0 && sb.st_size == 128 + 50 * 5 * 8);
    snprintf(p, sizeof p, "%s/d.npy", tmp);
    f = fopen(p, "rb");
    got = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[got] = 0;
    CHECK(got >= 128 && strstr((char *)buf + 10, "'<f4'"));
    snprintf(a, sizeof a, "search %s/i2.kiln %s/q.fvecs -k 5 -o %s/r.ibin --distances %s/d.fbin",
             tmp, tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    snprintf(p, sizeof p, "%s/r.ibin", tmp);
    f = fopen(p, "rb");
    got = f ? fread(buf, 1, 8, f) : 0;
    if (f)
        fclose(f);
    CHECK(got == 8 && u32_at(buf) == 50 && u32_at(buf + 4) == 5);
    /* big-ann's layout: the ids, then the distances, which are d.fbin's. */
    CHECK(stat(p, &sb) == 0 && sb.st_size == 8 + 50 * 5 * 4 * 2);
    {
        size_t rlen = 0, dlen = 0;
        char dpath[700];
        snprintf(dpath, sizeof dpath, "%s/d.fbin", tmp);
        uint8_t *r = read_file(p, &rlen), *dd = read_file(dpath, &dlen);
        CHECK_MSG(r && dd && rlen == 8 + 2000 && dlen == 8 + 1000 &&
                      memcmp(r + 8 + 1000, dd + 8, 1000) == 0,
                  "r.ibin %zu bytes, d.fbin %zu", rlen, dlen);
        free(r);
        free(dd);
    }
    /* The ibin ids are the ivecs ids. */
    snprintf(a, sizeof a, "search %s/i2.kiln %s/q.fvecs -k 5 -o %s/r5.ivecs", tmp, tmp, tmp);
    CHECK(run(a) == 0);
    snprintf(a, sizeof a, "eval %s/i2.kiln %s/q.fvecs %s/r.ibin -k 5 --ef 64 --json", tmp, tmp,
             tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "\"recall\": 1.0"), "%s%s", out_text, err_text);
    snprintf(a, sizeof a, "search %s/i2.kiln %s/q.fvecs -o %s/r.txt", tmp, tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, ".npy") && strstr(err_text, ".ibin") && !exists("r.txt"));
    snprintf(a, sizeof a, "search %s/i2.kiln %s/q.fvecs -o %s/r2.ivecs --distances %s/d.ivecs", tmp,
             tmp, tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, ".fvecs") && !exists("r2.ivecs"));
    snprintf(a, sizeof a, "groundtruth %s/b.fvecs %s/q.fvecs -k 5 -o %s/gt5.npy", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0 && exists("gt5.npy"), "%s", err_text);
    snprintf(a, sizeof a, "generate -n 10 -d 4 -o %s/g.u8bin", tmp);
    CHECK(run(a) == 2 && strstr(err_text, ".fvecs, .fbin or .npy") && !exists("g.u8bin"));
}

/* Exports i2.kiln as hnswlib NAME.bin, gives its first n elements the
 * labels labels[0..n), and imports that as NAME.kiln. */
static void import_relabelled(const char *name, const int64_t *labels, uint64_t n) {
    char a[4096], p[700];
    snprintf(a, sizeof a, "export %s/i2.kiln -o %s/%s.bin", tmp, tmp, name);
    REQUIRE(run(a) == 0);
    snprintf(p, sizeof p, "%s/%s.bin", tmp, name);
    FILE *f = fopen(p, "r+b");
    REQUIRE(f);
    uint8_t h[96];
    REQUIRE(fread(h, 1, sizeof h, f) == sizeof h);
    uint64_t count = 0, size_data = 0, label_offset = 0;
    memcpy(&count, h + 16, 8);
    memcpy(&size_data, h + 24, 8);
    memcpy(&label_offset, h + 32, 8);
    REQUIRE(n <= count);
    for (uint64_t i = 0; i < n; i++) {
        REQUIRE(fseek(f, (long)(96 + i * size_data + label_offset), SEEK_SET) == 0);
        REQUIRE(fwrite(&labels[i], 8, 1, f) == 1);
    }
    fclose(f);
    snprintf(a, sizeof a, "import %s/%s.bin -o %s/%s.kiln", tmp, name, tmp, name);
    REQUIRE(run(a) == 0);
}

/* T5: labels beyond int32 (an imported hnswlib file with such labels) are
 * refused for .ivecs and written whole to .npy. */
static void test_wide_labels(void) {
    char a[4096], p[700];
    const int64_t big[2] = {((int64_t)1 << 31) + 5, (int64_t)1 << 40};
    import_relabelled("wide", big, 2);
    /* The base rows as queries: rows 0 and 1 find their own nodes. */
    snprintf(a, sizeof a, "search %s/wide.kiln %s/b.fvecs -k 1 -o %s/w.ivecs", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 1 && strstr(err_text, "does not fit int32") && strstr(err_text, ".npy"),
              "%s", err_text);
    CHECK(!exists("w.ivecs"));
    snprintf(a, sizeof a, "search %s/wide.kiln %s/b.fvecs -k 1 -o %s/w.npy", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    snprintf(p, sizeof p, "%s/w.npy", tmp);
    FILE *f = fopen(p, "rb");
    int64_t ids[2] = {0, 0};
    CHECK(f && fseek(f, 128, SEEK_SET) == 0 && fread(ids, 8, 2, f) == 2);
    if (f)
        fclose(f);
    CHECK_MSG(ids[0] == big[0] && ids[1] == big[1], "ids %lld %lld", (long long)ids[0],
              (long long)ids[1]);
}

/* T11: outputs go through a real 1 MiB stdio buffer (setvbuf with a NULL
 * buffer gave glibc's 4 KiB): exporting a 0.6 MB index takes a handful of
 * write calls, not one per 4 KiB. */
static void test_write_buffer(void) {
    if (system("command -v strace >/dev/null 2>&1") != 0) {
        SKIP_PART("strace is not installed: the write-call count is not checked");
        return;
    }
    char a[4096], log[700];
    snprintf(log, sizeof log, "%s/strace.log", tmp);
    /* LeakSanitizer cannot run under ptrace: off for this one run. */
    snprintf(a, sizeof a,
             "ASAN_OPTIONS=detect_leaks=0 strace -f -e trace=write -o %s %s export %s/i2.kiln -o "
             "%s/wb.bin",
             log, kiln, tmp, tmp);
    CHECK_MSG(system(a) == 0, "%s", a);
    struct stat sb;
    char p[700];
    snprintf(p, sizeof p, "%s/wb.bin", tmp);
    CHECK(stat(p, &sb) == 0 && sb.st_size > 400000);
    FILE *f = fopen(log, "r");
    size_t writes = 0;
    char line[512];
    while (f && fgets(line, sizeof line, f))
        writes += strstr(line, "write(") != NULL;
    if (f)
        fclose(f);
    CHECK_MSG(writes > 0 && writes < 20, "%zu write calls for a %lld-byte file", writes,
              (long long)sb.st_size);
}

/* U8: eval on an index with labels of its own refuses ground truth whose
 * ids cannot be those labels, instead of a silent recall of 0. */
static void test_custom_labels(void) {
    char a[4096];
    static int64_t labels[3000];
    for (uint64_t i = 0; i < 3000; i++)
        labels[i] = (int64_t)i + 1000000;
    import_relabelled("lab", labels, 3000);
    snprintf(a, sizeof a, "eval %s/lab.kiln %s/q.fvecs %s/gt.ivecs --ef 64", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 1 && strstr(err_text, "labels of its own (1000000..1002999)") &&
                  count_lines(err_text) == 1,
              "%s", err_text);
    /* Row-number labels (the default) give no note. */
    snprintf(a, sizeof a, "eval %s/i2.kiln %s/q.fvecs %s/gt.ivecs --ef 64", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0 && !strstr(err_text, "labels of its own"), "%s", err_text);
}

/* T7: with two outputs, a failure writing the second (the file size limit)
 * replaces neither. */
static void test_outputs_together(void) {
    char a[4096];
    REQUIRE(write_text("gb.fvecs", "old base") && write_text("gq.fvecs", "old queries"));
    snprintf(a, sizeof a,
             "generate -n 10 -d 16 -o %s/gb.fvecs --queries 2000 --queries-out %s/gq.fvecs", tmp,
             tmp);
    CHECK(run_sh("trap '' XFSZ; ulimit -f 64; exec", a) == 1);
    CHECK_MSG(strstr(err_text, "gq.fvecs") && count_lines(err_text) == 1, "%s", err_text);
    CHECK(file_is("gb.fvecs", "old base") && file_is("gq.fvecs", "old queries"));
    CHECK(no_temp_files());
    CHECK(run(a) == 0 && !file_is("gb.fvecs", "old base"));
}

/* T8: a build killed while writing (SIGXFSZ from the size limit) leaves no
 * temporary; a dead process's stale temporary goes at the next build. */
static void test_killed_and_stale(void) {
    char a[4096], p[700];
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/killed.kiln --method insert", tmp, tmp);
    CHECK(run_sh("ulimit -c 0; ulimit -f 64; exec", a) == 128);
    CHECK(!exists("killed.kiln") && no_temp_files());
    pid_t dead = fork();
    REQUIRE(dead >= 0);
    if (dead == 0)
        _exit(0);
    REQUIRE(waitpid(dead, NULL, 0) == dead);
    snprintf(p, sizeof p, ".killed.kiln.kiln-tmp.%ld.Zz9Zz9", (long)dead);
    REQUIRE(write_text(p, "left by a killed run"));
    CHECK(!no_temp_files());
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK(exists("killed.kiln") && no_temp_files());
}

/* T9: modes follow the umask or the replaced file; a symlink output is
 * written through. */
static void test_modes_links(void) {
    char a[4096];
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/m.kiln --method insert", tmp, tmp);
    CHECK(run_sh("umask 077; exec", a) == 0 && mode_of("m.kiln") == 0600);
    char p[700];
    snprintf(p, sizeof p, "%s/m.kiln", tmp);
    REQUIRE(chmod(p, 0640) == 0);
    CHECK(run_sh("umask 000; exec", a) == 0 && mode_of("m.kiln") == 0640);
    snprintf(p, sizeof p, "%s/m-link.kiln", tmp);
    REQUIRE(symlink("m.kiln", p) == 0);
    REQUIRE(write_text("m.kiln", "old"));
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/m-link.kiln --method insert", tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    struct stat sb;
    CHECK(lstat(p, &sb) == 0 && S_ISLNK(sb.st_mode));
    snprintf(a, sizeof a, "check %s/m.kiln", tmp);
    CHECK(run(a) == 0);
}

static void test_bad_input(void) {
    char a[4096], p[700];
    /* A truncated fvecs file: one line naming it, non-zero exit, no index. */
    snprintf(p, sizeof p, "%s/trunc.fvecs", tmp);
    FILE *f = fopen(p, "wb");
    REQUIRE(f);
    int32_t dim = 4;
    float v[4] = {1, 2, 3, 4};
    fwrite(&dim, 4, 1, f);
    fwrite(v, 4, 4, f);
    fwrite(&dim, 4, 1, f);
    fwrite(v, 4, 2, f);
    fclose(f);
    snprintf(a, sizeof a, "build %s -o %s/bad.kiln", p, tmp);
    CHECK(run(a) == 1);
    CHECK_MSG(strstr(err_text, "trunc.fvecs") && count_lines(err_text) == 1, "stderr: %s",
              err_text);
    CHECK(!exists("bad.kiln"));

    snprintf(p, sizeof p, "%s/data.bin", tmp);
    f = fopen(p, "wb");
    REQUIRE(f);
    fwrite(v, 4, 4, f);
    fclose(f);
    snprintf(a, sizeof a, "build %s -o %s/bad.kiln", p, tmp);
    CHECK(run(a) != 0 && strstr(err_text, "--format"));
    CHECK(!exists("bad.kiln"));

    /* No OpenCL platform at all, or a kiln built without OpenCL: the device
     * method says how to get one and leaves nothing behind; --method insert
     * still works. */
    char env_kiln[1024];
    const char *saved = kiln;
    snprintf(env_kiln, sizeof env_kiln, "OCL_ICD_VENDORS=%s/no-vendors %s", tmp, saved);
    kiln = env_kiln;
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/nodev.kiln --method device", tmp, tmp);
    CHECK(run(a) == 1);
    CHECK_MSG(strstr(err_text, "pocl-opencl-icd") && count_lines(err_text) == 1, "stderr: %s",
              err_text);
    if (!KILN_TEST_OPENCL)
        CHECK_MSG(strstr(err_text, "built without OpenCL"), "stderr: %s", err_text);
    CHECK(!exists("nodev.kiln"));
    CHECK(run("devices") == 1 && strstr(err_text, "pocl-opencl-icd"));
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/nodev.kiln --method insert", tmp, tmp);
    CHECK_MSG(run(a) == 0, "%s", err_text);
    CHECK(exists("nodev.kiln"));
    kiln = saved;

    snprintf(a, sizeof a, "check %s/nonexistent.kiln", tmp);
    CHECK(run(a) == 1 && strstr(err_text, "nonexistent.kiln"));

    /* A corrupted vector is refused by check and by search --verify; a plain
     * search maps the index and verifies only what bounds its reads
     * (docs/FORMAT.md, "Opening: mapping and what is verified"). */
    snprintf(p, sizeof p, "%s/i.kiln", tmp);
    f = fopen(p, "r+b");
    REQUIRE(f);
    fseek(f, 4096, SEEK_SET);
    int c = fgetc(f);
    fseek(f, 4096, SEEK_SET);
    fputc(c ^ 0x5a, f);
    fclose(f);
    snprintf(a, sizeof a, "check %s", p);
    CHECK(run(a) == 1 && strstr(err_text, "checksum") && count_lines(err_text) == 1);
    snprintf(a, sizeof a, "search %s %s/q.fvecs --verify -o %s/res2.ivecs", p, tmp, tmp);
    CHECK(run(a) == 1 && strstr(err_text, "checksum mismatch in section VECTORS") &&
          !exists("res2.ivecs"));
    snprintf(a, sizeof a, "search %s %s/q.fvecs -o %s/res2.ivecs", p, tmp, tmp);
    CHECK_MSG(run(a) == 0 && exists("res2.ivecs"), "%s", err_text);

    /* Dimension mismatch between queries and index. */
    snprintf(a, sizeof a, "search %s/i2.kiln %s/trunc.fvecs", tmp, tmp);
    CHECK(run(a) != 0);
    CHECK(no_temp_files());
}

#if !defined(__SANITIZE_ADDRESS__)
/* run() under `ulimit -v mb MB` in a subshell, with 16 MB thread stacks so
 * that what fits does not depend on the machine's stack limit. */
static int run_limited(unsigned mb, const char *args) {
    char cmd[8192], o[600], e[600];
    snprintf(o, sizeof o, "%s/stdout.txt", tmp);
    snprintf(e, sizeof e, "%s/stderr.txt", tmp);
    snprintf(cmd, sizeof cmd, "(ulimit -v %u && OMP_STACKSIZE=16M exec %s %s) >%s 2>%s </dev/null",
             mb * 1024, kiln, args, o, e);
    int st = system(cmd);
    slurp(o, out_text, sizeof out_text);
    slurp(e, err_text, sizeof err_text);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}
#endif

/* Too small an address-space limit is named as the cause, on one line, not
 * reported as a missing OpenCL platform or a libgomp abort. ASan reserves
 * terabytes of shadow memory, so its builds cannot run under ulimit -v. */
static void test_memory_limits(void) {
#if defined(__SANITIZE_ADDRESS__)
    fprintf(stderr, "note: ASan build, ulimit -v checks skipped\n");
#else
    char a[4096];
    static const unsigned mbs[] = {128, 256};
    /* Without OpenCL there is no runtime to start: devices says so instead. */
    for (size_t i = 0; KILN_TEST_OPENCL && i < 2; i++) {
        char want[64];
        snprintf(want, sizeof want, "the %u MB address-space limit (ulimit -v)", mbs[i]);
        const int rc = run_limited(mbs[i], "devices");
        if (rc == 0)
            continue; /* an OpenCL runtime small enough to start: nothing to report */
        CHECK_MSG(rc == 1 && strstr(err_text, want) && !strstr(err_text, "install") &&
                      count_lines(err_text) == 1,
                  "devices under %u MB: rc %d: %s", mbs[i], rc, err_text);
    }
    /* 64 threads of 16 MB stacks do not fit in 448 MB. */
    snprintf(a, sizeof a, "build %s/b.fvecs -o %s/lim.kiln --method insert --threads 64", tmp, tmp);
    const int rc = run_limited(448, a);
    CHECK_MSG(rc == 1 && strstr(err_text, "cannot start 64 threads") &&
                  strstr(err_text, "448 MB address-space limit (ulimit -v)") &&
                  !strstr(err_text, "libgomp") && count_lines(err_text) == 1,
              "build under 448 MB: rc %d: %s", rc, err_text);
    CHECK(!exists("lim.kiln"));
#endif
}

/* The ids of an .ivecs search result (count records of k). */
static bool read_ivecs_ids(const char *name, int32_t *ids, size_t count, uint32_t k) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", tmp, name);
    size_t len = 0;
    uint8_t *b = read_file(p, &len);
    bool ok = b && len == count * (4 + 4 * (size_t)k);
    for (size_t i = 0; ok && i < count; i++) {
        int32_t d;
        memcpy(&d, b + i * (4 + 4 * k), 4);
        ok = d == (int32_t)k;
        memcpy(ids + i * k, b + i * (4 + 4 * k) + 4, 4 * (size_t)k);
    }
    free(b);
    return ok;
}

/* kiln add, delete and update (graph/hnsw_live.c): in place, atomically, or
 * to -o; labels as text and as .npy (1-D); their refusals leave the index as
 * it was. */
static void test_live_commands(void) {
    char a[4096], text[4096] = "";
    snprintf(a, sizeof a,
             "generate -n 1000 -d 8 --clusters 4 --seed 5 -o %s/lb.fvecs --queries 100 "
             "--queries-out %s/lq.fvecs",
             tmp, tmp);
    REQUIRE(run(a) == 0);
    snprintf(a, sizeof a, "build %s/lb.fvecs --method insert -o %s/l.kiln --threads 1", tmp, tmp);
    REQUIRE(run(a) == 0);
    for (int i = 0; i < 100; i++) /* every tenth row */
        snprintf(text + strlen(text), sizeof text - strlen(text), "%d\n", i * 10);
    REQUIRE(write_text("dl.txt", text));
    snprintf(a, sizeof a, "delete %s/l.kiln %s/dl.txt", tmp, tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "1000 before, 900 now"), "%s%s", out_text, err_text);
    snprintf(a, sizeof a, "info %s/l.kiln", tmp);
    CHECK(run(a) == 0 && strstr(out_text, "format version:  2") &&
          strstr(out_text, "count:           900") && strstr(out_text, "free slots:      100"));
    snprintf(a, sizeof a, "check %s/l.kiln", tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "ok (900 vectors"), "%s%s", out_text, err_text);
    /* The deleted rows themselves find none of their labels. */
    snprintf(a, sizeof a, "search %s/l.kiln %s/lb.fvecs -k 10 --ef 64 -o %s/lr.ivecs", tmp, tmp,
             tmp);
    CHECK(run(a) == 0);
    int32_t *ids = malloc(1000 * 10 * sizeof *ids);
    REQUIRE(ids);
    CHECK(read_ivecs_ids("lr.ivecs", ids, 1000, 10));
    size_t bad = 0;
    for (size_t i = 0; i < 1000 * 10; i++)
        bad += ids[i] < 0 || ids[i] >= 1000 || ids[i] % 10 == 0;
    CHECK_MSG(bad == 0, "%zu results name a deleted or unknown label", bad);
    free(ids);

    /* add with 1-D .npy labels, to -o: INDEX is left alone. */
    static const char npy_head[] = "{'descr': '<i8', 'fortran_order': False, 'shape': (100,), }";
    uint8_t npy[128 + 800];
    memset(npy, ' ', 128);
    memcpy(npy, "\x93NUMPY\x01\x00", 8);
    npy[8] = 118; /* header length: 128 - 10 */
    npy[9] = 0;
    memcpy(npy + 10, npy_head, sizeof npy_head - 1);
    npy[127] = '\n';
    for (int64_t i = 0; i < 100; i++) {
        const int64_t label = 5000 + i;
        memcpy(npy + 128 + 8 * i, &label, 8);
    }
    char p[700];
    snprintf(p, sizeof p, "%s/ll.npy", tmp);
    REQUIRE(write_file(p, npy, sizeof npy));
    snprintf(a, sizeof a, "cp %s/l.kiln %s/l-before.kiln", tmp, tmp);
    REQUIRE(system(a) == 0);
    snprintf(a, sizeof a, "add %s/l.kiln %s/lq.fvecs --labels %s/ll.npy -o %s/l2.kiln", tmp, tmp,
             tmp, tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "900 before, 1000 now"), "%s%s", out_text, err_text);
    snprintf(a, sizeof a, "cmp -s %s/l.kiln %s/l-before.kiln", tmp, tmp);
    CHECK(system(a) == 0);
    snprintf(a, sizeof a, "info %s/l2.kiln", tmp);
    CHECK(run(a) == 0 && strstr(out_text, "count:           1000") &&
          strstr(out_text, "free slots:      0"));
    /* The same labels again: refused, naming one; the file is unchanged. */
    snprintf(a, sizeof a, "cp %s/l2.kiln %s/l-before.kiln", tmp, tmp);
    REQUIRE(system(a) == 0);
    snprintf(a, sizeof a, "add %s/l2.kiln %s/lq.fvecs --labels %s/ll.npy", tmp, tmp, tmp);
    CHECK(run(a) == 1 &&
          strstr(err_text, "kiln add: label 5000 (entry 0) is already in the index"));
    snprintf(a, sizeof a, "cmp -s %s/l2.kiln %s/l-before.kiln", tmp, tmp);
    CHECK(system(a) == 0);

    /* update in place: labels 5000.. get the first base rows' vectors. */
    snprintf(a, sizeof a, "update %s/l2.kiln %s/lb.fvecs --labels %s/ll.npy", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 1 && strstr(err_text, "holds 100 labels for the 1000 vectors"), "%s",
              err_text);
    snprintf(a, sizeof a, "update %s/l2.kiln %s/lq.fvecs --labels %s/ll.npy", tmp, tmp, tmp);
    CHECK_MSG(run(a) == 0 && strstr(out_text, "updated 100 vectors"), "%s%s", out_text, err_text);
    snprintf(a, sizeof a, "check %s/l2.kiln", tmp);
    CHECK(run(a) == 0);

    /* Refusals: usage (2) and data (1), naming the place. */
    snprintf(a, sizeof a, "update %s/l2.kiln %s/lq.fvecs", tmp, tmp);
    CHECK(run(a) == 2 && strstr(err_text, "--labels FILE is required"));
    REQUIRE(write_text("bad.txt", "7\n12x\n"));
    snprintf(a, sizeof a, "delete %s/l2.kiln %s/bad.txt", tmp, tmp);
    CHECK(run(a) == 1 && strstr(err_text, "bad.txt line 2: '12x' is not a decimal int64 label"));
    snprintf(a, sizeof a, "delete %s/l2.kiln %s/dl.txt", tmp, tmp);
    CHECK(run(a) == 1 && strstr(err_text, "label 0 (entry 0) is not in the index"));
    snprintf(a, sizeof a, "delete %s/l2.kiln %s/missing.txt", tmp, tmp);
    CHECK(run(a) == 1 && strstr(err_text, "missing.txt"));
    snprintf(a, sizeof a, "add %s/l2.kiln %s/lq.fvecs -o %s/lq.fvecs", tmp, tmp, tmp);
    CHECK(run(a) == 2);
    CHECK(no_temp_files());
}

int main(void) {
    kiln = getenv("KILN_CLI");
    if (!kiln)
        SKIP("KILN_CLI not set (run through ctest)");
    const char *t = getenv("KILN_TEST_TMP");
    snprintf(tmp, sizeof tmp, "%s/cli", t ? t : "/tmp/kiln-test");
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", tmp, tmp);
    REQUIRE(system(cmd) == 0);
    test_help();
    test_pipeline();
    test_shards();
    test_labels();
    test_storage();
    test_progress();
    test_conventions();
    test_json();
    test_exit_codes();
    test_fifo_input();
    test_output_checks();
    test_result_formats();
    test_wide_labels();
    test_custom_labels();
    test_write_buffer();
    test_outputs_together();
    test_killed_and_stale();
    test_modes_links();
    test_bad_input();
    test_memory_limits();
    test_live_commands();
    return check_report("test_cli");
}
