#!/usr/bin/env bash
# The README's demo: a seeded clustered dataset, its exact ground truth, an
# index build, and the recall/QPS table. Usage: scripts/demo.sh [path/to/kiln]
set -euo pipefail
KILN=${1:-build/kiln}
OUT=${KILN_DEMO_DIR:-build/demo}
mkdir -p "$OUT"
N=${KILN_DEMO_N:-50000}
echo "== kiln demo: $N x 128 seeded clustered vectors, 1000 queries"
"$KILN" generate -n "$N" -d 128 --clusters 100 --seed 42 -o "$OUT/base.fvecs" \
    --queries 1000 --queries-out "$OUT/queries.fvecs"
echo "== exact ground truth (brute force)"
"$KILN" groundtruth "$OUT/base.fvecs" "$OUT/queries.fvecs" -k 100 -o "$OUT/gt.ivecs"
for method in ${KILN_DEMO_METHODS:-device insert}; do
  echo "== build --method $method"
  "$KILN" build "$OUT/base.fvecs" -o "$OUT/demo-$method.kiln" --method "$method"
  "$KILN" check "$OUT/demo-$method.kiln"
  echo "== eval: recall@10 and single-thread QPS per ef"
  "$KILN" eval "$OUT/demo-$method.kiln" "$OUT/queries.fvecs" "$OUT/gt.ivecs" -k 10 --ef 10,16,32,64,128
done
