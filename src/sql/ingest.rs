//! `metrics_ingest.ingest_json(payload, on_error)`.
//!
//! Written against fmgr directly rather than through pgrx's value-per-call
//! iterator: the function is SECURITY DEFINER with a pinned search_path, and
//! PostgreSQL re-enters such a function (saving and restoring the GUC) once per
//! result row in value-per-call mode. Materialize mode calls it once.

use pgrx::prelude::*;

use pgrx::PgMemoryContexts;

use super::contention::{restarting, Blocker, Contention};
use super::datum::{jsonb_text, text_datum, Column};
use super::errors::{raise, raise_internal, raise_payload, raise_rejection};
use super::registry_cache::registry;
use super::sink::Repeat;
use super::writer::{Path, Writer};
use crate::core::element::{preview_str, validate_read};
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
    const ALL: [Status; 5] = [
        Status::Inserted,
        Status::Duplicate,
        Status::Rejected,
        Status::Skipped,
        Status::Conflict,
    ];

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

/// One element's verdict, in order: its ordinal is its position in the list
/// plus one. Kept to 8 bytes: a 4 MB payload of scalars has 2,000,000
/// elements. A rejection's texts (error, field) go to `RejectionTexts`.
#[derive(Clone, Copy)]
struct Outcome {
    metrics_stored: u32,
    status: Status,
    /// For a conflict: the first column that differs from the stored event.
    differs: Option<Column>,
}

/// The (error, field) texts of the rejected elements, in ordinal order, in a
/// tuplestore: it keeps up to work_mem in memory and spills the rest to a
/// temporary file, so a payload of millions of rejections costs disk, not
/// memory. Read back once, in the same order, when the result is built.
struct RejectionTexts {
    store: *mut pg_sys::Tuplestorestate,
    descriptor: pg_sys::TupleDesc,
    /// Where each row's text datums are built; reset after every row.
    scratch: PgMemoryContexts,
}

impl RejectionTexts {
    fn new() -> RejectionTexts {
        // SAFETY: plain allocations in the current (per-call) memory context,
        // which outlives this value: it is used and dropped within the call.
        unsafe {
            let descriptor = pg_sys::CreateTemplateTupleDesc(2);
            pg_sys::TupleDescInitEntry(descriptor, 1, c"error".as_ptr(), pg_sys::TEXTOID, -1, 0);
            pg_sys::TupleDescInitEntry(descriptor, 2, c"field".as_ptr(), pg_sys::TEXTOID, -1, 0);
            let store = pg_sys::tuplestore_begin_heap(false, false, pg_sys::work_mem);
            RejectionTexts {
                store,
                descriptor,
                scratch: PgMemoryContexts::new("metrics_ingest rejection text"),
            }
        }
    }

    /// Forgets every text pushed: an attempt that gave way starts again.
    fn clear(&mut self) {
        // SAFETY: the store is this value's own, and nothing read from it is kept.
        unsafe { pg_sys::tuplestore_clear(self.store) };
    }

    fn push(&mut self, error: &str, field: &str) {
        let (store, descriptor) = (self.store, self.descriptor);
        // SAFETY: the datums are built in `scratch` and copied by
        // tuplestore_putvalues into the store's own memory (or its temporary
        // file) before `scratch` is reset.
        unsafe {
            self.scratch.switch_to(|_| {
                let mut values = [text_datum(error), text_datum(field)];
                let mut nulls = [false; 2];
                pg_sys::tuplestore_putvalues(
                    store,
                    descriptor,
                    values.as_mut_ptr(),
                    nulls.as_mut_ptr(),
                );
            });
            self.scratch.reset();
        }
    }
}

fn on_error_mode(on_error: Option<&str>) -> OnError {
    match on_error {
        Some("reject") => OnError::Reject,
        Some("stop") => OnError::Stop,
        Some(other) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "on_error must be 'reject' or 'stop', not \"{}\"",
                preview_str(other)
            ),
        ),
        None => raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "on_error must be 'reject' or 'stop', not NULL".into(),
        ),
    }
}

/// For `text` and `json` payloads: parsed once, in place, streaming.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn ingest_json_text_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mode = on_error_mode(pgrx::pg_getarg::<&str>(fcinfo, 1));
    let mut texts = RejectionTexts::new();
    let outcomes = match pgrx::pg_getarg::<&str>(fcinfo, 0) {
        Some(payload) => ingest(payload, mode, &mut texts),
        None => Vec::new(),
    };
    return_outcomes(fcinfo, &outcomes, texts)
}

/// For `jsonb` payloads: jsonb has already merged duplicate keys and refused
/// `\u0000`; its text form goes through the same path as text payloads.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn ingest_json_jsonb_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let mode = on_error_mode(pgrx::pg_getarg::<&str>(fcinfo, 1));
    let mut texts = RejectionTexts::new();
    let outcomes = match pgrx::pg_getarg_datum(fcinfo, 0) {
        Some(datum) => ingest(&jsonb_text(datum), mode, &mut texts),
        None => Vec::new(),
    };
    return_outcomes(fcinfo, &outcomes, texts)
}

/// Stores a payload: attempts of `attempt` until one completes (see
/// contention.rs: an attempt that gives way to an older transaction is rolled
/// back and made again once that transaction has ended).
fn ingest(payload: &str, mode: OnError, texts: &mut RejectionTexts) -> Vec<Outcome> {
    restarting(|contention| {
        texts.clear();
        attempt(payload, mode, texts, contention)
    })
}

fn attempt(
    payload: &str,
    mode: OnError,
    texts: &mut RejectionTexts,
    contention: &Contention,
) -> Result<Vec<Outcome>, Blocker> {
    let registry = registry();
    let mut writer = Writer::open(Path::Bulk, registry.profiles(), contention);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let read = for_each_element(payload, |ordinal, raw, read| {
        if writer.gave_way().is_some() {
            // This attempt is rolled back and made again: the rest is read only.
            return;
        }
        let stored = validate_read(raw, read, &registry)
            .and_then(|element| writer.check_retention(&element).map(|()| element))
            .and_then(|element| writer.store(ordinal, &element));
        match stored {
            Ok(stored) => {
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
                    status,
                    metrics_stored: stored.inserted,
                    differs: stored.conflict,
                });
            }
            Err(rejection) => {
                if mode == OnError::Stop {
                    raise_rejection(&rejection, Some(ordinal));
                }
                writer.reject(ordinal, raw, &rejection);
                texts.push(&rejection.to_string(), &rejection.field);
                outcomes.push(Outcome {
                    status: Status::Rejected,
                    metrics_stored: 0,
                    differs: None,
                });
            }
        }
    });
    if let Err(error) = read {
        raise_payload(&error);
    }
    for (ordinal, repeat) in writer.finish()? {
        // A row found at flush time to repeat a stored event: the element stored
        // fewer rows than it was credited with; none at all makes it a duplicate.
        // Ordinals are the positions in `outcomes`, one outcome per element.
        if let Some(outcome) = outcomes.get_mut(ordinal - 1) {
            outcome.metrics_stored = outcome.metrics_stored.saturating_sub(1);
            match repeat {
                Repeat::Conflict(column) if outcome.status != Status::Conflict => {
                    outcome.status = Status::Conflict;
                    outcome.differs = Some(column);
                }
                Repeat::Duplicate
                    if outcome.metrics_stored == 0 && outcome.status == Status::Inserted =>
                {
                    outcome.status = Status::Duplicate;
                }
                Repeat::Skipped
                    if outcome.metrics_stored == 0 && outcome.status == Status::Inserted =>
                {
                    outcome.status = Status::Skipped;
                }
                _ => {}
            }
        }
    }
    Ok(outcomes)
}

/// The error text of a conflicting repeat whose `column` differs.
fn conflict_error(column: Column) -> String {
    format!(
        "{}: differs from the stored event with this event_id; nothing was stored for it",
        column.name()
    )
}

unsafe fn return_outcomes(
    fcinfo: pg_sys::FunctionCallInfo,
    outcomes: &[Outcome],
    texts: RejectionTexts,
) -> pg_sys::Datum {
    pg_sys::InitMaterializedSRF(fcinfo, 0);
    let result_info = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
    let (store, descriptor) = ((*result_info).setResult, (*result_info).setDesc);
    // The statuses are built once; a rejection's texts are read back, in
    // order, from `texts` (whose slot holds them until the next read); a
    // conflict's are built from its column, in a context reset after each.
    let statuses = Status::ALL.map(|s| (s, text_datum(s.as_str())));
    let mut conflict_memory = PgMemoryContexts::new("metrics_ingest conflict text");
    let slot = pg_sys::MakeSingleTupleTableSlot(texts.descriptor, &pg_sys::TTSOpsMinimalTuple);
    for (index, outcome) in outcomes.iter().enumerate() {
        let (error, field) = if outcome.status == Status::Rejected {
            // SAFETY: one text row was pushed per rejected outcome, in this order;
            // copy = false keeps the tuple in the store until the next read,
            // after tuplestore_putvalues below has copied it.
            if !pg_sys::tuplestore_gettupleslot(texts.store, true, false, slot) {
                raise_internal("rejection texts", "fewer than the rejected elements");
            }
            pg_sys::slot_getallattrs(slot);
            let values = std::slice::from_raw_parts((*slot).tts_values, 2);
            (Some(values[0]), Some(values[1]))
        } else if let Some(column) = outcome.differs {
            pg_sys::MemoryContextReset(conflict_memory.value());
            conflict_memory.switch_to(|_| {
                (
                    Some(text_datum(&conflict_error(column))),
                    Some(text_datum(column.name())),
                )
            })
        } else {
            (None, None)
        };
        let status = statuses
            .iter()
            .find(|(s, _)| *s == outcome.status)
            .map(|(_, d)| *d);
        let columns = [
            // A payload is under 1 GB, so it has fewer than 2^31 elements.
            Some(pg_sys::Datum::from(
                i32::try_from(index + 1).unwrap_or(i32::MAX),
            )),
            status,
            error,
            field,
            Some(pg_sys::Datum::from(outcome.metrics_stored as i32)),
        ];
        let mut values = columns.map(|c| c.unwrap_or(pg_sys::Datum::from(0)));
        let mut nulls = columns.map(|c| c.is_none());
        pg_sys::tuplestore_putvalues(store, descriptor, values.as_mut_ptr(), nulls.as_mut_ptr());
    }
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::tuplestore_end(texts.store);
    pg_sys::Datum::from(0)
}
