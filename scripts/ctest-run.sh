#!/usr/bin/env bash
# ctest-run.sh BUILD_DIR [ctest args...] -- runs a build's tests. With
# KILN_REQUIRE_ALL=1 (CI), a skipped test fails the run unless its name
# matches the extended regex KILN_ALLOW_SKIP (for example the device tests of
# a build without OpenCL): ctest itself counts a skip as no failure, and a
# run that skipped its recall checks must not pass.
set -uo pipefail
build=$1
shift
log=$build/ctest-run.log
ctest --test-dir "$build" --output-on-failure "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || exit "$rc"
if [ "${KILN_REQUIRE_ALL:-0}" = 1 ]; then
  skipped=$(grep -E '\((Skipped|Not Run)\)' "$log" | sed -E 's/^[[:space:]]*[0-9]+ - ([^ ]+).*/\1/')
  allow=${KILN_ALLOW_SKIP:-}
  bad=""
  for t in $skipped; do
    if [ -n "$allow" ] && echo "$t" | grep -Eqx "$allow"; then
      echo "ctest-run: $t skipped, as allowed for this build"
    else
      bad="$bad $t"
    fi
  done
  if [ -n "$bad" ]; then
    echo "ctest-run: FAILED: skipped where every test must run:$bad" >&2
    exit 1
  fi
fi
exit 0
