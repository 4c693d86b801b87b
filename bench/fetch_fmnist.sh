#!/usr/bin/env bash
# fetch_fmnist.sh -- prepare the fmnist60k benchmark dataset in bench/data/.
#
#   bash bench/fetch_fmnist.sh [KILN]      (KILN defaults to $KILN, then build/kiln)
#
# Produces, skipping each step whose output already exists:
#   bench/data/fmnist60k_base.fvecs         60000 x 784 float32, pixels 0..255
#   bench/data/fmnist60k_query.fvecs        10000 x 784 float32
#   bench/data/fmnist60k_groundtruth.ivecs  10000 x 100 exact L2 neighbours
#
# Design decisions:
#  1. The images come from Debian's dataset-fashion-mnist package (installed
#     here if missing: apt-get as root, sudo otherwise), not a download from the
#     web, so the bytes are pinned by the archive and the step works offline
#     once the package is in the local cache.
#  2. The base is the 60000 training images and the queries the 10000 test
#     images, the split ann-benchmarks uses for fashion-mnist-784-euclidean.
#  3. Ground truth comes from `kiln groundtruth` (brute force, ties by smaller
#     id), the same oracle the rest of the benchmarks use.
#  4. Every output is written under a temporary name and renamed, so a failed
#     or interrupted run leaves nothing a later run would wrongly skip.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
kiln=${1:-${KILN:-$root/build/kiln}}
src=/usr/share/datasets/fashion-mnist
out=$here/data
python=/usr/bin/python3 # Debian's, which has numpy

base=$out/fmnist60k_base.fvecs
query=$out/fmnist60k_query.fvecs
gt=$out/fmnist60k_groundtruth.ivecs

if ! dpkg-query -W -f='${Status}' dataset-fashion-mnist 2>/dev/null | grep -q "ok installed"; then
    echo "installing dataset-fashion-mnist" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get install -y dataset-fashion-mnist >&2 || { apt-get update >&2 && apt-get install -y dataset-fashion-mnist >&2; }
    else
        sudo apt-get install -y dataset-fashion-mnist >&2 || { sudo apt-get update >&2 && sudo apt-get install -y dataset-fashion-mnist >&2; }
    fi
fi

# The package ships the IDX files gzipped; accept them plain as well.
find_idx() {
    local stem=$1
    for f in "$src/$stem" "$src/$stem.gz"; do
        if [ -f "$f" ]; then
            echo "$f"
            return 0
        fi
    done
    echo "fetch_fmnist.sh: $src/$stem(.gz) not found; see dpkg -L dataset-fashion-mnist" >&2
    return 1
}

mkdir -p "$out"
if [ ! -s "$base" ]; then
    "$python" "$here/idx_to_fvecs.py" "$(find_idx train-images-idx3-ubyte)" "$base"
else
    echo "$base: exists, kept"
fi
if [ ! -s "$query" ]; then
    "$python" "$here/idx_to_fvecs.py" "$(find_idx t10k-images-idx3-ubyte)" "$query"
else
    echo "$query: exists, kept"
fi
if [ ! -s "$gt" ]; then
    if [ ! -x "$kiln" ]; then
        echo "fetch_fmnist.sh: $kiln not found or not executable; build it (make build) or pass its path" >&2
        exit 1
    fi
    echo "computing exact ground truth with $kiln (k = 100)" >&2
    "$kiln" groundtruth "$base" "$query" -k 100 -o "$gt" --metric l2
    echo "$gt: written"
else
    echo "$gt: exists, kept"
fi
