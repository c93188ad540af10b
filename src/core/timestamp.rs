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
    utc_fast(text).or_else(|| parse_iso_general(text))
}

/// The form nearly every client sends, `YYYY-MM-DDTHH:MM:SS[.fff]Z`, read
/// without chrono and without copying: the same value as
/// `parse_iso_general`, which takes everything else (offsets, a space for the
/// `T`, leap seconds, anything malformed). A fuzz test holds them equal.
fn utc_fast(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        b[from..from + len].iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let fraction_us = match &b[19..] {
        [b'Z'] => 0,
        [b'.', digits @ .., b'Z']
            if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) =>
        {
            fraction_micros(&text[19..text.len() - 1])?
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000_000 + fraction_us)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Fractional seconds, `.` and digits, as microseconds rounded as
/// PostgreSQL rounds them (see `split_fraction`).
fn fraction_micros(dot_and_digits: &str) -> Option<i64> {
    let fraction: f64 = dot_and_digits.parse().ok()?;
    // rint: round half to even, on the double product, exactly as PostgreSQL.
    Some((fraction * 1e6).round_ties_even() as i64)
}

fn parse_iso_general(text: &str) -> Option<i64> {
    // The fraction is judged apart, as PostgreSQL does (datetime.c,
    // ParseFractionalSecond): strtod of ".ddd", then rint(frac * 1e6). chrono
    // would truncate past nanoseconds and round half up.
    let (rest, fraction_us) = split_fraction(text)?;
    let rest = rest.as_ref();
    // PostgreSQL reads 24:00:00 as the next day's midnight, and refuses it
    // with a fraction, as it refuses a leap second (:60) with one.
    let (rest, next_day) = match midnight_as_24(rest) {
        Some(as_00) => (Cow::Owned(as_00), true),
        None => (Cow::Borrowed(rest), false),
    };
    let (whole_seconds, leap) = parse_whole_seconds(&rest)?;
    if (leap || next_day) && fraction_us > 0 {
        return None;
    }
    whole_seconds
        .checked_add(if next_day { 86_400 } else { 0 })?
        .checked_mul(1_000_000)?
        .checked_add(fraction_us)
}

/// `YYYY-MM-DD[T ]24:00:00...` with the time as `00:00:00`, if `text` has that form.
fn midnight_as_24(text: &str) -> Option<String> {
    let b = text.as_bytes();
    (b.len() >= 19 && matches!(b[10], b'T' | b't' | b' ') && &b[11..19] == b"24:00:00")
        .then(|| format!("{}00:00:00{}", &text[..11], &text[19..]))
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
    let micros = fraction_micros(&text[dot..end])?;
    let mut rest = String::with_capacity(text.len() - digits - 1);
    rest.push_str(&text[..dot]);
    rest.push_str(&text[end..]);
    Some((Cow::Owned(rest), micros))
}

/// PostgreSQL's largest time zone displacement, 15:59:59 (datetime.c,
/// MAX_TZDISP_HOUR); a greater one is refused.
const MAX_OFFSET_SECONDS: i32 = 15 * 3_600 + 59 * 60 + 59;

/// Seconds since 1970 of whole-second ISO text, and whether it named a leap
/// second (`:60`). An offset may carry seconds (`+05:30:15`), as PostgreSQL
/// allows, and may not exceed 15:59:59 either way.
fn parse_whole_seconds(text: &str) -> Option<(i64, bool)> {
    let (text, offset_seconds) = split_offset_seconds(text)?;
    let text = text.as_ref();
    let with_offset = DateTime::parse_from_rfc3339(text).ok().or_else(|| {
        const WITH_OFFSET: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%#z", "%Y-%m-%d %H:%M:%S%#z"];
        WITH_OFFSET
            .iter()
            .find_map(|format| DateTime::parse_from_str(text, format).ok())
    });
    if let Some(dt) = with_offset {
        // chrono read the offset without its seconds; the instant is that many
        // seconds earlier (for a + offset) or later (for a - one).
        if (dt.offset().local_minus_utc() + offset_seconds).abs() > MAX_OFFSET_SECONDS {
            return None;
        }
        let (seconds, leap) = unix_seconds(dt);
        return Some((seconds - i64::from(offset_seconds), leap));
    }
    if offset_seconds != 0 {
        return None;
    }
    const NAIVE: [&str; 2] = ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"];
    NAIVE.iter().find_map(|format| {
        NaiveDateTime::parse_from_str(text, format)
            .ok()
            .map(|naive| unix_seconds(naive.and_utc()))
    })
}

/// `text` without the seconds of an offset written `+HH:MM:SS` (which chrono
/// does not read), and those seconds, signed as the offset (0 when there are none).
fn split_offset_seconds(text: &str) -> Option<(Cow<'_, str>, i32)> {
    let b = text.as_bytes();
    let n = b.len();
    let is_offset_with_seconds = n >= 9
        && matches!(b[n - 9], b'+' | b'-')
        && [1, 2, 4, 5, 7, 8]
            .iter()
            .all(|&k| b[n - 9 + k].is_ascii_digit())
        && b[n - 6] == b':'
        && b[n - 3] == b':';
    if !is_offset_with_seconds {
        return Some((Cow::Borrowed(text), 0));
    }
    let seconds = i32::from(b[n - 2] - b'0') * 10 + i32::from(b[n - 1] - b'0');
    if seconds > 59 {
        return None;
    }
    let sign = if b[n - 9] == b'+' { 1 } else { -1 };
    Some((Cow::Borrowed(&text[..n - 3]), sign * seconds))
}

/// Seconds since 1970 of a parsed time whose text held whole seconds, and
/// whether it was a leap second. chrono reads a leap second (`:60`) as second
/// 59 plus a second's worth of nanoseconds, which `timestamp()` drops;
/// PostgreSQL reads `23:59:60` as the next minute's `00`, so this counts that
/// second.
fn unix_seconds<Tz: chrono::TimeZone>(dt: DateTime<Tz>) -> (i64, bool) {
    let leap = dt.timestamp_subsec_nanos() >= 1_000_000_000;
    (dt.timestamp() + i64::from(leap), leap)
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
            // A leap second is the next minute's first second, as PostgreSQL reads it.
            ("2024-08-12T11:59:60Z", Ok(T_2024_08_12_12)),
            // With a fraction PostgreSQL refuses it (22008), and 24:00:00 likewise.
            ("2024-08-12T11:59:60.25Z", Err(TimestampError::NotIso)),
            ("2024-08-12T11:59:60.0000004Z", Ok(T_2024_08_12_12)),
            (
                "2024-08-11T24:00:00Z",
                Ok(T_2024_08_12_12 - 12 * 3_600_000_000),
            ),
            (
                "2024-08-11 24:00:00.000+00",
                Ok(T_2024_08_12_12 - 12 * 3_600_000_000),
            ),
            ("2024-08-11T24:00:00.5Z", Err(TimestampError::NotIso)),
            ("2024-08-11T24:00:01Z", Err(TimestampError::NotIso)),
            ("2024-08-11T24:01:00Z", Err(TimestampError::NotIso)),
            // Offsets: up to 15:59:59 either way, with seconds if need be.
            ("2024-08-13T03:59:59+15:59:59", Ok(T_2024_08_12_12)),
            ("2024-08-11T20:00:01-15:59:59", Ok(T_2024_08_12_12)),
            ("2024-08-12T17:30:15+05:30:15", Ok(T_2024_08_12_12)),
            ("2024-08-12T06:29:45-05:30:15", Ok(T_2024_08_12_12)),
            (
                "2024-08-12T17:30:15.5+05:30:15",
                Ok(T_2024_08_12_12 + 500_000),
            ),
            ("2024-08-13T04:00:00+16:00", Err(TimestampError::NotIso)),
            ("2024-08-13T11:59:00+23:59", Err(TimestampError::NotIso)),
            ("2024-08-11T20:00:00-16:00", Err(TimestampError::NotIso)),
            ("2024-08-12T12:00:00+05:30:60", Err(TimestampError::NotIso)),
            ("2024-08-12T12:00:15+00:00:15", Ok(T_2024_08_12_12)),
            ("2024-08-12T11:59:45-00:00:15", Ok(T_2024_08_12_12)),
            ("2024-08-12T13:59:60+02:00", Ok(T_2024_08_12_12)),
            ("2024-08-12 11:59:60", Ok(T_2024_08_12_12)),
            ("2099-12-31T23:59:60Z", Err(TimestampError::OutOfWindow)),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse_iso(text), expected, "{text}");
        }
    }

    /// The fast path for `...Z` against the general parser, on generated
    /// texts near that form: valid and invalid dates, leap years, leap seconds,
    /// fractions of every length, stray characters.
    #[test]
    fn the_utc_fast_path_reads_as_the_general_parser_does() {
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut fast = 0;
        for _ in 0..200_000 {
            let year = [1999, 2000, 2023, 2024, 2099, 2100, 1900, 2400][next(8) as usize];
            let two = |n: u64| format!("{n:02}");
            let mut text = format!(
                "{year}-{}-{}T{}:{}:{}",
                two(next(14)),
                two(next(33)),
                two(next(26)),
                two(next(61)),
                two(next(62))
            );
            match next(4) {
                0 => {}
                _ => {
                    text.push('.');
                    for _ in 0..next(13) {
                        text.push(char::from(b'0' + next(10) as u8));
                    }
                }
            }
            text.push(['Z', 'Z', 'Z', 'z', '+'][next(5) as usize]);
            if next(20) == 0 {
                let at = next(text.len() as u64) as usize;
                text.replace_range(at..at + 1, ["x", " ", "9", ""][next(4) as usize]);
            }
            let general = parse_iso_general(&text);
            if let Some(value) = utc_fast(&text) {
                fast += 1;
                assert_eq!(Some(value), general, "{text}");
            }
            assert_eq!(parse_iso_unchecked(&text), general, "{text}");
        }
        assert!(fast > 50_000, "the fast path read only {fast} texts");
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
