#!/usr/bin/env bash
# README command 1: installs the dependencies, builds Krul and runs the demo.
#
# The demo has two steps (the demo_* functions, run in order by main()):
#   1. demo_generate: krul-generate writes 128 tokens from "Once upon a time"
#      with the CPU engine, to show the engine on its own.
#   2. demo_cluster: one krul-kvstore and two krul-worker processes on
#      127.0.0.1 (ephemeral ports); krul-replay sends multi-turn conversations,
#      each next turn to the other worker (every restore crosses workers
#      through the kvstore), once per restore mode, and prints a table per
#      mode: TTFT p50/p99 and speed-up against full recompute, KV bytes stored
#      per turn, agreement of the answers with recompute. Then every process
#      is stopped with SIGTERM and must exit cleanly.
# Both use the real models from the shared data folder when they are there
# (stories260K for step 1, krul12L for step 2, tok512 tokenizer), otherwise a
# seeded synthetic model; each step prints which one it uses.
#
# Usage: scripts/demo.sh
#   KRUL_DATA_DIR    shared data folder (default: ../shared/data next to the repo)
#   KRUL_SKIP_DEPS=1 skip scripts/install-deps.sh (no root needed)
#   KRUL_CMAKE_ARGS  passed on to scripts/build.sh
#   KRUL_DEMO_MODEL=synthetic  step 2 uses the synthetic model even when real data exists
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

# ---- demo step: a local cluster ---------------------------------------------
#
# Starts one krul-kvstore (DRAM + RocksDB in a temp dir) and two krul-worker
# processes on 127.0.0.1 (ephemeral ports), replays multi-turn conversations
# with krul-replay, each next turn sent to the other worker (so every restore
# crosses workers through the kvstore), once per restore mode, and prints a
# table per mode: TTFT p50/p99 and speed-up against full recompute, KV bytes
# stored per turn, agreement of the answers with recompute. Then stops every
# process with SIGTERM and checks that each exits cleanly.
#   KRUL_DEMO_MODEL=synthetic  use the synthetic model even when real data exists
demo_cluster() {
  local conversations="$data_dir/conversations/krul_story_conversations.json"
  local model_args=() conversation_args=()
  local cluster_dir
  cluster_dir="$(mktemp -d "${TMPDIR:-/tmp}/krul-demo.XXXXXX")"
  local cluster_pids=()

  step "local cluster: 1 kvstore + 2 workers on loopback, multi-turn replay per restore mode"
  if [[ "${KRUL_DEMO_MODEL:-}" != synthetic && -f "$data_dir/models/krul12L.bin" &&
        -f "$data_dir/models/tok512.bin" ]]; then
    note "model: REAL weights, krul12L (12 layers, TinyStories) + tok512"
    model_args=(--model "$data_dir/models/krul12L.bin" --tokenizer "$data_dir/models/tok512.bin")
  else
    note "model: SYNTHETIC 8 layers, dim 256, 2 KV heads (random weights: answers are noise,"
    note "  agreement still compares modes token by token)"
    model_args=(--synthetic --synthetic_shape 256,688,8,8,2,512,512)
  fi
  if [[ -f "$conversations" ]]; then
    note "conversations: $conversations"
    conversation_args=(--conversations "$conversations")
  else
    note "conversations: built-in synthetic set (no $conversations)"
  fi

  # Stops the cluster: SIGTERM, then wait; a process that does not exit
  # cleanly in 30 s is killed and reported.
  stop_cluster() {
    local pid status=0 i
    for pid in "${cluster_pids[@]}"; do
      kill -TERM "$pid" 2>/dev/null || continue
      for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        note "process $pid did not stop in 30 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        status=1
      fi
      wait "$pid" 2>/dev/null || status=1
    done
    cluster_pids=()
    rm -rf "$cluster_dir"
    return "$status"
  }
  trap 'stop_cluster || true' EXIT

  # wait_listening FILE PID: the port from the "listening on HOST:PORT" line.
  wait_listening() {
    local i line
    for ((i = 0; i < 600; i++)); do
      line="$(grep -m1 'listening on' "$1" 2>/dev/null || true)"
      if [[ -n "$line" ]]; then
        sed -E 's/.*listening on [^ ]*:([0-9]+).*/\1/' <<<"$line"
        return 0
      fi
      kill -0 "$2" 2>/dev/null || break
      sleep 0.1
    done
    echo "demo: $(basename "$1" .out) did not start; its log:" >&2
    tail -n 20 "${1%.out}.log" >&2 || true
    return 1
  }

  build/bin/krul-kvstore --host 127.0.0.1 --port 0 --metrics_port -1 \
    --rocksdb_path "$cluster_dir/kvstore-db" \
    >"$cluster_dir/kvstore.out" 2>"$cluster_dir/kvstore.log" &
  cluster_pids+=($!)
  local kv_port
  kv_port="$(wait_listening "$cluster_dir/kvstore.out" "${cluster_pids[0]}")"
  note "kvstore on 127.0.0.1:$kv_port (RocksDB in $cluster_dir/kvstore-db)"

  local workers=() w port
  for w in 1 2; do
    build/bin/krul-worker "${model_args[@]}" --host 127.0.0.1 --http_port 0 --threads 1 \
      --kvstore "127.0.0.1:$kv_port" \
      >"$cluster_dir/worker$w.out" 2>"$cluster_dir/worker$w.log" &
    cluster_pids+=($!)
    port="$(wait_listening "$cluster_dir/worker$w.out" "$!")"
    note "worker $w on 127.0.0.1:$port"
    workers+=("127.0.0.1:$port")
  done

  local workers_csv
  workers_csv="$(IFS=,; echo "${workers[*]}")"
  run build/bin/krul-replay --workers "$workers_csv" "${conversation_args[@]}" \
    --json_out "$cluster_dir/replay.json"

  step "stopping the cluster"
  stop_cluster
  trap - EXIT
  note "kvstore and both workers stopped cleanly"
}

main() {
  prepare
  demo_generate
  demo_cluster
  step "done"
}

main "$@"
