#!/usr/bin/env bash
# README command 1: installs the dependencies, builds Krul and runs the demo.
#
# The demo has two steps (the demo_* functions, run in order by main()):
#   1. demo_generate: krul-generate writes 128 tokens from "Once upon a time"
#      with the CPU engine, to show the engine on its own.
#   2. demo_cluster: a storage node and a compute node joined by a real,
#      kernel-shaped link (deploy/local/testbed.sh: two network namespaces,
#      a veth pair, tc tbf): one krul-kvstore on the storage node, two
#      krul-worker processes on the compute node, KV moving over UCX (TCP)
#      across the link. The link's rate is sized by a measurement on this
#      machine (krul-link-size: fully loading the demo's typical history
#      takes 0.4x of recomputing it, the balance of LLaMA-7B on an H100 at
#      8K tokens over 400 Gbit/s). krul-replay sends multi-turn
#      conversations, each next turn to the other worker (every restore
#      crosses workers through the kvstore), once per restore mode, and
#      prints a table per mode (TTFT p50/p99 and speed-up against full
#      recompute, restore time, KV bytes stored per turn, agreement of the
#      answers with recompute) and where the restores' time went. Then every
#      process is stopped with SIGTERM and must exit cleanly, and the
#      namespaces are removed.
#      Without root (no namespaces), the cluster runs on 127.0.0.1 and each
#      worker EMULATES the link (its loads are paced by a sleep); the demo
#      says so wherever it prints the link.
# Both use the real models from the shared data folder when they are there
# (stories260K for step 1, krul12L for step 2, tok512 tokenizer), otherwise a
# seeded synthetic model (with a longer context, so histories are long
# enough that restoring them dominates); each step prints which one it uses.
#
# Usage: scripts/demo.sh
#   KRUL_DATA_DIR    shared data folder (default: ../shared/data next to the repo)
#   KRUL_SKIP_DEPS=1 skip scripts/install-deps.sh (no root needed)
#   KRUL_CMAKE_ARGS  passed on to scripts/build.sh
#   KRUL_DEMO_MODEL=synthetic  step 2 uses the synthetic model even when real data exists
#   KRUL_DEMO_LINK   testbed (default: namespaces when possible, else emulated),
#                    emulated (loopback, paced loads), loopback (no link at all)
#   KRUL_DEMO_LINK_RATE    tc rate of the link ("300mbit"); default: sized by krul-link-size
#   KRUL_DEMO_LINK_PRESET  the reference link the sizing matches: ib400 (default,
#                    load = 0.4 x recompute), ib200, eth100, eth25
#   KRUL_DEMO_DELAY_MS     one-way delay of the link (needs tc netem; default 0)
#   KRUL_DEMO_OUT=DIR      also write DIR/replay.json (link + per-mode results)
#   KRUL_DEMO_STEPS        steps to run (default "generate cluster")
#   KRUL_SKIP_BUILD=1 with KRUL_BIN_DIR=DIR: use binaries already built in DIR
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Resolve the data folder to an absolute path before leaving the caller's cwd.
data_dir="${KRUL_DATA_DIR:-$repo_root/../shared/data}"
if [[ -d "$data_dir" ]]; then
  data_dir="$(cd "$data_dir" && pwd)"
fi

cd "$repo_root"
bin_dir="${KRUL_BIN_DIR:-build/bin}"
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
  if [[ "${KRUL_SKIP_BUILD:-0}" == 1 ]]; then
    step "skipping the build (KRUL_SKIP_BUILD=1): binaries from $bin_dir"
  else
    step "building"
    scripts/build.sh
  fi
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
  run "$bin_dir/krul-generate" "${args[@]}" --prompt "$prompt" --steps "$steps"
}

# ---- demo step: a disaggregated cluster ---------------------------------------
#
# A storage node (krul-kvstore) and a compute node (two krul-worker) joined by
# a shaped link (see the top of this file), krul-replay on the compute node.
demo_cluster() {
  local conversations="$data_dir/conversations/krul_story_conversations.json"
  local model_args=() conversation_args=() replay_args=() link_size_args=()
  # Globals, not locals: the EXIT trap may run after this function's scope.
  cluster_dir="$(mktemp -d "${TMPDIR:-/tmp}/krul-demo.XXXXXX")"
  cluster_pids=()
  tb_name=""
  local link_mode="${KRUL_DEMO_LINK:-testbed}"
  local tb_env=""

  step "disaggregated cluster: 1 kvstore (storage node) + 2 workers (compute node), replay per restore mode"
  if [[ "${KRUL_DEMO_MODEL:-}" != synthetic && -f "$data_dir/models/krul12L.bin" &&
        -f "$data_dir/models/tok512.bin" ]]; then
    note "model: REAL weights, krul12L (12 layers, TinyStories, 256-token context) + tok512"
    model_args=(--model "$data_dir/models/krul12L.bin" --tokenizer "$data_dir/models/tok512.bin")
    link_size_args=(--model "$data_dir/models/krul12L.bin" --history_tokens 128)
    # Three turns of 60 answer tokens fill most of the 256-token context:
    # the histories restored are about 80 and 160 tokens.
    replay_args=(--max_turns 3 --max_tokens 60)
  else
    note "model: SYNTHETIC 8 layers, dim 256, 2 KV heads, 1024-token context (random weights:"
    note "  answers are noise, agreement still compares modes token by token)"
    model_args=(--synthetic --synthetic_shape "256,688,8,8,2,512,1024")
    link_size_args=(--synthetic --synthetic_shape "256,688,8,8,2,512,1024" --history_tokens 256)
    replay_args=(--max_turns 3 --max_tokens 160)
  fi
  if [[ -f "$conversations" ]]; then
    note "conversations: $conversations"
    conversation_args=(--conversations "$conversations")
  else
    note "conversations: built-in synthetic set (no $conversations)"
  fi

  # Stops the cluster: SIGTERM, then wait; a process that does not exit
  # cleanly in 30 s is killed and reported. Then removes the testbed.
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
    if [[ -n "${tb_name:-}" ]]; then
      deploy/local/testbed.sh down --name "$tb_name" >/dev/null 2>&1 || status=1
      tb_name=""
    fi
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

  # ---- the link
  if [[ "$link_mode" == testbed ]]; then
    if ! deploy/local/testbed.sh check 2>"$cluster_dir/check.log"; then
      note "no testbed here ($(tail -n 1 "$cluster_dir/check.log" | sed 's/^testbed: //'));"
      note "  falling back to an EMULATED link on 127.0.0.1"
      link_mode=emulated
    fi
  fi
  case "$link_mode" in
    testbed | emulated | loopback) ;;
    *) echo "demo: KRUL_DEMO_LINK must be testbed, emulated or loopback" >&2; return 1 ;;
  esac
  local rate="${KRUL_DEMO_LINK_RATE:-}" rate_bits="" delay_ms="${KRUL_DEMO_DELAY_MS:-0}"
  if [[ "$link_mode" != loopback ]]; then
    if [[ -z "$rate" ]]; then
      note "sizing the link: recompute of the typical history measured here (krul-link-size)"
      local sizing
      sizing="$("$bin_dir/krul-link-size" "${link_size_args[@]}" \
                  --preset "${KRUL_DEMO_LINK_PRESET:-ib400}" 2>"$cluster_dir/link-size.log")"
      sed 's/^krul-link-size: /demo: link sizing: /' "$cluster_dir/link-size.log"
      rate="$(sed -n 's/^KRUL_LINK_RATE=//p' <<<"$sizing")"
    fi
    rate_bits="$(awk -v r="$rate" 'BEGIN {
      if (match(r, /^[0-9]+([.][0-9]+)?/) == 0) exit 1
      n = substr(r, 1, RLENGTH); u = substr(r, RLENGTH + 1)
      m = (u == "bit") ? 1 : (u == "kbit") ? 1e3 : (u == "mbit") ? 1e6 : (u == "gbit") ? 1e9 : -1
      if (m < 0) exit 1
      printf "%.0f\n", n * m }')" || { echo "demo: bad link rate '$rate'" >&2; return 1; }
  fi
  local gbit=""
  [[ -n "$rate_bits" ]] && gbit="$(awk -v b="$rate_bits" 'BEGIN { printf "%.6f", b / 1e9 }')"

  local kv_host=127.0.0.1 kv_prefix=() worker_prefix=() worker_link_args=() link_desc=""
  local emulated=false
  case "$link_mode" in
    testbed)
      tb_name="krultb$(printf '%x' "$$" | tail -c 6)"
      tb_env="$(deploy/local/testbed.sh up --name "$tb_name" --rate "$rate" --delay_ms "$delay_ms" \
                  2>"$cluster_dir/testbed.log")" || { cat "$cluster_dir/testbed.log" >&2; return 1; }
      sed 's/^testbed: /demo: testbed: /' "$cluster_dir/testbed.log"
      local tb_s tb_c tb_saddr tb_sdev tb_cdev
      tb_s="$(sed -n 's/^KRUL_TB_STORAGE_NS=//p' <<<"$tb_env")"
      tb_c="$(sed -n 's/^KRUL_TB_COMPUTE_NS=//p' <<<"$tb_env")"
      tb_saddr="$(sed -n 's/^KRUL_TB_STORAGE_ADDR=//p' <<<"$tb_env")"
      tb_sdev="$(sed -n 's/^KRUL_TB_STORAGE_DEV=//p' <<<"$tb_env")"
      tb_cdev="$(sed -n 's/^KRUL_TB_COMPUTE_DEV=//p' <<<"$tb_env")"
      delay_ms="$(sed -n 's/^KRUL_TB_DELAY_MS=//p' <<<"$tb_env")"
      kv_host="$tb_saddr"
      # UCX over TCP on the veth: its shared-memory transports would bypass
      # the link (both namespaces share this machine's memory).
      kv_prefix=(ip netns exec "$tb_s" env UCX_TLS=tcp "UCX_NET_DEVICES=$tb_sdev")
      worker_prefix=(ip netns exec "$tb_c" env UCX_TLS=tcp "UCX_NET_DEVICES=$tb_cdev")
      # Plaintext gRPC on the namespaces' private addresses.
      worker_link_args=(--insecure)
      link_desc="kernel-enforced: veth $tb_cdev -> $tb_sdev between network namespaces $tb_c and"
      link_desc+=" $tb_s, tc tbf $rate, one-way delay ${delay_ms} ms"
      if [[ "${KRUL_DEMO_DELAY_MS:-0}" != 0 && "$delay_ms" == 0 ]]; then
        link_desc+=" (${KRUL_DEMO_DELAY_MS} ms asked, NOT applied: no tc netem in this kernel)"
      fi
      link_desc+="; KV over UCX (TCP)"
      ;;
    emulated)
      emulated=true
      worker_link_args=(--emulate_link_gbit_per_s "$gbit" --emulate_link_latency "${delay_ms}ms")
      link_desc="EMULATED: 127.0.0.1, each worker paces its loads to $rate + ${delay_ms} ms by a"
      link_desc+=" sleep (no kernel-enforced link here); KV over UCX (shared memory)"
      ;;
    loopback)
      delay_ms=0
      link_desc="none: 127.0.0.1, loads as fast as loopback allows (KRUL_DEMO_LINK=loopback)"
      ;;
  esac
  note "link: $link_desc"

  local kv_args=(--host "$kv_host" --port 0 --metrics_port -1 --ucx
                 --rocksdb_path "$cluster_dir/kvstore-db")
  # Plaintext gRPC on the storage namespace's private address.
  [[ "$link_mode" == testbed ]] && kv_args+=(--insecure)
  "${kv_prefix[@]}" "$bin_dir/krul-kvstore" "${kv_args[@]}" \
    >"$cluster_dir/kvstore.out" 2>"$cluster_dir/kvstore.log" &
  cluster_pids+=($!)
  local kv_port
  kv_port="$(wait_listening "$cluster_dir/kvstore.out" "${cluster_pids[0]}")"
  local storage_node="" compute_node=""
  if [[ "$link_mode" == testbed ]]; then
    storage_node="storage node, " compute_node=" (compute node)"
  fi
  note "kvstore on $kv_host:$kv_port (${storage_node}RocksDB in $cluster_dir/kvstore-db)"

  local workers=() w port
  for w in 1 2; do
    "${worker_prefix[@]}" "$bin_dir/krul-worker" "${model_args[@]}" --host 127.0.0.1 \
      --http_port 0 --threads 1 --kvstore "$kv_host:$kv_port" "${worker_link_args[@]}" \
      >"$cluster_dir/worker$w.out" 2>"$cluster_dir/worker$w.log" &
    cluster_pids+=($!)
    port="$(wait_listening "$cluster_dir/worker$w.out" "$!")"
    note "worker $w on 127.0.0.1:$port$compute_node: $(grep -m1 -o 'cost model: .*' \
      "$cluster_dir/worker$w.log" || true)"
    workers+=("127.0.0.1:$port")
  done

  local workers_csv json_out="$cluster_dir/replay.json"
  workers_csv="$(IFS=,; echo "${workers[*]}")"
  if [[ -n "${KRUL_DEMO_OUT:-}" ]]; then
    mkdir -p "$KRUL_DEMO_OUT"
    json_out="$(cd "$KRUL_DEMO_OUT" && pwd)/replay.json"
  fi
  local link_json_args=()
  if [[ "$link_mode" != loopback ]]; then
    link_json_args=(--link_gbit_per_s "$gbit" --link_delay_ms "$delay_ms"
                    "--link_emulated=$emulated" --link_kind "$link_desc")
  fi
  # --settle: each turn's persist lands before the next request, so a
  # restore has the link to itself (a lightly loaded service).
  run "${worker_prefix[@]}" "$bin_dir/krul-replay" --workers "$workers_csv" --settle \
    "${conversation_args[@]}" "${replay_args[@]}" "${link_json_args[@]}" --json_out "$json_out"
  note "link: $link_desc"
  [[ -n "${KRUL_DEMO_OUT:-}" ]] && note "results: $json_out"

  step "stopping the cluster"
  stop_cluster
  trap - EXIT
  note "kvstore and both workers stopped cleanly${tb_env:+; testbed removed}"
}

main() {
  prepare
  local steps=" ${KRUL_DEMO_STEPS:-generate cluster} "
  [[ "$steps" == *" generate "* ]] && demo_generate
  [[ "$steps" == *" cluster "* ]] && demo_cluster
  step "done"
}

main "$@"
