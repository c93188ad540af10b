//! One element: from JSON text (ingest_json) or typed arguments (insert_metric)
//! to validated metric rows, or a rejection naming the field and the problem.
//!
//! The JSON is read without building a tree: each field's value stays a slice
//! of the payload (`&RawValue`), strings are borrowed unless they hold escapes,
//! numbers keep the exact text the client wrote, and unknown fields are copied
//! into `attributes` verbatim. This runs once per element of every batch.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::{Rejection, RejectionKind as Kind};
use super::registry::{MetricTypeRule, Registry, ValueKind};
use super::timestamp::{self, TimestampError};

/// Longest accepted `user_id`, `session_id`, `device_id`, `event_id`, in characters.
pub const MAX_ID_CHARS: usize = 256;
pub const MAX_APP_VERSION_CHARS: usize = 64;
pub const MAX_LOCATION_CHARS: usize = 256;
pub const MAX_LABEL_CHARS: usize = 64;
pub const MAX_PLATFORM_CHARS: usize = 64;
pub const MAX_NAME_CHARS: usize = 256;
/// RFC 5321's limit on a forward path, the usual bound on an address.
pub const MAX_EMAIL_CHARS: usize = 254;
/// Unknown fields are kept in `attributes`, up to this many bytes of JSON.
pub const MAX_ATTRIBUTES_BYTES: usize = 65_536;
/// The largest magnitude of a metric's value. Daily totals add a day's values,
/// and a sum past ±1.8e308 is no number PostgreSQL can hold: with 1e308 twice,
/// the daily totals, and every compaction of them by run_maintenance, failed
/// with 22003 (0.3.1). Below this bound a day needs 10^8 values at the bound
/// to get there.
pub const MAX_VALUE_MAGNITUDE: f64 = 1e300;

/// Keys with a meaning of their own; everything else that is not a metric type
/// goes to `attributes`.
pub const CONTEXT_FIELDS: [&str; 15] = [
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
    "platform",
    "name",
    "email",
];

/// Slots from here on are the fields 0.3.0 added (platform, and the profile
/// fields that go to `users`): an older catalog keeps them in `attributes`.
const FIRST_PROFILE_SLOT: usize = 12;
/// `platform` is read (for `sessions`) and also kept in `attributes`, where it
/// has always been stored: metrics has no column of its own for it.
const PLATFORM_SLOT: usize = 12;

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
        "platform" => 12,
        "name" => 13,
        "email" => 14,
        _ => return None,
    })
}

#[cfg(test)]
pub fn context_slot_for_tests(key: &str) -> Option<usize> {
    context_slot(key)
}

/// What every metric row of one element shares.
/// Its texts are borrowed from the payload (or from insert_metric's arguments)
/// unless they held escapes: an element of ingest_json allocates none of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Context<'a> {
    /// Microseconds since 1970-01-01 UTC.
    pub unix_us: i64,
    pub user_id: Cow<'a, str>,
    pub session_id: Option<Cow<'a, str>>,
    pub device_id: Option<Cow<'a, str>>,
    pub app_version: Option<Cow<'a, str>>,
    pub location: Option<Cow<'a, str>>,
    pub sentiment_score: Option<f64>,
    pub event_id: Option<Cow<'a, str>>,
    /// Also in `attributes` (metrics has no platform column); read for sessions.
    pub platform: Option<Cow<'a, str>>,
    /// The user's profile, when the element carries it (seed 003): written to
    /// `users`, never to the metric rows.
    pub profile: Profile<'a>,
    /// JSON object text of the fields the schema does not know.
    pub attributes: Option<String>,
}

/// The `name` and `email` an element carries, if any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile<'a> {
    pub name: Option<Cow<'a, str>>,
    pub email: Option<Cow<'a, str>>,
}

impl Context<'_> {
    /// The same context owning its texts, to be kept past the payload.
    pub fn into_owned(self) -> Context<'static> {
        let own = |text: Option<Cow<'_, str>>| text.map(|t| Cow::Owned(t.into_owned()));
        Context {
            unix_us: self.unix_us,
            user_id: Cow::Owned(self.user_id.into_owned()),
            session_id: own(self.session_id),
            device_id: own(self.device_id),
            app_version: own(self.app_version),
            location: own(self.location),
            sentiment_score: self.sentiment_score,
            event_id: own(self.event_id),
            platform: own(self.platform),
            profile: self.profile.into_owned(),
            attributes: self.attributes,
        }
    }
}

impl Profile<'_> {
    /// The same profile owning its texts.
    pub fn into_owned(self) -> Profile<'static> {
        let own = |text: Option<Cow<'_, str>>| text.map(|t| Cow::Owned(t.into_owned()));
        Profile {
            name: own(self.name),
            email: own(self.email),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.email.is_none()
    }
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
pub struct ValidElement<'a> {
    pub context: Context<'a>,
    pub measurements: Vec<Measurement>,
}

/// A key as written: borrowed from the payload unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// An element's keys and raw values in the order received. Duplicate keys are
/// remembered rather than letting the last one silently win.
struct ElementFields<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    duplicate_key: Option<String>,
    /// Once an element has this many keys, repeats are found by hashing.
    seen: Option<HashSet<String>>,
}

impl<'a> ElementFields<'a> {
    fn new() -> ElementFields<'a> {
        ElementFields {
            fields: Vec::with_capacity(12),
            duplicate_key: None,
            seen: None,
        }
    }

    /// The next key and its value, in document order.
    fn push(&mut self, key: Cow<'a, str>, value: &'a RawValue) {
        // Elements have a dozen keys: a scan beats hashing, until a hostile one has thousands.
        if self.fields.len() == 32 && self.seen.is_none() {
            self.seen = Some(self.fields.iter().map(|(k, _)| k.to_string()).collect());
        }
        let repeated = match self.seen.as_mut() {
            Some(seen) => !seen.insert(key.to_string()),
            None => self.fields.iter().any(|(k, _)| *k == key),
        };
        if repeated {
            self.duplicate_key.get_or_insert_with(|| key.into_owned());
            return;
        }
        self.fields.push((key, value));
    }
}

impl<'de> Deserialize<'de> for ElementFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = ElementFields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ElementFields<'de>, A::Error> {
                let mut out = ElementFields::new();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    out.push(key, value);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// One element of a payload's array as the single pass over the payload reads
/// it (`payload::for_each_element`): an object whose keys all decode, ready for
/// validation, or anything else, which is validated from its raw text by
/// `validate_json_element` and so gets exactly the verdict and message it
/// always had.
pub struct ReadElement<'a>(Read<'a>);

enum Read<'a> {
    Object {
        fields: ElementFields<'a>,
        /// The last value in document order (repeated keys included): the
        /// element's text ends at the `}` after it. None for `{}`.
        last_value: Option<&'a RawValue>,
    },
    Other,
}

impl<'a> ReadElement<'a> {
    /// An element to be validated from its text alone.
    pub fn unread() -> ReadElement<'a> {
        ReadElement(Read::Other)
    }

    /// The last value of an object element, from which the payload reader finds
    /// where the element ends; None when it must find that by reading the
    /// element's text again (anything but a non-empty object of decodable keys).
    pub fn last_value(&self) -> Option<&'a RawValue> {
        match &self.0 {
            Read::Object { last_value, .. } => *last_value,
            Read::Other => None,
        }
    }
}

/// A JSON string from its text as the payload holds it, with its quotes (valid
/// syntax: serde_json checked it while skipping): borrowed unless it holds
/// escapes, which are decoded here, where a lone surrogate is refused.
fn json_string(text: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    let inner = &text[1..text.len() - 1];
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(inner))
    }
}

/// A key read raw: None if its escapes do not decode (a lone surrogate, which
/// serde_json's scan of the payload lets pass but its decoding of a key
/// refuses).
fn decode_key(raw: &RawValue) -> Option<Cow<'_, str>> {
    json_string(raw.get()).ok()
}

/// Reads one array element in place: the seed `payload::for_each_element`
/// hands to serde_json for each element. Values stay raw slices, as in
/// `ElementFields`; keys are read raw too, so that a key whose escapes do not
/// decode makes this element `Other` (rejected on its own) instead of failing
/// the whole payload.
pub struct ElementSeed;

impl<'de> serde::de::DeserializeSeed<'de> for ElementSeed {
    type Value = ReadElement<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(ElementVisitor)
    }
}

struct ElementVisitor;

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = ReadElement<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReadElement<'de>, A::Error> {
        let mut fields = ElementFields::new();
        let mut last_value = None;
        let mut decodable = true;
        while let Some(raw_key) = map.next_key::<&'de RawValue>()? {
            let value: &'de RawValue = map.next_value()?;
            last_value = Some(value);
            // serde_json hands over a number as a map with this one key
            // (arbitrary_precision); an object may also spell it: either way
            // the element is read again from its text.
            if raw_key.get() == NUMBER_KEY {
                decodable = false;
            }
            match decode_key(raw_key) {
                Some(key) if decodable => fields.push(key, value),
                _ => decodable = false,
            }
        }
        Ok(ReadElement(if decodable {
            Read::Object { fields, last_value }
        } else {
            Read::Other
        }))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<ReadElement<'de>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(ReadElement(Read::Other))
    }
    fn visit_bool<E>(self, _: bool) -> Result<ReadElement<'de>, E> {
        Ok(ReadElement(Read::Other))
    }
    fn visit_i64<E>(self, _: i64) -> Result<ReadElement<'de>, E> {
        Ok(ReadElement(Read::Other))
    }
    fn visit_u64<E>(self, _: u64) -> Result<ReadElement<'de>, E> {
        Ok(ReadElement(Read::Other))
    }
    fn visit_f64<E>(self, _: f64) -> Result<ReadElement<'de>, E> {
        Ok(ReadElement(Read::Other))
    }
    fn visit_str<E>(self, _: &str) -> Result<ReadElement<'de>, E> {
        Ok(ReadElement(Read::Other))
    }
    fn visit_unit<E>(self) -> Result<ReadElement<'de>, E> {
        Ok(ReadElement(Read::Other))
    }
}

/// `NUMBER_TOKEN` as a raw key.
const NUMBER_KEY: &str = "\"$serde_json::private::Number\"";

/// Validates an element the payload reader has read in place; `raw` is its
/// text. The same verdict as `validate_json_element(raw)`, without reading the
/// element a second time.
pub fn validate_read<'a>(
    raw: &'a str,
    read: ReadElement<'a>,
    registry: &Registry,
) -> Result<ValidElement<'a>, Rejection> {
    match read.0 {
        Read::Object { fields, .. } => validate_fields(fields, registry),
        Read::Other => validate_json_element(raw, registry),
    }
}

/// One JSON value, seen without building a tree.
#[derive(Debug, Clone)]
enum Field<'a> {
    Null,
    Bool(bool),
    /// The number exactly as written.
    Number(&'a str),
    Str(Cow<'a, str>),
    Array(&'a str),
    Object(&'a str),
}

impl<'a> Field<'a> {
    /// The raw text is valid JSON syntax (serde_json checked it while
    /// skipping); escapes are decoded here, where a lone surrogate is refused.
    fn of(raw: &'a RawValue, field: &str) -> Result<Field<'a>, Rejection> {
        let text = raw.get();
        Ok(match text.as_bytes().first() {
            Some(b'"') => Field::Str(json_string(text).map_err(|e| bad_json(field, e))?),
            Some(b'n') => Field::Null,
            Some(b't') => Field::Bool(true),
            Some(b'f') => Field::Bool(false),
            Some(b'[') => Field::Array(text),
            Some(b'{') => Field::Object(text),
            _ => Field::Number(text),
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Field::Null => "null",
            Field::Bool(_) => "a boolean",
            Field::Number(_) => "a number",
            Field::Str(_) => "a string",
            Field::Array(_) => "an array",
            Field::Object(_) => "an object",
        }
    }

    /// A short, safe rendering for error messages (a 10 MB string must not
    /// become a 10 MB error).
    fn preview(&self) -> String {
        match self {
            Field::Str(s) => format!("\"{}\"", preview_str(s)),
            Field::Null => "null".into(),
            Field::Bool(b) => b.to_string(),
            Field::Number(text) | Field::Array(text) | Field::Object(text) => preview_str(text),
        }
    }
}

fn bad_json(field: &str, error: serde_json::Error) -> Rejection {
    Rejection::new(Kind::BadJson, field, format!("is not valid JSON: {error}"))
}

/// Parse and validate one element given as JSON text.
pub fn validate_json_element<'a>(
    raw: &'a str,
    registry: &Registry,
) -> Result<ValidElement<'a>, Rejection> {
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
    let fields: ElementFields = serde_json::from_str(raw).map_err(|e| bad_json("element", e))?;
    validate_fields(fields, registry)
}

fn validate_fields<'a>(
    parsed: ElementFields<'a>,
    registry: &Registry,
) -> Result<ValidElement<'a>, Rejection> {
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
    let mut known: [Option<Field>; CONTEXT_FIELDS.len()] = Default::default();
    let mut wide: Vec<(&str, Field)> = Vec::new();
    let mut unknown = Attributes::default();
    for (key, raw) in &parsed.fields {
        if key.contains('\0') {
            return Err(nul_rejection("element"));
        }
        let slot =
            context_slot(key).filter(|&slot| slot < FIRST_PROFILE_SLOT || registry.profiles());
        if let Some(slot) = slot {
            known[slot] = Some(Field::of(raw, key)?);
            if slot == PLATFORM_SLOT {
                unknown.add(key, raw)?;
            }
        } else if registry.get(key).is_some() {
            wide.push((key, Field::of(raw, key)?));
        } else {
            unknown.add(key, raw)?;
        }
    }
    let mut take = |name: &str| -> Option<Field> {
        let slot = context_slot(name)?;
        known[slot].take().filter(|v| !matches!(v, Field::Null))
    };

    let unix_us = match (take("timestamp"), take("timestamp_ms")) {
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
    let user_id = id_from_json("user_id", take("user_id"))?.ok_or_else(|| missing("user_id"))?;
    let context = Context {
        unix_us,
        user_id,
        session_id: id_from_json("session_id", take("session_id"))?,
        device_id: id_from_json("device_id", take("device_id"))?,
        event_id: id_from_json("event_id", take("event_id"))?,
        app_version: text_from_json("app_version", take("app_version"), MAX_APP_VERSION_CHARS)?,
        location: text_from_json("location", take("location"), MAX_LOCATION_CHARS)?,
        sentiment_score: take("sentiment_score")
            .map(|v| number_from_json("sentiment_score", &v).and_then(sentiment_in_range))
            .transpose()?,
        platform: text_from_json("platform", take("platform"), MAX_PLATFORM_CHARS)?,
        profile: Profile {
            name: text_from_json("name", take("name"), MAX_NAME_CHARS)?,
            email: email(text_from_json("email", take("email"), MAX_EMAIL_CHARS)?)?,
        },
        attributes: unknown.finish()?,
    };

    let metric_type = take("metric_type");
    let (value_field, value) = match (take("metric_value"), take("value")) {
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
                    *key,
                    "an element with metric_type (long form) cannot also carry metric fields (wide form)",
                ));
            }
            let rule = match &metric_type {
                Field::Str(name) => rule_by_name(name, registry)?,
                other => return Err(wrong_type("metric_type", "a string", other)),
            };
            let value = value.ok_or_else(|| missing(value_field))?;
            vec![measurement_from_json(rule, value_field, &value)?]
        }
        None => {
            if value.is_some() {
                return Err(missing("metric_type"));
            }
            let mut measurements = Vec::with_capacity(wide.len());
            for (key, value) in &wide {
                if matches!(value, Field::Null) {
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

/// The ids of an element that failed validation, as far as they can still be
/// read: the dead-letter table stores them beside the element, and the
/// event_id makes re-sending the same bad element idempotent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RejectedIds {
    pub user_id: Option<String>,
    pub event_id: Option<String>,
}

/// Reads `user_id` and `event_id` of a rejected element. An id is readable when
/// the element is a JSON object, the key appears exactly once, and its value
/// would pass validation as an id (a non-empty string of at most MAX_ID_CHARS
/// characters without NUL, or an integer). Anything else gives `None`: an
/// element that is not JSON, or whose event_id is itself the problem, has no
/// event_id to be recognised by.
pub fn rejected_ids(raw: &str) -> RejectedIds {
    if raw.trim_start().as_bytes().first() != Some(&b'{') {
        return RejectedIds::default();
    }
    let Ok(ids) = serde_json::from_str::<IdFields>(raw) else {
        return RejectedIds::default();
    };
    let read = |name: &str, slot: IdSlot<'_>| match slot {
        IdSlot::Once(raw) => Field::of(raw, name).ok().and_then(|field| {
            id_from_json(name, Some(field))
                .ok()
                .flatten()
                .map(Cow::into_owned)
        }),
        IdSlot::Absent | IdSlot::Repeated => None,
    };
    RejectedIds {
        user_id: read("user_id", ids.user_id),
        event_id: read("event_id", ids.event_id),
    }
}

/// One id key of an element: absent, present once (its raw value), or repeated
/// (ambiguous, so unreadable).
#[derive(Default)]
enum IdSlot<'a> {
    #[default]
    Absent,
    Once(&'a RawValue),
    Repeated,
}

impl<'a> IdSlot<'a> {
    fn see(&mut self, raw: &'a RawValue) {
        *self = match self {
            IdSlot::Absent => IdSlot::Once(raw),
            _ => IdSlot::Repeated,
        };
    }
}

/// Only `user_id` and `event_id` of an element; every other value is skipped.
#[derive(Default)]
struct IdFields<'a> {
    user_id: IdSlot<'a>,
    event_id: IdSlot<'a>,
}

impl<'de> Deserialize<'de> for IdFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdsVisitor;
        impl<'de> Visitor<'de> for IdsVisitor {
            type Value = IdFields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IdFields<'de>, A::Error> {
                let mut out = IdFields::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    match key.as_ref() {
                        "user_id" => out.user_id.see(value),
                        "event_id" => out.event_id.see(value),
                        _ => {}
                    }
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(IdsVisitor)
    }
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

pub fn validate_call<'a>(
    args: CallArgs<'a>,
    registry: &Registry,
) -> Result<ValidElement<'a>, Rejection> {
    let unix_us = timestamp::check_window(args.unix_us)
        .map_err(|_| out_of_window("timestamp", &timestamp::describe_unix_us(args.unix_us)))?;
    let id = |field: &str, v: Option<&'a str>| -> Result<Option<Cow<'a, str>>, Rejection> {
        v.map(|s| check_text(field, s, MAX_ID_CHARS, false).map(|()| Cow::Borrowed(s)))
            .transpose()
    };
    let text =
        |field: &str, v: Option<&'a str>, max: usize| -> Result<Option<Cow<'a, str>>, Rejection> {
            v.map(|s| check_text(field, s, max, true).map(|()| Cow::Borrowed(s)))
                .transpose()
        };
    let mut platform = None;
    let mut profile = Profile::default();
    let attributes = match args.attributes {
        None => None,
        Some(json) => {
            match serde_json::from_str::<Value>(json).map_err(|e| bad_json("attributes", e))? {
                Value::Object(map) if map.is_empty() => None,
                Value::Object(mut map) => {
                    if map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)) {
                        return Err(nul_rejection("attributes"));
                    }
                    // The fields insert_metric has no parameter for are read from
                    // its attributes, by the rules ingest_json applies to them.
                    let mut known = |field: &str,
                                     max: usize|
                     -> Result<Option<String>, Rejection> {
                        if !registry.profiles() {
                            return Ok(None);
                        }
                        let value = if field == "platform" {
                            map.get(field).cloned()
                        } else {
                            map.remove(field)
                        };
                        match value {
                            None | Some(Value::Null) => Ok(None),
                            Some(Value::String(s)) => {
                                check_text(field, &s, max, true).map(|()| Some(s))
                            }
                            Some(other) => {
                                let text = other.to_string();
                                let shown = Field::of(
                                    &RawValue::from_string(text).map_err(|e| bad_json(field, e))?,
                                    field,
                                )?
                                .kind();
                                Err(Rejection::new(
                                    Kind::WrongType,
                                    field,
                                    format!("must be a string, found {shown}"),
                                ))
                            }
                        }
                    };
                    platform = known("platform", MAX_PLATFORM_CHARS)?.map(Cow::Owned);
                    profile.name = known("name", MAX_NAME_CHARS)?.map(Cow::Owned);
                    profile.email = email(known("email", MAX_EMAIL_CHARS)?.map(Cow::Owned))?;
                    if profile.is_empty() {
                        Some(json.to_string())
                    } else if map.is_empty() {
                        None
                    } else {
                        Some(Value::Object(map).to_string())
                    }
                }
                other => {
                    let found = match other {
                        Value::Array(_) => "an array",
                        Value::String(_) => "a string",
                        Value::Number(_) => "a number",
                        Value::Bool(_) => "a boolean",
                        _ => "null",
                    };
                    return Err(Rejection::new(
                        Kind::WrongType,
                        "attributes",
                        format!("must be a JSON object, found {found}"),
                    ));
                }
            }
        }
    };
    if attributes
        .as_ref()
        .is_some_and(|a| a.len() > MAX_ATTRIBUTES_BYTES)
    {
        return Err(attributes_too_long());
    }
    let context = Context {
        unix_us,
        user_id: id("user_id", args.user_id)?.ok_or_else(|| missing("user_id"))?,
        session_id: id("session_id", args.session_id)?,
        device_id: id("device_id", args.device_id)?,
        event_id: id("event_id", args.event_id)?,
        app_version: text("app_version", args.app_version, MAX_APP_VERSION_CHARS)?,
        location: text("location", args.location, MAX_LOCATION_CHARS)?,
        sentiment_score: args.sentiment_score.map(sentiment_in_range).transpose()?,
        platform,
        profile,
        attributes,
    };
    let metric_type = args.metric_type.ok_or_else(|| missing("metric_type"))?;
    let rule = rule_by_name(metric_type, registry)?;
    let shown;
    let value = match args.metric_value {
        CallValue::Null => return Err(missing("metric_value")),
        CallValue::Text(s) => Field::Str(Cow::Borrowed(s)),
        CallValue::Number(n) => {
            if !n.is_finite() {
                return Err(not_finite("metric_value", &n.to_string()));
            }
            shown = n.to_string();
            Field::Number(&shown)
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

fn wrong_type(field: &str, expected: &str, value: &Field) -> Rejection {
    Rejection::new(
        Kind::WrongType,
        field,
        format!("must be {expected}, found {}", value.kind()),
    )
}

/// At most 60 characters of `s` for an error message, shown as written: only
/// quotes, backslashes and control characters are escaped (JSON style), so
/// `"٣"` stays `"٣"` rather than Rust's `"\u{663}"`.
/// A number as an error message shows it: as Rust prints it when that is
/// short, else in scientific notation (1e300 is not written out in 301 digits).
fn shown(number: f64) -> String {
    let plain = number.to_string();
    if plain.len() <= 24 {
        plain
    } else {
        format!("{number:e}")
    }
}

pub fn preview_str(s: &str) -> String {
    const MAX: usize = 60;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        push_quoted_char(&mut out, c);
    }
    out
}

fn push_quoted_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push(c),
    }
}

fn timestamp_from_json(value: &Field) -> Result<i64, Rejection> {
    match value {
        Field::Str(s) => {
            if s.contains('\0') {
                return Err(nul_rejection("timestamp"));
            }
            timestamp::parse_iso(s).map_err(|e| match e {
                TimestampError::NotIso => Rejection::new(
                    Kind::InvalidValue,
                    "timestamp",
                    format!(
                        "{} is not an ISO 8601 timestamp or epoch seconds",
                        value.preview()
                    ),
                ),
                TimestampError::OutOfWindow => out_of_window("timestamp", &value.preview()),
            })
        }
        Field::Number(text) => timestamp::parse_epoch_seconds(text).map_err(|_| {
            epoch_out_of_window("timestamp", &format!("{} epoch seconds", value.preview()))
        }),
        other => Err(wrong_type(
            "timestamp",
            "an ISO 8601 string or epoch seconds",
            other,
        )),
    }
}

fn timestamp_ms_from_json(value: &Field) -> Result<i64, Rejection> {
    match value {
        Field::Number(text) if is_integer_text(text) => timestamp::parse_epoch_millis(text)
            .map_err(|_| {
                out_of_window(
                    "timestamp_ms",
                    &format!("{} epoch milliseconds", value.preview()),
                )
            }),
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
fn id_from_json<'a>(
    field: &str,
    value: Option<Field<'a>>,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match value {
        None => Ok(None),
        Some(Field::Str(s)) => check_text(field, &s, MAX_ID_CHARS, false).map(|()| Some(s)),
        Some(Field::Number(text)) if is_integer_text(text) => Ok(Some(Cow::Borrowed(text))),
        Some(other) => Err(wrong_type(field, "a string or an integer", &other)),
    }
}

/// An address must look like one: an `@` with something on each side.
fn email(value: Option<Cow<'_, str>>) -> Result<Option<Cow<'_, str>>, Rejection> {
    match value {
        Some(address) => match address.split_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(Some(address)),
            _ => Err(Rejection::new(
                Kind::InvalidValue,
                "email",
                // The value is not repeated: error texts are readable by
                // metrics_ingest_reader, an address is personal data.
                "is not an email address (it needs an @ with text on each side)",
            )),
        },
        None => Ok(None),
    }
}

fn text_from_json<'a>(
    field: &str,
    value: Option<Field<'a>>,
    max: usize,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match value {
        None => Ok(None),
        Some(Field::Str(s)) => check_text(field, &s, max, true).map(|()| Some(s)),
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

fn sentiment_in_range(score: f64) -> Result<f64, Rejection> {
    if !score.is_finite() {
        return Err(not_finite("sentiment_score", &score.to_string()));
    }
    if !(-1.0..=1.0).contains(&score) {
        return Err(Rejection::new(
            Kind::OutOfRange,
            "sentiment_score",
            format!("{} is outside [-1, 1]", shown(score)),
        ));
    }
    Ok(score)
}

/// A JSON number, or a string holding exactly one (`"300"`).
fn number_from_json(field: &str, value: &Field) -> Result<f64, Rejection> {
    let text = match value {
        Field::Number(text) => *text,
        Field::Str(s) => s,
        other => return Err(wrong_type(field, "a number", other)),
    };
    match text.parse::<f64>() {
        // float8in refuses a number that is not zero but reads as 0 (22003), rather
        // than store 0 for 1e-400; subnormals such as 1e-310 it keeps, and so do we.
        Ok(n) if n == 0.0 && !mantissa_is_zero(text) => Err(Rejection::new(
            Kind::OutOfRange,
            field,
            format!(
                "{} is out of range for double precision (too close to zero)",
                value.preview()
            ),
        )),
        Ok(n) if n.is_finite() => Ok(n),
        // Rust also reads "inf" and "NaN"; a string spelling them is not finite either.
        Ok(_) => Err(not_finite(field, &value.preview())),
        Err(_) => Err(Rejection::new(
            Kind::InvalidValue,
            field,
            format!("{} is not a number", value.preview()),
        )),
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
    value: &Field,
) -> Result<Measurement, Rejection> {
    let (number, label) = match rule.kind {
        ValueKind::Boolean => (boolean_from_json(field, value)?, None),
        ValueKind::Number => (number_from_json(field, value)?, None),
        ValueKind::Score => match value {
            Field::Str(s) if s.parse::<f64>().is_err() => {
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
                                value.preview(),
                                rule.name,
                                known.join(", ")
                            ),
                        )
                    })?;
                check_text(field, s, MAX_LABEL_CHARS, false)?;
                (score, Some(s.to_string()))
            }
            _ => (number_from_json(field, value)?, None),
        },
    };
    if number.abs() > MAX_VALUE_MAGNITUDE {
        return Err(Rejection::new(
            Kind::OutOfRange,
            field,
            format!(
                "{} is beyond ±1e300, the largest magnitude metrics_ingest stores (daily totals must stay finite)",
                shown(number)
            ),
        ));
    }
    if rule.min.is_some_and(|min| number < min) || rule.max.is_some_and(|max| number > max) {
        let bound = |b: Option<f64>, open: &str| b.map_or(open.to_string(), shown);
        return Err(Rejection::new(
            Kind::OutOfRange,
            field,
            format!(
                "{} is outside the bounds of {} [{}, {}]",
                shown(number),
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

fn boolean_from_json(field: &str, value: &Field) -> Result<f64, Rejection> {
    let truth = match value {
        Field::Bool(b) => Some(*b),
        // 1, 1.0 and 1e0 all say the same; anything else is not a boolean. The
        // decimal text decides, not the double it rounds to (0.99999999999999999999).
        Field::Number(text) => decimal_zero_or_one(text),
        Field::Str(s) => match s.as_ref() {
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
            format!("{} is not a boolean (true, false, 0 or 1)", value.preview()),
        )
    })
}

/// Whether the digits before any exponent are all zeros (`0`, `-0.000`, `0e5`).
fn mantissa_is_zero(text: &str) -> bool {
    let mantissa = text.split(['e', 'E']).next().unwrap_or("");
    !mantissa.bytes().any(|b| matches!(b, b'1'..=b'9'))
}

/// The JSON number `text` is exactly 0 (Some(false)) or exactly 1 (Some(true)),
/// judged on its decimal digits; None for anything else.
fn decimal_zero_or_one(text: &str) -> Option<bool> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], &unsigned[i + 1..]),
        None => (unsigned, "0"),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = || whole.bytes().chain(fraction.bytes());
    let Some(first) = digits().position(|b| b != b'0') else {
        return Some(false); // every digit is 0: zero, whatever the exponent
    };
    // One significant digit, a 1, in the units place once the exponent applies.
    let significant = digits().filter(|b| *b != b'0').count();
    if negative || significant != 1 || digits().nth(first) != Some(b'1') {
        return None;
    }
    let exponent = exponent_value(exponent)?;
    (whole.len() as i64 - 1 - first as i64 + exponent == 0).then_some(true)
}

/// An exponent's text (`5`, `+5`, `-05`) as a number; None past ±10^15, which
/// no rule here needs to tell apart.
fn exponent_value(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let digits = digits.trim_start_matches('0');
    if digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: i64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    Some(if negative { -value } else { value })
}

/// Why numeric_in (which jsonb uses for every number) would refuse the JSON
/// number `text` with "value overflows numeric format" (22003), or None if it
/// holds it. PostgreSQL 15's numeric keeps at most 131072 digits before the
/// decimal point (a base-10000 weight in an int16), a display scale of at most
/// 16383 digits after it, and refuses an exponent of INT_MAX/2 or more either way.
pub fn numeric_overflow(text: &str) -> Option<&'static str> {
    const TOO_BIG: &str = "has more than the 131072 digits before the decimal point that PostgreSQL's numeric (and jsonb) can hold";
    const TOO_FINE: &str = "has more than the 16383 digits after the decimal point that PostgreSQL's numeric (and jsonb) can hold";
    const EXPONENT: &str = "has an exponent beyond what PostgreSQL's numeric (and jsonb) can read";
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (
            &unsigned[..i],
            exponent_value(&unsigned[i + 1..]).unwrap_or(i64::MAX),
        ),
        None => (unsigned, 0),
    };
    if exponent.unsigned_abs() >= (i32::MAX / 2) as u64 {
        return Some(EXPONENT);
    }
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (fraction.len() as i64 - exponent).max(0) > 16383 {
        return Some(TOO_FINE);
    }
    if let Some(first) = whole
        .bytes()
        .chain(fraction.bytes())
        .position(|b| b != b'0')
    {
        // The power of ten of the first significant digit.
        let position = whole.len() as i64 - 1 - first as i64 + exponent;
        if position > 131_071 {
            return Some(TOO_BIG);
        }
        if position < -131_072 {
            return Some(TOO_FINE);
        }
    }
    None
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// What jsonb_in would refuse or alter in a value bound for `attributes`.
enum JsonbProblem {
    Nul,
    DuplicateKey(String),
    Numeric(String, &'static str),
}

/// Refuses, as `field`'s rejection, a JSON value (valid syntax) that jsonb
/// could not store exactly as written.
fn check_for_jsonb(field: &str, value: &str) -> Result<(), Rejection> {
    match value.as_bytes().first() {
        // A plain number or a string without escapes needs no walk.
        Some(b'-' | b'0'..=b'9') => {
            return match numeric_overflow(value) {
                Some(reason) => Err(numeric_rejection(field, value, reason)),
                None => Ok(()),
            };
        }
        Some(b'"') if !value.contains('\\') => return Ok(()),
        Some(b'"' | b'{' | b'[') => {}
        _ => return Ok(()),
    }
    let problem = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(value);
    let walked = serde::de::DeserializeSeed::deserialize(JsonbWalk { problem: &problem }, &mut de);
    match (walked, problem.into_inner()) {
        (_, Some(JsonbProblem::Nul)) => Err(nul_rejection(field)),
        (_, Some(JsonbProblem::DuplicateKey(key))) => Err(Rejection::new(
            Kind::BadJson,
            field,
            format!(
                "key \"{}\" appears more than once in the same object",
                preview_str(&key)
            ),
        )),
        (_, Some(JsonbProblem::Numeric(number, reason))) => {
            Err(numeric_rejection(field, &number, reason))
        }
        (Err(e), None) => Err(bad_json(field, e)),
        (Ok(()), None) => Ok(()),
    }
}

fn numeric_rejection(field: &str, number: &str, reason: &str) -> Rejection {
    Rejection::new(
        Kind::OutOfRange,
        field,
        format!("the number {} {reason}", preview_str(number)),
    )
}

/// Walks one JSON value as jsonb_in will read it, stopping at the first
/// problem (recorded in `problem`; the walk then fails with an empty error).
/// serde_json's recursion limit bounds the depth, and it refuses lone surrogates.
#[derive(Clone, Copy)]
struct JsonbWalk<'p> {
    problem: &'p std::cell::RefCell<Option<JsonbProblem>>,
}

impl JsonbWalk<'_> {
    fn fail<E: serde::de::Error>(self, problem: JsonbProblem) -> E {
        *self.problem.borrow_mut() = Some(problem);
        E::custom("")
    }

    fn string<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        if s.contains('\0') {
            return Err(self.fail(JsonbProblem::Nul));
        }
        Ok(())
    }
}

/// serde_json's token for a number kept as text (feature arbitrary_precision).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> serde::de::DeserializeSeed<'de> for JsonbWalk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonbWalk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        self.string(s)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if key == NUMBER_TOKEN {
                let number: String = map.next_value()?;
                if let Some(reason) = numeric_overflow(&number) {
                    return Err(self.fail(JsonbProblem::Numeric(number, reason)));
                }
                continue;
            }
            self.string(&key)?;
            if seen.contains(&key) {
                return Err(self.fail(JsonbProblem::DuplicateKey(key.into_owned())));
            }
            map.next_value_seed(self)?;
            seen.insert(key);
        }
        Ok(())
    }
}

/// A scalar value of a flat JSON object, decoded as jsonb_in decodes it.
#[derive(Debug, Clone, PartialEq)]
pub enum FlatValue<'a> {
    Str(Cow<'a, str>),
    /// The number exactly as written (jsonb stores it as numeric_in reads it).
    Number(&'a str),
    Bool(bool),
    Null,
}

/// The keys and values of a JSON object whose values are all scalars, in
/// document order, strings decoded; None for anything else (an array or
/// object as a value, not an object, not valid JSON, a string whose escapes do
/// not decode). `attributes` is such an object for most elements (`platform`
/// and a few tags), and the SQL layer builds its jsonb from these pairs
/// without handing the text to PostgreSQL's JSON parser.
pub fn flat_object(json: &str) -> Option<Vec<(Cow<'_, str>, FlatValue<'_>)>> {
    let fields: ElementFields<'_> = serde_json::from_str(json).ok()?;
    if fields.duplicate_key.is_some() {
        return None;
    }
    fields
        .fields
        .into_iter()
        .map(|(key, raw)| {
            let value = match Field::of(raw, &key).ok()? {
                Field::Str(text) => FlatValue::Str(text),
                Field::Number(text) => FlatValue::Number(text),
                Field::Bool(b) => FlatValue::Bool(b),
                Field::Null => FlatValue::Null,
                Field::Array(_) | Field::Object(_) => return None,
            };
            Some((key, value))
        })
        .collect()
}

fn attributes_too_long() -> Rejection {
    Rejection::new(
        Kind::TooLong,
        "attributes",
        format!("unknown fields take more than the {MAX_ATTRIBUTES_BYTES} bytes of JSON kept in attributes"),
    )
}

/// The fields the schema does not know, as a JSON object built from the raw
/// text the client sent (numbers and strings exactly as written). Anything
/// jsonb_in would refuse (`\u0000`, a lone surrogate, a number numeric cannot
/// hold, nesting beyond serde_json's limit) or silently alter (a key repeated
/// in a nested object, which jsonb merges) is found here first, so it becomes
/// this element's rejection rather than an error that aborts the whole call.
#[derive(Default)]
struct Attributes {
    text: String,
}

impl Attributes {
    fn add(&mut self, key: &str, raw: &RawValue) -> Result<(), Rejection> {
        let value = raw.get();
        check_for_jsonb(key, value)?;
        if self.text.is_empty() {
            self.text.reserve(64);
            self.text.push('{');
        } else {
            self.text.push(',');
        }
        // Keys are re-escaped: the key as decoded may differ from its raw
        // spelling. A key of letters, digits and underscores needs no escape.
        if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            self.text.push('"');
            self.text.push_str(key);
            self.text.push('"');
        } else {
            self.text
                .push_str(&serde_json::to_string(key).map_err(|e| bad_json(key, e))?);
        }
        self.text.push(':');
        self.text.push_str(value);
        if self.text.len() > MAX_ATTRIBUTES_BYTES {
            return Err(attributes_too_long());
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Option<String>, Rejection> {
        if self.text.is_empty() {
            return Ok(None);
        }
        self.text.push('}');
        Ok(Some(self.text))
    }
}
