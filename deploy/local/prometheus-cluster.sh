#!/usr/bin/env bash
# A Krul cluster with monitoring on this machine, for people without Kubernetes: kvstore
# shards and workers on loopback plus a real Prometheus (Debian's `prometheus` package,
# installed by scripts/install-deps.sh) that scrapes them every second with the rules of
# deploy/prometheus/rules loaded. Everything listens on 127.0.0.1 only.
#
# Usage:
#   deploy/local/prometheus-cluster.sh [options]     start; returns once all targets are up
#   deploy/local/prometheus-cluster.sh --down [--state DIR]
#
# Options:
#   --state DIR            pids, logs, data, prometheus.yml and cluster.env
#                          (default: ${TMPDIR:-/tmp}/krul-prometheus-cluster)
#   --bin DIR              folder with krul-kvstore and krul-worker (default: build/bin)
#   --kvstores N           kvstore shards (default 2)
#   --workers N            workers (default 2)
#   --dram-capacity SIZE   each shard's --dram_capacity (default 64M; K/M/G/T = 1024^n)
#   --max-queue N          each worker's --max_queue (default 8)
#   --ttft-slo SECONDS     the TTFT p99 SLO the alerts use (default 2)
#   --scrape-interval DUR  Prometheus scrape and rule evaluation interval (default 1s)
#   --prometheus-port N    Prometheus port (default 0: any free port)
#   --worker-arg ARG       extra krul-worker flag, repeatable (default model: --synthetic;
#                          e.g. --worker-arg=--model=m.bin --worker-arg=--tokenizer=t.bin)
#   --kvstore-arg ARG      extra krul-kvstore flag, repeatable
#   --watch-pid PID        stop the cluster when process PID exits (tests pass their own)
#   --ttl SECONDS          stop the cluster after this long (default 0: never)
#   --foreground           stay in the foreground; Ctrl-C stops the cluster
#
# On success it prints the addresses and writes them to STATE/cluster.env:
#   KRUL_PROMETHEUS_URL, KRUL_WORKERS, KRUL_KVSTORES, KRUL_KVSTORE_METRICS (comma-separated
#   host:port lists), KRUL_NAMESPACE (the namespace label every series carries).
# Anything that fails during start stops what was already started.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
# shellcheck source=deploy/local/lib/http.sh
source "$here/lib/http.sh"

state="${TMPDIR:-/tmp}/krul-prometheus-cluster"
bin="$repo_root/build/bin"
n_kvstores=2
n_workers=2
dram_capacity=64M
max_queue=8
ttft_slo=2
scrape_interval=1s
prometheus_port=0
worker_args=()
kvstore_args=()
watch_pid=""
ttl=0
foreground=0
down=0
namespace=krul-local

die() { echo "prometheus-cluster: error: $*" >&2; exit 1; }
log() { echo "prometheus-cluster: $*" >&2; }
need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

while (($#)); do
  case "$1" in
    --state) need_value "$@"; state=$2; shift ;;
    --state=*) state=${1#*=} ;;
    --bin) need_value "$@"; bin=$2; shift ;;
    --bin=*) bin=${1#*=} ;;
    --kvstores) need_value "$@"; n_kvstores=$2; shift ;;
    --kvstores=*) n_kvstores=${1#*=} ;;
    --workers) need_value "$@"; n_workers=$2; shift ;;
    --workers=*) n_workers=${1#*=} ;;
    --dram-capacity) need_value "$@"; dram_capacity=$2; shift ;;
    --dram-capacity=*) dram_capacity=${1#*=} ;;
    --max-queue) need_value "$@"; max_queue=$2; shift ;;
    --max-queue=*) max_queue=${1#*=} ;;
    --ttft-slo) need_value "$@"; ttft_slo=$2; shift ;;
    --ttft-slo=*) ttft_slo=${1#*=} ;;
    --scrape-interval) need_value "$@"; scrape_interval=$2; shift ;;
    --scrape-interval=*) scrape_interval=${1#*=} ;;
    --prometheus-port) need_value "$@"; prometheus_port=$2; shift ;;
    --prometheus-port=*) prometheus_port=${1#*=} ;;
    --worker-arg) need_value "$@"; worker_args+=("$2"); shift ;;
    --worker-arg=*) worker_args+=("${1#*=}") ;;
    --kvstore-arg) need_value "$@"; kvstore_args+=("$2"); shift ;;
    --kvstore-arg=*) kvstore_args+=("${1#*=}") ;;
    --watch-pid) need_value "$@"; watch_pid=$2; shift ;;
    --watch-pid=*) watch_pid=${1#*=} ;;
    --ttl) need_value "$@"; ttl=$2; shift ;;
    --ttl=*) ttl=${1#*=} ;;
    --foreground) foreground=1 ;;
    --down) down=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

marker="$state/.krul-prometheus-cluster"

# ---- stop -----------------------------------------------------------------------------
# Stops the processes this script started (their pids are in STATE/pids/), SIGTERM first
# so the kvstore and the workers shut down cleanly, then removes STATE. Only a folder that
# this script made (it holds the marker file) is ever removed.
stop_cluster() {
  [[ -f "$marker" ]] || return 0
  local f pid
  local pids=()
  for f in "$state"/pids/*.pid; do
    [[ -f "$f" ]] || continue
    pid=$(<"$f")
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && { kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); }
  done
  local deadline=$((SECONDS + 15))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -rf "$state"
}

if ((down)); then
  if [[ ! -e "$state" ]]; then log "nothing running in $state"; exit 0; fi
  [[ -f "$marker" ]] || die "$state was not made by this script; not touching it"
  stop_cluster
  log "stopped; removed $state"
  exit 0
fi

# ---- checks -----------------------------------------------------------------------------
[[ $n_kvstores =~ ^[1-9][0-9]*$ ]] || die "--kvstores must be a positive integer"
[[ $n_workers =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer"
[[ $max_queue =~ ^[0-9]+$ ]] || die "--max-queue must be a non-negative integer"
[[ $ttft_slo =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--ttft-slo must be a number of seconds"
[[ $prometheus_port =~ ^[0-9]+$ ]] || die "--prometheus-port must be a port number"
[[ $ttl =~ ^[0-9]+$ ]] || die "--ttl must be a number of seconds"
[[ -z $watch_pid || $watch_pid =~ ^[0-9]+$ ]] || die "--watch-pid must be a process id"
for b in krul-kvstore krul-worker; do
  [[ -x "$bin/$b" ]] || die "$bin/$b not found: build it (scripts/build.sh) or pass --bin DIR"
done
prometheus_bin=$(command -v prometheus) \
  || die "prometheus not found: scripts/install-deps.sh installs Debian's prometheus package"

# --dram-capacity in bytes, read as the kvstore reads it (K/M/G/T are powers of 1024).
to_bytes() {
  local v=${1%[iI][bB]} scale=1
  v=${v%[bB]}
  case "$v" in
    *[kK]) scale=$((1 << 10)); v=${v%?} ;;
    *[mM]) scale=$((1 << 20)); v=${v%?} ;;
    *[gG]) scale=$((1 << 30)); v=${v%?} ;;
    *[tT]) scale=$((1 << 40)); v=${v%?} ;;
  esac
  [[ $v =~ ^[0-9]+$ ]] || return 1
  echo $((v * scale))
}
dram_bytes=$(to_bytes "$dram_capacity") || die "--dram-capacity '$dram_capacity' is not a size like 64M"

if [[ -e "$state" ]]; then
  [[ -f "$marker" ]] || die "$state exists and was not made by this script; pick another --state"
  for f in "$state"/pids/*.pid; do
    [[ -f "$f" ]] && kill -0 "$(<"$f")" 2>/dev/null && die "a cluster already runs in $state (stop it with --down)"
  done
  rm -rf "$state"
fi
mkdir -p "$state/pids" "$state/logs"
touch "$marker"
state="$(cd "$state" && pwd)"
marker="$state/.krul-prometheus-cluster"

# From here on, a failure stops what was started.
trap 'rc=$?; if ((rc != 0)); then log "start failed; stopping what was started (logs were in $state/logs)"; tail -n 20 "$state"/logs/*.log >&2 2>/dev/null || true; stop_cluster; fi' EXIT

# start NAME COMMAND...: runs COMMAND in its own session (so it survives this script and
# a Ctrl-C in the caller's terminal), output in logs/NAME.log, pid in pids/NAME.pid.
start() {
  local name=$1
  shift
  setsid "$@" >"$state/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$state/pids/$name.pid"
}

# first_match FILE REGEX: the first capture group of the first line of FILE matching REGEX.
first_match() {
  local line
  [[ -f $1 ]] || return 1
  while IFS= read -r line; do
    if [[ $line =~ $2 ]]; then echo "${BASH_REMATCH[1]}"; return 0; fi
  done <"$1"
  return 1
}
alive() { kill -0 "$(<"$state/pids/$1.pid")" 2>/dev/null; }
# wait_line NAME REGEX: waits (30 s at most) until the service's log has a matching line.
wait_line() {
  local name=$1 re=$2 deadline=$((SECONDS + 30))
  until first_match "$state/logs/$name.log" "$re" >/dev/null; do
    alive "$name" || die "$name exited during start-up"
    ((SECONDS < deadline)) || die "$name did not start within 30 s"
    sleep 0.1
  done
  first_match "$state/logs/$name.log" "$re"
}

# ---- kvstore shards ---------------------------------------------------------------------
kv_addrs=()
kv_metrics=()
for ((i = 0; i < n_kvstores; i++)); do
  start "kvstore-$i" "$bin/krul-kvstore" --host=127.0.0.1 --port=0 --metrics_port=0 \
    --rocksdb_path="$state/data/kvstore-$i" --dram_capacity="$dram_capacity" "${kvstore_args[@]}"
done
for ((i = 0; i < n_kvstores; i++)); do
  line=$(wait_line "kvstore-$i" '(listening on .* metrics_port [0-9]+)')
  [[ $line =~ listening\ on\ ([^ ]+)\ metrics_port\ ([0-9]+) ]] || die "kvstore-$i: unexpected start line '$line'"
  kv_addrs+=("${BASH_REMATCH[1]}")
  kv_metrics+=("127.0.0.1:${BASH_REMATCH[2]}")
done
kv_list=$(IFS=,; echo "${kv_addrs[*]}")

# ---- workers ----------------------------------------------------------------------------
has_model=0
for a in "${worker_args[@]}"; do
  [[ $a == --model=* || $a == --synthetic* ]] && has_model=1
done
((has_model)) || worker_args=(--synthetic "${worker_args[@]}")
w_addrs=()
for ((i = 0; i < n_workers; i++)); do
  start "worker-$i" "$bin/krul-worker" --host=127.0.0.1 --http_port=0 --kvstore="$kv_list" \
    --max_queue="$max_queue" "${worker_args[@]}"
done
for ((i = 0; i < n_workers; i++)); do
  w_addrs+=("$(wait_line "worker-$i" 'krul-worker listening on ([^ ]+)$')")
done
for ((i = 0; i < n_workers; i++)); do
  wait_until 60 "worker-$i /readyz" http_get "http://${w_addrs[i]}/readyz" || die "worker-$i is not ready"
done
w_list=$(IFS=,; echo "${w_addrs[*]}")

# ---- Prometheus -------------------------------------------------------------------------
# The deployment's config rules (docs/deploy.md, "Alert thresholds"): what one shard holds
# (the DRAM tier's --dram_capacity; the disk the RocksDB folders are on), --max_queue and
# the TTFT SLO, as constant series the alerts compare against.
disk_bytes=$(df -B1 --output=size "$state" | tail -n 1 | tr -d ' ')
cat >"$state/krul-config.yaml" <<EOF
# Written by deploy/local/prometheus-cluster.sh (see deploy/prometheus/rules/krul-config.example.yaml).
groups:
  - name: krul-config
    rules:
      - record: krul:kvstore_capacity_bytes:config
        expr: vector($dram_bytes)
        labels: {namespace: $namespace, tier: dram}
      - record: krul:kvstore_capacity_bytes:config
        expr: vector($disk_bytes)
        labels: {namespace: $namespace, tier: rocksdb}
      - record: krul:worker_max_queue:config
        expr: vector($max_queue)
        labels: {namespace: $namespace}
      - record: krul:worker_ttft_slo_seconds:config
        expr: vector($ttft_slo)
        labels: {namespace: $namespace}
EOF

targets() { local t out=""; for t in "$@"; do out+="${out:+, }'$t'"; done; echo "[$out]"; }
{
  echo "# Written by deploy/local/prometheus-cluster.sh."
  echo "global:"
  echo "  scrape_interval: $scrape_interval"
  echo "  scrape_timeout: $scrape_interval"
  echo "  evaluation_interval: $scrape_interval"
  echo "rule_files:"
  for f in "$repo_root"/deploy/prometheus/rules/krul-recording.yaml \
           "$repo_root"/deploy/prometheus/rules/krul-alerts.yaml "$state/krul-config.yaml"; do
    echo "  - '$f'"
  done
  echo "scrape_configs:"
  echo "  - job_name: krul-kvstore"
  echo "    static_configs:"
  echo "      - targets: $(targets "${kv_metrics[@]}")"
  echo "        labels: {namespace: $namespace}"
  echo "  - job_name: krul-worker"
  echo "    static_configs:"
  echo "      - targets: $(targets "${w_addrs[@]}")"
  echo "        labels: {namespace: $namespace}"
} >"$state/prometheus.yml"

start prometheus "$prometheus_bin" --config.file="$state/prometheus.yml" \
  --storage.tsdb.path="$state/data/prometheus" --storage.tsdb.retention.time=1d \
  --web.listen-address="127.0.0.1:$prometheus_port" --log.level=info
prom_addr=$(wait_line prometheus 'msg="Listening on" address=([0-9.]+:[0-9]+)')
prom_url="http://$prom_addr"
wait_until 30 "Prometheus /-/ready" http_get "$prom_url/-/ready" || die "Prometheus is not ready"

# Every target scraped successfully at least once.
n_targets=$((n_kvstores + n_workers))
targets_up() {
  local body
  body=$(http_get "$prom_url/api/v1/targets?state=active") || return 1
  [[ $(grep -o '"health":"up"' <<<"$body" | wc -l) -eq $n_targets ]]
}
wait_until 30 "all $n_targets targets to be up in Prometheus" targets_up || die "not every target is up"

cat >"$state/cluster.env" <<EOF
KRUL_PROMETHEUS_URL=$prom_url
KRUL_WORKERS=$w_list
KRUL_KVSTORES=$kv_list
KRUL_KVSTORE_METRICS=$(IFS=,; echo "${kv_metrics[*]}")
KRUL_NAMESPACE=$namespace
EOF

# ---- lifetime guard ---------------------------------------------------------------------
# With --watch-pid or --ttl, a small watcher in its own session stops the cluster when the
# watched process is gone or the time is up, so a crashed test leaves nothing behind.
if [[ -n $watch_pid || $ttl -gt 0 ]]; then
  # shellcheck disable=SC2016  # the watcher's own script, expanded by the bash it runs in
  start watcher bash -c '
    watch=$1 ttl=$2 script=$3 state=$4
    end=$((SECONDS + (ttl > 0 ? ttl : 1 << 30)))
    while ((SECONDS < end)); do
      [[ -n $watch ]] && ! kill -0 "$watch" 2>/dev/null && break
      sleep 1
    done
    rm -f "$state/pids/watcher.pid"
    exec "$script" --down --state "$state"' watcher "$watch_pid" "$ttl" "${BASH_SOURCE[0]}" "$state"
fi
trap - EXIT

cat <<EOF
Prometheus:  $prom_url  (rules: $prom_url/rules, alerts: $prom_url/alerts)
workers:     $w_list  (OpenAI API: POST http://${w_addrs[0]}/v1/chat/completions)
kvstores:    $kv_list  (metrics: $(IFS=,; echo "${kv_metrics[*]}"))
state:       $state  (logs in logs/, addresses in cluster.env)
stop with:   $0 --down --state $state
EOF

if ((foreground)); then
  trap 'log "stopping"; stop_cluster; exit 0' INT TERM
  log "running in the foreground; Ctrl-C stops the cluster"
  while alive prometheus; do sleep 1; done
  log "Prometheus exited; stopping the cluster"
  stop_cluster
fi
