#!/usr/bin/env bash
# The GPU check of issue 14, one script for the lent device machine (one H200; CUDA, nvcc,
# gcc and PyTorch there, no Debian -dev packages, no network). Sized for 8 minutes.
#   here:   scripts/gpu-debs.sh                      (the .deb files, into .debs/)
#   device: run command="bash scripts/gpu-check.sh"  carry=[".debs"]  timeout_s=540
# It builds bin/cdcd, bin/cdcdd and the GPU tests against the carried packages (unpacked
# into a private sysroot), runs the parity tests (per op, whole model, the sampler's grammar,
# resume and the daemon on the GPU), then the benchmark of the issue: cdcd against the
# PyTorch reference on the same GPU (eager and torch.compile, fp32 + TF32, and bf16
# autocast for PyTorch), training tiny / small / base at 32x128 and 256x128 (MFU for base),
# sampling tiny at batch 1 and 64. Everything lands in $OUT (the device tool brings it back):
# gpu-check.log (all output), tests.txt, bench.jsonl (one JSON line per run), summary.md.
# Off the device machine (no GPU) it still runs: the tests SKIP and the benchmark is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
T0=$(date +%s)
elapsed() { echo "$(($(date +%s) - T0)) s"; }
JOBS=$(nproc)

# ---- 1. the carried Debian packages, unpacked into a sysroot the build and the binaries use
SYS=/tmp/cdcd-sysroot
if compgen -G ".debs/*.deb" >/dev/null; then
  mkdir -p "$SYS"
  for f in .debs/*.deb; do dpkg -x "$f" "$SYS"; done
  export PATH=$SYS/usr/bin:$PATH
  export PKG_CONFIG_SYSROOT_DIR=$SYS PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
  export PKG_CONFIG_PATH=$SYS/usr/lib/x86_64-linux-gnu/pkgconfig:$SYS/usr/lib/x86_64-linux-gnu/openblas-pthread/pkgconfig:$SYS/usr/share/pkgconfig
  export CPATH=$SYS/usr/include${CPATH:+:$CPATH}
  export LIBRARY_PATH=$SYS/usr/lib/x86_64-linux-gnu:$SYS/usr/lib/x86_64-linux-gnu/openblas-pthread${LIBRARY_PATH:+:$LIBRARY_PATH}
  export LD_LIBRARY_PATH=$LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "gpu-check: $(ls .debs/*.deb | wc -l) packages unpacked into $SYS ($(elapsed))"
else
  echo "gpu-check: no .debs/ (run scripts/gpu-debs.sh here first, carry .debs): using the system's packages"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
if [[ -z ${CDCD_SHARED_DATA:-} && -d .debs/data ]]; then export CDCD_SHARED_DATA=$PWD/.debs/data; fi
export CDCD_SHARED_DATA=${CDCD_SHARED_DATA:-$PWD/../shared/data}

# ---- 2. build (MPI off: not needed here; the CUDA backend on: nvcc is there)
BUILD=build-gpu BIN=bin-gpu
if ! make -s -j"$JOBS" BUILD=$BUILD BIN=$BIN MPI=0 CUDA=1 $BIN/cdcd $BIN/cdcdd \
     $BUILD/tests/test_backend_cuda $BUILD/tests/test_model_cuda $BUILD/tests/test_sampler >"$OUT/build.log" 2>&1; then
  echo "gpu-check: build failed ($(elapsed)):"; tail -30 "$OUT/build.log"
  exit 1
fi
echo "gpu-check: built ($(elapsed))"

# ---- 3. the parity tests (SKIP lines count; no GPU = SKIP, never a pass)
: >"$OUT/tests.txt"
for t in test_backend_cuda test_model_cuda test_sampler; do
  echo "== $t" | tee -a "$OUT/tests.txt"
  timeout 240 "$BUILD/tests/$t" 2>&1 | tee -a "$OUT/tests.txt" | grep -E "^(PASS|FAIL|SKIP|#)|relative|worst|grammar" || true
done
if [[ -d "$CDCD_SHARED_DATA" ]]; then
  echo "== test_cuda.py" | tee -a "$OUT/tests.txt"
  CDCD_BIN=$BIN timeout 300 python3 tests/integration/test_cuda.py 2>&1 | tee -a "$OUT/tests.txt" | grep -E "^(PASS|FAIL|SKIP)" || true
else
  echo "SKIP test_cuda.py: no data at $CDCD_SHARED_DATA" | tee -a "$OUT/tests.txt"
fi
echo "gpu-check: tests done ($(elapsed)): $(grep -c '^PASS' "$OUT/tests.txt") PASS, $(grep -c '^FAIL' "$OUT/tests.txt") FAIL, $(grep -c '^SKIP' "$OUT/tests.txt") SKIP"

# ---- 4. the benchmark, cdcd and PyTorch on the same GPU, one after the other
if ! nvidia-smi >/dev/null 2>&1; then
  echo "gpu-check: no GPU here: benchmark skipped"
  exit 0
fi
J=$OUT/bench.jsonl
: >"$J"
cdcd_bench() { # preset mode batch steps
  timeout 120 "$BIN/cdcd" bench --device cuda --preset "$1" --mode "$2" --batch "$3" --seq 128 --steps "$4" \
    --sample-steps 200 --json 2>>"$OUT/bench.err" | sed "s/^{/{\"impl\":\"cdcd\",/" >>"$J" ||
    echo "cdcd bench failed: $*" | tee -a "$OUT/bench.err"
}
torch_bench() { # preset mode batch steps [--compile] [--bf16]
  local p=$1 m=$2 b=$3 s=$4; shift 4
  timeout 150 python3 tests/reference/bench_torch.py --device cuda --preset "$p" --mode "$m" --batch "$b" --seq 128 \
    --steps "$s" --sample-steps 200 "$@" 2>>"$OUT/bench.err" | tail -1 >>"$J" ||
    echo "torch bench failed: $p $m $b $*" | tee -a "$OUT/bench.err"
}
for p in tiny small base; do
  for b in 32 256; do
    cdcd_bench "$p" train "$b" 10
    torch_bench "$p" train "$b" 10
  done
  echo "gpu-check: $p training measured ($(elapsed))"
done
cdcd_bench tiny sample 1 3
cdcd_bench tiny sample 64 3
torch_bench tiny sample 1 3
torch_bench tiny sample 64 3
echo "gpu-check: sampling measured ($(elapsed))"
# torch.compile and bf16 last: compilation takes a while, and the time is capped
torch_bench tiny train 32 10 --compile
torch_bench base train 256 10 --compile
torch_bench base train 256 10 --bf16
torch_bench small train 32 10 --compile
torch_bench tiny sample 1 3 --compile
torch_bench base train 256 10 --compile --bf16
echo "gpu-check: benchmark done ($(elapsed))"

python3 - "$J" "$OUT/summary.md" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
LAYERS = {"tiny": (4, 256), "small": (8, 512), "base": (8, 1024)}  # (L, D) of core/model_config.c
TF32_PEAK = 494.7e12  # H200 dense TF32 tensor-core peak, FLOP/s
def key(r):
    c = r.get("config", {})
    return (r.get("mode"), r.get("preset") or c.get("preset"), r.get("batch") or c.get("batch"))
def variant(r):
    if r.get("impl") == "cdcd":
        return "cdcd"
    return ("compile" if r.get("compile") else "eager") + ("-bf16" if r.get("bf16") else "")
cases = {}
for r in rows:
    cases.setdefault(key(r), {})[variant(r)] = r
def tps(r):
    return r["tokens_per_s"] if r else None
def fmt(x):
    return f"{x:,.0f}" if x else "-"
def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"
out = ["| case | cdcd tok/s | torch eager | torch compile | torch bf16 (eager / compile) | cdcd/eager | cdcd/compile | cdcd ms | cdcd MFU |",
       "|---|---|---|---|---|---|---|---|---|"]
for (mode, preset, batch), v in sorted(cases.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
    c, e, k = v.get("cdcd"), v.get("eager"), v.get("compile")
    bf = f"{fmt(tps(v.get('eager-bf16')))} / {fmt(tps(v.get('compile-bf16')))}"
    mfu = "-"
    if c and mode == "train" and preset in LAYERS:
        L, D = LAYERS[preset]
        per_token = 6 * c["params"] + 12 * L * D * 128  # 6N + 12 L D T (bidirectional attention)
        mfu = f"{tps(c) * per_token / TF32_PEAK * 100:.1f}%"
    ms = f"{c['step_ms_median']:.2f}" if c else "-"
    out.append(f"| {mode} {preset} {batch}x128 | {fmt(tps(c))} | {fmt(tps(e))} | {fmt(tps(k))} | {bf} | "
               f"{ratio(tps(c), tps(e))} | {ratio(tps(c), tps(k))} | {ms} | {mfu} |")
out.append("")
out.append("Targets: training >= 1.5x torch eager and >= 1.0x torch.compile at the same precision; "
           "sampling tiny batch 1 (one 200-step story) <= 250 ms. MFU against 494.7 TFLOP/s (dense TF32), "
           "counting 6N + 12 L D T FLOPs per token.")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PYEOF
echo "gpu-check: finished ($(elapsed))"
