//! The thin PostgreSQL layer: SQL entry points, the registry cache and the writer.
//! Every SQL object is declared in sql/*.sql; the Rust functions here only
//! export their C symbols (`sql = false`).

mod citus;
mod contention;
mod datum;
mod dead_letters;
mod direct;
mod errors;
mod fmgr;
mod ingest;
mod insert_metric;
mod insert_path;
mod pg_compat;
mod registry_cache;
mod rollups;
mod settings;
mod setwise;
mod sink;
mod table;
mod writer;

#[cfg(any(test, feature = "pg_test"))]
mod partition_tests;
#[cfg(any(test, feature = "pg_test"))]
mod rollup_tests;
#[cfg(any(test, feature = "pg_test"))]
mod test_sql;
#[cfg(any(test, feature = "pg_test"))]
mod tests;

pgrx::extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../../sql/api.sql", name = "api", requires = ["schema"]);
pgrx::extension_sql_file!(
    "../../sql/partitions.sql",
    name = "partitions",
    requires = ["api"]
);
pgrx::extension_sql_file!(
    "../../sql/rollups.sql",
    name = "rollups",
    requires = ["partitions"]
);
pgrx::extension_sql_file!("../../sql/comments.sql", name = "comments", finalize);

/// The caches follow what they copy: a relcache invalidation of a table (sent
/// at commit by any change to it) reaches them here, and any change to a
/// function drops the planned defaults and CHECKs, as the plan cache does.
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx's panic hook captures a std Backtrace for every error that crosses
    // Rust (a PostgreSQL error raised under an FFI call, a panic) and puts it in
    // the error's DETAIL, which every client sees: internals leaked to any
    // writer whenever the server runs with RUST_BACKTRACE set. std reads
    // RUST_LIB_BACKTRACE before RUST_BACKTRACE, once, on the first capture in
    // this library (none has happened yet: this runs when it is loaded), so 0
    // here turns capture off whatever the server's environment says.
    // A backend runs one thread, so nothing reads the environment concurrently.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let callbacks: [pgrx::pg_sys::RelcacheCallbackFunction; 3] = [
        Some(registry_cache::on_relcache_invalidation),
        Some(table::on_relcache_invalidation),
        Some(settings::on_relcache_invalidation),
    ];
    // SAFETY: _PG_init runs once per backend, when the library is loaded;
    // the callbacks are functions of this library, which is never unloaded.
    unsafe {
        for callback in callbacks {
            pgrx::pg_sys::CacheRegisterRelcacheCallback(callback, pgrx::pg_sys::Datum::from(0));
        }
        pgrx::pg_sys::CacheRegisterSyscacheCallback(
            pgrx::pg_sys::SysCacheIdentifier::PROCOID as i32,
            Some(table::on_proc_invalidation),
            pgrx::pg_sys::Datum::from(0),
        );
    }
}
