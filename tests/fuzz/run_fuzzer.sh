#!/usr/bin/env bash
# Runs one libFuzzer target for a fixed time on its committed seed corpus.
# CTest runs it for every target (tests/fuzz/CMakeLists.txt, label "fuzz");
# it is also the command for longer runs (docs/security.md, "Fuzzing").
#
# Usage: tests/fuzz/run_fuzzer.sh [--seconds N] BINARY SEED_DIR WORK_DIR
#   BINARY    a libFuzzer target of a fuzzing build (scripts/build-fuzz.sh)
#   SEED_DIR  its committed seeds (tests/fuzz/corpus/<name>); read only
#   WORK_DIR  emptied, then receives the inputs the run adds to the corpus
#             (WORK_DIR/corpus), any crashing input (WORK_DIR/crash-*, ...)
#             and the log (WORK_DIR/fuzz.log)
#   The dictionary tests/fuzz/dict/<name>.dict is used when it exists.
#
# Exit status: 0 when the run ended without a finding, 77 (CTest: skipped)
# when BINARY does not exist, 1 on a crash, leak, UB report, timeout or
# out-of-memory input (the input is named in the log), 2 on a usage error.
set -euo pipefail

seconds=30
if [[ "${1:-}" == --seconds ]]; then
  seconds="$2"
  shift 2
fi
if (($# != 3)); then
  sed -n '2,17p' "$0" >&2
  exit 2
fi
binary="$1" seed_dir="$2" work_dir="$3"
name="$(basename "$seed_dir")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ ! -x "$binary" ]]; then
  echo "fuzz: SKIPPED: $binary is not built. The fuzz targets need clang with libFuzzer" \
       "(Debian: clang-14 libclang-rt-14-dev, from scripts/install-deps.sh);" \
       "scripts/build-fuzz.sh builds them in build/fuzz (scripts/test.sh runs it)."
  exit 77
fi
if [[ ! -d "$seed_dir" ]]; then
  echo "fuzz: no seed corpus at $seed_dir" >&2
  exit 2
fi

rm -rf "$work_dir"
mkdir -p "$work_dir/corpus"
args=(
  -max_total_time="$seconds"
  # A single input taking this long is a finding (quadratic parsing and the
  # like), as is one that needs more memory than this.
  -timeout=20
  -rss_limit_mb=2048
  -print_final_stats=1
  # Not 77, libFuzzer's default, which CTest would read as "skipped".
  -error_exitcode=1
  -artifact_prefix="$work_dir/"
)
dict="$here/dict/$name.dict"
[[ -f "$dict" ]] && args+=(-dict="$dict")

echo "fuzz: $name for ${seconds}s: $binary ${args[*]} $work_dir/corpus $seed_dir"
# ASan: report leaks; UBSan: stack traces with the report.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"
status=0
"$binary" "${args[@]}" "$work_dir/corpus" "$seed_dir" >"$work_dir/fuzz.log" 2>&1 || status=$?

# The summary: libFuzzer's final line of progress and its stats.
grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$work_dir/fuzz.log" | tail -2 || true
grep -E '^stat::' "$work_dir/fuzz.log" || true
if ((status != 0)); then
  echo "fuzz: $name FAILED (exit $status); the end of $work_dir/fuzz.log:" >&2
  tail -60 "$work_dir/fuzz.log" >&2
  ls "$work_dir" | grep -E '^(crash|leak|timeout|oom|slow-unit)-' | sed "s|^|fuzz: input: $work_dir/|" >&2 || true
  exit 1
fi
echo "fuzz: $name OK, $(find "$work_dir/corpus" -type f | wc -l) new corpus inputs"
