//! Users, sessions and daily totals as ingest keeps them, run by `cargo pgrx
//! test` inside a real PostgreSQL. Each test runs in a transaction of its own
//! that is rolled back at the end; rows of tests running beside it are not
//! visible to it, so "exact" compares the views with what this test stored.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::sql::test_sql::{count, run, text, verdicts};

    /// Rows where daily_totals differs from GROUP BY over metrics (totals to a
    /// relative 1e-9: a float sum depends on the order it is added in).
    const DAILY_MISMATCHES: &str = "WITH truth AS ( \
           SELECT (m.\"timestamp\" AT TIME ZONE 'UTC')::date AS day, m.metric_type, count(*) AS samples, \
                  sum(m.metric_value) AS total, min(m.metric_value) AS min, max(m.metric_value) AS max \
           FROM metrics_ingest.metrics m GROUP BY 1, 2) \
         SELECT count(*) FROM truth t FULL JOIN metrics_ingest.daily_totals d USING (day, metric_type) \
         WHERE t.day IS NULL OR d.day IS NULL OR (t.samples, t.min, t.max) IS DISTINCT FROM (d.samples, d.min, d.max) \
            OR abs(t.total - d.total) > 1e-9 * greatest(1, abs(t.total)) \
            OR abs(d.mean - t.total / t.samples) > 1e-9 * greatest(1, abs(d.mean))";

    /// Rows where sessions differs from the same aggregate over metrics.
    const SESSION_MISMATCHES: &str = "WITH last AS ( \
           SELECT user_id, session_id, max(\"timestamp\") AS e FROM metrics_ingest.metrics \
           WHERE session_id IS NOT NULL GROUP BY 1, 2), \
         truth AS ( \
           SELECT m.user_id, m.session_id, min(m.\"timestamp\") AS s, l.e, count(*) AS n, \
                  max(m.device_id COLLATE \"C\") FILTER (WHERE m.\"timestamp\" = l.e) AS device_id, \
                  max(m.app_version COLLATE \"C\") FILTER (WHERE m.\"timestamp\" = l.e) AS app_version, \
                  max((m.attributes ->> 'platform') COLLATE \"C\") FILTER (WHERE m.\"timestamp\" = l.e) AS platform, \
                  max(m.location COLLATE \"C\") FILTER (WHERE m.\"timestamp\" = l.e) AS location \
           FROM metrics_ingest.metrics m JOIN last l USING (user_id, session_id) \
           GROUP BY m.user_id, m.session_id, l.e) \
         SELECT count(*) FROM truth t FULL JOIN metrics_ingest.sessions s USING (user_id, session_id) \
         WHERE (t.s, t.e, t.n, t.device_id, t.app_version, t.platform, t.location) IS DISTINCT FROM \
               (s.start_time, s.end_time, s.metric_count, s.device_id, s.app_version, s.platform, s.location)";

    fn assert_exact(when: &str) {
        assert_eq!(count(DAILY_MISMATCHES), 0, "daily_totals {when}");
        assert_eq!(count(SESSION_MISMATCHES), 0, "sessions {when}");
    }

    #[pg_test]
    fn rollups_count_what_is_stored_and_nothing_else() {
        assert_eq!(
            verdicts(
                r#"[
                {"user_id":"r1","session_id":"s1","timestamp":"2024-03-01T10:00:00Z","talked_time":10,"speaker_used":true,"event_id":"a","device_id":"d1","platform":"ios"},
                {"user_id":"r1","session_id":"s1","timestamp":"2024-03-01T10:00:00Z","talked_time":10,"speaker_used":true,"event_id":"a","device_id":"d1","platform":"ios"},
                {"user_id":"r1","session_id":"s1","timestamp":"2024-03-01T10:05:00Z","metric_type":"talked_time","metric_value":7,"event_id":"b","location":"Oslo"},
                {"user_id":"r1","session_id":"s1","timestamp":"2024-03-01T10:05:00Z","metric_type":"talked_time","metric_value":8,"event_id":"b","location":"Oslo"},
                {"user_id":"r2","session_id":"s1","timestamp":"2024-03-01T23:59:59.999999Z","voice_sentiment":"negative"},
                {"user_id":"r2","session_id":"s1","timestamp":"not a time","talked_time":1}
            ]"#
            ),
            "inserted:2,duplicate:0,inserted:1,conflict:0:metric_value,inserted:1,rejected:0:timestamp"
        );
        assert_exact("after one call");
        // A re-send (wide form now, one event of it new) stores only the new row.
        assert_eq!(
            verdicts(
                r#"[{"user_id":"r1","session_id":"s1","timestamp":"2024-03-01T10:00:00Z","talked_time":10,"speaker_used":true,"microphone_used":false,"event_id":"a","device_id":"d1","platform":"ios"}]"#
            ),
            "inserted:1"
        );
        assert_exact("after a partial re-send");
        assert_eq!(
            text("SELECT string_agg(concat_ws('|', metric_type, samples, total, min, max), ',' ORDER BY metric_type) \
                  FROM metrics_ingest.daily_totals WHERE day = '2024-03-01'"),
            "microphone_used|1|0|0|0,speaker_used|1|1|1|1,talked_time|2|17|7|10,voice_sentiment|1|-1|-1|-1"
        );
        assert_eq!(
            text("SELECT string_agg(concat_ws('|', user_id, session_id, metric_count, device_id, platform, location, duration), ',' ORDER BY user_id) \
                  FROM metrics_ingest.sessions WHERE user_id IN ('r1', 'r2')"),
            "r1|s1|4|Oslo|00:05:00,r2|s1|1|00:00:00"
        );
    }

    #[pg_test]
    fn rows_a_trigger_keeps_out_or_the_call_rolls_back_count_nowhere() {
        // Locked first: DDL after ingesting would upgrade this test's lock beside other tests.
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        verdicts(
            r#"[{"user_id":"k","session_id":"s","timestamp":"2024-02-01T10:00:00Z","talked_time":1}]"#,
        );
        run(
            "CREATE FUNCTION pg_temp.keep_out() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN IF NEW.metric_value > 100 THEN RETURN NULL; END IF; RETURN NEW; END$$",
        );
        run(
            "CREATE TRIGGER keep_out BEFORE INSERT ON metrics_ingest.metrics_p20240201 \
             FOR EACH ROW EXECUTE FUNCTION pg_temp.keep_out()",
        );
        assert_eq!(
            verdicts(
                r#"[{"user_id":"k","session_id":"s","timestamp":"2024-02-01T11:00:00Z","talked_time":500},
                    {"user_id":"k","session_id":"s","timestamp":"2024-02-01T12:00:00Z","talked_time":5,"name":"Kay"}]"#
            ),
            "skipped:0,inserted:1"
        );
        assert_exact("after rows a trigger kept out");
        // A subtransaction rolled back takes its rollups with it.
        run(r#"DO $$BEGIN
                 PERFORM * FROM metrics_ingest.ingest_json('[{"user_id":"k","session_id":"s","timestamp":"2024-02-01T13:00:00Z","talked_time":2,"email":"k@x"}]');
                 RAISE EXCEPTION 'roll back';
               EXCEPTION WHEN raise_exception THEN NULL;
               END$$"#);
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'k'"),
            2
        );
        assert_exact("after a rolled-back call");
        assert_eq!(
            text(
                "SELECT concat_ws('|', name, email) FROM metrics_ingest.users WHERE user_id = 'k'"
            ),
            "Kay"
        );
    }

    #[pg_test]
    fn the_later_profile_wins_and_an_owners_row_is_kept() {
        run("INSERT INTO metrics_ingest.users (user_id, name, email) VALUES ('greg', 'Greg', 'greg@gmail.com')");
        verdicts(
            r#"[{"user_id":"greg","metric_type":"talked_time","value":12.34,"timestamp":"2024-08-08T12:34:56Z"},
                     {"user_id":"greg","talked_time":1,"timestamp":"2024-08-08T12:35:00Z","name":"Late Greg","email":"late@x"}]"#,
        );
        assert_eq!(
            text("SELECT concat_ws('|', name, email) FROM metrics_ingest.users WHERE user_id = 'greg'"),
            "Greg|greg@gmail.com",
            "elements older than the owner's row leave it"
        );
        verdicts(
            r#"[{"user_id":"p","talked_time":1,"timestamp":"2024-05-02T00:00:00Z","name":"New","email":"new@x"}]"#,
        );
        verdicts(
            r#"[{"user_id":"p","talked_time":1,"timestamp":"2024-05-01T00:00:00Z","name":"Old","email":"old@x"}]"#,
        );
        assert_eq!(
            text("SELECT concat_ws('|', name, email, profile_time) FROM metrics_ingest.users WHERE user_id = 'p'"),
            "New|new@x|2024-05-02 00:00:00+00"
        );
        verdicts(
            r#"[{"user_id":"p","talked_time":1,"timestamp":"2024-05-03T00:00:00Z","email":"newer@x"}]"#,
        );
        assert_eq!(
            text(
                "SELECT concat_ws('|', name, email) FROM metrics_ingest.users WHERE user_id = 'p'"
            ),
            "New|newer@x"
        );
        assert_eq!(
            count(
                "SELECT count(*) FROM metrics_ingest.metrics WHERE user_id IN ('p', 'greg') \
                   AND attributes ?| ARRAY['name', 'email']"
            ),
            0,
            "the profile is never copied into metric rows"
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.users WHERE user_id = 'nobody'"),
            0
        );
    }

    #[pg_test]
    fn forget_user_removes_a_user_everywhere_and_corrects_the_totals() {
        verdicts(
            r#"[{"user_id":"f1","session_id":"s","timestamp":"2024-04-01T10:00:00Z","talked_time":900,"name":"F","email":"f@x"},
                {"user_id":"f1","session_id":"s","timestamp":"2024-04-02T10:00:00Z","talked_time":1},
                {"user_id":"f2","session_id":"s","timestamp":"2024-04-01T11:00:00Z","talked_time":3},
                {"user_id":"f1","timestamp":"bad","talked_time":1}]"#,
        );
        run("SELECT count(*) FROM metrics_ingest.compact_rollups()");
        verdicts(
            r#"[{"user_id":"f2","session_id":"t","timestamp":"2024-04-01T12:00:00Z","talked_time":4}]"#,
        );
        assert_eq!(
            text("SELECT string_agg(relation || '=' || removed, ',') FROM metrics_ingest.forget_user('f1')"),
            "metrics=2,users=1,sessions=1,rejected=1,daily_totals=2"
        );
        assert_exact("after forget_user");
        assert_eq!(
            text(
                "SELECT concat_ws('|', samples, total, max) FROM metrics_ingest.daily_totals \
                  WHERE day = '2024-04-01' AND metric_type = 'talked_time'"
            ),
            "2|7|4",
            "max recomputed without the forgotten user's 900"
        );
        for relation in ["metrics", "users", "session_parts", "rejected"] {
            assert_eq!(
                count(&format!(
                    "SELECT count(*) FROM metrics_ingest.{relation} WHERE user_id = 'f1'"
                )),
                0,
                "{relation}"
            );
        }
    }

    #[pg_test]
    fn compaction_folds_delta_rows_and_changes_no_answer() {
        for hour in 10..14 {
            verdicts(&format!(
                r#"[{{"user_id":"c","session_id":"s","timestamp":"2024-06-01T{hour}:00:00Z","talked_time":{hour},"device_id":"d{hour}"}}]"#
            ));
        }
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.session_parts WHERE user_id = 'c'"),
            4
        );
        assert_exact("before compaction");
        run("SELECT count(*) FROM metrics_ingest.run_maintenance()");
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.session_parts WHERE user_id = 'c'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.daily_parts WHERE day = '2024-06-01'"),
            1
        );
        assert_exact("after compaction");
        assert_eq!(
            text("SELECT device_id FROM metrics_ingest.sessions WHERE user_id = 'c'"),
            "d13"
        );
        run("SELECT count(*) FROM metrics_ingest.rebuild_rollups()");
        assert_exact("after rebuild_rollups");
    }

    /// rebuild_rollups keeps the sessions that began before the oldest partition
    /// held, as it keeps archived days: retention dropped rows of theirs (0.3.2
    /// deleted one session's summary and recounted the other from its rows left).
    #[pg_test]
    fn rebuild_keeps_the_sessions_retention_dropped_rows_of() {
        run("LOCK TABLE metrics_ingest.settings IN SHARE ROW EXCLUSIVE MODE");
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        let old = "(now() - interval '3 days')";
        let recent = "(now() - interval '1 minute')";
        let element = |time: &str, session: &str, seconds: u32| {
            format!(
                "json_build_object('timestamp', to_char({time} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                 'user_id', 'arch', 'session_id', '{session}', 'talked_time', {seconds})"
            )
        };
        assert_eq!(
            text(&format!(
                "SELECT string_agg(status, ',') FROM metrics_ingest.ingest_json(json_build_array({}, {}, {}))",
                element(old, "only_old", 1),
                element(old, "spans", 2),
                element(recent, "spans", 3)
            )),
            "inserted,inserted,inserted"
        );
        run("SELECT metrics_ingest.set_retention('2 days')");
        run("SELECT count(*) FROM metrics_ingest.run_maintenance()");
        let sessions = "SELECT string_agg(format('%s:%s', session_id, metric_count), ' ' ORDER BY session_id) \
                        FROM metrics_ingest.sessions WHERE user_id = 'arch'";
        assert_eq!(text(sessions), "only_old:1 spans:2");
        run("SELECT count(*) FROM metrics_ingest.rebuild_rollups()");
        assert_eq!(text(sessions), "only_old:1 spans:2");
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM metrics_ingest.sessions WHERE user_id = 'arch' \
                 AND session_id = 'spans' AND start_time < {recent} - interval '1 day'"
            )),
            1
        );
        // A backfill older than the dropped day makes an older partition again: the
        // sessions of the dropped day are still kept.
        run("SELECT metrics_ingest.set_retention('30 days')");
        assert_eq!(
            text(&format!(
                "SELECT string_agg(status, ',') FROM metrics_ingest.ingest_json(json_build_array({}))",
                element("(now() - interval '5 days')", "backfill", 4)
            )),
            "inserted"
        );
        run("SELECT count(*) FROM metrics_ingest.rebuild_rollups()");
        assert_eq!(text(sessions), "backfill:1 only_old:1 spans:2");
    }

    /// The upkeep and erasure functions run as their owner: a role granted
    /// EXECUTE (and the schema's USAGE), as the README shows, needs no privilege
    /// on the tables (0.3.2 ran them with the caller's privileges: 42501).
    #[pg_test]
    fn a_role_granted_forget_user_or_run_maintenance_can_run_them() {
        run("LOCK TABLE metrics_ingest.settings IN SHARE ROW EXCLUSIVE MODE");
        assert_eq!(
            verdicts(
                r#"{"user_id":"gone","timestamp":"2024-08-12T01:00:00Z","talked_time":1,"name":"G","email":"g@x"}"#
            ),
            "inserted:1"
        );
        run("CREATE ROLE mi_test_officer NOLOGIN");
        run("GRANT USAGE ON SCHEMA metrics_ingest TO mi_test_officer");
        for function in [
            "forget_user(text)",
            "run_maintenance()",
            "rebuild_rollups()",
            "set_retention(interval)",
            "set_rejected_retention(interval)",
            "set_partition_interval(interval)",
        ] {
            run(&format!(
                "GRANT EXECUTE ON FUNCTION metrics_ingest.{function} TO mi_test_officer"
            ));
        }
        run("SET LOCAL ROLE mi_test_officer");
        assert_eq!(
            text(
                "SELECT string_agg(format('%s:%s', relation, removed), ' ' ORDER BY relation) \
                  FROM metrics_ingest.forget_user('gone')"
            ),
            "daily_totals:1 metrics:1 rejected:0 sessions:0 users:1"
        );
        run("SELECT metrics_ingest.set_retention(NULL)");
        run("SELECT metrics_ingest.set_partition_interval('1 day')");
        run("SELECT metrics_ingest.set_rejected_retention('30 days')");
        run("SELECT count(*) FROM metrics_ingest.run_maintenance()");
        run("SELECT count(*) FROM metrics_ingest.rebuild_rollups()");
        run("RESET ROLE");
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.metrics WHERE user_id = 'gone'"),
            0
        );
    }

    /// Rows stored for an archived day after the retention was lengthened are
    /// held rows: compaction keeps them apart from the archive, forget_user
    /// takes an erased user's out of the day and rebuild_rollups counts them
    /// (0.3.2 folded them into the archive, where forget_user left them).
    #[pg_test]
    fn rows_stored_for_an_archived_day_are_erased_and_rebuilt_as_held_rows() {
        run("LOCK TABLE metrics_ingest.settings IN SHARE ROW EXCLUSIVE MODE");
        run("LOCK TABLE metrics_ingest.metrics IN ACCESS EXCLUSIVE MODE");
        let at = "to_char((now() - interval '3 days') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
        let ingest = |user: &str, seconds: u32| {
            text(&format!(
                "SELECT string_agg(status, ',') FROM metrics_ingest.ingest_json(json_build_array( \
                 json_build_object('timestamp', {at}, 'user_id', '{user}', 'talked_time', {seconds}, 'name', 'N')))"
            ))
        };
        let day =
            "SELECT concat_ws(' ', samples, total, min, max) FROM metrics_ingest.daily_totals \
                   WHERE day = ((now() - interval '3 days') AT TIME ZONE 'UTC')::date";
        assert_eq!(ingest("other", 5), "inserted");
        run("SELECT metrics_ingest.set_retention('2 days')");
        run("SELECT count(*) FROM metrics_ingest.run_maintenance()");
        assert_eq!(
            count("SELECT count(*) FROM metrics_ingest.daily_parts WHERE archived"),
            1
        );
        run("SELECT metrics_ingest.set_retention('7 days')");
        assert_eq!(ingest("late", 1000), "inserted");
        assert_eq!(ingest("late", 7), "inserted");
        assert_eq!(text(day), "3 1012 5 1000");
        run("SELECT count(*) FROM metrics_ingest.run_maintenance()");
        assert_eq!(
            text(
                "SELECT string_agg(concat_ws(' ', archived, samples), ', ' ORDER BY archived) \
                  FROM metrics_ingest.daily_parts"
            ),
            "f 2, t 1"
        );
        run("SELECT count(*) FROM metrics_ingest.rebuild_rollups()");
        assert_eq!(text(day), "3 1012 5 1000");
        assert_eq!(
            count(
                "SELECT removed FROM metrics_ingest.forget_user('late') WHERE relation = 'metrics'"
            ),
            2
        );
        assert_eq!(text(day), "1 5 5 5");
    }
}
