//! The thin PostgreSQL layer: SQL entry points, the registry cache and the writer.
//! Every SQL object is declared in sql/*.sql; the Rust functions here only
//! export their C symbols (`sql = false`).

mod direct;
mod errors;
mod ingest;
mod insert_metric;
mod pg_compat;
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
