//! A per-backend copy of metrics_ingest.settings (the retention), read with the
//! latest committed snapshot, as PostgreSQL reads its own catalogs, and dropped
//! when the table changes (its statement trigger sends a relcache invalidation).
//! Reading it under the caller's snapshot would, in a REPEATABLE READ
//! transaction, cache a copy older than the invalidation that prompted it.

use std::cell::{Cell, RefCell};

use pgrx::{pg_guard, pg_sys};

use super::errors::raise_internal;

#[derive(Clone, Copy)]
struct Cached {
    relid: pg_sys::Oid,
    retention: Option<pg_sys::Interval>,
}

thread_local! {
    static CACHED: RefCell<Option<Cached>> = const { RefCell::new(None) };
    static PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn on_relcache_invalidation(
    _arg: pg_sys::Datum,
    relid: pg_sys::Oid,
) {
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if relid == pg_sys::InvalidOid || c.is_some_and(|cached| cached.relid == relid) {
            *c = None;
        }
    });
}

fn load() -> Cached {
    // No row means the defaults (no retention).
    const QUERY: &std::ffi::CStr = c"SELECT (SELECT retention FROM metrics_ingest.settings), \
        'metrics_ingest.settings'::pg_catalog.regclass::pg_catalog.oid";
    // SAFETY: SPI is connected and finished here (nesting inside a caller's
    // connection is allowed); the plan is kept per backend; the latest snapshot
    // is copied by SPI when it pushes it; the interval is copied out of the
    // tuple before SPI_finish frees it.
    unsafe {
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            raise_internal("SPI_connect", "failed");
        }
        let mut plan = PLAN.get();
        if plan.is_null() {
            plan = pg_sys::SPI_prepare(QUERY.as_ptr(), 0, std::ptr::null_mut());
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                raise_internal("preparing", "settings query");
            }
            PLAN.set(plan);
        }
        let status = pg_sys::SPI_execute_snapshot(
            plan,
            std::ptr::null_mut(),
            std::ptr::null(),
            pg_sys::GetLatestSnapshot(),
            std::ptr::null_mut(),
            true,
            false,
            1,
        );
        let rows = pg_sys::SPI_processed;
        if status != pg_sys::SPI_OK_SELECT as i32 || rows != 1 {
            raise_internal(
                "reading metrics_ingest.settings",
                format!("status {status}, rows {rows}"),
            );
        }
        let table = pg_sys::SPI_tuptable;
        let tuple = *(*table).vals;
        let mut null = false;
        let retention = pg_sys::SPI_getbinval(tuple, (*table).tupdesc, 1, &mut null);
        let retention = (!null).then(|| *retention.cast_mut_ptr::<pg_sys::Interval>());
        let relid = pg_sys::SPI_getbinval(tuple, (*table).tupdesc, 2, &mut null);
        let cached = Cached {
            relid: pg_sys::Oid::from(relid.value() as u32),
            retention,
        };
        pg_sys::SPI_finish();
        cached
    }
}

/// Whether metrics_ingest.settings exists: before `ALTER EXTENSION ... UPDATE`
/// to 0.2.0, this library runs against an older schema that has none.
fn settings_table_exists() -> bool {
    super::table::extension_relation(c"settings") != pg_sys::InvalidOid
}

/// The oldest storable time, in microseconds since 2000-01-01 (timestamptz's
/// representation): the transaction's start minus the retention, or None when
/// everything is kept.
pub fn retention_horizon() -> Option<(i64, String)> {
    let cached = match CACHED.with(|c| *c.borrow()) {
        Some(cached) => cached,
        None if !settings_table_exists() => return None,
        None => {
            let loaded = load();
            CACHED.with(|c| *c.borrow_mut() = Some(loaded));
            loaded
        }
    };
    let mut retention = cached.retention?;
    // In UTC, as run_maintenance computes it: timestamptz - interval steps days
    // and months in the session's TimeZone, so across a change of daylight
    // saving time it lands an hour away from run_maintenance's horizon, and an
    // element accepted here could be dropped at the next run. The same
    // microseconds as a timestamp without time zone are the UTC wall clock.
    // SAFETY: timestamp_mi_interval takes a timestamp and a pointer to an
    // interval, which lives on this stack frame across the call; interval_out
    // returns a palloc'd C string, copied here.
    unsafe {
        let now = pg_sys::GetCurrentTransactionStartTimestamp();
        let interval = pg_sys::Datum::from(&mut retention as *mut pg_sys::Interval);
        let horizon = pgrx::direct_function_call_as_datum(
            pg_sys::timestamp_mi_interval,
            &[Some(pg_sys::Datum::from(now)), Some(interval)],
        )?;
        let text = pgrx::direct_function_call_as_datum(pg_sys::interval_out, &[Some(interval)])?;
        let text = std::ffi::CStr::from_ptr(text.cast_mut_ptr())
            .to_string_lossy()
            .into_owned();
        Some((horizon.value() as i64, text))
    }
}
