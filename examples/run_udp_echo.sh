#!/usr/bin/env bash
# udp_echo end to end: port 0, round trips with socat and nc -u (each
# skipped if not installed; 77 if neither is), SIGTERM stops it with exit 0
# and its counters.
set -u
exe=$1
command -v socat >/dev/null || command -v nc >/dev/null || { echo "SKIP: neither socat nor nc"; exit 77; }
source "$(dirname "$0")/start_example.sh"
start_example '^udp_echo listening on 127.0.0.1 \([0-9]*\)$' "$exe" 127.0.0.1 0
fail=0 sent=0
if command -v socat >/dev/null; then
  got=$(printf 'hello socat' | timeout 10 socat -t2 - "UDP:127.0.0.1:$port")
  [ "$got" = "hello socat" ] || { echo "FAIL: socat round trip: '$got'"; fail=1; }
  sent=$((sent + 1))
fi
if command -v nc >/dev/null; then
  got=$(printf 'hello nc' | timeout 10 nc -u -w1 127.0.0.1 "$port")
  [ "$got" = "hello nc" ] || { echo "FAIL: nc -u round trip: '$got'"; fail=1; }
  sent=$((sent + 1))
fi
kill -TERM $pid; wait $pid; rc=$?
cat "$out"
[ $rc = 0 ] || { echo "FAIL: exit status $rc after SIGTERM"; fail=1; }
grep -q "^received $sent datagrams, sent $sent," "$out" || { echo "FAIL: counters"; fail=1; }
exit $fail
