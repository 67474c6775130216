#!/usr/bin/env bash
# zcn_c_api_doc: every function declared in the public header has an entry
# (its name followed by "(") in docs/C_API.md.
# Usage: check_api_doc.sh HEADER DOC
set -euo pipefail
header=$1 doc=$2
missing=0
for fn in $(grep -E '^ZCN_API' -A3 "$header" | grep -oE '\bzcn_[a-z0-9_]+\(' | tr -d '(' | sort -u); do
    if ! grep -q "${fn}(" "$doc"; then
        echo "missing from $(basename "$doc"): $fn" >&2
        missing=$((missing + 1))
    fi
done
[ "$missing" -eq 0 ] || { echo "FAIL: $missing functions undocumented" >&2; exit 1; }
echo "PASS: every public function of $(basename "$header") is in $(basename "$doc")"
