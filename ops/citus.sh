# shellcheck shell=bash
#
# ops/citus.sh — builds Citus from the vendored source and installs it into PostgreSQL.
# Sourced by ops/pg (ops/pg citus …); needs ops/lib.sh sourced first.
#
#   citus_ensure_installed   build Citus once per (tarball, patch, PostgreSQL version), cached under
#                            $TALLY_CITUS_CACHE (default <repo>/.tally/citus/<key>), and copy the
#                            staged files into PostgreSQL's directories when they differ.
#
# Why PostgreSQL's own directories and not a private prefix: PostgreSQL 15 reads extension control
# files only from its compiled-in share directory (extension_control_path arrives in 18), so a
# private prefix would need a relocated copy of the server binaries. The installed files are inert
# for every cluster that does not preload citus (the test cluster, ops/run's, other worktrees').

CITUS_VERSION=13.2.2
CITUS_DEBIAN_PACKAGES=(postgresql-server-dev-15 libkrb5-dev libselinux1-dev libxslt1-dev libpam0g-dev
    libreadline-dev liblz4-dev libzstd-dev make gcc patch xz-utils)

citus_vendor_dir() {
    local dir="${TALLY_CITUS_VENDOR:-$(tally_root)/../shared/vendor}"
    [[ -f "$dir/citus-$CITUS_VERSION.tar.xz" ]] ||
        tally_die "no citus-$CITUS_VERSION.tar.xz in $dir (set TALLY_CITUS_VENDOR to the folder that has it)"
    realpath -- "$dir"
}

citus_ensure_packages() {
    local pkg status
    local -a missing=()
    for pkg in "${CITUS_DEBIAN_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || tally_die "building Citus needs: sudo apt-get install -y --no-install-recommends ${missing[*]}"
    tally_log "installing the packages Citus builds with: ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update >&2 || tally_die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
        "${missing[@]}" >&2 || tally_die "apt-get install ${missing[*]} failed"
}

# The cache key: the source, the patch and the exact PostgreSQL the headers come from.
citus_cache_key() {
    local vendor="$1"
    {
        sha256sum "$vendor/citus-$CITUS_VERSION.tar.xz" "$vendor"/citus-"$CITUS_VERSION"-*.patch | cut -d' ' -f1
        pg_config --version
    } | sha256sum | cut -c1-16
}

citus_cache_dir() {
    local vendor
    vendor="$(citus_vendor_dir)"
    printf '%s/%s\n' "${TALLY_CITUS_CACHE:-$(tally_root)/.tally/citus}" "$(citus_cache_key "$vendor")"
}

# Build into $dir/stage (make install DESTDIR=…); $dir/built marks a finished build.
citus_build() {
    local vendor="$1" dir="$2" src patch
    [[ -f "$dir/built" ]] && return 0
    tally_log "building Citus $CITUS_VERSION into $dir (about 4-10 minutes on 2 cores; cached afterwards)"
    rm -rf -- "$dir"
    mkdir -p -- "$dir"
    tar -xJf "$vendor/citus-$CITUS_VERSION.tar.xz" -C "$dir"
    src="$dir/citus-$CITUS_VERSION"
    for patch in "$vendor"/citus-"$CITUS_VERSION"-*.patch; do
        [[ -f "$patch" ]] && patch -d "$src" -p1 --quiet <"$patch"
    done
    (
        cd "$src"
        ./configure --without-libcurl >"$dir/configure.log" 2>&1 ||
            tally_die "Citus configure failed (see $dir/configure.log)"
        # with_llvm=no: no JIT bitcode, which would double the build time.
        make -j"${TALLY_CITUS_JOBS:-2}" with_llvm=no >"$dir/make.log" 2>&1 ||
            tally_die "Citus make failed (see $dir/make.log)"
        make install with_llvm=no DESTDIR="$dir/stage" >"$dir/install.log" 2>&1 ||
            tally_die "Citus make install failed (see $dir/install.log)"
    )
    rm -rf -- "$src"
    touch -- "$dir/built"
}

# Copy each staged file into / that differs from what is installed there.
citus_install_staged() {
    local stage="$1/stage" file target
    local -a stale=()
    while IFS= read -r -d '' file; do
        cmp -s -- "$file" "/${file#"$stage"/}" || stale+=("$file")
    done < <(find "$stage" -type f -print0)
    ((${#stale[@]} == 0)) && return 0
    ((EUID == 0)) || tally_die "installing Citus into PostgreSQL needs root: sudo cp -a $stage/. /"
    tally_log "installing Citus $CITUS_VERSION into PostgreSQL's directories (${#stale[@]} files)"
    for file in "${stale[@]}"; do
        target="/${file#"$stage"/}"
        mkdir -p -- "$(dirname -- "$target")"
        # A new file in place of the old (unlinked, not rewritten): a running cluster that has
        # citus.so mapped keeps its copy instead of crashing on a file changed under it.
        cp --preserve=mode --remove-destination -- "$file" "$target"
    done
}

citus_ensure_installed() {
    local vendor dir
    citus_ensure_packages
    vendor="$(citus_vendor_dir)"
    dir="$(citus_cache_dir)"
    citus_build "$vendor" "$dir"
    citus_install_staged "$dir"
}

# ---- ops/pg citus: a coordinator and two workers, each an ops/pg cluster under $TALLY_HOME ----

CITUS_NODES=(coordinator worker1 worker2)

citus_nodes_dir() { printf '%s/citus-nodes\n' "$(tally_home)"; }

# ops/pg COMMAND… on one node (its own TALLY_HOME).
citus_node() {
    local node="$1"
    shift
    # Ports from 55432 up, away from the 54329+ of the single-node clusters of every checkout.
    TALLY_HOME="$(citus_nodes_dir)/$node" TALLY_LOG_PREFIX="ops/pg citus $node" \
        TALLY_PG_PORT="${TALLY_CITUS_PORT:-55432}" "$(tally_root)/ops/pg" "$@"
}

citus_node_port() { citus_node "$1" url postgres 2>/dev/null | sed -E 's|.*:([0-9]+)/.*|\1|'; }

citus_sql() {
    local node="$1" db="$2"
    shift 2
    citus_node "$node" psql -d "$db" -X -A -t -q -v ON_ERROR_STOP=1 "$@"
}

citus_write_settings() {
    local node="$1" dir
    dir="$(citus_nodes_dir)/$node/pg"
    mkdir -p -- "$dir"
    cat >"$dir/extra.conf" <<EOF
# ops/pg citus: this node of the Citus cluster.
shared_preload_libraries = 'citus'
shared_buffers = 128MB
# Every test database keeps its pools' sessions on the coordinator, and each of those keeps a
# connection to each worker: with about 95 databases a worker ran out of 300 ("sorry, too many
# clients already" in the race suites, CI of 2026-12-07).
max_connections = ${TALLY_CITUS_MAX_CONNECTIONS:-600}
# Citus commits multi-shard writes with two-phase commit.
max_prepared_transactions = ${TALLY_CITUS_MAX_CONNECTIONS:-600}
citus.shard_count = ${TALLY_CITUS_SHARD_COUNT:-8}
# After a worker's crash, prepared transactions are rolled forward or back within seconds, and
# deadlocks across nodes are broken, by Citus's maintenance daemon: one background worker per
# database. A test run makes about 90 databases; past this limit a database gets no daemon
# (the log says "could not start maintenance background worker") and its tests may hang on a
# distributed deadlock or a prepared transaction left by a killed worker.
citus.recover_2pc_interval = '5s'
max_worker_processes = ${TALLY_CITUS_MAX_WORKERS:-192}
EOF
}

# The citus extension in DBNAME on every node, the coordinator's address and the workers
# registered in the coordinator's metadata (both kept per database by Citus). Idempotent; a
# worker whose port moved since it was registered is updated.
citus_prepare_database() {
    local db="$1" node port old
    for node in "${CITUS_NODES[@]}"; do
        [[ -n "$(citus_sql "$node" "$db" -c "SELECT 1 FROM pg_extension WHERE extname = 'citus'")" ]] ||
            citus_sql "$node" "$db" -c "CREATE EXTENSION citus" >/dev/null
    done
    # Moved workers first: every later call syncs metadata to the registered addresses.
    for node in worker1 worker2; do
        port="$(citus_node_port "$node")"
        old="$(citus_registered_port "$node")"
        if [[ -n "$old" && "$old" != "$port" &&
            -n "$(citus_sql coordinator "$db" -c "SELECT 1 FROM pg_dist_node WHERE nodeport = $old")" ]]; then
            citus_sql coordinator "$db" >/dev/null \
                -c "SELECT citus_update_node(nodeid, '127.0.0.1', $port) FROM pg_dist_node WHERE nodeport = $old"
        fi
    done
    citus_sql coordinator "$db" >/dev/null \
        -c "SELECT citus_set_coordinator_host('127.0.0.1', $(citus_node_port coordinator))"
    for node in worker1 worker2; do
        port="$(citus_node_port "$node")"
        [[ -n "$(citus_sql coordinator "$db" -c "SELECT 1 FROM pg_dist_node WHERE nodeport = $port")" ]] ||
            citus_sql coordinator "$db" -c "SELECT citus_add_node('127.0.0.1', $port)" >/dev/null
    done
}

citus_registered_port() {
    local file
    file="$(citus_nodes_dir)/$1.registered-port"
    [[ -f "$file" ]] && cat -- "$file"
    return 0
}

citus_record_ports() {
    local node
    for node in worker1 worker2; do
        citus_node_port "$node" >"$(citus_nodes_dir)/$node.registered-port"
    done
}

# Databases on the coordinator that have the citus extension, "tally" first when it has.
citus_databases() {
    local db
    local query="SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname <> 'tally', datname"
    for db in $(citus_sql coordinator postgres -c "$query"); do
        [[ "$(citus_sql coordinator "$db" -c "SELECT 1 FROM pg_extension WHERE extname = 'citus'")" == 1 ]] &&
            printf '%s\n' "$db"
    done
    return 0
}

citus_start() {
    local node db
    exec 3>&1 1>&2 # stdout carries the URL only
    citus_ensure_installed
    for node in "${CITUS_NODES[@]}"; do
        citus_write_settings "$node"
        citus_node "$node" start >/dev/null
    done
    citus_prepare_database tally
    # Workers that moved to another port: update their registration in every Citus database.
    for db in $(citus_databases); do
        [[ "$db" == tally ]] || citus_prepare_database "$db"
    done
    citus_record_ports
    citus_node coordinator url tally >&3
}

citus_createdb() {
    local db="$1" node
    [[ "$db" =~ ^[A-Za-z0-9_]+$ ]] || tally_die "citus createdb: use letters, digits and _ in the name, not \"$db\""
    for node in "${CITUS_NODES[@]}"; do
        [[ "$(citus_sql "$node" postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" == 1 ]] ||
            citus_sql "$node" postgres -c "CREATE DATABASE \"$db\"" >/dev/null
    done
    citus_prepare_database "$db"
}

citus_status() {
    local node rc=0
    for node in "${CITUS_NODES[@]}"; do
        printf '%s: ' "$node"
        citus_node "$node" status | head -n 2 | paste -sd ' ' || rc=3
    done
    return "$rc"
}

citus_main() {
    local command="${1:-}"
    (($# > 0)) && shift
    case "$command" in
    start) citus_start ;;
    stop)
        local node
        for node in coordinator worker1 worker2; do citus_node "$node" stop "$@"; done
        ;;
    status) citus_status ;;
    url) citus_node coordinator url "${1:-tally}" ;;
    createdb)
        (($# == 1)) || tally_die "citus createdb takes one database name"
        citus_createdb "$1"
        ;;
    node)
        (($# >= 2)) || tally_die "citus node takes a node name and an ops/pg command"
        [[ " ${CITUS_NODES[*]} " == *" $1 "* ]] || tally_die "no node $1 (coordinator, worker1, worker2)"
        citus_node "$@"
        ;;
    *) tally_die "unknown citus command \"$command\" (start, stop, status, url, createdb, node)" ;;
    esac
}
