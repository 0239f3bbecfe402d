#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) in their own build directory with
# clang, AddressSanitizer and UndefinedBehaviorSanitizer: only the libraries
# they need (base, model, kvformat, proto, the worker's wire format and the
# trace parsers), not the services. scripts/test.sh runs it before CTest;
# the CTest tests labelled "fuzz" then run each target for 30 s.
#
# Usage: scripts/build-fuzz.sh [build dir, default build/fuzz]
#   KRUL_FUZZ_CC / KRUL_FUZZ_CXX  the clang to use (default: clang/clang++,
#                                 else clang-14/clang++-14)
#   KRUL_JOBS                     build parallelism (default: nproc)
#
# Without clang or libFuzzer it prints why and exits 0: the product does not
# need them, and the fuzz tests then report themselves as skipped.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
build_dir="${1:-build/fuzz}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
jobs="${KRUL_JOBS:-$(nproc)}"

pick() {
  local c
  for c in "$@"; do
    if command -v "$c" >/dev/null 2>&1; then
      echo "$c"
      return
    fi
  done
}
cc="${KRUL_FUZZ_CC:-$(pick clang clang-14)}"
cxx="${KRUL_FUZZ_CXX:-$(pick clang++ clang++-14)}"
if [[ -z "$cc" || -z "$cxx" ]]; then
  echo "build-fuzz: no clang found; the fuzz targets are not built and the fuzz tests skip" \
       "(Debian: clang-14 libclang-rt-14-dev, installed by scripts/install-deps.sh)"
  exit 0
fi
# libFuzzer ships apart from the compiler on Debian (libclang-rt-14-dev).
probe="$(mktemp -d -t krul-fuzz-probe.XXXXXX)"
trap 'rm -rf "$probe"' EXIT
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t* d, size_t n) { return 0; }\n' \
  >"$probe/probe.c"
if ! "$cc" -fsanitize=fuzzer "$probe/probe.c" -o "$probe/probe" >"$probe/log" 2>&1; then
  echo "build-fuzz: $cc cannot link -fsanitize=fuzzer (libclang_rt.fuzzer missing);" \
       "the fuzz targets are not built and the fuzz tests skip. $(head -1 "$probe/log")"
  exit 0
fi

if [[ -f "$build_dir/CMakeCache.txt" ]] &&
   ! grep -qx 'KRUL_BUILD_FUZZERS:BOOL=ON' "$build_dir/CMakeCache.txt"; then
  echo "build-fuzz: $build_dir exists and is not a fuzzing build; remove it or pass another" >&2
  exit 1
fi

# RelWithDebInfo: optimized like the product, with line numbers in reports.
# No CUDA, tests or benchmarks in this build: only the fuzz targets.
CC="$cc" CXX="$cxx" cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKRUL_BUILD_FUZZERS=ON -DKRUL_BUILD_TESTS=OFF -DKRUL_BUILD_BENCH=OFF -DKRUL_WITH_CUDA=OFF \
  >"$probe/configure.log" 2>&1 || {
  cat "$probe/configure.log" >&2
  exit 1
}
cmake --build "$build_dir" --parallel "$jobs" --target krul_fuzzers
echo "build-fuzz: the fuzz targets are in $build_dir/bin"
