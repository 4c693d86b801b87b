/* test_progress.c -- progress lines (common/progress.c) as a terminal and as
 * a log see them: the final line of a stage shows its total even when the
 * caller reported in batches that leave a remainder, and a redraw on a
 * terminal erases what the longer line before it left behind. The bar's
 * stream and terminal mode are pointed at a scratch file here. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "../common/progress_internal.h"
#include "check.h"
#include "kiln.h"

#define TOTAL 50000u
#define BATCH 1024u /* as graph/merge.c reports: 48 batches leave 848 unreported */

/* Runs one stage to its end, forcing a print on every batch; returns what
 * was written (static buffer). */
static const char *run_stage(kiln_ctx *ctx, bool tty) {
    static char text[1 << 16];
    FILE *f = tmpfile();
    REQUIRE(f);
    kiln_progress_bar bar;
    kiln_progress_begin(&bar, ctx, "merge", TOTAL);
    REQUIRE(bar.enabled);
    bar.out = f;
    bar.tty = tty;
    for (unsigned i = 0; i + BATCH <= TOTAL; i += BATCH) {
        atomic_store(&bar.t_last, bar.t_start - 1.0); /* past the rate limit */
        kiln_progress_add(&bar, BATCH);
    }
    kiln_progress_end(&bar);
    rewind(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

static void test_terminal(kiln_ctx *ctx) {
    const char *t = run_stage(ctx, true);
    /* Every line drawn over another starts by erasing the rest of it. */
    size_t redraws = 0;
    for (const char *p = strchr(t, '\r'); p; p = strchr(p + 1, '\r')) {
        redraws++;
        CHECK_MSG(strncmp(p + 1, "\033[K", 3) == 0 || p[1] == '\0',
                  "redraw without erase-to-end-of-line at byte %zu", (size_t)(p - t));
    }
    CHECK(redraws >= TOTAL / BATCH);
    CHECK_MSG(t[strlen(t) - 1] == '\n', "the final line does not end the line");
    const char *last = strrchr(t, '\r');
    char want[64];
    snprintf(want, sizeof want, "%u/%u", TOTAL, TOTAL);
    CHECK_MSG(last && strstr(last, want) && !strstr(last, "ETA"), "final line: %s",
              last ? last + 1 : t);
}

static void test_log(kiln_ctx *ctx) {
    const char *t = run_stage(ctx, false);
    CHECK_MSG(!strchr(t, '\r') && !strchr(t, '\033'), "terminal codes in a log");
    size_t lines = 0;
    for (const char *p = t; *p; p++)
        lines += *p == '\n';
    CHECK(lines == TOTAL / BATCH + 1);
    char want[64];
    snprintf(want, sizeof want, "%u/%u", TOTAL, TOTAL);
    const char *end = t + strlen(t) - 1, *last = end;
    while (last > t && last[-1] != '\n')
        last--;
    CHECK_MSG(strstr(last, want) && !strstr(last, "ETA"), "final line: %s", last);
}

int main(void) {
    kiln_ctx *ctx;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    REQUIRE(kiln_ctx_set_progress(ctx, KILN_PROGRESS_ON) == KILN_OK);
    test_terminal(ctx);
    test_log(ctx);
    kiln_ctx_free(ctx);
    return check_report("test_progress");
}
