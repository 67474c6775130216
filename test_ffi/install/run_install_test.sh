#!/usr/bin/env bash
# Installs a built tree into a temporary prefix, moves the prefix (the
# package files must be relocatable), then builds and runs test_ffi/install/app
# three ways:
#   1. find_package(zero_copy_net): zero_copy_net::zero_copy_net and ::static
#   2. pkg-config: shared (`--cflags --libs`) and fully static (`--static`)
#   3. the seed's line: gcc -o app app.c -I<include> -L<lib> -lzero_copy_net -lpthread
# Usage: run_install_test.sh BUILD_DIR C_COMPILER VERSION
# Exit 0 pass, 1 fail, 77 skip (a tool is missing).
set -euo pipefail

build_dir=$1
cc=$2
version=$3
here=$(cd "$(dirname "$0")" && pwd)

fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in cmake pkg-config readelf; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool not found" >&2; exit 77; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/zcn-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== cmake --install into a staging prefix, then move it"
cmake --install "$build_dir" --prefix "$work/stage" >"$work/install.log" \
    || { cat "$work/install.log" >&2; fail "cmake --install"; }
mv "$work/stage" "$work/prefix"
prefix=$work/prefix
libdir=$(dirname "$(find "$prefix" -name libzero_copy_net.a | head -n1)")
[ -n "$libdir" ] || fail "libzero_copy_net.a not installed"
major=${version%%.*}

echo "== installed files ($libdir)"
[ -f "$prefix/include/zero_copy_net.h" ] || fail "header not in $prefix/include"
[ -f "$libdir/libzero_copy_net.so.$version" ] || fail "libzero_copy_net.so.$version missing"
[ "$(readlink "$libdir/libzero_copy_net.so.$major")" = "libzero_copy_net.so.$version" ] \
    || fail "libzero_copy_net.so.$major is not a link to libzero_copy_net.so.$version"
[ "$(readlink "$libdir/libzero_copy_net.so")" = "libzero_copy_net.so.$major" ] \
    || fail "libzero_copy_net.so is not a link to libzero_copy_net.so.$major"
readelf -d "$libdir/libzero_copy_net.so.$version" | grep -q "SONAME.*\[libzero_copy_net.so.$major\]" \
    || fail "soname is not libzero_copy_net.so.$major"
cmake_dir=$libdir/cmake/zero_copy_net
for f in zero_copy_netConfig.cmake zero_copy_netConfigVersion.cmake zero_copy_netTargets.cmake; do
    [ -f "$cmake_dir/$f" ] || fail "$cmake_dir/$f missing"
done
pc=$libdir/pkgconfig/zero_copy_net.pc
[ -f "$pc" ] || fail "$pc missing"
grep -Eq '^Libs\.private:.*-luring.*-lpthread' "$pc" || fail "Libs.private in $pc lacks -luring -lpthread"

# An app linked against the shared library must need libzero_copy_net.so.N
# and find it; one linked statically must not need it at all.
check_shared() {
    readelf -d "$1" | grep -q "NEEDED.*\[libzero_copy_net.so.$major\]" \
        || fail "$1 does not need libzero_copy_net.so.$major"
}
check_static() {
    if readelf -d "$1" 2>/dev/null | grep -q 'NEEDED.*libzero_copy_net'; then
        fail "$1 needs libzero_copy_net.so although linked statically"
    fi
}
run() {
    local exe=$1; shift
    "$exe" "$@" || fail "$exe exited $?"
}

echo "== 1. find_package(zero_copy_net)"
cmake -S "$here/app" -B "$work/app-build" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=Release >"$work/app-config.log" 2>&1 \
    || { cat "$work/app-config.log" >&2; fail "configuring the find_package app"; }
cmake --build "$work/app-build" >"$work/app-build.log" 2>&1 \
    || { cat "$work/app-build.log" >&2; fail "building the find_package app"; }
check_shared "$work/app-build/app_shared"
check_static "$work/app-build/app_static"
run "$work/app-build/app_shared" find_package/shared    # RPATH set by CMake
run "$work/app-build/app_static" find_package/static

echo "== 2. pkg-config"
export PKG_CONFIG_PATH=$libdir/pkgconfig
[ "$(pkg-config --modversion zero_copy_net)" = "$version" ] || fail "pkg-config --modversion"
# shellcheck disable=SC2046
"$cc" -o "$work/app_pc" "$here/app/app.c" $(pkg-config --cflags --libs zero_copy_net) \
    || fail "pkg-config shared link"
check_shared "$work/app_pc"
LD_LIBRARY_PATH=$libdir run "$work/app_pc" pkg-config/shared
# A fully static binary: libc.a, liburing.a and libzero_copy_net.a.
if [ -n "$("$cc" -print-file-name=liburing.a | grep /)" ] &&
   "$cc" -static -o "$work/app_pc_static" "$here/app/app.c" \
       $(pkg-config --static --cflags --libs zero_copy_net) 2>"$work/static.log"; then
    check_static "$work/app_pc_static"
    run "$work/app_pc_static" pkg-config/static
else
    echo "note: no fully static link here (no liburing.a or libc.a):" >&2
    cat "$work/static.log" >&2 || true
fi

echo "== 3. the seed's command line"
"$cc" -o "$work/app_seed" "$here/app/app.c" -I"$prefix/include" -L"$libdir" -lzero_copy_net -lpthread \
    || fail "the seed's gcc line"
check_shared "$work/app_seed"
LD_LIBRARY_PATH=$libdir run "$work/app_seed" seed-line/shared
# Against the archive alone (e.g. an install without the .so), the same line
# needs liburing: -l:libzero_copy_net.a -luring -lpthread.
"$cc" -o "$work/app_seed_static" "$here/app/app.c" -I"$prefix/include" -L"$libdir" \
    -l:libzero_copy_net.a -luring -lpthread || fail "the seed's line with the archive"
check_static "$work/app_seed_static"
run "$work/app_seed_static" seed-line/static

echo "PASS: installed package works through find_package, pkg-config and the plain gcc line"
