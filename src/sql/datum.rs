//! Datums from validated values, and the columns the extension supplies: the
//! leaf every sink builds rows from. Nothing here knows about tables or paths.

use std::borrow::Cow;
use std::ffi::{c_char, CStr, CString};

use pgrx::pg_sys;

use super::errors::raise_internal;
use crate::core::element::{flat_object, Context, FlatValue, Measurement};
use crate::core::timestamp::PG_EPOCH_OFFSET_US;

/// The columns of metrics_ingest.metrics that an element supplies, in the order
/// of [`supplied_values`] and of the INSERT path's parameters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Column {
    Timestamp,
    UserId,
    SessionId,
    MetricType,
    MetricValue,
    MetricLabel,
    DeviceId,
    AppVersion,
    Location,
    SentimentScore,
    EventId,
    Attributes,
}

pub const SUPPLIED: usize = 12;

impl Column {
    pub const ALL: [Column; SUPPLIED] = [
        Column::Timestamp,
        Column::UserId,
        Column::SessionId,
        Column::MetricType,
        Column::MetricValue,
        Column::MetricLabel,
        Column::DeviceId,
        Column::AppVersion,
        Column::Location,
        Column::SentimentScore,
        Column::EventId,
        Column::Attributes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Column::Timestamp => "timestamp",
            Column::UserId => "user_id",
            Column::SessionId => "session_id",
            Column::MetricType => "metric_type",
            Column::MetricValue => "metric_value",
            Column::MetricLabel => "metric_label",
            Column::DeviceId => "device_id",
            Column::AppVersion => "app_version",
            Column::Location => "location",
            Column::SentimentScore => "sentiment_score",
            Column::EventId => "event_id",
            Column::Attributes => "attributes",
        }
    }

    pub fn type_oid(self) -> pg_sys::Oid {
        match self {
            Column::Timestamp => pg_sys::TIMESTAMPTZOID,
            Column::MetricValue | Column::SentimentScore => pg_sys::FLOAT8OID,
            Column::Attributes => pg_sys::JSONBOID,
            _ => pg_sys::TEXTOID,
        }
    }

    pub fn by_name(name: &CStr) -> Option<Column> {
        Column::ALL
            .into_iter()
            .find(|c| c.name().as_bytes() == name.to_bytes())
    }
}

/// The event key, in the order of the unique index that enforces it.
pub const EVENT_KEY: [Column; 4] = [
    Column::UserId,
    Column::EventId,
    Column::MetricType,
    Column::Timestamp,
];

/// A timestamptz datum from microseconds since 1970-01-01 UTC.
pub fn timestamptz_datum(unix_us: i64) -> pg_sys::Datum {
    pg_sys::Datum::from(unix_us - PG_EPOCH_OFFSET_US)
}

/// The values of the supplied columns, in [`Column::ALL`]'s order (None is NULL).
///
/// # Safety
/// Text datums are palloc'd in the current memory context, which must outlive their use.
pub unsafe fn supplied_values(
    context: &Context,
    measurement: &Measurement,
    attributes: Option<pg_sys::Datum>,
) -> [Option<pg_sys::Datum>; SUPPLIED] {
    // SAFETY: the caller's memory context holds the datums (this function's contract).
    let [user_id, session_id, metric_type, metric_label, device_id, app_version, location, event_id] = unsafe {
        text_datums([
            Some(&*context.user_id),
            context.session_id.as_deref(),
            Some(measurement.metric_type.as_str()),
            measurement.label.as_deref(),
            context.device_id.as_deref(),
            context.app_version.as_deref(),
            context.location.as_deref(),
            context.event_id.as_deref(),
        ])
    };
    [
        Some(timestamptz_datum(context.unix_us)),
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
/// one allocation instead of one each. The strings are validated ids and
/// labels, far below varlena's 1 GB limit.
unsafe fn text_datums<const N: usize>(values: [Option<&str>; N]) -> [Option<pg_sys::Datum>; N] {
    const HEADER: usize = pg_sys::VARHDRSZ;
    // Each datum starts on a 4-byte boundary, as its 4-byte header requires.
    let padded = |len: usize| (HEADER + len + 3) & !3;
    let mut out = [None; N];
    let total: usize = values.iter().flatten().map(|s| padded(s.len())).sum();
    if total == 0 {
        return out;
    }
    // SAFETY: palloc raises on failure rather than returning NULL; every write
    // below stays inside the `total` bytes summed above from the same lengths.
    unsafe {
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
    }
    out
}

/// A text datum in the current memory context.
pub fn text_datum(value: &str) -> pg_sys::Datum {
    // SAFETY: the pointer and length describe `value`, which outlives the call;
    // cstring_to_text_with_len copies it into a new palloc'd varlena.
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            value.as_ptr() as *const c_char,
            value.len() as i32,
        ))
    }
}

pub fn float8_datum(value: f64) -> pg_sys::Datum {
    pg_sys::Datum::from(value.to_bits())
}

/// A jsonb datum, in the current memory context, from JSON text the core
/// validated (so the CString cannot meet a NUL byte in practice).
pub fn jsonb_datum(json: &str) -> pg_sys::Datum {
    match flat_object(json) {
        Some(pairs) => flat_jsonb(&pairs),
        None => jsonb_in(json),
    }
}

/// The jsonb of a flat object, built with the calls jsonb_in's parser makes
/// for it (pushJsonbValue for the object, each key and each value, numbers
/// through numeric_in, then JsonbValueToJsonb), so the same bytes, without
/// PostgreSQL's JSON lexer and parser, which cost most of jsonb_in here
/// (a pg_test compares the two on a table of objects).
fn flat_jsonb(pairs: &[(Cow<'_, str>, FlatValue<'_>)]) -> pg_sys::Datum {
    use pg_sys::JsonbIteratorToken::{WJB_BEGIN_OBJECT, WJB_END_OBJECT, WJB_KEY, WJB_VALUE};
    // A string as jsonb_in passes it: its bytes, not NUL-terminated, read
    // until JsonbValueToJsonb copies them (`pairs` outlives that call).
    let string = |s: &str| {
        // SAFETY: an all-zero JsonbValue is a valid jbvNull; the string
        // member is then set as the only one read for jbvString.
        let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
        v.type_ = pg_sys::jbvType::jbvString;
        v.val.string = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 {
            // attributes are at most 64 KiB, far below jsonb's string limit.
            len: s.len() as i32,
            val: s.as_ptr() as *mut c_char,
        };
        v
    };
    // SAFETY: the parse state starts NULL and goes through one object's
    // begin, key/value pairs and end, as jsonb_in's semantic actions drive it;
    // every JsonbValue points at bytes in `pairs` or at a numeric palloc'd in
    // the current context, alive until JsonbValueToJsonb has copied them.
    unsafe {
        let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
        pg_sys::pushJsonbValue(&mut state, WJB_BEGIN_OBJECT, std::ptr::null_mut());
        for (key, value) in pairs {
            let mut k = string(key);
            pg_sys::pushJsonbValue(&mut state, WJB_KEY, &mut k);
            let mut v: pg_sys::JsonbValue = std::mem::zeroed();
            match value {
                FlatValue::Str(text) => v = string(text),
                FlatValue::Number(text) => {
                    v.type_ = pg_sys::jbvType::jbvNumeric;
                    v.val.numeric = numeric(text).cast_mut_ptr();
                }
                FlatValue::Bool(b) => {
                    v.type_ = pg_sys::jbvType::jbvBool;
                    v.val.boolean = *b;
                }
                FlatValue::Null => v.type_ = pg_sys::jbvType::jbvNull,
            }
            pg_sys::pushJsonbValue(&mut state, WJB_VALUE, &mut v);
        }
        let object = pg_sys::pushJsonbValue(&mut state, WJB_END_OBJECT, std::ptr::null_mut());
        pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(object))
    }
}

/// numeric_in of a JSON number's text, as jsonb_in calls it.
fn numeric(text: &str) -> pg_sys::Datum {
    let Ok(cstring) = CString::new(text) else {
        raise_internal("attributes", "NUL byte in a number")
    };
    // SAFETY: numeric_in takes a NUL-terminated string (kept alive across the
    // call), the type's OID (InvalidOid) and typmod -1, as jsonb_in passes them.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::numeric_in,
            &[
                Some(pg_sys::Datum::from(cstring.as_ptr())),
                Some(pg_sys::Datum::from(pg_sys::InvalidOid)),
                Some(pg_sys::Datum::from(-1i32)),
            ],
        )
    }
    .unwrap_or_else(|| raise_internal("attributes", "numeric_in returned NULL"))
}

/// jsonb_in itself, for JSON that is not a flat object.
pub fn jsonb_in(json: &str) -> pg_sys::Datum {
    let Ok(cstring) = CString::new(json) else {
        raise_internal("attributes", "NUL byte")
    };
    // SAFETY: jsonb_in takes a NUL-terminated string, which `cstring` is and
    // keeps alive across the call.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::jsonb_in,
            &[Some(pg_sys::Datum::from(cstring.as_ptr()))],
        )
    }
    .unwrap_or_else(|| raise_internal("attributes", "jsonb_in returned NULL"))
}

/// jsonb's text form through jsonb_out: no serde_json value in between, so no
/// nesting limit is hit before the core sees (and judges) the text.
///
/// # Safety
/// `datum` must be a jsonb datum.
pub unsafe fn jsonb_text(datum: pg_sys::Datum) -> String {
    // SAFETY: the caller passes a jsonb datum; jsonb_out returns a palloc'd
    // NUL-terminated string, copied here and then freed.
    unsafe {
        let text = pgrx::direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(datum)])
            .unwrap_or_else(|| raise_internal("jsonb_out", "returned NULL"));
        let cstring = CStr::from_ptr(text.cast_mut_ptr::<c_char>());
        let owned = cstring.to_string_lossy().into_owned();
        pg_sys::pfree(text.cast_mut_ptr());
        owned
    }
}

/// The array type of an element type `array_datum` builds.
pub fn array_type(element_type: pg_sys::Oid) -> pg_sys::Oid {
    match element_type {
        pg_sys::TEXTOID => pg_sys::TEXTARRAYOID,
        pg_sys::INT4OID => pg_sys::INT4ARRAYOID,
        pg_sys::DATEOID => pg_sys::DATEARRAYOID,
        pg_sys::INT8OID => pg_sys::INT8ARRAYOID,
        pg_sys::FLOAT8OID => pg_sys::FLOAT8ARRAYOID,
        pg_sys::TIMESTAMPTZOID => pg_sys::TIMESTAMPTZARRAYOID,
        _ => raise_internal("array_type", "an element type it does not know"),
    }
}

/// A one-dimensional array datum, in the current memory context, of text or of
/// a by-value type the rollups and dead letters write (int4, int8, float8,
/// timestamptz, date).
pub fn array_datum(values: &[Option<pg_sys::Datum>], element_type: pg_sys::Oid) -> pg_sys::Datum {
    let (length, by_value, align) = match element_type {
        pg_sys::TEXTOID => (-1, false, b'i'),
        pg_sys::DATEOID | pg_sys::INT4OID => (4, true, b'i'),
        pg_sys::INT8OID | pg_sys::FLOAT8OID | pg_sys::TIMESTAMPTZOID => (8, true, b'd'),
        _ => raise_internal("array_datum", "an element type it does not know"),
    };
    let mut datums: Vec<pg_sys::Datum> = values
        .iter()
        .map(|v| v.unwrap_or(pg_sys::Datum::from(0)))
        .collect();
    let mut nulls: Vec<bool> = values.iter().map(Option::is_none).collect();
    let mut dims = [values.len() as i32];
    let mut lower_bounds = [1];
    // SAFETY: the arrays hold `values.len()` entries each, as `dims` says; the
    // length, by-value flag and alignment are those of `element_type` (pg_type),
    // and construct_md_array copies the values into a new palloc'd array.
    unsafe {
        pg_sys::Datum::from(pg_sys::construct_md_array(
            datums.as_mut_ptr(),
            nulls.as_mut_ptr(),
            1,
            dims.as_mut_ptr(),
            lower_bounds.as_mut_ptr(),
            element_type,
            length,
            by_value,
            align as c_char,
        ))
    }
}

/// One array parameter of a statement, and its type: `f` of each item (None
/// for NULL), as an array of `element_type`, in the current memory context.
pub fn array_column<T>(
    items: &[T],
    f: impl Fn(&T) -> Option<pg_sys::Datum>,
    element_type: pg_sys::Oid,
) -> (pg_sys::Datum, pg_sys::Oid) {
    let values: Vec<_> = items.iter().map(f).collect();
    (array_datum(&values, element_type), array_type(element_type))
}
