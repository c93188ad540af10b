//! Repeats of stored events across sessions: duplicates, conflicts, and the
//! serialization failure REPEATABLE READ calls for.

use metrics_ingest_tests::server::{error_text, TestDb};

use crate::support::{count, ingest, ingest_with, Via};

const EVENT: &str =
    r#"{"user_id":"rr","timestamp":"2024-03-01T10:00:00Z","talked_time":30,"event_id":"rr-1"}"#;

#[test]
fn repeatable_read_sees_an_event_committed_after_its_snapshot_as_insert_on_conflict_does() {
    let db = TestDb::new("repeats_rr");
    let mut first = db.connect();
    let mut other = db.connect();
    // Make the partition first, so that the test is about the event alone.
    ingest(
        &mut other,
        r#"{"user_id":"x","timestamp":"2024-03-01T00:00:00Z","talked_time":1}"#,
    );

    first
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .expect("snapshot taken");
    assert_eq!(ingest(&mut other, EVENT)[0].status, "inserted");
    let error = ingest_with(&mut first, EVENT, Via::Text, "reject").expect_err("40001");
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("40001"),
        "{}",
        error_text(&error)
    );
    first.batch_execute("ROLLBACK").expect("rollback");

    // INSERT ... ON CONFLICT DO NOTHING says the same in the same situation.
    first
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .expect("snapshot taken");
    ingest(&mut other, &EVENT.replace("rr-1", "rr-2"));
    let insert = first.batch_execute(
        "INSERT INTO metrics_ingest.metrics (\"timestamp\", user_id, metric_type, metric_value, event_id) \
         OVERRIDING SYSTEM VALUE VALUES ('2024-03-01T10:00:00Z', 'rr', 'talked_time', 30, 'rr-2') \
         ON CONFLICT DO NOTHING",
    );
    assert_eq!(
        insert.expect_err("40001").code().map(|c| c.code()),
        Some("40001")
    );
    first.batch_execute("ROLLBACK").expect("rollback");

    // The retry, in a new transaction, sees the event.
    first
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .expect("begin");
    assert_eq!(ingest(&mut first, EVENT)[0].status, "duplicate");
    first.batch_execute("COMMIT").expect("commit");
    assert_eq!(
        count(
            &mut first,
            "SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'rr'"
        ),
        2
    );
}

#[test]
fn a_retry_from_another_session_with_other_values_is_a_conflict() {
    let db = TestDb::new("repeats_conflict");
    let mut a = db.connect();
    let mut b = db.connect();
    assert_eq!(ingest(&mut a, EVENT)[0].status, "inserted");
    let outcome = ingest(&mut b, &EVENT.replace("30", "45")).remove(0);
    assert_eq!(outcome.status, "conflict");
    assert_eq!(outcome.field.as_deref(), Some("metric_value"));
    assert_eq!(ingest(&mut b, EVENT)[0].status, "duplicate");
}

#[test]
fn drop_and_create_extension_under_an_open_session_gives_ordinary_results() {
    let db = TestDb::new("repeats_recreate");
    let mut session = db.connect();
    assert_eq!(ingest(&mut session, EVENT)[0].status, "inserted");
    let mut admin = db.connect();
    admin
        .batch_execute("DROP EXTENSION metrics_ingest CASCADE; CREATE EXTENSION metrics_ingest")
        .expect("recreate");
    // The open session's cached table shape and registry belong to the old objects.
    assert_eq!(ingest(&mut session, EVENT)[0].status, "inserted");
    assert_eq!(ingest(&mut session, EVENT)[0].status, "duplicate");
    admin
        .batch_execute("DROP EXTENSION metrics_ingest CASCADE")
        .expect("drop");
    let error = crate::support::ingest_with(&mut session, EVENT, Via::Text, "reject")
        .expect_err("the function is gone");
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("42883"),
        "{}",
        error_text(&error)
    );
}
