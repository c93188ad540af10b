//! What the seeds' pipelines rely on (issue 12): dead letters that a retry or a
//! replayed Spark micro-batch does not duplicate, and `metrics_ingest.ingest(json)`,
//! the entry point PostgREST hands a raw request body to.

use metrics_ingest_tests::server::{error_text, expect_sqlstate, TestDb, TestRole};

use crate::support::{count, ingest, texts};

/// One payload: a good element, a bad one with an event_id, a bad one without.
const BATCH: &str = r#"[
  {"user_id":"dl-u1","session_id":"s1","timestamp":1722470400,"talked_time":12,"event_id":"f1:2"},
  {"user_id":"dl-u1","session_id":"s1","timestamp":1722470401,"talked_time":-5,"event_id":"f1:3"},
  {"user_id":"dl-u2","timestamp":"yesterday","talked_time":3}
]"#;

#[test]
fn a_bad_element_sent_again_with_its_event_id_leaves_one_dead_letter() {
    let db = TestDb::new("pipe_deadletter");
    let mut c = db.connect();
    let verdicts = |outcomes: Vec<crate::support::Outcome>| -> Vec<String> {
        outcomes
            .iter()
            .map(|o| format!("{}|{}", o.status, o.field.as_deref().unwrap_or("")))
            .collect()
    };
    // Sent three times: the verdicts do not change (a rejected element is still
    // 'rejected' on re-send: the caller learns what is wrong with it every time).
    for attempt in 1..=3 {
        assert_eq!(
            verdicts(ingest(&mut c, BATCH)),
            [
                if attempt == 1 {
                    "inserted|"
                } else {
                    "duplicate|"
                },
                "rejected|talked_time",
                "rejected|timestamp"
            ],
            "attempt {attempt}"
        );
    }
    // The element with an event_id is kept once, with its ids; the one without an
    // event_id cannot be recognised and is kept each time it came.
    assert_eq!(
        texts(
            &mut c,
            "SELECT concat_ws('|', coalesce(user_id, '<null>'), coalesce(event_id, '<null>'), field, count(*)) \
             FROM metrics_ingest.rejected GROUP BY user_id, event_id, field ORDER BY user_id"
        ),
        ["dl-u1|f1:3|talked_time|1", "dl-u2|<null>|timestamp|3"]
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM metrics_ingest.metrics"),
        1
    );

    // The key is the event_id and the element's exact text: two different bad
    // elements of one event (long form shares an event_id) are both kept.
    let long_form = r#"[
      {"user_id":"dl-u3","timestamp":1722470400,"metric_type":"talked_time","metric_value":-1,"event_id":"ev-9"},
      {"user_id":"dl-u3","timestamp":1722470400,"metric_type":"speaker_used","metric_value":"maybe","event_id":"ev-9"}
    ]"#;
    for _ in 0..2 {
        ingest(&mut c, long_form);
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM metrics_ingest.rejected WHERE event_id = 'ev-9' AND user_id = 'dl-u3'"
        ),
        2
    );
    // Unreadable ids are NULL, and such elements are kept every time.
    for _ in 0..2 {
        ingest(
            &mut c,
            r#"[{"user_id":{"x":1},"event_id":"","talked_time":1}]"#,
        );
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM metrics_ingest.rejected WHERE user_id IS NULL AND event_id IS NULL \
             AND element LIKE '%\"x\"%'"
        ),
        2
    );
}

/// Seed 000's curl body, verbatim.
const SEED_000_BODY: &str = r#"[{
    "timestamp": "2024-08-12T12:00:00+00:00",
    "user_id": "user456",
    "session_id": "session789",
    "metric_type": "microphone_used",
    "metric_value": "1",
    "device_id": "device012",
    "app_version": "1.0.1",
    "location": "Los Angeles",
    "sentiment_score": 0.8
}]"#;

#[test]
fn ingest_json_entry_point_serves_a_raw_body_to_writers_only() {
    let db = TestDb::new("pipe_postgrest");
    // What the compose file's roles do: a JWT role granted the writer role.
    let writer = TestRole::new(&db, "http_writer", "IN ROLE metrics_ingest_writer");
    let nobody = TestRole::new(&db, "http_anon", "");
    let mut w = db.connect_as(writer.name());
    // PostgREST calls it as `metrics_ingest.ingest($1::json)` and returns the rows as
    // a JSON array; here the same call, the rows rendered by json_agg.
    let sql =
        "SELECT json_agg(r ORDER BY ordinal)::text FROM metrics_ingest.ingest($1::text::json) AS r";
    let answer: String = w
        .query_one(sql, &[&SEED_000_BODY])
        .unwrap_or_else(|e| panic!("ingest(json): {}", error_text(&e)))
        .get(0);
    assert_eq!(
        answer,
        r#"[{"ordinal":1,"status":"inserted","error":null,"field":null,"metrics_stored":1}]"#
    );
    // Seeds 002 (one object) and 003 (wide form, numeric ids) through the same door.
    let seed_002 = r#"{"user_id":"b2a7465b-5d83-40c6-b8b6-2f8f15cbf23d","metric_type":"talked_time","value":12.34,"timestamp":"2024-08-08T12:34:56Z"}"#;
    let seed_003 = r#"{"user_id": 1, "name": "John Doe", "email": "john.doe@example.com", "session_id": 1, "talked_time": 120, "microphone_used": true, "speaker_used": true, "voice_sentiment": "positive", "timestamp": 1622558400}"#;
    for (body, stored) in [(seed_002, 1), (seed_003, 4)] {
        let row = w
            .query_one(
                "SELECT status, metrics_stored FROM metrics_ingest.ingest($1::text::json)",
                &[&body],
            )
            .unwrap_or_else(|e| panic!("ingest(json): {}", error_text(&e)));
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, i32>(1)),
            ("inserted".to_string(), stored)
        );
    }
    // A bad element gets its verdict and a dead letter, as through ingest_json.
    let row = w
        .query_one(
            "SELECT status, field FROM metrics_ingest.ingest('[{\"user_id\":\"h\",\"timestamp\":1722470400,\"talked_time\":-1}]')",
            &[],
        )
        .unwrap_or_else(|e| panic!("ingest(json): {}", error_text(&e)));
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("rejected".to_string(), "talked_time".to_string())
    );
    // A role without metrics_ingest_writer (PostgREST's anonymous role, if one were
    // configured) is refused.
    let mut anon = db.connect_as(nobody.name());
    expect_sqlstate(
        anon.query(
            "SELECT * FROM metrics_ingest.ingest($1::text::json)",
            &[&SEED_000_BODY],
        ),
        "42501",
        "ingest(json) without metrics_ingest_writer",
    );
    // Declared as the project's functions are: volatile, parallel unsafe, security
    // invoker with a pinned search_path; EXECUTE for the writer role only.
    let mut admin = db.connect();
    assert_eq!(
        texts(
            &mut admin,
            "SELECT concat_ws('|', provolatile, proparallel, prosecdef, proisstrict, array_to_string(proconfig, ','), \
             has_function_privilege('public', p.oid, 'EXECUTE'), \
             has_function_privilege('metrics_ingest_writer', p.oid, 'EXECUTE')) \
             FROM pg_proc p WHERE p.oid = 'metrics_ingest.ingest(json)'::regprocedure"
        ),
        ["v|u|f|f|search_path=pg_catalog, pg_temp|f|t"]
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM metrics_ingest.metrics WHERE user_id IN ('user456', '1', 'b2a7465b-5d83-40c6-b8b6-2f8f15cbf23d')"
        ),
        6
    );
}

#[test]
fn the_update_to_0_2_0_reads_the_ids_of_existing_dead_letters() {
    let db = TestDb::new("pipe_upgrade_host");
    let old = db.beside("pipe_upgrade_0_1_1", false);
    let mut c = old.connect();
    c.batch_execute("CREATE EXTENSION metrics_ingest VERSION '0.1.1'")
        .unwrap_or_else(|e| panic!("install 0.1.1: {}", error_text(&e)));
    let bad = r#"{"user_id":"up-u","event_id":"up-e","timestamp":1722470400,"talked_time":-1}"#;
    // 0.1.1 keeps a dead letter per send: the same element twice gives two rows.
    let payload = format!(
        r#"[{bad}, {bad}, {{"user_id":7,"event_id":123,"talked_time":"x"}}, 42,
            {{"user_id":"dup","event_id":"a","event_id":"b"}}, {{"timestamp":"yesterday"}}]"#
    );
    assert_eq!(
        ingest(&mut c, &payload)
            .iter()
            .filter(|o| o.status == "rejected")
            .count(),
        6
    );
    c.batch_execute("ALTER EXTENSION metrics_ingest UPDATE TO '0.2.0'")
        .unwrap_or_else(|e| panic!("update: {}", error_text(&e)));
    // The ids as the core reads them; of the two copies of one element, the oldest
    // keeps its event_id (the key), the later one gets NULL and stays.
    assert_eq!(
        texts(
            &mut c,
            "SELECT concat_ws('|', ordinal, coalesce(user_id, '-'), coalesce(event_id, '-')) \
             FROM metrics_ingest.rejected ORDER BY id"
        ),
        [
            "1|up-u|up-e",
            "2|up-u|-",
            "3|7|123",
            "4|-|-",
            "5|dup|-",
            "6|-|-"
        ]
    );
    // And from now on the element is recognised.
    assert_eq!(ingest(&mut c, &format!("[{bad}]"))[0].status, "rejected");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM metrics_ingest.rejected WHERE user_id = 'up-u'"
        ),
        2
    );
}
