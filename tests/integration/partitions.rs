//! Partitions made on demand under concurrency, retention run by a real pg_cron,
//! and the 0.1.1 -> 0.2.0 upgrade of a table of a million rows.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use metrics_ingest_tests::server::{error_text, expect_sqlstate, Client, TestDb, TestRole};

use crate::support::{count, ingest, texts};

fn event(user: &str, time: &str, event_id: &str) -> String {
    format!(
        r#"{{"user_id":"{user}","timestamp":"{time}","talked_time":1,"event_id":"{event_id}"}}"#
    )
}

fn partitions(client: &mut Client) -> Vec<String> {
    texts(
        client,
        "SELECT partition::text FROM metrics_ingest.partitions() ORDER BY lower",
    )
}

/// A REPEATABLE READ transaction whose snapshot predates a partition (and a
/// change of width) still routes to it and makes the next one beside it: 0.3.2
/// read the partitions under that snapshot, made one overlapping the newer one
/// and failed the call (42P17).
#[test]
fn a_repeatable_read_call_sees_partitions_made_after_its_snapshot() {
    let db = TestDb::new("partition_rr");
    let mut a = db.connect();
    let mut b = db.connect();
    b.batch_execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM metrics_ingest.settings",
    )
    .expect("snapshot");
    a.batch_execute("SELECT metrics_ingest.set_partition_interval('1 hour')")
        .expect("width");
    let made = ingest(
        &mut a,
        &format!("[{}]", event("rr", "2028-02-02T01:30:00Z", "a")),
    );
    assert_eq!(made[0].status, "inserted");
    let later = ingest(
        &mut b,
        &format!(
            "[{}, {}]",
            event("rr", "2028-02-02T01:45:00Z", "b"),
            event("rr", "2028-02-02T05:00:00Z", "c")
        ),
    );
    assert_eq!(
        later.iter().map(|o| o.status.as_str()).collect::<Vec<_>>(),
        ["inserted", "inserted"]
    );
    b.batch_execute("COMMIT").expect("commit");
    assert_eq!(
        texts(
            &mut a,
            "SELECT format('%s %s %s', partition, lower AT TIME ZONE 'UTC', upper AT TIME ZONE 'UTC') \
             FROM metrics_ingest.partitions() ORDER BY lower"
        ),
        [
            "metrics_ingest.metrics_p20280202_010000 2028-02-02 01:00:00 2028-02-02 02:00:00",
            "metrics_ingest.metrics_p20280202_020000 2028-02-02 02:00:00 2028-02-03 00:00:00",
        ]
    );
    assert_eq!(
        count(&mut a, "SELECT count(*) FROM metrics_ingest.metrics"),
        3
    );
}

/// A partition a DBA is detaching (DETACH PARTITION ... CONCURRENTLY not
/// finished) takes no rows: an element in its range is rejected (23514) and
/// the rest of the call is stored (0.3.2 failed the call with 55000, and
/// partitions() did not list it, so partition_for tried to make one beside it).
#[test]
fn a_partition_being_detached_rejects_its_elements_and_the_call_goes_on() {
    let db = TestDb::new("partition_detaching");
    let mut a = db.connect();
    assert_eq!(
        ingest(
            &mut a,
            &format!("[{}]", event("dt", "2026-11-10T01:00:00Z", "a"))
        )[0]
        .status,
        "inserted"
    );
    // A transaction holding a snapshot makes DETACH CONCURRENTLY wait; cancelled
    // by its timeout, it leaves the partition pending.
    let mut holder = db.connect();
    holder
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM metrics_ingest.metrics",
        )
        .expect("snapshot");
    let mut dba = db.connect();
    dba.batch_execute("SET statement_timeout = '1s'")
        .expect("timeout");
    let detach = dba.batch_execute(
        "ALTER TABLE metrics_ingest.metrics DETACH PARTITION metrics_ingest.metrics_p20261110 CONCURRENTLY",
    );
    expect_sqlstate(detach, "57014", "DETACH CONCURRENTLY, cancelled");
    holder.batch_execute("COMMIT").expect("commit");
    assert_eq!(
        partitions(&mut a),
        ["metrics_ingest.metrics_p20261110"],
        "a partition being detached is still listed"
    );
    let outcomes = ingest(
        &mut a,
        &format!(
            "[{}, {}]",
            event("dt", "2026-11-10T02:00:00Z", "b"),
            event("dt", "2026-11-11T02:00:00Z", "c")
        ),
    );
    assert_eq!(
        outcomes
            .iter()
            .map(|o| o.status.as_str())
            .collect::<Vec<_>>(),
        ["rejected", "inserted"]
    );
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM metrics_ingest.rejected WHERE sqlstate = '23514' AND field = 'timestamp'"
        ),
        1
    );
    dba.batch_execute(
        "ALTER TABLE metrics_ingest.metrics DETACH PARTITION metrics_ingest.metrics_p20261110 FINALIZE",
    )
    .expect("finalize");
    assert_eq!(
        ingest(
            &mut a,
            &format!("[{}]", event("dt", "2026-11-10T03:00:00Z", "d"))
        )[0]
        .status,
        "inserted"
    );
}

#[test]
fn sessions_needing_the_same_new_partition_at_once_both_succeed() {
    let db = TestDb::new("partition_race");
    for round in 0..5 {
        let day = format!("2031-02-{:02}", round + 1);
        let clients = 6;
        let barrier = Arc::new(Barrier::new(clients));
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let config = db.config();
                let barrier = Arc::clone(&barrier);
                let payload = format!(
                    "[{}, {}]",
                    event(&format!("u{i}"), &format!("{day}T10:00:00Z"), "a"),
                    event(&format!("u{i}"), &format!("{day}T11:00:00Z"), "b")
                );
                std::thread::spawn(move || {
                    let mut client = config.connect(postgres::NoTls).expect("connect");
                    barrier.wait();
                    ingest(&mut client, &payload)
                        .iter()
                        .map(|o| o.status.clone())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(
                handle.join().expect("no panic"),
                ["inserted", "inserted"],
                "round {round}"
            );
        }
    }
    let mut c = db.connect();
    assert_eq!(
        partitions(&mut c),
        (1..=5)
            .map(|d| format!("metrics_ingest.metrics_p203102{d:02}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM metrics_ingest.metrics"),
        5 * 6 * 2
    );
}

#[test]
fn ingest_into_existing_partitions_is_not_blocked_by_one_being_made() {
    let db = TestDb::new("partition_no_block");
    let mut existing = db.connect();
    ingest(&mut existing, &event("e", "2031-03-01T10:00:00Z", "first"));

    // A transaction makes a new partition and stays open.
    let mut maker = db.connect();
    maker.batch_execute("BEGIN").expect("begin");
    let made = ingest(&mut maker, &event("m", "2031-03-02T10:00:00Z", "new-day"));
    assert_eq!(made[0].status, "inserted");

    // Meanwhile other sessions ingest into the existing partition without waiting.
    existing
        .batch_execute("SET lock_timeout = '3s'")
        .expect("lock_timeout");
    let started = Instant::now();
    let outcomes = ingest(&mut existing, &event("e", "2031-03-01T11:00:00Z", "second"));
    assert_eq!(outcomes[0].status, "inserted");
    assert!(started.elapsed() < Duration::from_secs(3));
    existing
        .batch_execute(
            "CALL metrics_ingest.insert_metric('2031-03-01 12:00:00+00', 'e', NULL, 'talked_time', 2)",
        )
        .unwrap_or_else(|e| panic!("insert_metric beside an open partition maker: {}", error_text(&e)));
    // Readers too.
    assert_eq!(
        count(
            &mut existing,
            "SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'e'"
        ),
        3
    );
    maker.batch_execute("COMMIT").expect("commit");
    assert_eq!(partitions(&mut existing).len(), 2);
}

/// 0.3.1 made partitions one at a time under an advisory lock, and kept
/// compaction, rebuild and forget_user apart under another: any role that can
/// connect could hold them and stop both. Since 0.3.2 they are locks on the
/// extension's tables, which such a role cannot take.
#[test]
fn a_role_without_privileges_cannot_stop_partition_making_or_upkeep() {
    let db = TestDb::new("partition_lock_dos");
    let nobody = TestRole::new(&db, "lock_dos", "");
    let mut intruder = db.connect_as(nobody.name());
    intruder
        .batch_execute(
            "SELECT pg_advisory_lock(1835365481, 1885434739); \
             SELECT pg_advisory_lock(hashtext('metrics_ingest.rollups'))",
        )
        .expect("advisory locks are anyone's");
    for table in ["metrics", "metric_types"] {
        let refused = intruder.batch_execute(&format!(
            "BEGIN; LOCK TABLE metrics_ingest.{table} IN SHARE UPDATE EXCLUSIVE MODE"
        ));
        expect_sqlstate(
            refused,
            "42501",
            &format!("LOCK TABLE {table} by a role without privileges"),
        );
        intruder.batch_execute("ROLLBACK").expect("rollback");
    }
    let mut owner = db.connect();
    owner
        .batch_execute("SET statement_timeout = '10s'")
        .expect("statement_timeout");
    let made = ingest(&mut owner, &event("n", "2031-04-01T10:00:00Z", "new-day"));
    assert_eq!(made[0].status, "inserted");
    owner
        .batch_execute(
            "CALL metrics_ingest.insert_metric('2031-04-02 10:00:00+00', 'n', NULL, 'talked_time', 2)",
        )
        .unwrap_or_else(|e| panic!("insert_metric making a partition: {}", error_text(&e)));
    for upkeep in [
        "SELECT * FROM metrics_ingest.run_maintenance()",
        "SELECT * FROM metrics_ingest.forget_user('n')",
        "SELECT * FROM metrics_ingest.rebuild_rollups()",
    ] {
        owner.batch_execute(upkeep).unwrap_or_else(|e| {
            panic!("{upkeep} beside the old advisory locks: {}", error_text(&e))
        });
    }
    assert_eq!(partitions(&mut owner).len(), 2);
}

#[test]
fn a_rolled_back_call_takes_its_partition_with_it_and_nothing_breaks() {
    let db = TestDb::new("partition_rollback");
    let mut c = db.connect();
    c.batch_execute("BEGIN").expect("begin");
    ingest(&mut c, &event("r", "2031-04-01T10:00:00Z", "x"));
    assert_eq!(partitions(&mut c).len(), 1);
    c.batch_execute("ROLLBACK").expect("rollback");
    assert!(
        partitions(&mut c).is_empty(),
        "the partition went with the transaction"
    );
    // The same backend (with its cached bounds) and a new one both make it again.
    assert_eq!(
        ingest(&mut c, &event("r", "2031-04-01T10:00:00Z", "x"))[0].status,
        "inserted"
    );
    let mut other = db.connect();
    assert_eq!(
        ingest(&mut other, &event("r", "2031-04-01T10:00:00Z", "x"))[0].status,
        "duplicate"
    );
    assert_eq!(partitions(&mut other).len(), 1);
}

/// pg_cron, when the test cluster has it preloaded (scripts/test.sh sets it up on
/// PostgreSQL 15, where Debian packages it).
fn pg_cron_available(admin: &mut Client) -> bool {
    admin
        .query_one(
            "SELECT current_setting('shared_preload_libraries') LIKE '%pg_cron%'",
            &[],
        )
        .map(|row| row.get::<_, bool>(0))
        .unwrap_or(false)
}

#[test]
fn pg_cron_runs_maintenance_and_an_old_partition_goes() {
    let db = TestDb::new("partition_cron");
    let mut admin = metrics_ingest_tests::server::admin();
    if !pg_cron_available(&mut admin) {
        let required =
            std::env::var("METRICS_INGEST_TEST_PG_CRON").unwrap_or_default() == "required";
        assert!(
            !required,
            "pg_cron is required here but not preloaded in the test cluster"
        );
        eprintln!("pg_cron is not preloaded in this cluster: not run here");
        return;
    }
    let mut c = db.connect();
    let old = texts(
        &mut c,
        "SELECT to_char(now() AT TIME ZONE 'UTC' - interval '20 days', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    )
    .remove(0);
    let recent = texts(
        &mut c,
        "SELECT to_char(now() AT TIME ZONE 'UTC' - interval '1 day', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    )
    .remove(0);
    ingest(
        &mut c,
        &format!(
            "[{}, {}]",
            event("c", &old, "old"),
            event("c", &recent, "new")
        ),
    );
    assert_eq!(partitions(&mut c).len(), 2);
    c.batch_execute("SELECT metrics_ingest.set_retention('10 days')")
        .expect("set_retention");

    // The README's one statement, in the database pg_cron lives in (cron.database_name).
    admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        .unwrap_or_else(|e| panic!("CREATE EXTENSION pg_cron: {}", error_text(&e)));
    let job = format!("metrics-ingest-maintenance-{}", db.name());
    let job_id: i64 = admin
        .query_one(
            "SELECT cron.schedule_in_database($1, '* * * * *', 'SELECT * FROM metrics_ingest.run_maintenance()', $2)",
            &[&job, &db.name()],
        )
        .unwrap_or_else(|e| panic!("cron.schedule_in_database: {}", error_text(&e)))
        .get(0);
    // Debian 12's pg_cron (1.4) schedules by the minute.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut left = partitions(&mut c);
    while left.len() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        left = partitions(&mut c);
    }
    let runs = texts(
        &mut admin,
        &format!("SELECT status || ': ' || coalesce(return_message, '') FROM cron.job_run_details WHERE jobid = {job_id}"),
    );
    admin
        .execute("SELECT cron.unschedule($1::bigint)", &[&job_id])
        .expect("unschedule");
    assert_eq!(left.len(), 1, "pg_cron's runs: {runs:?}");
    assert_eq!(
        texts(&mut c, "SELECT event_id FROM metrics_ingest.metrics"),
        ["new"]
    );
}

#[test]
fn upgrading_a_million_rows_from_0_1_1_keeps_every_row_id_and_key() {
    let fresh = TestDb::new("upgrade_million_fresh");
    let db = fresh.beside("upgrade_million", false);
    let mut c = db.connect();
    c.batch_execute("CREATE EXTENSION metrics_ingest VERSION '0.1.1'")
        .unwrap_or_else(|e| panic!("install 0.1.1: {}", error_text(&e)));
    // A million rows over 30 days, half with event ids, written as 0.1.1's own table holds them.
    c.batch_execute(
        "INSERT INTO metrics_ingest.metrics (\"timestamp\", user_id, session_id, metric_type, metric_value, event_id) \
         SELECT timestamptz '2024-06-01 00:00:00+00' + (i * interval '2.592 seconds'), 'u' || (i % 5000), \
                's' || (i % 20000), 'talked_time', i % 600, CASE WHEN i % 2 = 0 THEN 'ev' || i END \
         FROM generate_series(1, 1000000) i",
    )
    .expect("a million rows");
    ingest(&mut c, &event("late", "2021-06-01T14:40:00Z", "from-2021"));
    let before = texts(
        &mut c,
        "SELECT concat_ws('|', count(*), sum(id), max(id), count(event_id), md5(string_agg(id || user_id || event_id, ',' ORDER BY id))) \
         FROM metrics_ingest.metrics",
    );
    let sequence_before = texts(
        &mut c,
        "SELECT last_value::text FROM metrics_ingest.metrics_id_seq",
    );

    let started = Instant::now();
    c.batch_execute("ALTER EXTENSION metrics_ingest UPDATE TO '0.2.0'")
        .unwrap_or_else(|e| panic!("update: {}", error_text(&e)));
    let took = started.elapsed();
    println!(
        "upgrade of 1,000,001 rows from 0.1.1 to 0.2.0 took {:.1} s",
        took.as_secs_f64()
    );

    assert_eq!(
        texts(
            &mut c,
            "SELECT pg_get_partkeydef('metrics_ingest.metrics'::regclass)"
        ),
        ["RANGE (\"timestamp\")"]
    );
    let after = texts(
        &mut c,
        "SELECT concat_ws('|', count(*), sum(id), max(id), count(event_id), md5(string_agg(id || user_id || event_id, ',' ORDER BY id))) \
         FROM metrics_ingest.metrics",
    );
    assert_eq!(after, before, "every row, id and event key kept");
    assert_eq!(
        texts(
            &mut c,
            "SELECT last_value::text FROM metrics_ingest.metrics_id_seq"
        ),
        sequence_before,
        "the identity goes on where it was"
    );
    assert_eq!(
        partitions(&mut c).len(),
        32,
        "30 days of June, 1 July (the last row), and one for 2021"
    );
    // Old events are recognised in their partitions; new rows get the next ids.
    let outcomes = ingest(
        &mut c,
        &format!(
            "[{}, {}]",
            r#"{"user_id":"u2","session_id":"s2","timestamp":"2024-06-01T00:00:05.184Z","talked_time":2,"event_id":"ev2"}"#,
            event("new", "2024-07-15T00:00:00Z", "n1")
        ),
    );
    let statuses: Vec<&str> = outcomes.iter().map(|o| o.status.as_str()).collect();
    assert_eq!(statuses, ["duplicate", "inserted"]);
    // The partitions the upgrade made are ordinary ones: not extension members,
    // so pg_dump keeps them and retention drops them.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM pg_depend d JOIN metrics_ingest.partitions() p ON d.objid = p.partition \
             WHERE d.deptype = 'e'"
        ),
        0
    );
    assert!(
        count(
            &mut c,
            "SELECT min(id) FROM metrics_ingest.metrics WHERE user_id = 'new'"
        ) > count(
            &mut c,
            "SELECT max(id) FROM metrics_ingest.metrics WHERE user_id <> 'new'"
        )
    );
}
