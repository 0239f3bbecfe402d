#!/usr/bin/env bash
# Screenshot of a Prometheus graph page, taken with headless Chromium (Debian's `chromium`
# package). Used by the live deploy test and to make docs/images/prometheus-ttft-by-mode.png.
#
# Usage: deploy/local/prometheus-screenshot.sh PROMETHEUS_URL OUT.png [EXPR] [RANGE]
#   EXPR   PromQL to graph (default: TTFT p99 by restore mode, the recording rule
#          krul:worker_ttft_seconds:p99_by_mode_5m)
#   RANGE  graph range (default 5m)
#   KRUL_CHROMIUM   browser binary (default: chromium on PATH)
#   KRUL_SCREENSHOT_SIZE  window size WxH (default 1400,900)
# Debian's prometheus package ships the classic web UI (/classic/graph), which this uses.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/local/lib/http.sh
source "$here/lib/http.sh"

die() { echo "prometheus-screenshot: error: $*" >&2; exit 1; }
(($# >= 2)) || die "usage: prometheus-screenshot.sh PROMETHEUS_URL OUT.png [EXPR] [RANGE]"
url=${1%/}
out=$2
expr=${3:-krul:worker_ttft_seconds:p99_by_mode_5m}
range=${4:-5m}
size=${KRUL_SCREENSHOT_SIZE:-1400,900}
chromium=${KRUL_CHROMIUM:-$(command -v chromium || true)}
[[ -n $chromium ]] || die "chromium not found (scripts/install-deps.sh installs Debian's chromium)"
http_get "$url/-/ready" >/dev/null || die "Prometheus at $url is not ready"

page="$url/classic/graph?g0.expr=$(url_encode "$expr")&g0.tab=0&g0.range_input=$range&g0.stacked=0&g0.show_exemplars=0"
profile=$(mktemp -d "${TMPDIR:-/tmp}/krul-chromium.XXXXXX")
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"
rm -f "$out"
# --virtual-time-budget lets the page's scripts run their query and draw before the shot.
# The browser's own chatter (GPU, D-Bus) goes to a log shown only on failure.
if ! timeout 60 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-dev-shm-usage --hide-scrollbars --user-data-dir="$profile" \
    --virtual-time-budget=15000 --window-size="$size" --screenshot="$out" "$page" \
    >"$profile/chromium.log" 2>&1 || [[ ! -s $out ]]; then
  cat "$profile/chromium.log" >&2
  die "chromium did not write $out"
fi
echo "$out: $page"
