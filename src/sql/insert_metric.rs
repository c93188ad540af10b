//! `CALL metrics_ingest.insert_metric(...)`: one event, the same rules as ingest_json.
//!
//! Plain fmgr functions, as ingest_json: arguments are read straight from the
//! call (no intermediate conversions), and jsonb arrives through jsonb_out.

use pgrx::prelude::*;

use super::datum::jsonb_text;
use super::errors::{raise, raise_internal, raise_rejection};
use super::registry_cache::registry;
use super::writer::{Path, Writer};
use crate::core::element::{validate_call, CallArgs, CallValue};
use crate::core::error::{Rejection, RejectionKind};
use crate::core::timestamp::PG_EPOCH_OFFSET_US;

/// `insert_metric(..., metric_value text, ...)`
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn insert_metric_text_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let value = pgrx::pg_getarg::<&str>(fcinfo, 4).map_or(CallValue::Null, CallValue::Text);
    insert(fcinfo, value)
}

/// `insert_metric(..., metric_value double precision, ...)`
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn insert_metric_number_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let value = pgrx::pg_getarg::<f64>(fcinfo, 4).map_or(CallValue::Null, CallValue::Number);
    insert(fcinfo, value)
}

/// Arguments, in order: timestamp, user_id, session_id, metric_type, metric_value,
/// device_id, app_version, location, sentiment_score, event_id, attributes.
unsafe fn insert(fcinfo: pg_sys::FunctionCallInfo, metric_value: CallValue<'_>) -> pg_sys::Datum {
    let text = |n: usize| pgrx::pg_getarg::<&str>(fcinfo, n);
    let Some(timestamp) = pgrx::pg_getarg::<i64>(fcinfo, 0) else {
        raise_rejection(
            &Rejection::new(RejectionKind::Missing, "timestamp", "is required"),
            None,
        )
    };
    let attributes = pgrx::pg_getarg_datum(fcinfo, 10).map(|datum| jsonb_text(datum));
    let args = CallArgs {
        // PostgreSQL's infinities stay the i64 bounds, which error messages name.
        unix_us: match timestamp {
            i64::MIN | i64::MAX => timestamp,
            _ => timestamp.saturating_add(PG_EPOCH_OFFSET_US),
        },
        user_id: text(1),
        session_id: text(2),
        metric_type: text(3),
        metric_value,
        device_id: text(5),
        app_version: text(6),
        location: text(7),
        sentiment_score: pgrx::pg_getarg::<f64>(fcinfo, 8),
        event_id: text(9),
        attributes: attributes.as_deref(),
    };
    let registry = registry();
    let element = match validate_call(args, &registry) {
        Ok(element) => element,
        Err(rejection) => raise_rejection(&rejection, None),
    };
    // One event: it waits for a concurrent insert of it as INSERT does.
    let mut writer = Writer::open(Path::Single, registry.profiles(), &None);
    if let Err(rejection) = writer.check_retention(&element) {
        raise_rejection(&rejection, None);
    }
    let stored = writer
        .store(1, &element)
        .unwrap_or_else(|rejection| raise_rejection(&rejection, None));
    if writer.finish().is_err() {
        raise_internal("insert_metric", "gave way without a subtransaction");
    }
    if let Some(column) = stored.conflict {
        raise(
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            format!(
                "event_id {:?}: {} differs from the stored event with this event_id; nothing was stored",
                element.context.event_id.as_deref().unwrap_or_default(),
                column.name()
            ),
        );
    }
    pg_sys::Datum::from(0)
}
