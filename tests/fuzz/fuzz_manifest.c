/* fuzz_manifest.c -- fuzz target for the shard set manifest reader
 * (graph/shardset.c), the file `kiln search SET` and `kiln_shardset_open`
 * read before they open any shard.
 *
 * Each input is read three ways:
 *  - parsed in memory (kiln_manifest_parse): an accepted manifest must hold
 *    1..KILN_MAX_SHARDS shards with plain names whose counts add up;
 *  - with its last line replaced by the CRC-32C of the bytes before it, so
 *    that mutations get past the checksum to the fields;
 *  - the fixed input written beside a real two-shard set and opened with
 *    kiln_shardset_open (plain and verifying): whatever it accepts must
 *    search without a crash, and name only labels below its count.
 * A broken promise calls abort(), which libFuzzer and the replay driver
 * report.
 *
 * Design decisions:
 *  1. One small set per process (200 x 4 floats, insert method, 2 shards),
 *     built on the first input in the scratch folder, so that names in the
 *     seeds resolve to real shard files and the size and header checks are
 *     reached. Its files are removed at exit.
 *  2. The seeds are the manifest kiln_shardset_build wrote for that set and a
 *     one-shard variant, so mutations start from the real layout. Every
 *     manifest the parser accepts is written back and parsed again, which
 *     must give the same manifest.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "fuzz_util.h"
#include "../../common/crc32c_internal.h"
#include "../../graph/shardset_internal.h"

#define FUZZ_N   200
#define FUZZ_DIM 4

static char set_dir[4096], set_path[4200], base_path[4200];
static char shard_paths[2][4300];

static void set_remove(void) {
    for (int i = 0; i < 2; i++)
        unlink(shard_paths[i]);
    unlink(set_path);
    unlink(base_path);
    rmdir(set_dir);
}

/* Decision 1: the set the seeds name, built once per process in a folder
 * of its own, so its files have the same names in every process ("set",
 * "set-0-of-2.kiln", "set-1-of-2.kiln") and a saved corpus finds them. */
static const char *set_get(void) {
    if (set_path[0])
        return set_path;
    snprintf(set_dir, sizeof set_dir, "%s", fuzz_path("setdir"));
    mkdir(set_dir, 0700);
    snprintf(set_path, sizeof set_path, "%s/set", set_dir);
    snprintf(base_path, sizeof base_path, "%s/base.fbin", set_dir);
    for (int i = 0; i < 2; i++)
        snprintf(shard_paths[i], sizeof shard_paths[i], "%s-%d-of-2.kiln", set_path, i);
    atexit(set_remove);
    float v[FUZZ_N * FUZZ_DIM];
    uint32_t x = 12345;
    for (size_t i = 0; i < FUZZ_N * FUZZ_DIM; i++) {
        x = x * 1664525u + 1013904223u;
        v[i] = (float)(x >> 8) / (float)(1u << 24);
    }
    kiln_ctx *ctx = fuzz_ctx();
    kiln_dataset *ds = NULL;
    if (kiln_dataset_write(ctx, base_path, KILN_FORMAT_FBIN, KILN_DTYPE_F32, v, FUZZ_N, FUZZ_DIM) ||
        kiln_dataset_open(ctx, base_path, KILN_FORMAT_FBIN, 0, &ds))
        abort();
    kiln_build_params p;
    kiln_build_params_init(&p);
    p.method = KILN_METHOD_INSERT;
    p.M = 4;
    p.ef_construction = 16;
    p.threads = 1;
    if (kiln_shardset_build(ctx, ds, &p, 2, -1, set_path, NULL) != KILN_OK)
        abort();
    kiln_dataset_free(ds);
    return set_path;
}

/* The set's manifest as kiln_shardset_build wrote it. */
static uint8_t *manifest_bytes(size_t *len) {
    static uint8_t *saved;
    static size_t saved_len;
    if (!saved && !(saved = read_file(set_get(), &saved_len)))
        abort();
    uint8_t *copy = malloc(saved_len);
    if (!copy)
        abort();
    memcpy(copy, saved, saved_len);
    *len = saved_len;
    return copy;
}

/* The input with its last line made the CRC of what comes before it. */
static uint8_t *fix_crc(const uint8_t *data, size_t size, size_t *out_len) {
    size_t body = size;
    if (body && data[body - 1] == '\n')
        body--;
    while (body && data[body - 1] != '\n')
        body--;
    uint8_t *out = malloc(body + 17);
    if (!out)
        abort();
    memcpy(out, data, body);
    snprintf((char *)out + body, 17, "crc32c %08x\n", kiln_crc32c(0, data, body));
    *out_len = body + 16;
    return out;
}

/* Parses, and for an accepted manifest checks what the parser promises,
 * then writes it back and parses that: the same manifest (round trip). */
static void parse_once(const uint8_t *data, size_t size) {
    kiln_ctx *ctx = fuzz_ctx();
    shard_manifest m;
    if (kiln_manifest_parse(ctx, "fuzz", (const char *)data, size, &m) != KILN_OK) {
        if (m.entry || m.shards)
            abort();
        return;
    }
    uint64_t sum = 0;
    if (m.shards < 1 || m.shards > KILN_MAX_SHARDS || m.dim < 1)
        abort();
    for (uint32_t s = 0; s < m.shards; s++) {
        if (!kiln_shard_name_ok(m.entry[s].file, strlen(m.entry[s].file)))
            abort();
        sum += m.entry[s].count;
    }
    if (sum != m.count)
        abort();
    const char *again = fuzz_path("roundtrip");
    if (kiln_manifest_write(ctx, again, &m) != KILN_OK)
        abort();
    size_t len;
    uint8_t *text = read_file(again, &len);
    shard_manifest m2;
    if (!text || kiln_manifest_parse(ctx, again, (const char *)text, len, &m2) != KILN_OK ||
        m2.shards != m.shards || m2.count != m.count || m2.dim != m.dim || m2.metric != m.metric ||
        memcmp(m2.entry, m.entry, m.shards * sizeof *m.entry) != 0)
        abort();
    free(text);
    free(m2.entry);
    free(m.entry);
}

static void open_once(const uint8_t *data, size_t size, uint32_t flags) {
    const char *path = set_get();
    if (!write_file(path, data, size))
        abort();
    kiln_shardset *set = NULL;
    if (kiln_shardset_open(fuzz_ctx(), path, flags, &set) != KILN_OK) {
        if (set)
            abort();
        return;
    }
    const size_t dim = kiln_shardset_dim(set);
    float *q = calloc(dim, sizeof *q);
    if (!q)
        abort();
    kiln_search_params sp;
    kiln_search_params_init(&sp);
    sp.k = FUZZ_K;
    sp.ef = FUZZ_EF;
    sp.threads = 2;
    int64_t labels[FUZZ_K];
    float dists[FUZZ_K];
    if (kiln_shardset_search(set, q, 1, &sp, labels, dists) != KILN_OK)
        abort();
    for (int j = 0; j < FUZZ_K; j++)
        if (labels[j] < -1 || (labels[j] >= 0 && (uint64_t)labels[j] >= FUZZ_N))
            abort();
    free(q);
    kiln_shardset_free(set);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    set_get();
    parse_once(data, size);
    size_t len;
    uint8_t *fixed = fix_crc(data, size, &len);
    parse_once(fixed, len);
    open_once(fixed, len, 0);
    open_once(fixed, len, KILN_LOAD_VERIFY);
    free(fixed);
    return 0;
}

int kiln_fuzz_seed(size_t i, uint8_t **buf, size_t *len) {
    if (i >= 2)
        return 0;
    *buf = manifest_bytes(len);
    if (i == 1) { /* one shard: shard 0 only, its count the total */
        shard_manifest m;
        if (kiln_manifest_parse(fuzz_ctx(), "seed", (const char *)*buf, *len, &m) != KILN_OK)
            abort();
        m.shards = 1;
        m.count = m.entry[0].count;
        const char *path = fuzz_path("seed1");
        if (kiln_manifest_write(fuzz_ctx(), path, &m) != KILN_OK)
            abort();
        free(m.entry);
        free(*buf);
        if (!(*buf = read_file(path, len)))
            abort();
    }
    return 1;
}
