//! Hostile and malformed payloads: each must end in a class-22 (or 54) error or in
//! `rejected` outcomes with a reason; nothing may crash the server or raise XX000.

use metrics_ingest_tests::server::{
    error_text, expect_sqlstate, postmaster_start_time, sqlstate, Client, TestDb,
};

use crate::support::{count, ingest_with, texts, Outcome, Via};

/// What a case must produce.
enum Expect {
    /// ingest_json raises an error whose SQLSTATE starts with the first string (a
    /// full code, or a class like "22") and whose message contains the second.
    Error(&'static str, &'static str),
    /// One outcome per element: (status, field, fragment of the error).
    Outcomes(Vec<(&'static str, Option<&'static str>, &'static str)>),
    /// Several answers are right: every element rejected with a reason, or a class 22
    /// or 54 error. (Never success, never XX000.)
    Refused,
}

struct Case {
    name: &'static str,
    payload: String,
    via: Via,
    on_error: &'static str,
    expect: Expect,
    /// The elements as sent (text overloads): a rejected row must keep its element verbatim.
    raw_elements: Option<Vec<String>>,
    /// Queries over the stored rows and the text they must return, row by row.
    checks: Vec<(&'static str, Vec<String>)>,
}

const TS: &str = r#""2024-05-01T12:00:00Z""#;

/// A long-form element: the base fields with `overrides` (key, raw JSON or None to
/// drop the key) applied in place, and the other pairs of `overrides` appended.
fn element(overrides: &[(&str, Option<&str>)]) -> String {
    let base: [(&str, &str); 5] = [
        ("timestamp", TS),
        ("user_id", r#""h-user""#),
        ("session_id", r#""h-session""#),
        ("metric_type", r#""talked_time""#),
        ("metric_value", "42"),
    ];
    let mut parts = Vec::new();
    for (key, value) in base {
        match overrides.iter().find(|(k, _)| *k == key) {
            Some((_, Some(v))) => parts.push(format!("\"{key}\":{v}")),
            Some((_, None)) => {}
            None => parts.push(format!("\"{key}\":{value}")),
        }
    }
    for (key, value) in overrides {
        if base.iter().all(|(k, _)| k != key) {
            if let Some(v) = value {
                parts.push(format!("\"{key}\":{v}"));
            }
        }
    }
    format!("{{{}}}", parts.join(","))
}

/// `[e1,e2,...]` as text.
fn array(elements: &[String]) -> String {
    format!("[{}]", elements.join(","))
}

fn case(name: &'static str, payload: String, expect: Expect) -> Case {
    Case {
        name,
        payload,
        via: Via::Text,
        on_error: "reject",
        expect,
        raw_elements: None,
        checks: Vec::new(),
    }
}

/// A payload of the given elements, sent as text; rejected rows must keep them verbatim.
fn elements_case(name: &'static str, elements: Vec<String>, expect: Expect) -> Case {
    Case {
        raw_elements: Some(elements.clone()),
        ..case(name, array(&elements), expect)
    }
}

fn rejected(field: &'static str, fragment: &'static str) -> Expect {
    Expect::Outcomes(vec![("rejected", Some(field), fragment)])
}

fn inserted(n: usize) -> Expect {
    Expect::Outcomes(vec![("inserted", None, ""); n])
}

fn via(mut c: Case, via: Via) -> Case {
    c.via = via;
    c.raw_elements = None;
    c
}

fn check(mut c: Case, sql: &'static str, expected: &[&str]) -> Case {
    c.checks
        .push((sql, expected.iter().map(|s| s.to_string()).collect()));
    c
}

fn cases() -> Vec<Case> {
    let deep_array = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_object = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    let big_string = format!("\"{}\"", "x".repeat(10 * 1024 * 1024));
    let s256 = format!("\"{}\"", "é".repeat(256));
    let s257 = format!("\"{}\"", "é".repeat(257));
    let good = element(&[]);
    let injection = element(&[
        (
            "user_id",
            Some(r#""x'); DROP TABLE metrics_ingest.metrics; --""#),
        ),
        (
            "session_id",
            Some(r#""'; DELETE FROM metrics_ingest.metric_types; --""#),
        ),
        ("location", Some(r#""$$ || pg_sleep(5) || $$""#)),
        ("device_id", Some(r#""\\'; SELECT 1; --""#)),
        ("app_version", Some(r#""\" OR 1=1 --""#)),
        ("event_id", Some(r#""1; TRUNCATE metrics_ingest.rejected""#)),
    ]);
    let unicode = element(&[
        ("user_id", Some("\"Zoë-😀-日本語-🇧🇷\"")),
        ("location", Some("\"São Paulo\"")),
        ("device_id", Some("\"e\u{301}\"")),
        ("app_version", Some(r#""\u00e9\ud83d\ude00""#)),
        ("emoji-😀-key", Some("\"värde 🎉\"")),
    ]);
    vec![
        // --- whole payloads that are not what ingest_json takes -----------------
        case("not JSON", "this is not json".into(), Expect::Error("22P02", "not valid JSON")),
        case("empty payload", "".into(), Expect::Error("22P02", "not valid JSON")),
        case(
            "truncated JSON",
            r#"[{"timestamp":"2024-05-01T12:00:00Z","user_id":"u1""#.into(),
            Expect::Error("22P02", "not valid JSON"),
        ),
        case(
            "truncated after a comma",
            format!("[{good},"),
            Expect::Error("22P02", "not valid JSON"),
        ),
        case("trailing garbage", format!("[{good}] x"), Expect::Error("22P02", "not valid JSON")),
        case(
            "bare NaN token",
            element(&[("metric_value", Some("NaN"))]),
            Expect::Error("22P02", "not valid JSON"),
        ),
        case(
            "byte order mark",
            format!("\u{feff}[{good}]"),
            Expect::Error("22P02", "not valid JSON"),
        ),
        case("payload is a string", r#""abc""#.into(), Expect::Error("22023", "JSON array")),
        case("payload is null", "null".into(), Expect::Error("22023", "JSON array")),
        case("payload is a number", "42".into(), Expect::Error("22023", "JSON array")),
        via(
            case("not JSON via json", "{nope".into(), Expect::Error("22P02", "json")),
            Via::Json,
        ),
        Case {
            on_error: "bogus",
            ..case("unknown on_error", array(std::slice::from_ref(&good)), Expect::Error("22023", "on_error"))
        },
        Case {
            on_error: "stop",
            ..case(
                "on_error stop: second element bad",
                array(&[good.clone(), element(&[("timestamp", Some(r#""x""#))])]),
                Expect::Error("22", "element 2: timestamp:"),
            )
        },
        // --- empty and degenerate --------------------------------------------
        case("empty array", "[]".into(), Expect::Outcomes(vec![])),
        case("empty array in spaces", " \n [ ] \t ".into(), Expect::Outcomes(vec![])),
        case("empty object", "{}".into(), rejected("timestamp", "timestamp: is required")),
        elements_case(
            "array of an empty object",
            vec!["{}".into()],
            rejected("timestamp", "timestamp: is required"),
        ),
        elements_case(
            "scalars where elements belong",
            vec!["1".into(), r#""a""#.into(), "null".into()],
            Expect::Outcomes(vec![
                ("rejected", Some("element"), "must be a JSON object, found a number"),
                ("rejected", Some("element"), "must be a JSON object, found a string"),
                ("rejected", Some("element"), "must be a JSON object, found null"),
            ]),
        ),
        elements_case(
            "arrays and booleans where elements belong",
            vec!["true".into(), "[]".into(), "[[1]]".into()],
            Expect::Outcomes(vec![
                ("rejected", Some("element"), "must be a JSON object"),
                ("rejected", Some("element"), "must be a JSON object, found an array"),
                ("rejected", Some("element"), "must be a JSON object, found an array"),
            ]),
        ),
        elements_case(
            "good, bad, good",
            vec![good.clone(), "{}".into(), good.clone()],
            Expect::Outcomes(vec![
                ("inserted", None, ""),
                ("rejected", Some("timestamp"), "is required"),
                ("inserted", None, ""),
            ]),
        ),
        // --- nesting ------------------------------------------------------------
        elements_case(
            "whole array nested 100,000 deep",
            vec![deep_array(99_999)],
            rejected("element", "must be a JSON object, found an array"),
        ),
        case(
            "whole payload an object nested 100,000 deep",
            deep_object(100_000),
            rejected("a", "recursion limit exceeded"),
        ),
        elements_case(
            "array nested 100,000 deep inside an element",
            vec![element(&[("deep", Some(&deep_array(100_000)))])],
            rejected("deep", "recursion limit exceeded"),
        ),
        elements_case(
            "object nested 100,000 deep inside an element",
            vec![element(&[("deep", Some(&deep_object(100_000)))])],
            rejected("deep", "recursion limit exceeded"),
        ),
        via(
            case(
                "nested 100,000 deep inside an element, via json",
                array(&[element(&[("deep", Some(&deep_array(100_000)))])]),
                Expect::Error("54001", "stack depth"),
            ),
            Via::Json,
        ),
        via(
            case(
                "nested 100,000 deep inside an element, via jsonb",
                array(&[element(&[("deep", Some(&deep_array(100_000)))])]),
                Expect::Error("54001", "stack depth"),
            ),
            Via::Jsonb,
        ),
        via(
            case(
                "nested 1,000 deep inside an element, via jsonb",
                array(&[element(&[("deep", Some(&deep_array(1_000)))])]),
                Expect::Refused,
            ),
            Via::Jsonb,
        ),
        via(
            case(
                "whole array nested 1,000 deep, via jsonb",
                format!("[{}]", deep_array(999)),
                Expect::Refused,
            ),
            Via::Jsonb,
        ),
        check(
            elements_case(
                "nested 100 deep inside an element (kept in attributes)",
                vec![element(&[("deep", Some(&deep_array(100)))])],
                inserted(1),
            ),
            "SELECT jsonb_typeof(attributes->'deep') FROM metrics_ingest.metrics",
            &["array"],
        ),
        // --- sizes ------------------------------------------------------------------
        elements_case(
            "10 MB string in user_id",
            vec![element(&[("user_id", Some(&big_string))])],
            rejected("user_id", "longer than 256 characters"),
        ),
        elements_case(
            "257 characters in user_id",
            vec![element(&[("user_id", Some(&s257))])],
            rejected("user_id", "longer than 256 characters (257 given)"),
        ),
        check(
            elements_case(
                "256 two-byte characters in user_id",
                vec![element(&[("user_id", Some(&s256))])],
                inserted(1),
            ),
            "SELECT length(user_id) || ' ' || octet_length(user_id) FROM metrics_ingest.metrics",
            &["256 512"],
        ),
        // --- strings JSON allows and PostgreSQL text does not -----------------------
        elements_case(
            "\\u0000 in user_id",
            vec![element(&[("user_id", Some(r#""a\u0000b""#))])],
            rejected("user_id", "\\u0000"),
        ),
        elements_case(
            "\\u0000 in an unknown field",
            vec![element(&[("note", Some(r#""a\u0000b""#))])],
            rejected("note", "\\u0000"),
        ),
        via(
            case(
                "\\u0000 via jsonb",
                array(&[element(&[("user_id", Some(r#""a\u0000b""#))])]),
                Expect::Error("22P05", "Unicode"),
            ),
            Via::Jsonb,
        ),
        elements_case(
            "lone high surrogate in user_id",
            vec![element(&[("user_id", Some(r#""u\ud800x""#))])],
            rejected("user_id", "not valid JSON"),
        ),
        elements_case(
            "lone low surrogate in user_id",
            vec![element(&[("user_id", Some(r#""u\udc00""#))])],
            rejected("user_id", "not valid JSON"),
        ),
        elements_case(
            "lone surrogate at the end of an unknown field",
            vec![element(&[("note", Some(r#""\ud800""#))])],
            rejected("note", "not valid JSON"),
        ),
        via(
            case(
                "lone surrogate via jsonb",
                array(&[element(&[("user_id", Some(r#""u\ud800""#))])]),
                Expect::Error("22P02", "json"),
            ),
            Via::Jsonb,
        ),
        // --- numbers ---------------------------------------------------------------
        elements_case(
            "1e400 in metric_value",
            vec![element(&[("metric_value", Some("1e400"))])],
            rejected("metric_value", "not a finite number"),
        ),
        elements_case(
            "-1e400 in metric_value",
            vec![element(&[("metric_value", Some("-1e400"))])],
            rejected("metric_value", "not a finite number"),
        ),
        elements_case(
            "\"NaN\" in metric_value",
            vec![element(&[("metric_value", Some(r#""NaN""#))])],
            rejected("metric_value", "not a finite number"),
        ),
        elements_case(
            "\"Infinity\" in metric_value",
            vec![element(&[("metric_value", Some(r#""Infinity""#))])],
            rejected("metric_value", "not a finite number"),
        ),
        elements_case(
            "negative talked_time",
            vec![element(&[("metric_value", Some("-1"))])],
            rejected("metric_value", "outside the bounds"),
        ),
        elements_case(
            "2 as a boolean metric",
            vec![element(&[
                ("metric_type", Some(r#""microphone_used""#)),
                ("metric_value", Some("2")),
            ])],
            rejected("metric_value", "not a boolean"),
        ),
        elements_case(
            "unknown sentiment label",
            vec![element(&[
                ("metric_type", Some(r#""voice_sentiment""#)),
                ("metric_value", Some(r#""ecstatic""#)),
            ])],
            rejected("metric_value", "not a number or a label"),
        ),
        elements_case(
            "sentiment_score out of range",
            vec![element(&[("sentiment_score", Some("2"))])],
            rejected("sentiment_score", "outside [-1, 1]"),
        ),
        elements_case(
            "unknown metric type",
            vec![element(&[("metric_type", Some(r#""nope""#))])],
            rejected("metric_type", "not a known metric type"),
        ),
        // --- wrong JSON types --------------------------------------------------------
        elements_case(
            "object in user_id",
            vec![element(&[("user_id", Some(r#"{"a":1}"#))])],
            rejected("user_id", "must be a string or an integer, found an object"),
        ),
        elements_case(
            "array in session_id",
            vec![element(&[("session_id", Some("[1]"))])],
            rejected("session_id", "found an array"),
        ),
        elements_case(
            "array in metric_type",
            vec![element(&[("metric_type", Some(r#"["talked_time"]"#))])],
            rejected("metric_type", "must be a string, found an array"),
        ),
        elements_case(
            "object in timestamp",
            vec![element(&[("timestamp", Some(r#"{"s":1}"#))])],
            rejected("timestamp", "found an object"),
        ),
        elements_case(
            "object in metric_value",
            vec![element(&[("metric_value", Some(r#"{"v":1}"#))])],
            rejected("metric_value", "must be a number, found an object"),
        ),
        elements_case(
            "number in location",
            vec![element(&[("location", Some("5"))])],
            rejected("location", "must be a string, found a number"),
        ),
        elements_case(
            "boolean in event_id",
            vec![element(&[("event_id", Some("true"))])],
            rejected("event_id", "found a boolean"),
        ),
        elements_case(
            "fractional user_id",
            vec![element(&[("user_id", Some("1.5"))])],
            rejected("user_id", "must be a string or an integer"),
        ),
        elements_case(
            "empty user_id",
            vec![element(&[("user_id", Some(r#""""#))])],
            rejected("user_id", "must not be empty"),
        ),
        elements_case(
            "null user_id",
            vec![element(&[("user_id", Some("null"))])],
            rejected("user_id", "is required"),
        ),
        // --- duplicate keys ---------------------------------------------------------
        elements_case(
            "duplicate user_id",
            vec![r#"{"timestamp":"2024-05-01T12:00:00Z","user_id":"a","user_id":"b","metric_type":"talked_time","metric_value":3}"#.into()],
            rejected("user_id", "appears more than once"),
        ),
        elements_case(
            "duplicate unknown key",
            vec![element(&[("x", Some("1")), ("y", Some("2"))]).replace("\"y\"", "\"x\"")],
            rejected("x", "appears more than once"),
        ),
        // --- ids -------------------------------------------------------------------
        check(
            elements_case(
                "30-digit integer ids",
                vec![element(&[
                    ("user_id", Some("123456789012345678901234567890")),
                    ("session_id", Some("987654321098765432109876543210")),
                    ("event_id", Some("123456789012345678901234567890")),
                ])],
                inserted(1),
            ),
            "SELECT user_id || '|' || session_id || '|' || event_id FROM metrics_ingest.metrics",
            &["123456789012345678901234567890|987654321098765432109876543210|123456789012345678901234567890"],
        ),
        check(
            elements_case(
                "negative integer user_id",
                vec![element(&[("user_id", Some("-5"))])],
                inserted(1),
            ),
            "SELECT user_id FROM metrics_ingest.metrics",
            &["-5"],
        ),
        // --- timestamps --------------------------------------------------------------
        elements_case(
            "year 99999",
            vec![element(&[("timestamp", Some(r#""99999-01-01T00:00:00Z""#))])],
            rejected("timestamp", "99999"),
        ),
        elements_case(
            "epoch milliseconds sent as seconds",
            vec![element(&[("timestamp", Some("1714564800000"))])],
            rejected("timestamp", "timestamp_ms"),
        ),
        elements_case(
            "epoch seconds sent as timestamp_ms",
            vec![element(&[("timestamp", None), ("timestamp_ms", Some("1714564800"))])],
            rejected("timestamp_ms", "outside the accepted window"),
        ),
        elements_case(
            "February 30th",
            vec![element(&[("timestamp", Some(r#""2024-02-30T00:00:00Z""#))])],
            rejected("timestamp", "not an ISO 8601 timestamp"),
        ),
        elements_case(
            "end of the window (excluded)",
            vec![element(&[("timestamp", Some(r#""2100-01-01T00:00:00Z""#))])],
            rejected("timestamp", "outside the accepted window"),
        ),
        elements_case(
            "just before the window",
            vec![element(&[("timestamp", Some(r#""1999-12-31T23:59:59Z""#))])],
            rejected("timestamp", "outside the accepted window"),
        ),
        elements_case(
            "1e400 epoch seconds",
            vec![element(&[("timestamp", Some("1e400"))])],
            rejected("timestamp", "outside the accepted window"),
        ),
        check(
            elements_case(
                "window edges, offsets, epoch forms",
                vec![
                    element(&[("timestamp", Some(r#""2000-01-01T00:00:00Z""#))]),
                    element(&[("timestamp", Some(r#""2099-12-31T23:59:59.999999Z""#))]),
                    element(&[("timestamp", Some(r#""2024-05-01T12:00:00""#))]),
                    element(&[("timestamp", Some(r#""2024-05-01T12:00:00+02:00""#))]),
                    element(&[("timestamp", Some("1714564800"))]),
                    element(&[("timestamp", None), ("timestamp_ms", Some("1714564800123"))]),
                ],
                inserted(6),
            ),
            "SELECT to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') \
             FROM metrics_ingest.metrics ORDER BY id",
            &[
                "2000-01-01T00:00:00.000000",
                "2099-12-31T23:59:59.999999",
                "2024-05-01T12:00:00.000000",
                "2024-05-01T10:00:00.000000",
                "2024-05-01T12:00:00.000000",
                "2024-05-01T12:00:00.123000",
            ],
        ),
        // --- text stored as text ----------------------------------------------------
        check(
            check(
                elements_case("SQL injection text", vec![injection], inserted(1)),
                "SELECT concat_ws(E'\\n', user_id, session_id, location, device_id, app_version, \
                 event_id) FROM metrics_ingest.metrics",
                &["x'); DROP TABLE metrics_ingest.metrics; --\n\
                   '; DELETE FROM metrics_ingest.metric_types; --\n\
                   $$ || pg_sleep(5) || $$\n\
                   \\'; SELECT 1; --\n\
                   \" OR 1=1 --\n\
                   1; TRUNCATE metrics_ingest.rejected"],
            ),
            "SELECT count(*)::text FROM metrics_ingest.metric_types",
            &["4"],
        ),
        check(
            check(
                elements_case("non-ASCII and emoji", vec![unicode], inserted(1)),
                "SELECT concat_ws('|', user_id, location, device_id, app_version, \
                 attributes->>'emoji-😀-key') FROM metrics_ingest.metrics",
                &["Zoë-😀-日本語-🇧🇷|São Paulo|e\u{301}|é😀|värde 🎉"],
            ),
            "SELECT encode(convert_to(user_id, 'UTF8'), 'hex') FROM metrics_ingest.metrics",
            &[&hex("Zoë-😀-日本語-🇧🇷".as_bytes())],
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one case got, checked; the problems found (empty when it passed).
fn run_case(client: &mut Client, case: &Case) -> Vec<String> {
    let mut problems = Vec::new();
    client
        .batch_execute("TRUNCATE metrics_ingest.metrics, metrics_ingest.rejected")
        .expect("TRUNCATE between cases");
    let result = ingest_with(client, &case.payload, case.via, case.on_error);
    let stored = count(client, "SELECT count(*) FROM metrics_ingest.metrics");
    let rejected_rows = client
        .query(
            "SELECT ordinal, field, error, element, sqlstate FROM metrics_ingest.rejected \
             ORDER BY ordinal",
            &[],
        )
        .expect("reading metrics_ingest.rejected");
    match &result {
        Err(e) => {
            let state = sqlstate(e);
            if state == "XX000" || !(state.starts_with("22") || state.starts_with("54")) {
                problems.push(format!("error outside classes 22/54: {}", error_text(e)));
            }
            if stored != 0 || !rejected_rows.is_empty() {
                problems.push(format!(
                    "an error stored rows anyway: {stored} metrics, {} rejected",
                    rejected_rows.len()
                ));
            }
            match &case.expect {
                Expect::Error(code, fragment) => {
                    let message = e.as_db_error().map(|d| d.message()).unwrap_or("");
                    if !state.starts_with(code) || !message.contains(fragment) {
                        problems.push(format!(
                            "expected error {code}* containing {fragment:?}, got {}",
                            error_text(e)
                        ));
                    }
                }
                Expect::Refused => {}
                Expect::Outcomes(o) => {
                    problems.push(format!("expected outcomes {o:?}, got {}", error_text(e)))
                }
            }
        }
        Ok(outcomes) => {
            check_outcomes(case, outcomes, &mut problems);
            let reported: i64 = outcomes.iter().map(|o| o.metrics_stored as i64).sum();
            if reported != stored {
                problems.push(format!(
                    "outcomes report {reported} metrics, {stored} stored"
                ));
            }
            let rejected: Vec<&Outcome> =
                outcomes.iter().filter(|o| o.status == "rejected").collect();
            if rejected.len() != rejected_rows.len() {
                problems.push(format!(
                    "{} rejected outcomes, {} rows in metrics_ingest.rejected",
                    rejected.len(),
                    rejected_rows.len()
                ));
            }
            for (o, row) in rejected.iter().zip(&rejected_rows) {
                let (ordinal, field, error, element, state): (i32, String, String, String, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
                let outcome_error = o.error.clone().unwrap_or_default();
                if ordinal != o.ordinal
                    || Some(&field) != o.field.as_ref()
                    || outcome_error != format!("{field}: {error}")
                {
                    problems.push(format!(
                        "rejected row (ordinal {ordinal}, field {field:?}, error {error:?}) \
                         does not match outcome {o:?}"
                    ));
                }
                if !(state.starts_with("22") || state.starts_with("54")) {
                    problems.push(format!("rejected row {ordinal} has sqlstate {state}"));
                }
                if let Some(raw) = &case.raw_elements {
                    let sent = raw.get(ordinal as usize - 1);
                    if sent != Some(&element) {
                        problems.push(format!(
                            "rejected row {ordinal} keeps {} bytes that differ from the element \
                             sent ({} bytes)",
                            element.len(),
                            sent.map_or(0, |s| s.len())
                        ));
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        for (sql, expected) in &case.checks {
            let got = texts(client, sql);
            if &got != expected {
                problems.push(format!(
                    "{sql}\n  expected {expected:?}\n  got      {got:?}"
                ));
            }
        }
    }
    problems
}

fn check_outcomes(case: &Case, outcomes: &[Outcome], problems: &mut Vec<String>) {
    for o in outcomes {
        if o.status == "rejected"
            && (o.error.as_deref().unwrap_or("").is_empty()
                || o.field.as_deref().unwrap_or("").is_empty())
        {
            problems.push(format!("rejected without a reason: {o:?}"));
        }
    }
    match &case.expect {
        Expect::Error(code, fragment) => problems.push(format!(
            "expected error {code}* containing {fragment:?}, got outcomes {:?}",
            short(outcomes)
        )),
        Expect::Refused => {
            if outcomes.is_empty() || outcomes.iter().any(|o| o.status != "rejected") {
                problems.push(format!(
                    "expected every element rejected (or a class 22/54 error), got {:?}",
                    short(outcomes)
                ));
            }
        }
        Expect::Outcomes(expected) => {
            let ok = outcomes.len() == expected.len()
                && outcomes.iter().zip(expected).enumerate().all(
                    |(i, (o, (status, field, fragment)))| {
                        o.ordinal as usize == i + 1
                            && o.status == *status
                            && o.field.as_deref() == *field
                            && o.error.as_deref().unwrap_or("").contains(fragment)
                    },
                );
            if !ok {
                problems.push(format!(
                    "expected {expected:?}\n  got {:?}",
                    short(outcomes)
                ));
            }
        }
    }
}

/// Outcomes with long errors cut, for messages.
fn short(outcomes: &[Outcome]) -> Vec<Outcome> {
    outcomes
        .iter()
        .map(|o| Outcome {
            error: o.error.as_ref().map(|e| e.chars().take(200).collect()),
            ..o.clone()
        })
        .collect()
}

#[test]
fn hostile_payloads_are_refused_with_reasons() {
    let db = TestDb::new("hostile");
    let mut witness = db.connect();
    let witness_pid: i32 = witness
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let started = postmaster_start_time(&mut witness);

    let mut client = db.connect();
    let mut failures = Vec::new();
    for case in cases() {
        if client.is_closed() {
            client = db.connect();
        }
        let problems = run_case(&mut client, &case);
        // Whatever happened, the session must still answer.
        if let Err(e) = client.query_one("SELECT 1", &[]) {
            failures.push(format!(
                "{}: the session is unusable afterwards: {}",
                case.name,
                error_text(&e)
            ));
            client = db.connect();
        }
        for p in problems {
            failures.push(format!("{}: {p}", case.name));
        }
    }

    // The server never restarted: the postmaster start time did not move (a full
    // restart) and the witness session survived (a crash restart, after which
    // pg_postmaster_start_time() stays the same, ends every session).
    let pid_after: Result<i32, _> = witness
        .query_one("SELECT pg_backend_pid()", &[])
        .map(|r| r.get(0));
    match pid_after {
        Ok(pid) => assert_eq!(pid, witness_pid),
        Err(e) => failures.push(format!(
            "the witness session died (server restart?): {}",
            error_text(&e)
        )),
    }
    let mut after = db.connect();
    assert_eq!(
        postmaster_start_time(&mut after),
        started,
        "the server restarted"
    );
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A batch of 100,000 elements, 100 of them bad in assorted ways: exactly the good ones
/// are stored and the bad ones land in metrics_ingest.rejected at their ordinals.
#[test]
fn batch_of_100000_with_100_bad_elements() {
    const N: usize = 100_000;
    let db = TestDb::new("hostile_batch");
    let bad_kinds: [(&str, Option<&str>, &str); 5] = [
        ("timestamp", Some(r#""not a date""#), "timestamp"),
        ("metric_value", Some(r#""NaN""#), "metric_value"),
        ("user_id", None, "user_id"),
        ("metric_type", Some(r#""nope""#), "metric_type"),
        ("sentiment_score", Some("7"), "sentiment_score"),
    ];
    let mut elements = Vec::with_capacity(N);
    let mut bad: Vec<(i32, &str, String)> = Vec::new();
    for i in 0..N {
        let ordinal = i as i32 + 1;
        let user = format!("\"b-user-{}\"", i % 1000);
        let value = format!("{}", i);
        // Bad elements at ordinals 500, 1500, ..., 99500.
        if i % 1000 == 499 {
            let (key, raw, field) = bad_kinds[bad.len() % bad_kinds.len()];
            let mut overrides = vec![
                ("user_id", Some(user.as_str())),
                ("metric_value", Some(&value)),
            ];
            overrides.retain(|(k, _)| *k != key);
            overrides.push((key, raw));
            let e = element(&overrides);
            bad.push((ordinal, field, e.clone()));
            elements.push(e);
        } else {
            elements.push(element(&[
                ("user_id", Some(&user)),
                ("metric_value", Some(&value)),
            ]));
        }
    }
    assert_eq!(bad.len(), 100);
    let mut client = db.connect();
    let outcomes = ingest_with(&mut client, &array(&elements), Via::Text, "reject")
        .unwrap_or_else(|e| panic!("ingest_json: {}", error_text(&e)));
    assert_eq!(outcomes.len(), N);
    let rejected: Vec<(i32, String)> = outcomes
        .iter()
        .filter(|o| o.status == "rejected")
        .map(|o| (o.ordinal, o.field.clone().unwrap_or_default()))
        .collect();
    let expected: Vec<(i32, String)> = bad.iter().map(|(o, f, _)| (*o, f.to_string())).collect();
    assert_eq!(rejected, expected, "rejected outcomes (ordinal, field)");
    assert!(outcomes
        .iter()
        .all(|o| o.status == "rejected" || (o.status == "inserted" && o.metrics_stored == 1)));
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM metrics_ingest.metrics"),
        (N - 100) as i64
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT sum(metric_value)::bigint FROM metrics_ingest.metrics"
        ),
        (0..N).filter(|i| i % 1000 != 499).sum::<usize>() as i64,
        "checksum of the stored values"
    );
    let rows = client
        .query(
            "SELECT ordinal, field, element FROM metrics_ingest.rejected ORDER BY ordinal",
            &[],
        )
        .unwrap();
    let got: Vec<(i32, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(i32, String, String)> = bad
        .iter()
        .map(|(o, f, e)| (*o, f.to_string(), e.clone()))
        .collect();
    assert_eq!(
        got, want,
        "metrics_ingest.rejected: ordinal, field, element as sent"
    );
}

/// `CALL insert_metric` with hostile arguments: a class-22 (or 54) error with a reason
/// naming the argument, nothing stored, never XX000.
#[test]
fn insert_metric_refuses_hostile_arguments() {
    let db = TestDb::new("hostile_call");
    let mut client = db.connect();
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_object = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    // (case, the arguments after "timestamp", SQLSTATE, fragment of the message)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "NaN as a number",
            "'u', 's', 'talked_time', 'NaN'::float8".into(),
            "22003",
            "metric_value: NaN is not a finite number",
        ),
        (
            "Infinity as a number",
            "'u', 's', 'talked_time', 'Infinity'::float8".into(),
            "22003",
            "metric_value:",
        ),
        (
            "NaN as text",
            "'u', 's', 'talked_time', 'NaN'".into(),
            "22003",
            "metric_value:",
        ),
        (
            "1e400 as text",
            "'u', 's', 'talked_time', '1e400'".into(),
            "22003",
            "metric_value:",
        ),
        (
            "a word as the value",
            "'u', 's', 'talked_time', 'abc'".into(),
            "22",
            "metric_value:",
        ),
        (
            "yes as a boolean",
            "'u', 's', 'microphone_used', 'yes'".into(),
            "22023",
            "metric_value:",
        ),
        (
            "NaN sentiment_score",
            "'u', 's', 'talked_time', '1', sentiment_score => 'NaN'".into(),
            "22003",
            "sentiment_score:",
        ),
        (
            "sentiment_score 1.5",
            "'u', 's', 'talked_time', '1', sentiment_score => 1.5".into(),
            "22003",
            "sentiment_score:",
        ),
        (
            "257-character user_id",
            format!("'{}', 's', 'talked_time', '1'", "x".repeat(257)),
            "22001",
            "user_id: is longer than 256 characters",
        ),
        (
            "10 MB user_id",
            format!(
                "'{}', 's', 'talked_time', '1'",
                "x".repeat(10 * 1024 * 1024)
            ),
            "22001",
            "user_id: is longer than 256 characters",
        ),
        (
            "empty user_id",
            "'', 's', 'talked_time', '1'".into(),
            "22023",
            "user_id:",
        ),
        (
            "NULL metric_type",
            "'u', 's', NULL, '1'".into(),
            "22004",
            "metric_type: is required",
        ),
        (
            "unknown metric_type",
            "'u', 's', 'x''; DROP TABLE metrics_ingest.metrics; --', '1'".into(),
            "22023",
            "metric_type:",
        ),
        (
            "attributes an array",
            "'u', 's', 'talked_time', '1', attributes => '[1,2]'".into(),
            "22023",
            "attributes: must be a JSON object",
        ),
        (
            "attributes nested 200 deep",
            format!(
                "'u', 's', 'talked_time', '1', attributes => '{{\"deep\": {}}}'",
                deep(200)
            ),
            "",
            "",
        ),
        (
            "attributes an object nested 1,000 deep",
            format!(
                "'u', 's', 'talked_time', '1', attributes => '{}'",
                deep_object(1000)
            ),
            "",
            "",
        ),
    ];
    let mut failures = Vec::new();
    for (name, args, code, fragment) in &cases {
        let sql = format!("CALL metrics_ingest.insert_metric('2024-05-01 12:00:00+00', {args})");
        match client.batch_execute(&sql) {
            // Deep attributes: storing them is fine too, as long as it is all of them.
            Ok(()) if code.is_empty() => {
                let stored = count(
                    &mut client,
                    "SELECT count(*) FROM metrics_ingest.metrics WHERE attributes IS NOT NULL",
                );
                if stored != 1 {
                    failures.push(format!("{name}: succeeded but stored {stored} rows"));
                }
            }
            Ok(()) => failures.push(format!("{name}: succeeded, expected {code}")),
            Err(e) => {
                let state = sqlstate(&e);
                let message = e.as_db_error().map(|d| d.message()).unwrap_or("");
                let class_ok = state.starts_with("22") || state.starts_with("54");
                if !class_ok || !state.starts_with(code) || !message.contains(fragment) {
                    let expected = if code.is_empty() {
                        "a class 22/54 error (or success)".to_string()
                    } else {
                        format!("{code} containing {fragment:?}")
                    };
                    failures.push(format!(
                        "{name}: expected {expected}, got {}",
                        error_text(&e).chars().take(300).collect::<String>()
                    ));
                }
            }
        }
        client
            .batch_execute("TRUNCATE metrics_ingest.metrics")
            .expect("TRUNCATE");
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// NULL arguments: a NULL payload is no elements; a NULL on_error is a class-22 error.
#[test]
fn null_arguments() {
    let db = TestDb::new("hostile_null");
    let mut client = db.connect();
    for ty in ["text", "json", "jsonb"] {
        assert_eq!(
            count(
                &mut client,
                &format!("SELECT count(*) FROM metrics_ingest.ingest_json(NULL::{ty})")
            ),
            0,
            "ingest_json(NULL::{ty})"
        );
    }
    let message = expect_sqlstate(
        client.query(
            "SELECT * FROM metrics_ingest.ingest_json('[]'::text, NULL)",
            &[],
        ),
        "22004",
        "on_error NULL",
    );
    assert!(message.contains("on_error"), "{message}");
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM metrics_ingest.metrics"),
        0
    );
}
