/* kiln.h -- the one public header of kiln, a batch HNSW index builder.
 *
 * kiln builds HNSW graphs for approximate nearest-neighbour search, either by
 * classic one-at-a-time insertion on the CPU (KILN_METHOD_INSERT) or through
 * the device pipeline that offloads distance work to an OpenCL device
 * (KILN_METHOD_DEVICE), and serves them with a CPU search module.
 *
 * Conventions (frozen):
 *  - Every function that can fail returns a kiln_status: KILN_OK (0) or a
 *    named negative code. Results come back through trailing out-parameters,
 *    which are left NULL/0 on failure.
 *  - kiln_errmsg(ctx) gives the detail of the last failure on that context;
 *    it stays valid until the calling thread's next kiln_errmsg call.
 *  - Inputs are borrowed for the duration of the call; whatever kiln keeps
 *    is copied. kiln_<object>_free(NULL) is a no-op.
 *  - An index may be searched from many threads at once. Functions that
 *    mutate it (kiln_index_add, _delete, _update) say so.
 */
#ifndef KILN_H
#define KILN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_VERSION_MAJOR 0
#define KILN_VERSION_MINOR 1
#define KILN_VERSION_PATCH 0
#define KILN_VERSION_NUMBER                                                                        \
    (KILN_VERSION_MAJOR * 10000 + KILN_VERSION_MINOR * 100 + KILN_VERSION_PATCH)
#define KILN_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define KILN_API __attribute__((visibility("default")))
#else
#define KILN_API
#endif

/* ==== Status ==== */

/* Values are frozen: they may be stored, logged or compared across versions. */
typedef enum kiln_status {
    KILN_OK = 0,
    KILN_E_ARG = -1,         /* invalid argument or parameter */
    KILN_E_NOMEM = -2,       /* memory allocation failed */
    KILN_E_IO = -3,          /* open/read/write/rename failed (errno in message) */
    KILN_E_FORMAT = -4,      /* malformed input file */
    KILN_E_VERSION = -5,     /* file format version not supported */
    KILN_E_CHECKSUM = -6,    /* section checksum mismatch */
    KILN_E_RANGE = -7,       /* a count, size or id is out of range */
    KILN_E_UNSUPPORTED = -8, /* valid request this build cannot serve */
    KILN_E_DEVICE = -9,      /* an OpenCL call failed */
    KILN_E_NO_DEVICE = -10,  /* no OpenCL platform or matching device */
    KILN_E_INVALID = -11,    /* the graph validator found a defect */
    KILN_E_INTERNAL = -12    /* a bug in kiln */
} kiln_status;

/* Static name of a status code, e.g. "KILN_E_FORMAT"; never NULL. */
KILN_API const char *kiln_status_str(kiln_status status);

KILN_API int kiln_version_number(void);
KILN_API const char *kiln_version_string(void);

/* ==== Context ==== */

/* A kiln_ctx owns the last error message, the progress setting and (once the
 * device pipeline is used) the OpenCL devices and program cache. Objects made
 * through a context keep a pointer to it: free them before the context. */
typedef struct kiln_ctx kiln_ctx;

KILN_API kiln_status kiln_ctx_new(kiln_ctx **out);
KILN_API void kiln_ctx_free(kiln_ctx *ctx);

/* Detail of the last failure on ctx ("" when none), as a copy that belongs to
 * the calling thread: valid until that thread's next kiln_errmsg call.
 * Thread-safe (the copy is taken under the context's lock), but with several
 * threads failing at once the message is that of one of them: use a context
 * per thread where it matters. */
KILN_API const char *kiln_errmsg(const kiln_ctx *ctx);

typedef enum kiln_progress {
    KILN_PROGRESS_AUTO = 1, /* report on stderr when stderr is a terminal */
    KILN_PROGRESS_ON = 2,
    KILN_PROGRESS_OFF = 3
} kiln_progress;

KILN_API kiln_status kiln_ctx_set_progress(kiln_ctx *ctx, kiln_progress mode);

/* ==== Metrics and element types ==== */

typedef enum kiln_metric {
    KILN_METRIC_L2 = 1, /* squared Euclidean distance */
    KILN_METRIC_IP = 2, /* inner product; distance = 1 - <a,b> (hnswlib's "ip") */
    KILN_METRIC_COS = 3 /* cosine; vectors normalised on insert, then as IP */
} kiln_metric;

KILN_API const char *kiln_metric_name(kiln_metric metric);
KILN_API kiln_status kiln_metric_parse(const char *name, kiln_metric *out);

typedef enum kiln_dtype {
    KILN_DTYPE_F32 = 1,
    KILN_DTYPE_U8 = 2,
    KILN_DTYPE_I8 = 3,
    KILN_DTYPE_I32 = 4,
    KILN_DTYPE_I64 = 5, /* npy only: result ids written, ground-truth ids read as int32 where
                           they fit */
    KILN_DTYPE_F64 = 6, /* npy only; read as float32, refused where out of its range */
    KILN_DTYPE_F16 = 7  /* npy only; read as float32 exactly */
} kiln_dtype;

KILN_API const char *kiln_dtype_name(kiln_dtype dtype);

/* ==== Datasets ==== */

typedef enum kiln_format {
    KILN_FORMAT_AUTO = 1,  /* from the file name's extension */
    KILN_FORMAT_FVECS = 2, /* texmex: per record int32 d, then d float32 */
    KILN_FORMAT_BVECS = 3, /* texmex: per record int32 d, then d uint8 */
    KILN_FORMAT_IVECS = 4, /* texmex: per record int32 d, then d int32 */
    KILN_FORMAT_FBIN = 5,  /* big-ann: uint32 n, uint32 d, n*d float32 */
    KILN_FORMAT_U8BIN = 6, /* big-ann: uint32 n, uint32 d, n*d uint8 */
    KILN_FORMAT_I8BIN = 7, /* big-ann: uint32 n, uint32 d, n*d int8 */
    KILN_FORMAT_NPY = 8,   /* NumPy .npy v1-v3, 2-D, C order, <f4 |u1 |i1 <i4 <f8 <f2 <i8 */
    KILN_FORMAT_IBIN = 9   /* big-ann int32: uint32 n, uint32 k, n*k int32 ids, then for ground
                              truth n*k float32 distances (optional, not read); written ids
                              only; AUTO for .ibin, .gt, and .bin named "groundtruth" or "gt" */
} kiln_format;

KILN_API const char *kiln_format_name(kiln_format format);
/* Parses "fvecs", "bvecs", "ivecs", "fbin", "u8bin", "i8bin", "npy", "ibin", "auto". */
KILN_API kiln_status kiln_format_parse(const char *name, kiln_format *out);

/* Flags for kiln_dataset_open. */
#define KILN_OPEN_ALLOW_NONFINITE 0x1u /* accept NaN/Inf float values */
/* A 1-D npy array of n values opens as n rows of 1 (a labels file);
 * without it a 1-D array is refused. */
#define KILN_OPEN_ALLOW_1D 0x2u

/* A read-only view of an on-disk dataset of n vectors of dimension d. The
 * file is memory-mapped, never copied whole. Free with kiln_dataset_free. */
typedef struct kiln_dataset kiln_dataset;

KILN_API kiln_status kiln_dataset_open(kiln_ctx *ctx, const char *path, kiln_format format,
                                       unsigned flags, kiln_dataset **out);
KILN_API void kiln_dataset_free(kiln_dataset *ds);
KILN_API size_t kiln_dataset_count(const kiln_dataset *ds);
KILN_API size_t kiln_dataset_dim(const kiln_dataset *ds);
KILN_API kiln_dtype kiln_dataset_dtype(const kiln_dataset *ds);
KILN_API kiln_format kiln_dataset_format(const kiln_dataset *ds);

/* Copies rows [first, first+count) into out (count*dim floats, caller's),
 * converting from the file's element type. Non-finite values are rejected
 * with KILN_E_FORMAT naming the record and byte offset unless the dataset was
 * opened with KILN_OPEN_ALLOW_NONFINITE; a float64 value beyond float32's
 * range is KILN_E_RANGE whatever the flags. */
KILN_API kiln_status kiln_dataset_read_f32(const kiln_dataset *ds, size_t first, size_t count,
                                           float *out);
/* The same for integer data (ivecs ground truth); float files are refused,
 * and an int64 value outside int32 is KILN_E_RANGE naming its place. */
KILN_API kiln_status kiln_dataset_read_i32(const kiln_dataset *ds, size_t first, size_t count,
                                           int32_t *out);
/* The same as int64, which holds every integer type whole (labels). */
KILN_API kiln_status kiln_dataset_read_i64(const kiln_dataset *ds, size_t first, size_t count,
                                           int64_t *out);

/* Writes n rows of d elements of dtype to path in format, atomically: a
 * temporary file in the same folder, fsync, rename. On failure nothing is
 * left under path. The format must be able to hold dtype. */
KILN_API kiln_status kiln_dataset_write(kiln_ctx *ctx, const char *path, kiln_format format,
                                        kiln_dtype dtype, const void *data, size_t n, size_t d);

/* One file of kiln_dataset_write_all: n rows of d elements of dtype. */
typedef struct kiln_dataset_output {
    const char *path;
    kiln_format format; /* KILN_FORMAT_AUTO: from path's extension */
    kiln_dtype dtype;
    const void *data; /* n*d elements, row-major; borrowed for the call */
    size_t n, d;
    /* KILN_FORMAT_IBIN only, may be NULL: n*d float32 distances written after
     * the ids, which makes the file big-ann ground truth (ids, then
     * distances); borrowed for the call. */
    const float *distances;
} kiln_dataset_output;

/* Writes several datasets as one unit (a command's ids and distances): every
 * file is written and fsynced beside its target first, and only when all
 * succeeded are they renamed into place. A failure while writing replaces
 * no target and leaves no temporary; only a rename that fails after an
 * earlier one succeeded (a failing disk) leaves the earlier targets
 * replaced, and says so. Every atomic write (this, kiln_dataset_write,
 * kiln_index_save, kiln_index_export_hnswlib) also removes its temporary when
 * the process gets SIGHUP, SIGINT, SIGTERM or SIGXFSZ: the first write
 * installs a handler that cleans up and re-raises, for each of those signals
 * still at its default action (a handler of the application's is kept). */
KILN_API kiln_status kiln_dataset_write_all(kiln_ctx *ctx, const kiln_dataset_output *outputs,
                                            size_t count);

/* ==== Exact k-nearest neighbours (the recall oracle) ==== */

/* Brute-force k nearest base vectors for each query, multi-threaded with
 * SIMD distances. labels and distances (caller's, nq*k each; distances may be
 * NULL) get each query's neighbours nearest first, ties by smaller id; rows
 * are padded with -1 / +inf when n < k. threads 0 = all cores. */
KILN_API kiln_status kiln_knn_exact(kiln_ctx *ctx, const float *base, size_t n,
                                    const float *queries, size_t nq, size_t dim, kiln_metric metric,
                                    uint32_t k, uint32_t threads, int64_t *labels,
                                    float *distances);
/* The same over datasets, streaming the base in blocks so it never has to be
 * in memory whole. */
KILN_API kiln_status kiln_knn_exact_dataset(kiln_ctx *ctx, const kiln_dataset *base,
                                            const kiln_dataset *queries, kiln_metric metric,
                                            uint32_t k, uint32_t threads, int64_t *labels,
                                            float *distances);

/* ==== Synthetic data ==== */

/* Fills out (caller's, out_len floats, at least n*dim) with a seeded
 * clustered dataset: a mixture of `clusters` components, each a random
 * low-rank (12 latent dimensions) Gaussian around a random centre plus a
 * little isotropic noise, so neighbourhoods look like real embeddings rather
 * than uniform noise. Row i depends only on (seed, i, dim, clusters): any
 * prefix of a larger set is the smaller set, and rows [n, n+q) make held-out
 * queries. KILN_E_RANGE when n*dim overflows, KILN_E_ARG when it exceeds
 * out_len; nothing is written then. */
KILN_API kiln_status kiln_synth_clustered(kiln_ctx *ctx, size_t n, size_t dim, uint32_t clusters,
                                          uint64_t seed, float *out, size_t out_len);

/* ==== Devices ==== */

/* OpenCL devices for KILN_METHOD_DEVICE. Devices are numbered 0..count-1
 * over all platforms (platforms in the ICD loader's order, then each
 * platform's devices); the "P:D" spec names the same device by platform and
 * device index. A build without OpenCL, or a machine without any OpenCL
 * platform, answers KILN_E_NO_DEVICE with how to install one (PoCL runs
 * OpenCL on any CPU). */

typedef enum kiln_device_type {
    KILN_DEVICE_CPU = 1,
    KILN_DEVICE_GPU = 2,
    KILN_DEVICE_OTHER = 3 /* accelerators, custom devices */
} kiln_device_type;

#define KILN_DEVICE_NAME_MAX 128

typedef struct kiln_device_info {
    uint32_t index;          /* 0..count-1 */
    uint32_t platform_index; /* P of "P:D" */
    uint32_t device_index;   /* D of "P:D" */
    kiln_device_type type;
    char platform_name[KILN_DEVICE_NAME_MAX]; /* NUL-terminated, cut to fit */
    char device_name[KILN_DEVICE_NAME_MAX];
    char version[KILN_DEVICE_NAME_MAX]; /* CL_DEVICE_VERSION */
    uint64_t global_mem_bytes;
    uint64_t max_alloc_bytes; /* largest single buffer */
    uint64_t local_mem_bytes; /* per work-group */
    uint32_t compute_units;
} kiln_device_info;

/* Number of OpenCL devices on all platforms, > 0 on success. */
KILN_API kiln_status kiln_device_count(kiln_ctx *ctx, uint32_t *out);
/* Describes device `index` (0..count-1) into *out (caller's). */
KILN_API kiln_status kiln_device_info_get(kiln_ctx *ctx, uint32_t index, kiln_device_info *out);
/* Chooses the device that later device work on ctx runs on, and opens it.
 * spec: "auto" (the first GPU, else the first device), "cpu", "gpu" (the
 * first of that type), or "P:D"; NULL means the environment variable
 * KILN_DEVICE, else "auto". Replaces a device chosen before. out (may be
 * NULL) describes the device chosen. Mutates ctx: not concurrently with other
 * device work on the same ctx. */
KILN_API kiln_status kiln_device_select(kiln_ctx *ctx, const char *spec, kiln_device_info *out);

/* ==== Index ==== */

typedef struct kiln_index kiln_index;

typedef enum kiln_method {
    KILN_METHOD_INSERT = 1, /* classic HNSW insertion on the CPU */
    KILN_METHOD_DEVICE = 2  /* quantize, cluster, per-cluster kNN on OpenCL, prune */
} kiln_method;

#define KILN_MAX_LEVELS 32 /* levels 0..31; sampled levels are capped there */

/* How an index stores the vectors its graph is searched on (docs/FORMAT.md,
 * graph/storage.c). Compact storages are built on f32 and converted at the
 * end; search traverses the compact rows (f32 query against each row). */
typedef enum kiln_storage {
    KILN_STORAGE_F32 = 1, /* 4 bytes a component, exact */
    KILN_STORAGE_F16 = 2, /* IEEE binary16, 2 bytes a component; |x| <= 65504 */
    KILN_STORAGE_INT8 = 3 /* per vector an offset (the middle of its range) and a scale
                             (range / 254), codes round((x - offset) / scale) in [-127, 127]
                             (Redis vector sets' Q8 with an offset): 1 byte a component + 8 */
} kiln_storage;

/* "f32", "f16", "int8"; "?" for anything else. */
KILN_API const char *kiln_storage_name(kiln_storage storage);

typedef struct kiln_build_params {
    kiln_metric metric;       /* default KILN_METRIC_L2 */
    uint32_t M;               /* links per node on upper levels (2M on level 0); default 16 */
    uint32_t ef_construction; /* beam width while inserting; default 200 */
    kiln_method method;       /* default KILN_METHOD_DEVICE */
    uint32_t threads;         /* 0 = all cores; default 0 */
    uint64_t seed;            /* PRNG seed for levels and sampling; default 1 */

    /* KILN_METHOD_DEVICE only: */
    const char *device;    /* "auto", "cpu", "gpu" or "P:D"; NULL = $KILN_DEVICE, else
                              "auto" (borrowed for the call); default NULL */
    uint32_t clusters;     /* k-means clusters; 0 = from n and cluster_size; default 0 */
    uint32_t cluster_size; /* target members per cluster when clusters == 0; default 0 =
                              the library's choice (see docs/ARCHITECTURE.md) */
    uint32_t replicas;     /* nearest clusters each vector joins, >= 2; 0 = 2, and above
                              2048 clusters' worth of vectors (n / cluster_size) a third for
                              the vectors near a boundary (host/device_build.c) */
    uint32_t knn_k;        /* neighbours kept per vector per cluster on the device;
                              0 = 2M; default 0 */
    /* Bytes the build's own resident memory may reach (the index being
     * built, clusters, batch and partition buffers; pages of memory-mapped
     * files the kernel can drop do not count). 0 = half of physical memory
     * (or of the cgroup's limit). A budget the input cannot fit in is
     * refused up front with what it needs. Default 0. */
    uint64_t memory_limit;
    /* Folder for the intermediates (created when absent, mode 0700): with
     * it the build can be resumed, and it is kept after the build for
     * kiln_work_dir_remove once the caller has saved the index. NULL = a
     * private folder under $TMPDIR (or /tmp), removed when the build ends,
     * which cannot be resumed. Borrowed for the call. Default NULL. */
    const char *work_dir;
    /* Non-zero: continue the build in work_dir from its last finished
     * batch; a work dir of other inputs or parameters is refused. Zero: a
     * work dir holding an unfinished build is refused. Default 0. */
    int resume;
    /* KILN_METHOD_DEVICE: non-zero builds one index across the ranks of
     * kiln_dist_init (every rank calls with the same input and params, and
     * its own threads and device). The index comes back on rank 0 alone;
     * the other ranks get KILN_OK and out = NULL. work_dir holds a folder
     * per rank, rank-R (without work_dir each rank makes its own private
     * one), and resume continues from the batches every rank finished. The
     * ranks first compare their inputs (a sample of rows) and params with
     * rank 0's and refuse to run when they differ. With one rank, or
     * without MPI, an ordinary build. Default 0. */
    int collective;
    /* The label of each of the n rows (borrowed for the call; copied into
     * the index), which search returns: unique, none -1. NULL = the row
     * numbers. With kiln_shardset_build, one per row of the dataset: each
     * row goes to the shard of its label. Default NULL. */
    const int64_t *labels;
    /* The vectors' storage in the built index; default KILN_STORAGE_F32. */
    kiln_storage storage;
    /* Non-zero (F16 or INT8 only): keep the f32 vectors beside the compact
     * ones, and re-score each search's final ef candidates exactly with
     * them before taking the top k (so the distances returned are exact).
     * Costs 4 bytes a component more. Default 0. */
    int rerank;
} kiln_build_params;

KILN_API void kiln_build_params_init(kiln_build_params *params);

#define KILN_REPORT_MAX_STAGES 12

/* What a build did and where its time went (not stored in index files). */
typedef struct kiln_build_report {
    kiln_method method;
    uint32_t n_stages;
    struct {
        const char *name; /* static string: "load", "quantize", "kmeans", ... */
        double seconds;
    } stages[KILN_REPORT_MAX_STAGES];
    double total_seconds;
    uint64_t repaired_links; /* links added to make level 0 reachable */
    /* kiln_index_import_hnswlib: elements marked deleted in the file,
     * removed from the graph as kiln_index_delete removes nodes and left as
     * free slots for kiln_index_add (0 for a build) */
    uint64_t deleted_elements;
    /* KILN_METHOD_DEVICE only: */
    char device_name[KILN_DEVICE_NAME_MAX];
    uint32_t clusters;
    uint32_t max_cluster_size;
    uint32_t device_batches;
    uint32_t batch_retries;       /* batches halved after running out of resources */
    double candidates_per_vector; /* candidate links per vector from the batches (after
                                     their local prune), before removing duplicates
                                     across clusters, mean */
    uint32_t batches;             /* cluster batches, each with its members' vectors */
    uint32_t partitions;          /* node-id partitions of the streaming passes */
    uint32_t resumed_batches;     /* batches taken from the work dir, not run */
    uint32_t resumed_steps;       /* other steps taken from the work dir */
    uint64_t memory_limit;        /* the budget the build planned for, bytes */
    uint64_t work_bytes_written;  /* bytes written to the work dir */
    uint64_t work_bytes_read;     /* bytes read back from it */
    uint64_t peak_rss_anon;       /* the process's peak anonymous resident bytes, sampled
                                     from /proc at each stage's end (0 where unknown) */
    uint32_t replicas;            /* KILN_METHOD_DEVICE: clusters every vector was to join
                                     (fewer for the rare short vector) */
    double mean_replicas;         /* KILN_METHOD_DEVICE: clusters per vector, mean (above
                                     replicas where vectors near a boundary joined one more) */
    /* A collective build (kiln_build_params.collective) on rank 0: the
     * ranks, and the bytes each sent to the others (ranks entries, owned
     * by the index); stage seconds are then the slowest rank's. One
     * process: 1 and NULL. */
    uint32_t ranks;
    const uint64_t *rank_bytes_sent;
} kiln_build_report;

/* Removes a build's work dir (kiln_build_params.work_dir) once its index is
 * saved: every work file (*.kw), their temporaries and the lock, then the
 * folder when nothing else is in it. Fails when another build holds it. */
KILN_API kiln_status kiln_work_dir_remove(kiln_ctx *ctx, const char *dir);

/* The report of the build that made index; KILN_E_ARG for a loaded index. */
KILN_API kiln_status kiln_index_build_report(const kiln_index *index, kiln_build_report *out);

/* Builds an index over n vectors of dimension dim (row-major, borrowed; the
 * index keeps its own copy). Label of row i is i. */
KILN_API kiln_status kiln_index_build(kiln_ctx *ctx, const float *vectors, size_t n, size_t dim,
                                      const kiln_build_params *params, kiln_index **out);
/* The same, reading rows from a dataset straight into the index's storage. */
KILN_API kiln_status kiln_index_build_dataset(kiln_ctx *ctx, const kiln_dataset *ds,
                                              const kiln_build_params *params, kiln_index **out);
KILN_API void kiln_index_free(kiln_index *index);

typedef struct kiln_search_params {
    uint32_t k;       /* neighbours per query; default 10 */
    uint32_t ef;      /* beam width, raised to k when smaller; default 64 */
    uint32_t threads; /* threads over the batch of queries; 0 = all cores; default 1 */
} kiln_search_params;

KILN_API void kiln_search_params_init(kiln_search_params *params);

/* Searches nq queries (row-major, dim floats each). labels and distances
 * (caller's, nq*k each; distances may be NULL) get each query's neighbours
 * nearest first, padded with -1 / +inf when fewer than k exist. Safe to call
 * from many threads on one index: all scratch is per call. */
KILN_API kiln_status kiln_index_search(const kiln_index *index, const float *queries, size_t nq,
                                       const kiln_search_params *params, int64_t *labels,
                                       float *distances);

/* Writes the index atomically (temporary file, fsync, rename), in format
 * version 2 (version 3 for f16 or int8 storage; docs/FORMAT.md), free slots and capacity included:
 * the same index always gives the same bytes. */
KILN_API kiln_status kiln_index_save(const kiln_index *index, const char *path);
/* Flags for kiln_index_open. */
/* Also verify the CRC of every section (vectors, labels, links) and every
 * link's count and id: reads the whole file, O(file size); `kiln check`. */
#define KILN_LOAD_VERIFY 0x1u
/* Read the file into heap memory instead of mapping it (always so on a
 * big-endian host, and where the file cannot be mapped); this also verifies
 * every section's CRC, which costs nothing next to the read. */
#define KILN_LOAD_READ 0x2u
/* Map and fault in the whole mapping at open (MAP_POPULATE; it reads the
 * file where it is not in the page cache), so that the first searches do
 * not each take thousands of page faults. */
#define KILN_LOAD_POPULATE 0x4u

/* Opens an index file (format version 1, 2 or 3) and returns the index (free
 * with kiln_index_free). By default the file is mapped (PROT_READ), not read;
 * kiln_index_add, _delete and _update copy a mapped index to the heap first,
 * and never write the file. The open checks magic, version, the header and
 * section table with their CRCs, every section's bounds, the LEVELS and FREE
 * sections' CRCs, every level and free slot,
 * and the upper-level layout they imply, in O(count) bytes read (about 1 of
 * every 650 bytes of a 128-d file: 2.6 ms for 1M nodes, warm), so even a
 * 100 GB index opens in well under a second and is searched from the page
 * cache. Link ids are not read at
 * open: search bounds-checks each link it follows, so a crafted file can
 * give wrong neighbours but never a read outside the index. Vector, label
 * and link CRCs are verified only with KILN_LOAD_VERIFY (or KILN_LOAD_READ).
 * A mapped file that another process truncates while it is open makes the
 * next access to a lost page raise SIGBUS, as with every mmap reader
 * (hnswlib's, FAISS's and DiskANN's mmap modes alike): replace index files
 * by rename (kiln_index_save does), never rewrite them in place. See
 * docs/FORMAT.md, "Opening: mapping and what is verified". Unknown flags are
 * KILN_E_ARG. */
KILN_API kiln_status kiln_index_open(kiln_ctx *ctx, const char *path, uint32_t flags,
                                     kiln_index **out);
/* kiln_index_open(ctx, path, 0, out). */
KILN_API kiln_status kiln_index_load(kiln_ctx *ctx, const char *path, kiln_index **out);

typedef struct kiln_index_info {
    uint32_t format_version;
    uint32_t dim;
    kiln_metric metric;
    uint32_t M;  /* upper-level degree bound */
    uint32_t M0; /* level-0 degree bound */
    uint32_t ef_construction;
    uint64_t count;       /* slots: live vectors plus free_slots */
    uint32_t max_level;   /* top level (levels are 0..max_level) */
    uint32_t entry_point; /* node id; meaningless when count == 0 */
    uint64_t seed;
    uint64_t file_bytes;
    uint32_t header_crc32c; /* the header's own CRC-32C, which vouches for every section's
                               (a shard set's manifest records it, docs/FORMAT.md) */
    uint64_t capacity;      /* slots reserved for adds (>= count; count in version 1) */
    uint64_t free_slots;    /* of count, slots freed by deletes (0 in version 1) */
    kiln_storage storage;   /* KILN_STORAGE_F32 in versions 1 and 2 */
    int rerank;             /* 1 when f32 vectors are kept beside compact ones */
} kiln_index_info;

/* Reads and checks the header of an index file only (cheap for any size). */
KILN_API kiln_status kiln_index_info_read(kiln_ctx *ctx, const char *path, kiln_index_info *out);

typedef struct kiln_index_stats {
    uint64_t count;
    uint32_t dim;
    kiln_metric metric;
    uint32_t M, M0;
    uint32_t levels;                           /* max_level + 1; 0 when empty */
    uint64_t nodes_per_level[KILN_MAX_LEVELS]; /* nodes present on each level */
    double avg_degree[KILN_MAX_LEVELS];        /* mean out-degree per level */
    uint32_t max_degree[KILN_MAX_LEVELS];
    uint64_t memory_bytes; /* heap bytes held by the index; a mapped index's
                              mapping (page cache) is not counted */
    /* Vectors holding a NaN or an infinity (kiln build --allow-nonfinite):
     * the validator's finding, not a defect of the graph. Search ranks them
     * after every finite vector (their distance is taken as +inf). */
    uint64_t nonfinite_vectors;
    uint64_t first_nonfinite; /* node of the first one; UINT64_MAX when none */
    /* Labels: 1 when every node's label is its row number (a kiln build's
     * default), 0 when they are the user's (an imported hnswlib file);
     * their range, both 0 when the index is empty. */
    int labels_are_rows;
    int64_t label_min, label_max;
    /* Slots freed by kiln_index_delete and not yet reused by an add
     * (count above counts live nodes only). */
    uint64_t free_slots;
    kiln_storage storage;
    int rerank;            /* f32 vectors kept beside compact ones (search re-scores) */
    uint64_t vector_bytes; /* bytes of vectors per slot: the storage's row (f32 4*dim,
                              f16 2*dim, int8 dim rounded up to 4, plus 8), plus 4*dim
                              with rerank */
    uint64_t data_bytes;   /* bytes of the index's arrays over its slots, heap or mapped:
                              vectors, links of every level, labels, levels (what a
                              file's sections hold); data_bytes / count is the bytes
                              per element */
} kiln_index_stats;

KILN_API kiln_status kiln_index_stats_get(const kiln_index *index, kiln_index_stats *out);
/* Live nodes: those built, loaded or added, less those deleted. */
KILN_API size_t kiln_index_count(const kiln_index *index);
KILN_API size_t kiln_index_dim(const kiln_index *index);
KILN_API kiln_metric kiln_index_metric(const kiln_index *index);

/* Runs the graph validator: ids in range, no self or duplicate links, degree
 * bounds, the entry point on the top level, every node reachable from the
 * entry point on level 0, and upper-level links only between nodes present on
 * that level. KILN_E_INVALID with the first defect in the message. Vectors
 * with non-finite values are not a defect of the graph (search orders them
 * last); kiln_index_stats_get counts them for the caller to report. Runs on
 * all cores; the defect named is the lowest node's, whatever their number. */
KILN_API kiln_status kiln_index_check(const kiln_index *index);

/* ==== Live indexes: add, delete, update ====
 *
 * These three mutate the index in place (graph/hnsw_live.c). Searches
 * (kiln_index_search) on the same index may run from any number of threads
 * meanwhile: each sees the index before or after each step of the call,
 * never a freed or half-written list, and once a delete has returned no
 * search returns its labels (a search that overlaps an update may miss the
 * labels being updated). Calls that write, and kiln_index_check, _save,
 * _stats_get and kiln_index_export_hnswlib, run one at a time: each waits
 * for the one in progress. Any index can be changed,
 * built or loaded; a mapped one (kiln_index_open) is first copied to the
 * heap, and its file is never written. Each call leaves a graph that passes
 * kiln_index_check, runs on all cores, and gives the same index, byte for
 * byte once saved, whatever their number. On failure the call may have done
 * part of its work on the index (never left it invalid for search); the
 * message names the label or row at fault. Labels must be unique in the
 * index: the first call on one built with repeated labels fails
 * (KILN_E_INVALID) naming one. */

/* Threads that kiln_index_add, _delete and _update use (0, the default, =
 * all cores); their results do not depend on it. */
KILN_API kiln_status kiln_index_set_threads(kiln_index *index, uint32_t threads);

/* Inserts n vectors (row-major, dim floats each, copied; COS rows are
 * normalised) with the given labels, or when labels is NULL with labels
 * max + 1, max + 2, ... after the largest label in the index (0, 1, ... when
 * it is empty). Slots freed by deletes are reused first; capacity grows by
 * doubling. A label already in the index, given twice, or -1 (search's
 * padding) is KILN_E_ARG, as is a vector with a NaN or infinity. */
KILN_API kiln_status kiln_index_add(kiln_index *index, const float *vectors, const int64_t *labels,
                                    size_t n);

/* How kiln_index_add_ex inserts. */
typedef enum kiln_add_method {
    KILN_ADD_AUTO = 0, /* the device for a batch of at least 10000 vectors and device_share
                          of the live count, where libkiln has a device side; else insert */
    KILN_ADD_INSERT,   /* HNSW insertion, node by node in parallel batches */
    KILN_ADD_DEVICE    /* the device pipeline over the old and new vectors together: new
                          clusters, per-cluster kNN of new against new and old, each old
                          node's list joining its candidates, the union, prune and reverse
                          links of a device build; the old upper levels are kept and the
                          new nodes inserted into them. The index comes back compacted
                          (no free slots). graph/hnsw_live.c decision 9 */
} kiln_add_method;

typedef struct kiln_add_params {
    kiln_add_method method; /* default KILN_ADD_AUTO */
    const char *device;     /* the device, as kiln_build_params.device; NULL = auto */
    double device_share;    /* KILN_ADD_AUTO: the share of the live count from which a batch
                               goes to the device; 0 = the default, 0.2 */
    uint64_t memory_limit;  /* KILN_ADD_DEVICE: the pipeline's budget as
                               kiln_build_params.memory_limit; 0 = the default */
} kiln_add_params;

KILN_API void kiln_add_params_init(kiln_add_params *params);
/* kiln_index_add with a choice of method; params NULL = defaults. Both
 * methods give a valid index with the same labels; their graphs differ. An
 * unknown method is KILN_E_ARG, KILN_ADD_DEVICE without a device side
 * KILN_E_NO_DEVICE. */
KILN_API kiln_status kiln_index_add_ex(kiln_index *index, const float *vectors,
                                       const int64_t *labels, size_t n,
                                       const kiln_add_params *params);
/* Removes the n nodes with these labels from the graph: each is unlinked
 * on every level, the nodes that linked to it are relinked among its
 * neighbours with the HNSW heuristic, the entry point moves when it is one
 * of them, and its slot is freed for a later add. Search never returns a
 * deleted label. A label not in the index, or given twice, is KILN_E_ARG
 * naming it (nothing is deleted then). */
KILN_API kiln_status kiln_index_delete(kiln_index *index, const int64_t *labels, size_t n);
/* Replaces the vectors of the n nodes with these labels (each in the index
 * once, KILN_E_ARG otherwise) and relinks them: a delete and an add of the
 * same labels, which keep their slots. */
KILN_API kiln_status kiln_index_update(kiln_index *index, const float *vectors,
                                       const int64_t *labels, size_t n);

/* ==== Distributed runs (MPI) ==== */

/* Non-zero when this kiln was built with MPI (CMake found it). */
KILN_API int kiln_dist_available(void);
/* The number of ranks a launcher (mpirun, mpiexec, srun) announced in the
 * environment, with or without MPI in this kiln; 1 when none did. */
KILN_API int kiln_dist_launched_size(void);
/* The ranks the launcher put on this node (1 when none says), and this
 * rank's place among them (0 when none says): for sharing a node's cores
 * and GPUs among its ranks. */
KILN_API int kiln_dist_local_size(void);
KILN_API int kiln_dist_local_rank(void);
/* Joins the MPI world (MPI_Init_thread with MPI_THREAD_FUNNELED, unless the
 * caller initialised MPI already): afterwards kiln_shardset_build spreads the
 * shards over the ranks. Without MPI: one rank, or KILN_E_UNSUPPORTED when a
 * launcher started more than one ("built without MPI"). Call it from the
 * thread that will call kiln, before any other kiln call that communicates. */
KILN_API kiln_status kiln_dist_init(kiln_ctx *ctx, int *argc, char ***argv);
/* Leaves MPI when kiln_dist_init started it (MPI_Finalize). */
KILN_API void kiln_dist_finalize(void);
/* This process's rank (0 until kiln_dist_init) and the number of ranks. */
KILN_API int kiln_dist_rank(void);
KILN_API int kiln_dist_size(void);
/* Collective: every rank brings its status and all get the same answer:
 * KILN_OK when every rank had it, else the status of the lowest failing
 * rank, whose message ("rank R of N: ...") lands in ctx on every rank. One
 * rank: status itself. */
KILN_API kiln_status kiln_dist_agree(kiln_ctx *ctx, kiln_status status);

/* ==== Shard sets ==== */

/* A shard set is N independent indexes over one dataset: the element with
 * label L lives in shard kiln_shard_of(L, N). A small manifest names the
 * shards with their sizes and header checksums (docs/FORMAT.md, "Shard set
 * manifest"). A query goes to every shard, and their top-k lists are merged
 * by distance, ties broken by the smaller label, as a client of Redis-style
 * shards merges them. */
#define KILN_MAX_SHARDS 4096u

typedef struct kiln_shardset kiln_shardset;

/* The shard (0..nshards-1) of label: MurmurHash3's 64-bit finalizer (fmix64)
 * of the label's two's-complement bits, mod nshards. Fixed: the same on every
 * host and in every version, so that writes can be routed by it. */
KILN_API uint32_t kiln_shard_of(int64_t label, uint32_t nshards);

/* Opens a shard set by its manifest, or a single index file as a set of
 * one shard. Every shard is opened with flags (KILN_LOAD_*; mapped, so the
 * open costs O(count) bytes) and must match the manifest: its file size,
 * header checksum, count, dimension and metric (KILN_E_CHECKSUM or
 * KILN_E_FORMAT naming the shard); shard files are named relative to the
 * manifest's folder. With KILN_LOAD_VERIFY every label is also checked to
 * hash to its shard. *out (free with kiln_shardset_free) is NULL on
 * failure. */
KILN_API kiln_status kiln_shardset_open(kiln_ctx *ctx, const char *path, uint32_t flags,
                                        kiln_shardset **out);
KILN_API void kiln_shardset_free(kiln_shardset *set);
KILN_API uint32_t kiln_shardset_shards(const kiln_shardset *set);
/* Shard i (borrowed: valid until kiln_shardset_free), and its file's path. */
KILN_API const kiln_index *kiln_shardset_shard(const kiln_shardset *set, uint32_t i);
KILN_API const char *kiln_shardset_shard_path(const kiln_shardset *set, uint32_t i);
/* Non-zero when the set came from a manifest (zero: a single index file). */
KILN_API int kiln_shardset_has_manifest(const kiln_shardset *set);
KILN_API size_t kiln_shardset_count(const kiln_shardset *set);
KILN_API size_t kiln_shardset_dim(const kiln_shardset *set);
KILN_API kiln_metric kiln_shardset_metric(const kiln_shardset *set);

/* Searches every shard for each query, in parallel (params->threads over
 * shards and blocks of queries), and merges each query's lists into its
 * global top k: ascending distance, equal distances by ascending label,
 * padding (label -1, distance +inf) last. The output is laid out as
 * kiln_index_search's; a set of one shard (a plain index) is that search
 * itself, ties in its order. Safe to call from many threads on one set. */
KILN_API kiln_status kiln_shardset_search(const kiln_shardset *set, const float *queries, size_t nq,
                                          const kiln_search_params *params, int64_t *labels,
                                          float *distances);

/* Writes through a set: each label goes to shard kiln_shard_of(label, N),
 * which changes as kiln_index_add, _delete and _update change one index
 * (labels NULL for add: after the largest label in the set). The shards
 * change in memory; nothing is written until kiln_shardset_save. On failure
 * the set may be partly changed (say, the shards before the one that
 * refused a label): do not save it then. Not while the set is searched. */
KILN_API kiln_status kiln_shardset_add(kiln_shardset *set, const float *vectors,
                                       const int64_t *labels, size_t n);
/* kiln_shardset_add with kiln_index_add_ex's params for every shard's add
 * (a shard's share of the batch decides its automatic method). */
KILN_API kiln_status kiln_shardset_add_ex(kiln_shardset *set, const float *vectors,
                                          const int64_t *labels, size_t n,
                                          const kiln_add_params *params);
KILN_API kiln_status kiln_shardset_delete(kiln_shardset *set, const int64_t *labels, size_t n);
KILN_API kiln_status kiln_shardset_update(kiln_shardset *set, const float *vectors,
                                          const int64_t *labels, size_t n);
/* Saves the set as manifest path. In place (path is the manifest file the
 * set was opened from or last saved to), each changed shard goes to a new
 * file in the manifest's folder named by its content, "<name>-<s>-of-<N>-
 * <header crc>.kiln" (name: path's last component), then the manifest is
 * replaced atomically, then the changed shards' old files are removed: a
 * reader that has opened the set keeps the old one, a new reader gets the
 * new one. Elsewhere every shard is written beside path (the files of a
 * manifest written over are not removed). One writer at a time: the save
 * holds an flock on "<path>.lock" (kept), and refuses, writing nothing,
 * when another writer has replaced the manifest since the set was opened.
 * A plain index opened as a set is saved as an index (kiln_index_save). */
KILN_API kiln_status kiln_shardset_save(kiln_shardset *set, const char *path);

/* What kiln_shardset_build did. */
typedef struct kiln_shardset_report {
    uint32_t shards;             /* N */
    uint32_t built;              /* shards built by this call */
    uint32_t kept;               /* shards found finished (resume) and kept */
    int manifest_written;        /* non-zero when the manifest was written */
    double seconds;              /* the whole call */
    double slowest_seconds;      /* the slowest shard built, gather and save included */
    uint64_t peak_rss_anon;      /* the process's peak anonymous resident bytes */
    uint64_t work_bytes_written; /* summed over the shard builds (gathered rows included) */
    uint64_t work_bytes_read;
} kiln_shardset_report;

/* Builds the shard set set_path over ds: shard s holds, in row order, the
 * rows whose label (params->labels[row], else the row number) hashes to s,
 * with those labels. Each
 * shard's rows are first gathered in one sequential pass into a file in the
 * work dir, then built as any index (params apply to every shard; its work
 * dir is a sub-folder of params->work_dir, or of $TMPDIR when NULL) and saved
 * as "<set_path>-<s>-of-<N>.kiln". shard < 0 builds every shard and then
 * writes the manifest set_path atomically; shard >= 0 builds that one only (N
 * processes or ranks each building one), and a later call with shard < 0 and
 * params->resume finds them. With params->resume, a shard file already there
 * is kept when its header, labels and a sample of its vectors match what this
 * call would build, and an unfinished shard build resumes from its work dir;
 * without it every shard named is built anew. Every shard must get at least
 * one row. rep may be NULL. */
KILN_API kiln_status kiln_shardset_build(kiln_ctx *ctx, const kiln_dataset *ds,
                                         const kiln_build_params *params, uint32_t nshards,
                                         int32_t shard, const char *set_path,
                                         kiln_shardset_report *rep);

/* ==== hnswlib interop ==== */

/* Files in the byte layout of hnswlib's HierarchicalNSW<float>::saveIndex
 * (as a 64-bit little-endian host writes it), so that an index built by kiln
 * can be served by hnswlib and the other way round. The layout and what maps
 * onto what are in docs/FORMAT.md, "hnswlib files". */

typedef struct kiln_hnswlib_export_params {
    /* hnswlib's max_elements_: the elements the loaded index holds before
     * it must be resized (loadIndex takes it when not given a larger one),
     * room for the user's adds. 0 = the index's count (live and free
     * slots); below the count is KILN_E_ARG, above 2^32 - 2 KILN_E_RANGE.
     * Default 0. */
    uint64_t max_elements;
} kiln_hnswlib_export_params;

KILN_API void kiln_hnswlib_export_params_init(kiln_hnswlib_export_params *params);

/* Writes index to path in hnswlib's saveIndex layout, atomically (temporary
 * file, fsync, rename). hnswlib's maxM_ = M_ = M, maxM0_ = M0 = 2M, labels
 * become size_t; node i is hnswlib's element i. A free slot (a deleted node)
 * is written as an element marked deleted, with no links, a zero vector and
 * label 2^63 + i (outside kiln's labels, so never one of them), which
 * hnswlib counts as deleted and, with allow_replace_deleted, reuses. Load it
 * in hnswlib with the space matching the metric: L2 -> "l2", IP -> "ip",
 * COS -> "cosine" (or "ip": the stored vectors are the normalised ones).
 * KILN_E_RANGE when a label is negative. params NULL = the defaults. The
 * index and params are borrowed; nothing is kept. */
KILN_API kiln_status kiln_index_export_hnswlib(const kiln_index *index, const char *path,
                                               const kiln_hnswlib_export_params *params);
/* Reads an hnswlib saveIndex file of float vectors. The metric is not
 * stored there, so the caller gives it; dim 0 takes the dimension the file's
 * record layout implies, any other dim must match it. Every header field,
 * level, link count, id and label is checked before use, and a file whose
 * size is not exactly what its header and link sizes imply is rejected
 * (KILN_E_FORMAT, with the byte offset), as is a sparse file that holds far
 * less data than its size. Also rejected: maxM0_ != 2 * maxM_
 * (KILN_E_UNSUPPORTED), levels above KILN_MAX_LEVELS - 1, labels above
 * INT64_MAX, non-finite values (a deleted element's label and vector are
 * not used, so not checked). Element i becomes node i. Elements marked
 * deleted come out deleted: removed from the graph as kiln_index_delete
 * removes nodes (the lists that named them relinked, the entry point moved),
 * their slots free for kiln_index_add, never returned by a search; they are
 * counted in deleted_elements of the build report. The file's max_elements_
 * becomes the capacity a save records and the first add reserves. COS
 * vectors are normalised on import. The graph is then given kiln's level-0
 * reachability repair, as every kiln build is, so the result passes
 * kiln_index_check; the links added are in repaired_links of the index's
 * kiln_index_build_report (method KILN_METHOD_INSERT, stages "read" and
 * "repair", or "read" and "delete" when elements were deleted: the removal
 * ends with the repair). The seed is 0 (unknown). *out (free with
 * kiln_index_free) is NULL on failure. */
KILN_API kiln_status kiln_index_import_hnswlib(kiln_ctx *ctx, const char *path, uint32_t dim,
                                               kiln_metric metric, kiln_index **out);

#ifdef __cplusplus
}
#endif

#endif /* KILN_H */
