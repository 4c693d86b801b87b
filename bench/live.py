#!/usr/bin/env python3
"""live.py -- issue 14: writes to a live index, kiln against hnswlib.

    /usr/bin/python3 -m venv --system-site-packages /tmp/kiln-hnswlib08
    /tmp/kiln-hnswlib08/bin/pip install hnswlib==0.8.0
    /tmp/kiln-hnswlib08/bin/python bench/live.py --driver build/bench_live \
        --base bench/data/fmnist60k_base.fvecs --queries bench/data/fmnist60k_query.fvecs \
        [--initial 50000] [--add 10000] [--threads 1,2] [--reps 3] [--rounds 10] \
        [--frac 0.1] [--nq 1000] [--ef 16,64] [-M 16] [--ef-construction 200] [--seed 1]

hnswlib 0.8.0 is needed for replace_deleted (Debian's python3-hnswlib 0.6.2 has
mark_deleted but no allow_replace_deleted); the venv above sees Debian's numpy.
build/bench_live is the CMake target bench_live (bench/bench_live.c, the kiln
side, through the public API). fmnist60k comes from `bash bench/fetch_fmnist.sh`.

One run measures, side by side, with the same M and ef_construction:
  build    each system's index over rows [0, --initial) of BASE (labels = rows),
           once: the start of everything below.
  add      rows [--initial, --initial + --add) added to that index: kiln_index_add
           against hnswlib's add_items, at each --threads (kiln: the process
           pinned to that many CPUs, bench_live.c decision 2; hnswlib:
           num_threads and the same pinning), --reps times alternating,
           median vectors/s and their ratio.
  delete   1% and 10% of the index's labels: kiln_index_delete (true removal,
           the in-neighbours relinked) against hnswlib's mark_deleted (a flag:
           the node stays in the graph, and a search walks through it). Not
           the same operation; both are what each system offers. The
           mark_deleted loop runs in Python, one call per label.
  churn    --rounds rounds, each replacing --frac of the index: the same
           labels deleted (chosen at random among the live ones) and the same
           rows added (from the rows not in the index, the deleted ones
           returning to that pool after the round) on both sides; kiln by
           delete then add (its free slots are reused), hnswlib by
           mark_deleted then add_items(replace_deleted=True) (index loaded
           with allow_replace_deleted). After each round recall@10 at each
           --ef of the first --nq queries against the exact neighbours among
           the live rows (computed once per round by bench_live with
           kiln_knn_exact and read by both), and each side's seconds.
Every measurement is its own process (load, then the timed call alone), whose
peak RssAnon is sampled from /proc (bench/ab.py). Output: JSON lines and the
tables in bench/out/<timestamp>-live.jsonl / .txt, with the machine and commit.

Design decisions:
 1. The churn schedule is drawn here from --seed and written to files that
    both sides read, so they see the same deletes, adds and ground truth.
 2. Rows added back in a round are drawn before that round's deleted rows
    return to the pool: hnswlib keeps a deleted element's label until its
    slot is replaced, and re-adding a label whose old slot is still deleted
    would later erase the live label's entry (hnswalg.h addPoint with
    replace_deleted). Each round's adds fill exactly its deleted slots.
 3. Nothing here passes or fails: it prints figures and ratios to read.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ab  # noqa: E402


def read_vectors(path):
    """float32 rows of an .fvecs or .fbin file."""
    if path.endswith(".fbin"):
        n, d = np.fromfile(path, dtype="<u4", count=2)
        return np.fromfile(path, dtype="<f4", offset=8).reshape(int(n), int(d))
    raw = np.fromfile(path, dtype="<i4")
    d = int(raw[0])
    return raw.reshape(-1, d + 1)[:, 1:].view("<f4").copy()


def pin(threads):
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)


# ==== hnswlib side (run as workers: `live.py --worker MODE ...`) ====

def worker(argv):
    import hnswlib
    mode, a = argv[0], json.loads(argv[1])
    pin(a["threads"])
    x = read_vectors(a["base"])
    p = hnswlib.Index(space="l2", dim=x.shape[1])
    if mode == "build":
        n0 = a["initial"]
        p.init_index(max_elements=n0, M=a["M"], ef_construction=a["efc"], random_seed=a["seed"])
        t0 = time.perf_counter()
        p.add_items(x[:n0], np.arange(n0), num_threads=a["threads"])
        out = {"op": "build", "n": n0, "seconds": time.perf_counter() - t0}
        p.save_index(a["out"])
    elif mode == "add":
        first, count = a["first"], a["count"]
        p.load_index(a["index"], max_elements=first + count)
        t0 = time.perf_counter()
        p.add_items(x[first:first + count], np.arange(first, first + count), num_threads=a["threads"])
        s = time.perf_counter() - t0
        out = {"op": "add", "count": count, "seconds": s, "per_s": count / s}
    elif mode == "delete":
        labels = np.fromfile(a["labels"], dtype="<i8")
        p.load_index(a["index"])
        t0 = time.perf_counter()
        for label in labels:
            p.mark_deleted(int(label))
        s = time.perf_counter() - t0
        out = {"op": "delete", "count": len(labels), "seconds": s, "per_s": len(labels) / s}
    elif mode == "churn":
        q = read_vectors(a["queries"])[:a["nq"]]
        p.load_index(a["index"], max_elements=a["initial"], allow_replace_deleted=True)
        for r in range(1, a["rounds"] + 1):
            dl = np.fromfile(os.path.join(a["sched"], f"del-{r}.i64"), dtype="<i8")
            ad = np.fromfile(os.path.join(a["sched"], f"add-{r}.i64"), dtype="<i8")
            gt = np.fromfile(os.path.join(a["sched"], f"gt-{r}.i64"), dtype="<i8").reshape(len(q), -1)
            t0 = time.perf_counter()
            for label in dl:
                p.mark_deleted(int(label))
            t1 = time.perf_counter()
            p.add_items(x[ad], ad, num_threads=a["threads"], replace_deleted=True)
            t2 = time.perf_counter()
            rec = {}
            for ef in a["ef"]:
                p.set_ef(ef)
                got, _ = p.knn_query(q, k=a["k"], num_threads=1)
                hits = sum(len(set(got[i].tolist()) & set(gt[i][:a["k"]].tolist())) for i in range(len(q)))
                rec[str(ef)] = hits / (len(q) * a["k"])
            line = {"op": "churn", "round": r, "deleted": len(dl), "added": len(ad),
                    "delete_seconds": t1 - t0, "add_seconds": t2 - t1, "recall": rec,
                    "count": p.get_current_count()}
            print(json.dumps(line), flush=True)
        return
    print(json.dumps(out), flush=True)


# ==== Orchestration ====

def run(cmd):
    """(peak RssAnon MiB, the JSON lines) of one measurement process."""
    _, peak, out = ab.run_sampled(cmd)
    return peak, [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def hnswlib_cmd(mode, **a):
    return [sys.executable, os.path.abspath(__file__), "--worker", mode, json.dumps(a)]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--driver", required=True, help="build/bench_live")
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--initial", type=int, default=0, help="rows in the index at the start "
                    "(default: 5/6 of BASE, 50000 of fmnist60k's 60000)")
    ap.add_argument("--add", type=int, default=0, help="rows added in the add measurement "
                    "(default: the rest of BASE)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--frac", type=float, default=0.1)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--ef", default="16,64")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("-M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default=os.path.join(HERE, "out", "live"))
    args = ap.parse_args()
    try:
        import hnswlib
        hnswlib.Index(space="l2", dim=2).init_index(max_elements=1, allow_replace_deleted=True)
    except (ImportError, TypeError) as e:
        sys.exit(f"live.py: needs hnswlib 0.8.0 with allow_replace_deleted ({e}); run it with "
                 "the venv of the usage line: /usr/bin/python3 -m venv --system-site-packages "
                 "/tmp/kiln-hnswlib08 && /tmp/kiln-hnswlib08/bin/pip install hnswlib==0.8.0")
    os.makedirs(args.work, exist_ok=True)
    n = len(read_vectors(args.base))
    n0 = args.initial or n * 5 // 6
    nadd = args.add or n - n0
    threads = [int(t) for t in args.threads.split(",") if t]
    efs = [int(e) for e in args.ef.split(",") if e]
    nd_round = round(args.frac * n0)
    if n0 + nadd > n or n - n0 < nd_round:
        sys.exit(f"live.py: {n} rows cannot hold an index of {n0}, {nadd} adds and a pool of "
                 f"{nd_round} rows a round")
    jsonl, commit, say = ab.outputs("live")
    say(f"# kiln live-index benchmark (issue 14), commit {commit}, {ab.machine()}")
    say(f"# {args.base}: {n} rows; index of {n0}, M {args.M}, ef_construction "
        f"{args.ef_construction}, hnswlib {hnswlib.__version__ if hasattr(hnswlib, '__version__') else '0.8'}")

    def keep(system, phase, peak, lines):
        for l in lines:
            jsonl.write(json.dumps({"system": system, "phase": phase, "peak_rss_anon_mib": peak,
                                    "commit": commit, **l}) + "\n")
        jsonl.flush()
        return lines

    kfile, hfile = os.path.join(args.work, "kiln.kiln"), os.path.join(args.work, "hnswlib.bin")
    common = dict(base=args.base, initial=n0, M=args.M, efc=args.ef_construction, seed=args.seed)
    top = max(threads)
    peak, l = run([args.driver, "build", args.base, str(n0), kfile, "-M", str(args.M), "--efc",
                   str(args.ef_construction), "--seed", str(args.seed), "--cpus", str(top)])
    kb = keep("kiln", "build", peak, l)[0]
    peak, l = run(hnswlib_cmd("build", out=hfile, threads=top, **common))
    hb = keep("hnswlib", "build", peak, l)[0]
    say(f"# builds of {n0} on {top} threads: kiln {kb['seconds']:.1f} s, hnswlib {hb['seconds']:.1f} s")

    # Add and delete throughput.
    rng = np.random.default_rng(args.seed)
    fracs = [0.01, 0.10]
    del_files = {}
    for f in fracs:
        path = os.path.join(args.work, f"del-{int(f * 100)}pct.i64")
        rng.choice(n0, size=max(1, round(f * n0)), replace=False).astype("<i8").tofile(path)
        del_files[f] = path
    rows = []
    for t in threads:
        res = {}
        for _ in range(args.reps):
            for system in ("kiln", "hnswlib"):
                if system == "kiln":
                    cmd = [args.driver, "add", kfile, args.base, str(n0), str(nadd), "--cpus", str(t)]
                else:
                    cmd = hnswlib_cmd("add", index=hfile, first=n0, count=nadd, threads=t, **common)
                peak, l = run(cmd)
                res.setdefault(("add", system), []).append((keep(system, "add", peak, l)[0]["per_s"], peak))
                for f in fracs:
                    if system == "kiln":
                        cmd = [args.driver, "delete", kfile, del_files[f], "--cpus", str(t)]
                    else:
                        cmd = hnswlib_cmd("delete", index=hfile, labels=del_files[f], threads=t, **common)
                    peak, l = run(cmd)
                    res.setdefault((f"delete {f:.0%}", system), []).append(
                        (keep(system, f"delete {f:.0%}", peak, l)[0]["per_s"], peak))
        rows.append((t, res))
    say(f"\n## Throughput (vectors/s, median of {args.reps}; peak RssAnon MiB of the process)\n")
    say("| operation | threads | kiln | hnswlib | kiln / hnswlib | kiln MiB | hnswlib MiB |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    for t, res in rows:
        for op in ["add"] + [f"delete {f:.0%}" for f in fracs]:
            k = res[(op, "kiln")]
            h = res[(op, "hnswlib")]
            km, hm = statistics.median(v for v, _ in k), statistics.median(v for v, _ in h)
            what = op if op == "add" else op + " (kiln delete / hnswlib mark_deleted)"
            say(f"| {what} | {t} | {km:.0f} | {hm:.0f} | {km / hm:.3f} | "
                f"{max(p for _, p in k):.0f} | {max(p for _, p in h):.0f} |")

    # Churn (decisions 1 and 2).
    sched = os.path.join(args.work, "churn")
    os.makedirs(sched, exist_ok=True)
    live = np.arange(n0)
    pool = list(rng.permutation(np.arange(n0, n)))
    for r in range(1, args.rounds + 1):
        dl = rng.choice(live, size=nd_round, replace=False)
        ad = np.array(pool[:nd_round], dtype="<i8")
        pool = pool[nd_round:] + list(rng.permutation(dl))
        live = np.union1d(np.setdiff1d(live, dl), ad)
        dl.astype("<i8").tofile(os.path.join(sched, f"del-{r}.i64"))
        ad.tofile(os.path.join(sched, f"add-{r}.i64"))
    qfile = os.path.join(args.work, "queries.fbin")
    q = read_vectors(args.queries)[:args.nq]
    with open(qfile, "wb") as f:
        np.array(q.shape, dtype="<u4").tofile(f)
        q.astype("<f4").tofile(f)
    peak_k, kl = run([args.driver, "churn", kfile, args.base, qfile, sched, str(args.rounds),
                      "--initial", str(n0), "--ef", args.ef, "-k", str(args.k), "--cpus", str(top)])
    keep("kiln", "churn", peak_k, kl)
    peak_h, hl = run(hnswlib_cmd("churn", index=hfile, queries=qfile, nq=len(q), sched=sched,
                                 rounds=args.rounds, ef=efs, k=args.k, threads=top, **common))
    keep("hnswlib", "churn", peak_h, hl)
    say(f"\n## Churn: {args.rounds} rounds of {nd_round} replaced ({args.frac:.0%}), "
        f"{top} threads; recall@{args.k} of {len(q)} queries against the exact neighbours of "
        f"the live rows\n")
    heads = [f"{s} ef {e}" for e in efs for s in ("kiln", "hnswlib")]
    say("| round | " + " | ".join(heads) + " | kiln s | hnswlib s |")
    say("|---:|" + "---:|" * (len(heads) + 2))
    for k, h in zip(kl, hl):
        cells = [f"{x['recall'][str(e)]:.4f}" for e in efs for x in (k, h)]
        ks, hs = k["delete_seconds"] + k["add_seconds"], h["delete_seconds"] + h["add_seconds"]
        say(f"| {k['round']} | " + " | ".join(cells) + f" | {ks:.2f} | {hs:.2f} |")
    say(f"- peak RssAnon of the churn process: kiln {peak_k:.0f} MiB, hnswlib {peak_h:.0f} MiB")


if __name__ == "__main__":
    main()
