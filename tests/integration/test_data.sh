#!/usr/bin/env bash
# make data's scripts: offline fallback to the shared folder, verification, idempotence,
# clear failure when nothing is available, and token files from `cdcd prep`.
set -uo pipefail
ROOT=${CDCD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${CDCD_BIN:-$ROOT/bin}
SHARED=${CDCD_SHARED_DATA:-$ROOT/../shared/data}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }

# 1. Offline fallback fills the folder and verifies it.
if CDCD_DATA_SOURCE=shared CDCD_SHARED_DATA=$SHARED "$ROOT/scripts/fetch-data.sh" "$T/d1" 2>"$T/log1"; then
  [[ $(wc -l <"$T/d1/vocab.txt") -eq 30522 && -s $T/d1/tinystories/train.txt && -s $T/d1/tinystories/valid.txt ]] &&
    pass data_shared_fallback || fail data_shared_fallback "files missing"
else
  fail data_shared_fallback "$(tail -2 "$T/log1")"
fi

# 2. A second call keeps what is there.
if CDCD_DATA_SOURCE=shared "$ROOT/scripts/fetch-data.sh" "$T/d1" 2>"$T/log2" && grep -q "already holds" "$T/log2"; then
  pass data_idempotent
else
  fail data_idempotent "$(tail -2 "$T/log2")"
fi

# 3. A damaged vocab is detected and replaced.
head -n 100 "$T/d1/vocab.txt" >"$T/d1/v" && mv "$T/d1/v" "$T/d1/vocab.txt"
if CDCD_DATA_SOURCE=shared "$ROOT/scripts/fetch-data.sh" "$T/d1" 2>"$T/log3" && [[ $(wc -l <"$T/d1/vocab.txt") -eq 30522 ]]; then
  pass data_repairs_bad_vocab
else
  fail data_repairs_bad_vocab "$(tail -2 "$T/log3")"
fi

# 4. Offline with no shared folder: a clear error that says what to put where.
if CDCD_DATA_SOURCE=shared CDCD_SHARED_DATA=$T/nowhere "$ROOT/scripts/fetch-data.sh" "$T/d2" 2>"$T/log4"; then
  fail data_missing_source_errors "succeeded without any source"
else
  grep -q "vocab" "$T/log4" && grep -q "tinystories" "$T/log4" && pass data_missing_source_errors ||
    fail data_missing_source_errors "message does not say what to put where: $(cat "$T/log4")"
fi

# 5. prep-data.sh writes token files that `cdcd prep` made.
if [[ -x $BIN/cdcd && -x $ROOT/scripts/prep-data.sh ]]; then
  if "$ROOT/scripts/prep-data.sh" "$T/d1" "$BIN/cdcd" >"$T/log5" 2>&1 && [[ -s $T/d1/train.tok && -s $T/d1/valid.tok ]]; then
    pass data_token_files
  else
    fail data_token_files "$(tail -3 "$T/log5")"
  fi
else
  fail data_token_files "bin/cdcd or scripts/prep-data.sh missing"
fi
exit $((fails > 0))
