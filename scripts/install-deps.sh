#!/usr/bin/env bash
# Installs the Debian packages kiln's build, tests (the aarch64 cross-build
# and qemu-user, and Open MPI for the builds across ranks, included), demo and
# benchmarks need.
# Idempotent: does nothing when all are present. apt-get as root, sudo otherwise.
set -euo pipefail
PKGS=(build-essential cmake pkg-config clang libomp-dev libclang-rt-14-dev
      ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo
      libhnswlib-dev python3-hnswlib python3-faiss python3-numpy python3-matplotlib
      gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user strace
      openmpi-bin libopenmpi-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
