#!/usr/bin/env bash
# Checks that every tracked C++/CUDA source is formatted as .clang-format says
# (Google style, 100 columns). Part of README command 2 (scripts/test.sh).
#
# Usage: scripts/check-format.sh          check; exit 1 and list the files that differ
#        scripts/check-format.sh --fix    reformat those files in place
# clang-format-14 is pinned (Debian 12's): other versions format a few
# constructs differently, and the check must not depend on the machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

clang_format="${KRUL_CLANG_FORMAT:-clang-format-14}"
if ! command -v "$clang_format" >/dev/null 2>&1; then
  echo "check-format: $clang_format not found (scripts/install-deps.sh installs it)" >&2
  exit 1
fi

mapfile -t files < <(git ls-files '*.cc' '*.h' '*.cu' '*.cuh')
if [[ "${1:-}" == --fix ]]; then
  "$clang_format" -i "${files[@]}"
  exit 0
fi

unformatted=()
for f in "${files[@]}"; do
  if ! "$clang_format" --dry-run --Werror "$f" >/dev/null 2>&1; then unformatted+=("$f"); fi
done
if ((${#unformatted[@]})); then
  echo "check-format: ${#unformatted[@]} file(s) differ from .clang-format:" >&2
  printf '  %s\n' "${unformatted[@]}" >&2
  echo "check-format: run scripts/check-format.sh --fix" >&2
  exit 1
fi
echo "check-format: ${#files[@]} files formatted"
