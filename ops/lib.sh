#!/usr/bin/env bash
# shellcheck shell=bash
#
# ops/lib.sh — helpers shared by Tally's operations scripts (ops/pg, ops/run,
# ops/test, .ci/run). Source it:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Functions:
#   tally_root              print the repository root (the directory holding ops/)
#   tally_home              print the absolute state directory: $TALLY_HOME, default <root>/.tally
#   tally_log MSG…          print "<prog>: MSG" on stderr
#   tally_die MSG…          tally_log "error: MSG" and exit 1
#   ensure_packages [PKG…]  install the Debian packages Tally needs (postgresql, libpq-dev,
#                           libcurl4-openssl-dev, pkg-config), or the PKGs given, when root;
#                           otherwise print the sudo command to run and exit 1. Silent when all
#                           are present.
#   ensure_slow_test_packages
#                           ensure_packages for the validators ops/slow-tests/deploy-configs
#                           runs (systemd-analyze, nginx, openssl, promtool)
#   ensure_swift            put /opt/swift/usr/bin on PATH when swift is not on it
#   pg_bindir [DATADIR]     PostgreSQL server binaries: those matching DATADIR/PG_VERSION when
#                           given, else the newest /usr/lib/postgresql/*/bin, else pg_config --bindir
#   pg_account DATADIR      the account that runs the cluster: as root, the owner of DATADIR
#                           when it exists and is not root, else "postgres"; otherwise ourselves
#   as_account USER CMD…    run CMD as USER (runuser, or setpriv) from / when we are root;
#                           run it directly when we are not
#   without_extra_fds CMD…  run CMD with all file descriptors above 2 closed (for daemons)
#   make_traversable USER PATH
#                           as root, grant o+x on the ancestors of PATH that USER cannot enter
#   tally_now_us            microseconds since the epoch
#   tally_fmt_duration US   "12.3s" or "4m05.2s"
#
# Executed directly, it prints this text.

set -euo pipefail

if [[ -n "${_TALLY_LIB_SOURCED:-}" ]]; then
    return 0
fi
_TALLY_LIB_SOURCED=1

TALLY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
TALLY_LOG_PREFIX="${TALLY_LOG_PREFIX:-$(basename "$0")}"
# procps: ops/pg looks for a crashed cluster's processes with pgrep; curl: ops/bench and the
# slow tests call the server with it.
TALLY_DEBIAN_PACKAGES=(postgresql libpq-dev libcurl4-openssl-dev procps curl)
# The validators of ops/slow-tests/deploy-configs, which fails when one is missing, and the
# Python the real-client, console and schemathesis tests run in (ops/venv).
TALLY_SLOW_TEST_PACKAGES=(systemd nginx-light openssl prometheus python3 python3-venv)

tally_root() { printf '%s\n' "$TALLY_ROOT"; }

tally_home() {
    local home="${TALLY_HOME:-$TALLY_ROOT/.tally}"
    [[ "$home" == /* ]] || home="$PWD/$home"
    realpath -m -- "$home"
}

tally_log() { printf '%s: %s\n' "$TALLY_LOG_PREFIX" "$*" >&2; }

tally_die() {
    tally_log "error: $*"
    exit 1
}

ensure_packages() {
    local pkg status
    local -a missing=() wanted=("$@")
    ((${#wanted[@]} > 0)) || wanted=("${TALLY_DEBIAN_PACKAGES[@]}")
    if ! command -v dpkg-query >/dev/null 2>&1; then
        tally_log "warning: not a Debian system; make sure ${wanted[*]} (or equivalents) and pkg-config are installed"
        return 0
    fi
    for pkg in "${wanted[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
    done
    if (($# == 0)) && ! command -v pkg-config >/dev/null 2>&1; then
        missing+=(pkg-config)
    fi
    ((${#missing[@]} == 0)) && return 0

    if ((EUID != 0)); then
        tally_log "missing Debian packages: ${missing[*]}"
        tally_log "install them with:"
        printf '    sudo apt-get update && sudo apt-get install -y --no-install-recommends %s\n' "${missing[*]}" >&2
        exit 1
    fi
    tally_log "installing missing Debian packages: ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update >&2 ||
        tally_die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}" >&2 ||
        tally_die "apt-get install ${missing[*]} failed"
}

ensure_slow_test_packages() { ensure_packages "${TALLY_SLOW_TEST_PACKAGES[@]}"; }

ensure_swift() {
    if ! command -v swift >/dev/null 2>&1 && [[ -x /opt/swift/usr/bin/swift ]]; then
        export PATH="/opt/swift/usr/bin:$PATH"
    fi
    command -v swift >/dev/null 2>&1 ||
        tally_die "swift is not on PATH (nor at /opt/swift/usr/bin); install a Swift 6 toolchain"
}

pg_bindir() {
    local data="${1:-}" version dir newest=""
    if [[ -n "$data" && -f "$data/PG_VERSION" ]]; then
        version="$(<"$data/PG_VERSION")"
        if [[ -x "/usr/lib/postgresql/$version/bin/pg_ctl" ]]; then
            printf '%s\n' "/usr/lib/postgresql/$version/bin"
            return 0
        fi
        tally_die "the cluster in $data was made by PostgreSQL $version, whose server is not installed (apt-get install postgresql-$version, or ops/pg destroy)"
    fi
    newest="$(for dir in /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/pg_ctl" ]] && printf '%s\n' "$dir"
    done | sort -V | tail -n 1)"
    if [[ -z "$newest" ]] && command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir 2>/dev/null || true)"
        [[ -n "$dir" && -x "$dir/pg_ctl" ]] && newest="$dir"
    fi
    [[ -n "$newest" ]] || tally_die "no PostgreSQL server binaries found (apt-get install postgresql)"
    printf '%s\n' "$newest"
}

pg_account() {
    local data="$1" owner
    if ((EUID != 0)); then
        id -un
        return 0
    fi
    if [[ -e "$data" ]]; then
        owner="$(stat -c %U -- "$data")"
        if [[ "$owner" != root && "$owner" != UNKNOWN ]]; then
            printf '%s\n' "$owner"
            return 0
        fi
    fi
    id -u postgres >/dev/null 2>&1 ||
        tally_die "running as root needs the 'postgres' system user (created by Debian's postgresql package)"
    printf '%s\n' postgres
}

as_account() {
    local user="$1"
    shift
    if ((EUID != 0)); then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u "$user" -- "$@")
    else
        (cd / && setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups -- "$@")
    fi
}

# Run CMD with every file descriptor above 2 closed. Daemons started through it
# (the postmaster) must not inherit a caller's pipe, or "$(ops/pg start)" would
# wait for them forever, nor a lock descriptor, which they would hold forever.
without_extra_fds() {
    (
        local entry fd
        for entry in /proc/"$BASHPID"/fd/*; do
            fd="${entry##*/}"
            if ((fd > 2)) && [[ -e "$entry" ]]; then
                exec {fd}>&-
            fi
        done
        "$@"
    )
}

make_traversable() {
    local user="$1" path="$2" prefix="" part
    local -a parts
    ((EUID == 0)) || return 0
    as_account "$user" test -x "$path" 2>/dev/null && return 0
    IFS=/ read -r -a parts <<<"${path#/}"
    for part in "${parts[@]}"; do
        [[ -n "$part" ]] || continue
        prefix+="/$part"
        [[ -d "$prefix" ]] || break
        if ! as_account "$user" test -x "$prefix" 2>/dev/null; then
            tally_log "chmod o+x $prefix (so the '$user' account can reach $path)"
            chmod o+x -- "$prefix"
        fi
    done
    as_account "$user" test -x "$path" 2>/dev/null ||
        tally_die "the '$user' account still cannot enter $path; choose another TALLY_HOME"
}

tally_now_us() {
    local t="${EPOCHREALTIME:-}"
    if [[ -n "$t" ]]; then
        printf '%s\n' "${t/[.,]/}"
    else
        printf '%s\n' "$(($(date +%s) * 1000000))"
    fi
}

tally_fmt_duration() {
    local us="$1" tenths minutes seconds
    tenths=$(((us + 50000) / 100000))
    minutes=$((tenths / 600))
    seconds=$((tenths % 600))
    if ((minutes > 0)); then
        printf '%dm%02d.%ds\n' "$minutes" "$((seconds / 10))" "$((seconds % 10))"
    else
        printf '%d.%ds\n' "$((seconds / 10))" "$((seconds % 10))"
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    sed -n '2,/^# Executed directly/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" | sed '1,2d'
fi
