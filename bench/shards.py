#!/usr/bin/python3
"""shards.py -- sharded search against one index: recall@10 and QPS per ef.

    /usr/bin/python3 bench/shards.py --kiln build/kiln \
        --dataset fmnist60k:bench/data/fmnist60k_base.fvecs:bench/data/fmnist60k_query.fvecs:bench/data/fmnist60k_groundtruth.ivecs \
        --dataset 1M:DATA/synth1M.fbin:DATA/synth_q.fbin:DATA/synth1M_gt.ivecs \
        [--shards 1,2,4] [--ef 10,16,32,64,128] [--threads 2] [--repeat 3] [--work DIR]

The issue-13 benchmark of shard sets. For each dataset, one run builds
  index      `kiln build BASE -o X.kiln` (one index, no manifest), and
  N shards   `kiln build BASE --shards N -o X-N.kset` for each N of --shards,
with the same parameters (the library's defaults, --threads build threads),
then `kiln eval` sweeps ef over each of them in turn, ef by ef, --repeat
timed passes a point (median QPS; eval sends the queries one at a time from
--threads threads, and a set searches its shards one after another inside
each query's thread). Recall@10 is against the exact ground truth given.
The build's whole-process time is reported beside, for the record. Output:
a table per dataset, also in bench/out/<timestamp>-shards.txt and .jsonl.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import ab

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--dataset", action="append", required=True, help="NAME:BASE:QUERIES:GT")
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--ef", default="10,16,32,64,128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default=None, help="folder for the indexes (default: bench/out/shards)")
    args = ap.parse_args()
    work = args.work or os.path.join(HERE, "out", "shards")
    os.makedirs(work, exist_ok=True)
    jsonl, commit, say = ab.outputs("shards")
    say(f"# kiln shard benchmark, commit {commit}, {ab.machine()}, threads {args.threads}, "
        f"repeat {args.repeat}")
    shard_counts = [int(s) for s in args.shards.split(",") if s]
    for spec in args.dataset:
        name, base, queries, gt = spec.split(":")
        systems = [("index", os.path.join(work, f"{name}.kiln"), [])]
        systems += [(f"{n} shards", os.path.join(work, f"{name}-{n}.kset"), ["--shards", str(n)])
                    for n in shard_counts]
        results = {}
        for label, path, extra in systems:
            t0 = time.monotonic()
            subprocess.run([args.kiln, "build", base, "-o", path, "--threads", str(args.threads)] + extra,
                           check=True, stdout=subprocess.DEVNULL)
            build_s = time.monotonic() - t0
            out = subprocess.run([args.kiln, "eval", path, queries, gt, "--ef", args.ef, "--threads",
                                  str(args.threads), "--repeat", str(args.repeat), "--json"],
                                 check=True, capture_output=True, text=True).stdout
            rows = {r["ef"]: r for r in (json.loads(l) for l in out.splitlines() if l.strip())}
            results[label] = (build_s, rows)
            jsonl.write(json.dumps({"dataset": name, "system": label, "build_seconds": build_s,
                                    "eval": list(rows.values()), "commit": commit}) + "\n")
            jsonl.flush()
        say(f"\n## {name} (recall@10 / QPS; build s in the header)\n")
        heads = [f"{label} ({results[label][0]:.1f} s)" for label, _, _ in systems]
        say("| ef | " + " | ".join(heads) + " |")
        say("|---:|" + "---:|" * len(heads))
        for ef in (int(e) for e in args.ef.split(",")):
            cells = []
            for label, _, _ in systems:
                r = results[label][1][ef]
                cells.append(f"{r['recall']:.4f} / {r['qps']:.0f}")
            say(f"| {ef} | " + " | ".join(cells) + " |")
        idx = results["index"][1]
        for label, _, _ in systems[1:]:
            ratios = [results[label][1][ef]["qps"] / idx[ef]["qps"] for ef in idx]
            say(f"- {label}: QPS / one index's {min(ratios):.2f} to {max(ratios):.2f}; recall "
                f"{min(results[label][1][ef]['recall'] - idx[ef]['recall'] for ef in idx):+.4f} to "
                f"{max(results[label][1][ef]['recall'] - idx[ef]['recall'] for ef in idx):+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
