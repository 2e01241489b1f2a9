#!/usr/bin/env bash
# Data-parallel training speed on this machine (issue 15): each preset at 1 rank x T
# threads against R ranks x T/R threads (mpirun), same global batch, same steps, one after
# the other; then the all-reduce's share of a step, with the all-reduce after backward and
# with distributed.overlap (sums on a communication thread, layer by layer during backward:
# the share is then the wait that is left, and the last column the sums' own time). Needs a quiet machine (a benchmark, not
# a test). Prints a table and writes bench/results/mpi_throughput.txt.
# Usage: bench/mpi_throughput.sh [--steps N] [--ranks R] [--threads T] [--presets "tiny small"]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=8 RANKS=2 THREADS=2 PRESETS="tiny small"
while (($#)); do
  case "$1" in
    --steps) STEPS=$2; shift 2 ;;
    --ranks) RANKS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --presets) PRESETS=$2; shift 2 ;;
    *) echo "mpi_throughput.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v mpirun >/dev/null || { echo "mpi_throughput.sh: mpirun not found (scripts/deps.sh)" >&2; exit 2; }
[[ -x bin/cdcd ]] || { echo "mpi_throughput.sh: build first (make)" >&2; exit 2; }
[[ -f data/train.tok ]] || { echo "mpi_throughput.sh: make data first" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p bench/results
out=bench/results/mpi_throughput.txt
per_rank=$((THREADS / RANKS)); ((per_rank >= 1)) || per_rank=1

# median step time (ms) of steps 2.. from a metrics.csv (column 7: step_ms)
median_ms() { awk -F, 'NR > 2 { print $7 }' "$1" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

{
  printf '# %s, commit %s, %s steps, %s\n' "$(date -u +%FT%TZ)" "$(git rev-parse --short HEAD)" "$STEPS" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  printf '| preset | layout | step ms (median) | positions/s (B×T per step) | all-reduce ms per step (exposed) | share | overlapped sums ms |\n|---|---|---|---|---|---|---|\n'
  for p in $PRESETS; do
    cfg="$tmp/$p.json"
    printf '{"preset":"%s","train":{"max_steps":%d,"minutes":0,"threads":%d,"checkpoint_every":1000000,"valid_every":1000000}}\n' \
      "$p" "$STEPS" "$THREADS" > "$cfg"
    bin/cdcd train --config "$cfg" --data-dir data --out "$tmp/$p-1" --quiet >"$tmp/$p-1.log" 2>&1
    bt=$(python3 -c "import json,sys; c=json.load(open('$tmp/$p-1/config.json')); print(c['train']['batch_size']*c['data']['seq_len'])")
    ms=$(median_ms "$tmp/$p-1/metrics.csv")
    printf '| %s | 1 rank x %d threads | %.0f | %.0f | | | |\n' "$p" "$THREADS" "$ms" "$(awk -v b="$bt" -v m="$ms" 'BEGIN { print b * 1000 / m }')"
    for ov in false true; do
      cfgr="$tmp/$p-r-$ov.json"
      sed -e "s/\"threads\":$THREADS/\"threads\":$per_rank/" -e "s/}}\$/},\"distributed\":{\"overlap\":$ov}}/" "$cfg" > "$cfgr"
      mpirun -np "$RANKS" --bind-to none bin/cdcd train --config "$cfgr" --data-dir data --out "$tmp/$p-r-$ov" --quiet \
        >"$tmp/$p-r-$ov.log" 2>&1
      ms=$(median_ms "$tmp/$p-r-$ov/metrics.csv")
      line=$(grep -m1 'all-reduce' "$tmp/$p-r-$ov.log" || true)
      ar=$(sed -n 's/.*of which \([0-9.]*\) ms [a-z -]*all-reduce (\([0-9.]*\)%).*/\1 \2/p' <<<"$line")
      busy=$(sed -n 's/.*overlapped gradient sums took \([0-9.]*\) ms.*/\1/p' <<<"$line")
      printf '| %s | %d ranks x %d thread(s)%s | %.0f | %.0f | %s | %s%% | %s |\n' "$p" "$RANKS" "$per_rank" \
        "$([[ $ov == true ]] && echo ', overlap')" "$ms" \
        "$(awk -v b="$bt" -v m="$ms" 'BEGIN { print b * 1000 / m }')" "${ar% *}" "${ar#* }" "${busy:-}"
    done
  done
} | tee "$out"
