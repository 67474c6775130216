#!/usr/bin/env bash
# tcp_echo end to end: port 0, round trips with nc -N and socat (each
# skipped if not installed), SIGTERM stops it with exit 0 and a stats line.
set -u
exe=$1
out=$(mktemp); trap 'rm -f "$out"; kill -9 $pid 2>/dev/null' EXIT
"$exe" 0 127.0.0.1 >"$out" 2>&1 & pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -n 's/^tcp_echo listening on 127.0.0.1:\([0-9]*\)$/\1/p' "$out")
  [ -n "$port" ] && break
  if ! kill -0 $pid 2>/dev/null; then
    cat "$out"
    grep -q "io_uring" "$out" && { echo SKIP; exit 77; }
    exit 1
  fi
  sleep 0.05
done
[ -n "$port" ] || { echo "FAIL: no listening line"; cat "$out"; exit 1; }
fail=0
payload="$(seq 1 20000)"
if command -v nc >/dev/null; then
  got=$(printf '%s' "$payload" | timeout 10 nc -N 127.0.0.1 "$port")
  [ "$got" = "$payload" ] || { echo "FAIL: nc round trip"; fail=1; }
fi
if command -v socat >/dev/null; then
  got=$(printf '%s' "$payload" | timeout 10 socat -t5 - "TCP:127.0.0.1:$port")
  [ "$got" = "$payload" ] || { echo "FAIL: socat round trip"; fail=1; }
fi
kill -TERM $pid; wait $pid; rc=$?
cat "$out"
[ $rc = 0 ] || { echo "FAIL: exit status $rc after SIGTERM"; fail=1; }
grep -q "^stats: accepted=" "$out" || { echo "FAIL: no stats line"; fail=1; }
exit $fail
