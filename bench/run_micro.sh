#!/bin/sh
# Builds the library and bench/ in Release and runs both micro-benchmarks
# (C, then Python). usage: bench/run_micro.sh [build-dir (default ./build)]
#                                             [rounds (default 7)]
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
rounds=${2:-7}
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DZCN_BUILD_BENCH=ON \
    -DZCN_ASAN=OFF -DZCN_TSAN=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target micro_bench zero_copy_net >/dev/null
build=$(cd "$build" && pwd)
echo "== C: $build/bench/micro_bench $rounds"
"$build/bench/micro_bench" "$rounds"
echo
echo "== Python: python3 bench/micro.py $rounds"
ZCN_LIBRARY="$build/libzero_copy_net.so" PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}" \
    python3 "$src/bench/micro.py" "$rounds"
