//! Faults in the middle of an ingest: a backend killed with SIGKILL (the postmaster
//! then restarts every backend and recovers), a cancel, a statement timeout. These
//! tests take the cluster exclusively ([`TestDb::exclusive`]).

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use metrics_ingest_tests::server::{
    error_text, expect_sqlstate, signal_server_process, Client, TestDb,
};

use crate::support::{count, ingest, ingest_with, Via};

/// `n` good elements with event ids `<prefix>-<i>`, and every 1000th (from the 500th)
/// replaced by a bad one. Returns the payload and the number of good elements.
fn payload(prefix: &str, n: usize) -> (String, usize) {
    let mut elements = Vec::with_capacity(n);
    let mut good = 0;
    for i in 0..n {
        if i % 1000 == 499 {
            elements.push(format!(
                r#"{{"timestamp":"never","user_id":"{prefix}-u{}","metric_type":"talked_time","metric_value":1}}"#,
                i % 97
            ));
        } else {
            good += 1;
            elements.push(format!(
                r#"{{"timestamp":{},"user_id":"{prefix}-u{}","session_id":"{prefix}-s{}","metric_type":"talked_time","metric_value":{},"event_id":"{prefix}-{i}","device_id":"dev-{}"}}"#,
                1_720_000_000 + i,
                i % 97,
                i % 1013,
                i % 3600,
                i % 11
            ));
        }
    }
    (format!("[{}]", elements.join(",")), good)
}

/// Counts of (metrics, rejected) rows whose user_id starts with `prefix`.
fn stored(client: &mut Client, prefix: &str) -> (i64, i64) {
    let m = count(
        client,
        &format!("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id LIKE '{prefix}-%'"),
    );
    let r = count(
        client,
        &format!(
            "SELECT count(*) FROM metrics_ingest.rejected WHERE element LIKE '%\"{prefix}-u%'"
        ),
    );
    (m, r)
}

/// What the backend `pid` is doing: (state, wait_event, query).
fn activity(admin: &mut Client, pid: i32) -> Option<(String, String, String)> {
    admin
        .query_opt(
            "SELECT coalesce(state, ''), coalesce(wait_event, ''), query \
             FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .expect("pg_stat_activity")
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// Waits until backend `pid` is executing ingest_json: the statement is active and
/// has written (it has a transaction id), or has already reached the pg_sleep that
/// follows the ingest. (Only "active" is not enough: with the extended protocol the
/// backend reports the statement active from Parse on, while the Bind message with a
/// payload of many megabytes is still arriving, and a cancel then is ignored.)
fn wait_until_ingesting(admin: &mut Client, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running: Option<bool> = admin
            .query_opt(
                "SELECT state = 'active' AND query LIKE '%ingest_json%' \
                        AND (backend_xid IS NOT NULL OR wait_event = 'PgSleep') \
                 FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .expect("pg_stat_activity")
            .and_then(|r| r.get(0));
        if running == Some(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} never started ingesting"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// True when backend `pid` is still inside ingest_json (not yet in the pg_sleep that
/// follows it).
fn still_ingesting(admin: &mut Client, pid: i32) -> bool {
    match activity(admin, pid) {
        Some((state, wait_event, query)) => {
            state == "active" && query.contains("ingest_json") && wait_event != "PgSleep"
        }
        None => false,
    }
}

const BIG: usize = 200_000;

#[test]
fn sigkill_mid_ingest_loses_that_call_only() {
    let db = TestDb::exclusive("faults_kill");
    let mut admin = db.connect();

    // Committed before the crash: they must all survive.
    let (early, early_good) = payload("early", 3_000);
    let outcomes = ingest(&mut admin, &early);
    assert_eq!(
        outcomes.iter().filter(|o| o.status == "inserted").count(),
        early_good
    );
    let early_before = stored(&mut admin, "early");
    assert_eq!(early_before, (early_good as i64, 3));

    let (big, big_good) = payload("big", BIG);
    // An idle session of another database: the postmaster's crash restart ends it too.
    let mut bystander = metrics_ingest_tests::server::admin();
    let (pid_tx, pid_rx) = mpsc::channel();
    let victim = {
        let mut client = db.connect();
        let big = big.clone();
        thread::spawn(move || {
            let pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .unwrap()
                .get(0);
            pid_tx.send(pid).unwrap();
            // One transaction: the ingest, then a long sleep before any commit.
            client.batch_execute("BEGIN")?;
            client.query_one(
                "SELECT count(*) FROM metrics_ingest.ingest_json($1::text)",
                &[&big],
            )?;
            client.batch_execute("SELECT pg_sleep(60)")?;
            client.batch_execute("COMMIT")
        })
    };
    let pid = pid_rx.recv().expect("victim's pid");
    wait_until_ingesting(&mut admin, pid);
    thread::sleep(Duration::from_millis(150));
    let mid_call = still_ingesting(&mut admin, pid);
    signal_server_process(pid, "KILL");
    let killed_at = Instant::now();
    let result = victim.join().expect("victim thread");
    assert!(
        result.is_err(),
        "the killed session's transaction must fail, got {result:?}"
    );
    drop(admin);
    eprintln!(
        "faults: SIGKILL landed {} ingest_json",
        if mid_call {
            "inside"
        } else {
            "after (in the pg_sleep following)"
        }
    );

    // The postmaster restarts every backend and replays WAL; wait for it.
    let mut admin = db.connect();
    eprintln!(
        "faults: reconnected {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        bystander.simple_query("SELECT 1").is_err(),
        "an unrelated session survived: the server did not go through crash recovery"
    );
    assert_eq!(
        count(
            &mut admin,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")
        ),
        0
    );

    // Nothing of the killed call, everything committed before it.
    assert_eq!(stored(&mut admin, "big"), (0, 0), "rows of the killed call");
    assert_eq!(
        stored(&mut admin, "early"),
        early_before,
        "rows committed before"
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM metrics_ingest.metrics WHERE user_id LIKE 'early-%' \
             AND event_id LIKE 'early-%'"
        ),
        early_good as i64
    );

    // The unique index holds no trace of the lost rows: sending the batch again
    // stores every good element.
    let again = ingest(&mut admin, &big);
    assert_eq!(
        again.iter().filter(|o| o.status == "inserted").count(),
        big_good
    );
    assert_eq!(
        again.iter().filter(|o| o.status == "rejected").count(),
        BIG - big_good
    );
    assert_eq!(
        stored(&mut admin, "big"),
        (big_good as i64, (BIG - big_good) as i64)
    );
    let early_again = ingest(&mut admin, &early);
    assert!(early_again
        .iter()
        .all(|o| o.status == "duplicate" || o.status == "rejected"));
}

/// Runs `sql` (taking the big payload as $1) on `client` in a thread; the main
/// thread calls `interrupt` once the backend is inside the statement. Returns the
/// statement's result, whether the interrupt came while ingest_json was still
/// running, and how long the statement took to end after the interrupt.
fn interrupted(
    db: &TestDb,
    mut client: Client,
    sql: &'static str,
    payload: String,
    interrupt: impl FnOnce(&mut Client, i32),
) -> (Client, Result<(), postgres::Error>, bool, Duration) {
    let mut admin = db.connect();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let worker = thread::spawn(move || {
        let result = client.execute(sql, &[&payload]).map(|_| ());
        (client, result, Instant::now())
    });
    wait_until_ingesting(&mut admin, pid);
    thread::sleep(Duration::from_millis(100));
    let mid_call = still_ingesting(&mut admin, pid);
    let at = Instant::now();
    interrupt(&mut admin, pid);
    let (client, result, ended) = worker.join().expect("worker thread");
    (
        client,
        result,
        mid_call,
        ended.saturating_duration_since(at),
    )
}

/// The statement: the ingest, then (same statement) a sleep, so the interrupt always
/// lands inside the statement whatever the ingest's speed.
const INGEST_THEN_SLEEP: &str =
    "SELECT (SELECT count(*) FROM metrics_ingest.ingest_json($1::text)), pg_sleep(30)";

fn cancel(admin: &mut Client, pid: i32) {
    let ok: bool = admin
        .query_one("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(ok, "pg_cancel_backend({pid})");
}

/// After an interrupted call: nothing stored, and the same session still runs queries
/// and ingests.
fn assert_clean_after(db: &TestDb, client: &mut Client, prefix: &str, what: &str) {
    let mut check = db.connect();
    assert_eq!(
        stored(&mut check, prefix),
        (0, 0),
        "rows stored after {what}"
    );
    let next = client.query_one("SELECT 41::bigint + 1", &[]);
    match next {
        Ok(row) => assert_eq!(row.get::<_, i64>(0), 42),
        Err(e) => panic!(
            "after {what} (autocommit), the same session cannot run a query: {}",
            error_text(&e)
        ),
    }
    let (small, small_good) = payload(&format!("after-{prefix}"), 1_000);
    let outcomes = ingest(client, &small);
    assert_eq!(
        outcomes.iter().filter(|o| o.status == "inserted").count(),
        small_good,
        "an ingest on the same session after {what}"
    );
}

#[test]
fn cancel_mid_ingest_stores_nothing_and_the_session_goes_on() {
    let db = TestDb::exclusive("faults_cancel");
    let (big, big_good) = payload("cancel", BIG);
    let (mut client, result, mid_call, latency) =
        interrupted(&db, db.connect(), INGEST_THEN_SLEEP, big.clone(), cancel);
    let message = expect_sqlstate(result, "57014", "cancelled ingest");
    assert!(
        message.contains("canceling statement due to user request"),
        "{message}"
    );
    eprintln!(
        "faults: cancel landed {} ingest_json, took effect in {:.3} s",
        if mid_call { "inside" } else { "after" },
        latency.as_secs_f64()
    );
    if mid_call {
        assert!(
            latency < Duration::from_secs(2),
            "a cancel inside ingest_json took {latency:?} to take effect"
        );
    }
    assert_clean_after(&db, &mut client, "cancel", "a cancel");

    // The whole batch then goes in, in full, on the same session.
    let outcomes = ingest_with(&mut client, &big, Via::Text, "reject")
        .unwrap_or_else(|e| panic!("ingest after the cancel: {}", error_text(&e)));
    assert_eq!(
        outcomes.iter().filter(|o| o.status == "inserted").count(),
        big_good
    );
    assert_eq!(
        stored(&mut db.connect(), "cancel"),
        (big_good as i64, (BIG - big_good) as i64)
    );
}

#[test]
fn cancel_mid_jsonb_ingest_stores_nothing_and_the_session_goes_on() {
    let db = TestDb::exclusive("faults_cancel_jsonb");
    let (big, _) = payload("jcancel", BIG);
    let (mut client, result, mid_call, _) = interrupted(
        &db,
        db.connect(),
        "SELECT (SELECT count(*) FROM metrics_ingest.ingest_json($1::text::jsonb, 'reject')), \
         pg_sleep(30)",
        big,
        cancel,
    );
    expect_sqlstate(result, "57014", "cancelled jsonb ingest");
    eprintln!(
        "faults: jsonb cancel landed {} ingest_json",
        if mid_call { "inside" } else { "after" }
    );
    assert_clean_after(&db, &mut client, "jcancel", "a cancel of a jsonb ingest");
}

#[test]
fn statement_timeout_mid_ingest_stores_nothing_and_the_session_goes_on() {
    let db = TestDb::exclusive("faults_timeout");
    let (big, _) = payload("timeout", BIG);
    let mut client = db.connect();
    client
        .batch_execute("SET statement_timeout = '300ms'")
        .unwrap();
    let started = Instant::now();
    let result = client.execute(INGEST_THEN_SLEEP, &[&big]).map(|_| ());
    let took = started.elapsed();
    let message = expect_sqlstate(result, "57014", "ingest under statement_timeout");
    assert!(message.contains("statement timeout"), "{message}");
    eprintln!("faults: statement_timeout (300 ms) ended the statement after {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "statement_timeout took {took:?}"
    );
    assert_clean_after(&db, &mut client, "timeout", "a statement timeout");
    client.batch_execute("RESET statement_timeout").unwrap();
}
