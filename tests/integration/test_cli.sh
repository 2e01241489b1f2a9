#!/usr/bin/env bash
# The offline CLI end to end on real TinyStories tokens: prep, train (with checkpoints),
# bit-exact resume, SIGINT with a final checkpoint, eval, sample (from any directory: the
# checkpoint carries its vocabulary), and clear errors.
set -uo pipefail
ROOT=${CDCD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${CDCD_BIN:-$ROOT/bin}
SHARED=${CDCD_SHARED_DATA:-$ROOT/../shared/data}
CDCD=$BIN/cdcd
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }
VOCAB=$SHARED/bert-base-uncased-vocab.txt

# Small token files: the valid split for training here (it is small), its head for validation.
head -c 60000 "$SHARED/tinystories/valid.txt" | sed -n '1,/<|endoftext|>/p;' >"$T/v.txt"
if "$CDCD" prep --vocab "$VOCAB" --out "$T/train.tok" "$SHARED/tinystories/valid.txt" >"$T/prep.log" 2>&1 &&
   "$CDCD" prep --vocab "$VOCAB" --out "$T/valid.tok" "$T/v.txt" >>"$T/prep.log" 2>&1; then
  pass cli_prep
else
  fail cli_prep "$(tail -3 "$T/prep.log")"
fi

# A small model so a step takes a fraction of a second on 2 cores. The vocabulary is not
# beside the token files here, so the config names it (data.vocab_file): checkpoints embed it.
cat >"$T/run.json" <<JSON
{"preset":"tiny","seed":3,"model":{"d_model":64,"n_heads":2,"n_layers":2,"cond_dim":16},
 "data":{"train":"$T/train.tok","valid":"$T/valid.tok","seq_len":32,"vocab_file":"$VOCAB"},
 "train":{"batch_size":4,"max_steps":8,"threads":2,"checkpoint_every":4,"valid_every":4,"valid_batches":1,"keep_checkpoints":0},
 "schedule":{"refit_every":3,"window":16}}
JSON
if "$CDCD" train --config "$T/run.json" --out "$T/a" --quiet >"$T/a.log" 2>&1 &&
   [[ -s $T/a/step-00000004.ckpt && -s $T/a/step-00000008.ckpt ]]; then
  pass cli_train_checkpoints
else
  fail cli_train_checkpoints "$(tail -3 "$T/a.log")"
fi
rows=$(($(wc -l <"$T/a/metrics.csv") - 1))
[[ $rows -eq 8 ]] && pass cli_train_metrics || fail cli_train_metrics "metrics.csv has $rows rows"
ent=$(($(wc -l <"$T/a/entropy.csv") - 1))
[[ $ent -ge 8 ]] && pass cli_train_entropy_samples || fail cli_train_entropy_samples "entropy.csv has $ent rows"
fits=$(($(wc -l <"$T/a/fits.csv") - 1))
[[ $fits -eq 2 ]] && pass cli_train_fits || fail cli_train_fits "fits.csv has $fits rows (refit_every 3 over 8 steps)"

# Resume from step 4 must give exactly the losses of steps 5..8.
mkdir -p "$T/b"
if "$CDCD" train --resume "$T/a/step-00000004.ckpt" --out "$T/b" --quiet >"$T/b.log" 2>&1; then
  a=$(awk -F, 'NR>1 && $1>4 {print $1, $2, $4}' "$T/a/metrics.csv")
  b=$(awk -F, 'NR>1 {print $1, $2, $4}' "$T/b/metrics.csv")
  if [[ -n $a && "$a" == "$b" ]]; then pass cli_resume_bit_exact; else fail cli_resume_bit_exact "uninterrupted: [$a] resumed: [$b]"; fi
  cmp -s <(tail -n +2 "$T/b/fits.csv") <(awk -F, 'NR>1 && $1>4' "$T/a/fits.csv") && pass cli_resume_same_fits ||
    fail cli_resume_same_fits "fits differ after resume"
else
  fail cli_resume_bit_exact "$(tail -3 "$T/b.log")"
fi

# SIGINT stops with a final checkpoint.
sed 's/"max_steps":8/"max_steps":100000/' "$T/run.json" >"$T/long.json"
"$CDCD" train --config "$T/long.json" --out "$T/c" --quiet >"$T/c.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [[ -s $T/c/metrics.csv && $(wc -l <"$T/c/metrics.csv") -gt 3 ]] && break; sleep 0.2; done
kill -INT $pid
wait $pid
rc=$?
last=$(ls "$T/c"/step-*.ckpt 2>/dev/null | tail -1)
[[ $rc -eq 0 && -n $last ]] && pass cli_sigint_checkpoint || fail cli_sigint_checkpoint "rc $rc, checkpoints: $(ls "$T/c")"

# Eval: a table and JSON with the sigma grid.
if "$CDCD" eval --checkpoint "$T/a/step-00000008.ckpt" --data "$T/valid.tok" --batches 2 --batch 4 --json >"$T/eval.json" 2>"$T/eval.err"; then
  /usr/bin/python3 - "$T/eval.json" <<'PY' && pass cli_eval_json || fail cli_eval_json "$(cat "$T/eval.json" "$T/eval.err")"
import json, math, sys
d = json.load(open(sys.argv[1]))
c = d["curve"]
assert [p["sigma"] for p in c] == [0.5, 1, 2, 5, 10, 20, 50, 100], c
assert all(math.isfinite(p["ce"]) and p["ce"] > 0 for p in c)
assert math.isfinite(d["schedule_mean_ce"]) and d["unigram_entropy"] > 1
PY
else
  fail cli_eval_json "$(cat "$T/eval.err")"
fi

# Sample: JSON output with ids and text; a prompt is kept; same seed, same output.
s1=$("$CDCD" sample --checkpoint "$T/a/step-00000008.ckpt" --vocab "$VOCAB" --n 2 --steps 5 --seed 9 --length 32 --prompt "once upon a time" --json 2>"$T/s.err")
s2=$("$CDCD" sample --checkpoint "$T/a/step-00000008.ckpt" --vocab "$VOCAB" --n 2 --steps 5 --seed 9 --length 32 --prompt "once upon a time" --json 2>>"$T/s.err")
if [[ -n $s1 ]] && printf '%s\n%s\n' "$s1" "$s2" | /usr/bin/python3 -c '
import json, sys
d, d2 = [json.loads(l) for l in sys.stdin.read().splitlines()]
assert d["samples"] == d2["samples"], "same seed gave different samples"
assert len(d["samples"]) == 2
for s in d["samples"]:
    assert s["text"].startswith("once upon a time"), s["text"]
    assert s["ids"][:5] == [101, 2320, 2588, 1037, 2051], s["ids"][:5]
'; then pass cli_sample_prompt_reproducible; else fail cli_sample_prompt_reproducible "$(cat "$T/s.err") $s1"; fi

# Sampling needs nothing but the checkpoint: copied to an empty directory and sampled from
# there (no data/vocab.txt, no --vocab), it gives the very stories --vocab gave above.
mkdir -p "$T/elsewhere"
cp "$T/a/step-00000008.ckpt" "$T/elsewhere/"
s3=$(cd "$T/elsewhere" && "$CDCD" sample --checkpoint step-00000008.ckpt --n 2 --steps 5 --seed 9 --length 32 \
  --prompt "once upon a time" --json 2>"$T/s3.err")
rc=$?
if [[ $rc -eq 0 && -n $s3 ]] && printf '%s\n%s\n' "$s1" "$s3" | /usr/bin/python3 -c '
import json, sys
a, b = [json.loads(l) for l in sys.stdin.read().splitlines()]
assert a["samples"] == b["samples"], (a["samples"], b["samples"])
'; then pass cli_sample_from_any_directory; else fail cli_sample_from_any_directory "rc $rc: $(cat "$T/s3.err") $s3"; fi

# --vocab that is not the embedded vocabulary is refused (status 2), naming both; here two
# lines of the real vocab.txt swapped: same size, other ids.
awk 'NR==2000 {held=$0; next} NR==2001 {print; print held; next} {print}' "$VOCAB" >"$T/swapped-vocab.txt"
(cd "$T/elsewhere" && "$CDCD" sample --checkpoint step-00000008.ckpt --vocab "$T/swapped-vocab.txt" --n 1 --steps 2 \
  >/dev/null 2>"$T/e6"); rc=$?
[[ $rc -eq 2 ]] && grep -q "swapped-vocab.txt" "$T/e6" && grep -q "not the vocabulary embedded" "$T/e6" &&
  pass cli_sample_vocab_mismatch_refused || fail cli_sample_vocab_mismatch_refused "rc $rc: $(cat "$T/e6")"

# A checkpoint written before vocabularies were embedded (the same file without its "vocab"
# section): from an empty directory it needs --vocab, and says so; with --vocab it samples.
/usr/bin/python3 - "$T/elsewhere/step-00000008.ckpt" "$T/elsewhere/old.ckpt" <<'PY'
import hashlib, struct, sys
b = open(sys.argv[1], "rb").read()
assert b[:8] == b"CDCDCKPT"
version, n, toc = struct.unpack_from("<IIQ", b, 8)
entries = [b[toc + 64 * i: toc + 64 * (i + 1)] for i in range(n)]
kept = [e for e in entries if e[:48].rstrip(b"\0") != b"vocab"]
assert len(kept) == n - 1, "no vocab section to drop"
body = b[:8] + struct.pack("<IIQ", version, len(kept), toc) + b[24:toc] + b"".join(kept)
open(sys.argv[2], "wb").write(body + hashlib.sha256(body).digest() + b"CKPTEND\0")
PY
(cd "$T/elsewhere" && "$CDCD" sample --checkpoint old.ckpt --n 1 --steps 2 >/dev/null 2>"$T/e7"); rc=$?
[[ $rc -eq 1 ]] && grep -q -- "--vocab" "$T/e7" && grep -q "no embedded vocabulary" "$T/e7" &&
  pass cli_sample_old_checkpoint_needs_vocab || fail cli_sample_old_checkpoint_needs_vocab "rc $rc: $(cat "$T/e7")"
s4=$(cd "$T/elsewhere" && "$CDCD" sample --checkpoint old.ckpt --vocab "$VOCAB" --n 2 --steps 5 --seed 9 --length 32 \
  --prompt "once upon a time" --json 2>"$T/s4.err")
if [[ -n $s4 ]] && printf '%s\n%s\n' "$s1" "$s4" | /usr/bin/python3 -c '
import json, sys
a, b = [json.loads(l) for l in sys.stdin.read().splitlines()]
assert a["samples"] == b["samples"]
'; then pass cli_sample_old_checkpoint_with_vocab; else fail cli_sample_old_checkpoint_with_vocab "$(cat "$T/s4.err") $s4"; fi

# Eval --samples: story statistics of JSON Lines against the training text, with the real
# and word-shuffled reference rows; `cdcd sample --json` output is read as is; bad input
# is refused with status 2.
/usr/bin/python3 - "$SHARED/tinystories/valid.txt" "$T/stories.jsonl" <<'PY'
import json, sys
stories = [s.strip() for s in open(sys.argv[1], encoding="utf-8").read().split("<|endoftext|>") if s.strip()]
with open(sys.argv[2], "w") as f:
    for s in stories[50:58]:
        f.write(json.dumps({"text": s}) + "\n")
PY
TS=(--train "$SHARED/tinystories/train.txt" --valid "$T/train.tok" --vocab "$VOCAB" --seed 5)
if "$CDCD" eval --samples "$T/stories.jsonl" "${TS[@]}" --json >"$T/ts.json" 2>"$T/ts.err"; then
  /usr/bin/python3 - "$T/ts.json" <<'PY' && pass cli_eval_samples_json || fail cli_eval_samples_json "$(cat "$T/ts.json" "$T/ts.err")"
import json, math, sys
d = json.load(open(sys.argv[1]))
assert sorted(d) == ["real", "samples", "shuffled"], sorted(d)
keys = ["n_stories", "words_per_story", "bigram_seen", "trigram_seen", "distinct1", "distinct2", "repeat4",
        "dangling", "sentences_per_story", "words_per_sentence", "unigram_kl", "token_entropy", "bigram_seen_punct", "trigram_seen_punct"]
for row in d.values():
    assert sorted(row) == sorted(keys), sorted(row)
    assert row["n_stories"] == 8, row
    assert all(isinstance(row[k], (int, float)) and math.isfinite(row[k]) for k in keys), row
    assert all(0 <= row[k] <= 1 for k in ["bigram_seen", "trigram_seen", "distinct1", "distinct2", "repeat4", "dangling"]), row
    assert row["token_entropy"] > 3 and row["unigram_kl"] > 0 and 5 < row["words_per_sentence"] < 25, row
s, r, x = d["samples"], d["real"], d["shuffled"]
assert s["bigram_seen"] > 0.8 and r["bigram_seen"] > 0.8, (s, r)
assert r["bigram_seen"] > x["bigram_seen"] + 0.2, (r, x)
assert r["trigram_seen"] > x["trigram_seen"] + 0.2, (r, x)
assert r["words_per_story"] == x["words_per_story"] and r["unigram_kl"] == x["unigram_kl"], (r, x)
PY
else
  fail cli_eval_samples_json "$(cat "$T/ts.err")"
fi
"$CDCD" eval --samples "$T/stories.jsonl" "${TS[@]}" >"$T/ts.txt" 2>&1
[[ $(grep -cE '^(samples|real|shuffled) ' "$T/ts.txt") -eq 3 ]] && grep -q trigram_seen "$T/ts.txt" &&
  pass cli_eval_samples_table || fail cli_eval_samples_table "$(cat "$T/ts.txt")"
printf '%s\n' "$s1" >"$T/sampled.json"
if [[ -n $s1 ]] && "$CDCD" eval --samples "$T/sampled.json" "${TS[@]}" --json >"$T/ts2.json" 2>"$T/ts2.err" &&
   /usr/bin/python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["samples"]["n_stories"] == 2, d' "$T/ts2.json"; then
  pass cli_eval_samples_sample_output
else
  fail cli_eval_samples_sample_output "$(cat "$T/ts2.err" "$T/ts2.json" 2>/dev/null)"
fi
printf '{"text":"the cat sat."}\n{"story":"no text here"}\n' >"$T/notext.jsonl"
: >"$T/empty.jsonl"
bad_ok=1
for f in "$T/nope.jsonl" "$T/notext.jsonl" "$T/empty.jsonl"; do
  "$CDCD" eval --samples "$f" "${TS[@]}" >/dev/null 2>"$T/e5"; rc=$?
  [[ $rc -eq 2 ]] && grep -q "$(basename "$f")" "$T/e5" || { bad_ok=0; fail cli_eval_samples_bad_input "$f: rc $rc: $(cat "$T/e5")"; }
done
((bad_ok)) && pass cli_eval_samples_bad_input

# Clear errors, no crash.
"$CDCD" sample --checkpoint "$T/nope.ckpt" --vocab "$VOCAB" >/dev/null 2>"$T/e1"; rc=$?
[[ $rc -ne 0 && $rc -lt 128 ]] && grep -q "nope.ckpt" "$T/e1" && pass cli_missing_checkpoint || fail cli_missing_checkpoint "rc $rc: $(cat "$T/e1")"
head -c 5000 "$T/a/step-00000008.ckpt" >"$T/trunc.ckpt"
"$CDCD" sample --checkpoint "$T/trunc.ckpt" --vocab "$VOCAB" >/dev/null 2>"$T/e2"; rc=$?
[[ $rc -ne 0 && $rc -lt 128 ]] && grep -qi "truncated" "$T/e2" && pass cli_truncated_checkpoint || fail cli_truncated_checkpoint "rc $rc: $(cat "$T/e2")"
"$CDCD" sample --checkpoint "$T/a/step-00000008.ckpt" --vocab "$VOCAB" --steps 0 >/dev/null 2>"$T/e3"; rc=$?
[[ $rc -eq 2 ]] && grep -q steps "$T/e3" && pass cli_sample_bad_steps || fail cli_sample_bad_steps "rc $rc: $(cat "$T/e3")"
echo '{"train":{"batch_size":-1}}' >"$T/bad.json"
"$CDCD" train --config "$T/bad.json" --out "$T/d" >/dev/null 2>"$T/e4"; rc=$?
[[ $rc -eq 2 ]] && grep -q "train.batch_size" "$T/e4" && pass cli_train_bad_config || fail cli_train_bad_config "rc $rc: $(cat "$T/e4")"
exit $((fails > 0))
