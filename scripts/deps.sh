#!/usr/bin/env bash
# Installs the Debian packages cdcdd needs, only those that are missing.
# Fast path: when everything is present it does no apt work at all.
# Usage: scripts/deps.sh [--build-only]
#   --build-only  what building and running need (`make run`): compiler, libraries
#                 (Open MPI for `mpirun -np N bin/cdcd train`),
#                 nodejs/npm for the dashboard build (scripts/build-web.sh), curl for
#                 `make data`
#   (default)     also the test and benchmark extras (`make test`, `make bench`, .ci/run)
set -euo pipefail

# Build and run time.
BUILD_PKGS=(
  build-essential pkg-config
  libmicrohttpd-dev libcjson-dev libsqlite3-dev libuv1-dev
  libopenblas-pthread-dev libutf8proc-dev libsystemd-dev libssl-dev
  libopenmpi-dev openmpi-bin
  ca-certificates curl
  nodejs npm
)
# Tests and benchmarks: PyTorch (parity test), Chromium (dashboard test), systemd (unit-file test), wrk,
# jq, the sanitizer runtime, clang with libFuzzer (the fuzz targets in tests/fuzz/; libFuzzer is in
# libclang-rt-14-dev), and the sqlite3 shell.
TEST_PKGS=(
  python3 python3-torch python3-numpy
  chromium
  systemd wrk jq sqlite3
  clang libclang-rt-14-dev
)

want=("${BUILD_PKGS[@]}")
case "${1:-}" in
  --build-only) ;;
  *) want+=("${TEST_PKGS[@]}") ;;
esac

missing=()
for p in "${want[@]}"; do
  # dpkg-query is cheap; a package counts as present only when fully installed.
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$st" == "install ok installed" ]] || missing+=("$p")
done
# node/npm may come from elsewhere on a developer box: accept them if on PATH.
if ((${#missing[@]})); then
  filtered=()
  for p in "${missing[@]}"; do
    case "$p" in
      nodejs) command -v node >/dev/null 2>&1 && continue ;;
      npm) command -v npm >/dev/null 2>&1 && continue ;;
    esac
    filtered+=("$p")
  done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi

if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "deps.sh: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
