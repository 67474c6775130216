#!/usr/bin/env bash
# tcp_client end to end against tcp_echo: (1) started while no server
# listens, it retries on its timers and finishes once the server comes up;
# (2) the server is killed and restarted mid-run: it reconnects and
# finishes, every answer checked.
set -u
client=$1
echo_exe=$2
fail=0
# a free port for the server that is not there yet
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
timeout 30 "$client" 127.0.0.1 "$port" 50 >"$log.out" 2>"$log" & cpid=$!
sleep 0.4
"$echo_exe" "$port" 127.0.0.1 >/dev/null 2>&1 & spid=$!
wait $cpid; rc=$?
kill -TERM $spid 2>/dev/null; wait $spid 2>/dev/null
grep -q "retrying in" "$log" || { echo "FAIL: no retry before the server came up"; fail=1; }
grep -q "^answers 50 " "$log.out" || { echo "FAIL: phase 1: $(cat "$log.out")"; fail=1; }
[ $rc = 0 ] || { echo "FAIL: phase 1 exit $rc"; cat "$log"; fail=1; }

# phase 2: the server goes away mid-run and comes back
"$echo_exe" "$port" 127.0.0.1 >/dev/null 2>&1 & spid=$!
sleep 0.2
timeout 60 "$client" 127.0.0.1 "$port" 200000 >"$log.out" 2>"$log" & cpid=$!
sleep 0.5
kill -KILL $spid; wait $spid 2>/dev/null
sleep 0.3
"$echo_exe" "$port" 127.0.0.1 >/dev/null 2>&1 & spid=$!
wait $cpid; rc=$?
kill -TERM $spid 2>/dev/null; wait $spid 2>/dev/null
cat "$log.out"
grep -q "connection lost" "$log" || { echo "FAIL: phase 2 saw no lost connection"; fail=1; }
grep -q "^answers 200000 connects [2-9]" "$log.out" || { echo "FAIL: phase 2: $(cat "$log.out")"; fail=1; }
[ $rc = 0 ] || { echo "FAIL: phase 2 exit $rc"; tail -5 "$log"; fail=1; }
rm -f "$log" "$log.out"
exit $fail
