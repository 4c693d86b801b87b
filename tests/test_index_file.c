/* test_index_file.c -- the index file (graph/index_file.c, docs/FORMAT.md)
 * and CRC-32C (common/crc32c.c).
 *
 * What is checked:
 *  1. CRC-32C: the standard check value and RFC 3720 vectors, chaining, and
 *     the dispatched (SSE4.2) path equal to the slicing-by-8 path and to a
 *     bit-at-a-time reference on many lengths and alignments.
 *  2. Round trips of hand-made graphs (count 0, 1, small and larger, several
 *     levels, all three metrics): every field and array equal after load,
 *     info_read agreeing with the header, save leaving the index untouched,
 *     and files canonical (stale link slots do not reach the file; saving a
 *     loaded index gives the same bytes).
 *  3. Damaged files: a flipped byte in each section, the header and the
 *     table; bad magic; other versions; truncation at every 1/20 of the file;
 *     forged headers and tables with their CRCs recomputed (huge count, dim,
 *     M, bad offsets, unknown kinds, out-of-range links, levels and entry
 *     points). Each must fail with the right status and a message naming
 *     the file, never crash; under ASan a forged size that reached an
 *     allocator would abort the test.
 *  4. Atomic save: no temporary file left on success, nothing under the
 *     final name when the folder is missing or the graph is invalid.
 *  5. A real built index (siftsmall's first rows, or random data): loads,
 *     validates, searches exactly like the original, and two single-thread
 *     builds with the same seed give byte-identical files.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "file_util.h"
#include "kiln.h"
#include "../graph/hnsw_internal.h"
#include "../common/crc32c_internal.h"
#include "../common/rng_internal.h"

/* ==== Tunables ==== */

/* Rows of siftsmall (or random vectors) for the built-index test: enough for
 * a few levels at M = 8, small enough for two single-thread builds under
 * ASan in seconds. */
#define BUILT_ROWS    2000
#define BUILT_QUERIES 20

/* File layout facts the tests forge against (docs/FORMAT.md). */
#define HDR_BYTES         128
#define ENTRY_BYTES       32
#define OFF_VERSION       8
#define OFF_HEADER_BYTES  12
#define OFF_DIM           16
#define OFF_METRIC        20
#define OFF_M             24
#define OFF_M0            28
#define OFF_MAX_LEVEL     36
#define OFF_COUNT         40
#define OFF_ENTRY         48
#define OFF_SECTION_COUNT 52
#define OFF_FILE_BYTES    64
#define OFF_TABLE_CRC     72
#define OFF_CAPACITY      76
#define OFF_FREE_COUNT    84
#define OFF_HEADER_CRC    124

enum { VECTORS = 1, LABELS, LEVELS, LINKS0, UPPER };
static const char *const kind_names[] = {"?", "VECTORS", "LABELS", "LEVELS", "LINKS0", "UPPER"};

/* ==== Files and scratch ==== */

static char test_dir[4096];

static void make_test_dir(void) {
    const char *base = getenv("KILN_TEST_TMP");
    if (!base || !*base)
        base = "/tmp";
    char cmd[4200];
    snprintf(test_dir, sizeof test_dir, "%s/test_index_file", base);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", test_dir);
    REQUIRE(system(cmd) == 0);
}

static const char *tmp_path(const char *name) {
    static char buf[4][4200];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", test_dir, name);
    return p;
}

static uint8_t *slurp(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    REQUIRE(fp);
    REQUIRE(fseek(fp, 0, SEEK_END) == 0);
    const long n = ftell(fp);
    REQUIRE(n >= 0);
    rewind(fp);
    uint8_t *buf = malloc((size_t)n + 1);
    REQUIRE(buf);
    REQUIRE(fread(buf, 1, (size_t)n, fp) == (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static void spit(const char *path, const void *buf, size_t len) {
    FILE *fp = fopen(path, "wb");
    REQUIRE(fp);
    REQUIRE(fwrite(buf, 1, len, fp) == len);
    REQUIRE(fclose(fp) == 0);
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Entries of test_dir whose name contains ".kiln-tmp." (afile's temporaries). */
static int count_temp_files(void) {
    DIR *d = opendir(test_dir);
    REQUIRE(d);
    int n = 0;
    const struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".kiln-tmp."))
            n++;
    closedir(d);
    return n;
}

/* Table entry of the section of `kind` (the writer puts them in kind order). */
static uint8_t *entry_of(uint8_t *file, uint32_t kind) {
    uint8_t *e = file + HDR_BYTES + (size_t)(kind - 1) * ENTRY_BYTES;
    REQUIRE(kiln_get_u32le(e) == kind);
    return e;
}
static uint64_t sec_offset(uint8_t *file, uint32_t kind) {
    return kiln_get_u64le(entry_of(file, kind) + 8);
}
static uint64_t sec_length(uint8_t *file, uint32_t kind) {
    return kiln_get_u64le(entry_of(file, kind) + 16);
}

/* Recomputes every section CRC (where the section lies inside len), the
 * table CRC and the header CRC, so a forged field gets past the checksums
 * and reaches the checks behind them. */
static void refresh_crcs(uint8_t *file, size_t len) {
    uint32_t sections = kiln_get_u32le(file + OFF_SECTION_COUNT);
    if (sections > 64)
        sections = 64;
    const size_t table_len = (size_t)sections * ENTRY_BYTES;
    if (HDR_BYTES + table_len <= len) {
        for (uint32_t i = 0; i < sections; i++) {
            uint8_t *e = file + HDR_BYTES + (size_t)i * ENTRY_BYTES;
            const uint64_t off = kiln_get_u64le(e + 8), n = kiln_get_u64le(e + 16);
            if (off <= len && n <= len - off)
                kiln_put_u32le(e + 24, kiln_crc32c(0, file + off, (size_t)n));
        }
        kiln_put_u32le(file + OFF_TABLE_CRC, kiln_crc32c(0, file + HDR_BYTES, table_len));
    }
    kiln_put_u32le(file + OFF_HEADER_CRC, kiln_crc32c(0, file, OFF_HEADER_CRC));
}

/* Makes a version 2 file with no free slot (FREE empty, the table's last
 * entry) a version 1 file of the same length: version, section count, the
 * version 2 header fields zeroed, CRCs recomputed. */
static void to_version1(uint8_t *file, size_t len) {
    kiln_put_u32le(file + OFF_VERSION, 1);
    kiln_put_u32le(file + OFF_SECTION_COUNT, 5);
    memset(file + OFF_CAPACITY, 0, 16);
    memset(file + HDR_BYTES + 5 * ENTRY_BYTES, 0, ENTRY_BYTES);
    refresh_crcs(file, len);
}

/* ==== Hand-made graphs ==== */

/* Picks n distinct ids from pool (size m) other than self into out. */
static uint32_t pick_links(kiln_rng *rng, const uint32_t *pool, uint32_t m, uint32_t self,
                           uint32_t n, uint32_t *out) {
    uint32_t got = 0;
    for (uint32_t tries = 0; got < n && tries < 20 * n + 20; tries++) {
        const uint32_t v = pool[kiln_rng_below(rng, m)];
        int dup = v == self;
        for (uint32_t j = 0; j < got && !dup; j++)
            dup = out[j] == v;
        if (!dup)
            out[got++] = v;
    }
    return got;
}

/* A valid graph (the validator accepts it) of count nodes: level 0 is a ring
 * plus random extra links, so every node is reachable; upper levels link
 * random nodes of the same level. With stale != 0 the unused slots of every
 * block hold junk, which a canonical writer must not copy. */
static struct kiln_index *make_graph(kiln_ctx *ctx, uint64_t count, uint32_t dim,
                                     kiln_metric metric, uint32_t M, uint64_t seed, int stale) {
    uint8_t *levels = calloc(count ? count : 1, 1);
    REQUIRE(levels);
    kiln_sample_levels(levels, count, M, seed);
    if (count >= 3)
        levels[1] = 2; /* at least three levels whatever the sample */
    struct kiln_index *ix = NULL;
    REQUIRE(kiln_index_alloc(ctx, count, dim, metric, M, levels, &ix) == KILN_OK);
    free(levels);
    kiln_rng rng;
    kiln_rng_seed(&rng, seed);
    for (uint64_t i = 0; i < count * dim; i++)
        ix->vectors[i] = (float)(kiln_rng_uniform(&rng) * 2.0 - 1.0);
    if (metric == KILN_METRIC_COS)
        for (uint64_t i = 0; i < count; i++)
            kiln_normalize(ix->vectors + i * dim, dim);
    for (uint64_t i = 0; i < count; i++)
        ix->labels[i] = (int64_t)(i * 7919) - 1000000007LL * (int64_t)(i % 3);

    uint32_t *pool = malloc((count ? count : 1) * sizeof *pool);
    REQUIRE(pool);
    for (uint32_t l = 0; l <= ix->max_level; l++) {
        uint32_t m = 0;
        for (uint32_t i = 0; i < count; i++)
            if (ix->levels[i] >= l)
                pool[m++] = i;
        const uint32_t bound = l ? M : ix->M0;
        for (uint32_t k = 0; k < m; k++) {
            const uint32_t i = pool[k];
            uint32_t *block = kiln_links(ix, i, l);
            uint32_t n = 0;
            if (l == 0 && count >= 2)
                block[1 + n++] = (uint32_t)((i + 1) % count);
            const uint32_t want = m > 1 ? (uint32_t)kiln_rng_below(&rng, bound + 1) : 0;
            if (want > n) {
                uint32_t extra[2 * KILN_MAX_M];
                const uint32_t got = pick_links(&rng, pool, m, i, want - n, extra);
                for (uint32_t j = 0; j < got; j++) {
                    int dup = 0;
                    for (uint32_t t = 0; t < n; t++)
                        dup |= block[1 + t] == extra[j];
                    if (!dup)
                        block[1 + n++] = extra[j];
                }
            }
            block[0] = n;
            for (uint32_t j = n; j < bound && stale; j++)
                block[1 + j] = 0xdead0000u + j;
        }
    }
    free(pool);
    ix->entry_point = KILN_NO_NODE;
    for (uint32_t i = 0; i < count && ix->entry_point == KILN_NO_NODE; i++)
        if (ix->levels[i] == ix->max_level)
            ix->entry_point = i;
    ix->ef_construction = 40 + (uint32_t)(seed % 100);
    ix->seed = seed * 0x9e3779b97f4a7c15ULL;
    return ix;
}

/* Every field and array a file carries; link blocks compared up to their
 * count (the slots past it are not part of the graph). */
static int same_index(const struct kiln_index *a, const struct kiln_index *b) {
    if (a->dim != b->dim || a->metric != b->metric || a->M != b->M || a->M0 != b->M0 ||
        a->ef_construction != b->ef_construction || a->seed != b->seed || a->count != b->count ||
        a->max_level != b->max_level || a->entry_point != b->entry_point ||
        a->upper_len != b->upper_len || a->dist != b->dist)
        return 0;
    const size_t n = (size_t)a->count;
    if (memcmp(a->vectors, b->vectors, n * a->dim * sizeof(float)) ||
        memcmp(a->labels, b->labels, n * sizeof(int64_t)) || memcmp(a->levels, b->levels, n))
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        for (unsigned l = 0; l <= a->levels[i]; l++) {
            const uint32_t *x = kiln_links(a, i, l), *y = kiln_links(b, i, l);
            const uint32_t bound = l ? a->M : a->M0; /* a crafted count may be above it */
            if (x[0] != y[0] ||
                memcmp(x + 1, y + 1, (x[0] < bound ? x[0] : bound) * sizeof(uint32_t)))
                return 0;
        }
    }
    return 1;
}

/* ==== CRC-32C ==== */

static uint32_t crc_bitwise(const uint8_t *p, size_t len) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < len; i++) {
        c ^= p[i];
        for (int b = 0; b < 8; b++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    }
    return ~c;
}

static void test_crc32c(void) {
    static const char check[] = "123456789";
    CHECK(kiln_crc32c(0, check, 9) == 0xE3069283u);
    CHECK(kiln_crc32c_scalar(0, check, 9) == 0xE3069283u);
    CHECK(kiln_crc32c(0, NULL, 0) == 0);
    /* RFC 3720 B.4 test vectors. */
    uint8_t v[32];
    memset(v, 0, sizeof v);
    CHECK(kiln_crc32c(0, v, 32) == 0x8A9136AAu);
    memset(v, 0xff, sizeof v);
    CHECK(kiln_crc32c(0, v, 32) == 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        v[i] = (uint8_t)i;
    CHECK(kiln_crc32c(0, v, 32) == 0x46DD794Eu);
    CHECK(kiln_crc32c_scalar(0, v, 32) == 0x46DD794Eu);

    enum { CAP = 5000 };
    uint8_t *buf = malloc(CAP + 16);
    REQUIRE(buf);
    kiln_rng rng;
    kiln_rng_seed(&rng, 42);
    for (size_t i = 0; i < CAP + 16; i++)
        buf[i] = (uint8_t)kiln_rng_next(&rng);
    int mismatches = 0;
    for (size_t len = 0; len < 300; len++)
        for (size_t align = 0; align < 16; align++) {
            const uint32_t ref = crc_bitwise(buf + align, len);
            mismatches += kiln_crc32c(0, buf + align, len) != ref;
            mismatches += kiln_crc32c_scalar(0, buf + align, len) != ref;
        }
    for (size_t len = 300; len <= CAP; len += 97 + len / 3)
        for (size_t align = 0; align < 16; align += 3) {
            const uint32_t ref = crc_bitwise(buf + align, len);
            mismatches += kiln_crc32c(0, buf + align, len) != ref;
            mismatches += kiln_crc32c_scalar(0, buf + align, len) != ref;
        }
    CHECK_MSG(mismatches == 0, "%d CRC mismatches against the bitwise reference", mismatches);

    /* Chaining: any split gives the CRC of the whole. */
    const uint32_t whole = kiln_crc32c(0, buf, 1000);
    int chain_bad = 0;
    for (size_t cut = 0; cut <= 1000; cut += 37) {
        chain_bad += kiln_crc32c(kiln_crc32c(0, buf, cut), buf + cut, 1000 - cut) != whole;
        chain_bad +=
            kiln_crc32c_scalar(kiln_crc32c_scalar(0, buf, cut), buf + cut, 1000 - cut) != whole;
    }
    CHECK(chain_bad == 0);
    free(buf);
}

/* ==== Round trips ==== */

static void round_trip(kiln_ctx *ctx, uint64_t count, uint32_t dim, kiln_metric metric, uint32_t M,
                       uint64_t seed) {
    struct kiln_index *ix = make_graph(ctx, count, dim, metric, M, seed, 1);
    CHECK_OK(ctx, kiln_index_check(ix));
    const size_t links0_bytes = (size_t)count * (1 + ix->M0) * sizeof(uint32_t);
    uint32_t *links_before = malloc(links0_bytes + 4);
    uint32_t *upper_before = malloc(ix->upper_len * sizeof(uint32_t) + 4);
    REQUIRE(links_before && upper_before);
    memcpy(links_before, ix->links0, links0_bytes);
    memcpy(upper_before, ix->upper_pool, ix->upper_len * sizeof(uint32_t));

    const char *path = tmp_path("round.kiln");
    CHECK_OK(ctx, kiln_index_save(ix, path));
    CHECK_MSG(memcmp(links_before, ix->links0, links0_bytes) == 0 &&
                  memcmp(upper_before, ix->upper_pool, ix->upper_len * sizeof(uint32_t)) == 0,
              "save modified the index (count %llu)", (unsigned long long)count);
    free(links_before);
    free(upper_before);

    kiln_index *back = NULL;
    CHECK_OK(ctx, kiln_index_load(ctx, path, &back));
    REQUIRE(back);
    CHECK_MSG(same_index(ix, back), "round trip differs: count %llu dim %u metric %s M %u",
              (unsigned long long)count, dim, kiln_metric_name(metric), M);
    CHECK(back->ctx == ctx);
    CHECK(back->map != NULL); /* little-endian test hosts map */
    CHECK_OK(ctx, kiln_index_check(back));
    /* The read path and the verifying opens give the same index. */
    static const uint32_t modes[] = {KILN_LOAD_READ, KILN_LOAD_VERIFY,
                                     KILN_LOAD_VERIFY | KILN_LOAD_READ};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        kiln_index *other = NULL;
        CHECK_OK(ctx, kiln_index_open(ctx, path, modes[i], &other));
        REQUIRE(other);
        CHECK_MSG(same_index(ix, other) && (other->map == NULL) == !!(modes[i] & KILN_LOAD_READ),
                  "open with flags 0x%x differs: count %llu", modes[i], (unsigned long long)count);
        kiln_index_free(other);
    }

    kiln_index_info info;
    CHECK_OK(ctx, kiln_index_info_read(ctx, path, &info));
    size_t len;
    uint8_t *bytes = slurp(path, &len);
    CHECK(info.format_version == 2 && info.capacity == count && info.free_slots == 0 &&
          info.dim == dim && info.metric == metric && info.M == M && info.M0 == 2 * M &&
          info.ef_construction == ix->ef_construction && info.count == count &&
          info.max_level == ix->max_level && info.entry_point == ix->entry_point &&
          info.seed == ix->seed && info.file_bytes == len);
    CHECK(memcmp(bytes, "KILNHNSW", 8) == 0);
    for (uint32_t k = VECTORS; k <= UPPER; k++)
        CHECK(sec_offset(bytes, k) % 64 == 0);

    /* Canonical: the same graph without stale slots, and the loaded copy,
     * save to the same bytes. */
    struct kiln_index *clean = make_graph(ctx, count, dim, metric, M, seed, 0);
    const char *path2 = tmp_path("round2.kiln");
    CHECK_OK(ctx, kiln_index_save(clean, path2));
    size_t len2;
    uint8_t *bytes2 = slurp(path2, &len2);
    CHECK(len2 == len && memcmp(bytes, bytes2, len) == 0);
    free(bytes2);
    CHECK_OK(ctx, kiln_index_save(back, path2));
    bytes2 = slurp(path2, &len2);
    CHECK(len2 == len && memcmp(bytes, bytes2, len) == 0);
    free(bytes2);

    free(bytes);
    kiln_index_free(clean);
    kiln_index_free(back);
    kiln_index_free(ix);
}

static void test_round_trips(kiln_ctx *ctx) {
    static const kiln_metric metrics[] = {KILN_METRIC_L2, KILN_METRIC_IP, KILN_METRIC_COS};
    static const uint64_t counts[] = {0, 1, 2, 3, 17, 300};
    for (size_t m = 0; m < 3; m++)
        for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++)
            round_trip(ctx, counts[c], (uint32_t)(1 + 5 * c), metrics[m], (uint32_t)(2 + c % 4),
                       100 * m + c);
    /* A graph big enough that LINKS0 and VECTORS span several I/O chunks. */
    round_trip(ctx, 5000, 64, KILN_METRIC_L2, 16, 9);
    CHECK(count_temp_files() == 0);
}

/* ==== Damaged files ==== */

/* Where a damage is caught (docs/FORMAT.md, "What the reader enforces"). */
typedef enum caught {
    AT_HEADER = 1, /* header or table: every open and info_read refuse it */
    AT_OPEN,       /* past the table, still at every open (levels, layout) */
    AT_CRC,        /* a section CRC: the mapped open skips it (VECTORS, LABELS,
                      LINKS0, UPPER); KILN_LOAD_VERIFY and KILN_LOAD_READ refuse */
    AT_LINKS       /* a link, CRCs intact: only KILN_LOAD_VERIFY refuses it, and
                      the validator */
} caught;

static const uint32_t all_modes[] = {0, KILN_LOAD_READ, KILN_LOAD_VERIFY,
                                     KILN_LOAD_VERIFY | KILN_LOAD_READ};

/* Whether an open with flags refuses a damage caught where `where` says. */
static int refused_by(caught where, uint32_t flags) {
    switch (where) {
    case AT_HEADER:
    case AT_OPEN: return 1;
    case AT_CRC: return flags != 0;
    case AT_LINKS: return (flags & KILN_LOAD_VERIFY) != 0;
    }
    return 1;
}

/* Searches ix for a few of its own vectors with a beam over the whole graph,
 * so every reachable block is read (under ASan a read outside the read
 * path's arrays aborts); labels gets k = 5 per query. */
static void search_all(kiln_ctx *ctx, const kiln_index *ix, int64_t labels[4 * 5]) {
    float q[4 * 64];
    const uint32_t dim = ix->dim < 64 ? ix->dim : 64;
    REQUIRE(ix->dim == dim);
    for (uint32_t i = 0; i < 4; i++)
        memcpy(q + i * dim, kiln_vector(ix, (uint32_t)((i * 17) % (ix->count ? ix->count : 1))),
               dim * sizeof(float));
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    sp.k = 5;
    sp.ef = (uint32_t)ix->count + 5;
    CHECK_OK(ctx, kiln_index_search(ix, q, ix->count ? 4 : 0, &sp, labels, NULL));
}

/* Writes file (len bytes) to path and checks that every open the damage
 * should stop fails with st and a message containing needle and the path,
 * that info_read fails too for header and table damage, and that the opens
 * that accept it (mapped, or read, see refused_by) give the same index,
 * which searches safely: a crafted file gives wrong answers, never a read
 * out of bounds. */
static void expect_reject(kiln_ctx *ctx, const uint8_t *file, size_t len, caught where,
                          kiln_status st, const char *needle, const char *what) {
    const char *path = tmp_path("bad.kiln");
    spit(path, file, len);
    kiln_index *accepted[4] = {NULL};
    int64_t first[4 * 5], labels[4 * 5];
    for (size_t m = 0; m < 4; m++) {
        const uint32_t flags = all_modes[m];
        kiln_index *ix = (kiln_index *)(uintptr_t)1;
        const kiln_status got = kiln_index_open(ctx, path, flags, &ix);
        if (refused_by(where, flags)) {
            CHECK_MSG(got == st && strstr(kiln_errmsg(ctx), needle) &&
                          strstr(kiln_errmsg(ctx), path),
                      "%s: open 0x%x gave %s \"%s\", want %s with \"%s\"", what, flags,
                      kiln_status_str(got), kiln_errmsg(ctx), kiln_status_str(st), needle);
            CHECK(ix == NULL);
            if (got == KILN_OK)
                kiln_index_free(ix);
            continue;
        }
        CHECK_MSG(got == KILN_OK, "%s: open 0x%x gave %s \"%s\", want it accepted", what, flags,
                  kiln_status_str(got), kiln_errmsg(ctx));
        if (got != KILN_OK)
            continue;
        accepted[m] = ix;
        search_all(ctx, ix, m == 0 ? first : labels);
        if (m > 0 && accepted[0]) {
            CHECK_MSG(same_index(accepted[0], ix) && memcmp(first, labels, sizeof first) == 0,
                      "%s: the mapped and the read open differ", what);
        }
        if (where == AT_LINKS)
            CHECK_MSG(kiln_index_check(ix) == KILN_E_INVALID,
                      "%s: the validator passed a crafted link", what);
    }
    for (size_t m = 0; m < 4; m++)
        kiln_index_free(accepted[m]);
    kiln_index_info info;
    const kiln_status gi = kiln_index_info_read(ctx, path, &info);
    if (where == AT_HEADER)
        CHECK_MSG(gi == st && strstr(kiln_errmsg(ctx), needle),
                  "%s: info_read gave %s \"%s\", want %s with \"%s\"", what, kiln_status_str(gi),
                  kiln_errmsg(ctx), kiln_status_str(st), needle);
    else
        CHECK_MSG(gi == KILN_OK, "%s: info_read gave %s \"%s\" on damage past the table", what,
                  kiln_status_str(gi), kiln_errmsg(ctx));
}

/* A copy of the good file with a 32- or 64-bit field forged and the CRCs
 * recomputed. */
static void forge(kiln_ctx *ctx, const uint8_t *good, size_t len, size_t off, int width,
                  uint64_t value, caught where, kiln_status st, const char *needle,
                  const char *what) {
    uint8_t *f = malloc(len);
    REQUIRE(f);
    memcpy(f, good, len);
    if (width == 4)
        kiln_put_u32le(f + off, (uint32_t)value);
    else
        kiln_put_u64le(f + off, value);
    refresh_crcs(f, len);
    expect_reject(ctx, f, len, where, st, needle, what);
    free(f);
}

static void test_damage(kiln_ctx *ctx) {
    struct kiln_index *ix = make_graph(ctx, 60, 8, KILN_METRIC_L2, 4, 5, 0);
    const char *path = tmp_path("good.kiln");
    CHECK_OK(ctx, kiln_index_save(ix, path));
    size_t len;
    uint8_t *good = slurp(path, &len);
    REQUIRE(sec_length(good, UPPER) > 0);
    uint8_t *f = malloc(len + 4096);
    REQUIRE(f);

    /* A flipped byte in each section, in the header, in the table. */
    for (uint32_t k = VECTORS; k <= UPPER; k++) {
        memcpy(f, good, len);
        f[sec_offset(f, k) + sec_length(f, k) / 2] ^= 0x10;
        char needle[64];
        snprintf(needle, sizeof needle, "checksum mismatch in section %s", kind_names[k]);
        expect_reject(ctx, f, len, k == LEVELS ? AT_OPEN : AT_CRC, KILN_E_CHECKSUM, needle,
                      kind_names[k]);
    }
    memcpy(f, good, len);
    f[OFF_DIM] ^= 1;
    expect_reject(ctx, f, len, AT_HEADER, KILN_E_CHECKSUM, "header checksum mismatch",
                  "header flip");
    memcpy(f, good, len);
    f[HDR_BYTES + ENTRY_BYTES + 9] ^= 1;
    expect_reject(ctx, f, len, AT_HEADER, KILN_E_CHECKSUM, "section table checksum mismatch",
                  "table flip");

    /* Magic and version. */
    memcpy(f, good, len);
    f[3] = 'X';
    expect_reject(ctx, f, len, AT_HEADER, KILN_E_FORMAT, "not a kiln index file (bad magic)",
                  "magic");
    expect_reject(ctx, (const uint8_t *)"PK\3\4", 4, AT_HEADER, KILN_E_FORMAT, "bad magic", "zip");
    /* A version 2 file called 3: its header has no storage (bytes 92..99 zero). */
    forge(ctx, good, len, OFF_VERSION, 4, 3, AT_HEADER, KILN_E_FORMAT,
          "unknown vector storage 0 (flags 0x0) in a version 3 file", "version 3");
    forge(ctx, good, len, OFF_VERSION, 4, 4, AT_HEADER, KILN_E_VERSION,
          "index format version 4 is not supported", "version 4");
    forge(ctx, good, len, OFF_VERSION, 4, 7, AT_HEADER, KILN_E_VERSION,
          "index format version 7 is not supported (this kiln reads versions 1 to 3)", "version 7");
    forge(ctx, good, len, OFF_VERSION, 4, 0, AT_HEADER, KILN_E_VERSION, "version 0", "version 0");

    /* Truncation everywhere, and one byte too many. */
    for (int i = 0; i < 20; i++)
        expect_reject(ctx, good, len * (size_t)i / 20, AT_HEADER, KILN_E_FORMAT, "truncated",
                      "truncation");
    expect_reject(ctx, good, len - 1, AT_HEADER, KILN_E_FORMAT, "truncated", "last byte cut");
    expect_reject(ctx, good, 5, AT_HEADER, KILN_E_FORMAT, "truncated", "magic prefix");
    memcpy(f, good, len);
    f[len] = 0;
    expect_reject(ctx, f, len + 1, AT_HEADER, KILN_E_FORMAT, "appended", "extra byte");

    /* Forged header fields, CRCs recomputed: limits before allocation. */
    forge(ctx, good, len, OFF_COUNT, 8, 1ULL << 40, AT_HEADER, KILN_E_RANGE, "count", "count 2^40");
    forge(ctx, good, len, OFF_COUNT, 8, UINT64_MAX, AT_HEADER, KILN_E_RANGE, "count", "count max");
    forge(ctx, good, len, OFF_COUNT, 8, 0xfffffffeULL, AT_HEADER, KILN_E_FORMAT, "section VECTORS",
          "count 2^32-2");
    forge(ctx, good, len, OFF_COUNT, 8, 61, AT_HEADER, KILN_E_FORMAT, "section VECTORS", "count+1");
    forge(ctx, good, len, OFF_DIM, 4, 1u << 31, AT_HEADER, KILN_E_RANGE, "dim", "dim 2^31");
    forge(ctx, good, len, OFF_DIM, 4, 0, AT_HEADER, KILN_E_RANGE, "dim", "dim 0");
    forge(ctx, good, len, OFF_DIM, 4, KILN_MAX_DIM, AT_HEADER, KILN_E_FORMAT, "section VECTORS",
          "dim max");
    forge(ctx, good, len, OFF_M, 4, 1u << 30, AT_HEADER, KILN_E_RANGE, "M", "M 2^30");
    forge(ctx, good, len, OFF_M, 4, 1, AT_HEADER, KILN_E_RANGE, "M", "M 1");
    forge(ctx, good, len, OFF_M0, 4, 9, AT_HEADER, KILN_E_FORMAT, "M0", "M0 odd");
    forge(ctx, good, len, OFF_METRIC, 4, 9, AT_HEADER, KILN_E_FORMAT, "metric", "metric 9");
    forge(ctx, good, len, OFF_MAX_LEVEL, 4, 40, AT_HEADER, KILN_E_RANGE, "max_level",
          "max_level 40");
    forge(ctx, good, len, OFF_ENTRY, 4, 60, AT_HEADER, KILN_E_RANGE, "entry point 60",
          "entry = count");
    forge(ctx, good, len, OFF_ENTRY, 4, UINT32_MAX, AT_HEADER, KILN_E_RANGE, "entry point",
          "entry max");
    forge(ctx, good, len, OFF_HEADER_BYTES, 4, 256, AT_HEADER, KILN_E_FORMAT, "header_bytes",
          "header_bytes");
    forge(ctx, good, len, OFF_FILE_BYTES, 8, UINT64_MAX, AT_HEADER, KILN_E_FORMAT, "truncated",
          "file_bytes");
    forge(ctx, good, len, 100, 4, 1, AT_HEADER, KILN_E_FORMAT, "reserved header byte", "reserved");
    forge(ctx, good, len, OFF_SECTION_COUNT, 4, 5, AT_HEADER, KILN_E_FORMAT, "section_count",
          "5 sections in version 2");
    forge(ctx, good, len, OFF_CAPACITY, 8, 59, AT_HEADER, KILN_E_RANGE, "capacity 59",
          "capacity below count");
    forge(ctx, good, len, OFF_CAPACITY, 8, UINT32_MAX, AT_HEADER, KILN_E_RANGE, "capacity",
          "capacity max");
    forge(ctx, good, len, OFF_FREE_COUNT, 8, 61, AT_HEADER, KILN_E_RANGE, "61 free slots",
          "free count above count");
    forge(ctx, good, len, OFF_FREE_COUNT, 8, 2, AT_HEADER, KILN_E_FORMAT, "section FREE",
          "free count without FREE bytes");
    forge(ctx, good, len, OFF_SECTION_COUNT, 4, 1000000, AT_HEADER, KILN_E_FORMAT, "section_count",
          "10^6 sections");

    /* An entry point not on the top level: found once LEVELS is read. */
    uint32_t low = 0;
    while (ix->levels[low] == ix->max_level)
        low++;
    forge(ctx, good, len, OFF_ENTRY, 4, low, AT_OPEN, KILN_E_FORMAT, "not the top level",
          "entry level");

    /* Forged table entries. */
    const size_t e_links = HDR_BYTES + (LINKS0 - 1) * ENTRY_BYTES;
    const size_t e_upper = HDR_BYTES + (UPPER - 1) * ENTRY_BYTES;
    forge(ctx, good, len, e_links + 8, 8, sec_offset(good, LINKS0) + 4, AT_HEADER, KILN_E_FORMAT,
          "misaligned", "offset +4");
    forge(ctx, good, len, e_links + 8, 8, 64, AT_HEADER, KILN_E_FORMAT, "outside",
          "offset in table");
    forge(ctx, good, len, e_links + 8, 8, UINT64_MAX - 63, AT_HEADER, KILN_E_FORMAT, "outside",
          "offset huge");
    forge(ctx, good, len, e_links + 16, 8, UINT64_MAX, AT_HEADER, KILN_E_FORMAT, "outside",
          "length huge");
    forge(ctx, good, len, e_links + 16, 8, sec_length(good, LINKS0) - 4, AT_HEADER, KILN_E_FORMAT,
          "section LINKS0 is", "length short");
    forge(ctx, good, len, e_upper + 16, 8, sec_length(good, UPPER) - 4, AT_HEADER, KILN_E_FORMAT,
          "section UPPER", "upper partial block");
    forge(ctx, good, len, e_upper + 16, 8, sec_length(good, UPPER) - 5 * 4, AT_OPEN, KILN_E_FORMAT,
          "LEVELS implies", "upper one block short");
    forge(ctx, good, len, e_links + 8, 8, sec_offset(good, VECTORS), AT_HEADER, KILN_E_FORMAT,
          "overlap", "overlap");
    forge(ctx, good, len, e_links, 4, VECTORS, AT_HEADER, KILN_E_FORMAT, "twice", "duplicate kind");
    forge(ctx, good, len, e_links + 4, 4, 1, AT_HEADER, KILN_E_FORMAT, "flags",
          "optional known kind");
    forge(ctx, good, len, e_links + 4, 4, 2, AT_HEADER, KILN_E_FORMAT, "flags", "unknown flag");
    forge(ctx, good, len, e_links + 28, 4, 1, AT_HEADER, KILN_E_FORMAT, "reserved",
          "entry reserved");
    forge(ctx, good, len, e_links, 4, 99, AT_HEADER, KILN_E_FORMAT, "unknown kind 99",
          "unknown kind");

    /* A version 1 file (the same graph with no FREE section and zeros for
     * capacity and free count) is still read, as the same index. */
    REQUIRE(sec_length(good, 6) == 0);
    memcpy(f, good, len);
    to_version1(f, len);
    {
        const char *p = tmp_path("version1.kiln");
        spit(p, f, len);
        kiln_index *back = NULL;
        CHECK_OK(ctx, kiln_index_load(ctx, p, &back));
        CHECK(back && same_index(ix, back) && back->free_count == 0);
        kiln_index_free(back);
        forge(ctx, f, len, OFF_CAPACITY, 8, 60, AT_HEADER, KILN_E_FORMAT, "reserved header byte",
              "capacity in version 1");
    }

    /* A sixth, unknown section in a version 1 file: rejected unless flagged
     * optional, then skipped. It takes the place of version 2's FREE entry
     * in the table, so nothing moves. */
    const size_t extra_off = (len + 63) & ~(size_t)63, flen = extra_off + 100;
    for (int optional = 0; optional <= 1; optional++) {
        memset(f, 0, flen);
        memcpy(f, good, len);
        to_version1(f, len);
        uint8_t *e = f + HDR_BYTES + 5 * ENTRY_BYTES;
        kiln_put_u32le(e, 42);
        kiln_put_u32le(e + 4, (uint32_t)optional);
        kiln_put_u64le(e + 8, extra_off);
        kiln_put_u64le(e + 16, 100);
        kiln_put_u32le(f + OFF_SECTION_COUNT, 6);
        kiln_put_u64le(f + OFF_FILE_BYTES, flen);
        refresh_crcs(f, flen);
        if (!optional) {
            expect_reject(ctx, f, flen, AT_HEADER, KILN_E_FORMAT, "unknown kind 42",
                          "required kind 42");
        } else {
            const char *p = tmp_path("optional.kiln");
            spit(p, f, flen);
            kiln_index *back = NULL;
            CHECK_OK(ctx, kiln_index_load(ctx, p, &back));
            CHECK(back && same_index(ix, back));
            kiln_index_free(back);
        }
    }

    /* Section contents with their CRCs recomputed: links and levels. */
    const uint64_t links = sec_offset(good, LINKS0), stride = (1 + 2 * 4) * 4;
    uint32_t node = 0; /* a node with at least one level-0 link */
    while (kiln_links(ix, node, 0)[0] == 0)
        node++;
    forge(ctx, good, len, links + node * stride + 4, 4, 60, AT_LINKS, KILN_E_RANGE,
          "links to node 60", "link = count");
    forge(ctx, good, len, links + node * stride + 4, 4, UINT32_MAX, AT_LINKS, KILN_E_RANGE,
          "level 0 links to node 4294967295", "link max");
    forge(ctx, good, len, links + node * stride, 4, 9, AT_LINKS, KILN_E_RANGE, "above the bound 8",
          "link count");
    char needle[96];
    snprintf(needle, sizeof needle, "node %u level 0", node);
    forge(ctx, good, len, links + node * stride + 4, 4, 1000, AT_LINKS, KILN_E_RANGE, needle,
          "message names node and level");
    /* The first upper block is node u's level 1. */
    uint32_t u = 0;
    while (ix->levels[u] == 0)
        u++;
    const uint64_t upper = sec_offset(good, UPPER);
    memcpy(f, good, len);
    kiln_put_u32le(f + upper, 1);
    kiln_put_u32le(f + upper + 4, 77);
    refresh_crcs(f, len);
    snprintf(needle, sizeof needle, "node %u level 1 links to node 77", u);
    expect_reject(ctx, f, len, AT_LINKS, KILN_E_RANGE, needle, "upper link");
    forge(ctx, good, len, upper, 4, 5, AT_LINKS, KILN_E_RANGE, "above the bound 4", "upper count");
    uint32_t ground = 0; /* a node on level 0 only */
    while (ix->levels[ground] != 0)
        ground++;
    memcpy(f, good, len);
    kiln_put_u32le(f + upper, 1);
    kiln_put_u32le(f + upper + 4, ground);
    refresh_crcs(f, len);
    snprintf(needle, sizeof needle,
             "node %u level 1 links to node %u, which is only on levels 0..0", u, ground);
    expect_reject(ctx, f, len, AT_LINKS, KILN_E_RANGE, needle, "upper link to a lower node");
    const uint64_t lv = sec_offset(good, LEVELS);
    memcpy(f, good, len);
    f[lv + low] = (uint8_t)(ix->max_level + 1);
    refresh_crcs(f, len);
    snprintf(needle, sizeof needle, "node %u has level %u, above the header's max_level %u", low,
             ix->max_level + 1, ix->max_level);
    expect_reject(ctx, f, len, AT_OPEN, KILN_E_RANGE, needle, "level > max");
    memcpy(f, good, len);
    f[lv + low] = (uint8_t)(ix->levels[low] + 1);
    refresh_crcs(f, len);
    expect_reject(ctx, f, len, AT_OPEN, KILN_E_FORMAT, "LEVELS implies", "level changed");

    /* Crafted links that search follows at once (search_all's first query
     * is node g's own vector): the entry point's top block links to g, which
     * is only on level 0, and g's level-0 block has a count far above its
     * bound and a first id far past the graph. Without search's checks the
     * read path reads outside its arrays (ASan aborts) and the mapped one
     * outside the file. With them the bad links are skipped: the search
     * gives what it gives on the same file with the entry's top block empty
     * and g's first id a repeat of its second (a visited node, so skipped
     * too), and the count at its bound (the slots past n are zeros). */
    const uint32_t g = 0, ep = ix->entry_point, M0 = ix->M0;
    REQUIRE(ix->levels[g] == 0 && ix->max_level >= 1 && kiln_links(ix, g, 0)[0] >= 2);
    const uint64_t ep_top =
        upper + 4 * (ix->upper_off[ep] + (uint64_t)(ix->max_level - 1) * (ix->M + 1));
    const uint64_t g_links = links + g * stride;
    memcpy(f, good, len);
    kiln_put_u32le(f + ep_top, 1);
    kiln_put_u32le(f + ep_top + 4, g);
    kiln_put_u32le(f + g_links, UINT32_MAX);
    kiln_put_u32le(f + g_links + 4, UINT32_MAX);
    refresh_crcs(f, len);
    expect_reject(ctx, f, len, AT_LINKS, KILN_E_RANGE, "level 0 has 4294967295 links",
                  "crafted search");
    int64_t crafted[2][4 * 5];
    for (int variant = 0; variant < 2; variant++) {
        if (variant) {
            memcpy(f, good, len);
            kiln_put_u32le(f + ep_top, 0);
            kiln_put_u32le(f + g_links, M0);
            kiln_put_u32le(f + g_links + 4, kiln_get_u32le(f + g_links + 8));
            refresh_crcs(f, len);
        }
        const char *p = tmp_path("crafted.kiln");
        spit(p, f, len);
        kiln_index *c = NULL;
        CHECK_OK(ctx, kiln_index_open(ctx, p, KILN_LOAD_READ, &c));
        REQUIRE(c);
        search_all(ctx, c, crafted[variant]);
        kiln_index_free(c);
    }
    CHECK_MSG(memcmp(crafted[0], crafted[1], sizeof crafted[0]) == 0,
              "a search on crafted links did not skip exactly the bad ones");

    /* Flags. */
    kiln_index *none = NULL;
    CHECK_FAILS(ctx, kiln_index_open(ctx, path, 0x8, &none), KILN_E_ARG, "unknown flags 0x8");
    CHECK(none == NULL);

    /* Misc: missing file, a folder, an empty file. */
    CHECK_FAILS(ctx, kiln_index_load(ctx, tmp_path("absent.kiln"), &none), KILN_E_IO,
                "absent.kiln: cannot open");
    CHECK_FAILS(ctx, kiln_index_load(ctx, test_dir, &none), KILN_E_IO, "not a regular file");
    expect_reject(ctx, good, 0, AT_HEADER, KILN_E_FORMAT, "truncated", "empty");
    CHECK_FAILS(ctx, kiln_index_load(ctx, NULL, &none), KILN_E_ARG, "empty path");
    CHECK(kiln_index_load(ctx, path, NULL) == KILN_E_ARG);
    CHECK(kiln_index_info_read(ctx, path, NULL) == KILN_E_ARG);

    free(f);
    free(good);
    kiln_index_free(ix);
}

/* ==== Atomic save ==== */

static void test_save(kiln_ctx *ctx) {
    struct kiln_index *ix = make_graph(ctx, 40, 4, KILN_METRIC_IP, 3, 11, 1);
    const char *path = tmp_path("atomic.kiln");
    unlink(path);
    CHECK_OK(ctx, kiln_index_save(ix, path));
    CHECK(file_exists(path));
    CHECK(count_temp_files() == 0);

    /* Overwrite: the new graph replaces the old whole. */
    struct kiln_index *other = make_graph(ctx, 7, 2, KILN_METRIC_L2, 2, 12, 0);
    CHECK_OK(ctx, kiln_index_save(other, path));
    kiln_index *back = NULL;
    CHECK_OK(ctx, kiln_index_load(ctx, path, &back));
    CHECK(back && same_index(other, back));
    kiln_index_free(back);

    const char *nodir = tmp_path("no-such-folder/x.kiln");
    CHECK_FAILS(ctx, kiln_index_save(ix, nodir), KILN_E_IO, "no-such-folder/x.kiln");
    CHECK(!file_exists(nodir));

    /* A graph its reader would reject is not written. */
    const char *bad = tmp_path("invalid.kiln");
    unlink(bad);
    uint32_t *block = kiln_links(ix, 3, 0);
    const uint32_t saved_n = block[0], saved_id = block[1];
    block[0] = 1;
    block[1] = 40;
    CHECK_FAILS(ctx, kiln_index_save(ix, bad), KILN_E_INVALID, "node 3 level 0 links to node 40");
    block[1] = saved_id;
    block[0] = ix->M0 + 1;
    CHECK_FAILS(ctx, kiln_index_save(ix, bad), KILN_E_INVALID, "above the bound");
    block[0] = saved_n;
    uint32_t up = 0, flat = 0; /* a node with upper levels, and one without */
    while (ix->levels[up] == 0)
        up++;
    while (ix->levels[flat] != 0)
        flat++;
    uint32_t *ublock = kiln_links(ix, up, 1);
    const uint32_t saved_un = ublock[0], saved_uid = ublock[1];
    ublock[0] = 1;
    ublock[1] = flat;
    char msg[96];
    snprintf(msg, sizeof msg, "node %u level 1 links to node %u, which is only on levels 0..0", up,
             flat);
    CHECK_FAILS(ctx, kiln_index_save(ix, bad), KILN_E_INVALID, msg);
    ublock[0] = saved_un;
    ublock[1] = saved_uid;
    const uint32_t ep = ix->entry_point;
    ix->entry_point = 40;
    CHECK_FAILS(ctx, kiln_index_save(ix, bad), KILN_E_INVALID, "entry point 40");
    ix->entry_point = ep;
    CHECK(!file_exists(bad));
    CHECK(count_temp_files() == 0);

    CHECK(kiln_index_save(NULL, path) == KILN_E_ARG);
    CHECK_FAILS(ctx, kiln_index_save(ix, ""), KILN_E_ARG, "empty output path");
    kiln_index_free(other);
    kiln_index_free(ix);
}

/* ==== A real built index ==== */

static float *built_rows(kiln_ctx *ctx, size_t *n, size_t *dim, float **queries) {
    kiln_dataset *ds = NULL;
    if (kiln_dataset_open(ctx, "../shared/datasets/siftsmall/siftsmall_base.fvecs",
                          KILN_FORMAT_AUTO, 0, &ds) == KILN_OK &&
        kiln_dataset_count(ds) >= BUILT_ROWS + BUILT_QUERIES) {
        *n = BUILT_ROWS;
        *dim = kiln_dataset_dim(ds);
        float *v = malloc((BUILT_ROWS + BUILT_QUERIES) * *dim * sizeof(float));
        REQUIRE(v);
        CHECK_OK(ctx, kiln_dataset_read_f32(ds, 0, BUILT_ROWS + BUILT_QUERIES, v));
        kiln_dataset_free(ds);
        *queries = v + BUILT_ROWS * *dim;
        return v;
    }
    kiln_dataset_free(ds);
    SKIP_PART("siftsmall not found under ../shared/datasets; using random vectors");
    *n = BUILT_ROWS;
    *dim = 24;
    float *v = malloc((BUILT_ROWS + BUILT_QUERIES) * *dim * sizeof(float));
    REQUIRE(v);
    kiln_rng rng;
    kiln_rng_seed(&rng, 3);
    for (size_t i = 0; i < (BUILT_ROWS + BUILT_QUERIES) * *dim; i++)
        v[i] = (float)kiln_rng_uniform(&rng);
    *queries = v + BUILT_ROWS * *dim;
    return v;
}

static void test_built(kiln_ctx *ctx) {
    size_t n, dim;
    float *queries;
    float *rows = built_rows(ctx, &n, &dim, &queries);
    kiln_build_params bp;
    kiln_build_params_init(&bp);
    bp.method = KILN_METHOD_INSERT;
    bp.M = 8;
    bp.ef_construction = 64;
    bp.threads = 1;
    bp.seed = 7;
    kiln_index *a = NULL, *b = NULL, *back = NULL;
    CHECK_OK(ctx, kiln_index_build(ctx, rows, n, dim, &bp, &a));
    CHECK_OK(ctx, kiln_index_build(ctx, rows, n, dim, &bp, &b));
    REQUIRE(a && b);
    const char *pa = tmp_path("built_a.kiln"), *pb = tmp_path("built_b.kiln");
    CHECK_OK(ctx, kiln_index_save(a, pa));
    CHECK_OK(ctx, kiln_index_save(b, pb));
    size_t la, lb;
    uint8_t *fa = slurp(pa, &la), *fb = slurp(pb, &lb);
    CHECK_MSG(la == lb && memcmp(fa, fb, la) == 0,
              "two builds with seed 7 and one thread saved different files");
    free(fa);
    free(fb);

    CHECK_OK(ctx, kiln_index_load(ctx, pa, &back));
    REQUIRE(back);
    CHECK(same_index(a, back));
    CHECK_OK(ctx, kiln_index_check(back));
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    sp.k = 10;
    sp.ef = 50;
    int64_t lab_a[BUILT_QUERIES * 10], lab_b[BUILT_QUERIES * 10];
    float da[BUILT_QUERIES * 10], db[BUILT_QUERIES * 10];
    CHECK_OK(ctx, kiln_index_search(a, queries, BUILT_QUERIES, &sp, lab_a, da));
    CHECK_OK(ctx, kiln_index_search(back, queries, BUILT_QUERIES, &sp, lab_b, db));
    CHECK(memcmp(lab_a, lab_b, sizeof lab_a) == 0 && memcmp(da, db, sizeof da) == 0);
    /* The read path (the big-endian and no-mmap fallback) and a verifying
     * open search alike too. */
    kiln_index *readback = NULL, *verified = NULL;
    CHECK_OK(ctx, kiln_index_open(ctx, pa, KILN_LOAD_READ, &readback));
    CHECK_OK(ctx, kiln_index_open(ctx, pa, KILN_LOAD_VERIFY, &verified));
    REQUIRE(readback && verified);
    CHECK(back->map != NULL && readback->map == NULL && verified->map != NULL);
    CHECK(same_index(a, readback) && same_index(a, verified));
    CHECK_OK(ctx, kiln_index_search(readback, queries, BUILT_QUERIES, &sp, lab_b, db));
    CHECK(memcmp(lab_a, lab_b, sizeof lab_a) == 0 && memcmp(da, db, sizeof da) == 0);
    CHECK_OK(ctx, kiln_index_search(verified, queries, BUILT_QUERIES, &sp, lab_b, db));
    CHECK(memcmp(lab_a, lab_b, sizeof lab_a) == 0 && memcmp(da, db, sizeof da) == 0);
    kiln_index_stats sa, sb, sr;
    CHECK_OK(ctx, kiln_index_stats_get(a, &sa));
    CHECK_OK(ctx, kiln_index_stats_get(back, &sb));
    CHECK_OK(ctx, kiln_index_stats_get(readback, &sr));
    CHECK(sa.levels == sb.levels && sa.levels >= 2 &&
          memcmp(sa.nodes_per_level, sb.nodes_per_level, sizeof sa.nodes_per_level) == 0);
    /* memory_bytes counts heap only: a mapped index holds its upper
     * offsets, not its vectors and links. */
    CHECK_MSG(sr.memory_bytes == sa.memory_bytes &&
                  sb.memory_bytes + n * dim * sizeof(float) <= sr.memory_bytes &&
                  sb.memory_bytes >= n * sizeof(uint64_t),
              "memory_bytes: built %llu, read %llu, mapped %llu",
              (unsigned long long)sa.memory_bytes, (unsigned long long)sr.memory_bytes,
              (unsigned long long)sb.memory_bytes);
    kiln_index_free(readback);
    kiln_index_free(verified);

    kiln_index_free(back);
    kiln_index_free(b);
    kiln_index_free(a);
    free(rows);
}

int main(void) {
    make_test_dir();
    kiln_ctx *ctx = NULL;
    REQUIRE(kiln_ctx_new(&ctx) == KILN_OK);
    test_crc32c();
    test_round_trips(ctx);
    test_damage(ctx);
    test_save(ctx);
    test_built(ctx);
    kiln_ctx_free(ctx);
    return check_report("test_index_file");
}
