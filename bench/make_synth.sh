#!/usr/bin/env bash
# make_synth.sh -- prepare the synth1m benchmark dataset in bench/data/.
#
#   bash bench/make_synth.sh [KILN]      (KILN defaults to $KILN, then build/kiln)
#
# Produces, skipping each step whose output already exists:
#   bench/data/synth1m_base.fvecs         1000000 x 128 float32
#   bench/data/synth1m_query.fvecs        1000 x 128 float32, same mixture
#   bench/data/synth1m_groundtruth.ivecs  1000 x 100 exact L2 neighbours
#
# Design decisions:
#  1. The data comes from `kiln generate` (a seeded Gaussian mixture, 1000
#     components, seed 42), so every machine builds bit-identical files from
#     the same kiln version without a download; the queries are held-out draws
#     from the same mixture, written by the same call.
#  2. 1M x 128 is the size the device build is aimed at (target: 0.3 x
#     hnswlib's build time there), SIFT1M's shape without its licence or fetch.
#  3. Ground truth comes from `kiln groundtruth` (brute force, ties by smaller
#     id), the oracle the rest of the benchmarks use.
#  4. Every output is written under a temporary name and renamed, so a failed
#     or interrupted run leaves nothing a later run would wrongly skip; base
#     and queries come from one call, so they are renamed together.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
kiln=${1:-${KILN:-$root/build/kiln}}
out=$here/data

# The dataset's definition; changing any of these makes a different dataset,
# so delete the old files first.
n=1000000
dim=128
clusters=1000
seed=42
queries=1000
gt_k=100

base=$out/synth1m_base.fvecs
query=$out/synth1m_query.fvecs
gt=$out/synth1m_groundtruth.ivecs

if [ ! -x "$kiln" ]; then
    echo "make_synth.sh: $kiln not found or not executable; build it (make build) or pass its path" >&2
    exit 1
fi
mkdir -p "$out"

# The temporary names keep the real extension last: kiln picks the format
# from it.
if [ ! -s "$base" ] || [ ! -s "$query" ]; then
    echo "generating $n x $dim ($clusters clusters, seed $seed) and $queries queries" >&2
    tmp_base=$out/synth1m_base.tmp.$$.fvecs
    tmp_query=$out/synth1m_query.tmp.$$.fvecs
    trap 'rm -f "$tmp_base" "$tmp_query"' EXIT
    "$kiln" generate -n "$n" -d "$dim" --clusters "$clusters" --seed "$seed" \
        -o "$tmp_base" --queries "$queries" --queries-out "$tmp_query"
    mv -f "$tmp_base" "$base"
    mv -f "$tmp_query" "$query"
    trap - EXIT
    rm -f "$gt" # computed for other vectors, if it exists
    echo "$base, $query: written"
else
    echo "$base, $query: exist, kept"
fi

if [ ! -s "$gt" ]; then
    echo "computing exact ground truth with $kiln (k = $gt_k)" >&2
    tmp_gt=$out/synth1m_groundtruth.tmp.$$.ivecs
    trap 'rm -f "$tmp_gt"' EXIT
    "$kiln" groundtruth "$base" "$query" -k "$gt_k" -o "$tmp_gt" --metric l2
    mv -f "$tmp_gt" "$gt"
    trap - EXIT
    echo "$gt: written"
else
    echo "$gt: exists, kept"
fi
