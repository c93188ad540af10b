//! Issue 9's relations in the benchmark: what the generated sessions look like,
//! what the ingest calls wrote into the rollups' delta tables, whether
//! `sessions`, `daily_totals` and `users` equal what `metrics` and the sent
//! events say, and the dashboard timing of the scale run (a month of
//! `daily_totals` against the same GROUP BY over `metrics`, one user's sessions).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::time::Instant;

use metrics_ingest_tests::events::{self, Event, Rng};
use postgres::types::Type;
use postgres::Client;

use crate::{fmt_int, median, Res};

/// The tables ingest writes besides metrics (issue 9), emptied with it between
/// runs: the owner-facing users table and the delta tables behind the sessions
/// and daily_totals views.
pub const ROLLUP_TABLES: [&str; 3] = [
    "metrics_ingest.users",
    "metrics_ingest.session_parts",
    "metrics_ingest.daily_parts",
];

/// The rollup tables that exist in the installed version.
pub fn existing_rollup_tables(c: &mut Client) -> Res<Vec<&'static str>> {
    let mut found = Vec::new();
    for t in ROLLUP_TABLES {
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])?
            .get(0);
        if exists {
            found.push(t);
        }
    }
    Ok(found)
}

/// Rows in session_parts and daily_parts now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Parts {
    pub session_parts: i64,
    pub daily_parts: i64,
}

impl Parts {
    pub fn read(c: &mut Client) -> Res<Parts> {
        let row = c.query_one(
            "SELECT (SELECT count(*) FROM metrics_ingest.session_parts), \
                    (SELECT count(*) FROM metrics_ingest.daily_parts)",
            &[],
        )?;
        Ok(Parts {
            session_parts: row.get(0),
            daily_parts: row.get(1),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "session_parts {} rows, daily_parts {} rows",
            fmt_int(self.session_parts as f64),
            fmt_int(self.daily_parts as f64)
        )
    }
}

/// Sessions of a stream of events, as the generator made them: events per
/// session, session length, sessions per user and day, events with a profile.
#[derive(Default)]
pub struct SessionStats {
    /// (user_id, session_id) -> (first us, last us, events)
    sessions: HashMap<(String, String), (i64, i64, u32)>,
    events: u64,
    without_session: u64,
    with_profile: u64,
    with_platform: u64,
}

impl SessionStats {
    pub fn add(&mut self, e: &Event) {
        self.events += 1;
        self.with_profile += u64::from(e.profile.is_some());
        self.with_platform += u64::from(e.platform.is_some());
        let Some(sid) = &e.session_id else {
            self.without_session += 1;
            return;
        };
        let s = self
            .sessions
            .entry((e.user_id.clone(), sid.clone()))
            .or_insert((e.unix_us, e.unix_us, 0));
        s.0 = s.0.min(e.unix_us);
        s.1 = s.1.max(e.unix_us);
        s.2 += 1;
    }

    /// The users with at least one session, sorted.
    pub fn users(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> =
            self.sessions.keys().map(|(u, _)| u).collect();
        set.into_iter().cloned().collect()
    }

    pub fn of(events: &[Event]) -> SessionStats {
        let mut s = SessionStats::default();
        for e in events {
            s.add(e);
        }
        s
    }

    /// Lines describing the sessions (the first is the events-per-session figure).
    pub fn lines(&self) -> Vec<String> {
        let n = self.sessions.len().max(1) as f64;
        let in_sessions = self.events - self.without_session;
        let mut counts: Vec<f64> = self.sessions.values().map(|s| f64::from(s.2)).collect();
        let mut minutes: Vec<f64> = self
            .sessions
            .values()
            .map(|s| (s.1 - s.0) as f64 / 60e6)
            .collect();
        counts.sort_by(f64::total_cmp);
        minutes.sort_by(f64::total_cmp);
        let mut per_user_day: HashMap<(&str, i64), u32> = HashMap::new();
        for ((user, _), s) in &self.sessions {
            *per_user_day
                .entry((user.as_str(), s.0.div_euclid(86_400_000_000)))
                .or_default() += 1;
        }
        let several = per_user_day.values().filter(|&&k| k >= 2).count();
        let users: HashSet<&str> = self.sessions.keys().map(|(u, _)| u.as_str()).collect();
        vec![
            format!(
                "{:.1} events per session on average (median {:.0}; {} of {} events in {} sessions; \
                 sessions still open at the end of the sample count what they have)",
                in_sessions as f64 / n,
                median(&counts),
                fmt_int(in_sessions as f64),
                fmt_int(self.events as f64),
                fmt_int(self.sessions.len() as f64)
            ),
            format!(
                "session length median {:.1} min; {} users had sessions; {} (user, day) pairs of {} have \
                 2 or more sessions",
                median(&minutes),
                fmt_int(users.len() as f64),
                fmt_int(several as f64),
                fmt_int(per_user_day.len() as f64)
            ),
            format!(
                "{:.1}% of events carry platform, {:.1}% the user's name and email (seed 003 style)",
                100.0 * self.with_platform as f64 / self.events.max(1) as f64,
                100.0 * self.with_profile as f64 / self.events.max(1) as f64
            ),
        ]
    }
}

/// The (user_id, name, email) the users table must hold after `events` were
/// stored: every user with a profile on one of them (profiles are the same on
/// every event of a user).
pub fn expected_users<'e>(
    events: impl Iterator<Item = &'e Event>,
) -> BTreeMap<&'e str, (&'e str, &'e str)> {
    let mut users = BTreeMap::new();
    for e in events {
        if let Some((name, email)) = &e.profile {
            users.insert(e.user_id.as_str(), (name.as_str(), email.as_str()));
        }
    }
    users
}

/// Differences between metrics_ingest.users and `expected`, if any.
pub fn check_users(c: &mut Client, expected: &BTreeMap<&str, (&str, &str)>) -> Res<Option<String>> {
    let mut json = String::from("[");
    for (i, (user, (name, email))) in expected.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str("{\"user_id\":");
        events::write_json_str(&mut json, user);
        json.push_str(",\"name\":");
        events::write_json_str(&mut json, name);
        json.push_str(",\"email\":");
        events::write_json_str(&mut json, email);
        json.push('}');
    }
    json.push(']');
    let row = c.query_one(
        "SELECT count(*), count(*) FILTER (WHERE x.user_id IS NULL), count(*) FILTER (WHERE u.user_id IS NULL) \
         FROM json_to_recordset($1::text::json) AS x(user_id text, name text, email text) \
         FULL JOIN metrics_ingest.users u ON u.user_id = x.user_id \
         WHERE x.user_id IS NULL OR u.user_id IS NULL \
            OR x.name IS DISTINCT FROM u.name OR x.email IS DISTINCT FROM u.email",
        &[&json],
    )?;
    let (differ, extra, missing): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    Ok((differ > 0).then(|| {
        format!(
            "metrics_ingest.users differs from the profiles sent: {differ} users differ ({extra} only in \
             users, {missing} missing, {} with another name or email; {} expected)",
            differ - extra - missing,
            expected.len()
        )
    }))
}

/// The contract's exact equivalent of the sessions view over metrics (platform
/// is kept in attributes; the view picks the greatest value by COLLATE "C").
const SESSIONS_FROM_METRICS: &str = "\
    SELECT user_id, session_id, min(\"timestamp\") AS start_time, max(\"timestamp\") AS end_time, \
           count(*)::bigint AS metric_count, \
           max(device_id COLLATE \"C\") FILTER (WHERE \"timestamp\" = last) AS device_id, \
           max(app_version COLLATE \"C\") FILTER (WHERE \"timestamp\" = last) AS app_version, \
           max((attributes ->> 'platform') COLLATE \"C\") FILTER (WHERE \"timestamp\" = last) AS platform, \
           max(location COLLATE \"C\") FILTER (WHERE \"timestamp\" = last) AS location \
    FROM (SELECT *, max(\"timestamp\") OVER (PARTITION BY user_id, session_id) AS last \
          FROM metrics_ingest.metrics WHERE session_id IS NOT NULL) m \
    GROUP BY user_id, session_id";

const SESSIONS_COLUMNS: &str =
    "user_id, session_id, start_time, end_time, metric_count, device_id, app_version, platform, location";

/// Differences between the sessions view and the same aggregate over metrics.
pub fn check_sessions(c: &mut Client) -> Res<Option<String>> {
    let row = c.query_one(
        &format!(
            "WITH v AS (SELECT {SESSIONS_COLUMNS} FROM metrics_ingest.sessions), m AS ({SESSIONS_FROM_METRICS}) \
             SELECT (SELECT count(*) FROM v), (SELECT count(*) FROM m), \
                    (SELECT count(*) FROM (SELECT * FROM v EXCEPT ALL SELECT {SESSIONS_COLUMNS} FROM m) a), \
                    (SELECT count(*) FROM (SELECT {SESSIONS_COLUMNS} FROM m EXCEPT ALL SELECT * FROM v) b)"
        ),
        &[],
    )?;
    let (view, computed, extra, missing): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if extra == 0 && missing == 0 {
        return Ok(None);
    }
    let mut msg = format!(
        "metrics_ingest.sessions ({view} rows) differs from the aggregate over metrics ({computed} rows): \
         {extra} rows only in the view, {missing} only in the aggregate"
    );
    let sample = c.query(
        &format!(
            "WITH v AS (SELECT {SESSIONS_COLUMNS} FROM metrics_ingest.sessions), m AS ({SESSIONS_FROM_METRICS}) \
             (SELECT 'view: ' || row_to_json(a)::text FROM (SELECT * FROM v EXCEPT ALL SELECT {SESSIONS_COLUMNS} FROM m LIMIT 2) a) \
             UNION ALL \
             (SELECT 'metrics: ' || row_to_json(b)::text FROM (SELECT {SESSIONS_COLUMNS} FROM m EXCEPT ALL SELECT * FROM v LIMIT 2) b)"
        ),
        &[],
    )?;
    for r in sample {
        msg.push_str("\n        ");
        msg.push_str(r.get::<_, &str>(0));
    }
    Ok(Some(msg))
}

/// One row of a daily totals result: (day, metric_type) -> (samples, total, mean).
type Totals = BTreeMap<(String, String), (i64, f64, f64)>;

/// The dashboard: a month of daily_totals from day `$1` (a date as text).
const DASHBOARD_TOTALS: &str = "SELECT day::text, metric_type, samples, total, mean \
     FROM metrics_ingest.daily_totals \
     WHERE day >= $1::text::date AND day < $1::text::date + 30 ORDER BY 1, 2";

/// The same month computed over metrics.
const DASHBOARD_GROUP_BY: &str =
    "SELECT ((\"timestamp\" AT TIME ZONE 'UTC')::date)::text AS day, metric_type, \
            count(*)::bigint AS samples, sum(metric_value) AS total, avg(metric_value) AS mean \
     FROM metrics_ingest.metrics \
     WHERE \"timestamp\" >= ($1::text::date)::timestamp AT TIME ZONE 'UTC' \
       AND \"timestamp\" < ($1::text::date + 30)::timestamp AT TIME ZONE 'UTC' \
     GROUP BY 1, 2 ORDER BY 1, 2";

fn totals_of(rows: &[postgres::Row]) -> Totals {
    rows.iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (r.get(2), r.get::<_, f64>(3), r.get::<_, f64>(4)),
            )
        })
        .collect()
}

/// Equal up to 1e-9 relative (absolute for values below 1: a sum that
/// cancels to near zero has no meaningful relative error).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Differences between two daily totals results (samples exact, total and
/// mean to 1e-9 relative).
fn compare_totals(view: &Totals, computed: &Totals) -> Option<String> {
    let mut diffs = Vec::new();
    for (key, v) in view {
        match computed.get(key) {
            None => diffs.push(format!("{key:?} only in daily_totals: {v:?}")),
            Some(m) if m.0 != v.0 || !close(m.1, v.1) || !close(m.2, v.2) => diffs.push(format!(
                "{key:?}: daily_totals (samples, total, mean) {v:?}, metrics {m:?}"
            )),
            Some(_) => {}
        }
    }
    for (key, m) in computed {
        if !view.contains_key(key) {
            diffs.push(format!("{key:?} only in metrics: {m:?}"));
        }
    }
    (!diffs.is_empty()).then(|| {
        let n = diffs.len();
        diffs.truncate(5);
        format!(
            "daily_totals differs from the GROUP BY over metrics in {n} (day, metric_type) rows: {}",
            diffs.join("; ")
        )
    })
}

/// daily_totals against the same aggregate over metrics, every day and every
/// column (min and max exactly). Untimed.
pub fn check_daily_totals(c: &mut Client) -> Res<Option<String>> {
    let view = c.query(
        "SELECT day::text, metric_type, samples, total, mean, min, max FROM metrics_ingest.daily_totals \
         ORDER BY 1, 2",
        &[],
    )?;
    let computed = c.query(
        "SELECT ((\"timestamp\" AT TIME ZONE 'UTC')::date)::text, metric_type, count(*)::bigint, \
                sum(metric_value), avg(metric_value), min(metric_value), max(metric_value) \
         FROM metrics_ingest.metrics GROUP BY 1, 2 ORDER BY 1, 2",
        &[],
    )?;
    if let Some(d) = compare_totals(&totals_of(&view), &totals_of(&computed)) {
        return Ok(Some(d));
    }
    let extremes = |rows: &[postgres::Row]| -> BTreeMap<(String, String), (f64, f64)> {
        rows.iter()
            .map(|r| ((r.get(0), r.get(1)), (r.get(5), r.get(6))))
            .collect()
    };
    let (a, b) = (extremes(&view), extremes(&computed));
    Ok((a != b).then(|| {
        let diff: Vec<String> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .take(5)
            .map(|(k, v)| {
                format!(
                    "{k:?}: daily_totals (min, max) {v:?}, metrics {:?}",
                    b.get(k)
                )
            })
            .collect();
        format!(
            "daily_totals' min/max differ from metrics: {}",
            diff.join("; ")
        )
    }))
}

fn p50_ms(
    c: &mut Client,
    stmt: &postgres::Statement,
    day: &str,
    runs: usize,
) -> Res<(f64, Totals)> {
    let mut ms = Vec::with_capacity(runs);
    let mut last = Vec::new();
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        last = c.query(stmt, &[&day])?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((median(&ms), totals_of(&last)))
}

/// What the dashboard part of the scale run measured.
pub struct Dashboard {
    pub month_from: String,
    pub rows: usize,
    pub before_ms: f64,
    pub maintenance_secs: f64,
    pub totals_ms: f64,
    pub group_by_ms: f64,
    pub sessions_ms: f64,
    pub sessions_p95_ms: f64,
    pub sessions_per_query: f64,
}

impl Dashboard {
    pub fn ratio(&self) -> f64 {
        self.group_by_ms / self.totals_ms
    }
}

/// Sizes of the dashboard part.
pub struct DashboardRuns {
    /// timed runs of the daily_totals query (p50 reported)
    pub totals: usize,
    /// timed runs of the GROUP BY over metrics
    pub group_by: usize,
    /// one user's sessions: timed queries
    pub sessions: usize,
    /// users to pick from for one user's sessions (those who have sessions)
    pub users: Vec<String>,
    pub seed: u64,
    /// Also check the sessions view against metrics (a GROUP BY of every row).
    pub check_sessions: bool,
}

/// The dashboard after a load: daily_totals for a month from `first_day`
/// (days since 1970-01-01) timed before and after run_maintenance() compacts
/// the delta tables, against the same GROUP BY over metrics; the results
/// compared; one user's sessions timed. Problems (differences) go to `problems`.
pub fn dashboard(
    c: &mut Client,
    first_day: i64,
    rows: usize,
    runs: &DashboardRuns,
    problems: &mut Vec<String>,
) -> Res<Dashboard> {
    let day = events::iso_utc_ms(first_day * 86_400_000, false)[..10].to_string();
    let totals = c.prepare_typed(DASHBOARD_TOTALS, &[Type::TEXT])?;
    let group_by = c.prepare_typed(DASHBOARD_GROUP_BY, &[Type::TEXT])?;
    println!(
        "  month                {day} + 30 days: `{}`",
        DASHBOARD_TOTALS.replace("$1::text::date", &format!("'{day}'"))
    );
    println!("  against              the same GROUP BY over metrics_ingest.metrics (count, sum, avg per UTC day and type)");

    let before = Parts::read(c)?;
    println!(
        "  before compaction    {} (written by the load)",
        before.describe()
    );
    c.query(&totals, &[&day])?;
    let (before_ms, _) = p50_ms(c, &totals, &day, 1)?;
    println!(
        "  daily_totals month before compaction: {before_ms:.2} ms (one run after one warm-up)"
    );

    let (actions, maintenance_secs) = crate::scale::run_maintenance_timed(c)?;
    if actions.is_empty() {
        println!("  | (run_maintenance returned no rows)");
    }
    if !actions.iter().any(|(a, _, _)| a.starts_with("compacted")) {
        problems.push("run_maintenance() after the load reported no 'compacted ...' action".into());
    }
    let after = Parts::read(c)?;
    println!(
        "  run_maintenance() in {maintenance_secs:.2} s; after compaction {}",
        after.describe()
    );
    std::io::stdout().flush().ok();

    // warm-up of both, then the timed runs
    c.query(&totals, &[&day])?;
    c.query(&group_by, &[&day])?;
    let (totals_ms, view) = p50_ms(c, &totals, &day, runs.totals)?;
    let (group_by_ms, computed) = p50_ms(c, &group_by, &day, runs.group_by)?;
    println!(
        "  daily_totals month after compaction: p50 {totals_ms:.2} ms ({} runs, {} rows); GROUP BY over metrics: \
         p50 {group_by_ms:.1} ms ({} runs)",
        runs.totals,
        view.len(),
        runs.group_by
    );
    match compare_totals(&view, &computed) {
        Some(d) => problems.push(d),
        None => println!(
            "  the two results are equal: {} (day, metric_type) rows, samples exactly, total and mean to \
             1e-9 relative",
            view.len()
        ),
    }
    if view.is_empty() {
        problems.push(format!(
            "daily_totals holds no rows for the month from {day}"
        ));
    }
    if let Some(d) = check_daily_totals(c)? {
        problems.push(d);
    } else {
        println!("  daily_totals equals the aggregate over metrics on every day and column (min, max exactly)");
    }
    if runs.check_sessions {
        match check_sessions(c)? {
            Some(d) => problems.push(d),
            None => println!("  metrics_ingest.sessions equals the contract's aggregate over metrics (every session)"),
        }
    }

    // one user's sessions
    let stmt = c.prepare_typed(
        "SELECT * FROM metrics_ingest.sessions WHERE user_id = $1",
        &[Type::TEXT],
    )?;
    let mut rng = Rng::new(runs.seed ^ 0x7365_7373_696f_6e73);
    if runs.users.is_empty() {
        return Err("no user has a session".into());
    }
    let mut pick = || rng.pick(&runs.users).clone();
    for _ in 0..10 {
        c.query(&stmt, &[&pick()])?;
    }
    let mut ms = Vec::with_capacity(runs.sessions);
    let mut got = 0usize;
    for _ in 0..runs.sessions.max(1) {
        let user = pick();
        let t = Instant::now();
        got += c.query(&stmt, &[&user])?.len();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let p95 = ms[((ms.len() as f64 * 0.95).ceil() as usize).clamp(1, ms.len()) - 1];
    let d = Dashboard {
        month_from: day,
        rows,
        before_ms,
        maintenance_secs,
        totals_ms,
        group_by_ms,
        sessions_ms: median(&ms),
        sessions_p95_ms: p95,
        sessions_per_query: got as f64 / ms.len() as f64,
    };
    println!(
        "  one user's sessions (`SELECT * FROM metrics_ingest.sessions WHERE user_id = $1`), {} random users \
         of the {} who have sessions: \
         p50 {:.2} ms, p95 {:.2} ms; {:.1} sessions per user",
        ms.len(),
        fmt_int(runs.users.len() as f64),
        d.sessions_ms,
        d.sessions_p95_ms,
        d.sessions_per_query
    );
    Ok(d)
}

/// The summary lines of the dashboard part.
pub fn summary(d: &Dashboard, verdict: fn(bool) -> &'static str) {
    let at = if d.rows >= 20_000_000 {
        String::new()
    } else {
        format!(
            " (targets are for 20M rows; this run has {})",
            fmt_int(d.rows as f64)
        )
    };
    println!(
        "  dashboard, a month of daily totals from {}: GROUP BY over metrics {:.1} ms / daily_totals {:.2} ms = {:.1}x   \
         target >= 20x {}{at}",
        d.month_from,
        d.group_by_ms,
        d.totals_ms,
        d.ratio(),
        verdict(d.ratio() >= 20.0)
    );
    println!(
        "  dashboard absolute:       daily_totals p50 {:.2} ms after compaction ({:.2} ms before; run_maintenance \
         {:.2} s)   target <= 100 ms {}",
        d.totals_ms,
        d.before_ms,
        d.maintenance_secs,
        verdict(d.totals_ms <= 100.0)
    );
    println!(
        "  one user's sessions:      p50 {:.2} ms, p95 {:.2} ms   target p50 <= 5 ms {}",
        d.sessions_ms,
        d.sessions_p95_ms,
        verdict(d.sessions_ms <= 5.0)
    );
}
