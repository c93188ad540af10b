//! `metrics_ingest.ingest_json(payload, on_error)`.

use pgrx::prelude::*;

use super::errors::{raise, raise_payload, raise_rejection};
use super::registry_cache::registry;
use super::writer::{Path, Writer};
use crate::core::element::validate_json_element;
use crate::core::payload::for_each_element;

/// One row of ingest_json's result: ordinal, status, error, field, metrics_stored.
type Outcome = (i32, &'static str, Option<String>, Option<String>, i32);

#[derive(Clone, Copy, PartialEq)]
enum OnError {
    Reject,
    Stop,
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

/// For `text` and `json` payloads: parsed once, in place, streaming.
#[pg_extern(sql = false)]
fn ingest_json_text(
    payload: Option<&str>,
    on_error: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(ordinal, i32),
        name!(status, &'static str),
        name!(error, Option<String>),
        name!(field, Option<String>),
        name!(metrics_stored, i32),
    ),
> {
    let mode = on_error_mode(on_error);
    match payload {
        None => TableIterator::empty(),
        Some(payload) => TableIterator::new(ingest(payload, mode)),
    }
}

/// For `jsonb` payloads: jsonb has already merged duplicate keys and refused
/// `\u0000`; its text form goes through the same path as text payloads.
#[pg_extern(sql = false)]
fn ingest_json_jsonb(
    payload: Option<pgrx::JsonB>,
    on_error: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(ordinal, i32),
        name!(status, &'static str),
        name!(error, Option<String>),
        name!(field, Option<String>),
        name!(metrics_stored, i32),
    ),
> {
    let mode = on_error_mode(on_error);
    match payload {
        None => TableIterator::empty(),
        Some(pgrx::JsonB(value)) => TableIterator::new(ingest(&value.to_string(), mode)),
    }
}

fn ingest(payload: &str, mode: OnError) -> Vec<Outcome> {
    let registry = registry();
    let mut writer = Writer::open(Path::Bulk);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let read = for_each_element(payload, |ordinal, raw| {
        let ordinal_i32 = i32::try_from(ordinal).unwrap_or(i32::MAX);
        match validate_json_element(raw, &registry) {
            Ok(element) => {
                let stored = writer.store(ordinal, &element);
                let status = if stored.inserted > 0 {
                    "inserted"
                } else {
                    "duplicate"
                };
                outcomes.push((ordinal_i32, status, None, None, stored.inserted as i32));
            }
            Err(rejection) => {
                if mode == OnError::Stop {
                    raise_rejection(&rejection, Some(ordinal));
                }
                writer.reject("ingest_json", ordinal, raw, &rejection);
                outcomes.push((
                    ordinal_i32,
                    "rejected",
                    Some(rejection.to_string()),
                    Some(rejection.field),
                    0,
                ));
            }
        }
    });
    if let Err(error) = read {
        raise_payload(&error);
    }
    for ordinal in writer.finish() {
        // Rows that lost a race at flush time: the element stored fewer rows than
        // it was credited with, and none at all makes it a duplicate.
        if let Some(outcome) = outcomes.iter_mut().find(|o| o.0 as usize == ordinal) {
            outcome.4 -= 1;
            if outcome.4 == 0 {
                outcome.1 = "duplicate";
            }
        }
    }
    outcomes
}
