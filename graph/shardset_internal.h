/* shardset_internal.h -- the shard set manifest (docs/FORMAT.md, "Shard set
 * manifest"), shared by its reader (graph/shardset.c) and the shard builder
 * (graph/shard_build.c). */
#ifndef KILN_SHARDSET_INTERNAL_H
#define KILN_SHARDSET_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

#define SHARDSET_PREFIX   "kiln-shardset " /* then the version */
#define SHARDSET_MAGIC    "kiln-shardset 1\n"
#define SHARDSET_HASH     "fmix64"
#define SHARDSET_NAME_MAX 255 /* bytes of a shard's file name */
/* Bytes a manifest may have: the longest 4096 shards can need (the fixed
 * lines, then 4096 shard lines of at most 128 + 255 bytes) fits. */
#define SHARDSET_MANIFEST_LIMIT ((size_t)2 << 20)

/* One shard as the manifest records it. */
typedef struct shard_entry {
    char file[SHARDSET_NAME_MAX + 1]; /* a plain name in the manifest's folder */
    uint64_t count;
    uint64_t file_bytes;
    uint32_t header_crc;
} shard_entry;

/* A parsed manifest. */
typedef struct shard_manifest {
    uint32_t shards;
    uint64_t count; /* sum of the shards' counts */
    uint32_t dim;
    kiln_metric metric;
    shard_entry *entry; /* shards entries, heap */
} shard_manifest;

/* Parses len bytes of a manifest read from path (named in errors). Every
 * field, count and name is checked before use; *m (free its entry) is
 * zeroed on failure. */
kiln_status kiln_manifest_parse(kiln_ctx *ctx, const char *path, const char *text, size_t len,
                                shard_manifest *m);

/* Writes m to path atomically (temporary file, fsync, rename). */
kiln_status kiln_manifest_write(kiln_ctx *ctx, const char *path, const shard_manifest *m);

/* A shard file name is 1..SHARDSET_NAME_MAX bytes of [A-Za-z0-9._-], not
 * "." or "..": never a path, so a manifest cannot point outside its folder. */
bool kiln_shard_name_ok(const char *name, size_t len);

#endif /* KILN_SHARDSET_INTERNAL_H */
