#!/usr/bin/env bash
# udp_echo end to end: port 0, round trips with socat and nc -u (each
# skipped if not installed; 77 if neither is), SIGTERM stops it with exit 0
# and its counters.
set -u
exe=$1
command -v socat >/dev/null || command -v nc >/dev/null || { echo "SKIP: neither socat nor nc"; exit 77; }
out=$(mktemp); trap 'rm -f "$out"; kill -9 $pid 2>/dev/null' EXIT
"$exe" 127.0.0.1 0 >"$out" 2>&1 & pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -n 's/^udp_echo listening on 127.0.0.1 \([0-9]*\)$/\1/p' "$out")
  [ -n "$port" ] && break
  if ! kill -0 $pid 2>/dev/null; then
    cat "$out"
    grep -q "io_uring" "$out" && { echo SKIP; exit 77; }
    exit 1
  fi
  sleep 0.05
done
[ -n "$port" ] || { echo "FAIL: no listening line"; cat "$out"; exit 1; }
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
