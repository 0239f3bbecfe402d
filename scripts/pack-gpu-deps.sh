#!/usr/bin/env bash
# Packs what a GPU machine needs for scripts/gpu-check.sh but lacks into one
# folder (default .gpu-deps/ in the repository, ignored by git):
#   include/, lib/<multiarch>/      this machine's Debian Abseil (headers,
#                                   shared libraries, CMake config) and
#                                   GoogleTest/GMock (headers, static
#                                   libraries, CMake config)
#   data/models/                    the small real model for the parity test:
#                                   stories260K.bin, tok512.bin and its
#                                   llama2.c greedy reference
# The GPU image has CUDA, CMake and ninja but no Abseil or GoogleTest, and
# the shared data folder next to the repository does not travel with it.
#
# Usage: scripts/pack-gpu-deps.sh [OUTDIR]
#   KRUL_DATA_DIR  the shared data folder (default: ../shared/data)
# Then carry the folder to the GPU machine and run scripts/gpu-check.sh there
# (docs/cuda.md). About 10 MB.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo_root/.gpu-deps}"
data="${KRUL_DATA_DIR:-$repo_root/../shared/data}"
arch="$(gcc -print-multiarch 2>/dev/null || true)"
arch="${arch:-x86_64-linux-gnu}"
lib="/usr/lib/$arch"

for need in /usr/include/absl "$lib/cmake/absl" /usr/include/gtest /usr/include/gmock \
            "$lib/cmake/GTest" "$lib/libgtest.a"; do
  if [[ ! -e "$need" ]]; then
    echo "pack-gpu-deps: $need is missing: run scripts/install-deps.sh first" >&2
    exit 1
  fi
done

rm -rf "$out"
mkdir -p "$out/include" "$out/lib/$arch/cmake" "$out/data/models"

# The CMake configs locate everything relative to themselves
# (<prefix>/lib/<arch>/cmake/<pkg>), so the layout under $out mirrors /usr.
cp -a /usr/include/absl /usr/include/gtest /usr/include/gmock "$out/include/"
cp -a "$lib"/libabsl_*.so* "$out/lib/$arch/"
cp -a "$lib"/libgtest*.a "$lib"/libgmock*.a "$out/lib/$arch/"
cp -a "$lib/cmake/absl" "$lib/cmake/GTest" "$out/lib/$arch/cmake/"

copied=0
for f in stories260K.bin tok512.bin stories260K.greedy64.ref.txt; do
  if [[ -f "$data/models/$f" ]]; then
    cp "$data/models/$f" "$out/data/models/"
    chmod u+w "$out/data/models/$f"
    copied=$((copied + 1))
  else
    echo "pack-gpu-deps: $data/models/$f not found; the parity test will skip" >&2
  fi
done

{
  echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n) ($arch)"
  dpkg-query -W -f='${Package} ${Version}\n' 'libabsl-dev' 'libgtest-dev' 'libgmock-dev' 2>/dev/null || true
  echo "model files: $copied"
} > "$out/MANIFEST.txt"
echo "pack-gpu-deps: $(du -sh "$out" | cut -f1) in $out"
