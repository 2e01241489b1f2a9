#!/usr/bin/env bash
# Tokenises the TinyStories text that fetch-data.sh left in DATA_DIR into token files:
#   DATA_DIR/tinystories/train.txt -> DATA_DIR/train.tok
#   DATA_DIR/tinystories/valid.txt -> DATA_DIR/valid.tok
# with DATA_DIR/vocab.txt, using `CDCD_BIN prep` (a separate file per split is the
# train/valid split). A token file is kept when it is newer than its text and the vocab
# and `cdcd prep --check` accepts it (format version, vocabulary, checksum); otherwise
# it is rebuilt. cdcd prep writes atomically, so an interrupted run leaves no half file.
# Usage: scripts/prep-data.sh [DATA_DIR] [CDCD_BIN]   (defaults: data, bin/cdcd)
set -euo pipefail
DATA_DIR=${1:-data}
CDCD=${2:-bin/cdcd}
VOCAB=$DATA_DIR/vocab.txt

say() { echo "prep-data: $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ -x $CDCD ]] || die "$CDCD is not an executable (build it with: make)"
[[ -s $VOCAB ]] || die "$VOCAB is missing (run scripts/fetch-data.sh $DATA_DIR first)"

for split in train valid; do
  text=$DATA_DIR/tinystories/$split.txt
  tok=$DATA_DIR/$split.tok
  [[ -s $text ]] || die "$text is missing (run scripts/fetch-data.sh $DATA_DIR first)"
  if [[ -s $tok && $tok -nt $text && $tok -nt $VOCAB ]] &&
    "$CDCD" prep --vocab "$VOCAB" --check "$tok" 2>/dev/null; then
    say "$tok is up to date"
    continue
  fi
  say "tokenising $text -> $tok"
  "$CDCD" prep --vocab "$VOCAB" --out "$tok" "$text" || die "cdcd prep failed for $text"
done
