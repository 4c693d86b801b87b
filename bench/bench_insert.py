#!/usr/bin/python3
"""bench_insert.py -- the insert benchmark: bench_build.py limited to kiln-insert and hnswlib.

Usage: /usr/bin/python3 bench/bench_insert.py [bench_build.py options]

A thin alias kept so existing command lines keep working: it runs
bench_build.py with --systems kiln-insert,hnswlib (unless --systems is given;
the old name "kiln" still means kiln-insert) and writes
bench/out/<timestamp>-insert.jsonl and .txt. Build times are now whole-process
wall times, as bench_build.py explains; see bench/README.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_build  # noqa: E402  (after the path is set)


def main():
    argv = sys.argv[1:]
    given = {a.split("=", 1)[0] for a in argv}
    if "--systems" not in given:
        argv = ["--systems", "kiln-insert,hnswlib"] + argv
    if "--tag" not in given:
        argv = ["--tag", "insert"] + argv
    bench_build.main(argv)


if __name__ == "__main__":
    main()
