/* shardset.c -- shard sets: the label hash, the manifest's reader and writer,
 * and the fan-out search that merges the shards' results by distance. The
 * manifest's layout and the rules its reader enforces are in docs/FORMAT.md
 * ("Shard set manifest"); the builder is graph/shard_build.c.
 *
 * Design decisions:
 *  1. The hash is MurmurHash3's 64-bit finalizer (fmix64) of the label, mod
 *     N: a bijection of the 64 bits with full avalanche, so consecutive row
 *     numbers spread evenly (siftsmall's 10,000 rows split 4,994 / 5,006 in
 *     two), and three lines any client can write (Python's included) to
 *     route an add or a delete to its shard.
 *  2. The manifest is text, one "key value" line each, in a fixed order,
 *     ending with a CRC-32C line over every byte before it: a person can
 *     read it and diff two of them, and the reader still trusts nothing. It
 *     is at most 2 MiB, every number is plain decimal checked for overflow
 *     and range, every shard's name is a plain file name (no '/', not "."
 *     or "..", no two alike), resolved in the manifest's folder, so a
 *     crafted manifest names only files there (a symbolic link there is
 *     followed, as any index path is). The writer refuses what the reader
 *     would. The first line carries the version, and a later one is refused
 *     as such. Versions: 1 (kiln 0.1, issue 13).
 *  3. A shard is pinned by its file size and its header's CRC-32C. The
 *     header carries the section table's CRC, which carries every
 *     section's, so the header CRC names the whole file's content, and
 *     checking it costs one 128-byte read: a replaced, rebuilt or truncated
 *     shard is refused at open, a 100 GB set still opens in milliseconds.
 *     A flipped bit inside a section is what KILN_LOAD_VERIFY (kiln check,
 *     --verify) finds, as for a single index.
 *  4. Search runs (shard, block of queries) tasks on one team of threads,
 *     each a one-thread kiln_index_search, then merges every query's S x k
 *     candidates by (distance, label), padding last. Blocks bound the
 *     scratch to SEARCH_SCRATCH entries whatever nq is (and to one query's
 *     S x k lists, per thread, when those alone are more). One shard is
 *     just kiln_index_search, so a single index opened as a set answers
 *     with its bytes (equal distances in its order, not by label).
 *  5. Writes through a set (kiln_shardset_add, _delete, _update) route each
 *     label to shard kiln_shard_of(label, N) and change that shard in
 *     memory as kiln_index_add and the rest do; kiln_shardset_save then
 *     writes each changed shard to a new file named by its content
 *     ("<set>-<s>-of-<N>-<header crc>.kiln"), replaces the manifest
 *     atomically, and only then removes the files it no longer names. A
 *     reader sees the old set or the new one, never a mix; a crash leaves at
 *     most files no manifest names (the old ones, or the new ones not yet
 *     adopted); a search holding the old files mapped keeps reading them
 *     (one that read the old manifest but had not opened every shard when
 *     their files went fails to open it, and opens the set again). A file
 *     of the new name already there holds the same bytes (the name is its
 *     header's CRC) and is kept as it is, never removed by this save. One
 *     writer at a time: a save holds an flock on "<manifest>.lock", and
 *     refuses to write over a manifest another writer has replaced since
 *     this set was opened (its inode changed), so no update is lost.
 */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hnsw_internal.h"
#include "shardset_internal.h"
#include "../common/afile_internal.h"
#include "../common/crc32c_internal.h"
#include "../common/ctx_internal.h"
#include "../common/rng_internal.h"

/* ==== Tunables ==== */

/* Candidate entries (label and distance, 12 bytes) the search holds per
 * block of queries: 4M entries, 48 MiB, a block of 100K queries at k = 10
 * over 4 shards, so that a batch of any size streams through fixed scratch
 * while a block still gives every thread many tasks. (k x N above it is
 * held whole: one query's lists.) */
#define SEARCH_SCRATCH ((size_t)1 << 22)
/* Tasks per thread the search aims for, so that shards of unequal speed
 * still keep every thread busy. */
#define SEARCH_TASKS_PER_THREAD 4

/* ==== Types ==== */

struct kiln_shardset {
    kiln_ctx *ctx;
    uint32_t n;
    kiln_index **shard;
    char **path;
    uint32_t dim;
    kiln_metric metric;
    bool manifest;
    /* Writes through the set (decision 5): the manifest's entries as
     * opened or last saved, and the shards changed since. */
    shard_entry *entry;
    bool *dirty;
    char *manifest_path; /* as opened, or as last saved to */
    dev_t man_dev;       /* and that file's identity then (kiln_shardset_save) */
    ino_t man_ino;
};

/* A manifest being parsed: the text, the current line and its number. */
typedef struct parser {
    kiln_ctx *ctx;
    const char *path;
    const char *p, *end;    /* the rest of the text */
    const char *line, *eol; /* the current line, without its '\n' */
    const char *tok;        /* the next token on the line */
    unsigned lineno;
} parser;

/* One entry of a query's merge (decision 4). */
/* ==== The hash (decision 1) ==== */

uint32_t kiln_shard_of(int64_t label, uint32_t nshards) {
    if (nshards <= 1)
        return 0;
    return (uint32_t)(kiln_fmix64((uint64_t)label) % nshards);
}

/* ==== Manifest (decision 2) ==== */

bool kiln_shard_name_ok(const char *name, size_t len) {
    if (len == 0 || len > SHARDSET_NAME_MAX)
        return false;
    if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
        return false;
    for (size_t i = 0; i < len; i++) {
        const char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* Quotes up to 48 bytes of [s, e) for a message, non-printables as '?'. */
static const char *quote(const char *s, const char *e, char *buf, size_t cap) {
    size_t n = 0;
    for (const char *c = s; c < e && n + 4 < cap && n < 48; c++)
        buf[n++] = (*c >= 0x20 && *c < 0x7f) ? *c : '?';
    if (e - s > 48)
        buf[n++] = '.', buf[n++] = '.', buf[n++] = '.';
    buf[n] = '\0';
    return buf;
}

static kiln_status bad_line(const parser *ps, const char *want) {
    char q[64];
    return kiln_fail(ps->ctx, KILN_E_FORMAT, "%s: line %u: expected %s, found '%s'", ps->path,
                     ps->lineno, want, quote(ps->line, ps->eol, q, sizeof q));
}

/* Steps to the next line, which must end in '\n'. */
static kiln_status next_line(parser *ps, const char *want) {
    if (ps->p >= ps->end)
        return kiln_fail(ps->ctx, KILN_E_FORMAT, "%s: ends after line %u, before %s", ps->path,
                         ps->lineno, want);
    const char *nl = memchr(ps->p, '\n', (size_t)(ps->end - ps->p));
    ps->lineno++;
    ps->line = ps->tok = ps->p;
    ps->eol = nl ? nl : ps->end;
    if (!nl)
        return kiln_fail(ps->ctx, KILN_E_FORMAT,
                         "%s: line %u does not end in a newline (truncated)", ps->path, ps->lineno);
    ps->p = nl + 1;
    return KILN_OK;
}

/* The next space-separated token of the line (exactly one space between). */
static bool token(parser *ps, const char **t, size_t *len) {
    if (ps->tok >= ps->eol)
        return false;
    if (ps->tok > ps->line) {
        if (*ps->tok != ' ')
            return false;
        ps->tok++;
    }
    const char *s = ps->tok;
    while (ps->tok < ps->eol && *ps->tok != ' ')
        ps->tok++;
    *t = s;
    *len = (size_t)(ps->tok - s);
    return *len > 0;
}

static bool word(parser *ps, const char *w) {
    const char *t;
    size_t len;
    return token(ps, &t, &len) && len == strlen(w) && memcmp(t, w, len) == 0;
}

/* Plain decimal, no sign, no leading zero, at most max (a larger value
 * leaves *v above max and returns false, for the caller's range message). */
static bool number(parser *ps, uint64_t max, uint64_t *v) {
    const char *t;
    size_t len;
    *v = 0;
    if (!token(ps, &t, &len) || len > 20 || (len > 1 && t[0] == '0'))
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < len; i++) {
        if (t[i] < '0' || t[i] > '9')
            return false;
        if (__builtin_mul_overflow(x, 10, &x) ||
            __builtin_add_overflow(x, (uint64_t)(t[i] - '0'), &x)) {
            *v = UINT64_MAX; /* beyond any max */
            return false;
        }
    }
    *v = x;
    return x <= max;
}

/* Exactly eight lowercase hex digits at t. */
static bool hex8(const char *t, uint32_t *v) {
    uint32_t x = 0;
    for (size_t i = 0; i < 8; i++) {
        const char c = t[i];
        const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return false;
        x = x << 4 | (uint32_t)d;
    }
    *v = x;
    return true;
}

static bool hex32(parser *ps, uint32_t *v) {
    const char *t;
    size_t len;
    return token(ps, &t, &len) && len == 8 && hex8(t, v);
}

static bool line_done(const parser *ps) { return ps->tok == ps->eol; }

/* "key N" with min <= N <= max on a line of its own: KILN_E_FORMAT for
 * another line, KILN_E_RANGE for a number outside the limits. */
static kiln_status keyed(parser *ps, const char *key, uint64_t min, uint64_t max, const char *want,
                         uint64_t *v) {
    kiln_status st = next_line(ps, want);
    if (st)
        return st;
    if (!word(ps, key))
        return bad_line(ps, want);
    const bool in = number(ps, max, v);
    if (!line_done(ps) || (!in && *v <= max))
        return bad_line(ps, want);
    if (!in || *v < min)
        return kiln_fail(ps->ctx, KILN_E_RANGE, "%s: line %u: %s is out of range (%llu to %llu)",
                         ps->path, ps->lineno, key, (unsigned long long)min,
                         (unsigned long long)max);
    return KILN_OK;
}

/* The version line (decision 2): version 1, the only one so far. A later
 * version's manifest is KILN_E_VERSION, not a malformed file. */
static kiln_status check_version(kiln_ctx *ctx, const char *path, const char *text, size_t len) {
    const size_t magic_len = strlen(SHARDSET_MAGIC), pre = strlen(SHARDSET_PREFIX);
    if (len >= magic_len && memcmp(text, SHARDSET_MAGIC, magic_len) == 0)
        return KILN_OK;
    if (len > pre && memcmp(text, SHARDSET_PREFIX, pre) == 0) {
        const char *nl = memchr(text, '\n', len);
        char q[64];
        return kiln_fail(ctx, KILN_E_VERSION,
                         "%s: shard set manifest version '%s' is not supported (this kiln reads "
                         "version 1)",
                         path, quote(text + pre, nl ? nl : text + len, q, sizeof q));
    }
    return kiln_fail(ctx, KILN_E_FORMAT, "%s: not a kiln shard set manifest (bad first line)",
                     path);
}

/* The metric's exact name on the line: l2, ip or cos. */
static bool metric_token(parser *ps, kiln_metric *m) {
    const char *t;
    size_t tl;
    if (!token(ps, &t, &tl))
        return false;
    const kiln_metric all[] = {KILN_METRIC_L2, KILN_METRIC_IP, KILN_METRIC_COS};
    for (size_t i = 0; i < 3; i++) {
        const char *name = kiln_metric_name(all[i]);
        if (tl == strlen(name) && memcmp(t, name, tl) == 0) {
            *m = all[i];
            return true;
        }
    }
    return false;
}

kiln_status kiln_manifest_parse(kiln_ctx *ctx, const char *path, const char *text, size_t len,
                                shard_manifest *m) {
    memset(m, 0, sizeof *m);
    parser ps = {.ctx = ctx, .path = path, .p = text, .end = text + len};
    kiln_status st = check_version(ctx, path, text, len);
    if (st)
        return st;
    /* The CRC line closes the file: check it before reading anything else.
     * The version line ends in '\n', so a line before the last exists. */
    const char *crc_line = NULL;
    const size_t crc_len = strlen("crc32c 01234567\n");
    if (len >= strlen(SHARDSET_MAGIC) + crc_len && text[len - 1] == '\n') {
        const char *c = text + len - 2;
        while (*c != '\n')
            c--;
        crc_line = c + 1;
    }
    uint32_t stored = 0;
    if (!crc_line || (size_t)(text + len - crc_line) != crc_len ||
        memcmp(crc_line, "crc32c ", 7) != 0 || !hex8(crc_line + 7, &stored))
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "%s: the last line is not 'crc32c XXXXXXXX' (truncated or appended to)",
                         path);
    const uint32_t computed = kiln_crc32c(0, text, (size_t)(crc_line - text));
    if (stored != computed)
        return kiln_fail(ctx, KILN_E_CHECKSUM,
                         "%s: manifest checksum mismatch (stored %08x, computed %08x)", path,
                         stored, computed);
    ps.end = crc_line;

    if ((st = next_line(&ps, "the first line")) ||
        (st = next_line(&ps, "'hash " SHARDSET_HASH "'")))
        return st;
    if (!word(&ps, "hash") || !word(&ps, SHARDSET_HASH) || !line_done(&ps)) {
        const char *t;
        size_t tl;
        char q[64];
        ps.tok = ps.line;
        if (word(&ps, "hash") && token(&ps, &t, &tl) && line_done(&ps))
            return kiln_fail(ctx, KILN_E_UNSUPPORTED,
                             "%s: line 2: hash '%s' is not one this kiln knows (" SHARDSET_HASH ")",
                             path, quote(t, t + tl, q, sizeof q));
        return bad_line(&ps, "'hash " SHARDSET_HASH "'");
    }
    uint64_t shards, count, dim;
    if ((st = keyed(&ps, "shards", 1, KILN_MAX_SHARDS, "'shards N'", &shards)) ||
        (st = keyed(&ps, "count", 0, (uint64_t)(UINT32_MAX - 1) * KILN_MAX_SHARDS, "'count N'",
                    &count)) ||
        (st = keyed(&ps, "dim", 1, KILN_MAX_DIM, "'dim D'", &dim)))
        return st;
    kiln_metric km;
    if ((st = next_line(&ps, "'metric l2|ip|cos'")))
        return st;
    if (!word(&ps, "metric") || !metric_token(&ps, &km) || !line_done(&ps))
        return bad_line(&ps, "'metric l2|ip|cos'");

    shard_entry *e = calloc((size_t)shards, sizeof *e);
    if (!e)
        return kiln_fail(ctx, KILN_E_NOMEM, "%s: out of memory for %llu shard entries", path,
                         (unsigned long long)shards);
    uint64_t sum = 0;
    for (uint32_t s = 0; s < shards; s++) {
        const char *want = "'shard I count N bytes B header_crc32c X file NAME'";
        uint64_t idx, c, b;
        if ((st = next_line(&ps, want)))
            goto fail;
        const char *t;
        size_t tl;
        bool in_count = false, in_bytes = false;
        if (!word(&ps, "shard") || !number(&ps, UINT32_MAX, &idx) || !word(&ps, "count") ||
            (!(in_count = number(&ps, UINT32_MAX - 1, &c)) && c <= UINT32_MAX - 1) ||
            !word(&ps, "bytes") || (!(in_bytes = number(&ps, INT64_MAX, &b)) && b <= INT64_MAX) ||
            !word(&ps, "header_crc32c") || !hex32(&ps, &e[s].header_crc) || !word(&ps, "file") ||
            !token(&ps, &t, &tl) || !line_done(&ps)) {
            st = bad_line(&ps, want);
            goto fail;
        }
        if (!in_count || !in_bytes) {
            st = kiln_fail(
                ctx, KILN_E_RANGE, "%s: line %u: shard %u's %s is out of range (at most %llu)",
                path, ps.lineno, s, in_count ? "bytes" : "count",
                in_count ? (unsigned long long)INT64_MAX : (unsigned long long)(UINT32_MAX - 1));
            goto fail;
        }
        if (idx != s) {
            st = kiln_fail(ctx, KILN_E_FORMAT, "%s: line %u: shard %llu where shard %u belongs",
                           path, ps.lineno, (unsigned long long)idx, s);
            goto fail;
        }
        if (!kiln_shard_name_ok(t, tl)) {
            st =
                kiln_fail(ctx, KILN_E_FORMAT,
                          "%s: line %u: shard %u's file is not a plain file name of [A-Za-z0-9._-] "
                          "(shards live beside the manifest)",
                          path, ps.lineno, s);
            goto fail;
        }
        memcpy(e[s].file, t, tl);
        e[s].file[tl] = '\0';
        for (uint32_t r = 0; r < s; r++)
            if (strcmp(e[r].file, e[s].file) == 0) {
                st = kiln_fail(ctx, KILN_E_FORMAT, "%s: line %u: shards %u and %u name one file",
                               path, ps.lineno, r, s);
                goto fail;
            }
        e[s].count = c;
        e[s].file_bytes = b;
        sum += c;
    }
    if (ps.p != ps.end) {
        ps.lineno++;
        st = kiln_fail(ctx, KILN_E_FORMAT, "%s: line %u: more shard lines than 'shards %llu'", path,
                       ps.lineno, (unsigned long long)shards);
        goto fail;
    }
    if (sum != count) {
        st = kiln_fail(ctx, KILN_E_FORMAT, "%s: the shards hold %llu vectors, not 'count %llu'",
                       path, (unsigned long long)sum, (unsigned long long)count);
        goto fail;
    }
    m->shards = (uint32_t)shards;
    m->count = count;
    m->dim = (uint32_t)dim;
    m->metric = km;
    m->entry = e;
    return KILN_OK;
fail:
    free(e);
    return st;
}

kiln_status kiln_manifest_write(kiln_ctx *ctx, const char *path, const shard_manifest *m) {
    /* What the reader would refuse is not written (decision 2). */
    if (m->shards < 1 || m->shards > KILN_MAX_SHARDS || m->dim < 1 || m->dim > KILN_MAX_DIM)
        return kiln_fail(ctx, KILN_E_ARG, "%s: a manifest of %u shards of dim %u", path, m->shards,
                         m->dim);
    for (uint32_t s = 0; s < m->shards; s++)
        if (!kiln_shard_name_ok(m->entry[s].file, strlen(m->entry[s].file)))
            return kiln_fail(ctx, KILN_E_ARG, "%s: shard %u's file '%s' is not a plain name", path,
                             s, m->entry[s].file);
    const size_t cap = 256 + (size_t)m->shards * (SHARDSET_NAME_MAX + 128);
    char *buf = malloc(cap);
    if (!buf)
        return kiln_fail(ctx, KILN_E_NOMEM, "%s: out of memory for the manifest", path);
    size_t n = (size_t)snprintf(
        buf, cap,
        SHARDSET_MAGIC "hash " SHARDSET_HASH "\nshards %u\ncount %llu\ndim %u\nmetric %s\n",
        m->shards, (unsigned long long)m->count, m->dim, kiln_metric_name(m->metric));
    for (uint32_t s = 0; s < m->shards; s++)
        n += (size_t)snprintf(
            buf + n, cap - n, "shard %u count %llu bytes %llu header_crc32c %08x file %s\n", s,
            (unsigned long long)m->entry[s].count, (unsigned long long)m->entry[s].file_bytes,
            m->entry[s].header_crc, m->entry[s].file);
    n += (size_t)snprintf(buf + n, cap - n, "crc32c %08x\n", kiln_crc32c(0, buf, n));
    if (n > SHARDSET_MANIFEST_LIMIT) { /* cannot happen with names within their bound */
        free(buf);
        return kiln_fail(ctx, KILN_E_INTERNAL, "%s: the manifest came to %zu bytes", path, n);
    }
    kiln_afile *af;
    kiln_status st = kiln_afile_open(ctx, path, &af);
    if (!st) {
        st = kiln_afile_write(af, buf, n);
        if (st)
            kiln_afile_abort(af);
        else
            st = kiln_afile_commit(af);
    }
    free(buf);
    return st;
}

/* ==== Opening ==== */

void kiln_shardset_free(kiln_shardset *set) {
    if (!set)
        return;
    for (uint32_t s = 0; s < set->n; s++) {
        kiln_index_free(set->shard[s]);
        free(set->path[s]);
    }
    free(set->shard);
    free(set->path);
    free(set->entry);
    free(set->dirty);
    free(set->manifest_path);
    free(set);
}

static kiln_status set_alloc(kiln_ctx *ctx, uint32_t n, kiln_shardset **out) {
    kiln_shardset *set = calloc(1, sizeof *set);
    if (set) {
        set->ctx = ctx;
        set->shard = calloc(n, sizeof *set->shard);
        set->path = calloc(n, sizeof *set->path);
        set->dirty = calloc(n, sizeof *set->dirty);
        if (set->shard && set->path && set->dirty)
            set->n = n;
    }
    if (!set || !set->n) {
        kiln_shardset_free(set);
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory for a set of %u shards", n);
    }
    *out = set;
    return KILN_OK;
}

/* Reads a whole manifest of at most SHARDSET_MANIFEST_LIMIT bytes. */
static kiln_status read_manifest(kiln_ctx *ctx, const char *path, int fd, uint64_t size,
                                 char **text) {
    if (size > SHARDSET_MANIFEST_LIMIT)
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "%s: a shard set manifest of %llu bytes, more than the 2 MiB one may have",
                         path, (unsigned long long)size);
    char *buf = malloc(size ? (size_t)size : 1);
    if (!buf)
        return kiln_fail(ctx, KILN_E_NOMEM, "%s: out of memory reading the manifest", path);
    const kiln_status st = kiln_pread_full(ctx, fd, path, buf, (size_t)size, 0);
    if (st) {
        free(buf);
        return st;
    }
    *text = buf;
    return KILN_OK;
}

/* Opens shard s of m beside the manifest and checks it against its entry
 * (decision 3). */
/* dir/name into a fresh string, or NULL. */
static char *join_path(const char *dir, size_t dirlen, const char *name) {
    const size_t cap = dirlen + strlen(name) + 2;
    char *p = malloc(cap);
    if (p)
        snprintf(p, cap, "%.*s%s%s", (int)dirlen, dir, dirlen && dir[dirlen - 1] != '/' ? "/" : "",
                 name);
    return p;
}

/* Bytes of path's folder part ("" for a bare name, "/" kept for the root):
 * a shard's file is join_path(path, manifest_dirlen(path), name). */
static size_t manifest_dirlen(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? (size_t)(slash - path) + (slash == path) : 0;
}

static kiln_status open_shard(kiln_shardset *set, const char *manifest, const shard_manifest *m,
                              uint32_t s, uint32_t flags) {
    kiln_ctx *ctx = set->ctx;
    const shard_entry *e = &m->entry[s];
    if (!(set->path[s] = join_path(manifest, manifest_dirlen(manifest), e->file)))
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory for a shard's path");
    const char *p = set->path[s];
    kiln_status st = kiln_index_open(ctx, p, flags, &set->shard[s]);
    if (st) {
        char why[KILN_ERRMSG_MAX];
        snprintf(why, sizeof why, "%s", kiln_errmsg(ctx));
        return kiln_fail(ctx, st, "%s: shard %u of %u: %s", manifest, s, m->shards, why);
    }
    const struct kiln_index *ix = set->shard[s];
    if (ix->file_bytes != e->file_bytes || ix->file_header_crc != e->header_crc)
        return kiln_fail(ctx, KILN_E_CHECKSUM,
                         "%s: shard %u (%s) is %llu bytes with header checksum %08x, but the "
                         "manifest records %llu bytes and %08x: not the shard this set was "
                         "built with",
                         manifest, s, p, (unsigned long long)ix->file_bytes, ix->file_header_crc,
                         (unsigned long long)e->file_bytes, e->header_crc);
    if (ix->count != e->count || ix->dim != m->dim || ix->metric != m->metric)
        return kiln_fail(ctx, KILN_E_FORMAT,
                         "%s: shard %u (%s) holds %llu x %u %s vectors, but the manifest says "
                         "%llu x %u %s",
                         manifest, s, p, (unsigned long long)ix->count, ix->dim,
                         kiln_metric_name(ix->metric), (unsigned long long)e->count, m->dim,
                         kiln_metric_name(m->metric));
    if (flags & KILN_LOAD_VERIFY)
        for (uint64_t i = 0; i < ix->count; i++)
            if (!kiln_slot_free(ix, i) && kiln_shard_of(ix->labels[i], m->shards) != s)
                return kiln_fail(ctx, KILN_E_FORMAT,
                                 "%s: shard %u (%s): node %llu has label %lld, which hashes to "
                                 "shard %u",
                                 manifest, s, p, (unsigned long long)i, (long long)ix->labels[i],
                                 kiln_shard_of(ix->labels[i], m->shards));
    return KILN_OK;
}

kiln_status kiln_shardset_open(kiln_ctx *ctx, const char *path, uint32_t flags,
                               kiln_shardset **out) {
    if (!out)
        return kiln_fail(ctx, KILN_E_ARG, "opening a shard set: the result pointer is NULL");
    *out = NULL;
    if (!path || !*path)
        return kiln_fail(ctx, KILN_E_ARG, "opening a shard set: empty path");
    int fd;
    uint64_t size;
    kiln_status st = kiln_open_regular(ctx, path, &fd, &size);
    if (st)
        return st;
    const size_t pre = strlen(SHARDSET_PREFIX);
    char head[32] = "";
    const ssize_t got = pread(fd, head, pre, 0);
    kiln_shardset *set = NULL;
    if (got != (ssize_t)pre || memcmp(head, SHARDSET_PREFIX, pre) != 0) {
        close(fd); /* not a manifest: one index, a set of one */
        if ((st = set_alloc(ctx, 1, &set)))
            return st;
        if (!(set->path[0] = strdup(path))) {
            kiln_shardset_free(set);
            return kiln_fail(ctx, KILN_E_NOMEM, "out of memory for a shard's path");
        }
        if ((st = kiln_index_open(ctx, path, flags, &set->shard[0]))) {
            kiln_shardset_free(set);
            return st;
        }
        set->dim = set->shard[0]->dim;
        set->metric = set->shard[0]->metric;
        *out = set;
        return KILN_OK;
    }
    char *text = NULL;
    struct stat man; /* the file read, for kiln_shardset_save */
    if (fstat(fd, &man) != 0)
        memset(&man, 0, sizeof man);
    st = read_manifest(ctx, path, fd, size, &text);
    close(fd);
    if (st)
        return st;
    shard_manifest m;
    st = kiln_manifest_parse(ctx, path, text, (size_t)size, &m);
    free(text);
    if (st)
        return st;
    if (!(st = set_alloc(ctx, m.shards, &set))) {
        set->manifest = true;
        set->dim = m.dim;
        set->metric = m.metric;
        for (uint32_t s = 0; s < m.shards && !st; s++)
            st = open_shard(set, path, &m, s, flags);
        set->entry = m.entry; /* the set's now */
        m.entry = NULL;
        if (!st && !(set->manifest_path = strdup(path)))
            st = kiln_fail(ctx, KILN_E_NOMEM, "out of memory for a path");
        set->man_dev = man.st_dev;
        set->man_ino = man.st_ino;
    }
    free(m.entry);
    if (st) {
        kiln_shardset_free(set);
        return st;
    }
    *out = set;
    return KILN_OK;
}

uint32_t kiln_shardset_shards(const kiln_shardset *set) { return set ? set->n : 0; }

const kiln_index *kiln_shardset_shard(const kiln_shardset *set, uint32_t i) {
    return set && i < set->n ? set->shard[i] : NULL;
}

const char *kiln_shardset_shard_path(const kiln_shardset *set, uint32_t i) {
    return set && i < set->n ? set->path[i] : NULL;
}

int kiln_shardset_has_manifest(const kiln_shardset *set) { return set && set->manifest; }
size_t kiln_shardset_count(const kiln_shardset *set) {
    size_t n = 0;
    for (uint32_t s = 0; set && s < set->n; s++)
        n += kiln_index_count(set->shard[s]);
    return n;
}
size_t kiln_shardset_dim(const kiln_shardset *set) { return set ? set->dim : 0; }
kiln_metric kiln_shardset_metric(const kiln_shardset *set) {
    return set ? set->metric : KILN_METRIC_L2;
}

/* ==== Search (decision 4) ==== */

typedef struct candidate {
    float dist;
    uint32_t pad; /* 1 for padding: sorts after every real result */
    int64_t label;
} candidate;

static int candidate_cmp(const void *x, const void *y) {
    const candidate *a = x, *b = y;
    if (a->pad != b->pad)
        return a->pad < b->pad ? -1 : 1;
    if (a->dist != b->dist)
        return a->dist < b->dist ? -1 : 1;
    return (a->label > b->label) - (a->label < b->label);
}

kiln_status kiln_shardset_search(const kiln_shardset *set, const float *queries, size_t nq,
                                 const kiln_search_params *params, int64_t *labels,
                                 float *distances) {
    if (!set)
        return KILN_E_ARG;
    kiln_ctx *ctx = set->ctx;
    if (!params || !labels || (nq && !queries))
        return kiln_fail(ctx, KILN_E_ARG, "search: NULL params, queries or labels");
    if (params->k < 1)
        return kiln_fail(ctx, KILN_E_ARG, "search: k must be at least 1");
    if (set->n == 1)
        return kiln_index_search(set->shard[0], queries, nq, params, labels, distances);
    const size_t S = set->n, k = params->k;
    size_t block = SEARCH_SCRATCH / (S * k);
    block = block < 1 ? 1 : block > nq ? (nq ? nq : 1) : block;
    const int threads = kiln_threads(params->threads);
    size_t per_shard = ((size_t)threads * SEARCH_TASKS_PER_THREAD + S - 1) / S;
    per_shard = per_shard > block ? block : per_shard;
    const size_t piece = (block + per_shard - 1) / per_shard;
    candidate *cand = NULL;
    int64_t *lab = NULL;
    float *dis = NULL;
    size_t entries;
    if (kiln_mul_size(S * block, k, &entries))
        return kiln_fail(ctx, KILN_E_NOMEM, "search: %zu shards x k = %zu is too large", S, k);
    if (kiln_alloc(ctx, entries * sizeof *lab, "shard results", (void **)&lab) ||
        kiln_alloc(ctx, entries * sizeof *dis, "shard results", (void **)&dis) ||
        kiln_alloc(ctx, (size_t)threads * S * k * sizeof *cand, "merge buffers", (void **)&cand)) {
        free(lab);
        free(dis);
        return KILN_E_NOMEM;
    }
    const kiln_search_params one = {.k = params->k, .ef = params->ef, .threads = 1};
    kiln_status result = KILN_OK;
    for (size_t b0 = 0; b0 < nq && result == KILN_OK; b0 += block) {
        const size_t bq = nq - b0 < block ? nq - b0 : block;
        const size_t pieces = (bq + piece - 1) / piece, tasks = pieces * S;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1 && tasks > 1)
        for (size_t t = 0; t < tasks; t++) {
            const size_t s = t % S, q0 = (t / S) * piece;
            const size_t qn = bq - q0 < piece ? bq - q0 : piece;
            const size_t at = (s * block + q0) * k;
            kiln_status st = kiln_index_search(set->shard[s], queries + (b0 + q0) * set->dim, qn,
                                               &one, lab + at, dis + at);
            if (st) {
#pragma omp critical(kiln_shardset_error)
                result = st;
            }
        }
        if (result)
            break;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && bq > 1)
        for (size_t i = 0; i < bq; i++) {
            candidate *c = cand + (size_t)omp_get_thread_num() * S * k;
            for (size_t s = 0; s < S; s++)
                for (size_t j = 0; j < k; j++) {
                    const size_t at = (s * block + i) * k + j;
                    c[s * k + j] = (candidate){.dist = dis[at],
                                               .pad = lab[at] == -1 && dis[at] == (float)INFINITY,
                                               .label = lab[at]};
                }
            qsort(c, S * k, sizeof *c, candidate_cmp);
            for (size_t j = 0; j < k; j++) {
                labels[(b0 + i) * k + j] = c[j].label;
                if (distances)
                    distances[(b0 + i) * k + j] = c[j].dist;
            }
        }
    }
    free(cand);
    free(lab);
    free(dis);
    return result;
}

/* ==== Writes through a set (decision 5) ==== */

typedef enum { SET_ADD, SET_DELETE, SET_UPDATE } set_op;

/* Routes n labelled rows to their shards and applies op to each shard's
 * rows, in input order. On failure the shards before may have changed in
 * memory (nothing is written until kiln_shardset_save). */
static kiln_status set_apply(kiln_shardset *set, set_op op, const float *vectors,
                             const int64_t *labels, size_t n, const kiln_add_params *ap) {
    kiln_ctx *ctx = set->ctx;
    const size_t d = set->dim;
    size_t *first = calloc((size_t)set->n + 1, sizeof *first),
           *order = malloc((n + 1) * sizeof *order);
    int64_t *l = malloc((n + 1) * sizeof *l);
    const bool too_many = n > (SIZE_MAX / sizeof(float) - 1) / (d ? d : 1) - 1;
    float *v = op == SET_DELETE || too_many ? NULL : malloc((n + 1) * d * sizeof *v);
    kiln_status st = KILN_OK;
    if (!first || !order || !l || (op != SET_DELETE && !v))
        st = kiln_fail(ctx, KILN_E_NOMEM, "out of memory routing %zu rows to %u shards", n, set->n);
    for (size_t i = 0; st == KILN_OK && i < n; i++)
        first[kiln_shard_of(labels[i], set->n) + 1]++;
    for (uint32_t s = 0; st == KILN_OK && s < set->n; s++)
        first[s + 1] += first[s];
    for (size_t i = 0; st == KILN_OK && i < n; i++) /* counting sort, stable */
        order[first[kiln_shard_of(labels[i], set->n)]++] = i;
    for (uint32_t s = set->n; st == KILN_OK && s > 0; s--) /* back to each shard's start */
        first[s] = first[s - 1];
    if (st == KILN_OK)
        first[0] = 0;
    for (uint32_t s = 0; st == KILN_OK && s < set->n; s++) {
        const size_t m = first[s + 1] - first[s];
        if (m == 0)
            continue;
        for (size_t j = 0; j < m; j++) {
            const size_t row = order[first[s] + j];
            l[j] = labels[row];
            if (v)
                memcpy(v + j * d, vectors + row * d, d * sizeof *v);
        }
        kiln_index *ix = set->shard[s];
        set->dirty[s] = true;
        st = op == SET_ADD      ? kiln_index_add_ex(ix, v, l, m, ap)
             : op == SET_DELETE ? kiln_index_delete(ix, l, m)
                                : kiln_index_update(ix, v, l, m);
        if (st && set->manifest) {
            char why[KILN_ERRMSG_MAX];
            snprintf(why, sizeof why, "%s", kiln_errmsg(ctx));
            st = kiln_fail(ctx, st, "shard %u of %u: %s", s, set->n, why);
        }
    }
    free(first);
    free(order);
    free(l);
    free(v);
    return st;
}

static kiln_status set_args(const kiln_shardset *set, const void *vectors, const int64_t *labels,
                            size_t n, bool need_labels, bool need_vectors) {
    if (!set)
        return KILN_E_ARG;
    if (n && ((need_labels && !labels) || (need_vectors && !vectors)))
        return kiln_fail(set->ctx, KILN_E_ARG, "shard set: NULL %s for %zu rows",
                         need_vectors && !vectors ? "vectors" : "labels", n);
    return KILN_OK;
}

kiln_status kiln_shardset_add(kiln_shardset *set, const float *vectors, const int64_t *labels,
                              size_t n) {
    return kiln_shardset_add_ex(set, vectors, labels, n, NULL);
}

kiln_status kiln_shardset_add_ex(kiln_shardset *set, const float *vectors, const int64_t *labels,
                                 size_t n, const kiln_add_params *params) {
    kiln_status st = set_args(set, vectors, labels, n, false, true);
    if (st || labels || n == 0)
        return st ? st : set_apply(set, SET_ADD, vectors, labels, n, params);
    /* The next labels after the largest in the set, as kiln_index_add gives
     * one index. */
    int64_t top = -1;
    for (uint32_t s = 0; s < set->n; s++) {
        const struct kiln_index *ix = set->shard[s];
        for (uint64_t i = 0; i < ix->count; i++)
            if (!kiln_slot_free(ix, i) && ix->labels[i] > top)
                top = ix->labels[i];
    }
    if ((uint64_t)top + n > (uint64_t)INT64_MAX)
        return kiln_fail(set->ctx, KILN_E_RANGE, "shard set: %zu labels after %lld overflow", n,
                         (long long)top);
    int64_t *next = malloc(n * sizeof *next);
    if (!next)
        return kiln_fail(set->ctx, KILN_E_NOMEM, "out of memory for %zu labels", n);
    for (size_t i = 0; i < n; i++)
        next[i] = top + 1 + (int64_t)i;
    st = set_apply(set, SET_ADD, vectors, next, n, params);
    free(next);
    return st;
}

kiln_status kiln_shardset_delete(kiln_shardset *set, const int64_t *labels, size_t n) {
    kiln_status st = set_args(set, NULL, labels, n, true, false);
    return st ? st : set_apply(set, SET_DELETE, NULL, labels, n, NULL);
}

kiln_status kiln_shardset_update(kiln_shardset *set, const float *vectors, const int64_t *labels,
                                 size_t n) {
    kiln_status st = set_args(set, vectors, labels, n, true, true);
    return st ? st : set_apply(set, SET_UPDATE, vectors, labels, n, NULL);
}

/* Writes shard s beside manifest `path` under its content's name
 * (decision 5), into e and *out_path; *existed when a file of that name
 * (so of those bytes: the header CRC pins them) was there already, which is
 * then kept and is not this call's to remove. */
static kiln_status save_shard(kiln_shardset *set, uint32_t s, const char *dir, size_t dirlen,
                              const char *base, shard_entry *e, char **out_path, bool *existed) {
    kiln_ctx *ctx = set->ctx;
    char name[SHARDSET_NAME_MAX + 64];
    snprintf(name, sizeof name, "%s-%u-of-%u.saving.%ld.kiln", base, s, set->n, (long)getpid());
    char *tmp = join_path(dir, dirlen, name);
    if (!tmp)
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory for a shard's path");
    kiln_index_info info;
    kiln_status st = kiln_index_save(set->shard[s], tmp);
    if (st == KILN_OK)
        st = kiln_index_info_read(ctx, tmp, &info);
    if (st == KILN_OK) {
        const int len = snprintf(name, sizeof name, "%s-%u-of-%u-%08x.kiln", base, s, set->n,
                                 info.header_crc32c);
        if (len < 0 || !kiln_shard_name_ok(name, (size_t)len))
            st = kiln_fail(ctx, KILN_E_ARG,
                           "shard set %s: '%s' is not a plain file name of at most %d bytes", base,
                           name, SHARDSET_NAME_MAX);
    }
    char *final = st == KILN_OK ? join_path(dir, dirlen, name) : NULL;
    if (st == KILN_OK && !final)
        st = kiln_fail(ctx, KILN_E_NOMEM, "out of memory for a shard's path");
    *existed = st == KILN_OK && access(final, F_OK) == 0;
    if (st == KILN_OK && *existed)
        unlink(tmp);
    else if (st == KILN_OK && rename(tmp, final) != 0)
        st = kiln_fail(ctx, KILN_E_IO, "%s: cannot rename to %s: %s", tmp, final, strerror(errno));
    if (st) {
        unlink(tmp);
        free(final);
    } else {
        memcpy(e->file, name, strlen(name) + 1);
        e->count = info.count;
        e->file_bytes = info.file_bytes;
        e->header_crc = info.header_crc32c;
        *out_path = final;
    }
    free(tmp);
    return st;
}

kiln_status kiln_shardset_save(kiln_shardset *set, const char *path) {
    if (!set || !path || !*path)
        return set ? kiln_fail(set->ctx, KILN_E_ARG, "shard set: empty path") : KILN_E_ARG;
    kiln_ctx *ctx = set->ctx;
    if (!set->manifest) /* one index, a set of one */
        return kiln_index_save(set->shard[0], path);
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const size_t dirlen = manifest_dirlen(path);
    /* Every name this save may write, checked before any byte is. */
    char longest[SHARDSET_NAME_MAX + 64];
    const int ll =
        snprintf(longest, sizeof longest, "%s-%u-of-%u-ffffffff.kiln", base, set->n - 1, set->n);
    if (ll < 0 || !kiln_shard_name_ok(longest, (size_t)ll))
        return kiln_fail(ctx, KILN_E_ARG,
                         "shard set %s: its shards' names ('%s') would not be plain file names of "
                         "at most %d bytes of [A-Za-z0-9._-]",
                         path, longest, SHARDSET_NAME_MAX);
    /* One writer at a time (a lock file beside the manifest), and not over
     * another writer's save: in place means the very file the set came
     * from, still there. */
    char *lock_path = malloc(strlen(path) + 6);
    if (!lock_path)
        return kiln_fail(ctx, KILN_E_NOMEM, "out of memory for a path");
    snprintf(lock_path, strlen(path) + 6, "%s.lock", path);
    const int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock < 0 || flock(lock, LOCK_EX) != 0) {
        const kiln_status e =
            kiln_fail(ctx, KILN_E_IO, "%s: cannot lock: %s", lock_path, strerror(errno));
        if (lock >= 0)
            close(lock);
        free(lock_path);
        return e;
    }
    free(lock_path);
    struct stat here;
    const bool exists = stat(path, &here) == 0;
    const bool in_place = exists && here.st_dev == set->man_dev && here.st_ino == set->man_ino;
    /* In place, unchanged shards keep their files and the changed ones'
     * old files go once the new manifest is in. Elsewhere every shard is
     * written beside path, so that no two manifests share a file. */
    shard_manifest m = {.shards = set->n, .dim = set->dim, .metric = set->metric};
    char **fresh = calloc(set->n, sizeof *fresh);
    bool *existed = calloc(set->n, sizeof *existed);
    kiln_status st = KILN_OK;
    if (!fresh || !existed || !(m.entry = calloc(set->n, sizeof *m.entry)))
        st = kiln_fail(ctx, KILN_E_NOMEM, "out of memory saving a set of %u shards", set->n);
    else if (!in_place && strcmp(path, set->manifest_path) == 0)
        st = kiln_fail(ctx, KILN_E_IO,
                       "%s: the set changed since it was opened (another writer saved it): "
                       "nothing written",
                       path);
    for (uint32_t s = 0; st == KILN_OK && s < set->n; s++) {
        if (in_place && !set->dirty[s])
            m.entry[s] = set->entry[s];
        else
            st = save_shard(set, s, path, dirlen, base, &m.entry[s], &fresh[s], &existed[s]);
        m.count += m.entry[s].count;
    }
    if (st == KILN_OK)
        st = kiln_manifest_write(ctx, path, &m);
    struct stat now;
    if (st == KILN_OK && stat(path, &now) != 0)
        st = kiln_fail(ctx, KILN_E_IO, "%s: written, then not found: %s", path, strerror(errno));
    for (uint32_t s = 0; fresh && s < set->n; s++) {
        if (!fresh[s])
            continue;
        if (st) { /* not adopted: gone again, unless it was there before */
            if (!existed[s])
                unlink(fresh[s]);
            free(fresh[s]);
            continue;
        }
        /* Adopted: in place, the old file of a changed shard goes, unless
         * it is the same content under the same name. */
        if (in_place && strcmp(set->entry[s].file, m.entry[s].file) != 0)
            unlink(set->path[s]);
        free(set->path[s]);
        set->path[s] = fresh[s];
        set->dirty[s] = false;
    }
    char *new_path = st == KILN_OK ? strdup(path) : NULL;
    if (st == KILN_OK && new_path) {
        free(set->entry);
        set->entry = m.entry;
        m.entry = NULL;
        free(set->manifest_path);
        set->manifest_path = new_path;
        set->man_dev = now.st_dev;
        set->man_ino = now.st_ino;
    } else if (st == KILN_OK) {
        st = kiln_fail(ctx, KILN_E_NOMEM, "out of memory for a path");
    }
    close(lock); /* releases the lock */
    free(m.entry);
    free(fresh);
    free(existed);
    return st;
}
