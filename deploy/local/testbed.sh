#!/usr/bin/env bash
# A disaggregated testbed on one machine: a storage node and a compute node as
# two Linux network namespaces joined by a veth pair whose bandwidth is
# enforced by the kernel (tc tbf on both ends), and whose one-way delay is set
# with tc netem where the kernel has it. The kvstore runs in the storage
# namespace, workers in the compute namespace, and every byte of KV between
# them crosses the shaped link (UCX over TCP), as between two hosts.
#
# Usage:
#   deploy/local/testbed.sh up [--name NAME] [--rate RATE] [--delay_ms MS]
#       Creates the namespaces NAME-storage and NAME-compute (NAME defaults
#       to "krultb"), the veth pair and the shaping, and prints shell
#       assignments (KRUL_TB_*) describing them. RATE is a tc rate
#       ("2gbit", "800mbit", "170726kbit"); default 2gbit (scripts/demo.sh
#       sizes it with krul-link-size instead). MS is the one-way delay added
#       on each side (default 0). Needs root.
#   deploy/local/testbed.sh exec-storage NAME CMD...   run CMD on the storage node
#   deploy/local/testbed.sh exec-compute NAME CMD...   run CMD on the compute node
#   deploy/local/testbed.sh down [--name NAME]
#       Removes the testbed NAME, or with no --name every testbed left over
#       from earlier runs (namespaces ending in -storage / -compute whose
#       prefix starts with "krultb"; also those of other runs in progress).
#   deploy/local/testbed.sh check
#       Exits 0 when namespaces can be made here (root, iproute2, veth, tc
#       tbf), else prints why and exits 1. Says whether tc netem (delay) is
#       there.
#
# The link (what `up` sets; KRUL_TB_* report what was applied):
#   rate   tc tbf on both veth ends, with a small burst (max(16 KiB, 0.25 ms
#          of the rate)): a token bucket lets a burst pass at memory speed
#          after idle, and a restore's few hundred KB would otherwise never
#          see the rate.
#   tcp    net.ipv4.tcp_slow_start_after_idle=0 inside both namespaces: a
#          connection keeps its window across the idle gaps between
#          restores (long-lived inter-node connections are tuned so).
#   delay  tc netem on both ends (netem then also carries the rate). Kernels
#          without sch_netem cannot delay: the delay is then NOT applied,
#          `up` says so on stderr and KRUL_TB_DELAY_MS=0 (the requested
#          value is KRUL_TB_DELAY_REQUESTED_MS). Nothing emulates it instead.
#
# Addresses are the project's own, inside the namespaces only:
#   storage 10.231.X.1/24 on NAME-s, compute 10.231.X.2/24 on NAME-c, with X
#   derived from NAME. The veth ends are created directly inside the two
#   namespaces: nothing outside them is touched, and `down` (and the callers'
#   traps) remove everything that `up` made. A failed `up` removes what it
#   made before exiting.
#
# Cross-namespace UCX must be told to use TCP on the veth
# (UCX_TLS=tcp UCX_NET_DEVICES=$KRUL_TB_STORAGE_DEV / $KRUL_TB_COMPUTE_DEV):
# both nodes share this machine's memory, and UCX's shared-memory transports
# would otherwise bypass the link.
set -euo pipefail

die() { echo "testbed: $*" >&2; exit 1; }

check() {
  [[ $(id -u) == 0 ]] || { echo "testbed: not root: network namespaces cannot be made" >&2; return 1; }
  command -v ip >/dev/null || { echo "testbed: iproute2 (ip) is not installed" >&2; return 1; }
  command -v tc >/dev/null || { echo "testbed: tc (iproute2) is not installed" >&2; return 1; }
  local probe="krultbprobe$$"
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "testbed: 'ip netns add' failed (no permission for namespaces here)" >&2
    return 1
  fi
  local ok=0 netem=0
  ip -n "$probe" link add "${probe:0:10}a" type veth peer name "${probe:0:10}b" 2>/dev/null &&
    ip -n "$probe" link set "${probe:0:10}a" up 2>/dev/null &&
    tc -n "$probe" qdisc add dev "${probe:0:10}a" root tbf rate 1gbit burst 64kb latency 20ms \
      2>/dev/null || ok=1
  if netem_available "$probe"; then netem=1; fi
  ip netns del "$probe" 2>/dev/null || true
  if [[ $ok != 0 ]]; then
    echo "testbed: veth pairs or tc tbf are not available in this kernel" >&2
    return 1
  fi
  if [[ $netem == 0 ]]; then
    echo "testbed: note: this kernel has no tc netem: link delay cannot be applied (rate only)" >&2
  fi
  return 0
}

# The third octet of the testbed's subnet, from its name (1..250).
subnet_octet() {
  local sum
  sum=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
  echo $(( sum % 250 + 1 ))
}

netem_available() {
  # Probed on a throwaway dummy device inside namespace $1.
  local ns=$1
  ip -n "$ns" link add krultbnetem type dummy 2>/dev/null || return 1
  local ok=1
  tc -n "$ns" qdisc add dev krultbnetem root netem delay 1ms 2>/dev/null && ok=0
  ip -n "$ns" link del krultbnetem 2>/dev/null || true
  return $ok
}

# A tc rate ("2gbit", "800mbit", "170726kbit", "1000000bit", "1.5gbit") in
# bits per second, or nothing when it does not parse.
rate_bits() {
  awk -v r="$1" 'BEGIN {
    if (match(r, /^[0-9]+([.][0-9]+)?/) == 0) exit 1
    n = substr(r, 1, RLENGTH); u = substr(r, RLENGTH + 1)
    m = (u == "bit") ? 1 : (u == "kbit") ? 1e3 : (u == "mbit") ? 1e6 : (u == "gbit") ? 1e9 : -1
    if (m < 0 || n <= 0) exit 1
    printf "%.0f\n", n * m
  }'
}

# tbf alone shapes the rate; with a delay, netem carries both (netem's own
# rate limiter) when the kernel has it.
shape() {
  local ns=$1 dev=$2 rate=$3 delay_ms=$4 burst=$5
  if [[ $delay_ms != 0 ]]; then
    tc -n "$ns" qdisc add dev "$dev" root netem delay "${delay_ms}ms" rate "$rate" limit 100000
  else
    tc -n "$ns" qdisc add dev "$dev" root tbf rate "$rate" burst "$burst" latency 50ms
  fi
}

remove_testbed() {
  local name=$1 ns
  for ns in "$name-storage" "$name-compute"; do
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$ns" || continue
    # Processes still inside would keep the namespace's devices alive.
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      # shellcheck disable=SC2086  # a list of pids
      kill -TERM $pids 2>/dev/null || true
      sleep 0.5
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns" && echo "testbed: removed namespace $ns" >&2
  done
}

up() {
  local name=krultb rate=2gbit delay_ms=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name) name=$2; shift 2 ;;
      --rate) rate=$2; shift 2 ;;
      --delay_ms) delay_ms=$2; shift 2 ;;
      *) die "unknown argument: $1" ;;
    esac
  done
  [[ $name =~ ^krultb[a-z0-9]{0,6}$ ]] || die "--name must be krultb plus up to 6 [a-z0-9]"
  [[ $delay_ms =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--delay_ms must be a number of milliseconds"
  local bits
  bits=$(rate_bits "$rate") || die "--rate '$rate' is not a tc rate (NUMBER followed by bit, kbit, mbit or gbit)"
  check || exit 1
  local s="$name-storage" c="$name-compute" sdev="${name}-s" cdev="${name}-c"
  local x
  x=$(subnet_octet "$name")
  if ip netns list | awk '{print $1}' | grep -qx -- "$s"; then
    die "testbed $name exists; run: $0 down --name $name"
  fi
  # From here on a failure removes what was made.
  trap 'remove_testbed "$name"' ERR
  ip netns add "$s"
  ip netns add "$c"
  ip link add "$sdev" netns "$s" type veth peer name "$cdev" netns "$c"
  ip -n "$s" addr add "10.231.$x.1/24" dev "$sdev"
  ip -n "$c" addr add "10.231.$x.2/24" dev "$cdev"
  local ns
  for ns in "$s" "$c"; do ip -n "$ns" link set lo up; done
  # IPv4 only: an IPv6 link-local address stays "tentative" (duplicate
  # address detection) for a second or so after the link comes up, and
  # UCX's TCP transport refuses a device in that state (ucp_init: No such
  # device).
  ip netns exec "$s" sh -c "echo 1 > /proc/sys/net/ipv6/conf/$sdev/disable_ipv6" 2>/dev/null || true
  ip netns exec "$c" sh -c "echo 1 > /proc/sys/net/ipv6/conf/$cdev/disable_ipv6" 2>/dev/null || true
  # Long-lived connections between the nodes keep their congestion window
  # across idle gaps (as inter-node links are usually tuned; RDMA has no
  # slow start at all): a restore is a burst after idle, and restarting slow
  # start would charge every restore a few round trips of ramp-up (measured
  # here: 400 KB at 250 Mbit/s in 13 ms instead of 16-20 ms).
  for ns in "$s" "$c"; do
    ip netns exec "$ns" sh -c 'echo 0 > /proc/sys/net/ipv4/tcp_slow_start_after_idle' 2>/dev/null ||
      echo "testbed: note: cannot set tcp_slow_start_after_idle=0 in $ns" >&2
  done
  ip -n "$s" link set "$sdev" up
  ip -n "$c" link set "$cdev" up
  local i
  for ((i = 0; i < 50; i++)); do
    if ! ip -n "$s" addr show dev "$sdev" | grep -q tentative &&
       ! ip -n "$c" addr show dev "$cdev" | grep -q tentative; then
      break
    fi
    sleep 0.1
  done
  local netem=0 delay_applied=0
  if netem_available "$s"; then netem=1; fi
  if [[ $delay_ms != 0 && $delay_ms != 0.0 ]]; then
    if [[ $netem == 1 ]]; then
      delay_applied=$delay_ms
    else
      echo "testbed: WARNING: this kernel has no tc netem: the delay of ${delay_ms} ms is NOT" \
           "applied (rate only; the link's delay is the veth's own, a few microseconds)" >&2
    fi
  fi
  # burst: 0.25 ms of the rate, at least 16 KiB (in bytes).
  local burst
  burst=$(awk -v b="$bits" 'BEGIN { v = b / 8 * 0.00025; if (v < 16384) v = 16384; printf "%.0f\n", v }')
  shape "$s" "$sdev" "$rate" "$delay_applied" "${burst}b"
  shape "$c" "$cdev" "$rate" "$delay_applied" "${burst}b"
  trap - ERR
  cat <<EOF
KRUL_TB_NAME=$name
KRUL_TB_STORAGE_NS=$s
KRUL_TB_COMPUTE_NS=$c
KRUL_TB_STORAGE_ADDR=10.231.$x.1
KRUL_TB_COMPUTE_ADDR=10.231.$x.2
KRUL_TB_STORAGE_DEV=$sdev
KRUL_TB_COMPUTE_DEV=$cdev
KRUL_TB_RATE=$rate
KRUL_TB_RATE_BITS=$bits
KRUL_TB_BURST_BYTES=$burst
KRUL_TB_DELAY_MS=$delay_applied
KRUL_TB_DELAY_REQUESTED_MS=$delay_ms
KRUL_TB_NETEM=$netem
EOF
}

down() {
  local name=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name) name=$2; shift 2 ;;
      *) die "unknown argument: $1" ;;
    esac
  done
  if [[ -n $name ]]; then
    remove_testbed "$name"
    return 0
  fi
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    [[ $ns =~ ^(krultb[a-z0-9]*)-storage$ ]] && remove_testbed "${BASH_REMATCH[1]}"
    [[ $ns =~ ^(krultb[a-z0-9]*)-compute$ ]] && remove_testbed "${BASH_REMATCH[1]}"
  done
  return 0
}

cmd=${1:-}
shift || true
case "$cmd" in
  up) up "$@" ;;
  down) down "$@" ;;
  check) check ;;
  exec-storage) name=$1; shift; exec ip netns exec "$name-storage" "$@" ;;
  exec-compute) name=$1; shift; exec ip netns exec "$name-compute" "$@" ;;
  *) sed -n '2,46p' "$0" >&2; exit 2 ;;
esac
