#!/usr/bin/python3
"""storage.py -- compact vector storage: memory and QPS at a recall for f32, f16, int8.

    /usr/bin/python3 bench/storage.py --kiln build/kiln \
        --dataset fmnist60k:bench/data/fmnist60k_base.fvecs:bench/data/fmnist60k_query.fvecs:bench/data/fmnist60k_groundtruth.ivecs \
        [--dataset 1M:DATA/synth1M.fbin:DATA/synth_q.fbin:DATA/synth1M_gt.ivecs] \
        [--storages f32,f16,int8,int8+rerank] [--targets 0.95,0.99] [--ef 10,12,16,...] \
        [--threads 1] [--build-threads 0] [--repeat 5] [--method device|insert] [--work DIR]

The issue-14 item-7 benchmark. For each dataset, one build per storage
(`kiln build BASE --storage S [--rerank] -o X-S.kiln`, the same parameters
and seed, so the same graph: compression is the build's last stage), then:
  bytes/element  the index's arrays over its count (`kiln info`: vectors,
                 links, labels, levels), and the file's bytes over the count;
  memory         peak RssAnon and peak VmRSS (anonymous + file-backed: a
                 mapped index's pages are page cache, so its rows show in
                 VmRSS, not RssAnon) of the `kiln eval` process, sampled from
                 /proc every 10 ms (bench/ab.py's run_sampled);
  recall, QPS    `kiln eval` over the --ef sweep, --repeat timed passes a
                 point (median QPS), queries one at a time from --threads
                 threads; recall@10 against the exact ground truth given.
"QPS at recall T" (each T of --targets) is the QPS of the smallest ef of the
sweep whose recall reaches T (so a finer sweep gives a sharper figure), with
its ef; the ratios are against f32's. kiln eval raises ef to k (10), so ef
below 10 repeats ef 10. Output: tables per dataset, also in
bench/out/<timestamp>-storage.txt and .jsonl (one line per storage and ef).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import ab

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_EF = "10,12,16,20,24,32,40,48,64,80,96,128,160,192,256,384,512"


def peak_memory_run(cmd):
    """Runs cmd; returns (stdout, peak RssAnon MiB, peak VmRSS MiB)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    anon = rss = 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        anon = max(anon, int(line.split()[1]))
                    elif line.startswith("VmRSS:"):
                        rss = max(rss, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.01)
    out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"storage.py: {' '.join(cmd)} failed ({p.returncode}): {err.strip()}")
    return out, anon / 1024.0, rss / 1024.0


def info(kiln, path):
    """bytes/element and file bytes from `kiln info`."""
    out = subprocess.run([kiln, "info", path], check=True, capture_output=True, text=True).stdout
    per = float(re.search(r"^bytes/element:\s+([0-9.]+)", out, re.M).group(1))
    vec = float(re.search(r"^bytes/element:.*vectors ([0-9.]+)", out, re.M).group(1))
    fbytes = int(re.search(r"^file bytes:\s+(\d+)", out, re.M).group(1))
    count = int(re.search(r"^count:\s+(\d+)", out, re.M).group(1))
    return per, vec, fbytes, count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--dataset", action="append", required=True, help="NAME:BASE:QUERIES:GT")
    ap.add_argument("--storages", default="f32,f16,int8,int8+rerank")
    ap.add_argument("--targets", default="0.95,0.99", help="recalls@10 to report QPS at")
    ap.add_argument("--ef", default=DEFAULT_EF)
    ap.add_argument("--threads", type=int, default=1, help="query threads of kiln eval")
    ap.add_argument("--build-threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5, help="timed passes per ef (median QPS)")
    ap.add_argument("--method", default=None, help="kiln build --method (default: kiln's)")
    ap.add_argument("--work", default=None, help="folder for the indexes (default: bench/out/storage)")
    args = ap.parse_args()
    work = args.work or os.path.join(HERE, "out", "storage")
    os.makedirs(work, exist_ok=True)
    jsonl, commit, say = ab.outputs("storage")
    say(f"# kiln storage benchmark, commit {commit}, {ab.machine()}, query threads {args.threads}, "
        f"repeat {args.repeat}, method {args.method or 'default'}")
    targets = [float(t) for t in args.targets.split(",") if t]
    storages = [s for s in args.storages.split(",") if s]
    for spec in args.dataset:
        name, base, queries, gt = spec.split(":")
        results = {}
        for st in storages:
            kind, rerank = st.split("+")[0], st.endswith("+rerank")
            path = os.path.join(work, f"{name}-{st.replace('+', '-')}.kiln")
            cmd = [args.kiln, "build", base, "-o", path, "--storage", kind,
                   "--threads", str(args.build_threads)]
            cmd += ["--rerank"] if rerank else []
            cmd += ["--method", args.method] if args.method else []
            t0 = time.monotonic()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            build_s = time.monotonic() - t0
            per, vec, fbytes, count = info(args.kiln, path)
            out, anon, rss = peak_memory_run(
                [args.kiln, "eval", path, queries, gt, "--ef", args.ef, "--threads",
                 str(args.threads), "--repeat", str(args.repeat), "--json"])
            rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
            results[st] = dict(build_s=build_s, per=per, vec=vec, file_per=fbytes / max(count, 1),
                               anon=anon, rss=rss, rows=rows)
            for r in rows:
                jsonl.write(json.dumps({"dataset": name, "storage": st, "build_seconds": build_s,
                                        "bytes_per_element": per, "vector_bytes": vec,
                                        "file_bytes": fbytes, "count": count,
                                        "peak_rss_anon_mib": anon, "peak_vmrss_mib": rss,
                                        "commit": commit, **r}) + "\n")
            jsonl.flush()
        say(f"\n## {name}: memory\n")
        say("| storage | bytes/element (vectors) | file bytes/element | eval peak RssAnon / VmRSS MiB "
            "| build s |")
        say("|---|---:|---:|---:|---:|")
        for st in storages:
            r = results[st]
            say(f"| {st} | {r['per']:.1f} ({r['vec']:.1f}) | {r['file_per']:.1f} | "
                f"{r['anon']:.1f} / {r['rss']:.1f} | {r['build_s']:.1f} |")

        def hit(st, t):
            return next((x for x in results[st]["rows"] if x["recall"] >= t), None)

        for t in targets:
            say(f"\n## {name}: QPS at recall@10 >= {t}\n")
            say("| storage | ef | recall@10 | QPS | QPS / f32 |")
            say("|---|---:|---:|---:|---:|")
            ref = hit("f32", t) if "f32" in results else None
            for st in storages:
                h = hit(st, t)
                if not h:
                    best = max(x["recall"] for x in results[st]["rows"])
                    say(f"| {st} | - | (at most {best:.4f}) | - | - |")
                    continue
                ratio = f"{h['qps'] / ref['qps']:.2f}" if ref else "-"
                say(f"| {st} | {h['ef']} | {h['recall']:.4f} | {h['qps']:.0f} | {ratio} |")
        say(f"\nrecall@10 / QPS per ef ({name}):\n")
        say("| ef | " + " | ".join(storages) + " |")
        say("|---:|" + "---:|" * len(storages))
        for i, ef in enumerate(int(e) for e in args.ef.split(",")):
            cells = [f"{results[st]['rows'][i]['recall']:.4f} / {results[st]['rows'][i]['qps']:.0f}"
                     for st in storages]
            say(f"| {ef} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
