//! `metrics_ingest.ingest_json(payload, on_error)`.
//!
//! Written against fmgr directly rather than through pgrx's value-per-call
//! iterator: the function is SECURITY DEFINER with a pinned search_path, and
//! PostgreSQL re-enters such a function (saving and restoring the GUC) once per
//! result row in value-per-call mode. Materialize mode calls it once.

use pgrx::prelude::*;

use super::datum::{jsonb_text, text_datum, Column};
use super::errors::{raise, raise_payload, raise_rejection};
use super::registry_cache::registry;
use super::sink::Repeat;
use super::writer::{Path, Writer};
use crate::core::element::validate_json_element;
use crate::core::payload::for_each_element;

#[derive(Clone, Copy, PartialEq)]
enum OnError {
    Reject,
    Stop,
}

#[derive(Clone, Copy, PartialEq)]
enum Status {
    Inserted,
    Duplicate,
    Rejected,
    /// A trigger or rule on metrics kept every row out (INSERT path only).
    Skipped,
    /// The event is stored with other values; this repeat stored nothing.
    Conflict,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Inserted => "inserted",
            Status::Duplicate => "duplicate",
            Status::Rejected => "rejected",
            Status::Skipped => "skipped",
            Status::Conflict => "conflict",
        }
    }
}

/// One row of the result, in order: ordinal, status, error, field, metrics_stored.
/// Kept small (16 bytes): a batch of a million elements holds a million of them.
struct Outcome {
    ordinal: u32,
    metrics_stored: u32,
    status: Status,
    /// (error, field), for rejected elements only.
    rejection: Option<Box<(String, String)>>,
}

fn on_error_mode(on_error: Option<&str>) -> OnError {
    match on_error {
        Some("reject") => OnError::Reject,
        Some("stop") => OnError::Stop,
        Some(other) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("on_error must be 'reject' or 'stop', not {:?}", other),
        ),
        None => raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "on_error must be 'reject' or 'stop', not NULL".into(),
        ),
    }
}

pub(super) static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };

#[no_mangle]
pub extern "C" fn pg_finfo_ingest_json_text_wrapper() -> &'static pg_sys::Pg_finfo_record {
    &V1
}

#[no_mangle]
pub extern "C" fn pg_finfo_ingest_json_jsonb_wrapper() -> &'static pg_sys::Pg_finfo_record {
    &V1
}

/// For `text` and `json` payloads: parsed once, in place, streaming.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn ingest_json_text_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mode = on_error_mode(pgrx::pg_getarg::<&str>(fcinfo, 1));
    let outcomes = match pgrx::pg_getarg::<&str>(fcinfo, 0) {
        Some(payload) => ingest(payload, mode),
        None => Vec::new(),
    };
    return_outcomes(fcinfo, &outcomes)
}

/// For `jsonb` payloads: jsonb has already merged duplicate keys and refused
/// `\u0000`; its text form goes through the same path as text payloads.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn ingest_json_jsonb_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mode = on_error_mode(pgrx::pg_getarg::<&str>(fcinfo, 1));
    let outcomes = match pgrx::pg_getarg_datum(fcinfo, 0) {
        Some(datum) => ingest(&jsonb_text(datum), mode),
        None => Vec::new(),
    };
    return_outcomes(fcinfo, &outcomes)
}

fn ingest(payload: &str, mode: OnError) -> Vec<Outcome> {
    let registry = registry();
    let mut writer = Writer::open(Path::Bulk);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let read = for_each_element(payload, |ordinal, raw| {
        let validated = validate_json_element(raw, &registry)
            .and_then(|element| writer.check_retention(&element).map(|()| element));
        match validated {
            Ok(element) => {
                let stored = writer.store(ordinal, &element);
                let status = if stored.conflict.is_some() {
                    Status::Conflict
                } else if stored.inserted > 0 {
                    Status::Inserted
                } else if stored.duplicate > 0 {
                    Status::Duplicate
                } else {
                    Status::Skipped
                };
                outcomes.push(Outcome {
                    // A payload is under 1 GB, so it has fewer than 2^32 elements.
                    ordinal: ordinal as u32,
                    status,
                    rejection: stored.conflict.map(conflict_report),
                    metrics_stored: stored.inserted,
                });
            }
            Err(rejection) => {
                if mode == OnError::Stop {
                    raise_rejection(&rejection, Some(ordinal));
                }
                writer.reject("ingest_json", ordinal, raw, &rejection);
                let reported = Box::new((rejection.to_string(), rejection.field));
                outcomes.push(Outcome {
                    ordinal: ordinal as u32,
                    status: Status::Rejected,
                    rejection: Some(reported),
                    metrics_stored: 0,
                });
            }
        }
    });
    if let Err(error) = read {
        raise_payload(&error);
    }
    for (ordinal, repeat) in writer.finish() {
        // A row found at flush time to repeat a stored event: the element stored
        // fewer rows than it was credited with; none at all makes it a duplicate.
        // Ordinals are the positions in `outcomes`, one outcome per element.
        if let Some(outcome) = outcomes.get_mut(ordinal - 1) {
            outcome.metrics_stored = outcome.metrics_stored.saturating_sub(1);
            if let Repeat::Conflict(column) = repeat {
                if outcome.status != Status::Conflict {
                    outcome.status = Status::Conflict;
                    outcome.rejection = Some(conflict_report(column));
                }
            } else if outcome.metrics_stored == 0 && outcome.status == Status::Inserted {
                outcome.status = Status::Duplicate;
            }
        }
    }
    outcomes
}

/// (error, field) of a conflicting repeat.
fn conflict_report(column: Column) -> Box<(String, String)> {
    Box::new((
        format!(
            "{}: differs from the stored event with this event_id; nothing was stored for it",
            column.name()
        ),
        column.name().to_string(),
    ))
}

unsafe fn return_outcomes(fcinfo: pg_sys::FunctionCallInfo, outcomes: &[Outcome]) -> pg_sys::Datum {
    pg_sys::InitMaterializedSRF(fcinfo, 0);
    let result_info = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
    let (store, descriptor) = ((*result_info).setResult, (*result_info).setDesc);
    // tuplestore_putvalues copies each row, so its text datums can go right after.
    let row_context = pg_sys::AllocSetContextCreateExtended(
        pg_sys::CurrentMemoryContext,
        c"metrics_ingest outcome".as_ptr(),
        pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
        pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
        pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
    );
    // The three statuses are built once; only a rejection has text of its own.
    let statuses = [
        Status::Inserted,
        Status::Duplicate,
        Status::Rejected,
        Status::Skipped,
    ]
    .map(|s| (s, text_datum(s.as_str())));
    let caller_context = pg_sys::MemoryContextSwitchTo(row_context);
    for outcome in outcomes {
        let (error, field) = match outcome.rejection.as_deref() {
            Some((error, field)) => (Some(text_datum(error)), Some(text_datum(field))),
            None => (None, None),
        };
        let status = statuses
            .iter()
            .find(|(s, _)| *s == outcome.status)
            .map(|(_, d)| *d);
        let columns = [
            Some(pg_sys::Datum::from(
                i32::try_from(outcome.ordinal).unwrap_or(i32::MAX),
            )),
            status,
            error,
            field,
            Some(pg_sys::Datum::from(outcome.metrics_stored as i32)),
        ];
        let mut values = columns.map(|c| c.unwrap_or(pg_sys::Datum::from(0)));
        let mut nulls = columns.map(|c| c.is_none());
        pg_sys::tuplestore_putvalues(store, descriptor, values.as_mut_ptr(), nulls.as_mut_ptr());
        if outcome.rejection.is_some() {
            pg_sys::MemoryContextReset(row_context);
        }
    }
    pg_sys::MemoryContextSwitchTo(caller_context);
    pg_sys::MemoryContextDelete(row_context);
    pg_sys::Datum::from(0)
}
