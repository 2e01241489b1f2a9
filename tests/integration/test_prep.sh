#!/usr/bin/env bash
# cdcd prep / tokenize / detokenize end to end: text and JSON Lines inputs give the same
# token file, --check accepts it and refuses a damaged copy, bad inputs fail cleanly
# (exit status, message, no output file), and tokenize reproduces the reference vectors.
set -uo pipefail
ROOT=${CDCD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${CDCD_BIN:-$ROOT/bin}
SHARED=${CDCD_SHARED_DATA:-$ROOT/../shared/data}
CDCD=$BIN/cdcd
VOCAB=$SHARED/bert-base-uncased-vocab.txt
VALID=$SHARED/tinystories/valid.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }

if [[ ! -x $CDCD ]]; then
  fail prep_cli "$CDCD is missing (make first)"
  exit 1
fi

# 1. Text and JSON Lines of the same stories give byte-identical token files.
python3 - "$VALID" "$T/valid.jsonl" <<'PY'
import json, sys
stories = [s.strip() for s in open(sys.argv[1], encoding="utf-8").read().split("<|endoftext|>")]
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for s in stories:
        if s:
            out.write(json.dumps({"text": s}) + "\n")
PY
if "$CDCD" prep --vocab "$VOCAB" --out "$T/a.tok" "$VALID" 2>"$T/log1" &&
  "$CDCD" prep --vocab "$VOCAB" --out "$T/b.tok" "$T/valid.jsonl" 2>>"$T/log1" &&
  cmp -s "$T/a.tok" "$T/b.tok"; then
  pass prep_text_equals_jsonl
else
  fail prep_text_equals_jsonl "$(tail -3 "$T/log1")"
fi
grep -q "prep: wrote .*stories" "$T/log1" && pass prep_reports_counts || fail prep_reports_counts "$(tail -2 "$T/log1")"

# 2. stdin works and gives the same file.
"$CDCD" prep --vocab "$VOCAB" --out "$T/c.tok" - <"$VALID" 2>"$T/log2" && cmp -s "$T/a.tok" "$T/c.tok" &&
  pass prep_stdin || fail prep_stdin "$(tail -2 "$T/log2")"

# 3. --check accepts the file and refuses a truncated copy.
if "$CDCD" prep --vocab "$VOCAB" --check "$T/a.tok" 2>"$T/log3"; then pass prep_check_ok; else fail prep_check_ok "$(cat "$T/log3")"; fi
head -c -8 "$T/a.tok" >"$T/trunc.tok"
if ! "$CDCD" prep --vocab "$VOCAB" --check "$T/trunc.tok" 2>"$T/log4" && grep -q truncated "$T/log4"; then
  pass prep_check_truncated
else
  fail prep_check_truncated "$(cat "$T/log4")"
fi

# 4. Bad inputs: exit status 1, a message naming the problem, no output file.
if ! "$CDCD" prep --vocab "$VOCAB" --out "$T/m.tok" "$T/missing.txt" 2>"$T/log5" &&
  grep -q "missing.txt" "$T/log5" && [[ ! -e $T/m.tok ]] && ! ls "$T"/m.tok.* >/dev/null 2>&1; then
  pass prep_missing_input
else
  fail prep_missing_input "$(cat "$T/log5")"
fi
head -n 100 "$VOCAB" >"$T/short-vocab.txt"
if ! "$CDCD" prep --vocab "$T/short-vocab.txt" --out "$T/v.tok" "$VALID" 2>"$T/log6" && grep -q "100 lines" "$T/log6"; then
  pass prep_bad_vocab
else
  fail prep_bad_vocab "$(cat "$T/log6")"
fi
printf 'One.\n<|endoftext|>\n<|endoftext|>\nT\xffwo \xc3\n<|endoftext|>\n' >"$T/bad.txt"
if "$CDCD" prep --vocab "$VOCAB" --out "$T/bad.tok" "$T/bad.txt" 2>"$T/log7" &&
  grep -q "2 stories" "$T/log7" && grep -q "1 empty" "$T/log7" && grep -q "2 invalid UTF-8 bytes" "$T/log7"; then
  pass prep_counts_empty_and_invalid
else
  fail prep_counts_empty_and_invalid "$(cat "$T/log7")"
fi

# 5. tokenize reproduces the reference vectors; detokenize reads them back.
python3 -c '
import json, sys
for l in open(sys.argv[1], encoding="utf-8"):
    print(json.dumps({"text": json.loads(l)["text"]}))' "$SHARED/tokenizer-vectors.jsonl" >"$T/texts.jsonl"
if "$CDCD" tokenize --vocab "$VOCAB" <"$T/texts.jsonl" >"$T/ids.jsonl" 2>"$T/log8" &&
  python3 -c '
import json, sys
want = [json.loads(l)["ids"] for l in open(sys.argv[1])]
got = [json.loads(l)["ids"] for l in open(sys.argv[2])]
sys.exit(0 if want == got else 1)' "$SHARED/tokenizer-vectors.jsonl" "$T/ids.jsonl"; then
  pass tokenize_vectors
else
  fail tokenize_vectors "$(tail -2 "$T/log8")"
fi
out=$(echo '{"ids": [101, 1000, 7592, 1010, 2088, 999, 1000, 102, 0, 0]}' | "$CDCD" detokenize --vocab "$VOCAB" --stop-at-sep)
[[ $out == '{"text":"\"hello, world!\""}' ]] && pass detokenize_story || fail detokenize_story "$out"
printf '{"ids": [1, 2]}\n{"ids": [99999]}\n' | "$CDCD" detokenize --vocab "$VOCAB" >"$T/d.jsonl" 2>/dev/null
rc=$?
[[ $rc -eq 1 && $(wc -l <"$T/d.jsonl") -eq 2 ]] && grep -q '"error"' "$T/d.jsonl" &&
  pass detokenize_bad_id || fail detokenize_bad_id "rc $rc, $(cat "$T/d.jsonl")"
exit $((fails > 0))
