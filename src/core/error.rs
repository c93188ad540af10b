//! Every way ingestion can fail, as data. The SQL layer maps each variant to an
//! SQLSTATE; keeping the mapping here lets the pure tests assert it too.

use std::fmt;

/// Why one element (or one CALL) was refused. `field` is the JSON key the
/// problem is about, or `"element"` when it concerns the element as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub field: String,
    pub message: String,
    pub kind: RejectionKind,
}

/// Families of element errors; each has its own SQLSTATE when raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// A required field is absent or null.
    Missing,
    /// The JSON type is wrong (an object where a string belongs).
    WrongType,
    /// The value has the right type but is not acceptable (unknown metric type, bad date).
    InvalidValue,
    /// A number outside the metric type's bounds or the plausible time window.
    OutOfRange,
    /// NaN, Infinity or a number too large for double precision.
    NotFinite,
    /// A string PostgreSQL cannot store (`\u0000`).
    Untranslatable,
    /// The element is not well-formed JSON by itself (lone surrogate, duplicate key).
    BadJson,
    /// A documented length limit was exceeded.
    TooLong,
    /// A CHECK constraint a DBA added to the table refused the row.
    CheckViolation,
    /// A column a DBA made NOT NULL got no value.
    NotNullViolation,
}

impl RejectionKind {
    /// The SQLSTATE raised for this family when `on_error => 'stop'` or by insert_metric.
    pub fn sqlstate(self) -> &'static str {
        match self {
            RejectionKind::Missing => "22004",        // null_value_not_allowed
            RejectionKind::WrongType => "22023",      // invalid_parameter_value
            RejectionKind::InvalidValue => "22023",   // invalid_parameter_value
            RejectionKind::OutOfRange => "22003",     // numeric_value_out_of_range
            RejectionKind::NotFinite => "22003",      // numeric_value_out_of_range
            RejectionKind::Untranslatable => "22P05", // untranslatable_character
            RejectionKind::BadJson => "22030", // duplicate_json_object_key_value / invalid json
            RejectionKind::TooLong => "22001", // string_data_right_truncation
            RejectionKind::CheckViolation => "23514", // check_violation
            RejectionKind::NotNullViolation => "23502", // not_null_violation
        }
    }
}

impl Rejection {
    /// `field` and `message` are bounded here, whatever the caller built: a
    /// 5 MB key must not become a 5 MB error (in the result, in `rejected`, in
    /// the server log). The field, a key as written, loses its control
    /// characters (shown escaped) and is cut after MAX_FIELD_CHARS.
    pub fn new(kind: RejectionKind, field: impl Into<String>, message: impl Into<String>) -> Self {
        Rejection {
            field: bounded_field(field.into()),
            message: bounded(message.into(), MAX_MESSAGE_CHARS),
            kind,
        }
    }
}

/// Longest `field` of a rejection, in characters (longer keys are cut, with "...").
pub const MAX_FIELD_CHARS: usize = 64;
/// Longest message of a rejection, in characters; each quoted piece in it is
/// already cut shorter, this bounds the whole whatever its pieces.
pub const MAX_MESSAGE_CHARS: usize = 1000;

fn bounded_field(field: String) -> String {
    if field.len() <= MAX_FIELD_CHARS && !field.chars().any(char::is_control) {
        return field;
    }
    let mut out = String::new();
    for (i, c) in field.chars().enumerate() {
        if i == MAX_FIELD_CHARS {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` cut after `max` characters, with "..." to say so.
pub fn bounded(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((cut, _)) => format!("{}...", &text[..cut]),
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a whole payload could not be read: there is no element to give a verdict to.
#[derive(Debug, Clone, PartialEq)]
pub enum PayloadError {
    /// Not JSON, truncated JSON, trailing garbage.
    NotJson { message: String },
    /// JSON, but neither an array nor an object.
    WrongShape { found: &'static str },
    /// Nesting deeper than serde_json's recursion limit.
    TooDeep { message: String },
}

impl PayloadError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            PayloadError::NotJson { .. } => "22P02", // invalid_text_representation, as json_in
            PayloadError::WrongShape { .. } => "22023",
            PayloadError::TooDeep { .. } => "54001", // statement_too_complex, as json_in
        }
    }
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::NotJson { message } => write!(f, "payload is not valid JSON: {message}"),
            PayloadError::WrongShape { found } => write!(
                f,
                "payload must be a JSON array of elements or a single element object, found {found}"
            ),
            PayloadError::TooDeep { message } => write!(f, "payload nests too deeply: {message}"),
        }
    }
}
