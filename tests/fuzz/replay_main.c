/* replay_main.c -- runs a fuzz target without libFuzzer: each seed as given,
 * every file of its committed corpus (tests/fuzz/corpus/<target>/, grown by
 * libFuzzer runs and minimised with -merge=1), then KILN_FUZZ_ITERS (default
 * 2000) mutations of the seeds from a fixed PRNG seed, so failures
 * reproduce. A crash or sanitizer report fails ctest. */
#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static uint64_t replay_state = 0x6b696c6eULL; /* "kiln" */

static uint64_t replay_next(void) {
    replay_state ^= replay_state << 13;
    replay_state ^= replay_state >> 7;
    replay_state ^= replay_state << 17;
    return replay_state;
}

/* One of: flip bits, overwrite a 4- or 8-byte field with an extreme value,
 * truncate, or duplicate a range. Returns the new length (<= cap). */
static size_t mutate(uint8_t *buf, size_t len, size_t cap) {
    static const uint64_t extremes[] = {0,
                                        1,
                                        0x7f,
                                        0xff,
                                        0x7fffffff,
                                        0x80000000u,
                                        0xffffffffu,
                                        0xffffffffffffffffull,
                                        0x100000000ull};
    if (len == 0)
        return 0;
    size_t pos = replay_next() % len;
    switch (replay_next() % 5) {
    case 0: buf[pos] ^= (uint8_t)(1u << (replay_next() % 8)); break;
    case 1: {
        uint64_t v = extremes[replay_next() % (sizeof extremes / sizeof extremes[0])];
        size_t w = (replay_next() & 1) ? 8 : 4;
        for (size_t i = 0; i < w && pos + i < len; i++)
            buf[pos + i] = (uint8_t)(v >> (8 * i));
        break;
    }
    case 2: return pos;
    case 3: buf[pos] = (uint8_t)replay_next(); break;
    default: {
        size_t n = 1 + replay_next() % 64;
        if (len + n > cap)
            n = cap - len;
        size_t src = replay_next() % len;
        if (src + n > len)
            n = len - src;
        memmove(buf + pos + n, buf + pos, len - pos);
        memset(buf + pos, buf[src], n);
        return len + n;
    }
    }
    return len;
}

/* Runs the target on every regular file of dir (absent: none); returns the
 * count, or -1 when a file cannot be read. */
static long replay_corpus(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    long count = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) {
            count = -1;
            break;
        }
        fseek(f, 0, SEEK_END);
        const long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
        const bool ok = buf && len >= 0 && fread(buf, 1, (size_t)len, f) == (size_t)len;
        fclose(f);
        if (!ok) {
            free(buf);
            count = -1;
            break;
        }
        LLVMFuzzerTestOneInput(buf, (size_t)len);
        free(buf);
        count++;
    }
    closedir(d);
    return count;
}

int main(void) {
    const char *env = getenv("KILN_FUZZ_ITERS");
    long iters = env ? atol(env) : 2000;
    uint8_t *seeds[64];
    size_t lens[64];
    size_t nseeds = 0;
    while (nseeds < 64 && kiln_fuzz_seed(nseeds, &seeds[nseeds], &lens[nseeds]))
        nseeds++;
    if (nseeds == 0) {
        fprintf(stderr, "fuzz replay: target has no seeds\n");
        return 1;
    }
    /* KILN_FUZZ_DUMP_SEEDS=DIR writes the seeds as files, the starting corpus
     * of a libFuzzer run (which never calls kiln_fuzz_seed). */
    const char *dump = getenv("KILN_FUZZ_DUMP_SEEDS");
    for (size_t i = 0; dump && i < nseeds; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/seed-%02zu", dump, i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(seeds[i], 1, lens[i], f) != lens[i] || fclose(f) != 0) {
            fprintf(stderr, "fuzz replay: cannot write %s\n", path);
            return 1;
        }
    }
    for (size_t i = 0; i < nseeds; i++)
        LLVMFuzzerTestOneInput(seeds[i], lens[i]);
    const long corpus = replay_corpus("tests/fuzz/corpus/" KILN_FUZZ_NAME);
    if (corpus < 0) {
        fprintf(stderr, "fuzz replay: cannot read tests/fuzz/corpus/" KILN_FUZZ_NAME "\n");
        return 1;
    }
    for (long it = 0; it < iters; it++) {
        size_t s = replay_next() % nseeds;
        size_t cap = lens[s] + 256;
        uint8_t *buf = malloc(cap);
        if (!buf)
            return 1;
        memcpy(buf, seeds[s], lens[s]);
        size_t len = lens[s];
        int rounds = 1 + (int)(replay_next() % 4);
        for (int r = 0; r < rounds; r++)
            len = mutate(buf, len, cap);
        /* An exact-size copy, so ASan sees reads past the end. */
        uint8_t *exact = malloc(len ? len : 1);
        if (!exact)
            return 1;
        memcpy(exact, buf, len);
        LLVMFuzzerTestOneInput(exact, len);
        free(exact);
        free(buf);
    }
    for (size_t i = 0; i < nseeds; i++)
        free(seeds[i]);
    fprintf(stderr, "fuzz replay: %zu seeds, %ld corpus files, %ld mutations, no crash\n", nseeds,
            corpus, iters);
    return 0;
}
