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

static size_t count_lines(const char *s) {
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* No "*.tmp.*" files left in the scratch folder. */
static bool no_temp_files(void) {
    DIR *d = opendir(tmp);
    struct dirent *de;
    bool clean = true;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, ".tmp."))
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
        {"build %1$s/gt.ivecs -o %1$s/x.kiln", 1, "gt.ivecs"},
        {"build %1$s/b.fvecs -o %1$s/x.kiln --device 99:99", 1, "99:99"},
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

    /* A corrupted index is refused by check, search and info. */
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
    snprintf(a, sizeof a, "search %s %s/q.fvecs -o %s/res2.ivecs", p, tmp, tmp);
    CHECK(run(a) == 1 && !exists("res2.ivecs"));

    /* Dimension mismatch between queries and index. */
    snprintf(a, sizeof a, "search %s/i2.kiln %s/trunc.fvecs", tmp, tmp);
    CHECK(run(a) != 0);
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
    test_progress();
    test_conventions();
    test_json();
    test_exit_codes();
    test_bad_input();
    return check_report("test_cli");
}
