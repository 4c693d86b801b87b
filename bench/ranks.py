#!/usr/bin/python3
"""ranks.py -- one index built across MPI ranks against one process: time, bytes sent, memory.

    /usr/bin/python3 bench/ranks.py --kiln build/kiln --base DATA/synth1M.fbin \
        [--queries Q --gt GT] [--ranks 2] [--reps 3] [--work DIR]

The issue-13 benchmark of part 1. Each repetition builds the same input
  one process  `kiln build BASE -o one.kiln --threads R`, and
  R ranks      `mpirun -np R --oversubscribe kiln build BASE -o ranks.kiln`
               (each rank takes cores / R = 1 thread on the 2-core machine),
alternating, so that drift in the machine's speed hits both alike. Each is
timed as a whole process (mpirun included), with the peak anonymous resident
set sampled from /proc every 20 ms: for the ranks, of every kiln process
under mpirun, summed (the job's) and the largest (one rank's). The files of
the two must be identical (the build does not depend on the ranks); the run
stops if they differ. Output: a JSON line per build, then medians, the ratio
R ranks / one process (median of the pairwise ratios), the stage seconds of
each (the ranks': the slowest rank's), the bytes each rank sent and per
vector, and with --gt the recall@10 per ef of the index (the same file for
both). Also in bench/out/<timestamp>-ranks.jsonl and .txt.
"""
import argparse
import filecmp
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ab  # noqa: E402

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_btl": "self,vader,tcp", "OMPI_MCA_btl_tcp_if_include": "lo",
           "OMPI_MCA_oob_tcp_if_include": "lo"}


def tree_rss_kb(root):
    """RssAnon (KiB) of every kiln process under root, or root: (sum, largest)."""
    parent, name = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                name[int(d)] = st[st.index("(") + 1:st.rindex(")")]
                parent[int(d)] = int(st[st.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    total = most = 0
    for pid in parent:
        p = pid
        while p in parent and p != root and p > 1:
            p = parent[p]
        if p == root and name.get(pid) == "kiln":
            kb = ab.rss_anon_kb(pid)
            total += kb
            most = max(most, kb)
    return total, most


def run(cmd, env):
    """Runs cmd; returns (wall s, peak summed RssAnon MiB, peak largest MiB, the --json line)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak_sum = peak_one = 0
    while p.poll() is None:
        s, m = tree_rss_kb(p.pid)  # the root itself, when it is kiln
        peak_sum, peak_one = max(peak_sum, s), max(peak_one, m)
        time.sleep(0.02)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"ranks.py: {' '.join(cmd)} failed ({p.returncode}): {err.strip()[-2000:]}")
    line = next(json.loads(l) for l in out.splitlines() if l.startswith("{"))
    return wall, peak_sum / 1024.0, peak_one / 1024.0, line


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries")
    ap.add_argument("--gt")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ef", default="10,16,32,64,128")
    ap.add_argument("--work", default=None, help="folder for the indexes (default: bench/out/ranks)")
    args = ap.parse_args()
    work = args.work or os.path.join(HERE, "out", "ranks")
    os.makedirs(work, exist_ok=True)
    jsonl, commit, say = ab.outputs("ranks")
    R = args.ranks
    say(f"# kiln ranks benchmark, commit {commit}, {ab.machine()}, {R} ranks x 1 thread against "
        f"1 process x {R} threads, {args.reps} reps, {args.base}")
    one_path, many_path = os.path.join(work, "one.kiln"), os.path.join(work, "ranks.kiln")
    systems = {
        "one process": ([args.kiln, "build", args.base, "-o", one_path, "--threads", str(R), "--json"],
                        os.environ.copy()),
        f"{R} ranks": (["mpirun", "-np", str(R), "--oversubscribe", args.kiln, "build", args.base, "-o",
                        many_path, "--json"], {**os.environ, **MPI_ENV}),
    }
    runs = {s: [] for s in systems}
    for rep in range(args.reps):
        for s, (cmd, env) in systems.items():
            wall, peak_sum, peak_one, line = run(cmd, env)
            runs[s].append((wall, peak_sum, peak_one, line))
            jsonl.write(json.dumps({"system": s, "rep": rep, "wall": wall, "peak_rss_anon_mib": peak_sum,
                                    "peak_rank_rss_anon_mib": peak_one, "build": line,
                                    "commit": commit}) + "\n")
            jsonl.flush()
            say(f"- rep {rep} {s}: {wall:.1f} s, peak RssAnon {peak_sum:.0f} MiB (largest process "
                f"{peak_one:.0f})")
        if not filecmp.cmp(one_path, many_path, shallow=False):
            sys.exit("ranks.py: the ranks' index differs from one process's")
    say("\nThe two index files are identical in every repetition.\n")
    names = list(systems)
    stage_names = []
    for s in names:
        for st in runs[s][0][3]["stages"]:
            if st not in stage_names:
                stage_names.append(st)
    say("| | wall s | peak RssAnon MiB (job / largest) | " + " | ".join(stage_names) + " |")
    say("|---|---:|---:|" + "---:|" * len(stage_names))
    for s in names:
        med = lambda f: statistics.median(f(r) for r in runs[s])  # noqa: E731
        cells = [f"{med(lambda r, st=st: r[3]['stages'].get(st, 0)):.2f}" if st in runs[s][0][3]["stages"]
                 else "-" for st in stage_names]
        say(f"| {s} | {med(lambda r: r[0]):.1f} | {med(lambda r: r[1]):.0f} / {med(lambda r: r[2]):.0f} | "
            + " | ".join(cells) + " |")
    ratios = [m[0] / o[0] for m, o in zip(runs[names[1]], runs[names[0]])]
    sent = runs[names[1]][-1][3].get("bytes_sent_by_rank", [])
    count = runs[names[1]][-1][3]["count"]
    say(f"\n- wall {names[1]} / one process: median {statistics.median(ratios):.3f} "
        f"(pairs {', '.join(f'{r:.3f}' for r in ratios)}; target <= 1.15)")
    say(f"- bytes sent per rank: {', '.join(f'{b / 1048576:.1f} MiB' for b in sent)}; "
        f"{sum(sent) / count:.1f} bytes per vector in all")
    if args.queries and args.gt:
        out = subprocess.run([args.kiln, "eval", many_path, args.queries, args.gt, "--ef", args.ef, "--json"],
                             check=True, capture_output=True, text=True).stdout
        rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
        say("- recall@10 (both files): " + ", ".join(f"ef {r['ef']} {r['recall']:.4f}" for r in rows))
    jsonl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
