//! The metrics_ingest benchmark program (a program, never a test). Run it
//! through `scripts/bench.sh`, which installs the extension and starts a server.
//!
//!   bench [compare] [--rows N] [--rounds N] [--batch N] [--single-rows N]
//!         [--memory-mb N] [--seed N] [--dsn DSN] [--keep-db] [--quick]
//!   bench scale [--full] [--rows N] ...        (see scale.rs; `bench scale --help`)
//!
//! `compare` (the default): how fast `metrics_ingest.ingest_json` and
//! `insert_metric` store rows compared with what PostgreSQL does without the
//! extension (COPY, json_populate_recordset, single-row INSERTs), on the same
//! generated rows into tables of the same definition, partitioned like
//! `metrics_ingest.metrics` (same partition bounds, made before any timing;
//! metrics_ingest.metrics has its partitions before timing too), and how much
//! memory one large ingest_json call takes.
//!
//! It creates (and at the end drops) its own database `metrics_bench` on the
//! server named by `--dsn` / `METRICS_INGEST_BENCH_DSN` (default
//! `host=127.0.0.1 port=54329 user=postgres dbname=postgres`), which must have
//! metrics_ingest installed and run on this machine (for the memory part).
//!
//! Method: every round runs every method once, in an order rotated by one each
//! round; before each timed run the target table is truncated and a CHECKPOINT
//! is taken (both untimed), and all client-side payloads are rendered before
//! any timing. Rates are medians over rounds. After every run, what the method
//! stored is compared with what COPY stored for the same events; any
//! difference makes the exit status non-zero (2). Missed performance targets
//! are reported as FAIL but do not change the exit status.
//!
//! On PostgreSQL 17 and later, two more methods run on the same rows of which
//! 1% are bad (a timestamp that is not one): `COPY ... (FORMAT csv, ON_ERROR
//! ignore)`, which skips the bad rows, and ingest_json, which keeps them in
//! metrics_ingest.rejected with their reasons. Their rates count every row
//! sent, bad ones included; both must store exactly COPY's rows for the good
//! events, and ingest_json must reject exactly the bad ones.
//!
//! Issue 9: ingest_json and insert_metric also maintain metrics_ingest.users,
//! sessions and daily_totals (through the delta tables session_parts and
//! daily_parts), which COPY into a plain table does not; the rows a run of
//! ingest_json wrote there are printed beside its ratio, every run into
//! metrics_ingest.metrics is checked against them (daily_totals and sessions
//! equal the same aggregates over metrics, users holds exactly the name and
//! email sent), and they are emptied with metrics between runs.
//!
//! Memory: in fresh backends, VmHWM from /proc/<pid>/status before and after
//! (a) `SELECT length($1)` and (b) ingest_json($1) with the same large text
//! parameter, plus (c) = (b) under plan_cache_mode = force_generic_plan, which
//! separates PostgreSQL's own copy of the parameter (a custom plan keeps it as
//! a constant) from what ingest_json itself allocates.

use std::collections::HashMap;
use std::error::Error;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use metrics_ingest_tests::events::{
    self, insert_sql, CallOverload, Event, Generator, CALL_NUMBER_SQL, CALL_NUMBER_TYPES,
    CALL_TEXT_SQL, CALL_TEXT_TYPES, COMPARED_COLUMNS, COPY_COLUMNS, INSERT_TYPES, SEED000_COLUMNS,
};
use postgres::types::Type;
use postgres::{Client, Config, NoTls, Statement};

type Res<T> = Result<T, Box<dyn Error>>;

mod rollups;
mod scale;

const DEFAULT_DSN: &str = "host=127.0.0.1 port=54329 user=postgres dbname=postgres";
const BENCH_DB: &str = "metrics_bench";
const MIB: f64 = 1024.0 * 1024.0;

/// The metrics_ingest benchmark. Without a subcommand it runs `compare`.
#[derive(Debug, Parser)]
#[command(name = "bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    compare: CompareArgs,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// ingest_json and insert_metric against COPY, json_populate_recordset and
    /// INSERT on the same rows into identically partitioned tables (the default)
    Compare(CompareArgs),
    /// Scale run: rows/s per million rows into the partitioned table and into an
    /// unpartitioned copy, retention by dropping a partition against DELETE +
    /// VACUUM, and one user's day by query. Small unless --full.
    Scale(scale::ScaleArgs),
}

/// A count such as 200000 or 20_000_000.
fn parse_count(v: &str) -> Result<usize, String> {
    v.replace('_', "").parse().map_err(|e| format!("{v}: {e}"))
}

/// The server to use; shared by every mode.
#[derive(Debug, Clone, clap::Args)]
struct ServerArgs {
    /// server to use (a libpq key=value string; the bench creates and drops its
    /// own databases there)
    #[arg(long, env = "METRICS_INGEST_BENCH_DSN", default_value = DEFAULT_DSN)]
    dsn: String,
    /// do not drop the bench's databases at the end
    #[arg(long)]
    keep_db: bool,
}

#[derive(Debug, Clone, clap::Args)]
struct CompareArgs {
    /// rows per run for the bulk methods [default: 200000, 20000 with --quick]
    #[arg(long, env = "METRICS_INGEST_BENCH_ROWS", value_parser = parse_count)]
    rows: Option<usize>,
    /// rounds; medians are reported [default: 5, 2 with --quick]
    #[arg(long, env = "METRICS_INGEST_BENCH_ROUNDS", value_parser = parse_count)]
    rounds: Option<usize>,
    /// elements per ingest_json / json_populate_recordset call, rows per COPY
    /// statement and per transaction of the batched single-row methods
    #[arg(long, default_value = "10000", value_parser = parse_count)]
    batch: usize,
    /// rows per run for the single-row INSERT / CALL methods [default: 5000, 1000 with --quick]
    #[arg(long, value_parser = parse_count)]
    single_rows: Option<usize>,
    /// payload size of the memory measurement in MiB; 0 skips it [default: 64, 8 with --quick]
    #[arg(long, value_parser = parse_count)]
    memory_mb: Option<usize>,
    /// generator seed
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// also write the bulk runs' batches to DIR (bNNN.csv for COPY, bNNN.json
    /// for ingest_json), to replay or profile the server side on its own
    #[arg(long, value_name = "DIR")]
    save_payloads: Option<std::path::PathBuf>,
    /// smoke test: 20000 rows, 2 rounds, 1000 single rows, 8 MiB memory payload
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Clone)]
struct Opts {
    dsn: String,
    rows: usize,
    rounds: usize,
    batch: usize,
    single_rows: usize,
    memory_mb: usize,
    seed: u64,
    save_payloads: Option<std::path::PathBuf>,
    keep_db: bool,
    quick: bool,
}

impl CompareArgs {
    fn opts(self) -> Res<Opts> {
        let quick = self.quick;
        let o = Opts {
            dsn: self.server.dsn,
            rows: self.rows.unwrap_or(if quick { 20_000 } else { 200_000 }),
            rounds: self.rounds.unwrap_or(if quick { 2 } else { 5 }),
            batch: self.batch,
            single_rows: self
                .single_rows
                .unwrap_or(if quick { 1_000 } else { 5_000 }),
            memory_mb: self.memory_mb.unwrap_or(if quick { 8 } else { 64 }),
            seed: self.seed,
            save_payloads: self.save_payloads,
            keep_db: self.server.keep_db,
            quick,
        };
        if o.rows == 0 || o.rounds == 0 || o.batch == 0 {
            return Err("--rows, --rounds and --batch must be positive".into());
        }
        Ok(Opts {
            single_rows: o.single_rows.min(o.rows),
            ..o
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Method {
    Copy,
    /// COPY into an unpartitioned table with the same keys and indexes (issue 9's
    /// wording of the cost target).
    CopyPlain,
    Populate,
    IngestJson,
    Seed000Copy,
    InsertAutocommit,
    CallAutocommit,
    InsertBatchTxn,
    CallBatchTxn,
    /// PostgreSQL 17+: COPY ... ON_ERROR ignore on the rows with 1% bad ones.
    CopyOnErrorIgnore,
    /// PostgreSQL 17+: ingest_json on the same rows with 1% bad ones.
    IngestJsonBad,
}

const METHODS: [Method; 9] = [
    Method::Copy,
    Method::CopyPlain,
    Method::Populate,
    Method::IngestJson,
    Method::Seed000Copy,
    Method::InsertAutocommit,
    Method::CallAutocommit,
    Method::InsertBatchTxn,
    Method::CallBatchTxn,
];

/// The methods of servers that have COPY's ON_ERROR option (17 and later).
const ON_ERROR_METHODS: [Method; 2] = [Method::CopyOnErrorIgnore, Method::IngestJsonBad];

/// One row in this many has a bad timestamp in the ON_ERROR comparison.
const BAD_EVERY: usize = 100;
/// The bad rows' timestamp.
const BAD_TIMESTAMP: &str = "not a timestamp";

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Copy => "COPY csv",
            Method::CopyPlain => "COPY csv into a plain table",
            Method::Populate => "INSERT ... json_populate_recordset",
            Method::IngestJson => "ingest_json",
            Method::Seed000Copy => "COPY csv into seed 000's table",
            Method::InsertAutocommit => "INSERT per row, autocommit",
            Method::CallAutocommit => "CALL insert_metric per row, autocommit",
            Method::InsertBatchTxn => "INSERT per row, 1 txn per batch",
            Method::CallBatchTxn => "CALL insert_metric per row, 1 txn per batch",
            Method::CopyOnErrorIgnore => "COPY csv ON_ERROR ignore, 1% bad rows",
            Method::IngestJsonBad => "ingest_json, 1% bad rows",
        }
    }

    fn target(self) -> &'static str {
        match self {
            Method::Copy | Method::CopyOnErrorIgnore => "bench.copy_target",
            Method::CopyPlain => "bench.copy_plain",
            Method::Populate => "bench.populate_target",
            Method::IngestJson
            | Method::IngestJsonBad
            | Method::CallAutocommit
            | Method::CallBatchTxn => "metrics_ingest.metrics",
            Method::Seed000Copy => "bench.seed000",
            Method::InsertAutocommit | Method::InsertBatchTxn => "bench.insert_target",
        }
    }

    fn with_bad_rows(self) -> bool {
        ON_ERROR_METHODS.contains(&self)
    }

    fn single_row(self) -> bool {
        matches!(
            self,
            Method::InsertAutocommit
                | Method::CallAutocommit
                | Method::InsertBatchTxn
                | Method::CallBatchTxn
        )
    }
}

/// Everything a run sends, rendered before any timing.
struct Work<'e> {
    bulk: &'e [Event],
    /// Rows of `bulk` that are good (all of them, except in the bad-row work).
    good: usize,
    single: &'e [Event],
    batch: usize,
    csv: Vec<String>,
    seed000_csv: Vec<String>,
    json: Vec<String>,
    row_json: Vec<String>,
}

impl<'e> Work<'e> {
    fn new(bulk: &'e [Event], single: &'e [Event], batch: usize) -> Work<'e> {
        let chunks = || bulk.chunks(batch);
        Work {
            bulk,
            good: bulk.len(),
            single,
            batch,
            csv: chunks().map(events::csv).collect(),
            seed000_csv: chunks().map(events::seed000_csv).collect(),
            json: chunks().map(events::json_array).collect(),
            row_json: chunks().map(events::row_json_array).collect(),
        }
    }

    /// Rows sent by one run of `m` (the rate's numerator).
    fn rows(&self, m: Method) -> usize {
        if m.single_row() {
            self.single.len()
        } else {
            self.bulk.len()
        }
    }

    /// Rows one run of `m` must store.
    fn stored(&self, m: Method) -> usize {
        if m.single_row() {
            self.single.len()
        } else {
            self.good
        }
    }
}

/// The work for `m`: the bad-row work for the ON_ERROR methods.
fn work_for<'w, 'e>(m: Method, w: &'w Work<'e>, bad: Option<&'w Work<'e>>) -> &'w Work<'e> {
    match bad {
        Some(bad) if m.with_bad_rows() => bad,
        _ => w,
    }
}

/// `events` with every BAD_EVERY-th one (from the middle of each hundred)
/// given a timestamp that is not one; and the good events alone.
fn with_bad_rows(events: &[Event]) -> (Vec<Event>, Vec<Event>) {
    let mut all = events.to_vec();
    let mut good = Vec::with_capacity(events.len());
    for (i, e) in all.iter_mut().enumerate() {
        if i % BAD_EVERY == BAD_EVERY / 2 {
            e.timestamp = BAD_TIMESTAMP.into();
        } else {
            good.push(e.clone());
        }
    }
    (all, good)
}

fn bytes(parts: &[String]) -> usize {
    parts.iter().map(String::len).sum()
}

struct Statements {
    populate: Statement,
    ingest: Statement,
    insert: Statement,
    call_number: Statement,
    call_text: Statement,
}

fn prepare(client: &mut Client) -> Res<Statements> {
    Ok(Statements {
        populate: client.prepare_typed(
            &format!(
                "INSERT INTO bench.populate_target ({COPY_COLUMNS}) SELECT {COPY_COLUMNS} \
                 FROM json_populate_recordset(NULL::bench.populate_target, $1::json)"
            ),
            &[Type::TEXT],
        )?,
        ingest: client.prepare_typed(
            "SELECT count(*), count(*) FILTER (WHERE status = 'inserted') \
             FROM metrics_ingest.ingest_json($1::text)",
            &[Type::TEXT],
        )?,
        insert: client.prepare_typed(&insert_sql("bench.insert_target"), &INSERT_TYPES)?,
        call_number: client.prepare_typed(CALL_NUMBER_SQL, &CALL_NUMBER_TYPES)?,
        call_text: client.prepare_typed(CALL_TEXT_SQL, &CALL_TEXT_TYPES)?,
    })
}

fn copy_in(client: &mut Client, sql: &str, data: &str) -> Res<u64> {
    let mut writer = client.copy_in(sql)?;
    writer.write_all(data.as_bytes())?;
    Ok(writer.finish()?)
}

fn call_one(client: &mut impl postgres::GenericClient, st: &Statements, e: &Event) -> Res<()> {
    let p = e.call_params();
    let stmt = match p.overload {
        CallOverload::Number => &st.call_number,
        CallOverload::Text => &st.call_text,
    };
    client.execute(stmt, &p.refs())?;
    Ok(())
}

/// The timed part of one run. Returns rows the server reported storing.
fn load(client: &mut Client, st: &Statements, m: Method, w: &Work) -> Res<u64> {
    let mut stored = 0u64;
    match m {
        Method::Copy | Method::CopyPlain => {
            let sql = format!(
                "COPY {} ({COPY_COLUMNS}) FROM STDIN (FORMAT csv)",
                m.target()
            );
            for chunk in &w.csv {
                stored += copy_in(client, &sql, chunk)?;
            }
        }
        Method::CopyOnErrorIgnore => {
            // COPY's count leaves out the skipped rows.
            let sql = format!(
                "COPY bench.copy_target ({COPY_COLUMNS}) FROM STDIN (FORMAT csv, ON_ERROR ignore)"
            );
            for chunk in &w.csv {
                stored += copy_in(client, &sql, chunk)?;
            }
        }
        Method::Seed000Copy => {
            let sql = format!("COPY bench.seed000 ({SEED000_COLUMNS}) FROM STDIN (FORMAT csv)");
            for chunk in &w.seed000_csv {
                stored += copy_in(client, &sql, chunk)?;
            }
        }
        Method::Populate => {
            for chunk in &w.row_json {
                stored += client.execute(&st.populate, &[chunk])?;
            }
        }
        Method::IngestJson | Method::IngestJsonBad => {
            for chunk in &w.json {
                let row = client.query_one(&st.ingest, &[chunk])?;
                let (results, inserted): (i64, i64) = (row.get(0), row.get(1));
                if results != inserted && m == Method::IngestJson {
                    eprintln!(
                        "    ingest_json: {} of {results} elements not 'inserted' (see metrics_ingest.rejected)",
                        results - inserted
                    );
                }
                stored += inserted as u64;
            }
        }
        Method::InsertAutocommit => {
            for e in w.single {
                stored += client.execute(&st.insert, &e.insert_params().refs())?;
            }
        }
        Method::CallAutocommit => {
            for e in w.single {
                call_one(client, st, e)?;
                stored += 1;
            }
        }
        Method::InsertBatchTxn => {
            for chunk in w.single.chunks(w.batch) {
                let mut tx = client.transaction()?;
                for e in chunk {
                    stored += tx.execute(&st.insert, &e.insert_params().refs())?;
                }
                tx.commit()?;
            }
        }
        Method::CallBatchTxn => {
            for chunk in w.single.chunks(w.batch) {
                let mut tx = client.transaction()?;
                for e in chunk {
                    call_one(&mut tx, st, e)?;
                    stored += 1;
                }
                tx.commit()?;
            }
        }
    }
    Ok(stored)
}

fn prepare_target(client: &mut Client, m: Method) -> Res<()> {
    if m.target() == "metrics_ingest.metrics" {
        // with the rollups ingest maintains beside metrics (issue 9)
        let mut tables = vec!["metrics_ingest.metrics", "metrics_ingest.rejected"];
        tables.extend(rollups::existing_rollup_tables(client)?);
        client.batch_execute(&format!("TRUNCATE {}", tables.join(", ")))?;
    } else {
        client.batch_execute(&format!("TRUNCATE {}", m.target()))?;
    }
    client.batch_execute("CHECKPOINT")?;
    Ok(())
}

const MAX_RECONNECTS: usize = 5;

/// One timed run with its untimed preparation and check: seconds, rows the
/// server reported storing, and the difference from COPY's rows if any.
fn run_once(
    c: &mut Client,
    st: &Statements,
    m: Method,
    w: &Work,
) -> Res<(f64, u64, Option<String>, Option<rollups::Parts>)> {
    prepare_target(c, m)?;
    let t = Instant::now();
    let stored = load(c, st, m, w)?;
    let secs = t.elapsed().as_secs_f64();
    // what the run wrote into the rollups' delta tables (issue 9), before the
    // checks read anything
    let parts = if m.target() == "metrics_ingest.metrics" {
        Some(rollups::Parts::read(c)?)
    } else {
        None
    };
    let problem = verify(c, m, w)?;
    Ok((secs, stored, problem, parts))
}

/// Runs `f`; if the connection was lost (a backend crash, e.g. when
/// metrics_ingest.so is overwritten by a re-install while loaded), reconnects
/// and runs it again, at most MAX_RECONNECTS times in the whole bench.
fn retrying<T>(
    cfg: &Config,
    c: &mut Client,
    st: &mut Statements,
    reconnects: &mut usize,
    what: &str,
    mut f: impl FnMut(&mut Client, &Statements) -> Res<T>,
) -> Res<T> {
    loop {
        match f(c, st) {
            Ok(v) => return Ok(v),
            Err(e) if connection_lost(c, e.as_ref()) && *reconnects < MAX_RECONNECTS => {
                *reconnects += 1;
                println!(
                    "  connection lost during {what} ({}); reconnecting and repeating it",
                    describe(e.as_ref())
                );
                *c = reconnect(cfg)?;
                *st = prepare(c)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Did this error end the session (a FATAL error, or the socket closed)?
fn connection_lost(c: &Client, e: &(dyn Error + 'static)) -> bool {
    if c.is_closed() {
        return true;
    }
    match e.downcast_ref::<postgres::Error>() {
        Some(pg) => {
            pg.is_closed()
                || pg
                    .as_db_error()
                    .is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC"))
        }
        None => false,
    }
}

/// An error with the server's message, which `postgres::Error`'s Display omits.
fn describe(e: &(dyn Error + 'static)) -> String {
    if let Some(pg) = e.downcast_ref::<postgres::Error>() {
        if let Some(db) = pg.as_db_error() {
            return db.to_string();
        }
        if let Some(source) = pg.source() {
            return format!("{pg}: {source}");
        }
    }
    e.to_string()
}

/// Connect again, waiting up to a minute for a server in crash recovery.
fn reconnect(cfg: &Config) -> Res<Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match cfg.connect(NoTls) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(format!("cannot reconnect: {e}").into()),
        }
    }
}

/// Compare what `m` stored with what COPY stored for the same events.
/// Returns a description of the difference, if any.
fn verify(client: &mut Client, m: Method, w: &Work) -> Res<Option<String>> {
    let expected = w.stored(m) as i64;
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}", m.target()), &[])?
        .get(0);
    let mut problems = Vec::new();
    if count != expected {
        problems.push(format!(
            "{} holds {count} rows, expected {expected}",
            m.target()
        ));
    }
    if m == Method::IngestJsonBad {
        // Every bad element kept, with its reason, and nothing else.
        let bad = (w.bulk.len() - w.good) as i64;
        let row = client.query_one(
            "SELECT count(*), count(*) FILTER (WHERE field = 'timestamp' AND error <> '') \
             FROM metrics_ingest.rejected",
            &[],
        )?;
        let (rejected, with_reason): (i64, i64) = (row.get(0), row.get(1));
        if rejected != bad || with_reason != bad {
            problems.push(format!(
                "metrics_ingest.rejected holds {rejected} elements ({with_reason} with a timestamp \
                 error), expected the {bad} bad ones"
            ));
        }
    }
    if m == Method::IngestJson || m == Method::CallAutocommit || m == Method::CallBatchTxn {
        let rejected: i64 = client
            .query_one("SELECT count(*) FROM metrics_ingest.rejected", &[])?
            .get(0);
        if rejected > 0 {
            let rows = client.query(
                "SELECT ordinal, field, error, left(element, 300) FROM metrics_ingest.rejected ORDER BY id LIMIT 3",
                &[],
            )?;
            let mut msg = format!("{rejected} elements rejected, e.g.:");
            for r in rows {
                let (o, f, e, el): (i32, String, String, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                msg.push_str(&format!(
                    "\n        #{o} field {f}: {e}\n          element: {el}"
                ));
            }
            problems.push(msg);
        }
    }
    if m.target() == "metrics_ingest.metrics" {
        // issue 9: the rollups equal what metrics and the events sent say
        problems.extend(rollups::check_daily_totals(client)?);
        problems.extend(rollups::check_sessions(client)?);
        let sent: &[Event] = if m.single_row() { w.single } else { w.bulk };
        // the bad rows (IngestJsonBad) are rejected with their profile
        let expected =
            rollups::expected_users(sent.iter().filter(|e| e.timestamp != BAD_TIMESTAMP));
        problems.extend(rollups::check_users(client, &expected)?);
    }
    if m != Method::Seed000Copy {
        let reference = if m.single_row() {
            "bench.ref_single"
        } else if m.with_bad_rows() {
            "bench.ref_good"
        } else {
            "bench.ref_all"
        };
        let target = m.target();
        let q = format!(
            "SELECT (SELECT count(*) FROM (SELECT {c} FROM {target} EXCEPT ALL SELECT {c} FROM {reference}) x), \
                    (SELECT count(*) FROM (SELECT {c} FROM {reference} EXCEPT ALL SELECT {c} FROM {target}) y)",
            c = COMPARED_COLUMNS
        );
        let row = client.query_one(&q, &[])?;
        let (extra, missing): (i64, i64) = (row.get(0), row.get(1));
        if extra != 0 || missing != 0 {
            let mut msg = format!(
                "{target} differs from what COPY stored: {extra} rows only in {target}, {missing} rows only in COPY's"
            );
            for (label, a, b) in [
                ("only in", target, reference),
                ("only in COPY's", reference, target),
            ] {
                let rows = client.query(
                    &format!(
                        "SELECT row_to_json(x)::text FROM (SELECT {c} FROM {a} EXCEPT ALL SELECT {c} FROM {b} \
                         ORDER BY event_id LIMIT 3) x",
                        c = COMPARED_COLUMNS
                    ),
                    &[],
                )?;
                for r in rows {
                    let text: String = r.get(0);
                    msg.push_str(&format!(
                        "\n        {label}{}: {text}",
                        if label == "only in" {
                            format!(" {a}")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            problems.push(msg);
        }
    }
    Ok(if problems.is_empty() {
        None
    } else {
        Some(problems.join("\n      "))
    })
}

fn setup_database(o: &Opts) -> Res<Config> {
    let admin_cfg: Config = o.dsn.parse()?;
    let mut admin = admin_cfg
        .clone()
        .application_name("metrics_ingest_bench")
        .connect(NoTls)
        .map_err(|e| format!("cannot connect to '{}': {e}", o.dsn))?;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))?;
    admin.batch_execute(&format!("CREATE DATABASE {BENCH_DB}"))?;
    let mut cfg = admin_cfg;
    cfg.dbname(BENCH_DB)
        .application_name("metrics_ingest_bench");
    let mut c = cfg.connect(NoTls)?;
    c.batch_execute(
        "SET client_min_messages = warning;
         CREATE EXTENSION metrics_ingest;
         CREATE SCHEMA bench;
         -- partitioned like metrics (LIKE copies columns and constraints, not the
         -- partitioning); partitions with metrics' bounds come from partition_targets
         CREATE TABLE bench.copy_target (LIKE metrics_ingest.metrics INCLUDING ALL)
             PARTITION BY RANGE (\"timestamp\");
         CREATE TABLE bench.populate_target (LIKE metrics_ingest.metrics INCLUDING ALL)
             PARTITION BY RANGE (\"timestamp\");
         CREATE TABLE bench.insert_target (LIKE metrics_ingest.metrics INCLUDING ALL)
             PARTITION BY RANGE (\"timestamp\");
         -- the same keys and indexes on a plain table (issue 9 states its cost target so)
         CREATE TABLE bench.copy_plain (LIKE metrics_ingest.metrics INCLUDING ALL);
         ALTER TABLE bench.copy_plain SET (autovacuum_enabled = off);
         CREATE TABLE bench.seed000 (
             id serial PRIMARY KEY,
             \"timestamp\" timestamp,
             user_id varchar(255),
             session_id varchar(255),
             metric_type varchar(255),
             metric_value varchar(255),
             device_id varchar(255),
             app_version varchar(255),
             location varchar(255),
             sentiment_score float);
         CREATE INDEX ON bench.seed000 (\"timestamp\");
         CREATE INDEX ON bench.seed000 (user_id);
         CREATE INDEX ON bench.seed000 (session_id);
         CREATE INDEX ON bench.seed000 (metric_type);
         CREATE TABLE bench.ref_all (LIKE metrics_ingest.metrics INCLUDING DEFAULTS INCLUDING IDENTITY);
         CREATE TABLE bench.ref_single (LIKE metrics_ingest.metrics INCLUDING DEFAULTS INCLUDING IDENTITY);
         CREATE TABLE bench.ref_good (LIKE metrics_ingest.metrics INCLUDING DEFAULTS INCLUDING IDENTITY);
         -- the same for every target (and every partition, see partition_targets):
         -- no autovacuum run landing inside another method's timing
         ALTER TABLE bench.seed000 SET (autovacuum_enabled = off);",
    )?;
    // the keys and indexes each partition of metrics gets (partition_for in
    // sql/partitions.sql), declared on the partitioned targets' parents so their
    // partitions get them
    for table in PARTITIONED_TARGETS.iter().chain(&["bench.copy_plain"]) {
        c.batch_execute(&format!(
            "ALTER TABLE {table} ADD PRIMARY KEY (user_id, \"timestamp\", id);
             CREATE UNIQUE INDEX ON {table} (user_id, event_id, metric_type, \"timestamp\")
                 WHERE event_id IS NOT NULL;
             CREATE INDEX ON {table} (session_id, \"timestamp\") WHERE session_id IS NOT NULL;
             CREATE INDEX ON {table} (metric_type, \"timestamp\");
             CREATE INDEX ON {table} USING brin (\"timestamp\");"
        ))?;
    }
    Ok(cfg)
}

/// The partitioned targets of the compare mode.
const PARTITIONED_TARGETS: [&str; 3] = [
    "bench.copy_target",
    "bench.populate_target",
    "bench.insert_target",
];

/// Before any timing: makes metrics_ingest.metrics' partitions for every
/// partition-interval cell that `events` touch (through ingest_json itself, one
/// event per cell, then truncated), gives every partitioned target a partition
/// with the same bounds, and turns autovacuum off on all of them. Returns the
/// partitions as (name, lower, upper).
fn partition_targets(
    c: &mut Client,
    events: &[&[Event]],
    seed: u64,
) -> Res<Vec<(String, String, String)>> {
    let (lo, hi) = events
        .iter()
        .flat_map(|es| es.iter())
        .fold((i64::MAX, i64::MIN), |(lo, hi), e| {
            (lo.min(e.unix_us), hi.max(e.unix_us))
        });
    let cells: Vec<i64> = c
        .query(
            "SELECT (extract(epoch FROM cell) * 1000)::bigint \
             FROM (SELECT coalesce((SELECT partition_interval FROM metrics_ingest.settings), '1 day') AS width) s, \
                  generate_series(date_bin(width, to_timestamp($1::float8 / 1e6), \
                                           '2000-01-01 00:00:00+00'), \
                                  to_timestamp($2::float8 / 1e6), width) cell",
            &[&(lo as f64), &(hi as f64)],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let markers: Vec<Event> = Generator::new(seed.wrapping_add(11))
        .zip(&cells)
        .map(|(mut e, &ms)| {
            e.unix_us = ms * 1000;
            e.timestamp = events::iso_utc_ms(ms, false);
            e
        })
        .collect();
    let row = c.query_one(
        "SELECT count(*) FILTER (WHERE status = 'inserted') FROM metrics_ingest.ingest_json($1::text)",
        &[&events::json_array(&markers)],
    )?;
    let inserted: i64 = row.get(0);
    if inserted as usize != markers.len() {
        return Err(format!(
            "making partitions: ingest_json inserted {inserted} of {} events",
            markers.len()
        )
        .into());
    }
    c.batch_execute("TRUNCATE metrics_ingest.metrics, metrics_ingest.rejected")?;
    let partitions: Vec<(String, String, String, String)> = c
        .query(
            "SELECT p.partition::text, c.relname::text, p.lower::text, p.upper::text \
             FROM metrics_ingest.partitions() p JOIN pg_class c ON c.oid = p.partition",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut ddl = String::new();
    for (partition, relname, lower, upper) in &partitions {
        ddl.push_str(&format!(
            "ALTER TABLE {partition} SET (autovacuum_enabled = off);\n"
        ));
        let suffix = relname.strip_prefix("metrics").unwrap_or(relname);
        for target in PARTITIONED_TARGETS {
            ddl.push_str(&format!(
                "CREATE TABLE {target}{suffix} PARTITION OF {target} \
                 FOR VALUES FROM ('{lower}') TO ('{upper}') WITH (autovacuum_enabled = off);\n"
            ));
        }
    }
    c.batch_execute(&ddl)?;
    Ok(partitions
        .into_iter()
        .map(|(p, _, l, u)| (p, l, u))
        .collect())
}

fn show(c: &mut Client, setting: &str) -> String {
    c.query_one(&format!("SHOW {setting}"), &[])
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_else(|e| format!("? ({e})"))
}

/// The server's data directory with the filesystem it is on and that
/// filesystem's mount options (from /proc/mounts: the server runs on this
/// machine). They matter to dropping a partition: its files are given back at
/// commit, and on a filesystem mounted with `discard` the kernel trims every
/// freed extent before the truncate returns.
fn data_directory_fs(c: &mut Client) -> String {
    let dir = show(c, "data_directory");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let found = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[0], f[1], f[2], f[3]))
        })
        .filter(|(_, at, _, _)| {
            dir == *at || dir.starts_with(&format!("{}/", at.trim_end_matches('/')))
        })
        .max_by_key(|(_, at, _, _)| at.len());
    match found {
        Some((device, at, fs, options)) => {
            format!("{dir}: {fs} on {device}, mounted at {at} ({options})")
        }
        None => format!("{dir} (its filesystem is not in /proc/mounts here)"),
    }
}

/// Does this ELF file have a .debug_info section? (A debug build has; a release
/// build with the default `debug = false` is stripped of it.)
fn elf_has_debug_info(path: &str) -> Option<bool> {
    let data = std::fs::read(path).ok()?;
    let u16_at = |o: usize| -> Option<usize> {
        Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?) as usize)
    };
    let u32_at = |o: usize| -> Option<usize> {
        Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?) as usize)
    };
    let u64_at = |o: usize| -> Option<usize> {
        Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?) as usize)
    };
    if data.get(0..5)? != b"\x7fELF\x02" || data[5] != 1 {
        return None; // only 64-bit little-endian
    }
    let shoff = u64_at(0x28)?;
    let shentsize = u16_at(0x3A)?;
    let shnum = u16_at(0x3C)?;
    let shstrndx = u16_at(0x3E)?;
    let strtab_off = u64_at(shoff + shstrndx * shentsize + 0x18)?;
    for i in 0..shnum {
        let name_off = u32_at(shoff + i * shentsize)?;
        let name = data.get(strtab_off + name_off..)?;
        let end = name.iter().position(|&b| b == 0)?;
        if &name[..end] == b".debug_info" {
            return Some(true);
        }
    }
    Some(false)
}

fn print_machine(c: &mut Client) -> Res<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(|l| l["MemTotal:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version: String = c.query_one("SELECT version()", &[])?.get(0);
    println!("machine");
    println!("  nproc                {nproc}");
    println!("  cpu                  {cpu}");
    println!("  memory               {mem}");
    println!(
        "  load average         {} (1, 5, 15 min; other work on the machine adds noise)",
        loadavg()
    );
    println!("  postgres             {version}");
    for s in [
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "wal_level",
        "max_wal_size",
        "work_mem",
    ] {
        println!("  {s:<20} {}", show(c, s));
    }
    println!("  data directory       {}", data_directory_fs(c));
    let ext: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'metrics_ingest'",
            &[],
        )?
        .get(0);
    let libdir: Option<String> = c
        .query_opt(
            "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'",
            &[],
        )
        .ok()
        .flatten()
        .map(|r| r.get(0));
    let lib_line = match libdir {
        Some(dir) => {
            let path = format!("{dir}/metrics_ingest.so");
            match std::fs::metadata(&path) {
                Ok(md) => {
                    let kind = match elf_has_debug_info(&path) {
                        Some(true) => "has .debug_info: looks like a DEBUG build, rates are not representative",
                        Some(false) => "no .debug_info: looks like a release build",
                        None => "build kind unknown",
                    };
                    format!("{path} ({:.1} MB; {kind})", md.len() as f64 / 1e6)
                }
                Err(e) => {
                    format!("{path} (not readable here: {e}; is the server on this machine?)")
                }
            }
        }
        None => "unknown (pg_config view not readable)".into(),
    };
    println!("  metrics_ingest       {ext}, library {lib_line}");
    Ok(())
}

/// Path, size and mtime of the installed library, to notice a re-install during the run.
fn library_identity(c: &mut Client) -> LibraryIdentity {
    let dir: String = c
        .query_opt(
            "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'",
            &[],
        )
        .ok()??
        .get(0);
    let path = format!("{dir}/metrics_ingest.so");
    let md = std::fs::metadata(&path).ok()?;
    let debug = elf_has_debug_info(&path);
    Some((path, md.len(), md.modified().ok()?, debug))
}

fn describe_library(l: &LibraryIdentity) -> String {
    match l {
        Some((_, len, _, debug)) => {
            let kind = match debug {
                Some(true) => ", debug",
                Some(false) => ", release",
                None => "",
            };
            format!("{:.1} MB{kind}", *len as f64 / 1e6)
        }
        None => "unknown".into(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn fmt_int(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct ProcMem {
    hwm_kb: u64,
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    shmem_kb: u64,
}

fn proc_mem(pid: i32) -> Res<ProcMem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status ({e}): the server must run on this machine and be readable (root)"))?;
    let mut m = ProcMem::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let kb = v
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
        match k {
            "VmHWM" => m.hwm_kb = kb,
            "VmRSS" => m.rss_kb = kb,
            "RssAnon" => m.anon_kb = kb,
            "RssFile" => m.file_kb = kb,
            "RssShmem" => m.shmem_kb = kb,
            _ => {}
        }
    }
    Ok(m)
}

/// Samples the backend's RssAnon (private memory) every 2 ms while a query runs.
struct AnonSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl AnonSampler {
    fn start(pid: i32) -> AnonSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                if let Ok(m) = proc_mem(pid) {
                    peak = peak.max(m.anon_kb);
                }
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        AnonSampler { stop, handle }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

struct MemResult {
    before: ProcMem,
    after: ProcMem,
    anon_peak_kb: u64,
    secs: f64,
}

impl MemResult {
    fn hwm_growth_mb(&self) -> f64 {
        (self.after.hwm_kb as f64 - self.before.hwm_kb as f64) / 1024.0
    }
    fn anon_growth_mb(&self) -> f64 {
        (self.anon_peak_kb as f64 - self.before.anon_kb as f64) / 1024.0
    }
}

/// In a fresh backend: warm up with `warm`, then run `query` with `payload`.
fn measure_backend(
    cfg: &Config,
    setup: &str,
    query: &str,
    warm: &str,
    payload: &str,
) -> Res<(MemResult, postgres::Row)> {
    let mut c = cfg.connect(NoTls)?;
    c.batch_execute(setup)?;
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    let stmt = c.prepare_typed(query, &[Type::TEXT])?;
    c.query_one(&stmt, &[&warm])?;
    let before = proc_mem(pid)?;
    let sampler = AnonSampler::start(pid);
    let t = Instant::now();
    let row = c.query_one(&stmt, &[&payload])?;
    let secs = t.elapsed().as_secs_f64();
    let anon_peak_kb = sampler.finish();
    let after = proc_mem(pid)?;
    Ok((
        MemResult {
            before,
            after,
            anon_peak_kb: anon_peak_kb.max(after.anon_kb),
            secs,
        },
        row,
    ))
}

fn memory_test(o: &Opts, cfg: &Config, main: &mut Client) -> Res<bool> {
    let target = o.memory_mb * 1024 * 1024;
    println!();
    println!(
        "memory: one ingest_json call on a {} MiB payload",
        o.memory_mb
    );
    let mut payload = String::with_capacity(target + 4096);
    let mut elements = 0usize;
    payload.push('[');
    for e in Generator::new(o.seed.wrapping_add(1_000_003)) {
        if payload.len() >= target {
            break;
        }
        if elements > 0 {
            payload.push(',');
        }
        e.write_json(&mut payload);
        elements += 1;
    }
    payload.push(']');
    let warm_event = Generator::new(o.seed.wrapping_add(2_000_003))
        .next()
        .unwrap();
    let warm = events::json_array(std::slice::from_ref(&warm_event));
    let payload_mb = payload.len() as f64 / MIB;
    println!(
        "  payload              {:.1} MiB, {} elements",
        payload_mb,
        fmt_int(elements as f64)
    );
    main.batch_execute("TRUNCATE metrics_ingest.metrics, metrics_ingest.rejected; CHECKPOINT")?;

    let ingest = "SELECT count(*), count(*) FILTER (WHERE status = 'inserted') \
                  FROM metrics_ingest.ingest_json($1::text)";
    let (a, row_a) = measure_backend(cfg, "", "SELECT length($1)", "x", &payload)?;
    let len: i32 = row_a.get(0);
    if len as usize != payload.chars().count() {
        return Err(format!("length($1) returned {len}").into());
    }
    let mut all_stored = true;
    let mut ingest_run = |label: &str, setup: &str| -> Res<MemResult> {
        let (r, row) = measure_backend(cfg, setup, ingest, &warm, &payload)?;
        let (results, inserted): (i64, i64) = (row.get(0), row.get(1));
        let stored: i64 = main
            .query_one("SELECT count(*) FROM metrics_ingest.metrics", &[])?
            .get(0);
        main.batch_execute("TRUNCATE metrics_ingest.metrics, metrics_ingest.rejected; CHECKPOINT")?;
        println!(
            "  {label} ingest_json returned {} results, {} inserted; table held {} rows (incl. 1 warm-up); {} rows/s",
            fmt_int(results as f64),
            fmt_int(inserted as f64),
            fmt_int(stored as f64),
            fmt_int(inserted as f64 / r.secs)
        );
        all_stored &= inserted as usize == elements && stored as usize == elements + 1;
        Ok(r)
    };
    let b = ingest_run("(b)", "")?;
    let c = ingest_run("(c)", "SET plan_cache_mode = force_generic_plan")?;

    println!(
        "  each in a fresh backend, after one tiny warm-up call of the same statement (MB = MiB):"
    );
    for (name, r) in [
        ("(a) SELECT length($1)", &a),
        ("(b) ingest_json($1)", &b),
        ("(c) same, generic plan", &c),
    ] {
        println!(
            "  {name:<22} VmHWM {:>6.1} -> {:>6.1} MB: growth {:>6.1} MB = {:.2} x payload; \
             private (RssAnon) peak growth {:>6.1} MB = {:.2} x; RssShmem after {:>5.1} MB; {:.2} s",
            r.before.hwm_kb as f64 / 1024.0,
            r.after.hwm_kb as f64 / 1024.0,
            r.hwm_growth_mb(),
            r.hwm_growth_mb() / payload_mb,
            r.anon_growth_mb(),
            r.anon_growth_mb() / payload_mb,
            r.after.shmem_kb as f64 / 1024.0,
            r.secs
        );
    }
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let limit = a.hwm_growth_mb() + payload_mb;
    println!(
        "  target: growth(b) <= growth(a) + 1 x payload: {:.1} <= {:.1} MB   -> {}",
        b.hwm_growth_mb(),
        limit,
        verdict(b.hwm_growth_mb() <= limit)
    );
    let anon_limit = a.anon_growth_mb() + payload_mb;
    println!(
        "  the same on private memory only (RssAnon; VmHWM also counts shared buffers touched): \
         {:.1} <= {:.1} MB -> {}",
        b.anon_growth_mb(),
        anon_limit,
        verdict(b.anon_growth_mb() <= anon_limit)
    );
    println!(
        "  (b) - (c) = {:.1} MB = {:.2} x payload: a custom plan (the first 5 executions of a prepared \
         statement) holds a copy of the parameter as a constant; ingest_json's own use beyond \
         length($1): (c) - (a) = {:.1} MB = {:.2} x payload",
        b.hwm_growth_mb() - c.hwm_growth_mb(),
        (b.hwm_growth_mb() - c.hwm_growth_mb()) / payload_mb,
        c.hwm_growth_mb() - a.hwm_growth_mb(),
        (c.hwm_growth_mb() - a.hwm_growth_mb()) / payload_mb
    );
    Ok(all_stored)
}

// ---------------------------------------------------------------------------

fn run_compare(o: Opts) -> Res<i32> {
    let started = Instant::now();
    println!(
        "metrics_ingest bench{}",
        if o.quick { " (--quick)" } else { "" }
    );
    let cfg = setup_database(&o)?;
    let mut c = cfg.connect(NoTls)?;
    print_machine(&mut c)?;
    let library_at_start = library_identity(&mut c);
    let _ = LIBRARY_AT_START.set((o.dsn.clone(), library_at_start.clone()));

    let generated = Instant::now();
    let all: Vec<Event> = Generator::new(o.seed).take(o.rows).collect();
    let single = &all[..o.single_rows];
    let work = Work::new(&all, single, o.batch);
    let warm_events: Vec<Event> = Generator::new(o.seed.wrapping_add(7)).take(500).collect();
    let warm = Work::new(&warm_events, &warm_events[..100], o.batch);
    let partitions = partition_targets(&mut c, &[&all, &warm_events], o.seed)?;
    if let Some(dir) = &o.save_payloads {
        std::fs::create_dir_all(dir)?;
        for (i, (csv, json)) in work.csv.iter().zip(&work.json).enumerate() {
            std::fs::write(dir.join(format!("b{i:03}.csv")), csv)?;
            std::fs::write(dir.join(format!("b{i:03}.json")), json)?;
        }
    }
    // COPY's ON_ERROR option exists from PostgreSQL 17 on.
    let server_version: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])?
        .get(0);
    let on_error = server_version >= 170000;
    let (bad_all, good) = with_bad_rows(&all);
    let (warm_bad_all, _) = with_bad_rows(&warm_events);
    let (bad_work, warm_bad) = if on_error {
        let mut bad = Work::new(&bad_all, single, o.batch);
        bad.good = good.len();
        let mut warm_bad = Work::new(&warm_bad_all, &warm_events[..100], o.batch);
        warm_bad.good = warm_bad_all.len() - warm_bad_all.len().div_ceil(BAD_EVERY);
        (Some(bad), Some(warm_bad))
    } else {
        (None, None)
    };
    let methods: Vec<Method> = METHODS
        .iter()
        .chain(if on_error { &ON_ERROR_METHODS[..] } else { &[] })
        .copied()
        .collect();
    println!();
    println!("workload");
    println!(
        "  rows                 {} per bulk run (batches of {}), {} per single-row run; {} rounds; seed {}",
        fmt_int(o.rows as f64),
        fmt_int(o.batch as f64),
        fmt_int(o.single_rows as f64),
        o.rounds,
        o.seed
    );
    let (users, sessions) = {
        let u: std::collections::HashSet<_> = all.iter().map(|e| &e.user_id).collect();
        let s: std::collections::HashSet<_> =
            all.iter().filter_map(|e| e.session_id.as_ref()).collect();
        (u.len(), s.len())
    };
    println!(
        "  distinct             {} users, {} sessions",
        fmt_int(users as f64),
        fmt_int(sessions as f64)
    );
    for line in rollups::SessionStats::of(&all).lines() {
        println!("  sessions             {line}");
    }
    println!(
        "  payload bytes/row    CSV {:.0}, ingest_json JSON {:.0}, json_populate_recordset JSON {:.0}",
        bytes(&work.csv) as f64 / o.rows as f64,
        bytes(&work.json) as f64 / o.rows as f64,
        bytes(&work.row_json) as f64 / o.rows as f64
    );
    println!(
        "  targets              same definition and indexes as metrics_ingest.metrics (LIKE ... INCLUDING ALL), \
         PARTITION BY RANGE (\"timestamp\") with the same partitions; ingest_json and insert_metric write \
         metrics_ingest.metrics itself; autovacuum off on all"
    );
    println!(
        "  partitions           {} in each partitioned table, made before timing: {}",
        partitions.len(),
        partitions
            .iter()
            .map(|(p, l, u)| format!("{p} [{l}, {u})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if on_error {
        println!(
            "  bad rows             COPY ON_ERROR ignore and ingest_json also run on the same rows with \
             every {BAD_EVERY}th one bad ({} of {}: timestamp 'not a timestamp'); rates count every row sent",
            fmt_int((bad_all.len() - good.len()) as f64),
            fmt_int(bad_all.len() as f64)
        );
    } else {
        println!(
            "  bad rows             not measured: COPY's ON_ERROR option needs PostgreSQL 17 or later \
             (server_version_num {server_version})"
        );
    }
    println!(
        "  generated and rendered in {:.1} s",
        generated.elapsed().as_secs_f64()
    );

    // Reference: what COPY stores for these events.
    let ref_sql = |t: &str| format!("COPY {t} ({COPY_COLUMNS}) FROM STDIN (FORMAT csv)");
    copy_in(&mut c, &ref_sql("bench.ref_all"), &events::csv(&all))?;
    copy_in(&mut c, &ref_sql("bench.ref_single"), &events::csv(single))?;
    copy_in(&mut c, &ref_sql("bench.ref_good"), &events::csv(&good))?;

    let mut st = prepare(&mut c)?;
    // Warm-up: every statement once on a few hundred other rows (not reported).
    let mut reconnects = 0;
    for &m in &methods {
        retrying(
            &cfg,
            &mut c,
            &mut st,
            &mut reconnects,
            "the warm-up",
            |c, st| {
                prepare_target(c, m)?;
                load(c, st, m, work_for(m, &warm, warm_bad.as_ref()))
            },
        )?;
    }

    println!();
    println!("runs (rows/s)");
    let mut rates: HashMap<Method, Vec<f64>> = HashMap::new();
    // the rollup rows of each method's last run
    let mut parts: HashMap<Method, rollups::Parts> = HashMap::new();
    let mut mismatches: Vec<String> = Vec::new();
    for round in 0..o.rounds {
        let mut line = format!("  round {}/{}:", round + 1, o.rounds);
        for i in 0..methods.len() {
            let m = methods[(i + round) % methods.len()];
            let w = work_for(m, &work, bad_work.as_ref());
            let (secs, stored, problem, run_parts) =
                retrying(&cfg, &mut c, &mut st, &mut reconnects, m.name(), |c, st| {
                    run_once(c, st, m, w)
                })?;
            if let Some(p) = run_parts {
                parts.insert(m, p);
            }
            let rate = w.rows(m) as f64 / secs;
            rates.entry(m).or_default().push(rate);
            line.push_str(&format!(" {} {}", short(m), fmt_int(rate)));
            let expected = w.stored(m);
            if stored as usize != expected {
                mismatches.push(format!(
                    "round {}: {} reported {stored} rows stored, expected {expected}",
                    round + 1,
                    m.name()
                ));
            }
            if let Some(problem) = problem {
                mismatches.push(format!("round {}: {}: {problem}", round + 1, m.name()));
            }
        }
        println!("{line}");
        std::io::stdout().flush().ok();
    }

    let med = |m: Method| median(&rates[&m]);
    println!();
    println!(
        "results: median of {} rounds (min .. max), rows/s",
        o.rounds
    );
    println!(
        "  {:<46} {:>9} {:>12}   {:<24} target table",
        "method", "rows/run", "median", "min .. max"
    );
    for &m in &methods {
        let v = &rates[&m];
        let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = v.iter().cloned().fold(0.0, f64::max);
        println!(
            "  {:<46} {:>9} {:>12}   {:<24} {}",
            format!("{}. {}", number(m), m.name()),
            fmt_int(work_for(m, &work, bad_work.as_ref()).rows(m) as f64),
            fmt_int(med(m)),
            format!("{} .. {}", fmt_int(min), fmt_int(max)),
            m.target()
        );
    }

    println!();
    println!("ratios (of medians)");
    let ratio_line = |label: &str, a: Method, b: Method, target: Option<f64>| {
        let r = med(a) / med(b);
        match target {
            Some(t) => println!(
                "  {label:<58} {r:>6.2}   target >= {t:.2}  {}",
                if r >= t { "PASS" } else { "FAIL" }
            ),
            None => println!("  {label:<58} {r:>6.2}   (information)"),
        }
    };
    // Within a round the two run minutes apart at most: their ratio follows the
    // machine's load less than the ratio of medians over all rounds.
    let per_round_line = |label: &str, a: Method, b: Method| {
        let per_round: Vec<f64> = rates[&a]
            .iter()
            .zip(&rates[&b])
            .map(|(a, b)| a / b)
            .collect();
        println!(
            "  {label:<58} {:>6.2}   (information: per round {})",
            median(&per_round),
            per_round
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    ratio_line(
        "ingest_json / COPY",
        Method::IngestJson,
        Method::Copy,
        Some(0.9),
    );
    per_round_line(
        "ingest_json / COPY, median of the rounds' own ratios",
        Method::IngestJson,
        Method::Copy,
    );
    ratio_line(
        "ingest_json / COPY into a plain table (issue 9's wording)",
        Method::IngestJson,
        Method::CopyPlain,
        Some(0.9),
    );
    per_round_line(
        "ingest_json / plain-table COPY, median of rounds' ratios",
        Method::IngestJson,
        Method::CopyPlain,
    );
    if let Some(p) = parts.get(&Method::IngestJson) {
        println!(
            "  with users, sessions and daily totals maintained: a run of {} rows in {} ingest_json calls \
             wrote {} (the rows COPY does not write)",
            fmt_int(work.bulk.len() as f64),
            work.json.len(),
            p.describe()
        );
    }
    ratio_line(
        "ingest_json / json_populate_recordset",
        Method::IngestJson,
        Method::Populate,
        Some(1.2),
    );
    ratio_line(
        "insert_metric / INSERT (autocommit per row)",
        Method::CallAutocommit,
        Method::InsertAutocommit,
        Some(0.8),
    );
    ratio_line(
        "insert_metric / INSERT (one transaction per batch)",
        Method::CallBatchTxn,
        Method::InsertBatchTxn,
        Some(0.8),
    );
    ratio_line(
        "seed 000's table, COPY / our table, COPY",
        Method::Seed000Copy,
        Method::Copy,
        None,
    );
    if on_error {
        ratio_line(
            "ingest_json, 1% bad / COPY ON_ERROR ignore, same rows",
            Method::IngestJsonBad,
            Method::CopyOnErrorIgnore,
            Some(0.9),
        );
        ratio_line(
            "ingest_json, 1% bad / COPY, no bad rows",
            Method::IngestJsonBad,
            Method::Copy,
            None,
        );
    }

    if o.memory_mb > 0 {
        let memory_ok = match memory_test(&o, &cfg, &mut c) {
            Ok(ok) => ok,
            Err(e) if reconnects < MAX_RECONNECTS => {
                reconnects += 1;
                println!(
                    "  memory run failed ({}); reconnecting and repeating it once",
                    describe(e.as_ref())
                );
                c = reconnect(&cfg)?;
                memory_test(&o, &cfg, &mut c)?
            }
            Err(e) => return Err(e),
        };
        if !memory_ok {
            mismatches
                .push("memory run: ingest_json did not store every element of the payload".into());
        }
    }

    println!();
    println!("correctness (every run compared with what COPY stored for the same events)");
    let code = if mismatches.is_empty() {
        println!(
            "  OK: ingest_json, json_populate_recordset, INSERT and insert_metric stored exactly COPY's rows \
             ({}) in every round",
            COMPARED_COLUMNS.replace('"', "")
        );
        if on_error {
            println!(
                "  OK: with 1% bad rows, COPY ON_ERROR ignore and ingest_json stored exactly COPY's rows \
                 for the good events, and ingest_json kept exactly the bad ones in metrics_ingest.rejected \
                 (field timestamp, with a reason) in every round"
            );
        }
        0
    } else {
        for m in &mismatches {
            println!("  MISMATCH {m}");
        }
        2
    };
    if reconnects > 0 {
        println!(
            "\nNOTE: {reconnects} run(s) were repeated after the connection to the server was lost \
             (a backend crashed; see the server log)"
        );
    }
    let library_at_end = library_identity(&mut c);
    if library_at_start != library_at_end {
        println!(
            "\nWARNING: metrics_ingest.so was re-installed during the run ({} -> {}): backends started \
             before and after it ran different builds; these numbers mix them. Run again.",
            describe_library(&library_at_start),
            describe_library(&library_at_end)
        );
    }
    drop(c);
    if o.keep_db || code != 0 {
        println!("  database {BENCH_DB} kept for inspection");
    } else {
        let mut admin = o.dsn.parse::<Config>()?.connect(NoTls)?;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))?;
    }
    println!();
    println!(
        "total time {:.0} s; load average now {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(code)
}

fn number(m: Method) -> &'static str {
    match m {
        Method::Copy => "1",
        Method::CopyPlain => "1b",
        Method::Populate => "2",
        Method::IngestJson => "3",
        Method::InsertAutocommit => "4a",
        Method::CallAutocommit => "4b",
        Method::InsertBatchTxn => "4c",
        Method::CallBatchTxn => "4d",
        Method::Seed000Copy => "5",
        Method::CopyOnErrorIgnore => "6a",
        Method::IngestJsonBad => "6b",
    }
}

fn short(m: Method) -> &'static str {
    match m {
        Method::Copy => "copy",
        Method::CopyPlain => "copy-plain",
        Method::Populate => "populate",
        Method::IngestJson => "ingest_json",
        Method::InsertAutocommit => "insert",
        Method::CallAutocommit => "call",
        Method::InsertBatchTxn => "insert/txn",
        Method::CallBatchTxn => "call/txn",
        Method::Seed000Copy => "seed000",
        Method::CopyOnErrorIgnore => "copy/on_error",
        Method::IngestJsonBad => "ingest_json/bad",
    }
}

/// Path, size, mtime, has .debug_info.
type LibraryIdentity = Option<(String, u64, std::time::SystemTime, Option<bool>)>;

/// The DSN and the library as found at the start, to explain a crash.
static LIBRARY_AT_START: std::sync::OnceLock<(String, LibraryIdentity)> =
    std::sync::OnceLock::new();

fn run() -> Res<i32> {
    let cli = Cli::parse();
    match cli.mode {
        None => run_compare(cli.compare.opts()?),
        Some(Mode::Compare(args)) => run_compare(args.opts()?),
        Some(Mode::Scale(args)) => scale::run(args),
    }
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("bench: error: {}", describe(e.as_ref()));
            if let Some((_, Some((path, len, mtime, _)))) = LIBRARY_AT_START.get() {
                let now = std::fs::metadata(path)
                    .ok()
                    .map(|m| (m.len(), m.modified().ok()));
                if now.is_some() && now != Some((*len, Some(*mtime))) {
                    eprintln!(
                        "bench: {path} was re-installed while the bench ran; overwriting a loaded \
                         library in place crashes the backends that use it (see the server log). Run again."
                    );
                }
            }
            std::process::exit(1);
        }
    }
}
