//! Timestamp rules, shared by ingest_json and insert_metric.
//!
//! Stored values are microseconds since the Unix epoch, UTC. A fixed plausible
//! window catches clock garbage and, above all, epoch milliseconds sent as
//! seconds (which would otherwise land around the year 53,000).

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime};

/// 2000-01-01T00:00:00Z, inclusive.
pub const WINDOW_START_UNIX_US: i64 = 946_684_800_000_000;
/// 2100-01-01T00:00:00Z, exclusive.
pub const WINDOW_END_UNIX_US: i64 = 4_102_444_800_000_000;

/// PostgreSQL counts timestamptz from 2000-01-01; the Unix epoch is this far before it.
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

#[derive(Debug, PartialEq)]
pub enum TimestampError {
    NotIso,
    OutOfWindow,
}

/// RFC 3339 / ISO 8601 text. Without an offset, the time is UTC whatever the
/// session's TimeZone, so the same payload stores the same instant everywhere.
pub fn parse_iso(text: &str) -> Result<i64, TimestampError> {
    let micros = parse_iso_unchecked(text).ok_or(TimestampError::NotIso)?;
    check_window(micros)
}

fn parse_iso_unchecked(text: &str) -> Option<i64> {
    // The fraction is judged apart, as PostgreSQL does (datetime.c,
    // ParseFractionalSecond): strtod of ".ddd", then rint(frac * 1e6). chrono
    // would truncate past nanoseconds and round half up.
    let (rest, fraction_us) = split_fraction(text)?;
    let rest = rest.as_ref();
    let whole_seconds = parse_whole_seconds(rest)?;
    whole_seconds
        .checked_mul(1_000_000)?
        .checked_add(fraction_us)
}

/// `text` without its fractional seconds, and those as microseconds rounded as
/// PostgreSQL's timestamp input rounds them. The first `.` of an ISO timestamp
/// is the fraction's (dates, times and offsets have none).
fn split_fraction(text: &str) -> Option<(Cow<'_, str>, i64)> {
    let Some(dot) = text.find('.') else {
        return Some((Cow::Borrowed(text), 0));
    };
    let digits = text[dot + 1..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if digits == 0 || !text[..dot].ends_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let end = dot + 1 + digits;
    let fraction: f64 = text[dot..end].parse().ok()?;
    // rint: round half to even, on the double product, exactly as PostgreSQL.
    let micros = (fraction * 1e6).round_ties_even() as i64;
    let mut rest = String::with_capacity(text.len() - digits - 1);
    rest.push_str(&text[..dot]);
    rest.push_str(&text[end..]);
    Some((Cow::Owned(rest), micros))
}

fn parse_whole_seconds(text: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.timestamp());
    }
    const WITH_OFFSET: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%#z", "%Y-%m-%d %H:%M:%S%#z"];
    for format in WITH_OFFSET {
        if let Ok(dt) = DateTime::parse_from_str(text, format) {
            return Some(dt.timestamp());
        }
    }
    const NAIVE: [&str; 2] = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"];
    for format in NAIVE {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Some(naive.and_utc().timestamp());
        }
    }
    None
}

/// A JSON number of epoch seconds, as its exact text (integer or fractional).
/// Read as `to_timestamp(double precision)` reads it (float8_timestamptz):
/// the text as a double, moved to PostgreSQL's epoch, then rint(seconds * 1e6).
pub fn parse_epoch_seconds(number_text: &str) -> Result<i64, TimestampError> {
    let micros = epoch_text_to_micros(number_text).ok_or(TimestampError::OutOfWindow)?;
    check_window(micros)
}

fn epoch_text_to_micros(text: &str) -> Option<i64> {
    let seconds: f64 = text.parse().ok()?;
    // Beyond ±1e12 s is far outside the window, and keeps the cast below exact.
    if !seconds.is_finite() || seconds.abs() > 1e12 {
        return None;
    }
    const PG_EPOCH_OFFSET_S: f64 = (PG_EPOCH_OFFSET_US / 1_000_000) as f64;
    let pg_us = ((seconds - PG_EPOCH_OFFSET_S) * 1e6).round_ties_even() as i64;
    Some(pg_us + PG_EPOCH_OFFSET_US)
}

/// Epoch milliseconds (the `timestamp_ms` field): an integer.
pub fn parse_epoch_millis(number_text: &str) -> Result<i64, TimestampError> {
    let millis: i64 = number_text
        .parse()
        .map_err(|_| TimestampError::OutOfWindow)?;
    check_window(
        millis
            .checked_mul(1000)
            .ok_or(TimestampError::OutOfWindow)?,
    )
}

pub fn check_window(unix_us: i64) -> Result<i64, TimestampError> {
    if (WINDOW_START_UNIX_US..WINDOW_END_UNIX_US).contains(&unix_us) {
        Ok(unix_us)
    } else {
        Err(TimestampError::OutOfWindow)
    }
}

/// For error messages: the instant as ISO 8601 UTC, when it is representable.
pub fn describe_unix_us(unix_us: i64) -> String {
    // PostgreSQL's infinities, shifted to the Unix epoch, saturate at the i64 bounds.
    match unix_us {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    DateTime::from_timestamp_micros(unix_us)
        .map(|dt| dt.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string())
        .unwrap_or_else(|| format!("{unix_us} microseconds from 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T_2024_08_12_12: i64 = 1_723_464_000_000_000;

    #[test]
    fn iso_forms() {
        let cases: &[(&str, Result<i64, TimestampError>)] = &[
            ("2024-08-12T12:00:00+00:00", Ok(T_2024_08_12_12)),
            ("2024-08-12T12:00:00Z", Ok(T_2024_08_12_12)),
            ("2024-08-12T14:00:00+02:00", Ok(T_2024_08_12_12)),
            ("2024-08-12 12:00:00", Ok(T_2024_08_12_12)),
            ("2024-08-12T12:00:00", Ok(T_2024_08_12_12)),
            ("2024-08-12T12:00:00.000001Z", Ok(T_2024_08_12_12 + 1)),
            ("2024-08-12T12:00:00.0000015Z", Ok(T_2024_08_12_12 + 2)),
            ("2024-08-12T12:00:00.0000025Z", Ok(T_2024_08_12_12 + 2)),
            ("2024-08-12 12:00:00+00", Ok(T_2024_08_12_12)),
            ("not a date", Err(TimestampError::NotIso)),
            ("2024-13-12T12:00:00Z", Err(TimestampError::NotIso)),
            ("", Err(TimestampError::NotIso)),
            ("1999-12-31T23:59:59Z", Err(TimestampError::OutOfWindow)),
            ("2100-01-01T00:00:00Z", Err(TimestampError::OutOfWindow)),
            ("99999-01-01T00:00:00Z", Err(TimestampError::NotIso)),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse_iso(text), expected, "{text}");
        }
    }

    #[test]
    fn epoch_seconds_forms() {
        let cases: &[(&str, Result<i64, TimestampError>)] = &[
            ("1622558400", Ok(1_622_558_400_000_000)),
            ("1622558400.5", Ok(1_622_558_400_500_000)),
            ("1722470400.000001", Ok(1_722_470_400_000_001)),
            ("1.6225584e9", Ok(1_622_558_400_000_000)),
            ("1622558400000", Err(TimestampError::OutOfWindow)), // milliseconds sent as seconds
            ("-1", Err(TimestampError::OutOfWindow)),
            ("0", Err(TimestampError::OutOfWindow)),
            ("1e400", Err(TimestampError::OutOfWindow)),
            (
                "99999999999999999999999999",
                Err(TimestampError::OutOfWindow),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse_epoch_seconds(text), expected, "{text}");
        }
    }

    #[test]
    fn epoch_millis() {
        assert_eq!(
            parse_epoch_millis("1622558400123"),
            Ok(1_622_558_400_123_000)
        );
        assert_eq!(
            parse_epoch_millis("1622558400"),
            Err(TimestampError::OutOfWindow)
        );
        assert_eq!(parse_epoch_millis("1.5"), Err(TimestampError::OutOfWindow));
    }
}
