//! Raising the core's errors as PostgreSQL errors with their SQLSTATEs.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use crate::core::error::{PayloadError, Rejection};

/// "22023" → the packed integer PostgreSQL uses (MAKE_SQLSTATE).
fn sqlstate(code: &str) -> PgSqlErrorCode {
    let packed = code.bytes().take(5).enumerate().fold(0_i32, |acc, (i, b)| {
        acc + ((i32::from(b.wrapping_sub(b'0')) & 0x3F) << (6 * i))
    });
    PgSqlErrorCode::from(packed)
}

pub fn raise(code: PgSqlErrorCode, message: String) -> ! {
    ErrorReport::new(code, message, "metrics_ingest").report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// `element 3: timestamp: "x" is not ...` for ingest_json; no prefix for insert_metric.
pub fn raise_rejection(rejection: &Rejection, ordinal: Option<usize>) -> ! {
    let message = match ordinal {
        Some(n) => format!("element {n}: {rejection}"),
        None => rejection.to_string(),
    };
    raise(sqlstate(rejection.kind.sqlstate()), message)
}

pub fn raise_payload(error: &PayloadError) -> ! {
    raise(sqlstate(error.sqlstate()), error.to_string())
}

/// An SPI failure is not the caller's data: report it as an internal error.
pub fn raise_internal(context: &str, detail: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("metrics_ingest: {context}: {detail}"),
    )
}
