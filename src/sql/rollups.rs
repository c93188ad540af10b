//! Writes what one call adds to `sessions`, `daily_totals` and `users`
//! (`core::rollup` computes it), in the caller's transaction, so the rollups
//! commit or roll back with the rows they describe.
//!
//! Sessions and daily totals get delta rows (`session_parts`, `daily_parts`),
//! which only ever insert: no concurrent call waits for another, however many
//! share a day or a session; `run_maintenance` compacts them and the views add
//! them up. Users rows are inserted, then locked and updated, each step in
//! user_id order: two calls whose profiles change the same user wait for each
//! other there, never for other users, and never deadlock.

use std::cell::Cell;

use pgrx::pg_sys;

use super::datum::{array_column as column, float8_datum, text_datum, timestamptz_datum};
use super::errors::raise_internal;
use super::insert_path::execute_kept;
use crate::core::rollup::Summary;

/// Both kinds of delta rows in one statement (one executor run per call: it
/// is most of what a single-row insert_metric pays for the rollups). A call
/// that stored rows has daily parts; its session parts may be none. The arrays
/// are unnested in the select list, where the set-returning functions run in
/// step, a row at a time (ProjectSet); in FROM (ROWS FROM) each would first be
/// copied whole into a tuplestore, which cost more than the insert's own
/// executor work. All arrays of a statement have the same length.
const INSERT_PARTS: &str = "WITH daily AS ( \
         INSERT INTO metrics_ingest.daily_parts (day, metric_type, samples, total, min, max) \
         SELECT pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), \
             pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6)) \
     INSERT INTO metrics_ingest.session_parts \
         (user_id, session_id, start_time, end_time, metric_count, device_id, app_version, platform, location) \
     SELECT pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9), \
         pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12), pg_catalog.unnest($13), \
         pg_catalog.unnest($14), pg_catalog.unnest($15)";

/// The call's profiles as if its elements came one by one in time order: a
/// field replaces the stored one when its element is at least as new as the
/// stored profile_time, and profile_time becomes the time of the newest field
/// that changed a value. A profile equal to the stored one writes nothing (seed
/// 003's clients send the same profile with every event), so profile_time is
/// the time of the element that set the values held.
///
/// Two statements, each over the call's users in one order, so that calls
/// carrying the same users wait for each other in that order and never
/// deadlock. First the users not yet stored are inserted with the call's
/// profile (all of it applies); a user another call is inserting waits for that
/// call and is then left to the second statement. The second locks, in user_id
/// order, the rows the call's profiles change (a plain read filters the others
/// out: ON CONFLICT DO UPDATE would lock, and so write, every row, even where
/// its WHERE declines), then updates exactly those rows: it never waits.
const INSERT_USERS: &str = "INSERT INTO metrics_ingest.users (user_id, name, email, profile_time) \
     SELECT pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($4), pg_catalog.unnest($6) \
     ON CONFLICT (user_id) DO NOTHING";

/// The second statement: a field applies when its element is at least as new as
/// the row's profile_time. The new values are computed where the row is locked:
/// under READ COMMITTED, FOR NO KEY UPDATE re-evaluates them on the row's latest
/// version, which no one else can then change, so the UPDATE only writes them.
const UPDATE_USERS: &str = "WITH p AS ( \
             SELECT pg_catalog.unnest($1) AS user_id, pg_catalog.unnest($2) AS name, \
                 pg_catalog.unnest($3) AS name_time, pg_catalog.unnest($4) AS email, \
                 pg_catalog.unnest($5) AS email_time, pg_catalog.unnest($6) AS profile_time), \
         changed AS ( \
             SELECT x.user_id, n.name, n.email, \
                 CASE WHEN p.profile_time >= x.profile_time \
                      AND ((p.name_time = p.profile_time AND p.name IS DISTINCT FROM x.name) \
                        OR (p.email_time = p.profile_time AND p.email IS DISTINCT FROM x.email)) \
                 THEN p.profile_time \
                 ELSE LEAST(p.name_time, p.email_time) END AS profile_time \
             FROM metrics_ingest.users x JOIN p ON p.user_id = x.user_id \
             CROSS JOIN LATERAL (SELECT \
                 CASE WHEN p.name_time >= x.profile_time THEN p.name ELSE x.name END AS name, \
                 CASE WHEN p.email_time >= x.profile_time THEN p.email ELSE x.email END AS email) n \
             WHERE (n.name, n.email) IS DISTINCT FROM (x.name, x.email) \
             ORDER BY x.user_id COLLATE \"C\" \
             FOR NO KEY UPDATE OF x) \
         UPDATE metrics_ingest.users u SET name = c.name, email = c.email, \
             profile_time = c.profile_time, updated_at = pg_catalog.now() \
         FROM changed c WHERE u.user_id = c.user_id";

thread_local! {
    static PARTS_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static USERS_INSERT_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static USERS_UPDATE_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
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
        run(&PARTS_PLAN, INSERT_PARTS, &values, pg_sys::SPI_OK_INSERT);
    }

    // Profiles: user_id, name and its element's time, email and its element's
    // time, the newest profile-carrying element's time; in user_id order.
    let p = &summary.profiles;
    if !p.is_empty() {
        let values = [
            column(p, |p| text(&p.user_id), TEXTOID),
            column(p, |p| maybe(&p.name), TEXTOID),
            column(
                p,
                |p| p.name.as_ref().and_then(|_| time(p.name_us)),
                TIMESTAMPTZOID,
            ),
            column(p, |p| maybe(&p.email), TEXTOID),
            column(
                p,
                |p| p.email.as_ref().and_then(|_| time(p.email_us)),
                TIMESTAMPTZOID,
            ),
            column(p, |p| time(p.time_us), TIMESTAMPTZOID),
        ];
        run(
            &USERS_INSERT_PLAN,
            INSERT_USERS,
            &values,
            pg_sys::SPI_OK_INSERT,
        );
        run(
            &USERS_UPDATE_PLAN,
            UPDATE_USERS,
            &values,
            pg_sys::SPI_OK_UPDATE,
        );
    }
}

/// Runs one of the kept statements, which must end with SPI status `ok`.
fn run(
    plan: &'static std::thread::LocalKey<Cell<pg_sys::SPIPlanPtr>>,
    query: &str,
    parameters: &[(pg_sys::Datum, pg_sys::Oid)],
    ok: u32,
) {
    let status = execute_kept(plan, query, parameters);
    if status != ok as i32 {
        raise_internal("writing the rollups", format!("SPI status {status}"));
    }
}
