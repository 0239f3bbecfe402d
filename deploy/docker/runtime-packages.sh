#!/usr/bin/env bash
# Prints the Debian packages that own the shared libraries the given binaries load, one per
# line: what a runtime image must install to run binaries built in a builder image of the
# same Debian release. Used by the Dockerfiles in this folder (build stage).
#
# Usage: runtime-packages.sh BINARY...
set -euo pipefail
(($#)) || { echo "usage: runtime-packages.sh BINARY..." >&2; exit 2; }

libs=$(ldd "$@" | awk '/=> \// { print $3 }' | sort -u)
if ldd "$@" | grep -q 'not found'; then
  ldd "$@" | grep 'not found' >&2
  echo "runtime-packages: some libraries are missing in this image" >&2
  exit 1
fi
for lib in $libs; do
  # dpkg knows files by the path the package installed; with merged /usr that may be
  # /lib/... or /usr/lib/..., so try the resolved path under both.
  real=$(readlink -f "$lib")
  dpkg -S "$real" 2>/dev/null || dpkg -S "${real#/usr}" 2>/dev/null || dpkg -S "/usr$real" 2>/dev/null \
    || { echo "runtime-packages: no package owns $real" >&2; exit 1; }
done | cut -d: -f1 | sort -u
