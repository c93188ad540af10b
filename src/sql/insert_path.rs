//! The INSERT path: rows go in through kept SPI plans of an ordinary INSERT
//! into metrics_ingest.metrics, so PostgreSQL itself applies every trigger,
//! rule, policy, default, constraint and partition route. Used for tables and
//! partitions the fast path cannot write (see `table`).
//!
//! Rows with an event_id go in with ON CONFLICT DO NOTHING. The partitioned
//! table declares no unique index of its own (each partition has its keys, see
//! sql/schema.sql), so the arbiter cannot be named there; instead a row that
//! was not stored is looked up by its event key: if that is stored, the row is
//! a duplicate (or a conflict, if its values differ). If not, DO NOTHING was
//! not about the event key: the row is inserted again without ON CONFLICT, so
//! PostgreSQL says what really happened: a conflict on another unique index
//! raises unique_violation (23505), and a row a BEFORE trigger or a DO INSTEAD
//! rule keeps out is reported `skipped`. INSERT ... ON CONFLICT is refused on
//! tables with INSERT rules (0A000), so there the key is looked up first and
//! the row inserted plainly; a concurrent duplicate then raises 23505 rather
//! than passing silently.

use std::cell::Cell;
use std::ffi::{c_char, CString};

use pgrx::{pg_sys, PgMemoryContexts};

use super::datum::{jsonb_datum, supplied_values, Column, SUPPLIED};
use super::errors::raise_internal;
use super::sink::{LateRepeat, Repeat, Sink, Stored};
use crate::core::element::ValidElement;
use crate::core::error::Rejection;

/// The INSERT of one metric row; `$suffix` ends the statement.
macro_rules! insert_metric {
    ($suffix:literal) => {
        concat!(
            "INSERT INTO metrics_ingest.metrics (\"timestamp\", user_id, session_id, metric_type, ",
            "metric_value, metric_label, device_id, app_version, location, sentiment_score, event_id, ",
            "attributes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            $suffix
        )
    };
}
const INSERT_PLAIN: &str = insert_metric!("");
const INSERT_EVENT: &str = insert_metric!(" ON CONFLICT DO NOTHING");
/// The stored row of an event key (the INSERT's parameters $1, $2, $4, $11):
/// '' when its other columns equal the new row's, else the first that differs.
const EVENT_STORED: &str = "SELECT CASE \
     WHEN metric_value IS DISTINCT FROM $5 THEN 'metric_value' \
     WHEN metric_label IS DISTINCT FROM $6 THEN 'metric_label' \
     WHEN session_id IS DISTINCT FROM $3 THEN 'session_id' \
     WHEN device_id IS DISTINCT FROM $7 THEN 'device_id' \
     WHEN app_version IS DISTINCT FROM $8 THEN 'app_version' \
     WHEN location IS DISTINCT FROM $9 THEN 'location' \
     WHEN sentiment_score IS DISTINCT FROM $10 THEN 'sentiment_score' \
     WHEN attributes IS DISTINCT FROM $12 THEN 'attributes' ELSE '' END \
     FROM metrics_ingest.metrics WHERE \"timestamp\" = $1 \
     AND user_id = $2 AND metric_type = $4 AND event_id = $11";

thread_local! {
    // Prepared once per backend and kept: the plan cache replans them if the table changes.
    static PLAIN_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static EVENT_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static PROBE_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

fn parameter_types() -> [pg_sys::Oid; SUPPLIED] {
    Column::ALL.map(Column::type_oid)
}

/// Writes through SPI; the writer has connected SPI before making one.
pub struct InsertPath {
    /// The table has INSERT rules (see the module comment).
    rules: bool,
    row_memory: PgMemoryContexts,
}

impl InsertPath {
    pub fn new(rules: bool) -> InsertPath {
        InsertPath {
            rules,
            row_memory: PgMemoryContexts::new("metrics_ingest insert path row"),
        }
    }
}

impl InsertPath {
    /// One element's rows through INSERT, each in its own statement; a
    /// constraint, trigger or rule error ends the call, as it would end an INSERT.
    pub fn insert(&mut self, element: &ValidElement) -> Stored {
        let has_event = element.context.event_id.is_some();
        let plan = match (has_event, self.rules) {
            (true, false) => kept_plan(&EVENT_PLAN, INSERT_EVENT, &parameter_types()),
            _ => kept_plan(&PLAIN_PLAN, INSERT_PLAIN, &parameter_types()),
        };
        let mut stored = Stored::default();
        // SAFETY: every datum is built in the row context, which outlives the SPI
        // calls using it and is reset once the element is written. The values are
        // built with the row context current, and the SPI calls made outside it:
        // SPI returns to its own procedure context after each call, and anything
        // built after that would stay there until the writer finishes.
        unsafe {
            let attributes = element
                .context
                .attributes
                .as_deref()
                .map(|json| self.row_memory.switch_to(|_| jsonb_datum(json)));
            for (measurement, row) in element.measurements.iter().enumerate() {
                let (values, nulls) = self.row_memory.switch_to(|_| {
                    let supplied = supplied_values(&element.context, row, attributes);
                    (
                        supplied.map(|d| d.unwrap_or(pg_sys::Datum::from(0))),
                        supplied.map(|d| if d.is_some() { b' ' } else { b'n' } as c_char),
                    )
                });
                if has_event && self.rules {
                    if let Some(repeat) = repeat_of(&values, &nulls) {
                        stored.repeat(measurement, repeat);
                        continue;
                    }
                }
                let mut inserted = insert_row(plan, &values, &nulls);
                if !inserted && has_event && !self.rules {
                    if let Some(repeat) = repeat_of(&values, &nulls) {
                        stored.repeat(measurement, repeat);
                        continue;
                    }
                    let plain = kept_plan(&PLAIN_PLAN, INSERT_PLAIN, &parameter_types());
                    inserted = insert_row(plain, &values, &nulls);
                }
                if inserted {
                    stored.inserted += 1;
                } else if let Some(repeat) = has_event.then(|| repeat_of(&values, &nulls)).flatten()
                {
                    stored.repeat(measurement, repeat);
                } else {
                    stored.repeat(measurement, Repeat::Skipped);
                }
            }
            pg_sys::MemoryContextReset(self.row_memory.value());
        }
        stored
    }
}

impl Sink for InsertPath {
    fn put(&mut self, _ordinal: usize, element: &ValidElement) -> Result<Stored, Rejection> {
        Ok(self.insert(element))
    }

    fn finish(self: Box<Self>) -> Vec<LateRepeat> {
        Vec::new()
    }
}

/// Runs one INSERT plan; true if it stored the row.
unsafe fn insert_row(
    plan: pg_sys::SPIPlanPtr,
    values: &[pg_sys::Datum; SUPPLIED],
    nulls: &[c_char; SUPPLIED],
) -> bool {
    // SAFETY: the plan takes the twelve supplied columns as parameters, in order.
    unsafe {
        let status =
            pg_sys::SPI_execute_plan(plan, values.as_ptr().cast_mut(), nulls.as_ptr(), false, 0);
        // A DO INSTEAD rule turns the INSERT into other statements.
        if status != pg_sys::SPI_OK_INSERT as i32 && status != pg_sys::SPI_OK_REWRITTEN as i32 {
            raise_internal("inserting a metric", format!("SPI status {status}"));
        }
        pg_sys::SPI_processed > 0 && status == pg_sys::SPI_OK_INSERT as i32
    }
}

/// Whether the row's event key is stored (seen by a new snapshot, which also
/// sees this call's own rows), and if so whether with the same values.
unsafe fn repeat_of(
    values: &[pg_sys::Datum; SUPPLIED],
    nulls: &[c_char; SUPPLIED],
) -> Option<Repeat> {
    let plan = kept_plan(&PROBE_PLAN, EVENT_STORED, &parameter_types());
    // SAFETY: the plan takes the same twelve parameters as the INSERT; its one
    // text column is read before the next SPI call frees the tuple table.
    unsafe {
        let status =
            pg_sys::SPI_execute_plan(plan, values.as_ptr().cast_mut(), nulls.as_ptr(), false, 1);
        if status != pg_sys::SPI_OK_SELECT as i32 {
            raise_internal("looking up an event key", format!("SPI status {status}"));
        }
        if pg_sys::SPI_processed == 0 {
            return None;
        }
        let table = pg_sys::SPI_tuptable;
        let differs = pg_sys::SPI_getvalue(*(*table).vals, (*table).tupdesc, 1);
        let differs = if differs.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(differs)
                .to_string_lossy()
                .into_owned()
        };
        Some(
            Column::by_name(&CString::new(differs).unwrap_or_default())
                .map_or(Repeat::Duplicate, Repeat::Conflict),
        )
    }
}

/// Runs the kept plan of `query` (prepared on first use) with `parameters`,
/// none NULL (arrays, mostly), and returns the SPI status. SPI must be connected.
pub fn execute_kept(
    slot: &'static std::thread::LocalKey<Cell<pg_sys::SPIPlanPtr>>,
    query: &str,
    parameters: &[(pg_sys::Datum, pg_sys::Oid)],
) -> i32 {
    let (values, types): (Vec<pg_sys::Datum>, Vec<pg_sys::Oid>) =
        parameters.iter().copied().unzip();
    let plan = kept_plan(slot, query, &types);
    let nulls = vec![b' ' as std::ffi::c_char; values.len() + 1];
    // SAFETY: SPI is connected (the caller's duty); the plan takes
    // `values.len()` parameters of these types, none NULL (the nulls string is
    // all spaces).
    unsafe { pg_sys::SPI_execute_plan(plan, values.as_ptr().cast_mut(), nulls.as_ptr(), false, 0) }
}

/// A plan prepared once per backend and kept (SPI_keepplan).
pub fn kept_plan(
    slot: &'static std::thread::LocalKey<Cell<pg_sys::SPIPlanPtr>>,
    query: &str,
    types: &[pg_sys::Oid],
) -> pg_sys::SPIPlanPtr {
    let cached = slot.with(Cell::get);
    if !cached.is_null() {
        return cached;
    }
    let Ok(query) = CString::new(query) else {
        raise_internal("preparing", "query has a NUL byte")
    };
    // SAFETY: SPI is connected (the caller's duty); the query and types outlive the call.
    unsafe {
        let plan = pg_sys::SPI_prepare(
            query.as_ptr(),
            types.len() as i32,
            types.as_ptr().cast_mut(),
        );
        if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
            raise_internal(
                "preparing",
                format!(
                    "SPI_prepare failed ({})",
                    std::ptr::addr_of!(pg_sys::SPI_result).read()
                ),
            );
        }
        slot.with(|s| s.set(plan));
        plan
    }
}
