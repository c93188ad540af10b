//! metrics_ingest: validated, idempotent ingestion of per-user call metrics.
//!
//! `core` is pure Rust (parsing, validation); `sql` is the thin PostgreSQL layer.

pgrx::pg_module_magic!();

pub mod core;
mod sql;
