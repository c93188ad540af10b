//! Storing validated elements and rejected ones.
//!
//! Rows go in through the direct path (`direct`) when the table allows it:
//! buffered multi-inserts for ingest_json, one row at a time for
//! insert_metric. Otherwise they go in through a kept SPI plan (`INSERT ... ON
//! CONFLICT DO NOTHING` for rows with an event_id), so PostgreSQL itself
//! enforces every constraint, default, trigger and the idempotency index.

use std::cell::Cell;
use std::ffi::{c_char, CString};

use pgrx::pg_sys;

use super::direct::{Buffered, DirectTable};
use super::errors::raise_internal;
use crate::core::element::{rejected_ids, Context, Measurement, ValidElement};
use crate::core::error::Rejection;
use crate::core::timestamp::PG_EPOCH_OFFSET_US;

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
// Only rows with an event_id can conflict; the others skip speculative insertion.
const INSERT_METRIC: &str = insert_metric!("");
const INSERT_EVENT: &str = insert_metric!(" ON CONFLICT DO NOTHING");
const INSERT_METRIC_TYPES: [pg_sys::Oid; 12] = [
    pg_sys::TIMESTAMPTZOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::FLOAT8OID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::FLOAT8OID,
    pg_sys::TEXTOID,
    pg_sys::JSONBOID,
];

/// A dead letter. An element with a readable event_id is kept once per exact
/// text (the unique index rejected_event_key on (event_id, md5(element))): the
/// same bad element sent again conflicts and adds nothing. Without an event_id
/// nothing can conflict, and every copy is kept.
const INSERT_REJECTED: &str = "INSERT INTO metrics_ingest.rejected \
    (source, ordinal, element, field, error, sqlstate, user_id, event_id) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING";
/// The dead-letter insert of a 0.1.x catalog, whose `rejected` has no user_id or
/// event_id yet: the library is replaced before `ALTER EXTENSION ... UPDATE` runs,
/// and must keep working in between. It takes the first six parameters.
const INSERT_REJECTED_0_1: &str = "INSERT INTO metrics_ingest.rejected \
    (source, ordinal, element, field, error, sqlstate) VALUES ($1, $2, $3, $4, $5, $6)";
const INSERT_REJECTED_TYPES: [pg_sys::Oid; 8] = [
    pg_sys::TEXTOID,
    pg_sys::INT4OID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
];

thread_local! {
    // Prepared once per backend and kept: the plan cache replans them if the table changes.
    static METRIC_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static EVENT_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static REJECTED_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static REJECTED_PLAN_0_1: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

/// Open for the duration of one SQL call: holds the direct path (or, when
/// needed, an SPI connection) and a memory context reset after every row, so a
/// 100,000-element call runs in constant memory.
pub struct Writer {
    row_context: pg_sys::MemoryContext,
    caller_context: pg_sys::MemoryContext,
    direct: Option<DirectTable>,
    path: Path,
    /// SPI is connected on first need: the direct path does without it.
    spi_connected: bool,
}

/// Which kind of call is writing.
#[derive(Clone, Copy, PartialEq)]
pub enum Path {
    /// Batches: rows are buffered for multi-inserts.
    Bulk,
    /// One event: written at once.
    Single,
}

impl Writer {
    pub fn open(path: Path) -> Writer {
        unsafe {
            let caller_context = pg_sys::CurrentMemoryContext;
            let row_context = pg_sys::AllocSetContextCreateExtended(
                caller_context,
                c"metrics_ingest row".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let direct = DirectTable::open(path == Path::Bulk);
            Writer {
                row_context,
                caller_context,
                direct,
                path,
                spi_connected: false,
            }
        }
    }

    fn connect_spi(&mut self) {
        if self.spi_connected {
            return;
        }
        unsafe {
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                raise_internal("SPI_connect", "failed");
            }
            // SPI_finish will come back here; meanwhile our allocations stay ours.
            pg_sys::MemoryContextSwitchTo(self.caller_context);
        }
        self.spi_connected = true;
    }

    /// Stores an element's rows; returns how many were new (the others were
    /// duplicates of stored events).
    pub fn store(&mut self, ordinal: usize, element: &ValidElement) -> u32 {
        let mut inserted = 0;
        if let Some(direct) = self.direct.as_mut() {
            if self.path == Path::Bulk {
                direct.make_room(&element.measurements);
            }
            let attributes = element.context.attributes.as_deref().map(|a| unsafe {
                let old = pg_sys::MemoryContextSwitchTo(direct.batch_context());
                let datum = jsonb_datum(a);
                pg_sys::MemoryContextSwitchTo(old);
                datum
            });
            for measurement in &element.measurements {
                let written = match self.path {
                    Path::Bulk => direct.buffer(ordinal, &element.context, measurement, attributes),
                    Path::Single => direct.insert_now(&element.context, measurement, attributes),
                };
                if let Buffered::Inserted = written {
                    inserted += 1;
                }
            }
            return inserted;
        }
        self.connect_spi();
        let plan = match element.context.event_id {
            Some(_) => kept_plan(&EVENT_PLAN, INSERT_EVENT, &INSERT_METRIC_TYPES),
            None => kept_plan(&METRIC_PLAN, INSERT_METRIC, &INSERT_METRIC_TYPES),
        };
        unsafe {
            pg_sys::MemoryContextSwitchTo(self.row_context);
            let attributes = element
                .context
                .attributes
                .as_deref()
                .map(|a| jsonb_datum(a));
            for measurement in &element.measurements {
                let row = MetricRow::new(&element.context, measurement, attributes);
                let status = pg_sys::SPI_execute_plan(
                    plan,
                    row.values.as_ptr().cast_mut(),
                    row.nulls.as_ptr(),
                    false,
                    0,
                );
                if status != pg_sys::SPI_OK_INSERT as i32 {
                    raise_internal("inserting a metric", format!("SPI status {status}"));
                }
                // ON CONFLICT DO NOTHING inserted nothing: a duplicate.
                if pg_sys::SPI_processed == 1 {
                    inserted += 1;
                }
            }
            pg_sys::MemoryContextSwitchTo(self.caller_context);
            pg_sys::MemoryContextReset(self.row_context);
        }
        inserted
    }

    /// Keeps a refused element in `rejected`, with its user_id and event_id when
    /// they can be read. Returns false when it was there already (the same
    /// element, with an event_id, sent before).
    pub fn reject(
        &mut self,
        source: &str,
        ordinal: usize,
        element: &str,
        rejection: &Rejection,
    ) -> bool {
        self.connect_spi();
        let with_ids = rejected_has_ids();
        let plan = if with_ids {
            kept_plan(&REJECTED_PLAN, INSERT_REJECTED, &INSERT_REJECTED_TYPES)
        } else {
            kept_plan(
                &REJECTED_PLAN_0_1,
                INSERT_REJECTED_0_1,
                &INSERT_REJECTED_TYPES[..6],
            )
        };
        let ids = rejected_ids(element);
        // SAFETY: SPI is connected (connect_spi above) and the plan is kept; every
        // datum is built in row_context, which outlives the call and is reset after
        // it, once we are back in the caller's context.
        unsafe {
            pg_sys::MemoryContextSwitchTo(self.row_context);
            let optional = |value: Option<&str>| match value {
                Some(text) => (text_datum(text), b' ' as c_char),
                None => (pg_sys::Datum::from(0), b'n' as c_char),
            };
            let (user_id, user_id_null) = optional(ids.user_id.as_deref());
            let (event_id, event_id_null) = optional(ids.event_id.as_deref());
            let values = [
                text_datum(source),
                pg_sys::Datum::from(i32::try_from(ordinal).unwrap_or(i32::MAX)),
                text_datum(element),
                text_datum(&rejection.field),
                text_datum(&rejection.message),
                text_datum(rejection.kind.sqlstate()),
                user_id,
                event_id,
            ];
            let blank = b' ' as c_char;
            let nulls = [
                blank,
                blank,
                blank,
                blank,
                blank,
                blank,
                user_id_null,
                event_id_null,
            ];
            let status = pg_sys::SPI_execute_plan(
                plan,
                values.as_ptr().cast_mut(),
                nulls.as_ptr(),
                false,
                0,
            );
            if status != pg_sys::SPI_OK_INSERT as i32 {
                raise_internal("inserting into rejected", format!("SPI status {status}"));
            }
            let stored = pg_sys::SPI_processed == 1;
            pg_sys::MemoryContextSwitchTo(self.caller_context);
            pg_sys::MemoryContextReset(self.row_context);
            stored
        }
    }

    /// Returns the ordinals of elements one of whose rows turned out, at
    /// flush time, to be a duplicate after all (one entry per such row).
    pub fn finish(self) -> Vec<usize> {
        let late_duplicates = self.direct.map(DirectTable::close).unwrap_or_default();
        unsafe {
            pg_sys::MemoryContextDelete(self.row_context);
            if self.spi_connected {
                pg_sys::SPI_finish();
            }
        }
        late_duplicates
    }
}

/// Whether `metrics_ingest.rejected` has the columns of 0.2.0 (user_id, event_id;
/// the upgrade adds them with the unique index rejected_event_key). False between
/// installing this library and `ALTER EXTENSION metrics_ingest UPDATE` from 0.1.x,
/// when dead letters are written as 0.1.x wrote them. Three syscache lookups.
fn rejected_has_ids() -> bool {
    // SAFETY: syscache lookups by static NUL-terminated names; nothing is kept.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"metrics_ingest".as_ptr(), true);
        let relid = pg_sys::get_relname_relid(c"rejected".as_ptr(), namespace);
        relid != pg_sys::InvalidOid
            && pg_sys::get_attnum(relid, c"event_id".as_ptr())
                != pg_sys::InvalidAttrNumber as pg_sys::AttrNumber
    }
}

/// One metric row's parameters, in INSERT_METRIC's order.
struct MetricRow {
    values: [pg_sys::Datum; 12],
    nulls: [c_char; 12],
}

impl MetricRow {
    unsafe fn new(
        context: &Context,
        measurement: &Measurement,
        attributes: Option<pg_sys::Datum>,
    ) -> MetricRow {
        let mut row = MetricRow {
            values: [pg_sys::Datum::from(0); 12],
            nulls: [b' ' as c_char; 12],
        };
        for (i, column) in supplied_values(context, measurement, attributes)
            .into_iter()
            .enumerate()
        {
            match column {
                Some(datum) => row.values[i] = datum,
                None => row.nulls[i] = b'n' as c_char,
            }
        }
        row
    }
}

/// The values of the columns we supply, in INSERT_METRIC's order (None is NULL).
/// Text datums are allocated in the current memory context.
pub unsafe fn supplied_values(
    context: &Context,
    measurement: &Measurement,
    attributes: Option<pg_sys::Datum>,
) -> [Option<pg_sys::Datum>; 12] {
    let [user_id, session_id, metric_type, metric_label, device_id, app_version, location, event_id] =
        text_datums([
            Some(context.user_id.as_str()),
            context.session_id.as_deref(),
            Some(measurement.metric_type.as_str()),
            measurement.label.as_deref(),
            context.device_id.as_deref(),
            context.app_version.as_deref(),
            context.location.as_deref(),
            context.event_id.as_deref(),
        ]);
    [
        Some(pg_sys::Datum::from(context.unix_us - PG_EPOCH_OFFSET_US)),
        user_id,
        session_id,
        metric_type,
        Some(float8_datum(measurement.value)),
        metric_label,
        device_id,
        app_version,
        location,
        context.sentiment_score.map(float8_datum),
        event_id,
        attributes,
    ]
}

/// Text datums for several strings from one palloc: a row's text columns cost
/// one allocation, and one call into PostgreSQL, instead of one each. The
/// strings are validated ids and labels, far below varlena's 1 GB limit.
unsafe fn text_datums<const N: usize>(values: [Option<&str>; N]) -> [Option<pg_sys::Datum>; N] {
    const HEADER: usize = pg_sys::VARHDRSZ;
    // Each datum starts on a 4-byte boundary, as its 4-byte header requires.
    let padded = |len: usize| (HEADER + len + 3) & !3;
    let mut out = [None; N];
    let total: usize = values.iter().flatten().map(|s| padded(s.len())).sum();
    if total == 0 {
        return out;
    }
    let base = pg_sys::palloc(total).cast::<u8>();
    let mut offset = 0;
    for (slot, value) in out.iter_mut().zip(values) {
        if let Some(text) = value {
            let datum = base.add(offset);
            pgrx::varlena::set_varsize_4b(datum.cast(), (HEADER + text.len()) as i32);
            std::ptr::copy_nonoverlapping(text.as_ptr(), datum.add(HEADER), text.len());
            *slot = Some(pg_sys::Datum::from(datum));
            offset += padded(text.len());
        }
    }
    out
}

fn kept_plan(
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

pub unsafe fn text_datum(value: &str) -> pg_sys::Datum {
    pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
        value.as_ptr() as *const c_char,
        value.len() as i32,
    ))
}

fn float8_datum(value: f64) -> pg_sys::Datum {
    pg_sys::Datum::from(value.to_bits())
}

/// The core already refused NUL characters, so the CString cannot fail in practice.
unsafe fn jsonb_datum(json: &str) -> pg_sys::Datum {
    let Ok(cstring) = CString::new(json) else {
        raise_internal("attributes", "NUL byte")
    };
    pgrx::direct_function_call_as_datum(
        pg_sys::jsonb_in,
        &[Some(pg_sys::Datum::from(cstring.as_ptr()))],
    )
    .unwrap_or_else(|| raise_internal("attributes", "jsonb_in returned NULL"))
}

/// jsonb's text form through jsonb_out: no serde_json value in between, so no
/// nesting limit is hit before the core sees (and judges) the text.
pub unsafe fn jsonb_text(datum: pg_sys::Datum) -> String {
    let text = pgrx::direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(datum)])
        .unwrap_or_else(|| raise_internal("jsonb_out", "returned NULL"));
    let cstring = std::ffi::CStr::from_ptr(text.cast_mut_ptr::<c_char>());
    let owned = cstring.to_string_lossy().into_owned();
    pg_sys::pfree(text.cast_mut_ptr());
    owned
}
