#!/usr/bin/env bash
# tcp_echo end to end: port 0, round trips with nc -N and socat (each
# skipped if not installed), SIGTERM stops it with exit 0 and a stats line.
set -u
exe=$1
source "$(dirname "$0")/start_example.sh"
start_example '^tcp_echo listening on 127.0.0.1:\([0-9]*\)$' "$exe" 0 127.0.0.1
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
