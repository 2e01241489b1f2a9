#!/usr/bin/env bash
# systemd unit, example config, man page and install/uninstall (issue 9).
#   - systemd-analyze verify: the unit as shipped and as installed, with its ExecStart pointed
#     at an existing binary and MANPATH at our man page (verify checks both); any output fails
#   - systemd-analyze security --offline: exposure must be <= 2.0 (issue 15); the score is printed
#   - the unit has the settings issue 9 requires, and a comment above every setting
#   - scripts/install.sh into a temporary DESTDIR: the tree, modes, PREFIX rewriting, token,
#     re-install keeps an edited config, uninstall removes exactly what install put
# Prints PASS/FAIL lines; exits non-zero on any failure. Binaries from $CDCD_BIN (default bin);
# when they are not built, stand-in executables are installed instead (the tree is the same).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${CDCD_BIN:-bin}
[[ $BIN == /* ]] || BIN=$ROOT/$BIN
UNIT=$ROOT/systemd/cdcdd.service
CONF=$ROOT/systemd/cdcdd.conf
MAN=$ROOT/docs/cdcdd.8
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cdcdd-systemd-XXXXXX")
trap 'rm -rf "$TMP"' EXIT
failures=0

pass() { echo "PASS $1"; }
fail() {
    echo "FAIL $1: $2"
    failures=$((failures + 1))
}

# Binaries to install: the real ones when built, else stand-ins.
SRC_BIN=$TMP/srcbin
mkdir -p "$SRC_BIN"
for b in cdcdd cdcd; do
    if [[ -x $BIN/$b ]]; then
        cp "$BIN/$b" "$SRC_BIN/$b"
    else
        printf '#!/bin/sh\necho "stand-in %s"\n' "$b" >"$SRC_BIN/$b"
        chmod 0755 "$SRC_BIN/$b"
        echo "# note: $BIN/$b not built; installing a stand-in"
    fi
done
SRC_WEB=$TMP/srcweb
mkdir -p "$SRC_WEB/vendor"
echo '<!doctype html><title>cdcdd</title>' >"$SRC_WEB/index.html"
echo '// stand-in' >"$SRC_WEB/vendor/lib.js"
export CDCD_BIN=$SRC_BIN CDCD_WEB_DIST=$SRC_WEB

have_analyze=1
command -v systemd-analyze >/dev/null || have_analyze=0

# verify_unit NAME UNIT_FILE: copies the unit with ExecStart= on an existing executable and
# runs systemd-analyze verify with our man page reachable. Any message is a failure.
verify_unit() {
    local name=$1 unit=$2 dir out rc
    dir=$(mktemp -d "$TMP/verify-XXXXXX")
    mkdir -p "$dir/man/man8"
    cp "$MAN" "$dir/man/man8/cdcdd.8"
    sed -E "s#^ExecStart=[^ ]+#ExecStart=$SRC_BIN/cdcdd#" "$unit" >"$dir/cdcdd.service"
    out=$(cd "$dir" && MANPATH=$dir/man SYSTEMD_LOG_COLOR=0 systemd-analyze verify \
        "$dir/cdcdd.service" 2>&1)
    rc=$?
    if [[ $rc -eq 0 && -z $out ]]; then
        pass "$name"
    else
        fail "$name" "rc $rc: $(echo "$out" | head -5 | tr '\n' '|')"
    fi
}

# ---------------------------------------------------------------- the unit as shipped
if ((have_analyze)); then
    verify_unit systemd_verify_unit "$UNIT"

    # the check itself works: a misspelt key must be reported
    bad=$TMP/bad.service
    sed 's/^Type=notify$/Type=notify\nWatchdogSecs=10/' "$UNIT" >"$bad"
    out=$(cd "$TMP" && systemd-analyze verify --man=no "$bad" 2>&1)
    if grep -q "WatchdogSecs" <<<"$out"; then pass systemd_verify_catches_typos
    else fail systemd_verify_catches_typos "no complaint about WatchdogSecs: $out"; fi

    sec=$(cd "$TMP" && systemd-analyze security --offline=true --no-pager "$UNIT" 2>&1)
    score=$(sed -nE 's/.*Overall exposure level for [^:]+: ([0-9]+\.[0-9]+).*/\1/p' <<<"$sec")
    if [[ -z $score ]]; then
        fail systemd_security_exposure "no score in: $(tail -3 <<<"$sec" | tr '\n' '|')"
    elif awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
        echo "# systemd-analyze security exposure: $score"
        pass systemd_security_exposure
    else
        fail systemd_security_exposure "exposure $score > 2.0"
    fi
else
    for t in systemd_verify_unit systemd_verify_catches_typos systemd_security_exposure; do
        echo "SKIP $t: systemd-analyze not installed"
    done
fi

# ---------------------------------------------------------------- required settings
missing=()
for want in '^Type=notify$' '^WatchdogSec=[1-9]' '^Restart=on-failure$' \
    '^TimeoutStopSec=([6-9][0-9]|[1-9][0-9]{2,})s' '^KillMode=mixed$' '^DynamicUser=yes$' '^StateDirectory=cdcdd$' \
    '^ProtectSystem=strict$' '^ProtectHome=(yes|read-only|tmpfs)$' '^PrivateTmp=yes$' \
    '^NoNewPrivileges=yes$' '^RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX$' \
    '^SystemCallFilter=@system-service$' '^Environment=OPENBLAS_NUM_THREADS=' \
    '^ExecStart=/usr/local/bin/cdcdd ' '^ExecReload=' '^NotifyAccess=main$'; do
    grep -Eq "$want" "$UNIT" || missing+=("$want")
done
grep -Eq '^PrivateDevices=(yes|true|1)' "$UNIT" && missing+=("no PrivateDevices=yes (GPUs)")
grep -Eq '^ProcSubset=pid' "$UNIT" && missing+=("no ProcSubset=pid (CUDA needs /proc/driver)")
if ((${#missing[@]} == 0)); then pass systemd_unit_required_settings
else fail systemd_unit_required_settings "missing or wrong: ${missing[*]}"; fi

# every setting line has a comment line right above it (possibly after other comments)
uncommented=$(awk '/^[A-Za-z][A-Za-z]*=/ { if (prev !~ /^#/) print NR": "$0 } { prev = $0 }' "$UNIT")
if [[ -z $uncommented ]]; then pass systemd_unit_every_line_commented
else fail systemd_unit_every_line_commented "$(head -3 <<<"$uncommented" | tr '\n' '|')"; fi

# ---------------------------------------------------------------- man page
if command -v man >/dev/null; then
    warn=$(man --warnings -l "$MAN" 2>&1 >/dev/null)
    text=$(MANWIDTH=100 man -l "$MAN" 2>/dev/null)
    if [[ -z $warn ]] && grep -q "WatchdogSec" <<<"$text" && grep -q -- "--max-connections-per-ip" <<<"$text"
    then pass man_page_renders
    else fail man_page_renders "warnings: ${warn:0:300}"; fi
else
    echo "SKIP man_page_renders: man not installed"
fi

# ---------------------------------------------------------------- install / uninstall
D=$TMP/dest
out=$(scripts/install.sh "$D" /usr/local 2>&1)
rc=$?
P=$D/usr/local
expect_files=(
    "$P/bin/cdcdd" "$P/bin/cdcd" "$P/share/cdcdd/web/index.html" "$P/share/cdcdd/web/vendor/lib.js"
    "$P/lib/systemd/system/cdcdd.service" "$P/share/doc/cdcdd/cdcdd.conf.example"
    "$P/share/man/man8/cdcdd.8" "$D/etc/cdcdd/cdcdd.conf" "$D/etc/cdcdd/token"
    "$P/share/cdcdd/install-manifest"
)
for f in "$ROOT"/sql/*.sql; do [[ -f $f ]] && expect_files+=("$P/share/cdcdd/sql/$(basename "$f")"); done
problems=()
((rc == 0)) || problems+=("install.sh exited $rc: $out")
for f in "${expect_files[@]}"; do [[ -f $f ]] || problems+=("missing ${f#"$D"}"); done
# nothing else
extra=$(cd "$D" && find . -type f | sed 's#^\.##' | sort | while read -r f; do
    found=0
    for e in "${expect_files[@]}"; do [[ $D$f == "$e" ]] && found=1; done
    ((found)) || echo "$f"
done)
[[ -z $extra ]] || problems+=("unexpected files: $(tr '\n' ' ' <<<"$extra")")
[[ $(stat -c %a "$P/bin/cdcdd") == 755 ]] || problems+=("bin/cdcdd mode $(stat -c %a "$P/bin/cdcdd")")
[[ $(stat -c %a "$D/etc/cdcdd/token") == 600 ]] || problems+=("token mode $(stat -c %a "$D/etc/cdcdd/token")")
grep -Eqx '[0-9a-f]{64}' "$D/etc/cdcdd/token" || problems+=("token is not 64 hex digits")
cmp -s "$SRC_BIN/cdcdd" "$P/bin/cdcdd" || problems+=("bin/cdcdd differs from the source")
cmp -s "$UNIT" "$P/lib/systemd/system/cdcdd.service" || problems+=("unit changed for PREFIX=/usr/local")
cmp -s "$CONF" "$D/etc/cdcdd/cdcdd.conf" || problems+=("config differs from systemd/cdcdd.conf")
cmp -s "$SRC_WEB/vendor/lib.js" "$P/share/cdcdd/web/vendor/lib.js" || problems+=("web asset differs")
if ((${#problems[@]} == 0)); then pass install_tree
else fail install_tree "$(printf '%s; ' "${problems[@]}")"; fi

if ((have_analyze)); then verify_unit systemd_verify_installed_unit "$P/lib/systemd/system/cdcdd.service"
else echo "SKIP systemd_verify_installed_unit: systemd-analyze not installed"; fi

# re-install over an edited config: the config and token are kept, the rest refreshed
echo "max_runs = 7" >>"$D/etc/cdcdd/cdcdd.conf"
tok=$(cat "$D/etc/cdcdd/token")
out=$(scripts/install.sh "$D" /usr/local 2>&1)
if [[ $? -eq 0 ]] && grep -q "max_runs = 7" "$D/etc/cdcdd/cdcdd.conf" &&
    [[ $(cat "$D/etc/cdcdd/token") == "$tok" ]] && grep -q "keeping existing" <<<"$out"; then
    pass install_keeps_admin_config
else
    fail install_keeps_admin_config "$out"
fi

# uninstall: the edited config stays (reported), everything else goes, empty dirs too
out=$(scripts/install.sh --uninstall "$D" /usr/local 2>&1)
rc=$?
left=$(cd "$D" && find . -mindepth 1 | sort | tr '\n' ' ')
if [[ $rc -eq 0 && $left == "./etc ./etc/cdcdd ./etc/cdcdd/cdcdd.conf " ]] &&
    grep -q "keeping /etc/cdcdd/cdcdd.conf" <<<"$out"; then
    pass uninstall_keeps_only_edited_config
else
    fail uninstall_keeps_only_edited_config "rc $rc, left: $left; $out"
fi

# a clean install + uninstall at another PREFIX leaves DESTDIR empty
D2=$TMP/dest2
out=$(scripts/install.sh "$D2" /opt/cdcdd 2>&1)
rc=$?
unit2=$D2/opt/cdcdd/lib/systemd/system/cdcdd.service
problems=()
((rc == 0)) || problems+=("install rc $rc: $out")
grep -qx 'ExecStart=/opt/cdcdd/bin/cdcdd --config /etc/cdcdd/cdcdd.conf' "$unit2" ||
    problems+=("ExecStart not rewritten: $(grep ^ExecStart "$unit2")")
grep -qx 'web_dir = /opt/cdcdd/share/cdcdd/web' "$D2/etc/cdcdd/cdcdd.conf" ||
    problems+=("web_dir not rewritten")
[[ -x $D2/opt/cdcdd/bin/cdcdd ]] || problems+=("no bin/cdcdd")
if ((${#problems[@]} == 0)); then pass install_prefix_rewrite
else fail install_prefix_rewrite "$(printf '%s; ' "${problems[@]}")"; fi

out=$(scripts/install.sh --uninstall "$D2" /opt/cdcdd 2>&1)
rc=$?
left=$(cd "$D2" && find . -mindepth 1 | head -5 | tr '\n' ' ')
if [[ $rc -eq 0 && -z $left ]]; then pass uninstall_leaves_destdir_empty
else fail uninstall_leaves_destdir_empty "rc $rc, left: $left; $out"; fi

# uninstall keeps files that install did not put there
D3=$TMP/dest3
mkdir -p "$D3/usr/local/bin"
echo keep >"$D3/usr/local/bin/other-tool"
scripts/install.sh "$D3" /usr/local >/dev/null 2>&1 &&
    scripts/install.sh --uninstall "$D3" /usr/local >/dev/null 2>&1
left=$(cd "$D3" && find . -mindepth 1 | sort | tr '\n' ' ')
if [[ $left == "./usr ./usr/local ./usr/local/bin ./usr/local/bin/other-tool " ]]; then
    pass uninstall_only_removes_own_files
else
    fail uninstall_only_removes_own_files "left: $left"
fi

# bad arguments are refused
if ! scripts/install.sh "$TMP/x" relative/prefix >/dev/null 2>&1 &&
    ! scripts/install.sh onlyone >/dev/null 2>&1; then
    pass install_refuses_bad_arguments
else
    fail install_refuses_bad_arguments "accepted a relative PREFIX or a missing argument"
fi

exit $((failures > 0))
