#!/usr/bin/python3
"""ab.py -- two kiln builds side by side: is B slower, bigger or worse than A?

    /usr/bin/python3 bench/ab.py --a OLD/kiln --b NEW/kiln \
        --base B.fvecs --queries Q.fvecs --gt GT.ivecs [--method device] [--reps 5]

For a regression check between commits (a commit's kiln against the one before
it) rather than against hnswlib (bench_build.py). Each repetition builds with A
then B (alternating, so drift in the machine's speed hits both alike), timing
the whole process and sampling its peak anonymous resident set (RssAnon) from
/proc every 10 ms; then each side's last index is evaluated with that side's
own `kiln eval`, so search changes count too (recall@k and single-thread QPS
per ef, median of --eval-reps passes). Prints one JSON line
per run and a table of medians with the B/A ratios (median of the pairwise
ratios for times).

Design decisions:
 1. Memory is the peak of RssAnon sampled from /proc/PID/status, the
    project's rule: the memory-mapped input's page cache does not count,
    what the build allocates does.
 2. The build runs with --threads as given (default: all cores) and the same
    seed for both, so A and B build the same graph when the code agrees.
 3. Nothing here decides pass or fail: it prints ratios for a person (or
    RESULTS.md) to read.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def machine():
    """The CPU (model name and the SIMD that kiln dispatches on), cores and kernel."""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = open("/proc/cpuinfo").read()
    simd = "AVX-512 VPOPCNTDQ" if "avx512_vpopcntdq" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{cpu} ({simd}), {os.cpu_count()} cores, {platform.release()}"


def outputs(kind):
    """bench/out/<timestamp>-KIND.jsonl and .txt, the commit, and say(): print and keep a line."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(here, "out"), exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    jsonl = open(os.path.join(here, "out", f"{stamp}-{kind}.jsonl"), "w")
    txt = open(os.path.join(here, "out", f"{stamp}-{kind}.txt"), "w")
    commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()

    def say(line=""):
        print(line, flush=True)
        txt.write(line + "\n")
        txt.flush()

    return jsonl, commit, say


def rss_anon_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_sampled(cmd):
    """Runs cmd; returns (wall seconds, peak RssAnon MiB, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while p.poll() is None:
        peak = max(peak, rss_anon_kb(p.pid))
        time.sleep(0.01)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"ab.py: {' '.join(cmd)} failed ({p.returncode}): {err.strip()}")
    return wall, peak / 1024.0, out


def evaluate(kiln, index, args):
    cmd = [kiln, "eval", index, args.queries, args.gt, "-k", str(args.k), "--ef", args.ef,
           "--repeat", str(args.eval_reps), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="the reference kiln binary")
    ap.add_argument("--b", required=True, help="the kiln binary under test")
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--gt", required=True)
    ap.add_argument("--method", default="device", choices=["device", "insert"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--eval-reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--ef", default="10,16,32,64,128")
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    runs = {"a": [], "b": []}
    evals = {"a": None, "b": None}
    with tempfile.TemporaryDirectory(prefix="kiln-ab-") as tmp:
        for rep in range(args.reps):
            for side in ("a", "b"):
                kiln = getattr(args, side)
                index = os.path.join(tmp, f"{side}.kiln")
                cmd = [kiln, "build", args.base, "-o", index, "--method", args.method,
                       "--threads", str(args.threads), "--seed", str(args.seed)]
                wall, peak, _ = run_sampled(cmd)
                runs[side].append((wall, peak))
                print(json.dumps({"label": args.label, "side": side, "rep": rep,
                                  "method": args.method, "build_s": round(wall, 4),
                                  "peak_anon_mib": round(peak, 1)}), flush=True)
                if rep == args.reps - 1:
                    evals[side] = evaluate(kiln, index, args)
                    for e in evals[side]:
                        print(json.dumps({"label": args.label, "side": side, **e}), flush=True)

    med = {s: (statistics.median(w for w, _ in runs[s]), statistics.median(m for _, m in runs[s]))
           for s in runs}
    pair = statistics.median(b[0] / a[0] for a, b in zip(runs["a"], runs["b"]))
    print(f"\n{args.label or args.base}: --method {args.method}, {args.reps} builds each, "
          f"threads {args.threads or 'all'}")
    print(f"  build s (median):    A {med['a'][0]:.3f}   B {med['b'][0]:.3f}   "
          f"B/A {pair:.3f} (median of pairs)")
    print(f"  peak anon MiB:       A {med['a'][1]:.1f}   B {med['b'][1]:.1f}   "
          f"B/A {med['b'][1] / med['a'][1]:.3f}")
    print(f"  {'ef':>5} {'recall A':>9} {'recall B':>9} {'QPS A':>9} {'QPS B':>9} {'B/A':>6}")
    for ea, eb in zip(evals["a"], evals["b"]):
        print(f"  {ea['ef']:>5} {ea['recall']:>9.4f} {eb['recall']:>9.4f} {ea['qps']:>9.0f} "
              f"{eb['qps']:>9.0f} {eb['qps'] / ea['qps']:>6.3f}")


if __name__ == "__main__":
    main()
