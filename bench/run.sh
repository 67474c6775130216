#!/usr/bin/env bash
# The README's main job: set up a fresh machine, then run the benchmarks.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
ZCN_EXTRAS=test,bench source tests/setup.sh
bash bench/run_micro.sh build/bench 7
