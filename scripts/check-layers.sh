#!/usr/bin/env bash
# check-layers.sh -- the include rule of docs/ARCHITECTURE.md, checked:
#   common/  includes nothing outside itself (and kiln.h)
#   graph/   common/ and itself          cluster/  common/ and itself
#   host/    common/, graph/, cluster/ and itself
#   cli/     kiln.h and itself (the public API only)
#   <CL/cl.h> only in host/cl_*.c and host/cl_internal.h
# Prints each violation as FILE:LINE: what, and exits 1 if there is one.
set -uo pipefail
cd "$(dirname "$0")/.."
bad=0
allowed() {
  case "$1" in
    common) echo "common" ;;
    graph) echo "common graph" ;;
    cluster) echo "common cluster" ;;
    host) echo "common graph cluster host" ;;
    cli) echo "cli" ;;
  esac
}
for dir in common graph cluster host cli; do
  ok=$(allowed "$dir")
  for f in "$dir"/*.[ch]; do
    while IFS=: read -r line inc; do
      target=$(echo "$inc" | sed -E 's/.*#include "([^"]+)".*/\1/')
      [ "$target" = "kiln.h" ] && continue
      case "$target" in
        ../*/*) folder=$(echo "$target" | cut -d/ -f2) ;;
        */*) folder=BAD ;;
        *) folder=$dir ;;
      esac
      if ! echo " $ok " | grep -q " $folder "; then
        echo "$f:$line: includes \"$target\" ($dir/ may include: $ok${dir:+, kiln.h})"
        bad=1
      fi
    done < <(grep -n '#include "' "$f" | sed 's/:/:/')
    if grep -q '#include <CL/' "$f"; then
      case "$f" in
        host/cl_*.c | host/cl_internal.h) ;;
        *) echo "$f: includes an OpenCL header (only host/cl_*.c may)"; bad=1 ;;
      esac
    fi
  done
done
[ $bad -eq 0 ] && echo "check-layers: every include follows the layers"
exit $bad
