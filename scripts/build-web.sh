#!/usr/bin/env bash
# Builds the dashboard's served assets into web/dist:
#   our own files from web/src (HTML, CSS, JS), copied as they are;
#   third-party libraries from npm, installed from web/package-lock.json (pinned) with `npm ci`
#   and copied from web/node_modules (never committed).
# Quiet and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/../web"
mkdir -p dist
if [[ -f package.json ]]; then
  if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
    command -v npm >/dev/null || { echo "build-web: npm not found (scripts/deps.sh installs it)" >&2; exit 1; }
    npm ci --no-audit --no-fund --silent >&2
  fi
  [[ -x scripts/vendor.sh ]] && scripts/vendor.sh dist
fi
if [[ -d src ]]; then
  cp -R src/. dist/
fi
