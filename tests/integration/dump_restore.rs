//! pg_dump / pg_restore round trip: data, rejected rows and user-added metric types
//! come back identical, and the restored database keeps ingesting.

use metrics_ingest_tests::server::{error_text, pg_dump, pg_restore, psql, Client, TestDb};

use crate::support::{count, ingest, texts};

const TABLE_QUERIES: [(&str, &str); 4] = [
    (
        "partitions",
        "SELECT concat_ws(' ', partition, lower, upper) FROM metrics_ingest.partitions() ORDER BY lower",
    ),
    (
        "metrics",
        "SELECT t::text FROM metrics_ingest.metrics t ORDER BY id",
    ),
    (
        "rejected",
        "SELECT t::text FROM metrics_ingest.rejected t ORDER BY id",
    ),
    (
        "metric_types",
        "SELECT t::text FROM metrics_ingest.metric_types t ORDER BY metric_type",
    ),
];

fn snapshot(client: &mut Client) -> Vec<(&'static str, Vec<String>)> {
    TABLE_QUERIES
        .iter()
        .map(|(name, sql)| (*name, texts(client, sql)))
        .collect()
}

/// Fills `db` with metrics of both forms, rejected rows and a user-added metric type.
fn populate(db: &TestDb) {
    let mut c = db.connect();
    c.batch_execute(
        "INSERT INTO metrics_ingest.metric_types(metric_type, value_kind, unit) \
         VALUES ('screen_shared', 'boolean', NULL)",
    )
    .expect("adding a metric type");
    let mut elements = Vec::new();
    for i in 0..200 {
        elements.push(format!(
            r#"{{"timestamp":"2024-08-01T10:{:02}:{:02}Z","user_id":"dr-{}","session_id":"s-{}","metric_type":"talked_time","metric_value":{}.5,"event_id":"long-{i}","device_id":"d","app_version":"1.2.3","location":"Kraków","sentiment_score":-0.25,"custom":{{"k":[1,2,{i}]}}}}"#,
            i / 60,
            i % 60,
            i % 7,
            i % 3,
            i
        ));
        elements.push(format!(
            r#"{{"timestamp":{},"user_id":{},"session_id":"w-{}","event_id":"wide-{i}","talked_time":{i},"microphone_used":{},"speaker_used":0,"voice_sentiment":"neutral","screen_shared":true}}"#,
            1_722_506_400 + i,
            1000 + i % 5,
            i % 4,
            i % 2 == 0
        ));
        if i % 40 == 0 {
            elements.push(format!(
                r#"{{"timestamp":"2024-08-01T10:00:00Z","user_id":"dr-bad","metric_type":"talked_time","metric_value":-{}}}"#,
                i + 1
            ));
            elements.push(r#"{"user_id":"no time","note":"ünïcödé"}"#.to_string());
        }
    }
    let outcomes = ingest(&mut c, &format!("[{}]", elements.join(",")));
    let rejected = outcomes.iter().filter(|o| o.status == "rejected").count();
    assert_eq!(
        rejected,
        10,
        "seed rejections: {:?}",
        outcomes
            .iter()
            .filter(|o| o.status == "rejected")
            .collect::<Vec<_>>()
    );
    assert_eq!(outcomes.len() - rejected, 400);
    c.batch_execute(
        "CALL metrics_ingest.insert_metric('2024-08-02 12:00:00+02', 'dr-call', 's', \
           'voice_sentiment', 'positive', event_id => 'call-1'); \
         CALL metrics_ingest.insert_metric('2024-08-02 12:00:00+02', 'dr-call', 's', \
           'screen_shared', 0::float8, attributes => '{\"via\": \"call\"}')",
    )
    .expect("insert_metric");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM metrics_ingest.metrics"),
        200 + 200 * 5 + 2
    );
}

/// After a restore: the same rows, and new ingests get fresh ids and see old events.
fn check_restored(original: &[(&str, Vec<String>)], restored: &TestDb) {
    let mut c = restored.connect();
    let got = snapshot(&mut c);
    for ((name, want), (_, have)) in original.iter().zip(&got) {
        assert_eq!(
            have.len(),
            want.len(),
            "{}: metrics_ingest.{name} row count after restore",
            restored.name()
        );
        for (i, (w, h)) in want.iter().zip(have).enumerate() {
            assert_eq!(h, w, "{}: metrics_ingest.{name} row {i}", restored.name());
        }
    }
    let max_id = count(&mut c, "SELECT max(id) FROM metrics_ingest.metrics");
    let max_rejected = count(&mut c, "SELECT max(id) FROM metrics_ingest.rejected");
    let outcomes = ingest(
        &mut c,
        r#"[
          {"timestamp":"2024-09-01T00:00:00Z","user_id":"after","metric_type":"talked_time","metric_value":1,"event_id":"new-1"},
          {"timestamp":"2024-09-01T00:00:00Z","user_id":"after","metric_type":"screen_shared","metric_value":true,"event_id":"new-2"},
          {"timestamp":"2024-08-01T10:00:00Z","user_id":"dr-0","session_id":"s-0","metric_type":"talked_time","metric_value":0.5,"event_id":"long-0","device_id":"d","app_version":"1.2.3","location":"Kraków","sentiment_score":-0.25,"custom":{"k":[1,2,0]}},
          {"timestamp":"2024-09-01T00:00:00Z","user_id":"after","metric_type":"nope","metric_value":1}
        ]"#,
    );
    let statuses: Vec<&str> = outcomes.iter().map(|o| o.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["inserted", "inserted", "duplicate", "rejected"],
        "{}: ingest after restore: {outcomes:?}",
        restored.name()
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM metrics_ingest.partitions()"),
        original[0].1.len() as i64 + 1,
        "restored partitions, and 2024-09-01 made after the restore"
    );
    assert_eq!(
        texts(
            &mut c,
            &format!(
                "SELECT (id > {max_id})::text FROM metrics_ingest.metrics \
                 WHERE user_id = 'after' ORDER BY id"
            )
        ),
        ["true", "true"],
        "new rows get ids after the restored ones"
    );
    assert_eq!(
        count(
            &mut c,
            &format!("SELECT count(*) FROM metrics_ingest.rejected WHERE id > {max_rejected}")
        ),
        1
    );
    c.batch_execute(
        "CALL metrics_ingest.insert_metric('2024-09-01 00:00:00+00', 'after', 's', \
         'talked_time', '3')",
    )
    .unwrap_or_else(|e| panic!("insert_metric after restore: {}", error_text(&e)));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) - count(DISTINCT id) FROM metrics_ingest.metrics"
        ),
        0,
        "ids are unique"
    );
}

#[test]
fn custom_format_dump_restores_identically() {
    let source = TestDb::new("dump_source");
    populate(&source);
    let original = snapshot(&mut source.connect());
    assert_eq!(
        original[0].1.len(),
        2,
        "2024-08-01 and 2024-08-02 (insert_metric's 12:00+02 is 10:00 UTC)"
    );
    assert_eq!(
        original[3].1.len(),
        5,
        "four built-in metric types and screen_shared"
    );

    let archive = pg_dump(&source, &["-Fc"]);
    assert!(
        archive.starts_with(b"PGDMP"),
        "pg_dump -Fc wrote a custom archive"
    );
    let target = source.beside("dump_target", false);
    let warnings = pg_restore(&target, &archive, &["--exit-on-error"]);
    assert!(
        warnings.trim().is_empty(),
        "pg_restore warnings: {warnings}"
    );
    check_restored(&original, &target);

    // The source is untouched and still works too.
    assert_eq!(snapshot(&mut source.connect()), original);
}

#[test]
fn plain_sql_dump_restores_identically() {
    let source = TestDb::new("dump_plain_source");
    populate(&source);
    let original = snapshot(&mut source.connect());
    let script = pg_dump(&source, &["-Fp"]);
    let target = source.beside("dump_plain_target", false);
    psql(
        &target,
        &[],
        &String::from_utf8(script).expect("a UTF-8 dump"),
    );
    check_restored(&original, &target);
}
