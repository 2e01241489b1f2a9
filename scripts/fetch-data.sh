#!/usr/bin/env bash
# Fills DATA_DIR (default: data) with the bert-base-uncased vocab and TinyStories text:
#   DATA_DIR/vocab.txt
#   DATA_DIR/tinystories/train.txt, DATA_DIR/tinystories/valid.txt
# Source order (CDCD_DATA_SOURCE=auto|official|shared, default auto):
#   official  the Hugging Face files (google-bert/bert-base-uncased vocab.txt,
#             roneneldan/TinyStories TinyStoriesV2-GPT4-{train,valid}.txt; train is ~2 GB)
#   shared    ../shared/data (or $CDCD_SHARED_DATA): the project's offline copy
# auto tries official when the network answers, else shared. What it got is verified:
# the vocab has 30,522 lines (and the known sha256), every story file ends with the
# <|endoftext|> separator, and the shared copies match the sha256 in SOURCES.md.
# Files already present and valid are kept.
set -euo pipefail
DATA_DIR=${1:-data}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${CDCD_SHARED_DATA:-$ROOT/../shared/data}
SOURCE=${CDCD_DATA_SOURCE:-auto}
HF=https://huggingface.co
VOCAB_URL=$HF/google-bert/bert-base-uncased/resolve/main/vocab.txt
TS_URL=$HF/datasets/roneneldan/TinyStories/resolve/main
VOCAB_SHA=07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3
VOCAB_LINES=30522
declare -A SHARED_SHA=(
  [train.txt]=728251caa36aff94408a2a6eb3f8b068fe261ec8fdef2e6e1f710bcdeeaaf92f
  [valid.txt]=e286015a0cf75c1a5ea27693503da7f556209186476b31328a402b8d707d6dcc
)

say() { echo "fetch-data: $*" >&2; }
die() { say "error: $*"; exit 1; }

vocab_ok() {
  [[ -s $1 ]] || return 1
  [[ $(wc -l <"$1") -eq $VOCAB_LINES ]] || { say "$1: expected $VOCAB_LINES lines, found $(wc -l <"$1")"; return 1; }
  local sha; sha=$(sha256sum "$1" | cut -d' ' -f1)
  [[ $sha == "$VOCAB_SHA" ]] || { say "$1: sha256 $sha differs from the known bert-base-uncased vocab"; return 1; }
}

stories_ok() {
  [[ -s $1 ]] || return 1
  [[ $(tail -c 15 "$1" | tr -d '\n') == *"<|endoftext|>"* ]] || { say "$1: does not end with <|endoftext|>"; return 1; }
  grep -qm1 -x '<|endoftext|>' "$1" || { say "$1: no <|endoftext|> separator lines"; return 1; }
}

online() {
  [[ $SOURCE == shared ]] && return 1
  curl -sfI --connect-timeout 5 --max-time 10 "$VOCAB_URL" >/dev/null 2>&1
}

download() { # url dest
  local tmp="$2.part"
  say "downloading $1"
  curl -fL --connect-timeout 10 --retry 3 -o "$tmp" "$1" && mv -f "$tmp" "$2"
}

mkdir -p "$DATA_DIR/tinystories"
have_all=1
vocab_ok "$DATA_DIR/vocab.txt" 2>/dev/null || have_all=0
for f in train.txt valid.txt; do stories_ok "$DATA_DIR/tinystories/$f" 2>/dev/null || have_all=0; done
if ((have_all)); then
  say "$DATA_DIR already holds a valid vocab and TinyStories text"
  exit 0
fi

if online; then
  say "network reachable: fetching the official files"
  vocab_ok "$DATA_DIR/vocab.txt" 2>/dev/null || download "$VOCAB_URL" "$DATA_DIR/vocab.txt"
  for split in train valid; do
    stories_ok "$DATA_DIR/tinystories/$split.txt" 2>/dev/null ||
      download "$TS_URL/TinyStoriesV2-GPT4-$split.txt" "$DATA_DIR/tinystories/$split.txt"
  done
elif [[ $SOURCE == official ]]; then
  die "CDCD_DATA_SOURCE=official but $HF is not reachable"
else
  [[ -d $SHARED ]] || die "offline and no shared data folder at $SHARED.
Put bert-base-uncased-vocab.txt and tinystories/{train,valid}.txt (TinyStories <|endoftext|> layout)
there, or set CDCD_SHARED_DATA, or copy vocab.txt and tinystories/{train,valid}.txt into $DATA_DIR/ yourself."
  say "offline: using $SHARED"
  cp -f "$SHARED/bert-base-uncased-vocab.txt" "$DATA_DIR/vocab.txt"
  for f in train.txt valid.txt; do
    cp -f "$SHARED/tinystories/$f" "$DATA_DIR/tinystories/$f"
    sha=$(sha256sum "$DATA_DIR/tinystories/$f" | cut -d' ' -f1)
    [[ $sha == "${SHARED_SHA[$f]}" ]] || die "$DATA_DIR/tinystories/$f: sha256 $sha does not match SOURCES.md (${SHARED_SHA[$f]})"
  done
fi
chmod u+w "$DATA_DIR/vocab.txt" "$DATA_DIR"/tinystories/*.txt
vocab_ok "$DATA_DIR/vocab.txt" || die "vocab check failed"
for f in train.txt valid.txt; do stories_ok "$DATA_DIR/tinystories/$f" || die "$f check failed"; done
say "ok: $(wc -l <"$DATA_DIR/vocab.txt") vocab lines; train $(grep -cx '<|endoftext|>' "$DATA_DIR/tinystories/train.txt") stories, valid $(grep -cx '<|endoftext|>' "$DATA_DIR/tinystories/valid.txt") stories"
