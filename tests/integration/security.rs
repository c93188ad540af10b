//! Privileges and search_path safety, as seen by roles that are not superusers.

use metrics_ingest_tests::server::{error_text, expect_sqlstate, Client, TestDb, TestRole};

use crate::support::{count, ingest_with, texts, Via};

const ELEMENT: &str = r#"[{"timestamp":"2024-06-01T08:00:00Z","user_id":"sec-user","session_id":"sec-s","metric_type":"talked_time","metric_value":12.5,"event_id":"sec-1"}]"#;

const CALL_TEXT: &str = "CALL metrics_ingest.insert_metric('2024-06-01 09:00:00+00', 'sec-user', \
     'sec-s', 'talked_time', '7', event_id => 'sec-call-1')";
const CALL_NUMBER: &str =
    "CALL metrics_ingest.insert_metric('2024-06-01 09:30:00+00', 'sec-user', \
     'sec-s', 'speaker_used', 1::float8, event_id => 'sec-call-2')";

const TABLES: [&str; 3] = [
    "metrics_ingest.metrics",
    "metrics_ingest.rejected",
    "metrics_ingest.metric_types",
];

const DIRECT_WRITES: [&str; 5] = [
    "INSERT INTO metrics_ingest.metrics (\"timestamp\", user_id, metric_type, metric_value) \
     VALUES (now(), 'direct', 'talked_time', 1)",
    "UPDATE metrics_ingest.metrics SET metric_value = 0",
    "DELETE FROM metrics_ingest.metrics",
    "TRUNCATE metrics_ingest.metrics",
    "INSERT INTO metrics_ingest.metric_types (metric_type, value_kind) VALUES ('hacked', 'number')",
];

fn ingest_all_overloads(client: &mut Client) -> Vec<(Via, Result<usize, postgres::Error>)> {
    [Via::Text, Via::Json, Via::Jsonb]
        .into_iter()
        .map(|via| {
            (
                via,
                ingest_with(client, ELEMENT, via, "reject").map(|o| o.len()),
            )
        })
        .collect()
}

#[test]
fn role_without_grants_can_do_nothing() {
    let db = TestDb::new("sec_nobody");
    let nobody = TestRole::new(&db, "nobody", "");
    let mut c = db.connect_as(nobody.name());
    for (via, result) in ingest_all_overloads(&mut c) {
        expect_sqlstate(
            result,
            "42501",
            &format!("ingest_json via {via:?} without grants"),
        );
    }
    expect_sqlstate(
        c.batch_execute(CALL_TEXT),
        "42501",
        "insert_metric(text) without grants",
    );
    expect_sqlstate(
        c.batch_execute(CALL_NUMBER),
        "42501",
        "insert_metric(float8) without grants",
    );
    for table in TABLES {
        expect_sqlstate(
            c.query(&format!("SELECT * FROM {table}"), &[]),
            "42501",
            &format!("SELECT {table} without grants"),
        );
    }
    for sql in DIRECT_WRITES {
        expect_sqlstate(c.batch_execute(sql), "42501", sql);
    }
    drop(c);
    let mut admin = db.connect();
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM metrics_ingest.metrics"),
        0
    );
}

#[test]
fn writer_ingests_through_the_functions_only() {
    let db = TestDb::new("sec_writer");
    let writer = TestRole::new(&db, "writer", "IN ROLE metrics_ingest_writer");
    let mut c = db.connect_as(writer.name());

    let results = ingest_all_overloads(&mut c);
    for (via, result) in results {
        let n = result
            .unwrap_or_else(|e| panic!("writer, ingest_json via {via:?}: {}", error_text(&e)));
        assert_eq!(n, 1, "one outcome via {via:?}");
    }
    c.batch_execute(CALL_TEXT)
        .unwrap_or_else(|e| panic!("writer, insert_metric(text): {}", error_text(&e)));
    c.batch_execute(CALL_NUMBER)
        .unwrap_or_else(|e| panic!("writer, insert_metric(float8): {}", error_text(&e)));
    // A bad element is rejected and recorded as sent by the writer.
    let bad = ingest_with(
        &mut c,
        r#"[{"timestamp":"soon","user_id":"sec-user","metric_type":"talked_time","metric_value":1}]"#,
        Via::Text,
        "reject",
    )
    .expect("writer, a bad element");
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].status, "rejected");
    assert_eq!(bad[0].field.as_deref(), Some("timestamp"));

    for table in ["metrics_ingest.metrics", "metrics_ingest.rejected"] {
        expect_sqlstate(
            c.query(&format!("SELECT * FROM {table}"), &[]),
            "42501",
            &format!("writer SELECT {table}"),
        );
    }
    for sql in DIRECT_WRITES {
        expect_sqlstate(c.batch_execute(sql), "42501", &format!("writer: {sql}"));
    }
    drop(c);

    let mut admin = db.connect();
    assert_eq!(
        texts(
            &mut admin,
            "SELECT concat_ws('|', user_id, metric_type, metric_value, event_id, \
             to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')) \
             FROM metrics_ingest.metrics ORDER BY \"timestamp\", metric_type"
        ),
        [
            // the three overloads sent the same event: stored once
            "sec-user|talked_time|12.5|sec-1|2024-06-01 08:00:00",
            "sec-user|talked_time|7|sec-call-1|2024-06-01 09:00:00",
            "sec-user|speaker_used|1|sec-call-2|2024-06-01 09:30:00",
        ]
    );
    assert_eq!(
        texts(
            &mut admin,
            "SELECT rejected_by || '|' || field FROM metrics_ingest.rejected"
        ),
        [format!("{}|timestamp", writer.name())]
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM metrics_ingest.metric_types"
        ),
        4
    );
}

#[test]
fn reader_reads_and_cannot_write() {
    let db = TestDb::new("sec_reader");
    let reader = TestRole::new(&db, "reader", "IN ROLE metrics_ingest_reader");
    {
        let mut admin = db.connect();
        ingest_with(&mut admin, ELEMENT, Via::Text, "reject").expect("seed row");
        ingest_with(&mut admin, "[{}]", Via::Text, "reject").expect("seed rejected row");
    }
    let mut c = db.connect_as(reader.name());
    for (table, rows) in [
        ("metrics_ingest.metrics", 1),
        ("metrics_ingest.rejected", 1),
        ("metrics_ingest.metric_types", 4),
    ] {
        assert_eq!(
            count(&mut c, &format!("SELECT count(*) FROM {table}")),
            rows,
            "reader SELECT {table}"
        );
    }
    for (via, result) in ingest_all_overloads(&mut c) {
        expect_sqlstate(result, "42501", &format!("reader, ingest_json via {via:?}"));
    }
    expect_sqlstate(
        c.batch_execute(CALL_TEXT),
        "42501",
        "reader, insert_metric(text)",
    );
    expect_sqlstate(
        c.batch_execute(CALL_NUMBER),
        "42501",
        "reader, insert_metric(float8)",
    );
    for sql in DIRECT_WRITES {
        expect_sqlstate(c.batch_execute(sql), "42501", &format!("reader: {sql}"));
    }
    expect_sqlstate(
        c.batch_execute("DELETE FROM metrics_ingest.rejected"),
        "42501",
        "reader DELETE rejected",
    );
    drop(c);
    let mut admin = db.connect();
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM metrics_ingest.metrics"),
        1
    );
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM metrics_ingest.rejected"),
        1
    );
}

/// Look-alikes a writer plants in a schema of its own and in pg_temp. Each function
/// records its call in evil.called and returns a wrong answer.
const PLANT: &str = r#"
CREATE SCHEMA evil;
CREATE TABLE evil.called (what text, at timestamptz DEFAULT clock_timestamp());
GRANT ALL ON SCHEMA evil TO PUBLIC;
GRANT ALL ON evil.called TO PUBLIC;

CREATE FUNCTION evil.log(what text) RETURNS void LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO evil.called(what) VALUES (what); END$$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('now'); RETURN '2001-01-01 00:00:00+00'; END$$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('clock_timestamp'); RETURN '2001-01-01 00:00:00+00'; END$$;
CREATE FUNCTION evil.lower(t text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('lower'); RETURN 'EVIL'; END$$;
CREATE FUNCTION evil.upper(t text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('upper'); RETURN 'EVIL'; END$$;
CREATE FUNCTION evil.btrim(t text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('btrim'); RETURN 'EVIL'; END$$;
CREATE FUNCTION evil.btrim(t text, c text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('btrim2'); RETURN 'EVIL'; END$$;
CREATE FUNCTION evil.length(t text) RETURNS integer LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('length'); RETURN 1; END$$;
CREATE FUNCTION evil.char_length(t text) RETURNS integer LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('char_length'); RETURN 1; END$$;
CREATE FUNCTION evil.to_timestamp(d double precision) RETURNS timestamptz LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('to_timestamp'); RETURN '2001-01-01 00:00:00+00'; END$$;
CREATE FUNCTION evil.jsonb_in(t text) RETURNS jsonb LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('jsonb_in'); RETURN '{"evil": true}'; END$$;
CREATE FUNCTION evil.to_jsonb(t text) RETURNS jsonb LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('to_jsonb'); RETURN '{"evil": true}'; END$$;
CREATE FUNCTION evil.jsonb_build_object(VARIADIC a text[]) RETURNS jsonb LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('jsonb_build_object'); RETURN '{"evil": true}'; END$$;
CREATE FUNCTION evil."session_user"() RETURNS name LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('session_user'); RETURN 'evil'; END$$;
CREATE FUNCTION evil.nextval(s regclass) RETURNS bigint LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('nextval'); RETURN 1; END$$;

CREATE FUNCTION evil.text_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('text ='); RETURN true; END$$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq);
CREATE FUNCTION evil.float_cmp(a double precision, b double precision) RETURNS boolean
  LANGUAGE plpgsql AS $$BEGIN PERFORM evil.log('float8 compare'); RETURN true; END$$;
CREATE OPERATOR evil.< (LEFTARG = double precision, RIGHTARG = double precision, FUNCTION = evil.float_cmp);
CREATE OPERATOR evil.> (LEFTARG = double precision, RIGHTARG = double precision, FUNCTION = evil.float_cmp);
CREATE OPERATOR evil.<= (LEFTARG = double precision, RIGHTARG = double precision, FUNCTION = evil.float_cmp);
CREATE OPERATOR evil.>= (LEFTARG = double precision, RIGHTARG = double precision, FUNCTION = evil.float_cmp);
CREATE FUNCTION evil.text_concat(a text, b text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN PERFORM evil.log('text ||'); RETURN 'EVIL'; END$$;
CREATE OPERATOR evil.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_concat);

-- Tables named like the extension's, with a registry that knows a type it does not.
CREATE TABLE evil.metrics (LIKE metrics_ingest.metrics);
CREATE TABLE evil.rejected (LIKE metrics_ingest.rejected);
CREATE TABLE evil.metric_types (LIKE metrics_ingest.metric_types INCLUDING DEFAULTS);
INSERT INTO evil.metric_types (metric_type, value_kind) VALUES ('evil_type', 'number');
CREATE TEMP TABLE metrics (LIKE metrics_ingest.metrics);
CREATE TEMP TABLE rejected (LIKE metrics_ingest.rejected);
CREATE TEMP TABLE metric_types (LIKE metrics_ingest.metric_types INCLUDING DEFAULTS);
INSERT INTO pg_temp.metric_types (metric_type, value_kind) VALUES ('evil_type', 'number');
"#;

#[test]
fn planted_look_alikes_on_the_search_path_are_never_used() {
    let db = TestDb::new("sec_search_path");
    let writer = TestRole::new(&db, "hijacker", "IN ROLE metrics_ingest_writer");
    {
        // LIKE needs to read the extension's table definitions: done by the superuser.
        let mut admin = db.connect();
        admin
            .batch_execute(&format!(
                "GRANT CREATE ON DATABASE {} TO {}",
                db.name(),
                writer.name()
            ))
            .expect("GRANT CREATE ON DATABASE");
        admin
            .batch_execute(&format!(
                "GRANT SELECT ON ALL TABLES IN SCHEMA metrics_ingest TO {w}",
                w = writer.name()
            ))
            .expect("temporary SELECT grant for CREATE TABLE ... LIKE");
    }
    let mut c = db.connect_as(writer.name());
    c.batch_execute(PLANT)
        .unwrap_or_else(|e| panic!("planting look-alikes: {}", error_text(&e)));
    db.connect()
        .batch_execute(&format!(
            "REVOKE SELECT ON ALL TABLES IN SCHEMA metrics_ingest FROM {}",
            writer.name()
        ))
        .expect("REVOKE");

    // The traps work: with evil ahead of pg_catalog, unqualified names reach them.
    c.batch_execute(
        "SET search_path = evil, pg_catalog, public; \
         SELECT now(), lower('A'), btrim(' a '), 'a'::text = 'b'::text; \
         SELECT count(*) FROM metrics; \
         RESET search_path",
    )
    .expect("calling the planted objects on purpose");
    assert_eq!(
        texts(&mut c, "SELECT what FROM evil.called ORDER BY at"),
        ["now", "lower", "btrim", "text ="],
        "the planted functions log their calls"
    );
    c.batch_execute("DELETE FROM evil.called").unwrap();

    let search_paths = [
        "evil, public",
        // pg_catalog named after evil: evil's objects win over the catalog's
        "evil, pg_catalog, public",
        // pg_temp first: its tables win over every other schema's
        "pg_temp, evil, pg_catalog, public",
    ];
    for (n, path) in search_paths.iter().enumerate() {
        c.batch_execute(&format!("SET search_path = {path}"))
            .expect("SET search_path");
        let payload = format!(
            r#"[
              {{"timestamp":"2024-07-0{d}T10:00:00Z","user_id":"Hijack-{n}","session_id":"  s  ","metric_type":"talked_time","metric_value":5,"event_id":"h-{n}","extra":"x"}},
              {{"timestamp":1719828000,"user_id":"Hijack-{n}","microphone_used":true,"voice_sentiment":"positive","event_id":"w-{n}"}},
              {{"timestamp":"2024-07-01T10:00:00Z","user_id":"Hijack-{n}","metric_type":"evil_type","metric_value":1}}
            ]"#,
            d = n + 1
        );
        for via in [Via::Text, Via::Jsonb] {
            let outcomes = ingest_with(&mut c, &payload, via, "reject").unwrap_or_else(|e| {
                panic!(
                    "ingest with search_path = {path} via {via:?}: {}",
                    error_text(&e)
                )
            });
            let statuses: Vec<(&str, Option<&str>)> = outcomes
                .iter()
                .map(|o| (o.status.as_str(), o.field.as_deref()))
                .collect();
            let expected_first = if via == Via::Text {
                "inserted"
            } else {
                "duplicate"
            };
            assert_eq!(
                statuses,
                [
                    (expected_first, None),
                    (expected_first, None),
                    ("rejected", Some("metric_type")),
                ],
                "search_path = {path} via {via:?}: {outcomes:?}"
            );
        }
        c.batch_execute(&format!(
            "CALL metrics_ingest.insert_metric('2024-07-0{d} 11:00:00+00', 'Hijack-{n}', 's', \
             'talked_time', '9', event_id => 'c-{n}'); \
             CALL metrics_ingest.insert_metric('2024-07-0{d} 11:30:00+00', 'Hijack-{n}', 's', \
             'talked_time', 9.5::float8, event_id => 'd-{n}')",
            d = n + 1
        ))
        .unwrap_or_else(|e| panic!("CALL with search_path = {path}: {}", error_text(&e)));
        expect_sqlstate(
            c.batch_execute(&format!(
                "CALL metrics_ingest.insert_metric(now(), 'Hijack-{n}', 's', 'evil_type', '1')"
            )),
            "22023",
            "insert_metric of a type only the planted registry knows",
        );
        // The planted temp tables stayed empty (apart from the planted registry row).
        assert_eq!(
            count(
                &mut c,
                "SELECT (SELECT count(*) FROM pg_temp.metrics) + (SELECT count(*) FROM pg_temp.rejected) \
                 + (SELECT count(*) FROM pg_temp.metric_types) - 1"
            ),
            0,
            "search_path = {path}: the pg_temp look-alike tables were written"
        );
    }
    c.batch_execute("RESET search_path").unwrap();
    let called = texts(&mut c, "SELECT what FROM evil.called ORDER BY at");
    assert!(called.is_empty(), "planted objects were called: {called:?}");
    assert_eq!(
        count(
            &mut c,
            "SELECT (SELECT count(*) FROM evil.metrics) + (SELECT count(*) FROM evil.rejected) \
             + (SELECT count(*) FROM evil.metric_types) - 1"
        ),
        0,
        "the evil look-alike tables were written"
    );
    drop(c);

    let mut admin = db.connect();
    let rows = texts(
        &mut admin,
        "SELECT concat_ws('|', user_id, session_id, metric_type, metric_value, metric_label, \
         event_id, attributes::text, \
         to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), \
         (ingested_at > pg_catalog.now() - interval '10 minutes')::text) \
         FROM metrics_ingest.metrics ORDER BY user_id, event_id, metric_type",
    );
    let mut expected = Vec::new();
    for n in 0..search_paths.len() {
        let d = n + 1;
        expected.extend([
            format!("Hijack-{n}|s|talked_time|9|c-{n}|2024-07-0{d} 11:00:00|true"),
            format!("Hijack-{n}|s|talked_time|9.5|d-{n}|2024-07-0{d} 11:30:00|true"),
            format!(
                "Hijack-{n}|  s  |talked_time|5|h-{n}|{{\"extra\": \"x\"}}|2024-07-0{d} 10:00:00|true"
            ),
            format!("Hijack-{n}|microphone_used|1|w-{n}|2024-07-01 10:00:00|true"),
            format!("Hijack-{n}|voice_sentiment|1|positive|w-{n}|2024-07-01 10:00:00|true"),
        ]);
    }
    assert_eq!(rows, expected, "rows stored under hostile search_paths");
    let rejected = texts(
        &mut admin,
        "SELECT concat_ws('|', rejected_by, ordinal, field) FROM metrics_ingest.rejected ORDER BY id",
    );
    assert_eq!(rejected.len(), 2 * search_paths.len());
    assert!(
        rejected
            .iter()
            .all(|r| r == &format!("{}|3|metric_type", writer.name())),
        "rejected rows: {rejected:?}"
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM metrics_ingest.metric_types"
        ),
        4,
        "the registry is the extension's"
    );
}
