/* test_afile.c -- atomic outputs and the input opener (common/afile.c):
 * FIFOs refused without blocking, modes from the umask or the replaced file,
 * symbolic links written through, several outputs committed together or not
 * at all, temporaries removed on SIGTERM/SIGINT and, when their writer is
 * gone, by the next open of the same output; large outputs (O_DIRECT
 * buffers, the page-cache tail, headers patched last) and work file
 * segments read back byte for byte, on disk and on tmpfs. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "file_util.h"
#include "kiln.h"
#include "../common/afile_internal.h"
#include "../common/workdir_internal.h"

static char dir[512];
static kiln_ctx *ctx;

/* dir/name, in one of 8 rotating buffers. */
static const char *at(const char *name) {
    static char p[8][768];
    static int i;
    i = (i + 1) % 8;
    snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
    return p[i];
}

/* Entries of dir whose name contains ".kiln-tmp." (afile's temporaries). */
static int count_temps(void) {
    DIR *d = opendir(dir);
    REQUIRE(d);
    int n = 0;
    const struct dirent *e;
    while ((e = readdir(d)))
        n += strstr(e->d_name, ".kiln-tmp.") != NULL;
    closedir(d);
    return n;
}

static bool content_is(const char *path, const char *want) {
    size_t n;
    uint8_t *buf = read_file(path, &n);
    bool same = buf && n == strlen(want) && memcmp(buf, want, n) == 0;
    free(buf);
    return same;
}

static mode_t mode_of(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? sb.st_mode & 07777 : (mode_t)-1;
}

static kiln_status write_text(const char *path, const char *text) {
    kiln_afile *af;
    kiln_status st = kiln_afile_open(ctx, path, &af);
    if (st)
        return st;
    kiln_afile_write(af, text, strlen(text));
    return kiln_afile_commit(af);
}

/* T2: a FIFO is refused at once; the child is killed by the alarm if open
 * blocks. */
static void test_fifo(void) {
    const char *fifo = at("pipe");
    unlink(fifo);
    REQUIRE(mkfifo(fifo, 0600) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        alarm(5);
        int fd;
        uint64_t size;
        kiln_status st = kiln_open_regular(ctx, fifo, &fd, &size);
        _exit(st == KILN_E_IO && strstr(kiln_errmsg(ctx), "FIFO") && fd == -1 ? 0 : 3);
    }
    int ws;
    REQUIRE(waitpid(pid, &ws, 0) == pid);
    CHECK_MSG(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "opening a FIFO: %s",
              WIFSIGNALED(ws) ? "blocked (killed by the alarm)" : "wrong status or message");
    /* A regular file still opens, in blocking mode. */
    REQUIRE(write_file(at("plain"), "abc", 3));
    int fd;
    uint64_t size;
    CHECK_OK(ctx, kiln_open_regular(ctx, at("plain"), &fd, &size));
    CHECK(size == 3 && (fcntl(fd, F_GETFL) & O_NONBLOCK) == 0);
    close(fd);
    CHECK_FAILS(ctx, kiln_open_regular(ctx, dir, &fd, &size), KILN_E_IO, "a directory");
    /* Nor is a FIFO an output. */
    CHECK_FAILS(ctx, write_text(fifo, "x"), KILN_E_IO, "not a regular file");
    unlink(fifo);
}

/* T9: new files honour the umask, replaced files keep their mode. */
static void test_modes(void) {
    const mode_t saved = umask(077);
    unlink(at("m1"));
    CHECK_OK(ctx, write_text(at("m1"), "one"));
    CHECK_MSG(mode_of(at("m1")) == 0600, "new file under umask 077: %o", mode_of(at("m1")));
    umask(022);
    unlink(at("m2"));
    CHECK_OK(ctx, write_text(at("m2"), "two"));
    CHECK_MSG(mode_of(at("m2")) == 0644, "new file under umask 022: %o", mode_of(at("m2")));
    /* chmod 600, rebuilt under a permissive umask: still 600. */
    REQUIRE(chmod(at("m1"), 0600) == 0);
    umask(0);
    CHECK_OK(ctx, write_text(at("m1"), "one again"));
    CHECK(content_is(at("m1"), "one again"));
    CHECK_MSG(mode_of(at("m1")) == 0600, "replaced 600 file under umask 0: %o", mode_of(at("m1")));
    /* chmod 640, rebuilt under umask 077: still 640. */
    REQUIRE(chmod(at("m2"), 0640) == 0);
    umask(077);
    CHECK_OK(ctx, write_text(at("m2"), "two again"));
    CHECK_MSG(mode_of(at("m2")) == 0640, "replaced 640 file under umask 077: %o",
              mode_of(at("m2")));
    umask(saved);
}

/* T9: an output that is a symlink is written through to its target. */
static void test_symlink(void) {
    unlink(at("link"));
    REQUIRE(write_file(at("real"), "old", 3));
    REQUIRE(chmod(at("real"), 0640) == 0);
    REQUIRE(symlink("real", at("link")) == 0);
    CHECK_OK(ctx, write_text(at("link"), "new"));
    struct stat sb;
    CHECK(lstat(at("link"), &sb) == 0 && S_ISLNK(sb.st_mode));
    CHECK(content_is(at("real"), "new") && mode_of(at("real")) == 0640);
    CHECK(count_temps() == 0);
    /* A dangling link is refused, and creates nothing. */
    unlink(at("dangling"));
    REQUIRE(symlink("missing", at("dangling")) == 0);
    CHECK_FAILS(ctx, write_text(at("dangling"), "x"), KILN_E_IO, "does not resolve");
    CHECK(access(at("missing"), F_OK) != 0);
    /* A directory is not replaced. */
    mkdir(at("adir"), 0755);
    CHECK_FAILS(ctx, write_text(at("adir"), "x"), KILN_E_IO, "a directory");
    CHECK(count_temps() == 0);
}

/* T7: two outputs, the second fails (file size limit): neither target is
 * replaced and no temporary remains. */
static void test_commit_all(void) {
    REQUIRE(write_file(at("first"), "old first", 9));
    REQUIRE(write_file(at("second"), "old second", 10));
    struct rlimit saved, lim;
    REQUIRE(getrlimit(RLIMIT_FSIZE, &saved) == 0);
    lim = saved;
    lim.rlim_cur = 64 << 10;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    kiln_afile *af[2];
    CHECK_OK(ctx, kiln_afile_open(ctx, at("first"), &af[0]));
    CHECK_OK(ctx, kiln_afile_open(ctx, at("second"), &af[1]));
    CHECK(count_temps() == 2);
    static char big[256 << 10];
    memset(big, 'x', sizeof big);
    kiln_afile_write(af[0], "new first", 9);
    kiln_afile_write(af[1], big, sizeof big);
    kiln_status st = kiln_afile_commit_all(af, 2);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &saved) == 0);
    CHECK_MSG(st == KILN_E_IO && strstr(kiln_errmsg(ctx), "second"), "%s", kiln_errmsg(ctx));
    CHECK(content_is(at("first"), "old first"));
    CHECK(content_is(at("second"), "old second"));
    CHECK(count_temps() == 0);
    /* Without the limit both are replaced. */
    CHECK_OK(ctx, kiln_afile_open(ctx, at("first"), &af[0]));
    CHECK_OK(ctx, kiln_afile_open(ctx, at("second"), &af[1]));
    kiln_afile_write(af[0], "new first", 9);
    kiln_afile_write(af[1], "new second", 10);
    CHECK_OK(ctx, kiln_afile_commit_all(af, 2));
    CHECK(content_is(at("first"), "new first") && content_is(at("second"), "new second"));
    CHECK(count_temps() == 0);
}

/* kiln_dataset_write_all: int64 .npy and .ibin, and all-or-nothing. */
static void test_dataset_outputs(void) {
    const int64_t ids[6] = {0, 1, (int64_t)1 << 40, -1, INT64_MIN, 5};
    const int32_t ids32[6] = {0, 1, 2, -1, 7, 5};
    const kiln_dataset_output outs[2] = {
        {at("ids.npy"), KILN_FORMAT_AUTO, KILN_DTYPE_I64, ids, 2, 3, NULL},
        {at("ids.ibin"), KILN_FORMAT_AUTO, KILN_DTYPE_I32, ids32, 2, 3, NULL}};
    CHECK_OK(ctx, kiln_dataset_write_all(ctx, outs, 2));
    size_t n;
    uint8_t *npy = read_file(at("ids.npy"), &n);
    REQUIRE(npy);
    CHECK(n == 128 + sizeof ids && memcmp(npy + 128, ids, sizeof ids) == 0);
    CHECK(strstr((const char *)npy + 10, "'descr': '<i8'") &&
          strstr((const char *)npy + 10, "'shape': (2, 3)"));
    free(npy);
    kiln_dataset *ds;
    CHECK_OK(ctx, kiln_dataset_open(ctx, at("ids.ibin"), KILN_FORMAT_AUTO, 0, &ds));
    int32_t back[6] = {0};
    CHECK(ds && kiln_dataset_count(ds) == 2 && kiln_dataset_dim(ds) == 3);
    CHECK_OK(ctx, kiln_dataset_read_i32(ds, 0, 2, back));
    CHECK(memcmp(back, ids32, sizeof back) == 0);
    kiln_dataset_free(ds);
    /* int64 fits no other format; the refusal touches neither file. */
    REQUIRE(write_file(at("keep.ivecs"), "old", 3));
    const kiln_dataset_output bad[2] = {
        {at("ids.npy"), KILN_FORMAT_AUTO, KILN_DTYPE_I32, ids32, 2, 3, NULL},
        {at("keep.ivecs"), KILN_FORMAT_AUTO, KILN_DTYPE_I64, ids, 2, 3, NULL}};
    CHECK_FAILS(ctx, kiln_dataset_write_all(ctx, bad, 2), KILN_E_ARG, "holds int32, not int64");
    /* One file named twice: refused before either is written. */
    const kiln_dataset_output twice[2] = {
        {at("keep.ivecs"), KILN_FORMAT_AUTO, KILN_DTYPE_I32, ids32, 2, 3, NULL},
        {at("keep.ivecs"), KILN_FORMAT_AUTO, KILN_DTYPE_I32, ids32, 2, 3, NULL}};
    CHECK_FAILS(ctx, kiln_dataset_write_all(ctx, twice, 2), KILN_E_ARG, "named twice");
    CHECK(content_is(at("keep.ivecs"), "old"));
    npy = read_file(at("ids.npy"), &n);
    CHECK(npy && strstr((const char *)npy + 10, "'descr': '<i8'"));
    free(npy);
    CHECK(count_temps() == 0);
}

/* T8: a writer killed by sig while its output is open leaves no temporary
 * and dies of sig (the default action is kept). */
static void check_killed(int sig) {
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        kiln_afile *af;
        if (kiln_afile_open(ctx, at("killed"), &af) != KILN_OK)
            _exit(3);
        kiln_afile_write(af, "partial", 7);
        if (count_temps() != 1)
            _exit(4);
        raise(sig);
        _exit(5);
    }
    int ws;
    REQUIRE(waitpid(pid, &ws, 0) == pid);
    CHECK_MSG(WIFSIGNALED(ws) && WTERMSIG(ws) == sig, "signal %d: child status 0x%x", sig, ws);
    CHECK_MSG(count_temps() == 0, "signal %d left a temporary", sig);
    CHECK(access(at("killed"), F_OK) != 0);
}

/* T8: stale temporaries of dead writers go at the next open of the same
 * output; a live process's (or a locked one's) stay. */
static void test_stale(void) {
    pid_t dead = fork();
    REQUIRE(dead >= 0);
    if (dead == 0)
        _exit(0);
    REQUIRE(waitpid(dead, NULL, 0) == dead);
    char name[128];
    snprintf(name, sizeof name, ".out.bin.kiln-tmp.%ld.AbC123", (long)dead);
    const char *stale = at(name);
    REQUIRE(write_file(stale, "stale", 5));
    snprintf(name, sizeof name, ".out.bin.kiln-tmp.%ld.LIVE00", (long)getppid());
    const char *live = at(name);
    REQUIRE(write_file(live, "live", 4));
    snprintf(name, sizeof name, ".out.bin.kiln-tmp.%ld.Locked", (long)dead);
    const char *locked = at(name);
    REQUIRE(write_file(locked, "locked", 6));
    int lfd = open(locked, O_RDONLY);
    REQUIRE(lfd >= 0 && flock(lfd, LOCK_EX) == 0);
    snprintf(name, sizeof name, ".other.bin.kiln-tmp.%ld.AbC123", (long)dead);
    const char *other = at(name);
    REQUIRE(write_file(other, "other output", 12));

    CHECK_OK(ctx, write_text(at("out.bin"), "fresh"));
    CHECK_MSG(access(stale, F_OK) != 0, "the dead writer's temporary is still there");
    CHECK_MSG(access(live, F_OK) == 0, "a live process's temporary was removed");
    CHECK_MSG(access(locked, F_OK) == 0, "a locked temporary was removed");
    CHECK_MSG(access(other, F_OK) == 0, "another output's temporary was removed");
    close(lfd);
    unlink(live);
    unlink(locked);
    unlink(other);
}

/* A byte pattern that no shift of itself matches. */
static void pattern(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

/* T8: writes in odd pieces across several buffers (the full ones go out
 * with O_DIRECT where the file system takes it), pads, patches bytes at the
 * start (already on disk) and near the end (still buffered), and reads the
 * file back byte for byte; in `folder` (the test dir, or tmpfs). */
static void check_large(const char *folder) {
    char path[768];
    snprintf(path, sizeof path, "%s/large.bin", folder);
    const size_t total = (3u << 20) + 12345;
    uint8_t *want = malloc(total + 4096), *patch = malloc(8192);
    REQUIRE(want && patch);
    pattern(want, total, 7);
    pattern(patch, 8192, 11);
    kiln_afile *af;
    REQUIRE(kiln_afile_open(ctx, path, &af) == KILN_OK);
    static const size_t pieces[] = {1, 4095, (1u << 20) + 7, 3, 65536, 999999};
    size_t at = 0;
    for (size_t i = 0; at < total; i++) {
        size_t n = pieces[i % 6];
        n = n < total - at ? n : total - at;
        CHECK(kiln_afile_write(af, want + at, n) == KILN_OK);
        at += n;
    }
    CHECK(kiln_afile_pad(af, 4096) == KILN_OK);
    const size_t padded = kiln_afile_offset(af);
    CHECK(padded % 4096 == 0 && padded >= total && padded < total + 4096);
    memset(want + total, 0, padded - total);
    CHECK(kiln_afile_pwrite(af, patch + 100, 300, padded - 500) == KILN_OK);
    memcpy(want + padded - 500, patch + 100, 300);
    CHECK(kiln_afile_pwrite(af, patch, 5000, 17) == KILN_OK);
    memcpy(want + 17, patch, 5000);
    CHECK_MSG(kiln_afile_pwrite(af, patch, 10, padded - 5) != KILN_OK,
              "a pwrite past the end was taken");
    kiln_afile_abort(af);
    CHECK_MSG(access(path, F_OK) != 0, "an aborted output exists");

    REQUIRE(kiln_afile_open(ctx, path, &af) == KILN_OK);
    CHECK(kiln_afile_write(af, want, 1u << 20) == KILN_OK);
    CHECK(kiln_afile_write(af, want + (1u << 20), padded - (1u << 20)) == KILN_OK);
    CHECK(kiln_afile_pwrite(af, patch, 5000, 17) == KILN_OK);
    CHECK(kiln_afile_pwrite(af, patch + 100, 300, padded - 500) == KILN_OK);
    CHECK(kiln_afile_commit(af) == KILN_OK);
    size_t got_n;
    uint8_t *got = read_file(path, &got_n);
    CHECK_MSG(got && got_n == padded && memcmp(got, want, padded) == 0,
              "%s: %zu bytes read back, %zu written, or different bytes", path, got_n, padded);
    free(got);
    unlink(path);

    /* Work file segments: empty, one byte, larger than the bounce buffer,
     * and ones that share a 4 KiB block with their neighbours. */
    char wdpath[800];
    snprintf(wdpath, sizeof wdpath, "%s/wd", folder);
    kiln_workdir *wd;
    REQUIRE(kiln_workdir_open(ctx, wdpath, 42, "test", false, &wd) == KILN_OK);
    const size_t lens[] = {0, 1, (5u << 20) + 3, 100, 4096, 70000};
    kiln_work_seg segs[6];
    size_t off = 0;
    for (int i = 0; i < 6; i++) {
        segs[i].data = want + off % 1000;
        segs[i].len = lens[i] < total ? lens[i] : total - 1000;
        off += 333;
    }
    uint8_t *big = malloc(lens[2]);
    REQUIRE(big);
    pattern(big, lens[2], 3);
    segs[2].data = big;
    segs[2].len = lens[2];
    CHECK(kiln_workdir_put(wd, "segs", segs, 6) == KILN_OK);
    kiln_workfile *wf;
    CHECK(kiln_workfile_open(wd, "segs", 6, &wf) == KILN_OK);
    uint8_t *back = malloc(lens[2] + 1);
    REQUIRE(back);
    for (uint32_t i = 0; wf && i < 6; i++) {
        CHECK(kiln_workfile_seg_len(wf, i) == segs[i].len);
        CHECK(kiln_workfile_read(wf, i, back + 1) == KILN_OK); /* an unaligned buffer */
        CHECK_MSG(memcmp(back + 1, segs[i].data, segs[i].len) == 0, "%s: segment %u differs",
                  folder, i);
    }
    kiln_workfile_close(wf);
    CHECK(kiln_workdir_remove(wd) == KILN_OK); /* and closes it */
    free(back);
    free(big);
    free(want);
    free(patch);
}

static void test_large(void) {
    check_large(dir);
    char shm[64];
    snprintf(shm, sizeof shm, "/dev/shm/kiln-test-afile.%ld", (long)getpid());
    if (mkdir(shm, 0700) == 0) { /* tmpfs: O_DIRECT refused or taken, by kernel */
        check_large(shm);
        rmdir(shm);
    } else {
        printf("note: no /dev/shm here; the tmpfs pass did not run\n");
    }
}

int main(void) {
    const char *t = getenv("KILN_TEST_TMP");
    snprintf(dir, sizeof dir, "%s/afile", t ? t : "/tmp/kiln-test");
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", dir, dir);
    REQUIRE(system(cmd) == 0);
    /* The size-limit test wants EFBIG, not the signal; SIGINT and SIGTERM
     * start at their default (a background shell ignores SIGINT), so the
     * first open installs afile's handler. */
    signal(SIGXFSZ, SIG_IGN);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    test_fifo();
    test_modes();
    test_symlink();
    test_commit_all();
    test_dataset_outputs();
    check_killed(SIGTERM);
    check_killed(SIGINT);
    test_stale();
    test_large();
    kiln_ctx_free(ctx);
    return check_report("test_afile");
}
