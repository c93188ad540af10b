//! The set-wise INSERT path, for a Citus-distributed metrics table: rows are
//! buffered and written by one `INSERT ... SELECT ... FROM unnest(...)` per
//! buffer, which Citus routes to the shards in one statement, where one INSERT
//! per row would cost a round trip to a worker each.
//!
//! The statement is `ON CONFLICT DO NOTHING ... RETURNING` the keys of the rows
//! it stored. A buffered row that is not among them is settled one by one on
//! the row-wise INSERT path, which tells a duplicate from a conflict and from a
//! row a trigger kept out; its verdict reaches the caller when the writer
//! finishes, as the fast path's late repeats do.

use std::collections::HashMap;
use std::ffi::c_char;

use pgrx::{pg_sys, IntoDatum, PgMemoryContexts};

use super::errors::raise_internal;
use super::insert_path::{kept_plan, InsertPath};
use super::sink::{LateRepeat, Repeat, Sink, Stored};
use crate::core::element::{Context, Measurement, ValidElement};
use crate::core::error::Rejection;

/// Rows per statement.
const MAX_BUFFERED: usize = 1000;

const INSERT_SET: &str = "INSERT INTO metrics_ingest.metrics (\"timestamp\", user_id, session_id, \
     metric_type, metric_value, metric_label, device_id, app_version, location, sentiment_score, \
     event_id, attributes) \
     SELECT t::pg_catalog.timestamptz, u, s, mt, mv, ml, d, av, l, ss, e, a::pg_catalog.jsonb \
     FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), \
       pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7), \
       pg_catalog.unnest($8), pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11), \
       pg_catalog.unnest($12)) AS x(t, u, s, mt, mv, ml, d, av, l, ss, e, a) \
     ON CONFLICT DO NOTHING \
     RETURNING user_id, event_id, metric_type, \
       pg_catalog.to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')";

thread_local! {
    static SET_PLAN: std::cell::Cell<pg_sys::SPIPlanPtr> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// `$1..$12`: text[] for every column but the two numbers (float8[]); the
/// timestamp goes as exact text with a UTC offset, the attributes as JSON text.
fn parameter_types() -> [pg_sys::Oid; 12] {
    let (text, float8) = (pg_sys::TEXTARRAYOID, pg_sys::FLOAT8ARRAYOID);
    [
        text, text, text, text, float8, text, text, text, text, float8, text, text,
    ]
}

struct Row {
    ordinal: usize,
    /// The measurement's index in its element.
    index: usize,
    context: Context<'static>,
    measurement: Measurement,
}

/// (user_id, event_id, metric_type, timestamp text): a stored row's key.
type Key = (String, Option<String>, String, String);

pub struct SetwiseInsert {
    rows: Vec<Row>,
    /// Settles the rows the statement did not store.
    row_wise: InsertPath,
    late: Vec<LateRepeat>,
    memory: PgMemoryContexts,
}

impl SetwiseInsert {
    pub fn new() -> SetwiseInsert {
        SetwiseInsert {
            rows: Vec::with_capacity(MAX_BUFFERED),
            row_wise: InsertPath::new(false),
            late: Vec::new(),
            memory: PgMemoryContexts::new("metrics_ingest set-wise insert"),
        }
    }

    fn flush(&mut self) {
        if self.rows.is_empty() {
            return;
        }
        let mut stored = self.write();
        let rows = std::mem::take(&mut self.rows);
        for row in rows {
            let key = key_of(&row.context, &row.measurement);
            if let Some(n) = stored.get_mut(&key).filter(|n| **n > 0) {
                *n -= 1;
                continue;
            }
            // Not stored by the statement: a repeat, a conflict, or a row a trigger
            // kept out. The row-wise path says which (and stores it if it can now).
            let single = ValidElement {
                context: row.context,
                measurements: vec![row.measurement],
            };
            let fate = self.row_wise.insert(&single);
            let repeat = if let Some(column) = fate.conflict {
                Some(Repeat::Conflict(column))
            } else if fate.duplicate > 0 {
                Some(Repeat::Duplicate)
            } else if fate.skipped > 0 {
                Some(Repeat::Skipped)
            } else {
                None
            };
            if let Some(repeat) = repeat {
                self.late.push(LateRepeat {
                    ordinal: row.ordinal,
                    measurement: row.index,
                    repeat,
                });
            }
        }
    }

    /// The statement; returns how many rows it stored per key.
    fn write(&mut self) -> HashMap<Key, usize> {
        let plan = kept_plan(&SET_PLAN, INSERT_SET, &parameter_types());
        let rows = &self.rows;
        let text = |f: &dyn Fn(&Row) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
        let number = |f: &dyn Fn(&Row) -> Option<f64>| rows.iter().map(f).collect::<Vec<_>>();
        // SAFETY: the array datums are built in `memory`, which outlives the SPI
        // call and is reset after the returned keys are copied out.
        unsafe {
            let values = self.memory.switch_to(|_| {
                [
                    text(&|r| Some(timestamp_text(r.context.unix_us))).into_datum(),
                    text(&|r| Some(r.context.user_id.to_string())).into_datum(),
                    text(&|r| r.context.session_id.as_deref().map(str::to_string)).into_datum(),
                    text(&|r| Some(r.measurement.metric_type.clone())).into_datum(),
                    number(&|r| Some(r.measurement.value)).into_datum(),
                    text(&|r| r.measurement.label.clone()).into_datum(),
                    text(&|r| r.context.device_id.as_deref().map(str::to_string)).into_datum(),
                    text(&|r| r.context.app_version.as_deref().map(str::to_string)).into_datum(),
                    text(&|r| r.context.location.as_deref().map(str::to_string)).into_datum(),
                    number(&|r| r.context.sentiment_score).into_datum(),
                    text(&|r| r.context.event_id.as_deref().map(str::to_string)).into_datum(),
                    text(&|r| r.context.attributes.clone()).into_datum(),
                ]
                .map(|d| d.unwrap_or_else(|| raise_internal("set-wise insert", "no array")))
            });
            let nulls = [b' ' as c_char; 12];
            let status = pg_sys::SPI_execute_plan(
                plan,
                values.as_ptr().cast_mut(),
                nulls.as_ptr(),
                false,
                0,
            );
            if status != pg_sys::SPI_OK_INSERT_RETURNING as i32
                && status != pg_sys::SPI_OK_REWRITTEN as i32
            {
                raise_internal("set-wise insert", format!("SPI status {status}"));
            }
            let mut stored = HashMap::new();
            let table = pg_sys::SPI_tuptable;
            if status == pg_sys::SPI_OK_INSERT_RETURNING as i32 && !table.is_null() {
                for i in 0..pg_sys::SPI_processed as usize {
                    let tuple = *(*table).vals.add(i);
                    let column = |n: i32| {
                        let value = pg_sys::SPI_getvalue(tuple, (*table).tupdesc, n);
                        (!value.is_null()).then(|| {
                            std::ffi::CStr::from_ptr(value)
                                .to_string_lossy()
                                .into_owned()
                        })
                    };
                    let key = (
                        column(1).unwrap_or_default(),
                        column(2),
                        column(3).unwrap_or_default(),
                        column(4).unwrap_or_default(),
                    );
                    *stored.entry(key).or_insert(0) += 1;
                }
            }
            pg_sys::MemoryContextReset(self.memory.value());
            stored
        }
    }
}

fn key_of(context: &Context, measurement: &Measurement) -> Key {
    let text = timestamp_text(context.unix_us);
    (
        context.user_id.to_string(),
        context.event_id.as_deref().map(str::to_string),
        measurement.metric_type.clone(),
        text[..26].to_string(),
    )
}

/// `YYYY-MM-DD HH:MM:SS.ffffff+00`: exact, whatever the session's settings.
fn timestamp_text(unix_us: i64) -> String {
    let seconds = unix_us.div_euclid(1_000_000);
    let micros = unix_us.rem_euclid(1_000_000);
    let time = chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_else(|| raise_internal("set-wise insert", "timestamp out of range"));
    format!("{}.{micros:06}+00", time.format("%Y-%m-%d %H:%M:%S"))
}

impl Sink for SetwiseInsert {
    fn put(&mut self, ordinal: usize, element: &ValidElement) -> Result<Stored, Rejection> {
        if self.rows.len() + element.measurements.len() > MAX_BUFFERED {
            self.flush();
        }
        for (index, measurement) in element.measurements.iter().enumerate() {
            self.rows.push(Row {
                ordinal,
                index,
                context: element.context.clone().into_owned(),
                measurement: measurement.clone(),
            });
        }
        Ok(Stored {
            inserted: element.measurements.len() as u32,
            ..Stored::default()
        })
    }

    fn finish(mut self: Box<Self>) -> Vec<LateRepeat> {
        self.flush();
        std::mem::take(&mut self.late)
    }
}
