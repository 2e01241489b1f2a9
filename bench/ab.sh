#!/usr/bin/env bash
# Before/after CPU figures of a change, in one run: `cdcd bench` with two binaries, rounds
# alternated ABBA (A B, then B A, ...) so that drift of the machine's speed falls on both.
# Per round and binary: tiny training (tokens/s), small training (tokens/s), one 200-step tiny
# story at batch 1 (ms). Needs a quiet machine. Prints one line per run, then the medians.
# Usage: bench/ab.sh BEFORE_CDCD AFTER_CDCD [ROUNDS=8]
#   e.g. git stash; make; cp bin/cdcd /tmp/cdcd-before; git stash pop; make; bench/ab.sh /tmp/cdcd-before bin/cdcd
set -euo pipefail
A=${1:?before binary} B=${2:?after binary} R=${3:-8}
PY=/usr/bin/python3
field() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(round($1))"; }
one() {
  local bin=$1
  local t s q
  t=$("$bin" bench --preset tiny --threads 2 --steps 6 --json 2>/dev/null | field 'd["tokens_per_s"]')
  s=$("$bin" bench --preset small --threads 2 --steps 3 --json 2>/dev/null | field 'd["tokens_per_s"]')
  q=$("$bin" bench --preset tiny --threads 2 --mode sample --batch 1 --sample-steps 200 --steps 3 --json 2>/dev/null |
      field 'd["step_ms_median"]')
  echo "$bin tiny_train $t small_train $s tiny_sample_ms $q"
}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq 1 "$R"); do
  if ((r % 2)); then one "$A"; one "$B"; else one "$B"; one "$A"; fi
done | tee "$out"
"$PY" - "$out" "$A" "$B" <<'PYEOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
for key in ("tiny_train", "small_train", "tiny_sample_ms"):
    med = {b: statistics.median(float(r[r.index(key) + 1]) for r in rows if r[0] == b) for b in sys.argv[2:]}
    a, b = med[sys.argv[2]], med[sys.argv[3]]
    print(f"{key}: median {a:.0f} -> {b:.0f} ({100 * (b - a) / a:+.1f}%)")
PYEOF
