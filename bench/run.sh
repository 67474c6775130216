#!/usr/bin/env bash
# The README's main job: set up a fresh machine (Debian packages, .venv with
# `pip install .[test,bench]`), build the benchmark's C tools (loadgen,
# epoll_echo, zcn_echo, tcp_proxy) into build/bench, run the echo
# benchmark's quick profile (`python -m zcn bench --quick`, under a minute),
# a short proxy profile (against HAProxy), short asyncio profiles (zcn's
# asyncio loop against uvloop and asyncio: echo, then HTTP under wrk and
# RESP under redis-benchmark), a short threads profile (one loop against
# two, one process against two workers), then the micro-benchmarks. The full echo
# run (~6 minutes):
#   .venv/bin/python -m zcn bench --build-dir build/bench
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
ZCN_EXTRAS=test,bench source tests/setup.sh

build=build/bench
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DZCN_BUILD_BENCH=ON \
    -DZCN_BUILD_EXAMPLES=ON -DZCN_ASAN=OFF -DZCN_TSAN=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target loadgen epoll_echo zcn_echo tcp_proxy >/dev/null

# Run from bench/ so `import zcn` finds the installed package (with its
# built library), not the source tree; bench/asyncio_echo.py is found
# through the build directory.
(cd bench && "$ZCN_VENV/bin/python" -m zcn bench --quick --build-dir "$top/$build")
echo
# The proxy profile, short: examples/tcp_proxy and `python -m zcn proxy`
# against HAProxy, all forwarding to the C epoll echo (the full run:
# python -m zcn bench --proxy --rounds 7).
(cd bench && "$ZCN_VENV/bin/python" -m zcn bench --proxy --build-dir "$top/$build" \
    --proxies zcn,zcn-py-c,haproxy --rounds 1 --warmup 0.2 --duration 0.6)
echo
# zcn's asyncio loop (zcn.aio), short: the Protocol and streams echo
# (python -m zcn bench --asyncio for 3 rounds), then the HTTP and RESP
# servers with two commands (the full run: python -m zcn bench --asyncio-apps).
(cd bench && "$ZCN_VENV/bin/python" -m zcn bench --asyncio --quick --build-dir "$top/$build")
echo
# Many cores (docs/THREADS.md), short: the C echo on one loop against two
# loops, the Python echo in one process against two pre-fork workers
# (the full run: python -m zcn bench --threads).
(cd bench && "$ZCN_VENV/bin/python" -m zcn bench --threads --quick --build-dir "$top/$build")
echo
(cd bench && "$ZCN_VENV/bin/python" -m zcn bench --asyncio-apps --quick --commands set,get \
    --build-dir "$top/$build")
echo
bash bench/run_micro.sh "$build" 7
