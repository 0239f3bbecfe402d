#!/usr/bin/env bash
# Deterministic answers over every conversation of the shared data (issue
# 17): for each turn after the first, the greedy answer of the turn restored
# from the stored history equals that of the same turn recomputed from the
# messages' text by a worker whose store is down. Runs the CTest binary
# krul_worker_determinism_tests with KRUL_DETERMINISM_TURNS=0 (every turn:
# 12 story, 13 krulmix and 80 MT-bench conversations on krul12L, about 117
# compared turns per case; CTest runs 24) and prints each case's count.
# Without the shared data it runs the synthetic model's built-in turns.
#
# Usage: tests/stress/determinism.sh [--build DIR]   (default: build)
# Exit status: the test binary's (0 = every compared turn agreed).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    *) echo "usage: $0 [--build DIR]" >&2; exit 2 ;;
  esac
done
bin="$build/bin/krul_worker_determinism_tests"
if [[ ! -x "$bin" ]]; then
  echo "$bin not built: cmake --build $build --target krul_worker_determinism_tests" >&2
  exit 2
fi
export KRUL_DATA_DIR="${KRUL_DATA_DIR:-$PWD/../shared/data}"
export KRUL_DETERMINISM_TURNS=0
set +e
"$bin" 2>&1 | tee /dev/stderr | grep -E '^determinism|^\[  (PASSED|FAILED)' > /tmp/krul-determinism.$$
status=${PIPESTATUS[0]}
set -e
echo "---- summary (KRUL_DATA_DIR=$KRUL_DATA_DIR)"
cat /tmp/krul-determinism.$$
rm -f /tmp/krul-determinism.$$
exit "$status"
