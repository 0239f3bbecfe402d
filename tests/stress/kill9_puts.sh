#!/usr/bin/env bash
# Crash consistency of krul-kvstore: kill -9 during >= 200 concurrent puts,
# restart on the same RocksDB directory, x20 random kill points. Every
# acknowledged put must be served byte-exact afterwards, nothing that was not
# committed may be visible, and a put whose commit was in flight when the
# store died (in doubt) may be absent or present but never torn. The work is
# done by krul-stress-kill9 (tests/stress/kill9_puts.cc), which prints the
# counts per round and in total.
#
# Usage: tests/stress/kill9_puts.sh [--build DIR] [--rounds N] [--writers W] [--seed S]
#                                   [--data_plane grpc|ucx] [-- more krul-stress-kill9 flags]
#   --build DIR  a build with tests (default build); krul-stress-kill9 and
#                krul-kvstore must be built there:
#                cmake --build DIR --target krul-stress-kill9
#   defaults: 20 rounds, 200 writers, seed from the clock (printed), grpc
#
# Exit status: 0 when every round held, 1 on a violation, 2 on a setup error.
# Everything (the store, its RocksDB directory) is removed at exit.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="$repo_root/build" rounds=20 writers=200 seed="$(date +%s)" plane=grpc
while (($#)); do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --writers) writers="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --data_plane) plane="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "kill9_puts: unknown argument $1" >&2; exit 2 ;;
  esac
done
tool="$build/bin/krul-stress-kill9"
if [[ ! -x "$tool" || ! -x "$build/bin/krul-kvstore" ]]; then
  echo "kill9_puts: build it first: cmake --build $build --target krul-stress-kill9" >&2
  exit 2
fi

work="$(mktemp -d -t krul-kill9.XXXXXX)"
tool_pid=""
cleanup() {
  # The tool's stores die with it (PR_SET_PDEATHSIG); stop the tool itself.
  if [[ -n "$tool_pid" ]] && kill -0 "$tool_pid" 2>/dev/null; then
    kill "$tool_pid" 2>/dev/null || true
    wait "$tool_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "kill9_puts: seed $seed (rerun with --seed $seed), work dir $work"
# The store's own log lines (stderr) go to a file: the report stays readable.
"$tool" --dir="$work" --rounds="$rounds" --writers="$writers" --seed="$seed" \
  --data_plane="$plane" --server_args="--log_level=warning" "$@" 2>"$work/stderr.log" &
tool_pid=$!
status=0
wait "$tool_pid" || status=$?
tool_pid=""
if ((status != 0)); then
  echo "kill9_puts: FAILED (exit $status); the end of its stderr:" >&2
  grep -v '^$' "$work/stderr.log" | tail -40 >&2
fi
exit "$status"
