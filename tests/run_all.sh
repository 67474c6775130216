#!/usr/bin/env bash
# The README's test command: set up a fresh machine, then run every test.
#   1. CTest on a RelWithDebInfo build (every C test, shared and static)
#   2. CTest on an ASan+UBSan build (every C test)
#   3. CTest on a TSan build (the pool and its 8-thread stress test)
#   4. pytest against the installed package (.venv, `pip install .`)
# Each of them twice: on io_uring, then with ZCN_BACKEND=epoll, the backend
# used where io_uring is refused (docs/BACKENDS.md). A machine without
# io_uring runs both on epoll (the io_uring-only tests skip with the reason).
# Any failure, including pytest collecting nothing (exit 5), fails the run.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
source tests/setup.sh

jobs=$(nproc)
run_ctest() { # name, cmake args..., then -- ctest args
  local name=$1; shift
  local cmake_args=() ctest_args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do cmake_args+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  ctest_args=("$@")
  echo "== ctest ($name)"
  cmake -S . -B "build/$name" -DZCN_BUILD_BENCH=OFF "${cmake_args[@]}" >/dev/null
  cmake --build "build/$name" -j"$jobs" >/dev/null
  ctest --test-dir "build/$name" --output-on-failure -j"$jobs" "${ctest_args[@]}"
  echo "== ctest ($name, ZCN_BACKEND=epoll)"
  ZCN_BACKEND=epoll ctest --test-dir "build/$name" --output-on-failure -j"$jobs" "${ctest_args[@]}"
}

run_ctest release -DCMAKE_BUILD_TYPE=RelWithDebInfo
run_ctest asan -DCMAKE_BUILD_TYPE=Debug -DZCN_ASAN=ON -DZCN_BUILD_EXAMPLES=OFF
run_ctest tsan -DCMAKE_BUILD_TYPE=Debug -DZCN_TSAN=ON -DZCN_BUILD_EXAMPLES=OFF -- -R "pool|stop_race|test_loop|test_group"

echo "== pytest (installed package in $ZCN_VENV)"
# Run from tests/ so `import zcn` (here and in subprocesses) finds the
# installed package, not the source tree, which holds no built library.
cd tests
unset ZCN_LIBRARY
"$ZCN_VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
echo "== pytest (installed package, ZCN_BACKEND=epoll)"
ZCN_BACKEND=epoll "$ZCN_VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
