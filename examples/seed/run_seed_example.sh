#!/usr/bin/env bash
# Runs the seed's C Integration Example (fixed port 9090, no signal handler,
# loops forever): start it, connect, send, check that on_data printed the
# data, then kill it. Exit 0 pass, 1 fail, 77 skip (port 9090 taken, or the
# server never listened: io_uring unavailable here).
set -u
exe=$1
port=9090
msg="hello seed example"
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
  echo "SKIP: port $port is in use"; exit 77
fi
out=$(mktemp); trap 'rm -f "$out"; kill -9 $pid 2>/dev/null' EXIT
"$exe" >"$out" 2>&1 & pid=$!
up=0
for _ in $(seq 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then up=1; break; fi
  kill -0 $pid 2>/dev/null || break
  sleep 0.05
done
if [ $up = 0 ]; then
  echo "SKIP: the example never listened on $port (io_uring unavailable?)"; cat "$out"; exit 77
fi
# the probe connections above sent nothing; now the real one
exec 3<>/dev/tcp/127.0.0.1/$port; printf '%s\n' "$msg" >&3; exec 3>&-
for _ in $(seq 100); do
  grep -q "Received: $msg" "$out" && break
  sleep 0.05
done
# SIGTERM: a background job of a non-interactive shell ignores SIGINT. The
# example has no handler, so the default action ends it.
kill -TERM $pid; wait $pid 2>/dev/null
echo "--- example output:"; cat "$out"
grep -q "^Received: $msg" "$out" || { echo "FAIL: on_data did not print the data"; exit 1; }
echo "PASS"
