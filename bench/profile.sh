#!/usr/bin/env bash
# bench/profile.sh: where the time of one `cdcd bench` case goes, by category.
#
#   bench/profile.sh train tiny 32        # 3 training steps, batch 32 x 128, 2 threads
#   bench/profile.sh sample tiny 1        # one story, 50 Euler steps, batch 1
#
# Runs the case under `perf record` (package linux-perf; needs perf_event access, so root or
# kernel.perf_event_paranoid <= 1), then folds the per-symbol self time into the categories
# of docs/performance.md: GEMM kernel, GEMM packing, BLAS thread waits, pool waits, head
# softmax / cross-entropy, attention softmax, norms, elementwise, optimiser, memory, setup,
# other. Shares are of all samples on every thread (CPU time, not wall time): a thread
# spinning while it waits shows up as its waiting category. Prints a table and writes
# bench/results/profile-<case>.txt. Set CDCD_BIN to profile another build.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-sample} preset=${2:-tiny} batch=${3:-1}
CDCD=${CDCD_BIN:-bin}/cdcd
command -v perf >/dev/null || { echo "profile.sh: perf not found (apt-get install linux-perf)" >&2; exit 2; }
[[ -x $CDCD ]] || { echo "profile.sh: $CDCD not built (make)" >&2; exit 2; }
steps=$([[ $mode == train ]] && echo 3 || echo 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p bench/results
perf record -q -o "$tmp/perf.data" -- "$CDCD" bench --preset "$preset" --mode "$mode" --batch "$batch" \
  --seq 128 --threads 2 --steps "$steps" --sample-steps 50 --json >"$tmp/bench.json"
perf report -i "$tmp/perf.data" --no-children -g none --sort symbol --stdio -F overhead,sym \
  --percent-limit 0 2>/dev/null >"$tmp/report.txt"
/usr/bin/python3 - "$tmp/report.txt" "$tmp/bench.json" "$mode-$preset-b$batch" <<'PYEOF'
import json, re, sys
report, bench, case = sys.argv[1:4]
rules = [  # first match wins; the pattern is searched in the symbol name
    ("GEMM kernel", r"gemm_kernel|sgemm_small_kernel|gemm_direct"),
    ("GEMM packing/beta", r"gemm_.*copy|gemm_beta|sgemm_[io][nt]copy"),
    ("BLAS thread waits", r"blas_thread_server|sched_yield|do_sched_yield|__schedule|exec_blas|inner_thread"),
    ("pool waits", r"pool_worker|cdcd_pool_run|cdcd_pool_for|futex|pthread_cond|syscall"),
    ("head softmax/CE", r"infer_row|head_|row_max|ce_|expf|log_softmax|vocab_block"),
    ("attention softmax", r"attn_"),
    ("norms (adaLN, LN, QK, etab)", r"adaln|layernorm|l2norm|qk_|etab"),
    ("elementwise (GELU, gates, bias, channels)", r"gelu|gate_|silu|bias|chan_range|noisy_range|guide|colsum|time_"),
    ("optimiser", r"adam|sqnorm"),
    ("memory (copy, zero, faults)", r"mem(cpy|move|set)|page_fault|clear_page|do_anonymous|_raw_spin"),
    ("sampler + rng", r"sampler|euler|rng"),
    ("setup (init)", r"sincos|init_params|__ieee754_log|cdcd_model_create"),
]
cats = {name: 0.0 for name, _ in rules}
cats["other"] = 0.0
tops = []
tops_all = []
for line in open(report):
    m = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(\S+)", line)
    if not m:
        continue
    pct, sym = float(m.group(1)), m.group(2)
    tops.append((pct, sym))
    for name, pat in rules:
        if re.search(pat, sym):
            cats[name] += pct
            break
    else:
        cats["other"] += pct
b = json.load(open(bench))
lines = [f"profile {case}: {b['mode']} {b['preset']} batch {b['batch']}x{b['seq']}, "
         f"2 threads, {b['gflops']:.1f} GFLOP/s achieved, step {b['step_ms']['median']:.0f} ms"]
lines.append(f"{'category':44s} {'CPU %':>6s}")
for name, pct in sorted(cats.items(), key=lambda kv: -kv[1]):
    if pct >= 0.05:
        lines.append(f"{name:44s} {pct:6.1f}")
tops.sort(reverse=True)
lines.append("top symbols: " + ", ".join(f"{s} {p:.1f}" for p, s in tops[:10]))
text = "\n".join(lines)
print(text)
open(f"bench/results/profile-{case}.txt", "w").write(text + "\n")
PYEOF
