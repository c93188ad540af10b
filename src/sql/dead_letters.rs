//! Dead letters: every rejected element goes to metrics_ingest.rejected, as
//! received, with its reason, as soon as it is judged.
//!
//! An element with a readable event_id is kept once per exact text (the unique
//! index rejected_event_key on (event_id, md5(element))): the same bad element
//! sent again (a replayed micro-batch, a client's retry) conflicts and adds
//! nothing. Without an event_id nothing can conflict, and every copy is kept.

use std::cell::Cell;
use std::ffi::c_char;

use pgrx::{pg_sys, PgMemoryContexts};

use super::datum::text_datum;
use super::errors::raise_internal;
use super::insert_path::kept_plan;
use crate::core::element::rejected_ids;
use crate::core::error::Rejection;

const INSERT_REJECTED: &str = "INSERT INTO metrics_ingest.rejected \
    (source, ordinal, element, field, error, sqlstate, user_id, event_id) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING";
/// The dead-letter insert of a 0.1.x catalog, whose `rejected` has no user_id or
/// event_id yet: the library is replaced before `ALTER EXTENSION ... UPDATE` runs,
/// and must keep working in between. It takes the first six parameters.
const INSERT_REJECTED_0_1: &str = "INSERT INTO metrics_ingest.rejected \
    (source, ordinal, element, field, error, sqlstate) VALUES ($1, $2, $3, $4, $5, $6)";
const INSERT_REJECTED_TYPES: [pg_sys::Oid; 8] = [
    pg_sys::TEXTOID,
    pg_sys::INT4OID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
];

thread_local! {
    static REJECTED_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
    static REJECTED_PLAN_0_1: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

/// Stores one dead letter; false when the same one (same event_id and text) was
/// kept already. SPI must be connected; `memory` is reset afterwards.
pub fn reject(
    memory: &mut PgMemoryContexts,
    source: &str,
    ordinal: usize,
    element: &str,
    rejection: &Rejection,
) -> bool {
    let with_ids = rejected_has_ids();
    let plan = if with_ids {
        kept_plan(&REJECTED_PLAN, INSERT_REJECTED, &INSERT_REJECTED_TYPES)
    } else {
        kept_plan(
            &REJECTED_PLAN_0_1,
            INSERT_REJECTED_0_1,
            &INSERT_REJECTED_TYPES[..6],
        )
    };
    let ids = rejected_ids(element);
    // SAFETY: the parameters are built in `memory`, which outlives the SPI call
    // and is reset after it.
    let stored = unsafe {
        memory.switch_to(|_| {
            let optional = |value: Option<&str>| match value {
                Some(text) => (text_datum(text), b' ' as c_char),
                None => (pg_sys::Datum::from(0), b'n' as c_char),
            };
            let (user_id, user_id_null) = optional(ids.user_id.as_deref());
            let (event_id, event_id_null) = optional(ids.event_id.as_deref());
            let values = [
                text_datum(source),
                pg_sys::Datum::from(i32::try_from(ordinal).unwrap_or(i32::MAX)),
                text_datum(element),
                text_datum(&rejection.field),
                text_datum(&rejection.message),
                text_datum(rejection.kind.sqlstate()),
                user_id,
                event_id,
            ];
            let blank = b' ' as c_char;
            let nulls = [
                blank,
                blank,
                blank,
                blank,
                blank,
                blank,
                user_id_null,
                event_id_null,
            ];
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
            pg_sys::SPI_processed == 1
        })
    };
    // SAFETY: nothing built in `memory` is used past this point.
    unsafe { pg_sys::MemoryContextReset(memory.value()) };
    stored
}

/// Whether `metrics_ingest.rejected` has the columns of 0.2.0 (user_id, event_id;
/// the upgrade adds them with the unique index rejected_event_key). False between
/// installing this library and `ALTER EXTENSION metrics_ingest UPDATE` from 0.1.x,
/// when dead letters are written as 0.1.x wrote them. Three syscache lookups.
fn rejected_has_ids() -> bool {
    // SAFETY: syscache lookups by static NUL-terminated names; nothing is kept.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"metrics_ingest".as_ptr(), true);
        let relid = pg_sys::get_relname_relid(c"rejected".as_ptr(), namespace);
        relid != pg_sys::InvalidOid
            && pg_sys::get_attnum(relid, c"event_id".as_ptr())
                != pg_sys::InvalidAttrNumber as pg_sys::AttrNumber
    }
}
