#!/usr/bin/env bash
# run.sh -- build kiln and the hnswlib reference runner, then run the build
# benchmark (bench/bench_build.py: kiln-device, kiln-insert and hnswlib) with
# any arguments given here.
#
#   bash bench/run.sh [bench_build.py options]        (make bench does this)
#   BUILD=build-bench bash bench/run.sh --datasets siftsmall --reps 3
#   bash bench/run.sh --systems kiln-insert,hnswlib   (the old insert benchmark)
#
# BUILD (default build) is the CMake build folder; it is configured as Release
# when it has no cache yet, and only the two targets the benchmark needs are
# built. The orchestration runs under Debian's /usr/bin/python3, which has
# numpy; a pyenv python3 earlier on PATH may not.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
build=${BUILD:-build}
case "$build" in
/*) ;;
*) build=$root/$build ;;
esac

# Build logs are shown only when a step fails, so stdout stays the report.
quiet() {
    local log
    if ! log=$("$@" 2>&1); then
        printf '%s\n' "$log" >&2
        echo "run.sh: failed: $*" >&2
        exit 1
    fi
}
if [ ! -f "$build/CMakeCache.txt" ]; then
    quiet cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
fi
quiet cmake --build "$build" -j "$(nproc)" --target kiln_cli hnswlib_runner

cd "$root"
exec /usr/bin/python3 "$here/bench_build.py" --build-dir "$build" "$@"
