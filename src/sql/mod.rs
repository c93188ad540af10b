//! The thin PostgreSQL layer: SQL entry points, the registry cache and the writer.
//! Every SQL object is declared in sql/*.sql; the Rust functions here only
//! export their C symbols (`sql = false`).

mod direct;
mod errors;
mod ingest;
mod insert_metric;
mod registry_cache;
mod writer;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

pgrx::extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../../sql/api.sql", name = "api", requires = ["schema"]);
pgrx::extension_sql_file!("../../sql/comments.sql", name = "comments", finalize);

/// Both caches follow the tables they copy: a relcache invalidation of the
/// table (sent at commit by any change to it) reaches them here.
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
    let callbacks: [pgrx::pg_sys::RelcacheCallbackFunction; 2] = [
        Some(registry_cache::on_relcache_invalidation),
        Some(direct::on_relcache_invalidation),
    ];
    for callback in callbacks {
        unsafe {
            pgrx::pg_sys::CacheRegisterRelcacheCallback(callback, pgrx::pg_sys::Datum::from(0))
        };
    }
}
