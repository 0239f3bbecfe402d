#!/usr/bin/env bash
# Configures and builds Krul in build/ (Release, Ninja), from any directory.
#
# Usage: scripts/build.sh [extra cmake configure args...]
#   KRUL_CMAKE_ARGS  extra configure args, split on whitespace, given after
#                    the defaults so they win, e.g.
#                    "-DKRUL_WITH_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug"
#   KRUL_JOBS        build parallelism (default: nproc)
#   CCACHE_DIR       compiler cache (default: $HOME/.cache/ccache); ccache is
#                    used automatically when installed (cmake/KrulCompilerFlags.cmake)
#
# Options set once stay in build/CMakeCache.txt until changed or build/ is
# removed, as usual with CMake.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Paths below the checkout are hashed relative to it, so a fresh clone elsewhere
# (CI) reuses what an earlier build compiled.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$repo_root}"
jobs="${KRUL_JOBS:-$(nproc)}"
read -r -a env_args <<<"${KRUL_CMAKE_ARGS:-}"

if [[ -f build/CMakeCache.txt ]] &&
   ! grep -qx 'CMAKE_GENERATOR:INTERNAL=Ninja' build/CMakeCache.txt; then
  echo "build: build/ was configured with another generator; remove build/ and rerun" >&2
  exit 1
fi

# Re-running the configure step is cheap, and it picks up CMakeLists changes
# and new arguments.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${env_args[@]}" "$@"
cmake --build build --parallel "$jobs"
