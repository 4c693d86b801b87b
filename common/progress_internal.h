/* progress_internal.h -- stage progress on stderr (stage, done/total, rate,
 * ETA), shown when the context says so (a terminal, or --progress), and a
 * record of seconds per stage for the end-of-build breakdown. */
#ifndef KILN_PROGRESS_INTERNAL_H
#define KILN_PROGRESS_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "kiln.h"

typedef struct kiln_progress_bar {
    const char *stage; /* static string */
    uint64_t total;
    _Atomic uint64_t done;
    double t_start;        /* kiln_now() at begin */
    _Atomic double t_last; /* last print */
    bool enabled;
    FILE *out; /* stderr, set by begin (tests point it elsewhere) */
    bool tty;  /* out is a terminal: redraw one line instead of appending lines */
} kiln_progress_bar;

/* Monotonic seconds. */
double kiln_now(void);
bool kiln_progress_enabled(const kiln_ctx *ctx);
void kiln_progress_begin(kiln_progress_bar *bar, const kiln_ctx *ctx, const char *stage,
                         uint64_t total);
/* Adds n to done; prints at most ~4 times a second. Thread-safe. */
void kiln_progress_add(kiln_progress_bar *bar, uint64_t n);
/* Ends the stage: prints its final line, which shows the total (the stage
 * is done, whatever remainder its batched adds left out); returns seconds
 * since begin. */
double kiln_progress_end(kiln_progress_bar *bar);

#endif /* KILN_PROGRESS_INTERNAL_H */
