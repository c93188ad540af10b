//! `bench scale`: what partitioning buys at scale.
//!
//! 1. Ingest: the same generated events (50,000 users, event time advancing,
//!    an event_id on each) go through `ingest_json` in batches into
//!    (a) `metrics_ingest.metrics` as the extension makes it, partitioned by day,
//!    partitions made on demand, and (b) the same table unpartitioned (a plain
//!    table with the same columns, keys and indexes put in its place: 0.1.1's
//!    situation; the fast path writes it as its single leaf). Rows/s are printed
//!    for every step of rows (a million in the full run); the target is (a)'s
//!    last step >= 0.9 x its first, with (b)'s ratio beside it. Only the
//!    ingest_json calls are timed (generating and rendering JSON is not).
//! 2. Query: one user's metrics for one day, random users and days, p50/p95
//!    latency, with the plan showing that one partition is read.
//!    Dashboard (issue 9, rollups.rs): `run_maintenance()` compacts the rows the
//!    load wrote into session_parts / daily_parts (what it did is printed, and a
//!    month of daily_totals is timed once before it); then a month of
//!    `daily_totals` (from the second day: the first is left for retention)
//!    p50 against the same GROUP BY over metrics (targets: a
//!    ratio of at least 20, at most 100 ms at 20M rows), the two results must
//!    be equal, and one user's `sessions` p50 (target: at most 5 ms at 20M
//!    rows). The small run also checks the sessions view against metrics.
//! 3. Retention: the oldest day dropped by `run_maintenance()` in (a) against
//!    `DELETE` of the same rows plus the `VACUUM` it needs in (b) (after an
//!    untimed VACUUM, so that the timed one does only the DELETE's work; in (a)
//!    after an untimed VACUUM (ANALYZE) of the rollup tables the dashboard's
//!    compaction rewrote, as autovacuum would). Before either, the day was last
//!    read in full by one pass over the whole table.
//!
//! The memory effect needs a server with less memory than the indexes of (b):
//! scripts/bench.sh starts one in a memory cgroup; this program prints the
//! limit it finds on the server's processes (or that there is none).
//!
//! Correctness, not speed, decides the exit status: every ingest_json call must
//! insert every element, nothing may be rejected, each table must hold the
//! generated number of rows per day (and in the small run the same rows, by a
//! checksum), the query must read one partition and run_maintenance must drop
//! exactly the oldest partition. Missed speed targets print FAIL only.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_ingest_tests::events::{self, Generator, GeneratorConfig, Rng};
use postgres::types::Type;
use postgres::{Client, Config, NoTls};

use crate::rollups::{self, DashboardRuns, Parts, SessionStats};
use crate::{fmt_int, loadavg, median, parse_count, print_machine, show, Res, ServerArgs};

const DB_PARTITIONED: &str = "metrics_bench_partitioned";
const DB_PLAIN: &str = "metrics_bench_unpartitioned";
const DAY_US: i64 = 86_400_000_000;
/// Percent of events that carry the user's name and email.
const PROFILE_PERCENT: u64 = 20;

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// the full run: 20,000,000 rows in batches of 100,000, 2,400,000 rows per day of
    /// event time (100,000 per hour), steps of 1,000,000 rows, 200 queries; tens of
    /// minutes. Without it: a small run of 200,000 rows (seconds), as the test command runs
    #[arg(long)]
    full: bool,
    /// rows loaded into each table [default: 20000000 with --full, else 200000]
    #[arg(long, value_parser = parse_count)]
    rows: Option<usize>,
    /// elements per ingest_json call [default: 100000 with --full, else 10000]
    #[arg(long, value_parser = parse_count)]
    batch: Option<usize>,
    /// rows per day of event time (on average) [default: 2400000 with --full, else 50000]
    #[arg(long, value_parser = parse_count)]
    rows_per_day: Option<usize>,
    /// rows per reported step [default: 1000000 with --full, else 20000]
    #[arg(long, value_parser = parse_count)]
    step: Option<usize>,
    /// timed queries [default: 200 with --full, else 50]
    #[arg(long, value_parser = parse_count)]
    queries: Option<usize>,
    /// distinct users
    #[arg(long, default_value = "50000", value_parser = parse_count)]
    users: usize,
    /// generator seed
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    server: ServerArgs,
}

/// The resolved settings of one run.
struct Scale {
    full: bool,
    rows: usize,
    batch: usize,
    rows_per_day: usize,
    step: usize,
    queries: usize,
    users: usize,
    seed: u64,
    dsn: String,
    keep_db: bool,
}

impl Scale {
    fn new(a: ScaleArgs) -> Res<Scale> {
        let full = a.full;
        let pick = |v: Option<usize>, full_value: usize, small_value: usize| {
            v.unwrap_or(if full { full_value } else { small_value })
        };
        let s = Scale {
            full,
            rows: pick(a.rows, 20_000_000, 200_000),
            batch: pick(a.batch, 100_000, 10_000),
            rows_per_day: pick(a.rows_per_day, 2_400_000, 50_000),
            step: pick(a.step, 1_000_000, 20_000),
            queries: pick(a.queries, 200, 50),
            users: a.users,
            seed: a.seed,
            dsn: a.server.dsn,
            keep_db: a.server.keep_db,
        };
        if s.rows == 0 || s.batch == 0 || s.step == 0 || s.users == 0 || s.rows_per_day < 1 {
            return Err(
                "--rows, --batch, --step, --users and --rows-per-day must be positive".into(),
            );
        }
        if s.rows_per_day > 86_400_000 {
            return Err("--rows-per-day is at most 86,400,000 (one event per millisecond)".into());
        }
        Ok(s)
    }

    /// Sessions start often enough that a day of event time holds rows_per_day
    /// events; a fifth of the events carry the user's name and email.
    fn generator(&self) -> Generator {
        Generator::with_config(
            self.seed,
            GeneratorConfig {
                users: self.users,
                events_per_day: self.rows_per_day as u64,
                profile_percent: PROFILE_PERCENT,
            },
        )
    }
}

/// What one load did.
struct Load {
    /// (rows at the end of the step, rows in the step, seconds in ingest_json)
    steps: Vec<(usize, usize, f64)>,
    ingest_secs: f64,
    wall_secs: f64,
    /// Generated rows per UTC day (days since 1970-01-01).
    per_day: BTreeMap<i64, i64>,
    /// Seconds of ingest_json per UTC day: each call's time shared among the days
    /// of its rows in proportion to their number.
    day_secs: BTreeMap<i64, f64>,
    /// The generated sessions.
    sessions: SessionStats,
}

impl Load {
    fn rate(&self, i: usize) -> f64 {
        let (_, rows, secs) = self.steps[i];
        rows as f64 / secs
    }
    fn first_last(&self) -> (f64, f64) {
        (self.rate(0), self.rate(self.steps.len() - 1))
    }
    /// rows/s per day of event time, for every day but the last (a partial one).
    fn day_rates(&self) -> Vec<(i64, f64)> {
        let full = self.per_day.len().saturating_sub(1);
        self.per_day
            .iter()
            .take(full)
            .map(|(day, rows)| (*day, *rows as f64 / self.day_secs[day]))
            .collect()
    }
}

/// A database of its own with the extension created.
fn fresh_database(dsn: &str, name: &str) -> Res<(Config, Client)> {
    let admin_cfg: Config = dsn.parse()?;
    let mut admin = admin_cfg
        .clone()
        .application_name("metrics_ingest_bench")
        .connect(NoTls)
        .map_err(|e| format!("cannot connect to '{dsn}': {e}"))?;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let mut cfg = admin_cfg;
    cfg.dbname(name).application_name("metrics_ingest_bench");
    let mut c = cfg.connect(NoTls)?;
    c.batch_execute("SET client_min_messages = warning; CREATE EXTENSION metrics_ingest")?;
    Ok((cfg, c))
}

fn drop_database(dsn: &str, name: &str) -> Res<()> {
    let mut admin = dsn.parse::<Config>()?.connect(NoTls)?;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    Ok(())
}

/// Puts a plain table with metrics' columns, defaults, identity and
/// constraints, and the keys and indexes every partition gets (partition_for in
/// sql/partitions.sql), in the place of the partitioned metrics_ingest.metrics,
/// outside the extension: 0.1.1's table.
fn unpartition(c: &mut Client) -> Res<()> {
    let mut sql = String::from(
        "SET client_min_messages = warning;
         CREATE TABLE metrics_ingest.metrics_plain (LIKE metrics_ingest.metrics
             INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS INCLUDING STORAGE
             INCLUDING COMPRESSION INCLUDING COMMENTS);
         ALTER EXTENSION metrics_ingest DROP TABLE metrics_ingest.metrics;
         ALTER EXTENSION metrics_ingest DROP SEQUENCE metrics_ingest.metrics_id_seq;
         DROP TABLE metrics_ingest.metrics;
         ALTER TABLE metrics_ingest.metrics_plain RENAME TO metrics;
         ALTER SEQUENCE metrics_ingest.metrics_plain_id_seq RENAME TO metrics_id_seq;\n",
    );
    sql.push_str(
        "ALTER TABLE metrics_ingest.metrics ADD CONSTRAINT metrics_pkey PRIMARY KEY (user_id, \"timestamp\", id);
         CREATE UNIQUE INDEX metrics_event_key ON metrics_ingest.metrics
             (user_id, event_id, metric_type, \"timestamp\") WHERE event_id IS NOT NULL;
         CREATE INDEX metrics_session_idx ON metrics_ingest.metrics (session_id, \"timestamp\")
             WHERE session_id IS NOT NULL;
         CREATE INDEX metrics_type_time_idx ON metrics_ingest.metrics (metric_type, \"timestamp\");
         CREATE INDEX metrics_time_brin ON metrics_ingest.metrics USING brin (\"timestamp\");\n",
    );
    sql.push_str("ALTER TABLE metrics_ingest.metrics SET (autovacuum_enabled = off);");
    let mut tx = c.transaction()?;
    tx.batch_execute(&sql)?;
    tx.commit()?;
    Ok(())
}

/// Heap and index bytes of metrics_ingest.metrics and its partitions, and how many
/// partitions it has.
fn sizes(c: &mut Client) -> Res<(i64, i64, i64)> {
    let row = c.query_one(
        "SELECT coalesce(sum(pg_table_size(r)), 0)::bigint, coalesce(sum(pg_indexes_size(r)), 0)::bigint, \
                (SELECT count(*) FROM pg_inherits WHERE inhparent = 'metrics_ingest.metrics'::regclass) \
         FROM (SELECT 'metrics_ingest.metrics'::regclass AS r \
               UNION ALL SELECT inhrelid::regclass FROM pg_inherits \
               WHERE inhparent = 'metrics_ingest.metrics'::regclass) t",
        &[],
    )?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

fn gb(bytes: i64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

/// Loads the generated events through ingest_json, printing each step's rate.
/// Errors if a call does not insert every element.
fn load(c: &mut Client, s: &Scale, label: &str) -> Res<Load> {
    let stmt = c.prepare_typed(
        "SELECT count(*), count(*) FILTER (WHERE status = 'inserted') \
         FROM metrics_ingest.ingest_json($1::text)",
        &[Type::TEXT],
    )?;
    let mut generator = s.generator();
    let mut result = Load {
        steps: Vec::new(),
        ingest_secs: 0.0,
        wall_secs: 0.0,
        per_day: BTreeMap::new(),
        day_secs: BTreeMap::new(),
        sessions: SessionStats::default(),
    };
    let started = Instant::now();
    let (mut done, mut step_rows, mut step_secs) = (0usize, 0usize, 0.0f64);
    while done < s.rows {
        // A batch never straddles a step boundary, so every step is exact.
        let next_boundary = (done / s.step + 1) * s.step;
        let n = s.batch.min(s.rows - done).min(next_boundary - done);
        let batch: Vec<events::Event> = generator.by_ref().take(n).collect();
        let mut batch_days: BTreeMap<i64, usize> = BTreeMap::new();
        for e in &batch {
            *batch_days.entry(e.unix_us.div_euclid(DAY_US)).or_default() += 1;
            result.sessions.add(e);
        }
        let json = events::json_array(&batch);
        drop(batch);
        let t = Instant::now();
        let row = c.query_one(&stmt, &[&json])?;
        let secs = t.elapsed().as_secs_f64();
        let (results, inserted): (i64, i64) = (row.get(0), row.get(1));
        if results as usize != n || inserted as usize != n {
            return Err(format!(
                "{label}: ingest_json of {n} elements returned {results} results, {inserted} inserted \
                 (rows {done}..{}; see metrics_ingest.rejected)",
                done + n
            )
            .into());
        }
        for (day, rows) in batch_days {
            *result.per_day.entry(day).or_default() += rows as i64;
            *result.day_secs.entry(day).or_default() += secs * rows as f64 / n as f64;
        }
        done += n;
        step_rows += n;
        step_secs += secs;
        result.ingest_secs += secs;
        if done % s.step == 0 || done == s.rows {
            result.steps.push((done, step_rows, step_secs));
            let (_, _, partitions) = sizes(c)?;
            println!(
                "  {label} rows {:>11} to {:>11}: {:>8} rows/s   ({} s so far, {} partitions)",
                fmt_int((done - step_rows) as f64),
                fmt_int(done as f64),
                fmt_int(step_rows as f64 / step_secs),
                fmt_int(started.elapsed().as_secs_f64()),
                partitions
            );
            std::io::stdout().flush().ok();
            (step_rows, step_secs) = (0, 0.0);
        }
    }
    result.wall_secs = started.elapsed().as_secs_f64();
    Ok(result)
}

/// rows/s per day of event time (every day but the last, partial one).
fn print_day_rates(label: &str, load: &Load) {
    let rates: Vec<String> = load
        .day_rates()
        .iter()
        .map(|(day, rate)| {
            let date = events::iso_utc_ms(day * 86_400_000, false);
            format!("{} {}", &date[5..10], fmt_int(*rate))
        })
        .collect();
    if !rates.is_empty() {
        println!(
            "  {label} rows/s per day of event time: {}",
            rates.join(", ")
        );
    }
}

/// Compares the rows per day the table holds with the generated ones, and that
/// nothing was rejected. Returns the problems found. With `checksum`, also a
/// checksum of every row's compared columns (for comparing two tables).
fn check_rows(
    c: &mut Client,
    label: &str,
    load: &Load,
    checksum: bool,
) -> Res<(Vec<String>, Option<String>)> {
    let mut problems = Vec::new();
    let held: BTreeMap<i64, i64> = c
        .query(
            "SELECT floor(extract(epoch FROM \"timestamp\") / 86400)::bigint, count(*) \
             FROM metrics_ingest.metrics GROUP BY 1 ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if held != load.per_day {
        problems.push(format!(
            "{label}: rows per day differ from the generated ones: held {held:?}, generated {:?}",
            load.per_day
        ));
    }
    let rejected: i64 = c
        .query_one("SELECT count(*) FROM metrics_ingest.rejected", &[])?
        .get(0);
    if rejected != 0 {
        problems.push(format!("{label}: {rejected} elements rejected"));
    }
    let sum = if checksum {
        let row = c.query_one(
            &format!(
                "SELECT count(*), sum(hashtextextended(row({})::text, 0)::numeric)::text \
                 FROM metrics_ingest.metrics",
                events::COMPARED_COLUMNS
            ),
            &[],
        )?;
        let (n, sum): (i64, Option<String>) = (row.get(0), row.get(1));
        Some(format!("{n} rows, checksum {}", sum.unwrap_or_default()))
    } else {
        None
    };
    Ok((problems, sum))
}

fn day_start(day: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros((day * DAY_US) as u64)
}

/// Query latencies in milliseconds and rows returned per query.
struct Queries {
    p50: f64,
    p95: f64,
    max: f64,
    rows_per_query: f64,
}

const QUERY: &str = "SELECT * FROM metrics_ingest.metrics \
     WHERE user_id = $1 AND \"timestamp\" >= $2 AND \"timestamp\" < $2 + interval '1 day'";

/// One user's metrics for one day, for random users and whole days of the load.
fn queries(c: &mut Client, s: &Scale, load: &Load) -> Res<Queries> {
    let busiest = load.per_day.values().copied().max().unwrap_or(0);
    let days: Vec<i64> = load
        .per_day
        .iter()
        .filter(|(_, &n)| n * 2 >= busiest)
        .map(|(&d, _)| d)
        .collect();
    let stmt = c.prepare_typed(QUERY, &[Type::TEXT, Type::TIMESTAMPTZ])?;
    let mut rng = Rng::new(s.seed ^ 0x7175_6572_7973);
    let mut pick = || {
        (
            format!("user-{:06}", rng.below(s.users as u64) + 1),
            day_start(*rng.pick(&days)),
        )
    };
    for _ in 0..10 {
        let (user, day) = pick();
        c.query(&stmt, &[&user, &day])?;
    }
    let mut ms = Vec::with_capacity(s.queries);
    let mut rows = 0usize;
    for _ in 0..s.queries {
        let (user, day) = pick();
        let t = Instant::now();
        rows += c.query(&stmt, &[&user, &day])?.len();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let p95 = ms[((ms.len() as f64 * 0.95).ceil() as usize).clamp(1, ms.len()) - 1];
    Ok(Queries {
        p50: median(&ms),
        p95,
        max: *ms.last().unwrap(),
        rows_per_query: rows as f64 / s.queries as f64,
    })
}

/// The plan of the query for one user and day (literal values, so the planner
/// prunes), and the partitions it names.
fn explain(c: &mut Client, load: &Load) -> Res<(Vec<String>, BTreeSet<String>)> {
    let day = *load
        .per_day
        .iter()
        .max_by_key(|(_, &n)| n)
        .map(|(d, _)| d)
        .unwrap_or(&0);
    let from = events::iso_utc_ms(day * 86_400_000, false);
    let lines: Vec<String> = c
        .query(
            &format!(
                "EXPLAIN (COSTS OFF) SELECT * FROM metrics_ingest.metrics \
                 WHERE user_id = 'user-000001' AND \"timestamp\" >= '{from}' \
                 AND \"timestamp\" < '{from}'::timestamptz + interval '1 day'"
            ),
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut named = BTreeSet::new();
    for line in &lines {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("metrics_p") {
            let tail = &rest[i + "metrics_p".len()..];
            let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
            if digits.len() == 8 {
                named.insert(format!("metrics_p{digits}"));
            }
            rest = tail;
        }
    }
    Ok((lines, named))
}

/// The memory limit of the server's cgroup, read through one backend's pid.
fn server_memory_limit(c: &mut Client) -> Res<String> {
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Ok("unknown (the server's /proc entry is not readable here)".into());
    };
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else if controllers.is_empty() && path != "/" {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        return Ok(match text.trim().parse::<u64>() {
            Ok(bytes) if bytes < 1 << 60 => format!(
                "{:.2} GiB ({bytes} bytes, {file})",
                bytes as f64 / (1u64 << 30) as f64
            ),
            _ => format!("none (the server's cgroup {path} has no memory limit)"),
        });
    }
    Ok("none (the server is in no memory-limited cgroup)".into())
}

/// Peak memory use of the server's v1 memory cgroup, if it has one.
fn server_memory_peak(c: &mut Client) -> Option<String> {
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).ok()?.get(0);
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroups.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
        ctl.split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    })?;
    let dir = format!("/sys/fs/cgroup/memory{path}");
    let limit: u64 = std::fs::read_to_string(format!("{dir}/memory.limit_in_bytes"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if limit >= 1 << 60 {
        return None;
    }
    let peak: u64 = std::fs::read_to_string(format!("{dir}/memory.max_usage_in_bytes"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(format!(
        "{:.2} GiB of {:.2} GiB (memory.max_usage_in_bytes, page cache included)",
        peak as f64 / (1u64 << 30) as f64,
        limit as f64 / (1u64 << 30) as f64
    ))
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

pub fn run(args: ScaleArgs) -> Res<i32> {
    let s = Scale::new(args)?;
    let started = Instant::now();
    println!(
        "metrics_ingest bench scale ({})",
        if s.full {
            "--full"
        } else {
            "small run: rates mean nothing at this size; add --full for the real run"
        }
    );
    let (_, mut a) = fresh_database(&s.dsn, DB_PARTITIONED)?;
    print_machine(&mut a)?;
    let memory_limit = server_memory_limit(&mut a)?;
    println!("  memory limit         {memory_limit}");
    println!(
        "  shared_buffers       {}; autovacuum {}",
        show(&mut a, "shared_buffers"),
        show(&mut a, "autovacuum")
    );
    println!(
        "  checkpoints          max_wal_size {}, checkpoint_timeout {}",
        show(&mut a, "max_wal_size"),
        show(&mut a, "checkpoint_timeout")
    );
    let partkey: Option<String> = a
        .query_one(
            "SELECT pg_get_partkeydef('metrics_ingest.metrics'::regclass)",
            &[],
        )?
        .get(0);
    let Some(partkey) = partkey else {
        return Err(
            "metrics_ingest.metrics is not partitioned in the installed version: \
                    install 0.2.0 first"
                .into(),
        );
    };
    let width: String = a
        .query_one(
            "SELECT coalesce((SELECT partition_interval FROM metrics_ingest.settings), '1 day')::text",
            &[],
        )?
        .get(0);
    let days = s.rows as f64 / s.rows_per_day as f64;
    println!();
    println!("workload");
    println!(
        "  rows                 {} per table through ingest_json, batches of {}, reported every {}",
        fmt_int(s.rows as f64),
        fmt_int(s.batch as f64),
        fmt_int(s.step as f64)
    );
    println!(
        "  events               {} users, sessions of {} to {} events over {} to {} minutes (one device, \
         platform, app version and location each; a tenth of the users start half the sessions), \
         an event_id on each, name and email on {PROFILE_PERCENT}% of events; event time from \
         2024-08-01 00:00 UTC, {} rows per day on average ({:.1} days); seed {}",
        fmt_int(s.users as f64),
        events::SESSION_EVENTS.0,
        events::SESSION_EVENTS.1,
        events::SESSION_MS.0 / 60_000,
        events::SESSION_MS.1 / 60_000,
        fmt_int(s.rows_per_day as f64),
        days,
        s.seed
    );
    println!(
        "  (a)                  metrics_ingest.metrics as made by the extension: PARTITION BY {partkey}, \
         partition_interval {width}, partitions made by ingest_json on demand ({DB_PARTITIONED})"
    );
    println!(
        "  (b)                  the same table unpartitioned: a plain table with the same columns, keys and \
         indexes in its place, as in 0.1.1 ({DB_PLAIN})"
    );
    println!(
        "  timed                only the ingest_json calls (not generating or rendering the JSON)"
    );

    let mut problems: Vec<String> = Vec::new();

    // ---- (a) partitioned ------------------------------------------------
    a.batch_execute("SET client_min_messages = warning")?;
    println!();
    println!("ingest (a) partitioned, rows/s per step");
    let load_a = load(&mut a, &s, "(a)")?;
    let (heap_a, idx_a, parts_a) = sizes(&mut a)?;
    println!(
        "  (a) {} rows in {:.0} s of ingest_json ({:.0} s wall): {} rows/s overall; heap {}, indexes {}, {} partitions",
        fmt_int(s.rows as f64),
        load_a.ingest_secs,
        load_a.wall_secs,
        fmt_int(s.rows as f64 / load_a.ingest_secs),
        gb(heap_a),
        gb(idx_a),
        parts_a
    );
    print_day_rates("(a)", &load_a);
    for line in load_a.sessions.lines() {
        println!("  sessions: {line}");
    }
    let rollup_rows = Parts::read(&mut a)?;
    println!(
        "  rollups written by the load: {}; metrics_ingest.users {} rows",
        rollup_rows.describe(),
        fmt_int(
            a.query_one("SELECT count(*) FROM metrics_ingest.users", &[])?
                .get::<_, i64>(0) as f64
        )
    );
    let (p, sum_a) = check_rows(&mut a, "(a)", &load_a, !s.full)?;
    problems.extend(p);
    a.batch_execute("ANALYZE metrics_ingest.metrics")?;

    println!();
    println!("query (a): one user's metrics for one day");
    let (plan, named) = explain(&mut a, &load_a)?;
    for line in &plan {
        println!("  | {line}");
    }
    println!(
        "  the plan reads {} of {parts_a} partitions: {}",
        named.len(),
        named.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    if named.len() != 1 {
        problems.push(format!(
            "query plan names {} partitions, expected 1",
            named.len()
        ));
    }
    let q_a = queries(&mut a, &s, &load_a)?;
    println!(
        "  (a) {} queries: p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms; {:.1} rows per query",
        s.queries, q_a.p50, q_a.p95, q_a.max, q_a.rows_per_query
    );

    println!();
    println!("dashboard (a): daily_totals and sessions after run_maintenance() compacts the load's rollups");
    // The month starts on the second day. The first is the day the retention
    // step below drops: reading it six times over just before would keep it in
    // the page cache, where a day past the horizon would not be, and the kernel
    // takes longer to drop cached files (see the README's FAQ). Its last full
    // read is then the single pass of the aggregate check, as (b)'s day is last
    // read by the VACUUM before its DELETE.
    let month_from = load_a
        .per_day
        .keys()
        .nth(1)
        .or(load_a.per_day.keys().next());
    let dashboard = rollups::dashboard(
        &mut a,
        *month_from.unwrap_or(&0),
        s.rows,
        &DashboardRuns {
            totals: if s.full { 50 } else { 20 },
            group_by: 5,
            sessions: s.queries,
            users: load_a.sessions.users(),
            seed: s.seed,
            check_sessions: !s.full,
        },
        &mut problems,
    )?;

    // The compaction above deleted and rewrote most of session_parts. With
    // autovacuum on, as in production, it would then vacuum and analyze them;
    // here autovacuum is off (no vacuum lands inside a timed load), so the bench
    // does it, untimed, as it does for (b) before its DELETE. Without statistics
    // the next compaction plans a hash join that starts with a sequential scan
    // of session_parts, past every row the compaction deleted (0.13 to 0.33 s
    // for 1.4 million such rows in a separate test, 6 ms once analyzed), inside
    // the timed run_maintenance below and none of it the drop's.
    let t = Instant::now();
    a.batch_execute("VACUUM (ANALYZE) metrics_ingest.session_parts, metrics_ingest.daily_parts")?;
    println!();
    println!(
        "  (untimed) VACUUM (ANALYZE) of session_parts and daily_parts after the compaction, as autovacuum would: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    println!();
    println!("retention (a): run_maintenance() drops the oldest day");
    let r = a.query_one(
        "SELECT partition::text, lower::text, upper::text, \
                floor(extract(epoch FROM lower) / 86400)::bigint, \
                ceil(extract(epoch FROM upper) / 86400)::bigint \
         FROM metrics_ingest.partitions() ORDER BY lower LIMIT 1",
        &[],
    )?;
    let (oldest, lower, upper): (String, String, String) = (r.get(0), r.get(1), r.get(2));
    // Its UTC days, as days since 1970-01-01: [first_day, end_day).
    let (first_day, end_day): (i64, i64) = (r.get(3), r.get(4));
    // The partition's rows are the generated rows of its days, which check_rows
    // has compared with the table, day by day. They are not counted here with
    // count(*): that would read the partition into the page cache just before the
    // drop, which a partition past the retention horizon, written days ago and
    // read by no one since, would not be in; and the kernel's work of dropping
    // a file grows with its cached pages.
    let day_rows: i64 = load_a
        .per_day
        .range(first_day..end_day)
        .map(|(_, rows)| rows)
        .sum();
    // Retention such that the horizon (now() - retention) falls one hour after the
    // oldest partition's end: it alone is entirely older.
    a.execute(
        "SELECT metrics_ingest.set_retention(now() - $1::text::timestamptz - interval '1 hour')",
        &[&upper],
    )?;
    let (actions, drop_secs) = run_maintenance_timed(&mut a)?;
    a.execute("SELECT metrics_ingest.set_retention(NULL)", &[])?;
    let dropped: Vec<&str> = actions
        .iter()
        .filter(|(action, _, _)| action == "dropped partition")
        .map(|(_, object, _)| object.as_str())
        .collect();
    if dropped != [oldest.as_str()] {
        problems.push(format!(
            "run_maintenance dropped {dropped:?}, expected only {oldest}"
        ));
    }
    println!(
        "  (a) run_maintenance() dropped {oldest} [{lower}, {upper}), {} rows, in {:.4} s",
        fmt_int(day_rows as f64),
        drop_secs
    );
    if s.full && day_rows < 1_000_000 {
        println!("  WARNING: the day dropped holds fewer than 1,000,000 rows");
    }
    drop(a);
    if !s.keep_db {
        drop_database(&s.dsn, DB_PARTITIONED)?;
    }

    // ---- (b) unpartitioned ----------------------------------------------
    let (_, mut b) = fresh_database(&s.dsn, DB_PLAIN)?;
    unpartition(&mut b)?;
    println!();
    println!("ingest (b) unpartitioned, rows/s per step");
    let load_b = load(&mut b, &s, "(b)")?;
    let (heap_b, idx_b, _) = sizes(&mut b)?;
    println!(
        "  (b) {} rows in {:.0} s of ingest_json ({:.0} s wall): {} rows/s overall; heap {}, indexes {}",
        fmt_int(s.rows as f64),
        load_b.ingest_secs,
        load_b.wall_secs,
        fmt_int(s.rows as f64 / load_b.ingest_secs),
        gb(heap_b),
        gb(idx_b)
    );
    print_day_rates("(b)", &load_b);
    let (p, sum_b) = check_rows(&mut b, "(b)", &load_b, !s.full)?;
    problems.extend(p);
    if sum_a != sum_b {
        problems.push(format!(
            "(a) and (b) hold different rows: {sum_a:?} against {sum_b:?}"
        ));
    } else if let Some(sum) = &sum_a {
        println!("  (a) and (b) hold the same rows: {sum}");
    }
    // The rows were only inserted: this VACUUM sets the visibility map, so that
    // the timed one below does only what the DELETE makes necessary.
    let t = Instant::now();
    b.batch_execute("VACUUM (ANALYZE) metrics_ingest.metrics")?;
    println!(
        "  (untimed) VACUUM (ANALYZE) after the load: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    println!();
    println!("query (b): the same queries on the unpartitioned table");
    let q_b = queries(&mut b, &s, &load_b)?;
    println!(
        "  (b) {} queries: p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms; {:.1} rows per query",
        s.queries, q_b.p50, q_b.p95, q_b.max, q_b.rows_per_query
    );

    println!();
    println!("retention (b): DELETE of the same day, then the VACUUM it needs");
    b.batch_execute("CHECKPOINT")?;
    let t = Instant::now();
    let deleted = b.execute(
        "DELETE FROM metrics_ingest.metrics \
         WHERE \"timestamp\" >= $1::text::timestamptz AND \"timestamp\" < $2::text::timestamptz",
        &[&lower, &upper],
    )?;
    let delete_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    b.batch_execute("VACUUM metrics_ingest.metrics")?;
    let vacuum_secs = t.elapsed().as_secs_f64();
    if deleted as i64 != day_rows {
        problems.push(format!(
            "DELETE removed {deleted} rows, the dropped partition held {day_rows}"
        ));
    }
    println!(
        "  (b) DELETE {} rows: {:.2} s; VACUUM: {:.2} s; together {:.2} s",
        fmt_int(deleted as f64),
        delete_secs,
        vacuum_secs,
        delete_secs + vacuum_secs
    );
    let peak = server_memory_peak(&mut b);
    drop(b);
    if !s.keep_db {
        drop_database(&s.dsn, DB_PLAIN)?;
    }

    // ---- summary ----------------------------------------------------------
    let (a_first, a_last) = load_a.first_last();
    let (b_first, b_last) = load_b.first_last();
    let step_name = if s.step == 1_000_000 {
        "million".to_string()
    } else {
        format!("{} rows", fmt_int(s.step as f64))
    };
    println!();
    println!(
        "summary ({} rows; server memory limit {memory_limit})",
        fmt_int(s.rows as f64)
    );
    if let Some(peak) = peak {
        println!("  server memory peak   {peak}");
    }
    println!(
        "  indexes at the end   (a) {} in {parts_a} partitions, (b) {} in one table",
        gb(idx_a),
        gb(idx_b)
    );
    let ratio_a = a_last / a_first;
    let days_a = load_a.day_rates();
    println!(
        "  ingest (a) partitioned:   first {step_name} {:>8} rows/s, last {:>8} rows/s: last/first {ratio_a:.2}   target >= 0.90 {}",
        fmt_int(a_first),
        fmt_int(a_last),
        verdict(ratio_a >= 0.9)
    );
    println!(
        "  ingest (b) unpartitioned: first {step_name} {:>8} rows/s, last {:>8} rows/s: last/first {:.2}   (information: 0.1.1's table)",
        fmt_int(b_first),
        fmt_int(b_last),
        b_last / b_first
    );
    if let (Some(first), Some(last)) = (days_a.first(), days_a.last()) {
        println!(
            "  ingest (a) per day:       first day {:>8} rows/s, last full day {:>8} rows/s: {:.2}   (information: each day a partition)",
            fmt_int(first.1),
            fmt_int(last.1),
            last.1 / first.1
        );
    }
    println!(
        "  ingest overall            (a) {} rows/s, (b) {} rows/s: (a)/(b) {:.2}; last {step_name}: (a)/(b) {:.2}",
        fmt_int(s.rows as f64 / load_a.ingest_secs),
        fmt_int(s.rows as f64 / load_b.ingest_secs),
        load_b.ingest_secs / load_a.ingest_secs,
        a_last / b_last
    );
    let retention_ratio = (delete_secs + vacuum_secs) / drop_secs;
    println!(
        "  retention of one day ({} rows): DELETE + VACUUM {:.2} s / run_maintenance {:.4} s = {}   target >= 1,000 {}",
        fmt_int(day_rows as f64),
        delete_secs + vacuum_secs,
        drop_secs,
        fmt_int(retention_ratio),
        verdict(retention_ratio >= 1000.0)
    );
    println!(
        "  query, one user's day:    (a) p50 {:.2} ms, p95 {:.2} ms; (b) p50 {:.2} ms, p95 {:.2} ms",
        q_a.p50, q_a.p95, q_b.p50, q_b.p95
    );
    rollups::summary(&dashboard, verdict);
    println!();
    println!("correctness");
    let code = if problems.is_empty() {
        println!(
            "  OK: every ingest_json call inserted every element, nothing rejected, both tables hold the \
             generated rows per day{}; the query read one partition; daily_totals equal the GROUP BY over \
             metrics{}; run_maintenance dropped only the oldest partition, DELETE removed as many rows as it held",
            if s.full { "" } else { " and the same rows (checksum)" },
            if s.full { "" } else { ", sessions the aggregate over metrics" }
        );
        0
    } else {
        for p in &problems {
            println!("  MISMATCH {p}");
        }
        2
    };
    println!();
    println!(
        "total time {:.0} s; load average now {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(code)
}

/// `SELECT * FROM metrics_ingest.run_maintenance()` after a CHECKPOINT (so it
/// does not pay for the load's dirty buffers), timed to the end of its commit
/// (autocommit); prints each action. Returns (action, object, detail) and seconds.
pub fn run_maintenance_timed(c: &mut Client) -> Res<(Vec<(String, String, String)>, f64)> {
    c.batch_execute("CHECKPOINT")?;
    let t = Instant::now();
    let actions: Vec<(String, String, String)> = c
        .query(
            "SELECT action, object, detail FROM metrics_ingest.run_maintenance()",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let secs = t.elapsed().as_secs_f64();
    for (action, object, detail) in &actions {
        println!("  | {action} {object}: {detail}");
    }
    Ok((actions, secs))
}
