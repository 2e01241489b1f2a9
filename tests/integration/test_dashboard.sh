#!/usr/bin/env bash
# Browser tests of the dashboard (issue 8) against a real cdcdd on an ephemeral port, with a
# temporary state dir and a temporary data dir whose token files `cdcd prep` makes from the
# shared TinyStories validation split. A short real run is started through the API, then
# Debian's headless Chromium, driven by playwright-core from web/node_modules (never a
# downloaded browser), checks the runs list, the loss and entropy/fit charts, live SSE
# updates, the loss controls, generation, the new-run form, the run buttons, the phone layout,
# the console, and recovery after the daemon restarts. See web/tests/dashboard.test.mjs.
# Then tests/integration/dashboard_stories.test.mjs, with a daemon of its own, checks the
# Stories timeline and the story-quality curves of a run that samples every 25 steps.
#
# Environment: CDCD_BIN (binaries, default bin), CDCD_SHARED_DATA (default ../shared/data),
# CHROMIUM (default /usr/bin/chromium), CDCD_DASHBOARD_MOCK=1 (UI work only: web/dev's mock
# API instead of cdcdd; make test never sets it), CDCD_DASHBOARD_PARTS (default "main stories":
# which of the two browser scripts run).
# Screenshots and the daemons' logs: tests/artifacts/dashboard-*.
set -uo pipefail
ROOT=${CDCD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${CDCD_BIN:-$ROOT/bin}
[[ $BIN == /* ]] || BIN=$ROOT/$BIN
SHARED=${CDCD_SHARED_DATA:-$ROOT/../shared/data}
ART=${CDCD_ART:-$ROOT/tests/artifacts}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
mkdir -p "$ART"
rm -f "$ART"/dashboard-*.png "$ART/dashboard-cdcdd.log"

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL $1: $2"; exit 1; }

command -v node >/dev/null || fail dashboard_prereqs "node not found (scripts/deps.sh installs nodejs)"
[[ -x $CHROMIUM ]] || fail dashboard_prereqs "$CHROMIUM not found (scripts/deps.sh installs chromium)"

# Assets: built into the temp dir so that a concurrent `make` in web/dist is not disturbed.
# build-web.sh runs `npm ci` when web/node_modules is missing (uPlot and playwright-core).
if ! "$ROOT/scripts/build-web.sh" "$T/web" >"$T/build.log" 2>&1; then
  fail dashboard_build "$(tail -3 "$T/build.log" | tr '\n' ' ')"
fi
[[ -f $ROOT/web/node_modules/playwright-core/package.json ]] ||
  fail dashboard_prereqs "web/node_modules/playwright-core missing (cd web && npm ci)"

RUN_CONFIG='{"name":"dashboard-live","preset":"tiny","seed":7,
  "data":{"seq_len":32},
  "train":{"batch_size":4,"max_steps":3000,"threads":1,"checkpoint_every":100,"valid_every":40,"valid_batches":1},
  "optim":{"warmup_steps":20},
  "schedule":{"refit_every":10,"window":500}}'

{
  for b in cdcdd cdcd; do [[ -x $BIN/$b ]] || fail dashboard_prereqs "$BIN/$b not built"; done
  VOCAB=$SHARED/bert-base-uncased-vocab.txt
  TEXT=$SHARED/tinystories/valid.txt
  [[ -f $VOCAB && -f $TEXT ]] || fail dashboard_prereqs "shared data missing under $SHARED"
  mkdir -p "$T/data" "$T/state" "$T/state-stories"
  cp "$VOCAB" "$T/data/vocab.txt" # the daemon's tokenizer, for sampling
  for split in train valid; do
    "$BIN/cdcd" prep --vocab "$VOCAB" --out "$T/data/$split.tok" "$TEXT" >"$T/prep.log" 2>&1 ||
      fail dashboard_data "cdcd prep: $(tail -2 "$T/prep.log" | tr '\n' ' ')"
  done
  DAEMON_CMD=$(printf '["%s","--state-dir","%s","--data-dir","%s","--web-dir","%s","--max-runs","2","--threads-per-run","1"]' \
    "$BIN/cdcdd" "$T/state" "$T/data" "$T/web")
  STORIES_CMD=$(printf '["%s","--state-dir","%s","--data-dir","%s","--web-dir","%s","--max-runs","1","--threads-per-run","1"]' \
    "$BIN/cdcdd" "$T/state-stories" "$T/data" "$T/web")
}

PARTS=${CDCD_DASHBOARD_PARTS:-main stories}
cd "$ROOT/web" || exit 1
rc=0
if [[ " $PARTS " == *" main "* ]]; then
  CDCD_DAEMON_CMD=$DAEMON_CMD CDCD_RUN_CONFIG=$RUN_CONFIG CDCD_ART=$ART CHROMIUM=$CHROMIUM \
    timeout 200 node tests/dashboard.test.mjs
  rc=$?
  [[ $rc -eq 124 ]] && echo "FAIL dashboard_timeout: the browser tests ran past 200 s"
fi
if [[ " $PARTS " == *" stories "* ]]; then
  CDCD_DAEMON_CMD=$STORIES_CMD CDCD_ART=$ART CHROMIUM=$CHROMIUM \
    timeout 120 node "$ROOT/tests/integration/dashboard_stories.test.mjs"
  src=$?
  [[ $src -eq 124 ]] && echo "FAIL dashboard_stories_timeout: the stories browser test ran past 120 s"
  [[ $src -ne 0 && $rc -eq 0 ]] && rc=$src
fi
exit $rc
