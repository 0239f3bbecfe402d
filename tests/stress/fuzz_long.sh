#!/usr/bin/env bash
# Runs every libFuzzer target (tests/fuzz) for a long time, each on its
# committed seed corpus (tests/fuzz/corpus/<name>) with its dictionary, and
# prints one summary line per target: executions, coverage (cov: edges,
# ft: features), corpus size, and whether it found anything. The CTest fuzz
# tests run the same targets for 30 s; this is the ">= 10 minutes once" run.
#
# Usage: tests/stress/fuzz_long.sh [--seconds N] [--jobs J] [--build DIR] [--out DIR] [TARGET...]
#   --seconds N  fuzzing time per target (default 600)
#   --jobs J     targets fuzzed at the same time (default 1)
#   --build DIR  a fuzzing build (scripts/build-fuzz.sh DIR; default build/fuzz)
#   --out DIR    kept: per target the log, the inputs the run added
#                (DIR/<target>/corpus) and any crashing input; default a temp
#                dir removed at exit unless something was found
#   TARGET...    e.g. kv_block manifest (default: all of tests/fuzz/corpus/)
#
# Exit status: 0 when no target found anything, 1 when one did (its input is
# named in the output and kept under --out), 2 on a usage error.
# Builds nothing: run scripts/build-fuzz.sh DIR first. On the shared 2-core
# box run it under `nice -n 19`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
seconds=600 jobs=1 build="$repo_root/build/fuzz" out=""
while (($#)); do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "fuzz_long: unknown flag $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
targets=("$@")
if ((${#targets[@]} == 0)); then
  for d in "$repo_root"/tests/fuzz/corpus/*/; do targets+=("$(basename "$d")"); done
fi
for t in "${targets[@]}"; do
  if [[ ! -x "$build/bin/krul_fuzz_$t" ]]; then
    echo "fuzz_long: $build/bin/krul_fuzz_$t is not built (scripts/build-fuzz.sh $build)" >&2
    exit 2
  fi
done

keep_out=1
if [[ -z "$out" ]]; then
  out="$(mktemp -d -t krul-fuzz-long.XXXXXX)"
  keep_out=0
fi
mkdir -p "$out"
found=0
pids=()
# A target runs as run_one -> run_fuzzer.sh -> the fuzzer: stop the whole tree.
kill_tree() {
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$c"; done
  kill "$1" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${pids[@]}"; do kill_tree "$p"; done
  wait 2>/dev/null || true
  if ((keep_out == 0 && found == 0)); then rm -rf "$out"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "fuzz_long: ${#targets[@]} targets x ${seconds}s, $jobs at a time; work in $out"
start=$(date +%s)
# One target: run_fuzzer.sh (same flags as the CTest tests) into $out/<t>.
run_one() {
  local t="$1"
  local s=0
  bash "$repo_root/tests/fuzz/run_fuzzer.sh" --seconds "$seconds" "$build/bin/krul_fuzz_$t" \
    "$repo_root/tests/fuzz/corpus/$t" "$out/$t" >"$out/$t.summary" 2>&1 || s=$?
  echo "$s" >"$out/$t.rc"
}
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
  run_one "$t" &
  pids+=("$!")
done
wait || true
rc=0
printf '%-16s %12s %10s %8s %8s %8s  %s\n' target executions exec/s cov ft corpus result
for t in "${targets[@]}"; do
  s="$(cat "$out/$t.rc" 2>/dev/null || echo 3)"
  log="$out/$t/fuzz.log"
  execs="$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')"
  rate="$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')"
  last="$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1 || true)"
  cov="$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo '?')"
  ft="$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo '?')"
  corp="$(grep -oE 'corp: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || echo '?')"
  if ((s == 0)); then
    result=ok
  else
    result="FOUND (exit $s): $(ls "$out/$t" | grep -E '^(crash|leak|timeout|oom|slow-unit)-' |
      sed "s|^|$out/$t/|" | tr '\n' ' ')"
    found=1
    rc=1
  fi
  printf '%-16s %12s %10s %8s %8s %8s  %s\n' "$t" "$execs" "$rate" "$cov" "$ft" "$corp" "$result"
done
pids=()
echo "fuzz_long: done in $(($(date +%s) - start)) s"
if ((found)); then
  echo "fuzz_long: findings kept in $out (logs: $out/<target>/fuzz.log)"
  keep_out=1
fi
exit "$rc"
