# Sourced by run_tcp_echo.sh and run_udp_echo.sh:
#   start_example SED_PORT_PATTERN EXE ARGS...
# starts EXE ARGS in the background with its output in $out, waits for the
# line SED_PORT_PATTERN matches (its \1 is the port) and sets $pid and $port.
# Exits 77 (skip) if the example says io_uring is unavailable, 1 if it dies
# or never prints the line. Removes $out and kills the example on exit.
start_example() {
  local pattern=$1; shift
  out=$(mktemp); trap 'rm -f "$out"; kill -9 $pid 2>/dev/null' EXIT
  "$@" >"$out" 2>&1 & pid=$!
  port=
  for _ in $(seq 100); do
    port=$(sed -n "s/$pattern/\\1/p" "$out")
    [ -n "$port" ] && return 0
    if ! kill -0 $pid 2>/dev/null; then
      cat "$out"
      grep -q "io_uring" "$out" && { echo SKIP; exit 77; }
      exit 1
    fi
    sleep 0.05
  done
  echo "FAIL: no listening line"; cat "$out"; exit 1
}
