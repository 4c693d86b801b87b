/* test_ctx.c -- the context: status names, version, and kiln_errmsg under
 * concurrent failures (a reader must only ever see whole messages). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "kiln.h"
#include "../common/ctx_internal.h"

enum { LONG_LEN = 900, SHORT_LEN = 12, WANT_EACH = 20000, MAX_ROUNDS = 20000000 };

static kiln_ctx *shared;
static atomic_bool stop;

/* Fails on the shared context over and over: the long writer with LONG_LEN
 * copies of a letter that changes every time (A..Z), the short one with
 * SHORT_LEN of a digit, so a reader that copies one message while another
 * is written sees a mix of characters. */
static void *writer(void *arg) {
    const bool is_long = arg != NULL;
    char msg[LONG_LEN + 1];
    const size_t len = is_long ? LONG_LEN : SHORT_LEN;
    for (unsigned i = 0; !atomic_load(&stop); i++) {
        memset(msg, is_long ? 'A' + (int)(i % 26) : '0' + (int)(i % 10), len);
        msg[len] = '\0';
        kiln_fail(shared, KILN_E_ARG, "%s", msg);
    }
    return NULL;
}

static bool whole(const char *m) {
    const size_t len = strlen(m);
    if (len == 0)
        return true;
    const char c = m[0];
    const bool is_long = c >= 'A' && c <= 'Z', is_short = c >= '0' && c <= '9';
    if (!((is_long && len == LONG_LEN) || (is_short && len == SHORT_LEN)))
        return false;
    for (size_t i = 0; i < len; i++)
        if (m[i] != c)
            return false;
    return true;
}

static void test_errmsg_concurrent(void) {
    CHECK(kiln_ctx_new(&shared) == KILN_OK);
    pthread_t w[2];
    pthread_create(&w[0], NULL, writer, (void *)1);
    pthread_create(&w[1], NULL, writer, NULL);
    /* Reads until both messages were seen many times (bounded in rounds). */
    long torn = 0, seen_a = 0, seen_b = 0, rounds = 0;
    for (; rounds < MAX_ROUNDS && (seen_a < WANT_EACH || seen_b < WANT_EACH); rounds++) {
        const char *m = kiln_errmsg(shared);
        if (!whole(m))
            torn++;
        else if (m[0] >= 'A')
            seen_a++;
        else if (m[0] != '\0')
            seen_b++;
    }
    atomic_store(&stop, true);
    pthread_join(w[0], NULL);
    pthread_join(w[1], NULL);
    CHECK_MSG(torn == 0, "%ld of %ld messages read were torn", torn, rounds);
    CHECK_MSG(seen_a > 0 && seen_b > 0, "saw %ld long and %ld short messages", seen_a, seen_b);
    kiln_ctx_free(shared);
}

static void test_basics(void) {
    CHECK(strcmp(kiln_status_str(KILN_E_FORMAT), "KILN_E_FORMAT") == 0);
    CHECK(kiln_version_number() == KILN_VERSION_NUMBER);
    CHECK(strcmp(kiln_errmsg(NULL), "no context") == 0);
    kiln_ctx *ctx = NULL;
    CHECK(kiln_ctx_new(&ctx) == KILN_OK);
    CHECK(strcmp(kiln_errmsg(ctx), "") == 0);
    CHECK(kiln_ctx_set_progress(ctx, (kiln_progress)99) == KILN_E_ARG);
    CHECK(strstr(kiln_errmsg(ctx), "99") != NULL);
    kiln_ctx_free(ctx);
    kiln_ctx_free(NULL);
}

/* An allocation that fails under ulimit -v names the limit (in a child, so
 * the limit does not outlive the check; not under ASan, which needs more
 * address space than any such limit leaves). */
static void test_nomem_names_limit(void) {
#if defined(__SANITIZE_ADDRESS__)
    fprintf(stderr, "note: ASan build, RLIMIT_AS check skipped\n");
#else
    kiln_ctx *ctx = NULL;
    void *p = NULL;
    CHECK(kiln_ctx_new(&ctx) == KILN_OK);
    CHECK_FAILS(ctx, kiln_alloc(ctx, SIZE_MAX / 2, "a test", &p), KILN_E_NOMEM,
                "out of memory allocating");
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        struct rlimit rl = {512ull << 20, 512ull << 20};
        setrlimit(RLIMIT_AS, &rl);
        kiln_status st = kiln_alloc(ctx, (size_t)1 << 32, "a test", &p);
        const char *m = kiln_errmsg(ctx);
        if (write(fds[1], m, strlen(m)) < 0)
            _exit(3);
        _exit(st == KILN_E_NOMEM ? 0 : 2);
    }
    close(fds[1]);
    char msg[1024] = {0};
    const ssize_t got = read(fds[0], msg, sizeof msg - 1);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK_MSG(got > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
                  strstr(msg, "under the 512 MB address-space limit (ulimit -v)"),
              "child: %s", msg);
    kiln_ctx_free(ctx);
#endif
}

int main(void) {
    test_basics();
    test_nomem_names_limit();
    test_errmsg_concurrent();
    return check_report("test_ctx");
}
