#!/usr/bin/env bash
# Copies the third-party files the dashboard serves from node_modules into $1/vendor.
# Run by scripts/build-web.sh after `npm ci`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: vendor.sh OUTDIR}
mkdir -p "$OUT/vendor"
for f in node_modules/uplot/dist/uPlot.esm.js node_modules/uplot/dist/uPlot.min.css node_modules/uplot/LICENSE; do
  [[ -f $f ]] || { echo "vendor.sh: $f missing (run npm ci in web/)" >&2; exit 1; }
done
install -m 644 node_modules/uplot/dist/uPlot.esm.js node_modules/uplot/dist/uPlot.min.css "$OUT/vendor/"
install -m 644 node_modules/uplot/LICENSE "$OUT/vendor/uPlot.LICENSE"
