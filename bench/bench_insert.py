#!/usr/bin/python3
"""bench_insert.py -- kiln's insert build against hnswlib: build time, recall, QPS.

Usage (normally through bench/run.sh, which builds the two binaries first):
  /usr/bin/python3 bench/bench_insert.py [--build-dir build] [--datasets a,b]
      [--reps 3] [--threads T] [-M 16] [--ef-construction 200] [-k 10]
      [--ef 10,16,32,64,128] [--eval-reps 3] [--queries N] [--systems kiln,hnswlib]

For each dataset, R repetitions each build the index with `kiln build
--method insert` and with bench/hnswlib_runner (hnswlib's HierarchicalNSW
driven like its Python bindings), interleaved kiln, hnswlib, kiln, hnswlib...,
and evaluate both at every ef on one search thread, --eval-reps times per
built index (default 3: `kiln eval` run 3 times, the runner's --eval-reps 3).
Quoted figures are medians: build time over the repetitions, recall, QPS and
latency over all evaluation passes of all repetitions.

Output: one JSON line per result on stdout (dataset, system, ef, recall, qps,
build_seconds, machine, commit), then a table, then the issue's targets:
  (a) kiln build time <= 1.3 x hnswlib's (ratio of the medians),
  (b) kiln recall@k at each ef no more than 0.01 below hnswlib's,
  (c) kiln single-thread QPS at recall 0.95 >= hnswlib's, each system's value
      interpolated linearly in (recall, log QPS) between the bracketing ef
      points.
PASS/FAIL is informational: the exit status is 0 unless the harness itself
failed. Everything is also written to bench/out/<timestamp>-insert.jsonl (the
JSON lines, per-repetition raw lines included) and <timestamp>-insert.txt (the
whole printed report).

Design decisions:
 1. Build times are the ones each system reports for its build alone
    (`kiln build --json` "build_seconds", the runner's timed insert loop),
    not process wall time, which would add file reading and index saving on
    kiln's side only; the process times are kept in the raw lines.
 2. Repetitions are interleaved so that load from other users of a shared
    machine falls on both systems alike, and medians (not means) are quoted
    so one disturbed run does not move the result. The build ratio is quoted
    both as the ratio of the medians (the target) and as the median of the
    per-pair ratios (robust to drift between pairs).
 3. Only Debian's /usr/bin/python3 standard library and numpy are used.
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

# The targets of the issue this benchmark tracks.
TARGET_BUILD_RATIO = 1.3
TARGET_RECALL_SLACK = 0.01
TARGET_RECALL_FOR_QPS = 0.95
DEFAULT_EF = "10,16,32,64,128"
# Where datasets are looked for, in order: the shared texmex-style folders
# (NAME/NAME_base.fvecs ...) and what bench/fetch_fmnist.sh writes.
DATASET_DIRS = [os.path.join(ROOT, "..", "shared", "datasets"), os.path.join(HERE, "data")]
DEFAULT_DATASETS = ["siftsmall", "fmnistsmall"]
OPTIONAL_DATASETS = ["fmnist60k"]  # included by default once fetched

# ==== Helpers ====


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


def machine_description():
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
    return f"{model}, {cores or os.cpu_count()} cores"


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_json(cmd):
    """Runs cmd, returns (list of JSON objects from stdout, wall seconds)."""
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(f"bench_insert.py: command failed (exit {proc.returncode}): {' '.join(cmd)}")
    objs = []
    for row in proc.stdout.splitlines():
        row = row.strip()
        if row.startswith("{"):
            objs.append(json.loads(row))
    if not objs:
        sys.exit(f"bench_insert.py: no JSON on stdout from: {' '.join(cmd)}")
    return objs, wall


def read_vecs(path):
    """fvecs/ivecs as (n, d) int32 words (bit patterns; view as float32)."""
    words = np.fromfile(path, dtype=np.int32)
    if words.size == 0:
        return words.reshape(0, 0)
    d = int(words[0])
    return words.reshape(-1, d + 1)[:, 1:]


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


# ==== One dataset ====


def bench_dataset(name, files, args, ctx, rep, tmp):
    base, query, gt = files
    if args.queries:
        q = read_vecs(query)[: args.queries]
        g = read_vecs(gt)[: args.queries]
        query = os.path.join(tmp, f"{name}_query.fvecs")
        gt = os.path.join(tmp, f"{name}_groundtruth.ivecs")
        write_vecs(query, q)
        write_vecs(gt, g)
    common = dict(dataset=name, machine=ctx["machine"], commit=ctx["commit"])
    builds = {s: [] for s in args.systems}
    evals = {s: [] for s in args.systems}  # every eval line, all reps and passes
    info = {}
    index_path = os.path.join(tmp, f"{name}.kiln")

    for r in range(args.reps):
        for system in args.systems:  # kiln, hnswlib, kiln, hnswlib, ...
            if system == "kiln":
                cmd = [args.kiln, "build", base, "-o", index_path, "--metric", args.metric,
                       "-M", str(args.M), "--ef-construction", str(args.ef_construction),
                       "--method", "insert", "--threads", str(args.threads),
                       "--seed", str(args.seed), "--json"]
                (build_line, *_), wall = run_json(cmd)
                lines, eval_wall = [], 0.0
                for _ in range(args.eval_reps):
                    more, more_wall = run_json(
                        [args.kiln, "eval", index_path, query, gt, "-k", str(args.k), "--ef",
                         args.ef, "--threads", "1", "--json"])
                    lines += more
                    eval_wall += more_wall
                os.unlink(index_path)
            else:
                cmd = [args.runner, base, query, gt, "--metric", args.metric, "-M", str(args.M),
                       "--ef-construction", str(args.ef_construction), "--threads",
                       str(args.threads), "--seed", str(args.seed), "-k", str(args.k), "--ef",
                       args.ef, "--search-threads", "1", "--eval-reps", str(args.eval_reps)]
                (build_line, *lines), wall = run_json(cmd)
                eval_wall = None
            builds[system].append(float(build_line["build_seconds"]))
            evals[system] += [x for x in lines if "ef" in x]
            for key in ("count", "dim"):
                if key in build_line:
                    info[key] = build_line[key]
            rep.record(dict(type="raw_build", rep=r, system=system, process_seconds=wall,
                            eval_process_seconds=eval_wall, **common, build=build_line),
                       show=False)
            for x in lines:
                rep.record(dict(type="raw_eval", rep=r, system=system, **common, eval=x),
                           show=False)

    efs = [int(e) for e in args.ef.split(",")]
    summary = {}
    for system in args.systems:
        summary[system] = []
        build_median = median(builds[system])
        for ef in efs:
            per_rep = [x for x in evals[system] if int(x["ef"]) == ef]
            if not per_rep:
                continue
            row = dict(type="result", dataset=name, system=system, ef=ef, k=args.k,
                       recall=median([float(x["recall"]) for x in per_rep]),
                       qps=median([float(x["qps"]) for x in per_rep]),
                       mean_ms=median([float(x["mean_ms"]) for x in per_rep]),
                       p99_ms=median([float(x["p99_ms"]) for x in per_rep]),
                       search_threads=1, build_seconds=build_median,
                       build_threads=args.threads, M=args.M,
                       ef_construction=args.ef_construction, reps=args.reps,
                       evals=len(per_rep),
                       machine=ctx["machine"], commit=ctx["commit"])
            rep.record(row)
            summary[system].append(row)

    build = dict(type="build", dataset=name, threads=args.threads, reps=args.reps,
                 machine=ctx["machine"], commit=ctx["commit"])
    for system in args.systems:
        build[f"{system}_seconds"] = builds[system]
        build[f"{system}_median"] = median(builds[system])
    if "kiln" in builds and "hnswlib" in builds:
        build["ratio_of_medians"] = build["kiln_median"] / build["hnswlib_median"]
        build["median_pair_ratio"] = median(
            [k / h for k, h in zip(builds["kiln"], builds["hnswlib"])])
    rep.record(build)
    return dict(name=name, info=info, build=build, summary=summary,
                nq=len(read_vecs(query)))


# ==== Report ====


def print_table(rep, res, args):
    b = res["build"]
    info = res["info"]
    rep.line()
    rep.line(f"== {res['name']}: {info.get('count', '?')} x {info.get('dim', '?')}, "
             f"{res['nq']} queries, metric {args.metric}, M={args.M}, "
             f"ef_construction={args.ef_construction}, build threads={args.threads}, "
             f"reps={args.reps} x {args.eval_reps} eval passes (medians) ==")
    parts = [f"{s} {b[s + '_median']:.3f} s" for s in args.systems]
    text = "build: " + ", ".join(parts)
    if "ratio_of_medians" in b:
        text += (f"; kiln/hnswlib = {b['ratio_of_medians']:.3f} (median of pair ratios "
                 f"{b['median_pair_ratio']:.3f})")
    rep.line(text)
    header = f"{'ef':>5}"
    for s in args.systems:
        header += f" | {s + ' recall':>14} {'QPS':>9} {'mean ms':>8} {'p99 ms':>8}"
    if len(args.systems) == 2:
        header += f" | {'d recall':>8} {'QPS ratio':>9}"
    rep.line(header)
    rep.line("-" * len(header))
    rows = {s: {x["ef"]: x for x in res["summary"][s]} for s in args.systems}
    for ef in sorted({ef for s in args.systems for ef in rows[s]}):
        text = f"{ef:>5}"
        for s in args.systems:
            x = rows[s].get(ef)
            if x is None:
                text += f" | {'-':>14} {'-':>9} {'-':>8} {'-':>8}"
            else:
                text += (f" | {x['recall']:>14.4f} {x['qps']:>9.0f} {x['mean_ms']:>8.4f} "
                         f"{x['p99_ms']:>8.4f}")
        if len(args.systems) == 2 and all(ef in rows[s] for s in args.systems):
            k, h = rows["kiln"][ef], rows["hnswlib"][ef]
            d_recall = round(k["recall"] - h["recall"], 6) + 0.0  # no "-0.0000"
            text += f" | {d_recall:>+8.4f} {k['qps'] / h['qps']:>9.3f}"
        rep.line(text)


def check_targets(rep, res, args, ctx):
    name = res["name"]
    pts = {s: [(x["ef"], x["recall"], x["qps"]) for x in sorted(res["summary"][s],
                                                                   key=lambda x: x["ef"])]
           for s in args.systems}
    interp = {s: qps_at_recall(pts[s], TARGET_RECALL_FOR_QPS) for s in args.systems}
    for s in args.systems:
        q, note = interp[s]
        rep.line(f"  {s}: QPS at recall {TARGET_RECALL_FOR_QPS}: "
                 f"{'n/a' if q is None else f'{q:.0f}'} ({note})")
    if not ("kiln" in args.systems and "hnswlib" in args.systems):
        rep.line("  targets need both systems; skipped")
        return
    b = res["build"]
    verdicts = []

    ratio = b["ratio_of_medians"]
    ok_a = ratio <= TARGET_BUILD_RATIO
    verdicts.append(("a_build_time", ok_a,
                     f"kiln/hnswlib build time {ratio:.3f} (limit {TARGET_BUILD_RATIO}); "
                     f"median pair ratio {b['median_pair_ratio']:.3f}"))

    k_rows = {x["ef"]: x["recall"] for x in res["summary"]["kiln"]}
    h_rows = {x["ef"]: x["recall"] for x in res["summary"]["hnswlib"]}
    diffs = {ef: round(k_rows[ef] - h_rows[ef], 6) + 0.0 for ef in sorted(k_rows) if ef in h_rows}
    ok_b = bool(diffs) and all(d >= -TARGET_RECALL_SLACK for d in diffs.values())
    verdicts.append(("b_recall", ok_b,
                     "kiln - hnswlib recall@%d: %s (must be >= -%s)" % (
                         args.k, ", ".join(f"ef {ef} {d:+.4f}" for ef, d in diffs.items()),
                         TARGET_RECALL_SLACK)))

    (kq, knote), (hq, hnote) = interp["kiln"], interp["hnswlib"]
    if kq is None:
        ok_c, text = False, f"kiln never reaches recall {TARGET_RECALL_FOR_QPS}"
    elif hq is None:
        ok_c, text = True, (f"kiln {kq:.0f} QPS; hnswlib never reaches recall "
                            f"{TARGET_RECALL_FOR_QPS}")
    else:
        ok_c, text = kq >= hq, f"kiln {kq:.0f} vs hnswlib {hq:.0f} QPS ({kq / hq:.3f}x)"
        if "lower bound" in knote and "lower bound" in hnote:
            text += "; both above the target at the lowest ef, so this compares QPS there"
    verdicts.append(("c_qps_at_recall", ok_c, text))

    for target, ok, text in verdicts:
        rep.line(f"  ({target[0]}) {'PASS' if ok else 'FAIL'}: {text}")
        rep.record(dict(type="target", dataset=name, target=target,
                        verdict="PASS" if ok else "FAIL", detail=text,
                        kiln_qps_at_recall=kq, hnswlib_qps_at_recall=hq,
                        machine=ctx["machine"], commit=ctx["commit"]), show=False)


# ==== Main ====


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"),
                    help="folder holding kiln and hnswlib_runner (default build/)")
    ap.add_argument("--datasets", default=None,
                    help="comma-separated names (default siftsmall,fmnistsmall"
                         " and fmnist60k when bench/fetch_fmnist.sh has made it)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="build threads for both systems (default: all cores)")
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
    ap.add_argument("--systems", default="kiln,hnswlib",
                    help="which systems to run (kiln, hnswlib or both)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    args = ap.parse_args()

    args.systems = [s for s in args.systems.split(",") if s]
    if not args.systems or any(s not in ("kiln", "hnswlib") for s in args.systems):
        sys.exit("--systems: a comma-separated subset of kiln,hnswlib")
    if args.reps < 1 or args.eval_reps < 1:
        sys.exit("--reps and --eval-reps must be at least 1")
    args.kiln = os.path.join(args.build_dir, "kiln")
    args.runner = os.path.join(args.build_dir, "hnswlib_runner")
    needed = {"kiln": args.kiln, "hnswlib": args.runner}
    for s in args.systems:
        if not os.access(needed[s], os.X_OK):
            sys.exit(f"bench_insert.py: {needed[s]} missing; run bench/run.sh or build it")

    if args.datasets:
        names = [d for d in args.datasets.split(",") if d]
    else:
        names = DEFAULT_DATASETS + [d for d in OPTIONAL_DATASETS if find_dataset(d)]
    found = {}
    for name in names:
        files = find_dataset(name)
        if files is None:
            sys.exit(f"bench_insert.py: dataset {name}: no {name}_base.fvecs, _query.fvecs and "
                     f"_groundtruth.ivecs under {' or '.join(DATASET_DIRS)}")
        found[name] = files

    os.makedirs(args.out_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    rep = Report(os.path.join(args.out_dir, f"{stamp}-insert.jsonl"),
                 os.path.join(args.out_dir, f"{stamp}-insert.txt"))
    ctx = dict(machine=machine_description(), commit=git_commit())
    rep.record(dict(type="run", machine=ctx["machine"], commit=ctx["commit"],
                    datasets=names, systems=args.systems, reps=args.reps,
                    threads=args.threads, M=args.M, ef_construction=args.ef_construction,
                    k=args.k, ef=args.ef, metric=args.metric, seed=args.seed,
                    eval_reps=args.eval_reps,
                    queries=args.queries or "all"), show=False)

    tmp = tempfile.mkdtemp(prefix="tmp-insert-", dir=args.out_dir)
    try:
        results = [bench_dataset(n, found[n], args, ctx, rep, tmp) for n in names]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rep.line()
    rep.line(f"machine: {ctx['machine']}; commit {ctx['commit']}; single-thread search, "
             f"recall@{args.k}")
    for res in results:
        print_table(rep, res, args)
    rep.line()
    rep.line("== targets (informational) ==")
    for res in results:
        rep.line(f"{res['name']}:")
        check_targets(rep, res, args, ctx)
    rep.line()
    rep.line(f"written: {rep.jsonl.name} and {rep.txt.name}")
    rep.close()


if __name__ == "__main__":
    main()
