#!/usr/bin/env bash
# check.sh BUILD_DIR CMAKE -- installs BUILD_DIR into a scratch prefix, then
# builds tests/install/downstream.c against it four ways (pkg-config and
# find_package, each with libkiln and libkiln-core), runs each, and checks
# with the dynamic loader's listing that the kiln-core programs do not load
# libOpenCL while the kiln ones do (when kiln has OpenCL). Exit 77 = skipped.
set -euo pipefail
build=$(cd "$1" && pwd)
cmake=${2:-cmake}
here=$(cd "$(dirname "$0")" && pwd)
tmp=${KILN_TEST_TMP:-$build/testtmp}/install
rm -rf "$tmp"
mkdir -p "$tmp"
prefix=$tmp/prefix
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*" >&2; fail=1; }

command -v pkg-config >/dev/null || { echo "SKIPPED: pkg-config is not installed" >&2; exit 77; }
"$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log"
for f in include/kiln.h bin/kiln; do
  [ -e "$prefix/$f" ] && ok "installed $f" || bad "$f not installed"
done
libdir=$(cd "$prefix" && ls -d lib*/ | head -n1); libdir=$prefix/${libdir%/}
for f in libkiln.so libkiln-core.so libkiln.a libkiln-core.a pkgconfig/kiln.pc \
         pkgconfig/kiln-core.pc cmake/kiln/kilnConfig.cmake; do
  [ -e "$libdir/$f" ] && ok "installed $f" || bad "$f not installed"
done
has_opencl=0
grep -q -- "-lOpenCL" "$libdir/pkgconfig/kiln.pc" && has_opencl=1

# Runs a program and checks what it loads: $1 name, $2 binary, $3 want OpenCL (0/1).
check_prog() {
  local name=$1 bin=$2 want=$3
  if LD_LIBRARY_PATH=$libdir "$bin" "$tmp/$name.kiln" >"$tmp/$name.out" 2>&1; then
    ok "$name runs: $(cat "$tmp/$name.out")"
  else
    bad "$name failed: $(cat "$tmp/$name.out")"
  fi
  local libs
  libs=$(LD_LIBRARY_PATH=$libdir ldd "$bin")
  if echo "$libs" | grep -q "libOpenCL"; then
    [ "$want" = 1 ] && ok "$name loads libOpenCL" || bad "$name loads libOpenCL: $libs"
  else
    [ "$want" = 0 ] && ok "$name does not load libOpenCL" || bad "$name lacks libOpenCL"
  fi
}

export PKG_CONFIG_PATH=$libdir/pkgconfig
cc=${CC:-cc}
for lib in kiln kiln-core; do
  # shellcheck disable=SC2046
  $cc -std=c11 -o "$tmp/pc-$lib" "$here/downstream.c" $(pkg-config --cflags --libs $lib)
  want=0
  [ $lib = kiln ] && want=$has_opencl
  check_prog "pc-$lib" "$tmp/pc-$lib" $want
done
# A static link through pkg-config --static needs no shared library at all.
# shellcheck disable=SC2046
$cc -std=c11 -o "$tmp/pc-static-core" "$here/downstream.c" \
    -Wl,-Bstatic $(pkg-config --cflags --libs-only-L kiln-core) -lkiln-core -Wl,-Bdynamic \
    $(pkg-config --static --libs-only-other kiln-core) -lpthread -lm
check_prog "pc-static-core" "$tmp/pc-static-core" 0

"$cmake" -S "$here" -B "$tmp/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" >"$tmp/cmake.log"
"$cmake" --build "$tmp/cmake-build" >>"$tmp/cmake.log"
check_prog "cmake-kiln" "$tmp/cmake-build/with_kiln" $has_opencl
check_prog "cmake-core" "$tmp/cmake-build/with_core" 0

if [ $fail -ne 0 ]; then
  echo "test_install: FAILED" >&2
  exit 1
fi
echo "test_install: passed"
