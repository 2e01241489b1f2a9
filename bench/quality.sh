#!/usr/bin/env bash
# Fixed-budget ablation harness for sample quality: see bench/quality.py for the options.
#   bench/quality.sh --steps 500 --parallel 2 --threads 1 base='{}' prior='{"model":{"output_prior":true}}'
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x bin/cdcd ]] || make --no-print-directory bin/cdcd
[[ -f data/train.tok && -f data/valid.tok ]] || make --no-print-directory data
exec python3 bench/quality.py "$@"
