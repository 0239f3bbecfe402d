#!/usr/bin/env bash
# README command 2 (and the CI entry, .ci/run): installs the dependencies,
# builds Krul and runs every test with CTest. Exits non-zero when a test
# fails, times out, or no tests were found.
#
# Usage: scripts/test.sh [extra ctest args...]   e.g. scripts/test.sh -R proto
#                                                  or scripts/test.sh -L fuzz
#   KRUL_DATA_DIR    shared data folder with the real models and traces
#                    (default: ../shared/data next to the repo, when it exists;
#                    tests that need it skip with a message otherwise)
#   KRUL_TEST_TIMEOUT  per-test timeout in seconds (default: 600)
#   KRUL_SKIP_DEPS=1 skip scripts/install-deps.sh (no root needed)
#   KRUL_CMAKE_ARGS  passed on to scripts/build.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Resolve the data folder to an absolute path before leaving the caller's cwd.
data_dir="${KRUL_DATA_DIR:-$repo_root/../shared/data}"
if [[ -d "$data_dir" ]]; then
  data_dir="$(cd "$data_dir" && pwd)"
  export KRUL_DATA_DIR="$data_dir"
else
  data_dir=""
fi

cd "$repo_root"

if [[ "${KRUL_SKIP_DEPS:-0}" != 1 ]]; then
  scripts/install-deps.sh
fi

# Source format (.clang-format) first: it takes seconds, and a misformatted
# file fails the run as a failing test would.
scripts/check-format.sh

# CTest hands each test the data folder recorded at configure time
# (KRUL_DEFAULT_DATA_DIR), so the folder is passed to the configure step.
# Warnings are errors here (the test command is what CI runs), not in the demo.
build_args=(-DKRUL_WERROR=ON)
if [[ -n "$data_dir" ]]; then
  build_args+=("-DKRUL_DEFAULT_DATA_DIR=$data_dir")
  echo "test: data folder: $data_dir"
else
  echo "test: no shared data folder found; tests that need real models will skip"
fi

scripts/build.sh "${build_args[@]}"
# The libFuzzer targets, built with clang in build/fuzz; the CTest tests
# labelled "fuzz" run each for 30 s (and skip when clang is missing).
scripts/build-fuzz.sh build/fuzz

ctest --test-dir build --output-on-failure --no-tests=error \
  -j "$(nproc)" --timeout "${KRUL_TEST_TIMEOUT:-600}" "$@"
