//! metrics_ingest: validated, idempotent ingestion of per-user call metrics.
//!
//! `core` is pure Rust (parsing, validation); `sql` is the thin PostgreSQL layer.

pgrx::pg_module_magic!();

pub mod core;
mod sql;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
