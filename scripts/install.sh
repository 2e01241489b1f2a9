#!/usr/bin/env bash
# Installs or uninstalls cdcdd. Called by `make install` / `make uninstall`:
#
#   scripts/install.sh [--uninstall] DESTDIR PREFIX
#
# DESTDIR (may be empty) is prepended to every path, for packaging and tests; PREFIX is the
# final location (default /usr/local). Environment overrides:
#   CDCD_BIN=bin            where the built cdcdd and cdcd are
#   CDCD_WEB_DIST=web/dist  built dashboard assets (skipped with a warning when absent)
#   SYSCONFDIR=/etc         where cdcdd/cdcdd.conf and cdcdd/token go
#
# What goes where (PREFIX=/usr/local):
#   bin/cdcdd, bin/cdcd                         0755
#   share/cdcdd/web/...                         dashboard assets
#   share/cdcdd/sql/*.sql                       database schema files
#   lib/systemd/system/cdcdd.service            the unit, ExecStart pointed at PREFIX/bin/cdcdd
#   share/doc/cdcdd/cdcdd.conf.example          the documented example configuration
#   share/man/man8/cdcdd.8                      the manual
#   /etc/cdcdd/cdcdd.conf                       only if absent (an edited config is never replaced)
#   /etc/cdcdd/token                            only if absent: 64 random hex digits, mode 0600
#   share/cdcdd/install-manifest                every file (with its SHA-256) and directory created
#
# Uninstall reads the manifest and removes exactly what install created: files, then the
# directories it made, if empty. Config and token files that were edited since are kept (and
# reported), so an uninstall never destroys an administrator's settings or secret.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=install
if [[ ${1:-} == --uninstall ]]; then
    MODE=uninstall
    shift
fi
if [[ $# -ne 2 ]]; then
    echo "usage: $0 [--uninstall] DESTDIR PREFIX" >&2
    exit 2
fi
DESTDIR=$1
PREFIX=${2:-/usr/local}
PREFIX=${PREFIX%/}
SYSCONFDIR=${SYSCONFDIR:-/etc}
SYSCONFDIR=${SYSCONFDIR%/}
BINSRC=${CDCD_BIN:-bin}
WEBSRC=${CDCD_WEB_DIST:-web/dist}
[[ $BINSRC == /* ]] || BINSRC=$ROOT/$BINSRC
[[ $WEBSRC == /* ]] || WEBSRC=$ROOT/$WEBSRC

die() { echo "install.sh: $*" >&2; exit 1; }
[[ $PREFIX == /* ]] || die "PREFIX must be an absolute path (got '$PREFIX')"
[[ $SYSCONFDIR == /* ]] || die "SYSCONFDIR must be an absolute path (got '$SYSCONFDIR')"
[[ -z $DESTDIR || $DESTDIR == /* ]] || DESTDIR=$PWD/$DESTDIR
# They are substituted into the unit with sed: keep them to plain path characters.
for v in "$PREFIX" "$SYSCONFDIR"; do
    [[ $v =~ ^[A-Za-z0-9._/+-]*$ ]] || die "unsupported characters in path '$v'"
done

MANIFEST=$PREFIX/share/cdcdd/install-manifest # a final path; DESTDIR is added on use
UNITDIR=$PREFIX/lib/systemd/system
CONFDIR=$SYSCONFDIR/cdcdd

# ---------------------------------------------------------------- manifest bookkeeping
# Entries are final paths (without DESTDIR): "d PATH" for a directory we created,
# "f SHA256 PATH" for a file we wrote. Order matters for directories (parents first).
declare -a DIRS=()
declare -A FILES=()    # path -> sha256
declare -a FILE_ORDER=()

load_manifest() {
    local kind a b
    [[ -f $DESTDIR$MANIFEST ]] || return 0
    while read -r kind a b; do
        case $kind in
            d) DIRS+=("$a") ;;
            f) [[ -n ${FILES[$b]+x} ]] || FILE_ORDER+=("$b"); FILES[$b]=$a ;;
        esac
    done <"$DESTDIR$MANIFEST"
}

record_file() { # final path
    local sum
    sum=$(sha256sum "$DESTDIR$1" | cut -d' ' -f1)
    [[ -n ${FILES[$1]+x} ]] || FILE_ORDER+=("$1")
    FILES[$1]=$sum
}

# mkdir -p that records every directory it had to create.
make_dir() { # final path
    local path=$1 part="" comp
    local IFS=/
    for comp in $path; do
        [[ -z $comp ]] && continue
        part=$part/$comp
        if [[ ! -d $DESTDIR$part ]]; then
            mkdir -m 0755 "$DESTDIR$part"
            DIRS+=("$part")
        fi
    done
}

write_manifest() {
    local tmp p d
    tmp=$(mktemp "$DESTDIR$(dirname "$MANIFEST")/.manifest.XXXXXX")
    {
        echo "# cdcdd install manifest: used by 'make uninstall'; paths without DESTDIR"
        for d in "${DIRS[@]}"; do echo "d $d"; done
        for p in "${FILE_ORDER[@]}"; do echo "f ${FILES[$p]} $p"; done
    } >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$DESTDIR$MANIFEST"
}

# install_file SRC FINAL_PATH MODE [sed-expression]
install_file() {
    local src=$1 dst=$2 mode=$3 expr=${4:-}
    make_dir "$(dirname "$dst")"
    if [[ -n $expr ]]; then
        local tmp
        tmp=$(mktemp "$DESTDIR$(dirname "$dst")/.install.XXXXXX")
        sed -e "$expr" "$src" >"$tmp"
        chmod "$mode" "$tmp"
        mv -f "$tmp" "$DESTDIR$dst"
    else
        install -m "$mode" "$src" "$DESTDIR$dst"
    fi
    record_file "$dst"
}

# ---------------------------------------------------------------- install
do_install() {
    local n=0 f rel
    [[ -x $BINSRC/cdcdd ]] || die "$BINSRC/cdcdd not found: run 'make' first"
    [[ -x $BINSRC/cdcd ]] || die "$BINSRC/cdcd not found: run 'make' first"
    [[ -z $DESTDIR ]] || mkdir -p "$DESTDIR"
    load_manifest
    make_dir "$(dirname "$MANIFEST")"

    install_file "$BINSRC/cdcdd" "$PREFIX/bin/cdcdd" 0755; n=$((n + 1))
    install_file "$BINSRC/cdcd" "$PREFIX/bin/cdcd" 0755; n=$((n + 1))

    if [[ -d $WEBSRC ]]; then
        while IFS= read -r -d '' f; do
            rel=${f#"$WEBSRC"/}
            install_file "$f" "$PREFIX/share/cdcdd/web/$rel" 0644; n=$((n + 1))
        done < <(find "$WEBSRC" -type f -print0 | sort -z)
    else
        echo "install.sh: warning: $WEBSRC missing, dashboard not installed (run 'make web')" >&2
    fi

    for f in "$ROOT"/sql/*.sql; do
        [[ -f $f ]] || continue
        install_file "$f" "$PREFIX/share/cdcdd/sql/$(basename "$f")" 0644; n=$((n + 1))
    done

    # The unit and the example name /usr/local and /etc: point them at this PREFIX/SYSCONFDIR.
    local rewrite="s#/usr/local/#$PREFIX/#g; s#/etc/cdcdd#$CONFDIR#g"
    install_file "$ROOT/systemd/cdcdd.service" "$UNITDIR/cdcdd.service" 0644 "$rewrite"
    install_file "$ROOT/systemd/cdcdd.conf" "$PREFIX/share/doc/cdcdd/cdcdd.conf.example" 0644 \
        "$rewrite"
    install_file "$ROOT/docs/cdcdd.8" "$PREFIX/share/man/man8/cdcdd.8" 0644 "$rewrite"
    n=$((n + 3))

    make_dir "$CONFDIR"
    if [[ -e $DESTDIR$CONFDIR/cdcdd.conf ]]; then
        echo "install.sh: keeping existing $CONFDIR/cdcdd.conf (new example in $PREFIX/share/doc/cdcdd)"
    else
        install_file "$ROOT/systemd/cdcdd.conf" "$CONFDIR/cdcdd.conf" 0644 "$rewrite"
        n=$((n + 1))
    fi
    if [[ -e $DESTDIR$CONFDIR/token ]]; then
        echo "install.sh: keeping existing $CONFDIR/token"
    else
        (
            umask 077
            head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DESTDIR$CONFDIR/token"
            echo >>"$DESTDIR$CONFDIR/token"
        )
        chmod 0600 "$DESTDIR$CONFDIR/token"
        record_file "$CONFDIR/token"
        n=$((n + 1))
        echo "install.sh: generated an API token in $CONFDIR/token (mode 0600)"
    fi

    write_manifest
    echo "install.sh: installed $n files under ${DESTDIR:-}$PREFIX and ${DESTDIR:-}$CONFDIR"
    if [[ -z $DESTDIR ]]; then
        echo "install.sh: next: systemctl daemon-reload && systemctl enable --now cdcdd"
    fi
}

# ---------------------------------------------------------------- uninstall
do_uninstall() {
    local p i removed=0 kept=0
    if [[ ! -f $DESTDIR$MANIFEST ]]; then
        echo "install.sh: no manifest at $DESTDIR$MANIFEST: nothing installed there" >&2
        return 0
    fi
    load_manifest
    for p in "${FILE_ORDER[@]}"; do
        [[ -e $DESTDIR$p || -L $DESTDIR$p ]] || continue
        if [[ $p == "$CONFDIR"/* ]] &&
            [[ $(sha256sum "$DESTDIR$p" | cut -d' ' -f1) != "${FILES[$p]}" ]]; then
            echo "install.sh: keeping $p: changed since it was installed"
            kept=$((kept + 1))
            continue
        fi
        rm -f "$DESTDIR$p"
        removed=$((removed + 1))
    done
    rm -f "$DESTDIR$MANIFEST"
    for ((i = ${#DIRS[@]} - 1; i >= 0; i--)); do
        rmdir "$DESTDIR${DIRS[i]}" 2>/dev/null || true # only when empty
    done
    if ((kept)); then
        echo "install.sh: removed $removed files, kept $kept changed"
    else
        echo "install.sh: removed $removed files"
    fi
    if [[ -z $DESTDIR ]]; then
        echo "install.sh: next: systemctl daemon-reload"
    fi
}

if [[ $MODE == install ]]; then do_install; else do_uninstall; fi
