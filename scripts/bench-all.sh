#!/usr/bin/env bash
# Runs every benchmark script one after another (never two at once: they would skew each
# other on a 2-core machine) and keeps each one's output in $LOG_DIR. Not a test.
#
#   scripts/bench-all.sh [--7b]      # --7b adds the Qwen2-7B-shaped runs (~35 GB of disk)
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-/tmp/orient-bench-logs}
mkdir -p "$LOG_DIR"
BIG=()
[[ "${1:-}" == "--7b" ]] && BIG=(--7b)
run() { # NAME CMD...
  local name=$1; shift
  echo "=== $name: $* ($(date -u +%H:%M:%S))"
  "$@" > "$LOG_DIR/$name.log" 2>&1
  echo "    exit $?; log in $LOG_DIR/$name.log"
}
run inspect scripts/bench-inspect.sh
run forward scripts/bench-forward.sh "${BIG[@]}"
run convert scripts/bench-convert.sh
run diff scripts/bench-diff.sh
echo "=== done ($(date -u +%H:%M:%S))"
