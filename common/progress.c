/* progress.c -- progress lines on stderr: "stage  done/total  rate/s  ETA".
 *
 * Design decisions:
 *  1. Shown when the context asks (ON) or, for AUTO, when stderr is a
 *     terminal, so logs and CI stay quiet unless --progress is given.
 *  2. Any thread may report; printing is rate-limited to ~4 lines a second
 *     by a compare-and-swap on the last print time, so workers never wait.
 *  3. On a terminal the line is redrawn with \r and erased to its end
 *     (\033[K), so a shorter line leaves nothing of the longer one before
 *     it; otherwise each print is its own line with no control codes, so a
 *     log shows the history.
 *  4. kiln_progress_end shows the total: ending a stage means its work is
 *     done, and callers add in batches (1024 nodes at a time in the merge)
 *     that need not divide the total, so the count of the last print would
 *     end short of it (49152/50000).
 */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "ctx_internal.h"
#include "progress_internal.h"

#define KILN_PROGRESS_INTERVAL 0.25 /* seconds between prints: readable, cheap */

double kiln_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

bool kiln_progress_enabled(const kiln_ctx *ctx) {
    if (!ctx)
        return false;
    if (ctx->progress == KILN_PROGRESS_ON)
        return true;
    if (ctx->progress == KILN_PROGRESS_OFF)
        return false;
    return isatty(STDERR_FILENO);
}

static void progress_print(const kiln_progress_bar *bar, uint64_t done, double now, bool last) {
    double el = now - bar->t_start;
    double rate = el > 0 ? (double)done / el : 0.0;
    double eta = (rate > 0 && bar->total > done) ? (double)(bar->total - done) / rate : 0.0;
    /* On a terminal each line starts at column 0 and erases what is left of
     * the line before it; only the final one moves on to the next line. */
    const char *start = bar->tty ? "\r\033[K" : "";
    const char *end = bar->tty && !last ? "" : "\n";
    if (last)
        fprintf(bar->out, "%s[kiln] %-12s %llu/%llu  %.0f/s  %.2fs%s", start, bar->stage,
                (unsigned long long)done, (unsigned long long)bar->total, rate, el, end);
    else
        fprintf(bar->out, "%s[kiln] %-12s %llu/%llu  %.0f/s  ETA %.0fs%s", start, bar->stage,
                (unsigned long long)done, (unsigned long long)bar->total, rate, eta, end);
    fflush(bar->out);
}

void kiln_progress_begin(kiln_progress_bar *bar, const kiln_ctx *ctx, const char *stage,
                         uint64_t total) {
    bar->stage = stage;
    bar->total = total;
    atomic_store(&bar->done, 0);
    bar->t_start = kiln_now();
    atomic_store(&bar->t_last, bar->t_start);
    bar->enabled = kiln_progress_enabled(ctx);
    bar->out = stderr;
    bar->tty = isatty(STDERR_FILENO);
}

void kiln_progress_add(kiln_progress_bar *bar, uint64_t n) {
    uint64_t done = atomic_fetch_add(&bar->done, n) + n;
    if (!bar->enabled)
        return;
    double now = kiln_now();
    double last = atomic_load(&bar->t_last);
    if (now - last < KILN_PROGRESS_INTERVAL)
        return;
    if (atomic_compare_exchange_strong(&bar->t_last, &last, now))
        progress_print(bar, done, now, false);
}

double kiln_progress_end(kiln_progress_bar *bar) {
    double now = kiln_now();
    uint64_t done = atomic_load(&bar->done);
    if (bar->enabled)
        progress_print(bar, done > bar->total ? done : bar->total, now, true);
    return now - bar->t_start;
}
