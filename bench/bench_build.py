#!/usr/bin/python3
"""bench_build.py -- kiln's two build methods against hnswlib: build time, recall, QPS.

Usage (normally through bench/run.sh, which builds the binaries first):
  /usr/bin/python3 bench/bench_build.py [--build-dir build] [--datasets a,b]
      [--systems kiln-device,kiln-insert,hnswlib] [--reps 3] [--reps-large 1]
      [--reference-reps-large 3] [--eval-reps 3] [--threads T] [-M 16] [--ef-construction 200] [-k 10]
      [--ef 10,16,32,64,128] [--queries N] [--device auto|cpu|gpu|P:D]

Systems: kiln-device (`kiln build --method device`: 4-bit codes, k-means,
per-cluster all-pairs top-K on an OpenCL device, exact rerank, prune,
hierarchy), kiln-insert (`kiln build --method insert`, CPU HNSW insertion) and
hnswlib (bench/hnswlib_runner: hnswlib's HierarchicalNSW driven like its Python
bindings), all with the same M, ef_construction and build threads.

For each dataset, R repetitions build the index once per system, interleaved
(device, insert, hnswlib, device, insert, hnswlib, ...), and evaluate each
built index right after its build at every ef on one search thread,
--eval-reps times. R is --reps, or --reps-large on datasets of at least
LARGE_COUNT vectors (fmnist60k, synth1m). Quoted figures are medians: build
time over the R builds, recall, QPS and latency over all R x E evaluation
passes; the report says for every figure how many values it is a median of.

Output: one JSON line per result on stdout (dataset, system, ef, recall, qps,
build seconds, machine, cores, commit, device), then per dataset a table and
the device build's stage breakdown, then the issue's targets against hnswlib:
  kiln-device: (a) build time <= 0.5 x hnswlib's (<= 0.3 x on synth1m),
               (b) recall@k at each ef no more than 0.005 below hnswlib's,
               (c) single-thread QPS at recall 0.95 >= 0.9 x hnswlib's;
  kiln-insert: (a) <= 1.3 x, (b) no more than 0.01 below, (c) >= 1.0 x.
QPS at recall 0.95 is interpolated linearly in (recall, log QPS) between the
bracketing ef points. PASS/FAIL is informational: the exit status is 0 unless
the harness itself or a build or evaluation command failed. Everything is also
written to bench/out/<timestamp>-build.jsonl (the JSON lines, per-repetition
raw lines included) and <timestamp>-build.txt (the whole printed report).

Design decisions:
 1. Build time is the WHOLE-PROCESS wall time of the build command, timed from
    outside with a monotonic clock: starting the process, reading the input
    file, building, and writing the index (kiln also validates the graph
    before writing). hnswlib_runner is run as two processes, `--build-only
    --save FILE` (timed) and `--load FILE` (the evaluation, untimed), so no
    evaluation falls inside its timed process. Each system's own timing of the
    build alone (kiln's "build_seconds", which includes reading the file; the
    runner's insertion loop, which does not) is reported next to it.
 2. Before a dataset's first build, its base file is read once, untimed, so
    every system finds it in the page cache (the first would otherwise pay
    the disk alone), and an untimed warm-up device build over its first
    WARMUP_COUNT vectors compiles the OpenCL programs for that dimension, so
    the OpenCL implementation's on-disk kernel cache (PoCL's ~/.cache/pocl, a
    GPU driver's own) is warm and the timed builds measure the steady state a
    user sees from the second build on. The warm-up's wall time is kept in the
    .jsonl ("type":"warmup"). With the cache disabled (POCL_KERNEL_CACHE=0)
    every build pays the compile (about 1 s on PoCL).
 3. Repetitions are interleaved so that load from other users of a shared
    machine falls on all systems alike, and medians (not means) are quoted so
    one disturbed run does not move the result. Build ratios are quoted both
    as the ratio of the medians (the targets) and as the median of the
    per-repetition ratios (robust to drift between repetitions).
 4. Big datasets default to fewer repetitions (--reps-large, 1): one hnswlib
    build of 1M x 128 takes many minutes on a 2-core machine, and the
    repetition count is printed with every figure so a 1-rep median is not
    mistaken for a 3-rep one. The reference (hnswlib) is built more often
    there (--reference-reps-large, 3): its recall moves from build to build
    (at 1M x 128, recall@10 at ef=64 measured 0.946, 0.968 and 0.963 in three
    builds), so one build of it cannot decide a 0.005 recall margin. Its
    extra builds run after the interleaved ones, and the comparison uses its
    medians over all of them.
 5. A failed build or evaluation command is recorded ("type":"error"), that
    system is dropped for the rest of that dataset, and the run goes on, so
    one failure late in a long run does not lose the rest; the exit status is
    then 1.
 6. With fewer build threads than cores, the kiln-device process also gets
    POCL_CPU_MAX_CU_COUNT / POCL_MAX_PTHREAD_COUNT, so PoCL's CPU device does
    not use more cores than the other systems may.
 7. Only Debian's /usr/bin/python3 standard library and numpy are used.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ==== Tunables ====

SYSTEMS = ["kiln-device", "kiln-insert", "hnswlib"]
# Older names, so bench_insert.py command lines keep working.
SYSTEM_ALIASES = {"kiln": "kiln-insert", "insert": "kiln-insert", "device": "kiln-device"}
REFERENCE = "hnswlib"
# The targets of the issues this benchmark tracks, per system against hnswlib:
# build-time ratio limit (with per-dataset overrides), how far recall@k may
# fall below hnswlib's at any ef, and the minimum ratio of QPS at
# TARGET_RECALL_FOR_QPS.
TARGETS = {
    "kiln-device": dict(build_ratio=0.5, build_ratio_by_dataset={"synth1m": 0.3},
                        recall_slack=0.005, qps_ratio=0.9),
    "kiln-insert": dict(build_ratio=1.3, build_ratio_by_dataset={},
                        recall_slack=0.01, qps_ratio=1.0),
}
TARGET_RECALL_FOR_QPS = 0.95
DEFAULT_EF = "10,16,32,64,128"
# Where datasets are looked for, in order: the shared texmex-style folders
# (NAME/NAME_base.fvecs ...) and what bench/fetch_fmnist.sh and
# bench/make_synth.sh write.
DATASET_DIRS = [os.path.join(ROOT, "..", "shared", "datasets"), os.path.join(HERE, "data")]
DEFAULT_DATASETS = ["siftsmall", "fmnistsmall"]
OPTIONAL_DATASETS = ["fmnist60k", "synth1m"]  # included by default once prepared
# Datasets with at least this many base vectors get --reps-large repetitions:
# fmnist60k (60000) and synth1m (1M) are in, the 10000-vector sets out.
LARGE_COUNT = 50000
# Vectors in the untimed warm-up device build: enough for several k-means
# clusters, so every kernel the real build uses is compiled, and well under a
# second to build.
WARMUP_COUNT = 4096
# Read size when pulling a base file into the page cache: large enough that
# the syscalls do not matter, small enough not to hold much memory.
PAGE_CACHE_CHUNK = 16 << 20

# ==== Helpers ====


class CommandFailed(Exception):
    """A command that exited non-zero or printed no JSON: str() is the short
    reason (stderr's last line), .cmd the command line."""

    def __init__(self, reason, cmd):
        super().__init__(reason)
        self.cmd = cmd


class Report:
    """Prints to stdout and keeps a copy for the .txt file; JSON lines also go
    to the .jsonl file (raw lines only there)."""

    def __init__(self, jsonl_path, txt_path):
        self.jsonl = open(jsonl_path, "w")
        self.txt = open(txt_path, "w")

    def line(self, text=""):
        print(text, flush=True)
        self.txt.write(text + "\n")
        self.txt.flush()

    def record(self, obj, show=True):
        text = json.dumps(obj, sort_keys=False)
        self.jsonl.write(text + "\n")
        self.jsonl.flush()
        if show:
            self.line(text)

    def close(self):
        self.jsonl.close()
        self.txt.close()


def cpu_description():
    model, cores = "unknown CPU", 0
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name") and model == "unknown CPU":
                    model = row.split(":", 1)[1].strip()
                elif row.startswith("processor"):
                    cores += 1
    except OSError:
        pass
    return model, cores or os.cpu_count() or 1


def git_commit():
    """Short HEAD, with "-dirty" when tracked files differ from it.
    --no-optional-locks: a read-only look that never rewrites the index."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "-uno"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return head + ("-dirty" if status.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_json(cmd, env=None):
    """Runs cmd, returns (list of JSON objects from stdout, wall seconds of the
    whole process). Raises CommandFailed with stderr's last lines."""
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = round(time.monotonic() - t0, 4)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise CommandFailed(f"{os.path.basename(cmd[0])} exit {proc.returncode}: {last}",
                            " ".join(cmd))
    objs = []
    for row in proc.stdout.splitlines():
        row = row.strip()
        if row.startswith("{"):
            objs.append(json.loads(row))
    if not objs:
        raise CommandFailed(f"{os.path.basename(cmd[0])}: no JSON on stdout", " ".join(cmd))
    return objs, wall


def read_vecs(path, rows=None):
    """fvecs/ivecs as (n, d) int32 words (bit patterns; view as float32); only
    the first `rows` vectors when given."""
    d = int(np.fromfile(path, dtype=np.int32, count=1)[0]) if os.path.getsize(path) else 0
    if d == 0:
        return np.zeros((0, 0), dtype=np.int32)
    count = -1 if rows is None else rows * (d + 1)
    words = np.fromfile(path, dtype=np.int32, count=count)
    return words.reshape(-1, d + 1)[:, 1:]


def read_through(path):
    """Reads a file once so it sits in the page cache (design decision 2)."""
    with open(path, "rb", buffering=0) as f:
        while f.read(PAGE_CACHE_CHUNK):
            pass


def vecs_count(path):
    d = int(np.fromfile(path, dtype=np.int32, count=1)[0])
    return os.path.getsize(path) // (4 * (d + 1))


def write_vecs(path, rows):
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.int32)
    out[:, 0] = rows.shape[1]
    out[:, 1:] = rows
    out.tofile(path)


def find_dataset(name):
    for folder in DATASET_DIRS:
        for sub in (os.path.join(folder, name), folder):
            base = os.path.join(sub, f"{name}_base.fvecs")
            query = os.path.join(sub, f"{name}_query.fvecs")
            gt = os.path.join(sub, f"{name}_groundtruth.ivecs")
            if all(os.path.isfile(p) for p in (base, query, gt)):
                return os.path.normpath(base), os.path.normpath(query), os.path.normpath(gt)
    return None


def median(values):
    return statistics.median(values) if values else float("nan")


def qps_at_recall(points, target):
    """points: [(ef, recall, qps)] sorted by ef. Returns (qps or None, note)."""
    if not points:
        return None, "no points"
    if points[0][1] >= target:
        ef, r, q = points[0]
        return q, f"already {r:.4f} at the lowest ef={ef}: QPS there, a lower bound"
    for (ef1, r1, q1), (ef2, r2, q2) in zip(points, points[1:]):
        if r1 < target <= r2:
            t = (target - r1) / (r2 - r1)
            q = math.exp(math.log(q1) + t * (math.log(q2) - math.log(q1)))
            return q, f"interpolated between ef={ef1} ({r1:.4f}) and ef={ef2} ({r2:.4f})"
    best = max(points, key=lambda p: p[1])
    return None, f"never reaches {target} (best {best[1]:.4f} at ef={best[0]})"


def plural(n, word, many=None):
    return f"{n} {word if n == 1 else (many or word + 's')}"


# ==== Commands per system ====


def kiln_build_cmd(args, method, base, index_path):
    cmd = [args.kiln, "build", base, "-o", index_path, "--metric", args.metric,
           "-M", str(args.M), "--ef-construction", str(args.ef_construction),
           "--method", method, "--threads", str(args.threads), "--seed", str(args.seed),
           "--json"]
    if method == "device" and args.device:
        cmd += ["--device", args.device]
    return cmd


def device_env(args):
    """Environment of a kiln-device process (design decision 6)."""
    env = dict(os.environ)
    if args.threads < (os.cpu_count() or 1):
        env["POCL_CPU_MAX_CU_COUNT"] = str(args.threads)
        env["POCL_MAX_PTHREAD_COUNT"] = str(args.threads)
    return env


def build_once(system, args, base, index_path):
    """One timed build. Returns (build JSON line, whole-process seconds)."""
    if system == "hnswlib":
        cmd = [args.runner, "--build-only", base, "--save", index_path, "--metric",
               args.metric, "-M", str(args.M), "--ef-construction", str(args.ef_construction),
               "--threads", str(args.threads), "--seed", str(args.seed)]
        env = None
    else:
        method = "device" if system == "kiln-device" else "insert"
        cmd = kiln_build_cmd(args, method, base, index_path)
        env = device_env(args) if method == "device" else None
    (line, *_), wall = run_json(cmd, env)
    return line, wall


def evaluate_once(system, args, index_path, query, gt):
    """Evaluates a built index --eval-reps times. Returns the per-ef lines."""
    if system == "hnswlib":
        lines, _ = run_json([args.runner, "--load", index_path, query, gt, "--metric",
                             args.metric, "-k", str(args.k), "--ef", args.ef,
                             "--search-threads", "1", "--eval-reps", str(args.eval_reps)])
        return [x for x in lines if "ef" in x]
    lines = []
    for _ in range(args.eval_reps):
        more, _ = run_json([args.kiln, "eval", index_path, query, gt, "-k", str(args.k),
                            "--ef", args.ef, "--threads", "1", "--json"])
        lines += [x for x in more if "ef" in x]
    return lines


def warm_up_device(name, base, args, ctx, rep, tmp):
    """Untimed device build over the first WARMUP_COUNT vectors (design
    decision 2). Returns the device name the build reports."""
    prefix = os.path.join(tmp, f"{name}_warmup.fvecs")
    rows = read_vecs(base, WARMUP_COUNT)
    write_vecs(prefix, rows)
    index_path = os.path.join(tmp, f"{name}_warmup.kiln")
    try:
        (line, *_), wall = run_json(kiln_build_cmd(args, "device", prefix, index_path),
                                    device_env(args))
    finally:
        for p in (prefix, index_path):
            if os.path.exists(p):
                os.unlink(p)
    rep.record(dict(type="warmup", dataset=name, system="kiln-device", vectors=len(rows),
                    process_seconds=wall, build=line, **ctx["common"]), show=False)
    return line.get("device")


# ==== One dataset ====


def bench_dataset(name, files, args, ctx, rep, tmp):
    base, query, gt = files
    count = vecs_count(base)
    large = count >= LARGE_COUNT
    reps = args.reps_large if (large and args.reps_large > 0) else args.reps
    # Decision 4: builds per system; the reference may get more.
    builds = {s: reps for s in args.systems}
    if large and REFERENCE in builds:
        builds[REFERENCE] = max(reps, args.reference_reps_large)
    if args.queries:
        q = read_vecs(query, args.queries)
        g = read_vecs(gt, args.queries)
        query = os.path.join(tmp, f"{name}_query.fvecs")
        gt = os.path.join(tmp, f"{name}_groundtruth.ivecs")
        write_vecs(query, q)
        write_vecs(gt, g)
    common = dict(dataset=name, **ctx["common"])
    systems = list(args.systems)
    failed = {}
    process = {s: [] for s in systems}   # whole-process build seconds per rep
    internal = {s: [] for s in systems}  # each system's own build timing per rep
    stages = []                          # kiln-device's stage dict per rep
    device_info = []                     # kiln-device's cluster/batch figures per rep
    evals = {s: [] for s in systems}     # every eval line, all reps and passes
    info = dict(count=count)

    def fail(system, r, err):
        failed[system] = str(err)
        rep.line(f"{name}: {system} failed in rep {r}: {err}")
        rep.record(dict(type="error", rep=r, system=system, error=str(err), command=err.cmd,
                        **common), show=False)

    read_through(base)
    if "kiln-device" in systems:
        try:
            device = warm_up_device(name, base, args, ctx, rep, tmp)
            if device and not ctx.get("device"):
                ctx["device"] = device
        except CommandFailed as err:
            fail("kiln-device", "warm-up", err)

    for r in range(max(builds.values())):
        for system in systems:  # device, insert, hnswlib, device, ...
            if system in failed or r >= builds[system]:
                continue
            index_path = os.path.join(tmp, f"{name}.{system}.index")
            try:
                line, wall = build_once(system, args, base, index_path)
                lines = evaluate_once(system, args, index_path, query, gt)
            except CommandFailed as err:
                fail(system, r, err)
                continue
            finally:
                if os.path.exists(index_path):
                    os.unlink(index_path)
            process[system].append(wall)
            internal[system].append(float(line["build_seconds"]))
            if system == "kiln-device":
                stages.append(line.get("stages", {}))
                device_info.append({k: line[k] for k in (
                    "clusters", "max_cluster_size", "device_batches", "batch_retries",
                    "candidates_per_vector") if k in line})
                if line.get("device"):
                    ctx["device"] = line["device"]
            evals[system] += lines
            for key in ("count", "dim"):
                if key in line:
                    info[key] = line[key]
            rep.record(dict(type="raw_build", rep=r, system=system, process_seconds=wall,
                            **common, build=line), show=False)
            for x in lines:
                rep.record(dict(type="raw_eval", rep=r, system=system, **common, eval=x),
                           show=False)

    common = dict(dataset=name, **ctx["common"], device=ctx.get("device"))
    efs = [int(e) for e in args.ef.split(",")]
    summary = {}
    for system in systems:
        summary[system] = []
        for ef in efs:
            per_ef = [x for x in evals[system] if int(x["ef"]) == ef]
            if not per_ef:
                continue
            row = dict(type="result", system=system, ef=ef, k=args.k,
                       recall=median([float(x["recall"]) for x in per_ef]),
                       qps=median([float(x["qps"]) for x in per_ef]),
                       mean_ms=median([float(x["mean_ms"]) for x in per_ef]),
                       p99_ms=median([float(x["p99_ms"]) for x in per_ef]),
                       search_threads=1, build_seconds=median(process[system]),
                       build_seconds_internal=median(internal[system]),
                       build_reps=len(process[system]), eval_passes=len(per_ef),
                       build_threads=args.threads, M=args.M,
                       ef_construction=args.ef_construction, **common)
            rep.record(row)
            summary[system].append(row)

    build = dict(type="build", threads=args.threads, reps=reps, **common)
    for system in systems:
        build[system] = dict(process_seconds=process[system],
                             process_median=median(process[system]),
                             internal_seconds=internal[system],
                             internal_median=median(internal[system]))
        if REFERENCE in systems and system != REFERENCE and process[system] \
                and process[REFERENCE]:
            build[system]["ratio_of_medians"] = round(
                median(process[system]) / median(process[REFERENCE]), 4)
            build[system]["median_pair_ratio"] = round(median(
                [s / h for s, h in zip(process[system], process[REFERENCE])]), 4)
    rep.record(build)

    stage_medians = {}
    for st in stages:
        for key in st:
            stage_medians.setdefault(key, None)
    for key in stage_medians:
        stage_medians[key] = median([st[key] for st in stages if key in st])
    device_medians = {}
    for key in ("clusters", "max_cluster_size", "device_batches", "batch_retries",
                "candidates_per_vector"):
        vals = [d[key] for d in device_info if key in d]
        if vals:
            device_medians[key] = median(vals)
    if stages:
        slowest = max(stage_medians, key=stage_medians.get)
        rep.record(dict(type="stages", system="kiln-device", reps=len(stages),
                        stages=stage_medians, slowest=slowest,
                        build_seconds_internal=median(internal["kiln-device"]),
                        **device_medians, **common))
    return dict(name=name, info=info, build=build, summary=summary, reps=reps, builds=builds,
                nq=vecs_count(query), stages=stage_medians, device=device_medians,
                failed=failed, systems=systems)


# ==== Report ====


def reps_text(res):
    """'3 reps', or '1 rep (hnswlib 3)' where the reference got more builds."""
    text = plural(res["reps"], "rep")
    more = {s: n for s, n in res["builds"].items() if n != res["reps"]}
    if more:
        text += " (" + ", ".join(f"{s} {n}" for s, n in more.items()) + ")"
    return text


def print_table(rep, res, args):
    b = res["build"]
    info = res["info"]
    systems = res["systems"]
    rep.line()
    rep.line(f"== {res['name']}: {info.get('count', '?')} x {info.get('dim', '?')}, "
             f"{res['nq']} queries, metric {args.metric}, M={args.M}, "
             f"ef_construction={args.ef_construction}, build threads={args.threads} ==")
    rep.line(f"build: whole-process wall seconds, median of {reps_text(res)} "
             f"(internal = the system's own timing of the build; kiln's includes reading "
             f"the file, hnswlib's does not)")
    header = f"  {'system':<12} {'build s':>9} {'internal s':>10} {'x ' + REFERENCE:>10} " \
             f"{'pair ratio':>10}  per-rep build s"
    rep.line(header)
    for s in systems:
        x = b[s]
        if not x["process_seconds"]:
            rep.line(f"  {s:<12} {'failed':>9}  {res['failed'].get(s, '')}")
            continue
        ratio = f"{x['ratio_of_medians']:.3f}" if "ratio_of_medians" in x else "-"
        pair = f"{x['median_pair_ratio']:.3f}" if "median_pair_ratio" in x else "-"
        per_rep = ", ".join(f"{v:.2f}" for v in x["process_seconds"])
        rep.line(f"  {s:<12} {x['process_median']:>9.3f} {x['internal_median']:>10.3f} "
                 f"{ratio:>10} {pair:>10}  {per_rep}")
    if res["stages"]:
        total = sum(res["stages"].values())
        slowest = max(res["stages"], key=res["stages"].get)
        parts = ", ".join(f"{k} {v:.3f}" for k, v in res["stages"].items())
        rep.line(f"kiln-device stages (median s of {plural(len(b['kiln-device']['process_seconds']), 'rep')}): "
                 f"{parts}; slowest: {slowest} "
                 f"({res['stages'][slowest]:.3f} s, {100 * res['stages'][slowest] / total:.0f}% "
                 f"of the stages' sum)")
        d = res["device"]
        rep.line(f"kiln-device: {d.get('clusters', 0):g} clusters (largest "
                 f"{d.get('max_cluster_size', 0):g}), {d.get('device_batches', 0):g} device "
                 f"batches, {d.get('batch_retries', 0):g} retries, "
                 f"{d.get('candidates_per_vector', 0):.1f} candidates per vector")
    passes = {s: (res["summary"][s][0]["eval_passes"] if res["summary"][s] else 0)
              for s in systems}
    rep.line(f"search: recall@{args.k} and single-thread QPS, median of "
             + ", ".join(f"{s} {plural(passes[s], 'pass', 'passes')}" for s in systems)
             + f" ({reps_text(res)} x {args.eval_reps} eval)")
    header = f"  {'ef':>5}"
    for s in systems:
        header += f" | {s + ' recall':>18} {'QPS':>8}"
    rep.line(header)
    rep.line("  " + "-" * (len(header) - 2))
    rows = {s: {x["ef"]: x for x in res["summary"][s]} for s in systems}
    for ef in sorted({ef for s in systems for ef in rows[s]}):
        text = f"  {ef:>5}"
        for s in systems:
            x = rows[s].get(ef)
            if x is None:
                text += f" | {'-':>18} {'-':>8}"
            else:
                text += f" | {x['recall']:>18.4f} {x['qps']:>8.0f}"
        rep.line(text)


def check_targets(rep, res, args, ctx):
    name = res["name"]
    systems = res["systems"]
    pts = {s: [(x["ef"], x["recall"], x["qps"]) for x in sorted(res["summary"][s],
                                                                   key=lambda x: x["ef"])]
           for s in systems}
    interp = {s: qps_at_recall(pts[s], TARGET_RECALL_FOR_QPS) for s in systems}
    for s in systems:
        q, note = interp[s]
        rep.line(f"  {s}: QPS at recall {TARGET_RECALL_FOR_QPS}: "
                 f"{'n/a' if q is None else f'{q:.0f}'} ({note})")
    verdicts_all = []
    if REFERENCE not in systems or not res["summary"][REFERENCE]:
        rep.line(f"  targets compare with {REFERENCE}, which was not run or failed; skipped")
        return verdicts_all
    h_rows = {x["ef"]: x["recall"] for x in res["summary"][REFERENCE]}
    hq, hnote = interp[REFERENCE]
    for system in systems:
        if system not in TARGETS:
            continue
        t = TARGETS[system]
        verdicts = []
        bx = res["build"][system]
        if not bx["process_seconds"]:
            for target in ("a_build_time", "b_recall", "c_qps_at_recall"):
                verdicts.append((target, False, f"{system} failed: {res['failed'].get(system)}"))
        else:
            limit = t["build_ratio_by_dataset"].get(name, t["build_ratio"])
            ratio = bx["ratio_of_medians"]
            verdicts.append(("a_build_time", ratio <= limit,
                             f"{system}/{REFERENCE} whole-process build time {ratio:.3f} "
                             f"(limit {limit}; median of {plural(len(bx['process_seconds']), 'rep')}); "
                             f"median pair ratio {bx['median_pair_ratio']:.3f}; internal "
                             f"timings {bx['internal_median'] / res['build'][REFERENCE]['internal_median']:.3f}"))

            s_rows = {x["ef"]: x["recall"] for x in res["summary"][system]}
            diffs = {ef: round(s_rows[ef] - h_rows[ef], 6) + 0.0  # no "-0.0000"
                     for ef in sorted(s_rows) if ef in h_rows}
            slack = t["recall_slack"]
            ok_b = bool(diffs) and all(d >= -slack for d in diffs.values())
            verdicts.append(("b_recall", ok_b,
                             "%s - %s recall@%d: %s (each must be >= -%s)" % (
                                 system, REFERENCE, args.k,
                                 ", ".join(f"ef {ef} {d:+.4f}" for ef, d in diffs.items()),
                                 slack)))

            sq, snote = interp[system]
            need = t["qps_ratio"]
            if sq is None:
                ok_c, text = False, f"{system} never reaches recall {TARGET_RECALL_FOR_QPS}"
            elif hq is None:
                ok_c, text = True, (f"{system} {sq:.0f} QPS; {REFERENCE} never reaches recall "
                                    f"{TARGET_RECALL_FOR_QPS}")
            else:
                ok_c = sq >= need * hq
                text = (f"{system} {sq:.0f} vs {REFERENCE} {hq:.0f} QPS at recall "
                        f"{TARGET_RECALL_FOR_QPS} ({sq / hq:.3f}x, need >= {need}x)")
                if "lower bound" in snote and "lower bound" in hnote:
                    text += "; both above the target at the lowest ef, so this compares QPS there"
            verdicts.append(("c_qps_at_recall", ok_c, text))
        for target, ok, text in verdicts:
            rep.line(f"  {system} ({target[0]}) {'PASS' if ok else 'FAIL'}: {text}")
            rep.record(dict(type="target", dataset=name, system=system, target=target,
                            verdict="PASS" if ok else "FAIL", detail=text,
                            qps_at_recall=interp[system][0],
                            reference_qps_at_recall=hq, **ctx["common"],
                            device=ctx.get("device")), show=False)
            verdicts_all.append((system, target, ok))
    return verdicts_all


# ==== Main ====


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"),
                    help="folder holding kiln and hnswlib_runner (default build/)")
    ap.add_argument("--datasets", default=None,
                    help="comma-separated names (default siftsmall,fmnistsmall, plus fmnist60k"
                         " and synth1m once bench/fetch_fmnist.sh / make_synth.sh made them)")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="comma-separated subset of " + ",".join(SYSTEMS))
    ap.add_argument("--reps", type=int, default=3, help="build repetitions per system")
    ap.add_argument("--reps-large", type=int, default=1,
                    help=f"repetitions on datasets of >= {LARGE_COUNT} vectors "
                         "(0: use --reps there too)")
    ap.add_argument("--reference-reps-large", type=int, default=3,
                    help=f"builds of {REFERENCE} on datasets of >= {LARGE_COUNT} vectors, "
                         "when more than the other systems get there (its recall varies "
                         "from build to build)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="build threads for every system (default: all cores)")
    ap.add_argument("-M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--ef", default=DEFAULT_EF)
    ap.add_argument("--metric", default="l2", choices=["l2", "ip", "cos"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-reps", type=int, default=3,
                    help="evaluation passes per built index (medians over all passes)")
    ap.add_argument("--queries", type=int, default=0,
                    help="use only the first N queries (quick runs on large sets)")
    ap.add_argument("--device", default=None,
                    help="OpenCL device for kiln-device (default: $KILN_DEVICE, else auto)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--tag", default="build",
                    help="output files are <timestamp>-TAG.jsonl and .txt")
    args = ap.parse_args(argv)

    systems = []
    for s in args.systems.split(","):
        s = SYSTEM_ALIASES.get(s.strip(), s.strip())
        if s and s not in systems:
            systems.append(s)
    if not systems or any(s not in SYSTEMS for s in systems):
        ap.error("--systems: a comma-separated subset of " + ",".join(SYSTEMS))
    args.systems = [s for s in SYSTEMS if s in systems]  # fixed interleaving order
    if args.reps < 1 or args.eval_reps < 1 or args.reps_large < 0 or args.threads < 1 \
            or args.reference_reps_large < 1:
        ap.error("--reps, --eval-reps, --reference-reps-large and --threads must be at least 1, "
                 "--reps-large at least 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    args.kiln = os.path.join(args.build_dir, "kiln")
    args.runner = os.path.join(args.build_dir, "hnswlib_runner")
    for s in args.systems:
        needed = args.runner if s == REFERENCE else args.kiln
        if not os.access(needed, os.X_OK):
            sys.exit(f"bench_build.py: {needed} missing; run bench/run.sh or build it")

    if args.datasets:
        names = [d for d in args.datasets.split(",") if d]
    else:
        names = DEFAULT_DATASETS + [d for d in OPTIONAL_DATASETS if find_dataset(d)]
    found = {}
    for name in names:
        files = find_dataset(name)
        if files is None:
            hint = {"fmnist60k": " (run bench/fetch_fmnist.sh)",
                    "synth1m": " (run bench/make_synth.sh)"}.get(name, "")
            sys.exit(f"bench_build.py: dataset {name}: no {name}_base.fvecs, _query.fvecs and "
                     f"_groundtruth.ivecs under {' or '.join(DATASET_DIRS)}{hint}")
        found[name] = files

    os.makedirs(args.out_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    rep = Report(os.path.join(args.out_dir, f"{stamp}-{args.tag}.jsonl"),
                 os.path.join(args.out_dir, f"{stamp}-{args.tag}.txt"))
    cpu, cores = cpu_description()
    ctx = dict(common=dict(machine=f"{cpu}, {cores} cores", cpu=cpu, cores=cores,
                           commit=git_commit()), device=None)
    rep.record(dict(type="run", datasets=names, systems=args.systems, reps=args.reps,
                    reps_large=args.reps_large, reference_reps_large=args.reference_reps_large,
                    large_count=LARGE_COUNT, threads=args.threads,
                    M=args.M, ef_construction=args.ef_construction, k=args.k, ef=args.ef,
                    metric=args.metric, seed=args.seed, eval_reps=args.eval_reps,
                    queries=args.queries or "all", device_option=args.device,
                    **ctx["common"]), show=False)

    tmp = tempfile.mkdtemp(prefix=f"tmp-{args.tag}-", dir=args.out_dir)
    results = []
    try:
        for n in names:
            results.append(bench_dataset(n, found[n], args, ctx, rep, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    common = ctx["common"]
    rep.line()
    rep.line(f"machine: {common['machine']}; commit {common['commit']}; OpenCL device "
             f"(kiln-device): {ctx.get('device') or 'n/a'}; single-thread search, "
             f"recall@{args.k}")
    for res in results:
        print_table(rep, res, args)
    rep.line()
    rep.line("== targets (informational) ==")
    verdicts = []
    for res in results:
        rep.line(f"{res['name']} (builds: median of {reps_text(res)}):")
        verdicts += [(res["name"],) + v for v in check_targets(rep, res, args, ctx)]
    if verdicts:
        rep.line()
        rep.line("summary: " + "; ".join(
            f"{system} {sum(ok for d, s, t, ok in verdicts if s == system)}/"
            f"{sum(1 for d, s, t, ok in verdicts if s == system)} PASS"
            for system in args.systems if system in TARGETS))
    rep.line()
    rep.line(f"written: {rep.jsonl.name} and {rep.txt.name}")
    rep.close()
    if any(res["failed"] for res in results):
        sys.exit("bench_build.py: some commands failed (the \"failed\" lines above; "
                 "\"type\": \"error\" lines in the .jsonl give the commands)")


if __name__ == "__main__":
    main()
