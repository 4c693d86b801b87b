#!/usr/bin/env bash
# gpu-check.sh -- the first thing to run on a machine with a GPU, in two halves:
#
#   bash bench/gpu-check.sh pack [BUNDLE]       here (Debian, with the build tools):
#                                               gathers everything into BUNDLE
#                                               (default .gpu-bundle, ignored by git)
#   bash bench/gpu-check.sh run [BUNDLE] [OUT]  there (no package registry): installs
#                                               the OpenCL vendor file if missing, runs
#                                               the device tests with KILN_DEVICE=gpu
#                                               and the fmnist60k and 1M x 128 builds
#                                               with their stage breakdown; writes all
#                                               to OUT (default $OUT, else gpu-check-out)
#
# With the workplace's device tool: pack here, then run
#   bash bench/gpu-check.sh run .gpu-bundle "$OUT"     with carry [".gpu-bundle"]
# and a timeout of 540 s. docs/GPU.md has the whole procedure.
#
# Design decisions:
#  1. The bundle is self-contained: the kiln command and the device test
#     programs built here (Release, the project's flags), the ICD loader's
#     .deb and its libOpenCL.so.1, libgomp, and the datasets. Nothing is
#     installed on the GPU machine except the vendor file: the programs find
#     the loader through LD_LIBRARY_PATH, and the .deb is there in case a
#     later check wants it unpacked (dpkg -x) rather than the bare library.
#  2. The vendor file: /etc/OpenCL/vendors/nvidia.icd is written when no
#     vendor file names the NVIDIA library and /etc is writable; otherwise
#     the run points OCL_ICD_VENDORS at a folder of its own. The library is
#     looked up with ldconfig and in the driver's usual mounts.
#  3. Sizes fit the tool's 64 MiB tree: fmnist60k travels as gzipped u8bin
#     (60000 x 784 bytes) with its first 1000 test images as queries; the
#     1M x 128 set is made there by `kiln generate` (seeded, the same bytes
#     as bench/make_synth.sh's synth1m) and both ground truths by
#     `kiln groundtruth` there, on its 16 cores.
#  4. Every step has its own time limit, so the whole run ends inside 8
#     minutes even if one step hangs, and a failed step does not stop the
#     rest: what ran is in OUT. OUT gets at most 8 files (the tool's limit):
#     summary.txt (the table to copy into bench/RESULTS.md), env.txt,
#     tests.log, builds.jsonl, builds.log.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
mode=${1:-}
bundle=${2:-$root/.gpu-bundle}

# ==== pack (here) ====

pack() {
    set -e
    local build=$root/build-gpu
    rm -rf "$bundle"
    mkdir -p "$bundle"/{bin,lib,deb,datasets}
    bundle=$(cd "$bundle" && pwd)
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DKILN_OPENCL=ON >/dev/null
    cmake --build "$build" -j "$(nproc)" --target kiln_cli test_cl_knn test_device_build
    cp "$build/kiln" "$build/test_cl_knn" "$build/test_device_build" "$bundle/bin/"
    local libcl libgomp
    libcl=$(ldconfig -p | awk '/libOpenCL.so.1 .*x86-64/ {print $NF; exit}')
    libgomp=$(ldconfig -p | awk '/libgomp.so.1 .*x86-64/ {print $NF; exit}')
    [ -n "$libcl" ] && [ -n "$libgomp" ] || { echo "pack: libOpenCL.so.1 or libgomp.so.1 not found" >&2; exit 1; }
    cp -L "$libcl" "$libgomp" "$bundle/lib/"
    (cd "$bundle/deb" && apt-get download ocl-icd-libopencl1 >/dev/null 2>&1) ||
        echo "pack: note: could not download the ocl-icd-libopencl1 .deb; the bare library travels" >&2
    local ds=$root/../shared/datasets
    for d in siftsmall fmnistsmall; do
        [ -d "$ds/$d" ] || { echo "pack: $ds/$d is missing" >&2; exit 1; }
        cp -r "$ds/$d" "$bundle/datasets/"
    done
    local fm=/usr/share/datasets/fashion-mnist
    if [ ! -d "$fm" ]; then
        echo "pack: Debian's dataset-fashion-mnist is not installed (bash scripts/install-deps.sh or apt-get install dataset-fashion-mnist)" >&2
        exit 1
    fi
    /usr/bin/python3 - "$fm" "$bundle/datasets" <<'EOF'
import gzip, os, struct, sys
src, out = sys.argv[1], sys.argv[2]
def idx_images(name):
    for cand in (name, name + ".gz"):
        p = os.path.join(src, cand)
        if os.path.exists(p):
            data = (gzip.open if p.endswith(".gz") else open)(p, "rb").read()
            magic, n, r, c = struct.unpack(">IIII", data[:16])
            assert magic == 2051 and len(data) == 16 + n * r * c, p
            return n, r * c, data[16:]
    sys.exit("pack: %s not found in %s" % (name, src))
def u8bin(path, n, d, body):
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(struct.pack("<ii", n, d))
        f.write(body)
n, d, base = idx_images("train-images-idx3-ubyte")
u8bin(os.path.join(out, "fmnist60k_base.u8bin.gz"), n, d, base)
nq, dq, q = idx_images("t10k-images-idx3-ubyte")
u8bin(os.path.join(out, "fmnist60k_query.u8bin.gz"), 1000, dq, q[:1000 * dq])
print("pack: fmnist60k %d x %d, 1000 queries" % (n, d))
EOF
    git -C "$root" rev-parse --short HEAD >"$bundle/COMMIT" 2>/dev/null || echo unknown >"$bundle/COMMIT"
    grep -m1 "model name" /proc/cpuinfo | sed 's/.*: //' >"$bundle/PACKED_ON"
    du -sh "$bundle"
    echo "pack: bundle ready at $bundle (commit $(cat "$bundle/COMMIT"))"
}

# ==== run (there) ====

# step NAME SECONDS CMD...: runs CMD with a time limit, logging to $log.
step() {
    local name=$1 limit=$2
    shift 2
    local t0 rc ms
    t0=$(date +%s%N)
    echo "== $name (limit ${limit}s): $*" >>"$log"
    timeout --kill-after=5 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    printf '%-40s rc=%-3d %4d.%03d s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) >>"$summary"
    return $rc
}

run() {
    local out=${3:-${OUT:-$root/gpu-check-out}}
    bundle=$(cd "$bundle" && pwd)
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    summary=$out/summary.txt
    local env=$out/env.txt tests=$out/tests.log jsonl=$out/builds.jsonl
    log=$out/builds.log
    : >"$summary"
    : >"$jsonl"
    : >"$log"
    local work=/tmp/kiln-gpu-check
    rm -rf "$work"
    mkdir -p "$work/root" "$work/shared" "$work/data" "$work/tmp"
    ln -s "$bundle/datasets" "$work/shared/datasets"
    export LD_LIBRARY_PATH=$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export KILN_CACHE_DIR=$work/tmp/clcache KILN_TEST_TMP=$work/tmp KILN_CLI=$bundle/bin/kiln
    local kiln=$bundle/bin/kiln
    # A dry run on a machine without a GPU: KILN_GPU_CHECK_DEVICE=cpu and a
    # smaller KILN_GPU_CHECK_N check the script itself.
    local device=${KILN_GPU_CHECK_DEVICE:-gpu} synth_n=${KILN_GPU_CHECK_N:-1000000}

    {
        echo "kiln commit $(cat "$bundle/COMMIT"), packed on $(cat "$bundle/PACKED_ON")"
        echo "date: $(date -u +%FT%TZ)"
        echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi: not available"
    } >"$env"

    # Decision 2: the NVIDIA vendor file.
    local nvlib
    nvlib=$(ldconfig -p 2>/dev/null | awk '/libnvidia-opencl.so.1 .*x86-64/ {print $NF; exit}')
    [ -n "$nvlib" ] || nvlib=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib \
        -maxdepth 3 -name 'libnvidia-opencl.so.1' 2>/dev/null | head -n1)
    echo "libnvidia-opencl.so.1: ${nvlib:-not found}" >>"$env"
    if [ -n "$nvlib" ]; then
        if grep -qs "libnvidia-opencl" /etc/OpenCL/vendors/*.icd; then
            echo "vendor file: present in /etc/OpenCL/vendors" >>"$env"
        elif mkdir -p /etc/OpenCL/vendors 2>/dev/null && echo "$nvlib" >/etc/OpenCL/vendors/nvidia.icd 2>/dev/null; then
            echo "vendor file: written to /etc/OpenCL/vendors/nvidia.icd" >>"$env"
        else
            mkdir -p "$work/vendors"
            echo "$nvlib" >"$work/vendors/nvidia.icd"
            export OCL_ICD_VENDORS=$work/vendors
            echo "vendor file: /etc not writable, OCL_ICD_VENDORS=$work/vendors" >>"$env"
        fi
    fi
    echo "== kiln devices" >>"$env"
    "$kiln" devices >>"$env" 2>&1
    echo "kiln devices rc=$?" >>"$env"

    echo "# kiln gpu-check: $(head -n1 "$env")" >>"$summary"
    # The device tests, GPU forced (they read ../shared/datasets from the cwd).
    (
        cd "$work/root" || exit 1
        export KILN_DEVICE=$device
        for t in test_cl_knn test_device_build; do
            echo "== $t" >>"$tests"
            step "$t (KILN_DEVICE=$device)" 150 "$bundle/bin/$t" || true
            tail -n 3 "$log" >>"$tests"
        done
    )

    # Datasets (decision 3).
    step "fmnist60k unpack" 30 sh -c "gunzip -c '$bundle/datasets/fmnist60k_base.u8bin.gz' >'$work/data/fm_base.u8bin' && gunzip -c '$bundle/datasets/fmnist60k_query.u8bin.gz' >'$work/data/fm_query.u8bin'"
    step "fmnist60k groundtruth" 60 "$kiln" groundtruth "$work/data/fm_base.u8bin" "$work/data/fm_query.u8bin" -k 100 -o "$work/data/fm_gt.ivecs"
    step "synth1m generate" 60 "$kiln" generate -n "$synth_n" -d 128 --clusters 1000 --seed 42 -o "$work/data/s1m_base.fvecs" --queries 1000 --queries-out "$work/data/s1m_query.fvecs"
    step "synth1m groundtruth" 90 "$kiln" groundtruth "$work/data/s1m_base.fvecs" "$work/data/s1m_query.fvecs" -k 100 -o "$work/data/s1m_gt.ivecs"

    # The builds: device on the GPU, then insert for the side-by-side figure.
    local name base q gt method limit
    for spec in "fmnist60k fm device 90" "fmnist60k fm insert 90" "synth1m s1m device 180"; do
        read -r name base method limit <<<"$spec"
        [ "$base" = fm ] && q=$work/data/fm_query.u8bin || q=$work/data/s1m_query.fvecs
        gt=$work/data/${base}_gt.ivecs
        local b=$work/data/fm_base.u8bin
        [ "$base" = s1m ] && b=$work/data/s1m_base.fvecs
        local ix=$work/data/$name-$method.kiln
        if step "$name build --method $method" "$limit" env KILN_DEVICE="$device" "$kiln" build "$b" -o "$ix" --method "$method" --json --progress; then
            grep '"build_seconds"' "$log" | tail -n1 | sed "s/^{/{\"dataset\": \"$name\", /" >>"$jsonl"
            step "$name eval ($method)" 60 "$kiln" eval "$ix" "$q" "$gt" -k 10 --ef 10,16,32,64,128 --json || true
            grep '"recall"' "$log" | tail -n5 | sed "s/^{/{\"dataset\": \"$name\", \"method\": \"$method\", /" >>"$jsonl"
        fi
        rm -f "$ix"
    done

    {
        echo
        echo "builds (build_seconds, stages):"
        grep '"build_seconds"' "$jsonl" | sed -E 's/.*"dataset": "([^"]*)".*"build_seconds": ([0-9.]+).*"method": "([^"]*)".*"stages": \{([^}]*)\}.*/  \1 \3: \2 s; \4/'
        echo "recall@10 / qps per ef:"
        grep '"recall"' "$jsonl" | sed -E 's/.*"dataset": "([^"]*)", "method": "([^"]*)".*"ef": ([0-9]+).*"recall": ([0-9.]+).*"qps": ([0-9.]+).*/  \1 \2 ef=\3 recall=\4 qps=\5/'
    } >>"$summary"
    cat "$summary"
}

case "$mode" in
pack) pack ;;
run) run "$@" ;;
*)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
