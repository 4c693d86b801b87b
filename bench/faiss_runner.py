#!/usr/bin/python3
"""faiss_runner.py -- the FAISS side of bench/compare: IndexHNSWFlat build and evaluation.

Builds a faiss.IndexHNSWFlat over a base set with the parameters kiln is given
(M, efConstruction, build threads), times the build, then measures recall@k,
QPS and latency at a list of efSearch values the way `kiln eval` and
bench/hnswlib_runner do, printing one JSON line for the build and one per ef
(the keys of `kiln eval --json` plus "system":"faiss").

Usage (three modes, as hnswlib_runner):
  faiss_runner.py BASE QUERIES GT [options]             build, then evaluate
  faiss_runner.py --build-only BASE [--save FILE] [build options]
  faiss_runner.py --load FILE QUERIES GT [search options]
Build options: [--metric l2|ip|cos] [-M 16] [--ef-construction 200]
  [--threads T]; search options: [--metric ...] [-k 10] [--ef 10,16,32,64,128]
  [--eval-reps 1]. Run under Debian's /usr/bin/python3 (python3-faiss, numpy).

Design decisions:
 1. Files are read with numpy memory maps, by extension, for every format
    kiln reads: fvecs, bvecs, ivecs (texmex), fbin, u8bin, i8bin (big-ann;
    ibin too, for ground truth) and npy. Vectors become float32, as kiln
    and hnswlib_runner see them. Reading is outside the timed build.
 2. The build is one index.add() over the whole base with
    faiss.omp_set_num_threads(--threads): how FAISS is normally driven (and
    how ann-benchmarks drives it). FAISS's level generator has its own fixed
    seed, which the Python API does not expose, so there is no --seed.
 3. Search is timed as `kiln eval` times it: per ef one warm-up pass over all
    queries, then a timed pass on one OpenMP thread sending the queries one
    at a time (one index.search call each); QPS = queries / wall clock of the
    whole pass (time.perf_counter, monotonic); per-query latency gives the
    mean and the nearest-rank p99. Each call crosses from Python into C++
    (a few microseconds), which one-at-a-time C++ callers do not pay, so
    every ef line also carries "qps_batch": the same queries as one
    index.search call on one thread, which has no per-query Python cost.
 4. recall@k = mean over queries of |returned top-k ∩ first k ground-truth
    ids| / k, the definition `kiln eval` uses.
 5. Cosine is "normalise, then inner product", as kiln and hnswlib do; the
    saved index holds normalised vectors, so --load needs the build's
    --metric to normalise the queries.
 6. The build line reports "startup_seconds" (interpreter start to numpy and
    faiss imported): a caller timing the whole process from outside sees it
    in the process time, and it is not the index build.
 7. Errors go to stderr as one line and exit status 1; stdout carries JSON
    only.
"""

import time

STARTED = time.monotonic()

import argparse  # noqa: E402  (imports after STARTED: decision 6)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

# ==== Tunables ====

# The defaults of `kiln build` / `kiln eval` and hnswlib_runner, so a run with
# no options compares like with like.
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_K = 10
DEFAULT_EF = "10,16,32,64,128"

# Texmex formats: per record an int32 dimension, then d values of this type.
VECS_TYPES = {".fvecs": np.float32, ".bvecs": np.uint8, ".ivecs": np.int32}
# Big-ann formats: uint32 n, uint32 d, then n*d values of this type.
BIN_TYPES = {".fbin": np.float32, ".u8bin": np.uint8, ".i8bin": np.int8, ".ibin": np.int32}

# ==== Readers ====


class RunnerError(Exception):
    """A one-line message for stderr (decision 7)."""


def read_matrix(path):
    """The file's records as an (n, d) array, memory-mapped where the layout
    allows (design decision 1); the dtype is the file's."""
    ext = os.path.splitext(path)[1].lower()
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise RunnerError(f"{path}: {err.strerror}") from None
    if ext in VECS_TYPES:
        vt = np.dtype(VECS_TYPES[ext])
        if size == 0:
            return np.zeros((0, 0), dtype=vt)
        d = int(np.fromfile(path, dtype="<i4", count=1)[0])
        record = 4 + d * vt.itemsize
        if d <= 0 or size % record:
            raise RunnerError(f"{path}: dimension {d} in the first record does not divide the "
                              f"file size {size} into records")
        n = size // record
        raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, record))
        dims = raw[:, :4].copy().view("<i4").ravel()
        bad = np.flatnonzero(dims != d)
        if bad.size:
            raise RunnerError(f"{path}: record {bad[0]} (byte offset {bad[0] * record}) has "
                              f"dimension {dims[bad[0]]}, the first has {d}")
        return raw[:, 4:].view(vt.newbyteorder("<"))
    if ext in BIN_TYPES:
        vt = np.dtype(BIN_TYPES[ext])
        if size < 8:
            raise RunnerError(f"{path}: {size} bytes, shorter than the 8-byte header")
        n, d = (int(v) for v in np.fromfile(path, dtype="<u4", count=2))
        if 8 + n * d * vt.itemsize != size:
            raise RunnerError(f"{path}: header says {n} x {d} but the file has {size} bytes")
        return np.memmap(path, dtype=vt.newbyteorder("<"), mode="r", offset=8, shape=(n, d))
    if ext == ".npy":
        try:
            a = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise RunnerError(f"{path}: not a readable .npy file: {err}") from None
        if a.ndim != 2:
            raise RunnerError(f"{path}: array has {a.ndim} dimensions, need 2")
        return a
    raise RunnerError(f"{path}: unknown extension '{ext}' (fvecs, bvecs, ivecs, fbin, u8bin, "
                      "i8bin, ibin, npy)")


def read_f32(path, metric):
    """float32, C-contiguous, normalised for cos (decision 5)."""
    x = np.ascontiguousarray(read_matrix(path), dtype=np.float32)
    if not np.all(np.isfinite(x)):
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise RunnerError(f"{path}: record {row} holds NaN or Inf")
    if metric == "cos":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        norms[norms == 0] = 1
        x = np.ascontiguousarray(x / norms, dtype=np.float32)
    return x


# ==== Build and search ====


def faiss_metric(faiss, metric):
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def build(faiss, args):
    t0 = time.monotonic()
    x = read_f32(args.base, args.metric)
    read_seconds = time.monotonic() - t0
    if x.shape[0] == 0:
        raise RunnerError(f"{args.base}: no vectors")
    faiss.omp_set_num_threads(args.threads)
    index = faiss.IndexHNSWFlat(x.shape[1], args.M, faiss_metric(faiss, args.metric))
    index.hnsw.efConstruction = args.ef_construction
    t0 = time.monotonic()
    index.add(x)
    build_seconds = time.monotonic() - t0
    save_seconds = 0.0
    if args.save:
        t0 = time.monotonic()
        faiss.write_index(index, args.save)
        save_seconds = time.monotonic() - t0
    line = dict(system="faiss", build_seconds=round(build_seconds, 4),
                read_seconds=round(read_seconds, 4), save_seconds=round(save_seconds, 4),
                startup_seconds=round(args.startup_seconds, 4), count=int(x.shape[0]),
                dim=int(x.shape[1]), metric=args.metric, M=args.M,
                ef_construction=args.ef_construction, threads=args.threads,
                faiss_version=faiss.__version__,
                faiss_compile_options=(faiss.get_compile_options().strip()
                                       if hasattr(faiss, "get_compile_options") else "unknown"))
    print(json.dumps(line), flush=True)
    return index


def evaluate(faiss, index, args):
    q = read_f32(args.queries, args.metric)
    gt = read_matrix(args.groundtruth)
    nq = q.shape[0]
    if q.shape[1] != index.d:
        raise RunnerError(f"{args.queries} has dim {q.shape[1]} but the index has dim {index.d}")
    if gt.shape[0] < nq or gt.shape[1] < args.k:
        raise RunnerError(f"{args.groundtruth}: {gt.shape[0]} x {gt.shape[1]} ids, need at least "
                          f"{nq} x {args.k} for {nq} queries and k = {args.k}")
    truth = np.asarray(gt[:nq, :args.k], dtype=np.int64)
    faiss.omp_set_num_threads(1)
    rows = [q[i:i + 1] for i in range(nq)]  # sliced once, outside the timed loops
    labels = np.empty((nq, args.k), dtype=np.int64)
    lat = np.empty(nq)
    clock = time.perf_counter
    for _ in range(args.eval_reps):
        for ef in args.ef:
            index.hnsw.efSearch = ef
            for timed in (False, True):  # pass 1 warms up (decision 3)
                t_pass = clock()
                for i, row in enumerate(rows):
                    ts = clock()
                    _, ids = index.search(row, args.k)
                    lat[i] = clock() - ts
                    labels[i] = ids[0]
                wall = clock() - t_pass
            t0 = clock()
            index.search(q, args.k)
            batch_wall = clock() - t0
            hits = sum(len(np.intersect1d(labels[i], truth[i])) for i in range(nq))
            ordered = np.sort(lat)
            p99 = ordered[max(int(np.ceil(0.99 * nq)) - 1, 0)] if nq else 0.0
            print(json.dumps(dict(
                system="faiss", ef=ef, k=args.k, recall=round(hits / (nq * args.k), 6),
                qps=round(nq / wall, 1), mean_ms=round(float(lat.mean()) * 1e3, 5),
                p99_ms=round(float(p99) * 1e3, 5), threads=1,
                qps_batch=round(nq / batch_wall, 1))), flush=True)


# ==== Main ====


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="BASE QUERIES GT | --build-only BASE | "
                                             "--load FILE QUERIES GT")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--load", metavar="FILE")
    ap.add_argument("--save", metavar="FILE")
    ap.add_argument("--metric", default="l2", choices=["l2", "ip", "cos"])
    ap.add_argument("-M", type=int, default=DEFAULT_M)
    ap.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION)
    ap.add_argument("--threads", type=int, default=0, help="build threads; 0 = all cores")
    ap.add_argument("-k", type=int, default=DEFAULT_K)
    ap.add_argument("--ef", default=DEFAULT_EF, help="comma-separated efSearch values")
    ap.add_argument("--eval-reps", type=int, default=1,
                    help="passes over the whole ef list, one line per ef per pass")
    args = ap.parse_args(argv)
    want = 1 if args.build_only else 3 if not args.load else 2
    if args.build_only and args.load:
        ap.error("--build-only and --load exclude each other")
    if len(args.files) != want:
        ap.error(f"expected {want} file arguments, got {len(args.files)}")
    if args.load and args.save:
        ap.error("--save does not go with --load")
    if args.M < 2 or args.ef_construction < 1 or args.k < 1 or args.eval_reps < 1 \
            or args.threads < 0:
        ap.error("-M must be at least 2; --ef-construction, -k, --eval-reps at least 1")
    try:
        args.ef = [int(e) for e in args.ef.split(",")]
    except ValueError:
        ap.error(f"--ef: not a comma-separated list of integers: '{args.ef}'")
    if not args.ef or min(args.ef) < 1:
        ap.error("--ef: values must be positive")
    args.threads = args.threads or os.cpu_count() or 1
    args.base = args.queries = args.groundtruth = None
    if args.load:
        args.queries, args.groundtruth = args.files
    elif args.build_only:
        args.base, = args.files
    else:
        args.base, args.queries, args.groundtruth = args.files
    return args


def main(argv=None):
    args = parse_args(argv)
    import faiss  # here, so bench/compare can import the readers without it

    args.startup_seconds = time.monotonic() - STARTED
    try:
        if args.load:
            if not os.path.isfile(args.load):
                raise RunnerError(f"{args.load}: no such file")
            index = faiss.read_index(args.load)  # already the concrete type
            if not hasattr(index, "hnsw"):
                raise RunnerError(f"{args.load}: not an HNSW index")
        else:
            index = build(faiss, args)
        if not args.build_only:
            evaluate(faiss, index, args)
    except RunnerError as err:
        sys.exit(f"faiss_runner: {err}")


if __name__ == "__main__":
    main()
