//! One element: from JSON text (ingest_json) or typed arguments (insert_metric)
//! to validated metric rows, or a rejection naming the field and the problem.

use std::collections::HashSet;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::error::{Rejection, RejectionKind as Kind};
use super::registry::{MetricTypeRule, Registry, ValueKind};
use super::timestamp::{self, TimestampError};

/// Longest accepted `user_id`, `session_id`, `device_id`, `event_id`, in characters.
pub const MAX_ID_CHARS: usize = 256;
pub const MAX_APP_VERSION_CHARS: usize = 64;
pub const MAX_LOCATION_CHARS: usize = 256;
pub const MAX_LABEL_CHARS: usize = 64;
/// Unknown fields are kept in `attributes`, up to this many bytes of JSON.
pub const MAX_ATTRIBUTES_BYTES: usize = 65_536;

/// Keys with a meaning of their own; everything else that is not a metric type
/// goes to `attributes`.
pub const CONTEXT_FIELDS: [&str; 12] = [
    "timestamp",
    "timestamp_ms",
    "user_id",
    "session_id",
    "metric_type",
    "metric_value",
    "value",
    "device_id",
    "app_version",
    "location",
    "sentiment_score",
    "event_id",
];

/// The position of a context field in CONTEXT_FIELDS; a match compiles to a
/// few length and byte comparisons, where a scan would compare up to twelve strings.
fn context_slot(key: &str) -> Option<usize> {
    Some(match key {
        "timestamp" => 0,
        "timestamp_ms" => 1,
        "user_id" => 2,
        "session_id" => 3,
        "metric_type" => 4,
        "metric_value" => 5,
        "value" => 6,
        "device_id" => 7,
        "app_version" => 8,
        "location" => 9,
        "sentiment_score" => 10,
        "event_id" => 11,
        _ => return None,
    })
}

#[cfg(test)]
pub fn context_slot_for_tests(key: &str) -> Option<usize> {
    context_slot(key)
}

/// What every metric row of one element shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// Microseconds since 1970-01-01 UTC.
    pub unix_us: i64,
    pub user_id: String,
    pub session_id: Option<String>,
    pub device_id: Option<String>,
    pub app_version: Option<String>,
    pub location: Option<String>,
    pub sentiment_score: Option<f64>,
    pub event_id: Option<String>,
    /// JSON object text of the fields the schema does not know.
    pub attributes: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub metric_type: String,
    pub value: f64,
    /// The label as sent, for label-valued metrics ("positive").
    pub label: Option<String>,
}

/// A valid element: one context, one or more measurements (wide form gives several).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidElement {
    pub context: Context,
    pub measurements: Vec<Measurement>,
}

/// An element's keys and values in the order received. Duplicate keys are
/// remembered rather than letting the last one silently win.
#[derive(Debug, Default)]
pub struct ElementFields {
    fields: Vec<(String, Value)>,
    duplicate_key: Option<String>,
}

impl<'de> Deserialize<'de> for ElementFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = ElementFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ElementFields, A::Error> {
                let mut out = ElementFields::default();
                // Elements have a dozen keys: a scan beats hashing, until a hostile one has thousands.
                let mut seen: Option<HashSet<String>> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    if out.fields.len() == 32 {
                        seen = Some(out.fields.iter().map(|(k, _)| k.clone()).collect());
                    }
                    let repeated = match seen.as_mut() {
                        Some(seen) => !seen.insert(key.clone()),
                        None => out.fields.iter().any(|(k, _)| *k == key),
                    };
                    if repeated {
                        out.duplicate_key.get_or_insert(key);
                        continue;
                    }
                    out.fields.push((key, value));
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Parse and validate one element given as JSON text.
pub fn validate_json_element(raw: &str, registry: &Registry) -> Result<ValidElement, Rejection> {
    let first = raw.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        let found = match first {
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b'n') => "null",
            Some(b't') | Some(b'f') => "a boolean",
            _ => "a number",
        };
        return Err(Rejection::new(
            Kind::WrongType,
            "element",
            format!("must be a JSON object, found {found}"),
        ));
    }
    let fields: ElementFields = serde_json::from_str(raw)
        .map_err(|e| Rejection::new(Kind::BadJson, "element", format!("is not valid JSON: {e}")))?;
    validate_fields(fields, registry)
}

fn validate_fields(parsed: ElementFields, registry: &Registry) -> Result<ValidElement, Rejection> {
    if let Some(key) = parsed.duplicate_key {
        return Err(Rejection::new(
            Kind::BadJson,
            key.clone(),
            format!(
                "key \"{}\" appears more than once in the element",
                preview_str(&key)
            ),
        ));
    }
    let mut known: [Option<Value>; CONTEXT_FIELDS.len()] = Default::default();
    let mut wide: Vec<(String, Value)> = Vec::new();
    let mut unknown = Map::new();
    for (key, value) in parsed.fields {
        if key.contains('\0') {
            return Err(nul_rejection("element"));
        }
        if let Some(slot) = context_slot(&key) {
            known[slot] = Some(value);
        } else if registry.get(&key).is_some() {
            wide.push((key, value));
        } else {
            if contains_nul(&value) {
                return Err(nul_rejection(&key));
            }
            unknown.insert(key, value);
        }
    }
    let take = |known: &mut [Option<Value>; 12], name: &str| -> Option<Value> {
        let slot = context_slot(name)?;
        known[slot].take().filter(|v| !v.is_null())
    };

    let unix_us = match (
        take(&mut known, "timestamp"),
        take(&mut known, "timestamp_ms"),
    ) {
        (Some(_), Some(_)) => {
            return Err(Rejection::new(
                Kind::InvalidValue,
                "timestamp",
                "give either timestamp or timestamp_ms, not both",
            ))
        }
        (Some(v), None) => timestamp_from_json(&v)?,
        (None, Some(v)) => timestamp_ms_from_json(&v)?,
        (None, None) => return Err(missing("timestamp")),
    };
    let user_id =
        id_from_json("user_id", take(&mut known, "user_id"))?.ok_or_else(|| missing("user_id"))?;
    let context = Context {
        unix_us,
        user_id,
        session_id: id_from_json("session_id", take(&mut known, "session_id"))?,
        device_id: id_from_json("device_id", take(&mut known, "device_id"))?,
        event_id: id_from_json("event_id", take(&mut known, "event_id"))?,
        app_version: text_from_json(
            "app_version",
            take(&mut known, "app_version"),
            MAX_APP_VERSION_CHARS,
        )?,
        location: text_from_json("location", take(&mut known, "location"), MAX_LOCATION_CHARS)?,
        sentiment_score: sentiment_from_json(take(&mut known, "sentiment_score"))?,
        attributes: attributes_text(unknown)?,
    };

    let metric_type = take(&mut known, "metric_type");
    let (value_field, value) = match (take(&mut known, "metric_value"), take(&mut known, "value")) {
        (Some(_), Some(_)) => {
            return Err(Rejection::new(
                Kind::InvalidValue,
                "metric_value",
                "give either metric_value or value, not both",
            ))
        }
        (None, Some(v)) => ("value", Some(v)),
        (v, None) => ("metric_value", v),
    };
    let measurements = match metric_type {
        Some(metric_type) => {
            if let Some((key, _)) = wide.first() {
                return Err(Rejection::new(
                    Kind::InvalidValue,
                    key.clone(),
                    "an element with metric_type (long form) cannot also carry metric fields (wide form)",
                ));
            }
            let rule = rule_from_json(&metric_type, registry)?;
            let value = value.ok_or_else(|| missing(value_field))?;
            vec![measurement_from_json(rule, value_field, &value)?]
        }
        None => {
            if value.is_some() {
                return Err(missing("metric_type"));
            }
            let mut measurements = Vec::with_capacity(wide.len());
            for (key, value) in &wide {
                if value.is_null() {
                    continue; // a wide-form metric sent as null was not observed
                }
                if let Some(rule) = registry.get(key) {
                    measurements.push(measurement_from_json(rule, key, value)?);
                }
            }
            if measurements.is_empty() {
                return Err(Rejection::new(
                    Kind::Missing,
                    "metric_type",
                    format!(
                        "is required: the element has neither metric_type nor any metric field ({})",
                        registry.names().join(", ")
                    ),
                ));
            }
            measurements
        }
    };
    Ok(ValidElement {
        context,
        measurements,
    })
}

/// Typed arguments of `CALL insert_metric(...)`, validated by the same rules.
pub struct CallArgs<'a> {
    pub unix_us: i64,
    pub user_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub metric_type: Option<&'a str>,
    pub metric_value: CallValue<'a>,
    pub device_id: Option<&'a str>,
    pub app_version: Option<&'a str>,
    pub location: Option<&'a str>,
    pub sentiment_score: Option<f64>,
    pub event_id: Option<&'a str>,
    /// JSON object text.
    pub attributes: Option<&'a str>,
}

pub enum CallValue<'a> {
    Null,
    Text(&'a str),
    Number(f64),
}

pub fn validate_call(args: CallArgs<'_>, registry: &Registry) -> Result<ValidElement, Rejection> {
    let unix_us = timestamp::check_window(args.unix_us)
        .map_err(|_| out_of_window("timestamp", &timestamp::describe_unix_us(args.unix_us)))?;
    let id = |field: &str, v: Option<&str>| -> Result<Option<String>, Rejection> {
        v.map(|s| check_text(field, s, MAX_ID_CHARS, false).map(|()| s.to_string()))
            .transpose()
    };
    let text = |field: &str, v: Option<&str>, max: usize| -> Result<Option<String>, Rejection> {
        v.map(|s| check_text(field, s, max, true).map(|()| s.to_string()))
            .transpose()
    };
    let attributes = match args.attributes {
        None => None,
        Some(json) => {
            let parsed: Value = serde_json::from_str(json).map_err(|e| {
                Rejection::new(
                    Kind::BadJson,
                    "attributes",
                    format!("is not valid JSON: {e}"),
                )
            })?;
            match parsed {
                Value::Object(map) => attributes_text(map)?,
                other => {
                    return Err(Rejection::new(
                        Kind::WrongType,
                        "attributes",
                        format!("must be a JSON object, found {}", json_kind(&other)),
                    ))
                }
            }
        }
    };
    let context = Context {
        unix_us,
        user_id: id("user_id", args.user_id)?.ok_or_else(|| missing("user_id"))?,
        session_id: id("session_id", args.session_id)?,
        device_id: id("device_id", args.device_id)?,
        event_id: id("event_id", args.event_id)?,
        app_version: text("app_version", args.app_version, MAX_APP_VERSION_CHARS)?,
        location: text("location", args.location, MAX_LOCATION_CHARS)?,
        sentiment_score: args.sentiment_score.map(sentiment_in_range).transpose()?,
        attributes,
    };
    let metric_type = args.metric_type.ok_or_else(|| missing("metric_type"))?;
    let rule = rule_by_name(metric_type, registry)?;
    let value = match args.metric_value {
        CallValue::Null => return Err(missing("metric_value")),
        CallValue::Text(s) => Value::String(s.to_string()),
        CallValue::Number(n) => {
            if !n.is_finite() {
                return Err(not_finite("metric_value", &n.to_string()));
            }
            Number::from_f64(n)
                .map(Value::Number)
                .ok_or_else(|| not_finite("metric_value", &n.to_string()))?
        }
    };
    let measurement = measurement_from_json(rule, "metric_value", &value)?;
    Ok(ValidElement {
        context,
        measurements: vec![measurement],
    })
}

fn missing(field: &str) -> Rejection {
    Rejection::new(Kind::Missing, field, "is required")
}

fn nul_rejection(field: &str) -> Rejection {
    Rejection::new(
        Kind::Untranslatable,
        field,
        "contains \\u0000, which PostgreSQL text cannot store",
    )
}

fn not_finite(field: &str, shown: &str) -> Rejection {
    Rejection::new(
        Kind::NotFinite,
        field,
        format!("{shown} is not a finite number"),
    )
}

const WINDOW: &str = "the accepted window 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z";

fn out_of_window(field: &str, shown: &str) -> Rejection {
    Rejection::new(
        Kind::OutOfRange,
        field,
        format!("{shown} is outside {WINDOW}"),
    )
}

/// For JSON epoch numbers, where milliseconds sent as seconds are the usual cause.
fn epoch_out_of_window(field: &str, shown: &str) -> Rejection {
    Rejection::new(
        Kind::OutOfRange,
        field,
        format!("{shown} is outside {WINDOW} (epoch milliseconds must be sent as timestamp_ms)"),
    )
}

fn wrong_type(field: &str, expected: &str, value: &Value) -> Rejection {
    Rejection::new(
        Kind::WrongType,
        field,
        format!("must be {expected}, found {}", json_kind(value)),
    )
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short, safe rendering of a value for error messages (a 10 MB string must
/// not become a 10 MB error).
fn preview(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{}\"", preview_str(s)),
        other => preview_str(&other.to_string()),
    }
}

fn preview_str(s: &str) -> String {
    const MAX: usize = 60;
    let escaped: String = s
        .chars()
        .take(MAX + 1)
        .flat_map(char::escape_default)
        .collect();
    if s.chars().nth(MAX).is_some() {
        let cut: String = escaped.chars().take(MAX).collect();
        format!("{cut}...")
    } else {
        escaped
    }
}

fn timestamp_from_json(value: &Value) -> Result<i64, Rejection> {
    match value {
        Value::String(s) => {
            if s.contains('\0') {
                return Err(nul_rejection("timestamp"));
            }
            timestamp::parse_iso(s).map_err(|e| match e {
                TimestampError::NotIso => Rejection::new(
                    Kind::InvalidValue,
                    "timestamp",
                    format!(
                        "{} is not an ISO 8601 timestamp or epoch seconds",
                        preview(value)
                    ),
                ),
                TimestampError::OutOfWindow => out_of_window("timestamp", &preview(value)),
            })
        }
        Value::Number(n) => timestamp::parse_epoch_seconds(n.as_str()).map_err(|_| {
            epoch_out_of_window("timestamp", &format!("{} epoch seconds", preview(value)))
        }),
        other => Err(wrong_type(
            "timestamp",
            "an ISO 8601 string or epoch seconds",
            other,
        )),
    }
}

fn timestamp_ms_from_json(value: &Value) -> Result<i64, Rejection> {
    match value {
        Value::Number(n) if is_integer_text(n.as_str()) => {
            timestamp::parse_epoch_millis(n.as_str()).map_err(|_| {
                out_of_window(
                    "timestamp_ms",
                    &format!("{} epoch milliseconds", preview(value)),
                )
            })
        }
        other => Err(wrong_type(
            "timestamp_ms",
            "an integer of epoch milliseconds",
            other,
        )),
    }
}

fn is_integer_text(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// ids are strings or integers, stored as text exactly as written.
fn id_from_json(field: &str, value: Option<Value>) -> Result<Option<String>, Rejection> {
    match value {
        None => Ok(None),
        // The parsed string is moved, not copied: this runs once per field per element.
        Some(Value::String(s)) => check_text(field, &s, MAX_ID_CHARS, false).map(|()| Some(s)),
        Some(Value::Number(n)) if is_integer_text(n.as_str()) => Ok(Some(n.as_str().to_string())),
        Some(other) => Err(wrong_type(field, "a string or an integer", &other)),
    }
}

fn text_from_json(
    field: &str,
    value: Option<Value>,
    max: usize,
) -> Result<Option<String>, Rejection> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => check_text(field, &s, max, true).map(|()| Some(s)),
        Some(other) => Err(wrong_type(field, "a string", &other)),
    }
}

fn check_text(field: &str, s: &str, max_chars: usize, empty_ok: bool) -> Result<(), Rejection> {
    if s.contains('\0') {
        return Err(nul_rejection(field));
    }
    if !empty_ok && s.is_empty() {
        return Err(Rejection::new(
            Kind::InvalidValue,
            field,
            "must not be empty",
        ));
    }
    if s.len() > max_chars && s.chars().count() > max_chars {
        return Err(Rejection::new(
            Kind::TooLong,
            field,
            format!(
                "is longer than {max_chars} characters ({} given)",
                s.chars().count()
            ),
        ));
    }
    Ok(())
}

fn sentiment_from_json(value: Option<Value>) -> Result<Option<f64>, Rejection> {
    match value {
        None => Ok(None),
        Some(v) => number_from_json("sentiment_score", &v)
            .and_then(sentiment_in_range)
            .map(Some),
    }
}

fn sentiment_in_range(score: f64) -> Result<f64, Rejection> {
    if !score.is_finite() {
        return Err(not_finite("sentiment_score", &score.to_string()));
    }
    if !(-1.0..=1.0).contains(&score) {
        return Err(Rejection::new(
            Kind::OutOfRange,
            "sentiment_score",
            format!("{score} is outside [-1, 1]"),
        ));
    }
    Ok(score)
}

/// A JSON number, or a string holding exactly one (`"300"`).
fn number_from_json(field: &str, value: &Value) -> Result<f64, Rejection> {
    let text = match value {
        Value::Number(n) => n.as_str(),
        Value::String(s) => s.as_str(),
        other => return Err(wrong_type(field, "a number", other)),
    };
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(n),
        // Rust also reads "inf" and "NaN"; a string spelling them is not finite either.
        Ok(_) => Err(not_finite(field, &preview(value))),
        Err(_) => Err(Rejection::new(
            Kind::InvalidValue,
            field,
            format!("{} is not a number", preview(value)),
        )),
    }
}

fn rule_from_json<'r>(
    value: &Value,
    registry: &'r Registry,
) -> Result<&'r MetricTypeRule, Rejection> {
    match value {
        Value::String(name) => rule_by_name(name, registry),
        other => Err(wrong_type("metric_type", "a string", other)),
    }
}

fn rule_by_name<'r>(name: &str, registry: &'r Registry) -> Result<&'r MetricTypeRule, Rejection> {
    registry.get(name).ok_or_else(|| {
        Rejection::new(
            Kind::InvalidValue,
            "metric_type",
            format!(
                "\"{}\" is not a known metric type (known: {})",
                preview_str(name),
                registry.names().join(", ")
            ),
        )
    })
}

fn measurement_from_json(
    rule: &MetricTypeRule,
    field: &str,
    value: &Value,
) -> Result<Measurement, Rejection> {
    let (number, label) = match rule.kind {
        ValueKind::Boolean => (boolean_from_json(field, value)?, None),
        ValueKind::Number => (number_from_json(field, value)?, None),
        ValueKind::Score => match value {
            Value::String(s) if s.parse::<f64>().is_err() => {
                let score = rule
                    .labels
                    .iter()
                    .find(|(label, _)| label.eq_ignore_ascii_case(s))
                    .map(|(_, score)| *score)
                    .ok_or_else(|| {
                        let known: Vec<&str> =
                            rule.labels.iter().map(|(l, _)| l.as_str()).collect();
                        Rejection::new(
                            Kind::InvalidValue,
                            field,
                            format!(
                                "{} is not a number or a label of {} ({})",
                                preview(value),
                                rule.name,
                                known.join(", ")
                            ),
                        )
                    })?;
                check_text(field, s, MAX_LABEL_CHARS, false)?;
                (score, Some(s.clone()))
            }
            _ => (number_from_json(field, value)?, None),
        },
    };
    if rule.min.is_some_and(|min| number < min) || rule.max.is_some_and(|max| number > max) {
        let bound = |b: Option<f64>, open: &str| b.map_or(open.to_string(), |v| v.to_string());
        return Err(Rejection::new(
            Kind::OutOfRange,
            field,
            format!(
                "{number} is outside the bounds of {} [{}, {}]",
                rule.name,
                bound(rule.min, "-inf"),
                bound(rule.max, "inf")
            ),
        ));
    }
    Ok(Measurement {
        metric_type: rule.name.clone(),
        value: number,
        label,
    })
}

fn boolean_from_json(field: &str, value: &Value) -> Result<f64, Rejection> {
    let truth = match value {
        Value::Bool(b) => Some(*b),
        // 1, 1.0 and 1e0 all say the same; anything else is not a boolean.
        Value::Number(n) => match n.as_f64() {
            Some(v) if v == 0.0 => Some(false),
            Some(v) if v == 1.0 => Some(true),
            _ => None,
        },
        Value::String(s) => match s.as_str() {
            "0" | "false" => Some(false),
            "1" | "true" => Some(true),
            _ => None,
        },
        _ => None,
    };
    truth.map(|b| if b { 1.0 } else { 0.0 }).ok_or_else(|| {
        Rejection::new(
            Kind::InvalidValue,
            field,
            format!("{} is not a boolean (true, false, 0 or 1)", preview(value)),
        )
    })
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

fn attributes_text(unknown: Map<String, Value>) -> Result<Option<String>, Rejection> {
    if unknown.is_empty() {
        return Ok(None);
    }
    if unknown
        .iter()
        .any(|(k, v)| k.contains('\0') || contains_nul(v))
    {
        return Err(nul_rejection("attributes"));
    }
    let text = Value::Object(unknown).to_string();
    if text.len() > MAX_ATTRIBUTES_BYTES {
        return Err(Rejection::new(
            Kind::TooLong,
            "attributes",
            format!(
                "unknown fields take {} bytes of JSON, more than the {MAX_ATTRIBUTES_BYTES} kept in attributes",
                text.len()
            ),
        ));
    }
    Ok(Some(text))
}
