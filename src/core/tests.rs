//! Table-driven tests of the pure core: one line per case.

use super::element::{
    validate_call, validate_json_element, CallArgs, CallValue, Measurement, ValidElement,
};
use super::error::{PayloadError, RejectionKind};
use super::payload::for_each_element;
use super::registry::Registry;

fn check(raw: &str) -> Result<ValidElement<'_>, (String, String, RejectionKind)> {
    validate_json_element(raw, &Registry::builtin())
        .map_err(|r| (r.field.clone(), r.to_string(), r.kind))
}

fn m(metric_type: &str, value: f64, label: Option<&str>) -> Measurement {
    Measurement {
        metric_type: metric_type.into(),
        value,
        label: label.map(Into::into),
    }
}

#[test]
fn seed_examples_are_valid() {
    let seed000 = check(r#"{"timestamp": "2024-08-12T12:00:00+00:00", "user_id": "user456", "session_id": "session789", "metric_type": "microphone_used", "metric_value": "1", "device_id": "device012", "app_version": "1.0.1", "location": "Los Angeles", "sentiment_score": 0.8}"#).unwrap();
    assert_eq!(seed000.context.unix_us, 1_723_464_000_000_000);
    assert_eq!(seed000.context.user_id, "user456");
    assert_eq!(seed000.context.session_id.as_deref(), Some("session789"));
    assert_eq!(seed000.context.device_id.as_deref(), Some("device012"));
    assert_eq!(seed000.context.app_version.as_deref(), Some("1.0.1"));
    assert_eq!(seed000.context.location.as_deref(), Some("Los Angeles"));
    assert_eq!(seed000.context.sentiment_score, Some(0.8));
    assert_eq!(seed000.context.attributes, None);
    assert_eq!(seed000.measurements, vec![m("microphone_used", 1.0, None)]);

    let seed002 = check(r#"{"user_id":"b2a7465b-5d83-40c6-b8b6-2f8f15cbf23d","metric_type":"talked_time","value":12.34,"timestamp":"2024-08-08T12:34:56Z"}"#).unwrap();
    assert_eq!(seed002.context.session_id, None);
    assert_eq!(seed002.measurements, vec![m("talked_time", 12.34, None)]);

    let seed003 = check(r#"{"user_id": 1, "name": "John Doe", "email": "john.doe@example.com", "session_id": 1, "talked_time": 120, "microphone_used": true, "speaker_used": true, "voice_sentiment": "positive", "timestamp": 1622558400}"#).unwrap();
    assert_eq!(seed003.context.user_id, "1");
    assert_eq!(seed003.context.session_id.as_deref(), Some("1"));
    assert_eq!(seed003.context.unix_us, 1_622_558_400_000_000);
    // Since 0.3.0 the profile goes to users, never into the metric rows.
    assert_eq!(seed003.context.attributes, None);
    assert_eq!(seed003.context.profile.name.as_deref(), Some("John Doe"));
    assert_eq!(
        seed003.context.profile.email.as_deref(),
        Some("john.doe@example.com")
    );
    assert_eq!(
        seed003.measurements,
        vec![
            m("talked_time", 120.0, None),
            m("microphone_used", 1.0, None),
            m("speaker_used", 1.0, None),
            m("voice_sentiment", 1.0, Some("positive")),
        ]
    );
}

#[test]
fn ids_are_kept_exactly_as_written() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"user_id": 123456789012345678901234567890, "timestamp": 1722470400, "talked_time": 1}"#,
            "123456789012345678901234567890",
        ),
        (
            r#"{"user_id": -7, "timestamp": 1722470400, "talked_time": 1}"#,
            "-7",
        ),
        (
            r#"{"user_id": "Zoë 🎧", "timestamp": 1722470400, "talked_time": 1}"#,
            "Zoë 🎧",
        ),
        (
            r#"{"user_id": "'; DROP TABLE metrics; --", "timestamp": 1722470400, "talked_time": 1}"#,
            "'; DROP TABLE metrics; --",
        ),
    ];
    for (raw, user_id) in cases {
        assert_eq!(check(raw).unwrap().context.user_id, *user_id, "{raw}");
    }
}

#[test]
fn values_per_metric_kind() {
    let cases: &[(&str, f64, Option<&str>)] = &[
        (
            r#""metric_type":"talked_time","metric_value":"300""#,
            300.0,
            None,
        ),
        (r#""metric_type":"talked_time","metric_value":0"#, 0.0, None),
        (
            r#""metric_type":"microphone_used","metric_value":true"#,
            1.0,
            None,
        ),
        (
            r#""metric_type":"microphone_used","metric_value":false"#,
            0.0,
            None,
        ),
        (
            r#""metric_type":"speaker_used","metric_value":"0""#,
            0.0,
            None,
        ),
        (
            r#""metric_type":"speaker_used","metric_value":"true""#,
            1.0,
            None,
        ),
        (
            r#""metric_type":"voice_sentiment","metric_value":"neutral""#,
            0.0,
            Some("neutral"),
        ),
        (
            r#""metric_type":"voice_sentiment","metric_value":"Negative""#,
            -1.0,
            Some("Negative"),
        ),
        (
            r#""metric_type":"voice_sentiment","metric_value":-0.25"#,
            -0.25,
            None,
        ),
        (
            r#""metric_type":"voice_sentiment","metric_value":"0.5""#,
            0.5,
            None,
        ),
    ];
    for (fields, value, label) in cases {
        let raw = format!(r#"{{"user_id":"u","timestamp":"2024-08-12T12:00:00Z",{fields}}}"#);
        let element = check(&raw).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
        assert_eq!(element.measurements[0].value, *value, "{raw}");
        assert_eq!(element.measurements[0].label.as_deref(), *label, "{raw}");
    }
}

#[test]
fn rejections_name_the_field_and_the_problem() {
    use RejectionKind::*;
    const OK: &str = r#""user_id":"u","timestamp":"2024-08-12T12:00:00Z""#;
    let cases: Vec<(String, &str, &str, RejectionKind)> = vec![
        (r#"{"user_id":"u","timestamp":"not a date","talked_time":1}"#.into(), "timestamp", r#"timestamp: "not a date" is not an ISO 8601 timestamp or epoch seconds"#, InvalidValue),
        (r#"{"user_id":"u","talked_time":1}"#.into(), "timestamp", "timestamp: is required", Missing),
        (r#"{"user_id":null,"timestamp":1722470400,"talked_time":1}"#.into(), "user_id", "user_id: is required", Missing),
        (r#"{"user_id":{"id":1},"timestamp":1722470400,"talked_time":1}"#.into(), "user_id", "user_id: must be a string or an integer, found an object", WrongType),
        (r#"{"user_id":1.5,"timestamp":1722470400,"talked_time":1}"#.into(), "user_id", "user_id: must be a string or an integer, found a number", WrongType),
        (r#"{"user_id":"","timestamp":1722470400,"talked_time":1}"#.into(), "user_id", "user_id: must not be empty", InvalidValue),
        (format!(r#"{{"user_id":"{}","timestamp":1722470400,"talked_time":1}}"#, "x".repeat(257)), "user_id", "user_id: is longer than 256 characters (257 given)", TooLong),
        (r#"{"user_id":"a\u0000b","timestamp":1722470400,"talked_time":1}"#.into(), "user_id", "user_id: contains \\u0000, which PostgreSQL text cannot store", Untranslatable),
        (r#"{"user_id":"\ud800","timestamp":1722470400,"talked_time":1}"#.into(), "user_id", "", BadJson),
        (r#"{"user_id":"u","user_id":"v","timestamp":1722470400,"talked_time":1}"#.into(), "user_id", r#"user_id: key "user_id" appears more than once in the element"#, BadJson),
        (format!(r#"{{{OK},"metric_type":"jumping","metric_value":1}}"#), "metric_type", r#"metric_type: "jumping" is not a known metric type (known: microphone_used, speaker_used, talked_time, voice_sentiment)"#, InvalidValue),
        (format!(r#"{{{OK},"metric_type":"talked_time","metric_value":-5}}"#), "metric_value", "metric_value: -5 is outside the bounds of talked_time [0, inf]", OutOfRange),
        (format!(r#"{{{OK},"metric_type":"talked_time","value":-5}}"#), "value", "value: -5 is outside the bounds of talked_time [0, inf]", OutOfRange),
        (format!(r#"{{{OK},"metric_type":"talked_time","metric_value":1e400}}"#), "metric_value", "metric_value: 1e400 is not a finite number", NotFinite),
        (format!(r#"{{{OK},"metric_type":"talked_time","metric_value":"NaN"}}"#), "metric_value", r#"metric_value: "NaN" is not a finite number"#, NotFinite),
        (format!(r#"{{{OK},"metric_type":"talked_time","metric_value":"lots"}}"#), "metric_value", r#"metric_value: "lots" is not a number"#, InvalidValue),
        (format!(r#"{{{OK},"metric_type":"talked_time"}}"#), "metric_value", "metric_value: is required", Missing),
        (format!(r#"{{{OK},"metric_type":"talked_time","metric_value":1,"value":1}}"#), "metric_value", "metric_value: give either metric_value or value, not both", InvalidValue),
        (format!(r#"{{{OK},"metric_type":"microphone_used","metric_value":2}}"#), "metric_value", "metric_value: 2 is not a boolean (true, false, 0 or 1)", InvalidValue),
        (format!(r#"{{{OK},"metric_type":"voice_sentiment","metric_value":"ecstatic"}}"#), "metric_value", r#"metric_value: "ecstatic" is not a number or a label of voice_sentiment (negative, neutral, positive)"#, InvalidValue),
        (format!(r#"{{{OK},"metric_type":"voice_sentiment","metric_value":1.5}}"#), "metric_value", "metric_value: 1.5 is outside the bounds of voice_sentiment [-1, 1]", OutOfRange),
        (format!(r#"{{{OK},"talked_time":1,"sentiment_score":2}}"#), "sentiment_score", "sentiment_score: 2 is outside [-1, 1]", OutOfRange),
        // Numbers far from the bounds are shown short, not in hundreds of digits.
        (format!(r#"{{{OK},"metric_type":"talked_time","metric_value":-1e300}}"#), "metric_value", "metric_value: -1e300 is outside the bounds of talked_time [0, inf]", OutOfRange),
        (format!(r#"{{{OK},"metric_type":"talked_time","metric_value":-4.9e-324}}"#), "metric_value", "metric_value: -5e-324 is outside the bounds of talked_time [0, inf]", OutOfRange),
        (format!(r#"{{{OK},"talked_time":1,"sentiment_score":-1e300}}"#), "sentiment_score", "sentiment_score: -1e300 is outside [-1, 1]", OutOfRange),
        // Daily totals must stay finite: 1e308 twice was a sum PostgreSQL cannot hold.
        (format!(r#"{{{OK},"talked_time":1e308}}"#), "talked_time", "talked_time: 1e308 is beyond ±1e300, the largest magnitude metrics_ingest stores (daily totals must stay finite)", OutOfRange),
        (format!(r#"{{{OK},"metric_type":"talked_time","metric_value":"2e300"}}"#), "metric_value", "metric_value: 2e300 is beyond ±1e300, the largest magnitude metrics_ingest stores (daily totals must stay finite)", OutOfRange),
        (format!(r#"{{{OK},"metric_type":"talked_time","metric_value":1,"speaker_used":true}}"#), "speaker_used", "speaker_used: an element with metric_type (long form) cannot also carry metric fields (wide form)", InvalidValue),
        (format!(r#"{{{OK},"name":"x"}}"#), "metric_type", "metric_type: is required: the element has neither metric_type nor any metric field (microphone_used, speaker_used, talked_time, voice_sentiment)", Missing),
        (r#"{"user_id":"u","timestamp":1622558400000,"talked_time":1}"#.into(), "timestamp", "timestamp: 1622558400000 epoch seconds is outside the accepted window 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z (epoch milliseconds must be sent as timestamp_ms)", OutOfRange),
        (r#"{"user_id":"u","timestamp":"99999-01-01T00:00:00Z","talked_time":1}"#.into(), "timestamp", r#"timestamp: "99999-01-01T00:00:00Z" is not an ISO 8601 timestamp or epoch seconds"#, InvalidValue),
        (r#"{"user_id":"u","timestamp":true,"talked_time":1}"#.into(), "timestamp", "timestamp: must be an ISO 8601 string or epoch seconds, found a boolean", WrongType),
        (format!(r#"{{{OK},"talked_time":1,"notes":"a\u0000b"}}"#), "notes", "notes: contains \\u0000, which PostgreSQL text cannot store", Untranslatable),
        (format!(r#"{{{OK},"talked_time":1,"blob":"{}"}}"#, "y".repeat(70_000)), "attributes", "", TooLong),
        ("[1,2]".into(), "element", "element: must be a JSON object, found an array", WrongType),
        ("\"text\"".into(), "element", "element: must be a JSON object, found a string", WrongType),
        ("42".into(), "element", "element: must be a JSON object, found a number", WrongType),
        ("null".into(), "element", "element: must be a JSON object, found null", WrongType),
    ];
    for (raw, field, message, kind) in cases {
        let (got_field, got_message, got_kind) = check(&raw).expect_err(&raw[..raw.len().min(120)]);
        assert_eq!(got_field, field, "{raw:.120}");
        if !message.is_empty() {
            assert_eq!(got_message, message, "{raw:.120}");
        }
        assert_eq!(got_kind, kind, "{raw:.120}");
    }
}

#[test]
fn unknown_fields_go_to_attributes_and_millis_are_accepted() {
    let element = check(r#"{"user_id":"u","timestamp_ms":1622558400123,"talked_time":5,"n":123456789012345678901234567890,"tags":["a"]}"#).unwrap();
    assert_eq!(element.context.unix_us, 1_622_558_400_123_000);
    assert_eq!(
        element.context.attributes.as_deref(),
        Some(r#"{"n":123456789012345678901234567890,"tags":["a"]}"#)
    );
}

#[test]
fn wide_form_null_metric_is_not_observed() {
    let element =
        check(r#"{"user_id":"u","timestamp":1722470400,"talked_time":5,"voice_sentiment":null}"#)
            .unwrap();
    assert_eq!(element.measurements, vec![m("talked_time", 5.0, None)]);
}

fn collect(payload: &str) -> Result<Vec<(usize, String)>, PayloadError> {
    let mut seen = Vec::new();
    for_each_element(payload, |ordinal, raw, _| {
        seen.push((ordinal, raw.to_string()))
    })
    .map(|count| {
        assert_eq!(count, seen.len());
        seen
    })
}

#[test]
fn payload_shapes() {
    assert_eq!(collect("[]").unwrap(), vec![]);
    assert_eq!(
        collect(" [ {\"a\":1} , 2 ,\"x\"] ").unwrap(),
        vec![
            (1, "{\"a\":1}".into()),
            (2, "2".into()),
            (3, "\"x\"".into())
        ]
    );
    assert_eq!(
        collect("{\"a\": 1}").unwrap(),
        vec![(1, "{\"a\": 1}".into())]
    );
    assert_eq!(collect("{}").unwrap(), vec![(1, "{}".into())]);
    // A lone surrogate is the element's problem, not the payload's.
    assert_eq!(collect(r#"[{"a":"\ud800"}]"#).unwrap().len(), 1);
}

#[test]
fn unreadable_payloads() {
    let cases: &[(&str, &str)] = &[
        ("not json", "22P02"),
        ("[{\"a\":1}", "22P02"),
        ("[{\"a\":1}] trailing", "22P02"),
        ("{\"a\":", "22P02"),
        ("", "22P02"),
        ("   ", "22P02"),
        ("42", "22023"),
        ("\"a string\"", "22023"),
        ("null", "22023"),
    ];
    for (payload, sqlstate) in cases {
        assert_eq!(
            collect(payload).expect_err(payload).sqlstate(),
            *sqlstate,
            "{payload}"
        );
    }
}

#[test]
fn deep_nesting_is_an_element_rejection_not_a_crash() {
    let deep_array = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
    let elements = collect(&deep_array)
        .map_err(|e| e.to_string())
        .expect("walks the outer array");
    assert_eq!(elements.len(), 1);
    let (field, message, kind) = check(&elements[0].1).expect_err("an array is not an element");
    assert_eq!(
        (field.as_str(), kind),
        ("element", RejectionKind::WrongType),
        "{message:.100}"
    );

    let deep_object = format!(
        r#"{{"user_id":"u","timestamp":1722470400,"talked_time":1,"x":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let (field, message, kind) = check(&deep_object).expect_err("too deep");
    assert_eq!(
        (field.as_str(), kind),
        ("x", RejectionKind::BadJson),
        "{message:.100}"
    );
    assert!(
        message.contains("recursion limit exceeded"),
        "{message:.100}"
    );
}

#[test]
fn context_field_positions_agree_with_the_list() {
    for (i, name) in super::element::CONTEXT_FIELDS.iter().enumerate() {
        assert_eq!(
            super::element::context_slot_for_tests(name),
            Some(i),
            "{name}"
        );
    }
    assert_eq!(super::element::context_slot_for_tests("talked_time"), None);
}

/// Fractional seconds are rounded as PostgreSQL 15 rounds them. Every expected
/// value below was read from a real PostgreSQL 15.20 server:
/// ISO strings with `extract(epoch from '2024-08-12T12:00:00.<f>Z'::timestamptz)`,
/// epoch numbers with `extract(epoch from to_timestamp('<n>'::float8))`.
#[test]
fn timestamps_round_as_postgresql_does() {
    const NOON: i64 = 1_723_464_000_000_000; // 2024-08-12T12:00:00Z
    let iso: &[(&str, i64)] = &[
        ("0000025", 2),
        ("0000005", 0),
        ("0000015", 2),
        ("0000035", 4),
        ("0000045", 4),
        ("00000050000001", 1),
        ("0000004999999", 0),
        ("9999995", 1_000_000),
        ("9999994999", 999_999),
        ("999999500000001", 1_000_000),
        ("1234565", 123_456),
        ("1234575", 123_458),
        ("0000025000000000000001", 2),
        ("5000005", 500_000),
        ("000001", 1),
        ("0000014999999999999999", 1),
        ("00000249999999999999999", 2),
        ("123456789012345678901234567890", 123_457),
        ("0000125", 12),
        ("0000105", 10),
        ("2500005", 250_000),
        ("4999995", 500_000),
    ];
    for (fraction, micros) in iso {
        for form in [
            format!("2024-08-12T12:00:00.{fraction}Z"),
            format!("2024-08-12 14:00:00.{fraction}+02:00"),
            format!("2024-08-12T12:00:00.{fraction}"),
        ] {
            let raw = format!(r#"{{"user_id":"u","talked_time":1,"timestamp":"{form}"}}"#);
            let got = check(&raw).map(|e| e.context.unix_us);
            assert_eq!(got, Ok(NOON + micros), "{form}");
        }
    }
    let epoch: &[(&str, i64)] = &[
        ("1722470400.0000005", 1_722_470_400_000_000),
        ("1722470400.0000015", 1_722_470_400_000_001),
        ("1722470400.0000025", 1_722_470_400_000_002),
        ("1722470400.000001", 1_722_470_400_000_001),
        ("1722470400.1234565", 1_722_470_400_123_456),
        ("1722470400.9999995", 1_722_470_401_000_000),
        ("1722470400.9999994", 1_722_470_400_999_999),
        ("1.7224704000000025e9", 1_722_470_400_000_002),
        ("1722470400.5", 1_722_470_400_500_000),
        ("1722470400.25", 1_722_470_400_250_000),
        ("1722470400.0000035", 1_722_470_400_000_004),
        ("1722470400.0000004", 1_722_470_400_000_000),
        ("1722470400.00000049", 1_722_470_400_000_000),
        ("1722470400.000000500001", 1_722_470_400_000_000),
        ("946684800.0000005", 946_684_800_000_000),
        ("946684800.0000015", 946_684_800_000_002),
        ("946684800.0000025", 946_684_800_000_003),
        ("4102444799.999999", 4_102_444_799_999_999),
        ("1622558400", 1_622_558_400_000_000),
        ("1.6225584e9", 1_622_558_400_000_000),
        ("1722470400.123456789", 1_722_470_400_123_457),
    ];
    for (number, unix_us) in epoch {
        let raw = format!(r#"{{"user_id":"u","talked_time":1,"timestamp":{number}}}"#);
        let got = check(&raw).map(|e| e.context.unix_us);
        assert_eq!(got, Ok(*unix_us), "{number}");
    }
    // 4102444799.9999995 rounds to 2100-01-01T00:00:00Z, the window's (exclusive) end.
    let raw = r#"{"user_id":"u","talked_time":1,"timestamp":4102444799.9999995}"#;
    assert_eq!(check(raw).map_err(|e| e.2), Err(RejectionKind::OutOfRange));
}

/// Issue 10, items 5, 6, 8: values that would be stored altered (or that jsonb
/// would refuse, failing the whole call) are this element's rejection.
#[test]
fn values_are_never_silently_altered() {
    use RejectionKind::*;
    const OK: &str = r#""user_id":"u","timestamp":"2024-08-12T12:00:00Z""#;
    let zeros = "0".repeat(20_000);
    let cases: Vec<(String, &str, RejectionKind)> = vec![
        // 5: underflow, as float8in refuses it
        (
            format!(r#"{{{OK},"talked_time":1e-400}}"#),
            "talked_time",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"metric_type":"talked_time","metric_value":"1e-400"}}"#),
            "metric_value",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"sentiment_score":-1e-400}}"#),
            "sentiment_score",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"voice_sentiment":0.1e-999}}"#),
            "voice_sentiment",
            OutOfRange,
        ),
        // 5: a boolean is exactly 0 or 1, on the decimal text
        (
            format!(r#"{{{OK},"microphone_used":1e-400}}"#),
            "microphone_used",
            InvalidValue,
        ),
        (
            format!(r#"{{{OK},"microphone_used":0.99999999999999999999}}"#),
            "microphone_used",
            InvalidValue,
        ),
        (
            format!(r#"{{{OK},"microphone_used":1.0000000000000000001}}"#),
            "microphone_used",
            InvalidValue,
        ),
        (
            format!(r#"{{{OK},"microphone_used":-1}}"#),
            "microphone_used",
            InvalidValue,
        ),
        (
            format!(r#"{{{OK},"microphone_used":10e-1e1}}"#),
            "element",
            BadJson,
        ),
        (
            format!(r#"{{{OK},"microphone_used":1e99999999999999999999}}"#),
            "microphone_used",
            InvalidValue,
        ),
        (
            format!(r#"{{{OK},"speaker_used":100e-3}}"#),
            "speaker_used",
            InvalidValue,
        ),
        // 6: duplicate keys at any depth of an unknown field
        (
            format!(r#"{{{OK},"talked_time":1,"extra":{{"k":1,"k":2}}}}"#),
            "extra",
            BadJson,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"extra":[{{"a":{{"k":1,"\u006b":2}}}}]}}"#),
            "extra",
            BadJson,
        ),
        // 8: what numeric (and so jsonb) cannot hold
        (
            format!(r#"{{{OK},"talked_time":1,"n":1e131072}}"#),
            "n",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":-10e131071}}"#),
            "n",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":1e-16384}}"#),
            "n",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":0.00e-16382}}"#),
            "n",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":0e1073741823}}"#),
            "n",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":0e-99999999999999999999999}}"#),
            "n",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":0.{zeros}}}"#),
            "n",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":[1,{{"m":[1e131072]}}]}}"#),
            "n",
            OutOfRange,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":{{"m":0.{zeros}}}}}"#),
            "n",
            OutOfRange,
        ),
        // 8: siblings jsonb_in refuses, nested
        (
            format!(r#"{{{OK},"talked_time":1,"n":{{"m":["a\u0000"]}}}}"#),
            "n",
            Untranslatable,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":{{"a\u0000":1}}}}"#),
            "n",
            Untranslatable,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":{{"m":["\udc00"]}}}}"#),
            "n",
            BadJson,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"n":{{"\ud800x":1}}}}"#),
            "n",
            BadJson,
        ),
        (
            format!(
                r#"{{{OK},"talked_time":1,"n":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            "n",
            BadJson,
        ),
    ];
    for (raw, field, kind) in cases {
        let (got_field, message, got_kind) = check(&raw).expect_err(&raw[..raw.len().min(120)]);
        assert_eq!(
            (got_field.as_str(), got_kind),
            (field, kind),
            "{raw:.120}: {message}"
        );
        assert!(message.len() < 400, "{message}");
    }
    // What PostgreSQL does hold is still accepted, exactly as written.
    let accepted: &[(&str, f64)] = &[
        (r#""microphone_used":1.000e0"#, 1.0),
        (r#""microphone_used":10e-1"#, 1.0),
        (r#""microphone_used":0.1E1"#, 1.0),
        (r#""microphone_used":-0.0e7"#, 0.0),
        (r#""microphone_used":0e-99999999999999999999"#, 0.0),
        (r#""talked_time":1e-310"#, 1e-310),
        (r#""talked_time":0.000e-5"#, 0.0),
        (r#""talked_time":1,"n":1e131071"#, 1.0),
        (r#""talked_time":1,"n":-9.9e131071"#, 1.0),
        (r#""talked_time":1,"n":1e-16383"#, 1.0),
        (r#""talked_time":1,"n":{"k":1,"K":2,"m":{"k":3}}"#, 1.0),
        (r#""talked_time":1,"n":[1e400,"\ud83c\udfa7"]"#, 1.0),
    ];
    for (fields, value) in accepted {
        let raw = format!("{{{OK},{fields}}}");
        let element = check(&raw).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
        assert_eq!(element.measurements[0].value, *value, "{raw}");
    }
    let raw = format!(r#"{{{OK},"talked_time":1,"n":1e131071}}"#);
    let element = check(&raw).unwrap();
    assert_eq!(
        element.context.attributes.as_deref(),
        Some(r#"{"n":1e131071}"#)
    );
}

/// Issue 10, items 11 and 15: every quoted piece of an error is bounded, keys
/// included, and text is shown as written (not as Rust escapes).
#[test]
fn error_texts_are_bounded_and_shown_as_written() {
    const OK: &str = r#""user_id":"u","timestamp":"2024-08-12T12:00:00Z""#;
    let big = "k".repeat(5_000_000);
    let cases: Vec<String> = vec![
        format!(r#"{{{OK},"talked_time":1,"{big}":1,"{big}":2}}"#),
        format!(r#"{{{OK},"talked_time":1,"{big}":"\ud800"}}"#),
        format!(r#"{{{OK},"talked_time":1,"{big}":"a\u0000"}}"#),
        format!(r#"{{{OK},"talked_time":1,"{big}":1e131072}}"#),
        format!(r#"{{{OK},"talked_time":1,"{big}":{{"{big}":1,"{big}":2}}}}"#),
        format!(r#"{{{OK},"talked_time":1,"x":{{"{big}":1,"{big}":2}}}}"#),
        format!(r#"{{{OK},"metric_type":"{big}","metric_value":1}}"#),
        format!(r#"{{{OK},"talked_time":"{big}"}}"#),
    ];
    for raw in cases {
        let (field, message, _) = check(&raw).expect_err("rejected");
        assert!(field.len() <= 70, "field of {} bytes", field.len());
        assert!(
            message.len() <= 1100,
            "message of {} bytes: {message:.200}",
            message.len()
        );
    }
    let shown: &[(String, &str)] = &[
        (
            format!(r#"{{{OK},"metric_type":"٣","metric_value":1}}"#),
            r#"metric_type: "٣" is not a known metric type"#,
        ),
        (
            format!(r#"{{{OK},"talked_time":"Zoë 🎧"}}"#),
            r#"talked_time: "Zoë 🎧" is not a number"#,
        ),
        (
            format!(r#"{{{OK},"talked_time":"a\"b\\c\nd"}}"#),
            r#"talked_time: "a\"b\\c\nd" is not a number"#,
        ),
        (
            format!(r#"{{{OK},"talked_time":1,"é":{{"ü":1,"ü":2}}}}"#),
            r#"é: key "ü" appears more than once in the same object"#,
        ),
    ];
    for (raw, prefix) in shown {
        let (_, message, _) = check(raw).expect_err("rejected");
        assert!(message.starts_with(prefix), "{message}");
    }
}

#[test]
fn ids_of_rejected_elements() {
    use super::element::{rejected_ids, RejectedIds};
    let ids = |user: Option<&str>, event: Option<&str>| RejectedIds {
        user_id: user.map(Into::into),
        event_id: event.map(Into::into),
    };
    let cases: &[(&str, RejectedIds)] = &[
        // readable: strings and integers, whatever else is wrong
        (
            r#"{"user_id":"u1","event_id":"e1","metric_type":"nope"}"#,
            ids(Some("u1"), Some("e1")),
        ),
        (
            r#"{"user_id":7,"event_id":123,"talked_time":-1}"#,
            ids(Some("7"), Some("123")),
        ),
        (r#"{"event_id":"e\u00e9"}"#, ids(None, Some("eé"))),
        (r#"{"user_id":null,"event_id":"e2"}"#, ids(None, Some("e2"))),
        // unreadable: not an object, not JSON, bad id values, a repeated key
        (r#"[1,2]"#, ids(None, None)),
        (r#"{"user_id":"u1","event_id":"e1""#, ids(None, None)),
        (r#"{"user_id":"u1","event_id":""}"#, ids(Some("u1"), None)),
        (r#"{"user_id":"u1","event_id":1.5}"#, ids(Some("u1"), None)),
        (r#"{"user_id":{"a":1},"event_id":["e"]}"#, ids(None, None)),
        (
            r#"{"user_id":"u\u0000","event_id":"e"}"#,
            ids(None, Some("e")),
        ),
        (
            r#"{"user_id":"u","event_id":"a","event_id":"b"}"#,
            ids(Some("u"), None),
        ),
        (
            r#"{"user_id":"u","event_id":"\ud800"}"#,
            ids(Some("u"), None),
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(&rejected_ids(raw), want, "{raw}");
    }
    let long = format!(r#"{{"user_id":"u","event_id":"{}"}}"#, "x".repeat(257));
    assert_eq!(rejected_ids(&long), ids(Some("u"), None));
}

#[test]
fn platform_name_and_email_are_fields_of_their_own() {
    let e = check(r#"{"user_id":"u","timestamp":1622558400,"talked_time":1,"platform":"ios","name":"Ann","email":"ann@example.com","os":"17"}"#).unwrap();
    assert_eq!(e.context.platform.as_deref(), Some("ios"));
    assert_eq!(e.context.profile.name.as_deref(), Some("Ann"));
    assert_eq!(
        e.context.attributes.as_deref(),
        Some(r#"{"platform":"ios","os":"17"}"#)
    );
    let null =
        check(r#"{"user_id":"u","timestamp":1622558400,"talked_time":1,"name":null,"email":null}"#)
            .unwrap();
    assert!(null.context.profile.is_empty());

    // Before 0.3.0's catalog (no users table) they stay unknown fields.
    let old = validate_json_element(
        r#"{"user_id":"u","timestamp":1622558400,"talked_time":1,"platform":"ios","email":"nope"}"#,
        &Registry::builtin().without_profiles(),
    )
    .unwrap();
    assert_eq!(old.context.platform, None);
    assert_eq!(
        old.context.attributes.as_deref(),
        Some(r#"{"platform":"ios","email":"nope"}"#)
    );
}

#[test]
fn an_email_must_look_like_one() {
    let long = format!("{}@example.com", "a".repeat(250));
    let cases: &[(String, &str, &str)] = &[
        (
            r#""john.example.com""#.into(),
            "22023",
            "is not an email address",
        ),
        (
            r#""@example.com""#.into(),
            "22023",
            "is not an email address",
        ),
        (r#""john@""#.into(), "22023", "is not an email address"),
        (format!("\"{long}\""), "22001", "254"),
        ("42".into(), "22023", "must be a string"),
    ];
    for (email, sqlstate, reason) in cases {
        let raw =
            format!(r#"{{"user_id":"u","timestamp":1622558400,"talked_time":1,"email":{email}}}"#);
        let (field, message, kind) = check(&raw).unwrap_err();
        assert_eq!(field, "email", "{email}");
        assert_eq!(kind.sqlstate(), *sqlstate, "{email}");
        assert!(message.contains(reason), "{email}: {message}");
    }
    assert!(check(r#"{"user_id":"u","timestamp":1622558400,"talked_time":1,"email":"j@x","name":"x","platform":"android"}"#).is_ok());
    let name = format!(
        r#"{{"user_id":"u","timestamp":1622558400,"talked_time":1,"name":"{}"}}"#,
        "n".repeat(257)
    );
    assert_eq!(check(&name).unwrap_err().0, "name");
}

#[test]
fn insert_metric_reads_platform_and_the_profile_from_its_attributes() {
    let args = |attributes| CallArgs {
        unix_us: 1_622_558_400_000_000,
        user_id: Some("u"),
        session_id: None,
        metric_type: Some("talked_time"),
        metric_value: CallValue::Number(3.0),
        device_id: None,
        app_version: None,
        location: None,
        sentiment_score: None,
        event_id: None,
        attributes,
    };
    let e = validate_call(
        args(Some(
            r#"{"platform":"web","name":"Ann","email":"a@b","os":"x"}"#,
        )),
        &Registry::builtin(),
    )
    .unwrap();
    assert_eq!(e.context.platform.as_deref(), Some("web"));
    assert_eq!(e.context.profile.email.as_deref(), Some("a@b"));
    assert_eq!(
        e.context.attributes.as_deref(),
        Some(r#"{"os":"x","platform":"web"}"#)
    );
    let only = validate_call(args(Some(r#"{"platform":"web"}"#)), &Registry::builtin()).unwrap();
    assert_eq!(
        only.context.attributes.as_deref(),
        Some(r#"{"platform":"web"}"#)
    );
    let bad = validate_call(args(Some(r#"{"email":"nope"}"#)), &Registry::builtin()).unwrap_err();
    assert_eq!(bad.field, "email");
    let wrong = validate_call(args(Some(r#"{"platform":7}"#)), &Registry::builtin()).unwrap_err();
    assert_eq!(
        (wrong.field.as_str(), wrong.kind.sqlstate()),
        ("platform", "22023")
    );
}

#[test]
fn flat_objects_are_read_with_strings_decoded() {
    use super::element::{flat_object, FlatValue};
    use std::borrow::Cow;
    assert_eq!(
        flat_object(
            r#"{"platform":"iOS","n":-1.50e3,"t":true,"f":false,"z":null,"k\"ey":"caf\u00e9 \ud83d\ude00"}"#
        ),
        Some(vec![
            (
                Cow::Borrowed("platform"),
                FlatValue::Str(Cow::Borrowed("iOS"))
            ),
            (Cow::Borrowed("n"), FlatValue::Number("-1.50e3")),
            (Cow::Borrowed("t"), FlatValue::Bool(true)),
            (Cow::Borrowed("f"), FlatValue::Bool(false)),
            (Cow::Borrowed("z"), FlatValue::Null),
            (
                Cow::Owned("k\"ey".into()),
                FlatValue::Str(Cow::Owned("café 😀".into()))
            ),
        ])
    );
    assert_eq!(flat_object("{}"), Some(vec![]));
    for not_flat in [
        r#"{"a":{"b":1}}"#,
        r#"{"a":[1]}"#,
        r#"[1]"#,
        r#"{"a":1,"a":2}"#,
        r#"{"a":"\ud800"}"#,
        r#"{"a":"#,
    ] {
        assert_eq!(flat_object(not_flat), None, "{not_flat}");
    }
}
