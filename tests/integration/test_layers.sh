#!/usr/bin/env bash
# The build keeps the layers apart (Makefile): core/ compiles with -Icore and core's packages
# only, so a core file that includes a daemon header does not build; bin/cdcd and the unit
# tests of core link core's packages only (no libmicrohttpd, SQLite, libuv); unit tests of
# daemon code link the daemon's archive; `make run` installs the build packages only.
# The link lines are checked as well as ldd: the toolchain links with --as-needed, which
# would hide extra -l flags from ldd.
set -uo pipefail
ROOT=${CDCD_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${CDCD_BIN:-$ROOT/bin}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; fails=$((fails + 1)); }
cd "$ROOT" || exit 1
DAEMON_LIBS='lib(microhttpd|sqlite3|uv)\b|-l(microhttpd|sqlite3|uv)\b'

# 1. The CLI binary needs none of the daemon's libraries.
if [[ -x $BIN/cdcd ]] && ldd "$BIN/cdcd" >"$T/ldd" 2>&1; then
  if grep -qE "$DAEMON_LIBS" "$T/ldd"; then fail layers_cdcd_ldd "$(grep -E "$DAEMON_LIBS" "$T/ldd" | tr '\n' ' ')"; else pass layers_cdcd_ldd; fi
else
  fail layers_cdcd_ldd "cannot ldd $BIN/cdcd: $(cat "$T/ldd" 2>/dev/null)"
fi

# 2. The link lines make would run (dry run of a fresh build in a scratch directory).
make -n -B --no-print-directory BUILD="$T/b" BIN="$T/bin" "$T/bin/cdcd" "$T/bin/cdcdd" \
  "$T/b/tests/test_ckpt" "$T/b/tests/test_store" >"$T/dry" 2>&1
link() { grep -E -- "-o $1( |$)" "$T/dry" | grep -v -- ' -c '; }
cli=$(link "$T/bin/cdcd")
[[ -n $cli ]] && ! grep -qE "$DAEMON_LIBS|-lsystemd|libcdcdd\.a" <<<"$cli" && pass layers_cdcd_link_line ||
  fail layers_cdcd_link_line "${cli:-no link line for bin/cdcd}"
core_test=$(link "$T/b/tests/test_ckpt")
[[ -n $core_test ]] && ! grep -qE "$DAEMON_LIBS|-lsystemd|libcdcdd\.a|-Idaemon" <<<"$core_test" &&
  pass layers_core_test_link_line || fail layers_core_test_link_line "${core_test:-no link line for test_ckpt}"
daemon_test=$(link "$T/b/tests/test_store")
[[ -n $daemon_test ]] && grep -q "libcdcdd\.a" <<<"$daemon_test" && grep -q -- "-lsqlite3" <<<"$daemon_test" &&
  ! grep -q "daemon/main\.o" <<<"$daemon_test" && pass layers_daemon_test_archive ||
  fail layers_daemon_test_archive "${daemon_test:-no link line for test_store}"
daemon=$(link "$T/bin/cdcdd")
[[ -n $daemon ]] && grep -q -- "-lmicrohttpd" <<<"$daemon" && pass layers_daemon_link_line ||
  fail layers_daemon_link_line "${daemon:-no link line for bin/cdcdd}"

# 3. With core's flags a core header and core's packages are found, a daemon header is not;
#    the same for the CLI's flags.
for layer in CORE CLI; do
  flags=$(make -s --no-print-directory "print-${layer}_CFLAGS")
  printf '#include <cblas.h>\n#include <utf8proc.h>\n#include <cJSON.h>\n#include "tokenizer.h"\nint probe_ok;\n' >"$T/ok.c"
  printf '#include "tokenizer.h"\n#include "store.h"\nint probe_bad;\n' >"$T/bad.c"
  eval "cc $flags -c $T/ok.c -o $T/ok.o" >"$T/ok.log" 2>&1; ok=$?
  eval "cc $flags -c $T/bad.c -o $T/bad.o" >"$T/bad.log" 2>&1; bad=$?
  name=layers_$(tr 'A-Z' 'a-z' <<<"$layer")_cannot_include_daemon
  [[ $ok -eq 0 && $bad -ne 0 ]] && grep -q "store.h" "$T/bad.log" && pass "$name" ||
    fail "$name" "own headers: rc $ok $(head -3 "$T/ok.log" | tr '\n' ' '); daemon header: rc $bad"
done
# 4. `make run` installs only what building and running need; `make test` everything.
make -n --no-print-directory run >"$T/run.dry" 2>&1
make -n --no-print-directory test >"$T/test.dry" 2>&1
build_pkgs=$(sed -n '/^BUILD_PKGS=(/,/^)/p' scripts/deps.sh)
[[ $(head -1 "$T/run.dry") == "scripts/deps.sh --build-only" && $(head -1 "$T/test.dry") == "scripts/deps.sh" ]] &&
  grep -qw npm <<<"$build_pkgs" && ! grep -qE 'torch|chromium|wrk' <<<"$build_pkgs" && pass layers_run_deps_build_only ||
  fail layers_run_deps_build_only "make run: $(head -1 "$T/run.dry"); make test: $(head -1 "$T/test.dry"); $build_pkgs"
exit $((fails > 0))
