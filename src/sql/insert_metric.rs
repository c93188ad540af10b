//! `CALL metrics_ingest.insert_metric(...)`: one event, the same rules as ingest_json.

use pgrx::prelude::*;

use super::errors::raise_rejection;
use super::registry_cache::registry;
use super::writer::{Path, Writer};
use crate::core::element::{validate_call, CallArgs, CallValue};
use crate::core::error::{Rejection, RejectionKind};
use crate::core::timestamp::PG_EPOCH_OFFSET_US;

#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn insert_metric_text(
    timestamp: Option<pgrx::datum::TimestampWithTimeZone>,
    user_id: Option<&str>,
    session_id: Option<&str>,
    metric_type: Option<&str>,
    metric_value: Option<&str>,
    device_id: Option<&str>,
    app_version: Option<&str>,
    location: Option<&str>,
    sentiment_score: Option<f64>,
    event_id: Option<&str>,
    attributes: Option<pgrx::JsonB>,
) {
    let value = metric_value.map_or(CallValue::Null, CallValue::Text);
    let args = (
        timestamp,
        user_id,
        session_id,
        metric_type,
        device_id,
        app_version,
        location,
    );
    insert(args, value, sentiment_score, event_id, attributes);
}

#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn insert_metric_number(
    timestamp: Option<pgrx::datum::TimestampWithTimeZone>,
    user_id: Option<&str>,
    session_id: Option<&str>,
    metric_type: Option<&str>,
    metric_value: Option<f64>,
    device_id: Option<&str>,
    app_version: Option<&str>,
    location: Option<&str>,
    sentiment_score: Option<f64>,
    event_id: Option<&str>,
    attributes: Option<pgrx::JsonB>,
) {
    let value = metric_value.map_or(CallValue::Null, CallValue::Number);
    let args = (
        timestamp,
        user_id,
        session_id,
        metric_type,
        device_id,
        app_version,
        location,
    );
    insert(args, value, sentiment_score, event_id, attributes);
}

type TextArgs<'a> = (
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

fn insert(
    (timestamp, user_id, session_id, metric_type, device_id, app_version, location): TextArgs<'_>,
    metric_value: CallValue<'_>,
    sentiment_score: Option<f64>,
    event_id: Option<&str>,
    attributes: Option<pgrx::JsonB>,
) {
    let Some(timestamp) = timestamp else {
        raise_rejection(
            &Rejection::new(RejectionKind::Missing, "timestamp", "is required"),
            None,
        )
    };
    let attributes = attributes.map(|pgrx::JsonB(value)| value.to_string());
    let args = CallArgs {
        unix_us: i64::from(timestamp.into_inner()).saturating_add(PG_EPOCH_OFFSET_US),
        user_id,
        session_id,
        metric_type,
        metric_value,
        device_id,
        app_version,
        location,
        sentiment_score,
        event_id,
        attributes: attributes.as_deref(),
    };
    let element = match validate_call(args, &registry()) {
        Ok(element) => element,
        Err(rejection) => raise_rejection(&rejection, None),
    };
    let mut writer = Writer::open(Path::Single);
    writer.store(1, &element);
    writer.finish();
}
