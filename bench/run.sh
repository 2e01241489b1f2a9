#!/usr/bin/env bash
# make bench: cdcd beside the project's PyTorch reference, on this machine, in one run.
#   1. sgemm probe (the achievable GEMM rate; sets the GEMM-only ceiling)
#   2. training, tiny and small, batch 32 x 128, 2 threads: cdcd vs PyTorch at its best
#      settings (1 or 2 threads, OMP_WAIT_POLICY=PASSIVE or not), runs alternated, medians
#   3. sampling, one 128-token story at 200 Euler steps, batch 1 and 8, tiny and small
#   4. the tokenizer's MB/s
# Both sides use OpenBLAS with the same kernels: the ones cdcd picks on this CPU (core/blas.h;
# SkylakeX with AVX-512, else Haswell), or OPENBLAS_CORETYPE when set (e.g. Haswell to compare
# with AVX2-only figures). Output: bench/results/latest.json (and latest-<kernel>.json) and a
# table on stdout. BENCH_QUICK=1 runs fewer steps.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build}
CDCD=${CDCD_BIN:-bin}/cdcd
PY=/usr/bin/python3
SHARED=${CDCD_SHARED_DATA:-$ROOT/../shared/data}
if [[ -z ${OPENBLAS_CORETYPE:-} ]]; then
  OPENBLAS_CORETYPE=$("$CDCD" bench --preset tiny --mode sample --batch 1 --seq 8 --threads 1 --steps 1 \
    --sample-steps 1 --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["blas_core"])') || {
    echo "bench: cannot run $CDCD" >&2; exit 1; }
fi
export OPENBLAS_CORETYPE
OUT=bench/results
mkdir -p "$OUT"
QUICK=${BENCH_QUICK:-0}
TRAIN_STEPS=$([[ $QUICK == 1 ]] && echo 3 || echo 6)
ROUNDS=$([[ $QUICK == 1 ]] && echo 1 || echo 3)
# Quick mode keeps one torch thread setting per case when asked (BENCH_TORCH_THREADS="2").
SAMPLE_STEPS=200
PRESETS=${BENCH_PRESETS:-tiny small}
J=$(mktemp -d)
trap 'rm -rf "$J"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB; OpenBLAS kernel $OPENBLAS_CORETYPE" >&2
"$BUILD/bench/bench_sgemm" 2 >"$J/sgemm.json"
"$BUILD/bench/bench_sgemm" 1 >"$J/sgemm1.json"
echo "sgemm: $(cat "$J/sgemm.json")" >&2

run_cdcd() { # preset mode batch threads -> json on stdout
  "$CDCD" bench --preset "$1" --mode "$2" --batch "$3" --seq 128 --threads "$4" \
    --steps "$([[ $2 == train ]] && echo $TRAIN_STEPS || echo 1)" --sample-steps $SAMPLE_STEPS --json
}
run_torch() { # preset mode batch threads passive
  local env=()
  [[ $5 == 1 ]] && env=(OMP_WAIT_POLICY=PASSIVE)
  env "${env[@]}" OMP_NUM_THREADS="$4" $PY tests/reference/bench_torch.py --preset "$1" --mode "$2" \
    --batch "$3" --seq 128 --threads "$4" \
    --steps "$([[ $2 == train ]] && echo $TRAIN_STEPS || echo 1)" --sample-steps $SAMPLE_STEPS
}

for preset in $PRESETS; do
  cases=("train 32" "sample 1" "sample 8")
  # Quick mode: small's batch-8 sampling (~10 minutes with both sides) is left out.
  [[ $QUICK == 1 && $preset == small ]] && cases=("train 32" "sample 1")
  for mode_batch in "${cases[@]}"; do
    set -- $mode_batch
    mode=$1 batch=$2
    key="$preset-$mode-$batch"
    echo "== $key" >&2
    for r in $(seq "$ROUNDS"); do
      run_cdcd "$preset" "$mode" "$batch" 2 >>"$J/$key.cdcd" 2>>"$J/err" || echo "cdcd failed ($key)" >&2
      # One thread: for the scaling figure (training only; sampling in full mode too).
      [[ $mode == train || ($r == 1 && $QUICK != 1) ]] && run_cdcd "$preset" "$mode" "$batch" 1 >>"$J/$key.cdcd1" 2>>"$J/err"
      for th in 2 1; do
        for passive in 1 0; do
          # The default wait policy is tried once (never in quick mode: PASSIVE was 10-30% faster here).
          [[ ($r -gt 1 || $QUICK == 1) && $passive == 0 ]] && continue
          run_torch "$preset" "$mode" "$batch" $th $passive >>"$J/$key.torch.$th.$passive" 2>>"$J/err" ||
            echo "torch failed ($key t$th p$passive)" >&2
        done
      done
    done
  done
done
if [[ -x $BUILD/bench/bench_tokenizer ]]; then
  "$BUILD/bench/bench_tokenizer" "$SHARED/bert-base-uncased-vocab.txt" "$SHARED/tinystories/train.txt" >"$J/tok.json" 2>>"$J/err"
fi

$PY - "$J" "$OUT/latest.json" "$PRESETS" <<'PYEOF'
import json, os, statistics, sys, glob
J, out, presets = sys.argv[1], sys.argv[2], sys.argv[3].split()
def load(path):
    rows = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                try: rows.append(json.loads(line))
                except Exception: pass
    return rows
def med(rows, key):
    v = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(v) if v else None
sgemm = json.load(open(f"{J}/sgemm.json"))["gflops"]
res = {"sgemm_gflops_2t": sgemm, "sgemm_gflops_1t": json.load(open(f"{J}/sgemm1.json"))["gflops"], "cases": []}
print(f"\nOpenBLAS kernels: {os.environ.get('OPENBLAS_CORETYPE')}; sgemm probe: {sgemm:.0f} GFLOP/s (2 threads)\n")
print(f"{'case':<20}{'cdcd tok/s':>12}{'torch tok/s':>13}{'ratio':>8}{'ceiling':>10}{'share':>8}{'cdcd MB':>9}{'torch MB':>10}  torch best")
for p in presets:
    for mode, b in (("train", 32), ("sample", 1), ("sample", 8)):
        key = f"{p}-{mode}-{b}"
        c = load(f"{J}/{key}.cdcd"); c1 = load(f"{J}/{key}.cdcd1")
        best = None
        for f in glob.glob(f"{J}/{key}.torch.*"):
            rows = load(f)
            m = med(rows, "tokens_per_s")
            if m and (best is None or m > best[0]):
                th, pas = f.rsplit(".", 2)[-2:]
                best = (m, f"{th} threads{', PASSIVE' if pas == '1' else ''}", med(rows, "peak_rss_mb"))
        ct = med(c, "tokens_per_s"); ct1 = med(c1, "tokens_per_s")
        gemm = med(c, "gemm_flops_per_token")
        ceiling = sgemm * 1e9 / gemm if gemm else None
        row = {"case": key, "cdcd_tokens_per_s": ct, "cdcd_1thread_tokens_per_s": ct1,
               "torch_tokens_per_s": best[0] if best else None, "torch_settings": best[1] if best else None,
               "ratio": (ct / best[0]) if ct and best else None,
               "gemm_ceiling_tokens_per_s": ceiling, "share_of_ceiling": (ct / ceiling) if ct and ceiling else None,
               "cdcd_peak_rss_mb": med(c, "peak_rss_mb"), "torch_peak_rss_mb": best[2] if best else None,
               "cdcd_step_ms": med(c, "step_ms_median"), "cdcd_gflops": med(c, "gflops"),
               "scaling_2t_over_1t": (ct / ct1) if ct and ct1 else None}
        res["cases"].append(row)
        f = lambda v, fmt: (fmt % v) if isinstance(v, (int, float)) else "-"
        print(f"{key:<20}{f(ct,'%.0f'):>12}{f(row['torch_tokens_per_s'],'%.0f'):>13}{f(row['ratio'],'%.2fx'):>8}"
              f"{f(ceiling,'%.0f'):>10}{f(row['share_of_ceiling'],'%.0f%%' if False else '%.2f'):>8}"
              f"{f(row['cdcd_peak_rss_mb'],'%.0f'):>9}{f(row['torch_peak_rss_mb'],'%.0f'):>10}  {row['torch_settings'] or '-'}")
        if mode == "sample" and ct:
            print(f"{'':<20}one 128-token story, {200} steps: cdcd {128*b/ct if False else 128/ct*1:.2f} s/story-equivalent"
                  if False else f"{'':<20}cdcd {b*128/ct:.2f} s per batch of {b} ({b*128/ct/b:.2f} s/story)")
tok = load(f"{J}/tok.json")
if tok:
    res["tokenizer"] = tok[0]
    print(f"\ntokenizer: {tok[0].get('mb_per_s', '?')} MB/s (one thread)")
for r in res["cases"]:
    if r["case"].startswith("small-train") and r["scaling_2t_over_1t"]:
        print(f"scaling small train: 2 threads = {r['scaling_2t_over_1t']:.2f}x 1 thread")
res["blas_core"] = os.environ.get("OPENBLAS_CORETYPE")
json.dump(res, open(out, "w"), indent=1)
kout = out.replace("latest.json", f"latest-{res['blas_core']}.json")
json.dump(res, open(kout, "w"), indent=1)
print(f"\nwritten {out} and {kout}")
PYEOF
