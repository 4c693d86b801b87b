#!/usr/bin/python3
"""add_crossover.py -- issue 14: where a device add beats insertion.

    /usr/bin/python3 bench/add_crossover.py --kiln build/kiln \
        --base bench/data/fmnist60k_base.fvecs --queries bench/data/fmnist60k_query.fvecs \
        [--initial 30000] [--adds 0.01,0.05,0.1,0.25,0.5,1.0] [--reps 3] [--nq 1000] \
        [--ef 16,64] [--build-method device]

An index of rows [0, --initial) of BASE is built once (--build-method). For each
add size (a share of --initial), rows [initial, initial + b) are added to it by
`kiln add --method insert` and by `kiln add --method device`, alternating, --reps
times each, every run its own process on the same input file (a mapped load, the
add, the atomic save: the same around both methods). Reported: median
whole-process seconds, device/insert ratio of the medians, peak RssAnon (sampled
from /proc, bench/ab.py), and recall@10 at each --ef of the first --nq queries
against the exact neighbours of all initial + b rows (`kiln groundtruth`).

Design decisions:
 1. Whole-process times, because that is what a nightly job pays; the load and
    save are the same for both methods and scale with the index, so the
    ratio understates the add's own difference (bench/bench_live.c times the
    call alone for insertion).
 2. Nothing here passes or fails: it prints figures and ratios to read.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ab  # noqa: E402


def read_vectors(path):
    if path.endswith(".fbin"):
        n, d = np.fromfile(path, dtype="<u4", count=2)
        return np.fromfile(path, dtype="<f4", offset=8).reshape(int(n), int(d))
    raw = np.fromfile(path, dtype="<i4")
    d = int(raw[0])
    return raw.reshape(-1, d + 1)[:, 1:].view("<f4")


def write_fvecs(path, rows):
    n, d = rows.shape
    out = np.empty((n, d + 1), dtype="<i4")
    out[:, 0] = d
    out[:, 1:] = np.ascontiguousarray(rows, dtype="<f4").view("<i4")
    out.tofile(path)


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--initial", type=int, default=0, help="default: half of BASE")
    ap.add_argument("--adds", default="0.01,0.05,0.1,0.25,0.5,1.0")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--ef", default="16,64")
    ap.add_argument("--build-method", default="device")
    ap.add_argument("--work", default=os.path.join(HERE, "out", "add-crossover"))
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    base = read_vectors(args.base)
    n0 = args.initial or len(base) // 2
    shares = [float(x) for x in args.adds.split(",")]
    sizes = [max(1, int(round(s * n0))) for s in shares]
    if n0 + max(sizes) > len(base):
        sys.exit(f"add_crossover.py: {n0} + {max(sizes)} rows are more than BASE's {len(base)}")
    jsonl, commit, say = ab.outputs("add-crossover")
    say(f"machine: {ab.machine()}; commit {commit}")
    say(f"{args.base}: index of {n0} rows (--method {args.build_method}), adds of "
        f"{', '.join(str(b) for b in sizes)} rows; {args.reps} reps each, whole-process seconds")
    w = lambda name: os.path.join(args.work, name)  # noqa: E731
    write_fvecs(w("initial.fvecs"), base[:n0])
    queries = read_vectors(args.queries)[: args.nq]
    write_fvecs(w("queries.fvecs"), queries)
    run([args.kiln, "build", w("initial.fvecs"), "-o", w("initial.kiln"), "--method",
         args.build_method])
    say("")
    efs = args.ef.split(",")
    head = "".join(f"  ins r@{e}  dev r@{e}" for e in efs)
    say(f"{'add':>8} {'share':>6} {'insert s':>9} {'device s':>9} {'dev/ins':>8} "
        f"{'ins MiB':>8} {'dev MiB':>8}{head}")
    for share, b in zip(shares, sizes):
        write_fvecs(w("add.fvecs"), base[n0:n0 + b])
        write_fvecs(w("union.fvecs"), base[:n0 + b])
        run([args.kiln, "groundtruth", w("union.fvecs"), w("queries.fvecs"), "-k", "10", "-o",
             w("gt.ivecs")])
        secs = {"insert": [], "device": []}
        peaks = {"insert": [], "device": []}
        for rep in range(args.reps):
            for m in ("insert", "device") if rep % 2 == 0 else ("device", "insert"):
                s, peak, _ = ab.run_sampled([args.kiln, "add", w("initial.kiln"), w("add.fvecs"),
                                             "--method", m, "-o", w(f"{m}.kiln")])
                secs[m].append(s)
                peaks[m].append(peak)
        rec = {}
        for m in ("insert", "device"):
            out = subprocess.run([args.kiln, "eval", w(f"{m}.kiln"), w("queries.fvecs"),
                                  w("gt.ivecs"), "-k", "10", "--ef", args.ef, "--json"],
                                 check=True, capture_output=True, text=True).stdout
            rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            rec[m] = {str(r["ef"]): r["recall"] for r in rows}
        mi, md = statistics.median(secs["insert"]), statistics.median(secs["device"])
        line = {"add": b, "share": share, "initial": n0, "insert_s": secs["insert"],
                "device_s": secs["device"], "insert_peak_mib": max(peaks["insert"]),
                "device_peak_mib": max(peaks["device"]), "recall": rec, "commit": commit}
        jsonl.write(json.dumps(line) + "\n")
        jsonl.flush()
        cols = "".join(f"  {rec['insert'].get(e, float('nan')):8.4f}  {rec['device'].get(e, float('nan')):8.4f}"
                       for e in efs)
        say(f"{b:>8} {share:>6.2f} {mi:>9.2f} {md:>9.2f} {md / mi:>8.2f} "
            f"{max(peaks['insert']):>8.0f} {max(peaks['device']):>8.0f}{cols}")


if __name__ == "__main__":
    main()
