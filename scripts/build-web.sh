#!/usr/bin/env bash
# Builds the dashboard's served assets (default web/dist, or the folder given as $1):
#   our own files from web/src (HTML, CSS, ES modules), copied as they are;
#   third-party libraries (uPlot) from web/node_modules, installed with `npm ci` from the pinned
#   web/package-lock.json and copied by web/scripts/vendor.sh. node_modules is never committed
#   and nothing is fetched at run time: the daemon may run on a box without internet.
# Quiet and quick when nothing changed.
set -euo pipefail
WEB=$(cd "$(dirname "$0")/../web" && pwd)
OUT=${1:-$WEB/dist}
cd "$WEB"
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  command -v npm >/dev/null || { echo "build-web: npm not found (scripts/deps.sh installs it)" >&2; exit 1; }
  npm ci --no-audit --no-fund --silent >&2 ||
    { echo "build-web: npm ci failed (offline? it needs the npm registry once, to fill web/node_modules)" >&2; exit 1; }
fi
mkdir -p "$OUT"
scripts/vendor.sh "$OUT"
cp -R src/. "$OUT"/
