/* check.h -- test assertions that are never compiled out (unlike assert()
 * under NDEBUG). A failed CHECK prints file:line and the expression and
 * counts a failure; the test's main returns check_report(). */
#ifndef KILN_CHECK_H
#define KILN_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures;
static int check_count;
static int check_skipped __attribute__((unused)); /* parts skipped for want of data (SKIP_PART) */

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* A kiln call that must succeed; prints kiln_errmsg on failure. */
#define CHECK_OK(ctx, call)                                                                        \
    do {                                                                                           \
        kiln_status check_st_ = (call);                                                            \
        check_count++;                                                                             \
        if (check_st_ != KILN_OK) {                                                                \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #call,              \
                    kiln_status_str(check_st_), kiln_errmsg(ctx));                                 \
        }                                                                                          \
    } while (0)

/* A kiln call that must fail with `status` and a message containing `needle`. */
#define CHECK_FAILS(ctx, call, status, needle)                                                     \
    do {                                                                                           \
        kiln_status check_st_ = (call);                                                            \
        check_count++;                                                                             \
        if (check_st_ != (status) || !strstr(kiln_errmsg(ctx), (needle))) {                        \
            check_failures++;                                                                      \
            fprintf(stderr, "%s:%d: %s: want %s with \"%s\", got %s: \"%s\"\n", __FILE__,          \
                    __LINE__, #call, kiln_status_str(status), (needle),                            \
                    kiln_status_str(check_st_), kiln_errmsg(ctx));                                 \
        }                                                                                          \
    } while (0)

/* Fatal: stop the test when a precondition for the rest fails. */
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond);             \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* The command prefix that runs this build's programs: empty natively, the
 * emulator (qemu-aarch64 -L ...) in a cross build, set by ctest. */
static inline const char *check_emulator(void) {
    const char *e = getenv("KILN_TEST_EMULATOR");
    return e ? e : "";
}

/* Exit code 77 is ctest's SKIP_RETURN_CODE convention in this project. */
#define SKIP(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "SKIP: ");                                                                 \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        exit(77);                                                                                  \
    } while (0)

/* A part of a test that cannot run here (its dataset under ../shared/datasets
 * is absent): the rest runs, and a test with no failure but a skipped part
 * ends SKIPPED, never passed, so a run without the data cannot look green. */
#define SKIP_PART(...)                                                                             \
    do {                                                                                           \
        check_skipped++;                                                                           \
        fprintf(stderr, "SKIP part: ");                                                            \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
    } while (0)

static inline int check_report(const char *name) {
    fprintf(stderr, "%s: %d checks, %d failed, %d parts skipped\n", name, check_count,
            check_failures, check_skipped);
    return check_failures ? 1 : check_skipped ? 77 : 0;
}

#endif /* KILN_CHECK_H */
