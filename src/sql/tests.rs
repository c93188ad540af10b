//! SQL-facing tests, run by `cargo pgrx test` inside a real PostgreSQL.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::core::registry::{Registry, ValueKind};

    fn one<T: IntoDatum + FromDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn text(sql: &str) -> String {
        one::<String>(sql).unwrap_or_default()
    }

    fn count(sql: &str) -> i64 {
        one::<i64>(sql).unwrap_or(-1)
    }

    /// ingest_json's outcome rows as `ordinal|status|field|metrics_stored` lines.
    fn outcomes(payload: &str) -> Vec<String> {
        let sql = format!(
            "SELECT coalesce(string_agg(concat_ws('|', ordinal, status, field, metrics_stored), E'\\n' ORDER BY ordinal), '') \
             FROM metrics_ingest.ingest_json({})",
            pgrx::spi::quote_literal(payload)
        );
        text(&sql).lines().map(str::to_string).collect()
    }

    const SEED_000: &str = r#"[{"timestamp": "2024-08-12T12:00:00+00:00", "user_id": "user456", "session_id": "session789", "metric_type": "microphone_used", "metric_value": "1", "device_id": "device012", "app_version": "1.0.1", "location": "Los Angeles", "sentiment_score": 0.8}]"#;
    const SEED_002: &str = r#"{"user_id":"b2a7465b-5d83-40c6-b8b6-2f8f15cbf23d","metric_type":"talked_time","value":12.34,"timestamp":"2024-08-08T12:34:56Z"}"#;
    const SEED_003: &str = r#"{"user_id": 1, "name": "John Doe", "email": "john.doe@example.com", "session_id": 1, "talked_time": 120, "microphone_used": true, "speaker_used": true, "voice_sentiment": "positive", "timestamp": 1622558400}"#;
    const SEED_001: &str = r#"{"user_id": "u-1001", "session_id": "s-2001", "timestamp": 1722470400, "talked_time": 95, "microphone_used": true, "speaker_used": false, "voice_sentiment": "neutral"}"#;

    const ROW: &str = "concat_ws('|', \"timestamp\" AT TIME ZONE 'UTC', user_id, session_id, metric_type, metric_value, \
                       metric_label, device_id, app_version, location, sentiment_score, event_id, attributes)";

    fn rows(filter: &str) -> Vec<String> {
        let sql = format!(
            "SELECT coalesce(string_agg({ROW}, E'\\n' ORDER BY id), '') FROM metrics_ingest.metrics WHERE {filter}"
        );
        text(&sql).lines().map(str::to_string).collect()
    }

    /// The jsonb of a flat object, built without PostgreSQL's JSON parser,
    /// has the bytes jsonb_in gives the same text (keys sorted by length and
    /// bytes, escapes decoded, numbers as numeric_in reads them).
    #[pg_test]
    fn flat_attributes_build_the_jsonb_jsonb_in_builds() {
        use crate::sql::datum::{jsonb_datum, jsonb_in};
        let cases = [
            r#"{"platform":"iOS"}"#,
            r#"{}"#,
            r#"{"bb":1,"a":2,"ccc":"x","":"empty key","dd":""}"#,
            r#"{"k\"ey":"v\u00e9\n\t\/\\","é":"日本","emoji":"\ud83d\ude00"}"#,
            r#"{"n0":0,"n1":-0,"n2":1.50,"n3":1e5,"n4":1E-7,"n5":12345678901234567890123.4500,"n6":-1.0e+2,"n7":0.000}"#,
            r#"{"t":true,"f":false,"z":null}"#,
            r#"{"b":"2","a":"1","B":"3","A":"4","aa":"5"}"#,
            r#"{"nested":{"a":[1,2,{"b":null}]},"x":1}"#,
            r#"{"list":[1,"two",3.0]}"#,
        ];
        for json in cases {
            // SAFETY: both datums are fresh, untoasted jsonb varlenas in the
            // current memory context, read within their size.
            let bytes = |datum: pg_sys::Datum| unsafe {
                let ptr = datum.cast_mut_ptr::<pg_sys::varlena>();
                let len = pgrx::varlena::varsize_any(ptr);
                std::slice::from_raw_parts(ptr as *const u8, len).to_vec()
            };
            assert_eq!(bytes(jsonb_datum(json)), bytes(jsonb_in(json)), "{json}");
        }
    }

    #[pg_test]
    fn creates_every_object() {
        let expected = [
            // metrics, rejected, metric_types, settings; since 0.3.0 users, session_parts, daily_parts
            ("SELECT count(*) FROM pg_tables WHERE schemaname = 'metrics_ingest'", 7),
            ("SELECT count(*) FROM pg_views WHERE schemaname = 'metrics_ingest'", 2),
            // keys and indexes live on each partition (see sql/schema.sql), none yet
            ("SELECT count(*) FROM pg_indexes WHERE schemaname = 'metrics_ingest' AND tablename = 'metrics'", 0),
            ("SELECT count(*) FROM pg_roles WHERE rolname IN ('metrics_ingest_writer', 'metrics_ingest_reader', 'metrics_ingest_pii_reader')", 3),
            // ingest_json (3), insert_metric (2), partition_for; since 0.3.3 forget_user,
            // rebuild_rollups, run_maintenance and the three set_* functions
            ("SELECT count(*) FROM pg_proc WHERE pronamespace = 'metrics_ingest'::regnamespace AND prosecdef", 12),
            // the seven tables and both identity sequences are kept by pg_dump
            ("SELECT cardinality(extconfig)::bigint FROM pg_extension WHERE extname = 'metrics_ingest'", 9),
            ("SELECT count(*) FROM pg_proc WHERE pronamespace = 'metrics_ingest'::regnamespace \
              AND prosecdef AND NOT 'search_path=pg_catalog, pg_temp' = ANY(proconfig)", 0),
            ("SELECT count(*) FROM pg_proc p WHERE pronamespace = 'metrics_ingest'::regnamespace \
              AND has_function_privilege('public', p.oid, 'EXECUTE')", 0),
        ];
        for (sql, n) in expected {
            assert_eq!(count(sql), n, "{sql}");
        }
        let relocatable =
            one::<bool>("SELECT extrelocatable FROM pg_extension WHERE extname = 'metrics_ingest'");
        assert_eq!(relocatable, Some(false));
    }

    #[pg_test]
    fn shipped_registry_matches_the_core() {
        let builtin = Registry::builtin();
        let sql_names = text("SELECT string_agg(metric_type, ',' ORDER BY metric_type) FROM metrics_ingest.metric_types");
        assert_eq!(sql_names, builtin.names().join(","));
        for name in builtin.names() {
            let rule = builtin.get(name).expect("listed");
            let kind = text(&format!(
                "SELECT value_kind FROM metrics_ingest.metric_types WHERE metric_type = '{name}'"
            ));
            assert_eq!(ValueKind::parse(&kind), Some(rule.kind), "{name}");
            let bounds = text(&format!(
                "SELECT concat_ws(',', coalesce(min_value::text, '-'), coalesce(max_value::text, '-')) \
                 FROM metrics_ingest.metric_types WHERE metric_type = '{name}'"
            ));
            let show = |b: Option<f64>| b.map_or("-".to_string(), |v| v.to_string());
            assert_eq!(
                bounds,
                format!("{},{}", show(rule.min), show(rule.max)),
                "{name}"
            );
        }
    }

    #[pg_test]
    fn seed_examples_are_stored_unchanged() {
        assert_eq!(outcomes(SEED_000), vec!["1|inserted|1"]);
        assert_eq!(outcomes(SEED_002), vec!["1|inserted|1"]);
        assert_eq!(outcomes(SEED_003), vec!["1|inserted|4"]);
        assert_eq!(outcomes(SEED_001), vec!["1|inserted|4"]);
        assert_eq!(
            rows("user_id IN ('user456', 'b2a7465b-5d83-40c6-b8b6-2f8f15cbf23d')"),
            vec![
                "2024-08-12 12:00:00|user456|session789|microphone_used|1|device012|1.0.1|Los Angeles|0.8",
                "2024-08-08 12:34:56|b2a7465b-5d83-40c6-b8b6-2f8f15cbf23d|talked_time|12.34",
            ]
        );
        assert_eq!(
            rows("user_id = '1'"),
            vec![
                "2021-06-01 14:40:00|1|1|talked_time|120",
                "2021-06-01 14:40:00|1|1|microphone_used|1",
                "2021-06-01 14:40:00|1|1|speaker_used|1",
                "2021-06-01 14:40:00|1|1|voice_sentiment|1|positive",
            ]
        );
        // Since 0.3.0 seed 003's profile is in users, not in every metric row.
        assert_eq!(
            text("SELECT concat_ws('|', user_id, name, email) FROM metrics_ingest.users WHERE user_id = '1'"),
            "1|John Doe|john.doe@example.com"
        );
        assert_eq!(
            rows("user_id = 'u-1001'"),
            vec![
                "2024-08-01 00:00:00|u-1001|s-2001|talked_time|95",
                "2024-08-01 00:00:00|u-1001|s-2001|microphone_used|1",
                "2024-08-01 00:00:00|u-1001|s-2001|speaker_used|0",
                "2024-08-01 00:00:00|u-1001|s-2001|voice_sentiment|0|neutral",
            ]
        );
        assert_eq!(count("SELECT count(*) FROM metrics_ingest.rejected"), 0);
    }

    #[pg_test]
    fn seed_000_call_works_verbatim() {
        Spi::run("SET search_path = metrics_ingest, public").expect("set");
        Spi::run(
            "CALL insert_metric('2024-08-12 12:00:00'::TIMESTAMP, 'user123'::VARCHAR, 'session456'::VARCHAR, \
             'talked_time'::VARCHAR, '300'::VARCHAR, 'device789'::VARCHAR, '1.0.0'::VARCHAR, 'New York'::VARCHAR, 0.9::FLOAT)",
        )
        .expect("seed 000 call");
        Spi::run("SET search_path TO DEFAULT").expect("reset");
        let stored = text(
            "SELECT concat_ws('|', \"timestamp\" = '2024-08-12 12:00:00'::timestamp::timestamptz, user_id, session_id, \
             metric_type, metric_value, device_id, app_version, location, sentiment_score) FROM metrics_ingest.metrics",
        );
        assert_eq!(
            stored,
            "t|user123|session456|talked_time|300|device789|1.0.0|New York|0.9"
        );
    }

    #[pg_test]
    fn insert_metric_takes_numbers_labels_and_omitted_arguments() {
        let calls = [
            "CALL metrics_ingest.insert_metric('2024-08-12T12:00:00Z', 'u1', 's1', 'talked_time', 42)",
            "CALL metrics_ingest.insert_metric('2024-08-12T12:00:01Z', 'u1', NULL, 'voice_sentiment', 'negative')",
            "CALL metrics_ingest.insert_metric('2024-08-12T12:00:02Z', 'u1', NULL, 'speaker_used', 'true', event_id => 'e-1')",
            "CALL metrics_ingest.insert_metric('2024-08-12T12:00:02Z', 'u1', NULL, 'speaker_used', 'true', event_id => 'e-1')",
            "CALL metrics_ingest.insert_metric('2024-08-12T12:00:03Z', 'u1', NULL, 'microphone_used', 0, attributes => '{\"os\": \"linux\"}')",
        ];
        for call in calls {
            Spi::run(call).unwrap_or_else(|e| panic!("{call}: {e}"));
        }
        assert_eq!(
            rows("user_id = 'u1'"),
            vec![
                "2024-08-12 12:00:00|u1|s1|talked_time|42",
                "2024-08-12 12:00:01|u1|voice_sentiment|-1|negative",
                "2024-08-12 12:00:02|u1|speaker_used|1|e-1",
                r#"2024-08-12 12:00:03|u1|microphone_used|0|{"os": "linux"}"#,
            ]
        );
    }

    #[pg_test(error = "metric_value: -1 is outside the bounds of talked_time [0, inf]")]
    fn insert_metric_refuses_bad_values() {
        Spi::run("CALL metrics_ingest.insert_metric(now(), 'u', NULL, 'talked_time', -1)").ok();
    }

    #[pg_test(
        error = "metric_type: \"dancing\" is not a known metric type (known: microphone_used, speaker_used, talked_time, voice_sentiment)"
    )]
    fn insert_metric_refuses_unknown_types() {
        Spi::run("CALL metrics_ingest.insert_metric(now(), 'u', NULL, 'dancing', 1)").ok();
    }

    #[pg_test(
        error = "timestamp: 1900-01-01T00:00:00Z is outside the accepted window 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z"
    )]
    fn insert_metric_refuses_implausible_times() {
        Spi::run("CALL metrics_ingest.insert_metric('1900-01-01Z', 'u', NULL, 'talked_time', 1)")
            .ok();
    }

    #[pg_test]
    fn verdicts_for_every_element_and_rejected_rows_kept() {
        let payload = r#"[
            {"user_id":"v","timestamp":"2024-01-01T00:00:00Z","talked_time":1,"event_id":"a"},
            {"user_id":"v","timestamp":"not a date","talked_time":1},
            {"user_id":"v","timestamp":"2024-01-01T00:00:00Z","talked_time":1,"event_id":"a"},
            42,
            {"user_id":"v","timestamp":"2024-01-01T00:00:00Z","metric_type":"talked_time","metric_value":-3}
        ]"#;
        assert_eq!(
            outcomes(payload),
            vec![
                "1|inserted|1",
                "2|rejected|timestamp|0",
                "3|duplicate|0",
                "4|rejected|element|0",
                "5|rejected|metric_value|0"
            ]
        );
        let rejected = text(
            "SELECT string_agg(concat_ws('|', ordinal, field, sqlstate, error, element), E'\\n' ORDER BY ordinal) \
             FROM metrics_ingest.rejected",
        );
        assert_eq!(
            rejected.lines().collect::<Vec<_>>(),
            vec![
                r#"2|timestamp|22023|"not a date" is not an ISO 8601 timestamp or epoch seconds|{"user_id":"v","timestamp":"not a date","talked_time":1}"#,
                "4|element|22023|must be a JSON object, found a number|42",
                r#"5|metric_value|22003|-3 is outside the bounds of talked_time [0, inf]|{"user_id":"v","timestamp":"2024-01-01T00:00:00Z","metric_type":"talked_time","metric_value":-3}"#,
            ]
        );
        // A retry of the whole batch stores nothing new.
        assert_eq!(
            outcomes(
                r#"[{"user_id":"v","timestamp":"2024-01-01T00:00:00Z","talked_time":1,"event_id":"a"}]"#
            ),
            vec!["1|duplicate|0"]
        );
        assert_eq!(count("SELECT count(*) FROM metrics_ingest.metrics"), 1);
    }

    #[pg_test]
    fn text_json_and_jsonb_overloads_agree() {
        let element = r#"{"user_id":"o","timestamp":"2024-01-01T00:00:00Z","talked_time":7}"#;
        for cast in ["", "::text", "::json", "::jsonb"] {
            let sql = format!("SELECT count(*) FROM metrics_ingest.ingest_json('{element}'{cast}) WHERE status = 'inserted'");
            assert_eq!(count(&sql), 1, "{cast}");
        }
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.ingest_json(NULL::text)"),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.ingest_json(NULL::jsonb)"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'o' AND metric_value = 7"), 4);
    }

    #[pg_test]
    fn timestamps_without_offset_are_utc_whatever_the_session_time_zone() {
        Spi::run("SET TimeZone = 'America/New_York'").expect("tz");
        outcomes(r#"{"user_id":"tz","timestamp":"2024-08-12T12:00:00","talked_time":1}"#);
        let utc = text("SELECT (\"timestamp\" AT TIME ZONE 'UTC')::text FROM metrics_ingest.metrics WHERE user_id = 'tz'");
        assert_eq!(utc, "2024-08-12 12:00:00");
    }

    #[pg_test(
        error = "element 2: timestamp: \"yesterday\" is not an ISO 8601 timestamp or epoch seconds"
    )]
    fn on_error_stop_raises_at_the_first_bad_element() {
        Spi::run(
            r#"SELECT * FROM metrics_ingest.ingest_json('[{"user_id":"s","timestamp":1722470400,"talked_time":1},{"user_id":"s","timestamp":"yesterday","talked_time":1}]', on_error => 'stop')"#,
        )
        .ok();
    }

    #[pg_test(error = "payload is not valid JSON: EOF while parsing an object at line 1 column 2")]
    fn a_payload_that_is_not_json_is_an_error() {
        Spi::run("SELECT * FROM metrics_ingest.ingest_json('[{')").ok();
    }

    #[pg_test(error = "on_error must be 'reject' or 'stop', not \"skip\"")]
    fn on_error_takes_only_known_words() {
        Spi::run("SELECT * FROM metrics_ingest.ingest_json('[]', on_error => 'skip')").ok();
    }

    #[pg_test]
    fn a_new_metric_type_is_one_insert_and_is_seen_at_once() {
        assert_eq!(
            outcomes(
                r#"{"user_id":"n","timestamp":1722470400,"metric_type":"screen_shared","metric_value":true}"#
            ),
            vec!["1|rejected|metric_type|0"]
        );
        Spi::run("INSERT INTO metrics_ingest.metric_types (metric_type, value_kind) VALUES ('screen_shared', 'boolean')")
            .expect("register");
        assert_eq!(
            outcomes(
                r#"{"user_id":"n","timestamp":1722470400,"metric_type":"screen_shared","metric_value":true}"#
            ),
            vec!["1|inserted|1"]
        );
        assert_eq!(
            outcomes(r#"{"user_id":"n","timestamp":1722470400,"screen_shared":false}"#),
            vec!["1|inserted|1"]
        );
    }

    const MIXED_BATCH: &str = r#"[
        {"user_id":"p","timestamp":"2024-03-01T10:00:00Z","talked_time":5,"mood":"ok"},
        {"user_id":"p","timestamp":"2024-03-01T10:00:01Z","metric_type":"voice_sentiment","metric_value":"positive","event_id":"x1"},
        {"user_id":"p","timestamp":"2024-03-01T10:00:01Z","metric_type":"voice_sentiment","metric_value":"positive","event_id":"x1"},
        {"user_id":"p","timestamp":"bad","talked_time":5},
        {"user_id":"p","timestamp":1709287203,"microphone_used":false,"speaker_used":true,"event_id":"x2"}
    ]"#;
    const MIXED_OUTCOMES: [&str; 5] = [
        "1|inserted|1",
        "2|inserted|1",
        "3|duplicate|0",
        "4|rejected|timestamp|0",
        "5|inserted|2",
    ];

    /// The stored rows of MIXED_BATCH, whichever path stored them.
    fn mixed_rows() -> Vec<&'static str> {
        vec![
            r#"2024-03-01 10:00:00|p|talked_time|5|{"mood": "ok"}"#,
            "2024-03-01 10:00:01|p|voice_sentiment|1|positive|x1",
            "2024-03-01 10:00:03|p|microphone_used|0|x2",
            "2024-03-01 10:00:03|p|speaker_used|1|x2",
        ]
    }

    #[pg_test]
    fn fast_path_stores_a_mixed_batch() {
        assert_eq!(outcomes(MIXED_BATCH), MIXED_OUTCOMES);
        assert_eq!(rows("true"), mixed_rows());
    }

    #[pg_test]
    fn a_table_with_a_trigger_falls_back_to_insert_and_agrees() {
        Spi::run(
            "CREATE TABLE public.audit (n bigint); \
             CREATE FUNCTION public.count_rows() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN INSERT INTO public.audit VALUES (NEW.id); RETURN NEW; END$$; \
             CREATE TRIGGER audit AFTER INSERT ON metrics_ingest.metrics FOR EACH ROW EXECUTE FUNCTION public.count_rows()",
        )
        .expect("trigger");
        assert_eq!(outcomes(MIXED_BATCH), MIXED_OUTCOMES);
        assert_eq!(rows("true"), mixed_rows());
        // The trigger fired once per stored row: proof the INSERT path ran.
        assert_eq!(count("SELECT count(*) FROM public.audit"), 4);
        // insert_metric too, including its idempotency.
        for _ in 0..2 {
            Spi::run("CALL metrics_ingest.insert_metric('2024-03-02Z', 'p', NULL, 'talked_time', 9, event_id => 'x3')")
                .expect("call");
        }
        assert_eq!(count("SELECT count(*) FROM public.audit"), 5);
    }

    #[pg_test]
    fn columns_added_by_a_dba_get_their_defaults_on_the_fast_path() {
        // Both paths plan the table's shape before the change...
        assert_eq!(
            outcomes(r#"{"user_id":"before","timestamp":1722470400,"talked_time":1}"#),
            ["1|inserted|1"]
        );
        Spi::run(
            "CALL metrics_ingest.insert_metric('2024-08-01Z', 'before', NULL, 'talked_time', 2)",
        )
        .expect("call");
        Spi::run("DELETE FROM metrics_ingest.metrics").expect("delete");
        Spi::run(
            "ALTER TABLE metrics_ingest.metrics ADD COLUMN tenant text NOT NULL DEFAULT 'acme'",
        )
        .expect("alter");
        // ...and plan it again after.
        Spi::run(
            "CALL metrics_ingest.insert_metric('2024-08-01Z', 'after', NULL, 'talked_time', 2)",
        )
        .expect("call");
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'after' AND tenant = 'acme'"),
            1
        );
        Spi::run("DELETE FROM metrics_ingest.metrics").expect("delete");
        assert_eq!(outcomes(MIXED_BATCH), MIXED_OUTCOMES);
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE tenant = 'acme'"),
            4
        );
        let ids = text("SELECT string_agg(id::text, ',' ORDER BY id) FROM metrics_ingest.metrics");
        assert_eq!(
            ids.split(',').count(),
            4,
            "identity values are distinct: {ids}"
        );
        let same_time =
            one::<bool>("SELECT bool_and(ingested_at = now()) FROM metrics_ingest.metrics");
        assert_eq!(same_time, Some(true));
    }

    #[pg_test]
    fn a_large_batch_crosses_many_flushes_and_a_retry_is_all_duplicates() {
        let payload = "(SELECT json_agg(json_build_object('user_id', 'u' || (i % 97), 'timestamp', 1722470400 + i, \
                       'talked_time', i, 'event_id', 'big-' || i, 'speaker_used', i % 2))::text FROM generate_series(1, 5000) i)";
        let summary = |sql: &str| {
            text(&format!(
            "SELECT string_agg(status || ':' || n || ':' || stored, ',' ORDER BY status) FROM \
             (SELECT status, count(*) AS n, sum(metrics_stored) AS stored FROM metrics_ingest.ingest_json({sql}) GROUP BY status) s"
        ))
        };
        assert_eq!(summary(payload), "inserted:5000:10000");
        assert_eq!(summary(payload), "duplicate:5000:0");
        assert_eq!(count("SELECT count(*) FROM metrics_ingest.metrics"), 10_000);
        assert_eq!(count("SELECT count(DISTINCT (user_id, event_id, metric_type)) FROM metrics_ingest.metrics"), 10_000);
    }

    /// A flush writes its rows in key order (user_id, "timestamp"), not in
    /// element order; what a user sees must not change: ids follow the
    /// elements, and of two elements with one event key the earlier one is
    /// stored, however many rows that sort first lie between them.
    #[pg_test]
    fn rows_written_in_key_order_keep_their_elements_order_in_ids_and_verdicts() {
        let element = |user: &str, second: u32, event: &str, value: u32| {
            format!(
                r#"{{"user_id":"{user}","timestamp":{},"talked_time":{value},"event_id":"{event}"}}"#,
                1722470400 + second
            )
        };
        let mut batch = vec![element("zed", 5, "z-1", 7)];
        // Users in descending order: the flush writes them the other way round.
        batch.extend(
            (0..1200)
                .map(|i| element(&format!("a{:04}", 1199 - i), 1200 - i, &format!("a-{i}"), i)),
        );
        batch.push(element("zed", 5, "z-1", 8));
        batch.push(element("zed", 1, "z-0", 9));
        let found = outcomes(&format!("[{}]", batch.join(",")));
        assert_eq!(found.len(), 1203);
        assert_eq!(found[0], "1|inserted|1");
        assert_eq!(found[1201], "1202|conflict|metric_value|0");
        assert_eq!(found[1202], "1203|inserted|1");
        assert_eq!(
            text("SELECT string_agg(metric_value::text, ',' ORDER BY id) FROM metrics_ingest.metrics WHERE user_id = 'zed'"),
            "7,9"
        );
        let ids_follow_elements = "SELECT bool_and(ok) FROM (SELECT (lag(u) OVER (ORDER BY id) IS NULL              OR lag(u) OVER (ORDER BY id) > u) AS ok FROM (SELECT id, substr(user_id, 2)::int AS u              FROM metrics_ingest.metrics WHERE user_id LIKE 'a%') r) s";
        assert_eq!(one::<bool>(ids_follow_elements), Some(true));
        // ...while the heap holds them in key order (the flush did sort them).
        assert_eq!(
            text("SELECT (array_agg(user_id ORDER BY ctid))[1] FROM metrics_ingest.metrics WHERE user_id LIKE 'a%'"),
            "a0201"
        );
    }

    #[pg_test]
    fn deep_jsonb_is_an_element_rejection_not_an_internal_error() {
        let deep = "('[{\"user_id\":\"d\",\"timestamp\":1722470400,\"talked_time\":1,\"deep\":' || repeat('[', 1000) || repeat(']', 1000) || '}]')::jsonb";
        let verdict = text(&format!(
            "SELECT concat_ws('|', status, field, error LIKE '%recursion limit exceeded%') FROM metrics_ingest.ingest_json({deep})"
        ));
        assert_eq!(verdict, "rejected|deep|t");
    }

    #[pg_test(
        error = "attributes: is not valid JSON: recursion limit exceeded at line 1 column 136"
    )]
    fn deep_attributes_in_insert_metric_are_refused_with_a_reason() {
        Spi::run(
            "CALL metrics_ingest.insert_metric(now(), 'd', NULL, 'talked_time', 1, \
             attributes => ('{\"deep\":' || repeat('[', 300) || repeat(']', 300) || '}')::jsonb)",
        )
        .ok();
    }

    #[pg_test(
        error = "timestamp: infinity is outside the accepted window 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z"
    )]
    fn infinite_timestamps_are_refused_by_name() {
        Spi::run("CALL metrics_ingest.insert_metric('infinity', 'u', NULL, 'talked_time', 1)").ok();
    }

    #[pg_test(
        error = "timestamp: -infinity is outside the accepted window 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z"
    )]
    fn minus_infinity_is_refused_by_name_too() {
        Spi::run("CALL metrics_ingest.insert_metric('-infinity', 'u', NULL, 'talked_time', 1)")
            .ok();
    }

    // ---- issue 12 (spark): idempotent dead letters, Citus detection ----

    #[pg_test]
    fn a_rejected_element_with_an_event_id_is_kept_once() {
        let bad = r#"[{"user_id":"r1","event_id":"f:7","timestamp":1722470400,"talked_time":-1}]"#;
        for _ in 0..2 {
            assert_eq!(outcomes(bad), vec!["1|rejected|talked_time|0"]);
        }
        assert_eq!(
            text("SELECT string_agg(concat_ws('|', user_id, event_id, field), ',') FROM metrics_ingest.rejected"),
            "r1|f:7|talked_time"
        );
    }

    /// A call's dead letters are written together, at most 1,000 a statement:
    /// across several statements they keep the order they were judged in, and a
    /// bad element sent twice in one call is kept once, as across calls.
    #[pg_test]
    fn a_calls_dead_letters_are_kept_in_order_and_once_across_its_writes() {
        let bad = |i: usize| {
            format!(
                r#"{{"user_id":"dl","event_id":"d{i}","timestamp":"not a time","talked_time":1}}"#
            )
        };
        let mut batch: Vec<String> = (0..2500).map(bad).collect();
        batch.insert(
            1200,
            r#"{"user_id":"dl","timestamp":1722470400,"talked_time":1}"#.into(),
        );
        batch.push(bad(7));
        batch.push(r#"{"user_id":"dl","timestamp":"later","talked_time":1}"#.into());
        let payload = format!("[{}]", batch.join(","));
        let found = outcomes(&payload);
        assert_eq!(found.len(), 2503);
        assert_eq!(found[1200], "1201|inserted|1");
        assert_eq!(
            found[2501], "2502|rejected|timestamp|0",
            "the repeat is still rejected"
        );
        assert_eq!(
            found.iter().filter(|o| o.contains("|rejected|")).count(),
            2502
        );
        let kept = "SELECT count(*) FROM metrics_ingest.rejected WHERE user_id = 'dl'";
        assert_eq!(count(kept), 2501, "the same bad element twice is kept once");
        assert_eq!(
            one::<bool>(
                "SELECT bool_and(ok) FROM (SELECT ordinal > lag(ordinal, 1, 0) OVER (ORDER BY id) AS ok \
                 FROM metrics_ingest.rejected WHERE user_id = 'dl') s"
            ),
            Some(true),
            "ids follow the elements"
        );
        assert_eq!(
            text("SELECT concat_ws('|', ordinal, event_id, field, sqlstate) FROM metrics_ingest.rejected \
                  WHERE user_id = 'dl' ORDER BY id DESC LIMIT 1"),
            "2503|timestamp|22023"
        );
        // The same call again: every letter is there already.
        assert_eq!(outcomes(&payload).len(), 2503);
        assert_eq!(
            count(kept),
            2502,
            "only the letter without an event_id is kept again"
        );
    }

    /// The stand-in for Citus's catalog, as Citus defines it (pg_catalog, a regclass
    /// column logicalrelid with a unique index).
    use crate::sql::citus::STAND_IN_PG_DIST_PARTITION;

    #[pg_test]
    fn citus_distributed_tables_are_detected_by_pg_dist_partition() {
        use crate::sql::citus::is_distributed;
        let oid = |name: &str| -> pg_sys::Oid {
            one::<pg_sys::Oid>(&format!("SELECT '{name}'::regclass::oid")).expect("oid")
        };
        let metrics = oid("metrics_ingest.metrics");
        let types = oid("metrics_ingest.metric_types");
        // No Citus: no catalog, nothing distributed, no error.
        assert_eq!(
            count("SELECT count(*) FROM pg_class WHERE relname = 'pg_dist_partition'"),
            0
        );
        assert!(!is_distributed(metrics));
        // The catalog exists, the table is not in it.
        Spi::run(STAND_IN_PG_DIST_PARTITION).expect("stand-in catalog");
        assert!(!is_distributed(metrics));
        // create_distributed_table('metrics_ingest.metrics', 'user_id') would add this row
        // (and create_reference_table('metrics_ingest.metric_types') one with partmethod 'n').
        Spi::run(
            "INSERT INTO pg_catalog.pg_dist_partition (logicalrelid, partmethod, partkey, colocationid, repmodel) \
             VALUES ('metrics_ingest.metrics', 'h', '{VAR :varno 1 :varattno 3}', 1, 's')",
        )
        .expect("row");
        assert!(is_distributed(metrics));
        assert!(!is_distributed(types));
        Spi::run(
            "INSERT INTO pg_catalog.pg_dist_partition (logicalrelid, partmethod, repmodel) \
             VALUES ('metrics_ingest.metric_types', 'n', 't')",
        )
        .expect("row");
        assert!(is_distributed(types));
        // A catalog of the same name elsewhere is not Citus's: only pg_catalog counts.
        Spi::run("DROP TABLE pg_catalog.pg_dist_partition; CREATE TABLE public.pg_dist_partition (logicalrelid regclass)")
            .expect("decoy");
        Spi::run("INSERT INTO public.pg_dist_partition VALUES ('metrics_ingest.metrics')")
            .expect("decoy row");
        assert!(!is_distributed(metrics));
    }
}
