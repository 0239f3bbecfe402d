#!/usr/bin/env bash
# README command 1: installs the dependencies, builds Krul and runs the demo.
#
# The demo today generates text with the CPU engine (krul-generate): with the
# real TinyStories model from the shared data folder when it is there,
# otherwise with a seeded synthetic model. Later steps (a local kvstore +
# worker cluster, a multi-turn conversation) are added as more demo_* steps
# in main().
#
# Usage: scripts/demo.sh
#   KRUL_DATA_DIR    shared data folder (default: ../shared/data next to the repo)
#   KRUL_SKIP_DEPS=1 skip scripts/install-deps.sh (no root needed)
#   KRUL_CMAKE_ARGS  passed on to scripts/build.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Resolve the data folder to an absolute path before leaving the caller's cwd.
data_dir="${KRUL_DATA_DIR:-$repo_root/../shared/data}"
if [[ -d "$data_dir" ]]; then
  data_dir="$(cd "$data_dir" && pwd)"
fi

cd "$repo_root"
prompt="Once upon a time"
steps=128

step() { printf '\n=== demo: %s\n' "$*"; }
note() { echo "demo: $*"; }

# Echoes a command, then runs it.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  "$@"
}

prepare() {
  if [[ "${KRUL_SKIP_DEPS:-0}" == 1 ]]; then
    step "skipping dependency install (KRUL_SKIP_DEPS=1)"
  else
    step "installing dependencies"
    scripts/install-deps.sh
  fi
  step "building"
  scripts/build.sh
}

# Generates $steps tokens from $prompt with a single CPU engine.
demo_generate() {
  local model="$data_dir/models/stories260K.bin"
  local tokenizer="$data_dir/models/tok512.bin"
  local args=()

  step "generating text with the CPU engine"
  # A llama2.c checkpoint carries no vocabulary, so the real model needs both.
  if [[ -f "$model" && -f "$tokenizer" ]]; then
    note "model: REAL weights, stories260K (TinyStories): $model"
    note "tokenizer: $tokenizer"
    args+=(--model "$model" --tokenizer "$tokenizer")
  else
    note "model: SYNTHETIC (seeded random weights, byte-level vocabulary)"
    note "  $model or $tokenizer not found;"
    note "  set KRUL_DATA_DIR to the shared data folder for real text."
    note "  Random weights produce noise by design; the run shows the engine works."
    args+=(--synthetic)
  fi
  run build/bin/krul-generate "${args[@]}" --prompt "$prompt" --steps "$steps"
}

main() {
  prepare
  demo_generate
  step "done"
}

main "$@"
