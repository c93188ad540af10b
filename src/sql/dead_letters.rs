//! Dead letters: every rejected element goes to metrics_ingest.rejected, as
//! received, with its reason, as soon as it is judged.

use std::cell::Cell;
use std::ffi::c_char;

use pgrx::{pg_sys, PgMemoryContexts};

use super::datum::text_datum;
use super::errors::raise_internal;
use super::insert_path::kept_plan;
use crate::core::error::Rejection;

const INSERT_REJECTED: &str = "INSERT INTO metrics_ingest.rejected \
    (source, ordinal, element, field, error, sqlstate) VALUES ($1, $2, $3, $4, $5, $6)";
const INSERT_REJECTED_TYPES: [pg_sys::Oid; 6] = [
    pg_sys::TEXTOID,
    pg_sys::INT4OID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
];

thread_local! {
    static REJECTED_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

/// Stores one dead letter. SPI must be connected; `memory` is reset afterwards.
pub fn reject(
    memory: &mut PgMemoryContexts,
    source: &str,
    ordinal: usize,
    element: &str,
    rejection: &Rejection,
) {
    let plan = kept_plan(&REJECTED_PLAN, INSERT_REJECTED, &INSERT_REJECTED_TYPES);
    // SAFETY: the parameters are built in `memory`, which outlives the SPI call
    // and is reset after it.
    unsafe {
        memory.switch_to(|_| {
            let values = [
                text_datum(source),
                pg_sys::Datum::from(i32::try_from(ordinal).unwrap_or(i32::MAX)),
                text_datum(element),
                text_datum(&rejection.field),
                text_datum(&rejection.message),
                text_datum(rejection.kind.sqlstate()),
            ];
            let nulls = [b' ' as c_char; 6];
            let status = pg_sys::SPI_execute_plan(
                plan,
                values.as_ptr().cast_mut(),
                nulls.as_ptr(),
                false,
                0,
            );
            // A DO INSTEAD rule on rejected turns the INSERT into other statements.
            if status != pg_sys::SPI_OK_INSERT as i32 && status != pg_sys::SPI_OK_REWRITTEN as i32 {
                raise_internal("inserting into rejected", format!("SPI status {status}"));
            }
        });
        pg_sys::MemoryContextReset(memory.value());
    }
}
