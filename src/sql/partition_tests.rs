//! Partitions, retention and the choice between the fast path and the INSERT
//! path, run by `cargo pgrx test` inside a real PostgreSQL. Each test runs in
//! a transaction of its own that is rolled back at the end.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::sql::test_sql::{count, run, text, verdicts};

    /// The SQLSTATE a statement raises ("ok" if none), caught in a subtransaction
    /// (a PL/pgSQL exception block) so the test's transaction goes on.
    fn sqlstate_of(sql: &str) -> String {
        run("CREATE OR REPLACE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS \
             $$BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END$$");
        text(&format!(
            "SELECT pg_temp.sqlstate_of({})",
            pgrx::spi::quote_literal(sql)
        ))
    }

    /// pg_tests run at once, each in a transaction rolled back at its end. The
    /// ones that write the settings row take turns, from their start: one that
    /// made a partition and then waited for another's settings row, while that
    /// one waited to make a partition, would deadlock.
    fn settings_in_turn() {
        run("LOCK TABLE metrics_ingest.settings IN SHARE ROW EXCLUSIVE MODE");
    }

    fn partitions() -> String {
        text(
            "SELECT coalesce(string_agg(format('%s [%s, %s)', partition, lower, upper), '; ' ORDER BY lower), '') \
             FROM (SELECT partition, to_char(lower AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS lower, \
                          to_char(upper AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') AS upper \
                   FROM metrics_ingest.partitions()) p",
        )
    }

    fn event(user: &str, time: &str, event_id: &str) -> String {
        format!(
            r#"{{"user_id":"{user}","timestamp":"{time}","talked_time":1,"event_id":"{event_id}"}}"#
        )
    }

    #[pg_test]
    fn metrics_is_partitioned_by_time_with_no_default_partition() {
        assert_eq!(
            text("SELECT pg_get_partkeydef('metrics_ingest.metrics'::regclass)"),
            "RANGE (\"timestamp\")"
        );
        assert_eq!(partitions(), "");
        assert_eq!(
            count("SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                   WHERE i.inhparent = 'metrics_ingest.metrics'::regclass AND c.relpartbound IS NOT NULL \
                   AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'"),
            0
        );
    }

    #[pg_test]
    fn any_time_in_the_window_gets_a_partition_on_demand() {
        let payload = format!(
            "[{}, {}, {}, {}, {}]",
            event("a", "2000-01-01T00:00:00Z", "e1"),
            event("a", "2021-06-01T14:40:00Z", "e2"),
            event("a", "2021-06-01T23:59:59.999999Z", "e3"),
            event("a", "2099-12-31T23:59:59Z", "e4"),
            // seed 003's epoch: late data from 2021, as a backfill sends it
            r#"{"user_id":"b","timestamp":1622558400,"talked_time":5}"#,
        );
        assert_eq!(
            verdicts(&payload),
            "inserted:1,inserted:1,inserted:1,inserted:1,inserted:1"
        );
        // Each partition has the keys and indexes.
        assert_eq!(
            text(
                "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes \
                  WHERE schemaname = 'metrics_ingest' AND tablename = 'metrics_p20210601'"
            ),
            "metrics_p20210601_event_key,metrics_p20210601_pkey,metrics_p20210601_session_idx,\
             metrics_p20210601_time_brin,metrics_p20210601_type_time_idx"
        );
        assert_eq!(
            partitions(),
            "metrics_ingest.metrics_p20000101 [2000-01-01 00:00, 2000-01-02 00:00); \
             metrics_ingest.metrics_p20210601 [2021-06-01 00:00, 2021-06-02 00:00); \
             metrics_ingest.metrics_p20991231 [2099-12-31 00:00, 2100-01-01 00:00)"
        );
        // Each row lies in the partition named for its day.
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics \
                   WHERE tableoid::regclass::text <> 'metrics_ingest.metrics_p' || to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYYMMDD')"),
            0
        );
        // A retry finds the events in their partitions.
        assert_eq!(
            verdicts(&format!(
                "[{}, {}]",
                event("a", "2000-01-01T00:00:00Z", "e1"),
                event("a", "2099-12-31T23:59:59Z", "e4")
            )),
            "duplicate:0,duplicate:0"
        );
        run("CALL metrics_ingest.insert_metric('2012-02-29 12:00:00+00', 'c', NULL, 'talked_time', 3)");
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics_p20120229"),
            1,
            "insert_metric makes its partition too"
        );
    }

    #[pg_test]
    fn the_partition_interval_shapes_new_partitions_only() {
        settings_in_turn();
        verdicts(&event("a", "2024-03-05T10:00:00Z", "d"));
        assert_eq!(
            text("SELECT metrics_ingest.set_partition_interval('7 days')::text"),
            "7 days"
        );
        // The week's grid cell around 2024-03-05 overlaps the existing day: it is cut short.
        verdicts(&event("a", "2024-03-06T10:00:00Z", "w1"));
        verdicts(&event("a", "2024-03-01T10:00:00Z", "w0"));
        assert_eq!(
            text("SELECT metrics_ingest.set_partition_interval('1 hour')::text"),
            "01:00:00"
        );
        verdicts(&event("a", "2030-01-01T05:30:00Z", "h"));
        let listed = partitions();
        assert!(
            listed
                .contains("metrics_ingest.metrics_p20240305 [2024-03-05 00:00, 2024-03-06 00:00)"),
            "{listed}"
        );
        assert!(
            listed
                .contains("metrics_ingest.metrics_p20240306 [2024-03-06 00:00, 2024-03-07 00:00)")
                || listed.contains("[2024-03-06 00:00,"),
            "{listed}"
        );
        assert!(
            listed.contains(
                "metrics_ingest.metrics_p20300101_050000 [2030-01-01 05:00, 2030-01-01 06:00)"
            ),
            "{listed}"
        );
        for bad in ["1 month", "30 minutes", "400 days"] {
            let error = sqlstate_of(&format!(
                "SELECT metrics_ingest.set_partition_interval('{bad}')"
            ));
            assert_eq!(error, "22023", "{bad}");
        }
    }

    #[pg_test]
    fn retention_refuses_old_elements_and_maintenance_drops_old_partitions() {
        settings_in_turn();
        let day = |days_ago: i32| {
            text(&format!(
                "SELECT to_char((now() - interval '{days_ago} days') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"12:00:00\"Z\"')"
            ))
        };
        let old = day(40);
        let recent = day(2);
        assert_eq!(
            verdicts(&format!(
                "[{}, {}]",
                event("r", &old, "old"),
                event("r", &recent, "new")
            )),
            "inserted:1,inserted:1"
        );
        assert_eq!(
            text("SELECT metrics_ingest.set_retention('30 days')::text"),
            "30 days"
        );
        let refused = text(&format!(
            "SELECT concat_ws('|', status, field, error) FROM metrics_ingest.ingest_json({})",
            pgrx::spi::quote_literal(event("r", &day(31), "late"))
        ));
        assert!(
            refused.starts_with(
                "rejected|timestamp|timestamp: is older than the retention of 30 days"
            ),
            "{refused}"
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.rejected WHERE field = 'timestamp' AND error LIKE '%retention%'"),
            1
        );
        let done = text(
            "SELECT string_agg(action || ' ' || object, '; ' ORDER BY object) FROM metrics_ingest.run_maintenance() \
             WHERE action LIKE 'dropped%'",
        );
        let old_partition = format!("metrics_ingest.metrics_p{}", old[..10].replace('-', ""));
        assert_eq!(done, format!("dropped partition {old_partition}"));
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'r'"),
            1
        );
        assert_eq!(
            text(
                "SELECT string_agg(event_id, ',') FROM metrics_ingest.metrics WHERE user_id = 'r'"
            ),
            "new"
        );
        // Dead letters by age, when asked for.
        run("UPDATE metrics_ingest.rejected SET rejected_at = now() - interval '100 days'");
        run("SELECT metrics_ingest.set_rejected_retention('90 days')");
        let done = text(
            "SELECT string_agg(action || ': ' || detail, '; ') FROM metrics_ingest.run_maintenance() \
             WHERE action NOT LIKE 'compacted%'",
        );
        assert!(
            done.starts_with("deleted dead letters: 1 rejected before"),
            "{done}"
        );
        assert_eq!(count("SELECT count(*) FROM metrics_ingest.rejected"), 0);
        run("SELECT metrics_ingest.set_retention(NULL)");
        assert_eq!(
            verdicts(&event("r", &day(31), "late")),
            "inserted:1",
            "NULL keeps everything again"
        );
    }

    /// The horizon an element is judged by is run_maintenance's, computed in
    /// UTC, whatever the session's TimeZone: across a change of daylight saving
    /// time, now() - interval in the session's zone lands an hour away, and an
    /// element accepted by it could be dropped at the next run.
    #[pg_test]
    fn the_retention_horizon_is_utc_whatever_the_session_time_zone() {
        settings_in_turn();
        for zone in ["America/New_York", "Australia/Lord_Howe", "Europe/London"] {
            run(&format!("SET TimeZone = '{zone}'"));
            for keep in ["7 days", "30 days", "3 mons", "6 mons", "200 days"] {
                run(&format!("SELECT metrics_ingest.set_retention('{keep}')"));
                // Just inside and just outside the horizon, computed in UTC.
                let at = |seconds: i32| {
                    text(&format!(
                        "SELECT to_char((now() AT TIME ZONE 'UTC') - interval '{keep}' + interval '{seconds} seconds',                          'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
                    ))
                };
                let (inside, outside) = (at(1), at(-1));
                assert_eq!(
                    verdicts(&format!(
                        "[{}, {}]",
                        event("tz", &inside, &format!("{zone}-{keep}-in")),
                        event("tz", &outside, &format!("{zone}-{keep}-out"))
                    )),
                    "inserted:1,rejected:0:timestamp",
                    "{zone}, {keep}: {inside} is inside the horizon, {outside} outside"
                );
            }
        }
        run("RESET TimeZone");
    }

    #[pg_test]
    fn a_retention_reaching_before_the_earliest_timestamp_is_refused_and_changes_nothing() {
        settings_in_turn();
        run("SELECT metrics_ingest.set_retention('10 days')");
        // now() - keep would be before 4713 BC: every later ingest and
        // run_maintenance would fail computing the horizon (0.3.0 stored it).
        for (setter, keep) in [
            ("set_retention", "1000000 years"),
            ("set_retention", "2000000000 days"),
            ("set_rejected_retention", "1000000 years"),
        ] {
            assert_eq!(
                sqlstate_of(&format!("SELECT metrics_ingest.{setter}('{keep}')")),
                "22023",
                "{setter}('{keep}')"
            );
        }
        assert_eq!(
            text(
                "SELECT concat_ws(',', retention, rejected_retention) FROM metrics_ingest.settings"
            ),
            "10 days",
            "the refused values were not stored"
        );
        // Long but computable: kept, and everything still works.
        assert_eq!(
            text("SELECT metrics_ingest.set_retention('5000 years')::text"),
            "5000 years"
        );
        assert_eq!(
            text("SELECT metrics_ingest.set_rejected_retention('5000 years')::text"),
            "5000 years"
        );
        assert_eq!(
            verdicts(&event("h", "2001-01-01T00:00:00Z", "h1")),
            "inserted:1"
        );
        assert!(count("SELECT count(*) FROM metrics_ingest.run_maintenance()") > 0);
    }

    #[pg_test]
    fn a_partition_with_a_trigger_takes_the_insert_path_for_its_rows() {
        verdicts(&format!(
            "[{}, {}]",
            event("t", "2024-01-01T10:00:00Z", "t1"),
            event("t", "2024-01-02T10:00:00Z", "t2")
        ));
        run(
            "CREATE FUNCTION pg_temp.mark() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN NEW.location := 'through INSERT'; RETURN NEW; END$$",
        );
        run(
            "CREATE TRIGGER mark BEFORE INSERT ON metrics_ingest.metrics_p20240101 \
             FOR EACH ROW EXECUTE FUNCTION pg_temp.mark()",
        );
        assert_eq!(
            verdicts(&format!(
                "[{}, {}, {}]",
                event("t", "2024-01-01T11:00:00Z", "t3"),
                event("t", "2024-01-02T11:00:00Z", "t4"),
                event("t", "2024-01-01T10:00:00Z", "t1")
            )),
            "inserted:1,inserted:1,duplicate:0"
        );
        assert_eq!(
            text("SELECT string_agg(event_id || '=' || coalesce(location, '-'), ',' ORDER BY event_id) \
                  FROM metrics_ingest.metrics WHERE user_id = 't'"),
            "t1=-,t2=-,t3=through INSERT,t4=-"
        );
    }

    #[pg_test]
    fn the_insert_path_reports_what_really_happened() {
        // pgrx runs tests side by side: take the strongest lock this test needs first,
        // so that its DDL after ingesting never waits behind another test (a deadlock).
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        verdicts(&event("s", "2024-01-01T10:00:00Z", "s0"));
        run(
            "CREATE FUNCTION pg_temp.drop_quiet() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN IF NEW.user_id = 'quiet' THEN RETURN NULL; END IF; RETURN NEW; END$$",
        );
        run(
            "CREATE TRIGGER drop_quiet BEFORE INSERT ON metrics_ingest.metrics_p20240101 \
             FOR EACH ROW EXECUTE FUNCTION pg_temp.drop_quiet()",
        );
        // A trigger returning NULL kept the row out: neither inserted nor a duplicate.
        assert_eq!(
            verdicts(
                r#"[{"user_id":"quiet","timestamp":"2024-01-01T10:00:00Z","talked_time":1},
                         {"user_id":"quiet","timestamp":"2024-01-01T10:00:00Z","talked_time":1,"event_id":"q"},
                         {"user_id":"s","timestamp":"2024-01-01T10:00:00Z","talked_time":1,"event_id":"s0"}]"#
            ),
            "skipped:0,skipped:0,duplicate:0"
        );
        // A conflict on another unique index is an error, not a duplicate.
        run("CREATE UNIQUE INDEX one_per_second ON metrics_ingest.metrics (user_id, \"timestamp\", metric_type)");
        let error = sqlstate_of(&format!(
            "SELECT * FROM metrics_ingest.ingest_json({})",
            pgrx::spi::quote_literal(event("s", "2024-01-01T10:00:00Z", "s-other"))
        ));
        assert_eq!(error, "23505");
    }

    #[pg_test]
    fn rules_send_the_table_to_the_insert_path() {
        run("CREATE TABLE pg_temp.audit (user_id text)");
        run(
            "CREATE RULE also_audit AS ON INSERT TO metrics_ingest.metrics \
             DO ALSO INSERT INTO pg_temp.audit VALUES (NEW.user_id)",
        );
        assert_eq!(
            verdicts(&format!(
                "[{}, {}]",
                event("ru", "2024-01-01T10:00:00Z", "r1"),
                event("ru", "2024-01-01T10:00:00Z", "r1")
            )),
            "inserted:1,duplicate:0"
        );
        assert_eq!(count("SELECT count(*) FROM pg_temp.audit"), 1);
        run("DROP RULE also_audit ON metrics_ingest.metrics");
        run("CREATE RULE nothing AS ON INSERT TO metrics_ingest.metrics DO INSTEAD NOTHING");
        assert_eq!(
            verdicts(&event("ru", "2024-01-01T11:00:00Z", "r2")),
            "skipped:0"
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'ru'"),
            1
        );
    }

    #[pg_test]
    fn a_not_null_domain_column_is_enforced_as_insert_would() {
        run("CREATE DOMAIN pg_temp.required AS text NOT NULL");
        run("ALTER TABLE metrics_ingest.metrics ADD COLUMN region pg_temp.required");
        let error = sqlstate_of(&format!(
            "SELECT * FROM metrics_ingest.ingest_json({})",
            pgrx::spi::quote_literal(event("dom", "2024-01-01T10:00:00Z", "x"))
        ));
        assert_eq!(error, "23502");
    }

    #[pg_test]
    fn a_replaced_default_function_is_seen_by_the_next_call() {
        run("CREATE FUNCTION public.metrics_test_tag() RETURNS text LANGUAGE sql IMMUTABLE AS $$SELECT 'first'$$");
        run("ALTER TABLE metrics_ingest.metrics ADD COLUMN tag text DEFAULT public.metrics_test_tag()");
        verdicts(&event("f", "2024-01-01T10:00:00Z", "f1"));
        run("CREATE OR REPLACE FUNCTION public.metrics_test_tag() RETURNS text LANGUAGE sql IMMUTABLE AS $$SELECT 'second'$$");
        verdicts(&event("f", "2024-01-01T11:00:00Z", "f2"));
        assert_eq!(
            text("SELECT string_agg(event_id || '=' || tag, ',' ORDER BY event_id) FROM metrics_ingest.metrics WHERE user_id = 'f'"),
            "f1=first,f2=second"
        );
    }

    #[pg_test]
    fn every_unique_index_on_the_event_key_is_an_arbiter() {
        // pgrx runs tests side by side: take the strongest lock this test needs first,
        // so that its DDL after ingesting never waits behind another test (a deadlock).
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        verdicts(&event("k", "2024-01-01T10:00:00Z", "k1"));
        // As REINDEX CONCURRENTLY's new copy would be: a second ready index on the key.
        run(
            "CREATE UNIQUE INDEX metrics_event_key_copy ON metrics_ingest.metrics \
             (user_id, event_id, metric_type, \"timestamp\") WHERE event_id IS NOT NULL",
        );
        assert_eq!(
            verdicts(&event("k", "2024-01-01T10:00:00Z", "k1")),
            "duplicate:0"
        );
        run("ALTER INDEX metrics_ingest.metrics_p20240101_event_key RENAME TO renamed_event_key");
        assert_eq!(
            verdicts(&event("k", "2024-01-01T10:00:00Z", "k1")),
            "duplicate:0"
        );
        assert_eq!(
            verdicts(&event("k", "2024-01-01T10:00:01Z", "k2")),
            "inserted:1"
        );
    }

    #[pg_test]
    fn a_one_user_one_day_query_reads_one_partition() {
        for day in ["2024-01-01", "2024-01-02", "2024-01-03"] {
            verdicts(&event("q", &format!("{day}T10:00:00Z"), day));
        }
        run("ANALYZE metrics_ingest.metrics");
        let plan = Spi::connect(|client| {
            let lines = client.select(
                "EXPLAIN SELECT * FROM metrics_ingest.metrics WHERE user_id = 'q' \
                 AND \"timestamp\" >= '2024-01-02 00:00:00+00' AND \"timestamp\" < '2024-01-03 00:00:00+00'",
                None,
                &[],
            )?;
            lines
                .map(|row| row.get::<String>(1).map(Option::unwrap_or_default))
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("explain")
        .join("\n");
        assert!(plan.contains("metrics_p20240102"), "{plan}");
        assert!(
            !plan.contains("metrics_p20240101") && !plan.contains("metrics_p20240103"),
            "{plan}"
        );
    }

    fn talk(event_id: &str, seconds: &str, extra: &str) -> String {
        format!(
            r#"{{"user_id":"c","timestamp":"2024-02-01T10:00:00Z","talked_time":{seconds},"event_id":"{event_id}"{extra}}}"#
        )
    }

    #[pg_test]
    fn a_repeat_with_other_values_is_a_conflict_naming_the_field() {
        // pgrx runs tests side by side: take the strongest lock this test needs first,
        // so that its DDL after ingesting never waits behind another test (a deadlock).
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        assert_eq!(verdicts(&talk("c1", "30", "")), "inserted:1");
        assert_eq!(verdicts(&talk("c1", "30", "")), "duplicate:0");
        assert_eq!(verdicts(&talk("c1", "31", "")), "conflict:0:metric_value");
        assert_eq!(
            verdicts(&talk("c1", "30", r#","location":"Zürich""#)),
            "conflict:0:location"
        );
        assert_eq!(
            verdicts(&talk("c1", "30", r#","extra":{"k":1}"#)),
            "conflict:0:attributes"
        );
        let error = text(&format!(
            "SELECT error FROM metrics_ingest.ingest_json({})",
            pgrx::spi::quote_literal(talk("c1", "31", ""))
        ));
        assert_eq!(
            error,
            "metric_value: differs from the stored event with this event_id; nothing was stored for it"
        );
        // Twice in one batch, with different values: the second is the conflict.
        assert_eq!(
            verdicts(&format!(
                "[{}, {}]",
                talk("c2", "5", ""),
                talk("c2", "6", "")
            )),
            "inserted:1,conflict:0:metric_value"
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'c'"),
            2,
            "nothing stored for conflicts"
        );
        // A batch that met duplicates probes before buffering: conflicts are found there too.
        let retry: Vec<String> = (0..5).map(|i| talk(&format!("r{i}"), "1", "")).collect();
        verdicts(&format!("[{}]", retry.join(",")));
        let mut again: Vec<String> = (0..5).map(|i| talk(&format!("r{i}"), "1", "")).collect();
        again.push(talk("r0", "2", ""));
        assert_eq!(
            verdicts(&format!("[{}]", again.join(","))),
            "duplicate:0,duplicate:0,duplicate:0,duplicate:0,duplicate:0,conflict:0:metric_value"
        );
        // On the INSERT path too.
        run("CREATE FUNCTION pg_temp.noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$");
        run("CREATE TRIGGER noop BEFORE INSERT ON metrics_ingest.metrics FOR EACH ROW EXECUTE FUNCTION pg_temp.noop()");
        assert_eq!(verdicts(&talk("c1", "30", "")), "duplicate:0");
        assert_eq!(verdicts(&talk("c1", "32", "")), "conflict:0:metric_value");
    }

    #[pg_test]
    fn insert_metric_raises_unique_violation_for_a_conflicting_repeat() {
        run("CALL metrics_ingest.insert_metric('2024-02-01 10:00:00+00', 'c', NULL, 'talked_time', 30, event_id => 'i1')");
        run("CALL metrics_ingest.insert_metric('2024-02-01 10:00:00+00', 'c', NULL, 'talked_time', 30, event_id => 'i1')");
        assert_eq!(
            sqlstate_of("CALL metrics_ingest.insert_metric('2024-02-01 10:00:00+00', 'c', NULL, 'talked_time', 31, event_id => 'i1')"),
            "23505"
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'c'"),
            1
        );
    }

    #[pg_test]
    fn a_renamed_table_is_an_ordinary_undefined_table_error() {
        // pgrx runs tests side by side: take the strongest lock this test needs first,
        // so that its DDL after ingesting never waits behind another test (a deadlock).
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        verdicts(&event("n", "2024-01-01T10:00:00Z", "n1"));
        run("ALTER TABLE metrics_ingest.metrics RENAME TO metrics_elsewhere");
        assert_eq!(
            sqlstate_of("SELECT * FROM metrics_ingest.ingest_json('[]')"),
            "42P01"
        );
        assert_eq!(
            sqlstate_of("CALL metrics_ingest.insert_metric(now(), 'n', NULL, 'talked_time', 1)"),
            "42P01"
        );
    }

    #[pg_test]
    fn past_the_subtransaction_budget_flushes_stay_exact() {
        // 70 flushes of 1,000 rows with event_ids: more than the 32 subtransactions a
        // transaction may use, and more than PostgreSQL's cache of 64. Repeats of early
        // events (one with other values) come after the budget is spent.
        let payload = "(SELECT json_agg(e)::text FROM ( \
             SELECT json_build_object('user_id', 'b' || (i % 13), 'timestamp', 1722470400 + i, \
                    'talked_time', i, 'event_id', 'sub-' || i) AS e FROM generate_series(1, 70000) i \
             UNION ALL SELECT json_build_object('user_id', 'b1', 'timestamp', 1722470401, 'talked_time', 1, 'event_id', 'sub-1') \
             UNION ALL SELECT json_build_object('user_id', 'b2', 'timestamp', 1722470402, 'talked_time', 99, 'event_id', 'sub-2') \
             UNION ALL SELECT json_build_object('user_id', 'b8', 'timestamp', 1722540400, 'talked_time', 70000, 'event_id', 'sub-70000')) x)";
        let summary = text(&format!(
            "SELECT string_agg(status || ':' || n || ':' || coalesce(field, '-'), ',' ORDER BY status) FROM \
             (SELECT status, field, count(*) AS n FROM metrics_ingest.ingest_json({payload}) GROUP BY status, field) s"
        ));
        assert_eq!(
            summary,
            "conflict:1:metric_value,duplicate:2:-,inserted:70000:-"
        );
        assert_eq!(count("SELECT count(*) FROM metrics_ingest.metrics"), 70_000);
        let again = text(&format!(
            "SELECT string_agg(status || ':' || n, ',' ORDER BY status) FROM \
             (SELECT status, count(*) AS n FROM metrics_ingest.ingest_json({payload}) GROUP BY status) s"
        ));
        assert_eq!(again, "conflict:1,duplicate:70002");
    }

    #[pg_test]
    fn a_citus_distributed_table_is_written_set_wise_through_the_executor() {
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        // Citus absent here: its catalog, as Citus defines it, with the row
        // create_distributed_table('metrics_ingest.metrics', 'user_id') would add.
        run(crate::sql::citus::STAND_IN_PG_DIST_PARTITION);
        run("INSERT INTO pg_catalog.pg_dist_partition (logicalrelid, partmethod, partkey, colocationid, repmodel) \
             VALUES ('metrics_ingest.metrics', 'h', '{VAR :varno 1 :varattno 3}', 1, 's')");
        // Statements that reach metrics through the executor (the fast path runs none).
        run("CREATE TABLE pg_temp.statements (n int)");
        run("INSERT INTO pg_temp.statements VALUES (0)");
        run(
            "CREATE FUNCTION pg_temp.count_statement() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN UPDATE pg_temp.statements SET n = n + 1; RETURN NULL; END$$",
        );
        run(
            "CREATE TRIGGER count_statement AFTER INSERT ON metrics_ingest.metrics \
             FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.count_statement()",
        );
        let batch: Vec<String> = (0..6)
            .map(|i| {
                event(
                    "cz",
                    &format!("2024-05-0{}T10:00:00Z", 1 + i % 2),
                    &format!("z{i}"),
                )
            })
            .chain([
                r#"{"user_id":"cz","timestamp":"2024-05-01T11:00:00Z","talked_time":3}"#
                    .to_string(),
            ])
            .collect();
        assert_eq!(
            verdicts(&format!("[{}]", batch.join(","))),
            "inserted:1,inserted:1,inserted:1,inserted:1,inserted:1,inserted:1,inserted:1"
        );
        assert_eq!(
            count("SELECT n::bigint FROM pg_temp.statements"),
            1,
            "one INSERT for the batch"
        );
        // A re-send: duplicates, a conflict and a new event, settled row by row where needed.
        let again = [
            event("cz", "2024-05-01T10:00:00Z", "z0"),
            r#"{"user_id":"cz","timestamp":"2024-05-02T10:00:00Z","talked_time":9,"event_id":"z1"}"#.to_string(),
            event("cz", "2024-05-03T10:00:00Z", "z9"),
        ];
        assert_eq!(
            verdicts(&format!("[{}]", again.join(","))),
            "duplicate:0,conflict:0:metric_value,inserted:1"
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'cz'"),
            8
        );
    }

    #[pg_test]
    fn a_volatile_default_is_evaluated_row_by_row_as_insert_does() {
        // COPY does not batch rows whose defaults are volatile: each row's default may
        // see the rows before it. The fast path hands such a table to the INSERT path.
        run(
            "CREATE FUNCTION public.metrics_seen() RETURNS bigint LANGUAGE sql VOLATILE \
             AS $$SELECT count(*) FROM metrics_ingest.metrics$$",
        );
        run("ALTER TABLE metrics_ingest.metrics ADD COLUMN seen bigint DEFAULT public.metrics_seen()");
        verdicts(&format!(
            "[{}, {}, {}]",
            event("v", "2024-01-01T10:00:00Z", "v1"),
            event("v", "2024-01-01T10:00:01Z", "v2"),
            event("v", "2024-01-01T10:00:02Z", "v3")
        ));
        assert_eq!(
            text("SELECT string_agg(seen::text, ',' ORDER BY event_id) FROM metrics_ingest.metrics WHERE user_id = 'v'"),
            "0,1,2"
        );
    }

    #[pg_test]
    fn a_column_whose_type_changed_is_coerced_as_insert_would() {
        run("ALTER TABLE metrics_ingest.metrics ALTER COLUMN sentiment_score TYPE numeric(3, 1)");
        verdicts(
            r#"{"user_id":"ty","timestamp":"2024-01-01T10:00:00Z","talked_time":1,"sentiment_score":0.25}"#,
        );
        assert_eq!(
            text("SELECT sentiment_score::text FROM metrics_ingest.metrics WHERE user_id = 'ty'"),
            "0.3",
            "numeric(3,1) rounds 0.25 as an INSERT does"
        );
    }

    #[pg_test]
    fn the_insert_privilege_on_metrics_is_checked_as_copy_checks_it() {
        verdicts(&event("p", "2024-01-01T10:00:00Z", "p1"));
        // ingest_json runs as its owner: give it one that may read what it reads
        // but not INSERT into metrics.
        run("CREATE ROLE mi_test_owner_without_insert NOLOGIN");
        run("GRANT USAGE ON SCHEMA metrics_ingest TO mi_test_owner_without_insert");
        run(
            "GRANT SELECT ON metrics_ingest.metric_types, metrics_ingest.settings \
             TO mi_test_owner_without_insert",
        );
        run("ALTER FUNCTION metrics_ingest.ingest_json(text, text) OWNER TO mi_test_owner_without_insert");
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT * FROM metrics_ingest.ingest_json({})",
                pgrx::spi::quote_literal(event("p", "2024-01-01T11:00:00Z", "p2"))
            )),
            "42501"
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'p'"),
            1
        );
    }

    #[pg_test]
    fn metrics_attached_under_another_table_gets_its_partition_constraint_checked() {
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        run("CREATE TABLE public.outer_metrics (LIKE metrics_ingest.metrics) PARTITION BY LIST (user_id)");
        let attached = sqlstate_of(
            "ALTER TABLE public.outer_metrics ATTACH PARTITION metrics_ingest.metrics FOR VALUES IN ('a')",
        );
        let version = count("SELECT current_setting('server_version_num')::bigint");
        if version >= 170000 {
            // From PostgreSQL 17 on, a table with an identity column cannot become a
            // partition: metrics can never sit under another table there.
            assert_ne!(attached, "ok", "PostgreSQL {version} attached metrics");
            return;
        }
        assert_eq!(attached, "ok");
        assert_eq!(
            verdicts(&event("a", "2024-01-01T10:00:00Z", "a1")),
            "inserted:1"
        );
        // The fast path would store it; an INSERT refuses a row outside metrics' own bound.
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT * FROM metrics_ingest.ingest_json({})",
                pgrx::spi::quote_literal(event("b", "2024-01-01T10:00:00Z", "b1"))
            )),
            "23514"
        );
    }

    /// A relation named like the partition ingest would make (a table a DBA
    /// detached and kept, one renamed with its indexes, a partition of other
    /// bounds) takes nothing from it: 0.3.1 failed the call with XX000 or 42P07.
    #[pg_test]
    fn a_table_named_like_a_new_partition_leaves_the_name_to_it() {
        // DETACH takes ACCESS EXCLUSIVE on metrics: taken first, it waits for the
        // other tests' ingest instead of deadlocking with one.
        settings_in_turn();
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        assert_eq!(
            verdicts(&event("d", "2024-08-12T01:00:00Z", "d1")),
            "inserted:1"
        );
        run("ALTER TABLE metrics_ingest.metrics DETACH PARTITION metrics_ingest.metrics_p20240812");
        assert_eq!(
            verdicts(&event("d", "2024-08-12T05:00:00Z", "d2")),
            "inserted:1"
        );
        run(
            "CALL metrics_ingest.insert_metric('2024-08-12 06:00+00', 'd', NULL, 'talked_time', 7)",
        );
        assert_eq!(
            partitions(),
            "metrics_ingest.metrics_p20240812_2 [2024-08-12 00:00, 2024-08-13 00:00)"
        );
        assert_eq!(count("SELECT count(*) FROM metrics_ingest.metrics"), 2);
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics_p20240812"),
            1,
            "the detached table keeps its row"
        );

        // Detached and renamed: its name is free, its indexes' names are not.
        assert_eq!(
            verdicts(&event("d", "2042-03-03T12:00:00Z", "d3")),
            "inserted:1"
        );
        run("ALTER TABLE metrics_ingest.metrics DETACH PARTITION metrics_ingest.metrics_p20420303");
        run("ALTER TABLE metrics_ingest.metrics_p20420303 RENAME TO archived_0303");
        assert_eq!(
            verdicts(&event("d", "2042-03-03T13:00:00Z", "d4")),
            "inserted:1"
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.partitions() WHERE partition = 'metrics_ingest.metrics_p20420303'::regclass"),
            1
        );

        // A partition whose bounds start a fraction of a second past the hour (attached
        // by hand: set_partition_interval takes whole hours) keeps its name.
        run("CREATE TABLE metrics_ingest.metrics_p20000101_010000 (LIKE metrics_ingest.metrics INCLUDING CONSTRAINTS)");
        run("ALTER TABLE metrics_ingest.metrics ATTACH PARTITION metrics_ingest.metrics_p20000101_010000 \
             FOR VALUES FROM ('2000-01-01 01:00:00.5+00') TO ('2000-01-01 02:00:00+00')");
        assert_eq!(
            verdicts(&event("f", "2000-01-01T01:30:00Z", "f1")),
            "inserted:1"
        );
        run("SELECT metrics_ingest.set_partition_interval('1 hour')");
        assert_eq!(
            verdicts(&event("f", "2000-01-01T01:00:00.2Z", "f2")),
            "inserted:1"
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'f'"),
            2
        );
    }

    /// With partitions narrower than a day, run_maintenance drops part of a day:
    /// that day is archived only once none of it is held, so forget_user still
    /// recomputes it from the rows held and the erased user's values leave it
    /// (0.3.1 archived it at once and forget_user left them).
    #[pg_test]
    fn a_day_is_archived_only_once_none_of_it_is_held() {
        settings_in_turn();
        run("SELECT metrics_ingest.set_partition_interval('1 hour')");
        let day =
            text("SELECT to_char(now() AT TIME ZONE 'UTC' - interval '10 days', 'YYYY-MM-DD')");
        let at = |hour: u32| format!("{day}T{hour:02}:00:00Z");
        let element = |user: &str, hour: u32, value: u32| {
            format!(
                r#"{{"user_id":"{user}","timestamp":"{}","talked_time":{value},"event_id":"{user}-{hour}"}}"#,
                at(hour)
            )
        };
        assert_eq!(
            verdicts(&format!(
                "[{}, {}, {}]",
                element("keep", 1, 1),
                element("gdpr", 20, 100),
                element("keep", 21, 2)
            )),
            "inserted:1,inserted:1,inserted:1"
        );
        // The horizon at 10:00 of that day: only the 01:00 partition goes.
        run(&format!(
            "SELECT metrics_ingest.set_retention(now() - timestamptz '{day} 10:00:00+00')"
        ));
        let dropped = count(
            "SELECT count(*) FROM metrics_ingest.run_maintenance() WHERE action = 'dropped partition'",
        );
        assert_eq!(dropped, 1);
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.daily_parts WHERE archived"),
            0,
            "the day is partly held"
        );
        run("SELECT * FROM metrics_ingest.forget_user('gdpr')");
        assert_eq!(
            text(&format!(
                "SELECT concat_ws(' ', samples, total, min, max) FROM metrics_ingest.daily_totals WHERE day = '{day}'"
            )),
            "1 2 2 2",
            "recomputed from the rows held: the erased user's value is gone"
        );
        // Once all of it is dropped, the day is archived.
        run(&format!(
            "SELECT metrics_ingest.set_retention(now() - ((date '{day}' + 1) + time '01:00') AT TIME ZONE 'UTC')"
        ));
        run("SELECT * FROM metrics_ingest.run_maintenance()");
        assert_eq!(
            text(&format!(
                "SELECT concat_ws(' ', d.samples, d.total, a.archived) FROM metrics_ingest.daily_totals d \
                 JOIN (SELECT day, bool_and(archived) AS archived FROM metrics_ingest.daily_parts GROUP BY day) a USING (day) \
                 WHERE d.day = '{day}'"
            )),
            "1 2 t"
        );
    }

    /// '1 mon -29 days' compares as one day, but on 1 March now() minus it is
    /// 2 March: a horizon in the future would drop current partitions.
    #[pg_test]
    fn a_retention_with_a_negative_part_is_refused() {
        settings_in_turn();
        for (setter, keep) in [
            ("set_retention", "1 mon -29 days"),
            ("set_retention", "1 day -1 hour"),
            ("set_rejected_retention", "2 mons -1 day"),
        ] {
            assert_eq!(
                sqlstate_of(&format!("SELECT metrics_ingest.{setter}('{keep}')")),
                "22023",
                "{setter}('{keep}')"
            );
        }
        assert_eq!(
            text("SELECT metrics_ingest.set_retention('1 mon 2 days 03:00')::text"),
            "1 mon 2 days 03:00:00"
        );
    }

    /// Widths are whole hours with no negative part: '1 hour 0.5 seconds' named its
    /// partitions for a time they did not start at, '1 day -1 hour' was 23 hours (0.3.2).
    #[pg_test]
    fn the_partition_interval_is_whole_hours_with_no_negative_part() {
        settings_in_turn();
        for (width, expected) in [
            ("1 hour 0.5 seconds", "22023"),
            ("1 hour 30 minutes", "22023"),
            ("1 day -1 hour", "22023"),
            ("-1 days 30 hours", "22023"),
            ("1 mon", "22023"),
            ("59 minutes", "22023"),
            ("367 days", "22023"),
            ("1 hour", "ok"),
            ("25 hours", "ok"),
            ("1 day 2 hours", "ok"),
            ("366 days", "ok"),
        ] {
            assert_eq!(
                sqlstate_of(&format!(
                    "SELECT metrics_ingest.set_partition_interval('{width}')"
                )),
                expected,
                "{width}"
            );
        }
    }

    /// A partition of a partition that carries the name a new partition would take
    /// leaves the name to it (0.3.2 returned it as the new partition: 55000).
    #[pg_test]
    fn a_partition_of_a_partition_named_like_a_new_one_leaves_the_name_to_it() {
        settings_in_turn();
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        run(
            "CREATE TABLE metrics_ingest.sub2 (LIKE metrics_ingest.metrics INCLUDING CONSTRAINTS) \
             PARTITION BY RANGE (\"timestamp\")",
        );
        run(
            "CREATE TABLE metrics_ingest.metrics_p20250215 PARTITION OF metrics_ingest.sub2 \
             FOR VALUES FROM ('2025-03-01') TO ('2025-03-10')",
        );
        run(
            "ALTER TABLE metrics_ingest.metrics ATTACH PARTITION metrics_ingest.sub2 \
             FOR VALUES FROM ('2025-03-01') TO ('2025-04-01')",
        );
        assert_eq!(
            verdicts(&event("q", "2025-02-15T00:00:00Z", "q1")),
            "inserted:1"
        );
        assert_eq!(
            text("SELECT tableoid::regclass::text FROM metrics_ingest.metrics WHERE user_id = 'q'"),
            "metrics_ingest.metrics_p20250215_2"
        );
    }

    /// MINVALUE and MAXVALUE bounds are listed as -infinity and infinity, and
    /// partition_for finds such a partition (0.3.2 listed NULL and failed with 42P17).
    #[pg_test]
    fn partitions_with_minvalue_or_maxvalue_bounds_are_listed_and_found() {
        settings_in_turn();
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        run("CREATE TABLE metrics_ingest.old_days (LIKE metrics_ingest.metrics INCLUDING CONSTRAINTS)");
        run(
            "ALTER TABLE metrics_ingest.metrics ATTACH PARTITION metrics_ingest.old_days \
             FOR VALUES FROM (MINVALUE) TO ('2010-01-01 00:00+00')",
        );
        run("CREATE TABLE metrics_ingest.late_days (LIKE metrics_ingest.metrics INCLUDING CONSTRAINTS)");
        run(
            "ALTER TABLE metrics_ingest.metrics ATTACH PARTITION metrics_ingest.late_days \
             FOR VALUES FROM ('2090-01-01 00:00+00') TO (MAXVALUE)",
        );
        assert_eq!(
            count(
                "SELECT count(*) FROM metrics_ingest.partitions() \
                   WHERE (partition = 'metrics_ingest.old_days'::regclass \
                          AND lower = '-infinity' AND upper = '2010-01-01 00:00+00') \
                      OR (partition = 'metrics_ingest.late_days'::regclass \
                          AND lower = '2090-01-01 00:00+00' AND upper = 'infinity')"
            ),
            2
        );
        assert_eq!(
            text("SELECT metrics_ingest.partition_for('2005-01-01 00:00+00')::text"),
            "metrics_ingest.old_days"
        );
        assert_eq!(
            text("SELECT metrics_ingest.partition_for('2095-01-01 00:00+00')::text"),
            "metrics_ingest.late_days"
        );
        assert_eq!(
            verdicts(&event("m", "2009-12-31T23:59:59Z", "m1")),
            "inserted:1"
        );
    }

    /// run_maintenance drops a foreign table past the horizon as a foreign table
    /// (0.3.2 ran DROP TABLE, which refuses it, and failed every run).
    #[pg_test]
    fn maintenance_drops_an_old_foreign_table_partition() {
        settings_in_turn();
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        run("CREATE EXTENSION IF NOT EXISTS postgres_fdw");
        run("CREATE SERVER mi_test_remote FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'nowhere')");
        run("CREATE FOREIGN TABLE metrics_ingest.remote_2021 PARTITION OF metrics_ingest.metrics \
             FOR VALUES FROM ('2021-01-01 00:00+00') TO ('2021-01-02 00:00+00') SERVER mi_test_remote");
        assert_eq!(
            verdicts(&event("r", "2024-08-12T01:00:00Z", "r1")),
            "inserted:1"
        );
        run("SELECT metrics_ingest.set_retention('1 year')");
        assert_eq!(
            text("SELECT string_agg(object, ', ' ORDER BY object) FROM metrics_ingest.run_maintenance() \
                  WHERE action = 'dropped partition'"),
            "metrics_ingest.metrics_p20240812, metrics_ingest.remote_2021"
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_class WHERE relname = 'remote_2021'"),
            0
        );
    }

    /// A NOT NULL or CHECK constraint a DBA adds refuses the elements it refuses,
    /// kept in `rejected` with 23502 or 23514, and the rest of the batch is stored
    /// (0.3.2's fast path raised it and failed the whole call). Nothing of a
    /// refused wide element is stored, and the rollups do not count it.
    #[pg_test]
    fn a_constraint_a_dba_adds_rejects_only_the_elements_it_refuses() {
        settings_in_turn();
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        run("ALTER TABLE metrics_ingest.metrics ALTER COLUMN device_id SET NOT NULL");
        run("ALTER TABLE metrics_ingest.metrics ADD CONSTRAINT dba_check CHECK (metric_value <> 13)");
        let payload = r#"[
            {"user_id":"k","timestamp":"2036-01-01T01:00:00Z","device_id":"d","talked_time":5,"event_id":"k1"},
            {"user_id":"k","timestamp":"2036-01-01T01:01:00Z","device_id":"d","talked_time":13,"event_id":"k2"},
            {"user_id":"k","timestamp":"2036-01-01T01:02:00Z","device_id":"d","speaker_used":true,"talked_time":13,"event_id":"k3"},
            {"user_id":"k","timestamp":"2036-01-01T01:03:00Z","talked_time":7,"event_id":"k4"},
            {"user_id":"k","timestamp":"2036-01-01T01:04:00Z","device_id":"d","talked_time":8,"event_id":"k5"}
        ]"#;
        assert_eq!(
            verdicts(payload),
            "inserted:1,rejected:0:element,rejected:0:element,rejected:0:device_id,inserted:1"
        );
        assert_eq!(
            text("SELECT string_agg(metric_value::text, ',' ORDER BY \"timestamp\") FROM metrics_ingest.metrics"),
            "5,8"
        );
        assert_eq!(
            text("SELECT string_agg(concat_ws(' ', ordinal, sqlstate, error), ' | ' ORDER BY ordinal) \
                  FROM metrics_ingest.rejected"),
            "2 23514 new row for relation \"metrics_p20360101\" violates check constraint \"dba_check\" | \
             3 23514 new row for relation \"metrics_p20360101\" violates check constraint \"dba_check\" | \
             4 23502 is missing, and column \"device_id\" of relation \"metrics_p20360101\" is NOT NULL"
        );
        assert_eq!(
            text("SELECT concat_ws(' ', samples, total) FROM metrics_ingest.daily_totals"),
            "2 13"
        );
        // A resend: the stored ones are duplicates, the refused ones refused again.
        assert_eq!(
            verdicts(payload),
            "duplicate:0,rejected:0:element,rejected:0:element,rejected:0:device_id,duplicate:0"
        );
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT count(*) FROM metrics_ingest.ingest_json({}, on_error => 'stop')",
                pgrx::spi::quote_literal(payload)
            )),
            "23514"
        );
        assert_eq!(
            sqlstate_of(
                "CALL metrics_ingest.insert_metric('2036-01-01 02:00+00', 'k', NULL, 'talked_time', 13, 'd')"
            ),
            "23514"
        );
        assert_eq!(
            sqlstate_of(
                "CALL metrics_ingest.insert_metric('2036-01-01 02:00+00', 'k', NULL, 'talked_time', 12)"
            ),
            "23502"
        );
    }

    /// partition_for makes a partition with the owner's rights in the database's
    /// default tablespace, whatever the caller's default_tablespace (0.3.2 used
    /// it: a writer could place partitions where it may not create anything).
    #[pg_test]
    fn a_callers_default_tablespace_does_not_place_new_partitions() {
        settings_in_turn();
        run("SET LOCAL default_tablespace = 'pg_global'");
        assert_eq!(
            verdicts(&event("t", "2037-05-05T00:00:00Z", "t1")),
            "inserted:1"
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_class WHERE relname LIKE 'metrics_p20370505%' AND reltablespace <> 0"),
            0
        );
    }
}
