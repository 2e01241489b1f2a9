#!/usr/bin/env bash
# Runs every test family and ends with one line "N passed, N failed, N skipped".
#   1. unit tests (build/tests/test_*), normal build
#   2. the same unit tests under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)
#   3. integration tests (tests/integration/test_*.sh and test_*.py): daemon over HTTP, CLI,
#      PyTorch parity, systemd, browser
#   4. the daemon's integration tests (test_daemon_*.py) against cdcdd built with ASan+UBSan
#   5. fuzz: the libFuzzer targets (tests/fuzz/fuzz_*.c, built with clang into build-fuzz/),
#      each for FUZZ_TEST_SECONDS (default 15) on its seed corpus, one PASS/FAIL line each; a
#      crash's input is kept under tests/artifacts/fuzz/<target>/. SKIP when clang or
#      libFuzzer is missing (scripts/deps.sh installs them).
# Each family prints PASS/FAIL/SKIP lines ("SKIP name: reason": a check that could not be made
# here, e.g. missing data or a quality check the sanitizer pass cannot make); a binary or
# script that crashes counts as one failure, one that exits 0 with only SKIPs is fine. The
# failures, then the skips with their reasons, are listed before the summary, and each family
# ends with its wall time ("== unit tests: 42 s").
# Options (environment): TESTS_ONLY=unit|asan|integration|asan-daemon|fuzz, TEST_FILTER=substring,
# FUZZ_TEST_SECONDS=N.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CDCD_SHARED_DATA=${CDCD_SHARED_DATA:-$ROOT/../shared/data}
export CDCD_ROOT=$ROOT
ART=$ROOT/tests/artifacts
mkdir -p "$ART"
passed=0
failed=0
skipped=0
failed_names=()
skipped_names=()
family_times=()
last_skipped=0

count_output() { # $1 = label, $2 = log file, $3 = exit status
    local p f s
    p=$(grep -c '^PASS ' "$2" || true)
    f=$(grep -c '^FAIL ' "$2" || true)
    s=$(grep -c '^SKIP ' "$2" || true)
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + s))
    last_skipped=$s
    while read -r line; do failed_names+=("$1: ${line#FAIL }"); done < <(grep '^FAIL ' "$2" || true)
    while read -r line; do skipped_names+=("$1: ${line#SKIP }"); done < <(grep '^SKIP ' "$2" || true)
    if [[ $3 -ne 0 && $f -eq 0 ]]; then
        failed=$((failed + 1))
        failed_names+=("$1: exited with status $3 and no FAIL line (crash?)")
    fi
}

run_one() { # $1 = label, rest = command
    local label=$1; shift
    local log="$ART/$(echo "$label" | tr '/ ' '__').log"
    local t0=$SECONDS
    "$@" >"$log" 2>&1
    local rc=$?
    count_output "$label" "$log" $rc
    printf '%-48s %s (%ds%s)\n' "$label" "$([[ $rc -eq 0 ]] && echo ok || echo FAILED)" $((SECONDS - t0)) \
        "$( ((last_skipped)) && echo ", $last_skipped skipped")"
    if [[ $rc -ne 0 ]]; then grep -E '^(FAIL|  )' "$log" | head -40 | sed 's/^/    /'; tail -5 "$log" | sed 's/^/    | /'; fi
}

want() { [[ -z "${TESTS_ONLY:-}" || "$TESTS_ONLY" == "$1" ]]; }
family_t0=0
family_start() { # $1 = title
    echo "== $1"
    family_t0=$SECONDS
}
family_end() { # $1 = title
    local s=$((SECONDS - family_t0))
    echo "== $1: $s s"
    family_times+=("$1: $s s")
}
match() { [[ -z "${TEST_FILTER:-}" || "$1" == *"$TEST_FILTER"* ]]; }

if want unit; then
    family_start "unit tests"
    for t in build/tests/test_*; do
        [[ -x $t ]] || continue
        match "$t" || continue
        run_one "unit/$(basename "$t")" "$t"
    done
    family_end "unit tests"
fi

if want asan; then
    family_start "unit tests under ASan+UBSan"
    if make --no-print-directory -s BUILD=build-asan OPT=-O1 CUDA=0 \
        SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
        build-asan/libcdcd.a $(ls tests/unit/test_*.c | sed 's#tests/unit/\(.*\)\.c#build-asan/tests/\1#') \
        >"$ART/asan-build.log" 2>&1; then
        echo "(sanitizer build: $((SECONDS - family_t0)) s, included in the family's time)"
        for t in build-asan/tests/test_*; do
            [[ -x $t ]] || continue
            match "$t" || continue
            ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
                CDCD_TEST_FAST=1 run_one "asan/$(basename "$t")" "$t"
        done
    else
        failed=$((failed + 1)); failed_names+=("asan: build failed (see tests/artifacts/asan-build.log)")
        tail -20 "$ART/asan-build.log"
    fi
    family_end "unit tests under ASan+UBSan"
fi

if want integration; then
    family_start "integration tests"
    for t in tests/integration/test_*.sh tests/integration/test_*.py; do
        [[ -f $t ]] || continue
        match "$t" || continue
        case "$t" in
            *.py) run_one "integration/$(basename "$t")" /usr/bin/python3 "$t" ;;
            *) run_one "integration/$(basename "$t")" bash "$t" ;;
        esac
    done
    family_end "integration tests"
fi

# The daemon suites again, against cdcdd built with ASan+UBSan (bin-asan/): http, sse, runs,
# jobs and the trainer threads run under the sanitizers, crashes and kill -9 included. A
# sanitizer report (written under tests/artifacts/asan-daemon/) is a failure even when the
# test that provoked it passed.
if want asan-daemon; then
    family_start "daemon integration tests under ASan+UBSan"
    SAN_LOGS=$ART/asan-daemon
    rm -rf "$SAN_LOGS"
    mkdir -p "$SAN_LOGS"
    if make --no-print-directory -s BUILD=build-asan BIN=bin-asan OPT=-O1 CUDA=0 \
        SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" bin-asan/cdcdd bin-asan/cdcd \
        >"$ART/asan-daemon-build.log" 2>&1; then
        for t in tests/integration/test_daemon_*.py; do
            match "$t" || continue
            CDCD_BIN=bin-asan ASAN_OPTIONS=detect_leaks=1:log_path=$SAN_LOGS/asan \
                UBSAN_OPTIONS=print_stacktrace=1:log_path=$SAN_LOGS/ubsan \
                run_one "asan-daemon/$(basename "$t")" /usr/bin/python3 "$t"
        done
        for f in "$SAN_LOGS"/*; do
            [[ -f $f ]] || continue
            failed=$((failed + 1))
            failed_names+=("asan-daemon: sanitizer report $f: $(grep -m1 -E 'ERROR|runtime error' "$f")")
        done
    else
        failed=$((failed + 1)); failed_names+=("asan-daemon: build failed (see tests/artifacts/asan-daemon-build.log)")
        tail -20 "$ART/asan-daemon-build.log"
    fi
    family_end "daemon integration tests under ASan+UBSan"
fi

if want fuzz; then
    family_start "fuzz targets"
    fuzz_secs=${FUZZ_TEST_SECONDS:-15}
    probe=$(mktemp -d)
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }\n' \
        >"$probe/p.c"
    if ! command -v "${FUZZ_CC:-clang}" >/dev/null 2>&1; then
        echo "SKIP fuzz: ${FUZZ_CC:-clang} is not installed (scripts/deps.sh)" | tee "$ART/fuzz-skip.log"
        count_output "fuzz" "$ART/fuzz-skip.log" 0
    elif ! "${FUZZ_CC:-clang}" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" \
        >"$ART/fuzz-probe.log" 2>&1; then
        echo "SKIP fuzz: ${FUZZ_CC:-clang} cannot link libFuzzer (libclang-rt-14-dev; see" \
            "tests/artifacts/fuzz-probe.log)" | tee "$ART/fuzz-skip.log"
        count_output "fuzz" "$ART/fuzz-skip.log" 0
    elif make --no-print-directory -s -j2 fuzz-bins >"$ART/fuzz-build.log" 2>&1; then
        echo "(fuzz build: $((SECONDS - family_t0)) s, included in the family's time)"
        for f in tests/fuzz/fuzz_*.c; do
            n=$(basename "$f" .c)
            match "$n" || continue
            run_one "fuzz/$n" tests/fuzz/run.sh "$fuzz_secs" "$n"
            grep -h '^PASS ' "$ART/fuzz_$n.log" 2>/dev/null | sed 's/^/    /'
        done
    else
        failed=$((failed + 1)); failed_names+=("fuzz: build failed (see tests/artifacts/fuzz-build.log)")
        tail -20 "$ART/fuzz-build.log"
    fi
    rm -rf "$probe"
    family_end "fuzz targets"
fi

echo
if ((${#failed_names[@]})); then
    echo "failures:"
    printf '  %s\n' "${failed_names[@]}"
fi
if ((${#skipped_names[@]})); then
    echo "skipped:"
    printf '  %s\n' "${skipped_names[@]}"
fi
if ((${#family_times[@]})); then
    echo "times:"
    printf '  %s\n' "${family_times[@]}"
fi
echo "$passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
