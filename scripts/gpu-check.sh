#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with an NVIDIA GPU:
# configure (KRUL_ENGINE_ONLY=ON, Ninja), build the CUDA tests and the GPU
# benchmark on all cores, run them, and write into OUTDIR:
#   gpu-check.log       everything printed, with a timestamp per step
#   cuda_tests.json     GoogleTest's reports of the CUDA test binaries, per suite
#                       (null for a suite whose process crashed)
#   restore_gpu.json    krul-bench-restore-gpu --json (TTFT per mode, ratios,
#                       efficiency, peaks, estimator overhead)
#   summary.json        each step's exit status and seconds
# Made to finish in under 8 minutes on one H100 (each step has a timeout).
#
# Usage: scripts/gpu-check.sh OUTDIR
#   KRUL_GPU_DEPS       Abseil/GoogleTest/model folder from pack-gpu-deps.sh
#                       (default .gpu-deps in the repository)
#   KRUL_GPU_BUILD      build folder (default build-gpu)
#   KRUL_GPU_BENCH_ARGS extra arguments for krul-bench-restore-gpu
#   KRUL_GPU_SKIP_RUN=1 configure and build only (e.g. on a machine without
#                       a GPU, to check that everything compiles)
#   KRUL_GPU_BUDGET_S   overall time budget in seconds (default 450)
# Exit status: 0 when every step passed, else the number of failed steps
# (or 2 before any step when OUTDIR or the deps folder is missing).
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 1 ]]; then
  echo "usage: scripts/gpu-check.sh OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
out="$(cd "$1" && pwd)"
deps="${KRUL_GPU_DEPS:-$repo_root/.gpu-deps}"
build="${KRUL_GPU_BUILD:-$repo_root/build-gpu}"
jobs="$(nproc)"
log="$out/gpu-check.log"
: > "$log"
exec > >(tee -a "$log") 2>&1

start=$(date +%s)
budget="${KRUL_GPU_BUDGET_S:-450}"  # under 8 minutes, whatever each step takes
deadline=$(( start + budget ))
failed=0
summary=""
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }
# record NAME RC SECONDS
record() {
  summary+="${summary:+, }\"$1\": {\"exit\": $2, \"seconds\": $3}"
  if [[ "$2" != 0 ]]; then failed=$((failed + 1)); echo "!! $1 failed (exit $2)" >&2; fi
}
# run NAME CAP_S command...: at most CAP_S seconds, and never past the
# overall deadline.
run() {
  local name="$1" limit="$2" t0 rc left
  shift 2
  t0=$(date +%s)
  left=$(( deadline - t0 ))
  (( left < limit )) && limit=$left
  if (( limit < 5 )); then
    echo "!! $name skipped: the ${budget}s budget is spent" >&2
    record "$name" 124 0
    return 124
  fi
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  record "$name" "$rc" "$(( $(date +%s) - t0 ))"
  return "$rc"
}
finish() {
  printf '{"steps": {%s}, "failed": %d, "seconds": %d}\n' "$summary" "$failed" \
    "$(( $(date +%s) - start ))" > "$out/summary.json"
  step "done: $failed failed step(s); results in $out"
  exit "$failed"
}

step "environment"
uname -a
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
nvcc --version 2>&1 | tail -2
cmake --version | head -1
ninja --version
c++ --version | head -1
ls /usr/local/cuda/lib64/ 2>/dev/null | grep -E '^lib(cudart|cublas|cublasLt|nccl)\.so\.[0-9]+$' || true
free -g | head -2
echo "cores: $jobs; repo: $repo_root; deps: $deps; build: $build"

if [[ ! -d "$deps/include/absl" ]]; then
  echo "missing $deps (Abseil, GoogleTest, model): run scripts/pack-gpu-deps.sh on the" \
       "development machine and bring the folder along (docs/cuda.md)"
  exit 2
fi
arch_dir="$(ls -d "$deps"/lib/*-linux-gnu 2>/dev/null | head -1)"
export LD_LIBRARY_PATH="$arch_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KRUL_DATA_DIR="$deps/data"

step "configure"
run configure 120 cmake -S "$repo_root" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DKRUL_ENGINE_ONLY=ON -DKRUL_WITH_CUDA=ON -DKRUL_BUILD_TESTS=ON -DKRUL_BUILD_BENCH=ON \
  -DCMAKE_PREFIX_PATH="$deps" \
  -Dabsl_DIR="$arch_dir/cmake/absl" -DGTest_DIR="$arch_dir/cmake/GTest" \
  -DKRUL_DEFAULT_DATA_DIR="$deps/data" \
  -DCMAKE_POLICY_VERSION_MINIMUM=3.5 || finish

step "build (ninja, $jobs jobs)"
run build 270 cmake --build "$build" --parallel "$jobs" \
  --target krul_engine_cuda_tests krul_compress_cuda_tests krul_restore_cuda_tests \
  krul-bench-restore-gpu || finish

if [[ "${KRUL_GPU_SKIP_RUN:-0}" == 1 ]]; then
  step "KRUL_GPU_SKIP_RUN=1: not running tests and benchmarks"
  finish
fi

# One process per suite, so a crash (an illegal address poisons the CUDA
# context) costs one suite's results, not all of them.
step "CUDA tests"
# name:binary:filter
suites=(
  "kernels:krul_engine_cuda_tests:AllDTypes/KernelDTypeTest.*:KernelTest.*"
  "engine:krul_engine_cuda_tests:DTypesAndAttention/CudaEngineParityTest.*:CudaEngineTest.*"
  "kv_cache:krul_engine_cuda_tests:DTypes/CudaKvCacheTest.*"
  "estimator:krul_compress_cuda_tests:HeadStrides/DecodeStrideTest.*:CudaEstimatorTest.*"
  "restore:krul_restore_cuda_tests:CudaRestoreTest.*"
  "tp:krul_engine_cuda_tests:CudaTpTest.*"
)
reports="$(mktemp -d)"
for entry in "${suites[@]}"; do
  name="${entry%%:*}"
  rest="${entry#*:}"
  binary="${rest%%:*}"
  step "CUDA tests: $name"
  run "tests_$name" 90 "$build/bin/$binary" --gtest_filter="${rest#*:}" \
    --gtest_output="json:$reports/$name.json" --gtest_color=no
done
# All suites' GoogleTest reports in one file (the device tool returns few files).
{
  echo '{"suites": {'
  first=1
  for entry in "${suites[@]}"; do
    name="${entry%%:*}"
    [[ $first == 1 ]] || echo ','
    first=0
    printf '"%s": ' "$name"
    if [[ -s "$reports/$name.json" ]]; then cat "$reports/$name.json"; else echo 'null'; fi
  done
  echo '}}'
} > "$out/cuda_tests.json"
rm -rf "$reports"

step "GPU restore benchmark"
read -r -a bench_args <<<"${KRUL_GPU_BENCH_ARGS:-}"
run bench 270 "$build/bin/krul-bench-restore-gpu" --json "${bench_args[@]}" \
  > "$out/restore_gpu.json"

finish
