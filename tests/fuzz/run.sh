#!/usr/bin/env bash
# Runs libFuzzer targets for a fixed time each and prints one line per target:
#   PASS fuzz_x: N execs in S s (cov C, corpus K)
#   FAIL fuzz_x: crash, reproducer tests/artifacts/fuzz/fuzz_x/crash-... (first lines of the report)
# Usage: tests/fuzz/run.sh SECONDS [fuzz_name...]   (default: every tests/fuzz/fuzz_*.c)
# The targets come from `make fuzz-bins` ($FUZZ_BUILD, default build-fuzz). Each runs on one
# core, on a working copy of its seed corpus ($FUZZ_BUILD/fuzz-corpus/<target>/, which
# grows across runs; the seeds in tests/fuzz/corpus/<target>/ are read, never written).
# A crash, a sanitizer report, a leak, a timeout (FUZZ_TIMEOUT s for one input, default 10)
# or running out of memory is a FAIL; the input that did it is saved under
# tests/artifacts/fuzz/<target>/ and the full log next to it (<target>.log). Reproduce with
#   build-fuzz/fuzz/<target> tests/artifacts/fuzz/<target>/crash-...
# Exit status: 0 when every target passed.
#
# The targets (one file each in tests/fuzz/):
#   fuzz_runconfig    core/runconfig.c: parse + validate, to_json round trip
#   fuzz_daemon_json  daemon/json.c: cdcdd_json_parse, typed getters, only_keys
#   fuzz_router       daemon/router.c: cdcdd_dispatch_decide over daemon/api.c's route table
#   fuzz_tokenizer    core/tokenizer.c: encode (specials flag) and decode
#   fuzz_tokfile      core/tokfile.c open/verify, core/batch.c over the mapped file
#   fuzz_ckpt         core/ckpt.c open/get/read_exact, and the sections' parsers
#   fuzz_schedule     core/schedule.c cdcd_schedule_deserialise, then sampling and refits
#   fuzz_options      daemon/options.c: config file, cdcdd_options_set, validate, dump
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=${1:?usage: tests/fuzz/run.sh SECONDS [fuzz_name...]}
shift
B=${FUZZ_BUILD:-build-fuzz}
ART=tests/artifacts/fuzz
names=("$@")
if ((${#names[@]} == 0)); then
    for f in tests/fuzz/fuzz_*.c; do names+=("$(basename "$f" .c)"); done
fi
export CDCD_SHARED_DATA=${CDCD_SHARED_DATA:-$PWD/../shared/data}
# Leaks are bugs too; UBSan findings stop the target (built with -fno-sanitize-recover).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=0
for n in "${names[@]}"; do
    bin=$B/fuzz/$n
    if [[ ! -x $bin ]]; then
        echo "FAIL $n: $bin is not built (make fuzz-bins)"
        failed=$((failed + 1))
        continue
    fi
    work=$B/fuzz-corpus/$n
    mkdir -p "$work" "$ART/$n"
    log=$ART/$n.log
    t0=$(date +%s.%N)
    "$bin" -max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$ART/$n/" "$work" "tests/fuzz/corpus/$n" >"$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    dur=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$last")
    if [[ $rc -eq 0 ]]; then
        echo "PASS $n: ${execs:-?} execs in $dur s (cov ${cov:-?}, corpus ${corp:-?})"
    else
        failed=$((failed + 1))
        repro=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        echo "FAIL $n: exit $rc after $dur s, ${execs:-?} execs; reproducer ${repro:-none}; log $log"
        grep -E '^==[0-9]+==ERROR|^SUMMARY: |runtime error|invariant broken|ALARM: |out-of-memory' "$log" | head -5 |
            sed 's/^/  /'
    fi
done
exit $((failed > 0))
