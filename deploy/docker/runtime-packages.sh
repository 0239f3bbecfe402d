#!/usr/bin/env bash
# Prints the Debian packages that own the shared libraries the given binaries load, one per
# line: what a runtime image must install to run binaries built in a builder image of the
# same Debian release. Used by the Dockerfiles in this folder (build stage).
#
# Usage: runtime-packages.sh BINARY...
set -euo pipefail
(($#)) || { echo "usage: runtime-packages.sh BINARY..." >&2; exit 2; }

deps=$(ldd "$@")
if grep -q 'not found' <<<"$deps"; then
  grep 'not found' <<<"$deps" >&2
  echo "runtime-packages: some libraries are missing in this image" >&2
  exit 1
fi
# dpkg knows a file by the path its package installed; with merged /usr that is /lib/... for
# some packages and /usr/lib/... for others, so ask for both spellings in one dpkg call.
mapfile -t libs < <(awk '/=> \// { print $3 }' <<<"$deps" | xargs -r readlink -f | sort -u)
queries=()
for lib in "${libs[@]}"; do queries+=("$lib" "${lib#/usr}"); done
owners=$(dpkg -S "${queries[@]}" 2>/dev/null || true)   # exits 1 for the spellings it lacks
for lib in "${libs[@]}"; do
  grep -q -e ": $lib\$" -e ": ${lib#/usr}\$" <<<"$owners" && continue
  # A CUDA build on a machine whose toolkit came from NVIDIA's installer: the
  # worker links cudart/cuBLAS from there (an image installs NVIDIA's packages).
  if [[ "$lib" == /usr/local/cuda* ]]; then
    echo "runtime-packages: $lib comes from the CUDA toolkit, not a Debian package" >&2
    continue
  fi
  echo "runtime-packages: no package owns $lib" >&2
  exit 1
done
cut -d: -f1 <<<"$owners" | sort -u
