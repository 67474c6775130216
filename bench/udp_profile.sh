#!/bin/bash
# Where a UDP echo server's CPU goes, per datagram: perf samples of the
# server (cpu-clock, which works in VMs without PMU access) turned into
# nanoseconds per echoed datagram for each symbol.
#
#   bench/udp_profile.sh BIN SERVER SIZE [SECONDS] [TOP]
#     BIN     the udp_bench binary (e.g. build/release/bench/udp_bench)
#     SERVER  zcn | baseline | baseline-poll   (see bench/udp_bench.c)
#     SIZE    datagram bytes (8..2048)
#
# The server is pinned to CPU 0 and the load generator (window 256, bursts
# of 32) to CPU 1; perf records the server for SECONDS (default 3) in the
# middle of a SECONDS+2 s load. Needs perf and permission to use it
# (root, or kernel.perf_event_paranoid <= 1). Compare servers from the same
# run: this VM's timings drift between runs.
set -euo pipefail
BIN=${1:?usage: udp_profile.sh BIN SERVER SIZE [SECONDS] [TOP]}
SERVER=${2:?server}
SIZE=${3:?size}
SECONDS_REC=${4:-3}
TOP=${5:-25}
command -v perf >/dev/null || { echo "udp_profile.sh: perf not found" >&2; exit 2; }
TMP=$(mktemp -d)
trap 'kill "$SP" 2>/dev/null || true; rm -rf "$TMP"' EXIT
taskset -c 0 "$BIN" "$SERVER" 0 >"$TMP/server" 2>/dev/null &
SP=$!
for _ in $(seq 50); do [ -s "$TMP/server" ] && break; sleep 0.1; done
PORT=$(awk '{print $2}' "$TMP/server")
[ -n "$PORT" ] || { echo "udp_profile.sh: '$BIN $SERVER' did not start (server: zcn, baseline or baseline-poll)" >&2; exit 1; }
LOAD_S=$((SECONDS_REC + 2))
taskset -c 1 "$BIN" load "$PORT" "$SIZE" "$LOAD_S" 256 32 >"$TMP/load" &
LP=$!
sleep 1
if ! perf record -F 4000 -e cpu-clock -p "$SP" -o "$TMP/perf.data" -- sleep "$SECONDS_REC" >"$TMP/perf.log" 2>&1; then
    echo "udp_profile.sh: perf record failed (permission? kernel.perf_event_paranoid):" >&2
    cat "$TMP/perf.log" >&2
    exit 1
fi
wait "$LP"
kill -INT "$SP"
wait "$SP" || true
RECEIVED=$(awk '{print $4}' "$TMP/load")
# datagrams echoed while perf recorded: the run's average rate x the window
PER_WINDOW=$(awk -v n="$RECEIVED" -v t="$LOAD_S" -v w="$SECONDS_REC" 'BEGIN {print n / t * w}')
echo "# $SERVER, $SIZE B: $(awk -v n="$RECEIVED" -v t="$LOAD_S" 'BEGIN {printf "%.0f", n / t}') datagrams/s; ns per datagram by symbol (4000 Hz samples)"
perf report -i "$TMP/perf.data" --no-children --sort sym -n -g none 2>/dev/null |
    awk -v n="$PER_WINDOW" '/%/ && $1 !~ /^#/ {printf "%8.1f  %s\n", $2 * 250000 / n, $NF; total += $2 * 250000 / n}
        END {printf "%8.1f  TOTAL\n", total}' | sort -rn | head -n $((TOP + 1))
