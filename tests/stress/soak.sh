#!/usr/bin/env bash
# Saturation soak: one krul-kvstore and one krul-worker on 127.0.0.1, driven
# by krul-loadtest at a constant rate above the worker's measured capacity
# for --duration seconds, while --slow_connections clients trickle request
# headers at one byte a second and /healthz is probed every 2 s. Checks:
#   - every failed request is an explicit overload answer (HTTP 429; the
#     worker maps the kvstore's RESOURCE_EXHAUSTED to it); any other error
#     kind (5xx, timeout, connection, broken stream) fails the soak;
#   - /healthz answers every probe within 5 s;
#   - the resident memory (VmRSS) of both services, sampled every 2 s, stays
#     bounded: the kvstore's under the sizing rule of docs/operations.md
#     ("Memory": 0.9 x DRAM cap + 2 x 32 MiB memtables + 50 MiB, plus 25%),
#     the worker's under --max_rss_mb, and neither grows by more than 25% +
#     32 MiB from the minute before the soak's midpoint to its last minute;
#   - with a sanitizer build (--build of a -DKRUL_SANITIZE=address build),
#     both services stop cleanly on SIGTERM with no AddressSanitizer or
#     LeakSanitizer report in their stderr.
#
# Usage: tests/stress/soak.sh [--build DIR] [--duration S] [--overload X]
#                             [--slow_connections N] [--max_rss_mb M] [--out DIR]
#   --build DIR         krul-kvstore, krul-worker, krul-loadtest built there (default build)
#   --duration S        seconds above capacity (default 600)
#   --overload X        offered rate = X times the measured capacity (default 3)
#   --capacity_s S      seconds of the closed-loop capacity measurement (default 30)
#   --slow_connections  slow HTTP clients held open during the soak (default 20)
#   --dram_mb M         the kvstore's --dram_capacity in MiB (default 256)
#   --max_rss_mb M      RSS bound of the worker (default 1024)
#   --loadtest BIN      the krul-loadtest to drive it with (default DIR/bin/krul-loadtest;
#                       e.g. a Release one when --build is a sanitizer build)
#   --out DIR           keep logs, samples and the load tester's reports there
#                       (default: a temp dir, removed at exit)
# The worker serves krul12L (KRUL_DATA_DIR or ../shared/data, models/) when
# present, else a seeded synthetic model. Conversations are generated here.
# Exit status: 0 when every check held, 1 otherwise, 2 on a setup error.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$repo_root/build" duration=600 overload=3 capacity_s=30 slow=20 max_rss_mb=1024 out=""
dram_mb=256 loadtest=""
while (($#)); do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --overload) overload="$2"; shift 2 ;;
    --capacity_s) capacity_s="$2"; shift 2 ;;
    --slow_connections) slow="$2"; shift 2 ;;
    --max_rss_mb) max_rss_mb="$2"; shift 2 ;;
    --dram_mb) dram_mb="$2"; shift 2 ;;
    --loadtest) loadtest="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "soak: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin="$build/bin"
loadtest="${loadtest:-$bin/krul-loadtest}"
for b in "$bin/krul-kvstore" "$bin/krul-worker" "$loadtest"; do
  if [[ ! -x "$b" ]]; then
    echo "soak: $b is not built (cmake --build $build --target $(basename "$b"))" >&2
    exit 2
  fi
done

keep=1
if [[ -z "$out" ]]; then
  out="$(mktemp -d -t krul-soak.XXXXXX)"
  keep=0
fi
mkdir -p "$out"
pids=()        # helpers (sampler, prober, slow clients, load tester)
kv_pid="" worker_pid=""
# Stops a process tree we started: children first.
kill_tree() {
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$c"; done
  kill "$1" 2>/dev/null || true
}
# SIGTERM, then up to 60 s for a clean exit (a sanitizer build writes its leak
# report then), then SIGKILL; sets stopped_status to the exit status, or
# "killed". (Not through $(...): a subshell cannot wait for our children.)
stopped_status=""
# Running and not yet a zombie (kill -0 succeeds on an unreaped zombie).
alive() {
  local st
  st="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ "$st" != Z* ]]
}
stop_service() {
  local pid="$1" i
  stopped_status=gone
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 600; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    stopped_status=killed
    return 0
  fi
  stopped_status=0
  wait "$pid" 2>/dev/null || stopped_status=$?
}
cleanup() {
  local p
  for p in "${pids[@]}"; do kill_tree "$p"; done
  if [[ -n "$worker_pid" ]]; then kill -KILL "$worker_pid" 2>/dev/null || true; fi
  if [[ -n "$kv_pid" ]]; then kill -KILL "$kv_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if ((keep == 0)); then rm -rf "$out"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The port from a service's "... listening on HOST:PORT" line on stdout.
wait_port() {
  local file="$1" marker="$2" pid="$3" i line
  for ((i = 0; i < 1800; i++)); do
    line="$(grep -m1 "$marker" "$file" 2>/dev/null || true)"
    if [[ -n "$line" ]]; then
      sed -E 's/.*listening on [^ ]*:([0-9]+).*/\1/' <<<"$line"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "soak: no '$marker' line; the end of its log:" >&2
  tail -20 "${file%.out}.err" >&2
  return 1
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---- services --------------------------------------------------------------
data_dir="${KRUL_DATA_DIR:-$repo_root/../shared/data}"
if [[ -f "$data_dir/models/krul12L.bin" && -f "$data_dir/models/tok512.bin" ]]; then
  model_args=(--model "$data_dir/models/krul12L.bin" --tokenizer "$data_dir/models/tok512.bin")
  model_name="krul12L"
else
  model_args=(--synthetic)
  model_name="synthetic (no $data_dir/models/krul12L.bin)"
fi
"$bin/krul-kvstore" --host 127.0.0.1 --port 0 --metrics_port 0 --rocksdb_path "$out/kvstore-db" \
  --dram_capacity "${dram_mb}M" >"$out/kvstore.out" 2>"$out/kvstore.err" &
kv_pid=$!
kv_port="$(wait_port "$out/kvstore.out" "krul-kvstore listening on" "$kv_pid")" || exit 2
kv_metrics="$(grep -m1 -oE 'metrics_port [0-9]+' "$out/kvstore.out" | grep -oE '[0-9]+$')"
# One engine, a queue of 8: a small capacity that the soak can exceed with
# few clients. Persists to the kvstore are what a real worker does.
"$bin/krul-worker" "${model_args[@]}" --host 127.0.0.1 --http_port 0 --threads 1 \
  --max_active 1 --max_queue 8 --kvstore "127.0.0.1:$kv_port" \
  >"$out/worker.out" 2>"$out/worker.err" &
worker_pid=$!
w_port="$(wait_port "$out/worker.out" "krul-worker listening on" "$worker_pid")" || exit 2
endpoint="127.0.0.1:$w_port"
echo "soak: kvstore pid $kv_pid on 127.0.0.1:$kv_port, worker pid $worker_pid on $endpoint" \
  "($model_name); logs in $out"
sleep 5  # not a wait on a condition: the idle RSS is read after start-up settles
idle_kv_kb="$(rss_kb "$kv_pid")" idle_w_kb="$(rss_kb "$worker_pid")"

# ---- conversations -----------------------------------------------------------
# ShareGPT-style file: three short human turns per conversation, in words
# krul12L knows; ids differ, so no two conversations share a cache.
make_conversations() {
  awk -v n="$1" -v seed="$2" 'BEGIN {
    srand(seed);
    split("cat dog bird fish girl boy king queen frog bear", who, " ");
    split("ball tree house boat cake flower box hat book star", what, " ");
    split("happy sad big small red blue kind funny brave little", how, " ");
    printf "[";
    for (i = 0; i < n; i++) {
      printf "%s{\"id\":\"soak-%d\",\"conversations\":[", (i ? "," : ""), i;
      for (t = 0; t < 3; t++) {
        a = who[int(rand() * 10) + 1]; b = what[int(rand() * 10) + 1]; c = how[int(rand() * 10) + 1];
        printf "%s{\"from\":\"human\",\"value\":\"Tell me a story about a %s %s and a %s.\"}",
          (t ? ",{\"from\":\"gpt\",\"value\":\"Once upon a time.\"}," : ""), c, a, b;
      }
      printf "]}";
    }
    printf "]\n";
  }'
}

# The "all" row of krul-loadtest's table: requests per second (column 9).
all_rate() { awk '$1 == "all" {print $9}' "$1"; }
loadtest_common=(--endpoints "$endpoint" --kvstore_metrics "127.0.0.1:$kv_metrics"
                 --output_tokens 16 --max_context_tokens 256 --request_timeout_s 60
                 --plots=false --progress lines)

# ---- capacity: closed loop within the queue (no 429 expected) -------------------
make_conversations 2000 1 >"$out/capacity.json"
"$loadtest" --trace "$out/capacity.json" "${loadtest_common[@]}" --load closed \
  --concurrency 4 --duration_s "$capacity_s" --out "$out/capacity" >"$out/capacity.log" 2>&1 || {
  echo "soak: the capacity run failed:" >&2
  tail -20 "$out/capacity.log" >&2
  exit 2
}
capacity="$(all_rate "$out/capacity.log")"
rate="$(awk -v c="$capacity" -v x="$overload" 'BEGIN {printf "%.2f", c * x}')"
echo "soak: capacity $capacity req/s (closed loop, 4 users, ${capacity_s}s); offering $rate" \
  "conversations/s (${overload}x) for ${duration}s"

# ---- soak --------------------------------------------------------------------
n_conv="$(awk -v r="$rate" -v d="$duration" 'BEGIN {printf "%d", r * d * 1.2 + 100}')"
make_conversations "$n_conv" 2 >"$out/soak.json"

# Every 2 s: seconds since start, kvstore and worker RSS (kB), and the
# client connections the worker holds open (ss, iproute2).
(
  t0=$(date +%s)
  while kill -0 "$kv_pid" 2>/dev/null && kill -0 "$worker_pid" 2>/dev/null; do
    conns="$(ss -Htn state established "( sport = :$w_port )" 2>/dev/null | wc -l)"
    echo "$(($(date +%s) - t0)) $(rss_kb "$kv_pid") $(rss_kb "$worker_pid") $conns"
    sleep 2
  done
) >"$out/rss.txt" &
pids+=("$!")
# /healthz every 2 s with a 5 s limit: "ok" or "FAIL" per probe.
(
  while sleep 2; do
    if timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$w_port &&
        printf 'GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n' >&3 && head -1 <&3" 2>/dev/null |
        grep -q ' 200'; then
      echo ok
    else
      echo FAIL
    fi
  done
) >"$out/healthz.txt" &
pids+=("$!")
# Slow clients: a request line, then one header byte a second; reconnect when
# the worker closes the connection (its read timeout).
for ((i = 0; i < slow; i++)); do
  (
    trap '' PIPE  # a write to a closed connection fails instead of killing us
    while true; do
      exec 3<>"/dev/tcp/127.0.0.1/$w_port" || { sleep 1; continue; }
      printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n' >&3 2>/dev/null || true
      while printf 'X' >&3 2>/dev/null; do sleep 1; done
      exec 3>&-
    done
  ) 2>/dev/null &
  pids+=("$!")
done

"$loadtest" --trace "$out/soak.json" "${loadtest_common[@]}" --load poisson \
  --rate "$rate" --max_inflight 64 --duration_s "$duration" --out "$out/soak" \
  >"$out/soak.log" 2>&1 &
lt_pid=$!
pids+=("$lt_pid")
lt_status=0
wait "$lt_pid" || lt_status=$?
# Idle again: the services should give memory back (or at least not grow).
sleep 20
end_kv_kb="$(rss_kb "$kv_pid")" end_w_kb="$(rss_kb "$worker_pid")"
for p in "${pids[@]}"; do kill_tree "$p"; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()

# ---- stop and judge ------------------------------------------------------------
stop_service "$worker_pid"
w_exit="$stopped_status" worker_pid=""
stop_service "$kv_pid"
kv_exit="$stopped_status" kv_pid=""

fail=0
csv="$out/soak/requests.csv"
if [[ ! -f "$csv" ]]; then
  echo "soak: no requests.csv (krul-loadtest exit $lt_status):" >&2
  tail -20 "$out/soak.log" >&2
  exit 2
fi
# http_status is column 16 and error_kind column 17 of requests.csv; the
# fields before them hold no commas here (generated ids, loopback endpoint).
read -r sent ok n429 other <<<"$(awk -F, 'NR > 1 {
    n++; if ($17 == "") ok++; else if ($16 == 429) e429++; else other++ }
    END {printf "%d %d %d %d", n, ok, e429, other}' "$csv")"
other_kinds="$(awk -F, 'NR > 1 && $17 != "" && $16 != 429 {print $17 "/" $16}' "$csv" |
  sort | uniq -c | tr '\n' ' ')"
probes="$(wc -l <"$out/healthz.txt")"
probe_fail="$(grep -c FAIL "$out/healthz.txt" || true)"
# RSS: peak of each, and the max of the minute before the midpoint vs the
# last minute (the DRAM tier fills in the first minutes: growth then is not
# a leak).
read -r peak_kv peak_w <<<"$(awk '{if ($2 > a) a = $2; if ($3 > b) b = $3}
  END {printf "%d %d", a / 1024, b / 1024}' "$out/rss.txt")"
last_t="$(tail -1 "$out/rss.txt" | awk '{print $1}')"
read -r m2_kv m2_w last_kv last_w <<<"$(awk -v end="$last_t" '
  $1 >= end / 2 - 60 && $1 < end / 2 {if ($2 > a) a = $2; if ($3 > b) b = $3}
  $1 >= end - 60 {if ($2 > c) c = $2; if ($3 > d) d = $3}
  END {printf "%d %d %d %d", a / 1024, b / 1024, c / 1024, d / 1024}' "$out/rss.txt")"
sanitizer="$(grep -hE 'ERROR: (AddressSanitizer|LeakSanitizer)|SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)' \
  "$out/kvstore.err" "$out/worker.err" || true)"

echo "soak: krul-loadtest (exit $lt_status):"
grep -E '^(requests:|group|all |kvstore:|workers:)' "$out/soak.log" | sed 's/^/  /'
echo "soak: requests sent $sent, ok $ok, HTTP 429 $n429, other errors $other ${other_kinds:+($other_kinds)}"
read -r conn_min conn_max <<<"$(awk 'NR > 5 {if (min == "" || $4 < min) min = $4; if ($4 > max) max = $4}
  END {printf "%d %d", min, max}' "$out/rss.txt")"
echo "soak: /healthz probes $probes, failed $probe_fail (with $slow slow connections; the worker" \
  "held $conn_min-$conn_max client connections)"
echo "soak: RSS MB  kvstore: idle $((idle_kv_kb / 1024)), peak $peak_kv, mid-soak minute max $m2_kv," \
  "last minute max $last_kv, idle after $((end_kv_kb / 1024))"
echo "soak: RSS MB  worker:  idle $((idle_w_kb / 1024)), peak $peak_w, mid-soak minute max $m2_w," \
  "last minute max $last_w, idle after $((end_w_kb / 1024))"
echo "soak: exit on SIGTERM: worker $w_exit, kvstore $kv_exit"
((other == 0)) || { echo "soak: FAIL: errors other than 429"; fail=1; }
((n429 > 0)) || { echo "soak: FAIL: no 429 at all: the load was not above capacity"; fail=1; }
((probe_fail == 0 && probes > 0)) || { echo "soak: FAIL: /healthz did not always answer"; fail=1; }
sanitized=0
grep -q '^KRUL_SANITIZE:STRING=address' "$build/CMakeCache.txt" 2>/dev/null && sanitized=1
if ((sanitized)); then
  # ASan's shadow memory and its quarantine of freed blocks (256 MiB by
  # default) make RSS say nothing about the product's own memory.
  echo "soak: RSS not judged in an AddressSanitizer build (shadow memory, quarantine)"
else
  kv_bound="$(awk -v d="$dram_mb" 'BEGIN {printf "%d", (0.9 * d + 64 + 50) * 1.25}')"
  echo "soak: RSS bounds: kvstore $kv_bound MB (sizing rule for a ${dram_mb} MiB cap), worker $max_rss_mb MB"
  ((peak_kv <= kv_bound)) || { echo "soak: FAIL: kvstore RSS above $kv_bound MB"; fail=1; }
  ((peak_w <= max_rss_mb)) || { echo "soak: FAIL: worker RSS above $max_rss_mb MB"; fail=1; }
  # Growth: the last minute may exceed the mid-soak minute by at most 25% + 32 MB.
  for pair in "kvstore $m2_kv $last_kv" "worker $m2_w $last_w"; do
    read -r name a b <<<"$pair"
    if ((a > 0 && b > a + a / 4 + 32)); then
      echo "soak: FAIL: $name RSS grew from $a MB (mid-soak minute) to $b MB (last minute)"
      fail=1
    fi
  done
fi
[[ "$w_exit" == 0 && "$kv_exit" == 0 ]] || { echo "soak: FAIL: unclean exit"; fail=1; }
if [[ -n "$sanitizer" ]]; then
  echo "soak: FAIL: sanitizer reports (see $out/*.err):"
  echo "$sanitizer" | sed 's/^/  /'
  fail=1
  keep=1
elif ((sanitized)); then
  echo "soak: ASan build: no AddressSanitizer / LeakSanitizer report in the services' stderr"
fi
if ((fail == 0)); then echo "soak: PASS"; else keep=1; fi
exit "$fail"
