#!/usr/bin/env bash
# zcn_header_cxx: compiles header_cxx.cpp as C++11 with warnings as errors,
# links it against the static library and runs it.
# Usage: check_cxx.sh CXX INCLUDE_DIR STATIC_LIB OUT_DIR [SANITIZER_FLAGS]
set -euo pipefail
cxx=$1 include_dir=$2 static_lib=$3 out_dir=$4 sanitize=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out_dir"
# $sanitize is a word list on purpose (e.g. "-fsanitize=address,undefined").
# shellcheck disable=SC2086
"$cxx" -std=c++11 -Wall -Wextra -Werror -pedantic $sanitize -I"$include_dir" \
    -o "$out_dir/header_cxx" "$here/header_cxx.cpp" "$static_lib" -luring -lpthread
exec "$out_dir/header_cxx"
