/* fuzz_util.h -- what every fuzz target needs around the reader it drives:
 * scratch file paths (removed at exit), one context for the process, and little-endian field access. Each target is
 * one translation unit, so these are static inline. */
#ifndef KILN_FUZZ_UTIL_H
#define KILN_FUZZ_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../file_util.h"
#include "../../graph/hnsw_internal.h"
#include "../../common/le_internal.h"
#include "kiln.h"

#define FUZZ_MAX_PATHS 4

static char fuzz_paths[FUZZ_MAX_PATHS][1024];

static inline void fuzz_cleanup(void) {
    for (int i = 0; i < FUZZ_MAX_PATHS; i++)
        if (fuzz_paths[i][0])
            unlink(fuzz_paths[i]);
}

/* A per-process scratch path "<$KILN_TEST_TMP or /tmp>/kiln_fuzz_<pid>.<what>",
 * the same for the same what; every path handed out is removed at exit. */
static inline const char *fuzz_path(const char *what) {
    static bool registered;
    char want[1024];
    const char *dir = getenv("KILN_TEST_TMP");
    if (!dir || !*dir)
        dir = "/tmp";
    int len = snprintf(want, sizeof want, "%s/kiln_fuzz_%ld.%s", dir, (long)getpid(), what);
    if (len <= 0 || (size_t)len >= sizeof want)
        snprintf(want, sizeof want, "/tmp/kiln_fuzz_%ld.%s", (long)getpid(), what);
    for (int i = 0; i < FUZZ_MAX_PATHS; i++) {
        if (strcmp(fuzz_paths[i], want) == 0)
            return fuzz_paths[i];
        if (!fuzz_paths[i][0]) {
            if (!registered) {
                atexit(fuzz_cleanup);
                registered = true;
            }
            mkdir(dir, 0755); /* the build folder exists; only its leaf may not */
            memcpy(fuzz_paths[i], want, sizeof want);
            return fuzz_paths[i];
        }
    }
    abort(); /* a target asked for more scratch files than FUZZ_MAX_PATHS */
}

/* One context for the whole process (fuzzers never free it). */
static inline kiln_ctx *fuzz_ctx(void) {
    static kiln_ctx *ctx;
    if (!ctx && kiln_ctx_new(&ctx) != KILN_OK)
        abort();
    return ctx;
}

/* Neighbours and beam for the one search per loaded index: enough to walk
 * several hops of a seed-sized graph. */
#define FUZZ_K 5
#define FUZZ_EF 16

/* One search for node 0's vector (zeros when empty): whatever a reader
 * accepted must be searchable without a crash. */
static inline void fuzz_search_once(const struct kiln_index *ix) {
    const size_t dim = kiln_index_dim(ix);
    float *q = calloc(dim ? dim : 1, sizeof *q);
    if (!q)
        abort();
    if (ix->count)
        memcpy(q, kiln_vector(ix, 0), dim * sizeof *q);
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    sp.k = FUZZ_K;
    sp.ef = FUZZ_EF;
    sp.threads = 1;
    int64_t labels[FUZZ_K];
    float dists[FUZZ_K];
    if (kiln_index_search(ix, q, 1, &sp, labels, dists) != KILN_OK)
        abort();
    free(q);
}

#endif /* KILN_FUZZ_UTIL_H */
