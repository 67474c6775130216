#!/usr/bin/env bash
# Sets up a fresh Debian machine for zcn (run as root, or as a user who
# already has the Debian packages): system packages, then a virtualenv in
# .venv with zcn installed from this checkout (`pip install .[test,bench]`,
# which builds the C library into the package). Sourced by tests/run_all.sh
# and bench/run.sh; safe to run again.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

packages=(build-essential cmake pkg-config liburing-dev netcat-openbsd socat python3-venv)
# The benchmark compares the proxy with HAProxy (Debian's 2.6), drives the
# HTTP and RESP servers with wrk and redis-benchmark (redis-tools), and
# compares the C demo servers with nginx (nginx-light) and redis-server.
# The tests use curl, wrk and redis-tools too (skipped without them).
case ",${ZCN_EXTRAS:-test}," in
  *,bench,*) packages+=(haproxy wrk redis-tools curl nginx-light redis-server) ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root or apt-get install them)" >&2
    exit 1
  fi
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No service may start on install (redis-server would hold port 6379 and
  # nginx port 80): the benchmark runs its own on free ports.
  policy_added=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  # python3-venv is only needed for Debian's own python3; a pyenv python has venv.
  apt_status=0
  apt-get install -y -qq "${missing[@]}" >/dev/null || \
    apt-get install -y -qq "${missing[@]/python3-venv}" >/dev/null || apt_status=$?
  [ -z "$policy_added" ] || rm -f /usr/sbin/policy-rc.d
  [ "$apt_status" = 0 ] || exit "$apt_status"
fi

venv="$top/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
extras=${ZCN_EXTRAS:-test}
echo "setup: pip install $top[$extras] into $venv"
"$venv/bin/python" -m pip install -q "$top[$extras]"
export ZCN_VENV="$venv"
export PATH="$venv/bin:$PATH"
