//! Writes what one call adds to `sessions`, `daily_totals` and `users`
//! (`core::rollup` computes it), in the caller's transaction, so the rollups
//! commit or roll back with the rows they describe.
//!
//! Sessions and daily totals get delta rows (`session_parts`, `daily_parts`),
//! which only ever insert: no concurrent call waits for another, however many
//! share a day or a session; `run_maintenance` compacts them and the views add
//! them up. Users are upserted, in user_id order: two calls carrying the same
//! user wait for each other there, never for other users, and never deadlock.

use std::cell::Cell;

use pgrx::pg_sys;

use super::datum::{array_datum, array_type, float8_datum, text_datum, timestamptz_datum};
use super::errors::raise_internal;
use super::insert_path::kept_plan;
use crate::core::rollup::Summary;

/// Both kinds of delta rows in one statement (one executor run per call: it
/// is most of what a single-row insert_metric pays for the rollups). A call
/// that stored rows has daily parts; its session parts may be none.
const INSERT_PARTS: &str = "WITH daily AS ( \
         INSERT INTO metrics_ingest.daily_parts (day, metric_type, samples, total, min, max) \
         SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), \
             pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6))) \
     INSERT INTO metrics_ingest.session_parts \
         (user_id, session_id, start_time, end_time, metric_count, device_id, app_version, platform, location) \
     SELECT * FROM ROWS FROM (pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), \
         pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), pg_catalog.unnest($13), \
         pg_catalog.unnest($14), pg_catalog.unnest($15))";

/// A profile replaces the stored one when it is at least as new; a field it
/// does not carry keeps its value. A profile equal to the stored one is left
/// out before the INSERT (a plain read): ON CONFLICT DO UPDATE would lock and
/// so write the row even when its WHERE then declines, and seed 003's clients
/// send the same profile with every event. So profile_time is the time of the
/// element that set the values held.
const UPSERT_USERS: &str = "INSERT INTO metrics_ingest.users AS u (user_id, name, email, profile_time) \
     SELECT p.user_id, p.name, p.email, p.profile_time \
     FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), \
         pg_catalog.unnest($4)) AS p(user_id, name, email, profile_time) \
     WHERE NOT EXISTS (SELECT FROM metrics_ingest.users x WHERE x.user_id = p.user_id \
         AND (coalesce(p.name, x.name), coalesce(p.email, x.email)) IS NOT DISTINCT FROM (x.name, x.email)) \
     ON CONFLICT (user_id) DO UPDATE SET \
         name = coalesce(excluded.name, u.name), \
         email = coalesce(excluded.email, u.email), \
         profile_time = excluded.profile_time, \
         updated_at = pg_catalog.now() \
     WHERE excluded.profile_time >= u.profile_time";

thread_local! {
    static PARTS_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static USERS_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

/// Days since 1970-01-01 to PostgreSQL's date (days since 2000-01-01).
const PG_EPOCH_UNIX_DAY: i32 = 10_957;

/// Writes the summary; SPI must be connected (the writer connects it).
pub fn write(summary: &Summary) {
    use pg_sys::{DATEOID, FLOAT8OID, INT8OID, TEXTOID, TIMESTAMPTZOID};
    let text = |s: &str| Some(text_datum(s));
    let maybe = |s: &Option<String>| s.as_deref().map(text_datum);
    let int8 = |n: i64| Some(pg_sys::Datum::from(n));
    let float8 = |x: f64| Some(float8_datum(x));
    let time = |us: i64| Some(timestamptz_datum(us));

    if !summary.daily.is_empty() || !summary.sessions.is_empty() {
        let d = &summary.daily;
        let s = &summary.sessions;
        let values = [
            column(
                d,
                |p| Some(pg_sys::Datum::from(p.unix_day - PG_EPOCH_UNIX_DAY)),
                DATEOID,
            ),
            column(d, |p| text(&p.metric_type), TEXTOID),
            column(d, |p| int8(p.samples), INT8OID),
            column(d, |p| float8(p.total), FLOAT8OID),
            column(d, |p| float8(p.min), FLOAT8OID),
            column(d, |p| float8(p.max), FLOAT8OID),
            column(s, |p| text(&p.user_id), TEXTOID),
            column(s, |p| text(&p.session_id), TEXTOID),
            column(s, |p| time(p.start_us), TIMESTAMPTZOID),
            column(s, |p| time(p.end_us), TIMESTAMPTZOID),
            column(s, |p| int8(p.metric_count), INT8OID),
            column(s, |p| maybe(&p.device_id), TEXTOID),
            column(s, |p| maybe(&p.app_version), TEXTOID),
            column(s, |p| maybe(&p.platform), TEXTOID),
            column(s, |p| maybe(&p.location), TEXTOID),
        ];
        run(&PARTS_PLAN, INSERT_PARTS, &values);
    }

    // The call's profiles as if its elements came one by one in time order: a
    // field older than the user's newest element goes first, with its own time,
    // so it applies only if it is newer than what is stored; then the fields of
    // the newest element. (Each round is in user_id order.)
    let older: Vec<(&str, Option<&str>, Option<&str>, i64)> = summary
        .profiles
        .iter()
        .filter_map(|p| {
            if p.name.is_some() && p.name_us < p.time_us {
                Some((p.user_id.as_str(), p.name.as_deref(), None, p.name_us))
            } else if p.email.is_some() && p.email_us < p.time_us {
                Some((p.user_id.as_str(), None, p.email.as_deref(), p.email_us))
            } else {
                None
            }
        })
        .collect();
    let newest: Vec<(&str, Option<&str>, Option<&str>, i64)> = summary
        .profiles
        .iter()
        .map(|p| {
            (
                p.user_id.as_str(),
                p.name.as_deref().filter(|_| p.name_us == p.time_us),
                p.email.as_deref().filter(|_| p.email_us == p.time_us),
                p.time_us,
            )
        })
        .collect();
    for round in [older, newest] {
        if round.is_empty() {
            continue;
        }
        let values = [
            column(&round, |p| text(p.0), TEXTOID),
            column(&round, |p| p.1.map(text_datum), TEXTOID),
            column(&round, |p| p.2.map(text_datum), TEXTOID),
            column(&round, |p| time(p.3), TIMESTAMPTZOID),
        ];
        run(&USERS_PLAN, UPSERT_USERS, &values);
    }
}

/// One array parameter, and its type: `f` of each item, as an array of
/// `element_type`.
fn column<T>(
    items: &[T],
    f: impl Fn(&T) -> Option<pg_sys::Datum>,
    element_type: pg_sys::Oid,
) -> (pg_sys::Datum, pg_sys::Oid) {
    let values: Vec<_> = items.iter().map(f).collect();
    (array_datum(&values, element_type), array_type(element_type))
}

/// Runs a kept plan whose parameters are `parameters` (none NULL: arrays);
/// every statement here is an INSERT.
fn run(
    plan: &'static std::thread::LocalKey<Cell<pg_sys::SPIPlanPtr>>,
    query: &str,
    parameters: &[(pg_sys::Datum, pg_sys::Oid)],
) {
    let (values, types): (Vec<pg_sys::Datum>, Vec<pg_sys::Oid>) =
        parameters.iter().copied().unzip();
    let plan = kept_plan(plan, query, &types);
    // SAFETY: SPI is connected (this module's contract); the plan takes
    // `values.len()` parameters, none NULL (the nulls string is all spaces).
    unsafe {
        let nulls = vec![b' ' as std::ffi::c_char; values.len() + 1];
        let status =
            pg_sys::SPI_execute_plan(plan, values.as_ptr().cast_mut(), nulls.as_ptr(), false, 0);
        if status != pg_sys::SPI_OK_INSERT as i32 {
            raise_internal("writing the rollups", format!("SPI status {status}"));
        }
    }
}
